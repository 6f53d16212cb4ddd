//! A restore never gives a process more than it had: a file the image names is opened only if
//! it is still the very file the process had (device and inode), whatever its path now leads
//! to. (Issue: a process maps a file of its own whose size and mtime match a root-only file,
//! then puts a symlink to that file in place of its own; the restore, which opens mapped files
//! as root, must not hand it the root-only file.)

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// python3 maps `data` (8 KiB of 'A') shared and writable, says so in `ready`, and waits.
const PY_MAPPER: &str = r#"
import mmap, os, sys, time
with open(sys.argv[1], 'wb') as f:
    f.write(b'A' * 8192)
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.close(fd)
open('ready', 'w').write('ready\n')
while True:
    time.sleep(0.1)
"#;

#[test]
fn mapped_file_replaced_by_a_symlink_to_a_root_only_file_is_refused() {
    let mut w = Workload::spawn_program("py-mapper", "python3", &["-c", PY_MAPPER, "data"]);
    let data = w.dir.path.join("data");
    wait_until("python3 to map its file", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    w.dump();

    // A root-only file with the same size and mtime, put in place of the mapped file.
    let secret = w.dir.path.join("secret");
    fs::write(&secret, vec![b'S'; 8192]).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let mtime = fs::metadata(&data).unwrap().modified().unwrap();
    fs::File::options().write(true).open(&secret).unwrap().set_modified(mtime).unwrap();
    fs::rename(&data, w.dir.path.join("data.orig")).unwrap();
    std::os::unix::fs::symlink(&secret, &data).unwrap();

    let out = w.restore_detached_raw();
    assert!(!out.success(), "restore handed the process another file:\n{out}");
    assert!(
        out.text().contains(&*data.to_string_lossy()) && out.text().contains("another file"),
        "the refusal must name the file and why:\n{out}"
    );
    assert!(wait_gone(w.pid, Duration::from_secs(5)), "a process of the failed restore is left");
    assert_eq!(fs::read(&secret).unwrap(), vec![b'S'; 8192], "the root-only file was written");

    // Put back, the same image restores: the refusal was about the file, nothing else.
    fs::remove_file(&data).unwrap();
    fs::rename(w.dir.path.join("data.orig"), &data).unwrap();
    w.restore_detached();
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true));
}

/// Replaces every `from` in the payload of the framed record at `path` with `to` (same
/// length) and recomputes its XXH3, as someone who knows the format would: the record is
/// well formed and its checksum right. Returns how many were replaced.
/// python3 keeps `data` open (fd, not mapped) and waits.
const PY_HOLDER: &str = r#"
import os, sys, time
with open(sys.argv[1], 'wb') as f:
    f.write(b'B' * 4096)
keep = open(sys.argv[1], 'rb')
keep.read(100)
open('ready', 'w').write('ready\n')
while True:
    time.sleep(0.1)
"#;

/// The paths an image names are the kernel's names of the files, never through a symlink: a
/// symlink found on the way at restore was put there since, and is not followed, even when it
/// leads to the very same file (that passes the device and inode check, so only the open's
/// own resolution can refuse it). Both for a mapped file and for an fd.
#[test]
fn a_path_that_became_a_symlink_is_not_followed_even_to_the_same_file() {
    for (label, program) in [("mapped", PY_MAPPER), ("fd", PY_HOLDER)] {
        let mut w = Workload::spawn_program(&format!("py-{label}"), "python3", &["-c", program, "data"]);
        let data = w.dir.path.join("data");
        wait_until("python3 to open its file", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
        w.dump();
        // The same inode, now reached through a symlink: data -> real/data.
        let real = w.dir.path.join("real");
        fs::create_dir(&real).unwrap();
        fs::rename(&data, real.join("data")).unwrap();
        std::os::unix::fs::symlink(real.join("data"), &data).unwrap();
        let out = w.restore_detached_raw();
        assert!(!out.success(), "{label}: restore followed a symlink put on the path:\n{out}");
        assert!(
            out.text().contains(&*data.to_string_lossy()) && out.text().contains("symlink"),
            "{label}: the refusal must name the file and the symlink:\n{out}"
        );
        assert!(wait_gone(w.pid, Duration::from_secs(5)), "{label}: a process of the failed restore is left");
        // The file back at its own path, the same image restores.
        fs::remove_file(&data).unwrap();
        fs::rename(real.join("data"), &data).unwrap();
        w.restore_detached();
        assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "{label}: not running after the second restore");
    }
}

