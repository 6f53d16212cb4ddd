//! Test harness for crust's checkpoint/restore integration tests.
//!
//! * `build_workload` compiles `tests/workloads/NAME.c` with gcc (cached by content hash).
//! * `Workload` runs one process under test in a private temp dir, drives the
//!   READY / `.go` / PASS protocol (see `tests/workloads/common.h`), runs `crust dump` /
//!   `crust restore`, and on drop kills only the pids this test started.
//! * `ProcSnapshot` records the parts of `/proc/PID` that must be identical after a
//!   restore; `assert_same_proc` compares two snapshots, minus the fields listed in
//!   `LEGITIMATE_DIFFERENCES` and those a test lists explicitly.
//!
//! The test process makes itself a child subreaper, so a process restored with
//! `crust restore -d` becomes its child when crust exits and can be reaped.
//!
//! Set `CRUST_TEST_KEEP=1` to keep the temp dirs (images, logs) of the tests.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
pub const GO_TIMEOUT: Duration = Duration::from_secs(20);
pub const CRUST_TIMEOUT: Duration = Duration::from_secs(120);
pub const GONE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn crust_bin() -> &'static str {
    env!("CARGO_BIN_EXE_crust")
}

/// A command running crust with this test's journal directory: crust runs share their
/// journals of created files (the next run repairs what a killed restore left), so tests that
/// kill a restore would see their leftovers removed by a test running in parallel.
pub fn crust_command() -> Command {
    let mut cmd = Command::new(crust_bin());
    cmd.env("RUST_BACKTRACE", "1").env("CRUST_JOURNAL_DIR", journal_dir());
    cmd
}

/// This test process's own journal directory (nextest runs each test in its own process).
pub fn journal_dir() -> PathBuf {
    PathBuf::from(format!("/run/crust/test-journals/{}", std::process::id()))
}

/// Per-process setup: become a child subreaper (restored processes are re-parented
/// to us when a detached `crust restore` exits).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
    });
}

// ---------------------------------------------------------------------------------
// Building workloads
// ---------------------------------------------------------------------------------

fn workloads_src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("workloads")
}

/// Where the workloads are built: under the system's temporary directory, not the target
/// directory, because some workloads run as nobody and a restore opens their binary with the
/// image's credentials: a clone under a private (0700) directory would refuse them for that
/// instead of what the test checks. Binaries are named by a hash of their source and flags, so
/// clones and test processes share them safely.
fn workloads_out_dir() -> PathBuf {
    std::env::temp_dir().join("crust-test-workloads")
}

/// Flags from a `// CFLAGS: ...` / `// LDFLAGS: ...` line at the top of the source.
fn marker_flags(src: &str, marker: &str) -> Vec<String> {
    src.lines()
        .take(5)
        .filter_map(|l| l.trim().strip_prefix("//").map(str::trim))
        .filter_map(|l| l.strip_prefix(marker))
        .flat_map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// Every header in tests/workloads (name and contents, sorted by name): a workload may
/// include any of them, so a change to any header rebuilds every workload.
fn workload_headers() -> Vec<(String, String)> {
    let dir = workloads_src_dir();
    let mut headers: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension() == Some(OsStr::new("h")))
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (p.file_name().unwrap_or_default().to_string_lossy().into_owned(), text)
        })
        .collect();
    headers.sort();
    headers
}

/// Compile `tests/workloads/NAME.c` and return the binary's path.
///
/// Binaries live in `target/workloads/<hash>/NAME`, where the hash covers the source,
/// every header of tests/workloads and the flags: a changed source gets a new binary, and
/// a binary that is in use (or in a checkpoint image) is never replaced. Compilation goes
/// to a temp name that is hard-linked into place, so parallel test processes can race
/// safely.
pub fn build_workload(name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());

    let src_path = workloads_src_dir().join(format!("{name}.c"));
    let src = fs::read_to_string(&src_path).unwrap_or_else(|e| panic!("cannot read workload source {}: {e}", src_path.display()));
    let headers = workload_headers();
    let mut cflags: Vec<String> = ["-O1", "-g", "-Wall", "-Wextra"].iter().map(|s| s.to_string()).collect();
    cflags.extend(marker_flags(&src, "CFLAGS:"));
    let ldflags = marker_flags(&src, "LDFLAGS:");

    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&src, &headers, &cflags, &ldflags).hash(&mut h);
    let dir = workloads_out_dir().join(format!("{:016x}", h.finish()));
    let bin = dir.join(name);
    if bin.exists() {
        return bin;
    }
    fs::create_dir_all(&dir).unwrap();
    for d in [workloads_out_dir(), dir.clone()] {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
    }
    let tmp = dir.join(format!(".{name}.{}.{}", std::process::id(), unique()));
    let out = Command::new("gcc")
        .args(&cflags)
        .arg("-I")
        .arg(workloads_src_dir())
        .arg("-o")
        .arg(&tmp)
        .arg(&src_path)
        .args(&ldflags)
        .stdin(Stdio::null())
        .output()
        .expect("run gcc");
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!("gcc failed for {}:\n{}{}", src_path.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    // Linked, not renamed, into place: a rename would replace a binary that another test
    // process compiled at the same time and may already run, leaving that process with a
    // deleted executable (which crust refuses to dump). The first link wins; the others
    // use its binary.
    match fs::hard_link(&tmp, &bin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot link {} to {}: {e}", tmp.display(), bin.display()),
    }
    let _ = fs::remove_file(&tmp);
    bin
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------

pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("crust-test-{label}-{}-{}-{:x}", std::process::id(), unique(), now_nanos() & 0xffff_ffff));
        fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CRUST_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    // SAFETY: strsignal returns a pointer to a static or thread-local NUL-terminated string.
    let p = unsafe { libc::strsignal(sig) };
    if p.is_null() {
        return format!("signal {sig}");
    }
    // SAFETY: `p` is the non-null NUL-terminated string strsignal returned.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn decode_wait_status(st: i32) -> Exit {
    if libc::WIFEXITED(st) { Exit::Code(libc::WEXITSTATUS(st)) } else { Exit::Signal(libc::WTERMSIG(st)) }
}

