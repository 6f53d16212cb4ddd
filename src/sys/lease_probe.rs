//! How much time is left of a lease break, and what type the lease had before it.
//!
//! Neither /proc nor fcntl shows the deadline of a lease break or the type the lease had before
//! the break started (see docs/kernel-leases.md). This module offers two ways
//! to learn them from outside, without changing the lease:
//!
//! 1. [`break_deadline_via_tracefs`], exact: the kernel's `filelock:time_out_leases` tracepoint
//!    prints, for every lease of an inode each time the kernel checks them, the lease's own type
//!    and its break and downgrade deadlines in absolute jiffies. The caller makes the kernel check
//!    (with `F_GETLEASE` on a `pidfd_getfd` copy of the holder's fd) while a private trace instance
//!    records the event; "now" in jiffies comes from /proc/timer_list.
//! 2. [`break_deadline_via_sched`], approximate and only for an unlock break with a blocked
//!    breaker: the breaker stopped running when it blocked, and its scheduler entity remembers
//!    when (`se.exec_start` in /proc/PID/sched).
//!
//! Both read kernel internals (a tracepoint's text, the scheduler's debug file), which are not a
//! stable ABI: every parse is checked and an unexpected shape gives "don't know" (`None`), never a
//! guess.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;

use super::SysError;
use super::remote::io_errno;

/// What the `filelock:time_out_leases` tracepoint showed about one lease of the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedLease {
    /// The lease's own type, kept by the kernel during a break (`fl_type=F_WRLCK`: a write
    /// lease; `F_RDLCK`: a read lease). /proc/locks and `F_GETLEASE` show the break's TARGET type
    /// instead.
    pub original_write: bool,
    /// `FL_UNLOCK_PENDING`: a writer broke the lease; it must be removed by `fl_break_time`.
    pub unlock_pending: bool,
    /// `FL_DOWNGRADE_PENDING`: a reader broke a write lease; it must become a read lease by
    /// `fl_downgrade_time`. Both flags can be set (a downgrade break later joined by a writer).
    pub downgrade_pending: bool,
    /// Time left until the break's deadline: `fl_break_time` when an unlock is pending, else
    /// `fl_downgrade_time` when a downgrade is pending, else zero (no break), as of the moment
    /// `trigger` returned (the call itself then takes a few more milliseconds to clean up).
    /// Exact to one jiffy.
    /// Zero also when the deadline had already passed: the event is printed just BEFORE the
    /// kernel expires the lease, so in that case the check made by `trigger` has itself just
    /// removed (or downgraded) the lease.
    pub remaining: Duration,
    /// Absolute jiffies of the unlock deadline (0: none).
    pub break_time: u64,
    /// Absolute jiffies of the downgrade deadline (0: none).
    pub downgrade_time: u64,
    /// The kernel's jiffies, read from /proc/timer_list right after `trigger` returned.
    pub now_jiffies: u64,
    /// CLOCK_MONOTONIC at that same reading (nanoseconds): `remaining` is counted from it.
    pub now_mono_ns: u64,
    /// CONFIG_HZ used to convert jiffies to time (see [`kernel_hz`]).
    pub hz: u32,
    /// How many distinct leases of the inode (distinct `fl=` pointers) the trace showed. Only
    /// read leases can share an inode; the kernel breaks all conflicting leases of an inode at
    /// once with the same deadline (and refuses new leases while an unlock is pending), so they
    /// normally agree. The fields above describe the last one printed.
    pub leases_seen: usize,
    /// The trace line the fields were taken from, for logs.
    pub raw_line: String,
}

