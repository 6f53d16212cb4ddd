//! Terminals of a shell job (dump --shell-job): the console, pseudo-terminal slaves and
//! /dev/tty. Restore connects each to crust's own controlling terminal, the terminal of the
//! shell that runs `crust restore --shell-job`: the restored tree lives in crust's session.

use anyhow::Result;

use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{OpenFile, OpenFiles, Tty, open_file};
use crate::kinds::RestoreCtx;

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
        Ok(Dumped::alone(Tty { path: src.link.to_string(), rdev: src.meta.rdev() }))
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
