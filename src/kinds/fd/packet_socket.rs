//! Packet sockets (AF_PACKET, SOCK_RAW or SOCK_DGRAM): the protocol and interface they are
//! bound to, their version, reserve, copy threshold, timestamp source and flags (auxdata,
//! origdev, vnet header, loss), fanout group and memberships (multicast, promiscuous...), read
//! from packet sock_diag, which changes nothing. Restore creates the socket in the process,
//! then through crust's copy sets its options, binds it, joins its fanout group and adds its
//! memberships again.
//!
//! Refused by pid and fd: packet rings (PACKET_RX_RING, PACKET_TX_RING: mapped memory shared
//! with the kernel), socket filters, packets not read yet, SOCK_PACKET sockets.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, anyhow};

use super::common::{apply_socket_option, options_differing, set_status_flags};
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{OpenFile, PacketMembership, PacketSocket, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::packet::{self, SOL_PACKET};
use crate::sys::pidfd::pidfd_getfd;
use crate::sys::socket;

pub struct PacketSockets;

impl FdKind for PacketSockets {
    type Record = PacketSocket;
    const NAME: &'static str = "packet socket";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&PacketSocket> {
        match kind {
            open_file::Kind::PacketSocket(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: PacketSocket) -> open_file::Kind {
        open_file::Kind::PacketSocket(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.socket_domain() == Some(libc::AF_PACKET)
    }

    /// Reading a socket changes nothing, so every refusal can be made before the freeze.
    fn refuse_early(src: &FdSource) -> Result<()> {
        dump(src).map(drop)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<PacketSocket>> {
        dump(src).map(Dumped::alone)
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &PacketSocket, _together: &mut Together) -> Result<i32> {
        open(ctx, file, record).with_context(|| format!("restoring {}", describe(record)))
    }

    fn describe(record: &PacketSocket) -> String {
        describe(record)
    }
}

fn describe(r: &PacketSocket) -> String {
    let kind = if r.r#type == libc::SOCK_DGRAM { "datagram" } else { "raw" };
    format!("{kind} packet socket of protocol {:#06x} on interface {}", r.protocol, r.ifindex)
}

/// Options carried over besides those packet sock_diag reports.
fn other_options() -> impl Iterator<Item = (i32, i32, usize)> {
    [libc::SO_RCVBUF, libc::SO_SNDBUF, libc::SO_PRIORITY, libc::SO_MARK, libc::SO_TIMESTAMP, libc::SO_TIMESTAMPNS]
        .into_iter()
        .map(|o| (libc::SOL_SOCKET, o, 4))
}

fn dump(src: &FdSource) -> Result<PacketSocket> {
    let fd = src.copy.as_fd();
    let at = || format!("pid {} fd {}", src.pid, src.fd);
    let kind = socket::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).with_context(at)?;
    let refuse =
        |what: &str| anyhow!("pid {} fd {}: {} is a packet socket {what}, which crust cannot checkpoint", src.pid, src.fd, src.link);
    if kind != libc::SOCK_RAW && kind != libc::SOCK_DGRAM {
        return Err(refuse("of the obsolete SOCK_PACKET type"));
    }
    let d = packet::find(src.meta.ino()).with_context(at)?.ok_or_else(|| refuse("not listed by sock_diag (another network namespace?)"))?;
    if d.rings {
        return Err(refuse("with a packet ring (PACKET_RX_RING or PACKET_TX_RING)"));
    }
    if d.filter {
        return Err(refuse("with a socket filter"));
    }
    if d.queued > 0 {
        return Err(refuse(&format!("holding packets not read yet ({} bytes)", d.queued)));
    }
    let fresh = crate::sys::inet::fresh_socket(libc::AF_PACKET, kind, 0).with_context(at)?;
    Ok(PacketSocket {
        inode: src.meta.ino(),
        r#type: kind,
        protocol: d.protocol as u32,
        ifindex: d.ifindex,
        version: d.version,
        reserve: d.reserve,
        copy_thresh: d.copy_thresh,
        timestamp: d.tstamp,
        auxdata: d.flags & packet::PDI_AUXDATA != 0,
        origdev: d.flags & packet::PDI_ORIGDEV != 0,
        vnet_hdr: d.flags & packet::PDI_VNETHDR != 0,
        loss: d.flags & packet::PDI_LOSS != 0,
        fanout: d.fanout.unwrap_or(0),
        memberships: d
            .memberships
            .iter()
            .map(|m| PacketMembership { ifindex: m.ifindex, count: m.count, r#type: m.kind as u32, address: m.address.clone() })
            .collect(),
        options: options_differing(fd, fresh.as_fd(), other_options()),
    })
}

fn open(ctx: &mut RestoreCtx, file: &OpenFile, r: &PacketSocket) -> Result<i32> {
    // Created with no protocol: it hears nothing until it is bound, with everything set.
    let created =
        ctx.remote.syscall("socket(AF_PACKET)", libc::SYS_socket, &[libc::AF_PACKET as u64, (r.r#type | libc::SOCK_CLOEXEC) as u64, 0])?;
    let fd = ctx.to_temp_fd(created)?;
    let copy = pidfd_getfd(&ctx.pidfd, ctx.pid.as_raw(), fd)?;
    let copy = copy.as_fd();
    set_packet_options(copy, r)?;
    for o in &r.options {
        apply_socket_option(copy, o, &format!("option {} of level {}", o.name, o.level))?;
    }
    if r.protocol != 0 || r.ifindex != 0 {
        packet::bind(copy, r.protocol as u16, r.ifindex)?;
    }
    if r.fanout != 0 {
        socket::set_int(copy, SOL_PACKET, packet::PACKET_FANOUT, r.fanout as i32).context("PACKET_FANOUT")?;
    }
    for m in &r.memberships {
        let m = packet::PacketMembership { ifindex: m.ifindex, count: m.count, kind: m.r#type as u16, address: m.address.clone() };
        for _ in 0..m.count.max(1) {
            packet::add_membership(copy, &m).context("PACKET_ADD_MEMBERSHIP")?;
        }
    }
    set_status_flags(ctx, fd, file.flags)?;
    Ok(fd)
}

/// The options packet sock_diag reports, where they differ from a fresh socket's.
fn set_packet_options(copy: BorrowedFd, r: &PacketSocket) -> Result<()> {
    let settings = [
        (packet::PACKET_VERSION, r.version, 0),
        (packet::PACKET_RESERVE, r.reserve, 0),
        (packet::PACKET_COPY_THRESH, r.copy_thresh, 0),
        (packet::PACKET_TIMESTAMP, r.timestamp, 0),
        (packet::PACKET_AUXDATA, r.auxdata as u32, 0),
        (packet::PACKET_ORIGDEV, r.origdev as u32, 0),
        (packet::PACKET_VNET_HDR, r.vnet_hdr as u32, 0),
        (packet::PACKET_LOSS, r.loss as u32, 0),
    ];
    for (option, value, default) in settings {
        if value != default {
            socket::set_int(copy, SOL_PACKET, option, value as i32).with_context(|| format!("packet option {option} to {value}"))?;
        }
    }
    Ok(())
}
