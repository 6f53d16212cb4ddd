//! The restore pipeline: check the image, create the process tree with its PIDs, restore every
//! kind of every process in dependency order, resume.
//!
//! 1. Read and verify the whole image (records, page-file checksums), the machine (kernel,
//!    vDSO, files unchanged) and that every PID is free. Nothing exists yet.
//! 2. Create the tree top down. The root is a clone3 child of crust; every other process is
//!    forked by its restored parent (an injected clone3 with `set_tid`), so it really is that
//!    process's child. Before forking, a process takes its session or group leadership and opens
//!    the open file descriptions it is the nearest common ancestor of all holders of, so its
//!    children inherit them: shared descriptions are shared again.
//! 3. Zombies exit with their status; processes join their process groups. Each process that
//!    created descriptions finishes them, now that every process exists (UNIX socket queues
//!    are refilled with their senders' credentials, options and shutdowns set).
//! 4. Each process restores memory, files, identity, signals, timers, thread state, rlimits and
//!    credentials, then memory-deny-write-execute (once crust has made all its mappings), then
//!    drops crust's helper area.
//! 5. Every process is released from a stop in the kernel's signal path, so interrupted system
//!    calls restart exactly as the kernel would have done it.
//!
//! A failure at any point kills every process created so far: restore succeeds or leaves
//! nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::info;

use crate::image::proto::{Core, Files as FilesRecord, Inventory, Mm, OpenFile, OpenFiles, ProcessEntry};
use crate::image::{self, ImageDir};
use crate::kinds::credentials::Credentials;
use crate::kinds::files;
use crate::kinds::identity::{self, Identity, IdentityRecord};
use crate::kinds::lazy_move;
use crate::kinds::memory::{self, Memory};
use crate::kinds::registers::{self, ThreadState};
use crate::kinds::signals::SignalsRecord;
use crate::kinds::timers::Timers;
use crate::kinds::{Kind, RestoreCtx};
use crate::progress::Progress;
use crate::sys::pidfd::pidfd_open;
use crate::sys::remote::RemoteTask;
use crate::sys::{clone3, ptrace};

#[derive(Default)]
pub struct RestoreOptions {
    pub detach: bool,
    /// `--inherit-fd fd[N]:KEY`: crust's fd N stands for the external object KEY.
    pub inherit_fds: Vec<(i32, String)>,
    /// `--shell-job`: restore a shell job on crust's terminal.
    pub shell_job: bool,
    /// `--lease-policy`: what happens to lease breaks that were in progress.
    pub lease_policy: Option<crate::kinds::leases::Policy>,
    /// `--file-validation`: how the code a process ran is compared with the files now.
    pub file_validation: memory::CodeValidation,
    /// `--trust-image`: restore an image whose seal is missing, foreign or wrong.
    pub trust_image: bool,
    /// `--leave-stopped`: the tree is let go stopped by SIGSTOP (SIGCONT starts it).
    pub leave_stopped: bool,
    /// `--pidfile`: where the root's pid is written once the tree runs.
    pub pidfile: Option<std::path::PathBuf>,
    /// What the reference tool's permission options allow (recorded; see [`Permits`]).
    pub permits: crate::permits::Permits,
    /// `--lazy-pages`: private anonymous pages come on demand (see kinds/lazy_pages.rs).
    pub lazy_pages: bool,
}

/// How a restore ended.
pub enum Restored {
    /// Detached: the processes run on their own.
    Running { pid: i32, elapsed: Duration },
    /// crust waited for the root process; its exit status as a shell would report it, and how
    /// long the restore took before it ran.
    Exited { pid: i32, status: i32, elapsed: Duration },
}

/// The records of one live process.
pub struct ProcessImage {
    pub core: Core,
    pub mm: Mm,
    pub files: FilesRecord,
}

/// Everything read from an image directory, verified.
pub struct LoadedImage {
    pub dir: ImageDir,
    pub inventory: Inventory,
    /// Live processes by pid (zombies have only their inventory entry).
    pub processes: BTreeMap<u32, ProcessImage>,
    pub open_files: OpenFiles,
    /// Page files not verified yet (a restore checks them while the pages are read in).
    pub deferred_pages: Vec<(u32, crate::image::proto::DataFile)>,
}

impl LoadedImage {
    fn entries(&self) -> &[ProcessEntry] {
        &self.inventory.processes
    }

    /// The live processes, each after its parent (depth first from the root).
    fn tree_order(&self) -> Vec<u32> {
        let mut order = Vec::new();
        let mut stack = vec![self.inventory.root_pid];
        while let Some(pid) = stack.pop() {
            if self.processes.contains_key(&pid) {
                order.push(pid);
            }
            let mut kids: Vec<u32> = self.children(pid).map(|c| c.pid).collect();
            kids.reverse();
            stack.extend(kids);
        }
        order
    }

    fn children(&self, pid: u32) -> impl Iterator<Item = &ProcessEntry> {
        self.entries().iter().filter(move |e| e.ppid == pid && e.pid != pid)
    }

    fn max_fd(&self) -> i32 {
        self.processes.values().map(|p| files::max_fd(&p.files)).max().unwrap_or(2)
    }
}

/// Reads and verifies a whole image: every record, page-file sizes and checksums.
pub fn load(dir: &Path, trust_image: bool) -> Result<LoadedImage> {
    load_deferring_pages(dir, trust_image, false)
}

/// [`load`]; with `defer_pages`, page files are only checked for their size and chunk list
/// here, and listed in `deferred_pages` for the restore to verify while it reads them in.
fn load_deferring_pages(dir: &Path, trust_image: bool, defer_pages: bool) -> Result<LoadedImage> {
    let dir = ImageDir::open(dir)?;
    check_is_image(&dir)?;
    let inventory: Inventory = dir.read_record(image::INVENTORY).context("the image is damaged")?;
    if trust_image {
        tracing::warn!("--trust-image: the image's seal and record hashes are not checked");
    } else {
        crate::timing::step("restore: load: seal", || image::seal::verify(&dir, &inventory))?;
        crate::fault::point("restore-sealed")?;
    }
    // Trusted or sealed, data files are checked against their chunk hashes (sealed through
    // the inventory): against damage and, sealed, against edits.
    let verify_data = |data: &crate::image::proto::DataFile| -> Result<()> { Ok(dir.verify_data_file(data)?) };
    if !inventory.processes.iter().any(|p| p.pid == inventory.root_pid && !p.zombie) {
        bail!("image file {}: field processes does not list the root process {} (field root_pid)", image::INVENTORY, inventory.root_pid);
    }
    let mut processes = BTreeMap::new();
    let mut deferred = Vec::new();
    for entry in inventory.processes.iter().filter(|e| !e.zombie) {
        let pid = entry.pid;
        let core: Core = dir.read_record(&image::core_name(pid))?;
        let mm: Mm = crate::timing::step("restore: load: mm", || dir.read_record(&image::mm_name(pid)))?;
        let files: FilesRecord = dir.read_record(&image::files_name(pid))?;
        for data in &entry.data_files {
            if defer_pages && data.name == mm.pages_file && !data.chunk_blake3.is_empty() {
                let size = dir.verify_data_file_size(data)?;
                crate::image::chunks::check_layout(&dir.path(&data.name), data, size)?;
                deferred.push((pid, data.clone()));
            } else {
                verify_data(data)?;
            }
        }
        processes.insert(pid, ProcessImage { core, mm, files });
    }
    let open_files: OpenFiles = dir.read_record(image::OPEN_FILES)?;
    for data in &inventory.data_files {
        verify_data(data)?;
    }
    let img = LoadedImage { dir, inventory, processes, open_files, deferred_pages: deferred };
    crate::timing::step("restore: load: structure", || check_structure(&img))?;
    check_data_file_names(&img)?;
    Ok(img)
}

/// Highest fd number a restore accepts (the kernel's own ceiling, fs.nr_open, is 2^20 by default).
const MAX_FD: i32 = 1 << 20;
/// Longest remaining lease break time a restore accepts (a day; lease-break-time is seconds).
const MAX_LEASE_MS: u64 = 86_400_000;

