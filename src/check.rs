//! `crust check`: tries every kernel feature crust relies on, one line each, and a verdict.

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::sys::{clone3, pidfd, ptrace};

pub struct CheckLine {
    pub feature: &'static str,
    pub result: Result<String>,
}

/// A child that waits for nothing, killed when dropped.
struct Scratch(Pid);

impl Scratch {
    fn spawn() -> Result<Self> {
        let child = std::process::Command::new("sleep").arg("60").spawn().context("spawning sleep")?;
        Ok(Scratch(Pid::from_raw(child.id() as i32)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = waitpid(self.0, Some(WaitPidFlag::__WALL));
    }
}

fn check_ptrace() -> Result<String> {
    let s = Scratch::spawn()?;
    ptrace::seize_and_interrupt(s.0, true)?;
    let regs = ptrace::get_registers(s.0)?;
    let xstate = ptrace::get_xstate(s.0)?;
    ptrace::detach(s.0)?;
    Ok(format!("seize+interrupt, GETREGS (rip {:#x}), XSTATE ({} bytes)", regs.rip, xstate.len()))
}

fn check_clone3_set_tid() -> Result<String> {
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?.trim().parse()?;
    let mut candidate = pid_max - 1000;
    while std::path::Path::new(&format!("/proc/{candidate}")).exists() {
        candidate -= 1;
    }
    let child = clone3::fork_with_pid(candidate)?;
    let _ = kill(child, Signal::SIGKILL);
    let _ = waitpid(child, None);
    if child.as_raw() != candidate {
        bail!("asked for pid {candidate}, got {child}");
    }
    Ok(format!("created pid {candidate} on request"))
}

fn check_pidfd_getfd() -> Result<String> {
    let s = Scratch::spawn()?;
    let pfd = pidfd::pidfd_open(s.0.as_raw())?;
    let _copy = pidfd::pidfd_getfd(&pfd, s.0.as_raw(), 0)?;
    Ok("copied fd 0 of a child".into())
}

fn check_kcmp() -> Result<String> {
    let me = std::process::id() as i32;
    if !pidfd::same_open_file(me, 0, me, 0)? {
        bail!("kcmp says fd 0 differs from itself");
    }
    Ok("KCMP_FILE works".into())
}

fn check_mm_map() -> Result<String> {
    let size = crate::sys::prctl_mm_map_size().map_err(|e| anyhow::anyhow!("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): {e}"))?;
    Ok(format!("struct prctl_mm_map is {size} bytes"))
}

fn check_process_vm_readv() -> Result<String> {
    let s = Scratch::spawn()?;
    let maps = procfs::process::Process::new(s.0.as_raw())?.maps()?;
    let first = maps.iter().next().context("child has no mappings")?;
    let mut buf = [0u8; 16];
    let remote = [nix::sys::uio::RemoteIoVec { base: first.address.0 as usize, len: 16 }];
    nix::sys::uio::process_vm_readv(s.0, &mut [std::io::IoSliceMut::new(&mut buf)], &remote)?;
    Ok("read another process's memory".into())
}

fn check_pagemap() -> Result<String> {
    let pm = crate::sys::pagemap::PageMap::open(std::process::id() as i32)?;
    let stack_var = 0u64;
    let addr = &stack_var as *const u64 as u64 & !(crate::sys::PAGE_SIZE - 1);
    let mut present = 0;
    pm.for_each_run(addr, addr + crate::sys::PAGE_SIZE, crate::sys::pagemap::Wanted::Resident, |_, n| present += n)?;
    if present != 1 {
        bail!("a page of our own stack is not reported present");
    }
    Ok("present/anonymous bits readable".into())
}

fn check_vdso() -> Result<String> {
    let ip = crate::kinds::memory::syscall_instruction_in_vdso(std::process::id() as i32)?;
    Ok(format!("syscall instruction at {ip:#x}; kernel {}", crate::sys::kernel_release()))
}

fn check_rseq() -> Result<String> {
    let s = Scratch::spawn()?;
    ptrace::seize_and_interrupt(s.0, true)?;
    let r = ptrace::get_rseq(s.0)?;
    ptrace::detach(s.0)?;
    Ok(format!("PTRACE_GET_RSEQ_CONFIGURATION (a child's area: {:#x}, {} bytes)", r.address, r.length))
}

fn check_map_files() -> Result<String> {
    let me = std::process::id();
    let n = std::fs::read_dir(format!("/proc/{me}/map_files"))?.count();
    Ok(format!("{n} entries for crust itself"))
}

pub fn run_checks() -> Vec<CheckLine> {
    let checks: [(&'static str, fn() -> Result<String>); 10] = [
        ("ptrace (seize, interrupt, registers, xstate)", check_ptrace),
        ("clone3 with set_tid", check_clone3_set_tid),
        ("pidfd_open + pidfd_getfd", check_pidfd_getfd),
        ("kcmp", check_kcmp),
        ("prctl PR_SET_MM_MAP", check_mm_map),
        ("process_vm_readv", check_process_vm_readv),
        ("/proc/PID/pagemap", check_pagemap),
        ("vDSO", check_vdso),
        ("rseq configuration", check_rseq),
        ("/proc/PID/map_files", check_map_files),
    ];
    checks.into_iter().map(|(feature, f)| CheckLine { feature, result: f() }).collect()
}
