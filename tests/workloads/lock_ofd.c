/*
 * lock_ofd: OFD locks (F_OFD_SETLK), owned by open file descriptions.
 *
 * argv: STATUS PROBE (PROBE: the lock_probe binary, run as a helper process)
 *
 * parent: opens STATUS.a twice: D1 (O_RDWR) takes WRITE 0+10, READ 10+10 (adjacent),
 *         WRITE 100+50; D2 (O_RDONLY) takes READ 10+20 and READ 200..EOF (compatible with
 *         D1's read lock it overlaps). Forks child, which inherits D1 and D2 and opens a
 *         third description D3 with READ 15+10 and READ 250+10 (overlapping both others).
 *                                              READY child pid=N / READY parent pid=N ...
 * After .go:
 *   parent: the probe (a helper process) meets every lock with its type and range (pid -1:
 *           OFD); F_OFD_GETLK through D1 does not see D1's own locks but does see D2's, and
 *           the other way round: each lock belongs to the description that had it.
 *                                                                           STEP probed
 *   child:  the same through its inherited D1 (shared across fork) and its own D3; unlocking
 *           0+10 through D1 frees it for everyone (the parent's too: one description), locking
 *           it again makes it busy; unlocking D3 leaves D1's and D2's locks.  STEP child-done
 *   parent: reaps the child; D1's and D2's locks are all still there.           PASS parent
 */
#include "common.h"
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

static int ofd(int fd, int cmd, short type, off_t start, off_t len, struct flock *out)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	int r = fcntl(fd, cmd, &fl);
	if (out)
		*out = fl;
	return r;
}

static void must_ofd(int fd, short type, off_t start, off_t len)
{
	if (ofd(fd, F_OFD_SETLK, type, start, len, NULL) < 0)
		check_failed("%s: F_OFD_SETLK type %d %lld+%lld on fd %d: %s", role, type, (long long)start,
			     (long long)len, fd, strerror(errno));
}

/* F_OFD_GETLK for a write lock on start+len through fd: expect "free" or "R"/"W" start+len. */
static void own_view(int fd, const char *name, off_t start, off_t len, const char *expected)
{
	struct flock fl;
	char got[96];
	if (ofd(fd, F_OFD_GETLK, F_WRLCK, start, len, &fl) < 0)
		snprintf(got, sizeof(got), "error %s", strerror(errno));
	else if (fl.l_type == F_UNLCK)
		snprintf(got, sizeof(got), "free");
	else
		snprintf(got, sizeof(got), "%c@%d:%lld:%lld", fl.l_type == F_WRLCK ? 'W' : 'R', (int)fl.l_pid,
			 (long long)fl.l_start, (long long)fl.l_len);
	CHECK(strcmp(got, expected) == 0, "%s: F_OFD_GETLK W %lld+%lld through %s: %s, expected %s", role,
	      (long long)start, (long long)len, name, got, expected);
}

static int open_data(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC, 0644);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	return fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 3)
		die("usage: lock_ofd STATUS PROBE");
	probe_bin = argv[2];
	char a[4300];
	snprintf(a, sizeof(a), "%s.a", wl_status);
	int d1 = open_data(a, O_RDWR | O_CREAT | O_TRUNC);
	int d2 = open_data(a, O_RDONLY);
	must_ofd(d1, F_WRLCK, 0, 10);
	must_ofd(d1, F_RDLCK, 10, 10);
	must_ofd(d1, F_WRLCK, 100, 50);
	must_ofd(d2, F_RDLCK, 10, 20);
	must_ofd(d2, F_RDLCK, 200, 0);
	if (wl_fail_count)
		die("%s", wl_fail_buf);
	char q[32][96];
	int n;
