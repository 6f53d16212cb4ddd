//! fanotify groups with their marks on inodes, mounts and filesystems.
//!
//! Dump reads fdinfo: `fanotify flags:F event-flags:E`, then one line per mark (numbers in
//! hex): `fanotify ino:I sdev:D mflags:M mask:K ignored_mask:G fhandle-bytes:B fhandle-type:T
//! f_handle:HEX` for an inode, whose path is found from the file handle as an inotify watch's
//! is (opening nothing the group could notice); `fanotify mnt_id:N mflags:...` for a mount,
//! found by its id in mountinfo; `fanotify sdev:D mflags:...` for a filesystem, marked again
//! through one of its mounts. Refused by name: groups of permission events
//! (FAN_CLASS_CONTENT, FAN_CLASS_PRE_CONTENT: a restore's own opens would wait for the stopped
//! listener's answer), events queued and not read yet, and a group also held outside the tree.
//!
//! Restore creates the group with fanotify_init where the description is opened, and marks
//! again once the first holder has its fds in place (after every open of the tree, so the
//! restore's opens make no events in it): the mask with FAN_MARK_ADD (and FAN_MARK_EVICTABLE
//! if it was), then the ignore mask with FAN_MARK_IGNORE or the older FAN_MARK_IGNORED_MASK as
//! the mark had it (and FAN_MARK_IGNORED_SURV_MODIFY). The marks fdinfo shows then are checked
//! to be the recorded ones. Events the restore still caused (opens of mapped files; on a
//! mount or filesystem mark, anything on it meanwhile) are read away after every process's
//! files.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::common::{FileHandle, Mount, description_held_outside, fdinfo_hex, mounts, set_status_flags};
use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::fanotify_mark::Target;
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
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

