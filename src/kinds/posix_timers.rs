//! POSIX timers (timer_create): clock, notification (signal, none, or a signal to one thread),
//! signal value, interval and time left, with their ids.
//!
//! Dump reads the list from /proc/PID/timers and asks the process itself (timer_gettime and
//! timer_getoverrun are per-process calls) for each timer's times. Restore creates each timer
//! with its own id: prctl(PR_TIMER_CREATE_RESTORE_IDS) makes timer_create take the id it is
//! given, then arms it with the time it had left, last, once every thread of the
//! process exists (a SIGEV_THREAD_ID timer names one).
//!
//! Not restorable, refused by pid and timer id: an overrun count of the last expiration
//! delivered (timer_getoverrun != 0), which no call can set again.

use anyhow::{Context, Result, bail};

use super::{DumpCtx, RestoreCtx, scratch_u64};
use crate::image::proto::PosixTimer;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

/// One timer as /proc/PID/timers lists it.
#[derive(Debug, Default, PartialEq)]
struct Listed {
    id: i32,
    signal: i32,
    value: u64,
    notify: i32,
    target: i32,
    clock_id: i32,
}

/// Parses /proc/PID/timers: blocks of "ID:", "signal: N/VALUE", "notify: KIND/pid.N" or
/// "KIND/tid.N", "ClockID:".
fn parse_timers(text: &str) -> Result<Vec<Listed>> {
    let mut timers: Vec<Listed> = Vec::new();
    for line in text.lines() {
        let (key, value) = line.split_once(':').with_context(|| format!("unexpected line {line:?}"))?;
        let value = value.trim();
        if key == "ID" {
            timers.push(Listed { id: value.parse()?, ..Default::default() });
            continue;
        }
        let t = timers.last_mut().with_context(|| format!("{line:?} before any ID"))?;
        match key {
            "signal" => {
                let (sig, val) = value.split_once('/').with_context(|| format!("signal field {value:?}"))?;
                t.signal = sig.parse()?;
                t.value = u64::from_str_radix(val, 16)?;
            }
            "notify" => {
                let (kind, target) = value.split_once('/').with_context(|| format!("notify field {value:?}"))?;
                let (scope, id) = target.split_once('.').with_context(|| format!("notify target {target:?}"))?;
                let base = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    other => bail!("timer {}: notification {other:?}", t.id),
                };
                t.notify = if scope == "tid" { base | SIGEV_THREAD_ID } else { base };
                t.target = id.parse()?;
            }
            "ClockID" => t.clock_id = value.parse()?,
            _ => {}
        }
    }
    Ok(timers)
}

fn timespec_ns(raw: &[u8]) -> u64 {
    let sec = u64::from_ne_bytes(raw[..8].try_into().unwrap());
    let nsec = u64::from_ne_bytes(raw[8..16].try_into().unwrap());
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// The POSIX timers of a frozen process.
pub fn dump(ctx: &mut DumpCtx) -> Result<Vec<PosixTimer>> {
    let pid = ctx.pid.as_raw();
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut timers = Vec::new();
    for t in parse_timers(&text).with_context(|| format!("parsing {path}"))? {
        let r = &mut *ctx.remote;
        let out = r.put(0, &[0u8; 32])?;
        r.syscall("timer_gettime", libc::SYS_timer_gettime, &[t.id as u64, out])
            .with_context(|| format!("pid {pid}: timer_gettime of timer {}", t.id))?;
        let mut raw = [0u8; 32];
        r.get(0, &mut raw)?;
        let overrun = r
            .syscall("timer_getoverrun", libc::SYS_timer_getoverrun, &[t.id as u64])
            .with_context(|| format!("pid {pid}: timer_getoverrun of timer {}", t.id))?;
        if overrun != 0 {
            bail!(
                "pid {pid}: POSIX timer {} last expired with an overrun of {overrun} (timer_getoverrun); \
                 crust cannot set an overrun count again",
                t.id
            );
        }
        timers.push(PosixTimer {
            id: t.id,
            clock_id: t.clock_id,
            notify: t.notify,
            signal: t.signal,
            value: t.value,
            thread_id: if t.notify & SIGEV_THREAD_ID != 0 { t.target } else { 0 },
            interval_ns: timespec_ns(&raw[..16]),
            remaining_ns: timespec_ns(&raw[16..]),
        });
    }
    Ok(timers)
}

/// struct sigevent as timer_create reads it (64 bytes on x86-64).
fn sigevent(t: &PosixTimer) -> [u8; 64] {
    let mut sev = [0u8; 64];
    sev[..8].copy_from_slice(&t.value.to_ne_bytes());
    sev[8..12].copy_from_slice(&t.signal.to_ne_bytes());
    sev[12..16].copy_from_slice(&t.notify.to_ne_bytes());
    sev[16..20].copy_from_slice(&t.thread_id.to_ne_bytes());
    sev
}

fn itimerspec(t: &PosixTimer) -> Vec<u8> {
    let mut raw = Vec::with_capacity(32);
    for ns in [t.interval_ns, t.remaining_ns] {
        raw.extend_from_slice(&(ns / 1_000_000_000).to_ne_bytes());
        raw.extend_from_slice(&(ns % 1_000_000_000).to_ne_bytes());
    }
    raw
}

/// Creates every timer with its id, then arms those that were armed. Runs once every thread
/// of the process exists.
pub fn restore(ctx: &mut RestoreCtx, timers: &[PosixTimer]) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    let pid = ctx.pid;
    let r = &mut *ctx.remote;
    r.syscall("prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)", libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0])
        .context("this kernel cannot create a timer with a given id (prctl PR_TIMER_CREATE_RESTORE_IDS)")?;
    // /proc lists the newest first: created oldest first, they are listed as they were.
    for t in timers.iter().rev() {
        let sev = r.put(0, &sigevent(t))?;
        let id_at = r.put(64, &t.id.to_ne_bytes())?;
        r.syscall("timer_create", libc::SYS_timer_create, &[t.clock_id as i64 as u64, sev, id_at])
            .with_context(|| format!("pid {pid}: creating POSIX timer {} (clock {})", t.id, t.clock_id))?;
        let got = scratch_u64(r, 64)? as u32 as i32;
        if got != t.id {
            bail!("pid {pid}: POSIX timer {} was created with id {got}", t.id);
        }
    }
    r.syscall("prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)", libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0])?;
    for t in timers.iter().filter(|t| t.remaining_ns != 0) {
        let spec = r.put(0, &itimerspec(t))?;
        r.syscall("timer_settime", libc::SYS_timer_settime, &[t.id as u64, 0, spec, 0])
            .with_context(|| format!("pid {pid}: arming POSIX timer {}", t.id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_notification_kind() {
        let text = "ID: 3\nsignal: 10/0000000000005151\nnotify: signal/pid.77\nClockID: 1\n\
                    ID: 5\nsignal: 36/0000000000007171\nnotify: signal/tid.78\nClockID: 7\n\
                    ID: 6\nsignal: 14/0000000000000000\nnotify: none/pid.77\nClockID: 0\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(t[0], Listed { id: 3, signal: 10, value: 0x5151, notify: SIGEV_SIGNAL, target: 77, clock_id: 1 });
        assert_eq!(t[1], Listed { id: 5, signal: 36, value: 0x7171, notify: SIGEV_THREAD_ID, target: 78, clock_id: 7 });
        assert_eq!(t[2].notify, SIGEV_NONE);
    }
}
