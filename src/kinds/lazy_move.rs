//! Pages of a lazy restore placed by a thread of the restored process itself, with UFFDIO_MOVE:
//! huge pages whole, at one copy each, and 4 KiB pages copied on both cores (see
//! docs/lazy-restore.md, "The steps" and "Huge pages").
//!
//! UFFDIO_COPY places 4 KiB pages only, and a collapse afterwards copies each huge page a second
//! time. UFFDIO_MOVE moves a PMD-mapped huge page whole into a registered range, but the kernel
//! takes the call only from a thread of the userfaultfd's own address space. So a restored
//! process with huge stretches (or many pages) to fill gets a helper thread, the *mover*:
//! crust's staging workers write verified stretches into a group of the process's staging
//! area (process_vm_writev: one copy, the kernel faults huge pages in there; kinds/lazy_stage.rs)
//! or place verified 4 KiB pages in a group of its registered staging area of 4 KiB pages
//! (UFFDIO_COPY), and the mover moves the group onto its place.
//!
//! The mover never runs code of its own. It is made by an injected clone (CLONE_VM, THREAD,
//! SIGHAND, SYSVSEM; not CLONE_FILES), after the process's credentials are final, with every
//! signal blocked (it never takes one of the program's), its stack pointer 0 (were it ever let
//! go in user space, its first push would fault and end the process rather than run anything),
//! and it only sits in ptrace stops and makes the calls crust injects. It keeps one fd of its own
//! table: its copy of the userfaultfd. It is never made for a process with a seccomp filter
//! (its calls could kill the process), nor where the kernel lacks UFFD_FEATURE_MOVE: those
//! processes take the COPY-then-collapse path.
//!
//! ptrace belongs to the thread that attached: the mover is parked (detached inside pause()
//! with every signal blocked: a call that never returns) whenever it changes hands, from
//! crust's restoring thread to the server thread, and from there to the detached
//! crust-lazypages. Seized with PTRACE_O_EXITKILL, it dies with its tracer (and the process
//! with it, as the guard would kill it). When the process's pages are in, the mover unmaps the
//! staging area and exits: the process keeps no trace. If the process exits or execs, the mover
//! goes with it.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::RestoreCtx;
use crate::sys::PAGE_SIZE;
use crate::sys::pagemap::{HUGE_STRETCH, PageMap};
use crate::sys::ptrace;
use crate::sys::remote::RemoteTask;
use crate::sys::{SysError, uffd};

/// Stretches written and moved per call: a call through the mover costs two stops (four
/// context switches, a few ptrace calls), measured 0.3-0.7 ms each on this loaded VM, so a call
/// per 8 MiB (staging area of 8 MiB and a page).
pub const STRETCHES_PER_MOVE: u64 = 4;
/// Groups of the staging area, each a move's stretches: workers write the next ones while the
/// mover moves one (kinds/lazy_stage.rs).
pub const GROUPS: u64 = 4;
const GROUP_LEN: u64 = STRETCHES_PER_MOVE * HUGE_STRETCH;
/// The staging area: the groups, then a page for the uffdio_move argument.
const STAGING_LEN: u64 = GROUPS * GROUP_LEN + PAGE_SIZE;
/// The staging area of 4 KiB pages (MADV_NOHUGEPAGE), as many groups: registered with the
/// userfaultfd by crust, which places verified pages there with UFFDIO_COPY from its workers,
/// for the mover to move (a move of 4 KiB pages costs a fraction of a copy).
pub const SMALL_STAGING_LEN: u64 = GROUPS * GROUP_LEN;
const CLONE_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::CLONE_SYSVSEM) as u64;

/// A mover nobody traces, waiting in pause() with every signal blocked, and what it needs.
#[derive(Debug)]
pub struct ParkedMover {
    pub pid: i32,
    pub tid: i32,
    /// Its copy of the userfaultfd, in its own fd table.
    uffd: u64,
    /// 2 MiB aligned, [`STAGING_LEN`] bytes.
    staging: u64,
    /// [`SMALL_STAGING_LEN`] bytes.
    small: u64,
    /// A `syscall` instruction in the process's vDSO.
    syscall_ip: u64,
}

