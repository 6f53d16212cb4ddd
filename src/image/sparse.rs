//! Sparse copies of memory objects (shared memory, SysV segments) in raw data files: only the
//! regions that hold data are copied, at the same offsets, so holes (pages never touched) stay
//! holes.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use anyhow::{Context, Result};

use super::ImageDir;

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

