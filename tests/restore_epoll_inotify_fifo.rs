//! epoll, inotify and named FIFOs survive checkpoint/restore, and what crust cannot recreate
//! faithfully is refused with the process left running as it was.
//!
//! Each restore test starts a real workload (tests/workloads/evq_*.c), dumps it, checks it is
//! gone, restores it, compares /proc (the registrations and watches in fdinfo, apart from the
//! new inode numbers of pipes, and the usual per-process snapshot) and lets the workload check
//! from inside what epoll_wait, inotify reads and FIFO reads give.

mod common;
use common::*;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The registrations of epoll `fd` of `pid` as fdinfo shows them, without the target's inode
/// (pipes get new inodes), sorted (fdinfo lists them in kernel pointer order).
fn epoll_registrations(pid: i32, fd: i32) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            // tfd: N events: X data: Y pos:P ino:I sdev:S
            words.iter().take(6).copied().collect::<Vec<_>>().join(" ")
        })
        .collect();
    v.sort();
    v
}

/// The watches of inotify `fd` of `pid` as fdinfo shows them (same inodes after restore).
fn inotify_watches(pid: i32, fd: i32) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let mut v: Vec<String> = text.lines().filter(|l| l.starts_with("inotify ")).map(String::from).collect();
    v.sort();
    v
}

fn compare_lists(what: &str, before: &[String], after: &[String]) -> Vec<String> {
    if before == after {
        return Vec::new();
    }
    vec![format!("{what} differ:\n    before: {before:?}\n    after:  {after:?}")]
}

/// kcmp(KCMP_FILE): one open file description?
fn same_description(p1: i32, f1: i32, p2: i32, f2: i32) -> bool {
    // SAFETY: kcmp takes integer arguments only.
    unsafe {
        libc::syscall(libc::SYS_kcmp, p1, p2, 0 /* KCMP_FILE */, f1, f2) == 0
    }
}

/// Field `key=` of the READY line of `role` ("READY role ...").
fn role_field(status: &str, role: &str, key: &str) -> String {
    let prefix = format!("READY {role} ");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no READY line for {role}:\n{status}"));
    ready_field(line, key).unwrap_or_else(|| panic!("READY line of {role} lacks {key}=: {line}"))
}

/// The image as `crust show` prints it.
fn show(w: &Workload) -> String {
    let out = crust(["show", "-D", &w.image_dir.to_string_lossy()]);
    out.assert_success();
    out.stdout
}

/// After a dump of a two-process tree: the root was reaped by the harness; the child, now
/// ours (we are a subreaper), must end too.
#[track_caller]
fn reap_dumped_child(child: i32) {
    assert!(wait_gone(child, GONE_TIMEOUT), "child {child} still exists after the dump: {:?}", proc_state(child));
}

/// The dump fails naming the pid and `words`, and leaves the process running.
#[track_caller]
fn assert_refused(w: &Workload, words: &[&str]) {
    let out = w.dump_with(&[]);
    out.assert_failure();
    eprintln!("{out}");
    let text = out.text();
    assert!(has_token(&text, &w.pid.to_string()), "refusal does not name pid {}:\n{out}", w.pid);
    for word in words {
        assert!(text.contains(word), "refusal does not say {word:?}:\n{out}");
    }
    assert_running_untouched(w.pid, "after the refused dump");
}

mod restore_epoll_inotify_fifo {
    use super::*;

