/*
 * lazy_pattern MIB [huge|collapse]: MIB MiB of private anonymous memory, every 8-byte word
 * patterned by its page and place, and 64 MiB next to it that it never touches. With `huge`
 * the area is 2 MiB-aligned and advised MADV_HUGEPAGE (its pages are huge pages); with
 * `collapse` it is 2 MiB-aligned, not advised, and the program collapses its first half into
 * huge pages itself (MADV_COLLAPSE): half of it is huge, half 4 KiB pages. `huge-seccomp` is
 * `huge` under a seccomp filter that kills the process on close_range(2), a call it never makes
 * (a lazy restore must make no helper thread in it: such a thread's calls would go through it).
 * `huge-locked` is `huge` holding a POSIX write lock on bytes 0-9 of <status>.lock (a lock the
 * process owns: any close of an fd of that file by the process itself would drop it).
 * READY pages=N area=ADDR untouched=ADDR
 * After <status>.go: the kernel reads a page (write(2) to a pipe); a thread reads every page in a scrambled order while the main thread
 * reads them in order (both at once, right after the restore resumed it); every word must be
 * its pattern. The untouched area must still be unpopulated (mincore). Then
 * VERIFIED pages=N, and after <status>.end: PASS.
 * CFLAGS: -pthread
 */
#include "common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define UNTOUCHED (64UL << 20)
#define HUGE (2UL << 20)
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

static uint64_t *area;
static unsigned long npages;

static uint64_t pattern(unsigned long page, unsigned long word)
{
	return (page * 0x9e3779b97f4a7c15ULL) ^ (word * 0x100000001b3ULL) ^ 0x5a5a;
}

/* Number of words of page `p` that are not their pattern. */
static unsigned long check_page(unsigned long p)
{
	unsigned long bad = 0;
	for (unsigned long w = 0; w < WORDS; w++)
		bad += area[p * WORDS + w] != pattern(p, w);
	return bad;
}

static void *scrambled(void *arg)
{
	unsigned long *bad = arg;
	/* An odd step visits every page of a power-of-two count once. */
	for (unsigned long i = 0; i < npages; i++)
		*bad += check_page((i * 7919 + 13) % npages);
	return NULL;
}

/* `len` bytes of private anonymous memory at an address aligned to `align`. */
static uint64_t *map_aligned(unsigned long len, unsigned long align)
{
	unsigned char *raw = mmap(NULL, len + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	unsigned char *at = (unsigned char *)(((uintptr_t)raw + align - 1) & ~(align - 1));
	if (at > raw)
		munmap(raw, (size_t)(at - raw));
	if (raw + align > at)
		munmap(at + len, (size_t)(raw + align - at));
	return (uint64_t *)at;
}

/* A seccomp filter that kills the process on close_range(2) and allows everything else. */
static void kill_on_close_range(void)
{
	struct sock_filter prog[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_close_range, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog fprog = { .len = 4, .filter = prog };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog))
		die("seccomp: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	unsigned long mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 16;
	npages = (mib << 20) / PAGE;
	if (npages & (npages - 1))
		die("MIB must be a power of two");
	const char *mode = argc > 3 ? argv[3] : "";
	int filtered = !strcmp(mode, "huge-seccomp"), locked = !strcmp(mode, "huge-locked");
	int huge = !strcmp(mode, "huge") || filtered || locked, collapse = !strcmp(mode, "collapse");
	if (filtered)
		kill_on_close_range();
	if (locked) {
		char path[4200];
		snprintf(path, sizeof(path), "%s.lock", argv[1]);
		int fd = open(path, O_RDWR | O_CREAT, 0600);
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
		if (fd < 0 || fcntl(fd, F_SETLK, &fl))
			die("POSIX lock on %s: %s", path, strerror(errno));
	}
	area = map_aligned(npages * PAGE, huge || collapse ? HUGE : PAGE);
	unsigned char *untouched = mmap(NULL, UNTOUCHED, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (untouched == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	if (huge && madvise(area, npages * PAGE, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE): %s", strerror(errno));
	/* A flag of its own keeps the kernel from merging the two areas into one. */
	if (madvise(untouched, UNTOUCHED, MADV_NOHUGEPAGE))
		die("madvise: %s", strerror(errno));
	for (unsigned long p = 0; p < npages; p++)
		for (unsigned long w = 0; w < WORDS; w++)
			area[p * WORDS + w] = pattern(p, w);
	if (collapse && madvise(area, npages * PAGE / 2, MADV_COLLAPSE))
		die("madvise(MADV_COLLAPSE): %s", strerror(errno));
	status("READY pages=%lu area=%lx untouched=%lx", npages, (unsigned long)area, (unsigned long)untouched);
	while (!go_requested())
		sleep_ms(5);
	/* The kernel itself reads a page the fill has likely not reached yet (write(2) from it
	 * into a pipe): a fault in kernel mode is served too, never an EFAULT. */
	int pipefd[2];
	static uint64_t copy[WORDS];
	unsigned long last = npages - 3;
	if (pipe(pipefd))
		die("pipe: %s", strerror(errno));
	CHECK_EQ_U("write(2) from a lazy page", PAGE, write(pipefd[1], area + last * WORDS, PAGE));
	CHECK_EQ_U("read back from the pipe", PAGE, read(pipefd[0], copy, PAGE));
	for (unsigned long w = 0; w < WORDS; w++)
		CHECK(copy[w] == pattern(last, w), "word %lu of page %lu as the kernel read it", w, last);
	close(pipefd[0]);
	close(pipefd[1]);
	unsigned long bad_scrambled = 0, bad_ordered = 0;
	pthread_t t;
	if (pthread_create(&t, NULL, scrambled, &bad_scrambled))
		die("pthread_create");
	for (unsigned long p = 0; p < npages; p++)
		bad_ordered += check_page(p);
	pthread_join(t, NULL);
	CHECK_EQ_U("words wrong, pages read in order", 0, bad_ordered);
	CHECK_EQ_U("words wrong, pages read in scrambled order", 0, bad_scrambled);
	static unsigned char vec[UNTOUCHED / PAGE];
	if (mincore(untouched, UNTOUCHED, vec))
		die("mincore: %s", strerror(errno));
	unsigned long resident = 0;
	for (unsigned long i = 0; i < UNTOUCHED / PAGE; i++)
		resident += vec[i] & 1;
	CHECK_EQ_U("resident pages of the untouched area", 0, resident);
	status("VERIFIED pages=%lu", npages);
	char end[4200];
	snprintf(end, sizeof(end), "%s.end", argv[1]);
	for (int i = 0; i < 60000 && access(end, F_OK) != 0; i++)
		sleep_ms(5);
	finish("%lu pages, each word as it was", npages);
}
