/*
 * usock_abstract: sockets with abstract names (no file), including names the kernel gives
 * itself (autobind, for a socket with SO_PASSCRED that connects or sends unnamed).
 *
 *   parent: DS, a SOCK_DGRAM socket bound to "@crust-usock-<pid>-dgram", with SO_PASSCRED;
 *           SL, a SOCK_STREAM listener on "@crust-usock-<pid>-stream", backlog 4;
 *           SA = accept(SL): the connection of the child's SC.
 *   child:  U, an unnamed unconnected SOCK_DGRAM socket that sends to DS with sendto;
 *           K, a SOCK_DGRAM socket with SO_PASSCRED connected to DS (so autobound to a
 *              kernel-chosen abstract name);
 *           SC, a SOCK_STREAM socket with SO_PASSCRED connected to SL (autobound too).
 *
 * Before READY: DS gets five datagrams, in this order: "u1" (U), "k1" (K), "u2", "k2", "u3";
 * SC sends CS_LEN bytes (pattern 7) and SA sends SC_LEN bytes (pattern 8); nobody reads.
 *   READY child pid=N kname=@xxxxx scname=@xxxxx
 *   READY parent pid=N child=N
 *
 * After <status>.go:
 *   parent: DS is named as before, SO_PASSCRED on; it receives the five datagrams in order,
 *           each with its sender's name (U: unnamed; K: K's name) and the child's credentials;
 *           SL listens on its name; SA is named like SL, its peer is SC's name; SA delivers the
 *           CS bytes. Then a NEW connection from the test (outside the tree) to the stream
 *           name is accepted: it reads "hello from outside\n" and answers "welcome\n". Once
 *           the child says so, it receives K's live datagram "k-live".
 *   child:  K keeps its name and is still connected to DS (getpeername), SC keeps its name,
 *           its peer is the stream name; SC delivers the SC bytes; K sends "k-live".
 */
#include "usock_common.h"

#define CS_LEN 12345
#define SC_LEN 54321

static char dgram_name[108], stream_name[108];

static int named_socket(int type, const char *name)
{
	int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	struct sockaddr_un a;
	socklen_t l = make_addr(&a, name);
	if (s < 0 || bind(s, (struct sockaddr *)&a, l) < 0)
		die("binding %s: %s", name, strerror(errno));
	return s;
}

static void own_name(int fd, char *out, size_t outsz)
{
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	if (getsockname(fd, (struct sockaddr *)&a, &l) < 0)
		die("%s: getsockname: %s", role, strerror(errno));
	show_addr(&a, l, out, outsz);
}

static void send_to_ds(int fd, const char *msg, int connected)
{
	struct sockaddr_un a;
	socklen_t l = make_addr(&a, dgram_name);
	ssize_t w = connected ? send(fd, msg, strlen(msg), 0) : sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&a, l);
	if (w != (ssize_t)strlen(msg))
		die("%s: sending '%s': %s", role, msg, strerror(errno));
}

