//! One module per kind of kernel object. Each holds how its image record is dumped from a frozen
//! process and how it is restored into the process being rebuilt, behind [`Kind`].
//!
//! Restore order (see `crate::restore`): memory, files, identity, signals, timers, credentials,
//! registers; each kind's `restore` may rely on the kinds before it.
//!
//! Files are two layers: [`files`] is the fd table of each process and the open file
//! descriptions of the tree (sharing, locks, leases), and [`fd`] holds one module per kind of
//! open file description (regular file, pipe, UNIX socket, eventfd...) behind
//! [`fd::FdKind`], listed once in [`fd::KINDS`]. The table calls the kinds only through that
//! registry, and no fd kind imports another. [`file_check`] is the identity of the files an
//! image names by path and their check at restore, for memory and fd kinds alike; [`ghost`]
//! the deleted files such an identity may name instead (`ghost_id`), saved in the image and
//! made again for the restore.

pub mod aio;
pub mod anon_names;
pub mod asked;
pub mod credentials;
pub mod fd;
pub mod file_check;
pub mod files;
pub mod ghost;
pub mod identity;
pub mod lazy_huge;
pub mod lazy_move;
pub mod lazy_pages;
pub mod lazy_stage;
pub mod leases;
pub mod locks;
pub mod membarrier;
pub mod memory;
pub mod page_copy;
pub mod page_fill;
pub mod pathless;
pub mod posix_timers;
pub mod registers;
pub mod scheduling;
pub mod seccomp;
pub mod signals;
pub mod smaps;
pub mod smaps_ahead;
pub mod syscall_timeouts;
pub mod sysv_shm;
pub mod timers;
pub mod uffd_dump;
pub mod vm_flags;

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::unistd::Pid;

use crate::image::ImageDir;
use crate::sys::remote::RemoteTask;

/// A kind of kernel object that crust saves and restores.
pub trait Kind {
    /// What the image holds for this kind.
    type Record;
    /// Collects the record from a frozen process.
    fn dump(ctx: &mut DumpCtx) -> Result<Self::Record>;
    /// Recreates the object in the process being restored.
    fn restore(ctx: &mut RestoreCtx, record: &Self::Record) -> Result<()>;
}

/// A frozen process being dumped.
pub struct DumpCtx<'a> {
    pub pid: Pid,
    pub remote: &'a mut RemoteTask,
    pub image: &'a ImageDir,
    pub process: procfs::process::Process,
    pub pidfd: OwnedFd,
    /// Open file descriptions of the whole tree, shared by every process's dump.
    pub open_files: &'a mut files::OpenFileTable,
    /// The process's parent, when it is part of the dumped tree (and frozen too).
    pub parent: Option<Pid>,
}

/// A process being rebuilt: a fresh child of crust with the image's PID, stopped under ptrace.
pub struct RestoreCtx<'a> {
    pub pid: Pid,
    pub remote: &'a mut RemoteTask,
    pub image: &'a ImageDir,
    pub pidfd: OwnedFd,
    /// Open file descriptions restored for the tree live at `work_fd_floor + id`, above every
    /// fd number of the image, until each process has placed its fds.
    pub work_fd_floor: i32,
    /// crust's temporary descriptors inside the process live at or above this number, above the
    /// working ones; all are closed before the process resumes.
    pub temp_fd_floor: i32,
    /// The image's filesystem credentials: files are opened with them, never as root.
    pub fs_identity: Option<(u32, u32, Vec<u32>)>,
    /// Every open file description of the image.
    pub open_files: &'a crate::image::proto::OpenFiles,
    /// Files the restore creates in the file system, removed again if it fails.
    pub created_files: &'a mut crate::created_files::CreatedFiles,
    /// The image's seal was verified: what it names is what this host's crust dumped.
    pub image_sealed: bool,
    /// restore --tcp-close: TCP connections come back closed, whatever the image holds.
    pub tcp_close: bool,
    /// The deleted files of the image, made again for the restore (see [`ghost`]).
    pub ghosts: &'a ghost::Placed,
    /// `restore --lazy-pages`, for a process whose lazy areas fault to crust's page server
    /// (None: every page is read in before the process runs).
    pub lazy: Option<lazy_pages::Registrar>,
    /// The inventory's record of the process's page file (its chunk hashes), for the pages
    /// crust places itself (see [`page_fill`]).
    pub pages_record: Option<&'a crate::image::proto::DataFile>,
}

