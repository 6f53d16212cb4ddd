/*
 * tree_sharedfd: open file descriptions shared across fork, and ones that are not.
 *
 * Before READY:
 *   parent opens <status>.data O_RDWR as fd S, writes DATA_LEN bytes, seeks to 100, forks.
 *   child reads 50 bytes from S: the shared offset is 150 for both (checked by the parent).
 *   parent opens <status>.data O_RDONLY as fd IP and seeks to 10; the child opens the same
 *   file itself as fd IC and seeks to 20: two independent descriptions.
 *   parent also opens <status>.data2 O_WRONLY|O_APPEND as fd A before the fork (shared,
 *   flags set at open time).
 *
 *   READY child pid=N s=S ic=IC a=A
 *   READY parent pid=N child=N s=S ip=IP a=A
 *
 * After <status>.go (the two processes take turns through STEP lines):
 *   child:  S at 150 without O_APPEND/O_NONBLOCK, IC at 20, A has O_APPEND;
 *           seeks S to 777, sets O_NONBLOCK on S, seeks IC to 300 -> "STEP child-moved"
 *   parent: S at 777 with O_NONBLOCK (the child's change), IP still at 10 without
 *           O_NONBLOCK; sets O_APPEND on S, seeks S to 999 -> "STEP parent-moved"
 *   child:  S at 999 with O_APPEND|O_NONBLOCK, IC still at 300 without O_APPEND;
 *           PASS child, exit 0
 *   parent: reaps the child (exit 0), PASS parent.
 */
#include "tree_common.h"

#define DATA_LEN 4096


static long off(int fd)
{
	return (long)lseek(fd, 0, SEEK_CUR);
}

static int fl(int fd)
{
	return fcntl(fd, F_GETFL);
}

static void set_fl(int fd, int add)
{
	int f = fcntl(fd, F_GETFL);
	if (f < 0 || fcntl(fd, F_SETFL, f | add) < 0)
		check_failed("%s: F_SETFL on fd %d: %s", role, fd, strerror(errno));
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char data[4300], data2[4300];
	snprintf(data, sizeof(data), "%s.data", wl_status);
	snprintf(data2, sizeof(data2), "%s.data2", wl_status);
	int s = open(data, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (s < 0)
		die("open %s: %s", data, strerror(errno));
	char buf[DATA_LEN];
	for (int i = 0; i < DATA_LEN; i++)
		buf[i] = (char)('a' + i % 26);
	if (write(s, buf, DATA_LEN) != DATA_LEN)
		die("write %s: %s", data, strerror(errno));
	lseek(s, 100, SEEK_SET);
	int a = open(data2, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (a < 0)
		die("open %s: %s", data2, strerror(errno));
	remember("parent");

	pid_t child = fork_as("child");
	if (child == 0) {
		char got[50];
		if (read(s, got, 50) != 50 || memcmp(got, buf + 100, 50) != 0)
			die("child: read of 50 bytes at offset 100 of the shared fd failed");
		int ic = open(data, O_RDONLY | O_CLOEXEC);
		if (ic < 0)
			die("child: open %s: %s", data, strerror(errno));
		lseek(ic, 20, SEEK_SET);
		status("READY child pid=%d s=%d ic=%d a=%d", my_pid, s, ic, a);
		wait_for_go();

		check_ids();
		CHECK(off(s) == 150, "child: shared fd %d at offset %ld, expected 150", s, off(s));
		CHECK(!(fl(s) & (O_APPEND | O_NONBLOCK)), "child: shared fd %d has flags 0%o before anyone set them", s,
		      fl(s));
		CHECK((fl(s) & O_ACCMODE) == O_RDWR, "child: shared fd %d access mode 0%o, expected O_RDWR", s,
		      fl(s) & O_ACCMODE);
		CHECK(off(ic) == 20, "child: own fd %d at offset %ld, expected 20", ic, off(ic));
		CHECK(fl(a) & O_APPEND, "child: fd %d lost O_APPEND (flags 0%o)", a, fl(a));
		lseek(s, 777, SEEK_SET);
		set_fl(s, O_NONBLOCK);
		lseek(ic, 300, SEEK_SET);
		status("STEP child-moved");
		if (!wait_for_step("parent-moved"))
			role_finish();
		CHECK(off(s) == 999, "child: shared fd %d at offset %ld after the parent's seek to 999", s, off(s));
		CHECK(fl(s) & O_APPEND, "child: shared fd %d lacks O_APPEND the parent set (flags 0%o)", s, fl(s));
		CHECK(fl(s) & O_NONBLOCK, "child: shared fd %d lost its O_NONBLOCK (flags 0%o)", s, fl(s));
		CHECK(off(ic) == 300, "child: own fd %d at offset %ld, expected 300", ic, off(ic));
		CHECK(!(fl(ic) & (O_APPEND | O_NONBLOCK)), "child: own fd %d got flags 0%o from someone else", ic, fl(ic));
		role_finish();
	}

	await_ready("child", child);
	if (off(s) != 150)
		die("parent: before the dump, the shared fd is at %ld after the child read 50 bytes (expected 150)",
		    off(s));
	int ip = open(data, O_RDONLY | O_CLOEXEC);
	if (ip < 0)
		die("open %s: %s", data, strerror(errno));
	lseek(ip, 10, SEEK_SET);
	status("READY parent pid=%d child=%d s=%d ip=%d a=%d", my_pid, child, s, ip, a);
	wait_for_go();

	check_ids();
	if (wait_for_step("child-moved")) {
		CHECK(off(s) == 777, "parent: shared fd %d at offset %ld after the child's seek to 777", s, off(s));
		CHECK(fl(s) & O_NONBLOCK, "parent: shared fd %d lacks O_NONBLOCK the child set (flags 0%o)", s, fl(s));
		CHECK(off(ip) == 10, "parent: own fd %d at offset %ld, expected 10", ip, off(ip));
		CHECK(!(fl(ip) & (O_APPEND | O_NONBLOCK)), "parent: own fd %d got flags 0%o from someone else", ip,
		      fl(ip));
		CHECK(fl(a) & O_APPEND, "parent: fd %d lost O_APPEND (flags 0%o)", a, fl(a));
		set_fl(s, O_APPEND);
		lseek(s, 999, SEEK_SET);
	}
	status("STEP parent-moved");
	reap("child", child);
	role_finish();
}
