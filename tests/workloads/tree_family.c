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
 * argv[2] == "socket": the grandchild also holds an MPTCP socket, which crust refuses (for the
 * refusal test), and reports sockfd=N in its READY line.
 */
#include "tree_common.h"
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define OWN_WORDS (96 * 1024 / 8)
#define SHARED_WORDS (64 * 1024 / 8)

static volatile uint64_t counter;
static uint64_t *shared_pat; /* written by the parent before forking */
static uint64_t *own_pat;    /* written by each process after the fork */
static uint64_t own_seed;
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

/* What every process does right after it took its role: a pattern and a counter of its own. */
static void become(uint64_t seed)
{
	own_seed = seed;
	own_pat = map_words(OWN_WORDS);
	for (size_t i = 0; i < OWN_WORDS; i++)
		own_pat[i] = pat(own_seed, i);
	counter = 0;
}

static void say_ready(const char *extra)
{
	status("READY %s pid=%d ppid=%d pgid=%d sid=%d counter=%p %s", role, my_pid, my_ppid, my_pgid, my_sid,
	       (void *)&counter, extra);
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
	check_ids();
	check_group_ids();
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

/* PASS lines of this workload also carry the counter. */
static __attribute__((noreturn)) void pass_or_fail(void)
{
	role_finish_with("counter=%llu", (unsigned long long)counter);
}

static void leaf(void)
{
	char extra[64] = "";
	if (sockfd >= 0)
		snprintf(extra, sizeof(extra), "sockfd=%d", sockfd);
	say_ready(extra);
	run_until_go();
	check_self();
	pass_or_fail();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int with_socket = argc > 2 && strcmp(argv[2], "socket") == 0;

	shared_pat = map_words(SHARED_WORDS);
	for (size_t i = 0; i < SHARED_WORDS; i++)
		shared_pat[i] = pat(0x5EED, i);
	remember("parent");
	become(0x9A7E47);

	pid_t child1 = fork_as("child1");
	if (child1 == 0) {
		become(0xC1);
		pid_t gc = fork_as("grandchild");
		if (gc == 0) {
			become(0x6C);
			if (with_socket) {
				sockfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 262 /* IPPROTO_MPTCP */);
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
		reap("grandchild", gc);
		pass_or_fail();
	}
	pid_t child2 = fork_as("child2");
	if (child2 == 0) {
		become(0xC2);
		leaf();
	}

	await_ready("child1", child1);
	await_ready("child2", child2);
	await_ready("grandchild", 0);
	char extra[128];
	snprintf(extra, sizeof(extra), "child1=%d child2=%d", child1, child2);
	say_ready(extra);

	run_until_go();
	check_self();
	reap("child1", child1);
	reap("child2", child2);
	no_more_children();
	pass_or_fail();
}
