//! Scheduler and audit state: each thread's policy (SCHED_OTHER, FIFO, RR, BATCH, IDLE), static
//! priority, reset-on-fork flag, nice value and CPU affinity, and the process's audit login uid.
//!
//! The thread state is read and set by crust from outside (sched_getscheduler, getpriority,
//! sched_getaffinity and their setters take a tid); the login uid can only be written by the
//! process itself (/proc/self/loginuid), so it is set through an injected write.

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use super::RestoreCtx;
use crate::image::proto::{LoginUid, Scheduling};
use crate::sys::sched::{get_scheduler, set_scheduler, set_thread_nice};

const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;
const SCHED_DEADLINE: i32 = 6;
/// /proc/PID/loginuid of a process no login ever set (AUDIT_UID_UNSET).
const LOGINUID_UNSET: u32 = u32::MAX;

/// The scheduler state of thread `tid` of `pid`.
pub fn dump_thread(pid: i32, tid: i32) -> Result<Scheduling> {
    let (raw_policy, priority) = get_scheduler(tid).with_context(|| format!("pid {pid} thread {tid}"))?;
    let policy = raw_policy & !SCHED_RESET_ON_FORK;
    if policy == SCHED_DEADLINE {
        bail!("pid {pid} thread {tid} runs under SCHED_DEADLINE; crust cannot restore deadline scheduling yet");
    }
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.task_from_tid(tid))
        .and_then(|t| t.stat())
        .with_context(|| format!("reading /proc/{pid}/task/{tid}/stat"))?;
    let cpus = sched_getaffinity(Pid::from_raw(tid)).with_context(|| format!("pid {pid} thread {tid}: sched_getaffinity"))?;
    Ok(Scheduling {
        policy,
        priority,
        reset_on_fork: raw_policy & SCHED_RESET_ON_FORK != 0,
        nice: stat.nice as i32,
        affinity: affinity_words(&cpus),
    })
}

fn affinity_words(cpus: &CpuSet) -> Vec<u64> {
    let mut words = vec![0u64; CpuSet::count().div_ceil(64)];
    for cpu in 0..CpuSet::count() {
        if cpus.is_set(cpu).unwrap_or(false) {
            words[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    while words.last() == Some(&0) {
        words.pop();
    }
    words
}

/// Gives thread `tid` its scheduler state back. CPUs of the image that this machine does not
/// have are refused by name (the kernel would silently narrow the mask).
pub fn restore_thread(tid: i32, s: &Scheduling) -> Result<()> {
    let mut cpus = CpuSet::new();
    for (word, bits) in s.affinity.iter().enumerate() {
        for bit in (0..64).filter(|b| bits & (1 << b) != 0) {
            let cpu = word * 64 + bit;
            cpus.set(cpu).with_context(|| format!("thread {tid}: CPU {cpu} of its affinity is beyond what crust handles"))?;
        }
    }
    if !s.affinity.is_empty() {
        sched_setaffinity(Pid::from_raw(tid), &cpus).with_context(|| format!("thread {tid}: sched_setaffinity"))?;
        let got = sched_getaffinity(Pid::from_raw(tid)).with_context(|| format!("thread {tid}: sched_getaffinity"))?;
        if affinity_words(&got) != s.affinity {
            bail!("thread {tid}: its CPU affinity {:x?} cannot be given on this machine (got {:x?})", s.affinity, affinity_words(&got));
        }
    }
    set_thread_nice(tid, s.nice).with_context(|| format!("thread {tid}: setpriority({})", s.nice))?;
    let flags = if s.reset_on_fork { SCHED_RESET_ON_FORK } else { 0 };
    set_scheduler(tid, s.policy | flags, s.priority)
        .with_context(|| format!("thread {tid}: policy {} priority {}", s.policy, s.priority))?;
    Ok(())
}

/// The process's audit login uid, if one was set.
pub fn dump_loginuid(pid: i32) -> Result<Option<LoginUid>> {
    let path = format!("/proc/{pid}/loginuid");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None), // no audit support
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    let uid: u32 = text.trim().parse().with_context(|| format!("{path} holds {text:?}"))?;
    Ok((uid != LOGINUID_UNSET).then_some(LoginUid { uid }))
}

/// Writes the login uid through the process's own /proc/self/loginuid (only the process may),
/// unless it already has it (inherited from crust). The kernel then opens a new audit session:
/// /proc/PID/sessionid is a new number (nothing can set it).
pub fn restore_loginuid(ctx: &mut RestoreCtx, l: &LoginUid) -> Result<()> {
    let pid = ctx.pid.as_raw();
    if dump_loginuid(pid)?.is_some_and(|now| now.uid == l.uid) {
        return Ok(());
    }
    let fd = ctx.open_in_process("/proc/self/loginuid", libc::O_WRONLY | libc::O_CLOEXEC)?;
    let text = l.uid.to_string();
    let at = ctx.remote.put(512, text.as_bytes())?;
    let written = ctx
        .remote
        .syscall("write(/proc/self/loginuid)", libc::SYS_write, &[fd as u64, at, text.len() as u64])
        .with_context(|| format!("pid {pid}: setting its audit login uid {} (is the login uid immutable here?)", l.uid));
    ctx.close_in_process(fd)?;
    written?;
    Ok(())
}
