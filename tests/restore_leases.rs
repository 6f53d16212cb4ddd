//! File leases (issue 5): leases held, and leases caught in the middle of a break, come back
//! as the kernel would have kept them.
//!
//! Each test runs a real tree (tests/workloads/lease_break.c: a holder and its breakers;
//! tests/workloads/lease_active.c: leases nobody is breaking), dumps it, checks that every
//! process is gone, restores it and checks:
//! - from inside: the restored processes log F_GETLEASE, their fdinfo lease line, every lease
//!   signal they receive (number, si_fd) and the moment each breaker's open() returns
//!   (CLOCK_MONOTONIC, the same clock the test reads), and check what they can themselves;
//! - from /proc/locks: the lease and its breakers ("LEASE ACTIVE|BREAKING TYPE PID" and
//!   "-> LEASE BREAKER TYPE PID" lines on the test's file);
//! - from outside: fresh processes (tests/workloads/lease_opener.c) that open the file, and
//!   the O_RDONLY|O_NONBLOCK probe of KERNEL-NOTES that tells a breaking WRITE lease from a
//!   breaking READ one;
//! - in the image: `crust show` prints the lease's fields.
//!
//! /proc/sys/fs/lease-break-time is global: every test sets a short value through a
//! `LeaseEnv`, which first takes an flock on a fixed file in /tmp (so the tests that change
//! it never run at the same time, in this binary or another) and always puts the old value
//! back (also after a panic; and a test killed before it could is repaired by the next one,
//! from a file that keeps the original value while a test runs).
//!
//! Times are checked with margins of 0.5 s, relative to the moment of the restore: a breaker
//! must get its open() back when the remaining break time recorded in the image is over,
//! counted from the restore (the time between dump and restore does not count).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Margin for every time check.
const MARGIN: f64 = 0.5;

// ---------------------------------------------------------------------------------
// lease-break-time, serialized
// ---------------------------------------------------------------------------------

const BREAK_TIME: &str = "/proc/sys/fs/lease-break-time";
const LOCK_PATH: &str = "/tmp/crust-lease-tests.lock";
const SAVED_PATH: &str = "/tmp/crust-lease-tests.saved-break-time";

fn break_time() -> u32 {
    fs::read_to_string(BREAK_TIME).expect("read lease-break-time").trim().parse().expect("lease-break-time")
}

fn set_break_time(secs: u32) {
    fs::write(BREAK_TIME, secs.to_string()).unwrap_or_else(|e| panic!("write {BREAK_TIME}: {e}"));
}

/// Holds the lease tests' lock and a short lease-break-time; puts the old value back on drop.
struct LeaseEnv {
    _lock: fs::File,
    old: u32,
    /// The value set for the test, seconds.
    secs: u32,
}

impl LeaseEnv {
    fn new(secs: u32) -> LeaseEnv {
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_PATH).expect("open the lease tests' lock file");
        // SAFETY: flock on a descriptor we own; it blocks until the other lease test is done.
        let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock {LOCK_PATH}: {}", std::io::Error::last_os_error());
        // A test killed while it held the lock could not put the value back: do it now.
        if let Ok(saved) = fs::read_to_string(SAVED_PATH)
            && let Ok(v) = saved.trim().parse::<u32>()
        {
            set_break_time(v);
        }
        let old = break_time();
        fs::write(SAVED_PATH, old.to_string()).expect("write the saved lease-break-time");
        set_break_time(secs);
        LeaseEnv { _lock: lock, old, secs }
    }

    fn secs(&self) -> f64 {
        self.secs as f64
    }

    /// lease-break-time must be this test's value (crust raises it only for an instant).
    #[track_caller]
    fn assert_unchanged(&self) {
        assert_eq!(break_time(), self.secs, "{BREAK_TIME} was not put back by crust");
    }
}

impl Drop for LeaseEnv {
    fn drop(&mut self) {
        let _ = fs::write(BREAK_TIME, self.old.to_string());
        let _ = fs::remove_file(SAVED_PATH);
    }
}

// ---------------------------------------------------------------------------------
// Time, /proc/locks, probes
// ---------------------------------------------------------------------------------

/// CLOCK_MONOTONIC in seconds (what the workloads print).
fn mono() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn sleep_until(t: f64) {
    let d = t - mono();
    if d > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(d));
    }
}

/// "MAJ:MIN:INODE" as /proc/locks prints the file.
fn dev_ino(path: &Path) -> String {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    format!("{:02x}:{:02x}:{}", libc::major(m.dev()), libc::minor(m.dev()), m.ino())
}

/// The leases of /proc/locks on `path`: "LEASE MODE TYPE PID" for the lease, and
/// "-> LEASE BREAKER TYPE PID" for each breaker waiting behind it, in /proc/locks order.
fn lease_lines(path: &Path) -> Vec<String> {
    let di = dev_ino(path);
    let text = fs::read_to_string("/proc/locks").expect("read /proc/locks");
    let mut ours: Option<String> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((id, rest)) = line.split_once(':') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"->") {
            if ours.as_deref() == Some(id.trim()) && f.len() >= 5 && f[1] == "LEASE" {
                out.push(format!("-> {} {} {} {}", f[1], f[2], f[3], f[4]));
            }
            continue;
        }
        if f.len() >= 5 && f[0] == "LEASE" && f[4] == di {
            ours = Some(id.trim().to_string());
            out.push(format!("{} {} {} {}", f[0], f[1], f[2], f[3]));
        } else {
            ours = None;
        }
    }
    out
}

/// Waits until the leases on `path` are `want` (2 s), panics with what they are otherwise.
#[track_caller]
fn wait_lease_lines(what: &str, path: &Path, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = lease_lines(path);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: /proc/locks on {}:\n  got:      {got:?}\n  expected: {want:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// KERNEL-NOTES' probe, for a lease breaking to unlock: a third process's
/// O_RDONLY|O_NONBLOCK open succeeds against a READ lease and fails with EAGAIN against a
/// WRITE lease (it starts nothing new). Returns the lease's own type.
fn probe_breaking_type(path: &Path) -> &'static str {
    match fs::File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(_) => "READ",
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => "WRITE",
        Err(e) => panic!("probing {}: {e}", path.display()),
    }
}

