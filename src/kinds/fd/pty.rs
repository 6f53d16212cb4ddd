//! Pseudo-terminal pairs whose master (/dev/ptmx) is held inside the tree, with their slaves
//! (/dev/pts/N). A slave whose master is outside the tree is the terminal of a shell job: it
//! becomes a `tty` record (with --shell-job) or is refused. A slave whose master was closed
//! (hung up, its node deleted) comes back as the slave of a new pair whose master crust
//! closes once the slave's descriptions are open.
//!
//! Dump (tree frozen) reads the pair's state through crust's copy of the master: the slave's
//! termios and window size (a master's ioctls answer for its slave), packet mode, the lock,
//! exclusive mode, the session it is the controlling terminal of and its foreground group. The
//! queues are read and written back at once, so a dump -R leaves them as they were:
//! - output (written on the slave, not read from the master): the master's raw input buffer,
//!   read through the copy (FIONREAD bytes), written back through a slave description of
//!   crust's own (TIOCGPTPEER) with OPOST off for the moment;
//! - input (typed into the master, not read from the slave): the slave's buffer, read through
//!   crust's slave: in non-canonical mode as it is; in canonical mode line by line (one read
//!   returns one line), then the unfinished line, which crust reads with ICANON off for a
//!   moment (switching it back on an empty buffer leaves nothing changed). Typed back through
//!   the master with echo, signals and input translation off for the moment, in canonical
//!   mode every special character after VLNEXT but each line's own end (VEOF for a line ended
//!   by end of file), so every line comes back with its boundary.
//!
//! The kernel facts this relies on: docs/terminals.md.
//!
//! Restore: the pair is created by the nearest common ancestor of its holders. The kernel gives
//! a new master the lowest free index; the program may know its slave's name (ptsname), so
//! crust opens ptmx until it gets the recorded index (the lower ones it got meanwhile are
//! closed again) and refuses if that index is taken. Slaves are opened with TIOCGPTPEER.
//! Settings come at once (before any process has the slave as its terminal: no SIGWINCH);
//! a session leader takes the slave as its controlling terminal before it forks, and sets the
//! foreground group once every group exists; queues, exclusive mode and the lock come last.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::common::{ShellJob, description_held_outside, outside_holders, set_status_flags, settings_from_record, settings_record};
use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{OpenFile, Pty, Tty, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::notify::{bytes_queued, poll_now};
use crate::sys::pidfd::{pidfd_getfd, pidfd_open};
use crate::sys::terminal::{self, Settings};

pub struct Ptys;

/// created_with values of pairs carry this bit, so they never meet another kind's.
const GROUP_TAG: u64 = 1 << 61;
/// ... and those of hung-up slaves this one too (their index may be a live pair's again).
const HUNG_UP_TAG: u64 = 1 << 40;
/// The kernel's N_TTY_BUF_SIZE: a line discipline buffer this full may have more waiting in
/// the kernel's flip buffers, which crust cannot see.
const LDISC_BUFFER: usize = 4096;
/// Indexes above this would take too many opens to reach at restore.
const MAX_INDEX: u32 = 4096;

impl FdKind for Ptys {
    type Record = Pty;
    const NAME: &'static str = "pseudo-terminal";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Pty> {
        match kind {
            open_file::Kind::Pty(p) => Some(p),
            _ => None,
        }
    }

    fn into_kind(record: Pty) -> open_file::Kind {
        open_file::Kind::Pty(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFCHR && (is_ptmx(src.meta.rdev()) || slave_index(src).is_some())
    }

    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<Pty>> {
        state.get::<ShellJob>().0 = src.shell_job;
        let record = dump(src).with_context(|| format!("pid {} fd {} ({})", src.pid, src.fd, src.link))?;
        let hung_up = if record.hung_up { HUNG_UP_TAG } else { 0 };
        let group = GROUP_TAG | hung_up | record.index as u64;
        Ok(Dumped { record, created_with: group, carried: Vec::new() })
    }

    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, state: &mut KindState) -> Result<()> {
        let shell_job = state.get::<ShellJob>().0;
        check_tree(files, tree, shell_job)
    }

    fn precheck(file: &OpenFile, record: &Pty) -> Result<()> {
        if !record.master {
            return Ok(());
        }
        if record.index > MAX_INDEX {
            bail!("open file #{}: pseudo-terminal index {} is out of range (at most {MAX_INDEX})", file.id, record.index);
        }
        let path = format!("/dev/pts/{}", record.index);
        if std::path::Path::new(&path).exists() {
            bail!(
                "{path} is taken by another pseudo-terminal: crust restores a pseudo-terminal pair with the index it had \
                 (the program may know its slave's name), close that terminal first"
            );
        }
        if let Some(s) = &record.settings {
            settings_from_record(s).with_context(|| format!("open file #{} in {}", file.id, crate::image::OPEN_FILES))?;
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Pty, together: &mut Together) -> Result<i32> {
        let master = match together.get(&file.created_with).and_then(|fds| fds.first()) {
            Some(fd) => *fd,
            None => {
                // A hung-up slave's pair loses its master when the group's fds are closed,
                // right after its descriptions are opened.
                let fd = if record.hung_up { pair_to_hang_up(ctx, record.index)? } else { create_pair(ctx, record.index)? };
                together.insert(file.created_with, vec![fd]);
                fd
            }
        };
        if record.master {
            return Ok(master);
        }
        let flags = (file.flags as i32 & libc::O_ACCMODE) | libc::O_NOCTTY | libc::O_CLOEXEC;
        let fd = ctx
            .remote
            .syscall("ioctl(TIOCGPTPEER)", libc::SYS_ioctl, &[master as u64, libc::TIOCGPTPEER, flags as u64])
            .with_context(|| format!("opening /dev/pts/{} through its master", record.index))?;
        let fd = ctx.to_temp_fd(fd)?;
        set_status_flags(ctx, fd, file.flags)?;
        Ok(fd)
    }

    /// A session leader takes its terminal back: before it opens its files if an ancestor
    /// recreated the pair, in any case before it forks.
    fn session_set(ctx: &mut RestoreCtx, before_forks: bool) -> Result<()> {
        take_controlling_terminal(ctx, before_forks)
    }

    fn groups_exist(ctx: &mut RestoreCtx) -> Result<()> {
        set_foreground_group(ctx)
    }

    fn finish_descriptions(ctx: &mut RestoreCtx, files: &[(&OpenFile, &Pty)]) -> Result<()> {
        for (file, record) in files.iter().filter(|(_, r)| r.master) {
            finish_pair(ctx, file, record).with_context(|| format!("finishing the pseudo-terminal pair /dev/pts/{}", record.index))?;
        }
        Ok(())
    }

    /// The session leader takes the slave as its terminal before it forks.
    fn needed_by(record: &Pty) -> Vec<u32> {
        match record.master && record.session != 0 {
            true => vec![record.session],
            false => Vec::new(),
        }
    }

    fn describe(record: &Pty) -> String {
        match (record.master, record.hung_up) {
            (true, _) => format!("pseudo-terminal master {} of /dev/pts/{}", record.ptmx_path, record.index),
            (false, false) => format!("/dev/pts/{}", record.index),
            (false, true) => format!("/dev/pts/{} (hung up)", record.index),
        }
    }

    fn show(record: &Pty, json: &mut serde_json::Value) {
        for (field, bytes) in [("output_queued", &record.output_queued), ("input_queued", &record.input_queued)] {
            json[field] = serde_json::json!(String::from_utf8_lossy(bytes));
        }
        json["input_lines"] = record.input_lines.iter().map(|l| String::from_utf8_lossy(l)).collect();
    }
}

/// /dev/ptmx and /dev/pts/ptmx: 5:2.
fn is_ptmx(rdev: u64) -> bool {
    rdev == libc::makedev(5, 2)
}

/// N of a slave /dev/pts/N (majors 136-143); a slave whose master was closed has its node
/// removed ("/dev/pts/N (deleted)").
fn slave_index(src: &FdSource) -> Option<u32> {
    let major = libc::major(src.meta.rdev());
    if !(136..=143).contains(&major) {
        return None;
    }
    let name = src.link.strip_prefix("/dev/pts/")?;
    name.strip_suffix(" (deleted)").unwrap_or(name).parse().ok()
}

fn dump(src: &FdSource) -> Result<Pty> {
    if let Some(index) = slave_index(src)
        && src.link.ends_with(" (deleted)")
    {
        // Hung up: every request but a few fails, nothing more to read of it.
        return Ok(Pty { index, master: false, hung_up: true, ..Default::default() });
    }
    if let Some(index) = slave_index(src) {
        // The slave's own settings, kept if it turns out to be a shell job's terminal.
        let settings = terminal::settings(src.copy.as_fd())?;
        return Ok(Pty { index, master: false, settings: Some(settings_record(&settings)), ..Default::default() });
    }
    let m = src.copy.as_fd();
    let index = terminal::pty_index(m)?;
    if index > MAX_INDEX {
        bail!("pseudo-terminal index {index} is too high for crust to recreate (limit {MAX_INDEX})");
    }
    Ok(Pty {
        index,
        master: true,
        ptmx_path: src.link.to_string(),
        settings: Some(settings_record(&terminal::settings(m)?)),
        locked: terminal::pty_locked(m)?,
        packet_mode: terminal::packet_mode(m)?,
        master_exclusive: terminal::exclusive(m)?,
        ..Default::default()
    })
}

/// Sorts the slaves (a pair's, or a shell job's terminal) and completes every master's record
/// with what needs the whole frozen tree: its session, the slave's state, the queues.
fn check_tree(files: &mut [OpenFile], tree: &WholeTree, shell_job: bool) -> Result<()> {
    let masters: BTreeSet<u32> =
        files.iter().filter_map(|f| Ptys::record_of(f.kind.as_ref()?)).filter(|p| p.master).map(|p| p.index).collect();
    let inside: BTreeSet<i32> = tree.holders.values().flatten().map(|(p, _)| *p).collect();
    for file in files.iter_mut() {
        let Some(open_file::Kind::Pty(record)) = &file.kind else { continue };
        let Some(&(pid, fd)) = tree.holders.get(&file.id).and_then(|h| h.first()) else { continue };
        if !record.master && !record.hung_up && !masters.contains(&record.index) {
            file.kind = Some(shell_job_terminal(pid, fd, record, shell_job)?);
            file.created_with = 0;
        }
    }
    let slaves_inside: BTreeSet<u32> =
        files.iter().filter_map(|f| Ptys::record_of(f.kind.as_ref()?)).filter(|p| !p.master && !p.hung_up).map(|p| p.index).collect();
    for file in files.iter_mut() {
        let Some(open_file::Kind::Pty(record)) = &mut file.kind else { continue };
        let Some(&(pid, fd)) = tree.holders.get(&file.id).and_then(|h| h.first()) else { continue };
        if record.master {
            let slave_inside = slaves_inside.contains(&record.index);
            complete_master(pid, fd, record, slave_inside, &inside)
                .with_context(|| format!("pid {pid} fd {fd}: pseudo-terminal master of /dev/pts/{}", record.index))?;
        }
    }
    Ok(())
}

/// A slave whose master is outside the tree: the terminal of a shell job (its settings are
/// given to crust's terminal at restore), or refused without --shell-job.
fn shell_job_terminal(pid: i32, fd: i32, record: &Pty, shell_job: bool) -> Result<open_file::Kind> {
    let path = format!("/dev/pts/{}", record.index);
    if !shell_job {
        bail!(
            "pid {pid} fd {fd}: a terminal ({path}) whose master is outside the dumped processes: a program started from \
             a shell is dumped with --shell-job (-j)"
        );
    }
    let rdev = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).with_context(|| format!("pid {pid} fd {fd}: stat"))?.rdev();
    Ok(open_file::Kind::Tty(Tty { path, rdev, settings: record.settings.clone(), session: 0 }))
}

