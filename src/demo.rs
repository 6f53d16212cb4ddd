//! `crust demo`: the whole story on a built-in example. A counter program writes a numbered line
//! to a log every 200 ms; crust checkpoints it, kills it, restores it with the same PID, and the
//! counter carries on from where it was.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The demo's program: counts forever, one line per tick, in a log opened once in append mode.
pub fn workload(log: &Path) -> Result<()> {
    crate::sys::close_inherited_fds()?;
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let pid = std::process::id();
    for tick in 0u64.. {
        writeln!(out, "tick {tick} from pid {pid}")?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log).ok().and_then(|s| s.lines().last().map(str::to_owned)).unwrap_or_default()
}

fn wait_for_lines(log: &Path, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(log).map(|s| s.lines().count()).unwrap_or(0) < n {
        if Instant::now() > deadline {
            bail!("the demo program did not write its log {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(dir: &Path) -> Result<()> {
    let t0 = Instant::now();
    let at = || format!("[{:5.2} s]", t0.elapsed().as_secs_f64());
    std::fs::create_dir_all(dir)?;
    let log: PathBuf = dir.join("counter.log");
    let image = dir.join("image");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&image);

    let mut child = Command::new(std::env::current_exe()?)
        .arg("demo-workload")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the demo program")?;
    let pid = child.id() as i32;
    println!("{} started the counter program, pid {pid}, logging to {}", at(), log.display());
    wait_for_lines(&log, 5)?;
    println!("{} it is counting: {}", at(), last_line(&log));

    println!("{} crust dump -t {pid} -D {}", at(), image.display());
    let report = crate::dump::dump(pid, &image, &crate::dump::DumpOptions::default())?;
    let _ = child.wait();
    let before = last_line(&log);
    println!(
        "{} checkpointed and killed: frozen {:.1} ms, {} KiB of memory saved; last line: {before}",
        at(),
        report.frozen.as_secs_f64() * 1e3,
        report.pages_bytes / 1024
    );
    std::thread::sleep(Duration::from_secs(1));
    println!("{} one second later the log still ends with: {}", at(), last_line(&log));

    println!("{} crust restore -D {} -d", at(), image.display());
    let restored = crate::restore::restore(&image, &crate::restore::RestoreOptions { detach: true, ..Default::default() })?;
    let crate::restore::Restored::Running { pid: new_pid, elapsed } = restored else { bail!("restore did not detach") };
    println!("{} restored in {:.1} ms, pid {new_pid} (same PID: {})", at(), elapsed.as_secs_f64() * 1e3, new_pid == pid);
    let lines_then = std::fs::read_to_string(&log)?.lines().count();
    wait_for_lines(&log, lines_then + 4)?;
    let text = std::fs::read_to_string(&log)?;
    let resumed: Vec<&str> = text.lines().skip_while(|l| *l != before).take(5).collect();
    println!("{} it carries on where it stopped:", at());
    for line in &resumed {
        println!("          {line}");
    }
    // The restored process is our child: stop and reap it.
    let _ = kill(Pid::from_raw(new_pid), Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(new_pid), None);
    println!("{} stopped the restored program. Image kept in {}", at(), image.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `crust demo leases`

const F_SETLEASE: i32 = 1024;

fn log_line(log: &mut std::fs::File, t0: Instant, what: &str) {
    let _ = writeln!(log, "[{:6.2} s] {what}", t0.elapsed().as_secs_f64());
}

/// The lease holder of the demo: takes a write lease on `file`, starts the breaker, counts the
/// lease signals it receives (SIGIO, through a signalfd), and never gives the lease up.
pub fn lease_holder(file: &Path, log: &Path) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    crate::sys::close_inherited_fds()?;
    let t0 = Instant::now();
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let leased = std::fs::File::open(file)?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGIO);
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK)?;
    use std::os::fd::AsRawFd;
    crate::sys::fcntl_int(leased.as_raw_fd(), F_SETLEASE, libc::F_WRLCK).context("F_SETLEASE")?;
    log_line(&mut out, t0, &format!("holder {}: took a write lease on {}", std::process::id(), file.display()));
    spawn_quiet_role("demo-lease-breaker", file, log)?;
    let mut count = 0;
    loop {
        while let Ok(Some(info)) = signals.read_signal() {
            count += 1;
            log_line(&mut out, t0, &format!("holder: lease break signal #{count} (si_fd {})", info.ssi_fd));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The breaker of the demo: opens the leased file for writing and waits for the break.
pub fn lease_breaker(file: &Path, log: &Path) -> Result<()> {
    crate::sys::close_inherited_fds()?;
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let _ = writeln!(out, "breaker {}: opening the file for writing", std::process::id());
    let _opened = std::fs::OpenOptions::new().write(true).open(file)?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
    let _ = writeln!(out, "breaker: open() returned at {}.{:03}", now.tv_sec(), now.tv_nsec() / 1_000_000);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Starts crust again as one of the lease demo's programs (`role`), with no terminal.
fn spawn_quiet_role(role: &str, file: &Path, log: &Path) -> Result<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg(role)
        .arg(file)
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

fn realtime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9).unwrap_or(0.0)
}

/// Starts the lease holder (which starts the breaker) and waits until the breaker blocks on
/// the lease (its "BREAKER" line in /proc/locks): the break has started.
fn start_lease_story<'a>(file: &'a Path, log: &'a Path) -> impl FnOnce() -> Result<std::process::Child> + 'a {
    move || {
        let mut holder = spawn_quiet_role("demo-lease-holder", file, log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string("/proc/locks")?.contains("BREAKER") {
            if Instant::now() > deadline {
                let _ = holder.kill();
                let _ = holder.wait();
                bail!("the demo breaker did not start");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(holder)
    }
}

pub fn run_leases(dir: &Path) -> Result<()> {
    let t0 = Instant::now();
    let at = || format!("[{:5.2} s]", t0.elapsed().as_secs_f64());
    std::fs::create_dir_all(dir)?;
    let file = dir.join("leased-file");
    let log = dir.join("leases.log");
    let image = dir.join("image");
    std::fs::write(&file, "data the holder caches\n")?;
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&image);
    // The kernel fixes a break's length when it starts: lease-break-time is 10 s only until
    // the demo's break has started (milliseconds), under crust's lock and guardian, as a
    // restore does (src/kinds/leases/break_time.rs).
    let old = crate::kinds::leases::break_time::current()?;
    let mut changer = crate::kinds::leases::break_time::BreakTimeChanger::new();
    let mut holder = changer.with(10, start_lease_story(&file, &log))??;
    println!("{} the break started with lease-break-time 10 s; the setting is back to {old} s", at());
    let hpid = holder.id() as i32;
    let break_started = Instant::now();
    println!("{} P1 (pid {hpid}) holds a write lease; P2 opened the file for writing and waits; P1 was signalled", at());
    std::thread::sleep(Duration::from_secs(5));
    println!("{} 5 s into the break: crust dump -t {hpid} -D {}", at(), image.display());
    crate::dump::dump(hpid, &image, &crate::dump::DumpOptions::default())?;
    let _ = holder.wait();
    for line in crate::lease_cmd::run(&image, None, false)? {
        println!("          {line}");
    }
    std::thread::sleep(Duration::from_secs(2));
    println!("{} 2 s later: crust restore -D {} -d", at(), image.display());
    let restored_at = realtime();
    let restored_instant = Instant::now();
    crate::restore::restore(&image, &crate::restore::RestoreOptions { detach: true, ..Default::default() })?;
    println!("{} restored; /proc/locks:", at());
    for line in std::fs::read_to_string("/proc/locks")?.lines().filter(|l| l.contains("LEASE")) {
        println!("          {line}");
    }
    println!("{} P2's open() was retried and waits for the time P1 had left", at());
    let deadline = Instant::now() + Duration::from_secs(15);
    let opened_at = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(t) = text.lines().find_map(|l| l.strip_prefix("breaker: open() returned at ")) {
            break t.trim().parse::<f64>().unwrap_or(0.0);
        }
        if Instant::now() > deadline {
            bail!("P2's open did not return");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log)?;
    let signals = text.lines().filter(|l| l.contains("lease break signal")).count();
    println!(
        "{} the break ended: P2's open() returned {:.2} s after the restore ({:.2} s of break in all, lease-break-time 10 s)",
        at(),
        opened_at - restored_at,
        (break_started.elapsed() - restored_instant.elapsed()).as_secs_f64() + (opened_at - restored_at) - 2.0
    );
    println!("{} P1 received {signals} lease break signal(s) in all: it was not signalled again", at());
    println!("--- the programs' own log:\n{text}---");
    let _ = kill(Pid::from_raw(hpid), Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(hpid), None);
    if let Some(breaker) = text.lines().find_map(|l| l.strip_prefix("breaker ")).and_then(|l| l.split(':').next())
        && let Ok(p) = breaker.parse::<i32>()
    {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    println!("{} stopped both", at());
    Ok(())
}
