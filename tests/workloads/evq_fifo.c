/*
 * evq_fifo: named FIFOs in every arrangement crust restores.
 *
 *   F1 <status>.fifo1: parent -> child. The child opens it O_RDONLY (blocking, until the
 *      parent opens it O_WRONLY); the parent sets its buffer to 128 KiB and writes LEN bytes
 *      (more than a default FIFO holds) the child does not read before <status>.go. The child
 *      has the read end in an epoll (EPOLLIN, DF).
 *   F2 <status>.fifo2 (parent only): a reader opened O_NONBLOCK with no writer, ever: no
 *      POLLHUP.
 *   F3 <status>.fifo3 (parent only): a reader; a writer came, wrote "hup-data", and left:
 *      POLLIN|POLLHUP.
 *   F4 <status>.fifo4 (parent only): one O_RDWR|O_NONBLOCK description holding "rw".
 *
 *   READY child pid=N r=FD e=FD
 *   READY parent pid=N child=N w=FD r2=FD r3=FD rw=FD
 *
 * After <status>.go:
 *   child:  the epoll reports DF; LEN bytes queued; the read end is blocking (no O_NONBLOCK);
 *           "CHECKED child"; reads exactly the parent's bytes, then EOF once the parent closes its end.
 *   parent: F1 buffer 128 KiB; F2 reports nothing; F3 reports POLLIN|POLLHUP, gives
 *           "hup-data", then EOF; F4 gives "rw"; waits for "CHECKED child", closes its F1
 *           end; reaps the child.
 */
#include "common.h"
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define LEN 70000
#define SIZE (128 * 1024)
#define DF 0xf1f0000000000001ULL

static const char *role = "parent";
static char f1[4200], f2[4200], f3[4200], f4[4200];

static unsigned char byte_at(size_t i)
{
	return (unsigned char)((i * 7 + (i >> 9)) & 0xff);
}

static int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

