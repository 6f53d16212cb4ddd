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

/// Forks crust into a new process whose PID is `pid`. The child does nothing but wait to be
/// seized and rebuilt by the caller, and dies with its parent.
///
/// Must be called while crust is single-threaded: the child runs on a copy of the caller's stack.
pub fn fork_with_pid(pid: i32) -> Result<Pid, SysError> {
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 reads `args` (and the one-element `set_tid` array) during the call. Without
    // CLONE_VM the child gets a copy of our address space and returns 0 here on its own copy of
    // the stack; it then only makes raw system calls and never returns into Rust code.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        0 => child_wait_forever(),
        n if n > 0 => Ok(Pid::from_raw(n as i32)),
        _ => Err(SysError::new(format!("clone3(set_tid={pid})"), Errno::last())),
    }
}

fn child_wait_forever() -> ! {
    // SAFETY: raw system calls with plain integer arguments; no memory is touched.
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}
