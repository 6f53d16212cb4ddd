/*
 * usock_blocked: a consumer blocked in read(2) on an empty stream socket when dumped.
 *
 *   parent (P) <== socketpair(SOCK_STREAM) ==> child (C)
 *
 * The child blocks in read(C) right after its READY line; the parent writes nothing until
 * <status>.go, then writes "wake up\n". The child's read, restarted after the restore,
 * returns exactly those bytes; the parent then reads the child's answer "awake\n".
 *   READY child pid=N fd=C
 *   READY parent pid=N child=N fd=P
 */
#include "usock_common.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		close(sv[0]);
		status("READY child pid=%d fd=%d", my_pid, sv[1]);
		char buf[64] = "";
		ssize_t n;
		do
			n = read(sv[1], buf, sizeof(buf) - 1);
		while (n < 0 && errno == EINTR);
		CHECK(n == 8 && memcmp(buf, "wake up\n", 8) == 0, "child: read returned %zd '%s' (%s)", n, buf,
		      n < 0 ? strerror(errno) : "");
		CHECK(getpid() == my_pid && getppid() == my_ppid, "child: pid %d ppid %d", getpid(), getppid());
		send_all(sv[1], "awake\n", 6, "awake");
		role_finish();
	}
	close(sv[1]);
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", child);
	wait_for_status(needle);
	status("READY parent pid=%d child=%d fd=%d", my_pid, child, sv[0]);
	wait_go();
	send_all(sv[0], "wake up\n", 8, "wake up");
	char buf[8] = "";
	CHECK(wait_readable(sv[0], 5) && recv(sv[0], buf, 6, MSG_WAITALL) == 6 && memcmp(buf, "awake\n", 6) == 0,
	      "parent: the child answered '%s'", buf);
	reap("child", child);
	role_finish();
}
