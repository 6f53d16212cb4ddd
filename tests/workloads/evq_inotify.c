/*
 * evq_inotify: an inotify watching a directory and a file, with watch descriptor numbers
 * that do not start at 1 and have a gap, inside an epoll.
 *
 *   <status>.d   directory, watched IN_CREATE|IN_OPEN|IN_DELETE|IN_EXCL_UNLINK   (wd 3)
 *   <status>.d/held  kept open O_RDWR (an fd after the inotify's): restore opens it again
 *                after the inotify exists, which must not show up as an event
 *   <status>.f   file, watched IN_MODIFY|IN_ONESHOT                        (wd 5)
 *   wds 1, 2 and 4 were used by watches that were removed again; their IN_IGNORED events
 *   were read. The inotify is O_NONBLOCK and registered in epoll E (EPOLLIN, DI).
 *
 *   READY pid=N in=FD e=FD wdir=3 wfile=5
 *
 * After <status>.go: nothing queued (FIONREAD 0) and E reports nothing; creating
 * <status>.d/new makes E report DI and the inotify deliver IN_CREATE and IN_OPEN "new" for
 * wd 3; writing
 * to <status>.f delivers IN_MODIFY for wd 5 and then IN_IGNORED for wd 5 (one-shot); a new
 * watch gets wd 6, as it would have without the checkpoint.
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#define DI 0x1a0f000000000001ULL

static char dir[4200], file[4200], other[4200];

static int add(int in, const char *path, uint32_t mask)
{
	int wd = inotify_add_watch(in, path, mask);
	if (wd < 0)
		die("inotify_add_watch(%s): %s", path, strerror(errno));
	return wd;
}

static void drain(int in)
{
	char buf[4096];
	while (read(in, buf, sizeof(buf)) > 0)
		;
}

/* Reads one batch of events; returns them as "wd:mask:name ..." */
static void events(int in, char *out, size_t n)
{
	char buf[4096] __attribute__((aligned(8)));
	out[0] = 0;
	ssize_t k = read(in, buf, sizeof(buf));
	for (char *p = buf; k > 0 && p < buf + k;) {
		struct inotify_event *ev = (struct inotify_event *)p;
		size_t l = strlen(out);
		snprintf(out + l, n - l, "%s%d:%x:%s", l ? " " : "", ev->wd, ev->mask, ev->len ? ev->name : "");
		p += sizeof(*ev) + ev->len;
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	snprintf(dir, sizeof(dir), "%s.d", argv[1]);
	snprintf(file, sizeof(file), "%s.f", argv[1]);
	snprintf(other, sizeof(other), "%s.o", argv[1]);
	if (mkdir(dir, 0755) < 0)
		die("mkdir %s: %s", dir, strerror(errno));
	int f = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	int o = open(other, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (f < 0 || o < 0)
		die("creating files: %s", strerror(errno));
	close(f);
	close(o);
	int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (in < 0)
		die("inotify_init1: %s", strerror(errno));
	int w1 = add(in, dir, IN_ATTRIB), w2 = add(in, file, IN_ATTRIB);
	inotify_rm_watch(in, w1);
	inotify_rm_watch(in, w2);
	int wdir = add(in, dir, IN_CREATE | IN_OPEN | IN_DELETE | IN_EXCL_UNLINK);
	int w4 = add(in, other, IN_ATTRIB);
	inotify_rm_watch(in, w4);
	int wfile = add(in, file, IN_MODIFY | IN_ONESHOT);
	char held[4300];
	snprintf(held, sizeof(held), "%s/held", dir);
	int h = open(held, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (h < 0 || h < in)
		die("opening %s: fd %d: %s", held, h, strerror(errno));
	drain(in);
	if (wdir != 3 || wfile != 5)
		die("setup: watch descriptors %d and %d, expected 3 and 5", wdir, wfile);
	int e = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = DI };
	if (e < 0 || epoll_ctl(e, EPOLL_CTL_ADD, in, &ev) < 0)
		die("epoll: %s", strerror(errno));

	status("READY pid=%d in=%d e=%d wdir=%d wfile=%d", getpid(), in, e, wdir, wfile);
	while (!go_requested())
		sleep_ms(10);

	int queued = -1;
	ioctl(in, FIONREAD, &queued);
	CHECK(queued == 0, "%d bytes of events queued after restore", queued);
	struct epoll_event got[4];
	CHECK(epoll_wait(e, got, 4, 0) == 0, "epoll reports the inotify ready before anything happened");
	CHECK((fcntl(in, F_GETFL) & O_NONBLOCK) != 0, "inotify lost O_NONBLOCK");

	char path[4300], out[1024], want[256];
	snprintf(path, sizeof(path), "%s/new", dir);
	int n = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (n >= 0)
		close(n);
	int k = epoll_wait(e, got, 4, 1000);
	CHECK(k == 1 && got[0].data.u64 == DI, "epoll: %d events (data %llx) after a create in the directory", k,
	      k > 0 ? (unsigned long long)got[0].data.u64 : 0ULL);
	events(in, out, sizeof(out));
	snprintf(want, sizeof(want), "%d:%x:new %d:%x:new", wdir, IN_CREATE, wdir, IN_OPEN);
	CHECK(strcmp(out, want) == 0, "create in the directory: events [%s], expected [%s]", out, want);

	int w = open(file, O_WRONLY | O_CLOEXEC);
	if (w < 0 || write(w, "x", 1) != 1)
		check_failed("writing %s: %s", file, strerror(errno));
	if (w >= 0)
		close(w);
	events(in, out, sizeof(out));
	snprintf(want, sizeof(want), "%d:%x: %d:%x:", wfile, IN_MODIFY, wfile, IN_IGNORED);
	CHECK(strcmp(out, want) == 0, "write to the file: events [%s], expected [%s]", out, want);

	int next = inotify_add_watch(in, other, IN_ATTRIB);
	CHECK(next == 6, "a new watch got wd %d, expected 6", next);
	finish("inotify");
}
