//! The system layer: the only place with `unsafe`. Everything above it works with typed values
//! and gets errors that name the system call, the process and the errno.

pub mod clone3;
pub mod pagemap;
pub mod pidfd;
pub mod ptrace;
pub mod region;
pub mod remote;
pub mod socket;
pub mod unix_diag;

use nix::errno::Errno;

/// A failed system call or ptrace step, with what was being done and to whom.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{op}{} failed: {errno}", pid_suffix(*.pid))]
    Call { op: String, pid: Option<i32>, errno: Errno },
    #[error("{op}: pid {pid} {what}")]
    Gone { op: &'static str, pid: i32, what: String },
    #[error("{op}: pid {pid} reported an unexpected state: {what}")]
    Unexpected { op: &'static str, pid: i32, what: String },
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

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
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
    let inherited: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in inherited {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}
