//! seccomp filters survive checkpoint/restore, shared by every thread as before.

mod common;
use common::*;

/// seccomp.c: three stacked filters (one with SECCOMP_FILTER_FLAG_LOG, one that kills on a
/// call crust makes while dumping) shared by two
/// threads through TSYNC, under no_new_privs. crust works in the process with the filters
/// suspended; after restore each thread is filtered exactly as before (from inside: the
/// filtered calls fail with their errnos, others work; /proc: Seccomp 2, 2 filters), and a new
/// TSYNC filter from the worker reaches the main thread (the chain is shared again).
#[test]
fn stacked_seccomp_filters_shared_by_threads_survive_restore() {
    let mut w = Workload::spawn("seccomp", &[]);
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// Strict mode (only read, write, exit, sigreturn) cannot be dumped (nothing can run in the
/// process): refused by pid before it is touched, and the process keeps running.
#[test]
fn seccomp_strict_mode_is_refused_and_the_process_keeps_running() {
    let w = Workload::spawn("seccomp", &["strict"]);
    wait_until("the workload to enter strict mode", std::time::Duration::from_secs(5), || {
        proc_status_field(w.pid, "Seccomp").as_deref() == Some("1")
    });
    let out = w.dump_with(&[]);
    assert!(!out.success(), "a strict-mode process was dumped:\n{out}");
    assert!(out.text().contains(&w.pid.to_string()) && out.text().contains("strict"), "{out}");
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "the process does not run on");
    assert_eq!(proc_status_field(w.pid, "TracerPid").as_deref(), Some("0"));
}
