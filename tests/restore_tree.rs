//! Process trees: `crust dump -t ROOT` freezes, saves and kills ROOT and all its descendants;
//! `crust restore` recreates the tree with the same pids, parent/child links, sessions and
//! process groups, shared open file descriptions, pipes with their unread bytes and sizes,
//! and zombies with their exit status and name.
//!
//! Each test starts a real tree, dumps it, checks every process is gone, restores it, and
//! checks it from /proc (pids, ppids, pgids, sids, comm, states, the full per-process
//! snapshot of tests/common, and which fds share an open file description or an inode,
//! through kcmp) and from inside (the workloads tests/workloads/tree_*.c check themselves
//! and each other and print PASS/FAIL per role).
//!
//! Process ownership: a `Tree` holds a pidfd for every process the test started or restored
//! (the root and the descendants found under it, each checked to be the child of a process
//! already held). Cleanup kills through those pidfds, never by a bare pid, and reaps with
//! waitid(P_PIDFD): no pid that was reused by someone else can be touched.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// /proc and pidfd helpers
// ---------------------------------------------------------------------------------

/// A wait status as `Exit`.
fn decode_status(st: i64) -> Exit {
    let st = st as i32;
    if st & 0x7f == 0 { Exit::Code((st >> 8) & 0xff) } else { Exit::Signal(st & 0x7f) }
}

/// kcmp(KCMP_FILE): do these two fds share one open file description?
fn same_description(p1: i32, f1: i32, p2: i32, f2: i32) -> bool {
    // SAFETY: kcmp takes integers only and touches no memory of ours.
    let r = unsafe {
        libc::syscall(libc::SYS_kcmp, p1, p2, 0 /* KCMP_FILE */, f1, f2)
    };
    r == 0
}

fn fds_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.flatten().filter_map(|d| d.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn fd_link(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default()
}

type FdSet = Vec<(i32, i32)>;

/// Partitions of all (pid, fd) of `pids`: by open file description (kcmp) and by inode.
fn fd_structure(pids: &[i32]) -> (BTreeSet<FdSet>, BTreeSet<FdSet>) {
    let mut by_inode: BTreeMap<(u64, u64), FdSet> = BTreeMap::new();
    for &pid in pids {
        for fd in fds_of(pid) {
            if let Ok(m) = fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
                by_inode.entry((m.dev(), m.ino())).or_default().push((pid, fd));
            }
        }
    }
    let mut descriptions = BTreeSet::new();
    for group in by_inode.values() {
        let mut classes: Vec<FdSet> = Vec::new();
        for &(pid, fd) in group {
            match classes.iter_mut().find(|c| same_description(c[0].0, c[0].1, pid, fd)) {
                Some(c) => c.push((pid, fd)),
                None => classes.push(vec![(pid, fd)]),
            }
        }
        descriptions.extend(classes);
    }
    (descriptions, by_inode.into_values().collect())
}

/// role -> pid, from "READY <role> pid=N ..." lines.
fn role_pids(status: &str) -> BTreeMap<String, i32> {
    status
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "READY").then_some(())?;
            let role = it.next()?.to_string();
            let pid = ready_field(l, "pid")?.parse().ok()?;
            Some((role, pid))
        })
        .collect()
}

/// Field `key=` of the READY line of `role`.
fn role_field(status: &str, role: &str, key: &str) -> String {
    let prefix = format!("READY {role} ");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no READY line for {role}:\n{status}"));
    ready_field(line, key).unwrap_or_else(|| panic!("READY line of {role} lacks {key}=: {line}"))
}

// ---------------------------------------------------------------------------------
// A tree under test
// ---------------------------------------------------------------------------------

/// Everything compared between the tree before the dump and after the restore.
struct TreeSnap {
    root: i32,
    info: BTreeMap<i32, ProcInfo>,
    /// Full /proc snapshot of each live process.
    procs: BTreeMap<i32, ProcSnapshot>,
    exes: BTreeMap<i32, PathBuf>,
    descriptions: BTreeSet<FdSet>,
    inodes: BTreeSet<FdSet>,
}

impl TreeSnap {
    fn pids(&self) -> BTreeSet<i32> {
        self.info.keys().copied().collect()
    }

    fn describe(&self) -> String {
        let mut s = format!("  (root {})\n", self.root);
        for (pid, i) in &self.info {
            s.push_str(&format!(
                "  pid {pid} ppid {} pgid {} sid {} state {} comm {:?} exit_code {}\n",
                i.ppid, i.pgid, i.sid, i.state, i.comm, i.exit_code
            ));
        }
        s
    }
}

struct Tree {
    w: Workload,
    /// pidfds of the processes this test started or restored, by pid.
    pidfds: BTreeMap<i32, OwnedFd>,
}

impl Tree {
    fn new(w: Workload) -> Tree {
        let mut t = Tree { w, pidfds: BTreeMap::new() };
        t.adopt();
        t
    }

    /// A tests/workloads program, once its parent is READY ("READY parent ...").
    fn spawn(name: &str, args: &[&str]) -> Tree {
        let w = Workload::spawn(name, args);
        w.wait_status_line("READY parent ", READY_TIMEOUT);
        Tree::new(w)
    }

    fn root(&self) -> i32 {
        self.w.pid
    }

    /// Finds the processes of the tree now (root first, breadth first) and holds a pidfd for
    /// each: the root is our child; a descendant is held only if, once its pidfd is open, it
    /// is still the child of a process already held.
    fn adopt(&mut self) -> Vec<i32> {
        adopt_tree(self.root(), &mut self.pidfds)
    }

    fn snapshot(&mut self) -> TreeSnap {
        let pids = self.adopt();
        let mut info = BTreeMap::new();
        let mut procs = BTreeMap::new();
        let mut exes = BTreeMap::new();
        for &pid in &pids {
            let Some(i) = proc_info(pid) else { continue };
            if i.state != 'Z' {
                procs.insert(pid, ProcSnapshot::take(pid));
                if let Ok(e) = fs::read_link(format!("/proc/{pid}/exe")) {
                    exes.insert(pid, e);
                }
            }
            info.insert(pid, i);
        }
        let (descriptions, inodes) = fd_structure(&pids);
        TreeSnap { root: self.root(), info, procs, exes, descriptions, inodes }
    }

