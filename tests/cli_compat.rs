//! crust takes CRIU's command line (issue 10): the options scripts pass to `dump` and
//! `restore` work with CRIU's meaning, or are refused in one line before anything is done; the
//! log, pidfile, config file, version, check and output behave as CRIU's users expect.
//!
//! Each test kills only the processes it started or restored, by pid (through `Workload`).

mod common;
use common::*;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A python3 process holding a POSIX write lock on `DIR/locked` and printing `tick N` every
/// 50 ms to its log (stdout).
const LOCKER: &str = "import fcntl, os, sys, time
f = open('locked', 'w')
fcntl.lockf(f, fcntl.LOCK_EX)
print('locked', os.getpid(), flush=True)
n = 0
while True:
    n += 1
    print('tick', n, flush=True)
    time.sleep(0.05)
";

fn spawn_locker() -> Workload {
    let w = Workload::spawn_program("cli-locker", "python3", &["-c", LOCKER]);
    wait_until("the locker to tick", Duration::from_secs(10), || w.log_text().contains("tick 3\n"));
    w
}

/// The tick numbers the locker printed, in order.
fn ticks(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.strip_prefix("tick ")).filter_map(|n| n.parse().ok()).collect()
}

/// The /proc/locks lines of `pid`, without their first column (a position in the list).
fn locks_of(pid: i32) -> Vec<String> {
    let text = fs::read_to_string("/proc/locks").unwrap_or_default();
    let fields = text.lines().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>());
    fields.filter(|f| f.get(3) == Some(&pid.to_string().as_str())).map(|f| f.join(" ")).collect()
}

fn no_ansi(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("no log file {}: {e}", path.display()));
    assert!(!text.contains('\x1b'), "{} contains terminal escape sequences:\n{text:?}", path.display());
    text
}

/// The shape of a script using CRIU: dump and restore with CRIU's option names (logs and
/// pidfile in a work dir), on a real process holding a lock. It comes back with its pid, its
/// lock and its counting where it stopped; the pidfile holds its pid; the logs are in the
/// work dir, without colour codes; a restore that fails has its error in its log.
#[test]
fn criu_style_script_dumps_and_restores_a_process_holding_a_lock() {
    let mut w = spawn_locker();
    let pid = w.pid;
    let (img, work) = (w.dir.path.join("img"), w.dir.path.join("work"));
    fs::create_dir_all(&work).unwrap();
    let (img_s, work_s, pid_s) = (img.to_string_lossy().into_owned(), work.to_string_lossy().into_owned(), pid.to_string());
    let lock_before = locks_of(pid);
    assert_eq!(lock_before.len(), 1, "the locker holds one lock: {lock_before:?}");
    let out = crust([
        "dump",
        "-t",
        &pid_s,
        "-D",
        &img_s,
        "-o",
        "dump.log",
        "-v4",
        "-l",
        "--link-remap",
        "--tcp-established",
        "--ext-unix-sk",
        "--ghost-limit",
        "1M",
        "-W",
        &work_s,
    ]);
    assert!(out.success(), "the CRIU-style dump failed:\n{out}");
    assert_eq!(w.reap(GONE_TIMEOUT), Some(Exit::Signal(libc::SIGKILL)), "the dumped locker was not killed:\n{out}");
    let last = *ticks(&w.log_text()).last().expect("ticks before the dump");
    let dump_log = no_ansi(&work.join("dump.log"));
    assert!(dump_log.contains("INFO") && has_token(&dump_log, &pid_s), "dump.log lacks the -v4 log of pid {pid}:\n{dump_log}");
    assert!(!img.join("dump.log").exists(), "-o went to the image directory although -W was given");

    let out = crust([
        "restore",
        "-D",
        &img_s,
        "-d",
        "-l",
        "--pidfile",
        "restored.pid",
        "-o",
        "restore.log",
        "-v4",
        "-W",
        &work_s,
        "--tcp-established",
        "--ext-unix-sk",
        "--link-remap",
        "--manage-cgroups=ignore",
    ]);
    if pid_exists(pid) {
        w.own(pid);
    }
    assert!(out.success(), "the CRIU-style restore failed:\n{out}");
    let running = || matches!(proc_state(pid), Some('R' | 'S')) && proc_status_field(pid, "TracerPid").as_deref() == Some("0");
    wait_until("the restored locker to run", Duration::from_secs(5), running);
    assert_eq!(fs::read_to_string(work.join("restored.pid")).ok().as_deref(), Some(pid_s.as_str()), "the pidfile");
    assert_eq!(locks_of(pid), lock_before, "the lock after the restore");
    wait_until("the restored locker to tick on", Duration::from_secs(10), || ticks(&w.log_text()).last() >= Some(&(last + 3)));
    let all = ticks(&w.log_text());
    assert!(all.windows(2).all(|p| p[1] == p[0] + 1), "the ticks did not go on where they stopped: {all:?}");
    assert_eq!(w.log_text().matches("locked").count(), 1, "the locker started again instead of going on");
    assert!(no_ansi(&work.join("restore.log")).contains("INFO"), "restore.log lacks the -v4 log");

    // A restore that cannot work (the pid is taken): its error ends its log too.
    let out = crust(["restore", "-D", &img_s, "-d", "-o", "failed.log", "-W", &work_s]);
    assert!(!out.success(), "a second restore of a running pid succeeded:\n{out}");
    let failed = no_ansi(&work.join("failed.log"));
    assert!(failed.contains("ERROR") && failed.contains("busy") && has_token(&failed, &pid_s), "failed.log lacks the error:\n{failed}");
    w.signal(libc::SIGKILL);
    assert_eq!(w.reap(GONE_TIMEOUT), Some(Exit::Signal(libc::SIGKILL)));
}

