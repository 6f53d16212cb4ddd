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
#[path = "common/leases.rs"]
mod leases;
use common::*;
use leases::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
        "write",
        "breaking",
        "break_to_unlock",
        "remaining_ms",
        "remaining_method",
        "type_method",
        "breakers",
        "owner_type",
        "owner_id",
        "signal",
        "lease_break_time",
        "holder_pid",
        "holder_fd",
        "path",
        "no_break",
    ] {
        assert!(run.lease().get(key).is_some(), "crust show lacks the lease's {key}: {:#}", run.lease());
    }
    assert_eq!(json_u(run.lease(), "holder_fd") as i64, field_i(&run.t.w.ready_line, "fd"), "{:#}", run.lease());
    assert_eq!(json_u(run.lease(), "owner_id") as i32, run.holder, "{:#}", run.lease());
    wait_lease_lines("after the restore", &run.data, &want);
    assert_leasewake_holds_only_pidfds();
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

/// A downgrade break restored mid-way (a write lease on an O_RDONLY description: the kernel
/// takes a read lease only there), and the holder answering it itself right after the
/// restore with F_SETLEASE F_RDLCK (the usual answer to a reader): the reader's open returns at once, long before the recorded deadline, and the
/// holder keeps a READ lease (F_GETLEASE and /proc/locks), signalled once.
#[test]
fn holder_downgrading_after_restore_lets_the_reader_in_at_once() {
    let env = LeaseEnv::new(6);
    let b = Break { flags: "downgrade", ..Break::new("w", "ro", "r") };
    let run = BreakRun::run(&env, &b, None, |_| {});
    let b1 = run.breakers[0];
    run.assert_image(&env, true, false, &[b1]);
    let mut run = run;
    run.t.finish();
    let line = run.t.line("DOWNGRADE ");
    assert_eq!(field_i(&line, "rc"), 0, "{line}");
    let at = field_f(&line, "t");
    let remaining = run.remaining();
    assert!(run.restore.1 + remaining - at > 1.0, "the test needs the downgrade well before the deadline");
    assert_between("the reader's open returned", run.opened(1), at, at + MARGIN, &run.t.context());
    assert!(run.done().contains("sigs=1 getlease=READ fdinfo=ACTIVE READ"), "{}\n{}", run.done(), run.t.context());
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
    assert!(
        took < remaining - 1.0,
        "crust restore -d took {took:.3} s: its output was held open until the break ended ({remaining:.3} s)\n{}",
        run.restore_out
    );
    let mut run = run;
    run.t.finish();
    run.assert_after_restore("b1's open returned", run.opened(1), remaining);
}

/// Mounts tracefs (one super block: the kernel's own trace instances) on a fresh directory for
/// the length of `f`.
fn with_tracefs<T>(f: impl FnOnce(&std::path::Path) -> T) -> T {
    let dir = TempDir::new("tracefs");
    let mounted = std::process::Command::new("mount").args(["-t", "tracefs", "nodev"]).arg(&dir.path).status().unwrap();
    assert!(mounted.success(), "mount -t tracefs");
    let out = f(&dir.path);
    let _ = std::process::Command::new("umount").arg(&dir.path).status();
    out
}

/// A crust killed while it measured a break leaves its trace instance (`crust-PID-N`) in the
/// kernel: the next crust that measures a break removes it (its pid is no crust any more), and
/// leaves none of its own.
#[test]
fn trace_instance_of_a_killed_crust_is_removed_by_the_next_dump() {
    let env = LeaseEnv::new(6);
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("crust-{dead_pid}-3");
    with_tracefs(|t| std::fs::create_dir(t.join("instances").join(&stale)).unwrap());
    let run = BreakRun::run(&env, &Break::new("w", "rw", "w"), None, |_| {});
    assert_eq!(json_s(run.lease(), "type_method"), "tracefs", "{:#}", run.lease());
    let left: Vec<String> = with_tracefs(|t| {
        std::fs::read_dir(t.join("instances")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    });
    assert!(!left.iter().any(|n| n.starts_with("crust-")), "trace instances left after the dump: {left:?} (planted {stale})");
    let mut run = run;
    run.t.finish();
}
