//! The image directory and its record files.
//!
//! An image is a directory:
//!
//! ```text
//! inventory.img        Inventory: format, versions, kernel, processes, data-file checksums
//! core-PID.img         Core: credentials, limits, signals, timers, threads and registers
//! mm-PID.img           Mm: mappings, mm fields, where each saved page run lives
//! files-PID.img        Files: fd table, cwd, root
//! open-files.img       OpenFiles: every open file description of the tree, once
//! pages-PID.img        raw page data, page-aligned, no header (checksummed in the inventory)
//! ```
//!
//! Every `.img` record file except the page files is framed:
//!
//! ```text
//! +----------+-------+-------+--------+-------------+----------------------+-----------+
//! | CRUSTIMG | major | minor | kind   | payload len | payload (protobuf)   | xxh3-64   |
//! | 8 bytes  | u16le | u16le | 4 chars| u64le       | payload len bytes    | u64le     |
//! +----------+-------+-------+--------+-------------+----------------------+-----------+
//! ```
//!
//! The checksum covers everything before it. Version rule: a reader accepts the same major
//! version and any minor version (new fields are ignored by older readers).

pub mod chunks;
pub mod seal;
pub mod sparse;

pub mod proto {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/crust.image.v1.rs"));
}

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use prost::Message;
use xxhash_rust::xxh3::xxh3_64;

use crate::sys::region::MappedFile;

pub const FORMAT_MAJOR: u16 = 1;
pub const FORMAT_MINOR: u16 = 3;
const MAGIC: &[u8; 8] = b"CRUSTIMG";
const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 8;

/// What went wrong with an image, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image file {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("image file {path} is not a crust image record (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("image file {path} has format version {major}.{minor}; this crust reads {FORMAT_MAJOR}.x")]
    Version { path: PathBuf, major: u16, minor: u16 },
    #[error("image file {path} holds a {found:?} record where a {expected:?} record was expected")]
    WrongKind { path: PathBuf, expected: String, found: String },
    #[error("image file {path} is truncated: {detail}")]
    Truncated { path: PathBuf, detail: String },
    #[error("image file {path} is corrupted ({detail}): checksum {found:#018x} does not match the recorded {expected:#018x}")]
    Checksum { path: PathBuf, detail: String, expected: u64, found: u64 },
    #[error("image file {path} is refused: {detail}")]
    Refused { path: PathBuf, detail: String },
    #[error("image file {path} is corrupted ({detail}): its BLAKE3 hash does not match the inventory's field chunk_blake3")]
    ChunkHash { path: PathBuf, detail: String },
    #[error("image file {path} lists the data file {name:?}, which is not a plain file name of the image directory")]
    BadName { path: PathBuf, name: String },
    /// `detail` names the field, as the decoder reports it ("Core.threads: buffer underflow").
    #[error("image file {path} is corrupted: cannot decode its {kind} record: field {detail}")]
    Decode { path: PathBuf, kind: String, detail: String },
}

/// The four-character tag of each record kind.
pub trait Record: Message + Default {
    const KIND: &'static [u8; 4];
}

impl Record for proto::Inventory {
    const KIND: &'static [u8; 4] = b"INVT";
}
impl Record for proto::Core {
    const KIND: &'static [u8; 4] = b"CORE";
}
impl Record for proto::Mm {
    const KIND: &'static [u8; 4] = b"MMAP";
}
impl Record for proto::Files {
    const KIND: &'static [u8; 4] = b"FILE";
}
impl Record for proto::OpenFiles {
    const KIND: &'static [u8; 4] = b"OFDS";
}

pub const INVENTORY: &str = "inventory.img";
pub const OPEN_FILES: &str = "open-files.img";
/// Left by a dump that failed or was interrupted, in place of what it had written: says why.
pub const FAILED_DUMP: &str = "FAILED-DUMP.txt";

pub fn core_name(pid: u32) -> String {
    format!("core-{pid}.img")
}
pub fn mm_name(pid: u32) -> String {
    format!("mm-{pid}.img")
}
pub fn files_name(pid: u32) -> String {
    format!("files-{pid}.img")
}
pub fn pages_name(pid: u32) -> String {
    format!("pages-{pid}.img")
}

