//! fifo descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::{FdSource, Together};
use crate::image::proto::{Fifo, OpenFile};

/// Returns the record and its created_with group.
pub fn dump(src: &FdSource) -> Result<(Fifo, u64)> {
    Err(src.refuse(if "fifo" == "fifo" { "a named FIFO" } else { "a socket" }))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &Fifo, _together: &mut Together) -> Result<i32> {
    bail!("open file #{}: fifo descriptions cannot be restored by this crust", file.id)
}
