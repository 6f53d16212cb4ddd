//! The lazy fill's staging, on both cores: worker threads write the verified bytes of whole
//! huge stretches into the staging groups of a process's mover (kinds/lazy_move.rs) while the
//! server thread moves the groups staged before. See docs/lazy-restore.md, "Huge pages".
//!
//! Where crust holds a read lease on the page file, the bytes come straight from a read-only
//! mapping of it: each chunk is hashed there once and copied into the process from there,
//! never into crust's memory first. The lease is what makes that as sure as a private copy:
//! F_SETLEASE F_RDLCK is refused while anyone holds the file open for writing, and any later
//! open for writing (or truncate) must break it first, the opener waiting meanwhile (fs/locks.c,
//! `break_lease`). So while F_GETLEASE still says F_RDLCK after a group is written, the file has
//! not changed since the lease was taken, and the bytes written are the bytes hashed. Once the
//! lease is broken (or where it cannot be had: another file system, a writer, leases
//! disabled), crust lets go of it at once, so the writer waits no longer, and stages from
//! chunks read into its own memory and checked there, as the rest of the fill does. A group
//! written while the lease was being broken is staged again that way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Result;
use nix::errno::Errno;

use crate::image::chunks;
use crate::image::proto::DataFile;
use crate::sys::region::MappedFile;

const F_SETLEASE: i32 = 1024;
const F_GETLEASE: i32 = 1025;
const F_SETSIG: i32 = 10;
const WORKERS: usize = 2;

/// A page file as the stagers read it: its path, an open description of it, its record.
pub struct StageSource {
    // (Dropped first: the lease is let go through `file`.)
    leased: OnceLock<Option<LeasedFile>>,
    pub path: PathBuf,
    file: File,
    pub record: DataFile,
}

impl StageSource {
    pub fn new(path: PathBuf, file: &File, record: DataFile) -> Result<StageSource> {
        Ok(StageSource { path, file: file.try_clone()?, record, leased: OnceLock::new() })
    }

    /// Its descriptor, for the detached helper to keep.
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The leased mapping, taken at the first use; None where crust cannot lease the file.
    fn leased(&self) -> Option<&LeasedFile> {
        self.leased.get_or_init(|| LeasedFile::take(&self.file, &self.path, &self.record)).as_ref().filter(|l| !l.lost())
    }

    /// This process (the detached helper, after its fork) lets go of the lease at the end.
    pub fn adopt_lease(&self) {
        if let Some(Some(l)) = self.leased.get() {
            l.holder.store(std::process::id(), Ordering::SeqCst);
        }
    }

    /// Before the fork into the helper: crust's copy of the state, dropped after the fork,
    /// leaves the lease (shared with the helper's copy) alone.
    pub fn hand_on_lease(&self) {
        if let Some(Some(l)) = self.leased.get() {
            l.holder.store(0, Ordering::SeqCst);
        }
    }

    /// Lets go of a lease that is being broken (the writer waits for that), even while no
    /// group is staged: the server calls this at each of its rounds.
    pub fn check_lease(&self) {
        if let Some(Some(l)) = self.leased.get()
            && !l.released.load(Ordering::SeqCst)
            && !l.held()
        {
            l.let_go();
        }
    }

    /// The fill is over: the lease goes.
    pub fn let_go(&self) {
        if let Some(Some(l)) = self.leased.get() {
            l.let_go();
        }
    }
}

/// File systems whose page cache is the file: a lease there sees every write (not a network
/// or FUSE file system, whose server may change a file without an open here).
fn leasable_file_system(file: &File) -> Result<(), String> {
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
    let kind = nix::sys::statfs::fstatfs(file).map_err(|e| format!("fstatfs: {e}"))?.filesystem_type();
    match [EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, BTRFS_SUPER_MAGIC, TMPFS_MAGIC].contains(&kind) {
        true => Ok(()),
        false => Err(format!("file system {:#x}, not one crust leases", kind.0)),
    }
}

