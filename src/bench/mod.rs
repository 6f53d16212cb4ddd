//! `crust bench`: dump and restore a process holding N MiB of touched anonymous memory, in
//! ordinary 4 KiB pages and in huge pages, next to this machine's floors for the same amount of
//! data and (with `--criu PATH`) the reference tool's times, all measured in the same run:
//!
//! - dump floor: moving the bytes out of a process into a new file on the image file system,
//!   the faster of vmsplice+splice (the process gifts its pages to a pipe) and
//!   process_vm_readv+write (another process copies them out);
//! - restore floor: reading the file into fresh anonymous memory.
//!
//! The floor's read and every restore (crust's eager and lazy ones, the reference tool's) start
//! right after the same amount of memory was touched and freed ([`warm_memory`]): on this VM a
//! huge page made of memory the host took back costs up to ten times more.
//!
//! The lazy restore (`--lazy-pages`) is measured on a fresh workload of the same memory: the
//! time until the process runs (the restore command returns), and the time until every page
//! is in (its anonymous memory is all resident), next to the restore floor.
//!
//! Figures are ratios to the floors, never absolute claims: this VM's memory speed varies. The
//! reference tool runs right after crust on the same workload, so each run compares the two
//! side by side.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;

use crate::sys::region::AnonRegion;

pub mod maps;
pub mod tasks;

const MIB: usize = 1 << 20;
const PATTERN_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The longest time, in nanoseconds, between two wake-ups of the workload's ticker, and when
/// it ended (CLOCK_REALTIME, nanoseconds): a longest gap is told apart from the freeze by when
/// it happened.
static MAX_GAP_NS: [std::sync::atomic::AtomicU64; 2] = [const { std::sync::atomic::AtomicU64::new(0) }; 2];

/// The workload's ticker: wakes every millisecond and writes a word to its own memory (a new
/// page each time, so that a dump that write-protects memory makes it wait), keeping the
/// longest gap between wake-ups in MAX_GAP_NS: the stall of a `dump -R`, seen from inside.
fn ticker() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const PAGES: usize = 1024;
    let words: Vec<AtomicU64> = (0..PAGES * 512).map(|_| AtomicU64::new(1)).collect();
    let mut previous = Instant::now();
    for i in 0.. {
        std::thread::sleep(Duration::from_millis(1));
        words[(i % PAGES) * 512].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let gap = (now - previous).as_nanos() as u64;
        if MAX_GAP_NS[0].fetch_max(gap, Ordering::Relaxed) < gap {
            MAX_GAP_NS[1].store(realtime_ns(), Ordering::Relaxed);
        }
        previous = now;
    }
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Runs as the benchmarked process: maps `mib` MiB of huge or ordinary pages, writes a pattern
/// to every word, starts its ticker, says READY in `ready_file` (with the address of the
/// ticker's longest gap), then sleeps until killed.
pub fn workload(mib: usize, ready_file: &Path, huge: bool) -> Result<()> {
    crate::sys::close_inherited_fds()?;
    // A session of its own, as the reference tool wants of the processes it dumps.
    let _ = nix::unistd::setsid();
    let len = mib * MIB;
    let mut region = AnonRegion::new(len, huge)?;
    for (i, w) in region.as_mut_slice().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64 ^ PATTERN_SEED).to_ne_bytes());
    }
    // Written to a file, then closed: the process keeps no descriptor to the benchmark.
    std::thread::spawn(ticker);
    let gap = &MAX_GAP_NS as *const _ as u64;
    std::fs::write(ready_file, format!("READY {:#x} {} {gap:#x}\n", region.address(), len))?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

struct Workload {
    child: Child,
    address: u64,
    len: u64,
    /// Where its ticker keeps its longest gap.
    gap: u64,
}

impl Workload {
    /// The ticker's longest gap since the last call (reset then), and when it ended
    /// (CLOCK_REALTIME, nanoseconds).
    fn take_max_gap(&self) -> Result<(Duration, u64)> {
        use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
        let pid = Pid::from_raw(self.child.id() as i32);
        let mut words = [0u8; 16];
        let remote = [RemoteIoVec { base: self.gap as usize, len: 16 }];
        process_vm_readv(pid, &mut [std::io::IoSliceMut::new(&mut words)], &remote)?;
        process_vm_writev(pid, &[std::io::IoSlice::new(&[0u8; 16])], &remote)?;
        let word = |i: usize| u64::from_ne_bytes(words[i * 8..i * 8 + 8].try_into().unwrap());
        Ok((Duration::from_nanos(word(0)), word(1)))
    }

