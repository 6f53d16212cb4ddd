//! File leases (fcntl F_SETLEASE), including a lease caught in the middle of a break.
//!
//! A lease that is not being broken is like a lock: its type is saved and it is set again on
//! restore. A lease being broken (its holder got SIGIO because another open() conflicts, and
//! the kernel gives it lease-break-time seconds to give the lease up) is restored in its
//! pre-break type and the break is started again by crust while the tree is still frozen
//! ([`restart`]), with the kernel's own deadline placed at the recorded remaining time, so:
//! - the breakers, restored inside their open(), retry it and wait for that break;
//! - the holder is not signalled again (crust clears the description's signal owner for the
//!   instant it starts the break; a signal still pending in the image is delivered once, as a
//!   pending signal);
//! - the break then follows the kernel's own rules: it ends when the holder gives the lease up,
//!   downgrades it, closes the description, exits or execs, or at the kernel's deadline. crust
//!   keeps nothing of the restored processes once they run.
//!
//! Dump never reopens a leased file (that would break the lease); it works on a pidfd_getfd
//! copy of the holder's fd, and measures every break at the instant of the freeze. See
//! docs/file-leases.md, and docs/kernel-leases.md for the kernel facts this relies on.

pub mod break_time;
pub mod restart;
pub mod restored;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::RestoreCtx;
use crate::image::proto::{Lease, lease::TimeMethod};
use crate::sys::lease_probe::{self, TracedLease};
use restored::mono_now;

const F_SETLEASE: i32 = 1024;
const F_GETLEASE: i32 = 1025;
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;

/// Set (to anything) in crust's environment, the dump does not use tracefs: the pre-break type
/// and the remaining time are found by the other methods. For tests of those methods.
const NO_TRACEFS_ENV: &str = "CRUST_LEASE_NO_TRACEFS";

/// How precise a blocked breaker's wait is: measured within 20 ms here, up to 55 ms with both
/// CPUs busy (the scheduler clock of a CPU misses its IRQ and steal time, and a busy CPU updates
/// it late).
const BREAKER_WAIT_PRECISION_MS: u64 = 60;

pub fn lease_break_time() -> Result<u32> {
    break_time::current()
}

/// F_GETLEASE through crust's copy of a description: the lease type (the break's target type
/// while breaking). It also makes the kernel expire a break whose time is over.
fn get_lease(copy: &OwnedFd) -> Result<i32> {
    Ok(crate::sys::fcntl_int(copy.as_raw_fd(), F_GETLEASE, 0)?)
}

// ---------------------------------------------------------------------------------------------
// Dump
// ---------------------------------------------------------------------------------------------

/// What the dump saw of the machine's leases just before it froze the tree.
struct BeforeFreeze {
    /// /proc/locks: freezing a breaker takes it out of its wait (its open() is interrupted, to
    /// be restarted), so only this copy still shows it below the lease it waits for. None when
    /// no process of the tree held a lease (see [`tree_may_hold_a_lease`]).
    locks: Option<String>,
    /// For each blocked breaker of an unlock break, the deadline its wait implies
    /// (CLOCK_MONOTONIC): right if it started the break (see lease_probe::break_deadline_via_sched).
    breaker_deadlines: BTreeMap<u32, Duration>,
    /// The instant of the freeze (CLOCK_MONOTONIC): every remaining time is counted from it.
    freeze: Duration,
}

static BEFORE_FREEZE: Mutex<Option<BeforeFreeze>> = Mutex::new(None);