/// The master's record, completed from a copy of it (tree frozen): refusals first, touching
/// nothing; then the queues are read and written back.
fn complete_master(pid: i32, fd: i32, record: &mut Pty, slave_inside: bool, inside: &BTreeSet<i32>) -> Result<()> {
    if let Some((other, other_fd)) = description_held_outside(pid, fd, inside)? {
        bail!("it is also held by pid {other} (fd {other_fd}), outside the dumped processes");
    }
    let slave_path = format!("/dev/pts/{}", record.index);
    let slave = std::fs::metadata(&slave_path).with_context(|| format!("stat {slave_path}"))?;
    (record.slave_mode, record.slave_uid, record.slave_gid) = (slave.mode() & 0o7777, slave.uid(), slave.gid());
    if let Some((other, other_fd)) = outside_holders(slave.dev(), slave.ino(), inside).first() {
        bail!("its slave {slave_path} is also open in pid {other} (fd {other_fd}), outside the dumped processes");
    }
    let copy = pidfd_getfd(&pidfd_open(pid)?, pid, fd)?;
    if let Some((sid, pgrp)) = terminal::session_of_slave(copy.as_fd())? {
        if !inside.contains(&sid) {
            bail!("{slave_path} is the controlling terminal of session {sid}, whose leader is not dumped");
        }
        if !inside.iter().any(|p| process_group(*p).is_ok_and(|g| g == pgrp)) {
            bail!("{slave_path} has process group {pgrp} in its foreground, in which no dumped process is");
        }
        record.session = sid as u32;
        record.foreground_pgrp = pgrp as u32;
    }
    let hung_up = poll_now(copy.as_fd(), libc::POLLIN)? & libc::POLLHUP != 0;
    record.slave_closed = hung_up && !slave_inside;
    if slave_inside || record.slave_closed {
        // Only then may crust open the slave itself: the first opening of a slave never
        // opened would mark it closed when crust closes it.
        let settings = settings_from_record(record.settings.as_ref().context("no settings")?)?;
        let queues = take_queues(&copy, record, &settings)?;
        record.output_queued = queues.output;
        record.input_lines = queues.lines;
        record.input_queued = queues.input;
    }
    Ok(())
}

