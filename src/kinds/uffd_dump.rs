//! `dump -R` without stopping the program for its pages: while the tree is frozen, each
//! process's private anonymous memory is write-protected through a userfaultfd made inside
//! the process (taken by crust, the process's copy closed, so its fd table is as it was);
//! the tree runs on at once, crust copies the pages (page_copy) and a fault thread saves a page
//! the program is about to write before the write goes through. The image is the memory of
//! the moment of the freeze. docs/memory-dump.md explains the kernel facts this relies on.
//!
//! Who keeps which copy of a page: a per-page `saved` bit, set by whoever read the page first
//! while it was still protected. The fault thread sets it (under the store's lock) and keeps
//! its copy in the store, then lifts the protection; the copier reads a chunk, then sets the
//! bits: a page already set takes the store's copy (the copier's read may be newer). The
//! copier lifts the protection of a chunk once its bits are set.
//!
//! What cannot be copied live is copied while frozen into the store: areas userfaultfd cannot
//! protect (private file mappings' changed pages, droppable memory, an area already registered
//! by the program's own userfaultfd). A process that cannot make a userfaultfd (no
//! CAP_SYS_PTRACE and vm.unprivileged_userfaultfd=0) is copied entirely while frozen. If the
//! program discards, unmaps or moves memory not saved yet, the attempt fails (the program runs
//! on) and the dump starts again; after two such attempts it copies while frozen.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::DumpCtx;
use super::page_copy::{ChunkHook, Piece};
use crate::image::proto::{Vma, vma::Kind as VmaKind};
use crate::sys::PAGE_SIZE;
use crate::sys::uffd;

const HUGE: u64 = 2 << 20;

/// Whether this dump copies pages live (set by dump.rs for each attempt).
static LIVE: AtomicBool = AtomicBool::new(false);
/// The processes armed so far, and the thread serving their faults.
static SESSION: Mutex<Option<Session>> = Mutex::new(None);

/// The fault thread starts with the first armed process, not when the tree runs on: the
/// kernel itself writes to protected memory of a frozen process (the rseq area of a thread
/// after each system call crust runs in it), and such a write waits for the fault thread.
struct Session {
    armed: Arc<Mutex<Vec<Arc<Armed>>>>,
    stop: Arc<AtomicBool>,
    server: std::thread::JoinHandle<Result<()>>,
}

/// The error of a live copy that could not stay exact (memory discarded, unmapped or moved
/// before it was saved, or the copy failed while the program ran): the dump is tried again.
#[derive(Debug)]
pub struct MemoryMoved(pub String);

impl std::fmt::Display for MemoryMoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the memory changed under the live copy: {}", self.0)
    }
}

impl std::error::Error for MemoryMoved {}

pub fn set_live(live: bool) {
    abandon();
    LIVE.store(live, Ordering::SeqCst);
}

pub fn live() -> bool {
    LIVE.load(Ordering::SeqCst)
}

/// Whether `e` asks for another attempt.
pub fn is_memory_moved(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<MemoryMoved>().is_some())
}

/// A failed dump drops what was armed: closing the userfaultfds unprotects everything and
/// wakes any thread waiting on a fault.
pub fn abandon() {
    let _ = end_session();
}

/// Stops the fault thread and closes every userfaultfd; the fault thread's error, if any.
fn end_session() -> Result<()> {
    let Some(session) = SESSION.lock().unwrap().take() else { return Ok(()) };
    session.stop.store(true, Ordering::SeqCst);
    let served = session.server.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the fault thread panicked")));
    session.armed.lock().unwrap().clear();
    served
}

/// Adds an armed process to the session, starting its fault thread with the first.
fn enlist(armed: Arc<Armed>) {
    let mut session = SESSION.lock().unwrap();
    let session = session.get_or_insert_with(|| {
        let list: Arc<Mutex<Vec<Arc<Armed>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, st) = (list.clone(), stop.clone());
        let server = std::thread::spawn(move || serve_faults(&l, &st));
        Session { armed: list, stop, server }
    });
    session.armed.lock().unwrap().push(armed);
}

