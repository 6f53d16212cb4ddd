//! `crust bench --workload maps16k`: the cost per mapping. One process holds `--mib` MiB (1 GiB
//! by default) of touched private anonymous memory in areas of 64 KiB (16384 of them), every
//! other one read-only so that the kernel keeps them apart; next to it, the same process with
//! the same memory in one area. Each is dumped and restored by crust and, with `--criu PATH`,
//! by the reference tool, as commands (`dump`, `restore -d`), the tools taking turns to go
//! first, and the many areas and the one area too; the cost of a mapping is the difference of
//! the two walls divided by the number of areas, and the same for the tool's CPU time (user +
//! system, its own and its waited-for children's), which the other work of a shared machine
//! disturbs less. Every restored process is checked from /proc (each area at its place with its
//! protection, a sample of its words) and from inside (on SIGUSR1 it compares every word of its
//! memory with the pattern and its areas with /proc/self/maps, and writes what it found).
//!
//! Both walls hold the copy of 1 GiB, which this VM makes vary by hundreds of milliseconds
//! (its host backs freed memory lazily: the image's first writes to /dev/shm cost up to 2.5x
//! more when the host took that memory back): each dump and each restore starts right after
//! 1 GiB was touched and freed ([`super::warm_memory`]), and the figure is given three ways:
//! the median of each run's difference, the difference of the medians, and the difference of
//! the fastest runs (a shared machine only ever adds time). crust's dumps log their steps'
//! times (`CRUST_LOG=crust=debug`), which also gives its cost per area without the copy: its
//! total less its "copy pages" step.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use crate::sys::region::AnonRegion;

/// The size of one area.
pub const AREA: usize = 64 * 1024;
const PAGE: usize = 4096;
const SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// The workload's memory: `areas` areas of AREA bytes, apart (every other one read-only) or
/// all in one area.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub areas: usize,
    pub apart: bool,
}

impl Layout {
    fn len(&self) -> usize {
        self.areas * AREA
    }

    /// The areas /proc/PID/maps must show: (offset from the start, length, writable).
    fn expected(&self) -> Vec<(usize, usize, bool)> {
        if !self.apart {
            return vec![(0, self.len(), true)];
        }
        (0..self.areas).map(|i| (i * AREA, AREA, i % 2 == 0)).collect()
    }
}

/// The word at byte `offset` of the workload's memory.
fn pattern(offset: usize) -> u64 {
    (offset as u64 / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ SEED
}

/// Runs as the benchmarked process: maps and writes its memory, splits it into areas, says
/// READY (address, length) in `ready_file`, then waits for SIGUSR1 to check itself, writing
/// the verdict to `ready_file` + ".check", until killed.
pub fn workload(layout: Layout, ready_file: &Path) -> Result<()> {
    crate::sys::close_inherited_fds()?;
    let _ = nix::unistd::setsid();
    let mut region = AnonRegion::new(layout.len(), false)?;
    for (i, w) in region.as_mut_slice().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern(i * 8).to_ne_bytes());
    }
    for (offset, len, writable) in layout.expected() {
        if !writable {
            region.make_read_only(offset..offset + len)?;
        }
    }
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    usr1.thread_block()?;
    std::fs::write(ready_file, format!("READY {:#x} {}\n", region.address(), layout.len()))?;
    let verdict = check_file(ready_file);
    loop {
        // An interrupted wait (a checkpoint) simply waits again.
        if usr1.wait() == Ok(Signal::SIGUSR1) {
            let text = match check_self(&region, layout) {
                Ok(()) => "OK\n".to_string(),
                Err(e) => format!("BAD {e:#}\n"),
            };
            std::fs::write(&verdict, text)?;
        }
    }
}

fn check_file(ready_file: &Path) -> PathBuf {
    let mut name = ready_file.as_os_str().to_owned();
    name.push(".check");
    PathBuf::from(name)
}

/// From inside: every word of the memory, and the areas in /proc/self/maps.
fn check_self(region: &AnonRegion, layout: Layout) -> Result<()> {
    for (i, w) in region.as_slice().chunks_exact(8).enumerate() {
        let got = u64::from_ne_bytes(w.try_into()?);
        if got != pattern(i * 8) {
            bail!("word at offset {:#x} is {got:#x}, not {:#x}", i * 8, pattern(i * 8));
        }
    }
    check_areas(std::process::id() as i32, region.address(), layout)
}

