// LDFLAGS: -pthread
/*
 * timedwait: blocked in ONE system call with a 3 s relative timeout when checkpointed; nothing
 * ever wakes it, so the call must end by its timeout.
 *
 *   argv[2] = futex         futex(FUTEX_WAIT_PRIVATE, word 0, {3 s}): -1/ETIMEDOUT
 *             poll          poll(pipe read end, POLLIN, 3000 ms): 0
 *             epoll         epoll_wait(epoll of a pipe read end, 3000 ms): 0
 *             epoll_pwait2  epoll_pwait2(same, {3 s}, no mask): 0
 *             ppoll         ppoll(pipe read end, {3 s}, no mask): 0
 *             pselect       pselect6(pipe read end, {3 s}, no mask): 0
 *             sigtimedwait  rt_sigtimedwait({SIGUSR1}, {3 s}) (SIGUSR1 blocked): -1/EAGAIN
 *             semtimedop    semtimedop(a new private set, -1 on a 0 semaphore, {3 s}): -1/EAGAIN
 *                           (the set is removed before exit)
 *             io_getevents  io_getevents(an io_setup context with nothing submitted, min 1,
 *                           {3 s}): 0
 *             sigwaitinfo   rt_sigtimedwait({SIGUSR1}, no timeout): SIGUSR1, sent by the test
 *             futex_woken   glibc's loop: FUTEX_WAIT for what is left of a deadline 3 s after
 *                           the start, again after every wake-up; a second thread wakes the
 *                           word every 200 ms (it stays 0): -1/ETIMEDOUT, not before the deadline
 *             recv_timeo    recv on a UNIX stream socket with SO_RCVTIMEO 3 s: -1/EAGAIN
 *             select_sticky select(pipe read end, {3 s}) under the STICKY_TIMEOUTS personality:
 *                           0, the timeval left as it was (checked with "eintr": -1/EINTR,
 *                           the timeval untouched, the personality kept)
 *   MODE@seccomp: a seccomp filter that allows every call is installed first.
 *   MODE@thread: the call is made by a second thread, while the main thread waits for it in
 *     pthread_join (an untimed futex wait).
 *   argv[3] = "eintr": the call must instead return -1/EINTR (what crust documents for it).
 *
 * The timeout the program passed is never changed by crust (futex, epoll_pwait2, sigtimedwait,
 * semtimedop, io_getevents: the timespec holds 3 s after the call, and the futex word is 0; ppoll and pselect6: the kernel writes the time left
 * into it, as it does without a checkpoint).
 * Lines: READY mode=.. tid=<the waiting thread> start=<CLOCK_MONOTONIC s> ;
 *        DONE rc=.. errno=.. start=.. end=.. ts=<timespec after the call>
 * The test knows when the dump and the restore happened (same clock) and judges the times;
 * the workload checks the results.
 */
#include "common.h"
#include <linux/futex.h>
#include <poll.h>
#include <sys/epoll.h>
#include <linux/aio_abi.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <sys/ipc.h>
#include <sys/personality.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/sem.h>
#include <sys/syscall.h>

#define TIMEOUT_S 3

static volatile uint32_t futex_word;
static volatile int waking = 1;

static void *waker(void *unused)
{
	(void)unused;
	for (int i = 0; waking && i < 100; i++) {
		sleep_ms(200);
		syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	}
	return NULL;
}

/* FUTEX_WAIT until `deadline` (CLOCK_MONOTONIC), waiting again after each wake-up. */
static long futex_until(double deadline)
{
	for (int calls = 0; calls < 1000; calls++) {
		double left = deadline - mono_now();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct timespec rel = { (time_t)left, (long)((left - (time_t)left) * 1e9) };
		long rc = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &rel, NULL, 0);
		if (rc == 0 || errno == EINTR || errno == EAGAIN)
			continue;
		return rc;
	}
	errno = E2BIG;
	return -1;
}
static char mode[64] = "futex";
static int expect_eintr;
static double waited; /* end - start, for the last line */
static long result;
static int result_errno;

