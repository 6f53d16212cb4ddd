//! A dump that fails, or that is interrupted by SIGINT, SIGTERM, SIGHUP or SIGPIPE (a user's
//! Ctrl-C, a service manager, a closed terminal), at any step, with or without -R, leaves the
//! tree exactly as it was and running, and leaves no image that could be taken for one.
//!
//! Each case runs counter.c (memory of every anonymous kind, a counter in a loop), makes crust
//! misbehave at one step through CRUST_FAULT=STEP:1:ACTION (see src/fault.rs), and checks:
//! crust's exit status (128 + the signal, or failure) and message; from /proc, that the
//! process is running, untraced, with the same mappings, signal mask and fds as before; that
//! its counter still advances; that the image directory holds only FAILED-DUMP.txt and that
//! `crust restore` says it is a failed dump; and, from inside, that counter.c's own checks of
//! its memory pass.

mod common;
use common::*;
use std::time::Duration;

const STEPS: &[&str] = &[
    "dump-protected-ahead",
    "dump-sampled",
    "dump-frozen",
    "dump-batch-running",
    "dump-files",
    "dump-pages-open",
    "dump-memory",
    "dump-collected",
    "dump-checksums",
];

/// CRUST_FAULT=`fault`; with -R, the memory write-protected ahead of the freeze whatever its
/// size (the workloads are small), so that the time before the freeze is tried too.
fn fault_env(fault: &str, leave_running: bool) -> Vec<(String, String)> {
    let mut env = vec![("CRUST_FAULT".to_string(), fault.to_string())];
    if leave_running {
        env.push(("CRUST_PROTECT_AHEAD".into(), "always".into()));
    }
    env
}

fn check_interrupted_dump(step: &str, action: &str, leave_running: bool) {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    let before = w.snapshot();
    w.crust_env = fault_env(&format!("{step}:1:{action}"), leave_running);
    let out = w.dump_with(if leave_running { &["-R"] } else { &[] });
    let what = format!("{step} {action} {}", if leave_running { "-R" } else { "(kill mode)" });
    let want = match action {
        "fail" => Exit::Code(1),
        "SIGINT" => Exit::Code(128 + libc::SIGINT),
        "SIGTERM" => Exit::Code(128 + libc::SIGTERM),
        "SIGHUP" => Exit::Code(128 + libc::SIGHUP),
        "SIGPIPE" => Exit::Code(128 + libc::SIGPIPE),
        other => panic!("unknown action {other}"),
    };
    assert_eq!(out.exit(), want, "{what}: crust's exit status:\n{out}");
    let text = out.text();
    assert!(
        text.contains("(it was left running)") || text.contains("(it runs on, untouched)"),
        "{what}: the message must say the tree runs on:\n{out}"
    );
    if action != "fail" {
        assert!(text.contains(&format!("interrupted by {action}")), "{what}: the message names the signal:\n{out}");
    }

    // From /proc: running, untraced, as it was.
    assert!(matches!(proc_state(w.pid), Some('R' | 'S')), "{what}: state {:?}", proc_state(w.pid));
    assert_eq!(proc_status_field(w.pid, "TracerPid").as_deref(), Some("0"), "{what}: still traced");
    let after = w.snapshot();
    assert_same_proc(&before, &after, &[]);
    let c1 = read_mem_u64(w.pid, addr);
    std::thread::sleep(Duration::from_millis(200));
    let c2 = read_mem_u64(w.pid, addr);
    assert!(c2 > c1, "{what}: the counter stopped ({c1} then {c2})");

    // No image that could be taken for one.
    let names: Vec<String> = image_files(&w.image_dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["FAILED-DUMP.txt"], "{what}: what the failed dump left in the image directory");
    let restore = crust(["restore", "-d", "-D", &w.image_dir.to_string_lossy()]);
    assert!(!restore.success(), "{what}: restore of a failed dump succeeded:\n{restore}");
    assert!(restore.text().contains("holds a failed dump"), "{what}: restore must say it is a failed dump:\n{restore}");

    // From inside: its memory is what it was.
    w.go().assert_pass();
}

fn check_every_step(action: &str) {
    for step in STEPS {
        for leave_running in [true, false] {
            check_interrupted_dump(step, action, leave_running);
        }
    }
}

