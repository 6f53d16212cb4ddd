//! The address space: every mapping with its protection and backing, the pages only the image
//! can bring back, the vDSO unit, and the mm fields (brk, code/data/stack bounds, args, env,
//! auxv, executable).
//!
//! Dump has crust copy the pages into the page file (page_copy: process_vm_readv on every core,
//! each 1 MiB chunk hashed as it is complete); no system call runs in the process for them. Restore maps
//! every area at its address and has the new process `preadv` its pages into place, again one
//! copy per byte and one system call per up to 1024 runs.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};
use procfs::process::{MMPermissions, MMapPath, VmFlags};

pub use super::file_check::{CodeValidation, FileUse, check_file, file_identity};
use super::{DumpCtx, Kind, RestoreCtx};
use crate::image::proto::{Mm, MmFields, PageRun, Vma, vma::Kind as VmaKind};
use crate::image::{self};
use crate::sys::PAGE_SIZE;
use crate::sys::pagemap::{HUGE_STRETCH, PageMap, Runs, Wanted, frame};
use crate::sys::remote::{Call, RemoteTask, Scratch, find_syscall_instruction};

pub struct Memory;

/// How many iovecs one pwritev/preadv gets (the kernel's IOV_MAX).
const IOV_BATCH: usize = 1024;
/// Scratch offset where iovec arrays are built (the first KiBs hold paths and small structs).
const IOV_SCRATCH_OFFSET: u64 = 16 * 1024;
/// Size of the helper area crust maps into a process it drives: a page with a `syscall`
/// instruction followed by scratch space for arguments.
pub const HELPER_LEN: u64 = 64 * 1024;
/// mmap's MAP_DROPPABLE mapping type (Linux 6.11+).
const MAP_DROPPABLE: i32 = 0x08;
const HELPER_CODE_LEN: u64 = PAGE_SIZE;

impl Kind for Memory {
    type Record = Mm;

    fn dump(ctx: &mut DumpCtx) -> Result<Mm> {
        let pid = ctx.pid.as_raw();
        tracing::debug!(pid, "saving the memory");
        // Read once: the kernel walks every page table of the process to produce it (about
        // 10 ms per GiB, all of it while the tree is frozen), so it is read ahead while the
        // other kinds are collected (see smaps_ahead).
        let maps = crate::timing::step("dump: wait for smaps", || ctx.open_files.state.get::<super::smaps_ahead::SmapsAhead>().take(pid))?;
        let pagemap = PageMap::open(pid)?;
        let areas_started = std::time::Instant::now();
        let mut vmas = Vec::with_capacity(maps.len());
        let mut next_offset = 0u64;
        // The areas whose resident pages are all saved: listed by one page table walk for
        // each stretch of them that follow one another (not one walk per area).
        let mut scan_with_neighbours = Vec::new();
        // Areas whose huge stretches that walk tells (see `resident_runs`), ascending.
        let mut huge_by_walk = Vec::new();
        // (Its signature lies past `len`: the area is known by its start.)
        let scratch = ctx.remote.scratch().map(|s| s.address);
        let code_page = ctx.remote.scratch().and_then(|s| s.code);
        // The parent's mappings, to recognise those this process inherited at fork.
        let mut parent = match ctx.parent {
            Some(ppid) => Some(ParentView::take(ctx, ppid.as_raw())?),
            None => None,
        };
        for map in maps.iter() {
            let (start, end) = map.address;
            if Some(start) == scratch || Some(start) == code_page {
                continue; // crust's own scratch area and code page
            }
            let mut vma = describe_vma(pid, map)?;
            super::ghost::mapping(ctx, &mut vma)?;
            refuse_unsupported_flags(pid, &vma, map.extra)?;
            vma.droppable = map.extra.droppable;
            if vma.kind() == VmaKind::SysvShm {
                let shmid = map.inode as i32;
                let saved = ctx.open_files.state.get::<super::sysv_shm::SysvSegments>();
                vma.sysv_shm = Some(Box::new(super::sysv_shm::dump(pid, &vma, shmid, ctx.image, saved)?));
            }
            if vma.kind() == VmaKind::SharedAnonymous {
                // Saved once for every process mapping it, as a shared object.
                let (key, object) = super::fd::shared_memory::open_object(pid, start, end)?;
                let image = ctx.image;
                let inside = ctx.open_files.tree_pids.clone();
                vma.shared_memory_id = ctx
                    .open_files
                    .mapped_description(pid, key, || super::fd::shared_memory::record_mapping(image, &object, pid, start, end, &inside))?;
            }
            if vma.file.is_none() && matches!(vma.kind(), VmaKind::PrivateFile | VmaKind::SharedFile) {
                // An inode without a path (a memfd, an AIO ring): see `pathless`.
                super::pathless::dump_mapping(ctx, &mut vma)?;
            }
            let wanted = match vma.kind() {
                VmaKind::PrivateAnonymous => Some(Wanted::Resident),
                VmaKind::PrivateFile => Some(Wanted::PrivateCopies),
                _ => None,
            };
            let inherited_from = parent.as_mut().filter(|p| p.maps_same(map));
            match (wanted, inherited_from) {
                (Some(wanted), Some(parent)) => {
                    vma.inherited = true;
                    let ours = pagemap.entries(start, end)?;
                    let theirs = parent.entries(start, end)?;
                    let mut pages = Vec::new();
                    let mut discard = Vec::new();
                    {
                        let mut keep = Runs::new(|address, n| pages.push((address, n)));
                        let mut drop = Runs::new(|address, n| discard.push(PageRun { address, pages: n, file_offset: 0 }));
                        for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
                            let address = start + i as u64 * PAGE_SIZE;
                            let (mine, parents) = (wanted.holds(*o), wanted.holds(*t));
                            // A page both still map from the same frame is shared copy-on-write:
                            // the parent's restored copy serves both again.
                            let shared = mine && parents && frame(*o).is_some() && frame(*o) == frame(*t);
                            keep.push(address, mine && !shared);
                            drop.push(address, !mine && parents);
                        }
                        keep.finish();
                        drop.finish();
                    }
                    // (Offsets in the page file are given once every area has its runs.)
                    vma.pages = pages.into_iter().map(|(address, pages)| PageRun { address, pages, file_offset: 0 }).collect();
                    vma.discard = discard;
                }
                // Every page present (the kernel counted them for smaps): one run, without a
                // second walk of the area's page table (0.25 us an area of 64 KiB).
                (Some(Wanted::Resident), None) if map.rss == end - start => {
                    vma.pages.push(PageRun { address: start, pages: (end - start) / PAGE_SIZE, file_offset: 0 });
                }
                (Some(Wanted::Resident), None) => scan_with_neighbours.push(vmas.len()),
                (Some(wanted), None) => {
                    crate::timing::step("dump: page runs", || {
                        pagemap
                            .for_each_run(start, end, wanted, |address, pages| vma.pages.push(PageRun { address, pages, file_offset: 0 }))
                    })?;
                }
                (None, _) => {}
            }
            // Which stretches were huge: a lazy restore makes exactly these huge again. Areas
            // read without smaps (no AnonHugePages) and scanned with their neighbours below
            // are told by that same walk.
            let huge_unknown = map.anon_huge_pages.is_none();
            let walked_below = scan_with_neighbours.last() == Some(&vmas.len());
            if vma.kind() == VmaKind::PrivateAnonymous && huge_unknown && walked_below {
                huge_by_walk.push(vmas.len());
            } else if vma.kind() == VmaKind::PrivateAnonymous && (vma.had_huge_pages || huge_unknown) {
                vma.huge_stretches = pagemap.huge_stretches(start, end)?;
                vma.had_huge_pages |= !vma.huge_stretches.is_empty();
            }
            vmas.push(vma);
        }
        crate::timing::step("dump: page runs", || resident_runs(&pagemap, &mut vmas, &scan_with_neighbours, &huge_by_walk))?;
        crate::timing::add("dump: memory areas", areas_started.elapsed());
        for run in vmas.iter_mut().flat_map(|v| v.pages.iter_mut()) {
            run.file_offset = next_offset;
            next_offset += run.pages * PAGE_SIZE;
        }
        if let (Some(view), Some(ppid)) = (parent, ctx.parent) {
            ctx.open_files.state.get::<ParentViews>().0.insert(ppid.as_raw(), view);
        }
        let pages_file = image::pages_name(pid as u32);
        crate::timing::step("dump: copy pages", || write_pages(ctx, &vmas, &pages_file, next_offset))?;
        let fields = crate::timing::step("dump: mm fields", || dump_mm_fields(ctx))?;
        Ok(Mm { fields: Some(fields), vmas, pages_file })
    }

    fn restore(ctx: &mut RestoreCtx, mm: &Mm) -> Result<()> {
        let pages_path = ctx.image.path(&mm.pages_file);
        let pages_path = pages_path.to_str().context("image path is not UTF-8")?.to_owned();
        // The page file is crust's own. Mapped files are opened with crust's credentials: the
        // process had exactly these files mapped with this protection (unlike fds, which are
        // reopened with the image's credentials), and it may have mapped them before it gave
        // up privileges (a daemon's binary under a directory it can no longer search).
        let pages_fd = ctx.open_in_process(&pages_path, libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW)?;
        same_page_file(ctx, pages_fd, &mm.pages_file)?;
        // With --lazy-pages the lazy areas' pages come later, through the page server.
        let lazy = ctx.lazy.is_some();
        let eager: Vec<&Vma> = mm.vmas.iter().filter(|v| !(v.unaccounted || lazy && super::lazy_pages::is_lazy(v))).collect();
        let (by_crust, by_process) = match ctx.pages_record {
            Some(_) => super::page_fill::partition(&eager),
            None => (Vec::new(), eager.clone()),
        };
        let copied: Vec<bool> = members(&mm.vmas, &by_crust).zip(&mm.vmas).map(|(m, v)| m && super::page_fill::copies_into(v)).collect();
        let mut file_fds: HashMap<(String, bool), i32> = HashMap::new();
        let (mut at_final, shaping) = map_areas(ctx, mm, &copied, &mut file_fds)?;
        crate::timing::step("restore: fill pages", || place_pages(ctx, pages_fd, mm, (&by_crust, by_process), &mut at_final, &shaping))?;
        collapse_huge_stretches(ctx.remote, &eager);
        let unaccounted: Vec<&Vma> = mm.vmas.iter().filter(|v| v.unaccounted && !v.pages.is_empty()).collect();
        write_unaccounted_pages(ctx, &mm.pages_file, &unaccounted)?;
        let finish: Vec<Call> = mm.vmas.iter().zip(at_final).flat_map(|(v, at_final)| finish_calls(v, at_final)).collect();
        crate::timing::step("restore: finish areas", || ctx.remote.syscalls("finishing a mapping", &finish))
            .with_context(|| format!("pid {}: setting the final protection and advice of its mappings", ctx.pid))?;
        crate::timing::step("restore: name areas", || super::anon_names::restore(ctx.remote, &mm.vmas))?;
        super::pathless::after_mappings(ctx, &mm.vmas)?;
        ctx.close_in_process(pages_fd)?;
        for (_, fd) in file_fds {
            ctx.close_in_process(fd)?;
        }
        if let Some(fields) = &mm.fields {
            set_mm_fields(ctx, fields)?;
        }
        if let Some(registrar) = ctx.lazy.clone() {
            registrar.register(ctx, mm).with_context(|| format!("pid {}: registering its lazy pages", ctx.pid))?;
        }
        Ok(())
    }
}

