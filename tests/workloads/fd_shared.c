/*
 * fd_shared: processes sharing one fd table (clone CLONE_FILES) or one filesystem context
 * (clone CLONE_FS) with their parent.
 *
 * The parent opens <status>.x at fd 20, then creates three children with clone(2) (no
 * CLONE_VM: each has its own memory):
 *   files  CLONE_FILES: shares the parent's fd table;
 *   fs     CLONE_FS: shares the parent's cwd, root and umask;
 *   plain  neither (a fork).
 *   READY parent pid=N files=N fs=N plain=N
 *
 * After <status>.go:
 *   files:  opens <status>.a (fd N) and closes fd 20: "STAGE files-opened fd=N";
 *   parent: sees fd N (the same file: same inode) and fd 20 closed; then
 *           "STAGE parent-checked-files";
 *   plain:  still has fd 20 and no fd N; "STAGE plain-checked";
 *   fs:     changes to <dir>/sub and sets umask 027: "STAGE fs-moved";
 *   parent: its cwd is <dir>/sub and its umask 027; the files child's cwd is not (it shares
 *           only the fd table): it says so in "STAGE files-cwd-ok". Everyone reaps or exits.
 */
#include "usock_common.h"
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static pid_t clone_child(unsigned long flags)
{
	return (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, NULL, NULL, 0);
}

static char dir[4200], sub[4300];

static void files_child(void)
{
	become("files");
	wait_go();
	char a[4200];
	snprintf(a, sizeof(a), "%s.a", wl_status);
	int n = open(a, O_RDWR | O_CREAT, 0600);
	CHECK(n >= 0, "files: open %s: %s", a, strerror(errno));
	close(20);
	status("STAGE files-opened fd=%d", n);
	wait_for_status("STAGE fs-moved");
	char cwd[4300] = "";
	CHECK(getcwd(cwd, sizeof(cwd)) && strcmp(cwd, dir) == 0, "files: cwd %s, expected %s (it shares no fs)", cwd, dir);
	status("STAGE files-cwd-ok");
	role_finish();
}

static void fs_child(void)
{
	become("fs");
	wait_go();
	wait_for_status("STAGE parent-checked-files");
	CHECK(chdir(sub) == 0, "fs: chdir %s: %s", sub, strerror(errno));
	umask(027);
	status("STAGE fs-moved");
	role_finish();
}

static void plain_child(void)
{
	become("plain");
	wait_go();
	wait_for_status("STAGE files-opened");
	struct stat st;
	CHECK(fstat(20, &st) == 0, "plain: fd 20 is gone: %s", strerror(errno));
	status("STAGE plain-checked");
	role_finish();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	snprintf(dir, sizeof(dir), "%s", wl_status);
	*strrchr(dir, '/') = 0;
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	mkdir(sub, 0755);
	if (chdir(dir) < 0)
		die("chdir: %s", strerror(errno));
	umask(022);
	char x[4200];
	snprintf(x, sizeof(x), "%s.x", wl_status);
	int f = open(x, O_RDWR | O_CREAT, 0600);
	if (f < 0 || dup2(f, 20) < 0)
		die("open %s: %s", x, strerror(errno));
	close(f);
	pid_t files = clone_child(CLONE_FILES);
	if (files == 0)
		files_child();
	pid_t fs = clone_child(CLONE_FS);
	if (fs == 0)
		fs_child();
	pid_t plain = clone_child(0);
	if (plain == 0)
		plain_child();
	if (files < 0 || fs < 0 || plain < 0)
		die("clone: %s", strerror(errno));
	status("READY parent pid=%d files=%d fs=%d plain=%d", my_pid, (int)files, (int)fs, (int)plain);
	wait_go();
	wait_for_status("STAGE files-opened");
	char buf[65536];
	read_file(wl_status, buf, sizeof(buf));
	int n = atoi(strstr(buf, "STAGE files-opened fd=") + strlen("STAGE files-opened fd="));
	struct stat st, want;
	char a[4200];
	snprintf(a, sizeof(a), "%s.a", wl_status);
	CHECK(fstat(n, &st) == 0 && stat(a, &want) == 0 && st.st_ino == want.st_ino,
	      "parent: fd %d opened by the files child is not %s here", n, a);
	CHECK(fcntl(20, F_GETFD) < 0 && errno == EBADF, "parent: fd 20, closed by the files child, is still open");
	status("STAGE parent-checked-files");
	wait_for_status("STAGE fs-moved");
	char cwd[4300] = "";
	CHECK(getcwd(cwd, sizeof(cwd)) && strcmp(cwd, sub) == 0, "parent: cwd %s, expected %s (moved by the fs child)", cwd, sub);
	mode_t old = umask(0);
	CHECK(old == 027, "parent: umask %o, expected 027 (set by the fs child)", old);
	wait_for_status("STAGE files-cwd-ok");
	wait_for_status("STAGE plain-checked");
	reap("files", files);
	reap("fs", fs);
	reap("plain", plain);
	role_finish();
}
