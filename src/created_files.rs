//! Files a restore creates in the file system (the path a restored UNIX socket is bound to, the
//! names deleted files are recreated under and the directories made for them: see
//! `kinds::ghost`), removed again when the restore fails, so that a failed restore leaves
//! nothing behind. A dump uses it too, for the names `--link-remap` links deleted files to.
//!
//! Each file is recorded right after it appears, as the directory it is in (held open, so
//! renames of the path above it change nothing) plus its name, device and inode; it is removed
//! only while that name still holds that very file (and, for a socket file, no live socket is
//! bound to it). Later files go first (a directory made for a file goes after the file).
//! The records are also written to a journal in [`journal_dir`], named after the crust run:
//! if crust is killed in the middle of a restore (its processes die with it, being traced with
//! PTRACE_O_EXITKILL), the next crust run removes what the journal lists
//! ([`repair_left_behind`]).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};

use crate::sys::unix_diag;

/// Where each crust run journals the files its restore created (root only), unless
/// CRUST_JOURNAL_DIR names another directory (an absolute path): runs that share a directory
/// repair each other's leftovers, so a test suite gives each test its own.
pub const JOURNAL_DIR: &str = "/run/crust/created-files";

pub fn journal_dir() -> PathBuf {
    match std::env::var_os("CRUST_JOURNAL_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => PathBuf::from(JOURNAL_DIR),
    }
}

/// One created file, as written to the journal.
#[derive(Serialize, Deserialize)]
struct Journaled {
    path: String,
    dev: u64,
    inode: u64,
    /// What the name holds (journals written before this field: socket files).
    #[serde(default)]
    what: Created,
}

/// What kind of file a created name holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Created {
    /// A socket file: removed only once no socket is bound to it.
    #[default]
    Socket,
    /// A regular file or a FIFO.
    File,
    /// A directory: removed if it is empty.
    Directory,
    /// A SysV shared memory segment a restore created (`dev`: its id, `inode`: its size): the
    /// next run removes it if it still is the one the dead run created (same id and size,
    /// created by that run's pid). Journal only: the run itself removes it when it fails.
    SysvSegment,
    /// /proc/sys/kernel/shm_next_id set to `dev` to create a segment with that id: the next
    /// run sets it back to -1 if it still holds that value (the dead run was killed between
    /// its two writes). Journal only.
    ShmNextId,
}

struct CreatedName {
    directory: OwnedFd,
    name: OsString,
    journaled: Journaled,
}

/// The files one restore created so far.
#[derive(Default)]
pub struct CreatedFiles {
    files: Vec<CreatedName>,
    journal: Option<PathBuf>,
}

