//! IPv4 and IPv6 sockets that are not connections: listeners (IPv4, IPv6 only, dual stack),
//! bound and unbound TCP sockets, UDP sockets bound and connected, with their options; and a
//! real server nobody here wrote (`python3 -m http.server`), which serves again after restore.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Every IP socket of `pid` as `ss` shows it (state, queues or backlog, addresses, owner,
/// v6only), by fd; the inode and kernel address, which a restore changes, left out.
fn sockets_view(pid: i32) -> Vec<String> {
    let out = std::process::Command::new("ss").args(["-tuanHe"]).output().expect("running ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut view = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let link = std::fs::read_link(entry.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(inode) = link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')) else { continue };
        let needle = format!("ino:{inode}");
        let line = text.lines().find(|l| l.split_whitespace().any(|w| w == needle)).unwrap_or("(not listed by ss)");
        let kept: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with("ino:") && !w.starts_with("sk:")).collect();
        view.push(format!("fd {}: {}", entry.file_name().to_string_lossy(), kept.join(" ")));
    }
    view.sort();
    view
}

/// inet_sockets.c: eight sockets (see the workload) come back with the same names, peers,
/// backlogs, owners and options, checked from inside (getsockname, getpeername, getsockopt,
/// new connections and datagrams) and from `ss`; the IPv6-only listener's port was held by a
/// connection in TIME_WAIT and is bound again all the same.
#[test]
fn listeners_bound_unbound_and_udp_sockets_come_back_with_names_and_options() {
    let mut w = Workload::spawn("inet_sockets", &[]);
    let before = w.snapshot();
    let view = sockets_view(w.pid);
    assert_eq!(view.len(), 8, "test setup: {view:#?}");
    assert!(view.iter().any(|l| l.contains("LISTEN 0 9 [::1]:")), "test setup: {view:#?}");
    w.dump();
    w.restore_detached();
    assert_eq!(sockets_view(w.pid), view, "sockets after restore (ss)");
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The port a process listens on (its only listening TCP socket), from `ss`.
fn listening_port(pid: i32) -> u16 {
    let view = sockets_view(pid);
    let line = view.iter().find(|l| l.contains(" LISTEN ")).unwrap_or_else(|| panic!("no listener: {view:#?}"));
    let local = line.split_whitespace().nth(6).unwrap();
    local.rsplit(':').next().unwrap().parse().unwrap()
}

/// `python3 -m http.server` on 127.0.0.1 (a port of its own choosing), which has served a
/// request (its port is held by a connection in TIME_WAIT): after the dump it is gone, after
/// the restore it serves the same file on the same port, its listener as it was.
#[test]
fn python_http_server_serves_again_after_restore() {
    let mut w = Workload::spawn_program("http-server", "python3", &["-m", "http.server", "0", "--bind", "127.0.0.1"]);
    std::fs::write(w.dir.path.join("hello.txt"), "hello from before the checkpoint\n").unwrap();
    let mut port = 0;
    wait_until("http.server to listen", Duration::from_secs(15), || {
        port = if sockets_view(w.pid).iter().any(|l| l.contains(" LISTEN ")) { listening_port(w.pid) } else { 0 };
        port != 0
    });
    let answer = http_get(port, "/hello.txt").expect("GET before the dump");
    assert!(answer.contains("hello from before the checkpoint"), "test setup: {answer}");
    let view = sockets_view(w.pid);
    w.dump();
    assert!(http_get(port, "/hello.txt").is_err(), "the server still answers after the dump killed it");
    w.restore_detached();
    assert_eq!(sockets_view(w.pid), view, "the listener after restore (ss)");
    let answer = http_get(port, "/hello.txt").expect("GET after the restore");
    assert!(answer.starts_with("HTTP/1.0 200") && answer.contains("hello from before the checkpoint"), "after restore: {answer}");
}

/// dump -R reads the sockets without touching them: `ss` shows them as before and the
/// program finds every name, option and listener as it left it.
#[test]
fn dump_leave_running_leaves_ip_sockets_untouched() {
    let mut w = Workload::spawn("inet_sockets", &[]);
    let view = sockets_view(w.pid);
    let out = w.dump_with(&["-R"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    assert_eq!(sockets_view(w.pid), view, "sockets after dump -R (ss)");
    let result = w.go();
    result.assert_pass();
}

/// The python3 program of the datagram test: UDP sockets holding datagrams not read yet (from
/// a named sender, from an autobound one with an empty and a 60000-byte datagram, an IPv6 one
/// to itself, an IPv4 one to a dual-stack socket, one to a socket connected to itself).
const DATAGRAMS: &str = r#"
import os, socket, sys, time
A = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); A.bind(('127.0.0.1', 0))
B = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); B.bind(('127.0.0.1', 0))
C = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
S6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); S6.bind(('::1', 0))
DS = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); DS.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); DS.bind(('::', 0))
SELF = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); SELF.bind(('127.0.0.1', 0)); SELF.connect(SELF.getsockname())
sent = []
def send(frm, to, data):
    frm.sendto(data, to.getsockname()[:2] if to is not DS else ('127.0.0.1', DS.getsockname()[1])); sent.append(data)
