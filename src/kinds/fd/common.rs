//! Helpers more than one fd kind uses, so that kinds never import each other.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use crate::image::proto::{FileIdentity, OpenFile};
use crate::kinds::RestoreCtx;
use crate::sys::notify::open_by_handle;
use crate::sys::pidfd::pidfd_getfd;

/// Gives a freshly created description the status flags of the image (O_NONBLOCK, O_APPEND...;
/// F_SETFL ignores the access mode and creation flags). For the fd kinds created by their own
/// system call (eventfd, signalfd, timerfd, memfd).
pub fn set_status_flags(ctx: &mut RestoreCtx, fd: i32, flags: u32) -> Result<()> {
    let status = flags & !(libc::O_ACCMODE as u32);
    ctx.remote
        .syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[fd as u64, libc::F_SETFL as u64, status as u64])
        .with_context(|| format!("setting the status flags {status:#o}"))?;
    Ok(())
}

/// The bytes waiting in a pipe (or FIFO) read end, left in place (copied with tee(2)).
pub fn peek_buffer(read_end: &OwnedFd, size: i32) -> Result<Vec<u8>> {
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, tee};
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size));
    loop {
        match tee(read_end, &w, size as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
            Ok(_) => break,
            Err(nix::errno::Errno::EAGAIN) => break, // empty
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    drop(w);
    let mut out = Vec::new();
    File::from(r).read_to_end(&mut out)?;
    Ok(out)
}

/// Writes saved bytes into a restored pipe (or FIFO) through crust's own copy of a write end,
/// before the end gets its own status flags. Never blocks: the description is non-blocking
/// while crust fills it, and a pipe without room for the bytes (within 5 s) is an error, as is
/// an interruption of crust meanwhile.
pub fn fill_pipe(ctx: &mut RestoreCtx, write_end: i32, data: &[u8]) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), write_end)?;
    let was = OFlag::from_bits_truncate(fcntl(&ours, FcntlArg::F_GETFL)?);
    fcntl(&ours, FcntlArg::F_SETFL(was | OFlag::O_NONBLOCK))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut written = 0;
    let result: Result<()> = loop {
        if written == data.len() {
            break Ok(());
        }
        match nix::unistd::write(&ours, &data[written..]) {
            Ok(n) => written += n,
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                if let Err(e) = crate::interrupt::check() {
                    break Err(e.into());
                }
                let mut fds = [PollFd::new(ours.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                break Err(anyhow::anyhow!("no room for the last {} of {} bytes after 5 s", data.len() - written, data.len()));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(anyhow::Error::from(e).context("refilling a pipe buffer")),
        }
    };
    fcntl(&ours, FcntlArg::F_SETFL(was))?;
    result
}

/// Every (pid, fd) on the inode in processes outside `inside` (other than crust), from
/// /proc/*/fd: a stat of each entry, which follows the link to the inode and opens nothing.
/// Epoll and inotify descriptions all share one anonymous inode: see
/// [`description_held_outside`] to tell descriptions apart.
pub fn outside_holders(dev: u64, inode: u64, inside: &BTreeSet<i32>) -> Vec<(i32, i32)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me || inside.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(meta) = std::fs::metadata(fd.path())
                && meta.dev() == dev
                && meta.ino() == inode
                && let Some(n) = fd.file_name().to_str().and_then(|s| s.parse().ok())
            {
                found.push((pid, n));
            }
        }
    }
    found
}

/// The first process outside `inside` (other than crust) that maps the inode (dev, inode), with
/// the mapping's range, from /proc/*/maps (text only: nothing is opened).
pub fn outside_mapper(dev: u64, inode: u64, inside: &BTreeSet<i32>) -> Option<(i32, String)> {
    let me = std::process::id() as i32;
    let device = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let inode = inode.to_string();
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me || inside.contains(&pid) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (range, dev_field, ino_field) = (fields.next(), fields.nth(2), fields.next());
            if dev_field == Some(device.as_str()) && ino_field == Some(inode.as_str()) {
                return Some((pid, range.unwrap_or_default().to_owned()));
            }
        }
    }
    None
}

