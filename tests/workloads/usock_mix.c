/*
 * usock_mix: one process with the less common UNIX socket arrangements (names relative to the
 * status file's directory, which it chdirs to):
 *
 *   DSP  SOCK_DGRAM bound to "dgram.sock", unconnected; holds four datagrams, in this order:
 *        "from-client-1" (from NC), "from-unnamed" (from U), "from-client-2" (NC), "from-k" (K)
 *   NC   SOCK_DGRAM bound to "client.sock", unconnected, sends with sendto
 *   U    SOCK_DGRAM unnamed, unconnected, sends with sendto
 *   K    SOCK_DGRAM unnamed, connected to "dgram.sock" (DSP is not connected back)
 *   HL   SOCK_STREAM listening on "hidden.sock", whose file was then unlinked; HA accepted
 *        from it (the connection of HC), "hidden-data" waiting in HA
 *   SQL  SOCK_SEQPACKET listening on "@crust-mix-<pid>-seq"; SQA accepted from it (the
 *        connection of SQC); SQC sent 3 messages, SQA 2
 *   T    SOCK_DGRAM bound to "@crust-mix-<pid>-target", which a socket since closed had
 *        connected to (so T shows as connected, without a peer)
 *   Options: SO_RCVTIMEO 1.5 s on HA, SO_SNDTIMEO 2 s on HC, SO_RCVLOWAT 5 on HA, SO_SNDBUF
 *   and SO_RCVBUF on SQA.
 *
 *   READY parent pid=N
 *
 * After <status>.go: every name as before; DSP delivers its four datagrams in order with their
 * senders' names ("client.sock" or unnamed), then nothing; K is still connected to
 * "dgram.sock" and a new datagram from it arrives; "hidden.sock" is still absent (connecting
 * to it fails with ENOENT) yet HL and HA are named so and HA delivers "hidden-data"; SQA and
 * SQC deliver their messages with their boundaries; options as set.
 */
#include "usock_common.h"
#include <sys/stat.h>
#include <libgen.h>

static char seq_name[108], target_name[108];

static int named(int type, const char *name)
{
	int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket: %s", strerror(errno));
	if (name[0]) {
		struct sockaddr_un a;
		socklen_t l = make_addr(&a, name);
		if (bind(s, (struct sockaddr *)&a, l) < 0)
			die("bind %s: %s", name, strerror(errno));
	}
	return s;
}

static void connect_to(int s, const char *name)
{
	struct sockaddr_un a;
	socklen_t l = make_addr(&a, name);
	if (connect(s, (struct sockaddr *)&a, l) < 0)
		die("connect to %s: %s", name, strerror(errno));
}

static void send_to(int s, const char *name, const char *text)
{
	struct sockaddr_un a;
	socklen_t l = make_addr(&a, name);
	if (sendto(s, text, strlen(text), 0, (struct sockaddr *)&a, l) != (ssize_t)strlen(text))
		die("sendto %s: %s", name, strerror(errno));
}

static void expect_from(int fd, const char *text, const char *sender)
{
	char data[64] = "";
	struct sockaddr_un a;
	socklen_t al = sizeof(a);
	ssize_t n = recvfrom(fd, data, sizeof(data) - 1, MSG_DONTWAIT, (struct sockaddr *)&a, &al);
	if (n < 0) {
		check_failed("datagram '%s': %s", text, strerror(errno));
		return;
	}
	data[n] = 0;
	char name[128];
	show_addr(&a, al, name, sizeof(name));
	CHECK(strcmp(data, text) == 0 && strcmp(name, sender) == 0, "got datagram '%s' from '%s', expected '%s' from '%s'",
	      data, name, text, sender);
}

static void expect_message(int fd, const char *text)
{
	char data[64] = "";
	ssize_t n = recv(fd, data, sizeof(data) - 1, MSG_DONTWAIT);
	CHECK(n == (ssize_t)strlen(text) && memcmp(data, text, strlen(text)) == 0, "got message '%.*s' (%zd), expected '%s'",
	      (int)(n > 0 ? n : 0), data, n, text);
}

