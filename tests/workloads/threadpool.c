// LDFLAGS: -pthread
/*
 * threadpool: a pthread pool, every thread with state of its own.
 *
 *   main      loops (sleep 10 ms) until <status>.go
 *   worker0..3  blocked in pthread_cond_wait on one shared condition variable
 *   joiner    blocked in pthread_join(worker0)
 *
 * Each thread has its own TLS values (a tag, a name string and a 64-word pattern), its
 * own blocked mask (pthread_sigmask: SIGRTMIN+k for thread k, plus SIGUSR2 for worker2
 * and SIGUSR1 for main), its own alternate signal stack (own buffer, own size) and its
 * own name (pthread_setname_np). SIGUSR2 is sent to worker2 alone with pthread_kill while
 * it blocks it: a thread-directed signal, pending in worker2 only.
 *
 *   READY main=TID w0=TID w1=TID w2=TID w3=TID joiner=TID pending_tid=TID pending_sig=12
 *
 * After <status>.go:
 *   main:    checks its own state, then queues ITEMS items (item i is for worker i % 4)
 *            and broadcasts the condition variable.
 *   workers: each wakes, checks its own state (worker2: SIGUSR2 still pending in it, per
 *            sigpending and the SigPnd line of /proc/self/task/TID/status, not
 *            process-wide; unblocking it runs the SA_ONSTACK handler exactly once, in
 *            worker2, on worker2's alternate stack), then processes its items: result[i] =
 *            i * i + 1, a shared sum and count under the mutex, each item exactly once.
 *   main:    waits for all items (pthread_cond_timedwait on a second condition), sets done,
 *            broadcasts; the workers return 100 + k.
 *   joiner:  its pthread_join(worker0) returns 100 (worker0's value); checks its own state.
 *   main:    joins worker1..3 and the joiner, checks every result, the sum, the count per
 *            worker, and that no other thread saw SIGUSR2.
 *   PASS ... / FAIL ... (all threads' failures together).
 */
#include "common.h"
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define NWORKERS 4
#define NTHREADS (NWORKERS + 2) /* main, workers, joiner */
#define JOINER (NWORKERS + 1)
#define ITEMS 40
#define PENDING_WORKER 2
#define TLS_WORDS 64

/* thread index k: 0 = main, 1..4 = worker0..3, 5 = joiner */
static const char *const names[NTHREADS] = { "tp-main", "tp-worker-0", "tp-worker-1",
					      "tp-worker-2", "tp-worker-3", "tp-joiner" };

static __thread uint64_t tls_tag;
static __thread char tls_name[16];
static __thread uint64_t tls_pat[TLS_WORDS];
static __thread int tls_index = -1;

static pid_t tids[NTHREADS];
static char *altstacks[NTHREADS];
static size_t altsizes[NTHREADS];
static sigset_t masks[NTHREADS];
static pthread_t workers[NWORKERS], joiner;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER; /* workers wait here */
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER; /* main waits here */
static int waiting;                                       /* workers in pthread_cond_wait */
static int queued[ITEMS], nqueued;                        /* items main made available */
static int taken[ITEMS];                                  /* times each item was processed */
static uint64_t result[ITEMS];
static uint64_t sum;
static int processed, per_worker[NWORKERS], wakeups[NWORKERS];
static int done, joiner_started;
static void *joined_value = (void *)-1;

/* the SIGUSR2 handler: who ran it, on which stack */
static volatile sig_atomic_t usr2_count;
static volatile pid_t usr2_tid;
static volatile int usr2_on_altstack;

static pthread_mutex_t check_mu = PTHREAD_MUTEX_INITIALIZER;

/* check_failed is not thread-safe: every thread reports through this. */
#define TCHECK(cond, ...)                                    \
	do {                                                 \
		if (!(cond)) {                               \
			pthread_mutex_lock(&check_mu);       \
			check_failed(__VA_ARGS__);           \
			pthread_mutex_unlock(&check_mu);     \
		}                                            \
	} while (0)

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static uint64_t tls_word(int k, int i)
{
	return ((uint64_t)(k + 1) << 40) ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL;
}

