//! System V shared memory segments, as crust itself sees them (same IPC namespace as the
//! processes it restores): finding, recreating with a chosen id, filling, removing.

use nix::errno::Errno;

use super::SysError;

/// One line of /proc/sysvipc/shm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub key: i32,
    pub shmid: i32,
    /// Permission bits plus SHM_DEST (0o1000: removed, dies with its last attachment) and
    /// SHM_LOCKED (0o2000).
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// The creator's ids (the kernel's IPC permission check grants the owner's bits to them too).
    pub cuid: u32,
    pub cgid: u32,
    /// The pid of the process that created it.
    pub cpid: i32,
}

pub const SHM_DEST: u32 = 0o1000;

pub fn segments() -> Result<Vec<SegmentInfo>, SysError> {
    let text =
        std::fs::read_to_string("/proc/sysvipc/shm").map_err(|e| SysError::new("read /proc/sysvipc/shm", super::remote::io_errno(&e)))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(SegmentInfo {
                key: f.first()?.parse().ok()?,
                shmid: f.get(1)?.parse().ok()?,
                mode: u32::from_str_radix(f.get(2)?, 8).ok()?,
                size: f.get(3)?.parse().ok()?,
                uid: f.get(7)?.parse().ok()?,
                gid: f.get(8)?.parse().ok()?,
                cuid: f.get(9)?.parse().ok()?,
                cgid: f.get(10)?.parse().ok()?,
                cpid: f.get(4)?.parse().ok()?,
            })
        })
        .collect())
}

const NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

/// The id the next segment created gets (-1: the kernel's choice).
pub fn next_id() -> Result<i32, SysError> {
    let text = std::fs::read_to_string(NEXT_ID).map_err(|e| SysError::new(format!("read {NEXT_ID}"), super::remote::io_errno(&e)))?;
    text.trim().parse().map_err(|_| SysError::new(format!("parse {NEXT_ID}"), Errno::EINVAL))
}

/// Gives the choice of the next segment's id back to the kernel.
pub fn reset_next_id() -> Result<(), SysError> {
    std::fs::write(NEXT_ID, "-1").map_err(|e| SysError::new(format!("write {NEXT_ID}"), super::remote::io_errno(&e)))
}

/// Creates a segment with exactly `shmid` (through /proc/sys/kernel/shm_next_id, which is put
/// back to -1 whatever happens; a caller that may be killed in between journals it first).
pub fn create_with_id(key: i32, shmid: i32, size: u64, mode: u32) -> Result<i32, SysError> {
    std::fs::write(NEXT_ID, shmid.to_string()).map_err(|e| SysError::new(format!("write {NEXT_ID}"), super::remote::io_errno(&e)))?;
    // SAFETY: shmget takes integers only.
    let ret = unsafe { libc::shmget(key, size as usize, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) };
    let result = Errno::result(ret).map_err(|e| SysError::new(format!("shmget(key {key:#x}, {size} bytes)"), e));
    let _ = std::fs::write(NEXT_ID, "-1");
    result
}

/// Copies `data` regions into segment `shmid` at their offsets, through a temporary attachment
/// in crust.
pub fn fill(shmid: i32, size: u64, mut write: impl FnMut(&mut [u8]) -> std::io::Result<()>) -> Result<(), SysError> {
    // SAFETY: attaching a segment anywhere in crust; it is detached below.
    let addr = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(SysError::new(format!("shmat({shmid})"), Errno::last()));
    }
    // SAFETY: the attachment is `size` bytes of readable, writable memory until shmdt.
    let bytes = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, size as usize) };
    let result = write(bytes).map_err(|e| SysError::new(format!("filling shm {shmid}"), super::remote::io_errno(&e)));
    // SAFETY: detaching the attachment made above; `bytes` is no longer used.
    unsafe { libc::shmdt(addr) };
    result
}

/// Gives a segment its owner and mode (IPC_SET).
pub fn set_owner(shmid: i32, uid: u32, gid: u32, mode: u32) -> Result<(), SysError> {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it, IPC_SET reads it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into `ds`, a live local.
    Errno::result(unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) }).map_err(|e| SysError::new("shmctl(IPC_STAT)", e))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads `ds`, a live local.
    Errno::result(unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut ds) }).map(drop).map_err(|e| SysError::new("shmctl(IPC_SET)", e))
}

/// Marks a segment removed: it goes away with its last attachment.
pub fn remove(shmid: i32) -> Result<(), SysError> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    Errno::result(unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) })
        .map(drop)
        .map_err(|e| SysError::new(format!("shmctl({shmid}, IPC_RMID)"), e))
}
