//! A thread's CPU and kernel-side state: general registers (with fs/gs base), the XSAVE area
//! (x87, SSE, AVX...), the system call it was in, its blocked mask, its own pending signals,
//! alternate signal stack, rseq registration, robust futex list and clear_child_tid.

use anyhow::{Context, Result, bail};

use super::{DumpCtx, Kind, RestoreCtx, syscall_timeouts};
use crate::image::proto::{GpRegisters, InterruptedSyscall, Rseq, SignalStack, Thread, interrupted_syscall::Action};
use crate::kinds::signals::siginfo;
use crate::sys::ptrace::{self, Registers, SignalQueue, peek_pending};

pub struct ThreadState;

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

impl Kind for ThreadState {
    type Record = Thread;

    fn dump(ctx: &mut DumpCtx) -> Result<Thread> {
        dump_with(ctx, None)
    }

    /// Runs in the thread itself (`ctx.remote` drives that thread; `ctx.pid` is its process).
    fn restore(ctx: &mut RestoreCtx, t: &Thread) -> Result<()> {
        restore_with(ctx, t, true)
    }
}

/// Restores a thread; its alternate stack and registrations (see [`registrations_of`]) only if
/// `registrations`: else the caller makes them for a batch of threads
/// ([`restore_registrations_of_all`]).
pub fn restore_with(ctx: &mut RestoreCtx, t: &Thread, registrations: bool) -> Result<()> {
    let pid = ctx.pid;
    let tid = ctx.remote.pid();
    ptrace::set_xstate(tid, &t.xsave).with_context(|| format!("restoring the FPU/SSE/AVX state of thread {tid}"))?;
    super::identity::set_name(ctx.remote, &t.comm)?;
    let r = &mut *ctx.remote;
    // A thread created by the restore (not the leader) starts without an alternate stack
    // (the kernel resets it for CLONE_VM): a disabled one needs no call.
    // (With the registrations of a batch of threads when they are made apart.)
    let none = |ss: &&SignalStack| tid != pid && altstack_is_default(ss);
    if let Some(ss) = t.altstack.as_ref().filter(|ss| registrations && !none(ss)) {
        let addr = r.put(0, &stack_t(ss))?;
        r.syscall("sigaltstack", libc::SYS_sigaltstack, &[addr, 0]).context("restoring the alternate signal stack")?;
    }
    if registrations {
        for (name, nr, args) in registrations_of(t) {
            r.syscall(name, nr, &args).with_context(|| format!("thread {tid}: {name}"))?;
        }
    }
    for info in &t.pending {
        let addr = r.put(0, &info.raw)?;
        r.syscall("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, &[pid.as_raw() as u64, t.tid as u64, info.signo as u64, addr])
            .with_context(|| format!("re-queueing pending signal {} of thread {}", info.signo, t.tid))?;
    }
    Ok(())
}

/// Whether a thread created by the restore has this alternate stack already: none (the kernel
/// resets it for CLONE_VM).
fn altstack_is_default(ss: &SignalStack) -> bool {
    ss.flags & libc::SS_DISABLE != 0 && ss.sp == 0 && ss.size == 0
}

/// The stack_t sigaltstack takes for `ss`.
fn stack_t(ss: &SignalStack) -> [u8; 24] {
    let mut raw = [0u8; 24];
    raw[..8].copy_from_slice(&ss.sp.to_ne_bytes());
    // SS_ONSTACK only reports that the thread was running on it.
    raw[8..16].copy_from_slice(&((ss.flags & !libc::SS_ONSTACK) as u64).to_ne_bytes());
    raw[16..].copy_from_slice(&ss.size.to_ne_bytes());
    raw
}

/// The alternate stacks of threads created by the restore (`threads[i]` from `records[i]`,
/// all of one process), set by all of them at once: each thread's stack_t in its own slot of
/// the scratch area they share, one round of stops per batch of threads.
fn restore_altstacks_of_all(threads: &mut [&mut crate::sys::remote::RemoteTask], records: &[&Thread]) -> Result<()> {
    let mut wanted: Vec<(&mut crate::sys::remote::RemoteTask, &SignalStack)> = threads
        .iter_mut()
        .zip(records)
        .filter_map(|(t, r)| r.altstack.as_ref().filter(|ss| !altstack_is_default(ss)).map(|ss| (&mut **t, ss)))
        .collect();
    const SLOT: u64 = 24;
    let Some(scratch) = wanted.first().and_then(|(t, _)| t.scratch()) else { return Ok(()) };
    let batch = ((scratch.len / SLOT) as usize).max(1);
    for chunk in wanted.chunks_mut(batch) {
        let mut calls = Vec::with_capacity(chunk.len());
        for (i, (t, ss)) in chunk.iter().enumerate() {
            let addr = t.put(i as u64 * SLOT, &stack_t(ss))?;
            calls.push((libc::SYS_sigaltstack, vec![addr, 0]));
        }
        let mut tasks: Vec<&mut crate::sys::remote::RemoteTask> = chunk.iter_mut().map(|(t, _)| &mut **t).collect();
        let results = crate::sys::remote::RemoteTask::syscall_each(&mut tasks, &calls)?;
        if let Some((t, ret)) = tasks.iter().zip(results).find(|(_, ret)| (-4095..0).contains(ret)) {
            bail!(
                "thread {}: remote sigaltstack, restoring its alternate signal stack: {}",
                t.pid(),
                nix::errno::Errno::from_raw(-ret as i32)
            );
        }
    }
    Ok(())
}

/// The calls that register the thread's own areas with the kernel, in order: rseq, the robust
/// futex list, clear_child_tid.
fn registrations_of(t: &Thread) -> Vec<(&'static str, i64, Vec<u64>)> {
    let mut calls = Vec::new();
    if let Some(rseq) = &t.rseq {
        calls.push(("rseq", libc::SYS_rseq, vec![rseq.address, rseq.length as u64, 0, rseq.signature as u64]));
    }
    if t.robust_list != 0 {
        calls.push(("set_robust_list", libc::SYS_set_robust_list, vec![t.robust_list, t.robust_list_len]));
    }
    calls.push(("set_tid_address", libc::SYS_set_tid_address, vec![t.clear_child_tid]));
    calls
}

/// The alternate stacks and registrations of `threads[i]` from `records[i]`, made by all the
/// threads at once (see RemoteTask::syscall_each): a round of stops per registration, not per
/// thread.
pub fn restore_registrations_of_all(threads: &mut [&mut crate::sys::remote::RemoteTask], records: &[&Thread]) -> Result<()> {
    restore_altstacks_of_all(threads, records)?;
    let lists: Vec<_> = records.iter().map(|t| registrations_of(t)).collect();
    let rounds = lists.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..rounds {
        let mut tasks = Vec::new();
        let mut calls = Vec::new();
        let mut names = Vec::new();
        for (t, list) in threads.iter_mut().zip(&lists) {
            if let Some((name, nr, args)) = list.get(k) {
                tasks.push(&mut **t);
                calls.push((*nr, args.clone()));
                names.push(*name);
            }
        }
        let results = crate::sys::remote::RemoteTask::syscall_each(&mut tasks, &calls)?;
        for ((t, ret), name) in tasks.iter().zip(results).zip(names) {
            if (-4095..0).contains(&ret) {
                bail!("thread {}: remote {name}: {}", t.pid(), nix::errno::Errno::from_raw(-ret as i32));
            }
        }
    }
    Ok(())
}

/// What only the thread itself can tell: its alternate signal stack (sigaltstack) and its
/// clear_child_tid address (prctl PR_GET_TID_ADDRESS).
pub struct OwnWords {
    altstack: SignalStack,
    clear_child_tid: u64,
}

/// Bytes of the scratch area each thread's [`OwnWords`] take: stack_t (24), then the address.
pub(crate) const OWN_WORDS_LEN: u64 = 32;

pub(crate) fn own_words_at(raw: &[u8]) -> OwnWords {
    let word = |i: usize| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
    OwnWords { altstack: SignalStack { sp: word(0), flags: word(1) as i32, size: word(2) }, clear_child_tid: word(3) }
}

fn own_words(r: &mut crate::sys::remote::RemoteTask) -> Result<OwnWords> {
    let out = r.put(0, &[0u8; OWN_WORDS_LEN as usize])?;
    r.syscall("sigaltstack", libc::SYS_sigaltstack, &[0, out])?;
    r.syscall("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, &[libc::PR_GET_TID_ADDRESS as u64, out + 24])?;
    let mut raw = [0u8; OWN_WORDS_LEN as usize];
    r.get(0, &mut raw)?;
    Ok(own_words_at(&raw))
}

/// The [`OwnWords`] of the threads of one process (they share its scratch area, each using
/// its own slot), asked of all of them at once (see RemoteTask::syscall_each): two rounds of
/// stops for a batch of threads instead of two per thread.
pub fn own_words_of_all(threads: &mut [&mut crate::sys::remote::RemoteTask]) -> Result<Vec<OwnWords>> {
    let mut out = Vec::with_capacity(threads.len());
    let Some(scratch) = threads.first().and_then(|t| t.scratch()) else { return Ok(out) };
    let batch = (scratch.len / OWN_WORDS_LEN) as usize;
    for chunk in threads.chunks_mut(batch) {
        let len = chunk.len() * OWN_WORDS_LEN as usize;
        let base = chunk[0].put(0, &vec![0u8; len])?;
        let slot = |i: usize| base + i as u64 * OWN_WORDS_LEN;
        let rounds: [(&str, Box<dyn Fn(usize) -> (i64, Vec<u64>)>); 2] = [
            ("sigaltstack", Box::new(|i| (libc::SYS_sigaltstack, vec![0, slot(i)]))),
            ("prctl(PR_GET_TID_ADDRESS)", Box::new(|i| (libc::SYS_prctl, vec![libc::PR_GET_TID_ADDRESS as u64, slot(i) + 24]))),
        ];
        for (name, call) in rounds {
            let calls: Vec<(i64, Vec<u64>)> = (0..chunk.len()).map(&call).collect();
            let results = crate::sys::remote::RemoteTask::syscall_each(chunk, &calls)?;
            if let Some((t, ret)) = chunk.iter().zip(results).find(|(_, ret)| (-4095..0).contains(ret)) {
                bail!("thread {}: remote {name}: {}", t.pid(), nix::errno::Errno::from_raw(-ret as i32));
            }
        }
        let mut raw = vec![0u8; len];
        chunk[0].get(0, &mut raw)?;
        out.extend(raw.chunks_exact(OWN_WORDS_LEN as usize).map(own_words_at));
    }
    Ok(out)
}

/// A thread's state; `own` if its [`OwnWords`] were asked already (by [`own_words_of_all`]).
pub fn dump_with(ctx: &mut DumpCtx, own: Option<OwnWords>) -> Result<Thread> {
    let pid = ctx.pid;
    let regs = ctx.remote.original_registers();
    let xsave = ptrace::get_xstate(pid)?;
    let pending = peek_pending(pid, SignalQueue::Thread)?.iter().map(siginfo).collect();
    let OwnWords { altstack, clear_child_tid } = match own {
        Some(o) => o,
        None => own_words(ctx.remote)?,
    };
    let rseq = ptrace::get_rseq(pid)?;
    let (robust_list, robust_list_len) = crate::sys::get_robust_list(pid.as_raw())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/comm"))?.trim_end_matches('\n').to_owned();
    Ok(Thread {
        tid: pid.as_raw() as u32,
        comm,
        registers: Some(to_proto(&regs)),
        interrupted_syscall: interrupted_syscall(ctx.remote, &regs, true)?,
        xsave,
        blocked_mask: ctx.remote.original_sigmask(),
        pending,
        altstack: Some(altstack),
        rseq: (rseq.address != 0).then_some(Rseq { address: rseq.address, length: rseq.length, signature: rseq.signature }),
        robust_list,
        robust_list_len,
        clear_child_tid,
        // Filled by the dump pipeline from outside the thread (kinds::scheduling,
        // kinds::credentials).
        scheduling: None,
        credentials: None,
    })
}

/// The registers the restored thread resumes with, after deciding how an interrupted system
/// call goes on (see InterruptedSyscall in the image schema).
pub fn resume_registers(t: &Thread) -> Result<Registers> {
    let mut regs = from_proto(t.registers.as_ref().context("thread without registers")?);
    if let Some(sc) = &t.interrupted_syscall {
        match sc.action() {
            Action::KernelRestart => {} // registers as they were; the kernel restarts it
            // The kernel's restart block holds its deadline again (see restore's last step).
            Action::Reissue if syscall_timeouts::is_timed_futex_wait(sc) => {}
            Action::Reissue => {
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
                regs.orig_rax = u64::MAX;
                syscall_timeouts::set_register_timeout(sc, &mut regs);
            }
            Action::ResumeSleep => {
                // Sleep again for what was left, which the kernel wrote to the caller's `rem`.
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
                match regs.orig_rax as i64 {
                    libc::SYS_nanosleep => regs.rdi = regs.rsi,
                    libc::SYS_clock_nanosleep => regs.rdx = regs.r10,
                    other => bail!("RESUME_SLEEP recorded for system call {other}"),
                }
                regs.orig_rax = u64::MAX;
            }
            Action::ReturnEintr => {
                regs.rax = (-libc::EINTR) as u64;
                regs.orig_rax = u64::MAX;
            }
        }
    }
    Ok(regs)
}

/// Whether setting up `t` to resume starts the clock of its interrupted call (a re-armed futex
/// wait): done last, right before the tree resumes.
pub fn starts_a_clock(t: &Thread) -> bool {
    t.interrupted_syscall.as_ref().is_some_and(syscall_timeouts::is_timed_futex_wait)
}

/// Sets up a restored thread to resume when crust lets it go: its registers (an interrupted
/// call resolved, a timed wait given the time it had left) and its blocked mask. For a
/// re-armed futex wait it starts the clock ([`starts_a_clock`]).
pub fn ready_to_resume(remote: &mut crate::sys::remote::RemoteTask, t: &Thread) -> Result<()> {
    let regs = resume_registers(t)?;
    let tid = remote.pid();
    match &t.interrupted_syscall {
        Some(sc) if syscall_timeouts::is_timed_futex_wait(sc) => {
            let regs = syscall_timeouts::rearm_futex_wait(remote, sc, &regs)?;
            ptrace::set_sigmask(tid, t.blocked_mask)?;
            remote.park_with_registers(&regs)?;
        }
        _ => {
            ptrace::set_sigmask(tid, t.blocked_mask)?;
            remote.park_with_registers(&regs)?;
        }
    }
    Ok(())
}

/// The registers a thread that the dump lets go on (`-R`, or a failed dump) resumes with: its
/// own, except that a call the freeze itself ended with EINTR (the epoll waits...) goes on
/// instead, to the deadline it had: the time it had left at the freeze less the time it was
/// frozen.
pub fn release_registers(remote: &crate::sys::remote::RemoteTask) -> Result<Registers> {
    let regs = remote.original_registers();
    if regs.rax as i64 != -(libc::EINTR as i64) {
        return Ok(regs);
    }
    let Some(mut sc) = interrupted_syscall(remote, &regs, true)? else { return Ok(regs) };
    if sc.timeout_ns != 0 {
        sc.remaining_ns = syscall_timeouts::left_now(remote.pid().as_raw(), &sc).as_nanos() as u64;
    }
    resume_registers(&Thread { registers: Some(to_proto(&regs)), interrupted_syscall: Some(sc), ..Default::default() })
}

/// The registers a thread comes back to through `rt_sigreturn` if crust disappears while it
/// works in it (see RemoteTask::arm_self_return): its own, with an interrupted system call
/// resolved the way restore resolves it, since rt_sigreturn restarts nothing: restarted,
/// a relative sleep resumed for the time it had left, or EINTR where the kernel's restart
/// block is needed (rt_sigreturn resets it). A call the freeze ended with EINTR keeps it, as
/// the kernel gave it (nothing was measured yet).
pub fn self_return_registers(remote: &crate::sys::remote::RemoteTask, regs: &Registers) -> Result<Registers> {
    let mut t = Thread { registers: Some(to_proto(regs)), ..Default::default() };
    t.interrupted_syscall = interrupted_syscall(remote, regs, false)?;
    if let Some(sc) = t.interrupted_syscall.as_mut() {
        if sc.return_value == -(libc::EINTR as i64) {
            return Ok(*regs);
        }
        if sc.action() == Action::KernelRestart {
            sc.set_action(Action::Reissue);
        }
        if syscall_timeouts::is_timed_futex_wait(sc) {
            sc.set_action(Action::ReturnEintr);
        }
    }
    resume_registers(&t)
}

/// Calls the kernel would restart through its restart block that can be issued again with
/// their own arguments instead (which is what the restart does, with the deadline it kept):
/// futex waits with an absolute deadline (FUTEX_WAIT_BITSET, the PI locks), and poll without
/// a timeout. (Those with a relative timeout go on for the time they had left: see
/// kinds::syscall_timeouts.)
fn reissue_is_exact(number: i64, regs: &Registers) -> bool {
    const FUTEX_CMD_MASK: u64 = !(128 | 256); // FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME
    match number {
        libc::SYS_poll => true,
        libc::SYS_futex => matches!(
            regs.rsi & FUTEX_CMD_MASK,
            9 /* FUTEX_WAIT_BITSET */ | 6 /* FUTEX_LOCK_PI */ | 11 /* FUTEX_WAIT_REQUEUE_PI */ | 13 /* FUTEX_LOCK_PI2 */
        ),
        _ => false,
    }
}

/// What restore does with the system call the thread driven by `remote` was in when it was
/// frozen (`regs`). With `measured`, a wait with a relative timeout gets the time it had left
/// (see kinds::syscall_timeouts); else its whole timeout.
fn interrupted_syscall(remote: &crate::sys::remote::RemoteTask, regs: &Registers, measured: bool) -> Result<Option<InterruptedSyscall>> {
    let number = regs.orig_rax as i64;
    let ret = regs.rax as i64;
    if number >= 0 && ret == -(libc::EINTR as i64) && ended_by_the_freeze(remote, number)? {
        let mut sc = InterruptedSyscall { number, return_value: ret, ..Default::default() };
        sc.set_action(Action::Reissue);
        if syscall_timeouts::timeout_of(remote, number, regs)?.is_none() {
            return Ok(Some(sc)); // no timeout: the same call again is exact
        }
        if epoll_pwait2_under_seccomp(remote.pid().as_raw(), number)? {
            return Ok(Some(sc)); // as it was, with its whole timeout
        }
        if syscall_timeouts::resumes_with_time_left(number) {
            timed_reissue(remote, regs, &mut sc, measured)?;
            return Ok(Some(sc));
        }
        return Ok(None); // the EINTR the kernel gave it (see docs/image-format.md)
    }
    if number < 0 || !matches!(ret, ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK) {
        return Ok(None);
    }
    let mut sc = InterruptedSyscall { number, return_value: ret, ..Default::default() };
    if ret != ERESTART_RESTARTBLOCK {
        sc.set_action(Action::KernelRestart);
        return Ok(Some(sc));
    }
    // The kernel keeps how to restart this call in the thread's restart_block, which a new
    // process does not have. Relative sleeps are the common case: the kernel wrote the time
    // left to `rem`, so the sleep can go on exactly.
    let rem = match number {
        libc::SYS_nanosleep => regs.rsi,
        libc::SYS_clock_nanosleep if regs.rsi & libc::TIMER_ABSTIME as u64 == 0 => regs.r10,
        libc::SYS_clock_nanosleep => {
            sc.set_action(Action::Reissue);
            return Ok(Some(sc));
        }
        _ if timed_reissue(remote, regs, &mut sc, measured)? => {
            sc.set_action(Action::Reissue);
            return Ok(Some(sc));
        }
        _ if reissue_is_exact(number, regs) => {
            sc.set_action(Action::Reissue);
            return Ok(Some(sc));
        }
        _ => {
            sc.set_action(Action::ReturnEintr);
            return Ok(Some(sc));
        }
    };
    if rem == 0 {
        sc.set_action(Action::Reissue);
        return Ok(Some(sc));
    }
    let mut ts = [0u8; 16];
    remote.read_memory(rem, &mut ts)?;
    let sec = u64::from_ne_bytes(ts[..8].try_into().unwrap());
    let nsec = u64::from_ne_bytes(ts[8..].try_into().unwrap());
    sc.remaining_ns = sec * 1_000_000_000 + nsec;
    sc.set_action(Action::ResumeSleep);
    Ok(Some(sc))
}

/// Fills `sc` for a call waiting with a relative timeout (false: not such a call).
fn timed_reissue(remote: &crate::sys::remote::RemoteTask, regs: &Registers, sc: &mut InterruptedSyscall, measured: bool) -> Result<bool> {
    let Some(timeout) = syscall_timeouts::timeout_of(remote, sc.number, regs)? else { return Ok(false) };
    if measured {
        syscall_timeouts::record(sc, remote.pid().as_raw(), timeout);
    } else {
        sc.timeout_ns = timeout.as_nanos().max(1) as u64;
        sc.remaining_ns = timeout.as_nanos() as u64;
    }
    Ok(true)
}

/// The epoll waits, rt_sigtimedwait, semop and io_getevents return EINTR when their thread is
/// stopped, signal or no signal (the kernel never restarts them; signal(7)). Frozen with no
/// signal pending that the thread does not block, the EINTR is the freeze's own, and restore
/// lets the call go on instead. With one pending, a handler is due and EINTR is what the
/// program gets anyway.
fn ended_by_the_freeze(remote: &crate::sys::remote::RemoteTask, number: i64) -> Result<bool> {
    const ENDED_BY_A_STOP: [i64; 7] = [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_io_getevents,
    ];
    if !ENDED_BY_A_STOP.contains(&number) {
        return Ok(false);
    }
    let tid = remote.pid();
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).with_context(|| format!("reading /proc/{tid}/status"))?;
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .with_context(|| format!("no {key} in /proc/{tid}/status"))
    };
    let pending = mask("SigPnd:")? | mask("ShdPnd:")?;
    Ok(pending & !remote.original_sigmask() == 0)
}

/// epoll_pwait2 resumes as epoll_pwait (a timeout in a register): a seccomp filter may allow
/// the one and not the other. Under a filter it is re-issued as it was (its whole timeout).
fn epoll_pwait2_under_seccomp(tid: i32, number: i64) -> Result<bool> {
    if number != libc::SYS_epoll_pwait2 {
        return Ok(false);
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).with_context(|| format!("reading /proc/{tid}/status"))?;
    Ok(status.lines().find_map(|l| l.strip_prefix("Seccomp:")).is_some_and(|v| v.trim() != "0"))
}

macro_rules! convert_regs {
    ($($f:ident),*) => {
        pub fn to_proto(r: &Registers) -> GpRegisters { GpRegisters { $($f: r.$f),* } }
        pub fn from_proto(p: &GpRegisters) -> Registers { Registers { $($f: p.$f),* } }
    };
}
convert_regs!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es,
    fs, gs
);