/// Reads a lease's pre-break type and break deadline through the `filelock:time_out_leases`
/// tracepoint.
///
/// * `inode`: the leased file's inode number.
/// * `dev`: its device as a `dev_t` in user-space encoding (`libc::makedev(major, minor)`), or 0
///   for "any device". Best taken from the lease's `lock:` line in /proc/PID/fdinfo/FD or
///   /proc/locks (`MAJ:MIN:INODE`, hex major and minor): that is the super block's device the
///   tracepoint prints. `fstat`'s `st_dev` is the same on ext4, xfs and tmpfs, but not on
///   every file system (btrfs subvolumes, overlayfs report another device).
/// * `trigger`: makes the kernel check the inode's leases while the event is enabled. The
///   intended trigger is `fcntl(copy, F_GETLEASE)` on a `pidfd_getfd` copy of the holder's fd:
///   `fcntl_getlease` runs `time_out_leases`, which fires the event once per lease of the inode,
///   and it changes nothing unless the deadline has already passed (then it expires the lease,
///   exactly as any other check would). Never trigger with an `open()` of the file: that starts
///   or joins the break.
///
/// What it does: finds tracefs (a mount in /proc/self/mountinfo; otherwise a private detached
/// mount made with fsopen/fsmount that no path ever shows and that vanishes with its fd;
/// otherwise, if the new mount API is refused, a mount on a fresh directory under /tmp that is
/// unmounted and removed afterwards); creates the trace instance `instances/crust-<pid>-<n>`
/// (instances are global to the kernel; a private one leaves everyone else's tracing alone);
/// reads the event's `format` to learn its field names and sets the filter
/// `i_ino == INODE && s_dev == KDEV` (the kernel's `dev_t` is `major << 20 | minor`); enables
/// the event; calls `trigger`; reads "now" in jiffies; reads the instance's `trace` file and
/// parses `fl_flags=`, `fl_type=`, `fl_break_time=`, `fl_downgrade_time=` of the lines of this
/// inode (checked again in user space against the printed `dev=` and `ino=`). A guard disables
/// the event, removes the instance and unmounts on every path, errors and panics included.
///
/// Returns `Ok(None)` when tracefs or the event is not available (no tracefs in the kernel,
/// mounting refused, no `filelock` events) or when no event for the inode was seen (no lease on
/// the inode, or `trigger` did not make the kernel check). Errors: a tracefs operation that
/// should have worked failed, or `trigger` failed (its errno is reported).
///
/// Needs root (CAP_SYS_ADMIN for tracefs and the mount; /proc/timer_list is root-only). Costs
/// 30-40 ms here (creating and removing an instance allocates and frees its ring buffers), plus
/// 100 ms once per process to measure HZ (see [`kernel_hz`]). Two calls may run at the same time
/// (each has its own instance; each may also record the other's trigger, which is harmless).
///
/// Other checks of the same inode may add lines while the event is enabled (for example a reader
/// blocked on a downgrade break re-checks every jiffy or two); all carry the same absolute
/// deadlines, so this does not change the result.
pub fn break_deadline_via_tracefs(inode: u64, dev: u64, trigger: impl FnOnce() -> io::Result<()>) -> Result<Option<TracedLease>, SysError> {
    // First, so that its one-time measurement does not sit between the trigger and "now".
    let Some(hz) = kernel_hz() else { return Ok(None) };
    let Some(tracefs) = Tracefs::find_or_mount()? else { return Ok(None) };
    let event_dir_rel = Path::new("events/filelock/time_out_leases");
    if !tracefs.root.join(event_dir_rel).join("format").exists() {
        return Ok(None);
    }
    let mut session = Session { instance: None, enabled: None, tracefs };
    let instance = session.create_instance()?;
    let event_dir = instance.join(event_dir_rel);

    let format = read_text(&event_dir.join("format"))?;
    let fields = event_fields(&format);
    let kdev = if dev == 0 { 0 } else { kernel_dev(dev) };
    if let Some(filter) = filter_expression(&fields, inode, kdev) {
        write_text(&event_dir.join("filter"), &filter)?;
    }
    write_text(&event_dir.join("enable"), "1")?;
    session.enabled = Some(event_dir.join("enable"));

    trigger().map_err(|e| SysError::new("lease probe trigger (F_GETLEASE)", io_errno(&e)))?;
    let now = read_jiffies().map_err(|e| SysError::new("read /proc/timer_list", io_errno(&e)))?;

    // Disable before reading, so that a breaker polling the lease (see break_deadline_via_sched)
    // does not keep adding lines while we read.
    write_text(&event_dir.join("enable"), "0")?;
    session.enabled = None;
    let trace = read_text(&instance.join("trace"))?;
    drop(session);
    Ok(pick_lease(&trace, inode, kdev, now.jiffies, hz).map(|t| TracedLease { now_mono_ns: now.mono_ns, ..t }))
}