impl FdKind for Fanotifies {
    type Record = Fanotify;
    const NAME: &'static str = "fanotify";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

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
        record.marks.iter().try_for_each(precheck_mark).with_context(|| format!("open file #{} (fanotify)", file.id))
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

/// What each mark is on is still there: the inode at its path, the mount at its mount point,
/// the filesystem at the path recorded.
fn precheck_mark(m: &FanotifyMark) -> Result<()> {
    match m.target() {
        Target::Inode => {
            let meta = std::fs::symlink_metadata(&m.path).with_context(|| format!("{} (a mark) is gone since the dump", m.path))?;
            if meta.dev() != m.dev || meta.ino() != m.inode {
                bail!("{} (a mark) is another file than at dump time", m.path);
            }
        }
        Target::Mount => {
            if !mounts()?.iter().any(|mount| mount.id == m.mount_id && mount.mount_point == m.path) {
                bail!("mount {} at {} (a mount mark) is not mounted there any more", m.mount_id, m.path);
            }
        }
        Target::Filesystem => {
            let meta = std::fs::metadata(&m.path).with_context(|| format!("{} (a filesystem mark) is gone", m.path))?;
            if meta.dev() != m.dev {
                bail!("{} (a filesystem mark) is on another filesystem than at dump time", m.path);
            }
        }
    }
    Ok(())
}

/// The group's (flags, event flags), refusing permission classes, from fdinfo alone.
fn parse_group(src: &FdSource) -> Result<(u32, u32)> {
    let (pid, fd) = (src.pid, src.fd);
    let head = src
        .fdinfo
        .lines()
        .find(|l| l.starts_with("fanotify flags:"))
        .with_context(|| format!("pid {pid} fd {fd}: fanotify fdinfo without its flags"))?;
    let field = |key: &str| fdinfo_hex(head, key).with_context(|| format!("pid {pid} fd {fd}: fanotify fdinfo {head:?}"));
    let flags = field("flags")? as u32;
    let event_flags = field("event-flags")? as u32;
    if flags & FAN_PERMISSION_CLASSES != 0 {
        bail!(
            "pid {pid} fd {fd}: a fanotify group of permission events (flags {flags:#x}): restoring the tree's files would \
             wait for its answers; crust checkpoints only notification groups (FAN_CLASS_NOTIF)"
        );
    }
    Ok((flags, event_flags))
}

fn dump(src: &FdSource) -> Result<Fanotify> {
    let (pid, fd) = (src.pid, src.fd);
    let (flags, event_flags) = parse_group(src)?;
    let mut marks = Vec::new();
    for line in mark_lines(src.fdinfo) {
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

/// The fdinfo lines of a group's marks.
fn mark_lines(fdinfo: &str) -> impl Iterator<Item = &str> {
    fdinfo.lines().filter(|l| l.starts_with("fanotify ") && !l.starts_with("fanotify flags:"))
}

fn dump_mark(line: &str, pid: i32) -> Result<FanotifyMark> {
    let mut mark = FanotifyMark {
        mflags: fdinfo_hex(line, "mflags")? as u32,
        mask: fdinfo_hex(line, "mask")?,
        ignored_mask: fdinfo_hex(line, "ignored_mask")?,
        ..Default::default()
    };
    if line.starts_with("fanotify ino:") {
        let handle = FileHandle::parse(line)?;
        (mark.path, mark.dev, mark.inode) = (handle.path(pid)?, handle.dev(), handle.inode);
    } else if line.starts_with("fanotify mnt_id:") {
        let id = fdinfo_hex(line, "mnt_id")?;
        let mount = mounts()?.into_iter().find(|m| m.id == id);
        let mount = mount.with_context(|| format!("mount {id} is not one crust sees (another mount namespace?)"))?;
        (mark.target, mark.mount_id, mark.path) = (Target::Mount as i32, id, mount.mount_point);
    } else {
        let sdev = fdinfo_hex(line, "sdev")?;
        let mut of_fs: Vec<Mount> = mounts()?.into_iter().filter(|m| m.sdev == sdev).collect();
        // A mount of the whole filesystem, if there is one.
        of_fs.sort_by_key(|m| m.root != "/");
        let mount = of_fs.into_iter().next().with_context(|| format!("no mount of device {sdev:#x} is visible to crust"))?;
        (mark.target, mark.dev, mark.path) = (Target::Filesystem as i32, user_dev(sdev), mount.mount_point);
    }
    Ok(mark)
}

/// st_dev as user space sees it, from the kernel's dev_t (major << 20 | minor).
fn user_dev(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32)
}

/// What identifies a mark and what it asks, the same from the record and from fdinfo:
/// (target, object, mark flags, mask, ignore mask); the object is (device, inode) of an inode,
/// (mount id, 0) of a mount, (device, 0) of a filesystem.
type MarkKey = (i32, (u64, u64), u32, u64, u64);

fn key_of_line(line: &str) -> Result<MarkKey> {
    let (target, object) = if line.starts_with("fanotify ino:") {
        let h = FileHandle::parse(line)?;
        (Target::Inode, (h.dev(), h.inode))
    } else if line.starts_with("fanotify mnt_id:") {
        (Target::Mount, (fdinfo_hex(line, "mnt_id")?, 0))
    } else {
        (Target::Filesystem, (user_dev(fdinfo_hex(line, "sdev")?), 0))
    };
    Ok((target as i32, object, fdinfo_hex(line, "mflags")? as u32, fdinfo_hex(line, "mask")?, fdinfo_hex(line, "ignored_mask")?))
}

fn key_of_mark(m: &FanotifyMark) -> MarkKey {
    let object = match m.target() {
        Target::Inode => (m.dev, m.inode),
        Target::Mount => (m.mount_id, 0),
        Target::Filesystem => (m.dev, 0),
    };
    (m.target, object, m.mflags, m.mask, m.ignored_mask)
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
    let object = match m.target() {
        Target::Inode => FAN_MARK_DONT_FOLLOW,
        Target::Mount => FAN_MARK_MOUNT,
        Target::Filesystem => FAN_MARK_FILESYSTEM,
    };
    // The object marked, and FAN_MARK_EVICTABLE (given when the mark is created).
    let evictable = m.mflags & FAN_MARK_EVICTABLE | object;
    let survives = m.mflags & FAN_MARK_IGNORED_SURV_MODIFY;
    let ignore_style = if m.mflags & FAN_MARK_IGNORE != 0 { FAN_MARK_IGNORE } else { FAN_MARK_IGNORED_MASK };
    let mut calls = Vec::new();
    if m.mask != 0 {
        calls.push((FAN_MARK_ADD | evictable, m.mask));
    }
    if m.ignored_mask != 0 || survives != 0 {
        calls.push((FAN_MARK_ADD | evictable | ignore_style | survives, m.ignored_mask));
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

/// The marks the restored group shows are the recorded ones (same objects, flags and masks).
fn check_marks(pid: i32, record: &Fanotify) -> Result<()> {
    let fd = record.marked_by_fd;
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let mut now = mark_lines(&fdinfo).map(key_of_line).collect::<Result<Vec<_>>>()?;
    let mut recorded: Vec<_> = record.marks.iter().map(key_of_mark).collect();
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
