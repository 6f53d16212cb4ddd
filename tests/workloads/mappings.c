/*
 * mappings: one mapping of every kind, with contents.
 *   private anonymous (RW), shared anonymous (MAP_SHARED|MAP_ANONYMOUS),
 *   private file mapping of <status>.data with pages 2 and 5 modified in memory,
 *   read-only private file mapping at a non-zero file offset,
 *   shared file mapping of <status>.shared with a page written through it,
 *   PROT_NONE guard region, an RW region split by mprotect(PROT_NONE) in the middle,
 *   read-only anonymous region with contents, MAP_GROWSDOWN region,
 *   MADV_HUGEPAGE region, executable anonymous page holding code.
 * At READY it saves /proc/self/maps (without dev/inode) in memory. After the
 * restore it compares the maps line by line, checks every mapping's contents, that
 * the data file on disk is unchanged, that writes through the shared file mapping
 * reach the file, that protections are enforced (SIGSEGV), the VmFlags of the
 * huge-page region, and that the vDSO works and sits where the auxv says.
 */
#include "common.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define PAGE 4096UL
#define DATA_PAGES 16
#define SHARED_PAGES 8
#define HUGE_SZ (4UL << 20)

static inline unsigned char pat(unsigned seed, unsigned long i)
{
	uint64_t x = (i + 7) * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)seed << 32);
	x ^= x >> 31;
	return (unsigned char)(x * 0xBF58476D1CE4E5B9ULL >> 56);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pat(seed, i);
}

static long differs(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pat(seed, i))
			return (long)i;
	return -1;
}

/* ---- /proc/self/maps, normalized: "start-end perms offset path" per line ---- */
static char maps_raw[65536];

static size_t normalize_maps(const char *raw, char *out, size_t outsz)
{
	size_t o = 0;
	const char *line = raw;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char l[1024];
		if (len >= sizeof(l))
			len = sizeof(l) - 1;
		memcpy(l, line, len);
		l[len] = 0;
		char range[64], perms[8], off[32], dev[32];
		unsigned long ino;
		int pos = 0;
		if (sscanf(l, "%63s %7s %31s %31s %lu %n", range, perms, off, dev, &ino, &pos) >= 5) {
			const char *path = l + pos;
			if (pos == 0)
				path = "";
			int n = snprintf(out + o, outsz - o, "%s %s %s %s\n", range, perms, off, path);
			if (n > 0 && o + (size_t)n < outsz)
				o += (size_t)n;
		}
		if (!nl)
			break;
		line = nl + 1;
	}
	out[o] = 0;
	return o;
}

static char maps_ready[65536];
static char maps_now[65536];

static void compare_maps(void)
{
	read_file("/proc/self/maps", maps_raw, sizeof(maps_raw));
	normalize_maps(maps_raw, maps_now, sizeof(maps_now));
	if (strcmp(maps_ready, maps_now) == 0)
		return;
	/* report the first differing lines */
	const char *a = maps_ready, *b = maps_now;
	int lineno = 1, reported = 0;
	while ((*a || *b) && reported < 4) {
		const char *na = strchr(a, '\n'), *nb = strchr(b, '\n');
		size_t la = na ? (size_t)(na - a) : strlen(a);
		size_t lb = nb ? (size_t)(nb - b) : strlen(b);
		if (la != lb || memcmp(a, b, la) != 0) {
			check_failed("maps line %d: expected '%.*s' got '%.*s'", lineno, (int)la, a,
				     (int)lb, b);
			reported++;
		}
		a = na ? na + 1 : a + la;
		b = nb ? nb + 1 : b + lb;
		lineno++;
	}
}