zero = sys.argv[1:] != ['nozero']
send(B, A, b'from B')
if zero: send(C, A, b'')
send(C, A, b'x' * 60000); send(B, A, b'again B')
send(S6, S6, b'six to self')
send(A, DS, b'v4 to dual stack')
SELF.send(b'self')
expect = {'A': [(b'from B', B.getsockname())] + [(b'', ('127.0.0.1', C.getsockname()[1]))] * zero + [(b'x' * 60000, ('127.0.0.1', C.getsockname()[1])), (b'again B', B.getsockname())],
          'S6': [(b'six to self', S6.getsockname())], 'DS': [(b'v4 to dual stack', ('::ffff:127.0.0.1', A.getsockname()[1]))],
          'SELF': [(b'self', SELF.getsockname())]}
time.sleep(0.2)
open('ready', 'w').write(str(os.getpid()))
while not os.path.exists('go'): time.sleep(0.05)
res = []
for name, sock in [('A', A), ('S6', S6), ('DS', DS), ('SELF', SELF)]:
    sock.setblocking(False)
    got = []
    try:
        while True:
            d, f = sock.recvfrom(70000); got.append((d, f[:2]))
    except BlockingIOError: pass
    want = [(d, tuple(f[:2])) for d, f in expect[name]]
    res.append('%s %s' % (name, got == want))
open('result', 'w').write(' '.join(res))
while True:
    time.sleep(0.1)
"#;

/// `ss`'s view of a process's sockets, a UDP socket's Recv-Q reduced to "empty" or "queued": it
/// is the memory its datagrams take in the kernel, which depends on how they were received;
/// their number, sizes and senders are checked from inside.
fn datagram_view(pid: i32) -> Vec<String> {
    sockets_view(pid)
        .iter()
        .map(|l| {
            let mut f: Vec<String> = l.split_whitespace().map(String::from).collect();
            f[4] = if f[4] == "0" { "empty".into() } else { "queued".into() };
            f.join(" ")
        })
        .collect()
}

