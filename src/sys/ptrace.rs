//! ptrace(2) for crust: attach without disturbing (PTRACE_SEIZE + PTRACE_INTERRUPT), the register
//! sets crust saves, and the queue and mask of signals.
//!
//! A ptrace relationship belongs to the thread that attached: every call here must come from the
//! thread that seized the tracee. crust's pipelines are single-threaded for that reason.

use std::io::IoSliceMut;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace::{self as nix_ptrace, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub use libc::user_regs_struct as Registers;

use super::SysError;

/// The stop a seized tracee reports after PTRACE_INTERRUPT: `(SIGTRAP | PTRACE_EVENT_STOP << 8)`.
const PTRACE_EVENT_STOP: i32 = 128;
const NT_X86_XSTATE: libc::c_int = 0x202;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// Upper bound of the XSAVE area on any x86_64 CPU we know (AMX makes it ~11 KiB).
const XSAVE_MAX: usize = 16 * 1024;

fn ptrace_err(op: &'static str, pid: Pid) -> impl FnOnce(Errno) -> SysError {
    move |errno| SysError::new(op, errno).pid(pid.as_raw())
}

/// Seizes `pid` (not stopping it) with options suited to crust, then stops it with
/// PTRACE_INTERRUPT and waits until it reports the PTRACE_EVENT_STOP.
pub fn seize_and_interrupt(pid: Pid, kill_on_tracer_exit: bool) -> Result<(), SysError> {
    seize_and_interrupt_until(pid, kill_on_tracer_exit, None)
}

/// [`seize_and_interrupt`], giving up at `deadline` with [`SysError::NotStopped`] if the tracee
/// has not stopped by then (it sleeps uninterruptibly, in a vfork for instance). Such a tracee
/// cannot be detached before it stops: the kernel lets it go, its interrupt forgotten, when
/// crust exits.
pub fn seize_and_interrupt_until(pid: Pid, kill_on_tracer_exit: bool, deadline: Option<Instant>) -> Result<(), SysError> {
    let mut options = Options::PTRACE_O_TRACESYSGOOD;
    if kill_on_tracer_exit {
        options |= Options::PTRACE_O_EXITKILL;
    }
    nix_ptrace::seize(pid, options).map_err(ptrace_err("ptrace(PTRACE_SEIZE)", pid))?;
    nix_ptrace::interrupt(pid).map_err(ptrace_err("ptrace(PTRACE_INTERRUPT)", pid))?;
    wait_for_event_stop_until(pid, deadline)
}

/// [`seize_and_interrupt`] of every one of `pids`, each seized and interrupted before the first
/// stop is waited for. On an error the ones seized are still waited for.
pub fn seize_and_interrupt_all(pids: &[Pid], kill_on_tracer_exit: bool) -> Result<(), SysError> {
    let mut options = Options::PTRACE_O_TRACESYSGOOD;
    if kill_on_tracer_exit {
        options |= Options::PTRACE_O_EXITKILL;
    }
    let mut seized = Vec::with_capacity(pids.len());
    let mut result = Ok(());
    for &pid in pids {
        result = nix_ptrace::seize(pid, options)
            .map_err(ptrace_err("ptrace(PTRACE_SEIZE)", pid))
            .and_then(|()| nix_ptrace::interrupt(pid).map_err(ptrace_err("ptrace(PTRACE_INTERRUPT)", pid)));
        match result {
            Ok(()) => seized.push(pid),
            Err(_) => break,
        }
    }
    for pid in seized {
        let waited = wait_for_event_stop(pid);
        if result.is_ok() {
            result = waited;
        }
    }
    result
}

/// [`seize_and_interrupt_until`] of each of `pids`, every one seized and interrupted before the
/// first stop is waited for (their stops overlap: a thousand threads stop side by side).
/// `before_interrupt(pid)` is called right before each interrupt. Returns each one's outcome;
/// every one seized is waited for, whatever happened to the others.
pub fn seize_and_interrupt_each_until(
    pids: &[Pid],
    deadline: Option<Instant>,
    mut before_interrupt: impl FnMut(Pid),
) -> Vec<Result<(), SysError>> {
    let options = Options::PTRACE_O_TRACESYSGOOD;
    let started: Vec<Result<(), SysError>> = pids
        .iter()
        .map(|&pid| {
            nix_ptrace::seize(pid, options).map_err(ptrace_err("ptrace(PTRACE_SEIZE)", pid))?;
            before_interrupt(pid);
            nix_ptrace::interrupt(pid).map_err(ptrace_err("ptrace(PTRACE_INTERRUPT)", pid))
        })
        .collect();
    pids.iter().zip(started).map(|(&pid, started)| started.and_then(|()| wait_for_event_stop_until(pid, deadline))).collect()
}

/// Sends PTRACE_INTERRUPT to a running tracee and waits for its event stop. Signals that arrive
/// first are left pending: crust never delivers or drops a signal of the tracee.
pub fn interrupt_and_wait(pid: Pid) -> Result<(), SysError> {
    nix_ptrace::interrupt(pid).map_err(ptrace_err("ptrace(PTRACE_INTERRUPT)", pid))?;
    wait_for_event_stop(pid)
}

/// Waits for the PTRACE_EVENT_STOP of a tracee that was interrupted, re-injecting nothing: a
/// signal-delivery-stop on the way is resumed with the signal suppressed only after the signal
/// was put back in the queue by the kernel (it is not: so we resume with it, which re-queues it
/// as pending when blocked, or lets it be delivered before the stop, as if crust came later).
pub fn wait_for_event_stop(pid: Pid) -> Result<(), SysError> {
    wait_for_event_stop_until(pid, None)
}

/// [`wait_for_event_stop`] until `deadline` (None: as long as it takes). With a deadline the
/// wait polls: it first only yields the processor (a tracee usually stops within
/// microseconds, once it gets to run), then sleeps at most a millisecond between looks.
fn wait_for_event_stop_until(pid: Pid, deadline: Option<Instant>) -> Result<(), SysError> {
    let flags = if deadline.is_some() { WaitPidFlag::__WALL | WaitPidFlag::WNOHANG } else { WaitPidFlag::__WALL };
    let mut nap = Duration::from_micros(20);
    let mut yields = 0;
    loop {
        match waitpid(pid, Some(flags)) {
            Ok(WaitStatus::StillAlive) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(SysError::NotStopped { op: "PTRACE_INTERRUPT", pid: pid.as_raw() });
                }
                if yields < 32 {
                    yields += 1;
                    std::thread::yield_now();
                    continue;
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
            Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) => return Ok(()),
            Ok(WaitStatus::Stopped(_, sig)) => {
                // A signal-delivery-stop raced the interrupt: let the signal go on as it
                // would have without crust; the interrupt is still pending and stops it next.
                nix_ptrace::cont(pid, sig).map_err(ptrace_err("ptrace(PTRACE_CONT)", pid))?;
            }
            Ok(WaitStatus::PtraceSyscall(_)) | Ok(WaitStatus::PtraceEvent(..)) => {
                nix_ptrace::cont(pid, None).map_err(ptrace_err("ptrace(PTRACE_CONT)", pid))?;
            }
            Ok(WaitStatus::Exited(_, code)) => {
                return Err(SysError::gone("waitpid", pid.as_raw(), format!("exited with status {code}")));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Err(SysError::gone("waitpid", pid.as_raw(), format!("was killed by {sig}")));
            }
            Ok(other) => {
                return Err(SysError::unexpected("waitpid", pid.as_raw(), format!("{other:?}")));
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(SysError::new("waitpid", errno).pid(pid.as_raw())),
        }
    }
}

/// Why PTRACE_SEIZE of `pid` cannot work, when /proc tells: it is crust itself or one of its
/// ancestors (its tree would hold crust), a kernel thread, or it already has a tracer.
pub fn why_untraceable(pid: i32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    why_untraceable_with(pid, &status)
}

/// [`why_untraceable`], with the text of /proc/`pid`/status already read.
pub fn why_untraceable_with(pid: i32, status: &str) -> Option<String> {
    let me = std::process::id() as i32;
    if pid == me {
        return Some(format!("pid {pid} is crust itself"));
    }
    if crust_ancestors().contains(&pid) {
        let who = if pid == 1 { "pid 1 is init".to_string() } else { format!("pid {pid} is an ancestor of crust (pid {me})") };
        return Some(format!("{who}: its tree holds crust itself, which cannot freeze itself"));
    }
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("").to_string();
    let comm = field("Name:");
    let tracer: i32 = field("TracerPid:").parse().unwrap_or(0);
    if tracer != 0 {
        let tracer_comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
        return Some(format!(
            "pid {pid} ({comm}) is already traced by pid {tracer} ({}): a process has one tracer at a time (a debugger, strace, another checkpoint); detach it first",
            tracer_comm.trim()
        ));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the comm: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5) flags(6).
    let flags: u64 = stat.rsplit(')').next()?.split_whitespace().nth(6)?.parse().ok()?;
    const PF_KTHREAD: u64 = 0x0020_0000;
    (flags & PF_KTHREAD != 0).then(|| format!("pid {pid} ({comm}) is a kernel thread: there is no user process to checkpoint"))
}

/// Why PTRACE_SEIZE of `pid` failed with EPERM: [`why_untraceable`], else this machine's
/// ptrace policy, else crust's own privileges.
pub fn why_seize_denied(pid: i32) -> String {
    if let Some(why) = why_untraceable(pid) {
        return why;
    }
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    match scope.trim() {
        "3" => "kernel.yama.ptrace_scope is 3: this kernel lets no process attach to another".into(),
        "2" => "kernel.yama.ptrace_scope is 2: only a process with CAP_SYS_PTRACE may attach; run crust as root".into(),
        _ => "crust needs root, with CAP_SYS_PTRACE".into(),
    }
}

/// crust's parent, its parent, and so on up to pid 1, read once (the chain can only get
/// shorter: an orphan goes to a subreaper or init, both ancestors already).
fn crust_ancestors() -> &'static [i32] {
    static ANCESTORS: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();
    ANCESTORS.get_or_init(read_crust_ancestors)
}