/// The same mapping in a parent and its child: same range, protection, backing and offset.
/// Each parent's [`ParentView`], kept from one child's dump to the next.
#[derive(Default)]
pub struct ParentViews(HashMap<i32, ParentView>);

/// A parent's mappings and the pagemap entries of those its children inherited, read once for
/// all its children (a root with 299 children: once, not 299 times): it is frozen, so they
/// cannot change while the tree is collected.
pub struct ParentView {
    /// By start address, as the kernel lists them.
    maps: Vec<super::smaps::Area>,
    pagemap: PageMap,
    entries: HashMap<(u64, u64), Vec<u64>>,
}

impl ParentView {
    /// The view of `ppid` kept by an earlier child (taken out while this child uses it), or a
    /// new one.
    fn take(ctx: &mut DumpCtx, ppid: i32) -> Result<ParentView> {
        if let Some(view) = ctx.open_files.state.get::<ParentViews>().0.remove(&ppid) {
            return Ok(view);
        }
        let text = std::fs::read_to_string(format!("/proc/{ppid}/maps")).with_context(|| format!("reading /proc/{ppid}/maps"))?;
        let maps = super::smaps::parse(&text).with_context(|| format!("parsing /proc/{ppid}/maps"))?;
        Ok(ParentView { maps, pagemap: PageMap::open(ppid)?, entries: HashMap::new() })
    }

    /// Whether the parent has the same mapping as `map` (found by its start: a child of a
    /// parent of many areas looks each up once).
    fn maps_same(&self, map: &super::smaps::Area) -> bool {
        let at = self.maps.binary_search_by_key(&map.address.0, |m| m.address.0);
        at.is_ok_and(|i| self.maps[i].same_mapping(map))
    }

    fn entries(&mut self, start: u64, end: u64) -> Result<&[u64]> {
        if !self.entries.contains_key(&(start, end)) {
            let read = self.pagemap.entries(start, end)?;
            self.entries.insert((start, end), read);
        }
        Ok(&self.entries[&(start, end)])
    }
}

fn describe(vma: &Vma) -> String {
    if vma.name.is_empty() { format!("{:?}", vma.kind()) } else { vma.name.clone() }
}

fn prot_of(perms: &MMPermissions) -> u32 {
    let mut prot = 0;
    if perms.contains(MMPermissions::READ) {
        prot |= libc::PROT_READ as u32;
    }
    if perms.contains(MMPermissions::WRITE) {
        prot |= libc::PROT_WRITE as u32;
    }
    if perms.contains(MMPermissions::EXECUTE) {
        prot |= libc::PROT_EXEC as u32;
    }
    prot
}

/// Gives the areas `which` (indices into `vmas`, ascending) their runs of resident pages:
/// one PAGEMAP_SCAN walk over each stretch of them that are consecutive in `vmas`, its runs
/// cut at the areas' edges. (16384 areas of 64 KiB: 3 us per area as one walk each.)
fn resident_runs(pagemap: &PageMap, vmas: &mut [Vma], which: &[usize], huge_by_walk: &[usize]) -> Result<()> {
    let mut i = 0;
    while i < which.len() {
        let mut j = i + 1;
        while j < which.len() && which[j] == which[j - 1] + 1 {
            j += 1;
        }
        walk_in_halves(pagemap, &mut vmas[which[i]..=which[j - 1]], &which[i..j], huge_by_walk)?;
        i = j;
    }
    Ok(())
}

/// The resident runs and huge stretches of `group` (areas consecutive in memory order,
/// `indexes` their places in the process's list): one PAGEMAP_SCAN walk over them, or two on
/// the two cores where the kernel's walk is long (many areas, or much memory), its halves
/// cut where no huge page is ([`crate::sys::pagemap::halves`]). The areas get the same runs
/// and stretches either way.
fn walk_in_halves(pagemap: &PageMap, group: &mut [Vma], indexes: &[usize], huge_by_walk: &[usize]) -> Result<()> {
    let areas: Vec<(u64, u64)> = group.iter().map(|v| (v.start, v.end)).collect();
    let walks = crate::sys::pagemap::walk_in_two(&areas, |part| {
        let (mut runs, mut huge) = (Vec::new(), Vec::new());
        let (start, end) = (part[0].0, part[part.len() - 1].1);
        pagemap.resident_runs_and_huge(start, end, |address, pages| runs.push((address, pages)), |s| huge.push(s)).map(|()| (runs, huge))
    });
    let (mut runs, mut huge): (Vec<(u64, u64)>, Vec<u64>) = (Vec::new(), Vec::new());
    for walk in walks {
        let (more_runs, more_huge) = walk?;
        for (address, pages) in more_runs {
            match runs.last_mut() {
                // A run the cut between the halves split.
                Some(last) if last.0 + last.1 * PAGE_SIZE == address => last.1 += pages,
                _ => runs.push((address, pages)),
            }
        }
        huge.extend(more_huge);
    }
    give_runs(group, &runs);
    huge_stretches_to_areas(group, indexes, huge_by_walk, &huge);
    Ok(())
}

/// Gives each of `group`'s areas (in memory order) the parts of `runs` (ascending) inside
/// it: a run is cut at the areas' edges, and pages between two areas (crust's scratch area,
/// not saved) are passed over.
fn give_runs(group: &mut [Vma], runs: &[(u64, u64)]) {
    let mut k = 0;
    for &(mut address, pages) in runs {
        let run_end = address + pages * PAGE_SIZE;
        while address < run_end && k < group.len() {
            let area = &mut group[k];
            if area.end <= address {
                k += 1;
                continue;
            }
            let piece_end = run_end.min(area.end);
            let from = address.max(area.start);
            if piece_end > from {
                area.pages.push(PageRun { address: from, pages: (piece_end - from) / PAGE_SIZE, file_offset: 0 });
            }
            address = piece_end;
        }
    }
}

/// The huge stretches one walk found over `group` (areas in address order, `indexes` their
/// places in the process's list), each given to the area holding it whole if that area's
/// huge pages are told by this walk (`huge_by_walk`, ascending: read without smaps, which
/// counts them).
fn huge_stretches_to_areas(group: &mut [Vma], indexes: &[usize], huge_by_walk: &[usize], stretches: &[u64]) {
    for &s in stretches {
        let k = group.partition_point(|v| v.end <= s);
        let whole = group.get(k).is_some_and(|v| v.start <= s && s + HUGE_STRETCH <= v.end);
        if whole && huge_by_walk.binary_search(&indexes[k]).is_ok() {
            group[k].huge_stretches.push(s);
            group[k].had_huge_pages = true;
        }
    }
}

/// Areas whose kernel state crust cannot give back are refused by name, never dropped.
fn refuse_unsupported_flags(pid: i32, vma: &Vma, flags: super::smaps::ExtraFlags) -> Result<()> {
    // The kernel lists `ss` before `sl`: the first one named, as before.
    let kind = if flags.shadow_stack {
        Some("a shadow stack")
    } else if flags.sealed {
        Some("sealed (mseal)")
    } else {
        None
    };
    if let Some(kind) = kind {
        bail!("pid {pid}: mapping {:#x}-{:#x} ({}) is {kind}; crust cannot restore it yet", vma.start, vma.end, describe(vma));
    }
    if flags.droppable && vma.kind() != VmaKind::PrivateAnonymous {
        bail!("pid {pid}: mapping {:#x}-{:#x} is droppable but not private anonymous memory", vma.start, vma.end);
    }
    Ok(())
}

/// Turns one /proc/PID/smaps entry into an image VMA, refusing what crust cannot restore.
fn describe_vma(pid: i32, map: &super::smaps::Area) -> Result<Vma> {
    let (start, end) = map.address;
    let shared = map.perms.contains(MMPermissions::SHARED);
    let flags = map.vm_flags;
    let mut vma = Vma {
        start,
        end,
        prot: prot_of(&map.perms),
        file_offset: map.offset,
        grows_down: flags.contains(VmFlags::GD),
        huge_page_advised: flags.contains(VmFlags::HG),
        no_huge_page_advised: flags.contains(VmFlags::NH),
        dont_dump: flags.contains(VmFlags::DD),
        dont_fork: flags.contains(VmFlags::DC),
        wipe_on_fork: flags.contains(VmFlags::WF),
        locked: flags.contains(VmFlags::LO),
        mergeable: flags.contains(VmFlags::MG),
        sequential_read: flags.contains(VmFlags::SR),
        random_read: flags.contains(VmFlags::RR),
        may_write: flags.contains(VmFlags::MW),
        no_reserve: flags.contains(VmFlags::NR),
        unaccounted: !shared && !map.perms.contains(MMPermissions::WRITE) && !flags.contains(VmFlags::AC),
        had_huge_pages: map.anon_huge_pages.is_some_and(|bytes| bytes > 0),
        ..Default::default()
    };
    let anonymous = if shared { VmaKind::SharedAnonymous } else { VmaKind::PrivateAnonymous };
    let kind = match &map.pathname {
        MMapPath::Heap => {
            vma.name = "[heap]".into();
            anonymous
        }
        MMapPath::Stack => {
            vma.name = "[stack]".into();
            anonymous
        }
        MMapPath::Anonymous => anonymous,
        MMapPath::Vdso => VmaKind::Vdso,
        MMapPath::Vvar => VmaKind::Vvar,
        MMapPath::Vsyscall => VmaKind::Vsyscall,
        // A SysV shared memory attachment ("/SYSV<key> (deleted)"; inode column = shmid).
        MMapPath::Vsys(key) => {
            vma.name = format!("/SYSV{key:08x} (deleted)");
            VmaKind::SysvShm
        }
        MMapPath::Other(name) if name.trim_matches(['[', ']']) == "vvar_vclock" => VmaKind::VvarVclock,
        // Anonymous memory its program named ([anon:NAME], [anon_shmem:NAME]).
        path if let Some((shared_name, name)) = super::anon_names::in_maps(path) => {
            vma.anon_name = Some(name.to_owned());
            let kind = super::anon_names::dump_kind(pid, map, shared_name, name)?;
            vma.set_kind(kind);
            vma.name = super::anon_names::shown(&vma);
            kind
        }
        MMapPath::Path(path) => {
            let path = path.to_string_lossy().into_owned();
            if let Some(original) = path.strip_suffix(" (deleted)") {
                if original.starts_with("/SYSV") && shared {
                    // The maps inode column of a SysV attachment is the segment id.
                    vma.name = path.clone();
                    VmaKind::SysvShm
                } else if original == "/dev/zero" && shared {
                    // MAP_SHARED|MAP_ANONYMOUS is backed by an unlinked shmem file of this name.
                    vma.name = path.clone();
                    VmaKind::SharedAnonymous
                } else if super::pathless::recognises(original) {
                    // Mapped through a description of the inode (see `pathless`), no path.
                    vma.name = path.clone();
                    if shared { VmaKind::SharedFile } else { VmaKind::PrivateFile }
                } else {
                    // A deleted file: recorded as a ghost by the caller (see ghost.rs).
                    vma.name = path.clone();
                    let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
                    vma.file = Some(Box::new(file_identity(original, &link)?));
                    if shared { VmaKind::SharedFile } else { VmaKind::PrivateFile }
                }
            } else {
                vma.name = path.clone();
                let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
                vma.file = Some(Box::new(file_identity(&path, &link)?));
                if shared { VmaKind::SharedFile } else { VmaKind::PrivateFile }
            }
        }
        other => bail!("pid {pid}: mapping {start:#x}-{end:#x} is a kernel area crust does not know: {other:?}"),
    };
    vma.set_kind(kind);
    Ok(vma)
}

