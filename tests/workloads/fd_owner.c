// LDFLAGS: -pthread
/*
 * fd_owner: descriptions with O_ASYNC and an I/O signal owner (F_SETOWN_EX, F_SETSIG).
 *
 * The parent leads its own process group and has a second thread T (blocked in a wait); it
 * forks a child (same group). Descriptions:
 *   A  a pipe's read end (fd 30):    O_ASYNC, owner the parent (F_OWNER_PID), SIGUSR1;
 *   S  a socketpair end (fd 31):     O_ASYNC, owner the process group (F_OWNER_PGRP), SIGUSR2,
 *                                    held by parent and child;
 *   U  a socketpair end (fd 32):     O_ASYNC, owner thread T (F_OWNER_TID), SIGRTMIN+1;
 *   F  a regular file (fd 33):       O_ASYNC asked (this kernel keeps none on a regular file),
 *                                    owner thread T, SIGRTMIN+2 (a file sends no
 *                                    signal: only the settings are checked);
 *   N  a pipe's read end (fd 34):    no O_ASYNC, owner the parent, no signal set.
 * The signals have SA_SIGINFO handlers recording signal, si_fd and the thread that ran it.
 *   STAGE child-ready pid=N
 *   READY parent pid=N child=N thread=T
 *
 * After <status>.go:
 *   parent: F_GETOWN_EX, F_GETSIG and O_ASYNC of every fd as set; writes into A's pipe:
 *           SIGUSR1 arrives with si_fd 30; writes into S's peer: SIGUSR2 arrives (si_fd 31),
 *           and in the child too (it says "STAGE child-usr2"); writes into U's peer:
 *           SIGRTMIN+1 arrives on thread T with si_fd 32; N's pipe sends nothing.
 */
#include "common.h"
#include <pthread.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static volatile sig_atomic_t got_sig[65], got_fd[65], got_tid[65];

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	got_fd[sig] = si->si_fd;
	got_tid[sig] = (int)syscall(SYS_gettid);
	got_sig[sig]++;
}

static pid_t thread_tid;
static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

static void setup(int fd, int type, pid_t id, int sig, int async)
{
	struct f_owner_ex o = { .type = type, .pid = id };
	if (fcntl(fd, F_SETOWN_EX, &o) < 0 || (sig && fcntl(fd, F_SETSIG, sig) < 0))
		die("fd %d: F_SETOWN_EX/F_SETSIG: %s", fd, strerror(errno));
	if (async && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) < 0)
		die("fd %d: O_ASYNC: %s", fd, strerror(errno));
}

static void check_settings(int fd, int type, pid_t id, int sig, int async)
{
	struct f_owner_ex o = { 0 };
	fcntl(fd, F_GETOWN_EX, &o);
	CHECK(o.type == type && o.pid == id, "fd %d: owner type %d id %d, expected %d %d", fd, o.type, o.pid, type, id);
	CHECK_EQ_U("F_GETSIG", sig, fcntl(fd, F_GETSIG));
	CHECK(!!(fcntl(fd, F_GETFL) & O_ASYNC) == async, "fd %d: O_ASYNC is %s", fd, async ? "off" : "on");
}

static void wait_signal(int sig, int fd, pid_t tid, const char *what)
{
	double deadline = mono_now() + 5;
	while (!got_sig[sig] && mono_now() < deadline)
		sleep_ms(5);
	CHECK(got_sig[sig] == 1, "%s: signal %d arrived %d times", what, sig, (int)got_sig[sig]);
	CHECK(got_fd[sig] == fd, "%s: si_fd %d, expected %d", what, (int)got_fd[sig], fd);
	CHECK(tid == 0 || got_tid[sig] == tid, "%s: ran on thread %d, expected %d", what, (int)got_tid[sig], tid);
}

