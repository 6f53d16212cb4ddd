/*
 * sleeper: blocked in a 4 s sleep when checkpointed.
 *   argv[2] = "rel" (default): nanosleep(&req, &rem)  (relative; the kernel answers the
 *             freeze with -ERESTART_RESTARTBLOCK)
 *   argv[2] = "clock": clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, deadline)
 * After the restore the sleep must complete normally: return 0 (not EINTR), and not
 * before the requested time (relative: >= 4 s after it started; absolute: not before
 * the deadline). Then the workload waits for <status>.go and reports.
 * Lines: READY mode=... ; SLEPT rc=.. errno=.. elapsed=..
 */
#include "common.h"

#define SLEEP_S 4

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int absolute = argc > 2 && strcmp(argv[2], "clock") == 0;

	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	int rc, err = 0;
	struct timespec deadline = start;
	deadline.tv_sec += SLEEP_S;
	status("READY mode=%s sleep=%d", absolute ? "clock_nanosleep-abs" : "nanosleep-rel", SLEEP_S);
	if (absolute) {
		rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
		err = rc;
	} else {
		struct timespec req = { SLEEP_S, 0 }, rem = { -1, -1 };
		rc = nanosleep(&req, &rem);
		if (rc)
			err = errno;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	double elapsed = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
	status("SLEPT rc=%d errno=%d elapsed=%.3f", rc, err, elapsed);

	CHECK(rc == 0, "sleep returned %d (%s), expected 0", rc, strerror(err));
	if (absolute)
		CHECK(end.tv_sec > deadline.tv_sec ||
			      (end.tv_sec == deadline.tv_sec && end.tv_nsec >= deadline.tv_nsec),
		      "clock_nanosleep(TIMER_ABSTIME) returned %.3f s before its deadline",
		      (deadline.tv_sec - end.tv_sec) + (deadline.tv_nsec - end.tv_nsec) / 1e9);
	else
		CHECK(elapsed >= SLEEP_S - 0.001, "nanosleep(%d s) returned after only %.3f s",
		      SLEEP_S, elapsed);

	while (!go_requested())
		sleep_ms(5);
	finish("slept rc=%d elapsed=%.3f", rc, elapsed);
}