/// The areas of `pid` in [address, address + len): exactly the layout's, with their
/// protections.
fn check_areas(pid: i32, address: u64, layout: Layout) -> Result<()> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("reading /proc/{pid}/maps"))?;
    let end = address + layout.len() as u64;
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let Some((s, e)) = range.split_once('-') else { continue };
        let (s, e) = (u64::from_str_radix(s, 16)?, u64::from_str_radix(e, 16)?);
        if e <= address || s >= end {
            continue;
        }
        // An area of the process right before or after may have merged with the first or last.
        let (s, e) = (s.max(address), e.min(end));
        found.push(((s - address) as usize, (e - s) as usize, perms.to_string()));
    }
    let want: Vec<(usize, usize, String)> =
        layout.expected().into_iter().map(|(o, l, w)| (o, l, if w { "rw-p" } else { "r--p" }.to_string())).collect();
    if found != want {
        let first = found.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(found.len().min(want.len()));
        bail!(
            "pid {pid}: {} areas in {address:#x}-{end:#x}, {} expected; first difference at area {first}: {:?} against {:?}",
            found.len(),
            want.len(),
            found.get(first),
            want.get(first)
        );
    }
    Ok(())
}

/// From outside: one word of every page of a sample of areas (and of the last one) read
/// with process_vm_readv.
fn check_words(pid: i32, address: u64, layout: Layout) -> Result<()> {
    use nix::sys::uio::{RemoteIoVec, process_vm_readv};
    let mut word = [0u8; 8];
    let sample = (0..layout.areas).step_by(7).chain([layout.areas - 1]);
    for area in sample {
        for page in 0..AREA / PAGE {
            let offset = area * AREA + page * PAGE + 8 * ((area + page) % (PAGE / 8));
            let remote = [RemoteIoVec { base: address as usize + offset, len: 8 }];
            process_vm_readv(Pid::from_raw(pid), &mut [std::io::IoSliceMut::new(&mut word)], &remote)
                .with_context(|| format!("pid {pid}: reading {:#x}", address as usize + offset))?;
            if u64::from_ne_bytes(word) != pattern(offset) {
                bail!("pid {pid}: restored memory differs at offset {offset:#x} (area {area})");
            }
        }
    }
    Ok(())
}

struct Running {
    child: Child,
    address: u64,
    ready: PathBuf,
}

fn start_workload(layout: Layout, dir: &Path) -> Result<Running> {
    let ready = dir.join("maps.ready");
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(check_file(&ready));
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["bench-maps", "--areas", &layout.areas.to_string()]);
    if !layout.apart {
        command.arg("--one-area");
    }
    let mut child = command.arg(&ready).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
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
            let _ = child.wait();
            bail!("benchmark workload did not get ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let address = line.split_whitespace().nth(1).context("bad READY line")?;
    let address = u64::from_str_radix(address.trim_start_matches("0x"), 16)?;
    let running = Running { child, address, ready };
    if let Err(e) = check_areas(running.child.id() as i32, address, layout) {
        end(running.child.id() as i32);
        return Err(e.context("the workload before the dump"));
    }
    Ok(running)
}

