//! Anonymous memory named by its program (prctl PR_SET_VMA_ANON_NAME, Linux 5.17+ built with
//! CONFIG_ANON_VMA_NAME; shared memory since 6.2): /proc/PID/maps shows a private area as
//! `[anon:NAME]` and a shared one as `[anon_shmem:NAME]`. The area is the same memory as an
//! unnamed one; the dump keeps NAME in its record (Vma.anon_name) and the restore names the
//! area again once it is in place, with the same call run in the process.
//!
//! A name belongs to one area: the kernel merges neighbouring areas only if their names are
//! equal, so two that differ only by name stay two (restore maps an area apart from a
//! neighbour of the same protection anyway: memory.rs `could_merge`). Naming moves no page:
//! huge pages and lazily restored areas are as they would be unnamed. What maps cannot show is
//! not kept: the kernel shows `[heap]` and `[stack]` rather than a name given to them.

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use procfs::process::MMapPath;

use crate::image::proto::{Mm, Vma, vma::Kind as VmaKind};
use crate::sys::region::{PR_SET_VMA, PR_SET_VMA_ANON_NAME};
use crate::sys::remote::{Call, RemoteTask};

/// The longest name the kernel takes: ANON_VMA_NAME_MAX_LEN (80) bytes with its NUL.
pub const MAX_LEN: usize = 79;
/// Printable ASCII the kernel refuses in a name (they would confuse readers of maps).
const REFUSED: &[u8] = b"\\`$[]";

/// A name shown in a maps line's name field (`[anon:NAME]` or `[anon_shmem:NAME]`, brackets
/// taken off by the parser): whether the area is shared memory, and NAME (spaces and `:` in it
/// are its own).
pub fn in_maps(path: &MMapPath) -> Option<(bool, &str)> {
    let MMapPath::Other(text) = path else { return None };
    match text.strip_prefix("anon:") {
        Some(name) => Some((false, name)),
        None => text.strip_prefix("anon_shmem:").map(|name| (true, name)),
    }
}

/// The name field maps shows for a named area.
pub fn shown(vma: &Vma) -> String {
    let name = vma.anon_name.as_deref().unwrap_or_default();
    if vma.kind() == VmaKind::SharedAnonymous { format!("[anon_shmem:{name}]") } else { format!("[anon:{name}]") }
}

/// Dump: the kind of a named area of `pid` whose maps line `map` shows it `shared` or not,
/// named `name`. Only memory the restore makes anonymous again is taken: a shared area must be
/// backed by the kernel's own anonymous shared memory (its map_files link, which the name does
/// not hide, reads "/dev/zero (deleted)"), not by a memfd or a deleted file.
pub fn dump_kind(pid: i32, map: &super::smaps::Area, shared: bool, name: &str) -> Result<VmaKind> {
    let (start, end) = map.address;
    let what = || format!("pid {pid}: mapping {start:#x}-{end:#x} [{}:{name}]", if shared { "anon_shmem" } else { "anon" });
    if let Some(why) = invalid(name) {
        bail!("{}: a name the kernel would not take: {why}", what());
    }
    let shared_perms = map.perms.contains(procfs::process::MMPermissions::SHARED);
    if !shared {
        if shared_perms {
            bail!("{}: named private memory mapped shared; crust does not know this area", what());
        }
        return Ok(VmaKind::PrivateAnonymous);
    }
    let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let target = std::fs::read_link(&link).with_context(|| format!("{}: readlink {link}", what()))?;
    if !shared_perms || target.as_os_str() != "/dev/zero (deleted)" {
        bail!(
            "{}: named memory backed by {} ({}); crust restores names of anonymous memory only",
            what(),
            target.display(),
            if shared_perms { "shared" } else { "private" }
        );
    }
    Ok(VmaKind::SharedAnonymous)
}

/// Why `name` is not one the kernel would take (None: it is): at most [`MAX_LEN`] bytes of
/// printable ASCII, none of `\`, `` ` ``, `$`, `[`, `]`.
pub fn invalid(name: &str) -> Option<String> {
    if name.len() > MAX_LEN {
        return Some(format!("{} bytes, longer than the kernel's {MAX_LEN}", name.len()));
    }
    let bad = name.bytes().find(|&b| !(0x20..0x7f).contains(&b) || REFUSED.contains(&b))?;
    Some(format!("it holds the byte {bad:#04x} ({:?})", bad as char))
}

