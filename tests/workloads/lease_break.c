/*
 * lease_break: a lease caught in the middle of a break, by breakers of the same tree.
 *
 * argv: STATUS LEASE ACCESS BREAKERS FLAGS WATCH
 *   LEASE     r | w: the holder's lease type
 *   ACCESS    ro | rw: the holder's description is O_RDONLY or O_RDWR
 *   BREAKERS  comma list (or "-"), started in this order, each blocked (or done) before the next:
 *               w   a child that open()s the file O_WRONLY and blocks (an unlock break)
 *               r   a child that open()s it O_RDONLY and blocks (a downgrade break)
 *               nw  a child whose open(O_WRONLY|O_NONBLOCK) fails with EAGAIN (the break runs
 *                   with nobody waiting); after .go it open()s O_WRONLY again, blocking
 *   FLAGS     comma list (or "-"):
 *               block    the holder blocks its lease signal before the break: at the dump the
 *                        signal is pending; it is unblocked after .go
 *               release  the holder gives the lease up (F_SETLEASE F_UNLCK) right after .go
 *               downgrade the holder downgrades its lease (F_SETLEASE F_RDLCK) right after .go
 *               gaps     while waiting for .go the holder logs every pause of its 5 ms loop
 *                        longer than 0.3 s: a GAP line brackets the time the tree was frozen
 *                        (from = its last run before the freeze, to = its first run after the
 *                        restore, both within a few ms)
 *               close    right after .go the holder closes its lease fd (CLOSE line)
 *               exit     right after .go the holder exits (EXIT line, then PASS and exit 0;
 *                        its breakers, left to themselves, still log OPENED and exit after .go)
 *               exec     right after .go the holder execs itself (EXEC line) in "execd" mode
 *                        (below): its lease fd is O_CLOEXEC
 *               map      the holder mmap()s the data file MAP_SHARED PROT_READ through its
 *                        lease fd before F_SETLEASE (reads it: MAPPED line); after .go it
 *                        checks the mapping's content (MAP line)
 *               mapafter the same, mapped after F_SETLEASE (before the breakers start)
 *   WATCH     seconds the holder watches its lease after .go, at most: it stops 1 s after
 *             every breaker's open has returned
 *
 * The data file is STATUS.data. The holder's lease signal is SIGRTMIN+1 (F_SETSIG), handled.
 *
 * Lines (times are CLOCK_MONOTONIC seconds):
 *   START bI pid=P kind=K t=T        breaker I is about to open()
 *   NBOPEN bI pid=P rc=R errno=E t=T (nw) the non-blocking open returned
 *   OPENED bI pid=P rc=R errno=E t=T the (blocking) open returned
 *   READY holder pid=P fd=F sig=S breakers=P1,P2...
 *   SIGNAL holder n=N signo=S si_fd=F code=C t=T   every lease signal, when received
 *   GO t=T / UNBLOCK t=T / RELEASE rc=R t=T / DOWNGRADE rc=R t=T
 *   GETLEASE v=READ|WRITE|UNLCK t=T  F_GETLEASE, when it changes after .go
 *   FDINFO v=MODE TYPE|none t=T      the fdinfo lease line, when it changes after .go
 *   DONE sigs=N getlease=V fdinfo=V  at the end of WATCH; then PASS / FAIL
 *   GAP from=T0 to=T1                (gaps) a pause of the holder's loop before .go
 *   CLOSE rc=R t=T / EXIT t=T / EXEC t=T  (close, exit, exec) T: just before the call
 *   MAPPED addr=A ok=1 / MAP ok=0|1 t=T   (map, mapafter) the mapping's content is the file's
 * The holder checks itself that every signal is its lease signal with si_fd = its fd, and that
 * every breaker exits 0 (a breaker checks that its blocking open succeeded).
 *
 * "execd" mode, what the holder execs with the exec flag (same pid, its breakers are still its
 * children):  lease_break STATUS execd FD PIDS WATCH
 *   EXECED pid=P fd_closed=0|1 t=T   FD (the old lease fd) must be closed (O_CLOEXEC)
 * then it waits for the breakers (which exit once their open returned and .go exists) and
 * checks they exit 0, then PASS / FAIL.
 */
#include "lease_common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define MAX_BREAKERS 8

static char data[4300];

/* Is `name` one of the comma-separated words of `list`? */
static int has_flag(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; p && *p;) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == n && strncmp(p, name, n) == 0)
			return 1;
		p = e ? e + 1 : NULL;
	}
	return 0;
}

static const char expected_content[] = "leased data\n";

/* Does the mapping show the file's content? */
static int map_ok(const char *map)
{
	return memcmp(map, expected_content, sizeof(expected_content) - 1) == 0;
}

