//! signalfd descriptions: the mask of signals they accept, from fdinfo; O_NONBLOCK is one of the
//! description's status flags. The signals a signalfd reads are the pending signals of the
//! process that reads it, which the signals kind restores. Restore is signalfd4(-1, mask).

use anyhow::{Context, Result};

use super::common::set_status_flags;
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{OpenFile, SignalFd, open_file};
use crate::kinds::RestoreCtx;

pub struct Signalfds;

impl FdKind for Signalfds {
    type Record = SignalFd;
    const NAME: &'static str = "signalfd";

    fn record_of(kind: &open_file::Kind) -> Option<&SignalFd> {
        match kind {
            open_file::Kind::Signalfd(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: SignalFd) -> open_file::Kind {
        open_file::Kind::Signalfd(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:[signalfd]"
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<SignalFd>> {
        dump(src).map(Dumped::alone)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &SignalFd, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record)
    }

    fn describe(_record: &SignalFd) -> String {
        "signalfd".into()
    }
}

fn dump(src: &FdSource) -> Result<SignalFd> {
    let mask =
        src.fdinfo_field("sigmask:").with_context(|| format!("pid {} fd {}: signalfd without sigmask in fdinfo", src.pid, src.fd))?;
    let mask = u64::from_str_radix(mask, 16).with_context(|| format!("pid {} fd {}: signalfd sigmask {mask:?}", src.pid, src.fd))?;
    Ok(SignalFd { mask })
}

fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &SignalFd) -> Result<i32> {
    let flags = libc::SFD_CLOEXEC as u64 | (file.flags as u64 & libc::O_NONBLOCK as u64);
    let mask = ctx.remote.put(0, &record.mask.to_ne_bytes())?;
    let fd = ctx
        .remote
        .syscall("signalfd4", libc::SYS_signalfd4, &[u64::MAX, mask, 8, flags])
        .with_context(|| format!("creating a signalfd for mask {:#x}", record.mask))?;
    let fd = ctx.to_temp_fd(fd)?;
    set_status_flags(ctx, fd, file.flags)?;
    Ok(fd)
}
