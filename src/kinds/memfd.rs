//! memfd descriptions. Not supported yet: dump refuses them by pid and fd.

use anyhow::{Result, bail};

use super::RestoreCtx;
use super::files::FdSource;
use crate::image::proto::{Memfd, OpenFile};

pub fn dump(src: &FdSource) -> Result<Memfd> {
    Err(src.refuse("memfd"))
}

pub fn open(_ctx: &mut RestoreCtx, file: &OpenFile, _record: &Memfd) -> Result<i32> {
    bail!("open file #{}: memfd descriptions cannot be restored by this crust", file.id)
}