/// Called by the dump right before it freezes the tree of `root`: samples /proc/locks and the
/// waits of the breakers of the tree's leases while they still wait, then notes the instant of
/// the freeze.
pub fn before_freeze(root: i32) {
    let locks = tree_may_hold_a_lease(root).then(|| std::fs::read_to_string("/proc/locks").unwrap_or_default());
    let mut breaker_deadlines = BTreeMap::new();
    let breaking: Vec<_> = waiting_breakers(locks.as_deref().unwrap_or_default())
        .into_iter()
        // A reader blocked on a downgrade polls: its wait tells nothing.
        .filter(|(lease, waiters)| lease.mode == "BREAKING" && lease.lock_type == "UNLCK" && !waiters.is_empty())
        .collect();
    if !breaking.is_empty()
        && let Ok(setting) = break_time::current()
    {
        let tree = tree_pids(root);
        let full = Duration::from_secs(setting.into());
        // Each sample takes about 20 ms: only the breakers of the tree's own leases.
        for (_, waiters) in breaking.iter().filter(|(lease, _)| tree.contains(&lease.pid)) {
            for &pid in waiters {
                if let Some(left) = lease_probe::break_deadline_via_sched(pid as i32, full) {
                    breaker_deadlines.insert(pid, mono_now() + left);
                }
            }
        }
    }
    let freeze = mono_now();
    tracing::info!(freeze_monotonic_s = freeze.as_secs_f64(), "lease breaks are measured at this instant");
    *BEFORE_FREEZE.lock().unwrap() = Some(BeforeFreeze { locks, breaker_deadlines, freeze });
}

/// Whether a process of the tree of `root` may hold a lease: a "lock:" line of a lease or
/// delegation in the fdinfo of one of its fds, or more fds than are worth reading one by one
/// (or a tree that cannot be walked). Reading /proc/locks costs an RCU grace period on this
/// kernel (15-17 ms, the first reader of a while takes the lock list's percpu rwsem for
/// writing), one area or a thousand; the waits it shows matter only below the tree's own
/// leases. A lease taken after this look, and broken before the freeze, is measured as a
/// lease taken after the copy of /proc/locks always was: its breakers are read after the freeze.
fn tree_may_hold_a_lease(root: i32) -> bool {
    const MOST_FDS: usize = 4096;
    let mut pids = vec![root];
    let mut fds = 0;
    while let Some(pid) = pids.pop() {
        let Ok(names) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return true };
        for name in names.flatten() {
            fds += 1;
            let Ok(text) = std::fs::read_to_string(name.path()) else { continue };
            if fds > MOST_FDS || super::locks::fdinfo_locks(&text).iter().any(|l| l.kind == "LEASE" || l.kind == "DELEG") {
                return true;
            }
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { return true };
            pids.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    false
}

/// `root` and its descendants, as /proc shows them now (the tree is not frozen yet: a process
/// forked meanwhile is missed, which only costs its lease the breaker-wait measure).
fn tree_pids(root: i32) -> std::collections::BTreeSet<i64> {
    let mut parent_of = BTreeMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            if let Ok(stat) = p.stat() {
                parent_of.insert(i64::from(stat.pid), i64::from(stat.ppid));
            }
        }
    }
    let mut tree = std::collections::BTreeSet::from([i64::from(root)]);
    for &pid in parent_of.keys() {
        let mut p = pid;
        for _ in 0..parent_of.len() {
            if tree.contains(&p) {
                tree.insert(pid);
                break;
            }
            match parent_of.get(&p) {
                Some(&pp) if pp > 0 => p = pp,
                _ => break,
            }
        }
    }
    tree
}

/// The instant of the freeze (now, if `before_freeze` was not called).
fn freeze_instant() -> Duration {
    BEFORE_FREEZE.lock().unwrap().as_ref().map_or_else(mono_now, |b| b.freeze)
}

/// Every lease of /proc/locks with the pids blocked behind it (the "->" lines right below a
/// lease are its breakers; they print no device and inode of their own).
fn waiting_breakers(locks: &str) -> Vec<(super::locks::LockLine, Vec<u32>)> {
    let mut out: Vec<(super::locks::LockLine, Vec<u32>)> = Vec::new();
    let mut under_lease = false;
    for l in locks.lines().filter_map(super::locks::parse_line) {
        if !l.waiting {
            under_lease = l.kind == "LEASE";
            if under_lease {
                out.push((l, Vec::new()));
            }
        } else if under_lease && l.kind == "LEASE" && l.pid > 0 {
            out.last_mut().unwrap().1.push(l.pid as u32);
        }
    }
    out
}

