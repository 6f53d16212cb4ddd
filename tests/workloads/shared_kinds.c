/*
 * Shared kernel objects that have no path: mapped memfds, memfds open through several
 * descriptions, /dev/zero mapped shared across fork.
 *
 * usage: shared_kinds STATUS MODE
 *   memfd       one process: memfd "shm" at fd 40 (offset 7), reopened through /proc/self/fd
 *               at 41 (O_RDONLY, offset 3) and 42 (O_RDWR|O_NONBLOCK, offset 100), mapped
 *               shared (A) and private (B, its first page changed privately); memfd "orphan"
 *               mapped shared twice (C, D) and memfd "orphanpriv" mapped private (E, changed),
 *               their fds closed; memfd "sealed" (write, grow and shrink seals) mapped shared
 *               read-only (F) and open read-only at fd 43 only.
 *   memfd-fork  memfd "forked" at fd 40, mapped shared, then fork: the child reopens it at 41
 *               through /proc/self/fd; after .go each writes through one way and reads what the
 *               other wrote through another.
 *   devzero     /dev/zero mapped shared (fd closed), filled, then fork; after .go the two write
 *               and see each other's bytes.
 *   pidfd       pidfds: fd 50 of a child from CLONE_PIDFD (clone3), fd 51 of a second child
 *               from pidfd_open with O_NONBLOCK, fd 52 of a zombie child (exit 7), fd 53 of the
 *               process itself with PIDFD_THREAD, and an epoll (fd 55) watching fd 51; after .go
 *               the live children are signalled through their pidfds, the epoll reports the
 *               second one's exit, and every child is reaped with waitid(P_PIDFD).
 *   pidfd-sibling   the first child holds a pidfd (fd 50) of the second, its later sibling;
 *               after .go it kills the sibling through it and sees it exit (poll); the parent
 *               reaps both.
 *   pidfd-outside   a pidfd of the workload's parent, outside the tree (dump must refuse it).
 *   pidfd-reaped    a pidfd of a child that was reaped (refused).
 *   pidfd-thread    a PIDFD_THREAD pidfd (fd 50) of a second thread; after .go a signal sent
 *               through it is handled by that thread.
 *   pidfd-thread-shared   the same, inherited by a child (refused).
 *   pidfd-passed    the first child receives (SCM_RIGHTS) the parent's pidfd of the second
 *               child, which restore would create after it (refused).
 *   aio         two AIO contexts (io_setup 32 and 500), each used once (a read of memfd fd 70,
 *               reaped), then fork: the child has the rings mapped but no context. After .go
 *               both contexts read fd 70 again at their old ids, the rings are where they were
 *               with their sizes, and the child's io_submit still fails with EINVAL.
 *   aio-inflight    an IOCB_CMD_POLL on an empty pipe in flight (refused); after .go the
 *               request completes when the pipe gets a byte.
 *   aio-unreaped    an AIO context used three times (reaped), then two reads completed and not
 *               reaped yet; after .go both are reaped, in order, with their results.
 *   memfd-futurewrite  a memfd mapped writable shared, then sealed F_SEAL_FUTURE_WRITE (refused).
 *   memfd-outside-fd    a memfd at fd 40 also held by a process outside the tree (a grandchild
 *               whose parent exited: the test's subreaper adopted it) (refused).
 *   memfd-outside-map   a memfd mapped shared, its fds closed, also mapped by such a process
 *               (refused).
 *   devzero-outside /dev/zero mapped shared, also mapped by a process outside the tree
 *               (refused).
 *   memfd-hugetlb   a hugetlbfs memfd (MFD_HUGETLB) at fd 40 (refused); "READY skip" where
 *               this kernel has no hugetlbfs.
 *   aio-lost-ring   a child forked after io_setup keeps the ring's mapping after its parent
 *               destroyed the context (refused).
 *   nsfd        /proc/self/ns/{net,uts,ipc,mnt,user} open at fds 60..64 (64 close-on-exec);
 *               after .go each is the process's own namespace (fstat) and setns works on them.
 *   nsfd-other  an open namespace file of a new network namespace (dump must refuse it).
 *
 * After .go the workload checks from inside that everything is one object again and reports
 * PASS or FAIL (common.h protocol).
 *
 * LDFLAGS: -pthread
 */
#include "common.h"

#include <linux/aio_abi.h>
#include <linux/sched.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define PAGE 4096

static void wait_go(void)
{
	while (!go_requested())
		sleep_ms(5);
}

static void place(int fd, int at)
{
	if (fd < 0)
		die("creating the object for fd %d: %s", at, strerror(errno));
	if (fd == at)
		return;
	/* keeps the close-on-exec flag the object was created with */
	int cloexec = fcntl(fd, F_GETFD) & FD_CLOEXEC ? O_CLOEXEC : 0;
	if (dup3(fd, at, cloexec) != at)
		die("dup3 to %d: %s", at, strerror(errno));
	close(fd);
}

static char *map(int fd, int flags, size_t len)
{
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (m == MAP_FAILED)
		die("mmap fd %d: %s", fd, strerror(errno));
	return m;
}

