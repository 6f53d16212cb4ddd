//! Deleted files the tree still uses ("ghost files", as the reference tool calls them): a
//! regular file open or mapped after it was unlinked (a deleted executable too), a directory
//! removed while a process had it open or as its working or root directory, a FIFO unlinked
//! while open.
//!
//! Dump records each such inode once (however many fds, processes and mappings refer to it) in
//! `OpenFiles.ghosts`, and the [`FileIdentity`] of each fd or mapping names it by `ghost_id`.
//! A regular file's contents go into a sparse data file (holes stay holes), read through a new
//! read-only description of its own (`/proc/PID/fd/N` or `/proc/PID/map_files/...`: the
//! process's own description is never read or moved); a file whose size is above
//! `--ghost-limit` (1 MiB by default, as in the reference tool) is refused by pid, fd, path and
//! size. A file that was unlinked but still has other links (nlink > 0) is not copied: with
//! `--link-remap` the dump links it to a hidden name in its directory (`.crust-link-remap-*`,
//! journaled so a failed dump removes it) that stays until a restore opens it (linked to its
//! old name for the open when that name is free, so the fds show it) and removes it (the
//! reference tool's meaning: after `dump -R` too the name stays for the restore); without it
//! such a file is refused. Both refusals are made before the tree is frozen too
//! ([`refuse_early`]). A deleted file of a kernel-internal mount, or holding a lease, is
//! refused; restore makes ghosts only from a sealed image (not with `--trust-image`).
//!
//! Restore, before the first process exists ([`prepare`]), creates each ghost again: at its
//! old path when nothing is there now, else under a hidden name in the same directory
//! (`.crust-ghost-INODE-PID`); a directory that was removed with it is made again (mode 0700)
//! and removed afterwards. Its directory is reached with no symlink on the way and must be the
//! one the file was in at dump time (device and inode), and the file and any directory are
//! made with the filesystem ids of the process that had it: a process that swaps its
//! directory for a symlink to /etc after `dump -R` gets nothing made there. Where those ids
//! may not create a file (a daemon running as nobody whose binary was deleted from /usr/sbin
//! by an upgrade), crust makes it as root, but only under its hidden name, never the name the
//! process knew (a file named ld.so.preload with the process's bytes must never appear). The new file gets the contents, size, owner, mode and times;
//! every name and directory created is journaled (`created_files`), so a failed or killed
//! restore leaves none. Every description and mapping then opens the ghost by that name (the
//! same new inode for all, checked by device and inode), and once every process is restored,
//! before any runs, [`Placed::unlink_all`] unlinks them again: the fds show "PATH (deleted)",
//! `st_nlink` is 0. A ghost placed under a hidden name shows that name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::created_files::{Created, CreatedFiles};
use crate::image::ImageDir;
use crate::image::proto::{FileIdentity, GhostFile};
use crate::image::sparse::data_regions;
use crate::sys::fs_safe::{FsIds, with_fs_ids};

/// The reference tool's default `--ghost-limit`.
pub const DEFAULT_LIMIT: u64 = 1 << 20;

/// The path a /proc link names for a deleted file ("/a/b (deleted)" -> "/a/b").
pub fn deleted_path(link: &str) -> Option<&str> {
    link.strip_suffix(" (deleted)").filter(|p| p.starts_with('/'))
}

/// The ghosts met while one tree is dumped (kept in the fd table's `KindState`).
pub struct GhostTable {
    limit: u64,
    link_remap: bool,
    by_inode: BTreeMap<(u64, u64), u32>,
    ghosts: Vec<GhostFile>,
    /// Names `--link-remap` created: removed if the dump fails.
    links: CreatedFiles,
}

impl Default for GhostTable {
    fn default() -> Self {
        GhostTable { limit: DEFAULT_LIMIT, link_remap: false, by_inode: BTreeMap::new(), ghosts: Vec::new(), links: Default::default() }
    }
}

impl GhostTable {
    /// The dump's options: `--ghost-limit` (None: the default) and `--link-remap`.
    pub fn configure(&mut self, limit: Option<u64>, link_remap: bool) {
        self.limit = limit.unwrap_or(DEFAULT_LIMIT);
        self.link_remap = link_remap;
    }

