//! Deleted files across a checkpoint (kinds/ghost.rs): a regular file open after it was
//! unlinked (shared by several fds, descriptions and processes), a large sparse one, one whose
//! directory was removed too, a mapped one (MAP_SHARED and MAP_PRIVATE), a removed working and
//! root directory, an open directory that was removed, a deleted FIFO; `--ghost-limit` and
//! `--link-remap`; a failed restore leaves no file behind; Python multiprocessing (its
//! semaphores and shared Values are mapped, unlinked files in /dev/shm) end to end.
//!
//! Each program is python3: it sets up its state, writes `ready` (JSON), waits for `go`, then
//! checks from inside (contents, offsets, fstat: st_nlink 0, size, owner, mode, the same inode
//! everywhere) and writes `result` ("PASS ..." or "FAIL ..."). The test checks from /proc
//! before and after (fd links "PATH (deleted)", fdinfo, maps, cwd, root) and that no name the
//! restore created is left in the directory.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Helpers every program starts with: files in the test directory go through a directory fd
/// (the program may change its working and root directories).
const PRELUDE: &str = r#"
import os, sys, time, json, stat, mmap
BASE = os.getcwd()
BASEFD = os.open(BASE, os.O_RDONLY | os.O_DIRECTORY)
def put(name, text):
    fd = os.open(name + '.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=BASEFD)
    os.write(fd, text.encode())
    os.close(fd)
    os.rename(name + '.tmp', name, src_dir_fd=BASEFD, dst_dir_fd=BASEFD)
def ready(**kw):
    put('ready', json.dumps(kw))
def exists(name):
    try:
        os.stat(name, dir_fd=BASEFD)
        return True
    except FileNotFoundError:
        return False
def wait_for(name):
    for _ in range(6000):
        if exists(name):
            return
        time.sleep(0.01)
    put('result', 'FAIL no ' + name + ' within 60 s')
    sys.exit(3)
problems = []
def check(ok, what):
    if not ok:
        problems.append(what)
def finish():
    put('result', ('FAIL ' + '; '.join(problems)) if problems else 'PASS')
    while True:
        time.sleep(1)
"#;

fn start(label: &str, script: &str) -> Workload {
    let program = format!("{PRELUDE}{script}");
    let w = Workload::spawn_program(label, "python3", &["-c", &program]);
    let ready = w.dir.path.join("ready");
    wait_until(&format!("{label}: ready"), Duration::from_secs(20), || file_written(&ready) || !pid_exists(w.pid));
    assert!(file_written(&ready), "{label} never got ready:\n{}", w.log_text());
    w
}

fn ready_json(w: &Workload) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(w.dir.path.join("ready")).unwrap()).unwrap()
}

fn num(v: &serde_json::Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("ready lacks {key}: {v}"))
}

/// Lets the program check itself; returns its verdict line.
fn go_and_result(w: &Workload) -> String {
    fs::write(w.dir.path.join("go"), "go").unwrap();
    let result = w.dir.path.join("result");
    wait_until("the program's verdict", Duration::from_secs(60), || file_written(&result));
    fs::read_to_string(result).unwrap()
}

/// The fdinfo `ino` keys of the fds of `pid` on deleted files: a restored deleted file is a
/// new inode (everything else about the fd must be equal).
fn ghost_inos(pid: i32) -> Vec<String> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().ends_with(" (deleted)")))
        .map(|e| format!("fdinfo:{}:ino", e.file_name().to_string_lossy()))
        .collect()
}

/// Checks /proc of `pid` against `before` but for the inode numbers of deleted files.
fn assert_same_but_ghost_inodes(before: &ProcSnapshot, pid: i32) {
    let inos = ghost_inos(pid);
    let ignore: Vec<&str> = inos.iter().map(String::as_str).collect();
    assert_same_proc(before, &ProcSnapshot::take(pid), &ignore);
}

fn fd_link(pid: i32, fd: i64) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Names a restore made in `dir` and left there (ghosts under a hidden name, link remaps).
fn crust_leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".crust-")).collect())
        .unwrap_or_default()
}

fn finish(mut w: Workload, pids: &[i32]) {
    for pid in pids.iter().rev() {
        let _ = nix_kill(*pid);
    }
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
}

fn nix_kill(pid: i32) -> i32 {
    // SAFETY: a plain kill(2) of a pid this test started (a child of its workload).
    unsafe { libc::kill(pid, libc::SIGKILL) }
}

const REGULAR: &str = r#"
p = os.path.join(BASE, 'data.bin')
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
content = bytes((i * 7 + 3) % 251 for i in range(10000))
os.write(fd, content)
os.fchown(fd, 1234, 5678)
os.fchmod(fd, 0o640)
ro = os.open(p, os.O_RDONLY)
os.lseek(ro, 5, 0)
ap = os.open(p, os.O_WRONLY | os.O_APPEND)
dup = os.dup(fd)
os.unlink(p)
child = os.fork()
if child == 0:
    own = os.open('/proc/self/fd/%d' % ro, os.O_RDWR)
    put('child-ready', json.dumps({'own': own}))
    wait_for('go')
    os.pwrite(own, b'CHILD', 200)
    put('child-done', json.dumps({'ino': os.fstat(own).st_ino, 'nlink': os.fstat(own).st_nlink, 'inherited': os.fstat(fd).st_ino}))
    while True:
        time.sleep(1)
