//! Memory survives checkpoint/restore: anonymous memory of every origin, file and
//! shared mappings with their exact layout, and the CPU's vector/FPU registers.

mod common;
use common::*;
use std::time::Duration;

/// counter.c: .data, .bss, stack, brk heap, a malloc'd mmap chunk and a sparse 64 MiB
/// MAP_NORESERVE mapping keep their contents (and VmFlags); untouched pages stay
/// non-resident and zero; the kernel brk is unchanged and malloc keeps working; the
/// counter continues from where it was (read from outside via /proc/PID/mem).
#[test]
fn anonymous_heap_stack_and_sparse_memory_patterns_survive_restore() {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    let before = w.snapshot();
    let v_dump = read_mem_u64(w.pid, addr);
    w.dump();
    w.restore_detached();
    let v_restored = read_mem_u64(w.pid, addr);
    let after = w.snapshot();
    std::thread::sleep(Duration::from_millis(300));
    let v_later = read_mem_u64(w.pid, addr);
    let mut extra = Vec::new();
    if v_restored < v_dump {
        extra.push(format!("counter went back: {v_dump} before the dump, {v_restored} right after the restore"));
    }
    if v_later <= v_restored {
        extra.push(format!("counter stuck after restore: {v_restored}, then {v_later} 300 ms later"));
    }
    w.verify_restored(&before, &after, &[], extra);
}

/// mappings.c: every mapping kind (private/shared anonymous, private/shared file,
/// PROT_NONE, split, read-only, growsdown, MADV_HUGEPAGE, executable) is back at the
/// same address with the same protections, offsets, files and VmFlags, with the same
/// contents; the data file on disk is untouched; the shared file mapping still writes
/// through to the file; the vDSO works where the auxv says it is.
#[test]
fn every_mapping_kind_keeps_layout_contents_and_vdso() {
    let mut w = Workload::spawn("mappings", &[]);
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    w.verify_restored(&before, &after, &[], vec![]);
}

/// avx.c: ymm0-15 (and zmm16-31 + k1-k7 with AVX-512), an 80-bit x87 st(0), the x87
/// control word and MXCSR (non-default rounding) are exactly what they were, although
/// the process was frozen while the values lived only in registers.
#[test]
fn vector_and_fpu_registers_survive_restore() {
    let mut w = Workload::spawn("avx", &[]);
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    // let it run a few dozen blocks with the restored registers before verifying
    std::thread::sleep(Duration::from_millis(500));
    w.verify_restored(&before, &after, &[], vec![]);
}

/// A restored process can be checkpointed and restored again (twice), and still
/// verifies all its memory patterns; its /proc view is the same after each round.
#[test]
fn restored_process_can_be_checkpointed_and_restored_again() {
    let mut w = Workload::spawn("counter", &[]);
    let addr = parse_hex(&w.ready_field("counter_addr"));
    let first = w.snapshot();
    let mut extra = Vec::new();
    let mut last_value = read_mem_u64(w.pid, addr);
    for round in 1..=2 {
        w.dump();
        w.restore_detached();
        let v = read_mem_u64(w.pid, addr);
        if v < last_value {
            extra.push(format!("round {round}: counter went back from {last_value} to {v}"));
        }
        std::thread::sleep(Duration::from_millis(100));
        last_value = read_mem_u64(w.pid, addr);
        let _ = std::fs::remove_dir_all(&w.image_dir);
        std::fs::create_dir_all(&w.image_dir).unwrap();
    }
    let after = w.snapshot();
    w.verify_restored(&first, &after, &[], extra);
}

/// Two adjacent private anonymous areas the process has as two (one was made elsewhere and
/// moved next to the other with mremap, as allocators do with realloc) come back as two, with
/// their contents: a plain mmap would merge them into one.
#[test]
fn adjacent_anonymous_areas_that_never_merged_come_back_apart() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads/adjacent_areas.py");
    let mut w = Workload::spawn_program("adjacent-areas", "python3", &[script]);
    wait_until("python3 to place its areas", Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let before = w.snapshot();
    w.dump();
    w.restore_detached();
    let after = w.snapshot();
    assert_same_proc(&before, &after, &[]);
}

