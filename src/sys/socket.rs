//! Socket calls crust makes on its own descriptors: the `pidfd_getfd` copies of a process's
//! sockets (which are the process's sockets: same open file description), and temporary
//! sockets of its own. Addresses are UNIX socket names as the kernel keeps them: the bytes
//! of `sun_path` up to the address length (a path with its terminating NUL, or an abstract
//! name starting with NUL); an empty name is an unnamed socket.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::SysError;

/// The options crust reads and sets that the libc crate does not name.
pub const SO_PASSPIDFD: i32 = 76;
pub const SO_PASSRIGHTS: i32 = 83;
pub const SCM_PIDFD: i32 = 0x04;

const SUN_PATH_OFFSET: usize = 2;
const SUN_PATH_LEN: usize = 108;

fn sockaddr_un(name: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t), SysError> {
    if name.len() > SUN_PATH_LEN {
        return Err(SysError::new(format!("a UNIX socket name of {} bytes", name.len()), Errno::ENAMETOOLONG));
    }
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    Ok((addr, (SUN_PATH_OFFSET + name.len()) as libc::socklen_t))
}

fn name_of(addr: &libc::sockaddr_un, len: libc::socklen_t) -> Vec<u8> {
    let n = (len as usize).saturating_sub(SUN_PATH_OFFSET).min(SUN_PATH_LEN);
    addr.sun_path[..n].iter().map(|c| *c as u8).collect()
}

/// getsockopt(2) of an int-sized option.
pub fn get_int(fd: BorrowedFd, level: i32, name: i32) -> Result<i32, SysError> {
    let bytes = get_bytes(fd, level, name, 4)?;
    let mut b = [0u8; 4];
    b[..bytes.len().min(4)].copy_from_slice(&bytes[..bytes.len().min(4)]);
    Ok(i32::from_ne_bytes(b))
}

/// getsockopt(2) of an option up to `len` bytes; returns what the kernel wrote.
pub fn get_bytes(fd: BorrowedFd, level: i32, name: i32, len: usize) -> Result<Vec<u8>, SysError> {
    let mut buf = vec![0u8; len];
    let mut optlen = len as libc::socklen_t;
    // SAFETY: the kernel writes at most `optlen` bytes to `buf`, which is that long, and
    // stores the length it wrote in `optlen`.
    let ret = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut optlen) };
    Errno::result(ret).map_err(|e| SysError::new(format!("getsockopt(level {level}, option {name})"), e))?;
    buf.truncate(optlen as usize);
    Ok(buf)
}

/// The length getsockopt(2) reports for an option when given no room (for SO_GET_FILTER:
/// the number of filter instructions).
pub fn option_len(fd: BorrowedFd, level: i32, name: i32) -> Result<usize, SysError> {
    let mut optlen: libc::socklen_t = 0;
    // SAFETY: with a zero length the kernel writes no option bytes, only `optlen`.
    let ret = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, std::ptr::null_mut(), &mut optlen) };
    Errno::result(ret).map_err(|e| SysError::new(format!("getsockopt(level {level}, option {name})"), e))?;
    Ok(optlen as usize)
}

/// setsockopt(2) of an int-sized option.
pub fn set_int(fd: BorrowedFd, level: i32, name: i32, value: i32) -> Result<(), SysError> {
    set_bytes(fd, level, name, &value.to_ne_bytes())
}

pub fn set_bytes(fd: BorrowedFd, level: i32, name: i32, value: &[u8]) -> Result<(), SysError> {
    // SAFETY: the kernel reads `value.len()` bytes from `value`.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as libc::socklen_t) };
    Errno::result(ret).map_err(|e| SysError::new(format!("setsockopt(level {level}, option {name}, {value:?})"), e))?;
    Ok(())
}