static unsigned char pattern(size_t i, int seed)
{
	return (unsigned char)(i * 7 + seed);
}

static void fill(char *m, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		m[i] = pattern(i, seed);
}

static int holds(const char *m, size_t from, size_t len, int seed)
{
	for (size_t i = from; i < from + len; i++)
		if ((unsigned char)m[i] != pattern(i, seed))
			return 0;
	return 1;
}

static ino_t inode_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) ? 0 : st.st_ino;
}

/* The inode behind the mapping at m, from /proc/self/map_files. */
static ino_t mapped_inode(void *m, size_t len)
{
	char path[128];
	struct stat st;
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)m, (unsigned long)m + len);
	return stat(path, &st) ? 0 : st.st_ino;
}

/* Waits (bounded: 5 s) until *p holds v. */
static int wait_byte(volatile char *p, char v)
{
	for (int i = 0; i < 1000; i++) {
		if (*p == v)
			return 1;
		sleep_ms(5);
	}
	return 0;
}

/* ---------------------------------------------------------------- memfd */

static char *ma, *mb, *mc, *md, *me, *mf, *mz;

static void memfd_setup(void)
{
	place(memfd_create("shm", 0), 40);
	if (ftruncate(40, 3 * PAGE))
		die("ftruncate: %s", strerror(errno));
	ma = map(40, MAP_SHARED, 3 * PAGE);
	fill(ma, 3 * PAGE, 1);
	mb = map(40, MAP_PRIVATE, 3 * PAGE);
	memset(mb, 'p', 100); /* page 0 becomes the process's own copy */
	place(open("/proc/self/fd/40", O_RDONLY), 41);
	place(open("/proc/self/fd/40", O_RDWR | O_NONBLOCK), 42);
	lseek(40, 7, SEEK_SET);
	lseek(41, 3, SEEK_SET);
	lseek(42, 100, SEEK_SET);

	int fd = memfd_create("orphan", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, 2 * PAGE))
		die("memfd orphan: %s", strerror(errno));
	mc = map(fd, MAP_SHARED, 2 * PAGE);
	md = map(fd, MAP_SHARED, 2 * PAGE);
	fill(mc, 2 * PAGE, 2);
	close(fd);

	fd = memfd_create("orphanpriv", MFD_CLOEXEC);
	if (fd < 0 || write(fd, "underneath", 10) != 10 || ftruncate(fd, PAGE))
		die("memfd orphanpriv: %s", strerror(errno));
	me = map(fd, MAP_PRIVATE, PAGE);
	memcpy(me + 2000, "private", 7);
	close(fd);
	fd = memfd_create("sealed", MFD_ALLOW_SEALING);
	if (fd < 0 || write(fd, "sealed contents", 15) != 15 || ftruncate(fd, PAGE))
		die("memfd sealed: %s", strerror(errno));
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK))
		die("F_ADD_SEALS: %s", strerror(errno));
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	place(open(path, O_RDONLY), 43);
	close(fd);
	mf = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, 43, 0);
	if (mf == MAP_FAILED)
		die("mmap sealed: %s", strerror(errno));
	status("READY memfd fds=40,41,42,43 a=%p b=%p c=%p d=%p e=%p f=%p", (void *)ma, (void *)mb, (void *)mc,
	       (void *)md, (void *)me, (void *)mf);
}

