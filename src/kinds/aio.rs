//! AIO contexts (io_setup): the ring "/[aio] (deleted)" mapped shared in the process, whose
//! address is the context id the program passes to io_submit and io_getevents.
//!
//! Restore creates a context with io_setup (the largest event count that gives a ring of the
//! same size: the kernel keeps no trace of the count the program asked for) and moves its ring
//! to the old address with mremap; the kernel follows the move and the id is the old one
//! again. Completed events the program had not reaped come back in order: restore completes as
//! many zero-byte reads of /dev/null (so the kernel counts them, and holds their slots, as it
//! did) and writes the saved events over them in the ring. The ring's head and tail start
//! from 0 again (io_getevents and libaio's reaping use only their difference).
//!
//! Requests in flight the kernel does not show anywhere. Dump counts them by taking every free
//! slot of the context, in the frozen process: it submits reads of zero bytes from /dev/null
//! (each completes at once and holds its slot until reaped) on every CPU in turn until the
//! kernel says EAGAIN. The kernel hands slots out of a per-CPU cache in batches of
//! `(ring_events - 1) / (4 * possible CPUs)`, and the shared pool only ever changes by whole
//! batches, so what stays out of reach when nothing is in flight is exactly
//! `(ring_events - 1) % batch`: any other shortfall (beyond the events waiting in the ring) is
//! requests in flight, and the context is refused by name. (A CPU taken offline, or one the
//! process may not run on, may hold slots of its own cache: such a context is refused too, as
//! if busy.) crust's events are then taken out of the ring the way libaio reaps, in user
//! space: the program's own waiting events are moved up behind them and the ring's head moved
//! past crust's (head and tail are further on, the events the program sees are the same).
//!
//! A process forked after io_setup inherits the ring's mapping but not the context: its
//! mapping is the parent's, inherited again at restore when the parent has it still.

use anyhow::{Context, Result, bail};

use super::{DumpCtx, RestoreCtx};
use crate::image::proto::{AioRing, Vma};
use crate::sys::remote::RemoteTask;

/// Whether a deleted mapping's path (without " (deleted)") is an AIO ring.
pub fn recognises(original: &str) -> bool {
    original == "/[aio]" || original == "[aio]"
}

const AIO_RING_MAGIC: u32 = 0xa10a10a1;
/// struct aio_ring's header and struct io_event's size.
const HEADER: u64 = 32;
const EVENT: u64 = 32;
/// Marks crust's own requests (aio_data).
const PROBE_DATA: u64 = 0x6372_7573_745f_616f;
/// Requests per io_submit / events per io_getevents while probing.
const CHUNK: u64 = 128;
/// Scratch offsets: path, CPU masks, iocbs, their pointers, reaped events.
const PATH_AT: u64 = 0;
const SAVED_MASK_AT: u64 = 1024;
const MASK_AT: u64 = 2048;
const MASK_LEN: u64 = 128;
const IOCBS_AT: u64 = 4096;
const POINTERS_AT: u64 = IOCBS_AT + CHUNK * 64;
const EVENTS_AT: u64 = POINTERS_AT + CHUNK * 8;

/// Dump: records the context whose ring is `vma`, or marks the mapping as inherited from the
/// parent (a ring without a context in this process), or refuses it by name.
pub fn dump(ctx: &mut DumpCtx, vma: &mut Vma) -> Result<()> {
    let pid = ctx.pid.as_raw();
    let (start, end) = (vma.start, vma.end);
    let what = format!("pid {pid}: the AIO context at {start:#x} ({})", vma.name);
    // io_submit of no request answers whether the context is this process's.
    if ctx.remote.syscall_raw(libc::SYS_io_submit, &[start, 0, 0])? != 0 {
        if parent_maps_it(ctx, start, end)? {
            vma.inherited = true;
            return Ok(());
        }
        bail!("{what}: a ring mapped without its AIO context cannot be checkpointed by crust");
    }
    let header = read_header(ctx.remote, start).with_context(|| format!("{what}: reading its ring"))?;
    let ring_events = header[1];
    let (head, tail) = (header[2], header[3]);
    let sane = header[4] == AIO_RING_MAGIC && header[7] as u64 == HEADER && HEADER + ring_events as u64 * EVENT <= end - start;
    if !sane || ring_events < 2 {
        bail!("{what}: its ring header is not an AIO ring's (nr {ring_events}, magic {:#x})", header[4]);
    }
    if head >= ring_events || tail >= ring_events {
        bail!("{what}: its ring's head {head} or tail {tail} is beyond its {ring_events} events");
    }
    let ring = Ring { id: start, events: ring_events, head, tail };
    let completed = read_events(ctx.remote, &ring, head, ring.waiting())?;
    let in_flight = requests_in_flight(ctx.remote, &ring, &completed).with_context(|| format!("{what}: counting its requests"))?;
    if in_flight != 0 {
        bail!("{what} has {in_flight} requests in flight; crust checkpoints AIO contexts only with none");
    }
    vma.aio_ring = Some(Box::new(AioRing { nr_events: (ring_events - 2) / 2, ring_events, completed }));
    Ok(())
}

