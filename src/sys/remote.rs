//! Remote system calls: making a stopped tracee execute a system call of crust's choosing.
//!
//! The tracee's registers are pointed at a `syscall` instruction in its own address space and it
//! is stepped through exactly one syscall-enter-stop and syscall-exit-stop; the result is read
//! from rax. While crust drives a tracee this way every signal is blocked in it (set up by the
//! caller with [`super::ptrace::set_sigmask`]), so no handler can run in between.
//!
//! The tracee's memory is read and written through /proc/PID/mem, which (like a debugger) may
//! write to read-only pages.

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::unistd::Pid;

use super::SysError;
use super::ptrace::{self, Registers};

mod batch;
pub use batch::{CODE_PAGE_LEN, CODE_PAGE_NAME, WAIT_SECONDS};

/// A stopped tracee that crust can run system calls in.
pub struct RemoteTask {
    pid: Pid,
    /// The process whose memory crust reaches the task's through: the task itself, or the
    /// leader given to [`Self::new_thread_of`]. Tasks of one process share one scratch area,
    /// so it runs one batch at a time (remote::batch; a restore's threads, made with
    /// [`Self::new`], run none: they are not parked).
    process: Pid,
    /// Address of a `syscall` instruction (0f 05) in the tracee.
    syscall_ip: u64,
    /// Registers every injected call starts from (segment selectors, flags).
    base: Registers,
    /// The registers and blocked mask the tracee had when crust took it over.
    original: Registers,
    original_sigmask: u64,
    mem: File,
    /// A writable area in the tracee for arguments passed by pointer.
    scratch: Option<Scratch>,
    /// Set by [`RemoteTask::arm_self_return`]: the address of `mov $15, %rax; syscall` the
    /// parked tracee runs to return through its signal frame.
    self_return: Option<u64>,
    /// Where [`BATCH_CODE`] may be written (writable, executable memory of crust's own in the
    /// tracee), for [`RemoteTask::syscalls`].
    batch_code: Option<u64>,
    /// Set when the tracee went back to its own code in the middle of crust's work (see
    /// batch::let_go_after_batch): it is detached, and nothing may be done in it any more.
    lost: bool,
}

/// A call of a batch: number and arguments.
pub type Call = (i64, [u64; 6]);

/// Bytes of a call in the tracee's table: its number, its six arguments; its result replaces
/// the number.
const CALL_BYTES: u64 = 56;

/// The most calls one stop of the tracee runs (their table takes 28 KiB of the scratch area).
pub const BATCH_CALLS: usize = 512;

/// Where [`RemoteTask::syscalls`] writes its table in the scratch area: after the iovec arrays
/// of page transfers (the first 16 KiB hold paths and structs).
const TABLE_AT: u64 = 16 * 1024;
/// The first offset of the scratch area past that table: free for the data the calls of a
/// batch point at (anonymous memory's names).
pub const FREE_AFTER_BATCH: u64 = TABLE_AT + BATCH_CALLS as u64 * CALL_BYTES;

/// x86-64 code the tracee runs for [`RemoteTask::syscalls`]: with %rbx at a table of calls,
/// %r12 their count and %r13 its thread id, it makes each call in turn, writes each result
/// over the call's number, stops at the first error, then stops itself (tkill(tid, SIGSTOP),
/// again if resumed without new registers):
///
/// ```text
///  0: test %r12,%r12 ; jz 54           | 34: mov %rax,(%rbx)
///  5: mov (%rbx),%rax                   | 37: cmp $-4095,%rax ; jae 54
///  8: mov 8..48(%rbx),%rdi,%rsi,%rdx,   | 45: add $56,%rbx ; dec %r12 ; jmp 0
///     %r10,%r8,%r9 ; 32: syscall        | 54: mov $200,%eax ; mov %r13,%rdi ;
///                                       |     mov $19,%esi ; syscall ; jmp 54
/// ```
const BATCH_CODE: [u8; 71] = [
    0x4d, 0x85, 0xe4, 0x74, 0x31, // test r12, r12; jz done
    0x48, 0x8b, 0x03, // mov rax, [rbx]
    0x48, 0x8b, 0x7b, 0x08, // mov rdi, [rbx + 8]
    0x48, 0x8b, 0x73, 0x10, // mov rsi, [rbx + 16]
    0x48, 0x8b, 0x53, 0x18, // mov rdx, [rbx + 24]
    0x4c, 0x8b, 0x53, 0x20, // mov r10, [rbx + 32]
    0x4c, 0x8b, 0x43, 0x28, // mov r8, [rbx + 40]
    0x4c, 0x8b, 0x4b, 0x30, // mov r9, [rbx + 48]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x03, // mov [rbx], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, // cmp rax, -4095; jae done
    0x48, 0x83, 0xc3, 0x38, // add rbx, 56
    0x49, 0xff, 0xcc, // dec r12
    0xeb, 0xca, // jmp loop
    0xb8, 0xc8, 0x00, 0x00, 0x00, // done: mov eax, SYS_tkill
    0x4c, 0x89, 0xef, // mov rdi, r13
    0xbe, 0x13, 0x00, 0x00, 0x00, // mov esi, SIGSTOP
    0x0f, 0x05, // syscall
    0xeb, 0xef, // jmp done
];

