//! sock_diag for UNIX sockets (NETLINK_SOCK_DIAG, linux/unix_diag.h): what the kernel knows
//! of a socket that no socket call reports without disturbing it: its peer's inode, the
//! connections waiting on a listener, queue lengths, shutdown state, the file it is bound to.
//!
//! Requests and answers are built and parsed here as plain bytes; only the netlink socket
//! calls need `unsafe`.

use nix::errno::Errno;

use super::SysError;
use super::sock_diag::{self, NLM_F_DUMP, NLM_F_REQUEST, SOCK_DIAG_BY_FAMILY};

pub const SHOW_NAME: u32 = 0x01;
pub const SHOW_VFS: u32 = 0x02;
pub const SHOW_PEER: u32 = 0x04;
pub const SHOW_ICONS: u32 = 0x08;
pub const SHOW_RQLEN: u32 = 0x10;
pub const SHOW_MEMINFO: u32 = 0x20;
pub const SHOW_UID: u32 = 0x40;
pub const SHOW_ALL: u32 = SHOW_NAME | SHOW_VFS | SHOW_PEER | SHOW_ICONS | SHOW_RQLEN | SHOW_MEMINFO | SHOW_UID;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_MEMINFO: u16 = 5;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;

/// TCP-style states the kernel uses for UNIX sockets.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// SK_MEMINFO_* indexes of `meminfo`.
pub const MEMINFO_RCVBUF: usize = 1;
pub const MEMINFO_SNDBUF: usize = 3;

/// One UNIX socket as sock_diag describes it. Each `Option` is `None` when the kernel did
/// not send that attribute (not asked for, or not applicable).
#[derive(Debug, Clone, Default)]
pub struct UnixDiag {
    pub kind: u8,
    pub state: u8,
    pub inode: u32,
    /// The address (sun_path bytes up to the address length).
    pub name: Option<Vec<u8>>,
    /// (inode, device) of the socket file, for a socket bound to a path.
    pub vfs: Option<(u32, u32)>,
    /// The peer's inode; Some(0) when the peer has no inode any more (closed) or not yet (a
    /// connection not yet accepted).
    pub peer: Option<u32>,
    /// For a listener: the inodes of the clients whose connections wait to be accepted.
    pub icons: Option<Vec<u32>>,
    /// For a listener (waiting connections, backlog); otherwise (bytes to read: the whole
    /// stream, or the first datagram; bytes this socket sent that are still queued somewhere).
    pub rqlen: Option<(u32, u32)>,
    pub meminfo: Option<Vec<u32>>,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: Option<u8>,
    pub uid: Option<u32>,
}

fn request(flags: u16, states: u32, inode: u32, show: u32) -> Vec<u8> {
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    // struct unix_diag_req
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&inode.to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // cookie: INET_DIAG_NOCOOKIE
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

fn parse(body: &[u8]) -> Result<UnixDiag, SysError> {
    if body.len() < 16 {
        return Err(SysError::new("sock_diag: short unix_diag_msg", Errno::EPROTO));
    }
    let mut d = UnixDiag { kind: body[1], state: body[2], inode: u32::from_ne_bytes(body[4..8].try_into().unwrap()), ..Default::default() };
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
    let mut off = 16;
    while off + 4 <= body.len() {
        let len = u16::from_ne_bytes(body[off..off + 2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(body[off + 2..off + 4].try_into().unwrap()) & 0x3fff;
        if len < 4 || off + len > body.len() {
            break;
        }
        let v = &body[off + 4..off + len];
        match kind {
            UNIX_DIAG_NAME => d.name = Some(v.to_vec()),
            UNIX_DIAG_VFS if v.len() >= 8 => d.vfs = Some((u32_at(v, 0), u32_at(v, 4))),
            UNIX_DIAG_PEER if v.len() >= 4 => d.peer = Some(u32_at(v, 0)),
            UNIX_DIAG_ICONS => d.icons = Some(v.chunks_exact(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap())).collect()),
            UNIX_DIAG_RQLEN if v.len() >= 8 => d.rqlen = Some((u32_at(v, 0), u32_at(v, 4))),
            UNIX_DIAG_MEMINFO => d.meminfo = Some(v.chunks_exact(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap())).collect()),
            UNIX_DIAG_SHUTDOWN if !v.is_empty() => d.shutdown = Some(v[0]),
            UNIX_DIAG_UID if v.len() >= 4 => d.uid = Some(u32_at(v, 0)),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(d)
}

/// The socket with this inode (in crust's network namespace), or None if there is none.
pub fn query(inode: u32, show: u32) -> Result<Option<UnixDiag>, SysError> {
    match sock_diag::exchange(&request(0, u32::MAX, inode, show), false, parse) {
        Ok(mut v) => Ok(v.pop()),
        Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every UNIX socket in one of `states` (a mask of 1 << state).
pub fn dump(states: u32, show: u32) -> Result<Vec<UnixDiag>, SysError> {
    sock_diag::exchange(&request(NLM_F_DUMP, states, 0, show), true, parse)
}

/// The device number sock_diag reports (the kernel's internal dev_t: major << 20 | minor) as
/// stat(2) reports it.
pub fn decode_dev(raw: u32) -> u64 {
    libc::makedev(raw >> 20, raw & 0xfffff)
}
