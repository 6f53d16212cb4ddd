//! `restore --lazy-pages`: the process runs before its memory is back; its pages come on demand
//! through userfaultfd while the rest is filled in the background, by crust and then by the
//! detached helper `crust-lazypages`, which exits when every page is in.

mod common;
use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FILL_TIMEOUT: Duration = Duration::from_secs(90);

/// Pids of `crust-lazypages` helpers serving `pid` (they hold a pidfd of it).
fn helpers_of(pid: i32) -> Vec<i32> {
    named_holding_pidfd_of("crust-lazypages", pid)
}

/// Pids of processes named `comm` that hold a pidfd of `pid`.
fn named_holding_pidfd_of(comm: &str, pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim() == comm).unwrap_or(false) {
            let fds = fs::read_dir(format!("/proc/{p}/fdinfo")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
            let serves = fds.iter().any(|f| {
                fs::read_to_string(f.path()).is_ok_and(|t| t.lines().any(|l| l.split_whitespace().eq(["Pid:", &pid.to_string()])))
            });
            if serves {
                out.push(p);
            }
        }
    }
    out
}

/// Waits (bounded) until no helper serves `pid`, and no guard watches it.
fn wait_no_helper(pid: i32) -> bool {
    let deadline = Instant::now() + FILL_TIMEOUT;
    while Instant::now() < deadline {
        // (A helper that has not named itself yet is still called crust.)
        let left = ["crust-lazypages", "crust-lazyguard", "crust"].iter().any(|c| !named_holding_pidfd_of(c, pid).is_empty());
        if !left {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The area starting at `start` in /proc/PID/smaps: (VmFlags words, Rss in kB).
fn area_of(pid: i32, start: u64) -> (Vec<String>, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    let (mut flags, mut rss) = (Vec::new(), u64::MAX);
    for line in text.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((s, _)) = range.split_once('-')
            && let Ok(s) = u64::from_str_radix(s, 16)
            && !line.starts_with(|c: char| c.is_ascii_uppercase())
        {
            inside = s == start;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            rss = v.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
        if let Some(v) = line.strip_prefix("VmFlags:") {
            flags = v.split_whitespace().map(String::from).collect();
        }
    }
    (flags, rss)
}

fn fd_targets(pid: i32) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read_link(e.path()).unwrap().to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

fn hex(w: &Workload, key: &str) -> u64 {
    u64::from_str_radix(&w.ready_field(key), 16).unwrap()
}

/// Waits for the VERIFIED line (or fails on FAIL / the process dying).
fn wait_verified(w: &Workload) {
    let deadline = Instant::now() + FILL_TIMEOUT;
    loop {
        let text = w.status_text();
        if text.lines().any(|l| l.starts_with("VERIFIED")) {
            return;
        }
        assert!(!text.lines().any(|l| l.starts_with("FAIL")), "wrong contents after a lazy restore:\n{text}\n{}", w.log_text());
        assert!(pid_exists(w.pid), "pid {} died during the lazy fill:\n{text}", w.pid);
        assert!(Instant::now() < deadline, "no VERIFIED line within {FILL_TIMEOUT:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything crust leaves behind once the fill is over: no helper, no tracer, no
/// userfaultfd registration, the image's fds only, and the untouched area still empty.
fn assert_nothing_of_crust_remains(w: &Workload, fds_before: &[(String, String)]) {
    let pid = w.pid;
    assert!(wait_no_helper(pid), "crust-lazypages still serves pid {pid} after {FILL_TIMEOUT:?}: {:?}", helpers_of(pid));
    assert_eq!(proc_status_field(pid, "TracerPid").as_deref(), Some("0"), "pid {pid} is still traced");
    let (flags, rss) = area_of(pid, hex(w, "area"));
    assert!(!flags.iter().any(|f| f == "um"), "the area is still registered with a userfaultfd: {flags:?}");
    assert_eq!(rss, w.ready_field("pages").parse::<u64>().unwrap() * 4, "the whole patterned area is resident");
    let (_, untouched_rss) = area_of(pid, hex(w, "untouched"));
    assert_eq!(untouched_rss, 0, "pages the program never touched were filled");
    assert_eq!(fd_targets(pid), fds_before, "the fd table differs from the original's");
}

/// 256 MiB restored with --lazy-pages (`attached`: crust waits for the process and serves its
/// pages itself; else -d): right after the resume, one thread reads every page in a scrambled
/// order while another reads them in order; every word is as it was dumped. Then the server
/// has ended and nothing of crust remains in or around the process.
fn lazy_restore_brings_every_page(attached: bool) {
    let mut w = Workload::spawn("lazy_pattern", &["256"]);
    let fds_before = fd_targets(w.pid);
    w.dump();
    w.restore_extra = vec!["--lazy-pages".into()];
    if attached {
        w.restore_attached();
    } else {
        w.restore_detached();
    }
    check_every_word_and_end(&mut w, &fds_before);
}

#[test]
fn lazy_restore_detached_brings_every_page_and_leaves_nothing_attached() {
    lazy_restore_brings_every_page(false);
}

/// Without -d the process exits with its own status once it has checked every page.
#[test]
fn lazy_restore_attached_serves_pages_while_crust_waits() {
    lazy_restore_brings_every_page(true);
}

/// The time khugepaged takes to scan `bytes` of memory: it scans `pages_to_scan` pages, then
/// sleeps `scan_sleep_millisecs`.
fn khugepaged_time_for(bytes: u64) -> Duration {
    let knob = |name: &str| -> u64 {
        let path = format!("/sys/kernel/mm/transparent_hugepage/khugepaged/{name}");
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().parse().unwrap()
    };
    let scans = (bytes / 4096).div_ceil(knob("pages_to_scan").max(1));
    Duration::from_millis(scans * knob("scan_sleep_millisecs"))
}

/// 64 MiB of lazy_pattern in huge pages (`mode`: see lazy_pattern.c), restored --lazy-pages:
/// the process runs, checks every word from inside while the fill runs, and once every page
/// is in the area holds exactly as many huge pages as before the dump (the stretches that were
/// huge are collapsed again); then nothing of crust remains.
fn lazy_restore_makes_the_huge_pages_huge_again(mode: &str) {
    let mut w = Workload::spawn("lazy_pattern", &["64", mode]);
    let fds_before = fd_targets(w.pid);
    let area = hex(&w, "area");
    let huge_before = area_huge_kib(w.pid, area);
    assert!(huge_before > 0, "test setup: no huge pages in the area before the dump");
    if mode == "collapse" {
        assert_eq!(huge_before, 32 * 1024, "test setup: the program collapsed half of its area");
    }
    w.dump();
    w.restore_extra = vec!["--lazy-pages".into()];
    w.restore_detached();
    fs::write(w.go_path(), b"go\n").unwrap();
    wait_verified(&w);
    // khugepaged would make an advised area huge again by itself once crust lets go, but
    // slowly: within half the time it needs for the whole area, only crust can have done it.
    let deadline = Instant::now() + FILL_TIMEOUT.min(khugepaged_time_for(64 << 20) / 2);
    while area_huge_kib(w.pid, area) != huge_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(area_huge_kib(w.pid, area), huge_before, "AnonHugePages of the area after the lazy fill (kB)");
    assert_nothing_of_crust_remains(&w, &fds_before);
    assert_eq!(area_huge_kib(w.pid, area), huge_before, "AnonHugePages once crust is gone (kB)");
    fs::write(format!("{}.end", w.status_path.display()), b"end\n").unwrap();
    w.go().assert_pass();
}

#[test]
fn lazy_restore_of_huge_pages_advised_makes_every_one_huge_again() {
    lazy_restore_makes_the_huge_pages_huge_again("huge");
}

/// The threads of `pid` and, for each, its TracerPid.
fn tasks_and_tracers(pid: i32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .map(|tid| {
            let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
            let tracer = status.lines().find_map(|l| l.strip_prefix("TracerPid:")).unwrap_or("?").trim().to_string();
            (tid, tracer)
        })
        .collect();
    out.sort();
    out
}

/// The POSIX locks `pid` holds, as /proc/locks shows them (type, file, range).
fn posix_locks_of(pid: i32) -> Vec<String> {
    let text = fs::read_to_string("/proc/locks").unwrap();
    let mut out: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&"POSIX") && f.get(3) == Some(&pid.to_string().as_str()))
        .map(|f| f.join(" "))
        .collect();
    out.sort();
    out
}

/// 64 MiB of huge pages (lazy_pattern `mode`: `huge`, or `huge-seccomp`, the same under a
/// seccomp filter) restored --lazy-pages by an attached crust, which serves the whole fill before
/// the program is let touch its memory; its log says how the 32 huge pages came back
/// (`moved=N collapsed=M`). Once the fill is over: as many huge pages as before, one thread with
/// no tracer, the areas exactly as before the dump (no staging area left), and every word right
/// from inside.
fn lazy_fill_of_huge_pages(mode: &str, moved: u32, collapsed: u32) {
    lazy_fill_of_huge_pages_with(mode, &[], moved, collapsed);
}

/// [`lazy_fill_of_huge_pages`] with more of crust's environment.
fn lazy_fill_of_huge_pages_with(mode: &str, env: &[(&str, &str)], moved: u32, collapsed: u32) {
    lazy_fill_of_huge_pages_around(mode, env, moved, collapsed, |_, _| ());
}

/// [`lazy_fill_of_huge_pages_with`], where `around(page file, crust's stderr)` runs between the
/// dump and the restore, and what it returns is kept until every check is done. Returns crust's
/// output, and what `around` returned.
fn lazy_fill_of_huge_pages_around<T>(
    mode: &str,
    env: &[(&str, &str)],
    moved: u32,
    collapsed: u32,
    around: impl FnOnce(std::path::PathBuf, std::path::PathBuf) -> T,
) -> (String, T) {
    let mut w = Workload::spawn("lazy_pattern", &["64", mode]);
    let (pid, area) = (w.pid, hex(&w, "area"));
    let huge_before = area_huge_kib(pid, area);
    assert_eq!(huge_before, 64 * 1024, "test setup: the area is all huge pages");
    let maps_before = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let tasks_before = tasks_and_tracers(pid);
    let locks_before = posix_locks_of(pid);
    if mode == "huge-locked" {
        assert_eq!(locks_before.len(), 1, "test setup: the program's POSIX lock in /proc/locks");
    }
    w.dump();
    w.restore_extra = vec!["--lazy-pages".into()];
    w.crust_env = vec![("CRUST_LOG".into(), "crust=debug".into())];
    w.crust_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let held = around(w.image_dir.join(format!("pages-{pid}.img")), w.dir.path.join("restore.stderr"));
    w.restore_attached();
    let said = "every huge page of the image is huge again";
    wait_until("crust's server to say the huge pages are in", FILL_TIMEOUT, || w.attached_output().contains(said));
    let log = w.attached_output();
    let line = log.lines().find(|l| l.contains(said)).unwrap();
    assert!(line.contains(&format!("moved={moved} collapsed={collapsed}")), "not moved={moved} collapsed={collapsed}: {line}");
    // The mover exits right after the fill (the thread is reaped by then: bounded wait).
    wait_until("the process to have its one thread again", Duration::from_secs(10), || tasks_and_tracers(pid) == tasks_before);
    assert_eq!(area_huge_kib(pid, area), huge_before, "AnonHugePages of the area after the lazy fill (kB)");
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), maps_before, "the areas differ from the original's");
    assert_eq!(tasks_and_tracers(pid), vec![(pid, "0".to_string())], "threads and their tracers");
    assert_eq!(posix_locks_of(pid), locks_before, "the process's POSIX locks (/proc/locks)");
    fs::write(format!("{}.end", w.status_path.display()), b"end\n").unwrap();
    w.go().assert_pass();
    assert!(w.status_text().lines().any(|l| l.starts_with("VERIFIED")), "{}", w.status_text());
    (log, held)
}

/// 64 MiB of 4 KiB pages restored --lazy-pages by an attached crust: the staging workers place
/// verified pages in the mover's staging area of 4 KiB pages and the mover moves them in
/// (crust says how much); once the fill is over the process has its one thread and its areas
/// exactly as before the dump (no staging area left), and every word is right from inside.
#[test]
fn lazy_restore_moves_4k_pages_in_and_the_mover_leaves_no_trace() {
    let kib = lazy_fill_of_4k_pages(&[]);
    assert!(kib >= 64 * 1024, "the mover moved {kib} KiB in, not the whole 64 MiB area");
}

/// The kernel refuses the second move (injected): the first group's pages were moved in, the
/// server copies the rest in place, and the process comes back just as exact.
#[test]
fn lazy_restore_copies_4k_pages_in_place_once_a_move_is_refused() {
    let kib = lazy_fill_of_4k_pages(&[("CRUST_FAULT", "lazy-move:2:fail")]);
    assert!(kib > 0 && kib < 64 * 1024, "the mover moved {kib} KiB in: all or nothing after a refusal");
}

/// [`lazy_restore_moves_4k_pages_in_and_the_mover_leaves_no_trace`] with more of crust's
/// environment; returns the KiB crust says the mover moved in.
fn lazy_fill_of_4k_pages(env: &[(&str, &str)]) -> u64 {
    let mut w = Workload::spawn("lazy_pattern", &["64"]);
    let pid = w.pid;
    let maps_before = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let tasks_before = tasks_and_tracers(pid);
    w.dump();
    w.restore_extra = vec!["--lazy-pages".into()];
    w.crust_env = vec![("CRUST_LOG".into(), "crust=debug".into())];
    w.crust_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    w.restore_attached();
    let said = "4 KiB pages moved in by the mover";
    wait_until("crust's server to say it moved 4 KiB pages in", FILL_TIMEOUT, || w.attached_output().contains(said));
    let log = w.attached_output();
    let line = log.lines().find(|l| l.contains(said)).unwrap();
    let kib: u64 = line.split("kib=").nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    wait_until("the process to have its one thread again", Duration::from_secs(10), || tasks_and_tracers(pid) == tasks_before);
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), maps_before, "the areas differ from the original's");
    fs::write(format!("{}.end", w.status_path.display()), b"end\n").unwrap();
    w.go().assert_pass();
    assert!(w.status_text().lines().any(|l| l.starts_with("VERIFIED")), "{}", w.status_text());
    kib
}

