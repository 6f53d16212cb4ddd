//! The fd table, the open file descriptions behind it, and the filesystem context (cwd, root).
//!
//! Dump inspects every fd through a `pidfd_getfd` copy and never reopens a file (reopening a
//! leased file would break the lease). fds sharing one open file description (dup, fork) are
//! found with kcmp and restored as one description again. Anything crust cannot recreate
//! faithfully (sockets, anonymous inodes, pipes with an end outside the image) is refused by
//! pid, fd and kind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::memory::{check_file_unchanged, file_identity};
use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{self, CharDevice, Fd, Files as FilesRecord, OpenFile, OpenFiles, Pipe, RegularFile, open_file};
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
}

impl OpenFileTable {
    /// Checks what can only be judged once the whole tree was seen (both ends of every pipe
    /// inside it) and returns the record.
    pub fn finish(self) -> Result<OpenFiles> {
        for (pipe_id, ends) in &self.pipe_ends {
            let mode = |m: i32| ends.iter().any(|(_, _, f)| f & libc::O_ACCMODE as u32 == m as u32);
            if !(mode(libc::O_RDONLY) && mode(libc::O_WRONLY)) {
                let (pid, fd, _) = ends[0];
                bail!(
                    "pid {pid} fd {fd}: pipe:[{pipe_id}] has its other end outside the dumped processes; \
                     crust cannot reconnect it"
                );
            }
        }
        Ok(OpenFiles { open_files: self.files })
    }

