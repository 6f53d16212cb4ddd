//! Restoring UNIX sockets, in two steps.
//!
//! 1. [`open`], while the process that creates a group opens its descriptions (before it
//!    forks its children): the first socket of a group creates the whole group with system
//!    calls in that process. Listeners are bound and listen; connected pairs come from
//!    socketpair, or from connect + accept (through the image's listener, or a temporary one
//!    bound to the accepted end's name) so that both ends have their names; a peer that had
//!    been closed gets a stand-in, kept open until step 2; other sockets are bound, and
//!    datagram sockets connect to their targets.
//! 2. [`finish_descriptions`], once every process of the tree exists, in the same creating
//!    process (which still holds every description it created at its working fd): the
//!    queued data is written back into each socket through crust's copies of the senders
//!    (the peer, the stand-in, the datagram's sender, or a temporary socket of crust), with
//!    the credentials it was sent with, message by message; stand-ins are closed (shutting
//!    their survivor down, with ECONNRESET pending where it was); then options, shutdowns,
//!    and the socket files' mode and owner (or their removal, when they had been unlinked).
//!
//! Binding to a path removes a file already there only when it is a socket file no live
//! socket is bound to: the dead socket file of the dumped process, which the original
//! program would also have had to remove before binding again.
//! Anything else at the path of a socket whose own file was already gone at dump time
//! (unlinked, or replaced by someone else's file) is never touched: that socket is bound
//! under a private root instead (see [`Detached`]). A socket whose file was there at dump
//! time and is replaced since is refused at restore, naming the path.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result, bail};

use super::{RCV_SHUTDOWN, SEND_SHUTDOWN, is_path, path_of};
use crate::image::proto::{OpenFile, UnixCredentials, UnixSocket, UnixSocketFile, open_file};
use crate::kinds::RestoreCtx;
use crate::kinds::fd::Together;
use crate::sys::pidfd::pidfd_getfd;
use crate::sys::socket::{self, Ucred, show_name};
use crate::sys::unix_diag::{self, TCP_ESTABLISHED, TCP_LISTEN};

/// Scratch offsets for remote arguments.
const ADDR_AT: u64 = 0;
const PATH_AT: u64 = 512;
const PAIR_AT: u64 = 4096;

/// Opens one socket description in the process and returns a temporary fd for it; the first
/// socket of a group creates the whole group (kept in `together` for the others).
pub fn open(ctx: &mut RestoreCtx, file: &OpenFile, rec: &UnixSocket, together: &mut Together) -> Result<i32> {
    let group = file.created_with;
    let members = group_members(ctx.open_files, group, rec);
    let fds = match together.get(&group) {
        Some(fds) if group != 0 => fds.clone(),
        _ => {
            let fds = create_group(ctx, &members)?;
            if group != 0 {
                together.insert(group, fds.clone());
            }
            fds
        }
    };
    let index = members.iter().position(|m| m.inode == rec.inode).context("socket missing from its group")?;
    let fd = fds[index];
    let status = file.flags as i32 & !libc::O_ACCMODE;
    ctx.remote.syscall("fcntl(F_SETFL)", libc::SYS_fcntl, &[fd as u64, libc::F_SETFL as u64, status as u64])?;
    Ok(fd)
}

/// The sockets of a group, by inode.
fn group_members(open_files: &crate::image::proto::OpenFiles, group: u64, rec: &UnixSocket) -> Vec<UnixSocket> {
    if group == 0 {
        return vec![rec.clone()];
    }
    let mut members: Vec<UnixSocket> = open_files
        .open_files
        .iter()
        .filter(|f| f.created_with == group)
        .filter_map(|f| match &f.kind {
            Some(open_file::Kind::UnixSocket(u)) => Some(u.clone()),
            _ => None,
        })
        .collect();
    members.sort_by_key(|m| m.inode);
    members
}

/// One end of a connection to make.
struct End<'a> {
    address: &'a [u8],
    file: Option<&'a UnixSocketFile>,
    accepted: bool,
    listener: u64,
    /// What SO_PEERCRED reports on this end.
    peer_credentials: Option<&'a UnixCredentials>,
}

