/*
 * eventfd, signalfd, timerfd and memfd state across checkpoint/restore.
 *
 *   fdkinds STATUS MODE     MODE: eventfd | signalfd | timerfd | memfd | shared (with a child)
 *
 * Each mode sets up its objects at fixed fd numbers (listed in the READY line), waits for
 * <status>.go without touching them, then checks from inside that everything is as it was
 * (counters, semaphore mode, pending signals read through a signalfd, timers' time left and
 * unread expirations, memfd contents, size, seals, offset, mode, mapping) and reports PASS or
 * FAIL. While it waits it measures the longest gap in its own CLOCK_MONOTONIC loop: the time
 * it did not exist between dump and restore, which relative timers must not count.
 */
#include "common.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/wait.h>

#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

static double longest_gap;
static int ready_noexec; /* this kernel has MFD_NOEXEC_SEAL */

static double floor_d(double x)
{
	return (double)(long long)x - ((double)(long long)x > x);
}

/* Waits for .go, measuring the longest stretch the loop did not run. */
static void wait_go(void)
{
	double last = mono_now();
	while (!go_requested()) {
		sleep_ms(5);
		double now = mono_now();
		if (now - last > longest_gap) {
			longest_gap = now - last;
		}
		last = now;
	}
}

static void place(int fd, int at)
{
	if (fd < 0)
		die("creating the object for fd %d: %s", at, strerror(errno));
	if (fd == at)
		return;
	/* keeps the close-on-exec flag the object was created with */
	int cloexec = fcntl(fd, F_GETFD) & FD_CLOEXEC ? O_CLOEXEC : 0;
	if (dup3(fd, at, cloexec) != at)
		die("dup3 to %d: %s", at, strerror(errno));
	close(fd);
}

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static int cloexec(int fd)
{
	return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
}

static int nonblock(int fd)
{
	return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
}

/* ---------------------------------------------------------------- eventfd */

#define BIG_COUNT 0x123456789abULL

static void eventfd_setup(void)
{
	place(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 10);
	uint64_t v = BIG_COUNT;
	if (write(10, &v, 8) != 8)
		die("write eventfd: %s", strerror(errno));
	place(eventfd(3, EFD_SEMAPHORE), 11);
	if (dup2(10, 12) != 12) /* the same description */
		die("dup2: %s", strerror(errno));
	place(eventfd(7, 0), 13);
	place(eventfd(0, EFD_NONBLOCK), 14);
	v = 0xfffffffffffffffeULL; /* the largest count an eventfd holds */
	place(eventfd(0, EFD_NONBLOCK), 15);
	if (write(15, &v, 8) != 8)
		die("write eventfd 15: %s", strerror(errno));
	status("READY eventfd fds=10,11,12,13,14,15");
}

static void eventfd_verify(void)
{
	uint64_t v = 0;
	CHECK(nonblock(10) && cloexec(10), "fd 10: O_NONBLOCK/FD_CLOEXEC lost");
	CHECK(!nonblock(11) && !cloexec(11), "fd 11: gained O_NONBLOCK or FD_CLOEXEC");
	CHECK(nonblock(12), "fd 12 (dup of 10): no O_NONBLOCK");
	CHECK(!cloexec(12), "fd 12: FD_CLOEXEC set");
	CHECK(read(10, &v, 8) == 8, "read fd 10: %s", strerror(errno));
	CHECK_EQ_U("eventfd 10 count (> 32 bits)", BIG_COUNT, v);
	errno = 0;
	CHECK(read(12, &v, 8) < 0 && errno == EAGAIN, "fd 12 should share fd 10's (now empty) counter: %s",
	      strerror(errno));
	for (int i = 0; i < 3; i++) {
		v = 0;
		CHECK(read(11, &v, 8) == 8, "semaphore read %d: %s", i, strerror(errno));
		CHECK_EQ_U("semaphore eventfd read", 1, v);
	}
	CHECK(!readable(11), "semaphore eventfd readable after 3 reads (count was 3)");
	CHECK(read(13, &v, 8) == 8, "read fd 13: %s", strerror(errno));
	CHECK_EQ_U("eventfd 13 count", 7, v);
	errno = 0;
	CHECK(read(14, &v, 8) < 0 && errno == EAGAIN, "empty eventfd 14 readable: %s", strerror(errno));
	v = 5;
	CHECK(write(14, &v, 8) == 8, "write fd 14: %s", strerror(errno));
	v = 0;
	CHECK(read(14, &v, 8) == 8 && v == 5, "eventfd 14 after write: %llu", (unsigned long long)v);
	v = 0;
	CHECK(read(15, &v, 8) == 8, "read fd 15: %s", strerror(errno));
	CHECK_EQ_U("eventfd 15 count (the largest)", 0xfffffffffffffffeULL, v);
}

