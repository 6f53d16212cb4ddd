//! Signal dispositions (handler, flags, mask, restorer for every signal) and the signals
//! pending for the whole process. The per-thread parts (blocked mask, thread-directed pending
//! signals, alternate stack) live in `registers` with the rest of a thread's state.

use anyhow::{Context, Result};

use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{SigAction, SigInfo, SignalHandlers};
use crate::sys::ptrace::{SignalQueue, peek_pending};

pub struct Signals;

/// The image record: dispositions plus the process-wide pending queue.
pub struct SignalsRecord {
    pub handlers: SignalHandlers,
    pub shared_pending: Vec<SigInfo>,
}

const KERNEL_SIGACTION_LEN: usize = 32;

impl Kind for Signals {
    type Record = SignalsRecord;

    fn dump(ctx: &mut DumpCtx) -> Result<SignalsRecord> {
        // Each signal's action lands in its own slot of the scratch area; all are read back at
        // once (one remote call per signal is the least: nothing outside the process shows
        // flags, mask and restorer).
        let slot = |sig: u64| (sig - 1) * KERNEL_SIGACTION_LEN as u64;
        let signals = || (1..=64u64).filter(|s| *s != libc::SIGKILL as u64 && *s != libc::SIGSTOP as u64);
        let base = ctx.remote.put(0, &[0u8; 64 * KERNEL_SIGACTION_LEN])?;
        for sig in signals() {
            ctx.remote
                .syscall("rt_sigaction", libc::SYS_rt_sigaction, &[sig, 0, base + slot(sig), 8])
                .with_context(|| format!("reading the disposition of signal {sig}"))?;
        }
        let mut raw = [0u8; 64 * KERNEL_SIGACTION_LEN];
        ctx.remote.get(0, &mut raw)?;
        let actions = (1..=64u64)
            .map(|sig| {
                let at = slot(sig) as usize;
                let word = |i: usize| u64::from_ne_bytes(raw[at + i * 8..at + i * 8 + 8].try_into().unwrap());
                // SIGKILL's and SIGSTOP's slots stay zero: they have no disposition to keep.
                SigAction { handler: word(0), flags: word(1), restorer: word(2), mask: word(3) }
            })
            .collect();
        let shared_pending = peek_pending(ctx.pid, SignalQueue::Process)?.iter().map(|raw| siginfo(raw)).collect();
        Ok(SignalsRecord { handlers: SignalHandlers { actions }, shared_pending })
    }

    fn restore(ctx: &mut RestoreCtx, record: &SignalsRecord) -> Result<()> {
        restore_from(ctx, record, &[])
    }
}

/// Restores the dispositions and the process-wide pending signals of a process whose
/// dispositions are now `current` (as it was created; empty when unknown):
/// only the actions that differ are set, one remote call each.
pub fn restore_from(ctx: &mut RestoreCtx, record: &SignalsRecord, current: &[SigAction]) -> Result<()> {
    for (i, action) in record.handlers.actions.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 || current.get(i) == Some(action) {
            continue;
        }
        let mut raw = Vec::with_capacity(KERNEL_SIGACTION_LEN);
        for word in [action.handler, action.flags, action.restorer, action.mask] {
            raw.extend_from_slice(&word.to_ne_bytes());
        }
        let addr = ctx.remote.put(0, &raw)?;
        ctx.remote
            .syscall("rt_sigaction", libc::SYS_rt_sigaction, &[sig, addr, 0, 8])
            .with_context(|| format!("restoring the disposition of signal {sig}"))?;
    }
    let pid = ctx.pid.as_raw() as u64;
    for info in &record.shared_pending {
        let addr = ctx.remote.put(0, &info.raw)?;
        // Queued by the process to itself, so the kernel keeps the siginfo as it was
        // (sender pid, uid, code, value).
        ctx.remote
            .syscall("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, &[pid, info.signo as u64, addr])
            .with_context(|| format!("re-queueing pending signal {}", info.signo))?;
    }
    Ok(())
}

pub fn siginfo(raw: &[u8; 128]) -> SigInfo {
    let int = |i: usize| i32::from_ne_bytes(raw[i..i + 4].try_into().unwrap());
    SigInfo { signo: int(0), code: int(8), raw: raw.to_vec() }
}