/// A mover traced by the calling thread.
pub struct Mover {
    parked: ParkedMover,
    remote: RemoteTask,
    /// The process's page map, to see which staged stretches the kernel gave a huge page.
    pagemap: Option<PageMap>,
}

/// What a move placed: `len` bytes, and the stretches among them that arrived in 4 KiB pages
/// (the kernel had no huge page for the staging area: fragmented memory), to collapse.
pub struct Moved {
    pub len: u64,
    pub small: Vec<u64>,
}

/// Whether the restore of `pid` makes it a mover (given a copy of its userfaultfd: it has huge
/// stretches to fill and the kernel moves pages): not with a seccomp filter (the mover's calls
/// could kill the process), not in another pid namespace.
pub fn wanted(pid: i32, has_seccomp: bool) -> bool {
    !has_seccomp && !super::lazy_pages::no_move() && sees_crust(pid)
}

/// Whether `pid` sees crust by crust's own pid (the same pid namespace): the process fetches
/// its copy of the userfaultfd from crust by that number.
fn sees_crust(pid: i32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    ns("self").is_some_and(|own| Some(own) == ns(&pid.to_string()))
}

/// The restore's first half, while the process is still root: if it is to have a mover (it
/// has huge stretches to fill, the kernel moves pages, and [`wanted`]), it takes a copy of its
/// userfaultfd from crust ([`fetch_uffd`]); returns that copy's fd number in the process.
pub fn before_credentials(ctx: &mut RestoreCtx, has_seccomp: bool) -> Option<u64> {
    let pid = ctx.pid.as_raw();
    let crust_copy = ctx.lazy.as_ref()?.mover_uffd(pid as u32)?;
    if !wanted(pid, has_seccomp) {
        return None;
    }
    fetch_uffd(ctx.remote, crust_copy.as_fd()).map_err(|e| tracing::debug!(pid, "no lazy page mover: {e:#}")).ok()
}

/// The second half, once the process's credentials are final: the mover is made (the process
/// closes its copy `uffd` of the userfaultfd) and handed to the server.
pub fn after_credentials(ctx: &mut RestoreCtx, uffd: u64, helper: u64) -> Result<()> {
    let pid = ctx.pid.as_raw();
    // (The copy came from the registrar: it is there.)
    let registrar = ctx.lazy.clone().context("a lazy page mover without a lazy restore")?;
    let vdso = super::memory::syscall_instruction_in_vdso(pid)?;
    if let Some(mover) = spawn(ctx.remote, uffd, helper, vdso)? {
        registrar.hand_mover(mover)?;
    }
    Ok(())
}

/// While the process is still root: it takes a copy of crust's `uffd` (pidfd_getfd, which needs
/// ptrace access to crust) into its table, for the mover's table to inherit. Returns its fd
/// number there; the process closes it again once the mover exists ([`spawn`]).
pub fn fetch_uffd(leader: &mut RemoteTask, uffd: BorrowedFd) -> Result<u64> {
    let crust = leader.syscall("pidfd_open(crust)", libc::SYS_pidfd_open, &[std::process::id() as u64, 0])?;
    let got = leader.syscall("pidfd_getfd(crust's userfaultfd)", libc::SYS_pidfd_getfd, &[crust, uffd.as_raw_fd() as u64, 0]);
    leader.syscall("close(pidfd of crust)", libc::SYS_close, &[crust])?;
    Ok(got?)
}