fn read_crust_ancestors() -> Vec<i32> {
    let ppid = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
    };
    let mut out = Vec::new();
    let mut pid = std::process::id() as i32;
    // Bounded: a pid chain is never longer than the number of processes.
    for _ in 0..(1 << 22) {
        match ppid(pid) {
            Some(p) if p > 0 => {
                out.push(p);
                pid = p;
            }
            _ => break,
        }
    }
    out
}

/// Resumes the tracee into its next system call boundary (PTRACE_SYSCALL) and waits for that
/// syscall-stop. Used to step an injected system call through its entry and exit.
pub fn step_to_syscall_stop(pid: Pid) -> Result<(), SysError> {
    resume_to_syscall_stop(pid)?;
    wait_syscall_stop(pid)
}

/// The first half of [`step_to_syscall_stop`]: lets the tracee run to its next system call
/// boundary without waiting for it (PTRACE_SYSCALL), so that other tracees can be driven
/// meanwhile.
pub fn resume_to_syscall_stop(pid: Pid) -> Result<(), SysError> {
    nix_ptrace::syscall(pid, None).map_err(ptrace_err("ptrace(PTRACE_SYSCALL)", pid))
}

/// Lets the tracee run without stopping at system calls (PTRACE_CONT) until it stops itself
/// with SIGSTOP (tkill of itself at the end of an injected batch of calls), and waits for that
/// signal-delivery stop. The SIGSTOP is discarded by whatever resumes the tracee next (every
/// resume of crust passes no signal), so it never stops the process for job control.
pub fn run_until_self_stop(pid: Pid) -> Result<(), SysError> {
    nix_ptrace::cont(pid, None).map_err(ptrace_err("ptrace(PTRACE_CONT)", pid))?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => return Ok(()),
            Ok(WaitStatus::Exited(_, code)) => {
                return Err(SysError::gone("waitpid", pid.as_raw(), format!("exited with status {code}")));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Err(SysError::gone("waitpid", pid.as_raw(), format!("was killed by {sig}")));
            }
            Ok(other) => {
                return Err(SysError::unexpected("waitpid during an injected batch of calls", pid.as_raw(), format!("{other:?}")));
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(SysError::new("waitpid", errno).pid(pid.as_raw())),
        }
    }
}

