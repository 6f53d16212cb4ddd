//! fanotify groups with their inode marks.
//!
//! Dump reads fdinfo: `fanotify flags:F event-flags:E`, then one line per mark; an inode mark
//! is `fanotify ino:I sdev:D mflags:M mask:K ignored_mask:G fhandle-bytes:B fhandle-type:T
//! f_handle:HEX` (numbers in hex), and its inode is found from the file handle as an inotify
//! watch's is (opening nothing the group could notice). Refused by name: groups of permission
//! events (FAN_CLASS_CONTENT, FAN_CLASS_PRE_CONTENT: a restore's own opens would wait for the
//! stopped listener's answer), mount and filesystem marks, events queued and not read yet, and
//! a group also held outside the tree.
//!
//! Restore creates the group with fanotify_init where the description is opened, and marks
//! the inodes again once the first holder has its fds in place (after every open of the tree,
//! so the restore's opens make no events in it): the mask with FAN_MARK_ADD (and
//! FAN_MARK_EVICTABLE if it was), then the ignore mask with FAN_MARK_IGNORE or the older
//! FAN_MARK_IGNORED_MASK as the mark had it (and FAN_MARK_IGNORED_SURV_MODIFY). The marks
//! fdinfo shows then are checked to be the recorded ones. Events the restore still caused
//! (opens of mapped files) are read away after every process's files.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::common::{FileHandle, description_held_outside, fdinfo_hex, set_status_flags};
use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{Fanotify, FanotifyMark, Files, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::credentials::{enter_fs_identity, leave_fs_identity};
use crate::sys::notify::bytes_queued;
use crate::sys::pidfd::{pidfd_getfd, pidfd_open};

pub struct Fanotifies;

/// FAN_CLASS_CONTENT | FAN_CLASS_PRE_CONTENT.
const FAN_PERMISSION_CLASSES: u32 = 0xc;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

impl FdKind for Fanotifies {
    type Record = Fanotify;
    const NAME: &'static str = "fanotify";

    fn record_of(kind: &open_file::Kind) -> Option<&Fanotify> {
        match kind {
            open_file::Kind::Fanotify(f) => Some(f),
            _ => None,
        }
    }

    fn into_kind(record: Fanotify) -> open_file::Kind {
        open_file::Kind::Fanotify(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:[fanotify]"
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        parse_group(src).map(drop)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<Fanotify>> {
        dump(src).map(Dumped::alone)
    }

    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        let inside: std::collections::BTreeSet<i32> = tree.holders.values().flatten().map(|(p, _)| *p).collect();
        for file in files.iter_mut() {
            let Some(open_file::Kind::Fanotify(record)) = &mut file.kind else { continue };
            let Some(&(pid, fd)) = tree.holders.get(&file.id).and_then(|h| h.first()) else { continue };
            record.marked_by = pid as u32;
            record.marked_by_fd = fd;
            if let Some((other, other_fd)) = description_held_outside(pid, fd, &inside)? {
                bail!(
                    "pid {pid} fd {fd}: this fanotify group is also held by pid {other} (fd {other_fd}), outside the dumped \
                     processes; crust cannot share a restored group with it"
                );
            }
        }
        Ok(())
    }

    fn precheck(file: &OpenFile, record: &Fanotify) -> Result<()> {
        for m in &record.marks {
            let meta = std::fs::symlink_metadata(&m.path)
                .with_context(|| format!("open file #{}: {} (a fanotify mark) is gone since the dump", file.id, m.path))?;
            if meta.dev() != m.dev || meta.ino() != m.inode {
                bail!("open file #{}: {} (a fanotify mark) is another file than at dump time", file.id, m.path);
            }
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Fanotify, _together: &mut Together) -> Result<i32> {
        // The flags as the group had them (FAN_NONBLOCK and FAN_CLOEXEC show in fdinfo too);
        // crust's temporary fd is close-on-exec whatever they say.
        let flags = record.flags;
        let fd = ctx
            .remote
            .syscall("fanotify_init", libc::SYS_fanotify_init, &[flags as u64, record.event_flags as u64])
            .with_context(|| format!("fanotify_init({flags:#x}, {:#o})", record.event_flags))?;
        let fd = ctx.to_temp_fd(fd)?;
        set_status_flags(ctx, fd, file.flags)?;
        Ok(fd)
    }

    /// Marks come once the holder's fds are in place, after every open of the tree.
    fn fds_in_place(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        mark_again(ctx, fds)
    }

    fn after_files(ctx: &mut RestoreCtx) -> Result<()> {
        drop_restore_events(ctx)
    }

    fn describe(_record: &Fanotify) -> String {
        "fanotify".into()
    }
}

/// The group's (flags, event flags), refusing permission classes and marks crust cannot
/// recreate, from fdinfo alone.
fn parse_group(src: &FdSource) -> Result<(u32, u32)> {
    let (pid, fd) = (src.pid, src.fd);
    let head = src.fdinfo.lines().find(|l| l.starts_with("fanotify flags:")).with_context(|| format!("pid {pid} fd {fd}: fanotify fdinfo without its flags"))?;
    let field = |key: &str| fdinfo_hex(head, key).with_context(|| format!("pid {pid} fd {fd}: fanotify fdinfo {head:?}"));
    let flags = field("flags")? as u32;
    let event_flags = field("event-flags")? as u32;
    if flags & FAN_PERMISSION_CLASSES != 0 {
        bail!(
            "pid {pid} fd {fd}: a fanotify group of permission events (flags {flags:#x}): restoring the tree's files would \
             wait for its answers; crust checkpoints only notification groups (FAN_CLASS_NOTIF)"
        );
    }
    for line in src.fdinfo.lines().filter(|l| l.starts_with("fanotify ") && !l.starts_with("fanotify flags:")) {
        if line.starts_with("fanotify mnt_id:") {
            bail!("pid {pid} fd {fd}: a fanotify mount mark ({line}): crust restores only inode marks");
        }
        if !line.starts_with("fanotify ino:") {
            bail!("pid {pid} fd {fd}: a fanotify filesystem mark ({line}): crust restores only inode marks");
        }
    }
    Ok((flags, event_flags))
}

fn dump(src: &FdSource) -> Result<Fanotify> {
    let (pid, fd) = (src.pid, src.fd);
    let (flags, event_flags) = parse_group(src)?;
    let mut marks = Vec::new();
    for line in src.fdinfo.lines().filter(|l| l.starts_with("fanotify ino:")) {
        let mark = dump_mark(line, pid).with_context(|| format!("pid {pid} fd {fd}: fanotify mark {line:?}"))?;
        marks.push(mark);
    }
    // After resolving: had anything made an event, it would show here.
    let queued = bytes_queued(src.copy.as_fd())?;
    if queued > 0 {
        bail!("pid {pid} fd {fd}: fanotify has {queued} bytes of events queued, not read yet; crust cannot put events back");
    }
    Ok(Fanotify { flags, event_flags, marks, ..Default::default() })
}

fn dump_mark(line: &str, pid: i32) -> Result<FanotifyMark> {
    let handle = FileHandle::parse(line)?;
    Ok(FanotifyMark {
        path: handle.path(pid)?,
        dev: handle.dev(),
        inode: handle.inode,
        mflags: fdinfo_hex(line, "mflags")? as u32,
        mask: fdinfo_hex(line, "mask")?,
        ignored_mask: fdinfo_hex(line, "ignored_mask")?,
    })
}

/// Marks the inodes of the groups this process marks again, once its fds are in place, with
/// its filesystem credentials.
fn mark_again(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
    let pid = ctx.pid.as_raw() as u32;
    let open_files = ctx.open_files;
    for file in &open_files.open_files {
        let Some(open_file::Kind::Fanotify(record)) = &file.kind else { continue };
        if record.marked_by != pid || record.marks.is_empty() {
            continue;
        }
        if !fds.fds.iter().any(|f| f.fd == record.marked_by_fd && f.open_file_id == file.id) {
            bail!("fanotify #{}: fd {} of pid {pid} is not that group", file.id, record.marked_by_fd);
        }
        enter_fs_identity(ctx)?;
        let marked = record.marks.iter().try_for_each(|m| add_mark(ctx, record.marked_by_fd, m));
        leave_fs_identity(ctx)?;
        marked.with_context(|| format!("marks of fanotify fd {}", record.marked_by_fd))?;
        check_marks(pid as i32, record)?;
    }
    Ok(())
}

fn add_mark(ctx: &mut RestoreCtx, fd: i32, m: &FanotifyMark) -> Result<()> {
    let evictable = m.mflags & FAN_MARK_EVICTABLE;
    let survives = m.mflags & FAN_MARK_IGNORED_SURV_MODIFY;
    let ignore_style = if m.mflags & FAN_MARK_IGNORE != 0 { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
    let mut calls = Vec::new();
    if m.mask != 0 {
        calls.push((FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | evictable, m.mask));
    }
    if m.ignored_mask != 0 || survives != 0 {
        calls.push((FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | evictable | ignore_style | survives, m.ignored_mask));
    }
    for (flags, mask) in calls {
        let addr = ctx.remote.put_path(0, &m.path)?;
        ctx.remote
            .syscall(
                &format!("fanotify_mark({}, {flags:#x}, {mask:#x})", m.path),
                libc::SYS_fanotify_mark,
                &[fd as u64, flags as u64, mask, libc::AT_FDCWD as u64, addr],
            )
            .with_context(|| format!("marking {} again", m.path))?;
    }
    Ok(())
}

/// The marks the restored group shows are the recorded ones (same inodes, flags and masks).
fn check_marks(pid: i32, record: &Fanotify) -> Result<()> {
    let fd = record.marked_by_fd;
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let mut now = Vec::new();
    for line in fdinfo.lines().filter(|l| l.starts_with("fanotify ino:")) {
        let h = FileHandle::parse(line)?;
        now.push((h.dev(), h.inode, fdinfo_hex(line, "mflags")? as u32, fdinfo_hex(line, "mask")?, fdinfo_hex(line, "ignored_mask")?));
    }
    let mut recorded: Vec<_> = record.marks.iter().map(|m| (m.dev, m.inode, m.mflags, m.mask, m.ignored_mask)).collect();
    now.sort();
    recorded.sort();
    if now != recorded {
        bail!("pid {pid} fd {fd}: the restored fanotify marks are {now:x?}, the image has {recorded:x?}");
    }
    Ok(())
}

/// Reads away what restoring queued in the groups whose marks are in place (each was empty at
/// dump time). The fd a notification event carries is opened in the reader, crust: closed.
fn drop_restore_events(ctx: &mut RestoreCtx) -> Result<()> {
    for file in &ctx.open_files.open_files {
        let Some(open_file::Kind::Fanotify(record)) = &file.kind else { continue };
        if record.marks.is_empty() {
            continue;
        }
        let (pid, fd) = (record.marked_by as i32, record.marked_by_fd);
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|l| l.to_string_lossy().into_owned());
        if link.ok().as_deref() != Some("anon_inode:[fanotify]") {
            continue;
        }
        let ours = pidfd_getfd(&pidfd_open(pid)?, pid, fd)?;
        drain(&ours).with_context(|| format!("emptying fanotify fd {fd} of pid {pid}"))?;
    }
    Ok(())
}

fn drain(ours: &OwnedFd) -> Result<()> {
    // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16,
    // mask u64, fd i32, pid i32.
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..1024 {
        let n = bytes_queued(ours.as_fd())?;
        if n == 0 {
            return Ok(());
        }
        let want = n.min(buf.len());
        let got = nix::unistd::read(ours, &mut buf[..want]).context("reading events")?;
        let mut at = 0;
        while at + 24 <= got {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let event_fd = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
            if event_fd >= 0 && event_fd != ours.as_raw_fd() {
                let _ = nix::unistd::close(event_fd);
            }
            if len < 24 {
                break;
            }
            at += len;
        }
    }
    bail!("events keep coming")
}
