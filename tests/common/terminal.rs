//! Pseudo-terminals for the terminal tests (tests/restore_shell_job.rs,
//! tests/restore_terminals.rs): a pair of the test's own, reading its output, running a
//! program on it, and its settings.
//!
//! Included with `#[path = "common/terminal.rs"] mod terminal;`, next to `mod common;`.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A pseudo-terminal pair: (master, slave).
pub fn openpty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the two live locals; the other pointers may be null.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Reads the terminal's output until it contains `needle` (10 s at most).
pub fn read_until(master: &mut File, seen: &mut String, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let fd = master.as_raw_fd();
    while Instant::now() < deadline && !seen.contains(needle) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes one pollfd, a live local.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n > 0 {
            let mut buf = [0u8; 1024];
            match master.read(&mut buf) {
                Ok(k) => seen.push_str(&String::from_utf8_lossy(&buf[..k])),
                Err(_) => break,
            }
        }
    }
    seen.contains(needle)
}

pub fn on_terminal(cmd: &mut Command, slave: &OwnedFd) {
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
}

/// (termios, window size) of a terminal, read through any fd of it (a master answers for its
/// slave).
pub fn terminal_state(fd: i32) -> (libc::termios2, libc::winsize) {
    // SAFETY: plain C structs of integers; each ioctl writes one of them, a live local.
    unsafe {
        let mut t: libc::termios2 = std::mem::zeroed();
        let mut w: libc::winsize = std::mem::zeroed();
        assert_eq!(libc::ioctl(fd, libc::TCGETS2, &mut t), 0, "TCGETS2: {}", std::io::Error::last_os_error());
        assert_eq!(libc::ioctl(fd, libc::TIOCGWINSZ, &mut w), 0, "TIOCGWINSZ: {}", std::io::Error::last_os_error());
        (t, w)
    }
}

pub fn same_state(a: &(libc::termios2, libc::winsize), b: &(libc::termios2, libc::winsize)) -> bool {
    let (t, u) = (&a.0, &b.0);
    t.c_iflag == u.c_iflag
        && t.c_oflag == u.c_oflag
        && t.c_cflag == u.c_cflag
        && t.c_lflag == u.c_lflag
        && t.c_cc == u.c_cc
        && t.c_ispeed == u.c_ispeed
        && t.c_ospeed == u.c_ospeed
        && (a.1.ws_row, a.1.ws_col, a.1.ws_xpixel, a.1.ws_ypixel) == (b.1.ws_row, b.1.ws_col, b.1.ws_xpixel, b.1.ws_ypixel)
}

pub fn describe(s: &(libc::termios2, libc::winsize)) -> String {
    let t = &s.0;
    format!(
        "iflag {:#o} oflag {:#o} cflag {:#o} lflag {:#o} cc {:?} {}x{}",
        t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc, s.1.ws_col, s.1.ws_row
    )
}

/// Puts the terminal in the cooked mode a shell leaves it in, 80x24 (as the shell would after
/// its job died).
pub fn make_cooked(fd: i32) {
    // SAFETY: termios and winsize are plain C structs; each call reads or writes one, a live local.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0);
        t.c_iflag |= libc::ICRNL | libc::IXON;
        t.c_oflag |= libc::OPOST | libc::ONLCR;
        t.c_lflag |= libc::ICANON | libc::ECHO | libc::ECHOE | libc::ISIG | libc::IEXTEN;
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &t), 0);
        let w = libc::winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        assert_eq!(libc::ioctl(fd, libc::TIOCSWINSZ, &w), 0);
    }
}

/// Waits (20 s at most) until crust has let restored process `pid` go: it runs its own program
/// (not crust's copy of itself: right after its creation the process is crust's child, not
/// yet traced, and TracerPid alone would say 0) and nobody traces it.
pub fn wait_released(pid: i32) {
    let crust = std::path::Path::new(crate::common::crust_bin()).canonicalize().unwrap();
    crate::common::wait_until(&format!("pid {pid} restored and let go"), Duration::from_secs(20), || {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
        let untraced = crate::common::proc_status_field(pid, "TracerPid").as_deref() == Some("0");
        exe.is_ok_and(|e| e != crust) && untraced
    });
}

/// Waits (10 s at most) for `child` to exit and returns its status; `what` says, on timeout,
/// what should have ended it.
pub fn wait_exit(child: &mut std::process::Child, what: impl Fn() -> String) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
