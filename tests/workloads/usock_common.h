/*
 * Helpers shared by the UNIX socket workloads (usock_*.c): roles in a process tree, byte
 * patterns, reading and writing with deadlines, socket option and name checks.
 *
 * Each process of a workload has a role ("parent", "child"...) and writes its own status
 * lines: "READY <role> pid=N ...", then "PASS <role> pid=N" or "FAIL <role> pid=N <why>". A
 * parent reaps its children and passes only if they passed, so its line is the last one.
 */
#ifndef CRUST_USOCK_COMMON_H
#define CRUST_USOCK_COMMON_H

#include "common.h"
#include <poll.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static const char *role = "parent";
static pid_t my_pid, my_ppid;

static __attribute__((unused)) unsigned char byte_at(unsigned seed, size_t i)
{
	return (unsigned char)((i * 131 + seed * 7 + (i >> 8)) & 0xff);
}

static __attribute__((unused)) void fill_pattern(unsigned char *buf, unsigned seed, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = byte_at(seed, i);
}

static __attribute__((unused)) int status_has(const char *needle)
{
	static char buf[65536];
	if (read_file(wl_status, buf, sizeof(buf)) < 0)
		return 0;
	return strstr(buf, needle) != NULL;
}

static __attribute__((unused)) void wait_for_status(const char *needle)
{
	double deadline = mono_now() + 10;
	while (!status_has(needle)) {
		if (mono_now() > deadline)
			die("%s: timed out waiting for '%s'", role, needle);
		sleep_ms(5);
	}
}

static __attribute__((unused)) void become(const char *name)
{
	role = name;
	my_ppid = getppid();
	my_pid = getpid();
}

static __attribute__((unused)) void wait_go(void)
{
	while (!go_requested())
		sleep_ms(10);
	CHECK(getpid() == my_pid && getppid() == my_ppid, "%s: pid %d ppid %d, was %d %d", role, getpid(), getppid(),
	      my_pid, my_ppid);
}

/* Writes all of buf (blocking); dies on error. */
static __attribute__((unused)) void send_all(int fd, const void *buf, size_t len, const char *what)
{
	size_t off = 0;
	while (off < len) {
		ssize_t w = send(fd, (const char *)buf + off, len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("%s: sending %s: %zu of %zu bytes: %s", role, what, off, len, w < 0 ? strerror(errno) : "0");
		off += (size_t)w;
	}
}

/* Waits up to `seconds` for fd to be readable; 1 if it is. */
static __attribute__((unused)) int wait_readable(int fd, double seconds)
{
	double deadline = mono_now() + seconds;
	for (;;) {
		double left = deadline - mono_now();
		if (left <= 0)
			return 0;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, (int)(left * 1000) + 1);
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR)
			return 0;
	}
}

/* Reads exactly len bytes (within 5 s) and checks them against pattern `seed`. */
static __attribute__((unused)) void recv_pattern(int fd, unsigned seed, size_t len, const char *what)
{
	unsigned char *buf = malloc(len + 1);
	size_t got = 0;
	while (got < len) {
		if (!wait_readable(fd, 5)) {
			check_failed("%s: %s: only %zu of %zu bytes within 5 s", role, what, got, len);
			break;
		}
		ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			check_failed("%s: %s: %s after %zu of %zu bytes", role, what, n < 0 ? strerror(errno) : "EOF", got,
				     len);
			break;
		}
		got += (size_t)n;
	}
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < got; i++)
		if (buf[i] != byte_at(seed, i) && bad++ == 0)
			first = i;
	CHECK(bad == 0, "%s: %s: %zu bytes differ, first at %zu", role, what, bad, first);
	free(buf);
}

/* The next read returns EOF (within 5 s). */
static __attribute__((unused)) void expect_eof(int fd, const char *what)
{
	char c;
	if (!wait_readable(fd, 5)) {
		check_failed("%s: %s: no EOF within 5 s", role, what);
		return;
	}
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
	CHECK(n == 0, "%s: %s: expected EOF, read returned %zd (%s)", role, what, n, n < 0 ? strerror(errno) : "data");
}