/// The first process outside the tree that holds the open file description behind fd `fd` of
/// `pid` (kcmp), with its fd.
pub fn description_held_outside(pid: i32, fd: i32, inside: &BTreeSet<i32>) -> Result<Option<(i32, i32)>> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))?;
    for (other, other_fd) in outside_holders(meta.dev(), meta.ino(), inside) {
        // A process may exit or close the fd meanwhile: only a positive answer counts.
        if crate::sys::pidfd::same_open_file(pid, fd, other, other_fd).unwrap_or(false) {
            return Ok(Some((other, other_fd)));
        }
    }
    Ok(None)
}

/// The flags a file is opened again with by path (regular files, stateless devices): the
/// description's, without creation and truncation flags, which are not part of an open
/// description and must never act on the file again.
pub fn reopen_flags(file: &OpenFile) -> i32 {
    file.flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) | libc::O_CLOEXEC
}

/// Moves a file opened again by path to the description's offset (regular files and
/// directories have one).
pub fn seek_to_position(ctx: &mut RestoreCtx, fd: i32, file: &OpenFile, identity: &FileIdentity) -> Result<()> {
    // An O_PATH description has no offset (lseek fails with EBADF).
    let o_path = file.flags & libc::O_PATH as u32 != 0;
    if !o_path && (identity.mode & libc::S_IFMT == libc::S_IFREG || identity.mode & libc::S_IFMT == libc::S_IFDIR) {
        ctx.remote.syscall("lseek", libc::SYS_lseek, &[fd as u64, file.position, libc::SEEK_SET as u64])?;
    }
    Ok(())
}

/// Socket options (level, name, largest value size) whose values on `socket` differ from
/// those on `fresh`, a new socket of the same kind: what the program changed. An option the
/// kernel does not report for `socket` is skipped.
pub fn options_differing(
    socket: std::os::fd::BorrowedFd,
    fresh: std::os::fd::BorrowedFd,
    options: impl Iterator<Item = (i32, i32, usize)>,
) -> Vec<crate::image::proto::SocketOption> {
    use crate::sys::socket::get_bytes;
    options
        .filter_map(|(level, name, len)| {
            let value = get_bytes(socket, level, name, len).ok()?;
            let default = get_bytes(fresh, level, name, len).ok();
            (default.as_ref() != Some(&value)).then_some(crate::image::proto::SocketOption { level, name, value })
        })
        .collect()
}

/// Sets one recorded socket option (see [`options_differing`]) on crust's copy of a restored
/// socket; `what` names it in errors.
pub fn apply_socket_option(socket: std::os::fd::BorrowedFd, o: &crate::image::proto::SocketOption, what: &str) -> Result<()> {
    use crate::sys::socket::{set_bytes, set_int};
    let int = o.value.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0);
    let context = || format!("setting {what} to {:?}", o.value);
    match (o.level, o.name) {
        // getsockopt reports twice what was set (the kernel's bookkeeping overhead); the
        // FORCE variants take the value as root may set it, past net.core.[rw]mem_max.
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => set_int(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, int / 2).with_context(context),
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => set_int(socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, int / 2).with_context(context),
        _ => set_bytes(socket, o.level, o.name, &o.value).with_context(context),
    }
}

/// A terminal's settings as the image records them.
pub fn settings_record(s: &crate::sys::terminal::Settings) -> crate::image::proto::TerminalSettings {
    let t = &s.termios;
    crate::image::proto::TerminalSettings {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line as u32,
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
        rows: s.winsize.ws_row as u32,
        cols: s.winsize.ws_col as u32,
        xpixel: s.winsize.ws_xpixel as u32,
        ypixel: s.winsize.ws_ypixel as u32,
    }
}

