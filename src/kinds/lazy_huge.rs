//! Huge pages in a lazy restore: a stretch of 2 MiB that a transparent huge page mapped at dump
//! time (the image's `huge_stretches`) is moved in whole by the process's mover where it can be
//! (kinds/lazy_move.rs). Else UFFDIO_COPY places its 4 KiB pages, and it is made huge again once
//! all its pages are in: crust asks the kernel to collapse it, with process_madvise(pidfd,
//! MADV_COLLAPSE). See docs/lazy-restore.md, "Huge pages".
//!
//! Only stretches whose every page is present can collapse while the area is registered with
//! the userfaultfd (the kernel refuses a missing or zero page there, EBUSY), which is what keeps
//! a collapse from ever inventing a page; a page the program faults first is placed as a 4 KiB
//! page and collapsed with its stretch later. The registration stays across the collapse (the
//! area keeps `um`). A collapse that fails (no free huge page: ENOMEM) leaves the stretch in
//! 4 KiB pages with the right contents; it is counted and said at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use crate::image::proto::Vma;
use crate::sys::PAGE_SIZE;
use crate::sys::pagemap::HUGE_STRETCH;

/// Stretches collapsed in one call (one call drains the per-CPU page lists once, a wait on
/// every core's worker: batching pays it once for many stretches), and the number ready that
/// starts a collapse while the fill runs. Small enough that a fault waits little behind it.
const BATCH: usize = 8;
/// Tries of a stretch whose pages were busy for a moment (EAGAIN).
const TRIES: u32 = 3;

/// The stretches of a lazy area to make huge once their pages are in: those a huge page
/// mapped whole at dump time, or, for an image without that list, every whole stretch of an
/// area that had huge pages; only where the image holds every page of the stretch, and not in
/// an area advised MADV_NOHUGEPAGE (the kernel refuses it there).
pub fn stretches_to_collapse(vma: &Vma) -> Vec<u64> {
    if vma.no_huge_page_advised {
        return Vec::new();
    }
    let candidates: Vec<u64> = if !vma.huge_stretches.is_empty() {
        vma.huge_stretches.clone()
    } else if vma.had_huge_pages {
        let first = vma.start.next_multiple_of(HUGE_STRETCH);
        (0..).map(|i| first + i * HUGE_STRETCH).take_while(|s| s + HUGE_STRETCH <= vma.end).collect()
    } else {
        Vec::new()
    };
    candidates.into_iter().filter(|&s| saved_bytes(vma, s, s + HUGE_STRETCH) == HUGE_STRETCH).collect()
}

/// Bytes of `start..end` that the area's saved runs hold.
fn saved_bytes(vma: &Vma, start: u64, end: u64) -> u64 {
    let first = vma.pages.partition_point(|r| r.address + r.pages * PAGE_SIZE <= start);
    vma.pages[first..]
        .iter()
        .take_while(|r| r.address < end)
        .map(|r| (r.address + r.pages * PAGE_SIZE).min(end).saturating_sub(r.address.max(start)))
        .sum()
}

/// The huge stretches of one address space, from owed to collapsed.
#[derive(Default)]
pub struct HugeStretches {
    /// Some of their pages are still owed.
    pending: BTreeSet<u64>,
    /// Every page is in: to collapse.
    ready: BTreeSet<u64>,
    tries: HashMap<u64, u32>,
    /// Placed whole by the process's mover (UFFDIO_MOVE, kinds/lazy_move.rs): huge already.
    moved: u64,
    collapsed: u64,
    /// Time spent in the collapse calls.
    spent: std::time::Duration,
    /// Stretches left in 4 KiB pages, by the errno of their collapse.
    stayed_small: BTreeMap<i32, u64>,
}

impl HugeStretches {
    pub fn new(stretches: impl IntoIterator<Item = u64>) -> HugeStretches {
        HugeStretches { pending: stretches.into_iter().collect(), ..Default::default() }
    }