/// A process that locked memory (mlock) and then gave up root: the locked area comes back
/// locked (VmLck and the area's lock flag), with its contents, under its unprivileged ids.
#[test]
fn mlocked_memory_of_a_process_that_dropped_root_comes_back_locked() {
    const PY: &str = r#"
import ctypes, mmap, os, time
libc = ctypes.CDLL(None, use_errno=True)
m = mmap.mmap(-1, 1 << 20)
m.write(bytes(range(256)) * 4096)
buf = (ctypes.c_char * (1 << 20)).from_buffer(m)
assert libc.mlock(buf, 1 << 20) == 0, ctypes.get_errno()
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
open('ready', 'w').write('ok')
while not os.path.exists('go'):
    time.sleep(0.05)
m.seek(0)
ok = m.read(1 << 20) == bytes(range(256)) * 4096
open('result', 'w').write('contents %s uid %d' % (ok, os.getuid()))
while True:
    time.sleep(0.1)
"#;
    let mut w = Workload::spawn_program("py-mlock", "python3", &["-c", PY]);
    std::fs::set_permissions(&w.dir.path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    wait_until("python3 to lock its memory", std::time::Duration::from_secs(15), || file_written(&w.dir.path.join("ready")));
    let locked_before = proc_status_field(w.pid, "VmLck");
    assert_eq!(locked_before.as_deref(), Some("1024 kB"), "test setup");
    w.dump();
    w.restore_detached();
    assert_eq!(proc_status_field(w.pid, "VmLck"), locked_before, "locked memory after restore");
    assert_eq!(proc_status_field(w.pid, "Uid").as_deref(), Some("65534\t65534\t65534\t65534"));
    std::fs::write(w.dir.path.join("go"), "").unwrap();
    wait_until("python3 to check its memory", std::time::Duration::from_secs(15), || file_written(&w.dir.path.join("result")));
    assert_eq!(std::fs::read_to_string(w.dir.path.join("result")).unwrap(), "contents True uid 65534");
}

/// A MAP_DROPPABLE area (its pages may be dropped under memory pressure) comes back droppable
/// (`dp` in its VmFlags), at its address, with its contents.
#[test]
fn droppable_mapping_comes_back_droppable_with_its_contents() {
    const PY_BODY: &str = r#"
size = 1 << 20
addr = libc.mmap(None, size, 3, 0x08 | 0x20, -1, 0)   # PROT_READ|WRITE, MAP_DROPPABLE|MAP_ANONYMOUS
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
ctypes.memmove(addr, bytes(range(256)) * 4096, size)
open('ready', 'w').write('%x\n' % addr)
while not os.path.exists('go'):
    time.sleep(0.05)
ok = ctypes.string_at(addr, size) == bytes(range(256)) * 4096
open('result', 'w').write('contents %s' % ok)
while True:
    time.sleep(0.1)
"#;
    let (mut w, addr) = spawn_python_memory("py-droppable", PY_BODY);
    let flags = |pid: i32| {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&format!("{addr}-")));
        lines.find(|l| l.starts_with("VmFlags:")).unwrap_or("no such area").to_string()
    };
    let before = flags(w.pid);
    assert!(before.split_whitespace().any(|f| f == "dp"), "test setup: {before}");
    w.dump();
    w.restore_detached();
    assert_eq!(flags(w.pid), before, "VmFlags of the droppable area after restore");
    assert_python_memory_intact(&w, "the droppable area");
}

/// The area of `pid` starting at `addr` (hex) in /proc/PID/smaps: its first line ("no such
/// area" if none starts there) and its field lines, up to VmFlags.
fn smaps_area(pid: i32, addr: &str) -> (String, Vec<String>) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&format!("{addr}-")));
    let head = lines.next().unwrap_or("no such area").to_string();
    let mut fields = Vec::new();
    for l in lines {
        fields.push(l.to_string());
        if l.starts_with("VmFlags:") {
            break;
        }
    }
    (head, fields)
}

