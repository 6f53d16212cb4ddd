/*
 * Shared helpers for crust test workloads.
 *
 * Protocol (see tests/common/mod.rs):
 *   argv[1]            status file; lines are appended with open/write/close so
 *                      that no fd stays open for it (every open fd is part of the
 *                      checkpointed state).
 *   "READY ..."        written once the state to be checkpointed is set up.
 *   "<argv[1]>.go"     created by the test after the restore; the workload polls it.
 *   "PASS ..."/exit 0  everything verified;  "FAIL <what>"/exit 1 otherwise.
 *
 * No stdio buffering is relied upon: diagnostics go to stderr (a log file).
 */
#ifndef CRUST_WORKLOAD_COMMON_H
#define CRUST_WORKLOAD_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char wl_status[4096];
static char wl_go[4200];
static char wl_fail_buf[8192];
static size_t wl_fail_len;
static int wl_fail_count;

static __attribute__((unused)) void wl_write_line(const char *fmt, va_list ap)
{
	char buf[8192];
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* the log first: once a test sees a line in the status file, the log (whose offset
	 * is part of the process's state) already has it too */
	fprintf(stderr, "%.*s", n, buf);
	int fd = open(wl_status, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "cannot open status file %s: %s\n", wl_status, strerror(errno));
		return;
	}
	ssize_t off = 0;
	while (off < n) {
		ssize_t w = write(fd, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += w;
	}
	close(fd);
}

__attribute__((format(printf, 1, 2), unused)) static void status(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	wl_write_line(fmt, ap);
	va_end(ap);
}

static __attribute__((unused)) void wl_init(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s STATUS_FILE [args]\n", argv[0]);
		exit(2);
	}
	snprintf(wl_status, sizeof(wl_status), "%s", argv[1]);
	snprintf(wl_go, sizeof(wl_go), "%s.go", argv[1]);
}

/* The test creates <status>.go after the restore. */
static __attribute__((unused)) int go_requested(void)
{
	return access(wl_go, F_OK) == 0;
}

static __attribute__((unused)) void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL); /* EINTR is fine: callers loop */
}

static __attribute__((unused)) double mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Record a failed check; all failures are reported together in one FAIL line. */
__attribute__((format(printf, 1, 2), unused)) static void check_failed(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	wl_fail_count++;
	if (wl_fail_len < sizeof(wl_fail_buf) - 8) {
		int n = snprintf(wl_fail_buf + wl_fail_len, sizeof(wl_fail_buf) - wl_fail_len,
				 "%s%s", wl_fail_len ? "; " : "", buf);
		if (n > 0)
			wl_fail_len += (size_t)n;
		if (wl_fail_len >= sizeof(wl_fail_buf))
			wl_fail_len = sizeof(wl_fail_buf) - 1;
	}
}

#define CHECK(cond, ...)                      \
	do {                                  \
		if (!(cond))                  \
			check_failed(__VA_ARGS__); \
	} while (0)

#define CHECK_EQ_U(what, expected, got)                                                  \
	do {                                                                              \
		unsigned long long e_ = (unsigned long long)(expected);                   \
		unsigned long long g_ = (unsigned long long)(got);                        \
		if (e_ != g_)                                                             \
			check_failed("%s: expected %llu (0x%llx) got %llu (0x%llx)", (what), \
				     e_, e_, g_, g_);                                     \
	} while (0)

#define CHECK_EQ_S(what, expected, got)                                              \
	do {                                                                          \
		const char *e_ = (expected), *g_ = (got);                             \
		if (strcmp(e_, g_) != 0)                                              \
			check_failed("%s: expected '%s' got '%s'", (what), e_, g_);   \
	} while (0)

/* Immediate failure (used before READY, or when continuing makes no sense). */
__attribute__((format(printf, 1, 2), noreturn, unused)) static void die(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	status("FAIL %s", buf);
	exit(1);
}

/* Report the collected checks and exit: PASS <summary> / FAIL <failures>. */
__attribute__((format(printf, 1, 2), noreturn, unused)) static void finish(const char *fmt, ...)
{
	if (wl_fail_count) {
		status("FAIL %s", wl_fail_buf);
		exit(1);
	}
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	status("PASS %s", buf);
	exit(0);
}

/* sigaction(sig): `handler` with `flags`, nothing else blocked while it runs. Fatal on error. */
static __attribute__((unused)) void set_handler(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL))
		die("sigaction(%d): %s", sig, strerror(errno));
}

/*
 * A one-shot ITIMER_REAL of `secs` s whose SIGALRM runs `handler` (SA_RESTART, nothing
 * else blocked). Sets *armed_at to mono_now() when it was armed and returns the time the
 * timer had left right after arming (what a READY line reports as itimer_remaining).
 */
static __attribute__((unused)) double arm_oneshot_alarm(void (*handler)(int), int secs, double *armed_at)
{
	set_handler(SIGALRM, handler, SA_RESTART);

	struct itimerval it = { .it_interval = { 0, 0 }, .it_value = { secs, 0 } };
	*armed_at = mono_now();
	setitimer(ITIMER_REAL, &it, NULL);
	struct itimerval cur;
	getitimer(ITIMER_REAL, &cur);
	return cur.it_value.tv_sec + cur.it_value.tv_usec / 1e6;
}

/* After the one-shot timer fired: it must be disarmed (a failed check otherwise). */
static __attribute__((unused)) void check_alarm_disarmed(void)
{
	struct itimerval cur;
	getitimer(ITIMER_REAL, &cur);
	if (cur.it_value.tv_sec != 0 || cur.it_value.tv_usec != 0)
		check_failed("one-shot ITIMER_REAL still armed after firing: %ld.%06ld", (long)cur.it_value.tv_sec,
			     (long)cur.it_value.tv_usec);
}

/* Read a whole (small, e.g. /proc) file into buf without stdio or malloc. */
static __attribute__((unused)) ssize_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t off = 0;
	for (;;) {
		if (off + 1 >= size)
			break;
		ssize_t r = read(fd, buf + off, size - 1 - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		off += (size_t)r;
	}
	close(fd);
	buf[off] = 0;
	return (ssize_t)off;
}

/* Value of "Key:\t..." in a /proc status file such as /proc/self/task/TID/status
 * (trimmed), or "" if absent. */
static __attribute__((unused)) void proc_file_field(const char *path, const char *key, char *out, size_t outsz)
{
	static __thread char buf[16384];
	out[0] = 0;
	if (read_file(path, buf, sizeof(buf)) < 0)
		return;
	size_t klen = strlen(key);
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
			char *v = line + klen + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			size_t n = nl ? (size_t)(nl - v) : strlen(v);
			if (n >= outsz)
				n = outsz - 1;
			memcpy(out, v, n);
			out[n] = 0;
			return;
		}
		line = nl ? nl + 1 : NULL;
	}
}

/* Value of "Key:\t..." in /proc/self/status (trimmed), or "" if absent. */
static __attribute__((unused)) void proc_status_field(const char *key, char *out, size_t outsz)
{
	proc_file_field("/proc/self/status", key, out, outsz);
}

/* The same for the calling thread's own status (ids, capabilities, seccomp are per thread). */
static __attribute__((unused)) void thread_status_field(const char *key, char *out, size_t outsz)
{
	proc_file_field("/proc/thread-self/status", key, out, outsz);
}

#endif