static __attribute__((noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d", role, (int)getpid());
	_exit(0);
}

static short revents(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	poll(&p, 1, 0);
	return p.revents;
}

static void child(void)
{
	role = "child";
	int r = open(f1, O_RDONLY | O_CLOEXEC);
	if (r < 0)
		die("child: open %s: %s", f1, strerror(errno));
	int e = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = DF };
	if (e < 0 || epoll_ctl(e, EPOLL_CTL_ADD, r, &ev) < 0)
		die("child: epoll: %s", strerror(errno));
	/* Ready once the parent's bytes are in. */
	int queued = 0;
	double deadline = mono_now() + 10;
	while (queued < LEN && mono_now() < deadline) {
		ioctl(r, FIONREAD, &queued);
		sleep_ms(5);
	}
	status("READY child pid=%d r=%d e=%d", getpid(), r, e);
	while (!go_requested())
		sleep_ms(10);

	struct epoll_event got[2];
	int k = epoll_wait(e, got, 2, 0);
	CHECK(k == 1 && got[0].data.u64 == DF && got[0].events == EPOLLIN, "child: epoll reported %d events", k);
	ioctl(r, FIONREAD, &queued);
	CHECK(queued == LEN, "child: F1 holds %d bytes, expected %d", queued, LEN);
	CHECK((fcntl(r, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_RDONLY, "child: F1 flags 0%o", fcntl(r, F_GETFL));
	status("CHECKED child");
	static unsigned char buf[LEN + 4096];
	size_t n = 0;
	for (;;) {
		ssize_t m = read(r, buf + n, sizeof(buf) - n);
		if (m < 0 && errno == EINTR)
			continue;
		if (m <= 0)
			break;
		n += (size_t)m;
	}
	CHECK(n == LEN, "child: read %zu bytes before EOF, expected %d", n, LEN);
	size_t bad = 0;
	for (size_t i = 0; i < n && i < LEN; i++)
		bad += buf[i] != byte_at(i);
	CHECK(bad == 0, "child: %zu bytes differ", bad);
	role_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	snprintf(f1, sizeof(f1), "%s.fifo1", argv[1]);
	snprintf(f2, sizeof(f2), "%s.fifo2", argv[1]);
	snprintf(f3, sizeof(f3), "%s.fifo3", argv[1]);
	snprintf(f4, sizeof(f4), "%s.fifo4", argv[1]);
	if (mkfifo(f1, 0600) < 0 || mkfifo(f2, 0600) < 0 || mkfifo(f3, 0600) < 0 || mkfifo(f4, 0600) < 0)
		die("mkfifo: %s", strerror(errno));
	pid_t c = fork();
	if (c < 0)
		die("fork: %s", strerror(errno));
	if (c == 0)
		child();
	int w = open(f1, O_WRONLY | O_CLOEXEC);
	if (w < 0 || fcntl(w, F_SETPIPE_SZ, SIZE) < 0)
		die("parent: open/size %s: %s", f1, strerror(errno));
	static unsigned char data[LEN];
	for (size_t i = 0; i < LEN; i++)
		data[i] = byte_at(i);
	if (write(w, data, LEN) != LEN)
		die("parent: write F1: %s", strerror(errno));

	int r2 = open(f2, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	int r3 = open(f3, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	int w3 = open(f3, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (r2 < 0 || r3 < 0 || w3 < 0 || write(w3, "hup-data", 8) != 8)
		die("parent: F2/F3: %s", strerror(errno));
	close(w3);
	int rw = open(f4, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (rw < 0 || write(rw, "rw", 2) != 2)
		die("parent: F4: %s", strerror(errno));
	if (revents(r2) != 0 || revents(r3) != (POLLIN | POLLHUP))
		die("parent: setup: F2 revents %x, F3 revents %x", revents(r2), revents(r3));

	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", c);
	double deadline = mono_now() + 10;
	while (!status_has(needle) && mono_now() < deadline)
		sleep_ms(5);
	status("READY parent pid=%d child=%d w=%d r2=%d r3=%d rw=%d", getpid(), c, w, r2, r3, rw);
	while (!go_requested())
		sleep_ms(10);

	CHECK(fcntl(w, F_GETPIPE_SZ) == SIZE, "parent: F1 buffer %d, expected %d", fcntl(w, F_GETPIPE_SZ), SIZE);
	CHECK((fcntl(w, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY, "parent: F1 flags 0%o", fcntl(w, F_GETFL));
	CHECK(revents(r2) == 0, "parent: F2 reports %x, expected nothing (no writer was ever seen)", revents(r2));
	CHECK(revents(r3) == (POLLIN | POLLHUP), "parent: F3 reports %x, expected POLLIN|POLLHUP", revents(r3));
	char buf[64] = "";
	ssize_t k = read(r3, buf, sizeof(buf) - 1);
	CHECK(k == 8 && memcmp(buf, "hup-data", 8) == 0, "parent: F3 gave %zd bytes", k);
	CHECK(read(r3, buf, sizeof(buf)) == 0, "parent: F3 does not give EOF after its bytes");
	k = read(rw, buf, sizeof(buf));
	CHECK(k == 2 && memcmp(buf, "rw", 2) == 0, "parent: F4 gave %zd bytes", k);
	CHECK((fcntl(rw, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDWR | O_NONBLOCK), "parent: F4 flags 0%o",
	      fcntl(rw, F_GETFL));
	/* The child checks its epoll before the hang-up this close causes. */
	deadline = mono_now() + 10;
	while (!status_has("CHECKED child") && mono_now() < deadline)
		sleep_ms(5);
	close(w);
	int st;
	pid_t r;
	deadline = mono_now() + 10;
	while ((r = waitpid(c, &st, WNOHANG)) == 0 && mono_now() < deadline)
		sleep_ms(5);
	CHECK(r == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with %d status 0x%x", r, st);
	role_finish();
}
