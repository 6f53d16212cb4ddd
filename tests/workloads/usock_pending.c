/*
 * usock_pending: listeners with connections not yet accepted when dumped.
 *
 * The parent binds a stream listener to <status>.sock (backlog 5) and a seqpacket listener to
 * an abstract name. Clients connect, in this order, and nobody accepts:
 *   stream:    A (held by the child), B (held by the parent, bound to the abstract name
 *              "@crust-pending-<pid>-b"), C (parent);
 *   seqpacket: D (parent).
 * One more stream connection E was accepted before (the accepted end is kept by the parent),
 * so the queue holds exactly A, B, C.
 *   READY child pid=N
 *   READY parent pid=N child=N
 *
 * After <status>.go:
 *   child:  its client A is still connected (getpeername is the listener's path) and unread;
 *           it sends "A" and says "STAGE sent"; later it reads the server's answer "to-A".
 *   parent: after "STAGE sent", B and C send "B" and "C", D sends "D"; the stream listener
 *           has 3 waiting connections (its queue), accept returns them in the order A, B, C
 *           (each gives its letter; the one from B has B's name as peer name), then none;
 *           the seqpacket listener gives D's message "D" whole; it answers "to-A" on A's
 *           connection; E still carries data both ways.
 */
#include "usock_common.h"

static int listener(int type, const char *name, int backlog)
{
	int l = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t al = make_addr(&a, name);
	if (l < 0 || bind(l, (struct sockaddr *)&a, al) < 0 || listen(l, backlog) < 0)
		die("listener %s: %s", name, strerror(errno));
	return l;
}

static int client(int type, const char *to, const char *bind_to)
{
	int c = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t al;
	if (c < 0)
		die("socket: %s", strerror(errno));
	if (bind_to) {
		al = make_addr(&a, bind_to);
		if (bind(c, (struct sockaddr *)&a, al) < 0)
			die("bind %s: %s", bind_to, strerror(errno));
	}
	al = make_addr(&a, to);
	if (connect(c, (struct sockaddr *)&a, al) < 0)
		die("connect %s: %s", to, strerror(errno));
	return c;
}

static void expect(int fd, const char *want, const char *what)
{
	char buf[32] = "";
	ssize_t n = -1;
	if (wait_readable(fd, 5))
		n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, strlen(want)) == 0, "%s: %s: got %zd '%s', expected '%s'",
	      role, what, n, n > 0 ? buf : "", want);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	char path[4200], seq[128], bname[128];
	snprintf(path, sizeof(path), "%s.sock", wl_status);
	snprintf(seq, sizeof(seq), "@crust-pending-%d-seq", (int)getpid());
	snprintf(bname, sizeof(bname), "@crust-pending-%d-b", (int)getpid());
	unlink(path);
	int ls = listener(SOCK_STREAM, path, 5);
	int lq = listener(SOCK_SEQPACKET, seq, 2);
	int e = client(SOCK_STREAM, path, NULL);
	int es = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	if (es < 0)
		die("accept E: %s", strerror(errno));
	int a = client(SOCK_STREAM, path, NULL);
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		close(ls);
		close(lq);
		close(e);
		close(es);
		status("READY child pid=%d", my_pid);
		wait_go();
		check_name(a, 1, path, "A's peer");
		send_all(a, "A", 1, "A");
		status("STAGE sent");
		expect(a, "to-A", "the answer on A");
		role_finish();
	}
	close(a);
	wait_for_status("READY child");
	int b = client(SOCK_STREAM, path, bname);
	int c = client(SOCK_STREAM, path, NULL);
	int d = client(SOCK_SEQPACKET, seq, NULL);
	status("READY parent pid=%d child=%d", my_pid, (int)child);
	wait_go();
	wait_for_status("STAGE sent");
	send_all(b, "B", 1, "B");
	send_all(c, "C", 1, "C");
	send_all(d, "D", 1, "D");
	const char *order[] = { "A", "B", "C" };
	int first = -1;
	for (int i = 0; i < 3; i++) {
		struct sockaddr_un peer;
		socklen_t pl = sizeof(peer);
		memset(&peer, 0, sizeof(peer));
		int s = wait_readable(ls, 5) ? accept4(ls, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC | SOCK_NONBLOCK) : -1;
		if (s < 0) {
			check_failed("parent: accept #%d: %s", i + 1, strerror(errno));
			break;
		}
		char what[64];
		snprintf(what, sizeof(what), "accepted connection #%d", i + 1);
		expect(s, order[i], what);
		if (i == 1)
			check_name(s, 1, bname, "the connection from B");
		if (i == 0)
			first = s;
		else
			close(s);
	}
	CHECK(!wait_readable(ls, 0.1), "parent: a fourth connection is waiting");
	int sq = wait_readable(lq, 5) ? accept4(lq, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK) : -1;
	CHECK(sq >= 0, "parent: the seqpacket connection is gone: %s", strerror(errno));
	if (sq >= 0)
		expect(sq, "D", "the seqpacket connection");
	if (first >= 0)
		send_all(first, "to-A", 4, "to-A");
	send_all(e, "e1", 2, "e1");
	expect(es, "e1", "E, client to server");
	send_all(es, "e2", 2, "e2");
	expect(e, "e2", "E, server to client");
	reap("child", child);
	role_finish();
}
