/*
 * lock_flock: flock locks, owned by open file descriptions.
 *
 * argv: STATUS PROBE MODE (PROBE: the lock_probe binary, run as a helper process)
 *
 * MODE shared:
 *   parent: opens STATUS.x O_RDWR and takes LOCK_EX; opens STATUS.y O_RDONLY and takes
 *   LOCK_SH; forks child1, which inherits both descriptions and opens y again itself, taking
 *   LOCK_SH on its own description.                   READY child1 pid=N / READY parent ...
 *   After .go:
 *     parent: the probe meets x exclusive-locked, y share-locked; LOCK_NB requests through its
 *             own fds succeed (same description)                              STEP probed
 *     child1: LOCK_UN through its inherited fd of x frees x for everyone (one description,
 *             one lock); LOCK_EX|LOCK_NB takes it back; releasing its own y lock leaves y
 *             share-locked (the parent's)                               STEP child1-done
 *     parent: reaps child1; x is still locked (the description lives on in the parent);
 *             LOCK_UN frees it; y likewise.                                  PASS parent
 *
 * MODE child (the lock is taken by a child through a description its parent opened):
 *   parent: opens STATUS.w O_RDWR and forks child1, which takes LOCK_EX through the inherited
 *   fd.                                        READY child1 pid=N / READY parent pid=N ...
 *   After .go: parent: the probe meets w exclusive-locked (STEP probed); child1: LOCK_UN
 *   frees w for everyone; PASS child1; parent reaps child1, PASS parent.
 *
 * MODE orphan (the process that took the lock exits, a child keeps the description):
 *   parent: PR_SET_CHILD_SUBREAPER; forks taker, which opens STATUS.z O_RDWR, takes LOCK_EX,
 *   forks keeper (inherits z) and exits 0 once keeper is READY; parent reaps taker, keeper
 *   is now the parent's child.           READY keeper pid=N / READY parent pid=N taker=N ...
 *   After .go:
 *     parent: the probe meets z exclusive-locked                               STEP probed
 *     keeper: z is still exclusive-locked; LOCK_EX|LOCK_NB through its fd succeeds (its own
 *             description); LOCK_UN frees z for everyone                      PASS keeper
 *     parent: reaps keeper, the probe meets z free.                            PASS parent
 */
#include "common.h"
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static const char *role = "parent";
static const char *probe_bin;

static int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

static int wait_for_status(const char *needle, double timeout)
{
	double deadline = mono_now() + timeout;
	while (!status_has(needle)) {
		if (mono_now() > deadline)
			return 0;
		sleep_ms(5);
	}
	return 1;
}

static __attribute__((noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d", role, (int)getpid());
	_exit(0);
}

/* Runs "PROBE check FILE Q=E..." as a helper process; a mismatch is a failed check. */
static void probe(const char *step, const char *file, int n, char q[][96])
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		check_failed("%s: pipe: %s", role, strerror(errno));
		return;
	}
	pid_t c = fork();
	if (c == 0) {
		dup2(p[1], 1);
		char *args[64];
		int k = 0;
		args[k++] = (char *)probe_bin;
		args[k++] = "check";
		args[k++] = (char *)file;
		for (int i = 0; i < n && k < 63; i++)
			args[k++] = q[i];
		args[k] = NULL;
		execv(probe_bin, args);
		_exit(127);
	}
	close(p[1]);
	static char out[16384];
	size_t len = 0;
	for (;;) {
		ssize_t r = read(p[0], out + len, sizeof(out) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	out[len] = 0;
	close(p[0]);
	int st = 0;
	while (waitpid(c, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		char mism[2048] = "";
		for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"))
			if (strncmp(l, "ok ", 3) != 0 && strlen(mism) + strlen(l) + 3 < sizeof(mism)) {
				strcat(mism, l);
				strcat(mism, "; ");
			}
		check_failed("%s: %s: probe of %s (status 0x%x): %s", role, step, file, st, mism);
	}
}

/* A probe with the two flock queries only. */
static void probe_flock(const char *step, const char *file, const char *sh, const char *ex)
{
	char q[3][96];
	snprintf(q[0], sizeof(q[0]), "flock:sh=%s", sh);
	snprintf(q[1], sizeof(q[1]), "flock:ex=%s", ex);
	snprintf(q[2], sizeof(q[2]), "posix:w:0:0=free");
	probe(step, file, 3, q);
}

static void must_flock(int fd, int op, const char *what)
{
	if (flock(fd, op) < 0)
		check_failed("%s: flock(%s) on fd %d: %s", role, what, fd, strerror(errno));
}

static int open_data(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC, 0644);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	return fd;
}

static void reap(pid_t pid, const char *who)
{
	int st;
	double deadline = mono_now() + 15;
	pid_t r;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && mono_now() < deadline)
		sleep_ms(5);
	if (r != pid)
		check_failed("%s: waitpid(%s %d) returned %d", role, who, pid, r);
	else
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: %s %d ended with wait status 0x%x", role, who, pid, st);
}

