//! epoll descriptions and their registrations.
//!
//! Dump reads the registrations from fdinfo (`tfd: N events: X data: Y pos: ino: sdev:`). epoll
//! keys a registration by the file AND the fd number it was registered under, so it can only be
//! registered again from a process whose fd table has that same file (the same open file
//! description) at that number. Once the whole tree was seen ([`finish`]), every registration
//! is matched with kcmp(KCMP_EPOLL_TFD) against the fds of the processes holding the epoll; the
//! first holder that has every target at its number registers them all (an epoll shared by
//! several processes, after fork or SCM_RIGHTS, is registered once: its registrations live in
//! the shared description). If no single holder has them all, each target is registered by the
//! first holder that has it. A registration whose fd was closed (the file kept open by a dup
//! elsewhere) or now names another file cannot be recreated and is refused. The targets
//! themselves are fds of the tree, so anything they are that crust cannot restore is refused
//! where that fd is dumped; nested epolls are targets like any other.
//!
//! What epoll will report next is part of its state too. A level-triggered or armed one-shot
//! registration whose file is ready is always on the epoll's ready list, and registering it
//! again puts it there: nothing to record. Two cases differ:
//!
//! - a one-shot registration that fired is disabled (fdinfo shows only its flag bits). The
//!   kernel adds EPOLLERR|EPOLLHUP to every registration, so it can only be recreated by letting
//!   it fire once: restore registers it with the events its file is ready for at dump time and
//!   consumes that event. When the file is the empty read end of a pipe (or of a FIFO with a
//!   writer in the tree), crust writes one byte into the pipe for that moment, through a write
//!   end it opens from /proc/PID/fd/N, and reads it back afterwards. A fired one-shot on any
//!   other file that is not ready is refused.
//! - an edge-triggered registration whose file is ready may have had its edge reported already
//!   (then epoll stays silent until new data) or not. fdinfo does not tell; a zero-timeout poll
//!   of the epoll (which changes nothing) tells whether any ready registration is on the ready
//!   list. When it says none, every ready edge-triggered registration was consumed; when the
//!   only ready registration is one edge-triggered one, it is pending. Any other mix is refused.
//!   Restore registers consumed ones first and consumes their events with one epoll_wait.

use anyhow::{Context, Result, bail};

use super::common::description_held_outside;
use super::{Dumped, FdKind, FdSource, Holders, KindState, Together, WholeTree};
use crate::image::proto::{Epoll, EpollTarget, Files, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::notify::{EpollTargetMatch, epoll_target_is, poll_now};
use crate::sys::pidfd::{pidfd_getfd, pidfd_open};

const EPOLLET: u32 = 1 << 31;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLWAKEUP: u32 = 1 << 29;
const EPOLLEXCLUSIVE: u32 = 1 << 28;
/// The bits that are not events (the kernel's EP_PRIVATE_BITS).
const FLAG_BITS: u32 = EPOLLET | EPOLLONESHOT | EPOLLWAKEUP | EPOLLEXCLUSIVE;
/// Events poll(2) can report (EPOLLIN .. EPOLLRDHUP share their values with POLL*).
const POLL_EVENTS: u32 = 0x3fff;

pub struct Epolls;

impl FdKind for Epolls {
    type Record = Epoll;
    const NAME: &'static str = "epoll";
    // Restoring it needs a holder's fd table.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Epoll> {
        match kind {
            open_file::Kind::Epoll(e) => Some(e),
            _ => None,
        }
    }

    fn into_kind(record: Epoll) -> open_file::Kind {
        open_file::Kind::Epoll(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.link == "anon_inode:[eventpoll]"
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<Epoll>> {
        dump(src).map(Dumped::alone)
    }

    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        finish(files, tree.holders)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, _record: &Epoll, _together: &mut Together) -> Result<i32> {
        open(ctx, file)
    }

    fn fds_in_place(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        register_targets(ctx, fds)
    }

    fn describe(_record: &Epoll) -> String {
        "eventpoll".into()
    }
}

fn dump(src: &FdSource) -> Result<Epoll> {
    let mut targets = Vec::new();
    for line in src.fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
        targets.push(parse_target(line).with_context(|| format!("pid {} fd {}: epoll fdinfo line {line:?}", src.pid, src.fd))?);
    }
    Ok(Epoll { targets })
}