/// Copies the wanted pages of the frozen process into the page file (crust copies them, on
/// every core, hashing each chunk as it is complete: see page_copy) and keeps the file's record.
fn write_pages(ctx: &mut DumpCtx, vmas: &[Vma], name: &str, total: u64) -> Result<()> {
    let pid = ctx.pid.as_raw();
    // `dump -R`: write-protected now, copied once the tree runs on (see uffd_dump).
    if super::uffd_dump::live() && super::uffd_dump::arm(ctx, vmas, name, total, page_pieces(vmas))? {
        return Ok(());
    }
    let file = ctx.image.create_data_file(name)?;
    crate::fault::point("dump-pages-open")?;
    let record = super::page_copy::copy_to_file(pid, &file, name, &page_pieces(vmas), total, None)?;
    ctx.image.sync_data_file_deferred(name, &file)?;
    ctx.image.hashed_while_written(record);
    Ok(())
}

/// Every page run of `vmas`, in page file order.
pub fn page_pieces(vmas: &[Vma]) -> Vec<super::page_copy::Piece> {
    vmas.iter()
        .flat_map(|v| &v.pages)
        .map(|r| super::page_copy::Piece { address: r.address, len: r.pages * PAGE_SIZE, file_offset: r.file_offset })
        .collect()
}

/// At most this many bytes per preadv, so that the progress shown on a terminal moves
/// during a large memory step (a call costs tens of microseconds; this is 16 calls per GiB).
const BATCH_BYTES: u64 = 64 << 20;

/// A piece of a page run: (address, length, offset in the page file).
type Segment = (u64, u64, u64);

/// The runs cut into segments of at most BATCH_BYTES.
fn segments(runs: &[&PageRun]) -> Vec<Segment> {
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let len = run.pages * PAGE_SIZE;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BATCH_BYTES);
            out.push((run.address + done, n, run.file_offset + done));
            done += n;
        }
    }
    out
}

/// Moves page runs from the page file into the process's memory with preadv run in the
/// process, up to IOV_BATCH pieces and BATCH_BYTES per call. Runs are consecutive in the
/// file.
fn transfer_runs(remote: &mut RemoteTask, fd: u64, runs: &[&PageRun], nr: i64, name: &str) -> Result<()> {
    let segs = segments(runs);
    let mut i = 0;
    while i < segs.len() {
        // A batch must be contiguous in the file.
        let (mut j, mut want) = (i + 1, segs[i].1);
        while j < segs.len() && j - i < IOV_BATCH && want + segs[j].1 <= BATCH_BYTES {
            let prev = segs[j - 1];
            if prev.2 + prev.1 != segs[j].2 {
                break;
            }
            want += segs[j].1;
            j += 1;
        }
        let batch = &segs[i..j];
        let iov: Vec<u8> = batch.iter().flat_map(|(addr, len, _)| [addr.to_ne_bytes(), len.to_ne_bytes()]).flatten().collect();
        let iov_addr = remote.put(IOV_SCRATCH_OFFSET, &iov)?;
        let done = remote.syscall(name, nr, &[fd, iov_addr, batch.len() as u64, batch[0].2])?;
        crate::progress::copied(done);
        if done != want {
            finish_short_batch(remote, fd, batch, done, nr, name)?;
        }
        i = j;
    }
    Ok(())
}

/// Short transfers do not happen on regular files short of an error; the batch is finished
/// piece by piece so the error (if any) is reported for the exact piece.
fn finish_short_batch(remote: &mut RemoteTask, fd: u64, batch: &[Segment], done: u64, nr: i64, name: &str) -> Result<()> {
    let mut skip = done;
    for &(addr, len, offset) in batch {
        if skip >= len {
            skip -= len;
            continue;
        }
        let one = [addr + skip, len - skip];
        let bytes: Vec<u8> = one.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let iov_addr = remote.put(IOV_SCRATCH_OFFSET, &bytes)?;
        let n = remote.syscall(name, nr, &[fd, iov_addr, 1, offset + skip])?;
        if n != len - skip {
            bail!("{name} moved {n} of {} bytes at {:#x}", len - skip, addr + skip);
        }
        crate::progress::copied(n);
        skip = 0;
    }
    Ok(())
}

/// Program breaks asked of the whole tree at once (by [`super::asked::ask_all`]), by pid: a
/// break cannot change while the process is frozen.
#[derive(Default)]
pub struct AskedBreaks(pub HashMap<i32, u64>);

fn dump_mm_fields(ctx: &mut DumpCtx) -> Result<MmFields> {
    let pid = ctx.pid.as_raw();
    let stat = ctx.process.stat().with_context(|| format!("reading /proc/{pid}/stat"))?;
    let brk = match ctx.open_files.state.get::<AskedBreaks>().0.remove(&pid) {
        Some(brk) => brk,
        None => ctx.remote.syscall("brk(0)", libc::SYS_brk, &[0])?,
    };
    let auxv_raw = std::fs::read(format!("/proc/{pid}/auxv")).with_context(|| format!("reading /proc/{pid}/auxv"))?;
    let auxv = auxv_raw.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
    let exe_link = format!("/proc/{pid}/exe");
    let exe_path = std::fs::read_link(&exe_link).with_context(|| format!("readlink {exe_link}"))?;
    let exe_path = exe_path.to_string_lossy().into_owned();
    Ok(MmFields {
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: stat.start_data.unwrap_or(0),
        end_data: stat.end_data.unwrap_or(0),
        start_brk: stat.start_brk.unwrap_or(0),
        brk,
        start_stack: stat.startstack,
        arg_start: stat.arg_start.unwrap_or(0),
        arg_end: stat.arg_end.unwrap_or(0),
        env_start: stat.env_start.unwrap_or(0),
        env_end: stat.env_end.unwrap_or(0),
        auxv,
        // A deleted executable is a ghost (see ghost.rs), like its mappings.
        exe: Some(super::ghost::executable(ctx, &exe_path, &exe_link)?),
    })
}

/// The mappings of `pid` whose /proc/PID/maps line `keep` accepts, parsed: a process of 16384
/// small areas has every line parsed only where every area matters (1-2 us a line).
fn maps_where(pid: i32, keep: impl Fn(&str) -> bool) -> Result<procfs::process::MemoryMaps> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("reading /proc/{pid}/maps"))?;
    let kept: String = text.split_inclusive('\n').filter(|l| keep(l)).collect();
    <procfs::process::MemoryMaps as procfs::FromBufRead>::from_buf_read(kept.as_bytes())
        .with_context(|| format!("parsing /proc/{pid}/maps"))
}

/// The executable mappings of `pid` (its code, the vDSO included), parsed.
pub fn code_maps(pid: i32) -> Result<procfs::process::MemoryMaps> {
    maps_having(pid, crate::sys::procmap::Having::Executable, is_code_line)
}

/// The shared mappings of `pid`, parsed.
pub fn shared_maps(pid: i32) -> Result<procfs::process::MemoryMaps> {
    maps_having(pid, crate::sys::procmap::Having::Shared, |l| l.split_whitespace().nth(1).is_some_and(|p| p.ends_with('s')))
}

/// The mappings of `pid` having `having`: asked of the kernel one by one where it can
/// (PROCMAP_QUERY passes over the others itself), else the lines of /proc/PID/maps `keep`
/// accepts.
fn maps_having(pid: i32, having: crate::sys::procmap::Having, keep: impl Fn(&str) -> bool) -> Result<procfs::process::MemoryMaps> {
    match crate::sys::procmap::maps_lines(pid, having)? {
        Some(text) => <procfs::process::MemoryMaps as procfs::FromBufRead>::from_buf_read(text.as_bytes())
            .with_context(|| format!("parsing the {having:?} mappings of pid {pid}")),
        None => maps_where(pid, keep),
    }
}

/// A /proc/PID/maps line of executable code (the vDSO included).
pub fn is_code_line(line: &str) -> bool {
    line.split_whitespace().nth(1).is_some_and(|perms| perms.as_bytes().get(2) == Some(&b'x'))
}

/// Bytes of the [vdso] of process `pid`, for the image's vDSO check.
pub fn vdso_text(pid: i32) -> Result<Vec<u8>> {
    let maps = code_maps(pid)?;
    let vdso = maps.iter().find(|m| m.pathname == MMapPath::Vdso).with_context(|| format!("pid {pid} has no [vdso] mapping"))?;
    vdso_text_at(pid, vdso.address)
}

/// Bytes of the [vdso] of process `pid` at [start, end).
fn vdso_text_at(pid: i32, (start, end): (u64, u64)) -> Result<Vec<u8>> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; (end - start) as usize];
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut buf, start).context("reading the vDSO")?;
    Ok(buf)
}

/// Where a thread of `pid` parked by crust returns through its signal frame: the
/// `mov $15, %rax; syscall` of its C library's `__restore_rt` (or the like), found in its
/// executable file mappings, the C library's first. None if there is none, or if the process
/// uses a shadow stack (rt_sigreturn would then need a token crust does not place).
pub fn sigreturn_instruction_in(remote: &RemoteTask, maps: &procfs::process::MemoryMaps) -> Option<u64> {
    let pid = remote.pid().as_raw();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status.lines().any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk")) {
        return None;
    }
    let mut code: Vec<_> = maps
        .iter()
        .filter(|m| m.perms.contains(MMPermissions::EXECUTE) && matches!(m.pathname, MMapPath::Path(_)))
        .filter(|m| m.address.1 - m.address.0 <= 16 << 20)
        .collect();
    code.sort_by_key(|m| !matches!(&m.pathname, MMapPath::Path(p) if p.to_string_lossy().contains("libc")));
    code.into_iter().find_map(|m| {
        // The processes of a tree map the same C library at the same place: its code is
        // searched once, and where it was found is checked again in each process.
        let key = (m.address, m.offset, m.dev, m.inode);
        let known = SIGRETURN_FOUND.lock().ok().and_then(|c| c.get(&key).copied());
        match known {
            Some(Some(at)) => {
                let mut bytes = [0u8; 9];
                let len = (m.address.1 - at).min(9) as usize;
                remote.read_memory(at, &mut bytes[..len]).ok()?;
                if crate::sys::sigframe::find_sigreturn(&bytes[..len], at) == Some(at) {
                    return Some(at);
                }
            }
            Some(None) => return None,
            None => {}
        }
        let mut bytes = vec![0u8; (m.address.1 - m.address.0) as usize];
        remote.read_memory(m.address.0, &mut bytes).ok()?;
        let found = crate::sys::sigframe::find_sigreturn(&bytes, m.address.0);
        if let Ok(mut c) = SIGRETURN_FOUND.lock() {
            c.insert(key, found);
        }
        found
    })
}

/// Where [`sigreturn_instruction_in`] found the instructions in a file's code mapping, by
/// (address range, file offset, device, inode) of the mapping.
type MappingKey = ((u64, u64), u64, (i32, i32), u64);
static SIGRETURN_FOUND: std::sync::Mutex<std::collections::BTreeMap<MappingKey, Option<u64>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Address of a `syscall` instruction inside the [vdso] of `pid`: the first place crust can
/// run a remote system call from without changing a byte of the process.
pub fn syscall_instruction_in_vdso(pid: i32) -> Result<u64> {
    syscall_instruction_in_vdso_of(pid, &code_maps(pid)?)
}

