/*
 * mdwe: memory-deny-write-execute (prctl PR_SET_MDWE, Linux 6.3+).
 *   argv[2]: "refuse"    PR_MDWE_REFUSE_EXEC_GAIN
 *            "noinherit" PR_MDWE_REFUSE_EXEC_GAIN | PR_MDWE_NO_INHERIT
 *            "none"      not set
 * READY mdwe=FLAGS (what PR_GET_MDWE returns)
 * After <status>.go, from inside the restored program:
 *   - PR_GET_MDWE returns FLAGS again;
 *   - mprotect(PROT_READ|PROT_WRITE|PROT_EXEC) of an anonymous page and mmap of a writable
 *     executable page fail with EACCES under MDWE, and succeed without it;
 *   - a child forked now has REFUSE_EXEC_GAIN (and NO_INHERIT) when FLAGS has it without
 *     NO_INHERIT, and nothing when NO_INHERIT was set (the kernel drops both at fork).
 * argv[3] "tree": a child forked before READY (with the flags it inherited) makes the same
 * checks after the restore, with its own flags; the parent waits for it and fails if it did.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN (1UL << 0)
#endif
#ifndef PR_MDWE_NO_INHERIT
#define PR_MDWE_NO_INHERIT (1UL << 1)
#endif

static long get_mdwe(void)
{
	return prctl(PR_GET_MDWE, 0, 0, 0, 0);
}

/* What gaining write+exec on fresh anonymous memory gives: 0, or the errno. */
static int exec_gain_errno(void)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	int err = mprotect(p, page, PROT_READ | PROT_WRITE | PROT_EXEC) ? errno : 0;
	munmap(p, page);
	return err;
}

static int wx_mmap_errno(void)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p = mmap(NULL, page, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return errno;
	munmap(p, page);
	return 0;
}

/* PR_GET_MDWE of a child forked now (-1: the child could not tell). */
static long child_mdwe(void)
{
	pid_t c = fork();
	if (c < 0)
		die("fork: %s", strerror(errno));
	if (c == 0) {
		long got = get_mdwe();
		_exit(got < 0 ? 255 : (int)got);
	}
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) == 255)
		return -1;
	return WEXITSTATUS(st);
}

static void check_in_force(long flags, const char *when)
{
	CHECK(get_mdwe() == flags, "%s: PR_GET_MDWE %ld, expected %ld", when, get_mdwe(), flags);
	int want = flags ? EACCES : 0;
	int got = exec_gain_errno();
	CHECK(got == want, "%s: mprotect(RWX) of an anonymous page: %s, expected %s", when, got ? strerror(got) : "allowed",
	      want ? strerror(want) : "allowed");
	got = wx_mmap_errno();
	CHECK(got == want, "%s: mmap(RWX): %s, expected %s", when, got ? strerror(got) : "allowed",
	      want ? strerror(want) : "allowed");
	long inherited = (flags & PR_MDWE_NO_INHERIT) ? 0 : flags;
	long child = child_mdwe();
	CHECK(child == inherited, "%s: a child forked has PR_GET_MDWE %ld, expected %ld", when, child, inherited);
}

/* The child of a "tree": checks its own (inherited) flags after the restore, then exits. */
static void run_child(long flags)
{
	while (!go_requested())
		sleep_ms(10);
	check_in_force(flags, "child after the restore");
	if (wl_fail_count)
		status("FAIL child: %s", wl_fail_buf);
	_exit(wl_fail_count ? 1 : 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "refuse";
	unsigned long flags = 0;
	if (!strcmp(mode, "refuse"))
		flags = PR_MDWE_REFUSE_EXEC_GAIN;
	else if (!strcmp(mode, "noinherit"))
		flags = PR_MDWE_REFUSE_EXEC_GAIN | PR_MDWE_NO_INHERIT;
	else if (strcmp(mode, "none"))
		die("unknown mode %s", mode);
	if (flags && prctl(PR_SET_MDWE, flags, 0, 0, 0))
		die("prctl(PR_SET_MDWE, %lu): %s", flags, strerror(errno));
	check_in_force((long)flags, "before the dump");
	if (wl_fail_count)
		die("before the dump: %s", wl_fail_buf);
	pid_t child = 0;
	if (argc > 3 && !strcmp(argv[3], "tree")) {
		long inherited = (flags & PR_MDWE_NO_INHERIT) ? 0 : (long)flags;
		child = fork();
		if (child < 0)
			die("fork: %s", strerror(errno));
		if (child == 0)
			run_child(inherited);
	}
	status("READY mdwe=%ld child=%d", get_mdwe(), (int)child);
	while (!go_requested())
		sleep_ms(10);
	check_in_force((long)flags, "after the restore");
	int st;
	if (child && (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st)))
		check_failed("the child's checks failed");
	finish("PR_GET_MDWE %lu and its refusals kept (%s%s)", flags, mode, child ? ", and in a child" : "");
}