fn edit_record(path: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    const HEADER: usize = 24;
    let mut b = fs::read(path).unwrap();
    let end = b.len() - 8;
    let mut n = 0;
    let mut i = HEADER;
    while i + from.len() <= end {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&b[..end]);
    b[end..].copy_from_slice(&sum.to_le_bytes());
    fs::write(path, b).unwrap();
    n
}

/// The image of a process running as nobody (65534), its core record edited to name another
/// uid (65533) with its XXH3 recomputed: the record is well formed, but the image's seal (a
/// BLAKE3 MAC under this host's key over the hashes of every file) no longer matches, and
/// restore refuses it, naming the file and the field, creating nothing. With --trust-image the
/// same image is taken as it is and acts as the edited uid: the seal is what stopped it.
#[test]
fn edited_image_is_refused_unless_trusted() {
    let mut w = Workload::spawn("nobody", &[]);
    w.dump();
    let core = w.image_dir.join(format!("core-{}.img", w.pid));
    // 65534 and 65533 as protobuf varints (3 bytes each).
    let edited = edit_record(&core, &[0xfe, 0xff, 0x03], &[0xfd, 0xff, 0x03]);
    assert!(edited > 0, "no uid 65534 in {}", core.display());

    let out = w.restore_detached_raw();
    assert!(!out.success(), "an edited image was restored:\n{out}");
    let text = out.text();
    assert!(
        text.contains(&format!("core-{}.img", w.pid)) && text.contains("file_hashes"),
        "the refusal must name the edited file and the field:\n{out}"
    );
    assert!(wait_gone(w.pid, Duration::from_secs(5)), "the refused restore created a process");

    // Trusted, the image is taken as it is: the restore gets past the seal and acts as the
    // edited uid (which here cannot even open the log 65534 owns: refused by the kernel).
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["restore", "-d", "-D", &img, "--trust-image"]);
    if pid_exists(w.pid) {
        w.own(w.pid);
    }
    let text = out.text();
    assert!(text.contains("--trust-image") && !text.contains("file_hashes"), "--trust-image still checked the seal:\n{out}");
    if out.success() {
        let uid = proc_status_field(w.pid, "Uid").unwrap_or_default();
        assert!(uid.split_whitespace().all(|u| u == "65533"), "the trusted edited image runs with uids {uid:?}");
    } else {
        assert!(text.contains("EACCES"), "the trusted restore failed for another reason:\n{out}");
        assert!(wait_gone(w.pid, Duration::from_secs(5)), "the failed restore left a process");
    }
}

/// The inventory itself edited (its XXH3 recomputed): the seal does not match.
#[test]
fn edited_inventory_is_refused() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let inventory = w.image_dir.join("inventory.img");
    // The root pid (a varint) names another pid.
    let pid = w.pid as u32;
    let mut varint = Vec::new();
    let mut v = pid;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            varint.push(byte);
            break;
        }
        varint.push(byte | 0x80);
    }
    let mut other = varint.clone();
    other[0] ^= 1;
    assert!(edit_record(&inventory, &varint, &other) > 0);
    let out = w.restore_detached_raw();
    assert!(!out.success() && out.text().contains("field seal does not match"), "{out}");
}

/// `restore --check-only` runs every check of a restore and creates nothing: on a good image
/// (its process gone) it says the restore can go ahead; on an edited image it fails naming the
/// file; while the process still runs it fails on the busy PID; no process is ever created.
#[test]
fn restore_check_only_checks_everything_and_creates_nothing() {
    let mut w = Workload::spawn("counter", &[]);
    let img = w.image_dir.to_string_lossy().into_owned();
    w.dump_with(&["-R"]).assert_success();
    let busy = crust(["restore", "--check-only", "-D", &img]);
    assert!(!busy.success() && busy.text().contains("busy"), "{busy}");
    // SAFETY: kill takes integers only; the pid is this test's own child.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    w.reap(Duration::from_secs(10));
    let ok = crust(["restore", "--check-only", "-D", &img]);
    ok.assert_success();
    assert!(ok.text().contains("can go ahead"), "{ok}");
    assert!(!pid_exists(w.pid), "--check-only created pid {}", w.pid);
    let edited = edit_record(&w.image_dir.join(format!("core-{}.img", w.pid)), b"counter", b"countex");
    assert!(edited > 0, "test setup: nothing edited");
    let refused = crust(["restore", "--check-only", "-D", &img]);
    assert!(!refused.success() && refused.text().contains(&format!("core-{}.img", w.pid)), "{refused}");
    assert!(!pid_exists(w.pid), "--check-only created pid {}", w.pid);
}