wait_for('child-ready')
ready(fd=fd, ro=ro, ap=ap, dup=dup, child=child, own=json.loads(open(os.path.join(BASE, 'child-ready')).read())['own'])
wait_for('go')
wait_for('child-done')
c = json.loads(open(os.path.join(BASE, 'child-done')).read())
st = os.fstat(fd)
check(st.st_nlink == 0, 'nlink %d' % st.st_nlink)
check(st.st_size == 10000, 'size %d' % st.st_size)
check(stat.S_IMODE(st.st_mode) == 0o640 and stat.S_ISREG(st.st_mode), 'mode %o' % st.st_mode)
check((st.st_uid, st.st_gid) == (1234, 5678), 'owner %d:%d' % (st.st_uid, st.st_gid))
check(all(os.fstat(x).st_ino == st.st_ino for x in (ro, ap, dup)), 'fds on different inodes')
check(c['ino'] == st.st_ino and c['inherited'] == st.st_ino and c['nlink'] == 0, 'the child is on another inode: %r' % c)
check(os.lseek(fd, 0, 1) == 10000 and os.lseek(ro, 0, 1) == 5, 'offsets %d %d' % (os.lseek(fd, 0, 1), os.lseek(ro, 0, 1)))
check(os.read(ro, 10) == content[5:15], 'read through the second description')
expected = content[:200] + b'CHILD' + content[205:]
check(os.pread(fd, 20000, 0) == expected, 'contents (with the child write at 200)')
os.write(ap, b'END')
check(os.fstat(fd).st_size == 10003 and os.pread(dup, 3, 10000) == b'END', 'O_APPEND write')
check(os.readlink('/proc/self/fd/%d' % fd) == p + ' (deleted)', 'link ' + os.readlink('/proc/self/fd/%d' % fd))
check(not os.path.exists(p), 'the name came back')
finish()
"#;

/// A regular file open after it was unlinked, through four fds of two descriptions in the
/// parent (one dup'ed, one O_APPEND) and, in a forked child, the inherited fd plus a third
/// description opened through /proc/self/fd: after the restore every fd of both processes is
/// on one new inode with st_nlink 0, the contents, size, owner, mode, offsets and flags, and
/// a write by the child is read by the parent; /proc shows "PATH (deleted)" for every fd, and
/// the directory holds no name of it.
#[test]
fn an_unlinked_file_shared_by_fds_and_processes_comes_back_as_one_deleted_inode() {
    let mut w = start("ghost-regular", REGULAR);
    let r = ready_json(&w);
    let child = num(&r, "child") as i32;
    let path = format!("{}/data.bin (deleted)", w.dir.path.display());
    for fd in ["fd", "ro", "ap", "dup"] {
        assert_eq!(fd_link(w.pid, num(&r, fd)), path);
    }
    let (before, child_before) = (w.snapshot(), ProcSnapshot::take(child));
    w.dump();
    assert!(!pid_exists(child) || wait_gone(child, GONE_TIMEOUT));
    w.restore_detached();
    assert_same_but_ghost_inodes(&before, w.pid);
    assert_same_but_ghost_inodes(&child_before, child);
    assert_eq!(fd_link(child, num(&r, "own")), path);
    assert!(!w.dir.path.join("data.bin").exists() && crust_leftovers(&w.dir.path).is_empty(), "a name of the file is left");
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}\n{}", w.log_text());
    finish(w, &[child]);
}

const SPARSE: &str = r#"
p = os.path.join(BASE, 'sparse.bin')
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b'head', 0)
os.pwrite(fd, b'middle', 32 << 20)
os.pwrite(fd, b'tail', (64 << 20) - 4)
os.unlink(p)
ready(fd=fd)
wait_for('go')
st = os.fstat(fd)
check(st.st_size == 64 << 20 and st.st_nlink == 0, 'size %d nlink %d' % (st.st_size, st.st_nlink))
check(st.st_blocks * 512 < (1 << 20), 'the holes were filled: %d bytes allocated' % (st.st_blocks * 512))
check(os.pread(fd, 4, 0) == b'head' and os.pread(fd, 6, 32 << 20) == b'middle' and os.pread(fd, 4, (64 << 20) - 4) == b'tail', 'data')
check(os.pread(fd, 4096, 1 << 20) == bytes(4096), 'a hole reads as zeros')
finish()
"#;

