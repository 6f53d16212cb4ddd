/*
 * lock_probe: looks at the file locks of a file from a fresh process, as any other program
 * would see them (used by the lock workloads from inside a restored tree, and by
 * tests/restore_locks.rs from outside it). Not a READY-protocol workload.
 *
 *   lock_probe query FILE Q...       one line per query: "Q = RESULT"
 *   lock_probe check FILE Q=E...     like query, comparing with E (alternatives separated by
 *                                    '|'); prints "ok ..." or "MISMATCH ..." lines, exit 0 iff
 *                                    all matched
 *   lock_probe grid FILE FROM TO STEP  for every offset: the conflict a 1-byte request of each
 *                                    kind and type meets ("OFF pw=X pr=X ow=X or=X", X one of
 *                                    '-', 'R', 'W'), then "flock sh=... ex=..."
 *   lock_probe hold FILE L READY     takes lock L without waiting (exit 1 if it cannot), creates
 *                                    READY, then waits until killed
 *   lock_probe wait FILE L READY     creates READY, then takes lock L waiting for it, prints
 *                                    "acquired" and waits until killed
 *
 * Queries: posix:r|w:START:LEN (F_GETLK), ofd:r|w:START:LEN (F_OFD_GETLK), flock:sh|ex
 * (flock LOCK_NB on a new open file description, released at once). LEN 0 means to EOF.
 * Results: "free", "R@PID:START:LEN" / "W@PID:START:LEN" (the conflicting lock F_GETLK
 * reports; PID -1 for an OFD lock), "busy" (flock).
 * Locks (hold/wait): posix:r|w:START:LEN, ofd:r|w:START:LEN, flock:sh|ex.
 *
 * Every query opens the file again (O_RDONLY, or O_RDWR for write locks) and closes it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

struct spec {
	char kind[8]; /* posix, ofd, flock */
	char type;    /* 'r' / 'w' (flock: sh = 'r', ex = 'w') */
	long long start, len;
};

static int parse_spec(const char *s, struct spec *sp)
{
	memset(sp, 0, sizeof(*sp));
	if (strncmp(s, "flock:", 6) == 0) {
		strcpy(sp->kind, "flock");
		if (strcmp(s + 6, "sh") == 0)
			sp->type = 'r';
		else if (strcmp(s + 6, "ex") == 0)
			sp->type = 'w';
		else
			return -1;
		return 0;
	}
	char kind[8], type;
	if (sscanf(s, "%7[a-z]:%c:%lld:%lld", kind, &type, &sp->start, &sp->len) != 4)
		return -1;
	if (strcmp(kind, "posix") != 0 && strcmp(kind, "ofd") != 0)
		return -1;
	if (type != 'r' && type != 'w')
		return -1;
	strcpy(sp->kind, kind);
	sp->type = type;
	return 0;
}

static int open_file(const char *path, int write)
{
	int fd = open(path, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0 && write)
		fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "lock_probe: open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	return fd;
}

/* The result of one query, in out. */
static void run_query(const char *path, const struct spec *sp, char *out, size_t outsz)
{
	int fd = open_file(path, 0);
	if (strcmp(sp->kind, "flock") == 0) {
		int r = flock(fd, (sp->type == 'w' ? LOCK_EX : LOCK_SH) | LOCK_NB);
		if (r == 0)
			snprintf(out, outsz, "free");
		else if (errno == EWOULDBLOCK)
			snprintf(out, outsz, "busy");
		else
			snprintf(out, outsz, "error:%s", strerror(errno));
		close(fd);
		return;
	}
	struct flock fl = { 0 };
	fl.l_type = sp->type == 'w' ? F_WRLCK : F_RDLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = sp->start;
	fl.l_len = sp->len;
	int cmd = strcmp(sp->kind, "ofd") == 0 ? F_OFD_GETLK : F_GETLK;
	if (fcntl(fd, cmd, &fl) < 0) {
		snprintf(out, outsz, "error:%s", strerror(errno));
	} else if (fl.l_type == F_UNLCK) {
		snprintf(out, outsz, "free");
	} else {
		snprintf(out, outsz, "%c@%d:%lld:%lld", fl.l_type == F_WRLCK ? 'W' : 'R', (int)fl.l_pid,
			 (long long)fl.l_start, (long long)fl.l_len);
	}
	close(fd);
}

