//! What a dump can only learn by asking each process (remote calls: nothing in /proc shows it),
//! asked of every process of the tree at once: each question is one round of stops for the
//! whole tree (see RemoteTask::syscall_each), not one per process; where the process can run
//! them by itself, all its questions are one go (RemoteTask::syscalls_each). Nothing asked here can
//! change while the tree is frozen, except the real interval timer, which keeps running: it is
//! read as near to the freeze as the rest.

use anyhow::{Context, Result, bail};

use super::registers::OwnWords;
use crate::sys::remote::RemoteTask;

/// The answers of one process (its leader thread).
pub struct Asked {
    pub pdeath_signal: u32,
    pub dumpable: u32,
    pub thp_disabled: bool,
    pub child_subreaper: u32,
    /// prctl(PR_GET_MDWE): memory-deny-write-execute flags; 0 when the kernel cannot tell.
    pub mdwe: u32,
    /// getitimer of ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF: struct itimerval as 4 words.
    pub itimers: [[u64; 4]; 3],
    /// membarrier(GET_REGISTRATIONS); 0 when the kernel cannot tell.
    pub membarrier_registrations: u32,
    /// The leader's alternate stack and clear_child_tid.
    pub own: OwnWords,
    /// The program break (brk(0)).
    pub brk: u64,
}

// Where each answer lands in the process's scratch area.
const PDEATH_AT: u64 = 0;
const SUBREAPER_AT: u64 = 8;
const ITIMERS_AT: u64 = 16;
const ITIMER_LEN: u64 = 32;
const OWN_AT: u64 = ITIMERS_AT + 3 * ITIMER_LEN;
const ANSWERS_LEN: usize = (OWN_AT + super::registers::OWN_WORDS_LEN) as usize;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
const PR_GET_MDWE: &str = "prctl(PR_GET_MDWE)";

/// One question: its name, and the call that asks it of a process whose answers land at `base`.
type Question = (&'static str, Box<dyn Fn(u64) -> (i64, Vec<u64>)>);

fn questions() -> Vec<Question> {
    let mut q: Vec<Question> = vec![
        ("prctl(PR_GET_PDEATHSIG)", Box::new(move |b| (libc::SYS_prctl, vec![libc::PR_GET_PDEATHSIG as u64, b + PDEATH_AT]))),
        ("prctl(PR_GET_DUMPABLE)", Box::new(move |_| (libc::SYS_prctl, vec![libc::PR_GET_DUMPABLE as u64]))),
        ("prctl(PR_GET_THP_DISABLE)", Box::new(move |_| (libc::SYS_prctl, vec![libc::PR_GET_THP_DISABLE as u64]))),
        (
            "prctl(PR_GET_CHILD_SUBREAPER)",
            Box::new(move |b| (libc::SYS_prctl, vec![libc::PR_GET_CHILD_SUBREAPER as u64, b + SUBREAPER_AT])),
        ),
        (PR_GET_MDWE, Box::new(move |_| (libc::SYS_prctl, vec![libc::PR_GET_MDWE as u64, 0, 0, 0, 0]))),
    ];
    for (i, which) in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF].into_iter().enumerate() {
        let at = ITIMERS_AT + i as u64 * ITIMER_LEN;
        q.push(("getitimer", Box::new(move |b| (libc::SYS_getitimer, vec![which as u64, b + at]))));
    }
    q.push(("membarrier(GET_REGISTRATIONS)", Box::new(|_| (libc::SYS_membarrier, vec![MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]))));
    q.push(("brk(0)", Box::new(|_| (libc::SYS_brk, vec![0]))));
    q.push(("sigaltstack", Box::new(|b| (libc::SYS_sigaltstack, vec![0, b + OWN_AT]))));
    q.push(("prctl(PR_GET_TID_ADDRESS)", Box::new(|b| (libc::SYS_prctl, vec![libc::PR_GET_TID_ADDRESS as u64, b + OWN_AT + 24]))));
    q
}

/// Asks every process of `leaders` (each with its own scratch area) all the questions.
pub fn ask_all(leaders: &mut [&mut RemoteTask]) -> Result<Vec<Asked>> {
    let mut bases = Vec::with_capacity(leaders.len());
    for r in leaders.iter() {
        bases.push(r.put(0, &[0u8; ANSWERS_LEN])?);
    }
    // Every question of a process asked in one go (RemoteTask::syscalls_each).
    let questions = questions();
    let calls: Vec<Vec<(i64, Vec<u64>)>> = bases.iter().map(|b| questions.iter().map(|(_, call)| call(*b)).collect()).collect();
    let results = RemoteTask::syscalls_each(leaders, &calls).context("remote calls asking each process its state")?;
    // The answers given as return values, by question, then by process.
    let mut returned: std::collections::HashMap<&str, Vec<i64>> = std::collections::HashMap::new();
    for (q, (name, _)) in questions.iter().enumerate() {
        let mut of_each: Vec<i64> = results.iter().map(|r| r[q]).collect();
        // Before 6.3 the kernel cannot tell the registrations (EINVAL): none are restored.
        if name.starts_with("membarrier") {
            of_each.iter_mut().for_each(|r| *r = (*r).max(0));
        }
        // Nor has it MDWE (EINVAL): a process can have none.
        if *name == PR_GET_MDWE {
            of_each.iter_mut().filter(|r| **r == -(libc::EINVAL as i64)).for_each(|r| *r = 0);
        }
        if let Some((r, ret)) = leaders.iter().zip(&of_each).find(|(_, ret)| (-4095..0).contains(*ret)) {
            bail!("pid {}: remote {name}: {}", r.pid(), nix::errno::Errno::from_raw(-*ret as i32));
        }
        returned.insert(name, of_each);
    }
    let mut answers = Vec::with_capacity(leaders.len());
    for (i, r) in leaders.iter().enumerate() {
        let mut raw = [0u8; ANSWERS_LEN];
        r.get(0, &mut raw)?;
        let ret = |name: &str| returned.get(name).map_or(0, |r| r[i]);
        let word = |at: u64| u64::from_ne_bytes(raw[at as usize..at as usize + 8].try_into().unwrap());
        let itimer = |k: u64| std::array::from_fn(|w| word(ITIMERS_AT + k * ITIMER_LEN + w as u64 * 8));
        answers.push(Asked {
            pdeath_signal: word(PDEATH_AT) as u32,
            dumpable: ret("prctl(PR_GET_DUMPABLE)") as u32,
            thp_disabled: ret("prctl(PR_GET_THP_DISABLE)") != 0,
            child_subreaper: word(SUBREAPER_AT) as u32,
            mdwe: ret(PR_GET_MDWE) as u32,
            itimers: [itimer(0), itimer(1), itimer(2)],
            membarrier_registrations: ret("membarrier(GET_REGISTRATIONS)") as u32,
            own: super::registers::own_words_at(&raw[OWN_AT as usize..]),
            brk: ret("brk(0)") as u64,
        });
    }
    Ok(answers)
}
