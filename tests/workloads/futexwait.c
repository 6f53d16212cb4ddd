/*
 * futexwait: blocked in futex(FUTEX_WAIT) on a word of its own memory when checkpointed.
 * Single-threaded, and nothing else shares the word.
 *
 *   argv[2] = "alarm" (default): FUTEX_WAIT without a timeout (the kernel answers the freeze
 *     with -ERESTARTSYS). ITIMER_REAL (3 s, one shot, armed before READY) fires SIGALRM whose
 *     SA_RESTART handler sets the word to 1 and calls FUTEX_WAKE. The wait is restarted after
 *     the handler, sees the changed word and returns -1/EAGAIN (0 if it was woken, also fine).
 *     Checked: exactly one futex call (never EINTR: SA_RESTART), the handler ran exactly
 *     once, not before the timer allowed, the word is 1, and the timer is disarmed.
 *     Lines: READY futex_addr=.. itimer_remaining=.. ; WOKE calls=.. rc=.. errno=.. ...
 *
 *   argv[2] = "timeout": FUTEX_WAIT with a relative timeout, recomputed from an absolute
 *     CLOCK_MONOTONIC deadline 4 s after the start at every call (as glibc does); EINTR and
 *     EAGAIN make it wait again for what is left. The kernel answers the freeze with
 *     -ERESTART_RESTARTBLOCK; after the restore the call goes on for the time it had left.
 *     Nobody ever wakes the word, so no call may return 0, and the wait must end with
 *     ETIMEDOUT, not before the deadline. Every call is reported (the test checks that the
 *     one interrupted by the checkpoint is the only one).
 *     Lines: READY futex_addr=.. timeout=.. ; CALL n=.. rc=.. errno=.. t=.. (one per call) ;
 *            WAITED calls=.. results=rc/errno,... elapsed=..
 */
#include "common.h"
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define TIMEOUT_S 4

/* 8-byte aligned so the test can read it as a u64 from /proc/PID/mem (high half stays 0) */
static volatile uint32_t futex_word[2] __attribute__((aligned(8)));
static volatile sig_atomic_t alarms;
static volatile long wake_rc = -99;

static long futex(volatile uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts)
{
	return syscall(SYS_futex, uaddr, op, val, ts, NULL, 0);
}

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
	futex_word[0] = 1;
	wake_rc = futex(&futex_word[0], FUTEX_WAKE, 1, NULL);
}

static int alarm_mode(void)
{
	double t0;
	double rem_ready = arm_oneshot_alarm(on_alarm, 3, &t0);
	status("READY mode=alarm futex_addr=%p itimer_remaining=%.3f", (void *)&futex_word[0], rem_ready);

	int calls = 0, eintr = 0;
	long rc = 0, first_rc = 0;
	int err = 0, first_err = 0;
	while (futex_word[0] == 0 && calls < 1000) {
		calls++;
		rc = futex(&futex_word[0], FUTEX_WAIT, 0, NULL);
		err = rc < 0 ? errno : 0;
		if (calls == 1) {
			first_rc = rc;
			first_err = err;
		}
		if (rc < 0 && err == EINTR)
			eintr++;
	}
	double elapsed = mono_now() - t0;
	status("WOKE calls=%d rc=%ld errno=%d eintr=%d alarms=%d word=%u wake_rc=%ld elapsed=%.3f", calls,
	       first_rc, first_err, eintr, (int)alarms, futex_word[0], wake_rc, elapsed);

	CHECK(calls == 1, "the futex wait loop made %d calls, expected 1 (the interrupted wait must be "
			  "restarted by the kernel and then see the changed word)", calls);
	CHECK(eintr == 0, "futex(FUTEX_WAIT) returned EINTR %d times under an SA_RESTART handler", eintr);
	CHECK(first_rc == 0 || (first_rc == -1 && first_err == EAGAIN),
	      "futex(FUTEX_WAIT) returned %ld (%s), expected -1/EAGAIN (word changed) or 0 (woken)",
	      first_rc, first_rc < 0 ? strerror(first_err) : "ok");
	CHECK_EQ_U("SIGALRM handler runs", 1, alarms);
	CHECK_EQ_U("futex word", 1, futex_word[0]);
	CHECK(wake_rc == 0, "FUTEX_WAKE in the handler returned %ld, expected 0 (no other waiter)",
	      wake_rc);
	CHECK(elapsed >= rem_ready - 0.01, "SIGALRM came %.3f s after arming, before its %.3f s",
	      elapsed, rem_ready);
	check_alarm_disarmed();

	while (!go_requested())
		sleep_ms(5);
	CHECK_EQ_U("SIGALRM handler runs (at .go)", 1, alarms);
	finish("futex wait ended after %d call (rc=%ld errno=%d) by the SIGALRM handler after %.3f s",
	       calls, first_rc, first_err, elapsed);
}

