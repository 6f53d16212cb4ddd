//! Lazy restore (`restore --lazy-pages`): a process runs as soon as its non-memory state is
//! back; its private anonymous pages arrive on demand through userfaultfd while a background
//! fill copies the rest, in order, from the page file. See docs/lazy-restore.md.
//!
//! Restore side: while the process is still root under crust, it creates a userfaultfd (an
//! injected call), crust takes it (pidfd_getfd) and closes the process's copy (its fd table
//! stays exactly the image's), does the handshake and registers the lazy areas in MISSING
//! mode. The pages of those areas are not read in.
//!
//! Server side ([`Server`]): one thread answers faults (UFFDIO_COPY of a window of saved pages,
//! UFFDIO_ZEROPAGE for pages the image does not hold or the program dropped since), follows
//! forks, mremaps, madvise and munmap, and fills the remaining pages one chunk at a time. Each
//! 1 MiB chunk of the page file is read into crust's memory and checked against its BLAKE3 in
//! the sealed inventory before any of its bytes is placed; a chunk that does not verify kills
//! the restored processes (they never see wrong contents). When a process has every page, its
//! userfaultfd is closed: the registration ends and nothing of crust stays with it.
//!
//! Huge page stretches are placed whole by a thread of the process itself, its mover
//! ([`super::lazy_move`]: UFFDIO_MOVE, one copy); those it cannot place are filled in 4 KiB pages
//! and collapsed ([`super::lazy_huge`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;

use super::RestoreCtx;
use super::lazy_huge::HugeStretches;
use super::lazy_move::{MoveFailed, Moved, Mover, ParkedMover};
use super::lazy_stage::{Outcome, Piece, StageSource, Stager};
use crate::image::chunks;
use crate::image::proto::{DataFile, Mm, Vma, vma::Kind as VmaKind};
use crate::sys::PAGE_SIZE;
use crate::sys::pagemap::HUGE_STRETCH;
use crate::sys::uffd::{self, Event};

/// Features every lazy userfaultfd asks for: a fork, mremap, madvise or munmap by the program
/// during the fill is reported, so the server never fills a page with stale contents.
const FEATURES: u64 =
    uffd::FEATURE_EVENT_FORK | uffd::FEATURE_EVENT_REMAP | uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP | uffd::FEATURE_THREAD_ID;
/// Pages placed for one fault: the faulting page and those after it (programs touch memory in
/// runs), within the same chunk and saved run.
const FAULT_WINDOW: u64 = 16 * PAGE_SIZE;
/// Lazy bytes from which a process gets a mover for its 4 KiB pages too (a thread made and
/// ended costs about a millisecond of its restore).
const MOVER_BYTES: u64 = 32 << 20;
/// Verified chunks kept in memory (faults in random order often hit a recent one).
const CACHED_CHUNKS: usize = 8;

/// Whether an area is restored lazily: private anonymous memory with saved pages that faults
/// can reach. Areas with huge pages are lazy too: their stretches are collapsed into huge pages
/// again once their pages are in (see [`super::lazy_huge`]). Locked areas are filled before the
/// process runs (mlock populates them), and so are droppable ones, areas inherited from the
/// parent, areas without read and write access, and wipe-on-fork ones (a child forked during
/// the fill must find them empty, not filled).
pub fn is_lazy(vma: &Vma) -> bool {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    vma.kind() == VmaKind::PrivateAnonymous
        && !vma.pages.is_empty()
        && !vma.inherited
        && !vma.droppable
        && !vma.locked
        && !vma.wipe_on_fork
        && vma.prot & rw == rw
}

/// What a restore hands the server for one process.
pub struct NewTarget {
    pid: u32,
    pidfd: OwnedFd,
    uffd: OwnedFd,
    pages: PathBuf,
    record: DataFile,
    /// (address, bytes, offset in the page file) of every saved run of the lazy areas.
    runs: Vec<(u64, u64, u64)>,
    /// The 2 MiB stretches to make huge once their pages are in.
    huge: Vec<u64>,
    /// A mover may come for it (see [`Slot::Expected`]).
    mover_expected: bool,
}

/// What the restore sends the server.
enum Msg {
    Target(NewTarget),
    /// A process's mover (kinds/lazy_move.rs), parked, for the server to seize.
    Mover(ParkedMover),
}

/// Copies of the userfaultfds of processes that may get a mover, by pid, until their restore
/// takes them (see [`Registrar::mover_uffd`]).
type MoverFds = Arc<Mutex<HashMap<u32, OwnedFd>>>;

/// Given to each process's restore: registers its lazy areas with the server.
#[derive(Clone)]
pub struct Registrar {
    tx: mpsc::Sender<Msg>,
    records: Arc<HashMap<String, DataFile>>,
    guard: Arc<UnixStream>,
    movers: MoverFds,
}

impl Registrar {
    /// Makes the lazy areas of `mm` fault to the server: the process creates a userfaultfd,
    /// crust takes it and closes the process's copy, then registers the areas.
    pub fn register(&self, ctx: &mut RestoreCtx, mm: &Mm) -> Result<()> {
        let lazy: Vec<&Vma> = mm.vmas.iter().filter(|v| is_lazy(v)).collect();
        if lazy.is_empty() {
            return Ok(());
        }
        let pid = ctx.pid.as_raw();
        let record = self.records.get(&mm.pages_file).with_context(|| format!("the inventory lists no {}", mm.pages_file))?.clone();
        let fd = ctx.remote.syscall("userfaultfd", libc::SYS_userfaultfd, &[uffd::CREATE_FLAGS])?;
        let taken = crate::sys::pidfd::pidfd_getfd(&ctx.pidfd, pid, fd as i32);
        ctx.remote.syscall("close(userfaultfd)", libc::SYS_close, &[fd])?;
        let fd = taken?;
        let huge: Vec<u64> = lazy.iter().flat_map(|v| super::lazy_huge::stretches_to_collapse(v)).collect();
        let bytes: u64 = lazy.iter().flat_map(|v| &v.pages).map(|r| r.pages * PAGE_SIZE).sum();
        let granted = handshake(fd.as_fd(), !huge.is_empty() || bytes >= MOVER_BYTES)
            .map_err(|e| anyhow::anyhow!("pid {pid}: userfaultfd UFFDIO_API: {e}"))?;
        if granted & FEATURES != FEATURES {
            bail!("pid {pid}: userfaultfd lacks features {:#x} that lazy restore needs", FEATURES & !granted);
        }
        let mut mover_expected = false;
        if granted & uffd::FEATURE_MOVE != 0
            && let Ok(copy) = fd.try_clone()
            && let Ok(mut movers) = self.movers.lock()
        {
            movers.insert(pid as u32, copy);
            mover_expected = true;
        }
        let mut runs = Vec::new();
        for vma in lazy {
            uffd::register_missing(fd.as_fd(), vma.start, vma.end - vma.start)
                .map_err(|e| anyhow::anyhow!("pid {pid}: userfaultfd UFFDIO_REGISTER of {:#x}-{:#x}: {e}", vma.start, vma.end))?;
            runs.extend(vma.pages.iter().map(|r| (r.address, r.pages * PAGE_SIZE, r.file_offset)));
        }
        let pages = ctx.image.path(&mm.pages_file);
        let pidfd = crate::sys::pidfd::pidfd_open(pid)?;
        // The guard holds a copy of both from now on (see [`guard`]).
        crate::sys::socket::send(self.guard.as_fd(), b"T", None, None, &[fd.as_fd(), pidfd.as_fd()], libc::MSG_NOSIGNAL)
            .with_context(|| format!("pid {pid}: handing its userfaultfd to crust-lazyguard"))?;
        tracing::debug!(pid, runs = runs.len(), huge_stretches = huge.len(), "lazy areas registered");
        self.tx
            .send(Msg::Target(NewTarget { pid: pid as u32, pidfd, uffd: fd, pages, record, runs, huge, mover_expected }))
            .map_err(|_| anyhow::anyhow!("pid {pid}: the lazy page server has stopped"))
    }