static void on_usr2(int sig)
{
	(void)sig;
	char here;
	int k = PENDING_WORKER + 1;
	usr2_count++;
	usr2_tid = gettid_();
	usr2_on_altstack = &here >= altstacks[k] && &here < altstacks[k] + altsizes[k];
}

/* Sets up the state of thread k; runs in that thread. */
static void become(int k)
{
	tls_index = k;
	tls_tag = 0x7150000000ULL + (uint64_t)k * 0x1111;
	snprintf(tls_name, sizeof(tls_name), "tls-%d", k);
	for (int i = 0; i < TLS_WORDS; i++)
		tls_pat[i] = tls_word(k, i);
	tids[k] = gettid_();

	int err = pthread_setname_np(pthread_self(), names[k]);
	if (err)
		die("%s: pthread_setname_np: %s", names[k], strerror(err));

	altsizes[k] = 16384 + (size_t)k * 4096;
	altstacks[k] = malloc(altsizes[k]);
	if (!altstacks[k])
		die("malloc");
	stack_t ss = { .ss_sp = altstacks[k], .ss_size = altsizes[k], .ss_flags = 0 };
	if (sigaltstack(&ss, NULL))
		die("%s: sigaltstack: %s", names[k], strerror(errno));

	sigemptyset(&masks[k]);
	sigaddset(&masks[k], SIGRTMIN + k);
	if (k == 0)
		sigaddset(&masks[k], SIGUSR1);
	if (k == PENDING_WORKER + 1)
		sigaddset(&masks[k], SIGUSR2);
	err = pthread_sigmask(SIG_SETMASK, &masks[k], NULL);
	if (err)
		die("%s: pthread_sigmask: %s", names[k], strerror(err));
}

/* Value of "Key:" in /proc/self/task/TID/status (trimmed). */
static void task_status_field(pid_t tid, const char *key, char *out, size_t outsz)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)tid);
	proc_file_field(path, key, out, outsz);
}

static int sig_in_hex_set(const char *hex, int sig)
{
	unsigned long long v = strtoull(hex, NULL, 16);
	return (v >> (sig - 1)) & 1;
}

/* Thread k checks everything that is its own; runs in that thread after the restore. */
static void check_own_state(int k)
{
	const char *who = names[k];
	TCHECK(tls_index == k, "%s: TLS index %d", who, tls_index);
	TCHECK(tls_tag == 0x7150000000ULL + (uint64_t)k * 0x1111, "%s: TLS tag 0x%llx", who,
	       (unsigned long long)tls_tag);
	char want[16];
	snprintf(want, sizeof(want), "tls-%d", k);
	TCHECK(strcmp(tls_name, want) == 0, "%s: TLS string '%s', expected '%s'", who, tls_name, want);
	int bad = 0;
	for (int i = 0; i < TLS_WORDS; i++)
		bad += tls_pat[i] != tls_word(k, i);
	TCHECK(bad == 0, "%s: %d TLS pattern words differ", who, bad);
	TCHECK(gettid_() == tids[k], "%s: tid %d, was %d", who, gettid_(), tids[k]);

	char name[32] = "";
	int err = pthread_getname_np(pthread_self(), name, sizeof(name));
	TCHECK(err == 0 && strcmp(name, names[k]) == 0, "%s: pthread_getname_np '%s' (%s)", who, name,
	       err ? strerror(err) : "ok");
	char pname[17] = "";
	prctl(PR_GET_NAME, pname, 0, 0, 0);
	TCHECK(strcmp(pname, names[k]) == 0, "%s: PR_GET_NAME '%s'", who, pname);

	sigset_t m;
	pthread_sigmask(SIG_BLOCK, NULL, &m);
	for (int s = 1; s < NSIG; s++) {
		if (s == SIGKILL || s == SIGSTOP)
			continue;
		TCHECK(sigismember(&m, s) == sigismember(&masks[k], s), "%s: signal %d %s blocked", who, s,
		       sigismember(&m, s) ? "is" : "is not");
	}

	stack_t ss;
	sigaltstack(NULL, &ss);
	TCHECK(ss.ss_sp == altstacks[k] && ss.ss_size == altsizes[k] && ss.ss_flags == 0,
	       "%s: sigaltstack sp=%p size=%zu flags=%d, expected sp=%p size=%zu flags=0", who, ss.ss_sp,
	       ss.ss_size, ss.ss_flags, (void *)altstacks[k], altsizes[k]);

	sigset_t p;
	sigpending(&p);
	char sigpnd[32], shdpnd[32];
	task_status_field(gettid_(), "SigPnd", sigpnd, sizeof(sigpnd));
	task_status_field(gettid_(), "ShdPnd", shdpnd, sizeof(shdpnd));
	TCHECK(!sig_in_hex_set(shdpnd, SIGUSR2), "%s: SIGUSR2 pending process-wide (ShdPnd %s)", who, shdpnd);
	if (k == PENDING_WORKER + 1) {
		TCHECK(sigismember(&p, SIGUSR2), "%s: the thread-directed SIGUSR2 is no longer pending", who);
		TCHECK(sig_in_hex_set(sigpnd, SIGUSR2), "%s: SigPnd %s lacks SIGUSR2", who, sigpnd);
		TCHECK(usr2_count == 0, "%s: the SIGUSR2 handler already ran %d times", who, (int)usr2_count);
		sigset_t u;
		sigemptyset(&u);
		sigaddset(&u, SIGUSR2);
		pthread_sigmask(SIG_UNBLOCK, &u, NULL); /* delivered before this returns */
		TCHECK(usr2_count == 1, "%s: unblocking SIGUSR2 ran the handler %d times", who, (int)usr2_count);
		TCHECK(usr2_tid == tids[k], "%s: the SIGUSR2 handler ran in tid %d", who, (int)usr2_tid);
		TCHECK(usr2_on_altstack, "%s: the SA_ONSTACK handler did not run on this thread's altstack", who);
		pthread_sigmask(SIG_BLOCK, &u, NULL);
	} else {
		TCHECK(!sigismember(&p, SIGUSR2), "%s: SIGUSR2 pending in the wrong thread", who);
		TCHECK(!sig_in_hex_set(sigpnd, SIGUSR2), "%s: SigPnd %s has SIGUSR2", who, sigpnd);
	}
}