/// A 64 MiB sparse file holding 14 bytes, unlinked: with `--ghost-limit 100M` it is saved
/// without its holes (the image stays under 1 MiB) and comes back sparse with its data.
#[test]
fn a_large_sparse_deleted_file_stays_sparse_in_the_image_and_after_restore() {
    let mut w = start("ghost-sparse", SPARSE);
    let before = w.snapshot();
    let out = w.dump_with(&["--ghost-limit", "100M"]);
    assert!(out.success(), "{out}");
    w.reap(GONE_TIMEOUT);
    let ghosts: Vec<_> = image_files(&w.image_dir).into_iter().filter(|f| f.to_string_lossy().starts_with("ghost-")).collect();
    assert_eq!(ghosts.len(), 1, "{:?}", image_files(&w.image_dir));
    let allocated: u64 =
        ghosts.iter().map(|f| std::os::unix::fs::MetadataExt::blocks(&fs::metadata(w.image_dir.join(f)).unwrap()) * 512).sum();
    assert!(allocated < 1 << 20, "the deleted file takes {allocated} bytes on disk in the image for 14 bytes of data");
    assert!(wait_gone(w.pid, GONE_TIMEOUT));
    w.restore_detached();
    assert_same_but_ghost_inodes(&before, w.pid);
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const TOO_BIG: &str = r#"
p = os.path.join(BASE, 'big.bin')
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b'x' * (2 << 20))
os.unlink(p)
ready(fd=fd)
wait_for('go')
check(os.pread(fd, 1, (2 << 20) - 1) == b'x' and os.fstat(fd).st_nlink == 0, 'the file changed')
finish()
"#;

/// A deleted file of 2 MiB is above the default --ghost-limit (1 MiB): the dump refuses it by
/// pid, fd, path and size, and the program runs on untouched.
#[test]
fn a_deleted_file_above_the_ghost_limit_is_refused_and_the_tree_runs_on() {
    let w = start("ghost-too-big", TOO_BIG);
    let fd = num(&ready_json(&w), "fd");
    let out = w.dump_with(&[]);
    assert!(!out.success(), "a 2 MiB deleted file was dumped with the default --ghost-limit:\n{out}");
    let text = out.text();
    for needed in [format!("pid {}", w.pid), format!("fd {fd}"), "big.bin".into(), "2097152 bytes".into(), "--ghost-limit".into()] {
        assert!(text.contains(&needed), "the refusal does not say {needed:?}:\n{out}");
    }
    assert!(matches!(proc_state(w.pid), Some('R' | 'S')) && proc_status_field(w.pid, "TracerPid").as_deref() == Some("0"));
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const REMOVED_DIR: &str = r#"
d = os.path.join(BASE, 'gone', 'deeper')
os.makedirs(d)
p = os.path.join(d, 'f.txt')
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b'in a removed directory')
os.unlink(p)
os.rmdir(d)
os.rmdir(os.path.join(BASE, 'gone'))
ready(fd=fd)
wait_for('go')
st = os.fstat(fd)
check(st.st_nlink == 0 and os.pread(fd, 100, 0) == b'in a removed directory', 'contents or nlink')
check(not os.path.exists(os.path.join(BASE, 'gone')), 'the directory came back')
finish()
"#;

