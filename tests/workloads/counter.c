/*
 * counter: a counter incremented in a loop, plus memory patterns in every kind of
 * anonymous memory a plain program has: .data, .bss, the stack, the brk heap, a
 * malloc'd mmap chunk and a big sparse anonymous mapping of which only some pages
 * were ever touched.
 *
 * After the restore (on <status>.go) it verifies every pattern, that untouched
 * pages of the sparse mapping are neither resident (mincore, checked before reading
 * them) nor non-zero, that the kernel's brk is where it was, that malloc still works,
 * that the counter went on from where it was, and that it can still fork and exec.
 *
 * READY counter_addr=0x... (the test reads the counter via /proc/PID/mem).
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define DATA_N 4096
#define BSS_N (1 << 16)
#define STACK_N 2048
#define SMALL_N 2000
#define SMALL_SZ 1000
#define BIG_HEAP (8UL << 20)
#define SPARSE_PAGES 16384UL /* 64 MiB */

volatile unsigned long counter;
static unsigned int data_arr[DATA_N] = { 1 }; /* .data */
static unsigned int bss_arr[BSS_N];           /* .bss */

static inline uint64_t pat(uint64_t seed, uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
	x ^= x >> 29;
	return x * 0xBF58476D1CE4E5B9ULL;
}

