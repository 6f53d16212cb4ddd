//! File locks (issue 4): POSIX record locks, flock locks and OFD locks held, and waited for,
//! by the processes of a tree come back exactly as they were.
//!
//! Each test starts a real tree (tests/workloads/lock_*.c, or a real program), dumps it,
//! checks that every process is gone and that their locks went with them, restores it, and
//! checks:
//! - from /proc/locks: the same locks on the tree's files (kind, type, byte range, owner pid,
//!   and for a blocked request the lock it waits behind), nothing extra; the first "N:"
//!   column and the order are ignored;
//! - from outside the tree: a fresh process (tests/workloads/lock_probe.c) meets the same
//!   conflicts as before (F_GETLK and F_OFD_GETLK for every byte of a grid of offsets, and
//!   flock LOCK_NB), and the explicit conflicts the test expects;
//! - from inside: after `<status>.go`, the restored processes check their locks themselves
//!   (lock_probe run as their own helper process, flock LOCK_NB probes, releasing a lock and
//!   seeing the others stay) and print PASS/FAIL per role;
//! - the per-process /proc snapshot of tests/common (minus the fdinfo "lock:" lines, compared
//!   through /proc/locks instead).
//!
//! Process ownership: a `LockTree` holds a pidfd for every process it started or restored
//! (descendants are held only once checked to be children of a process already held) and
//! kills and reaps only through those.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// pidfds and /proc
// ---------------------------------------------------------------------------------

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    if fd < 0 { None } else { Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }) }
}

fn pidfd_signal(fd: &OwnedFd, sig: i32) -> Result<(), i32> {
    // SAFETY: integers and a null siginfo pointer only.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(()) }
}

