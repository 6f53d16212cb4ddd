//! /proc/PID/pagemap: which pages of a range are present, and whether each is a private
//! (anonymous) page or a page of a file / shared memory.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{PAGE_SIZE, SysError, remote::io_errno};

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_OR_SHARED: u64 = 1 << 61;

pub struct PageMap {
    file: File,
    pid: i32,
}

/// Which pages of a mapping hold data that only the image can restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Every page in memory or swap (anonymous memory, shared anonymous memory).
    Resident,
    /// Only pages that were copied on write (a private file mapping's changed pages).
    PrivateCopies,
}

impl PageMap {
    pub fn open(pid: i32) -> Result<Self, SysError> {
        let file = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| SysError::new("open /proc/PID/pagemap", io_errno(&e)).pid(pid))?;
        Ok(PageMap { file, pid })
    }

    /// Calls `run(address, pages)` for each maximal run of wanted pages in [start, end).
    pub fn for_each_run(
        &self,
        start: u64,
        end: u64,
        wanted: Wanted,
        mut run: impl FnMut(u64, u64),
    ) -> Result<(), SysError> {
        const BATCH: u64 = 64 * 1024; // entries per read: 512 KiB, covers 256 MiB of memory
        let mut buf = vec![0u8; (BATCH * 8) as usize];
        let mut current: Option<(u64, u64)> = None;
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        while page < last {
            let n = (last - page).min(BATCH);
            let bytes = &mut buf[..(n * 8) as usize];
            self.file
                .read_exact_at(bytes, page * 8)
                .map_err(|e| SysError::new(format!("read /proc/{}/pagemap", self.pid), io_errno(&e)))?;
            for (i, entry) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_ne_bytes(entry.try_into().unwrap());
                let keep = match wanted {
                    Wanted::Resident => entry & (PRESENT | SWAPPED) != 0,
                    Wanted::PrivateCopies => {
                        entry & SWAPPED != 0 || (entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0)
                    }
                };
                let address = (page + i as u64) * PAGE_SIZE;
                match (&mut current, keep) {
                    (Some((_, count)), true) => *count += 1,
                    (None, true) => current = Some((address, 1)),
                    (Some((a, count)), false) => {
                        run(*a, *count);
                        current = None;
                    }
                    (None, false) => {}
                }
            }
            page += n;
        }
        if let Some((a, count)) = current {
            run(a, count);
        }
        Ok(())
    }
}