/// The process's own mover thread places each huge stretch whole (UFFDIO_MOVE, one copy):
/// nothing is collapsed, and it leaves no trace.
#[test]
fn lazy_restore_moves_huge_pages_in_whole_and_the_mover_leaves_no_trace() {
    lazy_fill_of_huge_pages("huge", 32, 0);
}

/// A stretch the kernel staged in 4 KiB pages (no free huge page; injected for the third):
/// moved like the others, then collapsed, so every stretch is huge again.
#[test]
fn lazy_restore_collapses_a_stretch_the_mover_placed_in_small_pages() {
    lazy_fill_of_huge_pages_with("huge", &[("CRUST_FAULT", "lazy-move-small:3:fail")], 31, 1);
}

/// The page file open for writing elsewhere during the restore: crust cannot hold a read lease
/// on it (the kernel refuses one while a writer exists), so the staging workers read each chunk
/// into crust's memory and check it there before writing it; every stretch is still moved.
#[test]
fn lazy_restore_stages_from_chunks_read_in_while_the_page_file_is_open_for_writing() {
    let (log, _writer) =
        lazy_fill_of_huge_pages_around("huge", &[], 32, 0, |pages, _| fs::OpenOptions::new().write(true).open(pages).unwrap());
    assert!(log.contains("no read lease on the page file (EAGAIN"), "crust did not say it could not lease the page file:\n{log}");
}

