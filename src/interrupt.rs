//! SIGINT, SIGTERM, SIGHUP and SIGPIPE while crust works on processes: instead of dying in the
//! middle (and leaving a process frozen, with its signals blocked and crust's scratch area
//! mapped), crust notes the signal and stops at the next step, through the same path as any
//! error: every process is put back as it was and let go, or (restore) killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

const SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE];

static RECEIVED: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();

/// An interruption, as the error of the step that noticed it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

/// From now on these signals only set a flag (called once per run, before touching anything).
pub fn install() -> Result<()> {
    let flag = RECEIVED.get_or_init(|| Arc::new(AtomicUsize::new(0))).clone();
    for sig in SIGNALS {
        signal_hook::flag::register_usize(sig, flag.clone(), sig as usize)?;
    }
    Ok(())
}

/// The signal received since `install`, if any.
pub fn received() -> Option<i32> {
    let sig = RECEIVED.get()?.load(Ordering::SeqCst);
    (sig != 0).then_some(sig as i32)
}

/// Fails with [`Interrupted`] if one of the signals arrived: called between the steps of a dump
/// or restore.
pub fn check() -> Result<(), Interrupted> {
    match received() {
        Some(sig) => Err(Interrupted(sig)),
        None => Ok(()),
    }
}

/// Like [`received`], and forgets it: the next signal is noticed again.
pub fn take() -> Option<i32> {
    let sig = RECEIVED.get()?.swap(0, Ordering::SeqCst);
    (sig != 0).then_some(sig as i32)
}
