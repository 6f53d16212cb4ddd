//! Processes in a job-control stop (SIGSTOP, Ctrl-Z's SIGTSTP) are checkpointed as they are
//! and restored stopped: they run no instruction until a SIGCONT, and then go on.

mod common;
use common::*;
use std::time::Duration;

/// The counter's value, read through /proc/PID/mem at the address it reported.
fn counter(w: &Workload) -> u64 {
    let addr = parse_hex(&ready_field(&w.status_text(), "counter_addr").expect("counter_addr in READY"));
    read_mem_u64(w.pid, addr)
}

fn stop_with(w: &Workload, sig: i32) {
    // SAFETY: kill takes integers only.
    assert_eq!(unsafe { libc::kill(w.pid, sig) }, 0);
    wait_until("the process to stop", Duration::from_secs(5), || proc_state(w.pid) == Some('T'));
}

fn cont(w: &Workload) {
    // SAFETY: kill takes integers only.
    assert_eq!(unsafe { libc::kill(w.pid, libc::SIGCONT) }, 0);
}

/// Stays stopped: the state is T and the counter does not move for 300 ms.
fn assert_stays_stopped(w: &Workload, what: &str) {
    assert_eq!(proc_state(w.pid), Some('T'), "{what}: not stopped");
    let c = counter(w);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(w), c, "{what}: the counter moved while stopped");
    assert_eq!(proc_state(w.pid), Some('T'), "{what}: not stopped any more");
}

/// Stopped by Ctrl-Z (SIGTSTP): `dump -R` leaves it stopped (and untraced); a SIGCONT
/// resumes it.
#[test]
fn dump_leave_running_of_a_stopped_process_leaves_it_stopped() {
    // Also with its memory write-protected ahead of the freeze: held once more before it.
    for ahead in ["always", "never"] {
        let mut w = Workload::spawn("counter", &[]);
        w.crust_env = vec![("CRUST_PROTECT_AHEAD".into(), ahead.into())];
        stop_with(&w, libc::SIGTSTP);
        let out = w.dump_with(&["-R", "-v3"]);
        out.assert_success();
        let said = out.text().contains("write-protecting its memory ahead of the freeze");
        assert_eq!(said, ahead == "always", "CRUST_PROTECT_AHEAD={ahead}:\n{out}");
        assert_stays_stopped(&w, &format!("after dump -R (CRUST_PROTECT_AHEAD={ahead})"));
        assert_eq!(proc_status_field(w.pid, "TracerPid").as_deref(), Some("0"), "still traced after the dump");
        cont(&w);
        let c = counter(&w);
        wait_until("the counter to move after SIGCONT", Duration::from_secs(5), || counter(&w) > c);
    }
}

/// Stopped by SIGTSTP and by SIGSTOP: restored, it is stopped (by the same signal, as its
/// stat shows), runs nothing until SIGCONT, then the counter goes on and the program's own
/// checks of its memory pass.
#[test]
fn a_stopped_process_is_restored_stopped_and_resumes_on_sigcont() {
    for sig in [libc::SIGTSTP, libc::SIGSTOP] {
        let mut w = Workload::spawn("counter", &[]);
        stop_with(&w, sig);
        let before = w.snapshot();
        w.dump();
        w.restore_detached_raw().assert_success();
        wait_until("the restored process to stop", Duration::from_secs(5), || proc_state(w.pid) == Some('T'));
        assert_stays_stopped(&w, &format!("restored after {}", signal_name(sig)));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", w.pid)).unwrap();
        let code = stat.rsplit(')').next().unwrap().split_whitespace().last().unwrap().to_string();
        assert_eq!(code, sig.to_string(), "the restored process is not stopped by {}", signal_name(sig));
        cont(&w);
        let c = counter(&w);
        wait_until("the counter to move after SIGCONT", Duration::from_secs(5), || counter(&w) > c);
        let after = w.snapshot();
        w.verify_restored(&before, &after, &["State", "status:State"], vec![]);
    }
}
