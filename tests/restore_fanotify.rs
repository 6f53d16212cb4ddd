//! fanotify groups with their inode marks survive checkpoint/restore; what crust cannot
//! recreate is refused by name, leaving the process as it was.

mod common;
use common::*;

/// The group's flags line and its marks as fdinfo shows them (inode, device, mark flags,
/// masks, file handle).
fn fanotify_fdinfo(pid: i32, fd: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let mut lines: Vec<String> = text.lines().filter(|l| l.starts_with("fanotify")).map(String::from).collect();
    lines.sort();
    lines
}

/// A notification group with a mark on a file, one on a directory with FAN_EVENT_ON_CHILD,
/// ignore-only marks surviving modification on two files in it (the older ignored mask and
/// FAN_MARK_IGNORE) and an evictable mark: restored with the same flags
/// and marks (fdinfo, from /proc), nothing queued by the restore, and from inside the events
/// a write and the opens give are exactly those the marks ask for.
#[test]
fn fanotify_group_comes_back_with_its_inode_marks() {
    let mut w = Workload::spawn("fanotify", &[]);
    let fan = w.ready_field("fan");
    let before = fanotify_fdinfo(w.pid, &fan);
    assert_eq!(before.len(), 6, "flags and five marks: {before:?}");
    w.dump();
    w.restore_detached();
    assert_eq!(fanotify_fdinfo(w.pid, &fan), before, "fdinfo of the group after restore");
    w.go().assert_pass();
}

/// A group reporting directory file handles and names (FAN_REPORT_DFID_NAME, events without
/// fds) comes back with those flags: a create in the marked directory is reported by name.
#[test]
fn fanotify_group_reporting_names_comes_back() {
    let mut w = Workload::spawn("fanotify", &["fid"]);
    let fan = w.ready_field("fan");
    let before = fanotify_fdinfo(w.pid, &fan);
    w.dump();
    w.restore_detached();
    assert_eq!(fanotify_fdinfo(w.pid, &fan), before);
    w.go().assert_pass();
}

/// dump -R leaves the group as it was (its queue empty, its marks in place).
#[test]
fn fanotify_dump_leave_running_leaves_the_group() {
    let mut w = Workload::spawn("fanotify", &[]);
    let fan = w.ready_field("fan");
    let before = fanotify_fdinfo(w.pid, &fan);
    w.dump_with(&["-R"]).assert_success();
    assert_eq!(fanotify_fdinfo(w.pid, &fan), before);
    w.go().assert_pass();
}

/// Refused by pid and fd, the process left as it was (its group's fdinfo unchanged).
/// The process dumped is the one READY names (the workload, or its child in mode `shared`).
fn refused(mode: &str, expect: &str) {
    let mut w = Workload::spawn("fanotify", &[mode]);
    let fan = w.ready_field("fan");
    let pid: i32 = w.ready_field("pid").parse().unwrap();
    w.own(pid);
    let before = fanotify_fdinfo(pid, &fan);
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["dump", "-t", &pid.to_string(), "-D", &img]);
    out.assert_failure();
    assert!(out.text().contains(&format!("pid {pid} fd {fan}: {expect}")), "{out}");
    assert!(pid_exists(pid) && proc_state(pid) != Some('Z'), "the refused dump harmed the process");
    assert_eq!(fanotify_fdinfo(pid, &fan), before);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct PrivateMount(std::path::PathBuf);

impl PrivateMount {
    fn new(dir: &std::path::Path) -> PrivateMount {
        let path = dir.join("mnt");
        std::fs::create_dir_all(&path).unwrap();
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mount reads three NUL-terminated strings, live locals; no data argument.
        let r = unsafe { libc::mount(c"tmpfs".as_ptr(), c.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(r, 0, "mount tmpfs on {}: {}", path.display(), std::io::Error::last_os_error());
        PrivateMount(path)
    }
}

impl Drop for PrivateMount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: umount2 reads one NUL-terminated string, a live local.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount mark (FAN_MARK_MOUNT) or a filesystem mark (FAN_MARK_FILESYSTEM), on a tmpfs of the
/// test's own (nobody else makes events there): restored on the same mount (same mount id in
/// fdinfo) or filesystem, reporting what happens on it.
fn mount_or_filesystem_mark(mode: &str) {
    let dir = TempDir::new("fanotify-mount");
    let mount = PrivateMount::new(&dir.path);
    let mut w = Workload::spawn("fanotify", &[mode, &mount.0.to_string_lossy()]);
    let fan = w.ready_field("fan");
    let before = fanotify_fdinfo(w.pid, &fan);
    assert_eq!(before.len(), 2, "flags and one mark: {before:?}");
    w.dump();
    w.restore_detached();
    assert_eq!(fanotify_fdinfo(w.pid, &fan), before, "fdinfo of the group after restore");
    w.go().assert_pass();
    drop(w);
}

#[test]
fn fanotify_mount_mark_comes_back() {
    mount_or_filesystem_mark("mount");
}

#[test]
fn fanotify_filesystem_mark_comes_back() {
    mount_or_filesystem_mark("fs");
}

/// A group of permission events: the restore's own opens would wait for its answers.
#[test]
fn fanotify_permission_group_is_refused() {
    refused("perm", "a fanotify group of permission events");
}

/// Events queued and not read: they cannot be put back.
#[test]
fn fanotify_with_events_queued_is_refused() {
    refused("queued", "fanotify has");
}

/// A group shared with a process outside the dump (the parent of the dumped child).
#[test]
fn fanotify_group_held_outside_the_tree_is_refused() {
    refused("shared", "this fanotify group is also held by pid");
}
