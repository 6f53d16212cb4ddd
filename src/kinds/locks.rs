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

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::RestoreCtx;
use crate::image::proto::{FileLock, file_lock::Kind as LockKind};

/// One `lock:` line of fdinfo (or a line of /proc/locks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockLine {
    pub kind: String,
    /// ADVISORY, MANDATORY; for leases ACTIVE, BREAKING or BREAKER.
    pub mode: String,
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
    let mode = f.next()?.to_string();
    let lock_type = f.next()?.to_string();
    let pid = f.next()?.parse().ok()?;
    let dev_ino = f.next()?.to_string();
    let start = f.next()?.parse().ok()?;
    let end = match f.next()? {
        "EOF" => None,
        n => Some(n.parse().ok()?),
    };
    Some(LockLine { kind, mode, lock_type, pid, dev_ino, start, end, waiting })
}

/// The locks held through one fd, from its fdinfo text.
pub fn fdinfo_locks(fdinfo: &str) -> Vec<LockLine> {
    fdinfo.lines().filter_map(|l| l.strip_prefix("lock:")).filter_map(|l| parse_line(l.trim())).collect()
}

/// "MAJ:MIN:INODE" of a file, as /proc/locks and fdinfo write it.
pub fn dev_ino(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{:02x}:{:02x}:{}", libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino())
}

/// What the dump learned about the tree's locks, for the check of processes outside the tree
/// that lock the same files ([`outsiders`]).
#[derive(Default)]
pub struct LockedFiles {
    /// "dev:inode" (as /proc/locks writes it) of every file the tree holds a lock on -> a
    /// path of it, for messages.
    pub paths: BTreeMap<String, String>,
    /// The flock and OFD locks of the tree's open file descriptions, once per description, as
    /// fdinfo shows them. /proc/locks shows the same lines; their pid is whoever took the lock
    /// (-1 for OFD locks), who may have exited or be outside the tree although the lock is
    /// the description's, and the description the tree's.
    pub description_locks: Vec<LockLine>,
}

impl LockedFiles {
    /// Notes a lock line seen in fdinfo of an fd whose link is `path`.
    pub fn insert(&mut self, line: &LockLine, path: &str) {
        self.paths.entry(line.dev_ino.clone()).or_insert_with(|| path.to_string());
    }
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
    if kind == LockKind::Flock && line.pid > 0 {
        lock.taker_pid = line.pid as u32;
    }
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
/// processes holding the conflicting locks (from /proc/locks; for OFD locks, which /proc/locks
/// shows with pid -1, the processes whose descriptions hold them).
pub fn take(ctx: &mut RestoreCtx, fd: i32, lock: &FileLock, file: &str) -> Result<()> {
    let pid = ctx.pid;
    let r = &mut *ctx.remote;
    let lock_type = if lock.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    let result = match lock.kind() {
        LockKind::Flock => {
            let op = if lock.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
            r.syscall("flock", libc::SYS_flock, &[fd as u64, op as u64]).map(drop)
        }
        LockKind::Posix | LockKind::Ofd => {
            let set = if lock.kind() == LockKind::Posix { libc::F_SETLK } else { libc::F_OFD_SETLK };
            let addr = r.put(0, &flock_struct(lock_type, lock.start, lock.length))?;
            r.syscall("fcntl(F_SETLK)", libc::SYS_fcntl, &[fd as u64, set as u64, addr]).map(drop)
        }
    };
    result.map_err(anyhow::Error::from).with_context(|| {
        // Who is in the way? (the file as the restored process has it open)
        let who = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map(|m| conflicting_owners(&dev_ino(&m), lock)).unwrap_or_default();
        let who = if who.is_empty() { "a conflicting lock is held".to_string() } else { who.join("; ") };
        format!("taking again the {} of {file}: {who}", describe(lock))
    })
}

/// Does the granted lock `l` conflict with `lock`? flock locks only meet flock locks, POSIX
/// and OFD locks meet each other; ranges must overlap and one of the two be a write lock.
fn conflicts(l: &LockLine, lock: &FileLock) -> bool {
    let flock_family = |k: &str| k == "FLOCK";
    if l.waiting || flock_family(&l.kind) != (lock.kind() == LockKind::Flock) || !matches!(l.kind.as_str(), "FLOCK" | "POSIX" | "OFDLCK") {
        return false;
    }
    if !lock.write && l.lock_type != "WRITE" {
        return false;
    }
    let end = if lock.length == 0 { u64::MAX } else { lock.start + lock.length - 1 };
    lock.kind() == LockKind::Flock || (l.start <= end && lock.start <= l.end.unwrap_or(u64::MAX))
}

/// "process N (COMM) holds a KIND TYPE lock on bytes S..E" for every granted lock of the file
/// `dev_ino` that conflicts with `lock`.
fn conflicting_owners(dev_ino: &str, lock: &FileLock) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines()
        .filter_map(parse_line)
        .filter(|l| l.dev_ino == dev_ino && conflicts(l, lock))
        .map(|l| {
            let pids = if l.pid > 0 { vec![l.pid as i32] } else { ofd_owners(&l, &[]) };
            format!("{} {}", name_pids(&pids), describe_line(&l, "holds"))
        })
        .collect()
}

