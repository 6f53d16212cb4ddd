//! A private anonymous memory region owned by crust, 2 MiB aligned and advised for transparent
//! huge pages or ordinary pages (used by the benchmark and its workload), and vmsplice of such
//! memory.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};

const HUGE: usize = 2 << 20;

/// prctl(2) option PR_SET_VMA and its sub-option PR_SET_VMA_ANON_NAME (Linux 5.17+; the libc
/// crate lacks them): names a range of anonymous memory, as /proc/PID/maps then shows it.
pub const PR_SET_VMA: libc::c_int = 0x5356_4d41;
pub const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;

/// The madvise(2) advices [`AnonRegion::advise`] takes: none of them drops contents.
#[derive(Clone, Copy, Debug)]
pub enum KeepingAdvice {
    DontFork,
    WipeOnFork,
    DontDump,
    HugePage,
    Sequential,
    Random,
    Mergeable,
}

pub struct AnonRegion {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl AnonRegion {
    pub fn new_huge(len: usize) -> nix::Result<Self> {
        Self::new(len, true)
    }

    /// A region of ordinary 4 KiB pages (MADV_NOHUGEPAGE), or advised for huge pages.
    pub fn new(len: usize, huge: bool) -> nix::Result<Self> {
        // SAFETY: a new anonymous mapping that nothing else refers to.
        let raw = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len + HUGE).expect("non-empty region"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )?
        };
        let start = raw.as_ptr() as usize;
        let aligned = (start + HUGE - 1) & !(HUGE - 1);
        let tail = start + len + HUGE - (aligned + len);
        // SAFETY: trims the unaligned head and tail of the mapping just made; the kept part
        // [aligned, aligned + len) is untouched.
        unsafe {
            if aligned > start {
                munmap(raw, aligned - start)?;
            }
            if tail > 0 {
                munmap(NonNull::new((aligned + len) as *mut libc::c_void).unwrap(), tail)?;
            }
        }
        let ptr = NonNull::new(aligned as *mut libc::c_void).unwrap();
        let advice = if huge { MmapAdvise::MADV_HUGEPAGE } else { MmapAdvise::MADV_NOHUGEPAGE };
        // SAFETY: advice on our own mapping; it does not change its contents.
        unsafe { madvise(ptr, len, advice)? };
        Ok(AnonRegion { ptr, len })
    }

    pub fn address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` bytes of readable, writable memory owned by self, and the
        // &mut borrow of self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut u8, self.len) }
    }

    /// Makes `range` (page-aligned, inside the region) read-only with mprotect(2): the
    /// benchmark's many-areas workload splits its region into areas this way. Writing to the
    /// range afterwards faults, so the caller writes first.
    pub fn make_read_only(&mut self, range: std::ops::Range<usize>) -> nix::Result<()> {
        assert!(range.start < range.end && range.end <= self.len, "range outside the region");
        let ptr = NonNull::new((self.address() as usize + range.start) as *mut libc::c_void).expect("non-null region");
        // SAFETY: changes only the protection of part of our own mapping; its contents stay,
        // and the &mut borrow of self means no slice of it is alive across the change.
        unsafe { nix::sys::mman::mprotect(ptr, range.end - range.start, ProtFlags::PROT_READ) }
    }

    /// Advises `range` (page-aligned, inside the region) with one of the advices that keep
    /// its contents (fork, dump, huge page and read-ahead advice, KSM): crust marks its own
    /// probe areas so, to learn how the kernel shows each flag (kinds/vm_flags.rs).
    pub fn advise(&mut self, range: std::ops::Range<usize>, advice: KeepingAdvice) -> nix::Result<()> {
        assert!(range.start < range.end && range.end <= self.len, "range outside the region");
        let ptr = NonNull::new((self.address() as usize + range.start) as *mut libc::c_void).expect("non-null region");
        let advice = match advice {
            KeepingAdvice::DontFork => MmapAdvise::MADV_DONTFORK,
            KeepingAdvice::WipeOnFork => MmapAdvise::MADV_WIPEONFORK,
            KeepingAdvice::DontDump => MmapAdvise::MADV_DONTDUMP,
            KeepingAdvice::HugePage => MmapAdvise::MADV_HUGEPAGE,
            KeepingAdvice::Sequential => MmapAdvise::MADV_SEQUENTIAL,
            KeepingAdvice::Random => MmapAdvise::MADV_RANDOM,
            KeepingAdvice::Mergeable => MmapAdvise::MADV_MERGEABLE,
        };
        // None of these advices drops or replaces pages; the &mut borrow of self means no
        // slice of the region is alive across the change.
        // SAFETY: each advice changes only flags of part of our own mapping.
        unsafe { madvise(ptr, range.end - range.start, advice) }
    }

    /// Locks `range` (page-aligned, inside the region) in memory with mlock(2).
    pub fn lock(&mut self, range: std::ops::Range<usize>) -> nix::Result<()> {
        assert!(range.start < range.end && range.end <= self.len, "range outside the region");
        let ptr = NonNull::new((self.address() as usize + range.start) as *mut libc::c_void).expect("non-null region");
        // SAFETY: mlock only faults in and pins part of our own mapping; its contents stay.
        unsafe { nix::sys::mman::mlock(ptr, range.end - range.start) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above, shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const u8, self.len) }
    }

    /// Gifts `range` of the region to the write end of a pipe (vmsplice), returning how many
    /// bytes the pipe took.
    pub fn vmsplice(&self, pipe: impl AsFd, range: std::ops::Range<usize>) -> nix::Result<usize> {
        let iov = [std::io::IoSlice::new(&self.as_slice()[range])];
        // SAFETY: without SPLICE_F_GIFT the kernel only reads the pages; they stay mapped and
        // unmodified for as long as `self` lives, which outlasts the pipe's use in the caller.
        unsafe { nix::fcntl::vmsplice(pipe, &iov, nix::fcntl::SpliceFFlags::empty()) }
    }
}

impl Drop for AnonRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping our own region; no borrow of it can outlive self.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// Whether this kernel names anonymous memory, private or `shared` (prctl PR_SET_VMA,
/// PR_SET_VMA_ANON_NAME: Linux 5.17+ built with CONFIG_ANON_VMA_NAME, EINVAL without; shared
/// memory from Linux 6.2 on, EBADF before): asked of a page of crust's own, mapped for it.
pub fn try_naming(shared: bool) -> nix::Result<()> {
    const LEN: usize = 4096;
    let sharing = if shared { MapFlags::MAP_SHARED } else { MapFlags::MAP_PRIVATE };
    // SAFETY: a new anonymous mapping that nothing else refers to.
    let page = unsafe { mmap_anonymous(None, NonZeroUsize::new(LEN).expect("non-empty"), ProtFlags::PROT_READ, sharing)? };
    // SAFETY: the kernel reads the NUL-terminated static name and names only the page just
    // mapped; its contents do not change.
    let named = unsafe { libc::prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, page.as_ptr() as usize, LEN, c"crust: probe".as_ptr()) };
    // SAFETY: unmaps only the page just mapped, to which nothing refers.
    let _ = unsafe { munmap(page, LEN) };
    nix::errno::Errno::result(named).map(drop)
}

/// A whole file mapped read-only, for hashing page data without copying it.
pub struct MappedFile {
    ptr: Option<NonNull<libc::c_void>>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; sharing &[u8] views across threads is sound.
unsafe impl Sync for MappedFile {}
// SAFETY: the mapping belongs to the process, not a thread: any thread may read or unmap it.
unsafe impl Send for MappedFile {}

impl MappedFile {
    pub fn open(file: &std::fs::File) -> nix::Result<Self> {
        let len = file.metadata().map_err(|_| nix::errno::Errno::EIO)?.len() as usize;
        let Some(nonzero) = NonZeroUsize::new(len) else { return Ok(MappedFile { ptr: None, len: 0 }) };
        // A file that shrank while mapped would fault on reads past its end: crust only maps
        // image files it does not change concurrently.
        // SAFETY: a new shared read-only mapping of the file; crust never writes through it.
        let ptr = unsafe { nix::sys::mman::mmap(None, nonzero, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, file, 0)? };
        Ok(MappedFile { ptr: Some(ptr), len })
    }

    pub fn as_slice(&self) -> &[u8] {
        match self.ptr {
            // SAFETY: `len` readable bytes mapped by `open`, alive as long as self.
            Some(ptr) => unsafe { std::slice::from_raw_parts(ptr.as_ptr() as *const u8, self.len) },
            None => &[],
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr {
            // SAFETY: unmapping our own mapping; no slice of it outlives self.
            let _ = unsafe { munmap(ptr, self.len) };
        }
    }
}