impl TracedLease {
    /// Time left until the downgrade deadline (zero if none or past), as of `now_jiffies`.
    pub fn downgrade_remaining(&self) -> Duration {
        if self.downgrade_time == 0 {
            return Duration::ZERO;
        }
        jiffies_to_duration(self.downgrade_time.wrapping_sub(self.now_jiffies) as i64, self.hz)
    }

    /// One kernel tick: the precision of the deadlines.
    pub fn tick(&self) -> Duration {
        jiffies_to_duration(1, self.hz)
    }
}

/// Estimates the time left of an UNLOCK break from a breaker blocked in `open()` (or
/// `truncate()`) on the leased file, without tracefs.
///
/// A blocked breaker sleeps in `__break_lease` until the deadline; the scheduler recorded when it
/// last ran: `se.exec_start` in /proc/PID/sched (CONFIG_SCHED_DEBUG), in milliseconds of that
/// CPU's run queue `clock_task`. "Now" on the same clock is read on the same CPU: this thread
/// pins itself for a moment to the CPU the breaker last ran on (field 39 of /proc/PID/stat),
/// calls `sched_yield()` (which updates the run queue clock and this thread's `exec_start`),
/// reads /proc/thread-self/sched, and puts its CPU affinity back. Then
/// `remaining = lease_break_time - (now - exec_start)`, saturating at zero.
///
/// Why the same CPU: `clock_task` excludes the IRQ and steal time accumulated by each CPU, so
/// the CPUs' clocks drift apart and away from CLOCK_MONOTONIC (measured here: CPU 0 727 ms
/// and CPU 1 817 ms behind CLOCK_MONOTONIC after 85 minutes of uptime in a VM).
///
/// Valid only when all of these hold (the caller must know the first two):
/// * the breaker STARTED the break (the deadline is fixed when a break starts; a breaker that
///   joined a break started earlier, for example by an `O_NONBLOCK` open, has waited less than
///   the break has run, and the result is too large);
/// * `lease_break_time` is /proc/sys/fs/lease-break-time as it was when the break started;
/// * the break is an unlock break (the breaker opened for writing). For a downgrade break (a
///   reader breaker) the lease has no unlock deadline (`fl_break_time` 0), and `__break_lease`
///   then waits one jiffy at a time and re-checks, in a loop: the blocked reader wakes every one
///   or two jiffies (measured: about 125 voluntary switches a second at HZ=250), so its
///   `exec_start` is always fresh. This function detects that (the breaker's `nr_switches`
///   moves during a 20 ms watch) and returns `None`;
/// * the breaker has not been woken since it blocked: a ptrace `PTRACE_INTERRUPT`, a freezer, a
///   signal all make it run and move `exec_start`. Call this BEFORE freezing the breaker. (A
///   breaker in a ptrace stop is in state `t`, and this function returns `None` for it; one that
///   was interrupted and let go again blocks anew with a fresh `exec_start`, which cannot be
///   detected.)
///
/// Returns `None` when the breaker is not sleeping (state `S` or `D`), /proc/PID/sched is missing
/// or unreadable, the breaker ran during the measurement, or this thread may not run on the
/// breaker's CPU. Takes about 20 ms. Accuracy: measured within 0.3 ms; the estimate misses the
/// IRQ and steal time of that CPU during the wait (usually a fraction of a percent).
pub fn break_deadline_via_sched(breaker_pid: i32, lease_break_time: Duration) -> Option<Duration> {
    let first = breaker_sample(breaker_pid)?;
    if !matches!(first.state, 'S' | 'D') {
        return None;
    }
    // A reader blocked on a downgrade break wakes every jiffy or two: seen by its switch count.
    std::thread::sleep(Duration::from_millis(20));
    let before = breaker_sample(breaker_pid)?;
    if before != first {
        return None;
    }
    let now_ms = sched_now_on_cpu(before.cpu)?;
    // Any run of the breaker in between moved its exec_start: then the answer would be wrong.
    if breaker_sample(breaker_pid)? != before {
        return None;
    }
    let waited_ms = now_ms - before.exec_start_ms;
    if !waited_ms.is_finite() || waited_ms < 0.0 {
        return None;
    }
    Some(lease_break_time.saturating_sub(Duration::from_secs_f64(waited_ms / 1000.0)))
}