    /// A copy of `pid`'s userfaultfd for its mover, if it has huge stretches to fill and the
    /// kernel moves pages (UFFD_FEATURE_MOVE); taken once (crust keeps no copy after).
    pub fn mover_uffd(&self, pid: u32) -> Option<OwnedFd> {
        self.movers.lock().ok()?.remove(&pid)
    }

    /// Hands a process's mover to the server.
    pub fn hand_mover(&self, mover: ParkedMover) -> Result<()> {
        let pid = mover.pid;
        self.tx.send(Msg::Mover(mover)).map_err(|_| anyhow::anyhow!("pid {pid}: the lazy page server has stopped"))
    }
}

/// The UFFDIO_API handshake, with UFFD_FEATURE_MOVE too when `want_move` and the kernel has it
/// (a kernel without it refuses the unknown feature with EINVAL, and the handshake can be made
/// again: it only sticks once it succeeds).
fn handshake(fd: std::os::fd::BorrowedFd, want_move: bool) -> Result<u64, Errno> {
    if want_move && !no_move() {
        match uffd::api(fd, FEATURES | uffd::FEATURE_MOVE) {
            Err(Errno::EINVAL) => {}
            other => return other,
        }
    }
    uffd::api(fd, FEATURES)
}

/// The saved pages a process has not received yet: address -> (bytes, page file offset),
/// ranges apart and sorted.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Owed(BTreeMap<u64, (u64, u64)>);

impl Owed {
    fn insert(&mut self, address: u64, len: u64, offset: u64) {
        if len > 0 {
            self.0.insert(address, (len, offset));
        }
    }

    /// The range holding `address`: (start, bytes, offset).
    fn containing(&self, address: u64) -> Option<(u64, u64, u64)> {
        let (start, (len, off)) = self.0.range(..=address).next_back()?;
        (address < start + len).then_some((*start, *len, *off))
    }

