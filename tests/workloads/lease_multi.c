/*
 * lease_multi: several leases, on several files, each caught in the middle of its own break,
 * the breaks started about GAP_MS apart (so that each has a different time left).
 *
 * argv: STATUS N GAP_MS WATCH
 *   The holder (the root) creates STATUS.1 .. STATUS.N and holds a WRITE lease on each, through
 *   an O_RDONLY description, all with F_SETSIG SIGRTMIN+1. Then, one after the other, GAP_MS
 *   apart, it forks breaker I (1..N): a child that open()s STATUS.I O_WRONLY and blocks (an
 *   unlock break of lease I). The next breaker starts once this one is blocked (/proc/locks)
 *   and the holder got the signal of lease I.
 *   WATCH: seconds the holder watches its leases after .go, at most: it stops 1 s after every
 *   breaker's open has returned.
 *
 * Lines (times are CLOCK_MONOTONIC seconds):
 *   START bI pid=P file=I t=T         breaker I is about to open()
 *   OPENED bI pid=P rc=R errno=E t=T  its (blocking) open returned
 *   READY holder pid=P sig=S fds=F1,F2.. breakers=P1,P2..
 *   SIGNAL holder n=N signo=S si_fd=F code=C t=T   every lease signal, when received
 *   GAP from=T0 to=T1                 a pause of the holder's 5 ms loop before .go longer than
 *                                     0.3 s: the tree was frozen between T0 and T1
 *   GO t=T
 *   GETLEASE fI v=READ|WRITE|UNLCK t=T  F_GETLEASE of lease I, when it changes after .go (the
 *                                     holder asks every 5 ms: the kernel ends a break whose
 *                                     deadline is over when asked, so each break ends on time)
 *   DONE sigs=N; then PASS / FAIL
 * The holder checks that it got exactly one lease signal per leased fd (signo SIGRTMIN+1,
 * si_fd = that fd), and that every breaker exits 0 (a breaker checks its open succeeded).
 */
#include "lease_common.h"
#include <sys/wait.h>

#define MAX_FILES 8

static char paths[MAX_FILES][4300];

static __attribute__((noreturn)) void breaker(int i, const int *fds, int n)
{
	for (int k = 0; k < n; k++)
		close(fds[k]);
	status("START b%d pid=%d file=%d t=%.6f", i, (int)getpid(), i, mono_now());
	int r = open(paths[i - 1], O_WRONLY | O_CLOEXEC);
	int e = r < 0 ? errno : 0;
	status("OPENED b%d pid=%d rc=%d errno=%d t=%.6f", i, (int)getpid(), r, e, mono_now());
	double deadline = mono_now() + 120;
	while (!go_requested() && mono_now() < deadline)
		sleep_ms(10);
	_exit(r >= 0 ? 0 : 1);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 5)
		die("usage: lease_multi STATUS N GAP_MS WATCH");
	int n = atoi(argv[2]);
	long gap_ms = atol(argv[3]);
	double watch = atof(argv[4]);
	if (n < 1 || n > MAX_FILES)
		die("N must be 1..%d", MAX_FILES);
	int sig = SIGRTMIN + 1;
	lease_catch(sig);

	int fds[MAX_FILES];
	for (int i = 0; i < n; i++) {
		snprintf(paths[i], sizeof(paths[i]), "%s.%d", wl_status, i + 1);
		int c = open(paths[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		char text[32];
		int len = snprintf(text, sizeof(text), "leased data %d\n", i + 1);
		if (c < 0 || write(c, text, len) != len)
			die("creating %s: %s", paths[i], strerror(errno));
		close(c);
		fds[i] = open(paths[i], O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0)
			die("open %s: %s", paths[i], strerror(errno));
		if (fcntl(fds[i], F_SETSIG, sig))
			die("F_SETSIG: %s", strerror(errno));
		if (fcntl(fds[i], F_SETLEASE, F_WRLCK))
			die("F_SETLEASE %s: %s", paths[i], strerror(errno));
	}

	pid_t kids[MAX_FILES];
	char pids[256] = "", fdlist[128] = "";
	for (int i = 0; i < n; i++) {
		double started = mono_now();
		pid_t p = fork();
		if (p < 0)
			die("fork: %s", strerror(errno));
		if (p == 0)
			breaker(i + 1, fds, n);
		kids[i] = p;
		snprintf(pids + strlen(pids), sizeof(pids) - strlen(pids), "%s%d", i ? "," : "", (int)p);
		snprintf(fdlist + strlen(fdlist), sizeof(fdlist) - strlen(fdlist), "%s%d", i ? "," : "", fds[i]);
		/* breaker i blocked behind lease i, and lease i's signal received */
		char needle[64];
		snprintf(needle, sizeof(needle), "OPENED b%d ", i + 1);
		double deadline = mono_now() + 10;
		while (!(lease_is_breaker(p) && lease_sig_count > i)) {
			if (status_has(needle))
				die("breaker b%d was not blocked by the lease", i + 1);
			if (mono_now() > deadline)
				die("breaker b%d not in place (or no signal) within 10 s", i + 1);
			sleep_ms(2);
		}
		if (i + 1 < n) {
			double next = started + gap_ms / 1000.0;
			while (mono_now() < next)
				sleep_ms(2);
		}
	}
	int reported = 0;
	lease_report_signals("holder", &reported);
	status("READY holder pid=%d sig=%d fds=%s breakers=%s", (int)getpid(), sig, fdlist, pids);
	double last = mono_now();
	double go_deadline = last + 600;
	while (!go_requested() && mono_now() < go_deadline) {
		lease_report_signals("holder", &reported);
		sleep_ms(5);
		double now = mono_now();
		if (now - last > 0.3)
			status("GAP from=%.6f to=%.6f", last, now);
		last = now;
	}
	status("GO t=%.6f", mono_now());

	char last_get[MAX_FILES][16];
	memset(last_get, 0, sizeof(last_get));
	double end = mono_now() + watch;
	int all_opened = 0;
	while (mono_now() < end) {
		if (!all_opened) {
			all_opened = all_breakers_opened(n);
			if (all_opened && mono_now() + 1 < end)
				end = mono_now() + 1;
		}
		lease_report_signals("holder", &reported);
		for (int i = 0; i < n; i++) {
			const char *g = lease_get(fds[i]);
			if (strcmp(g, last_get[i]) != 0) {
				snprintf(last_get[i], sizeof(last_get[i]), "%s", g);
				status("GETLEASE f%d v=%s t=%.6f", i + 1, g, mono_now());
			}
		}
		sleep_ms(5);
	}
	lease_report_signals("holder", &reported);
	int per_fd[MAX_FILES] = { 0 };
	for (int k = 0; k < reported && k < LEASE_SIG_MAX; k++) {
		CHECK(lease_sigs[k].signo == sig, "signal %d is %d, not the lease signal %d", k + 1, lease_sigs[k].signo,
		      sig);
		int which = -1;
		for (int i = 0; i < n; i++)
			if (lease_sigs[k].fd == fds[i])
				which = i;
		if (which < 0)
			check_failed("signal %d has si_fd %d, not one of the leased fds", k + 1, lease_sigs[k].fd);
		else
			per_fd[which]++;
	}
	for (int i = 0; i < n; i++)
		CHECK(per_fd[i] == 1, "lease %d (fd %d): %d signals, expected 1", i + 1, fds[i], per_fd[i]);
	status("DONE sigs=%d", (int)lease_sig_count);
	reap_breakers(kids, n);
	finish("holder sigs=%d", (int)lease_sig_count);
}
