/*
 * usock_misc: UNIX sockets that are neither pairs nor listeners when dumped.
 *
 * The parent holds:
 *   U  a seqpacket socket, never bound nor connected;
 *   V  a seqpacket socket bound to <status>.seq, not listening;
 *   S  a datagram socket bound to <status>.self and connected to itself, holding "s1", ""
 *      (a zero-length datagram) and "s2" it sent itself;
 *   R  a datagram socket bound to <status>.r holding "r1" from an unnamed socket and "r2"
 *      from N (bound to <status>.n, kept open);
 *   B  a datagram socket bound to <status>.b, empty; the child blocks in recv(2) on it;
 *   L  a stream listener bound to <status>.gone, with an accepted connection (client K,
 *      accepted end A) and a connection not yet accepted (client P); then its socket file is
 *      removed and someone else's regular file ("someone else's\n") put at that path.
 *   READY child pid=N         (just before its recv)
 *   READY parent pid=N child=N
 *
 * After <status>.go:
 *   parent: U is an unnamed, unconnected seqpacket socket; V keeps its name, is not
 *           listening, and listens and accepts a new connection now; S gives "s1", "", "s2"
 *           (each with its own length, S's own name as sender), then nothing, and still
 *           reaches itself; R gives "r1" (unnamed sender) and "r2" (from N's name), then
 *           nothing; L keeps its name, K and A still carry data both ways, L accepts P's
 *           connection; the file at <status>.gone is still the other file (same inode and
 *           contents); then it sends "wake" to B.
 *   child:  its recv on B (blocked across the dump and restore) returns exactly "wake".
 */
#include "usock_common.h"
#include <sys/stat.h>

static int bound(int type, const char *name)
{
	int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t al = make_addr(&a, name);
	unlink(name);
	if (s < 0 || bind(s, (struct sockaddr *)&a, al) < 0)
		die("bind %s: %s", name, strerror(errno));
	return s;
}

static void to(int s, const char *name, const char *data)
{
	struct sockaddr_un a;
	socklen_t al = name ? make_addr(&a, name) : 0;
	if (sendto(s, data, strlen(data), 0, name ? (struct sockaddr *)&a : NULL, name ? al : 0) != (ssize_t)strlen(data))
		die("sendto %s '%s': %s", name ? name : "(peer)", data, strerror(errno));
}

/* One datagram: its text, and its sender's name ("" when unnamed). */
static void expect_datagram(int s, const char *want, const char *from, const char *what)
{
	char buf[64] = "";
	struct sockaddr_un a;
	socklen_t al = sizeof(a);
	memset(&a, 0, sizeof(a));
	ssize_t n = recvfrom(s, buf, sizeof(buf) - 1, MSG_DONTWAIT, (struct sockaddr *)&a, &al);
	char shown[256];
	show_addr(&a, al, shown, sizeof(shown));
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, n) == 0 && strcmp(shown, from) == 0,
	      "parent: %s: got %zd '%s' from '%s', expected '%s' from '%s'", what, n, n > 0 ? buf : "", shown, want, from);
}

