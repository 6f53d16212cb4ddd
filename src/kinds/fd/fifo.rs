//! Named FIFOs: opened again by path (the FIFO must still exist, the same inode), with the bytes
//! in their buffer (copied with tee(2) from a description that can read, so the process keeps
//! them) and their buffer size.
//!
//! Every description of one FIFO inode in the tree is one group (`created_with` = `fifo_id`, a
//! tagged hash of device and inode), so the nearest common ancestor of all holders opens them
//! all, in an order that never blocks and that gives readers the same hang-up behaviour:
//!
//! - with a description that can write in the group: an anchor opened O_RDWR first (a reader
//!   and a writer, so no open blocks), the buffer size and bytes put in through it, then each
//!   description with its own flags, then the anchor is closed;
//! - readers only: the readers that reported POLLHUP at dump time (a writer came and went after
//!   they were opened) first, then a writer opened and closed again (which puts the bytes in),
//!   then the readers that had seen no writer since they were opened.
//!
//! A FIFO is a rendezvous by path: any process may hold it. Dump scans the fds of every process
//! (/proc/*/fd, stat of each entry, which opens nothing) for the FIFO's inode and refuses one held
//! by a process outside the tree: that process would keep the old pipe and its buffer, which
//! the restored tree could not share. Descriptions held by nobody's fd table (in flight in a
//! UNIX socket message, an io_uring fixed file) are not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result, bail};

use super::common::{fill_pipe, outside_holders, peek_buffer};
use super::{Dumped, FdKind, FdSource, Holders, KindState, Together, WholeTree};
use crate::image::proto::{Fifo, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::file_check::file_identity;
use crate::sys::notify::{bytes_queued, poll_now};
use crate::sys::pidfd::{pidfd_getfd, pidfd_open};

pub struct Fifos;

impl FdKind for Fifos {
    type Record = Fifo;
    const NAME: &'static str = "FIFO";
    // Restoring it needs a holder's fd table.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Fifo> {
        match kind {
            open_file::Kind::Fifo(f) => Some(f),
            _ => None,
        }
    }

    fn into_kind(record: Fifo) -> open_file::Kind {
        open_file::Kind::Fifo(record)
    }

    /// A FIFO's link is its path (a pipe's is "pipe:[N]").
    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFIFO && src.link.starts_with('/')
    }

    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<Fifo>> {
        let (record, created_with) = dump(src, state)?;
        Ok(Dumped { record, created_with, carried: Vec::new() })
    }

    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        finish(files, tree.holders)
    }

    fn precheck(file: &OpenFile, record: &Fifo) -> Result<()> {
        precheck(record).map_err(|e| e.context(format!("open file #{}", file.id)))
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Fifo, together: &mut Together) -> Result<i32> {
        open(ctx, file, record, together)
    }

    fn describe(record: &Fifo) -> String {
        record.file.as_ref().map(|f| f.path.clone()).unwrap_or_default()
    }

    fn show(record: &Fifo, json: &mut serde_json::Value) {
        json["buffered"] = match std::str::from_utf8(&record.buffered) {
            Ok(text) => serde_json::json!(text),
            Err(_) => serde_json::json!(format!("{} bytes", record.buffered.len())),
        };
    }
}

/// Returns the record and its created_with group.
fn dump(src: &FdSource, state: &mut KindState) -> Result<(Fifo, u64)> {
    use nix::fcntl::{FcntlArg, fcntl};
    let (pid, fd) = (src.pid, src.fd);
    let flags = u32::from_str_radix(src.fdinfo_field("flags:").context("fdinfo without flags")?, 8)?;
    if flags & libc::O_PATH as u32 != 0 {
        return Err(src.refuse("an O_PATH descriptor of a FIFO"));
    }
    let through = format!("/proc/{pid}/fd/{fd}");
    // A FIFO unlinked while open: a ghost (kinds::ghost), made again at restore.
    let file = match crate::kinds::ghost::deleted_path(src.link) {
        Some(path) => {
            let table = state.get::<crate::kinds::ghost::GhostTable>();
            let ghost_id = table.record(src.image, &format!("pid {pid} fd {fd}"), path, &through)?;
            crate::image::proto::FileIdentity { ghost_id, ..file_identity(path, &through)? }
        }
        None => file_identity(src.link, &through)?,
    };
    let size = fcntl(src.copy, FcntlArg::F_GETPIPE_SZ).with_context(|| format!("pid {pid} fd {fd}: F_GETPIPE_SZ"))?;
    let mode = flags as i32 & libc::O_ACCMODE;
    let mut fifo = Fifo { fifo_id: group_id(file.dev, file.inode), buffer_size: size as u32, ..Default::default() };
    if mode != libc::O_WRONLY {
        fifo.buffered = peek_buffer(src.copy, size).with_context(|| format!("pid {pid} fd {fd}: tee of the FIFO buffer"))?;
    }
    if mode == libc::O_RDONLY {
        let revents = poll_now(src.copy.as_fd(), libc::POLLIN)?;
        fifo.hangup = revents & libc::POLLHUP != 0;
    }
    fifo.file = Some(file);
    let group = fifo.fifo_id;
    Ok((fifo, group))
}