/// An image directory.
#[derive(Clone, Debug)]
pub struct ImageDir {
    root: PathBuf,
    /// Every file this process wrote into the directory (removed if the dump fails).
    written: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<PathBuf>>>,
    /// Records of data files hashed while they were written (see [`Self::hashed_while_written`]).
    hashed: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, proto::DataFile>>>,
    /// Data files opened for a restore, each once (see [`Self::data_file`]).
    pinned: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<File>>>>,
    /// The BLAKE3 hash of every record file, once the seal of the inventory that lists them was
    /// verified (see [`Self::expect_sealed_hashes`]).
    sealed_hashes: std::sync::Arc<std::sync::OnceLock<std::collections::HashMap<String, Vec<u8>>>>,
    /// Record files the seal's check read and hashed, kept until they are read: each is decoded
    /// from the very bytes checked, and not read and hashed a second time.
    checked_bytes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
    /// A dump began writing here (see [`Self::begin`]).
    begun: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Threads that make the records of [`Self::write_record_deferred`] durable and put them in
    /// place while the dump goes on.
    syncer: std::sync::Arc<std::sync::Mutex<Option<Syncer>>>,
}

/// Work for the syncer threads: a record to write to its temporary file, sync and rename into
/// place, or a data file written already, to sync.
enum Deferred {
    Record { bytes: Vec<u8>, tmp: PathBuf, path: PathBuf },
    DataFile { file: File, path: PathBuf },
}

impl Deferred {
    fn write(&self) -> std::io::Result<()> {
        match self {
            Deferred::Record { bytes, tmp, path } => {
                let mut f = create_no_follow(tmp)?;
                f.write_all(bytes)?;
                f.sync_data()?;
                fs::rename(tmp, path)
            }
            Deferred::DataFile { file, .. } => file.sync_data(),
        }
    }

    fn path(self) -> PathBuf {
        match self {
            Deferred::Record { path, .. } | Deferred::DataFile { path, .. } => path,
        }
    }
}

/// A few threads that write, sync and rename deferred records: each `fdatasync` waits for the
/// disk, and a tree of 300 processes writes 900 records, so the waits overlap each other and
/// the collection of the next processes (on the other core: creating a file costs the file
/// system some CPU too) instead of adding up.
struct Syncer {
    queue: std::sync::mpsc::Sender<Deferred>,
    threads: Vec<std::thread::JoinHandle<Result<(), ImageError>>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Syncer({} threads)", self.threads.len())
    }
}

impl Syncer {
    const THREADS: usize = 4;

    fn start() -> Syncer {
        let (queue, jobs) = std::sync::mpsc::channel::<Deferred>();
        let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
        let threads = (0..Self::THREADS)
            .map(|_| {
                let jobs = jobs.clone();
                std::thread::spawn(move || {
                    let mut result = Ok(());
                    loop {
                        // One thread at a time waits for the next job; the others wait for the lock.
                        let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = next else { return result };
                        if let Err(source) = job.write()
                            && result.is_ok()
                        {
                            result = Err(ImageError::Io { path: job.path(), source });
                        }
                    }
                })
            })
            .collect();
        Syncer { queue, threads }
    }

    /// Waits until every record sent is synced and in place; the first error.
    fn finish(self) -> Result<(), ImageError> {
        drop(self.queue);
        let mut result = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or_else(|_| {
                Err(ImageError::Io { path: PathBuf::new(), source: std::io::Error::other("a record sync thread panicked") })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Largest record file crust reads (the largest records, inventories of images of many GiB,
/// are a few MiB).
const MAX_RECORD_BYTES: u64 = 256 << 20;

/// Opens a file of the image for reading: a plain file, not through a symlink, not larger than
/// `max_bytes` (an image directory others can write might hold a FIFO that would block the
/// read, a device, or a link to one).
pub fn open_image_file(path: &Path, max_bytes: u64) -> Result<File, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ImageError::Io { path: path.to_owned(), source };
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = File::options().read(true).custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            ImageError::Refused { path: path.to_owned(), detail: "it is a symbolic link".into() }
        } else {
            io(e)
        }
    })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ImageError::Refused { path: path.to_owned(), detail: format!("it is not a regular file ({:?})", meta.file_type()) });
    }
    if meta.len() > max_bytes {
        return Err(ImageError::Refused {
            path: path.to_owned(),
            detail: format!("{} bytes, more than a record can hold ({max_bytes})", meta.len()),
        });
    }
    Ok(file)
}