/// The second half of [`step_to_syscall_stop`]: waits for the syscall-stop of a tracee let go
/// by [`resume_to_syscall_stop`].
pub fn wait_syscall_stop(pid: Pid) -> Result<(), SysError> {
    let mut event_stops = 0;
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceSyscall(_)) => return Ok(()),
            // A trap that was already due (a group stop of a process in a job-control stop
            // reports one more when seized and interrupted): it changes nothing, go on.
            Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) if event_stops < 8 => {
                event_stops += 1;
                nix_ptrace::syscall(pid, None).map_err(ptrace_err("ptrace(PTRACE_SYSCALL)", pid))?;
            }
            Ok(WaitStatus::Exited(_, code)) => {
                return Err(SysError::gone("waitpid", pid.as_raw(), format!("exited with status {code}")));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Err(SysError::gone("waitpid", pid.as_raw(), format!("was killed by {sig}")));
            }
            Ok(other) => {
                return Err(SysError::unexpected("waitpid during an injected system call", pid.as_raw(), format!("{other:?}")));
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(SysError::new("waitpid", errno).pid(pid.as_raw())),
        }
    }
}

pub fn detach(pid: Pid) -> Result<(), SysError> {
    nix_ptrace::detach(pid, None).map_err(ptrace_err("ptrace(PTRACE_DETACH)", pid))
}

