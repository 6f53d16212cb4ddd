//! NETLINK_SOCK_DIAG: one request, its answers. The families' own modules (`unix_diag`,
//! `inet_diag`) build the request and parse each answer; this is the netlink exchange they
//! share.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::SysError;

pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_DUMP: u16 = 0x300;

/// The netlink message header of a request of `body_len` bytes.
pub fn header(body_len: usize, flags: u16) -> Vec<u8> {
    let mut req = Vec::with_capacity(16 + body_len);
    req.extend_from_slice(&((16 + body_len) as u32).to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req
}

/// Netlink attributes (type without its flag bits, value) of a message body from `off` on.
pub fn attributes(body: &[u8], mut off: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while off + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[off], body[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[off + 2], body[off + 3]]) & 0x3fff;
        if len < 4 || off + len > body.len() {
            break;
        }
        out.push((kind, &body[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn netlink_socket() -> Result<OwnedFd, SysError> {
    // SAFETY: integer arguments; a new fd is returned on success.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    let fd = Errno::result(fd).map_err(|e| SysError::new("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", e))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends one request and collects the sockets of the answer (until NLMSG_DONE, or the single
/// answer of an exact query). Err(errno) for an NLMSG_ERROR answer.
pub fn exchange<T>(req: &[u8], dump: bool, parse: fn(&[u8]) -> Result<T, SysError>) -> Result<Vec<T>, SysError> {
    let sock = netlink_socket()?;
    // SAFETY: `req` is a live buffer of req.len() bytes; a zeroed sockaddr_nl addresses the
    // kernel.
    let ret = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    Errno::result(ret).map_err(|e| SysError::new("sendto(sock_diag request)", e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the kernel writes at most buf.len() bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = Errno::result(n).map_err(|e| SysError::new("recv(sock_diag answer)", e))? as usize;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > n {
                return Err(SysError::new("sock_diag: malformed answer", Errno::EPROTO));
            }
            let body = &buf[off + 16..off + len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let err = i32::from_ne_bytes(body[..4].try_into().unwrap());
                    if err == 0 {
                        return Ok(out);
                    }
                    return Err(SysError::new("sock_diag", Errno::from_raw(-err)));
                }
                SOCK_DIAG_BY_FAMILY => out.push(parse(body)?),
                _ => {}
            }
            off += (len + 3) & !3;
        }
        if !dump {
            return Ok(out);
        }
    }
}
