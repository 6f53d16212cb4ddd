//! epoll descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::FdSource;
use crate::image::proto::{Epoll, Files, OpenFile};

pub fn dump(src: &FdSource) -> Result<Epoll> {
    Err(src.refuse("epoll"))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &Epoll) -> Result<i32> {
    bail!("open file #{}: epoll descriptions cannot be restored by this crust", file.id)
}

/// Registers each restored epoll's targets once every fd of the process is in place.
pub fn register_targets(_ctx: &mut RestoreCtx, _fds: &Files) -> Result<()> {
    Ok(())
}
