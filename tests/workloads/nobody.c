/*
 * nobody: a process that was started as root, opened its files, and dropped to an
 * unprivileged identity, as a daemon does.
 *
 * As root: creates the status file (owned by 65534, so it can still append to it later),
 * hands its log (fds 1 and 2, a file of the test) to 65534, creates DIR/world.txt (root,
 * 0644) and opens it O_RDONLY at offset 5 as fd 10, creates DIR/home (owned by 65534, 0755),
 * drops CAP_SYS_BOOT and CAP_MKNOD from the bounding set, then
 * setgroups([65534]), setresgid(65534 x3), setresuid(65534 x3) (with keepcaps, cleared
 * again afterwards), and capset: effective {NET_BIND_SERVICE}, permitted {NET_BIND_SERVICE,
 * NET_RAW}, inheritable {NET_BIND_SERVICE}; raises NET_BIND_SERVICE in the ambient set;
 * sets itself dumpable again (a process that changed its uids is made non-dumpable; any
 * process started by an unprivileged user is dumpable).
 * As 65534: chdir(DIR/home), creates DIR/home/created (0640) O_RDWR as fd 11 and writes 18
 * bytes to it.
 *   argv[2] = "secret": also, as root, creates DIR/secret (root, 0600) and keeps it open
 *   O_RDWR as fd 12. The image then holds a file the process could not open itself: a
 *   restore (which opens files with the image's credentials) must fail.
 *
 * As 65534 it also sets its parent-death signal (SIGWINCH).
 * After the restore it checks from inside: getresuid, the parent-death signal, getresgid, getgroups, capget
 * (effective, permitted, inheritable, both words), CapBnd/CapAmb/CapEff/CapPrm/CapInh of
 * /proc/self/status, dumpable, securebits, cwd, and for each fd its target, inode, access
 * mode and flags, offset; then uses them: reads world.txt from offset 5, appends to
 * created, binds a privileged port (CAP_NET_BIND_SERVICE is effective) and fails to become
 * root again.
 * Lines: READY uid=.. world_fd=10 created_fd=11 [secret_fd=12] ...
 */
#include "common.h"
#include <arpa/inet.h>
#include <grp.h>
#include <libgen.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define NOBODY 65534
#define WORLD_FD 10
#define CREATED_FD 11
#define SECRET_FD 12

static const char world_text[] = "world-readable file of root\n";
static const char created_text[] = "written by nobody\n";

#define CAPBIT(c) (1ULL << (c))
#define WANT_EFF CAPBIT(CAP_NET_BIND_SERVICE)
#define WANT_PRM (CAPBIT(CAP_NET_BIND_SERVICE) | CAPBIT(CAP_NET_RAW))
#define WANT_INH CAPBIT(CAP_NET_BIND_SERVICE)
#define WANT_AMB CAPBIT(CAP_NET_BIND_SERVICE)

struct caps {
	unsigned long long eff, prm, inh;
};

static int get_caps(struct caps *c)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d))
		return -1;
	c->eff = d[0].effective | (unsigned long long)d[1].effective << 32;
	c->prm = d[0].permitted | (unsigned long long)d[1].permitted << 32;
	c->inh = d[0].inheritable | (unsigned long long)d[1].inheritable << 32;
	return 0;
}

static int set_caps(unsigned long long eff, unsigned long long prm, unsigned long long inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	d[0].effective = (uint32_t)eff;
	d[1].effective = (uint32_t)(eff >> 32);
	d[0].permitted = (uint32_t)prm;
	d[1].permitted = (uint32_t)(prm >> 32);
	d[0].inheritable = (uint32_t)inh;
	d[1].inheritable = (uint32_t)(inh >> 32);
	return (int)syscall(SYS_capset, &h, d);
}

struct fdstate {
	int fd;
	char target[4096];
	dev_t dev;
	ino_t ino;
	int flags, fdflags;
	off_t pos;
};

static void take_fd(struct fdstate *s, int fd)
{
	char link[64];
	s->fd = fd;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, s->target, sizeof(s->target) - 1);
	s->target[n < 0 ? 0 : n] = 0;
	struct stat st;
	if (fstat(fd, &st) == 0) {
		s->dev = st.st_dev;
		s->ino = st.st_ino;
	} else {
		s->dev = 0;
		s->ino = 0;
	}
	s->flags = fcntl(fd, F_GETFL);
	s->fdflags = fcntl(fd, F_GETFD);
	s->pos = lseek(fd, 0, SEEK_CUR);
}

