// LDFLAGS: -pthread
/*
 * memwriter: threads that rewrite their memory the whole time, for dumps that copy pages
 * while the program runs (dump -R).
 *
 * Usage: memwriter STATUS MIB THREADS [huge] [discard] [nobody]
 *
 * Each writer thread owns a region of MIB/THREADS MiB (4 KiB pages, or huge pages with
 * "huge") and rewrites it page by page forever, round after round: every word of page i in
 * round v holds word(t, v, i, k). Before it rewrites a page it checks that the page holds the
 * previous round's words exactly. After each page it records its progress (round << 32 | next
 * page, one word written at once) in progress[t], so that a stopped process shows exactly which pages hold which round: pages
 * below `next` hold `round`, pages from `next` on hold `round - 1` (page `next` possibly
 * half-rewritten: a prefix of `round`, the rest `round - 1`).
 *
 * So a restored process finds, as it goes on, any page of its image that was not the memory
 * of the moment of the freeze, and a test can check the whole image from /proc at once.
 *
 * With "discard" another thread unmaps, maps again and refills a small area, and discards
 * pages of it with MADV_DONTNEED and refills them, in a loop (checking each page before it
 * discards it).
 *
 * With "nobody" it drops to uid/gid 65534 before it maps anything (it keeps no capability).
 *
 * READY regions=ADDR,ADDR... pages=N progress=ADDR discard=ADDR (progress: one 64-byte
 * record per thread, its first word the progress word)
 * After <status>.go: each writer completes two more rounds; PASS if no check failed.
 */
#include "common.h"
#include <pthread.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#define PAGE 4096UL
#define HUGE (2UL << 20)
#define MAX_THREADS 8
#define DISCARD_PAGES 64

struct progress {
	volatile uint64_t at; /* round << 32 | next page */
	volatile uint64_t rounds_after_go;
	uint64_t pad[6];
};

static struct progress progress[MAX_THREADS] __attribute__((aligned(4096)));
static uint64_t *regions[MAX_THREADS];
static unsigned long pages_per_region;
static volatile int failed;
static char failure[512];
static volatile uint64_t *discard_area;

static inline uint64_t word(uint64_t t, uint64_t v, uint64_t i, uint64_t k)
{
	uint64_t x = ((v << 40) ^ (t << 56) ^ (i << 9) ^ k) * 0x9E3779B97F4A7C15ULL;
	return x ^ (x >> 31);
}

static void fail_once(const char *fmt, ...)
{
	if (__atomic_exchange_n(&failed, 1, __ATOMIC_SEQ_CST))
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failure, sizeof(failure), fmt, ap);
	va_end(ap);
}

static void *writer(void *arg)
{
	uint64_t t = (uint64_t)arg;
	uint64_t *r = regions[t];
	for (uint64_t v = (progress[t].at >> 32) + 1;; v++) {
		for (uint64_t i = 0; i < pages_per_region; i++) {
			volatile uint64_t *p = r + i * (PAGE / 8);
			for (uint64_t k = 0; k < PAGE / 8; k++) {
				if (p[k] != word(t, v - 1, i, k)) {
					fail_once("thread %lu round %lu: page %lu word %lu holds %#lx, not round %lu's",
						  (unsigned long)t, (unsigned long)v, (unsigned long)i, (unsigned long)k,
						  (unsigned long)p[k], (unsigned long)(v - 1));
					break;
				}
			}
			for (uint64_t k = 0; k < PAGE / 8; k++)
				p[k] = word(t, v, i, k);
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			progress[t].at = v << 32 | (i + 1);
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
		}
		if (go_requested())
			progress[t].rounds_after_go++;
	}
	return NULL;
}

static uint64_t discard_word(uint64_t i, uint64_t k)
{
	return (i << 20) ^ k ^ 0xD15CA4DULL;
}

static void fill_discard_page(uint64_t i)
{
	for (uint64_t k = 0; k < PAGE / 8; k++)
		discard_area[i * PAGE / 8 + k] = discard_word(i, k);
}

static void check_discard_page(uint64_t i)
{
	for (uint64_t k = 0; k < PAGE / 8; k++)
		if (discard_area[i * PAGE / 8 + k] != discard_word(i, k)) {
			fail_once("discard area page %lu word %lu holds %#lx", (unsigned long)i, (unsigned long)k,
				  (unsigned long)discard_area[i * PAGE / 8 + k]);
			return;
		}
}