/// The process group of `pid` (/proc/PID/stat).
fn process_group(pid: i32) -> Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the comm: state(0) ppid(1) pgrp(2).
    Ok(stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(2)).context("no pgrp")?.parse()?)
}

/// What waits in a pair: written on the slave (`output`, as the master reads it), and typed
/// into the master: the finished lines of a canonical slave (each as one read returns it) and
/// the rest (`input`: an unfinished line, or everything in non-canonical mode).
#[derive(Default)]
struct Queues {
    output: Vec<u8>,
    lines: Vec<Vec<u8>>,
    input: Vec<u8>,
}

impl Queues {
    fn of(record: &Pty) -> Queues {
        Queues { output: record.output_queued.clone(), lines: record.input_lines.clone(), input: record.input_queued.clone() }
    }

    fn is_empty(&self) -> bool {
        self.output.is_empty() && self.lines.is_empty() && self.input.is_empty()
    }
}

/// Reads both queues of a frozen pair and puts them back at once.
fn take_queues(master: &OwnedFd, record: &mut Pty, settings: &Settings) -> Result<Queues> {
    let m = master.as_fd();
    if record.packet_mode && poll_now(m, libc::POLLPRI)? & libc::POLLPRI != 0 {
        bail!("it is in packet mode with a status byte not read yet; crust cannot put a status back");
    }
    // A poll of a terminal with nothing to read yet makes the kernel hand over bytes still on
    // their way (written a moment before the freeze) first.
    poll_now(m, libc::POLLIN)?;
    let output_len = bytes_queued(m)?;
    if output_len >= LDISC_BUFFER - 1 {
        bail!(
            "{output_len} bytes written on its slave wait unread; crust keeps at most {} (more may wait unseen in the kernel)",
            LDISC_BUFFER - 2
        );
    }
    let slave = with_unlocked(m, record.locked, || terminal::open_peer(m, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC))?;
    let s = slave.as_fd();
    record.slave_exclusive = terminal::exclusive(s)?;
    let lflag = settings.termios.c_lflag;
    let canonical = lflag & libc::ICANON != 0;
    poll_now(s, libc::POLLIN)?;
    let input_len = bytes_queued(s)?;
    if record.packet_mode && lflag & libc::EXTPROC != 0 {
        bail!("it is in packet mode with EXTPROC: every change of its settings, crust's too, would be reported to its reader");
    }
    if canonical && lflag & libc::EXTPROC != 0 && input_len > 0 {
        bail!("{input_len} bytes typed into it wait unread in canonical mode with EXTPROC: crust cannot tell their lines apart");
    }
    if input_len >= LDISC_BUFFER - 1 {
        bail!("{input_len} bytes typed into it wait unread; crust keeps at most {}", LDISC_BUFFER - 2);
    }
    let mut queues = Queues {
        output: read_queued(m, output_len, record.packet_mode).context("reading the bytes its slave wrote")?,
        ..Default::default()
    };
    if canonical {
        queues.lines = finished_lines(s).context("reading the lines typed into it")?;
        queues.input = unfinished_line(m, s, settings)?;
    } else {
        queues.input = read_queued(s, input_len, false)?;
    }
    refill(m, s, settings, &queues).context("putting the queued bytes back")?;
    Ok(queues)
}