/// CONFIG_HZ of the running kernel (the unit of `jiffies`), determined once per process.
///
/// Sources, in order:
/// 1. `CONFIG_HZ=` in /boot/config-$(uname -r) (absent on many machines, this one included);
/// 2. measured: two readings of /proc/timer_list 100 ms apart, each giving the monotonic clock
///    (`now at N nsecs`) and `jiffies: N` taken together. The kernel advances jiffies from the
///    same monotonic clock (tick_do_update_jiffies64, also after idle periods), so the rate is
///    HZ to within ±1 jiffy per reading. It is rounded to the nearest value Kconfig.hz offers
///    (100, 250, 300, 1000; 4 ms, 3.3 ms and 1 ms ticks are 25, 30 and 100 jiffies in 100 ms, far
///    apart compared with the ±2 jiffies of the measurement), or used as measured if it is more
///    than 10% away from all of them (an architecture with its own choices).
///
/// /proc/config.gz (CONFIG_IKCONFIG_PROC) would also tell, but needs gzip. Measured here: 250.
pub fn kernel_hz() -> Option<u32> {
    static HZ: OnceLock<Option<u32>> = OnceLock::new();
    *HZ.get_or_init(|| hz_from_boot_config().or_else(measure_hz))
}

fn hz_from_boot_config() -> Option<u32> {
    let config = fs::read_to_string(format!("/boot/config-{}", super::kernel_release())).ok()?;
    config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

fn measure_hz() -> Option<u32> {
    let a = read_jiffies().ok()?;
    std::thread::sleep(Duration::from_millis(100));
    let b = read_jiffies().ok()?;
    let secs = b.mono_ns.checked_sub(a.mono_ns)? as f64 / 1e9;
    if secs <= 0.05 {
        return None;
    }
    let rate = b.jiffies.wrapping_sub(a.jiffies) as f64 / secs;
    let nearest =
        [100u32, 250, 300, 1000].into_iter().min_by(|x, y| (f64::from(*x) - rate).abs().total_cmp(&(f64::from(*y) - rate).abs()))?;
    if (f64::from(nearest) - rate).abs() <= f64::from(nearest) * 0.1 {
        Some(nearest)
    } else if rate >= 1.0 {
        Some(rate.round() as u32)
    } else {
        None
    }
}

/// One reading of /proc/timer_list: the monotonic clock and jiffies, printed together.
#[derive(Debug, Clone, Copy)]
pub struct JiffiesNow {
    /// `now at N nsecs`: ktime_get(), CLOCK_MONOTONIC in nanoseconds.
    pub mono_ns: u64,
    /// `jiffies: N` (the 64-bit jiffies on 64-bit kernels; absolute, like the tracepoint's
    /// `fl_break_time`).
    pub jiffies: u64,
}

/// Reads "now" in jiffies from /proc/timer_list (root only; about 7 KB on 2 CPUs). The file
/// prints `jiffies: N` once per CPU, all the same value of one global counter; the first is used.
pub fn read_jiffies() -> io::Result<JiffiesNow> {
    let text = fs::read_to_string("/proc/timer_list")?;
    parse_timer_list(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no `now at`/`jiffies:` in /proc/timer_list"))
}

fn parse_timer_list(text: &str) -> Option<JiffiesNow> {
    let mono_ns = text.lines().find_map(|l| l.strip_prefix("now at ")?.strip_suffix(" nsecs")?.trim().parse().ok())?;
    let jiffies = text.lines().find_map(|l| l.strip_prefix("jiffies:")?.trim().parse().ok())?;
    Some(JiffiesNow { mono_ns, jiffies })
}

/// Converts a user-space `dev_t` to the kernel's internal encoding printed by tracepoints
/// (`MKDEV(major, minor) = major << 20 | minor`).
fn kernel_dev(dev: u64) -> u64 {
    let major = u64::from(libc::major(dev));
    let minor = u64::from(libc::minor(dev));
    (major << 20) | minor
}

/// The field names of a tracepoint, from its `format` file (`field:TYPE NAME;\toffset:...`).
fn event_fields(format: &str) -> Vec<String> {
    format
        .lines()
        .filter_map(|l| {
            let decl = l.trim().strip_prefix("field:")?.split(';').next()?;
            let name = decl.split_whitespace().last()?;
            Some(name.split('[').next().unwrap_or(name).trim_start_matches('*').to_string())
        })
        .filter(|n| !n.starts_with("common_"))
        .collect()
}

/// The tracefs filter for this inode (and device, if given and the event has a device field).
/// None if the event has no inode field (then everything is recorded and user space filters).
fn filter_expression(fields: &[String], inode: u64, kdev: u64) -> Option<String> {
    let pick = |exact: &str, part: &str| fields.iter().find(|f| *f == exact).or_else(|| fields.iter().find(|f| f.contains(part))).cloned();
    let ino_field = pick("i_ino", "ino")?;
    let mut filter = format!("{ino_field} == {inode}");
    if kdev != 0
        && let Some(dev_field) = pick("s_dev", "dev")
    {
        filter.push_str(&format!(" && {dev_field} == {kdev}"));
    }
    Some(filter)
}

/// One parsed `time_out_leases` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseLine {
    fl: String,
    dev: Option<u64>,
    ino: Option<u64>,
    flags: String,
    write: bool,
    break_time: u64,
    downgrade_time: u64,
    raw: String,
}

fn parse_line(line: &str) -> Option<LeaseLine> {
    let (_, rest) = line.split_once("time_out_leases:")?;
    let mut fl = None;
    let mut dev = None;
    let mut ino = None;
    let mut flags = None;
    let mut ty = None;
    let mut break_time = None;
    let mut downgrade_time = None;
    for token in rest.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else { continue };
        match key {
            "fl" => fl = Some(value.to_string()),
            "dev" => {
                let (major, minor) = value.split_once(':')?;
                let major = u64::from_str_radix(major.trim_start_matches("0x"), 16).ok()?;
                let minor = u64::from_str_radix(minor.trim_start_matches("0x"), 16).ok()?;
                dev = Some((major << 20) | minor);
            }
            "ino" => ino = Some(u64::from_str_radix(value.trim_start_matches("0x"), 16).ok()?),
            "fl_flags" => flags = Some(value.to_string()),
            "fl_type" => ty = Some(value),
            "fl_break_time" => break_time = Some(value.parse().ok()?),
            "fl_downgrade_time" => downgrade_time = Some(value.parse().ok()?),
            _ => {}
        }
    }
    let write = match ty? {
        "F_WRLCK" => true,
        "F_RDLCK" => false,
        _ => return None, // F_UNLCK: a lease being removed, nothing to report
    };
    Some(LeaseLine {
        fl: fl.unwrap_or_default(),
        dev,
        ino,
        flags: flags?,
        write,
        break_time: break_time?,
        downgrade_time: downgrade_time?,
        raw: line.trim().to_string(),
    })
}

