//! Images edited by someone who knows the format, restored with `--trust-image` (so the seal,
//! which refuses every one of them otherwise, is not what stops them): what crust still
//! checks. The records are decoded, changed and framed again with crust's own image code, so
//! each is well formed and its checksum right; the only thing that can refuse them is what a
//! restore checks about the content. Each is refused naming the file (and the record file and
//! field where the structure is wrong), and creates nothing: no process, no change to the
//! files named.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crust::image::proto::{self, FileIdentity};
use crust::image::{self as image, ImageDir};

/// The identity crust records for the file at `path` (as `stat` gives it).
fn identity_of(path: &Path) -> FileIdentity {
    let m = fs::metadata(path).unwrap();
    FileIdentity {
        path: path.to_string_lossy().into_owned(),
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        dev: m.dev(),
        inode: m.ino(),
        mode: m.mode(),
        ..Default::default()
    }
}

fn restore_trusted(image_dir: &Path) -> CrustOutput {
    crust(["restore", "-d", "-D", &image_dir.to_string_lossy(), "--trust-image"])
}

fn restore_sealed(image_dir: &Path) -> CrustOutput {
    crust(["restore", "-d", "-D", &image_dir.to_string_lossy()])
}

/// What a file looks like, to tell that nothing wrote to it.
fn fingerprint(path: &Path) -> (u64, i64, i64, Vec<u8>) {
    let m = fs::metadata(path).unwrap();
    (m.size(), m.mtime(), m.mtime_nsec(), fs::read(path).unwrap())
}

/// Checks a refused restore: failed, its text names every one of `names`, and no process of
/// the image exists (none was created, or every one was removed again).
fn assert_refused(out: &CrustOutput, names: &[&str], pid: i32, what: &str) {
    assert!(!out.success(), "{what}: the edited image was restored:\n{out}");
    for name in names {
        assert!(out.text().contains(name), "{what}: the refusal does not name {name:?}:\n{out}");
    }
    assert!(wait_gone(pid, Duration::from_secs(5)), "{what}: the refused restore left pid {pid}");
}

/// A process running as nobody (65534) holds a file of its own open for reading and writing;
/// its image is edited so that the description names /etc/shadow instead (path, device,
/// inode, size and mtime all those of /etc/shadow, as anyone can stat it). Sealed, the seal
/// refuses it; on trust, crust opens the files of descriptors with the image's credentials,
/// so the kernel refuses nobody write access to /etc/shadow. /etc/shadow is never touched.
#[test]
fn trusted_image_edited_to_open_etc_shadow_for_writing_is_refused() {
    let shadow = Path::new("/etc/shadow");
    assert!(shadow.is_file(), "test setup: this machine has no /etc/shadow");
    let mut w = Workload::spawn("nobody", &[]);
    w.dump();
    let dir = ImageDir::open(&w.image_dir).unwrap();
    let mut open_files: proto::OpenFiles = dir.read_record(image::OPEN_FILES).unwrap();
    let mut edited = 0;
    for f in &mut open_files.open_files {
        if let Some(proto::open_file::Kind::Regular(r)) = &mut f.kind
            && r.file.as_ref().is_some_and(|id| id.path.ends_with("home/created"))
        {
            assert_eq!(f.flags as i32 & libc::O_ACCMODE, libc::O_RDWR, "test setup: 'created' is not open for writing");
            r.file = Some(identity_of(shadow));
            edited += 1;
        }
    }
    assert_eq!(edited, 1, "test setup: no description of home/created in the image");
    dir.write_record(image::OPEN_FILES, &open_files).unwrap();
    let before = fingerprint(shadow);

    let sealed = restore_sealed(&w.image_dir);
    assert_refused(&sealed, &[image::OPEN_FILES, "file_hashes"], w.pid, "sealed");
    let trusted = restore_trusted(&w.image_dir);
    assert_refused(&trusted, &["/etc/shadow", "EACCES"], w.pid, "trusted");
    assert!(fingerprint(shadow) == before, "/etc/shadow changed");
}

