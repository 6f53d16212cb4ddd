//! `crust bench`: dump and restore a process holding N MiB of touched anonymous memory, next to
//! this machine's floors for the same amount of data, measured in the same run:
//!
//! - dump floor: moving the bytes out of a process into a new file on the image file system,
//!   the faster of vmsplice+splice (the process gifts its pages to a pipe) and
//!   process_vm_readv+write (another process copies them out);
//! - restore floor: reading the file into fresh anonymous memory.
//!
//! Figures are ratios to the floors, never absolute claims: this VM's memory speed varies.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;

use crate::sys::region::AnonRegion;

const MIB: usize = 1 << 20;
const PATTERN_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Runs as the benchmarked process: maps `mib` MiB, asks for huge pages, writes a pattern to
/// every word, says READY on stdout, then sleeps until killed.
pub fn workload(mib: usize, ready_file: &Path) -> Result<()> {
    crate::sys::close_inherited_fds()?;
    let len = mib * MIB;
    let mut region = AnonRegion::new_huge(len)?;
    for (i, w) in region.as_mut_slice().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64 ^ PATTERN_SEED).to_ne_bytes());
    }
    // Written to a file, then closed: the process keeps no descriptor to the benchmark.
    std::fs::write(ready_file, format!("READY {:#x} {}\n", region.address(), len))?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

struct Workload {
    child: Child,
    address: u64,
    len: u64,
}

fn start_workload(mib: usize, dir: &Path) -> Result<Workload> {
    let exe = std::env::current_exe()?;
    let ready = dir.join("workload.ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(exe)
        .args(["bench-workload", &mib.to_string()])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        if let Ok(line) = std::fs::read_to_string(&ready) {
            if line.ends_with('\n') {
                break line;
            }
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
    Ok(Workload { child, address, len })
}

fn anon_huge_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Floor 1a: the process gifts its pages to a pipe (vmsplice), the pipe is spliced to the file.
fn floor_vmsplice(dir: &Path, mib: usize) -> Result<Duration> {
    use nix::fcntl::{SpliceFFlags, splice};
    let len = mib * MIB;
    let mut region = AnonRegion::new_huge(len)?;
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

/// Floor 2: read a file of the same size into fresh anonymous memory (huge-page advised).
fn floor_read_into_memory(dir: &Path, mib: usize) -> Result<Duration> {
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
    // Crust restores right after the dumped process freed the same amount of memory, which
    // this VM has not yet handed back to its host; give the floor the same warm start.
    let mut warm = AnonRegion::new_huge(len)?;
    warm.as_mut_slice().iter_mut().step_by(4096).for_each(|b| *b = 1);
    drop(warm);
    let mut region = AnonRegion::new_huge(len)?;
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
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    std::fs::create_dir_all(&opts.dir)?;
    let fmt = |d: Duration| format!("{:8.1} ms", d.as_secs_f64() * 1e3);
    let gib_s = |d: Duration| opts.mib as f64 / 1024.0 / d.as_secs_f64();
    println!("crust bench: {} MiB of touched anonymous memory, images in {}", opts.mib, opts.dir.display());
    let mut dump_ratios = Vec::new();
    let mut frozen_ratios = Vec::new();
    let mut restore_ratios = Vec::new();
    for run in 1..=opts.runs {
        let mut w = start_workload(opts.mib, &opts.dir)?;
        let pid = w.child.id();
        let huge_before = anon_huge_kib(pid);

        // Floors first, side by side with the real thing, in the same run.
        let f_vmsplice = floor_vmsplice(&opts.dir, opts.mib)?;
        let f_readv = floor_process_vm_readv(&opts.dir, &w)?;
        let f_dump = f_vmsplice.min(f_readv);
        let f_restore = floor_read_into_memory(&opts.dir, opts.mib)?;

        let image = opts.dir.join("image");
        let _ = std::fs::remove_dir_all(&image);
        let dump = crate::dump::dump(pid as i32, &image, &crate::dump::DumpOptions::default())?;
        let _ = w.child.wait();
        let started = Instant::now();
        let restored = crate::restore::restore(&image, &crate::restore::RestoreOptions { detach: true, ..Default::default() })?;
        let restore_time = started.elapsed();
        // The floor for restore is measured on both sides of it, the better one kept: this VM's
        // memory gets cheaper or dearer from one second to the next.
        let f_restore = f_restore.min(floor_read_into_memory(&opts.dir, opts.mib)?);
        let crate::restore::Restored::Running { pid: new_pid, .. } = restored else { bail!("restore did not detach") };
        let huge_after = anon_huge_kib(new_pid as u32);
        let check = verify_pattern(new_pid, w.address, w.len);
        let _ = nix::sys::signal::kill(Pid::from_raw(new_pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(new_pid), None);
        check?;
        let _ = std::fs::remove_dir_all(&image);

        dump_ratios.push(dump.total.as_secs_f64() / f_dump.as_secs_f64());
        frozen_ratios.push(dump.frozen.as_secs_f64() / f_dump.as_secs_f64());
        restore_ratios.push(restore_time.as_secs_f64() / f_restore.as_secs_f64());
        println!("run {run}:");
        println!("  floor dump   vmsplice+splice        {} ({:5.2} GiB/s)", fmt(f_vmsplice), gib_s(f_vmsplice));
        println!("  floor dump   process_vm_readv+write {} ({:5.2} GiB/s)", fmt(f_readv), gib_s(f_readv));
        println!("  floor restore read into anon memory {} ({:5.2} GiB/s)", fmt(f_restore), gib_s(f_restore));
        println!(
            "  crust dump   (frozen {})       {}  = {:.2}x the dump floor; frozen {:.2}x",
            fmt(dump.frozen).trim(),
            fmt(dump.total),
            dump.total.as_secs_f64() / f_dump.as_secs_f64(),
            dump.frozen.as_secs_f64() / f_dump.as_secs_f64()
        );
        println!(
            "  crust restore                       {}  = {:.2}x the restore floor",
            fmt(restore_time),
            restore_time.as_secs_f64() / f_restore.as_secs_f64()
        );
        println!(
            "  huge pages   before {} MiB, after restore {} MiB; memory pattern verified",
            huge_before / 1024,
            huge_after / 1024
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "median of {} runs: dump {:.2}x the dump floor (frozen {:.2}x), restore {:.2}x the restore floor",
        opts.runs,
        median(&mut dump_ratios),
        median(&mut frozen_ratios),
        median(&mut restore_ratios)
    );
    Ok(())
}
