/*
 * usock_rights: file descriptors in flight (SCM_RIGHTS) in UNIX sockets when dumped.
 *
 * The parent opens DATA (<status>.data, "0123456789abcdef") twice: H (O_RDWR, offset 3, kept
 * open: the holder) and R (O_RDONLY, offset 0), and once more as G (O_RDONLY, offset 7,
 * closed after sending: held by no process, only in flight). It makes a pipe (writes
 * "pipe-data" into it), three socketpairs (datagram D, stream S, seqpacket Q) and sends, into
 * the child's ends:
 *   D: "one" with H; "two" with G and the pipe's read end (closed afterwards); "three" alone;
 *   S: "abc" alone, "defgh" with H, "ijk" alone;
 *   Q: "msg" with R.
 * Then it forks the child, which keeps the receiving ends (the parent closes them).
 * Before READY the parent builds a control stream pair the same way and reads it at once:
 * how the kernel splits that stream into reads (lengths, which read gets the descriptor) is
 * what the restored stream must give too.
 *   READY child pid=N
 *   READY parent pid=N child=N
 *
 * After <status>.go:
 *   child:  D gives "one" + 1 fd (DATA's inode, offset 3), "two" + 2 fds (DATA at offset 7;
 *           a pipe that reads "pipe-data"), "three" + none, then nothing; S gives the reads of
 *           the control pair exactly (data, lengths, descriptor: DATA at offset 3, the same
 *           description as D's first); Q gives "msg" + 1 fd (DATA, offset 0). Then it moves the
 *           offset of the first descriptor to 10 and says "STAGE moved".
 *   parent: after "STAGE moved", H's offset is 10 (the same description), R's is still 0.
 */
#include "usock_common.h"
#include <sys/stat.h>

static void send_with(int sock, const char *data, const int *fds, int nfds)
{
	char control[CMSG_SPACE(4 * sizeof(int))];
	memset(control, 0, sizeof(control));
	struct iovec iov = { .iov_base = (void *)data, .iov_len = strlen(data) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		msg.msg_control = control;
		msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	if (sendmsg(sock, &msg, 0) != (ssize_t)strlen(data))
		die("sendmsg '%s': %s", data, strerror(errno));
}

/* One recvmsg: data (NUL-terminated) and the descriptors; returns the length or -1. */
static ssize_t recv_with(int sock, char *buf, size_t size, int *fds, int *nfds)
{
	char control[CMSG_SPACE(8 * sizeof(int))];
	struct iovec iov = { .iov_base = buf, .iov_len = size - 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	*nfds = 0;
	if (n < 0)
		return -1;
	buf[n] = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(fds + *nfds, CMSG_DATA(c), k * sizeof(int));
			*nfds += k;
		}
	}
	return n;
}

static ino_t data_ino;
static char data_path[4200];

static void check_data_fd(int fd, off_t offset, const char *what)
{
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && st.st_ino == data_ino, "child: %s is not the data file (inode %lu, expected %lu)", what,
	      (unsigned long)st.st_ino, (unsigned long)data_ino);
	CHECK_EQ_U(what, offset, lseek(fd, 0, SEEK_CUR));
}

static void fill_stream(int s)
{
	send_with(s, "abc", NULL, 0);
	int h = open(data_path, O_RDONLY | O_CLOEXEC);
	send_with(s, "defgh", &h, 1);
	close(h);
	send_with(s, "ijk", NULL, 0);
}

