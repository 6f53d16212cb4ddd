//! `crust restore` while the dumped PID is still held by a zombie, and the log options.

mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

/// Dumps `w` (must succeed) without reaping the killed original: it stays our zombie child,
/// holding its PID. Returns crust's output.
fn dump_leaving_a_zombie(w: &Workload) -> CrustOutput {
    let out = w.dump_with(&[]);
    assert!(out.success(), "dump of {} failed:\n{out}", w.name);
    let pid = w.pid;
    wait_until(&format!("the dumped pid {pid} to be a zombie"), Duration::from_secs(5), || proc_state(pid) == Some('Z'));
    assert!(is_our_child(pid), "the zombie {pid} is not our child");
    out
}

/// Reaps the zombie original; it must have been killed by SIGKILL.
fn reap_zombie(pid: i32) {
    let e = waitpid_timeout(pid, Duration::from_secs(5)).unwrap_or_else(|| panic!("cannot reap zombie {pid}"));
    assert_eq!(e, Exit::Signal(libc::SIGKILL), "the dumped original ended with {e}");
}

/// The dumped original stays a zombie (holding its PID) for 1.5 s after `crust restore -d`
/// starts: crust waits for the PID instead of failing, restores once the zombie is reaped,
/// with the same pid, and the process PASSes its checks.
#[test]
fn restore_waits_for_a_zombie_holding_the_pid() {
    let mut w = Workload::spawn("counter", &[]);
    let pid = w.pid;
    let before = w.snapshot();
    dump_leaving_a_zombie(&w);
    let args: Vec<String> = vec!["restore".into(), "-d".into(), "-D".into(), w.image_dir.to_string_lossy().into_owned()];
    let started = Instant::now();
    let restore = std::thread::spawn(move || crust(args));
    std::thread::sleep(Duration::from_millis(1500));
    let finished_early = restore.is_finished();
    let state = proc_state(pid);
    reap_zombie(pid);
    let reaped_at = started.elapsed();
    let out = restore.join().unwrap();
    eprintln!("{out}");
    assert!(
        !finished_early,
        "crust restore returned within 1.5 s while pid {pid} was still a zombie (state {state:?}), \
         instead of waiting for it:\n{out}"
    );
    assert!(out.success(), "restore failed although the zombie was reaped {reaped_at:?} after it started:\n{out}");
    assert!(pid_exists(pid), "pid {pid} does not exist after the restore:\n{out}");
    wait_until("the restored process to look restored", Duration::from_secs(5), || w.looks_restored());
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// A zombie that holds the PID for longer than crust waits: the restore fails with
/// "PID <pid> ... busy", creates nothing and leaves the zombie alone (still our zombie
/// child); once it is reaped, the same image restores fine.
#[test]
fn restore_fails_pid_busy_while_a_zombie_keeps_the_pid_and_works_after_reaping() {
    let mut w = Workload::spawn("counter", &[]);
    let pid = w.pid;
    dump_leaving_a_zombie(&w);
    let out = w.restore_detached_raw();
    eprintln!("{out}");
    let state = proc_state(pid);
    let ours = is_our_child(pid);
    reap_zombie(pid);
    out.assert_failure();
    let text = out.text();
    assert!(text.contains("PID") && text.contains("busy") && has_token(&text, &pid.to_string()), "expected 'PID {pid} ... busy':\n{out}");
    assert!(state == Some('Z') && ours, "the zombie was disturbed by the failed restore: state {state:?}, our child: {ours}");
    w.restore_detached();
    w.go().assert_pass();
}

/// Lines of a log file that look like tracing output (a level word).
fn log_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"].iter().any(|lv| l.contains(lv))).collect()
}

