//! PROCMAP_QUERY (Linux 6.11+, an ioctl on /proc/PID/maps): the mappings of a process with
//! given permissions, one call each, without the kernel writing a line for every mapping. A
//! process of 16384 small areas costs the kernel 5-10 ms to write its /proc/PID/maps; its dozen
//! executable mappings cost a dozen calls (the kernel passes over the others itself).

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{SysError, remote::io_errno};

/// Which mappings are wanted: all of these permissions (PROCMAP_QUERY_VMA_*).
#[derive(Clone, Copy, Debug)]
pub enum Having {
    Executable,
    Shared,
}

const VMA_READABLE: u64 = 0x01;
const VMA_WRITABLE: u64 = 0x02;
const VMA_EXECUTABLE: u64 = 0x04;
const VMA_SHARED: u64 = 0x08;
const COVERING_OR_NEXT_VMA: u64 = 0x10;

/// struct procmap_query (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

nix::ioctl_readwrite!(procmap_query, b'f', 17, ProcmapQuery);

/// The mappings of `pid` having `having`, as the lines /proc/PID/maps shows for them (a name
/// escaped as there: a newline as `\012`), in address order, but for [vsyscall] (no area of the
/// process: the query does not see it); None where the kernel has no PROCMAP_QUERY.
pub fn maps_lines(pid: i32, having: Having) -> Result<Option<String>, SysError> {
    let file = File::open(format!("/proc/{pid}/maps")).map_err(|e| SysError::new("open /proc/PID/maps", io_errno(&e)).pid(pid))?;
    let wanted = match having {
        Having::Executable => VMA_EXECUTABLE,
        Having::Shared => VMA_SHARED,
    };
    let mut name = vec![0u8; 4096 + 64];
    let mut lines = String::new();
    let mut at = 0u64;
    // Bounded: each call returns a mapping above the last one, at most the 2^16-odd a
    // process may have (vm.max_map_count, 65530 by default; a million as a hard stop).
    for _ in 0..1_000_000 {
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: COVERING_OR_NEXT_VMA | wanted,
            query_addr: at,
            vma_name_size: name.len() as u32,
            vma_name_addr: name.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: PROCMAP_QUERY reads `q` and writes `q` and at most `vma_name_size` bytes at
        // `vma_name_addr` (`name`, alive and that long across the call); the kernel checks `size`.
        match unsafe { procmap_query(file.as_raw_fd(), &mut q) } {
            Ok(_) => {}
            Err(nix::errno::Errno::ENOENT) => return Ok(Some(lines)),
            Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) if at == 0 => return Ok(None),
            Err(e) => return Err(SysError::new(format!("ioctl(/proc/{pid}/maps, PROCMAP_QUERY) at {at:#x}"), e)),
        }
        push_line(&mut lines, &q, &name);
        if q.vma_end <= at {
            break;
        }
        at = q.vma_end;
    }
    Err(SysError::new(format!("ioctl(/proc/{pid}/maps, PROCMAP_QUERY): no end after {at:#x}"), nix::errno::Errno::ELOOP))
}

/// One /proc/PID/maps line for the mapping `q` describes.
fn push_line(lines: &mut String, q: &ProcmapQuery, name: &[u8]) {
    use std::fmt::Write;
    let flag = |bit: u64, c: char| if q.vma_flags & bit != 0 { c } else { '-' };
    let shared = if q.vma_flags & VMA_SHARED != 0 { 's' } else { 'p' };
    let _ = write!(
        lines,
        "{:08x}-{:08x} {}{}{}{shared} {:08x} {:02x}:{:02x} {} ",
        q.vma_start,
        q.vma_end,
        flag(VMA_READABLE, 'r'),
        flag(VMA_WRITABLE, 'w'),
        flag(VMA_EXECUTABLE, 'x'),
        q.vma_offset,
        q.dev_major,
        q.dev_minor,
        q.inode
    );
    // vma_name_size counts the terminating NUL; 0: no name.
    let len = (q.vma_name_size as usize).saturating_sub(1).min(name.len());
    let text = String::from_utf8_lossy(&name[..len]);
    lines.push_str(&text.replace('\n', "\\012"));
    lines.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of this process's executable and shared mappings are those of its
    /// /proc/self/maps (with the padding before the name left out).
    #[test]
    fn lines_are_those_of_proc_maps() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let squeeze = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
        let perms = |l: &str| l.split(' ').nth(1).unwrap().as_bytes().to_vec();
        for having in [Having::Executable, Having::Shared] {
            let Some(ours) = maps_lines(std::process::id() as i32, having).unwrap() else { return };
            let keep = |l: &&str| match having {
                Having::Executable => perms(l)[2] == b'x',
                Having::Shared => perms(l)[3] == b's',
            };
            // ([vsyscall] is no area of the process: the kernel's query does not list it.)
            let want: Vec<String> = maps.lines().filter(keep).filter(|l| !l.ends_with("[vsyscall]")).map(squeeze).collect();
            assert_eq!(ours.lines().map(squeeze).collect::<Vec<_>>(), want, "{having:?}");
            if matches!(having, Having::Executable) {
                assert!(want.iter().any(|l| l.ends_with("[vdso]")), "{want:?}");
            }
        }
    }
}
