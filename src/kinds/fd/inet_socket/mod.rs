//! IPv4 and IPv6 sockets: TCP sockets listening or not connected (unbound or only bound), UDP
//! sockets unbound, bound or connected; with their owner, addresses, backlog, shutdown state
//! and the options the program changed (see `options`).
//!
//! Dump reads everything through crust's `pidfd_getfd` copy (getsockname, getpeername,
//! getsockopt) and inet_diag, which change nothing: a dump -R leaves the sockets exactly as
//! they were. Restore creates the socket in the process (as its owner, so the kernel's uid of
//! the socket is the same), then sets its options, binds, listens and connects through
//! crust's copy of it. A port that is still held by connections in TIME_WAIT of the
//! checkpointed process is bound again as the kernel allows with SO_REUSEADDR, set for the
//! bind only.
//!
//! Established TCP connections come back with `--tcp-established` (see `tcp`), their peers
//! inside the tree or anywhere else: from the moment a connection is read until it is
//! restored, the network lock (`crate::network_lock`) drops what its peer sends it.
//!
//! With `--tcp-close` (the reference tool's option), connections in any state are recorded
//! without their state and come back closed; restore --tcp-close brings back closed the
//! connections an image holds with their state.
//!
//! UDP sockets come back with their datagrams not read yet (see `datagrams`); raw sockets of
//! any protocol with their address, peer and filters, when they hold no packet (see `raw`).
//!
//! Refused by pid and fd: established connections without `--tcp-established`, TCP connections in
//! states with no socket to restore them into (SYN_SENT, SYN_RECV, TIME_WAIT),
//! listeners with connections not yet accepted (left out with `--skip-in-flight`), UDP
//! sockets with datagrams still being sent (corked); raw sockets holding packets; other
//! protocols (ICMP datagram "ping" sockets, UDP-Lite, SCTP, MPTCP); socket
//! filters and upper-layer protocols (kTLS).
//!
//! Multicast memberships: the kernel lists no socket's groups, but it answers, for one group
//! and interface, whether a socket joined it and with which source filter (MCAST_MSFILTER).
//! Dump asks each socket about every group some socket of the host joined (/proc/net/igmp,
//! igmp6); restore joins them again with their filters.

mod datagrams;
mod options;
mod raw;
mod tcp;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, anyhow, bail};