/// `tfd:        5 events: 40000019 data:                7  pos:0 ino:5ff18 sdev:f`
fn parse_target(line: &str) -> Result<EpollTarget> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |key: &str| -> Option<&str> {
        let i = words.iter().position(|w| w.starts_with(key))?;
        let rest = &words[i][key.len()..];
        if rest.is_empty() { words.get(i + 1).copied() } else { Some(rest) }
    };
    let hex = |key: &str| -> Result<u64> { Ok(u64::from_str_radix(field(key).with_context(|| format!("no {key}"))?, 16)?) };
    Ok(EpollTarget {
        fd: field("tfd:").context("no tfd:")?.parse()?,
        events: hex("events:")? as u32,
        data: hex("data:")?,
        inode: hex("ino:")?,
        sdev: hex("sdev:")? as u32,
        ..Default::default()
    })
}

/// Decides, with the whole tree seen and still frozen, who registers each target at restore
/// and what epoll will report next (see the module documentation); refuses what cannot be
/// recreated.
fn finish(files: &mut [OpenFile], holders: &Holders) -> Result<()> {
    let pipe_readers = pipe_readers(files, holders);
    let inside: std::collections::BTreeSet<i32> = holders.values().flatten().map(|(p, _)| *p).collect();
    for file in files.iter_mut() {
        let Some(open_file::Kind::Epoll(epoll)) = &mut file.kind else { continue };
        let hs = holders.get(&file.id).map(Vec::as_slice).unwrap_or_default();
        let Some(&(pid, efd)) = hs.first() else { continue };
        if let Some((other, other_fd)) = description_held_outside(pid, efd, &inside)? {
            bail!(
                "pid {pid} fd {efd}: this epoll is also held by pid {other} (fd {other_fd}), outside the dumped \
                 processes; crust cannot share a restored epoll with it"
            );
        }
        settle(epoll, hs, &pipe_readers).with_context(|| format!("pid {pid} fd {efd}: epoll"))?;
    }
    Ok(())
}

/// The (pid, fd) of read-only ends of pipes, and of FIFOs that a description of the tree can
/// write to: an empty one is made readable for a moment by writing one byte into it, without
/// changing anything a reader can see afterwards (a FIFO reader that never saw a writer would
/// see a hang-up after that writer leaves, hence the condition).
fn pipe_readers(files: &[OpenFile], holders: &Holders) -> std::collections::BTreeSet<(i32, i32)> {
    let read_only = |f: &OpenFile| f.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY;
    let fifo_with_writer =
        |id: u64| files.iter().any(|f| matches!(&f.kind, Some(open_file::Kind::Fifo(x)) if x.fifo_id == id) && !read_only(f));
    files
        .iter()
        .filter(|f| {
            read_only(f)
                && match &f.kind {
                    Some(open_file::Kind::Pipe(_)) => true,
                    Some(open_file::Kind::Fifo(x)) => fifo_with_writer(x.fifo_id),
                    _ => false,
                }
        })
        .flat_map(|f| holders.get(&f.id).into_iter().flatten().copied())
        .collect()
}

