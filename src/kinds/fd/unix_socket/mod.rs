//! UNIX domain sockets whose connections all stay inside the dumped tree: stream, datagram
//! and seqpacket sockets, socket pairs, bound (path and abstract names), listening, connected
//! (by socketpair or connect/accept), with the data queued in each direction, shutdown
//! state and options.
//!
//! Dump learns what no socket call reports from sock_diag (peer inode, waiting connections,
//! queue lengths, shutdown state, socket file) and reads the queued data through crust's
//! `pidfd_getfd` copy with MSG_PEEK, walking messages with SO_PEEK_OFF (put back afterwards):
//! the process's queues and state are left as they were. Once the whole tree was seen,
//! [`finish`] checks that every peer is inside it, decides how each connection is made again
//! and groups the sockets that must be created together.
//!
//! A listener's connections not yet accepted are recorded by their clients (sock_diag lists
//! them in accept order); restore makes each client connect again, in that order, so the
//! program accepts the same connections in the same order.
//!
//! Restore (see `restore`) creates each group in one process (socketpair, bind, listen,
//! connect + accept), and once every process exists refills the queues by writing into the
//! peers through crust's copies (with the senders' credentials), then sets the options and
//! shutdowns.
//!
//! Descriptors in flight (SCM_RIGHTS) come back with their messages: the peek installs them in
//! crust, as in any receiver, and the fd table records what they refer to like any other
//! description (the same description as a process's fd, when one holds it); restore sends each
//! message again with them, from the process that created the socket (which holds them at
//! their working fds).
//!
//! Refused by pid and fd: other families (INET, NETLINK...), a peer outside the tree,
//! descriptors in flight that no process holds, unless they are regular files, directories,
//! pipes, UNIX sockets, eventfds, signalfds, timerfds or character devices, connections not
//! yet accepted whose client sent data into them (it waits in the embryonic socket, which
//! nothing can read before accept) or was closed, out-of-band data, a
//! pending socket error, receive timestamps, socket filters, and datagrams whose sender
//! crust cannot stand in for.
//!
//! Known limits: in a stream, the bytes queued before a buffer carrying descriptors (back to
//! the previous such buffer) come back in that buffer: a read of only those first bytes gets
//! the descriptors with them, where before it would have got them with the later bytes (no
//! peek shows where the buffer began; a read covering the whole piece, the usual case, is the
//! same). SO_PEERCRED's pid is the process that recreated the connection (its uid and
//! gid are kept), except on a connection not yet accepted: once accepted, its SO_PEERCRED
//! names the restoring process with its ids at restore time (root), since nothing shows the
//! waiting socket's; a descriptor in flight that is a UNIX socket with a relative name is
//! recorded with crust's working directory; peeking at a zero-length datagram marks it "peeked" in the kernel, as any
//! MSG_PEEK of the process would (it only matters to a process that itself walks its queue
//! with SO_PEEK_OFF, which then steps over it), and a zero-length datagram the process had
//! itself peeked at that way is stepped over by crust's walk too.

mod restore;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result, anyhow, bail};

use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{OpenFile, UnixCredentials, UnixMessage, UnixSocket, UnixSocketFile, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::socket::{self, Ucred, show_name};
use crate::sys::unix_diag::{self, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, UnixDiag};

/// created_with values of socket groups carry this bit, so they never meet another kind's.
const GROUP_TAG: u64 = 1 << 62;

const RCV_SHUTDOWN: u32 = 1;
const SEND_SHUTDOWN: u32 = 2;

pub struct UnixSockets;

impl FdKind for UnixSockets {
    type Record = UnixSocket;
    const NAME: &'static str = "UNIX socket";

    fn record_of(kind: &open_file::Kind) -> Option<&UnixSocket> {
        match kind {
            open_file::Kind::UnixSocket(u) => Some(u),
            _ => None,
        }
    }

    fn into_kind(record: UnixSocket) -> open_file::Kind {
        open_file::Kind::UnixSocket(record)
    }

    /// Every socket: those of other families are refused by name in `dump`.
    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFSOCK
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        refuse_other_families(src)?;
        refuse_climbing_names(src)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<UnixSocket>> {
        let (record, carried) = dump(src)?;
        Ok(Dumped { record, created_with: 0, carried })
    }

    /// The descriptors in flight were recorded as indexes into `carried`: now the ids.
    fn resolve_carried(record: &mut UnixSocket, ids: &[u32]) -> Result<()> {
        for m in &mut record.queued {
            for r in &mut m.rights {
                *r = *ids.get(*r as usize).context("a descriptor in flight without its description")?;
            }
        }
        Ok(())
    }

    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, _state: &mut KindState) -> Result<()> {
        let holder = |id: u32| tree.holders.get(&id).and_then(|h| h.first().copied());
        finish(files, &holder)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &UnixSocket, together: &mut Together) -> Result<i32> {
        restore::open(ctx, file, record, together)
    }

    fn finish_descriptions(ctx: &mut RestoreCtx, files: &[(&OpenFile, &UnixSocket)]) -> Result<()> {
        let files: Vec<&OpenFile> = files.iter().map(|(f, _)| *f).collect();
        restore::finish_descriptions(ctx, &files)
    }

    fn describe(record: &UnixSocket) -> String {
        format!("socket:[{}]", record.inode)
    }

    fn show(record: &UnixSocket, json: &mut serde_json::Value) {
        show(record, json)
    }
}