/// A read lease on a page file and a read-only mapping of it.
struct LeasedFile {
    /// The description the lease is on (the lease belongs to it: closing another copy of the
    /// file does not end it).
    fd: i32,
    map: MappedFile,
    /// Held (shared) by each worker while it reads the mapping; taken whole before the lease
    /// goes, so that a writer let in (who may truncate) never finds a read under way.
    reading: RwLock<()>,
    /// F_GETLEASE said the lease is being broken, or it is gone.
    broken: AtomicBool,
    released: AtomicBool,
    /// The process that lets go of the lease: crust's, then the helper's (0: none here).
    holder: AtomicU32,
}

impl LeasedFile {
    fn take(file: &File, path: &std::path::Path, record: &DataFile) -> Option<LeasedFile> {
        if no_lease() {
            return None;
        }
        let fd = file.as_raw_fd();
        let refuse = |why: String| {
            tracing::debug!(path = %path.display(), "lazy fill: no read lease on the page file ({why}): staged from chunks read in");
            None
        };
        if let Err(e) = leasable_file_system(file) {
            return refuse(e);
        }
        // A break signals the description's owner, crust itself at first (fs/locks.c,
        // lease_setup): with SIGURG, ignored unless handled, rather than SIGIO, which would
        // end crust; the owner is cleared right after, so that nobody is signalled at all.
        if let Err(e) = crate::sys::fcntl_int(fd, F_SETSIG, libc::SIGURG) {
            return refuse(format!("F_SETSIG: {e}"));
        }
        if let Err(e) = crate::sys::fcntl_int(fd, F_SETLEASE, libc::F_RDLCK) {
            return refuse(e.to_string());
        }
        let release = |why: String| {
            let _ = crate::sys::fcntl_int(fd, F_SETLEASE, libc::F_UNLCK);
            refuse(why)
        };
        if let Err(e) = crate::sys::set_owner_ex(fd, crate::sys::F_OWNER_PID, 0) {
            return release(format!("F_SETOWN_EX: {e}"));
        }
        match file.metadata() {
            Ok(m) if m.len() == record.size => {}
            Ok(m) => return release(format!("{} bytes where the inventory says {}", m.len(), record.size)),
            Err(e) => return release(format!("fstat: {e}")),
        }
        let map = match MappedFile::open(file) {
            Ok(m) => m,
            Err(e) => return release(format!("mmap: {e}")),
        };
        tracing::debug!(path = %path.display(), "lazy fill: read lease on the page file: huge stretches staged from its mapping");
        Some(LeasedFile {
            fd,
            map,
            reading: RwLock::new(()),
            broken: AtomicBool::new(false),
            released: AtomicBool::new(false),
            holder: AtomicU32::new(std::process::id()),
        })
    }

    fn lost(&self) -> bool {
        self.broken.load(Ordering::SeqCst) || self.released.load(Ordering::SeqCst)
    }

    /// Whether the lease is still held, not being broken: nobody has opened the file for
    /// writing since it was taken. Once it says no, it says no for good.
    fn held(&self) -> bool {
        if self.lost() {
            return false;
        }
        // Being broken, F_GETLEASE says the type it is broken to (F_UNLCK).
        match crate::sys::fcntl_int(self.fd, F_GETLEASE, 0) {
            Ok(libc::F_RDLCK) => return true,
            now => {
                if !self.broken.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        fd = self.fd,
                        "lazy fill: the page file's read lease is broken (F_GETLEASE: {now:?}): staged from chunks read in from now on"
                    );
                }
            }
        }
        false
    }

    /// Lets go of the lease, once no worker reads the mapping (never while holding `reading`).
    fn let_go(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let _no_reader = self.reading.write().unwrap_or_else(|e| e.into_inner());
        if !self.released.swap(true, Ordering::SeqCst) && self.holder.load(Ordering::SeqCst) == std::process::id() {
            let _ = crate::sys::fcntl_int(self.fd, F_SETLEASE, libc::F_UNLCK);
        }
    }

    /// The bytes of `chunks` (ascending, distinct) in the mapping, each checked against its
    /// hash, for the group about to be written (a chunk two groups share is checked by each);
    /// None if the lease is gone. The caller holds `reading`.
    ///
    /// (Not mlocked: that cost 80-100 ms per GiB, a quarter of the fill. A page of the page
    /// cache evicted and read again from the device in the milliseconds between the hash and
    /// the copy is not checked again.)
    fn checked(&self, source: &StageSource, chunks: &[usize]) -> Result<Option<Vec<&[u8]>>, chunks_error::Damaged> {
        let record = &source.record;
        let mut out = Vec::with_capacity(chunks.len());
        for &index in chunks {
            let start = (index as u64 * record.chunk_size) as usize;
            let end = (start as u64 + record.chunk_size).min(record.size) as usize;
            let Some(bytes) = self.map.as_slice().get(start..end) else {
                return Err(chunks_error::Damaged(format!("{}: chunk {index} lies past its end", source.path.display())));
            };
            if !self.held() {
                return Ok(None);
            }
            chunks::verify_chunk(&source.path, record, index, bytes).map_err(|e| chunks_error::Damaged(e.to_string()))?;
            out.push(bytes);
        }
        Ok(Some(out))
    }
}