pub fn get_registers(pid: Pid) -> Result<Registers, SysError> {
    nix_ptrace::getregs(pid).map_err(ptrace_err("ptrace(PTRACE_GETREGS)", pid))
}

pub fn set_registers(pid: Pid, regs: &Registers) -> Result<(), SysError> {
    nix_ptrace::setregs(pid, *regs).map_err(ptrace_err("ptrace(PTRACE_SETREGS)", pid))
}

/// The XSAVE area (x87, SSE, AVX, AVX-512 ... state) via PTRACE_GETREGSET(NT_X86_XSTATE).
pub fn get_xstate(pid: Pid) -> Result<Vec<u8>, SysError> {
    let mut buf = vec![0u8; XSAVE_MAX];
    let mut iov = IoSliceMut::new(&mut buf);
    // SAFETY: PTRACE_GETREGSET writes at most iov_len bytes into the buffer the iovec describes
    // and updates iov_len; both live until the call returns. IoSliceMut is ABI-compatible with
    // struct iovec.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut IoSliceMut as *mut libc::c_void,
        )
    };
    Errno::result(ret).map_err(ptrace_err("ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)", pid))?;
    let len = iov.len();
    buf.truncate(len);
    Ok(buf)
}

pub fn set_xstate(pid: Pid, xstate: &[u8]) -> Result<(), SysError> {
    let mut buf = xstate.to_vec();
    let mut iov = IoSliceMut::new(&mut buf);
    // SAFETY: PTRACE_SETREGSET only reads iov_len bytes from the buffer, which outlives the call.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut IoSliceMut as *mut libc::c_void,
        )
    };
    Errno::result(ret).map(drop).map_err(ptrace_err("ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)", pid))
}

pub fn get_sigmask(pid: Pid) -> Result<u64, SysError> {
    let mut mask: u64 = 0;
    // SAFETY: PTRACE_GETSIGMASK writes exactly `addr` (8) bytes to `data`, a live u64.
    let ret = unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, pid.as_raw(), 8usize, &mut mask as *mut u64) };
    Errno::result(ret).map_err(ptrace_err("ptrace(PTRACE_GETSIGMASK)", pid))?;
    Ok(mask)
}

pub fn set_sigmask(pid: Pid, mask: u64) -> Result<(), SysError> {
    // SAFETY: PTRACE_SETSIGMASK reads exactly 8 bytes from `data`, a live u64.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, pid.as_raw(), 8usize, &mask as *const u64) };
    Errno::result(ret).map(drop).map_err(ptrace_err("ptrace(PTRACE_SETSIGMASK)", pid))
}

/// Which queue PTRACE_PEEKSIGINFO reads.
#[derive(Clone, Copy, Debug)]
pub enum SignalQueue {
    Thread,
    Process,
}

