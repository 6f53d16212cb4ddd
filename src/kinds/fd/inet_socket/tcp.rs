//! Established TCP connections (dump --tcp-established), through the kernel's TCP repair mode
//! (TCP_REPAIR): a socket in repair mode lets its sequence numbers, queues, negotiated options,
//! timestamp clock and window be read and set, sends nothing, and closes without a FIN or a
//! reset.
//!
//! Dump reads each connection with the tree frozen, in repair mode for the microseconds the
//! reads take and out of it again at once without a window probe (TCP_REPAIR_OFF_NO_WP), and
//! re-reads until two readings agree (an acknowledgement still in flight may move the queues).
//! crust keeps a copy of each connection; once the tree was killed, it puts its copies in
//! repair mode and closes them, so the connections vanish without a word to their peers.
//! With -R, or when the dump fails, the copies are simply dropped: the connections go on
//! untouched.
//!
//! Restore makes the socket in repair mode, gives it its queues' sequence numbers, binds and
//! connects it (no handshake in repair mode), sets the negotiated options, the timestamp
//! clock, the queued bytes and the window, and leaves repair mode once every process of the
//! tree exists (the peer of each connection exists by then), with a window probe that gets
//! the conversation going again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result, bail, ensure};

use crate::image::proto::TcpConnection;
use crate::sys::inet::{self, InetAddr, SIOCINQ, SIOCOUTQ, SIOCOUTQNSD};
use crate::sys::socket;

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;

const REPAIR_ON: i32 = 1;
const REPAIR_OFF: i32 = 0;
/// Leaves repair mode without sending a window probe: for a connection that was only read.
const REPAIR_OFF_NO_WINDOW_PROBE: i32 = -1;

const NO_QUEUE: i32 = 0;
const RECV_QUEUE: i32 = 1;
const SEND_QUEUE: i32 = 2;

const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;

/// How many readings of a connection dump takes, at most, before giving up on two agreeing.
const READINGS: usize = 10;

fn set(fd: BorrowedFd, name: i32, value: i32, what: &str) -> Result<()> {
    socket::set_int(fd, libc::IPPROTO_TCP, name, value).with_context(|| what.to_string())?;
    Ok(())
}

fn set_repair(fd: BorrowedFd, mode: i32) -> Result<()> {
    set(fd, TCP_REPAIR, mode, &format!("TCP_REPAIR {mode}"))
}

/// Reads an established connection (its process frozen).
pub fn read(fd: BorrowedFd) -> Result<TcpConnection> {
    set_repair(fd, REPAIR_ON).context("entering TCP repair mode (it needs CAP_NET_ADMIN)")?;
    let reading = read_until_stable(fd);
    let left = set_repair(fd, REPAIR_OFF_NO_WINDOW_PROBE);
    let connection = reading?;
    left?;
    Ok(connection)
}

/// (send_seq, recv_seq, send queue length, receive queue length).
fn sequences(fd: BorrowedFd) -> Result<(u32, u32, u32, u32)> {
    let seq = |queue: i32| -> Result<u32> {
        set(fd, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
        let seq = socket::get_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).context("TCP_QUEUE_SEQ")?;
        Ok(seq as u32)
    };
    let (send, recv) = (seq(SEND_QUEUE)?, seq(RECV_QUEUE)?);
    set(fd, TCP_REPAIR_QUEUE, NO_QUEUE, "TCP_REPAIR_QUEUE")?;
    Ok((send, recv, inet::queued_bytes(fd, SIOCOUTQ)?, inet::queued_bytes(fd, SIOCINQ)?))
}

fn read_until_stable(fd: BorrowedFd) -> Result<TcpConnection> {
    for _ in 0..READINGS {
        let before = sequences(fd)?;
        let connection = read_once(fd, before)?;
        if sequences(fd)? == before {
            return Ok(connection);
        }
    }
    bail!("the connection kept changing while it was read ({READINGS} readings)")
}

fn peek_queue(fd: BorrowedFd, queue: i32, len: u32) -> Result<Vec<u8>> {
    set(fd, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
    let data = inet::peek(fd, len as usize);
    set(fd, TCP_REPAIR_QUEUE, NO_QUEUE, "TCP_REPAIR_QUEUE")?;
    let data = data?;
    ensure!(data.len() == len as usize, "queue {queue}: {} bytes read of {len}", data.len());
    Ok(data)
}

fn read_once(fd: BorrowedFd, (send_seq, recv_seq, outq, inq): (u32, u32, u32, u32)) -> Result<TcpConnection> {
    let info = socket::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 8).context("TCP_INFO")?;
    ensure!(info.len() >= 7, "TCP_INFO of {} bytes", info.len());
    let window = socket::get_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20).context("TCP_REPAIR_WINDOW")?;
    ensure!(window.len() == 20, "TCP_REPAIR_WINDOW of {} bytes", window.len());
    let w = |i: usize| u32::from_ne_bytes(window[i * 4..i * 4 + 4].try_into().unwrap());
    Ok(TcpConnection {
        send_seq,
        recv_seq,
        send_queue: peek_queue(fd, SEND_QUEUE, outq)?,
        recv_queue: peek_queue(fd, RECV_QUEUE, inq)?,
        unsent: inet::queued_bytes(fd, SIOCOUTQNSD)?,
        options: info[5] as u32,
        send_wscale: (info[6] & 0xf) as u32,
        recv_wscale: (info[6] >> 4) as u32,
        mss: socket::get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG).context("TCP_MAXSEG")? as u32,
        timestamp: socket::get_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP).context("TCP_TIMESTAMP")? as u32,
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
    })
}