/* ---------------------------------------------------------------- signalfd */

static void signalfd_setup(void)
{
	sigset_t block, one, two;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGRTMIN + 1);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		die("sigprocmask: %s", strerror(errno));
	sigemptyset(&one);
	sigaddset(&one, SIGUSR1);
	sigaddset(&one, SIGRTMIN + 1);
	place(signalfd(-1, &one, SFD_NONBLOCK | SFD_CLOEXEC), 20);
	sigemptyset(&two);
	sigaddset(&two, SIGUSR2);
	place(signalfd(-1, &two, 0), 21);
	kill(getpid(), SIGUSR1);
	union sigval val = { .sival_int = 4242 };
	if (sigqueue(getpid(), SIGRTMIN + 1, val))
		die("sigqueue: %s", strerror(errno));
	status("READY signalfd fds=20,21 pending=SIGUSR1,SIGRTMIN+1");
}

static void signalfd_verify(void)
{
	struct signalfd_siginfo si;
	CHECK(nonblock(20) && cloexec(20), "fd 20: O_NONBLOCK/FD_CLOEXEC lost");
	CHECK(!nonblock(21) && !cloexec(21), "fd 21: gained O_NONBLOCK or FD_CLOEXEC");
	memset(&si, 0, sizeof(si));
	CHECK(read(20, &si, sizeof(si)) == sizeof(si), "read signalfd 20 (pending SIGUSR1): %s", strerror(errno));
	CHECK_EQ_U("first signal read", SIGUSR1, si.ssi_signo);
	CHECK_EQ_U("SIGUSR1 sender", getpid(), si.ssi_pid);
	memset(&si, 0, sizeof(si));
	CHECK(read(20, &si, sizeof(si)) == sizeof(si), "read signalfd 20 (pending SIGRTMIN+1): %s", strerror(errno));
	CHECK_EQ_U("second signal read", SIGRTMIN + 1, si.ssi_signo);
	CHECK_EQ_U("sigqueue value", 4242, si.ssi_int);
	CHECK_EQ_U("sigqueue code", SI_QUEUE, si.ssi_code);
	errno = 0;
	CHECK(read(20, &si, sizeof(si)) < 0 && errno == EAGAIN, "signalfd 20 not empty afterwards: %s", strerror(errno));
	CHECK(!readable(21), "signalfd 21 readable before SIGUSR2 was sent");
	kill(getpid(), SIGUSR2);
	memset(&si, 0, sizeof(si));
	CHECK(read(21, &si, sizeof(si)) == sizeof(si), "read signalfd 21: %s", strerror(errno));
	CHECK_EQ_U("signal read from fd 21", SIGUSR2, si.ssi_signo);
	/* SIGUSR2 is not in fd 20's mask */
	kill(getpid(), SIGUSR2);
	CHECK(!readable(20), "signalfd 20 reads SIGUSR2, which is not in its mask");
	CHECK(read(21, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == (uint32_t)SIGUSR2, "second SIGUSR2");
}

/* ---------------------------------------------------------------- timerfd */

static double t_arm; /* CLOCK_MONOTONIC when the relative timers were armed */
static struct timespec abs_rt, abs_boot;

static double ts_sec(struct timespec t)
{
	return t.tv_sec + t.tv_nsec / 1e9;
}

static double clock_sec(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return ts_sec(t);
}

static void timerfd_setup(void)
{
	struct itimerspec its;
	place(timerfd_create(CLOCK_MONOTONIC, 0), 30);
	place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 31);
	place(timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC), 32);
	place(timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK), 33);
	place(timerfd_create(CLOCK_MONOTONIC, 0), 34);
	place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 35);
	place(timerfd_create(CLOCK_MONOTONIC, 0), 36);

	t_arm = mono_now();
	/* 30: one-shot, 5 s, relative */
	its = (struct itimerspec){ { 0, 0 }, { 5, 0 } };
	timerfd_settime(30, 0, &its, NULL);
	/* 31: periodic 20 ms, never read before the dump */
	its = (struct itimerspec){ { 0, 20000000 }, { 0, 20000000 } };
	timerfd_settime(31, 0, &its, NULL);
	/* 32: absolute CLOCK_REALTIME one-shot 700 ms ahead, cancelled if the clock is set */
	clock_gettime(CLOCK_REALTIME, &abs_rt);
	abs_rt.tv_nsec += 700000000;
	if (abs_rt.tv_nsec >= 1000000000) {
		abs_rt.tv_sec++;
		abs_rt.tv_nsec -= 1000000000;
	}
	its = (struct itimerspec){ { 0, 0 }, abs_rt };
	if (timerfd_settime(32, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its, NULL))
		die("timerfd_settime 32: %s", strerror(errno));
	/* 33: absolute CLOCK_BOOTTIME, first 200 ms ahead, then every 100 ms */
	clock_gettime(CLOCK_BOOTTIME, &abs_boot);
	abs_boot.tv_nsec += 200000000;
	if (abs_boot.tv_nsec >= 1000000000) {
		abs_boot.tv_sec++;
		abs_boot.tv_nsec -= 1000000000;
	}
	its = (struct itimerspec){ { 0, 100000000 }, abs_boot };
	timerfd_settime(33, TFD_TIMER_ABSTIME, &its, NULL);
	/* 34: disarmed, with a period of 1 s remembered */
	its = (struct itimerspec){ { 1, 0 }, { 0, 0 } };
	timerfd_settime(34, 0, &its, NULL);
	/* 35: one-shot 30 ms: expires before the dump, unread */
	its = (struct itimerspec){ { 0, 0 }, { 0, 30000000 } };
	timerfd_settime(35, 0, &its, NULL);
	/* 36: never armed */
	status("READY timerfd fds=30,31,32,33,34,35,36");
}