/// crust writes the image as root: symlinks planted in the image directory (for the page file,
/// a record, its temporary name) are never followed; the files they point to stay as they were
/// and the image is made of regular files that restore.
#[test]
fn symlinks_planted_in_the_image_directory_are_not_followed() {
    let mut w = Workload::spawn("counter", &[]);
    let victim = w.dir.path.join("victim");
    fs::write(&victim, "untouched").unwrap();
    fs::create_dir_all(&w.image_dir).unwrap();
    for name in [format!("pages-{}.img", w.pid), format!("core-{}.img", w.pid), format!(".mm-{}.img.tmp", w.pid)] {
        std::os::unix::fs::symlink(&victim, w.image_dir.join(&name)).unwrap();
    }
    w.dump();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched", "crust wrote through a planted symlink");
    for name in [format!("pages-{}.img", w.pid), format!("core-{}.img", w.pid)] {
        let meta = fs::symlink_metadata(w.image_dir.join(&name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is not a regular file after the dump");
    }
    w.restore_detached();
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true));
}

/// A page file with one byte changed (its size kept) is refused, sealed or taken on trust: its
/// chunk hashes in the inventory (which the seal covers) name the file, the field and the
/// damaged chunk's bytes; nothing is created.
#[test]
fn changed_page_is_refused_naming_the_chunk_sealed_or_trusted() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let pages = w.image_dir.join(format!("pages-{}.img", w.pid));
    let mut bytes = fs::read(&pages).unwrap();
    assert!(bytes.len() >= 4096, "test setup: page file of {} bytes", bytes.len());
    let at = bytes.len() - 1;
    bytes[at] ^= 0x5a;
    fs::write(&pages, &bytes).unwrap();
    let img = w.image_dir.to_string_lossy().into_owned();
    for extra in [None, Some("--trust-image")] {
        let mut args = vec!["restore", "-d", "-D", &img];
        args.extend(extra);
        let out = crust(args);
        let text = out.text();
        assert!(!out.success(), "{extra:?}: a changed page was restored:\n{out}");
        assert!(
            text.contains(&format!("pages-{}.img", w.pid)) && text.contains("chunk_blake3") && text.contains(&format!("..{}", bytes.len())),
            "{extra:?}: the refusal names the file, the field and the chunk:\n{out}"
        );
        assert!(wait_gone(w.pid, Duration::from_secs(5)), "{extra:?}: the refused restore created a process");
    }
}

/// Someone who can write the image directory plants, in place of its files, a symlink to an
/// endless device, a FIFO nobody writes, a directory: restore reads none of them (it would
/// hang or fill memory), refuses naming the file and why, and creates nothing.
#[test]
fn planted_fifo_device_link_or_directory_in_the_image_is_refused_without_reading_it() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let core = format!("core-{}.img", w.pid);
    let cases: [(&str, &str, &dyn Fn(&std::path::Path)); 4] = [
        ("inventory.img", "symbolic link", &|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        (&core, "not a regular file", &|p| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()),
        (&core, "symbolic link", &|p| std::os::unix::fs::symlink("/dev/urandom", p).unwrap()),
        ("inventory.img", "not a regular file", &|p| fs::create_dir(p).unwrap()),
    ];
    for (i, (name, why, plant)) in cases.iter().enumerate() {
        let copy = w.dir.path.join(format!("planted-{i}"));
        copy_dir(&w.image_dir, &copy);
        let target = copy.join(name);
        fs::remove_file(&target).unwrap();
        plant(&target);
        let out = crust(["restore", "-d", "-D", &copy.to_string_lossy()]);
        assert!(!out.success() && out.text().contains(name) && out.text().contains(why), "case {i} ({name}: {why}):\n{out}");
        assert!(!pid_exists(w.pid), "case {i}: the refused restore created pid {}", w.pid);
    }
}

