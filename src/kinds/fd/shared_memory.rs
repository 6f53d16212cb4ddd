//! Anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS): one kernel object, however many
//! processes map it. It is recorded once, as an open file description held by the mappings, so
//! the tree planner has the nearest common ancestor of all the processes mapping it create it
//! before forking them; each of them then maps the very same object.
//!
//! Dump reads the object through /proc/PID/map_files (a read does not disturb it) into a sparse
//! data file, skipping holes (pages never touched). Restore creates the object with an anonymous
//! shared mapping, takes a descriptor to it from /proc/self/map_files, and refills it.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use anyhow::{Context, Result, bail};

use super::common::outside_mapper;
use super::{FdKind, FdSource, KindState, Together};
use crate::image::ImageDir;
use crate::image::proto::{OpenFile, SharedMemory, open_file};
use crate::image::sparse::{data_regions, save_contents};
use crate::kinds::RestoreCtx;
use crate::sys::pidfd::pidfd_getfd;

pub struct SharedMemoryObjects;

impl FdKind for SharedMemoryObjects {
    type Record = SharedMemory;
    const NAME: &'static str = "shared memory";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&SharedMemory> {
        match kind {
            open_file::Kind::SharedMemory(m) => Some(m),
            _ => None,
        }
    }

    fn into_kind(record: SharedMemory) -> open_file::Kind {
        open_file::Kind::SharedMemory(record)
    }

    /// Found through mappings ([`record_mapping`]), never through an fd.
    fn recognises(_src: &FdSource) -> bool {
        false
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<super::Dumped<SharedMemory>> {
        bail!("pid {} fd {}: shared memory is recorded through its mappings, not its fds", src.pid, src.fd)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &SharedMemory, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record)
    }

    fn describe(record: &SharedMemory) -> String {
        format!("shared memory (inode {})", record.inode)
    }

    fn data_files(record: &SharedMemory) -> Vec<String> {
        vec![record.data_file.clone()]
    }
}

/// The record of the object behind a shared anonymous mapping of `pid` at [start, end) (see
/// [`open_object`]), its contents saved in a data file. Recorded once, however many processes
/// map it: the fd table asks for it the first time it meets the object. Refused if a process
/// outside `inside` (the tree) maps it too: restored, the object would be another than theirs.
pub fn record_mapping(image: &ImageDir, object: &File, pid: i32, start: u64, end: u64, inside: &BTreeSet<i32>) -> Result<OpenFile> {
    let meta = object.metadata()?;
    if let Some((other, range)) = outside_mapper(meta.dev(), meta.ino(), inside) {
        bail!(
            "pid {pid}: shared memory mapped at {start:#x}-{end:#x} is also mapped by pid {other} ({range}), outside \
             the dumped processes; crust cannot share restored memory with it"
        );
    }
    let shm = dump(image, object).with_context(|| format!("pid {pid}: saving shared memory mapped at {start:#x}-{end:#x}"))?;
    Ok(OpenFile { flags: libc::O_RDWR as u32, kind: Some(open_file::Kind::SharedMemory(shm)), ..Default::default() })
}

pub fn data_file_name(inode: u64) -> String {
    format!("shmem-{inode}.img")
}

/// Opens the object behind a shared anonymous mapping of `pid`: ((dev, inode), the open file).
pub fn open_object(pid: i32, start: u64, end: u64) -> Result<((u64, u64), File)> {
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let meta = file.metadata()?;
    Ok(((meta.dev(), meta.ino()), file))
}

/// Copies the object's data (not its holes) into a sparse data file at the same offsets.
fn dump(image: &ImageDir, object: &File) -> Result<SharedMemory> {
    let meta = object.metadata()?;
    let name = data_file_name(meta.ino());
    let size = save_contents(image, object, &name)?;
    Ok(SharedMemory { inode: meta.ino(), size, data_file: name })
}

/// Creates the object in the process and returns a descriptor to it (a temporary fd).
fn open(ctx: &mut RestoreCtx, file: &OpenFile, shm: &SharedMemory) -> Result<i32> {
    if shm.size == 0 {
        bail!("shared memory object #{} has no size", file.id);
    }
    // /proc/self/map_files is opened with the process's own (still privileged) credentials.
    crate::kinds::credentials::leave_fs_identity(ctx)?;
    let r = &mut *ctx.remote;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
    let addr = r.syscall("mmap(shared anonymous)", libc::SYS_mmap, &[0, shm.size, prot, flags, u64::MAX, 0])?;
    let path = format!("/proc/self/map_files/{addr:x}-{:x}", addr + shm.size);
    let fd = ctx.open_in_process(&path, libc::O_RDWR | libc::O_CLOEXEC)?;
    ctx.remote.syscall("munmap", libc::SYS_munmap, &[addr, shm.size])?;
    crate::kinds::credentials::enter_fs_identity(ctx)?;

    // Refill through crust's own copy of the descriptor.
    let ours = File::from(pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?);
    let data = ctx.image.data_file(&shm.data_file)?;
    let mut buf = vec![0u8; 4 << 20];
    for (start, end) in data_regions(&data, shm.size)? {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            data.read_exact_at(&mut buf[..n], at)?;
            ours.write_all_at(&buf[..n], at).context("refilling shared memory")?;
            at += n as u64;
        }
    }
    Ok(fd)
}
