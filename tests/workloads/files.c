/*
 * files: open file descriptors of several kinds and their per-fd / per-description
 * state, the cwd and the umask.
 *   ro.dat    O_RDONLY|O_CLOEXEC, offset 1234
 *   append.log O_WRONLY|O_APPEND, 100 bytes written
 *   rw.dat    O_RDWR|O_DSYNC|O_NOATIME, offset 777, dup()ed (shares the offset) and
 *             F_DUPFD_CLOEXEC'ed to fd >= 50, plus an independent O_RDONLY open at 55
 *   hi.dat    at fd 100, O_RDONLY, FD_CLOEXEC, offset 42
 *   /dev/null O_RDWR, /dev/zero, /dev/urandom (O_CLOEXEC), a directory fd (the cwd)
 *   cwd = <status>.wd (created), umask 027
 * After the restore: the fd table (numbers and targets) is the same; for each fd
 * F_GETFL, F_GETFD, offset and fstat (dev, ino, rdev, mode) are the same; the dup'ed
 * fds share the offset and the independent one does not; O_APPEND appends; devices
 * work; relative paths resolve in the same cwd; umask is 027.
 */
#include "common.h"
#include <dirent.h>
#include <sys/stat.h>

#define MAXFD 16

struct fdstate {
	const char *name;
	int fd;
	int fl, fdfl;
	off_t pos;
	struct stat st;
};

static struct fdstate fds[MAXFD];
static int nfds;

static void track(const char *name, int fd)
{
	if (fd < 0)
		die("open %s: %s", name, strerror(errno));
	fds[nfds].name = name;
	fds[nfds].fd = fd;
	nfds++;
}

static void capture(struct fdstate *s)
{
	s->fl = fcntl(s->fd, F_GETFL);
	s->fdfl = fcntl(s->fd, F_GETFD);
	s->pos = lseek(s->fd, 0, SEEK_CUR);
	if (fstat(s->fd, &s->st))
		memset(&s->st, 0xff, sizeof(s->st));
}

static char fdlist_ready[16384], fdlist_now[16384];

/* "N -> target\n" for every fd, sorted by number (excluding the listing's own fd) */
static void list_fds(char *out, size_t outsz)
{
	int seen[1024] = { 0 };
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		snprintf(out, outsz, "opendir failed");
		return;
	}
	int self = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		int n = atoi(e->d_name);
		if (e->d_name[0] == '.' || n == self || n < 0 || n >= 1024)
			continue;
		seen[n] = 1;
	}
	closedir(d);
	size_t o = 0;
	out[0] = 0;
	for (int n = 0; n < 1024; n++) {
		if (!seen[n])
			continue;
		char p[64], t[4096];
		snprintf(p, sizeof(p), "/proc/self/fd/%d", n);
		ssize_t l = readlink(p, t, sizeof(t) - 1);
		t[l < 0 ? 0 : l] = 0;
		int w = snprintf(out + o, outsz - o, "%d -> %s\n", n, t);
		if (w > 0 && o + (size_t)w < outsz)
			o += (size_t)w;
	}
}

static unsigned char pat(unsigned seed, unsigned i)
{
	return (unsigned char)((i * 2654435761u) >> 13 ^ seed);
}