/// The field line `name` ("VmFlags:", "Rss:"...) of an area of [`smaps_area`], or "no NAME".
fn smaps_field(fields: &[String], name: &str) -> String {
    fields.iter().find(|l| l.starts_with(name)).cloned().unwrap_or_else(|| format!("no {name}"))
}

/// Read-only private areas holding pages the process wrote through /proc/self/mem (as a
/// debugger plants a breakpoint in code): an anonymous area and a file mapping, neither ever
/// writable, so never charged to the commit limit (no `ac` in VmFlags). They come back with
/// their contents and still unaccounted (crust writes their pages through /proc/PID/mem
/// instead of making them writable to fill them), and still not writable.
#[test]
fn read_only_areas_written_through_proc_mem_stay_unaccounted() {
    const PY_BODY: &str = r#"
open('data', 'wb').write(b'F' * 8192)
fd = os.open('data', os.O_RDONLY)
anon = libc.mmap(None, 8192, 1, 0x02 | 0x20, -1, 0)   # PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS
filemap = libc.mmap(None, 8192, 1, 0x02, fd, 0)        # PROT_READ, MAP_PRIVATE of 'data'
os.close(fd)
want_anon = b'anonymous, written through /proc/self/mem\n' * 100
want_file = b'P' * 100 + b'F' * (8192 - 100)
with open('/proc/self/mem', 'r+b', buffering=0) as mem:
    mem.seek(anon); mem.write(want_anon)
    mem.seek(filemap); mem.write(b'P' * 100)
open('ready', 'w').write('%x %x\n' % (anon, filemap))
while not os.path.exists('go'):
    time.sleep(0.05)
ok = ctypes.string_at(anon, len(want_anon)) == want_anon and ctypes.string_at(filemap, 8192) == want_file
open('result', 'w').write('contents %s' % ok)
while True:
    time.sleep(0.1)
"#;
    let (mut w, ready) = spawn_python_memory("py-unaccounted", PY_BODY);
    let addrs: Vec<String> = ready.split_whitespace().map(str::to_string).collect();
    let area = |pid: i32, addr: &str| {
        let (head, fields) = smaps_area(pid, addr);
        let perms = head.split_whitespace().nth(1).unwrap_or("").to_string();
        (perms, smaps_field(&fields, "Private_Dirty:"), smaps_field(&fields, "VmFlags:"))
    };
    for addr in &addrs {
        let (perms, dirty, flags) = area(w.pid, addr);
        assert!(perms == "r--p" && !flags.split_whitespace().any(|f| f == "ac"), "test setup: {addr}: {perms} {flags}");
        assert!(!dirty.ends_with(" 0 kB"), "test setup: {addr} has no page of its own: {dirty}");
    }
    let before: Vec<_> = addrs.iter().map(|a| area(w.pid, a)).collect();
    let snapshot = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_same_proc(&snapshot, &w.snapshot(), &[]);
    let after: Vec<_> = addrs.iter().map(|a| area(w.pid, a)).collect();
    assert_eq!(after, before, "protection, dirty pages and VmFlags of the read-only areas after restore");
    assert_python_memory_intact(&w, "the read-only areas");
}