    /// The records, for open-files.img, and the names `--link-remap` created (to be kept once
    /// the image is complete, removed if the dump fails).
    pub fn finish(&mut self) -> (Vec<GhostFile>, CreatedFiles) {
        (std::mem::take(&mut self.ghosts), std::mem::take(&mut self.links))
    }

    /// Records the deleted inode that `who` ("pid P fd N") refers to and returns its ghost id.
    /// `through` is a /proc link to the very inode (the fd, or the mapping's map_files entry);
    /// `path` its last name.
    pub fn record(&mut self, image: &ImageDir, who: &str, path: &str, through: &str) -> Result<u32> {
        let meta = std::fs::metadata(through).with_context(|| format!("{who}: stat {through} ({path})"))?;
        if let Some(id) = self.by_inode.get(&(meta.dev(), meta.ino())) {
            return Ok(*id);
        }
        let kind = meta.mode() & libc::S_IFMT;
        if ![libc::S_IFREG, libc::S_IFDIR, libc::S_IFIFO].contains(&kind) {
            bail!("{who}: {path} is a deleted file of a kind crust cannot create again (mode {:o})", meta.mode());
        }
        let id = self.ghosts.len() as u32 + 1;
        let mut ghost = GhostFile {
            id,
            path: path.to_owned(),
            dev: meta.dev(),
            inode: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            atime_ns: meta.atime() * 1_000_000_000 + meta.atime_nsec(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ..Default::default()
        };
        if meta.nlink() > 0 && kind != libc::S_IFDIR {
            // Unlinked by this name, alive by another: a copy would be another file.
            if !self.link_remap {
                return Err(linked_elsewhere(who, path));
            }
            ghost.link_remap = link_back(&mut self.links, who, path, through, (meta.dev(), meta.ino()))?;
        } else if kind == libc::S_IFREG {
            if meta.size() > self.limit {
                return Err(too_big(who, path, meta.size(), self.limit));
            }
            if leased(&meta) {
                // Opening it to read it would break the lease (and wait for the break).
                bail!("{who}: the deleted file {path} holds a lease; crust cannot read it without breaking the lease");
            }
            if meta.size() > 0 {
                ghost.data_file = format!("ghost-{id}.img");
                save_contents(image, through, &ghost.data_file).with_context(|| format!("{who}: saving the deleted file {path}"))?;
            }
        }
        (ghost.dir_dev, ghost.dir_inode) = directory_identity(path);
        if let Some(ids) = creator_fs_ids(through) {
            (ghost.fs_ids_recorded, ghost.fsuid, ghost.fsgid, ghost.groups) = (true, ids.uid, ids.gid, ids.groups);
        }
        tracing::info!(who, path, size = ghost.size, "recorded a deleted file");
        self.by_inode.insert((meta.dev(), meta.ino()), id);
        self.ghosts.push(ghost);
        Ok(id)
    }
}

/// Device and inode of the directory of `path` now, reached with no symlink; (0, 0) when it is
/// gone (removed with the file) or cannot be reached so.
fn directory_identity(path: &str) -> (u64, u64) {
    let Ok((dir_path, _)) = split(path) else { return (0, 0) };
    match open_dir(&dir_path).and_then(|d| Ok(File::from(d).metadata()?)) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(_) => (0, 0),
    }
}

/// Whether the filesystem ids `ids` may create a file in `dir` (write and search permission).
fn maker_may_create(ids: &FsIds, dir: &OwnedFd) -> Result<bool> {
    let flags = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    // AT_EACCESS: checked with the helper thread's filesystem ids, not crust's real uid.
    let (dir_fd, dot) = (dir.as_fd(), Path::new("."));
    Ok(with_fs_ids(ids, || nix::unistd::faccessat(dir_fd, dot, flags, AtFlags::AT_EACCESS))?.is_ok())
}

