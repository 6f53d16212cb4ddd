// LDFLAGS: -pthread
/*
 * threaded: a process with a second thread (both just sleep). The first milestone's
 * dumper must refuse it, naming the extra thread; the test then checks that the
 * process is still running and not left stopped.
 * READY tid=<the second thread's tid>
 */
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>

static volatile pid_t worker_tid;

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		sleep_ms(50);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL))
		die("pthread_create");
	while (!worker_tid)
		sleep_ms(1);
	status("READY tid=%d", worker_tid);
	while (!go_requested())
		sleep_ms(5);
	finish("still running with 2 threads");
}