use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{InetAddress, InetSocket, MulticastMembership, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::network_lock::{self, Connection, DumpLock};
use crate::sys::inet::{self, InetAddr};
use crate::sys::inet_diag::{self, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, state_name};
use crate::sys::pidfd::pidfd_getfd;
use crate::sys::socket;

pub struct InetSockets;

impl FdKind for InetSockets {
    type Record = InetSocket;
    const NAME: &'static str = "IP socket";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&InetSocket> {
        match kind {
            open_file::Kind::InetSocket(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: InetSocket) -> open_file::Kind {
        open_file::Kind::InetSocket(record)
    }

    fn recognises(src: &FdSource) -> bool {
        matches!(src.socket_domain(), Some(libc::AF_INET | libc::AF_INET6))
    }

    /// Reading a socket changes nothing, so every refusal can be made before the freeze (TCP
    /// connections are only read in repair mode once it is frozen).
    fn refuse_early(src: &FdSource) -> Result<()> {
        dump(src, None).map(drop)
    }

    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<InetSocket>> {
        dump(src, Some(state)).map(Dumped::alone)
    }

    /// The tree is gone: its connections' locks stay until the restore, and they close
    /// without a word to their peers.
    fn after_kill(state: &mut KindState) -> Result<()> {
        std::mem::take(state.get::<DumpLock>()).keep();
        tcp::close_silently(std::mem::take(&mut state.get::<ConnectionCopies>().0));
        Ok(())
    }

    /// The copies are closed silently only once the tree's own descriptors are closed.
    fn after_kill_waits(state: &mut KindState) -> bool {
        !state.get::<ConnectionCopies>().0.is_empty()
    }

    /// Every process exists now, and with it the peer of every connection inside the tree:
    /// crust keeps a copy of each connection, still in repair mode, until the tree is about to
    /// resume (see `before_resume`).
    fn finish_descriptions(ctx: &mut RestoreCtx, files: &[(&OpenFile, &InetSocket)]) -> Result<()> {
        for (file, record) in files.iter().filter(|(_, r)| r.tcp.is_some()) {
            let fd = ctx.work_fd_floor + file.id as i32;
            let copy = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
            RESTORED.lock().unwrap_or_else(|e| e.into_inner()).push(Restored { record: (*record).clone(), copy, closed: ctx.tcp_close });
        }
        Ok(())
    }

    /// Right before the tree resumes, each restored connection lets its peer's packets through
    /// again and leaves repair mode (until then a failed or killed restore closes it in repair
    /// mode: its peer sees neither FIN nor reset, and the image can be restored again).
    fn before_resume() -> Result<()> {
        let restored = std::mem::take(&mut *RESTORED.lock().unwrap_or_else(|e| e.into_inner()));
        for Restored { record, copy, closed } in restored {
            network_lock::restored(&locked_connection(&record).into_iter().collect::<Vec<_>>())?;
            if closed {
                continue; // restored closed (restore --tcp-close): never in repair mode
            }
            tcp::leave_repair(copy.as_fd()).with_context(|| format!("resuming {}", describe(&record)))?;
            if let (Some(c), Some(local), Some(peer)) = (&record.tcp, &record.local, &record.peer) {
                tcp::receive_peer_fin(copy.as_fd(), c, &from_record(local)?, &from_record(peer)?)
                    .with_context(|| format!("resuming {}", describe(&record)))?;
            }
        }
        Ok(())
    }

    fn restore_failed(files: &[(&OpenFile, &InetSocket)]) {
        let restored = std::mem::take(&mut *RESTORED.lock().unwrap_or_else(|e| e.into_inner()));
        tcp::close_silently(restored.into_iter().filter(|r| !r.closed).map(|r| r.copy).collect());
        let locked: Vec<Connection> = files.iter().filter_map(|(_, r)| locked_connection(r)).collect();
        if let Err(e) = network_lock::restored(&locked) {
            tracing::error!("lifting the network lock of the connections of the failed restore: {e:#}");
        }
    }

    /// A damaged record is refused before any process exists.
    fn precheck(_file: &OpenFile, r: &InetSocket) -> Result<()> {
        for address in [&r.local, &r.peer].into_iter().flatten() {
            from_record(address).with_context(|| format!("InetSocket {}", r.inode))?;
        }
        for m in &r.memberships {
            membership_of(m).with_context(|| format!("InetSocket {}", r.inode))?;
        }
        if !matches!(r.family, libc::AF_INET | libc::AF_INET6) {
            bail!("InetSocket {}: family {} is neither AF_INET nor AF_INET6", r.inode, r.family);
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &InetSocket, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record).with_context(|| format!("restoring {}", describe(record)))
    }

    fn describe(record: &InetSocket) -> String {
        describe(record)
    }

    fn show(record: &InetSocket, json: &mut serde_json::Value) {
        for (key, address) in [("local", &record.local), ("peer", &record.peer)] {
            if let Some(a) = address.as_ref().and_then(|a| from_record(a).ok()) {
                json[key] = serde_json::json!(a.to_string());
            }
        }
        json["state"] = serde_json::json!(state_name(record.state as u8));
    }
}

/// "TCP socket 127.0.0.1:8000 (LISTEN)", "UDP socket [::1]:53 -> [::1]:5353".
fn describe(r: &InetSocket) -> String {
    let address = |a: &Option<InetAddress>| a.as_ref().and_then(|a| from_record(a).ok()).map(|a| a.to_string());
    let raw = if r.r#type == libc::SOCK_RAW { "raw " } else { "" };
    let mut text = format!("{raw}{} socket", protocol_name(r.protocol));
    match (address(&r.local), address(&r.peer)) {
        (Some(l), Some(p)) => text += &format!(" {l} -> {p}"),
        (Some(l), None) => text += &format!(" {l}"),
        (None, Some(p)) => text += &format!(" -> {p}"),
        (None, None) => text += if r.family == libc::AF_INET6 { " (IPv6, unbound)" } else { " (IPv4, unbound)" },
    }
    if r.protocol == libc::IPPROTO_TCP {
        text += &format!(" ({})", state_name(r.state as u8));
    }
    text
}

fn protocol_name(protocol: i32) -> String {
    match protocol {
        libc::IPPROTO_TCP => "TCP".into(),
        libc::IPPROTO_UDP => "UDP".into(),
        libc::IPPROTO_UDPLITE => "UDP-Lite".into(),
        libc::IPPROTO_SCTP => "SCTP".into(),
        libc::IPPROTO_MPTCP => "MPTCP".into(),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "ICMP".into(),
        libc::IPPROTO_RAW => "IP".into(),
        p => format!("IP protocol {p}"),
    }
}

/// The connection's lock as the network lock names it, if it was locked.
fn locked_connection(r: &InetSocket) -> Option<Connection> {
    let local = from_record(r.local.as_ref()?).ok()?;
    let peer = from_record(r.peer.as_ref()?).ok()?;
    r.network_locked.then_some(Connection { local, peer })
}

/// A connection restore made, with crust's copy of it, until the tree resumes.
struct Restored {
    record: InetSocket,
    copy: std::os::fd::OwnedFd,
    /// Restored closed (restore --tcp-close).
    closed: bool,
}

/// The restored connections still in repair mode: one restore per crust process.
static RESTORED: std::sync::Mutex<Vec<Restored>> = std::sync::Mutex::new(Vec::new());

/// crust's copies of the tree's TCP connections, closed silently once the tree was killed.
#[derive(Default)]
struct ConnectionCopies(Vec<std::os::fd::OwnedFd>);

/// Records the socket; `state` is None before the freeze (refusals only: a connection is read
/// once the tree is frozen).
fn dump(src: &FdSource, state: Option<&mut KindState>) -> Result<InetSocket> {
    let fd = src.copy.as_fd();
    let opt = |name: i32| {
        socket::get_int(fd, libc::SOL_SOCKET, name).with_context(|| format!("pid {} fd {}: getsockopt({name})", src.pid, src.fd))
    };
    let (family, kind, protocol) = (opt(libc::SO_DOMAIN)?, opt(libc::SO_TYPE)?, opt(libc::SO_PROTOCOL)?);
    if kind == libc::SOCK_RAW {
        return raw::dump(src, family, protocol);
    }
    if !matches!((kind, protocol), (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP)) {
        return Err(refusal(src, format!("is a socket of protocol {}, which crust cannot checkpoint", protocol_name(protocol))));
    }
    let (mut record, diag) = describe_socket(src, family, kind, protocol)?;
    let refuse = |r: &InetSocket, what: String| refusal(src, format!("({}) {what}", describe(r)));
    refuse_state(&record, &diag, src.permits).map_err(|what| refuse(&record, what))?;
    let connected = protocol == libc::IPPROTO_TCP && ![TCP_LISTEN, TCP_CLOSE].contains(&diag.state);
    record.closed = connected && src.permits.tcp_close;
    if connected && !record.closed {
        tcp::refuse_urgent(fd).map_err(|what| refuse(&record, what))?;
    }
    refuse_attachments(fd, protocol).map_err(|what| refuse(&record, what))?;
    let at = || format!("pid {} fd {}: {}", src.pid, src.fd, src.link);
    let fresh = inet::fresh_socket(family, kind, protocol).with_context(|| format!("{}: a fresh socket to compare options with", at()))?;
    record.options = options::differing(fd, fresh.as_fd(), family, kind, protocol, connected);
    if protocol == libc::IPPROTO_UDP {
        record.memberships = memberships(fd, family).with_context(|| format!("{}: multicast groups", at()))?;
    }
    if let Some(state) = state {
        read_queues(src, &mut record, &diag, state).with_context(at)?;
    }
    Ok(record)
}

/// "pid P fd F: socket:[N] <what>".
fn refusal(src: &FdSource, what: String) -> anyhow::Error {
    anyhow!("pid {} fd {}: {} {what}", src.pid, src.fd, src.link)
}

/// The socket's identity, addresses and state (from inet_diag, or for a socket never bound,
/// from the socket itself).
fn describe_socket(src: &FdSource, family: i32, kind: i32, protocol: i32) -> Result<(InetSocket, inet_diag::InetDiag)> {
    let fd = src.copy.as_fd();
    let at = || format!("pid {} fd {}", src.pid, src.fd);
    let local = inet::local_address(fd).with_context(at)?;
    let diag = inet_diag::find(family, protocol, src.meta.ino()).with_context(|| format!("{}: inet_diag of {}", at(), src.link))?;
    let diag = match diag {
        Some(d) => d,
        // The kernel lists only sockets in its lookup tables: one never bound is in none.
        None if local.as_ref().is_none_or(InetAddr::is_unspecified) => unbound(fd, protocol).map_err(|what| refusal(src, what))?,
        None => {
            return Err(refusal(
                src,
                "is not listed by inet_diag (a socket of another network namespace?): crust cannot checkpoint it".into(),
            ));
        }
    };
    let name_of = |a: Option<InetAddr>| a.filter(|a| !a.is_unspecified()).map(|a| to_record(&a));
    let record = InetSocket {
        inode: src.meta.ino(),
        family,
        r#type: kind,
        protocol,
        state: diag.state as u32,
        // The socket's inode belongs to its creator, like the socket (sk_uid).
        uid: src.meta.uid(),
        shutdown: diag.shutdown.unwrap_or(0) as u32,
        local: name_of(local),
        peer: name_of(inet::peer_address(fd).with_context(at)?),
        backlog: if diag.state == TCP_LISTEN { diag.wqueue } else { 0 },
        ..Default::default()
    };
    Ok((record, diag))
}

/// Once the tree is frozen: a UDP socket's datagrams, a TCP connection's state and queues (the
/// connection locked first: a byte its peer sends later must not be acknowledged by a socket
/// that is about to go away).
fn read_queues(src: &FdSource, record: &mut InetSocket, diag: &inet_diag::InetDiag, state: &mut KindState) -> Result<()> {
    let fd = src.copy.as_fd();
    if record.protocol == libc::IPPROTO_UDP && diag.rqueue > 0 {
        record.queued = datagrams::read(fd).context("reading the datagrams queued")?;
    }
    if record.protocol != libc::IPPROTO_TCP || !tcp::restorable(diag.state) || record.closed {
        return Ok(());
    }
    if src.permits.network_lock.as_deref() != Some("skip") {
        let (local, peer) = (record.local.as_ref().map(from_record), record.peer.as_ref().map(from_record));
        if let (Some(Ok(local)), Some(Ok(peer))) = (local, peer) {
            state.get::<DumpLock>().add(Connection { local, peer })?;
            record.network_locked = true;
        }
    }
    record.tcp = Some(tcp::read(fd).with_context(|| format!("reading {}", describe(record)))?);
    state.get::<ConnectionCopies>().0.push(src.copy.try_clone()?);
    Ok(())
}

/// What inet_diag would say of a socket never bound: its TCP state (a TCP socket connecting
/// without a bind is bound by then), nothing queued.
fn unbound(fd: BorrowedFd, protocol: i32) -> Result<inet_diag::InetDiag, String> {
    let mut diag = inet_diag::InetDiag { state: TCP_CLOSE, ..Default::default() };
    if protocol == libc::IPPROTO_TCP {
        let info = socket::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 8).map_err(|e| format!("TCP_INFO: {e}"))?;
        diag.state = info.first().copied().unwrap_or(TCP_CLOSE);
    }
    Ok(diag)
}

/// What crust cannot bring back of the socket's state.
fn refuse_state(r: &InetSocket, diag: &inet_diag::InetDiag, permits: &crate::permits::Permits) -> Result<(), String> {
    let state = diag.state;
    if r.protocol == libc::IPPROTO_TCP {
        match state {
            _ if permits.tcp_close && state != TCP_LISTEN && state != TCP_CLOSE => {}
            s if tcp::restorable(s) && !permits.tcp_established => {
                return Err("is an established TCP connection: dump with --tcp-established to checkpoint it".into());
            }
            s if tcp::restorable(s) => {}
            TCP_LISTEN if diag.rqueue > 0 && !permits.skip_in_flight => {
                return Err(format!(
                    "has {} connection(s) not yet accepted, which crust cannot checkpoint yet (--skip-in-flight leaves them out)",
                    diag.rqueue
                ));
            }
            TCP_LISTEN | TCP_CLOSE => {}
            _ => {
                return Err(format!("is a TCP connection (state {}), which crust cannot checkpoint yet", state_name(state)));
            }
        }
    } else if state != TCP_CLOSE && state != TCP_ESTABLISHED {
        return Err(format!("is in state {}, which crust cannot checkpoint", state_name(state)));
    } else if diag.wqueue > 0 {
        return Err(format!("has {} bytes of datagrams still being sent, which crust cannot checkpoint", diag.wqueue));
    }
    Ok(())
}

/// Socket filters and upper-layer protocols, which crust does not record.
fn refuse_attachments(fd: BorrowedFd, protocol: i32) -> Result<(), String> {
    if socket::option_len(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER).unwrap_or(0) > 0 {
        return Err("has a socket filter (SO_ATTACH_FILTER), which crust cannot checkpoint".into());
    }
    if protocol == libc::IPPROTO_TCP {
        const TCP_ULP: i32 = 31;
        let ulp = socket::get_bytes(fd, libc::IPPROTO_TCP, TCP_ULP, 16).unwrap_or_default();
        let ulp = String::from_utf8_lossy(&ulp).trim_end_matches('\0').to_string();
        if !ulp.is_empty() {
            return Err(format!("runs the upper-layer protocol {ulp} (TCP_ULP), which crust cannot checkpoint"));
        }
    }
    Ok(())
}

/// The groups the socket joined: every group of the host (a socket's own list is not
/// reported), asked of the socket one by one; an IPv6 socket may have joined IPv4 groups too.
fn memberships(fd: BorrowedFd, family: i32) -> Result<Vec<MulticastMembership>> {
    let mut found = Vec::new();
    for (ifindex, group) in inet::joined_groups() {
        if family == libc::AF_INET && group.is_ipv6() {
            continue;
        }
        if let Some(m) = inet::membership(fd, ifindex, group)? {
            found.push(MulticastMembership {
                ifindex: m.ifindex,
                group: ip_bytes(m.group),
                mode: m.mode,
                sources: m.sources.iter().map(|s| ip_bytes(*s)).collect(),
            });
        }
    }
    Ok(found)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn ip_of(bytes: &[u8], field: &str) -> Result<IpAddr> {
    match bytes.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes)?))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes)?))),
        n => bail!("{field} of {n} bytes (4 or 16 expected)"),
    }
}

