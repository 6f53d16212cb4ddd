/*
 * lock_waiters: processes blocked waiting for a lock when checkpointed.
 *
 * argv: STATUS PROBE (PROBE: the lock_probe binary, run as a helper process)
 *
 * parent (the holder): POSIX WRITE 0+10 on STATUS.a, OFD WRITE 0+10 on STATUS.b, flock
 * LOCK_EX on STATUS.c. Then it forks three waiters, each with its own description:
 *   w1: F_SETLKW     WRITE 0+10 on a        (READY w1 pid=N fd=N, then blocks)
 *   w2: F_OFD_SETLKW WRITE 5+5 on b         (READY w2 ...)
 *   w3: flock(LOCK_EX) on c                 (READY w3 ...)
 *                                          READY parent pid=N w1=N w2=N w3=N
 * After .go:
 *   parent: nobody has acquired anything; the probe meets the parent's three locks; 300 ms
 *   later still nobody has. Then, for a, b and c in turn: "RELEASE X t=T" (monotonic time),
 *   unlock X, and wait for the waiter's "ACQUIRED X": only X's waiter may have acquired.
 *   Each waiter, when its call returns: the parent's "RELEASE X" line is already there (it
 *   acquired only after the release), less than a second ago; the probe meets its own lock
 *   now; "ACQUIRED X pid=N t=T"; PASS. The parent reaps the waiters; PASS parent.
 */
#include "common.h"
#include <sys/file.h>
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

static int open_data(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC, 0644);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	return fd;
}

static double release_time(const char *name)
{
	static char buf[65536];
	char needle[32];
	snprintf(needle, sizeof(needle), "RELEASE %s t=", name);
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return -1;
	char *p = strstr(buf, needle);
	return p ? atof(p + strlen(needle)) : -1;
}

/* A waiter: blocks in its call, then checks it acquired only after the release. */
static __attribute__((noreturn)) void waiter(const char *name, const char *path, int kind)
{
	static char rolebuf[8];
	snprintf(rolebuf, sizeof(rolebuf), "w%d", kind);
	role = rolebuf;
	int fd = open_data(path, kind == 3 ? O_RDONLY : O_RDWR);
	status("READY %s pid=%d fd=%d", role, (int)getpid(), fd);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = kind == 2 ? 5 : 0, .l_len = kind == 2 ? 5 : 10 };
	int r;
	do {
		if (kind == 1)
			r = fcntl(fd, F_SETLKW, &fl);
		else if (kind == 2)
			r = fcntl(fd, F_OFD_SETLKW, &fl);
		else
			r = flock(fd, LOCK_EX);
	} while (r < 0 && errno == EINTR);
	double now = mono_now();
	if (r < 0)
		die("%s: waiting for %s: %s", role, name, strerror(errno));
	double rel = release_time(name);
	CHECK(rel > 0, "%s: acquired %s before the holder released it", role, name);
	CHECK(rel <= 0 || now - rel < 1.0, "%s: acquired %s %.3f s after the release", role, name, now - rel);
	char q[2][96];
	if (kind == 1)
		snprintf(q[0], sizeof(q[0]), "posix:r:0:10=W@%d:0:10", (int)getpid());
	else if (kind == 2)
		snprintf(q[0], sizeof(q[0]), "ofd:r:0:10=W@-1:5:5");
	else
		snprintf(q[0], sizeof(q[0]), "flock:sh=busy");
	probe("acquired", path, 1, q);
	status("ACQUIRED %s pid=%d t=%.6f", name, (int)getpid(), now);
	role_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 3)
		die("usage: lock_waiters STATUS PROBE");
	probe_bin = argv[2];
	char a[4300], b[4300], c[4300];
	snprintf(a, sizeof(a), "%s.a", wl_status);
	snprintf(b, sizeof(b), "%s.b", wl_status);
	snprintf(c, sizeof(c), "%s.c", wl_status);
	int fa = open_data(a, O_RDWR | O_CREAT | O_TRUNC);
	int fb = open_data(b, O_RDWR | O_CREAT | O_TRUNC);
	int fc = open_data(c, O_RDWR | O_CREAT | O_TRUNC);
	struct flock wr = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
	if (fcntl(fa, F_SETLK, &wr) < 0 || fcntl(fb, F_OFD_SETLK, &wr) < 0 || flock(fc, LOCK_EX | LOCK_NB) < 0)
		die("taking the locks: %s", strerror(errno));
	const char *names[3] = { "a", "b", "c" };
	const char *paths[3] = { a, b, c };
	pid_t w[3];
	for (int i = 0; i < 3; i++) {
		w[i] = fork();
		if (w[i] < 0)
			die("fork: %s", strerror(errno));
		if (w[i] == 0)
			waiter(names[i], paths[i], i + 1);
		char needle[64];
		snprintf(needle, sizeof(needle), "READY w%d pid=%d", i + 1, (int)w[i]);
		if (!wait_for_status(needle, 10))
			die("w%d not READY", i + 1);
	}
	status("READY parent pid=%d w1=%d w2=%d w3=%d", (int)getpid(), (int)w[0], (int)w[1], (int)w[2]);
	while (!go_requested())
		sleep_ms(10);

	CHECK(!status_has("ACQUIRED"), "parent: a waiter acquired a lock the parent holds");
	char q[2][96];
	snprintf(q[0], sizeof(q[0]), "posix:r:0:10=W@%d:0:10", (int)getpid());
	probe("restored", a, 1, q);
	snprintf(q[0], sizeof(q[0]), "ofd:r:0:10=W@-1:0:10");
	probe("restored", b, 1, q);
	snprintf(q[0], sizeof(q[0]), "flock:sh=busy");
	probe("restored", c, 1, q);
	sleep_ms(300);
	CHECK(!status_has("ACQUIRED"), "parent: a waiter acquired a lock the parent holds");

	struct flock un = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
	for (int i = 0; i < 3; i++) {
		status("RELEASE %s t=%.6f", names[i], mono_now());
		int r = i == 0 ? fcntl(fa, F_SETLK, &un) : i == 1 ? fcntl(fb, F_OFD_SETLK, &un) : flock(fc, LOCK_UN);
		if (r < 0)
			check_failed("parent: releasing %s: %s", names[i], strerror(errno));
		char needle[32];
		snprintf(needle, sizeof(needle), "ACQUIRED %s ", names[i]);
		if (!wait_for_status(needle, 5))
			check_failed("parent: w%d did not acquire %s within 5 s of its release", i + 1, names[i]);
		for (int j = i + 1; j < 3; j++) {
			snprintf(needle, sizeof(needle), "ACQUIRED %s ", names[j]);
			CHECK(!status_has(needle), "parent: w%d acquired %s while the parent still held it", j + 1,
			      names[j]);
		}
	}
	for (int i = 0; i < 3; i++) {
		int st;
		double deadline = mono_now() + 15;
		pid_t r;
		while ((r = waitpid(w[i], &st, WNOHANG)) == 0 && mono_now() < deadline)
			sleep_ms(5);
		if (r != w[i])
			check_failed("parent: waitpid(w%d %d) returned %d", i + 1, w[i], r);
		else
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: w%d ended with wait status 0x%x", i + 1, st);
	}
	role_finish();
}