static int take(int fd, const struct spec *sp, int wait)
{
	if (strcmp(sp->kind, "flock") == 0)
		return flock(fd, (sp->type == 'w' ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB));
	struct flock fl = { 0 };
	fl.l_type = sp->type == 'w' ? F_WRLCK : F_RDLCK;
	fl.l_whence = SEEK_SET;
	fl.l_start = sp->start;
	fl.l_len = sp->len;
	int cmd;
	if (strcmp(sp->kind, "ofd") == 0)
		cmd = wait ? F_OFD_SETLKW : F_OFD_SETLK;
	else
		cmd = wait ? F_SETLKW : F_SETLK;
	int r;
	do
		r = fcntl(fd, cmd, &fl);
	while (r < 0 && errno == EINTR && wait);
	return r;
}

static void touch(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0)
		close(fd);
}

static char conflict(const char *path, const char *kind, char type, long long off)
{
	struct spec sp = { .type = type, .start = off, .len = 1 };
	strcpy(sp.kind, kind);
	char r[128];
	run_query(path, &sp, r, sizeof(r));
	if (strcmp(r, "free") == 0)
		return '-';
	if (r[0] == 'R' || r[0] == 'W')
		return r[0];
	return '?';
}

/* Does result r match one of the '|'-separated alternatives of expected? */
static int matches(const char *r, const char *expected)
{
	const char *p = expected;
	for (;;) {
		const char *bar = strchr(p, '|');
		size_t n = bar ? (size_t)(bar - p) : strlen(p);
		if (strlen(r) == n && strncmp(r, p, n) == 0)
			return 1;
		if (!bar)
			return 0;
		p = bar + 1;
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 3) {
		fprintf(stderr, "usage: lock_probe query|check|grid|hold|wait FILE ...\n");
		return 2;
	}
	const char *mode = argv[1], *path = argv[2];
	if (strcmp(mode, "query") == 0 || strcmp(mode, "check") == 0) {
		int check = strcmp(mode, "check") == 0, bad = 0;
		for (int i = 3; i < argc; i++) {
			char q[256];
			snprintf(q, sizeof(q), "%s", argv[i]);
			const char *expected = NULL;
			char *eq = strchr(q, '=');
			if (check) {
				if (!eq) {
					fprintf(stderr, "lock_probe: check needs Q=EXPECTED: %s\n", q);
					return 2;
				}
				*eq = 0;
				expected = eq + 1;
			}
			struct spec sp;
			if (parse_spec(q, &sp) < 0) {
				fprintf(stderr, "lock_probe: bad query %s\n", q);
				return 2;
			}
			char r[128];
			run_query(path, &sp, r, sizeof(r));
			if (!check) {
				printf("%s = %s\n", q, r);
			} else if (matches(r, expected)) {
				printf("ok %s = %s\n", q, r);
			} else {
				printf("MISMATCH %s = %s, expected %s\n", q, r, expected);
				bad = 1;
			}
		}
		return bad;
	}
	if (strcmp(mode, "grid") == 0 && argc == 6) {
		long long from = atoll(argv[3]), to = atoll(argv[4]), step = atoll(argv[5]);
		for (long long off = from; off <= to; off += step)
			printf("%lld pw=%c pr=%c ow=%c or=%c\n", off, conflict(path, "posix", 'w', off),
			       conflict(path, "posix", 'r', off), conflict(path, "ofd", 'w', off),
			       conflict(path, "ofd", 'r', off));
		struct spec sh = { "flock", 'r', 0, 0 }, ex = { "flock", 'w', 0, 0 };
		char a[128], b[128];
		run_query(path, &sh, a, sizeof(a));
		run_query(path, &ex, b, sizeof(b));
		printf("flock sh=%s ex=%s\n", a, b);
		return 0;
	}
	if ((strcmp(mode, "hold") == 0 || strcmp(mode, "wait") == 0) && argc == 5) {
		struct spec sp;
		if (parse_spec(argv[3], &sp) < 0) {
			fprintf(stderr, "lock_probe: bad lock %s\n", argv[3]);
			return 2;
		}
		int wait = strcmp(mode, "wait") == 0;
		int fd = open_file(path, sp.type == 'w');
		if (wait)
			touch(argv[4]);
		if (take(fd, &sp, wait) < 0) {
			printf("cannot take %s on %s: %s\n", argv[3], path, strerror(errno));
			return 1;
		}
		if (wait)
			printf("acquired\n");
		else
			touch(argv[4]);
		for (;;)
			pause();
	}
	fprintf(stderr, "lock_probe: bad arguments\n");
	return 2;
}