/// [`syscall_instruction_in_vdso`] with the process's mappings read already. Every process has
/// the same vDSO (the kernel's): its code is searched once, and where it was found is checked
/// again in each process.
pub fn syscall_instruction_in_vdso_of(pid: i32, maps: &procfs::process::MemoryMaps) -> Result<u64> {
    let vdso = maps.iter().find(|m| m.pathname == MMapPath::Vdso).with_context(|| format!("pid {pid} has no [vdso] mapping"))?;
    let (start, end) = vdso.address;
    let known = VDSO_SYSCALL_OFFSET.lock().ok().and_then(|c| c.get(&(end - start)).copied());
    if let Some(offset) = known {
        let mut bytes = [0u8; 2];
        let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
        let read = std::os::unix::fs::FileExt::read_exact_at(&mem, &mut bytes, start + offset);
        if read.is_ok() && find_syscall_instruction(&bytes, start + offset) == Some(start + offset) {
            return Ok(start + offset);
        }
    }
    // (From the mappings read: /proc/PID/maps of 16384 areas costs the kernel 10 ms to write.)
    let code = vdso_text_at(pid, vdso.address)?;
    let found = find_syscall_instruction(&code, start).with_context(|| format!("no syscall instruction in the vDSO of pid {pid}"))?;
    if let Ok(mut c) = VDSO_SYSCALL_OFFSET.lock() {
        c.insert(end - start, found - start);
    }
    Ok(found)
}

/// Where [`syscall_instruction_in_vdso_of`] found a `syscall` instruction in the vDSO, from its
/// start, by the vDSO's length.
static VDSO_SYSCALL_OFFSET: std::sync::Mutex<std::collections::BTreeMap<u64, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

// ---------------------------------------------------------------------------------------------
// Restore

/// Where crust's helper area goes in every process of a restored tree: a range free in crust's
/// own address space (the first process starts as a copy of it) and in every image, followed by
/// room to stage the vDSO unit.
pub fn choose_helper_address(images: &[&Mm]) -> Result<u64> {
    let mut busy: Vec<(u64, u64)> = procfs::process::Process::myself()?.maps()?.iter().map(|m| m.address).collect();
    let mut unit_len = 0;
    for mm in images {
        busy.extend(mm.vmas.iter().map(|v| (v.start, v.end)));
        let len: u64 = mm.vmas.iter().filter(|v| is_vdso_unit(v)).map(|v| v.end - v.start).sum();
        unit_len = unit_len.max(len);
    }
    find_gap(&busy, HELPER_LEN + unit_len + PAGE_SIZE).context("no free address range for crust's helper area")
}

fn is_vdso_unit(v: &Vma) -> bool {
    matches!(v.kind(), VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso)
}

/// Machine code of the helper area: a `syscall` for injected calls, then, for a process that
/// the helper's owner forks with an injected clone3, a loop of pause() to wait in until crust
/// seizes it: `syscall; 1: mov eax, 34; syscall; jmp 1b`.
const HELPER_CODE: [u8; 11] = [0x0f, 0x05, 0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7];

/// Maps the helper area at `helper` into the first process of a restore (its children inherit
/// it) and points remote calls at it.
pub fn map_helper(remote: &mut RemoteTask, helper: u64) -> Result<()> {
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = remote.syscall("mmap(helper area)", libc::SYS_mmap, &[helper, HELPER_LEN, prot, flags, u64::MAX, 0])?;
    if got != helper {
        bail!("mmap of the helper area at {helper:#x} returned {got:#x}");
    }
    remote.write_memory(helper, &HELPER_CODE)?;
    use_helper(remote, helper);
    Ok(())
}

/// Points remote calls of a process that has the helper area at it.
pub fn use_helper(remote: &mut RemoteTask, helper: u64) {
    remote.set_syscall_ip(helper);
    let len = HELPER_LEN - HELPER_CODE_LEN;
    remote.set_scratch(Some(Scratch { address: helper + HELPER_CODE_LEN, len, executable: false, code: None }));
    remote.set_stack_pointer(helper + HELPER_LEN - 256);
    // After the helper's own code, in its code page.
    remote.set_batch_code(Some(helper + 64));
}

/// Empties a fresh process's address space (a copy of crust's, or of its parent's prepared
/// one) down to the helper area and the vDSO unit, moved to where the image has it.
pub fn prepare_address_space(remote: &mut RemoteTask, mm: &Mm, helper: u64) -> Result<()> {
    let pid = remote.pid().as_raw();
    let current: Vec<(u64, u64, MMapPath)> =
        procfs::process::Process::new(pid)?.maps()?.iter().map(|m| (m.address.0, m.address.1, m.pathname.clone())).collect();
    let vdso_unit: Vec<&Vma> = mm.vmas.iter().filter(|v| is_vdso_unit(v)).collect();

    // Move our vDSO unit into place: first each piece to a staging spot right after the helper
    // (free in both layouts), then to the image's addresses, so no move lands on a piece that
    // has not moved yet.
    let mut staged = Vec::new();
    let mut staging = helper + HELPER_LEN + PAGE_SIZE;
    // A child forked by a restored parent has the unit in place already.
    let in_place = |vma: &&Vma| current.iter().any(|(s, e, p)| *s == vma.start && *e == vma.end && vdso_piece_matches(p, vma.kind()));
    let unit_in_place = vdso_unit.iter().all(in_place);
    for vma in vdso_unit.iter().filter(|_| !unit_in_place) {
        let ours = current
            .iter()
            .find(|(_, _, p)| vdso_piece_matches(p, vma.kind()))
            .with_context(|| format!("pid {pid} has no {:?} to move where the image has it", vma.kind()))?;
        let len = ours.1 - ours.0;
        if len != vma.end - vma.start {
            bail!("the vDSO layout differs from the image: {:?} is {} bytes here, {} in the image", vma.kind(), len, vma.end - vma.start);
        }
        mremap_fixed(remote, ours.0, len, staging)?;
        staged.push((staging, len, vma.start));
        staging += len;
    }
    for (from, len, to) in staged {
        mremap_fixed(remote, from, len, to)?;
    }

    // Unmap everything else crust's copy left behind.
    // Mappings inherited from the parent stay: they are the parent's restored copies.
    let keep: Vec<(u64, u64)> = std::iter::once((helper, helper + HELPER_LEN))
        .chain(vdso_unit.iter().map(|v| (v.start, v.end)))
        .chain(mm.vmas.iter().filter(|v| v.inherited).map(|v| (v.start, v.end)))
        .collect();
    let mapped: Vec<(u64, u64)> = current.iter().filter(|(_, _, p)| *p != MMapPath::Vsyscall).map(|(s, e, _)| (*s, *e)).collect();
    // One call per stretch between kept ranges (munmap passes over holes), not one per mapping.
    for (s, e) in gaps_to_unmap(&mapped, &keep) {
        remote.syscall("munmap(inherited mappings)", libc::SYS_munmap, &[s, e - s])?;
    }
    Ok(())
}

/// The stretches between the `keep` ranges, from the lowest to the highest of `mapped`, that
/// hold some of `mapped`.
fn gaps_to_unmap(mapped: &[(u64, u64)], keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (Some(lo), Some(hi)) = (mapped.iter().map(|m| m.0).min(), mapped.iter().map(|m| m.1).max()) else {
        return Vec::new();
    };
    let mut keep = keep.to_vec();
    keep.sort();
    let mut gaps = Vec::new();
    let mut at = lo;
    for (s, e) in keep.into_iter().chain(std::iter::once((hi, hi))) {
        if s > at {
            gaps.push((at, s.min(hi)));
        }
        at = at.max(e);
    }
    gaps.retain(|(s, e)| s < e && mapped.iter().any(|(ms, me)| ms < e && me > s));
    gaps
}

/// Removes the helper area: the last remote call a process makes (it stops at the call's exit
/// and never returns into the area).
pub fn unmap_helper(remote: &mut RemoteTask, helper: u64) -> Result<()> {
    remote.syscall("munmap(helper area)", libc::SYS_munmap, &[helper, HELPER_LEN])?;
    remote.set_scratch(None);
    Ok(())
}

fn vdso_piece_matches(path: &MMapPath, kind: VmaKind) -> bool {
    match kind {
        VmaKind::Vdso => *path == MMapPath::Vdso,
        VmaKind::Vvar => *path == MMapPath::Vvar,
        VmaKind::VvarVclock => matches!(path, MMapPath::Other(n) if n.trim_matches(['[', ']']) == "vvar_vclock"),
        _ => false,
    }
}

fn mremap_fixed(remote: &mut RemoteTask, from: u64, len: u64, to: u64) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let got = remote.syscall("mremap(vDSO)", libc::SYS_mremap, &[from, len, len, flags, to])?;
    if got != to {
        bail!("mremap of the vDSO to {to:#x} returned {got:#x}");
    }
    Ok(())
}

/// First free range of `len` bytes above 1 MiB and inside user space that overlaps none of
/// `busy` (which may hold ranges above user space: [vsyscall]).
fn find_gap(busy: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut sorted = busy.to_vec();
    sorted.sort();
    let mut candidate = 0x10_0000u64;
    for (s, e) in sorted {
        if e <= candidate {
            continue;
        }
        if s >= candidate.checked_add(len)? {
            break;
        }
        candidate = candidate.max(e);
    }
    (candidate.checked_add(len)? <= USER_SPACE_END).then_some(candidate)
}

/// Which of `all` are in `some` (some of them, in the same order), in the order of `all`.
fn members<'a>(all: &'a [Vma], some: &'a [&Vma]) -> impl Iterator<Item = bool> + 'a {
    let mut some = some.iter().peekable();
    all.iter().map(move |v| some.next_if(|s| std::ptr::eq(**s, v)).is_some())
}

/// Maps every area of `mm` at its address: runs of plain anonymous areas side by side with one
/// mmap each ([`plain_run`]), the others one by one. `copied`: for each area, whether crust
/// places its pages with UFFDIO_COPY. Returns which get their final protection before their
/// pages are placed, and the mprotects that give it to them, left to run while crust places
/// pages (see [`Shaping`]).
fn map_areas(ctx: &mut RestoreCtx, mm: &Mm, copied: &[bool], file_fds: &mut HashMap<(String, bool), i32>) -> Result<(AtFinal, Shaping)> {
    let mut at_final = vec![false; mm.vmas.len()];
    let mut shaping = Vec::new();
    let mut i = 0;
    while i < mm.vmas.len() {
        let previous = i.checked_sub(1).map(|p| &mm.vmas[p]);
        let run = plain_run(&mm.vmas[i..], previous);
        if run.len() > 1 {
            let which = i..i + run.len();
            let (made, calls) = crate::timing::step("restore: map a run of areas", || map_run(ctx.remote, run, &copied[which.clone()]))
                .with_context(|| format!("restoring mappings {:#x}-{:#x} ({} areas)", run[0].start, run[run.len() - 1].end, run.len()))?;
            at_final[which].copy_from_slice(&made);
            shaping.extend(calls);
            i += run.len();
            continue;
        }
        let vma = &mm.vmas[i];
        let apart = previous.is_some_and(|p| could_merge(p, vma));
        crate::timing::step("restore: map an area", || map_vma(ctx, vma, file_fds, apart))
            .with_context(|| format!("restoring mapping {:#x}-{:#x} ({})", vma.start, vma.end, describe(vma)))?;
        i += 1;
    }
    Ok((at_final, from_both_ends(shaping)))
}