#[test]
fn dump_interrupted_by_sigint_at_any_step_leaves_the_process_running_as_it_was() {
    check_every_step("SIGINT");
}

#[test]
fn dump_interrupted_by_sigterm_at_any_step_leaves_the_process_running_as_it_was() {
    check_every_step("SIGTERM");
}

#[test]
fn dump_interrupted_by_sighup_at_any_step_leaves_the_process_running_as_it_was() {
    check_every_step("SIGHUP");
}

#[test]
fn dump_interrupted_by_sigpipe_at_any_step_leaves_the_process_running_as_it_was() {
    check_every_step("SIGPIPE");
}

#[test]
fn dump_failing_at_any_step_leaves_the_process_running_as_it_was() {
    check_every_step("fail");
}

/// crust's scratch area: the one trace a crust killed during a dump may leave (64 KiB of
/// shared anonymous memory nobody else uses; see docs/injection.md), until the next dump
/// removes it (so there is never more than one). Removed from a snapshot, with what it adds to
/// the process's sizes.
fn without_scratch_area(s: ProcSnapshot) -> ProcSnapshot {
    without_one_area(s, "scratch-like area", |range, v| {
        let (a, b) = range.split_once('-').unwrap();
        u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap() == 64 * 1024
            && (v.starts_with("rw-s") || v.starts_with("rwxs"))
            && v.contains("/dev/zero (deleted)")
    })
}

/// `s` without the area (at most one) whose range and maps line `is_it` accepts.
fn without_one_area(mut s: ProcSnapshot, what: &str, is_it: impl Fn(&str, &str) -> bool) -> ProcSnapshot {
    let found: Vec<String> =
        s.entries.iter().filter_map(|(k, v)| k.strip_prefix("maps:").filter(|range| is_it(range, v)).map(String::from)).collect();
    assert!(found.len() <= 1, "more than one {what}: {found:?}");
    for range in found {
        s.entries.remove(&format!("maps:{range}"));
        s.entries.remove(&format!("vmflags:{range}"));
    }
    s
}

/// Let go by its dead tracer, a process runs its parking frame's rt_sigreturn as soon as it is
/// scheduled, which gives it back its own signal mask: on a loaded machine that can be after
/// TracerPid reads 0, so wait (bounded) for the mask it had before.
fn wait_returned_by_itself(w: &Workload, before: &ProcSnapshot) {
    let mask = before.entries.get("status:SigBlk").cloned();
    wait_until("the process to return to its own signal mask", Duration::from_secs(5), || {
        proc_status_field(w.pid, "SigBlk").map(|m| m.trim().to_string()) == mask
    });
}

/// SIGKILL of crust, at every step of a dump, with and without -R: the process was parked on a
/// signal frame holding its own state, so let go by the dying tracer it returns to it by
/// itself: same registers (counter.c goes on counting and its own checks pass; avx.c checks its
/// vector and x87 registers), same signal mask, same mappings but crust's scratch area.
fn check_killed_dump(workload: &str, step: &str, leave_running: bool) {
    let mut w = Workload::spawn(workload, &[]);
    let before = w.snapshot();
    w.crust_env = fault_env(&format!("{step}:1:kill"), leave_running);
    let out = w.dump_with(if leave_running { &["-R"] } else { &[] });
    let what = format!("{workload}: crust killed at {step} {}", if leave_running { "-R" } else { "(kill mode)" });
    assert_eq!(out.exit(), Exit::Signal(libc::SIGKILL), "{what}: crust's end:\n{out}");
    wait_until("the process to be let go by its dead tracer", Duration::from_secs(5), || {
        proc_status_field(w.pid, "TracerPid").as_deref() == Some("0")
    });
    wait_returned_by_itself(&w, &before);
    assert!(matches!(proc_state(w.pid), Some('R' | 'S')), "{what}: state {:?}", proc_state(w.pid));
    let after = without_scratch_area(w.snapshot());
    assert_same_proc(&before, &after, &["status:Vm*", "status:RssShmem", "status:RssFile", "stat:vsize"]);
    w.go().assert_pass();
}

#[test]
fn dump_killed_at_any_step_leaves_the_process_running_as_it_was() {
    for step in STEPS {
        for leave_running in [true, false] {
            check_killed_dump("counter", step, leave_running);
        }
    }
}

