//! The files an image names by path (executables, mapped files, open regular files, FIFOs,
//! devices): their identity at dump time, and the check at restore, before anything is
//! created, that each is still the file the process had. Shared by the memory kind and the fd
//! kinds.

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use crate::image::proto::FileIdentity;

/// Identity of the file behind `path`, taken through `through` (a /proc link to the very file
/// the process has, which may differ from what `path` names now).
pub fn file_identity(path: &str, through: &str) -> Result<FileIdentity> {
    let meta = std::fs::metadata(through).with_context(|| format!("stat {through} ({path})"))?;
    Ok(FileIdentity {
        path: path.to_owned(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        dev: meta.dev(),
        inode: meta.ino(),
        mode: meta.mode(),
        rdev: meta.rdev(),
        ghost_id: 0,
    })
}

/// How strictly a restore compares the code a process ran (`--file-validation`, as in the
/// reference tool).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum CodeValidation {
    /// Size and modification time, as recorded at the dump.
    #[default]
    SizeAndMtime,
    /// Size only (`--file-validation filesize`): a binary whose mtime alone changed is accepted.
    FileSize,
}

/// How a process used a file the image names, for [`check_file`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FileUse {
    /// Its code: the executable, or an executable mapping of a library. A change is refused.
    Code(CodeValidation),
    /// Its data: it may have changed since the dump (a log that grew, a file written in place)
    /// as long as it still holds the first `needed` bytes (what was mapped, or up to an fd's
    /// offset, as far as the file went at the dump).
    Data { needed: u64 },
}

/// Checks a file the image names before anything is created. Refused, naming the file: gone,
/// another kind of file, another file (device or inode changed: a path now leading elsewhere),
/// changed code, or data shorter than what the process used. A data file that only changed
/// gives one warning line and the restore goes on: the process sees it as it is now, as it
/// would have had it gone on running.
pub fn check_file(file: &FileIdentity, what: &str, usage: FileUse) -> Result<()> {
    if file.ghost_id != 0 {
        return Ok(()); // a deleted file: made again from the image (kinds::ghost)
    }
    let meta = std::fs::metadata(&file.path).with_context(|| format!("{what} {} is gone since the dump", file.path))?;
    if meta.mode() & libc::S_IFMT != file.mode & libc::S_IFMT {
        bail!("{what} {} is no longer the same kind of file as at dump time", file.path);
    }
    if (meta.dev(), meta.ino()) != (file.dev, file.inode) {
        bail!(
            "{what} {} is another file now (device {:#x} inode {}; the process had device {:#x} inode {})",
            file.path,
            meta.dev(),
            meta.ino(),
            file.dev,
            file.inode
        );
    }
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    let changed = meta.size() != file.size || mtime_ns != file.mtime_ns;
    match usage {
        FileUse::Code(CodeValidation::FileSize) if meta.size() != file.size => {
            bail!("{what} {} changed size after the dump: the process's code would not be what it ran", file.path)
        }
        FileUse::Code(CodeValidation::SizeAndMtime) if changed => {
            bail!("{what} {} was modified after the dump: the process's code would not be what it ran", file.path)
        }
        FileUse::Data { needed } if meta.size() < needed.min(file.size) => {
            bail!("{what} {} is {} bytes now, shorter than the {} bytes the process used", file.path, meta.size(), needed.min(file.size))
        }
        _ if changed => tracing::warn!(
            "{what} {} changed since the dump ({} bytes then, {} now{}): the restored process sees it as it is now",
            file.path,
            file.size,
            meta.size(),
            if mtime_ns != file.mtime_ns { ", modified" } else { "" }
        ),
        _ => {}
    }
    Ok(())
}
