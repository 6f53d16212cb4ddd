//! File leases, exact in every case (issue 8): what happens to a lease break restored by crust
//! when the holder goes on living its life, when the tree is checkpointed again, and in the
//! cases issue 5 left out (a mapped leased file, a thread as signal owner, several breaks).
//!
//! After a restore in the middle of a break crust keeps nothing of the restored descriptions:
//! the break is restarted while the tree is frozen, with the kernel's own deadline at the
//! moment the tree resumes plus the remaining time of the image. So everything the kernel does
//! without checkpoint/restore happens again: the holder closing its lease fd, exiting, exec'ing
//! (the fd is O_CLOEXEC) lets the breakers in at once; a new breaker waits for the same
//! deadline; a second checkpoint records what is left.
//!
//! Times are checked to 0.1 s (0.05 s between breaks). The workloads (tests/workloads/
//! lease_break.c with the `gaps` flag, lease_multi.c, lease_thread.c) log a `GAP from=T0 to=T1`
//! line when their 5 ms loop was stopped for a while: T0 is their last run before the freeze
//! and T1 their first run after the restore, each within a few ms (CLOCK_MONOTONIC, the clock
//! the test reads). So the instant of each freeze and of each resume is known from inside, and:
//! - the truth at a dump: the break started between the breaker's START line and the holder's
//!   signal, its deadline is that + lease-break-time, and the time left is the deadline minus
//!   the freeze;
//! - after a restore, the deadline is the resume plus the image's remaining time.
//!
//! A breaker's open() returns when its wait in the kernel times out, and the kernel's timer
//! wheel may fire a wait of several seconds up to 256 ms late (HZ 250); or as soon as something
//! makes the kernel look at the lease (expiry is lazy): after .go the holders ask F_GETLEASE
//! every 5 ms, as a busy file server would, so a break ends at its deadline to a few ms, with
//! or without checkpoint/restore. This is why every check of a deadline is made after .go.
//!
//! Every test holds a `LeaseEnv` (tests/common/leases.rs) for its whole duration: the lease
//! tests never run at the same time, and lease-break-time is always put back.

mod common;
#[path = "common/leases.rs"]
mod leases;
use common::*;
use leases::*;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Margin of the time checks.
const TIGHT: f64 = 0.1;
/// Margin between the ends of several breaks.
const PAIR: f64 = 0.05;
/// How late after the GAP's `from` the freeze may be (the holder sleeps 5 ms per loop).
const FREEZE_SLACK: f64 = 0.015;
/// How late after the resume the holder logs the GAP's `to`.
const RESUME_SLACK: f64 = 0.015;

const NO_TRACEFS: (&str, &str) = ("CRUST_LEASE_NO_TRACEFS", "1");

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A `GAP from=T0 to=T1` line: the tree frozen between T0 and T1, seen from inside.
#[derive(Clone, Copy, Debug)]
struct Gap {
    from: f64,
    to: f64,
}

/// The GAP line of the checkpoint made during `dump` and restored during `restore`.
#[track_caller]
fn gap_of(t: &LeaseTree, dump: (f64, f64), restore: (f64, f64)) -> Gap {
    t.lines("GAP ")
        .iter()
        .map(|l| Gap { from: field_f(l, "from"), to: field_f(l, "to") })
        .find(|g| g.from >= dump.0 - 1.0 && g.from <= dump.1 && g.to >= restore.0 && g.to <= restore.1 + 1.0)
        .unwrap_or_else(|| {
            panic!(
                "no GAP line for the dump {dump:.3?} and the restore {restore:.3?} (the holder's loop did not notice the freeze)\n{}",
                t.context()
            )
        })
}

/// Processes (other than `tree`) that have `path` open, through an fd or a mapping:
/// "PID fd N" / "PID map".
fn others_holding(path: &Path, tree: &[i32]) -> Vec<String> {
    let want = path.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if tree.contains(&pid) {
            continue;
        }
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if fs::read_link(fd.path()).map(|l| l.to_string_lossy() == want).unwrap_or(false) {
                    out.push(format!("{pid} fd {}", fd.file_name().to_string_lossy()));
                }
            }
        }
        if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps"))
            && maps.lines().any(|l| l.ends_with(&want))
        {
            out.push(format!("{pid} map"));
        }
    }
    out
}

/// After a restore crust keeps nothing of the restored descriptions: only the tree has the
/// leased file open (a copy elsewhere would keep the lease alive after the holder closed it).
#[track_caller]
fn assert_only_tree_holds(path: &Path, tree: &[i32], ctx: &str) {
    let others = others_holding(path, tree);
    assert!(others.is_empty(), "{} is held by processes outside the restored tree {tree:?}: {others:?}\n{ctx}", path.display());
}

