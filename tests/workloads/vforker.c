/*
 * vforker: a parent that waits, uninterruptibly, in vfork: its child sleeps 60 s, then exits.
 * A ptrace interrupt cannot stop the parent meanwhile (used by the --timeout test). No
 * READY protocol: the test watches /proc.
 */
#include <unistd.h>

int main(void)
{
	if (vfork() == 0) {
		sleep(60);
		_exit(0);
	}
	return 0;
}