/// Runs the datagram program with `args`; `before_dump` runs once its datagrams are queued.
fn datagrams_come_back(args: &[&str], before_dump: impl FnOnce(&mut Workload, &[String])) {
    let mut argv = vec!["-c", DATAGRAMS];
    argv.extend_from_slice(args);
    let mut w = Workload::spawn_program("udp-queued", "python3", &argv);
    wait_until("python3 to queue its datagrams", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let before = datagram_view(w.pid);
    before_dump(&mut w, &before);
    w.dump();
    w.restore_detached();
    assert_eq!(datagram_view(w.pid), before, "sockets after restore (ss)");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to read its datagrams", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "A True S6 True DS True SELF True");
}

/// UDP sockets with datagrams queued come back with every datagram, in order, with its size
/// (an empty one and one of 60000 bytes among them) and its sender (an IPv4 sender of a
/// dual-stack socket as ::ffff:127.0.0.1), read from inside after restore.
#[test]
fn udp_datagrams_not_read_yet_come_back_in_order_with_their_senders() {
    datagrams_come_back(&[], |_, _| {});
}

/// A dump -R before the dump takes none of the datagrams (an empty datagram, once peeked at,
/// is not seen by a later walk of the queue: see README, so none here).
#[test]
fn dump_leave_running_leaves_udp_datagrams_in_place() {
    datagrams_come_back(&["nozero"], |w, before| {
        let out = w.dump_with(&["-R"]);
        assert!(out.success(), "dump -R failed:\n{out}");
        assert_eq!(datagram_view(w.pid), before, "sockets after dump -R (ss)");
    });
}

/// The python3 program of the multicast test: a UDP socket that joined 239.1.2.3 on lo and
/// 239.5.5.5 from source 127.0.0.1 only, an IPv6 one that joined ff01::4242 on lo; it checks
/// which groups' datagrams it receives (239.7.7.7, not joined, must not arrive).
const MULTICAST: &str = r#"
import os, socket, struct, sys, time
def v4(a): return socket.inet_aton(a)
R = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); R.bind(('0.0.0.0', 0)); port = R.getsockname()[1]
R.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack('4s4si', v4('239.1.2.3'), v4('0.0.0.0'), 1))
R.setsockopt(socket.IPPROTO_IP, 39, struct.pack('4s4s4s', v4('239.5.5.5'), v4('127.0.0.1'), v4('127.0.0.1')))  # IP_ADD_SOURCE_MEMBERSHIP: group, interface, source
R6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); R6.bind(('::', 0)); port6 = R6.getsockname()[1]
R6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, 'ff01::4242') + struct.pack('I', 1))
S = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); S.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, v4('127.0.0.1')); S.bind(('127.0.0.1', 0))
def check():
    R.settimeout(2); R6.settimeout(2)
    out = []
    for g in ['239.1.2.3', '239.5.5.5', '239.7.7.7']:
        S.sendto(g.encode(), (g, port))
    got = set()
    try:
        while True: got.add(R.recv(100).decode())
    except socket.timeout: pass
    return ' '.join(sorted(got))
before = check()
open('ready', 'w').write(before)
while not os.path.exists('go'): time.sleep(0.05)
open('result', 'w').write(check())
while True: time.sleep(0.1)
"#;