/// A record file swapped for an edited one after the seal and hashes were checked (a window
/// widened here by CRUST_FAULT=restore-sealed:1:sleep...): records are decoded from the very
/// bytes the check read and hashed, so the swapped file is never used: the process comes back
/// as sealed (uid 65534), not as edited (uid 0).
#[test]
fn record_swapped_after_the_seal_check_is_not_used() {
    let mut w = Workload::spawn("nobody", &[]);
    w.dump();
    let core = w.image_dir.join(format!("core-{}.img", w.pid));
    let edited = w.dir.path.join("core-edited.img");
    fs::copy(&core, &edited).unwrap();
    assert!(edit_record(&edited, &[0xfe, 0xff, 0x03], &[0x00, 0x00, 0x00]) > 0, "no uid 65534 in the core record");
    let img = w.image_dir.to_string_lossy().into_owned();
    let child = crust_command()
        .args(["restore", "-d", "-D", &img])
        .env("CRUST_FAULT", "restore-sealed:1:sleep1500")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::rename(&edited, &core).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CRUST_FAULT=restore-sealed"), "the window was not the one widened:\n{text}");
    assert!(out.status.success(), "the restore failed:\n{text}");
    let uids = proc_status_field(w.pid, "Uid").unwrap_or_default();
    assert_eq!(uids.split_whitespace().collect::<Vec<_>>(), ["65534"; 4], "the restored process's uids");
}

/// A data file (the page file) that a user other than root could change while it is restored
/// (owned by another uid, or writable by group or others) is refused before anything is
/// created: crust verifies a data file's chunks and uses its bytes through one open file, and
/// only root must be able to change what is behind it.
#[test]
fn data_file_others_could_change_is_refused() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let pages = w.image_dir.join(format!("pages-{}.img", w.pid));
    let img = w.image_dir.to_string_lossy().into_owned();
    for (what, change, undo) in
        [("owned by uid 65534", (Some(65534), None), (Some(0), None)), ("group-writable", (None, Some(0o620)), (None, Some(0o600)))]
    {
        if let Some(uid) = change.0 {
            nix::unistd::chown(&pages, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
        }
        if let Some(mode) = change.1 {
            fs::set_permissions(&pages, fs::Permissions::from_mode(mode)).unwrap();
        }
        let out = crust(["restore", "-d", "-D", &img]);
        assert!(!out.success(), "{what}: restored:\n{out}");
        assert!(out.text().contains(&format!("pages-{}.img", w.pid)) && out.text().contains("could change it"), "{what}: {out}");
        assert!(wait_gone(w.pid, Duration::from_secs(5)), "{what}: the refused restore created a process");
        if let Some(uid) = undo.0 {
            nix::unistd::chown(&pages, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
        }
        if let Some(mode) = undo.1 {
            fs::set_permissions(&pages, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    w.restore_detached();
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "the image did not restore once only root could write its page file");
}

/// `crust lease` edits an image and seals it again: only an image whose seal holds. An image
/// edited since the dump (its core record naming uid 0, XXH3 recomputed) is refused, and stays
/// refused by restore (it was not sealed again); with --trust-image the user takes it on.
#[test]
fn crust_lease_does_not_seal_an_edited_image_again() {
    let mut w = Workload::spawn("nobody", &[]);
    w.dump();
    let core = w.image_dir.join(format!("core-{}.img", w.pid));
    assert!(edit_record(&core, &[0xfe, 0xff, 0x03], &[0x00, 0x00, 0x00]) > 0);
    let img = w.image_dir.to_string_lossy().into_owned();
    let lease = crust(["lease", "-D", &img, "--lease-set", "5"]);
    assert!(!lease.success(), "crust lease edited an image whose seal does not hold:\n{lease}");
    assert!(lease.text().contains(&format!("core-{}.img", w.pid)) && lease.text().contains("--trust-image"), "{lease}");
    let out = w.restore_detached_raw();
    assert!(!out.success() && out.text().contains("file_hashes"), "the edited image was sealed again:\n{out}");
    assert!(wait_gone(w.pid, Duration::from_secs(5)));
    let trusted = crust(["lease", "-D", &img, "--lease-set", "5", "--trust-image"]);
    trusted.assert_success();
}
