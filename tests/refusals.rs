//! What crust must refuse, and what it must leave intact when it does.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A process with an MPTCP socket (a protocol crust does not checkpoint yet): dump exits
/// non-zero naming the pid, the fd number and "protocol MPTCP"; the process is still running
/// afterwards, not stopped, not traced.
#[test]
fn dump_refuses_process_with_an_mptcp_socket_and_leaves_it_running() {
    let w = Workload::spawn_program(
        "socket",
        "python3",
        &["-c", "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)\ntime.sleep(100)\n"],
    );
    let mut sock_fd = None;
    wait_until("python to open its socket", Duration::from_secs(10), || {
        sock_fd = fs::read_dir(format!("/proc/{}/fd", w.pid)).ok().and_then(|rd| {
            rd.flatten().find_map(|d| {
                let t = fs::read_link(d.path()).ok()?;
                t.to_string_lossy().starts_with("socket:").then(|| d.file_name().to_string_lossy().into_owned())
            })
        });
        sock_fd.is_some()
    });
    let fd = sock_fd.unwrap();
    let out = w.dump_with(&[]);
    out.assert_failure();
    eprintln!("{out}");
    let text = out.text();
    assert!(has_token(&text, &w.pid.to_string()), "refusal does not name pid {}:\n{out}", w.pid);
    assert!(has_token(&text, &fd), "refusal does not name fd {fd}:\n{out}");
    assert!(text.contains("protocol MPTCP"), "refusal does not say 'protocol MPTCP':\n{out}");
    assert_running_untouched(w.pid, "after the refused dump");
}

/// A process whose stdout is a pipe read by another process (the test): dump is
/// refused naming the pid, fd 1 and "pipe", and the process keeps running.
#[test]
fn dump_refuses_pipe_shared_with_another_process() {
    let w = Workload::spawn_program_with("pipe", "sleep", &["100"], |cmd| {
        cmd.stdout(Stdio::piped());
    });
    assert!(w.piped_stdout.is_some(), "the test holds the read end");
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    assert!(
        fs::read_link(format!("/proc/{}/fd/1", w.pid)).unwrap().to_string_lossy().starts_with("pipe:"),
        "stdout of the workload is not a pipe"
    );
    // A sleeper woken by a freeze (ptrace interrupt) counts a voluntary context switch when it
    // sleeps again: the refusal must come before the tree is touched at all.
    let switches = || proc_status_field(w.pid, "voluntary_ctxt_switches");
    let before = switches();
    let out = w.dump_with(&[]);
    out.assert_failure();
    eprintln!("{out}");
    let text = out.text();
    assert!(has_token(&text, &w.pid.to_string()), "refusal does not name pid {}:\n{out}", w.pid);
    assert!(has_token(&text, "1"), "refusal does not name fd 1:\n{out}");
    assert!(text.to_lowercase().contains("pipe"), "refusal does not say 'pipe':\n{out}");
    assert_running_untouched(w.pid, "after the refused dump");
    assert_eq!(switches(), before, "the refused dump woke (froze) the process");
    let written: Vec<String> =
        fs::read_dir(&w.image_dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    assert!(written.iter().all(|n| !n.ends_with(".img")), "the refused dump wrote image files: {written:?}");
}

/// `crust dump -R` writes a complete image and leaves the process running, untraced,
/// its counter still increasing, and it still PASSes its own checks afterwards.
#[test]
fn dump_leave_running_keeps_the_process_working() {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    let out = w.dump_with(&["-R"]);
    out.assert_success();
    assert!(pid_exists(w.pid), "-R: pid {} is gone after the dump:\n{out}", w.pid);
    assert_running_untouched(w.pid, "after dump -R");
    let v1 = read_mem_u64(w.pid, addr);
    std::thread::sleep(Duration::from_millis(300));
    let v2 = read_mem_u64(w.pid, addr);
    assert!(v2 > v1, "counter stuck after dump -R: {v1} then {v2}");
    crust(["show", "-D", &w.image_dir.to_string_lossy()]).assert_success();
    w.go().assert_pass();
}

/// Restoring an image while its original process (dumped with -R) still runs is
/// refused with "PID ... busy", and the original is not disturbed.
#[test]
fn restore_is_refused_while_the_original_still_runs() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump_with(&["-R"]).assert_success();
    let out = w.restore_detached_raw();
    out.assert_failure();
    eprintln!("{out}");
    assert!(out.text().contains("PID") && out.text().contains("busy"), "expected 'PID ... busy':\n{out}");
    assert_running_untouched(w.pid, "after the refused restore");
    w.go().assert_pass();
}

