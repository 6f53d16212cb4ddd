//! Regular files and directories, and O_PATH descriptions of symlinks, opened again by path:
//! the description's flags and offset are restored, and restore checks first that the file is
//! still the one the image names (see `file_check::check_file`). A deleted file or removed
//! directory is recorded as a ghost (`kinds::ghost`: its contents in the image, made again at
//! restore); one of a kernel-internal mount, and anonymous-inode files that look like regular
//! files, are refused.

use std::os::unix::fs::MetadataExt;

use anyhow::{Result, bail};

use super::common::{reopen_flags, seek_to_position};
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{FileIdentity, OpenFile, RegularFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::credentials::{enter_fs_identity, leave_fs_identity};
use crate::kinds::file_check::{FileUse, check_file, file_identity};
use crate::kinds::ghost;

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

/// Whether the file's path (as /proc shows it, from crust's root) names that very file now: a
/// restore opens it again by that path. It does not for a file of a file system mounted
/// nowhere crust can see (a POSIX message queue: mq_open's file system is internal), or one
/// hidden under a mount made since it was opened.
fn reached_by_its_path(src: &FdSource) -> bool {
    std::fs::symlink_metadata(src.link).is_ok_and(|m| (m.dev(), m.ino()) == (src.meta.dev(), src.meta.ino()))
}

/// What a file its path does not reach is, for the refusal (which names the path).
fn unreachable_kind(src: &FdSource) -> &'static str {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    let on_mqueue = nix::sys::statfs::fstatfs(src.copy).is_ok_and(|s| s.filesystem_type().0 == MQUEUE_MAGIC);
    match on_mqueue {
        true => "a POSIX message queue (from mq_open)",
        false => "a file its path no longer reaches (hidden by a later mount, or of a file system crust cannot see)",
    }
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
        if ghost::deleted_path(src.link).is_some() && !ghost::on_visible_mount(src.meta.dev()) {
            return Err(src.refuse("a deleted file of a kernel-internal mount"));
        }
        if src.file_type() == libc::S_IFREG && !src.link.starts_with('/') {
            return Err(src.refuse("an anonymous-inode file"));
        }
        if ghost::deleted_path(src.link).is_none() && !reached_by_its_path(src) {
            return Err(src.refuse(unreachable_kind(src)));
        }
        Ok(())
    }

    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<RegularFile>> {
        Self::refuse_early(src)?;
        let through = format!("/proc/{}/fd/{}", src.pid, src.fd);
        if let Some(path) = ghost::deleted_path(src.link) {
            let who = format!("pid {} fd {}", src.pid, src.fd);
            let ghost_id = state.get::<ghost::GhostTable>().record(src.image, &who, path, &through)?;
            let file = FileIdentity { ghost_id, ..file_identity(path, &through)? };
            return Ok(Dumped::alone(RegularFile { file: Some(file) }));
        }
        Ok(Dumped::alone(RegularFile { file: Some(file_identity(src.link, &through)?) }))
    }

    fn precheck(file: &OpenFile, record: &RegularFile) -> Result<()> {
        let Some(f) = &record.file else { return Ok(()) };
        if f.mode & libc::S_IFMT == libc::S_IFLNK && f.ghost_id == 0 {
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
        match &record.file {
            Some(f) if f.ghost_id != 0 => format!("{} (deleted)", f.path),
            Some(f) => f.path.clone(),
            None => String::new(),
        }
    }
}
