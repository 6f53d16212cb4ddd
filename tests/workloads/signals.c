/*
 * signals: signal dispositions with distinct flags and masks, ignored signals, a
 * blocked mask, pending signals (thread-private and process-wide, standard and
 * queued real-time ones carrying si_value) and an alternate signal stack.
 * After the restore: every disposition (raw rt_sigaction: handler, flags, restorer,
 * mask) must be exactly as at READY, and so must the blocked mask, the pending sets
 * and sigaltstack; the pending signals are dequeued with sigwaitinfo and their
 * siginfo checked (order, si_code, si_value, si_pid); then signals are delivered to
 * check that handlers run, on the alternate stack when SA_ONSTACK, with the right
 * mask, SA_NODEFER and SA_RESETHAND semantics.
 */
#include "common.h"
#include <signal.h>
#include <sys/syscall.h>

struct ksigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	uint64_t mask;
};

static int get_kact(int sig, struct ksigaction *ka)
{
	memset(ka, 0, sizeof(*ka));
	return (int)syscall(SYS_rt_sigaction, sig, NULL, ka, 8);
}

static char altstack[64 * 1024] __attribute__((aligned(64)));

static volatile int h_sig, h_on_alt, h_ss_onstack, h_value, h_code, h_count;
static volatile uint64_t h_mask;

static void record(int sig)
{
	int local;
	uintptr_t a = (uintptr_t)&local;
	h_sig = sig;
	h_on_alt = a >= (uintptr_t)altstack && a < (uintptr_t)altstack + sizeof(altstack);
	stack_t ss;
	sigaltstack(NULL, &ss);
	h_ss_onstack = (ss.ss_flags & SS_ONSTACK) != 0;
	sigset_t m;
	sigprocmask(SIG_BLOCK, NULL, &m);
	uint64_t bits = 0;
	for (int s = 1; s <= 64; s++)
		if (sigismember(&m, s))
			bits |= 1ULL << (s - 1);
	h_mask = bits;
	h_count++;
}

static void h_plain(int sig)
{
	record(sig);
}

static void h_info(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	record(sig);
	h_value = si->si_value.sival_int;
	h_code = si->si_code;
}

static uint64_t bit(int sig)
{
	return 1ULL << (sig - 1);
}

static void set(int sig, void *handler, int flags, const int *mask_sigs)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))handler;
	else
		sa.sa_handler = (void (*)(int))handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	for (; mask_sigs && *mask_sigs; mask_sigs++)
		sigaddset(&sa.sa_mask, *mask_sigs);
	if (sigaction(sig, &sa, NULL))
		die("sigaction(%d): %s", sig, strerror(errno));
}

static uint64_t sigset_bits(const sigset_t *s)
{
	uint64_t b = 0;
	for (int i = 1; i <= 64; i++)
		if (sigismember(s, i))
			b |= bit(i);
	return b;
}