impl<'a> End<'a> {
    fn of(s: &'a UnixSocket) -> End<'a> {
        End {
            address: &s.address,
            file: s.file.as_ref(),
            accepted: s.accepted,
            listener: s.listener_inode,
            peer_credentials: s.peer_credentials.as_ref(),
        }
    }

    fn stand_in(s: &'a UnixSocket) -> End<'a> {
        End {
            address: &s.peer_address,
            file: s.peer_file.as_ref(),
            accepted: s.peer_accepted,
            listener: s.peer_listener_inode,
            peer_credentials: None,
        }
    }
}

/// Runs `f` (a socketpair, listen or connect) with the effective uid and gid the peer
/// credentials (SO_PEERCRED) it sets must carry. The ids are switched back afterwards.
/// Files are reached meanwhile with root's filesystem ids only from a sealed image (the
/// socket files of the tree do not have their final mode and owner yet, and the original
/// processes could reach them); from an image taken on trust, with the peer's own ids. Either
/// way a connect through a path confirms, by inode, that it reached the socket the image
/// names (see [`remote_connect`]).
fn as_peer<T>(ctx: &mut RestoreCtx, creds: Option<&UnixCredentials>, f: impl FnOnce(&mut RestoreCtx) -> Result<T>) -> Result<T> {
    let Some(c) = creds.filter(|c| (c.uid, c.gid) != (0, 0)) else { return f(ctx) };
    let keep = u32::MAX as u64;
    let sealed = ctx.image_sealed;
    let r = &mut *ctx.remote;
    r.syscall("setresgid", libc::SYS_setresgid, &[keep, c.gid as u64, keep])?;
    r.syscall("setresuid", libc::SYS_setresuid, &[keep, c.uid as u64, keep])?;
    if sealed {
        r.syscall_raw(libc::SYS_setfsuid, &[0])?;
        r.syscall_raw(libc::SYS_setfsgid, &[0])?;
    }
    let result = f(ctx);
    let r = &mut *ctx.remote;
    r.syscall("setresuid", libc::SYS_setresuid, &[keep, 0, keep])?;
    r.syscall("setresgid", libc::SYS_setresgid, &[keep, 0, keep])?;
    crate::kinds::credentials::enter_fs_identity(ctx)?;
    result.with_context(|| format!("as uid {} gid {} (the peer credentials it had)", c.uid, c.gid))
}

fn create_group(ctx: &mut RestoreCtx, members: &[UnixSocket]) -> Result<Vec<i32>> {
    let mut away = Detached::default();
    let made = create_members(ctx, members, &mut away);
    away.clean_up();
    made
}

fn create_members(ctx: &mut RestoreCtx, members: &[UnixSocket], away: &mut Detached) -> Result<Vec<i32>> {
    let by_inode: BTreeMap<u64, &UnixSocket> = members.iter().map(|m| (m.inode, m)).collect();
    let mut fds: BTreeMap<u64, i32> = BTreeMap::new();
    let mutual = |m: &UnixSocket| by_inode.get(&m.peer_inode).is_some_and(|p| p.peer_inode == m.inode);
    // Listeners first: accepted connections are made through them.
    for m in members.iter().filter(|m| m.state == TCP_LISTEN as i32) {
        let fd = new_socket(ctx, m.r#type)?;
        bind(ctx, fd, &m.address, m.file.as_ref(), away).with_context(|| format!("binding socket:[{}]", m.inode))?;
        as_peer(ctx, m.peer_credentials.as_ref(), |ctx| {
            ctx.remote
                .syscall("listen", libc::SYS_listen, &[fd as u64, m.backlog as u64])
                .with_context(|| format!("socket:[{}] listening on {}", m.inode, show_name(&m.address)))?;
            Ok(())
        })?;
        fds.insert(m.inode, fd);
    }
    for m in members.iter().filter(|m| mutual(m) && m.inode < m.peer_inode) {
        let peer = by_inode[&m.peer_inode];
        let (a, b) = connect_pair(ctx, &fds, m.r#type, End::of(m), End::of(peer), away)
            .with_context(|| format!("connecting socket:[{}] and socket:[{}]", m.inode, peer.inode))?;
        fds.insert(m.inode, a);
        fds.insert(peer.inode, b);
    }
    for m in members.iter().filter(|m| m.peer_closed) {
        // The stand-in stays open (in this process, inherited by its children) until the
        // queues are refilled; `finish_descriptions` finds it as the survivor's peer.
        let (a, _stand_in) = connect_pair(ctx, &fds, m.r#type, End::of(m), End::stand_in(m), away)
            .with_context(|| format!("connecting socket:[{}] to a stand-in for its closed peer", m.inode))?;
        fds.insert(m.inode, a);
    }
    // Connections not yet accepted: their clients connect again, in the listener's order, once
    // the accepted connections were made through it (accept takes the first waiting one).
    for l in members.iter().filter(|m| !m.pending.is_empty()) {
        for client in &l.pending {
            let m = by_inode.get(client).context("a client waiting on a listener is missing from its group")?;
            let listener = *fds.get(&l.inode).context("a listener with waiting clients is not created yet")?;
            let fd = connect_pending(ctx, m, l, listener, away)
                .with_context(|| format!("connecting socket:[{}] again to {}, not accepted yet", m.inode, show_name(&l.address)))?;
            fds.insert(m.inode, fd);
        }
    }
    for m in members {
        if fds.contains_key(&m.inode) {
            continue;
        }
        let fd = new_socket(ctx, m.r#type)?;
        bind(ctx, fd, &m.address, m.file.as_ref(), away).with_context(|| format!("binding socket:[{}]", m.inode))?;
        fds.insert(m.inode, fd);
    }
    // Datagram sockets connected to a socket that is not connected back, or to themselves.
    for m in members.iter().filter(|m| m.peer_inode != 0 && (!mutual(m) || m.peer_inode == m.inode)) {
        let target = by_inode.get(&m.peer_inode).context("datagram target missing from its group")?;
        let directory = target.file.as_ref().map(|f| f.directory.clone()).unwrap_or_default();
        remote_connect(ctx, fds[&m.inode], &target.address, &directory, away, fds[&target.inode])
            .with_context(|| format!("connecting socket:[{}] to {}", m.inode, show_name(&target.address)))?;
    }
    Ok(members.iter().map(|m| fds[&m.inode]).collect())
}

/// A client whose connection waited in `listener`'s queue: connected again (its embryonic
/// peer waits in the queue again, to be accepted by the program).
fn connect_pending(ctx: &mut RestoreCtx, client: &UnixSocket, listener: &UnixSocket, listening: i32, away: &mut Detached) -> Result<i32> {
    let fd = new_socket(ctx, client.r#type)?;
    bind(ctx, fd, &client.address, client.file.as_ref(), away)?;
    let directory = listener.file.as_ref().map(|f| f.directory.clone()).unwrap_or_default();
    remote_connect(ctx, fd, &listener.address, &directory, away, listening)?;
    Ok(fd)
}

/// Makes a connected pair and gives each end its name: socketpair (names bound
/// afterwards), or connect + accept when one end was accepted.
fn connect_pair(ctx: &mut RestoreCtx, fds: &BTreeMap<u64, i32>, kind: i32, a: End, b: End, away: &mut Detached) -> Result<(i32, i32)> {
    match (a.accepted, b.accepted) {
        (false, true) => accept_pair(ctx, fds, kind, a, b, away),
        (true, false) => accept_pair(ctx, fds, kind, b, a, away).map(|(y, x)| (x, y)),
        (true, true) => bail!("both ends of one connection marked accepted"),
        (false, false) => {
            let pair = ctx.remote.put(PAIR_AT, &[0u8; 8])?;
            as_peer(ctx, a.peer_credentials.or(b.peer_credentials), |ctx| {
                ctx.remote.syscall(
                    "socketpair(AF_UNIX)",
                    libc::SYS_socketpair,
                    &[libc::AF_UNIX as u64, (kind | libc::SOCK_CLOEXEC) as u64, 0, pair],
                )?;
                Ok(())
            })?;
            let mut b8 = [0u8; 8];
            ctx.remote.get(PAIR_AT, &mut b8)?;
            let x = ctx.to_temp_fd(i32::from_ne_bytes(b8[..4].try_into()?) as u64)?;
            let y = ctx.to_temp_fd(i32::from_ne_bytes(b8[4..].try_into()?) as u64)?;
            bind(ctx, x, a.address, a.file, away)?;
            bind(ctx, y, b.address, b.file, away)?;
            Ok((x, y))
        }
    }
}

/// `client` connects to the name of `server`, which the listener accepts: through the
/// image's listener, or a temporary one bound to that name.
fn accept_pair(
    ctx: &mut RestoreCtx,
    fds: &BTreeMap<u64, i32>,
    kind: i32,
    client: End,
    server: End,
    away: &mut Detached,
) -> Result<(i32, i32)> {
    let directory = server.file.map(|f| f.directory.clone()).unwrap_or_default();
    let (listener, temporary) = match server.listener {
        0 => {
            let l = new_socket(ctx, kind)?;
            bind(ctx, l, server.address, server.file, away)?;
            // The client's peer credentials are those of whoever listened.
            as_peer(ctx, client.peer_credentials, |ctx| {
                ctx.remote.syscall("listen", libc::SYS_listen, &[l as u64, 1])?;
                Ok(())
            })?;
            (l, true)
        }
        inode => (*fds.get(&inode).context("the listener of an accepted socket is not created yet")?, false),
    };
    let c = new_socket(ctx, kind)?;
    bind(ctx, c, client.address, client.file, away)?;
    // The accepted end's peer credentials are those of whoever connected.
    as_peer(ctx, server.peer_credentials, |ctx| remote_connect(ctx, c, server.address, &directory, away, listener))?;
    let s = ctx.remote.syscall("accept4", libc::SYS_accept4, &[listener as u64, 0, 0, libc::SOCK_CLOEXEC as u64])?;
    let s = ctx.to_temp_fd(s)?;
    if temporary {
        ctx.close_in_process(listener)?;
    }
    Ok((c, s))
}

fn new_socket(ctx: &mut RestoreCtx, kind: i32) -> Result<i32> {
    let fd = ctx.remote.syscall("socket(AF_UNIX)", libc::SYS_socket, &[libc::AF_UNIX as u64, (kind | libc::SOCK_CLOEXEC) as u64, 0])?;
    ctx.to_temp_fd(fd)
}

fn sockaddr(address: &[u8]) -> Vec<u8> {
    let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    b.extend_from_slice(address);
    b
}

/// The name as crust (in its own working directory) reaches it: a relative path joined to
/// its directory.
fn reachable_name(address: &[u8], file: Option<&UnixSocketFile>) -> Vec<u8> {
    match file {
        Some(f) if is_path(address) && !f.directory.is_empty() => {
            let mut full = format!("{}/{}", f.directory, path_of(address)).into_bytes();
            full.push(0);
            full
        }
        _ => address.to_vec(),
    }
}

fn full_path(address: &[u8], file: Option<&UnixSocketFile>) -> String {
    path_of(&reachable_name(address, file))
}

/// Binds `fd` (in the process) to `address`, exactly as it was named (a relative path from
/// its directory), after removing a dead socket file in the way. A socket whose file was gone
/// at dump time (unlinked, or replaced by another file) and whose path now holds a file that is
/// not a dead socket file is bound away from it (see [`Detached`]): that file is never touched.
fn bind(ctx: &mut RestoreCtx, fd: i32, address: &[u8], file: Option<&UnixSocketFile>, away: &mut Detached) -> Result<()> {
    if address.is_empty() {
        return Ok(());
    }
    let directory = file.map(|f| f.directory.clone()).unwrap_or_default();
    if is_path(address) {
        let full = full_path(address, file);
        if file.is_some_and(|f| !f.present) && held_by_another(&full)? {
            return away.bind(ctx, fd, address, &directory, &full);
        }
        remove_dead_socket_file(&full)?;
    }
    in_directory(ctx, &directory, |ctx| remote_bind(ctx, fd, address))?;
    if is_path(address) {
        // Created by this restore: removed again if the restore fails.
        let socket = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid)).with_context(|| format!("stat of fd {fd}"))?;
        ctx.created_files.record_socket_file(&full_path(address, file), socket.ino())?;
    }
    Ok(())
}

fn remote_bind(ctx: &mut RestoreCtx, fd: i32, address: &[u8]) -> Result<()> {
    let addr = sockaddr(address);
    let at = ctx.remote.put(ADDR_AT, &addr)?;
    ctx.remote
        .syscall("bind", libc::SYS_bind, &[fd as u64, at, addr.len() as u64])
        .with_context(|| format!("binding to {}", show_name(address)))?;
    Ok(())
}

/// Connects `fd` (in the process) to `address` (a relative path from `directory`): through
/// the private root when that name was bound away from its path. `target` is the process's fd
/// of the socket the image says the name reaches (a listener, or a datagram socket): the
/// connection made is confirmed with sock_diag to be to that very socket, and undone
/// otherwise (a path that leads elsewhere since the dump never gives the process another
/// socket).
fn remote_connect(ctx: &mut RestoreCtx, fd: i32, address: &[u8], directory: &str, away: &Detached, target: i32) -> Result<()> {
    connect_by_name(ctx, fd, address, directory, away, target)?;
    confirm_reached(ctx, fd, target, address)
}

/// The inode of the process's socket at `fd`.
fn socket_inode(ctx: &RestoreCtx, fd: i32) -> Result<u64> {
    let meta = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid)).with_context(|| format!("stat of fd {fd}"))?;
    Ok(meta.ino())
}

/// Whether the socket at `client` is connected to the socket at `target`: waiting in its
/// accept queue (a listener) or its peer (a datagram socket).
fn confirm_reached(ctx: &mut RestoreCtx, client: i32, target: i32, address: &[u8]) -> Result<()> {
    let (c, t) = (socket_inode(ctx, client)?, socket_inode(ctx, target)?);
    let listener = unix_diag::query(t as u32, unix_diag::SHOW_ICONS)?.and_then(|d| d.icons);
    let waiting = listener.is_some_and(|icons| icons.iter().any(|i| *i as u64 == c));
    let peer = unix_diag::query(c as u32, unix_diag::SHOW_PEER)?.and_then(|d| d.peer);
    if waiting || peer.is_some_and(|p| p as u64 == t) {
        return Ok(());
    }
    // Disconnected again (AF_UNSPEC) for a datagram socket; a stream socket is closed with
    // the group when the restore fails.
    let unspec = ctx.remote.put(ADDR_AT, &(libc::AF_UNSPEC as u16).to_ne_bytes())?;
    let _ = ctx.remote.syscall("connect(AF_UNSPEC)", libc::SYS_connect, &[client as u64, unspec, 2]);
    bail!(
        "connecting socket:[{c}] to {} reached another socket than socket:[{t}], the one the image names \
         (the path leads elsewhere since the dump); refused",
        show_name(address)
    )
}

fn connect_by_name(ctx: &mut RestoreCtx, fd: i32, address: &[u8], directory: &str, away: &Detached, target: i32) -> Result<()> {
    let connect = |ctx: &mut RestoreCtx| {
        in_directory(ctx, directory, |ctx| {
            let addr = sockaddr(address);
            let at = ctx.remote.put(ADDR_AT, &addr)?;
            ctx.remote
                .syscall("connect", libc::SYS_connect, &[fd as u64, at, addr.len() as u64])
                .with_context(|| format!("connecting to {}", show_name(address)))?;
            Ok(())
        })
    };
    let full = if is_path(address) && !directory.is_empty() && !path_of(address).starts_with('/') {
        format!("{directory}/{}", path_of(address))
    } else {
        path_of(address)
    };
    match away.root_of(&full) {
        Some(root) => in_root(ctx, &root, connect),
        None if is_path(address) => connect_through_file(ctx, fd, address, directory, target),
        None => connect(ctx),
    }
}

/// Connects `fd` to the socket file of `target` itself: the name is opened (O_PATH, in the
/// process, with the ids it has now), checked by device and inode to be the file `target` is
/// bound to, and connected to through /proc/self/fd/N, so that the connect reaches that very
/// inode whatever happens to the path meanwhile (a directory swapped for a symlink leads the
/// open elsewhere, and the check refuses it before anything is connected).
fn connect_through_file(ctx: &mut RestoreCtx, fd: i32, address: &[u8], directory: &str, target: i32) -> Result<()> {
    let path = path_of(address);
    let t = socket_inode(ctx, target)?;
    let vfs = unix_diag::query(t as u32, unix_diag::SHOW_VFS)?
        .and_then(|d| d.vfs)
        .with_context(|| format!("socket:[{t}], named {path}, has no socket file"))?;
    let mut opened = None;
    in_directory(ctx, directory, |ctx| {
        opened = Some(ctx.open_in_process(&path, libc::O_PATH | libc::O_CLOEXEC)?);
        Ok(())
    })
    .with_context(|| format!("opening the socket file {path}"))?;
    let file = opened.context("the socket file was not opened")?;
    let meta = std::fs::metadata(format!("/proc/{}/fd/{file}", ctx.pid));
    let same = meta.as_ref().is_ok_and(|m| (m.dev(), m.ino()) == (unix_diag::decode_dev(vfs.1), vfs.0 as u64));
    let result = if same {
        let through = format!("/proc/self/fd/{file}");
        let addr = sockaddr(through.as_bytes());
        let at = ctx.remote.put(ADDR_AT, &addr)?;
        ctx.remote
            .syscall("connect", libc::SYS_connect, &[fd as u64, at, addr.len() as u64])
            .map(|_| ())
            .with_context(|| format!("connecting to {path} (through {through})"))
    } else {
        Err(anyhow::anyhow!(
            "{path} is not the socket file of socket:[{t}], the socket the image names (the path leads elsewhere since \
             the dump); refused"
        ))
    };
    ctx.close_in_process(file)?;
    result
}

/// Whether the file at `path` is something restore must leave alone: anything but a dead
/// socket file (which binding removes).
fn held_by_another(path: &str) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(!sockets_on_file((meta.dev(), meta.ino()))?.is_empty()),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("stat of {path}")),
    }
}

