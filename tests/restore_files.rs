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

/// A process jailed by chroot in DIR/jail, its working directory DIR/jail/work. After the
/// dump the jail's path is (1) a symlink to / (the real root): the restore refuses it (no
/// symlink on the way), so the process never gets the real root; (2) a new directory of the
/// same name (with its own work/): refused, another directory than the one the process had;
/// (3) put back: restored, and from inside the process its root is the jail (its marker file
/// is at /), its working directory /work; /proc shows the same root and cwd as before.
#[test]
fn working_and_root_directories_swapped_after_the_dump_are_refused() {
    const PY: &str = r#"
import os, time, json
BASE = os.getcwd()
BASEFD = os.open(BASE, os.O_RDONLY | os.O_DIRECTORY)
def put(name, text):
    fd = os.open(name + '.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=BASEFD)
    os.write(fd, text.encode())
    os.close(fd)
    os.rename(name + '.tmp', name, src_dir_fd=BASEFD, dst_dir_fd=BASEFD)
jail = os.path.join(BASE, 'jail')
os.makedirs(os.path.join(jail, 'work'))
with open(os.path.join(jail, 'marker'), 'w') as f:
    f.write('inside the jail')
os.chroot(jail)
os.chdir('/work')
put('ready', 'ready')
for _ in range(6000):
    try:
        os.stat('go', dir_fd=BASEFD)
        break
    except FileNotFoundError:
        time.sleep(0.01)
problems = []
if os.getcwd() != '/work':
    problems.append('cwd ' + os.getcwd())
try:
    if open('/marker').read() != 'inside the jail':
        problems.append('marker changed')
except OSError as e:
    problems.append('no marker at /: %s' % e)
if os.path.exists('/work/../jail'):
    problems.append('the real root is visible')
put('result', ('FAIL ' + '; '.join(problems)) if problems else 'PASS')
while True:
    time.sleep(1)
"#;
    let mut w = Workload::spawn_program("py-jail", "python3", &["-c", PY]);
    wait_until("python3 to enter its jail", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")) || !pid_exists(w.pid));
    assert!(file_written(&w.dir.path.join("ready")), "never ready:\n{}", w.log_text());
    let jail = w.dir.path.join("jail");
    let moved = w.dir.path.join("jail.orig");
    let before = w.snapshot();
    assert_eq!(before.entries["root"], jail.display().to_string());
    w.dump();
    let refused = |w: &mut Workload, names: &[&str], what: &str| w.assert_restore_refused(names, what);
    fs::rename(&jail, &moved).unwrap();
    std::os::unix::fs::symlink("/", &jail).unwrap();
    refused(&mut w, &[&jail.to_string_lossy(), "symlink"], "the jail replaced by a symlink to /");

    fs::remove_file(&jail).unwrap();
    fs::create_dir_all(jail.join("work")).unwrap();
    refused(&mut w, &[&jail.to_string_lossy(), "another directory"], "a new jail of the same name");

    fs::remove_dir_all(&jail).unwrap();
    fs::rename(&moved, &jail).unwrap();
    w.restore_detached();
    let after = w.snapshot();
    assert_eq!(after.entries["root"], before.entries["root"]);
    assert_eq!(after.entries["cwd"], before.entries["cwd"]);
    fs::write(w.dir.path.join("go"), "go").unwrap();
    let result = w.dir.path.join("result");
    wait_until("the program's verdict", Duration::from_secs(30), || file_written(&result));
    let verdict = fs::read_to_string(result).unwrap();
    assert!(verdict.starts_with("PASS"), "{verdict}");
}