static void make_file(const char *name, unsigned seed, size_t size)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0666);
	if (fd < 0)
		die("create %s: %s", name, strerror(errno));
	unsigned char buf[8192];
	for (unsigned i = 0; i < size; i++)
		buf[i] = pat(seed, i);
	if (write(fd, buf, size) != (ssize_t)size)
		die("write %s", name);
	close(fd);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char wd[4200];
	snprintf(wd, sizeof(wd), "%s.wd", argv[1]);
	if (mkdir(wd, 0755) && errno != EEXIST)
		die("mkdir %s: %s", wd, strerror(errno));
	if (chdir(wd))
		die("chdir: %s", strerror(errno));
	umask(027);
	make_file("ro.dat", 1, 8192);
	make_file("rw.dat", 2, 8192);
	make_file("hi.dat", 3, 4096);

	int fd_ro = open("ro.dat", O_RDONLY | O_CLOEXEC);
	track("ro.dat O_RDONLY|O_CLOEXEC", fd_ro);
	lseek(fd_ro, 1234, SEEK_SET);

	int fd_wa = open("append.log", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0666);
	track("append.log O_WRONLY|O_APPEND", fd_wa);
	char line[101];
	memset(line, 'x', 99);
	line[99] = '\n';
	if (write(fd_wa, line, 100) != 100)
		die("write append.log");

	int fd_rw = open("rw.dat", O_RDWR | O_DSYNC | O_NOATIME);
	track("rw.dat O_RDWR|O_DSYNC|O_NOATIME", fd_rw);
	lseek(fd_rw, 777, SEEK_SET);
	int fd_dup = dup(fd_rw);
	track("dup of rw.dat", fd_dup);
	int fd_dupcx = fcntl(fd_rw, F_DUPFD_CLOEXEC, 50);
	track("F_DUPFD_CLOEXEC of rw.dat", fd_dupcx);
	int fd_rw2 = open("rw.dat", O_RDONLY);
	track("rw.dat opened again O_RDONLY", fd_rw2);
	lseek(fd_rw2, 55, SEEK_SET);

	int tmp = open("hi.dat", O_RDONLY);
	if (tmp < 0 || dup2(tmp, 100) != 100)
		die("dup2 to 100: %s", strerror(errno));
	close(tmp);
	fcntl(100, F_SETFD, FD_CLOEXEC);
	lseek(100, 42, SEEK_SET);
	track("hi.dat at fd 100", 100);

	int fd_null = open("/dev/null", O_RDWR);
	track("/dev/null", fd_null);
	int fd_zero = open("/dev/zero", O_RDONLY);
	track("/dev/zero", fd_zero);
	int fd_rand = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	track("/dev/urandom", fd_rand);
	int fd_dir = open(".", O_RDONLY | O_DIRECTORY);
	track("cwd directory fd", fd_dir);

	for (int i = 0; i < nfds; i++)
		capture(&fds[i]);
	list_fds(fdlist_ready, sizeof(fdlist_ready));
	char cwd_ready[4096] = "", umask_ready[32];
	if (!getcwd(cwd_ready, sizeof(cwd_ready)))
		die("getcwd");
	proc_status_field("Umask", umask_ready, sizeof(umask_ready));

	status("READY fds=%d cwd=%s umask=%s", nfds, cwd_ready, umask_ready);

	while (!go_requested())
		sleep_ms(5);

	list_fds(fdlist_now, sizeof(fdlist_now));
	CHECK(strcmp(fdlist_ready, fdlist_now) == 0, "fd table: expected [%s] got [%s]",
	      fdlist_ready, fdlist_now);
	for (int i = 0; i < nfds; i++) {
		struct fdstate now = fds[i];
		capture(&now);
		struct fdstate *r = &fds[i];
		CHECK(now.fl == r->fl, "fd %d (%s) F_GETFL: expected 0%o got 0%o", r->fd, r->name,
		      r->fl, now.fl);
		CHECK(now.fdfl == r->fdfl, "fd %d (%s) F_GETFD: expected %d got %d", r->fd, r->name,
		      r->fdfl, now.fdfl);
		CHECK(now.pos == r->pos, "fd %d (%s) offset: expected %lld got %lld", r->fd, r->name,
		      (long long)r->pos, (long long)now.pos);
		CHECK(now.st.st_dev == r->st.st_dev && now.st.st_ino == r->st.st_ino,
		      "fd %d (%s) file: expected dev %lu ino %lu got dev %lu ino %lu", r->fd, r->name,
		      (unsigned long)r->st.st_dev, (unsigned long)r->st.st_ino,
		      (unsigned long)now.st.st_dev, (unsigned long)now.st.st_ino);
		CHECK(now.st.st_rdev == r->st.st_rdev && now.st.st_mode == r->st.st_mode,
		      "fd %d (%s): expected rdev %lu mode 0%o got rdev %lu mode 0%o", r->fd, r->name,
		      (unsigned long)r->st.st_rdev, r->st.st_mode, (unsigned long)now.st.st_rdev,
		      now.st.st_mode);
	}

	/* contents at the restored offset */
	unsigned char b[16];
	CHECK(read(fd_ro, b, 10) == 10 && b[0] == pat(1, 1234) && b[9] == pat(1, 1243),
	      "ro.dat: read at offset 1234 returned wrong data");
	CHECK(lseek(fd_ro, 0, SEEK_CUR) == 1244, "ro.dat offset after reading 10 bytes: %lld",
	      (long long)lseek(fd_ro, 0, SEEK_CUR));
	CHECK(read(100, b, 4) == 4 && b[0] == pat(3, 42), "fd 100: read at offset 42 returned wrong data");

	/* O_APPEND */
	struct stat st;
	CHECK(write(fd_wa, "after\n", 6) == 6, "append.log write failed: %s", strerror(errno));
	fstat(fd_wa, &st);
	CHECK(st.st_size == 106, "append.log size after append: expected 106 got %lld",
	      (long long)st.st_size);
	CHECK(stat("append.log", &st) == 0 && (st.st_mode & 0777) == 0640,
	      "append.log mode: expected 0640 (umask 027) got 0%o", st.st_mode & 0777);

	/* shared vs independent offsets */
	lseek(fd_rw, 4000, SEEK_SET);
	CHECK(lseek(fd_dup, 0, SEEK_CUR) == 4000, "dup'ed fd %d does not share the offset of fd %d (%lld)",
	      fd_dup, fd_rw, (long long)lseek(fd_dup, 0, SEEK_CUR));
	CHECK(lseek(fd_dupcx, 0, SEEK_CUR) == 4000,
	      "F_DUPFD_CLOEXEC fd %d does not share the offset of fd %d (%lld)", fd_dupcx, fd_rw,
	      (long long)lseek(fd_dupcx, 0, SEEK_CUR));
	CHECK(lseek(fd_rw2, 0, SEEK_CUR) == 55,
	      "independently opened fd %d moved with fd %d: offset %lld, expected 55", fd_rw2, fd_rw,
	      (long long)lseek(fd_rw2, 0, SEEK_CUR));
	CHECK(write(fd_rw, "W", 1) == 1, "rw.dat write failed: %s", strerror(errno));

	/* devices */
	CHECK(write(fd_null, "abc", 3) == 3, "/dev/null write failed");
	memset(b, 1, sizeof(b));
	CHECK(read(fd_zero, b, 16) == 16 && b[0] == 0 && b[15] == 0, "/dev/zero did not read zeros");
	unsigned char r1[16] = { 0 }, zero[16] = { 0 };
	CHECK(read(fd_rand, r1, 16) == 16 && memcmp(r1, zero, 16) != 0, "/dev/urandom read failed");

	/* cwd and umask */
	char cwd[4096] = "";
	CHECK(getcwd(cwd, sizeof(cwd)) && strcmp(cwd, cwd_ready) == 0,
	      "cwd: expected '%s' got '%s'", cwd_ready, cwd);
	char link[4096];
	ssize_t l = readlink("/proc/self/cwd", link, sizeof(link) - 1);
	link[l < 0 ? 0 : l] = 0;
	CHECK(strcmp(link, cwd_ready) == 0, "/proc/self/cwd: expected '%s' got '%s'", cwd_ready, link);
	l = readlink("/proc/self/root", link, sizeof(link) - 1);
	link[l < 0 ? 0 : l] = 0;
	CHECK(strcmp(link, "/") == 0, "/proc/self/root: expected '/' got '%s'", link);
	CHECK(fstatat(fd_dir, "ro.dat", &st, 0) == 0 && st.st_ino == fds[0].st.st_ino,
	      "ro.dat not found relative to the directory fd");
	char um[32];
	proc_status_field("Umask", um, sizeof(um));
	CHECK_EQ_S("Umask in /proc/self/status", umask_ready, um);
	mode_t old = umask(022);
	umask(old);
	CHECK(old == 027, "umask: expected 027 got 0%o", old);

	finish("%d fds, cwd and umask as before", nfds);
}
