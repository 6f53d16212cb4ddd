//! userfaultfd write-protection, as `dump -R` uses it (see kinds/uffd_dump.rs and
//! docs/memory-dump.md): the ioctls on a userfaultfd that crust took from the process
//! (pidfd_getfd), and the messages read from it. The descriptor refers to the process's mm,
//! whoever holds it: every range below is an address of that process.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

use super::SysError;

const UFFD_API: u64 = 0xAA;
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// Bit of `ioctls` after UFFDIO_REGISTER: the range accepts UFFDIO_WRITEPROTECT.
const IOCTL_WRITEPROTECT_BIT: u64 = 1 << 0x06;

pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct WriteProtect {
    range: Range,
    mode: u64,
}

nix::ioctl_readwrite!(uffdio_api, 0xAA, 0x3F, Api);
nix::ioctl_readwrite!(uffdio_register, 0xAA, 0x00, Register);
nix::ioctl_readwrite!(uffdio_writeprotect, 0xAA, 0x06, WriteProtect);

/// UFFDIO_API: asks for `features`; returns those the kernel grants (all of them, or an error).
pub fn api(fd: &OwnedFd, features: u64) -> Result<u64, SysError> {
    let mut arg = Api { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: UFFDIO_API reads and writes exactly this struct, which lives across the call.
    unsafe { uffdio_api(fd.as_raw_fd(), &mut arg) }.map_err(|e| SysError::new("ioctl(UFFDIO_API)", e))?;
    if arg.features & features != features {
        return Err(SysError::new(format!("ioctl(UFFDIO_API): features {:#x} of {features:#x} granted", arg.features), Errno::EINVAL));
    }
    Ok(arg.features)
}

/// UFFDIO_REGISTER in write-protect mode of [start, start+len) of the process.
pub fn register_wp(fd: &OwnedFd, start: u64, len: u64) -> Result<(), SysError> {
    let mut arg = Register { range: Range { start, len }, mode: REGISTER_MODE_WP, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER reads and writes exactly this struct, which lives across the call.
    unsafe { uffdio_register(fd.as_raw_fd(), &mut arg) }
        .map_err(|e| SysError::new(format!("ioctl(UFFDIO_REGISTER, {start:#x}+{len:#x})"), e))?;
    if arg.ioctls & IOCTL_WRITEPROTECT_BIT == 0 {
        return Err(SysError::new(format!("ioctl(UFFDIO_REGISTER, {start:#x}+{len:#x}): no UFFDIO_WRITEPROTECT"), Errno::EINVAL));
    }
    Ok(())
}

/// UFFDIO_WRITEPROTECT of [start, start+len): `protect` marks the present pages write-protected;
/// otherwise lifts the protection and wakes the threads waiting on a fault in the range.
pub fn write_protect(fd: &OwnedFd, start: u64, len: u64, protect: bool) -> Result<(), SysError> {
    let mode = if protect { WRITEPROTECT_MODE_WP } else { 0 };
    let mut arg = WriteProtect { range: Range { start, len }, mode };
    // SAFETY: UFFDIO_WRITEPROTECT reads and writes exactly this struct, which lives across the call.
    unsafe { uffdio_writeprotect(fd.as_raw_fd(), &mut arg) }
        .map_err(|e| SysError::new(format!("ioctl(UFFDIO_WRITEPROTECT, {start:#x}+{len:#x}, mode {mode})"), e))?;
    Ok(())
}

/// One message read from a userfaultfd: its event and the three words of its argument
/// (pagefault: flags, address; remap: from, to, len; remove/unmap: start, end).
#[derive(Clone, Copy, Debug)]
pub struct Message {
    pub event: u8,
    pub arg: [u64; 3],
}

/// Reads the waiting messages (the descriptor is non-blocking), up to 64 at a time.
pub fn read_messages(fd: &OwnedFd) -> Result<Vec<Message>, SysError> {
    const MSG: usize = 32;
    let mut buf = [0u8; MSG * 64];
    match nix::unistd::read(fd, &mut buf) {
        Ok(n) => Ok(buf[..n - n % MSG]
            .chunks_exact(MSG)
            .map(|m| Message {
                event: m[0],
                arg: [0, 1, 2].map(|i| u64::from_ne_bytes(m[8 + 8 * i..16 + 8 * i].try_into().unwrap())),
            })
            .collect()),
        Err(Errno::EAGAIN) => Ok(Vec::new()),
        Err(e) => Err(SysError::new("read(userfaultfd)", e)),
    }
}

/// Waits up to `timeout_ms` for a message on any of `fds`.
pub fn wait_any(fds: &[std::os::fd::BorrowedFd], timeout_ms: u16) -> Result<bool, SysError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds: Vec<PollFd> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)).collect();
    match poll(&mut fds, PollTimeout::from(timeout_ms)) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(SysError::new("poll(userfaultfd)", e)),
    }
}