/// One process whose pages are copied after the tree runs on.
pub struct Armed {
    pid: i32,
    uffd: OwnedFd,
    name: String,
    file: std::fs::File,
    /// Every page run of the page file, in file (and address) order.
    pieces: Vec<Piece>,
    total: u64,
    /// Registered, write-protected ranges, sorted.
    registered: Vec<(u64, u64)>,
    /// Ranges whose faults save the aligned 2 MiB (transparent huge pages stay huge).
    huge: Vec<(u64, u64)>,
    saved: Vec<AtomicU64>,
    store: Mutex<HashMap<u64, Box<[u8]>>>,
    broken: Mutex<Option<String>>,
    /// Every page is in the page file.
    done: AtomicBool,
    /// Pages the fault thread saved before a write.
    saved_at_fault: AtomicU64,
}

/// Arms process `ctx.pid` for a live copy of `vmas`' pages into `name`, copied by
/// [`copy_deferred`]; false (with the reason logged) when it must be copied while frozen.
pub fn arm(ctx: &mut DumpCtx, vmas: &[Vma], name: &str, total: u64, pieces: Vec<Piece>) -> Result<bool> {
    let pid = ctx.pid.as_raw();
    let Some(uffd) = take_userfaultfd(ctx)? else { return Ok(false) };
    let features = uffd::FEATURE_PAGEFAULT_FLAG_WP | uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP | uffd::FEATURE_EVENT_REMAP;
    match uffd::api(uffd.as_fd(), features) {
        Ok(granted) if granted & features == features => {}
        Ok(granted) => {
            tracing::info!(pid, "copying the pages while frozen: userfaultfd lacks features {:#x}", features & !granted);
            return Ok(false);
        }
        Err(e) => {
            tracing::info!(pid, "copying the pages while frozen: ioctl(UFFDIO_API): {e}");
            return Ok(false);
        }
    }
    let (registered, huge) = crate::timing::step("dump: register write-protect", || register_areas(&uffd, pid, vmas));
    let file = ctx.image.create_data_file(name)?;
    crate::fault::point("dump-pages-open")?;
    let pages = (total / PAGE_SIZE) as usize;
    let armed = Armed {
        pid,
        uffd,
        name: name.to_owned(),
        file,
        pieces,
        total,
        registered,
        huge,
        saved: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        store: Mutex::new(HashMap::new()),
        broken: Mutex::new(None),
        done: AtomicBool::new(false),
        saved_at_fault: AtomicU64::new(0),
    };
    armed.save_unprotected_while_frozen()?;
    let armed = Arc::new(armed);
    enlist(armed.clone());
    crate::timing::step("dump: write-protect", || armed.write_protect_all())?;
    Ok(true)
}

/// Below this many pages of the image, one thread write-protects them all (a second thread
/// costs more than it saves).
const WRITE_PROTECT_APART: u64 = 8192;

/// `ranges` cut at `at`: the parts below it and the parts from it on.
fn split_ranges(ranges: &[(u64, u64)], at: u64) -> (Vec<(u64, u64)>, Vec<(u64, u64)>) {
    let below = ranges.iter().filter(|&&(s, _)| s < at).map(|&(s, e)| (s, e.min(at))).collect();
    let above = ranges.iter().filter(|&&(_, e)| e > at).map(|&(s, e)| (s.max(at), e)).collect();
    (below, above)
}

/// Registers for write-protection each private anonymous area with pages in the image:
/// (registered areas, those of them with huge pages). An area the kernel refuses (EBUSY: the
/// program's own userfaultfd has it; EINVAL: droppable memory) is copied while frozen.
fn register_areas(uffd: &OwnedFd, pid: i32, vmas: &[Vma]) -> (Vec<(u64, u64)>, Vec<(u64, u64)>) {
    let (mut registered, mut huge) = (Vec::new(), Vec::new());
    for vma in vmas.iter().filter(|v| !v.pages.is_empty() && v.kind() == VmaKind::PrivateAnonymous && !v.droppable) {
        match uffd::register_wp(uffd.as_fd(), vma.start, vma.end - vma.start) {
            Ok(()) => {
                registered.push((vma.start, vma.end));
                if vma.had_huge_pages || vma.huge_page_advised {
                    huge.push((vma.start, vma.end));
                }
            }
            Err(e) => {
                tracing::info!(pid, start = vma.start, end = vma.end, "this area is copied while frozen: ioctl(UFFDIO_REGISTER): {e}")
            }
        }
    }
    (registered, huge)
}

