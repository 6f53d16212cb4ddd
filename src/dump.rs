//! The dump pipeline: check, freeze the whole tree, collect every kind of every process, write
//! the image, then kill or resume.
//!
//! A dump that fails at any step leaves the processes exactly as they were: crust's scratch
//! mappings are removed, blocked masks and registers are put back, and every process is let go.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::image::proto::{Core, Inventory, ProcessEntry};
use crate::image::{self, ImageDir};
use crate::kinds::credentials::Credentials;
use crate::kinds::files::{Files, OpenFileTable};
use crate::kinds::memory::{self, Memory};
use crate::kinds::{DumpCtx, Kind};
use crate::progress::Progress;
use crate::sys::pidfd::pidfd_open;
use crate::sys::ptrace;
use crate::sys::remote::{CODE_PAGE_LEN, CODE_PAGE_NAME, RemoteTask, Scratch};

#[derive(Default)]
pub struct DumpOptions {
    pub leave_running: bool,
    /// `--leave-stopped`: after the dump the tree is left stopped by SIGSTOP instead of killed.
    pub leave_stopped: bool,
    /// `--timeout`: the dump fails, leaving every process as it was, if the tree is not frozen
    /// by then (None: as long as it takes).
    pub freeze_timeout: Option<std::time::Duration>,
    /// Objects shared with processes outside the tree that the user will reconnect at restore
    /// (`--external pipe:[ID]`).
    pub externals: Vec<String>,
    /// `--shell-job`: the tree runs on a shell's terminal; its terminal fds are recorded and
    /// reconnected to crust's terminal at restore.
    pub shell_job: bool,
    /// `--external-locks`: go on although processes outside the tree hold or wait for locks
    /// on files the tree has locked.
    pub external_locks: bool,
    /// What the reference tool's permission options allow (recorded; see [`Permits`]).
    pub permits: crate::permits::Permits,
}

/// How the dumped processes end up once their image is complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Resume,
    Stop,
    Kill,
}

impl DumpOptions {
    fn end(&self) -> End {
        match (self.leave_running, self.leave_stopped) {
            (true, _) => End::Resume,
            (false, true) => End::Stop,
            (false, false) => End::Kill,
        }
    }
}

/// Timings of one dump, for people and for the benchmark.
#[derive(Debug, Default, Clone)]
pub struct DumpReport {
    pub frozen: std::time::Duration,
    pub total: std::time::Duration,
    pub pages_bytes: u64,
}

const SCRATCH_LEN: u64 = 64 * 1024;
/// The signature at the end of a scratch area: a fixed text and the pid of the crust that
/// made it.
const SCRATCH_MARK_LEN: u64 = 32;
const SCRATCH_MARK_TEXT: &[u8; 24] = b"crust dump scratch area\0";

fn scratch_mark(crust_pid: u32) -> Vec<u8> {
    let mut mark = SCRATCH_MARK_TEXT.to_vec();
    mark.extend_from_slice(&crust_pid.to_le_bytes());
    mark.resize(SCRATCH_MARK_LEN as usize, 0);
    mark
}

/// Removes the scratch areas (and code pages) that crusts killed during earlier dumps left in
/// the process (signed, their crust gone): what a killed crust leaves lasts until the next
/// dump. Best effort: an area that cannot be read or removed stays.
fn remove_left_scratch_areas(remote: &mut RemoteTask) {
    let pid = remote.pid();
    let Ok(maps) = memory::shared_maps(pid.as_raw()) else { return };
    for map in maps.iter() {
        let (start, end) = map.address;
        let left =
            left_scratch_owner(remote, map).map(|o| (o, "scratch area")).or_else(|| left_code_page_owner(map).map(|o| (o, "code page")));
        let Some((owner, what)) = left else { continue };
        let owner_alive = std::fs::read_to_string(format!("/proc/{owner}/comm")).is_ok_and(|c| c.trim() == "crust");
        if owner_alive {
            continue; // a crust of that pid runs: maybe the one that left it (its dump is over)
        }
        match remote.syscall("munmap(left scratch)", libc::SYS_munmap, &[start, end - start]) {
            Ok(_) => tracing::info!(%pid, "removed the {what} {start:#x} a killed crust left"),
            Err(e) => tracing::warn!(%pid, "could not remove the {what} {start:#x} a killed crust left: {e}"),
        }
    }
}

/// The crust that made `map`, if it is a scratch area: shared anonymous memory of its size,
/// signed at its end.
fn left_scratch_owner(remote: &RemoteTask, map: &procfs::process::MemoryMap) -> Option<u32> {
    let (start, end) = map.address;
    let anonymous_shared = map.perms.contains(procfs::process::MMPermissions::SHARED)
        && matches!(&map.pathname, procfs::process::MMapPath::Path(p) if p.to_string_lossy().starts_with("/dev/zero"));
    if end - start != SCRATCH_LEN || !anonymous_shared {
        return None;
    }
    let mut mark = vec![0u8; SCRATCH_MARK_LEN as usize];
    if remote.read_memory(end - SCRATCH_MARK_LEN, &mut mark).is_err() || !mark.starts_with(SCRATCH_MARK_TEXT) {
        return None;
    }
    Some(u32::from_le_bytes(mark[24..28].try_into().unwrap_or_default()))
}

/// The crust that made `map`, if it is a code page (sealed, it carries no signature: its
/// memfd's name ends with that crust's pid).
fn left_code_page_owner(map: &procfs::process::MemoryMap) -> Option<u32> {
    let procfs::process::MMapPath::Path(p) = &map.pathname else { return None };
    let name = p.to_str()?.strip_prefix("/memfd:")?.strip_prefix(CODE_PAGE_NAME)?.strip_suffix(" (deleted)")?;
    let shared = map.perms.contains(procfs::process::MMPermissions::SHARED);
    (shared && map.address.1 - map.address.0 == CODE_PAGE_LEN).then(|| name.parse().ok()).flatten()
}

/// A process of the tree found while freezing.
struct Member {
    pid: Pid,
    ppid: Pid,
    /// Some(wait status) for a zombie.
    zombie: Option<i32>,
    /// The signal its parent gets when it ends (/proc/PID/stat exit_signal; 0: none).
    exit_signal: i32,
    /// A zombie's (process group, session).
    zombie_groups: (u32, u32),
    comm: String,
}

pub fn dump(root: i32, dir: &Path, opts: &DumpOptions) -> Result<DumpReport> {
    crate::interrupt::install()?;
    let root = Pid::from_raw(root);
    crate::kinds::leases::break_time::repair_left_behind();
    crate::created_files::repair_left_behind();
    crate::network_lock::repair_left_behind();
    precheck(root)?;
    // The areas' flags are read without smaps's page walk where crust can (kinds/vm_flags.rs):
    // made ready now, while nothing is frozen.
    crate::timing::step("dump: prepare reading areas", crate::kinds::vm_flags::prepare);
    let image = ImageDir::create(dir)?;
    // With -R, pages are copied while the tree runs on (kinds/uffd_dump.rs); a program that
    // discards or moves memory not saved yet makes the attempt fail, and the dump starts
    // again: twice, then with the pages copied while frozen.
    const LIVE_ATTEMPTS: usize = 2;
    let mut attempt = 0;
    loop {
        crate::kinds::uffd_dump::set_live(opts.leave_running && attempt < LIVE_ATTEMPTS);
        let result = dump_into(root, &image, opts);
        crate::kinds::uffd_dump::set_live(false);
        match result {
            Err(e) if crate::kinds::uffd_dump::is_memory_moved(&e) && attempt < LIVE_ATTEMPTS => {
                attempt += 1;
                let next = if attempt < LIVE_ATTEMPTS { "again" } else { "again, copying the pages while frozen" };
                info!(%root, "{e:#}; dumping {next}");
                image.discard_written();
            }
            result => return result.inspect_err(|e| image.discard_failed_dump(&format!("{e:#}"))),
        }
    }
}

