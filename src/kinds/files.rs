//! The fd table, the open file descriptions behind it, and the filesystem context (cwd, root).
//!
//! Dump inspects every fd through a `pidfd_getfd` copy and never reopens a file (reopening a
//! leased file would break the lease). fds sharing one open file description (dup, fork) are
//! found with kcmp and restored as one description again. Anything crust cannot recreate
//! faithfully (sockets, anonymous inodes, pipes with an end outside the image) is refused by
//! pid, fd and kind.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::memory::{FileUse, check_file, file_identity};
use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{self, CharDevice, Fd, Files as FilesRecord, OpenFile, OpenFiles, RegularFile, open_file};
use crate::sys::pidfd::{pidfd_getfd, same_open_file};

pub struct Files;

/// Character devices that hold no state: reopening them by path is a faithful restore.
const STATELESS_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

struct FdInfo {
    pos: u64,
    flags: u32,
}

fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .with_context(|| format!("pid {pid} fd {fd}: reading fdinfo"))?;
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let pos = field("pos:").context("fdinfo without pos")?.parse()?;
    let flags = u32::from_str_radix(field("flags:").context("fdinfo without flags")?, 8)?;
    Ok(FdInfo { pos, flags })
}

/// Every open file description met while dumping a tree, each recorded once. Descriptions are
/// identified across processes with kcmp(KCMP_FILE).
#[derive(Default)]
pub struct OpenFileTable {
    files: Vec<OpenFile>,
    /// (dev, inode) -> (pid, fd, id) of the descriptions seen for that inode.
    by_inode: BTreeMap<(u64, u64), Vec<(i32, i32, u32)>>,
    /// pipe id -> (pid, fd, access mode) of every end seen.
    pipe_ends: BTreeMap<u64, Vec<(i32, i32, u32)>>,
    /// Objects the user declared external (dump --external KEY, e.g. "pipe:[1234]").
    pub externals: Vec<String>,
    /// dump --shell-job: terminals are allowed, and reconnected to crust's at restore.
    pub shell_job: bool,
    /// SysV segments met in mappings (each saved once), by id.
    pub sysv_segments: BTreeMap<i32, crate::image::proto::SysvShm>,
    /// The files the tree holds locks on, and its flock and OFD locks, for the check of
    /// processes outside the tree that lock them too.
    pub locked_files: super::locks::LockedFiles,
    /// description id -> every (pid, fd) that refers to it.
    holders: Holders,
}

/// Every (pid, fd) of the tree referring to each open file description, by description id.
pub type Holders = BTreeMap<u32, Vec<(i32, i32)>>;

impl OpenFileTable {
    /// The description id of the anonymous shared memory object mapped at [start, end) by
    /// `pid`, recording the object (and its contents) the first time any process is seen
    /// mapping it.
    pub fn shared_memory(&mut self, pid: i32, start: u64, end: u64, image: &crate::image::ImageDir) -> Result<u32> {
        let (dev, ino, object) = super::shared_memory::open_object(pid, start, end)?;
        if let Some((_, _, id)) = self.by_inode.get(&(dev, ino)).and_then(|v| v.first()) {
            return Ok(*id);
        }
        let id = self.files.len() as u32 + 1;
        let shm = super::shared_memory::dump(image, &object)
            .with_context(|| format!("pid {pid}: saving shared memory mapped at {start:#x}-{end:#x}"))?;
        self.files.push(OpenFile {
            id,
            flags: libc::O_RDWR as u32,
            position: 0,
            kind: Some(open_file::Kind::SharedMemory(shm)),
            created_with: 0,
            locks: Vec::new(),
            lease: None,
        });
        // Mappings are not fds: fd -1 marks the entry as found through a mapping.
        self.by_inode.entry((dev, ino)).or_default().push((pid, -1, id));
        Ok(id)
    }

