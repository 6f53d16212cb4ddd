/*
 * exitcode: waits for <status>.go and then exits with the code given in argv[2]
 * (without writing PASS/FAIL), to check that `crust restore` (attached) exits with
 * the restored process's exit status.
 */
#include "common.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int code = argc > 2 ? atoi(argv[2]) : 0;
	status("READY code=%d", code);
	while (!go_requested())
		sleep_ms(5);
	status("EXIT %d", code);
	return code;
}
