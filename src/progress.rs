//! Progress for people: a spinner with the current step on a terminal, log lines otherwise.
//!
//! On a terminal the spinner turns on its own (a drawing thread ticks it), so it keeps moving
//! while crust waits in a long system call such as a process writing its pages, and shows the
//! bytes the memory step moved so far ([`copied`]).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressState, ProgressStyle};
use tracing::info;

/// Bytes of pages moved in the current step.
static COPIED: AtomicU64 = AtomicU64::new(0);

/// Counts `bytes` of pages moved between a process and its page file (one atomic add per
/// batch: nothing the copy would notice).
pub fn copied(bytes: u64) {
    COPIED.fetch_add(bytes, Ordering::Relaxed);
}

pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
}

/// The spinner's `{copied}`: ", 1.50 GiB copied" once the step moved pages.
fn show_copied(_: &ProgressState, w: &mut dyn std::fmt::Write) {
    let n = COPIED.load(Ordering::Relaxed);
    if n > 0 {
        let _ = write!(w, ", {} copied", HumanBytes(n));
    }
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("{spinner} {prefix}: {msg}{copied} ({elapsed})")
                .expect("the spinner template is valid")
                .with_key("copied", show_copied);
            let bar = ProgressBar::new_spinner().with_style(style).with_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { bar, what }
    }

    pub fn step(&self, msg: String) {
        info!(step = %msg, "{}", self.what);
        COPIED.store(0, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
        }
    }

    pub fn finish(&self, msg: String) {
        info!("{}: {msg}", self.what);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// A step that failed leaves no spinner behind the error line.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