/// A copy of the program's own executable, made setuid root and executable only (mode 04711:
/// nobody may run it but not read it), put in the image of a process running as nobody in
/// place of its executable and of every mapping of it. On trust, crust opens mapped files and
/// the executable with the image's credentials too: refused (EACCES), so the restored process
/// cannot read a file it could never read. The same copy made readable (04755) restores, and
/// the setuid bit gives the process nothing: it runs as nobody, mapping the copy.
#[test]
fn trusted_image_mapping_an_unreadable_setuid_binary_is_refused_and_a_readable_one_grants_nothing() {
    let mut w = Workload::spawn("nobody", &[]);
    let original = fs::read_link(format!("/proc/{}/exe", w.pid)).unwrap();
    let copy = w.dir.path.join("setuid-copy");
    fs::copy(&original, &copy).unwrap();
    nix::unistd::chown(&copy, Some(nix::unistd::Uid::from_raw(0)), Some(nix::unistd::Gid::from_raw(0))).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o4711)).unwrap();
    w.dump();

    let dir = ImageDir::open(&w.image_dir).unwrap();
    let mm_name = image::mm_name(w.pid as u32);
    let mut mm: proto::Mm = dir.read_record(&mm_name).unwrap();
    let original = original.to_string_lossy().into_owned();
    let id = identity_of(&copy);
    let fields = mm.fields.as_mut().expect("test setup: no mm fields");
    assert_eq!(fields.exe.as_ref().map(|e| e.path.as_str()), Some(original.as_str()), "test setup: exe");
    fields.exe = Some(id.clone());
    let mut mappings = 0;
    for vma in &mut mm.vmas {
        if vma.file.as_ref().is_some_and(|f| f.path == original) {
            vma.file = Some(Box::new(id.clone()));
            mappings += 1;
        }
    }
    assert!(mappings > 0, "test setup: no mapping of {original}");
    dir.write_record(&mm_name, &mm).unwrap();

    assert_refused(&restore_sealed(&w.image_dir), &[&mm_name, "file_hashes"], w.pid, "sealed");
    let copy_name = copy.to_string_lossy().into_owned();
    assert_refused(&restore_trusted(&w.image_dir), &[&copy_name, "EACCES"], w.pid, "trusted, mode 04711");

    // Readable, the same edit restores (the edit itself is sound); the bit grants nothing.
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = restore_trusted(&w.image_dir);
    if pid_exists(w.pid) {
        w.own(w.pid);
    }
    out.assert_success();
    assert_eq!(fs::read_link(format!("/proc/{}/exe", w.pid)).unwrap(), copy, "the restored process's executable");
    let uids = proc_status_field(w.pid, "Uid").unwrap_or_default();
    assert!(uids.split_whitespace().all(|u| u == "65534"), "the setuid copy gave the process uids {uids:?}");
    let caps = proc_status_field(w.pid, "CapEff").unwrap_or_default();
    assert_eq!(u64::from_str_radix(caps.trim(), 16).ok(), Some(1 << 10), "effective capabilities {caps:?} (CAP_NET_BIND_SERVICE only)");
}

/// The lowest address crust's helper area may take (crust::kinds::memory::find_gap) and the
/// end of user space on x86-64.
const LOWEST: u64 = 0x10_0000;
const USER_SPACE_END: u64 = 0x7fff_ffff_f000;

/// An image whose areas leave no room anywhere: every gap of the process's address space
/// filled with an inaccessible anonymous area, so that crust's helper area (which restore
/// places in a range free in every image and in crust itself) could only go over the
/// program's own memory. Refused before any process is created, naming why.
#[test]
fn trusted_image_leaving_no_room_for_crusts_helper_area_is_refused() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let dir = ImageDir::open(&w.image_dir).unwrap();
    let mm_name = image::mm_name(w.pid as u32);
    let mut mm: proto::Mm = dir.read_record(&mm_name).unwrap();
    let mut filled = Vec::new();
    let mut at = LOWEST;
    for vma in mm.vmas.drain(..) {
        if vma.start >= USER_SPACE_END {
            filled.push(vma);
            continue;
        }
        if vma.start > at {
            filled.push(proto::Vma { start: at, end: vma.start, ..Default::default() });
        }
        at = at.max(vma.end);
        filled.push(vma);
    }
    let upper = filled.iter().position(|v| v.start >= USER_SPACE_END).unwrap_or(filled.len());
    if at < USER_SPACE_END {
        filled.insert(upper, proto::Vma { start: at, end: USER_SPACE_END, ..Default::default() });
    }
    mm.vmas = filled;
    dir.write_record(&mm_name, &mm).unwrap();

    let out = restore_trusted(&w.image_dir);
    assert_refused(&out, &["no free address range for crust's helper area"], w.pid, "trusted");
}

