/*
 * inet_sockets: IPv4 and IPv6 sockets that are not connections, each with options the
 * program set, all on loopback:
 *   L4   TCP listener 127.0.0.1:0, backlog 7, SO_REUSEADDR, SO_KEEPALIVE, TCP_KEEPIDLE 77,
 *        TCP_KEEPINTVL 11, TCP_KEEPCNT 4, TCP_DEFER_ACCEPT 3, SO_RCVBUF 100000, O_NONBLOCK
 *   L6   TCP listener [::1]:0, IPV6_V6ONLY 1, SO_REUSEPORT, IPV6_TCLASS 0x20, no SO_REUSEADDR,
 *        with a connection it accepted and closed first, so its port is held in TIME_WAIT
 *   LD   TCP listener [::]:0, IPV6_V6ONLY 0 (dual stack), TCP_NODELAY
 *   B    TCP socket bound to 127.0.0.1:0, not listening, IP_TOS 0x10, TCP_CORK
 *   U    TCP socket never bound, SO_LINGER on 5 s, SO_BINDTODEVICE lo
 *   D    UDP socket bound to 127.0.0.1:0, SO_BROADCAST, IP_TTL 33
 *   C    UDP socket connected to D, SO_SNDBUF 50000
 *   D6   UDP socket bound to [::1]:0, IPV6_UNICAST_HOPS 9
 * READY fds=L4,L6,LD,B,U,D,C,D6
 * After <status>.go: every name, peer and option is what it was; each listener accepts a new
 * connection (LD one made over IPv4: still dual stack; L6 refuses one over IPv4: still v6
 * only); C's datagram reaches D from C's name; D6 gets a datagram.
 */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

enum { L4, L6, LD, B, U, D, C, D6, N };
static const char *names[N] = { "L4", "L6", "LD", "B", "U", "D", "C", "D6" };
static int fds[N];
static struct sockaddr_storage local[N], peer[N];

struct opt {
	int sock, level, name, value;
};
static const struct opt opts[] = {
	{ L4, SOL_SOCKET, SO_REUSEADDR, 1 },	    { L4, SOL_SOCKET, SO_KEEPALIVE, 1 },
	{ L4, IPPROTO_TCP, TCP_KEEPIDLE, 77 },	    { L4, IPPROTO_TCP, TCP_DEFER_ACCEPT, 3 },
	{ L4, SOL_SOCKET, SO_RCVBUF, 100000 },	    { L6, IPPROTO_IPV6, IPV6_V6ONLY, 1 },
	{ L6, SOL_SOCKET, SO_REUSEPORT, 1 },	    { L6, IPPROTO_IPV6, IPV6_TCLASS, 0x20 },
	{ LD, IPPROTO_IPV6, IPV6_V6ONLY, 0 },	    { LD, IPPROTO_TCP, TCP_NODELAY, 1 },
	{ B, IPPROTO_IP, IP_TOS, 0x10 },	    { D, SOL_SOCKET, SO_BROADCAST, 1 },
	{ D, IPPROTO_IP, IP_TTL, 33 },		    { C, SOL_SOCKET, SO_SNDBUF, 50000 },
	{ D6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9 }, { L4, IPPROTO_TCP, TCP_KEEPINTVL, 11 },
	{ L4, IPPROTO_TCP, TCP_KEEPCNT, 4 },	    { B, IPPROTO_TCP, TCP_CORK, 1 },
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))
static int got_before[NOPTS];

static int getopt_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, name, &v, &l) < 0)
		return -1000 - errno;
	return v;
}

static socklen_t sa_len(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static void v4(struct sockaddr_storage *a, unsigned port)
{
	struct sockaddr_in *s = (struct sockaddr_in *)a;
	memset(a, 0, sizeof(*a));
	s->sin_family = AF_INET;
	s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->sin_port = htons(port);
}

static void v6(struct sockaddr_storage *a, const struct in6_addr *ip)
{
	struct sockaddr_in6 *s = (struct sockaddr_in6 *)a;
	memset(a, 0, sizeof(*a));
	s->sin6_family = AF_INET6;
	s->sin6_addr = *ip;
}

static unsigned port_of(const struct sockaddr_storage *a)
{
	return ntohs(a->ss_family == AF_INET ? ((struct sockaddr_in *)a)->sin_port : ((struct sockaddr_in6 *)a)->sin6_port);
}

/* A connection to `listener` that the accepted end closes first: its port stays in TIME_WAIT. */
static void leave_time_wait(int listener)
{
	struct sockaddr_storage a;
	socklen_t l = sizeof(a);
	getsockname(listener, (struct sockaddr *)&a, &l);
	int c = socket(a.ss_family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, l) < 0)
		die("TIME_WAIT client: %s", strerror(errno));
	int s = accept(listener, NULL, NULL);
	if (s < 0)
		die("TIME_WAIT accept: %s", strerror(errno));
	close(s);
	char b;
	if (read(c, &b, 1) != 0)
		die("TIME_WAIT client: no EOF");
	close(c);
}

