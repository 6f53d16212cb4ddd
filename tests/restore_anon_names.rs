//! Anonymous memory named by its program (prctl PR_SET_VMA_ANON_NAME: `[anon:NAME]`,
//! `[anon_shmem:NAME]` in /proc/PID/maps) is dumped with its names and restored with them;
//! where the kernel cannot name memory (built without CONFIG_ANON_VMA_NAME), an image with
//! names is refused before anything is created; a damaged name is refused naming the record
//! file and field.

mod common;
use common::*;
use std::fs;
use std::path::Path;

use crust::image::proto;
use crust::image::{self as image, ImageDir};

/// The names anon_names.c gives its areas, by the READY field of each area's address.
const NAMES: [(&str, &str); 7] = [
    ("priv", "crust: private, written"),
    ("shared", "crust: shared anon"),
    ("left", "crust: left"),
    ("right", "crust: right"),
    ("odd", "  spaces  and : colons :: "),
    ("untouched", "crust: never touched"),
    ("longest", "crust: the longest name the kernel takes, seventy-nine bytes of it: 0123456789!"),
];

/// /proc/PID/maps line by line as the kernel wrote it (names byte for byte), but for the
/// device and inode of shared memory that is no file: a restored shared object is a new inode.
fn maps_lines(pid: i32) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("reading /proc/{pid}/maps: {e}"));
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(6, ' ').collect();
            let name = f.get(5).map_or("", |n| n.trim_start());
            let shared_object = f.len() == 6 && f[1].ends_with('s') && (name.starts_with('[') || name == "/dev/zero (deleted)");
            if shared_object { format!("{} {} {} (dev) (inode) {name}", f[0], f[1], f[2]) } else { l.to_string() }
        })
        .collect()
}

/// The lines of `before` missing from `after` and the other way round, as problems.
fn maps_differences(before: &[String], after: &[String]) -> Vec<String> {
    let gone = before.iter().filter(|l| !after.contains(l)).map(|l| format!("maps line lost: {l:?}"));
    let new = after.iter().filter(|l| !before.contains(l)).map(|l| format!("maps line new: {l:?}"));
    gone.chain(new).collect()
}

/// Whether this kernel names memory, as the workload found (its first prctl's errno); when it
/// does not, that is this kernel's build (EINVAL; CONFIG_ANON_VMA_NAME unset where
/// /proc/config.gz says), not something else the workload got wrong.
fn kernel_names_memory(w: &Workload) -> bool {
    if w.ready_field("names") == "1" {
        return true;
    }
    assert_eq!(w.ready_field("errno"), libc::EINVAL.to_string(), "the workload's prctl failed otherwise than for a kernel without names");
    if Path::new("/proc/config.gz").exists() {
        let config = std::process::Command::new("zcat").arg("/proc/config.gz").output().expect("zcat /proc/config.gz");
        let config = String::from_utf8_lossy(&config.stdout);
        assert!(config.contains("# CONFIG_ANON_VMA_NAME is not set"), "prctl refused every name, yet the kernel has CONFIG_ANON_VMA_NAME");
    }
    false
}

/// The memory record of the workload's image, read and written back with crust's image code.
fn edit_mm(w: &Workload, edit: impl FnOnce(&mut proto::Mm)) {
    let dir = ImageDir::open(&w.image_dir).unwrap();
    let name = image::mm_name(w.pid as u32);
    let mut mm: proto::Mm = dir.read_record(&name).unwrap();
    edit(&mut mm);
    dir.write_record(&name, &mm).unwrap();
}

/// The area of `mm` holding `address`.
fn area_at(mm: &mut proto::Mm, address: u64) -> &mut proto::Vma {
    mm.vmas.iter_mut().find(|v| v.start <= address && address < v.end).unwrap_or_else(|| panic!("no area at {address:#x} in the image"))
}

/// anon_names.c: seven named areas (private, shared, two halves of one mapping named apart,
/// a read-only one whose name has spaces at both ends and colons, one never touched, one with
/// a name of 79 bytes) are dumped with their names and restored: each maps line (range,
/// protection, offset, name byte for byte) is what it was, seen from outside (every line of
/// /proc/PID/maps) and from inside; contents are intact and the writable areas take writes;
/// the untouched one still has no page.
/// A kernel built without CONFIG_ANON_VMA_NAME (this project's VM) names nothing: the test
/// then only checks that it is the kernel that refuses, and says so (the restore of such
/// images is refused: the next test).
#[test]
fn named_areas_come_back_with_their_names_contents_and_maps_lines() {
    let mut w = Workload::spawn("anon_names", &[]);
    if !kernel_names_memory(&w) {
        eprintln!("this kernel names no memory (CONFIG_ANON_VMA_NAME not set): nothing named to restore here");
        return;
    }
    let (maps_before, before) = (maps_lines(w.pid), w.snapshot());
    w.dump();
    let dir = ImageDir::open(&w.image_dir).unwrap();
    let mm: proto::Mm = dir.read_record(&image::mm_name(w.pid as u32)).unwrap();
    let mut problems = Vec::new();
    for (field, name) in NAMES {
        let start = parse_hex(&w.ready_field(field));
        let vma = mm.vmas.iter().find(|v| v.start == start);
        if vma.and_then(|v| v.anon_name.as_deref()) != Some(name) {
            problems.push(format!("image: the area of {field} at {start:#x} is {vma:?}, not named {name:?}"));
        }
    }
    w.restore_detached();
    let (maps_after, after) = (maps_lines(w.pid), w.snapshot());
    problems.extend(maps_differences(&maps_before, &maps_after));
    w.verify_restored(&before, &after, &[], problems);
}

