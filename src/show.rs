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
    // Each kind makes its records readable (buffered bytes as text where they are text...).
    if let Some(list) = open_files_json.get_mut("open_files").and_then(|l| l.as_array_mut()) {
        for (json, file) in list.iter_mut().zip(&open_files.open_files) {
            crate::kinds::files::show(file, json);
        }
    }
    Ok(json!({ "inventory": inventory, "processes": processes, "open_files": open_files_json }))
}
