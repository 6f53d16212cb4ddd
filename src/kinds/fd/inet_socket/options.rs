//! Socket options of IPv4 and IPv6 sockets: which ones crust carries over, read at dump through
//! crust's copy of the socket and set again at restore on crust's copy of the new one.
//!
//! An option is recorded when its value differs from a fresh socket's of the same family,
//! type and protocol on this host: that is exactly what the program (or its libraries)
//! changed, and defaults the kernel derives from sysctls stay derived. Options that cannot be
//! set again as they are read (SO_RCVBUF, SO_SNDBUF: the kernel doubles what it is given) are
//! translated when applied (`common::apply_socket_option`).

use std::os::fd::BorrowedFd;

use anyhow::Result;

use super::super::common;
use crate::image::proto::SocketOption;

/// One option crust carries over: level, name, the most bytes its value takes, a name for people.
struct Known(i32, i32, usize, &'static str);

const IFNAMSIZ: usize = 16;
const TCP_CONGESTION_NAME: usize = 16;

/// The options of every IPv4 and IPv6 socket.
const SOCKET_LEVEL: &[Known] = &[
    Known(libc::SOL_SOCKET, libc::SO_REUSEADDR, 4, "SO_REUSEADDR"),
    Known(libc::SOL_SOCKET, libc::SO_REUSEPORT, 4, "SO_REUSEPORT"),
    Known(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4, "SO_KEEPALIVE"),
    Known(libc::SOL_SOCKET, libc::SO_BROADCAST, 4, "SO_BROADCAST"),
    Known(libc::SOL_SOCKET, libc::SO_OOBINLINE, 4, "SO_OOBINLINE"),
    Known(libc::SOL_SOCKET, libc::SO_LINGER, 8, "SO_LINGER"),
    Known(libc::SOL_SOCKET, libc::SO_RCVBUF, 4, "SO_RCVBUF"),
    Known(libc::SOL_SOCKET, libc::SO_SNDBUF, 4, "SO_SNDBUF"),
    Known(libc::SOL_SOCKET, libc::SO_RCVLOWAT, 4, "SO_RCVLOWAT"),
    Known(libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16, "SO_RCVTIMEO"),
    Known(libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16, "SO_SNDTIMEO"),
    Known(libc::SOL_SOCKET, libc::SO_PRIORITY, 4, "SO_PRIORITY"),
    Known(libc::SOL_SOCKET, libc::SO_MARK, 4, "SO_MARK"),
    Known(libc::SOL_SOCKET, libc::SO_BINDTODEVICE, IFNAMSIZ, "SO_BINDTODEVICE"),
    Known(libc::SOL_SOCKET, libc::SO_TIMESTAMP, 4, "SO_TIMESTAMP"),
    Known(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 4, "SO_TIMESTAMPNS"),
    Known(libc::SOL_SOCKET, libc::SO_PASSCRED, 4, "SO_PASSCRED"),
    Known(libc::SOL_SOCKET, libc::SO_PEEK_OFF, 4, "SO_PEEK_OFF"),
];

const TCP_LEVEL: &[Known] = &[
    Known(libc::IPPROTO_TCP, libc::TCP_NODELAY, 4, "TCP_NODELAY"),
    Known(libc::IPPROTO_TCP, libc::TCP_CORK, 4, "TCP_CORK"),
    Known(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4, "TCP_KEEPIDLE"),
    Known(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4, "TCP_KEEPINTVL"),
    Known(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4, "TCP_KEEPCNT"),
    Known(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4, "TCP_USER_TIMEOUT"),
    Known(libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 4, "TCP_DEFER_ACCEPT"),
    Known(libc::IPPROTO_TCP, libc::TCP_FASTOPEN, 4, "TCP_FASTOPEN"),
    Known(libc::IPPROTO_TCP, libc::TCP_MAXSEG, 4, "TCP_MAXSEG"),
    Known(libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 4, "TCP_NOTSENT_LOWAT"),
    Known(libc::IPPROTO_TCP, libc::TCP_SYNCNT, 4, "TCP_SYNCNT"),
    Known(libc::IPPROTO_TCP, libc::TCP_LINGER2, 4, "TCP_LINGER2"),
    Known(libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, 4, "TCP_WINDOW_CLAMP"),
    Known(libc::IPPROTO_TCP, libc::TCP_CONGESTION, TCP_CONGESTION_NAME, "TCP_CONGESTION"),
];

const IPV4_LEVEL: &[Known] = &[
    Known(libc::IPPROTO_IP, libc::IP_TOS, 4, "IP_TOS"),
    Known(libc::IPPROTO_IP, libc::IP_TTL, 4, "IP_TTL"),
    Known(libc::IPPROTO_IP, libc::IP_FREEBIND, 4, "IP_FREEBIND"),
    Known(libc::IPPROTO_IP, libc::IP_TRANSPARENT, 4, "IP_TRANSPARENT"),
    Known(libc::IPPROTO_IP, libc::IP_RECVERR, 4, "IP_RECVERR"),
    Known(libc::IPPROTO_IP, libc::IP_PKTINFO, 4, "IP_PKTINFO"),
    Known(libc::IPPROTO_IP, libc::IP_RECVTOS, 4, "IP_RECVTOS"),
    Known(libc::IPPROTO_IP, libc::IP_RECVTTL, 4, "IP_RECVTTL"),
    Known(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, 4, "IP_MTU_DISCOVER"),
    Known(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 4, "IP_BIND_ADDRESS_NO_PORT"),
];

const IPV6_LEVEL: &[Known] = &[
    Known(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4, "IPV6_V6ONLY"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 4, "IPV6_TCLASS"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 4, "IPV6_UNICAST_HOPS"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 4, "IPV6_RECVPKTINFO"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 4, "IPV6_RECVERR"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, 4, "IPV6_MTU_DISCOVER"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 4, "IPV6_FREEBIND"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 4, "IPV6_TRANSPARENT"),
];

/// Multicast options, which the kernel takes on datagram sockets only.
const IPV4_MULTICAST: &[Known] = &[
    Known(libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 4, "IP_MULTICAST_TTL"),
    Known(libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 4, "IP_MULTICAST_LOOP"),
];

const IPV6_MULTICAST: &[Known] = &[
    Known(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 4, "IPV6_MULTICAST_HOPS"),
    Known(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 4, "IPV6_MULTICAST_LOOP"),
];

/// Raw sockets' own options.
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMPV6_FILTER: i32 = 1;
const IPV4_RAW: &[Known] = &[Known(libc::IPPROTO_IP, libc::IP_HDRINCL, 4, "IP_HDRINCL")];
const ICMP_RAW: &[Known] = &[Known(SOL_RAW, ICMP_FILTER, 4, "ICMP_FILTER")];
const IPV6_RAW: &[Known] = &[Known(libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 4, "IPV6_CHECKSUM")];
const ICMPV6_RAW: &[Known] = &[Known(libc::IPPROTO_ICMPV6, ICMPV6_FILTER, 32, "ICMPV6_FILTER")];

/// The options that apply to a socket of this family, type and protocol.
fn applicable(family: i32, kind: i32, protocol: i32) -> impl Iterator<Item = &'static Known> {
    let v6 = family == libc::AF_INET6;
    let ip = if v6 { IPV6_LEVEL } else { IPV4_LEVEL };
    let by_protocol: Vec<&[Known]> = match (kind, protocol, v6) {
        (libc::SOCK_STREAM, _, _) => vec![TCP_LEVEL],
        (libc::SOCK_RAW, libc::IPPROTO_ICMP, false) => vec![IPV4_MULTICAST, IPV4_RAW, ICMP_RAW],
        (libc::SOCK_RAW, _, false) => vec![IPV4_MULTICAST, IPV4_RAW],
        (libc::SOCK_RAW, libc::IPPROTO_ICMPV6, true) => vec![IPV6_MULTICAST, IPV6_RAW, ICMPV6_RAW],
        (libc::SOCK_RAW, _, true) => vec![IPV6_MULTICAST, IPV6_RAW],
        (_, _, false) => vec![IPV4_MULTICAST],
        (_, _, true) => vec![IPV6_MULTICAST],
    };
    SOCKET_LEVEL.iter().chain(ip).chain(by_protocol.into_iter().flatten())
}

