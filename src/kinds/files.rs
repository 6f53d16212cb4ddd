//! The fd table, the open file descriptions behind it, and the filesystem context (cwd, root).
//!
//! Dump inspects every fd through a `pidfd_getfd` copy and never reopens a file (reopening a
//! leased file would break the lease). fds sharing one open file description (dup, fork) are
//! found with kcmp and restored as one description again. Anything crust cannot recreate
//! faithfully (sockets, anonymous inodes, pipes with an end outside the image) is refused by
//! pid, fd and kind.
//!
//! What a description is, how it is recorded and opened again, is its kind's business: this
//! module hands each new description to the first kind of [`fd::KINDS`] that recognises it,
//! and at restore to the kind that owns its record, and names no kind itself. It keeps what
//! every description has: the fds and processes sharing it, its flags and offset, its flock
//! and OFD locks, its lease, and the POSIX locks of each process.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::fd::{self, FdSource, Holders, KindState, Together, WholeTree};
use super::locks::{LockLine, LockedFiles};
use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{self, Fd, FileLock, Files as FilesRecord, OpenFile, OpenFiles, open_file};
use crate::sys::pidfd::{pidfd_getfd, same_open_file};

pub struct Files;

struct FdInfo {
    pos: u64,
    flags: u32,
}

fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).with_context(|| format!("pid {pid} fd {fd}: reading fdinfo"))?;
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
    /// Objects the user declared external (dump --external KEY, e.g. "pipe:[1234]").
    pub externals: Vec<String>,
    /// dump --shell-job: terminals are allowed, and reconnected to crust's at restore.
    pub shell_job: bool,
    /// What the reference tool's permission options allow (--tcp-established...).
    pub permits: crate::permits::Permits,
    /// What the kinds keep while the tree is dumped (pipe ends, SysV segments, the locked
    /// files...), each under its own type.
    pub state: KindState,
    /// description id -> every (pid, fd) that refers to it.
    holders: Holders,
    /// Every process of the dumped tree, zombies included.
    pub tree_pids: std::collections::BTreeSet<i32>,
    /// (carrier id, crust's fds) of the descriptions in flight in a recorded description,
    /// recorded once every fd of the tree was seen (see [`OpenFileTable::record_carried`]).
    carried: Vec<(u32, Vec<std::os::fd::OwnedFd>)>,
    /// crust's fds of the descriptions in flight, kept open while the tree is dumped:
    /// `by_inode` names them by crust's pid and fd for kcmp.
    carried_fds: Vec<std::os::fd::OwnedFd>,
}

impl OpenFileTable {
    /// The description id of an object found through a mapping of `pid` rather than an fd (an
    /// anonymous shared memory object), by its (dev, inode): `record` makes its description the
    /// first time any process is seen with the object.
    pub fn mapped_description(&mut self, pid: i32, key: (u64, u64), record: impl FnOnce() -> Result<OpenFile>) -> Result<u32> {
        if let Some((_, _, id)) = self.by_inode.get(&key).and_then(|v| v.first()) {
            return Ok(*id);
        }
        let id = self.files.len() as u32 + 1;
        self.files.push(OpenFile { id, ..record()? });
        // Mappings are not fds: fd -1 marks the entry as found through a mapping.
        self.by_inode.entry(key).or_default().push((pid, -1, id));
        Ok(id)
    }

    /// Lets every kind check what can only be judged once every fd of the tree was seen (both
    /// ends of every pipe inside it, socket peers, epoll and inotify targets, FIFO ends) and
    /// complete the records that depend on it. Runs right after the fds, before any memory is
    /// saved: a refusal must come before the long part of a dump.
    pub fn check_tree(&mut self, image: &crate::image::ImageDir) -> Result<()> {
        self.record_carried(image)?;
        let tree = WholeTree { holders: &self.holders, externals: &self.externals, pids: &self.tree_pids };
        for kind in fd::KINDS {
            kind.check_tree(&mut self.files, &tree, &mut self.state)?;
        }
        Ok(())
    }