/// The image's structure, checked before anything is created: a damaged or hostile image is
/// refused with a message naming the file and the field, never by a panic, a hang or an
/// allocation it sizes itself.
fn check_structure(img: &LoadedImage) -> Result<()> {
    let inv = image::INVENTORY;
    let mut seen = BTreeSet::new();
    for e in img.entries() {
        if e.pid == 0 || e.pid > i32::MAX as u32 || !seen.insert(e.pid) {
            bail!("image file {inv}: field processes: pid {} is invalid or listed twice", e.pid);
        }
    }
    // Every process but the root is forked by its parent: the parent is in the image, and
    // following parents from any process reaches the root, in at most as many steps as there
    // are processes (a cycle never does).
    let parent: BTreeMap<u32, u32> = img.entries().iter().map(|e| (e.pid, e.ppid)).collect();
    let root = img.inventory.root_pid;
    for e in img.entries() {
        let mut p = e.pid;
        let mut steps = 0;
        while p != root {
            p = match parent.get(&p) {
                Some(pp) if steps < parent.len() => *pp,
                _ => bail!(
                    "image file {inv}: field processes: pid {} is not a descendant of the root pid {root} (ppid chain broken or looping)",
                    e.pid
                ),
            };
            steps += 1;
        }
    }
    let files: BTreeSet<u32> = img.open_files.open_files.iter().map(|f| f.id).collect();
    for (pid, p) in &img.processes {
        let name = image::files_name(*pid);
        for fd in &p.files.fds {
            if !(0..MAX_FD).contains(&fd.fd) {
                bail!("image file {name}: field fds: fd {} is out of range (0..{MAX_FD})", fd.fd);
            }
            if !files.contains(&fd.open_file_id) {
                bail!(
                    "image file {name}: field fds: fd {} names open file #{}, which {} does not hold",
                    fd.fd,
                    fd.open_file_id,
                    image::OPEN_FILES
                );
            }
        }
        for (field, path) in [("cwd", &p.files.cwd), ("root", &p.files.root)] {
            if path.len() >= libc::PATH_MAX as usize {
                bail!("image file {name}: field {field}: a path of {} bytes (longer than PATH_MAX)", path.len());
            }
        }
        memory::check_structure(&p.mm, &image::mm_name(*pid))?;
        if p.core.threads.is_empty() {
            bail!("image file {}: field threads: the process has no thread", image::core_name(*pid));
        }
        if let Some(control) = &p.core.control {
            identity::check_mdwe(control, &image::core_name(*pid))?;
        }
    }
    for f in &img.open_files.open_files {
        check_open_file_numbers(f)?;
        for carrier in &f.in_flight_in {
            if !files.contains(carrier) || *carrier == f.id {
                bail!(
                    "image file {}: field in_flight_in of open file #{}: #{carrier} is not another description of the image",
                    image::OPEN_FILES,
                    f.id
                );
            }
        }
        check_names(f)?;
        if let Some(l) = &f.lease
            && (l.remaining_ms > MAX_LEASE_MS || l.downgrade_remaining_ms > MAX_LEASE_MS)
        {
            bail!(
                "image file {}: field lease.remaining_ms of open file #{}: {} ms is out of range (at most a day)",
                image::OPEN_FILES,
                f.id,
                l.remaining_ms.max(l.downgrade_remaining_ms)
            );
        }
    }
    Ok(())
}

/// The paths a description names that crust acts on as root (socket names, /proc files):
/// nothing that could lead outside what the process had (`..` components).
fn check_names(f: &OpenFile) -> Result<()> {
    use crate::kinds::fd::{proc_file, unix_socket};
    let fault = match &f.kind {
        Some(crate::image::proto::open_file::Kind::UnixSocket(u)) => unix_socket::check_structure(u).err(),
        Some(crate::image::proto::open_file::Kind::ProcFile(p)) => proc_file::check_structure(p).err(),
        _ => None,
    };
    if let Some((field, why)) = fault {
        bail!("image file {}: field {field} of open file #{}: {why}", image::OPEN_FILES, f.id);
    }
    Ok(())
}

/// The numbers of one open file description that restore counts with: its id (its working fd
/// is `work_fd_floor + id`, so an id near 2^31 would overflow) and an inotify's watch
/// descriptors (restore advances the kernel's wd counter one by one up to each: a wd near 2^31
/// would take hours).
fn check_open_file_numbers(f: &OpenFile) -> Result<()> {
    let of = image::OPEN_FILES;
    if f.id == 0 || f.id >= MAX_FD as u32 {
        bail!("image file {of}: field id: open file #{} is out of range (1..{MAX_FD})", f.id);
    }
    if let Some(crate::image::proto::open_file::Kind::Inotify(i)) = &f.kind
        && let Some(w) = i.watches.iter().find(|w| !(1..=crate::kinds::fd::inotify::MAX_WD).contains(&w.wd))
    {
        let max = crate::kinds::fd::inotify::MAX_WD;
        bail!("image file {of}: field inotify.watches.wd of open file #{}: watch descriptor {} is out of range (1..={max})", f.id, w.wd);
    }
    Ok(())
}

/// Every data file a record names is one the inventory lists (and whose checksum was just
/// verified), by a plain name: restore reads nothing outside the image directory.
fn check_data_file_names(img: &LoadedImage) -> Result<()> {
    let listed: BTreeSet<&str> = img
        .inventory
        .data_files
        .iter()
        .chain(img.inventory.processes.iter().flat_map(|e| &e.data_files))
        .map(|d| d.name.as_str())
        .collect();
    let plain = |n: &str| !n.is_empty() && n != "." && n != ".." && !n.contains('/');
    let mut named: Vec<(String, String)> = Vec::new();
    for (pid, p) in &img.processes {
        named.push((image::mm_name(*pid), p.mm.pages_file.clone()));
        for seg in p.mm.vmas.iter().filter_map(|v| v.sysv_shm.as_ref()) {
            named.push((image::mm_name(*pid), seg.data_file.clone()));
        }
    }
    named.extend(files::data_files(&img.open_files).into_iter().map(|n| (image::OPEN_FILES.to_string(), n)));
    for name in &listed {
        if !plain(name) {
            bail!("image file {}: it lists a data file {name:?}, which is not a plain file name of the image directory", image::INVENTORY);
        }
    }
    for (record, name) in named {
        if !plain(&name) || !listed.contains(name.as_str()) {
            bail!("image file {record}: it names the data file {name:?}, which is not a data file the inventory lists");
        }
    }
    Ok(())
}

/// A directory without an inventory is no image: say what it is instead.
fn check_is_image(dir: &ImageDir) -> Result<()> {
    let path = dir.root().display();
    if let Some(reason) = dir.failed_dump() {
        bail!("{path} holds a failed dump, not an image (the dump failed: {reason})");
    }
    if dir.path(image::INVENTORY).exists() {
        return Ok(());
    }
    let records = std::fs::read_dir(dir.root())
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".img")).count())
        .unwrap_or(0);
    if records == 0 {
        bail!("no crust image in {path}");
    }
    bail!("{path} holds an incomplete image: no {} (the dump did not finish)", image::INVENTORY)
}

/// Checks that this machine can run the image: same kernel build (the vDSO is part of the
/// process), files unchanged.
fn check_machine(img: &LoadedImage, code: memory::CodeValidation) -> Result<()> {
    let here = crate::sys::kernel_release();
    if img.inventory.kernel_release != here {
        bail!(
            "image file {}: field kernel_release: the image was taken on kernel {} but this is kernel {here}: \
             the vDSO the process uses differs, crust refuses to restore across kernels",
            image::INVENTORY,
            img.inventory.kernel_release
        );
    }
    if img.inventory.vdso_hash != own_vdso_hash()? {
        bail!(
            "image file {}: field vdso_hash: the vDSO of this kernel differs from the one in the image (same release, different build)",
            image::INVENTORY
        );
    }
    check_own_mdwe()?;
    for (pid, p) in &img.processes {
        memory::precheck(&p.mm, code).with_context(|| format!("image file {}", image::mm_name(*pid)))?;
        crate::kinds::anon_names::precheck(*pid, &p.mm)?;
    }
    files::precheck(&img.open_files).with_context(|| format!("image file {}", image::OPEN_FILES))?;
    crate::kinds::ghost::precheck(&img.dir, &img.open_files.ghosts)?;
    Ok(())
}

/// The restored root is forked from crust: under memory-deny-write-execute that crust passes
/// on, every restored process would have it (it cannot be unset), whatever its image says, and
/// crust's helper area (writable and executable) could not be mapped.
fn check_own_mdwe() -> Result<()> {
    let own = crate::sys::own_mdwe();
    if own & libc::PR_MDWE_REFUSE_EXEC_GAIN != 0 && own & libc::PR_MDWE_NO_INHERIT == 0 {
        bail!(
            "crust runs with memory-deny-write-execute (PR_GET_MDWE {own}), which every process it restores would inherit: \
             run it without (a parent's PR_SET_MDWE, a service's MemoryDenyWriteExecute=)"
        );
    }
    Ok(())
}

pub fn own_vdso_hash() -> Result<u64> {
    Ok(xxhash_rust::xxh3::xxh3_64(&memory::vdso_text(std::process::id() as i32)?))
}

