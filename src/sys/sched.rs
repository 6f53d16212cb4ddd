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
