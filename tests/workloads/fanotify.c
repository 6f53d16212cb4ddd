/*
 * fanotify: a notification group (FAN_CLASS_NOTIF, non-blocking, event fds opened
 * O_RDONLY|O_LARGEFILE) with three inode marks:
 *
 *   <status>.f        FAN_MODIFY|FAN_CLOSE_WRITE
 *   <status>.d        FAN_OPEN|FAN_EVENT_ON_CHILD (opens of the files in it)
 *   <status>.d/quiet  only an ignore mask, FAN_OPEN, surviving modification: opening it
 *                     makes no event
 *   <status>.d/quiet2 the same with FAN_MARK_IGNORE (the newer kind of ignore mask)
 *   <status>.e        FAN_MODIFY, FAN_MARK_EVICTABLE
 *
 * With argv[2] "fid": a group reporting directory file handles and names
 * (FAN_REPORT_DFID_NAME) with a mark on <status>.d for FAN_CREATE: after the restore,
 * creating <status>.d/new gives one FAN_CREATE event without an fd, naming "new".
 *
 * With argv[2] "mount" or "fs" and argv[3] a directory on a file system of its own, only a
 * mount mark (FAN_CLOSE_WRITE) or a filesystem mark (FAN_OPEN) on it: after the restore,
 * writing ARGV3/w (or opening ARGV3/o) gives that one event for it. "perm": a group of
 * permission events (FAN_CLASS_CONTENT); "queued": an event left unread; "shared": the group
 * shared with a child, whose pid READY gives (crust refuses each, dumping the child).
 *
 *   READY pid=N fan=FD
 *
 * After <status>.go: nothing queued; writing to .f and closing it gives FAN_MODIFY and
 * FAN_CLOSE_WRITE (merged into one event) for .f from this pid (the event's fd is .f); opening .d/quiet gives
 * nothing, then opening .d/other gives FAN_OPEN for it; nothing else.
 */
#include "common.h"
#include <sys/fanotify.h>
#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x00000400
#endif
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char file[4200], dir[4200], quiet[4300], other[4300], quiet2[4300], evict[4200], on_fs[4300];

static void mark(int fan, unsigned flags, uint64_t mask, const char *path)
{
	if (fanotify_mark(fan, FAN_MARK_ADD | flags, mask, AT_FDCWD, path) < 0)
		die("fanotify_mark(%s): %s", path, strerror(errno));
}

static void touch(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		die("creating %s: %s", path, strerror(errno));
	close(fd);
}

static void drain(int fan)
{
	char buf[4096] __attribute__((aligned(8)));
	ssize_t k;
	while ((k = read(fan, buf, sizeof(buf))) > 0)
		for (struct fanotify_event_metadata *ev = (void *)buf; FAN_EVENT_OK(ev, k); ev = FAN_EVENT_NEXT(ev, k))
			if (ev->fd >= 0)
				close(ev->fd);
}

/* The events queued now, as "mask:path ..." (waits up to 1 s for the first one) */
static void events(int fan, char *out, size_t n)
{
	char buf[4096] __attribute__((aligned(8)));
	out[0] = 0;
	ssize_t k = -1;
	for (int i = 0; i < 100 && k < 0; i++) {
		k = read(fan, buf, sizeof(buf));
		if (k < 0)
			sleep_ms(10);
	}
	for (struct fanotify_event_metadata *ev = (void *)buf; k > 0 && FAN_EVENT_OK(ev, k); ev = FAN_EVENT_NEXT(ev, k)) {
		char link[64], path[4300] = "";
		snprintf(link, sizeof(link), "/proc/self/fd/%d", ev->fd);
		ssize_t l = readlink(link, path, sizeof(path) - 1);
		path[l > 0 ? l : 0] = 0;
		size_t used = strlen(out);
		snprintf(out + used, n - used, "%s%llx:%s%s", used ? " " : "", (unsigned long long)ev->mask, path,
			 ev->pid == getpid() ? "" : "(another pid)");
		close(ev->fd);
	}
}

