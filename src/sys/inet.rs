//! IPv4 and IPv6 socket calls crust makes on its own descriptors (the `pidfd_getfd` copies of a
//! process's sockets, which share the process's open file description): names, bind, listen,
//! connect. Addresses are [`InetAddr`], the family's sockaddr in plain fields.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::SysError;

/// An IPv4 or IPv6 socket address as the kernel holds it (IPv6 with its flow label and scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub flowinfo: u32,
    pub scope_id: u32,
}

impl InetAddr {
    /// The wildcard address with port 0: what an unbound socket reports.
    pub fn is_unspecified(&self) -> bool {
        self.ip.is_unspecified() && self.port == 0
    }

    /// The address as it travels: an IPv4 address seen by an IPv6 socket (::ffff:a.b.c.d)
    /// is IPv4 on the wire.
    pub fn unmapped(&self) -> InetAddr {
        match self.ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => InetAddr { ip: IpAddr::V4(v4), ..self.clone() },
                None => self.clone(),
            },
            IpAddr::V4(_) => self.clone(),
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    fn to_storage(&self) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match self.ip {
            IpAddr::V4(ip) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: self.port.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(ip) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: self.port.to_be(),
                    sin6_flowinfo: self.flowinfo.to_be(),
                    sin6_addr: libc::in6_addr { s6_addr: ip.octets() },
                    sin6_scope_id: self.scope_id,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }

    fn from_storage(ss: &libc::sockaddr_storage) -> Option<InetAddr> {
        match ss.ss_family as i32 {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin: libc::sockaddr_in = unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
                Some(InetAddr {
                    ip: IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                    port: u16::from_be(sin.sin_port),
                    flowinfo: 0,
                    scope_id: 0,
                })
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
                Some(InetAddr {
                    ip: IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                    port: u16::from_be(sin6.sin6_port),
                    flowinfo: u32::from_be(sin6.sin6_flowinfo),
                    scope_id: sin6.sin6_scope_id,
                })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for InetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.socket_addr())
    }
}

type NameCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: BorrowedFd, call: NameCall, what: &str) -> Result<Option<InetAddr>, SysError> {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `ss`, which is that large.
    let ret = unsafe { call(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    match Errno::result(ret) {
        Ok(_) => Ok(InetAddr::from_storage(&ss)),
        Err(Errno::ENOTCONN) => Ok(None),
        Err(e) => Err(SysError::new(what, e)),
    }
}

/// getsockname(2): the local address (the wildcard with port 0 when unbound).
pub fn local_address(fd: BorrowedFd) -> Result<Option<InetAddr>, SysError> {
    name(fd, libc::getsockname, "getsockname")
}

/// getpeername(2): the address it is connected to, None when it is not connected.
pub fn peer_address(fd: BorrowedFd) -> Result<Option<InetAddr>, SysError> {
    name(fd, libc::getpeername, "getpeername")
}

pub fn bind(fd: BorrowedFd, addr: &InetAddr) -> Result<(), SysError> {
    let (ss, len) = addr.to_storage();
    // SAFETY: `ss` holds a valid sockaddr of `len` bytes.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) };
    Errno::result(ret).map_err(|e| SysError::new(format!("bind({addr})"), e))?;
    Ok(())
}

pub fn connect(fd: BorrowedFd, addr: &InetAddr) -> Result<(), SysError> {
    let (ss, len) = addr.to_storage();
    // SAFETY: `ss` holds a valid sockaddr of `len` bytes.
    let ret = unsafe { libc::connect(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) };
    Errno::result(ret).map_err(|e| SysError::new(format!("connect({addr})"), e))?;
    Ok(())
}

pub fn listen(fd: BorrowedFd, backlog: u32) -> Result<(), SysError> {
    // SAFETY: integer arguments.
    let ret = unsafe { libc::listen(fd.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) };
    Errno::result(ret).map_err(|e| SysError::new(format!("listen(backlog {backlog})"), e))?;
    Ok(())
}

/// A socket of crust's own (closed when dropped), to learn a fresh socket's option values.
pub fn fresh_socket(family: i32, kind: i32, protocol: i32) -> Result<std::os::fd::OwnedFd, SysError> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments; a new fd is returned on success.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    let fd = Errno::result(fd).map_err(|e| SysError::new(format!("socket({family}, {kind}, {protocol})"), e))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// shutdown(2) with SHUT_RD, SHUT_WR or SHUT_RDWR.
pub fn shutdown(fd: BorrowedFd, how: i32) -> Result<(), SysError> {
    // SAFETY: integer arguments.
    let ret = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    Errno::result(ret).map_err(|e| SysError::new(format!("shutdown({how})"), e))?;
    Ok(())
}

/// SIOCINQ, SIOCOUTQ, SIOCOUTQNSD: bytes waiting to be read, written and not yet acknowledged,
/// written and not yet sent.
pub const SIOCINQ: u64 = 0x541B;
pub const SIOCOUTQ: u64 = 0x5411;
pub const SIOCOUTQNSD: u64 = 0x894B;

pub fn queued_bytes(fd: BorrowedFd, request: u64) -> Result<u32, SysError> {
    let mut n: libc::c_int = 0;
    // SAFETY: these ioctls write one int into `n`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut n) };
    Errno::result(ret).map_err(|e| SysError::new(format!("ioctl({request:#x})"), e))?;
    Ok(n as u32)
}

/// recv(2) with MSG_PEEK | MSG_DONTWAIT of up to `len` bytes: what is queued, left in place.
pub fn peek(fd: BorrowedFd, len: usize) -> Result<Vec<u8>, SysError> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which is that long.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    let n = Errno::result(n).map_err(|e| SysError::new(format!("recv(MSG_PEEK, {len} bytes)"), e))?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// send(2) with MSG_DONTWAIT | MSG_NOSIGNAL: how many bytes of `data` the kernel took.
pub fn send_some(fd: BorrowedFd, data: &[u8]) -> Result<usize, SysError> {
    // SAFETY: the kernel reads at most `data.len()` bytes from `data`.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    let n = Errno::result(n).map_err(|e| SysError::new(format!("send({} bytes)", data.len()), e))?;
    Ok(n as usize)
}

/// A datagram and its sender (None: the kernel gave no address).
pub type Datagram = (Option<InetAddr>, Vec<u8>);

/// recvmsg(2) with MSG_PEEK | MSG_DONTWAIT: the next datagram (at the socket's peek offset)
/// and its sender, left in the queue; None when there is no more.
pub fn peek_datagram(fd: BorrowedFd) -> Result<Option<Datagram>, SysError> {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain old data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `msg` points at live buffers of the lengths it gives.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match Errno::result(n) {
        Ok(n) => {
            buf.truncate(n as usize);
            Ok(Some((InetAddr::from_storage(&from), buf)))
        }
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(SysError::new("recvmsg(MSG_PEEK)", e)),
    }
}

/// One's-complement sum of 16-bit words (the Internet checksum before its final inversion).
fn checksum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The transport checksum of `segment` (its checksum field zero) between two addresses, over
/// the IPv4 or IPv6 pseudo-header.
fn transport_checksum(source: IpAddr, destination: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut sum = checksum_add(0, &octets(source));
    sum = checksum_add(sum, &octets(destination));
    sum = checksum_add(sum, &(segment.len() as u32).to_be_bytes());
    sum = checksum_add(sum, &[0, 0, 0, protocol]);
    checksum_fold(checksum_add(sum, segment))
}

/// `segment` (a UDP datagram or a TCP segment with its header) from `source` to
/// `destination`, checksummed (`checksum_at`: where its checksum goes), with the IP header a
/// raw socket sends: what the kernel receives as if `source` had sent it.
fn ip_packet(source: IpAddr, destination: IpAddr, protocol: u8, mut segment: Vec<u8>, checksum_at: usize) -> Result<Vec<u8>, SysError> {
    let check = match transport_checksum(source, destination, protocol, &segment) {
        0 if protocol == libc::IPPROTO_UDP as u8 => 0xffff,
        c => c,
    };
    segment[checksum_at..checksum_at + 2].copy_from_slice(&check.to_be_bytes());
    let too_long = || SysError::new(format!("a packet of {} bytes", segment.len()), Errno::EMSGSIZE);
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // The kernel fills in the total length, the id and the header checksum.
            if 20 + segment.len() > 65535 {
                return Err(too_long());
            }
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&segment);
            Ok(p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&u16::try_from(segment.len()).map_err(|_| too_long())?.to_be_bytes());
            p.extend_from_slice(&[protocol, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&segment);
            Ok(p)
        }
        _ => Err(SysError::new("a packet between an IPv4 and an IPv6 address", Errno::EAFNOSUPPORT)),
    }
}

