/*
 * evq_epoll_fork: one epoll shared by a parent and its child after fork.
 *
 *   parent: pipe PA, epoll E with PA's read end (EPOLLIN, DP), then fork.
 *   child:  its own pipe PC, registers PC's read end in the shared E (EPOLLIN, DC).
 *   parent: its own pipe PB after the fork, registers PB's read end in E (EPOLLIN, DB). PB
 *           and PC have the same fd numbers in their processes: E has two registrations
 *           under one target number, each only valid in one of the two processes, so no
 *           single process can register them all again. Nothing is ready.
 *
 *   READY child pid=N e=FD pcr=FD
 *   READY parent pid=N child=N e=FD par=FD pbr=FD
 *
 * After <status>.go both registrations are in the one epoll both processes hold:
 *   parent: E reports nothing; writes to PA and PB; "WROTE parent"; waits for "WROTE child";
 *           E reports {DP, DB, DC}; "CHECKED parent"; reaps the child.
 *   child:  waits for "WROTE parent"; E reports {DP, DB}; writes to PC; "WROTE child";
 *           E reports {DP, DB, DC}; waits for "CHECKED parent" (its exit closes PC and so
 *           removes DC from the epoll).
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/wait.h>

#define DP 0x5041000000000001ULL
#define DC 0x4348000000000002ULL
#define DB 0x4242000000000003ULL

static const char *role = "parent";

static int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

static void wait_for_status(const char *needle)
{
	double deadline = mono_now() + 10;
	while (!status_has(needle)) {
		if (mono_now() > deadline) {
			check_failed("%s: timed out waiting for '%s'", role, needle);
			return;
		}
		sleep_ms(5);
	}
}

static void expect(int ep, const char *want)
{
	struct epoll_event ev[8];
	int k = epoll_wait(ep, ev, 8, 0);
	char got[256] = "";
	for (int i = 0; i < k; i++)
		for (int j = i + 1; j < k; j++)
			if (ev[j].data.u64 < ev[i].data.u64) {
				struct epoll_event t = ev[i];
				ev[i] = ev[j];
				ev[j] = t;
			}
	for (int i = 0; i < k; i++) {
		size_t l = strlen(got);
		snprintf(got + l, sizeof(got) - l, "%s%llx", i ? " " : "", (unsigned long long)ev[i].data.u64);
	}
	CHECK(strcmp(got, want) == 0, "%s: epoll_wait reported [%s], expected [%s]", role, got, want);
}

static __attribute__((noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d", role, (int)getpid());
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int pa[2];
	if (pipe2(pa, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));
	int e = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = DP };
	if (e < 0 || epoll_ctl(e, EPOLL_CTL_ADD, pa[0], &ev) < 0)
		die("epoll: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		role = "child";
		int pc[2];
		if (pipe2(pc, O_CLOEXEC) < 0)
			die("child: pipe2: %s", strerror(errno));
		struct epoll_event evc = { .events = EPOLLIN, .data.u64 = DC };
		if (epoll_ctl(e, EPOLL_CTL_ADD, pc[0], &evc) < 0)
			die("child: epoll_ctl: %s", strerror(errno));
		status("READY child pid=%d e=%d pcr=%d", getpid(), e, pc[0]);
		while (!go_requested())
			sleep_ms(10);
		wait_for_status("WROTE parent");
		expect(e, "4242000000000003 5041000000000001");
		if (write(pc[1], "c", 1) != 1)
			check_failed("child: write: %s", strerror(errno));
		status("WROTE child");
		expect(e, "4242000000000003 4348000000000002 5041000000000001");
		/* PC's read end leaves the epoll when this process exits and closes it. */
		wait_for_status("CHECKED parent");
		role_finish();
	}
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", child);
	wait_for_status(needle);
	if (wl_fail_count)
		die("%s", wl_fail_buf);
	int pb[2];
	struct epoll_event evb = { .events = EPOLLIN, .data.u64 = DB };
	if (pipe2(pb, O_CLOEXEC) < 0 || epoll_ctl(e, EPOLL_CTL_ADD, pb[0], &evb) < 0)
		die("parent: pipe2/epoll_ctl: %s", strerror(errno));
	status("READY parent pid=%d child=%d e=%d par=%d pbr=%d", getpid(), child, e, pa[0], pb[0]);
	while (!go_requested())
		sleep_ms(10);
	expect(e, "");
	if (write(pa[1], "p", 1) != 1 || write(pb[1], "b", 1) != 1)
		check_failed("parent: write: %s", strerror(errno));
	status("WROTE parent");
	wait_for_status("WROTE child");
	expect(e, "4242000000000003 4348000000000002 5041000000000001");
	status("CHECKED parent");
	int st;
	double deadline = mono_now() + 10;
	pid_t r;
	while ((r = waitpid(child, &st, WNOHANG)) == 0 && mono_now() < deadline)
		sleep_ms(5);
	CHECK(r == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with %d status 0x%x", r, st);
	role_finish();
}