    /// evq_epoll: level-triggered, edge-triggered, one-shot and exclusive registrations over
    /// pipes, a nested epoll and one file registered under two fd numbers. The registrations
    /// (fd, events, data) are the same in fdinfo after restore, and epoll_wait reports exactly
    /// what it would have: the ready level-triggered fds with their data, not the fired
    /// one-shot until it is re-armed, the armed one-shot once, the edge that was already
    /// reported not again, the edge that was not reported yet once, the nested epoll once its
    /// target is ready; status flags (O_NONBLOCK) and FD_CLOEXEC as before.
    #[test]
    fn epoll_registrations_data_and_pending_events_survive() {
        let mut w = Workload::spawn("evq_epoll", &[]);
        let epolls: Vec<i32> = ["e1", "e2", "e3", "e4", "e5", "e7"].iter().map(|k| w.ready_field(k).parse().unwrap()).collect();
        let regs_before: Vec<Vec<String>> = epolls.iter().map(|fd| epoll_registrations(w.pid, *fd)).collect();
        assert_eq!(regs_before[0].len(), 5, "test setup: E1 should have 5 registrations: {:?}", regs_before[0]);
        let before = w.snapshot();
        w.dump();
        let image = show(&w);
        w.restore_detached();
        let after = w.snapshot();
        let mut problems = Vec::new();
        for (fd, regs) in epolls.iter().zip(&regs_before) {
            problems.extend(compare_lists(&format!("registrations of epoll fd {fd}"), regs, &epoll_registrations(w.pid, *fd)));
        }
        let compact: String = image.chars().filter(|c| !c.is_whitespace()).collect();
        if !compact.contains("\"consumed\":true") {
            problems.push(format!("the image marks no registration as consumed:\n{image}"));
        }
        let ignore: Vec<String> = epolls.iter().map(|fd| format!("fdinfo:{fd}:tfd")).collect();
        let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
        w.verify_restored(&before, &after, &ignore, problems);
    }

    /// evq_epoll_fork: an epoll created by the parent and shared with its child after fork,
    /// with registrations by both: one from before the fork, and one by each afterwards on its
    /// own pipe, both under the same fd number (so the epoll has two registrations with one
    /// target number, each valid only in one process, and the image names both processes as
    /// registering). After restore the two fds are one open file description again (kcmp),
    /// every registration is in it, and each process sees the other's writes through it.
    #[test]
    fn epoll_shared_by_parent_and_child_keeps_both_registrations() {
        let mut w = Workload::spawn("evq_epoll_fork", &[]);
        w.wait_status_line("READY parent ", READY_TIMEOUT);
        let status = w.status_text();
        let child: i32 = role_field(&status, "parent", "child").parse().unwrap();
        let e: i32 = role_field(&status, "parent", "e").parse().unwrap();
        assert_eq!(role_field(&status, "child", "e"), e.to_string());
        assert!(same_description(w.pid, e, child, e), "test setup: the epoll is not shared");
        let (pbr, pcr) = (role_field(&status, "parent", "pbr"), role_field(&status, "child", "pcr"));
        assert_eq!(pbr, pcr, "test setup: the two pipes should have the same fd numbers");
        let regs_before = epoll_registrations(w.pid, e);
        assert_eq!(regs_before.len(), 3, "test setup: {regs_before:?}");
        let before = w.snapshot();
        let child_before = ProcSnapshot::take(child);
        w.dump();
        reap_dumped_child(child);
        let image: String = show(&w).chars().filter(|c| !c.is_whitespace()).collect();
        for pid in [w.pid, child] {
            assert!(image.contains(&format!("\"registered_by\":{pid}")), "the image does not have pid {pid} register a target:\n{image}");
        }
        w.restore_detached();
        w.own(child);
        let after = w.snapshot();
        let mut problems = Vec::new();
        if proc_status_field(child, "PPid") != Some(w.pid.to_string()) {
            problems.push(format!("child {child} is not the restored parent's child: PPid {:?}", proc_status_field(child, "PPid")));
        } else {
            let child_after = ProcSnapshot::take(child);
            let ignore = [format!("fdinfo:{e}:tfd")];
            problems.extend(proc_problems(&child_before, &child_after, &[&ignore[0]]).into_iter().map(|p| format!("child: {p}")));
        }
        if !same_description(w.pid, e, child, e) {
            problems.push("the parent's and the child's epoll fds are not one description after restore".into());
        }
        problems.extend(compare_lists("registrations of the shared epoll", &regs_before, &epoll_registrations(w.pid, e)));
        let ignore = format!("fdinfo:{e}:tfd");
        let r = w.verify_restored(&before, &after, &[&ignore], problems);
        assert!(r.status_text.contains("PASS child "), "no PASS from the child:\n{}", r.status_text);
    }

