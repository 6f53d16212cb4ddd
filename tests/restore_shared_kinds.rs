//! Kernel objects without a path, shared through mappings and several descriptions, survive
//! checkpoint/restore (workload tests/workloads/shared_kinds.c, one mode per case): mapped
//! memfds (shared and private, with and without an fd left), a memfd open through several
//! descriptions, /dev/zero mapped shared across fork. Each is one object again after restore,
//! seen from inside (bytes written one way are read another) and from /proc (maps, fdinfo,
//! inodes of fds and mappings).

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Starts the workload in `mode` and waits until it sleeps in its wait-for-.go loop.
fn spawn_settled(mode: &str) -> Workload {
    let w = Workload::spawn("shared_kinds", &[mode]);
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    w
}

/// kcmp(KCMP_FILE): one open file description?
fn same_description(p1: i32, f1: i32, p2: i32, f2: i32) -> bool {
    // SAFETY: kcmp takes integers only.
    unsafe {
        libc::syscall(libc::SYS_kcmp, p1, p2, 0 /* KCMP_FILE */, f1, f2) == 0
    }
}

/// The inode of /proc/PID/fd/FD or of a /proc/PID/map_files entry.
fn inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}")).ino()
}

/// The /proc/PID/map_files entry of the mapping starting at `start` (hex, from the READY line).
fn map_file(pid: i32, start: &str) -> String {
    let start = parse_hex(start);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let range = maps
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .find(|r| u64::from_str_radix(r.split('-').next().unwrap(), 16).unwrap() == start)
        .unwrap_or_else(|| panic!("pid {pid} has no mapping at {start:#x}:\n{maps}"));
    format!("/proc/{pid}/map_files/{range}")
}

/// fdinfo inode lines of memfds differ (a new inode); everything else must not.
fn ino_keys(fds: &[i32]) -> Vec<String> {
    fds.iter().map(|fd| format!("fdinfo:{fd}:ino")).collect()
}

/// A memfd mapped shared and private, open through three descriptions (fds 40, 41 reopened
/// read-only, 42 reopened read-write non-blocking, each with its own offset), and two memfds
/// whose fds were closed, one mapped shared twice and one mapped private: after restore the
/// three fds and both mappings are one inode (the workload writes through one fd and reads
/// through the others and the mapping; the private mapping keeps its own page and shows the
/// memfd's other pages), the two mappings of the orphan are one memfd, and /proc shows the same
/// maps, VmFlags, fd flags and offsets; the three fds are three descriptions (kcmp). A sealed
/// memfd (write, grow, shrink) open read-only and mapped shared read-only keeps its seals and
/// stays impossible to make writable.
#[test]
fn mapped_memfds_and_memfds_open_through_several_descriptions_are_one_inode_again() {
    let mut w = spawn_settled("memfd");
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    let pid = w.pid;
    let mut extra = Vec::new();
    let fd40 = inode(&format!("/proc/{pid}/fd/40"));
    for fd in [41, 42] {
        if inode(&format!("/proc/{pid}/fd/{fd}")) != fd40 {
            extra.push(format!("fd {fd} is not the inode of fd 40"));
        }
        if same_description(pid, 40, pid, fd) {
            extra.push(format!("fd {fd} and fd 40 are one description; they were two"));
        }
    }
    for key in ["a", "b"] {
        if inode(&map_file(pid, &w.ready_field(key))) != fd40 {
            extra.push(format!("mapping {key} is not the inode of fd 40"));
        }
    }
    if inode(&map_file(pid, &w.ready_field("c"))) != inode(&map_file(pid, &w.ready_field("d"))) {
        extra.push("mappings c and d of the orphan memfd are two inodes".into());
    }
    if inode(&map_file(pid, &w.ready_field("f"))) != inode(&format!("/proc/{pid}/fd/43")) {
        extra.push("mapping f of the sealed memfd is not the inode of fd 43".into());
    }
    let ignore = ino_keys(&[40, 41, 42, 43]);
    let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
    w.verify_restored(&before, &after, &ignore, extra);
}