    /// Forgets `start..end` (the pages were placed, dropped or unmapped).
    fn take(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, (u64, u64))> = self.overlapping(start, end);
        for (s, (len, off)) in hit {
            self.0.remove(&s);
            if s < start {
                self.insert(s, start - s, off);
            }
            if s + len > end {
                self.insert(end, s + len - end, off + (end - s));
            }
        }
    }

    fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, (u64, u64))> {
        let first = self.containing(start).map(|(s, _, _)| s).unwrap_or(start);
        self.0.range(first..end).map(|(s, v)| (*s, *v)).collect()
    }

    /// mremap moved `from..from+len` to `to`.
    /// Bytes of `start..end` still owed.
    fn bytes_in(&self, start: u64, end: u64) -> u64 {
        self.overlapping(start, end).iter().map(|(a, (len, _))| (a + len).min(end).saturating_sub((*a).max(start))).sum()
    }

    fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved: Vec<(u64, (u64, u64))> = self.overlapping(from, from + len);
        self.take(from, from + len);
        for (s, (l, off)) in moved {
            let (a, b) = (s.max(from), (s + l).min(from + len));
            self.insert(to + (a - from), b - a, off + (a - s));
        }
    }

    fn first(&self) -> Option<(u64, u64, u64)> {
        self.0.iter().next().map(|(s, (l, o))| (*s, *l, *o))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A page file with its chunk hashes, read and verified chunk by chunk.
struct Source {
    path: PathBuf,
    file: File,
    record: DataFile,
    cache: VecDeque<(usize, Arc<Vec<u8>>)>,
    /// The file as the staging workers read it.
    stage: Arc<StageSource>,
}

impl Source {
    fn open(path: PathBuf, record: DataFile) -> Result<Source> {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        chunks::check_layout(&path, &record, record.size)?;
        let stage = Arc::new(StageSource::new(path.clone(), &file, record.clone())?);
        Ok(Source { path, file, record, cache: VecDeque::new(), stage })
    }

    fn cached(&self, index: usize) -> Option<Arc<Vec<u8>>> {
        self.cache.iter().find(|(i, _)| *i == index).map(|(_, b)| b.clone())
    }

    /// Keeps a verified chunk among the recent ones; the buffer of the one it pushes out goes
    /// back to `pool` for the next read.
    fn remember(&mut self, index: usize, bytes: Arc<Vec<u8>>, pool: &Pool) {
        if self.cache.len() == CACHED_CHUNKS
            && let Some((_, old)) = self.cache.pop_front()
            && let Ok(buf) = Arc::try_unwrap(old)
            && let Ok(mut free) = pool.lock()
            && free.len() < 2 * CACHED_CHUNKS
        {
            free.push(buf);
        }
        self.cache.push_back((index, bytes));
    }
}

/// Chunk buffers to read into again (a fresh one costs zeroing and page faults).
type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

fn pooled(pool: &Pool) -> Vec<u8> {
    pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
}

/// Chunk `index` of a page file, read into crust's memory and verified (so the bytes placed
/// are the bytes checked, whatever happens to the file afterwards).
pub(super) fn read_verified(path: &std::path::Path, file: &File, record: &DataFile, index: usize, mut buf: Vec<u8>) -> Result<Vec<u8>> {
    let size = record.chunk_size;
    let start = index as u64 * size;
    let len = size.min(record.size.saturating_sub(start)) as usize;
    buf.resize(len, 0);
    file.read_exact_at(&mut buf, start).with_context(|| format!("reading {} at {start}", path.display()))?;
    chunks::verify_chunk(path, record, index, &buf)?;
    Ok(buf)
}

/// One address space being filled.
struct Target {
    /// The restored process it was registered for (a child forked during the fill has its
    /// parent's: killing the parent's tree is what a failure does).
    pid: u32,
    pidfd: Option<OwnedFd>,
    uffd: OwnedFd,
    source: usize,
    owed: Owed,
    gone: bool,
    /// Since when a copy found no registered area where pages are owed (UFFDIO_COPY's ENOENT:
    /// mremap moved or munmap removed it, and its event is on its way): the fill leaves this
    /// process alone until an event comes, for at most [`EVENT_WAIT`].
    awaiting_event: Option<std::time::Instant>,
    /// Its huge page stretches, from owed to collapsed.
    huge: HugeStretches,
    /// The process's mover, which places whole stretches with UFFDIO_MOVE.
    mover: Slot,
    /// Stretches the mover could not place: they take the COPY-then-collapse path.
    unmovable: BTreeSet<u64>,
    /// Groups of the mover's staging area being written or written, in address order.
    staged: VecDeque<Staged>,
    /// The mover's staging area of 4 KiB pages, registered with the userfaultfd: (start,
    /// length). None: 4 KiB pages are copied into place by the server thread.
    small_staging: Option<(u64, u64)>,
    /// Bytes of 4 KiB pages the mover moved in.
    small_moved: u64,
}

/// A group of the mover's staging area given to the staging workers: `len` bytes for `start`
/// (whole stretches, or 4 KiB pages in the staging area of those: `small`), from the page
/// file's `pieces`.
struct Staged {
    id: u64,
    group: u64,
    start: u64,
    len: u64,
    small: bool,
    pieces: Vec<Piece>,
}

/// Where a target's mover is.
enum Slot {
    None,
    /// The restore may still make one (since then): the fill leaves the process alone meanwhile
    /// (a stretch it filled with 4 KiB pages would have to be collapsed), for at most
    /// [`MOVER_WAIT`]; faults are answered as always.
    Expected(std::time::Instant),
    /// Traced by this thread.
    Active(Box<Mover>),
    /// Waiting for this thread (or the helper) to seize it.
    Parked(ParkedMover),
}

/// How long an area that vanished without an event keeps its pages owed (an event always
/// follows within microseconds: this only bounds a kernel that would not send one).
const EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the server waits for a staged group before it looks at the userfaultfds again.
const STAGE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);
/// How long the fill waits for a process's mover (the rest of its restore: tens of ms).
const MOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Target {
    fn awaits_event(&self) -> bool {
        self.awaiting_event.is_some_and(|since| since.elapsed() < EVENT_WAIT)
    }

    /// Whether the fill has pages to place here now.
    fn fillable(&self) -> bool {
        let awaits_mover = matches!(self.mover, Slot::Expected(since) if since.elapsed() < MOVER_WAIT);
        !self.owed.is_empty() && !self.gone && !self.awaits_event() && !awaits_mover
    }

    /// Whether the mover can place stretch `s`: it waits for its pages, and none of them is
    /// placed yet (a fault answered with 4 KiB pages sends the stretch the old way).
    fn movable(&self, s: u64) -> bool {
        matches!(self.mover, Slot::Active(_))
            && s.is_multiple_of(HUGE_STRETCH)
            && self.huge.is_pending(s)
            && !self.unmovable.contains(&s)
            && self.owed.bytes_in(s, s + HUGE_STRETCH) == HUGE_STRETCH
    }

    /// The first stretch the mover can place after `from`, before `to`.
    fn next_movable(&self, from: u64, to: u64) -> Option<u64> {
        if !matches!(self.mover, Slot::Active(_)) {
            return None;
        }
        self.huge.pending_in(from + 1, to).find(|&s| self.movable(s))
    }

    /// Whether the mover places 4 KiB pages too (its staging area of those is registered).
    fn small_movable(&self) -> bool {
        matches!(self.mover, Slot::Active(_)) && self.small_staging.is_some()
    }

    /// The group the mover places from `from` (an owed address): (bytes, 4 KiB pages?) whole
    /// movable stretches, else owed pages up to a group's length, the next movable stretch or
    /// the end of their range. None: `from` is placed by the server.
    fn group_at(&self, from: u64) -> Option<(u64, bool)> {
        let stretches = (0..super::lazy_move::STRETCHES_PER_MOVE).take_while(|k| self.movable(from + k * HUGE_STRETCH)).count() as u64;
        if stretches > 0 {
            return Some((stretches * HUGE_STRETCH, false));
        }
        if !self.small_movable() {
            return None;
        }
        let (start, len, _) = self.owed.containing(from)?;
        let mut end = (start + len).min(from + super::lazy_move::STRETCHES_PER_MOVE * HUGE_STRETCH);
        if let Some(s) = self.next_movable(from, end) {
            end = s;
        }
        (end > from).then_some((end - from, true))
    }

    /// The first group the mover places at or after `from`: (start, bytes, 4 KiB pages?).
    fn next_group(&self, from: u64) -> Option<(u64, u64, bool)> {
        let at = if !self.small_movable() {
            self.next_movable(from.saturating_sub(1), u64::MAX)?
        } else if self.owed.containing(from).is_some() {
            from
        } else {
            *self.owed.0.range(from..).next()?.0
        };
        let (len, small) = self.group_at(at)?;
        Some((at, len, small))
    }

    /// The mover's staging area of 4 KiB pages is left alone by the userfaultfd (before the
    /// mover unmaps it: an unmap of a registered area waits for the server to read its event).
    fn unregister_small(&mut self) {
        if let Some((start, len)) = self.small_staging.take()
            && let Err(e) = uffd::unregister(self.uffd.as_fd(), start, len)
        {
            tracing::debug!(pid = self.pid, "UFFDIO_UNREGISTER of the small staging area {start:#x}: {e}");
        }
    }

    /// Books a move of `start..end` of 4 KiB pages: what the kernel moved is in; after a
    /// refusal other than EAGAIN the server copies the rest in place.
    fn moved_small(&mut self, start: u64, end: u64, placed: Result<Moved, MoveFailed>) {
        let (moved, errno) = match placed {
            Ok(Moved { len, .. }) => (len, None),
            Err(MoveFailed::Refused { errno, moved }) => (moved, Some(errno)),
            Err(lost) => return self.moved(start, end, Err(lost)),
        };
        self.owed.take(start, start + moved);
        self.small_moved += moved;
        let owed = &self.owed;
        self.huge.placed(start, start + moved, |s, e| !owed.overlapping(s, e).is_empty());
        if let Some(errno) = errno.filter(|e| *e != Errno::EAGAIN || moved > 0) {
            tracing::debug!(
                pid = self.pid,
                "UFFDIO_MOVE of 4 KiB pages at {start:#x}: {errno} after {moved} bytes: copied in place from now on"
            );
            self.unregister_small();
        }
    }

    /// Books a move of `start..end`: all of it in (some stretches maybe in 4 KiB pages, to
    /// collapse), or what the failure says.
    fn moved(&mut self, start: u64, end: u64, placed: Result<Moved, MoveFailed>) {
        let (moved, errno) = match placed {
            Ok(Moved { len, small }) => {
                self.owed.take(start, start + len);
                // Every page of these is in: ready for the collapse.
                for s in small {
                    self.huge.placed(s, s + HUGE_STRETCH, |_, _| false);
                }
                self.huge.moved(start, start + len);
                return;
            }
            Err(MoveFailed::Refused { errno, moved }) => (moved, errno),
            Err(MoveFailed::Lost(why)) => {
                tracing::warn!(pid = self.pid, "lazy page mover lost ({why}): the collapse path serves the rest");
                self.unregister_small();
                if let Slot::Active(m) = std::mem::replace(&mut self.mover, Slot::None) {
                    m.end();
                }
                return;
            }
        };
        self.owed.take(start, start + moved);
        let whole = moved - moved % HUGE_STRETCH;
        // Whether the kernel moved those whole is not said: they are collapsed (at once where
        // they are huge already).
        self.huge.placed(start, start + whole, |_, _| false);
        // EAGAIN before anything moved: an event waits to be read, and the stretches stay
        // movable once it is. Anything else: the rest goes the collapse way.
        if errno != Errno::EAGAIN || moved > 0 {
            tracing::debug!(pid = self.pid, "UFFDIO_MOVE at {start:#x}: {errno} after {moved} bytes: the rest the collapse way");
            self.unmovable.extend((start + whole..end).step_by(HUGE_STRETCH as usize));
        }
    }
}

/// The lazy page server's whole state: it moves between crust's thread and the detached
/// helper by fork (see [`LazyPages::finish`]).
pub struct Server {
    sources: Vec<Source>,
    targets: Vec<Target>,
    /// Faults to answer again after the events that made a copy fail with EAGAIN.
    retry: Vec<(usize, u64, u32)>,
    failed: Option<String>,
    /// crust's end of the socket to crust-lazyguard (see [`guard`]).
    guard: Arc<UnixStream>,
    /// Reads and verifies the chunks the fill needs next, on another core.
    prefetch: Option<prefetch::Prefetch>,
    /// Writes the stretches the movers move next, on both cores.
    stager: Option<Stager>,
    pool: Pool,
}

/// What a step of placing pages came to.
enum Placed {
    Done,
    /// An event must be read first (the address space is changing).
    Again,
}

impl Server {
    fn add(&mut self, t: NewTarget) -> Result<()> {
        let source = match self.sources.iter().position(|s| s.path == t.pages) {
            Some(i) => i,
            None => {
                self.sources.push(Source::open(t.pages, t.record)?);
                self.sources.len() - 1
            }
        };
        let mut owed = Owed::default();
        for (address, len, offset) in t.runs {
            owed.insert(address, len, offset);
        }
        let huge = HugeStretches::new(t.huge);
        self.targets.push(Target {
            pid: t.pid,
            pidfd: Some(t.pidfd),
            uffd: t.uffd,
            source,
            owed,
            gone: false,
            awaiting_event: None,
            huge,
            mover: if t.mover_expected { Slot::Expected(std::time::Instant::now()) } else { Slot::None },
            unmovable: BTreeSet::new(),
            staged: VecDeque::new(),
            small_staging: None,
            small_moved: 0,
        });
        Ok(())
    }