static void check_fd(const struct fdstate *b)
{
	struct fdstate a;
	take_fd(&a, b->fd);
	CHECK(strcmp(a.target, b->target) == 0, "fd %d: was %s, now %s", b->fd, b->target, a.target);
	CHECK(a.dev == b->dev && a.ino == b->ino, "fd %d: was inode %lu:%lu, now %lu:%lu", b->fd,
	      (unsigned long)b->dev, (unsigned long)b->ino, (unsigned long)a.dev, (unsigned long)a.ino);
	CHECK(a.flags == b->flags, "fd %d: F_GETFL was 0%o, now 0%o", b->fd, b->flags, a.flags);
	CHECK(a.fdflags == b->fdflags, "fd %d: F_GETFD was %d, now %d", b->fd, b->fdflags, a.fdflags);
	/* the log (fds 1 and 2, O_APPEND) grows with every status line */
	if (!(b->flags & O_APPEND))
		CHECK(a.pos == b->pos, "fd %d: offset was %lld, now %lld", b->fd, (long long)b->pos,
		      (long long)a.pos);
}

static int fd_is_regular(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int secret = argc > 2 && strcmp(argv[2], "secret") == 0;
	if (getuid() != 0 || geteuid() != 0)
		die("must be started as root (uid %d euid %d)", getuid(), geteuid());

	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", wl_status);
	dirname(dir);
	char path[4200];

	/* --- as root ------------------------------------------------------------------- */
	int fd = open(wl_status, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0 || fchown(fd, NOBODY, NOBODY))
		die("status file for %d: %s", NOBODY, strerror(errno));
	close(fd);
	for (int i = 1; i <= 2; i++)
		if (fd_is_regular(i) && fchown(i, NOBODY, NOBODY))
			die("fchown log fd %d: %s", i, strerror(errno));

	snprintf(path, sizeof(path), "%s/world.txt", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, world_text, sizeof(world_text) - 1) != (ssize_t)sizeof(world_text) - 1 ||
	    fchmod(fd, 0644))
		die("create %s: %s", path, strerror(errno));
	close(fd);
	fd = open(path, O_RDONLY);
	if (fd < 0 || dup2(fd, WORLD_FD) != WORLD_FD || lseek(WORLD_FD, 5, SEEK_SET) != 5)
		die("open %s: %s", path, strerror(errno));
	close(fd);

	if (secret) {
		snprintf(path, sizeof(path), "%s/secret", dir);
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || fchmod(fd, 0600) || write(fd, "root only\n", 10) != 10 ||
		    dup2(fd, SECRET_FD) != SECRET_FD)
			die("create %s: %s", path, strerror(errno));
		close(fd);
	}

	char home[4200];
	snprintf(home, sizeof(home), "%s/home", dir);
	if (mkdir(home, 0755) || chown(home, NOBODY, NOBODY) || chmod(home, 0755))
		die("mkdir %s: %s", home, strerror(errno));

	if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) || prctl(PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0))
		die("PR_CAPBSET_DROP: %s", strerror(errno));

	gid_t nobody_groups[1] = { NOBODY };
	if (setgroups(1, nobody_groups))
		die("setgroups: %s", strerror(errno));
	if (setresgid(NOBODY, NOBODY, NOBODY))
		die("setresgid: %s", strerror(errno));
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		die("PR_SET_KEEPCAPS: %s", strerror(errno));
	if (setresuid(NOBODY, NOBODY, NOBODY))
		die("setresuid: %s", strerror(errno));
	if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0))
		die("PR_SET_KEEPCAPS 0: %s", strerror(errno));
	if (set_caps(WANT_EFF, WANT_PRM, WANT_INH))
		die("capset: %s", strerror(errno));
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		die("PR_CAP_AMBIENT_RAISE: %s", strerror(errno));
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0))
		die("PR_SET_DUMPABLE: %s", strerror(errno));

	/* --- as 65534 ------------------------------------------------------------------ */
	/* A parent-death signal set as 65534 (changing ids clears it: a restore that sets it
	 * before the credentials loses it). SIGWINCH: harmless if the parent does go away. */
	if (prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0))
		die("PR_SET_PDEATHSIG: %s", strerror(errno));
	if (chdir(home))
		die("chdir %s as %d: %s", home, NOBODY, strerror(errno));
	fd = open("created", O_RDWR | O_CREAT | O_EXCL, 0640);
	if (fd < 0 || dup2(fd, CREATED_FD) != CREATED_FD)
		die("create %s/created as %d: %s", home, NOBODY, strerror(errno));
	close(fd);
	if (write(CREATED_FD, created_text, sizeof(created_text) - 1) != (ssize_t)sizeof(created_text) - 1)
		die("write created: %s", strerror(errno));
	struct stat st;
	if (fstat(CREATED_FD, &st) || st.st_uid != NOBODY || st.st_gid != NOBODY)
		die("created file is owned by %d:%d", st.st_uid, st.st_gid);

	/* state at READY */
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	getresuid(&ru, &eu, &su);
	getresgid(&rg, &eg, &sg);
	if (ru != NOBODY || eu != NOBODY || su != NOBODY || rg != NOBODY || eg != NOBODY || sg != NOBODY)
		die("ids after the drop: %d/%d/%d %d/%d/%d", ru, eu, su, rg, eg, sg);
	gid_t groups[64];
	int ngroups = getgroups(64, groups);
	if (ngroups != 1 || groups[0] != NOBODY)
		die("groups after the drop: %d groups, first %d", ngroups, ngroups > 0 ? (int)groups[0] : -1);
	struct caps c0;
	if (get_caps(&c0) || c0.eff != WANT_EFF || c0.prm != WANT_PRM || c0.inh != WANT_INH)
		die("capabilities after the drop: eff %llx prm %llx inh %llx", c0.eff, c0.prm, c0.inh);
	char capbnd[64], capamb[64], capeff[64], capprm[64], capinh[64];
	proc_status_field("CapBnd", capbnd, sizeof(capbnd));
	proc_status_field("CapAmb", capamb, sizeof(capamb));
	proc_status_field("CapEff", capeff, sizeof(capeff));
	proc_status_field("CapPrm", capprm, sizeof(capprm));
	proc_status_field("CapInh", capinh, sizeof(capinh));
	if (strtoull(capamb, NULL, 16) != WANT_AMB)
		die("CapAmb after the raise: %s", capamb);
	if (strtoull(capbnd, NULL, 16) & (CAPBIT(CAP_SYS_BOOT) | CAPBIT(CAP_MKNOD)))
		die("CapBnd still has SYS_BOOT or MKNOD: %s", capbnd);
	int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	int securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	int keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
	char cwd[4096];
	if (!getcwd(cwd, sizeof(cwd)))
		die("getcwd: %s", strerror(errno));

	int fds[] = { 0, 1, 2, WORLD_FD, CREATED_FD, SECRET_FD };
	int nfds = secret ? 6 : 5;
	struct fdstate fdb[6];
	for (int i = 0; i < nfds; i++)
		take_fd(&fdb[i], fds[i]);

	status("READY uid=%d gid=%d world_fd=%d created_fd=%d%s capeff=%s capprm=%s capinh=%s "
	       "capbnd=%s capamb=%s dumpable=%d",
	       eu, eg, WORLD_FD, CREATED_FD, secret ? " secret_fd=12" : "", capeff, capprm, capinh,
	       capbnd, capamb, dumpable);

	while (!go_requested())
		sleep_ms(5);

	/* --- after the restore --------------------------------------------------------- */
	uid_t ru2, eu2, su2;
	gid_t rg2, eg2, sg2;
	getresuid(&ru2, &eu2, &su2);
	getresgid(&rg2, &eg2, &sg2);
	CHECK(ru == ru2 && eu == eu2 && su == su2, "getresuid: expected %d/%d/%d got %d/%d/%d", ru, eu,
	      su, ru2, eu2, su2);
	CHECK(rg == rg2 && eg == eg2 && sg == sg2, "getresgid: expected %d/%d/%d got %d/%d/%d", rg, eg,
	      sg, rg2, eg2, sg2);
	CHECK_EQ_U("setfsuid(-1) (fsuid)", NOBODY, setfsuid(-1));
	CHECK_EQ_U("setfsgid(-1) (fsgid)", NOBODY, setfsgid(-1));
	gid_t groups2[64];
	int ngroups2 = getgroups(64, groups2);
	CHECK(ngroups2 == 1 && groups2[0] == NOBODY, "getgroups: expected [%d] got %d groups, first %d",
	      NOBODY, ngroups2, ngroups2 > 0 ? (int)groups2[0] : -1);
	struct caps c1;
	if (get_caps(&c1))
		check_failed("capget: %s", strerror(errno));
	CHECK(c1.eff == c0.eff, "capget effective: expected %llx got %llx", c0.eff, c1.eff);
	CHECK(c1.prm == c0.prm, "capget permitted: expected %llx got %llx", c0.prm, c1.prm);
	CHECK(c1.inh == c0.inh, "capget inheritable: expected %llx got %llx", c0.inh, c1.inh);
	char now[64];
	proc_status_field("CapBnd", now, sizeof(now));
	CHECK_EQ_S("CapBnd", capbnd, now);
	proc_status_field("CapAmb", now, sizeof(now));
	CHECK_EQ_S("CapAmb", capamb, now);
	proc_status_field("CapEff", now, sizeof(now));
	CHECK_EQ_S("CapEff", capeff, now);
	proc_status_field("CapPrm", now, sizeof(now));
	CHECK_EQ_S("CapPrm", capprm, now);
	proc_status_field("CapInh", now, sizeof(now));
	CHECK_EQ_S("CapInh", capinh, now);
	CHECK_EQ_U("PR_GET_DUMPABLE", dumpable, prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	int pdeath = 0;
	prctl(PR_GET_PDEATHSIG, &pdeath, 0, 0, 0);
	CHECK_EQ_U("PR_GET_PDEATHSIG (set as 65534)", SIGWINCH, pdeath);
	CHECK_EQ_U("PR_GET_SECUREBITS", securebits, prctl(PR_GET_SECUREBITS, 0, 0, 0, 0));
	CHECK_EQ_U("PR_GET_KEEPCAPS", keepcaps, prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0));
	char cwd2[4096];
	CHECK(getcwd(cwd2, sizeof(cwd2)) && strcmp(cwd, cwd2) == 0, "cwd: expected %s got %s", cwd,
	      cwd2);
	for (int i = 0; i < nfds; i++)
		check_fd(&fdb[i]);

	/* the fds work */
	char buf[64] = "";
	ssize_t n = read(WORLD_FD, buf, sizeof(buf) - 1);
	CHECK(n == (ssize_t)sizeof(world_text) - 1 - 5 && memcmp(buf, world_text + 5, n) == 0,
	      "reading world.txt from offset 5: got %zd bytes '%.*s'", n, (int)(n > 0 ? n : 0), buf);
	CHECK(write(CREATED_FD, "more\n", 5) == 5, "write to the created file: %s", strerror(errno));
	char all[64] = "";
	n = pread(CREATED_FD, all, sizeof(all) - 1, 0);
	CHECK(n == (ssize_t)sizeof(created_text) - 1 + 5 &&
		      memcmp(all, created_text, sizeof(created_text) - 1) == 0 &&
		      memcmp(all + sizeof(created_text) - 1, "more\n", 5) == 0,
	      "created file after one more write: %zd bytes '%.*s'", n, (int)(n > 0 ? n : 0), all);

	/* the capabilities work, and they are all it has */
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		check_failed("socket: %s", strerror(errno));
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		int bound = 0, last_err = 0;
		for (int port = 900; port < 1000 && !bound; port++) {
			a.sin_port = htons(port);
			if (bind(s, (struct sockaddr *)&a, sizeof(a)) == 0)
				bound = 1;
			else if ((last_err = errno) != EADDRINUSE)
				break;
		}
		CHECK(bound, "binding a port below 1024 with CAP_NET_BIND_SERVICE: %s", strerror(last_err));
		close(s);
	}
	CHECK(setresuid(-1, 0, -1) == -1 && errno == EPERM, "setresuid(-1, 0, -1) did not fail with EPERM");
	CHECK(open("/proc/1/environ", O_RDONLY | O_CLOEXEC) < 0, "an unprivileged process opened /proc/1/environ");

	finish("uid/gid %d, groups [%d], caps eff %llx prm %llx inh %llx, bnd %s amb %s and %d fds as before",
	       NOBODY, NOBODY, c1.eff, c1.prm, c1.inh, capbnd, capamb, nfds);
}