/* Nothing (more) is queued: a non-blocking read fails with EAGAIN. */
static __attribute__((unused)) void expect_empty(int fd, const char *what)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
	CHECK(n < 0 && errno == EAGAIN, "%s: %s: expected nothing queued, read returned %zd (%s)", role, what, n,
	      n < 0 ? strerror(errno) : "data");
}

static __attribute__((unused)) int get_opt(int fd, int name)
{
	int v = -12345;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, name, &v, &l) < 0)
		check_failed("%s: getsockopt(fd %d, %d): %s", role, fd, name, strerror(errno));
	return v;
}

static __attribute__((unused)) void set_opt(int fd, int name, int v)
{
	if (setsockopt(fd, SOL_SOCKET, name, &v, sizeof(v)) < 0)
		die("%s: setsockopt(fd %d, %d, %d): %s", role, fd, name, v, strerror(errno));
}

static __attribute__((unused)) int queued_bytes(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) < 0)
		check_failed("%s: FIONREAD on fd %d: %s", role, fd, strerror(errno));
	return n;
}

/* A sockaddr_un for a path, or for an abstract name when name[0] == '@'. */
static __attribute__((unused)) socklen_t make_addr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	size_t n = strlen(name);
	if (n >= sizeof(a->sun_path))
		die("socket name too long: %s", name);
	memcpy(a->sun_path, name, n);
	if (name[0] == '@') {
		a->sun_path[0] = 0;
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	}
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

/* A socket name for messages: the path, "@name" for abstract, "" for unnamed. */
static __attribute__((unused)) void show_addr(const struct sockaddr_un *a, socklen_t len, char *out, size_t outsz)
{
	size_t n = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
	size_t o = 0;
	for (size_t i = 0; i < n && o + 1 < outsz; i++) {
		char c = a->sun_path[i];
		if (c == 0 && i + 1 == n && i > 0 && a->sun_path[0] != 0)
			break; /* a path's final NUL */
		out[o++] = c ? c : '@';
	}
	out[o] = 0;
}

/* Checks getsockname (peer = 0) or getpeername (peer = 1) of fd against `name` ("" for
 * unnamed, '@' for abstract). */
static __attribute__((unused)) void check_name(int fd, int peer, const char *name, const char *what)
{
	struct sockaddr_un got;
	socklen_t gl = sizeof(got);
	memset(&got, 0, sizeof(got));
	int r = peer ? getpeername(fd, (struct sockaddr *)&got, &gl) : getsockname(fd, (struct sockaddr *)&got, &gl);
	if (r < 0) {
		check_failed("%s: %s: %s: %s", role, what, peer ? "getpeername" : "getsockname", strerror(errno));
		return;
	}
	char shown[256];
	show_addr(&got, gl, shown, sizeof(shown));
	socklen_t want_len = (socklen_t)offsetof(struct sockaddr_un, sun_path);
	if (name[0]) {
		struct sockaddr_un want;
		want_len = make_addr(&want, name);
	}
	CHECK(strcmp(shown, name) == 0 && gl == want_len, "%s: %s: %s is '%s' (%u bytes), expected '%s' (%u bytes)", role,
	      what, peer ? "peer name" : "name", shown, gl, name, want_len);
}

static __attribute__((unused)) void reap(const char *what, pid_t pid)
{
	int st;
	double deadline = mono_now() + 15;
	pid_t r;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && mono_now() < deadline)
		sleep_ms(5);
	if (r != pid)
		check_failed("%s: waitpid(%s %d) returned %d (%s)", role, what, pid, r, r < 0 ? strerror(errno) : "timeout");
	else
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: %s ended with wait status 0x%x", role, what, st);
}

static __attribute__((unused, noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d", role, (int)getpid());
	_exit(0);
}

#endif