fn dump_into(root: Pid, image: &ImageDir, opts: &DumpOptions) -> Result<DumpReport> {
    let started = Instant::now();
    let progress = Progress::new("dump");
    let frozen_at = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;

    progress.step(format!("checking the tree of pid {root}"));
    crate::timing::step("dump: refuse before freezing", || refuse_before_freezing(root, image, opts))?;
    image.begin()?;
    crate::timing::step("dump: protect ahead", || crate::kinds::uffd_dump::protect_ahead(root.as_raw()));
    crate::fault::point("dump-protected-ahead").map_err(|e| e.context(format!("dumping the tree of pid {root} (it was left running)")))?;
    progress.step(format!("freezing the tree of pid {root}"));
    // Timed waits and lease breakers are sampled while they still wait; remaining times
    // count from here.
    crate::timing::step("dump: timed waits before freezing", || crate::kinds::syscall_timeouts::before_freeze(root.as_raw()));
    crate::timing::step("dump: leases before freezing", || crate::kinds::leases::before_freeze(root.as_raw()));
    crate::fault::point("dump-sampled").map_err(|e| e.context(format!("dumping the tree of pid {root} (it was left running)")))?;
    let freeze_start = Instant::now();
    let mut members = Vec::new();
    let mut frozen: Vec<Frozen> = Vec::new();
    let deadline = opts.freeze_timeout.map(|t| freeze_start + t);
    let froze = crate::timing::step("dump: freeze tree", || freeze_tree(root, &mut members, &mut frozen, deadline))
        .and_then(|()| crate::timing::step("dump: map scratch areas", || map_scratch_areas(&mut frozen)))
        .and_then(|()| crate::fault::point("dump-frozen"));
    let collected = froze.and_then(|_| collect_tree(&mut frozen, &members, image, &progress, opts));
    let frozen_time = freeze_start.elapsed();
    let foreground_pgid = foreground_pgid(root, &members);
    // A failed dump changes nothing: the tree goes on exactly as it was.
    let Collected { entries, data_files: shared_data, pages_bytes, mut kinds, mut links } = match collected {
        Ok(c) => c,
        Err(e) => {
            crate::kinds::uffd_dump::abandon();
            resume_after_failure(&mut frozen);
            return Err(e.context(format!("dumping the tree of pid {root} (it was left running)")));
        }
    };
    if opts.leave_running {
        let released = release_all(&mut frozen, End::Resume);
        if released.is_err() {
            crate::kinds::uffd_dump::abandon();
        }
        released?;
        progress.step("copying the pages while the tree runs".to_string());
        crate::kinds::uffd_dump::copy_deferred(image)
            .map_err(|e| e.context(format!("dumping the tree of pid {root} (it runs on, untouched)")))?;
    }
    // Without -R the tree stays frozen until the image is complete: a dump that fails or is
    // interrupted from here on still leaves it running. With -R it already runs on.
    progress.step("checksumming page data".to_string());
    let inventory =
        crate::timing::step("dump: finish image", || finish_image(image, root, entries, &shared_data, frozen_at, foreground_pgid, opts));
    if inventory.is_ok() {
        // The image needs them until its restore, which removes them (as the reference tool).
        links.keep_all();
    }
    let inventory = match (inventory, opts.leave_running) {
        (Ok(inventory), false) => {
            crate::timing::step("dump: release", || release_all(&mut frozen, opts.end()))?;
            info!(%root, end = ?opts.end(), "released after the dump");
            if opts.end() == End::Kill {
                reap_killed(&frozen, crate::kinds::fd::after_kill_waits(&mut kinds));
                crate::kinds::fd::after_kill(&mut kinds)?;
            }
            inventory
        }
        (Ok(inventory), true) => inventory,
        (Err(e), false) => {
            resume_after_failure(&mut frozen);
            return Err(e.context(format!("dumping the tree of pid {root} (it was left running)")));
        }
        (Err(e), true) => return Err(e.context(format!("dumping the tree of pid {root} (it runs on, untouched)"))),
    };
    progress.finish(format!(
        "dumped {} process(es) of pid {root}: {} MiB of pages, frozen {:.1} ms, total {:.1} ms",
        inventory.processes.len(),
        pages_bytes >> 20,
        frozen_time.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    ));
    crate::timing::report("dump");
    Ok(DumpReport { frozen: frozen_time, total: started.elapsed(), pages_bytes })
}

/// Releases every frozen process, bottom up: resumed as it was, stopped, or killed. Tries them
/// all; the first error is returned.
fn release_all(frozen: &mut [Frozen], end: End) -> Result<()> {
    let mut released = Ok(());
    for f in frozen.iter_mut().rev() {
        let r = f.release(end);
        if released.is_ok() {
            released = r;
        }
    }
    released
}

/// Collects the exits of the killed tree (crust, as their tracer, must, before their parents
/// can reap them): now if `wait`, else in a thread of its own, so that the dump does not wait
/// while the kernel frees the processes' memory (tens of milliseconds per GiB). When crust
/// exits first, the kernel lets go of them itself.
fn reap_killed(frozen: &[Frozen], wait: bool) {
    let tids: Vec<Pid> = frozen.iter().rev().flat_map(|f| f.threads.iter().map(|t| t.pid()).chain([f.pid])).collect();
    let reap = move || {
        for tid in tids {
            let _ = nix::sys::wait::waitpid(tid, Some(nix::sys::wait::WaitPidFlag::__WALL));
        }
    };
    if wait {
        reap();
    } else if let Err(e) = std::thread::Builder::new().name("crust-reaper".into()).spawn(reap) {
        warn!("could not start a thread to collect the exits of the killed tree: {e}");
    }
}

/// After a failure: every process goes on as it was. A process that cannot be put back is
/// reported (the dump's own error is the one returned).
fn resume_after_failure(frozen: &mut [Frozen]) {
    if let Err(e) = release_all(frozen, End::Resume) {
        tracing::error!("after the failed dump: {e:#}");
    }
}

/// Checksums the data files and writes the inventory, last: an image without one is
/// incomplete.
fn finish_image(
    image: &ImageDir,
    root: Pid,
    mut entries: Vec<ProcessEntry>,
    shared_data: &[String],
    frozen_at: nix::sys::time::TimeSpec,
    foreground_pgid: u32,
    opts: &DumpOptions,
) -> Result<Inventory> {
    // The records are synced and in place before anything is hashed or sealed.
    image.finish_deferred()?;
    for entry in entries.iter_mut().filter(|e| !e.zombie) {
        crate::interrupt::check()?;
        entry.data_files = vec![image.checksum_data_file(&image::pages_name(entry.pid))?];
    }
    let data_files = shared_data.iter().map(|name| image.checksum_data_file(name)).collect::<Result<Vec<_>, _>>()?;
    let mut inventory = Inventory {
        format_major: image::FORMAT_MAJOR as u32,
        format_minor: image::FORMAT_MINOR as u32,
        crust_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: crate::sys::kernel_release(),
        vdso_hash: crate::restore::own_vdso_hash()?,
        root_pid: root.as_raw() as u32,
        processes: entries,
        frozen_at_realtime_ns: frozen_at.tv_sec() * 1_000_000_000 + frozen_at.tv_nsec(),
        hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        data_files,
        // -j allows a terminal rather than demands one (as the reference tool): only a job in
        // the foreground of its terminal, or one holding that terminal (kinds/fd/tty), needs
        // crust's terminal at restore. A tree of its own session without one restores anywhere.
        shell_job: opts.shell_job && foreground_pgid != 0,
        foreground_pgid,
        ..Default::default()
    };
    crate::interrupt::check()?;
    image::seal::seal(image, &mut inventory)?;
    crate::fault::point("dump-checksums")?;
    crate::interrupt::check()?;
    image.write_record(image::INVENTORY, &inventory)?;
    image.sync_directory()?;
    Ok(inventory)
}

