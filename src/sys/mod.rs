//! The system layer: the only place with `unsafe`. Everything above it works with typed values
//! and gets errors that name the system call, the process and the errno.

pub mod bpf;
pub mod btf;
pub mod clone3;
pub mod fs_safe;
pub mod inet;
pub mod inet_diag;
pub mod lease_probe;
pub mod netlink;
pub mod notify;
pub mod packet;
pub mod pagemap;
pub mod pidfd;
pub mod procmap;
pub mod ptrace;
pub mod region;
pub mod remote;
pub mod sched;
pub mod sigframe;
pub mod sock_diag;
pub mod socket;
pub mod sysv;
pub mod terminal;
pub mod uffd;
pub mod unix_diag;

use nix::errno::Errno;
use std::os::fd::RawFd;

/// A failed system call or ptrace step, with what was being done and to whom.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{op}{} failed: {errno}", pid_suffix(*.pid))]
    Call { op: String, pid: Option<i32>, errno: Errno },
    #[error("{op}: pid {pid} {what}")]
    Gone { op: &'static str, pid: i32, what: String },
    #[error("{op}: pid {pid} reported an unexpected state: {what}")]
    Unexpected { op: &'static str, pid: i32, what: String },
    #[error("{op}: pid {pid} did not stop in the time allowed")]
    NotStopped { op: &'static str, pid: i32 },
}

fn pid_suffix(pid: Option<i32>) -> String {
    pid.map(|p| format!(" on pid {p}")).unwrap_or_default()
}

impl SysError {
    pub fn new(op: impl Into<String>, errno: Errno) -> Self {
        SysError::Call { op: op.into(), pid: None, errno }
    }

    pub fn pid(self, pid: i32) -> Self {
        match self {
            SysError::Call { op, errno, .. } => SysError::Call { op, pid: Some(pid), errno },
            other => other,
        }
    }

    pub fn gone(op: &'static str, pid: i32, what: String) -> Self {
        SysError::Gone { op, pid, what }
    }

    pub fn unexpected(op: &'static str, pid: i32, what: String) -> Self {
        SysError::Unexpected { op, pid, what }
    }

    pub fn errno(&self) -> Option<Errno> {
        match self {
            SysError::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub const PAGE_SIZE: u64 = 4096;

/// Most iovecs one process_vm_writev takes (UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// process_vm_writev of `pieces`, one after the other, to `at` in process `pid`, until all are
/// written: a write may stop short, and EINTR (up to 100 times) is tried again.
pub fn write_process_memory(pid: i32, at: u64, pieces: &[&[u8]]) -> Result<(), SysError> {
    use nix::sys::uio::{RemoteIoVec, process_vm_writev};
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let (mut done, mut retries) = (0usize, 0);
    while done < len {
        // The pieces from `done` on, at most IOV_MAX of them.
        let mut skip = done;
        let local: Vec<std::io::IoSlice> = pieces
            .iter()
            .filter_map(|p| {
                if skip >= p.len() {
                    skip -= p.len();
                    return None;
                }
                let s = std::io::IoSlice::new(&p[skip..]);
                skip = 0;
                Some(s)
            })
            .take(IOV_MAX)
            .collect();
        let to = at + done as u64;
        let remote = [RemoteIoVec { base: to as usize, len: local.iter().map(|s| s.len()).sum() }];
        match process_vm_writev(nix::unistd::Pid::from_raw(pid), &local, &remote) {
            Ok(n) if n > 0 => done += n,
            Ok(_) => return Err(SysError::unexpected("process_vm_writev", pid, format!("wrote nothing at {to:#x}"))),
            Err(Errno::EINTR) if retries < 100 => retries += 1,
            Err(e) => return Err(SysError::new(format!("process_vm_writev of {} bytes at {to:#x}", len - done), e).pid(pid)),
        }
    }
    Ok(())
}

/// `uname -r`.
/// openat2(2) in crust itself: opens `path` relative to `dir` with `flags` and the `resolve`
/// restrictions (RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS...), which the kernel applies to every
/// component, so nothing swapped in on the way can lead elsewhere.
pub fn openat2(
    dir: std::os::fd::BorrowedFd,
    path: &std::ffi::OsStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> Result<std::os::fd::OwnedFd, SysError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let what = || format!("openat2({})", path.to_string_lossy());
    let c_path = std::ffi::CString::new(path.as_bytes()).map_err(|_| SysError::new(what(), Errno::EINVAL))?;
    // struct open_how { u64 flags; u64 mode; u64 resolve; } (libc's is non-exhaustive).
    let how: [u64; 3] = [(flags | libc::O_CLOEXEC) as u32 as u64, mode as u64, resolve];
    // SAFETY: `c_path` is a NUL-terminated string and `how` has the layout of open_how, whose
    // size is passed; the kernel only reads both.
    let ret = unsafe { libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), c_path.as_ptr(), how.as_ptr(), std::mem::size_of_val(&how)) };
    let fd = Errno::result(ret).map_err(|e| SysError::new(what(), e))?;
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

/// get_robust_list(2) for another thread: (head, len).
pub fn get_robust_list(tid: i32) -> Result<(u64, u64), SysError> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: the kernel writes one pointer-sized value to each of the two out-parameters,
    // both live u64s.
    let ret = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut u64) };
    Errno::result(ret).map_err(|e| SysError::new("get_robust_list", e).pid(tid))?;
    Ok((head, len))
}

/// Closes every descriptor above stderr. The built-in example programs (demo, bench) call it
/// first: whatever their caller leaked to them (a shell's or CI's pipes) is not theirs to keep,
/// and a dump would rightly refuse a pipe whose other end is outside.
pub fn close_inherited_fds() -> std::io::Result<()> {
    let inherited: Vec<i32> =
        std::fs::read_dir("/proc/self/fd")?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd| *fd > 2).collect();
    for fd in inherited {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// timerfd_gettime(2) on crust's copy of a timerfd: (time to the next expiration, period), in
/// nanoseconds. Like a read, it brings an expired periodic timer up to date (the periods
/// missed are added to its unread ticks and the timer is re-armed), which changes nothing the
/// owner can observe.
pub fn timerfd_gettime(fd: std::os::fd::BorrowedFd) -> Result<(u64, u64), SysError> {
    use std::os::fd::AsRawFd;
    let mut spec =
        libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 } };
    // SAFETY: the kernel writes one struct itimerspec into `spec`, a live local.
    let ret = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut spec) };
    Errno::result(ret).map_err(|e| SysError::new("timerfd_gettime", e))?;
    let ns = |t: libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    Ok((ns(spec.it_value), ns(spec.it_interval)))
}