fn settle(epoll: &mut Epoll, holders: &[(i32, i32)], pipe_readers: &std::collections::BTreeSet<(i32, i32)>) -> Result<()> {
    if epoll.targets.is_empty() {
        return Ok(());
    }
    let (pid0, efd0) = holders[0];
    // Which holders have each target at its number.
    let mut matching: Vec<Vec<usize>> = Vec::new();
    for (i, t) in epoll.targets.iter().enumerate() {
        let toff = epoll.targets[..i].iter().filter(|o| o.fd == t.fd).count() as u64;
        let mut found = Vec::new();
        let mut first_answer = None;
        for (h, &(pid, efd)) in holders.iter().enumerate() {
            let answer = epoll_target_is(pid, t.fd, pid, efd, t.fd, toff)?;
            first_answer.get_or_insert(answer);
            if answer == EpollTargetMatch::Same {
                found.push(h);
            }
        }
        matching.push(found);
    }
    // Targets no holder has at their number any more: found through any other fd of a holder
    // that refers to the registered file (it was dup'ed, and the original closed or reused).
    let mut moved: Vec<Option<(usize, i32)>> = vec![None; epoll.targets.len()];
    for (i, t) in epoll.targets.iter().enumerate() {
        if !matching[i].is_empty() {
            continue;
        }
        let toff = epoll.targets[..i].iter().filter(|o| o.fd == t.fd).count() as u64;
        moved[i] = find_moved(holders, t.fd, toff)?;
        match moved[i] {
            Some((h, _)) => matching[i].push(h),
            None => {
                let others = if holders.len() > 1 { " (nor in any other process holding this epoll)" } else { "" };
                bail!(
                    "the registration of target fd {} (inode {:#x}) cannot be recreated: no fd of pid {pid0}{others} \
                     refers to the registered file any more",
                    t.fd,
                    t.inode
                );
            }
        }
    }
    let single = (0..holders.len()).find(|h| matching.iter().all(|m| m.contains(h)));
    for ((t, m), mv) in epoll.targets.iter_mut().zip(&matching).zip(&moved) {
        let h = single.unwrap_or(m[0]);
        t.registered_by = holders[h].0 as u32;
        if let Some((_, via)) = mv.filter(|(mh, _)| *mh == h) {
            t.moved = true;
            t.via_fd = via;
        }
    }

    // What each target's file is ready for now, through a copy of the registering holder's fd.
    let mut pidfds = std::collections::BTreeMap::new();
    let mut ready = Vec::new();
    for t in &epoll.targets {
        let pid = t.registered_by as i32;
        if let std::collections::btree_map::Entry::Vacant(v) = pidfds.entry(pid) {
            v.insert(pidfd_open(pid)?);
        }
        let copy = pidfd_getfd(&pidfds[&pid], pid, live_fd(t))?;
        // A fired one-shot asks for nothing any more: ask for everything it could fire with.
        let disabled = t.events & !FLAG_BITS == 0;
        let asked = if disabled { POLL_EVENTS } else { t.events & POLL_EVENTS };
        let revents = poll_now(std::os::fd::AsFd::as_fd(&copy), asked as i16)? as u16 as u32;
        ready.push(revents & POLL_EVENTS);
    }
    let mut ambiguous = Vec::new(); // ready edge-triggered registrations
    let mut surely_listed = false; // a ready registration that is on the ready list for sure
    for (i, t) in epoll.targets.iter_mut().enumerate() {
        let events = t.events & !FLAG_BITS;
        let oneshot = t.events & EPOLLONESHOT != 0;
        if oneshot && events == 0 {
            // Fired and disabled.
            t.consumed = true;
            t.fire_events = ready[i];
            if ready[i] == 0 {
                if !pipe_readers.contains(&(t.registered_by as i32, t.fd)) {
                    bail!(
                        "the one-shot registration of fd {} has fired and is disabled, and its file is not ready now: \
                         crust can only recreate a fired one-shot registration by letting it fire once, which needs a \
                         ready file (or an empty pipe it can write a byte into)",
                        t.fd
                    );
                }
                t.fire_events = (libc::POLLIN | libc::POLLRDNORM) as u32;
                t.fire_by_writing = true;
            }
        } else if ready[i] & t.events != 0 {
            if t.events & EPOLLET != 0 && !oneshot {
                ambiguous.push(i);
            } else {
                surely_listed = true;
            }
        }
    }
    if !ambiguous.is_empty() {
        let copy = pidfd_getfd(&pidfd_open(pid0)?, pid0, efd0)?;
        let epoll_ready = poll_now(std::os::fd::AsFd::as_fd(&copy), libc::POLLIN)? & libc::POLLIN != 0;
        if !epoll_ready {
            // Nothing ready is on the ready list: every ready edge was reported already.
            for &i in &ambiguous {
                epoll.targets[i].consumed = true;
            }
        } else if !surely_listed && ambiguous.len() == 1 {
            // The only ready registration is this one, and the epoll says it is listed.
        } else {
            let fds: Vec<String> = ambiguous.iter().map(|&i| epoll.targets[i].fd.to_string()).collect();
            bail!(
                "edge-triggered registrations of fd {} are ready and other ready registrations share the epoll: \
                 crust cannot tell whether epoll already reported their edges",
                fds.join(", ")
            );
        }
    }
    let by: std::collections::BTreeSet<u32> = epoll.targets.iter().map(|t| t.registered_by).collect();
    if by.len() > 1 && epoll.targets.iter().any(|t| t.consumed) {
        bail!(
            "its registrations can only be recreated from different processes ({by:?}) and some have an event \
             already consumed: crust cannot recreate that"
        );
    }
    Ok(())
}

