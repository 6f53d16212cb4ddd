//! The page fill engine of restore, the mirror of page_copy: crust places a process's pages
//! itself, on every core, before the process ever runs. One worker per core takes the next
//! 1 MiB chunk of the page file, reads it into a buffer that stays in the core's cache
//! (pread), checks it against its BLAKE3 in the inventory, and places the chunk's pages with
//! UFFDIO_COPY on a userfaultfd of the process: the bytes placed are the bytes checked.
//!
//! Why userfaultfd and not the process's own preadv (the fallback, kinds/memory.rs): a page
//! that preadv (or process_vm_writev) writes into is first faulted in and zeroed by the
//! kernel, then copied into; UFFDIO_COPY allocates the page and copies into it without
//! zeroing it, and two crust threads can place pages of one address space at once. The
//! registration only serves the placing: the userfaultfd is closed before the process runs,
//! which ends it (pages never placed are ordinary zero-fill-on-demand memory again).
//!
//! Only large private anonymous areas (or stretches of small ones side by side, placed the same
//! way) are filled so ([`partition`]): UFFDIO_COPY cannot place pages into file mappings or over
//! present pages (inherited areas), and costs two ioctls per stretch and one per area (a lone
//! small area is cheaper with preadv's 1024 runs per call). Runs of an area that follow one
//! another in memory and in the page file are placed by one copy. UFFDIO_COPY places pages
//! whatever the area's protection, so small areas side by side that it fills get their final
//! protection before their pages are in (made read-only once filled, each would cost far more:
//! see memory.rs, AtFinal).
//!
//! UFFDIO_COPY places 4 KiB pages only, so an area advised MADV_HUGEPAGE is written with
//! process_vm_writev instead ([`Placing::Write`]): the first write into each 2 MiB stretch
//! faults a huge page, zeroed then copied into, as the process's own preadv would, but from
//! every core at once, with the bytes checked in the worker's cache (docs/memory-dump.md). An
//! area that had huge pages without the advice stays with preadv (its stretches are collapsed
//! afterwards).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;

use super::RestoreCtx;
use super::page_copy::Piece;
use crate::image::chunks;
use crate::image::proto::{DataFile, Mm, Vma, vma::Kind as VmaKind};
use crate::sys::PAGE_SIZE;
use crate::sys::remote::{Call, RemoteTask};
use crate::sys::uffd;

/// An area's saved pages must be at least this large to be placed by crust.
const MIN_AREA_BYTES: u64 = 1 << 20;
/// A process's pages placed by crust must be at least this large, else its fill is left to
/// preadv (a userfaultfd and a worker thread cost about a tenth of a millisecond).
const MIN_PROCESS_BYTES: u64 = 8 << 20;

/// How crust places the pages of an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placing {
    /// UFFDIO_COPY: each page allocated and copied into, never zeroed.
    Copy,
    /// process_vm_writev, for an area advised MADV_HUGEPAGE: the first write into a 2 MiB
    /// stretch faults a huge page (UFFDIO_COPY would place 4 KiB pages).
    Write,
}

/// Splits `vmas` (in address order) into the areas whose pages crust places itself and those
/// the process reads in. Adjacent areas placed the same way count as one (16384 areas of 64 KiB
/// side by side are filled as one gigabyte, not read in by preadv for being small).
pub fn partition<'a>(vmas: &[&'a Vma]) -> (Vec<&'a Vma>, Vec<&'a Vma>) {
    let mut chosen = vec![false; vmas.len()];
    let mut total = 0;
    let mut i = 0;
    while i < vmas.len() {
        let Some(how) = placing(vmas[i]) else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < vmas.len() && placing(vmas[j]) == Some(how) && vmas[j - 1].end == vmas[j].start {
            j += 1;
        }
        let bytes: u64 = vmas[i..j].iter().map(|v| saved_bytes(v)).sum();
        if bytes >= MIN_AREA_BYTES {
            chosen[i..j].iter_mut().for_each(|c| *c = true);
            total += bytes;
        }
        i = j;
    }
    if total < MIN_PROCESS_BYTES {
        return (Vec::new(), vmas.to_vec());
    }
    let (mut by_crust, mut by_process) = (Vec::new(), Vec::new());
    for (v, chosen) in vmas.iter().zip(chosen) {
        if chosen { by_crust.push(*v) } else { by_process.push(*v) }
    }
    (by_crust, by_process)
}

/// Whether crust places the pages of `vma` (if [`partition`] gives it to crust) with
/// UFFDIO_COPY, which places pages whatever the area's protection: the area can be mapped
/// with its final protection (see memory.rs, AtFinal).
pub fn copies_into(vma: &Vma) -> bool {
    placing(vma) == Some(Placing::Copy)
}

