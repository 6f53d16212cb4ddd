//! Netlink sockets: a NETLINK_ROUTE socket bound to groups (one above 32) with flags and a
//! buffer size, and an unbound NETLINK_KOBJECT_UEVENT socket, come back as they were and the
//! route socket answers a request; a socket with a reply not read yet is refused by name and
//! keeps its reply.

mod common;
use common::*;

use std::time::Duration;

/// The python3 program: its sockets, then (after `go`) checks from inside.
const PROGRAM: &str = r#"
import os, socket, struct, sys, time
SOL_NETLINK, ADD_MEMBERSHIP, EXT_ACK, LIST_MEMBERSHIPS = 270, 1, 11, 9
RTM_GETLINK, NLM_F_REQUEST, NLM_F_DUMP = 18, 1, 0x300
def request(s, seq):
    s.send(struct.pack('=IHHII', 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(16))
def state(s):
    return (s.getsockname(), s.getsockopt(SOL_NETLINK, LIST_MEMBERSHIPS, 16).hex(),
            s.getsockopt(SOL_NETLINK, EXT_ACK), s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 300000)
s.bind((0, 0x1 | 0x10))
s.setsockopt(SOL_NETLINK, ADD_MEMBERSHIP, 33)
s.setsockopt(SOL_NETLINK, EXT_ACK, 1)
u = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
if sys.argv[1:] == ['unread']:
    request(s, 7)
    time.sleep(0.2)
before = state(s)
open('ready', 'w').write('%d %d\n' % (s.fileno(), u.fileno()))
while not os.path.exists('go'):
    time.sleep(0.05)
if sys.argv[1:] == ['unread']:
    reply = s.recv(65536)
    open('result', 'w').write('kept reply %s' % (struct.unpack('=IHHII', reply[:16])[3] == 7))
    sys.exit(0)
after = state(s)
request(s, 42)
names = b''
s.settimeout(5)
while True:
    data = s.recv(65536)
    if struct.unpack('=IHHII', data[:16])[1] == 3 or len(names) > 1 << 20:  # NLMSG_DONE
        break
    names += data
open('result', 'w').write('same %s lo %s unbound %s' % (after == before, b'lo\0' in names, u.getsockname()[0] == 0))
while True:
    time.sleep(0.1)
"#;

/// The /proc/net/netlink line of each socket of `pid` (protocol, port id, groups, queues,
/// dump, drops), by fd; the kernel address and inode left out.
fn netlink_view(pid: i32, fds: &[&str]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/netlink").unwrap();
    fds.iter()
        .map(|fd| {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().to_string_lossy().into_owned();
            let inode = link.trim_start_matches("socket:[").trim_end_matches(']').to_string();
            let line = table.lines().find(|l| l.split_whitespace().last() == Some(inode.as_str()));
            let fields: Vec<&str> = line.map(|l| l.split_whitespace().collect()).unwrap_or_default();
            format!(
                "fd {fd}: {}",
                fields.get(1..fields.len().saturating_sub(1)).map(|f| f.join(" ")).unwrap_or("(not listed: unbound)".into())
            )
        })
        .collect()
}

#[test]
fn route_and_uevent_netlink_sockets_come_back_bound_to_their_groups_and_answer() {
    let mut w = Workload::spawn_program("netlink", "python3", &["-c", PROGRAM]);
    wait_until("python3 to open its netlink sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let ready = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let fds: Vec<&str> = ready.split_whitespace().collect();
    let view = netlink_view(w.pid, &fds);
    assert!(view[0].contains(&format!(" {} 00000011 ", w.pid)), "test setup: {view:?}");
    w.dump();
    w.restore_detached();
    assert_eq!(netlink_view(w.pid, &fds), view, "/proc/net/netlink after restore");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to check its sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "same True lo True unbound True");
}

#[test]
fn netlink_socket_with_an_unread_reply_is_refused_and_keeps_it() {
    let w = Workload::spawn_program("netlink-unread", "python3", &["-c", PROGRAM, "unread"]);
    wait_until("python3 to open its netlink sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let ready = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let fd = ready.split_whitespace().next().unwrap().to_string();
    let out = w.dump_with(&[]);
    out.assert_failure();
    let text = out.text();
    for word in [w.pid.to_string(), fd, "queued".into(), "NETLINK_ROUTE".into()] {
        assert!(has_token(&text, &word) || text.contains(&word), "the refusal does not name {word:?}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to read its reply", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "kept reply True");
}
