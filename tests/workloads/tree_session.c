/*
 * tree_session: sessions and process groups inside a tree.
 *
 *   parent ─┬─ leader    setsid(): leads a new session and its group
 *           │    └─ member      in leader's session and group
 *           ├─ grpleader setpgid(0, 0): leads a group in the parent's session
 *           └─ joiner    setpgid(0, grpleader): joined grpleader's group
 *
 *   READY <role> pid=N ppid=N pgid=N sid=N      (children)
 *   READY parent pid=N leader=N member=N grpleader=N joiner=N
 *
 * After <status>.go:
 *   every process: same pid, ppid, pgid, sid as at READY;
 *   parent: kill(-leader, SIGUSR2) and kill(-grpleader, SIGUSR1) -> "STEP signals-sent";
 *   the others, after that line: leader and member got exactly one SIGUSR2 and no SIGUSR1,
 *   grpleader and joiner exactly one SIGUSR1 and no SIGUSR2 (group membership as the
 *   kernel sees it); leader: setsid() fails with EPERM (it leads a session);
 *   grpleader: setsid() fails with EPERM (it leads a group); joiner: setpgid(0, grpleader)
 *   succeeds again (the group exists in its session); member: setpgid(0, 0) succeeds
 *   (it is not a session leader). Each process with children reaps them (exit 0).
 */
#include "tree_common.h"
#include <signal.h>

static volatile sig_atomic_t usr1, usr2;

static void on_usr1(int s)
{
	(void)s;
	usr1++;
}

static void on_usr2(int s)
{
	(void)s;
	usr2++;
}

static void say_ready(void)
{
	status("READY %s pid=%d ppid=%d pgid=%d sid=%d", role, my_pid, my_ppid, my_pgid, my_sid);
}

/* After go: the ids, then the signals the parent sent to the groups. */
static void after_go(int want_usr1, int want_usr2)
{
	wait_for_go();
	check_ids();
	check_group_ids();
	if (!wait_for_step("signals-sent"))
		return;
	sleep_ms(100);
	CHECK(usr1 == want_usr1, "%s: got SIGUSR1 (sent to group %s) %d times, expected %d", role, "grpleader",
	      (int)usr1, want_usr1);
	CHECK(usr2 == want_usr2, "%s: got SIGUSR2 (sent to group %s) %d times, expected %d", role, "leader",
	      (int)usr2, want_usr2);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	remember("parent");

	pid_t leader = fork();
	if (leader < 0)
		die("fork: %s", strerror(errno));
	if (leader == 0) {
		if (setsid() < 0)
			die("leader: setsid: %s", strerror(errno));
		remember("leader");
		pid_t member = fork_as("member");
		if (member == 0) {
			say_ready();
			after_go(0, 1);
			CHECK(setpgid(0, 0) == 0, "member: setpgid(0, 0): %s", strerror(errno));
			CHECK(getpgid(0) == my_pid, "member: pgid %d after setpgid(0, 0)", getpgid(0));
			role_finish();
		}
		say_ready();
		after_go(0, 1);
		errno = 0;
		CHECK(setsid() < 0 && errno == EPERM, "leader: setsid() did not fail with EPERM (%s): not a leader any more",
		      strerror(errno));
		reap("member", member);
		role_finish();
	}
	pid_t grpleader = fork();
	if (grpleader < 0)
		die("fork: %s", strerror(errno));
	if (grpleader == 0) {
		if (setpgid(0, 0) < 0)
			die("grpleader: setpgid(0, 0): %s", strerror(errno));
		remember("grpleader");
		say_ready();
		after_go(1, 0);
		errno = 0;
		CHECK(setsid() < 0 && errno == EPERM, "grpleader: setsid() did not fail with EPERM (%s)", strerror(errno));
		role_finish();
	}
	await_ready("grpleader", grpleader);
	pid_t joiner = fork();
	if (joiner < 0)
		die("fork: %s", strerror(errno));
	if (joiner == 0) {
		if (setpgid(0, grpleader) < 0)
			die("joiner: setpgid(0, %d): %s", grpleader, strerror(errno));
		remember("joiner");
		say_ready();
		after_go(1, 0);
		CHECK(setpgid(0, grpleader) == 0, "joiner: setpgid(0, %d) again: %s", grpleader, strerror(errno));
		role_finish();
	}
	await_ready("joiner", joiner);
	await_ready("member", 0);
	await_ready("leader", leader);
	status("READY parent pid=%d ppid=%d pgid=%d sid=%d leader=%d grpleader=%d joiner=%d", my_pid, my_ppid, my_pgid,
	       my_sid, leader, grpleader, joiner);
	wait_for_go();

	check_ids();
	check_group_ids();
	CHECK(kill(-leader, SIGUSR2) == 0, "parent: kill(-%d, SIGUSR2): %s", leader, strerror(errno));
	CHECK(kill(-grpleader, SIGUSR1) == 0, "parent: kill(-%d, SIGUSR1): %s", grpleader, strerror(errno));
	status("STEP signals-sent");
	sleep_ms(100);
	CHECK(usr1 == 0 && usr2 == 0, "parent: got SIGUSR1 %d / SIGUSR2 %d times, sent to other groups", (int)usr1,
	      (int)usr2);
	reap("leader", leader);
	reap("grpleader", grpleader);
	reap("joiner", joiner);
	role_finish();
}