/// Checks a refusal: exit code 1, one line on stderr naming `option`, nothing on stdout.
#[track_caller]
fn assert_refused(out: &CrustOutput, option: &str) {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.exit(), Exit::Code(1), "{option} was not refused with exit code 1:\n{out}");
    assert_eq!(lines.len(), 1, "{option}: the refusal is not one line:\n{out}");
    assert!(lines[0].contains(option) && lines[0].contains("not supported yet"), "{option}: the refusal does not name it:\n{out}");
    assert!(!lines[0].contains("unexpected argument"), "{option}: clap's message instead of crust's:\n{out}");
}

/// A process crust did not touch: running or sleeping, not stopped, untraced, and none of
/// its memory areas was crust's.
#[track_caller]
fn assert_untouched(w: &Workload) {
    let pid = w.pid;
    let state = proc_state(pid);
    assert!(matches!(state, Some('R' | 'S')), "pid {pid} is in state {state:?}");
    assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"), "pid {pid} is traced");
    assert!(
        !w.image_dir.join("inventory.img").exists() && !w.image_dir.join("FAILED-DUMP.txt").exists(),
        "the dump wrote into the image directory"
    );
}

/// `crust dump -t PID -D DIR ARGS` must refuse `option` and leave the process as it was.
fn dump_refuses(option: &str, args: &[&str]) {
    let mut w = Workload::spawn("counter", &[]);
    let out = w.dump_with(args);
    assert_refused(&out, option);
    assert_untouched(&w);
    w.go().assert_pass();
}

/// `crust restore -D DIR -d ARGS` of a dumped process must refuse `option` and create
/// nothing; the same image restores without it.
fn restore_refuses(option: &str, args: &[&str]) {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    let mut all = vec!["restore", "-D", &img, "-d"];
    all.extend_from_slice(args);
    let out = crust(&all);
    assert!(!pid_exists(w.pid), "{option}: pid {} was created by a refused restore", w.pid);
    assert_refused(&out, option);
    w.restore_detached();
    w.go().assert_pass();
}

macro_rules! refused_on_dump {
    ($($name:ident: $option:literal $(, $arg:literal)*;)*) => {$(
        #[test]
        fn $name() {
            dump_refuses($option, &[$option $(, $arg)*]);
        }
    )*};
}