fn udp_packet(source: &InetAddr, destination: &InetAddr, payload: &[u8]) -> Result<Vec<u8>, SysError> {
    let len =
        u16::try_from(8 + payload.len()).map_err(|_| SysError::new(format!("a datagram of {} bytes", payload.len()), Errno::EMSGSIZE))?;
    let mut udp = Vec::with_capacity(len as usize);
    udp.extend_from_slice(&source.port.to_be_bytes());
    udp.extend_from_slice(&destination.port.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    ip_packet(source.ip, destination.ip, libc::IPPROTO_UDP as u8, udp, 6)
}

/// A bare TCP segment (no options, no data) from `source` to `destination`.
pub struct TcpSegment {
    pub seq: u32,
    pub ack: u32,
    /// FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10.
    pub flags: u8,
    pub window: u16,
}

/// Sends `segment` to `destination` (a local socket) as if `source` had sent it.
pub fn inject_tcp_segment(source: &InetAddr, destination: &InetAddr, segment: &TcpSegment) -> Result<(), SysError> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&source.port.to_be_bytes());
    tcp.extend_from_slice(&destination.port.to_be_bytes());
    tcp.extend_from_slice(&segment.seq.to_be_bytes());
    tcp.extend_from_slice(&segment.ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, segment.flags]);
    tcp.extend_from_slice(&segment.window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    let packet = ip_packet(source.ip, destination.ip, libc::IPPROTO_TCP as u8, tcp, 16)?;
    send_raw(destination, &packet)
}

/// Gives `destination` (a local socket's address) the UDP datagram `payload` as sent from
/// `source`, through a raw socket of crust's: nothing else can send from an address a socket
/// of the tree or of another host holds.
pub fn inject_datagram(source: &InetAddr, destination: &InetAddr, payload: &[u8]) -> Result<(), SysError> {
    send_raw(destination, &udp_packet(source, destination, payload)?)
}

/// Sends a whole IP packet to `destination`'s address through a raw socket of crust's.
fn send_raw(destination: &InetAddr, packet: &[u8]) -> Result<(), SysError> {
    use std::os::fd::FromRawFd;
    let family = if destination.ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: integer arguments; a new fd is returned on success.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    let fd = Errno::result(fd).map_err(|e| SysError::new("socket(SOCK_RAW, IPPROTO_RAW)", e))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let raw = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // The raw socket sends to the address itself; the port is in the packet.
    let to = InetAddr { port: 0, ..destination.clone() };
    let (ss, len) = to.to_storage();
    // SAFETY: `packet` is a live buffer and `ss` a valid sockaddr of `len` bytes.
    let n = unsafe {
        libc::sendto(raw.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0, (&ss as *const libc::sockaddr_storage).cast(), len)
    };
    Errno::result(n).map_err(|e| SysError::new(format!("sendto(raw packet of {} bytes to {destination})", packet.len()), e))?;
    Ok(())
}

/// A multicast group a socket joined, with its source filter: MCAST_EXCLUDE (0) of `sources`
/// (none: every source) or MCAST_INCLUDE (1) of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub ifindex: u32,
    pub group: IpAddr,
    pub mode: u32,
    pub sources: Vec<IpAddr>,
}

/// Most sources of one group's filter crust reads.
const MOST_SOURCES: usize = 64;
const STORAGE: usize = std::mem::size_of::<libc::sockaddr_storage>();
/// struct group_filter: gf_interface, padding, gf_group, gf_fmode, gf_numsrc, gf_slist[].
const FILTER_HEADER: usize = 8 + STORAGE + 8;

fn storage_bytes(ip: IpAddr) -> Vec<u8> {
    let (ss, _) = InetAddr { ip, port: 0, flowinfo: 0, scope_id: 0 }.to_storage();
    // SAFETY: sockaddr_storage is plain old data of STORAGE bytes.
    unsafe { std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), STORAGE) }.to_vec()
}

fn ip_of_storage(bytes: &[u8]) -> Option<IpAddr> {
    // SAFETY: sockaddr_storage is plain old data; `bytes` holds at least STORAGE bytes.
    let ss: libc::sockaddr_storage = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    InetAddr::from_storage(&ss).map(|a| a.ip)
}

fn level_of(group: IpAddr) -> i32 {
    if group.is_ipv4() { libc::IPPROTO_IP } else { libc::IPPROTO_IPV6 }
}

