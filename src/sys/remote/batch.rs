//! A list of system calls a parked tracee runs by itself, in one go: a few bytes of code placed
//! in crust's (executable) scratch area run the calls of a table and write each result back,
//! then say so in a flag word and wait in `ppoll` with a timeout before jumping to the parked
//! `rt_sigreturn` instructions. crust lets the tracee run (PTRACE_CONT, no stop per call),
//! reads the flag, interrupts the tracee (PTRACE_INTERRUPT) and puts it back where it is
//! parked. Two ptrace stops per process instead of two per call.
//!
//! Safe at every instant (see docs/injection.md): the code touches neither the stack pointer
//! nor the stack, and ends by returning to the parked state by itself; every signal stays
//! blocked while it runs. A crust killed before it catches the tracee lets it finish its
//! calls (reads only), wait out the timeout ([`WAIT_SECONDS`]) and return through its signal
//! frame. A crust held up past that timeout finds the flag at 2 (the tracee went on by
//! itself): the tracee is let go (detached: it runs its own code again) and the call fails.

use std::time::{Duration, Instant};

use super::{RemoteTask, SysError};
use crate::sys::ptrace;

/// How long the code waits, once its calls are made, for crust to catch it.
pub const WAIT_SECONDS: u64 = 2;
/// How long crust waits for a tracee to make its calls before it interrupts it anyway.
const CATCH_LIMIT: Duration = Duration::from_secs(1);

/// Where the batch lives in the scratch area (the callers' data is at its start).
const BATCH_AT: u64 = 32 * 1024;
const FLAG_AT: u64 = 0;
const TIMEOUT_AT: u64 = 8;
const CODE_AT: u64 = 32;
const TABLE_AT: u64 = 128;
/// One table entry: the number, six arguments, the result.
const ENTRY_LEN: u64 = 64;

/// The flag word: 0 calls running, 1 calls done (waiting to be caught), 2 timed out (going on
/// to rt_sigreturn by itself).
const FLAG_DONE: u64 = 1;
const FLAG_LEFT: u64 = 2;

/// The code, entered with rbx = the first table entry, rbp = the end of the table, r12 = the
/// flag word, r13 = the ppoll timeout, r14 = the parked `mov $15, %rax; syscall`, and rsp on
/// the parked signal frame (never moved). rcx and r11 are clobbered by `syscall`; nothing else
/// the frame does not restore is touched.
///
/// ```text
///  0: 48 39 eb              loop: cmp    %rbp,%rbx
///  3: 73 27                       jae    done
///  5: 48 8b 03                    mov    (%rbx),%rax        ; number
///  8: 48 8b 7b 08                 mov    0x8(%rbx),%rdi     ; arguments
///  c: 48 8b 73 10                 mov    0x10(%rbx),%rsi
/// 10: 48 8b 53 18                 mov    0x18(%rbx),%rdx
/// 14: 4c 8b 53 20                 mov    0x20(%rbx),%r10
/// 18: 4c 8b 43 28                 mov    0x28(%rbx),%r8
/// 1c: 4c 8b 4b 30                 mov    0x30(%rbx),%r9
/// 20: 0f 05                       syscall
/// 22: 48 89 43 38                 mov    %rax,0x38(%rbx)    ; result
/// 26: 48 83 c3 40                 add    $0x40,%rbx
/// 2a: eb d4                       jmp    loop
/// 2c: 49 c7 04 24 01 00 00 00 done: movq $1,(%r12)          ; calls done
/// 34: b8 0f 01 00 00              mov    $271,%eax          ; ppoll(NULL, 0, timeout, NULL, 8)
/// 39: 31 ff                       xor    %edi,%edi
/// 3b: 31 f6                       xor    %esi,%esi
/// 3d: 4c 89 ea                    mov    %r13,%rdx
/// 40: 45 31 d2                    xor    %r10d,%r10d
/// 43: 41 b8 08 00 00 00           mov    $8,%r8d
/// 49: 0f 05                       syscall
/// 4b: 49 c7 04 24 02 00 00 00     movq   $2,(%r12)          ; going on by itself
/// 53: 41 ff e6                    jmp    *%r14              ; rt_sigreturn
/// ```
///
/// ppoll, not a futex or nanosleep: interrupted, it restarts with the time it has left and
/// never uses the thread's restart block.
const CODE: [u8; 0x56] = [
    0x48, 0x39, 0xeb, 0x73, 0x27, 0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b,
    0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30, 0x0f, 0x05, 0x48, 0x89, 0x43, 0x38, 0x48, 0x83, 0xc3, 0x40, 0xeb, 0xd4,
    0x49, 0xc7, 0x04, 0x24, 0x01, 0x00, 0x00, 0x00, 0xb8, 0x0f, 0x01, 0x00, 0x00, 0x31, 0xff, 0x31, 0xf6, 0x4c, 0x89, 0xea, 0x45, 0x31,
    0xd2, 0x41, 0xb8, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x49, 0xc7, 0x04, 0x24, 0x02, 0x00, 0x00, 0x00, 0x41, 0xff, 0xe6,
];