/// A deleted file whose directory (and that directory's parent) was removed too: the
/// directories are made again for the restore and removed afterwards; the fd shows the old
/// path "(deleted)".
#[test]
fn a_deleted_file_whose_directories_were_removed_comes_back() {
    let mut w = start("ghost-removed-dir", REMOVED_DIR);
    let fd = num(&ready_json(&w), "fd");
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_eq!(fd_link(w.pid, fd), format!("{}/gone/deeper/f.txt (deleted)", w.dir.path.display()));
    assert_same_but_ghost_inodes(&before, w.pid);
    assert!(!w.dir.path.join("gone").exists(), "the directories made for the restore are left");
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const MAPPED: &str = r#"
p = os.path.join(BASE, 'mapped.bin')
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b'A' * 8192 + b'B' * 8192)
shared = mmap.mmap(fd, 16384, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
private = mmap.mmap(fd, 16384, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
shared[0:6] = b'shared'
private[8192:8199] = b'private'
os.unlink(p)
import ctypes
addr = lambda m: ctypes.addressof(ctypes.c_char.from_buffer(m))
ready(fd=fd, shared=addr(shared), private=addr(private))
wait_for('go')
check(os.fstat(fd).st_nlink == 0, 'nlink')
check(shared[0:6] == b'shared' and os.pread(fd, 6, 0) == b'shared', 'shared mapping before the write')
shared[100:105] = b'after'
check(os.pread(fd, 5, 100) == b'after', 'a write to the shared mapping does not reach the fd')
os.pwrite(fd, b'fdwrite', 200)
check(shared[200:207] == b'fdwrite', 'a write to the fd does not reach the shared mapping')
check(private[8192:8199] == b'private' and os.pread(fd, 7, 8192) == b'BBBBBBB', 'the private copy')
check(private[0:6] == b'shared', 'private mapping lost the file page it had not copied')
finish()
"#;

/// A deleted file mapped MAP_SHARED and MAP_PRIVATE (each with pages written) and open: after
/// the restore the shared mapping and the fd are the same new inode (writes through either are
/// seen through the other), the private mapping keeps its own copy; /proc maps shows both as
/// "PATH (deleted)" at their addresses with their protections.
#[test]
fn a_deleted_file_mapped_shared_and_private_is_mapped_through_the_same_new_inode() {
    let mut w = start("ghost-mapped", MAPPED);
    let r = ready_json(&w);
    let fd = num(&r, "fd");
    let maps = fs::read_to_string(format!("/proc/{}/maps", w.pid)).unwrap();
    let deleted: Vec<&str> = maps.lines().filter(|l| l.ends_with("mapped.bin (deleted)")).collect();
    assert_eq!(deleted.len(), 2, "{maps}");
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_same_but_ghost_inodes(&before, w.pid);
    let after = fs::read_to_string(format!("/proc/{}/maps", w.pid)).unwrap();
    let inode_of = |l: &str| l.split_whitespace().nth(4).unwrap().to_string();
    let fd_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(format!("/proc/{}/fd/{fd}", w.pid)).unwrap()).to_string();
    for l in after.lines().filter(|l| l.ends_with("mapped.bin (deleted)")) {
        assert_eq!(inode_of(l), fd_inode, "a mapping is not on the fd's inode: {l}");
    }
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const DIRECTORIES: &str = r#"
cwd, root, opened = (os.path.join(BASE, n) for n in ('cwd-dir', 'root-dir', 'open-dir'))
for d in (cwd, root, opened):
    os.mkdir(d, 0o751)
os.chown(opened, 1234, 5678)
dfd = os.open(opened, os.O_RDONLY | os.O_DIRECTORY)
os.chdir(cwd)
os.chroot(root)
for d in ('cwd-dir', 'root-dir', 'open-dir'):
    os.rmdir(d, dir_fd=BASEFD)
ready(dfd=dfd)
wait_for('go')
for what, st in (('cwd', os.stat('.')), ('root', os.stat('/')), ('open', os.fstat(dfd))):
    check(stat.S_ISDIR(st.st_mode) and st.st_nlink == 0, '%s: mode %o nlink %d' % (what, st.st_mode, st.st_nlink))
    check(stat.S_IMODE(st.st_mode) == 0o751, '%s: mode %o' % (what, st.st_mode))
check((os.fstat(dfd).st_uid, os.fstat(dfd).st_gid) == (1234, 5678), 'owner of the open directory')
check(os.listdir(dfd) == [], 'the removed directory lists entries')
try:
    os.open('x', os.O_CREAT | os.O_WRONLY, dir_fd=dfd)
    check(False, 'a file was created in a removed directory')
except FileNotFoundError:
    pass
finish()
"#;

/// A removed working directory, a removed root directory (chroot) and an open O_DIRECTORY fd
/// on a removed directory: all three come back removed (st_nlink 0, their mode and owner;
/// nothing can be created in them); /proc shows cwd, root and the fd as "PATH (deleted)".
#[test]
fn removed_working_root_and_open_directories_come_back_removed() {
    let mut w = start("ghost-directories", DIRECTORIES);
    let fd = num(&ready_json(&w), "dfd");
    let base = w.dir.path.display().to_string();
    let before = w.snapshot();
    assert_eq!(before.entries["cwd"], format!("{base}/cwd-dir (deleted)"));
    assert_eq!(before.entries["root"], format!("{base}/root-dir (deleted)"));
    assert_eq!(fd_link(w.pid, fd), format!("{base}/open-dir (deleted)"));
    w.dump();
    w.restore_detached();
    assert_same_but_ghost_inodes(&before, w.pid);
    for d in ["cwd-dir", "root-dir", "open-dir"] {
        assert!(!w.dir.path.join(d).exists(), "{d} is left after the restore");
    }
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const FIFO: &str = r#"
p = os.path.join(BASE, 'fifo')
os.mkfifo(p)
os.chmod(p, 0o620)
r = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
wr = os.open(p, os.O_WRONLY)
os.write(wr, b'queued bytes')
os.unlink(p)
ready(r=r, w=wr)
wait_for('go')
st = os.fstat(r)
check(stat.S_ISFIFO(st.st_mode) and st.st_nlink == 0 and stat.S_IMODE(st.st_mode) == 0o620, 'mode %o nlink %d' % (st.st_mode, st.st_nlink))
check(os.fstat(wr).st_ino == st.st_ino, 'the two ends are on different inodes')
check(os.read(r, 100) == b'queued bytes', 'the queued bytes')
os.write(wr, b'more')
check(os.read(r, 100) == b'more', 'a new write')
check(not os.path.exists(p), 'the FIFO name came back')
finish()
"#;

/// A FIFO unlinked while open at both ends, with bytes queued: it comes back unlinked (one
/// inode for both ends, st_nlink 0, its mode) with its bytes; /proc shows "PATH (deleted)".
#[test]
fn a_deleted_fifo_comes_back_with_its_bytes() {
    let mut w = start("ghost-fifo", FIFO);
    let r = ready_json(&w);
    let before = w.snapshot();
    assert_eq!(fd_link(w.pid, num(&r, "r")), format!("{}/fifo (deleted)", w.dir.path.display()));
    w.dump();
    w.restore_detached();
    assert_same_but_ghost_inodes(&before, w.pid);
    assert!(!w.dir.path.join("fifo").exists() && crust_leftovers(&w.dir.path).is_empty());
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

/// A restore that fails after the deleted file was made again (here: by fault injection once
/// the process is restored) removes it: neither its name nor a hidden one is left, nor a
/// journal; a second restore then succeeds.
#[test]
fn a_failed_restore_leaves_no_deleted_file_behind() {
    let mut w = start("ghost-failed-restore", REGULAR);
    let child = num(&ready_json(&w), "child") as i32;
    w.dump();
    assert!(wait_gone(child, GONE_TIMEOUT));
    w.crust_env = vec![("CRUST_FAULT".into(), "restore-process:1:fail".into())];
    let out = w.restore_detached_raw();
    assert!(!out.success() && out.text().contains("CRUST_FAULT"), "the restore did not fail where asked:\n{out}");
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "the failed restore left its process");
    // The killed child was handed to this test (a subreaper): reaped here, its pid is free.
    waitpid_timeout(child, GONE_TIMEOUT);
    assert!(!w.dir.path.join("data.bin").exists(), "the failed restore left the deleted file's name");
    assert!(crust_leftovers(&w.dir.path).is_empty(), "the failed restore left {:?}", crust_leftovers(&w.dir.path));
    w.crust_env.clear();
    w.restore_detached();
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[child]);
}

const MULTIPROCESSING: &str = r#"
import multiprocessing as mp
N = 300
def init(c, l, q):
    global C, L, Q
    C, L, Q = c, l, q
def f(x):
    time.sleep(0.01)
    with L:
        C.value += 1
    Q.put((x, x * x))
    return 3 * x
if __name__ == '__main__':
    ctx = mp.get_context('fork')
    counter, lock, q = ctx.Value('i', 0), ctx.Lock(), ctx.Queue()
    pool = ctx.Pool(2, initializer=init, initargs=(counter, lock, q))
    res = pool.map_async(f, range(N), chunksize=1)
    for _ in range(6000):
        if counter.value >= 20:
            break
        time.sleep(0.005)
    ready(workers=[p.pid for p in pool._pool], at=counter.value)
    r = res.get(timeout=120)
    got = sorted(q.get(timeout=60) for _ in range(N))
    check(r == [3 * x for x in range(N)], 'pool results')
    check(got == [(x, x * x) for x in range(N)], 'queue items: %d, first missing %r' % (len(got), sorted(set(range(N)) - {g[0] for g in got})[:3]))
    check(counter.value == N, 'Value counted %d of %d under the Lock' % (counter.value, N))
    with lock:
        counter.value += 1
    check(counter.value == N + 1, 'the Lock after the work')
    pool.close()
    pool.join()
    finish()
"#;

/// The mappings of deleted /dev/shm files a process has (semaphores, shared Values), as
/// "range perms path" lines.
fn deleted_shm_mappings(pid: i32) -> Vec<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("/dev/shm/") && l.ends_with(" (deleted)"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5..].join(" "))
        })
        .collect()
}

