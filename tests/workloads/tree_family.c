/*
 * tree_family: a parent with two children and a grandchild (child1's child).
 *
 *   parent ─┬─ child1 ── grandchild
 *           └─ child2
 *
 * Every process has a memory pattern of its own (written after the fork, so its pages
 * are private to it) and checks the parent's pre-fork pattern too (pages shared
 * copy-on-write at dump time), keeps a counter going, and writes its own lines to the
 * status file, tagged with its role:
 *
 *   READY <role> pid=N ppid=N pgid=N sid=N counter=0x...   (children first)
 *   READY parent ... child1=N child2=N grandchild=N          (once all children are READY)
 *   PASS <role> ... / FAIL <role> ...
 *
 * After <status>.go each process checks its pid, ppid, pgid, sid, patterns and counter;
 * a process with children reaps them (waitpid on each pid: they must still be its
 * children) and passes only if each exited 0. The parent's PASS is therefore the last
 * line.
 *
 * argv[2] == "socket": the grandchild also holds a UDP socket, which crust refuses (for the
 * refusal test), and reports sockfd=N in its READY line.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define OWN_WORDS (96 * 1024 / 8)
#define SHARED_WORDS (64 * 1024 / 8)

static const char *role = "parent";
static volatile uint64_t counter;
static uint64_t *shared_pat; /* written by the parent before forking */
static uint64_t *own_pat;    /* written by each process after the fork */
static uint64_t own_seed;
static pid_t my_pid, my_ppid, my_pgid, my_sid;
static int sockfd = -1;

static inline uint64_t pat(uint64_t seed, uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
	x ^= x >> 31;
	return x * 0xBF58476D1CE4E5B9ULL;
}

static uint64_t *map_words(size_t n)
{
	void *p = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("%s: mmap: %s", role, strerror(errno));
	return p;
}

/* What every process does right after it starts being itself. */
static void become(const char *r, uint64_t seed)
{
	role = r;
	own_seed = seed;
	own_pat = map_words(OWN_WORDS);
	for (size_t i = 0; i < OWN_WORDS; i++)
		own_pat[i] = pat(own_seed, i);
	counter = 0;
	my_pid = getpid();
	my_ppid = getppid();
	my_pgid = getpgid(0);
	my_sid = getsid(0);
}

static void say_ready(const char *extra)
{
	status("READY %s pid=%d ppid=%d pgid=%d sid=%d counter=%p %s", role, my_pid, my_ppid, my_pgid, my_sid,
	       (void *)&counter, extra);
}

/* Does the status file contain `needle`? */
static int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

static void wait_for_status(const char *needle)
{
	double deadline = mono_now() + 10;
	while (!status_has(needle)) {
		if (mono_now() > deadline)
			die("%s: timed out waiting for '%s' in the status file", role, needle);
		sleep_ms(5);
	}
}

/* Counts until <status>.go appears. */
static void run_until_go(void)
{
	while (!go_requested()) {
		counter++;
		sleep_ms(10);
	}
}

static void check_self(void)
{
	CHECK(getpid() == my_pid, "%s: getpid() %d, was %d", role, getpid(), my_pid);
	CHECK(getppid() == my_ppid, "%s: getppid() %d, was %d (no longer the child of its parent)", role, getppid(),
	      my_ppid);
	CHECK(getpgid(0) == my_pgid, "%s: getpgid() %d, was %d", role, getpgid(0), my_pgid);
	CHECK(getsid(0) == my_sid, "%s: getsid() %d, was %d", role, getsid(0), my_sid);
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < OWN_WORDS; i++)
		if (own_pat[i] != pat(own_seed, i) && bad++ == 0)
			first = i;
	CHECK(bad == 0, "%s: own pattern: %zu words differ, first at %zu", role, bad, first);
	bad = 0;
	for (size_t i = 0; i < SHARED_WORDS; i++)
		if (shared_pat[i] != pat(0x5EED, i) && bad++ == 0)
			first = i;
	CHECK(bad == 0, "%s: pre-fork pattern: %zu words differ, first at %zu", role, bad, first);
	CHECK(counter > 0, "%s: counter is 0 after running until go", role);
	if (sockfd >= 0) {
		struct stat st;
		CHECK(fstat(sockfd, &st) == 0 && S_ISSOCK(st.st_mode), "%s: fd %d is no longer a socket", role, sockfd);
	}
}

/* Reaps `pid`, which must be our child, within 15 s; it must have exited 0. */
static void reap_child(const char *what, pid_t pid)
{
	double deadline = mono_now() + 15;
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (!WIFEXITED(st))
				check_failed("%s: %s %d was killed by signal %d", role, what, pid, WTERMSIG(st));
			else if (WEXITSTATUS(st) != 0)
				check_failed("%s: %s %d exited %d", role, what, pid, WEXITSTATUS(st));
			return;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			check_failed("%s: waitpid(%s %d): %s", role, what, pid, strerror(errno));
			return;
		}
		if (mono_now() > deadline) {
			check_failed("%s: %s %d did not exit within 15 s", role, what, pid);
			return;
		}
		sleep_ms(5);
	}
}

static __attribute__((noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d counter=%llu", role, (int)getpid(), (unsigned long long)counter);
	_exit(0);
}

static void leaf(void)
{
	char extra[64] = "";
	if (sockfd >= 0)
		snprintf(extra, sizeof(extra), "sockfd=%d", sockfd);
	say_ready(extra);
	run_until_go();
	check_self();
	role_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int with_socket = argc > 2 && strcmp(argv[2], "socket") == 0;

	shared_pat = map_words(SHARED_WORDS);
	for (size_t i = 0; i < SHARED_WORDS; i++)
		shared_pat[i] = pat(0x5EED, i);
	become("parent", 0x9A7E47);

	pid_t child1 = fork();
	if (child1 < 0)
		die("fork child1: %s", strerror(errno));
	if (child1 == 0) {
		become("child1", 0xC1);
		pid_t gc = fork();
		if (gc < 0)
			die("child1: fork grandchild: %s", strerror(errno));
		if (gc == 0) {
			become("grandchild", 0x6C);
			if (with_socket) {
				sockfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
				if (sockfd < 0)
					die("grandchild: socket: %s", strerror(errno));
			}
			leaf();
		}
		char extra[64];
		snprintf(extra, sizeof(extra), "grandchild=%d", gc);
		say_ready(extra);
		run_until_go();
		check_self();
		reap_child("grandchild", gc);
		role_finish();
	}
	pid_t child2 = fork();
	if (child2 < 0)
		die("fork child2: %s", strerror(errno));
	if (child2 == 0) {
		become("child2", 0xC2);
		leaf();
	}

	char needle[64];
	snprintf(needle, sizeof(needle), "READY child1 pid=%d ", child1);
	wait_for_status(needle);
	snprintf(needle, sizeof(needle), "READY child2 pid=%d ", child2);
	wait_for_status(needle);
	wait_for_status("READY grandchild pid=");
	char extra[128];
	snprintf(extra, sizeof(extra), "child1=%d child2=%d", child1, child2);
	say_ready(extra);

	run_until_go();
	check_self();
	reap_child("child1", child1);
	reap_child("child2", child2);
	/* nothing else may be our child */
	int st;
	pid_t r = waitpid(-1, &st, WNOHANG);
	CHECK(r < 0 && errno == ECHILD, "parent: waitpid(-1) after reaping both children returned %d (%s)", r,
	      r < 0 ? strerror(errno) : "an unexpected child");
	role_finish();
}
