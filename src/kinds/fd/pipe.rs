//! Pipes whose ends are all inside the dumped tree: the buffered bytes (copied with tee(2), so
//! the process keeps them) and the buffer size. Both ends are created together by pipe2 in the
//! process that is the nearest common ancestor of every holder of either end.
//!
//! A pipe whose other end is closed everywhere (its writers all gone: the reader finds the
//! bytes left, then end of file; or its readers gone: a write fails with EPIPE) comes back so:
//! the end nobody holds is created with the other and closed once the holders have theirs
//! (files.rs closes every group's temporary fds). The kernel tells a closed other end from one
//! held outside the tree (which is refused): a read end polls POLLHUP once no writer is left,
//! a write end POLLERR once no reader is (fs/pipe.c, pipe_poll).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::common::{fill_pipe, peek_buffer};
use super::{Dumped, FdKind, FdSource, KindState, SeenFd, Together, WholeTree};
use crate::image::proto::{OpenFile, OpenFiles, Pipe, open_file};
use crate::kinds::RestoreCtx;

pub struct Pipes;

/// pipe id -> every end seen while the tree is dumped.
#[derive(Default)]
struct PipeEnds(BTreeMap<u64, Vec<End>>);

/// One end of a pipe held by the tree.
struct End {
    pid: i32,
    fd: i32,
    access: u32,
    /// No process (in the tree or outside) holds the other end any more.
    other_end_closed: bool,
}

impl FdKind for Pipes {
    type Record = Pipe;
    const NAME: &'static str = "pipe";

    fn record_of(kind: &open_file::Kind) -> Option<&Pipe> {
        match kind {
            open_file::Kind::Pipe(p) => Some(p),
            _ => None,
        }
    }

    fn into_kind(record: Pipe) -> open_file::Kind {
        open_file::Kind::Pipe(record)
    }

    /// A pipe's link is "pipe:[N]" (a FIFO's is its path).
    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFIFO && !src.link.starts_with('/')
    }

    /// The pipe's inode is the group: both ends are created together by one pipe2.
    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<Pipe>> {
        let (pipe, access) = dump(src)?;
        let other_end_closed = other_end_closed(src, access)?;
        let end = End { pid: src.pid, fd: src.fd, access, other_end_closed };
        state.get::<PipeEnds>().0.entry(pipe.pipe_id).or_default().push(end);
        let group = pipe.pipe_id;
        Ok(Dumped { record: pipe, created_with: group, carried: Vec::new() })
    }

    /// The same rule as `check_tree`, before the freeze, where it is certain: a pipe of which
    /// the tree holds only one end (not declared external) while a process outside the tree
    /// holds an fd of it is refused without stopping anyone. (An end held by no fd may be in
    /// flight in a socket of the tree: only the frozen check can tell.)
    fn refuse_early_tree(seen: &[SeenFd], externals: &[String]) -> Result<()> {
        let mut ends: BTreeMap<&str, (bool, bool, &SeenFd)> = BTreeMap::new();
        for s in seen.iter().filter(|s| s.link.starts_with("pipe:[")) {
            let e = ends.entry(s.link.as_str()).or_insert((false, false, s));
            match s.flags & libc::O_ACCMODE as u32 {
                m if m == libc::O_RDONLY as u32 => e.0 = true,
                m if m == libc::O_WRONLY as u32 => e.1 = true,
                _ => {}
            }
        }
        let tree: std::collections::BTreeSet<i32> = seen.iter().map(|s| s.pid).collect();
        for (key, (r, w, s)) in ends {
            if r && w || externals.iter().any(|x| x == key) {
                continue;
            }
            if let Some((pid, fd)) = super::common::outside_holders(s.dev, s.inode, &tree).first() {
                return Err(outside_end(s.pid, s.fd, key).context(format!("pid {pid} fd {fd}, outside the tree, holds {key}")));
            }
        }
        Ok(())
    }

    /// Both ends of every pipe must be inside the tree, or the other end closed everywhere,
    /// unless the user declared it external (its data then belongs to whoever holds the other
    /// end: nothing is saved).
    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, state: &mut KindState) -> Result<()> {
        for (pipe_id, ends) in &state.get::<PipeEnds>().0 {
            let mode = |m: i32| ends.iter().any(|e| e.access & libc::O_ACCMODE as u32 == m as u32);
            if mode(libc::O_RDONLY) && mode(libc::O_WRONLY) {
                continue;
            }
            let key = format!("pipe:[{pipe_id}]");
            if !tree.externals.contains(&key) {
                if ends.iter().all(|e| e.other_end_closed) {
                    continue;
                }
                return Err(outside_end(ends[0].pid, ends[0].fd, &key));
            }
            for file in files.iter_mut() {
                if let Some(open_file::Kind::Pipe(p)) = &mut file.kind
                    && p.pipe_id == *pipe_id
                {
                    p.external = true;
                    p.buffered.clear();
                    file.created_with = 0;
                }
            }
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Pipe, together: &mut Together) -> Result<i32> {
        open(ctx, file, record, together)
    }

    fn describe(record: &Pipe) -> String {
        format!("pipe:[{}]", record.pipe_id)
    }

    fn external_key(record: &Pipe) -> Option<String> {
        record.external.then(|| format!("pipe:[{}]", record.pipe_id))
    }

    fn show(record: &Pipe, json: &mut serde_json::Value) {
        json["buffered"] = match std::str::from_utf8(&record.buffered) {
            Ok(text) => serde_json::json!(text),
            Err(_) => serde_json::json!(format!("{} bytes", record.buffered.len())),
        };
    }
}