/// The tree's process group in the foreground of the root's terminal, if any: tpgid of
/// /proc/PID/stat, read while the tree is frozen.
fn foreground_pgid(root: Pid, members: &[Member]) -> u32 {
    let field = |pid: Pid, n: usize| -> Option<i64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')').next()?.split_whitespace().nth(n)?.parse().ok()
    };
    // After the comm: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5).
    let Some(tpgid) = field(root, 5).filter(|t| *t > 0) else { return 0 };
    let in_tree = members.iter().any(|m| field(m.pid, 2) == Some(tpgid));
    if in_tree { tpgid as u32 } else { 0 }
}

/// Every child of the process: /proc lists children per thread (a child forked by a thread
/// other than the leader is that thread's), so every thread's list is read.
fn children_of(pid: Pid) -> Vec<Pid> {
    let mut children: Vec<Pid> = task_ids(pid)
        .into_iter()
        .flat_map(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok().map(Pid::from_raw))
                .collect::<Vec<_>>()
        })
        .collect();
    children.sort();
    children.dedup();
    children
}

/// Freezes `root` and all its descendants, top down. A frozen process cannot fork any more, so
/// once every frozen process's children are frozen too, the tree is complete and consistent.
/// Each generation (the children of the processes frozen last) is seized and interrupted all at
/// once, before the first stop is waited for: their stops overlap.
fn freeze_tree(root: Pid, members: &mut Vec<Member>, frozen: &mut Vec<Frozen>, deadline: Option<Instant>) -> Result<()> {
    let mut queue = std::collections::VecDeque::from([(root, Pid::from_raw(0))]);
    while !queue.is_empty() {
        let generation: Vec<(Pid, Pid)> = queue.drain(..).collect();
        let mut candidates = Vec::new();
        for (pid, ppid) in generation {
            if let Some(candidate) = examine(root, pid, ppid, members, &mut queue)? {
                candidates.push(candidate);
            }
        }
        let pids: Vec<Pid> = candidates.iter().map(|c| c.pid).collect();
        let mut interrupted = std::collections::HashMap::new();
        let outcomes = crate::timing::step("dump: seize", || {
            ptrace::seize_and_interrupt_each_until(&pids, deadline, |pid| {
                interrupted.insert(pid, crate::kinds::syscall_timeouts::before_interrupt());
            })
        });
        let mut outcomes: Vec<Option<Result<(), crate::sys::SysError>>> = outcomes.into_iter().map(Some).collect();
        for k in 0..candidates.len() {
            let c = &candidates[k];
            let outcome = outcomes[k].take().unwrap_or(Ok(()));
            let taken = match outcome {
                Ok(()) => {
                    let at = interrupted.get(&c.pid).copied().unwrap_or_else(crate::kinds::syscall_timeouts::before_interrupt);
                    take_process(c, at, deadline)
                }
                // A child caught exiting cannot be traced (EPERM): it is about to be a zombie
                // (its parent is frozen and cannot reap it) or gone (if its parent ignores
                // SIGCHLD): looked at again.
                Err(_) if c.pid != root && wait_exit_done(c.pid) => {
                    queue.push_back((c.pid, c.ppid));
                    continue;
                }
                Err(e) => Err(seize_error(c.pid, c.pid, e)),
            };
            match taken {
                Ok(f) => frozen.push(f),
                Err(e) => {
                    // Those of this generation stopped after it have had nothing changed.
                    for (c, o) in candidates[k + 1..].iter().zip(&outcomes[k + 1..]) {
                        if matches!(o, Some(Ok(()))) {
                            let _ = ptrace::detach(c.pid);
                        }
                    }
                    return Err(e);
                }
            }
            members.push(Member {
                pid: c.pid,
                ppid: c.ppid,
                zombie: None,
                comm: String::new(),
                exit_signal: c.exit_signal,
                zombie_groups: (0, 0),
            });
            // Children are listed only now that the parent is frozen: none can appear later.
            for child in children_of(c.pid) {
                queue.push_back((child, c.pid));
            }
        }
    }
    Ok(())
}

/// A live process about to be seized.
struct Candidate {
    pid: Pid,
    ppid: Pid,
    job_stop: Option<i32>,
    exit_signal: i32,
}

/// Looks at `pid` before the freeze: a zombie becomes a member at once, a process gone is
/// skipped, one refused fails the dump, one caught exiting is looked at again (`queue`);
/// the others are to be seized.
fn examine(
    root: Pid,
    pid: Pid,
    ppid: Pid,
    members: &mut Vec<Member>,
    queue: &mut std::collections::VecDeque<(Pid, Pid)>,
) -> Result<Option<Candidate>> {
    let stat = procfs::process::Process::new(pid.as_raw()).and_then(|p| p.stat());
    if let Ok(stat) = &stat
        && stat.state == 'Z'
    {
        // exit_code holds the wait status the parent will reap.
        let exit_signal = stat.exit_signal.unwrap_or(libc::SIGCHLD);
        let zombie_groups = (stat.pgrp as u32, stat.session as u32);
        members.push(Member { pid, ppid, zombie: Some(stat.exit_code.unwrap_or(0)), comm: stat.comm.clone(), exit_signal, zombie_groups });
        return Ok(None);
    }
    crate::interrupt::check()?;
    if pid != root {
        if stat.is_err() {
            return Ok(None); // exited and reaped by the kernel (its parent ignores SIGCHLD)
        }
        if let Err(e) = precheck(pid) {
            if wait_exit_done(pid) {
                queue.push_back((pid, ppid)); // a zombie now, or gone
                return Ok(None);
            }
            return Err(e);
        }
    }
    // A job-control stop shows as state T only until the seize; its signal is the exit code
    // /proc reports for a stopped task.
    let job_stop = stat.as_ref().ok().filter(|s| s.state == 'T').map(|s| s.exit_code.unwrap_or(libc::SIGSTOP));
    let exit_signal = stat.as_ref().ok().and_then(|s| s.exit_signal).unwrap_or(libc::SIGCHLD);
    Ok(Some(Candidate { pid, ppid, job_stop, exit_signal }))
}

/// Takes over a process just seized and stopped (interrupted at `interrupted`); on an error it
/// is let go.
fn take_process(c: &Candidate, interrupted: std::time::Duration, deadline: Option<Instant>) -> Result<Frozen> {
    let pid = c.pid;
    crate::kinds::syscall_timeouts::frozen(pid.as_raw(), interrupted);
    if let Err(e) = crate::kinds::seccomp::suspend_while_traced(pid.as_raw(), pid.as_raw(), false) {
        let _ = ptrace::detach(pid);
        return Err(e.context(format!("freezing pid {pid}")));
    }
    match crate::timing::step("dump: take", || Frozen::take(pid, deadline)) {
        Ok(mut f) => {
            f.job_stop = c.job_stop;
            Ok(f)
        }
        Err(e) => {
            let _ = ptrace::detach(pid);
            Err(e)
        }
    }
}

