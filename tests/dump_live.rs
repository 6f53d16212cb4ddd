//! `dump -R` copies the pages while the program runs (userfaultfd write-protection, see
//! src/kinds/uffd_dump.rs): the image must still be the memory of the moment of the freeze.
//!
//! memwriter.c's threads rewrite their memory the whole time, round after round, and record
//! which page of which round they are at; each checks every page holds the previous round's
//! words before rewriting it. The tests dump it with -R while it writes, kill it, restore it
//! stopped, check the whole image from /proc against the recorded progress, then let it go
//! on: its own checks find any page that is not of the moment of the freeze.

mod common;
use common::*;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const PAGE: u64 = 4096;

fn word(t: u64, v: u64, i: u64, k: u64) -> u64 {
    let x = ((v << 40) ^ (t << 56) ^ (i << 9) ^ k).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 31)
}

struct Layout {
    regions: Vec<u64>,
    pages: u64,
    progress: u64,
}

fn layout(w: &Workload) -> Layout {
    let regions = w.ready_field("regions").split(',').map(parse_hex).collect();
    Layout { regions, pages: w.ready_field("pages").parse().unwrap(), progress: parse_hex(&w.ready_field("progress")) }
}

/// Checks, from /proc/PID/mem of a stopped process, that every page of every writer's region
/// holds the round its progress word says: pages before `next` the current round, pages after
/// it the previous one, page `next` a prefix of the current round and the rest the previous.
fn check_snapshot(pid: i32, l: &Layout) -> Vec<String> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut problems = Vec::new();
    for (t, &region) in l.regions.iter().enumerate() {
        let t = t as u64;
        let mut at = [0u8; 8];
        mem.read_exact_at(&mut at, l.progress + t * 64).unwrap();
        let at = u64::from_ne_bytes(at);
        let (round, next) = (at >> 32, at & 0xffff_ffff);
        let mut bytes = vec![0u8; (l.pages * PAGE) as usize];
        mem.read_exact_at(&mut bytes, region).unwrap();
        for i in 0..l.pages {
            let page = &bytes[(i * PAGE) as usize..((i + 1) * PAGE) as usize];
            let words: Vec<u64> = page.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
            let ok = if i < next {
                words.iter().enumerate().all(|(k, w)| *w == word(t, round, i, k as u64))
            } else if i > next {
                words.iter().enumerate().all(|(k, w)| *w == word(t, round - 1, i, k as u64))
            } else {
                // Half rewritten: a prefix of this round, then the previous round.
                let prefix = words.iter().enumerate().take_while(|(k, w)| **w == word(t, round, i, *k as u64)).count();
                words.iter().enumerate().skip(prefix).all(|(k, w)| *w == word(t, round - 1, i, k as u64))
            };
            if !ok {
                problems.push(format!("thread {t} (round {round}, next page {next}): page {i} is not of the moment of the freeze"));
                if problems.len() > 5 {
                    return problems;
                }
            }
        }
    }
    problems
}

fn progress_words(pid: i32, l: &Layout) -> Vec<u64> {
    (0..l.regions.len() as u64).map(|t| read_mem_u64(pid, l.progress + t * 64)).collect()
}

/// Dumps with -R while the writers run, checks the program ran on with its own checks passing
/// (it is killed then), restores it stopped, checks the image from /proc, lets it go.
fn dump_live_then_restore(w: &mut Workload, extra: &[&str]) -> CrustOutput {
    let l = layout(w);
    let before = progress_words(w.pid, &l);
    let mut args = vec!["-R", "-v3"];
    args.extend_from_slice(extra);
    let out = w.dump_with(&args);
    assert!(out.success(), "dump -R failed:\n{out}\n--- log ---\n{}", w.log_text());
    // The program ran on, its checks passing (a failure is in its status file at once).
    std::thread::sleep(Duration::from_millis(100));
    assert_ne!(progress_words(w.pid, &l), before, "the writers did not go on");
    assert!(matches!(proc_state(w.pid), Some('R' | 'S')), "state {:?}", proc_state(w.pid));
    assert!(!w.status_text().contains("FAIL"), "the program found its memory changed by the dump:\n{}", w.status_text());
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(10)).expect("the original did not end");

    w.restore_stopped();
    let problems = check_snapshot(w.pid, &l);
    assert!(problems.is_empty(), "the image is not the memory of the freeze:\n{}\n--- dump ---\n{out}", problems.join("\n"));
    w.signal(libc::SIGCONT);
    w.go().assert_pass();
    out
}