static void shared(void)
{
	char x[4300], y[4300];
	snprintf(x, sizeof(x), "%s.x", wl_status);
	snprintf(y, sizeof(y), "%s.y", wl_status);
	int fx = open_data(x, O_RDWR | O_CREAT | O_TRUNC);
	close(open_data(y, O_WRONLY | O_CREAT | O_TRUNC));
	int fy = open_data(y, O_RDONLY);
	if (flock(fx, LOCK_EX | LOCK_NB) < 0 || flock(fy, LOCK_SH | LOCK_NB) < 0)
		die("flock: %s", strerror(errno));
	pid_t child1 = fork();
	if (child1 < 0)
		die("fork: %s", strerror(errno));
	if (child1 == 0) {
		role = "child1";
		int fy2 = open_data(y, O_RDONLY);
		if (flock(fy2, LOCK_SH | LOCK_NB) < 0)
			die("child1: flock(y, LOCK_SH): %s", strerror(errno));
		status("READY child1 pid=%d", (int)getpid());
		while (!go_requested())
			sleep_ms(10);
		if (!wait_for_status("STEP probed", 15))
			check_failed("child1: no 'STEP probed'");
		must_flock(fx, LOCK_UN, "x, LOCK_UN");
		probe_flock("child1 unlocked the shared description of x", x, "free", "free");
		must_flock(fx, LOCK_EX | LOCK_NB, "x, LOCK_EX|LOCK_NB");
		probe_flock("child1 locked x again", x, "busy", "busy");
		must_flock(fy2, LOCK_UN, "own y, LOCK_UN");
		probe_flock("child1 unlocked its own y", y, "free", "busy");
		status("STEP child1-done");
		role_finish();
	}
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child1 pid=%d", child1);
	if (!wait_for_status(needle, 10))
		die("child1 not READY");
	status("READY parent pid=%d child1=%d", (int)getpid(), (int)child1);
	while (!go_requested())
		sleep_ms(10);

	probe_flock("restored", x, "busy", "busy");
	probe_flock("restored", y, "free", "busy");
	must_flock(fx, LOCK_EX | LOCK_NB, "x, LOCK_EX|LOCK_NB through the holding description");
	must_flock(fy, LOCK_SH | LOCK_NB, "y, LOCK_SH|LOCK_NB through the holding description");
	status("STEP probed");
	if (!wait_for_status("STEP child1-done", 15))
		check_failed("parent: no 'STEP child1-done'");
	reap(child1, "child1");
	probe_flock("child1 exited", x, "busy", "busy");
	probe_flock("child1 exited", y, "free", "busy");
	must_flock(fx, LOCK_UN, "x, LOCK_UN");
	must_flock(fy, LOCK_UN, "y, LOCK_UN");
	probe_flock("parent unlocked", x, "free", "free");
	probe_flock("parent unlocked", y, "free", "free");
	role_finish();
}

