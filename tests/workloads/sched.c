// LDFLAGS: -pthread
/*
 * sched: scheduler and audit state, per thread:
 *   main     SCHED_BATCH, nice 5, affinity {0};
 *   rt       SCHED_FIFO priority 7 with SCHED_RESET_ON_FORK, affinity {last CPU};
 *   idle     SCHED_IDLE, nice 3, affinity {every CPU};
 *   the process's audit login uid 4242 (written to /proc/self/loginuid; the test runs as root).
 * READY main=TID rt=TID idle=TID cpus=N
 * After <status>.go each thread checks its own policy, priority, reset-on-fork, nice and
 * affinity, and the process its login uid.
 */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>

struct want {
	int policy, priority, reset, nice;
	cpu_set_t cpus;
	volatile pid_t tid;
	volatile int checked;
	const char *name;
};

static struct want w_main, w_rt, w_idle;
static int ncpu;

static void apply(struct want *w)
{
	w->tid = (pid_t)syscall(SYS_gettid);
	if (sched_setaffinity(0, sizeof(w->cpus), &w->cpus))
		die("%s: sched_setaffinity: %s", w->name, strerror(errno));
	if (setpriority(PRIO_PROCESS, 0, w->nice))
		die("%s: setpriority: %s", w->name, strerror(errno));
	struct sched_param p = { .sched_priority = w->priority };
	if (sched_setscheduler(0, w->policy | (w->reset ? SCHED_RESET_ON_FORK : 0), &p))
		die("%s: sched_setscheduler: %s", w->name, strerror(errno));
}

static void verify(struct want *w)
{
	int raw = sched_getscheduler(0);
	struct sched_param p;
	sched_getparam(0, &p);
	CHECK((raw & ~SCHED_RESET_ON_FORK) == w->policy, "%s: policy %d, was %d", w->name, raw & ~SCHED_RESET_ON_FORK,
	      w->policy);
	CHECK(!!(raw & SCHED_RESET_ON_FORK) == w->reset, "%s: reset-on-fork %d, was %d", w->name,
	      !!(raw & SCHED_RESET_ON_FORK), w->reset);
	CHECK(p.sched_priority == w->priority, "%s: priority %d, was %d", w->name, p.sched_priority, w->priority);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	CHECK(nice == w->nice, "%s: nice %d, was %d", w->name, nice, w->nice);
	cpu_set_t now;
	sched_getaffinity(0, sizeof(now), &now);
	CHECK(CPU_EQUAL(&now, &w->cpus), "%s: affinity has %d CPUs (%s CPU 0), had %d", w->name, CPU_COUNT(&now),
	      CPU_ISSET(0, &now) ? "with" : "without", CPU_COUNT(&w->cpus));
}

static void *thread_main(void *arg)
{
	struct want *w = arg;
	apply(w);
	while (!go_requested())
		sleep_ms(10);
	verify(w);
	w->checked = 1;
	for (;;)
		sleep_ms(100);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
	w_main = (struct want){ .policy = SCHED_BATCH, .nice = 5, .name = "main" };
	CPU_SET(0, &w_main.cpus);
	w_rt = (struct want){ .policy = SCHED_FIFO, .priority = 7, .reset = 1, .name = "rt" };
	CPU_SET(ncpu - 1, &w_rt.cpus);
	w_idle = (struct want){ .policy = SCHED_IDLE, .nice = 3, .name = "idle" };
	for (int c = 0; c < ncpu; c++)
		CPU_SET(c, &w_idle.cpus);
	int fd = open("/proc/self/loginuid", O_WRONLY);
	if (fd < 0 || write(fd, "4242", 4) != 4)
		die("setting loginuid: %s", strerror(errno));
	close(fd);
	pthread_t a, b;
	pthread_create(&a, NULL, thread_main, &w_rt);
	pthread_create(&b, NULL, thread_main, &w_idle);
	apply(&w_main);
	while (!w_rt.tid || !w_idle.tid)
		sleep_ms(5);
	status("READY main=%d rt=%d idle=%d cpus=%d", w_main.tid, w_rt.tid, w_idle.tid, ncpu);
	while (!go_requested())
		sleep_ms(10);
	verify(&w_main);
	double until = mono_now() + 5;
	while ((!w_rt.checked || !w_idle.checked) && mono_now() < until)
		sleep_ms(10);
	CHECK(w_rt.checked && w_idle.checked, "the threads did not check themselves");
	char buf[32] = { 0 };
	fd = open("/proc/self/loginuid", O_RDONLY);
	CHECK(fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0, "reading loginuid: %s", strerror(errno));
	CHECK(strcmp(buf, "4242") == 0, "loginuid %s, was 4242", buf);
	finish("scheduling of 3 threads and loginuid kept");
}
