//! The lines of /proc/PID/smaps the memory dump reads (each area's first line and VmFlags),
//! made without smaps's page walk: the areas' flags words come from a BPF iterator (sys::bpf),
//! their first lines from /proc/PID/maps. Without an AnonHugePages line, the memory dump learns
//! which stretches huge pages map from the walk that finds each area's pages (memory.rs
//! `resident_runs`). smaps counts every resident page of every area to print its sizes, about
//! 11 ms per GiB of 4 KiB pages and 2 us per area, all of it while the tree is frozen; this
//! costs about 0.5 us per area and no page walk.
//!
//! The kernel's flag bits are its own business, so crust learns whether it reads them right
//! before it relies on them: once per crust, it maps probe areas of its own with each advice
//! it restores (fork, dump, huge page, read-ahead, KSM, lock), reads its own areas both ways
//! and uses the iterator only if every area's words are exactly smaps's. An area with a bit
//! crust does not know (protection keys, shadow stack, sealing, droppable...) makes the dump
//! read that process's smaps instead, so its refusal or its words are the kernel's own.
//! Without CAP_BPF and CAP_PERFMON (an unprivileged crust) the dump reads smaps as before.

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use procfs::process::{MMPermissions, MMapPath, VmFlags};

use super::smaps::{self, Area, ExtraFlags};
use crate::sys::bpf::{VmaIterator, VmaWord};

/// The flag bits of struct vm_area_struct that smaps names, and their names (x86-64; the bits
/// have kept these values since Linux 4.x; the probe checks them on the running kernel).
const NAMED_BITS: [(u32, &str); 31] = [
    (0, "rd"),
    (1, "wr"),
    (2, "ex"),
    (3, "sh"),
    (4, "mr"),
    (5, "mw"),
    (6, "me"),
    (7, "ms"),
    (8, "gd"),
    (9, "um"),
    (10, "pf"),
    (12, "uw"),
    (13, "lo"),
    (14, "io"),
    (15, "sr"),
    (16, "rr"),
    (17, "dc"),
    (18, "de"),
    (19, "lf"),
    (20, "ac"),
    (21, "nr"),
    (22, "ht"),
    (23, "sf"),
    (24, "ar"),
    (25, "wf"),
    (26, "dd"),
    (27, "sd"),
    (28, "mm"),
    (29, "hg"),
    (30, "nh"),
    (31, "mg"),
];

fn known_bits() -> u64 {
    NAMED_BITS.iter().fold(0, |m, (bit, _)| m | 1 << bit)
}

/// The smaps words of a flags word, in the kernel's order.
fn words_of(flags: u64) -> String {
    let mut out = String::new();
    for (bit, word) in NAMED_BITS {
        if flags & 1 << bit != 0 {
            out.push_str(word);
            out.push(' ');
        }
    }
    out
}

/// The loaded iterator, once the probe found it right; None where it cannot be used.
fn reader() -> Option<&'static VmaIterator> {
    static READER: OnceLock<Option<VmaIterator>> = OnceLock::new();
    READER
        .get_or_init(|| {
            if std::env::var_os("CRUST_SMAPS_ONLY").is_some() {
                return None;
            }
            match load_and_probe() {
                Ok(iterator) => Some(iterator),
                Err(e) => {
                    tracing::debug!("memory areas are read from /proc/PID/smaps: {e:#}");
                    None
                }
            }
        })
        .as_ref()
}

/// Loads the iterator and probes it (see the module's text); a few ms, before any freeze.
pub fn prepare() {
    let _ = reader();
}

