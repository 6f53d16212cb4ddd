//! The workloads added for blocked system calls and credentials (pauser, futexwait,
//! nobody), without crust: started, READY, then driven to their end without any checkpoint,
//! they must PASS, and the results the restore tests compare against are what the kernel
//! gives an undisturbed process. A failure here is a bug in the test suite, not in crust.

mod common;
use common::*;
use std::time::Duration;

fn idle_snapshots_equal(w: &Workload) {
    let a = w.snapshot();
    std::thread::sleep(Duration::from_millis(50));
    let b = w.snapshot();
    assert_same_proc(&a, &b, &["fdinfo:1:pos", "fdinfo:2:pos"]);
}

/// pauser: in pause (syscall 34); one SIGUSR1 runs the handler once and pause returns EINTR.
#[test]
fn pauser_workload_passes_without_checkpoint() {
    let mut w = Workload::spawn("pauser", &[]);
    wait_in_syscall(w.pid, 34, Duration::from_secs(5));
    idle_snapshots_equal(&w);
    w.signal(libc::SIGUSR1);
    let woke = w.wait_status_line("WOKE", Duration::from_secs(5));
    assert!(woke.starts_with("WOKE rc=-1 errno=4 handled=1 signo=10 code=0 pauses=1"), "{woke}");
    w.go().assert_pass();
}

/// futexwait alarm: in futex (202); the SIGALRM handler ends the wait after one call, EAGAIN.
#[test]
fn futexwait_alarm_workload_passes_without_checkpoint() {
    let mut w = Workload::spawn("futexwait", &["alarm"]);
    wait_in_syscall(w.pid, 202, Duration::from_secs(5));
    let woke = w.wait_status_line("WOKE", Duration::from_secs(10));
    assert!(woke.starts_with("WOKE calls=1 rc=-1 errno=11 eintr=0 alarms=1 word=1 wake_rc=0"), "{woke}");
    w.go().assert_pass();
}

/// futexwait timeout: undisturbed, the one futex call returns ETIMEDOUT after 4 s.
#[test]
fn futexwait_timeout_workload_passes_without_checkpoint() {
    let mut w = Workload::spawn("futexwait", &["timeout"]);
    wait_in_syscall(w.pid, 202, Duration::from_secs(5));
    let waited = w.wait_status_line("WAITED", Duration::from_secs(10));
    assert!(waited.starts_with(&format!("WAITED calls=1 results=-1/{}", libc::ETIMEDOUT)), "{waited}");
    w.go().assert_pass();
}

/// nobody (and nobody secret): the identity drop works and every check passes unchanged.
#[test]
fn nobody_workloads_pass_without_checkpoint() {
    for args in [&[][..], &["secret"][..]] {
        let mut w = Workload::spawn("nobody", args);
        assert_eq!(proc_status_field(w.pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"));
        idle_snapshots_equal(&w);
        w.go().assert_pass();
    }
}
