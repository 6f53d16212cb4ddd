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
    wait_until("python3 to map its file", Duration::from_secs(15), || w.dir.path.join("ready").exists());
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