static void setup(void)
{
	int family[N] = { AF_INET, AF_INET6, AF_INET6, AF_INET, AF_INET, AF_INET, AF_INET, AF_INET6 };
	int type[N] = { SOCK_STREAM, SOCK_STREAM, SOCK_STREAM, SOCK_STREAM, SOCK_STREAM, SOCK_DGRAM, SOCK_DGRAM, SOCK_DGRAM };
	for (int i = 0; i < N; i++)
		if ((fds[i] = socket(family[i], type[i], 0)) < 0)
			die("socket %s: %s", names[i], strerror(errno));
	for (size_t k = 0; k < NOPTS; k++)
		if (setsockopt(fds[opts[k].sock], opts[k].level, opts[k].name, &opts[k].value, sizeof(int)) < 0)
			die("setsockopt %s option %d: %s", names[opts[k].sock], opts[k].name, strerror(errno));
	struct linger lg = { 1, 5 };
	if (setsockopt(fds[U], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
		die("SO_LINGER: %s", strerror(errno));
	if (setsockopt(fds[U], SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) < 0)
		die("SO_BINDTODEVICE: %s", strerror(errno));
	struct sockaddr_storage a;
	v4(&a, 0);
	if (bind(fds[L4], (struct sockaddr *)&a, sa_len(&a)) || bind(fds[B], (struct sockaddr *)&a, sa_len(&a)) ||
	    bind(fds[D], (struct sockaddr *)&a, sa_len(&a)))
		die("bind v4: %s", strerror(errno));
	v6(&a, &in6addr_loopback);
	if (bind(fds[L6], (struct sockaddr *)&a, sa_len(&a)) || bind(fds[D6], (struct sockaddr *)&a, sa_len(&a)))
		die("bind ::1: %s", strerror(errno));
	v6(&a, &in6addr_any);
	if (bind(fds[LD], (struct sockaddr *)&a, sa_len(&a)))
		die("bind ::: %s", strerror(errno));
	if (listen(fds[L4], 7) || listen(fds[L6], 9) || listen(fds[LD], 11))
		die("listen: %s", strerror(errno));
	fcntl(fds[L4], F_SETFL, O_NONBLOCK);
	leave_time_wait(fds[L6]);
	socklen_t l = sizeof(a);
	getsockname(fds[D], (struct sockaddr *)&a, &l);
	if (connect(fds[C], (struct sockaddr *)&a, l))
		die("connect C to D: %s", strerror(errno));
}

static void remember(void)
{
	for (int i = 0; i < N; i++) {
		socklen_t l = sizeof(local[i]);
		getsockname(fds[i], (struct sockaddr *)&local[i], &l);
		l = sizeof(peer[i]);
		if (getpeername(fds[i], (struct sockaddr *)&peer[i], &l) < 0)
			memset(&peer[i], 0, sizeof(peer[i]));
	}
	for (size_t k = 0; k < NOPTS; k++)
		got_before[k] = getopt_int(fds[opts[k].sock], opts[k].level, opts[k].name);
}

static void check_same(void)
{
	for (int i = 0; i < N; i++) {
		struct sockaddr_storage a = { 0 }, p = { 0 };
		socklen_t l = sizeof(a);
		getsockname(fds[i], (struct sockaddr *)&a, &l);
		CHECK(memcmp(&a, &local[i], sizeof(a)) == 0, "%s: local name changed (port %u -> %u)", names[i],
		      port_of(&local[i]), port_of(&a));
		l = sizeof(p);
		if (getpeername(fds[i], (struct sockaddr *)&p, &l) < 0)
			memset(&p, 0, sizeof(p));
		CHECK(memcmp(&p, &peer[i], sizeof(p)) == 0, "%s: peer changed", names[i]);
	}
	for (size_t k = 0; k < NOPTS; k++) {
		int now = getopt_int(fds[opts[k].sock], opts[k].level, opts[k].name);
		CHECK(now == got_before[k], "%s option %d: %d before, %d after", names[opts[k].sock], opts[k].name,
		      got_before[k], now);
	}
	struct linger lg = { 0, 0 };
	socklen_t l = sizeof(lg);
	getsockopt(fds[U], SOL_SOCKET, SO_LINGER, &lg, &l);
	CHECK(lg.l_onoff == 1 && lg.l_linger == 5, "SO_LINGER of U: %d %d", lg.l_onoff, lg.l_linger);
	char dev[16] = "";
	socklen_t dl = sizeof(dev);
	getsockopt(fds[U], SOL_SOCKET, SO_BINDTODEVICE, dev, &dl);
	CHECK(strcmp(dev, "lo") == 0, "SO_BINDTODEVICE of U: '%s'", dev);
	CHECK((fcntl(fds[L4], F_GETFL) & O_NONBLOCK) != 0, "L4 lost O_NONBLOCK");
	CHECK((fcntl(fds[L6], F_GETFL) & O_NONBLOCK) == 0, "L6 gained O_NONBLOCK");
	CHECK(getopt_int(fds[L4], SOL_SOCKET, SO_ACCEPTCONN) == 1, "L4 is not listening");
	CHECK(getopt_int(fds[B], SOL_SOCKET, SO_ACCEPTCONN) == 0, "B is listening");
}

/* A new client connects to `to` (over `via`'s family and address); the listener accepts it. */
static int connects(int listener, const struct sockaddr_storage *to)
{
	int c = socket(to->ss_family, SOCK_STREAM, 0);
	int ok = c >= 0 && connect(c, (const struct sockaddr *)to, sa_len(to)) == 0;
	if (ok) {
		/* TCP_DEFER_ACCEPT holds the connection until data arrives. */
		(void)!write(c, "x", 1);
		struct pollfd p = { listener, POLLIN, 0 };
		ok = poll(&p, 1, 5000) == 1;
		int s = ok ? accept(listener, NULL, NULL) : -1;
		ok = s >= 0;
		if (s >= 0)
			close(s);
	}
	if (c >= 0)
		close(c);
	return ok;
}

static void check_works(void)
{
	CHECK(connects(fds[L4], &local[L4]), "L4 accepts no new connection");
	CHECK(connects(fds[L6], &local[L6]), "L6 accepts no new connection");
	struct sockaddr_storage a;
	v4(&a, port_of(&local[LD]));
	CHECK(connects(fds[LD], &a), "LD accepts no connection over IPv4 (no longer dual stack?)");
	v4(&a, port_of(&local[L6]));
	int c = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof(struct sockaddr_in)) < 0, "L6 took an IPv4 connection");
	close(c);
	CHECK(send(fds[C], "hello", 5, 0) == 5, "C send: %s", strerror(errno));
	char buf[16] = "";
	struct sockaddr_storage from;
	socklen_t fl = sizeof(from);
	struct pollfd p = { fds[D], POLLIN, 0 };
	CHECK(poll(&p, 1, 5000) == 1 && recvfrom(fds[D], buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl) == 5 &&
		      memcmp(buf, "hello", 5) == 0,
	      "D did not get C's datagram");
	CHECK(memcmp(&from, &local[C], sizeof(struct sockaddr_in)) == 0, "C's datagram came from another name");
	int s6 = socket(AF_INET6, SOCK_DGRAM, 0);
	CHECK(sendto(s6, "six", 3, 0, (struct sockaddr *)&local[D6], sa_len(&local[D6])) == 3, "sendto D6: %s",
	      strerror(errno));
	struct pollfd p6 = { fds[D6], POLLIN, 0 };
	CHECK(poll(&p6, 1, 5000) == 1 && recv(fds[D6], buf, sizeof(buf), 0) == 3, "D6 got no datagram");
	close(s6);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	setup();
	remember();
	status("READY fds=%d,%d,%d,%d,%d,%d,%d,%d port=%u", fds[0], fds[1], fds[2], fds[3], fds[4], fds[5], fds[6],
	       fds[7], port_of(&local[L4]));
	while (!go_requested())
		sleep_ms(10);
	check_same();
	check_works();
	finish("8 sockets with their names, peers and options");
}
