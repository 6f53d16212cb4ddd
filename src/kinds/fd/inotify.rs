//! inotify descriptions: their watches, with the same watch descriptor numbers.
//!
//! Dump reads the watches from fdinfo (`inotify wd:N ino:I sdev:D mask:M ignored_mask:0
//! fhandle-bytes:B fhandle-type:T f_handle:HEX`, numbers in hex) and finds a path to each watched
//! inode from its file handle: open_by_handle_at with O_PATH relative to a descriptor on the
//! inode's filesystem (a copy of one of the process's fds there, crust's working directory, or
//! a mount point found from sdev in /proc/self/mountinfo), then the /proc/self/fd link, checked
//! with stat to be that device and inode. O_PATH opens break no lease and make no inotify
//! event. Events already queued cannot be put back: an inotify with a non-empty queue
//! (FIONREAD on crust's copy) is refused.
//!
//! Restore creates the inotify with inotify_init1 where the description is opened. Its watches
//! are added later, once the process that holds it (the first holder at dump) has its fds in
//! place, so that the opens that recreate the tree's files queue no events in it; and after
//! every process's files, what restoring still queued (opens of mapped files) is read away.
//! The watches are added in increasing wd order, each by path from the process with its
//! filesystem credentials (IN_DONT_FOLLOW: the path names the inode itself; IN_MASK_CREATE:
//! never merges into another watch). The kernel hands out wds cyclically, upwards from the last one it gave: before each
//! watch crust advances the counter to the recorded number by adding and removing a watch on a
//! directory of its own through its own copy of the inotify, then drains the IN_IGNORED events
//! those removals queued. The kernel's counter after restore is the highest wd + 1; before the
//! dump it may have been higher (if watches with higher numbers had been removed): a watch added
//! after restore may get a number the process used before for a watch it removed.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::common::{FileHandle, description_held_outside, fdinfo_hex};
use super::{Dumped, FdKind, FdSource, Holders, KindState, Together, WholeTree};
use crate::image::proto::{Files, Inotify, InotifyWatch, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::credentials::{enter_fs_identity, leave_fs_identity};
use crate::sys::notify::{bytes_queued, inotify_add_watch, inotify_rm_watch};
use crate::sys::pidfd::pidfd_getfd;

pub struct Inotifies;

impl FdKind for Inotifies {
    type Record = Inotify;
    const NAME: &'static str = "inotify";
    // Restoring it needs a holder's fd table.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Inotify> {
        match kind {
            open_file::Kind::Inotify(i) => Some(i),
            _ => None,
        }
    }

    fn into_kind(record: Inotify) -> open_file::Kind {
        open_file::Kind::Inotify(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:inotify"
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<Inotify>> {
        dump(src).map(Dumped::alone)
    }

    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        finish(files, tree.holders)
    }

    fn precheck(file: &OpenFile, record: &Inotify) -> Result<()> {
        precheck(record).map_err(|e| e.context(format!("open file #{}", file.id)))
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, _record: &Inotify, _together: &mut Together) -> Result<i32> {
        open(ctx, file)
    }

    /// Watches come once the holder's fds are in place, after every open of the tree, and
    /// before epoll registrations (which may write into watched pipes for a moment).
    fn fds_in_place(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        add_watches(ctx, fds)
    }

    fn after_files(ctx: &mut RestoreCtx) -> Result<()> {
        drop_restore_events(ctx)
    }

    fn describe(_record: &Inotify) -> String {
        "inotify".into()
    }
}

/// Watch numbers above this would take too long to reach at restore (two system calls each).
pub const MAX_WD: i32 = 1 << 20;
const IN_DONT_FOLLOW: u32 = 0x0200_0000;
const IN_MASK_CREATE: u32 = 0x1000_0000;
const IN_ATTRIB: u32 = 0x4;

fn dump(src: &FdSource) -> Result<Inotify> {
    let (pid, fd) = (src.pid, src.fd);
    let mut parsed = Vec::new();
    for line in src.fdinfo.lines().filter(|l| l.starts_with("inotify ")) {
        let w = Watch::parse(line).with_context(|| format!("pid {pid} fd {fd}: inotify fdinfo line {line:?}"))?;
        if w.wd > MAX_WD {
            bail!("pid {pid} fd {fd}: inotify watch descriptor {} is too high for crust to recreate (limit {MAX_WD})", w.wd);
        }
        parsed.push(w);
    }
    let mut watches = Vec::new();
    for w in &parsed {
        let path = w.handle.path(pid).map_err(|e| anyhow::anyhow!("pid {pid} fd {fd}: inotify watch {}: {e:#}", w.wd))?;
        watches.push(InotifyWatch { wd: w.wd, mask: w.mask, path, dev: w.handle.dev(), inode: w.handle.inode });
    }
    // After resolving: had anything made an event, it would show here.
    let queued = bytes_queued(src.copy.as_fd())?;
    if queued > 0 {
        bail!(
            "pid {pid} fd {fd}: inotify has {queued} bytes of events queued, not read yet; crust cannot put events back \
             into an inotify queue"
        );
    }
    watches.sort_by_key(|w| w.wd);
    Ok(Inotify { watches, ..Default::default() })
}

struct Watch {
    wd: i32,
    mask: u32,
    handle: FileHandle,
}

impl Watch {
    fn parse(line: &str) -> Result<Watch> {
        Ok(Watch { wd: fdinfo_hex(line, "wd")? as i32, mask: fdinfo_hex(line, "mask")? as u32, handle: FileHandle::parse(line)? })
    }
}

/// Chooses the process that adds the watches at restore (the first holder), and refuses an
/// inotify also held by a process outside the tree: that process would go on reading events
/// from the old one, which the restored tree could not share.
fn finish(files: &mut [OpenFile], holders: &Holders) -> Result<()> {
    let inside: std::collections::BTreeSet<i32> = holders.values().flatten().map(|(p, _)| *p).collect();
    for file in files.iter_mut() {
        let Some(open_file::Kind::Inotify(record)) = &mut file.kind else { continue };
        let Some(&(pid, fd)) = holders.get(&file.id).and_then(|h| h.first()) else { continue };
        record.watched_by = pid as u32;
        record.watched_by_fd = fd;
        if let Some((other, other_fd)) = description_held_outside(pid, fd, &inside)? {
            bail!(
                "pid {pid} fd {fd}: this inotify is also held by pid {other} (fd {other_fd}), outside the dumped \
                 processes; crust cannot share a restored inotify with it"
            );
        }
    }
    Ok(())
}

/// What restore checks before creating any process: each watched path still names the inode.
fn precheck(record: &Inotify) -> Result<()> {
    for w in &record.watches {
        let meta =
            std::fs::symlink_metadata(&w.path).with_context(|| format!("{} (inotify watch {}) is gone since the dump", w.path, w.wd))?;
        if meta.dev() != w.dev || meta.ino() != w.inode {
            bail!("{} (inotify watch {}) is another file than at dump time", w.path, w.wd);
        }
    }
    Ok(())
}

/// Creates an inotify without watches; [`add_watches`] adds them once every file of the tree
/// was opened.
fn open(ctx: &mut RestoreCtx, file: &OpenFile) -> Result<i32> {
    let fd = ctx.remote.syscall("inotify_init1", libc::SYS_inotify_init1, &[libc::IN_CLOEXEC as u64])?;
    let fd = ctx.to_temp_fd(fd)?;
    let status = file.flags as i32 & !libc::O_ACCMODE;
    ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[fd as u64, libc::F_SETFL as u64, status as u64])?;
    Ok(fd)
}