static void memfd_verify(void)
{
	CHECK(holds(ma, 0, 3 * PAGE, 1), "shared mapping A lost the memfd's contents");
	CHECK(inode_of(40) != 0 && inode_of(40) == inode_of(41) && inode_of(41) == inode_of(42),
	      "fds 40, 41, 42 are not one inode (%lu %lu %lu)", (unsigned long)inode_of(40), (unsigned long)inode_of(41),
	      (unsigned long)inode_of(42));
	CHECK(mapped_inode(ma, 3 * PAGE) == inode_of(40), "mapping A is not the inode of fd 40");
	CHECK(mapped_inode(mb, 3 * PAGE) == inode_of(40), "mapping B is not the inode of fd 40");
	CHECK_EQ_U("fd 40 offset", 7, lseek(40, 0, SEEK_CUR));
	CHECK_EQ_U("fd 41 offset", 3, lseek(41, 0, SEEK_CUR));
	CHECK_EQ_U("fd 42 offset", 100, lseek(42, 0, SEEK_CUR));
	CHECK_EQ_U("fd 41 access mode", O_RDONLY, fcntl(41, F_GETFL) & O_ACCMODE);
	CHECK_EQ_U("fd 42 flags", O_RDWR | O_NONBLOCK, fcntl(42, F_GETFL) & (O_ACCMODE | O_NONBLOCK));
	/* A write through fd 42 shows in mapping A and through fd 41; one through A in fd 40. */
	CHECK(pwrite(42, "XYZ", 3, PAGE + 5) == 3, "pwrite fd 42: %s", strerror(errno));
	CHECK(memcmp(ma + PAGE + 5, "XYZ", 3) == 0, "a write through fd 42 is not seen in mapping A");
	char buf[4] = { 0 };
	CHECK(pread(41, buf, 3, PAGE + 5) == 3 && memcmp(buf, "XYZ", 3) == 0, "fd 41 does not see fd 42's write");
	ma[2 * PAGE] = 'Q';
	CHECK(pread(40, buf, 1, 2 * PAGE) == 1 && buf[0] == 'Q', "fd 40 does not see a write into mapping A");
	/* Private mapping B: its own first page, the memfd's pages elsewhere (also later writes). */
	char want[100];
	memset(want, 'p', 100);
	CHECK(memcmp(mb, want, 100) == 0 && holds(mb, 100, PAGE - 100, 1), "private mapping B lost its own page");
	CHECK(mb[PAGE + 5] == 'X' && mb[2 * PAGE] == 'Q', "private mapping B does not show the memfd's untouched pages");
	mb[10] = 'z';
	CHECK(ma[10] == (char)pattern(10, 1), "a write into private mapping B reached the memfd");
	/* Orphans: C and D one memfd, E private with its change. */
	CHECK(holds(mc, 0, 2 * PAGE, 2) && holds(md, 0, 2 * PAGE, 2), "shared mappings C, D lost their contents");
	CHECK(mapped_inode(mc, 2 * PAGE) != 0 && mapped_inode(mc, 2 * PAGE) == mapped_inode(md, 2 * PAGE),
	      "mappings C and D are not one memfd");
	mc[PAGE + 1] = 'w';
	CHECK(md[PAGE + 1] == 'w', "a write into mapping C is not seen in mapping D");
	CHECK(memcmp(me, "underneath", 10) == 0 && memcmp(me + 2000, "private", 7) == 0,
	      "private mapping E lost its contents");
	CHECK_EQ_U("seals of fd 43", F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK, fcntl(43, F_GET_SEALS));
	CHECK(memcmp(mf, "sealed contents", 15) == 0, "mapping F lost the sealed memfd's contents");
	CHECK(mapped_inode(mf, PAGE) == inode_of(43), "mapping F is not the inode of fd 43");
	errno = 0;
	CHECK(mprotect(mf, PAGE, PROT_READ | PROT_WRITE) < 0, "the sealed read-only shared mapping became writable");
}

/* ---------------------------------------------------------------- memfd-fork */

static pid_t child;

static void memfd_fork_setup(void)
{
	place(memfd_create("forked", 0), 40);
	if (ftruncate(40, PAGE))
		die("ftruncate: %s", strerror(errno));
	mf = map(40, MAP_SHARED, PAGE);
	fill(mf, PAGE, 3);
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		place(open("/proc/self/fd/40", O_RDWR), 41);
		lseek(41, 9, SEEK_SET);
		wait_go();
		int ok = holds(mf, 1, PAGE - 1, 3);
		ok &= inode_of(41) == inode_of(40) && mapped_inode(mf, PAGE) == inode_of(41);
		ok &= lseek(41, 0, SEEK_CUR) == 9;
		ok &= wait_byte(&mf[0], 'P'); /* the parent's write into its mapping */
		ok &= pwrite(41, "C", 1, 1) == 1; /* through the child's own description */
		_exit(ok ? 0 : 1);
	}
	status("READY memfd-fork pid=%d child=%d", getpid(), child);
}

static void memfd_fork_verify(void)
{
	CHECK(holds(mf, 0, PAGE, 3), "the shared mapping lost its contents");
	mf[0] = 'P';
	CHECK(wait_byte(&mf[1], 'C'), "the child's write through its fd 41 is not seen in the parent's mapping");
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child, "waitpid child %d: %s", child, strerror(errno));
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed its part (status %#x)", st);
	char c = 0;
	CHECK(pread(40, &c, 1, 1) == 1 && c == 'C', "fd 40 does not see the child's write");
}

/* ---------------------------------------------------------------- devzero */


static void devzero_setup(void)
{
	int fd = open("/dev/zero", O_RDWR);
	if (fd < 0)
		die("open /dev/zero: %s", strerror(errno));
	mz = map(fd, MAP_SHARED, 4 * PAGE);
	close(fd);
	fill(mz, 2 * PAGE, 4); /* the last two pages stay untouched */
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		wait_go();
		int ok = holds(mz, 1, 2 * PAGE - 1, 4);
		ok &= wait_byte(&mz[0], 'P');
		mz[3 * PAGE] = 'C';
		_exit(ok ? 0 : 1);
	}
	status("READY devzero pid=%d child=%d map=%p", getpid(), child, (void *)mz);
}

static void devzero_verify(void)
{
	CHECK(holds(mz, 0, 2 * PAGE, 4), "the shared /dev/zero mapping lost its contents");
	CHECK(mz[2 * PAGE] == 0 && mz[4 * PAGE - 1] == 0, "untouched pages are not zero");
	mz[0] = 'P';
	CHECK(wait_byte(&mz[3 * PAGE], 'C'), "the child's write is not seen by the parent");
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child, "waitpid child %d: %s", child, strerror(errno));
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed its part (status %#x)", st);
}

/* ---------------------------------------------------------------- pidfd */

static pid_t kids[3];

/* A child that waits for SIGTERM (it dies of it). */
static void sleeper_child(void)
{
	for (;;)
		pause();
}

