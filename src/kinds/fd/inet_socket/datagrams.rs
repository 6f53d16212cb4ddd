//! The datagrams a UDP socket has received and not read yet, with their senders.
//!
//! Dump walks the queue with MSG_PEEK at an advancing peek offset (SO_PEEK_OFF, put back as the
//! program had it), which leaves every datagram in place. Restore gives each datagram back,
//! in order, as its sender sent it: through a raw socket of crust's, the only way to send
//! from an address that another socket holds (the sender may be a socket of the tree, or
//! another host), then waits until the kernel queued them all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{from_record, to_record};
use crate::image::proto::UdpDatagram;
use crate::sys::inet::{self, InetAddr};
use crate::sys::socket;

/// Bounds the walk of a queue (datagrams are at least their headers' size in memory, so a
/// queue never holds this many).
const MOST_DATAGRAMS: usize = 1 << 20;
/// How long restore waits for the kernel to queue the datagrams it gave back.
const QUEUEING: Duration = Duration::from_secs(5);

/// Calls `walk` with the socket's peek offset at 0, and puts the program's offset back.
fn at_peek_offset_zero<T>(fd: BorrowedFd, walk: impl FnOnce() -> Result<T>) -> Result<T> {
    let old = socket::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).context("SO_PEEK_OFF")?;
    socket::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).context("setting SO_PEEK_OFF")?;
    let walked = walk();
    socket::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old).context("putting SO_PEEK_OFF back")?;
    walked
}

fn peek_all(fd: BorrowedFd) -> Result<Vec<inet::Datagram>> {
    at_peek_offset_zero(fd, || {
        let mut all = Vec::new();
        while let Some(datagram) = inet::peek_datagram(fd)? {
            all.push(datagram);
            if all.len() >= MOST_DATAGRAMS {
                bail!("more than {MOST_DATAGRAMS} datagrams queued");
            }
        }
        Ok(all)
    })
}

/// The queued datagrams, left in place.
pub fn read(fd: BorrowedFd) -> Result<Vec<UdpDatagram>> {
    peek_all(fd)?
        .into_iter()
        .map(|(source, data)| {
            let source = source.context("a datagram without a sender address")?;
            Ok(UdpDatagram { source: Some(to_record(&source)), data })
        })
        .collect()
}

/// Where to deliver a datagram from `source` to a socket bound to `local`: its own address,
/// or loopback of the sender's family for a socket bound to the wildcard address.
fn destination(local: &InetAddr, source: &InetAddr) -> InetAddr {
    let local = local.unmapped();
    let ip = match (local.ip.is_unspecified(), source.ip) {
        (false, _) => local.ip,
        (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    InetAddr { ip, port: local.port, flowinfo: 0, scope_id: 0 }
}

/// Gives the socket `fd` (crust's copy, bound to `local`) its datagrams back, in order, and
/// waits until they are all queued.
pub fn give_back(fd: BorrowedFd, local: &InetAddr, queued: &[UdpDatagram]) -> Result<()> {
    if queued.is_empty() {
        return Ok(());
    }
    for (i, d) in queued.iter().enumerate() {
        let source = from_record(d.source.as_ref().context("UdpDatagram.source missing")?)?.unmapped();
        let to = destination(local, &source);
        inet::inject_datagram(&source, &to, &d.data).with_context(|| format!("giving back datagram {i} from {source}"))?;
    }
    let deadline = Instant::now() + QUEUEING;
    loop {
        let arrived = peek_all(fd)?.len();
        if arrived >= queued.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{arrived} of {} datagrams given back reached the socket within {QUEUEING:?}", queued.len());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
