//! sock_diag for IPv4 and IPv6 sockets (linux/inet_diag.h): what the kernel knows of a TCP or
//! UDP socket that no socket call reports without disturbing it: its state, the length of a
//! listener's accept queue and its backlog, the bytes queued on a socket, its owner, its
//! shutdown state.

use nix::errno::Errno;

use super::SysError;
use super::sock_diag::{self, NLM_F_DUMP};

const INET_DIAG_SHUTDOWN: u16 = 8;
const INET_DIAG_SKV6ONLY: u16 = 11;

/// TCP states (include/net/tcp_states.h); UDP uses ESTABLISHED (connected) and CLOSE.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// The name of a TCP state, for messages.
pub fn state_name(state: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(state as usize).copied().unwrap_or("?")
}

/// One socket as inet_diag describes it.
#[derive(Debug, Clone, Default)]
pub struct InetDiag {
    pub family: u8,
    pub state: u8,
    pub inode: u32,
    pub uid: u32,
    /// A listener: connections waiting to be accepted. Others: bytes to read.
    pub rqueue: u32,
    /// A listener: its backlog. Others: bytes written and not yet acknowledged (TCP) or
    /// not yet sent (UDP).
    pub wqueue: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: Option<u8>,
    pub v6only: Option<bool>,
    /// The local and remote ports, and the addresses (IPv4 in the first 4 bytes).
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Milliseconds until the socket's timer fires (a TIME_WAIT socket: until it goes).
    pub expires_ms: u32,
}

impl InetDiag {
    /// The address of one end (local or remote).
    pub fn end(&self, local: bool) -> std::net::SocketAddr {
        let (addr, port) = if local { (&self.local_addr, self.local_port) } else { (&self.remote_addr, self.remote_port) };
        let ip: std::net::IpAddr = match self.family as i32 {
            libc::AF_INET => std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into(),
            _ => std::net::Ipv6Addr::from(*addr).into(),
        };
        std::net::SocketAddr::new(ip, port)
    }
}

fn request(family: u8, protocol: u8, states: u32) -> Vec<u8> {
    const BODY: usize = 56; // struct inet_diag_req_v2
    let mut req = sock_diag::header(BODY, NLM_F_DUMP);
    req.push(family);
    req.push(protocol);
    req.push(1 << (INET_DIAG_SHUTDOWN - 1)); // idiag_ext: the attributes to add
    req.push(0);
    req.extend_from_slice(&states.to_ne_bytes());
    // struct inet_diag_sockid: ports, addresses, interface: all zero (no filter); cookie
    // INET_DIAG_NOCOOKIE.
    req.extend_from_slice(&[0u8; 40]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

fn parse(body: &[u8]) -> Result<InetDiag, SysError> {
    const MSG: usize = 72; // struct inet_diag_msg
    if body.len() < MSG {
        return Err(SysError::new("sock_diag: short inet_diag_msg", Errno::EPROTO));
    }
    let u32_at = |i: usize| u32::from_ne_bytes(body[i..i + 4].try_into().unwrap());
    let addr = |i: usize| -> [u8; 16] { body[i..i + 16].try_into().unwrap() };
    let mut d = InetDiag {
        family: body[0],
        state: body[1],
        // struct inet_diag_sockid at 4: ports in network order, then the two addresses.
        local_port: u16::from_be_bytes([body[4], body[5]]),
        remote_port: u16::from_be_bytes([body[6], body[7]]),
        local_addr: addr(8),
        remote_addr: addr(24),
        expires_ms: u32_at(52),
        rqueue: u32_at(56),
        wqueue: u32_at(60),
        uid: u32_at(64),
        inode: u32_at(68),
        ..Default::default()
    };
    for (kind, value) in sock_diag::attributes(body, MSG) {
        match kind {
            INET_DIAG_SHUTDOWN if !value.is_empty() => d.shutdown = Some(value[0]),
            INET_DIAG_SKV6ONLY if !value.is_empty() => d.v6only = Some(value[0] != 0),
            _ => {}
        }
    }
    Ok(d)
}

/// The sockets of this family and protocol whose local port is `port`, in crust's network
/// namespace (connections in TIME_WAIT and orphans included: they hold the port too).
pub fn on_port(family: i32, protocol: i32, port: u16) -> Result<Vec<InetDiag>, SysError> {
    let all = sock_diag::exchange(&request(family as u8, protocol as u8, u32::MAX), true, parse)?;
    Ok(all.into_iter().filter(|d| d.local_port == port).collect())
}

/// The socket of this family (AF_INET, AF_INET6) and protocol (IPPROTO_TCP, IPPROTO_UDP)
/// with this inode, in crust's network namespace; None if the kernel lists no such socket.
pub fn find(family: i32, protocol: i32, inode: u64) -> Result<Option<InetDiag>, SysError> {
    let all = sock_diag::exchange(&request(family as u8, protocol as u8, u32::MAX), true, parse)?;
    Ok(all.into_iter().find(|d| u64::from(d.inode) == inode))
}
