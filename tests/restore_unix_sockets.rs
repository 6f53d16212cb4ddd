//! UNIX domain sockets whose peers are inside the dumped tree come back connected, named,
//! listening, with their queued data (stream bytes, datagram and seqpacket boundaries), shutdown
//! state and options; what crust cannot restore is refused by pid and fd, leaving the process
//! running.
//!
//! Each test runs a real tree (tests/workloads/usock_*.c), dumps it, checks every process is
//! gone, restores it, and checks it from /proc and from inside:
//! - from /proc: the full per-process snapshot of tests/common, and a kernel view of every
//!   socket fd (sock_diag and /proc/net/unix: type, state, name, which fd of the tree its peer
//!   is, bytes queued, shutdown bits, buffer sizes, listening flag) must be the same;
//! - from inside: the workloads check their sockets' names, options and queued data, use them
//!   after restore, and print PASS/FAIL per process.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

use crust::sys::unix_diag;

// ---------------------------------------------------------------------------------
// The tree and its sockets as the kernel shows them
// ---------------------------------------------------------------------------------

/// `root` and all its descendants, sorted.
fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                    out.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
                }
            }
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

/// (pid, fd) -> socket inode, for every socket fd of `pids`.
fn socket_fds(pids: &[i32]) -> BTreeMap<(i32, i32), u32> {
    let mut out = BTreeMap::new();
    for &pid in pids {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in rd.flatten() {
            let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(link) = fs::read_link(e.path()) else { continue };
            let link = link.to_string_lossy().into_owned();
            if let Some(ino) = link.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                out.insert((pid, fd), ino.parse().unwrap());
            }
        }
    }
    out
}

/// /proc/net/unix by inode: "flags type state path".
fn proc_net_unix() -> BTreeMap<u32, String> {
    let text = fs::read_to_string("/proc/net/unix").unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let path = f.get(7).copied().unwrap_or("");
        out.insert(f[6].parse().unwrap(), format!("flags={} type={} st={} path={path}", f[3], f[4], f[5]));
    }
    out
}

/// What the kernel shows of each socket fd of the tree, with peers named by the (pid, fd)
/// holding them (inodes change across a restore, the fds holding them must not).
fn socket_view(pids: &[i32]) -> BTreeMap<String, String> {
    let fds = socket_fds(pids);
    let holder: BTreeMap<u32, (i32, i32)> = fds.iter().rev().map(|(k, v)| (*v, *k)).collect();
    let net = proc_net_unix();
    let mut out = BTreeMap::new();
    for ((pid, fd), ino) in &fds {
        let key = format!("pid {pid} fd {fd}");
        let Some(d) = unix_diag::query(*ino, unix_diag::SHOW_ALL).unwrap() else {
            out.insert(key, "not a UNIX socket".into());
            continue;
        };
        let peer = match d.peer {
            None => "none".to_string(),
            Some(0) => "closed".to_string(),
            Some(p) => match holder.get(&p) {
                Some((pp, pf)) => format!("pid {pp} fd {pf}"),
                None => "outside".to_string(),
            },
        };
        let name = d.name.as_deref().map(crust::sys::socket::show_name).unwrap_or_default();
        let (rq, wq) = d.rqlen.unwrap_or((0, 0));
        // wq is the backlog of a listener, else the sender's buffered memory (skb layout
        // dependent): only the backlog is compared.
        let wq = if d.state == unix_diag::TCP_LISTEN { wq.to_string() } else { "-".into() };
        let mem = d.meminfo.clone().unwrap_or_default();
        let bufs = format!(
            "rcvbuf={} sndbuf={}",
            mem.get(unix_diag::MEMINFO_RCVBUF).copied().unwrap_or(0),
            mem.get(unix_diag::MEMINFO_SNDBUF).copied().unwrap_or(0)
        );
        out.insert(
            key,
            format!(
                "type={} state={} name={name} peer={peer} rq={rq} wq={wq} shutdown={} {bufs} | {}",
                d.kind,
                d.state,
                d.shutdown.unwrap_or(0),
                net.get(ino).cloned().unwrap_or_default()
            ),
        );
    }
    out
}