/// Collects every kind of every frozen process and writes the records. Returns the inventory
/// entries (data files filled in later) and the number of page bytes saved.
/// The processes sharing their parent's fd table (`false`) or filesystem context (`true`),
/// as (pid, which). A table shared otherwise (with a process outside the tree, or with one
/// that is neither its parent nor shares the parent's) is refused: restore can only make
/// such sharing by forking with CLONE_FILES or CLONE_FS.
fn shared_tables(members: &[Member]) -> Result<std::collections::BTreeSet<(i32, bool)>> {
    use crate::sys::pidfd::same_table;
    let live: Vec<&Member> = members.iter().filter(|m| m.zombie.is_none()).collect();
    let parent = |m: &Member| live.iter().find(|p| p.pid == m.ppid).map(|p| p.pid.as_raw());
    let mut shared = std::collections::BTreeSet::new();
    for fs in [false, true] {
        let what = if fs { "filesystem context (cwd, root, umask: CLONE_FS)" } else { "fd table (CLONE_FILES)" };
        for m in &live {
            let pid = m.pid.as_raw();
            match parent(m) {
                Some(pp) => {
                    if same_table(pid, pp, fs)? {
                        shared.insert((pid, fs));
                    }
                }
                None if m.ppid.as_raw() > 0 => {
                    // The root: its parent is outside the tree.
                    if same_table(pid, m.ppid.as_raw(), fs).unwrap_or(false) {
                        bail!("pid {pid} shares its {what} with its parent {}, outside the dumped tree", m.ppid);
                    }
                }
                None => {}
            }
        }
        // Where each process's shared table comes from: the topmost process of its chain.
        let top = |mut pid: i32| {
            while shared.contains(&(pid, fs)) {
                match live.iter().find(|m| m.pid.as_raw() == pid).and_then(|m| parent(m)) {
                    Some(pp) => pid = pp,
                    None => break,
                }
            }
            pid
        };
        for class in table_classes(&live, fs)? {
            let Some((&first, rest)) = class.split_first() else { continue };
            if let Some(&other) = rest.iter().find(|&&b| top(b) != top(first)) {
                let (pa, pb) = (first.min(other), first.max(other));
                bail!(
                    "pid {pa} shares its {what} with pid {pb}, which is neither its parent nor shares its parent's: \
                     crust can only restore a table shared from parent to child"
                );
            }
        }
    }
    Ok(shared)
}

/// The live processes grouped by the fd table (`fs` false) or filesystem context they use.
/// The kernel orders tables (by obfuscated address), so each process is placed by a binary
/// search among one member of each group (n log n kcmp calls); where it gives no order, each
/// is compared with one member of every group.
fn table_classes(live: &[&Member], fs: bool) -> Result<Vec<Vec<i32>>> {
    use crate::sys::pidfd::table_order;
    use std::cmp::Ordering;
    let pids: Vec<i32> = live.iter().map(|m| m.pid.as_raw()).collect();
    let mut classes: Vec<Vec<i32>> = Vec::new();
    // Indices into `classes`, in the kernel's order of their tables.
    let mut sorted: Vec<usize> = Vec::new();
    'next: for &pid in &pids {
        let (mut lo, mut hi) = (0, sorted.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match table_order(pid, classes[sorted[mid]][0], fs)? {
                Some(Ordering::Equal) => {
                    classes[sorted[mid]].push(pid);
                    continue 'next;
                }
                Some(Ordering::Less) => hi = mid,
                Some(Ordering::Greater) => lo = mid + 1,
                None => return table_classes_unordered(&pids, fs),
            }
        }
        classes.push(vec![pid]);
        sorted.insert(lo, classes.len() - 1);
    }
    Ok(classes)
}

/// [`table_classes`] where the kernel gives no order: each process is compared with one member
/// of every group found so far.
fn table_classes_unordered(pids: &[i32], fs: bool) -> Result<Vec<Vec<i32>>> {
    let mut classes: Vec<Vec<i32>> = Vec::new();
    'next: for &pid in pids {
        for c in classes.iter_mut() {
            if crate::sys::pidfd::same_table(pid, c[0], fs)? {
                c.push(pid);
                continue 'next;
            }
        }
        classes.push(vec![pid]);
    }
    Ok(classes)
}

/// Every thread id and every process group of the tree (a zombie's group too).
fn tasks_and_groups(members: &[Member]) -> Result<(std::collections::BTreeSet<i32>, std::collections::BTreeSet<i32>)> {
    let mut tasks = std::collections::BTreeSet::new();
    let mut groups = std::collections::BTreeSet::new();
    for m in members {
        let pid = m.pid.as_raw();
        tasks.insert(pid);
        if m.zombie.is_some() {
            groups.insert(m.zombie_groups.0 as i32);
            continue;
        }
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("pid {pid}: listing its threads"))? {
            if let Some(tid) = t?.file_name().to_str().and_then(|n| n.parse().ok()) {
                tasks.insert(tid);
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("pid {pid}: stat"))?;
        // After "(comm)": state, ppid, pgrp.
        let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)).and_then(|g| g.parse().ok());
        groups.insert(pgrp.with_context(|| format!("pid {pid}: no process group in its stat"))?);
    }
    Ok((tasks, groups))
}