/// A writer opens the page file while the staging workers copy from their leased mapping of it
/// (the second group written from it, and held up 3 s before its check of the lease): crust
/// sees the lease broken and lets go of it, so the
/// writer's open returns long before the lease break time (45 s) and crust is not ended by the
/// break's signal; the group written meanwhile is staged again from chunks read in and checked,
/// and every stretch comes back whole and right.
#[test]
fn lazy_restore_lets_a_writer_of_the_page_file_in_and_stages_the_rest_from_chunks_read_in() {
    let env = [("CRUST_FAULT", "lazy-staged:2:sleep3000")];
    let (log, opener) = lazy_fill_of_huge_pages_around("huge", &env, 32, 0, |pages, stderr| {
        std::thread::spawn(move || {
            // The second group is written from the mapping, and held up before its check.
            let held_up = "sleep3000 at lazy-staged";
            wait_until("crust to hold up a staging worker", Duration::from_secs(60), || {
                fs::read_to_string(&stderr).is_ok_and(|t| t.contains(held_up))
            });
            let started = Instant::now();
            let file = fs::OpenOptions::new().write(true).open(pages).unwrap();
            drop(file);
            started.elapsed()
        })
    });
    let waited = opener.join().expect("the writer's thread");
    assert!(waited < Duration::from_secs(20), "the writer's open waited {waited:?}: crust held on to the lease");
    assert!(log.contains("read lease is broken"), "crust did not see the lease broken:\n{log}");
}