/// The filesystem ids of the process whose /proc link `through` ("/proc/PID/...") is.
fn creator_fs_ids(through: &str) -> Option<FsIds> {
    let pid: i32 = through.strip_prefix("/proc/")?.split('/').next()?.parse().ok()?;
    let c = super::credentials::of_thread(pid, pid).ok()?;
    Some(FsIds { uid: c.fsuid, gid: c.fsgid, groups: c.groups })
}

/// Who makes a ghost again: the process that had it (its filesystem ids), or for an image that
/// does not say, the file's owner without supplementary groups. Never crust's root.
fn maker_ids(g: &GhostFile) -> FsIds {
    if g.fs_ids_recorded {
        FsIds { uid: g.fsuid, gid: g.fsgid, groups: g.groups.clone() }
    } else {
        FsIds { uid: g.uid, gid: g.gid, groups: Vec::new() }
    }
}

/// Whether the device `dev` is a mount of the mount namespace (crust's, which dumped processes
/// share; read from crust's view, as a chroot hides mounts from the process's own): a deleted
/// file of a kernel-internal mount (a memfd, a shared hugetlb area, a driver's object) has no
/// directory to come back to.
pub fn on_visible_mount(dev: u64) -> bool {
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|text| text.lines().any(|l| l.split_whitespace().nth(2) == Some(wanted.as_str())))
}

/// Dump, before anything is frozen: the deleted files of `pid` (through its fds and
/// mappings) that [`GhostTable::record`] will refuse by their size or links, so that a tree
/// that will be refused is never stopped. Touches nothing (stat through /proc only).
pub fn refuse_early(pid: i32, limit: Option<u64>, link_remap: bool) -> Result<()> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    for (dir, what) in [("fd", "fd"), ("map_files", "mapping")] {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/{dir}")) else { continue };
        for e in entries.flatten() {
            let who = format!("pid {pid} {what} {}", e.file_name().to_string_lossy());
            refuse_one_early(&who, &e.path(), limit, link_remap)?;
        }
    }
    Ok(())
}

fn refuse_one_early(who: &str, through: &Path, limit: u64, link_remap: bool) -> Result<()> {
    // A link gone meanwhile is simply not there any more.
    let Ok(link) = std::fs::read_link(through) else { return Ok(()) };
    let link = link.to_string_lossy();
    let Some(path) = deleted_path(&link) else { return Ok(()) };
    let Ok(meta) = std::fs::metadata(through) else { return Ok(()) };
    if !meta.is_file() || !on_visible_mount(meta.dev()) {
        return Ok(()); // memfds, shared anonymous memory... are their kinds' business
    }
    if meta.nlink() > 0 && !link_remap {
        return Err(linked_elsewhere(who, path));
    }
    if meta.nlink() == 0 && meta.size() > limit {
        return Err(too_big(who, path, meta.size(), limit));
    }
    Ok(())
}

fn linked_elsewhere(who: &str, path: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{who}: {path} was unlinked but the file still has other links (a copy would be another file): \
         dump with --link-remap to link it to a hidden name until the restore"
    )
}

fn too_big(who: &str, path: &str, size: u64, limit: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{who}: the deleted file {path} holds {size} bytes, more than the --ghost-limit of {limit} bytes its \
         contents may take in the image: dump with a larger --ghost-limit"
    )
}

/// Whether a lease (or delegation) is held on the inode (/proc/locks).
fn leased(meta: &std::fs::Metadata) -> bool {
    let key = super::locks::dev_ino(meta);
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines().any(|l| (l.contains(" LEASE ") || l.contains(" DELEG ")) && l.split_whitespace().any(|w| w == key))
}

/// Copies the regular file behind `through` into a sparse data file, through a read-only
/// description of crust's own (the process's offset is not touched; atime neither).
fn save_contents(image: &ImageDir, through: &str, name: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_CLOEXEC)
        .open(through)
        .with_context(|| format!("opening {through}"))?;
    crate::image::sparse::save_contents(image, &file, name)?;
    Ok(())
}

