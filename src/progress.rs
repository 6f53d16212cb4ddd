//! Progress for people: a spinner with the current step on a terminal, log lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})").unwrap());
            bar.set_prefix(what);
            bar
        });
        Progress { bar, what }
    }

    pub fn step(&self, msg: String) {
        info!(step = %msg, "{}", self.what);
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
            bar.tick();
        }
    }

    pub fn finish(&self, msg: String) {
        info!("{}: {msg}", self.what);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