impl Drop for LeasedFile {
    fn drop(&mut self) {
        // (Not in crust once the helper took the fill over: the lease is the helper's then.)
        self.let_go();
    }
}

mod chunks_error {
    /// A chunk that does not verify: the fill fails.
    pub struct Damaged(pub String);
}

/// For tests and measurements: `CRUST_LAZY_NO_LEASE=1` stages from chunks read in.
fn no_lease() -> bool {
    static NO_LEASE: OnceLock<bool> = OnceLock::new();
    *NO_LEASE.get_or_init(|| std::env::var_os("CRUST_LAZY_NO_LEASE").is_some_and(|v| v == "1"))
}

/// Bytes of a staging: (chunk index, offset in the chunk, length), in the order written.
pub type Piece = (usize, usize, usize);

/// A group to stage: `pieces` of `source` written from `at` on in the process `pid` (a
/// thread id: its address space), with process_vm_writev, or with UFFDIO_COPY through `uffd`
/// where `at` is in an area registered with it (4 KiB pages).
pub struct Job {
    pub pid: i32,
    pub at: u64,
    pub source: Arc<StageSource>,
    pub pieces: Vec<Piece>,
    pub uffd: Option<std::os::fd::OwnedFd>,
}

/// What became of a job.
#[derive(Debug)]
pub enum Outcome {
    Staged,
    /// The lease went while it was written: to stage again (from chunks read in).
    Again,
    /// A chunk did not verify: the fill fails.
    Damaged(String),
    /// The process could not be written (gone, or its staging area): no more moves there.
    Failed(String),
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<(u64, Job)>,
    running: HashSet<u64>,
    done: HashMap<u64, Outcome>,
    stop: bool,
}

/// The staging workers.
pub struct Stager {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next_id: u64,
}

impl Stager {
    pub fn start() -> Result<Stager> {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let mut threads = Vec::new();
        for _ in 0..WORKERS {
            let s = shared.clone();
            threads.push(std::thread::Builder::new().name("crust-stager".into()).spawn(move || run(&s))?);
        }
        Ok(Stager { shared, threads, next_id: 0 })
    }