/// Reads (without dequeuing) every pending signal of one queue, each as a raw 128-byte siginfo.
pub fn peek_pending(pid: Pid, queue: SignalQueue) -> Result<Vec<[u8; 128]>, SysError> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
    let mut out = Vec::new();
    loop {
        let mut batch = [[0u8; 128]; 32];
        let args = PeekArgs {
            off: out.len() as u64,
            flags: match queue {
                SignalQueue::Thread => 0,
                SignalQueue::Process => PTRACE_PEEKSIGINFO_SHARED,
            },
            nr: batch.len() as i32,
        };
        // SAFETY: the kernel reads `args` and writes at most `nr` siginfos (128 bytes each) into
        // `batch`, which holds exactly that many.
        let ret = unsafe { libc::ptrace(libc::PTRACE_PEEKSIGINFO, pid.as_raw(), &args as *const PeekArgs, batch.as_mut_ptr()) };
        let n = Errno::result(ret).map_err(ptrace_err("ptrace(PTRACE_PEEKSIGINFO)", pid))? as usize;
        out.extend_from_slice(&batch[..n]);
        if n < batch.len() {
            return Ok(out);
        }
    }
}

/// A thread's rseq registration as PTRACE_GET_RSEQ_CONFIGURATION reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RseqConfig {
    pub address: u64,
    pub length: u32,
    pub flags: u32,
    pub signature: u32,
}

pub fn get_rseq(pid: Pid) -> Result<RseqConfig, SysError> {
    #[repr(C)]
    #[derive(Default)]
    struct Raw {
        rseq_abi_pointer: u64,
        rseq_abi_size: u32,
        signature: u32,
        flags: u32,
        pad: u32,
    }
    let mut raw = Raw::default();
    // SAFETY: the kernel writes at most `addr` bytes (the size we pass) into `raw`.
    let ret = unsafe { libc::ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid.as_raw(), std::mem::size_of::<Raw>(), &mut raw as *mut Raw) };
    Errno::result(ret).map_err(ptrace_err("ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", pid))?;
    Ok(RseqConfig { address: raw.rseq_abi_pointer, length: raw.rseq_abi_size, flags: raw.flags, signature: raw.signature })
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;

/// Makes the tracee's seccomp filters stand aside while crust runs system calls in it
/// (PTRACE_O_SUSPEND_SECCOMP, with crust's usual options): a filter may forbid or kill on the
/// very calls crust injects. It takes effect again when crust detaches.
pub fn suspend_seccomp(pid: Pid, kill_on_tracer_exit: bool) -> Result<(), SysError> {
    let mut options = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_SUSPEND_SECCOMP;
    if kill_on_tracer_exit {
        options |= libc::PTRACE_O_EXITKILL;
    }
    // SAFETY: PTRACE_SETOPTIONS takes the options in `data` by value; no memory is touched.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid.as_raw(), 0usize, options as usize) };
    Errno::result(ret).map(drop).map_err(ptrace_err("ptrace(PTRACE_SETOPTIONS, PTRACE_O_SUSPEND_SECCOMP)", pid))
}

/// The BPF program of seccomp filter `index` of the tracee (0: the newest), as the kernel
/// holds it (struct sock_filter, 8 bytes each); None past the oldest.
pub fn seccomp_filter(pid: Pid, index: usize) -> Result<Option<Vec<u8>>, SysError> {
    // SAFETY: with a null buffer PTRACE_SECCOMP_GET_FILTER only returns the count.
    let count = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid.as_raw(), index, std::ptr::null_mut::<u8>()) };
    match Errno::result(count) {
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(ptrace_err("ptrace(PTRACE_SECCOMP_GET_FILTER)", pid)(e)),
        Ok(_) => {}
    }
    let mut program = vec![0u8; count as usize * 8];
    // SAFETY: the kernel writes `count` struct sock_filter (8 bytes each) into `program`, which
    // holds exactly that many.
    let ret = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid.as_raw(), index, program.as_mut_ptr()) };
    Errno::result(ret).map_err(ptrace_err("ptrace(PTRACE_SECCOMP_GET_FILTER)", pid))?;
    Ok(Some(program))
}

/// The flags seccomp filter `index` was installed with that the kernel reports
/// (SECCOMP_FILTER_FLAG_LOG).
pub fn seccomp_filter_flags(pid: Pid, index: usize) -> Result<u64, SysError> {
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut meta = [index as u64, 0u64];
    // SAFETY: the kernel reads filter_off and writes flags of the 16-byte struct `meta`, whose
    // size is passed in `addr`.
    let ret = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_METADATA, pid.as_raw(), 16usize, meta.as_mut_ptr()) };
    Errno::result(ret).map_err(ptrace_err("ptrace(PTRACE_SECCOMP_GET_METADATA)", pid))?;
    Ok(meta[1])
}