static void move_fd(int from, int to)
{
	if (dup2(from, to) < 0)
		die("dup2: %s", strerror(errno));
	close(from);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (setpgid(0, 0) < 0)
		die("setpgid: %s", strerror(errno));
	struct sigaction sa = { .sa_sigaction = on_signal, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigemptyset(&sa.sa_mask);
	int sigs[] = { SIGUSR1, SIGUSR2, SIGRTMIN + 1, SIGRTMIN + 2 };
	for (int i = 0; i < 4; i++)
		sigaction(sigs[i], &sa, NULL);
	pthread_t t;
	pthread_create(&t, NULL, thread_main, NULL);
	while (!thread_tid)
		sleep_ms(1);
	/* Only thread T takes SIGRTMIN+1 (a thread-directed signal would reach it anyway). */
	int a[2], s[2], u[2], n[2];
	if (pipe(a) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, s) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, u) < 0 ||
	    pipe(n) < 0)
		die("setup: %s", strerror(errno));
	move_fd(a[0], 30);
	move_fd(s[1], 31);
	move_fd(u[1], 32);
	char path[4200];
	snprintf(path, sizeof(path), "%s.file", wl_status);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	move_fd(f, 33);
	move_fd(n[0], 34);
	pid_t me = getpid();
	setup(30, F_OWNER_PID, me, SIGUSR1, 1);
	setup(31, F_OWNER_PGRP, me, SIGUSR2, 1);
	setup(32, F_OWNER_TID, thread_tid, SIGRTMIN + 1, 1);
	setup(33, F_OWNER_TID, thread_tid, SIGRTMIN + 2, 1);
	setup(34, F_OWNER_PID, me, 0, 0);

	pid_t child = fork();
	if (child == 0) {
		status("STAGE child-ready pid=%d", (int)getpid());
		while (!go_requested())
			sleep_ms(10);
		double deadline = mono_now() + 10;
		while (!got_sig[SIGUSR2] && mono_now() < deadline)
			sleep_ms(5);
		CHECK(got_sig[SIGUSR2] == 1 && got_fd[SIGUSR2] == 31, "child: SIGUSR2 %d times, si_fd %d", (int)got_sig[SIGUSR2],
		      (int)got_fd[SIGUSR2]);
		status("STAGE child-usr2 %s", wl_fail_count ? "FAIL" : "ok");
		_exit(wl_fail_count ? 1 : 0);
	}
	double deadline = mono_now() + 10;
	char buf[65536];
	while (read_file(wl_status, buf, sizeof(buf)) < 0 || !strstr(buf, "STAGE child-ready")) {
		if (mono_now() > deadline)
			die("the child never got ready");
		sleep_ms(5);
	}
	status("READY parent pid=%d child=%d thread=%d", (int)me, (int)child, (int)thread_tid);
	while (!go_requested())
		sleep_ms(10);

	check_settings(30, F_OWNER_PID, me, SIGUSR1, 1);
	check_settings(31, F_OWNER_PGRP, me, SIGUSR2, 1);
	check_settings(32, F_OWNER_TID, thread_tid, SIGRTMIN + 1, 1);
	/* This kernel keeps no O_ASYNC on a file without fasync support (a regular file). */
	check_settings(33, F_OWNER_TID, thread_tid, SIGRTMIN + 2, 0);
	check_settings(34, F_OWNER_PID, me, 0, 0);
	if (write(a[1], "x", 1) != 1 || write(s[0], "x", 1) != 1 || write(u[0], "x", 1) != 1 || write(n[1], "x", 1) != 1)
		die("write: %s", strerror(errno));
	wait_signal(SIGUSR1, 30, 0, "A (owner pid)");
	wait_signal(SIGUSR2, 31, 0, "S (owner process group)");
	wait_signal(SIGRTMIN + 1, 32, thread_tid, "U (owner thread)");
	CHECK(got_sig[SIGIO] == 0, "N sent SIGIO");
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed: status 0x%x", st);
	finish("fd owners");
}