/// Image check: a name only on anonymous memory, and one the kernel would take.
pub fn check(vma: &Vma, where_: &dyn Fn() -> String) -> Result<()> {
    let Some(name) = &vma.anon_name else { return Ok(()) };
    if !matches!(vma.kind(), VmaKind::PrivateAnonymous | VmaKind::SharedAnonymous) {
        bail!("{}: field anon_name: a name on a {:?} area (only anonymous memory is named)", where_(), vma.kind());
    }
    if let Some(why) = invalid(name) {
        // (A hostile name may be megabytes long: only what the kernel could have held is shown.)
        let shown: String = name.chars().take(MAX_LEN + 1).collect();
        bail!("{}: field anon_name {shown:?}: {why}", where_());
    }
    Ok(())
}

/// Restore, before any process is created: an image with names needs a kernel that names
/// memory of each kind named. Without (CONFIG_ANON_VMA_NAME not set: EINVAL; shared memory
/// before Linux 6.2: EBADF) the restore is refused, the first such area said, rather than the
/// areas made without their names.
pub fn precheck(pid: u32, mm: &Mm) -> Result<()> {
    for vma in mm.vmas.iter().filter(|v| v.anon_name.is_some()) {
        let shared = vma.kind() == VmaKind::SharedAnonymous;
        if let Err(errno) = kernel_names(shared) {
            let why = match errno {
                nix::errno::Errno::EBADF => "; shared memory is named from Linux 6.2 on",
                _ => "; built without CONFIG_ANON_VMA_NAME",
            };
            bail!(
                "pid {pid}: mapping {:#x}-{:#x} is named {} but this kernel cannot name {} memory (prctl PR_SET_VMA_ANON_NAME: {errno}{why}): \
                 crust will not restore it unnamed",
                vma.start,
                vma.end,
                shown(vma),
                if shared { "shared" } else { "anonymous" }
            );
        }
    }
    Ok(())
}

/// Whether this kernel names anonymous memory, private or `shared`: asked once each, of a page
/// of crust's own. (CRUST_FAULT=restore-anon-names:1:fail stands for a kernel that does not.)
fn kernel_names(shared: bool) -> Result<(), nix::errno::Errno> {
    if crate::fault::point("restore-anon-names").is_err() {
        return Err(nix::errno::Errno::EINVAL);
    }
    static ANSWERS: [OnceLock<Result<(), nix::errno::Errno>>; 2] = [OnceLock::new(), OnceLock::new()];
    *ANSWERS[shared as usize].get_or_init(|| crate::sys::region::try_naming(shared))
}

/// Where names are written in crust's scratch area: after the table of a batch of calls
/// (RemoteTask::syscalls), which the calls naming them run from.
const NAMES_AT: u64 = crate::sys::remote::FREE_AFTER_BATCH;

/// Restore: names the named areas of `vmas`, once every area is in place and has its final
/// protection, with prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME) run in the process (in batches:
/// one stop per up to 512 areas; each distinct name written once into crust's scratch area).
pub fn restore(remote: &mut RemoteTask, vmas: &[Vma]) -> Result<()> {
    let named: Vec<(u64, u64, &str)> = vmas.iter().filter_map(|v| Some((v.start, v.end, v.anon_name.as_deref()?))).collect();
    let pid = remote.pid();
    let room = remote.scratch().map_or(0, |s| s.len.saturating_sub(NAMES_AT)) as usize;
    let mut done = 0;
    // Each round names at least one area (the room holds the longest name): bounded by their number.
    while done < named.len() {
        let (bytes, calls, used) = plan(&named[done..], room, NAMES_AT);
        if used == 0 {
            bail!("pid {pid}: crust's scratch area has no room for the name of mapping {:#x}", named[done].0);
        }
        let base = remote.put(NAMES_AT, &bytes)? - NAMES_AT;
        let calls: Vec<Call> = calls
            .into_iter()
            .map(|(nr, mut args)| {
                args[4] += base;
                (nr, args)
            })
            .collect();
        let (start, end, name) = named[done];
        remote.syscalls("prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME)", &calls).with_context(|| {
            format!("pid {pid}: naming its mappings again ({} areas from {start:#x}-{end:#x}, named {name:?})", calls.len())
        })?;
        done += used;
    }
    Ok(())
}

