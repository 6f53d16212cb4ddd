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
//! Refused: a memfd that is also mapped (by the memory kind: mappings of deleted files), a
//! memfd reached through more than one open file description (reopened through /proc), and
//! hugetlbfs memfds (MFD_HUGETLB).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};

use super::common::set_status_flags;
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{Memfd, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::pidfd::pidfd_getfd;

pub struct Memfds;

impl FdKind for Memfds {
    type Record = Memfd;
    const NAME: &'static str = "memfd";

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
        dump(src).map(Dumped::alone)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Memfd, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record)
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

fn dump(src: &FdSource) -> Result<Memfd> {
    let (pid, fd) = (src.pid, src.fd);
    let name = src.link.strip_prefix("/memfd:").and_then(|n| n.strip_suffix(" (deleted)"));
    let Some(name) = name.filter(|_| src.meta.nlink() == 0) else {
        return Err(src.refuse("a deleted file"));
    };
    if src.inode_seen {
        return Err(src.refuse("a memfd open through several open file descriptions (reopened through /proc)"));
    }
    let fs = nix::sys::statfs::fstatfs(src.copy).with_context(|| format!("pid {pid} fd {fd}: fstatfs"))?;
    if fs.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC {
        return Err(src.refuse("a hugetlbfs memfd (MFD_HUGETLB)"));
    }
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        // A deleted file that happened to be called /memfd:...
        return Err(src.refuse("a deleted file"));
    }
    let seals = fcntl(src.copy, FcntlArg::F_GET_SEALS).with_context(|| format!("pid {pid} fd {fd}: F_GET_SEALS"))? as u32;
    let size = src.meta.size();
    let inode = src.meta.ino();
    let mut record = Memfd {
        name: name.to_owned(),
        data_file: String::new(),
        size,
        seals,
        allow_sealing: seals & libc::F_SEAL_SEAL as u32 == 0,
        inode,
        mode: src.meta.mode() & 0o7777,
        uid: src.meta.uid(),
        gid: src.meta.gid(),
    };
    if size > 0 {
        record.data_file = data_file_name(inode);
        save_contents(src.copy, size, src.image, &record.data_file)
            .with_context(|| format!("pid {pid} fd {fd}: saving the contents of memfd:{name}"))?;
    }
    Ok(record)
}

fn save_contents(copy: &OwnedFd, size: u64, image: &crate::image::ImageDir, name: &str) -> Result<()> {
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
fn read_full(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> Result<usize> {
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

fn open(ctx: &mut RestoreCtx, file: &OpenFile, m: &Memfd) -> Result<i32> {
    // Without MFD_ALLOW_SEALING a memfd is born with F_SEAL_SEAL only; any other seal means
    // sealing was allowed when it was added.
    let born_sealed = m.seals == libc::F_SEAL_SEAL as u32;
    let mut flags = libc::MFD_CLOEXEC as u64;
    if !born_sealed {
        flags |= libc::MFD_ALLOW_SEALING as u64;
    }
    let addr = ctx.remote.put_path(0, &m.name)?;
    let fd = ctx
        .remote
        .syscall("memfd_create", libc::SYS_memfd_create, &[addr, flags])
        .with_context(|| format!("creating memfd:{}", m.name))?;
    let mut fd = ctx.to_temp_fd(fd)?;
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    nix::unistd::ftruncate(&ours, m.size as i64).with_context(|| format!("giving memfd:{} its size {}", m.name, m.size))?;
    if !m.data_file.is_empty() {
        fill(ctx, &ours, m).with_context(|| format!("filling memfd:{} from {}", m.name, m.data_file))?;
    }
    nix::unistd::fchown(&ours, Some(m.uid.into()), Some(m.gid.into()))
        .with_context(|| format!("giving memfd:{} its owner {}:{}", m.name, m.uid, m.gid))?;
    nix::sys::stat::fchmod(&ours, nix::sys::stat::Mode::from_bits_truncate(m.mode))
        .with_context(|| format!("giving memfd:{} its mode {:o}", m.name, m.mode))?;
    // memfd_create opens it read-write; another access mode is another description of it.
    let access = file.flags & libc::O_ACCMODE as u32;
    if access != libc::O_RDWR as u32 {
        let path = format!("/proc/self/fd/{fd}");
        let reopened = ctx.open_in_process(&path, access as i32 | libc::O_CLOEXEC)?;
        ctx.close_in_process(fd)?;
        fd = reopened;
    }
    ctx.remote
        .syscall("lseek", libc::SYS_lseek, &[fd as u64, file.position, libc::SEEK_SET as u64])
        .with_context(|| format!("moving memfd:{} to offset {}", m.name, file.position))?;
    set_status_flags(ctx, fd, file.flags)?;
    if m.seals != 0 && !born_sealed {
        fcntl(ours.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(m.seals as i32)))
            .with_context(|| format!("adding the seals {:#x} to memfd:{}", m.seals, m.name))?;
    }
    Ok(fd)
}

/// Copies the saved contents into the memfd through crust's copy of it, skipping zero pages
/// (they are holes already after ftruncate).
fn fill(ctx: &RestoreCtx, ours: &OwnedFd, m: &Memfd) -> Result<()> {
    let data = File::open(ctx.image.path(&m.data_file))?;
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