/// Makes a userfaultfd inside the process (injected userfaultfd(2): it belongs to the
/// process's mm), takes a copy and closes the process's own. None when the process may not.
fn take_userfaultfd(ctx: &mut DumpCtx) -> Result<Option<OwnedFd>> {
    let pid = ctx.pid.as_raw();
    // Not UFFD_USER_MODE_ONLY: a write by the kernel (read() into a protected buffer) must
    // wait for crust like any other, not fail with EFAULT.
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = ctx.remote.syscall_raw(libc::SYS_userfaultfd, &[flags])?;
    if fd < 0 {
        let errno = nix::errno::Errno::from_raw(-fd as i32);
        tracing::info!(
            pid,
            "copying the pages while frozen: userfaultfd() in the process: {errno} (it lacks CAP_SYS_PTRACE and vm.unprivileged_userfaultfd is 0?)"
        );
        return Ok(None);
    }
    // (A crust killed between these two calls leaves this descriptor in the process, with
    // nothing registered through it.)
    let taken = crate::sys::pidfd::pidfd_getfd(&ctx.pidfd, pid, fd as i32);
    ctx.remote.syscall("close(userfaultfd)", libc::SYS_close, &[fd as u64])?;
    Ok(Some(taken?))
}

impl Armed {
    fn file_page(&self, address: u64) -> Option<u64> {
        let i = self.pieces.partition_point(|p| p.address + p.len <= address);
        let p = self.pieces.get(i)?;
        (address >= p.address).then(|| (p.file_offset + (address - p.address)) / PAGE_SIZE)
    }

    fn is_registered(&self, address: u64) -> bool {
        self.registered.iter().any(|&(s, e)| address >= s && address < e)
    }

    /// Sets page `n`'s bit; whether it was set already.
    fn test_and_set(&self, n: u64) -> bool {
        let bit = 1u64 << (n % 64);
        self.saved[(n / 64) as usize].fetch_or(bit, Ordering::SeqCst) & bit != 0
    }

    /// Write-protects every registered area, on two threads at once when there are many pages:
    /// the kernel's work is per page table entry (about 20 ms per GiB of 4 KiB pages on one
    /// core), takes the mmap lock only for reading and each page table's own lock, so the two
    /// halves (by pages of the image) go on apart. Both are done before this returns: every
    /// page is protected before the tree runs on.
    fn write_protect_all(&self) -> Result<()> {
        let protected = || self.pieces.iter().filter(|p| self.is_registered(p.address));
        let total: u64 = protected().map(|p| p.len / PAGE_SIZE).sum();
        if total < WRITE_PROTECT_APART {
            return self.write_protect(&self.registered);
        }
        // The address below which half of the protected pages lie.
        let mut before = 0;
        let middle = protected().find_map(|p| {
            let at = (before + p.len / PAGE_SIZE >= total / 2).then(|| p.address + (total / 2 - before) * PAGE_SIZE);
            before += p.len / PAGE_SIZE;
            at
        });
        // On a 2 MiB boundary: protecting part of a huge page would split it.
        let (low, high) = split_ranges(&self.registered, middle.map_or(u64::MAX, |m| m & !(HUGE - 1)));
        std::thread::scope(|scope| {
            let other = std::thread::Builder::new().name("crust-protect".into()).spawn_scoped(scope, || self.write_protect(&high));
            let mine = self.write_protect(&low);
            match other {
                Ok(handle) => mine.and(handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the write-protect thread panicked")))),
                // Then this thread does both halves.
                Err(_) => mine.and_then(|()| self.write_protect(&high)),
            }
        })
    }

    fn write_protect(&self, ranges: &[(u64, u64)]) -> Result<()> {
        for &(start, end) in ranges {
            uffd::write_protect(self.uffd.as_fd(), start, end - start, true)
                .with_context(|| format!("pid {}: ioctl(UFFDIO_WRITEPROTECT) of {start:#x}-{end:#x}", self.pid))?;
        }
        Ok(())
    }

    /// Pages outside the registered areas, read now (the tree is frozen) into the store.
    fn save_unprotected_while_frozen(&self) -> Result<()> {
        let mem = super::page_copy::Source::open(self.pid)?;
        let mut store = self.store.lock().unwrap();
        for p in self.pieces.iter().filter(|p| !self.is_registered(p.address)) {
            let mut bytes = vec![0u8; p.len as usize];
            super::page_copy::copy_chunk(&mem, p.file_offset, &[*p], &mut bytes)?;
            for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
                let n = p.file_offset / PAGE_SIZE + i as u64;
                self.test_and_set(n);
                store.insert(n, page.into());
            }
        }
        Ok(())
    }

