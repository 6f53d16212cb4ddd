/*
 * evq_epoll: epoll instances over pipes, in every state crust has to keep.
 *
 *   E1 (level-triggered and one-shot):
 *       p1 read end   EPOLLIN, LT, D1; "L" buffered: ready
 *       p2 read end   EPOLLIN|EPOLLONESHOT, D2; "O" buffered and already reported: disabled
 *       p3 write end  EPOLLOUT|EPOLLEXCLUSIVE, D3: ready
 *       p4 read end   EPOLLIN|EPOLLONESHOT, D4; empty: armed, not ready
 *       p6 read end   EPOLLIN|EPOLLONESHOT, D13; fired, and its byte was read since: disabled
 *                     on an empty pipe
 *   E2 (an edge already reported):
 *       q1 read end   EPOLLIN|EPOLLET, D5; "E" buffered, reported by epoll_wait, not read
 *       q2 read end   EPOLLIN|EPOLLET, D6; empty
 *   E3 (an edge not reported yet):
 *       q3 read end   EPOLLIN|EPOLLET, D7; "P" written after registration, no epoll_wait
 *       q4 read end   EPOLLIN|EPOLLET, D8; empty
 *   E4 (nested): E5 EPOLLIN, D9;  E5: q5 read end EPOLLIN, D10 (empty)
 *   E7 (one file under two fd numbers): p5 read end and its dup, EPOLLIN, D11 and D12;
 *       "D" buffered
 *
 *   READY pid=N e1=FD e2=FD e3=FD e4=FD e5=FD e7=FD
 *
 * After <status>.go, what epoll_wait (timeout 0) reports must be exactly what it would have
 * reported without the checkpoint:
 *   E1: {D1 IN, D3 OUT}; after a write to p4: {D1, D3, D4}, then {D1, D3} (one-shot);
 *       after re-arming p2 with EPOLL_CTL_MOD: D2 comes too; after re-arming p6 nothing
 *       more, until a write to p6: D13.
 *   E2: nothing; after a write to q1: {D5} once, then nothing.
 *   E3: {D7} once, then nothing.
 *   E4: nothing; after a write to q5: E4 {D9}, E5 {D10}.
 *   E7: {D11, D12}.
 */
#include "common.h"
#include <sys/epoll.h>

#define D1 0x1111000000000001ULL
#define D2 0x2222000000000002ULL
#define D3 0x3333000000000003ULL
#define D4 0x4444000000000004ULL
#define D5 0x5555000000000005ULL
#define D6 0x6666000000000006ULL
#define D7 0x7777000000000007ULL
#define D8 0x8888000000000008ULL
#define D9 0x9999000000000009ULL
#define D10 0xaaaa00000000000aULL
#define D11 0xbbbb00000000000bULL
#define D12 0xcccc00000000000cULL
#define D13 0xdddd00000000000dULL

static void mkpipe(int p[2])
{
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));
}

static void add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl(ADD, fd %d): %s", fd, strerror(errno));
}

static void put(int fd, const char *s)
{
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		die("write to fd %d: %s", fd, strerror(errno));
}

/* epoll_wait with timeout 0, as "D1:1 D3:4" (data:events) sorted by data. */
static void ready(int ep, char *out, size_t n)
{
	struct epoll_event ev[16];
	int k = epoll_wait(ep, ev, 16, 0);
	out[0] = 0;
	if (k < 0) {
		snprintf(out, n, "error %s", strerror(errno));
		return;
	}
	for (int i = 0; i < k; i++)
		for (int j = i + 1; j < k; j++)
			if (ev[j].data.u64 < ev[i].data.u64) {
				struct epoll_event t = ev[i];
				ev[i] = ev[j];
				ev[j] = t;
			}
	for (int i = 0; i < k; i++) {
		size_t l = strlen(out);
		snprintf(out + l, n - l, "%s%llx:%x", i ? " " : "", (unsigned long long)ev[i].data.u64, ev[i].events);
	}
}