static void expect_nothing(int s, const char *what)
{
	char buf[8];
	ssize_t n = recv(s, buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n < 0 && errno == EAGAIN, "parent: %s holds more: recv gave %zd", what, n);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	char seq[4200], self[4200], r_name[4200], n_name[4200], b_name[4200];
	snprintf(seq, sizeof(seq), "%s.seq", wl_status);
	snprintf(self, sizeof(self), "%s.self", wl_status);
	snprintf(r_name, sizeof(r_name), "%s.r", wl_status);
	snprintf(n_name, sizeof(n_name), "%s.n", wl_status);
	snprintf(b_name, sizeof(b_name), "%s.b", wl_status);
	int u = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int v = bound(SOCK_SEQPACKET, seq);
	int s = bound(SOCK_DGRAM, self);
	struct sockaddr_un sa;
	socklen_t sal = make_addr(&sa, self);
	if (u < 0 || connect(s, (struct sockaddr *)&sa, sal) < 0)
		die("setup: %s", strerror(errno));
	to(s, NULL, "s1");
	to(s, NULL, "");
	to(s, NULL, "s2");
	int r = bound(SOCK_DGRAM, r_name);
	int n = bound(SOCK_DGRAM, n_name);
	int anon = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	to(anon, r_name, "r1");
	close(anon);
	to(n, r_name, "r2");
	int b = bound(SOCK_DGRAM, b_name);
	char gone[4200];
	snprintf(gone, sizeof(gone), "%s.gone", wl_status);
	int l = bound(SOCK_STREAM, gone);
	struct sockaddr_un ga;
	socklen_t gal = make_addr(&ga, gone);
	int k = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int pc = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen(l, 4) < 0 || k < 0 || pc < 0 || connect(k, (struct sockaddr *)&ga, gal) < 0)
		die("listener on %s: %s", gone, strerror(errno));
	int acc = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (acc < 0 || connect(pc, (struct sockaddr *)&ga, gal) < 0)
		die("accept / pending connect on %s: %s", gone, strerror(errno));
	unlink(gone);
	int other = open(gone, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (other < 0 || write(other, "someone else's\n", 15) != 15)
		die("putting another file at %s: %s", gone, strerror(errno));
	close(other);
	struct stat other_st;
	stat(gone, &other_st);

	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		status("READY child pid=%d", my_pid);
		char buf[16] = "";
		ssize_t k = recv(b, buf, sizeof(buf) - 1, 0);
		CHECK(k == 4 && memcmp(buf, "wake", 4) == 0, "child: the blocked recv returned %zd '%s' (%s)", k,
		      k > 0 ? buf : "", k < 0 ? strerror(errno) : "");
		CHECK(getppid() == my_ppid, "child: ppid %d, was %d", getppid(), my_ppid);
		role_finish();
	}
	wait_for_status("READY child");
	status("READY parent pid=%d child=%d", my_pid, (int)child);
	wait_go();

	CHECK_EQ_U("parent: U's type", SOCK_SEQPACKET, get_opt(u, SO_TYPE));
	check_name(u, 0, "", "U");
	struct sockaddr_un p;
	socklen_t pl = sizeof(p);
	CHECK(getpeername(u, (struct sockaddr *)&p, &pl) < 0 && errno == ENOTCONN, "parent: U is connected");
	check_name(v, 0, seq, "V");
	CHECK_EQ_U("parent: V listening", 0, get_opt(v, SO_ACCEPTCONN));
	if (listen(v, 1) == 0) {
		int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		struct sockaddr_un va;
		socklen_t val = make_addr(&va, seq);
		CHECK(c >= 0 && connect(c, (struct sockaddr *)&va, val) == 0, "parent: connecting to V: %s", strerror(errno));
		int a = accept4(v, NULL, NULL, SOCK_CLOEXEC);
		CHECK(a >= 0, "parent: V accepts nothing: %s", strerror(errno));
	} else {
		check_failed("parent: V cannot listen: %s", strerror(errno));
	}

	check_name(s, 1, self, "S's peer");
	expect_datagram(s, "s1", self, "S first");
	expect_datagram(s, "", self, "S second (zero-length)");
	expect_datagram(s, "s2", self, "S third");
	expect_nothing(s, "S");
	to(s, NULL, "s3");
	expect_datagram(s, "s3", self, "S after restore");

	expect_datagram(r, "r1", "", "R first");
	expect_datagram(r, "r2", n_name, "R second");
	expect_nothing(r, "R");

	check_name(l, 0, gone, "L");
	check_name(acc, 0, gone, "L's accepted connection");
	check_name(k, 1, gone, "K's peer");
	send_all(k, "k1", 2, "k1");
	char kb[8] = "";
	CHECK(wait_readable(acc, 5) && recv(acc, kb, 2, MSG_DONTWAIT) == 2 && memcmp(kb, "k1", 2) == 0, "parent: A got '%s'", kb);
	send_all(acc, "a1", 2, "a1");
	CHECK(wait_readable(k, 5) && recv(k, kb, 2, MSG_DONTWAIT) == 2 && memcmp(kb, "a1", 2) == 0, "parent: K got '%s'", kb);
	int pa = wait_readable(l, 5) ? accept4(l, NULL, NULL, SOCK_CLOEXEC) : -1;
	CHECK(pa >= 0, "parent: P's connection was not waiting on L");
	struct stat now;
	char text[32] = "";
	int f = open(gone, O_RDONLY | O_CLOEXEC);
	CHECK(f >= 0 && fstat(f, &now) == 0 && now.st_ino == other_st.st_ino && S_ISREG(now.st_mode) &&
		      read(f, text, sizeof(text) - 1) == 15 && strcmp(text, "someone else's\n") == 0,
	      "parent: %s is no longer the other file (inode %lu, was %lu; '%s')", gone, (unsigned long)now.st_ino,
	      (unsigned long)other_st.st_ino, text);

	sleep_ms(100);
	to(n, b_name, "wake");
	reap("child", child);
	role_finish();
}
