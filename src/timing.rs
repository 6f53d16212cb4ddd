//! Where the time of a dump or restore goes: named steps are timed and their totals logged at
//! the end (`CRUST_LOG=crust=debug`), so that the cost per process and per thread can be
//! measured stage by stage (docs/speed-history.md, "Cost per process and per thread").

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Total time and count of every step timed since the last [`report`].
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u32)>> = Mutex::new(BTreeMap::new());

/// Runs `f`, adding its time to the total of step `name`.
pub fn step<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    add(name, started.elapsed());
    out
}

/// Adds `took` to the total of step `name` (a step timed by its caller, whose body does not
/// fit a closure).
pub fn add(name: &'static str, took: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    let entry = totals.entry(name).or_default();
    entry.0 += took;
    entry.1 += 1;
}

/// A step timed from its making to its drop (a step of many exits).
pub struct Timed(&'static str, Instant);

impl Timed {
    pub fn new(name: &'static str) -> Timed {
        Timed(name, Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        add(self.0, self.1.elapsed());
    }
}

/// Logs the totals of every step (at debug level), longest first, and starts again.
pub fn report(what: &str) {
    let totals = std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|p| p.into_inner()));
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let mut steps: Vec<_> = totals.into_iter().collect();
    steps.sort_by_key(|s| std::cmp::Reverse(s.1.0));
    for (name, (took, count)) in steps {
        tracing::debug!(step = name, count, ms = took.as_secs_f64() * 1e3, "{what}: time spent");
    }
}