fn membership_of(m: &MulticastMembership) -> Result<inet::Membership> {
    Ok(inet::Membership {
        ifindex: m.ifindex,
        group: ip_of(&m.group, "MulticastMembership.group")?,
        mode: m.mode,
        sources: m.sources.iter().map(|s| ip_of(s, "MulticastMembership.sources")).collect::<Result<_>>()?,
    })
}

fn to_record(a: &InetAddr) -> InetAddress {
    let ip = match a.ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    InetAddress { ip, port: a.port as u32, flowinfo: a.flowinfo, scope_id: a.scope_id }
}

fn from_record(a: &InetAddress) -> Result<InetAddr> {
    let ip = match a.ip.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&a.ip[..])?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&a.ip[..])?)),
        n => bail!("InetAddress.ip of {n} bytes (4 or 16 expected)"),
    };
    let port = u16::try_from(a.port).map_err(|_| anyhow!("InetAddress.port {} out of range", a.port))?;
    Ok(InetAddr { ip, port, flowinfo: a.flowinfo, scope_id: a.scope_id })
}

/// Creates the socket in the process, as its owner, and brings it to its recorded state
/// through crust's copy.
fn open(ctx: &mut RestoreCtx, file: &OpenFile, r: &InetSocket) -> Result<i32> {
    let local = r.local.as_ref().map(from_record).transpose()?;
    let peer = r.peer.as_ref().map(from_record).transpose()?;
    let fd = create_as(ctx, r)?;
    if let Some(c) = locked_connection(r) {
        network_lock::restoring(c)?;
    }
    let copy = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    let copy = copy.as_fd();
    for o in r.options.iter().filter(|o| !options::is_reuse_address(o)) {
        options::apply(copy, o)?;
    }
    match (&r.tcp, &local, &peer) {
        _ if r.closed || (ctx.tcp_close && r.tcp.is_some()) => bind_closed(copy, local.as_ref())?,
        (Some(connection), Some(local), Some(peer)) => tcp::restore(copy, connection, local, peer)?,
        (Some(_), _, _) => bail!("a TCP connection without both addresses"),
        (None, _, _) => bind_listen_connect(copy, r, local.as_ref(), peer.as_ref())?,
    }
    shut_down(copy, r.shutdown)?;
    let reuse = r.options.iter().find(|o| options::is_reuse_address(o));
    match reuse {
        Some(o) => options::apply(copy, o)?,
        None => socket::set_int(copy, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0).context("clearing SO_REUSEADDR after the bind")?,
    }
    super::common::set_status_flags(ctx, fd, file.flags)?;
    Ok(fd)
}

