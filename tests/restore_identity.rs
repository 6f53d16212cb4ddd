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

/// mdwe.c: memory-deny-write-execute (PR_SET_MDWE) is saved and set again, checked from inside:
/// PR_GET_MDWE gives the same flags, gaining write+exec (mprotect, mmap) still fails with
/// EACCES, and a child forked after the restore inherits it (`refuse`) or not (`noinherit`).
/// A process without it (`none`) is restored without it. From /proc, nothing else differs.
/// A dump -R first leaves the process's mappings as they were (crust's scratch area and, under
/// MDWE, its code page are gone). With `tree`, a child forked before the dump (with the flags
/// it inherited: none under NO_INHERIT) is dumped and restored too, and makes the same checks.
fn mdwe_survives_restore(args: &[&str], flags: u32) {
    let mut w = Workload::spawn("mdwe", args);
    assert_eq!(w.ready_field("mdwe"), flags.to_string());
    let child: i32 = w.ready_field("child").parse().unwrap();
    let before = w.snapshot();
    w.dump_with(&["-R"]).assert_success();
    let maps =
        |s: &ProcSnapshot| s.entries.iter().filter(|(k, _)| k.starts_with("maps:")).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>();
    assert_eq!(maps(&w.snapshot()), maps(&before), "mappings after dump -R");
    w.dump();
    // Killed with its parent, the child is reaped by this test (a subreaper), or its pid stays taken.
    assert!(child == 0 || wait_gone(child, GONE_TIMEOUT), "the child {child} is still there after the dump");
    let out = crust(["show", "-D", &w.image_dir.to_string_lossy()]);
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("crust show: {e}\n{out}"));
    let recorded = shown["processes"][0]["core"]["control"]["mdwe"].as_u64();
    w.restore_detached();
    if child != 0 {
        w.own(child);
    }
    let after = w.snapshot();
    let mut extra = Vec::new();
    if recorded != Some(flags as u64) {
        extra.push(format!("core-{}.img control.mdwe: recorded {recorded:?}, expected {flags}", w.pid));
    }
    w.verify_restored(&before, &after, &[], extra);
}

#[test]
fn mdwe_refuse_exec_gain_survives_restore() {
    mdwe_survives_restore(&["refuse"], 1);
}

#[test]
fn mdwe_no_inherit_survives_restore() {
    mdwe_survives_restore(&["noinherit"], 3);
}

#[test]
fn process_without_mdwe_is_restored_without_it() {
    mdwe_survives_restore(&["none"], 0);
}

#[test]
fn mdwe_of_a_parent_and_the_child_it_passed_it_to_survive_restore() {
    mdwe_survives_restore(&["refuse", "tree"], 1);
}

#[test]
fn mdwe_no_inherit_parent_and_its_child_without_it_survive_restore() {
    mdwe_survives_restore(&["noinherit", "tree"], 3);
}

/// A crust that runs under memory-deny-write-execute it would pass on (its parent's, a
/// service's) refuses to restore, naming it, before it creates anything: every restored process
/// would inherit MDWE, which cannot be unset. The same image then restores without it.
#[test]
fn restore_by_a_crust_under_mdwe_is_refused_naming_it() {
    use std::os::unix::process::CommandExt;
    let mut w = Workload::spawn("mdwe", &["none"]);
    let before = w.snapshot();
    w.dump();
    let mut cmd = crust_command();
    cmd.args(["restore", "-d", "-D", &w.image_dir.to_string_lossy()]);
    // SAFETY: the pre_exec closure only makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_MDWE, libc::PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run crust restore under MDWE");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("memory-deny-write-execute"), "{}\n{stderr}", out.status);
    assert!(!pid_exists(w.pid), "pid {} exists after the refused restore", w.pid);
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}