/// The mprotects that give areas crust copies pages into their final protection (those
/// [`AtFinal`] marks), run in the process while crust's workers place pages
/// (page_fill::fill): UFFDIO_COPY places pages whatever the protection, and the kernel's
/// splitting of 8192 areas off one mapping (16 ms here) then takes no time of its own.
pub type Shaping = Vec<Call>;

/// `calls` (on areas apart from one another, so in any order) reordered first, last, second,
/// next to last...: crust's fill workers start at both ends of the memory (page_fill,
/// Claims), and an area is cheaper to split off before its pages are in (and a worker placing
/// pages in an area being split waits for the split).
fn from_both_ends(calls: Vec<Call>) -> Vec<Call> {
    let mut ends = std::collections::VecDeque::from(calls);
    let mut out = Vec::with_capacity(ends.len());
    while let Some(first) = ends.pop_front() {
        out.push(first);
        out.extend(ends.pop_back());
    }
    out
}

/// Whether `vma` could end up merged with `prev` if both were mapped plainly: adjacent private
/// anonymous areas with the same final protection. (Areas of different final protections may
/// merge while they are filled, both writable, but the final mprotect parts them again, as
/// the kernel had them: a run of 64 KiB areas, every other one read-only, or a thread's stack
/// and the guard page below the next one.)
fn could_merge(prev: &Vma, vma: &Vma) -> bool {
    let anonymous = |v: &Vma| v.kind() == VmaKind::PrivateAnonymous;
    prev.end == vma.start && anonymous(prev) && anonymous(vma) && prev.prot == vma.prot
}

/// For each area of a process, whether it is mapped with its final protection before its
/// pages are placed by UFFDIO_COPY (page_fill), which places pages whatever the protection:
/// the areas crust copies pages into that are part of a run (see [`map_run`]). Made read-only
/// once filled, an area of 64 KiB split off a populated one costs an mprotect that rewrites
/// its page table entries and flushes the TLB (16384 such areas, every other one read-only:
/// 8192 calls of 7 us); made so before its pages are in, under 2 us.
type AtFinal = Vec<bool>;

/// The protection an area has while its pages are placed: its own if it is `at_final` (see
/// [`AtFinal`]), else writable if it receives pages (finish_calls set the real one afterwards).
fn prot_while_filled(v: &Vma, at_final: bool) -> u32 {
    if at_final || v.pages.is_empty() || v.unaccounted { v.prot } else { v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32 }
}

/// A private anonymous area that a plain mmap makes exactly (not inherited, not moved into
/// place, not growing down, not droppable, not to stay unaccounted: mapped writable first, it
/// would be charged to the commit limit).
fn is_plain_anonymous(v: &Vma) -> bool {
    !v.unaccounted && is_plain_anonymous_if_accounted(v)
}

fn is_plain_anonymous_if_accounted(v: &Vma) -> bool {
    v.kind() == VmaKind::PrivateAnonymous && !v.inherited && !v.droppable && !v.grows_down && !super::pathless::made_later(v)
}

/// An area a run may hold: a plain anonymous area, or a guard (no pages, never writable,
/// unaccounted: a thread's guard page), which the run's mmap then makes without write
/// permission (see [`map_run`]).
fn in_run(v: &Vma) -> bool {
    is_plain_anonymous(v) || (v.unaccounted && v.pages.is_empty() && is_plain_anonymous_if_accounted(v))
}

fn is_writable(prot: u32) -> bool {
    prot & libc::PROT_WRITE as u32 != 0
}

fn writable_while_filled(v: &Vma) -> bool {
    is_writable(prot_while_filled(v, false))
}

/// The areas at the start of `vmas` that one mmap over their whole range, then an mprotect of
/// those with another protection, makes exactly as separate mmaps would (a thread's guard page
/// and stack, the next thread's guard page; many small areas, every other one read-only):
/// adjacent plain anonymous areas, each differing in final protection from the next (so none
/// stays merged with its neighbour once finish_calls have set it), none needing to be mapped
/// apart from the one before it (see [`could_merge`]). An anonymous area's page offset is its
/// address either way. One area when there is no such run.
fn plain_run<'a>(vmas: &'a [Vma], previous: Option<&Vma>) -> &'a [Vma] {
    let Some(first) = vmas.first() else { return vmas };
    if !in_run(first) || previous.is_some_and(|p| could_merge(p, first)) {
        return &vmas[..1];
    }
    let mut n = 1;
    while let Some(next) = vmas.get(n) {
        let cur = &vmas[n - 1];
        let joins = in_run(next) && next.start == cur.end && !could_merge(cur, next) && next.no_reserve == first.no_reserve;
        if !joins {
            break;
        }
        n += 1;
    }
    // With a guard in it, the run is mapped without write permission (see map_run): every
    // other area must then be one made writable (which charges it, as its own mmap did). The
    // run ends before the first that is not (an accounted area without write permission).
    let run = &vmas[..n];
    if let (Some(guard), Some(other)) =
        (run.iter().position(|v| v.unaccounted), run.iter().position(|v| !v.unaccounted && !writable_while_filled(v)))
    {
        n = if guard < other { other } else { guard };
    }
    &vmas[..n]
}

/// Maps a run of [`plain_run`]: one mmap, then one mprotect for each stretch of areas with
/// another protection, then the advice, one call per stretch of areas taking it. (1000
/// threads' stacks and guard pages: 1001 calls instead of 2000; 16384 areas of 64 KiB, every
/// other one read-only: one mmap, 8192 mprotects of untouched memory, one madvise.) In a run
/// without a guard, the areas crust copies pages into (`copied`, one for each area) get their
/// final protection, and the mprotects that give it are returned to run while their pages are
/// placed (see [`Shaping`]); returns which did (see [`AtFinal`]).
fn map_run(remote: &mut RemoteTask, run: &[Vma], copied: &[bool]) -> Result<(Vec<bool>, Vec<Call>)> {
    let guarded = run.iter().any(|v| v.unaccounted);
    let at_final: Vec<bool> = copied.iter().map(|&c| c && !guarded).collect();
    let prots: Vec<u32> = run.iter().zip(&at_final).map(|(v, &f)| prot_while_filled(v, f)).collect();
    let common = run_protection(guarded, &prots);
    let (start, end) = (run[0].start, run[run.len() - 1].end);
    let noreserve = if run[0].no_reserve { libc::MAP_NORESERVE } else { 0 };
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | noreserve) as u64;
    let got = remote.syscall("mmap", libc::SYS_mmap, &[start, end - start, common as u64, flags, u64::MAX, 0])?;
    if got != start {
        bail!("mmap returned {got:#x}");
    }
    if !guarded && prots.iter().any(|&p| !is_writable(p)) {
        // An anonymous area never written to loses its charge to the commit limit when it is
        // made read-only (the kernel drops VM_ACCOUNT while it has no anon_vma); the original
        // areas kept theirs. One page written gives the run its anon_vma, which every area
        // split off it shares, as the original areas did; the page is dropped again at once
        // (before crust's fill registers the run with a userfaultfd).
        give_anon_vma(remote, start)?;
    }
    let (now, later): (Vec<_>, Vec<_>) = protection_calls(run, &prots, common, &at_final).into_iter().partition(|(_, later)| !later);
    remote.syscalls("mprotect", &now.into_iter().map(|(call, _)| call).collect::<Vec<_>>())?;
    // The same advice on adjacent areas is one call over all of them.
    for (advice, ranges) in advice_ranges(run, &before_fill_advice) {
        for (start, end) in ranges {
            remote.syscall("madvise", libc::SYS_madvise, &[start, end - start, advice as u64])?;
        }
    }
    Ok((at_final, later.into_iter().map(|(call, _)| call).collect()))
}