/// Said by a dump that write-protected a process's memory while it ran, before the freeze.
const PROTECTED_AHEAD: &str = "write-protecting its memory ahead of the freeze";

/// Runs `w`'s dumps with the memory write-protected ahead of the freeze ("always") or while
/// frozen ("never").
fn protect_ahead(w: &mut Workload, mode: &str) {
    w.crust_env = vec![("CRUST_PROTECT_AHEAD".into(), mode.into())];
}

fn assert_protected_ahead(out: &CrustOutput, mode: &str) {
    assert_eq!(out.text().contains(PROTECTED_AHEAD), mode == "always", "CRUST_PROTECT_AHEAD={mode}:\n{out}");
}

#[test]
fn dump_leaving_running_a_process_writing_memory_the_whole_time_saves_the_memory_of_the_freeze() {
    for mode in ["always", "never"] {
        let mut w = Workload::spawn("memwriter", &["64", "2"]);
        protect_ahead(&mut w, mode);
        let out = dump_live_then_restore(&mut w, &[]);
        assert!(out.text().contains("copied while the process ran"), "the pages were not copied live:\n{out}");
        assert_protected_ahead(&out, mode);
    }
}

#[test]
fn dump_leaving_running_keeps_huge_pages_huge_and_saves_the_memory_of_the_freeze() {
    let mut w = Workload::spawn("memwriter", &["64", "2", "huge"]);
    protect_ahead(&mut w, "always");
    let huge_before = anon_huge_kib(w.pid);
    let l = layout(&w);
    let out = w.dump_with(&["-R", "-v3"]);
    assert!(out.success(), "dump -R failed:\n{out}");
    assert_protected_ahead(&out, "always");
    assert!(out.text().contains("copied while the process ran"), "the pages were not copied live:\n{out}");
    // Faults saved and unprotected whole 2 MiB units: nothing was split.
    if huge_before > 0 {
        assert!(anon_huge_kib(w.pid) >= huge_before, "huge pages split by the dump: {huge_before} kB then {} kB", anon_huge_kib(w.pid));
    }
    w.signal(libc::SIGKILL);
    w.reap(Duration::from_secs(10)).expect("the original did not end");
    w.restore_stopped();
    let problems = check_snapshot(w.pid, &l);
    assert!(problems.is_empty(), "the image is not the memory of the freeze:\n{}", problems.join("\n"));
    if huge_before > 0 {
        assert!(anon_huge_kib(w.pid) > 0, "no huge pages after the restore");
    }
    w.signal(libc::SIGCONT);
    w.go().assert_pass();
}

#[test]
fn dump_leaving_running_a_process_that_unmaps_and_discards_memory_still_saves_the_memory_of_the_freeze() {
    // Ahead of the freeze, several times: a write let go there whose window reached an area
    // mapped since its registration once left the program and the dump waiting (1 run in 8).
    for mode in ["always", "always", "always", "always", "never"] {
        let mut w = Workload::spawn("memwriter", &["16", "1", "discard"]);
        protect_ahead(&mut w, mode);
        let out = dump_live_then_restore(&mut w, &[]);
        assert_protected_ahead(&out, mode);
    }
}

#[test]
fn dump_leaving_running_an_unprivileged_process_copies_its_pages_while_frozen() {
    let mut w = Workload::spawn("memwriter", &["16", "2", "nobody"]);
    assert_eq!(proc_status_field(w.pid, "Uid").unwrap().split_whitespace().next(), Some("65534"));
    let out = dump_live_then_restore(&mut w, &[]);
    assert!(out.text().contains("copying the pages while frozen"), "no fallback said:\n{out}");
    assert!(!out.text().contains("copied while the process ran"), "copied live:\n{out}");
}