/// The group of a FIFO inode: a hash of device and inode with the top bit set, so that it
/// cannot be the inode number another kind uses as its group (a pipe's).
fn group_id(dev: u64, inode: u64) -> u64 {
    let mut bytes = b"fifo".to_vec();
    bytes.extend_from_slice(&dev.to_le_bytes());
    bytes.extend_from_slice(&inode.to_le_bytes());
    (1 << 63) | (xxhash_rust::xxh3::xxh3_64(&bytes) >> 1)
}

fn mode_of(file: &OpenFile) -> i32 {
    file.flags as i32 & libc::O_ACCMODE
}

/// Checks every FIFO group once the whole tree was seen: no end outside the tree, and bytes
/// in the buffer only if the tree can read them and restore can put them back.
fn finish(files: &[OpenFile], holders: &Holders) -> Result<()> {
    let mut groups: BTreeMap<u64, Vec<(&OpenFile, &Fifo)>> = BTreeMap::new();
    for file in files {
        if let Some(open_file::Kind::Fifo(f)) = &file.kind {
            groups.entry(f.fifo_id).or_default().push((file, f));
        }
    }
    for members in groups.values() {
        let (first, fifo) = members[0];
        let ident = fifo.file.as_ref().context("FIFO without a file")?;
        let (pid, fd) = holders.get(&first.id).and_then(|h| h.first().copied()).context("FIFO without a holder")?;
        let inside: BTreeSet<i32> = members.iter().flat_map(|(f, _)| holders.get(&f.id).into_iter().flatten().map(|(p, _)| *p)).collect();
        if let Some((other, other_fd)) = outside_holder(ident.dev, ident.inode, &inside) {
            bail!(
                "pid {pid} fd {fd}: FIFO {} is also open in pid {other} (fd {other_fd}), outside the dumped processes; \
                 crust cannot reconnect it",
                ident.path
            );
        }
        let readable = members.iter().any(|(f, _)| mode_of(f) != libc::O_WRONLY);
        let writable = members.iter().any(|(f, _)| mode_of(f) != libc::O_RDONLY);
        if !readable {
            let copy = pidfd_getfd(&pidfd_open(pid)?, pid, fd)?;
            let queued = bytes_queued(copy.as_fd())?;
            if queued > 0 {
                bail!(
                    "pid {pid} fd {fd}: FIFO {} holds {queued} unread bytes and no process of the tree has it open for \
                     reading; crust cannot copy them without opening it",
                    ident.path
                );
            }
        }
        let has_data = members.iter().any(|(_, f)| !f.buffered.is_empty());
        if !writable && has_data && !members.iter().any(|(_, f)| f.hangup) {
            bail!(
                "pid {pid} fd {fd}: FIFO {} holds unread bytes but its readers have seen no writer since they \
                 opened it; crust cannot put the bytes back without a writer they would notice",
                ident.path
            );
        }
    }
    Ok(())
}

/// A process outside `inside` (and other than crust) with an fd on the inode, and that fd.
fn outside_holder(dev: u64, inode: u64, inside: &BTreeSet<i32>) -> Option<(i32, i32)> {
    outside_holders(dev, inode, inside).into_iter().next()
}

/// What restore checks before creating any process: the FIFO is still there, the same inode.
fn precheck(f: &Fifo) -> Result<()> {
    let file = f.file.as_ref().context("FIFO without a file")?;
    if file.ghost_id != 0 {
        return Ok(()); // deleted: made again from the image
    }
    let meta = std::fs::symlink_metadata(&file.path).with_context(|| format!("FIFO {} is gone since the dump", file.path))?;
    if !meta.file_type().is_fifo() || meta.dev() != file.dev || meta.ino() != file.inode {
        bail!("FIFO {} was replaced since the dump (another file or another inode)", file.path);
    }
    Ok(())
}

