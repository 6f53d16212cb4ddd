/*
 * exitsig: children made with clone() exit signals other than SIGCHLD:
 *   A: exit signal SIGUSR1, alive; exits 7 once <status>.go exists;
 *   B: exit signal SIGUSR2, a zombie (exited 9; SIGUSR2 is blocked in the parent, so its
 *      exit signal is pending);
 *   C: exit signal 0 (none), a zombie (exited 3).
 * READY a=PID b=PID c=PID
 * After <status>.go the parent checks: the exit_signal of each child in /proc/PID/stat (10,
 * 12, 0); exactly SIGUSR2 pending (B's), none of SIGUSR1; reaps B (status 9) and C (3) with
 * __WALL; then A exits and its SIGUSR1 arrives with si_pid A and si_status 7, and A is reaped.
 */
#include "common.h"
#include <sys/syscall.h>
#include <sys/wait.h>

static pid_t spawn(int exit_signal, int code, int wait_go)
{
	pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)exit_signal, 0UL, 0UL, 0UL, 0UL);
	if (pid < 0)
		die("clone: %s", strerror(errno));
	if (pid == 0) {
		while (wait_go && !go_requested())
			sleep_ms(10);
		_exit(code);
	}
	return pid;
}

static int stat_exit_signal(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -100;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -100;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	/* after ") ": state is field 3; exit_signal is field 38 */
	int field = 2;
	for (p = p + 1; *p && field < 38; p++)
		if (*p == ' ')
			field++;
	return atoi(p);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigprocmask(SIG_BLOCK, &block, NULL);
	pid_t a = spawn(SIGUSR1, 7, 1);
	pid_t b = spawn(SIGUSR2, 9, 0);
	pid_t c = spawn(0, 3, 0);
	/* wait until B and C are zombies */
	for (int i = 0; i < 500; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/stat", b);
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, b, &si, WEXITED | WNOWAIT | WNOHANG | __WALL) == 0 && si.si_pid == b &&
		    waitid(P_PID, c, &si, WEXITED | WNOWAIT | WNOHANG | __WALL) == 0 && si.si_pid == c)
			break;
		sleep_ms(10);
	}
	status("READY a=%d b=%d c=%d", a, b, c);
	while (!go_requested())
		sleep_ms(10);

	CHECK_EQ_U("exit_signal of A", SIGUSR1, stat_exit_signal(a));
	CHECK_EQ_U("exit_signal of B", SIGUSR2, stat_exit_signal(b));
	CHECK_EQ_U("exit_signal of C", 0, stat_exit_signal(c));
	sigset_t pend;
	sigpending(&pend);
	CHECK(sigismember(&pend, SIGUSR2), "B's SIGUSR2 is not pending");
	int st = 0;
	CHECK(waitpid(b, &st, __WALL) == b && WIFEXITED(st) && WEXITSTATUS(st) == 9, "B: status %#x", st);
	CHECK(waitpid(c, &st, __WALL) == c && WIFEXITED(st) && WEXITSTATUS(st) == 3, "C: status %#x", st);
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	struct timespec ts = { 5, 0 };
	int got = sigtimedwait(&usr1, &si, &ts);
	CHECK(got == SIGUSR1 && si.si_pid == a && si.si_status == 7, "A's exit: signal %d from %d status %d", got,
	      si.si_pid, si.si_status);
	CHECK(waitpid(a, &st, __WALL) == a && WIFEXITED(st) && WEXITSTATUS(st) == 7, "A: status %#x", st);
	finish("exit signals SIGUSR1, SIGUSR2 and none kept");
}