/// Sockets of other families than AF_UNIX, refused by pid, fd and family (also before the
/// tree is frozen).
fn refuse_other_families(src: &FdSource) -> Result<()> {
    let opt = |name: i32| socket::get_int(src.copy.as_fd(), libc::SOL_SOCKET, name);
    let domain = opt(libc::SO_DOMAIN).with_context(|| format!("pid {} fd {}: SO_DOMAIN", src.pid, src.fd))?;
    if domain != libc::AF_UNIX {
        let kind = opt(libc::SO_TYPE).unwrap_or(0);
        return Err(anyhow!(
            "pid {} fd {}: {} is {}: crust checkpoints UNIX, TCP and UDP sockets only",
            src.pid,
            src.fd,
            src.link,
            family_name(domain, kind)
        ));
    }
    Ok(())
}

/// Whether a socket name (a path address) has a `..` component. Such a name no longer says
/// where its file is once the process changed directory (or the directories were renamed):
/// the path crust would compute from the working directory leads somewhere else, possibly
/// into a directory the process could never write to, where restore would act as root.
pub(crate) fn climbs(address: &[u8]) -> bool {
    is_path(address) && path_of(address).split('/').any(|c| c == "..")
}

/// Restore, when the image is loaded: names and directories that would make crust act
/// outside the paths the process had: a `..` in a name, or a directory that is not an absolute
/// path free of `.`, `..` and empty components (the kernel's own names never hold them).
/// Returns the field at fault.
pub fn check_structure(rec: &UnixSocket) -> std::result::Result<(), (&'static str, String)> {
    for (field, name) in [("address", &rec.address), ("peer_address", &rec.peer_address)] {
        if climbs(name) {
            return Err((field, format!("{} has a '..' component", show_name(name))));
        }
        if name.len() > 108 {
            return Err((field, format!("a name of {} bytes (longer than sun_path)", name.len())));
        }
    }
    for (field, file) in [("file.directory", &rec.file), ("peer_file.directory", &rec.peer_file)] {
        let Some(directory) = file.as_ref().map(|f| f.directory.as_str()).filter(|d| !d.is_empty()) else { continue };
        if !is_canonical_path(directory) {
            return Err((field, format!("{directory:?} is not an absolute path without '.', '..' or empty components")));
        }
    }
    Ok(())
}

/// An absolute path as the kernel names files: "/" or "/a/b", no `.`, `..` or empty component.
pub fn is_canonical_path(path: &str) -> bool {
    path == "/"
        || path.strip_prefix('/').is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
            && path.len() < libc::PATH_MAX as usize
}

/// Sockets bound to (or connected to a closed peer named by) a path with a `..` component,
/// refused by pid, fd and kind (also before the tree is frozen).
fn refuse_climbing_names(src: &FdSource) -> Result<()> {
    let fd = src.copy.as_fd();
    let own = socket::local_name(fd).unwrap_or_default();
    let peer = socket::peer_name(fd).unwrap_or_default();
    for (which, name) in [("bound to", &own), ("connected to", &peer)] {
        if climbs(name) {
            bail!(
                "pid {} fd {}: UNIX socket {} is {which} {}, a name with a '..' component; crust cannot \
                 checkpoint it (the name does not say where its file is once the process moved)",
                src.pid,
                src.fd,
                src.link,
                show_name(name)
            );
        }
    }
    Ok(())
}