fn diff_views(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for k in before.keys().chain(after.keys()).collect::<std::collections::BTreeSet<_>>() {
        if before.get(k) != after.get(k) {
            out.push(format!("socket {k}: before {:?} | after {:?}", before.get(k), after.get(k)));
        }
    }
    out
}

/// Everything compared from /proc for one tree.
struct TreeSnap {
    pids: Vec<i32>,
    procs: BTreeMap<i32, ProcSnapshot>,
    sockets: BTreeMap<String, String>,
}

impl TreeSnap {
    fn take(root: i32) -> TreeSnap {
        let pids = tree_pids(root);
        let procs = pids.iter().map(|p| (*p, ProcSnapshot::take(*p))).collect();
        TreeSnap { sockets: socket_view(&pids), pids, procs }
    }

    /// Differences, except the root's snapshot (verify_restored compares it).
    fn problems(&self, after: &TreeSnap) -> Vec<String> {
        let mut out = Vec::new();
        if self.pids != after.pids {
            out.push(format!("tree pids before {:?}, after {:?}", self.pids, after.pids));
        }
        for (pid, snap) in self.procs.iter().skip(1) {
            match after.procs.get(pid) {
                Some(a) => out.extend(proc_problems(snap, a, &[]).into_iter().map(|p| format!("pid {pid}: {p}"))),
                None => out.push(format!("pid {pid} missing after restore")),
            }
        }
        out.extend(diff_views(&self.sockets, &after.sockets));
        out
    }
}

/// Spawns a workload tree and waits until its root says READY.
fn spawn_tree(name: &str, args: &[&str]) -> (Workload, KillTree) {
    let w = Workload::spawn(name, args);
    let guard = KillTree { status: w.status_path.to_string_lossy().into_owned() };
    w.wait_status_line("READY parent", READY_TIMEOUT);
    (w, guard)
}

/// When a test ends (passed or failed), kills the processes of its tree that are still there
/// (the harness kills only the root): they are found by their status file, the first argument
/// of every workload process, unique to the test, so no other process is touched.
struct KillTree {
    status: String,
}

impl Drop for KillTree {
    fn drop(&mut self) {
        let Ok(procs) = fs::read_dir("/proc") else { return };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = fs::read(p.path().join("cmdline")) else { continue };
            if cmdline.split(|b| *b == 0).nth(1) == Some(self.status.as_bytes()) {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                if is_our_child(pid) {
                    waitpid_timeout(pid, Duration::from_secs(5));
                }
            }
        }
    }
}