/// Python multiprocessing, unchanged: a Pool of 2 workers (fork) mapping over 300 items, each
/// worker adding to a shared Value under a Lock and putting its item on a Queue; the Lock,
/// the Value's own lock and the queue's are POSIX semaphores, and the Value lives in a shared
/// arena: mapped, unlinked files in /dev/shm. Dumped in the middle of the work, restored:
/// every result, every queue item once, the count exact, the Lock working; every process
/// maps its deleted /dev/shm files at the same addresses again.
#[test]
fn python_multiprocessing_pool_queue_value_and_lock_work_across_a_restore() {
    let mut w = start("ghost-multiprocessing", MULTIPROCESSING);
    let r = ready_json(&w);
    let workers: Vec<i32> = r["workers"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap() as i32).collect();
    let tree: Vec<i32> = std::iter::once(w.pid).chain(workers.iter().copied()).collect();
    let before: Vec<Vec<String>> = tree.iter().map(|p| deleted_shm_mappings(*p)).collect();
    assert!(before.iter().all(|m| m.len() >= 3), "fewer shared /dev/shm mappings than expected: {before:?}");
    let result = w.dir.path.join("result");
    let out = w.dump();
    assert!(!file_written(&result), "the work was over before the dump: the test proves nothing\n{out}");
    for p in &workers {
        assert!(wait_gone(*p, GONE_TIMEOUT), "worker {p} survived the dump");
    }
    w.restore_detached();
    let after: Vec<Vec<String>> = tree.iter().map(|p| deleted_shm_mappings(*p)).collect();
    assert_eq!(before, after, "the deleted /dev/shm mappings differ after the restore");
    wait_until("the pool's verdict", Duration::from_secs(120), || file_written(&result));
    let verdict = fs::read_to_string(&result).unwrap();
    assert!(verdict.starts_with("PASS"), "{verdict}\n{}", w.log_text());
    finish(w, &workers);
}