/// Makes the mover of the process `leader` drives (credentials final, every signal blocked in
/// the leader: the clone inherits both), with `uffd` the process's copy of the userfaultfd,
/// which the process closes here whatever happens. The mover comes back parked, for the server;
/// None if it could not be made or set up (it is gone then: the collapse path serves). An error
/// only when a mover exists that crust cannot drive.
pub fn spawn(leader: &mut RemoteTask, uffd: u64, helper: u64, syscall_ip: u64) -> Result<Option<ParkedMover>> {
    let pid = leader.pid().as_raw();
    let made = leader.syscall("clone(lazy page mover)", libc::SYS_clone, &[CLONE_FLAGS, 0, 0, 0, 0]);
    // The process's fd table is the image's again.
    let closed = leader.syscall("close(userfaultfd copy)", libc::SYS_close, &[uffd]);
    let tid = match made {
        Ok(tid) => Pid::from_raw(tid as i32),
        Err(e) => {
            tracing::debug!(pid, "no lazy page mover: {e}");
            return Ok(None);
        }
    };
    // It waits in the helper's pause loop (the clone returns there) until seized.
    ptrace::seize_and_interrupt(tid, true)?;
    let mut remote = RemoteTask::new_thread_of(leader, tid, helper)?;
    super::memory::use_helper(&mut remote, helper);
    let set_up = closed.map_err(anyhow::Error::from).and_then(|_| set_up(&mut remote, uffd));
    let (staging, small) = match set_up {
        Ok(s) => s,
        Err(e) => {
            let _ = remote.exit_with(libc::SYS_exit, &[0]);
            tracing::debug!(pid, tid = tid.as_raw(), "no lazy page mover: setting it up: {e:#}");
            return Ok(None);
        }
    };
    let mut mover = Mover { parked: ParkedMover { pid, tid: tid.as_raw(), uffd, staging, small, syscall_ip }, remote, pagemap: None };
    mover.remote.set_syscall_ip(syscall_ip);
    tracing::debug!(pid, tid = tid.as_raw(), staging = format!("{staging:#x}"), "lazy page mover made");
    mover.park().map(Some)
}

/// The mover's own state: every fd but the userfaultfd closed, every signal blocked, the
/// staging areas mapped. Returns their addresses: for huge pages, for 4 KiB pages.
fn set_up(t: &mut RemoteTask, uffd: u64) -> Result<(u64, u64)> {
    ptrace::set_sigmask(t.pid(), !0)?;
    // The mover's fd table is its own copy (no CLONE_FILES): closing its fds releases nothing
    // of the process's. POSIX locks belong to the files_struct that took them (fcntl_setlk sets
    // fl_owner = current->files; close removes those of the closer's table only:
    // locks_remove_posix(filp, owner) in fs/locks.c), dnotify marks likewise (dn_owner), and
    // leases, flock and OFD locks go with the last reference to the open file, which the process
    // holds.
    if uffd > 0 {
        t.syscall("close_range", libc::SYS_close_range, &[0, uffd - 1, 0])?;
    }
    t.syscall("close_range", libc::SYS_close_range, &[uffd + 1, u32::MAX as u64, 0])?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u64;
    let len = STAGING_LEN + HUGE_STRETCH;
    let raw = t.syscall("mmap(staging area)", libc::SYS_mmap, &[0, len, prot, flags, u64::MAX, 0])?;
    let start = raw.next_multiple_of(HUGE_STRETCH);
    if start > raw {
        t.syscall("munmap(staging head)", libc::SYS_munmap, &[raw, start - raw])?;
    }
    t.syscall("munmap(staging tail)", libc::SYS_munmap, &[start + STAGING_LEN, raw + len - start - STAGING_LEN])?;
    // Huge pages where crust writes; never copied into a child the program forks.
    t.syscall("madvise(MADV_HUGEPAGE)", libc::SYS_madvise, &[start, STAGING_LEN, libc::MADV_HUGEPAGE as u64])?;
    t.syscall("madvise(MADV_DONTFORK)", libc::SYS_madvise, &[start, STAGING_LEN, libc::MADV_DONTFORK as u64])?;
    let small = t.syscall("mmap(small staging area)", libc::SYS_mmap, &[0, SMALL_STAGING_LEN, prot, flags, u64::MAX, 0])?;
    t.syscall("madvise(MADV_NOHUGEPAGE)", libc::SYS_madvise, &[small, SMALL_STAGING_LEN, libc::MADV_NOHUGEPAGE as u64])?;
    t.syscall("madvise(MADV_DONTFORK)", libc::SYS_madvise, &[small, SMALL_STAGING_LEN, libc::MADV_DONTFORK as u64])?;
    Ok((start, small))
}

