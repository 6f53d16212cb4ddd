//! clone3(2) with `set_tid`: creating a process with a chosen PID.

use nix::errno::Errno;
use nix::unistd::Pid;

use super::SysError;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks crust into a new process whose PID is `pid`. The child puts every signal disposition
/// back to the default (SIG_DFL, no flags, no mask, no restorer: crust's own handlers mean
/// nothing to the restored program), then does nothing but wait to be seized and rebuilt by the
/// caller, and dies with its parent. This returns once the child has done so.
///
/// Must be called while crust is single-threaded: the child runs on a copy of the caller's stack.
pub fn fork_with_pid(pid: i32) -> Result<Pid, SysError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SysError::new("pipe2", e))?;
    let tids = [pid];
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, set_tid: tids.as_ptr() as u64, set_tid_size: 1, ..Default::default() };
    // SAFETY: clone3 reads `args` (and the one-element `set_tid` array) during the call. Without
    // CLONE_VM the child gets a copy of our address space and returns 0 here on its own copy of
    // the stack; it then only makes raw system calls and never returns into Rust code.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        0 => child_wait_forever(std::os::fd::AsRawFd::as_raw_fd(&ready_w)),
        n if n > 0 => {
            drop(ready_w);
            let child = Pid::from_raw(n as i32);
            // One byte once the child's dispositions are the defaults; none if it died first.
            let mut byte = [0u8; 1];
            let failed = loop {
                match nix::unistd::read(&ready_r, &mut byte) {
                    Ok(1) => return Ok(child),
                    Err(Errno::EINTR) => continue,
                    Ok(_) => break SysError::gone("clone3", n as i32, "ended before it was ready".into()),
                    Err(e) => break SysError::new("read(ready pipe of the new process)", e).pid(n as i32),
                }
            };
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            Err(failed)
        }
        _ => Err(SysError::new(format!("clone3(set_tid={pid})"), Errno::last())),
    }
}

fn child_wait_forever(ready: std::os::fd::RawFd) -> ! {
    let default = [0u64; 4];
    let byte = [1u8];
    // SAFETY: raw system calls; rt_sigaction reads one struct sigaction (4 words) from
    // `default` and write reads one byte from `byte`, both live on this (copied) stack.
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for sig in (1..=64).filter(|s| *s != libc::SIGKILL && *s != libc::SIGSTOP) {
            libc::syscall(libc::SYS_rt_sigaction, sig, default.as_ptr(), std::ptr::null::<u8>(), 8usize);
        }
        libc::syscall(libc::SYS_write, ready, byte.as_ptr(), 1usize);
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}