/// Returns the record, and crust's copies of the descriptors in flight in its queue (the
/// messages' `rights` index them); its created_with group is decided by [`finish`] once the
/// whole tree was seen.
fn dump(src: &FdSource) -> Result<(UnixSocket, Vec<OwnedFd>)> {
    let fd = src.copy.as_fd();
    // "pid P fd F: socket:[N] <what>; crust cannot checkpoint it"
    let refuse = |what: String| anyhow!("pid {} fd {}: {} {what}; crust cannot checkpoint it", src.pid, src.fd, src.link);

    refuse_other_families(src)?;
    refuse_climbing_names(src)?;
    let inode = src.meta.ino();
    let diag = unix_diag::query(inode as u32, unix_diag::SHOW_ALL)
        .with_context(|| format!("pid {} fd {}: sock_diag of {}", src.pid, src.fd, src.link))?
        .ok_or_else(|| anyhow!("pid {} fd {}: sock_diag does not know {}", src.pid, src.fd, src.link))?;
    let kind = diag.kind as i32;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&kind) {
        return Err(refuse(format!("is a UNIX socket of type {kind}")));
    }
    let stream_like = kind != libc::SOCK_DGRAM;

    let in_flight: usize = src.fdinfo_field("scm_fds:").and_then(|v| v.parse().ok()).unwrap_or(0);
    refuse_unsupported_options(fd).map_err(&refuse)?;
    let events = socket::poll_now(fd).with_context(|| format!("pid {} fd {}: poll", src.pid, src.fd))?;
    if kind == libc::SOCK_STREAM && events & libc::POLLPRI != 0 {
        return Err(refuse("has out-of-band data (MSG_OOB) waiting".into()));
    }

    let mut rec = UnixSocket {
        inode,
        r#type: kind,
        state: diag.state as i32,
        address: diag.name.clone().unwrap_or_default(),
        shutdown: diag.shutdown.unwrap_or(0) as u32,
        ..Default::default()
    };
    read_options(fd, &mut rec).with_context(|| format!("pid {} fd {}: reading socket options", src.pid, src.fd))?;
    if is_path(&rec.address) {
        rec.file = Some(socket_file(src.pid, &rec.address, diag.vfs).map_err(|e| refuse(format!("{e:#}")))?);
    }

    match diag.state {
        TCP_LISTEN => {
            let (_, backlog) = diag.rqlen.unwrap_or((0, 0));
            rec.backlog = backlog;
            // Connections not yet accepted, by their clients (0: a client already closed).
            rec.pending = diag.icons.clone().unwrap_or_default().into_iter().map(u64::from).collect();
            if rec.pending.contains(&0) {
                return Err(refuse(format!(
                    "is listening on {} with a connection not yet accepted whose client was closed",
                    show_name(&rec.address)
                )));
            }
        }
        TCP_ESTABLISHED => match diag.peer {
            Some(0) => {
                if let Some(listener) = waiting_on(inode as u32)? {
                    // Its peer is the embryonic socket waiting in the listener's queue: what
                    // it sent there cannot be read before the connection is accepted.
                    let sent = diag.rqlen.map(|(_, w)| w).unwrap_or(0);
                    if sent > 0 {
                        return Err(refuse(format!(
                            "is a connection to {} not yet accepted by the listener (socket:[{}]), with data sent \
                             into it ({sent} bytes of buffers) that cannot be read before it is accepted",
                            show_name(&listener.name.unwrap_or_default()),
                            listener.inode
                        )));
                    }
                    rec.pending_on = listener.inode as u64;
                    rec.peer_address = socket::peer_name(fd).unwrap_or_default();
                } else {
                    closed_peer(src, &mut rec, events, stream_like).map_err(|e| refuse(format!("{e:#}")))?;
                }
            }
            Some(peer) => {
                rec.peer_inode = peer as u64;
                rec.peer_address = socket::peer_name(fd).unwrap_or_default();
            }
            None if kind == libc::SOCK_DGRAM => {} // connected to by another datagram socket
            None => bail!("pid {} fd {}: {} is connected but sock_diag shows no peer", src.pid, src.fd, src.link),
        },
        TCP_CLOSE => {}
        other => return Err(refuse(format!("is in state {other}, which crust does not know"))),
    }
    if events & libc::POLLERR != 0 && !rec.peer_reset {
        return Err(refuse("has a pending error (SO_ERROR)".into()));
    }
    let mut carried = Vec::new();
    if rec.state == TCP_LISTEN as i32 || rec.peer_inode != 0 || rec.peer_closed || rec.pending_on != 0 {
        rec.peer_credentials = socket::peer_credentials(fd).ok().map(|c| UnixCredentials { pid: c.pid, uid: c.uid, gid: c.gid });
    }

    // A stream or seqpacket socket that is not connected has no queue (a receive on it fails
    // with ENOTCONN); nor does a listener.
    let has_queue = rec.state == TCP_ESTABLISHED as i32 || kind == libc::SOCK_DGRAM;
    if has_queue {
        if rec.pass_pidfd && !rec.pass_credentials && diag.rqlen.is_some_and(|(q, _)| q > 0) {
            return Err(refuse("has data queued for a receiver that asked for SO_PASSPIDFD without SO_PASSCRED".into()));
        }
        let queued_bytes = diag.rqlen.map(|(q, _)| q as usize).unwrap_or(0);
        // Any receive on a seqpacket socket, a peek too, first reports (and clears) a pending
        // error: with ECONNRESET pending, its queue cannot be read without changing it.
        let untouchable = kind == libc::SOCK_SEQPACKET && events & libc::POLLERR != 0;
        if untouchable && queued_bytes > 0 {
            return Err(refuse(
                "was reset by its closed peer (ECONNRESET pending) with messages still queued, which crust cannot read \
                 without clearing the error"
                    .into(),
            ));
        }
        if !untouchable {
            rec.queued = read_queue(fd, kind, queued_bytes, rec.pass_credentials, rec.shutdown & RCV_SHUTDOWN != 0, &mut carried)
                .with_context(|| format!("pid {} fd {}: reading the queue of {}", src.pid, src.fd, src.link))?;
        }
        if carried.len() != in_flight {
            return Err(refuse(format!(
                "has {in_flight} file descriptor(s) in flight (SCM_RIGHTS) but its queue showed crust {}",
                carried.len()
            )));
        }
        let fileless = rec.file.as_ref().is_some_and(|f| !f.present);
        if fileless && kind == libc::SOCK_DGRAM && rec.peer_inode == 0 && !rec.queued.is_empty() {
            let full = full_name(src.pid, &path_of(&rec.address), &mut UnixSocketFile::default())?;
            if std::fs::symlink_metadata(&full).is_ok() {
                return Err(refuse(format!(
                    "holds datagrams sent to {}, a path that now holds another file: crust could not send them to it \
                     again",
                    show_name(&rec.address)
                )));
            }
        }
        for c in rec.queued.iter().filter_map(|m| m.credentials.as_ref()) {
            if !std::path::Path::new(&format!("/proc/{}", c.pid)).exists() {
                return Err(refuse(format!(
                    "holds data sent by pid {}, which has exited: the receiver would get the credentials of a \
                     process that no longer exists (SO_PASSCRED)",
                    c.pid
                )));
            }
        }
    }
    Ok((rec, carried))
}

