//! Netlink sockets of a process, seen and rebuilt through crust's copies: their address
//! (port id and the first 32 multicast groups), every group they joined, their peer, their
//! flags, and what the kernel's netlink sock_diag says of them (queued bytes, a dump running).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::SysError;
use super::sock_diag::{self, NLM_F_DUMP};

pub const SOL_NETLINK: i32 = 270;
pub const NETLINK_ADD_MEMBERSHIP: i32 = 1;
pub const NETLINK_PKTINFO: i32 = 3;
pub const NETLINK_BROADCAST_ERROR: i32 = 4;
pub const NETLINK_NO_ENOBUFS: i32 = 5;
pub const NETLINK_LISTEN_ALL_NSID: i32 = 8;
pub const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
pub const NETLINK_CAP_ACK: i32 = 10;
pub const NETLINK_EXT_ACK: i32 = 11;
pub const NETLINK_GET_STRICT_CHK: i32 = 12;

const NDIAG_SHOW_MEMINFO: u32 = 1;
const NDIAG_SHOW_FLAGS: u32 = 8;
const NETLINK_DIAG_MEMINFO: u16 = 0;
const NETLINK_DIAG_FLAGS: u16 = 4;
/// NETLINK_DIAG_FLAGS: a dump (NLM_F_DUMP request) is being answered piece by piece.
pub const NDIAG_FLAG_CB_RUNNING: u32 = 1;

/// A netlink address: port id and the bitmap of groups 1..=32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NlAddr {
    pub portid: u32,
    pub groups: u32,
}

fn sockaddr(a: NlAddr) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_pid = a.portid;
    sa.nl_groups = a.groups;
    sa
}

type NameCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: BorrowedFd, call: NameCall, what: &str) -> Result<NlAddr, SysError> {
    let mut sa = sockaddr(NlAddr::default());
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `sa`, which is that large.
    let ret = unsafe { call(fd.as_raw_fd(), (&mut sa as *mut libc::sockaddr_nl).cast(), &mut len) };
    Errno::result(ret).map_err(|e| SysError::new(what, e))?;
    Ok(NlAddr { portid: sa.nl_pid, groups: sa.nl_groups })
}

/// getsockname(2): its port id (0 when not bound yet) and groups 1..=32.
pub fn local_address(fd: BorrowedFd) -> Result<NlAddr, SysError> {
    name(fd, libc::getsockname, "getsockname(netlink)")
}

/// getpeername(2): the port id and group it sends to by default (zero when not connected).
pub fn peer_address(fd: BorrowedFd) -> Result<NlAddr, SysError> {
    name(fd, libc::getpeername, "getpeername(netlink)")
}

type AddrCall = unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int;

fn address_call(fd: BorrowedFd, call: AddrCall, a: NlAddr, what: &str) -> Result<(), SysError> {
    let sa = sockaddr(a);
    // SAFETY: `sa` is a valid sockaddr_nl of the length given.
    let ret = unsafe { call(fd.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32) };
    Errno::result(ret).map_err(|e| SysError::new(format!("{what}(port id {}, groups {:#x})", a.portid, a.groups), e))?;
    Ok(())
}

pub fn bind(fd: BorrowedFd, a: NlAddr) -> Result<(), SysError> {
    address_call(fd, libc::bind, a, "bind")
}

pub fn connect(fd: BorrowedFd, a: NlAddr) -> Result<(), SysError> {
    address_call(fd, libc::connect, a, "connect")
}

/// Every group the socket belongs to (NETLINK_LIST_MEMBERSHIPS), as group numbers.
pub fn memberships(fd: BorrowedFd) -> Result<Vec<u32>, SysError> {
    let len = super::socket::option_len(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS)?;
    let bytes = super::socket::get_bytes(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, len.max(4))?;
    let mut groups = Vec::new();
    for (word, chunk) in bytes.chunks_exact(4).enumerate() {
        let bits = u32::from_ne_bytes(chunk.try_into().unwrap());
        groups.extend((0..32).filter(|b| bits & (1 << b) != 0).map(|b| word as u32 * 32 + b + 1));
    }
    Ok(groups)
}

/// What netlink sock_diag says of one socket.
#[derive(Debug, Clone, Default)]
pub struct NetlinkDiag {
    pub inode: u32,
    /// Bytes of messages waiting to be read.
    pub queued: u32,
    /// NDIAG_FLAG_* bits.
    pub flags: u32,
}

fn request(protocol: u8) -> Vec<u8> {
    const BODY: usize = 20; // struct netlink_diag_req
    let mut req = sock_diag::header(BODY, NLM_F_DUMP);
    req.push(libc::AF_NETLINK as u8);
    req.push(protocol);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // ndiag_ino: every socket
    req.extend_from_slice(&(NDIAG_SHOW_MEMINFO | NDIAG_SHOW_FLAGS).to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

fn parse(body: &[u8]) -> Result<NetlinkDiag, SysError> {
    const MSG: usize = 28; // struct netlink_diag_msg
    if body.len() < MSG {
        return Err(SysError::new("sock_diag: short netlink_diag_msg", Errno::EPROTO));
    }
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
    let mut d = NetlinkDiag { inode: u32_at(body, 16), ..Default::default() };
    for (kind, value) in sock_diag::attributes(body, MSG) {
        match kind {
            // SK_MEMINFO_RMEM_ALLOC comes first.
            NETLINK_DIAG_MEMINFO if value.len() >= 4 => d.queued = u32_at(value, 0),
            NETLINK_DIAG_FLAGS if value.len() >= 4 => d.flags = u32_at(value, 0),
            _ => {}
        }
    }
    Ok(d)
}

/// The netlink socket of this protocol with this inode, None if the kernel lists none.
pub fn find(protocol: i32, inode: u64) -> Result<Option<NetlinkDiag>, SysError> {
    let all = sock_diag::exchange(&request(protocol as u8), true, parse)?;
    Ok(all.into_iter().find(|d| u64::from(d.inode) == inode))
}