fn load_and_probe() -> Result<VmaIterator> {
    let btf = crate::sys::btf::Btf::vmlinux()?;
    let iterator = VmaIterator::load(btf.func_id("bpf_iter_task_vma")?, btf.member_offset("vm_area_struct", "vm_flags")?)?;
    let probe = probe_areas();
    let own = std::process::id() as i32;
    // Another thread of crust may map or unmap between the two reads: a few tries.
    let mut last = None;
    for _ in 0..3 {
        let ours = lines_with(&iterator, own)?.context("an area of crust's own with a flag crust does not know")?;
        let kernel = std::fs::read_to_string("/proc/self/smaps")?;
        match same_areas(&ours, &kernel) {
            Ok(()) => {
                drop(probe);
                return Ok(iterator);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no try")))
}

/// Areas of crust's own, each with one advice (those that fail, as KSM or mlock may, are
/// left out): kept while crust compares.
fn probe_areas() -> Option<crate::sys::region::AnonRegion> {
    use crate::sys::region::{AnonRegion, KeepingAdvice::*};
    let page = crate::sys::PAGE_SIZE as usize;
    let mut r = AnonRegion::new(10 * page, false).ok()?;
    for (i, advice) in [DontFork, WipeOnFork, DontDump, HugePage, Sequential, Random, Mergeable].into_iter().enumerate() {
        let _ = r.advise(i * page..(i + 1) * page, advice);
    }
    let _ = r.lock(7 * page..8 * page);
    let _ = r.make_read_only(8 * page..9 * page);
    Some(r)
}

/// Whether two sets of smaps lines name the same areas with the same flag words.
fn same_areas(ours: &str, kernel: &str) -> Result<()> {
    let areas = |text: &str| -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(words) = line.strip_prefix("VmFlags:") {
                if let Some(last) = out.last_mut() {
                    let mut w: Vec<String> = words.split_whitespace().map(String::from).collect();
                    w.sort();
                    last.1 = w;
                }
            } else if !line.starts_with(|c: char| c.is_ascii_uppercase()) {
                out.push((line.to_string(), Vec::new()));
            }
        }
        out
    };
    let (a, b) = (areas(ours), areas(kernel));
    if a.len() != b.len() {
        bail!("{} areas read through BPF, {} in smaps", a.len(), b.len());
    }
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            bail!("area {:?}: words {:?} through BPF, {:?} in smaps", y.0, x.1, y.1);
        }
    }
    Ok(())
}

/// The areas of process `pid` (frozen) as smaps's parse would give them (first line and
/// VmFlags, no Rss or AnonHugePages), made without smaps; None where smaps must be read (no
/// iterator, or an area with a flag crust does not know).
pub fn areas(pid: i32) -> Option<Vec<Area>> {
    let iterator = reader()?;
    match areas_with(iterator, pid) {
        Ok(areas) => areas,
        Err(e) => {
            tracing::debug!(pid, "reading /proc/{pid}/smaps instead of the BPF iterator: {e:#}");
            None
        }
    }
}

/// The areas built from /proc/PID/maps and the iterator's words directly, not through the
/// text of smaps and its parse (0.2 us an area less), the text parsed while the iterator
/// runs: what the parse of [`lines_with`]'s text gives (the unit tests compare them).
fn areas_with(iterator: &VmaIterator, pid: i32) -> Result<Option<Vec<Area>>> {
    let (words, mut areas) = words_and_maps(iterator, pid, |maps| {
        let _made = crate::timing::Timed::new("dump: areas: first lines");
        let mut areas = Vec::with_capacity(maps.len() / 32);
        for line in maps.lines() {
            areas.push(smaps::header(line).with_context(|| format!("/proc/{pid}/maps: {line:?}"))?);
        }
        Ok(areas)
    })?;
    if words.iter().any(|w| w.flags & !known_bits() != 0) {
        return Ok(None);
    }
    // Most areas share a few flags words: each one's flags are made once, from its smaps
    // words by the smaps parser's own reading of them.
    let mut flags_of: Vec<(u64, (VmFlags, ExtraFlags))> = Vec::new();
    let mut matched = 0;
    for area in &mut areas {
        let (start, end) = area.address;
        let (flags, text) = match words.get(matched) {
            Some(w) if w.start == start && w.end == end => {
                matched += 1;
                (w.flags, None)
            }
            // The kernel's gate area, as in `side_by_side`.
            _ if area.pathname == MMapPath::Vsyscall => (u64::MAX, Some(gate_words(&area.perms))),
            _ => bail!("/proc/{pid}/maps and the BPF iterator disagree at {start:#x}-{end:#x}"),
        };
        let i = match flags_of.iter().position(|(f, _)| *f == flags) {
            Some(i) => i,
            None => {
                flags_of.push((flags, smaps::vm_flags(&text.unwrap_or_else(|| words_of(flags)))));
                flags_of.len() - 1
            }
        };
        (area.vm_flags, area.extra) = flags_of[i].1;
    }
    if matched != words.len() {
        bail!("the BPF iterator found {} areas in pid {pid}, /proc/{pid}/maps {matched}", words.len());
    }
    Ok(Some(areas))
}

