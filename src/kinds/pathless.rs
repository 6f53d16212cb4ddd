//! Mappings backed by an inode that has no path: a memfd ("/memfd:NAME (deleted)" in
//! /proc/PID/maps), mapped shared or private, with or without an fd of it still open, and the
//! ring of an AIO context ("/[aio] (deleted)", see `kinds::aio`).
//!
//! Such an inode cannot be opened again by name, so the mapping refers to an open file
//! description of it instead (`Vma.inode_object_id`): one the fd table recorded already (the
//! memfd is open through some fd of the tree), or else one recorded for the mappings alone
//! from /proc/PID/map_files (a read there does not disturb the memfd). The restore planner
//! counts every process mapping it among the holders of that description, so the nearest
//! common ancestor of all of them creates the inode before forking them; each then maps it
//! through a new open of its working fd (/proc/self/fd/N, read-write for a shared mapping that
//! may be made writable), as the original mapping had its own file.
//!
//! A shared mapping sees the inode's contents (saved with the description); a private one gets
//! the pages the process changed from the page file, like any private file mapping.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, fcntl};

use super::{DumpCtx, RestoreCtx};
use crate::image::proto::{Vma, vma::Kind as VmaKind};

/// F_SEAL_FUTURE_WRITE: no new writable shared mapping (older libc crates lack it).
const F_SEAL_FUTURE_WRITE: i32 = 0x0010;

/// Whether a deleted mapping's path (without " (deleted)") is an inode this module restores.
pub fn recognises(original: &str) -> bool {
    original.starts_with("/memfd:") || super::aio::recognises(original)
}

/// Dump: what the mapping `vma` (a PRIVATE_FILE or SHARED_FILE without a file) is mapped
/// from: an AIO context, or a description of its memfd. Refuses what could not be mapped again.
pub fn dump_mapping(ctx: &mut DumpCtx, vma: &mut Vma) -> Result<()> {
    let original = vma.name.strip_suffix(" (deleted)").unwrap_or(&vma.name);
    if super::aio::recognises(original) && vma.kind() == VmaKind::SharedFile {
        return super::aio::dump(ctx, vma);
    }
    vma.inode_object_id = memfd_mapping(ctx, vma)?;
    Ok(())
}

/// Restore, once every mapping of the process is in place and filled: the AIO contexts, whose
/// rings are moved into their places.
pub fn after_mappings(ctx: &mut RestoreCtx, vmas: &[Vma]) -> Result<()> {
    for vma in vmas.iter().filter(|v| !v.inherited) {
        if let Some(ring) = &vma.aio_ring {
            super::aio::restore(ctx, vma, ring).with_context(|| format!("restoring the AIO context at {:#x} ({})", vma.start, vma.name))?;
        }
    }
    Ok(())
}

/// Whether `vma` is made by [`after_mappings`] rather than mapped like the others.
pub fn made_later(vma: &Vma) -> bool {
    vma.aio_ring.is_some()
}

/// The description id the memfd mapping [vma.start, vma.end) of `pid` refers to, recording one
/// for it if no fd of the tree refers to its inode.
fn memfd_mapping(ctx: &mut DumpCtx, vma: &Vma) -> Result<u32> {
    let pid = ctx.pid.as_raw();
    let (start, end) = (vma.start, vma.end);
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let object = File::open(&path).with_context(|| format!("pid {pid}: opening {path}"))?;
    let meta = object.metadata().with_context(|| format!("pid {pid}: fstat of {path}"))?;
    let name = super::fd::memfd::name_in(&vma.name).unwrap_or(&vma.name).to_owned();
    let shared = vma.kind() == VmaKind::SharedFile;
    let seals = fcntl(object.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0);
    if shared && (vma.prot & libc::PROT_WRITE as u32 != 0 || vma.may_write) && seals & F_SEAL_FUTURE_WRITE != 0 {
        // Mapped writable before F_SEAL_FUTURE_WRITE: the kernel would refuse the mapping now.
        bail!(
            "pid {pid}: mapping {start:#x}-{end:#x} ({}) is a writable shared mapping of a memfd sealed with \
             F_SEAL_FUTURE_WRITE since; crust cannot map it again",
            vma.name
        );
    }
    let image = ctx.image;
    let inside = ctx.open_files.tree_pids.clone();
    let key = (meta.dev(), meta.ino());
    ctx.open_files.mapped_description(pid, key, || {
        // A memfd no fd of the tree holds: checked here, once (those with fds were already).
        let what = format!("pid {pid}: mapping {start:#x}-{end:#x}");
        super::fd::memfd::refuse_if_shared_outside(&what, &name, key.0, key.1, &inside)?;
        super::fd::memfd::record_mapping(image, &object, &name, pid, start, end)
    })
}

/// Restore: a descriptor through which the process maps `vma` again, opened anew from the
/// working fd of its description (`writable` for a shared mapping that may become writable).
pub fn open_for_mapping(ctx: &mut RestoreCtx, vma: &Vma, writable: bool) -> Result<i32> {
    let id = vma.inode_object_id;
    if !ctx.open_files.open_files.iter().any(|f| f.id == id) {
        bail!("the mapping refers to open file #{id}, which the image does not hold");
    }
    let work = ctx.work_fd_floor + id as i32;
    let mode = if writable { libc::O_RDWR } else { libc::O_RDONLY };
    ctx.open_in_process(&format!("/proc/self/fd/{work}"), mode | libc::O_CLOEXEC)
        .with_context(|| format!("opening open file #{id} again for the mapping"))
}
