/*
 * tree_zombies: unreaped children at dump time.
 *
 *   parent ─┬─ z7      (named "zexit7", exited with code 7: a zombie)
 *           ├─ zterm   (named "zterm", killed by SIGTERM: a zombie)
 *           └─ blocker ── zb (named "zthree", exited with code 3: a zombie)
 *
 * The parent counts SIGCHLD in a handler; SIGCHLD is not blocked, so by READY both
 * exits have been handled (count N, nothing pending). The blocker blocks SIGCHLD before
 * its child exits, so SIGCHLD is pending in it at dump time and its handler never ran.
 *
 *   READY blocker pid=N zb=N
 *   READY parent pid=N z7=N zterm=N blocker=N chld=N
 *
 * After <status>.go:
 *   parent:  no SIGCHLD handled since READY (count still N) and none pending (a restore
 *            that recreates the zombies must not deliver their exits again) -> "STEP
 *            parent-checked"; then waitpid(z7, WNOHANG) must return at once with exit code
 *            exactly 7, waitpid(zterm, WNOHANG) with WTERMSIG SIGTERM and no core; reaps the
 *            blocker (exit 0): exactly one more SIGCHLD; no other child.
 *   blocker: after "STEP parent-checked": SIGCHLD still pending, handler never run;
 *            unblocking runs the handler exactly once; waitpid(zb, WNOHANG) returns at once
 *            with exit code 3.
 */
#include "tree_common.h"
#include <signal.h>
#include <sys/prctl.h>

static volatile sig_atomic_t chld_count;

static void on_chld(int sig)
{
	(void)sig;
	chld_count++;
}

static int sigchld_pending(void)
{
	sigset_t s;
	sigpending(&s);
	return sigismember(&s, SIGCHLD);
}

/* Waits (without reaping) until `pid` has exited. */
static void wait_exited_unreaped(pid_t pid)
{
	double deadline = mono_now() + 10;
	for (;;) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		int r = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT);
		if (r == 0 && si.si_pid == pid)
			return;
		if (r < 0 && errno != EINTR)
			die("%s: waitid(%d): %s", role, pid, strerror(errno));
		if (mono_now() > deadline)
			die("%s: child %d did not exit", role, pid);
		sleep_ms(2);
	}
}

/* The first waitpid(WNOHANG) on a zombie must reap it. Returns its wait status or -1. */
static int reap_zombie_now(const char *what, pid_t pid)
{
	int st;
	pid_t r;
	do
		r = waitpid(pid, &st, WNOHANG);
	while (r < 0 && errno == EINTR);
	if (r != pid) {
		check_failed("%s: waitpid(%s %d, WNOHANG) returned %d (%s): not a zombie child any more", role, what, pid,
			     r, r < 0 ? strerror(errno) : "still running");
		return -1;
	}
	return st;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	set_handler(SIGCHLD, on_chld, SA_RESTART);
	remember("parent");

	pid_t z7 = fork();
	if (z7 < 0)
		die("fork: %s", strerror(errno));
	if (z7 == 0) {
		prctl(PR_SET_NAME, "zexit7");
		_exit(7);
	}
	pid_t zterm = fork();
	if (zterm < 0)
		die("fork: %s", strerror(errno));
	if (zterm == 0) {
		prctl(PR_SET_NAME, "zterm");
		signal(SIGTERM, SIG_DFL);
		for (;;)
			pause();
	}
	/* kill it only once it carries its name */
	char path[64], comm[64];
	snprintf(path, sizeof(path), "/proc/%d/comm", zterm);
	double deadline = mono_now() + 10;
	while (read_file(path, comm, sizeof(comm)) <= 0 || strcmp(comm, "zterm\n") != 0) {
		if (mono_now() > deadline)
			die("zterm never renamed itself");
		sleep_ms(2);
	}
	kill(zterm, SIGTERM);
	wait_exited_unreaped(z7);
	wait_exited_unreaped(zterm);

	pid_t blocker = fork_as("blocker");
	if (blocker == 0) {
		sigset_t chld;
		sigemptyset(&chld);
		sigaddset(&chld, SIGCHLD);
		sigprocmask(SIG_BLOCK, &chld, NULL);
		chld_count = 0;
		pid_t zb = fork();
		if (zb < 0)
			die("blocker: fork: %s", strerror(errno));
		if (zb == 0) {
			prctl(PR_SET_NAME, "zthree");
			_exit(3);
		}
		wait_exited_unreaped(zb);
		if (!sigchld_pending())
			die("blocker: SIGCHLD not pending after its child exited");
		status("READY blocker pid=%d zb=%d", my_pid, zb);
		wait_for_go();

		check_ids();
		wait_for_step("parent-checked");
		CHECK(chld_count == 0, "blocker: SIGCHLD handler ran %d times while SIGCHLD was blocked", (int)chld_count);
		CHECK(sigchld_pending(), "blocker: the pending SIGCHLD is gone after the restore");
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		sleep_ms(50);
		CHECK(chld_count == 1, "blocker: unblocking SIGCHLD ran the handler %d times, expected exactly 1",
		      (int)chld_count);
		int st = reap_zombie_now("zb", zb);
		if (st != -1)
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3, "blocker: zb's wait status 0x%x, expected exit code 3",
			      st);
		no_more_children();
		role_finish();
	}

	await_ready("blocker", blocker);
	sleep_ms(100);
	int ready_count = chld_count;
	if (sigchld_pending())
		die("parent: SIGCHLD pending although it is not blocked");
	if (ready_count < 1 || ready_count > 2)
		die("parent: SIGCHLD handler ran %d times for two exits", ready_count);
	status("READY parent pid=%d z7=%d zterm=%d blocker=%d chld=%d", my_pid, z7, zterm, blocker, ready_count);
	wait_for_go();

	check_ids();
	CHECK(chld_count == ready_count, "parent: SIGCHLD handler ran %d times, %d at READY: spurious SIGCHLD",
	      (int)chld_count, ready_count);
	CHECK(!sigchld_pending(), "parent: a SIGCHLD is pending that was not before the dump");
	status("STEP parent-checked");
	int st = reap_zombie_now("z7", z7);
	if (st != -1)
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7, "parent: z7's wait status 0x%x, expected exit code 7", st);
	st = reap_zombie_now("zterm", zterm);
	if (st != -1)
		CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM && !WCOREDUMP(st),
		      "parent: zterm's wait status 0x%x, expected killed by SIGTERM (15) without core", st);
	reap("blocker", blocker);
	sleep_ms(50);
	CHECK(chld_count == ready_count + 1, "parent: SIGCHLD handler ran %d times, expected %d (+1 for the blocker's exit)",
	      (int)chld_count, ready_count + 1);
	no_more_children();
	role_finish();
}