/// Creates (truncating) a file crust writes into the image directory, never through a symlink
/// (crust runs as root: a symlink put in the directory must not make it write elsewhere). A
/// symlink in the way is removed first; one put back meanwhile makes the open fail.
fn create_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || File::options().read(true).write(true).create(true).truncate(true).custom_flags(libc::O_NOFOLLOW).mode(0o600).open(path);
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path)?;
    }
    open()
}

impl ImageDir {
    fn empty() -> Self {
        ImageDir {
            root: PathBuf::new(),
            written: Default::default(),
            hashed: Default::default(),
            pinned: Default::default(),
            sealed_hashes: Default::default(),
            checked_bytes: Default::default(),
            begun: Default::default(),
            syncer: Default::default(),
        }
    }

    /// Opens an image directory for writing, creating it if needed. Nothing in it changes
    /// before [`Self::begin`].
    pub fn create(root: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(root).map_err(|source| ImageError::Io { path: root.to_owned(), source })?;
        Ok(ImageDir { root: root.to_owned(), ..Self::empty() })
    }

    /// Before the first file of a dump is written (after every check that can refuse it): an
    /// image already there stops being one (its inventory goes first), and the mark of an
    /// earlier failed dump goes too. A dump refused before this leaves the directory as it was.
    pub fn begin(&self) -> Result<(), ImageError> {
        for stale in [INVENTORY, FAILED_DUMP] {
            let path = self.path(stale);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ImageError::Io { path, source }),
            }
        }
        self.begun.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn note_written(&self, path: &Path) {
        // A set: a tree of many processes writes thousands of files.
        let mut written = self.written.lock().unwrap();
        if !written.contains(path) {
            written.insert(path.to_owned());
        }
    }

    /// Before another attempt at the dump: removes every file written so far.
    pub fn discard_written(&self) {
        let _ = self.finish_deferred();
        self.hashed.lock().unwrap().clear();
        for path in std::mem::take(&mut *self.written.lock().unwrap()) {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {} of the failed attempt: {e}", path.display());
            }
        }
    }

    /// After a failed dump: removes every file the dump wrote and leaves [`FAILED_DUMP`] with
    /// the reason, so that nobody takes the directory for an image.
    pub fn discard_failed_dump(&self, reason: &str) {
        if !self.begun.load(std::sync::atomic::Ordering::SeqCst) {
            // Refused before anything was written: whatever the directory held stays.
            return;
        }
        let _ = self.finish_deferred();
        for path in std::mem::take(&mut *self.written.lock().unwrap()) {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {} of the failed dump: {e}", path.display());
            }
        }
        let text = format!("crust dump failed; this directory holds no image.\n{reason}\n");
        let written = create_no_follow(&self.path(FAILED_DUMP)).and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("cannot mark {} as a failed dump: {e}", self.root.display());
        }
    }

    /// The reason of a failed dump left in this directory, if any.
    pub fn failed_dump(&self) -> Option<String> {
        let text = fs::read_to_string(self.path(FAILED_DUMP)).ok()?;
        Some(text.lines().skip(1).collect::<Vec<_>>().join(" ").trim().to_owned())
    }

    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let meta = fs::metadata(root).map_err(|source| ImageError::Io { path: root.to_owned(), source })?;
        if !meta.is_dir() {
            return Err(ImageError::Io {
                path: root.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(ImageDir { root: root.to_owned(), ..Self::empty() })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes a framed record, atomically (temporary file + rename).
    pub fn write_record<R: Record>(&self, name: &str, record: &R) -> Result<(), ImageError> {
        let (file, tmp, path) = self.write_temporary(name, record)?;
        file.sync_data().and_then(|()| fs::rename(&tmp, &path)).map_err(|source| ImageError::Io { path, source })
    }

    /// [`Self::write_record`], the sync and rename done by other threads while the caller goes
    /// on: the record is in place, durable, once [`Self::finish_deferred`] returned.
    pub fn write_record_deferred<R: Record>(&self, name: &str, record: &R) -> Result<(), ImageError> {
        let (bytes, tmp, path) = self.framed(name, record);
        self.defer(Deferred::Record { bytes, tmp, path })
    }

    /// Makes data file `name`, written through `file`, durable on the syncer threads: done once
    /// [`Self::finish_deferred`] returned. A dump without -R kills the tree after that: the
    /// image is then the only copy of its memory, and a crash must not leave it half on disk
    /// (on tmpfs the sync costs nothing).
    pub fn sync_data_file_deferred(&self, name: &str, file: &File) -> Result<(), ImageError> {
        let path = self.path(name);
        let file = file.try_clone().map_err(|source| ImageError::Io { path: path.clone(), source })?;
        self.defer(Deferred::DataFile { file, path })
    }

    fn defer(&self, job: Deferred) -> Result<(), ImageError> {
        let mut syncer = self.syncer.lock().unwrap_or_else(|p| p.into_inner());
        let queue = &syncer.get_or_insert_with(Syncer::start).queue;
        queue.send(job).map_err(|e| ImageError::Io { path: e.0.path(), source: std::io::Error::other("the record sync threads are gone") })
    }

    /// Makes the names of the files renamed into the directory durable (fsync of the
    /// directory itself: a synced file renamed into place can still vanish in a crash).
    pub fn sync_directory(&self) -> Result<(), ImageError> {
        File::open(&self.root).and_then(|d| d.sync_all()).map_err(|source| ImageError::Io { path: self.root.clone(), source })
    }

    /// Waits until every record of [`Self::write_record_deferred`] is synced and in place.
    pub fn finish_deferred(&self) -> Result<(), ImageError> {
        let syncer = self.syncer.lock().unwrap_or_else(|p| p.into_inner()).take();
        syncer.map_or(Ok(()), Syncer::finish)
    }

    /// A framed record written to its temporary file (not synced): the file, its temporary
    /// name and its name.
    fn write_temporary<R: Record>(&self, name: &str, record: &R) -> Result<(File, PathBuf, PathBuf), ImageError> {
        let (bytes, tmp, path) = self.framed(name, record);
        let mut f = create_no_follow(&tmp).map_err(|source| ImageError::Io { path: path.clone(), source })?;
        f.write_all(&bytes).map_err(|source| ImageError::Io { path: path.clone(), source })?;
        Ok((f, tmp, path))
    }

    /// A record framed as its file holds it, its temporary name and its name (both noted as
    /// written: a failed dump removes them).
    fn framed<R: Record>(&self, name: &str, record: &R) -> (Vec<u8>, PathBuf, PathBuf) {
        let path = self.path(name);
        let payload = record.encode_to_vec();
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len() + 8);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        buf.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        buf.extend_from_slice(R::KIND);
        buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        buf.extend_from_slice(&payload);
        let sum = xxh3_64(&buf);
        buf.extend_from_slice(&sum.to_le_bytes());
        let tmp = self.path(&format!(".{name}.tmp"));
        self.note_written(&tmp);
        self.note_written(&path);
        (buf, tmp, path)
    }

    /// Reads and verifies a framed record: magic, version, kind, length and checksum, and, once
    /// the seal was verified, its BLAKE3 hash against the sealed inventory. The bytes checked
    /// are the bytes decoded: those the seal's check kept ([`Self::keep_checked_bytes`]), or
    /// else bytes read now and hashed again (a file swapped after the check is caught here).
    pub fn read_record<R: Record>(&self, name: &str) -> Result<R, ImageError> {
        let path = self.path(name);
        if let Some(checked) = self.checked_bytes.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
            return decode_record(&path, &checked);
        }
        let mut file = open_image_file(&path, MAX_RECORD_BYTES)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|source| ImageError::Io { path: path.clone(), source })?;
        if let Some(hashes) = self.sealed_hashes.get() {
            let refused = |detail: &str| ImageError::Refused { path: path.clone(), detail: detail.to_owned() };
            let expected = hashes.get(name).ok_or_else(|| refused("it is not listed in the sealed inventory (field file_hashes)"))?;
            if blake3::hash(&buf).as_bytes().as_slice() != expected.as_slice() {
                return Err(refused(
                    "its BLAKE3 hash does not match the sealed inventory (field file_hashes): it was changed after the dump",
                ));
            }
        }
        decode_record(&path, &buf)
    }

    /// Keeps the bytes of record file `name` that the seal's check just read and found to
    /// have the sealed hash: [`Self::read_record`] decodes them.
    pub fn keep_checked_bytes(&self, name: &str, bytes: Vec<u8>) {
        self.checked_bytes.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), bytes);
    }

    /// From now on every record read must have the hash `hashes` lists for it (the seal of
    /// the inventory holding them was just verified).
    pub fn expect_sealed_hashes(&self, hashes: std::collections::HashMap<String, Vec<u8>>) {
        let _ = self.sealed_hashes.set(hashes);
    }

    /// A data file of the image, for a restore: opened once (not through a symlink, a regular
    /// file) and kept, so that its chunks are verified and its bytes used through the same open
    /// file, whatever is renamed into the directory meanwhile. Refused unless only crust's user
    /// (root) can write it: anyone else could change it between the check and the use.
    pub fn data_file(&self, name: &str) -> Result<File, ImageError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(ImageError::BadName { path: self.path(INVENTORY), name: name.to_owned() });
        }
        let path = self.path(name);
        let io = |source| ImageError::Io { path: path.clone(), source };
        let mut pinned = self.pinned.lock().unwrap();
        if let Some(file) = pinned.get(name) {
            return file.try_clone().map_err(io);
        }
        let file = open_image_file(&path, u64::MAX).map_err(|e| match e {
            // The name came from the image (an inventory's or a process's data_files): say so.
            ImageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ImageError::Refused {
                path: self.path(INVENTORY),
                detail: format!("its field data_files lists {name}, which is not in the image directory"),
            },
            e => e,
        })?;
        let meta = file.metadata().map_err(io)?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(ImageError::Refused {
                path,
                detail: format!(
                    "owned by uid {} with mode {:o}: a user other than {me} could change it while it is restored (chown it to {me}, chmod go-w)",
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            });
        }
        let clone = file.try_clone().map_err(io)?;
        pinned.insert(name.to_owned(), std::sync::Arc::new(file));
        Ok(clone)
    }

    /// Device and inode of a data file as [`Self::data_file`] opened it.
    pub fn data_file_identity(&self, name: &str) -> Result<(u64, u64), ImageError> {
        let file = self.data_file(name)?;
        let meta = file.metadata().map_err(|source| ImageError::Io { path: self.path(name), source })?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Creates (truncating) a raw data file.
    pub fn create_data_file(&self, name: &str) -> Result<File, ImageError> {
        let path = self.path(name);
        self.note_written(&path);
        create_no_follow(&path).map_err(|source| ImageError::Io { path, source })
    }

    /// Keeps the record of a data file whose chunks were hashed as they were written (the page
    /// copy engine), so that [`Self::checksum_data_file`] need not read the file again.
    pub fn hashed_while_written(&self, record: proto::DataFile) {
        self.hashed.lock().unwrap().insert(record.name.clone(), record);
    }

    /// Size and chunk hashes of a raw data file: as hashed while written, or read back from
    /// the image directory.
    pub fn checksum_data_file(&self, name: &str) -> Result<proto::DataFile, ImageError> {
        if let Some(record) = self.hashed.lock().unwrap().remove(name) {
            return Ok(record);
        }
        let path = self.path(name);
        let map = self.map_data_file(&path)?;
        Ok(chunks::record(name, map.as_slice()))
    }

    fn map_data_file(&self, path: &Path) -> Result<MappedFile, ImageError> {
        let file = open_image_file(path, u64::MAX)?;
        MappedFile::open(&file).map_err(|e| ImageError::Io { path: path.to_owned(), source: std::io::Error::from(e) })
    }

    /// A data file's name and size, as the inventory lists them (its content is checked by
    /// [`Self::verify_data_file`]).
    pub fn verify_data_file_size(&self, expected: &proto::DataFile) -> Result<u64, ImageError> {
        let name = expected.name.as_str();
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(ImageError::BadName { path: self.path(INVENTORY), name: name.to_owned() });
        }
        let path = self.path(&expected.name);
        let size = self.data_file(name)?.metadata().map_err(|source| ImageError::Io { path: path.clone(), source })?.len();
        if size != expected.size {
            return Err(ImageError::Truncated { path, detail: format!("{size} bytes, the inventory recorded {}", expected.size) });
        }
        Ok(size)
    }

    /// Verifies a raw data file against what the inventory recorded: its size and the hash of
    /// every chunk (XXH3 chunk checksums for images of format 1.2 and before).
    pub fn verify_data_file(&self, expected: &proto::DataFile) -> Result<(), ImageError> {
        self.verify_data_file_size(expected)?;
        let path = self.path(&expected.name);
        let file = self.data_file(&expected.name)?;
        let map = MappedFile::open(&file).map_err(|e| ImageError::Io { path: path.clone(), source: std::io::Error::from(e) })?;
        if expected.chunk_blake3.is_empty() && !expected.chunk_xxh3.is_empty() {
            return verify_xxh3_chunks(&path, expected, map.as_slice());
        }
        chunks::verify_all(&path, expected, map.as_slice())
    }
}