/// waitpid(pid) with a timeout. Only for our children (or re-parented orphans).
pub fn waitpid_timeout(pid: i32, timeout: Duration) -> Option<Exit> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes one int into `st`, a live local.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            return Some(decode_wait_status(st));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            panic!("waitpid({pid}): {e}");
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Is `pid` one of our (unreaped) children?
pub fn is_our_child(pid: i32) -> bool {
    proc_status_field(pid, "PPid").map(|p| p.trim() == std::process::id().to_string()).unwrap_or(false)
}

pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Value of a field of /proc/PID/status.
pub fn proc_status_field(pid: i32, key: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
}

/// First letter of the State: field (R, S, D, T, t, Z, X...), None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    proc_status_field(pid, "State").and_then(|s| s.chars().next())
}

/// Waits until `cond` holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until /proc/PID is gone; reaps it first if it is our zombie child.
/// Returns false if it is still there after `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_exists(pid) {
            return true;
        }
        if is_our_child(pid) {
            let mut st = 0;
            // SAFETY: waitpid writes one int into `st`, a live local.
            unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        }
        if Instant::now() >= deadline {
            return !pid_exists(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------
// Process trees and pidfds
// ---------------------------------------------------------------------------------

/// After a dump that kills the tree: every process of `pidfds` but `root` (reaped by its
/// Workload) died of SIGKILL and is reaped (they are the test's, as child subreaper), within
/// GONE_TIMEOUT. `out` is shown on failure.
#[track_caller]
pub fn assert_killed_by_dump(pidfds: &BTreeMap<i32, OwnedFd>, root: i32, out: &dyn fmt::Display) {
    let deadline = Instant::now() + GONE_TIMEOUT;
    for (&pid, fd) in pidfds.iter().filter(|(p, _)| **p != root) {
        while !pidfd_reaped(fd) {
            if let Some(e) = pidfd_try_reap(fd) {
                assert_eq!(e, Exit::Signal(libc::SIGKILL), "pid {pid} ended with {e} after the dump");
                break;
            }
            assert!(Instant::now() < deadline, "pid {pid} still exists after the dump:\n{out}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Children of every task of `pid` (from /proc/PID/task/TID/children).
pub fn children_of(pid: i32) -> Vec<i32> {
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

/// What /proc/PID/stat says about a process's place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    /// Field 52: the wait status of a zombie (0 for a live process).
    pub exit_code: i64,
}

pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // rest[i] is field i + 3
    Some(ProcInfo {
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        comm: s[open + 1..close].to_string(),
        exit_code: rest.get(49).and_then(|v| v.parse().ok()).unwrap_or(-1),
    })
}

pub fn is_live_state(c: char) -> bool {
    matches!(c, 'R' | 'S' | 'D')
}

/// Holds a pidfd for `root` and each of its descendants now, and returns them (root
/// first, breadth first). A descendant is held only if, once its pidfd is open, it is still
/// the child of a process already held: no pid reused by someone else is ever taken.
pub fn adopt_tree(root: i32, pidfds: &mut BTreeMap<i32, OwnedFd>) -> Vec<i32> {
    if let std::collections::btree_map::Entry::Vacant(e) = pidfds.entry(root)
        && let Some(fd) = pidfd_open(root)
    {
        e.insert(fd);
    }
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    let mut seen = BTreeSet::new();
    while let Some(pid) = queue.pop_front() {
        if !seen.insert(pid) || !pid_exists(pid) {
            continue;
        }
        out.push(pid);
        for c in children_of(pid) {
            if let std::collections::btree_map::Entry::Vacant(e) = pidfds.entry(c) {
                match pidfd_open(c) {
                    Some(fd) if proc_info(c).map(|i| i.ppid) == Some(pid) => {
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

/// A pidfd for `pid` (None if it does not exist). Signals and waits through a pidfd can
/// never reach another process that reused the pid.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes integers only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// pidfd_send_signal; Err(errno) on failure (ESRCH once the process was reaped).
pub fn pidfd_signal(fd: &OwnedFd, sig: i32) -> Result<(), i32> {
    // SAFETY: a valid pidfd, a signal number, a null siginfo (allowed) and no flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(()) }
}

/// Has the process exited (zombie or reaped)?
pub fn pidfd_exited(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, a live local, and a zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// Has the process been reaped (by anyone)?
pub fn pidfd_reaped(fd: &OwnedFd) -> bool {
    pidfd_signal(fd, 0) == Err(libc::ESRCH)
}

/// waitid(P_PIDFD, WEXITED|WNOHANG|__WALL|extra): the pid and siginfo of an exited child.
fn pidfd_waitid(fd: &OwnedFd, extra: i32) -> Option<libc::siginfo_t> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t into `info`, a live local.
    let r = unsafe {
        libc::waitid(libc::P_PIDFD, fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::__WALL | extra)
    };
    // SAFETY: waitid filled `info` for a child (si_pid is 0 if none had exited).
    (r == 0 && unsafe { info.si_pid() } != 0).then_some(info)
}

/// Reaps the process behind `fd` if it is our exited child; its exit.
pub fn pidfd_try_reap(fd: &OwnedFd) -> Option<Exit> {
    let info = pidfd_waitid(fd, 0)?;
    // SAFETY: `info` was filled by waitid for an exited child.
    let status = unsafe { info.si_status() };
    Some(if info.si_code == libc::CLD_EXITED { Exit::Code(status) } else { Exit::Signal(status) })
}

/// Is the exited process behind `fd` a zombie waiting for us to reap it?
pub fn is_zombie_of_ours(fd: &OwnedFd) -> bool {
    pidfd_waitid(fd, libc::WNOWAIT).is_some()
}

/// The thread ids of `pid` (/proc/PID/task), sorted as strings.
pub fn task_ids(pid: i32) -> Vec<String> {
    let mut tids: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    tids.sort();
    tids
}

/// The syscall number a sleeping task is blocked in (first field of /proc/PID/syscall).
pub fn blocked_syscall(pid: i32) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

pub const SYS_READ: i64 = 0;
pub const SYS_CLOCK_NANOSLEEP: i64 = 230;

/// Waits until the task sleeps (state S) in syscall `nr`.
pub fn wait_in_syscall(pid: i32, nr: i64, timeout: Duration) {
    wait_until(&format!("pid {pid} to block in syscall {nr}"), timeout, || {
        proc_state(pid) == Some('S') && blocked_syscall(pid) == Some(nr)
    });
}

/// Reads a u64 from the memory of `pid` (needs ptrace access: we are root).
pub fn read_mem_u64(pid: i32, addr: u64) -> u64 {
    let f = fs::File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| panic!("open /proc/{pid}/mem: {e}"));
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).unwrap_or_else(|e| panic!("read /proc/{pid}/mem at {addr:#x}: {e}"));
    u64::from_ne_bytes(b)
}

/// Parses `key=0x1234` out of a READY line.
pub fn ready_field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(String::from))
}

pub fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// Marks every inherited fd >= 3 close-on-exec in a child between fork and exec, so
/// that workloads get exactly stdin, stdout and stderr (cargo/nextest may leak e.g.
/// jobserver pipes, which the dumper would rightly refuse).
fn cloexec_inherited_fds(cmd: &mut Command) {
    // SAFETY: the pre_exec closure only makes one async-signal-safe raw system call.
    unsafe {
        cmd.pre_exec(|| {
            // close_range(3, ~0U, CLOSE_RANGE_CLOEXEC)
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------
// crust invocations
// ---------------------------------------------------------------------------------

pub struct CrustOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CrustOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn exit(&self) -> Exit {
        match self.status.code() {
            Some(c) => Exit::Code(c),
            None => Exit::Signal(self.status.signal().unwrap_or(0)),
        }
    }
    /// stdout and stderr together (for message checks).
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "crust failed:\n{self}");
        self
    }
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(!self.success(), "crust was expected to fail but succeeded:\n{self}");
        self
    }
}

impl fmt::Display for CrustOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ crust {}   [{}, {:.2?}]", self.args.join(" "), self.exit(), self.elapsed)?;
        writeln!(f, "--- stdout ---\n{}", tail(&self.stdout, 6000))?;
        write!(f, "--- stderr ---\n{}", tail(&self.stderr, 6000))
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `crust ARGS` to completion (stdin /dev/null, output captured through files),
/// killing it after `CRUST_TIMEOUT`.
pub fn crust<I, S>(args: I) -> CrustOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    crust_env(args, &[])
}

/// `crust`, with these variables added to crust's environment (test-only switches such as
/// `CRUST_LEASE_NO_TRACEFS=1` or `CRUST_FAULT=...`).
pub fn crust_env<I, S>(args: I, env: &[(String, String)]) -> CrustOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let tmp = TempDir::new("crust-out");
    let (out_path, err_path) = (tmp.path.join("stdout"), tmp.path.join("stderr"));
    let mut cmd = crust_command();
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .envs(env.iter().map(|(k, v)| (k, v)));
    cloexec_inherited_fds(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn crust");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait crust") {
            break st;
        }
        if start.elapsed() > CRUST_TIMEOUT {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let o = CrustOutput {
                args: args.clone(),
                status: st,
                stdout: fs::read_to_string(&out_path).unwrap_or_default(),
                stderr: fs::read_to_string(&err_path).unwrap_or_default(),
                elapsed: start.elapsed(),
            };
            panic!("crust did not finish within {CRUST_TIMEOUT:?} (killed):\n{o}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    CrustOutput {
        args,
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Does `text` contain `word` as a whole token (delimited by non-alphanumerics)?
/// Used to check that messages name a pid / fd number.
pub fn has_token(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric()).any(|t| t == word)
}

// ---------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------

/// A restore started without `-d`: crust waits for the restored process.
pub struct AttachedRestore {
    pub child: Child,
    pub out_path: PathBuf,
    pub err_path: PathBuf,
    pub started: Instant,
}

pub struct GoResult {
    pub exit: Exit,
    pub status_text: String,
    pub log: String,
    /// Output of the attached `crust restore`, if the process was restored that way.
    pub crust_output: Option<String>,
}

impl GoResult {
    #[track_caller]
    pub fn assert_pass(&self) -> &Self {
        let last = self.status_text.lines().last().unwrap_or("");
        assert!(
            self.exit == Exit::Code(0) && last.starts_with("PASS"),
            "workload did not PASS after restore: {}\n--- status file ---\n{}\n--- workload log ---\n{}{}",
            self.exit,
            self.status_text,
            tail(&self.log, 4000),
            self.crust_output.as_deref().map(|o| format!("\n--- crust restore ---\n{o}")).unwrap_or_default()
        );
        self
    }
}

pub struct Workload {
    pub name: String,
    pub dir: TempDir,
    pub status_path: PathBuf,
    pub log_path: PathBuf,
    pub image_dir: PathBuf,
    pub pid: i32,
    /// The READY line (first line starting with READY).
    pub ready_line: String,
    /// pids this test started (or restored) and has not reaped yet
    owned: BTreeSet<i32>,
    binary: Option<PathBuf>,
    /// /proc/PID/exe of the original process
    pub exe: PathBuf,
    /// our end of the workload's stdout, when a test asked for Stdio::piped()
    pub piped_stdout: Option<std::process::ChildStdout>,
    pub attached: Option<AttachedRestore>,
    /// Added to the environment of every `crust` this workload runs (dump and restore).
    pub crust_env: Vec<(String, String)>,
    /// Options added to every `crust restore` of this workload (e.g. `--lazy-pages`).
    pub restore_extra: Vec<String>,
}

impl Workload {
    /// Builds and starts tests/workloads/NAME.c with `STATUS ARGS...`, stdin /dev/null,
    /// stdout+stderr to a log file, and waits for READY.
    pub fn spawn(name: &str, args: &[&str]) -> Workload {
        init();
        let bin = build_workload(name);
        let dir = TempDir::new(name);
        let status_path = dir.path.join("status");
        let mut cmd = Command::new(&bin);
        cmd.arg(&status_path).args(args);
        let mut w = Workload::start(name, dir, cmd, Some(bin));
        w.wait_ready();
        w
    }

    /// Starts an arbitrary program (not following the READY protocol) the same way:
    /// stdin /dev/null, stdout+stderr to `DIR/log`, in a fresh temp dir (its cwd).
    pub fn spawn_program(label: &str, program: &str, args: &[&str]) -> Workload {
        Workload::spawn_program_with(label, program, args, |_| {})
    }

    /// Like `spawn_program`, with a hook to change the Command (e.g. its stdout) last.
    pub fn spawn_program_with(label: &str, program: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Workload {
        init();
        let dir = TempDir::new(label);
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(&dir.path);
        Workload::start_with(label, dir, cmd, None, configure)
    }

    fn start(name: &str, dir: TempDir, cmd: Command, binary: Option<PathBuf>) -> Workload {
        Workload::start_with(name, dir, cmd, binary, |_| {})
    }

    fn start_with(name: &str, dir: TempDir, mut cmd: Command, binary: Option<PathBuf>, configure: impl FnOnce(&mut Command)) -> Workload {
        let status_path = dir.path.join("status");
        let log_path = dir.path.join("log");
        let image_dir = dir.path.join("img");
        fs::create_dir_all(&image_dir).unwrap();
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        cloexec_inherited_fds(&mut cmd);
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pid = child.id() as i32;
        let piped_stdout = child.stdout.take();
        drop(child); // we reap by pid ourselves
        let mut owned = BTreeSet::new();
        owned.insert(pid);
        // spawn() returns after the exec succeeded, so this is the program's exe
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        Workload {
            piped_stdout,
            exe,
            name: name.to_string(),
            dir,
            status_path,
            log_path,
            image_dir,
            pid,
            ready_line: String::new(),
            owned,
            binary,
            attached: None,
            crust_env: Vec::new(),
            restore_extra: Vec::new(),
        }
    }

    pub fn status_text(&self) -> String {
        fs::read_to_string(&self.status_path).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn go_path(&self) -> PathBuf {
        let mut p = self.status_path.clone().into_os_string();
        p.push(".go");
        PathBuf::from(p)
    }

    /// Workloads append each status line with open/write/close, and a line is visible before
    /// the close: snapshots taken right after READY could catch the status file open. Waits
    /// (1 s at most; a workload may keep it open on purpose) until the process closed it.
    fn wait_status_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let open = || {
            fs::read_dir(format!("/proc/{}/fd", self.pid))
                .map(|d| d.flatten().any(|e| fs::read_link(e.path()).is_ok_and(|l| l == self.status_path)))
                .unwrap_or(false)
        };
        while open() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = self.status_text();
            if let Some(l) = text.lines().find(|l| l.starts_with("READY")) {
                self.ready_line = l.to_string();
                self.wait_status_closed();
                return;
            }
            if let Some(l) = text.lines().find(|l| l.starts_with("FAIL")) {
                panic!("workload {} failed before READY: {l}\n--- log ---\n{}", self.name, self.log_text());
            }
            if let Some(e) = self.try_reap(self.pid) {
                panic!("workload {} exited before READY ({e})\n--- status ---\n{text}\n--- log ---\n{}", self.name, self.log_text());
            }
            if Instant::now() >= deadline {
                panic!(
                    "workload {} not READY within {READY_TIMEOUT:?}\n--- status ---\n{text}\n--- log ---\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a status line starting with `prefix` and returns it.
    pub fn wait_status_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.status_text().lines().find(|l| l.starts_with(prefix)) {
                return l.to_string();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no '{prefix}' line from {} within {timeout:?}\n--- status ---\n{}\n--- log ---\n{}",
                    self.name,
                    self.status_text(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn try_reap(&mut self, pid: i32) -> Option<Exit> {
        let mut st = 0;
        // SAFETY: waitpid writes one int into `st`, a live local.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            self.owned.remove(&pid);
            Some(decode_wait_status(st))
        } else {
            None
        }
    }

    pub fn ready_field(&self, key: &str) -> String {
        ready_field(&self.ready_line, key).unwrap_or_else(|| panic!("READY line lacks {key}=: {}", self.ready_line))
    }

    pub fn snapshot(&self) -> ProcSnapshot {
        ProcSnapshot::take(self.pid)
    }

    // --- dump ----------------------------------------------------------------------

    /// `crust dump -t PID -D IMG [extra]`, no assertions.
    pub fn dump_with(&self, extra: &[&str]) -> CrustOutput {
        let pid = self.pid.to_string();
        let img = self.image_dir.to_string_lossy().into_owned();
        let mut args = vec!["dump", "-t", &pid, "-D", &img];
        args.extend_from_slice(extra);
        crust_env(args, &self.crust_env)
    }

    /// Dumps (must succeed), then reaps the killed original and checks it is gone.
    #[track_caller]
    pub fn dump(&mut self) -> CrustOutput {
        self.dump_killing(&[])
    }

    /// `crust dump` with `extra` options, which must succeed and kill the process (reaped).
    pub fn dump_killing(&mut self, extra: &[&str]) -> CrustOutput {
        let out = self.dump_with(extra);
        assert!(out.success(), "dump of {} (pid {}) failed:\n{out}\n--- workload log ---\n{}", self.name, self.pid, self.log_text());
        let pid = self.pid;
        if self.owned.contains(&pid) {
            match waitpid_timeout(pid, GONE_TIMEOUT) {
                Some(e) => {
                    self.owned.remove(&pid);
                    assert_eq!(e, Exit::Signal(libc::SIGKILL), "after dump the original should be SIGKILLed, it ended with {e}\n{out}");
                }
                None => panic!("pid {pid} still running {GONE_TIMEOUT:?} after a successful dump (state {:?}):\n{out}", proc_state(pid)),
            }
        }
        assert!(wait_gone(pid, GONE_TIMEOUT), "/proc/{pid} still exists after dump");
        out
    }

    // --- restore -------------------------------------------------------------------

    fn restore_args(&self, detached: bool) -> Vec<String> {
        let mut a = vec!["restore".to_string()];
        if detached {
            a.push("-d".into());
        }
        a.extend(self.restore_extra.iter().cloned());
        a.push("-D".into());
        a.push(self.image_dir.to_string_lossy().into_owned());
        a
    }

    /// `crust restore -d -s -D IMG`: the tree is restored and left stopped (SIGCONT resumes it),
    /// so that its state can be compared before it runs.
    pub fn restore_stopped(&mut self) -> CrustOutput {
        let mut args = self.restore_args(true);
        args.insert(1, "--leave-stopped".into());
        let out = crust_env(args, &self.crust_env);
        self.adopt_if_restored();
        assert!(out.success(), "restore -d -s of {} failed:\n{out}", self.name);
        assert_eq!(proc_state(self.pid), Some('T'), "restored pid {} is not stopped:\n{out}", self.pid);
        out
    }

    /// `crust restore -d -D IMG`, no assertions (but a process that appears is owned).
    pub fn restore_detached_raw(&mut self) -> CrustOutput {
        let out = crust_env(self.restore_args(true), &self.crust_env);
        self.adopt_if_restored();
        out
    }

    /// `crust restore -d -D IMG`: must succeed, and the process must run with the old pid.
    #[track_caller]
    pub fn restore_detached(&mut self) -> CrustOutput {
        let out = crust_env(self.restore_args(true), &self.crust_env);
        self.adopt_if_restored();
        assert!(out.success(), "restore -d of {} failed:\n{out}", self.name);
        let pid = self.pid;
        assert!(pid_exists(pid), "crust restore -d succeeded but pid {pid} does not exist:\n{out}");
        let st = proc_state(pid);
        assert!(
            matches!(st, Some('R' | 'S' | 'D')),
            "restored pid {pid} is in state {st:?}, expected running/sleeping:\n{out}\n--- status file ---\n{}\n--- log ---\n{}",
            self.status_text(),
            self.log_text()
        );
        out
    }

    fn adopt_if_restored(&mut self) {
        let pid = self.pid;
        if pid_exists(pid) {
            self.owned.insert(pid);
        }
    }

    /// `crust restore -D IMG` in the background; waits until the pid exists again.
    #[track_caller]
    pub fn restore_attached(&mut self) {
        let (out_path, err_path) = (self.dir.path.join("restore.stdout"), self.dir.path.join("restore.stderr"));
        let mut cmd = crust_command();
        cmd.args(self.restore_args(false))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .envs(self.crust_env.iter().map(|(k, v)| (k, v)));
        cloexec_inherited_fds(&mut cmd);
        let mut child = cmd.spawn().expect("spawn crust restore");
        let started = Instant::now();
        let pid = self.pid;
        let deadline = started + CRUST_TIMEOUT;
        let mut stable = 0;
        loop {
            if self.looks_restored() {
                // seen restored twice in a row, 50 ms apart
                stable += 1;
                if stable >= 2 {
                    self.owned.insert(pid);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            stable = 0;
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "crust restore exited ({st}) before pid {pid} was running:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    fs::read_to_string(&out_path).unwrap_or_default(),
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("pid {pid} did not appear within {CRUST_TIMEOUT:?} of crust restore");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.attached = Some(AttachedRestore { child, out_path, err_path, started });
    }

    /// The pid exists, runs the original program, is not traced or stopped, and crust's
    /// own binary is no longer mapped in it (crust creates the process as a copy of itself
    /// first, so this is how a test can tell the restore is complete).
    pub fn looks_restored(&self) -> bool {
        let pid = self.pid;
        if !pid_exists(pid) {
            return false;
        }
        let exe_ok = fs::read_link(format!("/proc/{pid}/exe")).map(|e| e == self.exe).unwrap_or(false);
        let untraced = proc_status_field(pid, "TracerPid").as_deref() == Some("0");
        let running = matches!(proc_state(pid), Some('R' | 'S' | 'D'));
        let no_crust = fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| !m.contains(crust_bin())).unwrap_or(false);
        exe_ok && untraced && running && no_crust
    }

    /// Output of the attached restore so far.
    pub fn attached_output(&self) -> String {
        match &self.attached {
            Some(a) => format!(
                "--- crust restore stdout ---\n{}\n--- crust restore stderr ---\n{}",
                fs::read_to_string(&a.out_path).unwrap_or_default(),
                fs::read_to_string(&a.err_path).unwrap_or_default()
            ),
            None => String::new(),
        }
    }

    /// Waits for the attached `crust restore` to exit; returns its exit.
    pub fn wait_attached(&mut self, timeout: Duration) -> Exit {
        let a = self.attached.as_mut().expect("no attached restore");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = a.child.try_wait().unwrap() {
                // the restored process was crust's child: crust reaped it
                self.owned.remove(&self.pid);
                return match st.code() {
                    Some(c) => Exit::Code(c),
                    None => Exit::Signal(st.signal().unwrap_or(0)),
                };
            }
            if Instant::now() >= deadline {
                panic!("attached crust restore did not exit within {timeout:?}\n{}", self.attached_output());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // --- verification ----------------------------------------------------------------

    /// Creates `<status>.go`, waits for the process to exit and returns how it ended.
    /// For an attached restore, the exit is crust's (which must be the process's).
    pub fn go(&mut self) -> GoResult {
        fs::write(self.go_path(), b"go\n").unwrap();
        let pid = self.pid;
        let (exit, crust_output) = if self.attached.is_some() {
            let e = self.wait_attached(GO_TIMEOUT);
            (e, Some(self.attached_output()))
        } else {
            let e = if self.owned.contains(&pid) || is_our_child(pid) {
                match waitpid_timeout(pid, GO_TIMEOUT) {
                    Some(e) => e,
                    None => panic!(
                        "pid {pid} did not exit within {GO_TIMEOUT:?} after .go (state {:?})\n--- status ---\n{}\n--- log ---\n{}",
                        proc_state(pid),
                        self.status_text(),
                        self.log_text()
                    ),
                }
            } else {
                panic!(
                    "pid {pid} is not our child (PPid {:?}); cannot wait for it\n--- status ---\n{}",
                    proc_status_field(pid, "PPid"),
                    self.status_text()
                );
            };
            self.owned.remove(&pid);
            (e, None)
        };
        GoResult { exit, status_text: self.status_text(), log: self.log_text(), crust_output }
    }

    /// Sends `sig` to the workload's pid (which must be ours).
    pub fn signal(&self, sig: i32) {
        assert!(self.owned.contains(&self.pid) || self.attached.is_some(), "pid {} is not ours", self.pid);
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Reap (or forget) the pid after the test killed it itself.
    pub fn reap(&mut self, timeout: Duration) -> Option<Exit> {
        let pid = self.pid;
        if self.attached.is_some() {
            return Some(self.wait_attached(timeout));
        }
        let r = waitpid_timeout(pid, timeout);
        if r.is_some() {
            self.owned.remove(&pid);
        }
        r
    }

    /// Marks a pid as ours (e.g. a second process the test started).
    pub fn own(&mut self, pid: i32) {
        self.owned.insert(pid);
    }

    pub fn binary(&self) -> Option<&Path> {
        self.binary.as_deref()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Kill only pids we started or restored. A pid is safe to kill while it is our
        // unreaped child (it cannot have been reused); a pid restored by crust and still
        // crust's child is checked to be the same program first.
        let me = std::process::id().to_string();
        let crust_pid = self.attached.as_ref().map(|a| a.child.id().to_string());
        for &pid in &self.owned {
            let ppid = proc_status_field(pid, "PPid");
            let ours = ppid.as_deref() == Some(me.as_str()) || (crust_pid.is_some() && ppid == crust_pid);
            let same_exe = fs::read_link(format!("/proc/{pid}/exe")).map(|e| e == self.exe).unwrap_or(false);
            if ours || same_exe {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(a) = self.attached.as_mut() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        for &pid in &self.owned {
            if is_our_child(pid) {
                let _ = waitpid_timeout(pid, Duration::from_secs(5));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// /proc snapshots
// ---------------------------------------------------------------------------------

/// Fields that legitimately differ between the process before the dump and the
/// restored one. Each entry is a key or a key prefix ending in `*`.
pub const LEGITIMATE_DIFFERENCES: &[(&str, &str)] = &[
    ("status:PPid", "the restored process is a child of crust / the test (subreaper)"),
    ("status:State", "running vs sleeping depends on the moment (checked separately: not stopped)"),
    ("status:VmPeak", "peak includes the restorer's transient mappings"),
    ("status:VmHWM", "peak RSS includes the restorer's work"),
    ("status:VmRSS", "residency: file pages are faulted in lazily after restore"),
    ("status:RssAnon", "residency"),
    ("status:RssFile", "residency"),
    ("status:RssShmem", "residency"),
    ("status:VmPTE", "page-table pages follow residency"),
    ("status:voluntary_ctxt_switches", "counter"),
    ("status:nonvoluntary_ctxt_switches", "counter"),
    ("status:SigQ", "queued signals of the whole uid, other processes included"),
    ("status:FDSize", "fd-table capacity depends on the fds the restorer used temporarily"),
];

/// What must be equal between the process before the dump and after the restore.
#[derive(Debug, Clone)]
pub struct ProcSnapshot {
    pub pid: i32,
    pub entries: BTreeMap<String, String>,
}

const STAT_FIELDS: &[(usize, &str)] = &[
    (5, "pgrp"),
    (6, "session"),
    (7, "tty_nr"),
    (8, "tpgid"),
    (18, "priority"),
    (19, "nice"),
    (20, "num_threads"),
    (23, "vsize"),
    (25, "rsslim"),
    (26, "startcode"),
    (27, "endcode"),
    (28, "startstack"),
    (38, "exit_signal"),
    (40, "rt_priority"),
    (41, "policy"),
    (45, "start_data"),
    (46, "end_data"),
    (47, "start_brk"),
    (48, "arg_start"),
    (49, "arg_end"),
    (50, "env_start"),
    (51, "env_end"),
];

impl ProcSnapshot {
    pub fn take(pid: i32) -> ProcSnapshot {
        let mut e = BTreeMap::new();
        let p = format!("/proc/{pid}");
        let read = |name: &str| fs::read(format!("{p}/{name}")).ok();
        let read_s = |name: &str| read(name).map(|b| String::from_utf8_lossy(&b).into_owned());

        if let Some(s) = read_s("status") {
            for l in s.lines() {
                if let Some((k, v)) = l.split_once(':') {
                    e.insert(format!("status:{k}"), v.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
        } else {
            panic!("cannot read /proc/{pid}/status: process gone?");
        }
        if let Some(s) = read_s("stat") {
            // fields after the ")" of comm start at field 3
            if let Some(i) = s.rfind(')') {
                let rest: Vec<&str> = s[i + 1..].split_whitespace().collect();
                for &(n, name) in STAT_FIELDS {
                    if let Some(v) = rest.get(n - 3) {
                        e.insert(format!("stat:{name}"), v.to_string());
                    }
                }
            }
        }
        if let Some(s) = read_s("limits") {
            for l in s.lines().skip(1) {
                // "Max open files            1024                 4096                 files"
                let name = l.get(..26).unwrap_or(l).trim().to_string();
                let rest = l.get(26..).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
                e.insert(format!("limits:{name}"), rest);
            }
        }
        for f in ["comm", "personality", "timerslack_ns", "oom_score_adj", "loginuid", "sessionid", "cgroup"] {
            if let Some(s) = read_s(f) {
                e.insert(f.to_string(), s.trim_end().to_string());
            }
        }
        for f in ["cmdline", "environ", "auxv"] {
            if let Some(b) = read(f) {
                e.insert(f.to_string(), escape_bytes(&b));
            }
        }
        for l in ["exe", "cwd", "root"] {
            if let Ok(t) = fs::read_link(format!("{p}/{l}")) {
                e.insert(l.to_string(), t.to_string_lossy().into_owned());
            }
        }
        if let Ok(rd) = fs::read_dir(format!("{p}/ns")) {
            for d in rd.flatten() {
                if let Ok(t) = fs::read_link(d.path()) {
                    e.insert(format!("ns:{}", d.file_name().to_string_lossy()), t.to_string_lossy().into_owned());
                }
            }
        }
        if let Some(s) = read_s("sched") {
            for l in s.lines() {
                if let Some((k, v)) = l.split_once(':') {
                    let k = k.trim();
                    if k == "policy" || k == "prio" {
                        e.insert(format!("sched:{k}"), v.trim().to_string());
                    }
                }
            }
        }
        // maps: keyed by range; dev/inode kept only for regular files
        if let Some(s) = read_s("maps") {
            for l in s.lines() {
                let mut it = l.split_whitespace();
                let (range, perms, off, dev, ino) = (
                    it.next().unwrap_or(""),
                    it.next().unwrap_or(""),
                    it.next().unwrap_or(""),
                    it.next().unwrap_or(""),
                    it.next().unwrap_or(""),
                );
                let path = it.collect::<Vec<_>>().join(" ");
                let regular = path.starts_with('/') && !path.ends_with("(deleted)") && !path.starts_with("/dev/");
                let v = if regular { format!("{perms} {off} {dev} {ino} {path}") } else { format!("{perms} {off} {path}") };
                e.insert(format!("maps:{range}"), v);
            }
        }
        if let Some(s) = read_s("smaps") {
            let mut cur = String::new();
            for l in s.lines() {
                let first = l.split_whitespace().next().unwrap_or("");
                if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    cur = first.to_string();
                } else if let Some(v) = l.strip_prefix("VmFlags:") {
                    e.insert(format!("vmflags:{cur}"), v.trim().to_string());
                }
            }
        }
        // fds: pipes / sockets / anon inodes are renumbered in order of first appearance
        let mut canon: BTreeMap<String, String> = BTreeMap::new();
        let mut fds: Vec<i32> = fs::read_dir(format!("{p}/fd"))
            .map(|rd| rd.flatten().filter_map(|d| d.file_name().to_string_lossy().parse().ok()).collect())
            .unwrap_or_default();
        fds.sort();
        for fd in fds {
            let target = fs::read_link(format!("{p}/fd/{fd}")).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
            let is_path = target.starts_with('/');
            let shown = if is_path {
                target.clone()
            } else if let Some(i) = target.find(":[") {
                let n = canon.len();

                canon.entry(target.clone()).or_insert_with(|| format!("{}:#{}", &target[..i], n)).clone()
            } else {
                target.clone()
            };
            e.insert(format!("fd:{fd}"), shown);
            if let Some(info) = read_s(&format!("fdinfo/{fd}")) {
                // An epoll's watches, one "tfd:" line each: all of them, in order of target
                // fd, without the target's inode (a restored pipe or socket has a new one).
                let mut watches: Vec<String> = Vec::new();
                for l in info.lines() {
                    if let Some((k, v)) = l.split_once(':') {
                        let k = k.trim();
                        if k == "ino" && !is_path {
                            continue; // new pipe/anon inode after restore
                        }
                        if k == "eventfd-id" {
                            continue; // the kernel's lowest free number (an ida of all eventfds) at creation
                        }
                        if k == "tfd" {
                            watches.push(v.split_whitespace().filter(|w| !w.starts_with("ino:")).collect::<Vec<_>>().join(" "));
                            continue;
                        }
                        e.insert(format!("fdinfo:{fd}:{k}"), v.trim().to_string());
                    }
                }
                if !watches.is_empty() {
                    watches.sort_by_key(|w| w.split_whitespace().next().and_then(|t| t.parse::<i32>().ok()));
                    e.insert(format!("fdinfo:{fd}:tfd"), watches.join("; "));
                }
            }
        }
        ProcSnapshot { pid, entries: e }
    }

    /// Differences to `other`, skipping LEGITIMATE_DIFFERENCES and `ignore` (keys or
    /// prefixes ending in '*').
    pub fn diff(&self, other: &ProcSnapshot, ignore: &[&str]) -> Vec<String> {
        let skip = |k: &str| {
            LEGITIMATE_DIFFERENCES.iter().map(|(k, _)| *k).chain(ignore.iter().copied()).any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => k.starts_with(prefix),
                None => k == pat,
            })
        };
        let keys: BTreeSet<&String> = self.entries.keys().chain(other.entries.keys()).collect();
        let mut out = Vec::new();
        for k in keys {
            if skip(k) {
                continue;
            }
            let a = self.entries.get(k);
            let b = other.entries.get(k);
            if a != b {
                out.push(format!(
                    "{k}: before {} | after {}",
                    a.map(|s| format!("{:?}", truncate(s, 300))).unwrap_or_else(|| "<absent>".into()),
                    b.map(|s| format!("{:?}", truncate(s, 300))).unwrap_or_else(|| "<absent>".into())
                ));
            }
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut i = n;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        format!("{}...", &s[..i])
    }
}

fn escape_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() || c == b' ' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// Differences between the process before the dump and the restored one (except
/// LEGITIMATE_DIFFERENCES and `ignore`), plus a problem if it is stopped or dead.
pub fn proc_problems(before: &ProcSnapshot, after: &ProcSnapshot, ignore: &[&str]) -> Vec<String> {
    let mut problems = before.diff(after, ignore);
    let state = after.entries.get("status:State").cloned().unwrap_or_default();
    let live = state.starts_with('R') || state.starts_with('S') || state.starts_with('D');
    if !live && !ignore.contains(&"status:State") {
        problems.push(format!("status:State: restored process is '{state}', expected running or sleeping"));
    }
    problems
}

/// Asserts that the restored process looks, in /proc, exactly like before the dump,
/// except for LEGITIMATE_DIFFERENCES and `ignore`; and that it is not stopped.
#[track_caller]
pub fn assert_same_proc(before: &ProcSnapshot, after: &ProcSnapshot, ignore: &[&str]) {
    let problems = proc_problems(before, after, ignore);
    assert!(
        problems.is_empty(),
        "/proc/{} differs after restore ({} differences; legitimately different fields are not shown):\n  {}",
        after.pid,
        problems.len(),
        problems.join("\n  ")
    );
}

impl Workload {
    /// The verdict after a restore, reporting everything at once: the /proc comparison
    /// (`before` vs `after`, minus LEGITIMATE_DIFFERENCES and `ignore`), problems the test
    /// noticed itself (`extra`), and the workload's own checks (runs `go()`: PASS and exit 0).
    #[track_caller]
    pub fn verify_restored(&mut self, before: &ProcSnapshot, after: &ProcSnapshot, ignore: &[&str], extra: Vec<String>) -> GoResult {
        let mut problems = proc_problems(before, after, ignore);
        problems.extend(extra);
        let r = self.go();
        let last = r.status_text.lines().last().unwrap_or("").to_string();
        let passed = r.exit == Exit::Code(0) && last.starts_with("PASS");
        if !problems.is_empty() || !passed {
            panic!(
                "{} after restore:\n/proc and test checks: {}\n  {}\nworkload's own verdict: {} ({})\n--- status file ---\n{}--- workload log (tail) ---\n{}{}",
                self.name,
                if problems.is_empty() { "ok".to_string() } else { format!("{} problems", problems.len()) },
                problems.join("\n  "),
                if passed { "PASS" } else { "FAILED" },
                r.exit,
                r.status_text,
                tail(&r.log, 3000),
                r.crust_output.as_deref().map(|o| format!("\n--- crust restore ---\n{o}")).unwrap_or_default()
            );
        }
        r
    }
}

// ---------------------------------------------------------------------------------
// Image files
// ---------------------------------------------------------------------------------

/// All regular files below `dir`, relative paths, sorted.
pub fn image_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    walk(base, &p, out);
                } else if ft.is_file() {
                    out.push(p.strip_prefix(base).unwrap().to_path_buf());
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for rel in image_files(from) {
        let dst = to.join(&rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(from.join(&rel), &dst).unwrap();
    }
}

pub fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// True once `path` exists and holds something: a workload that writes its answer with one
/// write() after creating the file is seen only when the answer is complete, not in between.
pub fn file_written(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false)
}

/// Asserts that `pid` is alive, not stopped, not traced, and stays so for a while (every
/// thread running or sleeping): what a refused or failed dump must leave.
#[track_caller]
pub fn assert_running_untouched(pid: i32, what: &str) {
    for _ in 0..5 {
        let st = proc_state(pid);
        assert!(matches!(st, Some('R' | 'S')), "{what}: pid {pid} state {st:?}, expected R or S (running/sleeping, not stopped)");
        assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"), "{what}: pid {pid} is still traced");
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let s = fs::read_to_string(t.path().join("status")).unwrap_or_default();
                let state = s.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("").trim().to_string();
                assert!(
                    state.starts_with('R') || state.starts_with('S'),
                    "{what}: thread {} of pid {pid} is '{state}'",
                    t.file_name().to_string_lossy()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The start of a python3 program that maps memory itself: `ctypes`, `os`, `time` imported and
/// `libc.mmap` declared (returning the address).
pub const PY_MMAP_PRELUDE: &str = "import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
";

/// python3 running [`PY_MMAP_PRELUDE`] then `body`, which writes the addresses of the memory it
/// set up (hex) to `ready` in its directory: the workload, and what `ready` says (trimmed).
pub fn spawn_python_memory(label: &str, body: &str) -> (Workload, String) {
    let w = Workload::spawn_program(label, "python3", &["-c", &format!("{PY_MMAP_PRELUDE}{body}")]);
    let ready = w.dir.path.join("ready");
    wait_until(&format!("{label}: python3 to set up its memory"), Duration::from_secs(30), || file_written(&ready));
    let said = std::fs::read_to_string(&ready).unwrap().trim().to_string();
    (w, said)
}

/// Lets the program of [`spawn_python_memory`] check its memory (`go`), and asserts it found
/// every byte as it was (`result`: "contents True").
#[track_caller]
pub fn assert_python_memory_intact(w: &Workload, what: &str) {
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    let result = w.dir.path.join("result");
    wait_until("python3 to check its memory", Duration::from_secs(30), || file_written(&result));
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "contents True", "{what}");
}

/// AnonHugePages of the area starting at `start`, in kB.
pub fn area_huge_kib(pid: i32, start: u64) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let head = format!("{start:x}-");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&head)).skip(1);
    let line = lines.find(|l| l.starts_with("AnonHugePages:")).unwrap_or_else(|| panic!("no area at {start:#x} in pid {pid}"));
    line.trim_start_matches("AnonHugePages:").trim().trim_end_matches("kB").trim().parse().unwrap()
}

impl Workload {
    /// A detached restore of this workload's image that must be refused: it fails, its text
    /// names each of `names`, and it leaves no process.
    pub fn assert_restore_refused(&mut self, names: &[&str], what: &str) {
        let out = self.restore_detached_raw();
        assert!(!out.success(), "{what}: restored:\n{out}");
        for name in names {
            assert!(out.text().contains(name), "{what}: the refusal does not name {name:?}:\n{out}");
        }
        assert!(wait_gone(self.pid, GONE_TIMEOUT), "{what}: the refused restore left its process");
    }
}
