//! Multi-threaded processes survive checkpoint/restore with every thread.

mod common;
use common::*;

/// threaded.c: a second pthread sleeping in a loop. After restore the process has the same
/// thread ids (the worker's tid from READY among them), each thread's name is as before, the
/// worker still runs (the process PASSes its own checks on .go), and /proc matches.
#[test]
fn every_thread_comes_back_with_its_tid_and_keeps_running() {
    let mut w = Workload::spawn("threaded", &[]);
    let worker = w.ready_field("tid");
    let tids_before = task_ids(w.pid);
    assert!(tids_before.contains(&worker), "worker {worker} not among {tids_before:?}");
    let names_before: Vec<String> =
        tids_before.iter().map(|t| std::fs::read_to_string(format!("/proc/{}/task/{t}/comm", w.pid)).unwrap()).collect();
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let tids_after = task_ids(w.pid);
    assert_eq!(tids_before, tids_after, "thread ids differ after restore");
    let names_after: Vec<String> =
        tids_after.iter().map(|t| std::fs::read_to_string(format!("/proc/{}/task/{t}/comm", w.pid)).unwrap()).collect();
    assert_eq!(names_before, names_after, "thread names differ after restore");
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}