static void check_timeout(int fd, int name, long sec, long usec, const char *what)
{
	struct timeval tv = { 0, 0 };
	socklen_t l = sizeof(tv);
	getsockopt(fd, SOL_SOCKET, name, &tv, &l);
	CHECK(tv.tv_sec == sec && tv.tv_usec == usec, "%s is %ld.%06ld s, expected %ld.%06ld", what, (long)tv.tv_sec,
	      (long)tv.tv_usec, sec, usec);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", argv[1]);
	if (chdir(dirname(dir)) < 0)
		die("chdir: %s", strerror(errno));
	snprintf(seq_name, sizeof(seq_name), "@crust-mix-%d-seq", (int)getpid());
	snprintf(target_name, sizeof(target_name), "@crust-mix-%d-target", (int)getpid());

	int dsp = named(SOCK_DGRAM, "dgram.sock");
	int nc = named(SOCK_DGRAM, "client.sock");
	int u = named(SOCK_DGRAM, "");
	int k = named(SOCK_DGRAM, "");
	connect_to(k, "dgram.sock");
	send_to(nc, "dgram.sock", "from-client-1");
	send_to(u, "dgram.sock", "from-unnamed");
	send_to(nc, "dgram.sock", "from-client-2");
	if (send(k, "from-k", 6, 0) != 6)
		die("send from K: %s", strerror(errno));

	int hl = named(SOCK_STREAM, "hidden.sock");
	if (listen(hl, 3) < 0)
		die("listen: %s", strerror(errno));
	int hc = named(SOCK_STREAM, "");
	connect_to(hc, "hidden.sock");
	int ha = accept4(hl, NULL, NULL, SOCK_CLOEXEC);
	if (ha < 0 || unlink("hidden.sock") < 0)
		die("accept / unlink: %s", strerror(errno));
	send_all(hc, "hidden-data", 11, "hidden-data");

	int sql = named(SOCK_SEQPACKET, seq_name);
	if (listen(sql, 2) < 0)
		die("listen: %s", strerror(errno));
	int sqc = named(SOCK_SEQPACKET, "");
	connect_to(sqc, seq_name);
	int sqa = accept4(sql, NULL, NULL, SOCK_CLOEXEC);
	if (sqa < 0)
		die("accept: %s", strerror(errno));
	const char *c2a[] = { "seq-one", "seq-two-longer", "3" }, *a2c[] = { "answer-1", "answer-number-2" };
	for (int i = 0; i < 3; i++)
		send_all(sqc, c2a[i], strlen(c2a[i]), "a seqpacket message");
	for (int i = 0; i < 2; i++)
		send_all(sqa, a2c[i], strlen(a2c[i]), "a seqpacket message");

	int t = named(SOCK_DGRAM, target_name);
	int x = named(SOCK_DGRAM, "");
	connect_to(x, target_name);
	close(x);

	struct timeval rcv = { 1, 500000 }, snd = { 2, 0 };
	setsockopt(ha, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof(rcv));
	setsockopt(hc, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof(snd));
	set_opt(ha, SO_RCVLOWAT, 5);
	set_opt(sqa, SO_SNDBUF, 50000);
	set_opt(sqa, SO_RCVBUF, 70000);
	int sqa_snd = get_opt(sqa, SO_SNDBUF), sqa_rcv = get_opt(sqa, SO_RCVBUF);
	status("READY parent pid=%d dsp=%d nc=%d u=%d k=%d hl=%d hc=%d ha=%d sql=%d sqc=%d sqa=%d t=%d", my_pid, dsp, nc, u, k,
	       hl, hc, ha, sql, sqc, sqa, t);
	wait_go();

	check_name(dsp, 0, "dgram.sock", "DSP");
	check_name(nc, 0, "client.sock", "NC");
	check_name(u, 0, "", "U");
	check_name(k, 1, "dgram.sock", "K");
	expect_from(dsp, "from-client-1", "client.sock");
	expect_from(dsp, "from-unnamed", "");
	expect_from(dsp, "from-client-2", "client.sock");
	expect_from(dsp, "from-k", "");
	expect_empty(dsp, "DSP");
	if (send(k, "k-live", 6, 0) != 6)
		check_failed("send from K after restore: %s", strerror(errno));
	else
		expect_from(dsp, "k-live", "");

	struct stat st;
	CHECK(lstat("hidden.sock", &st) < 0 && errno == ENOENT, "hidden.sock exists after restore");
	int probe = named(SOCK_STREAM, "");
	struct sockaddr_un a;
	socklen_t al = make_addr(&a, "hidden.sock");
	CHECK(connect(probe, (struct sockaddr *)&a, al) < 0 && errno == ENOENT, "connecting to hidden.sock: %s",
	      strerror(errno));
	check_name(hl, 0, "hidden.sock", "HL");
	check_name(ha, 0, "hidden.sock", "HA");
	check_name(hc, 1, "hidden.sock", "HC");
	CHECK(get_opt(hl, SO_ACCEPTCONN) == 1, "HL no longer listens");
	char hidden[16] = "";
	CHECK(recv(ha, hidden, 11, MSG_DONTWAIT) == 11 && memcmp(hidden, "hidden-data", 11) == 0, "HA delivered '%s'",
	      hidden);

	check_name(sql, 0, seq_name, "SQL");
	check_name(sqa, 0, seq_name, "SQA");
	check_name(sqc, 1, seq_name, "SQC");
	for (int i = 0; i < 3; i++)
		expect_message(sqa, c2a[i]);
	for (int i = 0; i < 2; i++)
		expect_message(sqc, a2c[i]);
	expect_empty(sqa, "SQA");
	expect_empty(sqc, "SQC");
	check_name(t, 0, target_name, "T");

	check_timeout(ha, SO_RCVTIMEO, 1, 500000, "HA's SO_RCVTIMEO");
	check_timeout(hc, SO_SNDTIMEO, 2, 0, "HC's SO_SNDTIMEO");
	CHECK(get_opt(ha, SO_RCVLOWAT) == 5, "HA's SO_RCVLOWAT is %d", get_opt(ha, SO_RCVLOWAT));
	CHECK(get_opt(sqa, SO_SNDBUF) == sqa_snd && get_opt(sqa, SO_RCVBUF) == sqa_rcv, "SQA's buffers %d/%d, were %d/%d",
	      get_opt(sqa, SO_SNDBUF), get_opt(sqa, SO_RCVBUF), sqa_snd, sqa_rcv);
	role_finish();
}