macro_rules! refused_on_restore {
    ($($name:ident: $option:literal $(, $arg:literal)*;)*) => {$(
        #[test]
        fn $name() {
            restore_refuses($option, &[$option $(, $arg)*]);
        }
    )*};
}

refused_on_dump! {
    dump_refuses_lazy_pages: "--lazy-pages";
    dump_refuses_page_server: "--page-server";
    dump_refuses_address: "--address", "127.0.0.1";
    dump_refuses_port: "--port", "27";
    dump_refuses_track_mem: "--track-mem";
    dump_refuses_prev_images_dir: "--prev-images-dir", "../prev";
    dump_refuses_root: "--root", "/";
    dump_refuses_ext_mount_map: "--ext-mount-map", "/mnt:mnt";
    dump_refuses_evasive_devices: "--evasive-devices";
    dump_refuses_freeze_cgroup: "--freeze-cgroup", "/sys/fs/cgroup/x";
    dump_refuses_action_script: "--action-script", "/bin/true";
    dump_refuses_auto_dedup: "--auto-dedup";
    dump_refuses_cgroup_root: "--cgroup-root", "/x";
}

/// `--manage-cgroups` other than `ignore` is refused naming the mode; `ignore` is accepted.
#[test]
fn dump_refuses_manage_cgroups_other_than_ignore() {
    dump_refuses("--manage-cgroups full", &["--manage-cgroups=full"]);
    let mut w = Workload::spawn("counter", &[]);
    let out = w.dump_with(&["--manage-cgroups=ignore", "-R"]);
    assert!(out.success(), "--manage-cgroups=ignore was refused:\n{out}");
    w.go().assert_pass();
}

refused_on_restore! {
    restore_refuses_restore_sibling: "--restore-sibling";
    restore_refuses_page_server: "--page-server";
    restore_refuses_root: "--root", "/";
    restore_refuses_ext_mount_map: "--ext-mount-map", "mnt:/mnt";
    restore_refuses_external: "--external", "dev[x]:/dev/null";
    restore_refuses_exec_cmd: "--exec-cmd";
}

/// `-S`, CRIU's short `--restore-sibling`, is refused by its long name.
#[test]
fn restore_refuses_short_s_as_restore_sibling() {
    restore_refuses("--restore-sibling", &["-S"]);
}

/// `--config FILE` in CRIU's format is applied as if on the command line: its log file (and
/// level) are used, an option the command line gives again wins, and a refused option in it
/// refuses the dump before anything is done.
#[test]
fn config_file_options_apply_as_on_the_command_line() {
    let mut w = Workload::spawn("counter", &[]);
    let config = w.dir.path.join("crust.conf");
    fs::write(
        &config,
        "# CRIU's format\ntcp-established\nfile-locks   # a comment\nlog-file \"from config.log\"\nverbosity=3\nleave-running\n",
    )
    .unwrap();
    let conf = config.to_string_lossy().into_owned();
    let out = w.dump_with(&["--config", &conf]);
    assert!(out.success(), "dump --config failed:\n{out}");
    assert_untouched_but_dumped(&w, "--config with leave-running");
    let log = no_ansi(&w.image_dir.join("from config.log"));
    assert!(log.contains("INFO"), "the config's log file lacks the level-3 log:\n{log}");

    // The command line overrides the file.
    let out = w.dump_with(&["--config", &conf, "-o", "cli.log"]);
    assert!(out.success() && w.image_dir.join("cli.log").exists(), "-o after --config did not win:\n{out}");

    fs::write(&config, "lazy-pages\n").unwrap();
    let out = crust(["dump", "-t", &w.pid.to_string(), "-D", &w.dir.path.join("img2").to_string_lossy(), "--config", &conf]);
    assert_refused(&out, "--lazy-pages");
    assert!(!w.dir.path.join("img2").join("inventory.img").exists());
    w.go().assert_pass();
}

#[track_caller]
fn assert_untouched_but_dumped(w: &Workload, what: &str) {
    let pid = w.pid;
    assert!(matches!(proc_state(pid), Some('R' | 'S')), "{what}: pid {pid} is not running");
    assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"), "{what}: pid {pid} is traced");
    assert!(w.image_dir.join("inventory.img").exists(), "{what}: no image");
}