static struct ksigaction acts_ready[65];

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const int RT3 = SIGRTMIN + 3, RT5 = SIGRTMIN + 5;
	pid_t pid = getpid();

	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
	if (sigaltstack(&ss, NULL))
		die("sigaltstack: %s", strerror(errno));

	set(SIGUSR1, (void *)h_info, SA_SIGINFO | SA_RESTART, (const int[]){ SIGUSR2, SIGALRM, 0 });
	set(SIGUSR2, (void *)h_plain, SA_ONSTACK | SA_NODEFER, (const int[]){ SIGTERM, 0 });
	set(SIGHUP, (void *)h_info, SA_SIGINFO | SA_ONSTACK | SA_RESETHAND,
	    (const int[]){ SIGINT, SIGQUIT, 0 });
	set(SIGWINCH, (void *)h_plain, 0, NULL);
	set(SIGCHLD, (void *)h_plain, SA_NOCLDSTOP | SA_RESTART, NULL);
	set(RT3, (void *)h_info, SA_SIGINFO, NULL);
	set(RT5, (void *)h_info, SA_SIGINFO | SA_ONSTACK, (const int[]){ SIGRTMIN + 6, SIGRTMAX, 0 });
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTSTP, SIG_IGN);

	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGQUIT);
	sigaddset(&block, RT3);
	sigprocmask(SIG_SETMASK, &block, NULL);

	/* The si_code the kernel gives tgkill()ed signals (SI_TKILL on older kernels; 6.18 reports
	 * SI_USER for a blocked one): measured here so that the check after the restore compares like with like. */
	int tkill_code;
	{
		sigset_t urg;
		sigemptyset(&urg);
		sigaddset(&urg, SIGURG);
		sigprocmask(SIG_BLOCK, &urg, NULL);
		syscall(SYS_tgkill, pid, pid, SIGURG);
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (sigwaitinfo(&urg, &si) != SIGURG)
			die("probe sigwaitinfo: %s", strerror(errno));
		tkill_code = si.si_code;
		sigprocmask(SIG_UNBLOCK, &urg, NULL);
	}

	/* pending: RT3 thread-private (value 0x7777) and process-wide twice (0x5eed, 0x5eee),
	 * SIGUSR1 thread-private (tgkill), SIGINT process-wide (kill). */
	siginfo_t qi;
	memset(&qi, 0, sizeof(qi));
	qi.si_signo = RT3;
	qi.si_code = SI_QUEUE;
	qi.si_pid = pid;
	qi.si_uid = getuid();
	qi.si_value.sival_int = 0x7777;
	if (syscall(SYS_rt_tgsigqueueinfo, pid, pid, RT3, &qi))
		die("rt_tgsigqueueinfo: %s", strerror(errno));
	if (sigqueue(pid, RT3, (union sigval){ .sival_int = 0x5eed }) ||
	    sigqueue(pid, RT3, (union sigval){ .sival_int = 0x5eee }))
		die("sigqueue: %s", strerror(errno));
	syscall(SYS_tgkill, pid, pid, SIGUSR1);
	kill(pid, SIGINT);

	for (int s = 1; s <= 64; s++)
		if (s != SIGKILL && s != SIGSTOP)
			get_kact(s, &acts_ready[s]);
	sigset_t pend_ready, mask_ready;
	sigpending(&pend_ready);
	sigprocmask(SIG_BLOCK, NULL, &mask_ready);
	uint64_t want_pend = bit(RT3) | bit(SIGUSR1) | bit(SIGINT);
	if (sigset_bits(&pend_ready) != want_pend)
		die("pending before the dump: expected 0x%llx got 0x%llx",
		    (unsigned long long)want_pend, (unsigned long long)sigset_bits(&pend_ready));
	char sigpnd_ready[64], shdpnd_ready[64], sigblk_ready[64];
	proc_status_field("SigPnd", sigpnd_ready, sizeof(sigpnd_ready));
	proc_status_field("ShdPnd", shdpnd_ready, sizeof(shdpnd_ready));
	proc_status_field("SigBlk", sigblk_ready, sizeof(sigblk_ready));

	status("READY pid=%d SigPnd=%s ShdPnd=%s SigBlk=%s", pid, sigpnd_ready, shdpnd_ready,
	       sigblk_ready);

	while (!go_requested())
		sleep_ms(5);

	/* 1. dispositions */
	for (int s = 1; s <= 64; s++) {
		if (s == SIGKILL || s == SIGSTOP)
			continue;
		struct ksigaction k;
		if (get_kact(s, &k)) {
			check_failed("rt_sigaction(%d) failed: %s", s, strerror(errno));
			continue;
		}
		struct ksigaction *r = &acts_ready[s];
		if (k.handler != r->handler || k.flags != r->flags || k.restorer != r->restorer ||
		    k.mask != r->mask)
			check_failed("sigaction of signal %d (%s): expected handler=%p flags=0x%lx "
				     "restorer=%p mask=0x%llx got handler=%p flags=0x%lx restorer=%p "
				     "mask=0x%llx",
				     s, strsignal(s), r->handler, r->flags, r->restorer,
				     (unsigned long long)r->mask, k.handler, k.flags, k.restorer,
				     (unsigned long long)k.mask);
	}

	/* 2. blocked mask, pending sets, altstack */
	sigset_t m, p;
	sigprocmask(SIG_BLOCK, NULL, &m);
	CHECK_EQ_U("blocked mask", sigset_bits(&mask_ready), sigset_bits(&m));
	sigpending(&p);
	CHECK_EQ_U("pending set", want_pend, sigset_bits(&p));
	char f[64];
	proc_status_field("SigPnd", f, sizeof(f));
	CHECK_EQ_S("SigPnd (thread-private pending)", sigpnd_ready, f);
	proc_status_field("ShdPnd", f, sizeof(f));
	CHECK_EQ_S("ShdPnd (process-wide pending)", shdpnd_ready, f);
	proc_status_field("SigBlk", f, sizeof(f));
	CHECK_EQ_S("SigBlk", sigblk_ready, f);
	stack_t now;
	sigaltstack(NULL, &now);
	CHECK(now.ss_sp == (void *)altstack && now.ss_size == sizeof(altstack) && now.ss_flags == 0,
	      "sigaltstack: expected sp=%p size=%zu flags=0 got sp=%p size=%zu flags=%d",
	      (void *)altstack, sizeof(altstack), now.ss_sp, now.ss_size, now.ss_flags);

	/* 3. dequeue the pending signals and check their siginfo */
	struct {
		int sig, code, value;
	} want[] = {
		{ RT3, SI_QUEUE, 0x7777 }, { RT3, SI_QUEUE, 0x5eed }, { RT3, SI_QUEUE, 0x5eee },
		{ SIGUSR1, tkill_code, 0 },  { SIGINT, SI_USER, 0 },
	};
	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		sigset_t one;
		sigemptyset(&one);
		sigaddset(&one, want[i].sig);
		sigpending(&p);
		if (!sigismember(&p, want[i].sig)) {
			check_failed("pending #%u: signal %d not pending", i, want[i].sig);
			continue;
		}
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		int s = sigwaitinfo(&one, &si);
		if (s != want[i].sig) {
			check_failed("sigwaitinfo #%u: expected %d got %d (%s)", i, want[i].sig, s,
				     strerror(errno));
			continue;
		}
		CHECK(si.si_code == want[i].code, "pending #%u (sig %d) si_code: expected %d got %d",
		      i, s, want[i].code, si.si_code);
		CHECK(si.si_pid == pid, "pending #%u (sig %d) si_pid: expected %d got %d", i, s, pid,
		      si.si_pid);
		CHECK(si.si_uid == getuid(), "pending #%u (sig %d) si_uid: expected %d got %d", i, s,
		      getuid(), si.si_uid);
		if (want[i].code == SI_QUEUE)
			CHECK(si.si_value.sival_int == want[i].value,
			      "pending #%u (sig %d) si_value: expected 0x%x got 0x%x", i, s,
			      want[i].value, si.si_value.sival_int);
	}
	sigpending(&p);
	CHECK_EQ_U("pending set after dequeuing", 0, sigset_bits(&p));

	/* 4. delivery */
	h_count = 0;
	raise(SIGUSR2); /* SA_ONSTACK|SA_NODEFER, sa_mask {SIGTERM} */
	CHECK(h_count == 1 && h_sig == SIGUSR2, "SIGUSR2 handler did not run (count %d sig %d)",
	      h_count, h_sig);
	CHECK(h_on_alt && h_ss_onstack, "SIGUSR2 handler not on the alternate stack (%d %d)",
	      h_on_alt, h_ss_onstack);
	CHECK(!(h_mask & bit(SIGUSR2)) && (h_mask & bit(SIGTERM)),
	      "SIGUSR2 handler mask 0x%llx: expected SIGTERM blocked and SIGUSR2 not (SA_NODEFER)",
	      (unsigned long long)h_mask);

	h_count = 0;
	raise(SIGWINCH); /* no SA_ONSTACK */
	CHECK(h_count == 1 && !h_on_alt, "SIGWINCH handler: count %d on_alt %d (expected 1, 0)",
	      h_count, h_on_alt);

	h_count = 0;
	sigqueue(pid, SIGUSR1, (union sigval){ .sival_int = 0x1234 });
	sigset_t u;
	sigemptyset(&u);
	sigaddset(&u, SIGUSR1);
	sigprocmask(SIG_UNBLOCK, &u, NULL); /* delivered here */
	CHECK(h_count == 1 && h_sig == SIGUSR1 && h_value == 0x1234 && h_code == SI_QUEUE,
	      "SIGUSR1 SA_SIGINFO handler: count %d sig %d value 0x%x code %d", h_count, h_sig,
	      h_value, h_code);
	CHECK((h_mask & bit(SIGUSR1)) && (h_mask & bit(SIGUSR2)) && (h_mask & bit(SIGALRM)),
	      "SIGUSR1 handler mask 0x%llx lacks SIGUSR1/SIGUSR2/SIGALRM",
	      (unsigned long long)h_mask);

	h_count = 0;
	syscall(SYS_tgkill, pid, pid, SIGHUP); /* SA_SIGINFO|SA_ONSTACK|SA_RESETHAND */
	CHECK(h_count == 1 && h_sig == SIGHUP && h_on_alt,
	      "SIGHUP handler: count %d on_alt %d", h_count, h_on_alt);
	CHECK((h_mask & bit(SIGINT)) && (h_mask & bit(SIGQUIT)),
	      "SIGHUP handler mask 0x%llx lacks SIGINT/SIGQUIT", (unsigned long long)h_mask);
	struct sigaction after;
	sigaction(SIGHUP, NULL, &after);
	CHECK(after.sa_handler == SIG_DFL, "SA_RESETHAND: SIGHUP handler not reset after delivery");

	raise(SIGPIPE); /* ignored: we survive */
	raise(SIGTSTP);

	finish("dispositions, mask, pending siginfo, altstack and delivery as before");
}