    pub fn submit(&mut self, job: Job) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let (lock, cv) = &*self.shared;
        if let Ok(mut q) = lock.lock() {
            q.pending.push_back((id, job));
        }
        cv.notify_all();
        id
    }

    /// The outcome of job `id`, waiting for it at most `wait`; None if it is not done by then.
    pub fn wait(&self, id: u64, wait: Duration) -> Option<Outcome> {
        let (lock, cv) = &*self.shared;
        let deadline = std::time::Instant::now() + wait;
        let mut q = lock.lock().ok()?;
        loop {
            if let Some(out) = q.done.remove(&id) {
                return Some(out);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            q = cv.wait_timeout(q, left).ok()?.0;
        }
    }

    /// Jobs `ids` are not wanted any more: taken back if no worker has them, else waited for
    /// (a group must not be written once it is given to another job, or unmapped).
    pub fn cancel(&self, ids: &[u64]) {
        let (lock, cv) = &*self.shared;
        let Ok(mut q) = lock.lock() else { return };
        q.pending.retain(|(i, _)| !ids.contains(i));
        while ids.iter().any(|i| q.running.contains(i)) {
            q = match cv.wait(q) {
                Ok(q) => q,
                Err(_) => return,
            };
        }
        q.done.retain(|i, _| !ids.contains(i));
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.0.lock() {
            q.stop = true;
            q.pending.clear();
        }
        self.shared.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(shared: &(Mutex<Queue>, Condvar)) {
    let (lock, cv) = shared;
    let mut buffers: Vec<Vec<u8>> = Vec::new();
    loop {
        let (id, job) = {
            let Ok(mut q) = lock.lock() else { return };
            loop {
                if q.stop {
                    return;
                }
                if let Some((id, job)) = q.pending.pop_front() {
                    q.running.insert(id);
                    break (id, job);
                }
                q = match cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        // A panic is the job's failure (the server must not wait for it forever).
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage(&job, &mut buffers)))
            .unwrap_or_else(|_| Outcome::Failed("a staging worker panicked".into()));
        let Ok(mut q) = lock.lock() else { return };
        q.running.remove(&id);
        q.done.insert(id, outcome);
        cv.notify_all();
    }
}

/// Writes the job's bytes into its group: from the leased mapping, or from chunks read in.
fn stage(job: &Job, buffers: &mut Vec<Vec<u8>>) -> Outcome {
    let source = &job.source;
    if let Some(leased) = source.leased() {
        let staged = {
            let _reading = leased.reading.read().unwrap_or_else(|e| e.into_inner());
            stage_mapped(job, leased)
        };
        // (Let go of outside the read: a writer let in may truncate the file.)
        if leased.lost() {
            leased.let_go();
        }
        match staged {
            Some(outcome) => return outcome,
            None => return stage_read(job, buffers),
        }
    }
    stage_read(job, buffers)
}

/// The job staged from the leased mapping: None if the lease went before anything was written.
fn stage_mapped(job: &Job, leased: &LeasedFile) -> Option<Outcome> {
    let chunks = chunks_of(job);
    let bytes = match leased.checked(&job.source, &chunks) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(chunks_error::Damaged(m)) => return Some(Outcome::Damaged(m)),
    };
    let slices = match slices_of(job, &chunks, &bytes) {
        Ok(s) => s,
        Err(damaged) => return Some(damaged),
    };
    let written = place(job, &slices);
    if let Err(e) = crate::fault::point("lazy-staged") {
        return Some(Outcome::Failed(format!("{e:#}")));
    }
    Some(match (written, leased.held()) {
        (Ok(true), true) => Outcome::Staged,
        (Ok(false), true) => Outcome::Again,
        (Err(e), true) => Outcome::Failed(e),
        // Written while the lease was being broken: maybe not the bytes checked.
        (_, false) => Outcome::Again,
    })
}

/// The job staged from its chunks read into crust's memory and verified there.
fn stage_read(job: &Job, buffers: &mut Vec<Vec<u8>>) -> Outcome {
    let source = &job.source;
    let chunks = chunks_of(job);
    buffers.resize_with(chunks.len().max(buffers.len()), Vec::new);
    for (buf, &index) in buffers.iter_mut().zip(&chunks) {
        match super::lazy_pages::read_verified(&source.path, &source.file, &source.record, index, std::mem::take(buf)) {
            Ok(read) => *buf = read,
            Err(e) => return Outcome::Damaged(format!("{e:#}")),
        }
    }
    let bytes: Vec<&[u8]> = buffers.iter().take(chunks.len()).map(Vec::as_slice).collect();
    let slices = match slices_of(job, &chunks, &bytes) {
        Ok(s) => s,
        Err(damaged) => return damaged,
    };
    match place(job, &slices) {
        Ok(true) => Outcome::Staged,
        Ok(false) => Outcome::Again,
        Err(e) => Outcome::Failed(e),
    }
}

/// The chunks the job's pieces come from, ascending, each once.
fn chunks_of(job: &Job) -> Vec<usize> {
    let mut chunks: Vec<usize> = job.pieces.iter().map(|p| p.0).collect();
    chunks.sort_unstable();
    chunks.dedup();
    chunks
}

/// The job's pieces in `bytes`, the contents of `chunks` (from [`chunks_of`]).
fn slices_of<'a>(job: &Job, chunks: &[usize], bytes: &[&'a [u8]]) -> Result<Vec<&'a [u8]>, Outcome> {
    let mut slices = Vec::with_capacity(job.pieces.len());
    for &(index, at, len) in &job.pieces {
        let chunk: Option<&'a [u8]> = chunks.binary_search(&index).ok().and_then(|k| bytes.get(k).copied());
        match chunk.and_then(|b| b.get(at..at + len)) {
            Some(b) => slices.push(b),
            None => return Err(Outcome::Damaged(format!("{}: a saved run past the end of chunk {index}", job.source.path.display()))),
        }
    }
    Ok(slices)
}

