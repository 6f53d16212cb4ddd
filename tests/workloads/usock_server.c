/*
 * usock_server: a listening SOCK_STREAM socket bound to a path, a connection accepted from it
 * with data in flight both ways, and an accepted connection whose client has gone.
 *
 *   parent: L listens on "srv.sock" (a path relative to the status file's directory, which
 *           both processes chdir to), mode 0640, backlog 7;
 *           A = accept(L): the connection of the child's C1;
 *           B = accept(L): the connection of the child's C2, which the child closed.
 *   child:  C1 connected to "srv.sock".
 *
 * Before READY: the child sends REQ_LEN bytes (pattern 5) on C1, the parent RESP_LEN bytes
 * (pattern 6) on A; nobody reads them. The child connects C2, sends "bye", the parent accepts
 * it as B and sends "unread" on it, and the child closes C2 without reading: B holds "bye",
 * is shut down both ways, and its next read after the data fails with ECONNRESET.
 *   READY child pid=N c1=FD
 *   READY parent pid=N child=N listener=FD a=FD b=FD
 *
 * After <status>.go:
 *   parent: L is still listening (SO_ACCEPTCONN) on "srv.sock", whose file is a socket of
 *           mode 0640; A and B are named "srv.sock" with unnamed peers; A delivers the REQ
 *           bytes; B delivers "bye", then ECONNRESET, then EOF. It accepts one NEW connection
 *           (from the test, outside the tree), reads "hello from outside\n" and answers
 *           "welcome\n". Then it sends "done" on A and closes it.
 *   child:  C1 is unnamed, its peer is "srv.sock"; it reads the RESP bytes, "done", then EOF.
 */
#include "usock_common.h"
#include <libgen.h>
#include <sys/stat.h>

#define REQ_LEN 30000
#define RESP_LEN 70000
#define NAME "srv.sock"

static void check_file(void)
{
	struct stat st;
	if (lstat(NAME, &st) < 0) {
		check_failed("parent: lstat %s: %s", NAME, strerror(errno));
		return;
	}
	CHECK(S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0640, "parent: %s has mode 0%o, expected a socket of 0640",
	      NAME, st.st_mode);
}

static int connect_to(const char *name)
{
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t l = make_addr(&a, name);
	if (c < 0 || connect(c, (struct sockaddr *)&a, l) < 0)
		die("%s: connect to %s: %s", role, name, strerror(errno));
	return c;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", argv[1]);
	if (chdir(dirname(dir)) < 0)
		die("chdir: %s", strerror(errno));
	unlink(NAME);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr;
	socklen_t alen = make_addr(&addr, NAME);
	if (l < 0 || bind(l, (struct sockaddr *)&addr, alen) < 0 || listen(l, 7) < 0)
		die("listening on %s: %s", NAME, strerror(errno));
	if (chmod(NAME, 0640) < 0)
		die("chmod: %s", strerror(errno));

	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		close(l);
		int c1 = connect_to(NAME);
		static unsigned char req[REQ_LEN];
		fill_pattern(req, 5, REQ_LEN);
		send_all(c1, req, REQ_LEN, "the request");
		int c2 = connect_to(NAME);
		send_all(c2, "bye", 3, "bye");
		status("STAGE child connected twice");
		wait_for_status("STAGE parent answered on B");
		close(c2);
		status("READY child pid=%d c1=%d", my_pid, c1);
		wait_go();

		check_name(c1, 0, "", "C1");
		check_name(c1, 1, NAME, "C1");
		recv_pattern(c1, 6, RESP_LEN, "the response");
		char done[8] = "";
		if (wait_readable(c1, 20)) /* the parent first waits for a new client */
			recv(c1, done, 4, MSG_WAITALL);
		CHECK(memcmp(done, "done", 4) == 0, "child: expected 'done' on C1, got '%.4s'", done);
		expect_eof(c1, "C1 after 'done'");
		role_finish();
	}
	wait_for_status("STAGE child connected twice");
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	int b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (a < 0 || b < 0)
		die("accept: %s", strerror(errno));
	static unsigned char resp[RESP_LEN];
	fill_pattern(resp, 6, RESP_LEN);
	send_all(a, resp, RESP_LEN, "the response");
	send_all(b, "unread", 6, "unread");
	status("STAGE parent answered on B");
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", child);
	wait_for_status(needle);
	status("READY parent pid=%d child=%d listener=%d a=%d b=%d", my_pid, child, l, a, b);
	wait_go();

	CHECK(get_opt(l, SO_ACCEPTCONN) == 1, "parent: the listener no longer listens");
	check_name(l, 0, NAME, "the listener");
	check_file();
	check_name(a, 0, NAME, "A");
	check_name(a, 1, "", "A");
	check_name(b, 0, NAME, "B");
	recv_pattern(a, 5, REQ_LEN, "the request");
	char bye[8] = "";
	ssize_t n = recv(b, bye, sizeof(bye), MSG_DONTWAIT);
	CHECK(n == 3 && memcmp(bye, "bye", 3) == 0, "parent: B delivered %zd bytes '%.*s', expected 'bye'", n,
	      (int)(n > 0 ? n : 0), bye);
	n = recv(b, bye, sizeof(bye), MSG_DONTWAIT);
	CHECK(n < 0 && errno == ECONNRESET, "parent: B after 'bye': %zd (%s), expected ECONNRESET", n,
	      n < 0 ? strerror(errno) : "data");
	n = recv(b, bye, sizeof(bye), MSG_DONTWAIT);
	CHECK(n == 0, "parent: B after ECONNRESET: %zd (%s), expected EOF", n, n < 0 ? strerror(errno) : "data");

	if (!wait_readable(l, 10)) {
		check_failed("parent: no new connection within 10 s");
	} else {
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			check_failed("parent: accept of the new connection: %s", strerror(errno));
		} else {
			char hello[64] = "";
			size_t got = 0;
			while (got < 19 && wait_readable(c, 5)) {
				ssize_t r = recv(c, hello + got, sizeof(hello) - 1 - got, MSG_DONTWAIT);
				if (r <= 0)
					break;
				got += (size_t)r;
			}
			CHECK(got == 19 && memcmp(hello, "hello from outside\n", 19) == 0,
			      "parent: the new connection sent '%.*s'", (int)got, hello);
			send_all(c, "welcome\n", 8, "welcome");
			close(c);
		}
	}
	send_all(a, "done", 4, "done");
	close(a);
	reap("child", child);
	role_finish();
}