    /// A process's mover arrives: seized by this thread, it places that process's stretches.
    fn adopt_mover(&mut self, m: ParkedMover) {
        match self.targets.iter_mut().find(|t| t.pid == m.pid as u32 && t.pidfd.is_some()) {
            Some(t) => t.mover = Slot::Parked(m),
            None => m.end(),
        }
        self.seize_movers();
        for t in self.targets.iter_mut().filter(|t| t.small_staging.is_none()) {
            let Slot::Active(mover) = &t.mover else { continue };
            let (start, len) = mover.small_staging();
            match uffd::register_missing(t.uffd.as_fd(), start, len) {
                Ok(()) => t.small_staging = Some((start, len)),
                Err(e) => tracing::debug!(pid = t.pid, "UFFDIO_REGISTER of the small staging area: {e}: 4 KiB pages copied in place"),
            }
        }
    }

    /// Takes over the parked movers (the server thread, or the helper once it starts). A mover
    /// that cannot be seized still holds a copy of the userfaultfd, which would keep the areas
    /// registered after the server ends: its process is killed (as when the server dies).
    fn seize_movers(&mut self) {
        for t in self.targets.iter_mut() {
            let Slot::Parked(_) = t.mover else { continue };
            let Slot::Parked(parked) = std::mem::replace(&mut t.mover, Slot::None) else { continue };
            match parked.seize() {
                Ok(m) => t.mover = Slot::Active(Box::new(m)),
                Err((p, e)) if std::path::Path::new(&format!("/proc/{}/task/{}", p.pid, p.tid)).exists() => {
                    let message = format!("pid {}: its lazy page mover {} cannot be seized ({e}): the process is killed", p.pid, p.tid);
                    tracing::error!("lazy restore: {message}");
                    kmsg(&format!("crust-lazypages: {message}"));
                    if let Some(pidfd) = &t.pidfd {
                        let _ = uffd::kill_by_pidfd(pidfd.as_fd());
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Every process's restore is over: no mover comes any more.
    fn no_more_movers(&mut self) {
        for t in self.targets.iter_mut().filter(|t| matches!(t.mover, Slot::Expected(_))) {
            t.mover = Slot::None;
        }
    }

    /// Lets go of the movers (parked, for another thread or process to seize).
    fn park_movers(&mut self) {
        self.no_more_movers();
        // Nothing is written into a staging area by a thread that does not survive the fork.
        for i in 0..self.targets.len() {
            self.drop_staged(i);
        }
        self.stager = None;
        for t in self.targets.iter_mut() {
            if let Slot::Active(m) = std::mem::replace(&mut t.mover, Slot::None) {
                let pid = m.pid();
                match m.park() {
                    Ok(p) => t.mover = Slot::Parked(p),
                    Err(e) => tracing::warn!(pid, "parking the lazy page mover: {e}"),
                }
            }
        }
    }

    /// Ends the movers whose process has every page (or all, `all`), and forgets those that
    /// exited with their process.
    fn end_movers(&mut self, all: bool) {
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            let finished = all || t.owed.is_empty() || t.gone;
            // (Reaped here if it exited: its process exited or exec'd.)
            let exited = matches!(&t.mover, Slot::Active(m) if m.gone());
            let ending = exited || (finished && matches!(t.mover, Slot::Active(_) | Slot::Parked(_)));
            if !ending {
                continue;
            }
            // Its staging area goes (or went) with it: nothing is written there any more.
            self.drop_staged(i);
            self.targets[i].unregister_small();
            match std::mem::replace(&mut self.targets[i].mover, Slot::None) {
                Slot::Active(m) if !exited => m.end(),
                Slot::Parked(p) => p.end(),
                _ => {}
            }
        }
    }

    /// Whether every page of every process is in (or its process is gone); after a failure,
    /// whether every restored process is dead.
    pub fn done(&self) -> bool {
        if self.failed.is_some() {
            return !self.targets.iter().any(|t| t.pidfd.is_some());
        }
        self.targets.iter().all(|t| t.owed.is_empty() && !t.huge.has_ready())
    }

    /// The end: the guard lets go of its copies, and so does the server; the registrations
    /// end with the last copy, and the processes keep no trace of the lazy restore.
    fn close(&mut self) {
        if self.failed.is_none() {
            for t in self.targets.iter().filter(|t| t.pidfd.is_some()) {
                t.huge.report(t.pid);
                if t.small_moved > 0 {
                    tracing::info!(pid = t.pid, kib = t.small_moved / 1024, "lazy restore: 4 KiB pages moved in by the mover");
                }
            }
        }
        // The movers' copies of the userfaultfds go before the registrations are to end.
        self.end_movers(true);
        let _ = crate::sys::socket::send(self.guard.as_fd(), b"D", None, None, &[], libc::MSG_NOSIGNAL);
        self.targets.clear();
        self.prefetch = None;
        self.stager = None;
        for s in &self.sources {
            s.stage.let_go();
        }
    }

    /// One round: answer what the userfaultfds report, then fill one chunk's worth.
    fn step(&mut self, idle_wait_ms: i32) -> Result<()> {
        let filling = self.failed.is_none() && !no_fill() && self.targets.iter().any(Target::fillable);
        let collapsing = self.failed.is_none() && self.targets.iter().any(|t| t.huge.has_ready());
        let ready = {
            let fds: Vec<_> = self.targets.iter().map(|t| t.uffd.as_fd()).collect();
            let busy = filling || collapsing || !self.retry.is_empty();
            uffd::poll_readable(&fds, if busy { 0 } else { idle_wait_ms })?
        };
        for (i, r) in ready.into_iter().enumerate() {
            if r {
                self.handle_events(i)?;
            }
        }
        for (i, address, tid) in std::mem::take(&mut self.retry) {
            self.fault(i, address, tid)?;
        }
        if filling {
            self.fill_one()?;
        }
        if collapsing {
            self.collapse_due(filling);
        }
        self.end_movers(false);
        self.drop_finished();
        for s in &self.sources {
            s.stage.check_lease();
        }
        Ok(())
    }

    fn handle_events(&mut self, i: usize) -> Result<()> {
        let mut events = Vec::new();
        if let Err(e) = uffd::read_events(self.targets[i].uffd.as_fd(), &mut events) {
            tracing::debug!(pid = self.targets[i].pid, "reading the userfaultfd: {e}");
            self.targets[i].gone = true;
        }
        if !events.is_empty() {
            self.targets[i].awaiting_event = None;
        }
        for event in events {
            match event {
                Event::PageFault { address, tid, .. } => self.fault(i, address, tid)?,
                Event::Fork { uffd } => {
                    let t = &self.targets[i];
                    // The child's pages are its parent's, shared: collapsing them would copy
                    // them apart, so the child's stretches stay as the fork left them.
                    let child = Target {
                        pid: t.pid,
                        pidfd: None,
                        uffd,
                        source: t.source,
                        owed: t.owed.clone(),
                        gone: false,
                        awaiting_event: None,
                        huge: HugeStretches::default(),
                        mover: Slot::None,
                        unmovable: BTreeSet::new(),
                        staged: VecDeque::new(),
                        small_staging: None,
                        small_moved: 0,
                    };
                    tracing::debug!(pid = t.pid, "a restored process forked during the lazy fill");
                    self.targets.push(child);
                }
                Event::Remap { from, to, len } => {
                    self.targets[i].owed.remap(from, to, len);
                    self.targets[i].huge.forget(from, from + len);
                }
                Event::Remove { start, end, .. } => {
                    self.targets[i].owed.take(start, end);
                    self.targets[i].huge.forget(start, end);
                }
                Event::Unknown(kind) => tracing::warn!(kind, "unknown userfaultfd event"),
            }
        }
        Ok(())
    }

    /// Answers a fault: the saved pages from `address` on (a window), or a zero page where
    /// the image holds nothing (or the program dropped the page since).
    fn fault(&mut self, i: usize, address: u64, tid: u32) -> Result<()> {
        let page = address & !(PAGE_SIZE - 1);
        let t = &self.targets[i];
        if self.failed.is_some() {
            kill_thread(tid);
            return Ok(());
        }
        match t.owed.containing(page) {
            Some((start, len, offset)) => {
                let chunk = self.sources[t.source].record.chunk_size;
                let file_at = offset + (page - start);
                let chunk_end = (file_at / chunk + 1) * chunk;
                let n = FAULT_WINDOW.min(start + len - page).min(chunk_end - file_at);
                match self.place(i, page, n, file_at)? {
                    Placed::Done => {}
                    Placed::Again => self.retry.push((i, address, tid)),
                }
                if self.failed.is_some() {
                    kill_thread(tid);
                }
            }
            None => match uffd::zeropage(t.uffd.as_fd(), page, PAGE_SIZE) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EEXIST) => {
                    let _ = uffd::wake(t.uffd.as_fd(), page, PAGE_SIZE);
                }
                Err(Errno::EAGAIN) => self.retry.push((i, address, tid)),
                Err(Errno::ESRCH) => self.targets[i].gone = true,
                Err(e) => bail!("pid {}: UFFDIO_ZEROPAGE at {page:#x}: {e}", t.pid),
            },
        }
        Ok(())
    }

    /// Fills the first owed range of the first process that has one, up to its chunk's end.
    fn fill_one(&mut self) -> Result<()> {
        if no_fill() {
            return Ok(());
        }
        let Some(i) = self.targets.iter().position(Target::fillable) else { return Ok(()) };
        let (start, len, offset) = self.targets[i].owed.first().expect("owed");
        let t = &self.targets[i];
        if let Some((bytes, small)) = t.group_at(start) {
            return self.move_in(i, start, bytes, small);
        }
        let chunk = self.sources[t.source].record.chunk_size;
        let mut n = len.min((offset / chunk + 1) * chunk - offset);
        // Up to the next stretch the mover places whole.
        if let Some(s) = t.next_movable(start, start + n) {
            n = s - start;
        }
        self.place(i, start, n, offset)?;
        Ok(())
    }

    /// Places the group of `bytes` from `start` through the process's mover: whole stretches
    /// or (`small`) 4 KiB pages, their verified bytes written into a group of its staging area
    /// by the staging workers (the next groups are written meanwhile), then moved (one copy,
    /// huge pages whole). What it refuses takes the COPY(-then-collapse) path; EAGAIN (an event
    /// first) is tried again.
    fn move_in(&mut self, i: usize, start: u64, bytes: u64, small: bool) -> Result<()> {
        // Groups staged for other places (events and faults changed what comes first) go.
        if self.targets[i].staged.front().is_some_and(|s| s.start != start) {
            self.drop_staged(i);
        }
        self.stage_ahead(i, start, bytes, small)?;
        let Some(id) = self.targets[i].staged.front().map(|s| s.id) else { return Ok(()) };
        // Not written yet: faults are answered meanwhile, and the server comes back.
        let Some(outcome) = self.stager.as_ref().and_then(|s| s.wait(id, STAGE_WAIT)) else { return Ok(()) };
        let Some(head) = self.targets[i].staged.pop_front() else { return Ok(()) };
        let end = head.start + head.len;
        match outcome {
            Outcome::Staged => {}
            // Staged again next time (from chunks read in, if the page file's lease is gone).
            Outcome::Again => return Ok(()),
            Outcome::Damaged(message) => {
                self.fail(message);
                return Ok(());
            }
            Outcome::Failed(why) => {
                // (The others first: the mover's staging area goes with it.)
                self.drop_staged(i);
                self.targets[i].moved(head.start, end, Err(MoveFailed::Lost(why)));
                return Ok(());
            }
        }
        // The program may have dropped, moved or touched them since they were planned: moved
        // only if they are still owed whole, from the same bytes of the page file.
        if !self.still_staged(i, &head) {
            return Ok(());
        }
        let Slot::Active(mover) = &mut self.targets[i].mover else { return Ok(()) };
        let placed = mover.move_group(head.group, head.start, head.len, head.small);
        if matches!(placed, Err(MoveFailed::Lost(_))) {
            // The mover ends, and its staging area with it: nothing may be written there.
            self.drop_staged(i);
        }
        match head.small {
            true => self.targets[i].moved_small(head.start, end, placed),
            false => self.targets[i].moved(head.start, end, placed),
        }
        Ok(())
    }

    /// Whether a staged group is still the group to move: its pages all owed, from the same
    /// bytes of the page file, and (stretches) still movable whole.
    fn still_staged(&self, i: usize, head: &Staged) -> bool {
        let t = &self.targets[i];
        let end = head.start + head.len;
        let movable = match head.small {
            true => t.small_movable() && t.owed.bytes_in(head.start, end) == head.len,
            false => (head.start..end).step_by(HUGE_STRETCH as usize).all(|s| t.movable(s)),
        };
        movable && self.pieces_for(i, head.start, end) == head.pieces
    }

    /// Keeps the staging workers busy on process `i`: the group for `start`, then the next
    /// ones, until every group of its staging areas is taken.
    fn stage_ahead(&mut self, i: usize, start: u64, bytes: u64, small: bool) -> Result<()> {
        if self.stager.is_none() {
            match Stager::start() {
                Ok(stager) => self.stager = Some(stager),
                Err(e) => {
                    let why = format!("no staging workers: {e:#}");
                    self.targets[i].moved(start, start, Err(MoveFailed::Lost(why)));
                    return Ok(());
                }
            }
        }
        let mut next = match self.targets[i].staged.back() {
            Some(last) => last.start + last.len,
            None => {
                if !self.submit_stage(i, start, bytes, small) {
                    return Ok(());
                }
                start + bytes
            }
        };
        while (self.targets[i].staged.len() as u64) < super::lazy_move::GROUPS {
            let Some((s, len, small)) = self.targets[i].next_group(next) else { break };
            if !self.submit_stage(i, s, len, small) {
                break;
            }
            next = s + len;
        }
        Ok(())
    }

    /// Gives `len` bytes from `start` of process `i` to the staging workers, in a free group;
    /// false if they cannot take it.
    fn submit_stage(&mut self, i: usize, start: u64, len: u64, small: bool) -> bool {
        let pieces = self.pieces_for(i, start, start + len);
        let t = &self.targets[i];
        let Slot::Active(mover) = &t.mover else { return false };
        let Some(group) = (0..super::lazy_move::GROUPS).find(|g| !t.staged.iter().any(|s| s.group == *g)) else { return false };
        // 4 KiB pages are placed in the registered staging area with UFFDIO_COPY (no page to
        // clear first), through a copy of the userfaultfd the job closes when it ends.
        let uffd = match small {
            true => match t.uffd.try_clone() {
                Ok(fd) => Some(fd),
                Err(_) => return false,
            },
            false => None,
        };
        let job = super::lazy_stage::Job {
            // The mover's own id: once it is gone (its process exec'd), nothing is written.
            pid: mover.tid(),
            at: if small { mover.small_group_address(group) } else { mover.group_address(group) },
            source: self.sources[t.source].stage.clone(),
            pieces: pieces.clone(),
            uffd,
        };
        let Some(stager) = self.stager.as_mut() else { return false };
        let id = stager.submit(job);
        self.targets[i].staged.push_back(Staged { id, group, start, len, small, pieces });
        true
    }

    /// Lets go of process `i`'s staged groups (waiting for those being written).
    fn drop_staged(&mut self, i: usize) {
        let staged = std::mem::take(&mut self.targets[i].staged);
        if let Some(stager) = &self.stager {
            stager.cancel(&staged.iter().map(|s| s.id).collect::<Vec<_>>());
        }
    }

    /// Where the saved bytes of `start..end` of process `i` are in its page file, in address
    /// order: (chunk, offset in it, length) pieces.
    fn pieces_for(&self, i: usize, start: u64, end: u64) -> Vec<Piece> {
        let t = &self.targets[i];
        let chunk_size = self.sources[t.source].record.chunk_size;
        let mut pieces = Vec::new();
        for (address, (len, offset)) in t.owed.overlapping(start, end) {
            let from = address.max(start);
            let mut at = offset + (from - address);
            let mut left = (address + len).min(end) - from;
            while left > 0 {
                let index = at / chunk_size;
                let take = left.min((index + 1) * chunk_size - at);
                pieces.push((index as usize, (at - index * chunk_size) as usize, take as usize));
                at += take;
                left -= take;
            }
        }
        pieces
    }

    /// Copies `len` bytes of saved pages (all in one chunk) from `offset` of the page file to
    /// `address`, once the chunk is verified.
    fn place(&mut self, i: usize, address: u64, len: u64, offset: u64) -> Result<Placed> {
        let source = self.targets[i].source;
        let chunk_size = self.sources[source].record.chunk_size;
        let index = (offset / chunk_size) as usize;
        let bytes = match self.chunk(source, index) {
            Ok(b) => b,
            Err(e) => {
                self.fail(format!("{e:#}"));
                return Ok(Placed::Done);
            }
        };
        let t = &mut self.targets[i];
        let at = (offset - index as u64 * chunk_size) as usize;
        let src = bytes.get(at..at + len as usize).context("a saved run past the end of its page file")?;
        t.owed.take(address, address + len);
        let mut done = 0u64;
        while done < len {
            match uffd::copy(t.uffd.as_fd(), address + done, &src[done as usize..]) {
                Ok(n) => done += n,
                // Present already (a fault's window raced the fill): nothing to place there.
                Err(Errno::EEXIST) => {
                    let _ = uffd::wake(t.uffd.as_fd(), address + done, PAGE_SIZE);
                    done += PAGE_SIZE;
                }
                // No registered area there any more: mremap moved it or munmap removed it, and
                // the kernel reports that before it checks whether an event is pending. The
                // pages stay owed until the event says where they went (for at most EVENT_WAIT:
                // then they are given up, as unmapped).
                Err(Errno::ENOENT) if t.awaiting_event.is_none_or(|since| since.elapsed() < EVENT_WAIT) => {
                    t.owed.insert(address + done, len - done, offset + done);
                    t.awaiting_event.get_or_insert_with(std::time::Instant::now);
                    return Ok(Placed::Again);
                }
                Err(Errno::ENOENT) => {
                    done += PAGE_SIZE;
                }
                Err(Errno::EAGAIN) => {
                    // An event (fork, mremap, madvise, munmap) waits to be read: the rest is
                    // owed again, and events decide what becomes of it.
                    t.owed.insert(address + done, len - done, offset + done);
                    return Ok(Placed::Again);
                }
                Err(Errno::ESRCH) => {
                    t.gone = true;
                    return Ok(Placed::Done);
                }
                Err(e) => bail!("pid {}: UFFDIO_COPY of {} bytes at {:#x}: {e}", t.pid, len - done, address + done),
            }
        }
        let owed = &t.owed;
        t.huge.placed(address, address + len, |s, e| !owed.overlapping(s, e).is_empty());
        Ok(Placed::Done)
    }

    /// Collapses the huge page stretches whose pages are all in, a batch at a time while the
    /// fill runs (`filling`), all of them once it has nothing else to do.
    fn collapse_due(&mut self, filling: bool) {
        for t in self.targets.iter_mut().filter(|t| !t.gone) {
            let Some(pidfd) = &t.pidfd else { continue };
            if !t.huge.due(!filling || t.owed.is_empty()) {
                continue;
            }
            if t.huge.collapse(pidfd.as_fd(), t.pid).is_err() {
                t.gone = true;
            }
        }
    }

    /// Chunk `index` of source `s`, verified: from the recent ones, the prefetcher, or read
    /// here.
    fn chunk(&mut self, s: usize, index: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(bytes) = self.sources[s].cached(index) {
            return Ok(bytes);
        }
        if self.prefetch.as_ref().is_none_or(|p| p.finished()) {
            self.prefetch = None;
            let plan = self.plan();
            if !plan.is_empty() {
                let files =
                    self.sources.iter().map(|x| Ok((x.path.clone(), x.file.try_clone()?, x.record.clone()))).collect::<Result<Vec<_>>>()?;
                self.prefetch = Some(prefetch::Prefetch::start(files, plan, self.pool.clone())?);
            }
        }
        let bytes = match self.prefetch.as_ref().and_then(|p| p.take(s, index)) {
            Some(got) => Arc::new(got.map_err(|e| anyhow::anyhow!(e))?),
            None => {
                let x = &self.sources[s];
                Arc::new(read_verified(&x.path, &x.file, &x.record, index, pooled(&self.pool))?)
            }
        };
        self.sources[s].remember(index, bytes.clone(), &self.pool);
        Ok(bytes)
    }

    /// The chunks the fill will need, in its order: (source, chunk).
    fn plan(&self) -> Vec<(usize, usize)> {
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for t in self.targets.iter().filter(|t| !t.gone) {
            let size = self.sources[t.source].record.chunk_size;
            for (&address, &(len, offset)) in t.owed.0.iter() {
                // Stretches the mover places are the staging workers' to read.
                for (from, to) in not_movable(t, address, address + len) {
                    let (first, last) = (offset + (from - address), offset + (to - address) - 1);
                    for c in first / size..=last / size {
                        if plan.last() != Some(&(t.source, c as usize)) {
                            plan.push((t.source, c as usize));
                        }
                    }
                }
            }
        }
        plan
    }

    /// A chunk did not verify: every restored process is killed before it can see a page of
    /// it, and the server stops filling.
    fn fail(&mut self, message: String) {
        tracing::error!("lazy restore: {message}: killing the restored processes");
        for t in &self.targets {
            if let Some(pidfd) = &t.pidfd {
                let _ = uffd::kill_by_pidfd(pidfd.as_fd());
            }
        }
        kmsg(&format!("crust-lazypages: {message}: the restored processes were killed"));
        if self.failed.is_none() {
            self.failed = Some(message);
        }
    }

    /// Lets go of the address spaces that are gone. The others stay registered until every
    /// one has all its pages: the guard holds copies of their userfaultfds, so closing one
    /// early would leave its faults unanswered.
    fn drop_finished(&mut self) {
        let alive: Vec<bool> = self.targets.iter().map(|t| !t.gone && t.pidfd.as_ref().is_none_or(|p| !exited(p))).collect();
        if alive.iter().all(|a| *a) {
            return;
        }
        for (i, a) in alive.iter().enumerate() {
            if !a {
                self.drop_staged(i);
            }
        }
        // Faults waiting for a retry follow their target to its new index.
        let mut new_index = Vec::with_capacity(alive.len());
        let mut next = 0;
        for a in &alive {
            new_index.push(next);
            next += usize::from(*a);
        }
        self.retry =
            std::mem::take(&mut self.retry).into_iter().filter(|(i, _, _)| alive[*i]).map(|(i, a, t)| (new_index[i], a, t)).collect();
        let mut keep = alive.into_iter();
        self.targets.retain(|t| {
            let alive = keep.next().unwrap_or(false);
            if !alive {
                tracing::debug!(pid = t.pid, "a lazily restored address space is gone");
            }
            alive
        });
    }

    /// Serves until every page is in (the detached helper's whole life).
    pub fn serve_until_done(mut self) -> Option<String> {
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        // The page files' leases are this process's to let go of now.
        for s in &self.sources {
            s.stage.adopt_lease();
        }
        self.seize_movers();
        self.no_more_movers();
        while !self.done() {
            if let Err(e) = self.step(100) {
                self.fail(format!("{e:#}"));
            }
        }
        self.close();
        self.failed
    }
}

/// The parts of `start..end` (owed by `t`) outside the stretches its mover can place.
fn not_movable(t: &Target, start: u64, end: u64) -> Vec<(u64, u64)> {
    if t.small_movable() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = start;
    let first = start.next_multiple_of(HUGE_STRETCH);
    let mut movable: Vec<u64> = match t.mover {
        Slot::Active(_) if first < end => t.huge.pending_in(first, end).filter(|&s| s + HUGE_STRETCH <= end && t.movable(s)).collect(),
        _ => Vec::new(),
    };
    movable.push(end);
    for s in movable {
        if s > at {
            out.push((at, s.min(end)));
        }
        at = at.max(s + HUGE_STRETCH);
    }
    out
}

/// For tests only: `CRUST_LAZY_NO_FILL=1` leaves the background fill out, so that pages come
/// only through faults and a test can stop the server while most pages are still owed.
fn no_fill() -> bool {
    static NO_FILL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NO_FILL.get_or_init(|| std::env::var_os("CRUST_LAZY_NO_FILL").is_some_and(|v| v == "1"))
}

/// Test and measurement switch: `CRUST_LAZY_NO_MOVE=1` keeps every huge stretch on the
/// COPY-then-collapse path (no mover is made).
pub fn no_move() -> bool {
    static NO_MOVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NO_MOVE.get_or_init(|| std::env::var_os("CRUST_LAZY_NO_MOVE").is_some_and(|v| v == "1"))
}

/// Whether the process behind a pidfd has exited (its pidfd polls readable).
fn exited(pidfd: &OwnedFd) -> bool {
    uffd::poll_readable(&[pidfd.as_fd()], 0).map(|r| r[0]).unwrap_or(true)
}

/// The kernel log: the detached helper has no terminal to say a failure on.
pub(super) fn kmsg(message: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = writeln!(f, "{message}");
    }
}

fn kill_thread(tid: u32) {
    if tid != 0 {
        // A thread waiting in a fault cannot exit, so its id is still its own.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Shared between crust's restore and its server thread.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    /// Every process is registered: an empty server is done.
    all_registered: AtomicBool,
    failed: Mutex<Option<String>>,
}

/// The lazy page server of one restore, running in a thread of crust.
pub struct LazyPages {
    tx: Option<mpsc::Sender<Msg>>,
    records: Arc<HashMap<String, DataFile>>,
    guard: Arc<UnixStream>,
    movers: MoverFds,
    control: Arc<Control>,
    thread: Option<std::thread::JoinHandle<Server>>,
}

impl LazyPages {
    /// Starts the server thread; `records` are the inventory's page file records by name.
    /// crust must be single-threaded here (it forks the guard).
    pub fn start(records: HashMap<String, DataFile>) -> Result<LazyPages> {
        let guard = Arc::new(guard::start()?);
        let (tx, rx) = mpsc::channel::<Msg>();
        let control = Arc::new(Control::default());
        let c = control.clone();
        let g = guard.clone();
        let thread = std::thread::Builder::new().name("crust-lazypages".into()).spawn(move || serve_in_thread(rx, &c, g))?;
        Ok(LazyPages { tx: Some(tx), records: Arc::new(records), guard, movers: MoverFds::default(), control, thread: Some(thread) })
    }

    pub fn registrar(&self) -> Option<Registrar> {
        Some(Registrar { tx: self.tx.clone()?, records: self.records.clone(), guard: self.guard.clone(), movers: self.movers.clone() })
    }

    /// The failure that killed the restored processes, if any.
    pub fn failure(&self) -> Option<String> {
        self.control.failed.lock().map(|f| f.clone()).unwrap_or(None)
    }

    /// Every process is registered: the thread ends by itself once all pages are in.
    pub fn all_registered(&mut self) {
        self.tx = None;
        // No copy of a userfaultfd stays in crust past the server's end.
        if let Ok(mut movers) = self.movers.lock() {
            movers.clear();
        }
        self.control.all_registered.store(true, Ordering::SeqCst);
    }

    /// The restore failed: the server stops and its userfaultfds close (the processes are
    /// being killed).
    pub fn abort(self) {
        drop(self);
    }

    /// The restore command is about to return: pages still owed are served by a detached
    /// helper, `crust-lazypages`, that holds only the userfaultfds, the page files and pidfds
    /// of the restored processes, and exits when every page is in.
    pub fn finish(mut self) -> Result<()> {
        self.control.stop.store(true, Ordering::SeqCst);
        let server = self.thread.take().context("the lazy page server is gone")?.join();
        let mut server = server.map_err(|_| anyhow::anyhow!("the lazy page server panicked"))?;
        // Threads do not survive the fork: the helper starts its own prefetcher and stagers.
        server.prefetch = None;
        server.stager = None;
        // The page files' leases go on with the helper (crust's copy of this state is dropped).
        for s in &server.sources {
            s.stage.hand_on_lease();
        }
        if server.done() {
            server.close();
            if let Some(f) = &server.failed {
                bail!("lazy restore: {f}: the restored processes were killed");
            }
            tracing::info!("lazy restore: every page is in");
            return Ok(());
        }
        let mut keep: Vec<i32> = vec![server.guard.as_raw_fd()];
        for t in &server.targets {
            keep.push(t.uffd.as_raw_fd());
            keep.extend(t.pidfd.as_ref().map(AsRawFd::as_raw_fd));
        }
        keep.extend(server.sources.iter().map(|s| s.file.as_raw_fd()));
        keep.extend(server.sources.iter().map(|s| s.stage.raw_fd()));
        crate::sys::spawn_detached("crust-lazypages", &keep, move || {
            // A panic must end the helper here, never unwind into crust's code (the guard then
            // kills the tree). Its message goes where the helper's failures go.
            std::panic::set_hook(Box::new(|info| kmsg(&format!("crust-lazypages: {info}"))));
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.serve_until_done()));
        })
        .map_err(|e| anyhow::anyhow!("starting crust-lazypages: {e}"))?;
        tracing::info!("lazy restore: crust-lazypages serves the remaining pages");
        Ok(())
    }
}