/// A context's ring as dump found it.
struct Ring {
    id: u64,
    events: u32,
    head: u32,
    tail: u32,
}

impl Ring {
    /// Completed events not reaped yet.
    fn waiting(&self) -> u32 {
        (self.tail + self.events - self.head) % self.events
    }

    /// The address of event slot `index` (taken modulo the ring's size).
    fn slot(&self, index: u32) -> u64 {
        self.id + HEADER + (index % self.events) as u64 * EVENT
    }
}

/// `count` events of the ring from slot `from` on, as bytes.
fn read_events(remote: &RemoteTask, ring: &Ring, from: u32, count: u32) -> Result<Vec<u8>> {
    let mut out = vec![0u8; (count as u64 * EVENT) as usize];
    for (i, event) in out.chunks_exact_mut(EVENT as usize).enumerate() {
        remote.read_memory(ring.slot(from + i as u32), event)?;
    }
    Ok(out)
}

/// Writes `events` into the ring from slot `from` on.
fn write_events(remote: &RemoteTask, ring: &Ring, from: u32, events: &[u8]) -> Result<()> {
    for (i, event) in events.chunks_exact(EVENT as usize).enumerate() {
        remote.write_memory(ring.slot(from + i as u32), event)?;
    }
    Ok(())
}

/// Restore, once every mapping is in place: creates the context and moves its ring to `vma`.
pub fn restore(ctx: &mut RestoreCtx, vma: &Vma, ring: &AioRing) -> Result<()> {
    let r = &mut *ctx.remote;
    let id_at = r.put(0, &0u64.to_ne_bytes())?;
    r.syscall("io_setup", libc::SYS_io_setup, &[ring.nr_events as u64, id_at])?;
    let mut id = [0u8; 8];
    r.get(0, &mut id)?;
    let made = u64::from_ne_bytes(id);
    let header = read_header(r, made)?;
    if header[1] != ring.ring_events {
        let _ = r.syscall("io_destroy", libc::SYS_io_destroy, &[made]);
        bail!("io_setup({}) made a ring of {} events, the image's had {}", ring.nr_events, header[1], ring.ring_events);
    }
    if made != vma.start {
        let len = vma.end - vma.start;
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let got = r.syscall("mremap(AIO ring)", libc::SYS_mremap, &[made, len, len, flags, vma.start])?;
        if got != vma.start {
            bail!("mremap of the AIO ring to {:#x} returned {got:#x}", vma.start);
        }
    }
    refill_completed(r, vma.start, ring)
}

/// Puts the events that were waiting back into the fresh ring at `id`: as many reads complete
/// (so the kernel holds their slots), then the saved events are written over theirs.
fn refill_completed(remote: &mut RemoteTask, id: u64, saved: &AioRing) -> Result<()> {
    let count = (saved.completed.len() as u64 / EVENT) as u32;
    if count == 0 {
        return Ok(());
    }
    if !(saved.completed.len() as u64).is_multiple_of(EVENT) || count >= saved.ring_events {
        bail!("{} bytes of completed events do not fit a ring of {} events", saved.completed.len(), saved.ring_events);
    }
    let null = open_null(remote)?;
    let mut taken = 0u64;
    let submitted = submit_reads(remote, id, null, count as u64, &mut taken);
    remote.syscall("close", libc::SYS_close, &[null])?;
    submitted?;
    let header = read_header(remote, id)?;
    let ring = Ring { id, events: header[1], head: header[2], tail: header[3] };
    if taken != count as u64 || ring.waiting() != count {
        bail!("{count} events were to wait in the ring, {} do ({taken} reads submitted)", ring.waiting());
    }
    write_events(remote, &ring, ring.head, &saved.completed)
}