/// `--link-remap`: links the inode (still linked elsewhere) to a hidden name in the directory
/// of its old path, journaled; returns the name.
fn link_back(links: &mut CreatedFiles, who: &str, path: &str, through: &str, id: (u64, u64)) -> Result<String> {
    let (dir_path, _) = split(path)?;
    let dir = open_dir(&dir_path).with_context(|| format!("{who}: --link-remap of {path}: its directory"))?;
    let name = format!(".crust-link-remap-{}-{}", id.1, std::process::id());
    nix::unistd::linkat(nix::fcntl::AT_FDCWD, Path::new(through), dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_FOLLOW)
        .with_context(|| format!("{who}: --link-remap of {path}: linkat({through}, {}/{name})", dir_path.display()))?;
    let full = dir_path.join(&name).to_string_lossy().into_owned();
    links.record_file(&dir, OsString::from(&name).as_os_str(), &full, id, Created::File)?;
    Ok(name)
}

fn split(path: &str) -> Result<(PathBuf, OsString)> {
    let p = Path::new(path);
    let parent = p.parent().context("a deleted file without a directory")?;
    let name = p.file_name().with_context(|| format!("{path} has no file name"))?;
    Ok((parent.to_owned(), name.to_owned()))
}

/// The directory `path`, reached with no symlink on the way: crust makes and links files in
/// it as root's process, and a symlink put in its place since the dump must not lead it
/// elsewhere (ELOOP).
fn open_dir(path: &Path) -> Result<OwnedFd> {
    Ok(crate::sys::fs_safe::open_dir_no_symlinks(path)?)
}

/// Runs a file system change in the ghost's directory with the ids of the process that had it.
fn as_maker<T: Send>(ids: &FsIds, work: impl FnOnce() -> nix::Result<T> + Send) -> Result<T> {
    Ok(with_fs_ids(ids, work)??)
}

/// Refuses a directory that is there but is not the one the file was in at dump time
/// (renamed away and another put in its place).
fn check_directory(g: &GhostFile, dir: &OwnedFd, dir_path: &Path) -> Result<()> {
    if g.dir_inode == 0 {
        return Ok(()); // gone at dump time, or an older image
    }
    let meta = File::from(dir.try_clone()?).metadata()?;
    if (meta.dev(), meta.ino()) != (g.dir_dev, g.dir_inode) {
        bail!(
            "image file open-files.img: ghost file #{}: the directory {} is another directory now (device {:#x} inode {}; \
             the file was in device {:#x} inode {}): crust refuses to make the deleted file {} there",
            g.id,
            dir_path.display(),
            meta.dev(),
            meta.ino(),
            g.dir_dev,
            g.dir_inode,
            g.path
        );
    }
    Ok(())
}

/// Raw data files the ghosts name.
pub fn data_files(ghosts: &[GhostFile]) -> Vec<String> {
    ghosts.iter().filter(|g| !g.data_file.is_empty()).map(|g| g.data_file.clone()).collect()
}

/// What restore checks before anything exists: each ghost can be made again (its data file
/// holds its size), a link-remap name still is the inode.
pub fn precheck(image: &ImageDir, ghosts: &[GhostFile]) -> Result<()> {
    for g in ghosts {
        let kind = g.mode & libc::S_IFMT;
        if ![libc::S_IFREG, libc::S_IFDIR, libc::S_IFIFO].contains(&kind) || !g.path.starts_with('/') || g.path.contains('\0') {
            bail!(
                "image file open-files.img: ghost file #{}: field mode/path: {:o} {:?} is not a file crust creates",
                g.id,
                g.mode,
                g.path
            );
        }
        if !g.link_remap.is_empty() {
            let path = link_remap_path(g)?;
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("the --link-remap name {} of {} is gone", path.display(), g.path))?;
            if (meta.dev(), meta.ino()) != (g.dev, g.inode) {
                bail!("the --link-remap name {} of {} is another file now", path.display(), g.path);
            }
        } else if !g.data_file.is_empty() {
            let len = image.data_file(&g.data_file)?.metadata()?.len();
            if len != g.size {
                bail!("{} holds {len} bytes, the deleted file {} had {}", g.data_file, g.path, g.size);
            }
        }
    }
    Ok(())
}