/* Waits (15 s at most each) for the breakers and checks they exit 0. */
/* The exec'd holder: lease_break STATUS execd FD PIDS WATCH. */
static __attribute__((noreturn)) void execd(char **argv)
{
	int fd = atoi(argv[3]);
	int closed = fcntl(fd, F_GETFD) < 0 && errno == EBADF;
	status("EXECED pid=%d fd_closed=%d t=%.6f", (int)getpid(), closed, mono_now());
	CHECK(closed, "execd: the lease fd %d is still open after exec", fd);
	pid_t kids[MAX_BREAKERS];
	int nkids = 0;
	char list[256];
	snprintf(list, sizeof(list), "%s", argv[4]);
	for (char *k = strtok(list, ","); k && strcmp(k, "-") != 0 && nkids < MAX_BREAKERS; k = strtok(NULL, ","))
		kids[nkids++] = atoi(k);
	reap_breakers(kids, nkids);
	finish("execd");
}

static __attribute__((noreturn)) void breaker(int i, const char *kind)
{
	int nb = kind[0] == 'n';
	int flags = (strchr(kind, 'w') ? O_WRONLY : O_RDONLY) | O_CLOEXEC;
	status("START b%d pid=%d kind=%s t=%.6f", i, (int)getpid(), kind, mono_now());
	if (nb) {
		int r = open(data, flags | O_NONBLOCK);
		int e = r < 0 ? errno : 0;
		status("NBOPEN b%d pid=%d rc=%d errno=%d t=%.6f", i, (int)getpid(), r, e, mono_now());
		if (r >= 0)
			close(r);
		while (!go_requested())
			sleep_ms(10);
	}
	int r = open(data, flags);
	int e = r < 0 ? errno : 0;
	status("OPENED b%d pid=%d rc=%d errno=%d t=%.6f", i, (int)getpid(), r, e, mono_now());
	while (!go_requested())
		sleep_ms(10);
	_exit(r >= 0 ? 0 : 1);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc >= 6 && strcmp(argv[2], "execd") == 0)
		execd(argv);
	if (argc < 7)
		die("usage: lease_break STATUS r|w ro|rw BREAKERS FLAGS WATCH");
	int want_write = strcmp(argv[2], "w") == 0;
	int rw = strcmp(argv[3], "rw") == 0;
	int block = strstr(argv[5], "block") != NULL;
	int release = strstr(argv[5], "release") != NULL;
	int downgrade = has_flag(argv[5], "downgrade");
	int gaps = has_flag(argv[5], "gaps");
	int do_close = has_flag(argv[5], "close");
	int do_exit = has_flag(argv[5], "exit");
	int do_exec = has_flag(argv[5], "exec");
	int map_before = has_flag(argv[5], "map");
	int map_after = has_flag(argv[5], "mapafter");
	double watch = atof(argv[6]);
	int sig = SIGRTMIN + 1;
	snprintf(data, sizeof(data), "%s.data", wl_status);

	int c = open(data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c < 0 || write(c, "leased data\n", 12) != 12)
		die("creating %s: %s", data, strerror(errno));
	close(c);
	int fd = open(data, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", data, strerror(errno));
	lease_catch(sig);
	if (fcntl(fd, F_SETSIG, sig))
		die("F_SETSIG: %s", strerror(errno));
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	if (block)
		sigprocmask(SIG_BLOCK, &set, NULL);
	char *map = NULL;
	if (map_before || map_after) {
		if (map_after && fcntl(fd, F_SETLEASE, want_write ? F_WRLCK : F_RDLCK))
			die("F_SETLEASE %s: %s", argv[2], strerror(errno));
		map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		if (map == MAP_FAILED)
			die("mmap %s: %s", data, strerror(errno));
		status("MAPPED addr=%p ok=%d", (void *)map, map_ok(map));
		if (!map_ok(map))
			die("the mapping does not show the file's content");
	}
	if (!map_after && fcntl(fd, F_SETLEASE, want_write ? F_WRLCK : F_RDLCK))
		die("F_SETLEASE %s: %s", argv[2], strerror(errno));

	pid_t kids[MAX_BREAKERS];
	int nkids = 0;
	char pids[256] = "";
	char list[256];
	snprintf(list, sizeof(list), "%s", argv[4]);
	for (char *k = strtok(list, ","); k && strcmp(k, "-") != 0; k = strtok(NULL, ",")) {
		if (nkids == MAX_BREAKERS)
			die("too many breakers");
		int i = nkids + 1;
		pid_t p = fork();
		if (p < 0)
			die("fork: %s", strerror(errno));
		if (p == 0) {
			close(fd);
			breaker(i, k);
		}
		kids[nkids++] = p;
		snprintf(pids + strlen(pids), sizeof(pids) - strlen(pids), "%s%d", nkids > 1 ? "," : "", (int)p);
		/* wait until this breaker is in its place before starting the next one */
		char needle[64];
		double deadline = mono_now() + 10;
		for (;;) {
			if (k[0] == 'n') {
				snprintf(needle, sizeof(needle), "NBOPEN b%d ", i);
				if (status_has(needle))
					break;
			} else if (lease_is_breaker(p)) {
				break;
			}
			snprintf(needle, sizeof(needle), "OPENED b%d ", i);
			if (status_has(needle))
				die("breaker b%d (%s) was not blocked by the lease", i, k);
			if (mono_now() > deadline)
				die("breaker b%d (%s) not in place within 10 s", i, k);
			sleep_ms(2);
		}
	}

	/* The break signal: received (or, blocked, pending) before READY. */
	int reported = 0;
	if (nkids) {
		double deadline = mono_now() + 5;
		for (;;) {
			sigset_t pending;
			sigpending(&pending);
			if (block ? sigismember(&pending, sig) : lease_sig_count > 0)
				break;
			if (mono_now() > deadline)
				die("no lease signal %s within 5 s of the break", block ? "pending" : "received");
			sleep_ms(2);
		}
	}
	lease_report_signals("holder", &reported);
	status("READY holder pid=%d fd=%d sig=%d breakers=%s", (int)getpid(), fd, sig, nkids ? pids : "-");
	double last = mono_now();
	while (!go_requested()) {
		lease_report_signals("holder", &reported);
		sleep_ms(5);
		double now = mono_now();
		if (gaps && now - last > 0.3)
			status("GAP from=%.6f to=%.6f", last, now);
		last = now;
	}
	status("GO t=%.6f", mono_now());
	if (map) {
		int ok = map_ok(map);
		status("MAP ok=%d t=%.6f", ok, mono_now());
		CHECK(ok, "after .go the mapping does not show the file's content: %.12s", map);
	}
	if (block) {
		status("UNBLOCK t=%.6f", mono_now());
		sigprocmask(SIG_UNBLOCK, &set, NULL);
	}
	if (release) {
		double t = mono_now();
		int r = fcntl(fd, F_SETLEASE, F_UNLCK);
		status("RELEASE rc=%d t=%.6f", r, t);
		CHECK(r == 0, "F_SETLEASE F_UNLCK: %s", strerror(errno));
	}
	if (downgrade) {
		double t = mono_now();
		int r = fcntl(fd, F_SETLEASE, F_RDLCK);
		status("DOWNGRADE rc=%d t=%.6f", r, t);
		CHECK(r == 0, "F_SETLEASE F_RDLCK: %s", strerror(errno));
	}
	if (do_exit || do_exec) {
		lease_report_signals("holder", &reported);
		for (int i = 0; i < reported && i < LEASE_SIG_MAX; i++) {
			CHECK(lease_sigs[i].signo == sig, "signal %d is %d, not the lease signal %d", i + 1,
			      lease_sigs[i].signo, sig);
			CHECK(lease_sigs[i].fd == fd, "signal %d has si_fd %d, not the leased fd %d", i + 1,
			      lease_sigs[i].fd, fd);
		}
	}
	if (do_exit) {
		status("EXIT t=%.6f", mono_now());
		finish("holder exits sigs=%d", (int)lease_sig_count);
	}
	if (do_exec) {
		if (wl_fail_count)
			finish("holder"); /* FAIL, before the exec */
		char fdarg[16];
		snprintf(fdarg, sizeof(fdarg), "%d", fd);
		char *args[] = { argv[0], argv[1], "execd", fdarg, nkids ? pids : "-", argv[6], NULL };
		status("EXEC t=%.6f", mono_now());
		execv("/proc/self/exe", args);
		die("execv /proc/self/exe: %s", strerror(errno));
	}
	int fd_open = 1;
	if (do_close) {
		double t = mono_now();
		int r = close(fd);
		status("CLOSE rc=%d t=%.6f", r, t);
		CHECK(r == 0, "close(%d): %s", fd, strerror(errno));
		fd_open = 0;
	}
	char last_get[16] = "", last_info[64] = "";
	double end = mono_now() + watch;
	int all_opened = 0;
	while (mono_now() < end) {
		if (!all_opened) {
			all_opened = all_breakers_opened(nkids);
			if (all_opened && mono_now() + 1 < end)
				end = mono_now() + 1;
		}
		lease_report_signals("holder", &reported);
		if (fd_open) {
			const char *g = lease_get(fd);
			if (strcmp(g, last_get) != 0) {
				snprintf(last_get, sizeof(last_get), "%s", g);
				status("GETLEASE v=%s t=%.6f", g, mono_now());
			}
			char info[64];
			lease_fdinfo(fd, info, sizeof(info));
			if (strcmp(info, last_info) != 0) {
				snprintf(last_info, sizeof(last_info), "%s", info);
				status("FDINFO v=%s t=%.6f", info, mono_now());
			}
		}
		sleep_ms(5);
	}
	lease_report_signals("holder", &reported);
	for (int i = 0; i < reported && i < LEASE_SIG_MAX; i++) {
		CHECK(lease_sigs[i].signo == sig, "signal %d is %d, not the lease signal %d", i + 1, lease_sigs[i].signo,
		      sig);
		CHECK(lease_sigs[i].fd == fd, "signal %d has si_fd %d, not the leased fd %d", i + 1, lease_sigs[i].fd, fd);
	}
	status("DONE sigs=%d getlease=%s fdinfo=%s", (int)lease_sig_count, last_get, last_info);
	reap_breakers(kids, nkids);
	finish("holder sigs=%d", (int)lease_sig_count);
}
