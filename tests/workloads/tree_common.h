/*
 * Shared helpers for the multi-process workloads (tree_*.c).
 *
 * Every process of a tree has a role ("parent", "child", "grandchild", ...): it prefixes
 * the process's READY / PASS / FAIL lines and its failure messages. The processes share
 * the status file (each line is appended with O_APPEND, see common.h) and coordinate
 * through its lines ("READY <role> pid=N ...", "STEP ...").
 */
#ifndef CRUST_WORKLOAD_TREE_COMMON_H
#define CRUST_WORKLOAD_TREE_COMMON_H

#include "common.h"
#include <sys/wait.h>

static const char *role = "parent";
/* The process's ids as they were when it took its role (see remember()). */
static pid_t my_pid, my_ppid, my_pgid, my_sid;

/* Takes the role `r` and remembers the current pid, ppid, pgid and sid. */
static __attribute__((unused)) void remember(const char *r)
{
	role = r;
	my_pid = getpid();
	my_ppid = getppid();
	my_pgid = getpgid(0);
	my_sid = getsid(0);
}

/* fork(); the child takes the role `r` (remember) and gets 0, the parent the child's pid.
 * A failed fork is fatal. */
static __attribute__((unused)) pid_t fork_as(const char *r)
{
	pid_t pid = fork();
	if (pid < 0)
		die("%s: fork %s: %s", role, r, strerror(errno));
	if (pid == 0)
		remember(r);
	return pid;
}

/* pid and ppid as remembered (the process is still the child of its parent). */
static __attribute__((unused)) void check_ids(void)
{
	CHECK(getpid() == my_pid, "%s: getpid() %d, was %d", role, getpid(), my_pid);
	CHECK(getppid() == my_ppid, "%s: getppid() %d, was %d (no longer the child of its parent)", role,
	      getppid(), my_ppid);
}

/* pgid and sid as remembered. */
static __attribute__((unused)) void check_group_ids(void)
{
	CHECK(getpgid(0) == my_pgid, "%s: getpgid() %d, was %d", role, getpgid(0), my_pgid);
	CHECK(getsid(0) == my_sid, "%s: getsid() %d, was %d", role, getsid(0), my_sid);
}

/* Does the status file contain `needle`? */
static __attribute__((unused)) int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

/* Waits up to `timeout` s for `needle` in the status file; 0 if it never came. */
static __attribute__((unused)) int wait_for_status(const char *needle, double timeout)
{
	double deadline = mono_now() + timeout;
	while (!status_has(needle)) {
		if (mono_now() > deadline)
			return 0;
		sleep_ms(5);
	}
	return 1;
}

/* Waits for "READY <who> pid=<pid> " (any pid if pid is 0) for 10 s; a timeout is fatal
 * (this is for the setup, before the process's own READY). */
static __attribute__((unused)) void await_ready(const char *who, pid_t pid)
{
	char needle[128];
	if (pid)
		snprintf(needle, sizeof(needle), "READY %s pid=%d ", who, (int)pid);
	else
		snprintf(needle, sizeof(needle), "READY %s pid=", who);
	if (!wait_for_status(needle, 10))
		die("%s: timed out waiting for '%s' in the status file", role, needle);
}

/* Waits up to 10 s for the line "STEP <step>" of another process; a timeout is a failed
 * check. Returns whether it came. */
static __attribute__((unused)) int wait_for_step(const char *step)
{
	char needle[128];
	snprintf(needle, sizeof(needle), "STEP %s", step);
	if (wait_for_status(needle, 10))
		return 1;
	check_failed("%s: no '%s' within 10 s", role, needle);
	return 0;
}

/* Sleeps until the test creates <status>.go. */
static __attribute__((unused)) void wait_for_go(void)
{
	while (!go_requested())
		sleep_ms(10);
}

/* Reaps `pid`, which must be our child, within 15 s; it must have exited 0. */
static __attribute__((unused)) void reap(const char *what, pid_t pid)
{
	double deadline = mono_now() + 15;
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (WIFSIGNALED(st))
				check_failed("%s: %s %d was killed by signal %d", role, what, pid, WTERMSIG(st));
			else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				check_failed("%s: %s %d ended with wait status 0x%x", role, what, pid, st);
			return;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			check_failed("%s: waitpid(%s %d): %s", role, what, pid, strerror(errno));
			return;
		}
		if (mono_now() > deadline) {
			check_failed("%s: waitpid(%s %d): it did not exit within 15 s", role, what, pid);
			return;
		}
		sleep_ms(5);
	}
}

/* Nothing else may be our child any more. */
static __attribute__((unused)) void no_more_children(void)
{
	int st;
	pid_t r = waitpid(-1, &st, WNOHANG);
	CHECK(r < 0 && errno == ECHILD, "%s: waitpid(-1) returned %d (%s), expected no children", role, r,
	      r < 0 ? strerror(errno) : "an unexpected child");
}

/*
 * Reports this process's checks and exits: "FAIL <role> pid=N <failures>" (exit 1) or
 * "PASS <role> pid=N[ <extra>]" (exit 0). _exit: a forked child must not flush or run
 * what its parent registered.
 */
__attribute__((format(printf, 1, 2), noreturn, unused)) static void role_finish_with(const char *fmt, ...)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	char extra[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(extra, sizeof(extra), fmt, ap);
	va_end(ap);
	status("PASS %s pid=%d%s%s", role, (int)getpid(), extra[0] ? " " : "", extra);
	_exit(0);
}

#define role_finish() role_finish_with("%s", "")

#endif