/* Unmaps and maps the area again at the same place, and discards single pages. */
static void *discarder(void *arg)
{
	(void)arg;
	for (uint64_t n = 0;; n++) {
		uint64_t i = n % DISCARD_PAGES;
		check_discard_page(i);
		if (n % DISCARD_PAGES == DISCARD_PAGES - 1) {
			for (uint64_t j = 0; j < DISCARD_PAGES; j++)
				check_discard_page(j);
			void *at = (void *)discard_area;
			munmap(at, DISCARD_PAGES * PAGE);
			void *again = mmap(at, DISCARD_PAGES * PAGE, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			if (again != at)
				die("mmap discard area again: %s", strerror(errno));
			madvise(at, DISCARD_PAGES * PAGE, MADV_NOHUGEPAGE);
			for (uint64_t j = 0; j < DISCARD_PAGES; j++)
				fill_discard_page(j);
		} else {
			madvise((void *)(discard_area + i * PAGE / 8), PAGE, MADV_DONTNEED);
			fill_discard_page(i);
		}
		usleep(200);
	}
	return NULL;
}

static void *map_region(size_t len, int huge)
{
	/* 2 MiB aligned, so that huge pages can back all of it */
	char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	char *aligned = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
	if (aligned > raw)
		munmap(raw, aligned - raw);
	munmap(aligned + len, raw + len + HUGE - (aligned + len));
	madvise(aligned, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return aligned;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 4)
		die("usage: memwriter STATUS MIB THREADS [huge] [discard]");
	unsigned long mib = strtoul(argv[2], NULL, 10);
	unsigned long threads = strtoul(argv[3], NULL, 10);
	int huge = 0, discard = 0, nobody = 0;
	for (int a = 4; a < argc; a++) {
		huge |= strcmp(argv[a], "huge") == 0;
		discard |= strcmp(argv[a], "discard") == 0;
		nobody |= strcmp(argv[a], "nobody") == 0;
	}
	if (nobody) {
		int fd = open(wl_status, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0 || fchown(fd, 65534, 65534) != 0)
			die("status file for 65534: %s", strerror(errno));
		close(fd);
		gid_t g = 65534;
		if (setgroups(1, &g) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			die("dropping to 65534: %s", strerror(errno));
		prctl(PR_SET_DUMPABLE, 1);
	}
	if (threads < 1 || threads > MAX_THREADS)
		die("1 to %d threads", MAX_THREADS);
	pages_per_region = (mib << 20) / threads / PAGE;
	char line[2048];
	int n = snprintf(line, sizeof(line), "READY regions=");
	for (uint64_t t = 0; t < threads; t++) {
		regions[t] = map_region(pages_per_region * PAGE, huge);
		for (uint64_t i = 0; i < pages_per_region; i++)
			for (uint64_t k = 0; k < PAGE / 8; k++)
				regions[t][i * PAGE / 8 + k] = word(t, 0, i, k);
		progress[t].at = pages_per_region;
		n += snprintf(line + n, sizeof(line) - n, "%s%#lx", t ? "," : "", (unsigned long)regions[t]);
	}
	if (discard) {
		discard_area = map_region(DISCARD_PAGES * PAGE, 0);
		for (uint64_t j = 0; j < DISCARD_PAGES; j++)
			fill_discard_page(j);
	}
	for (uint64_t t = 0; t < threads; t++) {
		pthread_t th;
		if (pthread_create(&th, NULL, writer, (void *)t))
			die("pthread_create");
	}
	if (discard) {
		pthread_t th;
		if (pthread_create(&th, NULL, discarder, NULL))
			die("pthread_create");
	}
	snprintf(line + n, sizeof(line) - n, " pages=%lu progress=%#lx discard=%#lx", pages_per_region,
		 (unsigned long)progress, (unsigned long)discard_area);
	status("%s", line);

	while (!go_requested())
		sleep_ms(10);
	double deadline = mono_now() + 60;
	for (uint64_t t = 0; t < threads; t++)
		while (progress[t].rounds_after_go < 2 && !failed && mono_now() < deadline)
			sleep_ms(5);
	for (uint64_t t = 0; t < threads; t++)
		if (progress[t].rounds_after_go < 2 && !failed)
			fail_once("thread %lu did not complete two rounds after go", (unsigned long)t);
	if (failed) {
		status("FAIL %s", failure);
		return 1;
	}
	status("PASS");
	return 0;
}