    /// `crust dump` of the root (must succeed), then every process of `before` must end:
    /// the root is reaped by the harness (SIGKILL), the others become our children (we are
    /// a subreaper) and are reaped here: live ones must have been SIGKILLed, zombies keep
    /// the status they had.
    #[track_caller]
    fn dump(&mut self, before: &TreeSnap) -> CrustOutput {
        let out = self.w.dump();
        self.reap_dumped(before, &out);
        out
    }

    #[track_caller]
    fn reap_dumped(&mut self, before: &TreeSnap, out: &CrustOutput) {
        let root = self.root();
        let mut problems = Vec::new();
        let deadline = Instant::now() + GONE_TIMEOUT;
        let mut left: BTreeSet<i32> = before.pids().into_iter().filter(|p| *p != root).collect();
        while !left.is_empty() {
            for pid in left.clone() {
                let Some(fd) = self.pidfds.get(&pid) else {
                    left.remove(&pid);
                    continue;
                };
                if let Some(e) = pidfd_try_reap(fd) {
                    let was = &before.info[&pid];
                    let expected = if was.state == 'Z' { decode_status(was.exit_code) } else { Exit::Signal(libc::SIGKILL) };
                    if e != expected {
                        problems.push(format!("pid {pid} ({}) ended with {e} after the dump, expected {expected}", was.comm));
                    }
                    left.remove(&pid);
                } else if pidfd_reaped(fd) {
                    left.remove(&pid);
                }
            }
            if Instant::now() > deadline {
                for pid in &left {
                    problems.push(format!("pid {pid} still exists {GONE_TIMEOUT:?} after a successful dump: {:?}", proc_info(*pid)));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.pidfds.clear();
        for pid in before.pids() {
            if pid_exists(pid) && proc_info(pid).map(|i| i.state) != Some('Z') {
                // (a zombie here would be a process of someone else that reused the pid)
                problems.push(format!("pid {pid} exists after the dump: {:?}", proc_info(pid)));
            }
        }
        assert!(
            problems.is_empty(),
            "after the dump of the tree of {root}:\n  {}\ntree before the dump:\n{}{out}",
            problems.join("\n  "),
            before.describe()
        );
    }

    /// `crust restore -d` (must succeed); waits until every process of `before` is back:
    /// live processes running their program again, untraced, crust unmapped; zombies zombies.
    #[track_caller]
    fn restore(&mut self, before: &TreeSnap) -> CrustOutput {
        let out = self.w.restore_detached();
        self.pidfds.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending: Vec<String> = before
                .info
                .iter()
                .filter_map(|(&pid, was)| {
                    let now = proc_info(pid);
                    let ok = match &now {
                        None => false,
                        Some(i) if was.state == 'Z' => i.state == 'Z',
                        Some(i) => {
                            is_live_state(i.state)
                                && proc_status_field(pid, "TracerPid").as_deref() == Some("0")
                                && fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == before.exes.get(&pid)
                                && fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| !m.contains(crust_bin())).unwrap_or(false)
                        }
                    };
                    (!ok).then(|| format!("pid {pid} ({}): {:?}, TracerPid {:?}", was.comm, now, proc_status_field(pid, "TracerPid")))
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "10 s after crust restore -d, these processes of the tree are not back as they were:\n  {}\ntree before the dump:\n{}{out}",
                    pending.join("\n  "),
                    before.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.adopt();
        out
    }

    /// dump, then restore (both printed), then what differs between `before` and the
    /// restored tree: (the restored tree, the differences).
    #[track_caller]
    fn dump_restore_compare(&mut self, before: &TreeSnap) -> (TreeSnap, Vec<String>) {
        let dump = self.dump(before);
        eprintln!("{dump}");
        let restore = self.restore(before);
        eprintln!("{restore}");
        let after = self.snapshot();
        let problems = compare(before, &after, &[]);
        (after, problems)
    }

    /// Kills every process held (through its pidfd) and reaps those that are our children.
    fn kill_all(&mut self) {
        for fd in self.pidfds.values() {
            let _ = pidfd_signal(fd, libc::SIGKILL);
        }
        let root = self.root();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for (&pid, fd) in &self.pidfds {
                if pid == root {
                    continue;
                }
                let _ = pidfd_try_reap(fd);
            }
            // the root through the harness, which keeps its own books
            if let Some(fd) = self.pidfds.get(&root)
                && pidfd_exited(fd)
                && !pidfd_reaped(fd)
                && is_our_child(root)
            {
                let _ = self.w.reap(Duration::from_millis(100));
            }
            let all_done = self.pidfds.values().all(|fd| pidfd_exited(fd) && (pidfd_reaped(fd) || !is_zombie_of_ours(fd)));
            if all_done || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.pidfds.clear();
    }

    /// After the root exited: every process of the tree must be gone (reaped by its parent).
    fn wait_all_reaped(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left: Vec<i32> = self.pidfds.iter().filter(|(_, fd)| !pidfd_reaped(fd)).map(|(p, _)| *p).collect();
            if left.is_empty() {
                return Vec::new();
            }
            if Instant::now() > deadline {
                return left
                    .iter()
                    .map(|p| format!("pid {p} still exists {timeout:?} after the root exited: {:?}", proc_info(*p)))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill_all();
    }
}

// ---------------------------------------------------------------------------------
// Comparisons and verdicts
// ---------------------------------------------------------------------------------

/// Differences between the tree before the dump and after the restore.
fn compare(before: &TreeSnap, after: &TreeSnap, ignore: &[&str]) -> Vec<String> {
    let mut p = Vec::new();
    if before.pids() != after.pids() {
        p.push(format!("the restored tree has pids {:?}, the dumped one had {:?}", after.pids(), before.pids()));
    }
    for (pid, b) in &before.info {
        let Some(a) = after.info.get(pid) else { continue };
        let mut d = Vec::new();
        if b.ppid != a.ppid {
            d.push(format!("ppid {} -> {}", b.ppid, a.ppid));
        }
        if b.pgid != a.pgid {
            d.push(format!("pgid {} -> {}", b.pgid, a.pgid));
        }
        if b.sid != a.sid {
            d.push(format!("sid {} -> {}", b.sid, a.sid));
        }
        if b.comm != a.comm {
            d.push(format!("comm {:?} -> {:?}", b.comm, a.comm));
        }
        if (b.state == 'Z') != (a.state == 'Z') || !(a.state == 'Z' || is_live_state(a.state)) {
            d.push(format!("state {} -> {}", b.state, a.state));
        }
        if b.exit_code != a.exit_code {
            d.push(format!("exit_code (wait status) {:#x} -> {:#x}", b.exit_code, a.exit_code));
        }
        if !d.is_empty() {
            p.push(format!("pid {pid} ({}): {}", b.comm, d.join(", ")));
        }
    }
    for (pid, b) in &before.procs {
        if let Some(a) = after.procs.get(pid) {
            // VMAs that became one are reported as such (still a difference), instead of
            // as a list of vanished and new ranges.
            let merges = merged_vmas(b, a);
            let merged_keys: BTreeSet<String> = merges
                .iter()
                .flat_map(|(whole, parts)| std::iter::once(whole).chain(parts.iter()))
                .flat_map(|r| [format!("maps:{r}:"), format!("vmflags:{r}:")])
                .collect();
            for (whole, parts) in &merges {
                p.push(format!(
                    "pid {pid} /proc maps: {} adjacent VMAs {} ({} {}) are one VMA {whole} after the restore",
                    parts.len(),
                    parts.join(" + "),
                    b.entries.get(&format!("maps:{}", parts[0])).map(|s| s.trim()).unwrap_or(""),
                    b.entries.get(&format!("vmflags:{}", parts[0])).map(|s| s.as_str()).unwrap_or(""),
                ));
            }
            for d in b.diff(a, ignore) {
                if !merged_keys.iter().any(|k| d.starts_with(k.as_str())) {
                    p.push(format!("pid {pid} /proc: {d}"));
                }
            }
        }
    }
    for (what, b, a) in
        [("open file description (kcmp)", &before.descriptions, &after.descriptions), ("inode", &before.inodes, &after.inodes)]
    {
        for set in b.difference(a) {
            p.push(format!("fds sharing one {what} before the dump, not after: {}", show_fds(set)));
        }
        for set in a.difference(b) {
            p.push(format!("fds sharing one {what} after the restore, not before: {}", show_fds(set)));
        }
    }
    p
}

fn map_ranges(s: &ProcSnapshot) -> BTreeMap<(u64, u64), String> {
    s.entries
        .iter()
        .filter_map(|(k, v)| {
            let r = k.strip_prefix("maps:")?;
            let (a, b) = r.split_once('-')?;
            Some(((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?), v.clone()))
        })
        .collect()
}

/// Ranges only in `after` that are exactly tiled by several ranges only in `before`, with
/// the same protection, offset and backing: (merged range, the ranges it was).
fn merged_vmas(before: &ProcSnapshot, after: &ProcSnapshot) -> Vec<(String, Vec<String>)> {
    let (b, a) = (map_ranges(before), map_ranges(after));
    let fmt = |(s, e): (u64, u64)| format!("{s:08x}-{e:08x}");
    let mut out = Vec::new();
    for (&(start, end), v) in a.iter().filter(|(r, _)| !b.contains_key(*r)) {
        let parts: Vec<(u64, u64)> = b.keys().copied().filter(|r| !a.contains_key(r) && r.0 >= start && r.1 <= end).collect();
        let tiles = parts.len() > 1
            && parts[0].0 == start
            && parts.last().unwrap().1 == end
            && parts.windows(2).all(|w| w[0].1 == w[1].0)
            && parts.iter().all(|r| &b[r] == v);
        if tiles {
            // keys in the snapshot are lowercase hex, as in /proc
            out.push((fmt((start, end)), parts.into_iter().map(fmt).collect()));
        }
    }
    out
}

fn show_fds(set: &FdSet) -> String {
    set.iter().map(|(p, f)| format!("{p}:{f}={}", fd_link(*p, *f))).collect::<Vec<_>>().join(" ")
}

/// The workloads' own verdict: the root exited 0, a PASS line from each role, no FAIL.
fn verdict(r: &GoResult, roles: &[&str]) -> Vec<String> {
    let mut p = Vec::new();
    if r.exit != Exit::Code(0) {
        p.push(format!("the root ended with {}", r.exit));
    }
    for l in r.status_text.lines().filter(|l| l.starts_with("FAIL")) {
        p.push(format!("workload: {l}"));
    }
    for role in roles {
        let prefix = format!("PASS {role} ");
        if !r.status_text.lines().any(|l| l.starts_with(&prefix)) {
            p.push(format!("no PASS line from {role}"));
        }
    }
    p
}

#[track_caller]
fn assert_no_problems(what: &str, problems: &[String], t: &Tree, extra: &str) {
    if problems.is_empty() {
        return;
    }
    panic!(
        "{what}: {} problems:\n  {}\n--- status file ---\n{}--- workload log (tail) ---\n{}\n{extra}",
        problems.len(),
        problems.join("\n  "),
        t.w.status_text(),
        {
            let l = t.w.log_text();
            let start = l.len().saturating_sub(3000);
            l.get(start..).unwrap_or(&l).to_string()
        }
    );
}

/// Reads the counter at `addr` in each pid; after the restore it must not have gone back
/// and must keep increasing.
fn counters(pids: &BTreeMap<String, i32>, addr: u64) -> BTreeMap<String, u64> {
    pids.iter().map(|(r, p)| (r.clone(), read_mem_u64(*p, addr))).collect()
}

/// The tests live in a module so that `cargo nextest run restore_tree` selects them by name.
mod restore_tree {
    use super::*;

    // ---------------------------------------------------------------------------------
    // 1. parent, two children, a grandchild
    // ---------------------------------------------------------------------------------

    /// tree_family: parent ─┬─ child1 ── grandchild, └─ child2. Dump kills all four; restore
    /// brings back the same pids with the same ppids, pgids and sids, identical /proc, memory
    /// patterns and counters; after .go each process checks itself and the parents reap their
    /// children with waitpid(pid): they are still their children and exited 0.
    #[test]
    fn family_tree_comes_back_with_pids_links_and_parents_reap_their_children() {
        let mut t = Tree::spawn("tree_family", &[]);
        let status = t.w.status_text();
        let roles = role_pids(&status);
        let root = t.root();
        assert_eq!(roles.get("parent"), Some(&root), "READY parent names another pid:\n{status}");
        let addr = parse_hex(&role_field(&status, "parent", "counter"));
        let before = t.snapshot();
        let expected: BTreeMap<i32, i32> =
            [(roles["child1"], root), (roles["child2"], root), (roles["grandchild"], roles["child1"])].into_iter().collect();
        for (pid, ppid) in &expected {
            assert_eq!(before.info.get(pid).map(|i| i.ppid), Some(*ppid), "test setup: tree is not as expected:\n{}", before.describe());
        }
        assert_eq!(before.pids().len(), 4, "test setup: expected 4 processes:\n{}", before.describe());
        let counters_before = counters(&roles, addr);

        let (_, mut problems) = t.dump_restore_compare(&before);
        let counters_restored = counters(&roles, addr);
        std::thread::sleep(Duration::from_millis(200));
        let counters_later = counters(&roles, addr);
        for (role, b) in &counters_before {
            let (r, l) = (counters_restored[role], counters_later[role]);
            if r < *b {
                problems.push(format!("{role}: counter went back from {b} to {r} across the dump"));
            }
            if l <= r {
                problems.push(format!("{role}: counter does not advance after the restore ({r} then {l} 200 ms later)"));
            }
        }
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "child1", "child2", "grandchild"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("family tree after restore", &problems, &t, &format!("tree before the dump:\n{}", before.describe()));
    }

    // ---------------------------------------------------------------------------------
    // 2. a shell pipeline with a line in flight
    // ---------------------------------------------------------------------------------

    const PIPELINE: &str = "(echo hello-in-flight; sleep 1000) | (sleep 3; cat)";

    /// `sh -c '(echo hello-in-flight; sleep 1000) | (sleep 3; cat)'` in a session of its own,
    /// stdout to the log. Dumped 0.5 s after start, while "hello-in-flight" sits in the pipe
    /// (checked with FIONREAD on a pidfd_getfd copy of the reader's end); restored: same pids,
    /// ppids, pgid/sid; the restored `sleep 3` finishes, its restored parent reaps it and
    /// becomes cat, and the log ends up with exactly one "hello-in-flight" line.
    #[test]
    fn shell_pipeline_keeps_the_line_in_its_pipe() {
        let w = Workload::spawn_program_with("pipeline", "sh", &["-c", PIPELINE], |cmd| unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        });
        let started = Instant::now();
        let mut t = Tree::new(w);
        let root = t.root();
        // sh ─┬─ sleep 1000 (the left subshell, exec'd)
        //     └─ sh (right subshell) ── sleep 3
        let mut shape = None;
        wait_until("the pipeline to be set up (two sleeps in nanosleep)", Duration::from_secs(5), || {
            let pids = t.adopt();
            let sleeps: Vec<i32> = pids.iter().copied().filter(|p| proc_info(*p).map(|i| i.comm == "sleep").unwrap_or(false)).collect();
            let ok = pids.len() == 4
                && sleeps.len() == 2
                && sleeps.iter().all(|p| proc_state(*p) == Some('S') && blocked_syscall(*p) == Some(SYS_CLOCK_NANOSLEEP));
            if ok {
                shape = Some(pids);
            }
            ok
        });
        let pids = shape.unwrap();
        let reader =
            *pids.iter().find(|p| **p != root && proc_info(**p).map(|i| i.comm == "sh").unwrap_or(false)).expect("the right subshell");
        let sleep3 = children_of(reader)[0];
        let writer = *pids.iter().find(|p| **p != root && **p != reader && **p != sleep3).unwrap();
        if let Some(left) = Duration::from_millis(500).checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
        // the line is in the pipe, unread
        let pidfd = pidfd_open(reader).unwrap();
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), 0, 0) };
        assert!(copy >= 0, "pidfd_getfd of the reader's stdin: {}", std::io::Error::last_os_error());
        let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
        let mut queued: libc::c_int = -1;
        unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut queued) };
        drop(copy);
        assert_eq!(queued, "hello-in-flight\n".len() as i32, "test setup: the pipe should hold the unread line");
        assert!(!t.w.log_text().contains("hello-in-flight"), "test setup: cat already printed the line");
        let before = t.snapshot();
        assert!(
            before.info.values().all(|i| i.sid == root && i.pgid == root),
            "test setup: the pipeline should be in its own session and group:\n{}",
            before.describe()
        );