/// The finished lines waiting in a canonical slave: one read returns one line (an end of file
/// typed at the start of a line: an empty one), and a poll tells whether one waits.
fn finished_lines(s: BorrowedFd) -> Result<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    let mut buf = vec![0u8; LDISC_BUFFER];
    while poll_now(s, libc::POLLIN)? & libc::POLLIN != 0 {
        if lines.len() >= LDISC_BUFFER {
            bail!("lines keep coming");
        }
        let n = nix::unistd::read(s, &mut buf).context("read")?;
        lines.push(buf[..n].to_vec());
    }
    Ok(lines)
}

/// The unfinished line of a canonical slave: visible only with ICANON off (the kernel then
/// treats every byte as readable), read, then ICANON back on an empty buffer.
fn unfinished_line(m: BorrowedFd, s: BorrowedFd, settings: &Settings) -> Result<Vec<u8>> {
    let mut plain = settings.termios;
    plain.c_lflag &= !libc::ICANON;
    plain.c_cc[libc::VMIN] = 0;
    plain.c_cc[libc::VTIME] = 0;
    terminal::set_termios(m, &plain)?;
    let read = bytes_queued(s).map_err(anyhow::Error::from).and_then(|n| read_queued(s, n, false));
    terminal::set_termios(m, &settings.termios)?;
    read.context("reading the unfinished line typed into it")
}