/* The reads of a stream: "len:nfds," per read, until it is empty. */
static void stream_reads(int s, char *out, size_t outsz, int *first_fd)
{
	out[0] = 0;
	*first_fd = -1;
	for (int i = 0; i < 10; i++) {
		char buf[100];
		int fds[8], nfds;
		ssize_t n = recv_with(s, buf, sizeof(buf), fds, &nfds);
		if (n < 0)
			break;
		size_t used = strlen(out);
		snprintf(out + used, outsz - used, "%s:%d,", buf, nfds);
		for (int k = 0; k < nfds; k++) {
			if (*first_fd < 0)
				*first_fd = fds[k];
			else
				close(fds[k]);
		}
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	become("parent");
	snprintf(data_path, sizeof(data_path), "%s.data", wl_status);
	int h = open(data_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (h < 0 || write(h, "0123456789abcdef", 16) != 16)
		die("creating %s: %s", data_path, strerror(errno));
	struct stat st;
	fstat(h, &st);
	data_ino = st.st_ino;
	lseek(h, 3, SEEK_SET);
	int r = open(data_path, O_RDONLY | O_CLOEXEC);
	int g = open(data_path, O_RDONLY | O_CLOEXEC);
	lseek(g, 7, SEEK_SET);
	int p[2], d[2], s[2], q[2], ctl[2];
	if (r < 0 || g < 0 || pipe2(p, O_CLOEXEC) < 0 || socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) < 0 ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, q) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0)
		die("setup: %s", strerror(errno));
	if (write(p[1], "pipe-data", 9) != 9)
		die("pipe write: %s", strerror(errno));
	send_with(d[0], "one", &h, 1);
	int two[2] = { g, p[0] };
	send_with(d[0], "two", two, 2);
	send_with(d[0], "three", NULL, 0);
	close(g);
	close(p[0]);
	send_with(s[0], "abc", NULL, 0);
	send_with(s[0], "defgh", &h, 1);
	send_with(s[0], "ijk", NULL, 0);
	send_with(q[0], "msg", &r, 1);

	/* How the kernel splits such a stream into reads. */
	fill_stream(ctl[0]);
	char expected[256];
	int ctl_fd;
	stream_reads(ctl[1], expected, sizeof(expected), &ctl_fd);
	close(ctl_fd);
	close(ctl[0]);
	close(ctl[1]);

	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		become("child");
		close(d[0]);
		close(s[0]);
		close(q[0]);
		close(h);
		close(r);
		status("READY child pid=%d", my_pid);
		wait_go();
		char buf[100];
		int fds[8], nfds;
		ssize_t n = recv_with(d[1], buf, sizeof(buf), fds, &nfds);
		CHECK(n == 3 && strcmp(buf, "one") == 0 && nfds == 1, "child: D first: %zd '%s' with %d fds", n, buf, nfds);
		int first = nfds == 1 ? fds[0] : -1;
		if (first >= 0)
			check_data_fd(first, 3, "D one's fd offset");
		n = recv_with(d[1], buf, sizeof(buf), fds, &nfds);
		CHECK(n == 3 && strcmp(buf, "two") == 0 && nfds == 2, "child: D second: %zd '%s' with %d fds", n, buf, nfds);
		if (n == 3 && nfds == 2) {
			check_data_fd(fds[0], 7, "D two's first fd offset");
			char pb[16] = "";
			ssize_t k = read(fds[1], pb, sizeof(pb) - 1);
			CHECK(k == 9 && memcmp(pb, "pipe-data", 9) == 0, "child: the pipe in flight reads %zd '%s'", k, pb);
		}
		n = recv_with(d[1], buf, sizeof(buf), fds, &nfds);
		CHECK(n == 5 && strcmp(buf, "three") == 0 && nfds == 0, "child: D third: %zd '%s' with %d fds", n, buf, nfds);
		n = recv_with(d[1], buf, sizeof(buf), fds, &nfds);
		CHECK(n < 0 && errno == EAGAIN, "child: D holds more: %zd '%s'", n, n >= 0 ? buf : "");

		char got[256];
		int sfd;
		stream_reads(s[1], got, sizeof(got), &sfd);
		CHECK_EQ_S("child: the stream's reads", expected, got);
		if (sfd >= 0) {
			check_data_fd(sfd, 3, "S's fd offset");
			lseek(sfd, 5, SEEK_SET);
			CHECK(first < 0 || lseek(first, 0, SEEK_CUR) == 5, "child: S's fd and D's first are not one description");
		}

		n = recv_with(q[1], buf, sizeof(buf), fds, &nfds);
		CHECK(n == 3 && strcmp(buf, "msg") == 0 && nfds == 1, "child: Q: %zd '%s' with %d fds", n, buf, nfds);
		if (n == 3 && nfds == 1)
			check_data_fd(fds[0], 0, "Q's fd offset");
		if (first >= 0)
			lseek(first, 10, SEEK_SET);
		status("STAGE moved");
		role_finish();
	}
	close(d[1]);
	close(s[1]);
	close(q[1]);
	wait_for_status("READY child");
	status("READY parent pid=%d child=%d", my_pid, (int)child);
	wait_go();
	wait_for_status("STAGE moved");
	CHECK_EQ_U("parent: the holder's offset after the child moved it", 10, lseek(h, 0, SEEK_CUR));
	CHECK_EQ_U("parent: the other description's offset", 0, lseek(r, 0, SEEK_CUR));
	reap("child", child);
	role_finish();
}