/// Structures no dump writes, each in an otherwise good image taken on trust: a working
/// directory path of 70 KB, an fd numbered 2^31-1, a process whose parent chain loops (its
/// parent is itself). Each is refused naming the record file and the field; none creates a
/// process (the tree of the image is a shell and its child, both gone after the dump).
#[test]
fn trusted_image_with_hostile_structure_is_refused_naming_file_and_field() {
    let mut w = Workload::spawn_program("sh-tree", "sh", &["-c", "sleep 1000 & wait"]);
    let child = wait_for_child(w.pid);
    w.dump();
    assert!(wait_gone(child, Duration::from_secs(5)), "test setup: the dump left the child");
    let files_name = image::files_name(w.pid as u32);
    let cases: [(&str, &[&str], &dyn Fn(&ImageDir)); 3] = [
        ("cwd of 70 KB", &[&files_name, "field cwd"], &|dir| {
            let mut f: proto::Files = dir.read_record(&files_name).unwrap();
            f.cwd = format!("/{}", "a".repeat(70_000));
            dir.write_record(&files_name, &f).unwrap();
        }),
        ("fd 2^31-1", &[&files_name, "field fds", "2147483647"], &|dir| {
            let mut f: proto::Files = dir.read_record(&files_name).unwrap();
            f.fds[0].fd = i32::MAX;
            dir.write_record(&files_name, &f).unwrap();
        }),
        ("parent chain loops", &[image::INVENTORY, "field processes", "not a descendant"], &|dir| {
            let mut inv: proto::Inventory = dir.read_record(image::INVENTORY).unwrap();
            let entry = inv.processes.iter_mut().find(|e| e.pid == child as u32).expect("test setup: child not in the image");
            entry.ppid = child as u32;
            dir.write_record(image::INVENTORY, &inv).unwrap();
        }),
    ];
    for (i, (what, names, edit)) in cases.iter().enumerate() {
        let copy = w.dir.path.join(format!("hostile-{i}"));
        copy_dir(&w.image_dir, &copy);
        edit(&ImageDir::open(&copy).unwrap());
        let out = restore_trusted(&copy);
        assert_refused(&out, names, w.pid, what);
        assert!(!pid_exists(child), "{what}: the refused restore created the child {child}");
    }
}

/// The first child of `pid`, waited for (bounded).
fn wait_for_child(pid: i32) -> i32 {
    let mut found = None;
    wait_until("the shell to start its child", Duration::from_secs(10), || {
        found = children_of(pid).first().copied();
        found.is_some()
    });
    found.unwrap()
}

/// The record of the socket bound to "s.sock" (its file unlinked), in an open-files record.
fn unlinked_socket(k: &mut proto::open_file::Kind) -> Option<&mut proto::UnixSocket> {
    match k {
        proto::open_file::Kind::UnixSocket(u) if u.address.starts_with(b"s.sock") => {
            assert!(u.file.as_ref().is_some_and(|f| !f.present), "test setup: the socket file is recorded present");
            Some(u)
        }
        _ => None,
    }
}

/// Mode, owner and inode of a path (None when absent), to tell that nothing changed it.
fn path_state(path: &str) -> Option<(u32, u32, u32, u64)> {
    fs::symlink_metadata(path).ok().map(|m| (m.mode(), m.uid(), m.gid(), m.ino()))
}