static int pidfd_open(pid_t pid, unsigned flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static void pidfd_setup(void)
{
	int pidfd = -1;
	struct clone_args args = { 0 };
	args.flags = CLONE_PIDFD;
	args.pidfd = (uint64_t)(uintptr_t)&pidfd;
	args.exit_signal = SIGCHLD;
	long r = syscall(SYS_clone3, &args, sizeof(args));
	if (r < 0)
		die("clone3(CLONE_PIDFD): %s", strerror(errno));
	if (r == 0)
		sleeper_child();
	kids[0] = (pid_t)r;
	place(pidfd, 50);
	if ((kids[1] = fork()) == 0)
		sleeper_child();
	place(pidfd_open(kids[1], O_NONBLOCK), 51);
	if ((kids[2] = fork()) == 0)
		_exit(7);
	place(pidfd_open(kids[2], 0), 52);
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	/* a zombie: its exit is seen, not reaped */
	if (waitid(P_PIDFD, 52, &si, WEXITED | WNOWAIT) || si.si_pid != kids[2])
		die("waitid(P_PIDFD, WNOWAIT) of the zombie: %s", strerror(errno));
	place(pidfd_open(getpid(), PIDFD_THREAD), 53);
	place(epoll_create1(0), 55);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 51 };
	if (epoll_ctl(55, EPOLL_CTL_ADD, 51, &ev))
		die("epoll_ctl(pidfd): %s", strerror(errno));
	status("READY pidfd pid=%d kids=%d,%d,%d fds=50,51,52,53,55", getpid(), kids[0], kids[1], kids[2]);
}

static void pidfd_verify(void)
{
	CHECK_EQ_U("fd 51 O_NONBLOCK", O_NONBLOCK, fcntl(51, F_GETFL) & O_NONBLOCK);
	CHECK_EQ_U("fd 53 PIDFD_THREAD", PIDFD_THREAD, fcntl(53, F_GETFL) & PIDFD_THREAD);
	CHECK_EQ_U("fd 50 O_NONBLOCK", 0, fcntl(50, F_GETFL) & O_NONBLOCK);
	/* A non-blocking pidfd of a live child: WNOHANG-like EAGAIN. */
	struct epoll_event ev;
	CHECK(epoll_wait(55, &ev, 1, 0) == 0, "the epoll reports the pidfd of a live child ready");
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	errno = 0;
	int r = waitid(P_PIDFD, 51, &si, WEXITED);
	CHECK(r < 0 && errno == EAGAIN, "waitid on the non-blocking pidfd of a live child: %d (%s)", r, strerror(errno));
	for (int i = 0; i < 2; i++) {
		int fd = 50 + i;
		CHECK(syscall(SYS_pidfd_send_signal, fd, SIGTERM, NULL, 0) == 0, "pidfd_send_signal on fd %d: %s", fd,
		      strerror(errno));
		if (fd == 51)
			CHECK(epoll_wait(55, &ev, 1, 5000) == 1 && ev.data.u64 == 51,
			      "the epoll did not report the exit of the child of fd 51");
		memset(&si, 0, sizeof(si));
		int ok = 0;
		for (int tries = 0; tries < 500 && !ok; tries++) {
			if (waitid(P_PIDFD, fd, &si, WEXITED) == 0)
				ok = 1;
			else if (errno == EAGAIN)
				sleep_ms(10);
			else
				break;
		}
		CHECK(ok && si.si_pid == kids[i] && si.si_code == CLD_KILLED && si.si_status == SIGTERM,
		      "child %d through fd %d: waitid gave pid %d code %d status %d (%s)", kids[i], fd, si.si_pid,
		      si.si_code, si.si_status, strerror(errno));
	}
	memset(&si, 0, sizeof(si));
	CHECK(waitid(P_PIDFD, 52, &si, WEXITED) == 0 && si.si_pid == kids[2] && si.si_code == CLD_EXITED &&
		      si.si_status == 7,
	      "the zombie through fd 52: pid %d code %d status %d (%s)", si.si_pid, si.si_code, si.si_status,
	      strerror(errno));
	CHECK(syscall(SYS_pidfd_send_signal, 53, 0, NULL, 0) == 0, "pidfd_send_signal(0) to itself through fd 53: %s",
	      strerror(errno));
}

static void pidfd_sibling_setup(void)
{
	volatile int *slot = (volatile int *)map(-1, MAP_SHARED | MAP_ANONYMOUS, PAGE);
	if ((kids[0] = fork()) == 0) {
		for (int i = 0; i < 1000 && !slot[0]; i++)
			sleep_ms(5);
		place(pidfd_open(slot[0], 0), 50);
		slot[1] = 1;
		wait_go();
		int ok = syscall(SYS_pidfd_send_signal, 50, SIGTERM, NULL, 0) == 0;
		struct pollfd p = { .fd = 50, .events = POLLIN };
		ok &= poll(&p, 1, 5000) == 1 && (p.revents & POLLIN);
		_exit(ok ? 0 : 1);
	}
	if ((kids[1] = fork()) == 0)
		sleeper_child();
	slot[0] = kids[1];
	for (int i = 0; i < 1000 && !slot[1]; i++)
		sleep_ms(5);
	if (!slot[1])
		die("the first child did not open its pidfd");
	munmap((void *)slot, PAGE);
	status("READY pidfd-sibling pid=%d kids=%d,%d", getpid(), kids[0], kids[1]);
}

