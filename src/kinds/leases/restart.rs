//! Starting again, at restore, the lease breaks that were in progress at the dump, so that the
//! kernel itself ends each one at its recorded time.
//!
//! The kernel fixes a break's deadline when the break starts: the instant of the conflicting
//! open() + lease-break-time, a whole number of seconds N. A break with `r` seconds left is
//! therefore started, while the tree is still frozen, `N - r` before the tree resumes, with
//! lease-break-time = N = r rounded up (at least 1: 0 would mean no deadline): its deadline is
//! then exactly `resume + r`, to one kernel tick. All breaks of a restore share one schedule:
//! each starts at its own moment before the common resume, so the tree waits frozen at most
//! once, less than a second (two for a downgrade later joined by a writer).
//!
//! From then on the kernel owns every break: the holder may release, downgrade, close, exit
//! or exec, a new conflicting open joins the break, a second checkpoint reads the kernel's
//! deadline; crust keeps no copy of any description of the restored processes (its copies
//! are closed before they resume). Only the kernel's lazy expiry is helped: see
//! [`Waker::start`].
//!
//! A break with no time left is ended by crust before the tree resumes (F_SETLEASE to the
//! target type through its copy, as the kernel's timer would have), except a downgrade of a
//! lease held through a description open for writing: F_SETLEASE F_RDLCK is refused while the
//! file is open for writing (the description's own write access included), so only the
//! kernel can downgrade it, one second (the smallest deadline) after the restart.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;

use super::break_time::BreakTimeChanger;
use super::restored::{self, RestoredBreak, mono_now};
use super::{F_GETLEASE, F_SETLEASE};
use crate::image::proto::Lease;

/// One step of a break: a downgrade (to a read lease) or an unlock.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// crust ends it before the tree resumes (no time left).
    Now { to_unlock: bool },
    /// The kernel ends it: started `lead` before the resume with lease-break-time `secs`.
    Kernel { to_unlock: bool, secs: u32, lead: Duration },
}

/// A recorded break to start again, on the restored description behind `copy`.
pub struct BreakRestart {
    path: String,
    holder_pid: u32,
    /// Every (pid, fd) of the tree holding the description, for the waker.
    holders: Vec<(u32, i32)>,
    copy: OwnedFd,
    dev: u64,
    inode: u64,
    /// In the order the kernel must see them: a downgrade before the unlock that joined it.
    steps: Vec<Step>,
}

/// Plans the restart of `lease` (breaking, to be restarted) through `copy`, crust's copy of the
/// restored description taken from a process holding it.
pub fn plan(lease: &Lease, holders: Vec<(u32, i32)>, copy: OwnedFd) -> Result<BreakRestart> {
    let holder_pid = holders.first().map_or(0, |h| h.0);
    let writable = crate::sys::fcntl_int(copy.as_raw_fd(), libc::F_GETFL, 0)? & libc::O_ACCMODE != libc::O_RDONLY;
    let meta = File::from(copy.try_clone()?).metadata().context("fstat of the leased file")?;
    let mut wanted = Vec::new();
    if lease.break_to_unlock && lease.downgrade_remaining_ms > 0 {
        wanted.push((false, Duration::from_millis(lease.downgrade_remaining_ms)));
    }
    wanted.push((lease.break_to_unlock, Duration::from_millis(lease.remaining_ms)));
    Ok(BreakRestart {
        path: lease.path.clone(),
        holder_pid,
        holders,
        copy,
        dev: meta.dev(),
        inode: meta.ino(),
        steps: schedule_steps(&wanted, writable),
    })
}

