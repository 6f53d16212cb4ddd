//! Who the process is besides its credentials: name, personality, umask, resource limits and
//! its prctl() state (parent-death signal, dumpable, no_new_privs, timer slack, THP opt-out,
//! child subreaper, memory-deny-write-execute).

use anyhow::{Context, Result, bail};

use super::{DumpCtx, Kind, RestoreCtx, scratch_u64};
use crate::image::proto::{ProcessControl, Rlimit};

pub struct Identity;

pub struct IdentityRecord {
    pub comm: String,
    pub personality: u32,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub control: ProcessControl,
    pub sid: u32,
    pub pgid: u32,
    pub nice: i32,
    pub oom_score_adj: i32,
}

const RLIMIT_COUNT: u32 = 16; // RLIMIT_CPU .. RLIMIT_RTTIME

impl Kind for Identity {
    type Record = IdentityRecord;

    fn dump(ctx: &mut DumpCtx) -> Result<IdentityRecord> {
        dump_with(ctx, None)
    }

    /// The process name is the leader thread's name, restored with the thread (`set_name`).
    fn restore(ctx: &mut RestoreCtx, rec: &IdentityRecord) -> Result<()> {
        // What /proc shows as the record has it already (inherited from a restored parent, or
        // crust's own) needs no call.
        let now = Current::of(ctx.pid.as_raw());
        let r = &mut *ctx.remote;
        if now.personality != Some(rec.personality) {
            r.syscall("personality", libc::SYS_personality, &[rec.personality as u64])?;
        }
        if now.umask != Some(rec.umask) {
            r.syscall("umask", libc::SYS_umask, &[rec.umask as u64])?;
        }
        let c = &rec.control;
        if now.timer_slack_ns != Some(c.timer_slack_ns) {
            r.syscall("prctl(PR_SET_TIMERSLACK)", libc::SYS_prctl, &[libc::PR_SET_TIMERSLACK as u64, c.timer_slack_ns])?;
        }
        // (/proc's THP_enabled does not tell every way THP can be disabled: always set.)
        r.syscall("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, &[libc::PR_SET_THP_DISABLE as u64, c.thp_disabled as u64])?;
        r.syscall("prctl(PR_SET_CHILD_SUBREAPER)", libc::SYS_prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, c.child_subreaper as u64])?;
        // Sessions and process groups are rebuilt while the tree is created (restore.rs).
        let pid = ctx.pid.as_raw() as u32;
        if now.nice != Some(rec.nice) {
            r.syscall("setpriority", libc::SYS_setpriority, &[libc::PRIO_PROCESS as u64, 0, rec.nice as i64 as u64])
                .with_context(|| format!("restoring nice value {}", rec.nice))?;
        }
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), rec.oom_score_adj.to_string())
            .with_context(|| format!("restoring oom_score_adj {}", rec.oom_score_adj))?;
        if c.no_new_privs {
            r.syscall("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0])?;
        }
        Ok(())
    }
}

/// What a process being restored has now, as /proc shows it (None: not shown, or unreadable).
struct Current {
    personality: Option<u32>,
    umask: Option<u32>,
    timer_slack_ns: Option<u64>,
    nice: Option<i32>,
}

impl Current {
    fn of(pid: i32) -> Current {
        let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok();
        let status = read("status").unwrap_or_default();
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        // After "(comm)": state is field 0, nice field 16.
        let stat = read("stat").unwrap_or_default();
        let nice = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(16)?.parse().ok());
        Current {
            personality: read("personality").and_then(|p| u32::from_str_radix(p.trim(), 16).ok()),
            umask: field("Umask:").and_then(|u| u32::from_str_radix(u, 8).ok()),
            timer_slack_ns: read("timerslack_ns").and_then(|t| t.trim().parse().ok()),
            nice,
        }
    }
}

/// Every resource limit of the process, through prlimit64 calls made by the process itself.
fn remote_rlimits(r: &mut crate::sys::remote::RemoteTask) -> Result<Vec<Rlimit>> {
    let mut rlimits = Vec::new();
    for resource in 0..RLIMIT_COUNT {
        let out = r.put(0, &[0u8; 16])?;
        r.syscall("prlimit64", libc::SYS_prlimit64, &[0, resource as u64, 0, out]).with_context(|| format!("reading rlimit {resource}"))?;
        rlimits.push(Rlimit { resource, soft: scratch_u64(r, 0)?, hard: scratch_u64(r, 8)? });
    }
    Ok(rlimits)
}

/// The kernel's names in /proc/PID/limits, in resource order (RLIMIT_CPU .. RLIMIT_RTTIME).
const LIMIT_NAMES: [&str; RLIMIT_COUNT as usize] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

/// Every resource limit of `pid` from /proc/PID/limits (the kernel prints the raw values, or
/// "unlimited" for RLIM_INFINITY). None if the file does not read as expected: the caller
/// asks the process instead.
pub fn rlimits_from_proc(pid: i32) -> Option<Vec<Rlimit>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_limits(&text)
}