static void expect(const char *what, int ep, const char *want)
{
	char got[512];
	ready(ep, got, sizeof(got));
	CHECK(strcmp(got, want) == 0, "%s: epoll_wait reported [%s], expected [%s]", what, got, want);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int p1[2], p2[2], p3[2], p4[2], p5[2], p6[2], q1[2], q2[2], q3[2], q4[2], q5[2];
	mkpipe(p1), mkpipe(p2), mkpipe(p3), mkpipe(p4), mkpipe(p5), mkpipe(p6);
	mkpipe(q1), mkpipe(q2), mkpipe(q3), mkpipe(q4), mkpipe(q5);
	int e1 = epoll_create1(EPOLL_CLOEXEC), e2 = epoll_create1(EPOLL_CLOEXEC), e3 = epoll_create1(0);
	int e4 = epoll_create1(EPOLL_CLOEXEC), e5 = epoll_create1(EPOLL_CLOEXEC), e7 = epoll_create1(EPOLL_CLOEXEC);
	if (e1 < 0 || e2 < 0 || e3 < 0 || e4 < 0 || e5 < 0 || e7 < 0)
		die("epoll_create1: %s", strerror(errno));
	fcntl(e3, F_SETFL, O_NONBLOCK);
	char buf[512], c[4] = { 0 };

	put(p1[1], "L");
	add(e1, p1[0], EPOLLIN, D1);
	add(e1, p2[0], EPOLLIN | EPOLLONESHOT, D2);
	put(p2[1], "O");
	add(e1, p6[0], EPOLLIN | EPOLLONESHOT, D13);
	put(p6[1], "6");
	ready(e1, buf, sizeof(buf));
	if (strcmp(buf, "1111000000000001:1 2222000000000002:1 dddd00000000000d:1") != 0)
		die("E1 setup: epoll_wait reported [%s]", buf);
	if (read(p6[0], buf, sizeof(buf)) != 1)
		die("E1 setup: reading p6: %s", strerror(errno));
	add(e1, p3[1], EPOLLOUT | EPOLLEXCLUSIVE, D3);
	add(e1, p4[0], EPOLLIN | EPOLLONESHOT, D4);

	add(e2, q1[0], EPOLLIN | EPOLLET, D5);
	add(e2, q2[0], EPOLLIN | EPOLLET, D6);
	put(q1[1], "E");
	ready(e2, buf, sizeof(buf));
	if (strcmp(buf, "5555000000000005:1") != 0)
		die("E2 setup: epoll_wait reported [%s]", buf);

	add(e3, q3[0], EPOLLIN | EPOLLET, D7);
	add(e3, q4[0], EPOLLIN | EPOLLET, D8);
	put(q3[1], "P");

	add(e5, q5[0], EPOLLIN, D10);
	add(e4, e5, EPOLLIN, D9);

	int p5dup = dup(p5[0]);
	add(e7, p5[0], EPOLLIN, D11);
	add(e7, p5dup, EPOLLIN, D12);
	put(p5[1], "D");

	status("READY pid=%d e1=%d e2=%d e3=%d e4=%d e5=%d e7=%d", getpid(), e1, e2, e3, e4, e5, e7);
	while (!go_requested())
		sleep_ms(10);

	expect("E1", e1, "1111000000000001:1 3333000000000003:4");
	put(p4[1], "4");
	expect("E1 after a write to p4", e1, "1111000000000001:1 3333000000000003:4 4444000000000004:1");
	expect("E1 after p4's one-shot fired", e1, "1111000000000001:1 3333000000000003:4");
	struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = D2 };
	CHECK(epoll_ctl(e1, EPOLL_CTL_MOD, p2[0], &ev) == 0, "re-arming p2: %s", strerror(errno));
	expect("E1 after re-arming p2", e1, "1111000000000001:1 2222000000000002:1 3333000000000003:4");
	ev.data.u64 = D13;
	CHECK(epoll_ctl(e1, EPOLL_CTL_MOD, p6[0], &ev) == 0, "re-arming p6: %s", strerror(errno));
	expect("E1 after re-arming p6", e1, "1111000000000001:1 3333000000000003:4");
	put(p6[1], "6");
	expect("E1 after a write to p6", e1, "1111000000000001:1 3333000000000003:4 dddd00000000000d:1");
	CHECK(read(p6[0], c, 4) == 1 && c[0] == '6', "p6: not exactly the byte written after restore");

	expect("E2", e2, "");
	put(q1[1], "e");
	expect("E2 after a new write to q1", e2, "5555000000000005:1");
	expect("E2 after that edge", e2, "");

	expect("E3", e3, "7777000000000007:1");
	expect("E3 after its edge", e3, "");
	CHECK((fcntl(e3, F_GETFL) & O_NONBLOCK) != 0, "E3 lost O_NONBLOCK");
	CHECK(fcntl(e3, F_GETFD) == 0, "E3 has FD_CLOEXEC");
	CHECK(fcntl(e1, F_GETFD) == FD_CLOEXEC, "E1 lost FD_CLOEXEC");

	expect("E4", e4, "");
	put(q5[1], "5");
	expect("E4 after a write to q5", e4, "9999000000000009:1");
	expect("E5 after a write to q5", e5, "aaaa00000000000a:1");

	expect("E7", e7, "bbbb00000000000b:1 cccc00000000000c:1");

	/* The buffered bytes are still there, once each. */
	CHECK(read(p1[0], c, 4) == 1 && c[0] == 'L', "p1: buffered byte lost");
	CHECK(read(q3[0], c, 4) == 1 && c[0] == 'P', "q3: buffered byte lost");
	finish("epoll");
}
