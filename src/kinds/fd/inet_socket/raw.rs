//! Raw IP sockets (SOCK_RAW, of any protocol): the address they are bound to, the address
//! they are connected to, their options and filters (IP_HDRINCL, ICMP_FILTER, IPV6_CHECKSUM,
//! ICMPV6_FILTER) and multicast groups. This kernel has no raw sock_diag; the peer of a
//! connected raw socket (which getpeername does not report: it has no port) is read from
//! /proc/net/raw or raw6.
//!
//! Refused by pid and fd: a raw socket holding packets not read yet (each is a copy of a packet
//! every matching raw socket of the host received; giving it back would give it to all).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, anyhow};

use super::{FdSource, describe, memberships, options, refuse_attachments, to_record};
use crate::image::proto::InetSocket;
use crate::sys::inet::{self, InetAddr, SIOCINQ};
use crate::sys::inet_diag::{TCP_CLOSE, TCP_ESTABLISHED};

pub fn dump(src: &FdSource, family: i32, protocol: i32) -> Result<InetSocket> {
    let fd = src.copy.as_fd();
    let at = || format!("pid {} fd {}", src.pid, src.fd);
    let refuse = |r: &InetSocket, what: String| anyhow!("pid {} fd {}: {} ({}) {what}", src.pid, src.fd, src.link, describe(r));
    let (peer, connected) = peer_in_proc(family, src.meta.ino()).with_context(at)?;
    let mut record = InetSocket {
        inode: src.meta.ino(),
        family,
        r#type: libc::SOCK_RAW,
        protocol,
        state: if connected { TCP_ESTABLISHED } else { TCP_CLOSE } as u32,
        uid: src.meta.uid(),
        ..Default::default()
    };
    // A raw socket's "port" is its protocol; binding takes the address alone.
    let local = inet::local_address(fd).with_context(at)?.map(|a| InetAddr { port: 0, ..a });
    record.local = local.filter(|a| !a.ip.is_unspecified()).map(|a| to_record(&a));
    record.peer = peer.filter(|_| connected).map(|a| to_record(&a));
    let queued = inet::queued_bytes(fd, SIOCINQ).with_context(at)?;
    if queued > 0 {
        return Err(refuse(&record, format!("holds packets not read yet ({queued} bytes), which crust cannot give back to it alone")));
    }
    refuse_attachments(fd, protocol).map_err(|what| refuse(&record, what))?;
    let fresh = inet::fresh_socket(family, libc::SOCK_RAW, protocol).with_context(at)?;
    record.options = options::differing(fd, fresh.as_fd(), family, libc::SOCK_RAW, protocol, false);
    record.memberships = memberships(fd, family).with_context(at)?;
    Ok(record)
}

/// The remote address and whether the socket is connected, from /proc/net/raw or raw6.
fn peer_in_proc(family: i32, inode: u64) -> Result<(Option<InetAddr>, bool)> {
    let table = if family == libc::AF_INET6 { "/proc/net/raw6" } else { "/proc/net/raw" };
    let text = std::fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(9).and_then(|i| i.parse::<u64>().ok()) != Some(inode) {
            continue;
        }
        let remote = f.get(2).and_then(|a| a.split(':').next()).and_then(parse_proc_ip);
        let connected = f.get(3).and_then(|s| u8::from_str_radix(s, 16).ok()) == Some(TCP_ESTABLISHED);
        return Ok((remote.map(|ip| InetAddr { ip, port: 0, flowinfo: 0, scope_id: 0 }), connected));
    }
    Ok((None, false))
}

/// An address as /proc/net/raw prints it: the kernel's 32-bit words, each as a host integer.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8).map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()).collect();
    let bytes: Vec<u8> = words?.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..]).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?))),
        _ => None,
    }
}
