//! seccomp filters (mode 2): the chain of BPF programs a process runs under, with the flags the
//! kernel reports (SECCOMP_FILTER_FLAG_LOG).
//!
//! A filter may forbid, or kill on, the very system calls crust runs in the process, so every
//! filtered thread is traced with PTRACE_O_SUSPEND_SECCOMP while crust works in it (dump and
//! restore); the filters act again once crust detaches. Dump reads each filter with
//! PTRACE_SECCOMP_GET_FILTER. Restore installs the chain oldest first in the leader with
//! SECCOMP_FILTER_FLAG_TSYNC, so every thread shares it again (a later TSYNC of the program
//! finds them in sync, as before).
//!
//! Refused by name: strict mode (mode 1: crust could not run anything in the process), and
//! threads whose chains differ (installed without TSYNC, per thread).

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;

use super::RestoreCtx;
use crate::image::proto::{Seccomp, SeccompFilter};
use crate::sys::ptrace;

const SECCOMP_MODE_FILTER: u32 = 2;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
/// Filters longer than the kernel's BPF_MAXINSNS cannot exist.
const MAX_INSTRUCTIONS: usize = 4096;

/// The seccomp mode of one thread (the "Seccomp:" line of its status).
pub fn mode(pid: i32, tid: i32) -> Result<u32> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(str::trim).unwrap_or("0");
    field.parse().with_context(|| format!("{path}: Seccomp: {field:?}"))
}

/// Refuses what cannot be dumped, before the process is touched: strict mode.
/// `mode`: the process's (its leader's), read by the caller.
pub fn precheck_mode(pid: i32, mode: u32) -> Result<()> {
    if mode == 1 {
        bail!("pid {pid} runs in seccomp strict mode (only read, write, exit and sigreturn): crust cannot run anything in it to dump it");
    }
    Ok(())
}

/// Right after a thread is seized, before anything runs in it: its filters stand aside while
/// crust works (nothing to do for an unfiltered thread).
pub fn suspend_while_traced(pid: i32, tid: i32, kill_on_tracer_exit: bool) -> Result<()> {
    if mode(pid, tid)? == SECCOMP_MODE_FILTER {
        ptrace::suspend_seccomp(Pid::from_raw(tid), kill_on_tracer_exit)?;
    }
    Ok(())
}

/// The chain of one thread, oldest first.
fn chain(tid: i32) -> Result<Vec<SeccompFilter>> {
    let mut filters = Vec::new();
    for index in 0.. {
        let Some(program) = ptrace::seccomp_filter(Pid::from_raw(tid), index)? else { break };
        let flags = ptrace::seccomp_filter_flags(Pid::from_raw(tid), index)?;
        filters.push(SeccompFilter { program, flags });
    }
    filters.reverse();
    Ok(filters)
}

/// The filter chain shared by every thread of a frozen process, if it has one.
pub fn dump(pid: i32, tids: &[i32]) -> Result<Option<Seccomp>> {
    let modes: Vec<u32> = tids.iter().map(|t| mode(pid, *t)).collect::<Result<_>>()?;
    if modes.iter().all(|m| *m == 0) {
        return Ok(None);
    }
    let leader = chain(pid).with_context(|| format!("pid {pid}: reading its seccomp filters"))?;
    for (tid, m) in tids.iter().zip(&modes) {
        let same = *m == SECCOMP_MODE_FILTER && chain(*tid)? == leader;
        if !same {
            bail!(
                "pid {pid}: thread {tid} has other seccomp filters than the main thread (installed per thread, \
                 without TSYNC); crust restores only a chain all threads share"
            );
        }
    }
    Ok(Some(Seccomp { filters: leader }))
}

/// Installs the chain in the process (the leader, with TSYNC for every thread). Every thread
/// of the process exists and is traced with its filters suspended.
pub fn restore(ctx: &mut RestoreCtx, seccomp: &Seccomp, tids: &[i32]) -> Result<()> {
    let pid = ctx.pid.as_raw();
    for tid in tids {
        ptrace::suspend_seccomp(Pid::from_raw(*tid), true).with_context(|| format!("pid {pid} thread {tid}"))?;
    }
    for (i, f) in seccomp.filters.iter().enumerate() {
        let len = f.program.len() / 8;
        if f.program.len() % 8 != 0 || len == 0 || len > MAX_INSTRUCTIONS {
            bail!("pid {pid}: seccomp filter #{i} of the image is not a BPF program ({} bytes)", f.program.len());
        }
        let program = ctx.remote.put(64, &f.program)?;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        let mut fprog = Vec::with_capacity(16);
        fprog.extend_from_slice(&(len as u64).to_ne_bytes());
        fprog.extend_from_slice(&program.to_ne_bytes());
        let fprog = ctx.remote.put(0, &fprog)?;
        let flags = f.flags | SECCOMP_FILTER_FLAG_TSYNC;
        let ret = ctx
            .remote
            .syscall("seccomp(SECCOMP_SET_MODE_FILTER)", libc::SYS_seccomp, &[SECCOMP_SET_MODE_FILTER, flags, fprog])
            .with_context(|| format!("pid {pid}: installing seccomp filter #{i}"))?;
        if ret != 0 {
            bail!("pid {pid}: installing seccomp filter #{i}: thread {ret} could not be synchronized");
        }
    }
    Ok(())
}
