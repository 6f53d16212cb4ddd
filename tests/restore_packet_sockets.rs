//! Packet sockets (AF_PACKET): bound to a protocol on an interface, with their flags, fanout
//! group and memberships, come back as they were and receive frames again.

mod common;
use common::*;

use std::time::Duration;

/// The python3 program: a raw packet socket bound to lo for ethertype 0x88B5 with
/// PACKET_AUXDATA and an ALLMULTI membership of lo, a datagram one for 0x88B6 in fanout group
/// 77; after `go` it checks its sockets and receives a frame sent on lo.
const PROGRAM: &str = r#"
import os, socket, struct, time
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_AUXDATA, PACKET_FANOUT = 263, 1, 8, 18
lo = socket.if_nametoindex('lo')
s1 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5)); s1.bind(('lo', 0x88B5))
s1.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
s1.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack('iHH8s', lo, 2, 0, b''))  # PACKET_MR_ALLMULTI
s2 = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x88B6)); s2.bind(('lo', 0x88B6))
s2.setsockopt(SOL_PACKET, PACKET_FANOUT, 77)
def state():
    return (s1.getsockname(), s1.getsockopt(SOL_PACKET, PACKET_AUXDATA), s2.getsockname(), s2.getsockopt(SOL_PACKET, PACKET_FANOUT))
before = state()
open('ready', 'w').write('%d %d' % (s1.fileno(), s2.fileno()))
while not os.path.exists('go'): time.sleep(0.05)
t = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); t.bind(('lo', 0))
t.send(b'\0' * 12 + struct.pack('!H', 0x88B5) + b'frame for s1')
s1.settimeout(5); got = s1.recv(100)
open('result', 'w').write('same %s got %s' % (state() == before, got.endswith(b'frame for s1')))
while True: time.sleep(0.1)
"#;

/// /proc/net/packet's lines of the sockets of `pid` (type, protocol, interface, running, user).
fn packet_view(pid: i32, fds: &[&str]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/packet").unwrap();
    fds.iter()
        .map(|fd| {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().to_string_lossy().into_owned();
            let inode = link.trim_start_matches("socket:[").trim_end_matches(']').to_string();
            let line = table.lines().find(|l| l.split_whitespace().last() == Some(inode.as_str())).unwrap_or("");
            let f: Vec<&str> = line.split_whitespace().collect();
            format!("fd {fd}: {}", f.get(2..8).map(|f| f.join(" ")).unwrap_or_default())
        })
        .collect()
}

/// How many times lo was put in all-multicast mode (PACKET_MR_ALLMULTI memberships count).
fn lo_allmulti() -> u32 {
    let out = std::process::Command::new("ip").args(["-d", "link", "show", "lo"]).output().expect("running ip (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "allmulti").unwrap_or_else(|| panic!("no allmulti count in {text}"));
    words[at + 1].parse().unwrap()
}

#[test]
fn packet_sockets_come_back_bound_with_their_flags_fanout_and_memberships() {
    let mut w = Workload::spawn_program("packet-sockets", "python3", &["-c", PROGRAM]);
    wait_until("python3 to open its packet sockets", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let ready = std::fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let fds: Vec<&str> = ready.split_whitespace().collect();
    let before = packet_view(w.pid, &fds);
    assert!(before[0].contains(" 88b5 "), "test setup: {before:?}");
    let allmulti = lo_allmulti();
    assert!(allmulti >= 1, "test setup: lo is not in all-multicast mode");
    w.dump();
    assert_eq!(lo_allmulti(), allmulti - 1, "lo's all-multicast count after the dump");
    w.restore_detached();
    assert_eq!(packet_view(w.pid, &fds), before, "/proc/net/packet after restore");
    assert_eq!(lo_allmulti(), allmulti, "the ALLMULTI membership did not come back");
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to receive a frame", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "same True got True");
}