impl Drop for LazyPages {
    /// A restore that returns early (an error before the tree was built): the server stops,
    /// as with [`LazyPages::abort`].
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.control.stop.store(true, Ordering::SeqCst);
            if let Ok(mut server) = t.join() {
                server.close();
            }
        }
    }
}

fn serve_in_thread(rx: mpsc::Receiver<Msg>, control: &Control, guard: Arc<UnixStream>) -> Server {
    let mut server = Server {
        sources: Vec::new(),
        targets: Vec::new(),
        retry: Vec::new(),
        failed: None,
        guard,
        prefetch: None,
        stager: None,
        pool: Pool::default(),
    };
    loop {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Target(t) => {
                    if let Err(e) = server.add(t) {
                        server.fail(format!("{e:#}"));
                    }
                }
                Msg::Mover(m) => server.adopt_mover(m),
            }
        }
        if control.stop.load(Ordering::SeqCst) {
            // ptrace belongs to this thread: the movers wait, untraced, for the next server.
            server.park_movers();
            return server;
        }
        if control.all_registered.load(Ordering::SeqCst) {
            server.no_more_movers();
        }
        if control.all_registered.load(Ordering::SeqCst) && server.done() {
            server.close();
            return server;
        }
        let wait = if server.targets.is_empty() { 1 } else { 20 };
        if server.targets.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(wait as u64));
        } else if let Err(e) = server.step(wait) {
            server.fail(format!("{e:#}"));
        }
        if let Some(f) = &server.failed
            && let Ok(mut slot) = control.failed.lock()
        {
            slot.get_or_insert_with(|| f.clone());
        }
    }
}