    /// The description behind `fd` of `pid`, if an earlier fd (of any dumped process) shares it.
    fn find_shared(&self, key: (u64, u64), pid: i32, fd: i32) -> Result<Option<u32>> {
        for (other_pid, other_fd, id) in self.by_inode.get(&key).into_iter().flatten() {
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
        for fd in fds {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .with_context(|| format!("pid {pid} fd {fd}: readlink"))?
                .to_string_lossy()
                .into_owned();
            let info = read_fdinfo(pid, fd)?;
            let copy = pidfd_getfd(&ctx.pidfd, pid, fd)?;
            let meta = File::from(copy.try_clone()?).metadata().with_context(|| format!("pid {pid} fd {fd}: fstat"))?;
            let key = (meta.dev(), meta.ino());
            let close_on_exec = info.flags & libc::O_CLOEXEC as u32 != 0;
            if let Some(id) = table.find_shared(key, pid, fd)? {
                record.fds.push(Fd { fd, close_on_exec, open_file_id: id });
                continue;
            }
            let id = table.files.len() as u32 + 1;
            let kind = describe_open_file(pid, fd, &link, &meta, &copy)?;
            if let open_file::Kind::Pipe(p) = &kind {
                table.pipe_ends.entry(p.pipe_id).or_default().push((pid, fd, info.flags & libc::O_ACCMODE as u32));
            }
            table.files.push(OpenFile {
                id,
                flags: info.flags & !(libc::O_CLOEXEC as u32),
                position: info.pos,
                kind: Some(kind),
            });
            record.fds.push(Fd { fd, close_on_exec, open_file_id: id });
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
        super::credentials::enter_fs_identity(ctx)?;
        let addr = ctx.remote.put_path(0, &record.cwd)?;
        ctx.remote
            .syscall("chdir", libc::SYS_chdir, &[addr])
            .with_context(|| format!("changing to the working directory {}", record.cwd))?;
        super::credentials::leave_fs_identity(ctx)?;
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
    let mut pipes: BTreeMap<u64, (i32, i32)> = BTreeMap::new();
    for file in files {
        let fd = open_description(ctx, file, &mut pipes)
            .with_context(|| format!("restoring open file #{} ({})", file.id, describe(file)))?;
        let work = ctx.work_fd_floor as u64 + file.id as u64;
        ctx.remote.syscall("dup3", libc::SYS_dup3, &[fd as u64, work, libc::O_CLOEXEC as u64])?;
        if !matches!(file.kind, Some(open_file::Kind::Pipe(_))) {
            ctx.close_in_process(fd)?;
        }
    }
    // The pipes' temporary ends (the working copies above are what is kept).
    for (r, w) in pipes.into_values() {
        ctx.close_in_process(r)?;
        ctx.close_in_process(w)?;
    }
    super::credentials::leave_fs_identity(ctx)?;
    Ok(())
}

fn describe(file: &OpenFile) -> String {
    match &file.kind {
        Some(open_file::Kind::Regular(r)) => r.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
        Some(open_file::Kind::CharDevice(c)) => c.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
        Some(open_file::Kind::Pipe(p)) => format!("pipe:[{}]", p.pipe_id),
        None => "unknown".into(),
    }
}

fn describe_open_file(
    pid: i32,
    fd: i32,
    link: &str,
    meta: &std::fs::Metadata,
    copy: &OwnedFd,
) -> Result<open_file::Kind> {
    let through = format!("/proc/{pid}/fd/{fd}");
    let refuse = |kind: &str| -> anyhow::Error {
        anyhow::anyhow!("pid {pid} fd {fd}: {kind} ({link}) cannot be checkpointed by crust yet")
    };
    match meta.mode() & libc::S_IFMT {
        libc::S_IFREG => {
            if link.ends_with(" (deleted)") {
                return Err(refuse("a deleted file"));
            }
            if !link.starts_with('/') {
                return Err(refuse("an anonymous-inode file"));
            }
            Ok(open_file::Kind::Regular(RegularFile { file: Some(file_identity(link, &through)?) }))
        }
        libc::S_IFCHR => {
            if !STATELESS_DEVICES.contains(&link) {
                return Err(refuse("a character device with state (terminal or other device)"));
            }
            Ok(open_file::Kind::CharDevice(CharDevice { file: Some(file_identity(link, &through)?) }))
        }
        libc::S_IFIFO => {
            if link.starts_with('/') {
                return Err(refuse("a named FIFO"));
            }
            Ok(open_file::Kind::Pipe(dump_pipe(pid, fd, meta.ino(), copy)?))
        }
        libc::S_IFSOCK => Err(refuse("a socket")),
        libc::S_IFDIR => {
            Ok(open_file::Kind::Regular(RegularFile { file: Some(file_identity(link, &through)?) }))
        }
        _ => Err(refuse(if link.starts_with("anon_inode:") { "an anonymous-inode file" } else { "an unknown file kind" })),
    }
}

/// Records a pipe end; for the read end, a copy of the bytes in the buffer, taken with tee(2)
/// so the process's pipe keeps them.
fn dump_pipe(pid: i32, fd: i32, inode: u64, copy: &OwnedFd) -> Result<Pipe> {
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, tee};
    let size = fcntl(copy, FcntlArg::F_GETPIPE_SZ).with_context(|| format!("pid {pid} fd {fd}: F_GETPIPE_SZ"))?;
    let flags = OFlag::from_bits_truncate(fcntl(copy, FcntlArg::F_GETFL)?);
    let mut pipe = Pipe { pipe_id: inode, buffered: Vec::new(), buffer_size: size as u32 };
    if flags & OFlag::O_ACCMODE != OFlag::O_RDONLY {
        return Ok(pipe);
    }
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size));
    loop {
        match tee(copy, &w, size as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
            Ok(_) => break,
            Err(nix::errno::Errno::EAGAIN) => break, // empty pipe
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("pid {pid} fd {fd}: tee of the pipe buffer")),
        }
    }
    drop(w);
    File::from(r).read_to_end(&mut pipe.buffered)?;
    Ok(pipe)
}