    /// Pages of `start..end` were placed: the stretches there whose pages are all in now
    /// (`owes(s, e)`: whether any page of s..e is still owed) become ready.
    pub fn placed(&mut self, start: u64, end: u64, owes: impl Fn(u64, u64) -> bool) {
        let from = start - start % HUGE_STRETCH;
        let hit: Vec<u64> = self.pending.range(from..end).copied().collect();
        for s in hit {
            if !owes(s, s + HUGE_STRETCH) {
                self.pending.remove(&s);
                self.ready.insert(s);
            }
        }
    }

    /// Whether `stretch` still waits for its pages (none of it collapsed, moved or forgotten).
    pub fn is_pending(&self, stretch: u64) -> bool {
        self.pending.contains(&stretch)
    }

    /// The pending stretches from `start` (inclusive) to `end` (exclusive).
    pub fn pending_in(&self, start: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        self.pending.range(start..end).copied()
    }

    /// The stretches of `start..end` were moved in whole, a huge page each.
    pub fn moved(&mut self, start: u64, end: u64) {
        let hit: Vec<u64> = self.pending.range(start..end).copied().collect();
        for s in hit {
            self.pending.remove(&s);
            self.moved += 1;
        }
    }

    /// The program dropped, unmapped or moved `start..end`: its stretches are no longer the
    /// image's to make huge (the original would have split them as well).
    pub fn forget(&mut self, start: u64, end: u64) {
        let from = start - start % HUGE_STRETCH;
        for set in [&mut self.pending, &mut self.ready] {
            let hit: Vec<u64> = set.range(from..end).copied().collect();
            for s in hit {
                set.remove(&s);
            }
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether to collapse now: a batch is ready, or some are and nothing else is to be done
    /// (`idle`: the fill has nothing more for this process, or waits).
    pub fn due(&self, idle: bool) -> bool {
        self.ready.len() >= BATCH || (idle && self.has_ready())
    }

    /// Collapses the ready stretches, a run of adjacent ones per call. Err only when the
    /// process is gone (ESRCH).
    pub fn collapse(&mut self, pidfd: BorrowedFd, pid: u32) -> Result<(), Errno> {
        let started = std::time::Instant::now();
        let done = self.collapse_ready(pidfd, pid);
        self.spent += started.elapsed();
        done
    }

    fn collapse_ready(&mut self, pidfd: BorrowedFd, pid: u32) -> Result<(), Errno> {
        let mut ready: Vec<u64> = std::mem::take(&mut self.ready).into_iter().collect();
        // Test only: CRUST_FAULT=lazy-collapse:N:fail makes the Nth stretch fail as if no huge
        // page were free.
        ready.retain(|&s| {
            crate::fault::point("lazy-collapse").is_ok() || {
                self.failed(pid, s, Errno::ENOMEM);
                false
            }
        });
        for run in adjacent_runs(&ready) {
            let (first, n) = (run[0], run.len() as u64);
            match crate::sys::pidfd::collapse_huge(pidfd, first, n * HUGE_STRETCH) {
                Ok(()) => self.collapsed += n,
                Err(Errno::ESRCH) => return Err(Errno::ESRCH),
                Err(e) if n == 1 => self.failed(pid, first, e),
                // Which one failed is not said: each again on its own (those collapsed
                // already succeed at once).
                Err(_) => {
                    for &s in run {
                        match crate::sys::pidfd::collapse_huge(pidfd, s, HUGE_STRETCH) {
                            Ok(()) => self.collapsed += 1,
                            Err(Errno::ESRCH) => return Err(Errno::ESRCH),
                            Err(e) => self.failed(pid, s, e),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn failed(&mut self, pid: u32, stretch: u64, e: Errno) {
        let tries = self.tries.entry(stretch).or_insert(0);
        *tries += 1;
        if e == Errno::EAGAIN && *tries < TRIES {
            self.ready.insert(stretch);
            return;
        }
        tracing::debug!(pid, "MADV_COLLAPSE of {stretch:#x}: {e}: the stretch stays in 4 KiB pages");
        *self.stayed_small.entry(e as i32).or_insert(0) += 1;
    }

    /// What became of the huge pages, said once the process has all its pages: in crust's
    /// log, and in the kernel log when some stayed small (the detached helper has no other).
    pub fn report(&self, pid: u32) {
        let small: u64 = self.stayed_small.values().sum();
        if self.collapsed + self.moved + small == 0 {
            return;
        }
        if small == 0 {
            let ms = self.spent.as_millis() as u64;
            tracing::info!(
                pid,
                moved = self.moved,
                collapsed = self.collapsed,
                collapse_ms = ms,
                "lazy restore: every huge page of the image is huge again"
            );
            return;
        }
        let why: Vec<String> = self.stayed_small.iter().map(|(e, n)| format!("{:?} x{n}", Errno::from_raw(*e))).collect();
        let message = format!(
            "lazy restore: pid {pid}: {small} of {} huge pages stayed in 4 KiB pages (MADV_COLLAPSE: {}); their contents are right",
            self.collapsed + self.moved + small,
            why.join(", ")
        );
        tracing::warn!("{message}");
        super::lazy_pages::kmsg(&format!("crust-lazypages: {message}"));
    }
}

/// Runs of adjacent stretches (sorted), at most BATCH each.
pub fn adjacent_runs(sorted: &[u64]) -> Vec<&[u64]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        let breaks = i == sorted.len() || sorted[i] != sorted[i - 1] + HUGE_STRETCH || i - start == BATCH;
        if breaks {
            out.push(&sorted[start..i]);
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::proto::{PageRun, vma::Kind as VmaKind};

    const H: u64 = HUGE_STRETCH;

    fn area(start: u64, end: u64, runs: &[(u64, u64)]) -> Vma {
        let mut v = Vma { start, end, prot: 3, ..Default::default() };
        v.set_kind(VmaKind::PrivateAnonymous);
        v.pages = runs.iter().map(|&(address, pages)| PageRun { address, pages, file_offset: 0 }).collect();
        v
    }

    #[test]
    fn only_recorded_stretches_the_image_holds_whole_are_collapsed() {
        // Stretch 0 whole, stretch 1 missing its last page, stretch 2 whole in two runs.
        let mut v = area(0, 4 * H, &[(0, 1023), (2 * H, 100), (2 * H + 100 * PAGE_SIZE, 412)]);
        v.huge_stretches = vec![0, H, 2 * H];
        assert_eq!(stretches_to_collapse(&v), vec![0, 2 * H]);
        v.no_huge_page_advised = true;
        assert!(stretches_to_collapse(&v).is_empty());
    }

    #[test]
    fn an_image_without_the_list_collapses_every_whole_stretch_of_a_huge_area() {
        let mut v = area(H / 2, 3 * H + 5 * PAGE_SIZE, &[(H / 2, (3 * H - H / 2) / PAGE_SIZE)]);
        assert!(stretches_to_collapse(&v).is_empty(), "no huge pages at dump time: none");
        v.had_huge_pages = true;
        assert_eq!(stretches_to_collapse(&v), vec![H, 2 * H]);
    }

    #[test]
    fn a_stretch_is_ready_when_its_last_page_is_in_and_forgotten_when_dropped() {
        let mut h = HugeStretches::new([0, H, 2 * H]);
        h.placed(0, H / 2, |_, _| true);
        assert!(!h.has_ready());
        h.placed(H / 2, 2 * H, |s, _| s == H);
        assert_eq!(h.ready.iter().copied().collect::<Vec<_>>(), vec![0]);
        h.forget(H + 4096, H + 8192);
        h.placed(H, 3 * H, |_, _| false);
        assert_eq!(h.ready.iter().copied().collect::<Vec<_>>(), vec![0, 2 * H]);
        assert!(h.pending.is_empty());
    }

    #[test]
    fn adjacent_runs_break_at_gaps_and_at_the_batch_size() {
        let s: Vec<u64> = (0..10).chain(12..13).map(|i| i * H).collect();
        let lens: Vec<usize> = adjacent_runs(&s).iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![8, 2, 1]);
    }
}
