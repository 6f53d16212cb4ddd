//! eventfd, signalfd, timerfd and memfd descriptions survive checkpoint/restore (workload
//! tests/workloads/fdkinds.c, one mode per kind). Mapped memfds and memfds open through several
//! descriptions: tests/restore_shared_kinds.rs.

mod common;
use common::*;
use std::fs;
use std::time::Duration;

/// Starts the workload in `mode` and waits until it sleeps in its wait-for-.go loop: the READY
/// line is in the status file a moment before the workload has finished writing it to its log
/// (an fd of the status file may still be open), and a snapshot must not catch that.
fn spawn_settled(mode: &str) -> Workload {
    let w = Workload::spawn("fdkinds", &[mode]);
    wait_in_syscall(w.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    w
}

/// fdinfo keys of `fds` named `keys`, for the ignore list of a /proc comparison.
fn fdinfo_keys(fds: &[i32], keys: &[&str]) -> Vec<String> {
    fds.iter().flat_map(|fd| keys.iter().map(move |k| format!("fdinfo:{fd}:{k}"))).collect()
}

fn fdinfo_field(snapshot: &ProcSnapshot, fd: i32, key: &str) -> String {
    snapshot.entries.get(&format!("fdinfo:{fd}:{key}")).cloned().unwrap_or_else(|| panic!("no fdinfo {key} for fd {fd}"))
}

/// "(sec, nsec)" of timerfd fdinfo, in seconds.
fn seconds(pair: &str) -> f64 {
    let (s, ns) = pair.trim_matches(['(', ')']).split_once(',').unwrap();
    s.trim().parse::<f64>().unwrap() + ns.trim().parse::<f64>().unwrap() / 1e9
}

/// eventfds: a counter above 32 bits (written after eventfd2), the largest counter an eventfd
/// holds, a semaphore eventfd (three reads of 1, then empty), an empty one, O_NONBLOCK and
/// close-on-exec as they were, and two fds sharing one eventfd (a read through one empties
/// the other). fdinfo (counter, semaphore flag, flags) is identical before and after; only the
/// kernel's eventfd-id differs.
#[test]
fn eventfd_counters_semaphore_mode_and_flags_survive_restore() {
    let mut w = spawn_settled("eventfd");
    let before = w.snapshot();
    assert_eq!(fdinfo_field(&before, 10, "eventfd-count"), "123456789ab");
    assert_eq!(fdinfo_field(&before, 11, "eventfd-semaphore"), "1");
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    let ignore = fdinfo_keys(&[10, 11, 12, 13, 14, 15], &["eventfd-id"]);
    let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
    w.verify_restored(&before, &after, &ignore, vec![]);
}

/// signalfds: their masks (fdinfo sigmask), O_NONBLOCK and close-on-exec; signals that were
/// blocked and pending at the dump (SIGUSR1 from kill, SIGRTMIN+1 from sigqueue with a value)
/// are read through the signalfd after restore with their sender and value; a signal sent after
/// restore reaches only the signalfd whose mask has it.
#[test]
fn signalfd_masks_and_pending_signals_survive_restore() {
    let mut w = spawn_settled("signalfd");
    let before = w.snapshot();
    assert_eq!(fdinfo_field(&before, 20, "sigmask"), "0000000400000200");
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// timerfds, with the process gone for a second between dump and restore:
/// - a relative 5 s one-shot resumes with the time it had left (the second does not count);
/// - a 20 ms periodic timer nobody read for 300 ms before the dump delivers those expirations
///   after restore (fdinfo showed 1 lazily before the dump, and shows them all after);
/// - an absolute CLOCK_REALTIME timer (with TFD_TIMER_CANCEL_ON_SET) whose moment passed while
///   the process did not exist expires at once after restore;
/// - an absolute CLOCK_BOOTTIME periodic timer counts every period since its first moment;
/// - a disarmed timer keeps its period, an expired one-shot its unread expiration, a never
///   armed one stays so; clocks, settime flags, periods and status flags are as before.
#[test]
fn timerfd_time_left_ticks_and_absolute_moments_survive_restore() {
    let mut w = spawn_settled("timerfd");
    std::thread::sleep(Duration::from_millis(300));
    let before = w.snapshot();
    assert_eq!(fdinfo_field(&before, 31, "ticks"), "1", "an expired periodic timer shows one tick until read");
    assert_eq!(fdinfo_field(&before, 32, "settime flags"), "03");
    w.dump();
    std::thread::sleep(Duration::from_millis(1000));
    w.restore_detached();
    let after = w.snapshot();
    let mut extra = Vec::new();
    let ticks31: u64 = fdinfo_field(&after, 31, "ticks").parse().unwrap();
    if ticks31 < 10 {
        extra.push(format!("timer 31 (20 ms period, 300 ms unread): fdinfo shows {ticks31} ticks after restore"));
    }
    let left30 = seconds(&fdinfo_field(&after, 30, "it_value"));
    let before30 = seconds(&fdinfo_field(&before, 30, "it_value"));
    // Had the second between dump and restore counted, a second less would be left.
    if !(left30 > before30 - 0.5 && left30 <= before30) {
        extra.push(format!("timer 30: {left30:.3} s left after restore, {before30:.3} s before the dump"));
    }
    if fdinfo_field(&after, 35, "ticks") != "1" {
        extra.push(format!("timer 35 (expired one-shot): ticks {}", fdinfo_field(&after, 35, "ticks")));
    }
    let ignore = fdinfo_keys(&[30, 31, 32, 33, 34, 35, 36], &["ticks", "it_value"]);
    let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
    w.verify_restored(&before, &after, &ignore, extra);
}

/// memfds: name, contents (a pattern, a 3 MiB hole that stays a hole, a tail), size, seals
/// (shrink/grow; write+seal; none allowed; F_SEAL_EXEC from MFD_NOEXEC_SEAL), offsets (shared by
/// a dup), O_APPEND, mode, a read-only description, and mapping the memfd after restore works
/// (writes through the mapping reach the file; a write-sealed one cannot be mapped writable).
/// The contents are raw data files of the image, sparse, and listed with checksums in the
/// inventory; an empty memfd has none.
#[test]
fn memfd_contents_size_seals_offsets_and_mode_survive_restore() {
    let mut w = spawn_settled("memfd");
    let before = w.snapshot();
    w.dump();
    let mut extra = Vec::new();
    let data: Vec<String> = fs::read_dir(&w.image_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("memfd-"))
        .collect();
    // 40 (and its dup 41), 42, 43, 46 have contents; 44 and 45 are empty.
    if data.len() != 4 {
        extra.push(format!("expected 4 memfd data files in the image, found {data:?}"));
    }
    let show = crust(["show", "-D", &w.image_dir.to_string_lossy()]);
    show.assert_success();
    for name in &data {
        if !show.stdout.contains(name.as_str()) {
            extra.push(format!("crust show does not list the data file {name} (not in the inventory?)"));
        }
        let meta = fs::metadata(w.image_dir.join(name)).unwrap();
        use std::os::unix::fs::MetadataExt;
        if meta.len() == 4 << 20 && meta.blocks() * 512 >= 1 << 20 {
            extra.push(format!("{name}: the 4 MiB memfd with a 3 MiB hole takes {} bytes", meta.blocks() * 512));
        }
    }
    w.restore_detached();
    let after = w.snapshot();
    let ignore = fdinfo_keys(&[40, 41, 42, 43, 44, 45, 46], &["ino"]);
    let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
    w.verify_restored(&before, &after, &ignore, extra);
}

/// kcmp(KCMP_FILE): one open file description?
fn same_description(p1: i32, f1: i32, p2: i32, f2: i32) -> bool {
    // SAFETY: kcmp takes integers only.
    unsafe {
        libc::syscall(libc::SYS_kcmp, p1, p2, 0 /* KCMP_FILE */, f1, f2) == 0
    }
}

/// An eventfd, a memfd and a timerfd shared by a parent and its child (inherited across fork)
/// are one description each again after restore (kcmp), and from inside: the child adds to the
/// eventfd, writes at the memfd's shared offset and reads the timer's expiration, and the
/// parent sees all three.
#[test]
fn eventfd_memfd_and_timerfd_shared_with_a_child_stay_shared() {
    let mut w = spawn_settled("shared");
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
        .diff(
            &child_after,
            &["fdinfo:10:eventfd-id", "fdinfo:40:ino", "fdinfo:35:ticks", "fdinfo:35:it_value", "status:PPid", "status:State"],
        )
        .into_iter()
        .map(|d| format!("child: {d}"))
        .collect();
    for fd in [10, 35, 40] {
        if !same_description(w.pid, fd, child, fd) {
            extra.push(format!("fd {fd} of the parent and of the child are not one open file description"));
        }
    }
    let ignore = ["fdinfo:10:eventfd-id", "fdinfo:40:ino", "fdinfo:35:ticks", "fdinfo:35:it_value"];
    w.verify_restored(&before, &after, &ignore, extra);
}

/// A memfd data file damaged after the dump: restore refuses, naming the file, and creates no
/// process (the inventory checksums memfd contents like page files).
#[test]
fn restore_refuses_a_corrupted_memfd_data_file() {
    let mut w = Workload::spawn("fdkinds", &["memfd"]);
    w.dump();
    let name = fs::read_dir(&w.image_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("memfd-"))
        .expect("a memfd data file");
    let path = w.image_dir.join(&name);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let out = w.restore_detached_raw();
    out.assert_failure();
    eprintln!("{out}");
    assert!(out.text().contains(&name), "refusal does not name {name}:\n{out}");
    assert!(wait_gone(w.pid, Duration::from_secs(3)), "pid {} exists after the refused restore", w.pid);
}
