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
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, bail};

use super::DumpCtx;
use super::page_copy::{ChunkHook, Piece};
use crate::image::proto::{Vma, vma::Kind as VmaKind};
use crate::sys::PAGE_SIZE;
use crate::sys::remote::RemoteTask;
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
    REFUSED.lock().unwrap().clear();
    let Some(session) = SESSION.lock().unwrap().take() else { return Ok(()) };
    // No thread protects pages any more once the fault thread stops.
    let armed: Vec<Arc<Armed>> = session.armed.lock().unwrap().clone();
    armed.iter().for_each(|a| a.stop_protecting());
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

/// One process whose pages are copied after the tree runs on. Armed as soon as the tree is
/// frozen ([`arm_early`]): its private anonymous areas are registered, and write-protected by
/// threads of crust while the tracer collects the other kinds; where each page goes in the
/// page file (the layout) is set later, by its memory dump ([`arm`]).
pub struct Armed {
    pid: i32,
    uffd: OwnedFd,
    /// Registered, write-protected ranges, sorted (set again at the freeze for a process
    /// armed ahead of it).
    registered: std::sync::RwLock<Vec<(u64, u64)>>,
    /// Armed before the freeze ([`protect_ahead`]) and the tree not frozen yet: a write
    /// fault lifts the protection and saves nothing. Changed under the store's lock.
    ahead: AtomicBool,
    /// Armed ahead of the freeze: an event before the layout is set came before the freeze
    /// (the frozen tree changes no memory), and does not break the attempt.
    armed_ahead: bool,
    protecting: Mutex<Protecting>,
    protected: std::sync::Condvar,
    layout: OnceLock<Layout>,
    store: Mutex<Store>,
    broken: Mutex<Option<String>>,
    /// Every page is in the page file.
    done: AtomicBool,
    /// Pages the fault thread saved before a write.
    saved_at_fault: AtomicU64,
}

/// Where each page of the process goes in its page file.
struct Layout {
    name: String,
    file: std::fs::File,
    /// Every page run of the page file, in file (and address) order.
    pieces: Vec<Piece>,
    total: u64,
    /// Ranges whose faults save the aligned 2 MiB (transparent huge pages stay huge).
    huge: Vec<(u64, u64)>,
    saved: Vec<AtomicU64>,
}

/// How far the write-protection of a process's pieces is.
#[derive(Default)]
struct Protecting {
    /// The registered ranges (or, at the freeze of a process armed ahead, the pages found
    /// unprotected) cut into pieces, write-protected by whichever thread takes them first.
    pieces: Vec<(u64, u64)>,
    /// The next piece to take.
    next: usize,
    /// Pieces taken whose ioctl has not returned yet.
    in_flight: usize,
    failed: Option<String>,
}

/// Pages saved before the copier read them.
#[derive(Default)]
struct Store {
    /// By page of the page file.
    pages: HashMap<u64, Box<[u8]>>,
    /// By address, saved at a write fault before the layout was set (moved into `pages` then).
    early: HashMap<u64, Box<[u8]>>,
}

/// Processes of this dump that cannot make a userfaultfd: copied while frozen.
static REFUSED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Below this many resident pages, the tracer write-protects a process at once, when it arms
/// it; above, the pieces wait for threads with nothing better to do (see [`protect_piece`]).
const WRITE_PROTECT_LATER: u64 = 8192;
/// The pieces threads take in turn (a multiple of 2 MiB: protecting part of a huge page would
/// split it).
const WRITE_PROTECT_PIECE: u64 = 64 << 20;

/// Arms a frozen process of a live dump (see [`Armed`]), as soon as the tree is frozen. Its
/// faults are served from now on (the fault thread runs before any page is protected). The
/// kernel's per-page work of write-protection (about 20 ms per GiB of 4 KiB pages on one
/// core) is left, for a large process, to the smaps thread once it has read the process's
/// smaps and to the tracer while it waits for that, then before the layout is set ([`arm`]):
/// two threads, never more, so that the calls the tracer makes in the process meanwhile are
/// not kept waiting for a core (a third busy thread made them three times slower). Nothing
/// when the process may not make a userfaultfd.
pub fn arm_early(remote: &mut RemoteTask) -> Result<()> {
    if !live() {
        return Ok(());
    }
    let pid = remote.pid().as_raw();
    if let Some(armed) = armed_early(pid).filter(|a| a.ahead.load(Ordering::SeqCst)) {
        return crate::timing::step("dump: catch up write-protect", || armed.catch_up());
    }
    let pidfd = crate::sys::pidfd::pidfd_open(pid)?;
    let Some(armed) = arm_process(remote, &pidfd, false)? else {
        REFUSED.lock().unwrap().push(pid);
        return Ok(());
    };
    let resident = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .unwrap_or(u64::MAX);
    if resident < WRITE_PROTECT_LATER {
        crate::timing::step("dump: write-protect", || armed.wait_protected())?;
    }
    Ok(())
}