static void child_took(void)
{
	char w[4300];
	snprintf(w, sizeof(w), "%s.w", wl_status);
	int fw = open_data(w, O_RDWR | O_CREAT | O_TRUNC);
	pid_t child1 = fork();
	if (child1 < 0)
		die("fork: %s", strerror(errno));
	if (child1 == 0) {
		role = "child1";
		if (flock(fw, LOCK_EX | LOCK_NB) < 0)
			die("child1: flock(w, LOCK_EX): %s", strerror(errno));
		status("READY child1 pid=%d", (int)getpid());
		while (!go_requested())
			sleep_ms(10);
		if (!wait_for_status("STEP probed", 15))
			check_failed("child1: no 'STEP probed'");
		must_flock(fw, LOCK_UN, "w, LOCK_UN");
		probe_flock("child1 unlocked w", w, "free", "free");
		role_finish();
	}
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child1 pid=%d", child1);
	if (!wait_for_status(needle, 10))
		die("child1 not READY");
	status("READY parent pid=%d child1=%d", (int)getpid(), (int)child1);
	while (!go_requested())
		sleep_ms(10);
	probe_flock("restored", w, "busy", "busy");
	status("STEP probed");
	reap(child1, "child1");
	probe_flock("child1 unlocked and exited", w, "free", "free");
	role_finish();
}

static void orphan(void)
{
	char z[4300];
	snprintf(z, sizeof(z), "%s.z", wl_status);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	pid_t parent = getpid();
	pid_t taker = fork();
	if (taker < 0)
		die("fork: %s", strerror(errno));
	if (taker == 0) {
		role = "taker";
		int fz = open_data(z, O_RDWR | O_CREAT | O_TRUNC);
		if (flock(fz, LOCK_EX | LOCK_NB) < 0)
			die("taker: flock(z, LOCK_EX): %s", strerror(errno));
		pid_t keeper = fork();
		if (keeper < 0)
			die("taker: fork: %s", strerror(errno));
		if (keeper == 0) {
			role = "keeper";
			status("READY keeper pid=%d", (int)getpid());
			while (!go_requested())
				sleep_ms(10);
			if (!wait_for_status("STEP probed", 15))
				check_failed("keeper: no 'STEP probed'");
			CHECK(getppid() == parent, "keeper: parent %d, expected the subreaper %d", getppid(), parent);
			probe_flock("keeper, restored", z, "busy", "busy");
			must_flock(fz, LOCK_EX | LOCK_NB, "z, LOCK_EX|LOCK_NB through the holding description");
			must_flock(fz, LOCK_UN, "z, LOCK_UN");
			probe_flock("keeper unlocked", z, "free", "free");
			role_finish();
		}
		char needle[64];
		snprintf(needle, sizeof(needle), "READY keeper pid=%d", keeper);
		if (!wait_for_status(needle, 10))
			die("taker: keeper not READY");
		status("EXIT taker pid=%d keeper=%d", (int)getpid(), (int)keeper);
		_exit(0);
	}
	if (!wait_for_status("EXIT taker", 10))
		die("taker did not exit");
	reap(taker, "taker");
	if (wl_fail_count)
		die("%s", wl_fail_buf);
	int keeper = 0;
	{
		static char buf[65536];
		read_file(wl_status, buf, sizeof(buf));
		char *k = strstr(buf, "EXIT taker");
		k = k ? strstr(k, "keeper=") : NULL;
		keeper = k ? atoi(k + 7) : 0;
	}
	/* the keeper is ours now */
	double deadline = mono_now() + 5;
	char path[64], st[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", keeper);
	for (;;) {
		char want[64];
		snprintf(want, sizeof(want), "PPid:\t%d\n", (int)parent);
		if (read_file(path, st, sizeof(st)) > 0 && strstr(st, want))
			break;
		if (mono_now() > deadline)
			die("keeper %d was not re-parented to the subreaper %d", keeper, (int)parent);
		sleep_ms(5);
	}
	status("READY parent pid=%d taker=%d keeper=%d", (int)parent, (int)taker, keeper);
	while (!go_requested())
		sleep_ms(10);
	probe_flock("parent, restored", z, "busy", "busy");
	status("STEP probed");
	reap(keeper, "keeper");
	probe_flock("keeper unlocked and exited", z, "free", "free");
	role_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 4)
		die("usage: lock_flock STATUS PROBE shared|child|orphan");
	probe_bin = argv[2];
	if (strcmp(argv[3], "shared") == 0)
		shared();
	if (strcmp(argv[3], "orphan") == 0)
		orphan();
	if (strcmp(argv[3], "child") == 0)
		child_took();
	die("unknown mode %s", argv[3]);
}
