//! `crust show`: the whole image as JSON. Page data is summarised (runs and sizes), not dumped.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::image::ImageDir;
use crate::image::proto::{Core, Files, Inventory, Mm};
use crate::image::{self};

pub fn show(dir: &Path) -> Result<serde_json::Value> {
    let dir = ImageDir::open(dir)?;
    let inventory: Inventory = dir.read_record(image::INVENTORY)?;
    let mut processes = Vec::new();
    for p in inventory.processes.iter().filter(|p| !p.zombie) {
        let core: Core = dir.read_record(&image::core_name(p.pid))?;
        let mm: Mm = dir.read_record(&image::mm_name(p.pid))?;
        let files: Files = dir.read_record(&image::files_name(p.pid))?;
        let mut mm_json = serde_json::to_value(&mm)?;
        // Replace the page runs of each VMA by a summary.
        if let Some(vmas) = mm_json.get_mut("vmas").and_then(|v| v.as_array_mut()) {
            for (vma_json, vma) in vmas.iter_mut().zip(&mm.vmas) {
                let pages: u64 = vma.pages.iter().map(|r| r.pages).sum();
                vma_json["pages"] = json!({ "runs": vma.pages.len(), "pages": pages });
            }
        }
        let mut core_json = serde_json::to_value(&core)?;
        if let Some(threads) = core_json.get_mut("threads").and_then(|t| t.as_array_mut()) {
            for t in threads {
                if let Some(x) = t.get("xsave").and_then(|x| x.as_array()) {
                    t["xsave"] = json!(format!("{} bytes", x.len()));
                }
            }
        }
        processes.push(json!({ "pid": p.pid, "core": core_json, "mm": mm_json, "files": files }));
    }
    let open_files: crate::image::proto::OpenFiles = dir.read_record(image::OPEN_FILES)?;
    let mut open_files_json = serde_json::to_value(&open_files)?;
    // Pipe buffers as text where they are text, else as a byte count.
    if let Some(list) = open_files_json.get_mut("open_files").and_then(|l| l.as_array_mut()) {
        for (json, file) in list.iter_mut().zip(&open_files.open_files) {
            if let Some(crate::image::proto::open_file::Kind::UnixSocket(u)) = &file.kind {
                crate::kinds::unix_socket::show(u, &mut json["kind"]["UnixSocket"]);
            }
            if let Some(crate::image::proto::open_file::Kind::Pipe(p)) = &file.kind {
                json["kind"]["Pipe"]["buffered"] = match std::str::from_utf8(&p.buffered) {
                    Ok(text) => json!(text),
                    Err(_) => json!(format!("{} bytes", p.buffered.len())),
                };
            }
            if let Some(crate::image::proto::open_file::Kind::Fifo(f)) = &file.kind {
                json["kind"]["Fifo"]["buffered"] = match std::str::from_utf8(&f.buffered) {
                    Ok(text) => json!(text),
                    Err(_) => json!(format!("{} bytes", f.buffered.len())),
                };
            }
        }
    }
    Ok(json!({ "inventory": inventory, "processes": processes, "open_files": open_files_json }))
}