/// The lines of /proc/net/igmp and igmp6 for the test's groups (with their users count).
fn multicast_groups() -> Vec<String> {
    let igmp = std::fs::read_to_string("/proc/net/igmp").unwrap();
    let igmp6 = std::fs::read_to_string("/proc/net/igmp6").unwrap();
    let mut lines: Vec<String> = igmp
        .lines()
        .chain(igmp6.lines())
        .filter(|l| ["030201EF", "050505EF", "ff010000000000000000000000004242"].iter().any(|g| l.contains(g)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

/// Multicast memberships (IPv4 any-source and source-specific, IPv6) come back with their
/// filters: /proc/net/igmp and igmp6 list the same groups, and from inside the socket receives
/// the datagrams of its groups only.
#[test]
fn multicast_memberships_come_back_with_their_source_filters() {
    let mut w = Workload::spawn_program("multicast", "python3", &["-c", MULTICAST]);
    wait_until("python3 to join its groups", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let received = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    assert_eq!(received, "239.1.2.3 239.5.5.5", "test setup");
    let groups = multicast_groups();
    assert_eq!(groups.len(), 3, "test setup: {groups:?}");
    w.dump();
    assert!(multicast_groups().is_empty(), "groups left after the dump: {:?}", multicast_groups());
    w.restore_detached();
    assert_eq!(multicast_groups(), groups, "/proc/net/igmp and igmp6 after restore");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to receive again", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), received);
}

/// A node http server (nobody here wrote it: node's own http module, libuv's epoll, eventfds,
/// pipes and worker threads), on a port of its own choosing: it serves before the dump, is
/// gone after it, and serves again on the same port after the restore.
#[test]
fn node_http_server_serves_again_after_restore() {
    const SERVER: &str = "require('http').createServer((q, r) => r.end('hello from node')).listen(0, '127.0.0.1', function () { require('fs').writeFileSync('port', String(this.address().port)) })";
    let mut w = Workload::spawn_program("node-http", "node", &["-e", SERVER]);
    wait_until("node to listen", Duration::from_secs(30), || file_written(&w.dir.path.join("port")));
    let port: u16 = std::fs::read_to_string(w.dir.path.join("port")).unwrap().trim().parse().unwrap();
    let answer = http_get(port, "/").expect("GET before the dump");
    assert!(answer.ends_with("hello from node"), "test setup: {answer}");
    let view = sockets_view(w.pid);
    w.dump();
    assert!(http_get(port, "/").is_err(), "node still answers after the dump killed it");
    w.restore_detached();
    assert_eq!(sockets_view(w.pid), view, "the listener after restore (ss)");
    let answer = http_get(port, "/").expect("GET after the restore");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from node"), "after restore: {answer}");
}

/// Raw sockets: an ICMP one bound to 127.0.0.1 with an ICMP_FILTER, one of protocol 253
/// connected to 127.0.0.2 with IP_HDRINCL, an IPv6 ICMPv6 one with an ICMPV6_FILTER, an IPv6
/// one of protocol 253 with IPV6_CHECKSUM: after restore the same names, peers and options
/// from inside, the same /proc/net/raw{,6} lines, and the protocol-253 socket bound to
/// 127.0.0.1 receives a packet of its protocol.
#[test]
fn raw_sockets_come_back_with_their_protocol_address_peer_and_filters() {
    const PROGRAM: &str = r#"
import os, socket, time
ICMP_FILTER, ICMPV6_FILTER, IPV6_CHECKSUM = 1, 1, 7
r1 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); r1.bind(('127.0.0.1', 0))
r1.setsockopt(255, ICMP_FILTER, ((~(1 << 8)) & 0xffffffff).to_bytes(4, 'little'))
r2 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); r2.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1); r2.connect(('127.0.0.2', 0))
r3 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); r3.bind(('127.0.0.1', 0))
r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); r6.setsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, b'\xff' * 16 + b'\0' * 16)
r7 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 253); r7.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 2)
def state():
    return (r1.getsockname(), r1.getsockopt(255, ICMP_FILTER, 4), r2.getsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL), r3.getsockname(),
            r6.getsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, 32), r7.getsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM))
before = state()
open('ready', 'w').write(' '.join(str(s.fileno()) for s in (r1, r2, r3, r6, r7)))
while not os.path.exists('go'): time.sleep(0.05)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); s.sendto(b'raw payload', ('127.0.0.1', 0))
r3.settimeout(5); got = r3.recv(100)
open('result', 'w').write('same %s got %s' % (state() == before, got[20:] == b'raw payload'))
while True: time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("raw-sockets", "python3", &["-c", PROGRAM]);
    wait_until("python3 to open its raw sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let fds: Vec<String> = std::fs::read_to_string(w.dir.path.join("ready")).unwrap().split_whitespace().map(String::from).collect();
    // The /proc/net/raw{,6} line of each socket: addresses, state, queues, uid (not the inode
    // and the kernel's address, which a restore changes).
    let view = |pid: i32| -> Vec<String> {
        let tables = std::fs::read_to_string("/proc/net/raw").unwrap() + &std::fs::read_to_string("/proc/net/raw6").unwrap();
        fds.iter()
            .map(|fd| {
                let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().to_string_lossy().into_owned();
                let inode = link.trim_start_matches("socket:[").trim_end_matches(']').to_string();
                let line = tables.lines().find(|l| l.split_whitespace().nth(9) == Some(inode.as_str())).unwrap_or("");
                let f: Vec<&str> = line.split_whitespace().collect();
                format!("fd {fd}: {}", f.get(1..8).map(|f| f.join(" ")).unwrap_or_default())
            })
            .collect()
    };
    let before = view(w.pid);
    w.dump();
    w.restore_detached();
    assert_eq!(view(w.pid), before, "/proc/net/raw{{,6}} after restore");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to check its sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "same True got True");
}