#[test]
fn dump_killed_at_any_step_leaves_vector_and_fpu_registers_as_they_were() {
    for step in STEPS {
        check_killed_dump("avx", step, true);
    }
}

/// crust held up (here by 3 s) while the processes run their batch of calls by themselves
/// (src/sys/remote/batch.rs): past 2 s each goes back through its signal frame on its own, so
/// crust must notice, fail the dump naming the process, and touch it no more: it runs on as it
/// was (its scratch area aside, which crust can no longer remove), untraced, and its own checks
/// of its memory pass.
#[test]
fn dump_held_up_while_processes_run_their_batch_fails_and_leaves_them_running() {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    let before = w.snapshot();
    w.crust_env = vec![("CRUST_FAULT".into(), "dump-batch-running:1:sleep3000".into())];
    let out = w.dump_with(&["-R"]);
    assert_eq!(out.exit(), Exit::Code(1), "crust's exit status:\n{out}");
    let text = out.text();
    assert!(text.contains(&format!("pid {}", w.pid)) && text.contains("went on by itself"), "the error names the process:\n{out}");
    assert_eq!(proc_status_field(w.pid, "TracerPid").as_deref(), Some("0"), "still traced");
    wait_returned_by_itself(&w, &before);
    let after = without_scratch_area(w.snapshot());
    assert_same_proc(&before, &after, &["status:Vm*", "status:RssShmem", "status:RssFile", "stat:vsize"]);
    let c1 = read_mem_u64(w.pid, addr);
    std::thread::sleep(Duration::from_millis(200));
    let c2 = read_mem_u64(w.pid, addr);
    assert!(c2 > c1, "the counter stopped ({c1} then {c2})");
    w.go().assert_pass();
}

/// A restore that fails, is interrupted or is killed at any step leaves nothing behind: no
/// process with the image's pid (every process it created is killed; with SIGKILL of crust, by
/// the kernel, since they are traced with PTRACE_O_EXITKILL), nothing in the way of the next
/// restore, which succeeds and whose process passes its own checks.
fn check_failed_restore(workload: &str, step: &str, action: &str) {
    let mut w = Workload::spawn(workload, &[]);
    w.dump();
    w.crust_env = vec![("CRUST_FAULT".into(), format!("{step}:1:{action}"))];
    let out = w.restore_detached_raw();
    let what = format!("{workload}: restore {action} at {step}");
    let want = match action {
        "kill" => Exit::Signal(libc::SIGKILL),
        "fail" => Exit::Code(1),
        "SIGINT" => Exit::Code(128 + libc::SIGINT),
        "SIGTERM" => Exit::Code(128 + libc::SIGTERM),
        other => panic!("unknown action {other}"),
    };
    assert_eq!(out.exit(), want, "{what}: crust's end:\n{out}");
    assert!(wait_gone(w.pid, Duration::from_secs(5)), "{what}: pid {} is left", w.pid);
    w.crust_env.clear();
    w.restore_detached();
    w.go().assert_pass();
}

const RESTORE_STEPS: &[&str] = &["restore-segments", "restore-tree", "restore-descriptions", "restore-process", "restore-before-resume"];

#[test]
fn restore_failing_interrupted_or_killed_at_any_step_leaves_nothing_behind() {
    for step in RESTORE_STEPS {
        for action in ["fail", "SIGINT", "SIGTERM", "kill"] {
            check_failed_restore("counter", step, action);
        }
    }
}

/// Waits (bounded) for the killed child `pid` of a tree to be gone, reaping it if it was
/// orphaned to this test (a child subreaper).
fn reap_orphan(pid: i32, what: &str) {
    wait_until(&format!("{what}: child {pid} to be gone"), Duration::from_secs(5), || {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::__WALL),
        );
        !pid_exists(pid)
    });
}

/// The line of SysV segment `shmid` in /proc/sysvipc/shm.
fn sysv_segment(shmid: i32) -> Option<String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    text.lines().skip(1).find(|l| l.split_whitespace().nth(1) == Some(shmid.to_string().as_str())).map(str::to_owned)
}