/// The socket's membership of `group` on interface `ifindex` (MCAST_MSFILTER), None if it did
/// not join it there.
pub fn membership(fd: BorrowedFd, ifindex: u32, group: IpAddr) -> Result<Option<Membership>, SysError> {
    let mut buf = vec![0u8; FILTER_HEADER + STORAGE * MOST_SOURCES];
    buf[..4].copy_from_slice(&ifindex.to_ne_bytes());
    buf[8..8 + STORAGE].copy_from_slice(&storage_bytes(group));
    buf[8 + STORAGE + 4..FILTER_HEADER].copy_from_slice(&(MOST_SOURCES as u32).to_ne_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel reads the filter header from `buf` and writes at most `len` bytes.
    let ret = unsafe { libc::getsockopt(fd.as_raw_fd(), level_of(group), libc::MCAST_MSFILTER, buf.as_mut_ptr().cast(), &mut len) };
    match Errno::result(ret) {
        Ok(_) => {}
        // Not a member; or groups of that family do not apply to this socket (an IPv6 raw socket
        // asked about an IPv4 group).
        Err(Errno::EADDRNOTAVAIL | Errno::ENOPROTOOPT) => return Ok(None),
        Err(e) => return Err(SysError::new(format!("getsockopt(MCAST_MSFILTER, {group} on interface {ifindex})"), e)),
    }
    let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
    let (mode, count) = (word(8 + STORAGE), word(8 + STORAGE + 4) as usize);
    if count > MOST_SOURCES {
        return Err(SysError::new(format!("{group}: a source filter of {count} sources"), Errno::E2BIG));
    }
    let sources = (0..count).filter_map(|i| ip_of_storage(&buf[FILTER_HEADER + i * STORAGE..])).collect();
    Ok(Some(Membership { ifindex, group, mode, sources }))
}

/// Joins the group on its interface and sets its source filter.
pub fn join(fd: BorrowedFd, m: &Membership) -> Result<(), SysError> {
    let what = |call: &str| format!("setsockopt({call}, {} on interface {})", m.group, m.ifindex);
    let mut req = vec![0u8; 8 + STORAGE];
    req[..4].copy_from_slice(&m.ifindex.to_ne_bytes());
    req[8..].copy_from_slice(&storage_bytes(m.group));
    super::socket::set_bytes(fd, level_of(m.group), libc::MCAST_JOIN_GROUP, &req)
        .map_err(|e| SysError::new(what("MCAST_JOIN_GROUP"), e.errno().unwrap_or(Errno::EINVAL)))?;
    if m.mode == 0 && m.sources.is_empty() {
        return Ok(());
    }
    let mut filter = vec![0u8; FILTER_HEADER + STORAGE * m.sources.len().max(1)];
    filter[..8 + STORAGE].copy_from_slice(&req);
    filter[8 + STORAGE..8 + STORAGE + 4].copy_from_slice(&m.mode.to_ne_bytes());
    filter[8 + STORAGE + 4..FILTER_HEADER].copy_from_slice(&(m.sources.len() as u32).to_ne_bytes());
    for (i, source) in m.sources.iter().enumerate() {
        filter[FILTER_HEADER + i * STORAGE..FILTER_HEADER + (i + 1) * STORAGE].copy_from_slice(&storage_bytes(*source));
    }
    super::socket::set_bytes(fd, level_of(m.group), libc::MCAST_MSFILTER, &filter)
        .map_err(|e| SysError::new(what("MCAST_MSFILTER"), e.errno().unwrap_or(Errno::EINVAL)))?;
    Ok(())
}

/// Every multicast group some socket of this host joined, by interface, as /proc/net/igmp
/// and /proc/net/igmp6 list them: the candidates to ask a socket about.
pub fn joined_groups() -> Vec<(u32, IpAddr)> {
    let mut groups = Vec::new();
    let mut ifindex = 0;
    for line in std::fs::read_to_string("/proc/net/igmp").unwrap_or_default().lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) {
            ifindex = fields.first().and_then(|f| f.parse().ok()).unwrap_or(0);
        } else if let Some(raw) = fields.first().and_then(|f| u32::from_str_radix(f, 16).ok()) {
            // The group as the kernel keeps it (network order), printed as a host integer.
            groups.push((ifindex, IpAddr::V4(Ipv4Addr::from(raw.to_le_bytes()))));
        }
    }
    for line in std::fs::read_to_string("/proc/net/igmp6").unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(index), Some(hex)) = (fields.first().and_then(|f| f.parse().ok()), fields.get(2)) else { continue };
        if let Ok(raw) = u128::from_str_radix(hex, 16) {
            groups.push((index, IpAddr::V6(Ipv6Addr::from(raw))));
        }
    }
    groups
}

/// Whether TCP urgent data is pending (recv with MSG_OOB | MSG_PEEK, which leaves it): Some(byte)
/// when it arrived, Some(None) when announced but not arrived yet, None when there is none (or
/// the socket reads it inline, SO_OOBINLINE).
pub fn urgent_data(fd: BorrowedFd) -> Result<Option<Option<u8>>, SysError> {
    let mut byte = 0u8;
    // SAFETY: the kernel writes at most one byte into `byte`.
    let n = unsafe { libc::recv(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match Errno::result(n) {
        Ok(1) => Ok(Some(Some(byte))),
        Ok(_) | Err(Errno::EINVAL) => Ok(None),
        Err(Errno::EAGAIN) => Ok(Some(None)),
        Err(e) => Err(SysError::new("recv(MSG_OOB | MSG_PEEK)", e)),
    }
}
