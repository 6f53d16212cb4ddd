/*
 * identity: per-process attributes that are not memory or files.
 *   prctl: PR_SET_NAME "crust-ident", PR_SET_PDEATHSIG SIGWINCH (harmless if it
 *   fires: SIGWINCH is ignored by default), PR_SET_DUMPABLE 1, PR_SET_NO_NEW_PRIVS 1,
 *   PR_SET_TIMERSLACK 123456, PR_SET_THP_DISABLE 1;
 *   set_tid_address(&tid_word) read back with PR_GET_TID_ADDRESS;
 *   rlimits: NOFILE 512/4096, CORE 1 MiB/<hard>, STACK 4 MiB/<hard>, CPU 100000/<hard>,
 *   MSGQUEUE 400000/<hard>; personality PER_LINUX|UNAME26; nice 5;
 *   oom_score_adj 123; ITIMER_VIRTUAL 1000 s (interval 500 s), ITIMER_PROF 2000 s
 *   (interval 700 s), alarm(100);
 *   glibc's rseq registration.
 * After the restore every one of them must read back the same (timers: interval
 * exact, remaining time plausible), and pid, sid, pgid, uids, gids, groups, cmdline,
 * environ, auxv and /proc/self/exe must be unchanged.
 */
#include "common.h"
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>

static volatile int tid_word;

struct snap {
	char cmdline[8192], environ[65536], auxv[1024], exe[4096];
	ssize_t cmdline_n, environ_n, auxv_n;
};
static struct snap before, after;

static void take(struct snap *s)
{
	s->cmdline_n = read_file("/proc/self/cmdline", s->cmdline, sizeof(s->cmdline));
	s->environ_n = read_file("/proc/self/environ", s->environ, sizeof(s->environ));
	s->auxv_n = read_file("/proc/self/auxv", s->auxv, sizeof(s->auxv));
	ssize_t l = readlink("/proc/self/exe", s->exe, sizeof(s->exe) - 1);
	s->exe[l < 0 ? 0 : l] = 0;
}

static double tv(struct timeval t)
{
	return t.tv_sec + t.tv_usec / 1e6;
}

static const char *rlim_names[RLIM_NLIMITS] = {
	"CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE",
	"MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
};