/// Reaps the exited child behind `fd`; its exit, if it was our exited child.
fn pidfd_try_reap(fd: &OwnedFd) -> Option<Exit> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`, a live local.
    let r = unsafe { libc::waitid(libc::P_PIDFD, fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::__WALL) };
    // SAFETY: reading the fields waitid filled.
    if r != 0 || unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: as above.
    let status = unsafe { info.si_status() };
    Some(if info.si_code == libc::CLD_EXITED { Exit::Code(status) } else { Exit::Signal(status) })
}

fn pidfd_reaped(fd: &OwnedFd) -> bool {
    pidfd_signal(fd, 0) == Err(libc::ESRCH)
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn ppid_of(pid: i32) -> Option<i32> {
    proc_status_field(pid, "PPid")?.parse().ok()
}

/// /proc/PID/syscall: the number and first three arguments of the call a task sleeps in.
fn syscall_args(pid: i32) -> Option<(i64, u64, u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let f: Vec<&str> = s.split_whitespace().collect();
    let hex = |i: usize| f.get(i).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
    Some((f.first()?.parse().ok()?, hex(1)?, hex(2)?, hex(3)?))
}

const SYS_FCNTL: i64 = 72;
const SYS_FLOCK: i64 = 73;

/// "MAJ:MIN:INODE" as /proc/locks prints the file.
fn dev_ino(path: &Path) -> String {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let dev = m.dev();
    format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), m.ino())
}

// ---------------------------------------------------------------------------------
// /proc/locks
// ---------------------------------------------------------------------------------

/// The locks of /proc/locks on `files` (label -> path), one normalized line each, sorted:
/// "KIND TYPE PID LABEL START END" for a granted lock, and
/// "-> KIND TYPE PID LABEL START END (behind KIND TYPE PID START END)" for a blocked request
/// (the lock it is queued behind is the granted lock printed under the same "N:").
fn locks_on(files: &BTreeMap<&str, PathBuf>) -> Vec<String> {
    let labels: BTreeMap<String, &str> = files.iter().map(|(l, p)| (dev_ino(p), *l)).collect();
    let text = fs::read_to_string("/proc/locks").expect("read /proc/locks");
    let mut granted: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((id, rest)) = line.split_once(':') else { continue };
        let mut f: Vec<&str> = rest.split_whitespace().collect();
        let waiting = f.first() == Some(&"->");
        if waiting {
            f.remove(0);
        }
        // KIND MODE TYPE PID DEV:INO START END
        if f.len() < 7 {
            continue;
        }
        let Some(label) = labels.get(f[4]) else {
            if !waiting {
                granted.insert(id.trim().to_string(), String::new());
            }
            continue;
        };
        let me = format!("{} {} {} {label} {} {}", f[0], f[2], f[3], f[5], f[6]);
        if waiting {
            let behind = granted.get(id.trim()).cloned().unwrap_or_default();
            out.push(format!("-> {me} (behind {behind})"));
        } else {
            granted.insert(id.trim().to_string(), format!("{} {} {} {} {}", f[0], f[2], f[3], f[5], f[6]));
            out.push(me);
        }
    }
    out.sort();
    out
}

/// Asserts that the locks on `files` are exactly `expected` (in any order).
#[track_caller]
fn assert_locks(what: &str, files: &BTreeMap<&str, PathBuf>, expected: &[String]) {
    let got = locks_on(files);
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(got, want, "{what}: /proc/locks on the tree's files\n  got:      {got:#?}\n  expected: {want:#?}");
}

/// Waits until the locks on `files` are `expected` (a blocked request appears once the
/// process has entered its call).
fn wait_locks(what: &str, files: &BTreeMap<&str, PathBuf>, expected: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut want = expected.to_vec();
    want.sort();
    while locks_on(files) != want {
        if Instant::now() > deadline {
            assert_locks(what, files, expected);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------
// lock_probe from outside the tree
// ---------------------------------------------------------------------------------

fn probe_bin() -> PathBuf {
    build_workload("lock_probe")
}

/// Runs lock_probe (a fresh process outside the tree) and returns its stdout.
fn probe_run(args: &[&str]) -> (i32, String) {
    let out = Command::new(probe_bin()).args(args).stdin(Stdio::null()).output().expect("run lock_probe");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// What a fresh process outside the tree meets on `file`: the conflict of a 1-byte request
/// of each kind and type at every offset of `offsets` (FROM, TO, STEP), and flock.
fn outside_grid(file: &Path, offsets: (u64, u64, u64)) -> String {
    let (code, out) = probe_run(&["grid", &file.to_string_lossy(), &offsets.0.to_string(), &offsets.1.to_string(), &offsets.2.to_string()]);
    assert_eq!(code, 0, "lock_probe grid {} failed:\n{out}", file.display());
    out
}

/// Runs `lock_probe check FILE Q=E...` from outside the tree: every query must match.
#[track_caller]
fn outside_check(what: &str, file: &Path, queries: &[String]) {
    let mut args = vec!["check".to_string(), file.to_string_lossy().into_owned()];
    args.extend(queries.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = probe_run(&args);
    assert_eq!(code, 0, "{what}: a process outside the tree does not see the expected conflicts on {}:\n{out}", file.display());
}

/// Outside-the-tree grids of every file before the dump, to compare after the restore.
fn outside_grids(files: &BTreeMap<&str, PathBuf>, offsets: (u64, u64, u64)) -> BTreeMap<String, String> {
    files.iter().map(|(l, p)| (l.to_string(), outside_grid(p, offsets))).collect()
}

#[track_caller]
fn assert_same_grids(before: &BTreeMap<String, String>, files: &BTreeMap<&str, PathBuf>, offsets: (u64, u64, u64)) {
    let after = outside_grids(files, offsets);
    for (label, b) in before {
        let a = &after[label];
        if a != b {
            let diff: Vec<String> =
                b.lines().zip(a.lines()).filter(|(x, y)| x != y).map(|(x, y)| format!("before: {x}   after: {y}")).collect();
            panic!("a process outside the tree meets other conflicts on file {label} after the restore:\n  {}", diff.join("\n  "));
        }
    }
}

/// A lock_probe `hold`/`wait` process outside the tree, killed (through its pidfd) on drop.
struct Outsider {
    pid: i32,
    pidfd: OwnedFd,
    child: std::process::Child,
    ready: PathBuf,
}

impl Outsider {
    /// `lock_probe MODE FILE LOCK READY`; waits for READY (for `hold`: the lock is held).
    fn start(mode: &str, file: &Path, lock: &str, dir: &Path) -> Outsider {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ready = dir.join(format!("outsider-{}.ready", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let child = Command::new(probe_bin())
            .args([mode, &file.to_string_lossy(), lock, &ready.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lock_probe");
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).expect("pidfd of lock_probe");
        let mut o = Outsider { pid, pidfd, child, ready };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !o.ready.exists() {
            if let Ok(Some(st)) = o.child.try_wait() {
                let mut s = String::new();
                use std::io::Read;
                let _ = o.child.stdout.take().map(|mut p| p.read_to_string(&mut s));
                panic!("lock_probe {mode} {} {lock} exited ({st}): {s}", file.display());
            }
            assert!(Instant::now() < deadline, "lock_probe {mode} not ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        o
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        let _ = pidfd_signal(&self.pidfd, libc::SIGKILL);
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.ready);
    }
}

// ---------------------------------------------------------------------------------
// A tree under test
// ---------------------------------------------------------------------------------

/// Fields of the per-process snapshot compared elsewhere: the fdinfo "lock:" lines (their
/// "N:" counter and order depend on the other locks of the file; the locks themselves are
/// compared through /proc/locks).
fn without_lock_lines(mut s: ProcSnapshot) -> ProcSnapshot {
    s.entries.retain(|k, _| !(k.starts_with("fdinfo:") && k.ends_with(":lock")));
    s
}

struct LockTree {
    w: Workload,
    pidfds: BTreeMap<i32, OwnedFd>,
}

impl LockTree {
    /// tests/workloads/NAME.c with `STATUS PROBE ARGS...`, once "READY parent " is written.
    fn spawn(name: &str, args: &[&str]) -> LockTree {
        let probe = probe_bin();
        let mut all = vec![probe.to_str().unwrap()];
        all.extend_from_slice(args);
        let w = Workload::spawn(name, &all);
        w.wait_status_line("READY parent ", READY_TIMEOUT);
        LockTree::adopt(w)
    }

    /// A program nobody here wrote (not following the READY protocol).
    fn program(label: &str, program: &str, args: &[&str]) -> LockTree {
        LockTree::adopt(Workload::spawn_program(label, program, args))
    }

    fn adopt(w: Workload) -> LockTree {
        let mut t = LockTree { w, pidfds: BTreeMap::new() };
        t.hold_all();
        t
    }

    fn root(&self) -> i32 {
        self.w.pid
    }

    fn file(&self, suffix: &str) -> PathBuf {
        PathBuf::from(format!("{}{suffix}", self.w.status_path.display()))
    }

    /// Holds a pidfd for the root and every descendant (each checked to be the child of a
    /// process already held once its pidfd is open); returns the pids, root first.
    fn hold_all(&mut self) -> Vec<i32> {
        let root = self.root();
        if !self.pidfds.contains_key(&root)
            && let Some(fd) = pidfd_open(root)
        {
            self.pidfds.insert(root, fd);
        }
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(pid) = queue.pop_front() {
            if out.contains(&pid) || !pid_exists(pid) {
                continue;
            }
            out.push(pid);
            for c in children_of(pid) {
                if let std::collections::btree_map::Entry::Vacant(e) = self.pidfds.entry(c) {
                    match pidfd_open(c) {
                        Some(fd) if ppid_of(c) == Some(pid) => {
                            e.insert(fd);
                        }
                        _ => continue,
                    }
                }
                queue.push_back(c);
            }
        }
        out
    }

    /// role -> pid from the "READY ROLE pid=N" lines.
    fn roles(&self) -> BTreeMap<String, i32> {
        self.w
            .status_text()
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == "READY").then_some(())?;
                let role = it.next()?.to_string();
                Some((role, ready_field(l, "pid")?.parse().ok()?))
            })
            .collect()
    }

    fn role(&self, name: &str) -> i32 {
        *self.roles().get(name).unwrap_or_else(|| panic!("no READY line for {name}:\n{}", self.w.status_text()))
    }

    /// /proc snapshots of every live process of the tree.
    fn snapshot(&mut self) -> BTreeMap<i32, ProcSnapshot> {
        self.hold_all()
            .into_iter()
            .filter(|p| proc_state(*p) != Some('Z'))
            .map(|p| (p, without_lock_lines(ProcSnapshot::take(p))))
            .collect()
    }

    /// `crust dump` of the root with `extra` options (must succeed); every process of
    /// `before` must then be gone (the root reaped by the harness, the others, SIGKILLed,
    /// by us: we are their subreaper).
    #[track_caller]
    fn dump(&mut self, before: &BTreeMap<i32, ProcSnapshot>, extra: &[&str]) -> CrustOutput {
        let out = self.w.dump_with(extra);
        assert!(out.success(), "dump failed:\n{out}\n--- status ---\n{}", self.w.status_text());
        let root = self.root();
        let e = self.w.reap(GONE_TIMEOUT);
        assert_eq!(e, Some(Exit::Signal(libc::SIGKILL)), "root {root} not killed by the dump:\n{out}");
        assert_killed_by_dump(&self.pidfds, root, &out);
        self.pidfds.clear();
        for pid in before.keys() {
            assert!(wait_gone(*pid, GONE_TIMEOUT), "pid {pid} exists after the dump");
        }
        out
    }

    /// `crust restore -d` (must succeed); waits until every process of `before` runs its
    /// program again, untraced, without crust mapped.
    #[track_caller]
    fn restore(&mut self, before: &BTreeMap<i32, ProcSnapshot>) -> CrustOutput {
        let out = self.w.restore_detached();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending: Vec<i32> = before
                .iter()
                .filter(|(pid, snap)| {
                    let exe = fs::read_link(format!("/proc/{pid}/exe")).map(|e| e.to_string_lossy().into_owned()).ok();
                    !(matches!(proc_state(**pid), Some('R' | 'S' | 'D'))
                        && proc_status_field(**pid, "TracerPid").as_deref() == Some("0")
                        && exe.as_ref() == snap.entries.get("exe")
                        && fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| !m.contains(crust_bin())).unwrap_or(false))
                })
                .map(|(p, _)| *p)
                .collect();
            if pending.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "10 s after the restore, pids {pending:?} are not back:\n{out}");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.hold_all();
        out
    }

    /// Compares the restored processes with their snapshots before the dump.
    #[track_caller]
    fn assert_same_procs(&mut self, before: &BTreeMap<i32, ProcSnapshot>) {
        let after = self.snapshot();
        let mut problems = Vec::new();
        for (pid, b) in before {
            match after.get(pid) {
                Some(a) => problems.extend(proc_problems(b, a, &[]).into_iter().map(|p| format!("pid {pid}: {p}"))),
                None => problems.push(format!("pid {pid} is not back")),
            }
        }
        assert!(problems.is_empty(), "the restored processes differ in /proc:\n  {}", problems.join("\n  "));
    }

    /// `.go`: the root must exit 0 and every role of `roles` print PASS.
    #[track_caller]
    fn go(&mut self, roles: &[&str]) -> GoResult {
        let r = self.w.go();
        let failed: Vec<&str> = r.status_text.lines().filter(|l| l.starts_with("FAIL")).collect();
        let missing: Vec<&&str> =
            roles.iter().filter(|role| !r.status_text.lines().any(|l| l.starts_with(&format!("PASS {role} ")))).collect();
        assert!(
            r.exit == Exit::Code(0) && failed.is_empty() && missing.is_empty(),
            "after the restore the tree's own checks failed (root {}): FAIL lines {failed:#?}, no PASS from {missing:?}\n--- status ---\n{}--- log ---\n{}",
            r.exit,
            r.status_text,
            r.log
        );
        r
    }

    /// Kills every process held and reaps our children among them.
    fn kill_all(&mut self) {
        for fd in self.pidfds.values() {
            let _ = pidfd_signal(fd, libc::SIGKILL);
        }
        let root = self.root();
        let deadline = Instant::now() + Duration::from_secs(5);
        for (&pid, fd) in &self.pidfds {
            if pid == root {
                continue;
            }
            while !pidfd_reaped(fd) && pidfd_try_reap(fd).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if is_our_child(root) {
            let _ = self.w.reap(Duration::from_secs(2));
        }
        self.pidfds.clear();
    }
}

impl Drop for LockTree {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn files(t: &LockTree, names: &[&'static str]) -> BTreeMap<&'static str, PathBuf> {
    names.iter().map(|n| (*n, t.file(&format!(".{n}")))).collect()
}

// ---------------------------------------------------------------------------------
// POSIX record locks
// ---------------------------------------------------------------------------------

/// POSIX locks: the parent holds many ranges of file a (read and write, adjacent and
/// separate) and locks on b and c (one of them the same range and type as one on a); two children hold read locks on a that overlap each other
/// and the parent's (one through the description it inherited, one through its own), and
/// one child a read lock on c overlapping the parent's. After the restore /proc/locks lists
/// the same locks with the same owners, an outside process meets the same conflicts at every
/// byte, and inside, each process releasing its own locks frees exactly its ranges.
#[test]
fn posix_locks_of_a_tree_come_back_with_their_owners_ranges_and_types() {
    let mut t = LockTree::spawn("lock_posix", &[]);
    let fs_ = files(&t, &["a", "b", "c"]);
    let (p, c1, c2) = (t.role("parent"), t.role("child1"), t.role("child2"));
    let expected: Vec<String> = [
        format!("POSIX READ {p} a 0 9"),
        format!("POSIX WRITE {p} a 10 19"),
        format!("POSIX WRITE {p} a 40 49"),
        format!("POSIX READ {p} a 100 100"),
        format!("POSIX READ {p} a 200 299"),
        format!("POSIX READ {c1} a 250 349"),
        format!("POSIX READ {c2} a 220 239"),
        format!("POSIX READ {c2} a 1000 EOF"),
        format!("POSIX WRITE {p} b 5 9"),
        format!("POSIX READ {p} b 100 100"),
        format!("POSIX READ {p} c 0 EOF"),
        format!("POSIX READ {c1} c 0 99"),
    ]
    .into();
    assert_locks("before the dump", &fs_, &expected);
    let grid = (0, 1100, 5);
    let grids = outside_grids(&fs_, grid);
    let explicit = [
        format!("posix:w:15:1=W@{p}:10:10"),
        format!("posix:w:320:1=R@{c1}:250:100"),
        format!("posix:w:5000:1=R@{c2}:1000:0"),
        format!("posix:w:100:1=R@{p}:100:1"),
        "posix:r:200:800=free".to_string(),
        format!("ofd:r:45:1=W@{p}:40:10"),
    ];
    outside_check("before the dump", &fs_["a"], &explicit);

    let before = t.snapshot();
    // --file-locks is accepted (CRIU compatibility); locks are always dumped anyway
    t.dump(&before, &["--file-locks"]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    assert_same_grids(&grids, &fs_, grid);
    outside_check("after the restore", &fs_["a"], &explicit);
    t.assert_same_procs(&before);
    t.go(&["parent", "child1", "child2"]);
    assert_locks("after the tree exited", &fs_, &[]);
}

// ---------------------------------------------------------------------------------
// flock locks
// ---------------------------------------------------------------------------------

/// flock locks belong to the open file description: the parent's exclusive lock on x and
/// shared lock on y, through descriptions it shares with its child after fork, and the
/// child's own shared lock on y (a second description) come back; outside processes meet the
/// same conflicts; inside, the child releasing x through its inherited fd frees it for both
/// (one description, one lock, restored as one), and the parent's locks outlive the child.
#[test]
fn flock_locks_of_descriptions_shared_across_fork_come_back() {
    let mut t = LockTree::spawn("lock_flock", &["shared"]);
    let fs_ = files(&t, &["x", "y"]);
    let (p, c1) = (t.role("parent"), t.role("child1"));
    let expected: Vec<String> =
        vec![format!("FLOCK WRITE {p} x 0 EOF"), format!("FLOCK READ {p} y 0 EOF"), format!("FLOCK READ {c1} y 0 EOF")];
    assert_locks("before the dump", &fs_, &expected);
    let grid = (0, 100, 50);
    let grids = outside_grids(&fs_, grid);
    outside_check("before the dump", &fs_["x"], &["flock:sh=busy".into(), "flock:ex=busy".into()]);
    outside_check("before the dump", &fs_["y"], &["flock:sh=free".into(), "flock:ex=busy".into()]);

    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    assert_same_grids(&grids, &fs_, grid);
    outside_check("after the restore", &fs_["x"], &["flock:sh=busy".into(), "flock:ex=busy".into()]);
    outside_check("after the restore", &fs_["y"], &["flock:sh=free".into(), "flock:ex=busy".into()]);
    t.assert_same_procs(&before);
    t.go(&["parent", "child1"]);
    assert_locks("after the tree exited", &fs_, &[]);
}

/// A flock lock taken by a child through a description its parent opened before the fork:
/// /proc/locks shows the child's pid (the taker) before the dump. After the restore the lock
/// is held by the description again (the conflicts are the same), and it is the child, the
/// taker recorded in the image, that takes it again, so /proc/locks shows the child's pid.
#[test]
fn flock_lock_taken_by_a_child_through_an_inherited_description_keeps_its_pid() {
    let mut t = LockTree::spawn("lock_flock", &["child"]);
    let fs_ = files(&t, &["w"]);
    let expected = vec![format!("FLOCK WRITE {} w 0 EOF", t.role("child1"))];
    assert_locks("before the dump", &fs_, &expected);
    outside_check("before the dump", &fs_["w"], &["flock:sh=busy".into(), "flock:ex=busy".into()]);
    let before = t.snapshot();
    t.dump(&before, &[]);
    t.restore(&before);
    outside_check("after the restore", &fs_["w"], &["flock:sh=busy".into(), "flock:ex=busy".into()]);
    assert_locks("after the restore", &fs_, &expected);
    t.go(&["parent", "child1"]);
}

/// A flock lock outlives the process that took it while another process keeps the open file
/// description: the taker exits, its child (now the subreaper parent's) keeps the
/// description, and the tree is dumped after that. The lock comes back held by that
/// description: outside processes meet the same conflict, and inside the keeper can convert
/// and release it through its fd, which frees the file for everyone.
///
/// /proc/locks prints for a flock lock the pid of the process that took it. The taker no
/// longer exists, so after the restore the line names the process that took the lock again
/// for the description, the keeper (its only holder): that one field is mapped, the rest must
/// be identical.
#[test]
fn flock_lock_held_after_its_taker_exited_comes_back_with_the_description() {
    let mut t = LockTree::spawn("lock_flock", &["orphan"]);
    let fs_ = files(&t, &["z"]);
    let taker: i32 = ready_field(&t.w.wait_status_line("READY parent ", READY_TIMEOUT), "taker").unwrap().parse().unwrap();
    let keeper = t.role("keeper");
    assert!(!pid_exists(taker) || proc_state(taker) == Some('Z'), "the taker {taker} should have exited");
    assert_locks("before the dump", &fs_, &[format!("FLOCK WRITE {taker} z 0 EOF")]);
    let grid = (0, 100, 50);
    let grids = outside_grids(&fs_, grid);
    outside_check("before the dump", &fs_["z"], &["flock:sh=busy".into(), "flock:ex=busy".into()]);

    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &[format!("FLOCK WRITE {keeper} z 0 EOF")]);
    assert_same_grids(&grids, &fs_, grid);
    outside_check("after the restore", &fs_["z"], &["flock:sh=busy".into(), "flock:ex=busy".into()]);
    t.assert_same_procs(&before);
    t.go(&["parent", "keeper"]);
    assert_locks("after the tree exited", &fs_, &[]);
}

// ---------------------------------------------------------------------------------
// OFD locks
// ---------------------------------------------------------------------------------

/// OFD locks belong to the open file description: three descriptions of one file hold
/// compatible ranges (read locks overlapping each other, write locks where no one else has
/// any), two of them shared by parent and child after fork. After the restore /proc/locks
/// lists the same OFD locks, outside processes meet the same conflicts at every byte, and
/// inside, F_OFD_GETLK through each description sees the others' locks and not its own, and
/// unlocking through the child's inherited fd frees the range for the parent too.
#[test]
fn ofd_locks_of_several_descriptions_shared_across_fork_come_back() {
    let mut t = LockTree::spawn("lock_ofd", &[]);
    let fs_ = files(&t, &["a"]);
    let expected: Vec<String> = [
        "OFDLCK WRITE -1 a 0 9",
        "OFDLCK READ -1 a 10 19",
        "OFDLCK WRITE -1 a 100 149",
        "OFDLCK READ -1 a 10 29",
        "OFDLCK READ -1 a 200 EOF",
        "OFDLCK READ -1 a 15 24",
        "OFDLCK READ -1 a 250 259",
    ]
    .map(String::from)
    .into();
    assert_locks("before the dump", &fs_, &expected);
    let grid = (0, 300, 1);
    let grids = outside_grids(&fs_, grid);
    let explicit: Vec<String> =
        ["ofd:w:5:1=W@-1:0:10", "posix:r:120:1=W@-1:100:50", "ofd:w:27:1=R@-1:10:20", "ofd:r:0:0=W@-1:0:10|W@-1:100:50"]
            .map(String::from)
            .into();
    outside_check("before the dump", &fs_["a"], &explicit);

    let before = t.snapshot();
    t.dump(&before, &["-l"]); // -l: --file-locks
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    assert_same_grids(&grids, &fs_, grid);
    outside_check("after the restore", &fs_["a"], &explicit);
    t.assert_same_procs(&before);
    t.go(&["parent", "child"]);
    assert_locks("after the tree exited", &fs_, &[]);
}

// ---------------------------------------------------------------------------------
// Waiters
// ---------------------------------------------------------------------------------

/// Where a waiter sleeps: (syscall, its second/third argument) for F_SETLKW (fcntl, cmd 7),
/// F_OFD_SETLKW (fcntl, cmd 38) and flock (LOCK_EX 2).
fn waiting_in(pid: i32) -> Option<(i64, u64)> {
    if proc_state(pid) != Some('S') {
        return None;
    }
    let (nr, _fd, a1, _) = syscall_args(pid)?;
    Some((nr, a1))
}

/// Processes blocked in F_SETLKW, F_OFD_SETLKW and flock(LOCK_EX) at the dump are blocked
/// in the same calls after the restore, queued behind the same (restored) locks in
/// /proc/locks ("->" lines), and stay there; when the restored holder releases each lock in
/// turn, exactly its waiter acquires it, after the release (the release is already logged
/// when the waiter's call returns) and at once (within a second).
#[test]
fn waiters_blocked_in_setlkw_ofd_setlkw_and_flock_wait_again_and_acquire_after_the_release() {
    let mut t = LockTree::spawn("lock_waiters", &[]);
    let fs_ = files(&t, &["a", "b", "c"]);
    let (h, w1, w2, w3) = (t.role("parent"), t.role("w1"), t.role("w2"), t.role("w3"));
    let expected: Vec<String> = vec![
        format!("POSIX WRITE {h} a 0 9"),
        format!("-> POSIX WRITE {w1} a 0 9 (behind POSIX WRITE {h} 0 9)"),
        "OFDLCK WRITE -1 b 0 9".into(),
        "-> OFDLCK WRITE -1 b 5 9 (behind OFDLCK WRITE -1 0 9)".into(),
        format!("FLOCK WRITE {h} c 0 EOF"),
        format!("-> FLOCK WRITE {w3} c 0 EOF (behind FLOCK WRITE {h} 0 EOF)"),
    ];
    let calls =
        [(w1, (SYS_FCNTL, libc::F_SETLKW as u64)), (w2, (SYS_FCNTL, libc::F_OFD_SETLKW as u64)), (w3, (SYS_FLOCK, libc::LOCK_EX as u64))];
    wait_locks("before the dump", &fs_, &expected);
    for (pid, call) in calls {
        wait_until(&format!("pid {pid} to wait in {call:?}"), Duration::from_secs(5), || waiting_in(pid) == Some(call));
    }
    let explicit_a = [format!("posix:w:0:1=W@{h}:0:10"), "posix:w:10:100=free".to_string()];
    let explicit_b = ["ofd:r:9:1=W@-1:0:10".to_string()];
    let explicit_c = ["flock:sh=busy".to_string()];
    let grid = (0, 20, 1);
    let grids = outside_grids(&fs_, grid);

    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    wait_locks("after the restore", &fs_, &expected);
    for (pid, call) in calls {
        wait_until(&format!("restored pid {pid} to wait in {call:?} again"), Duration::from_secs(5), || waiting_in(pid) == Some(call));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (pid, call) in calls {
        assert_eq!(waiting_in(pid), Some(call), "restored pid {pid} stopped waiting on its own");
    }
    assert_locks("300 ms after the restore", &fs_, &expected);
    assert!(!t.w.status_text().contains("ACQUIRED"), "a waiter acquired a lock after the restore:\n{}", t.w.status_text());
    assert_same_grids(&grids, &fs_, grid);
    outside_check("after the restore", &fs_["a"], &explicit_a);
    outside_check("after the restore", &fs_["b"], &explicit_b);
    outside_check("after the restore", &fs_["c"], &explicit_c);
    t.assert_same_procs(&before);
    let r = t.go(&["parent", "w1", "w2", "w3"]);
    // the order of the log: each RELEASE before its ACQUIRED, and a, b, c in turn
    let order: Vec<String> = r
        .status_text
        .lines()
        .filter(|l| l.starts_with("RELEASE ") || l.starts_with("ACQUIRED "))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(order, ["RELEASE a", "ACQUIRED a", "RELEASE b", "ACQUIRED b", "RELEASE c", "ACQUIRED c"], "\n{}", r.status_text);
    assert_locks("after the tree exited", &fs_, &[]);
}

// ---------------------------------------------------------------------------------
// Seen from outside
// ---------------------------------------------------------------------------------

/// Runs util-linux `flock -n [-s] FILE true` (a fresh process outside the tree): true if it
/// got the lock.
fn flock1_can_lock(file: &Path, shared: bool) -> bool {
    let mut args = vec!["-n"];
    if shared {
        args.push("-s");
    }
    let st = Command::new("flock").args(&args).arg(file).arg("true").stdin(Stdio::null()).status().expect("run flock(1)");
    match st.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("flock(1) exited with {other:?}"),
    }
}

/// Processes outside the tree meet the same conflicts after the restore as before: on one
/// file holding POSIX locks (parent), OFD locks (child) and two shared flock locks, a fresh
/// process probing every byte from 0 to 100 with F_GETLK and F_OFD_GETLK (read and write)
/// gets the same answers, including the owner pid of the POSIX locks; F_SETLK attempts get
/// the same verdicts; util-linux flock(1) -n gets a shared lock and is refused an exclusive
/// one, before and after.
#[test]
fn outside_processes_meet_the_same_conflicts_after_the_restore() {
    let mut t = LockTree::spawn("lock_mixed", &[]);
    let fs_ = files(&t, &["m"]);
    let m = fs_["m"].clone();
    let p = t.role("parent");
    let grid = (0, 100, 1);
    let outside = |when: &str| {
        let explicit = [
            format!("posix:w:5:1=W@{p}:0:10"),
            // two write locks conflict: F_GETLK reports one of them (the first in the
            // kernel's list, whose order the restore does not keep)
            format!("ofd:r:0:100=W@{p}:0:10|W@-1:50:10"),
            format!("posix:w:25:1=R@{p}:20:10|R@-1:20:20"),
            "posix:w:35:1=R@-1:20:20".to_string(),
            "posix:w:55:1=W@-1:50:10".to_string(),
            "posix:w:60:0=free".to_string(),
            "flock:sh=free".to_string(),
            "flock:ex=busy".to_string(),
        ];
        outside_check(when, &m, &explicit);
        assert!(flock1_can_lock(&m, true), "{when}: flock -n -s {} was refused", m.display());
        assert!(!flock1_can_lock(&m, false), "{when}: flock -n {} got an exclusive lock", m.display());
    };
    let expected: Vec<String> = vec![
        format!("POSIX WRITE {p} m 0 9"),
        format!("POSIX READ {p} m 20 29"),
        "OFDLCK READ -1 m 20 39".into(),
        "OFDLCK WRITE -1 m 50 59".into(),
        format!("FLOCK READ {p} m 0 EOF"),
        format!("FLOCK READ {} m 0 EOF", t.role("child")),
    ];
    assert_locks("before the dump", &fs_, &expected);
    outside("before the dump");
    let grids = outside_grids(&fs_, grid);
    assert!(grids["m"].contains("5 pw=W pr=W ow=W or=W") && grids["m"].contains("25 pw=R pr=- ow=R or=-"), "{}", grids["m"]);

    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    assert!(flock1_can_lock(&m, false), "after the dump, the file should be free");
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    assert_same_grids(&grids, &fs_, grid);
    outside("after the restore");
    t.assert_same_procs(&before);
    t.go(&["parent", "child"]);
    assert_locks("after the tree exited", &fs_, &[]);
}

// ---------------------------------------------------------------------------------
// Real programs
// ---------------------------------------------------------------------------------

/// Waits until the tree of `t` has `n` processes, the last one asleep in clock_nanosleep.
fn wait_tree(t: &mut LockTree, n: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    wait_until(&format!("a tree of {n} processes ending in a sleep"), Duration::from_secs(10), || {
        pids = t.hold_all();
        pids.len() == n && blocked_syscall(pids[n - 1]) == Some(SYS_CLOCK_NANOSLEEP) && proc_state(pids[n - 1]) == Some('S')
    });
    pids
}

/// Kills the last process of the tree (the `sleep`) through its pidfd.
fn kill_sleep(t: &LockTree, pid: i32) {
    let fd = t.pidfds.get(&pid).expect("pidfd of the sleep");
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim(), "sleep");
    pidfd_signal(fd, libc::SIGTERM).expect("SIGTERM to the sleep");
}

/// util-linux `flock x sleep 1000`: flock(1) takes an exclusive flock lock on x and runs the
/// command with the descriptor inherited. The tree (flock, sleep) is dumped and restored: the
/// lock comes back held by flock's pid, outside processes (flock -n, lock_probe) are refused
/// before and after, an outside `flock x true` started after the restore waits for it, and
/// when the restored sleep is killed flock(1) exits 143, the lock is released and the waiting
/// outsider gets it at once.
#[test]
fn util_linux_flock_holding_a_lock_around_a_command() {
    let mut t = LockTree::program("flock1", "flock", &["x", "sleep", "1000"]);
    let x = t.w.dir.path.join("x");
    let fs_: BTreeMap<&str, PathBuf> = [("x", x.clone())].into();
    let pids = wait_tree(&mut t, 2);
    let (flock_pid, sleep_pid) = (pids[0], pids[1]);
    let expected = vec![format!("FLOCK WRITE {flock_pid} x 0 EOF")];
    wait_locks("before the dump", &fs_, &expected);
    assert!(!flock1_can_lock(&x, true) && !flock1_can_lock(&x, false), "flock -n got x while flock(1) holds it");
    outside_check("before the dump", &x, &["flock:sh=busy".into(), "flock:ex=busy".into(), "posix:w:0:0=free".into()]);

    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    assert!(!flock1_can_lock(&x, true) && !flock1_can_lock(&x, false), "flock -n got x after the restore");
    outside_check("after the restore", &x, &["flock:sh=busy".into(), "flock:ex=busy".into(), "posix:w:0:0=free".into()]);
    t.assert_same_procs(&before);
    assert_eq!(blocked_syscall(sleep_pid), Some(SYS_CLOCK_NANOSLEEP), "the restored sleep is not sleeping");

    // an outside flock(1) waits for the restored lock, and gets it when the command ends
    let mut waiter =
        Command::new("flock").arg(&x).args(["-c", "echo got"]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().expect("flock(1)");
    let waiter_pid = waiter.id() as i32;
    let mut with_waiter = expected.clone();
    with_waiter.push(format!("-> FLOCK WRITE {waiter_pid} x 0 EOF (behind FLOCK WRITE {flock_pid} 0 EOF)"));
    wait_locks("with an outside flock(1) waiting", &fs_, &with_waiter);
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.try_wait().unwrap().is_none(), "the outside flock(1) got the lock while the restored flock(1) holds it");
    kill_sleep(&t, sleep_pid);
    let e = t.w.reap(Duration::from_secs(10));
    assert_eq!(e, Some(Exit::Code(128 + libc::SIGTERM)), "flock(1) should exit 143 when its command is killed");
    let out = waiter.wait_with_output().expect("wait for the outside flock(1)");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == "got\n", "outside flock(1): {out:?}");
    assert_locks("after the tree exited", &fs_, &[]);
    assert!(flock1_can_lock(&x, false), "x is still locked after flock(1) exited");
}

/// Runs `sqlite3 db SQL` outside the tree (no busy timeout): (success, stdout+stderr).
fn sqlite_outside(dir: &Path, sql: &str) -> (bool, String) {
    let out = Command::new("sqlite3").current_dir(dir).args(["db", sql]).stdin(Stdio::null()).output().expect("run sqlite3");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// sqlite3 inside an open write transaction: `sqlite3 db 'CREATE TABLE t(x);' 'BEGIN