/// Waits at most `wait` for a PID to be free (a just-killed process may still be a zombie for
/// a moment).
fn wait_pid_free(pid: u32, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let path = format!("/proc/{pid}");
        if !Path::new(&path).exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let comm = std::fs::read_to_string(format!("{path}/comm")).unwrap_or_default();
            let zombie = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).is_ok_and(|s| s.state == 'Z');
            let holder = if zombie { "a zombie its parent has not reaped" } else { "a running process" };
            bail!("PID {pid} is busy: it belongs to {holder} ({}); restore needs it", comm.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything a restore checks before it creates anything, without creating anything (the
/// reference tool's `restore --check-only`): the image, its seal and structure, the PIDs, the
/// kernel, the files, the options it needs.
pub fn check_only(dir: &Path, opts: &RestoreOptions) -> Result<()> {
    let img = checked_image(dir, opts, Duration::ZERO, false)?;
    Tree::plan(&img, &opts.inherit_fds)?;
    Ok(())
}

/// Loads the image and checks it against this machine and the options; PIDs in use are waited
/// for at most `pid_wait` (a just-killed process may be a zombie for a moment).
fn checked_image(dir: &Path, opts: &RestoreOptions, pid_wait: Duration, defer_pages: bool) -> Result<LoadedImage> {
    let mut img = load_deferring_pages(dir, opts.trust_image, defer_pages)?;
    apply_lease_policy(&mut img, opts.lease_policy);
    forget_absent_lock_takers(&mut img);
    for entry in img.entries() {
        wait_pid_free(entry.pid, pid_wait)?;
    }
    check_machine(&img, opts.file_validation)?;
    crate::kinds::ghost::refuse_on_trust(&img.open_files.ghosts, opts.trust_image)?;
    if is_shell_job(&img) && !opts.shell_job {
        bail!("the image is a shell job (dumped with --shell-job): restore it with --shell-job (-j) from the terminal it should run on");
    }
    Ok(img)
}

fn is_shell_job(img: &LoadedImage) -> bool {
    img.inventory.shell_job || crate::kinds::fd::tty::has_terminals(&img.open_files)
}

pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    let started = Instant::now();
    crate::interrupt::install()?;
    crate::kinds::leases::break_time::repair_left_behind();
    crate::created_files::repair_left_behind();
    crate::network_lock::repair_left_behind();
    let progress = Progress::new("restore");
    progress.step("verifying the image".into());
    let img = crate::timing::step("restore: load image", || checked_image(dir, opts, Duration::from_secs(3), true))?;
    let root = img.inventory.root_pid;
    let terminal = if is_shell_job(&img) {
        Some(crate::sys::terminal::ControllingTerminal::open().context("--shell-job needs crust to run on a terminal")?)
    } else {
        None
    };
    raise_nofile_limit();
    let pidfile = opts.pidfile.as_deref().map(PidFile::create).transpose()?;

    let mut tree = Tree::plan(&img, &opts.inherit_fds)?;
    tree.image_sealed = !opts.trust_image;
    tree.tcp_close = opts.permits.tcp_close;
    tree.leave_stopped = opts.leave_stopped;
    let mut lazy = None;
    if opts.lazy_pages {
        tree.lazy_pids = lazy_processes(&img);
        let pages = crate::kinds::lazy_pages::LazyPages::start(page_records(&img))?;
        tree.lazy = pages.registrar();
        lazy = Some(pages);
    }
    // Page files are verified on another core while the processes read their pages in; no
    // process runs before (see Tree::build).
    tree.page_check = Some(check_pages_in_background(&img, &tree.lazy_pids)?);
    let users: Vec<_> = img.processes.iter().map(|(pid, p)| (*pid, &p.mm, p.core.credentials.as_ref())).collect();
    let segments = crate::kinds::sysv_shm::prepare(&img.dir, &users, tree.image_sealed, &mut tree.created_files)?;
    if let Err(e) = crate::fault::point("restore-segments") {
        segments.undo();
        tree.created_files.remove_all();
        return Err(e);
    }
    let foreground = terminal.as_ref().filter(|_| img.inventory.foreground_pgid != 0);
    let job_terminal = match terminal.as_ref().map(|t| JobTerminal::new(t, &img)).transpose() {
        Ok(j) => j,
        Err(e) => {
            segments.undo(); // the segments prepare created must not outlive the failed restore
            tree.created_files.remove_all();
            return Err(e);
        }
    };
    let built = tree.build(&img, &progress, job_terminal.as_ref());
    crate::timing::report("restore");
    if let Err(mut e) = built {
        if let Some(pages) = lazy {
            if let Some(f) = pages.failure() {
                e = e.context(format!("lazy restore: {f}"));
            }
            pages.abort();
        }
        if let Some(t) = &job_terminal {
            t.put_back();
        }
        tree.kill_all();
        segments.undo(); // before the journal that lists them goes
        tree.created_files.remove_all();
        crate::kinds::fd::restore_failed(&img.open_files);
        if let Some(p) = pidfile {
            p.remove();
        }
        return Err(e.context(format!("restoring the tree of pid {root} (every process it created was killed)")));
    }
    segments.finish()?;
    tree.created_files.keep_all();
    if let Some(p) = pidfile {
        p.write(root)?;
    }
    let elapsed = started.elapsed();
    progress.finish(format!("restored {} process(es) of pid {root} in {:.1} ms", img.entries().len(), elapsed.as_secs_f64() * 1e3));
    if let Some(pages) = &mut lazy {
        pages.all_registered();
    }
    if opts.detach {
        if let Some(pages) = lazy {
            pages.finish()?;
        }
        return Ok(Restored::Running { pid: root as i32, elapsed });
    }
    let status = wait_exit(Pid::from_raw(root as i32));
    if let Some(pages) = lazy {
        pages.finish()?;
    }
    if let Some(t) = foreground {
        // The job is over: the terminal is crust's (and its shell's) again.
        t.take_foreground()?;
    }
    Ok(Restored::Exited { pid: root as i32, status: status?, elapsed })
}

/// crust's terminal while a shell job is restored on it: the job's settings are given to it
/// just before the job resumes, and crust's own put back if the restore fails after that.
struct JobTerminal<'a> {
    terminal: &'a crate::sys::terminal::ControllingTerminal,
    job: Option<crate::sys::terminal::Settings>,
    crusts: crate::sys::terminal::Settings,
}

impl<'a> JobTerminal<'a> {
    fn new(terminal: &'a crate::sys::terminal::ControllingTerminal, img: &LoadedImage) -> Result<Self> {
        let job = crate::kinds::fd::tty::job_settings(&img.open_files)?;
        let crusts = terminal.settings().context("reading the settings of crust's terminal")?;
        Ok(JobTerminal { terminal, job, crusts })
    }

    /// The job's settings, then the foreground to its group `pgid` (0: it was in the background).
    fn hand_over(&self, pgid: u32) -> Result<()> {
        if let Some(s) = &self.job {
            info!(settings = ?s, "giving crust's terminal the job's settings");
            self.terminal.apply(s).context("giving crust's terminal the settings the job's terminal had")?;
        }
        if pgid != 0 {
            self.terminal.give_foreground(pgid)?;
        }
        Ok(())
    }

    /// After a failed restore: crust's terminal as it was.
    fn put_back(&self) {
        if let Err(e) = self.terminal.apply(&self.crusts) {
            tracing::warn!("putting back the settings of crust's terminal: {e}");
        }
    }
}

/// `--pidfile FILE`: created (empty) before anything is restored, so that a file that cannot be
/// written fails the restore before it starts; the root's pid is written into it once the tree
/// runs, as the reference tool writes it (the number alone).
struct PidFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl PidFile {
    fn create(path: &Path) -> Result<PidFile> {
        let file = std::fs::File::create(path).with_context(|| format!("--pidfile {}: cannot create it", path.display()))?;
        Ok(PidFile { path: path.to_owned(), file })
    }

    fn write(mut self, pid: u32) -> Result<()> {
        use std::io::Write;
        write!(self.file, "{pid}")
            .with_context(|| format!("--pidfile {}: cannot write pid {pid} into it (the restored tree runs)", self.path.display()))
    }

