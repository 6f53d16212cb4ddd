//! The lease tests' harness (tests/restore_leases.rs, tests/restore_leases_lifecycle.rs):
//! lease-break-time serialized through `LeaseEnv`, /proc/locks, fresh openers outside the
//! tree, `LeaseTree` (a tree under test, dumped and restored), the image's leases, and
//! `Break` / `BreakRun` (one tests/workloads/lease_break.c run up to the restore).
//!
//! Included by each lease test file with `#[path = "common/leases.rs"] mod leases;`, next to
//! `mod common;`.

#![allow(dead_code)]

use crate::common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Margin for every time check.
pub const MARGIN: f64 = 0.5;

// ---------------------------------------------------------------------------------
// lease-break-time, serialized
// ---------------------------------------------------------------------------------

pub const BREAK_TIME: &str = "/proc/sys/fs/lease-break-time";
pub const LOCK_PATH: &str = "/tmp/crust-lease-tests.lock";
pub const SAVED_PATH: &str = "/tmp/crust-lease-tests.saved-break-time";

pub fn break_time() -> u32 {
    fs::read_to_string(BREAK_TIME).expect("read lease-break-time").trim().parse().expect("lease-break-time")
}

pub fn set_break_time(secs: u32) {
    fs::write(BREAK_TIME, secs.to_string()).unwrap_or_else(|e| panic!("write {BREAK_TIME}: {e}"));
}

/// Holds the lease tests' lock and a short lease-break-time; puts the old value back on drop.
pub struct LeaseEnv {
    _lock: fs::File,
    old: u32,
    /// The value set for the test, seconds.
    pub secs: u32,
}

impl LeaseEnv {
    pub fn new(secs: u32) -> LeaseEnv {
        let lock =
            fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK_PATH).expect("open the lease tests' lock file");
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

    pub fn secs(&self) -> f64 {
        self.secs as f64
    }

    /// lease-break-time must be this test's value (crust raises it only for an instant).
    #[track_caller]
    pub fn assert_unchanged(&self) {
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
pub fn mono() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub fn sleep_until(t: f64) {
    let d = t - mono();
    if d > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(d));
    }
}

/// "MAJ:MIN:INODE" as /proc/locks prints the file.
pub fn dev_ino(path: &Path) -> String {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    format!("{:02x}:{:02x}:{}", libc::major(m.dev()), libc::minor(m.dev()), m.ino())
}

/// The leases of /proc/locks on `path`: "LEASE MODE TYPE PID" for the lease, and
/// "-> LEASE BREAKER TYPE PID" for each breaker waiting behind it, in /proc/locks order.
pub fn lease_lines(path: &Path) -> Vec<String> {
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
pub fn wait_lease_lines(what: &str, path: &Path, want: &[String]) {
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
pub fn probe_breaking_type(path: &Path) -> &'static str {
    match fs::File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(_) => "READ",
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => "WRITE",
        Err(e) => panic!("probing {}: {e}", path.display()),
    }
}

/// `key=VALUE` of a line as f64.
pub fn field_f(line: &str, key: &str) -> f64 {
    ready_field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}

pub fn field_i(line: &str, key: &str) -> i64 {
    ready_field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no integer {key}= in {line:?}"))
}

/// Asserts `lo <= t <= hi`.
#[track_caller]
pub fn assert_between(what: &str, t: f64, lo: f64, hi: f64, context: &str) {
    assert!(lo <= t && t <= hi, "{what}: {t:.3} is not within [{lo:.3}, {hi:.3}] ({:+.3} / {:+.3})\n{context}", t - lo, t - hi);
}

pub fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

// ---------------------------------------------------------------------------------
// Fresh processes outside the tree
// ---------------------------------------------------------------------------------

pub fn opener_bin() -> PathBuf {
    build_workload("lease_opener")
}