/// The last traced state of the inode's lease(s), with the time left computed from `now`.
fn pick_lease(trace: &str, inode: u64, kdev: u64, now: u64, hz: u32) -> Option<TracedLease> {
    let lines: Vec<LeaseLine> = trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_line)
        .filter(|l| l.ino.is_none_or(|i| i == inode) && (kdev == 0 || l.dev.is_none_or(|d| d == kdev)))
        .collect();
    let last = lines.last()?;
    let mut distinct: Vec<&str> = lines.iter().map(|l| l.fl.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let has = |flag: &str| last.flags.split('|').any(|f| f == flag);
    let unlock_pending = has("FL_UNLOCK_PENDING");
    let downgrade_pending = has("FL_DOWNGRADE_PENDING");
    let deadline = if unlock_pending {
        Some(last.break_time)
    } else if downgrade_pending {
        Some(last.downgrade_time)
    } else {
        None
    };
    let remaining = deadline.map_or(Duration::ZERO, |d| jiffies_to_duration(d.wrapping_sub(now) as i64, hz));
    Some(TracedLease {
        original_write: last.write,
        unlock_pending,
        downgrade_pending,
        remaining,
        break_time: last.break_time,
        downgrade_time: last.downgrade_time,
        now_jiffies: now,
        now_mono_ns: 0,
        hz,
        leases_seen: distinct.len(),
        raw_line: last.raw.clone(),
    })
}