/// One system call: its number and up to six arguments.
pub type Call = (i64, Vec<u64>);

impl RemoteTask {
    /// Whether this tracee can run a batch: parked, with a scratch area big enough that is
    /// executable or has its code page.
    pub fn runs_batches(&self, calls: usize) -> bool {
        let room = |s: &super::Scratch| s.len >= BATCH_AT + TABLE_AT + calls as u64 * ENTRY_LEN;
        self.self_return.is_some() && self.scratch.is_some_and(|s| (s.executable || s.code.is_some()) && room(&s))
    }

    /// Writes the code, the timeout, the cleared flag and the table, and lets the tracee run
    /// them. On an error the tracee is left (or put back) where it is parked.
    fn start_batch(&mut self, calls: &[Call]) -> Result<(), SysError> {
        let Some(sigreturn_ip) = self.self_return else {
            return Err(SysError::unexpected("starting a batch of calls", self.pid.as_raw(), "not parked".into()));
        };
        let code_page = self.scratch.and_then(|s| s.code);
        let mut block = vec![0u8; (TABLE_AT + calls.len() as u64 * ENTRY_LEN) as usize];
        block[TIMEOUT_AT as usize..TIMEOUT_AT as usize + 8].copy_from_slice(&WAIT_SECONDS.to_ne_bytes());
        if code_page.is_none() {
            block[CODE_AT as usize..CODE_AT as usize + CODE.len()].copy_from_slice(&CODE);
        }
        for (i, (nr, args)) in calls.iter().enumerate() {
            let at = (TABLE_AT + i as u64 * ENTRY_LEN) as usize;
            let words = std::iter::once(*nr as u64).chain(args.iter().copied().chain(std::iter::repeat(0)).take(6));
            for (j, word) in words.enumerate() {
                block[at + j * 8..at + j * 8 + 8].copy_from_slice(&word.to_ne_bytes());
            }
        }
        let base = self.put(BATCH_AT, &block)?;
        let mut regs = self.base;
        regs.rip = code_page.unwrap_or(base + CODE_AT);
        regs.rbx = base + TABLE_AT;
        regs.rbp = base + TABLE_AT + calls.len() as u64 * ENTRY_LEN;
        regs.r12 = base + FLAG_AT;
        regs.r13 = base + TIMEOUT_AT;
        regs.r14 = sigreturn_ip;
        ptrace::set_registers(self.pid, &regs)?;
        if let Err(e) = nix::sys::ptrace::cont(self.pid, None) {
            let _ = ptrace::set_registers(self.pid, &self.base);
            return Err(SysError::new("ptrace(PTRACE_CONT) into a batch of calls", e).pid(self.pid.as_raw()));
        }
        Ok(())
    }

    fn batch_flag(&self) -> Result<u64, SysError> {
        let mut word = [0u8; 8];
        self.get(BATCH_AT + FLAG_AT, &mut word)?;
        Ok(u64::from_ne_bytes(word))
    }

