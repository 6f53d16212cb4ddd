//! System V shared memory attached by processes of the tree.
//!
//! A segment belongs to the IPC namespace, not to a process, so it usually outlives the dumped
//! processes: restore attaches it again if it still exists with the same id, key, size, owner
//! and permissions (another owner's segment under the same id is refused).
//! A segment that is gone (it had been removed with IPC_RMID and died with its last
//! attachment, or the restore runs elsewhere) is recreated with its id, owner, mode and
//! contents, and removed again if it had been removed.
//! From an image taken on trust, a segment that exists is attached only if the kernel's IPC
//! permission check passes for the credentials the image gives each attaching process (restore
//! attaches as root). Each segment created, and shm_next_id while it is set, is journaled
//! (`created_files`): a failed restore removes the segments, and after a killed one the next
//! crust run does.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};

use super::RestoreCtx;
use crate::created_files::CreatedFiles;
use crate::image::ImageDir;
use crate::image::proto::{Credentials as Creds, Mm, SysvShm, Vma};
use crate::image::sparse::{data_regions, save_contents};
use crate::sys::sysv::{self, SHM_DEST};

/// The segments met in the tree's mappings while it is dumped (each saved once), by id.
#[derive(Default)]
pub struct SysvSegments(BTreeMap<i32, SysvShm>);

impl SysvSegments {
    /// The data files of the segments saved.
    pub fn data_files(&self) -> Vec<String> {
        self.0.values().map(|s| s.data_file.clone()).collect()
    }
}

/// Records the segment behind a SysV mapping, saving its contents the first time it is met.
pub fn dump(pid: i32, vma: &Vma, shmid: i32, image: &ImageDir, saved: &mut SysvSegments) -> Result<SysvShm> {
    if let Some(seg) = saved.0.get(&shmid) {
        return Ok(seg.clone());
    }
    let info = sysv::segments()?
        .into_iter()
        .find(|s| s.shmid == shmid)
        .with_context(|| format!("pid {pid}: SysV segment {shmid} is not in /proc/sysvipc/shm"))?;
    if vma.file_offset != 0 || vma.end - vma.start < info.size {
        bail!(
            "pid {pid}: mapping {:#x}-{:#x} attaches only part of SysV segment {shmid}; crust cannot restore partial attachments",
            vma.start,
            vma.end
        );
    }
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
    let object = File::open(&path).with_context(|| format!("opening {path}"))?;
    let data_file = format!("sysvshm-{shmid}.img");
    save_contents(image, &object, &data_file)?;
    let seg = SysvShm { key: info.key, shmid, size: info.size, mode: info.mode, uid: info.uid, gid: info.gid, data_file };
    saved.0.insert(shmid, seg.clone());
    Ok(seg)
}

/// Segments made ready for a restore: which ones crust created, which must be removed again.
#[derive(Default)]
pub struct Prepared {
    created: Vec<i32>,
    to_remove: Vec<i32>,
}

impl Prepared {
    /// After a successful restore: segments that had been removed are removed again (they now
    /// live as long as the restored attachments).
    pub fn finish(self) -> Result<()> {
        for shmid in self.to_remove {
            sysv::remove(shmid)?;
        }
        Ok(())
    }

    /// After a failed restore: nothing crust created stays.
    pub fn undo(self) {
        for shmid in self.created {
            let _ = sysv::remove(shmid);
        }
    }
}

/// Access bits (r=4, w=2, x=1) an attachment like `vma` asks of a segment, as shmat(2) does.
fn access_wanted(vma: &Vma) -> u32 {
    let mut bits = 4;
    if vma.prot & libc::PROT_WRITE as u32 != 0 {
        bits |= 2;
    }
    if vma.prot & libc::PROT_EXEC as u32 != 0 {
        bits |= 1;
    }
    bits
}