static int oom_adj(void)
{
	char b[32];
	if (read_file("/proc/self/oom_score_adj", b, sizeof(b)) <= 0)
		return -99999;
	return atoi(b);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t pid = getpid();

	if (prctl(PR_SET_NAME, "crust-ident", 0, 0, 0) ||
	    prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0) || prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) ||
	    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0) ||
	    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
		die("prctl: %s", strerror(errno));
	syscall(SYS_set_tid_address, &tid_word);

	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = 512;
	rl.rlim_max = 4096;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		die("setrlimit NOFILE: %s", strerror(errno));
	int soft_set[][2] = { { RLIMIT_CORE, 1 << 20 }, { RLIMIT_STACK, 4 << 20 },
			      { RLIMIT_CPU, 100000 }, { RLIMIT_MSGQUEUE, 400000 } };
	for (unsigned i = 0; i < 4; i++) {
		getrlimit(soft_set[i][0], &rl);
		rl.rlim_cur = (rlim_t)soft_set[i][1];
		if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
			rl.rlim_cur = rl.rlim_max;
		if (setrlimit(soft_set[i][0], &rl))
			die("setrlimit %d: %s", soft_set[i][0], strerror(errno));
	}
	if (personality(PER_LINUX | UNAME26) < 0)
		die("personality: %s", strerror(errno));
	if (setpriority(PRIO_PROCESS, 0, 5))
		die("setpriority: %s", strerror(errno));
	{
		int fd = open("/proc/self/oom_score_adj", O_WRONLY);
		if (fd < 0 || write(fd, "123", 3) != 3)
			die("oom_score_adj: %s", strerror(errno));
		close(fd);
	}
	struct itimerval iv = { .it_interval = { 500, 0 }, .it_value = { 1000, 0 } };
	struct itimerval ip = { .it_interval = { 700, 0 }, .it_value = { 2000, 0 } };
	setitimer(ITIMER_VIRTUAL, &iv, NULL);
	setitimer(ITIMER_PROF, &ip, NULL);
	double alarm_set_at = mono_now();
	alarm(100);

	/* state at READY */
	struct rlimit lim_ready[RLIM_NLIMITS];
	for (int r = 0; r < RLIM_NLIMITS; r++)
		getrlimit(r, &lim_ready[r]);
	unsigned long tid_addr_ready = 0;
	prctl(PR_GET_TID_ADDRESS, &tid_addr_ready, 0, 0, 0);
	if (tid_addr_ready != (unsigned long)&tid_word)
		die("PR_GET_TID_ADDRESS before the dump: %lx vs %p", tid_addr_ready, (void *)&tid_word);
	if ((int)__rseq_size <= 0)
		die("glibc did not register rseq (__rseq_size=%u)", __rseq_size);
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if ((int)rs->cpu_id < 0)
		die("rseq cpu_id %d before the dump", (int)rs->cpu_id);
	pid_t sid = getsid(0), pgid = getpgid(0);
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	getresuid(&ru, &eu, &su);
	getresgid(&rg, &eg, &sg);
	gid_t groups[256];
	int ngroups = getgroups(256, groups);
	cpu_set_t aff_ready;
	sched_getaffinity(0, sizeof(aff_ready), &aff_ready);
	take(&before);

	status("READY pid=%d sid=%d pgid=%d tid_address=%p rseq=%p rseq_size=%u", pid, sid, pgid,
	       (void *)&tid_word, (void *)rs, __rseq_size);

	while (!go_requested())
		sleep_ms(5);

	double since_alarm = mono_now() - alarm_set_at;
	CHECK_EQ_U("getpid()", pid, getpid());
	CHECK_EQ_U("gettid()", pid, (pid_t)syscall(SYS_gettid));
	CHECK_EQ_U("getsid()", sid, getsid(0));
	CHECK_EQ_U("getpgid()", pgid, getpgid(0));
	uid_t ru2, eu2, su2;
	gid_t rg2, eg2, sg2;
	getresuid(&ru2, &eu2, &su2);
	getresgid(&rg2, &eg2, &sg2);
	CHECK(ru == ru2 && eu == eu2 && su == su2, "uids: expected %d/%d/%d got %d/%d/%d", ru, eu, su,
	      ru2, eu2, su2);
	CHECK(rg == rg2 && eg == eg2 && sg == sg2, "gids: expected %d/%d/%d got %d/%d/%d", rg, eg, sg,
	      rg2, eg2, sg2);
	gid_t groups2[256];
	int ngroups2 = getgroups(256, groups2);
	CHECK(ngroups == ngroups2 && memcmp(groups, groups2, sizeof(gid_t) * (ngroups > 0 ? ngroups : 0)) == 0,
	      "supplementary groups differ (%d vs %d)", ngroups, ngroups2);

	char name[32] = "";
	prctl(PR_GET_NAME, name, 0, 0, 0);
	CHECK_EQ_S("PR_GET_NAME", "crust-ident", name);
	char comm[64] = "";
	read_file("/proc/self/comm", comm, sizeof(comm));
	CHECK_EQ_S("/proc/self/comm", "crust-ident\n", comm);
	int v = 0;
	prctl(PR_GET_PDEATHSIG, &v, 0, 0, 0);
	CHECK_EQ_U("PR_GET_PDEATHSIG", SIGWINCH, v);
	CHECK_EQ_U("PR_GET_DUMPABLE", 1, prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	CHECK_EQ_U("PR_GET_NO_NEW_PRIVS", 1, prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
	CHECK_EQ_U("PR_GET_TIMERSLACK", 123456, prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
	CHECK_EQ_U("PR_GET_THP_DISABLE", 1, prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
	unsigned long tid_addr = 0;
	prctl(PR_GET_TID_ADDRESS, &tid_addr, 0, 0, 0);
	CHECK_EQ_U("PR_GET_TID_ADDRESS (set_tid_address)", (unsigned long)&tid_word, tid_addr);

	for (int r = 0; r < RLIM_NLIMITS; r++) {
		struct rlimit now;
		getrlimit(r, &now);
		CHECK(now.rlim_cur == lim_ready[r].rlim_cur && now.rlim_max == lim_ready[r].rlim_max,
		      "RLIMIT_%s: expected %llu/%llu got %llu/%llu", rlim_names[r],
		      (unsigned long long)lim_ready[r].rlim_cur,
		      (unsigned long long)lim_ready[r].rlim_max, (unsigned long long)now.rlim_cur,
		      (unsigned long long)now.rlim_max);
	}

	CHECK_EQ_U("personality", PER_LINUX | UNAME26, personality(0xffffffff));
	struct utsname u;
	uname(&u);
	CHECK(strncmp(u.release, "2.6.", 4) == 0, "uname release under UNAME26: got '%s'", u.release);
	errno = 0;
	CHECK_EQ_U("nice (getpriority)", 5, getpriority(PRIO_PROCESS, 0));
	CHECK_EQ_U("oom_score_adj", 123, oom_adj());
	cpu_set_t aff;
	sched_getaffinity(0, sizeof(aff), &aff);
	CHECK(CPU_EQUAL(&aff, &aff_ready), "CPU affinity differs");
	CHECK_EQ_U("scheduling policy", SCHED_OTHER, sched_getscheduler(0));

	struct itimerval cur;
	getitimer(ITIMER_VIRTUAL, &cur);
	CHECK(cur.it_interval.tv_sec == 500 && cur.it_interval.tv_usec == 0,
	      "ITIMER_VIRTUAL interval: expected 500.000000 got %.6f", tv(cur.it_interval));
	CHECK(tv(cur.it_value) > 990 && tv(cur.it_value) <= 1000.01,
	      "ITIMER_VIRTUAL remaining: expected (990, 1000.01] got %.6f", tv(cur.it_value));
	getitimer(ITIMER_PROF, &cur);
	CHECK(cur.it_interval.tv_sec == 700 && cur.it_interval.tv_usec == 0,
	      "ITIMER_PROF interval: expected 700.000000 got %.6f", tv(cur.it_interval));
	CHECK(tv(cur.it_value) > 1990 && tv(cur.it_value) <= 2000.01,
	      "ITIMER_PROF remaining: expected (1990, 2000.01] got %.6f", tv(cur.it_value));
	getitimer(ITIMER_REAL, &cur);
	CHECK(tv(cur.it_interval) == 0, "alarm() interval: expected 0 got %.6f", tv(cur.it_interval));
	CHECK(tv(cur.it_value) <= 100.01 && tv(cur.it_value) >= 100 - since_alarm - 0.5,
	      "alarm(100) remaining after %.3f s: expected [%.3f, 100] got %.6f", since_alarm,
	      100 - since_alarm - 0.5, tv(cur.it_value));

	/* rseq: still registered with the same area, length and signature */
	CHECK((int)rs->cpu_id >= 0 && (int)rs->cpu_id < CPU_SETSIZE, "rseq cpu_id %d is not a CPU",
	      (int)rs->cpu_id);
	CHECK(rs->rseq_cs == 0, "rseq_cs is 0x%llx, expected 0", (unsigned long long)rs->rseq_cs);
	long r1 = syscall(SYS_rseq, rs, __rseq_size, 0, RSEQ_SIG);
	int e1 = errno;
	long r2 = syscall(SYS_rseq, rs, 32, 0, RSEQ_SIG);
	int e2 = errno;
	CHECK((r1 < 0 && e1 == EBUSY) || (r2 < 0 && e2 == EBUSY),
	      "rseq re-registration with the same area should say EBUSY (registered); got %s / %s",
	      r1 < 0 ? strerror(e1) : "success", r2 < 0 ? strerror(e2) : "success");

	take(&after);
	CHECK(before.cmdline_n == after.cmdline_n && memcmp(before.cmdline, after.cmdline, before.cmdline_n) == 0,
	      "/proc/self/cmdline differs (%zd vs %zd bytes)", before.cmdline_n, after.cmdline_n);
	CHECK(before.environ_n == after.environ_n && memcmp(before.environ, after.environ, before.environ_n) == 0,
	      "/proc/self/environ differs (%zd vs %zd bytes)", before.environ_n, after.environ_n);
	CHECK(before.auxv_n == after.auxv_n && memcmp(before.auxv, after.auxv, before.auxv_n) == 0,
	      "/proc/self/auxv differs (%zd vs %zd bytes)", before.auxv_n, after.auxv_n);
	CHECK_EQ_S("/proc/self/exe", before.exe, after.exe);

	finish("pid %d and all identity attributes as before", pid);
}