        let dump = t.dump(&before);
        eprintln!("{dump}");
        let log_after_dump = t.w.log_text();
        let show = crust(["show", "-D", &t.w.image_dir.to_string_lossy()]);
        let restore = t.restore(&before);
        eprintln!("{restore}");
        let restored_at = Instant::now();
        let after = t.snapshot();
        let mut problems = compare(&before, &after, &[]);
        if log_after_dump.contains("hello-in-flight") {
            problems.push("the line reached the log between the dump and the restore".into());
        }

        // cat prints the line once `sleep 3` has slept the rest of its time
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.w.log_text().contains("hello-in-flight") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let appeared = restored_at.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let log = t.w.log_text();
        let n = log.lines().filter(|l| *l == "hello-in-flight").count();
        if n != 1 {
            problems.push(format!(
                "the log has {n} lines \"hello-in-flight\" (waited {appeared:?} after the restore, then 1 s), expected exactly 1:\n{log}"
            ));
        }
        // `sleep 3` ended and was reaped by the restored subshell, which then exec'd cat
        if pid_exists(sleep3) && proc_info(sleep3).map(|i| i.ppid) == Some(reader) {
            problems.push(format!("the restored `sleep 3` (pid {sleep3}) is still there: {:?}", proc_info(sleep3)));
        }
        let reader_now = proc_info(reader);
        if reader_now.as_ref().map(|i| i.comm.as_str()) != Some("cat")
            || !reader_now.as_ref().map(|i| is_live_state(i.state)).unwrap_or(false)
        {
            problems.push(format!("the right subshell (pid {reader}) should now be cat, reading: {reader_now:?}"));
        }
        for pid in [root, writer] {
            if !proc_info(pid).map(|i| is_live_state(i.state)).unwrap_or(false) {
                problems.push(format!("pid {pid} should still run: {:?}", proc_info(pid)));
            }
        }
        eprintln!("hello-in-flight appeared {appeared:?} after the restore");
        // then kill the pipeline, by pid(fd)
        t.kill_all();
        for pid in before.pids() {
            if proc_info(pid).map(|i| i.ppid == std::process::id() as i32).unwrap_or(false) {
                problems.push(format!("pid {pid} still our child after kill_all: {:?}", proc_info(pid)));
            }
        }
        assert_no_problems(
            "shell pipeline after restore",
            &problems,
            &t,
            &format!("tree before the dump:\n{}--- crust show ---\n{}", before.describe(), show.stdout),
        );
    }

    // ---------------------------------------------------------------------------------
    // 3. open file descriptions shared across fork
    // ---------------------------------------------------------------------------------

    /// tree_sharedfd: fd S opened by the parent before fork (offset moved by the child before
    /// the dump) is one description in both after restore (kcmp; and from inside: a seek or
    /// F_SETFL O_NONBLOCK / O_APPEND by one is seen by the other), the O_APPEND fd A shared
    /// too, while the fds each opened on the same file themselves stay independent.
    #[test]
    fn descriptions_shared_across_fork_stay_shared_and_independent_ones_stay_independent() {
        let mut t = Tree::spawn("tree_sharedfd", &[]);
        let status = t.w.status_text();
        let roles = role_pids(&status);
        let (parent, child) = (roles["parent"], roles["child"]);
        assert_eq!(parent, t.root());
        let fd = |role: &str, key: &str| -> i32 { role_field(&status, role, key).parse().unwrap() };
        let (s, a, ip, ic) = (fd("parent", "s"), fd("parent", "a"), fd("parent", "ip"), fd("child", "ic"));
        assert_eq!((fd("child", "s"), fd("child", "a")), (s, a));
        let before = t.snapshot();
        let relations = |when: &str| -> Vec<String> {
            let mut p = Vec::new();
            if !same_description(parent, s, child, s) {
                p.push(format!("{when}: fd {s} of parent {parent} and child {child} are not one open file description"));
            }
            if !same_description(parent, a, child, a) {
                p.push(format!("{when}: fd {a} (O_APPEND) of parent and child are not one open file description"));
            }
            if same_description(parent, ip, child, ic) {
                p.push(format!("{when}: the parent's own fd {ip} and the child's own fd {ic} share a description"));
            }
            if same_description(parent, ip, parent, s) || same_description(child, ic, child, s) {
                p.push(format!("{when}: an independently opened fd shares the description of fd {s}"));
            }
            p
        };
        let setup = relations("before the dump");
        assert!(setup.is_empty(), "test setup: {setup:?}");

        let (_, mut problems) = t.dump_restore_compare(&before);
        problems.extend(relations("after the restore"));
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "child"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("shared descriptions after restore", &problems, &t, "");
    }

    // ---------------------------------------------------------------------------------
    // 4. pipes between processes, with data in flight and a changed size
    // ---------------------------------------------------------------------------------

    /// tree_pipes: P1 (parent -> child, 5000 bytes unread, default size) and P2 (child ->
    /// parent, 100000 bytes unread, F_SETPIPE_SZ 256 KiB, reader O_NONBLOCK) come back with
    /// their bytes, sizes and flags, each end only in the process that had it (the grandchild
    /// holds none); after .go each reader gets exactly the bytes and then EOF when the writer
    /// closes, which it cannot if any process kept a stray write end.
    #[test]
    fn pipes_between_processes_keep_data_size_and_eof() {
        let mut t = Tree::spawn("tree_pipes", &[]);
        let status = t.w.status_text();
        let roles = role_pids(&status);
        let (parent, child, grandchild) = (roles["parent"], roles["child"], roles["grandchild"]);
        let fd = |role: &str, key: &str| -> i32 { role_field(&status, role, key).parse().unwrap() };
        let before = t.snapshot();
        let expected_pipes: BTreeSet<FdSet> = [
            vec![(parent, fd("parent", "p1w")), (child, fd("child", "p1r"))],
            vec![(parent, fd("parent", "p2r")), (child, fd("child", "p2w"))],
        ]
        .into_iter()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
        let pipes = |snap: &TreeSnap| -> BTreeSet<FdSet> {
            snap.inodes.iter().filter(|set| fd_link(set[0].0, set[0].1).starts_with("pipe:")).cloned().collect()
        };
        assert_eq!(pipes(&before), expected_pipes, "test setup: pipes are not held as expected");
        assert!(fds_of(grandchild).iter().all(|f| !fd_link(grandchild, *f).starts_with("pipe:")));

        let dump = t.dump(&before);
        eprintln!("{dump}");
        let show = crust(["show", "-D", &t.w.image_dir.to_string_lossy()]);
        t.restore(&before);
        let after = t.snapshot();
        let mut problems = compare(&before, &after, &[]);
        let got = pipes(&after);
        if got != expected_pipes {
            problems.push(format!("pipe ends after restore: {got:?}, expected {expected_pipes:?} (nothing else may hold one)"));
        }
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "child", "grandchild"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        let show_files =
            serde_json::from_str::<serde_json::Value>(&show.stdout).map(|v| v["open_files"].to_string()).unwrap_or_else(|_| show.text());
        assert_no_problems(
            "pipes after restore",
            &problems,
            &t,
            &format!("--- crust show: open_files ---\n{}", truncate_str(&show_files, 3000)),
        );
    }

    fn truncate_str(s: &str, n: usize) -> &str {
        if s.len() <= n {
            return s;
        }
        let mut i = n;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        &s[..i]
    }

    // ---------------------------------------------------------------------------------
    // 5. zombies
    // ---------------------------------------------------------------------------------

    /// tree_zombies: the parent has two unreaped children, one exited with code 7 ("zexit7"),
    /// one killed by SIGTERM ("zterm"), and a live child that has its own zombie ("zthree",
    /// code 3) with SIGCHLD blocked and pending. After restore /proc shows the zombies in
    /// state Z with their names, parents and wait statuses; the parent's SIGCHLD handler did
    /// not run again and nothing is pending in it, the pending SIGCHLD of the other is kept;
    /// the parents reap exactly exit code 7, SIGTERM and exit code 3.
    #[test]
    fn zombies_come_back_as_zombies_with_status_and_name() {
        let mut t = Tree::spawn("tree_zombies", &[]);
        let status = t.w.status_text();
        let root = t.root();
        let pid_of = |role: &str, key: &str| -> i32 { role_field(&status, role, key).parse().unwrap() };
        let (z7, zterm, blocker, zb) =
            (pid_of("parent", "z7"), pid_of("parent", "zterm"), pid_of("parent", "blocker"), pid_of("blocker", "zb"));
        let before = t.snapshot();
        let expect_zombie = |snap: &TreeSnap, pid: i32, comm: &str, ppid: i32, st: i64, when: &str| -> Vec<String> {
            match snap.info.get(&pid) {
                Some(i) if i.state == 'Z' && i.comm == comm && i.ppid == ppid && i.exit_code == st => vec![],
                other => vec![format!(
                    "{when}: pid {pid} should be a zombie named {comm:?}, child of {ppid}, wait status {st:#x}; /proc says {other:?}"
                )],
            }
        };
        let zombies = |snap: &TreeSnap, when: &str| -> Vec<String> {
            let mut p = expect_zombie(snap, z7, "zexit7", root, 7 << 8, when);
            p.extend(expect_zombie(snap, zterm, "zterm", root, libc::SIGTERM as i64, when));
            p.extend(expect_zombie(snap, zb, "zthree", blocker, 3 << 8, when));
            p
        };
        let setup = zombies(&before, "before the dump");
        assert!(setup.is_empty(), "test setup: {setup:?}\n{}", before.describe());
        let sigchld_bit = 1u64 << (libc::SIGCHLD - 1);
        let pending = |pid: i32| -> u64 {
            proc_status_field(pid, "ShdPnd").map(|v| parse_hex(&v)).unwrap_or(0)
                | proc_status_field(pid, "SigPnd").map(|v| parse_hex(&v)).unwrap_or(0)
        };
        assert_eq!(pending(root) & sigchld_bit, 0, "test setup: SIGCHLD pending in the parent");
        assert_ne!(pending(blocker) & sigchld_bit, 0, "test setup: SIGCHLD not pending in the blocker");

        let (after, mut problems) = t.dump_restore_compare(&before);
        problems.extend(zombies(&after, "after the restore"));
        if pending(root) & sigchld_bit != 0 {
            problems.push(format!("after the restore SIGCHLD is pending in the parent {root} (it was not before the dump)"));
        }
        if pending(blocker) & sigchld_bit == 0 {
            problems.push(format!("after the restore the pending SIGCHLD of {blocker} is gone"));
        }
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "blocker"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("zombies after restore", &problems, &t, &format!("tree before the dump:\n{}", before.describe()));
    }

    // ---------------------------------------------------------------------------------
    // 6. sessions and process groups
    // ---------------------------------------------------------------------------------

    /// tree_session: a child that called setsid() with a grandchild in its session, a child
    /// that leads its own group and a sibling that joined it. After restore the same pids lead
    /// the same session and groups, members are where they were, and from inside: group
    /// signals reach exactly the members, setsid() by a leader still fails with EPERM, the
    /// joiner can setpgid to the group again.
    #[test]
    fn sessions_and_process_groups_come_back() {
        let mut t = Tree::spawn("tree_session", &[]);
        let status = t.w.status_text();
        let roles = role_pids(&status);
        let root = t.root();
        let (leader, member, grpleader, joiner) = (roles["leader"], roles["member"], roles["grpleader"], roles["joiner"]);
        let before = t.snapshot();
        let expected = |snap: &TreeSnap, when: &str| -> Vec<String> {
            let i = |pid: i32| snap.info.get(&pid).cloned();
            let root_i = i(root).expect("root");
            let mut p = Vec::new();
            let mut want = |pid: i32, what: &str, ppid: i32, pgid: i32, sid: i32| match i(pid) {
                Some(x) if x.ppid == ppid && x.pgid == pgid && x.sid == sid => {}
                other => p.push(format!("{when}: {what} {pid} should have ppid {ppid} pgid {pgid} sid {sid}: {other:?}")),
            };
            want(leader, "leader", root, leader, leader);
            want(member, "member", leader, leader, leader);
            want(grpleader, "grpleader", root, grpleader, root_i.sid);
            want(joiner, "joiner", root, grpleader, root_i.sid);
            p
        };
        let setup = expected(&before, "before the dump");
        assert!(setup.is_empty(), "test setup: {setup:?}");

        let (after, mut problems) = t.dump_restore_compare(&before);
        problems.extend(expected(&after, "after the restore"));
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "leader", "member", "grpleader", "joiner"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("sessions and groups after restore", &problems, &t, &format!("tree before the dump:\n{}", before.describe()));
    }

    // ---------------------------------------------------------------------------------
    // 7. a fork loop racing the freeze
    // ---------------------------------------------------------------------------------

    /// tree_forkloop forks children that exit at once, in a tight loop, and reaps each. Three
    /// times: dump at a different moment; either the dump succeeds (every process of the
    /// image is gone, the restore brings back the root, its loop goes on and all its waitpid
    /// results stay right) or it fails cleanly (the root still runs, untraced, and its loop
    /// goes on). Either way the workload PASSes.
    #[test]
    fn fork_loop_racing_the_freeze_dumps_consistently_or_fails_cleanly() {
        let mut outcomes = Vec::new();
        for (round, delay_ms) in [(1, 20u64), (2, 90), (3, 170)] {
            let w = Workload::spawn("tree_forkloop", &[]);
            let addr = parse_hex(&w.ready_field("counter"));
            let mut t = Tree::new(w);
            let root = t.root();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let c0 = read_mem_u64(root, addr);
            let out = t.w.dump_with(&[]);
            eprintln!("round {round}: {out}");
            let mut problems = Vec::new();
            if out.success() {
                // the pids of the image, from crust show
                let show = crust(["show", "-D", &t.w.image_dir.to_string_lossy()]);
                let json: serde_json::Value = serde_json::from_str(&show.stdout).unwrap_or_else(|e| panic!("crust show: {e}\n{show}"));
                let members: Vec<(i32, i32, bool, i64)> = json["inventory"]["processes"]
                    .as_array()
                    .expect("inventory.processes")
                    .iter()
                    .map(|p| {
                        (
                            p["pid"].as_i64().unwrap() as i32,
                            p["ppid"].as_i64().unwrap_or(0) as i32,
                            p["zombie"].as_bool().unwrap_or(false),
                            p["exit_status"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect();
                eprintln!("round {round}: dumped {members:?}");
                match t.w.reap(GONE_TIMEOUT) {
                    Some(Exit::Signal(libc::SIGKILL)) => {}
                    other => problems.push(format!("the dumped root ended with {other:?}, expected SIGKILL")),
                }
                for &(pid, ppid, zombie, _) in &members {
                    if pid == root {
                        continue;
                    }
                    if ppid != root {
                        problems.push(format!("image lists pid {pid} with parent {ppid}, not the root {root}"));
                    }
                    // killed or zombie children of the killed root are reparented to us
                    if !wait_gone(pid, GONE_TIMEOUT) {
                        problems
                            .push(format!("pid {pid} (zombie in the image: {zombie}) still exists after the dump: {:?}", proc_info(pid)));
                    }
                }
                if pid_exists(root) {
                    problems.push(format!("root {root} still exists after the dump"));
                }
                assert!(problems.is_empty(), "round {round}: {problems:?}\n{out}");
                let restore = t.w.restore_detached_raw();
                eprintln!("round {round}: {restore}");
                assert!(restore.success(), "round {round}: restore of the fork loop failed:\n{restore}\nimage: {members:?}");
                t.pidfds.clear();
                t.adopt();
                wait_until("the restored fork loop to run", Duration::from_secs(5), || t.w.looks_restored());
                let c1 = read_mem_u64(root, addr);
                if c1 < c0 {
                    problems.push(format!("counter went back from {c0} to {c1}"));
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while read_mem_u64(root, addr) < c1 + 300 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let c2 = read_mem_u64(root, addr);
                if c2 < c1 + 300 {
                    problems.push(format!("the restored loop does not go on: counter {c1} after restore, {c2} 5 s later"));
                }
                outcomes.push(format!("round {round}: dumped {} process(es) {members:?}, restored, loop went on", members.len()));
            } else {
                // a clean failure: still running, untraced, not stopped, loop going on
                for _ in 0..5 {
                    let st = proc_state(root);
                    if !matches!(st, Some('R' | 'S')) {
                        problems.push(format!("after the failed dump the root is in state {st:?}"));
                    }
                    if proc_status_field(root, "TracerPid").as_deref() != Some("0") {
                        problems.push(format!("after the failed dump the root is traced: {:?}", proc_status_field(root, "TracerPid")));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let c1 = read_mem_u64(root, addr);
                std::thread::sleep(Duration::from_millis(200));
                let c2 = read_mem_u64(root, addr);
                if c2 <= c1 {
                    problems.push(format!("after the failed dump the loop stands still (counter {c1}, then {c2})"));
                }
                outcomes.push(format!("round {round}: dump refused: {}", out.stderr.trim()));
            }
            let r = t.w.go();
            problems.extend(verdict(&r, &[]));
            if !r.status_text.lines().any(|l| l.starts_with("PASS")) {
                problems.push("no PASS line".into());
            }
            assert!(
                problems.is_empty(),
                "round {round} (dump {} ms after READY):\n  {}\n{out}\n--- status ---\n{}",
                delay_ms,
                problems.join("\n  "),
                r.status_text
            );
        }
        eprintln!("{}", outcomes.join("\n"));
    }

    // ---------------------------------------------------------------------------------
    // 8. refusal: a grandchild with a socket
    // ---------------------------------------------------------------------------------

    /// tree_family with a socket in the grandchild: the dump is refused, naming the
    /// grandchild's pid, the fd and "socket"; every process of the tree still runs (not
    /// stopped, not traced), /proc shows each exactly as before (no scratch mapping left, same
    /// blocked mask), and after .go all four PASS.
    #[test]
    fn socket_in_a_grandchild_refuses_the_dump_and_leaves_the_tree_running() {
        let mut t = Tree::spawn("tree_family", &["socket"]);
        let status = t.w.status_text();
        let roles = role_pids(&status);
        let grandchild = roles["grandchild"];
        let sockfd = role_field(&status, "grandchild", "sockfd");
        let before = t.snapshot();
        assert_eq!(before.pids().len(), 4, "test setup:\n{}", before.describe());
        assert!(fd_link(grandchild, sockfd.parse().unwrap()).starts_with("socket:"), "test setup: no socket");

        let out = t.w.dump_with(&[]);
        eprintln!("{out}");
        out.assert_failure();
        let text = out.text();
        let mut problems = Vec::new();
        if !has_token(&text, &grandchild.to_string()) {
            problems.push(format!("the refusal does not name the grandchild's pid {grandchild}"));
        }
        if !has_token(&text, &sockfd) {
            problems.push(format!("the refusal does not name fd {sockfd}"));
        }
        if !text.to_lowercase().contains("socket") {
            problems.push("the refusal does not say \"socket\"".into());
        }
        for _ in 0..5 {
            for &pid in before.info.keys() {
                let st = proc_state(pid);
                let tracer = proc_status_field(pid, "TracerPid");
                if !matches!(st, Some('R' | 'S')) || tracer.as_deref() != Some("0") {
                    problems.push(format!("pid {pid} after the refused dump: state {st:?}, TracerPid {tracer:?}"));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = t.snapshot();
        problems.extend(compare(&before, &after, &[]));
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "child1", "child2", "grandchild"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("tree after a refused dump", &problems, &t, &format!("{out}"));
    }

    /// Frames of `pages` pages at `addr` in `pid` (None for a page not present).
    fn frames(pid: i32, addr: u64, pages: u64) -> Vec<Option<u64>> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
        let mut buf = vec![0u8; (pages * 8) as usize];
        f.read_exact_at(&mut buf, addr / 4096 * 8).unwrap();
        buf.chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .map(|e| (e & (1 << 63) != 0).then_some(e & ((1 << 55) - 1)))
            .collect()
    }

    /// Pages of the region that parent and child map from the same frame.
    fn shared_frames(parent: i32, child: i32, addr: u64, pages: u64) -> usize {
        frames(parent, addr, pages).into_iter().zip(frames(child, addr, pages)).filter(|(a, b)| a.is_some() && a == b).count()
    }

    /// tree_sharedmem.c: a MAP_SHARED|MAP_ANONYMOUS region is one object again (the child's
    /// write after restore is seen by the parent), and private pages parent and child shared
    /// copy-on-write at dump time are shared again (same frames in both pagemaps, so memory is
    /// not doubled), while the pages each changed or dropped after fork keep their own values.
    #[test]
    fn memory_shared_across_fork_is_shared_again() {
        let mut t = Tree::spawn("tree_sharedmem", &[]);
        let status = t.w.status_text();
        let roles = role_pids(&status);
        let (parent, child) = (roles["parent"], roles["child"]);
        let cow = u64::from_str_radix(role_field(&status, "parent", "cow").trim_start_matches("0x"), 16).unwrap();
        let pages: u64 = role_field(&status, "parent", "pages").parse().unwrap();
        let shared_before = shared_frames(parent, child, cow, pages);
        // pages 0 (child wrote), 1 (child dropped), 2 (parent wrote) are not shared
        assert_eq!(shared_before, pages as usize - 3, "test setup: copy-on-write sharing before the dump");
        let before = t.snapshot();
        let dump = t.dump(&before);
        eprintln!("{dump}");
        t.restore(&before);
        let after = t.snapshot();
        let mut problems = compare(&before, &after, &[]);
        let shared_after = shared_frames(parent, child, cow, pages);
        if shared_after != shared_before {
            problems.push(format!(
                "{shared_after} of {pages} copy-on-write pages are shared by parent and child after restore, {shared_before} before"
            ));
        }
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "child"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("shared memory after restore", &problems, &t, &format!("tree before the dump:\n{}", before.describe()));
    }

    fn sysv_segment(shmid: i32) -> Option<String> {
        fs::read_to_string("/proc/sysvipc/shm")
            .unwrap()
            .lines()
            .skip(1)
            .find(|l| l.split_whitespace().nth(1) == Some(&shmid.to_string()))
            .map(str::to_owned)
    }

    /// tree_sysvshm.c: a removed SysV segment (dies with the dumped tree) is recreated with
    /// its id and contents and removed again; a kept one is attached again; both are shared by
    /// parent and child after restore (the child's writes are seen by the parent).
    #[test]
    fn sysv_shared_memory_comes_back_with_its_ids_and_contents() {
        let mut t = Tree::spawn("tree_sysvshm", &[]);
        let status = t.w.status_text();
        let a: i32 = role_field(&status, "parent", "a").parse().unwrap();
        let b: i32 = role_field(&status, "parent", "b").parse().unwrap();
        let before = t.snapshot();
        let dump = t.dump(&before);
        eprintln!("{dump}");
        assert!(sysv_segment(a).is_none(), "removed segment {a} should die with the dumped tree");
        assert!(sysv_segment(b).is_some(), "kept segment {b} should outlive the dumped tree");
        t.restore(&before);
        let after = t.snapshot();
        let mut problems = compare(&before, &after, &[]);
        for (id, removed) in [(a, true), (b, false)] {
            match sysv_segment(id) {
                None => problems.push(format!("SysV segment {id} does not exist after restore")),
                Some(line) => {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let mode = u32::from_str_radix(f[2], 8).unwrap();
                    if (mode & 0o1000 != 0) != removed || f[6] != "2" {
                        problems.push(format!("SysV segment {id} after restore: {line} (removed {removed}, 2 attachments expected)"));
                    }
                }
            }
        }
        let r = t.w.go();
        problems.extend(verdict(&r, &["parent", "child"]));
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        if let Some(line) = sysv_segment(a) {
            problems.push(format!("removed segment {a} outlived its last attachment: {line}"));
        }
        assert_no_problems("SysV shared memory after restore", &problems, &t, &format!("tree before the dump:\n{}", before.describe()));
    }

    /// A kept SysV segment that, between dump and restore, came to belong to another user (or
    /// was replaced by another user's segment under the same id) is not attached: restore
    /// attaches as root, and would hand the process a segment it never had. Refused by id and
    /// owner, nothing left; with the owner back, the same image restores.
    #[test]
    fn sysv_segment_of_another_owner_under_the_same_id_is_refused() {
        let mut t = Tree::spawn("tree_sysvshm", &[]);
        let status = t.w.status_text();
        let b: i32 = role_field(&status, "parent", "b").parse().unwrap();
        let before = t.snapshot();
        t.dump(&before);
        let seg = crust::sys::sysv::segments().unwrap().into_iter().find(|s| s.shmid == b).expect("kept segment after the dump");
        crust::sys::sysv::set_owner(b, 65534, 65534, seg.mode & 0o777).unwrap();
        let img = t.w.image_dir.to_string_lossy().into_owned();
        let out = crust(["restore", "-d", "-D", &img]);
        assert!(!out.success(), "restore attached another owner's segment:\n{out}");
        assert!(out.text().contains(&format!("segment id {b}")) && out.text().contains("another owner"), "{out}");
        for pid in before.pids() {
            assert!(wait_gone(pid, Duration::from_secs(5)), "pid {pid} of the refused restore is left");
        }
        crust::sys::sysv::set_owner(b, seg.uid, seg.gid, seg.mode & 0o777).unwrap();
        t.restore(&before);
        let r = t.w.go();
        let mut problems = verdict(&r, &["parent", "child"]);
        problems.extend(t.wait_all_reaped(Duration::from_secs(5)));
        assert_no_problems("SysV shared memory after the owner came back", &problems, &t, "");
    }
}

/// A shell forking short-lived children all the time: some child is always being created or
/// exiting (an exiting task cannot be traced). Every dump -R of twenty succeeds, each child is
/// frozen, taken as a zombie or found gone, and the shell runs on; a last dump and restore
/// bring the loop back, counting on.
#[test]
fn shell_forking_short_lived_children_dumps_every_time() {
    let script = "i=0; while :; do /bin/true; i=$((i+1)); echo $i > count.tmp; mv count.tmp count; done";
    let mut w = Workload::spawn_program("forker", "/bin/sh", &["-c", script]);
    let count = w.dir.path.join("count");
    let read = || std::fs::read_to_string(&count).ok().and_then(|c| c.trim().parse::<u64>().ok()).unwrap_or(0);
    wait_until("the loop to run", Duration::from_secs(10), || read() > 10);
    for round in 0..20 {
        let out = w.dump_with(&["-R"]);
        assert!(out.success(), "dump -R {round} failed:\n{out}");
        let _ = std::fs::remove_dir_all(&w.image_dir);
        std::fs::create_dir_all(&w.image_dir).unwrap();
    }
    let before = read();
    wait_until("the loop to go on after the dumps", Duration::from_secs(10), || read() > before + 10);
    w.dump();
    // A child that was exiting was dumped as a zombie; killed with the shell, it is this
    // test's (the subreaper's) to reap, so that its pid is free for the restore.
    for _ in 0..100 {
        match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
    w.restore_detached();
    let restored = read();
    wait_until("the restored loop to count on", Duration::from_secs(10), || read() > restored + 10);
}