    /// Waits (until `deadline`) for the tracee's calls to be done, stops it and parks it again;
    /// returns the results of its `count` calls, or None if it did not make them all in time
    /// (starved of CPU, a cgroup's quota spent...).
    fn catch_batch(&mut self, count: usize, deadline: Instant) -> Result<Option<Vec<i64>>, SysError> {
        let pid = self.pid;
        let mut nap = Duration::from_micros(20);
        let mut yields = 0;
        // Bounded by the deadline: a tracee that does not get there is interrupted anyway (as
        // is one whose flag cannot be read).
        while self.batch_flag().is_ok_and(|f| f == 0) && Instant::now() < deadline {
            if yields < 16 {
                yields += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
        ptrace::interrupt_and_wait(pid)?;
        let flag = self.batch_flag()?;
        if flag == FLAG_LEFT {
            return Err(self.let_go_after_batch());
        }
        ptrace::set_registers(pid, &self.base)?;
        if flag != FLAG_DONE {
            tracing::debug!(pid = pid.as_raw(), "did not make its {count} calls in {CATCH_LIMIT:?}: they are made one by one");
            return Ok(None);
        }
        let mut table = vec![0u8; count * ENTRY_LEN as usize];
        self.get(BATCH_AT + TABLE_AT, &mut table)?;
        Ok(Some(table.chunks_exact(ENTRY_LEN as usize).map(|e| i64::from_ne_bytes(e[56..64].try_into().unwrap())).collect()))
    }

    /// The tracee waited out its timeout and went back to its own code: crust can no longer
    /// work in it. Detached at once, so that nothing crust does afterwards touches it.
    fn let_go_after_batch(&mut self) -> SysError {
        let pid = self.pid.as_raw();
        tracing::warn!(pid, "left its batch of calls by itself after {WAIT_SECONDS} s: crust was held up; letting it go");
        self.self_return = None;
        self.lost = true;
        let _ = ptrace::detach(self.pid);
        SysError::unexpected(
            "a batch of calls",
            pid,
            format!("went on by itself: crust did not catch it within {WAIT_SECONDS} s (the process runs on, untouched)"),
        )
    }

    /// Runs `calls[i]` (a list of system calls that only read: a task caught before it made
    /// them all makes them again) in `tasks[i]`, and returns their raw results
    /// (negative errno on failure). Tasks that can ([`Self::runs_batches`]) run their list by
    /// themselves, all at once (one per address space); the others take one round of
    /// [`Self::syscall_each`] per call.
    /// On an error every task is still brought back where it is parked before the first error
    /// is returned.
    /// (An error of a test's fault point, src/fault.rs, is returned as it is, after the tasks
    /// are parked again: an interruption it stands for must reach crust's exit status.)
    pub fn syscalls_each(tasks: &mut [&mut RemoteTask], calls: &[Vec<Call>]) -> anyhow::Result<Vec<Vec<i64>>> {
        if tasks.len() != calls.len() {
            return Err(SysError::unexpected("syscalls_each", 0, format!("{} tasks, {} lists of calls", tasks.len(), calls.len())).into());
        }
        let mut results: Vec<Result<Vec<i64>, SysError>> = (0..tasks.len()).map(|_| Ok(Vec::new())).collect();
        // One batch per process: its threads share the scratch area, where a second batch
        // would overwrite the first. (Not per scratch address: a process's forked children
        // have theirs at the same address, each in its own memory.)
        let mut processes = std::collections::HashSet::new();
        let (mut batched, mut stepped): (Vec<(usize, &mut RemoteTask)>, Vec<(usize, &mut RemoteTask)>) = tasks
            .iter_mut()
            .map(|t| &mut **t)
            .enumerate()
            .partition(|(i, t)| t.runs_batches(calls[*i].len()) && processes.insert(t.process));
        tracing::debug!(batched = batched.len(), stepped = stepped.len(), "running lists of calls");
        let (fault, unfinished) = run_batches(&mut batched, calls, &mut results);
        // Those caught before they were done make their calls again, one by one.
        for (k, task) in batched.into_iter().enumerate() {
            if unfinished.contains(&k) {
                stepped.push(task);
            }
        }
        step_through(&mut stepped, calls, &mut results)?;
        fault?;
        Ok(results.into_iter().collect::<Result<_, _>>()?)
    }
}

/// Starts every batch before catching the first, so they run side by side. Returns what the
/// fault point returned, and which tasks (their places in `tasks`) did not make their calls in
/// time (parked again).
fn run_batches(
    tasks: &mut [(usize, &mut RemoteTask)],
    calls: &[Vec<Call>],
    results: &mut [Result<Vec<i64>, SysError>],
) -> (anyhow::Result<()>, Vec<usize>) {
    let mut started = vec![false; tasks.len()];
    for (k, (i, t)) in tasks.iter_mut().enumerate() {
        match t.start_batch(&calls[*i]) {
            Ok(()) => started[k] = true,
            Err(e) => results[*i] = Err(e),
        }
    }
    // A test widens the window in which the tracees run their code (crust killed or held up).
    let fault = crate::fault::point("dump-batch-running");
    let deadline = Instant::now() + CATCH_LIMIT;
    let mut unfinished = Vec::new();
    for (k, (i, t)) in tasks.iter_mut().enumerate() {
        if started[k] {
            match t.catch_batch(calls[*i].len(), deadline) {
                Ok(Some(done)) => results[*i] = Ok(done),
                Ok(None) => unfinished.push(k),
                Err(e) => results[*i] = Err(e),
            }
        }
    }
    (fault, unfinished)
}

/// The tasks that cannot run a batch: one round of stops per call.
fn step_through(
    tasks: &mut [(usize, &mut RemoteTask)],
    calls: &[Vec<Call>],
    results: &mut [Result<Vec<i64>, SysError>],
) -> Result<(), SysError> {
    let rounds = tasks.iter().map(|(i, _)| calls[*i].len()).max().unwrap_or(0);
    for round in 0..rounds {
        let mut these: Vec<&mut RemoteTask> = Vec::new();
        let mut which = Vec::new();
        let mut round_calls = Vec::new();
        for (i, t) in tasks.iter_mut() {
            if results[*i].is_ok() && round < calls[*i].len() {
                these.push(&mut **t);
                which.push(*i);
                round_calls.push(calls[*i][round].clone());
            }
        }
        let outcomes = RemoteTask::syscall_each_apart(&mut these, &round_calls)?;
        for (i, outcome) in which.into_iter().zip(outcomes) {
            match (outcome, &mut results[i]) {
                (Ok(ret), Ok(list)) => list.push(ret),
                (Err(e), slot) => *slot = Err(e),
                (Ok(_), Err(_)) => {}
            }
        }
    }
    Ok(())
}

/// The page a tracee that refuses writable code (PR_SET_MDWE) runs its batches from.
pub const CODE_PAGE_LEN: u64 = 4096;
/// The name of its memfd (/proc/PID/maps shows `/memfd:NAME (deleted)`), followed by the pid
/// of the crust that made it: a page a killed crust left is known by it.
pub const CODE_PAGE_NAME: &str = "crust-batch-code-";
/// Where the memfd's name is placed in the batch's part of the scratch area (the code goes
/// where a batch's block has it).
const NAME_AT: u64 = TABLE_AT;
/// The calls that make the page, in order (see [`code_page_call`]).
const CODE_PAGE_STEPS: [&str; 5] = ["memfd_create", "pwrite64", "fcntl(F_ADD_SEALS)", "mmap(code page)", "close"];

/// Call `step` of [`CODE_PAGE_STEPS`], for a tracee whose name and code are at `data` and
/// whose memfd is `fd`. Sealed before it is mapped: nobody can write the code any more, and
/// the shared mapping can never be made writable (the kernel takes away VM_MAYWRITE).
fn code_page_call(step: usize, data: u64, fd: u64) -> Call {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    let exec = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    match step {
        // The file's mode is not executable (MFD_NOEXEC_SEAL): mmap's PROT_EXEC does not ask it.
        0 => (libc::SYS_memfd_create, vec![data + NAME_AT, (libc::MFD_CLOEXEC | libc::MFD_NOEXEC_SEAL) as u64]),
        1 => (libc::SYS_pwrite64, vec![fd, data + CODE_AT, CODE.len() as u64, 0]),
        2 => (libc::SYS_fcntl, vec![fd, libc::F_ADD_SEALS as u64, seals as u64]),
        3 => (libc::SYS_mmap, vec![0, CODE_PAGE_LEN, exec, libc::MAP_SHARED as u64, fd, 0]),
        _ => (libc::SYS_close, vec![fd]),
    }
}

impl RemoteTask {
    /// Gives each of `tasks` (parked leaders, each with its plain scratch area, of processes
    /// that refuse writable code: PR_SET_MDWE) a page to run its batches from that is
    /// executable and never writable: a memfd the process makes, writes the code into and
    /// seals, then maps read and execute (shared: it merges with none of the process's own
    /// mappings) and closes. MDWE refuses a mapping both writable and executable and one that
    /// becomes executable, not a new one that is executable only. One round of stops per call
    /// for all the tasks. Returns the page of each; None where a call failed: that task keeps
    /// the call-by-call path (its memfd, if made, is closed all the same).
    pub fn map_code_pages_each(tasks: &mut [&mut RemoteTask], crust_pid: u32) -> Vec<Option<u64>> {
        let name = format!("{CODE_PAGE_NAME}{crust_pid}\0");
        let data: Vec<Option<u64>> = tasks
            .iter()
            .map(|t| t.put(BATCH_AT + NAME_AT, name.as_bytes()).and_then(|_| t.put(BATCH_AT + CODE_AT, &CODE)).ok().map(|_| BATCH_AT))
            .zip(tasks.iter())
            .map(|(at, t)| Some(t.scratch?.address + at?))
            .collect();
        let (mut fds, mut pages, mut failed) = (vec![None; tasks.len()], vec![None; tasks.len()], vec![false; tasks.len()]);
        for (step, what) in CODE_PAGE_STEPS.iter().enumerate() {
            // The memfd is closed whatever happened since it was made.
            let which: Vec<usize> = (0..tasks.len())
                .filter(|&i| match step {
                    0 => data[i].is_some(),
                    4 => fds[i].is_some(),
                    _ => fds[i].is_some() && !failed[i],
                })
                .collect();
            let calls: Vec<Call> = which.iter().map(|&i| code_page_call(step, data[i].unwrap_or(0), fds[i].unwrap_or(0))).collect();
            for (i, ret) in code_page_round(tasks, &which, &calls, what) {
                match (step, ret) {
                    (0, Some(fd)) => fds[i] = Some(fd),
                    (3, Some(page)) => pages[i] = Some(page),
                    (_, Some(_)) => {}
                    (_, None) => failed[i] = true,
                }
            }
        }
        // A page whose memfd could not be closed still serves (close fails only on a bad fd).
        pages
    }
}

/// One round of [`RemoteTask::map_code_pages_each`]: `calls[k]` in `tasks[which[k]]`. Returns
/// each task's result (None: failed, logged).
fn code_page_round(tasks: &mut [&mut RemoteTask], which: &[usize], calls: &[Call], what: &str) -> Vec<(usize, Option<u64>)> {
    if which.is_empty() {
        return Vec::new();
    }
    let mut these: Vec<&mut RemoteTask> = tasks.iter_mut().enumerate().filter(|(i, _)| which.contains(i)).map(|(_, t)| &mut **t).collect();
    let outcomes = match RemoteTask::syscall_each_apart(&mut these, calls) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::debug!("remote {what} for the batches' code pages: {e}");
            return which.iter().map(|&i| (i, None)).collect();
        }
    };
    let mut results = Vec::with_capacity(which.len());
    for ((&i, outcome), t) in which.iter().zip(outcomes).zip(&these) {
        let ret = match outcome {
            Ok(ret) if !(-4095..0).contains(&ret) => Some(ret as u64),
            Ok(ret) => {
                tracing::debug!(
                    pid = t.pid.as_raw(),
                    "remote {what} for the batch's code page: {}",
                    nix::errno::Errno::from_raw(-ret as i32)
                );
                None
            }
            Err(e) => {
                tracing::debug!(pid = t.pid.as_raw(), "remote {what} for the batch's code page: {e}");
                None
            }
        };
        results.push((i, ret));
    }
    results
}
