//! Files under /proc (proc file system): opened again by path, at the description's offset.
//!
//! A file of a process of the tree (`/proc/PID/status`, what `/proc/self/stat` resolves to)
//! names it by its pid, which restore gives back: the same path names the restored process.
//! It is opened once every process of the tree exists (the holder may be the parent of PID,
//! which restore creates after the holder opens its descriptions): the creating process first
//! holds a stand-in (/dev/null) at the working fd, and replaces it with the real file in
//! `finish_descriptions`. That is only right when no other process inherited the stand-in, so
//! such a file must be held by one process only; a file of a thread other than the main one
//! (`/proc/PID/task/TID/...`), whose thread restore creates later still, is refused. Other
//! /proc files (`/proc/meminfo`, `/proc/sys/...`) are opened at once. The proc file system
//! gives every open its own inodes, so no identity check is made: the path and the pid are
//! the identity.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};

use super::common::reopen_flags;
use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{OpenFile, ProcFile, open_file};
use crate::kinds::RestoreCtx;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;

pub struct ProcFiles;

/// The pid (and thread id, for /proc/PID/task/TID/...) a /proc path names, if any.
fn pid_of(path: &str) -> (i32, i32) {
    let mut parts = path.strip_prefix("/proc/").unwrap_or("").split('/');
    let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let tid = match (parts.next(), parts.next()) {
        (Some("task"), Some(t)) => t.parse().unwrap_or(0),
        _ => 0,
    };
    (pid, tid)
}

/// Restore, when the image is loaded: the path must be a canonical name under /proc (no `.`,
/// `..` or empty component: a /proc path can otherwise lead anywhere, such as a FIFO that
/// would hang the restore or a device that acts when opened), and `pid` the one it names.
/// Returns the field at fault.
pub fn check_structure(record: &ProcFile) -> std::result::Result<(), (&'static str, String)> {
    let path = &record.path;
    if !path.starts_with("/proc/") || !super::unix_socket::is_canonical_path(path) {
        return Err(("path", format!("{path:?} is not a path under /proc without '.', '..' or empty components")));
    }
    let (pid, _) = pid_of(path);
    if record.pid != 0 && record.pid != pid {
        return Err(("pid", format!("pid {} but the path {path} names pid {pid}", record.pid)));
    }
    Ok(())
}

impl FdKind for ProcFiles {
    type Record = ProcFile;
    const NAME: &'static str = "/proc file";
    // Opened by its one holder once every process exists.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&ProcFile> {
        match kind {
            open_file::Kind::ProcFile(p) => Some(p),
            _ => None,
        }
    }

    fn into_kind(record: ProcFile) -> open_file::Kind {
        open_file::Kind::ProcFile(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFREG
            && src.link.starts_with("/proc/")
            && nix::sys::statfs::fstatfs(src.copy).is_ok_and(|s| s.filesystem_type().0 == PROC_SUPER_MAGIC)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<ProcFile>> {
        let (pid, tid) = pid_of(src.link);
        if tid != 0 && tid != pid {
            return Err(src.refuse("a /proc file of a thread other than the main one"));
        }
        Ok(Dumped::alone(ProcFile { path: src.link.to_owned(), pid }))
    }

    /// The process a file names is in the tree, and one process holds the file.
    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        for f in files.iter() {
            let Some(open_file::Kind::ProcFile(p)) = &f.kind else { continue };
            let holders = tree.holders.get(&f.id).map(Vec::as_slice).unwrap_or_default();
            let Some(&(pid, fd)) = holders.first() else { continue };
            if p.pid != 0 && !tree.pids.contains(&p.pid) {
                bail!("pid {pid} fd {fd}: {} is a file of pid {}, outside the dumped tree; crust cannot open it again", p.path, p.pid);
            }
            let processes: BTreeSet<i32> = holders.iter().map(|(p, _)| *p).collect();
            if p.pid != 0 && processes.len() > 1 {
                bail!(
                    "pid {pid} fd {fd}: {} is held by several processes ({processes:?}); crust opens a /proc file of \
                     the tree in its one holder",
                    p.path
                );
            }
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &ProcFile, _together: &mut Together) -> Result<i32> {
        if record.pid != 0 {
            // A stand-in until every process exists (see the module documentation).
            let fd = remote_open(ctx, "/dev/null", libc::O_RDONLY | libc::O_CLOEXEC)?;
            return ctx.to_temp_fd(fd as u64);
        }
        let fd = open_at_position(ctx, file, record)?;
        ctx.to_temp_fd(fd as u64)
    }

    fn finish_descriptions(ctx: &mut RestoreCtx, files: &[(&OpenFile, &ProcFile)]) -> Result<()> {
        for (file, record) in files.iter().filter(|(_, r)| r.pid != 0) {
            crate::kinds::credentials::enter_fs_identity(ctx)?;
            let opened = open_at_position(ctx, file, record);
            crate::kinds::credentials::leave_fs_identity(ctx)?;
            let fd = opened?;
            let work = (ctx.work_fd_floor + file.id as i32) as u64;
            ctx.remote.syscall("dup3", libc::SYS_dup3, &[fd as u64, work, libc::O_CLOEXEC as u64])?;
            ctx.remote.syscall("close", libc::SYS_close, &[fd as u64])?;
        }
        Ok(())
    }

    fn describe(record: &ProcFile) -> String {
        record.path.clone()
    }
}

/// Opens the file in the process and moves it to the description's offset; returns the fd.
/// (O_NOFOLLOW would stay in the description's flags: instead the opened file must be the
/// very path, which a symlink would not give.)
///
/// Opened with the image's filesystem ids (the caller's: `open` runs in them, and
/// `finish_descriptions` enters them) and no symlink on the way (a canonical /proc path
/// never goes through one; /proc/self and /proc/thread-self are symlinks, and the image names
/// the pid itself): restore never opens, as root, a file the process could not open.
fn open_at_position(ctx: &mut RestoreCtx, file: &OpenFile, record: &ProcFile) -> Result<i32> {
    if let Err((field, why)) = check_structure(record) {
        bail!("{field}: {why}");
    }
    let fd = ctx
        .open_in_process_no_symlinks(&record.path, reopen_flags(file))
        .with_context(|| format!("opening {} again (a symlink on its path is refused)", record.path))?;
    let opened = std::fs::read_link(format!("/proc/{}/fd/{fd}", ctx.pid)).with_context(|| format!("reading the link of fd {fd}"))?;
    if opened.to_string_lossy() != record.path {
        ctx.remote.syscall("close", libc::SYS_close, &[fd as u64])?;
        bail!("opening {} gave {} instead", record.path, opened.display());
    }
    if file.position != 0 {
        ctx.remote
            .syscall("lseek", libc::SYS_lseek, &[fd as u64, file.position, libc::SEEK_SET as u64])
            .with_context(|| format!("moving {} to offset {}", record.path, file.position))?;
    }
    Ok(fd)
}

fn remote_open(ctx: &mut RestoreCtx, path: &str, flags: i32) -> Result<i32> {
    let at = ctx.remote.put_path(0, path)?;
    let fd = ctx.remote.syscall("openat", libc::SYS_openat, &[libc::AT_FDCWD as u64, at, flags as u64, 0])?;
    Ok(fd as i32)
}
