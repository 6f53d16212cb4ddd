//! A process checkpointed while blocked in a system call resumes that call correctly.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn sleeper(mode: &str) {
    let mut w = Workload::spawn("sleeper", &[mode]);
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    w.dump();
    assert!(
        !w.status_text().contains("SLEPT"),
        "the 4 s sleep ended before the dump finished; the test proves nothing:\n{}",
        w.status_text()
    );
    w.restore_detached();
    let after = w.snapshot();
    // the SLEPT line may already have been written to stderr (the log) by now
    w.wait_status_line("SLEPT", Duration::from_secs(10));
    // the workload itself checks rc == 0 and the time slept
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos"], vec![]);
}

/// sleeper.c rel: nanosleep(4 s) interrupted by the dump (-ERESTART_RESTARTBLOCK)
/// returns 0 after restore (not EINTR) and not before 4 s have passed.
#[test]
fn nanosleep_interrupted_by_dump_completes_after_restore() {
    sleeper("rel");
}

/// sleeper.c clock: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) returns 0 after
/// restore, not before its deadline.
#[test]
fn clock_nanosleep_abstime_interrupted_by_dump_completes_after_restore() {
    sleeper("clock");
}

/// reader.c: read() blocked on a self-pipe (-ERESTARTSYS) is restarted after restore;
/// the restored ITIMER_REAL fires SIGALRM (SA_RESTART handler writes 'A') and the read
/// returns exactly that byte, once; the other pipe's 1000 unread bytes, its size and
/// flags are intact.
#[test]
fn read_blocked_on_pipe_returns_byte_written_by_restored_alarm() {
    let mut w = Workload::spawn("reader", &[]);
    wait_in_syscall(w.pid, SYS_READ, Duration::from_secs(5));
    let before = w.snapshot();
    w.dump();
    assert!(!w.status_text().contains("GOT"), "the 3 s timer fired before the dump finished:\n{}", w.status_text());
    let restored_at = Instant::now();
    w.restore_detached();
    let after = w.snapshot();
    // the timer had less than 3 s left at the dump: it must fire within 3 s (+ slack)
    let got = w.wait_status_line("GOT", Duration::from_secs(10));
    let took = restored_at.elapsed();
    let mut extra = Vec::new();
    if !got.contains("n=1 byte=0x41 alarms=1") {
        extra.push(format!("unexpected read result after restore: {got}"));
    }
    if took > Duration::from_millis(4500) {
        extra.push(format!("SIGALRM came {took:?} after the restore; the timer had < 3 s left"));
    }
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos"], extra);
}