/// Chunk size of the XXH3 checksums of format 1.2 and before.
const LEGACY_CHUNK: usize = 32 << 20;

fn verify_xxh3_chunks(path: &Path, expected: &proto::DataFile, data: &[u8]) -> Result<(), ImageError> {
    if expected.chunk_size != LEGACY_CHUNK as u64 {
        return Err(ImageError::Truncated { path: path.to_owned(), detail: format!("unexpected chunk size {}", expected.chunk_size) });
    }
    if expected.chunk_xxh3.len() != data.len().div_ceil(LEGACY_CHUNK) {
        return Err(ImageError::Truncated { path: path.to_owned(), detail: "checksum list does not match the size".into() });
    }
    for (i, (want, chunk)) in expected.chunk_xxh3.iter().zip(data.chunks(LEGACY_CHUNK)).enumerate() {
        let found = xxh3_64(chunk);
        if *want != found {
            return Err(ImageError::Checksum {
                path: path.to_owned(),
                detail: format!("bytes {}..{}", i * LEGACY_CHUNK, i * LEGACY_CHUNK + chunk.len()),
                expected: *want,
                found,
            });
        }
    }
    Ok(())
}

fn decode_record<R: Record>(path: &Path, buf: &[u8]) -> Result<R, ImageError> {
    let kind_name = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    if buf.len() < HEADER_LEN {
        if buf.len() >= 8 && &buf[..8] != MAGIC {
            return Err(ImageError::BadMagic { path: path.to_owned() });
        }
        return Err(ImageError::Truncated {
            path: path.to_owned(),
            detail: format!("{} bytes, shorter than the {HEADER_LEN}-byte header", buf.len()),
        });
    }
    if &buf[..8] != MAGIC {
        return Err(ImageError::BadMagic { path: path.to_owned() });
    }
    let major = u16::from_le_bytes([buf[8], buf[9]]);
    let minor = u16::from_le_bytes([buf[10], buf[11]]);
    if major != FORMAT_MAJOR {
        return Err(ImageError::Version { path: path.to_owned(), major, minor });
    }
    let kind = &buf[12..16];
    let len = u64::from_le_bytes(buf[16..24].try_into().unwrap()) as usize;
    let total = HEADER_LEN.checked_add(len).and_then(|n| n.checked_add(8));
    match total {
        Some(total) if total == buf.len() => {}
        Some(total) if total > buf.len() => {
            return Err(ImageError::Truncated {
                path: path.to_owned(),
                detail: format!("{} bytes, the header announces {total}", buf.len()),
            });
        }
        _ => {
            return Err(ImageError::Truncated {
                path: path.to_owned(),
                detail: format!("{} bytes do not match the announced payload of {len} bytes", buf.len()),
            });
        }
    }
    let body_end = HEADER_LEN + len;
    let expected = u64::from_le_bytes(buf[body_end..body_end + 8].try_into().unwrap());
    let found = xxh3_64(&buf[..body_end]);
    if expected != found {
        return Err(ImageError::Checksum { path: path.to_owned(), detail: "record".into(), expected, found });
    }
    if kind != R::KIND {
        return Err(ImageError::WrongKind { path: path.to_owned(), expected: kind_name(R::KIND), found: kind_name(kind) });
    }
    R::decode(&buf[HEADER_LEN..body_end]).map_err(|e| ImageError::Decode {
        path: path.to_owned(),
        kind: kind_name(R::KIND),
        detail: e.to_string().trim_start_matches("failed to decode Protobuf message: ").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> proto::Inventory {
        proto::Inventory { kernel_release: "6.18".into(), root_pid: 42, ..Default::default() }
    }

    fn dir() -> (PathBuf, ImageDir) {
        let p = std::env::temp_dir().join(format!("crust-image-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = fs::remove_dir_all(&p);
        let d = ImageDir::create(&p).unwrap();
        (p, d)
    }

    /// A small deterministic generator for the bounded fuzz pass below.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A bounded fuzz pass over the record reader: a real record, mutated (bytes flipped,
    /// inserted, cut, lengths forged), framed again with a correct checksum so the decoder
    /// itself is exercised, then read as each kind. Every outcome is a value or an error;
    /// nothing panics or hangs, whatever lengths the bytes claim.
    #[test]
    fn mutated_records_are_errors_or_values_never_panics() {
        let (p, d) = dir();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut inventory = sample();
        inventory.processes =
            (1..5).map(|i| proto::ProcessEntry { pid: i, ppid: i - 1, comm: "x".repeat(i as usize), ..Default::default() }).collect();
        let seed = inventory.encode_to_vec();
        for round in 0..3000 {
            let mut payload = seed.clone();
            for _ in 0..1 + rng.next() % 6 {
                let at = (rng.next() as usize) % (payload.len() + 1);
                match rng.next() % 4 {
                    0 if at < payload.len() => payload[at] ^= 1 << (rng.next() % 8),
                    1 => payload.insert(at, rng.next() as u8),
                    2 => payload.truncate(at),
                    _ if at < payload.len() => payload[at] = 0xff, // a varint length that never ends
                    _ => {}
                }
            }
            let mut buf = Vec::new();
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
            buf.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
            let kind: &[u8; 4] = [b"INVT", b"CORE", b"MMAP", b"FILE", b"OFDS"][round % 5];
            buf.extend_from_slice(kind);
            buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            buf.extend_from_slice(&payload);
            let sum = xxh3_64(&buf);
            buf.extend_from_slice(&sum.to_le_bytes());
            fs::write(d.path("fuzz.img"), &buf).unwrap();
            let _ = d.read_record::<proto::Inventory>("fuzz.img");
            let _ = d.read_record::<proto::Core>("fuzz.img");
            let _ = d.read_record::<proto::Mm>("fuzz.img");
            let _ = d.read_record::<proto::Files>("fuzz.img");
            let _ = d.read_record::<proto::OpenFiles>("fuzz.img");
        }
        fs::remove_dir_all(p).unwrap();
    }

    #[test]
    fn record_round_trips() {
        let (p, d) = dir();
        d.write_record(INVENTORY, &sample()).unwrap();
        let back: proto::Inventory = d.read_record(INVENTORY).unwrap();
        assert_eq!(back, sample());
        fs::remove_dir_all(p).unwrap();
    }

    #[test]
    fn every_damage_is_named() {
        let (p, d) = dir();
        d.write_record(INVENTORY, &sample()).unwrap();
        let good = fs::read(d.path(INVENTORY)).unwrap();
        let check = |bytes: &[u8], want: &str| {
            let err = decode_record::<proto::Inventory>(Path::new("x.img"), bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
            assert!(err.contains("x.img"));
        };
        check(&good[..good.len() - 3], "truncated");
        check(&good[..10], "truncated");
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 1] ^= 0x40;
        check(&flipped, "checksum");
        let mut magic = good.clone();
        magic[0] = b'X';
        check(&magic, "bad magic");
        let mut version = good.clone();
        version[8] = 9;
        check(&version, "format version 9");
        let wrong = decode_record::<proto::Core>(Path::new("x.img"), &good).unwrap_err().to_string();
        assert!(wrong.contains("INVT") && wrong.contains("CORE"), "{wrong}");
        fs::remove_dir_all(p).unwrap();
    }
}