/// `crust --version` and `-V` print crust's line and a `Version: X.Y` line, as CRIU does.
#[test]
fn version_prints_a_version_line_scripts_parse() {
    for flag in ["--version", "-V"] {
        let out = crust([flag]);
        assert!(out.success(), "{out}");
        let line = out.stdout.lines().find(|l| l.starts_with("Version: ")).unwrap_or_else(|| panic!("no Version: line:\n{out}"));
        let v = &line["Version: ".len()..];
        assert!(v.split('.').count() == 2 && v.split('.').all(|p| p.parse::<u32>().is_ok()), "not X.Y: {line:?}");
        assert!(out.stdout.starts_with("crust "), "crust's own line is missing:\n{out}");
    }
}

/// `crust check` ends with CRIU's verdict line.
#[test]
fn check_ends_with_looks_good() {
    let out = crust(["check"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.lines().last(), Some("Looks good."), "{out}");
}

/// `crust show` into a pipe whose reader is gone (what `| head` leaves) exits 0 without a
/// word, and `crust show | head -1` prints the first line only, without a panic message.
#[test]
fn show_into_a_closed_pipe_exits_quietly() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = crust_command().args(["show", "-D", &img]).stdout(Stdio::from(write)).output().expect("run crust show");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "crust show into a closed pipe: {:?}\n{stderr}", out.status);

    let script = format!("{} show -D '{img}' | head -1; exit ${{PIPESTATUS[0]}}", crust_bin());
    let out = Command::new("bash").args(["-c", &script]).output().expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && stderr.is_empty(), "show | head -1 printed: {stderr}");
    assert!(out.status.success(), "show | head -1 exited with {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{");
}

/// `-v0` to `-v4` (and `-vvvv`, `--verbosity=N`) are accepted, before or after the command,
/// and set the log level: errors only at 0 and 1, warnings at 2, information from 3.
#[test]
fn verbosity_levels_v0_to_v4_are_accepted_and_set_the_level() {
    let w = Workload::spawn("counter", &[]);
    for (level, info) in
        [("-v0", false), ("-v1", false), ("-v2", false), ("-v3", true), ("-v4", true), ("-vvvv", true), ("--verbosity=3", true)]
    {
        let log = w.dir.path.join(format!("dump{level}.log"));
        for before in [true, false] {
            let mut args = vec!["dump", "-t"];
            let pid = w.pid.to_string();
            let img = w.image_dir.to_string_lossy().into_owned();
            let log_s = log.to_string_lossy().into_owned();
            args.extend([pid.as_str(), "-D", &img, "-R", "-o", &log_s]);
            if before {
                args.insert(0, level)
            } else {
                args.push(level)
            }
            let out = crust(&args);
            assert!(out.success(), "{level}: {out}");
            let text = no_ansi(&log);
            assert_eq!(
                text.contains(" INFO "),
                info,
                "{level} ({}): INFO lines {}:\n{text}",
                if before { "before" } else { "after" },
                if info { "missing" } else { "present" }
            );
        }
    }
    assert_untouched_but_dumped(&w, "dumps with -R");
}

/// `-s/--leave-stopped`: after the dump the process is stopped (state T), untraced, and goes
/// on at SIGCONT; a restore with `-s` leaves it stopped too.
#[test]
fn leave_stopped_stops_the_tree_after_dump_and_after_restore() {
    let mut w = Workload::spawn("counter", &[]);
    let pid = w.pid;
    let out = w.dump_with(&["-s"]);
    assert!(out.success(), "dump -s failed:\n{out}");
    wait_until("the dumped process to stop", Duration::from_secs(5), || proc_state(pid) == Some('T'));
    assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"));
    w.signal(libc::SIGKILL);
    assert_eq!(w.reap(GONE_TIMEOUT), Some(Exit::Signal(libc::SIGKILL)));

    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["restore", "-D", &img, "-d", "-s"]);
    if pid_exists(pid) {
        w.own(pid);
    }
    assert!(out.success(), "restore -s failed:\n{out}");
    wait_until("the restored process to be stopped", Duration::from_secs(5), || proc_state(pid) == Some('T'));
    assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"));
    w.signal(libc::SIGCONT);
    w.go().assert_pass();
}

