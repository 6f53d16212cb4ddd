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
        let file =
            File::open(format!("/proc/{pid}/pagemap")).map_err(|e| SysError::new("open /proc/PID/pagemap", io_errno(&e)).pid(pid))?;
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

    /// Calls `run(address, pages)` for each maximal run of wanted pages in [start, end): the
    /// kernel lists the runs (PAGEMAP_SCAN, Linux 6.7+), or crust reads every page's entry.
    pub fn for_each_run(&self, start: u64, end: u64, wanted: Wanted, mut run: impl FnMut(u64, u64)) -> Result<(), SysError> {
        match self.scan_runs(start, end, wanted, &mut run) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.errno(), Some(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL)) => {}
            Err(e) => return Err(e),
        }
        self.for_each_run_by_entries(start, end, wanted, run)
    }

    /// One PAGEMAP_SCAN walk of [start, end) with the category masks of `masks` (its other
    /// fields are filled here): the kernel walks the page tables and hands over runs of pages
    /// in the categories asked, `on_region` sees each; no entry per page comes to user space.
    fn scan(&self, start: u64, end: u64, masks: PmScanArg, on_region: &mut dyn FnMut(&PageRegion)) -> Result<(), nix::errno::Errno> {
        use std::os::fd::AsRawFd;
        let mut regions = [PageRegion::default(); 512];
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                ..masks
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions into
            // `regions`, both alive across the call; the kernel checks `size`.
            let n = unsafe { pagemap_scan(self.file.as_raw_fd(), &mut arg) }?;
            regions[..n as usize].iter().for_each(&mut *on_region);
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }

    /// PAGEMAP_SCAN: runs of pages that are present or swapped, with their categories.
    fn scan_runs(&self, start: u64, end: u64, wanted: Wanted, run: &mut dyn FnMut(u64, u64)) -> Result<(), SysError> {
        let masks = PmScanArg {
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            // Whether a page is a file's costs the kernel a look at each page's struct page
            // (a cache miss per page): asked only where it decides.
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | if wanted == Wanted::PrivateCopies { PAGE_IS_FILE } else { 0 },
            ..Default::default()
        };
        let mut current: Option<(u64, u64)> = None;
        self.scan(start, end, masks, &mut |r| {
            if !wanted.holds_category(r.categories) {
                return;
            }
            current = match current {
                Some((s, e)) if e == r.start => Some((s, r.end)),
                Some((s, e)) => {
                    run(s, (e - s) / PAGE_SIZE);
                    Some((r.start, r.end))
                }
                None => Some((r.start, r.end)),
            };
        })
        .map_err(|e| SysError::new(format!("ioctl(/proc/{}/pagemap, PAGEMAP_SCAN)", self.pid), e))?;
        if let Some((s, e)) = current {
            run(s, (e - s) / PAGE_SIZE);
        }
        Ok(())
    }

    /// [`Self::for_each_run`] of resident pages, and in the same walk `huge(s)` for each
    /// 2 MiB-aligned stretch `s` a transparent huge page maps whole (as [`Self::huge_stretches`]):
    /// one page-table walk where two were made. Without PAGEMAP_SCAN, runs only.
    pub fn resident_runs_and_huge(
        &self,
        start: u64,
        end: u64,
        mut run: impl FnMut(u64, u64),
        mut huge: impl FnMut(u64),
    ) -> Result<(), SysError> {
        let masks = PmScanArg {
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_HUGE | PAGE_IS_PFNZERO,
            ..Default::default()
        };
        let mut runs = Merged::default();
        let scanned = self.scan(start, end, masks, &mut |r| {
            if r.categories & (PAGE_IS_HUGE | PAGE_IS_PRESENT | PAGE_IS_PFNZERO) == PAGE_IS_HUGE | PAGE_IS_PRESENT {
                whole_stretches(r.start, r.end).for_each(&mut huge);
            }
            runs.add(r.start, r.end, &mut run);
        });
        match scanned {
            Ok(()) => {
                runs.finish(&mut run);
                Ok(())
            }
            Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) => self.for_each_run_by_entries(start, end, Wanted::Resident, run),
            Err(e) => Err(SysError::new(format!("ioctl(/proc/{}/pagemap, PAGEMAP_SCAN)", self.pid), e)),
        }
    }

    /// The 2 MiB-aligned stretches of [start, end) that a transparent huge page maps whole
    /// (PAGEMAP_SCAN's PAGE_IS_HUGE); empty where the kernel has no PAGEMAP_SCAN.
    pub fn huge_stretches(&self, start: u64, end: u64) -> Result<Vec<u64>, SysError> {
        let masks = PmScanArg {
            // Present huge pages, not the huge zero page (a read of untouched memory).
            category_inverted: PAGE_IS_PFNZERO,
            category_mask: PAGE_IS_HUGE | PAGE_IS_PRESENT | PAGE_IS_PFNZERO,
            return_mask: PAGE_IS_HUGE,
            ..Default::default()
        };
        let mut out = Vec::new();
        let scanned = self.scan(start, end, masks, &mut |r| out.extend(whole_stretches(r.start, r.end)));
        match scanned {
            Ok(()) => Ok(out),
            Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) => Ok(Vec::new()),
            Err(e) => Err(SysError::new(format!("ioctl(/proc/{}/pagemap, PAGEMAP_SCAN)", self.pid), e)),
        }
    }

    /// Runs of pages of [start, end) that are present or swapped and not write-protected by a
    /// userfaultfd (PAGEMAP_SCAN's PAGE_IS_WRITTEN): in areas registered for write-protection,
    /// the pages written or faulted in since they were protected.
    pub fn unprotected_runs(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, SysError> {
        let masks = PmScanArg {
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        self.scan(start, end, masks, &mut |r| match out.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => out.push((r.start, r.end)),
        })
        .map_err(|e| SysError::new(format!("ioctl(/proc/{}/pagemap, PAGEMAP_SCAN)", self.pid), e))?;
        Ok(out)
    }

    fn for_each_run_by_entries(&self, start: u64, end: u64, wanted: Wanted, run: impl FnMut(u64, u64)) -> Result<(), SysError> {
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

/// PAGEMAP_SCAN's argument (include/uapi/linux/fs.h, struct pm_scan_arg).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// One run of pages of the same categories (struct page_region).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// The whole 2 MiB-aligned stretches of a huge region [start, end): a huge page mapped by
/// PTEs (partly unmapped) is not one.
fn whole_stretches(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start.next_multiple_of(HUGE_STRETCH);
    (0..).map(move |i| first + i * HUGE_STRETCH).take_while(move |s| s + HUGE_STRETCH <= end)
}

/// The kernel's walk of page tables, as measured on this machine: about 0.5 us to set up each
/// area, and 1.4 ms per GiB of memory walked (5.4 ns a page of 4 KiB).
const WALK_NS_PER_AREA: u64 = 500;
const WALK_NS_PER_GIB: u64 = 1_400_000;
/// Below this much walking one thread walks alone: starting a second costs about 50 us.
const TWO_WALKS_NS: u64 = 1_000_000;

/// Address ranges [start, end), ascending.
pub type Spans = Vec<(u64, u64)>;

fn walk_ns(start: u64, end: u64) -> u64 {
    WALK_NS_PER_AREA + (end - start) / (1 << 20) * WALK_NS_PER_GIB / 1024
}

/// `areas` (ascending, apart) cut in two where half of the walk of their page tables is done,
/// so that two threads can share it; None when one walk is about as quick. The cut is an
/// area's edge or a 2 MiB boundary inside one: a huge page, which lies inside one area, is
/// never cut.
pub fn halves(areas: &[(u64, u64)]) -> Option<(Spans, Spans)> {
    let total: u64 = areas.iter().map(|&(s, e)| walk_ns(s, e)).sum();
    if total < TWO_WALKS_NS {
        return None;
    }
    let mut left = total / 2;
    for (i, &(start, end)) in areas.iter().enumerate() {
        let cost = walk_ns(start, end);
        if cost < left {
            left -= cost;
            continue;
        }
        let into = (left.saturating_sub(WALK_NS_PER_AREA) * 1024 / WALK_NS_PER_GIB) << 20;
        let cut = ((start + into) / HUGE_STRETCH * HUGE_STRETCH).clamp(start, end);
        let mut first = areas[..i].to_vec();
        let mut second = areas[i + 1..].to_vec();
        if cut > start {
            first.push((start, cut));
        }
        if cut < end {
            second.insert(0, (cut, end));
        }
        return (!first.is_empty() && !second.is_empty()).then_some((first, second));
    }
    None
}

/// `walk` of each of the two [`halves`] of `areas` on its own thread, or of all of them on
/// this one: the results in address order.
pub fn walk_in_two<R: Send>(areas: &[(u64, u64)], walk: impl Fn(&[(u64, u64)]) -> R + Sync) -> Vec<R> {
    let Some((first, second)) = halves(areas) else { return vec![walk(areas)] };
    std::thread::scope(|s| {
        let other = std::thread::Builder::new().name("crust-walk".into()).spawn_scoped(s, || walk(&second));
        let mine = walk(&first);
        // No thread: the second half here, after the first.
        let theirs = match other {
            Ok(h) => h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => walk(&second),
        };
        vec![mine, theirs]
    })
}

/// Adjacent regions joined into runs, each run handed over as (address, pages) once it ends.
#[derive(Default)]
struct Merged(Option<(u64, u64)>);

impl Merged {
    fn add(&mut self, start: u64, end: u64, run: &mut impl FnMut(u64, u64)) {
        self.0 = match self.0 {
            Some((s, e)) if e == start => Some((s, end)),
            Some((s, e)) => {
                run(s, (e - s) / PAGE_SIZE);
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }

    fn finish(self, run: &mut impl FnMut(u64, u64)) {
        if let Some((s, e)) = self.0 {
            run(s, (e - s) / PAGE_SIZE);
        }
    }
}

/// Not write-protected by a userfaultfd (present or swapped pages).
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE_IS_HUGE: u64 = 1 << 6;
/// What one PMD maps on x86_64: a transparent huge page.
pub const HUGE_STRETCH: u64 = 2 << 20;

nix::ioctl_readwrite!(pagemap_scan, b'f', 16, PmScanArg);

impl Wanted {
    /// Like [`Self::holds`], for PAGEMAP_SCAN's categories (PAGE_IS_FILE is pagemap's PM_FILE:
    /// a page that is not anonymous).
    fn holds_category(self, categories: u64) -> bool {
        match self {
            Wanted::Resident => categories & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) != 0,
            Wanted::PrivateCopies => {
                categories & PAGE_IS_SWAPPED != 0 || (categories & PAGE_IS_PRESENT != 0 && categories & PAGE_IS_FILE == 0)
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two walks share the work: little work stays in one; the halves cover every area exactly
    /// once, and a cut inside an area is at a 2 MiB boundary.
    #[test]
    fn halves_cover_the_areas_and_cut_only_at_edges_or_2_mib() {
        const MIB: u64 = 1 << 20;
        assert_eq!(halves(&[(0x1000_0000, 0x1000_0000 + 64 * MIB)]), None);
        assert_eq!(halves(&(0..100u64).map(|i| (i * 0x20000, i * 0x20000 + 0x10000)).collect::<Vec<_>>()), None);
        let cases: Vec<Vec<(u64, u64)>> = vec![
            vec![(0x7f00_0000_0000, 0x7f00_0000_0000 + 4096 * MIB)],
            vec![(0x1000, 0x5000), (0x7f00_0000_1000, 0x7f00_0000_1000 + 3000 * MIB), (0x7fff_0000_0000, 0x7fff_0000_8000)],
            (0..16384u64).map(|i| (0x7000_0000_0000 + i * 0x20000, 0x7000_0000_0000 + i * 0x20000 + 0x10000)).collect(),
        ];
        for areas in cases {
            let (first, second) = halves(&areas).expect("enough work for two");
            let mut joined = first.clone();
            match (joined.last_mut(), second.first()) {
                (Some(last), Some(next)) if last.1 == next.0 => {
                    assert_eq!(next.0 % HUGE_STRETCH, 0, "a cut inside an area at {:#x}", next.0);
                    last.1 = second[0].1;
                    joined.extend(&second[1..]);
                }
                _ => joined.extend(&second),
            }
            assert_eq!(joined, areas);
            let work = |part: &[(u64, u64)]| part.iter().map(|&(s, e)| walk_ns(s, e)).sum::<u64>() as f64;
            let share = work(&first) / (work(&first) + work(&second));
            assert!((0.4..0.6).contains(&share), "{share}");
        }
    }

    /// The kernel's runs (PAGEMAP_SCAN) are the runs of the page-by-page entries.
    #[test]
    fn scanned_runs_are_the_runs_of_the_entries() {
        let mut region = crate::sys::region::AnonRegion::new(16 << 20, false).unwrap();
        let bytes = region.as_mut_slice();
        for page in (0..bytes.len() / 4096).filter(|p| p % 7 == 0 || p % 11 < 3 || (1000..1400).contains(p)) {
            bytes[page * 4096] = 1;
        }
        let (start, end) = (region.address(), region.address() + (16 << 20));
        let map = PageMap::open(std::process::id() as i32).unwrap();
        let (mut scanned, mut read) = (Vec::new(), Vec::new());
        map.scan_runs(start, end, Wanted::Resident, &mut |a, n| scanned.push((a, n))).unwrap();
        map.for_each_run_by_entries(start, end, Wanted::Resident, |a, n| read.push((a, n))).unwrap();
        assert_eq!(scanned, read);
        assert!(read.len() > 100, "{} runs", read.len());
    }
}
