//! Kinds of open file descriptions: one module per kind, each behind [`FdKind`], all listed once
//! in [`KINDS`].
//!
//! The fd table ([`crate::kinds::files`]) finds the descriptions of the tree, shares them
//! between fds and processes, takes locks and leases, and knows no kind by name: for everything
//! that depends on what a description is, it asks the kinds through the registry. A kind owns
//! its record (one variant of `OpenFile.kind` in proto/crust_image.proto), how it recognises its
//! files at dump and records them, the checks that need the whole tree, how restore opens a
//! description again, and what it does once everything else exists.
//!
//! ```text
//!            dump (every fd of every frozen process)              restore
//! files.rs   new description? --> KINDS: first `recognises` -->   precheck (before any process)
//!                                  `dump` -> record, group        session_set (process created)
//!            every fd seen    --> every kind's `check_tree`       open (by the creating process)
//!                                                                 session_set (before its forks)
//!                                                                 groups_exist (every group)
//!                                                                 finish_descriptions (tree exists)
//!                                                                 fds_in_place, after_files (per process)
//! ```
//!
//! Adding a kind:
//! 1. its record: a message and one line in `oneof kind` of `OpenFile` (a new field number;
//!    the others never change);
//! 2. its module here (and its `mod` line below): `impl FdKind` for a unit struct; only
//!    `record_of`, `into_kind`, `recognises`, `dump`, `open` and `describe` have no default;
//! 3. one line in [`KINDS`].
//!
//! The tests (`tests.rs`) fail when a record variant has no registered kind or two (their list
//! of variants does not compile until the new one is added to it), and check which kind dump
//! hands real fds of each type to.
//!
//! A kind needs nothing but this module, [`common`], `crate::sys`, `crate::image` and the
//! helpers of `crate::kinds` (the restore context, `file_check`, the filesystem identity of
//! `credentials`); fd kinds never import each other, nor the fd table. The state a kind keeps
//! while a tree is dumped lives in [`KindState`], keyed by its own type.

pub mod chardev;
pub mod common;
pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod inet_socket;
pub mod inotify;
pub mod memfd;
pub mod namespace;
pub mod netlink_socket;
pub mod packet_socket;
pub mod pidfd;
pub mod pipe;
pub mod proc_file;
pub mod pty;
pub mod regular;
pub mod shared_memory;
pub mod signalfd;
pub mod timerfd;
pub mod tty;
pub mod unix_socket;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::RestoreCtx;
use crate::image::proto::{Files, OpenFile, open_file};

/// Every fd kind. Dump asks them in this order and the first that recognises an fd records it:
/// a kind that takes a part of another's files (memfds, pidfds, namespace files and /proc files
/// among regular files, pseudo-terminals among terminals, terminals among character devices)
/// comes before it. The other steps run in this order too: inotify and fanotify add their
/// watches and marks before epoll registers (and may write into a watched pipe for a moment);
/// pseudo-terminals sort out the terminals of the tree's own sessions before the terminal
/// kind refuses the others.
pub static KINDS: &[&dyn DynFdKind] = &[
    &Registered::<memfd::Memfds>::KIND,
    &Registered::<pidfd::Pidfds>::KIND,
    &Registered::<namespace::NamespaceFiles>::KIND,
    &Registered::<proc_file::ProcFiles>::KIND,
    &Registered::<regular::RegularFiles>::KIND,
    &Registered::<pty::Ptys>::KIND,
    &Registered::<tty::Terminals>::KIND,
    &Registered::<chardev::CharDevices>::KIND,
    &Registered::<pipe::Pipes>::KIND,
    &Registered::<inet_socket::InetSockets>::KIND,
    &Registered::<netlink_socket::NetlinkSockets>::KIND,
    &Registered::<packet_socket::PacketSockets>::KIND,
    &Registered::<unix_socket::UnixSockets>::KIND,
    &Registered::<eventfd::Eventfds>::KIND,
    &Registered::<signalfd::Signalfds>::KIND,
    &Registered::<timerfd::Timerfds>::KIND,
    &Registered::<inotify::Inotifies>::KIND,
    &Registered::<fanotify::Fanotifies>::KIND,
    &Registered::<epoll::Epolls>::KIND,
    &Registered::<fifo::Fifos>::KIND,
    &Registered::<shared_memory::SharedMemoryObjects>::KIND,
];