/// Restoring the same image twice: the second restore, while the first restored
/// process runs, fails with "PID ... busy" and leaves the first one untouched.
#[test]
fn second_restore_of_the_same_image_fails_pid_busy_and_leaves_the_first_alone() {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    w.dump();
    w.restore_detached();
    let before = w.snapshot();
    let out = w.restore_detached_raw();
    out.assert_failure();
    eprintln!("{out}");
    assert!(out.text().contains("PID") && out.text().contains("busy"), "expected 'PID ... busy':\n{out}");
    assert_running_untouched(w.pid, "first restored process after the second restore");
    let after = w.snapshot();
    assert_same_proc(&before, &after, &[]);
    let v1 = read_mem_u64(w.pid, addr);
    std::thread::sleep(Duration::from_millis(200));
    assert!(read_mem_u64(w.pid, addr) > v1, "first restored process stopped counting");
    w.go().assert_pass();
}

/// Makes sure no process with `pid` exists after a refused restore (kills and reaps
/// one if a restore wrongly went ahead). Returns a problem description, if any.
fn ensure_no_process(pid: i32) -> Option<String> {
    if wait_gone(pid, Duration::from_secs(3)) {
        return None;
    }
    let state = proc_state(pid);
    if is_our_child(pid) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        waitpid_timeout(pid, Duration::from_secs(5));
    }
    Some(format!("pid {pid} exists (state {state:?}) after the refused restore"))
}

/// Restores a damaged copy of the image once per image file; each must be refused,
/// naming that file, with no process left behind.
fn each_damaged_file_is_refused(what: &str, damage: impl Fn(&Path) -> bool) {
    let mut w = Workload::spawn("counter", &[]);
    w.dump();
    let files = image_files(&w.image_dir);
    assert!(!files.is_empty(), "empty image dir");
    let mut problems = Vec::new();
    let mut tried = 0;
    for (i, rel) in files.iter().enumerate() {
        let copy = w.dir.path.join(format!("img-{what}-{i}"));
        copy_dir(&w.image_dir, &copy);
        if !damage(&copy.join(rel)) {
            continue; // e.g. an empty file cannot be truncated
        }
        tried += 1;
        let out = crust(["restore", "-d", "-D", &copy.to_string_lossy()]);
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        if out.success() {
            problems.push(format!("{what} {}: restore succeeded\n{out}", rel.display()));
        } else if !out.text().contains(&name) {
            problems.push(format!("{what} {}: refusal does not name the file '{name}'\n{out}", rel.display()));
        }
        if let Some(p) = ensure_no_process(w.pid) {
            problems.push(format!("{what} {}: {p}", rel.display()));
        }
    }
    assert!(tried > 0, "no image file could be {what}");
    assert!(problems.is_empty(), "{} of {tried} {what} image files not properly refused:\n{}", problems.len(), problems.join("\n\n"));
}

/// Every image file truncated to half its size (in turn) makes restore fail with a
/// message naming that file, and no process with the pid exists afterwards.
#[test]
fn restore_refuses_truncated_image_files_naming_the_file() {
    each_damaged_file_is_refused("truncated", |p| {
        let len = fs::metadata(p).unwrap().len();
        if len == 0 {
            return false;
        }
        fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len / 2).unwrap();
        true
    });
}

/// Every image file with one byte flipped in its middle (in turn) makes restore fail
/// with a message naming that file, and no process with the pid exists afterwards.
#[test]
fn restore_refuses_corrupted_image_files_naming_the_file() {
    each_damaged_file_is_refused("corrupted", |p| {
        let mut b = read_all(p);
        if b.is_empty() {
            return false;
        }
        let i = b.len() / 2;
        b[i] ^= 0xff;
        fs::write(p, b).unwrap();
        true
    });
}

fn changed_mapped_file_is_refused(change: &dyn Fn(&Path), why: &str) {
    let mut w = Workload::spawn("mappings", &[]);
    w.dump();
    let data = w.dir.path.join("status.data");
    assert!(data.exists());
    change(&data);
    let out = w.restore_detached_raw();
    out.assert_failure();
    eprintln!("{out}");
    assert!(out.text().contains("status.data"), "refusal does not name the changed file status.data:\n{out}");
    assert!(out.text().contains(why), "refusal does not say {why:?}:\n{out}");
    if let Some(p) = ensure_no_process(w.pid) {
        panic!("{p}\n{out}");
    }
}

/// A program that went on after `dump -R` may change its data files; restore goes on with them
/// as they are now (as the process would have seen them), with one warning line naming the
/// file: here the file behind a private file mapping grew.
fn changed_mapped_data_file_is_accepted(change: impl Fn(&Path)) {
    let mut w = Workload::spawn("mappings", &[]);
    w.dump();
    let data = w.dir.path.join("status.data");
    change(&data);
    let out = w.restore_detached();
    assert!(out.text().contains("status.data changed since the dump"), "no warning naming the changed file status.data:\n{out}");
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "the restored process does not run");
}