/// tree_sysvshm.c (a parent and child sharing segment A, removed, which dies with the dumped
/// tree, and B, kept): a restore failed or killed at each step, A recreated by then, leaves no
/// segment A (a failed restore removes it; after SIGKILL of crust, the next crust run does,
/// from its journal, before anything else), B as it was, shm_next_id at -1; the next restore
/// brings both back and the programs pass their own checks.
#[test]
fn restore_of_sysv_segments_failing_or_killed_at_any_step_leaves_no_segment() {
    for step in RESTORE_STEPS {
        for action in ["fail", "kill"] {
            let what = format!("SysV: restore {action} at {step}");
            let mut w = Workload::spawn("tree_sysvshm", &[]);
            let line = w.wait_status_line("READY parent ", Duration::from_secs(20));
            let field = |k: &str| -> i32 { ready_field(&line, k).unwrap_or_else(|| panic!("no {k}= in {line}")).parse().unwrap() };
            let (a, b, child) = (field("a"), field("b"), field("child"));
            w.dump();
            reap_orphan(child, &what);
            assert!(sysv_segment(a).is_none(), "{what}: test setup: segment A outlived the dumped tree");
            let kept = sysv_segment(b).expect("test setup: segment B is gone");
            w.crust_env = vec![("CRUST_FAULT".into(), format!("{step}:1:{action}"))];
            let out = w.restore_detached_raw();
            let want = if action == "kill" { Exit::Signal(libc::SIGKILL) } else { Exit::Code(1) };
            assert_eq!(out.exit(), want, "{what}: crust's end:\n{out}");
            assert!(wait_gone(w.pid, Duration::from_secs(5)), "{what}: pid {} is left", w.pid);
            reap_orphan(child, &what);
            w.crust_env.clear();
            if action == "kill" {
                // Any crust restore repairs first: one of no image at all.
                let none = w.dir.path.join("no-image");
                let _ = crust(["restore", "-D", &none.to_string_lossy()]);
            }
            assert_eq!(sysv_segment(a), None, "{what}: segment A is left");
            // key shmid perms size cpid (lpid: the last to detach) nattch uid gid cuid cgid
            let ids =
                |l: &str| l.split_whitespace().take(11).enumerate().filter(|(i, _)| *i != 5).map(|(_, f)| f.to_owned()).collect::<Vec<_>>();
            assert_eq!(sysv_segment(b).map(|l| ids(&l)), Some(ids(&kept)), "{what}: segment B changed");
            assert_eq!(std::fs::read_to_string("/proc/sys/kernel/shm_next_id").unwrap().trim(), "-1", "{what}: shm_next_id is left set");
            w.restore_detached();
            w.go().assert_pass();
            let _ = crust::sys::sysv::remove(b);
        }
    }
}

#[test]
fn restore_of_a_threaded_process_killed_at_any_step_leaves_nothing_behind() {
    for step in RESTORE_STEPS {
        check_failed_restore("threaded", step, "kill");
    }
}

/// Killed while it copies the pages: crust copies them itself (no descriptor or call in the
/// process), so the process has no trace of it but the scratch area, and no descriptor more.
#[test]
fn dump_killed_while_crust_copies_the_pages_leaves_no_descriptor_in_the_process() {
    for leave_running in [true, false] {
        let mut w = Workload::spawn("counter", &[]);
        let before = w.snapshot();
        w.crust_env = vec![("CRUST_FAULT".into(), "dump-pages-open:1:kill".into())];
        let out = w.dump_with(if leave_running { &["-R"] } else { &[] });
        assert_eq!(out.exit(), Exit::Signal(libc::SIGKILL), "crust's end:\n{out}");
        wait_until("the process to be let go by its dead tracer", Duration::from_secs(5), || {
            proc_status_field(w.pid, "TracerPid").as_deref() == Some("0")
        });
        let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{}/fd", w.pid))
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let extra: Vec<i32> = fds.iter().copied().filter(|fd| !before.entries.contains_key(&format!("fd:{fd}"))).collect();
        assert!(extra.is_empty(), "descriptors left in the process: {extra:?}");
        wait_returned_by_itself(&w, &before);
        let after = without_scratch_area(w.snapshot());
        assert_same_proc(&before, &after, &["status:Vm*", "status:RssShmem", "status:RssFile", "stat:vsize"]);
        w.go().assert_pass();
    }
}