/// A socket that is not a TCP connection: bound (SO_REUSEADDR for the bind: a port of the
/// program's own connections in TIME_WAIT is its to take), listening, connected (UDP).
fn bind_listen_connect(copy: BorrowedFd, r: &InetSocket, local: Option<&InetAddr>, peer: Option<&InetAddr>) -> Result<()> {
    if let Some(local) = local {
        socket::set_int(copy, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).context("setting SO_REUSEADDR for the bind")?;
        inet::bind(copy, local).map_err(|e| explain_bind_failure(e, r, local))?;
        // Before connect(2), which would filter out the datagrams of other senders.
        datagrams::give_back(copy, local, &r.queued)?;
    }
    for m in &r.memberships {
        inet::join(copy, &membership_of(m)?)?;
    }
    if r.state == TCP_LISTEN as u32 {
        inet::listen(copy, r.backlog)?;
    }
    if let Some(peer) = peer {
        inet::connect(copy, peer)?;
    }
    Ok(())
}

/// A bind refused with EADDRINUSE, with what holds the port: another socket bound there (a
/// program of this machine), or connections the program closed itself that are not over yet
/// (TIME_WAIT, FIN_WAIT...: owned by no process). SO_REUSEADDR passes those only when the
/// program's own socket had it; a listener cannot be bound in repair mode (listen(2) checks
/// the port again, and a listening socket cannot leave repair mode), so the restore fails,
/// saying when the port is free again.
fn explain_bind_failure(e: crate::sys::SysError, r: &InetSocket, local: &InetAddr) -> anyhow::Error {
    if e.errno() != Some(nix::errno::Errno::EADDRINUSE) {
        return e.into();
    }
    let holders = inet_diag::on_port(r.family, r.protocol, local.port).unwrap_or_default();
    let owned: Vec<String> =
        holders.iter().filter(|d| d.inode != 0).map(|d| format!("socket:[{}] ({}, uid {})", d.inode, state_name(d.state), d.uid)).collect();
    if !owned.is_empty() {
        return anyhow::Error::from(e).context(format!("port {} is taken by {} on this machine", local.port, owned.join(", ")));
    }
    let left: Vec<String> = holders
        .iter()
        .map(|d| format!("{} -> {} {} ({:.0} s left)", d.end(true), d.end(false), state_name(d.state), f64::from(d.expires_ms) / 1e3))
        .collect();
    if left.is_empty() {
        return e.into();
    }
    let longest = holders.iter().map(|d| d.expires_ms).max().unwrap_or(0).div_ceil(1000);
    anyhow::Error::from(e).context(format!(
        "port {} is still held by connections the program closed before the dump, which the kernel keeps for a while \
         ({}); the program's socket did not set SO_REUSEADDR, so the port cannot be bound again until they end: \
         restore again in {longest} s",
        local.port,
        left.join("; ")
    ))
}