    /// Every signal owner (F_SETOWN) is a thread, process or process group of the tree
    /// (`tasks`: every thread id, `groups`: every process group): another could be a different
    /// process after restore, or not exist.
    pub fn check_signal_owners(&self, tasks: &std::collections::BTreeSet<i32>, groups: &std::collections::BTreeSet<i32>) -> Result<()> {
        for f in &self.files {
            let Some(o) = f.signal_owner.as_ref().filter(|o| o.id != 0) else { continue };
            let (inside, what) = match o.r#type {
                0 => (tasks.contains(&o.id), "thread"),
                1 => (tasks.contains(&o.id), "process"),
                2 => (groups.contains(&o.id), "process group"),
                _ => (false, "owner of an unknown type"),
            };
            if !inside {
                let (pid, fd) = self.holders.get(&f.id).and_then(|h| h.first().copied()).unwrap_or((0, -1));
                bail!(
                    "pid {pid} fd {fd}: {} sends its I/O signals (F_SETOWN) to {what} {}, which is not in the dumped tree; \
                     crust cannot restore that owner",
                    describe(f),
                    o.id
                );
            }
        }
        Ok(())
    }

    /// Records the descriptions in flight in the tree's sockets (SCM_RIGHTS), once every fd of
    /// the tree was seen: one that a process also holds is that process's description (found
    /// with kcmp from crust's copy), else a description of its own, recorded by its kind
    /// through crust's fd. Each names the descriptions carrying it (`in_flight_in`), and the
    /// carrier gets their ids. Descriptions in flight inside descriptions in flight are
    /// followed a few levels deep.
    fn record_carried(&mut self, image: &crate::image::ImageDir) -> Result<()> {
        for _ in 0..8 {
            let pending = std::mem::take(&mut self.carried);
            if pending.is_empty() {
                return Ok(());
            }
            for (carrier, fds) in pending {
                let mut ids = Vec::with_capacity(fds.len());
                for copy in fds {
                    let id = self.carried_description(carrier, &copy, image)?;
                    let file = &mut self.files[id as usize - 1];
                    if !file.in_flight_in.contains(&carrier) {
                        file.in_flight_in.push(carrier);
                    }
                    ids.push(id);
                    self.carried_fds.push(copy);
                }
                let file = &mut self.files[carrier as usize - 1];
                fd::kind_of_file(file)?.resolve_carried(file, &ids)?;
            }
        }
        bail!("descriptions in flight inside descriptions in flight, more than 8 levels deep")
    }

    /// The description id of one description in flight in description `carrier`.
    fn carried_description(&mut self, carrier: u32, copy: &std::os::fd::OwnedFd, image: &crate::image::ImageDir) -> Result<u32> {
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let raw = copy.as_raw_fd();
        let meta = File::from(copy.try_clone()?).metadata().context("fstat of a descriptor in flight")?;
        let key = (meta.dev(), meta.ino());
        if let Some(id) = self.find_shared(key, me, raw)? {
            return Ok(id);
        }
        let (pid, fd) = self.holders.get(&carrier).and_then(|h| h.first().copied()).unwrap_or((0, -1));
        let carrier_name = describe(&self.files[carrier as usize - 1]);
        let link = std::fs::read_link(format!("/proc/self/fd/{raw}"))?.to_string_lossy().into_owned();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))?;
        let refuse = |what: &str| {
            anyhow::anyhow!(
                "pid {pid} fd {fd}: {carrier_name} carries {link} in flight (SCM_RIGHTS), held by no process of the tree, \
                 {what}; crust cannot checkpoint it"
            )
        };
        if !super::locks::fdinfo_locks(&fdinfo).is_empty() {
            return Err(refuse("with locks or a lease on it"));
        }
        let id = self.files.len() as u32 + 1;
        let src = FdSource {
            pid: me,
            fd: raw,
            link: &link,
            meta: &meta,
            copy,
            fdinfo: &fdinfo,
            image,
            shell_job: self.shell_job,
            permits: &self.permits,
            inode_seen: self.by_inode.contains_key(&key),
        };
        let kind = fd::KINDS.iter().find(|k| k.recognises(&src));
        if kind.is_some_and(|k| !k.in_flight()) {
            return Err(refuse(&format!("a kind ({}) whose restore needs a process holding it", kind.unwrap().name())));
        }
        let dumped =
            record_description(&src, &mut self.state).map_err(|e| refuse("which crust cannot record").context(format!("{e:#}")))?;
        let info = read_fdinfo(me, raw)?;
        self.files.push(OpenFile {
            id,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            position: info.pos,
            kind: Some(dumped.record),
            created_with: dumped.created_with,
            signal_owner: signal_owner(copy)?,
            ..Default::default()
        });
        self.by_inode.entry(key).or_default().push((me, raw, id));
        if !dumped.carried.is_empty() {
            self.carried.push((id, dumped.carried));
        }
        Ok(id)
    }

    /// The record of every description, once the tree's mappings added theirs (the deleted
    /// files are added from the ghost table of `state`).
    pub fn into_record(self) -> OpenFiles {
        OpenFiles { open_files: self.files, ghosts: Vec::new() }
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
        let mut fds: Vec<i32> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        fds.sort();
        let mut record = FilesRecord::default();
        let mut seen_posix = Vec::new();
        for fd in fds {
            dump_fd(ctx, fd, &mut record, &mut seen_posix)?;
        }
        // A removed working or root directory is a ghost (made again at restore).
        // Device and inode too: restore enters them only if the path still leads there.
        (record.cwd, record.cwd_ghost_id, (record.cwd_dev, record.cwd_inode)) = super::ghost::directory(ctx, "cwd")?;
        (record.root, record.root_ghost_id, (record.root_dev, record.root_inode)) = super::ghost::directory(ctx, "root")?;
        Ok(record)
    }

    /// Places the process's fds: every description it uses was opened earlier, at
    /// `work_fd_floor + id`, by the process that created it for all its holders (see
    /// [`open_descriptions`]) and inherited down the tree.
    fn restore(ctx: &mut RestoreCtx, record: &FilesRecord) -> Result<()> {
        restore_table(ctx, record, true)
    }
}

