//! userfaultfd(2), in the two modes crust uses: write-protect for `dump -R` (kinds/uffd_dump.rs,
//! docs/memory-dump.md) and missing pages for lazy restore (kinds/lazy_pages.rs,
//! docs/lazy-restore.md). The userfaultfd is always created inside the process (it belongs to
//! the address space it was created in, `ctx->mm`) and taken by crust with pidfd_getfd: every
//! range below is an address of that process, whoever calls.
//!
//! Layouts and numbers are the kernel's ABI (include/uapi/linux/userfaultfd.h, stable since
//! 4.11; Debian 12's headers lack the newer constants).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Flags of the userfaultfd(2) call crust injects in the process.
pub const CREATE_FLAGS: u64 = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;

const UFFD_API: u64 = 0xaa;
/// UFFD_FEATURE_PAGEFAULT_FLAG_WP: write-protect faults say so in their flags.
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// UFFD_FEATURE_EVENT_FORK: a fork of a registered process gives the reader a new userfaultfd
/// for the child.
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// UFFD_FEATURE_EVENT_REMAP: mremap of a registered range is reported (the range keeps its
/// registration at its new address).
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// UFFD_FEATURE_EVENT_REMOVE: madvise(MADV_DONTNEED/REMOVE) of a registered range is reported
/// before the pages go.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// UFFD_FEATURE_EVENT_UNMAP: munmap of a registered range is reported.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// UFFD_FEATURE_THREAD_ID: a fault message carries the faulting thread's id.
pub const FEATURE_THREAD_ID: u64 = 1 << 8;
/// UFFD_FEATURE_MOVE (Linux 6.8+): UFFDIO_MOVE moves pages (a PMD-mapped huge page whole) from
/// elsewhere in the userfaultfd's address space into a registered range, without a copy. The
/// kernel accepts the call only from a thread of that address space (userfaultfd_move:
/// `mm != current->mm` is EINVAL), so crust issues it from a thread of the process
/// (kinds/lazy_move.rs).
pub const FEATURE_MOVE: u64 = 1 << 16;

const REGISTER_MODE_MISSING: u64 = 1 << 0;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// Bit of `ioctls` after UFFDIO_REGISTER: the range accepts UFFDIO_WRITEPROTECT.
const IOCTL_WRITEPROTECT_BIT: u64 = 1 << 0x06;
/// pagefault flags: the fault is a write to a write-protected page.
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

// _IOWR/_IOR(0xAA, nr, struct): dir << 30 | size << 16 | 0xAA << 8 | nr.
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;
/// _IOWR(0xAA, 0x05, struct uffdio_move): issued inside the process, never by crust itself.
pub const UFFDIO_MOVE: u64 = 0xc028_aa05;
/// Bytes of struct uffdio_move { dst, src, len, mode, move }; `move` (bytes moved, or a
/// negative errno) is at [`MOVE_ARG_RESULT`].
pub const MOVE_ARG_LEN: usize = 40;
pub const MOVE_ARG_RESULT: usize = 32;

