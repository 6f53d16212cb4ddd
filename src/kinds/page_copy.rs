//! The page copy engine of dump: crust copies a process's pages into its page file itself, on
//! every core (one worker per core takes the next 1 MiB chunk of the file): process_vm_readv of
//! the chunk's pages (up to 256 pieces per call, never a call per page) into a buffer that stays
//! in the worker's cache, the chunk's BLAKE3 (image::chunks) at once, then pwrite. The DataFile
//! record comes out of the copy: no second pass reads the file again.
//!
//! Why a buffer and not process_vm_readv straight into a shared mapping of the page file (one
//! copy less): on tmpfs every page of such a mapping is zeroed when it is faulted in (or
//! populated), which cost more than the write path's copy from a cache-hot buffer (measured:
//! docs/memory-dump.md).
//!
//! Pages that process_vm_readv cannot read (PROT_NONE, write-only) are read through
//! /proc/PID/mem, which crust as the tracer reads regardless of protection.
//!
//! The same engine copies while the process runs on (`dump -R`, see uffd_dump.rs): the caller
//! then passes a [`ChunkHook`] that decides, page by page, whose copy of a page is kept.

use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

use crate::image::chunks::{self, CHUNK};
use crate::image::proto::DataFile;

/// A piece of memory of the process that fills the page file from `file_offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub address: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// How many workers copy (or, on restore, place) pages at once: one per core (two on the
/// project's machine), at most 4.
pub fn workers() -> usize {
    // Asked once: the answer reads cgroup files, and a tree copies a page file per process.
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| crate::sys::sched::cpus_for_work().clamp(1, 4))
}

/// Runs `work(i)` for i in 0..count at once, 0 on the calling thread: the first error, once
/// every worker is done.
pub fn on_workers(count: usize, what: &str, work: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    on_workers_after(count, what, || Ok(()), work)
}

