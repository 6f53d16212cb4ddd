//! Process identity and per-process attributes survive checkpoint/restore.

mod common;
use common::*;

/// identity.c: same pid (getpid, gettid), sid, pgid, ids; comm, pdeathsig, dumpable,
/// no_new_privs, timer slack, THP disable, set_tid_address, rlimits, personality,
/// nice, oom_score_adj, interval timers (virtual, prof, alarm) and the rseq
/// registration; cmdline, environ, auxv and exe unchanged.
#[test]
fn pid_and_process_attributes_survive_restore() {
    let mut w = Workload::spawn("identity", &[]);
    assert_eq!(w.ready_field("pid"), w.pid.to_string());
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    // limits:*, personality, timerslack_ns, oom_score_adj, comm, cmdline, environ, auxv,
    // exe, stat:nice/pgrp/session/arg_start... and status:NoNewPrivs are compared
    w.verify_restored(&before, &after, &[], vec![]);
}

/// membarrier.c: registrations for private and global expedited membarriers come back (the
/// program's expedited barriers would fail with EPERM otherwise), checked from inside.
#[test]
fn membarrier_registrations_survive_restore() {
    let mut w = Workload::spawn("membarrier", &[]);
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}