/// A process holding a UNIX socket whose file it unlinked (so restore binds it away from its
/// path, under crust's private root, as root) and /proc/PID/status open. Its image is edited
/// so that the socket's name climbs out with '..' (into /etc), its directory is not canonical,
/// or the /proc path climbs out of /proc: each is refused when the image is loaded, naming
/// open-files.img and the field; a /proc path through a symlink (/proc/self) is refused when
/// it is opened. Nothing is created or changed: no process, and /, /etc,
/// /run and /run/crust keep their mode and owner.
#[test]
fn trusted_image_with_socket_or_proc_paths_climbing_out_is_refused_naming_file_and_field() {
    let script = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("s.sock")
os.unlink("s.sock")
st = open("/proc/%d/status" % os.getpid())
open("ready", "w").write("1")
while True:
    time.sleep(1)
"#;
    let mut w = Workload::spawn_program("climbing-names", "python3", &["-c", script]);
    let ready = w.dir.path.join("ready");
    wait_until("python to bind its socket", Duration::from_secs(10), || file_written(&ready));
    w.dump();
    let watched = ["/", "/etc", "/etc/passwd", "/run", "/run/crust", "/run/crust/detached"];
    let before: Vec<_> = watched.iter().map(|p| path_state(p)).collect();
    let pid = w.pid;
    let edit_open_files = |dir: &ImageDir, change: &dyn Fn(&mut proto::open_file::Kind) -> bool| {
        let mut files: proto::OpenFiles = dir.read_record(image::OPEN_FILES).unwrap();
        let edited = files.open_files.iter_mut().filter_map(|f| f.kind.as_mut()).map(change).filter(|c| *c).count();
        assert_eq!(edited, 1, "test setup: the record to edit is not in the image");
        dir.write_record(image::OPEN_FILES, &files).unwrap();
    };
    let cases: [(&str, &[&str], &dyn Fn(&mut proto::open_file::Kind) -> bool); 4] = [
        ("a socket name climbing into /etc", &[image::OPEN_FILES, "field address"], &|k| {
            unlinked_socket(k).map(|u| u.address = b"../../../../../../../../etc/passwd\0".to_vec()).is_some()
        }),
        ("a socket directory with '..'", &[image::OPEN_FILES, "field file.directory"], &|k| {
            unlinked_socket(k).and_then(|u| u.file.as_mut()).map(|f| f.directory = "/tmp/../etc".into()).is_some()
        }),
        ("a /proc path climbing out of /proc", &[image::OPEN_FILES, "field path"], &|k| match k {
            proto::open_file::Kind::ProcFile(p) => {
                p.path = format!("/proc/{pid}/../../etc/passwd");
                true
            }
            _ => false,
        }),
        // Canonical but through a symlink (/proc/self, like /proc/PID/cwd, leads anywhere).
        ("a /proc path through /proc/self", &["/proc/self/status", "symlink"], &|k| match k {
            proto::open_file::Kind::ProcFile(p) => {
                p.path = "/proc/self/status".into();
                p.pid = 0;
                true
            }
            _ => false,
        }),
    ];
    for (i, (what, names, change)) in cases.iter().enumerate() {
        let copy = w.dir.path.join(format!("climbing-{i}"));
        copy_dir(&w.image_dir, &copy);
        edit_open_files(&ImageDir::open(&copy).unwrap(), *change);
        let out = restore_trusted(&copy);
        assert_refused(&out, names, pid, what);
        let after: Vec<_> = watched.iter().map(|p| path_state(p)).collect();
        assert_eq!(before, after, "{what}: mode, owner or inode of {watched:?} changed");
    }
}