static void timerfd_verify(void)
{
	struct itimerspec cur;
	uint64_t ticks = 0;
	double now = mono_now();
	/* what the timers lived through: everything since they were armed but the gap */
	double lived = now - t_arm - longest_gap;
	fprintf(stderr, "lived %.3f s, gap %.3f s\n", lived, longest_gap);
	CHECK(longest_gap > 0.5, "no gap of the dump/restore seen (longest %.3f s)", longest_gap);

	CHECK(!nonblock(30) && !cloexec(30), "fd 30 flags");
	CHECK(nonblock(31) && nonblock(33) && nonblock(35), "O_NONBLOCK lost on 31/33/35");
	CHECK(cloexec(32), "fd 32: FD_CLOEXEC lost");

	timerfd_gettime(30, &cur);
	double left = ts_sec(cur.it_value);
	/*
	 * The gap is the time the process did not run: it covers the time the timer was gone
	 * (from its reading at the dump to its re-arming at restore) and a little more (the
	 * freeze before the reading, the restore after the re-arming), so the time left is at
	 * most what the gap predicts and a little less; had the second between dump and restore
	 * counted, it would be a second less.
	 */
	double want = 5.0 - lived;
	CHECK(left > 0 && left <= want + 0.02 && left >= want - 0.4,
	      "timer 30: %.3f s left, expected a little under %.3f (5 s minus the %.3f s it lived)", left, want, lived);
	CHECK(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == 0, "timer 30 has a period");

	CHECK(read(31, &ticks, 8) == 8, "read timer 31: %s", strerror(errno));
	double expected = lived / 0.020;
	/* at least the periods it lived through (not only those since the restore), a few more
	 * for the part of the gap the timer ran (see above) */
	CHECK(ticks + 2 >= expected && ticks <= expected + 20,
	      "timer 31 (20 ms period): %llu expirations, expected about %.1f", (unsigned long long)ticks, expected);
	timerfd_gettime(31, &cur);
	CHECK_EQ_U("timer 31 period ns", 20000000, cur.it_interval.tv_nsec);

	/* absolute realtime deadline passed while the process did not exist */
	CHECK(clock_sec(CLOCK_REALTIME) > ts_sec(abs_rt), "the test did not wait past the realtime deadline");
	CHECK(readable(32), "timer 32 (absolute, deadline passed) is not readable");
	ticks = 0;
	CHECK(read(32, &ticks, 8) == 8, "read timer 32: %s", strerror(errno));
	CHECK_EQ_U("timer 32 expirations", 1, ticks);

	/* absolute boottime periodic: every period since the first deadline counts */
	ticks = 0;
	/* expirations at first + k * 100 ms, k = 0, 1, ... up to the read, none lost */
	double n_before = 1 + floor_d((clock_sec(CLOCK_BOOTTIME) - ts_sec(abs_boot)) / 0.1);
	CHECK(read(33, &ticks, 8) == 8, "read timer 33: %s", strerror(errno));
	double n_after = 1 + floor_d((clock_sec(CLOCK_BOOTTIME) - ts_sec(abs_boot)) / 0.1);
	CHECK(ticks >= n_before && ticks <= n_after,
	      "timer 33 (absolute, 100 ms period): %llu expirations, expected %.0f", (unsigned long long)ticks, n_before);

	timerfd_gettime(34, &cur);
	CHECK(cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0, "timer 34 armed");
	CHECK(cur.it_interval.tv_sec == 1 && cur.it_interval.tv_nsec == 0, "timer 34 lost its period");

	ticks = 0;
	CHECK(read(35, &ticks, 8) == 8, "read timer 35 (expired before the dump): %s", strerror(errno));
	CHECK_EQ_U("timer 35 expirations", 1, ticks);
	errno = 0;
	CHECK(read(35, &ticks, 8) < 0 && errno == EAGAIN, "timer 35 readable twice");

	timerfd_gettime(36, &cur);
	CHECK(cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0 && cur.it_interval.tv_sec == 0, "timer 36 armed");
	CHECK(!readable(36), "timer 36 readable");
}

