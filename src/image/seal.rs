//! Image authentication: a restore runs as root with the uids, capabilities, paths and memory
//! an image names, so it must only believe images this host's crust wrote and nobody changed.
//!
//! The XXH3 checksums of the records protect against damage, not against someone who edits a
//! record and recomputes them. So the inventory also lists the BLAKE3 hash of every other
//! `.img` record file of the image (data files, such as page files, are listed with the BLAKE3
//! hash of each of their chunks, see image::chunks), and carries a seal: the BLAKE3 keyed hash (a MAC) of the whole
//! inventory, under a key only root can read on this host (`/var/lib/crust/image.key`, 32
//! random bytes, created at the first dump). Restore recomputes the seal and every hash before
//! it reads any record (and a data file's chunk hashes before it uses the chunk); an image without a seal, sealed on another host, or changed since, is
//! refused unless the user says `--trust-image`. `crust lease`, which edits an image on
//! purpose, seals it again. See docs/image-trust.md for the threat model.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use prost::Message;

use super::proto::{FileHash, Inventory};
use super::{INVENTORY, ImageDir};

const KEY_DIR: &str = "/var/lib/crust";
const KEY_PATH: &str = "/var/lib/crust/image.key";

/// The host's image key; created (0600, root) when `create` and there is none.
fn host_key(create: bool) -> Result<Option<[u8; 32]>> {
    match std::fs::read(KEY_PATH) {
        Ok(bytes) => {
            let key: [u8; 32] = bytes.try_into().map_err(|_| anyhow::anyhow!("{KEY_PATH} is not a 32-byte key"))?;
            return Ok(Some(key));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {KEY_PATH}")),
    }
    std::fs::create_dir_all(KEY_DIR).with_context(|| format!("creating {KEY_DIR}"))?;
    let mut key = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key)).context("reading /dev/urandom")?;
    // Written aside, then linked into place: two crusts starting at once agree on one key.
    let tmp = format!("{KEY_PATH}.{}", std::process::id());
    let mut f = File::options().write(true).create_new(true).mode(0o600).open(&tmp).with_context(|| format!("creating {tmp}"))?;
    f.write_all(&key)?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&tmp, KEY_PATH);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Some(key)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => host_key(false),
        Err(e) => Err(e).with_context(|| format!("creating {KEY_PATH}")),
    }
}

/// Every `.img` file of the image but the inventory, sorted by name.
fn image_files(dir: &ImageDir) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir.root())
        .with_context(|| format!("listing {}", dir.root().display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img") && n != INVENTORY)
        .collect();
    names.sort();
    Ok(names)
}

/// The data files the inventory lists with their chunk hashes (covered by the seal through
/// them, so not hashed a second time as whole files).
fn data_file_names(inventory: &Inventory) -> Vec<&str> {
    let per_process = inventory.processes.iter().flat_map(|p| p.data_files.iter());
    per_process.chain(inventory.data_files.iter()).filter(|d| !d.chunk_blake3.is_empty()).map(|d| d.name.as_str()).collect()
}

/// Above this size a record file is hashed in place (mapped, on every core) and not kept.
const KEPT_RECORD_BYTES: u64 = 16 << 20;

/// BLAKE3 of a file of the image (a plain file, not through a symlink), and its bytes if it
/// is small enough to keep for its decoding.
fn hash_file(path: &Path) -> Result<(blake3::Hash, Option<Vec<u8>>)> {
    use std::io::Read;
    let mut file = super::open_image_file(path, u64::MAX)?;
    let reading = || format!("reading image file {}", path.display());
    if file.metadata().with_context(reading)?.len() <= KEPT_RECORD_BYTES {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(reading)?;
        return Ok((blake3::hash(&bytes), Some(bytes)));
    }
    let map = crate::sys::region::MappedFile::open(&file).with_context(reading)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(map.as_slice());
    Ok((hasher.finalize(), None))
}

fn mac(key: &[u8; 32], inventory: &Inventory) -> blake3::Hash {
    let mut unsealed = inventory.clone();
    unsealed.seal.clear();
    blake3::keyed_hash(key, &unsealed.encode_to_vec())
}

/// Lists the hash of every other file of the image in `inventory` and seals it (the files
/// are complete: called right before the inventory is written).
pub fn seal(dir: &ImageDir, inventory: &mut Inventory) -> Result<()> {
    let key = host_key(true)?.context("no image key")?;
    let data_files: Vec<String> = data_file_names(inventory).into_iter().map(str::to_owned).collect();
    inventory.file_hashes = image_files(dir)?
        .into_iter()
        .filter(|name| !data_files.contains(name))
        .map(|name| Ok(FileHash { blake3: hash_file(&dir.path(&name))?.0.as_bytes().to_vec(), name }))
        .collect::<Result<_>>()?;
    inventory.seal = mac(&key, inventory).as_bytes().to_vec();
    Ok(())
}

/// Seals an image again after crust changed one of its files on purpose (`crust lease`).
pub fn reseal(dir: &ImageDir) -> Result<()> {
    let mut inventory: Inventory = dir.read_record(INVENTORY)?;
    seal(dir, &mut inventory)?;
    dir.write_record(INVENTORY, &inventory)?;
    Ok(())
}

/// Checks the seal and every record file's hash; fails naming what is wrong. Data files are
/// checked against their sealed chunk hashes by whoever reads them.
pub fn verify(dir: &ImageDir, inventory: &Inventory) -> Result<()> {
    if inventory.seal.is_empty() {
        bail!(
            "image file {INVENTORY}: field seal is empty: the image is not sealed (restore it with --trust-image if you trust where it comes from)"
        );
    }
    let Some(key) = host_key(false)? else {
        bail!(
            "image file {INVENTORY}: field seal: this host has no image key ({KEY_PATH}), so the image was sealed elsewhere (restore it with --trust-image if you trust where it comes from)"
        );
    };
    let expected: [u8; 32] =
        inventory.seal.as_slice().try_into().map_err(|_| anyhow::anyhow!("image file {INVENTORY}: field seal is not 32 bytes"))?;
    if mac(&key, inventory) != blake3::Hash::from(expected) {
        bail!(
            "image file {INVENTORY}: field seal does not match: the inventory was changed, or sealed on another host (restore it with --trust-image if you trust where it comes from)"
        );
    }
    let mut listed: Vec<&str> = inventory.file_hashes.iter().map(|h| h.name.as_str()).collect();
    // Data files are checked chunk by chunk against the sealed inventory when they are read.
    listed.extend(data_file_names(inventory));
    for name in image_files(dir)? {
        if !listed.contains(&name.as_str()) {
            bail!("image file {name}: it is not listed in the sealed inventory (field file_hashes)");
        }
    }
    for h in &inventory.file_hashes {
        let path = dir.path(&h.name);
        if h.name.contains('/') || !path.exists() {
            bail!("image file {}: listed in the sealed inventory but missing", h.name);
        }
        let (hash, bytes) = hash_file(&path)?;
        if hash.as_bytes().as_slice() != h.blake3.as_slice() {
            bail!(
                "image file {}: its BLAKE3 hash does not match the sealed inventory (field file_hashes): it was changed after the dump",
                h.name
            );
        }
        if let Some(bytes) = bytes {
            dir.keep_checked_bytes(&h.name, bytes);
        }
    }
    // A record not kept above is checked again on the very bytes it is decoded from (a file
    // renamed into the directory after this check would otherwise be read).
    dir.expect_sealed_hashes(inventory.file_hashes.iter().map(|h| (h.name.clone(), h.blake3.clone())).collect());
    Ok(())
}