impl CreatedFiles {
    /// Records the socket file at `path` that the socket with inode `socket_inode` was just
    /// bound to. A name that does not hold that socket's own file (something swapped in) is
    /// not recorded, so it is never removed.
    pub fn record_socket_file(&mut self, path: &str, socket_inode: u64) -> Result<()> {
        let Some((dev, inode)) = bound_file(socket_inode)? else { return Ok(()) };
        let path_ref = Path::new(path);
        let parent = path_ref.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path_ref.file_name().with_context(|| format!("socket path {path} has no file name"))?.to_owned();
        let directory = nix::fcntl::open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("opening the directory of {path}"))?;
        let journaled = Journaled { path: path.to_owned(), dev, inode, what: Created::Socket };
        if !holds(&directory, &name, &journaled) {
            tracing::warn!(path, "the socket file is not where the socket was bound; it will not be removed on failure");
            return Ok(());
        }
        self.append_to_journal(&journaled)?;
        self.files.push(CreatedName { directory, name, journaled });
        Ok(())
    }

    /// Records the file or directory `name` of `directory` (whose path is `path`) that crust
    /// just created, so that it goes again if the restore (or dump) fails. Not recorded when
    /// the name does not hold (dev, inode) of that kind.
    pub fn record_file(&mut self, directory: &OwnedFd, name: &OsStr, path: &str, (dev, inode): (u64, u64), what: Created) -> Result<()> {
        let directory = directory.try_clone().with_context(|| format!("keeping the directory of {path}"))?;
        let name = name.to_owned();
        let journaled = Journaled { path: path.to_owned(), dev, inode, what };
        if !holds(&directory, &name, &journaled) {
            tracing::warn!(path, "the created file is not where it was created; it will not be removed on failure");
            return Ok(());
        }
        self.append_to_journal(&journaled)?;
        self.files.push(CreatedName { directory, name, journaled });
        Ok(())
    }

    /// The restore (or dump) failed: removes every file recorded that is still the file it
    /// created (a socket file: once dead), the latest first. Best effort, each failure logged.
    pub fn remove_all(&mut self) {
        // The processes were killed: their sockets close as they are reaped, which may take a
        // moment (a process killed while traced is reaped by its own parent).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut left: Vec<CreatedName> = self.files.drain(..).rev().collect();
        while !left.is_empty() {
            left.retain(|f| !remove_if_dead(&f.directory, &f.name, &f.journaled));
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if left.is_empty() {
            self.forget_journal();
        } // else the journal stays, for the next crust run
    }

    /// The restore succeeded: the files belong to the restored processes now.
    pub fn keep_all(&mut self) {
        self.files.clear();
        self.forget_journal();
    }

    /// Journals the SysV segment `shmid` of `size` bytes that the restore just created (it
    /// removes it itself when it fails; the journal is for a crust killed before that).
    pub fn journal_segment(&mut self, shmid: i32, size: u64) -> Result<()> {
        let path = format!("SysV segment {shmid}");
        self.append_to_journal(&Journaled { path, dev: shmid as u64, inode: size, what: Created::SysvSegment })
    }

    /// Journals that shm_next_id is about to be set to `shmid` (a system-wide setting: a crust
    /// killed before it puts -1 back would leave it for the next segment of anyone).
    pub fn journal_shm_next_id(&mut self, shmid: i32) -> Result<()> {
        let path = "/proc/sys/kernel/shm_next_id".to_owned();
        self.append_to_journal(&Journaled { path, dev: shmid as u64, inode: 0, what: Created::ShmNextId })
    }

    fn append_to_journal(&mut self, entry: &Journaled) -> Result<()> {
        use std::io::Write;
        let journal = match &self.journal {
            Some(j) => j.clone(),
            None => {
                let dir = journal_dir();
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let j = dir.join(run_name(std::process::id() as i32).context("naming this crust run")?);
                self.journal = Some(j.clone());
                j
            }
        };
        let mut file =
            std::fs::File::options().create(true).append(true).open(&journal).with_context(|| format!("opening {}", journal.display()))?;
        writeln!(file, "{}", serde_json::to_string(entry)?).with_context(|| format!("writing {}", journal.display()))
    }

    fn forget_journal(&mut self) {
        if let Some(j) = self.journal.take() {
            let _ = std::fs::remove_file(j);
            if std::env::var_os("CRUST_JOURNAL_DIR").is_some() {
                // A directory of its own (a test's): gone once nothing is left in it.
                let _ = std::fs::remove_dir(journal_dir());
            }
        }
    }
}

impl Drop for CreatedFiles {
    /// Neither kept nor removed explicitly (an error path that forgot): removed, as a failure.
    fn drop(&mut self) {
        if !self.files.is_empty() {
            self.remove_all();
        }
    }
}

/// `pid-starttime` of a live process, so that a journal is never mistaken for a live run's
/// after its pid was reused.
fn run_name(pid: i32) -> Option<String> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some(format!("{pid}-{}", stat.starttime))
}

/// (device, inode) of the file the socket with this inode is bound to, if any.
fn bound_file(socket_inode: u64) -> Result<Option<(u64, u64)>> {
    let diag =
        unix_diag::query(socket_inode as u32, unix_diag::SHOW_VFS).with_context(|| format!("sock_diag of socket:[{socket_inode}]"))?;
    Ok(diag.and_then(|d| d.vfs).map(|(ino, dev)| (unix_diag::decode_dev(dev), ino as u64)))
}