    /// evq_inotify: watches on a directory and a file with wds 3 and 5 (1, 2 and 4 were
    /// removed), IN_EXCL_UNLINK and IN_ONESHOT among the flags, the inotify in an epoll. After
    /// restore fdinfo shows the same watches (wd, inode, device, mask, file handle), nothing is
    /// queued, and events arrive with the same wd numbers: IN_CREATE for the directory,
    /// IN_MODIFY then IN_IGNORED for the one-shot file watch; the epoll reports the inotify.
    #[test]
    fn inotify_watches_keep_their_numbers_and_deliver_events() {
        let mut w = Workload::spawn("evq_inotify", &[]);
        let inotify: i32 = w.ready_field("in").parse().unwrap();
        let e: i32 = w.ready_field("e").parse().unwrap();
        let watches_before = inotify_watches(w.pid, inotify);
        assert_eq!(watches_before.len(), 2, "test setup: {watches_before:?}");
        let regs_before = epoll_registrations(w.pid, e);
        let before = w.snapshot();
        w.dump();
        w.restore_detached();
        let after = w.snapshot();
        let mut problems = compare_lists("inotify watches", &watches_before, &inotify_watches(w.pid, inotify));
        problems.extend(compare_lists("registrations of the epoll", &regs_before, &epoll_registrations(w.pid, e)));
        w.verify_restored(&before, &after, &[], problems);
    }

    /// evq_fifo: a FIFO between a parent (writer, 128 KiB buffer, 70000 bytes unread) and its
    /// child (blocking reader, in an epoll), a reader that never saw a writer (no POLLHUP),
    /// a reader whose writer came and went (POLLIN|POLLHUP, its bytes, then EOF), an O_RDWR
    /// description with bytes. After restore each is opened by path on the same inode with
    /// its flags, its bytes and buffer size, its hang-up state; the child reads exactly the
    /// parent's bytes and then EOF when the parent closes its end.
    #[test]
    fn fifos_keep_their_bytes_size_and_hangup_state() {
        let mut w = Workload::spawn("evq_fifo", &[]);
        w.wait_status_line("READY parent ", READY_TIMEOUT);
        let status = w.status_text();
        let child: i32 = role_field(&status, "parent", "child").parse().unwrap();
        let (wfd, rfd): (i32, i32) =
            (role_field(&status, "parent", "w").parse().unwrap(), role_field(&status, "child", "r").parse().unwrap());
        let ce: i32 = role_field(&status, "child", "e").parse().unwrap();
        let link = |pid: i32, fd: i32| fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(link(w.pid, wfd), link(child, rfd), "test setup: not the same FIFO");
        let regs_before = epoll_registrations(child, ce);
        let before = w.snapshot();
        let child_before = ProcSnapshot::take(child);
        w.dump();
        reap_dumped_child(child);
        w.restore_detached();
        w.own(child);
        let after = w.snapshot();
        let mut problems = Vec::new();
        if proc_status_field(child, "PPid") != Some(w.pid.to_string()) {
            problems.push(format!("child {child} is not the restored parent's child: PPid {:?}", proc_status_field(child, "PPid")));
        } else {
            problems.extend(proc_problems(&child_before, &ProcSnapshot::take(child), &[]).into_iter().map(|p| format!("child: {p}")));
            problems.extend(compare_lists("the child's epoll registrations", &regs_before, &epoll_registrations(child, ce)));
        }
        let r = w.verify_restored(&before, &after, &[], problems);
        assert!(r.status_text.contains("PASS child "), "no PASS from the child:\n{}", r.status_text);
    }

    /// `crust dump -R` of each workload leaves its state exactly as it was: every workload
    /// still PASSes its own checks afterwards (the epolls report what they reported, no
    /// inotify event was queued by finding the watched paths, the FIFO bytes are all there).
    #[test]
    fn dump_leave_running_changes_nothing_in_epoll_inotify_and_fifos() {
        for name in ["evq_epoll", "evq_inotify", "evq_fifo"] {
            let mut w = Workload::spawn(name, &[]);
            if name == "evq_fifo" {
                w.wait_status_line("READY parent ", READY_TIMEOUT);
            }
            let out = w.dump_with(&["-R"]);
            assert!(out.success(), "{name}: dump -R failed:\n{out}");
            assert_running_untouched(w.pid, &format!("{name} after dump -R"));
            let r = w.go();
            r.assert_pass();
        }
    }