/// crust's code page in a process that refuses writable code (see
/// `dump_of_a_process_refusing_writable_code_killed_in_its_batch_leaves_what_the_next_dump_removes`),
/// removed from a snapshot.
fn without_code_page(s: ProcSnapshot) -> ProcSnapshot {
    without_one_area(s, "code page", |_, v| v.starts_with("r-xs") && v.contains("/memfd:crust-batch-code-"))
}

/// A process that refuses writable code (mdwe.c, PR_SET_MDWE: an executable scratch area is
/// refused) runs its batch of calls from a page crust gives it, executable and never writable
/// (a sealed memfd mapped read and execute). crust killed while the process runs it: the
/// process returns to itself by itself, still refusing writable code, with crust's scratch area
/// and that page as the only traces; the next dump removes both (the restored process has the
/// mappings it had before), and the restored program's own checks pass.
#[test]
fn dump_of_a_process_refusing_writable_code_killed_in_its_batch_leaves_what_the_next_dump_removes() {
    let mut w = Workload::spawn("mdwe", &["refuse"]);
    let before = w.snapshot();
    w.crust_env = vec![("CRUST_FAULT".into(), "dump-batch-running:1:kill".into())];
    let out = w.dump_with(&["-R"]);
    assert_eq!(out.exit(), Exit::Signal(libc::SIGKILL), "crust's end:\n{out}");
    wait_until("the process to be let go by its dead tracer", Duration::from_secs(5), || {
        proc_status_field(w.pid, "TracerPid").as_deref() == Some("0")
    });
    wait_returned_by_itself(&w, &before);
    let left = w.snapshot();
    let pages = left.entries.iter().filter(|(k, v)| k.starts_with("maps:") && v.contains("/memfd:crust-batch-code-")).count();
    assert_eq!(pages, 1, "crust's code page, read and execute only, in the process:\n{:?}", left.entries);
    let left = without_code_page(without_scratch_area(left));
    assert_same_proc(&before, &left, &["status:Vm*", "status:RssShmem", "status:RssFile", "stat:vsize"]);
    w.crust_env.clear();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// A program holding what outlives a process in the kernel (a flock and an OFD lock on a file,
/// a TCP listener on loopback, a UNIX listener bound to a path, a connected TCP pair): a
/// restore failed, interrupted or killed at each step leaves none of it (no lock on the file in
/// /proc/locks, no listener or connection on the ports in `ss`, no socket file, no network
/// lock element, no process); then a whole restore brings everything back, which the program
/// checks itself.
#[test]
fn failed_restore_at_any_step_leaves_no_lock_socket_rule_or_process() {
    const PY: &str = r#"
import fcntl, os, socket, struct, time
f = open('locked', 'w'); fcntl.flock(f, fcntl.LOCK_EX)
g = open('ofd', 'w'); fcntl.fcntl(g, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))  # F_OFD_SETLK
t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen(3)
c = socket.create_connection(t.getsockname()); a, _ = t.accept()
u = socket.socket(socket.AF_UNIX); u.bind('unix.sock'); u.listen(1)
open('ready', 'w').write('%d %d' % (t.getsockname()[1], os.stat('locked').st_ino))
while not os.path.exists('go'): time.sleep(0.05)
c.sendall(b'x'); ok = a.recv(1) == b'x'
n = socket.create_connection(t.getsockname()); ok = ok and t.accept()[0] is not None
v = socket.socket(socket.AF_UNIX); v.connect('unix.sock'); ok = ok and u.accept()[0] is not None
try:
    fcntl.flock(open('locked'), fcntl.LOCK_EX | fcntl.LOCK_NB); ok = False
except BlockingIOError:
    pass
open('result', 'w').write('PASS' if ok else 'FAIL')
time.sleep(100)
"#;
    let mut w = Workload::spawn_program("restore-walk", "python3", &["-c", PY]);
    wait_until("python3 to take its locks and sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let ready = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let (port, inode) = ready.split_once(' ').unwrap();
    let dumped = w.dump_with(&["--tcp-established"]);
    dumped.assert_success();
    // The dump's lock of the connection stays until a restore brings it back (or lifts it
    // when it fails once the sockets exist); a failed restore adds none of its own.
    let dump_lock = lock_elements(port);
    let held = |what: &str| -> Vec<String> {
        let mut found = Vec::new();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        found.extend(
            locks.lines().filter(|l| l.split_whitespace().any(|f| f.ends_with(&format!(":{inode}")))).map(|l| format!("{what}: lock {l}")),
        );
        let ss = std::process::Command::new("ss").args(["-tanH", &format!("( sport = :{port} or dport = :{port} )")]).output().unwrap();
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        found.extend(ss.lines().filter(|l| !l.starts_with("TIME-WAIT")).map(|l| format!("{what}: socket {l}")));
        let now = lock_elements(port);
        found.extend(
            now.iter().filter(|e| !dump_lock.contains(e)).map(|e| format!("{what}: a network lock element the restore added: {e}")),
        );
        found
    };
    for step in RESTORE_STEPS {
        for action in ["fail", "SIGINT", "kill"] {
            let what = format!("restore {action} at {step}");
            w.crust_env = vec![("CRUST_FAULT".into(), format!("{step}:1:{action}"))];
            let out = crust_env(["restore", "-d", "--tcp-established", "-D", &w.image_dir.to_string_lossy()], &w.crust_env);
            assert!(!out.success(), "{what}: the restore succeeded:\n{out}");
            assert!(wait_gone(w.pid, Duration::from_secs(5)), "{what}: pid {} is left", w.pid);
            // A killed crust's guardian lifts its network lock a moment later.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut left = held(&what);
            while !left.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                left = held(&what);
            }
            assert!(left.is_empty(), "{}", left.join("\n"));
        }
    }
    w.crust_env.clear();
    let out = crust(["restore", "-d", "--tcp-established", "-D", &w.image_dir.to_string_lossy()]);
    out.assert_success();
    w.own(w.pid);
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("the restored program to check itself", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "PASS");
}