/// Private anonymous areas without write permission and without a page, still charged to the
/// commit limit (`ac` in VmFlags: each was writable and had a page once, so the kernel kept the
/// charge when it lost write permission): one alone between two gaps, one read-only and one
/// with no access, and one right after a read-only area with pages that it is apart from (made
/// elsewhere and moved there). crust maps each on its own; they come back charged, apart, with
/// their protection (every VmFlags of the process compared), and the other area's contents.
#[test]
fn charged_areas_without_write_permission_or_pages_stay_charged() {
    const PY_BODY: &str = r#"
PAGE = 4096
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
def alone(prot):
    # 64 pages; page 31 written, page 32 given `prot`, all but page 32 unmapped.
    a = libc.mmap(None, 64 * PAGE, 3, 0x02 | 0x20, -1, 0)
    ctypes.memset(a + 31 * PAGE, 7, 1)
    assert libc.mprotect(a + 32 * PAGE, PAGE, prot) == 0
    assert libc.munmap(a, 32 * PAGE) == 0 and libc.munmap(a + 33 * PAGE, 31 * PAGE) == 0
    return a + 32 * PAGE
lone_ro, lone_none = alone(1), alone(0)
# A read-only area with pages, then one made elsewhere, moved right after it, emptied and made
# read-only: the two stay apart (their page offsets do not follow each other).
r = libc.mmap(None, 64 * PAGE, 3, 0x02 | 0x20, -1, 0)
ctypes.memset(r, 0x5a, 64 * PAGE)
libc.munmap(r + 32 * PAGE, 32 * PAGE)
elsewhere = libc.mmap(None, 4 * PAGE, 3, 0x02 | 0x20, -1, 0)
ctypes.memset(elsewhere, 1, 4 * PAGE)
moved = libc.mremap(elsewhere, 4 * PAGE, 4 * PAGE, 3, r + 32 * PAGE)   # MREMAP_MAYMOVE|MREMAP_FIXED
assert moved == r + 32 * PAGE
assert libc.madvise(moved, 4 * PAGE, 4) == 0                        # MADV_DONTNEED
assert libc.mprotect(r, 32 * PAGE, 1) == 0 and libc.mprotect(moved, 4 * PAGE, 1) == 0
open('ready', 'w').write('%x %x %x %x\n' % (lone_ro, lone_none, r, moved))
while not os.path.exists('go'):
    time.sleep(0.05)
ok = ctypes.string_at(r, 32 * PAGE) == b'\x5a' * (32 * PAGE) and ctypes.string_at(moved, 4 * PAGE) == bytes(4 * PAGE)
open('result', 'w').write('contents %s' % ok)
while True:
    time.sleep(0.1)
"#;
    let (mut w, ready) = spawn_python_memory("py-charged-no-write", PY_BODY);
    let addrs: Vec<String> = ready.split_whitespace().map(str::to_string).collect();
    let area = |pid: i32, addr: &str| {
        let (head, fields) = smaps_area(pid, addr);
        let range_and_perms: Vec<&str> = head.split_whitespace().take(2).collect();
        format!("{} {}", range_and_perms.join(" "), smaps_field(&fields, "VmFlags:"))
    };
    let before: Vec<String> = addrs.iter().map(|a| area(w.pid, a)).collect();
    let perms = ["r--p", "---p", "r--p", "r--p"];
    for (a, p) in before.iter().zip(perms) {
        assert!(a.contains(&format!(" {p} ")) && a.split_whitespace().any(|f| f == "ac"), "test setup: an area {p}, charged: {before:#?}");
    }
    let snapshot = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_same_proc(&snapshot, &w.snapshot(), &[]);
    let after: Vec<String> = addrs.iter().map(|a| area(w.pid, a)).collect();
    assert_eq!(after, before, "range, protection and VmFlags of the charged areas after restore");
    assert_python_memory_intact(&w, "the read-only areas");
}

/// lazy_pattern.c `huge`: 64 MiB advised MADV_HUGEPAGE, all in huge pages, right after another
/// anonymous area (so it is made elsewhere and moved into place, see memory.rs
/// map_anonymous_apart: no page table may be left in it). Restored eagerly (crust writes the
/// pages from both cores; the first write into each stretch faults a huge page), the area holds
/// exactly as many huge pages right after the restore as before the dump (before: one fewer),
/// and the program finds every word as it was.
#[test]
fn huge_pages_of_an_advised_area_come_back_huge_with_their_contents() {
    huge_pages_come_back_huge("huge", 64 * 1024, "the area is all huge pages");
}

