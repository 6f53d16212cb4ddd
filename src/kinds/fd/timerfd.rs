//! timerfd descriptions: clock, settime flags, time to the next expiration, period and the
//! expirations not yet read.
//!
//! Dump first calls timerfd_gettime on crust's copy: an expired periodic timer is only brought
//! up to date lazily (on read or gettime), and until then fdinfo shows one tick and no time
//! left. gettime adds the periods missed to the ticks and re-arms it, as the owner's next read
//! would; fdinfo then shows ticks and time left consistently.
//!
//! Restore: timerfd_create(clock), timerfd_settime with the time that was left (relative
//! timers: the time the process did not exist does not count) or with the same absolute
//! expiration (TFD_TIMER_ABSTIME: a moment that passed meanwhile makes it expire at once, and
//! the kernel counts the missed periods), then the unread ticks with TFD_IOC_SET_TICKS (which
//! needs CONFIG_CHECKPOINT_RESTORE).

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::common::set_status_flags;
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{OpenFile, TimerFd, open_file};
use crate::kinds::RestoreCtx;

pub struct Timerfds;

impl FdKind for Timerfds {
    type Record = TimerFd;
    const NAME: &'static str = "timerfd";

    fn record_of(kind: &open_file::Kind) -> Option<&TimerFd> {
        match kind {
            open_file::Kind::Timerfd(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: TimerFd) -> open_file::Kind {
        open_file::Kind::Timerfd(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:[timerfd]"
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<TimerFd>> {
        dump(src).map(Dumped::alone)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &TimerFd, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record)
    }

    fn describe(_record: &TimerFd) -> String {
        "timerfd".into()
    }
}

/// _IOW('T', 0, u64)
const TFD_IOC_SET_TICKS: u64 = (1 << 30) | (8 << 16) | ((b'T' as u64) << 8);
const NS: u64 = 1_000_000_000;

/// The timerfd lines of fdinfo.
#[derive(Debug, PartialEq)]
struct Shown {
    clock_id: i32,
    ticks: u64,
    settime_flags: i32,
    value_ns: u64,
    interval_ns: u64,
}

fn parse_fdinfo(text: &str) -> Result<Shown> {
    let field =
        |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).with_context(|| format!("timerfd fdinfo without {key}"));
    let pair = |key: &str| -> Result<u64> {
        let v = field(key)?;
        let (s, ns) = v.trim_matches(['(', ')']).split_once(',').with_context(|| format!("timerfd fdinfo {key} {v:?}"))?;
        Ok(s.trim().parse::<u64>()? * NS + ns.trim().parse::<u64>()?)
    };
    Ok(Shown {
        clock_id: field("clockid:")?.parse()?,
        ticks: field("ticks:")?.parse()?,
        settime_flags: i32::from_str_radix(field("settime flags:")?, 8)?,
        value_ns: pair("it_value:")?,
        interval_ns: pair("it_interval:")?,
    })
}

fn clock_now_ns(clock_id: i32) -> Result<u64> {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::from_raw(clock_id)).with_context(|| format!("clock_gettime of clock {clock_id}"))?;
    Ok(now.tv_sec() as u64 * NS + now.tv_nsec() as u64)
}

fn dump(src: &FdSource) -> Result<TimerFd> {
    let what = || format!("pid {} fd {}: timerfd", src.pid, src.fd);
    let own_fdinfo = format!("/proc/self/fdinfo/{}", src.copy.as_raw_fd());
    for _ in 0..1000 {
        let (value, _) = crate::sys::timerfd_gettime(src.copy.as_fd()).with_context(what)?;
        let shown = parse_fdinfo(&std::fs::read_to_string(&own_fdinfo)?).with_context(what)?;
        let now = clock_now_ns(shown.clock_id).with_context(what)?;
        if value != 0 && shown.value_ns == 0 {
            // It expired again between the two reads and waits to be brought up to date.
            continue;
        }
        let absolute = shown.settime_flags & libc::TFD_TIMER_ABSTIME != 0 && shown.value_ns != 0;
        return Ok(TimerFd {
            clock_id: shown.clock_id,
            ticks: shown.ticks,
            settime_flags: shown.settime_flags,
            value_ns: shown.value_ns,
            interval_ns: shown.interval_ns,
            absolute_ns: if absolute { now + shown.value_ns } else { 0 },
        });
    }
    bail!("{}: its period is too short to read a consistent state", what())
}

fn open(ctx: &mut RestoreCtx, file: &OpenFile, t: &TimerFd) -> Result<i32> {
    let create_flags = libc::TFD_CLOEXEC as u64 | (file.flags as u64 & libc::O_NONBLOCK as u64);
    let fd = ctx
        .remote
        .syscall("timerfd_create", libc::SYS_timerfd_create, &[t.clock_id as u64, create_flags])
        .with_context(|| format!("creating a timerfd on clock {}", t.clock_id))?;
    let fd = ctx.to_temp_fd(fd)?;
    set_status_flags(ctx, fd, file.flags)?;
    let armed = t.value_ns != 0;
    if armed || t.interval_ns != 0 || t.settime_flags != 0 {
        let value = match (armed, t.settime_flags & libc::TFD_TIMER_ABSTIME != 0) {
            (false, _) => 0,
            (true, true) => t.absolute_ns,
            (true, false) => t.value_ns,
        };
        let mut spec = Vec::with_capacity(32);
        for v in [t.interval_ns / NS, t.interval_ns % NS, value / NS, value % NS] {
            spec.extend_from_slice(&v.to_ne_bytes());
        }
        let addr = ctx.remote.put(0, &spec)?;
        ctx.remote
            .syscall("timerfd_settime", libc::SYS_timerfd_settime, &[fd as u64, t.settime_flags as u64, addr, 0])
            .with_context(|| format!("arming the timerfd ({} ns left, period {} ns)", t.value_ns, t.interval_ns))?;
    }
    if t.ticks != 0 {
        set_ticks(ctx, fd, t.ticks)?;
        if armed {
            keep_expiration_during_restore(ctx, fd, t.ticks)?;
        }
    }
    Ok(fd)
}

fn set_ticks(ctx: &mut RestoreCtx, fd: i32, ticks: u64) -> Result<()> {
    let addr = ctx.remote.put(0, &ticks.to_ne_bytes())?;
    ctx.remote
        .syscall("ioctl(TFD_IOC_SET_TICKS)", libc::SYS_ioctl, &[fd as u64, TFD_IOC_SET_TICKS, addr])
        .with_context(|| format!("giving the timerfd its {ticks} unread expirations"))?;
    Ok(())
}

/// TFD_IOC_SET_TICKS replaces the count: an expiration between timerfd_settime and the ioctl
/// would be lost. After an expiration the timer stays expired (no time left, one tick added)
/// until someone reads it, and nobody does before the process runs, so one look tells: expired,
/// and the count is still what the ioctl set, means the expiration came first.
fn keep_expiration_during_restore(ctx: &mut RestoreCtx, fd: i32, ticks: u64) -> Result<()> {
    let path = format!("/proc/{}/fdinfo/{fd}", ctx.pid);
    let shown = parse_fdinfo(&std::fs::read_to_string(&path)?)?;
    if shown.value_ns != 0 {
        return Ok(());
    }
    // Due: give the timer interrupt a moment to count it, if it has not yet.
    std::thread::sleep(Duration::from_millis(2));
    let shown = parse_fdinfo(&std::fs::read_to_string(&path)?)?;
    if shown.ticks == ticks {
        tracing::debug!(fd, ticks, "timerfd expired during its restore: one more tick");
        set_ticks(ctx, fd, ticks + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_is_parsed() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nclockid: 0\nticks: 3\nsettime flags: 03\n\
                    it_value: (99, 482428880)\nit_interval: (1, 500)\n";
        assert_eq!(
            parse_fdinfo(text).unwrap(),
            Shown { clock_id: 0, ticks: 3, settime_flags: 3, value_ns: 99 * NS + 482428880, interval_ns: NS + 500 }
        );
    }

    #[test]
    fn set_ticks_request_number() {
        assert_eq!(TFD_IOC_SET_TICKS, 0x4008_5400);
    }
}