    /// A write fault at `address`: saves the page (the aligned 2 MiB in a huge page area)
    /// unless it is saved, then lifts the protection, which wakes the faulting thread.
    fn serve_fault(&self, mem: &super::page_copy::Source, address: u64) -> Result<()> {
        let page = address & !(PAGE_SIZE - 1);
        let (start, end) = match self.huge.iter().find(|&&(s, e)| page >= s && page < e) {
            Some(&(s, e)) => ((page & !(HUGE - 1)).max(s), ((page & !(HUGE - 1)) + HUGE).min(e)),
            None => (page, page + PAGE_SIZE),
        };
        {
            // Bits are set under the store's lock: a copier that finds one set waits here for
            // the copy to be in the store.
            let mut store = self.store.lock().unwrap();
            let mine: Vec<(u64, u64)> = (start..end)
                .step_by(PAGE_SIZE as usize)
                .filter_map(|at| self.file_page(at).map(|n| (at, n)))
                .filter(|&(_, n)| !self.test_and_set(n))
                .collect();
            if !mine.is_empty() {
                // Only the pages of the image (a read of one never touched would map it).
                let mut pieces: Vec<Piece> = Vec::new();
                for (k, &(at, _)) in mine.iter().enumerate() {
                    match pieces.last_mut() {
                        Some(p) if p.address + p.len == at => p.len += PAGE_SIZE,
                        _ => pieces.push(Piece { address: at, len: PAGE_SIZE, file_offset: k as u64 * PAGE_SIZE }),
                    }
                }
                let mut bytes = vec![0u8; mine.len() * PAGE_SIZE as usize];
                super::page_copy::copy_chunk(mem, 0, &pieces, &mut bytes)?;
                self.saved_at_fault.fetch_add(mine.len() as u64, Ordering::Relaxed);
                for (k, (_, n)) in mine.into_iter().enumerate() {
                    let off = k * PAGE_SIZE as usize;
                    store.insert(n, bytes[off..off + PAGE_SIZE as usize].into());
                }
            }
        }
        self.unprotect(start, end);
        Ok(())
    }

    /// Lifts the protection of [start, end), whose pages are saved. In a huge page area only
    /// whole 2 MiB units whose every page is saved: lifting half of one would split the page.
    fn release(&self, start: u64, end: u64) {
        let Some(&(s, e)) = self.huge.iter().find(|&&(s, e)| start >= s && start < e) else {
            return self.unprotect(start, end);
        };
        let mut unit = start & !(HUGE - 1);
        while unit < end {
            let (a, b) = (unit.max(s), (unit + HUGE).min(e));
            let all_saved = (a..b).step_by(PAGE_SIZE as usize).filter_map(|at| self.file_page(at)).all(|n| self.is_saved(n));
            if all_saved {
                self.unprotect(a, b);
            }
            unit += HUGE;
        }
    }

    fn is_saved(&self, n: u64) -> bool {
        self.saved[(n / 64) as usize].load(Ordering::SeqCst) & (1 << (n % 64)) != 0
    }

    /// Lifts the protection of the registered parts of [start, end). Errors (the area is gone:
    /// the program unmapped it) are the events' business.
    fn unprotect(&self, start: u64, end: u64) {
        for &(s, e) in &self.registered {
            let (a, b) = (s.max(start), e.min(end));
            if a < b {
                let _ = uffd::write_protect(self.uffd.as_fd(), a, b - a, false);
            }
        }
    }

    /// Memory [start, end) was discarded, unmapped or moved: the copy stays exact only if
    /// every page of the image there is saved.
    fn memory_changed(&self, what: &str, start: u64, end: u64) {
        let mut at = start & !(PAGE_SIZE - 1);
        while at < end {
            if let Some(n) = self.file_page(at)
                && !self.is_saved(n)
            {
                let why = format!("pid {}: {what} of {start:#x}-{end:#x} before page {at:#x} was saved", self.pid);
                tracing::info!("{why}");
                self.broken.lock().unwrap().get_or_insert(why);
                return;
            }
            at += PAGE_SIZE;
        }
    }

    fn handle(&self, mem: &super::page_copy::Source, event: &uffd::Event) -> Result<()> {
        match *event {
            uffd::Event::PageFault { address, .. } => self.serve_fault(mem, address),
            uffd::Event::Remove { start, end, unmapped } => {
                Ok(self.memory_changed(if unmapped { "munmap" } else { "madvise" }, start, end))
            }
            uffd::Event::Remap { from, len, .. } => Ok(self.memory_changed("mremap", from, from + len)),
            _ => Ok(()),
        }
    }
}

