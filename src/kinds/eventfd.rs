//! eventfd descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::FdSource;
use crate::image::proto::{EventFd, OpenFile};

pub fn dump(src: &FdSource) -> Result<EventFd> {
    Err(src.refuse("eventfd"))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &EventFd) -> Result<i32> {
    bail!("open file #{}: eventfd descriptions cannot be restored by this crust", file.id)
}