/// The ring header's eight 32-bit fields (id, nr, head, tail, magic, compat and incompat
/// features, header length).
fn read_header(remote: &RemoteTask, ring: u64) -> Result<[u32; 8]> {
    let mut bytes = [0u8; HEADER as usize];
    remote.read_memory(ring, &mut bytes)?;
    let mut out = [0u32; 8];
    for (i, chunk) in bytes.chunks_exact(4).enumerate() {
        out[i] = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
    }
    Ok(out)
}

/// Whether the parent (of the tree) maps the same ring at the same place: the mapping was
/// inherited at fork, and will be again.
fn parent_maps_it(ctx: &DumpCtx, start: u64, end: u64) -> Result<bool> {
    let Some(parent) = ctx.parent else { return Ok(false) };
    let ours = std::fs::metadata(format!("/proc/{}/map_files/{start:x}-{end:x}", ctx.pid))?;
    let theirs = std::fs::metadata(format!("/proc/{parent}/map_files/{start:x}-{end:x}"));
    use std::os::unix::fs::MetadataExt;
    Ok(theirs.is_ok_and(|t| (t.dev(), t.ino()) == (ours.dev(), ours.ino())))
}

/// The slots of the context held by requests in flight (see the module's comment), the ring
/// holding `completed` (its waiting events). Leaves the ring with those events only and the
/// thread's CPU affinity as it was.
fn requests_in_flight(remote: &mut RemoteTask, ring: &Ring, completed: &[u8]) -> Result<i64> {
    let (possible, online) = (cpu_list("possible")?, cpu_list("online")?);
    let saved = remote.put(SAVED_MASK_AT, &[0u8; MASK_LEN as usize])?;
    let saved_len = remote.syscall("sched_getaffinity", libc::SYS_sched_getaffinity, &[0, MASK_LEN, saved])?;
    let null = open_null(remote)?;
    let mut taken = 0u64;
    let took = take_free_slots(remote, ring, null, &online, &mut taken);
    let restored = remote.syscall("sched_setaffinity", libc::SYS_sched_setaffinity, &[0, saved_len, saved]);
    // Whatever was taken leaves the ring again, even after an error.
    let dropped = drop_probe_events(remote, ring, completed, taken);
    remote.syscall("close", libc::SYS_close, &[null])?;
    took?;
    restored?;
    dropped?;
    let free = ring.events as i64 - 1;
    let batch = (free / (possible.len() as i64 * 4)).max(1);
    Ok(free - free % batch - taken as i64 - ring.waiting() as i64)
}

/// Opens /dev/null in the process (crust's probe reads it).
fn open_null(remote: &mut RemoteTask) -> Result<u64> {
    let path = remote.put_path(PATH_AT, "/dev/null")?;
    let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    Ok(remote.syscall("openat(/dev/null)", libc::SYS_openat, &[libc::AT_FDCWD as u64, path, flags, 0])?)
}

/// Submits zero-byte reads of `null` on each CPU of `cpus` in turn until the kernel has no
/// slot left for them; counts in `taken` how many were submitted (all completed, waiting in
/// the ring after the program's), also when it fails half way.
fn take_free_slots(remote: &mut RemoteTask, ring: &Ring, null: u64, cpus: &[usize], taken: &mut u64) -> Result<()> {
    for &cpu in cpus {
        let mut mask = [0u8; MASK_LEN as usize];
        if cpu / 8 >= mask.len() {
            continue;
        }
        mask[cpu / 8] |= 1 << (cpu % 8);
        let mask_at = remote.put(MASK_AT, &mask)?;
        // A CPU the process may not run on (its cpuset) is skipped: slots cached there look
        // busy, and the context is refused rather than restored wrong.
        if remote.syscall_raw(libc::SYS_sched_setaffinity, &[0, MASK_LEN, mask_at])? != 0 {
            continue;
        }
        // Bounded: a context never has more slots than its ring has events.
        submit_reads(remote, ring.id, null, ring.events as u64, taken)?;
    }
    Ok(())
}