/// The fill's read-ahead: two threads read the chunks the fill needs next and verify them, a
/// few ahead, while the server copies the previous ones into place (reading and hashing a
/// chunk costs more than placing it).
mod prefetch {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use anyhow::Result;

    use super::{DataFile, File, PathBuf, Pool, pooled, read_verified};

    /// Chunks kept ready (or being read) ahead of the fill: two moves' worth (a move of the
    /// process's mover takes 8 chunks at once; with 6 the fill waited for each).
    const AHEAD: usize = 16;
    const WORKERS: usize = 2;

    #[derive(Default)]
    struct State {
        /// By position in the plan: the chunk's bytes, or why it is not usable.
        ready: HashMap<usize, Result<Vec<u8>, String>>,
        /// Positions being read.
        reading: HashSet<usize>,
        /// The next position to read.
        claimed: usize,
        total: usize,
        stop: bool,
    }

    impl State {
        fn finished(&self) -> bool {
            self.claimed >= self.total && self.reading.is_empty()
        }
    }

    pub struct Prefetch {
        shared: Arc<(Mutex<State>, Condvar)>,
        positions: HashMap<(usize, usize), usize>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Prefetch {
        pub fn start(files: Vec<(PathBuf, File, DataFile)>, plan: Vec<(usize, usize)>, pool: Pool) -> Result<Prefetch> {
            let state = State { total: plan.len(), ..Default::default() };
            let shared = Arc::new((Mutex::new(state), Condvar::new()));
            let positions = plan.iter().enumerate().map(|(p, key)| (*key, p)).collect();
            let (files, plan) = (Arc::new(files), Arc::new(plan));
            let mut threads = Vec::new();
            for _ in 0..WORKERS {
                let (s, f, p, b) = (shared.clone(), files.clone(), plan.clone(), pool.clone());
                threads.push(std::thread::Builder::new().name("crust-prefetch".into()).spawn(move || run(&s, &f, &p, &b))?);
            }
            Ok(Prefetch { shared, positions, threads })
        }

        pub fn finished(&self) -> bool {
            self.shared.0.lock().map(|s| s.finished()).unwrap_or(true)
        }

        /// The chunk, if the prefetcher has it or is about to; None: read it yourself.
        pub fn take(&self, source: usize, index: usize) -> Option<Result<Vec<u8>, String>> {
            let p = *self.positions.get(&(source, index))?;
            let (lock, cv) = &*self.shared;
            let mut st = lock.lock().ok()?;
            loop {
                if let Some(got) = st.ready.remove(&p) {
                    // The fill moves on in the plan's order: earlier ones will not be asked for.
                    st.ready.retain(|q, _| *q > p);
                    cv.notify_all();
                    return Some(got);
                }
                let coming = st.reading.contains(&p) || (p >= st.claimed && p < st.claimed + AHEAD && !st.stop);
                if !coming {
                    return None;
                }
                // What came before p and was not asked for (its pages came through faults)
                // must not keep the prefetcher from reaching p.
                st.ready.retain(|q, _| *q > p);
                cv.notify_all();
                st = cv.wait_timeout(st, Duration::from_millis(10)).ok()?.0;
            }
        }
    }