    /// The longest gap the ticker saw during `dump -R` by `run`, said with when it ended,
    /// counted from the start of the dump (crust's log says when its steps were); and the
    /// longest gap of a ticker outside the process meanwhile ([`outside_gap_during`]).
    fn stall_of(&self, run: impl FnOnce() -> Result<()>) -> Result<Stall> {
        std::thread::sleep(Duration::from_millis(50));
        self.take_max_gap()?;
        let started = realtime_ns();
        let (ran, outside) = outside_gap_during(|| {
            let ran = run();
            std::thread::sleep(Duration::from_millis(50));
            ran
        });
        ran?;
        let (inside, ended) = self.take_max_gap()?;
        let after = ended.saturating_sub(started) as f64 / 1e6;
        println!(
            "    (the longest gap, {:.1} ms, ended {after:.1} ms after the dump began; outside the process: {:.1} ms)",
            inside.as_secs_f64() * 1e3,
            outside.as_secs_f64() * 1e3
        );
        Ok(Stall { inside, outside })
    }
}

/// The stall of a `dump -R`: the longest gap of a 1 ms ticker inside the dumped process, and
/// that of one outside it over the same time.
#[derive(Default, Clone, Copy)]
struct Stall {
    inside: Duration,
    outside: Duration,
}

/// Runs `run` while a thread of the bench, outside the dumped process, wakes every
/// millisecond: its longest gap is this machine's own stall meanwhile. This VM stalls whole
/// (every vCPU, every process) for 20-40 ms at a time when its host's CPU quota runs out, as
/// under a dump copying gigabytes on both cores: the ticker inside the process cannot see less.
fn outside_gap_during<T>(run: impl FnOnce() -> T) -> (T, Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const LONGEST: Duration = Duration::from_secs(600);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let ticker = s.spawn(|| {
            let (started, mut previous, mut longest) = (Instant::now(), Instant::now(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LONGEST {
                std::thread::sleep(Duration::from_millis(1));
                let now = Instant::now();
                longest = longest.max(now - previous);
                previous = now;
            }
            longest
        });
        let out = run();
        stop.store(true, Ordering::Relaxed);
        (out, ticker.join().unwrap_or_default())
    })
}

