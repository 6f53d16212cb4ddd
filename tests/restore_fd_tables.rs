//! fd tables and what hangs off them: the I/O signal owner of descriptions (F_SETOWN_EX,
//! F_SETSIG with O_ASYNC), fd tables and filesystem contexts shared between processes
//! (CLONE_FILES, CLONE_FS), epoll registrations whose fd was moved, files under /proc. Each
//! test runs a real tree, dumps it (the processes must be gone), restores it, and checks it
//! from /proc and from inside (the workload's own PASS).

mod common;
use common::*;
use std::time::Duration;

/// Pipes, sockets and a regular file with O_ASYNC whose signal owner is the process, its
/// process group (shared with a child) or a second thread, each with its own F_SETSIG signal:
/// after restore F_GETOWN_EX, F_GETSIG and O_ASYNC are as set, and I/O on them sends each
/// signal to its owner (the thread itself for the thread owner, both processes for the group)
/// with the right si_fd; a pipe without O_ASYNC sends nothing. /proc shows the same fd flags.
#[test]
fn async_io_signal_owners_survive_restore() {
    let mut w = Workload::spawn("fd_owner", &[]);
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let child: i32 = w.ready_field("child").parse().unwrap();
    let before = w.snapshot();
    w.dump();
    assert!(wait_gone(child, GONE_TIMEOUT), "the child {child} still exists after the dump");
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// python3 sets the I/O signal owner of a pipe to pid 1 (outside its tree) and writes "ready".
const PY_OWNER_OUTSIDE: &str = r#"
import fcntl, os, sys, time
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETOWN, 1)
open(sys.argv[1], 'w').write('fd=%d\n' % r)
while True:
    time.sleep(0.1)
"#;

/// A description whose signal owner (F_SETOWN) is a process outside the tree: refused by pid,
/// fd and "F_SETOWN" (after restore that pid could be anyone); the process keeps running,
/// untraced.
#[test]
fn signal_owner_outside_the_tree_is_refused() {
    assert_refused_by_name("owner-outside", PY_OWNER_OUTSIDE, &["F_SETOWN", "process 1"]);
}

/// kcmp(2) of two processes: KCMP_FILES (2) or KCMP_FS (3); Some(true) when they share it.
fn shares(a: i32, b: i32, kind: i32) -> Option<bool> {
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, 0, 0) };
    (r >= 0).then_some(r == 0)
}

/// Three children made with clone(2): one sharing its parent's fd table (CLONE_FILES), one its
/// cwd, root and umask (CLONE_FS), one neither. After restore the kernel shows the same sharing
/// (kcmp), and inside: an fd opened by the CLONE_FILES child is the parent's too and an fd it
/// closes is closed for the parent (not for the plain child); a chdir and umask of the CLONE_FS
/// child are the parent's (not the other child's).
#[test]
fn fd_table_and_fs_shared_by_clone_survive_restore() {
    let mut w = Workload::spawn("fd_shared", &[]);
    let field = |k: &str| -> i32 { w.ready_field(k).parse().unwrap() };
    let (files, fs, plain) = (field("files"), field("fs"), field("plain"));
    let sharing = |p: i32| [(files, 2), (fs, 3), (plain, 2), (plain, 3), (files, 3), (fs, 2)].map(|(c, k)| shares(p, c, k));
    let before = sharing(w.pid);
    assert_eq!(before, [Some(true), Some(true), Some(false), Some(false), Some(false), Some(false)], "test setup");
    let snap = w.snapshot();
    w.dump();
    for pid in [files, fs, plain] {
        assert!(wait_gone(pid, GONE_TIMEOUT), "pid {pid} still exists after the dump");
    }
    w.restore_detached();
    let after_sharing = sharing(w.pid);
    let after = w.snapshot();
    let mut extra = Vec::new();
    if after_sharing != before {
        extra.push(format!("kcmp FILES/FS of the parent with files, fs, plain: before {before:?}, after {after_sharing:?}"));
    }
    w.verify_restored(&snap, &after, &[], extra);
}

/// The registrations of epoll fd `efd` of `pid` as fdinfo shows them (target fd, events,
/// data), sorted.
fn registrations(pid: i32, efd: i32) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{efd}")).unwrap_or_default();
    let mut regs: Vec<String> =
        info.lines().filter_map(|l| l.strip_prefix("tfd:")).map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" ")).collect();
    regs.sort();
    regs
}

/// epoll registrations whose fd was dup'ed and the original closed (the number then left
/// free, or reused by another file): restore finds the file through the fd that still refers
/// to it and registers it under its old number; the other file keeps that number and its
/// flags. After restore the epoll's fdinfo is the same, it reports exactly the registrations
/// made ready (with their data), and nothing before.
#[test]
fn epoll_registration_of_a_moved_fd_survives_restore() {
    let mut w = Workload::spawn("fd_epoll_moved", &[]);
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    let regs_before = registrations(w.pid, 30);
    assert_eq!(regs_before.len(), 3, "test setup: {regs_before:?}");
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    let regs_after = registrations(w.pid, 30);
    let mut extra = Vec::new();
    if regs_before != regs_after {
        extra.push(format!("epoll registrations before {regs_before:?}, after {regs_after:?}"));
    }
    // The kernel lists registrations in the order of its tree (by file address): compared
    // sorted above, without the pipes' new inodes.
    w.verify_restored(&before, &after, &["fdinfo:30:tfd"], extra);
}