/// The names of (a first part of) `named` packed for the scratch area at `at` (each distinct
/// name once, NUL-terminated, within `room` bytes), the calls naming each area (their name
/// argument an offset from the scratch area's start), and how many areas they name.
fn plan(named: &[(u64, u64, &str)], room: usize, at: u64) -> (Vec<u8>, Vec<Call>, usize) {
    let mut bytes = Vec::new();
    let mut placed: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut calls = Vec::new();
    for &(start, end, name) in named {
        let offset = match placed.get(name) {
            Some(&offset) => offset,
            None if bytes.len() + name.len() + 1 > room => break,
            None => {
                let offset = at + bytes.len() as u64;
                // (No NUL inside: `check` refused every byte below 0x20 at load.)
                bytes.extend_from_slice(name.as_bytes());
                bytes.push(0);
                placed.insert(name, offset);
                offset
            }
        };
        calls.push((libc::SYS_prctl, [PR_SET_VMA as u64, PR_SET_VMA_ANON_NAME, start, end - start, offset, 0]));
    }
    let used = calls.len();
    (bytes, calls, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_maps_with_their_spaces_and_colons() {
        let other = |s: &str| MMapPath::Other(s.into());
        assert_eq!(in_maps(&other("anon:my arena: 2")), Some((false, "my arena: 2")));
        assert_eq!(in_maps(&other("anon_shmem: ring :x ")), Some((true, " ring :x ")));
        assert_eq!(in_maps(&other("anon:")), Some((false, "")));
        assert_eq!(in_maps(&other("vvar_vclock")), None);
        assert_eq!(in_maps(&MMapPath::Heap), None);
        assert_eq!(in_maps(&MMapPath::Path("/anon:x".into())), None);
    }

    #[test]
    fn only_names_the_kernel_takes_are_valid() {
        assert_eq!(invalid("glibc: malloc arena"), None);
        assert_eq!(invalid(&"x".repeat(MAX_LEN)), None);
        assert_eq!(invalid(""), None);
        assert!(invalid(&"x".repeat(MAX_LEN + 1)).unwrap().contains("80 bytes"));
        for bad in ["a[b", "a]", "$HOME", "a\\b", "`x`", "tab\there", "new\nline", "del\u{7f}", "é"] {
            assert!(invalid(bad).is_some(), "{bad:?} taken");
        }
    }

    #[test]
    fn an_image_name_is_checked_naming_the_field() {
        let mut vma = Vma { start: 0x1000, end: 0x2000, anon_name: Some("ok: a name".into()), ..Default::default() };
        let where_ = || "image file mm-7.img: field vmas[3] (0x1000-0x2000)".to_string();
        assert!(check(&vma, &where_).is_ok());
        vma.anon_name = Some("bad]name".into());
        let err = check(&vma, &where_).unwrap_err().to_string();
        assert!(err.contains("mm-7.img") && err.contains("field anon_name") && err.contains("bad]name"), "{err}");
        vma.anon_name = Some("n".repeat(1 << 20));
        let err = check(&vma, &where_).unwrap_err().to_string();
        assert!(err.contains("1048576 bytes") && err.len() < 300, "{err}");
        vma.anon_name = Some("fine".into());
        vma.set_kind(VmaKind::PrivateFile);
        assert!(check(&vma, &where_).unwrap_err().to_string().contains("PrivateFile"));
    }

    #[test]
    fn names_are_written_once_and_batches_end_where_the_room_does() {
        let named = [(0x1000, 0x3000, "a b"), (0x3000, 0x4000, "c:d"), (0x4000, 0x5000, "a b"), (0x5000, 0x6000, "long name")];
        let (bytes, calls, used) = plan(&named, 64, 100);
        assert_eq!(bytes, b"a b\0c:d\0long name\0");
        assert_eq!(used, 4);
        let args: Vec<[u64; 6]> = calls.iter().map(|c| c.1).collect();
        let set = |s: u64, l: u64, at: u64| [PR_SET_VMA as u64, PR_SET_VMA_ANON_NAME, s, l, at, 0];
        assert_eq!(args, vec![set(0x1000, 0x2000, 100), set(0x3000, 0x1000, 104), set(0x4000, 0x1000, 100), set(0x5000, 0x1000, 108)]);
        // Room for the first two names only: the third area (a name already placed) still fits.
        let (bytes, _, used) = plan(&named, 9, 0);
        assert_eq!((bytes.len(), used), (8, 3));
        assert_eq!(plan(&named, 2, 0).2, 0);
    }
}