static int touched(unsigned long page)
{
	return (page < 8192 && page % 13 == 0) || page == SPARSE_PAGES - 1 || page == 5000;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	volatile uint64_t stack_arr[STACK_N];

	for (unsigned i = 0; i < DATA_N; i++)
		data_arr[i] = (unsigned)pat(0xDA7A, i);
	for (unsigned i = 0; i < BSS_N; i++)
		bss_arr[i] = (unsigned)pat(0xB55, i);
	for (unsigned i = 0; i < STACK_N; i++)
		stack_arr[i] = pat(0x57AC, i);

	uint64_t *big = malloc(BIG_HEAP); /* above the mmap threshold: its own mapping */
	if (!big)
		die("malloc big");
	for (size_t i = 0; i < BIG_HEAP / 8; i++)
		big[i] = pat(0xB16, i);

	unsigned char **small = malloc(SMALL_N * sizeof(*small)); /* brk heap */
	for (unsigned i = 0; i < SMALL_N; i++) {
		small[i] = malloc(SMALL_SZ);
		for (unsigned j = 0; j < SMALL_SZ; j++)
			small[i][j] = (unsigned char)pat(i, j);
	}

	unsigned char *sparse = mmap(NULL, SPARSE_PAGES * PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (sparse == MAP_FAILED)
		die("mmap sparse: %s", strerror(errno));
	/* no THP: one touch must make one page resident, not 512 */
	madvise(sparse, SPARSE_PAGES * PAGE, MADV_NOHUGEPAGE);
	unsigned long n_touched = 0;
	for (unsigned long p = 0; p < SPARSE_PAGES; p++) {
		if (!touched(p))
			continue;
		uint64_t *w = (uint64_t *)(sparse + p * PAGE);
		for (unsigned k = 0; k < PAGE / 8; k++)
			w[k] = pat(p, k);
		n_touched++;
	}

	static unsigned char vec[SPARSE_PAGES];
	if (mincore(sparse, SPARSE_PAGES * PAGE, vec))
		die("mincore: %s", strerror(errno));
	unsigned long res_untouched = 0;
	for (unsigned long p = 0; p < SPARSE_PAGES; p++)
		if (!touched(p) && (vec[p] & 1))
			res_untouched++;
	if (res_untouched)
		die("workload bug: %lu untouched pages already resident before the dump", res_untouched);

	long brk_ready = syscall(SYS_brk, 0);
	counter = 1;
	unsigned long counter_ready = counter;
	volatile unsigned long shadow = counter * 7 + 3;

	status("READY counter_addr=%p sparse=%p touched_pages=%lu brk=0x%lx", (void *)&counter,
	       (void *)sparse, n_touched, brk_ready);

	for (;;) {
		counter++;
		shadow = counter * 7 + 3;
		if (go_requested())
			break;
		sleep_ms(2);
	}

	unsigned long c = counter;
	CHECK(c > counter_ready, "counter: expected > %lu got %lu", counter_ready, c);
	CHECK(shadow == c * 7 + 3, "shadow counter: expected %lu got %lu", c * 7 + 3,
	      (unsigned long)shadow);

	/* residency first: reading an untouched page would map the zero page */
	if (mincore(sparse, SPARSE_PAGES * PAGE, vec))
		check_failed("mincore after restore: %s", strerror(errno));
	res_untouched = 0;
	unsigned long first_res = 0;
	for (unsigned long p = 0; p < SPARSE_PAGES; p++)
		if (!touched(p) && (vec[p] & 1)) {
			if (!res_untouched)
				first_res = p;
			res_untouched++;
		}
	CHECK(res_untouched == 0,
	      "sparse mapping: expected 0 untouched pages resident got %lu (first: page %lu)",
	      res_untouched, first_res);

	unsigned long bad = 0, first_bad = 0;
	for (unsigned long p = 0; p < SPARSE_PAGES; p++) {
		uint64_t *w = (uint64_t *)(sparse + p * PAGE);
		int t = touched(p);
		for (unsigned k = 0; k < PAGE / 8; k++)
			if (w[k] != (t ? pat(p, k) : 0)) {
				if (!bad)
					first_bad = p;
				bad++;
				break;
			}
	}
	CHECK(bad == 0, "sparse mapping: %lu pages differ (first: page %lu, %s)", bad, first_bad,
	      touched(first_bad) ? "touched" : "untouched, expected zeros");

	unsigned long d = 0;
	for (unsigned i = 0; i < DATA_N; i++)
		d += data_arr[i] != (unsigned)pat(0xDA7A, i);
	CHECK(d == 0, ".data array: %lu of %u words differ", d, DATA_N);
	d = 0;
	for (unsigned i = 0; i < BSS_N; i++)
		d += bss_arr[i] != (unsigned)pat(0xB55, i);
	CHECK(d == 0, ".bss array: %lu of %u words differ", d, BSS_N);
	d = 0;
	for (unsigned i = 0; i < STACK_N; i++)
		d += stack_arr[i] != pat(0x57AC, i);
	CHECK(d == 0, "stack array: %lu of %u words differ", d, STACK_N);
	d = 0;
	for (size_t i = 0; i < BIG_HEAP / 8; i++)
		d += big[i] != pat(0xB16, i);
	CHECK(d == 0, "malloc'd 8 MiB block: %lu words differ", d);
	d = 0;
	for (unsigned i = 0; i < SMALL_N; i++)
		for (unsigned j = 0; j < SMALL_SZ; j++)
			d += small[i][j] != (unsigned char)pat(i, j);
	CHECK(d == 0, "brk heap small blocks: %lu bytes differ", d);

	long brk_now = syscall(SYS_brk, 0);
	CHECK(brk_now == brk_ready, "kernel brk: expected 0x%lx got 0x%lx", brk_ready, brk_now);

	/* the allocator must keep working: free and grow the brk heap */
	for (unsigned i = 0; i < SMALL_N; i += 2)
		free(small[i]);
	unsigned long grown = 0;
	for (unsigned i = 0; i < 512; i++) {
		unsigned char *p = malloc(8192);
		if (!p) {
			check_failed("malloc after restore failed");
			break;
		}
		memset(p, 0x5a, 8192);
		grown++;
	}
	long brk_after = syscall(SYS_brk, 0);
	CHECK(brk_after > brk_ready, "brk heap did not grow after restore: 0x%lx", brk_after);

	/* the restored process can fork, and its child can exit and exec */
	pid_t child = fork();
	if (child == 0)
		_exit(7);
	int wst = 0;
	CHECK(child > 0 && waitpid(child, &wst, 0) == child && WIFEXITED(wst) && WEXITSTATUS(wst) == 7,
	      "fork after restore: child %d status 0x%x, expected exit 7", (int)child, wst);
	child = fork();
	if (child == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	CHECK(child > 0 && waitpid(child, &wst, 0) == child && WIFEXITED(wst) && WEXITSTATUS(wst) == 0,
	      "fork+exec /bin/true after restore: status 0x%x", wst);

	finish("counter=%lu ready_counter=%lu touched_pages=%lu new_blocks=%lu", c, counter_ready,
	       n_touched, grown);
}