const LINKED_ELSEWHERE: &str = r#"
a, b = os.path.join(BASE, 'a.txt'), os.path.join(BASE, 'b.txt')
fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b'one inode, two names')
os.link(a, b)
os.unlink(a)
ready(fd=fd)
wait_for('go')
st = os.fstat(fd)
check(st.st_ino == os.stat(b).st_ino and st.st_nlink == 1, 'not the inode of b.txt any more: nlink %d' % st.st_nlink)
os.pwrite(fd, b'ONE', 0)
check(open(b, 'rb').read() == b'ONE inode, two names', 'a write through the fd does not reach b.txt')
check(os.lseek(fd, 0, 1) == 20, 'offset')
finish()
"#;

/// A file unlinked by the name it was opened by but still linked as another name (nlink 1)
/// cannot be copied (it would become another file): without `--link-remap` the dump refuses
/// it, naming the option, and the program runs on; a dump with `--link-remap` that fails
/// removes the name it linked; one that succeeds leaves a hidden name for the restore, which
/// opens the very inode again (the fd shows its old name "(deleted)") and removes it.
#[test]
fn a_file_unlinked_but_linked_elsewhere_needs_link_remap_and_comes_back_as_the_same_inode() {
    let mut w = start("ghost-link-remap", LINKED_ELSEWHERE);
    let fd = num(&ready_json(&w), "fd");
    let out = w.dump_with(&[]);
    assert!(!out.success() && out.text().contains("--link-remap") && out.text().contains(&format!("pid {} fd {fd}", w.pid)), "{out}");
    w.crust_env = vec![("CRUST_FAULT".into(), "dump-collected:1:fail".into())];
    let out = w.dump_with(&["--link-remap"]);
    assert!(!out.success() && out.text().contains("CRUST_FAULT"), "{out}");
    assert!(crust_leftovers(&w.dir.path).is_empty(), "the failed dump left {:?}", crust_leftovers(&w.dir.path));
    w.crust_env.clear();
    assert!(matches!(proc_state(w.pid), Some('R' | 'S')), "the refused dumps stopped the program");
    let before = w.snapshot();
    let out = w.dump_with(&["--link-remap"]);
    assert!(out.success(), "{out}");
    w.reap(GONE_TIMEOUT);
    assert!(wait_gone(w.pid, GONE_TIMEOUT));
    let links = crust_leftovers(&w.dir.path);
    assert_eq!(links.len(), 1, "--link-remap left {links:?}");
    let b_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(w.dir.path.join("b.txt")).unwrap());
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(w.dir.path.join(&links[0])).unwrap()), b_inode);
    w.restore_detached();
    // The very inode: fdinfo is equal, ino included.
    assert_same_proc(&before, &w.snapshot(), &[]);
    assert!(crust_leftovers(&w.dir.path).is_empty() && !w.dir.path.join("a.txt").exists(), "{:?}", crust_leftovers(&w.dir.path));
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

/// crust makes deleted files again as root, where and as what the image says: only from an
/// image this host sealed. A restore with --trust-image refuses, creating nothing (not the
/// removed directories either); the sealed image then restores.
#[test]
fn deleted_files_are_not_made_from_an_image_taken_on_trust() {
    let mut w = start("ghost-trust", REMOVED_DIR);
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["restore", "-d", "--trust-image", "-D", &img]);
    assert!(!out.success() && out.text().contains("--trust-image") && out.text().contains("deleted files"), "{out}");
    assert!(!pid_exists(w.pid) || wait_gone(w.pid, GONE_TIMEOUT), "the refused restore left its process");
    assert!(!w.dir.path.join("gone").exists(), "the refused restore made the removed directories");
    w.restore_detached();
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const NAME_TAKEN: &str = r#"
p = os.path.join(BASE, 'app.log')
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, b'old log\n')
os.unlink(p)
with open(p, 'w') as new:
    new.write('new log\n')
ready(fd=fd)
wait_for('go')
os.write(fd, b'still the old one\n')
check(os.fstat(fd).st_nlink == 0 and os.fstat(fd).st_size == 26, 'the old log: nlink %d size %d' % (os.fstat(fd).st_nlink, os.fstat(fd).st_size))
check(open(p).read() == 'new log\n', 'the new log changed')
check(os.fstat(fd).st_ino != os.stat(p).st_ino, 'the fd is on the new log')
finish()
"#;