/// The smaps lines crust reads (each area's first line and VmFlags) of process `pid`, made
/// without smaps (the probe compares them with smaps's own); None where an area has a flag
/// crust does not know.
fn lines_with(iterator: &VmaIterator, pid: i32) -> Result<Option<String>> {
    let (words, maps) = words_and_maps(iterator, pid, Ok)?;
    if words.iter().any(|w| w.flags & !known_bits() != 0) {
        return Ok(None);
    }
    let mut out = String::with_capacity(maps.len() + words.len() * 48);
    side_by_side(pid, &maps, &words, |line, words| {
        out.push_str(line);
        out.push_str("\nVmFlags: ");
        out.push_str(&words);
        out.push('\n');
        Ok(())
    })?;
    Ok(Some(out))
}

/// /proc/PID/maps text from which a process of this many bytes or more (about 700 areas)
/// has its two reads made on two cores.
const BIG_MAPS: u64 = 64 * 1024;

/// The iterator's words and `then` of the text of /proc/PID/maps of process `pid`. Both are
/// the kernel passing over every area (about 0.25 us each): for a process of many areas,
/// found by the first 64 KiB of its maps, the iterator runs on a thread of its own while this
/// one reads the rest of the text and does `then` (a process of few areas is not worth a
/// thread).
fn words_and_maps<T: Send>(iterator: &VmaIterator, pid: i32, then: impl FnOnce(String) -> Result<T>) -> Result<(Vec<VmaWord>, T)> {
    use std::io::Read;
    let read_words = || crate::timing::step("dump: areas: BPF iterator", || iterator.areas_of(pid));
    let what = || format!("reading /proc/{pid}/maps");
    let text = |maps: Vec<u8>| String::from_utf8(maps).with_context(what);
    let mut file = std::fs::File::open(format!("/proc/{pid}/maps")).with_context(what)?;
    let mut maps = Vec::new();
    let started = std::time::Instant::now();
    let first = (&mut file).take(BIG_MAPS).read_to_end(&mut maps).with_context(what)?;
    if (first as u64) < BIG_MAPS {
        crate::timing::add("dump: areas: maps", started.elapsed());
        let words = read_words()?;
        return Ok((words, then(text(maps)?)?));
    }
    std::thread::scope(|s| {
        let words = std::thread::Builder::new().name("crust-areas".into()).spawn_scoped(s, read_words);
        let mine = file.read_to_end(&mut maps).with_context(what).map(|_| crate::timing::add("dump: areas: maps", started.elapsed()));
        let mine = mine.and_then(|()| then(text(maps)?));
        // Without a thread, the iterator runs here after the text.
        let words = match words {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => read_words(),
        };
        Ok((words?, mine?))
    })
}

/// Walks the lines of /proc/PID/maps and the iterator's words side by side (both in address
/// order), giving `each` every line with its flags word's smaps words.
fn side_by_side(pid: i32, maps: &str, words: &[VmaWord], mut each: impl FnMut(&str, String) -> Result<()>) -> Result<()> {
    let mut matched = 0;
    for line in maps.lines() {
        let (start, end) = range_of(line).with_context(|| format!("/proc/{pid}/maps: a line without its range: {line:?}"))?;
        match words.get(matched) {
            Some(w) if w.start == start && w.end == end => {
                matched += 1;
                each(line, words_of(w.flags))?;
            }
            // The vsyscall page is not an area of the process (the kernel's gate area): smaps
            // shows it with the words of its permissions.
            _ if line.ends_with("[vsyscall]") => {
                let perms = line.split_whitespace().nth(1).unwrap_or("").parse().unwrap_or_else(|never| match never {});
                each(line, gate_words(&perms))?
            }
            _ => bail!("/proc/{pid}/maps and the BPF iterator disagree at {start:#x}-{end:#x}"),
        }
    }
    if matched != words.len() {
        bail!("the BPF iterator found {} areas in pid {pid}, /proc/{pid}/maps {matched}", words.len());
    }
    Ok(())
}