static void pidfd_sibling_verify(void)
{
	int st = 0;
	CHECK(waitpid(kids[0], &st, 0) == kids[0] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "the first child failed to kill its sibling through its pidfd (status %#x)", st);
	CHECK(waitpid(kids[1], &st, 0) == kids[1] && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM,
	      "the second child did not die of SIGTERM (status %#x)", st);
}

static void pidfd_outside_setup(void)
{
	place(pidfd_open(getppid(), 0), 50);
	status("READY pidfd-outside pid=%d parent=%d fd=50", getpid(), getppid());
}

static void pidfd_reaped_setup(void)
{
	pid_t kid = fork();
	if (kid == 0)
		_exit(0);
	place(pidfd_open(kid, 0), 50);
	waitpid(kid, NULL, 0);
	status("READY pidfd-reaped pid=%d fd=50", getpid());
}

static volatile pid_t thread_tid;

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = gettid();
	for (;;)
		sleep_ms(50);
	return NULL;
}

static volatile pid_t handled_by;

static void note_handler(int sig)
{
	(void)sig;
	handled_by = gettid();
}

static void pidfd_thread_setup(void)
{
	pthread_t t;
	set_handler(SIGUSR1, note_handler, 0);
	if (pthread_create(&t, NULL, thread_main, NULL))
		die("pthread_create");
	for (int i = 0; i < 1000 && !thread_tid; i++)
		sleep_ms(5);
	place(pidfd_open(thread_tid, PIDFD_THREAD), 50);
	status("READY pidfd-thread pid=%d tid=%d fd=50", getpid(), thread_tid);
}

static void pidfd_thread_verify(void)
{
	CHECK_EQ_U("fd 50 PIDFD_THREAD", PIDFD_THREAD, fcntl(50, F_GETFL) & PIDFD_THREAD);
	/* a thread-directed signal: that thread takes it, although the main thread could too */
	CHECK(syscall(SYS_pidfd_send_signal, 50, SIGUSR1, NULL, 0) == 0, "pidfd_send_signal(fd 50): %s", strerror(errno));
	for (int i = 0; i < 500 && !handled_by; i++)
		sleep_ms(10);
	CHECK(handled_by == thread_tid, "SIGUSR1 sent through fd 50 was handled by %d, not thread %d", handled_by,
	      thread_tid);
}

static void pidfd_thread_shared_setup(void)
{
	pidfd_thread_setup();
	if ((child = fork()) == 0) {
		wait_go();
		_exit(0);
	}
	status("READY pidfd-thread-shared pid=%d child=%d fd=50", getpid(), child);
}

/* Sends fd over the socket (SCM_RIGHTS). */
static void send_fd(int sock, int fd)
{
	char byte = 'x';
	struct iovec iov = { &byte, 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) != 1)
		die("sendmsg: %s", strerror(errno));
}

static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { &byte, 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	if (recvmsg(sock, &msg, 0) != 1)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
	return fd;
}

static void pidfd_passed_setup(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		die("socketpair: %s", strerror(errno));
	if ((kids[0] = fork()) == 0) {
		close(sv[0]);
		place(recv_fd(sv[1]), 50);
		close(sv[1]);
		wait_go();
		_exit(0);
	}
	close(sv[1]);
	if ((kids[1] = fork()) == 0)
		sleeper_child();
	place(pidfd_open(kids[1], 0), 50);
	send_fd(sv[0], 50);
	close(sv[0]);
	sleep_ms(100); /* the first child places it */
	status("READY pidfd-passed pid=%d kids=%d,%d fd=50", getpid(), kids[0], kids[1]);
}

static void pidfd_passed_verify(void)
{
	kill(kids[1], SIGTERM);
	waitpid(kids[0], NULL, 0);
	waitpid(kids[1], NULL, 0);
}

/* ---------------------------------------------------------------- aio */

struct aio_ring_header {
	unsigned id, nr, head, tail, magic, compat, incompat, header_length;
};

static aio_context_t actx[2];
static unsigned ring_nr[2];
static char aio_buf[64];

static long submit_read(aio_context_t ctx, int fd, uint64_t data)
{
	struct iocb cb;
	memset(&cb, 0, sizeof(cb));
	cb.aio_data = data;
	cb.aio_fildes = fd;
	cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_buf = (uint64_t)(uintptr_t)aio_buf;
	cb.aio_nbytes = 9;
	struct iocb *cbs[1] = { &cb };
	return syscall(SYS_io_submit, ctx, 1, cbs);
}

/* Reaps one event (waits up to 5 s): its data, or 0. */
static uint64_t reap_one(aio_context_t ctx, int64_t *res)
{
	struct io_event ev;
	struct timespec t = { 5, 0 };
	if (syscall(SYS_io_getevents, ctx, 1, 1, &ev, &t) != 1)
		return 0;
	*res = ev.res;
	return ev.data;
}