fn link_remap_path(g: &GhostFile) -> Result<PathBuf> {
    if g.link_remap.contains('/') || g.link_remap.starts_with("..") {
        bail!("image file open-files.img: ghost file #{}: field link_remap: {:?} is not a plain name", g.id, g.link_remap);
    }
    Ok(split(&g.path)?.0.join(&g.link_remap))
}

/// One ghost made again for the restore.
struct Ghost {
    /// The name it has now, and its directory.
    path: String,
    directory: OwnedFd,
    name: OsString,
    dev: u64,
    inode: u64,
    is_dir: bool,
    /// The `--link-remap` name, to remove too (when the ghost was opened by its old name).
    link_remap: Option<OsString>,
}

/// The ghosts of one restore, made again ([`prepare`]).
#[derive(Default)]
pub struct Placed {
    ghosts: BTreeMap<u32, Ghost>,
    /// Directories made for them, in the order they were made.
    directories: Vec<(OwnedFd, OsString, String)>,
}

/// Refuses deleted files in an image taken on trust (`--trust-image`): crust would make them
/// as root, where and as what the image says.
pub fn refuse_on_trust(ghosts: &[GhostFile], trusted: bool) -> Result<()> {
    if let Some(g) = ghosts.first().filter(|_| trusted) {
        bail!(
            "the image holds deleted files ({} ...) and was taken on trust (--trust-image): crust makes them again as root, \
             where and as what the image says, so only from an image this host sealed",
            g.path
        );
    }
    Ok(())
}

/// Makes every ghost of the image again (see the module's documentation). Only from a sealed
/// image: crust makes them as root, where and as what the image says.
pub fn prepare(image: &ImageDir, ghosts: &[GhostFile], created: &mut CreatedFiles, sealed: bool) -> Result<Placed> {
    refuse_on_trust(ghosts, !sealed)?;
    let mut placed = Placed::default();
    for g in ghosts {
        let ghost = if g.link_remap.is_empty() { make(image, g, created, &mut placed.directories) } else { reuse_link(g, created) };
        let ghost = ghost.with_context(|| format!("making the deleted file {} again", g.path))?;
        tracing::info!(path = g.path, at = ghost.path, "made the deleted file again");
        placed.ghosts.insert(g.id, ghost);
    }
    Ok(placed)
}