/// Asserts the image's time left: `method`, a precision given, and the value within TIGHT of
/// the truth (between `lo` and `hi`).
#[track_caller]
fn assert_remaining(what: &str, lease: &serde_json::Value, method: u64, lo: f64, hi: f64, ctx: &str) {
    let ctx = format!("lease in the image: {lease:#}\n{ctx}");
    assert_eq!(json_u(lease, "remaining_method"), method, "{what}: remaining_method\n{ctx}");
    let precision = lease.get("remaining_precision_ms").and_then(|v| v.as_u64());
    let precision = precision.unwrap_or_else(|| panic!("{what}: no remaining_precision_ms\n{ctx}"));
    assert!(precision <= (TIGHT * 1000.0) as u64, "{what}: remaining_precision_ms {precision} > {TIGHT} s\n{ctx}");
    let rem = json_u(lease, "remaining_ms") as f64 / 1000.0;
    eprintln!("{what}: remaining {rem:.3} s (precision {precision} ms), truth in [{lo:.3}, {hi:.3}]");
    assert_between(&format!("{what}: the remaining time in the image"), rem, lo - TIGHT, hi + TIGHT, &ctx);
}

/// `t` is `remaining` after the resume: within TIGHT of (the GAP's `to` + remaining), and, as
/// seen from outside, within TIGHT of the restore window + remaining.
#[track_caller]
fn assert_at_deadline(what: &str, t: f64, gap: Gap, restore: (f64, f64), remaining: f64, ctx: &str) {
    eprintln!(
        "{what}: {:+.3} s from the resume (GAP to) + {remaining:.3} s; restore window {:+.3} / {:+.3}",
        t - (gap.to + remaining),
        t - (restore.0 + remaining),
        t - (restore.1 + remaining)
    );
    let ctx = format!(
        "resumed at {:.3} (GAP to); restore ran from {:.3} to {:.3}; remaining {remaining:.3} s\n{ctx}",
        gap.to, restore.0, restore.1
    );
    assert_between(&format!("{what} (from the resume)"), t, gap.to - RESUME_SLACK + remaining - TIGHT, gap.to + remaining + TIGHT, &ctx);
    assert_between(&format!("{what} (from the restore window)"), t, restore.0 + remaining - TIGHT, restore.1 + remaining + TIGHT, &ctx);
}