/// The steps for (to_unlock, time left) in kernel order.
fn schedule_steps(wanted: &[(bool, Duration)], writable: bool) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for &(to_unlock, left) in wanted {
        let crust_can_end = to_unlock || !writable;
        if left.is_zero() && crust_can_end {
            if to_unlock {
                steps.clear(); // the lease goes away now: an earlier downgrade does not matter
            }
            steps.push(Step::Now { to_unlock });
            continue;
        }
        let secs = left.as_secs_f64().ceil().max(1.0) as u32;
        let lead = Duration::from_secs(secs.into()).saturating_sub(left);
        // A downgrade must start before the unlock that joined it (a writer's open on a lease
        // breaking to unlock would not record a downgrade): start it whole seconds earlier.
        if to_unlock && let Some(Step::Kernel { secs: s, lead: l, .. }) = steps.last_mut() {
            while *l < lead {
                *s += 1;
                *l += Duration::from_secs(1);
            }
        }
        steps.push(Step::Kernel { to_unlock, secs, lead });
    }
    steps
}

/// Runs every planned restart and returns when the tree may resume: each break is started at
/// its moment before that common instant, so the kernel's deadlines fall at `resume + time
/// left`. crust's copies of the descriptions are closed on return. The returned waker is to be
/// started once the tree runs ([`Waker::start`]).
pub fn run(restarts: Vec<BreakRestart>) -> Result<Waker> {
    for r in &restarts {
        for step in &r.steps {
            if let Step::Now { to_unlock } = *step {
                end_now(r, to_unlock).with_context(|| r.describe())?;
            }
        }
    }
    let timed = kernel_steps_by_lead(&restarts);
    let resume = mono_now() + timed.first().map_or(Duration::ZERO, |t| t.0) + Duration::from_millis(2);
    let mut changer = BreakTimeChanger::new();
    // Dropped on an error below: crust's records of the breaks started so far go with it.
    let mut waker = Waker { wakes: Vec::new(), pidfds: Default::default(), records: Vec::new() };
    for (lead, i, j) in timed {
        let r = &restarts[i];
        let Step::Kernel { to_unlock, secs, .. } = r.steps[j] else { unreachable!() };
        sleep_until(resume - lead);
        let (deadline, record) = start(r, to_unlock, secs, &mut changer).with_context(|| r.describe())?;
        tracing::info!(path = %r.path, to_unlock, secs, lead_ms = lead.as_millis() as u64, "lease break started again");
        waker.wakes.push(Wake { deadline, holders: r.holders.clone(), dev: r.dev, inode: r.inode });
        waker.records.extend(record);
    }
    waker.open_pidfds()?;
    sleep_until(resume);
    Ok(waker)
}

/// (lead, restart index, step index) of every step the kernel ends: the longest lead first,
/// and for one lease its steps in their order.
fn kernel_steps_by_lead(restarts: &[BreakRestart]) -> Vec<(Duration, usize, usize)> {
    let mut timed = Vec::new();
    for (i, r) in restarts.iter().enumerate() {
        for (j, step) in r.steps.iter().enumerate() {
            if let Step::Kernel { lead, .. } = step {
                timed.push((*lead, i, j));
            }
        }
    }
    timed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    timed
}

/// The deadlines of the restarted breaks and pidfds of their holders, opened while the tree is
/// still frozen (a holder may exit as soon as it runs), for `crust-leasewake`.
pub struct Waker {
    wakes: Vec<Wake>,
    pidfds: std::collections::BTreeMap<u32, OwnedFd>,
    /// crust's records of the restarted breaks: removed if the restore fails (dropped
    /// without `start`).
    records: Vec<std::path::PathBuf>,
}

/// A deadline at which the kernel must look at an inode's leases.
struct Wake {
    deadline: Duration,
    holders: Vec<(u32, i32)>,
    dev: u64,
    inode: u64,
}

impl Waker {
    fn open_pidfds(&mut self) -> Result<()> {
        for (pid, _) in self.wakes.iter().flat_map(|w| &w.holders) {
            if !self.pidfds.contains_key(pid) {
                self.pidfds.insert(*pid, crate::sys::pidfd::pidfd_open(*pid as i32)?);
            }
        }
        Ok(())
    }

