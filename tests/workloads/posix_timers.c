// LDFLAGS: -pthread
/*
 * posix_timers: POSIX timers (timer_create) of every notification kind, with ids that are not
 * a plain sequence (one was deleted), on several clocks:
 *   t_sig    CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR1 with sival 0x5151, periodic 40 ms;
 *   t_none   CLOCK_REALTIME,  SIGEV_NONE, one-shot 120 s (only read with timer_gettime);
 *   t_tid    CLOCK_BOOTTIME,  SIGEV_THREAD_ID SIGRTMIN+2 to the worker thread, sival 0x7171,
 *            periodic 30 ms;
 *   t_idle   CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR2, never armed;
 *   t_cpu    CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, one-shot 500 s of CPU time;
 *   (t_gone  created between t_sig and t_none, then deleted: its id stays unused.)
 * READY sig=ID none=ID tid=ID idle=ID cpu=ID gone=ID none_left=SECS
 *
 * After <status>.go: every id still names its timer (timer_gettime works on each, and on
 * t_gone it fails with EINVAL); intervals are as armed; t_none has at most what it had at
 * READY left and more than READY's minus the time since; t_idle is still disarmed; within
 * 2 s the SIGUSR1 handler sees >= 5 more expirations of t_sig with si_value 0x5151 and
 * si_timerid t_sig, and the worker >= 5 more of t_tid with 0x7171 and t_tid, in its own
 * thread; a new timer gets an id no restored timer has.
 */
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>

static timer_t t_sig, t_none, t_tid, t_idle, t_cpu, t_gone;
static volatile int sig_count, sig_bad_value, sig_bad_id;
static volatile int tid_count, tid_bad_value, tid_bad_id, tid_wrong_thread;
static volatile pid_t worker_tid;

static int id_of(timer_t t)
{
	return (int)(intptr_t)t;
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_code != SI_TIMER)
		return;
	sig_count++;
	if (si->si_value.sival_int != 0x5151)
		sig_bad_value++;
	if (si->si_timerid != id_of(t_sig))
		sig_bad_id++;
}

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + 2);
	for (;;) {
		siginfo_t si;
		if (sigwaitinfo(&set, &si) != SIGRTMIN + 2)
			continue;
		if ((pid_t)syscall(SYS_gettid) != worker_tid)
			tid_wrong_thread++;
		tid_count++;
		if (si.si_value.sival_int != 0x7171)
			tid_bad_value++;
		if (si.si_timerid != id_of(t_tid))
			tid_bad_id++;
	}
	return NULL;
}

static void create(clockid_t clock, int notify, int signo, int value, pid_t tid, timer_t *t, const char *what)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = signo;
	sev.sigev_value.sival_int = value;
	if (notify == SIGEV_THREAD_ID)
		sev._sigev_un._tid = tid;
	if (timer_create(clock, &sev, t))
		die("timer_create(%s): %s", what, strerror(errno));
}

static void arm(timer_t t, long value_ms, long interval_ms)
{
	struct itimerspec its = {
		.it_interval = { interval_ms / 1000, (interval_ms % 1000) * 1000000L },
		.it_value = { value_ms / 1000, (value_ms % 1000) * 1000000L },
	};
	if (timer_settime(t, 0, &its, NULL))
		die("timer_settime: %s", strerror(errno));
}

static double secs(const struct timespec *ts)
{
	return ts->tv_sec + ts->tv_nsec / 1e9;
}