/// Names bound away from their path. A socket whose file was gone at dump time (unlinked, or
/// replaced since by someone else's file) keeps its name but has no file; when its path holds
/// another file at restore, the socket is bound under a private directory that stands in for
/// `/` for a moment (chroot in the creating process), so the same name is bound without
/// touching that file; the sockets of the group that connect to it do so under the same root.
/// Once the group exists the socket files there are removed: the names stay, fileless, as
/// they were.
#[derive(Default)]
struct Detached {
    root: Option<std::path::PathBuf>,
    /// (full path as named, the directory under the root it was bound in (held), its name)
    names: Vec<(String, OwnedFd, std::ffi::OsString)>,
    /// The directories made under the root, in order: (the directory above it (held), its
    /// name, its path).
    made: Vec<(OwnedFd, std::ffi::OsString, std::path::PathBuf)>,
}

/// Where the private roots are made (root only).
const DETACHED_DIR: &str = "/run/crust/detached";

impl Detached {
    fn root_of(&self, full: &str) -> Option<std::path::PathBuf> {
        self.names.iter().any(|(n, _, _)| n == full).then(|| self.root.clone()).flatten()
    }

    fn bind(&mut self, ctx: &mut RestoreCtx, fd: i32, address: &[u8], directory: &str, full: &str) -> Result<()> {
        // check_structure refused '..' in names and directories; refused here again, as this
        // is where a '..' would lead crust (as root) out of the private root.
        if full.split('/').any(|c| c == "..") {
            bail!("{full}: a socket name with a '..' component is never bound");
        }
        let root = self.private_root()?;
        let relative = full.trim_start_matches('/');
        let (dirs, name) = relative.rsplit_once('/').unwrap_or(("", relative));
        let (parent, parent_path) = self.make_directories(ctx, &root, dirs)?;
        // The process binds with its own filesystem ids: the directory must be its. Only a
        // directory crust made for this group is given to it.
        let made_here = parent_path == root || self.made.iter().any(|(_, _, p)| *p == parent_path);
        if let (Some((uid, gid, _)), true) = (&ctx.fs_identity, made_here) {
            let (uid, gid) = (nix::unistd::Uid::from_raw(*uid), nix::unistd::Gid::from_raw(*gid));
            nix::unistd::fchownat(&parent, "", Some(uid), Some(gid), nix::fcntl::AtFlags::AT_EMPTY_PATH)
                .with_context(|| format!("chown {}", parent_path.display()))?;
        }
        in_root(ctx, &root, |ctx| in_directory(ctx, directory, |ctx| remote_bind(ctx, fd, address)))
            .with_context(|| format!("binding to {} away from the file now at that path", show_name(address)))?;
        let inside = root.join(relative);
        let socket = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid)).with_context(|| format!("stat of fd {fd}"))?;
        ctx.created_files.record_socket_file(&inside.to_string_lossy(), socket.ino())?;
        self.names.push((full.to_owned(), parent, name.into()));
        Ok(())
    }

    /// Makes the directories `dirs` (a relative path) under `root`, each reached from the one
    /// above it with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so nothing on the way can
    /// lead out of the private root. Only directories crust makes here are given a mode (0711)
    /// and journaled (a failed restore removes them); one already there (made for another name
    /// of the group) is left as it is. Returns the last directory, held, and its path.
    fn make_directories(&mut self, ctx: &mut RestoreCtx, root: &std::path::Path, dirs: &str) -> Result<(OwnedFd, std::path::PathBuf)> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let beneath = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        let directory = libc::O_PATH | libc::O_DIRECTORY;
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut here = nix::fcntl::open(root, flags, Mode::empty()).with_context(|| format!("opening {}", root.display()))?;
        let mut path = root.to_path_buf();
        for part in dirs.split('/').filter(|c| !c.is_empty() && *c != ".") {
            path.push(part);
            let made = match nix::sys::stat::mkdirat(&here, part, Mode::from_bits_truncate(0o700)) {
                Ok(()) => true,
                Err(nix::errno::Errno::EEXIST) => false,
                Err(e) => return Err(e).with_context(|| format!("mkdir {}", path.display())),
            };
            let next = crate::sys::openat2(here.as_fd(), std::ffi::OsStr::new(part), directory, 0, beneath)
                .with_context(|| format!("opening {} (no symlink allowed)", path.display()))?;
            if made {
                // chmod of /proc/self/fd/N changes the very directory the descriptor holds.
                let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&next));
                std::fs::set_permissions(&through, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                    .with_context(|| format!("chmod 711 {}", path.display()))?;
                let meta = std::fs::metadata(&through)?;
                let (name, shown) = (std::ffi::OsStr::new(part), path.to_string_lossy());
                ctx.created_files.record_file(&here, name, &shown, (meta.dev(), meta.ino()), crate::created_files::Created::Directory)?;
                self.made.push((here.try_clone()?, part.into(), path.clone()));
            }
            here = next;
        }
        Ok((here, path))
    }

    /// The private root of this group, made (0711, root's) on first use in crust's own
    /// directory.
    fn private_root(&mut self) -> Result<std::path::PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(DETACHED_DIR).with_context(|| format!("creating {DETACHED_DIR}"))?;
        let r = std::path::Path::new(DETACHED_DIR).join(format!("{}-{}", std::process::id(), unique_suffix()));
        std::fs::create_dir(&r).with_context(|| format!("creating {}", r.display()))?;
        // A new directory of crust's own: its mode is set whatever the umask.
        std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o711))?;
        self.root = Some(r.clone());
        Ok(r)
    }

    /// Removes the socket files and the private root (best effort: a leftover empty
    /// directory under /run harms nothing).
    fn clean_up(self) {
        use nix::unistd::{UnlinkatFlags, unlinkat};
        let Some(root) = self.root else { return };
        // Through the held directories: nothing swapped in on the paths meanwhile leads these
        // removals elsewhere.
        for (_, dir, name) in &self.names {
            let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        for (dir, name, _) in self.made.iter().rev() {
            let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::RemoveDir);
        }
        let _ = std::fs::remove_dir(root);
    }
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `f` with the process's root at `root` (and its working directory there), then puts
/// its root and working directory back.
fn in_root(ctx: &mut RestoreCtx, root: &std::path::Path, f: impl FnOnce(&mut RestoreCtx) -> Result<()>) -> Result<()> {
    let flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    let slash = ctx.remote.put_path(PATH_AT, "/")?;
    let old_root = ctx.remote.syscall("openat(/)", libc::SYS_openat, &[libc::AT_FDCWD as u64, slash, flags, 0])?;
    let dot = ctx.remote.put_path(PATH_AT, ".")?;
    let old_cwd = ctx.remote.syscall("openat(.)", libc::SYS_openat, &[libc::AT_FDCWD as u64, dot, flags, 0])?;
    let path = ctx.remote.put_path(PATH_AT, &root.to_string_lossy())?;
    let result =
        ctx.remote.syscall("chroot", libc::SYS_chroot, &[path]).with_context(|| format!("changing root to {}", root.display())).and_then(
            |_| {
                let slash = ctx.remote.put_path(PATH_AT, "/")?;
                ctx.remote.syscall("chdir(/)", libc::SYS_chdir, &[slash])?;
                f(ctx)
            },
        );
    // Back: the saved root directory becomes the root again, then the working directory.
    ctx.remote.syscall("fchdir", libc::SYS_fchdir, &[old_root])?;
    let dot = ctx.remote.put_path(PATH_AT, ".")?;
    ctx.remote.syscall("chroot(.)", libc::SYS_chroot, &[dot])?;
    ctx.remote.syscall("fchdir", libc::SYS_fchdir, &[old_cwd])?;
    ctx.remote.syscall("close", libc::SYS_close, &[old_root])?;
    ctx.remote.syscall("close", libc::SYS_close, &[old_cwd])?;
    result
}