static int timeout_mode(void)
{
	struct timespec start, deadline;
	clock_gettime(CLOCK_MONOTONIC, &start);
	deadline = start;
	deadline.tv_sec += TIMEOUT_S;
	status("READY mode=timeout futex_addr=%p timeout=%d", (void *)&futex_word[0], TIMEOUT_S);

	char results[2048] = "";
	size_t rlen = 0;
	int calls = 0, zeros = 0, timed_out = 0, other = 0;
	while (calls < 100) {
		struct timespec now, rel;
		clock_gettime(CLOCK_MONOTONIC, &now);
		rel.tv_sec = deadline.tv_sec - now.tv_sec;
		rel.tv_nsec = deadline.tv_nsec - now.tv_nsec;
		if (rel.tv_nsec < 0) {
			rel.tv_nsec += 1000000000L;
			rel.tv_sec--;
		}
		if (rel.tv_sec < 0) {
			/* our own clock says the deadline passed: the timeout logic ends it */
			timed_out = 1;
			break;
		}
		calls++;
		long rc = futex(&futex_word[0], FUTEX_WAIT, 0, &rel);
		int err = rc < 0 ? errno : 0;
		double t = mono_now() - (start.tv_sec + start.tv_nsec / 1e9);
		status("CALL n=%d rc=%ld errno=%d t=%.3f", calls, rc, err, t);
		int n = snprintf(results + rlen, sizeof(results) - rlen, "%s%ld/%d", rlen ? "," : "", rc, err);
		if (n > 0 && (size_t)n < sizeof(results) - rlen)
			rlen += (size_t)n;
		if (rc == 0) {
			zeros++; /* spurious: nobody wakes this word; the word is still 0, wait again */
			continue;
		}
		if (err == ETIMEDOUT) {
			timed_out = 1;
			break;
		}
		if (err == EINTR || err == EAGAIN)
			continue;
		other++;
		break;
	}
	struct timespec end;
	clock_gettime(CLOCK_MONOTONIC, &end);
	double elapsed = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
	status("WAITED calls=%d results=%s elapsed=%.3f", calls, results, elapsed);

	CHECK(zeros == 0, "futex(FUTEX_WAIT) returned 0 (woken) %d times, but nobody wakes the word "
			  "(results %s)", zeros, results);
	CHECK(other == 0, "futex(FUTEX_WAIT) failed with an unexpected error (results %s)", results);
	CHECK(timed_out, "the wait did not end by its timeout (results %s)", results);
	CHECK(end.tv_sec > deadline.tv_sec ||
		      (end.tv_sec == deadline.tv_sec && end.tv_nsec >= deadline.tv_nsec),
	      "the %d s wait ended %.3f s before its deadline (results %s)", TIMEOUT_S,
	      (deadline.tv_sec - end.tv_sec) + (deadline.tv_nsec - end.tv_nsec) / 1e9, results);
	CHECK_EQ_U("futex word", 0, futex_word[0]);

	while (!go_requested())
		sleep_ms(5);
	finish("futex wait with a %d s timeout ended after %.3f s; calls: %s", TIMEOUT_S, elapsed,
	       results);
}

/* FUTEX_WAIT_BITSET with an absolute CLOCK_MONOTONIC deadline (what glibc's timed waits use):
 * interrupted by the checkpoint (-ERESTART_RESTARTBLOCK), the call goes on after restore with
 * the same deadline, so exactly one call returns, -1/ETIMEDOUT, not before the deadline. */
static int absolute_mode(void)
{
	struct timespec start, deadline;
	clock_gettime(CLOCK_MONOTONIC, &start);
	deadline = start;
	deadline.tv_sec += TIMEOUT_S;
	status("READY mode=absolute futex_addr=%p timeout=%d", (void *)&futex_word[0], TIMEOUT_S);
	long rc = syscall(SYS_futex, &futex_word[0], FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, 0, &deadline, NULL,
			  FUTEX_BITSET_MATCH_ANY);
	int err = rc < 0 ? errno : 0;
	double t = mono_now() - (start.tv_sec + start.tv_nsec / 1e9);
	status("CALL n=1 rc=%ld errno=%d t=%.3f", rc, err, t);
	CHECK(rc == -1 && err == ETIMEDOUT, "the absolute futex wait returned %ld (%s), expected -1/ETIMEDOUT", rc,
	      rc < 0 ? strerror(err) : "ok");
	CHECK(t >= TIMEOUT_S - 0.001, "the absolute futex wait ended after %.3f s, before its %d s deadline", t, TIMEOUT_S);
	while (!go_requested())
		sleep_ms(5);
	finish("one absolute futex wait, ended by its deadline after %.3f s", t);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc > 2 && strcmp(argv[2], "timeout") == 0)
		return timeout_mode();
	if (argc > 2 && strcmp(argv[2], "absolute") == 0)
		return absolute_mode();
	if (argc > 2 && strcmp(argv[2], "alarm") != 0)
		die("unknown mode %s", argv[2]);
	return alarm_mode();
}
