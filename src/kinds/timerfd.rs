//! timerfd descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::FdSource;
use crate::image::proto::{TimerFd, OpenFile};

pub fn dump(src: &FdSource) -> Result<TimerFd> {
    Err(src.refuse("timerfd"))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &TimerFd) -> Result<i32> {
    bail!("open file #{}: timerfd descriptions cannot be restored by this crust", file.id)
}