/// getpeername(2): the peer's name; empty for an unnamed peer. Err(ENOTCONN) without one.
pub fn peer_name(fd: BorrowedFd) -> Result<Vec<u8>, SysError> {
    let (mut addr, _) = sockaddr_un(&[])?;
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`, a sockaddr_un of that size.
    let ret = unsafe { libc::getpeername(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    Errno::result(ret).map_err(|e| SysError::new("getpeername", e))?;
    Ok(name_of(&addr, len))
}

/// getsockname(2): the socket's own name; empty for an unnamed socket.
pub fn local_name(fd: BorrowedFd) -> Result<Vec<u8>, SysError> {
    let (mut addr, _) = sockaddr_un(&[])?;
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`, a sockaddr_un of that size.
    let ret = unsafe { libc::getsockname(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    Errno::result(ret).map_err(|e| SysError::new("getsockname", e))?;
    Ok(name_of(&addr, len))
}

/// poll(2) with a zero timeout: the events the socket reports now (never waits, consumes
/// nothing).
pub fn poll_now(fd: BorrowedFd) -> Result<i16, SysError> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN | libc::POLLPRI | libc::POLLOUT | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one live pollfd.
    let ret = unsafe { libc::poll(&mut p, 1, 0) };
    Errno::result(ret).map_err(|e| SysError::new("poll", e))?;
    Ok(p.revents)
}

/// socket(AF_UNIX, type | SOCK_CLOEXEC, 0) in crust.
pub fn unix_socket(kind: i32) -> Result<OwnedFd, SysError> {
    // SAFETY: integer arguments; a new fd is returned on success.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) };
    let fd = Errno::result(fd).map_err(|e| SysError::new("socket(AF_UNIX)", e))?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// connect(2) to a UNIX socket name.
pub fn connect(fd: BorrowedFd, name: &[u8]) -> Result<(), SysError> {
    let (addr, len) = sockaddr_un(name)?;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let ret = unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    Errno::result(ret).map_err(|e| SysError::new(format!("connect({})", show_name(name)), e))?;
    Ok(())
}

/// shutdown(2).
pub fn shutdown(fd: BorrowedFd, how: i32) -> Result<(), SysError> {
    // SAFETY: integer arguments.
    let ret = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    Errno::result(ret).map_err(|e| SysError::new(format!("shutdown({how})"), e))?;
    Ok(())
}

/// Credentials of a UNIX socket message (SCM_CREDENTIALS) or of a peer (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ucred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// SO_PEERCRED.
pub fn peer_credentials(fd: BorrowedFd) -> Result<Ucred, SysError> {
    let b = get_bytes(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, 12)?;
    if b.len() < 12 {
        return Err(SysError::new("getsockopt(SO_PEERCRED): short answer", Errno::EINVAL));
    }
    let word = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
    Ok(Ucred { pid: word(0) as i32, uid: word(4), gid: word(8) })
}

/// What one recvmsg(2) returned.
#[derive(Debug)]
pub struct Received {
    /// The call's result: bytes copied, or with MSG_TRUNC the whole length of the datagram.
    pub len: usize,
    pub data: Vec<u8>,
    /// The sender's name (datagrams); empty when unnamed.
    pub name: Vec<u8>,
    pub credentials: Option<Ucred>,
    /// Descriptors passed with the message (SCM_RIGHTS), in order: crust's now (a peek
    /// installs them too), closed when dropped.
    pub rights: Vec<OwnedFd>,
    /// Other descriptors that came with it (SCM_PIDFD), closed when dropped.
    pub fds: Vec<OwnedFd>,
    pub msg_flags: i32,
}

/// recvmsg(2) into a buffer of `len` bytes, with room for the sender's name and control
/// messages.
pub fn receive(fd: BorrowedFd, len: usize, flags: i32) -> Result<Received, SysError> {
    let mut data = vec![0u8; len];
    let (mut addr, _) = sockaddr_un(&[])?;
    // Room for credentials, a pidfd and the most descriptors one message can carry
    // (SCM_MAX_FD, 253); u64 for alignment.
    let mut control = [0u64; 160];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: msghdr is plain old data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points to a live buffer of the length given next to it.
    let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    let n = Errno::result(ret).map_err(|e| SysError::new("recvmsg", e))? as usize;
    data.truncate(n.min(len));
    let mut out = Received {
        len: n,
        data,
        name: name_of(&addr, msg.msg_namelen),
        credentials: None,
        rights: Vec::new(),
        fds: Vec::new(),
        msg_flags: msg.msg_flags,
    };
    // SAFETY: the CMSG_* walk stays within the control buffer the kernel filled (its length
    // is msg.msg_controllen); the data of each message is read by copying bytes out.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let payload = libc::CMSG_DATA(cmsg);
            let payload_len = header.cmsg_len as usize - (payload as usize - cmsg as usize);
            let bytes = std::slice::from_raw_parts(payload, payload_len);
            if header.cmsg_level == libc::SOL_SOCKET {
                match header.cmsg_type {
                    libc::SCM_CREDENTIALS if bytes.len() >= 12 => {
                        let word = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap());
                        out.credentials = Some(Ucred { pid: word(0) as i32, uid: word(4), gid: word(8) });
                    }
                    libc::SCM_RIGHTS | SCM_PIDFD => {
                        let into = if header.cmsg_type == libc::SCM_RIGHTS { &mut out.rights } else { &mut out.fds };
                        for chunk in bytes.chunks_exact(4) {
                            let raw = i32::from_ne_bytes(chunk.try_into().unwrap());
                            into.push(OwnedFd::from_raw_fd(raw));
                        }
                    }
                    _ => {}
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(out)
}

/// sendmsg(2) of `data`, to `name` when given (else to the connected peer), with explicit
/// SCM_CREDENTIALS when given and `rights` passed as SCM_RIGHTS. Returns the bytes sent.
pub fn send(
    fd: BorrowedFd,
    data: &[u8],
    name: Option<&[u8]>,
    credentials: Option<Ucred>,
    rights: &[BorrowedFd],
    flags: i32,
) -> Result<usize, SysError> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain old data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    let addr = match name {
        Some(n) => Some(sockaddr_un(n)?),
        None => None,
    };
    if let Some((a, len)) = &addr {
        msg.msg_name = (a as *const libc::sockaddr_un) as *mut libc::c_void;
        msg.msg_namelen = *len;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut payloads: Vec<(i32, Vec<u8>)> = Vec::new();
    if let Some(c) = credentials {
        let mut bytes = Vec::with_capacity(12);
        bytes.extend_from_slice(&c.pid.to_ne_bytes());
        bytes.extend_from_slice(&c.uid.to_ne_bytes());
        bytes.extend_from_slice(&c.gid.to_ne_bytes());
        payloads.push((libc::SCM_CREDENTIALS, bytes));
    }
    if !rights.is_empty() {
        if rights.len() > 253 {
            return Err(SysError::new(format!("sendmsg of {} descriptors (SCM_MAX_FD is 253)", rights.len()), Errno::EINVAL));
        }
        payloads.push((libc::SCM_RIGHTS, rights.iter().flat_map(|f| f.as_raw_fd().to_ne_bytes()).collect()));
    }
    // u64 for alignment; room for both control messages at their largest.
    let mut control = [0u64; 160];
    if !payloads.is_empty() {
        // SAFETY: CMSG_SPACE is pure arithmetic.
        let space: usize = payloads.iter().map(|(_, b)| unsafe { libc::CMSG_SPACE(b.len() as u32) } as usize).sum();
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `space` (at most 32 + 1032 bytes) fits the control buffer (1280 bytes); each
        // header and its payload is written inside the room CMSG_SPACE reserved for it, found
        // by the CMSG_FIRSTHDR/CMSG_NXTHDR walk over that buffer.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            for (kind, bytes) in &payloads {
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = *kind;
                (*cmsg).cmsg_len = libc::CMSG_LEN(bytes.len() as u32) as usize;
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), libc::CMSG_DATA(cmsg), bytes.len());
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    // SAFETY: every pointer in `msg` points to a live buffer of the length given next to it.
    let ret = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    let n = Errno::result(ret).map_err(|e| {
        let to = name.map(|n| format!(" to {}", show_name(n))).unwrap_or_default();
        let with = if rights.is_empty() { String::new() } else { format!(" with {} descriptor(s)", rights.len()) };
        SysError::new(format!("sendmsg of {} bytes{with}{to}", data.len()), e)
    })?;
    Ok(n as usize)
}

/// A UNIX socket name for people: a path, or "@name" for an abstract one (NULs inside
/// shown as '@', as /proc/net/unix does).
pub fn show_name(name: &[u8]) -> String {
    match name.first() {
        None => "(unnamed)".into(),
        Some(0) => {
            let rest: String = name[1..].iter().map(|&c| if c == 0 { '@' } else { c as char }).collect();
            format!("@{}", rest.escape_debug())
        }
        Some(_) => {
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        }
    }
}