/// Adds the watches of the inotifies this process adds them for, once its fds are in place:
/// every description of the tree was opened by then (no open queues an event), only memory
/// restores of processes after this one still open files (mapped ones).
fn add_watches(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
    let pid = ctx.pid.as_raw() as u32;
    let open_files = ctx.open_files;
    for file in &open_files.open_files {
        let Some(open_file::Kind::Inotify(record)) = &file.kind else { continue };
        if record.watched_by != pid || record.watches.is_empty() {
            continue;
        }
        if !fds.fds.iter().any(|f| f.fd == record.watched_by_fd && f.open_file_id == file.id) {
            bail!("inotify #{}: fd {} of pid {pid} is not that inotify", file.id, record.watched_by_fd);
        }
        enter_fs_identity(ctx)?;
        let added = add_watches_to(ctx, record.watched_by_fd, file.id, record);
        leave_fs_identity(ctx)?;
        added.with_context(|| format!("watches of inotify fd {}", record.watched_by_fd))?;
    }
    Ok(())
}

fn add_watches_to(ctx: &mut RestoreCtx, fd: i32, id: u32, record: &Inotify) -> Result<()> {
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    let spacer = Spacer::new(ctx.pid.as_raw(), id)?;
    let mut watches: Vec<&InotifyWatch> = record.watches.iter().collect();
    watches.sort_by_key(|w| w.wd);
    let mut next = 1; // the kernel's next wd for a new inotify
    for w in watches {
        if w.wd < next {
            bail!("inotify watch descriptors out of order or repeated at {}", w.wd);
        }
        while next < w.wd {
            let got = inotify_add_watch(ours.as_fd(), &spacer.path, IN_ATTRIB | IN_MASK_CREATE)
                .context("advancing the watch descriptor counter")?;
            inotify_rm_watch(ours.as_fd(), got)?;
            next = got + 1;
            if next % 1024 == 0 {
                drain(&ours)?;
            }
        }
        let addr = ctx.remote.put_path(0, &w.path)?;
        let got = ctx
            .remote
            .syscall(
                &format!("inotify_add_watch({})", w.path),
                libc::SYS_inotify_add_watch,
                &[fd as u64, addr, (w.mask | IN_DONT_FOLLOW | IN_MASK_CREATE) as u64],
            )
            .with_context(|| format!("watching {} again (wd {})", w.path, w.wd))? as i32;
        if got != w.wd {
            bail!("watching {} again gave watch descriptor {got}, the image has {}", w.path, w.wd);
        }
        next = got + 1;
    }
    drain(&ours)
}

