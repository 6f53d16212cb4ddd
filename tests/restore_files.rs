//! Open files, cwd and umask survive checkpoint/restore.

mod common;
use common::*;
use std::fs;
use std::time::Duration;

/// files.c: the fd table (numbers, targets), access modes and status flags
/// (O_APPEND, O_DSYNC, O_NOATIME), close-on-exec flags, offsets, offset sharing between
/// dup'ed fds (and not with an independent open), fd 100, /dev/null, /dev/zero,
/// /dev/urandom, a directory fd, the cwd and umask 027 are all as before.
#[test]
fn fd_table_offsets_flags_cwd_and_umask_survive_restore() {
    let mut w = Workload::spawn("files", &[]);
    let before = w.snapshot();
    assert!(before.entries.contains_key("fd:100"), "workload has no fd 100");
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    // fdinfo pos/flags of every fd, fd targets, cwd, Umask are compared
    w.verify_restored(&before, &after, &[], vec![]);
}

/// A pipe filled to the last byte, with two read descriptions of it (the second reopened
/// through /proc/self/fd, non-blocking) and a blocking write end: the bytes go back once (a
/// second copy would block the restore forever on the full pipe), each description keeps its
/// own status flags (O_NONBLOCK only where it was), and the program reads exactly its bytes.
#[test]
fn full_pipe_with_two_read_descriptions_comes_back_once_with_each_ends_flags() {
    const PY: &str = r#"
import os, fcntl, time
r, w = os.pipe()
r2 = os.open('/proc/self/fd/%d' % r, os.O_RDONLY | os.O_NONBLOCK)
fl = fcntl.fcntl(w, fcntl.F_GETFL)
fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK)
n = 0
try:
    while True:
        n += os.write(w, bytes([n // 4096 % 251]) * 4096)
except BlockingIOError:
    pass
fcntl.fcntl(w, fcntl.F_SETFL, fl)
open('ready', 'w').write('%d %d %d %d\n' % (r, r2, w, n))
while not os.path.exists('go'):
    time.sleep(0.05)
flags = [fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK != 0 for fd in (r, r2, w)]
got = b''
while True:
    try:
        chunk = os.read(r2, 65536)
    except BlockingIOError:
        break
    if not chunk:
        break
    got += chunk
want = b''.join(bytes([i % 251]) * 4096 for i in range(n // 4096))
open('result', 'w').write('flags %s read %d ok %s\n' % (flags, len(got), got == want))
"#;
    let mut w = Workload::spawn_program("py-fullpipe", "python3", &["-c", PY]);
    wait_until("python3 to fill its pipe", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let ready = fs::read_to_string(w.dir.path.join("ready")).unwrap();
    let n: usize = ready.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(n >= 65536, "test setup: the pipe holds only {n} bytes");
    w.dump();
    let started = std::time::Instant::now();
    w.restore_detached();
    assert!(started.elapsed() < Duration::from_secs(10), "the restore took {:?}", started.elapsed());
    fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to read its pipe", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    let result = fs::read_to_string(w.dir.path.join("result")).unwrap();
    assert_eq!(result.trim(), format!("flags [False, True, False] read {n} ok True"), "after restore");
}

/// O_PATH descriptions of a file, a directory and a symlink itself (O_PATH | O_NOFOLLOW) come
/// back as they were: same targets (the link, not what it points to), same flags, and usable
/// as O_PATH fds (fstat through them, openat relative to the directory one).
#[test]
fn o_path_descriptions_of_a_file_a_directory_and_a_symlink_survive_restore() {
    const PY: &str = r#"
import os, stat, time
os.mkdir('d'); open('d/f', 'w').write('hi'); os.symlink('f', 'd/l')
a = os.open('d/f', os.O_PATH)
b = os.open('d', os.O_PATH | os.O_DIRECTORY)
c = os.open('d/l', os.O_PATH | os.O_NOFOLLOW)
open('ready', 'w').write('%d %d %d\n' % (a, b, c))
while not os.path.exists('go'):
    time.sleep(0.05)
ok = [stat.S_ISREG(os.fstat(a).st_mode), stat.S_ISDIR(os.fstat(b).st_mode), stat.S_ISLNK(os.fstat(c).st_mode)]
ok.append(open(os.open('f', os.O_RDONLY, dir_fd=b)).read() == 'hi')
ok.append(os.readlink('', dir_fd=c) == 'f')
open('result', 'w').write('%s' % ok)
while True:
    time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("py-opath", "python3", &["-c", PY]);
    wait_until("python3 to open its O_PATH fds", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let fds: Vec<String> = fs::read_to_string(w.dir.path.join("ready")).unwrap().split_whitespace().map(String::from).collect();
    let view = |pid: i32| {
        fds.iter()
            .map(|fd| {
                let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
                let flags = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap().lines().nth(1).unwrap_or("").to_string();
                format!("{fd} -> {} {flags}", target.display())
            })
            .collect::<Vec<_>>()
    };
    let before = view(w.pid);
    w.dump();
    w.restore_detached();
    assert_eq!(view(w.pid), before, "O_PATH fds after restore");
    fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to use its fds", Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(fs::read_to_string(w.dir.path.join("result")).unwrap(), "[True, True, True, True, True]");
}