/// Runs `lease_opener PATH MODE [nonblock]` to completion; (rc, errno, time the open returned).
pub fn open_from_outside(path: &Path, mode: &str, nonblock: bool) -> (i64, i64, f64) {
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
pub struct Outsider {
    pub child: std::process::Child,
    pub pidfd: OwnedFd,
    pub out: PathBuf,
}

impl Outsider {
    pub fn start(path: &Path, mode: &str, dir: &Path) -> Outsider {
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn kill(&mut self) {
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

pub struct LeaseTree {
    pub w: Workload,
    pub pidfds: BTreeMap<i32, OwnedFd>,
}

impl LeaseTree {
    pub fn spawn(name: &str, args: &[&str]) -> LeaseTree {
        let w = Workload::spawn(name, args);
        let mut t = LeaseTree { w, pidfds: BTreeMap::new() };
        t.hold_all();
        t
    }

    pub fn hold_all(&mut self) -> Vec<i32> {
        adopt_tree(self.w.pid, &mut self.pidfds)
    }

    pub fn status(&self) -> String {
        self.w.status_text()
    }

    /// Lines of the status file starting with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.status().lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
    }

    #[track_caller]
    pub fn line(&self, prefix: &str) -> String {
        self.lines(prefix).into_iter().next().unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", self.status()))
    }

    pub fn path(&self, suffix: &str) -> PathBuf {
        PathBuf::from(format!("{}{suffix}", self.w.status_path.display()))
    }

    /// Everything a failed check should show.
    pub fn context(&self) -> String {
        format!("--- status ---\n{}--- log ---\n{}", self.status(), self.w.log_text())
    }

    /// `crust dump` of the tree (must succeed); every process must be gone afterwards.
    /// Returns the output and the times (mono) around it.
    #[track_caller]
    pub fn dump(&mut self) -> (CrustOutput, f64, f64) {
        let pids = self.hold_all();
        let t0 = mono();
        let out = self.w.dump();
        let t1 = mono();
        let root = self.w.pid;
        assert_killed_by_dump(&self.pidfds, root, &out);
        self.pidfds.clear();
        for pid in &pids {
            assert!(wait_gone(*pid, GONE_TIMEOUT), "pid {pid} exists after the dump");
        }
        (out, t0, t1)
    }

    /// `crust restore -d [--lease-policy P]` (must succeed); waits until every pid of `pids`
    /// runs its program again. Returns the output and the times (mono) around the restore.
    #[track_caller]
    pub fn restore(&mut self, pids: &[i32], policy: Option<&str>) -> (CrustOutput, f64, f64) {
        self.restore_with(pids, policy, false)
    }

    /// `restore`; with `piped`, crust's stdout and stderr are pipes read to their end (as a
    /// script capturing its output does), so the restore counts as done only when nothing
    /// holds them any more.
    #[track_caller]
    pub fn restore_with(&mut self, pids: &[i32], policy: Option<&str>, piped: bool) -> (CrustOutput, f64, f64) {
        let img = self.w.image_dir.to_string_lossy().into_owned();
        let mut args = vec!["restore", "-d", "-D", &img];
        if let Some(p) = policy {
            args.extend(["--lease-policy", p]);
        }
        let t0 = mono();
        let out = if piped {
            let start = Instant::now();
            let o = crust_command()
                .args(&args)
                .envs(self.w.crust_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .output()
                .expect("run crust restore");
            CrustOutput {
                args: args.iter().map(|a| a.to_string()).collect(),
                status: o.status,
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                elapsed: start.elapsed(),
            }
        } else {
            crust_env(&args, &self.w.crust_env)
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
    pub fn start_go(&self) {
        fs::write(self.w.go_path(), b"go\n").unwrap();
    }

    /// `.go` (again) and waits for the root: it must PASS.
    #[track_caller]
    pub fn finish(&mut self) -> GoResult {
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
pub fn image_leases(img: &Path) -> Vec<serde_json::Value> {
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
pub fn image_lease(img: &Path) -> serde_json::Value {
    let mut l = image_leases(img);
    assert_eq!(l.len(), 1, "expected one lease in the image: {l:#?}");
    l.remove(0)
}

pub fn json_u(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

pub fn json_b(v: &serde_json::Value, key: &str) -> bool {
    v.get(key).and_then(|x| x.as_bool()).unwrap_or(false)
}

pub fn json_s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

pub fn json_pids(v: &serde_json::Value, key: &str) -> Vec<i64> {
    v.get(key).and_then(|x| x.as_array()).map(|a| a.iter().filter_map(|p| p.as_i64()).collect()).unwrap_or_default()
}

/// TimeMethod of the image format (proto/crust_image.proto): crust show prints the number.
pub const TIME_TRACEFS: u64 = 1;
/// How long a blocked breaker had been waiting, measured before the freeze.
pub const TIME_BREAKER_WAIT: u64 = 2;
/// No measure: the whole lease-break-time.
pub const TIME_ASSUMED_FULL: u64 = 3;
/// Set by `crust lease` or a restore policy.
pub const TIME_EDITED: u64 = 4;
/// A break crust restarted at an earlier restore: the deadline crust gave the kernel.
pub const TIME_RESTORED_DEADLINE: u64 = 5;

// ---------------------------------------------------------------------------------
// A break in progress (tests/workloads/lease_break.c)
// ---------------------------------------------------------------------------------

/// What a lease_break run is made of.
pub struct Break<'a> {
    pub lease: &'a str,
    pub access: &'a str,
    pub breakers: &'a str,
    pub flags: &'a str,
    /// Seconds after the first breaker's start at which to dump.
    pub dump_at: f64,
    /// Seconds between dump and restore.
    pub pause: f64,
    /// Restore with crust's output read through pipes (see `LeaseTree::restore_with`).
    pub piped: bool,
}

impl Break<'_> {
    pub fn new(lease: &'static str, access: &'static str, breakers: &'static str) -> Break<'static> {
        Break { lease, access, breakers, flags: "-", dump_at: 2.0, pause: 1.0, piped: false }
    }
}

/// One lease_break run up to the restore.
pub struct BreakRun {
    pub t: LeaseTree,
    pub data: PathBuf,
    pub holder: i32,
    pub breakers: Vec<i32>,
    pub break_start: f64,
    pub dump: (f64, f64),
    pub restore: (f64, f64),
    pub lease: Option<serde_json::Value>,
    pub locks_at_dump: Vec<String>,
    pub restore_out: String,
}

impl BreakRun {
    /// Starts the tree, waits until `dump_at` s into the break, dumps, records the image's
    /// lease, waits `pause` s, and restores with `policy`. `before_dump` runs right before the
    /// dump (extra checks on the live tree).
    pub fn run(env: &LeaseEnv, b: &Break, policy: Option<&str>, before_dump: impl FnOnce(&LeaseTree)) -> BreakRun {
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

    pub fn lease(&self) -> &serde_json::Value {
        self.lease.as_ref().unwrap_or_else(|| panic!("no lease in the image\n{}", self.t.context()))
    }

    /// The image's remaining break time, seconds.
    pub fn remaining(&self) -> f64 {
        json_u(self.lease(), "remaining_ms") as f64 / 1000.0
    }

    /// The image records the lease's pre-break type, target, breakers and a remaining time
    /// that matches the moment of the dump (L minus the time since the break started).
    #[track_caller]
    pub fn assert_image(&self, env: &LeaseEnv, write: bool, to_unlock: bool, breakers: &[i32]) {
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
    pub fn assert_after_restore(&self, what: &str, t: f64, remaining: f64) {
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
    pub fn opened(&self, i: usize) -> f64 {
        let l = self.t.line(&format!("OPENED b{i} "));
        assert!(field_i(&l, "rc") >= 0, "breaker b{i}'s open failed: {l}\n{}", self.t.context());
        field_f(&l, "t")
    }

    /// The first FDINFO line (after .go) with value `v` ("none", "ACTIVE READ"...): its time.
    pub fn fdinfo_time(&self, v: &str) -> Option<f64> {
        self.t
            .lines("FDINFO ")
            .iter()
            .find(|l| l.strip_prefix("FDINFO v=").is_some_and(|r| r.starts_with(&format!("{v} t="))))
            .map(|l| field_f(l, "t"))
    }

    pub fn signals(&self) -> Vec<String> {
        self.t.lines("SIGNAL holder ")
    }

    pub fn done(&self) -> String {
        self.t.line("DONE ")
    }
}

pub fn unlock_break_lines(holder: i32, breakers: &[(&str, i32)]) -> Vec<String> {
    let mut v = vec![format!("LEASE BREAKING UNLCK {holder}")];
    v.extend(breakers.iter().map(|(ty, p)| format!("-> LEASE BREAKER {ty} {p}")));
    v
}

/// crust-leasewake, the detached process that makes the kernel look at restored deadlines,
/// holds nothing but pidfds of the restored holders and /dev/null (no /proc/PID/mem, no
/// pipe or file of crust's caller, no leased file).
pub fn assert_leasewake_holds_only_pidfds() {
    let out = std::process::Command::new("pgrep").args(["-x", "crust-leasewake"]).output().unwrap();
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(!pids.is_empty(), "no crust-leasewake runs after a restored break");
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue }; // ended meanwhile
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy().into_owned();
            assert!(
                target == "/dev/null" || target == "anon_inode:[pidfd]",
                "crust-leasewake {pid} holds fd {} -> {target}",
                fd.file_name().to_string_lossy()
            );
        }
    }
}