impl ParkedMover {
    /// Takes the mover over in the calling thread (its tracer from now on).
    pub fn seize(self) -> Result<Mover, (ParkedMover, SysError)> {
        let tid = Pid::from_raw(self.tid);
        if let Err(e) = ptrace::seize_and_interrupt(tid, true) {
            return Err((self, e));
        }
        match RemoteTask::new(tid, self.syscall_ip) {
            Ok(mut remote) => {
                remote.set_stack_pointer(0);
                Ok(Mover { parked: self, remote, pagemap: None })
            }
            Err(e) => {
                let _ = ptrace::detach(tid);
                Err((self, e))
            }
        }
    }

    /// Seizes the mover only to end it (see [`Mover::end`]).
    pub fn end(self) {
        match self.seize() {
            Ok(m) => m.end(),
            Err((p, e)) => tracing::debug!(pid = p.pid, tid = p.tid, "ending the lazy page mover: {e}"),
        }
    }
}

/// Why a move did not place everything.
#[derive(Debug)]
pub enum MoveFailed {
    /// The kernel refused (EAGAIN: an event first; EEXIST, ENOENT, EBUSY, EINVAL...), after
    /// `moved` bytes.
    Refused { errno: Errno, moved: u64 },
    /// The mover or its process is gone, or crust lost it: nothing more through it.
    Lost(String),
}

impl Mover {
    pub fn pid(&self) -> i32 {
        self.parked.pid
    }

    pub fn tid(&self) -> i32 {
        self.parked.tid
    }

    /// Where group `g` of the staging area is (workers write it: kinds/lazy_stage.rs).
    pub fn group_address(&self, g: u64) -> u64 {
        self.parked.staging + g.min(GROUPS - 1) * GROUP_LEN
    }

    /// Where group `g` of the staging area of 4 KiB pages is.
    pub fn small_group_address(&self, g: u64) -> u64 {
        self.parked.small + g.min(GROUPS - 1) * GROUP_LEN
    }

    /// The staging area of 4 KiB pages: (start, length).
    pub fn small_staging(&self) -> (u64, u64) {
        (self.parked.small, SMALL_STAGING_LEN)
    }

    /// Moves the first `len` bytes of group `g` (written with verified bytes) to `dst`: whole
    /// stretches, 2 MiB aligned, or (`small`) pages of the staging area of 4 KiB pages.
    pub fn move_group(&mut self, g: u64, dst: u64, len: u64, small: bool) -> Result<Moved, MoveFailed> {
        let whole = len.is_multiple_of(HUGE_STRETCH) && dst.is_multiple_of(HUGE_STRETCH);
        let aligned = len.is_multiple_of(PAGE_SIZE) && dst.is_multiple_of(PAGE_SIZE);
        if len == 0 || len > GROUP_LEN || g >= GROUPS || !(if small { aligned } else { whole }) {
            return Err(MoveFailed::Lost(format!("a move of {len} bytes to {dst:#x}: not a group's pages")));
        }
        let from = if small { self.small_group_address(g) } else { self.group_address(g) };
        // Test only: CRUST_FAULT=lazy-move:N:fail has the kernel refuse the Nth move.
        if crate::fault::point("lazy-move").is_err() {
            return Err(MoveFailed::Refused { errno: Errno::EINVAL, moved: 0 });
        }
        let arg_at = self.parked.staging + GROUPS * GROUP_LEN;
        self.write(arg_at, &[&uffd::move_arg(dst, from, len)])?;
        let ret = self
            .remote
            .syscall_raw(libc::SYS_ioctl, &[self.parked.uffd, uffd::UFFDIO_MOVE, arg_at])
            .map_err(|e| MoveFailed::Lost(format!("remote ioctl(UFFDIO_MOVE): {e}")))?;
        if ret == 0 {
            // Looked at where they arrived: the kernel moves a huge page whole only onto an
            // empty stretch, and splits it where a fault of the program's made a page table
            // there (mm/userfaultfd.c, move_pages), as it does one staged in 4 KiB pages.
            let small = if small { Vec::new() } else { self.not_huge(dst, len) };
            return Ok(Moved { len, small });
        }
        let mut result = [0u8; 8];
        let moved = match self.read(arg_at + uffd::MOVE_ARG_RESULT as u64, &mut result) {
            Ok(()) => i64::from_ne_bytes(result).max(0) as u64,
            Err(_) => 0,
        };
        Err(MoveFailed::Refused { errno: Errno::from_raw(-ret as i32), moved: moved.min(len) })
    }

