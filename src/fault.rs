//! Fault injection, for tests only: `CRUST_FAULT=STEP` (or `STEP:N`) makes crust kill itself
//! with SIGKILL the first (or Nth) time it reaches the point named STEP, so a test can check what
//! a crust killed at that very moment leaves behind.
//!
//! Points: `lease-break-time-set` (restore, right after lease-break-time was changed to start a
//! lease break again).

use std::sync::atomic::{AtomicU32, Ordering};

static REACHED: AtomicU32 = AtomicU32::new(0);

/// Kills crust here if CRUST_FAULT names this point (and this is its Nth visit).
pub fn point(step: &str) {
    let Ok(spec) = std::env::var("CRUST_FAULT") else { return };
    let (name, nth) = match spec.split_once(':') {
        Some((name, n)) => (name, n.parse().unwrap_or(1)),
        None => (spec.as_str(), 1),
    };
    if name != step {
        return;
    }
    if REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        tracing::warn!("CRUST_FAULT={spec}: killing crust at {step}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}