    /// Checks what can only be judged once every fd of the tree was seen (both ends of every
    /// pipe inside it, socket peers, epoll and inotify targets, FIFO ends) and completes the
    /// records that depend on it. Runs right after the fds, before any memory is saved: a
    /// refusal must come before the long part of a dump.
    pub fn check_tree(&mut self) -> Result<()> {
        for (pipe_id, ends) in &self.pipe_ends {
            let mode = |m: i32| ends.iter().any(|(_, _, f)| f & libc::O_ACCMODE as u32 == m as u32);
            if mode(libc::O_RDONLY) && mode(libc::O_WRONLY) {
                continue;
            }
            let key = format!("pipe:[{pipe_id}]");
            if !self.externals.contains(&key) {
                let (pid, fd, _) = ends[0];
                bail!(
                    "pid {pid} fd {fd}: {key} has its other end outside the dumped processes; \
                     to reconnect it at restore, dump with --external {key} and restore with --inherit-fd fd[N]:{key}"
                );
            }
            // Its data belongs to whoever holds the other end: nothing to save.
            for file in &mut self.files {
                if let Some(open_file::Kind::Pipe(p)) = &mut file.kind {
                    if p.pipe_id == *pipe_id {
                        p.external = true;
                        p.buffered.clear();
                        file.created_with = 0;
                    }
                }
            }
        }
        let by_inode = &self.by_inode;
        let holder = |id: u32| by_inode.values().flatten().find(|(_, _, i)| *i == id).map(|(pid, fd, _)| (*pid, *fd));
        super::unix_socket::finish(&mut self.files, &holder)?;
        // Registrations and FIFO ends that name other fds or processes.
        super::epoll::finish(&mut self.files, &self.holders)?;
        super::fifo::finish(&self.files, &self.holders)?;
        super::inotify::finish(&mut self.files, &self.holders)?;
        Ok(())
    }

    /// The record of every description, once the tree's mappings added theirs.
    pub fn into_record(self) -> OpenFiles {
        OpenFiles { open_files: self.files }
    }

    /// The description behind `fd` of `pid`, if an earlier fd (of any dumped process) shares it.
    fn find_shared(&self, key: (u64, u64), pid: i32, fd: i32) -> Result<Option<u32>> {
        for (other_pid, other_fd, id) in self.by_inode.get(&key).into_iter().flatten().filter(|(_, fd, _)| *fd >= 0) {
            if same_open_file(pid, fd, *other_pid, *other_fd)? {
                return Ok(Some(*id));
            }
        }
        Ok(None)
    }
}

impl Kind for Files {
    type Record = FilesRecord;