/// lazy_pattern.c in `mode` (64 MiB): the area holds `huge_kib` of huge pages (`what`); dumped
/// and restored eagerly, it holds as many right after the restore, and the program finds every
/// word as it was.
fn huge_pages_come_back_huge(mode: &str, huge_kib: u64, what: &str) {
    let mut w = Workload::spawn("lazy_pattern", &["64", mode]);
    let area = u64::from_str_radix(&w.ready_field("area"), 16).unwrap();
    let huge_before = area_huge_kib(w.pid, area);
    assert_eq!(huge_before, huge_kib, "test setup: {what}");
    w.dump();
    w.restore_detached();
    assert_eq!(area_huge_kib(w.pid, area), huge_before, "AnonHugePages of the area right after the restore (kB)");
    std::fs::write(w.go_path(), b"go\n").unwrap();
    w.wait_status_line("VERIFIED", Duration::from_secs(60));
    std::fs::write(format!("{}.end", w.status_path.display()), b"end\n").unwrap();
    w.go().assert_pass();
}

/// lazy_pattern.c `collapse`: an area not advised MADV_HUGEPAGE, half of which the program
/// collapsed into huge pages itself. Restored (eagerly), it holds exactly as many huge pages as
/// before (the stretches that were huge are collapsed again before it runs; a plain fill would
/// leave them 4 KiB pages), and the program finds every word as it was.
#[test]
fn huge_pages_a_program_collapsed_itself_come_back_huge() {
    huge_pages_come_back_huge("collapse", 32 * 1024, "the program collapsed half of its area");
}

/// Private anonymous areas side by side that the kernel keeps apart for their flags alone (the
/// same protection: MADV_DONTFORK on the middle one, MADV_WIPEONFORK on the last), each large
/// enough for crust's own fill: their pages come back, and so do the areas with their flags.
/// (One UFFDIO_COPY may not cross the edge of a kernel area: crust places each area's pages
/// with copies of their own.)
#[test]
fn adjacent_anonymous_areas_apart_for_their_flags_come_back_filled() {
    const PY_BODY: &str = r#"
MIB = 1 << 20
base = libc.mmap(None, 48 * MIB, 3, 0x02 | 0x20, -1, 0)   # PROT_READ|WRITE, MAP_PRIVATE|MAP_ANONYMOUS
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.madvise(base + 16 * MIB, 16 * MIB, 10) == 0   # MADV_DONTFORK
assert libc.madvise(base + 32 * MIB, 16 * MIB, 18) == 0   # MADV_WIPEONFORK
def page(i):
    return (b'%08d' % i) * 512
for i in range(48 * 256):
    ctypes.memmove(base + i * 4096, page(i), 4096)
open('ready', 'w').write('%x\n' % base)
while not os.path.exists('go'):
    time.sleep(0.05)
ok = all(ctypes.string_at(base + i * 4096, 4096) == page(i) for i in range(48 * 256))
open('result', 'w').write('contents %s' % ok)
while True:
    time.sleep(0.1)
"#;
    let (mut w, ready) = spawn_python_memory("py-apart", PY_BODY);
    let base = u64::from_str_radix(&ready, 16).unwrap();
    let areas = |pid: i32| -> Vec<String> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut out = Vec::new();
        for k in 0..3u64 {
            let head = format!("{:x}-", base + k * (16 << 20));
            let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
            let line = lines.next().unwrap_or("no such area").to_string();
            let flags = lines.find(|l| l.starts_with("VmFlags:")).unwrap_or("no flags").to_string();
            out.push(format!("{line} {flags}"));
        }
        out
    };
    let before = areas(w.pid);
    assert!(before.iter().all(|a| !a.starts_with("no such")), "test setup: three areas apart: {before:?}");
    let snapshot = w.snapshot();
    w.dump();
    w.restore_detached();
    assert_same_proc(&snapshot, &w.snapshot(), &[]);
    assert_eq!(areas(w.pid), before, "the three areas and their flags after restore");
    assert_python_memory_intact(&w, "the three areas");
}

