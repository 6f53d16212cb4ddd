/*
 * usock_stream: a producer and a consumer over a SOCK_STREAM socketpair across fork, with
 * data in flight in both directions when dumped.
 *
 *   parent (fd P) <== socketpair(SOCK_STREAM) ==> child (fd C)
 *
 * Before READY:
 *   child:  SO_PASSCRED on C (so what the parent sends carries the parent's credentials);
 *   parent: SO_SNDBUF and SO_RCVBUF set on P; writes P2C_LEN bytes (pattern 1) into P;
 *   child:  writes C2P_LEN bytes (pattern 2) into C, then shutdown(C, SHUT_WR).
 *   Nobody reads.
 *   READY child pid=N fd=C
 *   READY parent pid=N child=N fd=P
 *
 * argv[2] = "nobody": before anything else, the process gives its status file and its log to
 * uid 65534 and becomes uid/gid 65534 (groups [65534]), so the sockets' peer credentials name that user.
 * Either way each side records SO_PEERCRED of its end (the parent's pid, the uid and gid)
 * and checks it after the restore.
 *
 * After <status>.go:
 *   parent: buffer sizes as set; FIONREAD = C2P_LEN; reads the C2P bytes, then EOF (the
 *           child shut its writing side down); then produces ITEMS lines "item N\n", closes P
 *           and reaps the child.
 *   child:  SO_PASSCRED still on; FIONREAD = P2C_LEN; reads the P2C bytes with recvmsg, each
 *           piece with the parent's credentials (pid, uid, gid); then (STAGE line: only now
 *           does the parent produce) consumes the items up to EOF;
 *           sending on C fails with EPIPE (its SHUT_WR is kept).
 */
#include "usock_common.h"
#include <grp.h>
#include <sys/prctl.h>

#define P2C_LEN 40000
#define C2P_LEN 100000
#define ITEMS 200
#define SNDBUF_SET 65536
#define RCVBUF_SET 98304

static void check_credentials_and_read(int fd, pid_t parent)
{
	static unsigned char buf[P2C_LEN];
	size_t got = 0;
	int pieces = 0;
	while (got < P2C_LEN) {
		if (!wait_readable(fd, 5)) {
			check_failed("child: only %zu of %d bytes within 5 s", got, P2C_LEN);
			return;
		}
		char control[CMSG_SPACE(sizeof(struct ucred))];
		struct iovec iov = { .iov_base = buf + got, .iov_len = P2C_LEN - got };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
				      .msg_controllen = sizeof(control) };
		ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			check_failed("child: recvmsg: %s after %zu bytes", n < 0 ? strerror(errno) : "EOF", got);
			return;
		}
		pieces++;
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_CREDENTIALS) {
			check_failed("child: piece %d (%zd bytes) came without SCM_CREDENTIALS", pieces, n);
		} else {
			struct ucred cr;
			memcpy(&cr, CMSG_DATA(c), sizeof(cr));
			CHECK(cr.pid == parent && cr.uid == getuid() && cr.gid == getgid(),
			      "child: piece %d carries credentials pid %d uid %u gid %u, expected the parent's %d %u %u",
			      pieces, cr.pid, cr.uid, cr.gid, parent, getuid(), getgid());
		}
		got += (size_t)n;
	}
	size_t bad = 0;
	for (size_t i = 0; i < got; i++)
		bad += buf[i] != byte_at(1, i);
	CHECK(bad == 0, "child: %zu bytes from the parent differ", bad);
}

static void consume_items(int fd)
{
	static char buf[ITEMS * 16];
	size_t got = 0;
	for (;;) {
		if (!wait_readable(fd, 5)) {
			check_failed("child: no EOF within 5 s after %zu bytes of items", got);
			break;
		}
		ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0) {
			check_failed("child: reading items: %s", strerror(errno));
			break;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	buf[got] = 0;
	char *p = buf;
	for (int i = 0; i < ITEMS; i++) {
		char want[32];
		int l = snprintf(want, sizeof(want), "item %d\n", i);
		if (strncmp(p, want, (size_t)l) != 0) {
			check_failed("child: item %d missing or wrong at byte %zu", i, (size_t)(p - buf));
			return;
		}
		p += l;
	}
	CHECK(*p == 0, "child: %zu extra bytes after the items", strlen(p));
}

static struct ucred peer_of(int fd)
{
	struct ucred cr = { 0, 0, 0 };
	socklen_t l = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0)
		check_failed("%s: SO_PEERCRED: %s", role, strerror(errno));
	return cr;
}