#define Q(...) snprintf(q[n++], sizeof(q[0]), __VA_ARGS__)

	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		role = "child";
		int d3 = open_data(a, O_RDONLY);
		must_ofd(d3, F_RDLCK, 15, 10);
		must_ofd(d3, F_RDLCK, 250, 10);
		if (wl_fail_count)
			die("%s", wl_fail_buf);
		status("READY child pid=%d d3=%d", (int)getpid(), d3);
		while (!go_requested())
			sleep_ms(10);
		if (!wait_for_status("STEP probed", 15))
			check_failed("child: no 'STEP probed'");
		own_view(d1, "the inherited D1", 0, 10, "free");
		own_view(d3, "its own D3", 0, 10, "W@-1:0:10");
		own_view(d3, "its own D3", 250, 10, "R@-1:200:0");
		own_view(d1, "the inherited D1", 27, 1, "R@-1:10:20");
		if (ofd(d1, F_OFD_SETLK, F_UNLCK, 0, 10, NULL) < 0)
			check_failed("child: F_UNLCK 0+10 through D1: %s", strerror(errno));
		n = 0;
		Q("ofd:w:0:10=free");
		Q("posix:w:0:10=free");
		Q("ofd:r:120:1=W@-1:100:50");
		probe("child unlocked 0+10 through the shared D1", a, n, q);
		must_ofd(d1, F_WRLCK, 0, 10);
		n = 0;
		Q("ofd:r:0:10=W@-1:0:10");
		probe("child locked 0+10 again through D1", a, n, q);
		if (ofd(d3, F_OFD_SETLK, F_UNLCK, 0, 0, NULL) < 0)
			check_failed("child: F_UNLCK of D3: %s", strerror(errno));
		n = 0;
		Q("ofd:w:15:10=R@-1:10:10|R@-1:10:20");
		Q("ofd:w:20:5=R@-1:10:20");
		Q("ofd:w:255:1=R@-1:200:0");
		probe("child unlocked D3", a, n, q);
		status("STEP child-done");
		role_finish();
	}
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d", child);
	if (!wait_for_status(needle, 10))
		die("child not READY");
	status("READY parent pid=%d child=%d d1=%d d2=%d", (int)getpid(), (int)child, d1, d2);
	while (!go_requested())
		sleep_ms(10);

	n = 0;
	Q("ofd:w:0:10=W@-1:0:10");
	Q("ofd:r:5:1=W@-1:0:10");
	Q("posix:r:5:1=W@-1:0:10");
	Q("ofd:r:10:1000=W@-1:100:50");
	Q("ofd:w:12:1=R@-1:10:10|R@-1:10:20");
	Q("ofd:w:17:1=R@-1:10:10|R@-1:10:20|R@-1:15:10");
	Q("ofd:w:22:1=R@-1:10:20|R@-1:15:10");
	Q("ofd:w:27:1=R@-1:10:20");
	Q("ofd:r:10:90=free");
	Q("ofd:w:30:70=free");
	Q("ofd:r:120:1=W@-1:100:50");
	Q("ofd:w:150:50=free");
	Q("ofd:w:255:1=R@-1:200:0|R@-1:250:10");
	Q("ofd:w:5000:1=R@-1:200:0");
	Q("posix:w:5000:1=R@-1:200:0");
	Q("ofd:r:5000:1=free");
	Q("flock:ex=free");
	probe("restored", a, n, q);
	own_view(d1, "D1", 0, 10, "free");
	own_view(d2, "D2", 0, 10, "W@-1:0:10");
	own_view(d2, "D2", 25, 1, "free");
	own_view(d1, "D1", 25, 1, "R@-1:10:20");
	own_view(d1, "D1", 100, 50, "free");
	own_view(d2, "D2", 5000, 1, "free");
	own_view(d1, "D1", 5000, 1, "R@-1:200:0");
	status("STEP probed");
	if (!wait_for_status("STEP child-done", 15))
		check_failed("parent: no 'STEP child-done'");
	int st;
	double deadline = mono_now() + 15;
	pid_t r;
	while ((r = waitpid(child, &st, WNOHANG)) == 0 && mono_now() < deadline)
		sleep_ms(5);
	if (r != child)
		check_failed("parent: waitpid(child %d) returned %d", child, r);
	else
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with wait status 0x%x", st);
	n = 0;
	Q("ofd:r:0:10=W@-1:0:10");
	Q("ofd:w:27:1=R@-1:10:20");
	Q("ofd:r:120:1=W@-1:100:50");
	Q("ofd:w:5000:1=R@-1:200:0");
	probe("child exited", a, n, q);
	role_finish();
}