impl ChunkHook for Armed {
    fn wanted(&self, piece: &Piece) -> bool {
        self.is_registered(piece.address)
    }

    fn copied(&self, _index: usize, pieces: &[Piece], bytes: &mut [u8]) -> Result<()> {
        let base = pieces.first().map_or(0, |p| p.file_offset);
        for p in pieces {
            for i in 0..p.len / PAGE_SIZE {
                let n = p.file_offset / PAGE_SIZE + i;
                if self.test_and_set(n) {
                    let store = self.store.lock().unwrap();
                    let page =
                        store.get(&n).with_context(|| format!("pid {}: page {n} of {} marked saved but not kept", self.pid, self.name))?;
                    let at = (n * PAGE_SIZE - base) as usize;
                    bytes[at..at + PAGE_SIZE as usize].copy_from_slice(page);
                }
            }
        }
        for p in pieces {
            self.release(p.address, p.address + p.len);
        }
        if let Some(why) = self.broken.lock().unwrap().clone() {
            return Err(MemoryMoved(why).into());
        }
        Ok(())
    }
}

/// Copies the pages of every armed process while the tree runs (the fault thread serving
/// their write faults meanwhile), and keeps each page file's record. Each process's
/// userfaultfd is closed at the end, which unregisters every area.
pub fn copy_deferred(image: &crate::image::ImageDir) -> Result<()> {
    let armed: Vec<Arc<Armed>> = match SESSION.lock().unwrap().as_ref() {
        Some(session) => session.armed.lock().unwrap().clone(),
        None => return Ok(()),
    };
    let mut result = Ok(());
    for a in &armed {
        crate::fault::point("dump-live-copy")?;
        let copied = super::page_copy::copy_to_file(a.pid, &a.file, &a.name, &a.pieces, a.total, Some(a.as_ref()));
        a.done.store(true, Ordering::SeqCst);
        let broken = a.broken.lock().unwrap().clone();
        match (copied, broken) {
            (Ok(record), None) => {
                let faults = a.saved_at_fault.load(Ordering::Relaxed);
                tracing::info!(
                    pid = a.pid,
                    "{} pages copied while the process ran, {faults} of them saved at a write fault first",
                    a.total / PAGE_SIZE
                );
                image.hashed_while_written(record);
                if let Err(e) = image.sync_data_file_deferred(&a.name, &a.file) {
                    result = Err(e.into());
                }
            }
            (Ok(_), Some(why)) => result = Err(MemoryMoved(why).into()),
            (Err(e), _) => result = Err(e),
        }
        if result.is_err() {
            break;
        }
    }
    drop(armed);
    let result = result.and(end_session());
    result.map_err(|e| {
        if crate::interrupt::received().is_some() || is_memory_moved(&e) {
            e
        } else {
            // The program ran on meanwhile: a failed read is most likely memory it changed.
            anyhow::Error::new(MemoryMoved(format!("{e:#}")))
        }
    })
}

/// Serves write faults and events of every armed process until told to stop.
fn serve_faults(list: &Mutex<Vec<Arc<Armed>>>, stop: &AtomicBool) -> Result<()> {
    let mut mems: HashMap<i32, super::page_copy::Source> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let armed: Vec<Arc<Armed>> = list.lock().unwrap().clone();
        let fds: Vec<_> = armed.iter().map(|a| a.uffd.as_fd()).collect();
        uffd::poll_readable(&fds, 2).context("poll(userfaultfd)")?;
        for a in &armed {
            let mut events = Vec::new();
            uffd::read_events(a.uffd.as_fd(), &mut events).with_context(|| format!("pid {}: read(userfaultfd)", a.pid))?;
            if events.is_empty() {
                continue;
            }
            if !mems.contains_key(&a.pid) {
                mems.insert(a.pid, super::page_copy::Source::open(a.pid)?);
            }
            let mem = &mems[&a.pid];
            for event in &events {
                let fault = match event {
                    uffd::Event::PageFault { address, .. } => Some(address & !(PAGE_SIZE - 1)),
                    _ => None,
                };
                if let (true, Some(page)) = (a.done.load(Ordering::SeqCst), fault) {
                    // Its pages are all in: nothing to save.
                    a.unprotect(page, page + PAGE_SIZE);
                } else if let Err(e) = a.handle(mem, event) {
                    a.broken.lock().unwrap().get_or_insert(format!("{e:#}"));
                    if let Some(page) = fault {
                        a.unprotect(page, page + PAGE_SIZE);
                    }
                }
            }
        }
    }
    Ok(())
}