/* ---------------------------------------------------------------- memfd */

#define M1_DATA 12411 /* 3 pages and a bit */
#define M1_SIZE (4 << 20)
#define M1_TAIL (3 << 20)

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 7 + 13);
}

static void memfd_setup(void)
{
	static unsigned char buf[M1_DATA];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = pattern(i);
	/* 40: sealable, contents + a hole + a tail, offset 12345, shrink/grow sealed; 41 is a dup */
	place(memfd_create("crust memfd one", MFD_ALLOW_SEALING | MFD_CLOEXEC), 40);
	if (write(40, buf, sizeof(buf)) != sizeof(buf) || ftruncate(40, M1_SIZE) ||
	    pwrite(40, "tail", 4, M1_TAIL) != 4)
		die("filling memfd 40: %s", strerror(errno));
	lseek(40, 12345, SEEK_SET);
	if (fcntl(40, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
		die("F_ADD_SEALS 40: %s", strerror(errno));
	if (dup2(40, 41) != 41)
		die("dup2: %s", strerror(errno));
	/* 42: sealing not allowed, O_APPEND */
	place(memfd_create("plain", 0), 42);
	if (write(42, "hello", 5) != 5 || fcntl(42, F_SETFL, O_APPEND))
		die("memfd 42: %s", strerror(errno));
	/* 43: write-sealed and sealed against more seals, offset 100 */
	place(memfd_create("sealed", MFD_ALLOW_SEALING), 43);
	if (write(43, buf, 8192) != 8192)
		die("write 43: %s", strerror(errno));
	lseek(43, 100, SEEK_SET);
	if (fcntl(43, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		die("F_ADD_SEALS 43: %s", strerror(errno));
	/* 44: empty, mode 0600 */
	place(memfd_create("empty", MFD_ALLOW_SEALING), 44);
	fchmod(44, 0600);
	/* 45: MFD_NOEXEC_SEAL (mode 0666, F_SEAL_EXEC), if this kernel has it */
	int nx = memfd_create("noexec", MFD_NOEXEC_SEAL);
	ready_noexec = nx >= 0;
	place(nx >= 0 ? nx : memfd_create("noexec", MFD_ALLOW_SEALING), 45);
	/* 46: the only description is read-only (reopened, the read-write one closed) */
	int rw = memfd_create("read only", 0);
	if (rw < 0 || write(rw, "readonly", 8) != 8)
		die("memfd rw: %s", strerror(errno));
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", rw);
	place(open(path, O_RDONLY), 46);
	close(rw);
	lseek(46, 4, SEEK_SET);
	status("READY memfd fds=40,41,42,43,44,45,46 noexec_seal=%d", nx >= 0);
}

static void check_link(int fd, const char *want)
{
	char p[64], got[256];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, got, sizeof(got) - 1);
	got[n < 0 ? 0 : n] = 0;
	CHECK_EQ_S("memfd link", want, got);
}

static void memfd_verify(void)
{
	static unsigned char buf[M1_DATA];
	struct stat st;

	check_link(40, "/memfd:crust memfd one (deleted)");
	CHECK(fstat(40, &st) == 0 && st.st_size == M1_SIZE, "memfd 40 size %lld", (long long)st.st_size);
	CHECK_EQ_U("memfd 40 mode", 0777, st.st_mode & 07777);
	CHECK(cloexec(40) && !cloexec(41), "fd 40/41 close-on-exec flags");
	CHECK_EQ_U("memfd 40 seals", F_SEAL_SHRINK | F_SEAL_GROW, fcntl(40, F_GET_SEALS));
	CHECK_EQ_U("memfd 40 offset", 12345, lseek(40, 0, SEEK_CUR));
	CHECK(pread(40, buf, sizeof(buf), 0) == sizeof(buf), "pread 40: %s", strerror(errno));
	size_t bad = 0;
	for (size_t i = 0; i < sizeof(buf); i++)
		bad += buf[i] != pattern(i);
	CHECK(bad == 0, "memfd 40: %zu bytes of the pattern differ", bad);
	char tail[5] = { 0 };
	CHECK(pread(40, tail, 4, M1_TAIL) == 4 && memcmp(tail, "tail", 4) == 0, "memfd 40 tail '%s'", tail);
	unsigned char hole[4096];
	CHECK(pread(40, hole, sizeof(hole), 1 << 20) == sizeof(hole), "pread hole");
	bad = 0;
	for (size_t i = 0; i < sizeof(hole); i++)
		bad += hole[i] != 0;
	CHECK(bad == 0, "memfd 40: the hole holds %zu non-zero bytes", bad);
	/* allocated blocks: a hole stayed a hole (4 MiB file, about 16 KiB of data) */
	CHECK(st.st_blocks * 512 < (1 << 20), "memfd 40 occupies %lld bytes: the hole was filled",
	      (long long)st.st_blocks * 512);
	/* 41 shares 40's offset */
	lseek(40, 777, SEEK_SET);
	CHECK_EQ_U("fd 41 offset after moving fd 40", 777, lseek(41, 0, SEEK_CUR));
	CHECK(ftruncate(40, 0) < 0 && errno == EPERM, "memfd 40 could shrink (F_SEAL_SHRINK lost)");
	/* mapping it works, and writes through the mapping reach the file */
	unsigned char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, 40, 0);
	CHECK(m != MAP_FAILED, "mmap memfd 40: %s", strerror(errno));
	if (m != MAP_FAILED) {
		CHECK(m[5000] == pattern(5000), "mapping of memfd 40 shows other contents");
		m[1] = 0xee;
		unsigned char c = 0;
		CHECK(pread(41, &c, 1, 1) == 1 && c == 0xee, "write through the mapping not seen by pread");
		munmap(m, 8192);
	}

	check_link(42, "/memfd:plain (deleted)");
	CHECK_EQ_U("memfd 42 seals (sealing not allowed)", F_SEAL_SEAL, fcntl(42, F_GET_SEALS));
	CHECK(fcntl(42, F_GETFL) & O_APPEND, "memfd 42 lost O_APPEND");
	CHECK_EQ_U("memfd 42 offset", 5, lseek(42, 0, SEEK_CUR));
	lseek(42, 0, SEEK_SET);
	CHECK(write(42, "!", 1) == 1, "write 42: %s", strerror(errno));
	char h[8] = { 0 };
	CHECK(pread(42, h, 7, 0) == 6 && strcmp(h, "hello!") == 0, "memfd 42 holds '%s', expected 'hello!' (append)", h);

	check_link(43, "/memfd:sealed (deleted)");
	CHECK_EQ_U("memfd 43 seals", F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, fcntl(43, F_GET_SEALS));
	CHECK_EQ_U("memfd 43 offset", 100, lseek(43, 0, SEEK_CUR));
	CHECK(fstat(43, &st) == 0 && st.st_size == 8192, "memfd 43 size %lld", (long long)st.st_size);
	errno = 0;
	CHECK(pwrite(43, "x", 1, 0) < 0 && errno == EPERM, "memfd 43 writable despite F_SEAL_WRITE (%s)",
	      strerror(errno));
	void *w = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, 43, 0);
	CHECK(w == MAP_FAILED, "memfd 43: writable shared mapping allowed despite F_SEAL_WRITE");
	unsigned char *r = mmap(NULL, 8192, PROT_READ, MAP_SHARED, 43, 0);
	CHECK(r != MAP_FAILED && r[8191] == pattern(8191) && r[0] == pattern(0), "memfd 43 read-only mapping");
	if (r != MAP_FAILED)
		munmap(r, 8192);

	check_link(44, "/memfd:empty (deleted)");
	CHECK(fstat(44, &st) == 0 && st.st_size == 0, "memfd 44 not empty");
	CHECK_EQ_U("memfd 44 mode", 0600, st.st_mode & 07777);
	CHECK_EQ_U("memfd 44 seals", 0, fcntl(44, F_GET_SEALS));

	check_link(45, "/memfd:noexec (deleted)");
	if (ready_noexec) {
		CHECK(fcntl(45, F_GET_SEALS) & F_SEAL_EXEC, "memfd 45 lost F_SEAL_EXEC");
		CHECK(fstat(45, &st) == 0 && (st.st_mode & 07777) == 0666, "memfd 45 mode %o", st.st_mode & 07777);
	}

	check_link(46, "/memfd:read only (deleted)");
	CHECK_EQ_U("memfd 46 access mode", O_RDONLY, fcntl(46, F_GETFL) & O_ACCMODE);
	CHECK_EQ_U("memfd 46 offset", 4, lseek(46, 0, SEEK_CUR));
	char ro[9] = { 0 };
	CHECK(read(46, ro, 8) == 4 && strcmp(ro, "only") == 0, "memfd 46 read '%s'", ro);
	errno = 0;
	CHECK(write(46, "x", 1) < 0 && errno == EBADF, "memfd 46 writable");
}

/* ---------------------------------------------------------------- shared */

static pid_t child;

/* An eventfd, a memfd and an expired timerfd, shared with a child across fork. After .go the
 * child adds 3 to the eventfd, writes "ab" at the memfd's shared offset and reads the timer's
 * expiration; the parent then sees all three through its own fds. */
static void shared_setup(void)
{
	place(eventfd(5, EFD_NONBLOCK), 10);
	place(memfd_create("shared", 0), 40);
	if (write(40, "0123456789", 10) != 10)
		die("write memfd: %s", strerror(errno));
	lseek(40, 2, SEEK_SET);
	place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 35);
	struct itimerspec its = { { 0, 0 }, { 0, 10000000 } };
	timerfd_settime(35, 0, &its, NULL);
	sleep_ms(50);
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		wait_go();
		uint64_t v = 3, ticks = 0;
		int ok = write(10, &v, 8) == 8;
		ok &= write(40, "ab", 2) == 2;
		ok &= read(35, &ticks, 8) == 8 && ticks == 1;
		_exit(ok ? 0 : 1);
	}
	status("READY shared pid=%d child=%d fds=10,35,40", getpid(), child);
}