/// Runs `f` with the process's working directory at `directory` (unless empty), and puts
/// the working directory back afterwards.
fn in_directory(ctx: &mut RestoreCtx, directory: &str, f: impl FnOnce(&mut RestoreCtx) -> Result<()>) -> Result<()> {
    if directory.is_empty() {
        return f(ctx);
    }
    let dot = ctx.remote.put_path(PATH_AT, ".")?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let saved = ctx.remote.syscall("openat(.)", libc::SYS_openat, &[libc::AT_FDCWD as u64, dot, flags as u64, 0])?;
    let dir = ctx.remote.put_path(PATH_AT, directory)?;
    let result =
        ctx.remote.syscall("chdir", libc::SYS_chdir, &[dir]).with_context(|| format!("changing to {directory}")).and_then(|_| f(ctx));
    ctx.remote.syscall("fchdir", libc::SYS_fchdir, &[saved])?;
    ctx.remote.syscall("close", libc::SYS_close, &[saved])?;
    result
}

/// Live sockets bound to (or accepted through) the socket file (dev, ino).
fn sockets_on_file((dev, ino): (u64, u64)) -> Result<Vec<u32>> {
    let all = unix_diag::dump(u32::MAX, unix_diag::SHOW_VFS).context("sock_diag: listing UNIX sockets")?;
    Ok(all
        .iter()
        .filter(|d| d.vfs.is_some_and(|(i, raw_dev)| i as u64 == ino && unix_diag::decode_dev(raw_dev) == dev))
        .map(|d| d.inode)
        .collect())
}

