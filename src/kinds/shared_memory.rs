//! Anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS): one kernel object, however many
//! processes map it. It is recorded once, as an open file description held by the mappings, so
//! the tree planner has the nearest common ancestor of all the processes mapping it create it
//! before forking them; each of them then maps the very same object.
//!
//! Dump reads the object through /proc/PID/map_files (a read does not disturb it) into a sparse
//! data file, skipping holes (pages never touched). Restore creates the object with an anonymous
//! shared mapping, takes a descriptor to it from /proc/self/map_files, and refills it.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use anyhow::{Context, Result, bail};

use super::RestoreCtx;
use crate::image::ImageDir;
use crate::image::proto::{OpenFile, SharedMemory};
use crate::sys::pidfd::pidfd_getfd;

pub fn data_file_name(inode: u64) -> String {
    format!("shmem-{inode}.img")
}

/// Opens the object behind a shared anonymous mapping of `pid`: (dev, inode, the open file).
pub fn open_object(pid: i32, start: u64, end: u64) -> Result<(u64, u64, File)> {
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino(), file))
}

/// Copies the object's data (not its holes) into a sparse data file at the same offsets.
pub fn dump(image: &ImageDir, object: &File) -> Result<SharedMemory> {
    let meta = object.metadata()?;
    let name = data_file_name(meta.ino());
    let size = save_contents(image, object, &name)?;
    Ok(SharedMemory { inode: meta.ino(), size, data_file: name })
}

/// Writes a sparse copy of a memory object into data file `name`; returns the object's size.
pub fn save_contents(image: &ImageDir, object: &File, name: &str) -> Result<u64> {
    let size = object.metadata()?.size();
    let out = image.create_data_file(name)?;
    out.set_len(size)?;
    let mut buf = vec![0u8; 4 << 20];
    for (start, end) in data_regions(object, size)? {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            object.read_exact_at(&mut buf[..n], at)?;
            out.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
    }
    Ok(size)
}

/// The [start, end) ranges of a file that hold data (SEEK_DATA / SEEK_HOLE).
pub fn data_regions(file: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    let mut regions = Vec::new();
    let mut at: i64 = 0;
    while (at as u64) < size {
        let start = match lseek(file.as_fd(), at, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break, // only holes left
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        let end = lseek(file.as_fd(), start, Whence::SeekHole).context("SEEK_HOLE")?;
        regions.push((start as u64, end as u64));
        at = end;
    }
    Ok(regions)
}

/// Creates the object in the process and returns a descriptor to it (a temporary fd).
pub fn open(ctx: &mut RestoreCtx, file: &OpenFile, shm: &SharedMemory) -> Result<i32> {
    if shm.size == 0 {
        bail!("shared memory object #{} has no size", file.id);
    }
    // /proc/self/map_files is opened with the process's own (still privileged) credentials.
    super::credentials::leave_fs_identity(ctx)?;
    let r = &mut *ctx.remote;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
    let addr = r.syscall("mmap(shared anonymous)", libc::SYS_mmap, &[0, shm.size, prot, flags, u64::MAX, 0])?;
    let path = format!("/proc/self/map_files/{addr:x}-{:x}", addr + shm.size);
    let fd = ctx.open_in_process(&path, libc::O_RDWR | libc::O_CLOEXEC)?;
    ctx.remote.syscall("munmap", libc::SYS_munmap, &[addr, shm.size])?;
    super::credentials::enter_fs_identity(ctx)?;

    // Refill through crust's own copy of the descriptor.
    let ours = File::from(pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?);
    let data = File::open(ctx.image.path(&shm.data_file))?;
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
