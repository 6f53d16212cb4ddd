//! Looking at event objects (epoll, inotify, pipes and FIFOs) from outside without changing
//! them: readiness with a zero-timeout poll, queued bytes with FIONREAD, which file an epoll
//! registration refers to with kcmp(KCMP_EPOLL_TFD), and the file behind an inotify watch's
//! file handle with open_by_handle_at. Also crust's own inotify calls, used at restore to make
//! the kernel hand out the recorded watch descriptor numbers.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::SysError;

/// poll(2) of one descriptor with a zero timeout: the events it reports now (POLLERR, POLLHUP
/// and POLLNVAL are reported whatever `events` asks for). A zero timeout queues no waiter, so
/// nothing about the file changes.
pub fn poll_now(fd: BorrowedFd, events: i16) -> Result<i16, SysError> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    loop {
        // SAFETY: `p` is one live pollfd and nfds is 1.
        let ret = unsafe { libc::poll(&mut p, 1, 0) };
        match Errno::result(ret) {
            Ok(_) => return Ok(p.revents),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("poll", e)),
        }
    }
}

/// ioctl(FIONREAD): bytes waiting to be read (a pipe's buffer, an inotify queue).
pub fn bytes_queued(fd: BorrowedFd) -> Result<usize, SysError> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, a live local.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    Errno::result(ret).map_err(|e| SysError::new("ioctl(FIONREAD)", e))?;
    Ok(n.max(0) as usize)
}

/// What kcmp(KCMP_EPOLL_TFD) says about an epoll registration and a candidate fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpollTargetMatch {
    /// fd `fd` of `pid` is the very file registered.
    Same,
    /// fd `fd` of `pid` is open but is another file.
    Other,
    /// `pid` has no fd `fd`.
    NotOpen,
    /// The epoll has no registration with that target fd number (and index).
    NoRegistration,
}

/// kcmp(KCMP_EPOLL_TFD): is fd `fd` of `pid` the file that epoll `efd` of `epoll_pid` has
/// registered under target number `tfd` (the `toff`-th registration with that number)?
pub fn epoll_target_is(pid: i32, fd: RawFd, epoll_pid: i32, efd: RawFd, tfd: RawFd, toff: u64) -> Result<EpollTargetMatch, SysError> {
    const KCMP_EPOLL_TFD: libc::c_int = 7;
    #[repr(C)]
    struct KcmpEpollSlot {
        efd: u32,
        tfd: u32,
        toff: u64,
    }
    let slot = KcmpEpollSlot { efd: efd as u32, tfd: tfd as u32, toff };
    // SAFETY: the kernel reads one struct kcmp_epoll_slot from the pointer, a live local with
    // the kernel's layout (u32, u32, u64).
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid, epoll_pid, KCMP_EPOLL_TFD, fd, &slot as *const KcmpEpollSlot) };
    match Errno::result(ret) {
        Ok(0) => Ok(EpollTargetMatch::Same),
        Ok(_) => Ok(EpollTargetMatch::Other),
        Err(Errno::EBADF) => Ok(EpollTargetMatch::NotOpen),
        Err(Errno::ENOENT) => Ok(EpollTargetMatch::NoRegistration),
        Err(e) => Err(SysError::new(format!("kcmp(KCMP_EPOLL_TFD, pid {pid} fd {fd}, pid {epoll_pid} epoll fd {efd} target {tfd})"), e)),
    }
}

/// open_by_handle_at(2): opens the file a file handle names, on the filesystem of `mount_fd`
/// (any descriptor on that mount but an O_PATH one; None: crust's working directory). With
/// O_PATH the file is not opened for I/O: no lease is broken and no fsnotify event is
/// generated.
pub fn open_by_handle(mount_fd: Option<BorrowedFd>, handle_type: i32, handle: &[u8], flags: i32) -> Result<OwnedFd, SysError> {
    let mount_fd = mount_fd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // struct file_handle { unsigned int handle_bytes; int handle_type; unsigned char f_handle[]; }
    let mut buf = vec![0u8; 8 + handle.len()];
    buf[..4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&handle_type.to_ne_bytes());
    buf[8..].copy_from_slice(handle);
    // Keep the struct 4-byte aligned as the kernel's layout expects: copy into u32 storage.
    let mut aligned = vec![0u32; buf.len().div_ceil(4)];
    for (i, chunk) in buf.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        aligned[i] = u32::from_ne_bytes(w);
    }
    // SAFETY: the kernel reads a struct file_handle of 8 + handle_bytes bytes from the
    // pointer, which `aligned` holds in full; on success it returns a new fd that we own.
    let ret = unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, aligned.as_mut_ptr() as *mut libc::c_void, flags) };
    let fd = Errno::result(ret).map_err(|e| SysError::new("open_by_handle_at", e))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// inotify_add_watch(2) on crust's own descriptor (a copy of a restored inotify).
pub fn inotify_add_watch(fd: BorrowedFd, path: &std::ffi::CStr, mask: u32) -> Result<i32, SysError> {
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let ret = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    Errno::result(ret).map_err(|e| SysError::new("inotify_add_watch", e))
}

/// inotify_rm_watch(2) on crust's own descriptor.
pub fn inotify_rm_watch(fd: BorrowedFd, wd: i32) -> Result<(), SysError> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
    Errno::result(ret).map_err(|e| SysError::new(format!("inotify_rm_watch({wd})"), e))?;
    Ok(())
}
