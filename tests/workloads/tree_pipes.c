/*
 * tree_pipes: pipes between a parent and its child, with data in flight.
 *
 *   parent ── child ── grandchild (holds no pipe end at all)
 *
 *   P1 parent -> child: the parent writes P1_LEN bytes; the child does not read them
 *      before <status>.go. Default buffer size.
 *   P2 child -> parent: buffer enlarged with F_SETPIPE_SZ to P2_SIZE (by the parent,
 *      before the fork); the child writes P2_LEN bytes, more than a default pipe holds,
 *      so they only fit in the enlarged buffer. The parent's read end is O_NONBLOCK.
 *   Each process closes the ends it does not use; the grandchild closes all of them.
 *
 *   READY grandchild pid=N
 *   READY child pid=N p1r=FD p2w=FD p1size=N p2size=N
 *   READY parent pid=N child=N grandchild=N p1w=FD p2r=FD p1size=N p2size=N
 *
 * After <status>.go:
 *   parent: pipe sizes as before, P2 still holds P2_LEN bytes (FIONREAD), flags as before;
 *           closes its P1 write end, then reads P2 to EOF (within 5 s): exactly the P2_LEN
 *           bytes written, then EOF. Reaps the child.
 *   child:  pipe sizes as before, P1 holds P1_LEN bytes; reads P1 to EOF (within 5 s):
 *           exactly the parent's bytes, then EOF (no write end of P1 may remain open in
 *           any process once the parent closed its own); closes its P2 write end, reaps
 *           the grandchild.
 *   grandchild: has no pipe fd (checked in /proc/self/fd).
 */
#include "tree_common.h"
#include <dirent.h>
#include <poll.h>
#include <sys/ioctl.h>

#define P1_LEN 5000
#define P2_LEN 100000
#define P2_SIZE (256 * 1024)

static unsigned char byte_at(unsigned seed, size_t i)
{
	return (unsigned char)((i * 131 + seed + (i >> 8)) & 0xff);
}

static void write_all(int fd, unsigned seed, size_t len)
{
	static unsigned char buf[P2_LEN];
	for (size_t i = 0; i < len; i++)
		buf[i] = byte_at(seed, i);
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, buf + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("%s: write to pipe fd %d after %zu of %zu bytes: %s", role, fd, off, len,
			    w < 0 ? strerror(errno) : "0");
		off += (size_t)w;
	}
}

/* Reads `fd` until EOF or `timeout` s; checks it got exactly `len` bytes of `seed`. */
static void read_to_eof(const char *what, int fd, unsigned seed, size_t len, double timeout)
{
	static unsigned char buf[P2_LEN + 4096];
	size_t got = 0;
	double deadline = mono_now() + timeout;
	for (;;) {
		double left = deadline - mono_now();
		if (left <= 0) {
			check_failed("%s: no EOF on %s (fd %d) within %.0f s after %zu bytes: a write end is still open "
				     "somewhere",
				     role, what, fd, timeout, got);
			return;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, (int)(left * 1000) + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		ssize_t n = read(fd, buf + got, sizeof(buf) - got);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0) {
			check_failed("%s: read %s: %s", role, what, strerror(errno));
			return;
		}
		if (n == 0)
			break;
		got += (size_t)n;
		if (got == sizeof(buf))
			break;
	}
	CHECK(got == len, "%s: %s delivered %zu bytes before EOF, expected %zu", role, what, got, len);
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < got && i < len; i++)
		if (buf[i] != byte_at(seed, i) && bad++ == 0)
			first = i;
	CHECK(bad == 0, "%s: %s: %zu bytes differ, first at %zu", role, what, bad, first);
}

