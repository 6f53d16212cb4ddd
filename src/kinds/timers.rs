//! Interval timers (setitimer: real, virtual, profiling; alarm() is the real one) with the
//! time they had left at the freeze.

use anyhow::{Context, Result};

use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{IntervalTimer, IntervalTimers};

pub struct Timers;

const WHICH: [(u64, &str); 3] =
    [(libc::ITIMER_REAL as u64, "ITIMER_REAL"), (libc::ITIMER_VIRTUAL as u64, "ITIMER_VIRTUAL"), (libc::ITIMER_PROF as u64, "ITIMER_PROF")];

fn to_us(sec: u64, usec: u64) -> u64 {
    sec * 1_000_000 + usec
}

/// The record of the three timers as getitimer gave them (struct itimerval as 4 words each, in
/// the order of [`WHICH`]).
pub fn from_itimervals(words: &[[u64; 4]; 3]) -> IntervalTimers {
    let timer = |w: &[u64; 4]| IntervalTimer { interval_us: to_us(w[0], w[1]), value_us: to_us(w[2], w[3]) };
    IntervalTimers { real: Some(timer(&words[0])), r#virtual: Some(timer(&words[1])), prof: Some(timer(&words[2])) }
}

impl Kind for Timers {
    type Record = IntervalTimers;

    fn dump(ctx: &mut DumpCtx) -> Result<IntervalTimers> {
        let mut words = [[0u64; 4]; 3];
        for ((which, name), w) in WHICH.into_iter().zip(&mut words) {
            let addr = ctx.remote.put(0, &[0u8; 32])?;
            ctx.remote.syscall("getitimer", libc::SYS_getitimer, &[which, addr]).with_context(|| name)?;
            let mut raw = [0u8; 32];
            ctx.remote.get(0, &mut raw)?;
            *w = std::array::from_fn(|i| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap()));
        }
        Ok(from_itimervals(&words))
    }

    fn restore(ctx: &mut RestoreCtx, record: &IntervalTimers) -> Result<()> {
        for ((which, name), timer) in WHICH.iter().zip([&record.real, &record.r#virtual, &record.prof]) {
            let Some(t) = timer else { continue };
            if t.value_us == 0 && t.interval_us == 0 {
                continue;
            }
            let mut raw = Vec::new();
            for v in [t.interval_us / 1_000_000, t.interval_us % 1_000_000, t.value_us / 1_000_000, t.value_us % 1_000_000] {
                raw.extend_from_slice(&v.to_ne_bytes());
            }
            let addr = ctx.remote.put(0, &raw)?;
            ctx.remote.syscall("setitimer", libc::SYS_setitimer, &[*which, addr, 0]).with_context(|| format!("restoring {name}"))?;
        }
        Ok(())
    }
}
