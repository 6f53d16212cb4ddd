//! A process that dropped from root to an unprivileged identity comes back with exactly that
//! identity, and a restore never hands it a file it could not have opened itself.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

const NOBODY: &str = "65534";

/// The /proc/PID/status lines that make up the credentials.
const CRED_KEYS: &[&str] = &["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"];

fn cred_lines(s: &ProcSnapshot) -> Vec<(String, String)> {
    CRED_KEYS.iter().map(|k| (k.to_string(), s.entries.get(&format!("status:{k}")).cloned().unwrap_or_else(|| "<absent>".into()))).collect()
}

fn bits(caps: &[u32]) -> String {
    format!("{:016x}", caps.iter().fold(0u64, |m, c| m | 1 << c))
}

/// nobody.c: started as root, opened its files, then setgroups([65534]), setresgid and
/// setresuid to 65534, kept only CAP_NET_BIND_SERVICE (effective, inheritable, ambient) and
/// CAP_NET_RAW (permitted), dropped SYS_BOOT and MKNOD from the bounding set. After the
/// restore: the Uid/Gid/Groups/Cap* lines of /proc/PID/status are as before (and as
/// intended), and the workload finds from inside the same ids, groups, capget sets,
/// CapBnd/CapAmb, dumpable flag, securebits, cwd and fds (a root-owned world-readable file at
/// offset 5, a file it created in its own directory), and can use them.
#[test]
fn unprivileged_identity_capabilities_and_files_survive_restore() {
    let mut w = Workload::spawn("nobody", &[]);
    let before = w.snapshot();
    let expected: Vec<(String, String)> = [
        ("Uid", format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")),
        ("Gid", format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}")),
        ("Groups", NOBODY.to_string()),
        ("CapInh", bits(&[10])),
        ("CapPrm", bits(&[10, 13])),
        ("CapEff", bits(&[10])),
        ("CapAmb", bits(&[10])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in &expected {
        assert_eq!(
            before.entries.get(&format!("status:{k}")),
            Some(v),
            "the workload did not set up {k} as intended before the dump; READY: {}",
            w.ready_line
        );
    }
    let bnd = u64::from_str_radix(&before.entries["status:CapBnd"], 16).unwrap();
    assert_eq!(bnd & (1 << 22 | 1 << 27), 0, "CAP_SYS_BOOT / CAP_MKNOD still in the bounding set before the dump");
    let creds_before = cred_lines(&before);
    // /proc/PID/* belongs to the process's uid while it is dumpable, to root otherwise
    let proc_owner = |pid: i32| std::fs::metadata(format!("/proc/{pid}/status")).map(|m| (m.uid(), m.gid())).ok();
    let owner_before = proc_owner(w.pid);
    assert_eq!(owner_before, Some((65534, 65534)), "/proc/{}/status owner before the dump (dumpable process of 65534)", w.pid);

    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    let creds_after = cred_lines(&after);
    let mut extra = Vec::new();
    let owner_after = proc_owner(w.pid);
    if owner_after != owner_before {
        extra.push(format!(
            "/proc/{}/status is owned by {owner_after:?} after restore, {owner_before:?} before: the process is no longer dumpable",
            w.pid
        ));
    }
    for ((k, b), (_, a)) in creds_before.iter().zip(&creds_after) {
        if a != b {
            extra.push(format!("/proc/{}/status {k}: before {b:?} | after {a:?}", w.pid));
        }
    }
    // status:* (Uid, Gid, Groups, Cap*), fd targets and fdinfo, cwd... are compared too
    w.verify_restored(&before, &after, &[], extra);
}

/// nobody.c secret: the process opened DIR/secret (root, mode 0600) while it was root and
/// kept it after dropping to 65534, as daemons do with their logs. From its sealed image the
/// restore gives it back (opened as root, only because it is the very file, device and
/// inode, the image names): same fd, file, access mode and offset, and the program's own
/// checks pass.
#[test]
fn a_root_only_file_held_by_an_unprivileged_process_comes_back_from_a_sealed_image() {
    let mut w = Workload::spawn("nobody", &["secret"]);
    let secret = w.dir.path.join("secret");
    assert_eq!(std::fs::read_link(format!("/proc/{}/fd/12", w.pid)).unwrap(), secret, "fd 12 is not the secret file");
    assert_eq!(proc_status_field(w.pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"));
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// The same image taken on trust (--trust-image: its seal is not checked, so nothing vouches
/// for what it names): files are opened with the image's credentials only, the root-only file
/// cannot be, and the restore fails naming it and EACCES, leaving no process behind.
#[test]
fn a_root_only_file_of_an_unprivileged_process_is_refused_from_an_image_taken_on_trust() {
    let mut w = Workload::spawn("nobody", &["secret"]);
    let secret_s = w.dir.path.join("secret").to_string_lossy().into_owned();
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["restore", "-d", "--trust-image", "-D", &img]);
    let mut problems = Vec::new();
    if out.success() {
        problems.push("restore succeeded although the process cannot open the root-only file".to_string());
    }
    let text = out.text();
    if !text.contains(&secret_s) {
        problems.push(format!("the error does not name the file {secret_s}"));
    }
    if !(text.to_lowercase().contains("permission denied") || text.contains("EACCES")) {
        problems.push("the error does not say 'Permission denied' / EACCES".to_string());
    }
    if !wait_gone(w.pid, Duration::from_secs(3)) {
        problems.push(format!("pid {} exists after the failed restore", w.pid));
    }
    assert!(problems.is_empty(), "{}\n{out}", problems.join("\n"));
}

/// threadcreds.c: a thread that dropped to 65534 with raw system calls beside a root main
/// thread comes back with its own ids and no capabilities (restoring the process's
/// credentials in every thread would hand it root), checked from inside each thread and in
/// /proc/PID/task/TID/status.
#[test]
fn a_thread_with_its_own_credentials_keeps_them() {
    let mut w = Workload::spawn("threadcreds", &[]);
    let before = w.snapshot();
    let worker: i32 = w.ready_field("worker").parse().unwrap();
    let uid_line = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{worker}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("CapEff:"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let worker_before = uid_line(w.pid);
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    let worker_after = uid_line(w.pid);
    let mut extra = Vec::new();
    if worker_after != worker_before {
        extra.push(format!("thread {worker}: before {worker_before}, after {worker_after}"));
    }
    w.verify_restored(&before, &after, &[], extra);
}