/// The image of anon_names.c with names on two of its areas (put there by the test where this
/// kernel named nothing, else as dumped), restored where the kernel cannot name memory (this
/// kernel, or CRUST_FAULT=restore-anon-names standing for one): refused in one line naming
/// the pid, the first named area's address and its name, with no process left; the image as
/// dumped (unnamed here) is restored afterwards all the same, maps lines, contents and writes
/// as they were.
#[test]
fn names_where_the_kernel_cannot_name_memory_are_refused_leaving_nothing() {
    let mut w = Workload::spawn("anon_names", &[]);
    let names = kernel_names_memory(&w);
    let (maps_before, before) = (maps_lines(w.pid), w.snapshot());
    w.dump();
    let as_dumped = w.dir.path.join("img-as-dumped");
    copy_dir(&w.image_dir, &as_dumped);
    let (priv_at, shared_at) = (parse_hex(&w.ready_field("priv")), parse_hex(&w.ready_field("shared")));
    let mut first = (0, String::new());
    edit_mm(&w, |mm| {
        area_at(mm, priv_at).anon_name = Some(NAMES[0].1.into());
        area_at(mm, shared_at).anon_name = Some(NAMES[1].1.into());
        let shared_start = area_at(mm, shared_at).start;
        let vma = mm.vmas.iter().find(|v| v.anon_name.is_some()).unwrap();
        let shown = if vma.start == shared_start { "anon_shmem" } else { "anon" };
        first = (vma.start, format!("[{shown}:{}]", vma.anon_name.as_deref().unwrap()));
    });
    if names {
        w.crust_env.push(("CRUST_FAULT".into(), "restore-anon-names:1:fail".into()));
    }
    w.restore_extra.push("--trust-image".into());
    let pid = format!("pid {}", w.pid);
    let (address, shown) = (format!("{:#x}", first.0), first.1);
    w.assert_restore_refused(&[&pid, &address, &shown, "but this kernel cannot name"], "names on a kernel without them");

    w.crust_env.clear();
    w.image_dir = as_dumped;
    w.restore_detached();
    let (maps_after, after) = (maps_lines(w.pid), w.snapshot());
    let problems = maps_differences(&maps_before, &maps_after);
    w.verify_restored(&before, &after, &[], problems);
}

type MmEdit<'a> = dyn Fn(&mut proto::Mm) + 'a;

/// A name the kernel would not take, in an otherwise good image taken on trust (a `]`, which
/// would end maps's brackets early; 200 bytes; a name on a file mapping): refused naming the
/// record file and field, whatever the kernel, with no process left.
#[test]
fn a_damaged_name_in_the_image_is_refused_naming_file_and_field() {
    let mut w = Workload::spawn("anon_names", &[]);
    let priv_at = parse_hex(&w.ready_field("priv"));
    w.dump();
    let mm_name = image::mm_name(w.pid as u32);
    let pristine = w.dir.path.join("img-as-dumped");
    copy_dir(&w.image_dir, &pristine);
    w.restore_extra.push("--trust-image".into());
    let cases: [(&str, &MmEdit<'_>, &str); 3] = [
        ("a ]", &|mm| area_at(mm, priv_at).anon_name = Some("bad] name".into()), "bad] name"),
        ("200 bytes", &|mm| area_at(mm, priv_at).anon_name = Some("n".repeat(200)), "200 bytes"),
        (
            "on a file mapping",
            &|mm| {
                let file = mm.vmas.iter_mut().find(|v| v.kind() == proto::vma::Kind::PrivateFile).expect("test setup: no file mapping");
                file.anon_name = Some("a file".into());
            },
            "PrivateFile",
        ),
    ];
    for (i, (what, edit, detail)) in cases.iter().enumerate() {
        let copy = w.dir.path.join(format!("damaged-{i}"));
        copy_dir(&pristine, &copy);
        w.image_dir = copy;
        edit_mm(&w, edit);
        w.assert_restore_refused(&[&mm_name, "field anon_name", detail], what);
    }
}
