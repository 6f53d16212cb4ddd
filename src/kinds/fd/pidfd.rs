//! pidfds ("anon_inode:[pidfd]", from pidfd_open or CLONE_PIDFD) of processes of the tree: the
//! pid (fdinfo "Pid:"), and as status flags O_NONBLOCK and PIDFD_THREAD (O_EXCL).
//!
//! PIDs are the same after restore, so a pidfd is opened again with pidfd_open of the same pid,
//! in the process that creates the description (the nearest common ancestor of its holders),
//! once the target exists: restore creates the tree depth first, each process's children in
//! pid order, and a description whose target is not there yet waits, to be opened before the
//! next child is forked (a parent's pidfd of its first child, inherited by the second). Dump
//! checks that this order has the target before every holder that inherits the description,
//! and refuses the description by name otherwise. A target that comes only later than its
//! holder (a pidfd of a later sibling) is opened on the holder itself for the time being, and
//! the holder's fds of it get a pidfd of the target once every process exists
//! (`fds_in_place`).
//!
//! A PIDFD_THREAD pidfd of a thread other than a main thread is given its thread once every
//! thread of the tree exists (`after_threads`; threads are created after the fds are placed),
//! so it may be held by one process only.
//!
//! A pidfd of a zombie of the tree comes back: the zombie is recreated, and stays a zombie until
//! its parent reaps it (through the pidfd too). Refused by name: a pidfd of a process outside
//! the tree, of a process that was reaped (fdinfo "Pid: -1"), of one in another pid namespace
//! ("Pid: 0"), and a pidfd of a thread held by several processes.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};

use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{Files, OpenFile, Pidfd, open_file};
use crate::kinds::RestoreCtx;

pub struct Pidfds;

/// PIDFD_THREAD is O_EXCL; with O_NONBLOCK the only flags pidfd_open takes.
const PIDFD_FLAGS: u32 = (libc::O_NONBLOCK | libc::O_EXCL) as u32;

impl FdKind for Pidfds {
    type Record = Pidfd;
    const NAME: &'static str = "pidfd";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Pidfd> {
        match kind {
            open_file::Kind::Pidfd(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: Pidfd) -> open_file::Kind {
        open_file::Kind::Pidfd(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:[pidfd]" || src.link.starts_with("pidfd:")
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        target(src).map(drop)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<Pidfd>> {
        Ok(Dumped::alone(Pidfd { pid: target(src)? }))
    }

    /// The target must be a process of the tree, created at restore before every holder that
    /// inherits the description (see the module's comment).
    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        for file in files.iter() {
            let Some(open_file::Kind::Pidfd(p)) = &file.kind else { continue };
            let holders = tree.holders.get(&file.id).map(Vec::as_slice).unwrap_or_default();
            let Some(&(pid, fd)) = holders.first() else { continue };
            let processes: BTreeSet<i32> = holders.iter().map(|(pid, _)| *pid).collect();
            if let Some(tgid) = thread_group_of_another(p.pid) {
                // Threads are created once every fd is placed: the holder's fds get their pidfd
                // then, which a description shared by several processes would not survive.
                if !tree.pids.contains(&tgid) {
                    bail!(
                        "pid {pid} fd {fd}: a pidfd of thread {} of pid {tgid} ({}), a process outside the dumped tree, \
                         cannot be checkpointed by crust",
                        p.pid,
                        comm(tgid)
                    );
                }
                if processes.len() > 1 {
                    bail!(
                        "pid {pid} fd {fd}: a pidfd of thread {} (PIDFD_THREAD) shared by pids {processes:?} cannot be \
                         checkpointed by crust yet",
                        p.pid
                    );
                }
                continue;
            }
            if !tree.pids.contains(&p.pid) {
                bail!(
                    "pid {pid} fd {fd}: a pidfd of pid {} ({}), a process outside the dumped tree, cannot be \
                     checkpointed by crust",
                    p.pid,
                    comm(p.pid)
                );
            }
            if let Some(early) = inherited_before_target(p.pid, &processes, tree.pids) {
                bail!(
                    "pid {pid} fd {fd}: a pidfd of pid {} shared with pid {early}, which restore creates before pid {}, \
                     cannot be checkpointed by crust yet",
                    p.pid,
                    p.pid
                );
            }
        }
        Ok(())
    }

    fn can_open_now(record: &Pidfd) -> bool {
        std::path::Path::new(&format!("/proc/{}", record.pid)).exists()
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Pidfd, _together: &mut Together) -> Result<i32> {
        // A target not created yet: a pidfd of the creating process stands in until
        // `fds_in_place`.
        let flags = (file.flags & PIDFD_FLAGS) as u64;
        let fd = match ctx.remote.syscall("pidfd_open", libc::SYS_pidfd_open, &[record.pid as u64, flags]) {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(nix::errno::Errno::ESRCH) => {
                ctx.remote.syscall("pidfd_open(itself)", libc::SYS_pidfd_open, &[ctx.pid.as_raw() as u64, flags])?
            }
            Err(e) => return Err(e.into()),
        };
        ctx.to_temp_fd(fd)
    }

    /// Every process exists now: fds whose pidfd stood in for a target then missing get a
    /// pidfd of their target (one description per description of the image). A thread's
    /// waits for [`FdKind::after_threads`].
    fn fds_in_place(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        replace_stand_ins(ctx, fds, false)
    }

    /// Every thread exists now: the pidfds of threads.
    fn after_threads(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        replace_stand_ins(ctx, fds, true)
    }

    fn describe(record: &Pidfd) -> String {
        format!("pidfd of pid {}", record.pid)
    }
}

/// Gives every fd of the process whose pidfd stands in for a target that did not exist when
/// its description was opened a pidfd of that target, if it exists now (`last`: it must).
fn replace_stand_ins(ctx: &mut RestoreCtx, fds: &Files, last: bool) -> Result<()> {
    let mut done: Vec<(u32, i32)> = Vec::new();
    for fd in &fds.fds {
        let Some(file) = ctx.open_files.open_files.iter().find(|f| f.id == fd.open_file_id) else { continue };
        let Some(open_file::Kind::Pidfd(p)) = &file.kind else { continue };
        if fdinfo_pid(ctx.pid.as_raw(), fd.fd)? == p.pid {
            continue;
        }
        if !Pidfds::can_open_now(p) {
            if last {
                bail!("fd {}: the pidfd's process or thread {} does not exist once the tree is restored", fd.fd, p.pid);
            }
            continue;
        }
        let source = match done.iter().find(|(id, _)| *id == file.id) {
            Some((_, source)) => *source,
            None => {
                let opened = pidfd_open(ctx, p.pid, file.flags).with_context(|| format!("fd {}: pidfd of pid {}", fd.fd, p.pid))?;
                done.push((file.id, opened));
                opened
            }
        };
        let cloexec = if fd.close_on_exec { libc::O_CLOEXEC as u64 } else { 0 };
        ctx.remote.syscall("dup3(pidfd)", libc::SYS_dup3, &[source as u64, fd.fd as u64, cloexec])?;
    }
    for (_, fd) in done {
        ctx.close_in_process(fd)?;
    }
    Ok(())
}

/// The pid a pidfd refers to, or the refusal of a pidfd that refers to no process of this
/// namespace.
fn target(src: &FdSource) -> Result<i32> {
    let pid = src.fdinfo_field("Pid:").and_then(|p| p.parse::<i32>().ok());
    match pid {
        Some(pid) if pid > 0 => Ok(pid),
        Some(-1) => Err(src.refuse("a pidfd of a process that exited and was reaped")),
        Some(_) => Err(src.refuse("a pidfd of a process in another pid namespace")),
        None => Err(src.refuse("a pidfd whose fdinfo shows no Pid")),
    }
}

/// pidfd_open(pid, flags) in the process; returns the temporary fd.
fn pidfd_open(ctx: &mut RestoreCtx, pid: i32, flags: u32) -> Result<i32> {
    let fd = ctx.remote.syscall("pidfd_open", libc::SYS_pidfd_open, &[pid as u64, (flags & PIDFD_FLAGS) as u64])?;
    ctx.to_temp_fd(fd)
}

/// The "Pid:" of fd `fd` of `pid` (a pidfd).
fn fdinfo_pid(pid: i32, fd: i32) -> Result<i32> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|p| p.trim().parse().ok()).with_context(|| format!("{path} shows no Pid"))
}

