//! A job started from an interactive shell, restored on the terminal crust runs on
//! (`--shell-job` / `-j`, as CRIU).

mod common;
#[path = "common/terminal.rs"]
mod terminal;
use common::*;
use terminal::*;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

/// The job of a shell on a terminal, blocked reading the terminal, is dumped with -j (without
/// it the terminal is refused by name), then restored with -j by a crust running on a terminal:
/// the job is in crust's session, in its own process group, in the terminal's foreground; it
/// reads what is typed and answers on the terminal; when it ends crust exits with its status.
#[test]
fn shell_job_comes_back_in_the_foreground_of_crusts_terminal() {
    let (mut master, slave) = openpty();
    let slave_for_shell = slave.try_clone().unwrap();
    let mut w =
        Workload::spawn_program_with("shelljob", "setsid", &["-c", &build_workload("shelljob").to_string_lossy(), "status"], move |cmd| {
            on_terminal(cmd, &slave_for_shell);
        });
    let shell = w.pid;
    let line = w.wait_status_line("READY", READY_TIMEOUT);
    let job: i32 = ready_field(&line, "job").unwrap().parse().unwrap();
    w.own(job);
    let mut seen = String::new();
    writeln!(master, "before").unwrap();
    assert!(read_until(&mut master, &mut seen, "got before"), "the job does not answer before the dump: {seen:?}");

    let img = w.image_dir.to_string_lossy().into_owned();
    let refused = crust(["dump", "-t", &job.to_string(), "-D", &img]);
    refused.assert_failure();
    assert!(refused.text().contains("terminal") && refused.text().contains("--shell-job"), "{refused}");
    assert!(pid_exists(job), "a refused dump killed the job");

    crust(["dump", "-t", &job.to_string(), "-D", &img, "-j"]).assert_success();
    assert!(wait_gone(job, Duration::from_secs(5)) || proc_state(job) == Some('Z'), "the job survived its dump");
    // The shell goes too (as when the user closes it); the terminal is free for crust.
    // SAFETY: kill takes integers only; the shell is our child.
    unsafe { libc::kill(shell, libc::SIGKILL) };
    let _ = w.reap(Duration::from_secs(5));
    assert!(wait_gone(job, Duration::from_secs(5)), "pid {job} still taken");

    let mut restore = Command::new("setsid");
    restore.args(["-c", crust_bin(), "restore", "-j", "-D", &img]);
    on_terminal(&mut restore, &slave);
    let mut crust_proc = restore.spawn().unwrap();
    // The process exists from its creation on; wait until crust has released it.
    wait_released(job);
    let stat = || -> (i32, i32, i32, i32) {
        let info = std::fs::read_to_string(format!("/proc/{job}/stat")).unwrap();
        let f: Vec<i32> = info.rsplit(')').next().unwrap().split_whitespace().skip(1).take(5).map(|v| v.parse().unwrap()).collect();
        (
            f[1],
            f[2],
            f[4],
            std::fs::read_to_string(format!("/proc/{job}/status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        )
    };
    let (pgrp, sid, tpgid, tracer) = stat();
    assert_eq!(tracer, 0, "the job is still traced by crust");
    assert_eq!(pgrp, job, "the job leads its own process group again");
    assert_eq!(sid, crust_proc.id() as i32, "the job is in the session of the restoring crust");
    assert_eq!(tpgid, job, "the job has the terminal's foreground");

    writeln!(master, "after").unwrap();
    assert!(read_until(&mut master, &mut seen, "got after"), "the restored job does not answer on the terminal: {seen:?}");
    writeln!(master, "quit").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = crust_proc.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "crust restore did not end with the job");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "crust restore -j exited with {status}");
    assert!(w.status_text().contains("PASS job"), "{}", w.status_text());
}

/// `-j` allows a terminal, it does not demand one (as the reference tool, whose users pass it
/// out of habit): a daemon (its own session, no terminal: `setsid sleep`) dumped with -j is
/// no shell job. It comes back by a crust with no terminal, with -j or without, in its own
/// session, as it was.
#[test]
fn a_tree_of_its_own_session_dumped_with_shell_job_restores_without_a_terminal() {
    let mut w = Workload::spawn_program("setsid-sleep", "setsid", &["sleep", "1000"]);
    common::wait_in_syscall(w.pid, common::SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let sid = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(3)
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    assert_eq!(sid(w.pid), w.pid, "test setup: sleep leads its own session");
    for restore_with_j in [false, true] {
        let before = w.snapshot();
        w.dump_killing(&["-j"]);
        w.restore_extra = if restore_with_j { vec!["-j".into()] } else { Vec::new() };
        w.restore_detached();
        assert_same_proc(&before, &w.snapshot(), &[]);
        assert_eq!(sid(w.pid), w.pid, "restored (-j at restore: {restore_with_j}): sleep leads its own session again");
    }
}
