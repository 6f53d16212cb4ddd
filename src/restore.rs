//! The restore pipeline: check the image, create the process with its PID, restore every kind
//! in dependency order, resume.
//!
//! Nothing is created before the whole image has been read and verified (records, page-file
//! checksums, kernel, vDSO, files unchanged, PID free). A failure after the process exists
//! kills it: restore either succeeds or leaves nothing behind.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::info;

use crate::image::proto::{Core, Files as FilesRecord, Inventory, Mm};
use crate::image::{self, ImageDir};
use crate::kinds::credentials::Credentials;
use crate::kinds::files::{self, Files};
use crate::kinds::identity::{self, Identity, IdentityRecord};
use crate::kinds::memory::{self, Memory};
use crate::kinds::registers::{self, ThreadState};
use crate::kinds::signals::{Signals, SignalsRecord};
use crate::kinds::timers::Timers;
use crate::kinds::{Kind, RestoreCtx};
use crate::progress::Progress;
use crate::sys::pidfd::pidfd_open;
use crate::sys::remote::RemoteTask;
use crate::sys::{clone3, ptrace};

pub struct RestoreOptions {
    pub detach: bool,
}

/// How a restore ended.
pub enum Restored {
    /// Detached: the process runs on its own.
    Running { pid: i32, elapsed: Duration },
    /// crust waited for the process; its exit status as a shell would report it.
    Exited { pid: i32, status: i32 },
}

/// Everything read from an image directory, verified.
pub struct LoadedImage {
    pub dir: ImageDir,
    pub inventory: Inventory,
    pub core: Core,
    pub mm: Mm,
    pub files: FilesRecord,
}

/// Reads and verifies a whole image: every record, page-file sizes and checksums, and that
/// this machine can run it.
pub fn load(dir: &Path) -> Result<LoadedImage> {
    let dir = ImageDir::open(dir)?;
    let inventory: Inventory = dir.read_record(image::INVENTORY).context("the image is incomplete or damaged")?;
    let [entry] = inventory.processes.as_slice() else {
        bail!("image holds {} processes; this crust restores exactly one", inventory.processes.len());
    };
    let pid = entry.pid;
    let core: Core = dir.read_record(&image::core_name(pid))?;
    let mm: Mm = dir.read_record(&image::mm_name(pid))?;
    let files: FilesRecord = dir.read_record(&image::files_name(pid))?;
    for data in &entry.data_files {
        dir.verify_data_file(data)?;
    }
    Ok(LoadedImage { dir, inventory, core, mm, files })
}

/// Checks that this machine can run the image: same kernel build (the vDSO is part of the
/// process), files unchanged, PID free.
fn check_machine(img: &LoadedImage) -> Result<()> {
    let here = crate::sys::kernel_release();
    if img.inventory.kernel_release != here {
        bail!(
            "image was taken on kernel {} but this is kernel {here}: the vDSO the process uses differs, \
             crust refuses to restore across kernels",
            img.inventory.kernel_release
        );
    }
    if img.inventory.vdso_hash != own_vdso_hash()? {
        bail!("the vDSO of this kernel differs from the one in the image (same release, different build)");
    }
    memory::precheck(&img.mm)?;
    files::precheck(&img.files)?;
    Ok(())
}

pub fn own_vdso_hash() -> Result<u64> {
    Ok(xxhash_rust::xxh3::xxh3_64(&memory::vdso_text(std::process::id() as i32)?))
}

/// Waits for a PID to be free (a just-killed process may still be a zombie for a moment).
fn wait_pid_free(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let path = format!("/proc/{pid}");
        if !Path::new(&path).exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let comm = std::fs::read_to_string(format!("{path}/comm")).unwrap_or_default();
            bail!("PID {pid} is busy: it belongs to a running process ({}); restore would need it", comm.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    let started = Instant::now();
    let progress = Progress::new("restore");
    progress.step("verifying the image".into());
    let img = load(dir)?;
    let pid = img.core.pid;
    wait_pid_free(pid)?;
    check_machine(&img)?;
    raise_nofile_limit();

    progress.step(format!("creating pid {pid}"));
    let child = clone3::fork_with_pid(pid as i32).map_err(|e| match e.errno() {
        Some(nix::errno::Errno::EEXIST) => anyhow::anyhow!("PID {pid} is busy: another process took it just now"),
        _ => anyhow::Error::from(e),
    })?;
    // From here on a failure must not leave the half-built process behind.
    let built = build(child, &img, &progress);
    if let Err(e) = built {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, Some(WaitPidFlag::__WALL));
        return Err(e.context(format!("restoring pid {pid} (the partly restored process was killed)")));
    }
    let elapsed = started.elapsed();
    progress.finish(format!("restored pid {pid} in {:.1} ms", elapsed.as_secs_f64() * 1e3));
    if opts.detach {
        return Ok(Restored::Running { pid: pid as i32, elapsed });
    }
    let status = wait_exit(child)?;
    Ok(Restored::Exited { pid: pid as i32, status })
}