/// The directory holding `path`, held open, and the file's name in it (None when the
/// directory is not there). What crust checks through it and what it removes from it are
/// the same directory entry, whatever happens to the path meanwhile (a directory on it
/// swapped for a symlink leads the open elsewhere, but then the identity checked there is
/// not the socket's, and nothing is removed).
fn directory_of(path: &str) -> Result<Option<(OwnedFd, std::ffi::OsString)>> {
    use nix::fcntl::OFlag;
    let p = std::path::Path::new(path);
    let name = p.file_name().with_context(|| format!("socket path {path} has no file name"))?.to_owned();
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match nix::fcntl::open(parent, flags, nix::sys::stat::Mode::empty()) {
        Ok(dir) => Ok(Some((dir, name))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening the directory of {path}")),
    }
}

/// What tells one directory entry's file from another: its kind, device, inode and change
/// time (an inode number freed by an unlink can be given at once to a new file; the new
/// file's change time is its own).
#[derive(Clone, Copy, Debug, PartialEq)]
struct EntryIdentity {
    kind: u32,
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// The identity of `name` in `dir`, not following a symlink; None when absent.
fn entry_identity(dir: &OwnedFd, name: &std::ffi::OsStr, path: &str) -> Result<Option<EntryIdentity>> {
    match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(EntryIdentity {
            kind: st.st_mode & libc::S_IFMT,
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("stat of {path}")),
    }
}

/// Removes `name` from `dir` only while it is still the file that was checked.
fn unlink_checked(dir: &OwnedFd, name: &std::ffi::OsStr, path: &str, checked: EntryIdentity) -> Result<()> {
    if entry_identity(dir, name, path)? != Some(checked) {
        bail!("{path} changed while crust checked it; it is left alone");
    }
    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir).with_context(|| format!("unlink {path}"))
}

/// Removes the file at `path` if it is a socket file no live socket uses; refuses anything
/// else in the way. Checked and removed through its directory's descriptor (see
/// [`directory_of`]), never by path again.
fn remove_dead_socket_file(path: &str) -> Result<()> {
    let Some((dir, name)) = directory_of(path)? else { return Ok(()) };
    let Some(checked) = entry_identity(&dir, &name, path)? else { return Ok(()) };
    if checked.kind != libc::S_IFSOCK {
        bail!("{path} exists and is not a socket file; crust removes only dead socket files before binding");
    }
    if let Some(live) = sockets_on_file((checked.dev, checked.ino))?.first() {
        bail!("{path} is the socket file of a live socket (socket:[{live}]): the name is in use");
    }
    unlink_checked(&dir, &name, path, checked).with_context(|| format!("removing the dead socket file {path}"))
}

/// The second step, once every process exists: queues, stand-ins, options, shutdowns,
/// socket files. `files` are the descriptions this process created.
pub fn finish_descriptions(ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()> {
    let socks: Vec<(u32, &UnixSocket)> = files
        .iter()
        .filter_map(|f| match &f.kind {
            Some(open_file::Kind::UnixSocket(u)) => Some((f.id, u)),
            _ => None,
        })
        .collect();
    if socks.is_empty() {
        return Ok(());
    }
    let pid = ctx.pid.as_raw();
    let mut copies: BTreeMap<u64, OwnedFd> = BTreeMap::new();
    for (id, s) in &socks {
        copies.insert(s.inode, pidfd_getfd(&ctx.pidfd, pid, ctx.work_fd_floor + *id as i32)?);
    }
    let records: BTreeMap<u64, &UnixSocket> = socks.iter().map(|(_, s)| (s.inode, *s)).collect();
    let mut stand_ins: BTreeMap<u64, (i32, OwnedFd)> = BTreeMap::new();
    for (_, s) in socks.iter().filter(|(_, s)| s.peer_closed) {
        let found =
            find_stand_in(ctx, copies[&s.inode].as_fd()).with_context(|| format!("finding the stand-in peer of socket:[{}]", s.inode))?;
        stand_ins.insert(s.inode, found);
    }

    // The descriptions in flight, opened by this process or an ancestor (which it inherited
    // them from) at their working fds.
    let mut rights: BTreeMap<u32, OwnedFd> = BTreeMap::new();
    for id in socks.iter().flat_map(|(_, s)| s.queued.iter().flat_map(|m| m.rights.iter())) {
        if !rights.contains_key(id) {
            let copy = pidfd_getfd(&ctx.pidfd, pid, ctx.work_fd_floor + *id as i32)
                .with_context(|| format!("pid {pid}: the description #{id} in flight"))?;
            rights.insert(*id, copy);
        }
    }
    for (_, s) in &socks {
        refill(s, &records, &copies, &stand_ins, &rights).with_context(|| {
            format!("refilling the queue of socket:[{}] ({}, {} message(s))", s.inode, show_name(&s.address), s.queued.len())
        })?;
    }
    for (inode, (fd, stand_in)) in stand_ins {
        if records[&inode].peer_reset {
            // Data left unread in the peer when it closed: the survivor's next read fails
            // with ECONNRESET.
            socket::send(copies[&inode].as_fd(), b"!", None, None, &[], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .with_context(|| format!("leaving unread data in the stand-in peer of socket:[{inode}]"))?;
        }
        let s = records[&inode];
        if is_path(&s.peer_address) {
            settle_file(&s.peer_address, s.peer_file.as_ref(), stand_in.as_fd())?;
        }
        drop(stand_in);
        ctx.close_in_process(fd)?;
    }
    for (_, s) in &socks {
        let fd = copies[&s.inode].as_fd();
        set_options(fd, s).with_context(|| format!("setting the options of socket:[{}]", s.inode))?;
        keep_connected_state(s, &records, &copies)?;
        let how = match s.shutdown & (RCV_SHUTDOWN | SEND_SHUTDOWN) {
            RCV_SHUTDOWN => Some(libc::SHUT_RD),
            SEND_SHUTDOWN => Some(libc::SHUT_WR),
            0 => None,
            _ => Some(libc::SHUT_RDWR),
        };
        if let (Some(how), false) = (how, s.peer_closed) {
            socket::shutdown(fd, how).with_context(|| format!("shutting socket:[{}] down", s.inode))?;
        }
        if is_path(&s.address) {
            settle_file(&s.address, s.file.as_ref(), fd)?;
        }
    }
    Ok(())
}

/// The stand-in made for a closed peer: the survivor's peer, found among the process's fds.
fn find_stand_in(ctx: &RestoreCtx, survivor: BorrowedFd) -> Result<(i32, OwnedFd)> {
    let inode = std::fs::File::from(survivor.try_clone_to_owned()?).metadata()?.ino();
    let diag = unix_diag::query(inode as u32, unix_diag::SHOW_PEER)?.context("sock_diag does not know the survivor")?;
    let peer = diag.peer.filter(|p| *p != 0).context("the survivor has no peer")?;
    let pid = ctx.pid.as_raw();
    let link = format!("socket:[{peer}]");
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy() == link) {
            let fd: i32 = entry.file_name().to_string_lossy().parse()?;
            return Ok((fd, pidfd_getfd(&ctx.pidfd, pid, fd)?));
        }
    }
    bail!("pid {pid} does not hold {link}")
}

/// Writes the queued messages back into `s`, each through its sender.
fn refill(
    s: &UnixSocket,
    records: &BTreeMap<u64, &UnixSocket>,
    copies: &BTreeMap<u64, OwnedFd>,
    stand_ins: &BTreeMap<u64, (i32, OwnedFd)>,
    rights: &BTreeMap<u32, OwnedFd>,
) -> Result<()> {
    if s.queued.is_empty() {
        return Ok(());
    }
    let total: usize = s.queued.iter().map(|m| m.data.len()).sum();
    let my_name = reachable_name(&s.address, s.file.as_ref());
    let mut temporary: Option<OwnedFd> = None;
    let mut own: Option<(Option<OwnedFd>, Vec<u8>)> = None;
    for m in &s.queued {
        // (writer, name to send to when the writer is not connected to `s`)
        let (writer, to): (BorrowedFd, Option<&[u8]>) = if s.peer_closed {
            (stand_ins[&s.inode].1.as_fd(), None)
        } else if s.r#type != libc::SOCK_DGRAM {
            (copies.get(&s.peer_inode).context("the peer is not in this group")?.as_fd(), None)
        } else if m.writer != 0 {
            let connected = records.get(&m.writer).is_some_and(|w| w.peer_inode == s.inode);
            let fd = copies.get(&m.writer).context("the sender is not in this group")?.as_fd();
            (fd, if connected { None } else { Some(&my_name[..]) })
        } else {
            if temporary.is_none() {
                temporary = Some(socket::unix_socket(libc::SOCK_DGRAM)?);
            }
            (temporary.as_ref().unwrap().as_fd(), Some(&my_name[..]))
        };
        // Sent through the socket's own file, checked once (see `through_own_file`).
        if to.is_some() && own.is_none() {
            own = Some(through_own_file(&my_name, copies[&s.inode].as_fd())?);
        }
        let to = to.and(own.as_ref().map(|(_, name)| &name[..]));
        make_room(writer, total)?;
        let creds = m.credentials.as_ref().map(|c| Ucred { pid: c.pid, uid: c.uid, gid: c.gid });
        let passed: Vec<BorrowedFd> = m
            .rights
            .iter()
            .map(|id| rights.get(id).map(|f| f.as_fd()).with_context(|| format!("description #{id} in flight")))
            .collect::<Result<_>>()?;
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        if s.r#type == libc::SOCK_STREAM {
            // The descriptors go with the first buffer of the piece, which is the whole piece
            // (make_room made the sender's buffer large enough).
            let mut sent = socket::send(writer, &m.data, None, creds, &passed, flags)?;
            if !passed.is_empty() && sent != m.data.len() {
                bail!("sent {sent} of the {} bytes that carry descriptors in one piece", m.data.len());
            }
            while sent < m.data.len() {
                sent += socket::send(writer, &m.data[sent..], None, creds, &[], flags)?;
            }
        } else {
            let n = socket::send(writer, &m.data, to, creds, &passed, flags).map_err(|e| {
                let full = e.errno() == Some(nix::errno::Errno::EAGAIN);
                anyhow::Error::from(e).context(if full {
                    "the receiving queue is full (more datagrams than net.unix.max_dgram_qlen allows from unconnected senders?)"
                } else {
                    "sending a queued message again"
                })
            })?;
            if n != m.data.len() {
                bail!("sent {n} of the {} bytes of a message", m.data.len());
            }
        }
    }
    Ok(())
}