/// `key=VALUE` of a line as f64.
fn field_f(line: &str, key: &str) -> f64 {
    ready_field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}

fn field_i(line: &str, key: &str) -> i64 {
    ready_field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no integer {key}= in {line:?}"))
}

/// Asserts `lo <= t <= hi`.
#[track_caller]
fn assert_between(what: &str, t: f64, lo: f64, hi: f64, context: &str) {
    assert!(lo <= t && t <= hi, "{what}: {t:.3} is not within [{lo:.3}, {hi:.3}] ({:+.3} / {:+.3})\n{context}", t - lo, t - hi);
}

fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

// ---------------------------------------------------------------------------------
// Fresh processes outside the tree
// ---------------------------------------------------------------------------------

fn opener_bin() -> PathBuf {
    build_workload("lease_opener")
}

/// Runs `lease_opener PATH MODE [nonblock]` to completion; (rc, errno, time the open returned).
fn open_from_outside(path: &Path, mode: &str, nonblock: bool) -> (i64, i64, f64) {
    let mut cmd = Command::new(opener_bin());
    cmd.arg(path).arg(mode);
    if nonblock {
        cmd.arg("nonblock");
    }
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().expect("run lease_opener");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("OPENED")).unwrap_or_else(|| panic!("lease_opener printed {text:?}"));
    (field_i(line, "rc"), field_i(line, "errno"), field_f(line, "t"))
}

/// A `lease_opener PATH MODE stay` blocked in (or past) its open, killed on drop.
struct Outsider {
    child: std::process::Child,
    pidfd: OwnedFd,
    out: PathBuf,
}