/// Dumps the tree (every process must be gone), restores it, and returns the snapshots.
fn dump_and_restore(w: &mut Workload) -> (TreeSnap, TreeSnap) {
    let before = TreeSnap::take(w.pid);
    assert!(!before.sockets.is_empty(), "test setup: no socket in the tree");
    eprintln!("sockets before the dump:\n  {}", before.sockets.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n  "));
    w.dump();
    for pid in &before.pids {
        assert!(wait_gone(*pid, GONE_TIMEOUT), "pid {pid} of the tree still exists after the dump");
    }
    w.restore_detached();
    let after = TreeSnap::take(w.pid);
    (before, after)
}

/// The workload's verdict plus the /proc comparison; every process of the tree must PASS.
fn verify(w: &mut Workload, before: &TreeSnap, after: &TreeSnap, mut extra: Vec<String>, roles: &[&str]) {
    extra.extend(before.problems(after));
    let root_before = &before.procs[&w.pid];
    let root_after = &after.procs[&w.pid];
    let r = w.verify_restored(root_before, root_after, &[], extra);
    for role in roles {
        assert!(r.status_text.lines().any(|l| l.starts_with(&format!("PASS {role} "))), "{role} did not PASS:\n{}", r.status_text);
    }
}

// ---------------------------------------------------------------------------------
// Restores
// ---------------------------------------------------------------------------------

/// A producer and a consumer over a stream socketpair across fork, with 40 000 bytes in
/// flight one way (sent with the sender's credentials to a receiver with SO_PASSCRED) and
/// 100 000 the other way followed by shutdown(SHUT_WR): after restore each side reads exactly
/// its bytes (with the parent's credentials), the parent sees EOF after the child's data, the
/// child's SHUT_WR still holds (EPIPE), buffer sizes, SO_PASSCRED and SO_PEERCRED are kept,
/// and 200 more items flow from producer to consumer.
#[test]
fn stream_socketpair_with_data_both_ways_and_shutdown_survives() {
    let (mut w, _tree) = spawn_tree("usock_stream", &[]);
    let (before, after) = dump_and_restore(&mut w);
    verify(&mut w, &before, &after, vec![], &["parent", "child"]);
}

/// The same as an unprivileged user (65534): the sockets' peer credentials (SO_PEERCRED:
/// the parent's pid, uid and gid 65534), the credentials of the queued data and everything
/// else come back.
#[test]
fn stream_socketpair_of_an_unprivileged_user_keeps_its_peer_credentials() {
    let (mut w, _tree) = spawn_tree("usock_stream", &["nobody"]);
    let (before, after) = dump_and_restore(&mut w);
    verify(&mut w, &before, &after, vec![], &["parent", "child"]);
}

/// A datagram and a seqpacket socketpair across fork, with several messages of different
/// sizes queued each way (a zero-length datagram and a 60 000-byte one among them): after
/// restore every message arrives whole, in order, with its own length, and nothing else; the
/// parent's SO_PEEK_OFF (moved by a peek before the dump) still points past the first
/// datagram; live messages flow both ways on both pairs.
#[test]
fn datagram_and_seqpacket_pairs_keep_message_boundaries() {
    let (mut w, _tree) = spawn_tree("usock_dgram", &[]);
    let (before, after) = dump_and_restore(&mut w);
    verify(&mut w, &before, &after, vec![], &["parent", "child"]);
}

/// A listener bound to a relative path (mode 0640, backlog 7), a connection accepted from it
/// with 30 000 and 70 000 bytes in flight, and an accepted connection whose client closed it
/// with data unread: after restore the listener listens on the same name and file, both
/// accepted sockets carry its name and the client's peer name is it, each side reads its
/// bytes, the orphaned connection gives its data, then ECONNRESET, then EOF; and a NEW
/// connection from a fresh process outside the tree (python3) is accepted and answered.
#[test]
fn listener_on_a_path_and_its_connections_survive_and_accept_a_new_client() {
    let (mut w, _tree) = spawn_tree("usock_server", &[]);
    let path = w.dir.path.join("srv.sock");
    let (before, after) = dump_and_restore(&mut w);
    let meta = fs::symlink_metadata(&path).expect("socket file after restore");
    let mut extra = Vec::new();
    if meta.mode() & 0o170000 != libc::S_IFSOCK || meta.mode() & 0o7777 != 0o640 {
        extra.push(format!("{} has mode {:o} after restore, expected a socket of 0640", path.display(), meta.mode()));
    }
    // A fresh process outside the tree connects to the restored listener.
    let client = std::process::Command::new("python3")
        .args(["-c", FRESH_CLIENT, path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting a python3 client");
    verify(&mut w, &before, &after, extra, &["parent", "child"]);
    let out = client.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "welcome\n",
        "the restored server's answer to a new client (client stderr: {})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client in a fresh process: connects to argv[1], says hello, prints the answer.
const FRESH_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(b'hello from outside\n')
answer = b''
while True:
    chunk = s.recv(100)
    if not chunk:
        break
    answer += chunk
sys.stdout.write(answer.decode())
"#;

/// Abstract names: a datagram socket with SO_PASSCRED holding five datagrams from an unnamed
/// sender and from a socket connected to it (autobound: the kernel named it, since it has
/// SO_PASSCRED), a stream listener and a connection accepted from it whose client is
/// autobound too. After restore every name is the same (the kernel-chosen ones included),
/// the datagrams arrive in order with their senders' names and credentials, the connected
/// datagram socket still reaches its target, the stream bytes arrive, and a NEW client from
/// outside the tree is accepted on the abstract name.
#[test]
fn abstract_names_autobound_names_and_datagram_senders_survive() {
    let (mut w, _tree) = spawn_tree("usock_abstract", &[]);
    let name = format!("crust-usock-{}-stream", w.pid);
    let (before, after) = dump_and_restore(&mut w);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut outside = UnixStream::connect_addr(&addr).expect("connecting to the restored abstract listener");
    outside.write_all(b"hello from outside\n").unwrap();
    verify(&mut w, &before, &after, vec![], &["parent", "child"]);
    outside.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    outside.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "welcome\n", "the restored server's answer to a new client");
}

// ---------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------

/// Dumps a workload that must be refused: the refusal names its pid, the socket's fd (the
/// READY line's fd=) and each of `words`; the process keeps running untouched, looks the same
/// in /proc (its sockets too: nothing was read from their queues), and then PASSes its own
/// checks of the socket.
fn assert_refused(w: &mut Workload, words: &[&str]) {
    let fd = w.ready_field("fd");
    let before = TreeSnap::take(w.pid);
    let out = w.dump_with(&[]);
    eprintln!("{out}");
    out.assert_failure();
    let text = out.text();
    let mut problems = Vec::new();
    if !has_token(&text, &w.pid.to_string()) {
        problems.push(format!("the refusal does not name pid {}", w.pid));
    }
    if !has_token(&text, &fd) {
        problems.push(format!("the refusal does not name fd {fd}"));
    }
    for word in words {
        if !text.to_lowercase().contains(&word.to_lowercase()) {
            problems.push(format!("the refusal does not say {word:?}"));
        }
    }
    assert!(problems.is_empty(), "{}\n{out}", problems.join("\n"));
    assert_running_untouched(w.pid, "after the refused dump");
    let after = TreeSnap::take(w.pid);
    verify(w, &before, &after, vec![], &["parent"]);
}

/// A TCP connection (both ends in the process) without --tcp-established: refused by pid, fd,
/// state and address before the tree is frozen; the process keeps running and its connection
/// still carries its queued and new bytes.
#[test]
fn established_tcp_connection_is_refused_before_the_freeze_and_the_process_keeps_running() {
    let mut w = Workload::spawn("usock_refuse", &["tcp"]);
    // The refusal comes before the tree is frozen: crust's log never reaches that step.
    w.crust_env = vec![("CRUST_LOG".into(), "crust=info".into())];
    let out = w.dump_with(&[]);
    w.crust_env.clear();
    out.assert_failure();
    assert!(out.text().contains("checking the tree"), "test setup: no progress log:\n{out}");
    assert!(!out.text().contains("freezing the tree"), "the TCP connection was refused only after freezing:\n{out}");
    assert_refused(&mut w, &["TCP connection", "ESTABLISHED", "127.0.0.1"]);
}

/// A UNIX socket connected to a listener of this test (outside the dumped tree): refused by
/// pid, fd and "outside the dumped tree"; the process keeps running; nothing it had queued was consumed ("ping"
/// still reaches us, "early" still reaches it) and the connection works afterwards.
#[test]
fn unix_socket_connected_outside_the_tree_is_refused_and_keeps_working() {
    let dir = TempDir::new("usock-peer");
    let path = dir.path.join("peer.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut w = Workload::spawn("usock_refuse", &["outside", path.to_str().unwrap()]);
    let (mut conn, _) = listener.accept().unwrap();
    conn.write_all(b"early\n").unwrap();
    let fd = w.ready_field("fd");
    let before = TreeSnap::take(w.pid);
    let out = w.dump_with(&[]);
    eprintln!("{out}");
    out.assert_failure();
    let text = out.text();
    for word in [w.pid.to_string(), fd, "outside the dumped tree".into(), "socket".into()] {
        assert!(has_token(&text, &word) || text.contains(&word), "the refusal does not name {word:?}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");
    let after = TreeSnap::take(w.pid);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ping = [0u8; 5];
    conn.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"ping\n", "what the process had sent before the dump");
    conn.write_all(b"late\n").unwrap();
    verify(&mut w, &before, &after, vec![], &["parent"]);
    let mut pong = [0u8; 5];
    conn.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong\n");
}

/// An epoll in flight (SCM_RIGHTS, sent but not received) that no process holds: refused by
/// pid, fd and "SCM_RIGHTS" (restoring an epoll needs a holder's fd table); afterwards the
/// process receives it and it is still the epoll with its registration.
#[test]
fn epoll_in_flight_is_refused_and_stays_in_flight() {
    let mut w = Workload::spawn("usock_refuse", &["rights"]);
    assert_refused(&mut w, &["SCM_RIGHTS", "eventpoll"]);
}

/// `scm_fds:` of every socket fd of the tree: how many descriptors wait in its queue.
fn descriptors_in_flight(pids: &[i32]) -> BTreeMap<(i32, i32), String> {
    socket_fds(pids)
        .into_keys()
        .map(|(pid, fd)| {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let n = info.lines().find_map(|l| l.strip_prefix("scm_fds:")).unwrap_or("?").trim().to_string();
            ((pid, fd), n)
        })
        .collect()
}

/// Descriptors in flight (SCM_RIGHTS) in a datagram, a stream and a seqpacket socket: a file
/// also held by the sender (twice, in two sockets), a file held by no process any more, a
/// pipe's read end with data in the pipe (its write end held), a second description of the
/// file. After restore each message comes with its descriptors, in order, with its data
/// boundaries (the stream splits into reads exactly as a fresh one filled the same way); each
/// descriptor is the same file at its offset, the held one the same description as the
/// holder's (an offset moved through it moves the holder's), the pipe gives its data; and
/// /proc shows the same count of descriptors in flight in each socket.
#[test]
fn descriptors_in_flight_come_back_with_their_messages() {
    let (mut w, _tree) = spawn_tree("usock_rights", &[]);
    let pids = tree_pids(w.pid);
    let in_flight_before = descriptors_in_flight(&pids);
    assert!(in_flight_before.values().any(|n| n == "3"), "test setup: no socket with 3 descriptors in flight: {in_flight_before:?}");
    let (before, after) = dump_and_restore(&mut w);
    let in_flight_after = descriptors_in_flight(&after.pids);
    let mut extra = Vec::new();
    if in_flight_before != in_flight_after {
        extra.push(format!("descriptors in flight before {in_flight_before:?}, after {in_flight_after:?}"));
    }
    verify(&mut w, &before, &after, extra, &["parent", "child"]);
}

/// A connection not yet accepted whose client already sent data into it (the data waits in
/// the embryonic socket, which nothing can read before accept): refused by pid, the client's
/// fd and "not yet accepted"; afterwards the process accepts it and gets the data.
#[test]
fn connection_not_yet_accepted_with_data_is_refused_and_can_still_be_accepted() {
    let mut w = Workload::spawn("usock_refuse", &["pending"]);
    assert_refused(&mut w, &["not yet accepted"]);
}

/// Listeners (stream on a path, seqpacket on an abstract name) with connections not yet
/// accepted from clients of two processes (one client bound to a name) and an accepted one:
/// after restore /proc shows the same queue lengths and sockets; the clients are still
/// connected to the listener's name, accept returns the connections in their old order (each
/// carrying what its client sends now, the named one with its client's name), then nothing
/// more; answers reach the clients.
#[test]
fn connections_not_yet_accepted_come_back_in_the_accept_queue_in_order() {
    let (mut w, _tree) = spawn_tree("usock_pending", &[]);
    let (before, after) = dump_and_restore(&mut w);
    verify(&mut w, &before, &after, vec![], &["parent", "child"]);
}

/// `dump --leave-running` of a tree with queued stream, datagram and seqpacket data and a
/// peek offset: the image is written, and the processes go on exactly as they were (same
/// sockets, queues and peek offset in /proc; every message still there for the workload).
#[test]
fn dump_leave_running_leaves_socket_queues_untouched() {
    let (mut w, _tree) = spawn_tree("usock_dgram", &[]);
    let before = TreeSnap::take(w.pid);
    let out = w.dump_with(&["-R"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    assert_running_untouched(w.pid, "after dump -R");
    let after = TreeSnap::take(w.pid);
    let show = crust(["show", "-D", w.image_dir.to_str().unwrap()]);
    assert!(show.success() && show.stdout.contains("UnixSocket"), "crust show of the image:\n{show}");
    verify(&mut w, &before, &after, vec![], &["parent", "child"]);
}

/// `dump --leave-running` of trees with descriptors in flight and with connections not yet
/// accepted: the processes go on exactly as they were (same sockets, queue lengths and counts
/// of descriptors in flight in /proc), and every message, descriptor and waiting connection
/// is still there for the workloads.
#[test]
fn dump_leave_running_leaves_descriptors_in_flight_and_waiting_connections_untouched() {
    for name in ["usock_rights", "usock_pending"] {
        let (mut w, _tree) = spawn_tree(name, &[]);
        let before = TreeSnap::take(w.pid);
        let in_flight_before = descriptors_in_flight(&before.pids);
        let out = w.dump_with(&["-R"]);
        assert!(out.success(), "{name}: dump -R failed:\n{out}");
        assert_running_untouched(w.pid, "after dump -R");
        let after = TreeSnap::take(w.pid);
        let mut extra = Vec::new();
        if descriptors_in_flight(&after.pids) != in_flight_before {
            extra.push(format!("{name}: descriptors in flight changed: {in_flight_before:?} -> {:?}", descriptors_in_flight(&after.pids)));
        }
        verify(&mut w, &before, &after, extra, &["parent", "child"]);
    }
}

/// Less common arrangements in one process: a datagram socket on a relative path holding
/// datagrams from a named sender of the tree, from unnamed ones and from a socket connected to
/// it one way; a listener whose socket file had been unlinked, with an accepted connection; a
/// seqpacket listener and connection with messages both ways; a datagram socket that a closed
/// socket had connected to; receive and send timeouts, SO_RCVLOWAT, buffer sizes. After
/// restore: names, senders, order, boundaries, the missing socket file (still missing),
/// options and states are all as they were.
#[test]
fn named_senders_one_way_datagrams_unlinked_files_and_seqpacket_accept_survive() {
    let mut w = Workload::spawn("usock_mix", &[]);
    let (before, after) = dump_and_restore(&mut w);
    let mut extra = Vec::new();
    if w.dir.path.join("hidden.sock").exists() {
        extra.push("hidden.sock, unlinked before the dump, exists after the restore".into());
    }
    verify(&mut w, &before, &after, extra, &["parent"]);
}

/// An unconnected seqpacket socket (unnamed) and a bound one not listening; a datagram
/// socket connected to itself holding three datagrams (one empty) it sent itself; a datagram
/// socket holding datagrams from an unnamed and a named sender; a child blocked in recv(2)
/// on an empty datagram socket. After restore: the seqpacket sockets are as they were (the
/// bound one listens and accepts on demand), every datagram comes in order with its length
/// and sender and nothing more, the self-connected socket still reaches itself, and the
/// blocked reader wakes up with exactly the datagram sent after the restore. Also a listener
/// (with an accepted connection and one waiting) whose socket file was replaced by someone
/// else's regular file: restore binds the name again without touching that file (same inode,
/// same contents, checked from outside too), and the connections work.
#[test]
fn unconnected_seqpacket_self_connected_datagram_and_blocked_datagram_reader_survive() {
    const SYS_RECVFROM: i64 = libc::SYS_recvfrom;
    let (mut w, _tree) = spawn_tree("usock_misc", &[]);
    let child: i32 = ready_field(&w.wait_status_line("READY child", READY_TIMEOUT), "pid").unwrap().parse().unwrap();
    wait_in_syscall(child, SYS_RECVFROM, Duration::from_secs(5));
    let other_inode = fs::symlink_metadata(w.status_path.with_extension("gone")).expect("the other file").ino();
    let (before, after) = dump_and_restore(&mut w);
    let mut extra = Vec::new();
    std::thread::sleep(Duration::from_millis(100));
    if blocked_syscall(child) != Some(SYS_RECVFROM) {
        extra.push(format!("after restore the child is in syscall {:?}, not recvfrom", blocked_syscall(child)));
    }
    let gone = w.status_path.with_extension("gone");
    match fs::symlink_metadata(&gone) {
        Ok(m)
            if m.ino() == other_inode && m.file_type().is_file() && fs::read_to_string(&gone).unwrap_or_default() == "someone else's\n" => {
        }
        other => extra.push(format!("{} after restore: {other:?}, expected the same regular file (inode {other_inode})", gone.display())),
    }
    verify(&mut w, &before, &after, extra, &["parent", "child"]);
}

/// A consumer blocked in read(2) on an empty stream socket when dumped: after restore its
/// read goes on waiting, returns exactly what the producer then writes, and it answers.
#[test]
fn reader_blocked_on_an_empty_socket_wakes_up_after_restore() {
    let (mut w, _tree) = spawn_tree("usock_blocked", &[]);
    let child: i32 = ready_field(&w.wait_status_line("READY child", READY_TIMEOUT), "pid").unwrap().parse().unwrap();
    wait_in_syscall(child, SYS_READ, Duration::from_secs(5));
    let (before, after) = dump_and_restore(&mut w);
    let mut extra = Vec::new();
    std::thread::sleep(Duration::from_millis(100));
    if blocked_syscall(child) != Some(SYS_READ) {
        extra.push(format!("after restore the child is in syscall {:?}, not read", blocked_syscall(child)));
    }
    verify(&mut w, &before, &after, extra, &["parent", "child"]);
}

/// A restore that fails after binding a socket to its path leaves no socket file behind: the
/// file it created is removed by the failing crust; a crust killed there leaves it listed in
/// its journal, and the next crust run removes it. Either way the same image then restores.
#[test]
fn failed_restore_removes_the_socket_file_it_bound() {
    for action in ["fail", "kill"] {
        let (mut w, _tree) = spawn_tree("usock_server", &[]);
        let path = w.dir.path.join("srv.sock");
        let pids = TreeSnap::take(w.pid).pids;
        w.dump();
        for pid in &pids {
            assert!(wait_gone(*pid, GONE_TIMEOUT), "pid {pid} of the tree still exists after the dump");
        }
        w.crust_env = vec![("CRUST_FAULT".into(), format!("restore-before-resume:1:{action}")), ("CRUST_LOG".into(), "crust=info".into())];
        let out = w.restore_detached_raw();
        w.crust_env.clear();
        assert!(!out.success(), "{action}: the restore should have failed:\n{out}");
        for pid in &pids {
            assert!(wait_gone(*pid, GONE_TIMEOUT), "{action}: pid {pid} of the failed restore is left");
        }
        if action == "kill" {
            // The next crust run repairs what the killed one left; any command that starts
            // a dump or restore does, even one that fails at once.
            let empty = TempDir::new("no-image");
            crust(["restore", "-D", empty.path.to_str().unwrap()]).assert_failure();
        }
        assert!(fs::symlink_metadata(&path).is_err(), "{action}: the failed restore left {} behind:\n{out}", path.display());
        w.restore_detached();
        assert!(fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()), "{action}: no socket file after the good restore");
    }
}