static void aio_setup(void)
{
	int fd = memfd_create("aiodata", 0);
	if (fd < 0 || write(fd, "hello aio", 9) != 9)
		die("memfd: %s", strerror(errno));
	place(fd, 70);
	unsigned sizes[2] = { 32, 500 };
	for (int i = 0; i < 2; i++) {
		if (syscall(SYS_io_setup, sizes[i], &actx[i]))
			die("io_setup(%u): %s", sizes[i], strerror(errno));
		ring_nr[i] = ((struct aio_ring_header *)actx[i])->nr;
		int64_t res = 0;
		if (submit_read(actx[i], 70, 100 + i) != 1 || reap_one(actx[i], &res) != 100u + i || res != 9)
			die("first read through context %d: %s", i, strerror(errno));
	}
	if ((child = fork()) == 0) {
		wait_go();
		errno = 0;
		int ok = submit_read(actx[0], 70, 1) < 0 && errno == EINVAL;
		_exit(ok ? 0 : 1);
	}
	status("READY aio pid=%d child=%d ctx=%#llx,%#llx nr=%u,%u", getpid(), child, (unsigned long long)actx[0],
	       (unsigned long long)actx[1], ring_nr[0], ring_nr[1]);
}

static void aio_verify(void)
{
	for (int i = 0; i < 2; i++) {
		struct aio_ring_header *h = (struct aio_ring_header *)actx[i];
		CHECK(h->magic == 0xa10a10a1 && h->nr == ring_nr[i] && h->head == h->tail,
		      "context %d: ring magic %#x nr %u (was %u) head %u tail %u", i, h->magic, h->nr, ring_nr[i], h->head,
		      h->tail);
		memset(aio_buf, 0, sizeof(aio_buf));
		int64_t res = 0;
		long r = submit_read(actx[i], 70, 200 + i);
		CHECK(r == 1, "io_submit on context %d (%#llx): %s", i, (unsigned long long)actx[i], strerror(errno));
		uint64_t data = r == 1 ? reap_one(actx[i], &res) : 0;
		CHECK(data == 200u + i && res == 9 && !memcmp(aio_buf, "hello aio", 9),
		      "context %d: event data %llu res %lld buffer '%s'", i, (unsigned long long)data, (long long)res, aio_buf);
	}
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "the child's io_submit on its parent's context did not fail with EINVAL (status %#x)", st);
	CHECK(syscall(SYS_io_destroy, actx[0]) == 0 && syscall(SYS_io_destroy, actx[1]) == 0, "io_destroy: %s",
	      strerror(errno));
}

static void aio_inflight_setup(void)
{
	int p[2];
	if (pipe(p))
		die("pipe: %s", strerror(errno));
	place(p[0], 71);
	place(p[1], 72);
	if (syscall(SYS_io_setup, 8, &actx[0]))
		die("io_setup: %s", strerror(errno));
	struct iocb cb;
	memset(&cb, 0, sizeof(cb));
	cb.aio_data = 77;
	cb.aio_fildes = 71;
	cb.aio_lio_opcode = IOCB_CMD_POLL;
	cb.aio_buf = POLLIN;
	struct iocb *cbs[1] = { &cb };
	if (syscall(SYS_io_submit, actx[0], 1, cbs) != 1)
		die("io_submit(IOCB_CMD_POLL): %s", strerror(errno));
	status("READY aio-inflight pid=%d ctx=%#llx", getpid(), (unsigned long long)actx[0]);
}

static void aio_inflight_verify(void)
{
	CHECK(write(72, "x", 1) == 1, "write pipe: %s", strerror(errno));
	int64_t res = 0;
	uint64_t data = reap_one(actx[0], &res);
	CHECK(data == 77 && (res & POLLIN), "the poll request in flight completed with data %llu res %#llx",
	      (unsigned long long)data, (long long)res);
}

static char unreaped_buf[2][16];

static void aio_unreaped_setup(void)
{
	int fd = memfd_create("aiodata", 0);
	if (fd < 0 || write(fd, "hello aio and more", 18) != 18)
		die("memfd: %s", strerror(errno));
	place(fd, 70);
	if (syscall(SYS_io_setup, 8, &actx[0]))
		die("io_setup: %s", strerror(errno));
	for (int i = 0; i < 3; i++) {
		int64_t res = 0;
		if (submit_read(actx[0], 70, 10 + i) != 1 || reap_one(actx[0], &res) != 10u + i)
			die("read %d: %s", i, strerror(errno));
	}
	struct iocb cb[2];
	struct iocb *cbs[2] = { &cb[0], &cb[1] };
	for (int i = 0; i < 2; i++) {
		memset(&cb[i], 0, sizeof(cb[i]));
		cb[i].aio_data = 88 + i;
		cb[i].aio_fildes = 70;
		cb[i].aio_lio_opcode = IOCB_CMD_PREAD;
		cb[i].aio_buf = (uint64_t)(uintptr_t)unreaped_buf[i];
		cb[i].aio_nbytes = 9;
		cb[i].aio_offset = 9 * i;
	}
	if (syscall(SYS_io_submit, actx[0], 2, cbs) != 2)
		die("io_submit: %s", strerror(errno));
	struct aio_ring_header *h = (struct aio_ring_header *)actx[0];
	if (h->tail - h->head != 2)
		die("the two reads are not waiting in the ring (head %u tail %u)", h->head, h->tail);
	status("READY aio-unreaped pid=%d ctx=%#llx", getpid(), (unsigned long long)actx[0]);
}

