/*
 * lease_active: leases that are not being broken when checkpointed.
 *
 * argv: STATUS MODE
 *   MODE all:    the parent holds
 *                  STATUS.a  a READ lease on an O_RDONLY description, F_SETSIG SIGRTMIN+1
 *                  STATUS.b  a WRITE lease on an O_RDONLY description, F_SETSIG SIGRTMIN+3
 *                  STATUS.c  a WRITE lease on an O_RDWR description, F_SETSIG SIGUSR1
 *                  STATUS.d  a WRITE lease on an O_RDONLY description, F_SETSIG SIGRTMIN+2,
 *                            shared with a forked child that is the signal owner (F_SETOWN)
 *   MODE single: the parent holds only STATUS.b as above (no child); the test may break it
 *                from outside before the dump.
 *
 * Lines: "READY child pid=P" (all), then
 *        "READY parent pid=P a=FD b=FD c=FD d=FD child=P" (fds -1 when not held).
 * After .go each process checks its leases from inside: F_GETLEASE (the type), F_GETSIG,
 * F_GETOWN ("STATE X lease=T sig=S owner=P"), then writes "CHECKED ROLE sigs=N" (N: lease
 * signals received so far, before and after the checkpoint) and waits for one more lease
 * signal per lease it is the owner of (the test breaks them with conflicting opens from
 * outside, one at a time). For each: "SIGNAL ROLE n=N signo=S si_fd=F code=C t=T" (the fd
 * must be the leased file's fd and the signal its F_SETSIG), 200 ms later
 * "RELEASE ROLE fd=F t=T" and F_SETLEASE F_UNLCK on that fd. Then PASS ROLE / FAIL ROLE.
 * The parent also checks afterwards that every lease of its fds is gone (d: released by the
 * child through its own fd of the shared description), and reaps the child.
 */
#include "lease_common.h"
#include <sys/wait.h>

static const char *role = "parent";

struct held {
	char name;
	int fd, type, sig, owner; /* owner: the pid F_GETOWN must return */
	int mine;                  /* this process is the signal owner */
};

static int open_data(char name, int flags)
{
	char p[4400];
	snprintf(p, sizeof(p), "%s.%c", wl_status, name);
	int c = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c < 0 || write(c, "leased\n", 7) != 7)
		die("creating %s: %s", p, strerror(errno));
	close(c);
	int fd = open(p, flags | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", p, strerror(errno));
	return fd;
}