/// The settings an image's record holds; a damaged record is refused, naming the field.
pub fn settings_from_record(r: &crate::image::proto::TerminalSettings) -> Result<crate::sys::terminal::Settings> {
    let mut s = crate::sys::terminal::Settings::zeroed();
    let t = &mut s.termios;
    if r.cc.len() != t.c_cc.len() {
        anyhow::bail!("terminal settings: field cc holds {} control characters, termios2 has {}", r.cc.len(), t.c_cc.len());
    }
    let narrow = |v: u32, field: &str| -> Result<u16> {
        u16::try_from(v).map_err(|_| anyhow::anyhow!("terminal settings: field {field} is {v}, out of range"))
    };
    t.c_iflag = r.iflag;
    t.c_oflag = r.oflag;
    t.c_cflag = r.cflag;
    t.c_lflag = r.lflag;
    t.c_line = u8::try_from(r.line).map_err(|_| anyhow::anyhow!("terminal settings: field line is {}, out of range", r.line))?;
    t.c_cc.copy_from_slice(&r.cc);
    t.c_ispeed = r.ispeed;
    t.c_ospeed = r.ospeed;
    s.winsize.ws_row = narrow(r.rows, "rows")?;
    s.winsize.ws_col = narrow(r.cols, "cols")?;
    s.winsize.ws_xpixel = narrow(r.xpixel, "xpixel")?;
    s.winsize.ws_ypixel = narrow(r.ypixel, "ypixel")?;
    Ok(s)
}

/// dump --shell-job was given (the terminal kinds' shared state while a tree is dumped).
#[derive(Default)]
pub struct ShellJob(pub bool);

/// A `key:HEX` field of an fdinfo line (inotify and fanotify marks).
pub fn fdinfo_hex(line: &str, key: &str) -> Result<u64> {
    Ok(u64::from_str_radix(fdinfo_word(line, key)?, 16)?)
}

fn fdinfo_word<'a>(line: &'a str, key: &str) -> Result<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix(':'))).with_context(|| format!("no {key}:"))
}

/// The inode an inotify watch or a fanotify mark is on, as fdinfo shows it: its number, its
/// filesystem and its file handle (`ino:I sdev:D fhandle-bytes:B fhandle-type:T f_handle:HEX`).
pub struct FileHandle {
    pub inode: u64,
    /// The kernel's dev_t: major << 20 | minor.
    pub sdev: u64,
    handle_type: i32,
    handle: Vec<u8>,
}

