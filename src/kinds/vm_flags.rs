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

use crate::sys::bpf::VmaIterator;

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

/// The smaps lines crust reads for process `pid` (frozen), made without smaps; None where
/// smaps must be read (no iterator, or an area with a flag crust does not know).
pub fn smaps_lines(pid: i32) -> Option<String> {
    let iterator = reader()?;
    match lines_with(iterator, pid) {
        Ok(lines) => lines,
        Err(e) => {
            tracing::debug!(pid, "reading /proc/{pid}/smaps instead of the BPF iterator: {e:#}");
            None
        }
    }
}

fn lines_with(iterator: &VmaIterator, pid: i32) -> Result<Option<String>> {
    let words = crate::timing::step("dump: areas: BPF iterator", || iterator.areas_of(pid))?;
    if words.iter().any(|w| w.flags & !known_bits() != 0) {
        return Ok(None);
    }
    let maps = crate::timing::step("dump: areas: maps", || std::fs::read_to_string(format!("/proc/{pid}/maps")))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    // Both lists are in address order: walked side by side. Most areas share a few flags
    // words: each one's text is made once.
    let mut texts: Vec<(u64, String)> = Vec::new();
    let mut out = String::with_capacity(maps.len() + words.len() * 48);
    let mut matched = 0;
    for line in maps.lines() {
        let (start, end) = range_of(line).with_context(|| format!("/proc/{pid}/maps: a line without its range: {line:?}"))?;
        // The vsyscall page is not an area of the process (the kernel's gate area): smaps
        // shows it with the words of its permissions (kept under a word no area can have).
        let (flags, text) = match words.get(matched) {
            Some(w) if w.start == start && w.end == end => {
                matched += 1;
                (w.flags, None)
            }
            _ if line.ends_with("[vsyscall]") => (u64::MAX, Some(gate_words(line))),
            _ => bail!("/proc/{pid}/maps and the BPF iterator disagree at {start:#x}-{end:#x}"),
        };
        let i = match texts.iter().position(|(f, _)| *f == flags) {
            Some(i) => i,
            None => {
                texts.push((flags, text.unwrap_or_else(|| words_of(flags))));
                texts.len() - 1
            }
        };
        out.push_str(line);
        out.push_str("\nVmFlags: ");
        out.push_str(&texts[i].1);
        out.push('\n');
    }
    if matched != words.len() {
        bail!("the BPF iterator found {} areas in pid {pid}, /proc/{pid}/maps {matched}", words.len());
    }
    Ok(Some(out))
}

fn range_of(line: &str) -> Option<(u64, u64)> {
    let (range, _) = line.split_once(' ')?;
    let (s, e) = range.split_once('-')?;
    Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?))
}

fn gate_words(line: &str) -> String {
    let perms = line.split_whitespace().nth(1).unwrap_or("");
    let mut out = String::new();
    for (c, word) in perms.chars().zip(["rd", "wr", "ex"]) {
        if c != '-' {
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
        assert_eq!(gate_words("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]"), "ex ");
    }

    /// This test process's own areas (with probe areas of every advice mapped meanwhile) read
    /// both ways give the same lines: where the iterator can be loaded (root), it is right.
    #[test]
    fn the_iterator_gives_smaps_own_words_for_every_area() {
        if reader().is_none() {
            eprintln!("no BPF iterator here: nothing to compare");
            return;
        }
        let _probe = probe_areas();
        let pid = std::process::id() as i32;
        let mut result = Err(anyhow::anyhow!("not compared"));
        for _ in 0..3 {
            let ours = smaps_lines(pid).expect("no unknown flag in the test's own areas");
            let kernel = std::fs::read_to_string("/proc/self/smaps").unwrap();
            result = same_areas(&ours, &kernel);
            if result.is_ok() {
                break;
            }
        }
        result.unwrap();
    }
}
