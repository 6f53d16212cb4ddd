//! Signal dispositions (handler, flags, mask, restorer for every signal) and the signals
//! pending for the whole process. The per-thread parts (blocked mask, thread-directed pending
//! signals, alternate stack) live in `registers` with the rest of a thread's state.

use anyhow::{Context, Result};

use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{SigAction, SigInfo, SignalHandlers};
use crate::sys::ptrace::{SignalQueue, peek_pending};
use crate::sys::remote::RemoteTask;

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
        dump_with(ctx, None)
    }

    fn restore(ctx: &mut RestoreCtx, record: &SignalsRecord) -> Result<()> {
        restore_from(ctx, record, &[])
    }
}

/// The signals that have a disposition (all but SIGKILL and SIGSTOP).
fn with_disposition() -> impl Iterator<Item = u64> {
    (1..=64u64).filter(|s| *s != libc::SIGKILL as u64 && *s != libc::SIGSTOP as u64)
}

/// Where signal `sig`'s action lands in the scratch area.
fn slot(sig: u64) -> u64 {
    (sig - 1) * KERNEL_SIGACTION_LEN as u64
}

/// The 64 actions as the slots of the scratch area hold them (SIGKILL's and SIGSTOP's stay
/// zero: they have no disposition to keep).
fn read_actions(remote: &RemoteTask) -> Result<Vec<SigAction>> {
    let mut raw = [0u8; 64 * KERNEL_SIGACTION_LEN];
    remote.get(0, &mut raw)?;
    Ok((1..=64u64)
        .map(|sig| {
            let at = slot(sig) as usize;
            let word = |i: usize| u64::from_ne_bytes(raw[at + i * 8..at + i * 8 + 8].try_into().unwrap());
            SigAction { handler: word(0), flags: word(1), restorer: word(2), mask: word(3) }
        })
        .collect())
}

/// The dispositions and process-wide pending signals of the process; `actions` if they were
/// read already (by [`dispositions_of_all`]: they cannot change while the process is frozen).
pub fn dump_with(ctx: &mut DumpCtx, actions: Option<Vec<SigAction>>) -> Result<SignalsRecord> {
    let actions = match actions {
        Some(a) => a,
        None => {
            // Each action lands in its own slot, all read back at once (one remote call per
            // signal is the least: nothing outside the process shows flags, mask, restorer).
            let base = ctx.remote.put(0, &[0u8; 64 * KERNEL_SIGACTION_LEN])?;
            for sig in with_disposition() {
                ctx.remote
                    .syscall("rt_sigaction", libc::SYS_rt_sigaction, &[sig, 0, base + slot(sig), 8])
                    .with_context(|| format!("reading the disposition of signal {sig}"))?;
            }
            read_actions(ctx.remote)?
        }
    };
    let shared_pending = peek_pending(ctx.pid, SignalQueue::Process)?.iter().map(siginfo).collect();
    Ok(SignalsRecord { handlers: SignalHandlers { actions }, shared_pending })
}

/// The dispositions of every process whose leader is in `leaders`, read by all of them at
/// once: each process makes its 62 calls in one go where it can (see
/// [`RemoteTask::syscalls_each`]), else one round of remote calls per signal for the whole
/// tree, not one per signal and process.
pub fn dispositions_of_all(leaders: &mut [&mut RemoteTask]) -> Result<Vec<Vec<SigAction>>> {
    let mut calls = Vec::with_capacity(leaders.len());
    for r in leaders.iter() {
        let base = r.put(0, &[0u8; 64 * KERNEL_SIGACTION_LEN])?;
        calls.push(with_disposition().map(|sig| (libc::SYS_rt_sigaction, vec![sig, 0, base + slot(sig), 8])).collect::<Vec<_>>());
    }
    let results = RemoteTask::syscalls_each(leaders, &calls).context("reading the signal dispositions")?;
    for (r, rets) in leaders.iter().zip(results) {
        if let Some((sig, ret)) = with_disposition().zip(rets).find(|(_, ret)| (-4095..0).contains(ret)) {
            let errno = nix::errno::Errno::from_raw(-ret as i32);
            anyhow::bail!("pid {}: remote rt_sigaction({sig}) reading its disposition: {errno}", r.pid());
        }
    }
    leaders.iter().map(|r| read_actions(r)).collect()
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