/// crust SIGKILLed while it copies the pages of a running process: its userfaultfd closes,
/// which lifts every protection and wakes every thread waiting on a fault; the program goes
/// on with its memory as it was (its own checks pass).
#[test]
fn dump_leaving_running_killed_during_the_live_copy_leaves_the_program_running_correctly() {
    for step in ["dump-live-copy:1:kill", "dump-live-copy:1:SIGINT"] {
        let mut w = Workload::spawn("memwriter", &["64", "2"]);
        let l = layout(&w);
        w.crust_env = vec![("CRUST_FAULT".into(), step.into())];
        let out = w.dump_with(&["-R"]);
        assert!(!out.success(), "{step}: the dump did not stop:\n{out}");
        wait_until("the process to be let go by its dead tracer", Duration::from_secs(5), || {
            proc_status_field(w.pid, "TracerPid").as_deref() == Some("0")
        });
        let p1 = progress_words(w.pid, &l);
        std::thread::sleep(Duration::from_millis(300));
        assert_ne!(progress_words(w.pid, &l), p1, "{step}: the writers are stuck");
        if step.ends_with("SIGINT") {
            let names: Vec<String> =
                image_files(&w.image_dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
            assert!(names.iter().all(|n| n == "FAILED-DUMP.txt"), "{step}: left in the image directory: {names:?}");
        }
        w.go().assert_pass();
    }
}

fn anon_huge_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Areas side by side are registered for write-protection by one call; where the kernel
/// refuses one of them (a droppable area: EINVAL), each is registered on its own: the
/// droppable one is copied while frozen, its neighbours while the program runs, and all three
/// come back with their contents (checked by the restored program itself).
#[test]
fn dump_leaving_running_copies_a_droppable_area_between_two_others_while_frozen() {
    const PY_BODY: &str = r#"
mib = 1 << 20
base = libc.mmap(None, 3 * mib, 3, 0x22, -1, 0)   # PROT_READ|WRITE, MAP_PRIVATE|MAP_ANONYMOUS
assert base not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
mid = libc.mmap(base + mib, mib, 3, 0x08 | 0x20 | 0x10, -1, 0)   # MAP_DROPPABLE|MAP_ANONYMOUS|MAP_FIXED
assert mid == base + mib, ctypes.get_errno()
def pattern(i):
    return bytes((i * 7 + k) % 256 for k in range(256)) * 4096
for i in range(3):
    ctypes.memmove(base + i * mib, pattern(i), mib)
open('ready', 'w').write('%x\n' % base)
while not os.path.exists('go'):
    time.sleep(0.05)
ok = all(ctypes.string_at(base + i * mib, mib) == pattern(i) for i in range(3))
open('result', 'w').write('contents %s' % ok)
while True:
    time.sleep(0.1)
"#;
    for mode in ["always", "never"] {
        let (mut w, ready) = spawn_python_memory("py-sandwich", PY_BODY);
        protect_ahead(&mut w, mode);
        let base = u64::from_str_radix(&ready, 16).unwrap();
        let out = w.dump_with(&["-R", "-v3"]);
        assert!(out.success(), "{mode}: dump -R failed:\n{out}");
        assert_protected_ahead(&out, mode);
        let text = out.text();
        let refused: Vec<&str> = text.lines().filter(|l| l.contains("copied while frozen: ioctl(UFFDIO_REGISTER)")).collect();
        let droppable = format!("start={}", base + (1 << 20));
        assert!(
            !refused.is_empty() && refused.iter().all(|l| l.contains(&droppable)),
            "{mode}: refused registrations {refused:?}, the droppable area is at {droppable}:\n{out}"
        );
        w.signal(libc::SIGKILL);
        w.reap(Duration::from_secs(10)).expect("the original did not end");
        w.restore_detached();
        assert_python_memory_intact(&w, mode);
    }
}
