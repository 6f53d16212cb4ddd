/*
 * tree_forkloop: a parent forking short-lived children in a tight loop, so that a
 * freeze races fork, exit and reaping.
 *
 * Iteration i forks a child that exits at once with code i % 200; the parent reaps that
 * pid (blocking waitpid) and checks its exit code. `counter` is the number of completed
 * iterations.
 *
 *   READY pid=N counter=0x...          (after 200 iterations)
 *
 * After <status>.go (polled every 64 iterations): PASS if every waitpid returned the
 * forked pid with the expected exit code and the pid is unchanged.
 */
#include "common.h"
#include <sys/wait.h>

static volatile uint64_t counter;

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t me = getpid();
	uint64_t i = 0, eagain = 0;
	for (;;) {
		if ((i & 63) == 0 && go_requested())
			break;
		pid_t p = fork();
		if (p < 0) {
			if (errno == EAGAIN) {
				eagain++;
				sleep_ms(1);
				continue;
			}
			die("fork at iteration %llu: %s", (unsigned long long)i, strerror(errno));
		}
		if (p == 0)
			_exit((int)(i % 200));
		int st = 0;
		pid_t r;
		do
			r = waitpid(p, &st, 0);
		while (r < 0 && errno == EINTR);
		if (r != p)
			check_failed("iteration %llu: waitpid(%d) returned %d (%s)", (unsigned long long)i, p, r,
				     r < 0 ? strerror(errno) : "another pid");
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != (int)(i % 200))
			check_failed("iteration %llu: child %d ended with wait status 0x%x, expected exit code %d",
				     (unsigned long long)i, p, st, (int)(i % 200));
		if (wl_fail_count > 5)
			break;
		counter = ++i;
		if (i == 200)
			status("READY pid=%d counter=%p", me, (void *)&counter);
	}
	CHECK(getpid() == me, "pid %d, was %d", getpid(), me);
	finish("iterations=%llu eagain=%llu", (unsigned long long)i, (unsigned long long)eagain);
}
