// LDFLAGS: -pthread
/*
 * lease_thread: a write lease whose signal owner is a thread other than the main thread
 * (F_SETOWN_EX with F_OWNER_TID), not being broken when checkpointed.
 *
 * argv: STATUS
 *   The data file is STATUS.data, leased (WRITE, on an O_RDONLY description, F_SETSIG
 *   SIGRTMIN+1) by the main thread; a second thread (the worker) is the signal owner. Neither
 *   thread blocks the signal: a signal sent to the process rather than to the worker would
 *   most likely run the handler in the main thread, and the handler records which thread it
 *   ran in (gettid) along with si_fd.
 *
 * Lines (times are CLOCK_MONOTONIC seconds):
 *   READY holder pid=P fd=F sig=S tid=T          T: the worker's tid
 *   GAP from=T0 to=T1          a pause of the main thread's 5 ms loop before .go (> 0.3 s)
 *   GO t=T
 *   OWNER type=X id=Y / GETLEASE v=V / SIG v=S   F_GETOWN_EX, F_GETLEASE, F_GETSIG after .go
 *   CHECKED sigs=N             lease signals received so far (before the conflicting open)
 *   SIGNAL holder n=N signo=S si_fd=F tid=T t=T  every lease signal: T the thread it ran in
 *   RELEASE rc=R t=T           200 ms after the first signal after .go, F_SETLEASE F_UNLCK
 *   then PASS / FAIL. The test opens the file from outside after CHECKED (within 30 s).
 * Checked inside: after .go the owner is (F_OWNER_TID, worker tid), the lease WRITE, the signal
 * SIGRTMIN+1; exactly one lease signal in all, run in the worker, si_fd = the leased fd.
 */
#include "lease_common.h"
#include <pthread.h>
#include <sys/syscall.h>

struct tsig {
	int signo, fd, tid;
	double t;
};

#define TSIG_MAX 16
static struct tsig tsigs[TSIG_MAX];
static volatile sig_atomic_t tsig_count;
static volatile pid_t worker_tid;
static volatile int stop_worker;

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	int n = tsig_count;
	if (n < TSIG_MAX) {
		tsigs[n].signo = sig;
		tsigs[n].fd = si->si_fd;
		tsigs[n].tid = (int)syscall(SYS_gettid);
		tsigs[n].t = mono_now();
	}
	tsig_count = n + 1;
}

static void report(int *reported)
{
	int n = tsig_count;
	while (*reported < n && *reported < TSIG_MAX) {
		struct tsig *s = &tsigs[*reported];
		(*reported)++;
		status("SIGNAL holder n=%d signo=%d si_fd=%d tid=%d t=%.6f", *reported, s->signo, s->fd, s->tid, s->t);
	}
}

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	double deadline = mono_now() + 600;
	while (!stop_worker && mono_now() < deadline)
		sleep_ms(10);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int sig = SIGRTMIN + 1;
	char data[4300];
	snprintf(data, sizeof(data), "%s.data", wl_status);
	int c = open(data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c < 0 || write(c, "leased data\n", 12) != 12)
		die("creating %s: %s", data, strerror(errno));
	close(c);
	int fd = open(data, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", data, strerror(errno));

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL))
		die("sigaction: %s", strerror(errno));
	if (fcntl(fd, F_SETSIG, sig))
		die("F_SETSIG: %s", strerror(errno));
	if (fcntl(fd, F_SETLEASE, F_WRLCK))
		die("F_SETLEASE: %s", strerror(errno));

	pthread_t th;
	if (pthread_create(&th, NULL, worker, NULL))
		die("pthread_create failed");
	double deadline = mono_now() + 5;
	while (!worker_tid) {
		if (mono_now() > deadline)
			die("the worker did not start");
		sleep_ms(1);
	}
	int tid = worker_tid;
	CHECK(tid != getpid(), "the worker's tid is the pid");
	struct f_owner_ex own = { .type = F_OWNER_TID, .pid = tid };
	if (fcntl(fd, F_SETOWN_EX, &own))
		die("F_SETOWN_EX TID %d: %s", tid, strerror(errno));
	struct f_owner_ex got;
	memset(&got, 0, sizeof(got));
	if (fcntl(fd, F_GETOWN_EX, &got) || got.type != F_OWNER_TID || got.pid != tid)
		die("F_GETOWN_EX: type %d id %d, expected TID %d", got.type, got.pid, tid);

	status("READY holder pid=%d fd=%d sig=%d tid=%d", (int)getpid(), fd, sig, tid);
	int reported = 0;
	double last = mono_now();
	double go_deadline = last + 600;
	while (!go_requested() && mono_now() < go_deadline) {
		report(&reported);
		sleep_ms(5);
		double now = mono_now();
		if (now - last > 0.3)
			status("GAP from=%.6f to=%.6f", last, now);
		last = now;
	}
	status("GO t=%.6f", mono_now());

	memset(&got, 0, sizeof(got));
	int r = fcntl(fd, F_GETOWN_EX, &got);
	status("OWNER type=%d id=%d", r ? -1 : (int)got.type, r ? -1 : (int)got.pid);
	CHECK(r == 0 && got.type == F_OWNER_TID && got.pid == tid, "after .go F_GETOWN_EX: rc %d type %d id %d, expected TID %d",
	      r, got.type, got.pid, tid);
	const char *g = lease_get(fd);
	status("GETLEASE v=%s", g);
	CHECK_EQ_S("after .go F_GETLEASE", "WRITE", g);
	int s = fcntl(fd, F_GETSIG);
	status("SIG v=%d", s);
	CHECK(s == sig, "after .go F_GETSIG %d, expected %d", s, sig);
	report(&reported);
	int before = tsig_count;
	status("CHECKED sigs=%d", before);
	CHECK(before == 0, "%d lease signals before the conflicting open", before);

	/* The test's conflicting open from outside: one signal, to the worker. */
	deadline = mono_now() + 30;
	while (tsig_count == before && mono_now() < deadline)
		sleep_ms(2);
	report(&reported);
	if (tsig_count == before) {
		check_failed("no lease signal within 30 s of .go");
	} else {
		sleep_ms(200);
		double t = mono_now();
		int rr = fcntl(fd, F_SETLEASE, F_UNLCK);
		status("RELEASE rc=%d t=%.6f", rr, t);
		CHECK(rr == 0, "F_SETLEASE F_UNLCK: %s", strerror(errno));
	}
	sleep_ms(300); /* any further signal would arrive meanwhile */
	report(&reported);
	CHECK(tsig_count == 1, "%d lease signals in all, expected 1", (int)tsig_count);
	for (int i = 0; i < reported && i < TSIG_MAX; i++) {
		CHECK(tsigs[i].signo == sig, "signal %d: signo %d, expected %d", i + 1, tsigs[i].signo, sig);
		CHECK(tsigs[i].fd == fd, "signal %d: si_fd %d, expected the leased fd %d", i + 1, tsigs[i].fd, fd);
		CHECK(tsigs[i].tid == tid, "signal %d: ran in thread %d, expected the owner thread %d", i + 1, tsigs[i].tid,
		      tid);
	}
	stop_worker = 1;
	pthread_join(th, NULL);
	finish("holder sigs=%d", (int)tsig_count);
}
