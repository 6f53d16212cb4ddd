//! Terminals: crust's controlling terminal, for shell jobs (handing its foreground to a restored
//! job and taking it back, giving it the job's settings), and the ioctls that read and set a
//! terminal's state and a pseudo-terminal pair's.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
        let pgid_raw: libc::pid_t = pgid.as_raw();
        without_sigttou(|| ioctl_in(self.tty.as_fd(), libc::TIOCSPGRP, &format!("tcsetpgrp({pgid})"), &pgid_raw))
    }

    /// The settings of crust's terminal.
    pub fn settings(&self) -> Result<Settings, SysError> {
        settings(self.tty.as_fd())
    }

    /// Gives crust's terminal the settings a job had on its terminal (termios, then window
    /// size), with SIGTTOU blocked: crust may be in the background of its terminal.
    pub fn apply(&self, s: &Settings) -> Result<(), SysError> {
        without_sigttou(|| {
            set_termios(self.tty.as_fd(), &s.termios)?;
            set_winsize(self.tty.as_fd(), &s.winsize)
        })
    }
}

/// Runs `f` with SIGTTOU blocked (a background process changing its terminal gets it).
fn without_sigttou<T>(f: impl FnOnce() -> Result<T, SysError>) -> Result<T, SysError> {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).map_err(|e| SysError::new("sigprocmask", e))?;
    let result = f();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    result
}

/// A terminal's settings: its whole `struct termios2` (flags, line discipline, control
/// characters, speeds) and its window size.
#[derive(Clone, Copy)]
pub struct Settings {
    pub termios: libc::termios2,
    pub winsize: libc::winsize,
}

impl Settings {
    /// All fields zero (what the record's fields are then copied over).
    pub fn zeroed() -> Settings {
        // SAFETY: termios2 and winsize are plain C structs of integers: all zeroes is a value.
        unsafe { std::mem::zeroed() }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.termios;
        write!(
            f,
            "iflag {:#o} oflag {:#o} cflag {:#o} lflag {:#o} {}x{}",
            t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, self.winsize.ws_col, self.winsize.ws_row
        )
    }
}

fn ioctl_out<T>(fd: BorrowedFd, request: libc::Ioctl, name: &str, value: &mut T) -> Result<(), SysError> {
    // SAFETY: each request used with this helper writes exactly one `T` (the type its
    // documentation names) to the pointer, a live exclusive borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, value as *mut T) };
    Errno::result(ret).map(drop).map_err(|e| SysError::new(format!("ioctl({name})"), e))
}

fn ioctl_in<T>(fd: BorrowedFd, request: libc::Ioctl, name: &str, value: &T) -> Result<(), SysError> {
    // SAFETY: each request used with this helper reads exactly one `T` from the pointer, a
    // live shared borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, value as *const T) };
    Errno::result(ret).map(drop).map_err(|e| SysError::new(format!("ioctl({name})"), e))
}

/// TCGETS2 and TIOCGWINSZ. On a pseudo-terminal master both answer for the slave (the kernel
/// turns termios and window-size requests on a master to its slave).
pub fn settings(fd: BorrowedFd) -> Result<Settings, SysError> {
    let mut s = Settings::zeroed();
    ioctl_out(fd, libc::TCGETS2, "TCGETS2", &mut s.termios)?;
    ioctl_out(fd, libc::TIOCGWINSZ, "TIOCGWINSZ", &mut s.winsize)?;
    Ok(s)
}

/// TCSETS2 (at once: nothing is drained or flushed).
pub fn set_termios(fd: BorrowedFd, termios: &libc::termios2) -> Result<(), SysError> {
    ioctl_in(fd, libc::TCSETS2, "TCSETS2", termios)
}

/// TIOCSWINSZ: the kernel signals SIGWINCH to the terminal's foreground group if it changed.
pub fn set_winsize(fd: BorrowedFd, winsize: &libc::winsize) -> Result<(), SysError> {
    ioctl_in(fd, libc::TIOCSWINSZ, "TIOCSWINSZ", winsize)
}

fn get_int(fd: BorrowedFd, request: libc::Ioctl, name: &str) -> Result<i32, SysError> {
    let mut v: libc::c_int = 0;
    ioctl_out(fd, request, name, &mut v)?;
    Ok(v)
}

fn set_int(fd: BorrowedFd, request: libc::Ioctl, name: &str, v: i32) -> Result<(), SysError> {
    ioctl_in(fd, request, name, &(v as libc::c_int))
}

/// TIOCGPTN: the index N of a master's slave, /dev/pts/N.
pub fn pty_index(master: BorrowedFd) -> Result<u32, SysError> {
    get_int(master, libc::TIOCGPTN, "TIOCGPTN").map(|v| v as u32)
}

/// TIOCGPTLCK: whether the slave is locked (opening it fails until unlockpt).
pub fn pty_locked(master: BorrowedFd) -> Result<bool, SysError> {
    get_int(master, libc::TIOCGPTLCK, "TIOCGPTLCK").map(|v| v != 0)
}

/// TIOCSPTLCK: locks or unlocks the slave.
pub fn set_pty_locked(master: BorrowedFd, locked: bool) -> Result<(), SysError> {
    set_int(master, libc::TIOCSPTLCK, "TIOCSPTLCK", locked as i32)
}

/// TIOCGPKT: whether the master is in packet mode.
pub fn packet_mode(master: BorrowedFd) -> Result<bool, SysError> {
    get_int(master, libc::TIOCGPKT, "TIOCGPKT").map(|v| v != 0)
}

/// TIOCPKT: turns packet mode on or off.
pub fn set_packet_mode(master: BorrowedFd, on: bool) -> Result<(), SysError> {
    set_int(master, libc::TIOCPKT, "TIOCPKT", on as i32)
}

/// TIOCGEXCL: whether the terminal the fd is on is in exclusive mode (TIOCEXCL).
pub fn exclusive(fd: BorrowedFd) -> Result<bool, SysError> {
    get_int(fd, libc::TIOCGEXCL, "TIOCGEXCL").map(|v| v != 0)
}

/// TIOCEXCL: puts the terminal in exclusive mode.
pub fn set_exclusive(fd: BorrowedFd) -> Result<(), SysError> {
    // SAFETY: TIOCEXCL takes no argument.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCEXCL) };
    Errno::result(ret).map(drop).map_err(|e| SysError::new("ioctl(TIOCEXCL)", e))
}

/// TIOCGSID and TIOCGPGRP on a master: the session whose controlling terminal the slave is
/// and its foreground process group, or None when the slave is nobody's controlling terminal.
pub fn session_of_slave(master: BorrowedFd) -> Result<Option<(i32, i32)>, SysError> {
    match get_int(master, libc::TIOCGSID, "TIOCGSID") {
        Ok(sid) => Ok(Some((sid, get_int(master, libc::TIOCGPGRP, "TIOCGPGRP")?))),
        Err(e) if e.errno() == Some(Errno::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// TIOCGPTPEER: a new open file description of the master's slave (with `flags`, O_NOCTTY
/// always: crust never takes a terminal as its own). Fails while the slave is locked.
pub fn open_peer(master: BorrowedFd, flags: i32) -> Result<OwnedFd, SysError> {
    // SAFETY: TIOCGPTPEER takes its open flags by value and returns a new descriptor.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, (flags | libc::O_NOCTTY) as libc::c_long) };
    let fd = Errno::result(ret).map_err(|e| SysError::new("ioctl(TIOCGPTPEER)", e))?;
    // SAFETY: the descriptor was just created for crust and belongs to nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