/// The kernel's IPC permission check (ipcperms) of a segment as it is now, for a process with
/// the credentials `c` asking `wanted`: owner's bits for its owner or creator, group bits for
/// their groups, others' bits otherwise; CAP_IPC_OWNER overrides.
fn ipc_permitted(e: &sysv::SegmentInfo, c: &Creds, wanted: u32) -> bool {
    const CAP_IPC_OWNER: u64 = 1 << 15;
    let in_group = |g: u32| c.egid == g || c.groups.contains(&g);
    let granted = if c.euid == e.uid || c.euid == e.cuid {
        e.mode >> 6
    } else if in_group(e.gid) || in_group(e.cgid) {
        e.mode >> 3
    } else {
        e.mode
    };
    wanted & !granted & 7 == 0 || c.cap_effective & CAP_IPC_OWNER != 0
}

/// An image taken on trust (`--trust-image`) attaches a segment that exists only if each of
/// its processes may, with the credentials the image gives it: restore attaches as root, and
/// an edited image could name another user's segment (its key, id and size are in
/// /proc/sysvipc/shm for anyone to copy).
fn check_trusted_access(e: &sysv::SegmentInfo, users: &[(u32, &Vma, &Creds)]) -> Result<()> {
    for (pid, vma, c) in users {
        let wanted = access_wanted(vma);
        if !ipc_permitted(e, c, wanted) {
            bail!(
                "image file {}: SysV segment {} (uid {} gid {} mode {:o}) is not open to pid {pid} with euid {} egid {} \
                 for access {wanted:o} (the image is taken on trust): crust refuses to attach it",
                crate::image::mm_name(*pid),
                e.shmid,
                e.uid,
                e.gid,
                e.mode & 0o777,
                c.euid,
                c.egid
            );
        }
    }
    Ok(())
}

/// Makes every segment of the image exist with its id, before any process is created.
/// `processes`: each process's pid, memory and credentials; `sealed`: the image's seal was
/// verified (else a segment that exists must be open to the processes' credentials).
/// What it creates (and shm_next_id while it sets it) is journaled in `created`, so that the
/// next crust run removes it if this one is killed.
pub fn prepare(dir: &ImageDir, processes: &[(u32, &Mm, Option<&Creds>)], sealed: bool, created: &mut CreatedFiles) -> Result<Prepared> {
    let mut wanted: BTreeMap<i32, &SysvShm> = BTreeMap::new();
    let mut users: BTreeMap<i32, Vec<(u32, &Vma, &Creds)>> = BTreeMap::new();
    for (pid, mm, creds) in processes {
        for vma in &mm.vmas {
            let Some(seg) = &vma.sysv_shm else { continue };
            wanted.insert(seg.shmid, seg);
            if !sealed {
                let c = creds.with_context(|| format!("image file core-{pid}.img: field credentials: missing"))?;
                users.entry(seg.shmid).or_default().push((*pid, vma, c));
            }
        }
    }
    let mut prepared = Prepared::default();
    if wanted.is_empty() {
        return Ok(prepared);
    }
    let existing = sysv::segments()?;
    for (shmid, seg) in wanted {
        let removed = seg.mode & SHM_DEST != 0;
        match existing.iter().find(|e| e.shmid == shmid) {
            // Still there: its current contents are the live shared state, if it still is the
            // same owner's segment with the same permissions (restore attaches it as root:
            // another user's segment under a recycled id must not be handed over).
            Some(e) if e.size == seg.size && (removed || e.key == seg.key) => {
                if let Err(refused) = check_trusted_access(e, users.get(&shmid).map(Vec::as_slice).unwrap_or_default()) {
                    prepared.undo();
                    return Err(refused);
                }
                let perms = |mode: u32| mode & 0o777;
                if (e.uid, e.gid, perms(e.mode)) != (seg.uid, seg.gid, perms(seg.mode)) {
                    prepared.undo();
                    bail!(
                        "SysV segment id {shmid} now belongs to uid {} gid {} with mode {:o}; the process had one of uid {} gid {} \
                         with mode {:o}: crust refuses to attach another owner's segment",
                        e.uid,
                        e.gid,
                        perms(e.mode),
                        seg.uid,
                        seg.gid,
                        perms(seg.mode)
                    );
                }
            }
            Some(e) => {
                prepared.undo();
                bail!(
                    "SysV segment id {shmid} is taken by another segment (key {:#x}, {} bytes; the image has key {:#x}, {} bytes)",
                    e.key,
                    e.size,
                    seg.key,
                    seg.size
                );
            }
            None => {
                let key = if removed { libc::IPC_PRIVATE } else { seg.key };
                if let Err(e) = created.journal_shm_next_id(shmid) {
                    prepared.undo();
                    return Err(e);
                }
                let got = match sysv::create_with_id(key, shmid, seg.size, seg.mode) {
                    Ok(got) => got,
                    Err(e) => {
                        prepared.undo();
                        return Err(e).with_context(|| format!("recreating SysV segment {shmid}"));
                    }
                };
                prepared.created.push(got);
                if let Err(e) = created.journal_segment(got, seg.size) {
                    prepared.undo();
                    return Err(e);
                }
                if got != shmid {
                    prepared.undo();
                    bail!("recreating SysV segment {shmid}: the kernel gave id {got}");
                }
                let data = dir.data_file(&seg.data_file)?;
                let regions = data_regions(&data, seg.size)?;
                let filled = sysv::fill(shmid, seg.size, |bytes| {
                    for (start, end) in &regions {
                        // Regions lie within seg.size (data_regions), the attachment holds it.
                        let range = usize::try_from(*start).ok().zip(usize::try_from(*end).ok());
                        let Some(dest) = range.and_then(|(s, e)| bytes.get_mut(s..e)) else {
                            return Err(std::io::Error::other(format!("{}: region {start}..{end} outside the segment", seg.data_file)));
                        };
                        data.read_exact_at(dest, *start)?;
                    }
                    Ok(())
                })
                .and_then(|_| sysv::set_owner(shmid, seg.uid, seg.gid, seg.mode));
                if let Err(e) = filled {
                    prepared.undo();
                    return Err(e).with_context(|| format!("refilling SysV segment {shmid}"));
                }
                if removed {
                    prepared.to_remove.push(shmid);
                }
            }
        }
    }
    Ok(prepared)
}

