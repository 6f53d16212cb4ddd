//! Credentials: user and group ids, supplementary groups, capability sets.
//!
//! Restore gives them back last, after everything that needs crust's privileges; before that,
//! files are opened under the image's filesystem ids ([`enter_fs_identity`]), except the
//! regular files of a sealed image's fds, which are opened as root but only if they are the
//! very files the image names (see `kinds::fd::regular`).

use anyhow::{Context, Result};

use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::Credentials as Creds;

pub struct Credentials;

fn parse_ids(status: &str, key: &str) -> Result<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix(key)).with_context(|| format!("no {key} line in /proc/PID/status"))?;
    line.split_whitespace().map(|v| v.parse::<u32>().context("bad id")).collect()
}

fn parse_hex(status: &str, key: &str) -> Result<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key)).with_context(|| format!("no {key} line in /proc/PID/status"))?;
    u64::from_str_radix(line.trim(), 16).context("bad capability mask")
}

/// The credentials of one thread (/proc/PID/task/TID/status): each thread has its own.
pub fn of_thread(pid: i32, tid: i32) -> Result<Creds> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .with_context(|| format!("reading /proc/{pid}/task/{tid}/status"))?;
    let uids = parse_ids(&status, "Uid:")?;
    let gids = parse_ids(&status, "Gid:")?;
    Ok(Creds {
        uid: uids[0],
        euid: uids[1],
        suid: uids[2],
        fsuid: uids[3],
        gid: gids[0],
        egid: gids[1],
        sgid: gids[2],
        fsgid: gids[3],
        groups: parse_ids(&status, "Groups:")?,
        cap_inheritable: parse_hex(&status, "CapInh:")?,
        cap_permitted: parse_hex(&status, "CapPrm:")?,
        cap_effective: parse_hex(&status, "CapEff:")?,
        cap_bounding: parse_hex(&status, "CapBnd:")?,
        cap_ambient: parse_hex(&status, "CapAmb:")?,
    })
}

impl Kind for Credentials {
    type Record = Creds;

    fn dump(ctx: &mut DumpCtx) -> Result<Creds> {
        let pid = ctx.pid.as_raw();
        of_thread(pid, pid)
    }

    fn restore(ctx: &mut RestoreCtx, c: &Creds) -> Result<()> {
        // A thread that has them already (all that /proc shows is the record) is left alone:
        // every call below would change nothing.
        if of_thread(ctx.pid.as_raw(), ctx.remote.pid().as_raw()).is_ok_and(|now| now == *c) {
            return Ok(());
        }
        let r = &mut *ctx.remote;
        let last_cap =
            std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(40);
        // Bounding set first: dropping from it needs CAP_SETPCAP, which may go below.
        for cap in 0..=last_cap {
            if c.cap_bounding & (1 << cap) == 0 {
                r.syscall("prctl(PR_CAPBSET_DROP)", libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, cap])?;
            }
        }
        let mut groups = Vec::new();
        for g in &c.groups {
            groups.extend_from_slice(&g.to_ne_bytes());
        }
        let groups_addr = r.put(0, &groups)?;
        r.syscall("setgroups", libc::SYS_setgroups, &[c.groups.len() as u64, groups_addr])?;
        r.syscall("setresgid", libc::SYS_setresgid, &[c.gid as u64, c.egid as u64, c.sgid as u64])?;
        r.syscall_raw(libc::SYS_setfsgid, &[c.fsgid as u64])?;
        // Keep the permitted set across the uid change; capset below sets it exactly.
        r.syscall("prctl(PR_SET_KEEPCAPS)", libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 1])?;
        r.syscall("setresuid", libc::SYS_setresuid, &[c.uid as u64, c.euid as u64, c.suid as u64])?;
        r.syscall_raw(libc::SYS_setfsuid, &[c.fsuid as u64])?;
        r.syscall("prctl(PR_SET_KEEPCAPS)", libc::SYS_prctl, &[libc::PR_SET_KEEPCAPS as u64, 0])?;
        // struct __user_cap_header_struct { version, pid } + two __user_cap_data_struct.
        let mut capbuf = Vec::new();
        capbuf.extend_from_slice(&0x2008_0522u32.to_ne_bytes()); // _LINUX_CAPABILITY_VERSION_3
        capbuf.extend_from_slice(&0u32.to_ne_bytes());
        for half in [0, 32] {
            for set in [c.cap_effective, c.cap_permitted, c.cap_inheritable] {
                capbuf.extend_from_slice(&((set >> half) as u32).to_ne_bytes());
            }
        }
        let hdr = r.put(0, &capbuf)?;
        r.syscall("capset", libc::SYS_capset, &[hdr, hdr + 8])?;
        for cap in 0..=last_cap {
            if c.cap_ambient & (1 << cap) != 0 {
                r.syscall(
                    "prctl(PR_CAP_AMBIENT_RAISE)",
                    libc::SYS_prctl,
                    &[libc::PR_CAP_AMBIENT as u64, libc::PR_CAP_AMBIENT_RAISE as u64, cap],
                )?;
            }
        }
        Ok(())
    }
}

/// Switches the process to the image's filesystem ids and groups for opening files.
pub fn enter_fs_identity(ctx: &mut RestoreCtx) -> Result<()> {
    let Some((fsuid, fsgid, groups)) = ctx.fs_identity.clone() else { return Ok(()) };
    let r = &mut *ctx.remote;
    let mut bytes = Vec::new();
    for g in &groups {
        bytes.extend_from_slice(&g.to_ne_bytes());
    }
    let addr = r.put(0, &bytes)?;
    r.syscall("setgroups", libc::SYS_setgroups, &[groups.len() as u64, addr])?;
    r.syscall_raw(libc::SYS_setfsgid, &[fsgid as u64])?;
    r.syscall_raw(libc::SYS_setfsuid, &[fsuid as u64])?;
    Ok(())
}

/// Back to root's filesystem ids for the privileged steps that follow.
pub fn leave_fs_identity(ctx: &mut RestoreCtx) -> Result<()> {
    if ctx.fs_identity.is_none() {
        return Ok(());
    }
    let r = &mut *ctx.remote;
    r.syscall_raw(libc::SYS_setfsuid, &[0])?;
    r.syscall_raw(libc::SYS_setfsgid, &[0])?;
    Ok(())
}