/// The elements of crust's network lock (nft table inet crust) that name `port`.
fn lock_elements(port: &str) -> Vec<String> {
    let nft = std::process::Command::new("nft").args(["list", "table", "inet", "crust"]).output().unwrap();
    let text = String::from_utf8_lossy(&nft.stdout).into_owned();
    text.split([',', '{', '}']).map(str::trim).filter(|e| e.contains(&format!(". {port} "))).map(str::to_owned).collect()
}

/// The issue's own reproducer, from outside: `crust dump -R` killed (SIGKILL) or interrupted
/// (SIGINT, SIGTERM) by another process at moments spread over a whole dump. Every time the
/// program runs on untraced, with its memory, registers, mask, mappings and fds as they were
/// (a SIGKILL may leave crust's scratch area, see docs/injection.md), and it passes its own
/// checks at the end.
#[test]
fn dump_killed_or_interrupted_from_outside_at_any_moment_leaves_the_program_unharmed() {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    let before = w.snapshot();
    let img = w.image_dir.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    crust(["dump", "-R", "-t", &w.pid.to_string(), "-D", &img]).assert_success();
    let whole = started.elapsed();
    let rounds = 12u32;
    for round in 0..rounds {
        let signal = [libc::SIGKILL, libc::SIGINT, libc::SIGTERM][round as usize % 3];
        let _ = std::fs::remove_dir_all(&w.image_dir);
        std::fs::create_dir_all(&w.image_dir).unwrap();
        let mut child = crust_command()
            .args(["dump", "-R", "-t", &w.pid.to_string(), "-D", &img])
            .env("CRUST_PROTECT_AHEAD", if round % 2 == 0 { "always" } else { "never" })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole * round / rounds);
        // SAFETY: kill takes integers only; the pid is this test's own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let what = format!("round {round}: signal {signal} after {:?} (crust ended with {status})", whole * round / rounds);
        wait_until("the process to be let go", Duration::from_secs(5), || proc_status_field(w.pid, "TracerPid").as_deref() == Some("0"));
        let counted = read_mem_u64(w.pid, addr);
        wait_until(&format!("{what}: the counter to go on"), Duration::from_secs(5), || read_mem_u64(w.pid, addr) > counted);
        assert!(matches!(proc_state(w.pid), Some('R' | 'S')), "{what}: state {:?}", proc_state(w.pid));
        let after = without_scratch_area(w.snapshot());
        assert_same_proc(&before, &after, &["status:Vm*", "status:RssShmem", "status:RssFile", "stat:vsize", "status:FDSize"]);
    }
    w.go().assert_pass();
}
