/*
 * tree_sysvshm: System V shared memory between a parent and its child.
 *   - segment A: IPC_PRIVATE, attached by both, then removed (IPC_RMID): it dies with its
 *     last attachment, so after the dump kills the tree it is gone and must be recreated;
 *   - segment B: key = parent's pid, attached by both, not removed: it outlives the tree.
 * After restore the child writes a token into each, the parent must see both; the patterns
 * written before the dump are intact.
 * READY child pid=N
 * READY parent pid=N child=N a=SHMID b=SHMID key=KEY
 */
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define SEG (64 * 1024)
#define TOKEN 0x70C3170C3ULL

static const char *role = "parent";

static void check_pattern(volatile uint64_t *p, uint64_t seed, const char *what)
{
	for (uint64_t i = 1; i < SEG / 8; i++)
		if (p[i] != (i ^ seed)) {
			check_failed("%s: segment %s word %llu differs", role, what, (unsigned long long)i);
			return;
		}
}

static __attribute__((noreturn)) void role_finish(void)
{
	if (wl_fail_count) {
		status("FAIL %s pid=%d %s", role, (int)getpid(), wl_fail_buf);
		_exit(1);
	}
	status("PASS %s pid=%d", role, (int)getpid());
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int a = shmget(IPC_PRIVATE, SEG, IPC_CREAT | 0600);
	int b = shmget((key_t)getpid(), SEG, IPC_CREAT | IPC_EXCL | 0640);
	if (a < 0 || b < 0)
		die("shmget: %s", strerror(errno));
	volatile uint64_t *pa = shmat(a, NULL, 0);
	volatile uint64_t *pb = shmat(b, NULL, 0);
	if (pa == (void *)-1 || pb == (void *)-1)
		die("shmat: %s", strerror(errno));
	for (uint64_t i = 0; i < SEG / 8; i++) {
		pa[i] = i ^ 0xAAAA;
		pb[i] = i ^ 0xBBBB;
	}
	pa[0] = pb[0] = 0;
	pid_t child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0) {
		role = "child";
		status("READY child pid=%d", (int)getpid());
		while (!go_requested())
			sleep_ms(5);
		check_pattern(pa, 0xAAAA, "A");
		check_pattern(pb, 0xBBBB, "B");
		pa[0] = TOKEN;
		pb[0] = TOKEN;
		role_finish();
	}
	if (shmctl(a, IPC_RMID, NULL))
		die("IPC_RMID: %s", strerror(errno));
	char buf[4096];
	double deadline = mono_now() + 10;
	while (!(read_file(wl_status, buf, sizeof(buf)) > 0 && strstr(buf, "READY child"))) {
		if (mono_now() > deadline)
			die("child never got ready");
		sleep_ms(5);
	}
	status("READY parent pid=%d child=%d a=%d b=%d key=%d", (int)getpid(), (int)child, a, b, (int)getpid());
	while (!go_requested())
		sleep_ms(5);
	check_pattern(pa, 0xAAAA, "A");
	check_pattern(pb, 0xBBBB, "B");
	deadline = mono_now() + 10;
	while ((pa[0] != TOKEN || pb[0] != TOKEN) && mono_now() < deadline)
		sleep_ms(5);
	CHECK(pa[0] == TOKEN, "parent: the child's write to removed segment A is not visible");
	CHECK(pb[0] == TOKEN, "parent: the child's write to segment B is not visible");
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "parent: child ended with 0x%x", st);
	shmctl(b, IPC_RMID, NULL);
	role_finish();
}
