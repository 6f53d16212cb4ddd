//! Touching paths as root without being led elsewhere: opening a directory with no symlink on
//! the way (openat2 RESOLVE_NO_SYMLINKS), and doing file system work with another user's
//! filesystem ids (setfsuid/setfsgid/setgroups of one helper thread only).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use super::SysError;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

/// openat2(2) of the absolute `path` (O_PATH | O_DIRECTORY | O_CLOEXEC) that refuses every
/// symlink and magic link on the way (ELOOP): a path the kernel named at dump time never goes
/// through one, so one found now was put there since.
pub fn open_dir_no_symlinks(path: &Path) -> Result<OwnedFd, SysError> {
    let op = || format!("openat2({}, O_PATH|O_DIRECTORY, RESOLVE_NO_SYMLINKS)", path.display());
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| SysError::new(op(), Errno::EINVAL))?;
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let how: [u64; 3] = [(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS];
    // SAFETY: `c` is a NUL-terminated string and `how` a live open_how of the size passed; both
    // outlive the call, which only reads them.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, c.as_ptr(), how.as_ptr(), std::mem::size_of_val(&how)) };
    let fd = Errno::result(fd).map_err(|e| SysError::new(op(), e))?;
    // SAFETY: openat2 just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Filesystem ids to act with: fsuid, fsgid and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Runs `work` in a helper thread of crust whose filesystem ids are `ids` (the raw system
/// calls change only the calling thread, unlike glibc's setgroups): the kernel checks every
/// path lookup, creation and permission of `work` against them, and a non-zero fsuid drops the
/// thread's filesystem capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN...). The thread
/// ends with `work`; crust's other threads keep root's ids throughout.
pub fn with_fs_ids<T: Send>(ids: &FsIds, work: impl FnOnce() -> T + Send) -> Result<T, SysError> {
    std::thread::scope(|s| {
        let helper = s.spawn(|| -> Result<T, SysError> {
            become_fs_ids(ids)?;
            Ok(work())
        });
        helper.join().unwrap_or_else(|_| Err(SysError::new("a helper thread with the image's filesystem ids panicked", Errno::EINVAL)))
    })
}

fn become_fs_ids(ids: &FsIds) -> Result<(), SysError> {
    // SAFETY: setgroups reads `groups.len()` gids from a live slice; per-thread as a raw call.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, ids.groups.len(), ids.groups.as_ptr()) };
    Errno::result(ret).map_err(|e| SysError::new("setgroups (helper thread)", e))?;
    // setfsgid/setfsuid return the previous id and cannot report failure: check by asking
    // again (an invalid id -1 changes nothing and returns the current one).
    for (nr, id, what) in [(libc::SYS_setfsgid, ids.gid, "setfsgid"), (libc::SYS_setfsuid, ids.uid, "setfsuid")] {
        // SAFETY: setfsuid/setfsgid take an integer only.
        unsafe { libc::syscall(nr, id) };
        // SAFETY: as above; -1 is never a valid id, so this only reads the current one.
        let now = unsafe { libc::syscall(nr, u32::MAX) } as u32;
        if now != id {
            return Err(SysError::new(format!("{what}({id}) (helper thread)"), Errno::EPERM));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_symlink_on_the_way_is_refused() {
        let base = std::env::temp_dir().join(format!("crust-fs-safe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real/d")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        assert!(open_dir_no_symlinks(&base.join("real/d")).is_ok());
        let e = open_dir_no_symlinks(&base.join("link/d")).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ELOOP), "{e}");
        assert!(e.to_string().contains("link/d"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// As root (the tests of crust run as root): the helper creates as the ids given, crust's
    /// own thread keeps root's.
    #[test]
    fn work_runs_with_the_ids_given_and_only_there() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let base = std::env::temp_dir().join(format!("crust-fs-ids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let ids = FsIds { uid: 65534, gid: 65534, groups: vec![] };
        let made = with_fs_ids(&ids, || std::fs::write(base.join("f"), b"x")).unwrap();
        assert!(made.is_ok());
        let meta = std::fs::metadata(base.join("f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        // A root-only directory is closed to it.
        std::fs::create_dir(base.join("private")).unwrap();
        std::fs::set_permissions(base.join("private"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let denied = with_fs_ids(&ids, || std::fs::write(base.join("private/g"), b"x")).unwrap();
        assert_eq!(denied.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        std::fs::write(base.join("private/h"), b"x").unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
