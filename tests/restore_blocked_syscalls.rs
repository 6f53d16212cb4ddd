//! A process checkpointed while blocked in pause() or futex(FUTEX_WAIT) is blocked in the
//! same call after the restore, and the call ends the way the kernel (and crust's documented
//! rules for -ERESTART_RESTARTBLOCK) say it must.

mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

const SYS_PAUSE: i64 = 34;
const SYS_FUTEX: i64 = 202;

/// /proc/PID/wchan (the kernel function the task sleeps in).
fn wchan(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default().trim().to_string()
}

/// The fields of /proc/PID/syscall: number, six arguments, sp, pc ("running" if it runs).
fn syscall_fields(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Where the task is blocked, for messages.
fn blocked_in(pid: i32) -> String {
    format!(
        "state {:?}, /proc/{pid}/syscall {:?}, wchan {:?}",
        proc_state(pid),
        fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default().trim(),
        wchan(pid)
    )
}

/// Checks that `pid` sleeps in syscall `nr` (first argument `arg0` if given) with the
/// wchan it had before the dump, and keeps doing so for `hold`. Returns the problems.
fn still_blocked(pid: i32, nr: i64, arg0: Option<u64>, wchan_before: &str, hold: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(proc_state(pid) == Some('S') && blocked_syscall(pid) == Some(nr)) {
        if Instant::now() >= deadline {
            problems.push(format!("after restore pid {pid} is not blocked in syscall {nr}: {}", blocked_in(pid)));
            return problems;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let fields = syscall_fields(pid);
    if let Some(a) = arg0 {
        let got = fields.get(1).map(|s| parse_hex(s));
        if got != Some(a) {
            problems.push(format!("after restore syscall {nr} has first argument {got:x?}, expected {a:#x} (fields {fields:?})"));
        }
    }
    let w = wchan(pid);
    if w != wchan_before {
        problems.push(format!("after restore wchan is {w:?}, before the dump it was {wchan_before:?}"));
    }
    let until = Instant::now() + hold;
    while Instant::now() < until {
        if !(proc_state(pid) == Some('S') && blocked_syscall(pid) == Some(nr)) {
            problems.push(format!("the restored process left syscall {nr} on its own: {}", blocked_in(pid)));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    problems
}

/// pauser.c: pause() (-ERESTARTNOHAND) is still the call the process sleeps in after the
/// restore (/proc/PID/syscall 34, same wchan, for 300 ms and without waking up on its own);
/// one SIGUSR1 from the test then runs the SA_SIGINFO|SA_RESTART handler exactly once
/// (si_code SI_USER) and pause returns -1/EINTR.
#[test]
fn pause_is_still_waiting_after_restore_and_a_handled_signal_ends_it_with_eintr() {
    let mut w = Workload::spawn("pauser", &[]);
    let pid = w.pid;
    wait_in_syscall(pid, SYS_PAUSE, Duration::from_secs(5));
    let wchan_before = wchan(pid);
    assert!(!wchan_before.is_empty() && wchan_before != "0", "no wchan for the paused process: {}", blocked_in(pid));
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let mut extra = still_blocked(pid, SYS_PAUSE, None, &wchan_before, Duration::from_millis(300));
    if w.status_text().contains("WOKE") {
        extra.push(format!("pause returned before the test sent SIGUSR1:\n{}", w.status_text()));
    }
    let after = w.snapshot();
    w.signal(libc::SIGUSR1);
    let woke = w.wait_status_line("WOKE", Duration::from_secs(10));
    if !woke.starts_with("WOKE rc=-1 errno=4 handled=1 signo=10 code=0 pauses=1") {
        extra.push(format!("unexpected end of pause after SIGUSR1: {woke}"));
    }
    // `after` was taken before SIGUSR1, while the process still slept: nothing was written
    // to the log since `before`, so even the log's offsets (fdinfo:1/2:pos) must match.
    w.verify_restored(&before, &after, &[], extra);
}

/// futexwait.c alarm: futex(FUTEX_WAIT) without a timeout (-ERESTARTSYS) on a word of the
/// process is still waiting after the restore (/proc/PID/syscall 202 with the word's address,
/// same wchan); the restored 3 s ITIMER_REAL fires, its SA_RESTART handler sets the word and
/// calls FUTEX_WAKE, the wait restarts, sees the new value and the loop ends after exactly one
/// futex call (-1/EAGAIN or 0, never EINTR), within the time the timer had left.
#[test]
fn futex_wait_without_timeout_is_restarted_and_ended_by_the_restored_alarm() {
    let mut w = Workload::spawn("futexwait", &["alarm"]);
    let pid = w.pid;
    let addr = parse_hex(&w.ready_field("futex_addr"));
    wait_in_syscall(pid, SYS_FUTEX, Duration::from_secs(5));
    let wchan_before = wchan(pid);
    assert_eq!(read_mem_u64(pid, addr), 0, "futex word before the dump");
    let before = w.snapshot();
    w.dump();
    assert!(!w.status_text().contains("WOKE"), "the 3 s timer fired before the dump finished:\n{}", w.status_text());
    let restored_at = Instant::now();
    w.restore_detached();
    let mut extra = still_blocked(pid, SYS_FUTEX, Some(addr), &wchan_before, Duration::ZERO);
    let word = read_mem_u64(pid, addr);
    if word != 0 && !w.status_text().contains("WOKE") {
        extra.push(format!("futex word is {word:#x} after restore, expected 0"));
    }
    let after = w.snapshot();
    let woke = w.wait_status_line("WOKE", Duration::from_secs(10));
    let took = restored_at.elapsed();
    if !(woke.starts_with("WOKE calls=1 rc=-1 errno=11 eintr=0 alarms=1 word=1 wake_rc=0")
        || woke.starts_with("WOKE calls=1 rc=0 errno=0 eintr=0 alarms=1 word=1 wake_rc=0"))
    {
        extra.push(format!("unexpected end of the futex wait: {woke}"));
    }
    if took > Duration::from_millis(4500) {
        extra.push(format!("the wait ended {took:?} after the restore; the timer had < 3 s left"));
    }
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos"], extra);
}

/// The `CALL n=.. rc=.. errno=.. t=..` lines of futexwait.c timeout.
fn futex_calls(status: &str) -> Vec<(i64, i32, f64)> {
    status
        .lines()
        .filter(|l| l.starts_with("CALL "))
        .map(|l| {
            let f = |k: &str| ready_field(l, k).unwrap_or_else(|| panic!("no {k}= in {l:?}"));
            (f("rc").parse().unwrap(), f("errno").parse().unwrap(), f("t").parse().unwrap())
        })
        .collect()
}

/// futexwait.c timeout: futex(FUTEX_WAIT) with a 4 s relative timeout, interrupted by the
/// checkpoint (-ERESTART_RESTARTBLOCK). docs/image-format.md ("Interrupted system calls",
/// RETURN_EINTR) says such a call returns EINTR after restore: the first futex call must
/// return -1/EINTR (not 0, not ETIMEDOUT early), promptly after the restore and before the
/// deadline; the workload then waits again for the time left and the second call returns
/// -1/ETIMEDOUT, not before the 4 s deadline.
#[test]
fn futex_wait_with_timeout_returns_eintr_after_restore_and_then_times_out() {
    let mut w = Workload::spawn("futexwait", &["timeout"]);
    let pid = w.pid;
    let addr = parse_hex(&w.ready_field("futex_addr"));
    let started = Instant::now();
    wait_in_syscall(pid, SYS_FUTEX, Duration::from_secs(3));
    let wchan_before = wchan(pid);
    let before = w.snapshot();
    w.dump();
    let status = w.status_text();
    assert!(!status.contains("CALL"), "the futex call returned before the dump finished; the test proves nothing:\n{status}");
    w.restore_detached();
    let restored_after = started.elapsed();
    let after = w.snapshot();
    let mut extra = Vec::new();
    // After the EINTR the workload waits again at once, on the same word.
    let blocked = still_blocked(pid, SYS_FUTEX, Some(addr), &wchan_before, Duration::ZERO);
    if !w.status_text().contains("WAITED") {
        extra.extend(blocked);
    }
    let waited = w.wait_status_line("WAITED", Duration::from_secs(10));
    let calls = futex_calls(&w.status_text());
    match calls.first() {
        Some(&(-1, libc::EINTR, t)) => {
            if t > 4.0 {
                extra.push(format!("the interrupted futex call returned EINTR only {t:.3} s after it started, after its 4 s timeout"));
            }
        }
        Some(&(rc, errno, t)) => extra.push(format!(
            "the futex call interrupted by the checkpoint returned rc={rc} errno={errno} ({}) at t={t:.3} s; \
             docs/image-format.md (RETURN_EINTR) says -1/EINTR ({})",
            std::io::Error::from_raw_os_error(errno),
            libc::EINTR
        )),
        None => extra.push(format!("no CALL line: {waited}")),
    }
    let results: Vec<(i64, i32)> = calls.iter().map(|&(rc, e, _)| (rc, e)).collect();
    if restored_after < Duration::from_millis(3500) && results != [(-1, libc::EINTR), (-1, libc::ETIMEDOUT)] {
        extra.push(format!(
            "futex calls returned {results:?}, expected [(-1, EINTR), (-1, ETIMEDOUT)] (restore done {restored_after:?} after the start)"
        ));
    }
    if results.iter().any(|&(rc, _)| rc == 0) {
        extra.push(format!("a futex call returned 0 (a spurious wake-up): {results:?}"));
    }
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos"], extra);
}

/// futexwait.c absolute: FUTEX_WAIT_BITSET with an absolute deadline 4 s after the start (as
/// glibc's timed waits), interrupted by the checkpoint: after restore the same call goes on
/// to the same deadline (never EINTR): exactly one call, -1/ETIMEDOUT, not before 4 s.
#[test]
fn futex_wait_with_an_absolute_deadline_goes_on_to_it_after_restore() {
    let mut w = Workload::spawn("futexwait", &["absolute"]);
    wait_in_syscall(w.pid, SYS_FUTEX, Duration::from_secs(3));
    let before = w.snapshot();
    w.dump();
    assert!(!w.status_text().contains("CALL"), "the futex call returned before the dump finished; the test proves nothing");
    w.restore_detached();
    let after = w.snapshot();
    w.wait_status_line("CALL", Duration::from_secs(10));
    w.verify_restored(&before, &after, &[], vec![]);
}
