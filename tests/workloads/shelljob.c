/*
 * shelljob: a tiny interactive shell running one job in the foreground of its terminal.
 * Start it as a session leader whose controlling terminal is stdin (setsid -c).
 *
 *   shell (session leader) ── job (own process group, terminal foreground)
 *
 * The job reads lines from the terminal and answers "got LINE" on it (and in the status
 * file); "quit" ends it with status 0. The shell waits for the job, then pauses.
 * READY shell=N job=N pgid=N
 */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t job = fork();
	if (job < 0)
		die("fork: %s", strerror(errno));
	if (job == 0) {
		setpgid(0, 0);
		/* wait until the shell made us the foreground group */
		while (tcgetpgrp(0) != getpgrp())
			sleep_ms(1);
		char line[256];
		for (;;) {
			ssize_t n = read(0, line, sizeof(line) - 1);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				status("FAIL job: read from the terminal returned %zd (%s)", n, n < 0 ? strerror(errno) : "EOF");
				_exit(1);
			}
			line[n] = 0;
			char *nl = strchr(line, '\n');
			if (nl)
				*nl = 0;
			if (!strcmp(line, "quit")) {
				status("PASS job pid=%d pgid=%d sid=%d", (int)getpid(), (int)getpgrp(), (int)getsid(0));
				_exit(0);
			}
			dprintf(1, "got %s\n", line);
			status("GOT %s pid=%d", line, (int)getpid());
		}
	}
	setpgid(job, job);
	signal(SIGTTOU, SIG_IGN);
	if (tcsetpgrp(0, job))
		die("tcsetpgrp: %s", strerror(errno));
	status("READY shell=%d job=%d pgid=%d", (int)getpid(), (int)job, (int)job);
	int st;
	waitpid(job, &st, 0);
	for (;;)
		pause();
}
