/*
 * usock_refuse: one process holding a socket crust must refuse to dump; after the refused
 * dump it checks the socket is as it was and still works.
 *
 *   usock_refuse STATUS tcp           a TCP listener on 127.0.0.1 (port chosen by the kernel)
 *                                     and a TCP connection to it, accepted: after .go the
 *                                     connection still carries data both ways.
 *   usock_refuse STATUS outside NAME  a UNIX stream socket connected to NAME ('@' for an
 *                                     abstract name), a listener of the test, outside the
 *                                     tree. It sent "ping\n" before READY; the test sent
 *                                     "early\n" before the dump. After .go it reads "early\n"
 *                                     then "late\n" (sent by the test after the refused dump)
 *                                     and answers "pong\n".
 *   usock_refuse STATUS rights        a UNIX socketpair with an epoll in flight (SCM_RIGHTS,
 *                                     not received, held by no fd: crust cannot restore an
 *                                     epoll without a holder): after .go it is received and
 *                                     is still the epoll, with its registration.
 *   usock_refuse STATUS pending       a listener with a connection not yet accepted, whose
 *                                     client (in the same process) already sent "hi" into it:
 *                                     after .go it is accepted, gives "hi" and carries data.
 *
 *   READY parent pid=N fd=FD          FD: the socket the refusal must name
 */
#include "usock_common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>

static void mode_tcp(void)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 4) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) < 0)
		die("TCP listener: %s", strerror(errno));
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("TCP connect: %s", strerror(errno));
	int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (s < 0)
		die("TCP accept: %s", strerror(errno));
	send_all(c, "tcp-early", 9, "tcp-early");
	status("READY parent pid=%d fd=%d", my_pid, c);
	wait_go();
	char buf[16] = "";
	CHECK(wait_readable(s, 5) && recv(s, buf, 9, MSG_WAITALL) == 9 && memcmp(buf, "tcp-early", 9) == 0,
	      "the TCP connection lost its queued bytes: '%s'", buf);
	send_all(s, "tcp-late", 8, "tcp-late");
	memset(buf, 0, sizeof(buf));
	CHECK(wait_readable(c, 5) && recv(c, buf, 8, MSG_WAITALL) == 8 && memcmp(buf, "tcp-late", 8) == 0,
	      "the TCP connection does not carry data after the refused dump: '%s'", buf);
}

static void read_line(int fd, const char *want)
{
	char buf[64] = "";
	size_t n = strlen(want), got = 0;
	while (got < n && wait_readable(fd, 5)) {
		ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	CHECK(got == n && memcmp(buf, want, n) == 0, "expected '%s', read %zu bytes '%s'", want, got, buf);
}

static void mode_outside(const char *name)
{
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t l = make_addr(&a, name);
	if (c < 0 || connect(c, (struct sockaddr *)&a, l) < 0)
		die("connecting to %s: %s", name, strerror(errno));
	send_all(c, "ping\n", 5, "ping");
	status("READY parent pid=%d fd=%d", my_pid, c);
	wait_go();
	read_line(c, "early\n");
	read_line(c, "late\n");
	send_all(c, "pong\n", 5, "pong");
}

static void mode_rights(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	int f = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = 42 };
	if (f < 0 || epoll_ctl(f, EPOLL_CTL_ADD, sv[0], &ev) < 0)
		die("epoll: %s", strerror(errno));
	char control[CMSG_SPACE(sizeof(int))];
	memset(control, 0, sizeof(control));
	struct iovec iov = { .iov_base = "fd", .iov_len = 2 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &f, sizeof(int));
	if (sendmsg(sv[0], &msg, 0) != 2)
		die("sendmsg SCM_RIGHTS: %s", strerror(errno));
	close(f);
	status("READY parent pid=%d fd=%d", my_pid, sv[1]);
	wait_go();
	char data[4];
	struct iovec riov = { .iov_base = data, .iov_len = sizeof(data) };
	struct msghdr r = { .msg_iov = &riov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(sv[1], &r, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	struct cmsghdr *rc = CMSG_FIRSTHDR(&r);
	if (n != 2 || !rc || rc->cmsg_type != SCM_RIGHTS) {
		check_failed("the descriptor in flight is gone: recvmsg %zd", n);
		return;
	}
	int got;
	memcpy(&got, CMSG_DATA(rc), sizeof(int));
	struct epoll_event out;
	int k = epoll_wait(got, &out, 1, 0);
	CHECK(k == 1 && out.data.u64 == 42, "the passed epoll reports %d events (data %llu), expected its registration",
	      k, k == 1 ? (unsigned long long)out.data.u64 : 0ULL);
}

static void mode_pending(void)
{
	char name[64];
	snprintf(name, sizeof(name), "@crust-usock-%d-pending", (int)getpid());
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t al = make_addr(&a, name);
	if (l < 0 || bind(l, (struct sockaddr *)&a, al) < 0 || listen(l, 4) < 0)
		die("listener: %s", strerror(errno));
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, al) < 0)
		die("connect: %s", strerror(errno));
	send_all(c, "hi", 2, "hi");
	status("READY parent pid=%d fd=%d", my_pid, c);
	wait_go();
	int s = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	CHECK(s >= 0, "the waiting connection is gone: accept: %s", strerror(errno));
	if (s >= 0) {
		read_line(s, "hi");
		send_all(c, "ho", 2, "ho");
		read_line(s, "ho");
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	const char *mode = argc > 2 ? argv[2] : "";
	if (strcmp(mode, "tcp") == 0)
		mode_tcp();
	else if (strcmp(mode, "outside") == 0 && argc > 3)
		mode_outside(argv[3]);
	else if (strcmp(mode, "rights") == 0)
		mode_rights();
	else if (strcmp(mode, "pending") == 0)
		mode_pending();
	else
		die("usage: usock_refuse STATUS tcp|outside NAME|rights|pending");
	role_finish();
}
