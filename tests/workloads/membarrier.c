/*
 * membarrier: registered for private expedited and global expedited membarriers.
 * READY registrations=MASK
 * After <status>.go: MEMBARRIER_CMD_GET_REGISTRATIONS reports the same mask, and a private
 * expedited barrier works (EPERM when not registered).
 */
#include "common.h"
#include <linux/membarrier.h>
#include <sys/syscall.h>

#define GET_REGISTRATIONS (1 << 9)

static long membarrier(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) || membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED))
		die("membarrier register: %s", strerror(errno));
	long mask = membarrier(GET_REGISTRATIONS);
	if (mask <= 0)
		die("GET_REGISTRATIONS: %ld (%s)", mask, strerror(errno));
	status("READY registrations=%ld", mask);
	while (!go_requested())
		sleep_ms(10);
	CHECK_EQ_U("membarrier registrations", mask, membarrier(GET_REGISTRATIONS));
	CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0, "private expedited barrier: %s", strerror(errno));
	finish("membarrier registrations %ld kept", mask);
}