/// Pids blocked in open() behind the lease on `dev_ino`, as they were before the freeze.
fn breakers(dev_ino: &str) -> Result<Vec<u32>> {
    let before = BEFORE_FREEZE.lock().unwrap().as_ref().and_then(|b| b.locks.clone());
    let text = match before {
        Some(text) => text,
        None => std::fs::read_to_string("/proc/locks")?,
    };
    Ok(waiting_breakers(&text).into_iter().filter(|(l, _)| l.dev_ino == dev_ino).flat_map(|(_, w)| w).collect())
}

/// Records the lease held through the description behind `copy` (fd `fd` of `pid`).
pub fn dump(pid: i32, fd: i32, path: &str, copy: &OwnedFd, remote: &mut crate::sys::remote::RemoteTask) -> Result<Option<Lease>> {
    // Let the kernel expire a break whose time is already over before looking.
    get_lease(copy).with_context(|| format!("pid {pid} fd {fd}: F_GETLEASE"))?;
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let lines = super::locks::fdinfo_locks(&fdinfo);
    refuse_delegations(pid, fd, path, &lines)?;
    let Some(current) = lines.into_iter().find(|l| l.kind == "LEASE") else {
        return Ok(None); // the break completed meanwhile: there is no lease any more
    };
    let mut lease = Lease {
        holder_pid: pid as u32,
        holder_fd: fd,
        path: path.to_owned(),
        lease_break_time: lease_break_time()?,
        breaking: current.mode == "BREAKING",
        ..Default::default()
    };
    if lease.breaking {
        lease.break_to_unlock = current.lock_type == "UNLCK";
        lease.breakers = breakers(&current.dev_ino)?;
        measure_break(&mut lease, copy)?;
    } else {
        lease.write = current.lock_type == "WRITE";
        lease.type_method = "fdinfo".into();
    }
    read_owner(&mut lease, fd, remote).with_context(|| format!("pid {pid} fd {fd}: the lease's signal owner"))?;
    Ok(Some(lease))
}

/// A delegation (NFS, or F_SETDELEG from Linux 6.19) is a lease-like lock crust does not restore
/// yet: refused by name rather than dropped.
fn refuse_delegations(pid: i32, fd: i32, path: &str, lines: &[super::locks::LockLine]) -> Result<()> {
    if let Some(deleg) = lines.iter().find(|l| l.kind == "DELEG") {
        bail!(
            "pid {pid} fd {fd}: {path} holds a file delegation ({} {}, F_SETDELEG): crust cannot \
             checkpoint delegations yet",
            deleg.mode,
            deleg.lock_type
        );
    }
    Ok(())
}

/// A break in progress: the lease's own type and the time left at the freeze, each with the
/// method that found it.
fn measure_break(lease: &mut Lease, copy: &OwnedFd) -> Result<()> {
    let meta = File::from(copy.try_clone()?).metadata().context("fstat of the leased file")?;
    let traced = if std::env::var_os(NO_TRACEFS_ENV).is_some() {
        None
    } else {
        let trigger = || get_lease(copy).map(drop).map_err(|e| std::io::Error::other(e.to_string()));
        match lease_probe::break_deadline_via_tracefs(meta.ino(), meta.dev(), trigger) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!("lease on {}: tracefs not usable ({e}); other methods are used", lease.path);
                None
            }
        }
    };
    if !lease.break_to_unlock {
        lease.write = true; // only a write lease is downgraded
        lease.type_method = "downgrade".into();
    } else if let Some(t) = &traced {
        lease.write = t.original_write;
        lease.type_method = "tracefs".into();
    } else {
        lease.write = probe_is_write(copy, &lease.path)?;
        lease.type_method = "probe".into();
    }
    let freeze = freeze_instant();
    match traced {
        Some(t) => from_kernel_deadline(lease, &t, freeze),
        None => without_tracefs(lease, meta.dev(), meta.ino(), freeze),
    }
    Ok(())
}

/// tracefs gave the kernel's deadlines: the time left is counted back to the freeze.
fn from_kernel_deadline(lease: &mut Lease, t: &TracedLease, freeze: Duration) {
    let probed = Duration::from_nanos(t.now_mono_ns);
    let at_freeze = |left: Duration| (probed + left).saturating_sub(freeze).as_millis() as u64;
    lease.remaining_ms = at_freeze(t.remaining);
    if t.unlock_pending && t.downgrade_pending {
        lease.downgrade_remaining_ms = at_freeze(t.downgrade_remaining()).max(1);
    }
    lease.set_remaining_method(TimeMethod::Tracefs);
    lease.remaining_precision_ms = t.tick().as_millis().max(1) as u64;
}