/// The mover's own fd table is a copy (no CLONE_FILES): the fds it closes release nothing of the
/// process's, whose POSIX lock (owned by its fd table) is still there after the fill.
#[test]
fn lazy_restore_mover_leaves_the_process_posix_locks_alone() {
    lazy_fill_of_huge_pages("huge-locked", 32, 0);
}

/// Under a seccomp filter no mover is made (its calls would go through the filter, which here
/// kills the process on close_range): the stretches are placed in 4 KiB pages and collapsed,
/// and the process comes back exact.
#[test]
fn lazy_restore_under_seccomp_makes_no_mover_and_collapses_instead() {
    lazy_fill_of_huge_pages("huge-seccomp", 0, 32);
}

/// The area is not advised: only the stretches the dump saw huge (the half the program
/// collapsed) are made huge, the others stay 4 KiB pages as they were.
#[test]
fn lazy_restore_makes_exactly_the_stretches_that_were_huge_huge_again() {
    lazy_restore_makes_the_huge_pages_huge_again("collapse");
}

/// A collapse that fails (no free huge page, injected for the third stretch): the stretch stays
/// in 4 KiB pages with the right contents (the process checks every word), every other one is
/// huge again, and the restore says so in the kernel log (the fill may end in the detached
/// helper), naming the pid and the errno. The area is not advised, so khugepaged leaves it as
/// it is. The stretches take the collapse path (no mover: CRUST_LAZY_NO_MOVE), as those of a
/// process under seccomp, or on a kernel without UFFDIO_MOVE, do.
#[test]
fn lazy_restore_keeps_right_contents_where_a_huge_page_cannot_be_had_and_says_so() {
    let mut w = Workload::spawn("lazy_pattern", &["64", "collapse"]);
    let area = hex(&w, "area");
    let huge_before = area_huge_kib(w.pid, area);
    assert_eq!(huge_before, 32 * 1024, "test setup: the program collapsed half of its area");
    w.dump();
    w.restore_extra = vec!["--lazy-pages".into()];
    w.crust_env = vec![("CRUST_FAULT".into(), "lazy-collapse:3:fail".into()), ("CRUST_LAZY_NO_MOVE".into(), "1".into())];
    w.restore_detached();
    fs::write(w.go_path(), b"go\n").unwrap();
    wait_verified(&w);
    assert!(wait_no_helper(w.pid), "crust-lazypages still serves pid {}", w.pid);
    assert_eq!(area_huge_kib(w.pid, area), huge_before - 2048, "AnonHugePages after the fill: all but the one stretch (kB)");
    let log =
        Command::new("dmesg").stdin(Stdio::null()).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let said = format!("pid {}: 1 of 16 huge pages stayed in 4 KiB pages (MADV_COLLAPSE: ENOMEM", w.pid);
    assert!(log.lines().any(|l| l.contains(&said)), "the kernel log does not say `{said}`");
    fs::write(format!("{}.end", w.status_path.display()), b"end\n").unwrap();
    w.go().assert_pass();
}