/// Before the freeze of a live dump: arms every process of the tree (each held for a moment, as
/// a dump holds it, while it makes its userfaultfd and crust registers its areas) and
/// write-protects their memory while they run, on two threads. A write meanwhile is let go at
/// once and saves nothing (the memory of the freeze is not decided yet); at the freeze only
/// the pages written or faulted in since are protected again ([`Armed::catch_up`]), so the
/// kernel's per-page work (about 20 ms per GiB of 4 KiB pages) is no longer done while the
/// tree is frozen. A process that cannot be armed now is armed at the freeze, as before.
pub fn protect_ahead(root: i32) {
    let min_anon_kib = match std::env::var("CRUST_PROTECT_AHEAD").as_deref() {
        // Everything protected while frozen, as before (to compare, and for tests).
        Ok("never") => return,
        // Every process, whatever its size (for tests).
        Ok("always") => 0,
        _ => AHEAD_MIN_ANON_KIB,
    };
    if !live() {
        return;
    }
    let limit = std::time::Duration::from_secs(2);
    for pid in tree_pids(root).into_iter().filter(|&pid| anon_kib(pid).is_some_and(|kib| kib >= min_anon_kib)) {
        let armed = crate::dump::while_held(pid, limit, |remote| {
            let pidfd = crate::sys::pidfd::pidfd_open(pid)?;
            arm_process(remote, &pidfd, true)
        });
        match armed {
            Ok(Some(_)) => tracing::info!(pid, "write-protecting its memory ahead of the freeze"),
            Ok(None) => {}
            Err(e) => tracing::debug!(pid, "not write-protected ahead of the freeze: {e:#}"),
        }
    }
    let armed: Vec<Arc<Armed>> = match SESSION.lock().unwrap().as_ref() {
        Some(session) => session.armed.lock().unwrap().iter().filter(|a| a.ahead.load(Ordering::SeqCst)).cloned().collect(),
        None => return,
    };
    let protect = || {
        for a in &armed {
            while a.protect_one() {}
        }
        Ok(())
    };
    // A piece that fails leaves its pages unprotected: the freeze finds and protects them.
    let _ = crate::timing::step("dump: write-protect ahead", || super::page_copy::on_workers(2, "write-protect", |_| protect()));
}

/// Processes with less private memory than this are protected at the freeze, as before: their
/// protection costs well under a millisecond there (about 20 ms per GiB), less than holding
/// them once more ahead of the freeze (a tree of many small processes would pay it for each).
const AHEAD_MIN_ANON_KIB: u64 = 64 * 1024;