fn parse_limits(text: &str) -> Option<Vec<Rlimit>> {
    let value = |v: &str| if v == "unlimited" { Some(u64::MAX) } else { v.parse().ok() };
    let mut lines = text.lines().skip(1);
    let mut rlimits = Vec::new();
    for (resource, name) in LIMIT_NAMES.iter().enumerate() {
        let rest = lines.next()?.strip_prefix(name)?;
        let mut words = rest.split_whitespace();
        let (soft, hard) = (value(words.next()?)?, value(words.next()?)?);
        rlimits.push(Rlimit { resource: resource as u32, soft, hard });
    }
    Some(rlimits)
}

/// Resource limits go back late: a low RLIMIT_NOFILE or RLIMIT_AS would get in the way of
/// restoring the rest. Only those that differ from what the process has now are set.
pub fn restore_rlimits(ctx: &mut RestoreCtx, rlimits: &[Rlimit]) -> Result<()> {
    let now = rlimits_from_proc(ctx.pid.as_raw()).unwrap_or_default();
    for l in rlimits.iter().filter(|l| !now.contains(l)) {
        let mut raw = Vec::new();
        raw.extend_from_slice(&l.soft.to_ne_bytes());
        raw.extend_from_slice(&l.hard.to_ne_bytes());
        let addr = ctx.remote.put(0, &raw)?;
        ctx.remote
            .syscall("prlimit64", libc::SYS_prlimit64, &[0, l.resource as u64, addr, 0])
            .with_context(|| format!("restoring rlimit {} to soft {} hard {}", l.resource, l.soft, l.hard))?;
    }
    Ok(())
}

/// The parent-death signal goes back after the credentials: the kernel clears it when a
/// process's ids change (a process running as anyone but root would lose it).
pub fn restore_pdeath_signal(ctx: &mut RestoreCtx, control: &ProcessControl) -> Result<()> {
    ctx.remote.syscall("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, &[libc::PR_SET_PDEATHSIG as u64, control.pdeath_signal as u64])?;
    Ok(())
}

/// The dumpable flag goes back after the credentials: changing ids resets it.
pub fn restore_dumpable(ctx: &mut RestoreCtx, control: &ProcessControl) -> Result<()> {
    if control.dumpable > 1 {
        bail!("dumpable mode {} (suid_dumpable) cannot be set by a process", control.dumpable);
    }
    ctx.remote.syscall("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, control.dumpable as u64])?;
    Ok(())
}

/// The memory-deny-write-execute states a process can be in (PR_GET_MDWE): none, or
/// PR_MDWE_REFUSE_EXEC_GAIN with or without PR_MDWE_NO_INHERIT.
pub fn check_mdwe(control: &ProcessControl, image_file: &str) -> Result<()> {
    let refuse = libc::PR_MDWE_REFUSE_EXEC_GAIN;
    if ![0, refuse, refuse | libc::PR_MDWE_NO_INHERIT].contains(&control.mdwe) {
        bail!(
            "image file {image_file}: field control.mdwe: {:#x} is not a PR_GET_MDWE answer (0, 1 or 3: \
             PR_MDWE_NO_INHERIT only with PR_MDWE_REFUSE_EXEC_GAIN)",
            control.mdwe
        );
    }
    Ok(())
}

/// Memory-deny-write-execute goes back after every mapping crust makes in the process: from
/// then on the kernel refuses a writable executable mapping, and a mapping becoming
/// executable, to crust as to the program. It cannot be unset, and a process forked afterwards
/// inherits it (unless PR_MDWE_NO_INHERIT): all the tree exists by now.
pub fn restore_mdwe(ctx: &mut RestoreCtx, control: &ProcessControl) -> Result<()> {
    if control.mdwe == 0 {
        return Ok(());
    }
    ctx.remote
        .syscall("prctl(PR_SET_MDWE)", libc::SYS_prctl, &[libc::PR_SET_MDWE as u64, control.mdwe as u64, 0, 0, 0])
        .with_context(|| format!("restoring memory-deny-write-execute flags {:#x}", control.mdwe))?;
    Ok(())
}

/// Names the calling thread of `remote` (prctl PR_SET_NAME; the kernel keeps 15 bytes).
pub fn set_name(remote: &mut crate::sys::remote::RemoteTask, name: &str) -> Result<()> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.truncate(15);
    // A thread that has the name already (a new thread takes its leader's) needs no call.
    let current = std::fs::read(format!("/proc/{}/comm", remote.pid()));
    if current.is_ok_and(|c| c.strip_suffix(b"\n") == Some(&bytes[..])) {
        return Ok(());
    }
    bytes.push(0);
    let addr = remote.put(256, &bytes)?;
    remote.syscall("prctl(PR_SET_NAME)", libc::SYS_prctl, &[libc::PR_SET_NAME as u64, addr])?;
    Ok(())
}

/// The identity of the process; `asked` if its prctl() state was asked already (by
/// [`super::asked::ask_all`]: it cannot change while the process is frozen).
pub fn dump_with(ctx: &mut DumpCtx, asked: Option<&super::asked::Asked>) -> Result<IdentityRecord> {
    let pid = ctx.pid.as_raw();
    let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).with_context(|| format!("reading /proc/{pid}/{name}"));
    let comm = read("comm")?.trim_end_matches('\n').to_owned();
    let personality = u32::from_str_radix(read("personality")?.trim(), 16)?;
    let status = read("status")?;
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let umask = u32::from_str_radix(field("Umask:").context("no Umask in status")?, 8)?;
    let no_new_privs = field("NoNewPrivs:") == Some("1");
    let timer_slack_ns = read("timerslack_ns")?.trim().parse()?;
    let stat = ctx.process.stat().with_context(|| format!("reading /proc/{pid}/stat"))?;
    let oom_score_adj = read("oom_score_adj")?.trim().parse()?;

    let r = &mut *ctx.remote;
    // /proc shows them exactly, without a remote call per limit.
    let rlimits = match rlimits_from_proc(pid) {
        Some(l) => l,
        None => remote_rlimits(r)?,
    };
    let (pdeath_signal, dumpable, thp_disabled, child_subreaper, mdwe) = match asked {
        Some(a) => (a.pdeath_signal, a.dumpable, a.thp_disabled, a.child_subreaper, a.mdwe),
        None => ask_control(r)?,
    };
    Ok(IdentityRecord {
        comm,
        personality,
        umask,
        rlimits,
        control: ProcessControl { pdeath_signal, dumpable, no_new_privs, timer_slack_ns, thp_disabled, child_subreaper, mdwe },
        sid: stat.session as u32,
        pgid: stat.pgrp as u32,
        nice: stat.nice as i32,
        oom_score_adj,
    })
}