/// A process with a listener on a path and a connection accepted through it. Its image is
/// edited so that the accepted end names another listener (a decoy of the test's, standing in
/// for /run/docker.sock or any socket the process's uid could not reach): restore opens the
/// name, finds it is not the socket file of the tree's listener, and refuses naming it,
/// instead of giving the process a connection to the decoy (or waiting forever in accept).
/// The decoy was never connected to and no process is left.
#[test]
fn trusted_image_whose_connection_names_another_listener_is_refused() {
    let script = r#"
import os, socket, time
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind("l.sock")
l.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect("l.sock")
a, _ = l.accept()
open("ready", "w").write("1")
while True:
    time.sleep(1)
"#;
    let mut w = Workload::spawn_program("redirected-connect", "python3", &["-c", script]);
    let ready = w.dir.path.join("ready");
    wait_until("python to accept its connection", Duration::from_secs(10), || file_written(&ready));
    w.dump();
    let decoy_path = w.dir.path.join("decoy.sock");
    let decoy = std::os::unix::net::UnixListener::bind(&decoy_path).unwrap();
    decoy.set_nonblocking(true).unwrap();
    let mut name = decoy_path.to_string_lossy().into_owned().into_bytes();
    name.push(0);
    let copy = w.dir.path.join("redirected");
    copy_dir(&w.image_dir, &copy);
    let dir = ImageDir::open(&copy).unwrap();
    let mut files: proto::OpenFiles = dir.read_record(image::OPEN_FILES).unwrap();
    let mut edited = 0;
    for f in &mut files.open_files {
        if let Some(proto::open_file::Kind::UnixSocket(u)) = &mut f.kind
            && u.accepted
        {
            u.address = name.clone();
            edited += 1;
        }
    }
    assert_eq!(edited, 1, "test setup: no accepted socket in the image");
    dir.write_record(image::OPEN_FILES, &files).unwrap();
    let out = restore_trusted(&copy);
    assert_refused(&out, &["the socket the image names", "decoy.sock"], w.pid, "a connection redirected to a decoy");
    // The socket file was checked before connecting: the decoy was never connected to.
    assert_eq!(decoy.accept().err().map(|e| e.kind()), Some(std::io::ErrorKind::WouldBlock), "the refused restore connected to the decoy");
}

/// A process running as nobody in DIR/home; its image is edited so that its working
/// directory (and, in a second copy, its root directory) is DIR/private, a root-only directory
/// (0700) with its device and inode. On trust, crust opens them with the image's filesystem
/// ids: refused (EACCES), the process never gets into (or chrooted at) a directory its uid
/// cannot enter. Sealed, the seal refuses the edit. The unedited image restores into DIR/home.
#[test]
fn trusted_image_edited_to_enter_a_root_only_directory_is_refused() {
    let mut w = Workload::spawn("nobody", &[]);
    let private = w.dir.path.join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let home = fs::read_link(format!("/proc/{}/cwd", w.pid)).unwrap();
    w.dump();
    let files_name = image::files_name(w.pid as u32);
    let meta = fs::metadata(&private).unwrap();
    let private_name = private.to_string_lossy().into_owned();
    for field in ["cwd", "root"] {
        let copy = w.dir.path.join(format!("edited-{field}"));
        copy_dir(&w.image_dir, &copy);
        let dir = ImageDir::open(&copy).unwrap();
        let mut f: proto::Files = dir.read_record(&files_name).unwrap();
        if field == "cwd" {
            (f.cwd, f.cwd_dev, f.cwd_inode) = (private_name.clone(), meta.dev(), meta.ino());
        } else {
            (f.root, f.root_dev, f.root_inode) = (private_name.clone(), meta.dev(), meta.ino());
        }
        dir.write_record(&files_name, &f).unwrap();
        assert_refused(&restore_sealed(&copy), &[&files_name, "file_hashes"], w.pid, &format!("{field}: sealed"));
        assert_refused(&restore_trusted(&copy), &[&private_name, "EACCES"], w.pid, &format!("{field}: trusted"));
    }
    let out = restore_trusted(&w.image_dir);
    if pid_exists(w.pid) {
        w.own(w.pid);
    }
    out.assert_success();
    assert_eq!(fs::read_link(format!("/proc/{}/cwd", w.pid)).unwrap(), home, "the restored working directory");
    assert_eq!(fs::read_link(format!("/proc/{}/root", w.pid)).unwrap(), Path::new("/"), "the restored root");
}