/// Reads away what restoring queued in the inotifies whose watches are in place (the spacer
/// watches' IN_IGNORED, opens of mapped files by memory restores, bytes crust writes into
/// watched FIFOs): each was empty at dump time. Run after every process's files, so the last
/// run comes after the last file any restore step opens. Events other processes cause in the
/// few milliseconds between a watch's return and this are dropped with them.
fn drop_restore_events(ctx: &mut RestoreCtx) -> Result<()> {
    for file in &ctx.open_files.open_files {
        let Some(open_file::Kind::Inotify(record)) = &file.kind else { continue };
        if record.watches.is_empty() {
            continue;
        }
        let (pid, fd) = (record.watched_by as i32, record.watched_by_fd);
        // Only once that process has its fds in place (its link shows the inotify).
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|l| l.to_string_lossy().into_owned());
        if link.ok().as_deref() != Some("anon_inode:inotify") {
            continue;
        }
        let ours = pidfd_getfd(&crate::sys::pidfd::pidfd_open(pid)?, pid, fd)?;
        drain(&ours).with_context(|| format!("emptying inotify fd {fd} of pid {pid}"))?;
    }
    Ok(())
}

/// Reads away the IN_IGNORED events that removing crust's spacer watches queued.
fn drain(ours: &OwnedFd) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = bytes_queued(ours.as_fd())?;
        if n == 0 {
            return Ok(());
        }
        let want = n.min(buf.len());
        nix::unistd::read(ours, &mut buf[..want]).context("reading crust's spacer events")?;
    }
}

/// A directory of crust's own, watched and unwatched to move an inotify's wd counter.
struct Spacer {
    dir: std::path::PathBuf,
    path: CString,
}

impl Spacer {
    fn new(pid: i32, id: u32) -> Result<Spacer> {
        let dir = std::env::temp_dir().join(format!("crust-inotify-{}-{pid}-{id}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = CString::new(dir.as_os_str().as_encoded_bytes())?;
        Ok(Spacer { dir, path })
    }
}

impl Drop for Spacer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
