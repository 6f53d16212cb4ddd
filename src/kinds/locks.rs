//! File locks: POSIX record locks (owned by a process), flock and OFD locks (owned by an open
//! file description). Always dumped and restored, exactly: kind, type and byte range.
//!
//! Dump reads the `lock:` lines of /proc/PID/fdinfo/N, which list the locks held through that
//! open file description. Restore takes them again: flock and OFD locks on the description, in
//! the process that creates it (before it forks the others that share it); POSIX locks in the
//! owning process once its fds are in place. A process blocked waiting for a lock is simply in
//! an interrupted fcntl/flock call: the kernel restarts it after restore and it waits again.
//!
//! A lock that cannot be taken again (someone outside took a conflicting one meanwhile) fails
//! the restore, naming the file, the range and the conflicting owner.

use anyhow::{Context, Result, bail};

use super::RestoreCtx;
use crate::image::proto::{FileLock, file_lock::Kind as LockKind};

/// One `lock:` line of fdinfo (or a line of /proc/locks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockLine {
    pub kind: String,
    pub lock_type: String,
    pub pid: i64,
    pub dev_ino: String,
    pub start: u64,
    /// None: to the end of the file.
    pub end: Option<u64>,
    /// A request blocked behind another lock ("->" in /proc/locks).
    pub waiting: bool,
}

/// Parses "1: POSIX  ADVISORY  WRITE 16312 fe:00:10010687 5 14" (also "1: -> FLOCK ...").
pub fn parse_line(line: &str) -> Option<LockLine> {
    let mut f = line.split_whitespace().skip(1).peekable();
    let waiting = f.peek() == Some(&"->");
    if waiting {
        f.next();
    }
    let kind = f.next()?.to_string();
    let _mode = f.next()?; // ADVISORY / MANDATORY / ACTIVE / BREAKING...
    let lock_type = f.next()?.to_string();
    let pid = f.next()?.parse().ok()?;
    let dev_ino = f.next()?.to_string();
    let start = f.next()?.parse().ok()?;
    let end = match f.next()? {
        "EOF" => None,
        n => Some(n.parse().ok()?),
    };
    Some(LockLine { kind, lock_type, pid, dev_ino, start, end, waiting })
}

/// The locks held through one fd, from its fdinfo text.
pub fn fdinfo_locks(fdinfo: &str) -> Vec<LockLine> {
    fdinfo.lines().filter_map(|l| l.strip_prefix("lock:")).filter_map(|l| parse_line(l.trim())).collect()
}

/// The image record of a granted flock, OFD or POSIX lock.
pub fn record(line: &LockLine) -> Result<FileLock> {
    let kind = match line.kind.as_str() {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        other => bail!("lock of kind {other} cannot be checkpointed by crust yet"),
    };
    let write = match line.lock_type.as_str() {
        "WRITE" => true,
        "READ" => false,
        other => bail!("{} lock of type {other} cannot be checkpointed", line.kind),
    };
    let mut lock = FileLock { write, start: line.start, length: line.end.map(|e| e - line.start + 1).unwrap_or(0), ..Default::default() };
    lock.set_kind(kind);
    Ok(lock)
}

/// `struct flock` for x86_64: l_type, l_whence, l_start, l_len, l_pid.
fn flock_struct(lock_type: i16, start: u64, len: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..2].copy_from_slice(&lock_type.to_ne_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
    b[8..16].copy_from_slice(&start.to_ne_bytes());
    b[16..24].copy_from_slice(&len.to_ne_bytes());
    b
}

fn describe(lock: &FileLock) -> String {
    let range = if lock.length == 0 { format!("{}..EOF", lock.start) } else { format!("{}..{}", lock.start, lock.start + lock.length - 1) };
    format!("{:?} {} lock on bytes {range}", lock.kind(), if lock.write { "write" } else { "read" })
}

/// Takes `lock` again through `fd` of the process, without waiting. On a conflict, names the
/// process holding the conflicting lock (F_GETLK / F_OFD_GETLK).
pub fn take(ctx: &mut RestoreCtx, fd: i32, lock: &FileLock, file: &str) -> Result<()> {
    let r = &mut *ctx.remote;
    let lock_type = if lock.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    let result = match lock.kind() {
        LockKind::Flock => {
            let op = if lock.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
            r.syscall("flock", libc::SYS_flock, &[fd as u64, op as u64]).map(drop)
        }
        LockKind::Posix | LockKind::Ofd => {
            let (set, get) = match lock.kind() {
                LockKind::Posix => (libc::F_SETLK, libc::F_GETLK),
                _ => (libc::F_OFD_SETLK, libc::F_OFD_GETLK),
            };
            let addr = r.put(0, &flock_struct(lock_type, lock.start, lock.length))?;
            match r.syscall("fcntl(F_SETLK)", libc::SYS_fcntl, &[fd as u64, set as u64, addr]) {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Who is in the way?
                    let addr = r.put(0, &flock_struct(lock_type, lock.start, lock.length))?;
                    let owner = r
                        .syscall("fcntl(F_GETLK)", libc::SYS_fcntl, &[fd as u64, get as u64, addr])
                        .ok()
                        .and_then(|_| {
                            let mut b = [0u8; 32];
                            r.get(0, &mut b).ok()?;
                            Some(i32::from_ne_bytes(b[24..28].try_into().unwrap()))
                        });
                    return Err(anyhow::Error::from(e)).with_context(|| {
                        format!(
                            "taking again the {} of {file}: {}",
                            describe(lock),
                            match owner {
                                Some(-1) => "an OFD lock of another open file description conflicts".to_string(),
                                Some(pid) if pid > 0 => format!("process {pid} holds a conflicting lock"),
                                _ => "a conflicting lock is held".to_string(),
                            }
                        )
                    });
                }
            }
        }
    };
    result.with_context(|| format!("taking again the {} of {file}", describe(lock)))
}

/// Locks and waits of processes outside the tree on the files the tree holds locks on, as
/// "pid P holds/waits for KIND TYPE lock on DEV:INODE" lines.
pub fn outsiders(locked: &std::collections::BTreeSet<String>, tree: &[i32]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/locks").context("reading /proc/locks")?;
    Ok(text
        .lines()
        .filter_map(parse_line)
        .filter(|l| locked.contains(&l.dev_ino) && l.pid > 0 && !tree.contains(&(l.pid as i32)))
        .map(|l| {
            let what = if l.waiting { "waits for" } else { "holds" };
            format!("pid {} {what} a {} {} lock on {}", l.pid, l.kind, l.lock_type, l.dev_ino)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks_lines() {
        let l = parse_line("1: POSIX  ADVISORY  WRITE 16312 fe:00:10010687 5 14").unwrap();
        assert_eq!((l.kind.as_str(), l.lock_type.as_str(), l.pid, l.start, l.end, l.waiting), ("POSIX", "WRITE", 16312, 5, Some(14), false));
        let w = parse_line("2: -> FLOCK  ADVISORY  READ 7 fe:00:12 0 EOF").unwrap();
        assert_eq!((w.kind.as_str(), w.end, w.waiting), ("FLOCK", None, true));
        let ofd = parse_line("3: OFDLCK ADVISORY  READ -1 00:2d:5 0 99").unwrap();
        assert_eq!(record(&ofd).unwrap().length, 100);
        assert!(record(&parse_line("4: LEASE  ACTIVE    WRITE 9 00:2d:5 0 EOF").unwrap()).is_err());
    }
}