/// EXCLUSIVE;' 'INSERT INTO t VALUES(42);' '.system sleep 1000' 'COMMIT;'` holds SQLite's
/// POSIX locks on db (the pending, reserved and shared bytes at 1 GiB, write) and its
/// rollback journal open while the shell command runs. The tree (sqlite3, sh, sleep) is
/// dumped and restored: the same POSIX lock with sqlite3's pid, another sqlite3 is refused
/// with "database is locked" before and after; when the restored sleep is killed, sqlite3
/// commits and the row is there for everyone.
#[test]
fn sqlite3_in_an_open_write_transaction() {
    let mut t = LockTree::program(
        "sqlite",
        "sqlite3",
        &["db", "CREATE TABLE t(x);", "BEGIN EXCLUSIVE;", "INSERT INTO t VALUES(42);", ".system sleep 1000", "COMMIT;"],
    );
    let dir = t.w.dir.path.clone();
    let fs_: BTreeMap<&str, PathBuf> = [("db", dir.join("db"))].into();
    let pids = wait_tree(&mut t, 3);
    let (sqlite_pid, sleep_pid) = (pids[0], pids[2]);
    let expected = vec![format!("POSIX WRITE {sqlite_pid} db 1073741824 1073742335")];
    assert_locks("before the dump", &fs_, &expected);
    let locked = |when: &str| {
        let (ok, out) = sqlite_outside(&dir, "SELECT count(*) FROM t;");
        assert!(!ok && out.contains("database is locked"), "{when}: another sqlite3 was not refused: {out}");
        outside_check(
            when,
            &fs_["db"],
            &[format!("posix:r:1073741824:1=W@{sqlite_pid}:1073741824:512"), "posix:w:0:1073741824=free".into()],
        );
    };
    locked("before the dump");

    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    locked("after the restore");
    t.assert_same_procs(&before);

    kill_sleep(&t, sleep_pid);
    let e = t.w.reap(Duration::from_secs(10));
    assert!(e.is_some(), "sqlite3 did not finish after its shell command was killed");
    assert_locks("after sqlite3 exited", &fs_, &[]);
    let (ok, out) = sqlite_outside(&dir, "SELECT x FROM t;");
    assert!(ok && out == "42\n", "the transaction was not committed after the restore: {out}\n--- sqlite3 log ---\n{}", t.w.log_text());
}