static int pipe_fds_open(char *list, size_t n)
{
	int count = 0;
	list[0] = 0;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	struct dirent *e;
	while ((e = readdir(d))) {
		char path[300], target[256];
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t k = readlink(path, target, sizeof(target) - 1);
		if (k <= 0)
			continue;
		target[k] = 0;
		if (strncmp(target, "pipe:", 5) == 0) {
			count++;
			size_t l = strlen(list);
			snprintf(list + l, n - l, " fd %s=%s", e->d_name, target);
		}
	}
	closedir(d);
	return count;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int p1[2], p2[2];
	if (pipe2(p1, O_CLOEXEC) < 0 || pipe2(p2, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));
	if (fcntl(p2[0], F_SETPIPE_SZ, P2_SIZE) < 0)
		die("F_SETPIPE_SZ %d: %s", P2_SIZE, strerror(errno));
	int p1size = fcntl(p1[0], F_GETPIPE_SZ), p2size = fcntl(p2[0], F_GETPIPE_SZ);
	if (p2size < P2_LEN || p1size >= P2_LEN)
		die("pipe sizes %d/%d do not suit the test", p1size, p2size);
	remember("parent");

	pid_t child = fork_as("child");
	if (child == 0) {
		close(p1[1]);
		close(p2[0]);
		write_all(p2[1], 2, P2_LEN);
		pid_t gc = fork_as("grandchild");
		if (gc == 0) {
			close(p1[0]);
			close(p2[1]);
			status("READY grandchild pid=%d", my_pid);
			wait_for_go();
			check_ids();
			char list[1024];
			int n = pipe_fds_open(list, sizeof(list));
			CHECK(n == 0, "grandchild: holds %d pipe fds:%s", n, list);
			role_finish();
		}
		await_ready("grandchild", 0);
		status("READY child pid=%d p1r=%d p2w=%d p1size=%d p2size=%d grandchild=%d", my_pid, p1[0], p2[1],
		       p1size, p2size, gc);
		wait_for_go();

		check_ids();
		CHECK(fcntl(p1[0], F_GETPIPE_SZ) == p1size, "child: P1 size %d, was %d", fcntl(p1[0], F_GETPIPE_SZ),
		      p1size);
		CHECK(fcntl(p2[1], F_GETPIPE_SZ) == p2size, "child: P2 size %d, was %d", fcntl(p2[1], F_GETPIPE_SZ),
		      p2size);
		CHECK((fcntl(p1[0], F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_RDONLY, "child: P1 read end flags 0%o",
		      fcntl(p1[0], F_GETFL));
		CHECK((fcntl(p2[1], F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY, "child: P2 write end flags 0%o",
		      fcntl(p2[1], F_GETFL));
		CHECK(fcntl(p1[0], F_GETFD) == FD_CLOEXEC, "child: P1 read end lost FD_CLOEXEC");
		int avail = -1;
		ioctl(p1[0], FIONREAD, &avail);
		CHECK(avail == P1_LEN, "child: P1 holds %d bytes, expected %d", avail, P1_LEN);
		read_to_eof("P1", p1[0], 1, P1_LEN, 5);
		close(p2[1]);
		reap("grandchild", gc);
		role_finish();
	}
	close(p1[0]);
	close(p2[1]);
	write_all(p1[1], 1, P1_LEN);
	int fl = fcntl(p2[0], F_GETFL);
	fcntl(p2[0], F_SETFL, fl | O_NONBLOCK);
	await_ready("child", child);
	int avail = -1;
	ioctl(p2[0], FIONREAD, &avail);
	if (avail != P2_LEN)
		die("parent: P2 holds %d bytes before the dump, expected %d", avail, P2_LEN);
	status("READY parent pid=%d child=%d p1w=%d p2r=%d p1size=%d p2size=%d", my_pid, child, p1[1], p2[0], p1size,
	       p2size);
	wait_for_go();

	check_ids();
	CHECK(fcntl(p1[1], F_GETPIPE_SZ) == p1size, "parent: P1 size %d, was %d", fcntl(p1[1], F_GETPIPE_SZ), p1size);
	CHECK(fcntl(p2[0], F_GETPIPE_SZ) == p2size, "parent: P2 size %d, was %d", fcntl(p2[0], F_GETPIPE_SZ), p2size);
	CHECK((fcntl(p1[1], F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY, "parent: P1 write end flags 0%o",
	      fcntl(p1[1], F_GETFL));
	CHECK((fcntl(p2[0], F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK),
	      "parent: P2 read end flags 0%o, expected O_RDONLY|O_NONBLOCK", fcntl(p2[0], F_GETFL));
	avail = -1;
	ioctl(p2[0], FIONREAD, &avail);
	CHECK(avail == P2_LEN, "parent: P2 holds %d bytes, expected %d", avail, P2_LEN);
	close(p1[1]);
	read_to_eof("P2", p2[0], 2, P2_LEN, 10); /* the child closes P2 after its own P1 wait */
	reap("child", child);
	role_finish();
}