fn jiffies_to_duration(jiffies: i64, hz: u32) -> Duration {
    if jiffies <= 0 || hz == 0 {
        return Duration::ZERO;
    }
    let nanos = (jiffies as u128) * 1_000_000_000 / u128::from(hz);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn read_text(path: &Path) -> Result<String, SysError> {
    fs::read_to_string(path).map_err(|e| SysError::new(format!("read {}", path.display()), io_errno(&e)))
}

/// Writes a tracefs control file (no O_CREAT, no O_TRUNC: tracefs files exist and take a write).
fn write_text(path: &Path, text: &str) -> Result<(), SysError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| SysError::new(format!("write {text:?} to {}", path.display()), io_errno(&e)))
}

/// How this call reaches tracefs, and what to undo.
enum Mount {
    /// Mounted by someone else (found in /proc/self/mountinfo): left alone.
    Existing,
    /// A detached mount (fsopen + fsmount) reached through /proc/self/fd/N: closing the fd
    /// is the unmount.
    Detached(#[allow(dead_code)] OwnedFd),
    /// Mounted by us on a fresh temporary directory: unmounted and removed on drop.
    Temporary(PathBuf),
}

struct Tracefs {
    root: PathBuf,
    mount: Mount,
}

impl Tracefs {
    fn find_or_mount() -> Result<Option<Tracefs>, SysError> {
        if let Some(root) = existing_tracefs() {
            return Ok(Some(Tracefs { root, mount: Mount::Existing }));
        }
        match mount_detached() {
            Ok(fd) => {
                let root = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                return Ok(Some(Tracefs { root, mount: Mount::Detached(fd) }));
            }
            // No tracefs in this kernel.
            Err(Errno::ENODEV) => return Ok(None),
            Err(_) => {}
        }
        mount_temporary()
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if let Mount::Temporary(dir) = &self.mount {
            if let Ok(c) = CString::new(dir.as_os_str().as_bytes()) {
                // SAFETY: `c` is a NUL-terminated path that lives across the call.
                let mut ret = unsafe { libc::umount2(c.as_ptr(), 0) };
                if ret != 0 {
                    // Busy (someone else opened a file in it): detach it from the tree now; the
                    // kernel frees it when the last user is gone.
                    // SAFETY: as above.
                    ret = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
                if ret != 0 {
                    tracing::warn!("lease probe: cannot unmount tracefs at {}: {}", dir.display(), Errno::last());
                    return;
                }
            }
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!("lease probe: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// The first mount of the whole tracefs (root "/") listed in /proc/self/mountinfo, preferring
/// /sys/kernel/tracing.
fn existing_tracefs() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "tracefs" {
                return None;
            }
            let mut f = left.split_whitespace();
            let root = f.nth(3)?;
            let mount_point = f.next()?;
            (root == "/").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .filter(|p| p.join("instances").is_dir())
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/kernel/tracing"));
    found.into_iter().next()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(digits.iter().fold(0u8, |v, d| v.wrapping_mul(8).wrapping_add(d - b'0')));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A tracefs mount attached nowhere: fsopen("tracefs"), FSCONFIG_CMD_CREATE, fsmount.
/// tracefs has one super block; creating a context without options reuses it unchanged.
fn mount_detached() -> Result<OwnedFd, Errno> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: a NUL-terminated literal and an integer flag; on success a new fd that we own.
    let fs_fd = Errno::result(unsafe { libc::syscall(libc::SYS_fsopen, c"tracefs".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fresh descriptor nobody else owns.
    let fs_fd = unsafe { OwnedFd::from_raw_fd(fs_fd as RawFd) };
    // SAFETY: FSCONFIG_CMD_CREATE takes no key, value or aux argument (NULL, NULL, 0).
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: integer arguments; on success a new fd (the detached mount) that we own.
    let mnt = Errno::result(unsafe { libc::syscall(libc::SYS_fsmount, fs_fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    // SAFETY: fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// The fallback: `mount -t tracefs nodev /tmp/crust-tracefs-XXXXXX`, undone by `Tracefs::drop`.
fn mount_temporary() -> Result<Option<Tracefs>, SysError> {
    let dir = nix::unistd::mkdtemp("/tmp/crust-tracefs-XXXXXX").map_err(|e| SysError::new("mkdtemp for tracefs", e))?;
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| SysError::new("tracefs mount point", Errno::EINVAL))?;
    // SAFETY: NUL-terminated strings that live across the call; no data argument.
    let ret = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c.as_ptr(),
            c"tracefs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        let errno = Errno::last();
        let _ = fs::remove_dir(&dir);
        return match errno {
            Errno::ENODEV | Errno::EPERM | Errno::EACCES => Ok(None),
            e => Err(SysError::new(format!("mount tracefs on {}", dir.display()), e)),
        };
    }
    Ok(Some(Tracefs { root: dir.clone(), mount: Mount::Temporary(dir) }))
}

/// The cleanup guard: disables the event, removes the instance, then (dropping `tracefs`,
/// declared last so that it drops last) unmounts.
struct Session {
    instance: Option<PathBuf>,
    enabled: Option<PathBuf>,
    tracefs: Tracefs,
}

impl Session {
    fn create_instance(&mut self) -> Result<PathBuf, SysError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let instances = self.tracefs.root.join("instances");
        remove_stale_instances(&instances);
        for _ in 0..100 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = instances.join(format!("crust-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {
                    self.instance = Some(path.clone());
                    return Ok(path);
                }
                // Left over by an earlier process with the same pid that died mid-probe.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SysError::new(format!("mkdir {}", path.display()), io_errno(&e))),
            }
        }
        Err(SysError::new("create a tracefs instance", Errno::EEXIST))
    }
}

/// Removes the trace instances of crust processes that died mid-probe (killed: their guard
/// never ran), so that nothing of a killed crust stays in the kernel's tracing state longer
/// than until the next probe. An instance belongs to the crust whose pid its name carries.
fn remove_stale_instances(instances: &Path) {
    let Ok(entries) = fs::read_dir(instances) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("crust-").and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "crust");
        if !alive && pid != std::process::id() {
            let enable = entry.path().join("events/filelock/time_out_leases/enable");
            let _ = write_text(&enable, "0");
            match fs::remove_dir(entry.path()) {
                Ok(()) => tracing::info!("removed the trace instance {name} left by a crust that was killed"),
                Err(e) => tracing::warn!("cannot remove the trace instance {name} left by a killed crust: {e}"),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(enable) = self.enabled.take()
            && let Err(e) = write_text(&enable, "0")
        {
            tracing::warn!("lease probe: {e}");
        }
        if let Some(instance) = self.instance.take()
            && let Err(e) = fs::remove_dir(&instance)
        {
            tracing::warn!("lease probe: cannot remove trace instance {}: {e}", instance.display());
        }
    }
}

/// What /proc says about the breaker at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BreakerSample {
    state: char,
    cpu: usize,
    exec_start_ms: f64,
    switches: u64,
}

fn breaker_sample(pid: i32) -> Option<BreakerSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the last ')' (the command name may contain anything): field 3 is the state, field 39
    // the CPU the task last ran on.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let cpu = fields.get(39 - 3)?.parse().ok()?;
    let sched = fs::read_to_string(format!("/proc/{pid}/sched")).ok()?;
    let exec_start_ms = sched_field(&sched, "se.exec_start")?.parse().ok()?;
    let switches = sched_field(&sched, "nr_switches")?.parse().ok()?;
    Some(BreakerSample { state, cpu, exec_start_ms, switches })
}

/// A `name : value` line of /proc/PID/sched.
pub fn sched_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// "Now" on `cpu`'s run queue `clock_task`, in ms: this thread's `se.exec_start` right after a
/// `sched_yield()` on that CPU. The thread's CPU affinity is restored before returning.
pub fn sched_now_on_cpu(cpu: usize) -> Option<f64> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity, sched_yield};
    use nix::unistd::Pid;
    let me = Pid::from_raw(0);
    let saved = sched_getaffinity(me).ok()?;
    let mut only = CpuSet::new();
    only.set(cpu).ok()?;
    sched_setaffinity(me, &only).ok()?;
    let mut now = None;
    for _ in 0..3 {
        let _ = sched_yield();
        // SAFETY: sched_getcpu takes no arguments.
        let on = unsafe { libc::sched_getcpu() };
        let text = fs::read_to_string("/proc/thread-self/sched").ok();
        // SAFETY: as above.
        let still = unsafe { libc::sched_getcpu() };
        if on == cpu as i32 && still == cpu as i32 {
            now = text.as_deref().and_then(|t| sched_field(t, "se.exec_start")?.parse().ok());
            break;
        }
    }
    let _ = sched_setaffinity(me, &saved);
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: time_out_leases
ID: 1120
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:struct file_lease * fl;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long i_ino;\toffset:16;\tsize:8;\tsigned:0;
\tfield:dev_t s_dev;\toffset:24;\tsize:4;\tsigned:0;
\tfield:unsigned int flags;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned char type;\toffset:52;\tsize:1;\tsigned:0;
\tfield:unsigned long break_time;\toffset:56;\tsize:8;\tsigned:0;
\tfield:unsigned long downgrade_time;\toffset:64;\tsize:8;\tsigned:0;
";

    #[test]
    fn fields_and_filter() {
        let fields = event_fields(FORMAT);
        assert_eq!(fields, ["fl", "i_ino", "s_dev", "flags", "type", "break_time", "downgrade_time"]);
        assert_eq!(filter_expression(&fields, 1234, (254 << 20) | 1).unwrap(), "i_ino == 1234 && s_dev == 266338305");
        assert_eq!(filter_expression(&fields, 1234, 0).unwrap(), "i_ino == 1234");
        assert_eq!(filter_expression(&["x".to_string()], 1, 0), None);
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(254, 1)), (254 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(8, 0x12345)), (8 << 20) | 0x12345);
    }

    #[test]
    fn timer_list() {
        let t = concat!(
            "Timer List Version: v0.10\nnow at 5081476508967 nsecs\n\ncpu: 0\n",
            "  .last_jiffies   : 4296162530\njiffies: 4296162604\n"
        );
        let j = parse_timer_list(t).unwrap();
        assert_eq!((j.mono_ns, j.jiffies), (5081476508967, 4296162604));
    }

    #[test]
    fn trace_lines() {
        let trace = concat!(
            "# tracer: nop\n#\n",
            "           lease-1234    [001] ..... 100.000001: time_out_leases: fl=00000000abcdef01 ",
            "dev=0xfe:0x1 ino=0x4d2 fl_blocker=0000000000000000 fl_owner=00000000abcdef02 ",
            "fl_flags=FL_LEASE|FL_UNLOCK_PENDING fl_type=F_WRLCK fl_break_time=1000 fl_downgrade_time=0\n"
        );
        let kdev = (0xfe << 20) | 1;
        let l = pick_lease(trace, 1234, kdev, 500, 250).unwrap();
        assert!(l.original_write && l.unlock_pending && !l.downgrade_pending);
        assert_eq!(l.remaining, Duration::from_secs(2));
        assert_eq!(l.leases_seen, 1);
        assert!(pick_lease(trace, 1235, kdev, 500, 250).is_none());
        assert!(pick_lease(trace, 1234, kdev + 1, 500, 250).is_none());
        // Past the deadline: zero.
        assert_eq!(pick_lease(trace, 1234, 0, 2000, 250).unwrap().remaining, Duration::ZERO);
        let down = trace
            .replace("FL_UNLOCK_PENDING", "FL_DOWNGRADE_PENDING")
            .replace("fl_break_time=1000 fl_downgrade_time=0", "fl_break_time=0 fl_downgrade_time=750");
        let l = pick_lease(&down, 1234, kdev, 500, 250).unwrap();
        assert!(l.downgrade_pending && !l.unlock_pending);
        assert_eq!(l.remaining, Duration::from_secs(1));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