#[test]
fn restore_goes_on_with_a_warning_when_a_mapped_data_file_grew() {
    changed_mapped_data_file_is_accepted(|p| {
        use std::io::Write;
        fs::OpenOptions::new().append(true).open(p).unwrap().write_all(&[0x55; 4096]).unwrap();
    });
}

/// The same, the file behind a private file mapping written in place (same size).
#[test]
fn restore_goes_on_with_a_warning_when_a_mapped_data_file_was_written_in_place() {
    changed_mapped_data_file_is_accepted(|p| {
        use std::os::unix::fs::FileExt;
        std::thread::sleep(Duration::from_millis(20)); // a visibly different mtime too
        fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(&[0xAA; 4096], 0).unwrap();
    });
}

/// What the restored process could not live with is refused, naming the file: a mapped file
/// now shorter than what was mapped (its pages would fault with SIGBUS), or another file at
/// the path (replaced by a rename).
#[test]
fn restore_refuses_a_mapped_file_shorter_than_its_mapping_or_replaced_by_another() {
    let truncate = |p: &Path| fs::OpenOptions::new().write(true).open(p).unwrap().set_len(4096).unwrap();
    let replace = |p: &Path| {
        let new = p.with_extension("new");
        fs::write(&new, read_all(p)).unwrap();
        fs::rename(&new, p).unwrap();
    };
    for (change, why) in [(&truncate as &dyn Fn(&Path), "shorter than"), (&replace, "is another file now")] {
        changed_mapped_file_is_refused(change, why);
    }
}

/// Every image file deleted (in turn) makes restore fail with a message naming that
/// file, and no process with the pid exists afterwards.
#[test]
fn restore_refuses_image_with_a_missing_file_naming_the_file() {
    each_damaged_file_is_refused("missing", |p| {
        fs::remove_file(p).unwrap();
        true
    });
}

/// Restoring from a directory that holds no image fails, naming the directory.
#[test]
fn restore_from_a_directory_without_an_image_fails_naming_it() {
    let dir = TempDir::new("no-image");
    let out = crust(["restore", "-d", "-D", &dir.path.to_string_lossy()]);
    out.assert_failure();
    eprintln!("{out}");
    assert!(out.text().contains(&*dir.path.to_string_lossy()), "message does not name {}:\n{out}", dir.path.display());
}

/// The executable a process ran was touched after the dump (same size, new mtime): restore
/// refuses it by default, naming it; `--file-validation filesize` (the reference tool's option)
/// compares sizes only and restores; `buildid` is refused in one line as not supported yet.
#[test]
fn executable_touched_after_the_dump_is_refused_unless_file_validation_is_filesize() {
    let dir = TempDir::new("touched-exe");
    let exe = dir.path.join("mysleep");
    fs::copy("/bin/sleep", &exe).unwrap();
    let mut w = Workload::spawn_program("touched-exe", &exe.to_string_lossy(), &["1000"]);
    wait_in_syscall(w.pid, libc::SYS_clock_nanosleep, Duration::from_secs(5));
    w.dump();
    std::thread::sleep(Duration::from_millis(20));
    let later = std::time::SystemTime::now();
    fs::File::options().write(true).open(&exe).unwrap().set_modified(later).unwrap();

    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["restore", "-d", "-D", &img]);
    assert!(!out.success() && out.text().contains("mysleep was modified after the dump"), "default validation:\n{out}");
    assert!(ensure_no_process(w.pid).is_none(), "a process of the refused restore is left");
    let out = crust(["restore", "-d", "-D", &img, "--file-validation", "buildid"]);
    assert!(!out.success() && out.text().contains("buildid is not supported yet"), "buildid:\n{out}");
    let out = crust(["restore", "-d", "-D", &img, "--file-validation", "filesize"]);
    if pid_exists(w.pid) {
        w.own(w.pid);
    }
    assert!(out.success(), "--file-validation filesize:\n{out}");
    assert_eq!(proc_state(w.pid), Some('S'));
}

/// A sealed mapping (mseal) is refused by pid, address and "sealed": restored without its
/// seal, the program could change what it had made unchangeable. The process runs on.
#[test]
fn sealed_mapping_is_refused_by_name() {
    const PY_BODY: &str = r#"
addr = libc.mmap(None, 4096, 1, 0x22, -1, 0)
assert libc.syscall(462, ctypes.c_void_p(addr), ctypes.c_size_t(4096), ctypes.c_ulong(0)) == 0, ctypes.get_errno()
open('ready', 'w').write('%x\n' % addr)
while True:
    time.sleep(0.1)
"#;
    let w = Workload::spawn_program("py-mseal", "python3", &["-c", &format!("{PY_MMAP_PRELUDE}{PY_BODY}")]);
    wait_until("python3 to seal its mapping", std::time::Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let addr = std::fs::read_to_string(w.dir.path.join("ready")).unwrap().trim().to_string();
    let out = w.dump_with(&[]);
    assert!(!out.success(), "a sealed mapping was dumped:\n{out}");
    assert!(out.text().contains(&w.pid.to_string()) && out.text().contains(&addr) && out.text().contains("sealed"), "{out}");
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "the process does not run on");
}