/// The areas of a process read two ways give the same memory record: through crust's BPF
/// iterator with /proc/PID/maps (kinds/vm_flags.rs, used when crust may load BPF programs)
/// and from /proc/PID/smaps (`CRUST_SMAPS_ONLY=1`). mappings.c has every kind of area
/// (private and shared, file and anonymous, PROT_NONE, read-only, growsdown, MADV_HUGEPAGE,
/// executable); each dump leaves it running (-R), and the two records must agree on every
/// area and flag. Run as root, the first dump must have used the iterator.
#[test]
fn areas_read_through_bpf_and_from_smaps_give_the_same_memory_record() {
    use crust::image::{ImageDir, proto};
    let w = Workload::spawn("mappings", &[]);
    let read_vmas = |dir: &std::path::Path| -> Vec<proto::Vma> {
        let mm: proto::Mm = ImageDir::open(dir).unwrap().read_record(&crust::image::mm_name(w.pid as u32)).unwrap();
        // Which pages are resident may move between the dumps (the stack): areas and flags only.
        mm.vmas.into_iter().map(|v| proto::Vma { pages: Vec::new(), ..v }).collect()
    };
    let (bpf_dir, smaps_dir) = (w.dir.path.join("bpf"), w.dir.path.join("smaps"));
    std::fs::create_dir_all(&bpf_dir).unwrap();
    std::fs::create_dir_all(&smaps_dir).unwrap();
    let pid = w.pid.to_string();
    let dump = |dir: &std::path::Path, env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let out = crust_env(["dump", "-R", "-t", &pid, "-D", &dir.to_string_lossy()], &env);
        assert!(out.success(), "dump -R into {}:\n{out}", dir.display());
        out
    };
    let through_bpf = dump(&bpf_dir, &[("CRUST_LOG", "crust=debug")]);
    if nix::unistd::geteuid().is_root() {
        assert!(through_bpf.text().contains("read areas without smaps"), "the dump did not use the BPF iterator:\n{through_bpf}");
    }
    dump(&smaps_dir, &[("CRUST_SMAPS_ONLY", "1")]);
    let (a, b) = (read_vmas(&bpf_dir), read_vmas(&smaps_dir));
    assert_eq!(a.len(), b.len(), "number of areas");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "the area at {:#x} read two ways", y.start);
    }
    // Huge pages are told without smaps by the walk that finds the pages: compared too.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[never]") {
        assert!(
            b.iter().any(|v| v.had_huge_pages && !v.huge_stretches.is_empty()),
            "mappings.c's huge-page area has no huge stretch: {b:#?}"
        );
    }
}