/// One kind of open file description.
pub trait FdKind: 'static {
    /// The image record of one description (its variant of `OpenFile.kind`).
    type Record: Clone + 'static;
    /// For people: "pipe", "eventfd"...
    const NAME: &'static str;
    /// Whether a description of this kind can be restored when it is held by no fd, only in
    /// flight in a UNIX socket (SCM_RIGHTS): not when its restore needs a holder's fd table
    /// (epoll targets, inotify watches, FIFO openers) or its holders (the other kinds that say
    /// so); such a description held only in flight is refused by name.
    const IN_FLIGHT: bool = true;
    /// This kind's record in the variant, if the variant is this kind's.
    fn record_of(kind: &open_file::Kind) -> Option<&Self::Record>;
    /// The variant holding a record of this kind.
    fn into_kind(record: Self::Record) -> open_file::Kind;

    /// Dump: whether the fd is one of this kind's (from its type and link alone; cheap, no
    /// side effect).
    fn recognises(src: &FdSource) -> bool;
    /// Dump, before anything is frozen: the refusals this kind can make from the fd alone,
    /// touching nothing (so a tree that will be refused is never stopped). `dump` makes them
    /// again, and authoritatively, once the tree is frozen.
    fn refuse_early(src: &FdSource) -> Result<()> {
        let _ = src;
        Ok(())
    }
    /// Dump, before anything is frozen, once `refuse_early` saw every fd of the tree: the
    /// refusals that need the whole tree (the other end of a pipe outside it), from what /proc
    /// showed, touching nothing. `check_tree` makes them again, authoritatively, once frozen.
    fn refuse_early_tree(seen: &[SeenFd], externals: &[String]) -> Result<()> {
        let _ = (seen, externals);
        Ok(())
    }
    /// Dump: records the description behind an fd this kind recognised (never reopening it),
    /// or refuses it by pid, fd and what it is.
    fn dump(src: &FdSource, state: &mut KindState) -> Result<Dumped<Self::Record>>;
    /// Dump, once every fd of the tree was seen (still frozen, before any memory is saved):
    /// checks that need the whole tree (the other end of a pipe, a peer socket, holders outside
    /// it) and completes the records. Descriptions found through mappings come later.
    fn check_tree(files: &mut [OpenFile], tree: &WholeTree, state: &mut KindState) -> Result<()> {
        let _ = (files, tree, state);
        Ok(())
    }
    /// Dump, for a record whose `dump` returned descriptions it carries ([`Dumped::carried`]):
    /// `ids[i]` is the description id the table gave `carried[i]`.
    fn resolve_carried(record: &mut Self::Record, ids: &[u32]) -> Result<()> {
        let _ = (record, ids);
        bail!("{} carries descriptions but does not say where", Self::NAME)
    }

    /// Dump without -R, once the tree was killed: what must happen before crust lets go of the
    /// copies of the tree's files it kept in `state` (TCP connections are closed silently, in
    /// repair mode, so that their peers see nothing).
    fn after_kill(state: &mut KindState) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// Dump without -R: whether [`FdKind::after_kill`] needs the killed tree gone (its
    /// descriptors closed) first. Otherwise crust does not wait for the processes to finish
    /// dying (freeing their memory takes tens of milliseconds per GiB).
    fn after_kill_waits(state: &mut KindState) -> bool {
        let _ = state;
        false
    }

    /// Restore, when it failed (every process it created was killed): what the image's
    /// descriptions hold outside the processes that must go too (network locks).
    fn restore_failed(files: &[(&OpenFile, &Self::Record)]) {
        let _ = files;
    }

    /// Restore, before any process exists: what must still be true of the machine.
    fn precheck(file: &OpenFile, record: &Self::Record) -> Result<()> {
        let _ = (file, record);
        Ok(())
    }
    /// Restore: whether the description can be created now, while the tree is being created
    /// (a pidfd needs its process). One that cannot waits: its creator opens it before forking
    /// the next child once it can, and at the latest after forking all of them.
    fn can_open_now(record: &Self::Record) -> bool {
        let _ = record;
        true
    }
    /// Restore: creates the description in the process of `ctx` and returns a temporary fd for
    /// it. Descriptions created by one call (`created_with`) keep their fds in `together`.
    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &Self::Record, together: &mut Together) -> Result<i32>;
    /// Restore, once every process exists, in the process that opened `files` (still at their
    /// working fds): what needed the others (socket queues refilled with senders' credentials).
    fn finish_descriptions(ctx: &mut RestoreCtx, files: &[(&OpenFile, &Self::Record)]) -> Result<()> {
        let _ = (ctx, files);
        Ok(())
    }
    /// Restore, once every process, thread and description of the tree is in place, right
    /// before the tree resumes (nothing can fail after this but the resume itself): what
    /// must wait for the last moment (connections leave TCP repair mode, so that a restore
    /// failing or killed before closes them without a word to their peers).
    fn before_resume() -> Result<()> {
        Ok(())
    }
    /// Restore, in each process once its session and group are set: with `before_forks`
    /// false before it opens its descriptions, then with it true once they are open and its
    /// memory restored, right before it forks its children (what they must inherit, like a
    /// controlling terminal).
    fn session_set(ctx: &mut RestoreCtx, before_forks: bool) -> Result<()> {
        let _ = (ctx, before_forks);
        Ok(())
    }
    /// Restore, in each process once every process group of the tree exists (a terminal's
    /// foreground group).
    fn groups_exist(ctx: &mut RestoreCtx) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    /// Restore, in each process once its fds are at their numbers: what names fds of the
    /// process by number (epoll registrations, inotify watches).
    fn fds_in_place(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        let _ = (ctx, fds);
        Ok(())
    }
    /// Restore, in each process after every kind's [`FdKind::fds_in_place`]: undoing what
    /// restoring left behind (events the restore itself queued).
    fn after_files(ctx: &mut RestoreCtx) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    /// Restore, in each process once every thread of the tree exists (its fds are in place):
    /// what needed the threads (a pidfd of a thread).
    fn after_threads(ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        let _ = (ctx, fds);
        Ok(())
    }

    /// How errors name a description: a path, "pipe:[N]", "eventfd"...
    fn describe(record: &Self::Record) -> String;
    /// Raw data files of the image the record names.
    fn data_files(record: &Self::Record) -> Vec<String> {
        let _ = record;
        Vec::new()
    }
    /// The key (`--inherit-fd fd[N]:KEY`) of an object outside the tree that restore is given
    /// instead of creating this description.
    fn external_key(record: &Self::Record) -> Option<String> {
        let _ = record;
        None
    }
    /// Restore: processes that need the description to exist before they fork although they
    /// hold no fd of it (a session leader whose controlling terminal a pair is): the
    /// description is created by an ancestor of them too.
    fn needed_by(record: &Self::Record) -> Vec<u32> {
        let _ = record;
        Vec::new()
    }
    /// `crust show`: makes the record's JSON readable (bytes as text...).
    fn show(record: &Self::Record, json: &mut serde_json::Value) {
        let _ = (record, json);
    }
}