impl FileHandle {
    pub fn parse(line: &str) -> Result<FileHandle> {
        let hex = |key: &str| fdinfo_hex(line, key);
        let text = fdinfo_word(line, "f_handle")?;
        let handle = (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16)).collect::<Result<Vec<u8>, _>>()?;
        let bytes = hex("fhandle-bytes")? as usize;
        if bytes != handle.len() {
            bail!("file handle of {} bytes, {} shown", bytes, handle.len());
        }
        Ok(FileHandle { inode: hex("ino")?, sdev: hex("sdev")?, handle_type: hex("fhandle-type")? as i32, handle })
    }

    /// st_dev as user space sees it.
    pub fn dev(&self) -> u64 {
        libc::makedev((self.sdev >> 20) as u32, (self.sdev & 0xfffff) as u32)
    }

    /// A path to the inode, from its file handle (O_PATH opens break no lease and make no
    /// inotify or fanotify event). open_by_handle_at needs a descriptor on the inode's
    /// filesystem that is not O_PATH (or the working directory), and opening one could queue
    /// an event in the very notification group being dumped, so crust opens nothing: it uses a
    /// copy of one of the process's own fds on that filesystem, else it changes its own
    /// working directory to a mount point of it for the call (chdir opens nothing) and back.
    pub fn path(&self, pid: i32) -> Result<String> {
        self.find_path(pid).with_context(|| {
            format!("inode {} on device {}:{}: crust cannot find a path to it", self.inode, self.sdev >> 20, self.sdev & 0xfffff)
        })
    }

    fn find_path(&self, pid: i32) -> Result<String> {
        let (major, minor) = (self.sdev >> 20, self.sdev & 0xfffff);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        // "36 35 98:0 /mnt1 /mnt/parent rw,..." : mounts of that device, whole-filesystem ones first.
        let mut mounts: Vec<(bool, String)> = mountinfo
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 5 || f[2] != format!("{major}:{minor}") {
                    return None;
                }
                Some((f[3] != "/", unescape(f[4])))
            })
            .collect();
        mounts.sort();
        // A watch on a mount's root directory is that mount point.
        for (_, mount_point) in &mounts {
            if std::fs::metadata(mount_point).is_ok_and(|m| m.dev() == self.dev() && m.ino() == self.inode) {
                return Ok(mount_point.clone());
            }
        }
        let mut last_error = None;
        for (fd, via) in self.process_fds_on_device(pid) {
            match self.path_through(Some(fd.as_fd())) {
                Ok(p) => return Ok(p),
                Err(e) => last_error = Some(e.context(format!("through {via}"))),
            }
        }
        for (_, mount_point) in &mounts {
            match in_directory(mount_point, || self.path_through(None)) {
                Ok(p) => return Ok(p),
                Err(e) => last_error = Some(e.context(format!("through the mount at {mount_point}"))),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no mount of that device is visible to crust")))
    }

    /// Copies of the process's fds on the watched inode's filesystem (not O_PATH ones).
    fn process_fds_on_device(&self, pid: i32) -> Vec<(OwnedFd, String)> {
        let mut out = Vec::new();
        let Ok(pidfd) = crate::sys::pidfd::pidfd_open(pid) else { return out };
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return out };
        for e in entries.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if !std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == self.dev()) {
                continue;
            }
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
            if flags.is_none_or(|f| f & libc::O_PATH as u32 != 0) {
                continue;
            }
            if let Ok(copy) = pidfd_getfd(&pidfd, pid, fd) {
                out.push((copy, format!("fd {fd} of pid {pid}")));
            }
            if out.len() >= 2 {
                break;
            }
        }
        out
    }

    fn path_through(&self, mount: Option<std::os::fd::BorrowedFd>) -> Result<String> {
        let found = open_by_handle(mount, self.handle_type, &self.handle, libc::O_PATH | libc::O_CLOEXEC)?;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&found)))?;
        let path = link.to_string_lossy().into_owned();
        if path.ends_with(" (deleted)") || !path.starts_with('/') {
            bail!("the file was deleted ({path})");
        }
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("stat {path}"))?;
        if meta.dev() != self.dev() || meta.ino() != self.inode {
            bail!("{path} is another inode");
        }
        Ok(path)
    }
}

/// Runs `f` with crust's working directory changed to `dir`, then changes back (chdir and
/// fchdir to an O_PATH descriptor open nothing: no inotify or fanotify sees them). crust's dump is
/// single-threaded while it collects files.
fn in_directory<T>(dir: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let here: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(".")
        .context("keeping crust's working directory")?
        .into();
    nix::unistd::chdir(dir).with_context(|| format!("chdir {dir}"))?;
    let result = f();
    nix::unistd::fchdir(&here).context("changing back to crust's working directory")?;
    result
}

/// One line of /proc/self/mountinfo: "36 35 98:0 /mnt1 /mnt/parent rw,...".
pub struct Mount {
    pub id: u64,
    /// The kernel's dev_t of the filesystem: major << 20 | minor.
    pub sdev: u64,
    /// The directory of the filesystem mounted there ("/": all of it).
    pub root: String,
    pub mount_point: String,
}

/// crust's mounts (the dumped processes' are the same: other mount namespaces are refused).
pub fn mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let parse = |l: &str| -> Option<Mount> {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (major, minor) = f.get(2)?.split_once(':')?;
        let sdev = major.parse::<u64>().ok()? << 20 | minor.parse::<u64>().ok()?;
        Some(Mount { id: f[0].parse().ok()?, sdev, root: unescape(f.get(3)?), mount_point: unescape(f.get(4)?) })
    };
    Ok(text.lines().filter_map(parse).collect())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