static void take(struct held *h, char name, int flags, int type, int sig)
{
	h->name = name;
	h->fd = open_data(name, flags);
	h->type = type;
	h->sig = sig;
	h->owner = getpid();
	h->mine = 1;
	lease_catch(sig);
	if (fcntl(h->fd, F_SETSIG, sig))
		die("F_SETSIG %c: %s", name, strerror(errno));
	if (fcntl(h->fd, F_SETLEASE, type))
		die("F_SETLEASE %c: %s", name, strerror(errno));
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

/* After .go: check the leases, then answer one break per lease this process owns. */
static void check_and_serve(struct held *h, int n)
{
	int expect = 0;
	for (int i = 0; i < n; i++) {
		int t = fcntl(h[i].fd, F_GETLEASE);
		int s = fcntl(h[i].fd, F_GETSIG);
		int o = fcntl(h[i].fd, F_GETOWN);
		status("STATE %c lease=%s sig=%d owner=%d", h[i].name, lease_type_name(t), s, o);
		CHECK(t == h[i].type, "%s: %c: F_GETLEASE %s, expected %s", role, h[i].name, lease_type_name(t),
		      lease_type_name(h[i].type));
		CHECK(s == h[i].sig, "%s: %c: F_GETSIG %d, expected %d", role, h[i].name, s, h[i].sig);
		CHECK(o == h[i].owner, "%s: %c: F_GETOWN %d, expected %d", role, h[i].name, o, h[i].owner);
		expect += h[i].mine;
	}
	int before = lease_sig_count;
	int reported = before; /* signals before .go were reported already */
	int handled = before;
	status("CHECKED %s sigs=%d", role, before);
	double deadline = mono_now() + 40;
	while (handled < before + expect) {
		if (mono_now() > deadline) {
			check_failed("%s: only %d of %d lease signals within 40 s", role, handled - before, expect);
			break;
		}
		lease_report_signals(role, &reported);
		if (handled == reported) {
			sleep_ms(2);
			continue;
		}
		struct lease_sig s = lease_sigs[handled++];
		struct held *which = NULL;
		for (int i = 0; i < n; i++)
			if (h[i].fd == s.fd && h[i].mine)
				which = &h[i];
		if (!which) {
			check_failed("%s: a lease signal %d with si_fd %d, not one of my leased fds", role, s.signo, s.fd);
			continue;
		}
		CHECK(s.signo == which->sig, "%s: %c: signal %d, expected its F_SETSIG %d", role, which->name, s.signo,
		      which->sig);
		sleep_ms(200);
		status("RELEASE %s fd=%d t=%.6f", role, which->fd, mono_now());
		if (fcntl(which->fd, F_SETLEASE, F_UNLCK))
			check_failed("%s: %c: F_SETLEASE F_UNLCK: %s", role, which->name, strerror(errno));
	}
	lease_report_signals(role, &reported);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 3)
		die("usage: lease_active STATUS all|single");
	int all = strcmp(argv[2], "all") == 0;
	struct held h[4];
	int n = 0;
	memset(h, 0, sizeof(h));
	int fa = -1, fb, fc = -1, fd_d = -1;
	if (all) {
		take(&h[n++], 'a', O_RDONLY, F_RDLCK, SIGRTMIN + 1);
		fa = h[0].fd;
	}
	take(&h[n++], 'b', O_RDONLY, F_WRLCK, SIGRTMIN + 3);
	fb = h[n - 1].fd;
	pid_t child = -1;
	if (all) {
		take(&h[n++], 'c', O_RDWR, F_WRLCK, SIGUSR1);
		fc = h[n - 1].fd;
		take(&h[n++], 'd', O_RDONLY, F_WRLCK, SIGRTMIN + 2);
		fd_d = h[n - 1].fd;
		child = fork();
		if (child < 0)
			die("fork: %s", strerror(errno));
		if (child == 0) {
			role = "child";
			/* the child keeps only d (shared with the parent), and is its signal owner */
			close(fa);
			close(fb);
			close(fc);
			struct held mine = h[3];
			mine.owner = getpid();
			status("READY child pid=%d", (int)getpid());
			while (!go_requested())
				sleep_ms(5);
			check_and_serve(&mine, 1);
			role_finish();
		}
		if (fcntl(fd_d, F_SETOWN, child))
			die("F_SETOWN d: %s", strerror(errno));
		h[3].owner = child;
		h[3].mine = 0;
		char needle[64];
		snprintf(needle, sizeof(needle), "READY child pid=%d", (int)child);
		static char buf[65536];
		double deadline = mono_now() + 10;
		while (read_file(wl_status, buf, sizeof(buf)) < 0 || !strstr(buf, needle)) {
			if (mono_now() > deadline)
				die("child not READY");
			sleep_ms(5);
		}
	}
	status("READY parent pid=%d a=%d b=%d c=%d d=%d child=%d", (int)getpid(), fa, fb, fc, fd_d, (int)child);
	int reported = 0;
	while (!go_requested()) {
		lease_report_signals(role, &reported);
		sleep_ms(5);
	}
	lease_report_signals(role, &reported);
	check_and_serve(h, n);
	if (all) {
		int st = 0;
		double deadline = mono_now() + 45;
		pid_t r;
		while ((r = waitpid(child, &st, WNOHANG)) == 0 && mono_now() < deadline)
			sleep_ms(5);
		if (r != child) {
			check_failed("parent: child %d did not end", (int)child);
			kill(child, SIGKILL);
		} else {
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with 0x%x", st);
		}
	}
	for (int i = 0; i < n; i++) {
		int t = fcntl(h[i].fd, F_GETLEASE);
		CHECK(t == F_UNLCK, "parent: %c: F_GETLEASE %s after the release", h[i].name, lease_type_name(t));
	}
	role_finish();
}