static long ms(const struct timespec *ts)
{
	return ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN + 2);
	pthread_sigmask(SIG_BLOCK, &rt, NULL); /* only the worker's sigwaitinfo takes it */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	while (!worker_tid)
		sleep_ms(1);

	create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 0x5151, 0, &t_sig, "sig");
	create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0, &t_gone, "gone");
	create(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0, &t_none, "none");
	create(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 0x7171, worker_tid, &t_tid, "tid");
	create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR2, 0, 0, &t_idle, "idle");
	create(CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 0, 0, 0, &t_cpu, "cpu");
	int gone = id_of(t_gone);
	timer_delete(t_gone);
	arm(t_sig, 40, 40);
	arm(t_none, 120000, 0);
	arm(t_tid, 30, 30);
	arm(t_cpu, 500000, 0);
	struct itimerspec cur;
	timer_gettime(t_none, &cur);
	double none_left = secs(&cur.it_value), ready_at = mono_now();
	status("READY sig=%d none=%d tid=%d idle=%d cpu=%d gone=%d none_left=%.3f", id_of(t_sig), id_of(t_none),
	       id_of(t_tid), id_of(t_idle), id_of(t_cpu), gone, none_left);

	while (!go_requested())
		sleep_ms(10);

	CHECK(timer_gettime(t_sig, &cur) == 0, "t_sig %d is gone: %s", id_of(t_sig), strerror(errno));
	CHECK(ms(&cur.it_interval) == 40, "t_sig interval %ld ms, armed 40", ms(&cur.it_interval));
	CHECK(timer_gettime(t_none, &cur) == 0, "t_none %d is gone: %s", id_of(t_none), strerror(errno));
	double left = secs(&cur.it_value), since = mono_now() - ready_at;
	CHECK(left <= none_left + 0.01 && left > none_left - since - 1.0,
	      "t_none has %.3f s left; %.3f at READY, %.3f s ago", left, none_left, since);
	CHECK(ms(&cur.it_interval) == 0, "t_none interval %ld ms, armed one-shot", ms(&cur.it_interval));
	CHECK(timer_gettime(t_tid, &cur) == 0, "t_tid %d is gone: %s", id_of(t_tid), strerror(errno));
	CHECK(ms(&cur.it_interval) == 30, "t_tid interval %ld ms, armed 30", ms(&cur.it_interval));
	CHECK(timer_gettime(t_idle, &cur) == 0, "t_idle %d is gone: %s", id_of(t_idle), strerror(errno));
	CHECK(cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0, "t_idle is armed: %.3f s", secs(&cur.it_value));
	CHECK(timer_gettime(t_cpu, &cur) == 0, "t_cpu %d is gone: %s", id_of(t_cpu), strerror(errno));
	CHECK(secs(&cur.it_value) > 490, "t_cpu has %.3f s of CPU time left, armed 500", secs(&cur.it_value));
	errno = 0;
	CHECK(timer_gettime((timer_t)(intptr_t)gone, &cur) == -1 && errno == EINVAL, "deleted id %d names a timer", gone);

	int sig0 = sig_count, tid0 = tid_count;
	double until = mono_now() + 2.0;
	while ((sig_count - sig0 < 5 || tid_count - tid0 < 5) && mono_now() < until)
		sleep_ms(10);
	CHECK(sig_count - sig0 >= 5, "t_sig expired %d times in 2 s after restore", sig_count - sig0);
	CHECK(tid_count - tid0 >= 5, "t_tid expired %d times in 2 s after restore", tid_count - tid0);
	CHECK(!sig_bad_value && !sig_bad_id, "t_sig signals: %d with a wrong si_value, %d with a wrong si_timerid",
	      sig_bad_value, sig_bad_id);
	CHECK(!tid_bad_value && !tid_bad_id && !tid_wrong_thread,
	      "t_tid signals: %d wrong si_value, %d wrong si_timerid, %d in another thread", tid_bad_value,
	      tid_bad_id, tid_wrong_thread);
	timer_t fresh;
	create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0, &fresh, "fresh");
	int f = id_of(fresh);
	CHECK(f != id_of(t_sig) && f != id_of(t_none) && f != id_of(t_tid) && f != id_of(t_idle) && f != id_of(t_cpu),
	      "a new timer got id %d, which a restored timer has", f);
	finish("posix timers: ids %d %d %d %d %d kept, %d and %d expirations after restore", id_of(t_sig),
	       id_of(t_none), id_of(t_tid), id_of(t_idle), id_of(t_cpu), sig_count - sig0, tid_count - tid0);
}