/// How crust would place the pages of `vma`, were it large enough (see [`partition`]).
fn placing(vma: &Vma) -> Option<Placing> {
    let ours = vma.kind() == VmaKind::PrivateAnonymous && !vma.inherited && !vma.unaccounted && !vma.droppable;
    match (ours, vma.huge_page_advised, vma.had_huge_pages) {
        (false, _, _) => None,
        (true, true, _) => Some(Placing::Write),
        // Collapsed after the fill (memory.rs), from pages the process reads in.
        (true, false, true) => None,
        (true, false, false) => Some(Placing::Copy),
    }
}

fn saved_bytes(vma: &Vma) -> u64 {
    vma.pages.iter().map(|r| r.pages * PAGE_SIZE).sum()
}

/// The chunks of the page file that pages read in by the process's own preadv come from: those
/// the restore must verify before the tree runs (crust's fill and the lazy page server check
/// theirs as they read them). `lazy`: areas the lazy page server fills are left out too.
pub fn preadv_chunks(mm: &Mm, lazy: bool, chunk_size: u64) -> Vec<usize> {
    let eager: Vec<&Vma> = mm.vmas.iter().filter(|v| !(lazy && super::lazy_pages::is_lazy(v))).collect();
    let (_, by_process) = partition(&eager);
    chunks_of(&by_process, chunk_size)
}

/// The chunks of the page file the saved pages of `vmas` lie in, sorted.
pub fn chunks_of(vmas: &[&Vma], chunk_size: u64) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for run in vmas.iter().flat_map(|v| &v.pages) {
        let (first, end) = (run.file_offset / chunk_size, (run.file_offset + run.pages * PAGE_SIZE).div_ceil(chunk_size));
        out.extend((first..end).map(|c| c as usize));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A userfaultfd of the process of `ctx`, registered for `vmas` in MISSING mode: made inside
/// the process (a userfaultfd belongs to the address space it is made in), taken by crust,
/// and closed in the process at once (its fd table stays the image's). Err: the kernel
/// refuses (vm.unprivileged_userfaultfd, a kernel without it): the caller falls back.
fn registered_userfaultfd(ctx: &mut RestoreCtx, vmas: &[&Vma]) -> Result<OwnedFd> {
    let pid = ctx.pid.as_raw();
    // (A test's CRUST_FAULT=restore-pages-userfaultfd:1:fail stands for a kernel refusal.)
    crate::fault::point("restore-pages-userfaultfd")?;
    let fd = ctx.remote.syscall("userfaultfd", libc::SYS_userfaultfd, &[uffd::CREATE_FLAGS])?;
    let taken = crate::sys::pidfd::pidfd_getfd(&ctx.pidfd, pid, fd as i32);
    ctx.remote.syscall("close(userfaultfd)", libc::SYS_close, &[fd])?;
    let fd = taken?;
    uffd::api(fd.as_fd(), 0).map_err(|e| anyhow::anyhow!("pid {pid}: userfaultfd UFFDIO_API: {e}"))?;
    // Adjacent areas in one call.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for vma in vmas {
        match ranges.last_mut() {
            Some(last) if last.1 == vma.start => last.1 = vma.end,
            _ => ranges.push((vma.start, vma.end)),
        }
    }
    for (start, end) in ranges {
        uffd::register_missing(fd.as_fd(), start, end - start)
            .map_err(|e| anyhow::anyhow!("pid {pid}: userfaultfd UFFDIO_REGISTER of {start:#x}-{end:#x}: {e}"))?;
    }
    Ok(fd)
}

