//! Pipes whose ends are all inside the dumped tree: the buffered bytes (copied with tee(2), so
//! the process keeps them) and the buffer size. Both ends are created together by pipe2 in the
//! process that is the nearest common ancestor of every holder of either end.

use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result};

use super::RestoreCtx;
use super::files::{FdSource, Together};
use crate::image::proto::{OpenFile, Pipe};
use crate::sys::pidfd::pidfd_getfd;

pub fn dump(src: &FdSource) -> Result<Pipe> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::unix::fs::MetadataExt;
    let (pid, fd, copy) = (src.pid, src.fd, src.copy);
    let size = fcntl(copy, FcntlArg::F_GETPIPE_SZ).with_context(|| format!("pid {pid} fd {fd}: F_GETPIPE_SZ"))?;
    let flags = OFlag::from_bits_truncate(fcntl(copy, FcntlArg::F_GETFL)?);
    let mut pipe = Pipe { pipe_id: src.meta.ino(), buffer_size: size as u32, ..Default::default() };
    if flags & OFlag::O_ACCMODE != OFlag::O_RDONLY {
        return Ok(pipe);
    }
    pipe.buffered = peek_buffer(copy, size).with_context(|| format!("pid {pid} fd {fd}: tee of the pipe buffer"))?;
    Ok(pipe)
}

/// The bytes waiting in a pipe (or FIFO) read end, left in place.
pub fn peek_buffer(read_end: &std::os::fd::OwnedFd, size: i32) -> Result<Vec<u8>> {
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, tee};
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size));
    loop {
        match tee(read_end, &w, size as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
            Ok(_) => break,
            Err(nix::errno::Errno::EAGAIN) => break, // empty
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    drop(w);
    let mut out = Vec::new();
    File::from(r).read_to_end(&mut out)?;
    Ok(out)
}

/// Opens one end; the first end of a pipe creates both (kept in `together` for the other).
pub fn open(ctx: &mut RestoreCtx, file: &OpenFile, p: &Pipe, together: &mut Together) -> Result<i32> {
    if p.external {
        anyhow::bail!("pipe:[{}] is external: it is given by --inherit-fd, not created", p.pipe_id);
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
                fill(ctx, w, data).with_context(|| format!("putting {} bytes back into pipe:[{}]", data.len(), p.pipe_id))?;
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
fn first_description_of_end(files: &crate::image::proto::OpenFiles, file: &OpenFile, pipe_id: u64) -> bool {
    let mode = file.flags & libc::O_ACCMODE as u32;
    let first = files
        .open_files
        .iter()
        .filter(|f| f.flags & libc::O_ACCMODE as u32 == mode)
        .filter(|f| matches!(&f.kind, Some(crate::image::proto::open_file::Kind::Pipe(p)) if p.pipe_id == pipe_id))
        .map(|f| f.id)
        .min();
    first == Some(file.id)
}

/// The bytes the image holds for a pipe (recorded by its read descriptions), if any.
fn buffered_bytes(files: &crate::image::proto::OpenFiles, pipe_id: u64) -> Option<&[u8]> {
    files.open_files.iter().find_map(|f| match &f.kind {
        Some(crate::image::proto::open_file::Kind::Pipe(p)) if p.pipe_id == pipe_id && !p.buffered.is_empty() => {
            Some(p.buffered.as_slice())
        }
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

/// Writes saved bytes into a restored pipe (or FIFO) through crust's own copy of a write end,
/// before the end gets its own status flags. Never blocks: the description is non-blocking
/// while crust fills it, and a pipe without room for the bytes (within 5 s) is an error, as is
/// an interruption of crust meanwhile.
pub fn fill(ctx: &mut RestoreCtx, write_end: i32, data: &[u8]) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), write_end)?;
    let was = OFlag::from_bits_truncate(fcntl(&ours, FcntlArg::F_GETFL)?);
    fcntl(&ours, FcntlArg::F_SETFL(was | OFlag::O_NONBLOCK))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut written = 0;
    let result: Result<()> = loop {
        if written == data.len() {
            break Ok(());
        }
        match nix::unistd::write(&ours, &data[written..]) {
            Ok(n) => written += n,
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                if let Err(e) = crate::interrupt::check() {
                    break Err(e.into());
                }
                let mut fds = [PollFd::new(ours.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                break Err(anyhow::anyhow!("no room for the last {} of {} bytes after 5 s", data.len() - written, data.len()));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(anyhow::Error::from(e).context("refilling a pipe buffer")),
        }
    };
    fcntl(&ours, FcntlArg::F_SETFL(was))?;
    result
}
