//! Regular files and directories, and O_PATH descriptions of symlinks, opened again by path:
//! the description's flags and offset are restored, and restore checks first that the file is
//! still the one the image names (see `file_check::check_file`). Deleted files and
//! anonymous-inode files that look like regular files are refused.

use anyhow::{Result, bail};

use super::common::{reopen_flags, seek_to_position};
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{OpenFile, RegularFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::credentials::{enter_fs_identity, leave_fs_identity};
use crate::kinds::file_check::{FileUse, check_file, file_identity};

pub struct RegularFiles;

fn is_o_path(src: &FdSource) -> bool {
    let flags = src.fdinfo_field("flags:").and_then(|f| u32::from_str_radix(f, 8).ok()).unwrap_or(0);
    flags & libc::O_PATH as u32 != 0
}

/// A symlink an O_PATH description held must still be that very link (not followed).
fn check_symlink(f: &crate::image::proto::FileIdentity) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&f.path).map_err(|e| anyhow::anyhow!("symlink {} is gone since the dump ({e})", f.path))?;
    if !meta.file_type().is_symlink() || (meta.dev(), meta.ino()) != (f.dev, f.inode) {
        bail!("symlink {} is another file now (the process held the link itself, device {:#x} inode {})", f.path, f.dev, f.inode);
    }
    Ok(())
}

impl FdKind for RegularFiles {
    type Record = RegularFile;
    const NAME: &'static str = "regular file";

    fn record_of(kind: &open_file::Kind) -> Option<&RegularFile> {
        match kind {
            open_file::Kind::Regular(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: RegularFile) -> open_file::Kind {
        open_file::Kind::Regular(record)
    }

    fn recognises(src: &FdSource) -> bool {
        match src.file_type() {
            libc::S_IFREG | libc::S_IFDIR => true,
            // open(O_PATH | O_NOFOLLOW) of a symlink: a description of the link itself.
            libc::S_IFLNK => is_o_path(src),
            _ => false,
        }
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        if src.file_type() == libc::S_IFREG {
            if src.link.ends_with(" (deleted)") {
                return Err(src.refuse("a deleted file"));
            }
            if !src.link.starts_with('/') {
                return Err(src.refuse("an anonymous-inode file"));
            }
        }
        Ok(())
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<RegularFile>> {
        Self::refuse_early(src)?;
        let link = src.link;
        let through = format!("/proc/{}/fd/{}", src.pid, src.fd);
        Ok(Dumped::alone(RegularFile { file: Some(file_identity(link, &through)?) }))
    }

    fn precheck(file: &OpenFile, record: &RegularFile) -> Result<()> {
        let Some(f) = &record.file else { return Ok(()) };
        if f.mode & libc::S_IFMT == libc::S_IFLNK {
            return check_symlink(f).map_err(|e| e.context(format!("open file #{}", file.id)));
        }
        if f.mode & libc::S_IFMT == libc::S_IFREG {
            // An O_APPEND description writes at the end whatever its offset (a log truncated by
            // its rotation is fine); any other must still reach its offset.
            let append = file.flags & libc::O_APPEND as u32 != 0;
            let usage = FileUse::Data { needed: if append { 0 } else { file.position } };
            check_file(f, "open file", usage).map_err(|e| e.context(format!("open file #{}", file.id)))?;
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &RegularFile, _together: &mut Together) -> Result<i32> {
        let Some(f) = &record.file else { bail!("open file record without a file") };
        // The very file the process had, or nothing (a path swapped since the check). From a
        // sealed image, as root: the process held it (it may have opened it before it gave up
        // privileges, as daemons do with their logs); from an image taken on trust
        // (--trust-image), only with the image's credentials.
        if ctx.image_sealed {
            leave_fs_identity(ctx)?;
        }
        let opened = ctx.open_identified(f, reopen_flags(file), "open file");
        if ctx.image_sealed {
            enter_fs_identity(ctx)?;
        }
        let fd = opened?;
        seek_to_position(ctx, fd, file, f)?;
        Ok(fd)
    }

    fn describe(record: &RegularFile) -> String {
        record.file.as_ref().map(|f| f.path.clone()).unwrap_or_default()
    }
}