static void shared_verify(void)
{
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child, "waitpid child %d: %s", child, strerror(errno));
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed its part (status %#x)", st);
	uint64_t v = 0;
	CHECK(read(10, &v, 8) == 8, "read eventfd: %s", strerror(errno));
	CHECK_EQ_U("eventfd count (5 + the child's 3)", 8, v);
	CHECK_EQ_U("memfd offset after the child's write", 4, lseek(40, 0, SEEK_CUR));
	char buf[11] = { 0 };
	CHECK(pread(40, buf, 10, 0) == 10 && strcmp(buf, "01ab456789") == 0, "memfd holds '%s'", buf);
	errno = 0;
	CHECK(read(35, &v, 8) < 0 && errno == EAGAIN, "the timer's expiration, read by the child, is still there");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	void (*verify)(void) = NULL;
	if (!strcmp(mode, "eventfd")) {
		eventfd_setup();
		verify = eventfd_verify;
	} else if (!strcmp(mode, "signalfd")) {
		signalfd_setup();
		verify = signalfd_verify;
	} else if (!strcmp(mode, "timerfd")) {
		timerfd_setup();
		verify = timerfd_verify;
	} else if (!strcmp(mode, "memfd")) {
		memfd_setup();
		verify = memfd_verify;
	} else if (!strcmp(mode, "shared")) {
		shared_setup();
		verify = shared_verify;
	} else {
		die("unknown mode '%s'", mode);
	}
	wait_go();
	if (verify)
		verify();
	finish("%s", mode);
}