/// Python running as nobody with a SysV segment of its own attached. Its image is edited so
/// that the attachment names a root-only segment (0600) of the same size instead (its id, key
/// and size are in /proc/sysvipc/shm for anyone to read). On trust, crust checks the IPC
/// permission against the credentials the image gives the process: refused, and the root
/// segment is never attached (nattch 0, contents unchanged). The unedited image restores on
/// trust, with the process's own segment.
#[test]
fn trusted_image_edited_to_attach_a_root_only_sysv_segment_is_refused() {
    const PY: &str = r#"
import os, time, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
os.chmod('.', 0o777)
os.fchown(1, 65534, 65534)  # its log, which it keeps writing as nobody
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
shmid = libc.shmget(0, 65536, 0o600 | 0o1000)  # IPC_PRIVATE, IPC_CREAT
addr = libc.shmat(shmid, None, 0)
ctypes.memmove(addr, b'nobody data', 11)
with open('ready.tmp', 'w') as f:
    f.write('%d' % shmid)
os.rename('ready.tmp', 'ready')
while True:
    time.sleep(1)
"#;
    // A python nobody can read (its image is restored on trust, with nobody's ids).
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let mut w = Workload::spawn_program("py-sysv-nobody", python, &["-c", PY]);
    let ready = w.dir.path.join("ready");
    wait_until("python3 to attach its segment", Duration::from_secs(15), || file_written(&ready) || !pid_exists(w.pid));
    assert!(file_written(&ready), "never ready:\n{}", w.log_text());
    let own: i32 = fs::read_to_string(&ready).unwrap().trim().parse().unwrap();
    // SAFETY: shmget takes integers only; a private segment of the test's own.
    let root_seg = unsafe { libc::shmget(libc::IPC_PRIVATE, 65536, libc::IPC_CREAT | 0o600) };
    assert!(root_seg >= 0, "test setup: shmget");
    let _remove = RemoveSegments(vec![root_seg, own]);
    crust::sys::sysv::fill(root_seg, 65536, |b| {
        b[..11].copy_from_slice(b"root secret");
        Ok(())
    })
    .unwrap();
    w.dump();
    let mm_name = image::mm_name(w.pid as u32);
    let copy = w.dir.path.join("edited");
    copy_dir(&w.image_dir, &copy);
    let dir = ImageDir::open(&copy).unwrap();
    let mut mm: proto::Mm = dir.read_record(&mm_name).unwrap();
    let seg = mm.vmas.iter_mut().find_map(|v| v.sysv_shm.as_mut()).expect("test setup: no SysV attachment in the image");
    assert_eq!(seg.shmid, own, "test setup: the attachment");
    let root_info = crust::sys::sysv::segments().unwrap().into_iter().find(|s| s.shmid == root_seg).unwrap();
    (seg.shmid, seg.key, seg.uid, seg.gid, seg.mode) = (root_seg, root_info.key, 0, 0, root_info.mode);
    dir.write_record(&mm_name, &mm).unwrap();

    assert_refused(&restore_sealed(&copy), &[&mm_name, "file_hashes"], w.pid, "sealed");
    let out = restore_trusted(&copy);
    assert_refused(&out, &[&format!("SysV segment {root_seg}"), "not open to pid"], w.pid, "trusted");
    let now = crust::sys::sysv::segments().unwrap().into_iter().find(|s| s.shmid == root_seg).expect("the root segment is gone");
    assert_eq!((now.uid, now.mode & 0o777), (0, 0o600), "the root segment changed");
    let attached = fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let nattch = attached
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&root_seg.to_string()))
        .and_then(|l| l.split_whitespace().nth(6).map(str::to_owned));
    assert_eq!(nattch.as_deref(), Some("0"), "the root segment is attached");

    let out = restore_trusted(&w.image_dir);
    if pid_exists(w.pid) {
        w.own(w.pid);
    }
    out.assert_success();
    let maps = fs::read_to_string(format!("/proc/{}/maps", w.pid)).unwrap();
    assert!(maps.contains("SYSV"), "the restored process has no SysV attachment:\n{maps}");
}

/// Removes the test's SysV segments when it ends, passed or not (a segment attached by a
/// restored process goes with its last attachment).
struct RemoveSegments(Vec<i32>);

impl Drop for RemoveSegments {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = crust::sys::sysv::remove(*id);
        }
    }
}