/// A dump that cannot attach says why: an ancestor of crust (its tree holds crust), pid 1, a
/// kernel thread, a process another tracer holds (named by its TracerPid); the traced process
/// is left alone.
#[test]
fn dump_explains_why_it_cannot_attach() {
    let me = std::process::id().to_string();
    let out = crust(["dump", "-t", &me, "-D", "/tmp/crust-cli-never"]);
    assert!(!out.success() && out.stderr.contains("ancestor of crust"), "{out}");
    let out = crust(["dump", "-t", "1", "-D", "/tmp/crust-cli-never"]);
    assert!(!out.success() && out.stderr.contains("pid 1 is init"), "{out}");
    let out = crust(["dump", "-t", "2", "-D", "/tmp/crust-cli-never"]);
    assert!(!out.success() && out.stderr.contains("kernel thread"), "{out}");

    let w = Workload::spawn("counter", &[]);
    let pid = w.pid;
    let mut tracer = Command::new("python3")
        .args(["-c", TRACER, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the tracer");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(tracer.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "attached", "the tracer did not attach");
    let out = w.dump_with(&[]);
    let tracer_pid = tracer.id().to_string();
    let _ = tracer.kill();
    let _ = tracer.wait();
    assert!(!out.success(), "dump of a traced process succeeded:\n{out}");
    assert!(out.stderr.contains("already traced") && has_token(&out.stderr, &tracer_pid), "the tracer is not named:\n{out}");
    wait_until("the tracer to be gone", Duration::from_secs(5), || proc_status_field(pid, "TracerPid").as_deref() == Some("0"));
    assert!(matches!(proc_state(pid), Some('R' | 'S')), "pid {pid} was left {:?}", proc_state(pid));
}

/// Attaches to pid argv[1] with PTRACE_SEIZE (no stop), says so, and waits to be killed.
const TRACER: &str = "import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(0x4206, int(sys.argv[1]), None, None) != 0:
    print('seize failed', ctypes.get_errno(), flush=True); sys.exit(1)
print('attached', flush=True)
time.sleep(1000)
";

/// `--timeout` bounds the freeze: a process that cannot stop (tests/workloads/vforker.c: a
/// parent waiting in vfork) makes
/// the dump fail after about that long, naming the pid, and both processes are left as they
/// were (untraced, not stopped).
#[test]
fn timeout_bounds_the_freeze_of_a_process_that_cannot_stop() {
    let bin = build_workload("vforker");
    let w = Workload::spawn_program("cli-vfork", &bin.to_string_lossy(), &[]);
    let pid = w.pid;
    wait_until("the vfork parent to wait for its child", Duration::from_secs(10), || {
        proc_state(pid) == Some('D') && !children_of(pid).is_empty()
    });
    let child = children_of(pid)[0];
    let start = Instant::now();
    let out = w.dump_with(&["--timeout", "1"]);
    let took = start.elapsed();
    assert!(!out.success(), "the dump of a process in vfork succeeded:\n{out}");
    assert!(out.stderr.contains("--timeout") && has_token(&out.stderr, &pid.to_string()), "the error does not say it:\n{out}");
    assert!(took < Duration::from_secs(8), "--timeout 1 took {took:?}");
    for p in [pid, child] {
        assert_eq!(proc_status_field(p, "TracerPid").as_deref(), Some("0"), "pid {p} is still traced");
        assert!(matches!(proc_state(p), Some('S' | 'D')), "pid {p} is {:?}", proc_state(p));
    }
    // The child is the test's to kill too (Workload kills the parent).
    if proc_info(child).map(|i| i.ppid) == Some(pid) {
        // SAFETY: kill takes integers; the child is checked to be the vfork child of our process.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
}
