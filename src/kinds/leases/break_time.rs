//! /proc/sys/fs/lease-break-time, changed for an instant and always put back.
//!
//! The kernel fixes a break's deadline when the break starts, as now + lease-break-time
//! (global, whole seconds). To give a restarted break its recorded deadline, crust sets the
//! setting for the instant of the open() that starts the break (tens of microseconds) and puts
//! it back. Another break started anywhere on the machine in that instant gets the changed
//! time: the window is bounded to one open() and the change is serialized and recoverable:
//!
//! - every change is made under an exclusive flock on [`LOCK_PATH`] (crust runs and anything
//!   else that honours the lock never change it at the same time);
//! - before the change, the old value is written to [`SAVED_PATH`]; it is removed only once the
//!   old value is back;
//! - a guardian process (`crust-guard`), started before the first change and holding nothing of
//!   crust's but one end of a pipe, waits for crust to go away: if crust dies while a saved
//!   value exists (SIGKILL, a crash), the guardian puts it back at once;
//! - every crust run first repairs a saved value left behind (if the guardian died too).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

const SETTING: &str = "/proc/sys/fs/lease-break-time";
/// crust's runtime directory (root only).
pub const RUN_DIR: &str = "/run/crust";
const LOCK_PATH: &str = "/run/crust/lease-break-time.lock";
const SAVED_PATH: &str = "/run/crust/lease-break-time.saved";

/// The setting, in seconds.
pub fn current() -> Result<u32> {
    let text = std::fs::read_to_string(SETTING).with_context(|| format!("reading {SETTING}"))?;
    text.trim().parse().with_context(|| format!("{SETTING} holds {:?}, not a number of seconds", text.trim()))
}

fn write(secs: u32) -> Result<()> {
    std::fs::write(SETTING, secs.to_string()).with_context(|| format!("writing {secs} to {SETTING}"))
}

fn open_lock() -> Result<File> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    File::options().create(true).append(true).open(LOCK_PATH).with_context(|| format!("opening {LOCK_PATH}"))
}

/// Takes the lock, waiting at most 10 s for another crust to finish its instant.
fn lock() -> Result<Flock<File>> {
    let mut file = open_lock()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, e)) => return Err(e).with_context(|| format!("flock {LOCK_PATH} (another crust changing lease-break-time?)")),
        }
    }
}

/// Puts back a value saved by a crust that died before it could (called at the start of every
/// run, and by the guardian). Does nothing while another crust holds the lock.
pub fn repair_left_behind() {
    if !Path::new(SAVED_PATH).exists() {
        return;
    }
    let Ok(file) = open_lock() else { return };
    let Ok(_locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else { return };
    repair_locked();
}

/// With the lock held: a saved value is always stale (a live crust holding it would hold the lock).
fn repair_locked() {
    let Ok(text) = std::fs::read_to_string(SAVED_PATH) else { return };
    match text.trim().parse::<u32>() {
        Ok(old) => match write(old) {
            Ok(()) => tracing::warn!("put lease-break-time back to {old} s (left changed by a crust that died)"),
            Err(e) => {
                tracing::error!("{e:#}");
                return;
            }
        },
        Err(_) => tracing::error!("{SAVED_PATH} holds {:?}: removed", text.trim()),
    }
    let _ = std::fs::remove_file(SAVED_PATH);
}

/// Changes the setting for the instants of several break restarts; keeps the guardian alive
/// until dropped.
pub struct BreakTimeChanger {
    /// Write end of the guardian's pipe: the guardian wakes when it closes (drop or death).
    _guardian: Option<OwnedFd>,
}

impl BreakTimeChanger {
    pub fn new() -> BreakTimeChanger {
        BreakTimeChanger { _guardian: None }
    }

    /// Runs `f` with lease-break-time = `secs`, and puts the old value back, on every path
    /// (the guardian does it if crust dies in between).
    pub fn with<T>(&mut self, secs: u32, f: impl FnOnce() -> T) -> Result<T> {
        if current()? == secs {
            return Ok(f());
        }
        if self._guardian.is_none() {
            self._guardian = Some(start_guardian()?);
        }
        let _locked = lock()?;
        let old = current()?;
        std::fs::write(SAVED_PATH, format!("{old}\n")).with_context(|| format!("writing {SAVED_PATH}"))?;
        let changed = write(secs).and_then(|()| crate::fault::point("lease-break-time-set"));
        let out = changed.map(|()| f());
        let back = write(old);
        if back.is_ok() {
            let _ = std::fs::remove_file(SAVED_PATH);
        }
        let out = out?;
        back.context("putting lease-break-time back (the guardian or the next crust run will retry)")?;
        Ok(out)
    }
}

impl Default for BreakTimeChanger {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts `crust-guard`: a process of its own (new session, every signal that a terminal or a
/// user sends to a job ignored, no descriptor of crust's but the read end of a pipe) that
/// waits until crust closes the pipe, then repairs the setting if crust left it changed.
fn start_guardian() -> Result<OwnedFd> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2 for the guardian")?;
    let keep = read_end.as_raw_fd();
    crate::sys::spawn_detached("crust-guard", &[keep], move || {
        let mut pipe = File::from(read_end);
        let mut byte = [0u8; 1];
        // crust never writes: this returns when crust closed its end or died.
        loop {
            match pipe.read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        if Path::new(SAVED_PATH).exists()
            && let Ok(locked) = lock()
        {
            repair_locked();
            drop(locked);
        }
    })
    .context("starting the lease-break-time guardian")?;
    Ok(write_end)
}