/// The name through which a datagram (or a connect) of crust reaches `owner` by its socket
/// file: the file at `name` is opened (O_PATH, not following a final symlink), checked to be
/// `owner`'s socket file (device and inode), and named /proc/self/fd/N, so that what crust
/// sends or connects as root goes to that very inode whatever happens to the path after the
/// check. Refused when the path holds another file (the socket's own file was gone, and
/// someone else's is there). Abstract names are returned as they are. The descriptor must be
/// kept open while the name is used.
fn through_own_file(name: &[u8], owner: BorrowedFd) -> Result<(Option<OwnedFd>, Vec<u8>)> {
    use nix::fcntl::OFlag;
    if !is_path(name) {
        return Ok((None, name.to_vec()));
    }
    let path = path_of(name);
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let handle = nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()).with_context(|| format!("opening {path}"))?;
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let meta = std::fs::metadata(&through).with_context(|| format!("stat of {path}"))?;
    let inode = std::fs::File::from(owner.try_clone_to_owned()?).metadata()?.ino();
    let vfs = unix_diag::query(inode as u32, unix_diag::SHOW_VFS)?.and_then(|d| d.vfs);
    if !vfs.is_some_and(|(ino, dev)| ino as u64 == meta.ino() && unix_diag::decode_dev(dev) == meta.dev()) {
        bail!("{path} holds another file than this socket's: its queued datagrams cannot be sent to it by name");
    }
    Ok((Some(handle), through.into_bytes()))
}

