//! /proc/PID/smaps of every frozen process, read ahead by a worker thread while crust's tracer
//! thread collects the other kinds (files, dispositions, what is asked of the whole tree).
//!
//! Reading smaps makes the kernel walk every page table of the process (for Rss, Pss...):
//! about 10 ms per GiB of 4 KiB pages, all of it while the tree is frozen, and write 800 bytes
//! of text per area (1.2 us each). It needs no ptrace, only the freeze (no mapping of a frozen
//! process changes: crust maps its scratch area before the read starts and changes no other
//! mapping while it collects), so it overlaps the injected system calls, which mostly wait for
//! the tracee to be scheduled. The memory dump takes the areas when it needs them
//! ([`SmapsAhead::take`]), parsing the text the worker has read so far while the worker reads
//! the rest (the worker hands it over in pieces of whole lines): a process of 16384 areas has
//! its 13 MB parsed on the other core while the kernel writes them, and the worker reads into
//! the buffers the taker has parsed (memory already touched). A process the worker has
//! not reached yet is read by the taker itself. Where crust reads the areas without smaps
//! (kinds/vm_flags.rs), the worker hands over the areas themselves, nothing to parse. With
//! `dump -R`, the worker and the taker also write-protect the process's memory whenever they
//! have nothing else to do (uffd_dump).

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result};

use super::smaps::{self, Area};

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
    /// Started by the worker.
    slots: HashMap<i32, Slot>,
    /// Buffers of pieces parsed, for the worker to read into again, so that the kernel writes
    /// smaps into memory already touched: into fresh memory, the first touch of each page made
    /// the 13 MB of 16384 areas 25-30 ms slower to read on this VM (86-102 ms against 56-66 at
    /// load 4).
    spare: Vec<Vec<u8>>,
}

/// What the worker has read of one process's smaps.
#[derive(Default)]
struct Slot {
    /// The areas made without smaps (kinds/vm_flags.rs), nothing to parse.
    made: Option<Vec<Area>>,
    /// Whole lines read and not taken yet.
    pieces: Vec<String>,
    /// How the read ended, once it has: every piece is in `pieces` by then.
    end: Option<std::io::Result<()>>,
}

/// How much the worker reads before it hands the lines over (about 330 areas of smaps).
const PIECE: u64 = 256 * 1024;
/// Spare buffers kept at most (the parse keeps up with the read: two or three are in use).
const MOST_SPARE: usize = 8;
/// The most text read from one smaps (a process may have 65530 areas of about 1 KiB each).
const MOST_TEXT: usize = 1 << 30;

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

    /// The areas of `pid`'s smaps, parsed as the worker reads them (waiting for it); read
    /// and parsed here if it was not started.
    pub fn take(&mut self, pid: i32) -> Result<Vec<Area>> {
        let what = || format!("pid {pid}: reading /proc/{pid}/smaps");
        let Some(shared) = &self.0 else { return read_areas(pid) };
        let mut state = shared.state.lock().unwrap();
        state.queue.retain(|&p| p != pid);
        if !state.slots.contains_key(&pid) {
            drop(state);
            return read_areas(pid);
        }
        let mut parser = smaps::Parser::default();
        loop {
            let slot = state.slots.get_mut(&pid).expect("a started slot stays until taken");
            if slot.end.is_some()
                && let Some(areas) = slot.made.take()
            {
                state.slots.remove(&pid);
                return Ok(areas);
            }
            let (pieces, end) = (std::mem::take(&mut slot.pieces), slot.end.take());
            if !pieces.is_empty() || end.is_some() {
                drop(state);
                for piece in pieces {
                    crate::timing::step("dump: parse smaps", || parser.feed(&piece))
                        .with_context(|| format!("parsing /proc/{pid}/smaps"))?;
                    shared.give_back(piece);
                }
                if let Some(end) = end {
                    shared.state.lock().unwrap().slots.remove(&pid);
                    end.with_context(|| format!("{} (read ahead)", what()))?;
                    return Ok(parser.finish());
                }
                state = shared.state.lock().unwrap();
                continue;
            }
            // Meanwhile the process's write-protection (`dump -R`) goes on on this core.
            drop(state);
            let protected = super::uffd_dump::protect_piece(pid);
            state = shared.state.lock().unwrap();
            let ready = state.slots.get(&pid).is_some_and(|s| !s.pieces.is_empty() || s.end.is_some());
            if !protected && !ready {
                state = shared.done.wait(state).unwrap();
            }
        }
    }
}