/// A deleted file whose name was taken since by another file (a rotated log): the restore
/// makes it again under a hidden name next to it, never touching the new file, and unlinks
/// it; the fd shows that name "(deleted)".
#[test]
fn a_deleted_file_whose_name_is_taken_comes_back_under_a_hidden_name() {
    let mut w = start("ghost-name-taken", NAME_TAKEN);
    let fd = num(&ready_json(&w), "fd");
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let link = fd_link(w.pid, fd);
    let hidden = format!("{}/.crust-ghost-", w.dir.path.display());
    assert!(link.starts_with(&hidden) && link.ends_with(" (deleted)"), "the fd shows {link}");
    let mut ignore = ghost_inos(w.pid);
    ignore.push(format!("fd:{fd}"));
    let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
    assert_same_proc(&before, &w.snapshot(), &ignore);
    assert!(crust_leftovers(&w.dir.path).is_empty());
    assert_eq!(fs::read_to_string(w.dir.path.join("app.log")).unwrap(), "new log\n");
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

/// crust killed (SIGKILL) in the middle of a restore, once the deleted file was made again:
/// its restored processes die with it, the file stays listed in the journal, and the next
/// crust run removes it before anything else, then restores.
#[test]
fn a_killed_restore_leaves_its_deleted_files_to_the_next_run_which_removes_them() {
    let mut w = start("ghost-killed-restore", REMOVED_DIR);
    w.dump();
    w.crust_env = vec![("CRUST_FAULT".into(), "restore-process:1:kill".into())];
    let out = w.restore_detached_raw();
    assert_eq!(out.exit(), Exit::Signal(libc::SIGKILL), "{out}");
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "the killed restore's process lives on");
    assert!(w.dir.path.join("gone/deeper/f.txt").exists(), "nothing was left to clean: the test proves nothing");
    w.crust_env.clear();
    w.restore_detached();
    assert!(!w.dir.path.join("gone").exists(), "the next run did not remove what the killed restore made");
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

/// A program whose executable was deleted while it runs (an upgrade replaced it): its text is
/// a mapping of the deleted file, and /proc/PID/exe shows it "(deleted)". Restored from the
/// copy in the image: the exe link and every mapping of it are one new inode shown
/// "PATH (deleted)"; the program (sleeper.c, dumped in its nanosleep) finishes its sleep and
/// passes its own checks.
#[test]
fn a_deleted_executable_comes_back_deleted_and_runs_on() {
    let bins = TempDir::new("ghost-exe-bin");
    let copy = bins.path.join("sleeper-copy");
    fs::copy(build_workload("sleeper"), &copy).unwrap();
    let mut w = Workload::spawn_program("ghost-exe", &copy.to_string_lossy(), &["status"]);
    w.wait_status_line("READY", READY_TIMEOUT);
    fs::remove_file(&copy).unwrap();
    let shown = format!("{} (deleted)", copy.display());
    let text_mappings = |pid: i32| -> Vec<String> {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        maps.lines().filter(|l| l.ends_with(&shown)).map(String::from).collect()
    };
    assert_eq!(fs::read_link(format!("/proc/{}/exe", w.pid)).unwrap().to_string_lossy(), shown);
    let mapped_before = text_mappings(w.pid).len();
    assert!(mapped_before >= 2, "{:?}", text_mappings(w.pid));
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_same_but_ghost_inodes(&before, w.pid);
    let exe_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(format!("/proc/{}/exe", w.pid)).unwrap()).to_string();
    let after = text_mappings(w.pid);
    assert_eq!(after.len(), mapped_before);
    assert!(after.iter().all(|l| l.split_whitespace().nth(4) == Some(exe_inode.as_str())), "{after:?} (exe inode {exe_inode})");
    assert!(!copy.exists() && crust_leftovers(&bins.path).is_empty());
    w.go().assert_pass();
}

const NOBODYS_GHOST: &str = r#"
X = os.path.join(BASE, 'x')
D = os.path.join(X, 'd')
os.makedirs(D)
os.makedirs(os.path.join(BASE, 'etc'))
for p in (X, D):
    os.chown(p, 65534, 65534)
os.chmod(BASE, 0o777)
import ctypes  # before dropping root: this python may live under /root
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as a daemon that dropped root does
p = os.path.join(D, 'preload')
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, b'the process data\n')
os.unlink(p)
ready(fd=fd)
wait_for('go')
st = os.fstat(fd)
check(st.st_nlink == 0 and (st.st_uid, st.st_gid) == (65534, 65534), 'nlink %d owner %d:%d' % (st.st_nlink, st.st_uid, st.st_gid))
check(os.pread(fd, 100, 0) == b'the process data\n', 'contents')
check(os.readlink('/proc/self/fd/%d' % fd) == p + ' (deleted)', 'link ' + os.readlink('/proc/self/fd/%d' % fd))
finish()
"#;