fn start_workload(mib: usize, dir: &Path, huge: bool) -> Result<Workload> {
    let exe = std::env::current_exe()?;
    let ready = dir.join("workload.ready");
    let _ = std::fs::remove_file(&ready);
    let mut command = Command::new(exe);
    command.args(["bench-workload", &mib.to_string()]).arg(&ready);
    if !huge {
        command.arg("--small-pages");
    }
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        if let Ok(line) = std::fs::read_to_string(&ready)
            && line.ends_with('\n')
        {
            break line;
        }
        if let Some(status) = child.try_wait()? {
            bail!("benchmark workload exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("benchmark workload did not get ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut parts = line.split_whitespace().skip(1);
    let address = u64::from_str_radix(parts.next().context("bad READY line")?.trim_start_matches("0x"), 16)?;
    let len = parts.next().context("bad READY line")?.parse()?;
    let gap = u64::from_str_radix(parts.next().context("bad READY line")?.trim_start_matches("0x"), 16)?;
    Ok(Workload { child, address, len, gap })
}

fn anon_huge_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("AnonHugePages:")).and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

/// Floor 1a: the process gifts its pages to a pipe (vmsplice), the pipe is spliced to the file.
fn floor_vmsplice(dir: &Path, mib: usize, huge: bool) -> Result<Duration> {
    use nix::fcntl::{SpliceFFlags, splice};
    let len = mib * MIB;
    let mut region = AnonRegion::new(len, huge)?;
    region.as_mut_slice().iter_mut().step_by(4096).for_each(|b| *b = 1);
    let path = dir.join("floor-vmsplice");
    let file = File::create(&path)?;
    let (r, w) = nix::unistd::pipe()?;
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(MIB as i32));
    let start = Instant::now();
    let mut done = 0usize;
    let mut offset: i64 = 0;
    while done < len {
        let chunk = (len - done).min(MIB);
        let n = region.vmsplice(&w, done..done + chunk)?;
        let mut left = n;
        while left > 0 {
            let m = splice(r.as_fd(), None, file.as_fd(), Some(&mut offset), left, SpliceFFlags::SPLICE_F_MOVE)?;
            left -= m;
        }
        done += n;
    }
    file.sync_data().ok();
    let elapsed = start.elapsed();
    drop(region);
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Floor 1b: another process copies the pages out (process_vm_readv) and writes them.
fn floor_process_vm_readv(dir: &Path, w: &Workload) -> Result<Duration> {
    use nix::sys::uio::{RemoteIoVec, process_vm_readv};
    let path = dir.join("floor-readv");
    let mut file = File::create(&path)?;
    let mut buf = vec![0u8; 4 * MIB];
    let pid = Pid::from_raw(w.child.id() as i32);
    let start = Instant::now();
    let mut done = 0u64;
    while done < w.len {
        let chunk = (w.len - done).min(buf.len() as u64) as usize;
        let remote = [RemoteIoVec { base: (w.address + done) as usize, len: chunk }];
        let n = process_vm_readv(pid, &mut [std::io::IoSliceMut::new(&mut buf[..chunk])], &remote)?;
        file.write_all(&buf[..n])?;
        done += n as u64;
    }
    let elapsed = start.elapsed();
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Floor 2: read a file of the same size into fresh anonymous memory (of the same pages).
fn floor_read_into_memory(dir: &Path, mib: usize, huge: bool) -> Result<Duration> {
    let path = dir.join("floor-read");
    {
        let mut f = File::create(&path)?;
        let block = vec![0x5au8; 4 * MIB];
        for _ in 0..mib / 4 {
            f.write_all(&block)?;
        }
    }
    let len = mib * MIB;
    let file = File::open(&path)?;
    warm_memory(mib, huge)?;
    let mut region = AnonRegion::new(len, huge)?;
    let bytes = region.as_mut_slice();
    let start = Instant::now();
    let mut done = 0;
    while done < len {
        let n = nix::unistd::read(&file, &mut bytes[done..])?;
        if n == 0 {
            bail!("short file");
        }
        done += n;
    }
    let elapsed = start.elapsed();
    drop(region);
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Touches, then frees, `mib` MiB of fresh memory, right before a restore or the floor's read.
/// This VM hands free memory back to its host in 2 MiB blocks (free page reporting, a pass
/// about 2 s after memory is freed); a huge page made of such a block costs up to ten times
/// more to fault in (docs/memory-dump.md). Whether the memory freed by the dumped process was
/// handed back before the restore ran is the host's timing: every restore, and the floor, get
/// the same warm start, so that the figures compare the tools.
pub(super) fn warm_memory(mib: usize, huge: bool) -> Result<()> {
    let mut warm = AnonRegion::new(mib * MIB, huge)?;
    warm.as_mut_slice().iter_mut().step_by(4096).for_each(|b| *b = 1);
    Ok(())
}

/// Checks the restored process's memory pattern on a sample of pages.
fn verify_pattern(pid: i32, address: u64, len: u64) -> Result<()> {
    use nix::sys::uio::{RemoteIoVec, process_vm_readv};
    let mut word = [0u8; 8];
    for page in (0..len / 4096).step_by(97) {
        let off = page * 4096 + 8 * (page % 512);
        let remote = [RemoteIoVec { base: (address + off) as usize, len: 8 }];
        process_vm_readv(Pid::from_raw(pid), &mut [std::io::IoSliceMut::new(&mut word)], &remote)?;
        let want = (off / 8) ^ PATTERN_SEED;
        if u64::from_ne_bytes(word) != want {
            bail!("restored memory differs at offset {off:#x}");
        }
    }
    Ok(())
}

pub struct BenchOptions {
    pub mib: usize,
    pub dir: PathBuf,
    pub runs: usize,
    /// Which pages: 4 KiB, huge, or both in turn.
    pub pages: Vec<bool>,
    /// The reference tool's binary, measured side by side when given.
    pub criu: Option<PathBuf>,
    /// Processes and threads instead of memory (`--workload tree300|threads1000`).
    pub tasks: Option<tasks::Tasks>,
    /// `--workload maps16k`: many 64 KiB areas (`--mib` of them) against one area.
    pub maps: bool,
}

/// One run's figures for one kind of pages.
#[derive(Default, Clone)]
struct Figures {
    floor_dump: Duration,
    floor_restore: Duration,
    dump: Duration,
    frozen: Duration,
    restore: Duration,
    /// The longest gap a 1 ms ticker inside the process saw during `dump -R`: crust's, and
    /// the reference tool's.
    stall: Stall,
    criu_stall: Option<Stall>,
    criu: Option<(Duration, Duration)>,
    /// AnonHugePages of the process before the dump and after the restore, in KiB.
    huge_kib: (u64, u64),
    /// restore --lazy-pages: (until the process runs, until every page is in, and with huge
    /// pages until they are all huge again).
    lazy: (Duration, Duration),
    /// AnonHugePages of the lazily restored process once every page is in, in KiB.
    lazy_huge_kib: u64,
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    if let Some(t) = opts.tasks {
        return tasks::run(t, &opts.dir, opts.runs, opts.criu.as_deref());
    }
    if opts.maps {
        return maps::run(opts.mib, &opts.dir, opts.runs, opts.criu.as_deref());
    }
    std::fs::create_dir_all(&opts.dir)?;
    println!("crust bench: {} MiB of touched anonymous memory, images in {}", opts.mib, opts.dir.display());
    let mut all: Vec<(bool, Figures)> = Vec::new();
    for run in 1..=opts.runs {
        for &huge in &opts.pages {
            let figures = one_run(opts, huge)?;
            print_run(run, huge, opts.mib, &figures);
            all.push((huge, figures));
        }
    }
    for &huge in &opts.pages {
        let runs: Vec<&Figures> = all.iter().filter(|(h, _)| *h == huge).map(|(_, f)| f).collect();
        print_medians(huge, &runs);
    }
    Ok(())
}

fn pages_name(huge: bool) -> &'static str {
    if huge { "huge pages" } else { "4 KiB pages" }
}

/// Floors, crust, then the reference tool, on fresh workloads of the same memory.
fn one_run(opts: &BenchOptions, huge: bool) -> Result<Figures> {
    let mut w = start_workload(opts.mib, &opts.dir, huge)?;
    let pid = w.child.id();
    let huge_before = anon_huge_kib(pid);
    // Floors first, side by side with the real thing, in the same run.
    let floor_dump = floor_vmsplice(&opts.dir, opts.mib, huge)?.min(floor_process_vm_readv(&opts.dir, &w)?);
    let floor_restore = floor_read_into_memory(&opts.dir, opts.mib, huge)?;
    let image = opts.dir.join("image");
    let _ = std::fs::remove_dir_all(&image);
    let leave_running = crate::dump::DumpOptions { leave_running: true, ..Default::default() };
    let stall = w.stall_of(|| crate::dump::dump(pid as i32, &image, &leave_running).map(|_| ()))?;
    let _ = std::fs::remove_dir_all(&image);
    let dump = crate::dump::dump(pid as i32, &image, &crate::dump::DumpOptions::default())?;
    let _ = w.child.wait();
    warm_memory(opts.mib, huge)?;
    let started = Instant::now();
    let restored = crate::restore::restore(&image, &crate::restore::RestoreOptions { detach: true, ..Default::default() })?;
    let restore = started.elapsed();
    // The floor for restore is measured on both sides of it, the better one kept: this VM's
    // memory gets cheaper or dearer from one second to the next.
    let floor_restore = floor_restore.min(floor_read_into_memory(&opts.dir, opts.mib, huge)?);
    let crate::restore::Restored::Running { pid: new_pid, .. } = restored else { bail!("restore did not detach") };
    let huge_after = anon_huge_kib(new_pid as u32);
    finish_restored(new_pid, &w)?;
    let _ = std::fs::remove_dir_all(&image);
    let (lazy, lazy_huge_kib) = lazy_run(opts, huge)?;
    let criu = opts.criu.as_deref().map(|criu| criu_run(criu, opts, huge)).transpose()?;
    let (criu_stall, criu) = match criu {
        Some((stall, dump, restore)) => (Some(stall), Some((dump, restore))),
        None => (None, None),
    };
    let huge_kib = (huge_before, huge_after);
    Ok(Figures {
        floor_dump,
        floor_restore,
        dump: dump.total,
        frozen: dump.frozen,
        restore,
        stall,
        criu_stall,
        criu,
        huge_kib,
        lazy,
        lazy_huge_kib,
    })
}

/// A fresh workload dumped, then restored with --lazy-pages: ((until it runs, until all its
/// pages are in and as many of them huge as before), its huge pages then in KiB).
fn lazy_run(opts: &BenchOptions, huge: bool) -> Result<((Duration, Duration), u64)> {
    let mut w = start_workload(opts.mib, &opts.dir, huge)?;
    let pid = w.child.id();
    let huge_before = anon_huge_kib(pid);
    let threads = task_count(pid as i32);
    let image = opts.dir.join("image-lazy");
    let _ = std::fs::remove_dir_all(&image);
    crate::dump::dump(pid as i32, &image, &crate::dump::DumpOptions::default())?;
    let _ = w.child.wait();
    warm_memory(opts.mib, huge)?;
    let started = Instant::now();
    let options = crate::restore::RestoreOptions { detach: true, lazy_pages: true, ..Default::default() };
    let restored = crate::restore::restore(&image, &options)?;
    let running = started.elapsed();
    let crate::restore::Restored::Running { pid: new_pid, .. } = restored else { bail!("restore did not detach") };
    let resident = wait_resident(new_pid, w.len, huge_before, threads);
    let all_in = started.elapsed();
    let huge_after = anon_huge_kib(new_pid as u32);
    let checked = resident.and_then(|()| finish_restored(new_pid, &w));
    let _ = std::fs::remove_dir_all(&image);
    checked.context("the lazily restored process")?;
    Ok(((running, all_in), huge_after))
}

/// Waits (at most two minutes) until `len` bytes of the process's anonymous memory are
/// resident and `huge_kib` of it in huge pages, with its `threads` threads: the lazy fill is
/// over, and so is the collapse of its huge pages (a workload's huge pages, all touched, are all
/// in the image); the mover thread of a lazy restore has ended, its staging area gone (it would
/// count in both figures).
fn wait_resident(pid: i32, len: u64, huge_kib: u64, threads: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = format!("/proc/{pid}/status");
    loop {
        let text = std::fs::read_to_string(&status)?;
        let kib: u64 =
            text.lines().find_map(|l| l.strip_prefix("RssAnon:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        if kib * 1024 >= len && (huge_kib == 0 || anon_huge_kib(pid as u32) >= huge_kib) && task_count(pid) == threads {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pid {pid}: only {kib} KiB resident two minutes after a lazy restore");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn task_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// Checks the restored process's memory, then ends it.
fn finish_restored(pid: i32, w: &Workload) -> Result<()> {
    let check = verify_pattern(pid, w.address, w.len);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    check
}

/// The reference tool dumps a fresh workload with --leave-running, then dumps and restores it:
/// (the stall of the first, dump and restore wall times).
fn criu_run(criu: &Path, opts: &BenchOptions, huge: bool) -> Result<(Stall, Duration, Duration)> {
    let mut w = start_workload(opts.mib, &opts.dir, huge)?;
    let pid = w.child.id() as i32;
    let image = opts.dir.join("criu-image");
    let _ = std::fs::remove_dir_all(&image);
    std::fs::create_dir_all(&image)?;
    let tool = |args: &[&str]| -> Result<Duration> {
        let started = Instant::now();
        let out = Command::new(criu).args(args).arg("-D").arg(&image).stdin(Stdio::null()).output()?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!("{} {}: {}\n{}", criu.display(), args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(took)
    };
    let stall = w.stall_of(|| tool(&["dump", "--leave-running", "-t", &pid.to_string(), "-o", "dump.log"]).map(|_| ()));
    let stall = stall.inspect_err(|_| {
        let _ = w.child.kill();
        let _ = w.child.wait();
    })?;
    let _ = std::fs::remove_dir_all(&image);
    std::fs::create_dir_all(&image)?;
    let dump = tool(&["dump", "-t", &pid.to_string(), "-o", "dump.log"]).inspect_err(|_| {
        let _ = w.child.kill();
        let _ = w.child.wait();
    })?;
    let _ = w.child.wait();
    warm_memory(opts.mib, huge)?;
    let restore = tool(&["restore", "-d", "-o", "restore.log"])?;
    // The reference tool restores the same pid.
    let check = verify_pattern(pid, w.address, w.len);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let _ = std::fs::remove_dir_all(&image);
    check.context("the reference tool's restored memory")?;
    Ok((stall, dump, restore))
}

fn print_run(run: usize, huge: bool, mib: usize, f: &Figures) {
    let gib_s = |d: Duration| mib as f64 / 1024.0 / d.as_secs_f64();
    println!("run {run}, {}:", pages_name(huge));
    println!("  floor dump    {} ({:5.2} GiB/s)", ms(f.floor_dump), gib_s(f.floor_dump));
    println!("  floor restore {} ({:5.2} GiB/s)", ms(f.floor_restore), gib_s(f.floor_restore));
    println!(
        "  crust dump    {} = {:.2}x the floor (frozen {}, {:.2}x)",
        ms(f.dump),
        ratio(f.dump, f.floor_dump),
        ms(f.frozen).trim(),
        ratio(f.frozen, f.floor_dump)
    );
    println!("  crust restore {} = {:.2}x the floor", ms(f.restore), ratio(f.restore, f.floor_restore));
    println!(
        "  lazy restore  {} until it runs; every page in after {} = {:.2}x the floor",
        ms(f.lazy.0),
        ms(f.lazy.1).trim(),
        ratio(f.lazy.1, f.floor_restore)
    );
    println!(
        "  crust dump -R stall {} (longest gap of a 1 ms ticker inside the process; outside it {})",
        ms(f.stall.inside),
        ms(f.stall.outside).trim()
    );
    if let Some(stall) = f.criu_stall {
        println!("  criu dump -R stall  {} (outside the process {})", ms(stall.inside), ms(stall.outside).trim());
    }
    println!(
        "  huge pages    {} MiB before, {} MiB after restore, {} MiB after lazy restore; memory pattern verified",
        f.huge_kib.0 / 1024,
        f.huge_kib.1 / 1024,
        f.lazy_huge_kib / 1024
    );
    if let Some((dump, restore)) = f.criu {
        println!("  criu dump     {} = {:.2}x the floor; crust/criu {:.2}", ms(dump), ratio(dump, f.floor_dump), ratio(f.dump, dump));
        println!(
            "  criu restore  {} = {:.2}x the floor; crust/criu {:.2}",
            ms(restore),
            ratio(restore, f.floor_restore),
            ratio(f.restore, restore)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_medians(huge: bool, runs: &[&Figures]) {
    let m = |f: &dyn Fn(&Figures) -> f64| median(runs.iter().map(|r| f(r)).collect());
    print!(
        "median of {} runs, {}: dump {:.2}x the floor (frozen {:.2}x), restore {:.2}x the floor, dump -R stall {:.1} ms \
         (outside the process {:.1} ms)",
        runs.len(),
        pages_name(huge),
        m(&|f| ratio(f.dump, f.floor_dump)),
        m(&|f| ratio(f.frozen, f.floor_dump)),
        m(&|f| ratio(f.restore, f.floor_restore)),
        m(&|f| f.stall.inside.as_secs_f64() * 1e3),
        m(&|f| f.stall.outside.as_secs_f64() * 1e3)
    );
    if runs.iter().all(|r| r.criu_stall.is_some()) {
        print!(" (criu {:.1} ms)", m(&|f| f.criu_stall.unwrap_or_default().inside.as_secs_f64() * 1e3));
    }
    print!(
        "; lazy: running after {:.1} ms, every page in {:.2}x the floor",
        m(&|f| f.lazy.0.as_secs_f64() * 1e3),
        m(&|f| ratio(f.lazy.1, f.floor_restore))
    );
    if runs.iter().all(|r| r.criu.is_some()) {
        print!(
            "; criu dump {:.2}x, restore {:.2}x the floor; crust/criu dump {:.2}, restore {:.2}",
            m(&|f| ratio(f.criu.unwrap().0, f.floor_dump)),
            m(&|f| ratio(f.criu.unwrap().1, f.floor_restore)),
            m(&|f| ratio(f.dump, f.criu.unwrap().0)),
            m(&|f| ratio(f.restore, f.criu.unwrap().1))
        );
    }
    println!();
}

/// Runs `run_in` in a directory of this run's own under `dir` (another bench may use the same
/// --dir at the same time), removed when the run succeeds (kept to look at otherwise).
pub fn in_own_dir(dir: &Path, prefix: &str, run_in: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let own = dir.join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&own)?;
    let result = run_in(&own);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&own);
    }
    result
}