/// A memfd mapped shared by a parent and the child it forked, the child holding its own
/// description of it (reopened through /proc/self/fd): after restore the parent's fd, the
/// child's fd and both mappings are one inode; the parent writes into its mapping and the child
/// sees it, the child writes through its fd and the parent sees it in its mapping and fd.
#[test]
fn memfd_mapped_by_a_parent_and_reopened_by_its_child_is_one_inode_again() {
    let mut w = spawn_settled("memfd-fork");
    let child: i32 = w.ready_field("child").parse().unwrap();
    w.own(child);
    wait_in_syscall(child, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    let child_before = ProcSnapshot::take(child);
    w.dump();
    assert!(wait_gone(child, Duration::from_secs(5)), "child {child} still exists after the dump");
    w.restore_detached();
    let child_after = ProcSnapshot::take(child);
    let after = w.snapshot();
    let mut extra: Vec<String> = child_before
        .diff(&child_after, &["fdinfo:40:ino", "fdinfo:41:ino", "status:PPid", "status:State"])
        .into_iter()
        .map(|d| format!("child: {d}"))
        .collect();
    let pid = w.pid;
    if inode(&format!("/proc/{pid}/fd/40")) != inode(&format!("/proc/{child}/fd/41")) {
        extra.push("the child's fd 41 is not the inode of the parent's fd 40".into());
    }
    if !same_description(pid, 40, child, 40) {
        extra.push("fd 40 of the parent and of the child are not one description".into());
    }
    if same_description(child, 40, child, 41) {
        extra.push("the child's fds 40 and 41 are one description; they were two".into());
    }
    w.verify_restored(&before, &after, &["fdinfo:40:ino"], extra);
}

/// /dev/zero mapped MAP_SHARED ("/dev/zero (deleted)", shmem) by a parent before it forked:
/// after restore both map one object again with its contents (untouched pages still zero);
/// each writes and the other sees it; /proc/PID/maps is the same in both.
#[test]
fn dev_zero_mapped_shared_across_fork_stays_shared() {
    let mut w = spawn_settled("devzero");
    let child: i32 = w.ready_field("child").parse().unwrap();
    w.own(child);
    wait_in_syscall(child, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    let child_before = ProcSnapshot::take(child);
    let start = w.ready_field("map");
    assert!(
        before.entries.values().any(|v| v.starts_with("rw-s") && v.contains("/dev/zero (deleted)")),
        "the workload's /dev/zero mapping is not shown as shared /dev/zero (deleted)"
    );
    w.dump();
    assert!(wait_gone(child, Duration::from_secs(5)), "child {child} still exists after the dump");
    w.restore_detached();
    let child_after = ProcSnapshot::take(child);
    let after = w.snapshot();
    let mut extra: Vec<String> =
        child_before.diff(&child_after, &["status:PPid", "status:State"]).into_iter().map(|d| format!("child: {d}")).collect();
    if inode(&map_file(w.pid, &start)) != inode(&map_file(child, &start)) {
        extra.push("parent and child map two objects; they mapped one".into());
    }
    w.verify_restored(&before, &after, &[], extra);
}

/// pidfds of children of the tree: one from CLONE_PIDFD, one from pidfd_open with O_NONBLOCK,
/// one of a zombie child, and one of the process itself with PIDFD_THREAD; the first is also
/// held by the second child, forked after it (one description again, opened after the first
/// child exists and before the second is forked), and an epoll watches the second. After
/// restore fdinfo (Pid, NSpid, flags, the epoll's registration) is the same, and from inside:
/// the non-blocking one says EAGAIN to waitid of a live child, pidfd_send_signal kills each live
/// child, the epoll reports the exit, waitid(P_PIDFD) reaps each with SIGTERM, and the zombie is
/// reaped through its pidfd with its exit status 7.
#[test]
fn pidfds_of_children_a_zombie_and_itself_survive_restore() {
    let mut w = spawn_settled("pidfd");
    let kids: Vec<i32> = w.ready_field("kids").split(',').map(|k| k.parse().unwrap()).collect();
    for kid in &kids[..2] {
        w.own(*kid);
    }
    let before = w.snapshot();
    for fd in [50, 51, 52, 53] {
        assert!(before.entries.get(&format!("fd:{fd}")).is_some_and(|l| l.starts_with("anon_inode:")), "fd {fd} is no pidfd");
    }
    w.dump();
    for kid in &kids {
        assert!(wait_gone(*kid, Duration::from_secs(5)), "child {kid} still exists after the dump");
    }
    w.restore_detached();
    let after = w.snapshot();
    let mut extra = Vec::new();
    for (fd, kid) in [(50, kids[0]), (51, kids[1]), (52, kids[2]), (53, w.pid)] {
        let pid = after.entries.get(&format!("fdinfo:{fd}:Pid")).cloned().unwrap_or_default();
        if pid != kid.to_string() {
            extra.push(format!("fd {fd}: fdinfo Pid {pid}, expected {kid}"));
        }
    }
    // The second child inherited fd 50 (the first child's pidfd) at its fork: one description.
    if !same_description(w.pid, 50, kids[1], 50) {
        extra.push(format!("fd 50 of pid {} and of its child {} are not one description", w.pid, kids[1]));
    }
    // The epoll's registration of fd 51: the same but for the pidfd's inode (a new process's).
    let registration = |snap: &ProcSnapshot| -> String {
        let line = snap.entries.get("fdinfo:55:tfd").cloned().unwrap_or_default();
        line.split_whitespace().filter(|w| !w.starts_with("ino:")).collect::<Vec<_>>().join(" ")
    };
    if registration(&before) != registration(&after) || registration(&after).is_empty() {
        extra.push(format!("epoll registration of the pidfd: before {:?}, after {:?}", registration(&before), registration(&after)));
    }
    if proc_state(kids[2]) != Some('Z') {
        extra.push(format!("the zombie child {} is {:?} after restore", kids[2], proc_state(kids[2])));
    }
    w.verify_restored(&before, &after, &["fdinfo:55:tfd"], extra);
}

/// A child's pidfd of its later sibling (which restore creates after it): the child gets a
/// pidfd of the sibling once every process exists; fdinfo shows the sibling's pid again, and the
/// child kills the sibling through it and sees it exit (poll).
#[test]
fn pidfd_of_a_later_sibling_survives_restore() {
    let mut w = spawn_settled("pidfd-sibling");
    let kids: Vec<i32> = w.ready_field("kids").split(',').map(|k| k.parse().unwrap()).collect();
    for kid in &kids {
        w.own(*kid);
    }
    wait_in_syscall(kids[0], SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    let holder_before = ProcSnapshot::take(kids[0]);
    assert_eq!(holder_before.entries.get("fdinfo:50:Pid"), Some(&kids[1].to_string()));
    w.dump();
    for kid in &kids {
        assert!(wait_gone(*kid, Duration::from_secs(5)), "child {kid} still exists after the dump");
    }
    w.restore_detached();
    let holder_after = ProcSnapshot::take(kids[0]);
    let after = w.snapshot();
    let extra: Vec<String> =
        holder_before.diff(&holder_after, &["status:PPid", "status:State"]).into_iter().map(|d| format!("first child: {d}")).collect();
    w.verify_restored(&before, &after, &[], extra);
}

/// Two AIO contexts (rings of one and of several pages), each used once and reaped, and a
/// child forked after io_setup (it maps the rings but has no context): after restore the rings
/// are at the same addresses (the context ids) with the same sizes, maps and VmFlags as
/// before, io_submit and io_getevents work on both ids, and the child's io_submit on them
/// still fails with EINVAL.
#[test]
fn aio_contexts_with_nothing_in_flight_come_back_at_their_ids() {
    let mut w = spawn_settled("aio");
    let child: i32 = w.ready_field("child").parse().unwrap();
    w.own(child);
    wait_in_syscall(child, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    let child_before = ProcSnapshot::take(child);
    let rings: Vec<String> = w.ready_field("ctx").split(',').map(|c| format!("{:x}", parse_hex(c))).collect();
    let shown = |snap: &ProcSnapshot| -> Vec<String> {
        rings
            .iter()
            .filter_map(|r| snap.entries.iter().find(|(k, _)| k.starts_with(&format!("maps:{r}-"))).map(|(k, v)| format!("{k} {v}")))
            .collect()
    };
    let rings_before = shown(&before);
    assert!(rings_before.len() == 2 && rings_before.iter().all(|l| l.contains("[aio]")), "rings before the dump: {rings_before:?}");
    w.dump();
    assert!(wait_gone(child, Duration::from_secs(5)), "child {child} still exists after the dump");
    w.restore_detached();
    let child_after = ProcSnapshot::take(child);
    let after = w.snapshot();
    let mut extra: Vec<String> = child_before
        .diff(&child_after, &["status:PPid", "status:State", "fdinfo:70:ino"])
        .into_iter()
        .map(|d| format!("child: {d}"))
        .collect();
    if shown(&after) != rings_before {
        extra.push(format!("rings before {rings_before:?}, after {:?}", shown(&after)));
    }
    w.verify_restored(&before, &after, &["fdinfo:70:ino"], extra);
}

/// An AIO context with a request in flight (a poll of an empty pipe) is refused by name, and
/// the request is still in flight afterwards: it completes when the pipe gets a byte.
#[test]
fn dump_refuses_an_aio_context_with_a_request_in_flight() {
    refused_without_fd("aio-inflight", "1 requests in flight");
}

/// An AIO context with two completed reads not reaped yet (after three reaped ones): after
/// restore the ring holds them (same ring in maps), io_getevents reaps both in order with their
/// results and filled buffers, and the context takes new requests.
#[test]
fn aio_completions_not_reaped_yet_come_back_in_order() {
    let mut w = spawn_settled("aio-unreaped");
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &["fdinfo:70:ino"], vec![]);
}

/// `dump -R` of a process whose AIO context holds completions not reaped: crust's probe of the
/// context leaves them there, and the program reaps them as if nothing happened.
#[test]
fn dump_leaves_an_aio_context_s_waiting_completions_in_place() {
    let mut w = spawn_settled("aio-unreaped");
    let out = w.dump_with(&["-R"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    w.go().assert_pass();
}

/// Open namespace files of the tree's own namespaces (net, uts, ipc, mnt, user) come back as
/// the restored process's own namespaces: fdinfo and links are the same (net:[N]...), fstat of
/// each fd is /proc/self/ns/X, setns works on them, close-on-exec as it was.
#[test]
fn namespace_files_of_the_tree_s_namespaces_survive_restore() {
    let mut w = spawn_settled("nsfd");
    let before = w.snapshot();
    let links = |pid: i32| -> Vec<String> {
        (60..=64).map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap().to_string_lossy().into_owned()).collect()
    };
    let links_before = links(w.pid);
    for (fd, name) in (60..=64).zip(["net:[", "uts:[", "ipc:[", "mnt:[", "user:["]) {
        assert!(links_before[fd as usize - 60].starts_with(name), "fd {fd} is no {name}...] namespace file");
    }
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    let mut extra = Vec::new();
    if links(w.pid) != links_before {
        extra.push(format!("namespace files before {links_before:?}, after {:?}", links(w.pid)));
    }
    w.verify_restored(&before, &after, &[], extra);
}

/// The dump of `mode` is refused naming the pid, `fd` and `what`; the process keeps running,
/// untraced, and reports PASS afterwards.
fn refused(mode: &str, fd: &str, what: &str) {
    refused_naming(mode, Some(fd), what)
}

/// [`refused`] of something that is not an fd (a mapping).
fn refused_without_fd(mode: &str, what: &str) {
    refused_naming(mode, None, what)
}

fn refused_naming(mode: &str, fd: Option<&str>, what: &str) {
    let mut w = spawn_settled(mode);
    let out = w.dump_with(&[]);
    out.assert_failure();
    eprintln!("{out}");
    let text = out.text();
    assert!(has_token(&text, &w.pid.to_string()), "refusal does not name pid {}:\n{out}", w.pid);
    if let Some(fd) = fd {
        assert!(has_token(&text, fd), "refusal does not name fd {fd}:\n{out}");
    }
    assert!(text.contains(what), "refusal does not say {what:?}:\n{out}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(proc_state(w.pid), Some('R' | 'S')), "pid {} is {:?} after the refused dump", w.pid, proc_state(w.pid));
    assert_eq!(proc_status_field(w.pid, "TracerPid").as_deref(), Some("0"), "pid {} still traced", w.pid);
    w.go().assert_pass();
}

/// A pidfd of a process outside the tree (the workload's parent) is refused by name.
#[test]
fn dump_refuses_a_pidfd_of_a_process_outside_the_tree() {
    refused("pidfd-outside", "50", "outside the dumped tree");
}

/// A namespace file of another network namespace than the process's own is refused by name.
#[test]
fn dump_refuses_a_namespace_file_of_another_namespace() {
    refused("nsfd-other", "60", "another net namespace");
}

/// A pidfd of a child that exited and was reaped ("Pid: -1") is refused by name.
#[test]
fn dump_refuses_a_pidfd_of_a_reaped_process() {
    refused("pidfd-reaped", "50", "exited and was reaped");
}

/// A PIDFD_THREAD pidfd of a second thread (given its thread once every thread exists): fdinfo
/// shows the thread's id and the flag again, and a signal sent through it is handled by that
/// thread.
#[test]
fn pidfd_of_a_second_thread_survives_restore() {
    let mut w = spawn_settled("pidfd-thread");
    let tid = w.ready_field("tid");
    let before = w.snapshot();
    assert_eq!(before.entries.get("fdinfo:50:Pid"), Some(&tid));
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// A PIDFD_THREAD pidfd of a second thread also held by a child is refused by name (the thread
/// exists only once every fd is placed; the description could not be shared again).
#[test]
fn dump_refuses_a_pidfd_of_a_thread_shared_by_two_processes() {
    refused("pidfd-thread-shared", "50", "shared by pids");
}

/// A pidfd the first child received (SCM_RIGHTS) of its later sibling, shared with the parent:
/// restore creates the holder before the pidfd's process and could not hand it down; refused
/// by name.
#[test]
fn dump_refuses_a_pidfd_shared_with_a_process_created_before_its_target() {
    refused("pidfd-passed", "50", "which restore creates before");
}

/// A memfd mapped writable and shared, then sealed with F_SEAL_FUTURE_WRITE (the kernel would
/// refuse that mapping now) is refused by name; the mapping stays writable for the process.
#[test]
fn dump_refuses_a_writable_shared_mapping_of_a_memfd_sealed_since() {
    refused_without_fd("memfd-futurewrite", "F_SEAL_FUTURE_WRITE");
}

/// A memfd also held by a process outside the tree (the restored memfd would be another) is
/// refused by name.
#[test]
fn dump_refuses_a_memfd_also_open_outside_the_tree() {
    refused_with_outsider("memfd-outside-fd", Some("40"), "also open in pid");
}

/// A memfd no fd of the tree holds, mapped by the tree and by a process outside it, is refused
/// by name.
#[test]
fn dump_refuses_a_memfd_also_mapped_outside_the_tree() {
    refused_with_outsider("memfd-outside-map", None, "also mapped by pid");
}

/// /dev/zero mapped shared by the tree and by a process outside it is refused by name.
#[test]
fn dump_refuses_shared_memory_also_mapped_outside_the_tree() {
    refused_with_outsider("devzero-outside", None, "also mapped by pid");
}

/// [`refused_naming`] for a mode whose process left a process outside the tree ("outsider=",
/// adopted by the test as subreaper), which also ends at .go.
fn refused_with_outsider(mode: &str, fd: Option<&str>, what: &str) {
    let mut w = spawn_settled(mode);
    let outsider: i32 = w.ready_field("outsider").parse().unwrap();
    w.own(outsider);
    let out = w.dump_with(&[]);
    out.assert_failure();
    eprintln!("{out}");
    let text = out.text();
    assert!(has_token(&text, &w.pid.to_string()), "refusal does not name pid {}:\n{out}", w.pid);
    if let Some(fd) = fd {
        assert!(has_token(&text, fd), "refusal does not name fd {fd}:\n{out}");
    }
    assert!(text.contains(what) && has_token(&text, &outsider.to_string()), "refusal does not say {what:?} {outsider}:\n{out}");
    assert_eq!(proc_status_field(w.pid, "TracerPid").as_deref(), Some("0"), "pid {} still traced", w.pid);
    w.go().assert_pass();
    assert!(wait_gone(outsider, Duration::from_secs(5)), "outsider {outsider} did not end at .go");
}

/// A hugetlbfs memfd (MFD_HUGETLB) is refused by name (skipped where the kernel has none).
#[test]
fn dump_refuses_a_hugetlbfs_memfd() {
    let probe = Workload::spawn("shared_kinds", &["memfd-hugetlb"]);
    if probe.ready_line.contains("skip") {
        eprintln!("skipped: {}", probe.ready_line);
        return;
    }
    drop(probe);
    refused("memfd-hugetlb", "40", "hugetlbfs memfd");
}

/// A child keeping the ring's mapping of an AIO context its parent destroyed (no context
/// behind it, nothing to inherit it from at restore) is refused by name.
#[test]
fn dump_refuses_an_aio_ring_without_its_context() {
    refused_without_fd("aio-lost-ring", "without its AIO context");
}

/// python3: a memfd mapped shared (mmap) and shared with a child across fork, a pidfd of the
/// child, an open /proc/self/ns/uts. After .go the parent marks the memfd, the child answers
/// through it and exits; the parent sees the answer, waits for the child through its pidfd
/// (poll, then waitid(P_PIDFD)) and checks the namespace file is its own uts namespace.
const PY_SHARED: &str = r#"
import mmap, os, select, sys, time
fd = os.memfd_create('py-shared')
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
m[0:5] = b'hello'
child = os.fork()
if child == 0:
    for _ in range(2000):
        if m[0:1] == b'P':
            m[1:2] = b'C'
            os._exit(0)
        time.sleep(0.01)
    os._exit(1)
pidfd = os.pidfd_open(child)
ns = os.open('/proc/self/ns/uts', os.O_RDONLY)
def status(line):
    with open('status', 'a') as f:
        f.write(line + '\n')
status('READY py child=%d' % child)
while not os.path.exists('status.go'):
    time.sleep(0.01)
fails = []
if m[0:5] != b'hello':
    fails.append('the mapping holds %r' % m[0:5])
m[0:1] = b'P'
p = select.poll()
p.register(pidfd, select.POLLIN)
if not p.poll(5000):
    fails.append('the pidfd did not report the child exit')
info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
if info is None or info.si_pid != child or info.si_status != 0:
    fails.append('waitid(P_PIDFD): %r' % (info,))
if m[1:2] != b'C':
    fails.append('the child answer is not in the mapping: %r' % m[0:2])
if os.pread(fd, 2, 0) != b'PC':
    fails.append('the memfd holds %r' % os.pread(fd, 2, 0))
if os.fstat(ns).st_ino != os.stat('/proc/self/ns/uts').st_ino:
    fails.append('the namespace file is not the process uts namespace')
status('FAIL ' + '; '.join(fails) if fails else 'PASS py')
sys.exit(1 if fails else 0)
"#;

/// A python3 program holding a mapped memfd shared with its child, a pidfd of the child and a
/// namespace file: restored, it goes on and everything works from inside (see PY_SHARED), and
/// /proc shows the same maps and fds.
#[test]
fn python_with_a_mapped_memfd_a_pidfd_and_a_namespace_file_goes_on_after_restore() {
    let mut w = Workload::spawn_program("py-shared", "python3", &["-c", PY_SHARED]);
    wait_until("python3 to be ready", Duration::from_secs(15), || file_written(&w.status_path));
    let child: i32 = ready_field(&w.status_text(), "child").expect("child= in the READY line").trim().parse().unwrap();
    w.own(child);
    // Both sleep in their loops (the status file is closed by then).
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    wait_in_syscall(child, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    let before = w.snapshot();
    w.dump();
    assert!(wait_gone(child, Duration::from_secs(5)), "child {child} still exists after the dump");
    w.restore_detached();
    let after = w.snapshot();
    let memfd_ino: Vec<String> = before.entries.keys().filter(|k| k.starts_with("fdinfo:") && k.ends_with(":ino")).cloned().collect();
    let ignore: Vec<&str> = memfd_ino.iter().map(String::as_str).collect();
    w.verify_restored(&before, &after, &ignore, vec![]);
}