/// Reaps `pid` (our child: a breaker left to the test when its holder exited); its exit.
#[track_caller]
fn reap_within(pid: i32, fd: &OwnedFd, timeout: Duration) -> Exit {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = pidfd_try_reap(fd) {
            return e;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not end within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------
// A break restored by crust, then lived on (tests/workloads/lease_break.c)
// ---------------------------------------------------------------------------------

/// A write lease (O_RDWR) broken by one blocked writer, checkpointed and restored one or more
/// times.
struct Mid {
    t: LeaseTree,
    secs: f64,
    data: PathBuf,
    holder: i32,
    breaker: i32,
    pids: Vec<i32>,
    /// The break started between these two instants (b1's START, the holder's signal).
    started: (f64, f64),
    dumps: Vec<(f64, f64)>,
    restores: Vec<(f64, f64)>,
    /// The lease of each image.
    images: Vec<serde_json::Value>,
    outputs: Vec<String>,
}

impl Mid {
    /// `lease_break w rw w FLAGS,gaps`; with `no_tracefs`, crust runs (dump and restore) with
    /// CRUST_LEASE_NO_TRACEFS=1.
    fn start(env: &LeaseEnv, flags: &str, no_tracefs: bool) -> Mid {
        let flags = if flags == "-" { "gaps".to_string() } else { format!("{flags},gaps") };
        let watch = format!("{}", env.secs + 3);
        let mut t = LeaseTree::spawn("lease_break", &["w", "rw", "w", &flags, &watch]);
        if no_tracefs {
            t.w.crust_env.push((NO_TRACEFS.0.into(), NO_TRACEFS.1.into()));
        }
        let data = t.path(".data");
        let holder = t.w.pid;
        let breaker: i32 = t.w.ready_field("breakers").parse().expect("one breaker");
        let start = field_f(&t.line("START b1 "), "t");
        let signal = field_f(&t.line("SIGNAL holder n=1 "), "t");
        let mut pids = t.hold_all();
        pids.sort();
        assert_eq!(pids.len(), 2, "holder and breaker: {pids:?}");
        Mid {
            t,
            secs: env.secs(),
            data,
            holder,
            breaker,
            pids,
            started: (start, signal),
            dumps: Vec::new(),
            restores: Vec::new(),
            images: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn context(&self) -> String {
        format!("{}\n--- crust ---\n{}", self.t.context(), self.outputs.join("\n"))
    }

    /// Dumps `at` s after the break started (into a new image directory for a second dump),
    /// and records the image's lease.
    fn dump_at(&mut self, at: f64) {
        sleep_until(self.started.0 + at);
        let n = self.dumps.len();
        if n > 0 {
            self.t.w.image_dir = self.t.w.dir.path.join(format!("img{}", n + 1));
            fs::create_dir_all(&self.t.w.image_dir).unwrap();
        }
        assert_eq!(
            lease_lines(&self.data),
            unlock_break_lines(self.holder, &[("WRITE", self.breaker)]),
            "/proc/locks before dump {}",
            n + 1
        );
        let (out, d0, d1) = self.t.dump();
        self.outputs.push(out.to_string());
        self.dumps.push((d0, d1));
        let lease = image_lease(&self.t.w.image_dir);
        let ctx = format!("lease in image {}: {lease:#}\n{}", n + 1, self.context());
        assert!(json_b(&lease, "breaking") && json_b(&lease, "write") && json_b(&lease, "break_to_unlock"), "{ctx}");
        assert_eq!(json_pids(&lease, "breakers"), vec![self.breaker as i64], "{ctx}");
        assert_eq!(json_u(&lease, "lease_break_time"), self.secs as u64, "{ctx}");
        self.images.push(lease);
    }

    /// Restores after `pause` s; the break and its breaker are back, lease-break-time is
    /// unchanged, and only the tree has the file open.
    fn restore_after(&mut self, env: &LeaseEnv, pause: f64) {
        std::thread::sleep(Duration::from_secs_f64(pause));
        let pids = self.pids.clone();
        let (out, r0, r1) = self.t.restore(&pids, None);
        self.outputs.push(out.to_string());
        self.restores.push((r0, r1));
        env.assert_unchanged();
        wait_lease_lines("after the restore", &self.data, &unlock_break_lines(self.holder, &[("WRITE", self.breaker)]));
        assert_only_tree_holds(&self.data, &self.pids, &self.context());
    }

    /// The time left recorded by dump `k` (0-based), seconds.
    fn rem(&self, k: usize) -> f64 {
        json_u(&self.images[k], "remaining_ms") as f64 / 1000.0
    }

    /// The freeze and resume of checkpoint `k`, seen from inside.
    fn gap(&self, k: usize) -> Gap {
        gap_of(&self.t, self.dumps[k], self.restores[k])
    }

    /// The first image: `method`, and the time left within TIGHT of the truth (the break's
    /// deadline minus the freeze).
    #[track_caller]
    fn assert_first_image(&self, method: u64) {
        let g = self.gap(0);
        let lo = self.started.0 + self.secs - (g.from + FREEZE_SLACK);
        let hi = self.started.1 + self.secs - g.from;
        assert_remaining("image 1", &self.images[0], method, lo, hi, &self.context());
    }

    /// Image `k` (1-based k > 1) of a break restored by crust: `method`, and the time left within
    /// TIGHT of the truth: the deadline crust restored (resume + the previous image's time)
    /// minus this freeze. Also within TIGHT of what the dump and restore windows allow.
    #[track_caller]
    fn assert_redump_image(&self, k: usize, method: u64) {
        let (prev, cur) = (self.gap(k - 2), self.gap(k - 1));
        let before = self.rem(k - 2);
        let lo = prev.to - RESUME_SLACK + before - (cur.from + FREEZE_SLACK);
        let hi = prev.to + before - cur.from;
        let what = format!("image {k}");
        assert_remaining(&what, &self.images[k - 1], method, lo, hi, &self.context());
        let (r, d) = (self.restores[k - 2], self.dumps[k - 1]);
        let rem = self.rem(k - 1);
        assert_between(
            &format!("{what}: the remaining time (dump and restore windows)"),
            rem,
            before - (d.1 - r.0) - TIGHT,
            before - (d.0 - r.1) + TIGHT,
            &self.context(),
        );
    }

    /// The time at which a line's `t` is, from its first line starting with `prefix`.
    #[track_caller]
    fn wait_t(&self, prefix: &str, timeout: Duration) -> (String, f64) {
        let l = self.t.w.wait_status_line(prefix, timeout);
        let t = field_f(&l, "t");
        (l, t)
    }

    /// b1's open: it must have succeeded; its time.
    #[track_caller]
    fn opened(&self, timeout: Duration) -> f64 {
        let (l, t) = self.wait_t("OPENED b1 ", timeout);
        assert!(field_i(&l, "rc") >= 0, "b1's open failed: {l}\n{}", self.context());
        t
    }

    /// The holder was signalled once in all, before the first dump.
    #[track_caller]
    fn assert_signalled_once(&self) {
        let sigs = self.t.lines("SIGNAL holder ");
        assert_eq!(sigs.len(), 1, "the holder is signalled exactly once: {sigs:?}\n{}", self.context());
        assert!(field_f(&sigs[0], "t") < self.dumps[0].0, "{sigs:?}");
    }
}

/// What the holder does right after .go.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Action {
    Close,
    Exit,
    Exec,
}

/// Dumped 2 s into a 10 s unlock break, restored; 1 s after the restore the holder closes its
/// lease fd, exits or execs: the breaker's open returns right then (within 0.1 s), long before
/// the recorded deadline, and no lease is left.
fn holder_ends_after_restore(action: Action, no_tracefs: bool) {
    let env = LeaseEnv::new(10);
    let flag = match action {
        Action::Close => "close",
        Action::Exit => "exit",
        Action::Exec => "exec",
    };
    let mut m = Mid::start(&env, flag, no_tracefs);
    m.dump_at(2.0);
    m.restore_after(&env, 0.5);
    m.assert_first_image(if no_tracefs { TIME_BREAKER_WAIT } else { TIME_TRACEFS });
    let g = m.gap(0);
    let deadline = g.to + m.rem(0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lease_lines(&m.data), unlock_break_lines(m.holder, &[("WRITE", m.breaker)]), "1 s after the restore");
    m.t.start_go();
    let prefix = match action {
        Action::Close => "CLOSE ",
        Action::Exit => "EXIT ",
        Action::Exec => "EXEC ",
    };
    let (line, at) = m.wait_t(prefix, Duration::from_secs(5));
    if action == Action::Close {
        assert_eq!(field_i(&line, "rc"), 0, "{line}");
    }
    let opened = m.opened(Duration::from_secs_f64(m.rem(0) + 3.0));
    eprintln!("{flag} at {at:.3}, b1's open returned {:+.3} s later; the deadline was {:.3} s later", opened - at, deadline - at);
    assert!(deadline - at > 2.0, "the test needs the {flag} well before the deadline ({:.3} s)", deadline - at);
    assert_between(&format!("b1's open returned (after the holder's {flag})"), opened, at, at + TIGHT, &m.context());
    wait_lease_lines(&format!("after the {flag}"), &m.data, &[]);
    m.assert_signalled_once();
    match action {
        Action::Close => {
            m.t.finish();
            assert!(m.t.line("DONE ").starts_with("DONE sigs=1 "), "{}", m.context());
        }
        Action::Exec => {
            let r = m.t.finish();
            assert!(r.status_text.contains("PASS execd"), "{}", r.status_text);
            let execd = m.t.line("EXECED ");
            assert_eq!(field_i(&execd, "pid"), m.holder as i64, "{execd}");
            assert_eq!(field_i(&execd, "fd_closed"), 1, "{execd}");
        }
        Action::Exit => {
            // The holder exited (PASS, exit 0); the breaker, now the test's child, exits 0
            // once its open returned and .go exists.
            let r = m.t.w.go();
            assert_eq!(r.exit, Exit::Code(0), "the holder\n{}", m.context());
            assert!(r.status_text.contains("PASS holder exits sigs=1"), "{}", r.status_text);
            assert!(!r.status_text.lines().any(|l| l.starts_with("FAIL")), "{}", r.status_text);
            let fd = m.t.pidfds.remove(&m.breaker).expect("the breaker's pidfd");
            assert_eq!(reap_within(m.breaker, &fd, Duration::from_secs(10)), Exit::Code(0), "the breaker\n{}", m.context());
            m.t.pidfds.clear();
        }
    }
}

/// (a) The holder closes its lease fd after the restore: the breaker's open returns at once.
#[test]
fn holder_closing_its_lease_fd_after_restore_lets_the_breaker_in_at_once() {
    holder_ends_after_restore(Action::Close, false);
}

/// (b) The holder exits after the restore: the breaker's open returns at once.
#[test]
fn holder_exiting_after_restore_lets_the_breaker_in_at_once() {
    holder_ends_after_restore(Action::Exit, false);
}

/// (c) The holder execs after the restore (its lease fd is O_CLOEXEC): the breaker's open
/// returns at once.
#[test]
fn holder_exec_after_restore_lets_the_breaker_in_at_once() {
    holder_ends_after_restore(Action::Exec, false);
}

/// A checkpoint of a break crust restored: first dump 2 s into a 10 s unlock break, restore,
/// 2 s later a second dump: its image records what is left of the restored deadline (within
/// 0.1 s) with `second_method`; restored again, the breaker's open returns at that recorded time
/// (±0.1 s from the resume and from the restore window), and the holder was signalled once in
/// all.
fn redump_of_a_restored_break(no_tracefs: bool) {
    let env = LeaseEnv::new(10);
    let mut m = Mid::start(&env, "-", no_tracefs);
    m.dump_at(2.0);
    m.restore_after(&env, 0.5);
    sleep_until(m.restores[0].1 + 2.0);
    let at = mono() - m.started.0;
    m.dump_at(at);
    m.restore_after(&env, 0.5);
    m.t.start_go();
    m.assert_first_image(if no_tracefs { TIME_BREAKER_WAIT } else { TIME_TRACEFS });
    m.assert_redump_image(2, if no_tracefs { TIME_RESTORED_DEADLINE } else { TIME_TRACEFS });
    let rem = m.rem(1);
    assert!(rem > 1.0, "the test needs time left after the second restore: {rem:.3}");
    let opened = m.opened(Duration::from_secs_f64(rem + 3.0));
    assert_at_deadline("b1's open returned", opened, m.gap(1), m.restores[1], rem, &m.context());
    m.t.finish();
    m.assert_signalled_once();
    assert!(m.t.line("DONE ").starts_with("DONE sigs=1 getlease=UNLCK fdinfo=none"), "{}", m.context());
}

/// (d) Re-dump during a restored break, with tracefs: method TRACEFS both times.
#[test]
fn redump_of_a_restored_break_records_what_is_left_and_ends_on_time() {
    redump_of_a_restored_break(false);
}

/// (e) (a) with CRUST_LEASE_NO_TRACEFS=1: the time left is the breaker's wait (method
/// BREAKER_WAIT, within 0.1 s).
#[test]
fn without_tracefs_holder_closing_its_lease_fd_after_restore_lets_the_breaker_in_at_once() {
    holder_ends_after_restore(Action::Close, true);
}

/// (e) (b) with CRUST_LEASE_NO_TRACEFS=1.
#[test]
fn without_tracefs_holder_exiting_after_restore_lets_the_breaker_in_at_once() {
    holder_ends_after_restore(Action::Exit, true);
}

/// (e) (c) with CRUST_LEASE_NO_TRACEFS=1.
#[test]
fn without_tracefs_holder_exec_after_restore_lets_the_breaker_in_at_once() {
    holder_ends_after_restore(Action::Exec, true);
}

/// (e) (d) with CRUST_LEASE_NO_TRACEFS=1: BREAKER_WAIT at the first dump, RESTORED_DEADLINE
/// (crust's record of the deadline it gave the kernel) at the second, each within 0.1 s.
#[test]
fn without_tracefs_redump_of_a_restored_break_records_the_restored_deadline() {
    redump_of_a_restored_break(true);
}

/// (j) A new conflicting open from outside during a restored break (1 s after the restore)
/// joins it and waits until the restored deadline, not longer, not shorter; the in-tree
/// breaker gets its open at the same moment, and the holder is not signalled again.
#[test]
fn outside_open_during_a_restored_break_waits_for_the_restored_deadline() {
    let env = LeaseEnv::new(10);
    let mut m = Mid::start(&env, "-", false);
    m.dump_at(2.0);
    m.restore_after(&env, 0.5);
    m.t.start_go();
    m.assert_first_image(TIME_TRACEFS);
    let (rem, gap, restore) = (m.rem(0), m.gap(0), m.restores[0]);
    sleep_until(restore.1 + 1.0);
    let dir = m.t.w.dir.path.clone();
    let outsider = Outsider::start(&m.data, "w", &dir);
    let opid = outsider.pid();
    wait_lease_lines(
        "the outsider waiting behind the restored break",
        &m.data,
        &unlock_break_lines(m.holder, &[("WRITE", m.breaker), ("WRITE", opid)]),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(rem + 3.0);
    while !outsider.output().contains("OPENED ") {
        assert!(Instant::now() < deadline, "the outsider's open did not return\n{}\n{}", outsider.output(), m.context());
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = outsider.output();
    let line = out.lines().find(|l| l.starts_with("OPENED ")).unwrap().to_string();
    assert!(field_i(&line, "rc") >= 0, "the outsider's open failed: {line}");
    let start = field_f(out.lines().find(|l| l.starts_with("START ")).unwrap(), "t");
    assert!(start > restore.1, "{out}");
    assert_at_deadline("the outsider's open returned", field_f(&line, "t"), gap, restore, rem, &m.context());
    let opened = m.opened(Duration::from_secs(3));
    assert_at_deadline("b1's open returned", opened, gap, restore, rem, &m.context());
    drop(outsider);
    m.t.finish();
    m.assert_signalled_once();
}

// ---------------------------------------------------------------------------------
// (f) A mapped leased file
// ---------------------------------------------------------------------------------

/// The holder has its write-leased file mapped (MAP_SHARED, PROT_READ, through the leased fd,
/// before or after F_SETLEASE), dumped 2 s into an unlock break: after the restore the lease
/// and its break are back (the probe says WRITE), the mapping is a shared mapping of the file
/// and shows its content (checked inside), and the breaker's open returns at the recorded
/// time.
fn mapped_leased_file(flag: &str, access: &str) {
    let env = LeaseEnv::new(8);
    let watch = format!("{}", env.secs + 3);
    let flags = format!("{flag},gaps");
    let mut t = LeaseTree::spawn("lease_break", &["w", access, "w", &flags, &watch]);
    let data = t.path(".data");
    let holder = t.w.pid;
    let breaker: i32 = t.w.ready_field("breakers").parse().unwrap();
    assert!(t.line("MAPPED ").contains(" ok=1"), "{}", t.context());
    let shared_map = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(&*data.to_string_lossy()))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(shared_map(holder), vec!["r--s".to_string()], "the mapping before the dump");
    let start = field_f(&t.line("START b1 "), "t");
    let signal = field_f(&t.line("SIGNAL holder n=1 "), "t");
    let mut pids = t.hold_all();
    pids.sort();
    sleep_until(start + 2.0);
    let want = unlock_break_lines(holder, &[("WRITE", breaker)]);
    assert_eq!(lease_lines(&data), want, "before the dump");
    let (_, d0, d1) = t.dump();
    let lease = image_lease(&t.w.image_dir);
    assert!(json_b(&lease, "breaking") && json_b(&lease, "write") && json_b(&lease, "break_to_unlock"), "{lease:#}");
    assert_eq!(json_pids(&lease, "breakers"), vec![breaker as i64], "{lease:#}");
    std::thread::sleep(Duration::from_millis(500));
    let (out, r0, r1) = t.restore(&pids, None);
    env.assert_unchanged();
    t.start_go();
    let ctx = || format!("lease in the image: {lease:#}\n{}\n--- crust restore ---\n{out}", t.context());
    wait_lease_lines("after the restore", &data, &want);
    assert_eq!(probe_breaking_type(&data), "WRITE", "the restored lease's own type");
    assert_eq!(shared_map(holder), vec!["r--s".to_string()], "the mapping after the restore\n{}", ctx());
    assert_only_tree_holds(&data, &pids, &ctx());
    let gap = gap_of(&t, (d0, d1), (r0, r1));
    let rem = json_u(&lease, "remaining_ms") as f64 / 1000.0;
    assert_remaining(
        "the image",
        &lease,
        TIME_TRACEFS,
        start + env.secs() - (gap.from + FREEZE_SLACK),
        signal + env.secs() - gap.from,
        &ctx(),
    );
    let map = t.w.wait_status_line("MAP ", Duration::from_secs(5));
    assert!(map.starts_with("MAP ok=1 "), "the mapping after the restore, from inside: {map}\n{}", ctx());
    let l = t.w.wait_status_line("OPENED b1 ", Duration::from_secs_f64(rem + 3.0));
    assert!(field_i(&l, "rc") >= 0, "{l}");
    assert_at_deadline("b1's open returned", field_f(&l, "t"), gap, (r0, r1), rem, &ctx());
    t.finish();
    assert!(t.line("DONE ").starts_with("DONE sigs=1 getlease=UNLCK fdinfo=none"), "{}", t.context());
    assert_eq!(t.lines("SIGNAL holder ").len(), 1, "{}", t.context());
}

/// (f) Mapped before F_SETLEASE, O_RDWR description.
#[test]
fn holder_with_its_leased_file_mapped_before_the_lease_is_restored_mid_break() {
    mapped_leased_file("map", "rw");
}

/// (f) Mapped after F_SETLEASE, O_RDONLY description.
#[test]
fn holder_with_its_leased_file_mapped_after_the_lease_is_restored_mid_break() {
    mapped_leased_file("mapafter", "ro");
}

// ---------------------------------------------------------------------------------
// (g) Several breaks, each with its own time left
// ---------------------------------------------------------------------------------

/// Three files, a write lease on each, one blocked writer per file, the breaks started 1 s
/// apart; dumped 1 s after the last one started (about 5, 6 and 7 s left of 8): each image
/// lease has its own remaining time (within 0.1 s of the truth); after the restore each
/// breaker's open returns at its own time: the differences between the open times are the
/// differences between the recorded times within 0.05 s, and each is within 0.05 s of the
/// restore window + its recorded time.
#[test]
fn several_leases_with_different_remaining_times_each_end_at_their_own_time() {
    const N: usize = 3;
    let env = LeaseEnv::new(8);
    let watch = format!("{}", env.secs + 4);
    let mut t = LeaseTree::spawn("lease_multi", &[&N.to_string(), "1000", &watch]);
    let ready = t.w.ready_line.clone();
    let holder = t.w.pid;
    let breakers: Vec<i32> = ready_field(&ready, "breakers").unwrap().split(',').map(|p| p.parse().unwrap()).collect();
    assert_eq!(breakers.len(), N, "{ready}");
    let files: Vec<PathBuf> = (1..=N).map(|i| t.path(&format!(".{i}"))).collect();
    let starts: Vec<f64> = (1..=N).map(|i| field_f(&t.line(&format!("START b{i} ")), "t")).collect();
    let signals: Vec<f64> = (1..=N).map(|i| field_f(&t.line(&format!("SIGNAL holder n={i} ")), "t")).collect();
    let mut pids = t.hold_all();
    pids.sort();
    assert_eq!(pids.len(), N + 1, "{pids:?}");
    sleep_until(starts[N - 1] + 1.0);
    for i in 0..N {
        assert_eq!(lease_lines(&files[i]), unlock_break_lines(holder, &[("WRITE", breakers[i])]), "file {} before the dump", i + 1);
    }
    let (_, d0, d1) = t.dump();
    let leases = image_leases(&t.w.image_dir);
    assert_eq!(leases.len(), N, "{leases:#?}");
    let lease_of = |i: usize| {
        leases
            .iter()
            .find(|l| json_s(l, "path") == files[i].to_string_lossy())
            .unwrap_or_else(|| panic!("no lease on file {} in the image: {leases:#?}", i + 1))
            .clone()
    };
    let per_file: Vec<serde_json::Value> = (0..N).map(lease_of).collect();
    for (i, l) in per_file.iter().enumerate() {
        assert!(json_b(l, "breaking") && json_b(l, "write") && json_b(l, "break_to_unlock"), "file {}: {l:#}", i + 1);
        assert_eq!(json_pids(l, "breakers"), vec![breakers[i] as i64], "file {}: {l:#}", i + 1);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (out, r0, r1) = t.restore(&pids, None);
    env.assert_unchanged();
    t.start_go();
    let ctx = || format!("leases in the image: {per_file:#?}\n{}\n--- crust restore ---\n{out}", t.context());
    for i in 0..N {
        wait_lease_lines(&format!("file {} after the restore", i + 1), &files[i], &unlock_break_lines(holder, &[("WRITE", breakers[i])]));
        assert_only_tree_holds(&files[i], &pids, &ctx());
    }
    let gap = gap_of(&t, (d0, d1), (r0, r1));
    let rems: Vec<f64> = per_file.iter().map(|l| json_u(l, "remaining_ms") as f64 / 1000.0).collect();
    for i in 0..N {
        let lo = starts[i] + env.secs() - (gap.from + FREEZE_SLACK);
        let hi = signals[i] + env.secs() - gap.from;
        assert_remaining(&format!("file {}", i + 1), &per_file[i], TIME_TRACEFS, lo, hi, &ctx());
    }
    for i in 1..N {
        assert!(rems[i] - rems[i - 1] > 0.5, "the breaks should have different times left: {rems:?}");
    }
    let mut opened = Vec::new();
    for i in 1..=N {
        let l = t.w.wait_status_line(&format!("OPENED b{i} "), Duration::from_secs_f64(rems[i - 1] + 4.0));
        assert!(field_i(&l, "rc") >= 0, "{l}\n{}", ctx());
        opened.push(field_f(&l, "t"));
    }
    eprintln!(
        "opened (from the resume): {:?}; recorded: {rems:?}",
        opened.iter().map(|o| format!("{:.3}", o - gap.to)).collect::<Vec<_>>()
    );
    for i in 0..N {
        for j in (i + 1)..N {
            let got = opened[j] - opened[i];
            let want = rems[j] - rems[i];
            assert!(
                (got - want).abs() <= PAIR,
                "b{} opened {got:.3} s after b{}, the recorded times differ by {want:.3} s\n{}",
                j + 1,
                i + 1,
                ctx()
            );
        }
        assert_between(&format!("b{}'s open returned", i + 1), opened[i], r0 + rems[i] - PAIR, r1 + rems[i] + PAIR, &ctx());
    }
    let r = t.finish();
    assert!(r.status_text.contains("DONE sigs=3"), "{}", r.status_text);
    assert_eq!(t.lines("SIGNAL holder ").len(), N, "one signal per lease, all before the dump\n{}", t.context());
}

// ---------------------------------------------------------------------------------
// (h) A thread as the signal owner
// ---------------------------------------------------------------------------------

/// A write lease whose signal owner is a thread other than the main thread (F_SETOWN_EX
/// F_OWNER_TID), not being broken at the dump: the image records the owner; after the restore
/// the thread is there with its tid, the lease is ACTIVE WRITE, and F_GETOWN_EX, F_GETLEASE and
/// F_GETSIG are the same inside; a conflicting open from outside signals that thread (the
/// handler runs in it, with si_fd = the leased fd), once; the holder releases 200 ms later and
/// the open returns right then.
#[test]
fn lease_signal_owner_thread_is_restored_and_signalled() {
    let env = LeaseEnv::new(8);
    let mut t = LeaseTree::spawn("lease_thread", &[]);
    let holder = t.w.pid;
    let tid: i32 = t.w.ready_field("tid").parse().unwrap();
    let fd: i64 = t.w.ready_field("fd").parse().unwrap();
    assert_ne!(tid, holder);
    assert!(task_ids(holder).contains(&tid.to_string()), "{:?}", task_ids(holder));
    let data = t.path(".data");
    let active = vec![format!("LEASE ACTIVE WRITE {holder}")];
    assert_eq!(lease_lines(&data), active, "before the dump");
    let mut pids = t.hold_all();
    pids.sort();
    t.dump();
    let lease = image_lease(&t.w.image_dir);
    assert!(!json_b(&lease, "breaking") && json_b(&lease, "write"), "{lease:#}");
    assert_eq!(json_u(&lease, "owner_type"), 0, "F_OWNER_TID: {lease:#}");
    assert_eq!(json_u(&lease, "owner_id"), tid as u64, "the owner thread: {lease:#}");
    assert_eq!(json_u(&lease, "signal"), sigrtmin() as u64 + 1, "{lease:#}");
    let (out, _, _) = t.restore(&pids, None);
    env.assert_unchanged();
    let ctx = || format!("lease in the image: {lease:#}\n{}\n--- crust restore ---\n{out}", t.context());
    assert!(task_ids(holder).contains(&tid.to_string()), "the owner thread after the restore: {:?}\n{}", task_ids(holder), ctx());
    wait_lease_lines("after the restore", &data, &active);
    t.start_go();
    let checked = t.w.wait_status_line("CHECKED ", Duration::from_secs(10));
    assert_eq!(field_i(&checked, "sigs"), 0, "{}", ctx());
    assert!(t.status().contains(&format!("OWNER type=0 id={tid}\n")), "F_GETOWN_EX after the restore\n{}", ctx());
    let (rc, errno, opened) = open_from_outside(&data, "w", false);
    assert!(rc >= 0, "the outside open failed (errno {errno})\n{}", ctx());
    let sigs = t.lines("SIGNAL holder ");
    assert_eq!(sigs.len(), 1, "one signal\n{}", ctx());
    assert_eq!(field_i(&sigs[0], "tid"), tid as i64, "the signal ran in the owner thread: {}\n{}", sigs[0], ctx());
    assert_eq!(field_i(&sigs[0], "si_fd"), fd, "{}", sigs[0]);
    assert_eq!(field_i(&sigs[0], "signo"), sigrtmin() as i64 + 1, "{}", sigs[0]);
    let release = t.line("RELEASE ");
    assert_eq!(field_i(&release, "rc"), 0, "{release}");
    let release = field_f(&release, "t");
    assert_between("the outside open returned", opened, release, release + TIGHT, &ctx());
    t.finish();
    assert!(lease_lines(&data).is_empty(), "{:?}", lease_lines(&data));
}

// ---------------------------------------------------------------------------------
// (i) crust killed while lease-break-time is changed
// ---------------------------------------------------------------------------------

/// Kills, by pidfd, the processes of `pids` that are the test's children (a half-restored
/// tree, re-parented to the test when crust died; killing a parent re-parents its children to
/// the test, hence the rounds), then every other child of the test (crust's leftovers), and
/// reaps them.
struct KillRestored {
    pids: Vec<i32>,
}

impl KillRestored {
    fn our_children() -> Vec<i32> {
        children_of(std::process::id() as i32)
    }

    fn kill_children(filter: impl Fn(i32) -> bool) {
        for round in 0..5 {
            let mut any = false;
            for pid in Self::our_children().into_iter().filter(|p| filter(*p)) {
                if let Some(fd) = pidfd_open(pid)
                    && is_our_child(pid)
                {
                    any = true;
                    let _ = pidfd_signal(&fd, libc::SIGKILL);
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while pidfd_try_reap(&fd).is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            if !any && round > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KillRestored {
    fn drop(&mut self) {
        let pids = self.pids.clone();
        Self::kill_children(|p| pids.contains(&p));
        Self::kill_children(|_| true);
    }
}

/// A break with about 4 s left and lease-break-time 6: the restore must change lease-break-time
/// for an instant; CRUST_FAULT=lease-break-time-set makes crust kill itself (SIGKILL) right
/// after changing it. lease-break-time is 6 again within 2 s (crust's guardian puts it back),
/// and nothing of crust is left (no child of the test that is not a process of the image
/// within 3 s of crust's death). The half-restored processes are killed by the test.
#[test]
fn crust_killed_while_lease_break_time_is_changed_leaves_it_as_it_was() {
    let env = LeaseEnv::new(6);
    let mut m = Mid::start(&env, "-", false);
    let _cleanup = KillRestored { pids: m.pids.clone() };
    m.dump_at(2.0);
    let rem = m.rem(0);
    assert!((rem - env.secs()).abs() > 1.0 && rem > 1.0, "the remaining time must differ from lease-break-time: {rem:.3}");
    let img = m.t.w.image_dir.to_string_lossy().into_owned();
    let env_vars = vec![("CRUST_FAULT".to_string(), "lease-break-time-set".to_string())];
    let out = crust_env(["restore", "-d", "-D", &img], &env_vars);
    let died = Instant::now();
    assert_eq!(
        out.exit(),
        Exit::Signal(libc::SIGKILL),
        "crust restore should have killed itself at the fault point\n{out}\n{}",
        m.context()
    );
    let mut seen = Vec::new();
    loop {
        let v = break_time();
        if seen.last() != Some(&v) {
            seen.push(v);
        }
        if v == env.secs {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(2),
            "lease-break-time is {v}, not {} again, 2 s after crust died (seen: {seen:?})\n{out}",
            env.secs
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("lease-break-time back to {} {:?} after crust died (seen {seen:?})", env.secs, died.elapsed());
    // The half-restored tree is the test's to kill.
    let pids = m.pids.clone();
    KillRestored::kill_children(|p| pids.contains(&p));
    let mut left = Vec::new();
    while died.elapsed() < Duration::from_secs(3) {
        left = KillRestored::our_children()
            .into_iter()
            .filter(|p| !pids.contains(p))
            .filter(|p| {
                // reap the ones that ended
                if let Some(fd) = pidfd_open(*p) {
                    pidfd_try_reap(&fd);
                }
                pid_exists(*p)
            })
            .map(|p| format!("{p} {:?}", proc_info(p).map(|i| (i.comm, i.state))))
            .collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(left.is_empty(), "crust left processes behind: {left:?}\n{out}");
    assert_eq!(break_time(), env.secs, "lease-break-time");
}