static void check_peer(int fd, struct ucred was)
{
	struct ucred now = peer_of(fd);
	CHECK(now.pid == was.pid && now.uid == was.uid && now.gid == was.gid,
	      "%s: SO_PEERCRED is pid %d uid %u gid %u, was %d %u %u", role, now.pid, now.uid, now.gid, was.pid, was.uid,
	      was.gid);
}

static void become_nobody(void)
{
	int f = open(wl_status, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	gid_t g = 65534;
	if (f < 0 || fchown(f, 65534, 65534) < 0)
		die("making the status file nobody's: %s", strerror(errno));
	close(f);
	/* The log (stdout and stderr), a file of the test, is reopened at restore with the
	 * process's own credentials: it must be nobody's too. */
	if (fchown(1, 65534, 65534) < 0)
		die("making the log nobody's: %s", strerror(errno));
	if (setgroups(1, &g) < 0 || setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
		die("becoming nobody: %s", strerror(errno));
	prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	if (argc > 2 && strcmp(argv[2], "nobody") == 0)
		become_nobody();
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		int c = sv[1];
		close(sv[0]);
		set_opt(c, SO_PASSCRED, 1);
		status("STAGE child passcred");
		wait_for_status("STAGE parent wrote");
		static unsigned char out[C2P_LEN];
		fill_pattern(out, 2, C2P_LEN);
		send_all(c, out, C2P_LEN, "C2P");
		if (shutdown(c, SHUT_WR) < 0)
			die("child: shutdown: %s", strerror(errno));
		struct ucred peer = peer_of(c);
		CHECK(peer.pid == parent && peer.uid == getuid() && peer.gid == getgid(),
		      "child: SO_PEERCRED before the dump is pid %d uid %u gid %u", peer.pid, peer.uid, peer.gid);
		status("READY child pid=%d fd=%d", my_pid, c);
		wait_go();
		check_peer(c, peer);

		CHECK(get_opt(c, SO_PASSCRED) == 1, "child: SO_PASSCRED is off after restore");
		CHECK(queued_bytes(c) == P2C_LEN, "child: %d bytes queued, expected %d", queued_bytes(c), P2C_LEN);
		check_credentials_and_read(c, parent);
		status("STAGE child read P2C");
		consume_items(c);
		ssize_t w = send(c, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		CHECK(w < 0 && errno == EPIPE, "child: send after SHUT_WR returned %zd (%s), expected EPIPE", w,
		      w < 0 ? strerror(errno) : "sent");
		role_finish();
	}
	int p = sv[0];
	close(sv[1]);
	set_opt(p, SO_SNDBUF, SNDBUF_SET);
	set_opt(p, SO_RCVBUF, RCVBUF_SET);
	int sndbuf = get_opt(p, SO_SNDBUF), rcvbuf = get_opt(p, SO_RCVBUF);
	wait_for_status("STAGE child passcred");
	static unsigned char out[P2C_LEN];
	fill_pattern(out, 1, P2C_LEN);
	send_all(p, out, P2C_LEN, "P2C");
	status("STAGE parent wrote");
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", child);
	wait_for_status(needle);
	if (queued_bytes(p) != C2P_LEN)
		die("parent: %d bytes queued before the dump, expected %d", queued_bytes(p), C2P_LEN);
	struct ucred peer = peer_of(p);
	status("READY parent pid=%d child=%d fd=%d", my_pid, child, p);
	wait_go();
	check_peer(p, peer);

	CHECK(get_opt(p, SO_SNDBUF) == sndbuf, "parent: SO_SNDBUF %d, was %d", get_opt(p, SO_SNDBUF), sndbuf);
	CHECK(get_opt(p, SO_RCVBUF) == rcvbuf, "parent: SO_RCVBUF %d, was %d", get_opt(p, SO_RCVBUF), rcvbuf);
	CHECK(get_opt(p, SO_PASSCRED) == 0, "parent: SO_PASSCRED is on");
	CHECK(queued_bytes(p) == C2P_LEN, "parent: %d bytes queued, expected %d", queued_bytes(p), C2P_LEN);
	recv_pattern(p, 2, C2P_LEN, "C2P");
	expect_eof(p, "after C2P (the child shut writing down)");
	wait_for_status("STAGE child read P2C");
	for (int i = 0; i < ITEMS; i++) {
		char line[32];
		int l = snprintf(line, sizeof(line), "item %d\n", i);
		send_all(p, line, (size_t)l, "an item");
	}
	close(p);
	reap("child", child);
	role_finish();
}