    fn dump(ctx: &mut DumpCtx) -> Result<FilesRecord> {
        let pid = ctx.pid.as_raw();
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort();
        let mut record = FilesRecord::default();
        let table = &mut *ctx.open_files;
        // (file, lock) of the POSIX locks recorded for this process.
        let mut seen_posix: Vec<(String, crate::image::proto::FileLock)> = Vec::new();
        for fd in fds {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .with_context(|| format!("pid {pid} fd {fd}: readlink"))?
                .to_string_lossy()
                .into_owned();
            let info = read_fdinfo(pid, fd)?;
            let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
            let locks = super::locks::fdinfo_locks(&fdinfo);
            let mut description_locks = Vec::new();
            let mut description_lines = Vec::new();
            let mut lease_line = None;
            for line in &locks {
                if line.kind == "LEASE" || line.kind == "DELEG" {
                    lease_line = Some(line.clone());
                    continue;
                }
                let lock = super::locks::record(line).with_context(|| format!("pid {pid} fd {fd} ({link})"))?;
                table.locked_files.insert(line, &link);
                if lock.kind() == crate::image::proto::file_lock::Kind::Posix {
                    // fdinfo of every fd sharing the description shows it: record it once. The
                    // same range and type locked on another file is another lock: compare the
                    // file too (a process cannot hold one lock twice on one file).
                    if !seen_posix.contains(&(line.dev_ino.clone(), lock.clone())) {
                        seen_posix.push((line.dev_ino.clone(), lock.clone()));
                        record.posix_locks.push(crate::image::proto::PosixLock { fd, lock: Some(lock) });
                    }
                } else {
                    description_locks.push(lock);
                    description_lines.push(line.clone());
                }
            }
            let copy = pidfd_getfd(&ctx.pidfd, pid, fd)?;
            let meta = File::from(copy.try_clone()?).metadata().with_context(|| format!("pid {pid} fd {fd}: fstat"))?;
            let key = (meta.dev(), meta.ino());
            let close_on_exec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let shared_id = table.find_shared(key, pid, fd)?;
            // A lease belongs to the description: recorded through its first fd.
            let lease = match (&lease_line, shared_id) {
                (Some(_), None) => super::leases::dump(pid, fd, &link, &copy, ctx.remote)
                    .with_context(|| format!("pid {pid} fd {fd}: the lease on {link}"))?,
                _ => None,
            };
            if let Some(id) = shared_id {
                record.fds.push(Fd { fd, close_on_exec, open_file_id: id });
                table.holders.entry(id).or_default().push((pid, fd));
                continue;
            }
            let id = table.files.len() as u32 + 1;
            let inode_seen = table.by_inode.contains_key(&key);
            let src = FdSource {
                pid,
                fd,
                link: &link,
                meta: &meta,
                copy: &copy,
                fdinfo: &fdinfo,
                image: ctx.image,
                shell_job: table.shell_job,
                inode_seen,
            };
            let (kind, created_with) = describe_open_file(&src)?;
            // Once per description (fds sharing it were skipped above).
            table.locked_files.description_locks.extend(description_lines);
            if let open_file::Kind::Pipe(p) = &kind {
                table.pipe_ends.entry(p.pipe_id).or_default().push((pid, fd, info.flags & libc::O_ACCMODE as u32));
            }
            table.files.push(OpenFile {
                id,
                flags: info.flags & !(libc::O_CLOEXEC as u32),
                position: info.pos,
                kind: Some(kind),
                created_with,
                locks: description_locks,
                lease,
            });
            record.fds.push(Fd { fd, close_on_exec, open_file_id: id });
            table.holders.entry(id).or_default().push((pid, fd));
            table.by_inode.entry(key).or_default().push((pid, fd, id));
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        let root = std::fs::read_link(format!("/proc/{pid}/root"))?;
        record.cwd = cwd.to_string_lossy().into_owned();
        record.root = root.to_string_lossy().into_owned();
        for (what, path) in [("working directory", &record.cwd), ("root directory", &record.root)] {
            if path.ends_with(" (deleted)") {
                bail!("pid {pid}: its {what} {path} was deleted; crust cannot restore it");
            }
        }
        Ok(record)
    }

    /// Places the process's fds: every description it uses was opened earlier, at
    /// `work_fd_floor + id`, by the process that created it for all its holders (see
    /// [`open_descriptions`]) and inherited down the tree.
    fn restore(ctx: &mut RestoreCtx, record: &FilesRecord) -> Result<()> {
        for fd in &record.fds {
            let work = ctx.work_fd_floor as u64 + fd.open_file_id as u64;
            let flags = if fd.close_on_exec { libc::O_CLOEXEC as u64 } else { 0 };
            ctx.remote
                .syscall("dup3", libc::SYS_dup3, &[work, fd.fd as u64, flags])
                .with_context(|| format!("placing fd {} (open file #{})", fd.fd, fd.open_file_id))?;
        }
        ctx.remote.syscall("close_range", libc::SYS_close_range, &[ctx.work_fd_floor as u64, u32::MAX as u64, 0])?;
        // Registrations that name other fds of the process by number need them all in place;
        // inotify watches come after every open of the tree (and then what restoring queued goes).
        super::inotify::add_watches(ctx, record)?;
        super::epoll::register_targets(ctx, record)?;
        super::inotify::drop_restore_events(ctx)?;
        // flock locks this process took through a description another process recreated.
        let mut done = Vec::new();
        for fd in &record.fds {
            let Some(file) = ctx.open_files.open_files.iter().find(|o| o.id == fd.open_file_id) else { continue };
            if done.contains(&file.id) {
                continue;
            }
            done.push(file.id);
            let mine: Vec<_> = file.locks.iter().filter(|l| l.taker_pid == ctx.pid.as_raw() as u32).cloned().collect();
            for lock in mine {
                let name = describe(file);
                super::locks::take(ctx, fd.fd, &lock, &name)?;
            }
        }
        // POSIX locks belong to the process and vanish when it closes any fd of the file: they
        // come last, once no fd will be closed any more.
        for posix in &record.posix_locks {
            let lock = posix.lock.as_ref().context("POSIX lock record without its lock")?;
            let name = record
                .fds
                .iter()
                .find(|f| f.fd == posix.fd)
                .and_then(|f| ctx.open_files.open_files.iter().find(|o| o.id == f.open_file_id))
                .map(describe)
                .unwrap_or_else(|| format!("fd {}", posix.fd));
            super::locks::take(ctx, posix.fd, lock, &name)?;
        }
        // The working directory is entered with crust's credentials, like mapped files: the
        // process had it (it may have entered it before giving up privileges).
        let addr = ctx.remote.put_path(0, &record.cwd)?;
        ctx.remote
            .syscall("chdir", libc::SYS_chdir, &[addr])
            .with_context(|| format!("changing to the working directory {}", record.cwd))?;
        if record.root != "/" {
            let addr = ctx.remote.put_path(0, &record.root)?;
            ctx.remote
                .syscall("chroot", libc::SYS_chroot, &[addr])
                .with_context(|| format!("changing root to {}", record.root))?;
        }
        Ok(())
    }
}

/// Opens `files` in the process of `ctx`, each at `work_fd_floor + id`, with the process's
/// filesystem credentials. Its children forked afterwards inherit them.
pub fn open_descriptions(ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()> {
    super::credentials::enter_fs_identity(ctx)?;
    let mut together = Together::new();
    for file in files {
        let fd = open_description(ctx, file, &mut together)
            .with_context(|| format!("restoring open file #{} ({})", file.id, describe(file)))?;
        let work = ctx.work_fd_floor as u64 + file.id as u64;
        ctx.remote.syscall("dup3", libc::SYS_dup3, &[fd as u64, work, libc::O_CLOEXEC as u64])?;
        // flock and OFD locks belong to the description: taken once, here.
        for lock in &file.locks {
            // A flock lock whose taker holds the description is taken again by the taker.
            if lock.taker_pid == 0 || lock.taker_pid == ctx.pid.as_raw() as u32 {
                super::locks::take(ctx, fd, lock, &describe(file))?;
            }
        }
        if !together.values().flatten().any(|t| *t == fd) {
            ctx.close_in_process(fd)?;
        }
    }
    // The groups' temporary fds (the working copies above are what is kept).
    for fd in together.into_values().flatten() {
        ctx.close_in_process(fd)?;
    }
    super::credentials::leave_fs_identity(ctx)?;
    Ok(())
}

/// What must wait until every process of the tree exists, done by the process that created
/// `files` (it still holds them at their working fds): refilling socket queues, whose messages
/// carry their senders' credentials.
pub fn finish_descriptions(ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()> {
    super::unix_socket::finish_descriptions(ctx, files)
}

fn describe(file: &OpenFile) -> String {
    use open_file::Kind as K;
    match &file.kind {
        Some(K::Regular(r)) => r.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
        Some(K::CharDevice(c)) => c.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
        Some(K::Pipe(p)) => format!("pipe:[{}]", p.pipe_id),
        Some(K::Eventfd(_)) => "eventfd".into(),
        Some(K::Signalfd(_)) => "signalfd".into(),
        Some(K::Timerfd(_)) => "timerfd".into(),
        Some(K::Memfd(m)) => format!("memfd:{}", m.name),
        Some(K::UnixSocket(u)) => format!("socket:[{}]", u.inode),
        Some(K::Epoll(_)) => "eventpoll".into(),
        Some(K::Inotify(_)) => "inotify".into(),
        Some(K::Fifo(f)) => f.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
        Some(K::SharedMemory(m)) => format!("shared memory (inode {})", m.inode),
        Some(K::Tty(t)) => format!("terminal {}", t.path),
        None => "unknown".into(),
    }
}

/// What a file kind's dump sees of one fd of a frozen process.
pub struct FdSource<'a> {
    pub pid: i32,
    pub fd: i32,
    /// The /proc/PID/fd/N link text: a path, "pipe:[N]", "anon_inode:[eventfd]"...
    pub link: &'a str,
    pub meta: &'a std::fs::Metadata,
    /// crust's pidfd_getfd copy of the fd: inspect through it, never reopen the file.
    pub copy: &'a OwnedFd,
    /// The whole /proc/PID/fdinfo/N text.
    pub fdinfo: &'a str,
    pub image: &'a crate::image::ImageDir,
    /// dump --shell-job was given.
    pub shell_job: bool,
    /// Another open file description of the same inode (dev, ino) was recorded before this one
    /// (meaningful for files that cannot be reopened by path, like a memfd; anonymous-inode
    /// kinds all share one inode).
    pub inode_seen: bool,
}

impl FdSource<'_> {
    /// The error for an fd crust cannot restore faithfully, naming pid, fd and kind.
    pub fn refuse(&self, kind: &str) -> anyhow::Error {
        anyhow::anyhow!("pid {} fd {}: {kind} ({}) cannot be checkpointed by crust yet", self.pid, self.fd, self.link)
    }

    /// A `key:` field of fdinfo (first occurrence), trimmed.
    pub fn fdinfo_field(&self, key: &str) -> Option<&str> {
        self.fdinfo.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
    }
}

/// Descriptions created together by one call (see OpenFile.created_with): the temporary fds
/// made for a group, kept until every description of the group was opened, then closed.
pub type Together = BTreeMap<u64, Vec<i32>>;

/// Recognises the kind of the description behind one fd and records it. Returns the kind and
/// its `created_with` group (0 for none).
fn describe_open_file(src: &FdSource) -> Result<(open_file::Kind, u64)> {
    use open_file::Kind as K;
    let through = format!("/proc/{}/fd/{}", src.pid, src.fd);
    let link = src.link;
    let kind = match src.meta.mode() & libc::S_IFMT {
        libc::S_IFREG if link.starts_with("/memfd:") && link.ends_with(" (deleted)") => K::Memfd(super::memfd::dump(src)?),
        libc::S_IFREG => {
            if link.ends_with(" (deleted)") {
                return Err(src.refuse("a deleted file"));
            }
            if !link.starts_with('/') {
                return Err(src.refuse("an anonymous-inode file"));
            }
            K::Regular(RegularFile { file: Some(file_identity(link, &through)?) })
        }
        libc::S_IFCHR if is_terminal(src.meta.rdev()) => {
            if !src.shell_job {
                return Err(anyhow::anyhow!(
                    "pid {} fd {}: a terminal ({link}): a program started from a shell is dumped with --shell-job (-j)",
                    src.pid,
                    src.fd
                ));
            }
            K::Tty(crate::image::proto::Tty { path: link.to_string(), rdev: src.meta.rdev() })
        }
        libc::S_IFCHR => {
            if !STATELESS_DEVICES.contains(&link) {
                return Err(src.refuse("a character device with state (terminal or other device)"));
            }
            K::CharDevice(CharDevice { file: Some(file_identity(link, &through)?) })
        }
        libc::S_IFIFO if link.starts_with('/') => {
            let (fifo, group) = super::fifo::dump(src)?;
            return Ok((K::Fifo(fifo), group));
        }
        libc::S_IFIFO => {
            let pipe = super::pipes::dump(src)?;
            let group = pipe.pipe_id;
            return Ok((K::Pipe(pipe), group));
        }
        libc::S_IFSOCK => {
            let (socket, group) = super::unix_socket::dump(src)?;
            return Ok((K::UnixSocket(socket), group));
        }
        libc::S_IFDIR => K::Regular(RegularFile { file: Some(file_identity(link, &through)?) }),
        _ => match link {
            "anon_inode:[eventfd]" => K::Eventfd(super::eventfd::dump(src)?),
            "anon_inode:[signalfd]" => K::Signalfd(super::signalfd::dump(src)?),
            "anon_inode:[timerfd]" => K::Timerfd(super::timerfd::dump(src)?),
            "anon_inode:[eventpoll]" => K::Epoll(super::epoll::dump(src)?),
            "anon_inode:inotify" => K::Inotify(super::inotify::dump(src)?),
            _ if link.starts_with("anon_inode:") => return Err(src.refuse("an anonymous-inode file")),
            _ => return Err(src.refuse("an unknown file kind")),
        },
    };
    Ok((kind, 0))
}

/// Creates one description in the process and returns a temporary fd for it.
fn open_description(ctx: &mut RestoreCtx, file: &OpenFile, together: &mut Together) -> Result<i32> {
    use open_file::Kind as K;
    let flags = file.flags as i32;
    match file.kind.as_ref().context("open file without a kind")? {
        K::Regular(RegularFile { file: Some(f) }) | K::CharDevice(CharDevice { file: Some(f) }) => {
            // Creation and truncation flags are not part of an open description; never let them
            // act on the file again.
            let open_flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
            let fd = if matches!(file.kind, Some(K::Regular(_))) {
                // The very file the process had, or nothing (a path swapped since the check).
                // From a sealed image, as root: the process held it (it may have opened it
                // before it gave up privileges, as daemons do with their logs); from an image
                // taken on trust (--trust-image), only with the image's credentials.
                if ctx.image_sealed {
                    super::credentials::leave_fs_identity(ctx)?;
                }
                let opened = ctx.open_identified(f, open_flags | libc::O_CLOEXEC, "open file");
                if ctx.image_sealed {
                    super::credentials::enter_fs_identity(ctx)?;
                }
                opened?
            } else {
                // A stateless device: any node of the same device number will do.
                ctx.open_in_process_no_symlinks(&f.path, open_flags | libc::O_CLOEXEC)?
            };
            if f.mode & libc::S_IFMT == libc::S_IFREG || f.mode & libc::S_IFMT == libc::S_IFDIR {
                ctx.remote.syscall("lseek", libc::SYS_lseek, &[fd as u64, file.position, libc::SEEK_SET as u64])?;
            }
            Ok(fd)
        }
        K::Pipe(p) => super::pipes::open(ctx, file, p, together),
        K::Eventfd(e) => super::eventfd::open(ctx, file, e),
        K::Signalfd(m) => super::signalfd::open(ctx, file, m),
        K::Timerfd(t) => super::timerfd::open(ctx, file, t),
        K::Memfd(m) => super::memfd::open(ctx, file, m),
        K::UnixSocket(u) => super::unix_socket::open(ctx, file, u, together),
        K::Epoll(e) => super::epoll::open(ctx, file, e),
        K::Inotify(i) => super::inotify::open(ctx, file, i),
        K::Fifo(f) => super::fifo::open(ctx, file, f, together),
        K::SharedMemory(m) => super::shared_memory::open(ctx, file, m),
        K::Tty(_) => {
            // The restored tree lives in crust's session: /dev/tty is crust's terminal.
            let open_flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) | libc::O_NOCTTY;
            ctx.open_in_process("/dev/tty", open_flags | libc::O_CLOEXEC)
        }
        _ => bail!("open file record without a file"),
    }
}