/// The job's bytes into its group, one piece after the other; Ok(false): given up for now
/// (an event of the process's waits for the server to read it).
fn place(job: &Job, pieces: &[&[u8]]) -> Result<bool, String> {
    match &job.uffd {
        None => write(job.pid, job.at, pieces).map(|()| true),
        Some(uffd) => copy(uffd, job.pid, job.at, pieces),
    }
}

/// UFFDIO_COPY of `pieces` from `at` on into a registered staging area. A page still there
/// (a group given up, or moved in part) is written over with process_vm_writev (it is
/// present: no fault). EAGAIN (an event of the process waits for the server) gives up.
fn copy(uffd: &std::os::fd::OwnedFd, pid: i32, at: u64, pieces: &[&[u8]]) -> Result<bool, String> {
    use std::os::fd::AsFd;
    let mut address = at;
    for piece in pieces {
        let mut done = 0usize;
        while done < piece.len() {
            let to = address + done as u64;
            match crate::sys::uffd::copy(uffd.as_fd(), to, &piece[done..]) {
                Ok(n) => done += n as usize,
                Err(Errno::EEXIST) => {
                    let page = (crate::sys::PAGE_SIZE as usize).min(piece.len() - done);
                    write(pid, to, &[&piece[done..done + page]])?;
                    done += page;
                }
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(format!("pid {pid}: UFFDIO_COPY of {} bytes at {to:#x}: {e}", piece.len() - done)),
            }
        }
        address += piece.len() as u64;
    }
    Ok(true)
}