/// The protection a run's mmap gives it, `prots` being its areas' while they are filled. A
/// guard stays unaccounted only if the mmap that makes it is not writable: a run with one is
/// mapped with no access, and each other area mprotected to its protection. Without one, the
/// mmap is writable, so that each area is charged to the commit limit as the original was:
/// the writable protection most areas have, else read and write.
fn run_protection(guarded: bool, prots: &[u32]) -> u32 {
    if guarded {
        return libc::PROT_NONE as u32;
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &prot in prots.iter().filter(|&&p| is_writable(p)) {
        *counts.entry(prot).or_default() += 1;
    }
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    counts.into_iter().max_by_key(|(prot, n)| (*n, std::cmp::Reverse(*prot))).map_or(rw, |(prot, _)| prot)
}

/// The mprotects that give the areas of a run mapped with `common` their protections `prots`:
/// adjacent areas of the same other protection take one call. Each call says whether it may
/// wait for the fill: it sets only areas `at_final` (see [`Shaping`]).
fn protection_calls(run: &[Vma], prots: &[u32], common: u32, at_final: &[bool]) -> Vec<(Call, bool)> {
    let mut others: Vec<(u64, u64, u32, bool)> = Vec::new();
    for ((v, &prot), &later) in run.iter().zip(prots).zip(at_final).filter(|((_, p), _)| **p != common) {
        match others.last_mut() {
            Some(last) if last.1 == v.start && last.2 == prot && last.3 == later => last.1 = v.end,
            _ => others.push((v.start, v.end, prot, later)),
        }
    }
    others.into_iter().map(|(start, end, prot, later)| ((libc::SYS_mprotect, [start, end - start, prot as u64, 0, 0, 0]), later)).collect()
}

/// The advice that changes how an area's pages are backed, given before they are filled.
fn before_fill_advice(vma: &Vma) -> [(bool, i32); 4] {
    [
        (vma.huge_page_advised, libc::MADV_HUGEPAGE),
        (vma.no_huge_page_advised, libc::MADV_NOHUGEPAGE),
        (vma.mergeable, libc::MADV_MERGEABLE),
        (vma.dont_fork, libc::MADV_DONTFORK),
    ]
}

/// For each advice `which` gives some of `areas` (in address order), the ranges of adjacent
/// areas that take it: one madvise per range instead of one per area.
fn advice_ranges<const N: usize>(areas: &[Vma], which: &dyn Fn(&Vma) -> [(bool, i32); N]) -> Vec<(i32, Vec<(u64, u64)>)> {
    let mut out: Vec<(i32, Vec<(u64, u64)>)> = Vec::new();
    for v in areas {
        for (wanted, advice) in which(v) {
            if !wanted {
                continue;
            }
            let i = match out.iter().position(|(a, _)| *a == advice) {
                Some(i) => i,
                None => {
                    out.push((advice, Vec::new()));
                    out.len() - 1
                }
            };
            match out[i].1.last_mut() {
                Some(last) if last.1 == v.start => last.1 = v.end,
                _ => out[i].1.push((v.start, v.end)),
            }
        }
    }
    out
}

/// Advice that changes how pages are backed, in place before they are filled.
fn advise_before_fill(remote: &mut RemoteTask, vma: &Vma) -> Result<()> {
    for (wanted, advice) in before_fill_advice(vma) {
        if wanted {
            madvise(remote, vma, advice)?;
        }
    }
    Ok(())
}

/// Maps one area of the image. `apart`: the area right before it is a separate area in the
/// image, so this one must not merge with it (see [`map_anonymous_apart`]).
fn map_vma(ctx: &mut RestoreCtx, vma: &Vma, file_fds: &mut HashMap<(String, bool), i32>, apart: bool) -> Result<()> {
    let kind = vma.kind();
    let len = vma.end - vma.start;
    if vma.inherited {
        // Already there, with the parent's pages and advice: drop what this process had
        // dropped, and open it for the pages that differ.
        for run in &vma.discard {
            ctx.remote.syscall(
                "madvise(MADV_DONTNEED)",
                libc::SYS_madvise,
                &[run.address, run.pages * PAGE_SIZE, libc::MADV_DONTNEED as u64],
            )?;
        }
        if !vma.pages.is_empty() && vma.prot & libc::PROT_WRITE as u32 == 0 && !vma.unaccounted {
            let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            ctx.remote.syscall("mprotect", libc::SYS_mprotect, &[vma.start, len, rw])?;
        }
        return Ok(());
    }
    // Areas that receive pages are writable while they are filled; finish_calls set the real
    // protection afterwards. Unaccounted areas keep theirs (see `write_unaccounted_pages`).
    let prot = prot_while_filled(vma, false) as u64;
    if super::pathless::made_later(vma) {
        return Ok(());
    }
    let growsdown = if vma.grows_down { libc::MAP_GROWSDOWN } else { 0 };
    let (flags, fd, offset) = match kind {
        VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso | VmaKind::Vsyscall => return Ok(()),
        VmaKind::PrivateAnonymous if vma.droppable => (MAP_DROPPABLE | libc::MAP_ANONYMOUS, -1i64, 0),
        VmaKind::PrivateAnonymous => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | growsdown, -1i64, 0),
        VmaKind::SysvShm => {
            let seg = vma.sysv_shm.as_ref().context("SysV mapping without its segment")?;
            return super::sysv_shm::attach(ctx, vma, seg);
        }
        VmaKind::SharedAnonymous => {
            // The object was created (and filled) by the nearest common ancestor of everyone
            // mapping it; its descriptor waits at the working fd of its description.
            let fd = ctx.work_fd_floor as i64 + vma.shared_memory_id as i64;
            (libc::MAP_SHARED, fd, vma.file_offset)
        }
        VmaKind::PrivateFile | VmaKind::SharedFile if vma.inode_object_id != 0 => {
            let shared = kind == VmaKind::SharedFile;
            let writable = shared && vma_may_write(vma);
            let key = (format!("open file #{}", vma.inode_object_id), writable);
            let fd = match file_fds.get(&key) {
                Some(fd) => *fd,
                None => {
                    let fd = super::pathless::open_for_mapping(ctx, vma, writable)?;
                    file_fds.insert(key, fd);
                    fd
                }
            };
            let sharing = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
            (sharing | growsdown, fd as i64, vma.file_offset)
        }
        VmaKind::PrivateFile | VmaKind::SharedFile => {
            let file = vma.file.as_ref().context("file mapping without a file")?;
            let shared = kind == VmaKind::SharedFile;
            // A shared mapping that may become writable needs a writable descriptor.
            let writable = shared && vma_may_write(vma);
            let key = (super::ghost::mapped_key(file), writable);
            let fd = match file_fds.get(&key) {
                Some(fd) => *fd,
                None if let Some(fd) = leased_description(ctx, file)? => fd,
                None => {
                    let mode = if writable { libc::O_RDWR } else { libc::O_RDONLY };
                    let fd = ctx.open_for_memory(file, mode | libc::O_CLOEXEC, "mapped file")?;
                    file_fds.insert(key, fd);
                    fd
                }
            };
            let sharing = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
            (sharing | growsdown, fd as i64, vma.file_offset)
        }
    };
    let noreserve = if vma.no_reserve { libc::MAP_NORESERVE } else { 0 };
    let charged = charged_without_write(vma);
    let prot = if charged { prot | (libc::PROT_READ | libc::PROT_WRITE) as u64 } else { prot };
    if apart && kind == VmaKind::PrivateAnonymous && !vma.grows_down {
        map_anonymous_apart(ctx.remote, vma, prot, (flags | noreserve) as u64)?;
    } else {
        let flags = (flags | noreserve | libc::MAP_FIXED) as u64;
        let got = ctx.remote.syscall("mmap", libc::SYS_mmap, &[vma.start, len, prot, flags, fd as u64, offset])?;
        if got != vma.start {
            bail!("mmap returned {got:#x}");
        }
    }
    if charged {
        keep_charged_while_protected(ctx.remote, vma)?;
    }
    advise_before_fill(ctx.remote, vma)
}

/// An area without write permission and without saved pages that was charged to the commit
/// limit (`ac` in VmFlags: it was writable once and had had pages, so the kernel kept its
/// charge when it lost write permission). A plain mmap of its protection would not charge it,
/// nor would an mprotect from writable with no page ever in it (see [`keep_charged_while_protected`]).
fn charged_without_write(v: &Vma) -> bool {
    is_plain_anonymous(v) && v.pages.is_empty() && !is_writable(v.prot)
}

/// Gives an area mapped writable (so charged) its own protection without losing the charge:
/// the kernel drops VM_ACCOUNT from an anonymous area made read-only while it has no anon_vma.
/// One page written gives it one and is dropped at once, as for a run (see [`map_run`]).
fn keep_charged_while_protected(remote: &mut RemoteTask, vma: &Vma) -> Result<()> {
    give_anon_vma(remote, vma.start)?;
    remote.syscall("mprotect", libc::SYS_mprotect, &[vma.start, vma.end - vma.start, vma.prot as u64])?;
    Ok(())
}

/// Gives the writable anonymous area at `address` an anon_vma (what keeps its charge when it is
/// made read-only) and no page: one byte written, its page dropped at once.
fn give_anon_vma(remote: &mut RemoteTask, address: u64) -> Result<()> {
    remote.write_memory(address, &[0])?;
    remote.syscall("madvise(MADV_DONTNEED)", libc::SYS_madvise, &[address, PAGE_SIZE, libc::MADV_DONTNEED as u64])?;
    Ok(())
}

/// Two adjacent private anonymous areas that the process had as two (one was moved by mremap,
/// say, so their page offsets do not follow each other) would be merged into one by a plain
/// mmap next to the other. Mapped elsewhere and moved into place, the area keeps the page
/// offset of where it was made, as the original did, and stays an area of its own.
fn map_anonymous_apart(remote: &mut RemoteTask, vma: &Vma, prot: u64, flags: u64) -> Result<()> {
    let len = vma.end - vma.start;
    // A placeholder holds the place (PROT_NONE: it merges with nothing that matters), so that
    // the area made elsewhere cannot be made right there.
    let placeholder = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE) as u64;
    remote.syscall("mmap(placeholder)", libc::SYS_mmap, &[vma.start, len, libc::PROT_NONE as u64, placeholder, u64::MAX, 0])?;
    // mremap gives an area never faulted the page offset of its new place (to let it merge):
    // one page touched keeps the offset of where it was made. The page touched lies in a tail
    // made with the area and unmapped afterwards, in another 2 MiB stretch than any of the
    // area's: a page table left in a stretch of the area (even empty) would keep its first
    // fault from being a huge page's.
    // (Best effort: an area that cannot be touched may merge, as before.)
    let tail = HUGE_STRETCH + PAGE_SIZE;
    let made = remote.syscall("mmap", libc::SYS_mmap, &[0, len + tail, prot, flags, u64::MAX, 0])?;
    let _ = remote.write_memory(made + len + HUGE_STRETCH, &[0]);
    let moved = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let got = remote.syscall("mremap", libc::SYS_mremap, &[made, len, len, moved, vma.start])?;
    if got != vma.start {
        bail!("mremap to {:#x} returned {got:#x}", vma.start);
    }
    remote.syscall("munmap(tail)", libc::SYS_munmap, &[made + len, tail])?;
    Ok(())
}

/// The working fd of the restored description through which a write-leased file must be
/// mapped again (see leases::write_leased_description), if this process has it.
fn leased_description(ctx: &mut RestoreCtx, file: &crate::image::proto::FileIdentity) -> Result<Option<i32>> {
    let Some(id) = super::leases::write_leased_description(ctx.open_files, file.dev, file.inode) else {
        return Ok(None);
    };
    let work = ctx.work_fd_floor + id as i32;
    let held = ctx.remote.syscall_raw(libc::SYS_fcntl, &[work as u64, libc::F_GETFD as u64])? >= 0;
    Ok(held.then_some(work))
}

/// Whether a shared file mapping had VM_MAYWRITE (it was mapped through a writable fd).
fn vma_may_write(vma: &Vma) -> bool {
    vma.prot & libc::PROT_WRITE as u32 != 0 || vma.may_write
}

fn madvise(remote: &mut RemoteTask, vma: &Vma, advice: i32) -> Result<()> {
    remote.syscall("madvise", libc::SYS_madvise, &[vma.start, vma.end - vma.start, advice as u64])?;
    Ok(())
}

/// Puts the saved pages of `mm` in place: crust places those of `by_crust` (large anonymous
/// areas: page_fill, on every core, no page zeroed first), the process reads in those of
/// `by_process`. A kernel that refuses crust a userfaultfd leaves all to the process: the
/// areas mapped with their final protection are then made writable for it (and taken out of
/// `at_final`, so that finish_calls set it again). `shaping` (see [`Shaping`]) runs in the
/// process while crust places pages, or before the process reads its own in.
fn place_pages(
    ctx: &mut RestoreCtx,
    pages_fd: i32,
    mm: &Mm,
    areas: (&[&Vma], Vec<&Vma>),
    at_final: &mut AtFinal,
    shaping: &[Call],
) -> Result<()> {
    let (by_crust, mut by_process) = areas;
    if let (Some(record), false) = (ctx.pages_record, by_crust.is_empty()) {
        let path = ctx.image.path(&mm.pages_file);
        if !super::page_fill::fill(ctx, by_crust, &path, record, shaping)? {
            // The restore's check of the page file left these chunks to crust's fill.
            let chunks = super::page_fill::chunks_of(by_crust, record.chunk_size);
            image::chunks::verify_some(&ctx.image.data_file(&mm.pages_file)?, &path, record, &chunks)?;
            let mut writable = Vec::new();
            for (v, at_final) in mm.vmas.iter().zip(at_final.iter_mut()).filter(|(_, f)| **f) {
                *at_final = false;
                let prot = prot_while_filled(v, false);
                if prot != v.prot {
                    writable.push((libc::SYS_mprotect, [v.start, v.end - v.start, prot as u64, 0, 0, 0]));
                }
            }
            ctx.remote.syscalls("mprotect", &writable)?;
            by_process.extend(by_crust);
        }
    } else {
        ctx.remote.syscalls("mprotect", shaping)?;
    }
    fill_pages(ctx.remote, pages_fd, &by_process)
}

fn fill_pages(remote: &mut RemoteTask, pages_fd: i32, vmas: &[&Vma]) -> Result<()> {
    let runs: Vec<&PageRun> = vmas.iter().flat_map(|v| v.pages.iter()).collect();
    transfer_runs(remote, pages_fd as u64, &runs, libc::SYS_preadv, "preadv").context("reading pages into place")
}

