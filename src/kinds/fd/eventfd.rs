//! eventfd descriptions: the counter and EFD_SEMAPHORE, read from fdinfo; O_NONBLOCK is one of
//! the description's status flags. Restore creates the eventfd with eventfd2 inside the
//! process; eventfd2 takes an unsigned int, so a larger counter is written into a fresh eventfd
//! with write(2) (an eventfd counter holds up to 2^64 - 2, and a write to a zero counter never
//! blocks).

use anyhow::{Context, Result, bail};

use super::common::set_status_flags;
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{EventFd, OpenFile, open_file};
use crate::kinds::RestoreCtx;

pub struct Eventfds;

impl FdKind for Eventfds {
    type Record = EventFd;
    const NAME: &'static str = "eventfd";

    fn record_of(kind: &open_file::Kind) -> Option<&EventFd> {
        match kind {
            open_file::Kind::Eventfd(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: EventFd) -> open_file::Kind {
        open_file::Kind::Eventfd(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:[eventfd]"
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<EventFd>> {
        dump(src).map(Dumped::alone)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &EventFd, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record)
    }

    fn describe(_record: &EventFd) -> String {
        "eventfd".into()
    }
}

fn dump(src: &FdSource) -> Result<EventFd> {
    let count = src
        .fdinfo_field("eventfd-count:")
        .with_context(|| format!("pid {} fd {}: eventfd without eventfd-count in fdinfo", src.pid, src.fd))?;
    let count = u64::from_str_radix(count, 16).with_context(|| format!("pid {} fd {}: eventfd-count {count:?}", src.pid, src.fd))?;
    // Linux 6.6 and later show the mode; without it an eventfd cannot be told from a semaphore.
    let semaphore = match src.fdinfo_field("eventfd-semaphore:") {
        Some("1") => true,
        Some("0") => false,
        _ => return Err(src.refuse("an eventfd whose EFD_SEMAPHORE mode this kernel does not show")),
    };
    Ok(EventFd { count, semaphore })
}

fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &EventFd) -> Result<i32> {
    if record.count == u64::MAX {
        bail!("eventfd counter {:#x} is beyond the largest value an eventfd holds", record.count);
    }
    let mut flags = libc::EFD_CLOEXEC as u64 | (file.flags as u64 & libc::O_NONBLOCK as u64);
    if record.semaphore {
        flags |= libc::EFD_SEMAPHORE as u64;
    }
    let initial = u32::try_from(record.count).unwrap_or(0);
    let fd = ctx.remote.syscall("eventfd2", libc::SYS_eventfd2, &[initial as u64, flags])?;
    let fd = ctx.to_temp_fd(fd)?;
    if initial as u64 != record.count {
        let addr = ctx.remote.put(0, &record.count.to_ne_bytes())?;
        let n = ctx
            .remote
            .syscall("write(eventfd)", libc::SYS_write, &[fd as u64, addr, 8])
            .with_context(|| format!("setting the eventfd counter to {:#x}", record.count))?;
        if n != 8 {
            bail!("write of the eventfd counter wrote {n} of 8 bytes");
        }
    }
    set_status_flags(ctx, fd, file.flags)?;
    Ok(fd)
}
