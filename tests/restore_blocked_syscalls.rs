//! A process checkpointed while blocked in pause(), futex(FUTEX_WAIT), poll, epoll_wait... is
//! blocked in the same call after the restore, and the call ends the way the kernel (and
//! crust's documented rules for -ERESTART_RESTARTBLOCK) say it must: a call with a relative
//! timeout waits for the time it had left at the freeze.

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
    fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default().split_whitespace().map(String::from).collect()
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

/// futexwait.c timeout: futex(FUTEX_WAIT) with a 4 s relative timeout in glibc's retry loop
/// (each call waits for what is left of an absolute deadline), interrupted by the checkpoint
/// right after it blocked (-ERESTART_RESTARTBLOCK): after the restore the same call goes on for
/// the time it had left (never EINTR, never a spurious 0): exactly one call, -1/ETIMEDOUT, not
/// before the 4 s deadline (the workload checks that), and it was asleep in the wait again.
#[test]
fn futex_wait_with_timeout_in_a_retry_loop_ends_in_one_call_after_restore() {
    let mut w = Workload::spawn("futexwait", &["timeout"]);
    let pid = w.pid;
    let addr = parse_hex(&w.ready_field("futex_addr"));
    wait_in_syscall(pid, SYS_FUTEX, Duration::from_secs(3));
    let wchan_before = wchan(pid);
    let before = w.snapshot();
    w.dump();
    let status = w.status_text();
    assert!(!status.contains("CALL"), "the futex call returned before the dump finished; the test proves nothing:\n{status}");
    w.restore_detached();
    let after = w.snapshot();
    let mut extra = Vec::new();
    // The kernel's restart block holds the wait again: /proc shows restart_syscall.
    let blocked = still_blocked(pid, 219, None, &wchan_before, Duration::ZERO);
    if !w.status_text().contains("WAITED") {
        extra.extend(blocked);
    }
    if read_mem_u64(pid, addr) != 0 && !w.status_text().contains("WAITED") {
        extra.push("the futex word changed".into());
    }
    w.wait_status_line("WAITED", Duration::from_secs(10));
    let results: Vec<(i64, i32)> = futex_calls(&w.status_text()).iter().map(|&(rc, e, _)| (rc, e)).collect();
    if results != [(-1, libc::ETIMEDOUT)] {
        extra.push(format!("futex calls returned {results:?}, expected one call, [(-1, ETIMEDOUT)]"));
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

const SYS_RESTART_SYSCALL: i64 = 219;

fn mono_now() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

/// A time span known to lie between two bounds (seconds).
#[derive(Debug, Clone, Copy)]
struct Between(f64, f64);

/// timedwait.c `mode`: one call with a 3 s relative timeout, checkpointed after it has waited
/// about 1 s, restored: it goes on for the time it had LEFT at the freeze, not its whole
/// timeout again and not EINTR, and ends by its timeout (the workload checks the result).
///
/// Timing, all on CLOCK_MONOTONIC (the workload prints its own start and end): the freeze lies
/// within the dump command and the resume within the restore command, so the time it had
/// left and the time it waited after the restore are each known to within those commands'
/// durations; the second must match the first within 200 ms. From /proc: after the restore
/// the process sleeps again in `nr_after` (with the wchan it had), and for a call whose timeout
/// is a register, /proc/PID/syscall shows that argument (`timeout_arg`, 1-based) holding the
/// time left in ms.
fn resumes_with_the_time_left(mode: &str, nr: i64, nr_after: &[i64], timeout_arg: Option<usize>) {
    let mut w = Workload::spawn("timedwait", &[mode]);
    // /proc/TID/... of the waiting thread (the process itself, or its second thread).
    let tid: i32 = w.ready_field("tid").parse().unwrap();
    let start: f64 = w.ready_field("start").parse().unwrap();
    wait_in_syscall(tid, nr, Duration::from_secs(2));
    let wchan_before = wchan(tid);
    for _ in 0..200 {
        if mono_now() >= start + 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = w.snapshot();
    let dump_began = mono_now();
    w.dump();
    let dump_ended = mono_now();
    assert!(!w.status_text().contains("DONE"), "the call ended before the dump finished; the test proves nothing");
    let left = Between(3.0 - (dump_ended - start), 3.0 - (dump_began - start));
    let mut extra = image_problems(&w, tid, nr, left);
    let restore_began = mono_now();
    w.restore_detached();
    let restore_ended = mono_now();
    let mut blocked = Vec::new();
    for &n in nr_after {
        blocked = still_blocked(tid, n, None, &wchan_before, Duration::ZERO);
        if blocked.is_empty() {
            if let Some(i) = timeout_arg {
                let fields = syscall_fields(tid);
                let ms = fields.get(i).map(|s| parse_hex(s) as i64).unwrap_or(-1);
                let (lo, hi) = (left.0 * 1e3 - 5.0, left.1 * 1e3 + 5.0);
                if !(lo..=hi).contains(&(ms as f64)) {
                    extra.push(format!(
                        "after restore the timeout argument is {ms} ms (/proc/{tid}/syscall {fields:?}); the call had {:.0}..{:.0} ms left",
                        left.0 * 1e3,
                        left.1 * 1e3
                    ));
                }
            }
            break;
        }
    }
    extra.extend(blocked);
    let after = w.snapshot();
    let done = w.wait_status_line("DONE", Duration::from_secs(10));
    let end: f64 = ready_field(&done, "end").unwrap().parse().unwrap();
    let waited_after = Between(end - restore_ended, end - restore_began);
    // Tolerances on each side: the commands' own duration is already in the bounds.
    if waited_after.1 < left.0 - 0.2 || waited_after.0 > left.1 + 0.2 {
        extra.push(format!(
            "after the restore the call waited {waited_after:?} s; it had {left:?} s left at the freeze (dump {:.3}..{:.3}, restore {:.3}..{:.3}, start {start:.3}, end {end:.3})",
            dump_began, dump_ended, restore_began, restore_ended
        ));
    }
    // fd 5's epoll watches a pipe, which is a new inode after the restore.
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos", "fdinfo:5:tfd"], extra);
}

/// What the image (`crust show`) says of thread `tid`'s call `nr` that had `left` at the
/// freeze: a call with a relative timeout (all but ppoll and pselect6, which the kernel
/// restarts with the time it wrote back) records its 3 s timeout, a wait measured on the
/// scheduler's clock and the time left; ppoll and pselect6 record the kernel's restart.
fn image_problems(w: &Workload, tid: i32, nr: i64, left: Between) -> Vec<String> {
    let out = crust(["show", "-D", &w.image_dir.to_string_lossy()]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("crust show: {e}\n{out}"));
    let threads = v["processes"][0]["core"]["threads"].as_array().cloned().unwrap_or_default();
    let Some(sc) = threads.iter().find(|t| t["tid"] == tid).map(|t| t["interrupted_syscall"].clone()) else {
        return vec![format!("no thread {tid} in the image:\n{out}")];
    };
    let field = |k: &str| sc[k].as_i64().unwrap_or(0);
    let mut problems = Vec::new();
    if field("number") != nr {
        problems.push(format!("the image records syscall {} for thread {tid}, it was in {nr}: {sc}", field("number")));
    }
    if matches!(nr, libc::SYS_ppoll | libc::SYS_pselect6) {
        if field("action") != 0 || field("timeout_ns") != 0 {
            problems.push(format!("{nr}: expected a kernel restart (action 0) without a timeout of crust's: {sc}"));
        }
        return problems;
    }
    let (timeout, waited, remaining) = (field("timeout_ns"), field("waited_ns"), field("remaining_ns"));
    // action 2 REISSUE, measure 1 SCHED_CLOCK
    if field("action") != 2 || field("measure") != 1 || timeout != 3_000_000_000 || remaining != timeout - waited {
        problems.push(format!("the image should record REISSUE, SCHED_CLOCK, a 3 s timeout and its time left: {sc}"));
    }
    let left_s = remaining as f64 / 1e9;
    if left_s < left.0 - 0.01 || left_s > left.1 + 0.01 {
        problems.push(format!("the image records {left_s:.3} s left, the call had {left:?} s left at the freeze"));
    }
    problems
}

/// futex(FUTEX_WAIT) with a 3 s relative timeout: the kernel's restart block holds the
/// deadline again, so /proc shows restart_syscall (as after any interruption of such a wait)
/// and it returns -1/ETIMEDOUT about 2 s after the restore; the program's timespec and futex
/// word are untouched.
#[test]
fn futex_wait_with_a_relative_timeout_goes_on_for_the_time_it_had_left() {
    resumes_with_the_time_left("futex", SYS_FUTEX, &[SYS_RESTART_SYSCALL, SYS_FUTEX], None);
}

/// The same wait in a second thread (the main thread waits for it in pthread_join): the
/// thread's own restart block holds its deadline again.
#[test]
fn futex_wait_with_a_relative_timeout_in_a_second_thread_goes_on_for_the_time_it_had_left() {
    resumes_with_the_time_left("futex@thread", SYS_FUTEX, &[SYS_RESTART_SYSCALL, SYS_FUTEX], None);
}

/// poll() with a 3000 ms timeout returns 0 about 2 s after the restore; /proc shows poll with
/// the time left as its timeout.
#[test]
fn poll_with_a_timeout_goes_on_for_the_time_it_had_left() {
    resumes_with_the_time_left("poll", libc::SYS_poll, &[libc::SYS_poll], Some(3));
}

/// epoll_wait() with a 3000 ms timeout (the kernel ends it with EINTR when its thread is
/// stopped; restore lets it go on instead) returns 0 about 2 s after the restore.
#[test]
fn epoll_wait_with_a_timeout_goes_on_for_the_time_it_had_left() {
    resumes_with_the_time_left("epoll", libc::SYS_epoll_wait, &[libc::SYS_epoll_wait], Some(4));
}

/// epoll_pwait2() with a 3 s timespec goes on as epoll_pwait (the same call with a timeout in
/// milliseconds) for the time it had left; the program's timespec is untouched.
#[test]
fn epoll_pwait2_with_a_timeout_goes_on_for_the_time_it_had_left() {
    resumes_with_the_time_left("epoll_pwait2", libc::SYS_epoll_pwait2, &[libc::SYS_epoll_pwait], Some(4));
}

/// epoll_pwait2() in a process under a seccomp filter (which may allow it and not epoll_pwait)
/// is re-issued as it was: /proc shows epoll_pwait2 again, and it waits its whole 3 s timeout
/// after the restore (late, never EINTR, never early).
#[test]
fn epoll_pwait2_under_seccomp_is_reissued_as_it_was() {
    let mut w = Workload::spawn("timedwait", &["epoll_pwait2@seccomp"]);
    wait_in_syscall(w.pid, libc::SYS_epoll_pwait2, Duration::from_secs(3));
    let wchan_before = wchan(w.pid);
    let before = w.snapshot();
    w.dump();
    let restore_began = mono_now();
    w.restore_detached();
    let mut extra = still_blocked(w.pid, libc::SYS_epoll_pwait2, None, &wchan_before, Duration::ZERO);
    let after = w.snapshot();
    let done = w.wait_status_line("DONE", Duration::from_secs(10));
    let end: f64 = ready_field(&done, "end").unwrap().parse().unwrap();
    if end - restore_began < 2.99 {
        extra.push(format!("epoll_pwait2 ended {:.3} s after the restore began, before its whole 3 s timeout", end - restore_began));
    }
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos", "fdinfo:5:tfd"], extra);
}

/// rt_sigtimedwait without a timeout (sigwaitinfo) ends with EINTR when its thread is stopped
/// (signal(7)); restored, the same call waits again (/proc shows it, with the wchan it had),
/// and returns the SIGUSR1 the test then sends.
#[test]
fn sigwaitinfo_ended_by_the_freeze_waits_again_after_restore() {
    let mut w = Workload::spawn("timedwait", &["sigwaitinfo"]);
    let pid = w.pid;
    wait_in_syscall(pid, libc::SYS_rt_sigtimedwait, Duration::from_secs(3));
    let wchan_before = wchan(pid);
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let mut extra = still_blocked(pid, libc::SYS_rt_sigtimedwait, None, &wchan_before, Duration::from_millis(300));
    let after = w.snapshot();
    w.signal(libc::SIGUSR1);
    let done = w.wait_status_line("DONE", Duration::from_secs(10));
    if !done.starts_with("DONE rc=10 errno=0") {
        extra.push(format!("sigwaitinfo ended with {done}, expected SIGUSR1 (10)"));
    }
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos", "fdinfo:5:tfd"], extra);
}

/// select() under the STICKY_TIMEOUTS personality (the kernel does not write the time left
/// back): the kernel itself ends it with EINTR when its thread is stopped, instead of a restart
/// with its whole timeout, and so does the restored process, promptly, with its timeval
/// untouched and its personality kept.
#[test]
fn select_under_sticky_timeouts_returns_the_eintr_the_kernel_gives_it() {
    let mut w = Workload::spawn("timedwait", &["select_sticky", "eintr"]);
    wait_in_syscall(w.pid, libc::SYS_pselect6, Duration::from_secs(3));
    let before = w.snapshot();
    w.dump();
    let restored = Instant::now();
    w.restore_detached();
    let after = w.snapshot();
    let done = w.wait_status_line("DONE", Duration::from_secs(10));
    let mut extra = Vec::new();
    if restored.elapsed() > Duration::from_millis(1500) || !done.starts_with("DONE rc=-1 errno=4") {
        extra.push(format!("select ended {:?} after the restore with {done}, expected -1/EINTR at once", restored.elapsed()));
    }
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos", "fdinfo:5:tfd"], extra);
}

/// rt_sigtimedwait, semtimedop and io_getevents with a 3 s timespec, and recv with a 3 s
/// SO_RCVTIMEO, end with EINTR when their thread is stopped, and have no way to be given the
/// time left without writing the program's memory (or changing the socket): restored, they
/// return that EINTR promptly (as the original does when a dump leaves it running), documented
/// in docs/image-format.md.
#[test]
fn timed_calls_taking_a_timespec_return_the_eintr_of_the_freeze() {
    for (mode, nr) in [
        ("sigtimedwait", libc::SYS_rt_sigtimedwait),
        ("semtimedop", libc::SYS_semtimedop),
        ("io_getevents", libc::SYS_io_getevents),
        ("recv_timeo", libc::SYS_recvfrom),
    ] {
        let mut w = Workload::spawn("timedwait", &[mode, "eintr"]);
        wait_in_syscall(w.pid, nr, Duration::from_secs(3));
        let before = w.snapshot();
        w.dump();
        let restored = Instant::now();
        w.restore_detached();
        let after = w.snapshot();
        let done = w.wait_status_line("DONE", Duration::from_secs(10));
        let mut extra = Vec::new();
        if restored.elapsed() > Duration::from_millis(1500) {
            extra.push(format!("{mode}: the EINTR came {:?} after the restore", restored.elapsed()));
        }
        if !done.starts_with("DONE rc=-1 errno=4") {
            extra.push(format!("{mode} ended with {done}, expected -1/EINTR"));
        }
        // SigBlk: `before` is taken inside rt_sigtimedwait, which unblocks the signals it waits
        // for until it returns; `after`, once it returned.
        w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos", "fdinfo:5:tfd", "status:SigBlk"], extra);
    }
}

/// ppoll() and pselect6() write the time left into their timespec when interrupted: the
/// kernel restarts them with it after the restore, for the time they had left (they end with
/// 0 left in it).
#[test]
fn ppoll_and_pselect_go_on_for_the_time_they_had_left() {
    resumes_with_the_time_left("ppoll", libc::SYS_ppoll, &[libc::SYS_ppoll], None);
    resumes_with_the_time_left("pselect", libc::SYS_pselect6, &[libc::SYS_pselect6], None);
}

/// A dump that leaves the process running (-R) does not end its epoll_wait with the EINTR the
/// kernel gives a stopped thread: the call goes on to the deadline it had (0 after 3 s from its
/// start, the freeze included); a sigwaitinfo goes on waiting, and returns the SIGUSR1 the test
/// then sends.
#[test]
fn waits_ended_by_the_freeze_go_on_in_a_process_the_dump_leaves_running() {
    let mut w = Workload::spawn("timedwait", &["epoll"]);
    let start: f64 = w.ready_field("start").parse().unwrap();
    wait_in_syscall(w.pid, libc::SYS_epoll_wait, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(500));
    let out = w.dump_with(&["-R"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    let done = w.wait_status_line("DONE", Duration::from_secs(10));
    let end: f64 = ready_field(&done, "end").unwrap().parse().unwrap();
    let mut problems = Vec::new();
    if !done.starts_with("DONE rc=0 errno=0") {
        problems.push(format!("epoll_wait ended with {done}, expected 0 (timed out)"));
    }
    if !(2.99..3.25).contains(&(end - start)) {
        problems.push(format!("epoll_wait with a 3 s timeout ended {:.3} s after it started", end - start));
    }
    let r = w.go();
    assert!(problems.is_empty() && r.exit == Exit::Code(0), "{problems:?}\n{}", r.status_text);

    let mut w = Workload::spawn("timedwait", &["sigwaitinfo"]);
    wait_in_syscall(w.pid, libc::SYS_rt_sigtimedwait, Duration::from_secs(2));
    let out = w.dump_with(&["-R"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    wait_in_syscall(w.pid, libc::SYS_rt_sigtimedwait, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!w.status_text().contains("DONE"), "sigwaitinfo returned after dump -R:\n{}", w.status_text());
    w.signal(libc::SIGUSR1);
    let done = w.wait_status_line("DONE", Duration::from_secs(10));
    assert!(done.starts_with("DONE rc=10 errno=0"), "sigwaitinfo ended with {done}, expected SIGUSR1 (10)");
    let r = w.go();
    assert_eq!(r.exit, Exit::Code(0), "{}", r.status_text);
}

/// timedwait.c futex_woken: glibc's loop of relative FUTEX_WAITs to one deadline, woken every
/// 200 ms by a second thread, so between crust's sample of the wait and the freeze (widened to
/// 600 ms by CRUST_FAULT) it leaves its call and enters a new one. Such a sample says nothing
/// of the call it is frozen in: the image records it STALE (or NOT_MEASURED, should the sample
/// have caught it awake) and the whole timeout, never the time the old call had left, and the
/// restored loop ends with ETIMEDOUT, not before its deadline (the workload checks).
#[test]
fn a_wait_that_ran_between_its_sample_and_the_freeze_gets_its_whole_timeout() {
    let mut w = Workload::spawn("timedwait", &["futex_woken"]);
    let pid = w.pid;
    wait_in_syscall(pid, SYS_FUTEX, Duration::from_secs(2));
    let before = w.snapshot();
    w.crust_env.push(("CRUST_FAULT".into(), "dump-sampled:1:sleep600".into()));
    w.dump();
    w.crust_env.clear();
    let out = crust(["show", "-D", &w.image_dir.to_string_lossy()]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("crust show: {e}\n{out}"));
    let threads = v["processes"][0]["core"]["threads"].as_array().cloned().unwrap_or_default();
    let sc = threads.iter().find(|t| t["tid"] == pid).map(|t| t["interrupted_syscall"].clone()).unwrap_or_default();
    let field = |k: &str| sc[k].as_i64().unwrap_or(0);
    let mut extra = Vec::new();
    // measure: 0 NOT_MEASURED, 1 SCHED_CLOCK, 2 STALE
    if field("number") != SYS_FUTEX
        || !matches!(field("measure"), 0 | 2)
        || field("remaining_ns") != field("timeout_ns")
        || field("timeout_ns") == 0
    {
        extra.push(format!("the waiter's call should be recorded STALE with its whole timeout left: {sc}"));
    }
    w.restore_detached();
    let after = w.snapshot();
    w.wait_status_line("DONE", Duration::from_secs(10));
    w.verify_restored(&before, &after, &["fdinfo:1:pos", "fdinfo:2:pos", "fdinfo:5:tfd"], extra);
}