#[derive(Clone, Copy, Debug)]
pub struct Scratch {
    pub address: u64,
    pub len: u64,
    /// Mapped executable too: the tracee can run a batch of calls from it (remote::batch).
    pub executable: bool,
    /// A page of its own holding the batch's code, executable and never writable, for a tracee
    /// that refuses writable code (PR_SET_MDWE): see [`RemoteTask::map_code_pages_each`].
    pub code: Option<u64>,
}

impl RemoteTask {
    pub fn new(pid: Pid, syscall_ip: u64) -> Result<Self, SysError> {
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| SysError::new(format!("open /proc/{pid}/mem"), io_errno(&e)))?;
        Self::with_memory(pid, pid, syscall_ip, mem)
    }

    /// A thread of the process `leader` drives: its memory is the leader's, reached through a
    /// duplicate of the leader's /proc/PID/mem (a dup, cheaper than opening the thread's own
    /// for each of a thousand threads).
    pub fn new_thread_of(leader: &RemoteTask, tid: Pid, syscall_ip: u64) -> Result<Self, SysError> {
        let mem =
            leader.mem.try_clone().map_err(|e| SysError::new(format!("dup /proc/{}/mem", leader.pid), io_errno(&e)).pid(tid.as_raw()))?;
        Self::with_memory(tid, leader.process, syscall_ip, mem)
    }

    fn with_memory(pid: Pid, process: Pid, syscall_ip: u64, mem: File) -> Result<Self, SysError> {
        let base = ptrace::get_registers(pid)?;
        let original_sigmask = ptrace::get_sigmask(pid)?;
        Ok(RemoteTask {
            pid,
            process,
            syscall_ip,
            base,
            original: base,
            original_sigmask,
            mem,
            scratch: None,
            self_return: None,
            batch_code: None,
            lost: false,
        })
    }

    pub fn original_registers(&self) -> Registers {
        self.original
    }

    pub fn original_sigmask(&self) -> u64 {
        self.original_sigmask
    }

    /// Sets the stack pointer injected calls run with (it must not point into an alternate
    /// signal stack being installed, nor into memory about to be unmapped).
    pub fn set_stack_pointer(&mut self, sp: u64) {
        self.base.rsp = sp;
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    pub fn set_scratch(&mut self, scratch: Option<Scratch>) {
        self.scratch = scratch;
    }

    pub fn scratch(&self) -> Option<Scratch> {
        self.scratch
    }

    /// Parks the tracee so that, let go at any instant from now on, it returns by itself to
    /// `resolved` (its original registers, an interrupted system call already resolved), its
    /// original signal mask and its FPU state: a signal frame is written below its stack
    /// pointer, and the tracee waits at `sigreturn_ip` (`mov $15, %rax; syscall`) with its
    /// stack pointer on the frame. Every injected call then runs from that state and comes back
    /// to it (see [`Self::syscall_raw`]). Nothing is changed if this fails.
    pub fn arm_self_return(&mut self, sigreturn_ip: u64, resolved: &Registers) -> Result<(), SysError> {
        let xstate = ptrace::get_xstate(self.pid)?;
        let frame = super::sigframe::build(resolved, self.original_sigmask, &xstate)
            .map_err(|e| SysError::unexpected("building a signal frame", self.pid.as_raw(), format!("{e:?}")))?;
        self.write_stack(frame.address, &frame.bytes)?;
        let mut parked = self.base;
        parked.rip = sigreturn_ip;
        parked.rsp = frame.parked_rsp();
        // No system call to restart on the way out of the stop we are in.
        parked.orig_rax = u64::MAX;
        ptrace::set_registers(self.pid, &parked)?;
        self.base = parked;
        self.self_return = Some(sigreturn_ip);
        Ok(())
    }

    /// Whether the tracee is parked on its signal frame.
    pub fn self_returning(&self) -> bool {
        self.self_return.is_some()
    }

    /// Runs system call `nr` with `args` in the tracee and returns its raw result (negative
    /// errno on failure, as the kernel returns it).
    ///
    /// A parked tracee (see [`Self::arm_self_return`]) is let run into its `rt_sigreturn`; at
    /// that system call's entry stop crust turns it into `nr` (orig_rax and the argument
    /// registers) and points the return address back at the sigreturn instructions. At every
    /// instant the tracee is either about to return through its frame or inside a call that
    /// will return to where it does so: crust may disappear at any moment.
    pub fn syscall_raw(&mut self, nr: i64, args: &[u64]) -> Result<i64, SysError> {
        self.not_lost()?;
        if self.self_return.is_some() {
            return self.syscall_from_parked(nr, args);
        }
        self.set_call(nr, args)?;
        ptrace::step_to_syscall_stop(self.pid)?; // enter
        ptrace::step_to_syscall_stop(self.pid)?; // exit
        let out = ptrace::get_registers(self.pid)?;
        Ok(out.rax as i64)
    }

    fn syscall_from_parked(&mut self, nr: i64, args: &[u64]) -> Result<i64, SysError> {
        ptrace::step_to_syscall_stop(self.pid)?; // the entry of rt_sigreturn
        self.turn_into(nr, args)?;
        ptrace::step_to_syscall_stop(self.pid)?; // the exit of `nr`, back at sigreturn_ip
        let out = ptrace::get_registers(self.pid)?;
        Ok(out.rax as i64)
    }

    /// Runs one system call in each of `tasks` at once, `calls[i]` (number and arguments) in
    /// `tasks[i]`, and returns their raw results. Each task goes through the same steps as in
    /// [`Self::syscall_raw`], so a parked one is at every instant parked or inside a call that
    /// returns to where it is parked; but all are let go before crust waits for the first, so
    /// their stops overlap (one round of waits for the whole tree instead of one per process).
    /// On an error every task still in a call is waited for, and the first error is returned.
    pub fn syscall_each(tasks: &mut [&mut RemoteTask], calls: &[(i64, Vec<u64>)]) -> Result<Vec<i64>, SysError> {
        Self::syscall_each_apart(tasks, calls)?.into_iter().collect()
    }

    /// [`Self::syscall_each`], with the outcome of each task apart (the calls that ran, ran,
    /// whatever happened to the others).
    pub fn syscall_each_apart(tasks: &mut [&mut RemoteTask], calls: &[(i64, Vec<u64>)]) -> Result<Vec<Result<i64, SysError>>, SysError> {
        if tasks.len() != calls.len() {
            return Err(SysError::unexpected("syscall_each", 0, format!("{} tasks, {} calls", tasks.len(), calls.len())));
        }
        let mut failed: Vec<Option<SysError>> = (0..tasks.len()).map(|_| None).collect();
        // Which tasks are still on their way: false once one of their steps failed.
        let mut going: Vec<bool> = vec![true; tasks.len()];
        for (i, (t, (nr, args))) in tasks.iter_mut().zip(calls).enumerate() {
            // Parked: on to the entry of its rt_sigreturn; else straight into the call.
            let started = t.not_lost().and_then(|()| match t.self_return {
                Some(_) => ptrace::resume_to_syscall_stop(t.pid),
                None => t.set_call(*nr, args).and_then(|()| ptrace::resume_to_syscall_stop(t.pid)),
            });
            if let Err(e) = started {
                going[i] = false;
                failed[i] = Some(e);
            }
        }
        for (i, (t, (nr, args))) in tasks.iter_mut().zip(calls).enumerate() {
            if !going[i] {
                continue;
            }
            let entered = ptrace::wait_syscall_stop(t.pid).and_then(|()| match t.self_return {
                Some(_) => t.turn_into(*nr, args),
                None => Ok(()),
            });
            if let Err(e) = entered.and_then(|()| ptrace::resume_to_syscall_stop(t.pid)) {
                going[i] = false;
                failed[i] = Some(e);
            }
        }
        let mut results = Vec::with_capacity(tasks.len());
        for ((t, going), failed) in tasks.iter().zip(going).zip(failed) {
            results.push(match failed {
                Some(e) => Err(e),
                None if going => ptrace::wait_syscall_stop(t.pid).and_then(|()| ptrace::get_registers(t.pid)).map(|regs| regs.rax as i64),
                None => Err(SysError::unexpected("syscall_each", t.pid.as_raw(), "neither run nor failed".into())),
            });
        }
        Ok(results)
    }

    /// Points a tracee that is not parked at its `syscall` instruction, set up for call `nr`.
    fn set_call(&mut self, nr: i64, args: &[u64]) -> Result<(), SysError> {
        let mut regs = self.base;
        regs.rax = nr as u64;
        // orig_rax = -1: the kernel must not treat the stop we start from as an interrupted
        // system call and "restart" it on the way out.
        regs.orig_rax = u64::MAX;
        regs.rip = self.syscall_ip;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) = (a[0], a[1], a[2], a[3], a[4], a[5]);
        ptrace::set_registers(self.pid, &regs)
    }

    /// At the entry stop of the parked tracee's rt_sigreturn: makes it system call `nr` with
    /// `args`, returning to where it is parked.
    fn turn_into(&mut self, nr: i64, args: &[u64]) -> Result<(), SysError> {
        let Some(sigreturn_ip) = self.self_return else {
            return Err(SysError::unexpected("turning a stop into a call", self.pid.as_raw(), "not parked".into()));
        };
        let mut regs = ptrace::get_registers(self.pid)?;
        regs.orig_rax = nr as u64;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) = (a[0], a[1], a[2], a[3], a[4], a[5]);
        regs.rip = sigreturn_ip;
        ptrace::set_registers(self.pid, &regs)
    }

    /// Lets [`Self::syscalls`] run batches, with its code written at `address` (writable,
    /// executable memory of crust's own in the tracee, at least 128 bytes).
    pub fn set_batch_code(&mut self, address: Option<u64>) {
        self.batch_code = address;
    }

    /// Runs `calls` in the tracee in order, stopping at the first that fails, which is
    /// returned as an error naming it (`name`), its arguments and its errno. With a place for
    /// the batch code and a scratch area (and the tracee not parked), the tracee runs up to
    /// BATCH_CALLS of them between two stops of its own (one stop per batch, not two per call);
    /// otherwise one by one. Which calls ran before an error: all those before the one named.
    pub fn syscalls(&mut self, name: &str, calls: &[Call]) -> Result<(), SysError> {
        let (Some(code), Some(scratch), None) = (self.batch_code, self.scratch, self.self_return) else {
            for (nr, args) in calls {
                self.syscall(name, *nr, args)?;
            }
            return Ok(());
        };
        let table = scratch.address + TABLE_AT;
        if table + BATCH_CALLS as u64 * CALL_BYTES > scratch.address + scratch.len {
            return Err(SysError::unexpected("a batch of calls", self.pid.as_raw(), "scratch area too small".into()));
        }
        self.write_memory(code, &BATCH_CODE)?;
        for batch in calls.chunks(BATCH_CALLS) {
            self.run_batch(name, code, table, batch)?;
        }
        Ok(())
    }

    fn not_lost(&self) -> Result<(), SysError> {
        if self.lost {
            return Err(SysError::unexpected("working in a process", self.pid.as_raw(), "went back to its own code and was let go".into()));
        }
        Ok(())
    }

    fn run_batch(&mut self, name: &str, code: u64, table: u64, calls: &[Call]) -> Result<(), SysError> {
        let bytes: Vec<u8> =
            calls.iter().flat_map(|(nr, args)| std::iter::once(*nr as u64).chain(*args)).flat_map(u64::to_ne_bytes).collect();
        self.write_memory(table, &bytes)?;
        let mut regs = self.base;
        // No system call to restart on the way out of the stop we start from.
        regs.orig_rax = u64::MAX;
        regs.rip = code;
        (regs.rbx, regs.r12, regs.r13) = (table, calls.len() as u64, self.pid.as_raw() as u64);
        ptrace::set_registers(self.pid, &regs)?;
        ptrace::run_until_self_stop(self.pid)?;
        let left = ptrace::get_registers(self.pid)?.r12 as usize;
        if left == 0 {
            return Ok(());
        }
        let failed =
            calls.len().checked_sub(left).filter(|i| *i < calls.len()).ok_or_else(|| {
                SysError::unexpected("a batch of calls", self.pid.as_raw(), format!("{left} calls left of {}", calls.len()))
            })?;
        let mut result = [0u8; 8];
        self.read_memory(table + failed as u64 * CALL_BYTES, &mut result)?;
        let ret = i64::from_ne_bytes(result);
        let (nr, args) = calls[failed];
        let errno = if (-4095..0).contains(&ret) { nix::errno::Errno::from_raw(-ret as i32) } else { nix::errno::Errno::UnknownErrno };
        let args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
        Err(SysError::new(format!("remote {name} (system call {nr})({})", args.join(", ")), errno).pid(self.pid.as_raw()))
    }

    /// Runs a system call and turns a negative result into an error naming it.
    pub fn syscall(&mut self, name: &str, nr: i64, args: &[u64]) -> Result<u64, SysError> {
        let ret = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&ret) {
            let errno = nix::errno::Errno::from_raw(-ret as i32);
            let args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
            return Err(SysError::new(format!("remote {name}({})", args.join(", ")), errno).pid(self.pid.as_raw()));
        }
        Ok(ret as u64)
    }

    /// Lets the tracee go straight into system call `nr` (exit_group, or kill of itself) that
    /// ends it; crust detaches first, so the exit is the tracee's own.
    pub fn exit_with(&mut self, nr: i64, args: &[u64]) -> Result<(), SysError> {
        let mut regs = self.base;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rip = self.syscall_ip;
        regs.rdi = args.first().copied().unwrap_or(0);
        regs.rsi = args.get(1).copied().unwrap_or(0);
        ptrace::set_registers(self.pid, &regs)?;
        ptrace::detach(self.pid)
    }

    /// Writes `data` into the thread's stack with process_vm_writev, which waits, as a fault
    /// of the program's own would, when the page is write-protected by a userfaultfd (crust's
    /// fault thread lets it go); a write through /proc/PID/mem fails there with EIO.
    fn write_stack(&self, address: u64, data: &[u8]) -> Result<(), SysError> {
        use nix::sys::uio::{RemoteIoVec, process_vm_writev};
        let remote = [RemoteIoVec { base: address as usize, len: data.len() }];
        match process_vm_writev(self.pid, &[std::io::IoSlice::new(data)], &remote) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(_) | Err(_) => self.write_memory(address, data),
        }
    }

    pub fn write_memory(&self, address: u64, data: &[u8]) -> Result<(), SysError> {
        self.not_lost()?;
        self.mem
            .write_all_at(data, address)
            .map_err(|e| SysError::new(format!("write /proc/{}/mem at {address:#x}", self.pid), io_errno(&e)))
    }

    pub fn read_memory(&self, address: u64, buf: &mut [u8]) -> Result<(), SysError> {
        self.mem
            .read_exact_at(buf, address)
            .map_err(|e| SysError::new(format!("read /proc/{}/mem at {address:#x}", self.pid), io_errno(&e)))
    }

    /// Copies `data` into the scratch area at `offset` and returns its address in the tracee.
    pub fn put(&self, offset: u64, data: &[u8]) -> Result<u64, SysError> {
        let Some(scratch) = self.scratch else {
            return Err(SysError::unexpected("placing data in the process", self.pid.as_raw(), "has no scratch area yet".into()));
        };
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > scratch.len) {
            return Err(SysError::unexpected(
                "placing data in the process",
                self.pid.as_raw(),
                format!("{} bytes do not fit in crust's {} byte scratch area", data.len(), scratch.len),
            ));
        }
        let address = scratch.address + offset;
        self.write_memory(address, data)?;
        Ok(address)
    }

    /// Copies a NUL-terminated path into the scratch area.
    pub fn put_path(&self, offset: u64, path: &str) -> Result<u64, SysError> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        self.put(offset, &bytes)
    }

    pub fn get(&self, offset: u64, buf: &mut [u8]) -> Result<(), SysError> {
        let Some(scratch) = self.scratch else {
            return Err(SysError::unexpected("reading from the process", self.pid.as_raw(), "has no scratch area yet".into()));
        };
        self.read_memory(scratch.address + offset, buf)
    }

    /// Runs the system call `regs` are set up for (rip at a `syscall` instruction, rax its
    /// number) in the tracee and interrupts it (PTRACE_INTERRUPT) once it sleeps in it, or after
    /// `limit`: returns rax at the call's exit, its result or the restart code the interruption
    /// left (-ERESTART_RESTARTBLOCK for a call the kernel resumes from the thread's restart
    /// block). The tracee is left at that syscall-exit-stop.
    pub fn run_until_asleep_then_interrupt(&mut self, regs: &Registers, limit: std::time::Duration) -> Result<i64, SysError> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let pid = self.pid;
        let err = |op: &'static str| move |e| SysError::new(op, e).pid(pid.as_raw());
        ptrace::set_registers(pid, regs)?;
        ptrace::step_to_syscall_stop(pid)?; // enter
        nix::sys::ptrace::syscall(pid, None).map_err(err("ptrace(PTRACE_SYSCALL)"))?;
        let deadline = std::time::Instant::now() + limit;
        let mut interrupted = false;
        loop {
            let flags = if interrupted { WaitPidFlag::__WALL } else { WaitPidFlag::__WALL | WaitPidFlag::WNOHANG };
            match waitpid(pid, Some(flags)) {
                Ok(WaitStatus::PtraceSyscall(_) | WaitStatus::PtraceEvent(..)) => break,
                Ok(WaitStatus::StillAlive) => {
                    if asleep_in(pid.as_raw(), regs.rax) || std::time::Instant::now() >= deadline {
                        nix::sys::ptrace::interrupt(pid).map_err(err("ptrace(PTRACE_INTERRUPT)"))?;
                        interrupted = true;
                    } else {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                }
                Ok(other) => {
                    return Err(SysError::unexpected("waitpid during an interrupted system call", pid.as_raw(), format!("{other:?}")));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(SysError::new("waitpid", e).pid(pid.as_raw())),
            }
        }
        Ok(ptrace::get_registers(pid)?.rax as i64)
    }

    /// Leaves the tracee with `regs` as its registers, stopped in a way that makes the kernel
    /// run its usual signal and syscall-restart logic when it is let go: an interrupted system
    /// call in `regs` restarts (or returns EINTR) exactly as it would have without crust.
    pub fn park_with_registers(&mut self, regs: &Registers) -> Result<(), SysError> {
        self.start_parking(regs)?;
        ptrace::wait_for_event_stop(self.pid)
    }

    /// The first half of [`Self::park_with_registers`]: the tracee is on its way to the stop,
    /// which the caller waits for (ptrace::wait_for_event_stop) after starting others.
    pub fn start_parking(&mut self, regs: &Registers) -> Result<(), SysError> {
        ptrace::set_registers(self.pid, regs)?;
        // We are at a syscall-exit-stop (or an event stop). Leaving it through PTRACE_INTERRUPT
        // makes the tracee stop again inside get_signal(), the place the kernel decides restarts.
        nix::sys::ptrace::interrupt(self.pid).map_err(|e| SysError::new("ptrace(PTRACE_INTERRUPT)", e).pid(self.pid.as_raw()))?;
        nix::sys::ptrace::cont(self.pid, None).map_err(|e| SysError::new("ptrace(PTRACE_CONT)", e).pid(self.pid.as_raw()))
    }
}

/// Whether thread `tid` sleeps (state S) inside system call `nr`.
fn asleep_in(tid: i32, nr: u64) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok().and_then(|s| s.get(s.rfind(')')? + 2..)?.chars().next());
    let call = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok();
    state == Some('S') && call.is_some_and(|c| c.split_whitespace().next() == Some(nr.to_string().as_str()))
}

pub fn io_errno(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Finds a `syscall` instruction (0f 05) in the given code bytes mapped at `base`.
pub fn find_syscall_instruction(code: &[u8], base: u64) -> Option<u64> {
    code.windows(2).position(|w| w == [0x0f, 0x05]).map(|off| base + off as u64)
}
