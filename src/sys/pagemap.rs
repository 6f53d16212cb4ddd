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

    /// The raw pagemap entries of [start, end), one per page.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<u64>, SysError> {
        let pages = ((end - start) / PAGE_SIZE) as usize;
        let mut bytes = vec![0u8; pages * 8];
        self.file
            .read_exact_at(&mut bytes, start / PAGE_SIZE * 8)
            .map_err(|e| SysError::new(format!("read /proc/{}/pagemap", self.pid), io_errno(&e)))?;
        Ok(bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect())
    }

    /// Calls `run(address, pages)` for each maximal run of wanted pages in [start, end).
    pub fn for_each_run(&self, start: u64, end: u64, wanted: Wanted, run: impl FnMut(u64, u64)) -> Result<(), SysError> {
        const BATCH: u64 = 64 * 1024 * PAGE_SIZE; // 512 KiB of entries per read: 256 MiB of memory
        let mut runs = Runs::new(run);
        let mut at = start;
        while at < end {
            let stop = end.min(at + BATCH);
            for (i, entry) in self.entries(at, stop)?.into_iter().enumerate() {
                runs.push(at + i as u64 * PAGE_SIZE, wanted.holds(entry));
            }
            at = stop;
        }
        runs.finish();
        Ok(())
    }
}

impl Wanted {
    /// Whether a page with this pagemap entry holds data only the image can restore.
    pub fn holds(self, entry: u64) -> bool {
        match self {
            Wanted::Resident => entry & (PRESENT | SWAPPED) != 0,
            Wanted::PrivateCopies => entry & SWAPPED != 0 || (entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0),
        }
    }
}

/// The physical frame of a present page (visible to root), None otherwise.
pub fn frame(entry: u64) -> Option<u64> {
    (entry & PRESENT != 0).then_some(entry & ((1 << 55) - 1))
}

/// Groups consecutive pages into runs: push each page in address order, get `run(address,
/// pages)` for every maximal run of pages pushed with `wanted = true`.
pub struct Runs<F: FnMut(u64, u64)> {
    current: Option<(u64, u64)>,
    run: F,
}

impl<F: FnMut(u64, u64)> Runs<F> {
    pub fn new(run: F) -> Self {
        Runs { current: None, run }
    }

    pub fn push(&mut self, address: u64, wanted: bool) {
        match (&mut self.current, wanted) {
            (Some((start, count)), true) if *start + *count * PAGE_SIZE == address => *count += 1,
            (Some(_), true) => {
                let (start, count) = self.current.take().unwrap();
                (self.run)(start, count);
                self.current = Some((address, 1));
            }
            (None, true) => self.current = Some((address, 1)),
            (Some(_), false) => {
                let (start, count) = self.current.take().unwrap();
                (self.run)(start, count);
            }
            (None, false) => {}
        }
    }

    pub fn finish(mut self) {
        if let Some((start, count)) = self.current.take() {
            (self.run)(start, count);
        }
    }
}