    /// Starts `crust-leasewake`, once the tree runs; nothing if no break was restarted.
    ///
    /// Expiry is lazy (docs/kernel-leases.md): at its deadline the kernel ends a break only
    /// when something looks at the inode's leases. A blocked breaker looks when its sleep times
    /// out, and that sleep is a timer-wheel timeout, which may fire up to an eighth of its
    /// length late (up to 256 ms for 2 to 16 s at HZ=250, 2 s beyond); a break nobody waits for
    /// stays until someone looks. So that each restarted break ends at its recorded time,
    /// `crust-leasewake` makes the kernel look at each deadline: `F_GETLEASE` on the holder's
    /// fd, which ends a break only if its deadline has passed, exactly as any look would (and
    /// does nothing otherwise).
    ///
    /// It holds no descriptor but pidfds of the holders: nothing of their files. At a deadline
    /// it takes a copy of a holder's fd (pidfd_getfd) for the duration of that one call, and
    /// only if that fd is still the leased file; if the holder exited, closed it or exec'd,
    /// there is nothing to do. Killing it (`pkill -x crust-leasewake`) is harmless: the kernel
    /// ends the breaks itself, a little later. It exits after the last deadline. If it cannot
    /// be started, the restore goes on (the same holds), with a warning.
    pub fn start(mut self) {
        self.records.clear(); // the tree runs: they stay until their deadlines
        if self.wakes.is_empty() {
            return;
        }
        let keep: Vec<i32> = self.pidfds.values().map(|fd| fd.as_raw_fd()).collect();
        // The kernel counts a deadline as past one tick after it (the deadline is reckoned from
        // the last tick before crust's open, so one tick after `deadline` is always enough).
        let tick = lease_probe_tick();
        let mut wakes = std::mem::take(&mut self.wakes);
        let pidfds = std::mem::take(&mut self.pidfds);
        let started = crate::sys::spawn_detached("crust-leasewake", &keep, move || {
            wakes.sort_by_key(|w| w.deadline);
            for w in &wakes {
                sleep_until(w.deadline + tick + Duration::from_millis(1));
                look_at_leases(w, &pidfds);
            }
        });
        if let Err(e) = started {
            tracing::warn!("cannot start crust-leasewake ({e}): restored lease breaks end when the kernel looks");
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        for path in &self.records {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lease_probe_tick() -> Duration {
    let hz = crate::sys::lease_probe::kernel_hz().unwrap_or(100).max(1);
    Duration::from_nanos(1_000_000_000 / u64::from(hz))
}

/// F_GETLEASE through the first holder fd that is still the leased file.
fn look_at_leases(w: &Wake, pidfds: &std::collections::BTreeMap<u32, OwnedFd>) {
    for (pid, fd) in &w.holders {
        let Some(pidfd) = pidfds.get(pid) else { continue };
        let Ok(copy) = crate::sys::pidfd::pidfd_getfd(pidfd, *pid as i32, *fd) else { continue };
        let same = nix::sys::stat::fstat(&copy).is_ok_and(|st| st.st_dev == w.dev && st.st_ino == w.inode);
        if same {
            let _ = crate::sys::fcntl_int(copy.as_raw_fd(), F_GETLEASE, 0);
            return;
        }
    }
}

fn sleep_until(t: Duration) {
    let now = mono_now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

impl BreakRestart {
    fn describe(&self) -> String {
        format!("restarting the lease break on {} (holder pid {})", self.path, self.holder_pid)
    }
}

/// Starts the break with an open by crust, with lease-break-time = `secs` for that instant,
/// without signalling anyone: the holder was signalled before the checkpoint (a signal it had
/// not received yet is pending in the image and is delivered once).
/// Returns the break's deadline (CLOCK_MONOTONIC) and crust's record of it.
fn start(r: &BreakRestart, to_unlock: bool, secs: u32, changer: &mut BreakTimeChanger) -> Result<(Duration, Option<std::path::PathBuf>)> {
    let owner = crate::sys::get_owner_ex(r.copy.as_raw_fd()).context("F_GETOWN_EX")?;
    crate::sys::set_owner_ex(r.copy.as_raw_fd(), crate::sys::F_OWNER_PID, 0).context("F_SETOWN_EX (none)")?;
    let started = mono_now();
    let opened = changer.with(secs, || {
        let mut options = File::options();
        if to_unlock {
            options.write(true);
        } else {
            options.read(true);
        }
        // Through crust's copy of the holder's description: the restored file itself, whatever
        // its path leads to by now.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(super::reopen_path(&r.copy))
    });
    let back = crate::sys::set_owner_ex(r.copy.as_raw_fd(), owner.0, owner.1).context("F_SETOWN_EX (the recorded owner)");
    match opened? {
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {} // the break runs
        Err(e) => return Err(e).context(format!("open(O_NONBLOCK) of {} to start the break", r.path)),
        Ok(_) => bail!("opening {} did not start a lease break: the lease is not there", r.path),
    }
    back?;
    let deadline = started + Duration::from_secs(secs.into());
    let holders: Vec<restored::ProcessId> = r.holders.iter().filter_map(|(pid, _)| restored::process_id(*pid)).collect();
    let record = restored::record(r.dev, r.inode, to_unlock, RestoredBreak { started, deadline }, &holders);
    Ok((deadline, record))
}

/// Downgrades or removes the lease through crust's copy of the description, as the kernel's
/// timer would have at the deadline.
fn end_now(r: &BreakRestart, to_unlock: bool) -> Result<()> {
    let target = if to_unlock { libc::F_UNLCK } else { libc::F_RDLCK };
    match crate::sys::fcntl_int(r.copy.as_raw_fd(), F_SETLEASE, target) {
        Ok(_) => Ok(()),
        Err(Errno::ENOENT) if to_unlock => Ok(()),
        Err(e) => {
            let now = crate::sys::fcntl_int(r.copy.as_raw_fd(), F_GETLEASE, 0);
            Err(e).with_context(|| format!("ending the break at once (F_SETLEASE {target}; F_GETLEASE says {now:?})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn deadline_is_resume_plus_time_left() {
        let s = schedule_steps(&[(true, ms(5_300))], false);
        assert_eq!(s, [Step::Kernel { to_unlock: true, secs: 6, lead: ms(700) }]);
        let s = schedule_steps(&[(true, ms(4_000))], false);
        assert_eq!(s, [Step::Kernel { to_unlock: true, secs: 4, lead: ms(0) }]);
        let s = schedule_steps(&[(false, ms(200))], true);
        assert_eq!(s, [Step::Kernel { to_unlock: false, secs: 1, lead: ms(800) }]);
    }

    #[test]
    fn no_time_left_is_ended_by_crust_unless_only_the_kernel_can() {
        assert_eq!(schedule_steps(&[(true, ms(0))], true), [Step::Now { to_unlock: true }]);
        assert_eq!(schedule_steps(&[(false, ms(0))], false), [Step::Now { to_unlock: false }]);
        assert_eq!(schedule_steps(&[(false, ms(0))], true), [Step::Kernel { to_unlock: false, secs: 1, lead: ms(1000) }]);
    }

    #[test]
    fn a_downgrade_starts_before_the_unlock_that_joined_it() {
        let s = schedule_steps(&[(false, ms(2_900)), (true, ms(4_500))], false);
        // The unlock's lead is 0.5 s; the downgrade's 0.1 s must grow to 1.1 s (secs 4).
        assert_eq!(
            s,
            [Step::Kernel { to_unlock: false, secs: 4, lead: ms(1_100) }, Step::Kernel { to_unlock: true, secs: 5, lead: ms(500) }]
        );
        // An unlock with no time left removes the lease: the downgrade does not matter.
        assert_eq!(schedule_steps(&[(false, ms(2_900)), (true, ms(0))], false), [Step::Now { to_unlock: true }]);
    }
}