impl Outsider {
    fn start(path: &Path, mode: &str, dir: &Path) -> Outsider {
        let out = dir.join(format!("outsider-{}.out", mono()));
        let child = Command::new(opener_bin())
            .arg(path)
            .arg(mode)
            .arg("stay")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lease_opener");
        let pidfd = pidfd_open(child.id() as i32).expect("pidfd of lease_opener");
        Outsider { child, pidfd, out }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = pidfd_signal(&self.pidfd, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------
// A tree under test
// ---------------------------------------------------------------------------------

struct LeaseTree {
    w: Workload,
    pidfds: BTreeMap<i32, OwnedFd>,
}

impl LeaseTree {
    fn spawn(name: &str, args: &[&str]) -> LeaseTree {
        let w = Workload::spawn(name, args);
        let mut t = LeaseTree { w, pidfds: BTreeMap::new() };
        t.hold_all();
        t
    }

    fn hold_all(&mut self) -> Vec<i32> {
        adopt_tree(self.w.pid, &mut self.pidfds)
    }

    fn status(&self) -> String {
        self.w.status_text()
    }

    /// Lines of the status file starting with `prefix`.
    fn lines(&self, prefix: &str) -> Vec<String> {
        self.status().lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
    }

    #[track_caller]
    fn line(&self, prefix: &str) -> String {
        self.lines(prefix).into_iter().next().unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", self.status()))
    }

    fn path(&self, suffix: &str) -> PathBuf {
        PathBuf::from(format!("{}{suffix}", self.w.status_path.display()))
    }

    /// Everything a failed check should show.
    fn context(&self) -> String {
        format!("--- status ---\n{}--- log ---\n{}", self.status(), self.w.log_text())
    }

    /// `crust dump` of the tree (must succeed); every process must be gone afterwards.
    /// Returns the output and the times (mono) around it.
    #[track_caller]
    fn dump(&mut self) -> (CrustOutput, f64, f64) {
        let pids = self.hold_all();
        let t0 = mono();
        let out = self.w.dump();
        let t1 = mono();
        let root = self.w.pid;
        let deadline = Instant::now() + GONE_TIMEOUT;
        for pid in pids.iter().filter(|p| **p != root) {
            let fd = &self.pidfds[pid];
            while !pidfd_reaped(fd) {
                if let Some(e) = pidfd_try_reap(fd) {
                    assert_eq!(e, Exit::Signal(libc::SIGKILL), "pid {pid} ended with {e} after the dump");
                    break;
                }
                assert!(Instant::now() < deadline, "pid {pid} still exists after the dump:\n{out}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.pidfds.clear();
        for pid in &pids {
            assert!(wait_gone(*pid, GONE_TIMEOUT), "pid {pid} exists after the dump");
        }
        (out, t0, t1)
    }

    /// `crust restore -d [--lease-policy P]` (must succeed); waits until every pid of `pids`
    /// runs its program again. Returns the output and the times (mono) around the restore.
    #[track_caller]
    fn restore(&mut self, pids: &[i32], policy: Option<&str>) -> (CrustOutput, f64, f64) {
        self.restore_with(pids, policy, false)
    }

    /// `restore`; with `piped`, crust's stdout and stderr are pipes read to their end (as a
    /// script capturing its output does), so the restore counts as done only when nothing
    /// holds them any more.
    #[track_caller]
    fn restore_with(&mut self, pids: &[i32], policy: Option<&str>, piped: bool) -> (CrustOutput, f64, f64) {
        let img = self.w.image_dir.to_string_lossy().into_owned();
        let mut args = vec!["restore", "-d", "-D", &img];
        if let Some(p) = policy {
            args.extend(["--lease-policy", p]);
        }
        let t0 = mono();
        let out = if piped {
            let start = Instant::now();
            let o = Command::new(crust_bin()).args(&args).stdin(Stdio::null()).output().expect("run crust restore");
            CrustOutput {
                args: args.iter().map(|a| a.to_string()).collect(),
                status: o.status,
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                elapsed: start.elapsed(),
            }
        } else {
            crust(&args)
        };
        let t1 = mono();
        if pid_exists(self.w.pid) {
            self.w.own(self.w.pid);
        }
        assert!(out.success(), "restore failed:\n{out}\n{}", self.context());
        let exe = self.w.exe.clone();
        wait_until("the restored processes to run their program again", Duration::from_secs(10), || {
            pids.iter().all(|p| {
                matches!(proc_state(*p), Some('R' | 'S' | 'D'))
                    && proc_status_field(*p, "TracerPid").as_deref() == Some("0")
                    && fs::read_link(format!("/proc/{p}/exe")).map(|e| e == exe).unwrap_or(false)
            })
        });
        self.hold_all();
        (out, t0, t1)
    }

    /// Creates `.go` without waiting.
    fn start_go(&self) {
        fs::write(self.w.go_path(), b"go\n").unwrap();
    }

    /// `.go` (again) and waits for the root: it must PASS.
    #[track_caller]
    fn finish(&mut self) -> GoResult {
        let r = self.w.go();
        let failed: Vec<&str> = r.status_text.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert!(
            r.exit == Exit::Code(0) && failed.is_empty() && r.status_text.lines().last().unwrap_or("").starts_with("PASS"),
            "the restored tree's own checks failed ({}): {failed:#?}\n--- status ---\n{}--- log ---\n{}",
            r.exit,
            r.status_text,
            r.log
        );
        self.pidfds.clear();
        r
    }
}

impl Drop for LeaseTree {
    fn drop(&mut self) {
        for fd in self.pidfds.values() {
            let _ = pidfd_signal(fd, libc::SIGKILL);
        }
        let root = self.w.pid;
        for (pid, fd) in &self.pidfds {
            if *pid != root {
                let deadline = Instant::now() + Duration::from_secs(2);
                while !pidfd_reaped(fd) && pidfd_try_reap(fd).is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// The leases recorded in the image, as `crust show` prints them (one JSON object each).
fn image_leases(img: &Path) -> Vec<serde_json::Value> {
    let out = crust(["show", "-D", &img.to_string_lossy()]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("crust show: not JSON ({e}):\n{out}"));
    v["open_files"]["open_files"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.get("lease").filter(|l| !l.is_null()).cloned()).collect())
        .unwrap_or_default()
}

/// The one lease of the image.
#[track_caller]
fn image_lease(img: &Path) -> serde_json::Value {
    let mut l = image_leases(img);
    assert_eq!(l.len(), 1, "expected one lease in the image: {l:#?}");
    l.remove(0)
}

fn json_u(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn json_b(v: &serde_json::Value, key: &str) -> bool {
    v.get(key).and_then(|x| x.as_bool()).unwrap_or(false)
}

fn json_s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

fn json_pids(v: &serde_json::Value, key: &str) -> Vec<i64> {
    v.get(key).and_then(|x| x.as_array()).map(|a| a.iter().filter_map(|p| p.as_i64()).collect()).unwrap_or_default()
}

/// TimeMethod of the image format (proto/crust_image.proto): crust show prints the number.
const TIME_TRACEFS: u64 = 1;

// ---------------------------------------------------------------------------------
// A break in progress (tests/workloads/lease_break.c)
// ---------------------------------------------------------------------------------

/// What a lease_break run is made of.
struct Break<'a> {
    lease: &'a str,
    access: &'a str,
    breakers: &'a str,
    flags: &'a str,
    /// Seconds after the first breaker's start at which to dump.
    dump_at: f64,
    /// Seconds between dump and restore.
    pause: f64,
    /// Restore with crust's output read through pipes (see `LeaseTree::restore_with`).
    piped: bool,
}

impl Break<'_> {
    fn new(lease: &'static str, access: &'static str, breakers: &'static str) -> Break<'static> {
        Break { lease, access, breakers, flags: "-", dump_at: 2.0, pause: 1.0, piped: false }
    }
}

/// One lease_break run up to the restore.
struct BreakRun {
    t: LeaseTree,
    data: PathBuf,
    holder: i32,
    breakers: Vec<i32>,
    break_start: f64,
    dump: (f64, f64),
    restore: (f64, f64),
    lease: Option<serde_json::Value>,
    locks_at_dump: Vec<String>,
    restore_out: String,
}

impl BreakRun {
    /// Starts the tree, waits until `dump_at` s into the break, dumps, records the image's
    /// lease, waits `pause` s, and restores with `policy`. `before_dump` runs right before the
    /// dump (extra checks on the live tree).
    fn run(env: &LeaseEnv, b: &Break, policy: Option<&str>, before_dump: impl FnOnce(&LeaseTree)) -> BreakRun {
        let watch = format!("{}", env.secs + 3);
        let mut t = LeaseTree::spawn("lease_break", &[b.lease, b.access, b.breakers, b.flags, &watch]);
        let data = t.path(".data");
        let holder = t.w.pid;
        let ready = t.w.ready_line.clone();
        let breakers: Vec<i32> = ready_field(&ready, "breakers")
            .filter(|s| s != "-")
            .map(|s| s.split(',').map(|p| p.parse().unwrap()).collect())
            .unwrap_or_default();
        let break_start = t.lines("START ").first().map(|l| field_f(l, "t")).unwrap_or_else(mono);
        sleep_until(break_start + b.dump_at);
        before_dump(&t);
        let locks_at_dump = lease_lines(&data);
        let mut pids = t.hold_all();
        pids.sort();
        let (_, d0, d1) = t.dump();
        let mut leases = image_leases(&t.w.image_dir);
        assert!(leases.len() <= 1, "more than one lease in the image: {leases:#?}");
        let lease = leases.pop();
        std::thread::sleep(Duration::from_secs_f64(b.pause));
        let (out, r0, r1) = t.restore_with(&pids, policy, b.piped);
        env.assert_unchanged();
        BreakRun {
            t,
            data,
            holder,
            breakers,
            break_start,
            dump: (d0, d1),
            restore: (r0, r1),
            lease,
            locks_at_dump,
            restore_out: out.to_string(),
        }
    }

    fn lease(&self) -> &serde_json::Value {
        self.lease.as_ref().unwrap_or_else(|| panic!("no lease in the image\n{}", self.t.context()))
    }

    /// The image's remaining break time, seconds.
    fn remaining(&self) -> f64 {
        json_u(self.lease(), "remaining_ms") as f64 / 1000.0
    }

    /// The image records the lease's pre-break type, target, breakers and a remaining time
    /// that matches the moment of the dump (L minus the time since the break started).
    #[track_caller]
    fn assert_image(&self, env: &LeaseEnv, write: bool, to_unlock: bool, breakers: &[i32]) {
        let l = self.lease();
        let ctx = format!("lease in the image: {l:#}\n{}", self.t.context());
        assert!(json_b(l, "breaking"), "not recorded as breaking: {ctx}");
        assert_eq!(json_b(l, "write"), write, "pre-break type: {ctx}");
        assert_eq!(json_b(l, "break_to_unlock"), to_unlock, "target type: {ctx}");
        let mut got = json_pids(l, "breakers");
        got.sort();
        let mut want: Vec<i64> = breakers.iter().map(|p| *p as i64).collect();
        want.sort();
        assert_eq!(got, want, "breakers: {ctx}");
        assert_eq!(json_u(l, "holder_pid"), self.holder as u64, "holder: {ctx}");
        assert_eq!(json_s(l, "path"), self.data.to_string_lossy(), "path: {ctx}");
        assert_eq!(json_u(l, "lease_break_time"), env.secs as u64, "lease_break_time: {ctx}");
        assert_eq!(json_u(l, "signal"), sigrtmin() as u64 + 1, "F_SETSIG signal: {ctx}");
        assert_eq!(json_u(l, "remaining_method"), TIME_TRACEFS, "remaining time measured through tracefs: {ctx}");
        let lo = env.secs() - (self.dump.1 - self.break_start) - MARGIN;
        let hi = env.secs() - (self.dump.0 - self.break_start) + MARGIN;
        assert_between("remaining time in the image", self.remaining(), lo, hi, &ctx);
    }

    /// `t` is the recorded remaining time (plus `extra`) after the restore.
    #[track_caller]
    fn assert_after_restore(&self, what: &str, t: f64, remaining: f64) {
        let lo = self.restore.0 + remaining - MARGIN;
        let hi = self.restore.1 + remaining + MARGIN;
        let ctx = format!(
            "restore ran from {:.3} to {:.3}; remaining {remaining:.3} s\n{}\n--- crust restore ---\n{}",
            self.restore.0,
            self.restore.1,
            self.t.context(),
            self.restore_out
        );
        eprintln!(
            "{what}: {:+.3} s from the restore's start + {remaining:.3} s, {:+.3} s from its end + {remaining:.3} s",
            t - (self.restore.0 + remaining),
            t - (self.restore.1 + remaining)
        );
        assert_between(what, t, lo, hi, &ctx);
    }

    /// Time at which breaker `i` (1-based)'s open returned; it must have succeeded.
    #[track_caller]
    fn opened(&self, i: usize) -> f64 {
        let l = self.t.line(&format!("OPENED b{i} "));
        assert!(field_i(&l, "rc") >= 0, "breaker b{i}'s open failed: {l}\n{}", self.t.context());
        field_f(&l, "t")
    }

    /// The first FDINFO line (after .go) with value `v` ("none", "ACTIVE READ"...): its time.
    fn fdinfo_time(&self, v: &str) -> Option<f64> {
        self.t.lines("FDINFO ").iter().find(|l| l.strip_prefix("FDINFO v=").is_some_and(|r| r.starts_with(&format!("{v} t=")))).map(|l| field_f(l, "t"))
    }

    fn signals(&self) -> Vec<String> {
        self.t.lines("SIGNAL holder ")
    }

    fn done(&self) -> String {
        self.t.line("DONE ")
    }
}

fn unlock_break_lines(holder: i32, breakers: &[(&str, i32)]) -> Vec<String> {
    let mut v = vec![format!("LEASE BREAKING UNLCK {holder}")];
    v.extend(breakers.iter().map(|(ty, p)| format!("-> LEASE BREAKER {ty} {p}")));
    v
}

// ---------------------------------------------------------------------------------
// 1. Leases that are not being broken
// ---------------------------------------------------------------------------------

/// Read lease on O_RDONLY, write leases on O_RDONLY and O_RDWR, and a write lease shared by
/// two processes (fork) whose signal owner (F_SETOWN) is the child, each with its own
/// F_SETSIG signal: after restore F_GETLEASE, F_GETSIG and F_GETOWN are the same inside,
/// /proc/locks shows the same leases, and a conflicting open by a fresh process outside breaks
/// each one exactly as before: the owner gets its signal with si_fd = the leased fd, gives the
/// lease up, and the open returns right then.
#[test]
fn leases_not_being_broken_come_back_and_break_as_before() {
    let env = LeaseEnv::new(8);
    let mut t = LeaseTree::spawn("lease_active", &["all"]);
    t.w.wait_status_line("READY parent ", READY_TIMEOUT);
    let ready = t.line("READY parent ");
    let parent = t.w.pid;
    let child = field_i(&ready, "child") as i32;
    let files: Vec<(char, PathBuf)> = "abcd".chars().map(|c| (c, t.path(&format!(".{c}")))).collect();
    let expected: BTreeMap<char, Vec<String>> = [
        ('a', vec![format!("LEASE ACTIVE READ {parent}")]),
        ('b', vec![format!("LEASE ACTIVE WRITE {parent}")]),
        ('c', vec![format!("LEASE ACTIVE WRITE {parent}")]),
        ('d', vec![format!("LEASE ACTIVE WRITE {parent}")]),
    ]
    .into();
    for (c, p) in &files {
        assert_eq!(lease_lines(p), expected[c], "before the dump, file {c}");
    }
    let mut pids = t.hold_all();
    pids.sort();
    assert_eq!(pids.len(), 2, "parent and child: {pids:?}");
    let without_locks = |mut s: ProcSnapshot| {
        s.entries.retain(|k, _| !(k.starts_with("fdinfo:") && k.ends_with(":lock")));
        s
    };
    let before: Vec<ProcSnapshot> = pids.iter().map(|p| without_locks(ProcSnapshot::take(*p))).collect();
    t.dump();
    for (c, p) in &files {
        assert!(lease_lines(p).is_empty(), "file {c}: leases left after the dump: {:?}", lease_lines(p));
    }

    // The image.
    let leases = image_leases(&t.w.image_dir);
    assert_eq!(leases.len(), 4, "{leases:#?}");
    for (c, p) in &files {
        let l = leases
            .iter()
            .find(|l| json_s(l, "path") == p.to_string_lossy())
            .unwrap_or_else(|| panic!("file {c}: no lease in the image: {leases:#?}"));
        assert!(!json_b(l, "breaking"), "file {c}: {l:#}");
        assert_eq!(json_b(l, "write"), *c != 'a', "file {c}: {l:#}");
        assert_eq!(json_u(l, "holder_pid"), parent as u64, "file {c}: {l:#}");
        let sig = match c {
            'a' => sigrtmin() + 1,
            'b' => sigrtmin() + 3,
            'c' => libc::SIGUSR1,
            _ => sigrtmin() + 2,
        };
        assert_eq!(json_u(l, "signal"), sig as u64, "file {c}: {l:#}");
        assert_eq!(json_u(l, "owner_id"), if *c == 'd' { child } else { parent } as u64, "file {c}: {l:#}");
    }

    t.restore(&pids, None);
    env.assert_unchanged();
    for (c, p) in &files {
        wait_lease_lines(&format!("after the restore, file {c}"), p, &expected[c]);
    }
    let after: Vec<ProcSnapshot> = pids.iter().map(|p| without_locks(ProcSnapshot::take(*p))).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_same_proc(b, a, &[]);
    }

    // Inside: the same type, signal and owner; then each lease is broken from outside.
    t.start_go();
    t.w.wait_status_line("CHECKED parent ", Duration::from_secs(10));
    t.w.wait_status_line("CHECKED child ", Duration::from_secs(10));
    for l in t.lines("CHECKED ") {
        assert_eq!(field_i(&l, "sigs"), 0, "no lease signal before the conflicting opens: {l}\n{}", t.context());
    }
    let fd_of = |c: char| field_i(&ready, &c.to_string());
    for (c, mode, who, sig) in [
        ('a', "w", "parent", sigrtmin() + 1),
        ('b', "r", "parent", sigrtmin() + 3),
        ('c', "w", "parent", libc::SIGUSR1),
        ('d', "w", "child", sigrtmin() + 2),
    ] {
        let p = &files.iter().find(|f| f.0 == c).unwrap().1;
        let fd = fd_of(c);
        let (rc, errno, opened) = open_from_outside(p, mode, false);
        assert!(rc >= 0, "file {c}: the outside open failed (errno {errno})\n{}", t.context());
        let sig_line = t
            .lines(&format!("SIGNAL {who} "))
            .into_iter()
            .find(|l| field_i(l, "si_fd") == fd)
            .unwrap_or_else(|| panic!("file {c}: {who} got no signal with si_fd {fd}\n{}", t.context()));
        assert_eq!(field_i(&sig_line, "signo"), sig as i64, "file {c}: {sig_line}");
        let release = t
            .lines(&format!("RELEASE {who} fd={fd} "))
            .first()
            .map(|l| field_f(l, "t"))
            .unwrap_or_else(|| panic!("file {c}: {who} did not release fd {fd}\n{}", t.context()));
        assert_between(&format!("file {c}: the outside open returned"), opened, release, release + MARGIN, &t.context());
        assert!(lease_lines(p).is_empty(), "file {c}: a lease is left: {:?}", lease_lines(p));
    }
    let r = t.finish();
    assert!(r.status_text.contains("PASS child "), "{}", r.status_text);
    // Exactly one signal each, four in all.
    assert_eq!(r.status_text.lines().filter(|l| l.starts_with("SIGNAL ")).count(), 4, "{}", r.status_text);
}

// ---------------------------------------------------------------------------------
// 2-8, 11, 12. A break in progress at the dump
// ---------------------------------------------------------------------------------

/// A write lease (O_RDWR) being broken by a blocked O_WRONLY breaker, dumped 2 s into the
/// break: the image records pre-break WRITE, target unlock, the breaker, the remaining time
/// (tracefs); after the restore /proc/locks shows the break and its breaker again, the
/// breaker's open returns when the remaining time is over (counted from the restore), the
/// holder is not signalled again, and the lease is gone.
#[test]
fn write_lease_mid_break_ends_when_the_remaining_time_is_over() {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("w", "rw", "w"), None, |_| {});
    let b1 = run.breakers[0];
    let want = unlock_break_lines(run.holder, &[("WRITE", b1)]);
    assert_eq!(run.locks_at_dump, want, "/proc/locks before the dump");
    run.assert_image(&env, true, true, &[b1]);
    assert_eq!(json_s(run.lease(), "type_method"), "tracefs", "{:#}", run.lease());
    // crust show prints every field of the lease.
    for key in [
        "write", "breaking", "break_to_unlock", "remaining_ms", "remaining_method", "type_method", "breakers", "owner_type",
        "owner_id", "signal", "lease_break_time", "holder_pid", "holder_fd", "path", "no_break",
    ] {
        assert!(run.lease().get(key).is_some(), "crust show lacks the lease's {key}: {:#}", run.lease());
    }
    assert_eq!(json_u(run.lease(), "holder_fd") as i64, field_i(&run.t.w.ready_line, "fd"), "{:#}", run.lease());
    assert_eq!(json_u(run.lease(), "owner_id") as i32, run.holder, "{:#}", run.lease());
    wait_lease_lines("after the restore", &run.data, &want);
    assert_eq!(probe_breaking_type(&run.data), "WRITE", "the restored lease's own type");
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
    let gone = run.fdinfo_time("none").unwrap_or_else(|| panic!("the lease never went\n{}", run.t.context()));
    run.assert_after_restore("the lease went", gone, remaining);
    assert_eq!(run.signals().len(), 1, "the holder is signalled exactly once: {:?}", run.signals());
    assert!(run.signals()[0].contains(" n=1 ") && field_f(&run.signals()[0], "t") < run.dump.0, "{:?}", run.signals());
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
    assert!(lease_lines(&run.data).is_empty(), "{:?}", lease_lines(&run.data));
}

/// A downgrade break (a reader's O_RDONLY open against a write lease), on an O_RDONLY and
/// on an O_RDWR holder description: the image records target READ (pre-break WRITE); after
/// the restore /proc/locks shows "BREAKING READ" and the reader waiting; when the remaining
/// time is over the holder has a read lease (F_GETLEASE F_RDLCK, fdinfo ACTIVE READ) and the
/// reader's open returned.
fn downgrade(access: &'static str) {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("w", access, "r"), None, |_| {});
    let b1 = run.breakers[0];
    let want = vec![format!("LEASE BREAKING READ {}", run.holder), format!("-> LEASE BREAKER READ {b1}")];
    assert_eq!(run.locks_at_dump, want, "/proc/locks before the dump");
    run.assert_image(&env, true, false, &[b1]);
    wait_lease_lines("after the restore", &run.data, &want);
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    run.assert_after_restore("the reader's open returned", run.opened(1), remaining);
    let downgraded = run.fdinfo_time("ACTIVE READ").unwrap_or_else(|| panic!("the lease never became ACTIVE READ\n{}", run.t.context()));
    run.assert_after_restore("the lease was downgraded", downgraded, remaining);
    assert!(run.done().contains("sigs=1 getlease=READ fdinfo=ACTIVE READ"), "{}\n{}", run.done(), run.t.context());
    assert_eq!(run.signals().len(), 1, "{:?}", run.signals());
}

#[test]
fn downgrade_break_on_rdonly_holder_ends_with_a_read_lease() {
    downgrade("ro");
}

#[test]
fn downgrade_break_on_rdwr_holder_ends_with_a_read_lease() {
    downgrade("rw");
}

/// A write lease on an O_RDONLY description broken by a writer: the pre-break type is
/// recorded as WRITE (not guessed from the access mode) and comes back as WRITE (the
/// O_RDONLY|O_NONBLOCK probe fails with EAGAIN during the restarted break).
#[test]
fn write_lease_on_rdonly_fd_broken_by_writer_keeps_its_write_type() {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("w", "ro", "w"), None, |t| {
        assert_eq!(probe_breaking_type(&t.path(".data")), "WRITE", "before the dump");
    });
    let b1 = run.breakers[0];
    let want = unlock_break_lines(run.holder, &[("WRITE", b1)]);
    assert_eq!(run.locks_at_dump, want);
    run.assert_image(&env, true, true, &[b1]);
    wait_lease_lines("after the restore", &run.data, &want);
    assert_eq!(probe_breaking_type(&run.data), "WRITE", "the restored lease's own type");
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// A read lease broken by a writer: pre-break READ in the image, READ again after the
/// restore (the probe open succeeds), removed when the remaining time is over.
#[test]
fn read_lease_broken_by_writer_keeps_its_read_type() {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("r", "ro", "w"), None, |t| {
        assert_eq!(probe_breaking_type(&t.path(".data")), "READ", "before the dump");
    });
    let b1 = run.breakers[0];
    let want = unlock_break_lines(run.holder, &[("WRITE", b1)]);
    assert_eq!(run.locks_at_dump, want);
    run.assert_image(&env, false, true, &[b1]);
    wait_lease_lines("after the restore", &run.data, &want);
    assert_eq!(probe_breaking_type(&run.data), "READ", "the restored lease's own type");
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
    let gone = run.fdinfo_time("none").unwrap_or_else(|| panic!("the lease never went\n{}", run.t.context()));
    run.assert_after_restore("the lease went", gone, remaining);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// The holder blocked its lease signal before the break: at the dump the signal is pending
/// (not received); after the restore it is still pending, and once the holder unblocks it,
/// it is delivered exactly once, with si_fd = the leased fd (checked by the holder).
#[test]
fn pending_break_signal_is_delivered_once_after_restore() {
    let env = LeaseEnv::new(6);
    let sig = sigrtmin() + 1;
    let bit = 1u64 << (sig - 1);
    let pending = |pid: i32| {
        let f = |k: &str| proc_status_field(pid, k).map(|v| parse_hex(&v)).unwrap_or(0);
        f("SigPnd") | f("ShdPnd")
    };
    let b = Break { flags: "block", ..Break::new("w", "rw", "w") };
    let run = BreakRun::run(&env, &b, None, |t| {
        assert!(pending(t.w.pid) & bit != 0, "the lease signal is not pending before the dump\n{}", t.context());
        assert!(t.lines("SIGNAL ").is_empty(), "received before the dump: {}", t.status());
    });
    let b1 = run.breakers[0];
    run.assert_image(&env, true, true, &[b1]);
    wait_lease_lines("after the restore", &run.data, &unlock_break_lines(run.holder, &[("WRITE", b1)]));
    assert!(pending(run.holder) & bit != 0, "the lease signal is not pending after the restore\n{}", run.t.context());
    let mut run = run;
    run.t.finish();
    let sigs = run.signals();
    assert_eq!(sigs.len(), 1, "delivered exactly once: {sigs:?}\n{}", run.t.context());
    let unblock = field_f(&run.t.line("UNBLOCK "), "t");
    assert!(field_f(&sigs[0], "t") >= unblock, "delivered before the holder unblocked it: {sigs:?}");
    let remaining = run.remaining();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
    assert!(run.done().contains("sigs=1 "), "{}", run.done());
}

/// A break started by an O_NONBLOCK open (EAGAIN, nobody waiting): recorded with no breakers
/// and the remaining time from tracefs; restarted at restore, with nobody waiting ("BREAKING
/// UNLCK" and no breaker line), and the lease is removed when the remaining time is over.
/// (After .go the breaker opens again, blocking, and gets its fd at that moment.)
#[test]
fn nonblocking_break_continues_and_removes_the_lease_in_time() {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("w", "rw", "nw"), None, |t| {
        let l = t.line("NBOPEN b1 ");
        assert_eq!(field_i(&l, "errno"), libc::EAGAIN as i64, "{l}");
    });
    assert_eq!(run.locks_at_dump, unlock_break_lines(run.holder, &[]));
    run.assert_image(&env, true, true, &[]);
    wait_lease_lines("after the restore", &run.data, &unlock_break_lines(run.holder, &[]));
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    let gone = run.fdinfo_time("none").unwrap_or_else(|| panic!("the lease never went\n{}", run.t.context()));
    run.assert_after_restore("the lease went", gone, remaining);
    run.assert_after_restore("b1's blocking open returned", run.opened(1), remaining);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// Two blocked writers: both recorded, both waiting again after the restore, both get their
/// open when the remaining time is over; one signal in all.
#[test]
fn several_breakers_all_proceed_when_the_time_is_over() {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("w", "rw", "w,w"), None, |_| {});
    let (b1, b2) = (run.breakers[0], run.breakers[1]);
    let want = unlock_break_lines(run.holder, &[("WRITE", b1), ("WRITE", b2)]);
    assert_eq!(run.locks_at_dump, want);
    run.assert_image(&env, true, true, &[b1, b2]);
    let mut after = lease_lines(&run.data);
    let deadline = Instant::now() + Duration::from_secs(2);
    while after.len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        after = lease_lines(&run.data);
    }
    // The order of the breakers is the order in which they retried their open.
    let mut sorted = after.clone();
    sorted[1..].sort();
    let mut want_sorted = want.clone();
    want_sorted[1..].sort();
    assert_eq!(sorted, want_sorted, "after the restore");
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
    run.assert_after_restore("b2's open returned", run.opened(2), remaining);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// The holder gives the lease up itself right after the restore: both breakers proceed at
/// once, long before the recorded deadline.
#[test]
fn holder_release_after_restore_lets_breakers_in_at_once() {
    let env = LeaseEnv::new(6);
    let b = Break { flags: "release", ..Break::new("w", "rw", "w,w") };
    let run = BreakRun::run(&env, &b, None, |_| {});
    let (b1, b2) = (run.breakers[0], run.breakers[1]);
    run.assert_image(&env, true, true, &[b1, b2]);
    let mut run = run;
    run.t.finish();
    let release = run.t.line("RELEASE ");
    assert_eq!(field_i(&release, "rc"), 0, "{release}");
    let release = field_f(&release, "t");
    let remaining = run.remaining();
    assert!(run.restore.1 + remaining - release > 1.0, "the test needs the release well before the deadline");
    for i in [1, 2] {
        assert_between(&format!("b{i}'s open returned"), run.opened(i), release, release + MARGIN, &run.t.context());
    }
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// A break that expired before the dump, but that nobody made the kernel notice (expiry is
/// lazy: /proc/locks still shows BREAKING): crust's dump makes the kernel check, so the image
/// has no lease; after the restore there is none, and the breaker's (new, blocking) open
/// returns at once, as it would have without the checkpoint.
#[test]
fn break_expired_before_the_dump_leaves_no_lease() {
    let env = LeaseEnv::new(3);
    let b = Break { dump_at: env.secs() + 1.5, ..Break::new("w", "rw", "nw") };
    let run = BreakRun::run(&env, &b, None, |t| {
        assert_eq!(lease_lines(&t.path(".data")), unlock_break_lines(t.w.pid, &[]), "expired but still shown (lazy expiry)");
    });
    assert!(run.lease.is_none(), "a lease in the image: {:?}", run.lease);
    assert!(lease_lines(&run.data).is_empty(), "after the restore: {:?}", lease_lines(&run.data));
    let mut run = run;
    run.t.finish();
    let go = field_f(&run.t.line("GO "), "t");
    // (b1 may see .go a moment before the holder writes its GO line)
    assert_between("b1's blocking open returned", run.opened(1), run.restore.1, go + MARGIN, &run.t.context());
    assert!(run.t.line("GETLEASE ").starts_with("GETLEASE v=UNLCK "), "{}", run.t.status());
    assert!(run.t.line("FDINFO ").starts_with("FDINFO v=none "), "{}", run.t.status());
    assert!(run.done().contains("sigs=1 "), "{}", run.done());
}

/// A downgrade break joined by a writer (the break becomes an unlock break and the holder is
/// signalled a second time): recorded as an unlock break of a WRITE lease with both breakers;
/// after the restore both get their open when the remaining time is over, and the holder gets
/// no third signal.
#[test]
fn downgrade_joined_by_writer_becomes_unlock() {
    let env = LeaseEnv::new(6);
    let run = BreakRun::run(&env, &Break::new("w", "ro", "r,w"), None, |t| {
        wait_until("the second lease signal", Duration::from_secs(2), || t.lines("SIGNAL ").len() == 2);
    });
    let (b1, b2) = (run.breakers[0], run.breakers[1]);
    let want = unlock_break_lines(run.holder, &[("READ", b1), ("WRITE", b2)]);
    assert_eq!(run.locks_at_dump, want);
    run.assert_image(&env, true, true, &[b1, b2]);
    let mut run = run;
    run.t.finish();
    let remaining = run.remaining();
    run.assert_after_restore("the reader's open returned", run.opened(1), remaining);
    run.assert_after_restore("the writer's open returned", run.opened(2), remaining);
    assert_eq!(run.signals().len(), 2, "{:?}", run.signals());
    assert!(run.done().contains("sigs=2 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

// ---------------------------------------------------------------------------------
// 9. Policies (`crust restore --lease-policy`)
// ---------------------------------------------------------------------------------

/// A write lease (O_RDWR) broken by one writer, dumped 2 s into the break and restored with
/// `policy`: (the run, when b1's open returned).
fn with_policy(env: &LeaseEnv, policy: &str) -> (BreakRun, f64) {
    let run = BreakRun::run(env, &Break::new("w", "rw", "w"), Some(policy), |_| {});
    let b1 = run.breakers[0];
    // The policy is applied at restore: the image keeps what the dump recorded.
    run.assert_image(env, true, true, &[b1]);
    let mut run = run;
    run.t.finish();
    let opened = run.opened(1);
    (run, opened)
}

/// `breaker`: the break completes at once after the restore.
#[test]
fn policy_breaker_completes_the_break_at_restore() {
    let env = LeaseEnv::new(6);
    let (run, opened) = with_policy(&env, "breaker");
    run.assert_after_restore("b1's open returned", opened, 0.0);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// `holder`: the holder gets the whole lease-break-time again, from the restore.
#[test]
fn policy_holder_gives_the_whole_break_time_again() {
    let env = LeaseEnv::new(6);
    let (run, opened) = with_policy(&env, "holder");
    run.assert_after_restore("b1's open returned", opened, env.secs());
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// `add:2`: the recorded remaining time plus 2 s.
#[test]
fn policy_add_extends_the_remaining_time() {
    let env = LeaseEnv::new(6);
    let (run, opened) = with_policy(&env, "add:2");
    run.assert_after_restore("b1's open returned", opened, run.remaining() + 2.0);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// `set:1`: 1 s from the restore.
#[test]
fn policy_set_sets_the_remaining_time() {
    let env = LeaseEnv::new(6);
    let (run, opened) = with_policy(&env, "set:1");
    run.assert_after_restore("b1's open returned", opened, 1.0);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// `set:8` with lease-break-time 6: longer than lease-break-time, so crust raises it for the
/// instant it starts the break; it is 6 again after the restore (checked by the run) and the
/// break lasts 8 s.
#[test]
fn policy_set_longer_than_lease_break_time_puts_the_setting_back() {
    let env = LeaseEnv::new(6);
    let (run, opened) = with_policy(&env, "set:8");
    env.assert_unchanged();
    run.assert_after_restore("b1's open returned", opened, 8.0);
    assert!(run.done().contains("sigs=1 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

/// `no-break` with the breaker in the image. Observed (and what the kernel does with the
/// breaker's retried open): the lease comes back in its pre-break type, not breaking; but
/// the breaker, restored inside its open(), retries it as soon as the tree runs, and that is
/// a NEW conflicting open: it starts a new break, with the full lease-break-time and a second
/// signal to the holder. So the breaker gets its open lease-break-time after the restore and
/// the holder is signalled twice in all.
#[test]
fn policy_no_break_with_the_breaker_restored_starts_a_new_break() {
    let env = LeaseEnv::new(6);
    let (run, opened) = with_policy(&env, "no-break");
    run.assert_after_restore("b1's open returned (a new, full break)", opened, env.secs());
    let sigs = run.signals();
    assert_eq!(sigs.len(), 2, "the new break signals the holder again: {sigs:?}");
    assert!(field_f(&sigs[1], "t") >= run.restore.0, "{sigs:?}");
    assert!(run.done().contains("sigs=2 getlease=UNLCK fdinfo=none"), "{}", run.done());
}

// ---------------------------------------------------------------------------------
// 10. The holder restored alone
// ---------------------------------------------------------------------------------

/// The breaker is a process outside the dumped tree (started by the test, blocked in its
/// open): the image records the break and that breaker; the dump kills the holder, so the
/// breaker's open returns, and the test kills it before the restore. Restored without a
/// policy, the holder gets its write lease back, ACTIVE (not breaking: nobody is waiting), and
/// keeps it beyond lease-break-time, without a new signal; a later conflicting open from
/// outside breaks it as usual (the holder's signal, with si_fd = its fd; it releases; the
/// open returns).
#[test]
fn holder_restored_alone_gets_its_write_lease_back() {
    let env = LeaseEnv::new(6);
    let mut t = LeaseTree::spawn("lease_active", &["single"]);
    let ready = t.w.wait_status_line("READY parent ", READY_TIMEOUT);
    let holder = t.w.pid;
    let fb = field_i(&ready, "b");
    let data = t.path(".b");
    let dir = t.w.dir.path.clone();
    let mut outsider = Outsider::start(&data, "w", &dir);
    let opid = outsider.pid();
    wait_until("the outsider to wait behind the lease, and the holder's signal", Duration::from_secs(5), || {
        lease_lines(&data) == unlock_break_lines(holder, &[("WRITE", opid)]) && !t.lines("SIGNAL parent n=1 ").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    t.dump();
    let l = image_lease(&t.w.image_dir);
    assert!(json_b(&l, "breaking") && json_b(&l, "write") && json_b(&l, "break_to_unlock"), "{l:#}");
    assert_eq!(json_pids(&l, "breakers"), vec![opid as i64], "{l:#}");
    // The holder died with the dump: the outsider got its open.
    wait_until("the outsider's open to return", Duration::from_secs(5), || outsider.output().contains("OPENED rc="));
    let o = outsider.output();
    assert!(!o.contains("OPENED rc=-1"), "{o}");
    outsider.kill();
    assert!(lease_lines(&data).is_empty());

    t.restore(&[holder], None);
    env.assert_unchanged();
    let active = vec![format!("LEASE ACTIVE WRITE {holder}")];
    wait_lease_lines("after the restore", &data, &active);
    std::thread::sleep(Duration::from_secs_f64(env.secs() + 1.0));
    assert_eq!(lease_lines(&data), active, "lease-break-time after the restore");

    t.start_go();
    let checked = t.w.wait_status_line("CHECKED parent ", Duration::from_secs(10));
    assert_eq!(field_i(&checked, "sigs"), 1, "no new signal after the restore: {checked}\n{}", t.context());
    assert!(t.status().contains("STATE b lease=WRITE "), "{}", t.status());
    let (rc, _, opened) = open_from_outside(&data, "w", false);
    assert!(rc >= 0);
    let sig = t.lines("SIGNAL parent n=2 ");
    assert_eq!(sig.len(), 1, "{}", t.context());
    assert_eq!(field_i(&sig[0], "si_fd"), fb, "{}", sig[0]);
    assert_eq!(field_i(&sig[0], "signo"), sigrtmin() as i64 + 3, "{}", sig[0]);
    let release = field_f(&t.line(&format!("RELEASE parent fd={fb} ")), "t");
    assert_between("the outside open returned", opened, release, release + MARGIN, &t.context());
    t.finish();
}

/// `crust restore -d` with its output captured through pipes (as `$(crust restore -d ...)` or
/// a program reading its output to the end does) returns when the restore is done, not when
/// the restarted break ends: crust's break timer, which outlives crust, does not keep crust's
/// stdout and stderr open.
#[test]
fn restore_output_is_not_held_until_the_break_ends() {
    let env = LeaseEnv::new(6);
    let b = Break { piped: true, ..Break::new("w", "rw", "w") };
    let run = BreakRun::run(&env, &b, None, |_| {});
    let took = run.restore.1 - run.restore.0;
    let remaining = run.remaining();
    assert!(remaining > 2.0, "{remaining}");
    assert!(took < remaining - 1.0, "crust restore -d took {took:.3} s: its output was held open until the break ended ({remaining:.3} s)\n{}", run.restore_out);
    let mut run = run;
    run.t.finish();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
}
