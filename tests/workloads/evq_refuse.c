/*
 * evq_refuse MODE: one state of epoll, inotify or a FIFO that crust must refuse to dump.
 * After a refused dump the process must be exactly as before: after <status>.go it checks
 * the state is intact.
 *
 *   stale      epoll E registered pipe P's read end at fd T; T was sent in flight (SCM_RIGHTS)
 *              into a socketpair and closed: the registration still names fd T, which no
 *              longer is open, and no fd refers to its file.
 *              READY ... e=E target=T     after go: E reports DS once P has a byte.
 *   ambiguous  epoll E: Q's read end edge-triggered, its byte's edge already reported, and
 *              pipe P's read end level-triggered with a byte: both ready.
 *              READY ... e=E target=QR    after go: E reports only P (Q's edge was consumed).
 *   oneshot    epoll E: a one-shot registration of inotify I (watching <status>.d) that
 *              fired; its event was read since, so I is not ready.  READY ... e=E target=I
 *              after go: E reports nothing; re-armed, and a file created, it reports DS.
 *   queued     inotify I watching <status>.d, with an IN_CREATE event not read yet.
 *              READY ... in=I             after go: reading I gives that event.
 *   shared     epoll E with pipe P's read end (EPOLLIN, DS) and a byte in P; the test takes a
 *              copy of E (pidfd_getfd), as another process would get it through SCM_RIGHTS.
 *              READY ... e=E                after go: E reports DS.
 *   outside    FIFO <status>.fifo open for reading here; the test opens it for writing,
 *              writes "outside" and keeps it.   READY ... r=R path=PATH
 *              after go: R gives "outside".
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define DS 0x5eed000000000001ULL
#define DQ 0x5eed000000000002ULL

static int report(int ep, uint64_t *data)
{
	struct epoll_event ev[4];
	int k = epoll_wait(ep, ev, 4, 0);
	for (int i = 0; i < k; i++)
		data[i] = ev[i].data.u64;
	return k;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	int p[2], q[2];
	if (pipe2(p, O_CLOEXEC) < 0 || pipe2(q, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));
	int e = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = DS };
	uint64_t got[4];
	char dir[4200], path[4300];
	snprintf(dir, sizeof(dir), "%s.d", argv[1]);
	if (strcmp(mode, "stale") == 0) {
		int t = p[0];
		epoll_ctl(e, EPOLL_CTL_ADD, t, &ev);
		int sv[2];
		char control[CMSG_SPACE(sizeof(int))];
		memset(control, 0, sizeof(control));
		struct iovec iov = { .iov_base = "t", .iov_len = 1 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &t, sizeof(int));
		if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0 || sendmsg(sv[0], &msg, 0) != 1)
			die("sending the pipe in flight: %s", strerror(errno));
		close(t);
		status("READY pid=%d e=%d target=%d", getpid(), e, t);
		while (!go_requested())
			sleep_ms(10);
		CHECK(report(e, got) == 0, "stale: epoll reports something before a write");
		CHECK(write(p[1], "x", 1) == 1, "write");
		CHECK(report(e, got) == 1 && got[0] == DS, "stale: the registration is gone");
	} else if (strcmp(mode, "ambiguous") == 0) {
		struct epoll_event et = { .events = EPOLLIN | EPOLLET, .data.u64 = DQ };
		epoll_ctl(e, EPOLL_CTL_ADD, q[0], &et);
		if (write(q[1], "q", 1) != 1 || report(e, got) != 1)
			die("ambiguous: setup");
		epoll_ctl(e, EPOLL_CTL_ADD, p[0], &ev);
		if (write(p[1], "p", 1) != 1)
			die("ambiguous: setup write");
		status("READY pid=%d e=%d target=%d", getpid(), e, q[0]);
		while (!go_requested())
			sleep_ms(10);
		int k = report(e, got);
		CHECK(k == 1 && got[0] == DS, "ambiguous: epoll reports %d events (first %llx), expected only the level-triggered one",
		      k, k > 0 ? (unsigned long long)got[0] : 0ULL);
	} else if (strcmp(mode, "oneshot") == 0) {
		if (mkdir(dir, 0755) < 0)
			die("mkdir: %s", strerror(errno));
		int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (in < 0 || inotify_add_watch(in, dir, IN_CREATE) < 0)
			die("oneshot: inotify: %s", strerror(errno));
		struct epoll_event os = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = DS };
		epoll_ctl(e, EPOLL_CTL_ADD, in, &os);
		char buf[4096] __attribute__((aligned(8)));
		snprintf(path, sizeof(path), "%s/one", dir);
		int f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (f < 0 || report(e, got) != 1 || read(in, buf, sizeof(buf)) <= 0)
			die("oneshot: setup");
		close(f);
		status("READY pid=%d e=%d target=%d", getpid(), e, in);
		while (!go_requested())
			sleep_ms(10);
		CHECK(report(e, got) == 0, "oneshot: a disabled registration reports");
		CHECK(epoll_ctl(e, EPOLL_CTL_MOD, in, &os) == 0, "oneshot: re-arm: %s", strerror(errno));
		snprintf(path, sizeof(path), "%s/two", dir);
		f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (f >= 0)
			close(f);
		CHECK(report(e, got) == 1 && got[0] == DS, "oneshot: no event after re-arming");
	} else if (strcmp(mode, "queued") == 0) {
		if (mkdir(dir, 0755) < 0)
			die("mkdir: %s", strerror(errno));
		int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		int wd = inotify_add_watch(in, dir, IN_CREATE);
		snprintf(path, sizeof(path), "%s/queued", dir);
		int f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (in < 0 || wd < 0 || f < 0)
			die("queued: setup: %s", strerror(errno));
		close(f);
		status("READY pid=%d in=%d", getpid(), in);
		while (!go_requested())
			sleep_ms(10);
		char buf[4096] __attribute__((aligned(8)));
		ssize_t k = read(in, buf, sizeof(buf));
		struct inotify_event *iev = (struct inotify_event *)buf;
		CHECK(k > 0 && iev->wd == wd && iev->mask == IN_CREATE && strcmp(iev->name, "queued") == 0,
		      "queued: the event is not there any more (read %zd)", k);
	} else if (strcmp(mode, "shared") == 0) {
		epoll_ctl(e, EPOLL_CTL_ADD, p[0], &ev);
		if (write(p[1], "s", 1) != 1)
			die("shared: write");
		status("READY pid=%d e=%d", getpid(), e);
		while (!go_requested())
			sleep_ms(10);
		CHECK(report(e, got) == 1 && got[0] == DS, "shared: the registration is gone");
	} else if (strcmp(mode, "outside") == 0) {
		snprintf(path, sizeof(path), "%s.fifo", argv[1]);
		if (mkfifo(path, 0600) < 0)
			die("mkfifo: %s", strerror(errno));
		int r = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (r < 0)
			die("open: %s", strerror(errno));
		status("READY pid=%d r=%d path=%s", getpid(), r, path);
		while (!go_requested())
			sleep_ms(10);
		char buf[64] = "";
		ssize_t k = read(r, buf, sizeof(buf) - 1);
		CHECK(k == 7 && strcmp(buf, "outside") == 0, "outside: read %zd bytes '%s'", k, buf);
	} else {
		die("unknown mode '%s'", mode);
	}
	finish("%s", mode);
}