/// What a kind's dump records for one description.
pub struct Dumped<R> {
    pub record: R,
    /// Descriptions with the same non-zero value are created together at restore, by one
    /// system call (see `OpenFile.created_with`); kinds tag their values so they never meet.
    pub created_with: u64,
    /// Descriptions this one carries (files in flight in a socket's queue, as crust's own
    /// fds): the table records them like any other description once every fd of the tree
    /// was seen, and hands their ids to [`FdKind::resolve_carried`].
    pub carried: Vec<OwnedFd>,
}

impl<R> Dumped<R> {
    /// A description created on its own.
    pub fn alone(record: R) -> Self {
        Dumped { record, created_with: 0, carried: Vec::new() }
    }
}

/// What a kind's dump sees of one fd of a frozen process.
pub struct FdSource<'a> {
    pub pid: i32,
    pub fd: i32,
    /// The /proc/PID/fd/N link text: a path, "pipe:[N]", "anon_inode:[eventfd]"...
    pub link: &'a str,
    pub meta: &'a std::fs::Metadata,
    /// crust's pidfd_getfd copy of the fd: inspect through it, never reopen the file.
    pub copy: &'a OwnedFd,
    /// The whole /proc/PID/fdinfo/N text.
    pub fdinfo: &'a str,
    pub image: &'a crate::image::ImageDir,
    /// dump --shell-job was given.
    pub shell_job: bool,
    /// What the reference tool's permission options given to dump allow (--tcp-established...).
    pub permits: &'a crate::permits::Permits,
    /// Another open file description of the same inode (dev, ino) was recorded before this one
    /// (meaningful for files that cannot be reopened by path, like a memfd; anonymous-inode
    /// kinds all share one inode).
    pub inode_seen: bool,
}

