//! /proc/PID/smaps of every frozen process, read ahead by a worker thread while crust's tracer
//! thread collects the other kinds (files, dispositions, what is asked of the whole tree).
//!
//! Reading smaps makes the kernel walk every page table of the process (for Rss, Pss...):
//! about 10 ms per GiB of 4 KiB pages, all of it while the tree is frozen. It needs no ptrace,
//! only the freeze (no mapping of a frozen process changes: crust maps its scratch area before
//! the read starts and changes no other mapping while it collects), so it overlaps the
//! injected system calls, which mostly wait for the tracee to be scheduled. The memory dump
//! takes the text when it needs it ([`SmapsAhead::take`]); a process the worker has not
//! reached yet is read by the taker itself. With `dump -R`, the worker and the taker also
//! write-protect the process's memory whenever they have nothing else to do (uffd_dump).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result};

/// The read-ahead of one dump, kept in the fd table's kind state (one per dump).
#[derive(Default)]
pub struct SmapsAhead(Option<Arc<Shared>>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Processes not started yet, in the order the dump collects them.
    queue: VecDeque<i32>,
    /// Started by the worker: None while it reads.
    slots: HashMap<i32, Option<std::io::Result<String>>>,
}

impl SmapsAhead {
    /// Starts reading the smaps of `pids` (frozen, in collecting order) in a worker thread.
    /// One worker: the other core is left to the tracer and its tracees.
    pub fn start(&mut self, pids: &[i32]) {
        let shared = Arc::new(Shared::default());
        shared.state.lock().unwrap().queue = pids.iter().copied().collect();
        let worker = shared.clone();
        match std::thread::Builder::new().name("crust-smaps".into()).spawn(move || read_ahead(&worker)) {
            Ok(_) => self.0 = Some(shared),
            // Each process is read when its memory is dumped, as before.
            Err(e) => tracing::warn!("could not start a thread to read /proc/PID/smaps ahead: {e}"),
        }
    }

    /// The smaps text of `pid`: the worker's, waiting for it if it reads it now; read here if
    /// it was not started.
    pub fn take(&mut self, pid: i32) -> Result<String> {
        let read_here = || read_smaps(pid).with_context(|| format!("pid {pid}: reading /proc/{pid}/smaps"));
        let Some(shared) = &self.0 else { return read_here() };
        let mut state = shared.state.lock().unwrap();
        state.queue.retain(|&p| p != pid);
        if !state.slots.contains_key(&pid) {
            drop(state);
            return read_here();
        }
        loop {
            if let Some(Some(read)) = state.slots.get_mut(&pid).map(Option::take) {
                state.slots.remove(&pid);
                return read.with_context(|| format!("pid {pid}: reading /proc/{pid}/smaps (read ahead)"));
            }
            // Meanwhile the process's write-protection (`dump -R`) goes on on this core.
            drop(state);
            let protected = super::uffd_dump::protect_piece(pid);
            state = shared.state.lock().unwrap();
            if !protected && !matches!(state.slots.get(&pid), Some(Some(_))) {
                state = shared.done.wait(state).unwrap();
            }
        }
    }
}

impl Drop for SmapsAhead {
    /// A dump that ends early leaves the worker nothing more to start.
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.state.lock().unwrap().queue.clear();
        }
    }
}

/// The lines of smaps the memory dump reads: made from the BPF iterator where it can be used
/// (kinds/vm_flags.rs: no page walk), else read from /proc/PID/smaps.
fn read_smaps(pid: i32) -> std::io::Result<String> {
    if let Some(lines) = crate::timing::step("dump: read areas without smaps", || super::vm_flags::smaps_lines(pid)) {
        return Ok(lines);
    }
    crate::timing::step("dump: read smaps", || std::fs::read_to_string(format!("/proc/{pid}/smaps")))
}

/// The worker: reads each queued process's smaps in turn, until the queue is empty.
fn read_ahead(shared: &Shared) {
    loop {
        let pid = {
            let mut state = shared.state.lock().unwrap();
            let Some(pid) = state.queue.pop_front() else { return };
            state.slots.insert(pid, None);
            pid
        };
        let read = read_smaps(pid);
        shared.state.lock().unwrap().slots.insert(pid, Some(read));
        shared.done.notify_all();
        // `dump -R`: then the process's write-protection, with the tracer once it is done
        // with its calls in the process (see uffd_dump::arm_early).
        while super::uffd_dump::protect_piece(pid) {}
    }
}
