//! Terminals of a shell job (dump --shell-job): the console, pseudo-terminal slaves and
//! /dev/tty. Restore connects each to crust's own controlling terminal, the terminal of the
//! shell that runs `crust restore --shell-job`: the restored tree lives in crust's session.
//! The terminal's settings (termios with its control characters, window size) are recorded
//! and given to crust's terminal before the job resumes: a job that had set it raw (less, top,
//! an editor) gets it raw again.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::common::{ShellJob, settings_from_record, settings_record};
use super::{Dumped, FdKind, FdSource, KindState, Together, WholeTree};
use crate::image::proto::{OpenFile, OpenFiles, Tty, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::terminal;

pub struct Terminals;

impl FdKind for Terminals {
    type Record = Tty;
    const NAME: &'static str = "terminal";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&Tty> {
        match kind {
            open_file::Kind::Tty(t) => Some(t),
            _ => None,
        }
    }

    fn into_kind(record: Tty) -> open_file::Kind {
        open_file::Kind::Tty(record)
    }

    fn recognises(src: &FdSource) -> bool {
        src.file_type() == libc::S_IFCHR && is_terminal(src.meta.rdev())
    }

    /// The console without --shell-job. A pseudo-terminal slave is the pseudo-terminal kind's,
    /// and /dev/tty may be the terminal of a session of the tree: both are judged with the
    /// whole tree.
    fn refuse_early(src: &FdSource) -> Result<()> {
        if !src.shell_job && libc::major(src.meta.rdev()) == 4 {
            return Err(not_a_shell_job(src.pid, src.fd, src.link));
        }
        Ok(())
    }

    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<Tty>> {
        Self::refuse_early(src)?;
        state.get::<ShellJob>().0 = src.shell_job;
        let what =
            |e: crate::sys::SysError| anyhow::Error::from(e).context(format!("pid {} fd {}: the terminal {}", src.pid, src.fd, src.link));
        let settings = terminal::settings(src.copy.as_fd()).map_err(what)?;
        // /dev/tty is the terminal of the session that opened it: maybe a pair of the tree's
        // (TIOCGSID answers only a process of that session: the holder's own session it is).
        let session = match src.meta.rdev() == libc::makedev(5, 0) {
            true => holder_session(src.pid).with_context(|| format!("pid {}: its session", src.pid))?,
            false => 0,
        };
        Ok(Dumped::alone(Tty { path: src.link.to_string(), rdev: src.meta.rdev(), settings: Some(settings_record(&settings)), session }))
    }

    /// A /dev/tty whose session's terminal is a pseudo-terminal pair of the tree stays one;
    /// every other terminal is the shell job's, refused without --shell-job.
    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, state: &mut KindState) -> Result<()> {
        let shell_job = state.get::<ShellJob>().0;
        let pair_sessions: BTreeSet<u32> = files
            .iter()
            .filter_map(|f| match &f.kind {
                Some(open_file::Kind::Pty(p)) if p.master && p.session != 0 => Some(p.session),
                _ => None,
            })
            .collect();
        for file in files.iter_mut() {
            let Some(open_file::Kind::Tty(tty)) = &mut file.kind else { continue };
            if tty.session != 0 && pair_sessions.contains(&tty.session) {
                continue;
            }
            tty.session = 0;
            if !shell_job {
                let &(pid, fd) = tree.holders.get(&file.id).and_then(|h| h.first()).context("a terminal without holder")?;
                return Err(not_a_shell_job(pid, fd, &tty.path));
            }
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Tty, _together: &mut Together) -> Result<i32> {
        // A shell job lives in crust's session: /dev/tty is crust's terminal. /dev/tty of a
        // session of the tree is that session's terminal, taken again by its leader already:
        // opened by a process of that session, never another terminal.
        let pid = ctx.pid.as_raw();
        if record.session != 0 && holder_session(pid)? != record.session {
            bail!(
                "/dev/tty of session {} would be opened by pid {pid}, of another session (the processes sharing it are in \
                 different sessions); crust cannot give it that terminal",
                record.session
            );
        }
        let open_flags = file.flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) | libc::O_NOCTTY;
        ctx.open_in_process("/dev/tty", open_flags | libc::O_CLOEXEC)
    }

    fn describe(record: &Tty) -> String {
        format!("terminal {}", record.path)
    }
}

/// Terminals: the console (major 4), pseudo-terminal slaves (136-143) and /dev/tty (5:0).
fn is_terminal(rdev: u64) -> bool {
    let major = libc::major(rdev);
    major == 4 || (136..=143).contains(&major) || rdev == libc::makedev(5, 0)
}

/// The session of `pid` (/proc/PID/stat).
fn holder_session(pid: i32) -> Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the comm: state(0) ppid(1) pgrp(2) session(3).
    let sid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(3)).context("no session field")?;
    Ok(sid.parse()?)
}

fn not_a_shell_job(pid: i32, fd: i32, path: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "pid {pid} fd {fd}: a terminal ({path}) outside the dumped processes: a program started from a shell is dumped with --shell-job (-j)"
    )
}

/// Whether the image holds terminals of a shell job.
pub fn has_terminals(record: &OpenFiles) -> bool {
    record.open_files.iter().any(|f| f.kind.as_ref().and_then(Terminals::record_of).is_some_and(|t| t.session == 0))
}

/// The settings the job's terminal had (those of its first terminal description that has
/// them; images from before they were recorded have none).
pub fn job_settings(record: &OpenFiles) -> Result<Option<terminal::Settings>> {
    let first = record.open_files.iter().find_map(|f| {
        let tty = f.kind.as_ref().and_then(Terminals::record_of).filter(|t| t.session == 0)?;
        Some((f.id, tty.settings.as_ref()?))
    });
    first
        .map(|(id, s)| settings_from_record(s).with_context(|| format!("open file #{id} (a terminal) in {}", crate::image::OPEN_FILES)))
        .transpose()
}
