//! Open namespace files (/proc/PID/ns/X; the link reads "net:[4026531840]") of the namespaces
//! the tree lives in: their type and inode.
//!
//! The tree is restored in the namespaces crust runs in, which must be the dumped ones: restore
//! checks that crust's /proc/self/ns/X is the recorded namespace before creating anything, and
//! has the process open its own /proc/self/ns/X, checked again to be that namespace. Refused
//! by name at dump: a namespace file of another namespace than the holder's own of that type.

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::common::reopen_flags;
use super::{Dumped, FdKind, FdSource, KindState, Together};
use crate::image::proto::{NamespaceFile, OpenFile, open_file};
use crate::kinds::RestoreCtx;

pub struct NamespaceFiles;

/// The namespace types of /proc/PID/ns (the link text starts with the type).
const TYPES: &[&str] = &["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

impl FdKind for NamespaceFiles {
    type Record = NamespaceFile;
    const NAME: &'static str = "namespace file";
    // Restored only as a holder's description: one held only in flight is refused.
    const IN_FLIGHT: bool = false;

    fn record_of(kind: &open_file::Kind) -> Option<&NamespaceFile> {
        match kind {
            open_file::Kind::NamespaceFile(r) => Some(r),
            _ => None,
        }
    }

    fn into_kind(record: NamespaceFile) -> open_file::Kind {
        open_file::Kind::NamespaceFile(record)
    }

    fn recognises(src: &FdSource) -> bool {
        parse_link(src.link).is_some()
    }

    fn refuse_early(src: &FdSource) -> Result<()> {
        dump(src).map(drop)
    }

    fn dump(src: &FdSource, _state: &mut KindState) -> Result<Dumped<NamespaceFile>> {
        dump(src).map(Dumped::alone)
    }

    fn precheck(_file: &OpenFile, record: &NamespaceFile) -> Result<()> {
        if !TYPES.contains(&record.kind.as_str()) {
            bail!("a namespace file of the unknown type {:?}", record.kind);
        }
        let ours = own_namespace("self", &record.kind)?;
        if ours != record.inode {
            bail!(
                "a namespace file of {}:[{}]: crust runs in {}:[{ours}], and restores the tree in the namespaces it runs in",
                record.kind,
                record.inode,
                record.kind
            );
        }
        Ok(())
    }

    fn open(ctx: &mut RestoreCtx, file: &OpenFile, record: &NamespaceFile, _together: &mut Together) -> Result<i32> {
        if !TYPES.contains(&record.kind.as_str()) {
            bail!("a namespace file of the unknown type {:?}", record.kind);
        }
        let fd = ctx.open_in_process(&format!("/proc/self/ns/{}", record.kind), reopen_flags(file))?;
        let opened = std::fs::metadata(format!("/proc/{}/fd/{fd}", ctx.pid)).map(|m| m.ino()).unwrap_or(0);
        if opened != record.inode {
            ctx.close_in_process(fd)?;
            bail!("the process's own {} namespace is [{opened}], not [{}]", record.kind, record.inode);
        }
        Ok(fd)
    }

    fn describe(record: &NamespaceFile) -> String {
        format!("{}:[{}]", record.kind, record.inode)
    }
}

/// ("net", 4026531840) of a link "net:[4026531840]".
fn parse_link(link: &str) -> Option<(&str, u64)> {
    let (kind, rest) = link.split_once(":[")?;
    let inode = rest.strip_suffix(']')?.parse().ok()?;
    TYPES.contains(&kind).then_some((kind, inode))
}

/// The inode of the namespace of type `kind` that `pid` ("self" or a number) lives in.
fn own_namespace(pid: &str, kind: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/ns/{kind}");
    Ok(std::fs::metadata(&path).with_context(|| format!("stat {path}"))?.ino())
}

fn dump(src: &FdSource) -> Result<NamespaceFile> {
    let Some((kind, inode)) = parse_link(src.link) else {
        return Err(src.refuse("an unknown namespace file"));
    };
    if src.meta.ino() != inode {
        return Err(src.refuse("a namespace file whose inode is not its link's"));
    }
    // pid and time namespaces: a process may have entered another for its children only.
    let own = own_namespace(&src.pid.to_string(), kind)?;
    if own != inode {
        return Err(src.refuse(&format!("a namespace file of another {kind} namespace than the process's own ({kind}:[{own}])")));
    }
    Ok(NamespaceFile { kind: kind.to_owned(), inode })
}