/// [`Files::restore`]; `place` false for a process sharing its parent's fd table (CLONE_FILES),
/// restored after it: the parent placed the fds and closed the working ones, in the one table
/// both use; the rest (registrations, locks, cwd) is the process's own.
pub fn restore_table(ctx: &mut RestoreCtx, record: &FilesRecord, place: bool) -> Result<()> {
    if place {
        for fd in &record.fds {
            let work = ctx.work_fd_floor as u64 + fd.open_file_id as u64;
            let flags = if fd.close_on_exec { libc::O_CLOEXEC as u64 } else { 0 };
            ctx.remote
                .syscall("dup3", libc::SYS_dup3, &[work, fd.fd as u64, flags])
                .with_context(|| format!("placing fd {} (open file #{})", fd.fd, fd.open_file_id))?;
        }
        ctx.remote.syscall("close_range", libc::SYS_close_range, &[ctx.work_fd_floor as u64, u32::MAX as u64, 0])?;
    }
    // Registrations that name other fds of the process by number need them all in place
    // (every open of the tree is done by now); then what restoring queued goes.
    for kind in fd::KINDS {
        kind.fds_in_place(ctx, record)?;
    }
    for kind in fd::KINDS {
        kind.after_files(ctx)?;
    }
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
    enter_directories(ctx, record)
}

/// The working and root directories: both opened first (from crust's root), each checked to
/// be the directory the process had; then the root entered by fchdir + chroot("."), then the
/// working directory by fchdir. Entered with crust's credentials, like mapped files, from a
/// sealed image: the process had them (it may have entered them before giving up privileges).
fn enter_directories(ctx: &mut RestoreCtx, record: &FilesRecord) -> Result<()> {
    let cwd = open_directory(ctx, "working directory", &record.cwd, record.cwd_ghost_id, (record.cwd_dev, record.cwd_inode))?;
    if record.root != "/" || record.root_ghost_id != 0 {
        let root = open_directory(ctx, "root directory", &record.root, record.root_ghost_id, (record.root_dev, record.root_inode))?;
        ctx.remote
            .syscall("fchdir(root directory)", libc::SYS_fchdir, &[root as u64])
            .with_context(|| format!("entering the root directory {}", record.root))?;
        let dot = ctx.remote.put_path(0, ".")?;
        ctx.remote.syscall("chroot(\".\")", libc::SYS_chroot, &[dot]).with_context(|| format!("changing root to {}", record.root))?;
        ctx.close_in_process(root)?;
    }
    ctx.remote
        .syscall("fchdir(working directory)", libc::SYS_fchdir, &[cwd as u64])
        .with_context(|| format!("changing to the working directory {}", record.cwd))?;
    ctx.close_in_process(cwd)
}

