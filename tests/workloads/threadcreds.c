// LDFLAGS: -pthread
/*
 * threadcreds: a thread that changed its own ids with raw system calls (glibc's setresuid
 * would change every thread's): the worker is 65534:65534 with no capabilities, the main
 * thread stays root. READY worker=TID
 * After <status>.go each thread checks its own ids (raw getresuid/getresgid) and effective
 * capabilities (its /proc task status): the worker must not come back as root.
 */
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>

static volatile pid_t worker_tid;
static volatile int worker_done;
static char worker_fail[512];

static void ids(unsigned *r, unsigned *e, unsigned *s, unsigned *gr, unsigned *ge, unsigned *gs)
{
	syscall(SYS_getresuid, r, e, s);
	syscall(SYS_getresgid, gr, ge, gs);
}

static void *worker(void *arg)
{
	(void)arg;
	if (syscall(SYS_setresgid, 65534, 65534, 65534) || syscall(SYS_setresuid, 65534, 65534, 65534))
		die("worker setres*id: %s", strerror(errno));
	worker_tid = (pid_t)syscall(SYS_gettid);
	while (!go_requested())
		sleep_ms(10);
	unsigned r, e, s, gr, ge, gs;
	ids(&r, &e, &s, &gr, &ge, &gs);
	char caps[64];
	thread_status_field("CapEff", caps, sizeof(caps));
	if (r != 65534 || e != 65534 || s != 65534 || gr != 65534 || ge != 65534 || gs != 65534 ||
	    strcmp(caps, "0000000000000000"))
		snprintf(worker_fail, sizeof(worker_fail), "worker: uids %u/%u/%u gids %u/%u/%u CapEff %s", r, e, s, gr, ge,
			 gs, caps);
	worker_done = 1;
	for (;;)
		sleep_ms(100);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	while (!worker_tid)
		sleep_ms(1);
	status("READY worker=%d", worker_tid);
	while (!go_requested())
		sleep_ms(10);
	unsigned r, e, s, gr, ge, gs;
	ids(&r, &e, &s, &gr, &ge, &gs);
	CHECK(r == 0 && e == 0 && s == 0 && gr == 0 && ge == 0 && gs == 0, "main: uids %u/%u/%u gids %u/%u/%u", r, e, s, gr,
	      ge, gs);
	double until = mono_now() + 5;
	while (!worker_done && mono_now() < until)
		sleep_ms(10);
	CHECK(worker_done && !worker_fail[0], "%s", worker_done ? worker_fail : "the worker did not check");
	finish("a thread's own credentials kept (65534 beside a root main thread)");
}