/// Raises crust's soft RLIMIT_NOFILE to the hard limit, so the new process (which inherits it
/// until its own limits are restored) can hold the image's fd numbers.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn wait_exit(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the restored process"),
        }
    }
}

/// Turns the fresh child into the image's process, in dependency order.
fn build(child: Pid, img: &LoadedImage, progress: &Progress) -> Result<()> {
    let pid = child.as_raw();
    ptrace::seize_and_interrupt(child, true)?;
    // The child is a copy of crust: its vDSO is at our vDSO's address.
    let syscall_ip = memory::syscall_instruction_in_vdso(std::process::id() as i32)?;
    let mut remote = RemoteTask::new(child, syscall_ip)?;
    ptrace::set_sigmask(child, !0)?;
    forget_crust_state(&mut remote)?;

    progress.step(format!("pid {pid}: memory"));
    let helper = memory::prepare_address_space(&mut remote, &img.mm)?;
    remote.set_stack_pointer(helper.address + helper.len - 256);
    let creds = img.core.credentials.clone().context("image has no credentials")?;
    let thread = img.core.threads.first().context("image has no thread")?;
    let mut ctx = RestoreCtx {
        pid: child,
        remote: &mut remote,
        image: &img.dir,
        pidfd: pidfd_open(pid)?,
        work_fd_floor: files::max_fd(&img.files) + 1,
        fs_identity: Some((creds.fsuid, creds.fsgid, creds.groups.clone())),
    };
    Memory::restore(&mut ctx, &img.mm)?;
    progress.step(format!("pid {pid}: files"));
    Files::restore(&mut ctx, &img.files)?;
    progress.step(format!("pid {pid}: identity, signals, timers, registers"));
    let identity = IdentityRecord {
        comm: img.core.comm.clone(),
        personality: img.core.personality,
        umask: img.core.umask,
        rlimits: img.core.rlimits.clone(),
        control: img.core.control.clone().unwrap_or_default(),
        sid: img.core.sid,
        pgid: img.core.pgid,
        nice: img.core.nice,
        oom_score_adj: img.core.oom_score_adj,
    };
    Identity::restore(&mut ctx, &identity)?;
    let signals = SignalsRecord {
        handlers: img.core.signal_handlers.clone().unwrap_or_default(),
        shared_pending: img.core.shared_pending.clone(),
    };
    Signals::restore(&mut ctx, &signals)?;
    if let Some(timers) = &img.core.interval_timers {
        Timers::restore(&mut ctx, timers)?;
    }
    ThreadState::restore(&mut ctx, thread)?;
    identity::restore_rlimits(&mut ctx, &img.core.rlimits)?;
    Credentials::restore(&mut ctx, &creds)?;

    // Last remote call: remove the helper area (the syscall instruction runs from it; the
    // thread stops at the syscall exit and never returns there).
    remote.syscall("munmap(helper area)", libc::SYS_munmap, &[helper.address, helper.len])?;
    remote.set_scratch(None);
    ptrace::set_sigmask(child, thread.blocked_mask)?;
    remote.park_with_registers(&registers::resume_registers(thread)?)?;
    ptrace::detach(child)?;
    info!(pid, "resumed");
    Ok(())
}

/// The child inherited some per-thread state from crust that must go before its memory does.
fn forget_crust_state(remote: &mut RemoteTask) -> Result<()> {
    let pid = remote.pid();
    // All of crust's descriptors.
    remote.syscall("close_range", libc::SYS_close_range, &[0, u32::MAX as u64, 0])?;
    // glibc registered an rseq area in crust's TLS; the kernel would keep writing to it.
    let rseq = ptrace::get_rseq(pid)?;
    if rseq.address != 0 {
        remote.syscall(
            "rseq(unregister)",
            libc::SYS_rseq,
            &[rseq.address, rseq.length as u64, 1, rseq.signature as u64],
        )?;
    }
    Ok(())
}