/// fcntl(fd, cmd, int arg) for the commands nix does not wrap (F_GETLEASE, F_SETLEASE).
pub fn fcntl_int(fd: i32, cmd: i32, arg: i32) -> Result<i32, Errno> {
    // SAFETY: an fcntl command whose third argument is an integer, on a caller's fd.
    Errno::result(unsafe { libc::fcntl(fd, cmd, arg) })
}

/// struct f_owner_ex (the libc crate lacks it).
#[repr(C)]
struct FOwnerEx {
    kind: i32,
    pid: i32,
}
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;
pub const F_OWNER_PID: i32 = 1;

/// F_GETOWN_EX: (owner type, id) of the signal owner of a description.
pub fn get_owner_ex(fd: i32) -> Result<(i32, i32), Errno> {
    let mut owner = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex into `owner`, a live local.
    Errno::result(unsafe { libc::fcntl(fd, F_GETOWN_EX, &mut owner as *mut FOwnerEx) })?;
    Ok((owner.kind, owner.pid))
}

/// F_SETOWN_EX: sets the signal owner of a description (id 0: nobody).
pub fn set_owner_ex(fd: i32, kind: i32, id: i32) -> Result<(), Errno> {
    let owner = FOwnerEx { kind, pid: id };
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex from `owner`, a live local.
    Errno::result(unsafe { libc::fcntl(fd, F_SETOWN_EX, &owner as *const FOwnerEx) }).map(drop)
}

/// F_GETSIG: the signal sent for I/O on a description (0: SIGIO).
pub fn get_sig(fd: i32) -> Result<i32, Errno> {
    const F_GETSIG: i32 = 11;
    // SAFETY: F_GETSIG takes no argument and returns an int.
    Errno::result(unsafe { libc::fcntl(fd, F_GETSIG) })
}

/// crust's own memory-deny-write-execute flags (prctl PR_GET_MDWE); 0 on a kernel without
/// MDWE (before Linux 6.3), which answers EINVAL.
pub fn own_mdwe() -> u32 {
    // SAFETY: prctl with integer arguments only.
    let flags = unsafe { libc::prctl(libc::PR_GET_MDWE, 0, 0, 0, 0) };
    flags.max(0) as u32
}

/// The size of `struct prctl_mm_map` this kernel expects (prctl PR_SET_MM_MAP_SIZE).
pub fn prctl_mm_map_size() -> Result<u32, Errno> {
    const PR_SET_MM_MAP_SIZE: libc::c_ulong = 15;
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to the address given, a live local.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_MM, PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) })?;
    Ok(size)
}

/// Runs `work` in a new process of its own, named `name` (a child of init, in a new session,
/// with SIGINT, SIGTERM, SIGHUP and SIGPIPE ignored), so that it outlives crust and no job
/// control signal meant for crust reaches it. It holds none of crust's descriptors but those in
/// `keep` (stdin, stdout and stderr are /dev/null): nothing of crust, of the restored processes or of
/// crust's caller stays open because of it. crust is single-threaded when it calls this.
pub fn spawn_detached(name: &str, keep: &[RawFd], work: impl FnOnce()) -> Result<(), Errno> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: crust is single-threaded here, so the child may run ordinary Rust code; it never
    // returns into crust's code: it ends with _exit.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            // SAFETY: as above; the grandchild is the detached worker.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => {
                    detach_from_crust(&name, keep);
                    work();
                    // SAFETY: ending the worker without running crust's exit handlers.
                    unsafe { libc::_exit(0) }
                }
                // SAFETY: the intermediate child ends at once, so the worker is init's.
                _ => unsafe { libc::_exit(0) },
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(())
        }
    }
}

/// Forks a child that sleeps until it is killed (the benchmark's tree of sleeping processes).
/// The caller must be single-threaded.
pub fn fork_sleeper() -> Result<nix::unistd::Pid, Errno> {
    // SAFETY: the caller is single-threaded, and the child never returns into the caller's
    // code: it only sleeps, in pause(2), until a signal ends it.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => loop {
            nix::unistd::pause();
        },
        nix::unistd::ForkResult::Parent { child } => Ok(child),
    }
}

/// In a detached worker: its name, /dev/null for 0-2, every other fd but `keep` closed,
/// job-control and termination signals ignored.
fn detach_from_crust(name: &std::ffi::CStr, keep: &[RawFd]) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (longer is cut).
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    if let Ok(null) = std::fs::File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let mut keep: Vec<u32> = keep.iter().filter(|fd| **fd >= 3).map(|fd| *fd as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > from {
            // SAFETY: close_range only closes descriptors; the ones kept are outside the range.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd.saturating_add(1);
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE, libc::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}