/// Without tracefs: crust's own record of a break it restarted, else a blocked breaker's wait
/// (sampled before the freeze), else the whole lease-break-time is assumed.
fn without_tracefs(lease: &mut Lease, dev: u64, ino: u64, freeze: Duration) {
    if let Some(b) = restored::find(dev, ino, lease.break_to_unlock, freeze, lease.holder_pid) {
        lease.remaining_ms = b.deadline.saturating_sub(freeze).as_millis() as u64;
        lease.set_remaining_method(TimeMethod::RestoredDeadline);
        let tick = lease_probe::kernel_hz().map_or(10, |hz| 1000u64.div_ceil(hz.into()));
        lease.remaining_precision_ms = tick + 1;
        return;
    }
    let guard = BEFORE_FREEZE.lock().unwrap();
    let earliest = guard.as_ref().and_then(|b| lease.breakers.iter().filter_map(|p| b.breaker_deadlines.get(p)).min().copied());
    match earliest {
        Some(deadline) if lease.break_to_unlock => {
            lease.remaining_ms = deadline.saturating_sub(freeze).as_millis() as u64;
            lease.set_remaining_method(TimeMethod::BreakerWait);
            lease.remaining_precision_ms = BREAKER_WAIT_PRECISION_MS;
        }
        _ => {
            lease.remaining_ms = u64::from(lease.lease_break_time) * 1000;
            lease.set_remaining_method(TimeMethod::AssumedFull);
            lease.remaining_precision_ms = lease.remaining_ms;
        }
    }
}

/// Who gets the break signal, and which signal: read in the holder itself.
fn read_owner(lease: &mut Lease, fd: i32, remote: &mut crate::sys::remote::RemoteTask) -> Result<()> {
    let out = remote.put(0, &[0u8; 8])?;
    remote.syscall("fcntl(F_GETOWN_EX)", libc::SYS_fcntl, &[fd as u64, crate::sys::F_GETOWN_EX as u64, out])?;
    let mut owner = [0u8; 8];
    remote.get(0, &mut owner)?;
    lease.owner_type = i32::from_ne_bytes(owner[..4].try_into().unwrap());
    lease.owner_id = i32::from_ne_bytes(owner[4..].try_into().unwrap());
    lease.signal = remote.syscall("fcntl(F_GETSIG)", libc::SYS_fcntl, &[fd as u64, F_GETSIG as u64])? as i32;
    Ok(())
}

/// For a lease being broken to unlock, its own type: a third process's O_RDONLY|O_NONBLOCK
/// open succeeds against a read lease and fails with EAGAIN against a write lease (see
/// docs/kernel-leases.md). Only ever used on a lease already breaking to unlock, where it
/// starts nothing new.
/// The file is opened again through crust's copy of the holder's description
/// (/proc/self/fd), never by its path, which may lead elsewhere by now.
fn probe_is_write(copy: &OwnedFd, path: &str) -> Result<bool> {
    match File::options().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(reopen_path(copy)) {
        Ok(_) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(true),
        Err(e) => Err(e).with_context(|| format!("probing the lease type of {path}")),
    }
}

/// The name under which the very file behind `fd` is opened again: its /proc/self/fd link,
/// which the kernel resolves to the file itself, without walking any path (a leased file's
/// path may have been renamed, replaced or made a symlink meanwhile; crust opens as root).
pub(super) fn reopen_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

// ---------------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------------