/// process_vm_writev of `pieces`, one after the other, from `at`, until all are written.
fn write(pid: i32, at: u64, pieces: &[&[u8]]) -> Result<(), String> {
    crate::sys::write_process_memory(pid, at, pieces).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MIB: usize = 1 << 20;

    /// A page file of 3 MiB and a bit, every byte patterned, in the temporary directory (ext4
    /// here, as the tests' images), with its record.
    fn page_file(name: &str) -> (PathBuf, Vec<u8>, DataFile) {
        let data: Vec<u8> = (0..3 * MIB + 4096).map(|i| (i * 7 + i / 4096) as u8).collect();
        let path = std::env::temp_dir().join(format!("crust-stage-{}-{name}.img", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let record = chunks::record("pages-1.img", &data);
        (path, data, record)
    }

    fn source(path: &std::path::Path, record: &DataFile) -> StageSource {
        StageSource::new(path.to_owned(), &File::open(path).unwrap(), record.clone()).unwrap()
    }

    #[test]
    fn a_writer_breaks_the_lease_and_gets_in_once_crust_lets_go() {
        let (path, data, record) = page_file("writer");
        let s = source(&path, &record);
        let leased = s.leased().expect("a read lease (root, on ext4)");
        assert_eq!(leased.checked(&s, &[1]).ok().flatten().unwrap(), vec![&data[MIB..2 * MIB]]);
        let p = path.clone();
        let opener = std::thread::spawn(move || {
            let started = Instant::now();
            drop(std::fs::OpenOptions::new().write(true).open(p).unwrap());
            started.elapsed()
        });
        // The open waits on the lease until a round of the server sees the break and lets go.
        let deadline = Instant::now() + Duration::from_secs(10);
        while leased.held() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        s.check_lease();
        assert!(!leased.held(), "the lease still held 10 s after a writer's open");
        let waited = opener.join().unwrap();
        assert!(waited < Duration::from_secs(10), "the writer waited {waited:?}");
        assert!(s.leased().is_none(), "a broken lease is still offered to the stagers");
        assert!(matches!(leased.checked(&s, &[1]), Ok(None)), "a chunk handed out from the mapping after the break");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn no_lease_while_someone_holds_the_file_open_for_writing() {
        let (path, _, record) = page_file("open-writer");
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(source(&path, &record).leased().is_none(), "a read lease next to a writer");
        drop(writer);
        assert!(source(&path, &record).leased().is_some(), "no read lease once the writer is gone");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_chunk_that_does_not_verify_in_the_mapping_is_named() {
        let (path, mut data, record) = page_file("damaged");
        data[MIB + 77] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let s = source(&path, &record);
        let leased = s.leased().expect("a read lease");
        assert!(matches!(leased.checked(&s, &[0]), Ok(Some(_))));
        match leased.checked(&s, &[0, 1]) {
            Err(chunks_error::Damaged(m)) => assert!(m.contains(&format!("bytes {MIB}..{}", 2 * MIB)), "{m}"),
            _ => panic!("a damaged chunk verified"),
        }
        let _ = std::fs::remove_file(&path);
    }

    /// crust's copy of the server state, dropped after the fork into the helper, leaves the
    /// lease it handed on (the same open file description) in place.
    #[test]
    fn a_lease_handed_on_stays_when_the_old_copy_goes() {
        let (path, _, record) = page_file("handed-on");
        let file = File::open(&path).unwrap();
        let s = StageSource::new(path.clone(), &file, record).unwrap();
        let description = s.file.try_clone().unwrap();
        assert!(s.leased().is_some());
        s.hand_on_lease();
        drop(s);
        assert_eq!(crate::sys::fcntl_int(description.as_raw_fd(), F_GETLEASE, 0), Ok(libc::F_RDLCK), "the lease went with the old copy");
        let _ = crate::sys::fcntl_int(description.as_raw_fd(), F_SETLEASE, libc::F_UNLCK);
        let _ = std::fs::remove_file(&path);
    }

    /// A job staged into this very process (process_vm_writev to itself), from the mapping and
    /// from chunks read in: the pieces land one after the other, byte for byte.
    fn stage_here(s: StageSource, data: &[u8]) {
        let pieces: Vec<Piece> = vec![(0, MIB - 8192, 8192), (1, 0, MIB), (3, 0, 4096), (2, 5, 100)];
        let expected: Vec<u8> = pieces.iter().flat_map(|&(c, at, len)| data[c * MIB + at..c * MIB + at + len].to_vec()).collect();
        // The kernel writes it through the address the job carries (a pointer that escaped
        // mutably), and the wait's lock orders that before the read here.
        let mut into = vec![0u8; expected.len()];
        let mut stager = Stager::start().unwrap();
        let job = Job { pid: std::process::id() as i32, at: into.as_mut_ptr() as u64, source: Arc::new(s), pieces, uffd: None };
        let id = stager.submit(job);
        let outcome = stager.wait(id, Duration::from_secs(30));
        assert!(matches!(outcome, Some(Outcome::Staged)), "{outcome:?}");
        assert!(std::hint::black_box(&into) == &expected, "the staged bytes differ");
    }

    #[test]
    fn a_job_is_staged_from_the_mapping_and_from_chunks_read_in_alike() {
        let (path, data, record) = page_file("job");
        let leased = source(&path, &record);
        assert!(leased.leased().is_some());
        stage_here(leased, &data);
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let read_in = source(&path, &record);
        assert!(read_in.leased().is_none());
        stage_here(read_in, &data);
        drop(writer);
        let _ = std::fs::remove_file(&path);
    }
}