/// The prctl() state only the process can tell: (parent-death signal, dumpable, THP opt-out,
/// child subreaper, MDWE flags).
fn ask_control(r: &mut crate::sys::remote::RemoteTask) -> Result<(u32, u32, bool, u32, u32)> {
    let out = r.put(0, &[0u8; 8])?;
    r.syscall("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, out])?;
    let pdeath_signal = scratch_u64(r, 0)? as u32;
    let dumpable = r.syscall("prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as u64])? as u32;
    let thp_disabled = r.syscall("prctl(PR_GET_THP_DISABLE)", libc::SYS_prctl, &[libc::PR_GET_THP_DISABLE as u64])? != 0;
    let out = r.put(0, &[0u8; 8])?;
    r.syscall("prctl(PR_GET_CHILD_SUBREAPER)", libc::SYS_prctl, &[libc::PR_GET_CHILD_SUBREAPER as u64, out])?;
    let child_subreaper = scratch_u64(r, 0)? as u32;
    // EINVAL before Linux 6.3, which has no MDWE.
    let mdwe = match r.syscall_raw(libc::SYS_prctl, &[libc::PR_GET_MDWE as u64, 0, 0, 0, 0])? {
        ret if ret == -(libc::EINVAL as i64) => 0,
        ret if ret < 0 => bail!("pid {}: remote prctl(PR_GET_MDWE): {}", r.pid(), nix::errno::Errno::from_raw(-ret as i32)),
        flags => flags as u32,
    };
    Ok((pdeath_signal, dumpable, thp_disabled, child_subreaper, mdwe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_from_proc_are_the_ones_getrlimit_gives() {
        use nix::sys::resource::{Resource, getrlimit};
        let limits = rlimits_from_proc(std::process::id() as i32).expect("/proc/self/limits parses");
        let resources = [
            Resource::RLIMIT_CPU,
            Resource::RLIMIT_FSIZE,
            Resource::RLIMIT_DATA,
            Resource::RLIMIT_STACK,
            Resource::RLIMIT_CORE,
            Resource::RLIMIT_RSS,
            Resource::RLIMIT_NPROC,
            Resource::RLIMIT_NOFILE,
            Resource::RLIMIT_MEMLOCK,
            Resource::RLIMIT_AS,
            Resource::RLIMIT_LOCKS,
            Resource::RLIMIT_SIGPENDING,
            Resource::RLIMIT_MSGQUEUE,
            Resource::RLIMIT_NICE,
            Resource::RLIMIT_RTPRIO,
            Resource::RLIMIT_RTTIME,
        ];
        for (l, r) in limits.iter().zip(resources) {
            let (soft, hard) = getrlimit(r).unwrap();
            assert_eq!((l.soft, l.hard), (soft, hard), "resource {}", l.resource);
        }
        assert_eq!(limits.len(), 16);
    }

    #[test]
    fn unexpected_limits_text_gives_none() {
        assert!(parse_limits("").is_none());
        let header = "Limit                     Soft Limit           Hard Limit           Units     \n";
        assert!(parse_limits(&format!("{header}Max cpu time              lots                 unlimited            seconds\n")).is_none());
        assert!(parse_limits(&format!("{header}Max file size             unlimited            unlimited            bytes\n")).is_none());
    }
}