/// Opens one description; the first description of a FIFO opens every description of its group
/// (kept in `together` for the others).
fn open(ctx: &mut RestoreCtx, file: &OpenFile, f: &Fifo, together: &mut Together) -> Result<i32> {
    let open_files = ctx.open_files;
    let members: Vec<(&OpenFile, &Fifo)> = open_files
        .open_files
        .iter()
        .filter_map(|o| match &o.kind {
            Some(open_file::Kind::Fifo(m)) if m.fifo_id == f.fifo_id => Some((o, m)),
            _ => None,
        })
        .collect();
    let index = members.iter().position(|(o, _)| o.id == file.id).context("FIFO description not in its group")?;
    if let std::collections::btree_map::Entry::Vacant(v) = together.entry(f.fifo_id) {
        v.insert(open_group(ctx, &members)?);
    }
    Ok(together[&f.fifo_id][index])
}

/// Opens every description of one FIFO; returns their temporary fds in `members` order, then
/// the anchor's if there is one (closed with the others when the group is done).
fn open_group(ctx: &mut RestoreCtx, members: &[(&OpenFile, &Fifo)]) -> Result<Vec<i32>> {
    let ident = members[0].1.file.clone().context("FIFO without a file")?;
    // A deleted FIFO is opened where it was made again.
    let ident = if ident.ghost_id != 0 { ctx.ghosts.identity(&ident)? } else { ident };
    let path = ident.path.clone();
    let size = members[0].1.buffer_size;
    let data: Vec<u8> = members.iter().map(|(_, f)| &f.buffered).find(|b| !b.is_empty()).cloned().unwrap_or_default();
    let writable = members.iter().any(|(o, _)| mode_of(o) != libc::O_RDONLY);
    let mut fds = vec![-1; members.len()];
    let open_one = |ctx: &mut RestoreCtx, o: &OpenFile| -> Result<i32> {
        let flags = o.flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
        let fd = ctx.open_in_process(&path, flags | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        check_same_inode(ctx, fd, &ident)?;
        let status = flags & !libc::O_ACCMODE;
        ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[fd as u64, libc::F_SETFL as u64, status as u64])?;
        Ok(fd)
    };
    if writable {
        let anchor = ctx.open_in_process(&path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        check_same_inode(ctx, anchor, &ident)?;
        prepare_buffer(ctx, anchor, size, &data, &path)?;
        for (i, (o, _)) in members.iter().enumerate() {
            fds[i] = open_one(ctx, o)?;
        }
        fds.push(anchor);
        return Ok(fds);
    }
    // Readers only: those that had seen a writer come and go first, then a writer comes and
    // goes (and leaves the bytes), then the readers that had not seen one.
    let seen: Vec<usize> = (0..members.len()).filter(|i| members[*i].1.hangup).collect();
    if !data.is_empty() && seen.is_empty() {
        bail!("FIFO {path}: unread bytes but no reader that saw a writer (refused at dump)");
    }
    for &i in &seen {
        fds[i] = open_one(ctx, members[i].0)?;
    }
    if !seen.is_empty() {
        let writer = ctx.open_in_process(&path, libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        check_same_inode(ctx, writer, &ident)?;
        prepare_buffer(ctx, writer, size, &data, &path)?;
        ctx.close_in_process(writer)?;
    }
    for (i, (o, f)) in members.iter().enumerate() {
        if !f.hangup {
            fds[i] = open_one(ctx, o)?;
        }
    }
    if seen.is_empty() {
        set_size(ctx, fds[0], size, &path)?;
    }
    Ok(fds)
}

fn set_size(ctx: &mut RestoreCtx, fd: i32, size: u32, path: &str) -> Result<()> {
    ctx.remote
        .syscall("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, &[fd as u64, libc::F_SETPIPE_SZ as u64, size as u64])
        .with_context(|| format!("giving FIFO {path} its buffer size of {size} bytes"))?;
    Ok(())
}

/// Gives the FIFO its buffer size and bytes through `fd` (which can write); it must be empty,
/// or another process has it open.
fn prepare_buffer(ctx: &mut RestoreCtx, fd: i32, size: u32, data: &[u8], path: &str) -> Result<()> {
    set_size(ctx, fd, size, path)?;
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    let queued = bytes_queued(ours.as_fd())?;
    if queued > 0 {
        bail!("FIFO {path} already holds {queued} bytes: another process has it open; its buffer cannot be restored");
    }
    drop(ours);
    if !data.is_empty() {
        fill_pipe(ctx, fd, data).with_context(|| format!("putting {} bytes back into FIFO {path}", data.len()))?;
    }
    Ok(())
}

fn check_same_inode(ctx: &mut RestoreCtx, fd: i32, ident: &crate::image::proto::FileIdentity) -> Result<()> {
    let meta = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid))?;
    if meta.dev() != ident.dev || meta.ino() != ident.inode {
        bail!("{} is no longer the FIFO that was dumped (another inode)", ident.path);
    }
    Ok(())
}