/// Places the pages of `vmas` (those [`partition`] gives crust) from the page file at `path`, whose
/// inventory record is `record`, while the process runs `shaping` (memory.rs, Shaping: the
/// final protections of areas pages are copied into; run in every case but an error).
/// Ok(false): the kernel refused a userfaultfd, nothing was placed, and the caller reads the
/// pages in itself (having checked their chunks).
pub fn fill(ctx: &mut RestoreCtx, vmas: &[&Vma], path: &Path, record: &DataFile, shaping: &[Call]) -> Result<bool> {
    let pid = ctx.pid.as_raw();
    let t0 = std::time::Instant::now();
    let copied: Vec<&Vma> = vmas.iter().copied().filter(|v| placing(v) == Some(Placing::Copy)).collect();
    let shape = |remote: &mut RemoteTask| {
        remote.syscalls("mprotect", shaping).with_context(|| format!("pid {pid}: the final protection of its areas"))
    };
    // Registered before the areas are split by `shaping`: one area for the kernel to mark.
    let uffd = match copied.is_empty() {
        true => None,
        false => match registered_userfaultfd(ctx, &copied) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::info!(pid, "pages read in by the process instead: {e:#}");
                shape(ctx.remote)?;
                return Ok(false);
            }
        },
    };
    // The very file the restore checked (see ImageDir::data_file).
    let image = ctx.image;
    let file = image.data_file(&record.name)?;
    chunks::check_layout(path, record, record.size)?;
    let pieces = pieces_of(vmas);
    let plan = by_chunk(&pieces, record.chunk_size)?;
    let claims = Claims::new(plan.len());
    let into = Target { pid, uffd: uffd.as_ref().map(|u| u.as_fd()) };
    let work = |from_the_end: bool| -> Result<()> {
        let mut buffer = Vec::new();
        while let Some(position) = claims.take(from_the_end) {
            crate::interrupt::check()?;
            let (index, pieces) = &plan[position];
            place_chunk(into, (&file, path, record), *index, pieces, &mut buffer)?;
            crate::fault::point("restore-pages-placed")?;
        }
        Ok(())
    };
    // The calling thread, crust's tracer of the process, runs `shaping` there first.
    let remote = &mut *ctx.remote;
    let first = || {
        let shaped = crate::fault::point("restore-final-protections")
            .and_then(|()| crate::timing::step("restore: final protections while filling", || shape(remote)));
        if shaped.is_err() {
            claims.stop();
        }
        shaped
    };
    super::page_copy::on_workers_after(super::page_copy::workers(), "page fill", first, |w| work(w % 2 == 1))?;
    let bytes: u64 = pieces.iter().map(|(p, _)| p.len).sum();
    tracing::info!(pid, ms = t0.elapsed().as_secs_f64() * 1e3, bytes, "pages placed by crust");
    // Closing the last copy ends the registration: the process keeps no trace of it.
    drop(uffd);
    Ok(true)
}

/// The pieces to place, with how: the runs of each area, those that follow one another in
/// memory and in the page file joined. Never across areas: one UFFDIO_COPY may not cross the
/// edge of a kernel area (ENOENT), and areas side by side in the image are apart in the
/// kernel while they are filled (mapped with their protections, or apart for their flags).
fn pieces_of(vmas: &[&Vma]) -> Vec<(Piece, Placing)> {
    let mut pieces: Vec<(Piece, Placing)> = Vec::new();
    for (v, how) in vmas.iter().filter_map(|v| Some((v, placing(v)?))) {
        let first = pieces.len();
        for r in &v.pages {
            let len = r.pages * PAGE_SIZE;
            match pieces[first..].last_mut() {
                Some((p, _)) if p.address + p.len == r.address && p.file_offset + p.len == r.file_offset => p.len += len,
                _ => pieces.push((Piece { address: r.address, len, file_offset: r.file_offset }, how)),
            }
        }
    }
    pieces
}

/// The chunks not claimed yet, [front, back): half the workers take them from the front, the
/// others from the back, so that two workers seldom place pages under the same page table
/// (2 MiB: two chunks) and contend for its lock.
struct Claims(Mutex<(usize, usize)>);

impl Claims {
    fn new(len: usize) -> Claims {
        Claims(Mutex::new((0, len)))
    }

    /// No chunk is given out any more.
    fn stop(&self) {
        let mut range = self.0.lock().unwrap_or_else(|e| e.into_inner());
        range.0 = range.1;
    }

    fn take(&self, from_the_end: bool) -> Option<usize> {
        let mut range = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (front, back) = &mut *range;
        if *front >= *back {
            return None;
        }
        if from_the_end {
            *back -= 1;
            Some(*back)
        } else {
            *front += 1;
            Some(*front - 1)
        }
    }
}

/// A chunk of the page file (its index) and the pieces placed from it, each with its tag.
type ChunkPlan<T> = (usize, Vec<(Piece, T)>);