impl FdSource<'_> {
    /// The error for an fd crust cannot restore faithfully, naming pid, fd and kind.
    pub fn refuse(&self, kind: &str) -> anyhow::Error {
        anyhow::anyhow!("pid {} fd {}: {kind} ({}) cannot be checkpointed by crust yet", self.pid, self.fd, self.link)
    }

    /// A `key:` field of fdinfo (first occurrence), trimmed.
    pub fn fdinfo_field(&self, key: &str) -> Option<&str> {
        self.fdinfo.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
    }

    /// A socket's address family (AF_INET, AF_UNIX...), None for other files.
    pub fn socket_domain(&self) -> Option<i32> {
        if self.file_type() != libc::S_IFSOCK {
            return None;
        }
        crate::sys::socket::get_int(std::os::fd::AsFd::as_fd(self.copy), libc::SOL_SOCKET, libc::SO_DOMAIN).ok()
    }

    /// The file type bits of the fd's inode (`S_IFREG`, `S_IFIFO`...).
    pub fn file_type(&self) -> u32 {
        self.meta.mode() & libc::S_IFMT
    }
}

/// Every (pid, fd) of the tree referring to each open file description, by description id; the
/// first is the fd it was recorded through.
pub type Holders = BTreeMap<u32, Vec<(i32, i32)>>;

/// What a kind's whole-tree check ([`FdKind::check_tree`]) sees besides the records.
/// One fd of the tree as /proc showed it before the freeze (for [`FdKind::refuse_early_tree`]).
pub struct SeenFd {
    pub pid: i32,
    pub fd: i32,
    /// The /proc/PID/fd link ("pipe:[123]", a path...).
    pub link: String,
    /// The description's status flags (fdinfo `flags:`), access mode included.
    pub flags: u32,
    /// The file's device and inode.
    pub dev: u64,
    pub inode: u64,
}

pub struct WholeTree<'a> {
    pub holders: &'a Holders,
    /// Objects the user declared external (dump --external KEY, e.g. "pipe:[1234]").
    pub externals: &'a [String],
    /// Every process of the dumped tree, zombies included.
    pub pids: &'a std::collections::BTreeSet<i32>,
}

/// Descriptions created together by one call (see OpenFile.created_with): the temporary fds
/// made for a group, kept until every description of the group was opened, then closed.
pub type Together = BTreeMap<u64, Vec<i32>>;

/// The state kinds keep while one tree is dumped, one value per type (a kind's own type, so
/// no kind sees another's), created empty on first use.
#[derive(Default)]
pub struct KindState(BTreeMap<TypeId, Box<dyn Any>>);

impl KindState {
    pub fn get<T: Any + Default>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut()
            .expect("KindState holds each value under its own type")
    }
}