/// Closes connections silently: in repair mode, a closed socket sends neither FIN nor reset.
pub fn close_silently(copies: Vec<OwnedFd>) {
    for copy in copies {
        if let Err(e) = set_repair(copy.as_fd(), REPAIR_ON) {
            tracing::warn!("a TCP connection of the dumped tree could not be closed silently: {e:#}");
        }
    }
}

/// Makes `fd`, a fresh TCP socket, the connection `c` from `local` to `peer`, in repair mode
/// (left by [`leave_repair`] once the whole tree exists).
pub fn restore(fd: BorrowedFd, c: &TcpConnection, local: &InetAddr, peer: &InetAddr) -> Result<()> {
    set_repair(fd, REPAIR_ON).context("entering TCP repair mode")?;
    set_queue_seq(fd, SEND_QUEUE, c.send_seq.wrapping_sub(c.send_queue.len() as u32))?;
    set_queue_seq(fd, RECV_QUEUE, c.recv_seq.wrapping_sub(c.recv_queue.len() as u32))?;
    inet::bind(fd, local)?;
    inet::connect(fd, peer)?;
    set_negotiated_options(fd, c)?;
    set(fd, TCP_TIMESTAMP, c.timestamp as i32, "TCP_TIMESTAMP")?;
    fill_queue(fd, RECV_QUEUE, &c.recv_queue).context("refilling the receive queue")?;
    fill_queue(fd, SEND_QUEUE, &c.send_queue).context("refilling the send queue")?;
    let window: Vec<u8> =
        [c.snd_wl1, c.snd_wnd, c.max_window, c.rcv_wnd, c.rcv_wup].iter().flat_map(|v| v.to_ne_bytes()).collect();
    socket::set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &window).context("TCP_REPAIR_WINDOW")?;
    Ok(())
}

/// Binds a socket that will stay unconnected to `local`, even if a connection of the same
/// address is still in TIME_WAIT (repair mode binds with forced reuse).
pub fn bind_forced(fd: BorrowedFd, local: &InetAddr) -> Result<()> {
    set_repair(fd, REPAIR_ON).context("entering TCP repair mode")?;
    let bound = inet::bind(fd, local);
    set_repair(fd, REPAIR_OFF_NO_WINDOW_PROBE)?;
    bound?;
    Ok(())
}

/// Out of repair mode: the connection sends a window probe and goes on.
pub fn leave_repair(fd: BorrowedFd) -> Result<()> {
    set_repair(fd, REPAIR_OFF)
}

fn set_queue_seq(fd: BorrowedFd, queue: i32, seq: u32) -> Result<()> {
    set(fd, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
    set(fd, TCP_QUEUE_SEQ, seq as i32, &format!("TCP_QUEUE_SEQ {seq} of queue {queue}"))?;
    set(fd, TCP_REPAIR_QUEUE, NO_QUEUE, "TCP_REPAIR_QUEUE")
}

fn set_negotiated_options(fd: BorrowedFd, c: &TcpConnection) -> Result<()> {
    let mut options = vec![(TCPOPT_MSS, c.mss)];
    if c.options & TCPI_OPT_WSCALE != 0 {
        options.push((TCPOPT_WINDOW, c.send_wscale | (c.recv_wscale << 16)));
    }
    if c.options & TCPI_OPT_SACK != 0 {
        options.push((TCPOPT_SACK_PERM, 0));
    }
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        options.push((TCPOPT_TIMESTAMP, 0));
    }
    let bytes: Vec<u8> = options.iter().flat_map(|(code, value)| [code.to_ne_bytes(), value.to_ne_bytes()]).flatten().collect();
    socket::set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &bytes).context("TCP_REPAIR_OPTIONS")?;
    Ok(())
}

/// Writes `data` into a queue of a socket in repair mode; the kernel takes it in pieces.
fn fill_queue(fd: BorrowedFd, queue: i32, data: &[u8]) -> Result<()> {
    set(fd, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
    let mut written = 0;
    // Each piece is at least a page unless the kernel refuses: bounded by the data's size.
    for _ in 0..=data.len() / 4096 + 1 {
        if written == data.len() {
            break;
        }
        let n = inet::send_some(fd, &data[written..]).with_context(|| format!("{written} of {} bytes written", data.len()))?;
        ensure!(n > 0, "the kernel took no more bytes ({written} of {})", data.len());
        written += n;
    }
    set(fd, TCP_REPAIR_QUEUE, NO_QUEUE, "TCP_REPAIR_QUEUE")?;
    ensure!(written == data.len(), "{written} of {} bytes written", data.len());
    Ok(())
}