/// Opens a working or root directory in the process (O_PATH, no symlink on the way; with the
/// image's filesystem ids from an image taken on trust, so an edited image cannot name one its
/// uid cannot reach) and checks that it is the directory the process had (device and inode; a
/// removed one: where it was made again). Older images hold no device and inode: the path
/// alone, still with no symlink.
fn open_directory(ctx: &mut RestoreCtx, what: &str, recorded: &str, ghost_id: u32, id: (u64, u64)) -> Result<i32> {
    let (path, id) = super::ghost::entered(ctx, recorded, ghost_id, id)?;
    let trusted = !ctx.image_sealed;
    if trusted {
        super::credentials::enter_fs_identity(ctx)?;
    }
    // "DIR/." makes the kernel check search permission on DIR itself too (an O_PATH open of
    // DIR alone checks only its parents): on trust, a directory the image's ids cannot enter
    // is refused (EACCES).
    let entry = format!("{}/.", path.trim_end_matches('/'));
    let opened = ctx.open_in_process_no_symlinks(&entry, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
    if trusted {
        super::credentials::leave_fs_identity(ctx)?;
    }
    let fd = opened.with_context(|| format!("pid {}: its {what} {path} (a symlink on its path is refused)", ctx.pid))?;
    if id == (0, 0) {
        return Ok(fd);
    }
    let found = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid)).map(|m| (m.dev(), m.ino()));
    if found.as_ref().is_ok_and(|f| *f == id) {
        return Ok(fd);
    }
    ctx.close_in_process(fd)?;
    bail!(
        "pid {}: its {what} {path} is another directory now ({found:?}; the process had device {:#x} inode {}): \
         crust refuses to put the process elsewhere",
        ctx.pid,
        id.0,
        id.1
    )
}

/// One fd of a process: its description is recorded (by its kind) unless an earlier fd of the
/// tree shares it. `seen_posix` holds the (file, lock) of the POSIX locks recorded for the
/// process so far.
fn dump_fd(ctx: &mut DumpCtx, fd: i32, record: &mut FilesRecord, seen_posix: &mut Vec<(String, FileLock)>) -> Result<()> {
    let pid = ctx.pid.as_raw();
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .with_context(|| format!("pid {pid} fd {fd}: readlink"))?
        .to_string_lossy()
        .into_owned();
    let info = read_fdinfo(pid, fd)?;
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let table = &mut *ctx.open_files;
    let locks = sort_locks(table, (pid, fd), &link, &fdinfo, record, seen_posix)?;
    let copy = pidfd_getfd(&ctx.pidfd, pid, fd)?;
    let meta = File::from(copy.try_clone()?).metadata().with_context(|| format!("pid {pid} fd {fd}: fstat"))?;
    let key = (meta.dev(), meta.ino());
    let close_on_exec = info.flags & libc::O_CLOEXEC as u32 != 0;
    let shared_id = table.find_shared(key, pid, fd)?;
    // A lease belongs to the description: recorded through its first fd.
    let lease = match (&locks.lease_line, shared_id) {
        (Some(_), None) => {
            super::leases::dump(pid, fd, &link, &copy, ctx.remote).with_context(|| format!("pid {pid} fd {fd}: the lease on {link}"))?
        }
        _ => None,
    };
    if let Some(id) = shared_id {
        record.fds.push(Fd { fd, close_on_exec, open_file_id: id });
        table.holders.entry(id).or_default().push((pid, fd));
        return Ok(());
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
        permits: &table.permits,
        inode_seen,
    };
    let dumped = record_description(&src, &mut table.state)?;
    // Once per description (fds sharing it were skipped above).
    table.state.get::<LockedFiles>().description_locks.extend(locks.description_lines);
    table.files.push(OpenFile {
        id,
        flags: info.flags & !(libc::O_CLOEXEC as u32),
        position: info.pos,
        kind: Some(dumped.record),
        created_with: dumped.created_with,
        locks: locks.description,
        lease,
        in_flight_in: Vec::new(),
        signal_owner: signal_owner(&copy).with_context(|| format!("pid {pid} fd {fd}: its signal owner"))?,
    });
    if !dumped.carried.is_empty() {
        table.carried.push((id, dumped.carried));
    }
    record.fds.push(Fd { fd, close_on_exec, open_file_id: id });
    table.holders.entry(id).or_default().push((pid, fd));
    table.by_inode.entry(key).or_default().push((pid, fd, id));
    Ok(())
}

