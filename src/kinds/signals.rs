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
        let mut actions = Vec::with_capacity(64);
        for sig in 1..=64u64 {
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                actions.push(SigAction::default());
                continue;
            }
            let out = ctx.remote.put(0, &[0u8; KERNEL_SIGACTION_LEN])?;
            ctx.remote
                .syscall("rt_sigaction", libc::SYS_rt_sigaction, &[sig, 0, out, 8])
                .with_context(|| format!("reading the disposition of signal {sig}"))?;
            let mut raw = [0u8; KERNEL_SIGACTION_LEN];
            ctx.remote.get(0, &mut raw)?;
            let word = |i: usize| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
            actions.push(SigAction { handler: word(0), flags: word(1), restorer: word(2), mask: word(3) });
        }
        let shared_pending = peek_pending(ctx.pid, SignalQueue::Process)?.iter().map(|raw| siginfo(raw)).collect();
        Ok(SignalsRecord { handlers: SignalHandlers { actions }, shared_pending })
    }

    fn restore(ctx: &mut RestoreCtx, record: &SignalsRecord) -> Result<()> {
        for (i, action) in record.handlers.actions.iter().enumerate() {
            let sig = i as u64 + 1;
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
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
}

pub fn siginfo(raw: &[u8; 128]) -> SigInfo {
    let int = |i: usize| i32::from_ne_bytes(raw[i..i + 4].try_into().unwrap());
    SigInfo { signo: int(0), code: int(8), raw: raw.to_vec() }
}
