//! inotify descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::FdSource;
use crate::image::proto::{Inotify, OpenFile};

pub fn dump(src: &FdSource) -> Result<Inotify> {
    Err(src.refuse("inotify"))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &Inotify) -> Result<i32> {
    bail!("open file #{}: inotify descriptions cannot be restored by this crust", file.id)
}