fn collect_tree(frozen: &mut [Frozen], members: &[Member], image: &ImageDir, progress: &Progress, opts: &DumpOptions) -> Result<Collected> {
    let mut open_files = OpenFileTable::default();
    open_files.externals = opts.externals.clone();
    open_files.shell_job = opts.shell_job;
    open_files.permits = opts.permits.clone();
    open_files.tree_pids = members.iter().map(|m| m.pid.as_raw()).collect();
    open_files.state.get::<crate::kinds::ghost::GhostTable>().configure(opts.permits.ghost_limit, opts.permits.link_remap);
    let parent_of = |pid: Pid| {
        members.iter().find(|m| m.pid == pid).map(|m| m.ppid).filter(|ppid| members.iter().any(|m| m.pid == *ppid && m.zombie.is_none()))
    };
    // Asked first: its brk(0) takes the mmap lock for writing, which would wait for a read of
    // smaps to end.
    let mut leaders: Vec<&mut RemoteTask> = frozen.iter_mut().map(|f| &mut f.remote).collect();
    let asked = crate::timing::step("dump: asked of all", || crate::kinds::asked::ask_all(&mut leaders))?;
    // `dump -R`: every process is write-protected from now on, by threads of crust while the
    // rest is collected (kinds/uffd_dump.rs). Before smaps is read: registering takes the
    // mmap lock for writing.
    for f in frozen.iter_mut() {
        crate::timing::step("dump: arm early", || crate::kinds::uffd_dump::arm_early(&mut f.remote))?;
    }
    // Every process's smaps is read ahead on a worker thread while the files and the
    // dispositions are collected (kinds/smaps_ahead.rs): nothing of them waits for the mmap lock.
    let pids: Vec<i32> = frozen.iter().map(|f| f.pid.as_raw()).collect();
    open_files.state.get::<crate::kinds::smaps_ahead::SmapsAhead>().start(&pids);
    // Files first, for every process: most refusals come from them, and they come before any
    // memory is written.
    let mut files = Vec::new();
    for f in frozen.iter_mut() {
        crate::interrupt::check()?;
        files.push(collect_files(f, image, progress, &mut open_files, parent_of(f.pid))?);
    }
    open_files.check_tree(image)?;
    let (tasks, groups) = tasks_and_groups(members)?;
    open_files.check_signal_owners(&tasks, &groups)?;
    let tree: Vec<i32> = members.iter().map(|m| m.pid.as_raw()).collect();
    let outsiders = crate::timing::step("dump: locks outside the tree", || {
        crate::kinds::locks::outsiders(open_files.state.get::<crate::kinds::locks::LockedFiles>(), &tree)
    })?;
    if !outsiders.is_empty() && !opts.external_locks {
        bail!(
            "files locked by the dumped processes are also locked by processes outside them ({}); \
             restoring would not bring those back: dump with --external-locks to go on anyway",
            outsiders.join("; ")
        );
    }
    // Every process reads its dispositions at once: they cannot change while it is frozen.
    let mut leaders: Vec<&mut RemoteTask> = frozen.iter_mut().map(|f| &mut f.remote).collect();
    let actions = crate::timing::step("dump: dispositions of all", || crate::kinds::signals::dispositions_of_all(&mut leaders))?;
    let mut pages_bytes = 0;
    for (((f, files), actions), asked) in frozen.iter_mut().zip(files).zip(actions).zip(asked) {
        crate::interrupt::check()?;
        let parent = parent_of(f.pid);
        pages_bytes += collect(f, files, actions, asked, image, progress, &mut open_files, parent)?;
    }
    let sysv_data = open_files.state.get::<crate::kinds::sysv_shm::SysvSegments>().data_files();
    // Deleted files, recorded once each; the names --link-remap made are removed (when
    // dropped) unless the image is completed.
    let (ghosts, links) = open_files.state.get::<crate::kinds::ghost::GhostTable>().finish();
    let kinds = std::mem::take(&mut open_files.state);
    let mut open_files = open_files.into_record();
    open_files.ghosts = ghosts;
    image.write_record_deferred(image::OPEN_FILES, &open_files)?;
    let shared = shared_tables(members)?;
    let entries = members
        .iter()
        .map(|m| ProcessEntry {
            files_shared_with_parent: shared.contains(&(m.pid.as_raw(), false)),
            fs_shared_with_parent: shared.contains(&(m.pid.as_raw(), true)),
            pid: m.pid.as_raw() as u32,
            ppid: m.ppid.as_raw() as u32,
            data_files: Vec::new(),
            zombie: m.zombie.is_some(),
            exit_status: m.zombie.unwrap_or(0),
            comm: m.comm.clone(),
            exit_signal: if m.exit_signal == 0 { -1 } else { m.exit_signal },
            pgid: m.zombie_groups.0,
            sid: m.zombie_groups.1,
        })
        .collect();
    let mut data_files = crate::kinds::files::data_files(&open_files);
    data_files.extend(sysv_data);
    crate::fault::point("dump-collected")?;
    Ok(Collected { entries, data_files, pages_bytes, kinds, links })
}

/// What collecting the tree gives the rest of the dump.
struct Collected {
    /// The inventory entries (data files filled in later).
    entries: Vec<ProcessEntry>,
    /// Data files that belong to no single process.
    data_files: Vec<String>,
    pages_bytes: u64,
    /// What the fd kinds kept (their copies of files they act on after the kill).
    kinds: crate::kinds::fd::KindState,
    /// Names `--link-remap` linked deleted files to: kept once the image is complete.
    links: crate::created_files::CreatedFiles,
}

