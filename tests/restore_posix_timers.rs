//! POSIX timers (timer_create) survive checkpoint/restore with their ids, clocks,
//! notifications, signal values, intervals and the time they had left.

mod common;
use common::*;
use std::time::Duration;

/// posix_timers.c: five timers (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID to a worker thread,
/// one never armed, one on the process CPU clock) with a gap in their ids. After restore,
/// /proc/PID/timers is the same list (ids, signals and values, notification and its target,
/// clocks), and the program itself finds every timer by its id with its interval and time
/// left, the deleted id still unused, and the periodic ones firing with the right si_value
/// and si_timerid, the thread-directed one in its thread.
#[test]
fn posix_timers_come_back_with_their_ids_times_and_notifications() {
    let mut w = Workload::spawn("posix_timers", &[]);
    let listed_before = std::fs::read_to_string(format!("/proc/{}/timers", w.pid)).unwrap();
    assert_eq!(listed_before.lines().filter(|l| l.starts_with("ID:")).count(), 5, "test setup: five timers expected:\n{listed_before}");
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let listed_after = std::fs::read_to_string(format!("/proc/{}/timers", w.pid)).unwrap();
    let after = w.snapshot();
    let mut extra = Vec::new();
    if listed_after != listed_before {
        extra.push(format!("/proc/PID/timers before:\n{listed_before}after:\n{listed_after}"));
    }
    // t_sig sends SIGUSR1 every 40 ms: a snapshot may catch one pending for a moment.
    w.verify_restored(&before, &after, &["status:ShdPnd", "status:SigPnd"], extra);
}

/// A timer whose last expiration was delivered with an overrun cannot be restored exactly
/// (no call sets the overrun count): refused by pid and timer id, and the program goes on.
#[test]
fn a_timer_with_an_overrun_is_refused_by_id_and_the_process_keeps_running() {
    const PY: &str = r#"
import ctypes, signal, time, os
libc = ctypes.CDLL(None, use_errno=True)
class sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_long), ("signo", ctypes.c_int), ("notify", ctypes.c_int), ("pad", ctypes.c_int * 12)]
class itimerspec(ctypes.Structure):
    _fields_ = [("i_s", ctypes.c_long), ("i_ns", ctypes.c_long), ("v_s", ctypes.c_long), ("v_ns", ctypes.c_long)]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
sev = sigevent(0, signal.SIGUSR1, 0)
tid = ctypes.c_int(0)
assert libc.timer_create(1, ctypes.byref(sev), ctypes.byref(tid)) == 0
libc.timer_settime(tid, 0, ctypes.byref(itimerspec(0, 1000000, 0, 1000000)), None)
time.sleep(0.2)                       # expirations pile up while SIGUSR1 is blocked
signal.sigwait([signal.SIGUSR1])      # delivered with its overrun
assert libc.timer_getoverrun(tid) > 0   # (timer_settime would reset it: the timer runs on)
open('ready', 'w').write('%d\n' % tid.value)
while True:
    time.sleep(0.1)
"#;
    let w = Workload::spawn_program("py-overrun", "python3", &["-c", PY]);
    wait_until("python3 to be ready", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let id = std::fs::read_to_string(w.dir.path.join("ready")).unwrap().trim().to_string();
    let out = w.dump_with(&[]);
    assert!(!out.success(), "a timer with an overrun was dumped:\n{out}");
    assert!(
        out.text().contains(&w.pid.to_string()) && out.text().contains(&format!("POSIX timer {id}")) && out.text().contains("overrun"),
        "the refusal must name the pid, the timer and the overrun:\n{out}"
    );
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "the process does not run on after the refusal");
}