/* A group reporting directory handles and names: one FAN_CREATE for "new" after the restore. */
static int fid_group(void)
{
	int fan = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY);
	if (fan < 0)
		die("fanotify_init(FAN_REPORT_DFID_NAME): %s", strerror(errno));
	mark(fan, 0, FAN_CREATE | FAN_ONDIR, dir);
	status("READY pid=%d fan=%d", getpid(), fan);
	while (!go_requested())
		sleep_ms(10);
	int queued = -1;
	ioctl(fan, FIONREAD, &queued);
	CHECK(queued == 0, "%d bytes of events queued after restore", queued);
	char path[4400];
	snprintf(path, sizeof(path), "%s/new", dir);
	touch(path);
	char buf[4096] __attribute__((aligned(8)));
	ssize_t k = -1;
	for (int i = 0; i < 100 && k < 0; i++) {
		k = read(fan, buf, sizeof(buf));
		if (k < 0)
			sleep_ms(10);
	}
	struct fanotify_event_metadata *ev = (void *)buf;
	CHECK(k > 0 && FAN_EVENT_OK(ev, k), "no event after a create (%zd)", k);
	if (k > 0 && FAN_EVENT_OK(ev, k)) {
		CHECK(ev->mask == FAN_CREATE && ev->fd == FAN_NOFD, "event mask %llx fd %d", (unsigned long long)ev->mask, ev->fd);
		struct fanotify_event_info_fid *fid = (void *)(ev + 1);
		struct file_handle *fh = (void *)fid->handle;
		const char *name = (const char *)fh->f_handle + fh->handle_bytes;
		CHECK(fid->hdr.info_type == FAN_EVENT_INFO_TYPE_DFID_NAME && !strcmp(name, "new"), "event info type %d name %s",
		      fid->hdr.info_type, name);
		CHECK(k == (ssize_t)ev->event_len, "%zd bytes of events, the first is %u: more than one event", k, ev->event_len);
	}
	finish("fanotify fid");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	int mount_mark = !strcmp(mode, "mount");
	unsigned class = !strcmp(mode, "perm") ? FAN_CLASS_CONTENT : FAN_CLASS_NOTIF;
	snprintf(file, sizeof(file), "%s.f", argv[1]);
	snprintf(dir, sizeof(dir), "%s.d", argv[1]);
	snprintf(quiet, sizeof(quiet), "%s/quiet", dir);
	snprintf(other, sizeof(other), "%s/other", dir);
	snprintf(quiet2, sizeof(quiet2), "%s/quiet2", dir);
	snprintf(evict, sizeof(evict), "%s.e", argv[1]);
	if (mkdir(dir, 0755) < 0)
		die("mkdir %s: %s", dir, strerror(errno));
	touch(file);
	touch(quiet);
	touch(other);
	touch(quiet2);
	touch(evict);
	if (!strcmp(mode, "fid"))
		return fid_group();
	int fan = fanotify_init(class | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
	if (fan < 0)
		die("fanotify_init: %s", strerror(errno));
	if (mount_mark || !strcmp(mode, "fs")) {
		if (argc < 4)
			die("mode %s needs a directory", mode);
		snprintf(on_fs, sizeof(on_fs), "%s/%s", argv[3], mount_mark ? "w" : "o");
		touch(on_fs);
		mark(fan, mount_mark ? FAN_MARK_MOUNT : FAN_MARK_FILESYSTEM, mount_mark ? FAN_CLOSE_WRITE : FAN_OPEN, argv[3]);
	} else {
		mark(fan, 0, FAN_MODIFY | FAN_CLOSE_WRITE, file);
		mark(fan, 0, FAN_OPEN | FAN_EVENT_ON_CHILD, dir);
		mark(fan, FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, quiet);
		mark(fan, FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, quiet2);
		mark(fan, FAN_MARK_EVICTABLE, FAN_MODIFY, evict);
	}
	drain(fan);
	if (!strcmp(mode, "queued"))
		touch(other);
	if (!strcmp(mode, "shared")) {
		pid_t child = fork();
		if (child == 0) {
			status("READY pid=%d fan=%d", getpid(), fan);
			while (!go_requested())
				sleep_ms(10);
			_exit(0);
		}
		int st;
		waitpid(child, &st, 0);
		finish("shared group");
	}
	status("READY pid=%d fan=%d", getpid(), fan);
	while (!go_requested())
		sleep_ms(10);

	int queued = -1;
	ioctl(fan, FIONREAD, &queued);
	CHECK(queued == 0, "%d bytes of events queued after restore", queued);
	CHECK((fcntl(fan, F_GETFL) & O_NONBLOCK) != 0, "the group lost O_NONBLOCK");
	char out[2048], want[9000];
	if (*on_fs) {
		int t = open(on_fs, (mount_mark ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
		if (t < 0 || (mount_mark && write(t, "x", 1) != 1))
			check_failed("using %s: %s", on_fs, strerror(errno));
		if (t >= 0)
			close(t);
		sleep_ms(50);
		events(fan, out, sizeof(out));
		snprintf(want, sizeof(want), "%x:%s", mount_mark ? FAN_CLOSE_WRITE : FAN_OPEN, on_fs);
		CHECK(strcmp(out, want) == 0, "%s mark: events [%s], expected [%s]", mode, out, want);
		finish("fanotify %s mark", mode);
	}
	int w = open(file, O_WRONLY | O_CLOEXEC);
	if (w < 0 || write(w, "x", 1) != 1)
		check_failed("writing %s: %s", file, strerror(errno));
	if (w >= 0)
		close(w);
	sleep_ms(50);
	events(fan, out, sizeof(out));
	snprintf(want, sizeof(want), "%x:%s", FAN_MODIFY | FAN_CLOSE_WRITE, file);
	CHECK(strcmp(out, want) == 0, "write to the file: events [%s], expected [%s]", out, want);
	for (int i = 0; i < 2; i++) {
		int q = open(i ? quiet2 : quiet, O_RDONLY | O_CLOEXEC);
		if (q >= 0)
			close(q);
	}
	int o = open(other, O_RDONLY | O_CLOEXEC);
	if (o >= 0)
		close(o);
	sleep_ms(50);
	events(fan, out, sizeof(out));
	snprintf(want, sizeof(want), "%x:%s", FAN_OPEN, other);
	CHECK(strcmp(out, want) == 0, "opens in the directory: events [%s], expected [%s]", out, want);
	finish("fanotify");
}
