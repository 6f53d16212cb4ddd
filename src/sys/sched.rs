//! Scheduling policy of another thread (sched_getscheduler/sched_setscheduler on a tid): crust
//! reads and sets it from outside, without running anything in the process.

use nix::errno::Errno;

use super::SysError;

/// sched_getscheduler(2) and sched_getparam(2) of `tid`: (policy, with SCHED_RESET_ON_FORK
/// or'ed in when set; static priority).
pub fn get_scheduler(tid: i32) -> Result<(i32, i32), SysError> {
    // SAFETY: sched_getscheduler takes a pid by value and touches no memory of ours.
    let policy = Errno::result(unsafe { libc::sched_getscheduler(tid) }).map_err(|e| SysError::new("sched_getscheduler", e).pid(tid))?;
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the kernel writes one struct sched_param into `param`, a live local.
    Errno::result(unsafe { libc::sched_getparam(tid, &mut param) }).map_err(|e| SysError::new("sched_getparam", e).pid(tid))?;
    Ok((policy, param.sched_priority))
}

/// sched_setscheduler(2) of `tid` (policy may carry SCHED_RESET_ON_FORK).
pub fn set_scheduler(tid: i32, policy: i32, priority: i32) -> Result<(), SysError> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: the kernel reads one struct sched_param from `param`, a live local.
    Errno::result(unsafe { libc::sched_setscheduler(tid, policy, &param) })
        .map(drop)
        .map_err(|e| SysError::new("sched_setscheduler", e).pid(tid))
}

/// setpriority(PRIO_PROCESS, tid, nice): on Linux, the nice value of that one thread.
pub fn set_thread_nice(tid: i32, nice: i32) -> Result<(), SysError> {
    // SAFETY: setpriority takes integers only.
    Errno::result(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) })
        .map(drop)
        .map_err(|e| SysError::new("setpriority", e).pid(tid))
}

/// While a [`OneCpu`] is held: the mask threads go back to (the pinned thread's own mask from
/// before the pin), and the CPU it pinned.
static SPREAD_MASK: std::sync::Mutex<Option<(nix::sched::CpuSet, usize)>> = std::sync::Mutex::new(None);

/// crust's thread and the processes it makes, kept on the one CPU that thread is on while
/// it drives them with ptrace. Every injected call is two ptrace stops, and every stop wakes
/// the other side; the scheduler wakes a thread on an idle CPU when it can, and waking an
/// idle CPU (a halted vCPU here, a deep C-state on hardware) costs tens of microseconds where
/// a switch on one CPU costs a few (measured here: 2.6 us a stop on one CPU, 5 to 45 us
/// across two). Processes forked by the pinned thread, and their threads and children,
/// inherit the pin: each thread is given its own affinity back before it runs
/// ([`spread_thread`], then the image's). Threads crust starts meanwhile for parallel work
/// call [`spread_this_thread`]. Dropped, the calling thread's own mask is back. Never used
/// on a dump: a crust killed there would leave the dumped processes pinned.
/// `CRUST_NO_PIN=1` leaves everything unpinned (to measure the difference).
pub struct OneCpu {
    /// On the thread that pinned itself (its mask is a property of that thread).
    _not_send: std::marker::PhantomData<*const ()>,
}

impl OneCpu {
    /// Pins the calling thread to the CPU it runs on; None (and nothing changed) if the mask
    /// cannot be read or set, a pin is already held (one restore at a time pins), or
    /// CRUST_NO_PIN is set.
    pub fn here() -> Option<OneCpu> {
        use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
        let mut spread = SPREAD_MASK.lock().unwrap_or_else(|p| p.into_inner());
        if spread.is_some() || std::env::var_os("CRUST_NO_PIN").is_some() {
            return None;
        }
        let this = nix::unistd::Pid::from_raw(0);
        let original = sched_getaffinity(this).ok()?;
        // SAFETY: sched_getcpu takes no argument and touches no memory of ours.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
        let mut one = CpuSet::new();
        one.set(cpu).ok()?;
        if let Err(e) = sched_setaffinity(this, &one) {
            tracing::debug!("sched_setaffinity(CPU {cpu}) of crust's thread: {e}; the restore runs unpinned");
            return None;
        }
        *spread = Some((original, cpu));
        Some(OneCpu { _not_send: std::marker::PhantomData })
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let original = SPREAD_MASK.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((mask, _)) = original
            && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &mask)
        {
            tracing::warn!("giving crust's thread its CPU mask back: sched_setaffinity: {e}");
        }
    }
}

/// Gives thread `tid` (made while a [`OneCpu`] is held) the mask it would have had without
/// the pin; nothing when no pin is held.
pub fn spread_thread(tid: i32) -> Result<(), SysError> {
    let Some((mask, _)) = *SPREAD_MASK.lock().unwrap_or_else(|p| p.into_inner()) else { return Ok(()) };
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &mask).map_err(|e| SysError::new("sched_setaffinity", e).pid(tid))
}

/// The calling thread (a worker of parallel work started while a [`OneCpu`] is held) off the
/// pinned CPU, so that the work spreads over every core; nothing when no pin is held.
/// `beside`: a worker beside the pinned thread, which works (or drives a process) on the
/// pinned CPU meanwhile: it keeps off that CPU, if the mask has another.
pub fn spread_this_thread(beside: bool) {
    let Some((mut mask, pinned)) = *SPREAD_MASK.lock().unwrap_or_else(|p| p.into_inner()) else { return };
    if beside && cpus_in(&mask) > 1 {
        let _ = mask.unset(pinned);
    }
    if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &mask) {
        tracing::debug!("a worker thread stays on the pinned CPU: {e}");
    }
}

/// How many threads parallel work should use: the CPUs of the process's mask, those of the
/// mask from before a [`OneCpu`] while one is held (std's available_parallelism reads the
/// calling thread's mask, one CPU then).
pub fn cpus_for_work() -> usize {
    let spread = *SPREAD_MASK.lock().unwrap_or_else(|p| p.into_inner());
    match spread {
        Some((mask, _)) => cpus_in(&mask).max(1),
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}

fn cpus_in(mask: &nix::sched::CpuSet) -> usize {
    (0..nix::sched::CpuSet::count()).filter(|&c| mask.is_set(c).unwrap_or(false)).count()
}