/// Periodic checkpoints into one directory: a later dump that is refused (here, of a process
/// whose stdout is a pipe to the test) leaves the earlier image as it was, restorable, and
/// marks nothing as failed.
#[test]
fn refused_dump_into_a_directory_keeps_the_image_already_there() {
    let mut w = Workload::spawn("counter", &[]);
    w.dump_with(&["-R"]).assert_success();
    let img = w.image_dir.to_string_lossy().into_owned();
    let before = names_and_contents(&w.image_dir);
    let piped = Workload::spawn_program_with("pipe", "sleep", &["100"], |cmd| {
        cmd.stdout(Stdio::piped());
    });
    wait_in_syscall(piped.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let out = crust(["dump", "-t", &piped.pid.to_string(), "-D", &img]);
    assert!(!out.success() && out.text().to_lowercase().contains("pipe"), "the second dump was not refused:\n{out}");
    let after = names_and_contents(&w.image_dir);
    assert!(after == before, "the refused dump changed the image directory: {:?}", after.iter().map(|f| &f.0).collect::<Vec<_>>());
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(5));
    w.restore_detached();
    assert_eq!(proc_state(w.pid).map(is_live_state), Some(true), "the earlier image did not restore");
}

/// What a directory looks like to tell that nothing changed it: mode, owner, inode.
fn dir_state(path: &str) -> (u32, u32, u32, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    (m.mode(), m.uid(), m.gid(), m.ino())
}

/// A process running as nobody, with its working directory six levels down in a directory of
/// its own, binds a UNIX socket to "../../../../../etc/passwd" (the file lands in its own
/// tree), then moves to /. Its socket's name, read from its new working directory, names the
/// real /etc/passwd: restore would have acted on /etc as root. Dump is refused before the
/// freeze naming the pid, the fd, "UNIX socket" and the '..'; the process keeps running (its
/// socket still works) and /etc, /etc/passwd and / are unchanged.
#[test]
fn dump_refuses_a_unix_socket_named_with_dot_dot_and_changes_nothing() {
    let watched = ["/", "/etc", "/etc/passwd"];
    let before: Vec<_> = watched.iter().map(|p| dir_state(p)).collect();
    let script = r#"
import os, socket, sys, time
base = os.getcwd()
os.makedirs("a/b/c/d/e/f")
os.makedirs("a/etc")
for d, _, _ in os.walk(base):
    os.chmod(d, 0o777)
os.chmod(base, 0o777)
os.setgid(65534); os.setuid(65534)
os.chdir("a/b/c/d/e/f")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("../../../../../etc/passwd")
os.chdir("/")
print("fd", s.fileno(), flush=True)
with open(os.path.join(base, "ready"), "w") as f:
    f.write(str(s.fileno()))
while True:
    # The socket still works: a datagram to itself comes back.
    s.sendto(b"x", os.path.join(base, "a/etc/passwd"))
    s.recv(1)
    time.sleep(0.2)
"#;
    let w = Workload::spawn_program("dotdot-socket", "python3", &["-c", script]);
    let ready = w.dir.path.join("ready");
    wait_until("python to bind its socket", Duration::from_secs(10), || file_written(&ready));
    let fd = fs::read_to_string(&ready).unwrap();
    assert!(w.dir.path.join("a/etc/passwd").exists(), "test setup: the socket file is not in the process's own tree");
    let out = w.dump_with(&[]);
    out.assert_failure();
    let text = out.text();
    assert!(has_token(&text, &w.pid.to_string()), "refusal does not name pid {}:\n{out}", w.pid);
    assert!(has_token(&text, &fd), "refusal does not name fd {fd}:\n{out}");
    assert!(text.contains("UNIX socket") && text.contains("'..'"), "refusal does not name the kind and the '..':\n{out}");
    assert_running_untouched(w.pid, "after the refused dump");
    let after: Vec<_> = watched.iter().map(|p| dir_state(p)).collect();
    assert_eq!(before, after, "mode, owner or inode of {watched:?} changed");
    assert!(!w.image_dir.join("inventory.img").exists(), "the refused dump left an image");
}

/// Every file of `dir` with its contents, by name.
fn names_and_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> =
        fs::read_dir(dir).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap())).collect();
    files.sort();
    files
}