    impl Drop for Prefetch {
        fn drop(&mut self) {
            if let Ok(mut st) = self.shared.0.lock() {
                st.stop = true;
            }
            self.shared.1.notify_all();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    fn run(shared: &(Mutex<State>, Condvar), files: &[(PathBuf, File, DataFile)], plan: &[(usize, usize)], pool: &Pool) {
        let (lock, cv) = shared;
        loop {
            let pos = {
                let Ok(mut st) = lock.lock() else { return };
                while !st.stop && st.claimed < st.total && st.ready.len() + st.reading.len() >= AHEAD {
                    st = match cv.wait(st) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                }
                if st.stop || st.claimed >= st.total {
                    cv.notify_all();
                    return;
                }
                let pos = st.claimed;
                st.claimed += 1;
                st.reading.insert(pos);
                pos
            };
            let (source, index) = plan[pos];
            let (path, file, record) = &files[source];
            let got = read_verified(path, file, record, index, pooled(pool)).map_err(|e| format!("{e:#}"));
            let Ok(mut st) = lock.lock() else { return };
            st.reading.remove(&pos);
            st.ready.insert(pos, got);
            cv.notify_all();
        }
    }
}

/// crust-lazyguard: a small detached process that holds a copy of every userfaultfd the restore
/// registered, and a pidfd of its process, for as long as a server (crust's thread, then
/// crust-lazypages) may still owe pages. The server's end of their socket is held by crust and
/// the helper only: if both are gone before the server said it is done (killed, crashed), the
/// guard kills the restored processes. Because it holds the userfaultfds, their registrations
/// do not end when the server dies, so no thread can read a missing page as zeros meanwhile
/// (a fault waits until the kill). It exits when told the fill is done, or after the kill.
mod guard {
    use super::*;