fn range_of(line: &str) -> Option<(u64, u64)> {
    let (range, _) = line.split_once(' ')?;
    let (s, e) = range.split_once('-')?;
    Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?))
}

/// The smaps words of the gate area: those of its permissions.
fn gate_words(perms: &MMPermissions) -> String {
    let mut out = String::new();
    for (perm, word) in [(MMPermissions::READ, "rd"), (MMPermissions::WRITE, "wr"), (MMPermissions::EXECUTE, "ex")] {
        if perms.contains(perm) {
            out.push_str(word);
            out.push(' ');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_the_kernels_names_and_order() {
        assert_eq!(words_of(0b111), "rd wr ex ");
        assert_eq!(words_of(1 << 17 | 1 << 25 | 1 << 29), "dc wf hg ");
        assert_eq!(known_bits() & 1 << 11, 0);
        let gate = smaps::header("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]").unwrap();
        assert_eq!(gate_words(&gate.perms), "ex ");
    }

    /// A child of this test forked with its areas (probe areas of every advice but
    /// MADV_DONTFORK's, and enough small ones, every other page read-only, that its maps text
    /// is past [`BIG_MAPS`] and read beside the iterator on another thread): unlike this
    /// process, it maps nothing while crust reads its areas, as a frozen process. Killed
    /// when dropped.
    struct Child(nix::unistd::Pid);

    impl Child {
        fn with_many_areas() -> Child {
            let page = crate::sys::PAGE_SIZE as usize;
            let mut many = crate::sys::region::AnonRegion::new(4000 * page, false).unwrap();
            for i in (0..4000).step_by(2) {
                many.make_read_only(i * page..(i + 1) * page).unwrap();
            }
            let _probe = probe_areas();
            // (It only sleeps in pause(2): safe to fork while the test harness has threads.)
            Child(crate::sys::fork_sleeper().unwrap())
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.0, None);
        }
    }

    /// The iterator and a child of many areas to read with it, where it can be loaded (root).
    fn iterator_and_child() -> Option<(&'static VmaIterator, Child)> {
        let Some(iterator) = reader() else {
            eprintln!("no BPF iterator here: nothing to compare");
            return None;
        };
        Some((iterator, Child::with_many_areas()))
    }

    /// A process's areas read both ways give the same lines: where the iterator can be
    /// loaded (root), it is right.
    #[test]
    fn the_iterator_gives_smaps_own_words_for_every_area() {
        let Some((iterator, child)) = iterator_and_child() else { return };
        let pid = child.0.as_raw();
        let ours = lines_with(iterator, pid).unwrap().expect("no unknown flag in the child's areas");
        let kernel = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        same_areas(&ours, &kernel).unwrap();
        assert!(ours.lines().count() > 2 * 4000, "{} lines", ours.lines().count());
    }

    /// The areas built directly are the parse of the lines, field for field (the dump reads
    /// the former, the probe checks the latter against smaps).
    #[test]
    fn built_areas_are_the_parse_of_the_lines() {
        let Some((iterator, child)) = iterator_and_child() else { return };
        let pid = child.0.as_raw();
        let built = areas(pid).expect("no unknown flag in the child's areas");
        let parsed = smaps::parse(&lines_with(iterator, pid).unwrap().unwrap()).unwrap();
        assert!(built.len() > 4000, "{} areas", built.len());
        assert_eq!(built, parsed);
        assert!(built.iter().any(|a| a.vm_flags.contains(VmFlags::WF)), "the probe's MADV_WIPEONFORK area");
    }
}