/// Checks a restored workload from /proc and from inside.
fn check_restored(pid: i32, w: &Running, layout: Layout) -> Result<()> {
    check_areas(pid, w.address, layout)?;
    check_words(pid, w.address, layout)?;
    let verdict = check_file(&w.ready);
    kill(Pid::from_raw(pid), Signal::SIGUSR1).with_context(|| format!("signalling pid {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&verdict)
            && text.ends_with('\n')
        {
            if text != "OK\n" {
                bail!("pid {pid} checked itself: {}", text.trim());
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pid {pid} did not check itself within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `pid` and waits, boundedly, until it is gone (a restore needs the pid free).
fn end(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One dump and restore by one tool: wall and CPU times (the tool's own, user + system).
#[derive(Clone, Copy, Default)]
struct Sample {
    dump: Duration,
    restore: Duration,
    dump_cpu: Duration,
    restore_cpu: Duration,
    /// crust's dump less its copy of the pages (from its log); zero for the reference tool.
    but_copy: Duration,
}

/// Dumps a fresh workload of `layout` with `tool`, restores it detached and checks it.
fn measure(tool: &super::tasks::Tool, layout: Layout, dir: &Path) -> Result<Sample> {
    let mut w = start_workload(layout, dir)?;
    let pid = w.child.id() as i32;
    let image = dir.join(format!("{}-image", tool.name));
    let _ = std::fs::remove_dir_all(&image);
    std::fs::create_dir_all(&image)?;
    let warm = super::warm_memory(layout.len() >> 20, false);
    if warm.is_err() {
        end(pid);
    }
    warm?;
    // crust logs its steps' times: the dump without its copy of the pages.
    let env: &[(&str, &str)] = if tool.name == "crust" { &[("CRUST_LOG", "crust=debug")] } else { &[] };
    let dump = tool.run_with_cpu_env(&["dump", "-t", &pid.to_string(), "-o", "dump.log"], &image, env);
    if dump.is_err() {
        end(pid);
    }
    let _ = w.child.wait();
    let (dump, dump_cpu) = dump?;
    let but_copy = if tool.name == "crust" { dump_but_copy(&image.join("dump.log"))? } else { Duration::ZERO };
    super::warm_memory(layout.len() >> 20, false)?;
    let restore = tool.run_with_cpu(&["restore", "-d", "-o", "restore.log"], &image);
    // Both tools restore the same pid.
    let check = restore.as_ref().ok().map(|_| check_restored(pid, &w, layout));
    end(pid);
    let (restore, restore_cpu) = restore?;
    let _ = std::fs::remove_dir_all(&image);
    check.unwrap_or(Ok(())).with_context(|| format!("the process {} restored", tool.name))?;
    Ok(Sample { dump, restore, dump_cpu, restore_cpu, but_copy })
}

/// From crust's debug log of a dump: its total time less the copy of the pages (the part
/// this VM's memory makes vary by hundreds of milliseconds).
fn dump_but_copy(log: &Path) -> Result<Duration> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let number_after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let total = text.lines().filter(|l| l.contains("dumped ")).find_map(|l| number_after(l, "total "));
    let copy = text.lines().filter(|l| l.contains("step=\"dump: copy pages\"")).find_map(|l| number_after(l, "ms="));
    let (Some(total), Some(copy)) = (total, copy) else { bail!("{}: no total or copy time of the dump", log.display()) };
    Ok(Duration::from_secs_f64((total - copy).max(0.0) / 1e3))
}

fn ms(d: Duration) -> String {
    format!("{:7.1} ms", d.as_secs_f64() * 1e3)
}

/// One tool's samples for the many areas and for the one area.
#[derive(Default)]
struct Walls {
    many: Vec<Sample>,
    one: Vec<Sample>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Microseconds per area that the many areas cost over the one: (dump, restore) in wall time
/// and in CPU time.
fn per_area(many: Sample, one: Sample, areas: usize) -> [f64; 4] {
    let us = |a, b| us_per_area(a, b, areas);
    [us(many.dump, one.dump), us(many.restore, one.restore), us(many.dump_cpu, one.dump_cpu), us(many.restore_cpu, one.restore_cpu)]
}

fn us_per_area(many: Duration, one: Duration, areas: usize) -> f64 {
    (many.as_secs_f64() - one.as_secs_f64()) * 1e6 / areas as f64
}

/// The per-area cost of crust's dump less its copy, when measured.
fn but_copy_text(many: Sample, one: Sample, areas: usize) -> String {
    if many.but_copy.is_zero() {
        return String::new();
    }
    format!(
        "; less the copy: {} against {}, {:.2} us per area",
        ms(many.but_copy),
        ms(one.but_copy),
        us_per_area(many.but_copy, one.but_copy, areas)
    )
}

pub fn run(mib: usize, dir: &Path, runs: usize, criu: Option<&Path>) -> Result<()> {
    let areas = mib * (1 << 20) / AREA;
    if areas < 2 {
        bail!("--mib {mib} holds fewer than two areas of 64 KiB");
    }
    super::in_own_dir(dir, "maps", |own| run_in(areas, own, runs, criu))
}

fn run_in(areas: usize, dir: &Path, runs: usize, criu: Option<&Path>) -> Result<()> {
    println!(
        "crust bench: {areas} private anonymous areas of 64 KiB ({} MiB, every other one read-only) against one area of the same memory, images in {}",
        (areas * AREA) >> 20,
        dir.display()
    );
    let tools = super::tasks::Tool::crust_and(criu)?;
    let many = Layout { areas, apart: true };
    let one = Layout { areas, apart: false };
    let mut walls: Vec<Walls> = tools.iter().map(|_| Walls::default()).collect();
    for run in 1..=runs {
        println!("run {run}:");
        for i in super::tasks::turn_order(run, tools.len()) {
            // The many areas and the one area take turns to go first too (this VM's speed drifts).
            let (m, o) = if (run + i) % 2 == 1 {
                let m = measure(&tools[i], many, dir)?;
                (m, measure(&tools[i], one, dir)?)
            } else {
                let o = measure(&tools[i], one, dir)?;
                (measure(&tools[i], many, dir)?, o)
            };
            let [d, r, dc, rc] = per_area(m, o, areas);
            println!(
                "  {:<5} {areas} areas: dump {} restore {}; one area: dump {} restore {}; per area: dump {d:.2} us, restore {r:.2} us (CPU {dc:.2} us, {rc:.2} us){}",
                tools[i].name,
                ms(m.dump),
                ms(m.restore),
                ms(o.dump),
                ms(o.restore),
                but_copy_text(m, o, areas)
            );
            walls[i].many.push(m);
            walls[i].one.push(o);
        }
    }
    for (tool, w) in tools.iter().zip(&walls) {
        let med = |f: &dyn Fn(usize) -> f64| median((0..w.many.len()).map(f).collect());
        let per = |k: usize| med(&|i| per_area(w.many[i], w.one[i], areas)[k]);
        println!(
            "median of {runs} runs, {}: per area dump {:.2} us, restore {:.2} us; CPU per area dump {:.2} us, restore {:.2} us ({areas} areas: dump {:.1} ms, restore {:.1} ms; one area: dump {:.1} ms, restore {:.1} ms)",
            tool.name,
            per(0),
            per(1),
            per(2),
            per(3),
            med(&|i| w.many[i].dump.as_secs_f64() * 1e3),
            med(&|i| w.many[i].restore.as_secs_f64() * 1e3),
            med(&|i| w.one[i].dump.as_secs_f64() * 1e3),
            med(&|i| w.one[i].restore.as_secs_f64() * 1e3),
        );
        if tool.name == "crust" {
            let per = median((0..w.many.len()).map(|i| us_per_area(w.many[i].but_copy, w.one[i].but_copy, areas)).collect());
            println!("  crust: per area, dump less its copy of the pages (from its log): {per:.2} us (median)");
        }
        let [md, mr, ..] = per_area(summary(&w.many, median), summary(&w.one, median), areas);
        let [fd, fr, fdc, frc] = per_area(summary(&w.many, fastest), summary(&w.one, fastest), areas);
        println!(
            "  {}: per area from the medians: dump {md:.2} us, restore {mr:.2} us; from the fastest runs: dump {fd:.2} us, restore {fr:.2} us (CPU {fdc:.2} us, {frc:.2} us)",
            tool.name
        );
    }
    Ok(())
}

fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// Each figure of `samples` summarised by `how` (the median, the fastest) on its own.
fn summary(samples: &[Sample], how: fn(Vec<f64>) -> f64) -> Sample {
    let of = |f: fn(&Sample) -> Duration| Duration::from_secs_f64(how(samples.iter().map(|s| f(s).as_secs_f64()).collect()));
    Sample {
        dump: of(|s| s.dump),
        restore: of(|s| s.restore),
        dump_cpu: of(|s| s.dump_cpu),
        restore_cpu: of(|s| s.restore_cpu),
        but_copy: of(|s| s.but_copy),
    }
}