/// A connection restored closed (--tcp-close): bound to its local address (in repair mode,
/// where the kernel lets a socket share the address of the connection's end still in
/// TIME_WAIT), connected to nothing.
fn bind_closed(copy: BorrowedFd, local: Option<&InetAddr>) -> Result<()> {
    match local {
        Some(local) => tcp::bind_forced(copy, local),
        None => Ok(()),
    }
}

/// socket(2) in the process with its filesystem uid set to the socket's owner: the kernel
/// gives a socket the uid of its creator.
fn create_as(ctx: &mut RestoreCtx, r: &InetSocket) -> Result<i32> {
    ctx.remote.syscall_raw(libc::SYS_setfsuid, &[r.uid as u64])?;
    let created =
        ctx.remote.syscall("socket", libc::SYS_socket, &[r.family as u64, (r.r#type | libc::SOCK_CLOEXEC) as u64, r.protocol as u64]);
    ctx.remote.syscall_raw(libc::SYS_setfsuid, &[0])?;
    crate::kinds::credentials::enter_fs_identity(ctx)?;
    ctx.to_temp_fd(created?)
}

fn shut_down(socket: BorrowedFd, mask: u32) -> Result<()> {
    let how = match mask & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    inet::shutdown(socket, how)?;
    Ok(())
}
