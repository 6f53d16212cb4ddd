//! crust's record of the lease breaks it started again at restore.
//!
//! Without tracefs, a dump learns how long a break has left from a blocked breaker's wait,
//! which is right only when that breaker started the break. After a restore, the breakers
//! joined a break crust started, with a deadline crust chose: a later dump without tracefs
//! reads that deadline back from here. One small file per restarted break, under
//! /run/crust/lease-breaks (tmpfs: gone at reboot, like the breaks), removed once its deadline
//! is over.
//!
//! A record names the inode, the kind of break and the restored processes holding the leased
//! description (pid and start time: an inode number and a pid are both reused). A dump uses it
//! only for a break of that kind on that inode, held by one of those very processes, in
//! progress at the freeze, and not yet past the recorded deadline. (If the holder ended that
//! break early and a new one of the same kind began before the recorded deadline, the record
//! is wrong: only tracefs can tell. This is documented in docs/file-leases.md.)

use std::path::PathBuf;
use std::time::Duration;

use super::break_time::RUN_DIR;

/// CLOCK_MONOTONIC, the clock of the kernel's jiffies and of /proc/timer_list's "now".
pub fn mono_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// One restarted break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredBreak {
    /// When crust started it (CLOCK_MONOTONIC).
    pub started: Duration,
    /// The deadline crust gave the kernel (CLOCK_MONOTONIC).
    pub deadline: Duration,
}

/// A process, told apart from a later one with the same pid: (pid, start time in clock ticks
/// after boot, field 22 of /proc/PID/stat).
pub type ProcessId = (u32, u64);

/// The identity of a live process.
pub fn process_id(pid: u32) -> Option<ProcessId> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(22 - 3)?.parse().ok()?;
    Some((pid, start))
}

fn dir() -> PathBuf {
    PathBuf::from(RUN_DIR).join("lease-breaks")
}

fn file(dev: u64, ino: u64, to_unlock: bool) -> PathBuf {
    dir().join(format!("{dev}-{ino}-{}", if to_unlock { "unlock" } else { "downgrade" }))
}

/// Writes the record of a break just started (best effort: a failure only costs a later dump
/// without tracefs its precision, and is logged). Returns its path, to be removed if the
/// restore fails.
pub fn record(dev: u64, ino: u64, to_unlock: bool, b: RestoredBreak, holders: &[ProcessId]) -> Option<PathBuf> {
    forget_expired();
    let holders: Vec<String> = holders.iter().map(|(pid, start)| format!("{pid}:{start}")).collect();
    let text = format!("started_ns={} deadline_ns={} holders={}\n", b.started.as_nanos(), b.deadline.as_nanos(), holders.join(","));
    let path = file(dev, ino, to_unlock);
    match std::fs::create_dir_all(dir()).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!("cannot record the restarted lease break in {}: {e}", path.display());
            None
        }
    }
}

/// The record of a break of this kind on this inode, held by `holder`, that was running at `at`.
pub fn find(dev: u64, ino: u64, to_unlock: bool, at: Duration, holder: u32) -> Option<RestoredBreak> {
    let text = std::fs::read_to_string(file(dev, ino, to_unlock)).ok()?;
    let b = parse(&text)?;
    let holder = process_id(holder)?;
    let held = holders(&text).contains(&holder);
    (held && b.started <= at && at <= b.deadline).then_some(b)
}

fn holders(text: &str) -> Vec<ProcessId> {
    let Some(list) = text.split_whitespace().find_map(|t| t.strip_prefix("holders=")) else { return Vec::new() };
    list.split(',')
        .filter_map(|h| {
            let (pid, start) = h.split_once(':')?;
            Some((pid.parse().ok()?, start.parse().ok()?))
        })
        .collect()
}

fn parse(text: &str) -> Option<RestoredBreak> {
    let field = |key: &str| -> Option<Duration> {
        let v = text.split_whitespace().find_map(|t| t.strip_prefix(key)?.strip_prefix('='))?;
        Some(Duration::from_nanos(v.parse().ok()?))
    };
    Some(RestoredBreak { started: field("started_ns")?, deadline: field("deadline_ns")? })
}

fn forget_expired() {
    let Ok(entries) = std::fs::read_dir(dir()) else { return };
    let now = mono_now();
    for e in entries.flatten() {
        let stale = std::fs::read_to_string(e.path()).ok().and_then(|t| parse(&t)).is_none_or(|b| b.deadline < now);
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_own_records() {
        let b = parse("started_ns=5 deadline_ns=2000000005\n").unwrap();
        assert_eq!(b, RestoredBreak { started: Duration::from_nanos(5), deadline: Duration::from_nanos(2_000_000_005) });
        assert!(parse("started_ns=5\n").is_none());
        assert_eq!(holders("started_ns=5 deadline_ns=6 holders=10:77,11:78\n"), [(10, 77), (11, 78)]);
        assert_eq!(holders("started_ns=5 deadline_ns=6 holders=\n"), []);
        let me = process_id(std::process::id()).unwrap();
        assert_eq!(me.0, std::process::id());
        assert!(me.1 > 0);
        assert!(parse("garbage").is_none());
    }
}
