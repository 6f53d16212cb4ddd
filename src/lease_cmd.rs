//! `crust lease -D DIR`: lists the image's file leases and edits what restore does with a break
//! that was in progress (the policy is written into the image, checksums updated).

use std::path::Path;

use anyhow::{Context, Result};

use crate::image::proto::{OpenFiles, lease::TimeMethod, open_file};
use crate::image::{self, ImageDir};
use crate::kinds::leases::Policy;

/// One line per lease.
pub fn list(files: &OpenFiles) -> Vec<String> {
    let mut out = Vec::new();
    for f in &files.open_files {
        let Some(l) = &f.lease else { continue };
        let own = if l.write { "write" } else { "read" };
        let mut line = format!("pid {} fd {} {}: {own} lease", l.holder_pid, l.holder_fd, l.path);
        if l.breaking {
            let target = if l.break_to_unlock { "unlock" } else { "read (downgrade)" };
            let method = match l.remaining_method() {
                TimeMethod::Tracefs => "exact, from the kernel's deadline (tracefs)",
                TimeMethod::BreakerWait => "estimated from the breaker's wait",
                TimeMethod::AssumedFull => "unknown: the full lease-break-time is assumed",
                TimeMethod::Edited => "set by crust lease",
                TimeMethod::RestoredDeadline => "the deadline crust gave the kernel at an earlier restore",
                TimeMethod::Unknown => "unknown",
            };
            let breakers: Vec<String> = l.breakers.iter().map(|b| b.to_string()).collect();
            line += &format!(
                ", being broken to {target} (pre-break type found by {}); breakers: {}; {:.3} s left ({method}, \u{b1}{} ms){}{}",
                l.type_method,
                if breakers.is_empty() { "none waiting".to_string() } else { breakers.join(", ") },
                l.remaining_ms as f64 / 1000.0,
                l.remaining_precision_ms,
                if l.downgrade_remaining_ms != 0 {
                    format!("; downgraded to read in {:.3} s", l.downgrade_remaining_ms as f64 / 1000.0)
                } else {
                    String::new()
                },
                if l.no_break { "; restore will NOT restart the break" } else { "" }
            );
        }
        out.push(line);
    }
    if out.is_empty() {
        out.push("no leases in this image".into());
    }
    out
}

/// Lists the lease breaks of an image and, with a policy, edits them and seals the image again.
/// An image is edited only if its seal holds (or the user trusts it): sealing again whatever
/// the directory holds would bless any edit made to it since the dump.
pub fn run(dir: &Path, policy: Option<Policy>, trust_image: bool) -> Result<Vec<String>> {
    let dir = ImageDir::open(dir)?;
    if policy.is_some() && !trust_image {
        let inventory: image::proto::Inventory = dir.read_record(image::INVENTORY)?;
        image::seal::verify(&dir, &inventory)
            .context("crust lease edits and seals again only an image whose seal holds (--trust-image to edit it anyway)")?;
    }
    let mut files: OpenFiles = dir.read_record(image::OPEN_FILES)?;
    if let Some(policy) = policy {
        for f in &mut files.open_files {
            if let Some(open_file::Kind::Regular(_)) = &f.kind
                && let Some(lease) = f.lease.as_mut()
            {
                policy.apply(lease);
            }
        }
        dir.write_record(image::OPEN_FILES, &files)?;
        // The image changed on purpose, by this host's crust: sealed again.
        image::seal::reseal(&dir)?;
    }
    Ok(list(&files))
}