/// The record and the end's access mode.
fn dump(src: &FdSource) -> Result<(Pipe, u32)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::unix::fs::MetadataExt;
    let (pid, fd, copy) = (src.pid, src.fd, src.copy);
    let size = fcntl(copy, FcntlArg::F_GETPIPE_SZ).with_context(|| format!("pid {pid} fd {fd}: F_GETPIPE_SZ"))?;
    let flags = OFlag::from_bits_truncate(fcntl(copy, FcntlArg::F_GETFL)?);
    let access = (flags & OFlag::O_ACCMODE).bits() as u32;
    let mut pipe = Pipe { pipe_id: src.meta.ino(), buffer_size: size as u32, ..Default::default() };
    if flags & OFlag::O_ACCMODE != OFlag::O_RDONLY {
        return Ok((pipe, access));
    }
    pipe.buffered = peek_buffer(copy, size).with_context(|| format!("pid {pid} fd {fd}: tee of the pipe buffer"))?;
    Ok((pipe, access))
}

/// Whether the other end of the pipe whose end `src` is (of `access`) is closed everywhere:
/// pipe_poll gives a read end POLLHUP when the pipe has no writer left, a write end POLLERR
/// when it has no reader left. (crust holds no copy of the other end: the tree holds none.)
fn other_end_closed(src: &FdSource, access: u32) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let (events, closed) = match access as i32 {
        libc::O_RDONLY => (PollFlags::POLLIN, PollFlags::POLLHUP),
        libc::O_WRONLY => (PollFlags::POLLOUT, PollFlags::POLLERR),
        _ => return Ok(false),
    };
    let mut fds = [PollFd::new(src.copy.as_fd(), events)];
    poll(&mut fds, PollTimeout::ZERO).with_context(|| format!("pid {} fd {}: poll of the pipe", src.pid, src.fd))?;
    Ok(fds[0].revents().is_some_and(|r| r.contains(closed)))
}