/// The process's resident private memory (RssAnon), in KiB.
fn anon_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("RssAnon:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `root` and its descendants, as /proc shows them now (the tree runs: one forked meanwhile
/// is armed at the freeze).
fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < 100_000 {
        let pid = out[i];
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// Write-protects one piece of process `pid`, if one is left: whether one was.
pub fn protect_piece(pid: i32) -> bool {
    armed_early(pid).is_some_and(|a| crate::timing::step("dump: write-protect", || a.protect_one()))
}

/// Makes the process's userfaultfd, registers its private anonymous areas and enlists it with
/// the fault thread; None (logged) when it must be copied while frozen.
fn arm_process(remote: &mut RemoteTask, pidfd: &OwnedFd, ahead: bool) -> Result<Option<Arc<Armed>>> {
    let pid = remote.pid().as_raw();
    let Some(uffd) = take_userfaultfd(remote, pidfd)? else { return Ok(None) };
    let features = uffd::FEATURE_PAGEFAULT_FLAG_WP | uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP | uffd::FEATURE_EVENT_REMAP;
    match uffd::api(uffd.as_fd(), features) {
        Ok(granted) if granted & features == features => {}
        Ok(granted) => {
            tracing::info!(pid, "copying the pages while frozen: userfaultfd lacks features {:#x}", features & !granted);
            return Ok(None);
        }
        Err(e) => {
            tracing::info!(pid, "copying the pages while frozen: ioctl(UFFDIO_API): {e}");
            return Ok(None);
        }
    }
    let areas = private_anonymous_areas(pid)?;
    let registered = crate::timing::step("dump: register write-protect", || register_areas(&uffd, pid, &areas));
    let armed = Arc::new(Armed {
        pid,
        uffd,
        protecting: Mutex::new(Protecting { pieces: protect_pieces(&registered), ..Default::default() }),
        registered: std::sync::RwLock::new(registered),
        ahead: AtomicBool::new(ahead),
        armed_ahead: ahead,
        protected: std::sync::Condvar::new(),
        layout: OnceLock::new(),
        store: Mutex::new(Store::default()),
        broken: Mutex::new(None),
        done: AtomicBool::new(false),
        saved_at_fault: AtomicU64::new(0),
    });
    enlist(armed.clone());
    Ok(Some(armed))
}

/// Sets the page file of process `ctx.pid`, armed by [`arm_early`], to `vmas`' pages in
/// `name`, once every page is write-protected: its pages are copied by [`copy_deferred`].
/// False when they must be copied while frozen (the process may not make a userfaultfd).
pub fn arm(ctx: &mut DumpCtx, vmas: &[Vma], name: &str, total: u64, pieces: Vec<Piece>) -> Result<bool> {
    let pid = ctx.pid.as_raw();
    if REFUSED.lock().unwrap().contains(&pid) {
        return Ok(false);
    }
    let armed = match armed_early(pid) {
        Some(armed) => armed,
        // Not armed early (not expected: every frozen process is): armed now.
        None => match arm_process(ctx.remote, &ctx.pidfd, false)? {
            Some(armed) => armed,
            None => return Ok(false),
        },
    };
    crate::timing::step("dump: wait for write-protect", || armed.wait_protected())?;
    let file = ctx.image.create_data_file(name)?;
    crate::fault::point("dump-pages-open")?;
    let huge = vmas
        .iter()
        .filter(|v| v.kind() == VmaKind::PrivateAnonymous && (v.had_huge_pages || v.huge_page_advised))
        .map(|v| (v.start, v.end))
        .collect();
    let pages = (total / PAGE_SIZE) as usize;
    let saved = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    armed.set_layout(Layout { name: name.to_owned(), file, pieces, total, huge, saved })?;
    armed.save_unprotected_while_frozen()?;
    Ok(true)
}

/// The process's [`Armed`] of this dump, if it was armed.
fn armed_early(pid: i32) -> Option<Arc<Armed>> {
    let session = SESSION.lock().unwrap();
    session.as_ref()?.armed.lock().unwrap().iter().find(|a| a.pid == pid).cloned()
}

/// The private anonymous areas of the frozen process, from /proc/PID/maps (no page table walk,
/// unlike smaps): those the memory dump sees as such, crust's scratch area being shared.
fn private_anonymous_areas(pid: i32) -> Result<Vec<(u64, u64)>> {
    use procfs::process::{MMPermissions, MMapPath};
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("pid {pid}: reading /proc/{pid}/maps"))?;
    let maps = super::smaps::parse(&text).with_context(|| format!("pid {pid}: /proc/{pid}/maps"))?;
    let anonymous = |name: &MMapPath| match name {
        MMapPath::Anonymous | MMapPath::Heap | MMapPath::Stack => true,
        // Named by the program (PR_SET_VMA_ANON_NAME): private anonymous memory all the same.
        MMapPath::Other(name) => name.starts_with("anon:"),
        _ => false,
    };
    Ok(maps.iter().filter(|m| !m.perms.contains(MMPermissions::SHARED) && anonymous(&m.pathname)).map(|m| m.address).collect())
}

/// Registers each area for write-protection: the registered ranges (areas side by side are
/// registered by one call, and kept as one range). An area the kernel refuses (EBUSY: the
/// program's own userfaultfd has it; EINVAL: droppable memory) is copied while frozen: when
/// a call over several areas fails, each is registered on its own. An area without pages
/// costs only the call: a page the program touches there later is an ordinary fault.
fn register_areas(uffd: &OwnedFd, pid: i32, areas: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut registered = Vec::new();
    for (start, end) in side_by_side(areas) {
        if uffd::register_wp(uffd.as_fd(), start, end - start).is_ok() {
            registered.push((start, end));
            continue;
        }
        for &(s, e) in areas.iter().filter(|&&(s, e)| s >= start && e <= end) {
            match uffd::register_wp(uffd.as_fd(), s, e - s) {
                Ok(()) => registered.push((s, e)),
                Err(e2) => tracing::info!(pid, start = s, end = e, "this area is copied while frozen: ioctl(UFFDIO_REGISTER): {e2}"),
            }
        }
    }
    side_by_side(&registered)
}

/// `areas` (in address order) with those side by side joined.
fn side_by_side(areas: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in areas {
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// Makes a userfaultfd inside the process (injected userfaultfd(2): it belongs to the
/// process's mm), takes a copy and closes the process's own. None when the process may not.
fn take_userfaultfd(remote: &mut RemoteTask, pidfd: &OwnedFd) -> Result<Option<OwnedFd>> {
    let pid = remote.pid().as_raw();
    // Not UFFD_USER_MODE_ONLY: a write by the kernel (read() into a protected buffer) must
    // wait for crust like any other, not fail with EFAULT.
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = remote.syscall_raw(libc::SYS_userfaultfd, &[flags])?;
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
    let taken = crate::sys::pidfd::pidfd_getfd(pidfd, pid, fd as i32);
    remote.syscall("close(userfaultfd)", libc::SYS_close, &[fd as u64])?;
    Ok(Some(taken?))
}

/// `ranges` cut into the pieces the write-protect threads take in turn, at multiples of
/// [`WRITE_PROTECT_PIECE`].
fn protect_pieces(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let next = ((at / WRITE_PROTECT_PIECE + 1) * WRITE_PROTECT_PIECE).min(end);
            out.push((at, next));
            at = next;
        }
    }
    out
}

impl Armed {
    fn layout(&self) -> Result<&Layout> {
        self.layout.get().with_context(|| format!("pid {}: its pages were never laid out in a page file", self.pid))
    }

    fn file_page(layout: &Layout, address: u64) -> Option<u64> {
        let i = layout.pieces.partition_point(|p| p.address + p.len <= address);
        let p = layout.pieces.get(i)?;
        (address >= p.address).then(|| (p.file_offset + (address - p.address)) / PAGE_SIZE)
    }

    fn is_registered(&self, address: u64) -> bool {
        self.registered.read().unwrap().iter().any(|&(s, e)| address >= s && address < e)
    }

    /// Sets page `n`'s bit; whether it was set already.
    fn test_and_set(layout: &Layout, n: u64) -> bool {
        let bit = 1u64 << (n % 64);
        layout.saved[(n / 64) as usize].fetch_or(bit, Ordering::SeqCst) & bit != 0
    }

    fn is_saved(layout: &Layout, n: u64) -> bool {
        layout.saved[(n / 64) as usize].load(Ordering::SeqCst) & (1 << (n % 64)) != 0
    }

    /// Write-protects the next piece, if one is left: whether one was. The kernel's work is
    /// per page table entry under the mmap lock taken for reading and each page table's own
    /// lock, so two threads protect two pieces at once without waiting for each other.
    fn protect_one(&self) -> bool {
        let (start, end) = {
            let mut p = self.protecting.lock().unwrap();
            let Some(&piece) = p.pieces.get(p.next) else { return false };
            p.next += 1;
            p.in_flight += 1;
            piece
        };
        let done = uffd::write_protect(self.uffd.as_fd(), start, end - start, true);
        let mut p = self.protecting.lock().unwrap();
        p.in_flight -= 1;
        if let Err(e) = done {
            p.failed.get_or_insert(format!("pid {}: ioctl(UFFDIO_WRITEPROTECT) of {start:#x}-{end:#x}: {e}", self.pid));
        }
        self.protected.notify_all();
        true
    }

    /// A write before the freeze, to a page protected ahead of it: let go at once, saving
    /// nothing (the memory of the freeze is not decided yet); the freeze protects it again.
    /// The whole 2 MiB around it within its area, so that a huge page is not split (the
    /// freeze finds and protects again every page let go).
    fn let_write_ahead(&self, page: u64) {
        let area = self.registered.read().unwrap().iter().copied().find(|&(s, e)| page >= s && page < e);
        let (start, end) = match area {
            Some((s, e)) => ((page & !(HUGE - 1)).max(s), ((page & !(HUGE - 1)) + HUGE).min(e)),
            None => (page, page + PAGE_SIZE),
        };
        let fd = self.uffd.as_fd();
        if uffd::write_protect(fd, start, end - start, false).is_ok() {
            return;
        }
        // The window reaches an area mapped since the registration (the kernel stops there,
        // ENOENT, and wakes nobody): the page alone; if even that fails, the thread is woken
        // to fault again (a thread left waiting would hang the program and the freeze).
        if uffd::write_protect(fd, page, PAGE_SIZE, false).is_err() {
            let _ = uffd::wake(fd, page, PAGE_SIZE);
        }
    }

    /// At the freeze, for a process armed ahead of it: from now on a write fault saves its
    /// page; the areas are registered again as they are now (those mapped since), and what is
    /// not protected in them (pages written or faulted in since they were protected) becomes
    /// the pieces to protect, instead of all the memory.
    fn catch_up(&self) -> Result<()> {
        drop(self.stop_ahead());
        let areas = private_anonymous_areas(self.pid)?;
        let registered = register_areas(&self.uffd, self.pid, &areas);
        let pagemap = crate::sys::pagemap::PageMap::open(self.pid)?;
        // Its walk of the page tables, 0.7 ms per GiB, on both cores.
        let walks = crate::sys::pagemap::walk_in_two(&registered, |part| {
            part.iter().map(|&(start, end)| pagemap.unprotected_runs(start, end)).collect::<Result<Vec<_>, _>>()
        });
        let mut unprotected = Vec::new();
        for walk in walks {
            unprotected.extend(walk?.into_iter().flatten());
        }
        *self.registered.write().unwrap() = registered;
        let mut p = self.protecting.lock().unwrap();
        while p.in_flight > 0 {
            p = self.protected.wait(p).unwrap();
        }
        *p = Protecting { pieces: protect_pieces(&unprotected), ..Default::default() };
        drop(p);
        self.wait_protected()
    }

    /// Ends the time before the freeze: taken under the store's lock, so that a write let go
    /// before it is found unprotected by [`Self::catch_up`], and one after it is saved.
    fn stop_ahead(&self) -> std::sync::MutexGuard<'_, Store> {
        let store = self.store.lock().unwrap();
        self.ahead.store(false, Ordering::SeqCst);
        store
    }

    /// Protects the pieces left, then waits for those other threads protect: every page is
    /// protected when it returns.
    fn wait_protected(&self) -> Result<()> {
        while self.protect_one() {}
        let mut p = self.protecting.lock().unwrap();
        while p.in_flight > 0 {
            p = self.protected.wait(p).unwrap();
        }
        match &p.failed {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    /// Leaves the pieces not taken yet and waits for those under way (a failed dump).
    fn stop_protecting(&self) {
        let mut p = self.protecting.lock().unwrap();
        p.next = p.pieces.len();
        while p.in_flight > 0 {
            p = self.protected.wait(p).unwrap();
        }
    }

    /// Sets the layout; pages saved at a fault before it take their place in it (those the
    /// image does not hold, shared with the parent, are dropped).
    fn set_layout(&self, layout: Layout) -> Result<()> {
        let mut store = self.store.lock().unwrap();
        if self.layout.set(layout).is_err() {
            bail!("pid {}: its page file was laid out twice", self.pid);
        }
        let layout = self.layout()?;
        for (address, page) in std::mem::take(&mut store.early) {
            if let Some(n) = Self::file_page(layout, address) {
                Self::test_and_set(layout, n);
                store.pages.insert(n, page);
            }
        }
        Ok(())
    }

    /// Pages outside the registered areas, read now (the tree is frozen) into the store.
    fn save_unprotected_while_frozen(&self) -> Result<()> {
        let layout = self.layout()?;
        let mem = super::page_copy::Source::open(self.pid)?;
        let mut store = self.store.lock().unwrap();
        for p in layout.pieces.iter().filter(|p| !self.is_registered(p.address)) {
            let mut bytes = vec![0u8; p.len as usize];
            super::page_copy::copy_chunk(&mem, p.file_offset, &[*p], &mut bytes)?;
            for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
                let n = p.file_offset / PAGE_SIZE + i as u64;
                Self::test_and_set(layout, n);
                store.pages.insert(n, page.into());
            }
        }
        Ok(())
    }

    /// A write fault at `address`: saves the page (the aligned 2 MiB in a huge page area)
    /// unless it is saved, then lifts the protection, which wakes the faulting thread.
    fn serve_fault(&self, mem: &super::page_copy::Source, address: u64) -> Result<()> {
        let page = address & !(PAGE_SIZE - 1);
        // Bits are set under the store's lock: a copier that finds one set waits here for the
        // copy to be in the store. The layout is set under it too.
        let mut store = self.store.lock().unwrap();
        if self.ahead.load(Ordering::SeqCst) {
            self.let_write_ahead(page);
            return Ok(());
        }
        let Some(layout) = self.layout.get() else {
            return self.serve_fault_early(mem, store, page);
        };
        let (start, end) = match layout.huge.iter().find(|&&(s, e)| page >= s && page < e) {
            Some(&(s, e)) => ((page & !(HUGE - 1)).max(s), ((page & !(HUGE - 1)) + HUGE).min(e)),
            None => (page, page + PAGE_SIZE),
        };
        let mine: Vec<(u64, u64)> = (start..end)
            .step_by(PAGE_SIZE as usize)
            .filter_map(|at| Self::file_page(layout, at).map(|n| (at, n)))
            .filter(|&(_, n)| !Self::test_and_set(layout, n))
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
                store.pages.insert(n, bytes[off..off + PAGE_SIZE as usize].into());
            }
        }
        drop(store);
        self.unprotect(start, end);
        Ok(())
    }

    /// A write fault before the layout is set (the kernel writing to the frozen process, as
    /// its rseq area after a call crust made there): the page, or the whole huge page it is
    /// part of (lifting the protection of part of one would split it), kept by address.
    fn serve_fault_early(&self, mem: &super::page_copy::Source, mut store: std::sync::MutexGuard<Store>, page: u64) -> Result<()> {
        let unit = page & !(HUGE - 1);
        let pagemap = crate::sys::pagemap::PageMap::open(self.pid)?;
        let huge = !pagemap.huge_stretches(unit, unit + HUGE)?.is_empty();
        let (start, end) = if huge { (unit, unit + HUGE) } else { (page, page + PAGE_SIZE) };
        let mut bytes = vec![0u8; (end - start) as usize];
        super::page_copy::copy_chunk(mem, 0, &[Piece { address: start, len: end - start, file_offset: 0 }], &mut bytes)?;
        self.saved_at_fault.fetch_add((end - start) / PAGE_SIZE, Ordering::Relaxed);
        for (i, bytes) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
            store.early.entry(start + i as u64 * PAGE_SIZE).or_insert_with(|| bytes.into());
        }
        drop(store);
        self.unprotect(start, end);
        Ok(())
    }

    /// Lifts the protection of [start, end), whose pages are saved. In a huge page area only
    /// whole 2 MiB units whose every page is saved: lifting half of one would split the page.
    fn release(&self, layout: &Layout, start: u64, end: u64) {
        let Some(&(s, e)) = layout.huge.iter().find(|&&(s, e)| start >= s && start < e) else {
            return self.unprotect(start, end);
        };
        let mut unit = start & !(HUGE - 1);
        while unit < end {
            let (a, b) = (unit.max(s), (unit + HUGE).min(e));
            let all_saved =
                (a..b).step_by(PAGE_SIZE as usize).filter_map(|at| Self::file_page(layout, at)).all(|n| Self::is_saved(layout, n));
            if all_saved {
                self.unprotect(a, b);
            }
            unit += HUGE;
        }
    }

    /// Lifts the protection of the registered parts of [start, end). Errors (the area is gone:
    /// the program unmapped it) are the events' business.
    fn unprotect(&self, start: u64, end: u64) {
        for &(s, e) in self.registered.read().unwrap().iter() {
            let (a, b) = (s.max(start), e.min(end));
            if a < b {
                let _ = uffd::write_protect(self.uffd.as_fd(), a, b - a, false);
            }
        }
    }

    /// Memory [start, end) was discarded, unmapped or moved: the copy stays exact only if
    /// every page of the image there is saved.
    fn memory_changed(&self, what: &str, start: u64, end: u64) {
        let why = match self.layout.get() {
            // (Nothing discards memory of a frozen process: the attempt is not trusted.)
            None => Some(format!("pid {}: {what} of {start:#x}-{end:#x} while it was frozen", self.pid)),
            Some(layout) => (start & !(PAGE_SIZE - 1)..end)
                .step_by(PAGE_SIZE as usize)
                .find(|&at| Self::file_page(layout, at).is_some_and(|n| !Self::is_saved(layout, n)))
                .map(|at| format!("pid {}: {what} of {start:#x}-{end:#x} before page {at:#x} was saved", self.pid)),
        };
        if let Some(why) = why {
            tracing::info!("{why}");
            self.broken.lock().unwrap().get_or_insert(why);
        }
    }

    fn handle(&self, mem: &super::page_copy::Source, event: &uffd::Event) -> Result<()> {
        if self.armed_ahead && self.layout.get().is_none() && !matches!(event, uffd::Event::PageFault { .. }) {
            // Memory the program dropped, unmapped or moved before the freeze: the freeze
            // finds the areas again (catch_up); nothing of it was saved.
            return Ok(());
        }
        match *event {
            uffd::Event::PageFault { address, .. } => self.serve_fault(mem, address),
            uffd::Event::Remove { start, end, unmapped } => {
                self.memory_changed(if unmapped { "munmap" } else { "madvise" }, start, end);
                Ok(())
            }
            uffd::Event::Remap { from, len, .. } => {
                self.memory_changed("mremap", from, from + len);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl ChunkHook for Armed {
    fn wanted(&self, piece: &Piece) -> bool {
        self.is_registered(piece.address)
    }

    fn copied(&self, _index: usize, pieces: &[Piece], bytes: &mut [u8]) -> Result<()> {
        let layout = self.layout()?;
        let base = pieces.first().map_or(0, |p| p.file_offset);
        for p in pieces {
            for i in 0..p.len / PAGE_SIZE {
                let n = p.file_offset / PAGE_SIZE + i;
                if Self::test_and_set(layout, n) {
                    let store = self.store.lock().unwrap();
                    let page = store
                        .pages
                        .get(&n)
                        .with_context(|| format!("pid {}: page {n} of {} marked saved but not kept", self.pid, layout.name))?;
                    let at = (n * PAGE_SIZE - base) as usize;
                    bytes[at..at + PAGE_SIZE as usize].copy_from_slice(page);
                }
            }
        }
        for p in pieces {
            self.release(layout, p.address, p.address + p.len);
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
        // One armed ahead that the freeze never reached (it ended before) has nothing to copy.
        Some(session) => session.armed.lock().unwrap().iter().filter(|a| !a.ahead.load(Ordering::SeqCst)).cloned().collect(),
        None => return Ok(()),
    };
    let mut result = Ok(());
    for a in &armed {
        crate::fault::point("dump-live-copy")?;
        let copied = a.layout().and_then(|l| {
            let record = super::page_copy::copy_to_file(a.pid, &l.file, &l.name, &l.pieces, l.total, Some(a.as_ref()))?;
            Ok((record, l.total))
        });
        a.done.store(true, Ordering::SeqCst);
        let broken = a.broken.lock().unwrap().clone();
        match (copied, broken) {
            (Ok((record, total)), None) => {
                let faults = a.saved_at_fault.load(Ordering::Relaxed);
                tracing::info!(
                    pid = a.pid,
                    "{} pages copied while the process ran, {faults} of them saved at a write fault first",
                    total / PAGE_SIZE
                );
                image.hashed_while_written(record);
                if let Err(e) = a.layout().and_then(|l| Ok(image.sync_data_file_deferred(&l.name, &l.file)?)) {
                    result = Err(e);
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
            match uffd::read_events(a.uffd.as_fd(), &mut events) {
                Ok(()) => {}
                // Armed ahead, it ended before the freeze: nothing of it is dumped.
                Err(_) if a.ahead.load(Ordering::SeqCst) => continue,
                Err(e) => return Err(e).with_context(|| format!("pid {}: read(userfaultfd)", a.pid)),
            }
            if events.is_empty() {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = mems.entry(a.pid) {
                e.insert(super::page_copy::Source::open(a.pid)?);
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
