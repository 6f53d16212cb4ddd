//! Established TCP connections (dump --tcp-established) with both ends in the tree, on
//! loopback: numbered messages going back and forth across the checkpoint arrive once each
//! and in order; a writer blocked on a full window and a reader that had not read come back
//! with every byte queued in both directions; without --tcp-established the dump is refused
//! naming pid, fd and both addresses; a peer outside the tree keeps its connection through the
//! checkpoint (the network lock hides the tree meanwhile).

mod common;
use common::*;

use std::time::Duration;

/// Two processes (server child, client parent) on one connection, in one of two modes:
/// `pingpong` (the client sends numbered lines, the server answers each; both check order)
/// and `blocked` (the client writes 4 MiB the server does not read until `go`: the client
/// blocks in send with both queues full; the server also sent 1000 bytes the client has not
/// read). Each writes `result` (the client once the server passed).
const PROGRAM: &str = r#"
import os, socket, sys, time
mode = sys.argv[1]
l = socket.socket(socket.AF_INET6 if mode == 'blocked' else socket.AF_INET)
l.bind(('::1' if mode == 'blocked' else '127.0.0.1', 0))
l.listen(1)
address = l.getsockname()[:2]
pid = os.fork()
if pid == 0:
    s, _ = l.accept()
    l.close()
    if mode == 'pingpong':
        f = s.makefile('rb')
        n = 0
        for line in f:
            if int(line) != n:
                open('server-result', 'w').write('line %s, expected %d' % (line, n)); os._exit(1)
            s.sendall(line)
            n += 1
        open('server-result', 'w').write('ok %d' % n); os._exit(0)
    s.sendall(b'x' * 1000)
    while not os.path.exists('go'):
        time.sleep(0.05)
    got = 0
    ok = True
    while got < 4 << 20:
        chunk = s.recv(1 << 16)
        if not chunk: break
        ok = ok and all(b == (got + i) % 251 for i, b in enumerate(chunk))
        got += len(chunk)
    open('server-result', 'w').write('read %d pattern %s' % (got, ok)); os._exit(0)
l.close()
c = socket.create_connection(address)
if mode == 'pingpong':
    f = c.makefile('rb')
    n = 0
    done_at = None
    open('ready', 'w').write('%d\n' % pid)
    while done_at is None or n < done_at:
        c.sendall(b'%d\n' % n)
        if int(f.readline()) != n:
            open('result', 'w').write('answer out of order at %d' % n); sys.exit(1)
        n += 1
        if done_at is None and os.path.exists('go'):
            done_at = n + 200
    c.shutdown(socket.SHUT_WR)
    os.waitpid(pid, 0)
    open('result', 'w').write('client %d server %s' % (n, open('server-result').read()))
    sys.exit(0)
data = bytes((i % 251) for i in range(4 << 20))
open('ready', 'w').write('%d\n' % pid)
c.sendall(data)
got = c.recv(1000, socket.MSG_WAITALL)
os.waitpid(pid, 0)
open('result', 'w').write('client sent all, got %d, server %s' % (len(got), open('server-result').read()))
"#;

