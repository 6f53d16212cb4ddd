/*
 * Helpers shared by the lease workloads (tests/workloads/lease_*.c): the lease's state as
 * the process itself sees it (F_GETLEASE, its fdinfo "lock:" line) and the lease signals it
 * received (signal number, si_fd, si_code), recorded by an SA_SIGINFO handler and reported
 * from the main loop.
 */
#ifndef CRUST_LEASE_COMMON_H
#define CRUST_LEASE_COMMON_H

#include "common.h"
#include <sys/wait.h>

/* One received lease signal. */
struct lease_sig {
	int signo, fd, code;
	double t;
};

#define LEASE_SIG_MAX 32
static struct lease_sig lease_sigs[LEASE_SIG_MAX];
static volatile sig_atomic_t lease_sig_count;

static void lease_sig_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	int n = lease_sig_count;
	if (n < LEASE_SIG_MAX) {
		lease_sigs[n].signo = sig;
		lease_sigs[n].fd = si->si_fd;
		lease_sigs[n].code = si->si_code;
		lease_sigs[n].t = mono_now();
	}
	lease_sig_count = n + 1;
}

/* SA_SIGINFO handler for `sig` (SA_RESTART: the main loop's sleeps and reads go on). */
static __attribute__((unused)) void lease_catch(int sig)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = lease_sig_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL))
		die("sigaction(%d): %s", sig, strerror(errno));
}

/* Logs every signal received since the last call: "SIGNAL WHO n=N signo=S si_fd=F code=C t=T". */
static __attribute__((unused)) void lease_report_signals(const char *who, int *reported)
{
	int n = lease_sig_count;
	while (*reported < n && *reported < LEASE_SIG_MAX) {
		struct lease_sig *s = &lease_sigs[*reported];
		(*reported)++;
		status("SIGNAL %s n=%d signo=%d si_fd=%d code=%d t=%.6f", who, *reported, s->signo, s->fd, s->code,
		       s->t);
	}
}

static __attribute__((unused)) const char *lease_type_name(int t)
{
	return t == F_RDLCK ? "READ" : t == F_WRLCK ? "WRITE" : t == F_UNLCK ? "UNLCK" : "ERROR";
}

/* F_GETLEASE as a name (READ, WRITE, UNLCK; ERROR on failure). */
static __attribute__((unused)) const char *lease_get(int fd)
{
	return lease_type_name(fcntl(fd, F_GETLEASE));
}

/* The lease of `fd` as its fdinfo "lock:" line shows it: "ACTIVE WRITE", "BREAKING UNLCK"...,
 * or "none". */
static __attribute__((unused)) void lease_fdinfo(int fd, char *out, size_t outsz)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	snprintf(out, outsz, "none");
	if (read_file(path, buf, sizeof(buf)) < 0) {
		snprintf(out, outsz, "unreadable");
		return;
	}
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		char id[16], kind[16], mode[16], type[16];
		if (strncmp(line, "lock:", 5) == 0 && sscanf(line + 5, "%15s %15s %15s %15s", id, kind, mode, type) == 4 &&
		    strcmp(kind, "LEASE") == 0) {
			snprintf(out, outsz, "%s %s", mode, type);
			return;
		}
		line = nl ? nl + 1 : NULL;
	}
}

/* Is `pid` blocked behind a lease ("-> LEASE BREAKER TYPE PID" in /proc/locks)? */
static __attribute__((unused)) int lease_is_breaker(int pid)
{
	static char buf[65536];
	if (read_file("/proc/locks", buf, sizeof(buf)) < 0)
		return 0;
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		char id[16], arrow[8], kind[16], mode[16], type[16];
		int p = 0;
		if (sscanf(line, "%15s %7s %15s %15s %15s %d", id, arrow, kind, mode, type, &p) == 6 &&
		    strcmp(arrow, "->") == 0 && strcmp(kind, "LEASE") == 0 && strcmp(mode, "BREAKER") == 0 && p == pid)
			return 1;
		line = nl ? nl + 1 : NULL;
	}
	return 0;
}

/* Does the status file hold `needle` (a line another process of the tree wrote)? */
static __attribute__((unused)) int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

/* Have breakers b1..bN all logged their OPENED line? */
static __attribute__((unused)) int all_breakers_opened(int n)
{
	for (int i = 1; i <= n; i++) {
		char needle[32];
		snprintf(needle, sizeof(needle), "OPENED b%d ", i);
		if (!status_has(needle))
			return 0;
	}
	return 1;
}

/* Waits (15 s at most each) for the breakers, which must exit 0; kills one that does not end. */
static __attribute__((unused)) void reap_breakers(const pid_t *kids, int nkids)
{
	for (int i = 0; i < nkids; i++) {
		int st = 0;
		double deadline = mono_now() + 15;
		pid_t r;
		while ((r = waitpid(kids[i], &st, WNOHANG)) == 0 && mono_now() < deadline)
			sleep_ms(5);
		if (r != kids[i]) {
			check_failed("breaker b%d (pid %d) did not end", i + 1, (int)kids[i]);
			kill(kids[i], SIGKILL);
			waitpid(kids[i], &st, 0);
		} else {
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "breaker b%d ended with wait status 0x%x", i + 1, st);
		}
	}
}

#endif