/// [`FdKind`] with its record type erased: what [`KINDS`] holds and the fd table calls. The
/// methods taking a description are only called on the kind that [`DynFdKind::owns`] it.
pub trait DynFdKind: Sync {
    fn name(&self) -> &'static str;
    fn owns(&self, kind: &open_file::Kind) -> bool;
    fn recognises(&self, src: &FdSource) -> bool;
    fn in_flight(&self) -> bool;
    fn refuse_early(&self, src: &FdSource) -> Result<()>;
    fn refuse_early_tree(&self, seen: &[SeenFd], externals: &[String]) -> Result<()>;
    /// The record as its `OpenFile.kind` variant, with its `created_with` group.
    fn dump(&self, src: &FdSource, state: &mut KindState) -> Result<Dumped<open_file::Kind>>;
    fn resolve_carried(&self, file: &mut OpenFile, ids: &[u32]) -> Result<()>;
    fn check_tree(&self, files: &mut [OpenFile], tree: &WholeTree, state: &mut KindState) -> Result<()>;
    fn after_kill(&self, state: &mut KindState) -> Result<()>;
    fn after_kill_waits(&self, state: &mut KindState) -> bool;
    fn restore_failed(&self, files: &[OpenFile]);
    fn precheck(&self, file: &OpenFile) -> Result<()>;
    fn can_open_now(&self, file: &OpenFile) -> bool;
    fn open(&self, ctx: &mut RestoreCtx, file: &OpenFile, together: &mut Together) -> Result<i32>;
    /// Called with every description the process created; the kind takes its own.
    fn finish_descriptions(&self, ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()>;
    fn session_set(&self, ctx: &mut RestoreCtx, before_forks: bool) -> Result<()>;
    fn before_resume(&self) -> Result<()>;
    fn groups_exist(&self, ctx: &mut RestoreCtx) -> Result<()>;
    fn fds_in_place(&self, ctx: &mut RestoreCtx, fds: &Files) -> Result<()>;
    fn after_files(&self, ctx: &mut RestoreCtx) -> Result<()>;
    fn after_threads(&self, ctx: &mut RestoreCtx, fds: &Files) -> Result<()>;
    fn describe(&self, file: &OpenFile) -> String;
    fn data_files(&self, file: &OpenFile) -> Vec<String>;
    fn external_key(&self, file: &OpenFile) -> Option<String>;
    fn needed_by(&self, file: &OpenFile) -> Vec<u32>;
    fn show(&self, file: &OpenFile, json: &mut serde_json::Value);
}

/// The registry entry of kind `K`.
struct Registered<K>(PhantomData<fn() -> K>);

impl<K: FdKind> Registered<K> {
    const KIND: Self = Registered(PhantomData);