/// A page file damaged in one chunk: the lazily restored process is killed before it can see
/// a page of that chunk (it never reports its checks), and the failure names the file, the
/// field and the chunk's bytes; attached (crust says it) and detached (the restore, or the
/// helper through the kernel log, says it).
#[test]
fn lazy_restore_of_a_damaged_chunk_kills_the_tree_and_names_the_chunk() {
    let mut w = Workload::spawn("lazy_pattern", &["64"]);
    w.dump();
    let pages = w.image_dir.join(format!("pages-{}.img", w.pid));
    let mut bytes = fs::read(&pages).unwrap();
    let chunk = 40usize << 20;
    assert!(bytes.len() > chunk + (1 << 20), "test setup: page file of {} bytes", bytes.len());
    bytes[chunk + 123] ^= 0x5a;
    fs::write(&pages, &bytes).unwrap();
    let named = format!("bytes {}..{}", chunk, chunk + (1 << 20));
    let img = w.image_dir.to_string_lossy().into_owned();

    // Attached: the background fill reaches the chunk while the process waits for .go.
    let out = crust(["restore", "--lazy-pages", "-D", &img]);
    let text = out.text();
    assert!(!out.success(), "a damaged lazy restore succeeded:\n{out}");
    assert!(
        text.contains(&format!("pages-{}.img", w.pid)) && text.contains("chunk_blake3") && text.contains(&named),
        "the failure names the file, the field and the chunk:\n{out}"
    );
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "the restored process outlived a damaged chunk");
    assert!(!w.status_text().contains("VERIFIED"), "the process ran its checks on damaged memory");

    // Detached: the restore may return first; the helper kills the tree then.
    let started = Instant::now();
    let out = crust(["restore", "--lazy-pages", "-d", "-D", &img]);
    assert!(wait_gone(w.pid, FILL_TIMEOUT), "the restored process outlived a damaged chunk (detached)");
    if !out.success() {
        assert!(out.text().contains(&named), "the failure names the chunk:\n{out}");
    } else {
        let log = Command::new("dmesg").stdin(Stdio::null()).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let log = log.unwrap_or_default();
        let said = log.lines().any(|l| l.contains("crust-lazypages") && l.contains(&named));
        assert!(said, "the helper did not say which chunk in the kernel log ({:?} after the restore)", started.elapsed());
    }
    assert!(!w.status_text().contains("VERIFIED"), "the process ran its checks on damaged memory");
}