impl Shared {
    /// A parsed piece's buffer, for the worker to read into again.
    fn give_back(&self, piece: String) {
        let mut buffer = piece.into_bytes();
        buffer.clear();
        let mut state = self.state.lock().unwrap();
        if state.spare.len() < MOST_SPARE {
            state.spare.push(buffer);
        }
    }

    /// A buffer to read into: a spare one if there is one.
    fn buffer(&self) -> Vec<u8> {
        self.state.lock().unwrap().spare.pop().unwrap_or_else(|| Vec::with_capacity(2 * PIECE as usize))
    }
}

fn parse_all(text: &str, pid: i32) -> Result<Vec<Area>> {
    crate::timing::step("dump: parse smaps", || smaps::parse(text)).with_context(|| format!("parsing /proc/{pid}/smaps"))
}

impl Drop for SmapsAhead {
    /// A dump that ends early leaves the worker nothing more to start.
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.state.lock().unwrap().queue.clear();
        }
    }
}

/// The areas of `pid`: made from the BPF iterator where it can be used (kinds/vm_flags.rs: no
/// page walk), else read from /proc/PID/smaps and parsed.
fn read_areas(pid: i32) -> Result<Vec<Area>> {
    if let Some(areas) = crate::timing::step("dump: read areas without smaps", || super::vm_flags::areas(pid)) {
        return Ok(areas);
    }
    let text = crate::timing::step("dump: read smaps", || std::fs::read_to_string(format!("/proc/{pid}/smaps")))
        .with_context(|| format!("pid {pid}: reading /proc/{pid}/smaps"))?;
    parse_all(&text, pid)
}

/// Reads /proc/PID/smaps into buffers of `shared`, handing its text to `hand` in pieces of
/// whole lines as they come.
fn read_in_pieces(shared: &Shared, pid: i32, mut hand: impl FnMut(String)) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/proc/{pid}/smaps"))?;
    let utf8 = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    let mut text = shared.buffer();
    let mut read = 0;
    while read <= MOST_TEXT {
        let n = (&file).take(PIECE).read_to_end(&mut text)?;
        read += n;
        if n == 0 {
            if !text.is_empty() {
                hand(utf8(text)?);
            }
            return Ok(());
        }
        if let Some(last) = memchr::memrchr(b'\n', &text) {
            // The unfinished last line goes on in the next buffer.
            let mut next = shared.buffer();
            next.extend_from_slice(&text[last + 1..]);
            text.truncate(last + 1);
            hand(utf8(std::mem::replace(&mut text, next))?);
        }
    }
    Err(std::io::Error::other(format!("more than {MOST_TEXT} bytes")))
}

/// The worker: reads each queued process's smaps in turn, until the queue is empty.
fn read_ahead(shared: &Shared) {
    loop {
        let pid = {
            let mut state = shared.state.lock().unwrap();
            let Some(pid) = state.queue.pop_front() else { return };
            state.slots.insert(pid, Slot::default());
            pid
        };
        let mut hand = |piece: String| {
            if let Some(slot) = shared.state.lock().unwrap().slots.get_mut(&pid) {
                slot.pieces.push(piece);
            }
            shared.done.notify_all();
        };
        // The same areas without smaps's page walk where crust may (kinds/vm_flags.rs).
        let made = crate::timing::step("dump: read areas without smaps", || super::vm_flags::areas(pid));
        let end = match made {
            Some(_) => Ok(()),
            None => crate::timing::step("dump: read smaps", || read_in_pieces(shared, pid, &mut hand)),
        };
        if let Some(slot) = shared.state.lock().unwrap().slots.get_mut(&pid) {
            slot.made = made;
            slot.end = Some(end);
        }
        shared.done.notify_all();
        // `dump -R`: then the process's write-protection, with the tracer once it is done
        // with its calls in the process (see uffd_dump::arm_early).
        while super::uffd_dump::protect_piece(pid) {}
    }
}
