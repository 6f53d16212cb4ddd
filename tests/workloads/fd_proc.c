/*
 * fd_proc: files under /proc open when dumped.
 *
 *   child:   opens /proc/self/status at fd 30 and reads 10 bytes from it (offset 10);
 *   parent:  forks the child, then opens /proc/<child>/stat at fd 31 (a file of a process it
 *            created, which restore creates after it), and /proc/sys/kernel/ostype at fd 32.
 *   READY parent pid=N child=N
 *
 * After <status>.go:
 *   child:   fd 30 is at offset 10; read from the start it says "Name:\tfd_proc" and
 *            "Pid:\t<its pid>";
 *   parent:  fd 31 read from the start gives "<child pid> (fd_proc) "; fd 32 gives "Linux\n".
 */
#include "usock_common.h"

static void read_all(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);
	buf[n > 0 ? n : 0] = 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		int f = open("/proc/self/status", O_RDONLY);
		char head[16];
		if (f < 0 || dup2(f, 30) < 0 || read(30, head, 10) != 10)
			die("child: /proc/self/status: %s", strerror(errno));
		close(f);
		status("STAGE child-ready");
		wait_go();
		CHECK_EQ_U("child: offset of its status file", 10, lseek(30, 0, SEEK_CUR));
		char buf[4096], want[64];
		read_all(30, buf, sizeof(buf));
		snprintf(want, sizeof(want), "\nPid:\t%d\n", (int)getpid());
		CHECK(strncmp(buf, "Name:\tfd_proc\n", 14) == 0 && strstr(buf, want), "child: its status file reads '%.80s'", buf);
		role_finish();
	}
	wait_for_status("STAGE child-ready");
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)child);
	int s = open(path, O_RDONLY);
	int o = open("/proc/sys/kernel/ostype", O_RDONLY);
	if (s < 0 || o < 0 || dup2(s, 31) < 0 || dup2(o, 32) < 0)
		die("parent: opening %s: %s", path, strerror(errno));
	close(s);
	close(o);
	status("READY parent pid=%d child=%d", my_pid, (int)child);
	wait_go();
	char buf[4096], want[64];
	read_all(31, buf, sizeof(buf));
	snprintf(want, sizeof(want), "%d (fd_proc) ", (int)child);
	CHECK(strncmp(buf, want, strlen(want)) == 0, "parent: the child's stat reads '%.60s', expected '%s...'", buf, want);
	read_all(32, buf, sizeof(buf));
	CHECK_EQ_S("parent: ostype", "Linux\n", buf);
	reap("child", child);
	role_finish();
}