/// Whether `name` in `directory` is the file recorded (its kind, dev and inode), not following
/// a symlink.
fn holds(directory: &OwnedFd, name: &OsString, f: &Journaled) -> bool {
    let Ok(st) = fstatat(directory.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { return false };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let kind_ok = match f.what {
        Created::Socket => kind == SFlag::S_IFSOCK,
        Created::File => kind == SFlag::S_IFREG || kind == SFlag::S_IFIFO,
        Created::Directory => kind == SFlag::S_IFDIR,
        Created::SysvSegment | Created::ShmNextId => false, // not names (repair_sysv)
    };
    kind_ok && (st.st_dev, st.st_ino) == (f.dev, f.inode)
}

/// Removes `name` from `directory` if it still is the file recorded (a socket file: and no
/// live socket is bound to it). Returns false when it must be tried again later (a socket of
/// the failed restore's processes still lives: they are being killed).
fn remove_if_dead(directory: &OwnedFd, name: &OsString, f: &Journaled) -> bool {
    if !holds(directory, name, f) {
        return true; // gone, or no longer the file crust created
    }
    if f.what != Created::Socket {
        let flag = if f.what == Created::Directory { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
        match unlinkat(directory.as_fd(), name.as_os_str(), flag) {
            Ok(()) => tracing::info!(path = f.path, "removed what the failed run created"),
            Err(e) => tracing::warn!(path = f.path, "cannot remove what the failed run created: {e}"),
        }
        return true;
    }
    let live = unix_diag::dump(u32::MAX, unix_diag::SHOW_VFS)
        .map(|all| all.iter().any(|d| d.vfs.is_some_and(|(ino, dev)| ino as u64 == f.inode && unix_diag::decode_dev(dev) == f.dev)));
    match live {
        Ok(false) => match unlinkat(directory.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {
                tracing::info!(path = f.path, "removed the socket file the failed restore created");
                true
            }
            Err(e) => {
                tracing::warn!(path = f.path, "cannot remove the socket file the failed restore created: {e}");
                true
            }
        },
        Ok(true) => {
            tracing::warn!(path = f.path, "a socket of the failed restore is still bound to its file; left for now");
            false
        }
        Err(e) => {
            tracing::warn!(path = f.path, "sock_diag: {e}; the socket file the failed restore created is left for now");
            false
        }
    }
}

/// Removes what the restores of crust runs that died (SIGKILL, a crash) left behind.
pub fn repair_left_behind() {
    let Ok(entries) = std::fs::read_dir(journal_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.split('-').next()).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| run_name(pid).as_deref().map(OsStr::new) == Some(name.as_os_str())) {
            continue; // that run is alive
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut settled = true;
        for line in text.lines().rev() {
            let Ok(f) = serde_json::from_str::<Journaled>(line) else { continue };
            if matches!(f.what, Created::SysvSegment | Created::ShmNextId) {
                repair_sysv(&f, pid);
                continue;
            }
            let path = Path::new(&f.path);
            let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else { continue };
            // No symlink on the way: the name is removed as root.
            let Ok(directory) = crate::sys::fs_safe::open_dir_no_symlinks(parent) else { continue };
            settled &= remove_if_dead(&directory, &file_name.to_owned(), &f);
        }
        if settled {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What a dead run (pid `run_pid`) left of SysV: its segment (removed only if it still is the
/// one that run created: same id and size, creator pid that run's), or shm_next_id still set to
/// the id it wrote.
fn repair_sysv(f: &Journaled, run_pid: Option<i32>) {
    use crate::sys::sysv;
    let shmid = f.dev as i32;
    if f.what == Created::ShmNextId {
        if sysv::next_id().is_ok_and(|now| now == shmid) {
            match sysv::reset_next_id() {
                Ok(()) => tracing::info!(shmid, "put shm_next_id back to -1 after a killed restore"),
                Err(e) => tracing::warn!("cannot put shm_next_id back to -1: {e}"),
            }
        }
        return;
    }
    let ours = sysv::segments().unwrap_or_default().into_iter().any(|s| s.shmid == shmid && s.size == f.inode && Some(s.cpid) == run_pid);
    if ours {
        match sysv::remove(shmid) {
            Ok(()) => tracing::info!(shmid, "removed the SysV segment a killed restore created"),
            Err(e) => tracing::warn!(shmid, "cannot remove the SysV segment a killed restore created: {e}"),
        }
    }
}
