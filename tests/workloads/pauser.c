/*
 * pauser: blocked in pause() when checkpointed.
 * SIGUSR1 has a handler installed with SA_SIGINFO|SA_RESTART (SA_RESTART does not apply to
 * pause: the kernel answers it with -ERESTARTNOHAND, so after a handled signal pause always
 * returns -1/EINTR). After the restore the test checks from /proc that the process is still
 * in pause, then sends SIGUSR1 (kill, from the test): the handler must run exactly once, with
 * si_signo SIGUSR1 and si_code SI_USER, and pause must return -1/EINTR. SIGUSR1 must not be
 * blocked and nothing may be pending before it arrives.
 * Lines: READY handler=.. ; WOKE rc=.. errno=.. handled=.. signo=.. code=.. pauses=..
 */
#include "common.h"
#include <signal.h>

static volatile sig_atomic_t handled, last_signo, last_code;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	handled++;
	last_signo = sig == si->si_signo ? sig : -sig;
	last_code = si->si_code;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct sigaction sa = { 0 };
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction: %s", strerror(errno));
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	status("READY handler=%p", (void *)on_usr1);

	int pauses = 0, rc, err;
	/* one pause() is expected to end it all; a second one would mean the first returned
	 * without our signal having been handled */
	do {
		pauses++;
		rc = pause();
		err = errno;
	} while (!handled && pauses < 100);
	status("WOKE rc=%d errno=%d handled=%d signo=%d code=%d pauses=%d", rc, err, (int)handled,
	       (int)last_signo, (int)last_code, pauses);

	CHECK(rc == -1 && err == EINTR, "pause returned %d (%s), expected -1/EINTR", rc, strerror(err));
	CHECK(pauses == 1, "pause() returned %d times before the handler ran, expected 1 return",
	      pauses);
	CHECK_EQ_U("SIGUSR1 handler runs", 1, handled);
	CHECK_EQ_U("si_signo seen by the handler", SIGUSR1, last_signo);
	CHECK_EQ_U("si_code seen by the handler (SI_USER)", (unsigned)SI_USER, (unsigned)last_code);

	while (!go_requested())
		sleep_ms(5);

	CHECK_EQ_U("SIGUSR1 handler runs (at .go)", 1, handled);
	sigset_t pend;
	sigpending(&pend);
	CHECK(!sigismember(&pend, SIGUSR1), "SIGUSR1 still pending after the handler ran");
	struct sigaction now;
	sigaction(SIGUSR1, NULL, &now);
	CHECK(now.sa_sigaction == on_usr1, "SIGUSR1 handler changed: %p", (void *)now.sa_sigaction);
	CHECK((now.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART),
	      "SIGUSR1 flags changed: 0x%x", now.sa_flags);
	finish("pause returned EINTR after one handled SIGUSR1");
}