/* Receives one datagram on DS and checks its text, sender name and credentials. */
static void expect_datagram(int ds, const char *text, const char *sender, pid_t from)
{
	char data[64] = "";
	struct sockaddr_un a;
	char control[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = { .iov_base = data, .iov_len = sizeof(data) - 1 };
	struct msghdr msg = { .msg_name = &a, .msg_namelen = sizeof(a), .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = control, .msg_controllen = sizeof(control) };
	if (!wait_readable(ds, 5)) {
		check_failed("parent: datagram '%s' not there within 5 s", text);
		return;
	}
	ssize_t n = recvmsg(ds, &msg, MSG_DONTWAIT);
	if (n < 0) {
		check_failed("parent: receiving '%s': %s", text, strerror(errno));
		return;
	}
	data[n] = 0;
	char name[128];
	show_addr(&a, msg.msg_namelen, name, sizeof(name));
	CHECK(strcmp(data, text) == 0, "parent: got datagram '%s', expected '%s'", data, text);
	CHECK(strcmp(name, sender) == 0, "parent: datagram '%s' came from '%s', expected '%s'", text, name, sender);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_CREDENTIALS) {
		check_failed("parent: datagram '%s' without credentials", text);
	} else {
		struct ucred cr;
		memcpy(&cr, CMSG_DATA(c), sizeof(cr));
		CHECK(cr.pid == from, "parent: datagram '%s' has the credentials of pid %d, expected %d", text, cr.pid, from);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	snprintf(dgram_name, sizeof(dgram_name), "@crust-usock-%d-dgram", (int)getpid());
	snprintf(stream_name, sizeof(stream_name), "@crust-usock-%d-stream", (int)getpid());
	int ds = named_socket(SOCK_DGRAM, dgram_name);
	set_opt(ds, SO_PASSCRED, 1);
	int sl = named_socket(SOCK_STREAM, stream_name);
	if (listen(sl, 4) < 0)
		die("listen: %s", strerror(errno));

	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		close(ds);
		close(sl);
		int u = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		int k = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		int sc = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		set_opt(k, SO_PASSCRED, 1);
		set_opt(sc, SO_PASSCRED, 1);
		struct sockaddr_un a;
		socklen_t l = make_addr(&a, dgram_name);
		if (connect(k, (struct sockaddr *)&a, l) < 0)
			die("child: connecting K: %s", strerror(errno));
		l = make_addr(&a, stream_name);
		if (connect(sc, (struct sockaddr *)&a, l) < 0)
			die("child: connecting SC: %s", strerror(errno));
		send_to_ds(u, "u1", 0);
		send_to_ds(k, "k1", 1);
		send_to_ds(u, "u2", 0);
		send_to_ds(k, "k2", 1);
		send_to_ds(u, "u3", 0);
		static unsigned char cs[CS_LEN];
		fill_pattern(cs, 7, CS_LEN);
		send_all(sc, cs, CS_LEN, "CS");
		char kname[128], scname[128];
		own_name(k, kname, sizeof(kname));
		own_name(sc, scname, sizeof(scname));
		if (strlen(kname) != 6 || strlen(scname) != 6)
			die("child: autobound names '%s' '%s' are not @ and five hex digits", kname, scname);
		status("READY child pid=%d kname=%s scname=%s", my_pid, kname, scname);
		wait_go();

		check_name(k, 0, kname, "K");
		check_name(k, 1, dgram_name, "K");
		check_name(sc, 0, scname, "SC");
		check_name(sc, 1, stream_name, "SC");
		CHECK(get_opt(k, SO_PASSCRED) == 1 && get_opt(sc, SO_PASSCRED) == 1, "child: SO_PASSCRED lost");
		recv_pattern(sc, 8, SC_LEN, "SC");
		wait_for_status("STAGE parent drained DS");
		send_to_ds(k, "k-live", 1);
		role_finish();
	}
	int sa = accept4(sl, NULL, NULL, SOCK_CLOEXEC);
	if (sa < 0)
		die("accept: %s", strerror(errno));
	static unsigned char sc_bytes[SC_LEN];
	fill_pattern(sc_bytes, 8, SC_LEN);
	send_all(sa, sc_bytes, SC_LEN, "SC");
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", child);
	wait_for_status(needle);
	static char text[65536];
	read_file(wl_status, text, sizeof(text));
	char kname[16] = "", scname[16] = "";
	char *kp = strstr(text, "kname="), *sp = strstr(text, "scname=");
	if (!kp || !sp || sscanf(kp, "kname=%15s", kname) != 1 || sscanf(sp, "scname=%15s", scname) != 1)
		die("parent: the child's READY line lacks its names");
	status("READY parent pid=%d child=%d", my_pid, child);
	wait_go();

	check_name(ds, 0, dgram_name, "DS");
	CHECK(get_opt(ds, SO_PASSCRED) == 1, "parent: SO_PASSCRED off on DS");
	expect_datagram(ds, "u1", "", child);
	expect_datagram(ds, "k1", kname, child);
	expect_datagram(ds, "u2", "", child);
	expect_datagram(ds, "k2", kname, child);
	expect_datagram(ds, "u3", "", child);
	expect_empty(ds, "DS");
	status("STAGE parent drained DS");
	check_name(sl, 0, stream_name, "SL");
	CHECK(get_opt(sl, SO_ACCEPTCONN) == 1, "parent: SL no longer listens");
	check_name(sa, 0, stream_name, "SA");
	check_name(sa, 1, scname, "SA");
	recv_pattern(sa, 7, CS_LEN, "CS");

	if (!wait_readable(sl, 10)) {
		check_failed("parent: no new connection within 10 s");
	} else {
		int c = accept4(sl, NULL, NULL, SOCK_CLOEXEC);
		char hello[64] = "";
		size_t got = 0;
		while (c >= 0 && got < 19 && wait_readable(c, 5)) {
			ssize_t r = recv(c, hello + got, sizeof(hello) - 1 - got, MSG_DONTWAIT);
			if (r <= 0)
				break;
			got += (size_t)r;
		}
		CHECK(got == 19 && memcmp(hello, "hello from outside\n", 19) == 0, "parent: the new connection sent '%.*s'",
		      (int)got, hello);
		if (c >= 0) {
			send_all(c, "welcome\n", 8, "welcome");
			close(c);
		}
	}
	expect_datagram(ds, "k-live", kname, child);
	reap("child", child);
	role_finish();
}
