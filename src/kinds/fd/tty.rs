//! Terminals of a shell job (dump --shell-job): the console, pseudo-terminal slaves and
//! /dev/tty. Restore connects each to crust's own controlling terminal, the terminal of the
//! shell that runs `crust restore --shell-job`: the restored tree lives in crust's session.
//! The terminal's settings (termios with its control characters, window size) are recorded
//! and given to crust's terminal before the job resumes: a job that had set it raw (less, top,
//! an editor) gets it raw again.

use std::os::fd::AsFd;

use anyhow::{Context, Result};

use super::common::{settings_from_record, settings_record};
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{OpenFile, OpenFiles, Tty, open_file};
use crate::kinds::RestoreCtx;
use crate::sys::terminal;

pub struct Terminals;

impl FdKind for Terminals {
    type Record = Tty;
    const NAME: &'static str = "terminal";

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
        use std::os::unix::fs::MetadataExt;
        src.file_type() == libc::S_IFCHR && is_terminal(src.meta.rdev())
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        if !src.shell_job {
            return Err(anyhow::anyhow!(
                "pid {} fd {}: a terminal ({}): a program started from a shell is dumped with --shell-job (-j)",
                src.pid,
                src.fd,
                src.link
            ));
        }
        Ok(())
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<Tty>> {
        use std::os::unix::fs::MetadataExt;
        Self::refuse_early(src)?;
        let settings = terminal::settings(src.copy.as_fd())
            .with_context(|| format!("pid {} fd {}: the settings of the terminal {}", src.pid, src.fd, src.link))?;
        Ok(Dumped::alone(Tty { path: src.link.to_string(), rdev: src.meta.rdev(), settings: Some(settings_record(&settings)) }))
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, _record: &Tty, _together: &mut Together) -> Result<i32> {
        // The restored tree lives in crust's session: /dev/tty is crust's terminal.
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

/// Whether the image holds terminals of a shell job.
pub fn has_terminals(record: &OpenFiles) -> bool {
    record.open_files.iter().any(|f| f.kind.as_ref().is_some_and(|k| Terminals::record_of(k).is_some()))
}

/// The settings the job's terminal had (those of its first terminal description that has
/// them; images from before they were recorded have none).
pub fn job_settings(record: &OpenFiles) -> Result<Option<terminal::Settings>> {
    let first = record.open_files.iter().find_map(|f| {
        let tty = f.kind.as_ref().and_then(Terminals::record_of)?;
        Some((f.id, tty.settings.as_ref()?))
    });
    first
        .map(|(id, s)| settings_from_record(s).with_context(|| format!("open file #{id} (a terminal) in {}", crate::image::OPEN_FILES)))
        .transpose()
}