/// A connection whose peer was closed (its process closed it or died).
fn closed_peer(src: &FdSource, rec: &mut UnixSocket, events: i16, stream_like: bool) -> Result<()> {
    if events & libc::POLLERR != 0 {
        if !stream_like {
            bail!("has a pending error (SO_ERROR)");
        }
        rec.peer_reset = true;
    }
    rec.peer_closed = true;
    rec.peer_address = socket::peer_name(src.copy.as_fd()).unwrap_or_default();
    if is_path(&rec.peer_address) {
        rec.peer_file = Some(peer_file(src.pid, &rec.peer_address)?);
    }
    Ok(())
}

/// "an IPv4 TCP socket (INET)", "a netlink socket"...
fn family_name(domain: i32, kind: i32) -> String {
    let proto = match kind {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_RAW => "raw",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "",
    };
    match domain {
        libc::AF_INET | libc::AF_INET6 => {
            let ip = if domain == libc::AF_INET { "IPv4" } else { "IPv6" };
            let what = match kind {
                libc::SOCK_STREAM => "TCP",
                libc::SOCK_DGRAM => "UDP",
                _ => proto,
            };
            format!("an {ip} {what} socket (INET)")
        }
        libc::AF_NETLINK => "a netlink socket".into(),
        libc::AF_PACKET => "a packet socket".into(),
        other => format!("a {proto} socket of address family {other}"),
    }
}

