// LDFLAGS: -pthread
/*
 * seccomp: a process under three stacked seccomp filters, shared by its two threads (TSYNC):
 *   filter 1 (TSYNC): getppid fails with errno 77;
 *   filter 2 (TSYNC | LOG): getpgid fails with errno 78;
 *   filter 3 (TSYNC): getitimer kills the process (crust calls it in a process it dumps);
 * everything else is allowed (crust's own calls in it would be too, but crust must not rely
 * on that: it suspends the filters while it works). no_new_privs is set first.
 * READY worker=TID
 * With argv[2] "strict": strict mode instead (READY, then only a read that blocks for ever).
 * After <status>.go, in both threads: Seccomp 2 with 3 filters in /proc status; getppid
 * fails with 77 and getpgid with 78; getpid works; then the worker installs a third filter
 * with TSYNC (getsid -> errno 79), which works only if both threads still share the chain,
 * and the main thread sees it.
 */
#include "common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static volatile pid_t worker_tid;
static volatile int worker_done, worker_ok, main_checked;
static char worker_fail[512];

/* err < 0: the call kills the whole process */
static int install(int nr, int err, unsigned int flags)
{
	struct sock_filter prog[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, err < 0 ? SECCOMP_RET_KILL_PROCESS : SECCOMP_RET_ERRNO | (unsigned int)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog fprog = { .len = 4, .filter = prog };
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog);
}

static int errno_of(long nr, long arg)
{
	errno = 0;
	long r = syscall(nr, arg);
	return r == -1 ? errno : 0;
}

static int check_thread(const char *who, char *why, size_t n)
{
	char mode[16], count[16];
	thread_status_field("Seccomp", mode, sizeof(mode));
	thread_status_field("Seccomp_filters", count, sizeof(count));
	int a = errno_of(SYS_getppid, 0), b = errno_of(SYS_getpgid, 0), c = errno_of(SYS_getpid, 0);
	if (strcmp(mode, "2") || strcmp(count, "3") || a != 77 || b != 78 || c != 0) {
		snprintf(why, n, "%s: Seccomp %s filters %s, getppid errno %d, getpgid errno %d, getpid errno %d", who,
			 mode, count, a, b, c);
		return 0;
	}
	return 1;
}

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	while (!main_checked)
		sleep_ms(10);
	worker_ok = check_thread("worker", worker_fail, sizeof(worker_fail));
	if (worker_ok && install(SYS_getsid, 79, SECCOMP_FILTER_FLAG_TSYNC) != 0) {
		snprintf(worker_fail, sizeof(worker_fail), "worker: a new TSYNC filter failed (%d): threads no longer share their filters", errno);
		worker_ok = 0;
	}
	worker_done = 1;
	for (;;)
		sleep_ms(100);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc > 2 && strcmp(argv[2], "strict") == 0) {
		int p[2];
		if (pipe(p))
			die("pipe: %s", strerror(errno));
		status("READY strict");
		char c;
		prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0);
		for (;;)
			syscall(SYS_read, p[0], &c, 1);
	}
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	while (!worker_tid)
		sleep_ms(1);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		die("no_new_privs: %s", strerror(errno));
	if (install(SYS_getppid, 77, SECCOMP_FILTER_FLAG_TSYNC) != 0)
		die("filter 1: %s", strerror(errno));
	if (install(SYS_getpgid, 78, SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG) != 0)
		die("filter 2: %s", strerror(errno));
	/* A call crust itself makes in a process it dumps (it reads the interval timers), which
	 * this program never makes: were the filters not suspended while crust works, the dump
	 * would kill it. */
	if (install(SYS_getitimer, -1, SECCOMP_FILTER_FLAG_TSYNC) != 0)
		die("filter 3: %s", strerror(errno));
	status("READY worker=%d", worker_tid);
	while (!go_requested())
		sleep_ms(10);
	char why[512];
	if (!check_thread("main", why, sizeof(why)))
		check_failed("%s", why);
	main_checked = 1;
	double until = mono_now() + 5;
	while (!worker_done && mono_now() < until)
		sleep_ms(10);
	CHECK(worker_done && worker_ok, "%s", worker_done ? worker_fail : "the worker did not check");
	CHECK(errno_of(SYS_getsid, 0) == 79, "the worker's new TSYNC filter does not reach the main thread");
	finish("three shared seccomp filters kept, and a TSYNC filter added after restore");
}