/// The fd of the registering process that refers to the target's file now.
fn live_fd(t: &EpollTarget) -> i32 {
    if t.moved { t.via_fd } else { t.fd }
}

/// The (holder index, fd) of an fd of a holder referring to the file registered under `tfd`
/// (`toff`-th registration with that number) when no holder has it at `tfd` any more.
fn find_moved(holders: &[(i32, i32)], tfd: i32, toff: u64) -> Result<Option<(usize, i32)>> {
    for (h, &(pid, efd)) in holders.iter().enumerate() {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let mut fds: Vec<i32> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        fds.sort();
        for fd in fds {
            if epoll_target_is(pid, fd, pid, efd, tfd, toff)? == EpollTargetMatch::Same {
                return Ok(Some((h, fd)));
            }
        }
    }
    Ok(None)
}

/// Creates an empty epoll in the process; its targets are registered by [`register_targets`].
fn open(ctx: &mut RestoreCtx, file: &OpenFile) -> Result<i32> {
    let fd = ctx.remote.syscall("epoll_create1", libc::SYS_epoll_create1, &[libc::EPOLL_CLOEXEC as u64])?;
    let fd = ctx.to_temp_fd(fd)?;
    let status = file.flags as i32 & !libc::O_ACCMODE;
    ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[fd as u64, libc::F_SETFL as u64, status as u64])?;
    Ok(fd)
}

/// Registers the targets this process registers for each epoll it holds, once every fd of the
/// process is in place: first the registrations whose event was already consumed, which are
/// then consumed again with one epoll_wait, then the others. An epoll that is itself the target
/// of another is done before that other, so that it is as ready as it was when registered.
fn register_targets(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
    let pid = ctx.pid.as_raw() as u32;
    let open_files = ctx.open_files;
    let epoll_of = |id: u32| -> Option<&Epoll> {
        match &open_files.open_files.iter().find(|f| f.id == id)?.kind {
            Some(open_file::Kind::Epoll(e)) => Some(e),
            _ => None,
        }
    };
    // This process's epolls (one fd number each), and which of them are targets of others.
    let mut todo: Vec<(i32, u32, &Epoll)> = Vec::new();
    for fd in &fds.fds {
        if let Some(e) = epoll_of(fd.open_file_id)
            && !todo.iter().any(|(_, id, _)| *id == fd.open_file_id)
        {
            todo.push((fd.fd, fd.open_file_id, e));
        }
    }
    let id_at = |n: i32| fds.fds.iter().find(|f| f.fd == n).map(|f| f.open_file_id);
    while !todo.is_empty() {
        // Next: one whose epoll targets (registered here) are all done.
        let pos = todo
            .iter()
            .position(|(_, _, e)| {
                e.targets
                    .iter()
                    .filter(|t| t.registered_by == pid)
                    .all(|t| id_at(live_fd(t)).is_none_or(|id| !todo.iter().any(|(_, other, _)| *other == id)))
            })
            .unwrap_or(0);
        let (epfd, _, epoll) = todo.remove(pos);
        register_one(ctx, epfd, epoll, pid)?;
    }
    Ok(())
}

fn register_one(ctx: &mut RestoreCtx, epfd: i32, epoll: &Epoll, pid: u32) -> Result<()> {
    let mine: Vec<&EpollTarget> = epoll.targets.iter().filter(|t| t.registered_by == pid).collect();
    let consumed: Vec<&EpollTarget> = mine.iter().copied().filter(|t| t.consumed).collect();
    // Empty pipes under fired one-shots get a byte for the moment.
    let mut primed = Vec::new();
    for t in consumed.iter().filter(|t| t.fire_by_writing) {
        primed.push((live_fd(t), prime_pipe(ctx, live_fd(t))?));
    }
    for t in &consumed {
        add(ctx, epfd, t, t.events | t.fire_events)?;
    }
    if !consumed.is_empty() {
        let n = consumed.len();
        let buf = ctx.remote.put(0, &vec![0u8; 12 * (n + 1)])?;
        let got = ctx
            .remote
            .syscall("epoll_wait", libc::SYS_epoll_wait, &[epfd as u64, buf, (n + 1) as u64, 0])
            .with_context(|| format!("consuming the events of epoll fd {epfd}'s already-reported registrations"))?;
        if got as usize != n {
            let which: Vec<String> = consumed.iter().map(|t| t.fd.to_string()).collect();
            bail!("epoll fd {epfd}: the registrations of fd {} should each report one event now, {got} events came", which.join(", "));
        }
    }
    for (fd, writer) in primed {
        unprime_pipe(ctx, fd, writer)?;
    }
    for t in mine.iter().filter(|t| !t.consumed) {
        add(ctx, epfd, t, t.events)?;
    }
    Ok(())
}

