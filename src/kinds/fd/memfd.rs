//! memfd descriptions ("/memfd:NAME (deleted)", a regular file of the kernel's internal tmpfs):
//! name, contents, size, seals, permission bits and owner; the position and status flags are
//! the description's.
//!
//! Dump reads the contents through crust's `pidfd_getfd` copy with pread (never reopening it,
//! never moving its offset) into the raw data file `memfd-INODE.img`; pages of zeros are left
//! as holes, so a sparse memfd stays small in the image. Restore has the process create the
//! memfd (memfd_create, with MFD_ALLOW_SEALING unless the memfd was created without it), and
//! crust fills it through its own `pidfd_getfd` copy of the new fd (pwrite, zero pages
//! skipped), gives it its size, owner and mode, and adds the seals last (they may forbid the
//! writes before them).
//!
//! One memfd inode may be reached through several open file descriptions (reopened through
//! /proc/PID/fd/N, each with its own offset and flags) and through mappings, also once every fd
//! of it was closed (see `kinds::pathless`). All descriptions of one inode are one group
//! (`created_with`): the first one (its contents saved once, with it) creates the memfd in the
//! nearest common ancestor of every holder and mapper, and every other description of the
//! group is opened again from it through /proc/self/fd, so they share one inode again.
//!
//! Refused: hugetlbfs memfds (MFD_HUGETLB), and memfds a process outside the tree also holds or
//! maps (the restored memfd would be another).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};

use super::common::{outside_holders, outside_mapper, set_status_flags};
use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{Memfd, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::pidfd::pidfd_getfd;

pub struct Memfds;

impl FdKind for Memfds {
    type Record = Memfd;
    const NAME: &'static str = "memfd";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Memfd> {
        match kind {
            open_file::Kind::Memfd(m) => Some(m),
            _ => None,
        }
    }

    fn into_kind(record: Memfd) -> open_file::Kind {
        open_file::Kind::Memfd(record)
    }

    /// A regular file whose link looks like a memfd's ("/memfd:NAME (deleted)"): `dump` makes
    /// sure it is one (a deleted file can have that name).
    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFREG && src.link.starts_with("/memfd:") && src.link.ends_with(" (deleted)")
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<Memfd>> {
        let record = dump(src)?;
        Ok(Dumped { created_with: group_id(src.meta.dev(), src.meta.ino()), record, carried: Vec::new() })
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Memfd, together: &mut Together) -> Result<i32> {
        open(ctx, file, record, together)
    }

    /// A memfd also open or mapped by a process outside the tree would not be shared with it
    /// any more after restore: refused.
    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        let mut seen = BTreeSet::new();
        for file in files.iter() {
            let Some(open_file::Kind::Memfd(m)) = &file.kind else { continue };
            let Some(&(pid, fd)) = tree.holders.get(&file.id).and_then(|h| h.first()) else { continue };
            if !seen.insert(file.created_with) {
                continue;
            }
            let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).with_context(|| format!("pid {pid} fd {fd}: stat"))?;
            refuse_if_shared_outside(&format!("pid {pid} fd {fd}"), &m.name, meta.dev(), meta.ino(), tree.pids)?;
        }
        Ok(())
    }

    fn describe(record: &Memfd) -> String {
        format!("memfd:{}", record.name)
    }

    fn data_files(record: &Memfd) -> Vec<String> {
        if record.data_file.is_empty() { Vec::new() } else { vec![record.data_file.clone()] }
    }
}

/// Contents are copied in blocks of this size; all-zero pages are skipped (holes).
const BLOCK: usize = 1 << 20;
const PAGE: usize = 4096;