    /// After a failed restore: no pidfile names a process that does not exist.
    fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Raises crust's soft RLIMIT_NOFILE to the hard limit, so the new processes (which inherit it
/// until their own limits are restored) can hold the image's fd numbers.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Waits for the restored root to exit. SIGINT, SIGTERM and SIGHUP sent to crust meanwhile are
/// passed on to the root, as a shell passes them to its job (crust only waits for it).
fn wait_exit(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for the restored process"),
        }
        if let Some(sig) = crate::interrupt::take().filter(|s| *s != libc::SIGPIPE)
            && let Ok(sig) = Signal::try_from(sig)
        {
            info!(%child, ?sig, "passing the signal on to the restored process");
            let _ = kill(child, sig);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process being rebuilt, stopped under crust's ptrace.
struct Building {
    /// The thread-group leader.
    remote: RemoteTask,
    /// The other threads, created by the leader, in the image's order (core.threads[1..]).
    threads: Vec<RemoteTask>,
}

/// The restore plan and the processes created so far.
struct Tree {
    /// (crust's fd, description id) of the external descriptions.
    inherited: Vec<(i32, u32)>,
    helper: u64,
    work_fd_floor: i32,
    /// Which process opens each description (by id) for all its holders.
    creators: BTreeMap<u32, Vec<u32>>,
    /// Every process created, in creation order.
    created: Vec<Pid>,
    building: BTreeMap<u32, Building>,
    /// Files the restore created in the file system (removed if it fails).
    created_files: crate::created_files::CreatedFiles,
    /// The image's seal was verified (not --trust-image).
    image_sealed: bool,
    /// restore --tcp-close: TCP connections come back closed.
    tcp_close: bool,
    /// `--leave-stopped`: each process is let go with a SIGSTOP waiting.
    leave_stopped: bool,
    /// The deleted files of the image, made again until every process opened them.
    ghosts: crate::kinds::ghost::Placed,
    /// `--lazy-pages`: the page server, and the processes whose pages it brings.
    lazy: Option<crate::kinds::lazy_pages::Registrar>,
    lazy_pids: BTreeSet<u32>,
    /// The verification of the page files, running while the tree is built.
    page_check: Option<std::thread::JoinHandle<Result<()>>>,
    /// The signal dispositions every live process of the tree has until its own are restored
    /// (only those that differ are set): the defaults, which the root sets once forked.
    inherited_actions: Vec<crate::image::proto::SigAction>,
}

impl Tree {
    fn plan(img: &LoadedImage, inherit_fds: &[(i32, String)]) -> Result<Tree> {
        let mms: Vec<&Mm> = img.processes.values().map(|p| &p.mm).collect();
        let helper = memory::choose_helper_address(&mms)?;
        let parent: BTreeMap<u32, u32> = img.entries().iter().map(|e| (e.pid, e.ppid)).collect();
        let ancestors = |pid: u32| {
            let mut chain = vec![pid];
            let mut p = pid;
            while let Some(&pp) = parent.get(&p) {
                if pp == 0 || !parent.contains_key(&pp) {
                    break;
                }
                chain.push(pp);
                p = pp;
            }
            chain
        };
        // Holders of each description; the two ends of a pipe count as one (pipe2 makes both).
        let mut holders: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (pid, p) in &img.processes {
            for fd in &p.files.fds {
                holders.entry(fd.open_file_id).or_default().insert(*pid);
            }
            // Shared memory objects, and inodes without a path, are held by the mappings of them.
            for vma in &p.mm.vmas {
                for id in [vma.shared_memory_id, vma.inode_object_id].into_iter().filter(|id| *id != 0) {
                    holders.entry(id).or_default().insert(*pid);
                }
            }
        }
        // A session leader needs its terminal's pair before it forks, fds or not.
        for f in &img.open_files.open_files {
            let needing = files::needed_by(f).into_iter().filter(|p| img.processes.contains_key(p));
            holders.entry(f.id).or_default().extend(needing);
        }
        // A description in flight in a socket's queue (SCM_RIGHTS) is sent again by the
        // socket's creator: it counts as held by every holder of the socket's group, so it is
        // opened by that creator or one of its ancestors (and inherited by the creator).
        let group_of = |id: u32| img.open_files.open_files.iter().find(|f| f.id == id).map(|f| f.created_with).unwrap_or(0);
        for _ in 0..8 {
            let mut grew = false;
            for f in img.open_files.open_files.iter().filter(|f| !f.in_flight_in.is_empty()) {
                let mut add = BTreeSet::new();
                for carrier in &f.in_flight_in {
                    let group = group_of(*carrier);
                    for g in img.open_files.open_files.iter().filter(|g| g.id == *carrier || (group != 0 && g.created_with == group)) {
                        add.extend(holders.get(&g.id).into_iter().flatten().copied());
                    }
                }
                let set = holders.entry(f.id).or_default();
                let before = set.len();
                set.extend(add);
                grew |= set.len() != before;
            }
            if !grew {
                break;
            }
        }
        // Descriptions created together (pipe ends, socket pairs) count as one.
        let mut group_holders: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        for f in img.open_files.open_files.iter().filter(|f| f.created_with != 0) {
            group_holders.entry(f.created_with).or_default().extend(holders.get(&f.id).into_iter().flatten());
        }
        let mut creators: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for f in &img.open_files.open_files {
            let set = match f.created_with {
                0 => holders.get(&f.id).cloned().unwrap_or_default(),
                group => group_holders[&group].clone(),
            };
            let Some(first) = set.iter().next() else { continue };
            // Nearest common ancestor: the deepest process on the first holder's chain that is
            // an ancestor of (or is) every holder.
            let creator = ancestors(*first)
                .into_iter()
                .find(|a| set.iter().all(|h| ancestors(*h).contains(a)))
                .context("open file holders without a common ancestor")?;
            creators.entry(creator).or_default().push(f.id);
        }
        // External descriptions come from crust's own fds, through the root.
        let mut inherited = Vec::new();
        for f in &img.open_files.open_files {
            if let Some(key) = files::external_key(f) {
                let Some((fd, _)) = inherit_fds.iter().find(|(_, k)| *k == key) else {
                    bail!("{key} was external at dump time: give it with --inherit-fd fd[N]:{key}");
                };
                if !Path::new(&format!("/proc/self/fd/{fd}")).exists() {
                    bail!("--inherit-fd fd[{fd}]:{key}: crust has no fd {fd}");
                }
                inherited.push((*fd, f.id));
                for ids in creators.values_mut() {
                    ids.retain(|id| *id != f.id);
                }
            }
        }
        Ok(Tree {
            inherited,
            helper,
            work_fd_floor: img.max_fd() + 1,
            creators,
            created: Vec::new(),
            building: BTreeMap::new(),
            created_files: Default::default(),
            image_sealed: false,
            tcp_close: false,
            leave_stopped: false,
            ghosts: Default::default(),
            lazy: None,
            lazy_pids: BTreeSet::new(),
            page_check: None,
            inherited_actions: Vec::new(),
        })
    }

    fn kill_all(&mut self) {
        for pid in self.created.iter().rev() {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        if let Some(root) = self.created.first() {
            let _ = waitpid(*root, Some(WaitPidFlag::__WALL));
        }
        // The others are reaped by their (killed) parents' parent, init, or were our tracees.
        for pid in self.created.iter().skip(1) {
            let _ = waitpid(*pid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG));
        }
    }

    fn ctx<'a>(&'a mut self, img: &'a LoadedImage, pid: u32) -> Result<RestoreCtx<'a>> {
        let p = &img.processes[&pid];
        let creds = p.core.credentials.clone().context("image has no credentials")?;
        let work_fd_floor = self.work_fd_floor;
        // Ids are below MAX_FD (check_structure), the floor above the image's fds: no overflow.
        let highest_id = img.open_files.open_files.iter().map(|f| f.id).max().unwrap_or(0);
        let temp_fd_floor = i32::try_from(highest_id)
            .ok()
            .and_then(|id| self.work_fd_floor.checked_add(id)?.checked_add(1))
            .with_context(|| format!("image file {}: field id: open file #{highest_id} is out of range", image::OPEN_FILES))?;
        let lazy = self.lazy.clone().filter(|_| self.lazy_pids.contains(&pid));
        let pages_record = img
            .entries()
            .iter()
            .filter(|e| e.pid == pid)
            .flat_map(|e| &e.data_files)
            .find(|d| d.name == p.mm.pages_file && !d.chunk_blake3.is_empty());
        let building = self.building.get_mut(&pid).context("process not created")?;
        Ok(RestoreCtx {
            pid: Pid::from_raw(pid as i32),
            remote: &mut building.remote,
            image: &img.dir,
            pidfd: pidfd_open(pid as i32)?,
            work_fd_floor,
            temp_fd_floor,
            fs_identity: Some((creds.fsuid, creds.fsgid, creds.groups.clone())),
            open_files: &img.open_files,
            created_files: &mut self.created_files,
            image_sealed: self.image_sealed,
            tcp_close: self.tcp_close,
            ghosts: &self.ghosts,
            lazy,
            pages_record,
        })
    }

    fn build(&mut self, img: &LoadedImage, progress: &Progress, job_terminal: Option<&JobTerminal>) -> Result<()> {
        let root = img.inventory.root_pid;
        // crust and the processes it makes share one CPU until they have their own affinity
        // back (finish_process): each injected call then costs a switch, not a wakeup of an
        // idle CPU (sys::sched::OneCpu).
        let _one_cpu = crate::sys::sched::OneCpu::here();
        // Deleted files are made again first (journaled): descriptions and mappings open them.
        self.ghosts = crate::kinds::ghost::prepare(&img.dir, &img.open_files.ghosts, &mut self.created_files, self.image_sealed)?;
        progress.step(format!("creating pid {root} and its tree"));
        // The root starts with the default dispositions, and the tree inherits them (no process
        // of it changes its dispositions before its own are restored).
        self.inherited_actions = vec![Default::default(); 64];
        let child = clone3::fork_with_pid(root as i32).map_err(|e| match e.errno() {
            Some(nix::errno::Errno::EEXIST) => anyhow::anyhow!("PID {root} is busy: another process took it just now"),
            _ => anyhow::Error::from(e),
        })?;
        self.created.push(child);
        ptrace::seize_and_interrupt(child, true)?;
        // The child is a copy of crust: its vDSO is at our vDSO's address.
        let syscall_ip = memory::syscall_instruction_in_vdso(std::process::id() as i32)?;
        let mut remote = RemoteTask::new(child, syscall_ip)?;
        ptrace::set_sigmask(child, !0)?;
        // Descriptions given with --inherit-fd go to their working fds before crust's are closed.
        for (fd, id) in &self.inherited {
            let work = (self.work_fd_floor + *id as i32) as u64;
            remote.syscall("dup3(inherited fd)", libc::SYS_dup3, &[*fd as u64, work, libc::O_CLOEXEC as u64])?;
        }
        let keep = self.inherited.iter().map(|(_, id)| self.work_fd_floor + *id as i32).collect::<Vec<_>>();
        forget_crust_state(&mut remote, &keep)?;
        memory::map_helper(&mut remote, self.helper)?;
        self.building.insert(root, Building { remote, threads: Vec::new() });
        self.create_subtree(img, root)?;
        crate::fault::point("restore-tree")?;

        self.lead_zombie_groups(img)?;
        self.join_process_groups(img)?;
        self.groups_exist(img)?;
        self.finish_zombies(img)?;
        self.finish_descriptions(img)?;
        crate::fault::point("restore-descriptions")?;

        // Parents before children: a child sharing its parent's fd table finds it in place.
        for pid in img.tree_order() {
            crate::interrupt::check()?;
            progress.step(format!("pid {pid}: restoring its state"));
            self.restore_process(img, pid).with_context(|| format!("restoring pid {pid}"))?;
            crate::fault::point("restore-process")?;
        }
        crate::interrupt::check()?;
        for (pid, p) in &img.processes {
            let mut ctx = self.ctx(img, *pid)?;
            files::after_threads(&mut ctx, &p.files).with_context(|| format!("restoring pid {pid}: files that need threads"))?;
        }
        crate::timing::step("restore: leases", || self.take_leases_again(img))?;
        for pid in img.processes.keys() {
            crate::timing::step("restore: finish process", || self.finish_process(img, *pid))
                .with_context(|| format!("restoring pid {pid}: credentials"))?;
        }
        let lease_breaks = self.plan_lease_breaks(img)?;
        // Every description and mapping of a deleted file is open: its name goes again.
        self.ghosts.unlink_all()?;
        // No process runs before every page it read in was verified.
        if let Some(check) = self.page_check.take() {
            crate::timing::step("restore: wait page check", || check.join())
                .map_err(|_| anyhow::anyhow!("the page file check panicked"))??;
        }
        crate::fault::point("restore-before-resume")?;
        crate::interrupt::check()?;
        crate::kinds::fd::before_resume()?;
        // A shell job's terminal gets the job's settings, and a foreground job the terminal,
        // before it runs (else its first read stops it).
        if let Some(t) = job_terminal {
            t.hand_over(img.inventory.foreground_pgid)?;
        }
        // Every thread gets its registers and mask; none runs before the detach below. All are
        // started on their way to the stop before the first is waited for; those that re-arm a
        // timed wait come last (below).
        let mut parking = Vec::new();
        let mut started = Ok(());
        for (pid, building) in &mut self.building {
            let threads = &img.processes[pid].core.threads;
            let remotes = std::iter::once(&mut building.remote).chain(building.threads.iter_mut());
            for (remote, thread) in remotes.zip(threads).filter(|(_, t)| !registers::starts_a_clock(t)) {
                started = start_resume(remote, thread);
                if started.is_err() {
                    break;
                }
                parking.push(remote.pid());
            }
            if started.is_err() {
                break;
            }
        }
        // Those started are waited for even after an error: no thread is left on its way.
        let mut waited = Ok(());
        for tid in parking {
            if let Err(e) = ptrace::wait_for_event_stop(tid)
                && waited.is_ok()
            {
                waited = Err(e);
            }
        }
        started?;
        waited?;
        // Breaks that were in progress start again, each at its moment before the resume, so
        // the kernel ends each one at its recorded time after it.
        if !lease_breaks.is_empty() {
            progress.step("starting the lease breaks again".into());
        }
        let lease_waker = crate::kinds::leases::restart::run(lease_breaks)?;
        // Timed futex waits start their clock again last, right before the resume.
        self.rearm_timed_waits(img)?;
        // A process that was in a job-control stop gets its stop signal now, while traced: it
        // stays pending, and on the detach every thread takes the stop before it runs any
        // instruction. (Its parent is told of the stop again, as after a new Ctrl-Z.)
        for (pid, p) in &img.processes {
            if p.core.stopped {
                let sig = Signal::try_from(p.core.stop_signal).unwrap_or(Signal::SIGSTOP);
                kill(Pid::from_raw(*pid as i32), sig).with_context(|| format!("stopping pid {pid} again with {sig}"))?;
            }
        }
        // With --leave-stopped a SIGSTOP waits in each process: it stops once let go.
        if self.leave_stopped {
            for pid in self.building.keys() {
                kill(Pid::from_raw(*pid as i32), Signal::SIGSTOP).with_context(|| format!("stopping pid {pid} (--leave-stopped)"))?;
            }
        }
        // Release everything at once, so the tree resumes together.
        for building in self.building.values() {
            for remote in std::iter::once(&building.remote).chain(&building.threads) {
                ptrace::detach(remote.pid())?;
            }
        }
        info!(root, "resumed");
        lease_waker.start();
        Ok(())
    }

    /// Gives the threads whose interrupted call starts a clock when it is set up again (a timed
    /// futex wait, see registers::starts_a_clock) their registers and mask to resume with.
    fn rearm_timed_waits(&mut self, img: &LoadedImage) -> Result<()> {
        for (pid, building) in &mut self.building {
            let threads = &img.processes[pid].core.threads;
            let remotes = std::iter::once(&mut building.remote).chain(building.threads.iter_mut());
            for (remote, thread) in remotes.zip(threads).filter(|(_, t)| registers::starts_a_clock(t)) {
                registers::ready_to_resume(remote, thread)?;
            }
        }
        Ok(())
    }

    /// Prepares process `pid` (already created and seized), then forks its children from it.
    fn create_subtree(&mut self, img: &LoadedImage, pid: u32) -> Result<()> {
        let helper = self.helper;
        let entry = img.entries().iter().find(|e| e.pid == pid).context("process not in inventory")?;
        let mut waiting: Vec<&OpenFile> = Vec::new();
        if let Some(p) = img.processes.get(&pid) {
            let building = self.building.get_mut(&pid).unwrap();
            crate::timing::step("restore: prepare address space", || memory::prepare_address_space(&mut building.remote, &p.mm, helper))?;
            // Leadership first: the children forked below inherit the session and group.
            if p.core.sid == pid {
                building.remote.syscall("setsid", libc::SYS_setsid, &[])?;
            } else if p.core.pgid == pid {
                building.remote.syscall("setpgid", libc::SYS_setpgid, &[0, 0])?;
            }
            // (A session leader whose terminal an ancestor recreated takes it now, before it
            // opens /dev/tty among its files.)
            files::session_set(&mut self.ctx(img, pid)?, false)?;
            if let Some(ids) = self.creators.get(&pid).cloned() {
                let files: Vec<&OpenFile> = img.open_files.open_files.iter().filter(|f| ids.contains(&f.id)).collect();
                let now: Vec<&OpenFile>;
                (now, waiting) = files.into_iter().partition(|f| files::can_open_now(f));
                let mut ctx = self.ctx(img, pid)?;
                files::open_descriptions(&mut ctx, &now)?;
            }
            // Memory before the children: they inherit it, so pages shared copy-on-write
            // after fork are shared again and inherited mappings are the same mappings.
            let mut ctx = self.ctx(img, pid)?;
            crate::timing::step("restore: memory", || Memory::restore(&mut ctx, &p.mm))
                .with_context(|| format!("restoring the memory of pid {pid}"))?;
            // What the children inherit (a session leader's terminal).
            files::session_set(&mut ctx, true)?;
        } else if entry.zombie {
            return Ok(());
        }
        let children: Vec<(u32, i32, u64)> = img.children(pid).map(|c| (c.pid, c.exit_signal, shared_flags(c))).collect();
        for (child, exit_signal, shares) in children {
            crate::interrupt::check()?;
            // Descriptions that had to wait (a pidfd of a process created since) before the
            // child that may inherit them.
            self.open_waiting(img, pid, &mut waiting, false)?;
            let remote = &mut self.building.get_mut(&pid).unwrap().remote;
            let new = crate::timing::step("restore: fork child", || fork_child(remote, child, exit_signal, shares))
                .with_context(|| format!("pid {pid} forking pid {child}"))?;
            self.created.push(new);
            crate::timing::step("restore: seize child", || ptrace::seize_and_interrupt(new, true))?;
            let mut remote = RemoteTask::new(new, helper)?;
            memory::use_helper(&mut remote, helper);
            ptrace::set_sigmask(new, !0)?;
            self.building.insert(child, Building { remote, threads: Vec::new() });
            self.create_subtree(img, child)?;
        }
        self.open_waiting(img, pid, &mut waiting, true)
    }

    /// Opens, in `pid`, the descriptions of `waiting` that can be opened now, or all of them
    /// (`all`: after its last child; see FdKind::can_open_now).
    fn open_waiting(&mut self, img: &LoadedImage, pid: u32, waiting: &mut Vec<&OpenFile>, all: bool) -> Result<()> {
        let ready: Vec<&OpenFile>;
        (ready, *waiting) = waiting.drain(..).partition(|f| all || files::can_open_now(f));
        if ready.is_empty() {
            return Ok(());
        }
        let mut ctx = self.ctx(img, pid)?;
        files::open_descriptions(&mut ctx, &ready)
    }

    /// Plans the restart of every lease break recorded in progress (see kinds/leases/restart.rs),
    /// through a copy of the restored description taken from a process holding it.
    fn plan_lease_breaks(&mut self, img: &LoadedImage) -> Result<Vec<crate::kinds::leases::restart::BreakRestart>> {
        let mut plans = Vec::new();
        for file in &img.open_files.open_files {
            let Some(lease) = file.lease.as_ref().filter(|l| l.breaking && !l.no_break) else { continue };
            let holders: Vec<(u32, i32)> = img
                .processes
                .iter()
                .flat_map(|(pid, p)| p.files.fds.iter().filter(|f| f.open_file_id == file.id).map(|f| (*pid, f.fd)))
                .collect();
            let holder = *holders.first().context("a leased description without a holder")?;
            let pidfd = pidfd_open(holder.0 as i32)?;
            let copy = crate::sys::pidfd::pidfd_getfd(&pidfd, holder.0 as i32, holder.1)?;
            plans.push(crate::kinds::leases::restart::plan(lease, holders, copy)?);
        }
        Ok(plans)
    }

    /// Now that every process exists, each creator finishes the descriptions it created
    /// (socket queues are refilled with their senders' credentials, which must name live
    /// processes).
    fn finish_descriptions(&mut self, img: &LoadedImage) -> Result<()> {
        for (pid, ids) in self.creators.clone() {
            let files: Vec<&OpenFile> = img.open_files.open_files.iter().filter(|f| ids.contains(&f.id)).collect();
            let mut ctx = self.ctx(img, pid)?;
            files::finish_descriptions(&mut ctx, &files).with_context(|| format!("pid {pid}: finishing its open files"))?;
        }
        Ok(())
    }

    /// Zombies that led a session or a process group lead it again (before anyone joins it).
    fn lead_zombie_groups(&mut self, img: &LoadedImage) -> Result<()> {
        for entry in img.entries().iter().filter(|e| e.zombie) {
            let remote = &mut self.building.get_mut(&entry.pid).context("zombie not created")?.remote;
            if entry.sid == entry.pid {
                remote.syscall("setsid", libc::SYS_setsid, &[]).with_context(|| format!("zombie {} leading its session", entry.pid))?;
            } else if entry.pgid == entry.pid {
                remote
                    .syscall("setpgid", libc::SYS_setpgid, &[0, 0])
                    .with_context(|| format!("zombie {} leading its process group", entry.pid))?;
            }
        }
        Ok(())
    }

    /// Processes whose group is led by another process of the tree (live or a zombie) join it.
    fn join_process_groups(&mut self, img: &LoadedImage) -> Result<()> {
        let in_tree = |pid: u32| img.entries().iter().any(|e| e.pid == pid);
        for (pid, p) in &img.processes {
            let pgid = p.core.pgid;
            if pgid == *pid || !in_tree(pgid) {
                continue;
            }
            let remote = &mut self.building.get_mut(pid).unwrap().remote;
            remote
                .syscall("setpgid", libc::SYS_setpgid, &[0, pgid as u64])
                .with_context(|| format!("pid {pid} joining process group {pgid}"))?;
        }
        Ok(())
    }

    /// What needs every process group (a terminal's foreground group, given by the session
    /// leader).
    fn groups_exist(&mut self, img: &LoadedImage) -> Result<()> {
        for pid in img.processes.keys() {
            let mut ctx = self.ctx(img, *pid)?;
            files::groups_exist(&mut ctx).with_context(|| format!("pid {pid}"))?;
        }
        Ok(())
    }

    /// Zombies exit again with their recorded status; their parents, still stopped, will reap
    /// them when they run.
    fn finish_zombies(&mut self, img: &LoadedImage) -> Result<()> {
        for entry in img.entries().iter().filter(|e| e.zombie) {
            let mut building = self.building.remove(&entry.pid).context("zombie not created")?;
            let r = &mut building.remote;
            identity::set_name(r, &entry.comm)?;
            // A zombie in a group another process of the tree leads joins it before it exits.
            let leads = entry.pgid == entry.pid || entry.sid == entry.pid;
            if entry.pgid != 0 && !leads && img.entries().iter().any(|e| e.pid == entry.pgid) {
                r.syscall("setpgid", libc::SYS_setpgid, &[0, entry.pgid as u64])
                    .with_context(|| format!("zombie {} joining process group {}", entry.pid, entry.pgid))?;
            }
            let status = entry.exit_status;
            let (nr, args) = if status & 0x7f == 0 {
                (libc::SYS_exit_group, [((status >> 8) & 0xff) as u64, 0])
            } else {
                let sig = (status & 0x7f) as u64;
                // Die of the signal, without a core file, whatever crust's inherited handlers.
                let dfl = r.put(0, &[0u8; 32])?;
                r.syscall("rt_sigaction", libc::SYS_rt_sigaction, &[sig, dfl, 0, 8])?;
                let zero = r.put(64, &[0u8; 16])?;
                r.syscall("prlimit64", libc::SYS_prlimit64, &[0, libc::RLIMIT_CORE as u64, zero, 0])?;
                ptrace::set_sigmask(r.pid(), 0)?;
                (libc::SYS_kill, [entry.pid as u64, sig])
            };
            r.exit_with(nr, &args)?;
            wait_zombie(entry.pid)?;
        }
        Ok(())
    }

    fn restore_process(&mut self, img: &LoadedImage, pid: u32) -> Result<()> {
        let p = &img.processes[&pid];
        let has_zombie_children = img.children(pid).any(|c| c.zombie);
        let helper = self.helper;
        let shares_table = img.entries().iter().any(|e| e.pid == pid && e.files_shared_with_parent);
        let inherited_actions = self.inherited_actions.clone();
        let mut ctx = self.ctx(img, pid)?;
        crate::timing::step("restore: fd table", || files::restore_table(&mut ctx, &p.files, !shares_table))?;
        let identity = IdentityRecord {
            comm: p.core.comm.clone(),
            personality: p.core.personality,
            umask: p.core.umask,
            rlimits: p.core.rlimits.clone(),
            control: p.core.control.unwrap_or_default(),
            sid: p.core.sid,
            pgid: p.core.pgid,
            nice: p.core.nice,
            oom_score_adj: p.core.oom_score_adj,
        };
        crate::timing::step("restore: identity", || Identity::restore(&mut ctx, &identity))?;
        if has_zombie_children {
            // Recreating the zombies queued their exit signals here; the image says what was
            // pending.
            let signals = img.children(pid).filter(|c| c.zombie).map(|c| clone_exit_signal(c.exit_signal)).filter(|s| *s != 0);
            drain_exit_signals(ctx.remote, signals.fold(0u64, |set, s| set | 1 << (s - 1)))?;
        }
        let signals =
            SignalsRecord { handlers: p.core.signal_handlers.clone().unwrap_or_default(), shared_pending: p.core.shared_pending.clone() };
        crate::timing::step("restore: signals", || crate::kinds::signals::restore_from(&mut ctx, &signals, &inherited_actions))?;
        if let Some(timers) = &p.core.interval_timers {
            crate::timing::step("restore: timers", || Timers::restore(&mut ctx, timers))?;
        }
        crate::timing::step("restore: membarrier", || crate::kinds::membarrier::restore(&mut ctx, p.core.membarrier_registrations))?;
        crate::timing::step("restore: rlimits", || identity::restore_rlimits(&mut ctx, &p.core.rlimits))?;
        let (leader, others) = p.core.threads.split_first().context("image has no thread")?;
        crate::timing::step("restore: leader thread", || ThreadState::restore(&mut ctx, leader))?;
        // Credentials belong to each thread: they are restored by finish_process.
        let created = crate::timing::step("restore: create threads", || create_threads(ctx.remote, others, helper))?;
        self.building.get_mut(&pid).unwrap().threads = created;
        crate::timing::step("restore: other threads' state", || {
            self.each_other_thread(img, pid, |tctx, thread| {
                registers::restore_with(tctx, thread, false).with_context(|| format!("restoring thread {}", thread.tid))
            })
        })?;
        // Their registrations, made by all the threads at once.
        let mut others: Vec<&mut RemoteTask> = self.building.get_mut(&pid).unwrap().threads.iter_mut().collect();
        let records: Vec<&crate::image::proto::Thread> = others_records(p);
        crate::timing::step("restore: registrations of all", || registers::restore_registrations_of_all(&mut others, &records))
            .with_context(|| format!("restoring the threads of pid {pid}"))?;
        // Last: a timer may signal any thread, and runs from the moment it is armed.
        let mut ctx = self.ctx(img, pid)?;
        crate::timing::step("restore: posix timers", || crate::kinds::posix_timers::restore(&mut ctx, &p.core.posix_timers))
    }

    /// Runs `step` for each thread of `pid` but its leader, with a context driving that thread.
    fn each_other_thread(
        &mut self,
        img: &LoadedImage,
        pid: u32,
        mut step: impl FnMut(&mut RestoreCtx, &crate::image::proto::Thread) -> Result<()>,
    ) -> Result<()> {
        let ctx = self.ctx(img, pid)?;
        let pidfd = ctx.pidfd.try_clone()?;
        let (work_fd_floor, temp_fd_floor, fs_identity) = (ctx.work_fd_floor, ctx.temp_fd_floor, ctx.fs_identity.clone());
        let image_sealed = ctx.image_sealed;
        let tcp_close = ctx.tcp_close;
        let others = &img.processes[&pid].core.threads[1..];
        let building = self.building.get_mut(&pid).unwrap();
        for (remote, thread) in building.threads.iter_mut().zip(others) {
            let mut tctx = RestoreCtx {
                pid: Pid::from_raw(pid as i32),
                remote,
                image: &img.dir,
                pidfd: pidfd.try_clone()?,
                work_fd_floor,
                temp_fd_floor,
                fs_identity: fs_identity.clone(),
                open_files: &img.open_files,
                created_files: &mut self.created_files,
                image_sealed,
                tcp_close,
                ghosts: &self.ghosts,
                lazy: None,
                pages_record: None,
            };
            step(&mut tctx, thread)?;
        }
        Ok(())
    }

    /// The last step of each process, once every process and thread of the tree exists and
    /// the leases are taken: credentials (each thread's, the leader's last), dumpable, and
    /// crust's helper area goes.
    fn finish_process(&mut self, img: &LoadedImage, pid: u32) -> Result<()> {
        let p = &img.processes[&pid];
        let helper = self.helper;
        let creds = p.core.credentials.clone().context("image has no credentials")?;
        if let Some(seccomp) = &p.core.seccomp {
            // Installed while the process is still root (no CAP_SYS_ADMIN is needed later),
            // suspended for crust's remaining calls, in force from the detach.
            let tids: Vec<i32> = p.core.threads.iter().map(|t| t.tid as i32).collect();
            let mut ctx = self.ctx(img, pid)?;
            crate::kinds::seccomp::restore(&mut ctx, seccomp, &tids).context("restoring seccomp filters")?;
        }
        self.each_other_thread(img, pid, |tctx, thread| {
            let own = thread.credentials.as_ref().unwrap_or(&creds);
            Credentials::restore(tctx, own).with_context(|| format!("credentials of thread {}", thread.tid))
        })?;
        let mut ctx = self.ctx(img, pid)?;
        if let Some(l) = &p.core.loginuid {
            crate::kinds::scheduling::restore_loginuid(&mut ctx, l)?;
        }
        for thread in &p.core.threads {
            crate::sys::sched::spread_thread(thread.tid as i32)
                .with_context(|| format!("pid {pid} thread {}: its CPU mask from before crust's pin", thread.tid))?;
            if let Some(s) = &thread.scheduling {
                crate::kinds::scheduling::restore_thread(thread.tid as i32, s)
                    .with_context(|| format!("restoring the scheduling of pid {pid} thread {}", thread.tid))?;
            }
        }
        // A process with huge stretches to fill lazily gets its mover (kinds/lazy_move.rs), made
        // once its credentials are final.
        let mover_uffd = lazy_move::before_credentials(&mut ctx, p.core.seccomp.is_some());
        Credentials::restore(&mut ctx, &creds)?;
        if let Some(uffd) = mover_uffd {
            lazy_move::after_credentials(&mut ctx, uffd, helper)?;
        }
        // The descriptions this process is the first holder of (in pid, then fd order).
        let first_holder =
            |id: u32| img.processes.iter().find_map(|(q, qp)| qp.files.fds.iter().find(|f| f.open_file_id == id).map(|f| (*q, f.fd)));
        let mine: Vec<&crate::image::proto::Fd> =
            p.files.fds.iter().filter(|f| first_holder(f.open_file_id) == Some((pid, f.fd))).collect();
        files::restore_signal_owners(&mut ctx, &mine).with_context(|| format!("pid {pid}: O_ASYNC and signal owners"))?;
        let control = p.core.control.unwrap_or_default();
        identity::restore_dumpable(&mut ctx, &control)?;
        identity::restore_pdeath_signal(&mut ctx, &control)?;
        // The last mapping crust makes here was made; the helper area (read, write, execute)
        // is only removed after, which MDWE does not refuse (it needs the helper's syscall
        // instruction: the call that removes it is the last the process makes).
        identity::restore_mdwe(&mut ctx, &control)?;
        memory::unmap_helper(ctx.remote, helper)?;
        Ok(())
    }

    /// Leases are taken again by their holders once every process and thread exists (the
    /// signal owner may be any of them) and memory is in place (a leased file the holder has
    /// mapped is mapped through the restored description), before credentials are restored.
    fn take_leases_again(&mut self, img: &LoadedImage) -> Result<()> {
        for (pid, p) in &img.processes {
            let mut ctx = self.ctx(img, *pid)?;
            crate::kinds::leases::take_again(&mut ctx, &p.files.fds).with_context(|| format!("pid {pid}: its leases"))?;
        }
        Ok(())
    }
}

/// Gives a thread its blocked mask and the registers it resumes with, and starts it on its way
/// to the stop it is let go from (waited for by the caller).
fn start_resume(remote: &mut RemoteTask, thread: &crate::image::proto::Thread) -> Result<()> {
    ptrace::set_sigmask(remote.pid(), thread.blocked_mask)?;
    remote.start_parking(&registers::resume_registers(thread)?)?;
    Ok(())
}

/// The image's threads of a process but its leader.
fn others_records(p: &ProcessImage) -> Vec<&crate::image::proto::Thread> {
    p.core.threads.iter().skip(1).collect()
}

/// Has the leader behind `remote` create the other threads of its process, with their tids
/// (clone3 with CLONE_THREAD and set_tid), and seizes them. They start in the helper area's
/// pause loop with every signal blocked (inherited from their creator). Every thread that
/// exists creates one more in each round, all at once (RemoteTask::syscall_each), so 1000
/// threads take ten rounds of stops, not a thousand: which thread of the group creates a thread
/// changes nothing of it that is not restored afterwards.
fn create_threads(remote: &mut RemoteTask, threads: &[crate::image::proto::Thread], helper: u64) -> Result<Vec<RemoteTask>> {
    // Each creator's clone_args and tid in its own slot of the shared scratch area.
    const SLOT: u64 = 128;
    let max_creators = (remote.scratch().map(|s| s.len).unwrap_or(SLOT) / SLOT).max(1) as usize;
    let flags =
        (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD | libc::CLONE_SYSVSEM) as u64;
    let mut created: Vec<RemoteTask> = Vec::new();
    while created.len() < threads.len() {
        let batch = &threads[created.len()..];
        let n = (created.len() + 1).min(batch.len()).min(max_creators);
        let mut creators: Vec<&mut RemoteTask> = std::iter::once(&mut *remote).chain(created.iter_mut()).take(n).collect();
        let mut calls = Vec::with_capacity(n);
        for (i, (c, t)) in creators.iter().zip(batch).enumerate() {
            let slot = i as u64 * SLOT;
            let tid_addr = c.put(slot + 96, &(t.tid as i32).to_ne_bytes())?;
            let mut args = Vec::new();
            for v in [flags, 0, 0, 0, 0, 0, 0, 0, tid_addr, 1, 0] {
                args.extend_from_slice(&v.to_ne_bytes());
            }
            let args_addr = c.put(slot, &args)?;
            calls.push((libc::SYS_clone3, vec![args_addr, args.len() as u64]));
        }
        let results = RemoteTask::syscall_each(&mut creators, &calls).context("creating threads")?;
        let mut new = Vec::with_capacity(n);
        for (ret, t) in results.into_iter().zip(batch) {
            if (-4095..0).contains(&ret) {
                bail!("creating thread {}: remote clone3(CLONE_THREAD): {}", t.tid, nix::errno::Errno::from_raw(-ret as i32));
            }
            new.push(Pid::from_raw(ret as i32));
        }
        // All seized and interrupted before the first stop is waited for.
        ptrace::seize_and_interrupt_all(&new, true)?;
        for tid in new {
            let mut thread = RemoteTask::new(tid, helper)?;
            memory::use_helper(&mut thread, helper);
            ptrace::set_sigmask(tid, !0)?;
            created.push(thread);
        }
    }
    Ok(created)
}

/// Has the process behind `remote` fork a child with PID `pid` (clone3 with set_tid). The child
/// starts in the helper area's pause loop.
/// The clone exit_signal a recorded one stands for (0: SIGCHLD, from images before it was
/// recorded; -1: none).
fn clone_exit_signal(recorded: i32) -> u64 {
    match recorded {
        0 => libc::SIGCHLD as u64,
        -1 => 0,
        sig => sig as u64,
    }
}

/// The clone flags that make a child share its parent's fd table or filesystem context.
fn shared_flags(entry: &ProcessEntry) -> u64 {
    let mut flags = 0;
    if entry.files_shared_with_parent {
        flags |= libc::CLONE_FILES as u64;
    }
    if entry.fs_shared_with_parent {
        flags |= libc::CLONE_FS as u64;
    }
    flags
}

fn fork_child(remote: &mut RemoteTask, pid: u32, exit_signal: i32, shares: u64) -> Result<Pid> {
    let tid_addr = remote.put(128, &(pid as i32).to_ne_bytes())?;
    let mut args = Vec::new();
    // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    // tls, set_tid, set_tid_size, cgroup.
    for v in [shares, 0, 0, 0, clone_exit_signal(exit_signal), 0, 0, 0, tid_addr, 1, 0] {
        args.extend_from_slice(&v.to_ne_bytes());
    }
    let args_addr = remote.put(0, &args)?;
    let got = remote.syscall("clone3", libc::SYS_clone3, &[args_addr, args.len() as u64]).map_err(|e| match e.errno() {
        Some(nix::errno::Errno::EEXIST) => anyhow::anyhow!("PID {pid} is busy: another process took it just now"),
        _ => anyhow::Error::from(e),
    })?;
    Ok(Pid::from_raw(got as i32))
}

fn wait_zombie(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).map(|s| s.state);
        if matches!(state, Ok('Z')) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pid {pid} did not become a zombie again (state {state:?})");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Dequeues the pending signals of `set` (rt_sigtimedwait with a zero timeout).
fn drain_exit_signals(remote: &mut RemoteTask, set: u64) -> Result<()> {
    if set == 0 {
        return Ok(());
    }
    let set = remote.put(0, &set.to_ne_bytes())?;
    let timeout = remote.put(16, &[0u8; 16])?;
    loop {
        let ret = remote.syscall_raw(libc::SYS_rt_sigtimedwait, &[set, 0, timeout, 8])?;
        if ret < 0 {
            return Ok(());
        }
    }
}

/// The first process inherited some per-thread state from crust that must go before its
/// memory does.
fn forget_crust_state(remote: &mut RemoteTask, keep_fds: &[i32]) -> Result<()> {
    let pid = remote.pid();
    // All of crust's descriptors, but those it hands down.
    let mut from = 0u64;
    let mut keep: Vec<u64> = keep_fds.iter().map(|f| *f as u64).collect();
    keep.sort();
    for fd in keep {
        if fd > from {
            remote.syscall("close_range", libc::SYS_close_range, &[from, fd - 1, 0])?;
        }
        from = fd + 1;
    }
    remote.syscall("close_range", libc::SYS_close_range, &[from, u32::MAX as u64, 0])?;
    // glibc registered an rseq area in crust's TLS; the kernel would keep writing to it.
    let rseq = ptrace::get_rseq(pid)?;
    if rseq.address != 0 {
        remote.syscall("rseq(unregister)", libc::SYS_rseq, &[rseq.address, rseq.length as u64, 1, rseq.signature as u64])?;
    }
    Ok(())
}

/// The --inherit-fd key of an external description ("pipe:[ID]").
/// Applies the user's lease policy; without one, a break whose breakers were all left out of
/// the image is not restarted (nobody is waiting: the holder keeps its lease).
fn apply_lease_policy(img: &mut LoadedImage, policy: Option<crate::kinds::leases::Policy>) {
    use crate::kinds::leases::Policy;
    let in_image: Vec<u32> = img.processes.keys().copied().collect();
    for file in &mut img.open_files.open_files {
        let Some(lease) = file.lease.as_mut() else { continue };
        match policy {
            Some(p) => p.apply(lease),
            None => {
                let orphaned = !lease.breakers.is_empty() && !lease.breakers.iter().any(|b| in_image.contains(b));
                if lease.breaking && orphaned {
                    Policy::NoBreak.apply(lease);
                }
            }
        }
    }
}

/// A flock lock is taken again by the process that took it only if that process is restored
/// and holds the description; otherwise by the description's creator (taker_pid 0).
fn forget_absent_lock_takers(img: &mut LoadedImage) {
    let holds =
        |pid: u32, id: u32, img: &LoadedImage| img.processes.get(&pid).is_some_and(|p| p.files.fds.iter().any(|f| f.open_file_id == id));
    let mut absent = Vec::new();
    for f in &img.open_files.open_files {
        for (i, l) in f.locks.iter().enumerate() {
            if l.taker_pid != 0 && !holds(l.taker_pid, f.id, img) {
                absent.push((f.id, i));
            }
        }
    }
    for (id, i) in absent {
        if let Some(f) = img.open_files.open_files.iter_mut().find(|f| f.id == id) {
            f.locks[i].taker_pid = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::proto::DataFile;

    fn image_naming(pages_file: &str, listed: &str) -> LoadedImage {
        let dir = ImageDir::open(&std::env::temp_dir()).unwrap();
        let entry = ProcessEntry { pid: 7, data_files: vec![DataFile { name: listed.into(), ..Default::default() }], ..Default::default() };
        let inventory = Inventory { processes: vec![entry], ..Default::default() };
        let mm = Mm { pages_file: pages_file.into(), ..Default::default() };
        let process = ProcessImage { core: Core::default(), mm, files: FilesRecord::default() };
        LoadedImage {
            dir,
            inventory,
            processes: BTreeMap::from([(7, process)]),
            open_files: OpenFiles::default(),
            deferred_pages: Vec::new(),
        }
    }

    fn family(parents: &[(u32, u32)]) -> LoadedImage {
        let dir = ImageDir::open(&std::env::temp_dir()).unwrap();
        let processes = parents.iter().map(|(pid, ppid)| ProcessEntry { pid: *pid, ppid: *ppid, ..Default::default() }).collect();
        let inventory = Inventory { processes, root_pid: parents[0].0, ..Default::default() };
        let core = || Core { threads: vec![Default::default()], ..Default::default() };
        let procs = parents
            .iter()
            .map(|(pid, _)| (*pid, ProcessImage { core: core(), mm: Mm::default(), files: FilesRecord::default() }))
            .collect();
        LoadedImage { dir, inventory, processes: procs, open_files: OpenFiles::default(), deferred_pages: Vec::new() }
    }

    #[test]
    fn hostile_structures_are_refused_naming_file_and_field() {
        assert!(check_structure(&family(&[(10, 1), (11, 10), (12, 11)])).is_ok());
        let err = |img: &LoadedImage| check_structure(img).unwrap_err().to_string();
        // A cycle of parents, and a process the root does not reach.
        let e = err(&family(&[(10, 1), (11, 12), (12, 11)]));
        assert!(e.contains("inventory.img") && e.contains("not a descendant"), "{e}");
        let e = err(&family(&[(10, 1), (11, 99)]));
        assert!(e.contains("pid 11 is not a descendant"), "{e}");
        let e = err(&family(&[(10, 1), (10, 1)]));
        assert!(e.contains("listed twice"), "{e}");
        // An fd number at the top of the range, and one naming nothing.
        let mut img = family(&[(10, 1)]);
        img.processes.get_mut(&10).unwrap().files.fds.push(crate::image::proto::Fd { fd: i32::MAX, ..Default::default() });
        assert!(err(&img).contains("files-10.img: field fds: fd 2147483647 is out of range"));
        img.processes.get_mut(&10).unwrap().files.fds[0].fd = 3;
        assert!(err(&img).contains("names open file #0"));
        // A 70 KB working directory, a thread-less process, a lease break of 10^15 s.
        let mut img = family(&[(10, 1)]);
        img.processes.get_mut(&10).unwrap().files.cwd = "/a".repeat(35_000);
        assert!(err(&img).contains("field cwd"));
        let mut img = family(&[(10, 1)]);
        img.processes.get_mut(&10).unwrap().core.threads.clear();
        assert!(err(&img).contains("core-10.img: field threads"));
        // Memory-deny-write-execute flags no process can have: NO_INHERIT alone, unknown bits.
        for (mdwe, valid) in [(0, true), (1, true), (3, true), (2, false), (4, false), (u32::MAX, false)] {
            let mut img = family(&[(10, 1)]);
            img.processes.get_mut(&10).unwrap().core.control = Some(crate::image::proto::ProcessControl { mdwe, ..Default::default() });
            match check_structure(&img) {
                Ok(()) => assert!(valid, "mdwe {mdwe:#x} accepted"),
                Err(e) => assert!(!valid && e.to_string().contains("core-10.img: field control.mdwe"), "mdwe {mdwe:#x}: {e}"),
            }
        }
        let mut img = family(&[(10, 1)]);
        let lease = crate::image::proto::Lease { remaining_ms: 1_000_000_000_000_000_000, ..Default::default() };
        img.open_files.open_files.push(OpenFile { id: 1, lease: Some(lease), ..Default::default() });
        assert!(err(&img).contains("lease.remaining_ms"));
        // An open file id near 2^31 (its working fd would overflow), an inotify wd of 2^31-1
        // (restore would advance the counter for hours).
        let mut img = family(&[(10, 1)]);
        img.open_files.open_files.push(OpenFile { id: i32::MAX as u32, ..Default::default() });
        let e = err(&img);
        assert!(e.contains("open-files.img: field id: open file #2147483647 is out of range"), "{e}");
        for wd in [i32::MAX, 0, -1] {
            let mut img = family(&[(10, 1)]);
            let watch = crate::image::proto::InotifyWatch { wd, ..Default::default() };
            let inotify = crate::image::proto::Inotify { watches: vec![watch], ..Default::default() };
            let kind = Some(crate::image::proto::open_file::Kind::Inotify(inotify));
            img.open_files.open_files.push(OpenFile { id: 1, kind, ..Default::default() });
            let e = err(&img);
            assert!(e.contains("field inotify.watches.wd of open file #1") && e.contains(&format!("descriptor {wd} ")), "{e}");
        }
    }

    /// Random parent links (cycles, strangers, self-parents) between up to 40 processes: the
    /// structure check always ends, and accepts exactly the trees rooted at the root.
    #[test]
    fn random_parent_links_always_end_in_a_verdict() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let n = 1 + (next() % 40) as u32;
            let links: Vec<(u32, u32)> = (0..n).map(|i| (100 + i, 99 + (next() % (u64::from(n) + 2)) as u32)).collect();
            let img = family(&links);
            let is_tree = links.iter().all(|(pid, _)| {
                let mut p = *pid;
                for _ in 0..=n {
                    if p == links[0].0 {
                        return true;
                    }
                    match links.iter().find(|(c, _)| *c == p) {
                        Some((_, pp)) => p = *pp,
                        None => return false,
                    }
                }
                false
            });
            assert_eq!(check_structure(&img).is_ok(), is_tree, "{links:?}");
        }
    }

    #[test]
    fn records_may_only_name_listed_data_files_inside_the_image() {
        assert!(check_data_file_names(&image_naming("pages-7.img", "pages-7.img")).is_ok());
        let e = check_data_file_names(&image_naming("../../etc/shadow", "pages-7.img")).unwrap_err().to_string();
        assert!(e.contains("mm-7.img") && e.contains("../../etc/shadow"), "{e}");
        let e = check_data_file_names(&image_naming("pages-8.img", "pages-7.img")).unwrap_err().to_string();
        assert!(e.contains("not a data file the inventory lists"), "{e}");
        let e = check_data_file_names(&image_naming("/etc/shadow", "/etc/shadow")).unwrap_err().to_string();
        assert!(e.contains("not a plain file name"), "{e}");
    }
}

/// The processes whose memory `--lazy-pages` brings on demand: those that fork no process of
/// the image (a child made by fork inherits its parent's memory as it is then, so the
/// parent's pages must all be in by then), and whose page file has BLAKE3 chunk hashes (images
/// of format 1.2 and before have none to check a chunk by before its first use).
fn lazy_processes(img: &LoadedImage) -> BTreeSet<u32> {
    let hashed = |pid: &u32| {
        let name = &img.processes[pid].mm.pages_file;
        img.entries().iter().filter(|e| e.pid == *pid).flat_map(|e| &e.data_files).any(|d| &d.name == name && !d.chunk_blake3.is_empty())
    };
    img.processes.keys().copied().filter(|pid| !img.children(*pid).any(|c| !c.zombie) && hashed(pid)).collect()
}

/// The inventory's records of the page files, by name.
fn page_records(img: &LoadedImage) -> std::collections::HashMap<String, crate::image::proto::DataFile> {
    img.inventory.processes.iter().flat_map(|e| &e.data_files).map(|d| (d.name.clone(), d.clone())).collect()
}

/// Verifies the deferred page files in a thread: the chunks the processes read in with their
/// own preadv (kinds/page_fill.rs::preadv_chunks); crust's page fill and the lazy page server
/// check the others, each as they read it, before any of its bytes is placed.
fn check_pages_in_background(img: &LoadedImage, lazy: &BTreeSet<u32>) -> Result<std::thread::JoinHandle<Result<()>>> {
    // The same ImageDir: the very files the processes read their pages from (data_file).
    let dir = img.dir.clone();
    let mut work = Vec::new();
    for (pid, data) in &img.deferred_pages {
        let chunks = crate::kinds::page_fill::preadv_chunks(&img.processes[pid].mm, lazy.contains(pid), data.chunk_size);
        let every = data.chunk_size > 0 && chunks.len() as u64 == data.size.div_ceil(data.chunk_size);
        work.push((data.clone(), (!every).then_some(chunks)));
    }
    let thread = std::thread::Builder::new().name("crust-pagecheck".into()).spawn(move || -> Result<()> {
        for (data, chunks) in work {
            match chunks {
                None => dir.verify_data_file(&data)?,
                Some(indices) => crate::image::chunks::verify_some(&dir.data_file(&data.name)?, &dir.path(&data.name), &data, &indices)?,
            }
        }
        Ok(())
    })?;
    Ok(thread)
}