/// The page file the process opened (by path) is the very file crust verifies (see
/// `ImageDir::data_file`): a file renamed into the image directory since is refused.
fn same_page_file(ctx: &mut RestoreCtx, fd: i32, name: &str) -> Result<()> {
    let verified = ctx.image.data_file_identity(name)?;
    let opened = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid)).map(|m| (m.dev(), m.ino()));
    if opened.as_ref().ok() != Some(&verified) {
        ctx.close_in_process(fd)?;
        bail!(
            "image file {}: the file the process opened ({opened:?}) is not the one crust verifies (device {:#x} inode {}): it was replaced during the restore",
            ctx.image.path(name).display(),
            verified.0,
            verified.1
        );
    }
    Ok(())
}

/// Writes the pages of areas that must stay unaccounted (mapped without write permission)
/// through /proc/PID/mem, which crust, the tracer, may write whatever the protection (the
/// kernel breaks copy-on-write for it, as for a debugger's breakpoint). They are few (one page
/// in a JVM), so a pwrite per run is fine.
fn write_unaccounted_pages(ctx: &RestoreCtx, pages_file: &str, vmas: &[&Vma]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    if vmas.is_empty() {
        return Ok(());
    }
    let pid = ctx.pid.as_raw();
    let pages_path = ctx.image.path(pages_file);
    let pages = ctx.image.data_file(pages_file)?;
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .with_context(|| format!("pid {pid}: opening /proc/{pid}/mem"))?;
    let mut buffer = vec![0u8; 1 << 20];
    for run in vmas.iter().flat_map(|v| v.pages.iter()) {
        let total = run.pages * PAGE_SIZE;
        let mut done = 0;
        while done < total {
            let n = (total - done).min(buffer.len() as u64) as usize;
            pages
                .read_exact_at(&mut buffer[..n], run.file_offset + done)
                .with_context(|| format!("reading {} at {}", pages_path.display(), run.file_offset + done))?;
            mem.write_all_at(&buffer[..n], run.address + done)
                .with_context(|| format!("pid {pid}: pwrite of /proc/{pid}/mem at {:#x} ({n} bytes)", run.address + done))?;
            done += n as u64;
        }
    }
    Ok(())
}

/// An area filled before the process runs gets huge pages by itself where it is advised
/// MADV_HUGEPAGE (its first touch of each stretch faults a huge page); elsewhere (a program
/// that collapsed its memory itself, or THP in `always` mode at dump time) the stretches that
/// were huge are collapsed again here, in the process, before it runs. A stretch that cannot
/// be (no free huge page) keeps its contents in 4 KiB pages: said in the log, not an error.
fn collapse_huge_stretches(remote: &mut RemoteTask, vmas: &[&Vma]) {
    const MADV_COLLAPSE: u64 = 25;
    for vma in vmas.iter().filter(|v| !v.huge_page_advised && !v.no_huge_page_advised) {
        let stretches = super::lazy_huge::stretches_to_collapse(vma);
        let mut small = 0;
        let mut collapse = |start: u64, n: usize| {
            let len = n as u64 * crate::sys::pagemap::HUGE_STRETCH;
            remote
                .syscall("madvise(MADV_COLLAPSE)", libc::SYS_madvise, &[start, len, MADV_COLLAPSE])
                .inspect_err(|e| tracing::debug!("{e:#}"))
                .is_ok()
        };
        for run in super::lazy_huge::adjacent_runs(&stretches) {
            // Which one failed is not said: each again on its own.
            if !collapse(run[0], run.len()) {
                small += run.iter().filter(|&&s| !collapse(s, 1)).count();
            }
        }
        if small > 0 {
            tracing::warn!(
                "pid {}: mapping {:#x}-{:#x}: {small} of {} huge pages could not be made huge again (MADV_COLLAPSE failed); their contents are right",
                remote.pid(),
                vma.start,
                vma.end,
                stretches.len()
            );
        }
    }
}

/// The calls that give an area filled with its pages its final protection (unless it had it
/// already, `at_final`) and the advice that does not change how pages are backed (run in
/// batches).
fn finish_calls(vma: &Vma, at_final: bool) -> Vec<Call> {
    if matches!(vma.kind(), VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso | VmaKind::Vsyscall) {
        return Vec::new();
    }
    let len = vma.end - vma.start;
    let mut calls = Vec::new();
    if prot_while_filled(vma, at_final) != vma.prot {
        calls.push((libc::SYS_mprotect, [vma.start, len, vma.prot as u64, 0, 0, 0]));
    }
    let advice: [(bool, i32); 4] = [
        (vma.dont_dump, libc::MADV_DONTDUMP),
        (vma.wipe_on_fork, libc::MADV_WIPEONFORK),
        (vma.sequential_read, libc::MADV_SEQUENTIAL),
        (vma.random_read, libc::MADV_RANDOM),
    ];
    for (wanted, advice) in advice {
        if wanted {
            calls.push((libc::SYS_madvise, [vma.start, len, advice as u64, 0, 0, 0]));
        }
    }
    if vma.locked {
        calls.push((libc::SYS_mlock, [vma.start, len, 0, 0, 0, 0]));
    }
    calls
}

/// PR_SET_MM_MAP: brk, code/data/stack bounds, args, env, auxv and the executable link.
fn set_mm_fields(ctx: &mut RestoreCtx, f: &MmFields) -> Result<()> {
    let exe = f.exe.as_ref().context("image has no executable")?;
    // The kernel refuses to replace the exe link while the old file is still mapped; when the
    // old one (crust's, inherited by the fresh process) is the image's own executable, the
    // link is already right.
    let current = std::fs::metadata(format!("/proc/{}/exe", ctx.pid))?;
    let exe_fd = if (current.dev(), current.ino()) == (exe.dev, exe.inode) {
        None
    } else {
        Some(ctx.open_for_memory(exe, libc::O_RDONLY | libc::O_CLOEXEC, "executable")?)
    };
    let mut auxv_bytes = Vec::new();
    for v in &f.auxv {
        auxv_bytes.extend_from_slice(&v.to_ne_bytes());
    }
    let auxv_addr = ctx.remote.put(4096, &auxv_bytes)?;
    let mut map = Vec::new();
    for v in [
        f.start_code,
        f.end_code,
        f.start_data,
        f.end_data,
        f.start_brk,
        f.brk,
        f.start_stack,
        f.arg_start,
        f.arg_end,
        f.env_start,
        f.env_end,
        auxv_addr,
    ] {
        map.extend_from_slice(&v.to_ne_bytes());
    }
    map.extend_from_slice(&(auxv_bytes.len() as u32).to_ne_bytes());
    map.extend_from_slice(&(exe_fd.unwrap_or(-1) as u32).to_ne_bytes());
    let map_addr = ctx.remote.put(2048, &map)?;
    const PR_SET_MM_MAP: u64 = 14;
    ctx.remote
        .syscall(
            "prctl(PR_SET_MM, PR_SET_MM_MAP)",
            libc::SYS_prctl,
            &[libc::PR_SET_MM as u64, PR_SET_MM_MAP, map_addr, map.len() as u64, 0],
        )
        .context("setting brk, stack, args, env, auxv and the executable link")?;
    if let Some(fd) = exe_fd {
        ctx.close_in_process(fd)?;
    }
    Ok(())
}

/// The highest user address plus one on x86-64 with 4-level page tables ([vsyscall] above it
/// is the kernel's own and is never created by restore).
const USER_SPACE_END: u64 = 0x7fff_ffff_f000;
const VSYSCALL_START: u64 = 0xffff_ffff_ff60_0000;

/// Checks that a memory record describes an address space at all, before anything uses its
/// numbers: areas page-aligned, ordered, apart, inside user space; page runs inside their area
/// and the page file offsets aligned. Errors name the record file (`name`) and the field.
pub fn check_structure(mm: &Mm, name: &str) -> Result<()> {
    let mut previous_end = 0u64;
    for (i, vma) in mm.vmas.iter().enumerate() {
        // Formatted only for an error, not once per area (16384 of them in a process).
        let where_ = || format!("image file {name}: field vmas[{i}] ({:#x}-{:#x})", vma.start, vma.end);
        let aligned = |v: u64| v.is_multiple_of(PAGE_SIZE);
        if !aligned(vma.start) || !aligned(vma.end) || vma.start >= vma.end {
            bail!("{}: not a page-aligned, non-empty range", where_());
        }
        let vsyscall = vma.kind() == VmaKind::Vsyscall && vma.start >= VSYSCALL_START;
        if vma.end > USER_SPACE_END && !vsyscall {
            bail!("{}: outside user space", where_());
        }
        if vma.start < previous_end {
            bail!("{}: overlaps or precedes the area before it", where_());
        }
        previous_end = vma.end;
        if !aligned(vma.file_offset) || vma.file_offset.checked_add(vma.end - vma.start).is_none() {
            bail!("{}: field file_offset {:#x} is not page-aligned or overflows", where_(), vma.file_offset);
        }
        for (field, runs) in [("pages", &vma.pages), ("discard", &vma.discard)] {
            for run in runs {
                let len = run.pages.checked_mul(PAGE_SIZE);
                let end = len.and_then(|l| run.address.checked_add(l));
                let inside = end.is_some_and(|e| run.address >= vma.start && e <= vma.end && run.pages > 0);
                if !inside || !aligned(run.address) || !aligned(run.file_offset) {
                    bail!("{}: field {field}: a run of {} pages at {:#x} is not inside the area", where_(), run.pages, run.address);
                }
            }
        }
        check_huge_stretches(vma, &where_)?;
        super::anon_names::check(vma, &where_)?;
    }
    Ok(())
}

/// `huge_stretches`: whole 2 MiB-aligned stretches inside the area, in address order.
fn check_huge_stretches(vma: &Vma, where_: &dyn Fn() -> String) -> Result<()> {
    use crate::sys::pagemap::HUGE_STRETCH;
    let mut previous: Option<u64> = None;
    for &s in &vma.huge_stretches {
        let inside = s % HUGE_STRETCH == 0 && s >= vma.start && s.checked_add(HUGE_STRETCH).is_some_and(|e| e <= vma.end);
        if !inside || previous.is_some_and(|p| s <= p) {
            bail!("{}: field huge_stretches: {s:#x} is not a 2 MiB stretch of the area in address order", where_());
        }
        previous = Some(s);
    }
    Ok(())
}