static void *worker_main(void *arg)
{
	int w = (int)(intptr_t)arg, k = w + 1;
	become(k);
	int mine = 0, checked = 0;
	pthread_mutex_lock(&mu);
	for (;;) {
		while (!done && mine >= nqueued / NWORKERS + (w < nqueued % NWORKERS)) {
			waiting++;
			pthread_cond_wait(&work_cv, &mu);
			waiting--;
			wakeups[w]++;
		}
		if (!checked && nqueued > 0) {
			/* woken after the restore by main's broadcast */
			pthread_mutex_unlock(&mu);
			check_own_state(k);
			checked = 1;
			pthread_mutex_lock(&mu);
		}
		/* items w, w + 4, w + 8, ... that main queued and this worker has not done */
		int did = 0;
		for (int i = w + mine * NWORKERS; i < ITEMS && queued[i]; i += NWORKERS) {
			taken[i]++;
			result[i] = (uint64_t)i * i + 1;
			sum += result[i];
			processed++;
			per_worker[w]++;
			mine++;
			did = 1;
		}
		if (did)
			pthread_cond_signal(&done_cv);
		if (done)
			break;
	}
	pthread_mutex_unlock(&mu);
	return (void *)(intptr_t)(100 + w);
}

static void *joiner_main(void *arg)
{
	(void)arg;
	become(JOINER);
	pthread_mutex_lock(&mu);
	joiner_started = 1;
	pthread_mutex_unlock(&mu);
	int err = pthread_join(workers[0], &joined_value);
	TCHECK(err == 0, "%s: pthread_join(worker0): %s", names[JOINER], strerror(err));
	check_own_state(JOINER);
	return (void *)(intptr_t)200;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);

	set_handler(SIGUSR2, on_usr2, SA_ONSTACK);

	become(0);
	for (int w = 0; w < NWORKERS; w++) {
		int err = pthread_create(&workers[w], NULL, worker_main, (void *)(intptr_t)w);
		if (err)
			die("pthread_create worker%d: %s", w, strerror(err));
	}
	int err = pthread_create(&joiner, NULL, joiner_main, NULL);
	if (err)
		die("pthread_create joiner: %s", strerror(err));

	/* everyone in place: 4 workers inside pthread_cond_wait, the joiner started */
	double deadline = mono_now() + 10;
	for (;;) {
		pthread_mutex_lock(&mu);
		int ok = waiting == NWORKERS && joiner_started;
		pthread_mutex_unlock(&mu);
		if (ok)
			break;
		if (mono_now() > deadline)
			die("threads not in place: %d workers waiting, joiner started %d", waiting, joiner_started);
		sleep_ms(1);
	}
	err = pthread_kill(workers[PENDING_WORKER], SIGUSR2);
	if (err)
		die("pthread_kill: %s", strerror(err));
	char sigpnd[32];
	task_status_field(tids[PENDING_WORKER + 1], "SigPnd", sigpnd, sizeof(sigpnd));
	if (!sig_in_hex_set(sigpnd, SIGUSR2))
		die("SIGUSR2 not pending in worker%d after pthread_kill (SigPnd %s)", PENDING_WORKER, sigpnd);

	status("READY main=%d w0=%d w1=%d w2=%d w3=%d joiner=%d pending_tid=%d pending_sig=%d", tids[0], tids[1],
	       tids[2], tids[3], tids[4], tids[JOINER], tids[PENDING_WORKER + 1], SIGUSR2);

	uint64_t loops = 0;
	while (!go_requested()) {
		loops++;
		sleep_ms(10);
	}
	check_own_state(0);

	/* the work: every item at once, then one broadcast wakes every worker */
	pthread_mutex_lock(&mu);
	TCHECK(waiting == NWORKERS, "main: %d workers waiting on the condition variable after the restore",
	       waiting);
	for (int i = 0; i < ITEMS; i++)
		queued[i] = 1;
	nqueued = ITEMS;
	pthread_cond_broadcast(&work_cv);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	while (processed < ITEMS) {
		if (pthread_cond_timedwait(&done_cv, &mu, &until) == ETIMEDOUT)
			break;
	}
	TCHECK(processed == ITEMS, "main: %d of %d items processed within 10 s", processed, ITEMS);
	done = 1;
	pthread_cond_broadcast(&work_cv);
	pthread_mutex_unlock(&mu);

	for (int w = 1; w < NWORKERS; w++) {
		void *v = NULL;
		err = pthread_join(workers[w], &v);
		TCHECK(err == 0 && v == (void *)(intptr_t)(100 + w), "main: pthread_join(worker%d): %s, value %p", w,
		       strerror(err), v);
	}
	void *jv = NULL;
	err = pthread_join(joiner, &jv);
	TCHECK(err == 0 && jv == (void *)(intptr_t)200, "main: pthread_join(joiner): %s, value %p", strerror(err), jv);
	TCHECK(joined_value == (void *)(intptr_t)100, "joiner: pthread_join(worker0) gave %p, expected 100",
	       joined_value);

	uint64_t want_sum = 0;
	for (int i = 0; i < ITEMS; i++) {
		want_sum += (uint64_t)i * i + 1;
		TCHECK(taken[i] == 1, "item %d processed %d times", i, taken[i]);
		TCHECK(result[i] == (uint64_t)i * i + 1, "item %d: result %llu", i, (unsigned long long)result[i]);
	}
	TCHECK(sum == want_sum, "sum %llu, expected %llu", (unsigned long long)sum, (unsigned long long)want_sum);
	for (int w = 0; w < NWORKERS; w++) {
		TCHECK(per_worker[w] == ITEMS / NWORKERS, "worker%d processed %d items, expected %d", w, per_worker[w],
		       ITEMS / NWORKERS);
		TCHECK(wakeups[w] >= 1, "worker%d never woke from pthread_cond_wait", w);
	}
	TCHECK(usr2_count == 1, "the SIGUSR2 handler ran %d times in all", (int)usr2_count);
	finish("%d threads, %d items, sum %llu, wakeups %d/%d/%d/%d, SIGUSR2 handled in tid %d, main looped %llu times",
	       NTHREADS, ITEMS, (unsigned long long)sum, wakeups[0], wakeups[1], wakeups[2], wakeups[3],
	       (int)usr2_tid, (unsigned long long)loops);
}
