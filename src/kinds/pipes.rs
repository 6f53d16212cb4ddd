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
            (r, w)
        }
    };
    let reading = flags & libc::O_ACCMODE == libc::O_RDONLY;
    let end = if reading { r } else { w };
    if reading && !p.buffered.is_empty() {
        fill(ctx, w, &p.buffered)?;
    }
    // Each end is its own description: give it its status flags (O_NONBLOCK...).
    let status = flags & !(libc::O_ACCMODE);
    ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[end as u64, libc::F_SETFL as u64, status as u64])?;
    Ok(end)
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

/// Writes saved bytes into a restored pipe (or FIFO) through crust's own copy of a write end.
pub fn fill(ctx: &mut RestoreCtx, write_end: i32, data: &[u8]) -> Result<()> {
    let ours = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), write_end)?;
    let mut written = 0;
    while written < data.len() {
        let n = nix::unistd::write(&ours, &data[written..]).context("refilling a pipe buffer")?;
        written += n;
    }
    Ok(())
}
