//! System calls frozen while they wait with a finite relative timeout (futex FUTEX_WAIT, poll,
//! epoll_wait, epoll_pwait, epoll_pwait2) go on after restore for the time they had LEFT.
//!
//! The kernel keeps such a call's deadline where crust cannot read it (the restart block, or
//! the stack of the sleeping task). What can be seen is when the thread last ran: /proc/TID/sched
//! `se.exec_start`, in milliseconds of its CPU's run queue clock, which is the moment it went to
//! sleep in the call. So right before the freeze (the tree still runs) every thread of the tree
//! blocked in one of these calls is sampled: its `exec_start`, crust's own "now" on that CPU's
//! clock (see lease_probe::sched_now_on_cpu: the CPUs' clocks drift apart) and its voluntary
//! context switches. The time it had waited when it was frozen is `now - exec_start` plus the
//! time from the sample to the moment crust interrupted it (CLOCK_MONOTONIC, taken just before
//! the interrupt, so the wait is never over-counted).
//!
//! Freezing a sleeping thread wakes it exactly once (one more voluntary switch, for its ptrace
//! stop). Any other count means it ran between the sample and the freeze: it may have left the
//! call and entered a new one, so the sample says nothing of the call it is in; it is then
//! recorded STALE and restore gives the whole timeout again (late rather than early: a timeout
//! is a minimum). A thread woken spuriously inside the call and asleep again before the sample
//! looks as if it started later, which errs the same way.
//!
//! Measured on this machine: the start of the wait it gives is 0.2 to 5 ms after the program's
//! own CLOCK_MONOTONIC read just before the call (which includes the program's last steps
//! into it), never before; it misses the IRQ and steal time of the CPU during the wait (a
//! fraction of a percent).
//!
//! Restore: poll and the epoll calls take their timeout in a register, which is set to the time
//! left (rounded up to a millisecond; epoll_pwait2's timespec is replaced by calling
//! epoll_pwait, which has the same arguments with a millisecond timeout). FUTEX_WAIT reads its
//! timeout from the caller's memory, which the program may read again, so it is not touched:
//! see [`rearm_futex_wait`].
//!
//! The epoll waits end with EINTR when their thread is stopped (the kernel never restarts
//! them): kinds::registers tells that EINTR from a signal's and lets them go on the same way,
//! after a restore and in a tree the dump leaves running ([`left_now`]).

use std::collections::BTreeMap;
use std::fs;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::image::proto::InterruptedSyscall;
use crate::image::proto::interrupted_syscall::TimeoutMeasure;
use crate::sys::lease_probe::{sched_field, sched_now_on_cpu};
use crate::sys::ptrace::Registers;
use crate::sys::remote::RemoteTask;

pub const FUTEX_WAIT: u64 = 0;
const FUTEX_CMD_MASK: u64 = !(128 | 256); // FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME
const ERESTART_RESTARTBLOCK: i64 = -516;

/// The calls whose wait is measured before the freeze.
const MEASURED: [i64; 5] = [libc::SYS_futex, libc::SYS_poll, libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2];

/// Whether restore can give call `number` the time it had left (see the module's comment).
/// rt_sigtimedwait, semtimedop and io_getevents cannot: their timeout is a pointer into the
/// caller's memory, none of them has a restart block to hold a deadline, and no other call
/// does the same with the timeout in a register.
pub fn resumes_with_time_left(number: i64) -> bool {
    MEASURED.contains(&number)
}

/// One thread seen blocked before the freeze.
#[derive(Debug, Clone)]
struct Sample {
    /// Its /proc/TID/syscall line (number and arguments): the call it was in.
    syscall: String,
    /// How long it had been asleep at `taken`.
    asleep: Duration,
    /// CLOCK_MONOTONIC of the sample.
    taken: Duration,
    voluntary_switches: u64,
}

/// What the freeze saw of one thread: when crust interrupted it and its switch count after.
#[derive(Debug, Clone, Copy)]
struct Frozen {
    interrupted: Duration,
    voluntary_switches: Option<u64>,
}