/// Everything restore checks about memory before creating any process: files still the same,
/// vDSO layout as the image expects.
pub fn precheck(mm: &Mm, code: CodeValidation) -> Result<()> {
    for vma in &mm.vmas {
        if let Some(file) = &vma.file {
            let usage = if vma.prot & libc::PROT_EXEC as u32 != 0 {
                FileUse::Code(code)
            } else {
                FileUse::Data { needed: vma.file_offset.saturating_add(vma.end.saturating_sub(vma.start)) }
            };
            check_file(file, "mapped file", usage)?;
        }
    }
    if let Some(exe) = mm.fields.as_ref().and_then(|f| f.exe.as_ref()) {
        check_file(exe, "executable", FileUse::Code(code))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapping_passes_over_holes_and_around_what_is_kept() {
        let mapped = [(0, 10), (20, 30), (40, 50), (60, 70), (100, 110)];
        assert_eq!(gaps_to_unmap(&mapped, &[(25, 45)]), vec![(0, 25), (45, 110)]);
        assert_eq!(gaps_to_unmap(&mapped, &[(0, 10), (100, 110)]), vec![(10, 100)]);
        assert_eq!(gaps_to_unmap(&mapped, &[(0, 110)]), vec![]);
        // Nothing mapped between two kept ranges: no call there.
        assert_eq!(gaps_to_unmap(&mapped, &[(30, 35), (38, 40)]), vec![(0, 30), (40, 110)]);
        assert_eq!(gaps_to_unmap(&mapped, &[(10, 20), (70, 100)]), vec![(0, 10), (20, 70), (100, 110)]);
        assert_eq!(gaps_to_unmap(&mapped, &[(200, 300)]), vec![(0, 110)]);
        assert_eq!(gaps_to_unmap(&[], &[(0, 1)]), vec![]);
    }

    #[test]
    fn gap_avoids_every_busy_range() {
        let busy = [(0x10_0000, 0x20_0000), (0x20_1000, 0x30_0000)];
        assert_eq!(find_gap(&busy, 0x1000), Some(0x20_0000));
        assert_eq!(find_gap(&busy, 0x2000), Some(0x30_0000));
        // Everything below the end of user space taken: no gap, even with [vsyscall] above.
        let full = [(0x10_0000, USER_SPACE_END), (VSYSCALL_START, VSYSCALL_START + 0x1000)];
        assert_eq!(find_gap(&full, 0x1000), None);
        let nearly = [(0x10_0000, USER_SPACE_END - 0x1000), (VSYSCALL_START, VSYSCALL_START + 0x1000)];
        assert_eq!(find_gap(&nearly, 0x1000), Some(USER_SPACE_END - 0x1000));
        assert_eq!(find_gap(&nearly, 0x2000), None);
    }

    /// Areas of this test's own memory (a huge-page area, then 2560 areas of one page, every
    /// third one untouched) walked in two halves on two threads get exactly the runs and huge
    /// stretches of one walk.
    #[test]
    fn a_walk_in_halves_gives_the_areas_what_one_walk_gives() {
        let page = PAGE_SIZE as usize;
        let mut huge = crate::sys::region::AnonRegion::new(HUGE_STRETCH as usize, true).unwrap();
        huge.as_mut_slice().iter_mut().step_by(page).for_each(|b| *b = 1);
        let mut small = crate::sys::region::AnonRegion::new(2560 * page, false).unwrap();
        // (Ordinary pages, never a huge one: the pages not written are not there.)
        for (_, chunk) in small.as_mut_slice().chunks_mut(page).enumerate().filter(|(i, _)| !i.is_multiple_of(3)) {
            chunk[0] = 1;
        }
        let mut areas = vec![anonymous(huge.address(), libc::PROT_READ, false)];
        areas[0].end = huge.address() + HUGE_STRETCH;
        areas.extend((0..2560).map(|i| {
            let mut v = anonymous(small.address() + (i * page) as u64, libc::PROT_READ, false);
            v.end = v.start + PAGE_SIZE;
            v
        }));
        areas.sort_by_key(|v| v.start);
        let indexes: Vec<usize> = (0..areas.len()).collect();
        let pagemap = PageMap::open(std::process::id() as i32).unwrap();
        assert!(crate::sys::pagemap::halves(&spans(&areas)).is_some(), "2561 areas are walked in two");
        let (mut once, mut halves) = (areas.clone(), areas);
        walk_once(&pagemap, &mut once, &indexes, &indexes);
        walk_in_halves(&pagemap, &mut halves, &indexes, &indexes).unwrap();
        assert_eq!(once, halves);
        for v in once.iter().filter(|v| v.end - v.start == PAGE_SIZE) {
            let i = (v.start - small.address()) / PAGE_SIZE;
            let expected = if !i.is_multiple_of(3) { vec![PageRun { address: v.start, pages: 1, file_offset: 0 }] } else { vec![] };
            assert_eq!(v.pages, expected, "area {i}");
        }
        let big = once.iter().find(|v| v.start == huge.address()).unwrap();
        assert_eq!(big.pages, vec![PageRun { address: big.start, pages: HUGE_STRETCH / PAGE_SIZE, file_offset: 0 }]);
        // Huge where the kernel had a huge page to give (this test cannot make it).
        assert!(big.huge_stretches.is_empty() || big.huge_stretches == vec![big.start], "{:?}", big.huge_stretches);
    }

    fn spans(areas: &[Vma]) -> Vec<(u64, u64)> {
        areas.iter().map(|v| (v.start, v.end)).collect()
    }

    /// What one walk of the whole group gives its areas.
    fn walk_once(pagemap: &PageMap, group: &mut [Vma], indexes: &[usize], huge_by_walk: &[usize]) {
        let (start, end) = (group[0].start, group[group.len() - 1].end);
        let (mut runs, mut huge) = (Vec::new(), Vec::new());
        pagemap.resident_runs_and_huge(start, end, |a, n| runs.push((a, n)), |s| huge.push(s)).unwrap();
        give_runs(group, &runs);
        huge_stretches_to_areas(group, indexes, huge_by_walk, &huge);
    }

    /// One large area (1 GiB, sparse) is cut inside, at a 2 MiB boundary, and walked in two:
    /// a run across the cut comes out whole, as from one walk.
    #[test]
    fn a_large_area_walked_in_two_gives_the_runs_of_one_walk() {
        let page = PAGE_SIZE as usize;
        let len = 1usize << 30;
        let mut region = crate::sys::region::AnonRegion::new(len, false).unwrap();
        let bytes = region.as_mut_slice();
        // Every 4097th page, and 24 MiB straight across the middle.
        bytes.iter_mut().step_by(4097 * page).for_each(|b| *b = 1);
        bytes[500 << 20..524 << 20].iter_mut().step_by(page).for_each(|b| *b = 1);
        let start = region.address();
        let area = {
            let mut v = anonymous(start, libc::PROT_READ | libc::PROT_WRITE, false);
            v.end = start + len as u64;
            v
        };
        let (first, second) = crate::sys::pagemap::halves(&[(start, area.end)]).expect("1 GiB is walked in two");
        let cut = first.last().unwrap().1;
        assert!(cut > start && cut < area.end && cut % HUGE_STRETCH == 0 && second[0].0 == cut, "{first:x?} {second:x?}");
        assert!(cut > start + (500 << 20) && cut < start + (524 << 20), "the cut at {:#x} is not inside the dense run", cut - start);
        let pagemap = PageMap::open(std::process::id() as i32).unwrap();
        let (mut once, mut halves) = (vec![area.clone()], vec![area]);
        walk_once(&pagemap, &mut once, &[0], &[0]);
        walk_in_halves(&pagemap, &mut halves, &[0], &[0]).unwrap();
        assert_eq!(once, halves);
        assert!(
            once[0].pages.iter().any(|r| r.address == start + (500 << 20) && r.pages == (24 << 20) / PAGE_SIZE),
            "{:x?}",
            once[0].pages
        );
    }

    fn anonymous(start: u64, prot: i32, pages: bool) -> Vma {
        let mut v = Vma { start, end: start + 0x10000, prot: prot as u32, ..Default::default() };
        v.set_kind(VmaKind::PrivateAnonymous);
        if pages {
            v.pages = vec![PageRun { address: start, pages: 16, file_offset: 0 }];
        }
        v
    }

    /// `[anon:NAME]` is private anonymous memory, its name kept byte for byte (spaces at either
    /// end, colons); `[heap]` stays the heap, unnamed.
    #[test]
    fn a_named_private_area_is_anonymous_memory_with_its_name() {
        let line = |name: &str| format!("7f0000000000-7f0000004000 rw-p 00000000 00:00 0{:26}{name}\nVmFlags: rd wr mr mw me ac \n", "");
        let area = &super::super::smaps::parse(&line("[anon:  my arena: 2 ]")).unwrap()[0];
        let vma = describe_vma(1, area).unwrap();
        assert_eq!(
            (vma.kind(), vma.anon_name.as_deref(), vma.name.as_str()),
            (VmaKind::PrivateAnonymous, Some("  my arena: 2 "), "[anon:  my arena: 2 ]")
        );
        let heap = describe_vma(1, &super::super::smaps::parse(&line("[heap]")).unwrap()[0]).unwrap();
        assert_eq!((heap.kind(), heap.anon_name), (VmaKind::PrivateAnonymous, None));
        // Shared pages shown as private named memory: no area crust knows.
        let odd = &super::super::smaps::parse(&line("[anon:x]").replace("rw-p", "rw-s")).unwrap()[0];
        assert!(describe_vma(1, odd).unwrap_err().to_string().contains("pid 1: mapping 0x7f0000000000-0x7f0000004000"));
    }

    #[test]
    fn members_follow_the_order_of_all() {
        let all: Vec<Vma> = (0..5).map(|i| anonymous(i * 0x10000, libc::PROT_READ, true)).collect();
        let some = [&all[1], &all[2], &all[4]];
        assert_eq!(members(&all, &some).collect::<Vec<_>>(), vec![false, true, true, false, true]);
        assert_eq!(members(&all, &[]).collect::<Vec<_>>(), vec![false; 5]);
    }

    #[test]
    fn a_run_is_mapped_writable_unless_it_holds_a_guard() {
        let (r, rw, rx) = (libc::PROT_READ as u32, (libc::PROT_READ | libc::PROT_WRITE) as u32, (libc::PROT_READ | libc::PROT_EXEC) as u32);
        let rwx = rw | libc::PROT_EXEC as u32;
        // Read-only areas made so before their pages are in: mapped writable (charged), then
        // each mprotected; never mapped read-only, which would leave them uncharged.
        assert_eq!(run_protection(false, &[rw, r, rw, r]), rw);
        assert_eq!(run_protection(false, &[r, rx, r]), rw);
        assert_eq!(run_protection(false, &[rwx, r, rwx, rw]), rwx);
        assert_eq!(run_protection(true, &[rw, r]), libc::PROT_NONE as u32);
        let run: Vec<Vma> = [rw, r, r, rw].iter().enumerate().map(|(i, &p)| anonymous(i as u64 * 0x10000, p as i32, true)).collect();
        let prots: Vec<u32> = run.iter().map(|v| v.prot).collect();
        // The two read-only areas side by side take one call.
        let call = |start: u64, len: u64| (libc::SYS_mprotect, [start, len, r as u64, 0, 0, 0]);
        assert_eq!(protection_calls(&run, &prots, rw, &[false; 4]), vec![(call(0x10000, 0x20000), false)]);
        // Unless one of them waits for the fill and the other does not.
        assert_eq!(
            protection_calls(&run, &prots, rw, &[true, true, false, true]),
            vec![(call(0x10000, 0x10000), true), (call(0x20000, 0x10000), false)]
        );
    }

    #[test]
    fn shaping_calls_alternate_between_the_two_ends() {
        let calls: Vec<Call> = (0..5).map(|i| (libc::SYS_mprotect, [i, 1, 0, 0, 0, 0])).collect();
        let order: Vec<u64> = from_both_ends(calls).iter().map(|c| c.1[0]).collect();
        assert_eq!(order, vec![0, 4, 1, 3, 2]);
    }

    #[test]
    fn an_area_mapped_with_its_final_protection_is_not_given_it_again() {
        let ro = anonymous(0, libc::PROT_READ, true);
        assert_eq!(prot_while_filled(&ro, false), (libc::PROT_READ | libc::PROT_WRITE) as u32);
        assert_eq!(finish_calls(&ro, false), vec![(libc::SYS_mprotect, [0, 0x10000, libc::PROT_READ as u64, 0, 0, 0])]);
        assert_eq!(prot_while_filled(&ro, true), libc::PROT_READ as u32);
        assert_eq!(finish_calls(&ro, true), vec![]);
    }
}
