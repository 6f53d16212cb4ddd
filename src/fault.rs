//! Fault injection, for tests only: `CRUST_FAULT=STEP[:N[:ACTION]]` makes crust misbehave the
//! Nth time (default: the first) it reaches the point named STEP, so that a test can check what
//! a crust failing, interrupted or killed at that very moment leaves behind.
//!
//! ACTION is `kill` (SIGKILL of crust itself, the default), `fail` (the step fails with an
//! error), `sleepMS` (crust waits MS milliseconds there, widening a window), or a signal crust
//! stops for: `SIGINT`, `SIGTERM`, `SIGHUP`, `SIGPIPE` (raised in crust,
//! as if a user or a closed terminal sent it).
//!
//! Points: dump: `dump-sampled` (timed waits sampled, nothing frozen yet), `dump-frozen`
//! (every process frozen), `dump-files`, `dump-memory` (after each
//! process's files, memory), `dump-pages-open` (the page file created, before crust copies
//! the pages into it), `dump-live-copy` (dump -R: the tree runs on, before crust copies each
//! process's write-protected pages), `dump-batch-running` (the processes run a batch of calls by themselves, see
//! src/sys/remote/batch.rs), `dump-collected` (every record written), `dump-checksums` (before
//! the inventory); restore: `restore-sealed` (the seal and record hashes
//! checked, no other record read yet), `restore-segments` (SysV segments created, no process
//! yet), `restore-tree` (every process created), `restore-descriptions`,
//! `restore-process` (after each process's state), `restore-pages-userfaultfd` (before crust
//! makes the userfaultfd it places a process's pages with: `fail` there stands for a kernel
//! that refuses one), `restore-pages-placed` (after each chunk crust placed), `restore-anon-names`
//! (before any process is created, crust asks whether the kernel names memory: `fail` there
//! stands for a kernel built without CONFIG_ANON_VMA_NAME), `restore-before-resume` (everything
//! restored, nothing resumed yet), `lease-break-time-set` (right after lease-break-time was
//! changed to start a lease break again); lazy restore: `lazy-collapse` (before each huge page
//! stretch is collapsed; `fail` leaves it in 4 KiB pages, as if no huge page were free),
//! `lazy-move-small` (for each stretch a mover's move placed as a huge page; `fail` takes it
//! for one placed in 4 KiB pages: it is collapsed),
//! `lazy-staged` (a staging worker wrote a group for a mover, before it checks the page file's
//! lease; `fail` stands for a write into the process that failed), `lazy-move` (before each
//! move of a mover; `fail` stands for the kernel refusing it with EINVAL).

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, bail};

static REACHED: AtomicU32 = AtomicU32::new(0);

/// Every point a test can name.
pub const POINTS: &[&str] = &[
    "dump-sampled",
    "dump-frozen",
    "dump-files",
    "dump-memory",
    "dump-pages-open",
    "dump-live-copy",
    "dump-batch-running",
    "dump-collected",
    "dump-checksums",
    "restore-sealed",
    "restore-segments",
    "restore-tree",
    "restore-descriptions",
    "restore-process",
    "restore-pages-userfaultfd",
    "restore-pages-placed",
    "restore-anon-names",
    "restore-before-resume",
    "lease-break-time-set",
    "lazy-collapse",
    "lazy-move-small",
    "lazy-staged",
    "lazy-move",
];

/// Misbehaves here if CRUST_FAULT names this point (and this is its Nth visit).
pub fn point(step: &str) -> Result<()> {
    let Ok(spec) = std::env::var("CRUST_FAULT") else { return Ok(()) };
    let mut parts = spec.split(':');
    if parts.next() != Some(step) {
        return Ok(());
    }
    let nth: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let action = parts.next().unwrap_or("kill");
    if REACHED.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return Ok(());
    }
    tracing::warn!("CRUST_FAULT={spec}: {action} at {step}");
    match action {
        "fail" => bail!("CRUST_FAULT: failing at {step}"),
        sleep if sleep.starts_with("sleep") => {
            let ms: u64 = sleep["sleep".len()..].parse().map_err(|_| anyhow::anyhow!("CRUST_FAULT: bad {sleep}"))?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        "kill" => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            Ok(())
        }
        name => {
            let sig: nix::sys::signal::Signal = name.parse().map_err(|_| anyhow::anyhow!("CRUST_FAULT: unknown action {name}"))?;
            nix::sys::signal::raise(sig)?;
            Ok(crate::interrupt::check()?)
        }
    }
}