    pub fn start() -> Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair().context("socketpair for crust-lazyguard")?;
        let keep = [theirs.as_raw_fd()];
        crate::sys::spawn_detached("crust-lazyguard", &keep, move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| watch(theirs)));
        })
        .map_err(|e| anyhow::anyhow!("starting crust-lazyguard: {e}"))?;
        Ok(ours)
    }

    fn watch(sock: UnixStream) {
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut pidfds: Vec<OwnedFd> = Vec::new();
        loop {
            match crate::sys::socket::receive(sock.as_fd(), 1, 0) {
                Ok(r) if r.len == 1 && r.data[0] == b'D' => return,
                Ok(r) if r.len == 1 && r.data[0] == b'T' && r.rights.len() == 2 => {
                    let mut rights = r.rights.into_iter();
                    held.extend(rights.next());
                    pidfds.extend(rights.next());
                }
                Ok(r) if r.len > 0 => {}
                Err(e) if matches!(e.errno(), Some(Errno::EINTR)) => {}
                // End of file (or a broken socket): the server is gone before the end.
                _ => break,
            }
        }
        for p in &pidfds {
            let _ = uffd::kill_by_pidfd(p.as_fd());
        }
        if !pidfds.is_empty() {
            kmsg("crust-lazyguard: the lazy page server ended before every page was in: the restored processes were killed");
        }
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(ranges: &[(u64, u64, u64)]) -> Owed {
        let mut o = Owed::default();
        for (a, l, f) in ranges {
            o.insert(*a, *l, *f);
        }
        o
    }

    #[test]
    fn taking_the_middle_of_a_range_leaves_both_ends_with_their_offsets() {
        let mut o = owed(&[(0x1000, 0x4000, 0)]);
        o.take(0x2000, 0x3000);
        assert_eq!(o, owed(&[(0x1000, 0x1000, 0), (0x3000, 0x2000, 0x2000)]));
        assert_eq!(o.containing(0x3fff), Some((0x3000, 0x2000, 0x2000)));
        assert_eq!(o.containing(0x2000), None);
    }

    #[test]
    fn remap_moves_the_owed_part_and_keeps_file_offsets() {
        let mut o = owed(&[(0x1000, 0x3000, 0x10000), (0x8000, 0x1000, 0x20000)]);
        o.remap(0x2000, 0x100000, 0x7000);
        assert_eq!(o, owed(&[(0x1000, 0x1000, 0x10000), (0x100000, 0x2000, 0x11000), (0x106000, 0x1000, 0x20000)]));
    }
}
