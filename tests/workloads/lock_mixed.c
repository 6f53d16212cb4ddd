/*
 * lock_mixed: POSIX, OFD and flock locks together on one file, for what processes outside the
 * tree meet.
 *
 * argv: STATUS PROBE (PROBE: the lock_probe binary, run as a helper process)
 *
 * parent: opens STATUS.m O_RDWR (D1) and takes flock LOCK_SH on it, POSIX WRITE 0+10 and
 *         POSIX READ 20+10; forks child (inherits D1).
 * child:  opens m again (D2): OFD READ 20+20 (overlapping the parent's POSIX read lock), OFD
 *         WRITE 50+10, flock LOCK_SH on D2 too.
 *                                            READY child pid=N / READY parent pid=N child=N
 * After .go: the parent's probe (a helper process) meets every lock (STEP probed); then the
 * child checks that a
 * POSIX read lock of its own on 25+1 is granted (compatible) and a write lock on 5 refused
 * with EAGAIN; both PASS.
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

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	return fcntl(fd, cmd, &fl);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 3)
		die("usage: lock_mixed STATUS PROBE");
	probe_bin = argv[2];
	char m[4300];
	snprintf(m, sizeof(m), "%s.m", wl_status);
	int d1 = open(m, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (d1 < 0)
		die("open %s: %s", m, strerror(errno));
	if (flock(d1, LOCK_SH | LOCK_NB) < 0 || lock(d1, F_SETLK, F_WRLCK, 0, 10) < 0 ||
	    lock(d1, F_SETLK, F_RDLCK, 20, 10) < 0)
		die("parent locks: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		role = "child";
		int d2 = open(m, O_RDWR | O_CLOEXEC);
		if (d2 < 0 || lock(d2, F_OFD_SETLK, F_RDLCK, 20, 20) < 0 || lock(d2, F_OFD_SETLK, F_WRLCK, 50, 10) < 0 ||
		    flock(d2, LOCK_SH | LOCK_NB) < 0)
			die("child locks: %s", strerror(errno));
		status("READY child pid=%d", (int)getpid());
		while (!go_requested())
			sleep_ms(10);
		if (!wait_for_status("STEP probed", 15))
			check_failed("child: no 'STEP probed'");
		int d3 = open(m, O_RDWR | O_CLOEXEC);
		CHECK(lock(d3, F_SETLK, F_RDLCK, 25, 1) == 0, "child: POSIX read lock on 25 refused: %s", strerror(errno));
		CHECK(lock(d3, F_SETLK, F_WRLCK, 5, 1) < 0 && errno == EAGAIN,
		      "child: POSIX write lock on 5 (the parent's) not refused with EAGAIN");
		CHECK(flock(d3, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK, "child: LOCK_EX granted beside two LOCK_SH");
		role_finish();
	}
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d", child);
	if (!wait_for_status(needle, 10))
		die("child not READY");
	status("READY parent pid=%d child=%d", (int)getpid(), (int)child);
	while (!go_requested())
		sleep_ms(10);
	int P = (int)getpid();
	char q[32][96];
	int n = 0;
#define Q(...) snprintf(q[n++], sizeof(q[0]), __VA_ARGS__)
	Q("posix:r:0:10=W@%d:0:10", P);
	Q("ofd:r:9:1=W@%d:0:10", P);
	Q("posix:r:10:10=free");
	Q("posix:w:10:10=free");
	Q("posix:w:20:5=R@%d:20:10|R@-1:20:20", P);
	Q("posix:w:35:5=R@-1:20:20");
	Q("posix:r:20:30=free");
	Q("ofd:r:55:1=W@-1:50:10");
	Q("posix:w:60:10000=free");
	Q("flock:sh=free");
	Q("flock:ex=busy");
	probe("restored", m, n, q);
	status("STEP probed");
	int st;
	double deadline = mono_now() + 15;
	pid_t r;
	while ((r = waitpid(child, &st, WNOHANG)) == 0 && mono_now() < deadline)
		sleep_ms(5);
	if (r != child)
		check_failed("parent: waitpid(child %d) returned %d", child, r);
	else
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with wait status 0x%x", st);
	role_finish();
}
