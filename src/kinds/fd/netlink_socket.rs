//! Netlink sockets (NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT, NETLINK_GENERIC...): port id, every
//! multicast group joined, default destination, flags (NETLINK_PKTINFO, NO_ENOBUFS, CAP_ACK,
//! EXT_ACK, GET_STRICT_CHK...) and buffer sizes, read through crust's copy and netlink
//! sock_diag, which change nothing.
//!
//! Restore creates the socket in the process, then through crust's copy sets its options,
//! binds it to the same port id (so replies and notifications addressed to it still reach it)
//! and joins its groups.
//!
//! Refused by pid and fd: messages queued to be read (replies or notifications not read yet)
//! and a dump being answered (NLM_F_DUMP in progress): the kernel would not send them again.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, anyhow};

use super::common::{apply_socket_option, options_differing, set_status_flags};
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{NetlinkSocket, OpenFile, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::netlink::{self, NlAddr, SOL_NETLINK};
use crate::sys::pidfd::pidfd_getfd;
use crate::sys::socket;

pub struct NetlinkSockets;

impl FdKind for NetlinkSockets {
    type Record = NetlinkSocket;
    const NAME: &'static str = "netlink socket";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&NetlinkSocket> {
        match kind {
            open_file::Kind::NetlinkSocket(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: NetlinkSocket) -> open_file::Kind {
        open_file::Kind::NetlinkSocket(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.socket_domain() == Some(libc::AF_NETLINK)
    }

    /// Reading a socket changes nothing, so every refusal can be made before the freeze.
    fn refuse_early(src: &FdSource) -> Result<()> {
        dump(src).map(drop)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<NetlinkSocket>> {
        dump(src).map(Dumped::alone)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &NetlinkSocket, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record).with_context(|| format!("restoring {}", describe(record)))
    }

    fn describe(record: &NetlinkSocket) -> String {
        describe(record)
    }
}

fn describe(r: &NetlinkSocket) -> String {
    format!("netlink socket of protocol {} (port id {})", protocol_name(r.protocol), r.portid)
}

fn protocol_name(protocol: i32) -> String {
    match protocol {
        libc::NETLINK_ROUTE => "NETLINK_ROUTE".into(),
        libc::NETLINK_SOCK_DIAG => "NETLINK_SOCK_DIAG".into(),
        libc::NETLINK_AUDIT => "NETLINK_AUDIT".into(),
        libc::NETLINK_KOBJECT_UEVENT => "NETLINK_KOBJECT_UEVENT".into(),
        libc::NETLINK_GENERIC => "NETLINK_GENERIC".into(),
        libc::NETLINK_NETFILTER => "NETLINK_NETFILTER".into(),
        p => p.to_string(),
    }
}

/// The options carried over: the NETLINK_* flags and the buffer sizes.
fn known_options() -> impl Iterator<Item = (i32, i32, usize)> {
    let flags = [
        netlink::NETLINK_PKTINFO,
        netlink::NETLINK_BROADCAST_ERROR,
        netlink::NETLINK_NO_ENOBUFS,
        netlink::NETLINK_LISTEN_ALL_NSID,
        netlink::NETLINK_CAP_ACK,
        netlink::NETLINK_EXT_ACK,
        netlink::NETLINK_GET_STRICT_CHK,
    ];
    let buffers =
        [(libc::SOL_SOCKET, libc::SO_RCVBUF, 4), (libc::SOL_SOCKET, libc::SO_SNDBUF, 4), (libc::SOL_SOCKET, libc::SO_PASSCRED, 4)];
    flags.into_iter().map(|f| (SOL_NETLINK, f, 4)).chain(buffers)
}

fn dump(src: &FdSource) -> Result<NetlinkSocket> {
    let fd = src.copy.as_fd();
    let at = || format!("pid {} fd {}", src.pid, src.fd);
    let opt = |name: i32| socket::get_int(fd, libc::SOL_SOCKET, name).with_context(at);
    let (kind, protocol) = (opt(libc::SO_TYPE)?, opt(libc::SO_PROTOCOL)?);
    let local = netlink::local_address(fd).with_context(at)?;
    let peer = netlink::peer_address(fd).with_context(at)?;
    let record = NetlinkSocket {
        inode: src.meta.ino(),
        r#type: kind,
        protocol,
        portid: local.portid,
        groups: netlink::memberships(fd).with_context(at)?,
        peer_portid: peer.portid,
        peer_group: peer.groups,
        options: Vec::new(),
    };
    let refuse = |what: String| anyhow!("pid {} fd {}: {} ({}) {what}", src.pid, src.fd, src.link, describe(&record));
    let diag = netlink::find(protocol, src.meta.ino()).with_context(|| format!("{}: netlink sock_diag", at()))?;
    let diag = match diag {
        Some(d) => d,
        // The kernel lists only bound sockets; one never bound has received nothing.
        None if local.portid == 0 => netlink::NetlinkDiag::default(),
        None => return Err(refuse("is not listed by sock_diag (another network namespace?): crust cannot checkpoint it".into())),
    };
    if diag.queued > 0 {
        return Err(refuse(format!("has {} bytes of messages queued to be read, which crust cannot checkpoint", diag.queued)));
    }
    if diag.flags & netlink::NDIAG_FLAG_CB_RUNNING != 0 {
        return Err(refuse("is being answered a dump (NLM_F_DUMP) not read to its end, which crust cannot checkpoint".into()));
    }
    let fresh = crate::sys::inet::fresh_socket(libc::AF_NETLINK, kind, protocol).with_context(at)?;
    Ok(NetlinkSocket { options: options_differing(fd, fresh.as_fd(), known_options()), ..record })
}

fn open(ctx: &mut RestoreCtx, file: &OpenFile, r: &NetlinkSocket) -> Result<i32> {
    let created = ctx.remote.syscall(
        "socket(AF_NETLINK)",
        libc::SYS_socket,
        &[libc::AF_NETLINK as u64, (r.r#type | libc::SOCK_CLOEXEC) as u64, r.protocol as u64],
    )?;
    let fd = ctx.to_temp_fd(created)?;
    let copy = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    let copy = copy.as_fd();
    for o in &r.options {
        apply_socket_option(copy, o, &format!("option {} of level {}", o.name, o.level))?;
    }
    bind_and_join(copy, r)?;
    if r.peer_portid != 0 || r.peer_group != 0 {
        netlink::connect(copy, NlAddr { portid: r.peer_portid, groups: r.peer_group })?;
    }
    set_status_flags(ctx, fd, file.flags)?;
    Ok(fd)
}

/// Binds to the port id with groups 1..=32, then joins the groups above 32 one by one.
fn bind_and_join(copy: BorrowedFd, r: &NetlinkSocket) -> Result<()> {
    let low: u32 = r.groups.iter().filter(|g| (1..=32).contains(*g)).map(|g| 1u32 << (g - 1)).fold(0, |a, b| a | b);
    if r.portid != 0 || low != 0 {
        netlink::bind(copy, NlAddr { portid: r.portid, groups: low })?;
    }
    for g in r.groups.iter().filter(|g| **g > 32) {
        socket::set_int(copy, SOL_NETLINK, netlink::NETLINK_ADD_MEMBERSHIP, *g as i32)
            .with_context(|| format!("joining netlink group {g}"))?;
    }
    Ok(())
}