/// Python: 256 MiB patterned by page (advised MADV_HUGEPAGE when its argument is `huge`),
/// READY in `status`, then a wait for `status.go`: the start the lazy fill tests share.
macro_rules! patterned_until_go {
    () => {
        r#"
import mmap, os, sys, time
PAGES = 65536
m = mmap.mmap(-1, PAGES * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if len(sys.argv) > 1 and sys.argv[1] == 'huge':
    m.madvise(mmap.MADV_HUGEPAGE)
for i in range(PAGES):
    m[i * 4096:(i + 1) * 4096] = i.to_bytes(8, 'little') * 512
open('status', 'w').write('READY\n')
for _ in range(60000):
    if os.path.exists('status.go'):
        break
    time.sleep(0.005)
"#
    };
}

/// Python: 256 MiB of private anonymous memory, each page patterned by its number. After
/// `status.go` (right after the restore), it drops 4 MiB with madvise(MADV_DONTNEED) and forks
/// while the fill is still running; parent and child each check that every page holds its
/// pattern, and the dropped ones zeros (as without a lazy restore).
const FORK_AND_DROP: &str = concat!(
    patterned_until_go!(),
    r#"
DROP = range(2048, 3072)
m.madvise(mmap.MADV_DONTNEED, DROP.start * 4096, len(DROP) * 4096)
child = os.fork()
zero = bytes(4096)
bad = [i for i in range(PAGES) if m[i * 4096:(i + 1) * 4096] != (zero if i in DROP else i.to_bytes(8, 'little') * 512)]
who = 'child' if child == 0 else 'parent'
open('status.' + who, 'w').write(('PASS' if not bad else 'FAIL %d pages, first %s' % (len(bad), bad[:5])) + '\n')
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
time.sleep(600)
"#
);

/// A process that forks, and drops pages with madvise, while its lazy fill is running: the
/// child gets the parent's pages (the server follows the fork), the dropped pages read as
/// zeros in both (the server never fills a page the program dropped).
#[test]
fn lazy_fill_follows_a_fork_and_pages_the_program_drops() {
    let w = python_restored_lazily("lazy_fork", FORK_AND_DROP);
    for who in ["parent", "child"] {
        assert_result_passes(&w, &format!("status.{who}"));
    }
    assert!(wait_no_helper(w.pid), "crust-lazypages still serves pid {}", w.pid);
}

/// The same in huge pages (advised MADV_HUGEPAGE: the whole stretches inside the area are huge
/// pages), which the process's mover places whole during the fill while the program drops some
/// and forks (the staging area is not the child's: MADV_DONTFORK).
#[test]
fn lazy_fill_of_huge_pages_follows_a_fork_and_pages_the_program_drops() {
    let w = python_restored_lazily_with("lazy_fork_huge", FORK_AND_DROP, &["huge"]);
    for who in ["parent", "child"] {
        assert_result_passes(&w, &format!("status.{who}"));
    }
    assert!(wait_no_helper(w.pid), "crust-lazypages still serves pid {}", w.pid);
    assert_eq!(tasks_and_tracers(w.pid), vec![(w.pid, "0".to_string())], "threads and their tracers once the fill is over");
}

/// Python: 256 MiB of huge pages (advised MADV_HUGEPAGE) patterned by page; after `status.go`
/// it reads one page and exits with status 7 at once, while the lazy fill is still running.
const EXIT_DURING_FILL: &str = concat!(
    patterned_until_go!(),
    r#"
os._exit(7 if m[PAGES // 2 * 4096:PAGES // 2 * 4096 + 8] == (PAGES // 2).to_bytes(8, 'little') else 1)
"#
);

/// A process that exits while its mover thread is placing its huge pages (restored -d: the
/// detached helper traces the mover): the helper reaps the mover (its tracer must, or the
/// process's exit would never be reported), and the process's own exit status comes back.
#[test]
fn a_process_exiting_during_the_fill_of_its_huge_pages_is_reported_with_its_status() {
    let mut w = python_restored_lazily_waiting("lazy_exit_huge", EXIT_DURING_FILL, &["huge"]);
    let done = w.go();
    assert_eq!(done.exit, Exit::Code(7), "the restored process's exit:\n{}", done.log);
    assert!(wait_no_helper(w.pid), "crust-lazypages outlived the process");
}

/// A python3 program (which writes READY to `status`, then waits for `status.go`), dumped,
/// restored with --lazy-pages -d and told to go on.
fn python_restored_lazily(name: &str, program: &str) -> Workload {
    python_restored_lazily_with(name, program, &[])
}

/// [`python_restored_lazily`] with arguments for the program.
fn python_restored_lazily_with(name: &str, program: &str, args: &[&str]) -> Workload {
    let w = python_restored_lazily_waiting(name, program, args);
    fs::write(w.go_path(), b"go\n").unwrap();
    w
}

/// The program, dumped and restored with --lazy-pages -d, still waiting for `status.go`.
fn python_restored_lazily_waiting(name: &str, program: &str, args: &[&str]) -> Workload {
    let mut argv = vec!["-c", program];
    argv.extend_from_slice(args);
    let mut w = Workload::spawn_program(name, "python3", &argv);
    let deadline = Instant::now() + READY_TIMEOUT * 3;
    while !(file_written(&w.status_path) && w.status_text().starts_with("READY")) {
        assert!(Instant::now() < deadline, "the python workload did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    w.dump();
    w.restore_extra = vec!["--lazy-pages".into()];
    w.restore_detached();
    w
}

/// Waits for the result file `name` the restored program writes, and checks it says PASS.
fn assert_result_passes(w: &Workload, name: &str) {
    let path = w.dir.path.join(name);
    let deadline = Instant::now() + FILL_TIMEOUT;
    while !file_written(&path) {
        assert!(Instant::now() < deadline, "no {name} within {FILL_TIMEOUT:?}\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("PASS"), "{name}: {text}");
}

/// The page server killed while pages are still owed (the background fill is left out with a
/// test switch, so nearly every page is): crust killed during an attached lazy restore, and
/// the detached helper killed. Each time crust-lazyguard kills the restored process, which
/// never gets to read its memory (it never reports its checks), and nothing is left behind.
#[test]
fn killing_the_page_server_kills_the_restored_process_never_zeros() {
    killing_the_page_server_kills_the_restored_process(&[]);
}

/// The same with huge pages: the process has a mover thread, traced by the server (which it
/// dies with), parked while it changes hands.
#[test]
fn killing_the_page_server_of_huge_pages_kills_the_process_and_its_mover() {
    killing_the_page_server_kills_the_restored_process(&["huge"]);
}

fn killing_the_page_server_kills_the_restored_process(mode: &[&str]) {
    let mut args = vec!["64"];
    args.extend_from_slice(mode);
    let mut w = Workload::spawn("lazy_pattern", &args);
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    w.restore_extra = vec!["--lazy-pages".into()];
    w.crust_env = vec![("CRUST_LAZY_NO_FILL".into(), "1".into())];

    // crust itself, attached, serving the pages.
    w.restore_attached();
    let crust_pid = w.attached.as_ref().unwrap().child.id() as i32;
    // SAFETY: kill takes integers only; crust_pid is the crust this test started.
    assert_eq!(unsafe { libc::kill(crust_pid, libc::SIGKILL) }, 0);
    let mut attached = w.attached.take().unwrap();
    let _ = attached.child.wait();
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "pid {} outlived the crust serving its pages", w.pid);
    assert!(!w.status_text().contains("VERIFIED"), "the process read its memory without its server");
    assert!(wait_no_helper(w.pid), "crust-lazyguard outlived the kill");

    // The detached helper.
    let out = crust_env(["restore", "--lazy-pages", "-d", "-D", &img], &w.crust_env);
    assert!(out.success(), "{out}");
    // The helper names itself right after it starts: give it a moment.
    let deadline = Instant::now() + GONE_TIMEOUT;
    let mut helpers = helpers_of(w.pid);
    while helpers.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        helpers = helpers_of(w.pid);
    }
    assert_eq!(helpers.len(), 1, "one crust-lazypages serves pid {}: {helpers:?}", w.pid);
    // SAFETY: as above; the helper serves the process this test restored.
    assert_eq!(unsafe { libc::kill(helpers[0], libc::SIGKILL) }, 0);
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "pid {} outlived crust-lazypages", w.pid);
    assert!(!w.status_text().contains("VERIFIED"), "the process read its memory without its server");
}

/// Without --lazy-pages: 256 MiB placed by crust before the process runs (userfaultfd, both
/// cores, each chunk checked before its pages are placed); every word is as it was, and nothing
/// of crust remains (no userfaultfd registration, no fd).
#[test]
fn eager_restore_of_256_mib_verified_while_read_in_brings_every_word_back() {
    let mut w = Workload::spawn("lazy_pattern", &["256"]);
    let fds_before = fd_targets(w.pid);
    w.dump();
    w.restore_extra = vec!["-v3".into()];
    let out = w.restore_detached();
    assert!(out.text().contains("pages placed by crust"), "crust did not place the pages itself:\n{out}");
    check_every_word_and_end(&mut w, &fds_before);
}

/// One byte of the chunk at 40 MiB of the dumped page file changed: the restore is refused
/// naming the file, the field and the chunk, leaves no process, and the process never ran. The
/// page file is put back afterwards.
fn damaged_chunk_is_refused(w: &Workload) {
    let pages = w.image_dir.join(format!("pages-{}.img", w.pid));
    let good = fs::read(&pages).unwrap();
    let chunk = 40usize << 20;
    assert!(good.len() > chunk + (1 << 20), "test setup: page file of {} bytes", good.len());
    let mut bad = good.clone();
    bad[chunk + 4567] ^= 0x5a;
    fs::write(&pages, &bad).unwrap();
    let img = w.image_dir.to_string_lossy().into_owned();
    let out = crust(["restore", "-d", "-D", &img]);
    let named = format!("bytes {}..{}", chunk, chunk + (1 << 20));
    assert!(!out.success(), "a damaged chunk was restored:\n{out}");
    assert!(
        out.text().contains(&format!("pages-{}.img", w.pid)) && out.text().contains("chunk_blake3") && out.text().contains(&named),
        "the refusal names the file, the field and the chunk:\n{out}"
    );
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "the refused restore left pid {}", w.pid);
    assert!(!w.status_text().contains("VERIFIED"), "the process ran on damaged memory");
    fs::write(&pages, &good).unwrap();
}

/// Eager restore of 64 MiB whose pages crust places itself (userfaultfd, both cores), with
/// one byte of a chunk changed: refused naming the file, the field and the chunk's bytes; the
/// process never ran (no VERIFIED) and is gone; with the byte put back the image restores, every
/// word right.
#[test]
fn eager_restore_of_a_damaged_chunk_placed_by_crust_is_refused_naming_it() {
    let mut w = Workload::spawn("lazy_pattern", &["64"]);
    let fds_before = fd_targets(w.pid);
    w.dump();
    damaged_chunk_is_refused(&w);
    w.restore_detached();
    check_every_word_and_end(&mut w, &fds_before);
}

/// Eager restore of 64 MiB advised MADV_HUGEPAGE, whose pages crust writes itself
/// (process_vm_writev from both cores: the first write into a stretch faults a huge page). With
/// one byte of a chunk changed it is refused naming the file, the field and the chunk, and the
/// process never ran; killed or failing while the pages are written, it leaves no process; with
/// the page file put back it restores with every huge page huge and every word right.
#[test]
fn eager_restore_of_huge_pages_written_by_crust_checks_each_chunk_and_leaves_nothing_on_failure() {
    let mut w = Workload::spawn("lazy_pattern", &["64", "huge"]);
    let fds_before = fd_targets(w.pid);
    let area = hex(&w, "area");
    let huge_before = area_huge_kib(w.pid, area);
    assert_eq!(huge_before, 64 * 1024, "test setup: the area is all huge pages");
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    damaged_chunk_is_refused(&w);
    for action in ["kill", "fail"] {
        let fault = [("CRUST_FAULT".to_string(), format!("restore-pages-placed:3:{action}"))];
        let out = crust_env(["restore", "-d", "-D", &img], &fault);
        assert!(!out.success(), "{action} while writing pages: the restore succeeded:\n{out}");
        assert!(wait_gone(w.pid, GONE_TIMEOUT), "{action} while writing pages: pid {} is left", w.pid);
    }
    assert!(!w.status_text().contains("VERIFIED"), "the process ran before its pages were all in");
    w.restore_extra = vec!["-v3".into()];
    let out = w.restore_detached();
    assert!(out.text().contains("pages placed by crust"), "crust did not write the pages itself:\n{out}");
    assert_eq!(area_huge_kib(w.pid, area), huge_before, "AnonHugePages of the area right after the restore (kB)");
    check_every_word_and_end(&mut w, &fds_before);
}

/// The kernel refusing crust a userfaultfd (stood for by CRUST_FAULT=restore-pages-userfaultfd
/// :1:fail): the process reads its 64 MiB in itself, crust checks their chunks first, and every
/// word is right. Killed, interrupted or failing while crust places the pages, a restore
/// leaves no process behind, and the image restores again.
#[test]
fn eager_restore_without_a_userfaultfd_or_stopped_while_placing_pages() {
    let mut w = Workload::spawn("lazy_pattern", &["64"]);
    let fds_before = fd_targets(w.pid);
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    for action in ["kill", "fail", "SIGINT"] {
        let fault = [("CRUST_FAULT".to_string(), format!("restore-pages-placed:3:{action}"))];
        let out = crust_env(["restore", "-d", "-D", &img], &fault);
        assert!(!out.success(), "{action} while placing pages: the restore succeeded:\n{out}");
        assert!(wait_gone(w.pid, GONE_TIMEOUT), "{action} while placing pages: pid {} is left", w.pid);
        assert!(!w.status_text().contains("VERIFIED"), "{action}: the process ran");
    }
    w.crust_env = vec![("CRUST_FAULT".into(), "restore-pages-userfaultfd:1:fail".into())];
    w.restore_extra = vec!["-v3".into()];
    let out = w.restore_detached();
    assert!(out.text().contains("pages read in by the process instead"), "no fallback to preadv:\n{out}");
    w.crust_env.clear();
    check_every_word_and_end(&mut w, &fds_before);
}

/// A tree with --lazy-pages (tree_sharedmem.c): the parent forks a process of the image, so it
/// is restored eagerly; its child is restored lazily. After .go each checks its copy-on-write
/// pages (the child's own page, the page it dropped, the parent's page), the shared region
/// carries the child's token to the parent, and both PASS.
#[test]
fn lazy_restore_of_a_tree_brings_back_the_pages_of_parent_and_child() {
    let mut w = Workload::spawn("tree_sharedmem", &[]);
    let parent_line = w.wait_status_line("READY parent ", READY_TIMEOUT);
    let child: i32 = parent_line.split_whitespace().find_map(|f| f.strip_prefix("child=")).unwrap().parse().unwrap();
    w.dump();
    // The killed child was re-parented to this test (a subreaper): reap it, its pid is needed.
    assert!(waitpid_timeout(child, GONE_TIMEOUT).is_some(), "the dumped child {child} was not reaped");
    w.restore_extra = vec!["--lazy-pages".into()];
    w.restore_detached();
    let r = w.go();
    for role in ["parent", "child"] {
        assert!(r.status_text.lines().any(|l| l.starts_with(&format!("PASS {role} "))), "no PASS from the {role}:\n{}", r.status_text);
    }
    assert!(!r.status_text.lines().any(|l| l.starts_with("FAIL")), "{}", r.status_text);
    assert_eq!(r.exit, Exit::Code(0), "{}", r.status_text);
    assert!(wait_no_helper(w.pid));
}

/// A lazy restore that fails once every lazy area is registered (a fault injected right before
/// the resume): the process is killed, no helper or guard stays, and the image restores
/// lazily afterwards with every page right.
#[test]
fn failed_lazy_restore_leaves_nothing_and_the_image_restores_again() {
    let mut w = Workload::spawn("lazy_pattern", &["64"]);
    let fds_before = fd_targets(w.pid);
    w.dump();
    let img = w.image_dir.to_string_lossy().into_owned();
    let fault = [("CRUST_FAULT".to_string(), "restore-before-resume:1:fail".to_string())];
    let out = crust_env(["restore", "--lazy-pages", "-d", "-D", &img], &fault);
    assert!(!out.success(), "the injected failure did not fail the restore:\n{out}");
    assert!(wait_gone(w.pid, GONE_TIMEOUT), "the failed restore left pid {} behind", w.pid);
    assert!(wait_no_helper(w.pid), "a lazy page server or guard outlived the failed restore");
    w.restore_extra = vec!["--lazy-pages".into()];
    w.restore_detached();
    check_every_word_and_end(&mut w, &fds_before);
}

/// Python: 64 MiB of private anonymous memory patterned by page; after `status.go` (right
/// after the restore) it grows the mapping to 128 MiB with mremap (the kernel moves it when it
/// cannot grow in place), then checks the old pages at their new place and zeros beyond. With
/// `huge`, the mapping is advised MADV_HUGEPAGE (its whole stretches are huge pages).
const REMAP: &str = r#"
import mmap, os, sys, time
PAGES = 16384
m = mmap.mmap(-1, PAGES * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if len(sys.argv) > 1 and sys.argv[1] == 'huge':
    m.madvise(mmap.MADV_HUGEPAGE)
for i in range(PAGES):
    m[i * 4096:(i + 1) * 4096] = i.to_bytes(8, 'little') * 512
open('status', 'w').write('READY\n')
for _ in range(60000):
    if os.path.exists('status.go'):
        break
    time.sleep(0.005)
m.resize(2 * PAGES * 4096)
zero = bytes(4096)
bad = [i for i in range(2 * PAGES) if m[i * 4096:(i + 1) * 4096] != (i.to_bytes(8, 'little') * 512 if i < PAGES else zero)]
open('status.result', 'w').write(('PASS' if not bad else 'FAIL %d pages, first %s' % (len(bad), bad[:5])) + '\n')
time.sleep(600)
"#;

/// A mapping moved by mremap while its lazy fill runs: the pages still owed follow it to its
/// new address (the server reads the remap event), and the grown part reads as zeros.
#[test]
fn lazy_fill_follows_a_mapping_that_mremap_moves() {
    let w = python_restored_lazily("lazy_remap", REMAP);
    assert_result_passes(&w, "status.result");
    assert!(wait_no_helper(w.pid), "crust-lazypages still serves pid {}", w.pid);
}

/// The same in huge pages, which the process's mover places whole while the program moves them:
/// the stretches still owed follow the mapping (placed the collapse way at the new address).
#[test]
fn lazy_fill_of_huge_pages_follows_a_mapping_that_mremap_moves() {
    let w = python_restored_lazily_with("lazy_remap_huge", REMAP, &["huge"]);
    assert_result_passes(&w, "status.result");
    assert!(wait_no_helper(w.pid), "crust-lazypages still serves pid {}", w.pid);
    assert_eq!(tasks_and_tracers(w.pid), vec![(w.pid, "0".to_string())], "threads and their tracers once the fill is over");
}

/// After an eager restore: the program checks every word (VERIFIED), nothing of crust is left
/// in the process, and it ends passing its own checks.
fn check_every_word_and_end(w: &mut Workload, fds_before: &[(String, String)]) {
    fs::write(w.go_path(), b"go\n").unwrap();
    wait_verified(w);
    assert_nothing_of_crust_remains(w, fds_before);
    fs::write(format!("{}.end", w.status_path.display()), b"end\n").unwrap();
    w.go().assert_pass();
}