/// What restore checks about files before creating any process.
pub fn precheck(record: &OpenFiles) -> Result<()> {
    for file in &record.open_files {
        match &file.kind {
            Some(open_file::Kind::Regular(RegularFile { file: Some(f) })) => {
                if f.mode & libc::S_IFMT == libc::S_IFREG {
                    // An O_APPEND description writes at the end whatever its offset (a log
                    // truncated by its rotation is fine); any other must still reach its offset.
                    let append = file.flags & libc::O_APPEND as u32 != 0;
                    let usage = FileUse::Data { needed: if append { 0 } else { file.position } };
                    check_file(f, "open file", usage).map_err(|e| e.context(format!("open file #{}", file.id)))?;
                }
            }
            Some(open_file::Kind::CharDevice(CharDevice { file: Some(f) })) => {
                let meta = std::fs::metadata(&f.path).with_context(|| format!("device {} is gone", f.path))?;
                if meta.rdev() != f.rdev {
                    bail!("device {} is no longer the same device", f.path);
                }
            }
            Some(open_file::Kind::Fifo(f)) => super::fifo::precheck(f).map_err(|e| e.context(format!("open file #{}", file.id)))?,
            Some(open_file::Kind::Inotify(i)) => {
                super::inotify::precheck(i).map_err(|e| e.context(format!("open file #{}", file.id)))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Terminals: the console (major 4), pseudo-terminal slaves (136-143) and /dev/tty (5:0).
fn is_terminal(rdev: u64) -> bool {
    let major = libc::major(rdev);
    major == 4 || (136..=143).contains(&major) || rdev == libc::makedev(5, 0)
}

/// Whether the image holds terminals of a shell job.
pub fn has_terminals(record: &OpenFiles) -> bool {
    record.open_files.iter().any(|f| matches!(f.kind, Some(open_file::Kind::Tty(_))))
}

/// Raw data files the open file descriptions refer to (memfd contents).
pub fn data_files(record: &OpenFiles) -> Vec<String> {
    record
        .open_files
        .iter()
        .filter_map(|f| match &f.kind {
            Some(open_file::Kind::Memfd(m)) if !m.data_file.is_empty() => Some(m.data_file.clone()),
            Some(open_file::Kind::SharedMemory(m)) => Some(m.data_file.clone()),
            _ => None,
        })
        .collect()
}

/// Highest fd number in the record.
pub fn max_fd(record: &proto::Files) -> i32 {
    record.fds.iter().map(|f| f.fd).max().unwrap_or(2)
}