/// The name of an option, for messages.
pub fn name(level: i32, option: i32) -> String {
    let known = [SOCKET_LEVEL, TCP_LEVEL, IPV4_LEVEL, IPV6_LEVEL, IPV4_MULTICAST, IPV6_MULTICAST, IPV4_RAW, ICMP_RAW, IPV6_RAW, ICMPV6_RAW]
        .into_iter()
        .flatten();
    known
        .into_iter()
        .find(|k| k.0 == level && k.1 == option)
        .map(|k| k.3.to_string())
        .unwrap_or_else(|| format!("option {option} of level {level}"))
}

/// The options of `socket` whose values differ from those of `fresh`, a new socket of the same
/// family, type and protocol. Of a TCP connection, the segment size and window clamp are
/// what the handshake and the kernel made them (repair mode sets the MSS again), not options.
pub fn differing(socket: BorrowedFd, fresh: BorrowedFd, family: i32, kind: i32, protocol: i32, connection: bool) -> Vec<SocketOption> {
    let derived = |k: &&Known| connection && (k.1 == libc::TCP_MAXSEG || k.1 == libc::TCP_WINDOW_CLAMP) && k.0 == libc::IPPROTO_TCP;
    let options = applicable(family, kind, protocol).filter(|k| !derived(k)).map(|k| (k.0, k.1, k.2));
    common::options_differing(socket, fresh, options)
}

/// Whether the option is SO_REUSEADDR, which restore sets only after binding.
pub fn is_reuse_address(o: &SocketOption) -> bool {
    (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_REUSEADDR)
}

/// Sets one recorded option on crust's copy of a restored socket.
pub fn apply(socket: BorrowedFd, o: &SocketOption) -> Result<()> {
    common::apply_socket_option(socket, o, &name(o.level, o.name))
}