/// The SIGIO owner and signal of a description (read through crust's copy: they belong to
/// the description), if either was set.
fn signal_owner(copy: &std::os::fd::OwnedFd) -> Result<Option<proto::SignalOwner>> {
    use std::os::fd::AsRawFd;
    // An O_PATH description takes no fcntl of these (EBADF): it has no owner.
    let (kind, id) = match crate::sys::get_owner_ex(copy.as_raw_fd()) {
        Err(nix::errno::Errno::EBADF) => return Ok(None),
        other => other.context("F_GETOWN_EX")?,
    };
    let signal = crate::sys::get_sig(copy.as_raw_fd()).context("F_GETSIG")?;
    Ok((id != 0 || signal != 0).then_some(proto::SignalOwner { r#type: kind, id, signal }))
}

/// The lock lines of one fd's fdinfo, sorted out.
struct FdLocks {
    /// A lease (or delegation) held through the description.
    lease_line: Option<LockLine>,
    /// The description's flock and OFD locks, and their fdinfo lines.
    description: Vec<FileLock>,
    description_lines: Vec<LockLine>,
}

/// Sorts the locks fdinfo shows for fd `at` (pid, fd) whose link is `link`: the process's
/// POSIX locks go straight into `record`, once each (every fd of the file shows them), and
/// every locked file is noted for the check of lockers outside the tree.
fn sort_locks(
    table: &mut OpenFileTable,
    (pid, fd): (i32, i32),
    link: &str,
    fdinfo: &str,
    record: &mut FilesRecord,
    seen_posix: &mut Vec<(String, FileLock)>,
) -> Result<FdLocks> {
    let mut sorted = FdLocks { lease_line: None, description: Vec::new(), description_lines: Vec::new() };
    for line in &super::locks::fdinfo_locks(fdinfo) {
        if line.kind == "LEASE" || line.kind == "DELEG" {
            sorted.lease_line = Some(line.clone());
            continue;
        }
        let lock = super::locks::record(line).with_context(|| format!("pid {pid} fd {fd} ({link})"))?;
        table.state.get::<LockedFiles>().insert(line, link);
        if lock.kind() == proto::file_lock::Kind::Posix {
            // The same range and type locked on another file is another lock: compare the file
            // too (a process cannot hold one lock twice on one file).
            if !seen_posix.contains(&(line.dev_ino.clone(), lock)) {
                seen_posix.push((line.dev_ino.clone(), lock));
                record.posix_locks.push(proto::PosixLock { fd, lock: Some(lock) });
            }
        } else {
            sorted.description.push(lock);
            sorted.description_lines.push(line.clone());
        }
    }
    Ok(sorted)
}

/// Opens `files` in the process of `ctx`, each at `work_fd_floor + id`, with the process's
/// filesystem credentials. Its children forked afterwards inherit them.
pub fn open_descriptions(ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()> {
    super::credentials::enter_fs_identity(ctx)?;
    let mut together = Together::new();
    for file in files {
        let fd =
            open_description(ctx, file, &mut together).with_context(|| format!("restoring open file #{} ({})", file.id, describe(file)))?;
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

/// Whether `file` can be created now, while the tree is being created (see
/// [`fd::FdKind::can_open_now`]); descriptions created together always can.
pub fn can_open_now(file: &OpenFile) -> bool {
    file.created_with != 0 || fd::kind_of_file(file).map(|k| k.can_open_now(file)).unwrap_or(true)
}

/// What the kinds do in a process once every thread of the tree exists (see
/// [`fd::FdKind::after_threads`]).
pub fn after_threads(ctx: &mut RestoreCtx, record: &FilesRecord) -> Result<()> {
    for kind in fd::KINDS {
        kind.after_threads(ctx, record)?;
    }
    Ok(())
}

/// What must wait until every process of the tree exists, done by the process that created
/// `files` (it still holds them at their working fds): refilling socket queues, whose messages
/// carry their senders' credentials.
pub fn finish_descriptions(ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()> {
    for kind in fd::KINDS {
        kind.finish_descriptions(ctx, files)?;
    }
    Ok(())
}

/// O_ASYNC and the I/O signal owner (F_SETOWN_EX, F_SETSIG) of the descriptions behind `mine`,
/// fds of this process that are each the first fd of the image referring to its description.
/// Done last for the process, with its own credentials (the kernel checks the setter's against
/// the receiver's when it sends the signal), once every process and thread exists (the owner
/// may be any of them). O_ASYNC is turned off and on again through that fd: the kernel then
/// registers the description for SIGIO under that fd number (what si_fd reports), whatever a
/// kind's open did with a temporary fd.
pub fn restore_signal_owners(ctx: &mut RestoreCtx, mine: &[&proto::Fd]) -> Result<()> {
    const F_SETSIG: u64 = 10;
    for fd in mine {
        let Some(file) = ctx.open_files.open_files.iter().find(|o| o.id == fd.open_file_id) else { continue };
        let async_io = file.flags & libc::O_ASYNC as u32 != 0;
        if !async_io && file.signal_owner.is_none() {
            continue;
        }
        let name = describe(file);
        let n = fd.fd as u64;
        if let Some(o) = &file.signal_owner {
            let r = &mut *ctx.remote;
            if o.signal != 0 {
                r.syscall("fcntl(F_SETSIG)", libc::SYS_fcntl, &[n, F_SETSIG, o.signal as u64])
                    .with_context(|| format!("fd {} ({name}): F_SETSIG {}", fd.fd, o.signal))?;
            }
            let mut owner = o.r#type.to_ne_bytes().to_vec();
            owner.extend_from_slice(&o.id.to_ne_bytes());
            let at = r.put(0, &owner)?;
            r.syscall("fcntl(F_SETOWN_EX)", libc::SYS_fcntl, &[n, crate::sys::F_SETOWN_EX as u64, at])
                .with_context(|| format!("fd {} ({name}): its signal owner (type {}, id {})", fd.fd, o.r#type, o.id))?;
        }
        if async_io {
            let r = &mut *ctx.remote;
            let flags = r.syscall("fcntl(F_GETFL)", libc::SYS_fcntl, &[n, libc::F_GETFL as u64])?;
            let off = flags & !(libc::O_ASYNC as u64);
            r.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[n, libc::F_SETFL as u64, off])?;
            r.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[n, libc::F_SETFL as u64, off | libc::O_ASYNC as u64])
                .with_context(|| format!("fd {} ({name}): O_ASYNC", fd.fd))?;
        }
    }
    Ok(())
}

/// How errors name a description (a path, "pipe:[N]"...).
pub fn describe(file: &OpenFile) -> String {
    match file.kind.as_ref().and_then(fd::kind_of) {
        Some(kind) => kind.describe(file),
        None => "unknown".into(),
    }
}

/// The key of the object outside the tree a description stands for (given at restore with
/// --inherit-fd fd[N]:KEY), if it is one.
pub fn external_key(file: &OpenFile) -> Option<String> {
    file.kind.as_ref().and_then(fd::kind_of)?.external_key(file)
}

/// Refuses, before the tree is frozen, what the kinds can tell from the fds of `pid` alone
/// (a deleted file, a TCP socket, a terminal without --shell-job, an unknown kind...): a tree
/// that will be refused is never stopped. Nothing of the process is touched (crust inspects
/// its own copies of the fds). The dump makes the same checks again once frozen.
pub fn refuse_early(
    pid: i32,
    image: &crate::image::ImageDir,
    shell_job: bool,
    permits: &crate::permits::Permits,
    seen: &mut Vec<fd::SeenFd>,
) -> Result<()> {
    let Ok(pidfd) = crate::sys::pidfd::pidfd_open(pid) else { return Ok(()) }; // gone: the freeze says so
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Ok(()) };
    for fd in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        // An fd closed meanwhile is simply not there any more.
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else { continue };
        let link = link.to_string_lossy().into_owned();
        let Ok(fdinfo) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        let Ok(copy) = pidfd_getfd(&pidfd, pid, fd) else { continue };
        let Ok(meta) = File::from(copy.try_clone()?).metadata() else { continue };
        seen.push(fd::SeenFd { pid, fd, link: link.clone(), flags: fdinfo_flags(&fdinfo), dev: meta.dev(), inode: meta.ino() });
        let src =
            FdSource { pid, fd, link: &link, meta: &meta, copy: &copy, fdinfo: &fdinfo, image, shell_job, permits, inode_seen: false };
        match fd::KINDS.iter().find(|kind| kind.recognises(&src)) {
            Some(kind) => kind.refuse_early(&src)?,
            None => return record_description(&src, &mut KindState::default()).map(drop),
        }
    }
    Ok(())
}

/// Before the freeze, the refusals that need every fd of the tree (see FdKind::refuse_early_tree).
pub fn refuse_early_tree(seen: &[fd::SeenFd], externals: &[String]) -> Result<()> {
    fd::KINDS.iter().try_for_each(|kind| kind.refuse_early_tree(seen, externals))
}

/// The `flags:` line of an fdinfo (octal).
fn fdinfo_flags(fdinfo: &str) -> u32 {
    fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|v| u32::from_str_radix(v.trim(), 8).ok()).unwrap_or(0)
}

/// Recognises the kind of the description behind one fd and records it.
fn record_description(src: &FdSource, state: &mut KindState) -> Result<fd::Dumped<open_file::Kind>> {
    match fd::KINDS.iter().find(|kind| kind.recognises(src)) {
        Some(kind) => kind.dump(src, state),
        None if src.link.starts_with("anon_inode:") => Err(src.refuse("an anonymous-inode file")),
        None => Err(src.refuse("an unknown file kind")),
    }
}

/// Creates one description in the process and returns a temporary fd for it.
fn open_description(ctx: &mut RestoreCtx, file: &OpenFile, together: &mut Together) -> Result<i32> {
    fd::kind_of_file(file)?.open(ctx, file, together)
}

/// What restore checks about files before creating any process.
pub fn precheck(record: &OpenFiles) -> Result<()> {
    for file in &record.open_files {
        if let Some(kind) = file.kind.as_ref().and_then(fd::kind_of) {
            kind.precheck(file)?;
        }
    }
    Ok(())
}

/// What the kinds do in a process once its session and group are set (see
/// [`fd::FdKind::session_set`]).
pub fn session_set(ctx: &mut RestoreCtx, before_forks: bool) -> Result<()> {
    for kind in fd::KINDS {
        kind.session_set(ctx, before_forks)?;
    }
    Ok(())
}

/// What the kinds do in a process once every process group exists.
pub fn groups_exist(ctx: &mut RestoreCtx) -> Result<()> {
    for kind in fd::KINDS {
        kind.groups_exist(ctx)?;
    }
    Ok(())
}

/// Processes that need a description created before they fork although they hold no fd of
/// it (see [`fd::FdKind::needed_by`]).
pub fn needed_by(file: &OpenFile) -> Vec<u32> {
    file.kind.as_ref().and_then(fd::kind_of).map(|k| k.needed_by(file)).unwrap_or_default()
}

/// Raw data files the open file descriptions refer to (memfd contents...).
pub fn data_files(record: &OpenFiles) -> Vec<String> {
    let named = |f: &OpenFile| f.kind.as_ref().and_then(fd::kind_of).map(|k| k.data_files(f)).unwrap_or_default();
    let mut names: Vec<String> = record.open_files.iter().flat_map(named).collect();
    names.extend(super::ghost::data_files(&record.ghosts));
    names
}

/// `crust show`: each kind makes its records readable; `json` is the description's JSON.
pub fn show(file: &OpenFile, json: &mut serde_json::Value) {
    let Some(kind) = file.kind.as_ref().and_then(fd::kind_of) else { return };
    // The oneof is serialized as {"Variant": record}.
    if let Some(record) = json.get_mut("kind").and_then(|k| k.as_object_mut()).and_then(|o| o.values_mut().next()) {
        kind.show(file, record);
    }
}

/// Highest fd number in the record.
pub fn max_fd(record: &proto::Files) -> i32 {
    record.fds.iter().map(|f| f.fd).max().unwrap_or(2)
}
