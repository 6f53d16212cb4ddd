/*
 * anon_names: anonymous memory named with prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME), as
 * /proc/self/maps shows it: [anon:NAME] for private areas, [anon_shmem:NAME] for shared ones.
 *   priv       4 pages, private, written                   "crust: private, written"
 *   shared     4 pages, MAP_SHARED|MAP_ANONYMOUS, written    "crust: shared anon"
 *   left/right 8 pages of one mmap, same protection, the halves named apart
 *   odd        2 pages, written, then read-only, a name with spaces at both ends and colons
 *   untouched  16 pages, named, never touched
 *   longest    1 page, written, a name of 79 bytes (the kernel's longest)
 * A kernel built without CONFIG_ANON_VMA_NAME refuses every name (EINVAL): the areas are
 * then made unnamed and READY says names=0 with the errno (the test then checks that such an
 * image is refused once names are put in it).
 * At READY it keeps the maps lines of its areas. After the restore it checks every area's
 * contents and that the writable ones take writes (the shared one included), that the
 * untouched one has no page and reads zero, and that each maps line (range, protection,
 * offset, name, byte for byte) is the one it had; dev and inode are left out (a restored
 * shared object is a new inode).
 */
#include "common.h"
#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

#define PAGE 4096UL

#define N_PRIV "crust: private, written"
#define N_SHARED "crust: shared anon"
#define N_LEFT "crust: left"
#define N_RIGHT "crust: right"
#define N_ODD "  spaces  and : colons :: "
#define N_UNTOUCHED "crust: never touched"
#define N_LONG "crust: the longest name the kernel takes, seventy-nine bytes of it: 0123456789!"

struct area {
	const char *what;
	unsigned char *p;
	size_t pages;
	const char *name;
	unsigned seed; /* 0: never touched */
	int writable;
	char line[512]; /* its maps line at READY, without dev and inode */
};

static struct area areas[7];
static int naming_errno;

static inline unsigned char pat(unsigned seed, unsigned long i)
{
	uint64_t x = (i + 13) * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)seed << 40);
	x ^= x >> 29;
	return (unsigned char)(x * 0xBF58476D1CE4E5B9ULL >> 56);
}

static void *map(size_t pages, int shared)
{
	int flags = MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE);
	void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED) {
		status("FAIL mmap of %zu pages: %s", pages, strerror(errno));
		exit(1);
	}
	return p;
}

static void name(struct area *a)
{
	if (prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, a->p, a->pages * PAGE, a->name) != 0 && !naming_errno)
		naming_errno = errno;
}

static void fill(struct area *a)
{
	for (size_t i = 0; i < a->pages * PAGE; i++)
		a->p[i] = pat(a->seed, i);
}

/* The maps line of the area starting at `p`, as "range perms offset name" (name byte for
 * byte: everything after the inode column and its padding), or "" if there is none. */
static void maps_line(const void *p, char *out, size_t outsz)
{
	static char raw[1 << 16];
	out[0] = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	size_t n = 0;
	ssize_t r;
	while (n < sizeof(raw) - 1 && (r = read(fd, raw + n, sizeof(raw) - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	raw[n] = 0;
	char want[32];
	snprintf(want, sizeof(want), "%lx-", (unsigned long)p);
	for (char *l = raw; l && *l;) {
		char *nl = strchr(l, '\n');
		if (nl)
			*nl = 0;
		if (strncmp(l, want, strlen(want)) == 0) {
			char range[64], perms[8], off[32], dev[32];
			unsigned long ino;
			int pos = 0;
			if (sscanf(l, "%63s %7s %31s %31s %lu %n", range, perms, off, dev, &ino, &pos) >= 5)
				snprintf(out, outsz, "%s %s %s %s", range, perms, off, pos ? l + pos : "");
			return;
		}
		l = nl ? nl + 1 : NULL;
	}
}

static void set_up(void)
{
	unsigned char *pair = map(8, 0);
	struct area init[7] = {
		{ "priv", map(4, 0), 4, N_PRIV, 1, 1, "" },
		{ "shared", map(4, 1), 4, N_SHARED, 2, 1, "" },
		{ "left", pair, 4, N_LEFT, 3, 1, "" },
		{ "right", pair + 4 * PAGE, 4, N_RIGHT, 4, 1, "" },
		{ "odd", map(2, 0), 2, N_ODD, 5, 0, "" },
		{ "untouched", map(16, 0), 16, N_UNTOUCHED, 0, 1, "" },
		{ "longest", map(1, 0), 1, N_LONG, 6, 1, "" },
	};
	memcpy(areas, init, sizeof(areas));
	for (int i = 0; i < 7; i++) {
		if (areas[i].seed)
			fill(&areas[i]);
		name(&areas[i]);
	}
	if (mprotect(areas[4].p, areas[4].pages * PAGE, PROT_READ) != 0) {
		status("FAIL mprotect: %s", strerror(errno));
		exit(1);
	}
	for (int i = 0; i < 7; i++) {
		struct area *a = &areas[i];
		maps_line(a->p, a->line, sizeof(a->line));
		char shown[128];
		snprintf(shown, sizeof(shown), i == 1 ? "[anon_shmem:%s]" : "[anon:%s]", a->name);
		size_t n = strlen(a->line), m = strlen(shown);
		if (!naming_errno && (n < m || strcmp(a->line + n - m, shown) != 0)) {
			status("FAIL %s: named %s, maps shows '%s'", a->what, shown, a->line);
			exit(1);
		}
	}
}

static void verify_area(struct area *a)
{
	char now[512];
	maps_line(a->p, now, sizeof(now));
	CHECK(strcmp(now, a->line) == 0, "%s: maps line '%s', was '%s'", a->what, now, a->line);
	if (!a->seed) {
		unsigned char resident[16];
		if (mincore(a->p, a->pages * PAGE, resident) == 0)
			for (size_t i = 0; i < a->pages; i++)
				CHECK(!(resident[i] & 1), "%s: page %zu is resident, never touched before the dump", a->what, i);
	}
	for (size_t i = 0; i < a->pages * PAGE; i++) {
		unsigned char want = a->seed ? pat(a->seed, i) : 0;
		if (a->p[i] != want) {
			check_failed("%s: byte %zu is %#x, expected %#x", a->what, i, a->p[i], want);
			break;
		}
	}
	if (!a->writable)
		return;
	for (size_t i = 0; i < a->pages; i++) {
		a->p[i * PAGE + 7] ^= 0x5a;
		CHECK(a->p[i * PAGE + 7] == (unsigned char)((a->seed ? pat(a->seed, i * PAGE + 7) : 0) ^ 0x5a), "%s: write to page %zu lost",
		      a->what, i);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	set_up();
	status("READY names=%d errno=%d priv=%p shared=%p left=%p right=%p odd=%p untouched=%p longest=%p", naming_errno ? 0 : 1, naming_errno,
	       areas[0].p, areas[1].p, areas[2].p, areas[3].p, areas[4].p, areas[5].p, areas[6].p);
	while (!go_requested())
		sleep_ms(20);
	for (int i = 0; i < 7; i++)
		verify_area(&areas[i]);
	if (wl_fail_count) {
		status("FAIL %s", wl_fail_buf);
		return 1;
	}
	status("PASS %d named areas, contents, writes and maps lines as before", naming_errno ? 0 : 7);
	return 0;
}