/// A process running as nobody holds a deleted file of its directory x/d. Before the restore
/// (as it could after `dump -R`) that directory is (1) replaced by a symlink to a root-owned
/// directory (standing for /etc): refused (a symlink on the path), nothing made there; (2) a
/// new directory of the same name: refused (another directory than at dump time); (3) the
/// directory itself, made read-only by its owner: the process's ids cannot make the file there,
/// so crust makes it as root under a hidden name of its own, never the name the process knew,
/// and removes it before the process runs. (4) Put back as it was: the
/// restore makes the file again, owned by nobody, and the program passes its own checks.
#[test]
fn a_deleted_file_is_never_made_as_root_through_a_swapped_directory() {
    let mut w = start("ghost-swapped-dir", NOBODYS_GHOST);
    let fd = num(&ready_json(&w), "fd");
    let (x, d, etc) = (w.dir.path.join("x"), w.dir.path.join("x/d"), w.dir.path.join("etc"));
    let moved = x.join("d.orig");
    w.dump();
    let refused = |w: &mut Workload, names: &[&str], what: &str| w.assert_restore_refused(names, what);
    fs::rename(&d, &moved).unwrap();
    std::os::unix::fs::symlink(&etc, &d).unwrap();
    let watch = CreationWatch::new(&etc);
    refused(&mut w, &[&d.to_string_lossy(), "symlink"], "a symlink to a root directory");
    assert_eq!(fs::read_dir(&etc).unwrap().count(), 0, "something was made in the symlink's target");
    assert!(!watch.saw_creation(), "the restore created a file in the symlink's target (and removed it)");

    fs::remove_file(&d).unwrap();
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    refused(&mut w, &[&d.to_string_lossy(), "another directory"], "a new directory of the same name");
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "something was made in the new directory");

    fs::remove_dir(&d).unwrap();
    fs::rename(&moved, &d).unwrap();
    fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    w.restore_detached();
    let link = fd_link(w.pid, fd);
    assert!(
        link.starts_with(&format!("{}/.crust-ghost-", d.display())),
        "read-only directory: the fd is {link:?}, not a hidden name of crust's"
    );
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "something was left in the read-only directory");
    w.signal(libc::SIGKILL);
    w.reap(GONE_TIMEOUT);

    fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    w.restore_detached();
    assert_eq!(fd_link(w.pid, fd), format!("{}/preload (deleted)", d.display()));
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "the restore left a name in the directory");
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

const ROOTS_DIRECTORY: &str = r#"
d = os.path.join(BASE, 'rootdir')
os.mkdir(d, 0o755)
p = os.path.join(d, 'opened-as-root')
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b'written as root')
os.fchown(fd, 65534, 65534)
os.unlink(p)
os.chmod(BASE, 0o777)
import ctypes  # before dropping root: this python may live under /root
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
ready(fd=fd)
wait_for('go')
check(os.pread(fd, 100, 0) == b'written as root', 'contents')
finish()
"#;

/// A daemon that opened a file in a root directory, which was deleted, and then dropped to
/// nobody (as a daemon running as nobody holds its binary after an upgrade deleted it from
/// /usr/sbin): its ids may not create a file there, so crust makes it as root, but only under
/// a hidden name of its own (`.crust-ghost-*`), never the name the process knew, and removes
/// it before the tree resumes. The restored fd holds the contents, the process passes its
/// own checks, and nothing is left in the directory.
#[test]
fn a_deleted_file_in_a_directory_its_process_cannot_write_comes_back_under_a_hidden_name() {
    let mut w = start("ghost-roots-dir", ROOTS_DIRECTORY);
    let fd = num(&ready_json(&w), "fd");
    let rootdir = w.dir.path.join("rootdir");
    w.dump();
    let watch = CreationWatch::new(&rootdir);
    w.restore_detached();
    assert!(watch.saw_creation(), "nothing was made in the root directory");
    let link = fd_link(w.pid, fd);
    assert!(
        link.starts_with(&format!("{}/.crust-ghost-", rootdir.display())) && link.ends_with(" (deleted)"),
        "the restored fd {fd} is {link:?}: not a hidden name of crust's, deleted"
    );
    let left: Vec<String> = fs::read_dir(&rootdir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.is_empty(), "left in the root directory: {left:?}");
    let verdict = go_and_result(&w);
    assert!(verdict.starts_with("PASS"), "{verdict}");
    finish(w, &[]);
}

/// An inotify watch of IN_CREATE on a directory: tells whether anything was created in it,
/// even a file removed again since.
struct CreationWatch(std::os::fd::OwnedFd);

impl CreationWatch {
    fn new(dir: &Path) -> CreationWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: inotify_init1 takes flags only; the descriptor it returns is ours alone.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        // SAFETY: as above.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a live descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr(), libc::IN_CREATE) };
        assert!(wd >= 0, "inotify_add_watch");
        CreationWatch(fd)
    }

    fn saw_creation(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a live local buffer of the length given.
        let n = unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&self.0), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}
