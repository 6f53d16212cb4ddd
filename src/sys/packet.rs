//! Packet sockets (AF_PACKET) through crust's copies, and what packet sock_diag says of them:
//! protocol, interface, version, flags, rings, fanout, memberships, filter, queued bytes.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::SysError;
use super::sock_diag::{self, NLM_F_DUMP};

pub const SOL_PACKET: i32 = 263;
pub const PACKET_ADD_MEMBERSHIP: i32 = 1;
pub const PACKET_COPY_THRESH: i32 = 7;
pub const PACKET_AUXDATA: i32 = 8;
pub const PACKET_ORIGDEV: i32 = 9;
pub const PACKET_VERSION: i32 = 10;
pub const PACKET_RESERVE: i32 = 12;
pub const PACKET_LOSS: i32 = 14;
pub const PACKET_VNET_HDR: i32 = 15;
pub const PACKET_TIMESTAMP: i32 = 17;
pub const PACKET_FANOUT: i32 = 18;

const PACKET_SHOW_INFO: u32 = 0x01;
const PACKET_SHOW_MCLIST: u32 = 0x02;
const PACKET_SHOW_RING_CFG: u32 = 0x04;
const PACKET_SHOW_FANOUT: u32 = 0x08;
const PACKET_SHOW_MEMINFO: u32 = 0x10;
const PACKET_SHOW_FILTER: u32 = 0x20;

/// pdi_flags of PACKET_DIAG_INFO.
pub const PDI_AUXDATA: u32 = 0x2;
pub const PDI_ORIGDEV: u32 = 0x4;
pub const PDI_VNETHDR: u32 = 0x8;
pub const PDI_LOSS: u32 = 0x10;

/// One membership (PACKET_ADD_MEMBERSHIP), added `count` times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketMembership {
    pub ifindex: u32,
    pub count: u32,
    pub kind: u16,
    pub address: Vec<u8>,
}

/// One packet socket as packet sock_diag describes it.
#[derive(Debug, Clone, Default)]
pub struct PacketDiag {
    pub inode: u32,
    pub kind: u8,
    /// The protocol (ethertype), in host order.
    pub protocol: u16,
    pub ifindex: u32,
    pub version: u32,
    pub reserve: u32,
    pub copy_thresh: u32,
    pub tstamp: u32,
    pub flags: u32,
    pub memberships: Vec<PacketMembership>,
    pub rings: bool,
    /// PACKET_FANOUT's value (id | type << 16 | flags), if it is in a fanout group.
    pub fanout: Option<u32>,
    pub filter: bool,
    pub queued: u32,
}

fn request() -> Vec<u8> {
    const BODY: usize = 20; // struct packet_diag_req
    let mut req = sock_diag::header(BODY, NLM_F_DUMP);
    req.push(libc::AF_PACKET as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    let show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT | PACKET_SHOW_MEMINFO | PACKET_SHOW_FILTER;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

fn parse(body: &[u8]) -> Result<PacketDiag, SysError> {
    const MSG: usize = 16; // struct packet_diag_msg
    if body.len() < MSG {
        return Err(SysError::new("sock_diag: short packet_diag_msg", Errno::EPROTO));
    }
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
    let mut d = PacketDiag {
        kind: body[1],
        // pdiag_num is the protocol in host order (ntohs of the socket's).
        protocol: u16::from_ne_bytes([body[2], body[3]]),
        inode: u32_at(body, 4),
        ..Default::default()
    };
    for (kind, v) in sock_diag::attributes(body, MSG) {
        match kind {
            0 if v.len() >= 24 => {
                (d.ifindex, d.version, d.reserve) = (u32_at(v, 0), u32_at(v, 4), u32_at(v, 8));
                (d.copy_thresh, d.tstamp, d.flags) = (u32_at(v, 12), u32_at(v, 16), u32_at(v, 20));
            }
            1 => {
                for m in v.chunks_exact(44) {
                    let alen = (u16::from_ne_bytes([m[10], m[11]]) as usize).min(32);
                    d.memberships.push(PacketMembership {
                        ifindex: u32_at(m, 0),
                        count: u32_at(m, 4),
                        kind: u16::from_ne_bytes([m[8], m[9]]),
                        address: m[12..12 + alen].to_vec(),
                    });
                }
            }
            2 | 3 => d.rings = true,
            4 if v.len() >= 4 => d.fanout = Some(u32_at(v, 0)),
            6 if v.len() >= 4 => d.queued = u32_at(v, 0),
            7 => d.filter = !v.is_empty(),
            _ => {}
        }
    }
    Ok(d)
}

/// The packet socket with this inode, None if the kernel lists none.
pub fn find(inode: u64) -> Result<Option<PacketDiag>, SysError> {
    let all = sock_diag::exchange(&request(), true, parse)?;
    Ok(all.into_iter().find(|d| u64::from(d.inode) == inode))
}

/// bind(2) to a protocol (host order) and an interface (0: every one).
pub fn bind(fd: BorrowedFd, protocol: u16, ifindex: u32) -> Result<(), SysError> {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `sll` is a valid sockaddr_ll of `len` bytes.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) };
    Errno::result(ret).map_err(|e| SysError::new(format!("bind(AF_PACKET, protocol {protocol:#06x}, interface {ifindex})"), e))?;
    Ok(())
}

/// PACKET_ADD_MEMBERSHIP once.
pub fn add_membership(fd: BorrowedFd, m: &PacketMembership) -> Result<(), SysError> {
    // struct packet_mreq: mr_ifindex, mr_type, mr_alen, mr_address[8].
    let mut req = vec![0u8; 16];
    req[..4].copy_from_slice(&(m.ifindex as i32).to_ne_bytes());
    req[4..6].copy_from_slice(&m.kind.to_ne_bytes());
    let alen = m.address.len().min(8);
    req[6..8].copy_from_slice(&(alen as u16).to_ne_bytes());
    req[8..8 + alen].copy_from_slice(&m.address[..alen]);
    super::socket::set_bytes(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &req)
}