impl RestoreCtx<'_> {
    /// Moves a descriptor that a remote call just created up to the temporary range and
    /// returns its new number.
    pub fn to_temp_fd(&mut self, fd: u64) -> Result<i32> {
        let moved = self.remote.syscall(
            "fcntl(F_DUPFD_CLOEXEC)",
            libc::SYS_fcntl,
            &[fd, libc::F_DUPFD_CLOEXEC as u64, self.temp_fd_floor as u64],
        )?;
        self.remote.syscall("close", libc::SYS_close, &[fd])?;
        Ok(moved as i32)
    }

    /// Opens `path` inside the process (with whatever filesystem credentials it has now) and
    /// returns the fd, moved to the temporary range.
    pub fn open_in_process(&mut self, path: &str, flags: i32) -> Result<i32> {
        let addr = self.remote.put_path(0, path)?;
        let fd = self
            .remote
            .syscall(&format!("openat({path})"), libc::SYS_openat, &[libc::AT_FDCWD as u64, addr, flags as u64, 0])
            .map_err(anyhow::Error::from)?;
        self.to_temp_fd(fd)
    }

    /// Opens `path` inside the process like [`Self::open_in_process`], but refuses to follow
    /// any symlink on the way (openat2 with RESOLVE_NO_SYMLINKS): the paths an image names are
    /// the kernel's own names of the files (from /proc), which never go through a symlink, so a
    /// symlink found on the way now was put there since the dump.
    pub fn open_in_process_no_symlinks(&mut self, path: &str, flags: i32) -> Result<i32> {
        const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
        const RESOLVE_NO_SYMLINKS: u64 = 0x04;
        // struct open_how { u64 flags; u64 mode; u64 resolve; }, then the path.
        // openat2 refuses bits open(2) ignores; a recorded f_flags may carry the kernel's own.
        let valid = libc::O_ACCMODE
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_TRUNC
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_DSYNC
            | libc::O_SYNC
            | libc::O_DIRECT
            | libc::O_LARGEFILE
            | libc::O_DIRECTORY
            | libc::O_NOFOLLOW
            | libc::O_NOATIME
            | libc::O_CLOEXEC
            | libc::O_PATH;
        let mut how = Vec::with_capacity(24);
        for field in [(flags & valid) as u32 as u64, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS] {
            how.extend_from_slice(&field.to_ne_bytes());
        }
        let how_addr = self.remote.put(0, &how)?;
        let path_addr = self.remote.put_path(how.len() as u64, path)?;
        let fd = self
            .remote
            .syscall(
                &format!("openat2({path}, RESOLVE_NO_SYMLINKS)"),
                libc::SYS_openat2,
                &[libc::AT_FDCWD as u64, path_addr, how_addr, how.len() as u64],
            )
            .map_err(anyhow::Error::from)?;
        self.to_temp_fd(fd)
    }

    /// Opens `file` in the process (with whatever credentials the process has at this point),
    /// following no symlink, and checks that what was opened is the very file the image names,
    /// device and inode: a path may now lead elsewhere (a symlink or a rename put in its
    /// place), and restore must never give a process a file it did not have. Refused, naming
    /// the file, otherwise.
    /// A deleted file (`ghost_id`) is opened where it was made again, and must be that file.
    pub fn open_identified(&mut self, file: &crate::image::proto::FileIdentity, flags: i32, what: &str) -> Result<i32> {
        let ghost;
        let file = if file.ghost_id != 0 {
            ghost = self.ghosts.identity(file)?;
            &ghost
        } else {
            file
        };
        let fd = self
            .open_in_process_no_symlinks(&file.path, flags)
            .with_context(|| format!("{what} {}: opening it again (a symlink on its path is refused)", file.path))?;
        let opened = std::fs::metadata(format!("/proc/{}/fd/{fd}", self.pid));
        let same = opened.as_ref().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev() == file.dev && m.ino() == file.inode
        });
        if !same {
            self.close_in_process(fd)?;
            let found = match opened {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    format!("device {:#x} inode {}", m.dev(), m.ino())
                }
                Err(e) => format!("nothing that can be checked ({e})"),
            };
            anyhow::bail!(
                "{what} {}: the path now leads to {found}, not to the file the process had (device {:#x} inode {}); \
                 crust refuses to give the process another file",
                file.path,
                file.dev,
                file.inode
            );
        }
        Ok(fd)
    }

    /// Opens a file the process's memory names (a mapped file, the executable) as
    /// [`Self::open_identified`] does: as root from a sealed image (the process had it mapped,
    /// and a drop of privileges after mapping does not take a mapping away); from an image
    /// taken on trust (`--trust-image`), only with the image's filesystem credentials, as its
    /// descriptors are, so that an edited image cannot map a file its uid may not read.
    pub fn open_for_memory(&mut self, file: &crate::image::proto::FileIdentity, flags: i32, what: &str) -> Result<i32> {
        if self.image_sealed {
            return self.open_identified(file, flags, what);
        }
        credentials::enter_fs_identity(self)?;
        let opened = self.open_identified(file, flags, what);
        credentials::leave_fs_identity(self)?;
        opened
    }

    pub fn close_in_process(&mut self, fd: i32) -> Result<()> {
        self.remote.syscall("close", libc::SYS_close, &[fd as u64])?;
        Ok(())
    }
}

/// Reads a value of a remote call's out-parameter from the scratch area.
pub fn scratch_u64(remote: &RemoteTask, offset: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    remote.get(offset, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}
