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
    image.sync_data_file_deferred(name, &out)?;
    Ok(size)
}

/// The [start, end) ranges of the first `size` bytes of a file that hold data (SEEK_DATA /
/// SEEK_HOLE), each within `0..size` whatever the file's length: a data file longer than the
/// object an image names never makes a region that reaches past the object.
pub fn data_regions(file: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    let mut regions = Vec::new();
    let mut at: u64 = 0;
    while at < size {
        let Ok(offset) = i64::try_from(at) else { break };
        let start = match lseek(file.as_fd(), offset, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break, // only holes left
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        if start >= size {
            break;
        }
        let end = (lseek(file.as_fd(), start as i64, Whence::SeekHole).context("SEEK_HOLE")? as u64).min(size);
        if end <= start {
            break;
        }
        regions.push((start, end));
        at = end;
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data file longer than the object (a hostile image): the regions stay inside the
    /// object's size.
    #[test]
    fn regions_never_reach_past_the_size_named() {
        let path = std::env::temp_dir().join(format!("crust-sparse-test-{}", std::process::id()));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all_at(&[1u8; 8192], 0).unwrap();
        assert_eq!(data_regions(&file, 4096).unwrap(), vec![(0, 4096)]);
        assert_eq!(data_regions(&file, 0).unwrap(), vec![]);
        assert_eq!(data_regions(&file, u64::MAX).unwrap(), vec![(0, 8192)]);
        file.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        let regions = data_regions(&file, (1 << 20) + 100).unwrap();
        assert!(regions.iter().all(|(s, e)| s < e && *e <= (1 << 20) + 100), "{regions:?}");
        assert_eq!(regions.last().map(|r| r.1), Some((1 << 20) + 100));
    }
}