// ---------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------

/// The lock_mixed tree's locks on m (see lock_mixed.c).
fn mixed_locks(t: &LockTree) -> Vec<String> {
    let (p, c) = (t.role("parent"), t.role("child"));
    vec![
        format!("POSIX WRITE {p} m 0 9"),
        format!("POSIX READ {p} m 20 29"),
        "OFDLCK READ -1 m 20 39".into(),
        "OFDLCK WRITE -1 m 50 59".into(),
        format!("FLOCK READ {p} m 0 EOF"),
        format!("FLOCK READ {c} m 0 EOF"),
    ]
}

/// A lock of the image is taken by an outside process between the dump and the restore:
/// the restore fails naming the file, the range and the outsider's pid, and leaves nothing
/// behind (no process of the tree, no lock of theirs); once the outsider is gone the same
/// image restores and passes its checks.
fn restore_conflict(outside_lock: &str, range: &str, outsider_line: impl Fn(i32) -> String) {
    let mut t = LockTree::spawn("lock_mixed", &[]);
    let fs_ = files(&t, &["m"]);
    let m = fs_["m"].clone();
    let expected = mixed_locks(&t);
    assert_locks("before the dump", &fs_, &expected);
    let before = t.snapshot();
    t.dump(&before, &[]);
    assert_locks("after the dump (the tree is gone)", &fs_, &[]);

    let outsider = Outsider::start("hold", &m, outside_lock, &t.w.dir.path);
    let out = t.w.restore_detached_raw();
    assert!(!out.success(), "restore succeeded although pid {} holds {outside_lock} on {}:\n{out}", outsider.pid, m.display());
    eprintln!("{out}");
    let text = out.text();
    let problems: Vec<&str> = [
        (!text.contains(&*m.to_string_lossy())).then_some("the file's path"),
        (!text.contains(range)).then_some("the range"),
        (!has_token(&text, &outsider.pid.to_string())).then_some("the conflicting pid"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(problems.is_empty(), "the failed restore does not name {problems:?} ({}, {range}, pid {}):\n{out}", m.display(), outsider.pid);
    for pid in before.keys() {
        assert!(wait_gone(*pid, GONE_TIMEOUT), "pid {pid} of the tree is left after the failed restore: {:?}", proc_state(*pid));
    }
    assert_locks("after the failed restore", &fs_, &[outsider_line(outsider.pid)]);
    let text = fs::read_to_string("/proc/locks").unwrap();
    for pid in before.keys() {
        assert!(!text.lines().any(|l| l.split_whitespace().nth(4) == Some(&pid.to_string())), "a lock of pid {pid} is left:\n{text}");
    }
    drop(outsider);
    t.restore(&before);
    assert_locks("after the second restore", &fs_, &expected);
    t.go(&["parent", "child"]);
}

/// An outside POSIX write lock on byte 5, where the parent had its POSIX write lock 0..9.
#[test]
fn restore_fails_naming_file_range_and_pid_when_an_outsider_took_a_posix_range() {
    restore_conflict("posix:w:5:1", "0..9", |pid| format!("POSIX WRITE {pid} m 5 5"));
}

/// An outside exclusive flock lock, where the tree had two shared ones.
#[test]
fn restore_fails_naming_file_and_pid_when_an_outsider_took_a_flock_lock() {
    restore_conflict("flock:ex", "EOF", |pid| format!("FLOCK WRITE {pid} m 0 EOF"));
}

/// An outside OFD write lock on byte 55, where the child's description had its OFD write
/// lock 50..59: the outsider's OFD lock shows pid -1 in /proc/locks, the restore must still
/// find and name the process holding it.
#[test]
fn restore_fails_naming_file_range_and_pid_when_an_outsider_took_an_ofd_range() {
    restore_conflict("ofd:w:55:1", "50..59", |_| "OFDLCK WRITE -1 m 55 55".to_string());
}

/// Asserts that the processes of the tree run on, not stopped, not traced.
#[track_caller]
fn assert_running_untouched(pids: &[i32], what: &str) {
    for _ in 0..3 {
        for &pid in pids {
            let st = proc_state(pid);
            assert!(matches!(st, Some('R' | 'S')), "{what}: pid {pid} state {st:?}, expected running or sleeping");
            assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"), "{what}: pid {pid} is still traced");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Outside processes holding or waiting for locks on a file the tree has locked: a POSIX
/// read lock (compatible), a POSIX write request queued behind the parent's, a shared flock
/// lock, an OFD read lock (pid -1 in /proc/locks) and an OFD write request queued (pid -1
/// too). Each time the dump is refused naming the outsider's pid and the file, and leaves
/// the tree running, untraced, with its locks as they were.
#[test]
fn dump_is_refused_when_outside_processes_hold_or_wait_for_locks_on_the_trees_files() {
    let mut t = LockTree::spawn("lock_mixed", &[]);
    let fs_ = files(&t, &["m"]);
    let m = fs_["m"].clone();
    let expected = mixed_locks(&t);
    let pids = t.hold_all();
    let p = t.role("parent");
    let cases: [(&str, &str, Box<dyn Fn(i32) -> String>); 5] = [
        ("hold", "posix:r:25:1", Box::new(|o| format!("POSIX READ {o} m 25 25"))),
        ("wait", "posix:w:5:1", Box::new(move |o| format!("-> POSIX WRITE {o} m 5 5 (behind POSIX WRITE {p} 0 9)"))),
        ("hold", "flock:sh", Box::new(|o| format!("FLOCK READ {o} m 0 EOF"))),
        ("hold", "ofd:r:25:1", Box::new(|_| "OFDLCK READ -1 m 25 25".to_string())),
        ("wait", "ofd:w:5:1", Box::new(move |_| format!("-> OFDLCK WRITE -1 m 5 5 (behind POSIX WRITE {p} 0 9)"))),
    ];
    let mut failures = Vec::new();
    for (mode, lock, line) in &cases {
        let o = Outsider::start(mode, &m, lock, &t.w.dir.path);
        let mut with = expected.clone();
        with.push(line(o.pid));
        wait_locks(&format!("with an outsider that {mode}s {lock}"), &fs_, &with);
        let out = t.w.dump_with(&[]);
        eprintln!("outsider pid {} {mode}s {lock}:\n{out}", o.pid);
        let text = out.text();
        if out.success() {
            failures.push(format!("dump succeeded although pid {} {mode}s {lock} on {}", o.pid, m.display()));
            break; // the tree is gone
        }
        if !has_token(&text, &o.pid.to_string()) || !text.contains(&*m.to_string_lossy()) {
            failures.push(format!(
                "the refusal for pid {} ({mode} {lock}) does not name the pid and {}: {}",
                o.pid,
                m.display(),
                text.trim()
            ));
        }
        assert_running_untouched(&pids, &format!("after the refused dump ({mode} {lock})"));
        assert_locks(&format!("after the refused dump ({mode} {lock})"), &fs_, &with);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    t.go(&["parent", "child"]);
}

/// With --external-locks the dump goes on although outsiders hold compatible locks (a POSIX
/// read lock and a shared flock lock) on the tree's file; the restore takes the tree's locks
/// again beside theirs, and the tree passes its checks.
#[test]
fn dump_with_external_locks_goes_on_and_the_restore_takes_the_locks_beside_the_outsiders() {
    let mut t = LockTree::spawn("lock_mixed", &[]);
    let fs_ = files(&t, &["m"]);
    let m = fs_["m"].clone();
    let mut expected = mixed_locks(&t);
    let o1 = Outsider::start("hold", &m, "posix:r:25:1", &t.w.dir.path);
    let o2 = Outsider::start("hold", &m, "flock:sh", &t.w.dir.path);
    expected.push(format!("POSIX READ {} m 25 25", o1.pid));
    expected.push(format!("FLOCK READ {} m 0 EOF", o2.pid));
    assert_locks("before the dump", &fs_, &expected);
    let before = t.snapshot();
    t.dump(&before, &["--external-locks"]);
    assert_locks("after the dump (only the outsiders' locks)", &fs_, &expected[6..]);
    t.restore(&before);
    assert_locks("after the restore", &fs_, &expected);
    t.assert_same_procs(&before);
    t.go(&["parent", "child"]);
    drop((o1, o2));
}