#[derive(Default)]
struct Samples {
    before: BTreeMap<i32, Sample>,
    frozen: BTreeMap<i32, Frozen>,
}

static SAMPLES: Mutex<Option<Samples>> = Mutex::new(None);

fn mono_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(Duration::ZERO, Duration::from)
}

/// Called right before the tree of `root` is frozen: samples every thread of the tree that is
/// asleep in a call of [`MEASURED`].
pub fn before_freeze(root: i32) {
    let mut samples = Samples::default();
    for tid in tree_threads(root) {
        if let Some(s) = sample(tid) {
            let since = s.taken.saturating_sub(s.asleep).as_secs_f64();
            tracing::debug!(tid, syscall = %s.syscall, asleep_s = s.asleep.as_secs_f64(), since_monotonic_s = since, "sampled a timed wait");
            samples.before.insert(tid, s);
        }
    }
    *SAMPLES.lock().unwrap() = Some(samples);
}

/// Every thread of `root` and its descendants, as /proc shows them now (found through each
/// thread's children: the tree is not frozen yet, so one forked meanwhile may be missed, and
/// its waits are then not measured).
fn tree_threads(root: i32) -> Vec<i32> {
    const MAX_THREADS: usize = 1 << 16;
    let mut threads = Vec::new();
    let mut processes = vec![root];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(pid) = processes.pop() {
        if !seen.insert(pid) || threads.len() >= MAX_THREADS {
            continue;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for tid in tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok()) {
            threads.push(tid);
            let children = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
            processes.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    threads
}

/// The instant to pass to [`frozen`]: taken right before crust interrupts a thread.
pub fn before_interrupt() -> Duration {
    mono_now()
}

/// Called right after thread `tid` stopped for the freeze (before crust runs anything in it).
pub fn frozen(tid: i32, interrupted: Duration) {
    if let Some(s) = SAMPLES.lock().unwrap().as_mut()
        && s.before.contains_key(&tid)
    {
        let voluntary_switches = sched_file(tid).and_then(|t| sched_field(&t, "nr_voluntary_switches")?.parse().ok());
        s.frozen.insert(tid, Frozen { interrupted, voluntary_switches });
    }
}

fn sched_file(tid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{tid}/sched")).ok()
}

/// `tid` if it sleeps (state S) in a measured call: how long it has slept, read on its CPU's clock.
fn sample(tid: i32) -> Option<Sample> {
    let syscall = fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?.trim().to_owned();
    let number: i64 = syscall.split_whitespace().next()?.parse().ok()?;
    if !MEASURED.contains(&number) {
        return None;
    }
    let (state, cpu, exec_start, switches) = sched_state(tid)?;
    if state != 'S' {
        return None;
    }
    let now = sched_now_on_cpu(cpu)?;
    let taken = mono_now();
    // Ran meanwhile (its exec_start moved): this sample would be wrong.
    if sched_state(tid)? != (state, cpu, exec_start, switches) {
        return None;
    }
    let asleep_ms = now - exec_start;
    if !asleep_ms.is_finite() || asleep_ms < 0.0 {
        return None;
    }
    Some(Sample { syscall, asleep: Duration::from_secs_f64(asleep_ms / 1e3), taken, voluntary_switches: switches })
}

/// (state, CPU it last ran on, se.exec_start in ms, voluntary switches) of `tid`.
fn sched_state(tid: i32) -> Option<(char, usize, f64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    // After the last ')' (the name may contain anything): field 3 is the state, 39 the CPU.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let cpu = fields.get(39 - 3)?.parse().ok()?;
    let sched = sched_file(tid)?;
    let exec_start = sched_field(&sched, "se.exec_start")?.parse().ok()?;
    let switches = sched_field(&sched, "nr_voluntary_switches")?.parse().ok()?;
    Some((state, cpu, exec_start, switches))
}

/// How long thread `tid` had waited in `number` when it was frozen, and how that is known.
fn waited(tid: i32, number: i64) -> (TimeoutMeasure, Duration) {
    let guard = SAMPLES.lock().unwrap();
    let samples = guard.as_ref();
    let before = samples.and_then(|s| s.before.get(&tid));
    let frozen = samples.and_then(|s| s.frozen.get(&tid));
    let (measure, waited) = measure(before, frozen, number);
    if measure == TimeoutMeasure::Stale {
        tracing::info!(tid, ?before, ?frozen, "the thread ran between its sample and its freeze: its timeout is given whole");
    }
    (measure, waited)
}

/// The wait at the freeze from the sample before it and what the freeze saw.
fn measure(before: Option<&Sample>, frozen: Option<&Frozen>, number: i64) -> (TimeoutMeasure, Duration) {
    let (Some(before), Some(frozen)) = (before, frozen) else {
        return (TimeoutMeasure::NotMeasured, Duration::ZERO);
    };
    let same_call = before.syscall.split_whitespace().next() == Some(number.to_string().as_str());
    // Frozen while still in the sampled sleep: exactly one more switch, for the ptrace stop.
    if !same_call || frozen.voluntary_switches != Some(before.voluntary_switches + 1) {
        return (TimeoutMeasure::Stale, Duration::ZERO);
    }
    (TimeoutMeasure::SchedClock, before.asleep + frozen.interrupted.saturating_sub(before.taken))
}

/// Fills the timeout fields of `sc` (a call of `tid` with the relative timeout `timeout`).
pub fn record(sc: &mut InterruptedSyscall, tid: i32, timeout: Duration) {
    let (measure, waited) = waited(tid, sc.number);
    sc.timeout_ns = timeout.as_nanos().max(1) as u64;
    sc.waited_ns = waited.as_nanos() as u64;
    sc.set_measure(measure);
    sc.remaining_ns = timeout.saturating_sub(waited).as_nanos() as u64;
    tracing::info!(
        tid,
        number = sc.number,
        timeout_s = timeout.as_secs_f64(),
        waited_s = waited.as_secs_f64(),
        ?measure,
        "a timed wait goes on for the time it had left"
    );
}

/// What is left now of the wait `sc` of thread `tid` recorded at the freeze: the time it is
/// frozen counts, for a thread that goes on in the same process (its deadline is real time).
pub fn left_now(tid: i32, sc: &InterruptedSyscall) -> Duration {
    let left_at_freeze = Duration::from_nanos(sc.remaining_ns);
    let guard = SAMPLES.lock().unwrap();
    match guard.as_ref().and_then(|s| s.frozen.get(&tid)) {
        Some(f) if sc.measure() == TimeoutMeasure::SchedClock => left_at_freeze.saturating_sub(mono_now().saturating_sub(f.interrupted)),
        _ => left_at_freeze,
    }
}

/// The whole relative timeout of interrupted call `number` (None: it waits without one, or it is
/// not a call of this module). `remote` reads a timespec the call takes by pointer.
pub fn timeout_of(remote: &RemoteTask, number: i64, regs: &Registers) -> Result<Option<Duration>> {
    let ms = |v: u64| (v as i32 >= 0).then(|| Duration::from_millis(u64::from(v as i32 as u32)));
    Ok(match number {
        libc::SYS_poll => ms(regs.rdx),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => ms(regs.r10),
        libc::SYS_futex if regs.rsi & FUTEX_CMD_MASK != FUTEX_WAIT => None,
        _ => match timespec_argument(number).map(|arg| *arg_mut(&mut regs.clone(), arg)) {
            Some(0) | None => None,
            Some(address) => Some(read_timespec(remote, address)?),
        },
    })
}

/// Which argument (0-based) of call `number` is a pointer to its relative timeout.
fn timespec_argument(number: i64) -> Option<usize> {
    match number {
        libc::SYS_futex | libc::SYS_epoll_pwait2 | libc::SYS_semtimedop => Some(3),
        libc::SYS_rt_sigtimedwait => Some(2),
        libc::SYS_io_getevents => Some(4),
        _ => None,
    }
}

fn arg_mut(regs: &mut Registers, index: usize) -> &mut u64 {
    match index {
        0 => &mut regs.rdi,
        1 => &mut regs.rsi,
        2 => &mut regs.rdx,
        3 => &mut regs.r10,
        4 => &mut regs.r8,
        _ => &mut regs.r9,
    }
}

fn read_timespec(remote: &RemoteTask, address: u64) -> Result<Duration> {
    let mut ts = [0u8; 16];
    remote.read_memory(address, &mut ts).with_context(|| format!("reading the timeout at {address:#x}"))?;
    let sec = i64::from_ne_bytes(ts[..8].try_into().unwrap());
    let nsec = i64::from_ne_bytes(ts[8..].try_into().unwrap());
    Ok(Duration::from_secs(sec.max(0) as u64) + Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64))
}

/// A timeout in whole milliseconds, rounded up (a timeout may end late, never early).
fn ceil_ms(ns: u64) -> u64 {
    ns.div_ceil(1_000_000).min(i32::MAX as u64)
}

/// Sets the timeout argument of a re-issued poll or epoll call (`regs` already point at the
/// `syscall` instruction with rax = the call) to the time it had left.
pub fn set_register_timeout(sc: &InterruptedSyscall, regs: &mut Registers) {
    if sc.timeout_ns == 0 {
        return;
    }
    let ms = ceil_ms(sc.remaining_ns);
    match sc.number {
        libc::SYS_poll => regs.rdx = ms,
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => regs.r10 = ms,
        libc::SYS_epoll_pwait2 => {
            // epoll_pwait: the same arguments, the timeout in milliseconds instead of a timespec.
            regs.rax = libc::SYS_epoll_pwait as u64;
            regs.r10 = ms;
        }
        _ => {}
    }
}

/// Whether `sc` is a FUTEX_WAIT with a timeout, to be re-armed by [`rearm_futex_wait`].
pub fn is_timed_futex_wait(sc: &InterruptedSyscall) -> bool {
    sc.number == libc::SYS_futex && sc.timeout_ns != 0
}

/// Makes the kernel hold a relative FUTEX_WAIT's deadline again, `remaining_ns` from now, and
/// returns the registers the thread resumes with.
///
/// FUTEX_WAIT reads its timeout through a pointer into the caller's memory, which the program
/// may read again (a loop re-using one timespec): crust never changes it. Instead the thread
/// itself, still under crust's control with every signal blocked, runs the same FUTEX_WAIT on
/// the same word with the time left, from its own `syscall` instruction; crust interrupts it
/// as soon as it sleeps, and the kernel, as after any interruption, leaves the wait in the
/// thread's restart block with its absolute deadline (futex_wait_restart). The thread then
/// resumes with its recorded registers (-ERESTART_RESTARTBLOCK), and the kernel's own restart
/// goes on waiting on that word until that deadline: exactly what it would have done without
/// the checkpoint, save the time the image sat on disk.
///
/// The time left is passed in a timespec written below the thread's stack pointer, beyond
/// the 128-byte red zone, where the ABI lets nothing live; nothing else runs in the thread
/// while it is there (crust drives it, every signal is blocked), the kernel copies it on entry,
/// and the bytes that were there are put back before the thread runs (no signal frame or
/// handler can find them changed).
///
/// If the word no longer holds the value waited for, the call returns -EAGAIN at once, as
/// the kernel's restart would. Restore runs this last, after every other thread is set up and
/// lease breaks are started again, right before the tree resumes: the milliseconds in between
/// count as waited.
pub fn rearm_futex_wait(remote: &mut RemoteTask, sc: &InterruptedSyscall, recorded: &Registers) -> Result<Registers> {
    let tid = remote.pid();
    let mut done = *recorded;
    done.orig_rax = u64::MAX; // nothing left to restart
    if sc.remaining_ns == 0 {
        done.rax = (-libc::ETIMEDOUT) as u64;
        return Ok(done);
    }
    // Both from the image: checked, a damaged record must not make crust panic.
    let syscall_at = recorded.rip.checked_sub(2).with_context(|| format!("thread {tid}: rip {:#x} in the image", recorded.rip))?;
    let timespec_at =
        recorded.rsp.checked_sub(128 + 64).with_context(|| format!("thread {tid}: rsp {:#x} in the image", recorded.rsp))? & !15;
    let mut insn = [0u8; 2];
    remote.read_memory(syscall_at, &mut insn).with_context(|| format!("thread {tid}: reading its futex call"))?;
    anyhow::ensure!(insn == [0x0f, 0x05], "thread {tid}: no syscall instruction before {:#x} (found {insn:02x?})", recorded.rip);
    let mut saved = [0u8; 16];
    remote.read_memory(timespec_at, &mut saved).with_context(|| format!("thread {tid}: reading below its stack"))?;
    let mut ts = Vec::with_capacity(16);
    ts.extend_from_slice(&(sc.remaining_ns / 1_000_000_000).to_ne_bytes());
    ts.extend_from_slice(&(sc.remaining_ns % 1_000_000_000).to_ne_bytes());
    remote.write_memory(timespec_at, &ts)?;
    let mut call = *recorded;
    (call.rip, call.rax, call.orig_rax, call.r10) = (syscall_at, libc::SYS_futex as u64, u64::MAX, timespec_at);
    let result = remote.run_until_asleep_then_interrupt(&call, Duration::from_secs(5));
    remote.write_memory(timespec_at, &saved).with_context(|| format!("thread {tid}: putting back the bytes below its stack"))?;
    let ret = result.with_context(|| format!("thread {tid}: re-arming its futex wait"))?;
    tracing::info!(%tid, ret, left_s = sc.remaining_ns as f64 / 1e9, "futex wait re-armed");
    if ret == ERESTART_RESTARTBLOCK {
        return Ok(*recorded); // the kernel restarts it from its restart block
    }
    // Interrupted before it slept (a page brought in on demand, say): no deadline is held. It
    // returns the spurious wake-up futex(2) allows rather than a restart code.
    done.rax = if (-515..=-512).contains(&ret) { (-libc::EINTR) as u64 } else { ret as u64 };
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(switches: u64) -> Sample {
        Sample {
            syscall: "202 0x1000 0x80 0x0 0x7ffd0000 0x0 0x0 0x7ffc0000 0x401000".into(),
            asleep: Duration::from_millis(900),
            taken: Duration::from_secs(100),
            voluntary_switches: switches,
        }
    }

    fn frozen(switches: Option<u64>) -> Frozen {
        Frozen { interrupted: Duration::from_millis(100_050), voluntary_switches: switches }
    }

    #[test]
    fn a_thread_frozen_in_its_sampled_sleep_waited_until_its_interruption() {
        let got = measure(Some(&sample(7)), Some(&frozen(Some(8))), libc::SYS_futex);
        assert_eq!(got, (TimeoutMeasure::SchedClock, Duration::from_millis(950)));
    }

    #[test]
    fn a_thread_that_ran_between_its_sample_and_its_freeze_is_stale() {
        // Woke and slept again (maybe in a new call): two switches instead of one.
        assert_eq!(measure(Some(&sample(7)), Some(&frozen(Some(9))), libc::SYS_futex).0, TimeoutMeasure::Stale);
        // Unreadable after the freeze: nothing proves it stayed asleep.
        assert_eq!(measure(Some(&sample(7)), Some(&frozen(None)), libc::SYS_futex).0, TimeoutMeasure::Stale);
        // Frozen in another call than the one sampled.
        assert_eq!(measure(Some(&sample(7)), Some(&frozen(Some(8))), libc::SYS_poll).0, TimeoutMeasure::Stale);
    }

    #[test]
    fn a_thread_not_sampled_is_not_measured() {
        assert_eq!(measure(None, Some(&frozen(Some(8))), libc::SYS_futex), (TimeoutMeasure::NotMeasured, Duration::ZERO));
        assert_eq!(measure(Some(&sample(7)), None, libc::SYS_futex).0, TimeoutMeasure::NotMeasured);
    }

    #[test]
    fn timeouts_are_rounded_up_to_whole_milliseconds() {
        assert_eq!(ceil_ms(0), 0);
        assert_eq!(ceil_ms(1), 1);
        assert_eq!(ceil_ms(2_000_000), 2);
        assert_eq!(ceil_ms(2_000_001), 3);
        assert_eq!(ceil_ms(u64::MAX), i32::MAX as u64);
    }
}