    /// An epoll registration whose fd was closed and whose file no fd refers to any more (the
    /// pipe is kept alive in flight in a socket; a dup'ed one is restored: see
    /// tests/restore_fd_tables.rs): dump refuses naming pid, the epoll's fd and the target fd;
    /// the registration still works afterwards.
    #[test]
    fn dump_refuses_an_epoll_registration_whose_fd_was_closed() {
        let mut w = Workload::spawn("evq_refuse", &["stale"]);
        let (e, t) = (w.ready_field("e"), w.ready_field("target"));
        assert_refused(&w, &["epoll", &format!("fd {e}"), &format!("target fd {t}")]);
        w.go().assert_pass();
    }

    /// An edge-triggered registration whose edge was reported, next to a ready level-triggered
    /// one: crust cannot tell which edges are pending, and refuses; the consumed edge stays
    /// consumed.
    #[test]
    fn dump_refuses_edge_triggered_registrations_it_cannot_judge() {
        let mut w = Workload::spawn("evq_refuse", &["ambiguous"]);
        let (e, t) = (w.ready_field("e"), w.ready_field("target"));
        assert_refused(&w, &["epoll", &format!("fd {e}"), "edge-triggered", &format!("fd {t}")]);
        w.go().assert_pass();
    }

    /// A one-shot registration that fired, on an inotify whose event was read since: it can
    /// only be recreated by letting it fire, which needs a ready file (crust makes an empty pipe
    /// ready for a moment, not an inotify); dump refuses, and the registration is still
    /// disabled (and can be re-armed) afterwards.
    #[test]
    fn dump_refuses_a_fired_one_shot_on_an_idle_file() {
        let mut w = Workload::spawn("evq_refuse", &["oneshot"]);
        let (e, t) = (w.ready_field("e"), w.ready_field("target"));
        assert_refused(&w, &["epoll", &format!("fd {e}"), "one-shot", &format!("fd {t}")]);
        w.go().assert_pass();
    }

    /// An inotify with an event queued: dump refuses naming pid, fd and the queue; the event
    /// is still there to be read afterwards.
    #[test]
    fn dump_refuses_an_inotify_with_queued_events() {
        let mut w = Workload::spawn("evq_refuse", &["queued"]);
        let fd = w.ready_field("in");
        assert_refused(&w, &["inotify", &format!("fd {fd}"), "queued"]);
        w.go().assert_pass();
    }

    /// An epoll also held by a process outside the tree (the test, through pidfd_getfd, as
    /// SCM_RIGHTS would do it): after a restore the two could no longer share it; dump refuses
    /// naming both holders, and the epoll still works.
    #[test]
    fn dump_refuses_an_epoll_held_outside_the_tree() {
        let mut w = Workload::spawn("evq_refuse", &["shared"]);
        let e: i32 = w.ready_field("e").parse().unwrap();
        // SAFETY: pidfd_open and pidfd_getfd take integers; each returned fd is owned at once.
        let copy = unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, w.pid, 0);
            assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
            let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), e, 0);
            assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd as i32)
        };
        let me = std::process::id().to_string();
        assert_refused(&w, &["epoll", &format!("fd {e}"), &format!("pid {me}")]);
        w.go().assert_pass();
        drop(copy);
    }

    /// A FIFO also held by a process outside the tree (the test itself, which writes into it):
    /// dump refuses naming pid, fd, the FIFO and the other holder; the reader then reads what
    /// the test wrote.
    #[test]
    fn dump_refuses_a_fifo_held_outside_the_tree() {
        let mut w = Workload::spawn("evq_refuse", &["outside"]);
        let (r, path) = (w.ready_field("r"), w.ready_field("path"));
        let fd = {
            let c = std::ffi::CString::new(path.clone()).unwrap();
            // SAFETY: open of a NUL-terminated path; the fd is owned right away.
            let raw = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) };
            assert!(raw >= 0, "opening {path} for writing: {}", std::io::Error::last_os_error());
            // SAFETY: `raw` is a fresh fd nobody else owns.
            unsafe { OwnedFd::from_raw_fd(raw) }
        };
        // SAFETY: write of 7 bytes from a static string to an fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"outside".as_ptr().cast(), 7) };
        assert_eq!(n, 7);
        let me = std::process::id().to_string();
        assert_refused(&w, &["FIFO", &format!("fd {r}"), &path, &format!("pid {me}")]);
        w.go().assert_pass();
        drop(fd);
    }
}