/// "process 12 (comm)", "processes 12 (a), 13 (b)", or "a process" when none is known.
fn name_pids(pids: &[i32]) -> String {
    let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim().to_string()).unwrap_or_default();
    match pids {
        [] => "a process".to_string(),
        [p] => format!("process {p} ({})", comm(*p)),
        many => format!("processes {}", many.iter().map(|p| format!("{p} ({})", comm(*p))).collect::<Vec<_>>().join(", ")),
    }
}

/// "holds a POSIX WRITE lock on bytes 0..9" / "waits for ...".
fn describe_line(l: &LockLine, verb: &str) -> String {
    let end = l.end.map(|e| e.to_string()).unwrap_or_else(|| "EOF".to_string());
    let article = if l.kind.starts_with('O') { "an" } else { "a" };
    format!("{verb} {article} {} {} lock on bytes {}..{end}", l.kind, l.lock_type, l.start)
}

/// The processes (other than `except`) behind an OFD lock line, which /proc/locks shows with
/// pid -1: for a granted lock, those with an fd of a description holding it (fdinfo lists the
/// locks of the description under each of its fds); for a blocked request, those blocked in
/// fcntl(F_OFD_SETLKW) on an fd of the file.
fn ofd_owners(l: &LockLine, except: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if except.contains(&pid) {
            continue;
        }
        let found = if l.waiting {
            std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().any(|t| {
                let sc = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                let f: Vec<&str> = sc.split_whitespace().collect();
                let arg = |i: usize| f.get(i).and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
                f.first() == Some(&"72")
                    && arg(2) == Some(libc::F_OFD_SETLKW as u64)
                    && arg(1).is_some_and(|fd| {
                        std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map(|m| dev_ino(&m) == l.dev_ino).unwrap_or(false)
                    })
            })
        } else {
            std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten().any(|f| {
                let info = std::fs::read_to_string(f.path()).unwrap_or_default();
                fdinfo_locks(&info).iter().any(|x| x == l)
            })
        };
        if found {
            out.push(pid);
        }
    }
    out
}