/// 256 private anonymous areas of 64 KiB side by side (16 MiB, so that crust places their
/// pages itself), made as the program made them: one mapping written whole, then every other
/// area made read-only, no-access or read-execute (each stays charged to the commit limit:
/// `ac` in VmFlags). They come back exactly (/proc maps and smaps VmFlags, pages resident and
/// dirty), and the program finds every word as it was (the no-access areas after it makes
/// them readable). crust maps them as one run, each with its final protection before its pages
/// are placed (memory.rs, AtFinal); `refuse_userfaultfd`: the kernel refusing crust a
/// userfaultfd (CRUST_FAULT), the process reads its pages in itself, into areas made writable
/// for that. Else a restore failing or killed while the process makes the final protections
/// beside crust's fill (memory.rs, Shaping) leaves no process first.
fn small_areas_side_by_side_come_back_exactly(refuse_userfaultfd: bool) {
    const PY_BODY: &str = r#"
AREA, N = 64 * 1024, 256
base = libc.mmap(None, N * AREA, 3, 0x02 | 0x20, -1, 0)   # PROT_READ|WRITE, MAP_PRIVATE|MAP_ANONYMOUS
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def page(i):
    return (b'%08d' % i) * 512
for i in range(N * AREA // 4096):
    ctypes.memmove(base + i * 4096, page(i), 4096)
# After each writable area: read-only, no access, read-execute in turn.
others = [1, 0, 5]
for k in range(N):
    if k % 2 == 1:
        assert libc.mprotect(base + k * AREA, AREA, others[(k // 2) % 3]) == 0
open('ready', 'w').write('%x\n' % base)
while not os.path.exists('go'):
    time.sleep(0.05)
for k in range(N):
    if k % 2 == 1 and others[(k // 2) % 3] == 0:
        assert libc.mprotect(base + k * AREA, AREA, 1) == 0
ok = all(ctypes.string_at(base + i * 4096, 4096) == page(i) for i in range(N * AREA // 4096))
open('result', 'w').write('contents %s' % ok)
while True:
    time.sleep(0.1)
"#;
    let (mut w, ready) = spawn_python_memory("py-small-areas", PY_BODY);
    let base = u64::from_str_radix(&ready, 16).unwrap();
    // Each area's first line and the fields that tell its pages and its charge (VmFlags).
    let areas = |pid: i32| -> Vec<String> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let (start, end) = (format!("{base:x}-"), base + 256 * 64 * 1024);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start)).peekable();
        let mut out = Vec::new();
        while let Some(head) = lines.next_if(|l| u64::from_str_radix(l.split('-').next().unwrap_or(""), 16).is_ok_and(|a| a < end)) {
            let mut area = vec![head];
            for l in lines.by_ref() {
                if l.starts_with("Rss:") || l.starts_with("Private_Dirty:") || l.starts_with("VmFlags:") {
                    area.push(l);
                }
                if l.starts_with("VmFlags:") {
                    break;
                }
            }
            out.push(area.join(" ").split_whitespace().collect::<Vec<_>>().join(" "));
        }
        out
    };
    let before = areas(w.pid);
    let as_made = |a: &String| a.contains("Rss: 64 kB Private_Dirty: 64 kB") && a.ends_with(" ac");
    assert!(before.len() == 256 && before.iter().all(as_made), "test setup: 256 areas apart, all written, all charged: {before:#?}");
    let snapshot = w.snapshot();
    w.dump();
    if !refuse_userfaultfd {
        // Failing or killed while the process makes the areas' final protections (with the
        // fill under way beside it), a restore leaves no process behind.
        let img = w.image_dir.to_string_lossy().into_owned();
        for action in ["fail", "kill"] {
            let fault = [("CRUST_FAULT".to_string(), format!("restore-final-protections:1:{action}"))];
            let out = crust_env(["restore", "-d", "-D", &img], &fault);
            assert!(!out.success(), "{action} while making the final protections: the restore succeeded:\n{out}");
            assert!(wait_gone(w.pid, GONE_TIMEOUT), "{action} while making the final protections: pid {} is left", w.pid);
        }
    }
    if refuse_userfaultfd {
        w.crust_env = vec![("CRUST_FAULT".into(), "restore-pages-userfaultfd:1:fail".into())];
    }
    w.restore_extra = vec!["-v3".into()];
    let out = w.restore_detached();
    let said = if refuse_userfaultfd { "pages read in by the process instead" } else { "pages placed by crust" };
    assert!(out.text().contains(said), "the restore did not say \"{said}\":\n{out}");
    assert_same_proc(&snapshot, &w.snapshot(), &[]);
    assert_eq!(areas(w.pid), before, "the 256 areas (range, protection, Rss, Private_Dirty) after restore");
    assert_python_memory_intact(&w, "the 256 areas");
}

#[test]
fn small_areas_side_by_side_come_back_with_their_protections_flags_and_contents() {
    small_areas_side_by_side_come_back_exactly(false);
}

#[test]
fn small_areas_side_by_side_come_back_when_the_kernel_refuses_a_userfaultfd() {
    small_areas_side_by_side_come_back_exactly(true);
}