    fn record(file: &OpenFile) -> Result<&K::Record> {
        match file.kind.as_ref().and_then(K::record_of) {
            Some(record) => Ok(record),
            None => bail!("open file #{} is not a {} (asked of the wrong kind)", file.id, K::NAME),
        }
    }
}

impl<K: FdKind> DynFdKind for Registered<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn owns(&self, kind: &open_file::Kind) -> bool {
        K::record_of(kind).is_some()
    }
    fn recognises(&self, src: &FdSource) -> bool {
        K::recognises(src)
    }
    fn in_flight(&self) -> bool {
        K::IN_FLIGHT
    }
    fn refuse_early(&self, src: &FdSource) -> Result<()> {
        K::refuse_early(src)
    }
    fn refuse_early_tree(&self, seen: &[SeenFd], externals: &[String]) -> Result<()> {
        K::refuse_early_tree(seen, externals)
    }
    fn dump(&self, src: &FdSource, state: &mut KindState) -> Result<Dumped<open_file::Kind>> {
        let d = K::dump(src, state)?;
        Ok(Dumped { record: K::into_kind(d.record), created_with: d.created_with, carried: d.carried })
    }
    fn resolve_carried(&self, file: &mut OpenFile, ids: &[u32]) -> Result<()> {
        let id = file.id;
        let Some(kind) = file.kind.as_mut() else { bail!("open file #{id} without a kind") };
        let mut record = match K::record_of(kind) {
            Some(r) => r.clone(),
            None => bail!("open file #{id} is not a {} (asked of the wrong kind)", K::NAME),
        };
        K::resolve_carried(&mut record, ids)?;
        *kind = K::into_kind(record);
        Ok(())
    }
    fn check_tree(&self, files: &mut [OpenFile], tree: &WholeTree, state: &mut KindState) -> Result<()> {
        K::check_tree(files, tree, state)
    }
    fn after_kill(&self, state: &mut KindState) -> Result<()> {
        K::after_kill(state)
    }
    fn after_kill_waits(&self, state: &mut KindState) -> bool {
        K::after_kill_waits(state)
    }
    fn restore_failed(&self, files: &[OpenFile]) {
        let mine: Vec<(&OpenFile, &K::Record)> = files.iter().filter_map(|f| Some((f, f.kind.as_ref().and_then(K::record_of)?))).collect();
        if !mine.is_empty() {
            K::restore_failed(&mine);
        }
    }
    fn precheck(&self, file: &OpenFile) -> Result<()> {
        K::precheck(file, Self::record(file)?)
    }
    fn can_open_now(&self, file: &OpenFile) -> bool {
        Self::record(file).map(K::can_open_now).unwrap_or(true)
    }
    fn open(&self, ctx: &mut RestoreCtx, file: &OpenFile, together: &mut Together) -> Result<i32> {
        K::open(ctx, file, Self::record(file)?, together)
    }
    fn finish_descriptions(&self, ctx: &mut RestoreCtx, files: &[&OpenFile]) -> Result<()> {
        let mine: Vec<(&OpenFile, &K::Record)> = files.iter().filter_map(|f| Some((*f, f.kind.as_ref().and_then(K::record_of)?))).collect();
        if mine.is_empty() {
            return Ok(());
        }
        K::finish_descriptions(ctx, &mine)
    }
    fn session_set(&self, ctx: &mut RestoreCtx, before_forks: bool) -> Result<()> {
        K::session_set(ctx, before_forks)
    }
    fn before_resume(&self) -> Result<()> {
        K::before_resume()
    }
    fn groups_exist(&self, ctx: &mut RestoreCtx) -> Result<()> {
        K::groups_exist(ctx)
    }
    fn fds_in_place(&self, ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        K::fds_in_place(ctx, fds)
    }
    fn after_files(&self, ctx: &mut RestoreCtx) -> Result<()> {
        K::after_files(ctx)
    }
    fn after_threads(&self, ctx: &mut RestoreCtx, fds: &Files) -> Result<()> {
        K::after_threads(ctx, fds)
    }
    fn describe(&self, file: &OpenFile) -> String {
        Self::record(file).map(K::describe).unwrap_or_else(|_| K::NAME.to_string())
    }
    fn data_files(&self, file: &OpenFile) -> Vec<String> {
        Self::record(file).map(K::data_files).unwrap_or_default()
    }
    fn external_key(&self, file: &OpenFile) -> Option<String> {
        K::external_key(Self::record(file).ok()?)
    }
    fn needed_by(&self, file: &OpenFile) -> Vec<u32> {
        Self::record(file).map(K::needed_by).unwrap_or_default()
    }
    fn show(&self, file: &OpenFile, json: &mut serde_json::Value) {
        if let Ok(record) = Self::record(file) {
            K::show(record, json);
        }
    }
}

/// The registered kind whose record `kind` is.
/// Dump without -R, once the tree was killed: every kind's [`FdKind::after_kill`]. All run; the
/// first error is returned.
pub fn after_kill(state: &mut KindState) -> Result<()> {
    let mut result = Ok(());
    for kind in KINDS {
        let r = kind.after_kill(state).with_context(|| format!("after the kill: {}", kind.name()));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Dump without -R: whether some kind's [`FdKind::after_kill`] needs the killed tree gone.
pub fn after_kill_waits(state: &mut KindState) -> bool {
    KINDS.iter().any(|kind| kind.after_kill_waits(state))
}

/// Restore failed: every kind's [`FdKind::restore_failed`].
/// Restore, right before the tree resumes: see [`FdKind::before_resume`].
pub fn before_resume() -> Result<()> {
    KINDS.iter().try_for_each(|kind| kind.before_resume())
}

pub fn restore_failed(files: &crate::image::proto::OpenFiles) {
    for kind in KINDS {
        kind.restore_failed(&files.open_files);
    }
}

pub fn kind_of(kind: &open_file::Kind) -> Option<&'static dyn DynFdKind> {
    KINDS.iter().copied().find(|k| k.owns(kind))
}

/// The registered kind of a description, or an error naming it.
pub fn kind_of_file(file: &OpenFile) -> Result<&'static dyn DynFdKind> {
    let kind = file.kind.as_ref().context("open file without a kind")?;
    kind_of(kind).with_context(|| format!("open file #{}: no registered fd kind records it", file.id))
}

#[cfg(test)]
mod tests;