    /// The stretches of `start..start + len` that no huge page maps whole.
    fn not_huge(&mut self, start: u64, len: u64) -> Vec<u64> {
        let pid = self.parked.pid;
        if self.pagemap.is_none() {
            self.pagemap = PageMap::open(pid).map_err(|e| tracing::debug!(pid, "lazy page mover: {e}")).ok();
        }
        let huge = self.pagemap.as_ref().and_then(|m| m.huge_stretches(start, start + len).ok()).unwrap_or_default();
        // Test only: CRUST_FAULT=lazy-move-small:N:fail takes the Nth stretch for one the kernel
        // moved in 4 KiB pages.
        (start..start + len)
            .step_by(HUGE_STRETCH as usize)
            .filter(|s| !huge.contains(s) || crate::fault::point("lazy-move-small").is_err())
            .collect()
    }

    fn write(&self, at: u64, pieces: &[&[u8]]) -> Result<(), MoveFailed> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let local: Vec<IoSlice> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let remote = [RemoteIoVec { base: at as usize, len }];
        match process_vm_writev(Pid::from_raw(self.parked.pid), &local, &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(MoveFailed::Lost(format!("process_vm_writev of {len} bytes at {at:#x} wrote {n}"))),
            Err(e) => Err(MoveFailed::Lost(format!("process_vm_writev of {len} bytes at {at:#x}: {e}"))),
        }
    }

    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let len = buf.len();
        let remote = [RemoteIoVec { base: at as usize, len }];
        process_vm_readv(Pid::from_raw(self.parked.pid), &mut [std::io::IoSliceMut::new(buf)], &remote).map(drop)
    }

    /// Whether the mover has exited (its process exited or exec'd): reaped here, since its
    /// tracer must (the process's exit is not reported before).
    pub fn gone(&self) -> bool {
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
        matches!(waitpid(self.remote.pid(), Some(flags)), Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD))
    }

    /// Leaves the mover waiting in pause() (every signal blocked: it never returns) and lets go
    /// of it, for another thread or process to seize.
    pub fn park(self) -> Result<ParkedMover> {
        let tid = self.remote.pid();
        let mut regs = ptrace::get_registers(tid)?;
        regs.rip = self.parked.syscall_ip;
        regs.rax = libc::SYS_pause as u64;
        // Nothing to restart on the way out of the stop it is in.
        regs.orig_rax = u64::MAX;
        regs.rsp = 0;
        ptrace::set_registers(tid, &regs)?;
        ptrace::detach(tid)?;
        Ok(self.parked)
    }

    /// The end: the staging area goes and the mover exits (its copy of the userfaultfd with it).
    pub fn end(mut self) {
        let (pid, tid) = (self.parked.pid, self.parked.tid);
        // (Exits even if the unmap fails: its copy of the userfaultfd must go.)
        // (The small one unregistered first by the server: an unmap of a registered area
        // would wait for the server to read its event.)
        for (at, len) in [(self.parked.staging, STAGING_LEN), (self.parked.small, SMALL_STAGING_LEN)] {
            if let Err(e) = self.remote.syscall("munmap(staging area)", libc::SYS_munmap, &[at, len]) {
                tracing::warn!(pid, tid, "lazy page mover: {e}");
            }
        }
        match self.remote.exit_with(libc::SYS_exit, &[0]) {
            Ok(()) => tracing::debug!(pid, tid, "lazy page mover ended"),
            Err(e) => tracing::debug!(pid, tid, "ending the lazy page mover: {e}"),
        }
    }
}