/// Locks and waits of processes outside the tree on the files the tree holds locks on, one
/// "pid P holds/waits for a KIND TYPE lock on bytes S..E of PATH" line each. Called with the
/// tree frozen: its own blocked requests were interrupted and left the queues, so every
/// request still waiting there is someone else's.
pub fn outsiders(locked: &LockedFiles, tree: &[i32]) -> Result<Vec<String>> {
    // Only lines on files the tree locks count. Reading /proc/locks waits for an RCU grace
    // period (see leases::tree_may_hold_a_lease), 5-20 ms of a frozen tree's time: not read
    // for a tree without locks.
    if locked.paths.is_empty() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string("/proc/locks").context("reading /proc/locks")?;
    // The tree's own flock and OFD locks, each to be met once in /proc/locks whatever its pid.
    let mut own = locked.description_locks.clone();
    let mut out = Vec::new();
    for l in text.lines().filter_map(parse_line) {
        // Lease breakers outside the tree are part of the lease story (leases.rs), not a
        // conflict of locks.
        if l.kind == "LEASE" {
            continue;
        }
        let Some(path) = locked.paths.get(&l.dev_ino) else { continue };
        let ours = if l.waiting {
            l.pid > 0 && tree.contains(&(l.pid as i32))
        } else if matches!(l.kind.as_str(), "FLOCK" | "OFDLCK") {
            match own.iter().position(|o| *o == l) {
                Some(i) => {
                    own.remove(i);
                    true
                }
                None => false,
            }
        } else {
            l.pid > 0 && tree.contains(&(l.pid as i32))
        };
        if ours {
            continue;
        }
        let pids = if l.pid > 0 { vec![l.pid as i32] } else { ofd_owners(&l, tree) };
        let who = match pids.as_slice() {
            [] => "an open file description outside the dumped processes".to_string(),
            p => format!("pid {}", p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let verb = if l.waiting { "waits for" } else { "holds" };
        out.push(format!("{who} {} of {path} ({})", describe_line(&l, verb), l.dev_ino));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks_lines() {
        let l = parse_line("1: POSIX  ADVISORY  WRITE 16312 fe:00:10010687 5 14").unwrap();
        assert_eq!(
            (l.kind.as_str(), l.lock_type.as_str(), l.pid, l.start, l.end, l.waiting),
            ("POSIX", "WRITE", 16312, 5, Some(14), false)
        );
        let w = parse_line("2: -> FLOCK  ADVISORY  READ 7 fe:00:12 0 EOF").unwrap();
        assert_eq!((w.kind.as_str(), w.end, w.waiting), ("FLOCK", None, true));
        let ofd = parse_line("3: OFDLCK ADVISORY  READ -1 00:2d:5 0 99").unwrap();
        assert_eq!(record(&ofd).unwrap().length, 100);
        assert!(record(&parse_line("4: LEASE  ACTIVE    WRITE 9 00:2d:5 0 EOF").unwrap()).is_err());
    }

    #[test]
    fn conflicts_follow_kind_family_range_and_type() {
        let lock = |kind, write, start, length| {
            let mut l = FileLock { write, start, length, ..Default::default() };
            l.set_kind(kind);
            l
        };
        let posix_w = parse_line("1: POSIX  ADVISORY  WRITE 7 fe:00:12 5 5").unwrap();
        let ofd_r = parse_line("2: OFDLCK ADVISORY  READ -1 fe:00:12 20 EOF").unwrap();
        let flock_r = parse_line("3: FLOCK  ADVISORY  READ 7 fe:00:12 0 EOF").unwrap();
        // ranges: 0..9 meets 5..5, 6..9 does not; to EOF meets everything after its start
        assert!(conflicts(&posix_w, &lock(LockKind::Posix, false, 0, 10)));
        assert!(!conflicts(&posix_w, &lock(LockKind::Ofd, true, 6, 4)));
        assert!(conflicts(&ofd_r, &lock(LockKind::Posix, true, 1000, 1)));
        assert!(!conflicts(&ofd_r, &lock(LockKind::Ofd, false, 0, 0)), "two read locks");
        // flock locks only meet flock locks
        assert!(!conflicts(&flock_r, &lock(LockKind::Posix, true, 0, 0)));
        assert!(conflicts(&flock_r, &lock(LockKind::Flock, true, 0, 0)));
        assert!(!conflicts(&flock_r, &lock(LockKind::Flock, false, 0, 0)));
        assert!(!conflicts(&posix_w, &lock(LockKind::Flock, true, 0, 0)));
    }
}