/// Sets the leases held through this process's fds again, in their pre-break types. Called
/// once every process and thread of the tree exists and its memory and fds are in place (so a
/// leased file mapped by the holder is mapped through the restored description, and the
/// signal owner, a process, group or thread of the tree, exists), before any break is
/// restarted. For each lease whose recorded holder fd is one of this process's fds:
/// - F_SETLEASE through that fd, by the holder: the kernel signals a break with si_fd = the fd
///   number given to F_SETLEASE, and /proc/locks names the process that took it;
/// - F_SETSIG and F_SETOWN_EX as recorded.
pub fn take_again(ctx: &mut RestoreCtx, fds: &[crate::image::proto::Fd]) -> Result<()> {
    for fd in fds {
        let Some(file) = ctx.open_files.open_files.iter().find(|f| f.id == fd.open_file_id) else { continue };
        let Some(lease) = file.lease.as_ref() else { continue };
        if lease.holder_pid as i32 != ctx.pid.as_raw() || lease.holder_fd != fd.fd {
            continue;
        }
        let r = &mut *ctx.remote;
        let (kind, name) = if lease.write { (libc::F_WRLCK, "write") } else { (libc::F_RDLCK, "read") };
        r.syscall("fcntl(F_SETLEASE)", libc::SYS_fcntl, &[fd.fd as u64, F_SETLEASE as u64, kind as u64])
            .with_context(|| format!("taking the {name} lease on {} again through fd {}", lease.path, fd.fd))?;
        if lease.signal != 0 {
            r.syscall("fcntl(F_SETSIG)", libc::SYS_fcntl, &[fd.fd as u64, F_SETSIG as u64, lease.signal as u64])
                .with_context(|| format!("fd {}: F_SETSIG {}", fd.fd, lease.signal))?;
        }
        let mut owner = Vec::new();
        owner.extend_from_slice(&lease.owner_type.to_ne_bytes());
        owner.extend_from_slice(&lease.owner_id.to_ne_bytes());
        let addr = r.put(0, &owner)?;
        r.syscall("fcntl(F_SETOWN_EX)", libc::SYS_fcntl, &[fd.fd as u64, crate::sys::F_SETOWN_EX as u64, addr])
            .with_context(|| format!("giving the lease on {} its signal owner ({} {})", lease.path, lease.owner_type, lease.owner_id))?;
    }
    Ok(())
}

/// The description of the image holding a write lease on this file (dev, inode), if any. A
/// write lease is granted only when no other description of the file exists, and any later
/// open of it breaks the lease: a mapping of such a file was made through that very
/// description, and must be made through it again (an open by path would break the lease
/// restore takes again, or keep it from being taken).
pub fn write_leased_description(files: &crate::image::proto::OpenFiles, dev: u64, inode: u64) -> Option<u32> {
    files.open_files.iter().find_map(|f| {
        f.lease.as_ref().filter(|l| l.write)?;
        match &f.kind {
            Some(crate::image::proto::open_file::Kind::Regular(r)) => {
                let id = r.file.as_ref()?;
                (id.dev == dev && id.inode == inode).then_some(f.id)
            }
            _ => None,
        }
    })
}

/// What restore does with a break that was in progress.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// As recorded in the image.
    AsImaged,
    /// The holder gets the whole lease-break-time again.
    FavorHolder,
    /// The break completes at once.
    FavorBreaker,
    /// The recorded remaining time plus this many milliseconds (may be negative).
    AddMs(i64),
    /// Exactly this remaining time.
    SetMs(u64),
    /// No break is restarted: the holder keeps its pre-break lease.
    NoBreak,
}

impl Policy {
    /// Parses `holder`, `breaker`, `no-break`, `add:SECS`, `set:SECS`.
    pub fn parse(s: &str) -> Result<Policy, String> {
        let secs = |v: &str| v.parse::<f64>().map_err(|_| format!("{v:?} is not a number of seconds")).and_then(Policy::check_secs);
        Ok(match s {
            "holder" => Policy::FavorHolder,
            "breaker" => Policy::FavorBreaker,
            "no-break" => Policy::NoBreak,
            _ if s.starts_with("add:") => Policy::AddMs((secs(&s[4..])? * 1000.0) as i64),
            _ if s.starts_with("set:") => Policy::SetMs((secs(&s[4..])?.max(0.0) * 1000.0) as u64),
            _ => return Err(format!("unknown lease policy {s:?} (holder, breaker, no-break, add:SECS, set:SECS)")),
        })
    }