/// Files under /proc: a child's own /proc/self/status (read partly: offset 10), the parent's
/// /proc/<child>/stat (a file of a process restore creates after the parent), and
/// /proc/sys/kernel/ostype. After restore each fd links to the same path (the same pids) at
/// the same offset with the same flags (from /proc), and reads what that process's file says
/// now (from inside).
#[test]
fn proc_files_of_the_tree_are_opened_again_with_the_restored_pids() {
    let mut w = Workload::spawn("fd_proc", &[]);
    let child: i32 = w.ready_field("child").parse().unwrap();
    let link = |pid: i32, fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    let links = |w: &Workload| [link(child, 30), link(w.pid, 31), link(w.pid, 32)];
    let pos = |pid: i32, fd: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok().and_then(|t| t.lines().next().map(str::to_owned))
    };
    let links_before = links(&w);
    let child_pos_before = pos(child, 30);
    assert_eq!(child_pos_before.as_deref(), Some("pos:\t10"), "test setup");
    let before = w.snapshot();
    w.dump();
    assert!(wait_gone(child, GONE_TIMEOUT), "the child {child} still exists after the dump");
    w.restore_detached();
    let after = w.snapshot();
    let mut extra = Vec::new();
    if links(&w) != links_before {
        extra.push(format!("fd links before {links_before:?}, after {:?}", links(&w)));
    }
    if pos(child, 30) != child_pos_before {
        extra.push(format!("the child's status file at {:?}, was {child_pos_before:?}", pos(child, 30)));
    }
    // A new process's /proc files are new inodes.
    w.verify_restored(&before, &after, &["fdinfo:31:ino"], extra);
}

/// python3 holds /proc/1/status (a file of a process outside its tree) and writes "ready".
const PY_PROC_OUTSIDE: &str = r#"
import sys, time
f = open('/proc/1/status')
open(sys.argv[1], 'w').write('fd=%d\n' % f.fileno())
while True:
    time.sleep(0.1)
"#;

/// A /proc file of a process outside the tree: refused by pid, fd and "outside the dumped
/// tree"; the process keeps running, untraced.
#[test]
fn proc_file_of_a_process_outside_the_tree_is_refused() {
    assert_refused_by_name("proc-outside", PY_PROC_OUTSIDE, &["/proc/1/status", "outside the dumped tree"]);
}

/// Runs the python3 `program` (it writes `fd=N` of the fd to refuse into its first argument),
/// dumps it: the dump is refused naming its pid, that fd and each of `words`; the process keeps
/// running, untraced.
fn assert_refused_by_name(label: &str, program: &str, words: &[&str]) {
    let mut w = Workload::spawn_program(label, "python3", &["-c", program, "ready"]);
    let ready = w.dir.path.join("ready");
    wait_until("the python program to say ready", Duration::from_secs(15), || file_written(&ready));
    let fd = std::fs::read_to_string(&ready).unwrap().trim().trim_start_matches("fd=").to_string();
    let out = w.dump_with(&[]);
    out.assert_failure();
    let text = out.text();
    let named = [format!("pid {}", w.pid), format!("fd {fd}")];
    for word in named.iter().map(String::as_str).chain(words.iter().copied()) {
        assert!(text.contains(word), "the refusal does not say {word:?}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
}

/// A POSIX message queue (mq_open: a file of the mqueue file system, which crust cannot open
/// again by path) is refused by pid, fd and what it is, before the dump harms the process
/// (before, it was taken for a regular file "/NAME": the dump killed the process, and its
/// image could not be restored).
const PY_MQUEUE: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
name = b'/crust-test-%d' % os.getpid()
fd = libc.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None)
assert fd >= 0, ctypes.get_errno()
open(sys.argv[1], 'w').write('fd=%d' % fd)
while not os.path.exists('go'): time.sleep(0.05)
libc.mq_unlink(name)
open('unlinked', 'w').write('1')
while True: time.sleep(1)
"#;

#[test]
fn a_posix_message_queue_is_refused_by_name() {
    let mut w = Workload::spawn_program("mqueue", "python3", &["-c", PY_MQUEUE, "ready"]);
    let ready = w.dir.path.join("ready");
    wait_until("the python program to open its queue", Duration::from_secs(15), || file_written(&ready));
    let fd = std::fs::read_to_string(&ready).unwrap().trim().trim_start_matches("fd=").to_string();
    let out = w.dump_with(&[]);
    out.assert_failure();
    for word in [format!("pid {}", w.pid), format!("fd {fd}"), "POSIX message queue".to_string(), format!("/crust-test-{}", w.pid)] {
        assert!(out.text().contains(&word), "the refusal does not say {word:?}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");
    // The queue lives in the IPC namespace: the program removes it.
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("the program to remove its queue", Duration::from_secs(15), || file_written(&w.dir.path.join("unlinked")));
}