/// Established TCP connections of `pids` as `ss` shows them (state, queues, addresses).
fn connections(pids: &[i32]) -> Vec<String> {
    let out = std::process::Command::new("ss").args(["-tanHp"]).output().expect("running ss (iproute2)");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ESTAB") && pids.iter().any(|p| l.contains(&format!("pid={p},"))))
        .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

fn start(mode: &str) -> (Workload, i32) {
    let mut w = Workload::spawn_program(&format!("tcp-{mode}"), "python3", &["-c", PROGRAM, mode]);
    wait_until("python3 to connect", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let child: i32 = std::fs::read_to_string(w.dir.path.join("ready")).unwrap().trim().parse().unwrap();
    // The server child is killed with the workload whatever happens.
    w.own(child);
    (w, child)
}

fn finish(w: &Workload) -> String {
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to finish its exchange", Duration::from_secs(30), || file_written(&w.dir.path.join("result")));
    std::fs::read_to_string(w.dir.path.join("result")).unwrap()
}

#[test]
fn numbered_messages_across_the_checkpoint_arrive_once_and_in_order() {
    let (mut w, child) = start("pingpong");
    std::thread::sleep(Duration::from_millis(200));
    w.dump_killing(&["--tcp-established"]);
    assert!(wait_gone(child, Duration::from_secs(10)), "the server child outlived the dump");
    assert!(connections(&[w.pid, child]).is_empty(), "connections left after the dump");
    w.restore_detached();
    assert_eq!(connections(&[w.pid, child]).len(), 2, "both ends after restore");
    let result = finish(&w);
    assert!(result.starts_with("client ") && result.contains(" server ok "), "{result}");
    let n: Vec<&str> = result.split_whitespace().collect();
    assert_eq!(n[1], n[4], "client and server counts: {result}");
}

#[test]
fn a_writer_blocked_on_a_full_window_and_unread_bytes_come_back_with_every_byte() {
    let (mut w, child) = start("blocked");
    let mut before = Vec::new();
    wait_until("the client to block on a full window", Duration::from_secs(15), || {
        before = connections(&[w.pid, child]);
        blocked_in_send(w.pid) && before.len() == 2
    });
    std::thread::sleep(Duration::from_millis(200));
    before = connections(&[w.pid, child]);
    w.dump_killing(&["--tcp-established"]);
    assert!(wait_gone(child, Duration::from_secs(10)), "the server child outlived the dump");
    // Compared while the tree is still stopped: once it runs, the writer goes on writing.
    w.restore_stopped();
    assert_eq!(connections(&[w.pid, child]), before, "queues and addresses after restore (ss)");
    for pid in [w.pid, child] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    assert_eq!(finish(&w), format!("client sent all, got 1000, server read {} pattern True", 4 << 20));
}

/// Whether the main thread of `pid` waits in a write-like call (sendto, write).
fn blocked_in_send(pid: i32) -> bool {
    matches!(blocked_syscall(pid), Some(n) if n == libc::SYS_sendto || n == libc::SYS_write)
}

/// dump -R reads the connections in repair mode and leaves it without a window probe: the
/// exchange goes on as if nothing happened, none lost or repeated.
#[test]
fn dump_leave_running_leaves_connections_exchanging() {
    let (w, child) = start("pingpong");
    std::thread::sleep(Duration::from_millis(200));
    let out = w.dump_with(&["-R", "--tcp-established"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    assert_eq!(connections(&[w.pid, child]).len(), 2, "both ends after dump -R");
    let result = finish(&w);
    assert!(result.contains(" server ok "), "{result}");
}

#[test]
fn without_tcp_established_a_connection_is_refused_and_keeps_working() {
    let (w, child) = start("pingpong");
    let out = w.dump_with(&[]);
    out.assert_failure();
    assert!(out.text().contains("--tcp-established"), "the refusal does not say how to go on:\n{out}");
    assert_running_untouched(w.pid, "after the refused dump");
    let result = finish(&w);
    assert!(result.contains(" server ok "), "{result}");
    let _ = child;
}

/// Whether crust's network lock drops what `peer` (an address of this test) sends (`nft list
/// table inet crust`: other tests' locks may be there too).
fn locked(peer: std::net::SocketAddr) -> bool {
    let out = std::process::Command::new("nft").args(["list", "table", "inet", "crust"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("{} . {} . ", peer.ip(), peer.port()))
}

/// A connection to a peer outside the tree (this test, on loopback): the peer keeps its socket
/// through the dump and restore and writes while the tree is away; it never sees a reset (its
/// socket stays ESTABLISHED, its writes succeed), every byte arrives once, and the
/// conversation goes on on the same connection. The network lock is gone afterwards.
#[test]
fn a_peer_outside_the_tree_keeps_its_connection_and_sees_no_reset() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import socket, time, os\nc = socket.create_connection(('127.0.0.1', {port}))\nc.sendall(b'hello')\n\
         open('ready', 'w').write('1')\nwhile not os.path.exists('go'): time.sleep(0.05)\n\
         got = c.recv(6, socket.MSG_WAITALL)\nc.sendall(b'after')\nopen('result', 'w').write(got.decode() + ' ' + c.recv(5, socket.MSG_WAITALL).decode())\ntime.sleep(100)\n"
    );
    let mut w = Workload::spawn_program("tcp-outside", "python3", &["-c", &program]);
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 5];
    peer.read_exact(&mut hello).unwrap();
    wait_until("python3 to connect", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let (local, remote) = (peer.local_addr().unwrap().to_string(), peer.peer_addr().unwrap().to_string());
    let peer_view = |what: &str| {
        let out = std::process::Command::new("ss").args(["-tanH"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ours = |l: &&str| l.split_whitespace().nth(3) == Some(local.as_str()) && l.split_whitespace().nth(4) == Some(remote.as_str());
        let line = text.lines().find(ours).unwrap_or("(gone)").to_string();
        assert!(line.starts_with("ESTAB"), "{what}: the outside peer's socket is {line:?}");
    };
    w.dump_killing(&["--tcp-established"]);
    assert!(locked(peer.local_addr().unwrap()), "no network lock while the tree is away");
    peer.write_all(b"during").expect("the peer writes while the tree is away");
    std::thread::sleep(Duration::from_millis(500));
    peer_view("while the tree is away");
    w.restore_detached();
    assert!(!locked(peer.local_addr().unwrap()), "the network lock is still there after the restore");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    let mut after = [0u8; 5];
    peer.read_exact(&mut after).expect("reading from the restored program");
    assert_eq!(&after, b"after");
    peer.write_all(b"reply").unwrap();
    wait_until("python3 to get the reply", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "during reply");
    peer_view("after the restore");
}

/// A restore that fails (injected once every process exists, before the connections go on)
/// lifts the network lock of the image's connections with everything else it created.
#[test]
fn a_failed_restore_lifts_the_network_lock() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\nopen('ready', 'w').write('1')\ntime.sleep(100)\n"
    );
    let mut w = Workload::spawn_program("tcp-failed-restore", "python3", &["-c", &program]);
    let (peer, _) = listener.accept().unwrap();
    wait_until("python3 to connect", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    w.dump_killing(&["--tcp-established"]);
    assert!(locked(peer.local_addr().unwrap()), "no network lock while the tree is away");
    w.crust_env = vec![("CRUST_FAULT".into(), "restore-tree:1:fail".into())];
    let out = w.restore_detached_raw();
    assert!(!out.success(), "the restore did not fail:\n{out}");
    assert!(!pid_exists(w.pid), "the failed restore left pid {} behind", w.pid);
    assert!(!locked(peer.local_addr().unwrap()), "the failed restore left the network lock:\n{out}");
}

/// One RESP command on `conn`, and its answer (read until it is complete for these commands).
fn redis(conn: &mut std::net::TcpStream, command: &str) -> String {
    use std::io::{Read, Write};
    conn.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    // "+OK\r\n", ":N\r\n", "$N\r\nVALUE\r\n": complete once it ends a line after its header.
    while !(answer.ends_with(b"\r\n") && (answer[0] != b'$' || answer.iter().filter(|b| **b == b'\n').count() == 2)) {
        let n = conn.read(&mut buf).expect("reading redis's answer");
        assert!(n > 0, "redis closed the connection");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).trim_end().replace("\r\n", " ")
}

/// redis-server (nobody here wrote it) holding keys, with a client outside the tree (this
/// test) connected: across dump --tcp-established and restore the client keeps using the same
/// connection, the data is there, and a new client connects too.
#[test]
fn redis_server_keeps_its_data_and_its_outside_client_connection() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_s = port.to_string();
    let mut w = Workload::spawn_program(
        "redis",
        "redis-server",
        &["--port", &port_s, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"],
    );
    let mut conn = None;
    wait_until("redis-server to accept a client", Duration::from_secs(15), || {
        conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(redis(&mut conn, "SET greeting hello"), "+OK");
    assert_eq!(redis(&mut conn, "INCR counter"), ":1");
    w.dump_killing(&["--tcp-established"]);
    w.restore_detached();
    assert_eq!(redis(&mut conn, "GET greeting"), "$5 hello", "the same connection after restore");
    assert_eq!(redis(&mut conn, "INCR counter"), ":2");
    let mut fresh = std::net::TcpStream::connect(("127.0.0.1", port)).expect("a new client after restore");
    fresh.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(redis(&mut fresh, "GET counter"), "$1 2");
}

/// A program connected to this test, dumped with `dump_options` and restored with
/// `restore_options`: its connection must come back closed (a send fails with EPIPE, its
/// local name is kept) and leave no network lock.
fn connection_comes_back_closed(dump_options: &[&str], restore_options: &[&str]) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import errno, os, socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\nname = c.getsockname()\n\
         open('ready', 'w').write('1')\nwhile not os.path.exists('go'): time.sleep(0.05)\n\
         try:\n    c.send(b'x'); r = 'sent'\nexcept OSError as e:\n    r = errno.errorcode[e.errno]\n\
         open('result', 'w').write('%s %s' % (r, c.getsockname() == name))\ntime.sleep(100)\n"
    );
    let mut w = Workload::spawn_program("tcp-close", "python3", &["-c", &program]);
    let (peer, _) = listener.accept().unwrap();
    wait_until("python3 to connect", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    w.dump_killing(dump_options);
    let mut args = vec!["restore", "-d", "-D"];
    let image = w.image_dir.to_string_lossy().into_owned();
    args.push(&image);
    args.extend_from_slice(restore_options);
    let out = crust(&args);
    w.own(w.pid);
    out.assert_success();
    assert!(!locked(peer.local_addr().unwrap()), "a network lock is left for a connection restored closed");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to try its connection", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "EPIPE True");
}

/// dump --tcp-close records the connection without its state; it comes back closed.
#[test]
fn dump_tcp_close_brings_connections_back_closed() {
    connection_comes_back_closed(&["--tcp-close"], &[]);
}

/// restore --tcp-close brings back closed a connection dumped with its state, and lifts its
/// network lock.
#[test]
fn restore_tcp_close_brings_back_closed_a_connection_dumped_with_its_state() {
    connection_comes_back_closed(&["--tcp-established"], &["--tcp-close"]);
}

/// A dump with a connection to this test that fails (`fail`) or whose crust is killed (`kill`)
/// after the connection was locked and read: the lock is lifted (by crust, or by its
/// guardian) and the connection carries bytes both ways as before.
fn failed_dump_lifts_the_lock(action: &str) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import os, socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\nopen('ready', 'w').write('1')\n\
         while not os.path.exists('go'): time.sleep(0.05)\nc.sendall(c.recv(4, socket.MSG_WAITALL))\ntime.sleep(100)\n"
    );
    let mut w = Workload::spawn_program("tcp-failed-dump", "python3", &["-c", &program]);
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    wait_until("python3 to connect", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    w.crust_env = vec![("CRUST_FAULT".into(), format!("dump-collected:1:{action}"))];
    let out = w.dump_with(&["--tcp-established"]);
    assert!(!out.success(), "the dump did not fail:\n{out}");
    wait_until("the network lock to be lifted", Duration::from_secs(10), || !locked(peer.local_addr().unwrap()));
    assert_running_untouched(w.pid, "after the failed dump");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    peer.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    peer.read_exact(&mut echo).expect("the echo through the connection after the failed dump");
    assert_eq!(&echo, b"ping");
}

#[test]
fn a_failed_dump_lifts_the_network_lock_and_the_connection_goes_on() {
    failed_dump_lifts_the_lock("fail");
}

#[test]
fn a_killed_dump_leaves_the_guardian_to_lift_the_network_lock() {
    failed_dump_lifts_the_lock("kill");
}

/// Half-closed connections: one the peer closed (CLOSE_WAIT here, with bytes not read yet) and
/// one this end closed (FIN_WAIT2, the peer's bytes not read yet), each with the other end in
/// the tree (a pair inside the program) and outside it (this test): after restore the program
/// reads the bytes then end of file where its peer had closed, and the bytes the still-open
/// direction carries; the outside peer keeps its half-open connections.
#[test]
fn half_closed_connections_come_back_half_closed_both_ways() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        r#"
import os, socket, time
def drain(s):
    s.settimeout(10)
    got = b''
    while True:
        d = s.recv(100)
        if not d: return got
        got += d
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
a = socket.create_connection(l.getsockname()); b, _ = l.accept()
a.sendall(b'a to b'); a.shutdown(socket.SHUT_WR); b.sendall(b'b to a')
they_closed = socket.create_connection(('127.0.0.1', {port}))
we_closed = socket.create_connection(('127.0.0.1', {port}))
we_closed.sendall(b'we closed'); we_closed.shutdown(socket.SHUT_WR)
while not os.path.exists('closed'): time.sleep(0.05)
time.sleep(0.2)
open('ready', 'w').write('1')
while not os.path.exists('go'): time.sleep(0.05)
got_b = drain(b); b.sendall(b' bye'); b.close()
got_a = drain(a)
got_they = drain(they_closed); they_closed.sendall(b'answer')
we_closed.settimeout(10); got_we = we_closed.recv(100)
open('result', 'w').write(repr((got_b, got_a, got_they, got_we)))
time.sleep(100)
"#
    );
    let mut w = Workload::spawn_program("tcp-half-closed", "python3", &["-c", &program]);
    let (mut they_closed, _) = listener.accept().unwrap();
    let (mut we_closed, _) = listener.accept().unwrap();
    they_closed.write_all(b"they closed").unwrap();
    they_closed.shutdown(std::net::Shutdown::Write).unwrap();
    we_closed.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut first = Vec::new();
    we_closed.read_to_end(&mut first).unwrap();
    assert_eq!(first, b"we closed", "test setup");
    std::fs::write(w.dir.path.join("closed"), "").unwrap();
    wait_until("python3 to see the closes", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    w.dump_killing(&["--tcp-established"]);
    w.restore_detached();
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    we_closed.write_all(b"still open").unwrap();
    they_closed.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = [0u8; 6];
    they_closed.read_exact(&mut answer).expect("the program's answer on the connection this test half closed");
    assert_eq!(&answer, b"answer");
    wait_until("python3 to read everything", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "(b'a to b', b'b to a bye', b'they closed', b'still open')");
}

/// A connection holding urgent data not read yet (MSG_OOB) is refused by pid, fd and what it
/// holds, before the tree is frozen; the program still reads its urgent byte afterwards.
#[test]
fn urgent_data_is_refused_and_left_in_place() {
    let program = r#"
import os, socket, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
a = socket.create_connection(l.getsockname()); b, _ = l.accept()
a.send(b'!', socket.MSG_OOB)
time.sleep(0.2)
open('ready', 'w').write(str(b.fileno()))
while not os.path.exists('go'): time.sleep(0.05)
open('result', 'w').write(b.recv(1, socket.MSG_OOB).decode())
"#;
    let mut w = Workload::spawn_program("tcp-urgent", "python3", &["-c", program]);
    wait_until("python3 to receive urgent data", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let fd = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    // The refusal comes before the tree is frozen: crust's log never reaches that step.
    w.crust_env = vec![("CRUST_LOG".into(), "crust=info".into())];
    let out = w.dump_with(&["--tcp-established"]);
    out.assert_failure();
    assert!(out.text().contains("checking the tree"), "test setup: no progress log:\n{out}");
    for word in [w.pid.to_string(), fd, "urgent byte 0x21".into()] {
        assert!(has_token(&out.text(), &word) || out.text().contains(&word), "the refusal does not name {word:?}:\n{out}");
    }
    assert!(!out.text().contains("freezing the tree"), "refused only after freezing:\n{out}");
    assert_running_untouched(w.pid, "after the refused dump");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to read its urgent byte", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "!");
}

/// A restore killed (SIGKILL of crust) once its processes and sockets exist: its processes die
/// with it, and its guardian lifts the network lock of the connections it was making again.
#[test]
fn a_killed_restore_leaves_its_guardian_to_lift_the_network_lock() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\nopen('ready', 'w').write('1')\ntime.sleep(100)\n"
    );
    let mut w = Workload::spawn_program("tcp-killed-restore", "python3", &["-c", &program]);
    let (peer, _) = listener.accept().unwrap();
    wait_until("python3 to connect", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    w.dump_killing(&["--tcp-established"]);
    assert!(locked(peer.local_addr().unwrap()), "no network lock while the tree is away");
    w.crust_env = vec![("CRUST_FAULT".into(), "restore-tree:1:kill".into())];
    let out = w.restore_detached_raw();
    assert!(!out.success(), "the restore was not killed:\n{out}");
    assert!(wait_gone(w.pid, Duration::from_secs(10)), "the restored process outlived crust");
    wait_until("the guardian to lift the network lock", Duration::from_secs(10), || !locked(peer.local_addr().unwrap()));
}

/// Without --tcp-established, a connection to a peer outside the tree (this test) is refused
/// naming pid, fd and both addresses, before the tree is frozen; the connection keeps working.
/// A listener with a connection not accepted yet is refused by name (with --tcp-established),
/// and the connection can still be accepted afterwards.
#[test]
fn refusals_name_the_connection_and_the_accept_queue_and_leave_both_working() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let program = format!(
        "import socket, time, os\nc = socket.create_connection(('127.0.0.1', {port}))\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(4)\n\
         open('ready', 'w').write('%d %d' % (c.fileno(), l.getsockname()[1]))\n\
         while not os.path.exists('go'): time.sleep(0.05)\nc.sendall(c.recv(4, socket.MSG_WAITALL))\n\
         a, _ = l.accept(); a.sendall(b'took')\ntime.sleep(100)\n"
    );
    let w = Workload::spawn_program("tcp-refusals", "python3", &["-c", &program]);
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    wait_until("python3 to connect and listen", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let ready = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let (fd, listen_port) = ready.split_once(' ').unwrap();
    let (local, remote) = (peer.peer_addr().unwrap().to_string(), peer.local_addr().unwrap().to_string());

    let out = w.dump_with(&[]);
    out.assert_failure();
    let text = out.text();
    for part in [format!("pid {}", w.pid), format!("fd {fd}"), local.clone(), remote.clone(), "--tcp-established".into()] {
        assert!(text.contains(&part), "the refusal does not name {part}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");

    let waiting = std::net::TcpStream::connect(("127.0.0.1", listen_port.parse::<u16>().unwrap())).unwrap();
    wait_until("the connection to wait in the accept queue", Duration::from_secs(5), || {
        let out = std::process::Command::new("ss").args(["-tlnH", &format!("sport = :{listen_port}")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1) == Some("1")
    });
    let out = w.dump_with(&["--tcp-established"]);
    out.assert_failure();
    assert!(out.text().contains("not yet accepted") && out.text().contains(&format!("pid {}", w.pid)), "{out}");
    assert_running_untouched(w.pid, "after the refused dump");

    std::fs::write(w.dir.path.join("go"), "go").unwrap();
    peer.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    peer.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping", "the refused connection no longer works");
    let mut waiting = waiting;
    waiting.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut took = [0u8; 4];
    waiting.read_exact(&mut took).unwrap();
    assert_eq!(&took, b"took", "the waiting connection was not accepted after the refused dump");
}
