//! crust's controlling terminal, for shell jobs: handing its foreground to a restored job and
//! taking it back.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{Pid, getpgrp};

use super::SysError;

pub struct ControllingTerminal {
    tty: File,
}

impl ControllingTerminal {
    /// Opens /dev/tty: fails when crust has no controlling terminal.
    pub fn open() -> Result<Self, SysError> {
        let tty = File::options()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| SysError::new("open /dev/tty", super::remote::io_errno(&e)))?;
        Ok(ControllingTerminal { tty })
    }

    /// Makes process group `pgid` the terminal's foreground group.
    pub fn give_foreground(&self, pgid: u32) -> Result<(), SysError> {
        self.set_foreground(Pid::from_raw(pgid as i32))
    }

    /// Makes crust's own process group the foreground group again.
    pub fn take_foreground(&self) -> Result<(), SysError> {
        self.set_foreground(getpgrp())
    }

    fn set_foreground(&self, pgid: Pid) -> Result<(), SysError> {
        // A background process that changes the foreground gets SIGTTOU: block it meanwhile.
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let mut old = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).map_err(|e| SysError::new("sigprocmask", e))?;
        let pgid_raw: libc::pid_t = pgid.as_raw();
        // SAFETY: TIOCSPGRP reads one pid_t from the pointer, a live local.
        let ret = unsafe { libc::ioctl(self.tty.as_raw_fd(), libc::TIOCSPGRP, &pgid_raw as *const libc::pid_t) };
        let result = Errno::result(ret).map(drop).map_err(|e| SysError::new(format!("tcsetpgrp({pgid})"), e));
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        result
    }
}