/// Submits zero-byte reads of `null` to context `id` until `taken` reaches `limit` or the
/// kernel has no slot left (EAGAIN).
fn submit_reads(remote: &mut RemoteTask, id: u64, null: u64, limit: u64, taken: &mut u64) -> Result<()> {
    let buffer = remote.scratch().context("no scratch area")?.address + EVENTS_AT;
    let iocbs_at = remote.scratch().context("no scratch area")?.address + IOCBS_AT;
    let mut iocbs = Vec::with_capacity((CHUNK * 64) as usize);
    let mut pointers = Vec::with_capacity((CHUNK * 8) as usize);
    for i in 0..CHUNK {
        let mut iocb = [0u8; 64];
        iocb[0..8].copy_from_slice(&PROBE_DATA.to_ne_bytes());
        // aio_lio_opcode 0 (IOCB_CMD_PREAD) at 16, aio_fildes at 20, aio_buf at 24,
        // aio_nbytes 0 at 32.
        iocb[20..24].copy_from_slice(&(null as u32).to_ne_bytes());
        iocb[24..32].copy_from_slice(&buffer.to_ne_bytes());
        iocbs.extend_from_slice(&iocb);
        pointers.extend_from_slice(&(iocbs_at + i * 64).to_ne_bytes());
    }
    remote.put(IOCBS_AT, &iocbs)?;
    let pointers_at = remote.put(POINTERS_AT, &pointers)?;
    while *taken < limit {
        let want = (limit - *taken).min(CHUNK);
        match remote.syscall_raw(libc::SYS_io_submit, &[id, want, pointers_at])? {
            n if n > 0 => {
                *taken += n as u64;
                if (n as u64) < want {
                    break;
                }
            }
            n if n == -(libc::EAGAIN as i64) => break,
            n => bail!("io_submit of zero-byte reads failed: {}", nix::errno::Errno::from_raw(-n as i32)),
        }
    }
    Ok(())
}

/// Takes crust's `taken` events (right after the program's waiting ones) out of the ring, the
/// way user space reaps: the program's events are written again `taken` slots further on, and
/// the head moved there.
fn drop_probe_events(remote: &mut RemoteTask, ring: &Ring, completed: &[u8], taken: u64) -> Result<()> {
    if taken == 0 {
        return Ok(());
    }
    let header = read_header(remote, ring.id)?;
    let expected_tail = (ring.tail as u64 + taken) % ring.events as u64;
    if header[2] != ring.head || header[3] as u64 != expected_tail {
        bail!("the ring moved while crust probed it (head {} tail {}, expected {} {expected_tail})", header[2], header[3], ring.head);
    }
    let probe = read_events(remote, ring, ring.tail, taken as u32)?;
    if probe.chunks_exact(EVENT as usize).any(|e| e[0..8] != PROBE_DATA.to_ne_bytes()) {
        bail!("an AIO event after the program's is not crust's");
    }
    let new_head = (ring.head as u64 + taken) % ring.events as u64;
    write_events(remote, ring, new_head as u32, completed)?;
    // The head is the 32-bit field at offset 8 of the header.
    remote.write_memory(ring.id + 8, &(new_head as u32).to_ne_bytes())?;
    Ok(())
}

/// The CPUs of /sys/devices/system/cpu/{which} ("0-3,5").
fn cpu_list(which: &str) -> Result<Vec<usize>> {
    let path = format!("/sys/devices/system/cpu/{which}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
        cpus.extend(a..=b.min(a + 4096));
    }
    if cpus.is_empty() {
        bail!("{path} lists no CPU");
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_aio_rings_are_recognised() {
        assert!(super::recognises("/[aio]"));
        assert!(!super::recognises("/memfd:x"));
    }
}