fn open_description(ctx: &mut RestoreCtx, file: &OpenFile, pipe_ends: &mut BTreeMap<u64, (i32, i32)>) -> Result<i32> {
    let flags = file.flags as i32;
    match file.kind.as_ref().context("open file without a kind")? {
        open_file::Kind::Regular(RegularFile { file: Some(f) }) | open_file::Kind::CharDevice(CharDevice { file: Some(f) }) => {
            // Creation and truncation flags are not part of an open description; never let them
            // act on the file again.
            let open_flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
            let fd = ctx.open_in_process(&f.path, open_flags | libc::O_CLOEXEC)?;
            if f.mode & libc::S_IFMT == libc::S_IFREG || f.mode & libc::S_IFMT == libc::S_IFDIR {
                ctx.remote.syscall("lseek", libc::SYS_lseek, &[fd as u64, file.position, libc::SEEK_SET as u64])?;
            }
            Ok(fd)
        }
        open_file::Kind::Pipe(p) => {
            let (r, w) = match pipe_ends.get(&p.pipe_id) {
                Some(ends) => *ends,
                None => {
                    let ends = create_pipe(ctx, p)?;
                    pipe_ends.insert(p.pipe_id, ends);
                    ends
                }
            };
            let reading = flags & libc::O_ACCMODE == libc::O_RDONLY;
            let end = if reading { r } else { w };
            if reading && !p.buffered.is_empty() {
                fill_pipe(ctx, w, &p.buffered)?;
            }
            // Each end is its own description: give it its status flags (O_NONBLOCK...).
            let status = flags & !(libc::O_ACCMODE);
            ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[end as u64, libc::F_SETFL as u64, status as u64])?;
            Ok(end)
        }
        _ => bail!("open file record without a file"),
    }
}

fn create_pipe(ctx: &mut RestoreCtx, p: &Pipe) -> Result<(i32, i32)> {
    let addr = ctx.remote.put(0, &[0u8; 8])?;
    ctx.remote.syscall("pipe2", libc::SYS_pipe2, &[addr, libc::O_CLOEXEC as u64])?;
    let mut b = [0u8; 8];
    ctx.remote.get(0, &mut b)?;
    let r = i32::from_ne_bytes(b[..4].try_into().unwrap());
    let w = i32::from_ne_bytes(b[4..].try_into().unwrap());
    let r = ctx.to_temp_fd(r as u64)?;
    let w = ctx.to_temp_fd(w as u64)?;
    ctx.remote
        .syscall("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, &[w as u64, libc::F_SETPIPE_SZ as u64, p.buffer_size as u64])
        .with_context(|| format!("giving pipe:[{}] its buffer size of {} bytes", p.pipe_id, p.buffer_size))?;
    Ok((r, w))
}

/// Writes the saved bytes into the restored pipe through crust's own copy of its write end.
fn fill_pipe(ctx: &mut RestoreCtx, write_end: i32, data: &[u8]) -> Result<()> {
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), write_end)?;
    let mut written = 0;
    while written < data.len() {
        let n = nix::unistd::write(&ours, &data[written..]).context("refilling a pipe buffer")?;
        written += n;
    }
    let _ = ours.as_raw_fd();
    Ok(())
}

/// What restore checks about files before creating any process.
pub fn precheck(record: &OpenFiles) -> Result<()> {
    for file in &record.open_files {
        match &file.kind {
            Some(open_file::Kind::Regular(RegularFile { file: Some(f) })) => {
                if f.mode & libc::S_IFMT == libc::S_IFREG {
                    check_file_unchanged(f, "open file").map_err(|e| e.context(format!("open file #{}", file.id)))?;
                }
            }
            Some(open_file::Kind::CharDevice(CharDevice { file: Some(f) })) => {
                let meta = std::fs::metadata(&f.path).with_context(|| format!("device {} is gone", f.path))?;
                if meta.rdev() != f.rdev {
                    bail!("device {} is no longer the same device", f.path);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Highest fd number in the record.
pub fn max_fd(record: &proto::Files) -> i32 {
    record.fds.iter().map(|f| f.fd).max().unwrap_or(2)
}