/// The pieces by chunk of the page file, in file order.
fn by_chunk<T: Copy>(pieces: &[(Piece, T)], chunk: u64) -> Result<Vec<ChunkPlan<T>>> {
    if chunk == 0 {
        bail!("page file chunk size 0");
    }
    let mut out: Vec<ChunkPlan<T>> = Vec::new();
    for &(ref p, tag) in pieces {
        let mut done = 0;
        while done < p.len {
            let at = p.file_offset + done;
            let n = (p.len - done).min(chunk - at % chunk);
            let index = (at / chunk) as usize;
            let piece = Piece { address: p.address + done, len: n, file_offset: at };
            match out.iter_mut().rev().find(|(i, _)| *i == index) {
                Some((_, list)) => list.push((piece, tag)),
                None => out.push((index, vec![(piece, tag)])),
            }
            done += n;
        }
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

/// Where the pages go: the process, and its userfaultfd when some are placed with UFFDIO_COPY.
#[derive(Clone, Copy)]
struct Target<'a> {
    pid: i32,
    uffd: Option<BorrowedFd<'a>>,
}

/// Reads chunk `index` of the page file, checks it, and places `pieces` (inside it), each as
/// its area is placed.
fn place_chunk(
    into: Target,
    source: (&File, &Path, &DataFile),
    index: usize,
    pieces: &[(Piece, Placing)],
    buffer: &mut Vec<u8>,
) -> Result<()> {
    let (file, path, record) = source;
    let pid = into.pid;
    let start = index as u64 * record.chunk_size;
    let len = record.chunk_size.min(record.size.saturating_sub(start)) as usize;
    buffer.resize(len, 0);
    file.read_exact_at(buffer, start).with_context(|| format!("pid {pid}: reading {} at {start}", path.display()))?;
    chunks::verify_chunk(path, record, index, buffer)?;
    for (p, how) in pieces {
        let from = (p.file_offset - start) as usize;
        let Some(bytes) = buffer.get(from..from + p.len as usize) else {
            bail!("pid {pid}: pages at {:#x} lie past the end of {} ({} bytes)", p.address, path.display(), record.size);
        };
        match (how, into.uffd) {
            (Placing::Copy, Some(uffd)) => place(into, uffd, p.address, bytes)?,
            (Placing::Copy, None) => bail!("pid {pid}: pages at {:#x} to place without a userfaultfd", p.address),
            (Placing::Write, _) => write(pid, p.address, bytes)?,
        }
    }
    crate::progress::copied(pieces.iter().map(|(p, _)| p.len).sum());
    Ok(())
}

/// process_vm_writev of `bytes` to `address`, until all are written (a write may stop short).
fn write(pid: i32, address: u64, bytes: &[u8]) -> Result<()> {
    Ok(crate::sys::write_process_memory(pid, address, &[bytes])?)
}

/// UFFDIO_COPY of `bytes` to `address`, until all are placed (a copy may stop short).
fn place(into: Target, uffd: BorrowedFd, address: u64, bytes: &[u8]) -> Result<()> {
    let pid = into.pid;
    let mut done = 0;
    // A stopped process changes nothing in its address space: a copy that makes no progress
    // (EAGAIN, EINTR) is retried a few times only.
    let mut retries = 0;
    while done < bytes.len() {
        let at = address + done as u64;
        match uffd::copy(uffd, at, &bytes[done..]) {
            Ok(n) => done += n as usize,
            Err(Errno::EINTR | Errno::EAGAIN) if retries < 100 => retries += 1,
            Err(e) => bail!("pid {pid}: userfaultfd UFFDIO_COPY of {} bytes at {at:#x}: {e}", bytes.len() - done),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_from_both_ends_meet_once() {
        let claims = Claims::new(5);
        let got = [claims.take(false), claims.take(true), claims.take(true), claims.take(false), claims.take(true), claims.take(false)];
        assert_eq!(got, [Some(0), Some(4), Some(3), Some(1), Some(2), None]);
        assert_eq!(Claims::new(0).take(true), None);
    }

    #[test]
    fn pieces_join_runs_of_one_area_never_runs_of_areas_side_by_side() {
        use crate::image::proto::PageRun;
        let area = |start: u64, runs: &[(u64, u64)]| {
            let mut v = Vma { start, end: start + 0x10000, prot: 3, ..Default::default() };
            v.set_kind(VmaKind::PrivateAnonymous);
            v.pages = runs.iter().map(|&(address, pages)| PageRun { address, pages, file_offset: address - 0x10000 }).collect();
            v
        };
        // Two runs of the first area that follow one another, then the next area's run right
        // after them in memory and in the file.
        let (a, b) = (area(0x10000, &[(0x10000, 2), (0x12000, 14)]), area(0x20000, &[(0x20000, 16)]));
        let pieces = pieces_of(&[&a, &b]);
        let got: Vec<(u64, u64, u64)> = pieces.iter().map(|(p, _)| (p.address, p.len, p.file_offset)).collect();
        assert_eq!(got, vec![(0x10000, 0x10000, 0), (0x20000, 0x10000, 0x10000)]);
    }

    #[test]
    fn pieces_are_grouped_by_chunk_in_file_order() {
        let c = 1u64 << 20;
        let pieces = [
            (Piece { address: 0x10000, len: c + 8192, file_offset: c - 4096 }, 'a'),
            (Piece { address: 0x900000, len: 4096, file_offset: 3 * c }, 'b'),
        ];
        let plan = by_chunk(&pieces, c).unwrap();
        let indices: Vec<usize> = plan.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, vec![0, 1, 2, 3]);
        assert_eq!(plan[0].1, vec![(Piece { address: 0x10000, len: 4096, file_offset: c - 4096 }, 'a')]);
        assert_eq!(plan[1].1, vec![(Piece { address: 0x11000, len: c, file_offset: c }, 'a')]);
        assert_eq!(plan[2].1, vec![(Piece { address: 0x11000 + c, len: 4096, file_offset: 2 * c }, 'a')]);
        assert_eq!(plan[3].1, vec![(Piece { address: 0x900000, len: 4096, file_offset: 3 * c }, 'b')]);
    }

    #[test]
    fn preadv_chunks_leave_lazy_areas_to_the_server() {
        use crate::image::proto::PageRun;
        let mut lazy = Vma { start: 0, end: 0x400000, prot: 3, ..Default::default() };
        lazy.set_kind(VmaKind::PrivateAnonymous);
        lazy.pages = vec![PageRun { address: 0, pages: 512, file_offset: 0 }];
        let mut file = Vma { start: 0x400000, end: 0x401000, prot: 3, ..Default::default() };
        file.set_kind(VmaKind::PrivateFile);
        file.pages = vec![PageRun { address: 0x400000, pages: 1, file_offset: 0x200000 }];
        let mm = Mm { vmas: vec![lazy, file], ..Default::default() };
        assert_eq!(super::preadv_chunks(&mm, true, 1 << 20), vec![2]);
        assert_eq!(super::preadv_chunks(&mm, false, 1 << 20), vec![0, 1, 2]);
    }

    #[test]
    fn preadv_chunks_leave_large_anonymous_areas_to_crust() {
        use crate::image::proto::PageRun;
        let mut big = Vma { start: 0, end: 0x1000000, prot: 3, ..Default::default() };
        big.set_kind(VmaKind::PrivateAnonymous);
        big.pages = vec![PageRun { address: 0, pages: 4096, file_offset: 0 }];
        let mut huge = big.clone();
        huge.had_huge_pages = true;
        // A small area apart (a page between) is read in by the process.
        let mut apart = Vma { start: 0x1001000, end: 0x1002000, prot: 3, ..Default::default() };
        apart.set_kind(VmaKind::PrivateAnonymous);
        apart.pages = vec![PageRun { address: 0x1001000, pages: 1, file_offset: 0x1000000 }];
        let mm = Mm { vmas: vec![big.clone(), apart.clone()], ..Default::default() };
        assert_eq!(preadv_chunks(&mm, false, 1 << 20), vec![16]);
        // Right after the large one, it is part of its stretch: crust places both.
        let mut small = apart.clone();
        (small.start, small.end, small.pages[0].address) = (0x1000000, 0x1001000, 0x1000000);
        let mm = Mm { vmas: vec![big.clone(), small.clone()], ..Default::default() };
        assert_eq!(preadv_chunks(&mm, false, 1 << 20), Vec::<usize>::new());
        // Many small areas side by side make a stretch large enough (16 MiB of 64 KiB areas).
        let areas: Vec<Vma> = (0..256u64)
            .map(|i| {
                let mut v = small.clone();
                (v.start, v.end) = (i * 0x10000, (i + 1) * 0x10000);
                v.pages = vec![PageRun { address: v.start, pages: 16, file_offset: i * 0x10000 }];
                v
            })
            .collect();
        assert_eq!(preadv_chunks(&Mm { vmas: areas, ..Default::default() }, false, 1 << 20), Vec::<usize>::new());
        // Huge pages of an area advised MADV_HUGEPAGE are crust's too (written, not copied).
        let mut advised = huge.clone();
        advised.huge_page_advised = true;
        assert_eq!(placing(&advised), Some(Placing::Write));
        assert_eq!(placing(&big), Some(Placing::Copy));
        let mm = Mm { vmas: vec![advised, small.clone()], ..Default::default() };
        assert_eq!(preadv_chunks(&mm, false, 1 << 20), vec![16]);
        // Huge pages without the advice stay with preadv (collapsed afterwards), and so does
        // a process with too little to place.
        assert_eq!(placing(&huge), None);
        let mm = Mm { vmas: vec![huge, small], ..Default::default() };
        assert_eq!(preadv_chunks(&mm, false, 1 << 20), (0..17).collect::<Vec<_>>());
    }
}
