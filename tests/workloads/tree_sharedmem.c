/*
 * tree_sharedmem: memory shared between a parent and its child.
 *
 *   - shared: a MAP_SHARED|MAP_ANONYMOUS region written by the parent before fork; after
 *     restore the child writes a token into it and the parent must see it (one object, not
 *     two copies);
 *   - cow: a private region of COW_PAGES pages filled by the parent before fork and never
 *     written after: parent and child share its frames copy-on-write (the test checks the
 *     frames in /proc/PID/pagemap before and after);
 *   - the child wrote page 0 of cow after the fork (its own copy) and dropped page 1 with
 *     MADV_DONTNEED (reads zero); the parent wrote page 2 after the fork.
 *
 * READY child pid=N cow=0x... shared=0x... pages=N
 * READY parent pid=N cow=0x... shared=0x... pages=N child=N
 * After .go each checks every page; the child writes the token; the parent waits for it,
 * reaps the child, PASS parent last.
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define COW_PAGES 512
#define PAGE 4096
#define SHARED_BYTES (64 * 1024)
#define TOKEN 0x5EED5EED5EED5EEDULL

static const char *role = "parent";

static uint64_t word(uint64_t page, uint64_t i)
{
	return (page * 4096 + i) * 0x9E3779B97F4A7C15ULL;
}

static void check_cow(uint64_t *cow, int is_child)
{
	for (uint64_t p = 0; p < COW_PAGES; p++) {
		uint64_t *w = cow + p * (PAGE / 8);
		for (uint64_t i = 0; i < PAGE / 8; i += 61) {
			uint64_t want = word(p, i);
			if (p == 0 && is_child)
				want = ~word(p, i);
			if (p == 1 && is_child)
				want = 0;
			if (p == 2 && !is_child)
				want = word(p, i) + 1;
			if (w[i] != want) {
				check_failed("%s: cow page %llu word %llu: expected %llx got %llx", role,
					     (unsigned long long)p, (unsigned long long)i,
					     (unsigned long long)want, (unsigned long long)w[i]);
				return;
			}
		}
	}
}

static __attribute__((noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d", role, (int)getpid());
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	uint64_t *cow = mmap(NULL, COW_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	volatile uint64_t *shared = mmap(NULL, SHARED_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (cow == MAP_FAILED || shared == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	for (uint64_t p = 0; p < COW_PAGES; p++)
		for (uint64_t i = 0; i < PAGE / 8; i++)
			cow[p * (PAGE / 8) + i] = word(p, i);
	for (uint64_t i = 0; i < SHARED_BYTES / 8; i++)
		shared[i] = i ^ 0xABCDEF;
	shared[0] = 0;

	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		role = "child";
		for (uint64_t i = 0; i < PAGE / 8; i++)
			cow[i] = ~word(0, i);
		if (madvise(cow + PAGE / 8, PAGE, MADV_DONTNEED))
			die("madvise: %s", strerror(errno));
		status("READY child pid=%d cow=%p shared=%p pages=%d", (int)getpid(), (void *)cow, (void *)shared, COW_PAGES);
		while (!go_requested())
			sleep_ms(5);
		check_cow(cow, 1);
		for (uint64_t i = 1; i < SHARED_BYTES / 8; i++)
			if (shared[i] != (i ^ 0xABCDEF)) {
				check_failed("child: shared word %llu differs", (unsigned long long)i);
				break;
			}
		shared[0] = TOKEN;
		role_finish();
	}
	for (uint64_t i = 0; i < PAGE / 8; i++)
		cow[2 * (PAGE / 8) + i] = word(2, i) + 1;
	/* wait for the child's READY before ours */
	char buf[8192];
	double deadline = mono_now() + 10;
	for (;;) {
		if (read_file(wl_status, buf, sizeof(buf)) > 0 && strstr(buf, "READY child"))
			break;
		if (mono_now() > deadline)
			die("child never got ready");
		sleep_ms(5);
	}
	status("READY parent pid=%d cow=%p shared=%p pages=%d child=%d", (int)getpid(), (void *)cow, (void *)shared,
	       COW_PAGES, (int)child);
	while (!go_requested())
		sleep_ms(5);
	check_cow(cow, 0);
	deadline = mono_now() + 10;
	while (shared[0] != TOKEN && mono_now() < deadline)
		sleep_ms(5);
	CHECK(shared[0] == TOKEN, "parent: the child's write to the shared region is not visible (got %llx)",
	      (unsigned long long)shared[0]);
	int st;
	pid_t r = waitpid(child, &st, 0);
	CHECK(r == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with 0x%x (waitpid %d)", st, (int)r);
	role_finish();
}