static void *waiter(void *unused)
{
	(void)unused;
	int p[2];
	if (pipe(p) != 0)
		die("pipe: %s", strerror(errno));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 7 };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) != 0)
		die("epoll: %s", strerror(errno));
	struct pollfd pfd = { .fd = p[0], .events = POLLIN };
	struct timespec ts = { TIMEOUT_S, 0 };
	fd_set rd;
	FD_ZERO(&rd);
	FD_SET(p[0], &rd);

	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	int sem = -1;
	aio_context_t aio = 0;
	if ((strcmp(mode, "sigtimedwait") == 0 || strcmp(mode, "sigwaitinfo") == 0) && sigprocmask(SIG_BLOCK, &usr1, NULL) != 0)
		die("sigprocmask: %s", strerror(errno));
	if (strcmp(mode, "semtimedop") == 0 && (sem = semget(IPC_PRIVATE, 1, 0600)) < 0)
		die("semget: %s", strerror(errno));
	if (strcmp(mode, "io_getevents") == 0 && syscall(SYS_io_setup, 4, &aio) != 0)
		die("io_setup: %s", strerror(errno));

	struct timeval tv = { TIMEOUT_S, 0 };
	if (strcmp(mode, "select_sticky") == 0 && personality(PER_LINUX | STICKY_TIMEOUTS) < 0)
		die("personality: %s", strerror(errno));

	double start = mono_now();
	status("READY mode=%s tid=%ld start=%.6f timeout=%d", mode, (long)syscall(SYS_gettid), start, TIMEOUT_S);
	long rc;
	long want = 0;
	int want_errno = 0;
	if (strcmp(mode, "futex") == 0) {
		rc = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
		want = -1;
		want_errno = ETIMEDOUT;
	} else if (strcmp(mode, "poll") == 0) {
		rc = poll(&pfd, 1, TIMEOUT_S * 1000);
	} else if (strcmp(mode, "epoll") == 0) {
		rc = epoll_wait(ep, &ev, 1, TIMEOUT_S * 1000);
	} else if (strcmp(mode, "epoll_pwait2") == 0) {
		rc = syscall(SYS_epoll_pwait2, ep, &ev, 1, &ts, NULL, 8);
	} else if (strcmp(mode, "ppoll") == 0) {
		rc = syscall(SYS_ppoll, &pfd, 1, &ts, NULL, 8);
	} else if (strcmp(mode, "pselect") == 0) {
		rc = syscall(SYS_pselect6, p[0] + 1, &rd, NULL, NULL, &ts, NULL);
	} else if (strcmp(mode, "sigtimedwait") == 0) {
		rc = syscall(SYS_rt_sigtimedwait, &usr1, NULL, &ts, 8);
		want = -1;
		want_errno = EAGAIN;
	} else if (strcmp(mode, "futex_woken") == 0) {
		pthread_t t;
		if (pthread_create(&t, NULL, waker, NULL) != 0)
			die("pthread_create");
		rc = futex_until(start + TIMEOUT_S);
		int e = errno;
		waking = 0;
		pthread_join(t, NULL);
		errno = e;
		want = -1;
		want_errno = ETIMEDOUT;
	} else if (strcmp(mode, "recv_timeo") == 0) {
		int sv[2];
		struct timeval rcv = { TIMEOUT_S, 0 };
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 ||
		    setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof(rcv)) != 0)
			die("socketpair: %s", strerror(errno));
		char c;
		rc = recv(sv[0], &c, 1, 0);
		want = -1;
		want_errno = EAGAIN;
	} else if (strcmp(mode, "select_sticky") == 0) {
		rc = select(p[0] + 1, &rd, NULL, NULL, &tv);
	} else if (strcmp(mode, "sigwaitinfo") == 0) {
		rc = syscall(SYS_rt_sigtimedwait, &usr1, NULL, NULL, 8);
		want = SIGUSR1;
	} else if (strcmp(mode, "semtimedop") == 0) {
		struct sembuf down = { 0, -1, 0 };
		rc = syscall(SYS_semtimedop, sem, &down, 1, &ts);
		want = -1;
		want_errno = EAGAIN;
	} else if (strcmp(mode, "io_getevents") == 0) {
		struct io_event events[1];
		rc = syscall(SYS_io_getevents, aio, 1, 1, events, &ts);
	} else {
		die("unknown mode %s", mode);
	}
	int err = rc < 0 ? errno : 0;
	if (expect_eintr) {
		want = -1;
		want_errno = EINTR;
	}
	if (sem >= 0)
		semctl(sem, 0, IPC_RMID);
	double end = mono_now();
	status("DONE rc=%ld errno=%d start=%.6f end=%.6f ts=%ld.%09ld", rc, err, start, end, (long)ts.tv_sec,
	       ts.tv_nsec);

	CHECK(rc == want && err == want_errno, "%s returned %ld (%s), expected %ld (%s)", mode, rc,
	      rc < 0 ? strerror(err) : "ok", want, want_errno ? strerror(want_errno) : "ok");
	CHECK_EQ_U("futex word", 0, futex_word);
	if (strcmp(mode, "futex") == 0 || strcmp(mode, "epoll_pwait2") == 0 || strcmp(mode, "sigtimedwait") == 0 ||
	    strcmp(mode, "semtimedop") == 0 || strcmp(mode, "io_getevents") == 0)
		CHECK(ts.tv_sec == TIMEOUT_S && ts.tv_nsec == 0, "the program's timespec changed to %ld.%09ld",
		      (long)ts.tv_sec, ts.tv_nsec);
	else if (strcmp(mode, "ppoll") == 0 || strcmp(mode, "pselect") == 0)
		CHECK(ts.tv_sec == 0 && ts.tv_nsec == 0, "a timed-out %s left %ld.%09ld in its timespec", mode,
		      (long)ts.tv_sec, ts.tv_nsec);
	if (strcmp(mode, "select_sticky") == 0) {
		CHECK(tv.tv_sec == TIMEOUT_S && tv.tv_usec == 0, "select under STICKY_TIMEOUTS changed its timeval to %ld.%06ld",
		      (long)tv.tv_sec, (long)tv.tv_usec);
		CHECK(personality(0xffffffff) & STICKY_TIMEOUTS, "the STICKY_TIMEOUTS personality is gone");
	}
	if (strcmp(mode, "futex_woken") == 0)
		CHECK(end - start >= TIMEOUT_S, "the wait for a deadline %d s after the start ended after %.3f s", TIMEOUT_S,
		      end - start);
	waited = end - start;
	result = rc;
	result_errno = err;
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc > 2)
		snprintf(mode, sizeof(mode), "%s", argv[2]);
	expect_eintr = argc > 3 && strcmp(argv[3], "eintr") == 0;
	char *at = strchr(mode, '@');
	if (at && strcmp(at, "@seccomp") == 0) {
		*at = 0;
		at = NULL;
		struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
		struct sock_fprog prog = { 1, &allow };
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
			die("seccomp: %s", strerror(errno));
	}
	if (at && strcmp(at, "@thread") == 0) {
		*at = 0;
		pthread_t t;
		if (pthread_create(&t, NULL, waiter, NULL) != 0)
			die("pthread_create");
		pthread_join(t, NULL);
	} else {
		waiter(NULL);
	}
	while (!go_requested())
		sleep_ms(5);
	finish("%s ended after %.3f s (dump and restore included): rc=%ld errno=%d", mode, waited, result, result_errno);
}