/// Reads the `len` bytes waiting in a terminal (without blocking: they are there). In packet
/// mode every read starts with a status byte, TIOCPKT_DATA (0) before data.
fn read_queued(fd: BorrowedFd, len: usize, packet: bool) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut buf = vec![0u8; len + 1];
    for _ in 0..64 {
        if out.len() == len {
            return Ok(out);
        }
        if poll_now(fd, libc::POLLIN)? & libc::POLLIN == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let want = len - out.len() + packet as usize;
        let n = nix::unistd::read(fd, &mut buf[..want]).context("read")?;
        let data = match (packet, buf.first()) {
            (false, _) => &buf[..n],
            (true, Some(0)) if n > 0 => &buf[1..n],
            (true, _) => bail!("a packet-mode read gave status {:#x} instead of data", buf[0]),
        };
        out.extend_from_slice(data);
    }
    bail!("only {} of the {len} bytes queued could be read", out.len())
}

/// Puts queued bytes into a pair: the output through the slave `s` (into the master's buffer,
/// with OPOST off), the input through the master `m` (into the slave's buffer, with echo,
/// signal characters and input translation off), then the settings back.
fn refill(m: BorrowedFd, s: BorrowedFd, settings: &Settings, q: &Queues) -> Result<()> {
    if q.is_empty() {
        return Ok(());
    }
    let quiet = quiet_settings(&settings.termios);
    terminal::set_termios(m, &quiet)?;
    let written = write_and_settle(s, m, &q.output, bytes_queued(m)? + q.output.len()).context("into the master's buffer").and_then(|()| {
        // FIONREAD counts the bytes of finished lines (an unfinished line only in
        // non-canonical mode, where all are lines).
        let counted: usize =
            q.lines.iter().map(Vec::len).sum::<usize>() + if quiet.c_lflag & libc::ICANON == 0 { q.input.len() } else { 0 };
        write_and_settle(m, s, &typed_stream(q, &quiet), bytes_queued(s)? + counted).context("into the slave's buffer")?;
        if !q.lines.is_empty() && !q.input.is_empty() && quiet.c_lflag & libc::ICANON != 0 {
            // The unfinished line came in the same write, after the lines counted: the
            // kernel hands it over in the same pass, give it a moment all the same.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    });
    terminal::set_termios(m, &settings.termios)?;
    written
}

/// The settings bytes are put back with: no output processing, no input translation (but
/// IXON as it was), no echo, no signal characters; in canonical mode IEXTEN with a VLNEXT
/// character (to type special characters literally), the line discipline's buffer untouched
/// (ICANON unchanged).
fn quiet_settings(termios: &libc::termios2) -> libc::termios2 {
    let mut quiet = *termios;
    quiet.c_oflag &= !libc::OPOST;
    // IXON stays as it is: changing it reports a status byte to a packet-mode master.
    quiet.c_iflag &= libc::IXON;
    quiet.c_lflag &= !(libc::ISIG | libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL | libc::ECHOKE);
    if quiet.c_lflag & libc::ICANON != 0 {
        quiet.c_lflag |= libc::IEXTEN;
        let cc = quiet.c_cc;
        let others =
            [cc[libc::VEOF], cc[libc::VEOL], cc[libc::VEOL2], cc[libc::VERASE], cc[libc::VKILL], cc[libc::VWERASE], cc[libc::VREPRINT]];
        // ^V if free, else the first control character no other special one uses.
        let lnext = std::iter::once(0x16u8).chain(1..0x20).find(|c| *c != b'\n' && !others.contains(c)).unwrap_or(0x16);
        quiet.c_cc[libc::VLNEXT] = lnext;
    }
    quiet
}

/// The bytes to type into the master, under `quiet`, that queue `q`'s input again. Canonical:
/// every character the line discipline would act on (flow control characters included, with
/// IXON) is typed after VLNEXT (so it is stored as it is), but a line's own end; a line ended
/// by end of file gets VEOF.
fn typed_stream(q: &Queues, quiet: &libc::termios2) -> Vec<u8> {
    if quiet.c_lflag & libc::ICANON == 0 {
        return q.input.clone();
    }
    let cc = &quiet.c_cc;
    let lnext = cc[libc::VLNEXT];
    let mut special = vec![
        b'\n',
        cc[libc::VEOF],
        cc[libc::VEOL],
        cc[libc::VEOL2],
        cc[libc::VERASE],
        cc[libc::VKILL],
        cc[libc::VWERASE],
        cc[libc::VREPRINT],
        lnext,
    ];
    if quiet.c_iflag & libc::IXON != 0 {
        special.extend([cc[libc::VSTART], cc[libc::VSTOP]]);
    }
    let ends = [b'\n', cc[libc::VEOL], cc[libc::VEOL2]];
    let mut out = Vec::new();
    let literally = |out: &mut Vec<u8>, bytes: &[u8]| {
        for &c in bytes {
            if special.contains(&c) {
                out.push(lnext);
            }
            out.push(c);
        }
    };
    for line in &q.lines {
        match line.split_last() {
            Some((end, body)) if ends.contains(end) => {
                literally(&mut out, body);
                out.push(*end);
            }
            _ => {
                literally(&mut out, line);
                out.push(cc[libc::VEOF]);
            }
        }
    }
    literally(&mut out, &q.input);
    out
}

/// Writes `data` to `to` and waits (2 s at most) until `from` counts `expect` bytes queued
/// (the kernel moves written bytes to the other side a moment later).
fn write_and_settle(to: BorrowedFd, from: BorrowedFd, data: &[u8], expect: usize) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut done = 0;
    while done < data.len() {
        match nix::unistd::write(to, &data[done..]) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("write ({done} of {} bytes written)", data.len()))),
        }
    }
    loop {
        let _ = poll_now(from, libc::POLLIN)?;
        let queued = bytes_queued(from)?;
        if queued >= expect {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{queued} bytes arrived of {expect}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` with the slave unlocked (if it was locked), then locks it again.
fn with_unlocked<T>(m: BorrowedFd, locked: bool, f: impl FnOnce() -> Result<T, crate::sys::SysError>) -> Result<T> {
    if locked {
        terminal::set_pty_locked(m, false)?;
    }
    let result = f();
    if locked {
        terminal::set_pty_locked(m, true)?;
    }
    Ok(result?)
}

/// Creates the pair of /dev/pts/`index` in the process (see [`open_master_at`]). Returns the
/// master's temporary fd; the pair gets its settings and stays unlocked until
/// [`finish_pair`].
fn create_pair(ctx: &mut RestoreCtx, index: u32) -> Result<i32> {
    let master_file = ctx
        .open_files
        .open_files
        .iter()
        .find(|f| f.kind.as_ref().and_then(Ptys::record_of).is_some_and(|p| p.master && p.index == index))
        .with_context(|| format!("the image has no master for /dev/pts/{index}"))?;
    let record = Ptys::record_of(master_file.kind.as_ref().unwrap()).unwrap();
    let flags = master_file.flags;
    let (fd, copy) = open_master_at(ctx, &record.ptmx_path, flags as i32 & libc::O_ACCMODE, index)?;
    let meta = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid))?;
    if !is_ptmx(meta.rdev()) {
        bail!("{} is not the pseudo-terminal multiplexer (device {:#x})", record.ptmx_path, meta.rdev());
    }
    set_status_flags(ctx, fd, flags)?;
    give_slave_node(record).with_context(|| format!("/dev/pts/{index}"))?;
    let m = copy.as_fd();
    let settings = settings_from_record(record.settings.as_ref().context("a master record without settings")?)?;
    // Before any process has the slave as its terminal: no SIGWINCH for anyone.
    terminal::set_termios(m, &settings.termios)?;
    terminal::set_winsize(m, &settings.winsize)?;
    terminal::set_packet_mode(m, record.packet_mode)?;
    terminal::set_pty_locked(m, false)?;
    Ok(fd)
}

/// The slave's node gets the owner and permission bits it had (images from before they were
/// recorded leave the kernel's). crust does it itself: its node, just made, is in /dev/pts.
fn give_slave_node(record: &Pty) -> Result<()> {
    if record.slave_mode == 0 {
        return Ok(());
    }
    let path = format!("/dev/pts/{}", record.index);
    std::os::unix::fs::chown(&path, Some(record.slave_uid), Some(record.slave_gid)).context("chown")?;
    let mode = std::fs::Permissions::from_mode(record.slave_mode & 0o7777);
    std::fs::set_permissions(&path, mode).context("chmod")
}

/// Opens ptmx in the process until the kernel hands out `index` (it gives the lowest free
/// one; those below it that were free are taken meanwhile, then given back): the master's
/// temporary fd and crust's copy of it.
fn open_master_at(ctx: &mut RestoreCtx, ptmx: &str, access: i32, index: u32) -> Result<(i32, OwnedFd)> {
    let mut spares = Vec::new();
    let found = loop {
        let fd = ctx.open_in_process(ptmx, access | libc::O_NOCTTY | libc::O_CLOEXEC)?;
        let copy = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
        let got = terminal::pty_index(copy.as_fd())?;
        if got == index {
            break Ok((fd, copy));
        }
        spares.push(fd);
        if got > index || spares.len() > MAX_INDEX as usize {
            break Err(anyhow::anyhow!(
                "/dev/pts/{index} was taken since the restore began (the kernel handed out {got}); crust restores a \
                 pseudo-terminal pair with the index it had"
            ));
        }
    };
    for fd in spares {
        ctx.close_in_process(fd)?;
    }
    found
}

/// The pair a hung-up slave is made from: at its old index if it is free (the name the
/// process sees ends with "(deleted)" either way), unlocked; its master goes right after the
/// slave's descriptions are opened, which hangs them up.
fn pair_to_hang_up(ctx: &mut RestoreCtx, index: u32) -> Result<i32> {
    let access = libc::O_RDWR;
    let (fd, copy) = match open_master_at(ctx, "/dev/ptmx", access, index) {
        Ok(found) => found,
        Err(e) => {
            tracing::info!("a hung-up /dev/pts/{index} comes back under another index: {e:#}");
            let fd = ctx.open_in_process("/dev/ptmx", access | libc::O_NOCTTY | libc::O_CLOEXEC)?;
            (fd, pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?)
        }
    };
    terminal::set_pty_locked(copy.as_fd(), false)?;
    Ok(fd)
}

/// Once every process exists, in the creator (the master still at its working fd): the
/// queues, a closed slave, exclusive modes, the lock.
fn finish_pair(ctx: &mut RestoreCtx, file: &OpenFile, record: &Pty) -> Result<()> {
    let work = ctx.work_fd_floor + file.id as i32;
    let copy = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), work)?;
    let m = copy.as_fd();
    let queues = Queues::of(record);
    if record.slave_closed || record.slave_exclusive || !queues.is_empty() {
        let settings = settings_from_record(record.settings.as_ref().context("a master record without settings")?)?;
        let slave = terminal::open_peer(m, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        refill(m, slave.as_fd(), &settings, &queues)?;
        if record.slave_exclusive {
            terminal::set_exclusive(slave.as_fd())?;
        }
        // Closing crust's slave, the only one if every other was closed at dump time, leaves
        // the master reading EIO as it did.
    }
    if record.master_exclusive {
        terminal::set_exclusive(m)?;
    }
    if record.locked {
        terminal::set_pty_locked(m, true)?;
    }
    Ok(())
}

/// The masters of pairs whose slave is the controlling terminal of session `pid`: (record, id).
fn led_by(ctx: &RestoreCtx) -> Vec<(Pty, u32)> {
    let pid = ctx.pid.as_raw() as u32;
    ctx.open_files
        .open_files
        .iter()
        .filter_map(|f| Some((Ptys::record_of(f.kind.as_ref()?)?.clone(), f.id)))
        .filter(|(r, _)| r.master && r.session == pid)
        .collect()
}

/// Restore, in a session leader: takes the slave of its pair as controlling terminal
/// (TIOCSCTTY), through a slave description opened from the master it holds or inherited at
/// its working fd. Called before it opens its own descriptions (its /dev/tty needs the
/// terminal), when the pair exists by then, and again before it forks its children (they
/// inherit the terminal), when the pair must exist.
fn take_controlling_terminal(ctx: &mut RestoreCtx, required: bool) -> Result<()> {
    for (record, id) in led_by(ctx) {
        if has_controlling_terminal(ctx.pid.as_raw())? || (!required && master_at_work_fd(ctx, &record, id).is_err()) {
            continue;
        }
        let slave = open_slave_for_session(ctx, &record, id)?;
        let done = ctx.remote.syscall("ioctl(TIOCSCTTY)", libc::SYS_ioctl, &[slave as u64, libc::TIOCSCTTY, 0]);
        ctx.close_in_process(slave)?;
        done.with_context(|| format!("pid {} taking /dev/pts/{} as its controlling terminal", ctx.pid, record.index))?;
    }
    Ok(())
}

/// tty_nr of /proc/PID/stat is not 0.
fn has_controlling_terminal(pid: i32) -> Result<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the comm: state(0) ppid(1) pgrp(2) session(3) tty_nr(4).
    let tty_nr = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(4)).context("/proc/PID/stat without tty_nr")?;
    Ok(tty_nr != "0")
}

/// Restore, in a session leader once every process group of the tree exists: the terminal's
/// foreground process group (TIOCSPGRP; crust's calls run with every signal blocked, so no
/// SIGTTOU stops it).
fn set_foreground_group(ctx: &mut RestoreCtx) -> Result<()> {
    for (record, id) in led_by(ctx) {
        let slave = open_slave_for_session(ctx, &record, id)?;
        let pgrp = ctx.remote.put(0, &(record.foreground_pgrp as i32).to_ne_bytes())?;
        let done = ctx.remote.syscall("ioctl(TIOCSPGRP)", libc::SYS_ioctl, &[slave as u64, libc::TIOCSPGRP, pgrp]);
        ctx.close_in_process(slave)?;
        done.with_context(|| format!("making process group {} the foreground of /dev/pts/{}", record.foreground_pgrp, record.index))?;
    }
    Ok(())
}

/// A temporary slave description in the leader, from the pair's master at its working fd.
fn open_slave_for_session(ctx: &mut RestoreCtx, record: &Pty, master_id: u32) -> Result<i32> {
    let work = master_at_work_fd(ctx, record, master_id)?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    let fd = ctx.remote.syscall("ioctl(TIOCGPTPEER)", libc::SYS_ioctl, &[work as u64, libc::TIOCGPTPEER, flags as u64])?;
    ctx.to_temp_fd(fd)
}

/// The working fd of the pair's master in the process, if the pair exists there yet.
fn master_at_work_fd(ctx: &RestoreCtx, record: &Pty, master_id: u32) -> Result<i32> {
    let work = ctx.work_fd_floor + master_id as i32;
    let link = std::fs::read_link(format!("/proc/{}/fd/{work}", ctx.pid)).map(|l| l.to_string_lossy().into_owned());
    if link.as_deref().ok() != Some(record.ptmx_path.as_str()) {
        bail!(
            "pid {}: /dev/pts/{} is its controlling terminal, but the pair is not created yet when it forks its children \
             (its master is held only by processes it forked later); crust cannot restore that",
            ctx.pid,
            record.index
        );
    }
    Ok(work)
}
