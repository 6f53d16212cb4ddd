//! Character devices that hold no state (/dev/null, /dev/zero, /dev/full, /dev/random,
//! /dev/urandom): reopening them by path is a faithful restore. Any other device is refused
//! (terminals are their own kind, see `tty`).

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::common::{reopen_flags, seek_to_position};
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{CharDevice, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::file_check::file_identity;

/// Character devices that hold no state.
const STATELESS_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

pub struct CharDevices;

impl FdKind for CharDevices {
    type Record = CharDevice;
    const NAME: &'static str = "character device";

    fn record_of(kind: &open_file::Kind) -> Option<&CharDevice> {
        match kind {
            open_file::Kind::CharDevice(c) => Some(c),
            _ => None,
        }
    }

    fn into_kind(record: CharDevice) -> open_file::Kind {
        open_file::Kind::CharDevice(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFCHR
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        if !STATELESS_DEVICES.contains(&src.link) {
            return Err(src.refuse("a character device with state (terminal or other device)"));
        }
        Ok(())
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<CharDevice>> {
        Self::refuse_early(src)?;
        let through = format!("/proc/{}/fd/{}", src.pid, src.fd);
        Ok(Dumped::alone(CharDevice { file: Some(file_identity(src.link, &through)?) }))
    }

    fn precheck(_file: &OpenFile, record: &CharDevice) -> Result<()> {
        let Some(f) = &record.file else { return Ok(()) };
        let meta = std::fs::metadata(&f.path).with_context(|| format!("device {} is gone", f.path))?;
        if meta.rdev() != f.rdev {
            bail!("device {} is no longer the same device", f.path);
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &CharDevice, _together: &mut Together) -> Result<i32> {
        let Some(f) = &record.file else { bail!("open file record without a file") };
        // A stateless device: any node of the same device number will do.
        let fd = ctx.open_in_process_no_symlinks(&f.path, reopen_flags(file))?;
        seek_to_position(ctx, fd, file, f)?;
        Ok(fd)
    }

    fn describe(record: &CharDevice) -> String {
        record.file.as_ref().map(|f| f.path.clone()).unwrap_or_default()
    }
}
