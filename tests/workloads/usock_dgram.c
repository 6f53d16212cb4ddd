/*
 * usock_dgram: a SOCK_DGRAM and a SOCK_SEQPACKET socketpair across fork, each with several
 * messages of different sizes queued in both directions when dumped (a zero-length datagram
 * among them), and a process that had peeked into its queue with SO_PEEK_OFF.
 *
 *   parent (D0, S0) <== socketpair(SOCK_DGRAM), socketpair(SOCK_SEQPACKET) ==> child (D1, S1)
 *
 * Before READY: the parent sends the P2C messages on D0 and S0, the child the C2P messages on
 * D1 and S1; nobody reads. The parent then sets SO_PEEK_OFF 0 on D0 and peeks the first
 * message, which moves its peek offset past it.
 *
 * After <status>.go each side receives its messages: same count, sizes and bytes, no
 * truncation, nothing more; the parent first checks SO_PEEK_OFF and that a MSG_PEEK returns
 * the second message. Once both drained their queues (STAGE lines), one more message goes
 * each way on each pair.
 */
#include "usock_common.h"

static const size_t dgram_p2c[] = { 1, 100, 0, 3000, 60000, 7 };
static const size_t dgram_c2p[] = { 50, 50, 50 };
static const size_t seq_p2c[] = { 5, 2000, 10000 };
static const size_t seq_c2p[] = { 1, 65000 };
#define N(a) (sizeof(a) / sizeof((a)[0]))
#define SEED(base, k) ((unsigned)((base) + (k)))

static unsigned char buf[70000];

static void send_messages(int fd, const size_t *sizes, size_t n, unsigned base, const char *what)
{
	for (size_t k = 0; k < n; k++) {
		fill_pattern(buf, SEED(base, k), sizes[k]);
		ssize_t w = send(fd, buf, sizes[k], MSG_NOSIGNAL);
		if (w != (ssize_t)sizes[k])
			die("%s: sending %s message %zu (%zu bytes): %zd %s", role, what, k, sizes[k], w,
			    w < 0 ? strerror(errno) : "");
	}
}

static void recv_messages(int fd, const size_t *sizes, size_t n, unsigned base, const char *what)
{
	for (size_t k = 0; k < n; k++) {
		if (!wait_readable(fd, 5)) {
			check_failed("%s: %s: message %zu not there within 5 s", role, what, k);
			return;
		}
		struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t r = recvmsg(fd, &msg, MSG_DONTWAIT);
		if (r < 0) {
			check_failed("%s: %s: message %zu: %s", role, what, k, strerror(errno));
			return;
		}
		CHECK((size_t)r == sizes[k], "%s: %s: message %zu has %zd bytes, expected %zu", role, what, k, r, sizes[k]);
		CHECK(!(msg.msg_flags & MSG_TRUNC), "%s: %s: message %zu truncated", role, what, k);
		size_t bad = 0;
		for (size_t i = 0; i < (size_t)r && i < sizes[k]; i++)
			bad += buf[i] != byte_at(SEED(base, k), i);
		CHECK(bad == 0, "%s: %s: message %zu: %zu bytes differ", role, what, k, bad);
	}
	expect_empty(fd, what);
}

static void live_exchange(int send_fd, int recv_fd_unused, const char *what)
{
	(void)recv_fd_unused;
	char m[64];
	int l = snprintf(m, sizeof(m), "live %s from %s", what, role);
	send_all(send_fd, m, (size_t)l, what);
}

static void expect_live(int fd, const char *from, const char *what)
{
	char want[64], got[64];
	int l = snprintf(want, sizeof(want), "live %s from %s", what, from);
	if (!wait_readable(fd, 5)) {
		check_failed("%s: %s: no live message within 5 s", role, what);
		return;
	}
	ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT);
	CHECK(r == l && memcmp(got, want, (size_t)l) == 0, "%s: %s: live message of %zd bytes '%.*s'", role, what, r,
	      (int)(r > 0 ? r : 0), got);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	int d[2], s[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d) < 0 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s) < 0)
		die("socketpair: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		close(d[0]);
		close(s[0]);
		send_messages(d[1], dgram_c2p, N(dgram_c2p), 200, "datagram C2P");
		send_messages(s[1], seq_c2p, N(seq_c2p), 300, "seqpacket C2P");
		status("READY child pid=%d dgram=%d seqpacket=%d", my_pid, d[1], s[1]);
		wait_go();
		recv_messages(d[1], dgram_p2c, N(dgram_p2c), 100, "datagram P2C");
		recv_messages(s[1], seq_p2c, N(seq_p2c), 400, "seqpacket P2C");
		status("STAGE child drained");
		wait_for_status("STAGE parent drained");
		live_exchange(d[1], -1, "datagram");
		live_exchange(s[1], -1, "seqpacket");
		expect_live(d[1], "parent", "datagram");
		expect_live(s[1], "parent", "seqpacket");
		role_finish();
	}
	close(d[1]);
	close(s[1]);
	send_messages(d[0], dgram_p2c, N(dgram_p2c), 100, "datagram P2C");
	send_messages(s[0], seq_p2c, N(seq_p2c), 400, "seqpacket P2C");
	char needle[64];
	snprintf(needle, sizeof(needle), "READY child pid=%d ", child);
	wait_for_status(needle);
	set_opt(d[0], SO_PEEK_OFF, 0);
	ssize_t peeked = recv(d[0], buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
	if (peeked != (ssize_t)dgram_c2p[0])
		die("parent: peeking the first datagram returned %zd", peeked);
	int peek_off = get_opt(d[0], SO_PEEK_OFF);
	status("READY parent pid=%d child=%d dgram=%d seqpacket=%d peek_off=%d", my_pid, child, d[0], s[0], peek_off);
	wait_go();

	CHECK(get_opt(d[0], SO_PEEK_OFF) == peek_off, "parent: SO_PEEK_OFF %d, was %d", get_opt(d[0], SO_PEEK_OFF),
	      peek_off);
	ssize_t r = recv(d[0], buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
	size_t bad = 0;
	for (ssize_t i = 0; i < r; i++)
		bad += buf[i] != byte_at(SEED(200, 1), (size_t)i);
	CHECK(r == (ssize_t)dgram_c2p[1] && bad == 0, "parent: MSG_PEEK at the peek offset returned %zd bytes (%zu differ), "
						      "expected the second datagram", r, bad);
	set_opt(d[0], SO_PEEK_OFF, -1);
	recv_messages(d[0], dgram_c2p, N(dgram_c2p), 200, "datagram C2P");
	recv_messages(s[0], seq_c2p, N(seq_c2p), 300, "seqpacket C2P");
	status("STAGE parent drained");
	wait_for_status("STAGE child drained");
	live_exchange(d[0], -1, "datagram");
	live_exchange(s[0], -1, "seqpacket");
	expect_live(d[0], "child", "datagram");
	expect_live(s[0], "child", "seqpacket");
	reap("child", child);
	role_finish();
}
