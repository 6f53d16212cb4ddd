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
