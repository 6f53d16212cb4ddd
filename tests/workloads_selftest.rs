//! The workloads and the harness themselves, without crust: each workload started,
//! READY, then `.go` without any checkpoint must PASS, and two /proc snapshots of an
//! idle workload must compare equal. A failure here is a bug in the test suite, not
//! in crust.

mod common;
use common::*;
use std::time::Duration;

fn selftest(name: &str, args: &[&str]) {
    let mut w = Workload::spawn(name, args);
    let a = w.snapshot();
    std::thread::sleep(Duration::from_millis(50));
    let b = w.snapshot();
    assert_same_proc(&a, &b, &["fdinfo:1:pos", "fdinfo:2:pos"]);
    w.go().assert_pass();
}

#[test]
fn counter_workload_passes_without_checkpoint() {
    selftest("counter", &[]);
}

#[test]
fn mappings_workload_passes_without_checkpoint() {
    selftest("mappings", &[]);
}

#[test]
fn signals_workload_passes_without_checkpoint() {
    selftest("signals", &[]);
}

#[test]
fn sleeper_workloads_pass_without_checkpoint() {
    selftest("sleeper", &["rel"]);
    selftest("sleeper", &["clock"]);
}

#[test]
fn reader_workload_passes_without_checkpoint() {
    selftest("reader", &[]);
}

#[test]
fn files_workload_passes_without_checkpoint() {
    selftest("files", &[]);
}

#[test]
fn avx_workload_passes_without_checkpoint() {
    selftest("avx", &[]);
}

#[test]
fn identity_workload_passes_without_checkpoint() {
    selftest("identity", &[]);
}

#[test]
fn mdwe_workload_passes_without_checkpoint() {
    for args in [&["refuse"][..], &["noinherit", "tree"], &["none", "tree"]] {
        selftest("mdwe", args);
    }
}

#[test]
fn threaded_workload_passes_without_checkpoint() {
    selftest("threaded", &[]);
}

#[test]
fn exitcode_workload_exits_with_its_code() {
    let mut w = Workload::spawn("exitcode", &["7"]);
    assert_eq!(w.go().exit, Exit::Code(7));
}

/// The snapshot comparison does catch a difference (here: a changed fd offset).
#[test]
fn snapshot_comparison_detects_differences() {
    let w = Workload::spawn_program("sleep", "sleep", &["100"]);
    let a = w.snapshot();
    let mut b = a.clone();
    b.entries.insert("fdinfo:0:pos".into(), "12345".into());
    b.entries.remove("maps:00000000-00001000");
    b.entries.insert("status:SigBlk".into(), "0000000000000001".into());
    let d = a.diff(&b, &[]);
    assert_eq!(d.len(), 2, "{d:?}");
    let r = std::panic::catch_unwind(|| assert_same_proc(&a, &b, &[]));
    assert!(r.is_err());
    // and ignores what it is told to
    assert!(a.diff(&b, &["fdinfo:0:*", "status:SigBlk"]).is_empty());
}

/// A multi-process workload (tests/workloads/tree_*.c) without crust: once its parent is
/// READY, `.go` makes every role PASS and the root exit 0 (each parent reaps its children).
fn tree_selftest(name: &str, args: &[&str], roles: &[&str]) {
    let mut w = Workload::spawn(name, args);
    w.wait_status_line("READY parent ", READY_TIMEOUT);
    let r = w.go();
    r.assert_pass();
    for role in roles {
        let prefix = format!("PASS {role} ");
        assert!(r.status_text.lines().any(|l| l.starts_with(&prefix)), "no PASS line from {role}:\n{}", r.status_text);
    }
}

#[test]
fn tree_workloads_pass_without_checkpoint() {
    tree_selftest("tree_family", &[], &["parent", "child1", "child2", "grandchild"]);
    tree_selftest("tree_family", &["socket"], &["parent", "child1", "child2", "grandchild"]);
    tree_selftest("tree_pipes", &[], &["parent", "child", "grandchild"]);
    tree_selftest("tree_session", &[], &["parent", "leader", "member", "grpleader", "joiner"]);
    tree_selftest("tree_sharedfd", &[], &["parent", "child"]);
    tree_selftest("tree_zombies", &[], &["parent", "blocker"]);
}

/// Workloads of a parent and children: the parent's READY comes last, and the parent then
/// waits for `.go` (sleeping).
#[test]
fn unix_socket_and_fd_table_workloads_pass_without_checkpoint() {
    for name in ["usock_rights", "usock_pending", "usock_misc", "fd_owner", "fd_shared", "fd_epoll_moved", "fd_proc"] {
        let mut w = Workload::spawn(name, &[]);
        w.wait_status_line("READY parent", READY_TIMEOUT);
        wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
        let a = w.snapshot();
        std::thread::sleep(Duration::from_millis(50));
        let b = w.snapshot();
        assert_same_proc(&a, &b, &["fdinfo:1:pos", "fdinfo:2:pos"]);
        w.go().assert_pass();
    }
}

/// memwriter (tests/dump_live.rs) passes on its own, writing and checking its memory, and
/// finds a page changed behind its back.
#[test]
fn memwriter_workload_passes_without_checkpoint_and_finds_a_changed_page() {
    let mut w = Workload::spawn("memwriter", &["16", "2", "discard"]);
    std::thread::sleep(Duration::from_millis(100));
    w.go().assert_pass();

    let mut w = Workload::spawn("memwriter", &["16", "1"]);
    let region = parse_hex(w.ready_field("regions").split(',').next().unwrap());
    let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/mem", w.pid)).unwrap();
    // Four pages apart: the writer cannot be just between checking and rewriting all of them.
    for page in [100u64, 1100, 2100, 3100] {
        std::os::unix::fs::FileExt::write_all_at(&mem, &[0x55u8; 8], region + page * 4096).unwrap();
    }
    let r = w.go();
    assert!(r.status_text.contains("FAIL") && r.status_text.contains("holds"), "the change went unnoticed:\n{}", r.status_text);
}

#[test]
fn anon_names_workload_passes_without_checkpoint() {
    selftest("anon_names", &[]);
}
