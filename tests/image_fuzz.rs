//! A bounded fuzz pass over everything a restore reads, on a corpus of real images: images of
//! real processes (a C counter, a timerfd holder, and a python3 tree with threads, a pipe and
//! a socket pair) are dumped, then one record file at a time is mutated (bits flipped, bytes
//! inserted, cut, varint lengths forged), framed again with a correct checksum so that the
//! record decoders and the structure checks themselves are exercised, and checked the way a
//! restore checks an image before creating anything (`crust::restore::check_only`, the
//! reference tool's `restore --check-only`).
//!
//! Every outcome must be a value or a one-line error; nothing may panic or hang, whatever the
//! bytes claim. The sealed path is fuzzed too: any change to a sealed image is refused by its
//! seal, naming the file.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust::restore::{RestoreOptions, check_only};

const MAGIC: &[u8; 8] = b"CRUSTIMG";
const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 8;
/// Rounds of the whole pass, and the time it may take (the bound, whatever the machine).
const ROUNDS: usize = 800;
const TIME_BOUND: Duration = Duration::from_secs(30);

/// python3: a thread, a pipe with unread data, a socket pair with unread data, a child.
const PY_TREE: &str = r#"
import os, socket, threading, time
r, w = os.pipe()
os.write(w, b'in the pipe')
a, b = socket.socketpair()
a.send(b'in the socket')
threading.Thread(target=lambda: time.sleep(1000), daemon=True).start()
if os.fork() == 0:
    while True:
        time.sleep(0.1)
open('ready', 'w').write('ready\n')
while True:
    time.sleep(0.1)
"#;

/// A small deterministic generator, so a failure names a round that can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Dumps the corpus; each image's processes are gone afterwards (dump kills them).
fn corpus() -> Vec<(Workload, PathBuf)> {
    let mut images = Vec::new();
    let mut counter = Workload::spawn("counter", &[]);
    counter.dump();
    let dir = counter.image_dir.clone();
    images.push((counter, dir));
    let mut timerfd = Workload::spawn("fdkinds", &["timerfd"]);
    wait_in_syscall(timerfd.pid, SYS_CLOCK_NANOSLEEP, Duration::from_secs(5));
    timerfd.dump();
    let dir = timerfd.image_dir.clone();
    images.push((timerfd, dir));
    let mut py = Workload::spawn_program("py-tree", "python3", &["-c", PY_TREE]);
    wait_until("python3 to be ready", Duration::from_secs(15), || file_written(&py.dir.path.join("ready")));
    let tree = children_of(py.pid);
    py.dump();
    for pid in tree {
        wait_gone(pid, Duration::from_secs(5));
    }
    let dir = py.image_dir.clone();
    images.push((py, dir));
    images
}

/// The record files of an image (framed records, not page data).
fn record_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| fs::read(e.path()).is_ok_and(|b| b.starts_with(MAGIC)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One mutation of a record's payload, framed again with a correct checksum.
fn mutate(record: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut payload = record[HEADER_LEN..record.len() - 8].to_vec();
    for _ in 0..1 + rng.next() % 4 {
        let at = (rng.next() as usize) % (payload.len() + 1);
        match rng.next() % 5 {
            0 if at < payload.len() => payload[at] ^= 1 << (rng.next() % 8),
            1 => payload.insert(at, rng.next() as u8),
            2 => payload.truncate(at),
            3 if at < payload.len() => payload[at] = 0xff, // a varint that never ends
            4 if at + 4 <= payload.len() => payload[at..at + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x0f]), // a huge length
            _ => {}
        }
    }
    let mut buf = record[..HEADER_LEN - 8].to_vec();
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&payload);
    let sum = xxhash_rust::xxh3::xxh3_64(&buf);
    buf.extend_from_slice(&sum.to_le_bytes());
    buf
}

/// A fresh copy of `image` in `scratch`, with `name` replaced by `bytes`.
fn copy_with(image: &Path, scratch: &Path, name: &str, bytes: &[u8]) {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).unwrap();
    for e in fs::read_dir(image).unwrap().flatten() {
        let target = scratch.join(e.file_name());
        if e.file_name().to_string_lossy() == name {
            fs::write(&target, bytes).unwrap();
        } else {
            fs::hard_link(e.path(), &target).unwrap();
        }
    }
}

/// Runs the check, turning a panic into a failure that names the round.
fn checked(dir: &Path, trust_image: bool, what: &str) -> Result<(), String> {
    let opts = RestoreOptions { trust_image, ..Default::default() };
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| check_only(dir, &opts).map_err(|e| format!("{e:#}")));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{what}: the check took {took:?}");
    match outcome {
        Ok(r) => r,
        Err(_) => panic!("{what}: the check panicked"),
    }
}

#[test]
fn mutated_records_of_real_images_are_refused_in_one_line_never_a_panic_or_a_hang() {
    let images = corpus();
    let scratch = TempDir::new("fuzz-scratch");
    let work = scratch.path.join("image");
    // The corpus itself passes: a refusal below is about the mutation.
    for (_, dir) in &images {
        checked(dir, false, "the unmutated image").unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let started = Instant::now();
    let (mut refused, mut accepted, mut rounds) = (0, 0, 0);
    let mut unnamed = Vec::new();
    while rounds < ROUNDS && started.elapsed() < TIME_BOUND {
        let (_, image) = &images[rounds % images.len()];
        let names = record_files(image);
        let name = &names[(rng.next() as usize) % names.len()];
        let bytes = mutate(&fs::read(image.join(name)).unwrap(), &mut rng);
        copy_with(image, &work, name, &bytes);
        let what = format!("round {rounds}: {} with {name} mutated", image.display());
        match checked(&work, true, &what) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(!e.contains('\n'), "{what}: the refusal is not one line:\n{e}");
                assert!(!e.trim().is_empty(), "{what}: an empty refusal");
                // A pid of the corpus taken meanwhile by another test's process is a refusal
                // about this machine, not about the mutation (it names the pid, not a file).
                if !e.contains(".img") && !e.contains(" is busy: ") {
                    unnamed.push(format!("{what}: {e}"));
                }
                refused += 1;
                if std::env::var_os("FUZZ_SHOW").is_some() {
                    eprintln!("{name}: {e}");
                }
            }
        }
        rounds += 1;
    }
    eprintln!("{rounds} rounds in {:?}: {refused} refused, {accepted} accepted", started.elapsed());
    assert!(rounds >= 200, "only {rounds} rounds ran within {TIME_BOUND:?}");
    assert!(unnamed.is_empty(), "{} refusals name no image file:\n{}", unnamed.len(), unnamed.join("\n"));
    assert!(refused > rounds / 4, "too few refusals ({refused} of {rounds}): is the check reading the records?");

    // Sealed: any change at all is refused by the seal, naming the file.
    for round in 0..30 {
        let (_, image) = &images[round % images.len()];
        let names = record_files(image);
        let name = &names[(rng.next() as usize) % names.len()];
        let bytes = mutate(&fs::read(image.join(name)).unwrap(), &mut rng);
        if bytes == fs::read(image.join(name)).unwrap() {
            continue;
        }
        copy_with(image, &work, name, &bytes);
        let e = checked(&work, false, &format!("sealed round {round}")).expect_err("a changed sealed image was accepted");
        assert!(e.contains(name.as_str()), "sealed round {round}: the refusal does not name {name}: {e}");
    }
}