/// A raw socket holding a packet not read yet is refused by pid, fd and what it holds (the
/// packet was a copy every matching raw socket got: it cannot be given back to it alone); the
/// process keeps running and still reads its packet.
#[test]
fn raw_socket_holding_a_packet_is_refused_and_keeps_it() {
    const PROGRAM: &str = r#"
import os, socket, time
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); r.bind(('127.0.0.1', 0))
socket.socket(socket.AF_INET, socket.SOCK_RAW, 253).sendto(b'held', ('127.0.0.1', 0))
time.sleep(0.2)
open('ready', 'w').write(str(r.fileno()))
while not os.path.exists('go'): time.sleep(0.05)
open('result', 'w').write(str(r.recv(100)[20:] == b'held'))
"#;
    let w = Workload::spawn_program("raw-held", "python3", &["-c", PROGRAM]);
    wait_until("python3 to receive its packet", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let fd = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let out = w.dump_with(&[]);
    out.assert_failure();
    for word in [w.pid.to_string(), fd, "packets not read yet".into()] {
        assert!(has_token(&out.text(), &word) || out.text().contains(&word), "the refusal does not name {word:?}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to read its packet", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "True");
}

/// Protocols crust does not checkpoint are refused before the freeze, naming pid, fd and the
/// protocol: a UDP-Lite socket and an ICMP datagram ("ping") socket; the program goes on.
#[test]
fn udp_lite_and_ping_sockets_are_refused_by_name_and_keep_working() {
    const PY: &str = r#"
import socket, sys, time, os
kind = sys.argv[1]
if kind == 'udplite':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136); s.bind(('127.0.0.1', 0))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
open('ready', 'w').write(str(s.fileno()))
while not os.path.exists('go'): time.sleep(0.05)
open('result', 'w').write('alive %s' % s.getsockname()[0])
time.sleep(100)
"#;
    // Unprivileged ping sockets need the group range to include root's group.
    let ping_range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    for (kind, name) in [("udplite", "UDP-Lite"), ("ping", "ICMP")] {
        if kind == "ping" && ping_range.split_whitespace().next().and_then(|v| v.parse::<i64>().ok()).is_none_or(|lo| lo > 0) {
            eprintln!("ping sockets are not allowed for gid 0 here ({ping_range:?}): UDP-Lite only");
            continue;
        }
        let w = Workload::spawn_program(&format!("refuse-{kind}"), "python3", &["-c", PY, kind]);
        wait_until("python3 to open its socket", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
        let fd = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
        let out = w.dump_with(&[]);
        out.assert_failure();
        for part in [format!("pid {}", w.pid), format!("fd {fd}"), name.to_string()] {
            assert!(out.text().contains(&part), "{kind}: the refusal does not name {part}:\n{out}");
        }
        assert_running_untouched(w.pid, "after the refused dump");
        std::fs::write(w.dir.path.join("go"), "").unwrap();
        wait_until("python3 to go on", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
        assert!(std::fs::read_to_string(w.dir.path.join("result")).unwrap().starts_with("alive"));
    }
}

/// A listener without SO_REUSEADDR whose program closed an accepted connection before the
/// dump (its client still open): that connection lingers in the kernel (FIN_WAIT2, owned by
/// no process) and holds the port, and the kernel lets no socket bind it again for up to a
/// minute (a listener cannot be bound in repair mode either). The restore fails, naming the
/// connection, its state, the time left and SO_REUSEADDR, and leaves no process.
#[test]
fn a_listener_whose_port_is_held_by_a_closed_connection_is_refused_with_the_time_left() {
    const PROGRAM: &str = r#"
import os, socket, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept(); s.close()
open('ready', 'w').write(str(l.getsockname()[1]))
while True: time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("lingering-port", "python3", &["-c", PROGRAM]);
    wait_until("python3 to close its accepted connection", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let port = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    w.dump_killing(&["--tcp-established"]);
    w.restore_extra = vec!["--tcp-established".into()];
    w.assert_restore_refused(
        &[&format!("port {port} is still held"), "FIN_WAIT2", "s left", "SO_REUSEADDR", "EADDRINUSE"],
        "a lingering port",
    );
}
