/*
 * fd_epoll_moved: epoll registrations whose fd number no longer refers to their file.
 *
 * An epoll (fd 30) registers, for EPOLLIN:
 *   fd 40  a pipe's read end (data 0x40), then dup'ed to fd 50 and fd 40 closed;
 *   fd 41  another pipe's read end (data 0x41), dup'ed to fd 51, fd 41 closed, and fd 41
 *          then reused for <status>.x (a regular file, without close-on-exec);
 *   fd 42  a third pipe's read end (data 0x42), left alone.
 *   READY parent pid=N
 *
 * After <status>.go: fd 40 is still closed and fd 41 still the regular file (same inode, no
 * close-on-exec); nothing is ready; after writing into the first two pipes, epoll_wait reports
 * exactly data 0x40 and 0x41 (EPOLLIN); after reading them through fds 50 and 51, nothing.
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/stat.h>

static void reg(int ep, int fd, uint64_t data)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = data };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl %d: %s", fd, strerror(errno));
}

static void at(int from, int to)
{
	if (dup2(from, to) < 0)
		die("dup2: %s", strerror(errno));
	close(from);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int p1[2], p2[2], p3[2];
	int ep = epoll_create1(0);
	if (ep < 0 || pipe(p1) < 0 || pipe(p2) < 0 || pipe(p3) < 0)
		die("setup: %s", strerror(errno));
	at(ep, 30);
	at(p1[0], 40);
	at(p2[0], 41);
	at(p3[0], 42);
	reg(30, 40, 0x40);
	reg(30, 41, 0x41);
	reg(30, 42, 0x42);
	if (dup2(40, 50) < 0 || dup2(41, 51) < 0)
		die("dup2: %s", strerror(errno));
	close(40);
	close(41);
	char x[4200];
	snprintf(x, sizeof(x), "%s.x", wl_status);
	int f = open(x, O_RDWR | O_CREAT, 0600);
	at(f, 41);
	struct stat xs;
	fstat(41, &xs);
	status("READY parent pid=%d", (int)getpid());
	while (!go_requested())
		sleep_ms(10);

	struct stat now;
	CHECK(fcntl(40, F_GETFD) < 0 && errno == EBADF, "fd 40 is open after restore");
	CHECK(fstat(41, &now) == 0 && now.st_ino == xs.st_ino && S_ISREG(now.st_mode), "fd 41 is not the regular file");
	CHECK(fcntl(41, F_GETFD) == 0, "fd 41's close-on-exec flag changed: %d", fcntl(41, F_GETFD));
	struct epoll_event evs[4];
	CHECK_EQ_U("events ready before writing", 0, epoll_wait(30, evs, 4, 0));
	if (write(p1[1], "a", 1) != 1 || write(p2[1], "b", 1) != 1)
		die("write: %s", strerror(errno));
	int n = epoll_wait(30, evs, 4, 1000);
	uint64_t seen = 0;
	for (int i = 0; i < n; i++) {
		CHECK(evs[i].events == EPOLLIN, "event %d: events %#x", i, evs[i].events);
		seen |= 1ULL << (evs[i].data.u64 & 63);
	}
	CHECK(n == 2 && seen == ((1ULL << 0) | (1ULL << 1)), "epoll reported %d events (data bits %#llx), expected 0x40 and 0x41",
	      n, (unsigned long long)seen);
	char c;
	CHECK(read(50, &c, 1) == 1 && c == 'a' && read(51, &c, 1) == 1 && c == 'b', "the moved fds do not read their pipes");
	CHECK_EQ_U("events ready after reading", 0, epoll_wait(30, evs, 4, 0));
	finish("epoll moved");
}