/// A failed PTRACE_SEIZE of thread `tid` of `pid`, with why when crust can tell.
/// Whether `pid` was exiting (PF_EXITING) and is now done with it (a zombie, or gone), waiting
/// for that at most a second. False for a process that is not exiting.
fn wait_exit_done(pid: Pid) -> bool {
    const PF_EXITING: u64 = 0x4;
    let stat = || procfs::process::Process::new(pid.as_raw()).and_then(|p| p.stat());
    match stat() {
        Ok(s) if s.flags as u64 & PF_EXITING == 0 && s.state != 'Z' && s.state != 'X' => return false,
        Err(_) => return true,
        Ok(_) => {}
    }
    let until = Instant::now() + std::time::Duration::from_secs(1);
    while Instant::now() < until {
        match stat() {
            Ok(s) if s.state == 'Z' => return true,
            Err(_) => return true,
            _ => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    false
}

fn seize_error(pid: Pid, tid: Pid, e: crate::sys::SysError) -> anyhow::Error {
    let what = if tid == pid { format!("freezing pid {pid}") } else { format!("freezing thread {tid} of pid {pid}") };
    match e {
        crate::sys::SysError::NotStopped { .. } => {
            let stat = procfs::process::Process::new(tid.as_raw()).and_then(|p| p.stat());
            let state = stat.map(|s| format!("state {}", s.state)).unwrap_or_else(|_| "gone".into());
            let wchan = std::fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default();
            anyhow::anyhow!(
                "{what}: it did not stop within the --timeout ({state}, waiting in {wchan:?}); every process was left as it was"
            )
        }
        e if e.errno() == Some(nix::errno::Errno::EPERM) => {
            anyhow::anyhow!("{what}: {e}: {}", ptrace::why_seize_denied(tid.as_raw()))
        }
        e => anyhow::Error::from(e).context(what),
    }
}

/// Every refusal that can be made from outside is made before anything is frozen: the
/// processes' own state and what each kind of fd can tell from the fd alone. The tree is read
/// unfrozen (a process forked meanwhile is checked when frozen, as is everything again).
fn refuse_before_freezing(root: Pid, image: &ImageDir, opts: &DumpOptions) -> Result<()> {
    let mut queue = std::collections::VecDeque::from([root]);
    let mut seen = std::collections::BTreeSet::new();
    let mut fds = Vec::new();
    while let Some(pid) = queue.pop_front() {
        if !seen.insert(pid) || seen.len() > 100_000 {
            continue;
        }
        let zombie = procfs::process::Process::new(pid.as_raw()).and_then(|p| p.stat()).is_ok_and(|s| s.state == 'Z');
        if zombie {
            continue;
        }
        crate::interrupt::check()?;
        let checked = (|| {
            if pid != root {
                precheck(pid)?;
            }
            crate::kinds::files::refuse_early(pid.as_raw(), image, opts.shell_job, &opts.permits, &mut fds)?;
            crate::kinds::ghost::refuse_early(pid.as_raw(), opts.permits.ghost_limit, opts.permits.link_remap)
        })();
        match checked {
            // A child that exited while it was looked at is not part of the tree any more.
            Err(_) if pid != root && wait_exit_done(pid) => continue,
            checked => checked?,
        }
        queue.extend(children_of(pid));
    }
    crate::kinds::files::refuse_early_tree(&fds, &opts.externals)
}

/// Refuses what this version cannot dump, before touching the process.
fn precheck(pid: Pid) -> Result<()> {
    let process = procfs::process::Process::new(pid.as_raw()).with_context(|| format!("no process with pid {pid}"))?;
    // Read once for the three checks that need it (the kernel builds it anew at each read).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    if let Some(why) = ptrace::why_untraceable_with(pid.as_raw(), &status) {
        bail!("cannot dump pid {pid}: {why}");
    }
    let stat = process.stat().with_context(|| format!("reading /proc/{pid}/stat"))?;
    match stat.state {
        'Z' | 'X' => bail!("pid {pid} is a zombie; there is nothing left to dump"),
        't' => bail!("pid {pid} is stopped by another tracer (state t: a debugger?); crust cannot dump a traced process"),
        _ => {}
    }
    let status_field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    if status_field("Tgid:").and_then(|t| t.parse::<i32>().ok()) != Some(pid.as_raw()) {
        bail!("pid {pid} is a thread, not a process: dump its process (tgid)");
    }
    crate::kinds::seccomp::precheck_mode(pid.as_raw(), status_field("Seccomp:").and_then(|m| m.parse().ok()).unwrap_or(0))?;
    refuse_unsupported_state(pid)?;
    Ok(())
}

/// crust's own namespaces (None: unreadable), read once for every process checked.
fn own_namespaces() -> &'static [(&'static str, Option<std::path::PathBuf>)] {
    static OURS: std::sync::OnceLock<Vec<(&'static str, Option<std::path::PathBuf>)>> = std::sync::OnceLock::new();
    OURS.get_or_init(|| {
        ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"]
            .into_iter()
            .map(|ns| (ns, std::fs::read_link(format!("/proc/self/ns/{ns}")).ok()))
            .collect()
    })
}

/// State this version cannot restore faithfully is refused by name, never dropped.
fn refuse_unsupported_state(pid: Pid) -> Result<()> {
    for (ns, ours) in own_namespaces() {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"));
        if let (Ok(theirs), Some(ours)) = (theirs, ours)
            && &theirs != ours
        {
            bail!("pid {pid} lives in another {ns} namespace ({}) than crust; crust cannot restore namespaces yet", theirs.display());
        }
    }
    Ok(())
}

/// Maps crust's scratch area in every frozen process, all at once (one round of stops for the
/// tree, see RemoteTask::syscall_each), after removing those killed crusts left.
fn map_scratch_areas(frozen: &mut [Frozen]) -> Result<()> {
    for f in frozen.iter_mut() {
        remove_left_scratch_areas(&mut f.remote);
    }
    // Executable too where it may run a batch of calls (remote::batch): not under seccomp
    // filters, which act again (on the batch's calls) if crust disappears meanwhile.
    let executable: Vec<bool> =
        frozen.iter().map(|f| crate::kinds::seccomp::mode(f.pid.as_raw(), f.pid.as_raw()).is_ok_and(|m| m == 0)).collect();
    let mapped = mmap_scratch(frozen, &executable)?;
    // Refused executable (a process that denied itself writable code, PR_SET_MDWE): plain.
    let refused: Vec<bool> = mapped.iter().zip(&executable).map(|(r, x)| *x && matches!(r, Ok(ret) if is_denied(*ret))).collect();
    let mut mapped_plain = if refused.contains(&true) { mmap_scratch_where(frozen, &refused, false)? } else { Vec::new() }.into_iter();
    let mark = scratch_mark(std::process::id());
    let mut failed = None;
    for ((f, ret), (mut executable, refused)) in frozen.iter_mut().zip(mapped).zip(executable.into_iter().zip(refused.clone())) {
        let ret = if refused {
            executable = false;
            mapped_plain.next().unwrap_or(Ok(-(libc::EACCES as i64)))
        } else {
            ret
        };
        let ret = match ret {
            Ok(ret) if !(-4095..0).contains(&ret) => ret,
            Ok(ret) => {
                let errno = nix::errno::Errno::from_raw(-ret as i32);
                failed.get_or_insert_with(|| anyhow::anyhow!("pid {}: remote mmap(scratch): {errno}", f.pid));
                continue;
            }
            Err(e) => {
                failed.get_or_insert_with(|| anyhow::Error::from(e).context(format!("pid {}: remote mmap(scratch)", f.pid)));
                continue;
            }
        };
        let address = ret as u64;
        // Known at once, so that a failure from here on unmaps it. Signed in its last bytes
        // (which calls never use), so that the area a crust killed meanwhile left can be told
        // from the program's own memory and removed by the next dump.
        f.set_scratch(address, executable);
        if let Err(e) = f.remote.write_memory(address + SCRATCH_LEN - SCRATCH_MARK_LEN, &mark) {
            failed.get_or_insert_with(|| anyhow::Error::from(e).context(format!("pid {}: signing the scratch area", f.pid)));
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    map_code_pages(frozen, &refused);
    Ok(())
}

/// Gives the processes `which` selects (they refused an executable scratch area: PR_SET_MDWE)
/// a page of code to run their batches from, executable and never writable
/// (RemoteTask::map_code_pages_each). Those where it fails make their calls one by one.
fn map_code_pages(frozen: &mut [Frozen], which: &[bool]) {
    let mut leaders: Vec<&mut RemoteTask> = frozen.iter_mut().zip(which).filter(|(_, w)| **w).map(|(f, _)| &mut f.remote).collect();
    if leaders.is_empty() {
        return;
    }
    let pages = RemoteTask::map_code_pages_each(&mut leaders, std::process::id());
    let mut pages = pages.into_iter();
    for (f, _) in frozen.iter_mut().zip(which).filter(|(_, w)| **w) {
        match pages.next().flatten() {
            Some(page) => f.set_code_page(page),
            None => tracing::info!(pid = %f.pid, "refuses writable code and has no code page: its calls are made one by one"),
        }
    }
}

fn is_denied(ret: i64) -> bool {
    ret == -(libc::EACCES as i64) || ret == -(libc::EPERM as i64)
}

/// One round of remote mmap of a scratch area, executable where `executable` says.
fn mmap_scratch(frozen: &mut [Frozen], executable: &[bool]) -> Result<Vec<Result<i64, crate::sys::SysError>>> {
    let calls: Vec<(i64, Vec<u64>)> = executable.iter().map(|x| scratch_mmap_call(*x)).collect();
    let mut leaders: Vec<&mut RemoteTask> = frozen.iter_mut().map(|f| &mut f.remote).collect();
    // Each apart: an area mapped is known (and unmapped on failure) whatever the others did.
    RemoteTask::syscall_each_apart(&mut leaders, &calls).context("remote mmap(scratch)")
}

/// [`mmap_scratch`] in the processes `which` selects only, all plain or all executable.
fn mmap_scratch_where(frozen: &mut [Frozen], which: &[bool], executable: bool) -> Result<Vec<Result<i64, crate::sys::SysError>>> {
    let mut leaders: Vec<&mut RemoteTask> = frozen.iter_mut().zip(which).filter(|(_, w)| **w).map(|(f, _)| &mut f.remote).collect();
    let calls = vec![scratch_mmap_call(executable); leaders.len()];
    RemoteTask::syscall_each_apart(&mut leaders, &calls).context("remote mmap(scratch)")
}

/// Shared anonymous memory never merges with the process's own mappings, so the scratch area
/// stays one VMA that the memory dump can leave out.
fn scratch_mmap_call(executable: bool) -> (i64, Vec<u64>) {
    let exec = if executable { libc::PROT_EXEC } else { 0 };
    let prot = (libc::PROT_READ | libc::PROT_WRITE | exec) as u64;
    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
    (libc::SYS_mmap, vec![0, SCRATCH_LEN, prot, flags, u64::MAX, 0])
}

/// A seized, stopped process with crust's scratch area mapped and every signal blocked.
struct Frozen {
    pid: Pid,
    /// The thread-group leader; crust's scratch area is mapped through it.
    remote: RemoteTask,
    /// The other threads, each seized on its own.
    threads: Vec<RemoteTask>,
    /// Where its parked threads return through their signal frames (None: not parked).
    sigreturn: Option<u64>,
    /// In a job-control stop when seized: the signal that stopped it. (Let go, it stops again:
    /// the kernel keeps a group stop in effect across a ptrace attach and detach.)
    job_stop: Option<i32>,
}

/// Runs `work` in the running process `pid` while it is held as a dump holds it (every thread
/// seized and parked on a signal frame, signals blocked), then lets it go on as it was: for
/// crust's own work in a process before its freeze (kinds/uffd_dump.rs, protect_ahead).
/// `limit` bounds the wait for its threads to stop.
pub fn while_held<T>(pid: i32, limit: std::time::Duration, work: impl FnOnce(&mut RemoteTask) -> Result<T>) -> Result<T> {
    let pid = Pid::from_raw(pid);
    let deadline = Some(Instant::now() + limit);
    ptrace::seize_and_interrupt_until(pid, false, deadline).with_context(|| format!("pid {pid}: seizing it"))?;
    let mut held = match Frozen::take(pid, deadline) {
        Ok(held) => held,
        Err(e) => {
            let _ = ptrace::detach(pid);
            return Err(e);
        }
    };
    let out = work(&mut held.remote);
    held.release(End::Resume)?;
    out
}

/// Parks a thread just seized on a signal frame holding its state, so that it goes back to
/// that state by itself if crust disappears (see RemoteTask::arm_self_return and
/// docs/injection.md). A thread whose frame cannot be placed (no room below its stack pointer)
/// is worked on without one, with a warning.
fn park_on_frame(remote: &mut RemoteTask, sigreturn: Option<u64>) -> Result<()> {
    let Some(ip) = sigreturn else { return Ok(()) };
    let resolved = crate::kinds::registers::self_return_registers(remote, &remote.original_registers())?;
    if let Err(e) = remote.arm_self_return(ip, &resolved) {
        warn!(tid = %remote.pid(), "cannot park the thread on a signal frame ({e}): a crust killed during this dump could harm it");
    }
    Ok(())
}

fn task_ids(pid: Pid) -> Vec<Pid> {
    let mut tids: Vec<Pid> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok().map(Pid::from_raw)).collect())
        .unwrap_or_default();
    tids.sort();
    tids
}

impl Frozen {
    /// Takes over a process whose leader is seized and stopped: seizes its other threads (until
    /// no new one appears), blocks signals in each. (The scratch area is mapped once the whole
    /// tree is frozen: [`map_scratch_areas`].)
    fn take(pid: Pid, deadline: Option<Instant>) -> Result<Self> {
        // Read once for both searches (the leader is stopped: its code stays where it is).
        // Both look at code only.
        let maps = memory::code_maps(pid.as_raw())?;
        let syscall_ip = memory::syscall_instruction_in_vdso_of(pid.as_raw(), &maps)?;
        let mut remote = RemoteTask::new(pid, syscall_ip)?;
        let sigreturn = memory::sigreturn_instruction_in(&remote, &maps);
        if sigreturn.is_none() {
            warn!(%pid, "no rt_sigreturn instructions in the process: a crust killed during this dump could harm it");
        }
        park_on_frame(&mut remote, sigreturn)?;
        // While crust runs calls in the process no signal may be delivered there: they stay
        // pending and are dumped as such. (Parked first: its frame holds the original mask.)
        ptrace::set_sigmask(pid, !0)?;
        let mut frozen = Frozen { pid, remote, threads: Vec::new(), sigreturn, job_stop: None };
        if let Err(e) = frozen.take_rest(syscall_ip, deadline) {
            let _ = frozen.release(End::Resume);
            return Err(e);
        }
        Ok(frozen)
    }

    fn take_rest(&mut self, syscall_ip: u64, deadline: Option<Instant>) -> Result<()> {
        let pid = self.pid;
        let mut exited = Vec::new();
        loop {
            let known: Vec<Pid> = std::iter::once(pid).chain(self.threads.iter().map(|t| t.pid())).chain(exited.iter().copied()).collect();
            let new: Vec<Pid> = task_ids(pid).into_iter().filter(|t| !known.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            // All new threads stop side by side, each interrupted right after its time is
            // taken (for the waits it was in: kinds::syscall_timeouts).
            let mut interrupted = std::collections::HashMap::new();
            let outcomes = ptrace::seize_and_interrupt_each_until(&new, deadline, |tid| {
                interrupted.insert(tid, crate::kinds::syscall_timeouts::before_interrupt());
            });
            let mut failed = None;
            let mut outcomes: Vec<(Pid, Result<(), crate::sys::SysError>)> = new.into_iter().zip(outcomes).collect();
            for k in 0..outcomes.len() {
                let tid = outcomes[k].0;
                match std::mem::replace(&mut outcomes[k].1, Ok(())) {
                    Ok(()) => {
                        let at = interrupted.get(&tid).copied().unwrap_or_else(crate::kinds::syscall_timeouts::before_interrupt);
                        if let Err(e) = self.take_thread(tid, syscall_ip, at) {
                            // The threads stopped after it have had nothing changed: let go.
                            outcomes[k + 1..].iter().filter(|(_, o)| o.is_ok()).for_each(|(t, _)| drop(ptrace::detach(*t)));
                            return Err(e);
                        }
                    }
                    // A thread caught exiting is gone a moment later: nothing of it to save.
                    Err(_) if wait_exit_done(tid) => exited.push(tid),
                    Err(e) => {
                        failed.get_or_insert(seize_error(pid, tid, e));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes over thread `tid`, just stopped (interrupted at `interrupted`): parks it, blocks
    /// its signals.
    fn take_thread(&mut self, tid: Pid, syscall_ip: u64, interrupted: std::time::Duration) -> Result<()> {
        crate::kinds::syscall_timeouts::frozen(tid.as_raw(), interrupted);
        let mut thread = RemoteTask::new_thread_of(&self.remote, tid, syscall_ip)?;
        crate::kinds::seccomp::suspend_while_traced(self.pid.as_raw(), tid.as_raw(), false)?;
        park_on_frame(&mut thread, self.sigreturn)?;
        ptrace::set_sigmask(tid, !0)?;
        self.threads.push(thread);
        Ok(())
    }

    /// Uses the scratch area mapped at `address` in the process.
    fn set_scratch(&mut self, address: u64, executable: bool) {
        self.use_scratch(Scratch { address, len: SCRATCH_LEN - SCRATCH_MARK_LEN, executable, code: None });
    }

    /// Runs batches of calls from the code page mapped at `page` (a process that refuses
    /// writable code).
    fn set_code_page(&mut self, page: u64) {
        if let Some(scratch) = self.remote.scratch() {
            self.use_scratch(Scratch { code: Some(page), ..scratch });
        }
    }

    fn use_scratch(&mut self, scratch: Scratch) {
        self.remote.set_scratch(Some(scratch));
        for t in &mut self.threads {
            t.set_scratch(Some(scratch));
        }
    }

    /// Removes every trace of crust and lets the process go on (resumed, or stopped by a
    /// SIGSTOP queued before it is let go), or kills it.
    fn release(&mut self, end: End) -> Result<()> {
        let pid = self.pid;
        if end == End::Kill {
            // The scratch area goes with the process; [`reap_killed`] collects its exit.
            kill(pid, Signal::SIGKILL).with_context(|| format!("killing pid {pid} after the dump"))?;
            return Ok(());
        }
        if let Some(scratch) = self.remote.scratch() {
            if let Err(e) = self.remote.syscall("munmap(scratch)", libc::SYS_munmap, &[scratch.address, SCRATCH_LEN]) {
                warn!(%pid, "could not remove crust's scratch mapping: {e}");
            }
            if let Some(page) = scratch.code
                && let Err(e) = self.remote.syscall("munmap(code page)", libc::SYS_munmap, &[page, CODE_PAGE_LEN])
            {
                warn!(%pid, "could not remove crust's code page: {e}");
            }
            self.remote.set_scratch(None);
        }
        let mut result = Ok(());
        let mut parked = Vec::new();
        for remote in std::iter::once(&mut self.remote).chain(self.threads.iter_mut()) {
            let tid = remote.pid();
            // A wait the freeze ended with EINTR goes on instead (kinds::registers).
            let original = crate::kinds::registers::release_registers(remote).unwrap_or_else(|e| {
                warn!(%pid, %tid, "resuming with the registers it had: {e:#}");
                remote.original_registers()
            });
            match ptrace::set_sigmask(tid, remote.original_sigmask()).and_then(|_| remote.park_with_registers(&original)) {
                Ok(()) => parked.push(tid),
                Err(e) if result.is_ok() => result = Err(anyhow::Error::from(e).context(format!("releasing thread {tid} of pid {pid}"))),
                Err(_) => {}
            }
        }
        // Every thread is back in its own state: the stop is taken once they are let go.
        if end == End::Stop && result.is_ok() {
            result = kill(pid, Signal::SIGSTOP).with_context(|| format!("stopping pid {pid} after the dump"));
        }
        for tid in parked {
            if let Err(e) = ptrace::detach(tid)
                && result.is_ok()
            {
                result = Err(anyhow::Error::from(e).context(format!("releasing thread {tid} of pid {pid}")));
            }
        }
        result
    }
}

/// Collects every kind and writes the per-process records. Returns the core record and the
/// number of page bytes saved.
/// The fd table and open file descriptions of one process.
fn collect_files(
    frozen: &mut Frozen,
    image: &ImageDir,
    progress: &Progress,
    open_files: &mut OpenFileTable,
    parent: Option<Pid>,
) -> Result<crate::image::proto::Files> {
    let pid = frozen.pid;
    let pidfd = pidfd_open(pid.as_raw())?;
    let process = procfs::process::Process::new(pid.as_raw())?;
    let mut ctx = DumpCtx { pid, remote: &mut frozen.remote, image, process, pidfd, open_files, parent };
    progress.step(format!("pid {pid}: files"));
    let files = crate::timing::step("dump: files", || Files::dump(&mut ctx))?;
    crate::fault::point("dump-files")?;
    Ok(files)
}

/// Every other kind of one process (its files were collected first), and its records.
fn collect(
    frozen: &mut Frozen,
    files: crate::image::proto::Files,
    actions: Vec<crate::image::proto::SigAction>,
    asked: crate::kinds::asked::Asked,
    image: &ImageDir,
    progress: &Progress,
    open_files: &mut OpenFileTable,
    parent: Option<Pid>,
) -> Result<u64> {
    let pid = frozen.pid;
    let pidfd = pidfd_open(pid.as_raw())?;
    let process = procfs::process::Process::new(pid.as_raw())?;
    let mut ctx = DumpCtx { pid, remote: &mut frozen.remote, image, process, pidfd, open_files: &mut *open_files, parent };

    progress.step(format!("pid {pid}: memory"));
    ctx.open_files.state.get::<memory::AskedBreaks>().0.insert(pid.as_raw(), asked.brk);
    let mm = crate::timing::step("dump: memory", || Memory::dump(&mut ctx))?;
    crate::fault::point("dump-memory")?;
    crate::interrupt::check()?;
    let pages_bytes: u64 = mm.vmas.iter().flat_map(|v| &v.pages).map(|r| r.pages * crate::sys::PAGE_SIZE).sum();
    progress.step(format!("pid {pid}: signals, timers, identity, registers"));
    let identity = crate::timing::step("dump: identity", || crate::kinds::identity::dump_with(&mut ctx, Some(&asked)))?;
    let credentials = crate::timing::step("dump: credentials", || Credentials::dump(&mut ctx))?;
    let timers = crate::kinds::timers::from_itimervals(&asked.itimers);
    let posix_timers = crate::timing::step("dump: posix timers", || crate::kinds::posix_timers::dump(&mut ctx))?;
    let membarrier_registrations = asked.membarrier_registrations;
    let mut threads = vec![crate::timing::step("dump: leader thread", || crate::kinds::registers::dump_with(&mut ctx, Some(asked.own)))?];
    let DumpCtx { process, pidfd, .. } = ctx;
    // What only each thread can tell, asked of all the other threads at once.
    let mut others: Vec<&mut RemoteTask> = frozen.threads.iter_mut().collect();
    let own_words = crate::timing::step("dump: words of all threads", || crate::kinds::registers::own_words_of_all(&mut others))?;
    let threads_started = Instant::now();
    for (t, own) in frozen.threads.iter_mut().zip(own_words) {
        let mut tctx = DumpCtx {
            pid: t.pid(),
            process: procfs::process::Process::new(t.pid().as_raw())?,
            remote: t,
            image,
            pidfd: pidfd.try_clone()?,
            open_files: &mut *open_files,
            parent,
        };
        threads.push(crate::kinds::registers::dump_with(&mut tctx, Some(own))?);
    }
    crate::timing::add("dump: other threads", threads_started.elapsed());
    let threads_started = Instant::now();
    for thread in &mut threads {
        thread.scheduling = Some(crate::kinds::scheduling::dump_thread(pid.as_raw(), thread.tid as i32)?);
        let own = crate::kinds::credentials::of_thread(pid.as_raw(), thread.tid as i32)?;
        thread.credentials = (own != credentials).then_some(own);
    }
    crate::timing::add("dump: thread scheduling and credentials", threads_started.elapsed());
    let loginuid = crate::kinds::scheduling::dump_loginuid(pid.as_raw())?;
    let tids: Vec<i32> = threads.iter().map(|t| t.tid as i32).collect();
    let seccomp = crate::kinds::seccomp::dump(pid.as_raw(), &tids)?;
    let job_stop = frozen.job_stop;
    let mut ctx = DumpCtx { pid, remote: &mut frozen.remote, image, process, pidfd, open_files, parent };
    // Pending signals last: a timer may have fired while we were collecting.
    let signals = crate::timing::step("dump: pending signals", || crate::kinds::signals::dump_with(&mut ctx, Some(actions)))?;

    let core = Core {
        pid: pid.as_raw() as u32,
        comm: identity.comm,
        credentials: Some(credentials),
        rlimits: identity.rlimits,
        personality: identity.personality,
        umask: identity.umask,
        signal_handlers: Some(signals.handlers),
        shared_pending: signals.shared_pending,
        interval_timers: Some(timers),
        control: Some(identity.control),
        threads,
        stopped: job_stop.is_some(),
        stop_signal: job_stop.unwrap_or(0),
        seccomp,
        sid: identity.sid,
        pgid: identity.pgid,
        nice: identity.nice,
        oom_score_adj: identity.oom_score_adj,
        posix_timers,
        loginuid,
        membarrier_registrations,
    };
    let p = pid.as_raw() as u32;
    crate::timing::step("dump: write records", || -> Result<()> {
        image.write_record_deferred(&image::core_name(p), &core)?;
        image.write_record_deferred(&image::mm_name(p), &mm)?;
        image.write_record_deferred(&image::files_name(p), &files)?;
        Ok(())
    })?;
    Ok(pages_bytes)
}