/// `crust -v -o LOGFILE dump ...` writes its info log lines into LOGFILE (no terminal
/// colours) and none to stderr, and the dump works: the original is killed, the image
/// restores (`crust -v -o LOG2 restore -d`, logging the same way) and the process PASSes.
#[test]
fn log_file_option_receives_the_log_and_dump_still_works() {
    let mut w = Workload::spawn("counter", &[]);
    let pid = w.pid;
    let before = w.snapshot();
    let log = w.dir.path.join("dump.log");
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["-v", "-o", &log.to_string_lossy(), "dump", "-t", &pid.to_string(), "-D", &img]);
    eprintln!("{out}");
    assert!(out.success(), "crust -v -o LOG dump failed:\n{out}");
    match waitpid_timeout(pid, GONE_TIMEOUT) {
        Some(e) => assert_eq!(e, Exit::Signal(libc::SIGKILL), "after dump the original should be SIGKILLed"),
        None => panic!("pid {pid} still running after the dump:\n{out}"),
    }
    assert!(wait_gone(pid, GONE_TIMEOUT), "/proc/{pid} still exists after dump");

    let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("no log file {}: {e}\n{out}", log.display()));
    let mut problems = Vec::new();
    let lines = log_lines(&text);
    if !lines.iter().any(|l| l.contains("INFO")) {
        problems.push(format!("{} has no INFO line:\n{text}", log.display()));
    }
    if !has_token(&text, &pid.to_string()) {
        problems.push(format!("{} does not mention pid {pid}:\n{text}", log.display()));
    }
    if text.contains('\x1b') {
        problems.push(format!("{} contains terminal escape sequences:\n{text:?}", log.display()));
    }
    if !log_lines(&out.stderr).is_empty() || !out.stderr.trim().is_empty() {
        problems.push(format!("stderr is not empty although the log goes to a file:\n{}", out.stderr));
    }
    assert!(problems.is_empty(), "{}\n{out}", problems.join("\n"));

    let log2 = w.dir.path.join("restore.log");
    let out = crust(["-v", "-o", &log2.to_string_lossy(), "restore", "-d", "-D", &img]);
    eprintln!("{out}");
    assert!(out.success(), "crust -v -o LOG restore -d failed:\n{out}");
    assert!(pid_exists(pid), "pid {pid} not restored:\n{out}");
    w.own(pid);
    let text2 = fs::read_to_string(&log2).unwrap_or_default();
    assert!(
        log_lines(&text2).iter().any(|l| l.contains("INFO")) && out.stderr.trim().is_empty(),
        "restore with -v -o: log file {}:\n{text2}\nstderr:\n{}",
        log2.display(),
        out.stderr
    );
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// exitsig.c: children cloned with exit signals other than SIGCHLD (SIGUSR1 alive, SIGUSR2 a
/// zombie whose signal is pending in the parent, none at all for another zombie) keep them:
/// /proc shows them, the parent reaps the zombies with their statuses and gets SIGUSR1 when
/// the live one exits.
#[test]
fn children_keep_their_exit_signals_alive_and_as_zombies() {
    let mut w = Workload::spawn("exitsig", &[]);
    let before = w.snapshot();
    let status = w.status_text();
    let kids: Vec<i32> = ["a", "b", "c"].iter().map(|k| ready_field(&status, k).unwrap().parse().unwrap()).collect();
    w.dump();
    // The dumped tree's zombies were handed to this test (its subreaper): reaped here, by pid.
    for pid in &kids {
        if is_our_child(*pid) {
            waitpid_timeout(*pid, std::time::Duration::from_secs(5));
        }
        assert!(wait_gone(*pid, std::time::Duration::from_secs(5)), "child {pid} of the dumped tree is left");
    }
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// Zombies keep their process group and session: one led its own group (setpgid), one its
/// own session (setsid) before exiting. After restore /proc shows each a zombie again with
/// its group and session (they were the parent's before).
#[test]
fn zombies_keep_their_process_group_and_session() {
    const PY: &str = r#"
import os, time
a = os.fork()
if a == 0:
    os.setpgid(0, 0)
    os._exit(3)
b = os.fork()
if b == 0:
    os.setsid()
    os._exit(4)
time.sleep(0.5)
open('ready', 'w').write('%d %d\n' % (a, b))
while True:
    time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("py-zombie-groups", "python3", &["-c", PY]);
    wait_until("python3 to leave two zombies", std::time::Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let kids: Vec<i32> =
        std::fs::read_to_string(w.dir.path.join("ready")).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    let groups = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<String> = stat.rsplit(')').next().unwrap_or("").split_whitespace().map(String::from).collect();
        (f.first().cloned().unwrap_or_default(), f.get(2).cloned().unwrap_or_default(), f.get(3).cloned().unwrap_or_default())
    };
    let before: Vec<_> = kids.iter().map(|k| groups(*k)).collect();
    assert_eq!(before[0], ("Z".into(), kids[0].to_string(), before[0].2.clone()), "test setup: A is not a zombie group leader");
    assert_eq!(before[1], ("Z".into(), kids[1].to_string(), kids[1].to_string()), "test setup: B is not a zombie session leader");
    w.dump();
    for pid in &kids {
        if is_our_child(*pid) {
            waitpid_timeout(*pid, std::time::Duration::from_secs(5));
        }
        assert!(wait_gone(*pid, std::time::Duration::from_secs(5)), "zombie {pid} of the dumped tree is left");
    }
    w.restore_detached();
    let after: Vec<_> = kids.iter().map(|k| groups(*k)).collect();
    assert_eq!(after, before, "zombies (state, pgrp, session) after restore");
}