static void aio_unreaped_verify(void)
{
	struct aio_ring_header *h = (struct aio_ring_header *)actx[0];
	CHECK((h->tail + h->nr - h->head) % h->nr == 2, "the ring holds %u events, not 2 (head %u tail %u)",
	      (h->tail + h->nr - h->head) % h->nr, h->head, h->tail);
	struct io_event ev[3];
	struct timespec t = { 0, 0 };
	long n = syscall(SYS_io_getevents, actx[0], 0, 3, ev, &t);
	CHECK(n == 2, "io_getevents reaped %ld events, not 2", n);
	for (int i = 0; i < 2 && i < n; i++)
		CHECK(ev[i].data == 88u + i && ev[i].res == 9 && ev[i].obj != 0, "event %d: data %llu res %lld", i,
		      (unsigned long long)ev[i].data, (long long)ev[i].res);
	CHECK(!memcmp(unreaped_buf[0], "hello aio", 9) && !memcmp(unreaped_buf[1], " and more", 9),
	      "the reads' buffers hold '%.9s' and '%.9s'", unreaped_buf[0], unreaped_buf[1]);
	/* and the context goes on */
	int64_t res = 0;
	CHECK(submit_read(actx[0], 70, 99) == 1 && reap_one(actx[0], &res) == 99 && res == 9, "a new read: %s",
	      strerror(errno));
}

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

static void memfd_futurewrite_setup(void)
{
	place(memfd_create("future", MFD_ALLOW_SEALING), 40);
	if (ftruncate(40, PAGE))
		die("ftruncate: %s", strerror(errno));
	ma = map(40, MAP_SHARED, PAGE);
	strcpy(ma, "written before the seal");
	if (fcntl(40, F_ADD_SEALS, F_SEAL_FUTURE_WRITE))
		die("F_ADD_SEALS(F_SEAL_FUTURE_WRITE): %s", strerror(errno));
	status("READY memfd-futurewrite pid=%d fd=40 map=%p", getpid(), (void *)ma);
}

static void memfd_futurewrite_verify(void)
{
	strcpy(ma, "and after it");
	CHECK(!strcmp(ma, "and after it"), "the mapping made before the seal is no longer writable");
}

/* Forks a process that leaves the tree (its parent exits at once) and waits for .go. */
static pid_t fork_outsider(int close_fd)
{
	int p[2];
	if (pipe(p))
		die("pipe: %s", strerror(errno));
	pid_t middle = fork();
	if (middle == 0) {
		pid_t outsider = fork();
		if (outsider == 0) {
			close(p[0]);
			close(p[1]);
			if (close_fd >= 0)
				close(close_fd);
			wait_go();
			_exit(0);
		}
		if (write(p[1], &outsider, sizeof(outsider)) != sizeof(outsider))
			_exit(1);
		_exit(0);
	}
	pid_t outsider = 0;
	close(p[1]);
	if (read(p[0], &outsider, sizeof(outsider)) != sizeof(outsider))
		die("the outsider's pid did not come");
	close(p[0]);
	waitpid(middle, NULL, 0);
	return outsider;
}

static void memfd_outside_fd_setup(void)
{
	place(memfd_create("outside", 0), 40);
	pid_t outsider = fork_outsider(-1);
	status("READY memfd-outside-fd pid=%d outsider=%d fd=40", getpid(), outsider);
}

static void memfd_outside_map_setup(void)
{
	int fd = memfd_create("outside", 0);
	if (fd < 0 || ftruncate(fd, PAGE))
		die("memfd: %s", strerror(errno));
	ma = map(fd, MAP_SHARED, PAGE);
	close(fd);
	pid_t outsider = fork_outsider(-1);
	status("READY memfd-outside-map pid=%d outsider=%d map=%p", getpid(), outsider, (void *)ma);
}

static void devzero_outside_setup(void)
{
	int fd = open("/dev/zero", O_RDWR);
	if (fd < 0)
		die("open /dev/zero: %s", strerror(errno));
	mz = map(fd, MAP_SHARED, PAGE);
	close(fd);
	pid_t outsider = fork_outsider(-1);
	status("READY devzero-outside pid=%d outsider=%d map=%p", getpid(), outsider, (void *)mz);
}

static void memfd_hugetlb_setup(void)
{
	int fd = memfd_create("huge", MFD_HUGETLB);
	if (fd < 0) {
		status("READY skip memfd-hugetlb: %s", strerror(errno));
		return;
	}
	place(fd, 40);
	status("READY memfd-hugetlb pid=%d fd=40", getpid());
}

