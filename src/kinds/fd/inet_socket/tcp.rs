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

/// TCP states (include/net/tcp_states.h) of a connection crust restores.
pub const ESTABLISHED: u8 = 1;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// Whether crust restores a connection in this state (open, or half closed either way).
pub fn restorable(state: u8) -> bool {
    [ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING].contains(&state)
}

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

/// Urgent data waiting to be read, which repair mode has no way to set again (checked with a
/// peek, which leaves it).
pub fn refuse_urgent(fd: BorrowedFd) -> Result<(), String> {
    match inet::urgent_data(fd) {
        Ok(None) => Ok(()),
        Ok(Some(byte)) => {
            let what = byte.map(|b| format!("the urgent byte {b:#04x}")).unwrap_or("urgent data announced".into());
            Err(format!("has {what} waiting to be read (MSG_OOB), which crust cannot restore"))
        }
        Err(e) => Err(format!("urgent data: {e}")),
    }
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
    let state = info[0];
    let fin_sent = [FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK].contains(&state);
    let fin_received = [CLOSE_WAIT, CLOSING, LAST_ACK].contains(&state);
    // SIOCOUTQ counts a FIN not yet acknowledged; the queue holds only the bytes before it.
    let fin_unacked = [FIN_WAIT1, CLOSING, LAST_ACK].contains(&state) && outq > 0;
    let window = socket::get_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20).context("TCP_REPAIR_WINDOW")?;
    ensure!(window.len() == 20, "TCP_REPAIR_WINDOW of {} bytes", window.len());
    let w = |i: usize| u32::from_ne_bytes(window[i * 4..i * 4 + 4].try_into().unwrap());
    Ok(TcpConnection {
        send_seq,
        recv_seq,
        send_queue: peek_queue(fd, SEND_QUEUE, outq - u32::from(fin_unacked))?,
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
        fin_sent,
        fin_received,
        unacked: outq,
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
    // The queues end where the bytes end: a FIN's sequence number comes back with the FIN.
    let (send_end, recv_end) = (c.send_seq.wrapping_sub(c.fin_sent as u32), c.recv_seq.wrapping_sub(c.fin_received as u32));
    set_queue_seq(fd, SEND_QUEUE, send_end.wrapping_sub(c.send_queue.len() as u32))?;
    set_queue_seq(fd, RECV_QUEUE, recv_end.wrapping_sub(c.recv_queue.len() as u32))?;
    inet::bind(fd, local)?;
    inet::connect(fd, peer)?;
    set_negotiated_options(fd, c)?;
    set(fd, TCP_TIMESTAMP, c.timestamp as i32, "TCP_TIMESTAMP")?;
    fill_queue(fd, RECV_QUEUE, &c.recv_queue).context("refilling the receive queue")?;
    fill_queue(fd, SEND_QUEUE, &c.send_queue).context("refilling the send queue")?;
    // The kernel refuses a window last updated past what was received: the peer's FIN is not
    // received yet.
    let rcv_wup = if after(c.rcv_wup, recv_end) { recv_end } else { c.rcv_wup };
    let window: Vec<u8> = [c.snd_wl1, c.snd_wnd, c.max_window, c.rcv_wnd, rcv_wup].iter().flat_map(|v| v.to_ne_bytes()).collect();
    socket::set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &window).context("TCP_REPAIR_WINDOW")?;
    if c.fin_sent {
        // Queued as already sent (repair mode with the send queue chosen transmits nothing);
        // sent again once out of repair mode, if the peer had not acknowledged it.
        set(fd, TCP_REPAIR_QUEUE, SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
        let shut = inet::shutdown(fd, libc::SHUT_WR).context("shutdown(SHUT_WR): this end's FIN");
        set(fd, TCP_REPAIR_QUEUE, NO_QUEUE, "TCP_REPAIR_QUEUE")?;
        shut?;
    }
    Ok(())
}

/// Once out of repair mode: a connection whose peer had sent its FIN gets it again, as the
/// peer sent it (a peer outside the tree does not send it twice), and crust waits until the
/// kernel took it.
pub fn receive_peer_fin(fd: BorrowedFd, c: &TcpConnection, local: &InetAddr, peer: &InetAddr) -> Result<()> {
    if !c.fin_received {
        return Ok(());
    }
    let segment = inet::TcpSegment {
        seq: c.recv_seq.wrapping_sub(1),
        ack: c.send_seq.wrapping_sub(c.unacked),
        flags: 0x11, // FIN | ACK
        window: (c.snd_wnd >> c.send_wscale).min(u32::from(u16::MAX)) as u16,
    };
    inet::inject_tcp_segment(&peer.unmapped(), &local.unmapped(), &segment).context("giving the connection its peer's FIN")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let info = socket::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 1).context("TCP_INFO")?;
        if info.first().is_some_and(|s| [CLOSE_WAIT, CLOSING, LAST_ACK, 6 /* TIME_WAIT */, 7 /* CLOSE */].contains(s)) {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "the connection did not take its peer's FIN within 5 s (state {:?})", info.first());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
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

/// Whether sequence number `a` comes after `b` (modulo 2^32).
fn after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
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