/// Options crust does not recreate must be at their defaults. Returns what is not.
fn refuse_unsupported_options(fd: BorrowedFd) -> std::result::Result<(), String> {
    let opt = |name: i32| socket::get_int(fd, libc::SOL_SOCKET, name).unwrap_or(0);
    for (name, what) in
        [(libc::SO_TIMESTAMP, "SO_TIMESTAMP"), (libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS"), (libc::SO_TIMESTAMPING, "SO_TIMESTAMPING")]
    {
        if opt(name) != 0 {
            return Err(format!("asks for receive timestamps ({what}), which crust cannot give queued messages again"));
        }
    }
    if opt(libc::SO_OOBINLINE) != 0 {
        return Err("has SO_OOBINLINE set".into());
    }
    if socket::option_len(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER).unwrap_or(0) > 0 {
        return Err("has a socket filter attached (SO_ATTACH_FILTER)".into());
    }
    Ok(())
}

fn read_options(fd: BorrowedFd, rec: &mut UnixSocket) -> Result<()> {
    let opt = |name: i32| socket::get_int(fd, libc::SOL_SOCKET, name);
    rec.send_buffer = opt(libc::SO_SNDBUF)?;
    rec.receive_buffer = opt(libc::SO_RCVBUF)?;
    rec.pass_credentials = opt(libc::SO_PASSCRED)? != 0;
    rec.pass_security = opt(libc::SO_PASSSEC)? != 0;
    // Options of newer kernels: absent means off (or, for SO_PASSRIGHTS, on).
    rec.pass_pidfd = opt(socket::SO_PASSPIDFD).unwrap_or(0) != 0;
    rec.refuse_rights = opt(socket::SO_PASSRIGHTS).unwrap_or(1) == 0;
    rec.peek_offset = opt(libc::SO_PEEK_OFF)?;
    rec.receive_lowat = opt(libc::SO_RCVLOWAT)?;
    let timeout = |name: i32| -> Result<u64> {
        let b = socket::get_bytes(fd, libc::SOL_SOCKET, name, 16)?;
        let sec = i64::from_ne_bytes(b[..8].try_into()?);
        let usec = i64::from_ne_bytes(b[8..16].try_into()?);
        Ok((sec * 1_000_000 + usec) as u64)
    };
    rec.receive_timeout_us = timeout(libc::SO_RCVTIMEO)?;
    rec.send_timeout_us = timeout(libc::SO_SNDTIMEO)?;
    Ok(())
}

/// Is this address a path (not abstract, not unnamed)?
pub(crate) fn is_path(address: &[u8]) -> bool {
    address.first().is_some_and(|c| *c != 0)
}

/// The path of a path address, without its final NUL.
pub(crate) fn path_of(address: &[u8]) -> String {
    let end = address.iter().position(|c| *c == 0).unwrap_or(address.len());
    String::from_utf8_lossy(&address[..end]).into_owned()
}

/// The full path of a socket name as the process sees it: a relative name is taken from its
/// working directory, which `file` records.
fn full_name(pid: i32, path: &str, file: &mut UnixSocketFile) -> Result<String> {
    if path.starts_with('/') {
        return Ok(path.to_owned());
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?.to_string_lossy().into_owned();
    let full = format!("{cwd}/{path}");
    file.directory = cwd;
    Ok(full)
}

/// Where the socket file of a path address is, and whether it is still there.
fn socket_file(pid: i32, address: &[u8], vfs: Option<(u32, u32)>) -> Result<UnixSocketFile> {
    let path = path_of(address);
    let mut file = UnixSocketFile::default();
    let full = full_name(pid, &path, &mut file)?;
    let Some((ino, dev)) = vfs else {
        bail!("is named {path} but sock_diag shows no socket file");
    };
    match std::fs::symlink_metadata(&full) {
        Ok(meta) if meta.ino() == ino as u64 && meta.dev() == unix_diag::decode_dev(dev) => {
            file.present = true;
            file.mode = meta.mode() & 0o7777;
            file.uid = meta.uid();
            file.gid = meta.gid();
        }
        // Another file at its path (the socket file was removed and the name taken): the
        // socket keeps its name without a file, as if unlinked; restore binds it again
        // without touching that file.
        Ok(meta) => tracing::info!(pid, path, inode = meta.ino(), "the socket file was replaced by another file; recorded as unlinked"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("stat of its socket file {full}")),
    }
    Ok(file)
}

/// The file at the name of a closed peer: whether a socket file is there (to be left there).
fn peer_file(pid: i32, address: &[u8]) -> Result<UnixSocketFile> {
    let path = path_of(address);
    let mut file = UnixSocketFile::default();
    let full = full_name(pid, &path, &mut file)?;
    match std::fs::symlink_metadata(&full) {
        Ok(meta) if meta.file_type().is_socket() => {
            file.present = true;
            file.mode = meta.mode() & 0o7777;
            file.uid = meta.uid();
            file.gid = meta.gid();
        }
        // Another kind of file, or nothing: the stand-in is bound without touching it.
        Ok(_) | Err(_) => {}
    }
    Ok(file)
}

/// The listener whose queue holds this client's connection, not yet accepted.
fn waiting_on(inode: u32) -> Result<Option<UnixDiag>> {
    let listeners = unix_diag::dump(1 << TCP_LISTEN, unix_diag::SHOW_NAME | unix_diag::SHOW_ICONS)
        .context("sock_diag: listing the listening sockets")?;
    Ok(listeners.into_iter().find(|l| l.icons.as_ref().is_some_and(|i| i.contains(&inode))))
}

/// Peeks at everything queued for reading, without consuming it: SO_PEEK_OFF walks the
/// queue, and is put back as it was. `stream_bytes` is how many bytes a stream holds (from
/// sock_diag): the walk never peeks past them, since a peek at an empty queue would report
/// (and clear) a pending error. Descriptors in flight (SCM_RIGHTS) are installed in crust by
/// the peek, as in any receiver: they go to `carried`, and the messages' `rights` index them.
fn read_queue(
    fd: BorrowedFd,
    kind: i32,
    stream_bytes: usize,
    credentials: bool,
    read_shut: bool,
    carried: &mut Vec<OwnedFd>,
) -> Result<Vec<UnixMessage>> {
    let old = socket::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    socket::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let walked = if kind == libc::SOCK_STREAM {
        peek_stream(fd, stream_bytes, credentials, carried)
    } else {
        peek_messages(fd, kind, stream_bytes, credentials, read_shut, carried)
    };
    socket::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old).context("putting SO_PEEK_OFF back")?;
    walked
}

fn credentials_of(r: &socket::Received, wanted: bool) -> Option<UnixCredentials> {
    if !wanted {
        return None;
    }
    r.credentials.map(|c: Ucred| UnixCredentials { pid: c.pid, uid: c.uid, gid: c.gid })
}

/// A peek whose control data did not fit would lose descriptors: refused.
fn whole(r: socket::Received) -> Result<socket::Received> {
    if r.msg_flags & libc::MSG_CTRUNC != 0 {
        bail!("a queued message carries more control data than crust can read (MSG_CTRUNC)");
    }
    Ok(r)
}

/// The descriptors of `r` into `carried`; their indexes there.
fn carry(r: &mut socket::Received, carried: &mut Vec<OwnedFd>) -> Vec<u32> {
    let first = carried.len() as u32;
    carried.append(&mut r.rights);
    (first..carried.len() as u32).collect()
}

fn peek_stream(fd: BorrowedFd, total: usize, credentials: bool, carried: &mut Vec<OwnedFd>) -> Result<Vec<UnixMessage>> {
    let mut out: Vec<UnixMessage> = Vec::new();
    let mut got = 0;
    while got < total {
        // No cap on the length: a peek stops right after a buffer carrying descriptors, and
        // must not stop inside one (the next peek would get its descriptors again).
        let mut r = whole(socket::receive(fd, total - got, libc::MSG_PEEK | libc::MSG_DONTWAIT)?)?;
        if r.len == 0 {
            bail!("the stream ended after {got} of the {total} bytes sock_diag reported");
        }
        let creds = credentials_of(&r, credentials);
        let len = r.data.len();
        let data = std::mem::take(&mut r.data);
        if r.rights.is_empty() {
            append_piece(&mut out, data, creds);
        } else {
            // The peek ended with the buffer the descriptors are attached to; where that
            // buffer starts no peek tells (a peek looks ahead to the next descriptors), so
            // the whole piece is sent again as one buffer with them (see the module's limits).
            out.push(UnixMessage { data, credentials: creds, rights: carry(&mut r, carried), ..Default::default() });
        }
        got += len;
    }
    Ok(out)
}

/// Adds stream bytes without descriptors: to the last piece when it has the same credentials
/// and no descriptors (a peek stops where the senders' credentials change: those pieces stay
/// apart).
fn append_piece(out: &mut Vec<UnixMessage>, data: Vec<u8>, creds: Option<UnixCredentials>) {
    match out.last_mut() {
        Some(last) if last.credentials == creds && last.rights.is_empty() => last.data.extend_from_slice(&data),
        _ => out.push(UnixMessage { data, credentials: creds, ..Default::default() }),
    }
}

fn peek_messages(
    fd: BorrowedFd,
    kind: i32,
    seqpacket_bytes: usize,
    credentials: bool,
    read_shut: bool,
    carried: &mut Vec<OwnedFd>,
) -> Result<Vec<UnixMessage>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    loop {
        // The length first (nothing copied, the peek offset stays), then the message.
        let probe = match socket::receive(fd, 0, libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(r) => whole(r)?,
            Err(e) if e.errno() == Some(nix::errno::Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        };
        // A seqpacket socket shut for reading reports its end as an empty message.
        if kind == libc::SOCK_SEQPACKET && read_shut && probe.len == 0 && bytes >= seqpacket_bytes {
            break;
        }
        let mut r = if probe.len == 0 { probe } else { whole(socket::receive(fd, probe.len, libc::MSG_PEEK | libc::MSG_DONTWAIT)?)? };
        bytes += r.data.len();
        let sender = if kind == libc::SOCK_DGRAM { r.name.clone() } else { Vec::new() };
        let rights = carry(&mut r, carried);
        out.push(UnixMessage { credentials: credentials_of(&r, credentials), data: r.data, sender, writer: 0, rights });
        if out.len() > 1 << 20 {
            bail!("more than a million queued messages");
        }
    }
    Ok(out)
}

/// Which end of a stream/seqpacket connection was accept()ed (and so has its listener's
/// name): the named one; of two named ends, the one a listener of the image has the name of,
/// else the one the kernel did not name itself. None when crust cannot tell.
enum Side {
    Neither,
    First,
    Second,
}

fn accepted_side(kind: i32, first: &[u8], second: &[u8], listener: &dyn Fn(i32, &[u8]) -> Option<u64>) -> Option<Side> {
    match (first.is_empty(), second.is_empty()) {
        (true, true) => Some(Side::Neither),
        (false, true) => Some(Side::First),
        (true, false) => Some(Side::Second),
        (false, false) => match (listener(kind, first), listener(kind, second)) {
            (Some(_), None) => Some(Side::First),
            (None, Some(_)) => Some(Side::Second),
            _ if autobound(first) && !autobound(second) => Some(Side::Second),
            _ if autobound(second) && !autobound(first) => Some(Side::First),
            _ => None,
        },
    }
}

/// " (NAME)" for a named socket, "" for an unnamed one.
fn named(address: &[u8]) -> String {
    if address.is_empty() { String::new() } else { format!(" ({})", show_name(address)) }
}

/// An abstract name the kernel gave an unnamed socket (autobind: NUL and five hex digits).
fn autobound(address: &[u8]) -> bool {
    address.len() == 6 && address[0] == 0 && address[1..].iter().all(|c| c.is_ascii_hexdigit())
}

/// Checks what needs the whole tree (every peer inside it), decides how each connection is
/// made again, and gives the sockets that must be created together one created_with group.
/// `holder` names a pid and fd holding a description (for messages).
fn finish(files: &mut [OpenFile], holder: &dyn Fn(u32) -> Option<(i32, i32)>) -> Result<()> {
    let mut socks: BTreeMap<u64, (usize, UnixSocket)> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        if let Some(open_file::Kind::UnixSocket(u)) = &f.kind {
            socks.insert(u.inode, (i, u.clone()));
        }
    }
    if socks.is_empty() {
        return Ok(());
    }
    let who = |inode: u64| -> String {
        let id = socks.get(&inode).map(|(i, _)| files[*i].id).unwrap_or(0);
        match holder(id) {
            Some((pid, fd)) => format!("pid {pid} fd {fd}: socket:[{inode}]"),
            None => format!("socket:[{inode}]"),
        }
    };
    let listener = |kind: i32, address: &[u8]| -> Option<u64> {
        socks
            .values()
            .find(|(_, s)| s.state == TCP_LISTEN as i32 && s.r#type == kind && !address.is_empty() && s.address == address)
            .map(|(_, s)| s.inode)
    };

    let mut updates: BTreeMap<u64, UnixSocket> = socks.iter().map(|(k, (_, s))| (*k, s.clone())).collect();
    for (inode, (_, s)) in &socks {
        let name = named(&s.address);
        for client in &s.pending {
            if socks.get(client).is_none_or(|(_, c)| c.pending_on != *inode) {
                bail!(
                    "{}{name} is listening with a connection not yet accepted from socket:[{client}], a socket outside \
                     the dumped tree (no process of the tree holds it); crust cannot connect it again",
                    who(*inode)
                );
            }
        }
        if s.pending_on != 0 && !socks.get(&s.pending_on).is_some_and(|(_, l)| l.pending.contains(inode)) {
            bail!("{} is a connection not yet accepted by socket:[{}], a listener outside the dumped tree", who(*inode), s.pending_on);
        }
        if s.peer_inode != 0 {
            let Some((_, peer)) = socks.get(&s.peer_inode) else {
                bail!(
                    "{}{name} is connected to socket:[{}]{}, a socket outside the dumped tree (no process of the tree \
                     holds it); crust cannot reconnect it",
                    who(*inode),
                    s.peer_inode,
                    named(&s.peer_address)
                );
            };
            let mutual = peer.peer_inode == *inode;
            if s.r#type != libc::SOCK_DGRAM && !mutual {
                bail!("{} is connected to socket:[{}], which is not connected back", who(*inode), s.peer_inode);
            }
            if !mutual && peer.address.is_empty() {
                bail!(
                    "{} is connected to the unnamed datagram socket:[{}], which is connected elsewhere; crust can only \
                     connect a datagram socket to a named one",
                    who(*inode),
                    s.peer_inode
                );
            }
            if s.r#type != libc::SOCK_DGRAM && *inode < s.peer_inode {
                let side = accepted_side(s.r#type, &s.address, &peer.address, &listener).ok_or_else(|| {
                    anyhow!(
                        "{}{name} and its peer socket:[{}]{} are both named, and crust cannot tell which end was \
                         accepted",
                        who(*inode),
                        s.peer_inode,
                        named(&peer.address)
                    )
                })?;
                let accepted = match side {
                    Side::Neither => None,
                    Side::First => Some(*inode),
                    Side::Second => Some(s.peer_inode),
                };
                if let Some(a) = accepted {
                    let u = updates.get_mut(&a).unwrap();
                    u.accepted = true;
                    u.listener_inode = listener(u.r#type, &u.address.clone()).unwrap_or(0);
                }
            }
        }
        if s.peer_closed && s.r#type != libc::SOCK_DGRAM {
            // The same for a connection whose peer was closed: the stand-in takes the peer's
            // name.
            let side = accepted_side(s.r#type, &s.address, &s.peer_address, &listener).ok_or_else(|| {
                anyhow!(
                    "{}{name} and its closed peer{} were both named, and crust cannot tell which end was accepted",
                    who(*inode),
                    named(&s.peer_address)
                )
            })?;
            let u = updates.get_mut(inode).unwrap();
            match side {
                Side::Neither => {}
                Side::First => {
                    u.accepted = true;
                    u.listener_inode = listener(s.r#type, &s.address).unwrap_or(0);
                }
                Side::Second => {
                    u.peer_accepted = true;
                    u.peer_listener_inode = listener(s.r#type, &s.peer_address).unwrap_or(0);
                }
            }
        }
    }

    // Who sends each queued datagram again.
    let by_name = |address: &[u8]| -> Vec<u64> {
        socks
            .values()
            .filter(|(_, s)| s.r#type == libc::SOCK_DGRAM && !address.is_empty() && s.address == address && !s.accepted)
            .map(|(_, s)| s.inode)
            .collect()
    };
    for (inode, (_, s)) in &socks {
        if s.r#type != libc::SOCK_DGRAM || s.queued.is_empty() {
            continue;
        }
        let mut writers = Vec::new();
        for m in &s.queued {
            let writer = if s.peer_inode != 0 || s.peer_closed {
                // Connected: only the peer can send to it.
                let peer_name = if s.peer_closed { s.peer_address.clone() } else { socks[&s.peer_inode].1.address.clone() };
                if !m.sender.is_empty() && m.sender != peer_name {
                    bail!(
                        "{} holds a datagram from {}, which is not the peer it is connected to now ({}); crust cannot \
                         send it again",
                        who(*inode),
                        show_name(&m.sender),
                        show_name(&peer_name)
                    );
                }
                if s.peer_inode != 0 && socks[&s.peer_inode].1.peer_inode != *inode && s.address.is_empty() {
                    bail!("{} holds datagrams but is unnamed and connected one-way; crust cannot send them again", who(*inode));
                }
                s.peer_inode
            } else if m.sender.is_empty() {
                if s.address.is_empty() {
                    bail!("{} is unnamed and unconnected yet holds datagrams; crust cannot send them again", who(*inode));
                }
                0
            } else {
                match by_name(&m.sender)[..] {
                    [one] => one,
                    [] => bail!(
                        "{} holds a datagram from {}, a socket outside the dumped tree; crust cannot send it again with \
                         that sender",
                        who(*inode),
                        show_name(&m.sender)
                    ),
                    _ => bail!("{} holds a datagram from {}, a name several sockets had", who(*inode), show_name(&m.sender)),
                }
            };
            writers.push(writer);
        }
        let u = updates.get_mut(inode).unwrap();
        for (m, w) in u.queued.iter_mut().zip(writers) {
            m.writer = w;
        }
    }

    // Groups: connected components of peers, listeners and datagram writers.
    let mut parent: BTreeMap<u64, u64> = socks.keys().map(|k| (*k, *k)).collect();
    fn root(parent: &mut BTreeMap<u64, u64>, mut x: u64) -> u64 {
        while parent[&x] != x {
            let up = parent[&parent[&x]];
            parent.insert(x, up);
            x = up;
        }
        x
    }
    let union = |parent: &mut BTreeMap<u64, u64>, a: u64, b: u64| {
        if a == 0 || b == 0 || !parent.contains_key(&b) {
            return;
        }
        let (ra, rb) = (root(parent, a), root(parent, b));
        let (lo, hi) = (ra.min(rb), ra.max(rb));
        parent.insert(hi, lo);
    };
    for (inode, s) in &updates {
        union(&mut parent, *inode, s.peer_inode);
        union(&mut parent, *inode, s.listener_inode);
        union(&mut parent, *inode, s.peer_listener_inode);
        union(&mut parent, *inode, s.pending_on);
        for m in &s.queued {
            union(&mut parent, *inode, m.writer);
        }
    }
    let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
    for inode in socks.keys() {
        *sizes.entry(root(&mut parent, *inode)).or_default() += 1;
    }
    for (inode, (i, _)) in &socks {
        let r = root(&mut parent, *inode);
        files[*i].created_with = if sizes[&r] > 1 { GROUP_TAG | r } else { 0 };
        files[*i].kind = Some(open_file::Kind::UnixSocket(updates.remove(inode).unwrap()));
    }
    Ok(())
}

/// For `crust show`: names as text ("@" for abstract), queued data as text where it is text,
/// else as a byte count.
fn show(rec: &UnixSocket, json: &mut serde_json::Value) {
    use serde_json::json;
    let name = |a: &[u8]| if a.is_empty() { json!("") } else { json!(show_name(a)) };
    json["address"] = name(&rec.address);
    json["peer_address"] = name(&rec.peer_address);
    if let Some(list) = json.get_mut("queued").and_then(|q| q.as_array_mut()) {
        for (j, m) in list.iter_mut().zip(&rec.queued) {
            j["data"] = match std::str::from_utf8(&m.data) {
                Ok(text) => json!(text),
                Err(_) => json!(format!("{} bytes", m.data.len())),
            };
            j["sender"] = name(&m.sender);
        }
    }
}