/// The process of `tid` when it is a thread other than its process's main thread.
fn thread_group_of_another(tid: i32) -> Option<i32> {
    procfs::process::Process::new(tid).and_then(|p| p.status()).ok().map(|s| s.tgid).filter(|tgid| *tgid != tid)
}

/// The holder, if any, that inherits the description from its creator (the nearest common
/// ancestor of `holders`) before restore creates `target`: restore creates the tree depth
/// first, each process's children in pid order, and the creator opens the description before
/// the first child forked after the target exists.
fn inherited_before_target(target: i32, holders: &BTreeSet<i32>, tree: &BTreeSet<i32>) -> Option<i32> {
    let paths: Vec<(i32, Vec<i32>)> = holders.iter().map(|h| (*h, path_from_root(*h, tree))).collect();
    let (_, first) = paths.first()?;
    let common = (0..first.len()).take_while(|i| paths.iter().all(|(_, p)| p.get(*i) == first.get(*i))).count();
    let target_path = path_from_root(target, tree);
    paths.iter().find_map(|(holder, path)| {
        // The creator's child on the way to the holder: the fork that hands the fd down.
        let child = *path.get(common)?;
        (!created_before(&target_path, &path_from_root(child, tree))).then_some(*holder)
    })
}

/// Whether restore creates the process at `a` (a path from the root) before the one at `b`:
/// depth first, children in pid order.
fn created_before(a: &[i32], b: &[i32]) -> bool {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => a[i] < b[i],
        // One is an ancestor of (or is) the other.
        None => a.len() < b.len(),
    }
}

/// The chain of processes of the tree from its root down to `pid` (from /proc: the tree is
/// frozen).
fn path_from_root(pid: i32, tree: &BTreeSet<i32>) -> Vec<i32> {
    let mut chain = vec![pid];
    let mut p = pid;
    for _ in 0..tree.len() {
        match procfs::process::Process::new(p).and_then(|p| p.stat()) {
            Ok(stat) if tree.contains(&stat.ppid) => {
                chain.push(stat.ppid);
                p = stat.ppid;
            }
            _ => break,
        }
    }
    chain.reverse();
    chain
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_owned()).unwrap_or_else(|_| "gone".into())
}

#[cfg(test)]
mod tests {
    use super::created_before;

    #[test]
    fn creation_order_is_depth_first_children_by_pid() {
        assert!(created_before(&[1], &[1, 5]), "a parent before its child");
        assert!(!created_before(&[1, 5], &[1]));
        assert!(created_before(&[1, 5, 9], &[1, 7]), "a first child's subtree before the second child");
        assert!(!created_before(&[1, 7], &[1, 5, 9]));
        assert!(!created_before(&[1, 5], &[1, 5]), "not before itself");
    }
}