/// Opens one end; the first end of a pipe creates both (kept in `together` for the other).
fn open(ctx: &mut RestoreCtx, file: &OpenFile, p: &Pipe, together: &mut Together) -> Result<i32> {
    if p.external {
        bail!("pipe:[{}] is external: it is given by --inherit-fd, not created", p.pipe_id);
    }
    let flags = file.flags as i32;
    let (r, w) = match together.get(&p.pipe_id) {
        Some(ends) => (ends[0], ends[1]),
        None => {
            let (r, w) = create(ctx, p.buffer_size, p.pipe_id)?;
            together.insert(p.pipe_id, vec![r, w]);
            // The bytes go in once per pipe, whichever end (and however many descriptions of
            // each end) the image has: every read description recorded the same bytes.
            if let Some(data) = buffered_bytes(ctx.open_files, p.pipe_id) {
                fill_pipe(ctx, w, data).with_context(|| format!("putting {} bytes back into pipe:[{}]", data.len(), p.pipe_id))?;
            }
            (r, w)
        }
    };
    let reading = flags & libc::O_ACCMODE == libc::O_RDONLY;
    let mut end = if reading { r } else { w };
    if !first_description_of_end(ctx.open_files, file, p.pipe_id) {
        // Another description of the same end (reopened through /proc/PID/fd by the program):
        // its own description, so that its status flags and offset-free state are its own.
        let path = format!("/proc/self/fd/{end}");
        end = ctx
            .open_in_process(&path, (flags & libc::O_ACCMODE) | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .with_context(|| format!("opening another description of pipe:[{}]", p.pipe_id))?;
    }
    // Each end is its own description: give it its status flags (O_NONBLOCK...).
    let status = flags & !(libc::O_ACCMODE);
    ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[end as u64, libc::F_SETFL as u64, status as u64])?;
    Ok(end)
}

/// Whether `file` is the first (lowest id) description of its end of the pipe, the one that
/// gets the end pipe2 created.
fn first_description_of_end(files: &OpenFiles, file: &OpenFile, pipe_id: u64) -> bool {
    let mode = file.flags & libc::O_ACCMODE as u32;
    let first = files
        .open_files
        .iter()
        .filter(|f| f.flags & libc::O_ACCMODE as u32 == mode)
        .filter(|f| matches!(&f.kind, Some(open_file::Kind::Pipe(p)) if p.pipe_id == pipe_id))
        .map(|f| f.id)
        .min();
    first == Some(file.id)
}

/// The bytes the image holds for a pipe (recorded by its read descriptions), if any.
fn buffered_bytes(files: &OpenFiles, pipe_id: u64) -> Option<&[u8]> {
    files.open_files.iter().find_map(|f| match &f.kind {
        Some(open_file::Kind::Pipe(p)) if p.pipe_id == pipe_id && !p.buffered.is_empty() => Some(p.buffered.as_slice()),
        _ => None,
    })
}

fn create(ctx: &mut RestoreCtx, buffer_size: u32, id: u64) -> Result<(i32, i32)> {
    let addr = ctx.remote.put(0, &[0u8; 8])?;
    ctx.remote.syscall("pipe2", libc::SYS_pipe2, &[addr, libc::O_CLOEXEC as u64])?;
    let mut b = [0u8; 8];
    ctx.remote.get(0, &mut b)?;
    let r = i32::from_ne_bytes(b[..4].try_into().unwrap());
    let w = i32::from_ne_bytes(b[4..].try_into().unwrap());
    let r = ctx.to_temp_fd(r as u64)?;
    let w = ctx.to_temp_fd(w as u64)?;
    ctx.remote
        .syscall("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, &[w as u64, libc::F_SETPIPE_SZ as u64, buffer_size as u64])
        .with_context(|| format!("giving pipe:[{id}] its buffer size of {buffer_size} bytes"))?;
    Ok((r, w))
}

fn outside_end(pid: i32, fd: i32, key: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "pid {pid} fd {fd}: {key} has its other end outside the dumped processes; \
         to reconnect it at restore, dump with --external {key} and restore with --inherit-fd fd[N]:{key}"
    )
}
