//! pidfd_open(2) and pidfd_getfd(2): taking a copy of another process's file descriptor. crust
//! inspects open files through such copies and never reopens them while dumping (an open of a
//! leased file would break the lease).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::SysError;

pub fn pidfd_open(pid: i32) -> Result<OwnedFd, SysError> {
    // SAFETY: plain integer arguments; on success the kernel returns a new fd that we own.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(ret).map_err(|e| SysError::new("pidfd_open", e).pid(pid))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Duplicates fd `target_fd` of the process behind `pidfd` into crust.
pub fn pidfd_getfd(pidfd: &OwnedFd, pid: i32, target_fd: RawFd) -> Result<OwnedFd, SysError> {
    // SAFETY: plain integer arguments; on success the kernel returns a new fd that we own.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    let fd = Errno::result(ret).map_err(|e| SysError::new(format!("pidfd_getfd(fd {target_fd})"), e).pid(pid))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// kcmp(KCMP_FILE): do fd `a` of `pid_a` and fd `b` of `pid_b` refer to the same open file
/// description?
/// kcmp(KCMP_FILES / KCMP_FS): whether two processes share one fd table (`fs` false) or one
/// filesystem context (`fs` true: cwd, root, umask).
pub fn same_table(pid_a: i32, pid_b: i32, fs: bool) -> Result<bool, SysError> {
    Ok(table_order(pid_a, pid_b, fs)? == Some(std::cmp::Ordering::Equal))
}

/// kcmp(KCMP_FILES / KCMP_FS) with its order: the kernel orders tables by (obfuscated)
/// address, so processes can be sorted and sharing found in n log n calls. None: different
/// tables, but the kernel gave no order.
pub fn table_order(pid_a: i32, pid_b: i32, fs: bool) -> Result<Option<std::cmp::Ordering>, SysError> {
    let kind: libc::c_int = if fs { 3 } else { 2 };
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, kind, 0, 0) };
    let order = Errno::result(ret).map_err(|e| SysError::new(format!("kcmp({kind}, pid {pid_a}, pid {pid_b})"), e))?;
    Ok(match order {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    })
}

pub fn same_open_file(pid_a: i32, a: RawFd, pid_b: i32, b: RawFd) -> Result<bool, SysError> {
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, KCMP_FILE, a, b) };
    let order = Errno::result(ret).map_err(|e| SysError::new(format!("kcmp(KCMP_FILE, pid {pid_a} fd {a}, pid {pid_b} fd {b})"), e))?;
    Ok(order == 0)
}

/// MADV_COLLAPSE (Linux 6.1): copy the pages of each 2 MiB stretch into one transparent huge
/// page, whatever the THP sysfs mode (refused only where the area has MADV_NOHUGEPAGE).
const MADV_COLLAPSE: i32 = 25;

/// process_madvise(pidfd, MADV_COLLAPSE) of `start..start+len` in the process behind `pidfd`:
/// collapses every whole 2 MiB stretch of the range into a huge page. Errors are MADV_COLLAPSE's
/// (ENOMEM: no free huge page; EAGAIN: pages busy for a moment; EBUSY: a stretch not fully
/// present, or no charge; EINVAL: the area does not allow it; ESRCH: the process is gone).
pub fn collapse_huge(pidfd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let iov = libc::iovec { iov_base: start as *mut libc::c_void, iov_len: len as usize };
    let (fd, iov_ptr) = (pidfd.as_raw_fd(), &iov as *const libc::iovec);
    // SAFETY: the kernel reads one iovec from the live local `iov`; the range it names is in
    // the other process and is not dereferenced here.
    let ret = unsafe { libc::syscall(libc::SYS_process_madvise, fd, iov_ptr, 1usize, MADV_COLLAPSE, 0u32) };
    Errno::result(ret).map(drop)
}
