/*
 * lock_posix: POSIX record locks (fcntl F_SETLK) held by the processes of a tree.
 *
 * argv: STATUS PROBE (PROBE: the lock_probe binary, run as a helper process for the checks)
 *
 * Files STATUS.a, STATUS.b (4096 bytes, O_RDWR) and STATUS.c (O_RDONLY) are opened by the
 * parent before it forks, close-on-exec.
 *   child1 (inherits the parent's descriptions of a and c):
 *       a: READ 250+100;  c: READ 0+100                          -> READY child1 pid=N
 *   child2 (opens a itself, O_RDONLY):
 *       a: READ 220+20, READ 1000..EOF                           -> READY child2 pid=N
 *   parent (many ranges on a, read and write, adjacent and separate; several files):
 *       a: READ 0+10, WRITE 10+10 (adjacent), WRITE 40+10, READ 100+1, READ 200+100
 *          (overlaps both children's read locks)
 *       b: WRITE 5+5, READ 100+1 (the same lock as on a, on another file)
 *       c: READ 0..EOF (overlaps child1's)                       -> READY parent pid=N ...
 *
 * After <status>.go, from inside:
 *   1. parent: lock_probe (a helper process) sees every lock with its owner's pid, type and
 *      range, and nothing else ("STEP probed").
 *   2. each child unlocks its range(s) of a with F_UNLCK (only its own go) ("STEP childN-unlocked").
 *   3. parent: the probe sees only the parent's locks left on a (the overlapping read lock
 *      at 200+100 is still there, the children's parts are free); the parent unlocks
 *      200+100 and the probe sees 230 free: the overlapping locks were owned separately,
 *      each by the restored process that had it.
 *   4. children exit 0 after PASS; parent reaps them, PASS.
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

static int set_lock(int fd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	return fcntl(fd, F_SETLK, &fl);
}

static void must_lock(int fd, short type, off_t start, off_t len)
{
	if (set_lock(fd, type, start, len) < 0)
		die("%s: F_SETLK type %d %lld+%lld on fd %d: %s", role, type, (long long)start, (long long)len, fd,
		    strerror(errno));
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
		die("usage: lock_posix STATUS PROBE");
	probe_bin = argv[2];
	char a[4300], b[4300], c[4300];
	snprintf(a, sizeof(a), "%s.a", wl_status);
	snprintf(b, sizeof(b), "%s.b", wl_status);
	snprintf(c, sizeof(c), "%s.c", wl_status);
	char block[4096];
	memset(block, 'x', sizeof(block));
	int fa = open_data(a, O_RDWR | O_CREAT | O_TRUNC);
	int fb = open_data(b, O_RDWR | O_CREAT | O_TRUNC);
	if (write(fa, block, sizeof(block)) != sizeof(block) || write(fb, block, sizeof(block)) != sizeof(block))
		die("write: %s", strerror(errno));
	close(open_data(c, O_WRONLY | O_CREAT | O_TRUNC));
	int fc = open_data(c, O_RDONLY);
	pid_t parent = getpid();

	pid_t child1 = fork();
	if (child1 < 0)
		die("fork: %s", strerror(errno));
	if (child1 == 0) {
		role = "child1";
		must_lock(fa, F_RDLCK, 250, 100);
		must_lock(fc, F_RDLCK, 0, 100);
		status("READY child1 pid=%d", (int)getpid());
		while (!go_requested())
			sleep_ms(10);
		if (!wait_for_status("STEP probed", 15))
			check_failed("child1: no 'STEP probed'");
		if (set_lock(fa, F_UNLCK, 0, 0) < 0)
			check_failed("child1: F_UNLCK of a: %s", strerror(errno));
		status("STEP child1-unlocked");
		role_finish();
	}
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child1 pid=%d", child1);
	if (!wait_for_status(needle, 10))
		die("child1 not READY");

	pid_t child2 = fork();
	if (child2 < 0)
		die("fork: %s", strerror(errno));
	if (child2 == 0) {
		role = "child2";
		int fa2 = open_data(a, O_RDONLY);
		must_lock(fa2, F_RDLCK, 220, 20);
		must_lock(fa2, F_RDLCK, 1000, 0);
		status("READY child2 pid=%d fd=%d", (int)getpid(), fa2);
		while (!go_requested())
			sleep_ms(10);
		if (!wait_for_status("STEP probed", 15))
			check_failed("child2: no 'STEP probed'");
		if (set_lock(fa2, F_UNLCK, 0, 0) < 0)
			check_failed("child2: F_UNLCK of a: %s", strerror(errno));
		status("STEP child2-unlocked");
		role_finish();
	}
	snprintf(needle, sizeof(needle), "READY child2 pid=%d", child2);
	if (!wait_for_status(needle, 10))
		die("child2 not READY");

	must_lock(fa, F_RDLCK, 0, 10);
	must_lock(fa, F_WRLCK, 10, 10);
	must_lock(fa, F_WRLCK, 40, 10);
	must_lock(fa, F_RDLCK, 100, 1);
	must_lock(fa, F_RDLCK, 200, 100);
	must_lock(fb, F_WRLCK, 5, 5);
	must_lock(fb, F_RDLCK, 100, 1);
	must_lock(fc, F_RDLCK, 0, 0);
	status("READY parent pid=%d child1=%d child2=%d", (int)parent, (int)child1, (int)child2);
	while (!go_requested())
		sleep_ms(10);

	int P = (int)parent, C1 = (int)child1, C2 = (int)child2;
	char q[32][96];
	int n = 0;
#define Q(...) snprintf(q[n++], sizeof(q[0]), __VA_ARGS__)
	Q("posix:w:0:10=R@%d:0:10", P);
	Q("posix:r:0:10=free");
	Q("posix:r:10:10=W@%d:10:10", P);
	Q("posix:w:5:10=R@%d:0:10|W@%d:10:10", P, P);
	Q("posix:w:20:20=free");
	Q("posix:r:45:1=W@%d:40:10", P);
	Q("posix:w:50:50=free");
	Q("posix:w:100:1=R@%d:100:1", P);
	Q("posix:r:100:1=free");
	Q("posix:w:101:99=free");
	Q("posix:w:205:10=R@%d:200:100", P);
	Q("posix:w:225:1=R@%d:200:100|R@%d:220:20", P, C2);
	Q("posix:w:260:1=R@%d:200:100|R@%d:250:100", P, C1);
	Q("posix:w:320:1=R@%d:250:100", C1);
	Q("posix:r:0:0=W@%d:10:10|W@%d:40:10", P, P);
	Q("posix:w:350:650=free");
	Q("posix:w:5000:1=R@%d:1000:0", C2);
	Q("posix:r:5000:1=free");
	Q("ofd:w:45:1=W@%d:40:10", P);
	Q("ofd:r:20:20=free");
	Q("flock:ex=free");
	probe("all locks", a, n, q);
	n = 0;
	Q("posix:w:5:5=W@%d:5:5", P);
	Q("posix:r:4:1=free");
	Q("posix:r:9:1=W@%d:5:5", P);
	Q("posix:r:10:90=free");
	Q("posix:w:100:1=R@%d:100:1", P);
	Q("posix:r:100:1=free");
	Q("posix:w:101:10000=free");
	probe("all locks", b, n, q);
	n = 0;
	Q("posix:w:50:1=R@%d:0:0|R@%d:0:100", P, C1);
	Q("posix:w:200:1=R@%d:0:0", P);
	Q("posix:r:0:0=free");
	probe("all locks", c, n, q);
	status("STEP probed");

	if (!wait_for_status("STEP child1-unlocked", 10) || !wait_for_status("STEP child2-unlocked", 10))
		check_failed("parent: the children did not unlock");
	n = 0;
	Q("posix:w:225:1=R@%d:200:100", P);
	Q("posix:w:260:1=R@%d:200:100", P);
	Q("posix:w:300:10000=free");
	Q("posix:w:0:10=R@%d:0:10", P);
	Q("posix:r:10:10=W@%d:10:10", P);
	probe("children unlocked", a, n, q);
	if (set_lock(fa, F_UNLCK, 200, 100) < 0)
		check_failed("parent: F_UNLCK 200+100: %s", strerror(errno));
	n = 0;
	Q("posix:w:200:10000=free");
	Q("posix:r:45:1=W@%d:40:10", P);
	probe("parent unlocked 200+100", a, n, q);

	pid_t kids[2] = { child1, child2 };
	for (int i = 0; i < 2; i++) {
		int st;
		double deadline = mono_now() + 15;
		pid_t r;
		while ((r = waitpid(kids[i], &st, WNOHANG)) == 0 && mono_now() < deadline)
			sleep_ms(5);
		if (r != kids[i])
			check_failed("parent: waitpid(%d) returned %d", kids[i], r);
		else
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child %d ended with wait status 0x%x",
			      kids[i], st);
	}
	role_finish();
}