/// The struct uffdio_move asking to move `len` bytes from `src` to `dst` (mode 0: the faults
/// waiting there are woken; the source must have every page).
pub fn move_arg(dst: u64, src: u64, len: u64) -> [u8; MOVE_ARG_LEN] {
    let mut arg = [0u8; MOVE_ARG_LEN];
    for (i, v) in [dst, src, len, 0, 0].into_iter().enumerate() {
        arg[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    arg
}

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
struct ApiArg {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct RegisterArg {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct CopyArg {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct ZeropageArg {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
struct WriteProtectArg {
    start: u64,
    len: u64,
    mode: u64,
}

/// One message read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread (`tid`, with FEATURE_THREAD_ID) touched a page at `address`: missing, or
    /// write-protected (`write_protected`, with FEATURE_PAGEFAULT_FLAG_WP).
    PageFault {
        address: u64,
        tid: u32,
        write_protected: bool,
    },
    /// The process forked; the child's registrations belong to `uffd`.
    Fork {
        uffd: OwnedFd,
    },
    /// `len` bytes moved from `from` to `to` (mremap).
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// The pages of `start..end` were dropped (madvise: `unmapped` false) or unmapped.
    Remove {
        start: u64,
        end: u64,
        unmapped: bool,
    },
    Unknown(u8),
}

fn ioctl<T>(fd: BorrowedFd, request: u64, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: every request used here reads and writes exactly one `T` at `arg`, a live
    // exclusive reference whose layout is the kernel's struct for that request.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg as *mut T) }).map(drop)
}

/// UFFDIO_API: the handshake; returns the features the kernel grants.
pub fn api(fd: BorrowedFd, features: u64) -> Result<u64, Errno> {
    let mut arg = ApiArg { api: UFFD_API, features, ioctls: 0 };
    ioctl(fd, UFFDIO_API, &mut arg)?;
    Ok(arg.features)
}

fn register(fd: BorrowedFd, start: u64, len: u64, mode: u64) -> Result<u64, Errno> {
    let mut arg = RegisterArg { start, len, mode, ioctls: 0 };
    ioctl(fd, UFFDIO_REGISTER, &mut arg)?;
    Ok(arg.ioctls)
}

/// UFFDIO_REGISTER in MISSING mode of `start..start+len` (whole areas of the address space).
pub fn register_missing(fd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    register(fd, start, len, REGISTER_MODE_MISSING).map(drop)
}

/// UFFDIO_UNREGISTER of `start..start+len`: its faults are the kernel's own again.
pub fn unregister(fd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = [start, len];
    ioctl(fd, UFFDIO_UNREGISTER, &mut arg)
}

/// UFFDIO_REGISTER in write-protect mode of `start..start+len`; EINVAL when the range cannot
/// be write-protected after all.
pub fn register_wp(fd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let ioctls = register(fd, start, len, REGISTER_MODE_WP)?;
    if ioctls & IOCTL_WRITEPROTECT_BIT == 0 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// UFFDIO_WRITEPROTECT of `start..start+len`: `protect` marks the present pages
/// write-protected; otherwise lifts the protection and wakes the threads waiting on a fault
/// in the range.
pub fn write_protect(fd: BorrowedFd, start: u64, len: u64, protect: bool) -> Result<(), Errno> {
    let mode = if protect { WRITEPROTECT_MODE_WP } else { 0 };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut WriteProtectArg { start, len, mode })
}

/// UFFDIO_COPY of `src` to `dst`, waking threads waiting there. Returns the bytes placed
/// (fewer than asked when a page on the way is already present, or the address space is
/// changing), or the error for the first page (EEXIST: present; ENOENT: no longer registered;
/// EAGAIN: an event must be read first; ESRCH: the address space is gone).
pub fn copy(fd: BorrowedFd, dst: u64, src: &[u8]) -> Result<u64, Errno> {
    let mut arg = CopyArg { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
    let result = ioctl(fd, UFFDIO_COPY, &mut arg);
    match (result, arg.copy) {
        (_, n) if n > 0 => Ok(n as u64),
        (Err(e), _) => Err(e),
        (Ok(()), n) if n < 0 => Err(Errno::from_raw(-n as i32)),
        (Ok(()), _) => Ok(src.len() as u64),
    }
}

/// UFFDIO_ZEROPAGE: maps the zero page at `start..start+len` (pages the image does not hold:
/// never touched, or dropped since).
pub fn zeropage(fd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = ZeropageArg { start, len, mode: 0, zeropage: 0 };
    ioctl(fd, UFFDIO_ZEROPAGE, &mut arg)
}

/// UFFDIO_WAKE: wakes threads waiting on `start..start+len` (a page another copy placed).
pub fn wake(fd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = [start, len];
    ioctl(fd, UFFDIO_WAKE, &mut arg)
}

/// Reads every message waiting on a non-blocking userfaultfd.
pub fn read_events(fd: BorrowedFd, out: &mut Vec<Event>) -> Result<(), Errno> {
    let mut buf = [0u8; 32 * 64];
    loop {
        // SAFETY: read writes at most buf.len() bytes into the live local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
            Ok(n) => out.extend(buf[..n as usize].chunks_exact(32).map(parse)),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// struct uffd_msg: u8 event, 7 reserved bytes, then a 24-byte union.
fn parse(msg: &[u8]) -> Event {
    let word = |i: usize| u64::from_ne_bytes(msg[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    match msg[0] {
        // pagefault: flags, address, ptid (u32)
        EVENT_PAGEFAULT => Event::PageFault { address: word(1), tid: word(2) as u32, write_protected: word(0) & PAGEFAULT_FLAG_WP != 0 },
        EVENT_FORK => {
            // SAFETY: the kernel installed this descriptor in crust's table for the reader.
            Event::Fork { uffd: unsafe { OwnedFd::from_raw_fd(word(0) as u32 as i32) } }
        }
        EVENT_REMAP => Event::Remap { from: word(0), to: word(1), len: word(2) },
        EVENT_REMOVE => Event::Remove { start: word(0), end: word(1), unmapped: false },
        EVENT_UNMAP => Event::Remove { start: word(0), end: word(1), unmapped: true },
        other => Event::Unknown(other),
    }
}

/// poll(2) for input on `fds`, at most `timeout_ms`; returns which are readable.
pub fn poll_readable(fds: &[BorrowedFd], timeout_ms: i32) -> Result<Vec<bool>, Errno> {
    let mut pfds: Vec<libc::pollfd> = fds.iter().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: poll reads and writes pfds.len() pollfd structs of the live vector.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    match Errno::result(n) {
        Ok(_) => Ok(pfds.iter().map(|p| p.revents & (libc::POLLIN | libc::POLLERR) != 0).collect()),
        Err(Errno::EINTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e),
    }
}

/// pidfd_send_signal(SIGKILL): kills the process behind `pidfd` (never another one that took
/// its number since).
pub fn kill_by_pidfd(pidfd: BorrowedFd) -> Result<(), Errno> {
    // SAFETY: plain integer arguments (no siginfo).
    Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) }).map(drop)
}
