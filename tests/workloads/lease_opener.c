/*
 * lease_opener: a fresh process outside the tree that opens a leased file (used by
 * tests/restore_leases.rs). Not a READY-protocol workload.
 *
 *   lease_opener PATH r|w [nonblock] [stay]
 *
 * Prints "START t=T" before the open() and "OPENED rc=R errno=E t=T" when it returns
 * (CLOCK_MONOTONIC seconds), unbuffered on stdout. With "stay" it then waits until killed
 * (keeping the file open); otherwise it exits 0 if the open succeeded (1 if not).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void say(const char *line)
{
	size_t n = strlen(line);
	while (n) {
		ssize_t w = write(1, line, n);
		if (w <= 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		line += w;
		n -= (size_t)w;
	}
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: lease_opener PATH r|w [nonblock] [stay]\n");
		return 2;
	}
	int flags = (strcmp(argv[2], "w") == 0 ? O_WRONLY : O_RDONLY) | O_CLOEXEC;
	int stay = 0;
	for (int i = 3; i < argc; i++) {
		if (strcmp(argv[i], "nonblock") == 0)
			flags |= O_NONBLOCK;
		else if (strcmp(argv[i], "stay") == 0)
			stay = 1;
	}
	char buf[128];
	snprintf(buf, sizeof(buf), "START t=%.6f\n", mono_now());
	say(buf);
	int fd = open(argv[1], flags);
	int e = fd < 0 ? errno : 0;
	snprintf(buf, sizeof(buf), "OPENED rc=%d errno=%d t=%.6f\n", fd, e, mono_now());
	say(buf);
	if (stay)
		for (;;)
			pause();
	return fd >= 0 ? 0 : 1;
}