/// A `--link-remap` name: linked to the file's old name too when nothing is there now (the
/// fds opened by it show it, as the process's did; journaled), else opened by itself. Both
/// names go once every process opened it; a failed restore removes only the old name, and
/// the link-remap name stays for the next restore.
fn reuse_link(g: &GhostFile, created: &mut CreatedFiles) -> Result<Ghost> {
    let remap = link_remap_path(g)?;
    let (dir_path, old_name) = split(&g.path)?;
    let directory = open_dir(&dir_path)?;
    check_directory(g, &directory, &dir_path)?;
    let remap_name = OsString::from(&g.link_remap);
    let st = nix::sys::stat::fstatat(directory.as_fd(), remap_name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .with_context(|| format!("the --link-remap name {} of {} is gone", remap.display(), g.path))?;
    if (st.st_dev, st.st_ino) != (g.dev, g.inode) {
        bail!("the --link-remap name {} of {} is another file now", remap.display(), g.path);
    }
    let (dir_fd, remap_os, old_os) = (directory.as_fd(), remap_name.as_os_str(), old_name.as_os_str());
    let linked = as_maker(&maker_ids(g), || nix::unistd::linkat(dir_fd, remap_os, dir_fd, old_os, AtFlags::empty()));
    if linked.is_ok() {
        created.record_file(&directory, old_name.as_os_str(), &g.path, (g.dev, g.inode), Created::File)?;
        return Ok(Ghost {
            path: g.path.clone(),
            directory,
            name: old_name,
            dev: g.dev,
            inode: g.inode,
            is_dir: false,
            link_remap: Some(remap_name),
        });
    }
    let path = remap.to_string_lossy().into_owned();
    Ok(Ghost { path, directory, name: remap_name, dev: g.dev, inode: g.inode, is_dir: false, link_remap: None })
}

fn make(image: &ImageDir, g: &GhostFile, created: &mut CreatedFiles, dirs: &mut Vec<(OwnedFd, OsString, String)>) -> Result<Ghost> {
    let (dir_path, old_name) = split(&g.path)?;
    let ids = maker_ids(g);
    let (directory, made) = make_directories(&dir_path, created, dirs, &ids)?;
    if !made {
        check_directory(g, &directory, &dir_path)?;
    }
    let free = nix::sys::stat::fstatat(directory.as_fd(), old_name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_err_and(|e| e == nix::errno::Errno::ENOENT);
    // Made with the ids of the process that had it. Where those may not create a file (a
    // daemon running as nobody whose binary an upgrade deleted from /usr/sbin), crust makes it
    // as root, but only under a hidden name of its own choosing, never the name the process
    // knew: nothing reads a file by that name, and it is gone before the tree resumes.
    let as_root = !made && !maker_may_create(&ids, &directory)?;
    let hidden = OsString::from(format!(".crust-ghost-{}-{}", g.inode, std::process::id()));
    let name = if free && !as_root { old_name } else { hidden };
    let path = dir_path.join(&name).to_string_lossy().into_owned();
    let kind = g.mode & libc::S_IFMT;
    let private = Mode::from_bits_truncate(0o600);
    let (dir_fd, name_os) = (directory.as_fd(), name.as_os_str());
    let create = || match kind {
        libc::S_IFDIR => nix::sys::stat::mkdirat(dir_fd, name_os, Mode::from_bits_truncate(0o700)),
        libc::S_IFIFO => nix::sys::stat::mknodat(dir_fd, name_os, SFlag::S_IFIFO, private, 0),
        _ => nix::fcntl::openat(
            dir_fd,
            name_os,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            private,
        )
        .map(drop),
    };
    if as_root {
        tracing::info!(path, fsuid = ids.uid, "the process's ids may not create files there: made as root under a hidden name");
        create().with_context(|| format!("creating {path}"))?;
    } else {
        as_maker(&ids, create).with_context(|| format!("creating {path} with fsuid {} fsgid {}", ids.uid, ids.gid))?;
    }
    // What was just made, without following anything: journaled before it is filled.
    let handle =
        nix::fcntl::openat(directory.as_fd(), name.as_os_str(), OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
    let meta = File::from(handle.try_clone()?).metadata()?;
    if meta.mode() & libc::S_IFMT != kind {
        bail!("{path} is not what crust just created there");
    }
    let what = if kind == libc::S_IFDIR { Created::Directory } else { Created::File };
    created.record_file(&directory, name.as_os_str(), &path, (meta.dev(), meta.ino()), what)?;
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    if kind == libc::S_IFREG {
        let file = File::options().write(true).open(&through)?;
        fill(image, g, &file)?;
    }
    give_attributes(&through, g).with_context(|| format!("giving {path} its owner, mode and times"))?;
    Ok(Ghost { path, directory, name, dev: meta.dev(), inode: meta.ino(), is_dir: kind == libc::S_IFDIR, link_remap: None })
}

/// The directory `path` (reached with no symlink), made (with any missing parent, with the ids
/// `ids`) when it was removed too; each directory made is journaled and noted in `dirs`, to be
/// removed again. Also says whether it was made.
fn make_directories(
    path: &Path,
    created: &mut CreatedFiles,
    dirs: &mut Vec<(OwnedFd, OsString, String)>,
    ids: &FsIds,
) -> Result<(OwnedFd, bool)> {
    match crate::sys::fs_safe::open_dir_no_symlinks(path) {
        Ok(dir) => return Ok((dir, false)),
        Err(e) if e.errno() != Some(nix::errno::Errno::ENOENT) => {
            return Err(e)
                .with_context(|| format!("the directory {} of a deleted file (a symlink on its path is refused)", path.display()));
        }
        Err(_) => {}
    }
    let parent_path = path.parent().with_context(|| format!("{} cannot be made", path.display()))?;
    let (parent, _) = make_directories(parent_path, created, dirs, ids)?;
    let name = path.file_name().with_context(|| format!("{} cannot be made", path.display()))?;
    let parent_fd = parent.as_fd();
    as_maker(ids, || nix::sys::stat::mkdirat(parent_fd, name, Mode::from_bits_truncate(0o700)))
        .with_context(|| format!("making the removed directory {} again (fsuid {} fsgid {})", path.display(), ids.uid, ids.gid))?;
    let st = nix::sys::stat::fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let shown = path.to_string_lossy().into_owned();
    created.record_file(&parent, name, &shown, (st.st_dev, st.st_ino), Created::Directory)?;
    dirs.push((parent.try_clone()?, name.to_owned(), shown));
    tracing::info!(path = %path.display(), "made a removed directory again for a deleted file");
    Ok((open_dir(path)?, true))
}

/// Copies the saved contents into the new file (holes stay holes) and gives it its size.
fn fill(image: &ImageDir, g: &GhostFile, file: &File) -> Result<()> {
    if !g.data_file.is_empty() {
        let data = image.data_file(&g.data_file)?;
        let mut buf = vec![0u8; 4 << 20];
        for (start, end) in data_regions(&data, g.size)? {
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                data.read_exact_at(&mut buf[..n], at)?;
                file.write_all_at(&buf[..n], at)?;
                at += n as u64;
            }
        }
    }
    file.set_len(g.size)?;
    Ok(())
}

/// Owner, then mode (chown clears set-id bits), then times, through /proc/self/fd/N of an
/// O_PATH handle of the very file.
fn give_attributes(through: &str, g: &GhostFile) -> Result<()> {
    use nix::sys::time::TimeSpec;
    nix::unistd::chown(through, Some(g.uid.into()), Some(g.gid.into()))?;
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        through,
        Mode::from_bits_truncate(g.mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?;
    let ts = |ns: i64| TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        through,
        &ts(g.atime_ns),
        &ts(g.mtime_ns),
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )?;
    Ok(())
}

impl Placed {
    /// The identity a restore opens for `file` (see `RestoreCtx::open_identified`): the ghost
    /// as it was made again, by its name now.
    pub fn identity(&self, file: &FileIdentity) -> Result<FileIdentity> {
        let g = self.ghosts.get(&file.ghost_id).with_context(|| format!("{}: no ghost file #{} was made", file.path, file.ghost_id))?;
        Ok(FileIdentity { path: g.path.clone(), dev: g.dev, inode: g.inode, ..file.clone() })
    }

    /// The path a working or root directory recorded as ghost `id` is entered by, and the
    /// device and inode it was made again with.
    pub fn path(&self, id: u32, recorded: &str) -> Result<(String, (u64, u64))> {
        let g = self.ghosts.get(&id).with_context(|| format!("{recorded}: no ghost file #{id} was made"))?;
        Ok((g.path.clone(), (g.dev, g.inode)))
    }

    /// Every description and mapping opened them: the names go again (files first, then the
    /// directories, then those made for them), each only while it still is the ghost.
    pub fn unlink_all(&mut self) -> Result<()> {
        let (dirs, files): (Vec<&Ghost>, Vec<&Ghost>) = self.ghosts.values().partition(|g| g.is_dir);
        for g in files.into_iter().chain(dirs.into_iter().rev()) {
            let st = nix::sys::stat::fstatat(g.directory.as_fd(), g.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .with_context(|| format!("the deleted file made again at {} is gone before the restore could unlink it", g.path))?;
            if (st.st_dev, st.st_ino) != (g.dev, g.inode) {
                bail!("{} is no longer the deleted file made again there", g.path);
            }
            let flag = if g.is_dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
            unlinkat(g.directory.as_fd(), g.name.as_os_str(), flag).with_context(|| format!("unlinking {} again", g.path))?;
            if let Some(remap) = &g.link_remap {
                unlinkat(g.directory.as_fd(), remap.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .with_context(|| format!("removing the --link-remap name of {}", g.path))?;
            }
        }
        for (parent, name, path) in self.directories.drain(..).rev() {
            if let Err(e) = unlinkat(parent.as_fd(), name.as_os_str(), UnlinkatFlags::RemoveDir) {
                tracing::warn!(path, "cannot remove the directory made for a deleted file: {e}");
            }
        }
        self.ghosts.clear();
        Ok(())
    }
}

/// Dump: the working (`which` = "cwd") or root ("root") directory of the process: its path,
/// its ghost id when it was removed (0 otherwise), and its device and inode.
pub fn directory(ctx: &mut super::DumpCtx, which: &str) -> Result<(String, u32, (u64, u64))> {
    let pid = ctx.pid.as_raw();
    let through = format!("/proc/{pid}/{which}");
    let link = std::fs::read_link(&through).with_context(|| format!("pid {pid}: readlink {through}"))?.to_string_lossy().into_owned();
    let meta = std::fs::metadata(&through).with_context(|| format!("pid {pid}: stat {through}"))?;
    let Some(path) = deleted_path(&link) else { return Ok((link, 0, (meta.dev(), meta.ino()))) };
    let what = if which == "cwd" { "working directory" } else { "root directory" };
    let dev = meta.dev();
    if !on_visible_mount(dev) {
        bail!("pid {pid}: its {what} {link} was removed from a mount it cannot see; crust cannot make it again");
    }
    let id = ctx.open_files.state.get::<GhostTable>().record(ctx.image, &format!("pid {pid} ({what})"), path, &through)?;
    // The ghost records the device and inode; the one made again has its own.
    Ok((path.to_owned(), id, (0, 0)))
}

/// Restore: the path a working or root directory is entered by and the device and inode it
/// must have there: as recorded (`id`), or where a removed one was made again.
pub fn entered(ctx: &super::RestoreCtx, recorded: &str, ghost_id: u32, id: (u64, u64)) -> Result<(String, (u64, u64))> {
    if ghost_id == 0 {
        return Ok((recorded.to_owned(), id));
    }
    ctx.ghosts.path(ghost_id, recorded)
}

/// Dump: a mapping of a deleted file (described with its last name and " (deleted)") is
/// recorded as a ghost, through /proc/PID/map_files; its file identity names the ghost.
pub fn mapping(ctx: &mut super::DumpCtx, vma: &mut crate::image::proto::Vma) -> Result<()> {
    let Some(file) = vma.file.as_mut() else { return Ok(()) };
    if !vma.name.ends_with(" (deleted)") {
        return Ok(());
    }
    let pid = ctx.pid.as_raw();
    let who = format!("pid {pid} mapping {:#x}-{:#x}", vma.start, vma.end);
    if !on_visible_mount(file.dev) {
        bail!("{who}: it maps the deleted file {} of a kernel-internal mount; crust cannot make it again", file.path);
    }
    let through = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
    file.ghost_id = ctx.open_files.state.get::<GhostTable>().record(ctx.image, &who, &file.path, &through)?;
    Ok(())
}

/// Restore: what a mapped file's descriptor is kept under (a ghost is not its old path).
pub fn mapped_key(file: &FileIdentity) -> String {
    if file.ghost_id != 0 { format!("ghost #{}", file.ghost_id) } else { file.path.clone() }
}

/// Dump: the identity of the process's executable (`link` is /proc/PID/exe); a deleted one
/// is the ghost its mappings recorded (the same inode).
pub fn executable(ctx: &mut super::DumpCtx, exe_path: &str, link: &str) -> Result<FileIdentity> {
    let Some(path) = deleted_path(exe_path) else { return super::file_check::file_identity(exe_path, link) };
    let pid = ctx.pid.as_raw();
    let dev = std::fs::metadata(link).with_context(|| format!("pid {pid}: stat {link}"))?.dev();
    if !on_visible_mount(dev) {
        bail!("pid {pid}: its executable {exe_path} was deleted from a kernel-internal mount (a memfd?); crust cannot make it again");
    }
    let ghost_id = ctx.open_files.state.get::<GhostTable>().record(ctx.image, &format!("pid {pid} (executable)"), path, link)?;
    Ok(FileIdentity { ghost_id, ..super::file_check::file_identity(path, link)? })
}