static void aio_lost_ring_setup(void)
{
	if (syscall(SYS_io_setup, 8, &actx[0]))
		die("io_setup: %s", strerror(errno));
	if ((child = fork()) == 0) {
		/* the mapping stays, its pages are gone with the context (a read would fault) */
		wait_go();
		_exit(0);
	}
	if (syscall(SYS_io_destroy, actx[0]))
		die("io_destroy: %s", strerror(errno));
	status("READY aio-lost-ring pid=%d child=%d ctx=%#llx", getpid(), child, (unsigned long long)actx[0]);
}

static void aio_lost_ring_verify(void)
{
	int st = 0;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "the child did not exit cleanly (status %#x)", st);
}

/* ---------------------------------------------------------------- nsfd */

static const char *ns_names[] = { "net", "uts", "ipc", "mnt", "user" };

static void nsfd_setup(void)
{
	for (int i = 0; i < 5; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/ns/%s", ns_names[i]);
		place(open(path, i == 4 ? O_RDONLY | O_CLOEXEC : O_RDONLY), 60 + i);
	}
	status("READY nsfd pid=%d fds=60,61,62,63,64", getpid());
}

static void nsfd_verify(void)
{
	for (int i = 0; i < 5; i++) {
		char path[64];
		struct stat own, fd;
		snprintf(path, sizeof(path), "/proc/self/ns/%s", ns_names[i]);
		CHECK(stat(path, &own) == 0 && fstat(60 + i, &fd) == 0 && own.st_ino == fd.st_ino && own.st_dev == fd.st_dev,
		      "fd %d is not the process's own %s namespace", 60 + i, ns_names[i]);
	}
	CHECK(setns(60, CLONE_NEWNET) == 0, "setns(fd 60, CLONE_NEWNET): %s", strerror(errno));
	CHECK(setns(61, CLONE_NEWUTS) == 0, "setns(fd 61, CLONE_NEWUTS): %s", strerror(errno));
	CHECK(setns(62, 0) == 0, "setns(fd 62, 0): %s", strerror(errno));
	CHECK((fcntl(64, F_GETFD) & FD_CLOEXEC) && !(fcntl(60, F_GETFD) & FD_CLOEXEC), "close-on-exec flags changed");
}

static void nsfd_other_setup(void)
{
	int own = open("/proc/self/ns/net", O_RDONLY);
	if (unshare(CLONE_NEWNET))
		die("unshare(CLONE_NEWNET): %s", strerror(errno));
	place(open("/proc/self/ns/net", O_RDONLY), 60);
	if (setns(own, CLONE_NEWNET))
		die("setns back: %s", strerror(errno));
	close(own);
	status("READY nsfd-other pid=%d fd=60", getpid());
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	void (*verify)(void) = NULL;
	if (!strcmp(mode, "memfd")) {
		memfd_setup();
		verify = memfd_verify;
	} else if (!strcmp(mode, "memfd-fork")) {
		memfd_fork_setup();
		verify = memfd_fork_verify;
	} else if (!strcmp(mode, "devzero")) {
		devzero_setup();
		verify = devzero_verify;
	} else if (!strcmp(mode, "pidfd")) {
		pidfd_setup();
		verify = pidfd_verify;
	} else if (!strcmp(mode, "pidfd-sibling")) {
		pidfd_sibling_setup();
		verify = pidfd_sibling_verify;
	} else if (!strcmp(mode, "pidfd-reaped")) {
		pidfd_reaped_setup();
	} else if (!strcmp(mode, "pidfd-thread")) {
		pidfd_thread_setup();
		verify = pidfd_thread_verify;
	} else if (!strcmp(mode, "pidfd-thread-shared")) {
		pidfd_thread_shared_setup();
	} else if (!strcmp(mode, "pidfd-passed")) {
		pidfd_passed_setup();
		verify = pidfd_passed_verify;
	} else if (!strcmp(mode, "pidfd-outside")) {
		pidfd_outside_setup();
	} else if (!strcmp(mode, "aio")) {
		aio_setup();
		verify = aio_verify;
	} else if (!strcmp(mode, "aio-inflight")) {
		aio_inflight_setup();
		verify = aio_inflight_verify;
	} else if (!strcmp(mode, "aio-unreaped")) {
		aio_unreaped_setup();
		verify = aio_unreaped_verify;
	} else if (!strcmp(mode, "memfd-futurewrite")) {
		memfd_futurewrite_setup();
		verify = memfd_futurewrite_verify;
	} else if (!strcmp(mode, "memfd-outside-fd")) {
		memfd_outside_fd_setup();
	} else if (!strcmp(mode, "memfd-outside-map")) {
		memfd_outside_map_setup();
	} else if (!strcmp(mode, "devzero-outside")) {
		devzero_outside_setup();
	} else if (!strcmp(mode, "memfd-hugetlb")) {
		memfd_hugetlb_setup();
	} else if (!strcmp(mode, "aio-lost-ring")) {
		aio_lost_ring_setup();
		verify = aio_lost_ring_verify;
	} else if (!strcmp(mode, "nsfd")) {
		nsfd_setup();
		verify = nsfd_verify;
	} else if (!strcmp(mode, "nsfd-other")) {
		nsfd_other_setup();
	} else {
		die("unknown mode '%s'", mode);
	}
	wait_go();
	if (verify)
		verify();
	finish("%s", mode);
}
