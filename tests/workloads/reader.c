/*
 * reader: blocked in read() on a self-pipe when checkpointed.
 * ITIMER_REAL (3 s, one shot) fires SIGALRM whose handler (SA_RESTART) writes one
 * byte 'A' into the pipe, so the read returns it. After the restore the read must
 * return exactly that byte (no EINTR, no spurious data) and the handler must have run
 * exactly once, not earlier than the timer allowed.
 * A second pipe holds 1000 bytes of unread data (pipe size raised to 128 KiB, read end
 * O_NONBLOCK): after the restore they must all be there, in order, and nothing more.
 * Lines: READY itimer_remaining=.. ; GOT n=.. byte=.. alarms=.. elapsed=..
 */
#include "common.h"
#include <signal.h>
#include <sys/time.h>

static int p1[2], p2[2];
static volatile int alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
	char b = 'A';
	if (write(p1[1], &b, 1) != 1)
		_exit(3);
}

static unsigned char pat(unsigned i)
{
	return (unsigned char)(i * 131 + 7);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (pipe(p1) || pipe2(p2, O_CLOEXEC))
		die("pipe: %s", strerror(errno));
	if (fcntl(p2[0], F_SETPIPE_SZ, 128 * 1024) < 0)
		die("F_SETPIPE_SZ: %s", strerror(errno));
	fcntl(p2[0], F_SETFL, O_NONBLOCK);
	unsigned char data[1000];
	for (unsigned i = 0; i < sizeof(data); i++)
		data[i] = pat(i);
	if (write(p2[1], data, sizeof(data)) != (ssize_t)sizeof(data))
		die("write p2");
	int pipe_sz = fcntl(p2[0], F_GETPIPE_SZ);
	int fl_r = fcntl(p2[0], F_GETFL), fl_w = fcntl(p2[1], F_GETFL);
	int fl1_r = fcntl(p1[0], F_GETFL), fl1_w = fcntl(p1[1], F_GETFL);

	double t0;
	double rem_ready = arm_oneshot_alarm(on_alarm, 3, &t0);
	status("READY itimer_remaining=%.3f pipe=%d,%d data_pipe=%d,%d", rem_ready, p1[0], p1[1],
	       p2[0], p2[1]);

	char buf[16];
	ssize_t n;
	int read_errno = 0;
	n = read(p1[0], buf, sizeof(buf));
	if (n < 0)
		read_errno = errno;
	double elapsed = mono_now() - t0;
	status("GOT n=%zd byte=0x%02x alarms=%d elapsed=%.3f errno=%d", n, n > 0 ? (unsigned char)buf[0] : 0,
	       alarms, elapsed, read_errno);

	CHECK(n == 1, "read on the self-pipe: expected 1 byte got %zd (%s)", n,
	      n < 0 ? strerror(read_errno) : "ok");
	CHECK(n < 1 || buf[0] == 'A', "read on the self-pipe: expected 'A' got 0x%02x",
	      (unsigned char)buf[0]);
	CHECK(alarms == 1, "SIGALRM handler ran %d times, expected 1", (int)alarms);
	CHECK(elapsed >= rem_ready - 0.01,
	      "the timer fired %.3f s after being armed, before its %.3f s", elapsed, rem_ready);
	check_alarm_disarmed();

	while (!go_requested())
		sleep_ms(5);

	/* nothing more in the self-pipe */
	fcntl(p1[0], F_SETFL, fl1_r | O_NONBLOCK);
	n = read(p1[0], buf, sizeof(buf));
	CHECK(n < 0 && errno == EAGAIN, "self-pipe has %zd spurious bytes", n);
	fcntl(p1[0], F_SETFL, fl1_r);

	CHECK_EQ_U("data pipe F_GETPIPE_SZ", pipe_sz, fcntl(p2[0], F_GETPIPE_SZ));
	CHECK_EQ_U("data pipe read end F_GETFL", fl_r, fcntl(p2[0], F_GETFL));
	CHECK_EQ_U("data pipe write end F_GETFL", fl_w, fcntl(p2[1], F_GETFL));
	CHECK_EQ_U("self-pipe read end F_GETFL", fl1_r, fcntl(p1[0], F_GETFL));
	CHECK_EQ_U("self-pipe write end F_GETFL", fl1_w, fcntl(p1[1], F_GETFL));
	CHECK_EQ_U("data pipe read end FD_CLOEXEC", FD_CLOEXEC, fcntl(p2[0], F_GETFD));
	CHECK_EQ_U("self-pipe read end FD_CLOEXEC", 0, fcntl(p1[0], F_GETFD));

	unsigned char got[2000];
	size_t total = 0;
	for (;;) {
		ssize_t r = read(p2[0], got + total, sizeof(got) - total);
		if (r <= 0)
			break;
		total += (size_t)r;
	}
	CHECK(total == sizeof(data), "data pipe: expected %zu unread bytes got %zu", sizeof(data),
	      total);
	for (size_t i = 0; i < total && i < sizeof(data); i++)
		if (got[i] != data[i]) {
			check_failed("data pipe byte %zu: expected 0x%02x got 0x%02x", i, data[i], got[i]);
			break;
		}
	/* the two ends still form one pipe */
	char z = 'z', zz = 0;
	CHECK(write(p2[1], &z, 1) == 1 && read(p2[0], &zz, 1) == 1 && zz == 'z',
	      "data pipe ends are not connected after restore");

	finish("read returned the byte written by the SIGALRM handler after %.3f s; 1000 pipe bytes intact",
	       elapsed);
}