/* VmFlags of the smaps entry starting at addr */
static void vmflags_of(void *addr, char *out, size_t outsz)
{
	static char smaps[1 << 20];
	out[0] = 0;
	read_file("/proc/self/smaps", smaps, sizeof(smaps));
	char key[32];
	snprintf(key, sizeof(key), "%lx-", (unsigned long)addr);
	char *p = smaps;
	while (p && *p) {
		if (strncmp(p, key, strlen(key)) == 0) {
			char *f = strstr(p, "VmFlags:");
			if (f) {
				f += 8;
				char *nl = strchr(f, '\n');
				size_t n = nl ? (size_t)(nl - f) : strlen(f);
				if (n >= outsz)
					n = outsz - 1;
				memcpy(out, f, n);
				out[n] = 0;
			}
			return;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
}

/* ---- access probes ---- */
static sigjmp_buf probe_env;
static void segv_handler(int sig)
{
	(void)sig;
	siglongjmp(probe_env, 1);
}

/* 1 if reading (write=0) or writing (write=1) *p faults */
static int faults(volatile unsigned char *p, int write)
{
	if (sigsetjmp(probe_env, 1))
		return 1;
	if (write)
		*p = *p;
	else
		(void)*p;
	return 0;
}

static void __attribute__((noinline)) prefault_stack(void)
{
	volatile char buf[256 * 1024];
	for (size_t i = 0; i < sizeof(buf); i += 512)
		buf[i] = 1;
}

static void *xmmap(size_t len, int prot, int flags, int fd, off_t off, const char *what)
{
	void *p = mmap(NULL, len, prot, flags, fd, off);
	if (p == MAP_FAILED)
		die("mmap %s: %s", what, strerror(errno));
	return p;
}

static void write_file(const char *path, size_t pages, unsigned seed)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("create %s: %s", path, strerror(errno));
	static unsigned char buf[PAGE];
	for (size_t p = 0; p < pages; p++) {
		fill(buf, PAGE, seed + (unsigned)p);
		if (pwrite(fd, buf, PAGE, (off_t)(p * PAGE)) != (ssize_t)PAGE)
			die("write %s", path);
	}
	close(fd);
}

/* compare file page pg with pattern seed */
static long file_page_differs(const char *path, size_t pg, unsigned seed)
{
	static unsigned char buf[PAGE];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -2;
	ssize_t r = pread(fd, buf, PAGE, (off_t)(pg * PAGE));
	close(fd);
	if (r != (ssize_t)PAGE)
		return -3;
	return differs(buf, PAGE, seed);
}

static int code_fn_ok(void *code)
{
	int (*fn)(void) = (int (*)(void))code;
	return fn();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	prefault_stack();

	char data_path[4200], shared_path[4200];
	snprintf(data_path, sizeof(data_path), "%s.data", argv[1]);
	snprintf(shared_path, sizeof(shared_path), "%s.shared", argv[1]);
	write_file(data_path, DATA_PAGES, 100);
	write_file(shared_path, SHARED_PAGES, 200);

	struct sigaction sa = { 0 };
	sa.sa_handler = segv_handler;
	sigaction(SIGSEGV, &sa, NULL);

	unsigned char *anon_priv = xmmap(16 * PAGE, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "anon private");
	fill(anon_priv, 16 * PAGE, 1);

	unsigned char *anon_shared = xmmap(8 * PAGE, PROT_READ | PROT_WRITE,
					   MAP_SHARED | MAP_ANONYMOUS, -1, 0, "anon shared");
	fill(anon_shared, 8 * PAGE, 2);

	int dfd = open(data_path, O_RDWR | O_CLOEXEC);
	unsigned char *file_priv = xmmap(DATA_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE,
					 dfd, 0, "file private");
	fill(file_priv + 2 * PAGE, PAGE, 902); /* copy-on-write, not in the file */
	fill(file_priv + 5 * PAGE, PAGE, 905);
	unsigned char *file_priv_off = xmmap(8 * PAGE, PROT_READ, MAP_PRIVATE, dfd, 4 * PAGE,
					     "file private at offset");
	close(dfd);

	int sfd = open(shared_path, O_RDWR | O_CLOEXEC);
	unsigned char *file_shared = xmmap(SHARED_PAGES * PAGE, PROT_READ | PROT_WRITE,
					   MAP_SHARED, sfd, 0, "file shared");
	close(sfd);
	fill(file_shared + 1 * PAGE, PAGE, 701); /* reaches the file */

	unsigned char *guard = xmmap(4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0,
				     "guard");

	unsigned char *split = xmmap(3 * PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "split");
	fill(split, 3 * PAGE, 3);
	mprotect(split + PAGE, PAGE, PROT_NONE);

	unsigned char *ro_anon = xmmap(4 * PAGE, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "read-only anon");
	fill(ro_anon, 4 * PAGE, 4);
	mprotect(ro_anon, 4 * PAGE, PROT_READ);

	unsigned char *grows = xmmap(4 * PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0,
				     "growsdown");
	fill(grows + 3 * PAGE, PAGE, 5);

	unsigned char *raw = xmmap(HUGE_SZ + (2UL << 20), PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "huge");
	unsigned char *huge = (unsigned char *)(((uintptr_t)raw + (2UL << 20) - 1) & ~((2UL << 20) - 1));
	if (huge > raw)
		munmap(raw, (size_t)(huge - raw));
	munmap(huge + HUGE_SZ, (size_t)(raw + HUGE_SZ + (2UL << 20) - (huge + HUGE_SZ)));
	if (madvise(huge, HUGE_SZ, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE): %s", strerror(errno));
	fill(huge, HUGE_SZ, 6);

	unsigned char *code = xmmap(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
				    0, "code");
	static const unsigned char fn42[] = { 0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3 }; /* mov eax,42; ret */
	memcpy(code, fn42, sizeof(fn42));
	mprotect(code, PAGE, PROT_READ | PROT_EXEC);
	if (code_fn_ok(code) != 42)
		die("code page does not work before the dump");

	char vmf_ready[256];
	vmflags_of(huge, vmf_ready, sizeof(vmf_ready));
	if (!strstr(vmf_ready, "hg"))
		die("huge region VmFlags lack hg before the dump: '%s'", vmf_ready);

	/* sanity of the probes before the dump */
	if (!faults(guard, 0) || !faults(split + PAGE, 0) || !faults(ro_anon, 1) || faults(ro_anon, 0))
		die("protection probes wrong before the dump");

	struct timespec mono_ready;
	clock_gettime(CLOCK_MONOTONIC, &mono_ready);

	read_file("/proc/self/maps", maps_raw, sizeof(maps_raw));
	normalize_maps(maps_raw, maps_ready, sizeof(maps_ready));

	status("READY anon_priv=%p anon_shared=%p file_priv=%p file_shared=%p guard=%p "
	       "ro_anon=%p growsdown=%p huge=%p code=%p",
	       anon_priv, anon_shared, file_priv, file_shared, guard, ro_anon, grows, huge, code);

	while (!go_requested())
		sleep_ms(5);

	compare_maps();

	long d;
	d = differs(anon_priv, 16 * PAGE, 1);
	CHECK(d < 0, "private anon: first differing byte at %ld", d);
	d = differs(anon_shared, 8 * PAGE, 2);
	CHECK(d < 0, "shared anon: first differing byte at %ld", d);
	for (unsigned p = 0; p < DATA_PAGES; p++) {
		unsigned seed = p == 2 ? 902 : p == 5 ? 905 : 100 + p;
		d = differs(file_priv + p * PAGE, PAGE, seed);
		CHECK(d < 0, "private file mapping page %u (%s): first differing byte at %ld", p,
		      seed > 900 ? "modified in memory" : "file contents", d);
		d = file_page_differs(data_path, p, 100 + p);
		CHECK(d == -1, "data file on disk page %u changed (result %ld)", p, d);
	}
	for (unsigned p = 0; p < 8; p++) {
		d = differs(file_priv_off + p * PAGE, PAGE, 104 + p);
		CHECK(d < 0, "private file mapping at offset, page %u: first differing byte at %ld", p, d);
	}
	for (unsigned p = 0; p < SHARED_PAGES; p++) {
		unsigned seed = p == 1 ? 701 : 200 + p;
		d = differs(file_shared + p * PAGE, PAGE, seed);
		CHECK(d < 0, "shared file mapping page %u: first differing byte at %ld", p, d);
		d = file_page_differs(shared_path, p, seed);
		CHECK(d == -1, "shared file on disk page %u: result %ld", p, d);
	}
	/* still shared with the file after the restore? */
	fill(file_shared + 3 * PAGE, PAGE, 703);
	d = file_page_differs(shared_path, 3, 703);
	CHECK(d == -1, "write through the shared file mapping after restore not visible in the file (%ld)", d);

	d = differs(split, PAGE, 3);
	CHECK(d < 0, "split region first page: differing byte at %ld", d);
	{
		unsigned char ref[PAGE];
		unsigned char all[3 * PAGE];
		fill(all, sizeof(all), 3);
		memcpy(ref, all + 2 * PAGE, PAGE);
		CHECK(memcmp(ref, split + 2 * PAGE, PAGE) == 0, "split region third page differs");
	}
	d = differs(ro_anon, 4 * PAGE, 4);
	CHECK(d < 0, "read-only anon: first differing byte at %ld", d);
	d = differs(grows + 3 * PAGE, PAGE, 5);
	CHECK(d < 0, "growsdown region: first differing byte at %ld", d);
	d = differs(huge, HUGE_SZ, 6);
	CHECK(d < 0, "MADV_HUGEPAGE region: first differing byte at %ld", d);
	char vmf[256];
	vmflags_of(huge, vmf, sizeof(vmf));
	CHECK(strstr(vmf, "hg") != NULL, "huge region VmFlags: expected '%s' got '%s'", vmf_ready, vmf);

	CHECK(faults(guard, 0), "PROT_NONE guard region is readable");
	CHECK(faults(split + PAGE, 0), "PROT_NONE middle of split region is readable");
	CHECK(faults(ro_anon, 1), "read-only anon region is writable");
	CHECK(!faults(ro_anon, 0), "read-only anon region is not readable");
	CHECK(code_fn_ok(code) == 42, "code in the executable anonymous page does not return 42");

	/* vDSO: glibc calls it through pointers cached before the dump */
	struct timespec rt, mono;
	clock_gettime(CLOCK_REALTIME, &rt);
	time_t t = time(NULL);
	struct timeval tv;
	gettimeofday(&tv, NULL);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	CHECK(labs((long)(rt.tv_sec - t)) <= 1, "clock_gettime(REALTIME)=%ld vs time()=%ld",
	      (long)rt.tv_sec, (long)t);
	CHECK(labs((long)(tv.tv_sec - t)) <= 1, "gettimeofday=%ld vs time()=%ld", (long)tv.tv_sec,
	      (long)t);
	struct timespec raw_rt;
	syscall(SYS_clock_gettime, CLOCK_REALTIME, &raw_rt);
	CHECK(labs((long)(raw_rt.tv_sec - rt.tv_sec)) <= 1,
	      "vDSO clock_gettime=%ld vs syscall clock_gettime=%ld", (long)rt.tv_sec,
	      (long)raw_rt.tv_sec);
	CHECK(mono.tv_sec > mono_ready.tv_sec ||
		      (mono.tv_sec == mono_ready.tv_sec && mono.tv_nsec > mono_ready.tv_nsec),
	      "CLOCK_MONOTONIC went backwards: ready %ld.%09ld now %ld.%09ld",
	      (long)mono_ready.tv_sec, mono_ready.tv_nsec, (long)mono.tv_sec, mono.tv_nsec);
	unsigned long ehdr = getauxval(AT_SYSINFO_EHDR);
	char key[64];
	snprintf(key, sizeof(key), "%lx-", ehdr);
	char *vl = strstr(maps_now, key);
	CHECK(vl && strstr(vl, "[vdso]") && strchr(vl, '\n') > strstr(vl, "[vdso]"),
	      "AT_SYSINFO_EHDR 0x%lx is not the start of [vdso] after restore", ehdr);

	finish("mappings and contents identical, vDSO works");
}