/// Attaches the segment at the mapping's address in the process being restored.
pub fn attach(ctx: &mut RestoreCtx, vma: &Vma, seg: &SysvShm) -> Result<()> {
    let mut flags = 0u64;
    if vma.prot & libc::PROT_WRITE as u32 == 0 {
        flags |= libc::SHM_RDONLY as u64;
    }
    if vma.prot & libc::PROT_EXEC as u32 != 0 {
        flags |= libc::SHM_EXEC as u64;
    }
    let got = ctx.remote.syscall("shmat", libc::SYS_shmat, &[seg.shmid as u64, vma.start, flags])?;
    if got != vma.start {
        bail!("shmat of segment {} returned {got:#x}", seg.shmid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(uid: u32, gid: u32, mode: u32) -> sysv::SegmentInfo {
        sysv::SegmentInfo { key: 1, shmid: 7, mode, size: 4096, uid, gid, cuid: uid, cgid: gid, cpid: 1 }
    }

    fn creds(euid: u32, egid: u32, groups: Vec<u32>, cap_effective: u64) -> Creds {
        Creds { euid, egid, groups, cap_effective, ..Default::default() }
    }

    #[test]
    fn ipc_permission_is_the_kernels() {
        let root_only = segment(0, 0, 0o600);
        let nobody = creds(65534, 65534, vec![], 0);
        assert!(!ipc_permitted(&root_only, &nobody, 4));
        assert!(ipc_permitted(&root_only, &creds(0, 0, vec![], 0), 6));
        assert!(ipc_permitted(&root_only, &creds(65534, 65534, vec![], 1 << 15), 6), "CAP_IPC_OWNER");
        let group_read = segment(0, 100, 0o640);
        assert!(ipc_permitted(&group_read, &creds(65534, 65534, vec![100], 0), 4));
        assert!(!ipc_permitted(&group_read, &creds(65534, 65534, vec![100], 0), 6));
        assert!(!ipc_permitted(&segment(0, 0, 0o604), &nobody, 6));
        assert!(ipc_permitted(&segment(0, 0, 0o606), &nobody, 6));
        // The owner's bits decide for the owner, even when others have more.
        assert!(!ipc_permitted(&segment(65534, 0, 0o066), &nobody, 4));
        // The creator counts as the owner.
        let created = sysv::SegmentInfo { cuid: 65534, ..segment(0, 0, 0o600) };
        assert!(ipc_permitted(&created, &nobody, 6));
    }
}