/// Writes one byte into the empty pipe whose read end is fd `fd` of the process, through a
/// write end crust opens from /proc/PID/fd/N (pipes and FIFOs open like FIFOs there).
fn prime_pipe(ctx: &mut RestoreCtx, fd: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("/proc/{}/fd/{fd}", ctx.pid);
    let writer: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .with_context(|| format!("opening a write end of fd {fd}'s pipe through {path}"))?
        .into();
    let queued = crate::sys::notify::bytes_queued(std::os::fd::AsFd::as_fd(&writer))?;
    if queued != 0 {
        bail!("fd {fd}'s pipe should be empty, it holds {queued} bytes");
    }
    nix::unistd::write(&writer, b"!").with_context(|| format!("writing a byte into fd {fd}'s pipe"))?;
    Ok(writer)
}

/// Reads back the byte [`prime_pipe`] wrote and closes crust's write end.
fn unprime_pipe(ctx: &mut RestoreCtx, fd: i32, writer: std::os::fd::OwnedFd) -> Result<()> {
    let reader = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    let mut b = [0u8; 1];
    let n = nix::unistd::read(&reader, &mut b).with_context(|| format!("reading back the byte from fd {fd}'s pipe"))?;
    if n != 1 || b[0] != b'!' {
        bail!("fd {fd}'s pipe gave back {n} bytes ({:?}) instead of crust's byte", &b[..n]);
    }
    drop(writer);
    Ok(())
}

/// EPOLL_CTL_ADD of target `t`; a moved target's file is put at its number for the moment
/// (whatever the process has there is moved aside and put back, with its close-on-exec flag).
fn add(ctx: &mut RestoreCtx, epfd: i32, t: &EpollTarget, events: u32) -> Result<()> {
    if !t.moved {
        return add_at(ctx, epfd, t, events);
    }
    let r = &mut *ctx.remote;
    let n = t.fd as u64;
    let aside = match r.syscall_raw(libc::SYS_fcntl, &[n, libc::F_GETFD as u64]) {
        Ok(flags) if flags >= 0 => {
            let floor = ctx.temp_fd_floor as u64;
            let saved = r.syscall("fcntl(F_DUPFD_CLOEXEC)", libc::SYS_fcntl, &[n, libc::F_DUPFD_CLOEXEC as u64, floor])?;
            Some((saved, flags as u64 & libc::FD_CLOEXEC as u64))
        }
        _ => None,
    };
    let r = &mut *ctx.remote;
    r.syscall("dup3", libc::SYS_dup3, &[t.via_fd as u64, n, libc::O_CLOEXEC as u64])
        .with_context(|| format!("putting the file of fd {} at fd {} to register it", t.via_fd, t.fd))?;
    let added = add_at(ctx, epfd, t, events);
    let r = &mut *ctx.remote;
    match aside {
        Some((saved, cloexec)) => {
            let flags = if cloexec != 0 { libc::O_CLOEXEC as u64 } else { 0 };
            r.syscall("dup3", libc::SYS_dup3, &[saved, n, flags])?;
            r.syscall("close", libc::SYS_close, &[saved])?;
        }
        None => {
            r.syscall("close", libc::SYS_close, &[n])?;
        }
    }
    added
}

fn add_at(ctx: &mut RestoreCtx, epfd: i32, t: &EpollTarget, events: u32) -> Result<()> {
    // struct epoll_event is packed on x86_64: u32 events, u64 data.
    let mut ev = Vec::with_capacity(12);
    ev.extend_from_slice(&events.to_ne_bytes());
    ev.extend_from_slice(&t.data.to_ne_bytes());
    let addr = ctx.remote.put(0, &ev)?;
    ctx.remote
        .syscall("epoll_ctl(EPOLL_CTL_ADD)", libc::SYS_epoll_ctl, &[epfd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, addr])
        .with_context(|| format!("registering fd {} (events {events:#x}, data {:#x}) in epoll fd {epfd}", t.fd, t.data))?;
    Ok(())
}
