//! signalfd descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::FdSource;
use crate::image::proto::{SignalFd, OpenFile};

pub fn dump(src: &FdSource) -> Result<SignalFd> {
    Err(src.refuse("signalfd"))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &SignalFd) -> Result<i32> {
    bail!("open file #{}: signalfd descriptions cannot be restored by this crust", file.id)
}