    /// A number of seconds a policy may name: finite, at most a day either way.
    pub fn check_secs(secs: f64) -> Result<f64, String> {
        if secs.is_finite() && secs.abs() <= 86_400.0 {
            Ok(secs)
        } else {
            Err(format!("{secs} s is out of range (a lease break lasts at most a day here)"))
        }
    }

    /// Applies the policy to a recorded lease.
    pub fn apply(self, lease: &mut Lease) {
        if !lease.breaking {
            return;
        }
        let full = lease.lease_break_time as u64 * 1000;
        match self {
            Policy::AsImaged => return,
            Policy::FavorHolder => lease.remaining_ms = full,
            Policy::FavorBreaker => lease.remaining_ms = 0,
            Policy::AddMs(d) => {
                lease.remaining_ms = (lease.remaining_ms as i64 + d).max(0) as u64;
                if lease.downgrade_remaining_ms != 0 {
                    lease.downgrade_remaining_ms = (lease.downgrade_remaining_ms as i64 + d).max(1) as u64;
                }
            }
            Policy::SetMs(ms) => lease.remaining_ms = ms,
            Policy::NoBreak => {
                lease.no_break = true;
                return;
            }
        }
        if !matches!(self, Policy::AddMs(_)) {
            // One deadline chosen for the whole break.
            lease.downgrade_remaining_ms = 0;
        }
        lease.no_break = false;
        lease.set_remaining_method(TimeMethod::Edited);
        lease.remaining_precision_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The look that spares a dump its read of /proc/locks sees a lease of the tree through
    /// fdinfo, and no lease once it is gone. (nextest runs each test in a process of its own:
    /// no other test's lease is in this tree.)
    #[test]
    fn a_lease_of_the_tree_is_seen_without_proc_locks() {
        use std::os::fd::AsRawFd;
        let path = std::path::PathBuf::from(format!("/dev/shm/crust-lease-look-{}", std::process::id()));
        std::fs::write(&path, b"leased").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let me = std::process::id() as i32;
        assert!(!tree_may_hold_a_lease(me), "a lease seen before one was taken");
        crate::sys::fcntl_int(file.as_raw_fd(), F_SETLEASE, libc::F_RDLCK).expect("F_SETLEASE F_RDLCK");
        let seen = tree_may_hold_a_lease(me);
        crate::sys::fcntl_int(file.as_raw_fd(), F_SETLEASE, libc::F_UNLCK).expect("F_SETLEASE F_UNLCK");
        assert!(seen, "the read lease on {} was not seen", path.display());
        assert!(!tree_may_hold_a_lease(me), "a lease seen after it was released");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn delegations_are_refused_by_name() {
        let fdinfo = "pos:\t0\nflags:\t0100000\nlock:\t1: DELEG  ACTIVE    READ 4242 fd:01:1234 0 EOF\n";
        let lines = super::super::locks::fdinfo_locks(fdinfo);
        let e = refuse_delegations(4242, 5, "/srv/f", &lines).unwrap_err().to_string();
        assert!(e.contains("pid 4242 fd 5: /srv/f holds a file delegation"), "{e}");
        let lease = "lock:\t1: LEASE  ACTIVE    READ 4242 fd:01:1234 0 EOF\n";
        assert!(refuse_delegations(4242, 5, "/srv/f", &super::super::locks::fdinfo_locks(lease)).is_ok());
    }

    #[test]
    fn breakers_are_the_waiters_right_below_their_lease() {
        let locks = "1: LEASE  BREAKING  UNLCK 100 fd:01:7 0 EOF\n1: -> LEASE  BREAKER  WRITE 101 0:0:0 0 EOF\n\
                     1: -> LEASE  BREAKER  WRITE 102 0:0:0 0 EOF\n2: POSIX  ADVISORY  WRITE 103 fd:01:8 0 EOF\n\
                     2: -> POSIX  ADVISORY  WRITE 104 fd:01:8 0 EOF\n3: LEASE  ACTIVE  READ 105 fd:01:9 0 EOF\n";
        let found = waiting_breakers(locks);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].0.dev_ino.as_str(), found[0].1.clone()), ("fd:01:7", vec![101, 102]));
        assert_eq!((found[1].0.dev_ino.as_str(), found[1].1.clone()), ("fd:01:9", vec![]));
    }
}