/// Raises the sender's buffer so the whole queue fits (its own size is set afterwards).
fn make_room(writer: BorrowedFd, total: usize) -> Result<()> {
    let want = (2 * total + (1 << 20)).min(i32::MAX as usize / 2 - 1) as i32;
    let now = socket::get_int(writer, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    if now < want {
        socket::set_int(writer, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)?;
    }
    Ok(())
}

fn set_options(fd: BorrowedFd, s: &UnixSocket) -> Result<()> {
    let set = |name: i32, value: i32| socket::set_int(fd, libc::SOL_SOCKET, name, value);
    // setsockopt doubles what it is given (getsockopt reports the doubled value).
    set(libc::SO_SNDBUFFORCE, s.send_buffer / 2)?;
    set(libc::SO_RCVBUFFORCE, s.receive_buffer / 2)?;
    if s.pass_credentials {
        set(libc::SO_PASSCRED, 1)?;
    }
    if s.pass_security {
        set(libc::SO_PASSSEC, 1)?;
    }
    if s.pass_pidfd {
        set(socket::SO_PASSPIDFD, 1)?;
    }
    if s.refuse_rights {
        set(socket::SO_PASSRIGHTS, 0)?;
    }
    if s.peek_offset != -1 {
        set(libc::SO_PEEK_OFF, s.peek_offset)?;
    }
    if s.receive_lowat != 1 {
        set(libc::SO_RCVLOWAT, s.receive_lowat)?;
    }
    for (name, us) in [(libc::SO_RCVTIMEO, s.receive_timeout_us), (libc::SO_SNDTIMEO, s.send_timeout_us)] {
        if us != 0 {
            let mut tv = ((us / 1_000_000) as i64).to_ne_bytes().to_vec();
            tv.extend_from_slice(&((us % 1_000_000) as i64).to_ne_bytes());
            socket::set_bytes(fd, libc::SOL_SOCKET, name, &tv)?;
        }
    }
    Ok(())
}

/// A datagram socket that another socket had connected to shows as connected even without
/// a peer of its own; a connect from a temporary socket of crust does the same.
fn keep_connected_state(s: &UnixSocket, records: &BTreeMap<u64, &UnixSocket>, copies: &BTreeMap<u64, OwnedFd>) -> Result<()> {
    let targeted = s.r#type == libc::SOCK_DGRAM && s.state == TCP_ESTABLISHED as i32 && s.peer_inode == 0 && !s.peer_closed;
    let by_image = records.values().any(|r| r.peer_inode == s.inode);
    if !targeted || by_image || s.address.is_empty() {
        return Ok(());
    }
    let name = reachable_name(&s.address, s.file.as_ref());
    let fd = copies.get(&s.inode).context("the socket has no copy")?.as_fd();
    let (_handle, through) = through_own_file(&name, fd).with_context(|| format!("marking socket:[{}] connected", s.inode))?;
    let temporary = socket::unix_socket(libc::SOCK_DGRAM)?;
    socket::connect(temporary.as_fd(), &through).with_context(|| format!("marking socket:[{}] connected", s.inode))?;
    Ok(())
}

/// Gives the socket file of `owner` its mode and owner, or removes it when it had been
/// unlinked before the dump.
fn settle_file(address: &[u8], file: Option<&UnixSocketFile>, owner: BorrowedFd) -> Result<()> {
    let Some(f) = file else { return Ok(()) };
    let path = full_path(address, file);
    // Everything below goes through one O_PATH descriptor of the very file checked, never the
    // path again: a symlink or another file swapped in meanwhile is not touched.
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
    let Ok(handle) = nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()) else { return Ok(()) };
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let Ok(meta) = std::fs::metadata(&through) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Ok(());
    }
    let inode = std::fs::File::from(owner.try_clone_to_owned()?).metadata()?.ino();
    let vfs = unix_diag::query(inode as u32, unix_diag::SHOW_VFS)?.and_then(|d| d.vfs);
    let ours = vfs.is_some_and(|(ino, dev)| ino as u64 == meta.ino() && unix_diag::decode_dev(dev) == meta.dev());
    if !ours {
        return Ok(());
    }
    if !f.present {
        // Through its directory's descriptor, and only while the name still holds this file.
        let Some((dir, name)) = directory_of(&path)? else { return Ok(()) };
        let checked = EntryIdentity { kind: libc::S_IFSOCK, dev: meta.dev(), ino: meta.ino(), ctime: (meta.ctime(), meta.ctime_nsec()) };
        return unlink_checked(&dir, &name, &path, checked)
            .with_context(|| format!("removing {path}, which had been unlinked before the dump"));
    }
    if meta.mode() & 0o7777 != f.mode {
        // chmod of /proc/self/fd/N changes the inode the descriptor holds.
        std::fs::set_permissions(&through, std::os::unix::fs::PermissionsExt::from_mode(f.mode))
            .with_context(|| format!("chmod {:o} {path}", f.mode))?;
    }
    if (meta.uid(), meta.gid()) != (f.uid, f.gid) {
        let (uid, gid) = (nix::unistd::Uid::from_raw(f.uid), nix::unistd::Gid::from_raw(f.gid));
        nix::unistd::fchownat(&handle, "", Some(uid), Some(gid), nix::fcntl::AtFlags::AT_EMPTY_PATH)
            .with_context(|| format!("chown {}:{} {path}", f.uid, f.gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed at the end.
    fn scratch(label: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("crust-unit-{label}-{}-{}", std::process::id(), unique_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The name checked is replaced by another file before the removal: the removal, through
    /// the held directory, finds another inode and leaves it alone.
    #[test]
    fn unlink_checked_leaves_a_file_swapped_in_after_the_check() {
        let d = scratch("swap");
        let path = d.join("s.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        let p = path.to_str().unwrap();
        let (dir, name) = directory_of(p).unwrap().unwrap();
        let checked = entry_identity(&dir, &name, p).unwrap().unwrap();
        assert_eq!(checked.kind, libc::S_IFSOCK);
        std::fs::remove_file(&path).unwrap();
        // Another socket file (the freed inode number may well be given to it).
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        let err = unlink_checked(&dir, &name, p, checked).unwrap_err();
        assert!(format!("{err:#}").contains("changed while crust checked it"), "{err:#}");
        assert!(std::fs::symlink_metadata(&path).is_ok(), "the file swapped in was removed");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A directory on the path swapped for a symlink after the directory was opened: the
    /// removal still happens in the directory checked, never in the symlink's target.
    #[test]
    fn removal_goes_to_the_directory_held_not_where_the_path_now_leads() {
        let d = scratch("dirswap");
        std::fs::create_dir(d.join("a")).unwrap();
        std::fs::create_dir(d.join("elsewhere")).unwrap();
        let path = d.join("a/s.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        drop(std::os::unix::net::UnixDatagram::bind(d.join("elsewhere/s.sock")).unwrap());
        let p = path.to_str().unwrap();
        let (dir, name) = directory_of(p).unwrap().unwrap();
        let checked = entry_identity(&dir, &name, p).unwrap().unwrap();
        std::fs::rename(d.join("a"), d.join("moved")).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("a")).unwrap();
        unlink_checked(&dir, &name, p, checked).unwrap();
        assert!(!d.join("moved/s.sock").exists(), "the socket file checked was not removed");
        assert!(std::fs::symlink_metadata(d.join("elsewhere/s.sock")).is_ok(), "the file behind the symlink was removed");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