/// [`on_workers`], the calling thread running `first` before its share of `work` (while the
/// others work): a job that must run on that thread (it is the tracer).
pub fn on_workers_after(
    count: usize,
    what: &str,
    first: impl FnOnce() -> Result<()>,
    work: impl Fn(usize) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|scope| {
        let work = &work;
        let helpers: Vec<_> = (1..count.max(1))
            .map(|i| {
                scope.spawn(move || {
                    crate::sys::sched::spread_this_thread(true);
                    work(i)
                })
            })
            .collect();
        let mut result = first().and_then(|()| work(0));
        for h in helpers {
            let r = h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a {what} worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// process_vm_readv takes at most IOV_MAX remote pieces per call.
use crate::sys::IOV_MAX;

/// Called by the worker that copied chunk `index` (its bytes in the file mapping), before the
/// chunk is hashed: may replace pages (a page saved earlier by a write fault) and must be done
/// with the chunk when it returns.
pub trait ChunkHook: Sync {
    /// Whether the copier reads `piece` (else the hook fills it in `copied`).
    fn wanted(&self, _piece: &Piece) -> bool {
        true
    }

    fn copied(&self, index: usize, pieces: &[Piece], bytes: &mut [u8]) -> Result<()>;
}

/// The pieces of each chunk of the file: `pieces` must fill [0, total) in file order.
pub fn split_into_chunks(pieces: &[Piece], total: u64) -> Result<Vec<Vec<Piece>>> {
    let chunk = CHUNK as u64;
    let mut out = vec![Vec::new(); total.div_ceil(chunk) as usize];
    let mut expected = 0;
    for p in pieces {
        if p.file_offset != expected {
            bail!("page runs are not contiguous in the page file at offset {expected:#x}");
        }
        if p.file_offset + p.len > total {
            bail!("page runs go past the end of a page file of {total} bytes");
        }
        let mut done = 0;
        while done < p.len {
            let at = p.file_offset + done;
            let n = (p.len - done).min(chunk - at % chunk);
            out[(at / chunk) as usize].push(Piece { address: p.address + done, len: n, file_offset: at });
            done += n;
        }
        expected += p.len;
    }
    if expected != total {
        bail!("page runs fill {expected} bytes of a page file of {total}");
    }
    Ok(out)
}

/// Copies `pieces` of process `pid` into `file` (sized to `total` here) and returns its
/// DataFile record named `name`, hashed while copying.
pub fn copy_to_file(
    pid: i32,
    file: &std::fs::File,
    name: &str,
    pieces: &[Piece],
    total: u64,
    hook: Option<&dyn ChunkHook>,
) -> Result<DataFile> {
    let t0 = std::time::Instant::now();
    let plan = split_into_chunks(pieces, total)?;
    file.set_len(total).with_context(|| format!("pid {pid}: sizing page file {name}"))?;
    let mem = Source::open(pid)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let hashes = Mutex::new(vec![Vec::new(); plan.len()]);
    let work = || -> Result<()> {
        // One chunk at a time through a buffer that stays in this core's cache: read from the
        // process, hashed, written to the file (the write path fills the page cache without
        // zeroing it first, as faulting a shared mapping of tmpfs would).
        let mut buffer = vec![0u8; CHUNK.min(total as usize)];
        loop {
            crate::interrupt::check()?;
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(pieces) = plan.get(index) else { return Ok(()) };
            let len = pieces.iter().map(|p| p.len).sum::<u64>() as usize;
            let bytes = &mut buffer[..len];
            let base = (index * CHUNK) as u64;
            let read: Vec<Piece> = pieces.iter().filter(|p| hook.is_none_or(|h| h.wanted(p))).copied().collect();
            copy_chunk(&mem, base, &read, bytes).with_context(|| format!("pid {pid}: copying pages into {name}"))?;
            if let Some(hook) = hook {
                hook.copied(index, pieces, bytes)?;
            }
            let hash = chunks::hash(bytes);
            file.write_all_at(bytes, (index * CHUNK) as u64)
                .with_context(|| format!("pid {pid}: pwrite of {name} at {}", index * CHUNK))?;
            hashes.lock().unwrap()[index] = hash;
            crate::progress::copied(len as u64);
        }
    };
    // No helper thread for a file of one chunk (most processes of a tree): nothing to share.
    on_workers(workers().min(plan.len()), "page copy", |_| work())?;
    tracing::debug!(pid, ms = t0.elapsed().as_secs_f64() * 1e3, bytes = total, "pages copied and hashed");
    Ok(DataFile {
        name: name.to_owned(),
        size: total,
        chunk_size: CHUNK as u64,
        chunk_blake3: hashes.into_inner().unwrap(),
        ..Default::default()
    })
}

/// Where a process's pages are read from: process_vm_readv for pages only this process maps,
/// /proc/PID/mem for the others. process_vm_readv pins the pages it reads (FOLL_PIN), and the
/// kernel gives a process its own copy of an anonymous page shared copy-on-write (with its
/// parent or child) before it lets it be pinned: that would cost the program memory and lose
/// the sharing the image records. /proc/PID/mem only takes references (FOLL_GET).
pub struct Source {
    pid: i32,
    mem: std::fs::File,
    pagemap: std::fs::File,
}

/// pagemap bits: present, and mapped by this process only (PM_MMAP_EXCLUSIVE).
const PRESENT_EXCLUSIVE: u64 = (1 << 63) | (1 << 56);

impl Source {
    pub fn open(pid: i32) -> Result<Self> {
        let open = |what: &str| {
            std::fs::File::open(format!("/proc/{pid}/{what}")).with_context(|| format!("pid {pid}: opening /proc/{pid}/{what}"))
        };
        Ok(Source { pid, mem: open("mem")?, pagemap: open("pagemap")? })
    }

    /// `pieces` cut where pages stop or start being mapped by this process only: (piece,
    /// exclusive).
    fn split_by_sharing(&self, pieces: &[Piece]) -> Result<Vec<(Piece, bool)>> {
        let mut out = Vec::with_capacity(pieces.len());
        // Pieces of a chunk close together (small areas side by side) have their entries read
        // at once: one pread of the pagemap for the chunk rather than one per piece.
        let span = match (pieces.first(), pieces.last()) {
            (Some(a), Some(b))
                if pieces.len() > 1 && pieces.is_sorted_by_key(|p| p.address) && b.address + b.len - a.address <= 4 * CHUNK as u64 =>
            {
                Some((a.address, self.entries(a.address, b.address + b.len - a.address)?))
            }
            _ => None,
        };
        for p in pieces {
            let n = (p.len / PAGE) as usize;
            let own;
            let entries: &[u8] = match &span {
                Some((start, all)) => {
                    let at = ((p.address - start) / PAGE * 8) as usize;
                    &all[at..at + n * 8]
                }
                None => {
                    own = self.entries(p.address, p.len)?;
                    &own
                }
            };
            let exclusive =
                |i: usize| u64::from_ne_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap()) & PRESENT_EXCLUSIVE == PRESENT_EXCLUSIVE;
            let mut start = 0;
            for i in 1..=n {
                if i == n || exclusive(i) != exclusive(start) {
                    let off = start as u64 * PAGE;
                    out.push((
                        Piece { address: p.address + off, len: (i - start) as u64 * PAGE, file_offset: p.file_offset + off },
                        exclusive(start),
                    ));
                    start = i;
                }
            }
        }
        Ok(out)
    }

    /// The pagemap entries of the `len` bytes at `address`, as bytes.
    fn entries(&self, address: u64, len: u64) -> Result<Vec<u8>> {
        let mut entries = vec![0u8; (len / PAGE) as usize * 8];
        self.pagemap
            .read_exact_at(&mut entries, address / PAGE * 8)
            .with_context(|| format!("pid {}: read of /proc/{}/pagemap at {:#x}", self.pid, self.pid, address))?;
        Ok(entries)
    }

    fn read_mem(&self, p: &Piece, bytes: &mut [u8]) -> Result<()> {
        self.mem
            .read_exact_at(bytes, p.address)
            .with_context(|| format!("pread of /proc/{}/mem at {:#x} ({} bytes)", self.pid, p.address, p.len))
    }
}

const PAGE: u64 = 4096;

/// Reads `pieces` into `bytes`, which holds the file from offset `base` on: process_vm_readv
/// for pages only this process maps (pieces contiguous in the file in one call, up to
/// IOV_MAX), /proc/PID/mem for the others and for a piece process_vm_readv stops at (a page
/// under PROT_NONE).
pub fn copy_chunk(src: &Source, base: u64, pieces: &[Piece], bytes: &mut [u8]) -> Result<()> {
    let pid = src.pid;
    let pieces = src.split_by_sharing(pieces)?;
    let mut i = 0;
    while i < pieces.len() {
        let (first, exclusive) = pieces[i];
        if !exclusive {
            let at = (first.file_offset - base) as usize;
            src.read_mem(&first, &mut bytes[at..at + first.len as usize])?;
            i += 1;
            continue;
        }
        // A batch: exclusive pieces that follow each other in the file, up to IOV_MAX.
        let mut j = i + 1;
        while j < pieces.len()
            && j - i < IOV_MAX
            && pieces[j].1
            && pieces[j - 1].0.file_offset + pieces[j - 1].0.len == pieces[j].0.file_offset
        {
            j += 1;
        }
        let batch: Vec<Piece> = pieces[i..j].iter().map(|(p, _)| *p).collect();
        let start = (batch[0].file_offset - base) as usize;
        let end = (batch[batch.len() - 1].file_offset + batch[batch.len() - 1].len - base) as usize;
        let remote: Vec<RemoteIoVec> = batch.iter().map(|p| RemoteIoVec { base: p.address as usize, len: p.len as usize }).collect();
        let got = process_vm_readv(Pid::from_raw(pid), &mut [IoSliceMut::new(&mut bytes[start..end])], &remote).unwrap_or(0);
        // Whole pieces done, then the piece it stopped in, the slow way.
        let mut left = got as u64;
        let mut done = 0;
        while done < batch.len() && left >= batch[done].len {
            left -= batch[done].len;
            done += 1;
        }
        i += done;
        if done < batch.len() {
            let p = batch[done];
            let at = (p.file_offset - base) as usize;
            src.read_mem(&p, &mut bytes[at..at + p.len as usize]).context("after process_vm_readv stopped there")?;
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_cut_at_chunk_boundaries() {
        let c = CHUNK as u64;
        let pieces =
            [Piece { address: 0x1000, len: c + 4096, file_offset: 0 }, Piece { address: 0x90_0000_0000, len: 8192, file_offset: c + 4096 }];
        let plan = split_into_chunks(&pieces, c + 3 * 4096).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0], vec![Piece { address: 0x1000, len: c, file_offset: 0 }]);
        assert_eq!(plan[1].len(), 2);
        assert_eq!(plan[1][0], Piece { address: 0x1000 + c, len: 4096, file_offset: c });
        assert!(split_into_chunks(&pieces, c).is_err());
    }
}