/// The runs of `buf` (start, end) made of pages that are not all zeros.
fn non_zero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, page) in buf.chunks(PAGE).enumerate() {
        if page.iter().all(|b| *b == 0) {
            continue;
        }
        let (start, end) = (i * PAGE, i * PAGE + page.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

/// The data file holding the contents of the memfd with inode `inode`.
pub fn data_file_name(inode: u64) -> String {
    format!("memfd-{inode}.img")
}

/// The group of every description of the memfd inode (dev, inode): tagged so that it never
/// meets another kind's group.
fn group_id(dev: u64, inode: u64) -> u64 {
    let mut bytes = b"memfd".to_vec();
    bytes.extend_from_slice(&dev.to_le_bytes());
    bytes.extend_from_slice(&inode.to_le_bytes());
    (1 << 63) | (xxhash_rust::xxh3::xxh3_64(&bytes) >> 1)
}

/// The memfd name in a link or maps path ("/memfd:NAME (deleted)").
pub fn name_in(path: &str) -> Option<&str> {
    path.strip_prefix("/memfd:").and_then(|n| n.strip_suffix(" (deleted)"))
}

fn dump(src: &FdSource) -> Result<Memfd> {
    let (pid, fd) = (src.pid, src.fd);
    let Some(name) = name_in(src.link).filter(|_| src.meta.nlink() == 0) else {
        return Err(src.refuse("a deleted file"));
    };
    let what = format!("pid {pid} fd {fd}");
    match inode_record(src.copy.as_fd(), src.meta, name, src.image, !src.inode_seen, &what)? {
        Some(record) => Ok(record),
        None => Err(src.refuse(&refusal_of(src.copy.as_fd(), &what)?)),
    }
}

/// Why a file with a memfd's name is not one crust restores.
fn refusal_of(fd: BorrowedFd, what: &str) -> Result<String> {
    let fs = nix::sys::statfs::fstatfs(fd).with_context(|| format!("{what}: fstatfs"))?;
    Ok(if fs.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC {
        "a hugetlbfs memfd (MFD_HUGETLB)".into()
    } else {
        "a deleted file".into()
    })
}

/// The record of the memfd inode behind `fd` (a description of it: crust's copy of an fd, or
/// the mapping's file from /proc/PID/map_files), its contents saved unless `save` is false (a
/// further description of an inode whose contents are saved already). None if it is not a
/// memfd crust restores (a hugetlbfs memfd, or a deleted file that happens to be called so).
fn inode_record(
    fd: BorrowedFd,
    meta: &std::fs::Metadata,
    name: &str,
    image: &crate::image::ImageDir,
    save: bool,
    what: &str,
) -> Result<Option<Memfd>> {
    let fs = nix::sys::statfs::fstatfs(fd).with_context(|| format!("{what}: fstatfs"))?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC || meta.nlink() != 0 {
        return Ok(None);
    }
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS).with_context(|| format!("{what}: F_GET_SEALS"))? as u32;
    let size = meta.size();
    let inode = meta.ino();
    let mut record = Memfd {
        name: name.to_owned(),
        data_file: String::new(),
        size,
        seals,
        allow_sealing: seals & libc::F_SEAL_SEAL as u32 == 0,
        inode,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    };
    if size > 0 && save {
        record.data_file = data_file_name(inode);
        save_contents(fd, size, image, &record.data_file).with_context(|| format!("{what}: saving the contents of memfd:{name}"))?;
    }
    Ok(Some(record))
}

/// Refuses the memfd (dev, inode) named `name` if a process outside `inside` holds or maps it
/// (`what`: the pid and fd or mapping it was found through).
pub fn refuse_if_shared_outside(what: &str, name: &str, dev: u64, inode: u64, inside: &BTreeSet<i32>) -> Result<()> {
    if let Some((other, other_fd)) = outside_holders(dev, inode, inside).into_iter().next() {
        bail!(
            "{what}: memfd:{name} is also open in pid {other} (fd {other_fd}), outside the dumped processes; \
             crust cannot share a restored memfd with it"
        );
    }
    if let Some((other, range)) = outside_mapper(dev, inode, inside) {
        bail!(
            "{what}: memfd:{name} is also mapped by pid {other} ({range}), outside the dumped processes; \
             crust cannot share a restored memfd with it"
        );
    }
    Ok(())
}

/// The description recorded for a memfd found through a mapping of `pid` at [start, end) when
/// no fd of the tree refers to it any more: its file from /proc/PID/map_files (`object`), named
/// `name`. Opened read-write at restore, for the mappings alone.
pub fn record_mapping(image: &crate::image::ImageDir, object: &File, name: &str, pid: i32, start: u64, end: u64) -> Result<OpenFile> {
    let meta = object.metadata()?;
    let what = format!("pid {pid}: memfd:{name} mapped at {start:#x}-{end:#x}");
    let Some(record) = inode_record(object.as_fd(), &meta, name, image, true, &what)? else {
        bail!("{what}: {} cannot be checkpointed by crust yet", refusal_of(object.as_fd(), &what)?);
    };
    Ok(OpenFile {
        flags: libc::O_RDWR as u32,
        created_with: group_id(meta.dev(), meta.ino()),
        kind: Some(open_file::Kind::Memfd(record)),
        ..Default::default()
    })
}

fn save_contents(copy: BorrowedFd, size: u64, image: &crate::image::ImageDir, name: &str) -> Result<()> {
    let out = image.create_data_file(name)?;
    let mut buf = vec![0u8; BLOCK];
    let mut offset = 0u64;
    while offset < size {
        let want = BLOCK.min((size - offset) as usize);
        let n = read_full(copy, &mut buf[..want], offset)?;
        if n < want {
            bail!("the memfd ended at {} bytes, its size was {size}", offset + n as u64);
        }
        for (start, end) in non_zero_runs(&buf[..n]) {
            out.write_all_at(&buf[start..end], offset + start as u64)?;
        }
        offset += n as u64;
    }
    out.set_len(size)?;
    out.sync_data()?;
    Ok(())
}

/// pread until `buf` is full or the file ends.
fn read_full(fd: BorrowedFd, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match nix::sys::uio::pread(fd, &mut buf[done..], (offset + done as u64) as i64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Opens one description of a memfd: the first of its group creates the memfd (from the
/// group's first record, which holds the contents), the others open it again from there.
fn open(ctx: &mut RestoreCtx, file: &OpenFile, m: &Memfd, together: &mut Together) -> Result<i32> {
    let group = file.created_with;
    let (inode_fd, created) = match together.get(&group).and_then(|fds| fds.first()) {
        Some(fd) if group != 0 => (*fd, false),
        _ => {
            let first = group_records(ctx, group).into_iter().next().unwrap_or(m);
            let fd = create(ctx, first)?;
            if group != 0 {
                together.entry(group).or_default().push(fd);
            }
            (fd, true)
        }
    };
    // memfd_create opens it read-write; any other description of it is another open of it.
    let access = file.flags & libc::O_ACCMODE as u32;
    let fd = if created && access == libc::O_RDWR as u32 {
        inode_fd
    } else {
        let path = format!("/proc/self/fd/{inode_fd}");
        let reopened = ctx.open_in_process(&path, access as i32 | libc::O_CLOEXEC)?;
        if group == 0 {
            ctx.close_in_process(inode_fd)?;
        }
        reopened
    };
    ctx.remote
        .syscall("lseek", libc::SYS_lseek, &[fd as u64, file.position, libc::SEEK_SET as u64])
        .with_context(|| format!("moving memfd:{} to offset {}", m.name, file.position))?;
    set_status_flags(ctx, fd, file.flags)?;
    Ok(fd)
}

/// The memfd records of the descriptions of group `group` (one inode), in id order.
fn group_records<'a>(ctx: &RestoreCtx<'a>, group: u64) -> Vec<&'a Memfd> {
    if group == 0 {
        return Vec::new();
    }
    let files: &'a [OpenFile] = &ctx.open_files.open_files;
    files
        .iter()
        .filter(|f| f.created_with == group)
        .filter_map(|f| match &f.kind {
            Some(open_file::Kind::Memfd(m)) => Some(m),
            _ => None,
        })
        .collect()
}

/// Creates the memfd in the process with its contents, size, owner, mode and seals, and
/// returns its (read-write) temporary fd.
fn create(ctx: &mut RestoreCtx, m: &Memfd) -> Result<i32> {
    // Without MFD_ALLOW_SEALING a memfd is born with F_SEAL_SEAL only; any other seal means
    // sealing was allowed when it was added.
    let born_sealed = m.seals == libc::F_SEAL_SEAL as u32;
    let mut flags = libc::MFD_CLOEXEC as u64;
    if !born_sealed {
        flags |= libc::MFD_ALLOW_SEALING as u64;
    }
    let addr = ctx.remote.put_path(0, &m.name)?;
    let fd =
        ctx.remote.syscall("memfd_create", libc::SYS_memfd_create, &[addr, flags]).with_context(|| format!("creating memfd:{}", m.name))?;
    let fd = ctx.to_temp_fd(fd)?;
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    nix::unistd::ftruncate(&ours, m.size as i64).with_context(|| format!("giving memfd:{} its size {}", m.name, m.size))?;
    if !m.data_file.is_empty() {
        fill(ctx, &ours, m).with_context(|| format!("filling memfd:{} from {}", m.name, m.data_file))?;
    }
    nix::unistd::fchown(&ours, Some(m.uid.into()), Some(m.gid.into()))
        .with_context(|| format!("giving memfd:{} its owner {}:{}", m.name, m.uid, m.gid))?;
    nix::sys::stat::fchmod(&ours, nix::sys::stat::Mode::from_bits_truncate(m.mode))
        .with_context(|| format!("giving memfd:{} its mode {:o}", m.name, m.mode))?;
    if m.seals != 0 && !born_sealed {
        fcntl(ours.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(m.seals as i32)))
            .with_context(|| format!("adding the seals {:#x} to memfd:{}", m.seals, m.name))?;
    }
    Ok(fd)
}

/// Copies the saved contents into the memfd through crust's copy of it, skipping zero pages
/// (they are holes already after ftruncate).
fn fill(ctx: &RestoreCtx, ours: &OwnedFd, m: &Memfd) -> Result<()> {
    let data = ctx.image.data_file(&m.data_file)?;
    let len = data.metadata()?.len();
    if len != m.size {
        bail!("{} holds {len} bytes, the memfd had {}", m.data_file, m.size);
    }
    let mut buf = vec![0u8; BLOCK];
    let mut offset = 0u64;
    while offset < m.size {
        let n = BLOCK.min((m.size - offset) as usize);
        data.read_exact_at(&mut buf[..n], offset)?;
        for (start, end) in non_zero_runs(&buf[..n]) {
            let mut done = start;
            while done < end {
                done += nix::sys::uio::pwrite(ours, &buf[done..end], (offset + done as u64) as i64)?;
            }
        }
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_skipped() {
        let mut buf = vec![0u8; 5 * PAGE + 10];
        assert!(non_zero_runs(&buf).is_empty());
        buf[1] = 1;
        buf[PAGE + 5] = 1;
        buf[3 * PAGE] = 1;
        buf[5 * PAGE + 9] = 1;
        assert_eq!(non_zero_runs(&buf), vec![(0, 2 * PAGE), (3 * PAGE, 4 * PAGE), (5 * PAGE, 5 * PAGE + 10)]);
    }
}
