//! Hashes of raw data files (page files, memfd and ghost contents), chunk by chunk.
//!
//! A data file is hashed in chunks of [`CHUNK`] bytes with BLAKE3; the hashes are listed in
//! its `DataFile` record in the inventory, which the seal covers. Chunks are independent, so
//! a file can be hashed on every core, while it is being written (as each chunk is complete),
//! and a reader can check one chunk before it uses it, without reading the rest.

use std::path::Path;

use super::ImageError;
use super::proto::DataFile;

/// Bytes per hashed chunk: small enough that checking the chunk of one page costs well under a
/// millisecond, large enough that the list stays small (32 bytes per MiB).
pub const CHUNK: usize = 1 << 20;

/// Largest chunk size a reader accepts from an image (a record from elsewhere may be edited).
const MAX_CHUNK: u64 = 256 << 20;

/// BLAKE3 of one chunk.
pub fn hash(bytes: &[u8]) -> Vec<u8> {
    blake3::hash(bytes).as_bytes().to_vec()
}

/// The hashes of every chunk of `data`, computed on every core.
pub fn hash_all(data: &[u8]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let mut out = vec![Vec::new(); chunks.len()];
    let workers = crate::sys::sched::cpus_for_work().clamp(1, chunks.len().max(1));
    let per = chunks.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        for (slots, work) in out.chunks_mut(per).zip(chunks.chunks(per)) {
            scope.spawn(move || {
                crate::sys::sched::spread_this_thread(false);
                for (slot, chunk) in slots.iter_mut().zip(work) {
                    *slot = hash(chunk);
                }
            });
        }
    });
    out
}

/// The record of a data file whose bytes are `data`.
pub fn record(name: &str, data: &[u8]) -> DataFile {
    DataFile {
        name: name.to_owned(),
        size: data.len() as u64,
        chunk_size: CHUNK as u64,
        chunk_blake3: hash_all(data),
        ..Default::default()
    }
}

/// Checks that the record's chunk list is usable for a file of `size` bytes: a sane chunk
/// size and one hash per chunk.
pub fn check_layout(path: &Path, expected: &DataFile, size: u64) -> Result<(), ImageError> {
    let bad = |detail: String| ImageError::Truncated { path: path.to_owned(), detail };
    let chunk = expected.chunk_size;
    if chunk == 0 || chunk > MAX_CHUNK || !chunk.is_multiple_of(4096) {
        return Err(bad(format!("the inventory's field chunk_size is {chunk}")));
    }
    if expected.chunk_blake3.len() as u64 != size.div_ceil(chunk) {
        return Err(bad(format!(
            "the inventory's field chunk_blake3 lists {} hashes for {size} bytes in chunks of {chunk}",
            expected.chunk_blake3.len()
        )));
    }
    Ok(())
}

/// Checks chunk `index` of a data file against its record (its layout already checked).
pub fn verify_chunk(path: &Path, expected: &DataFile, index: usize, bytes: &[u8]) -> Result<(), ImageError> {
    let Some(want) = expected.chunk_blake3.get(index) else {
        return Err(ImageError::Truncated {
            path: path.to_owned(),
            detail: format!("chunk {index} is past the {} the inventory's field chunk_blake3 lists", expected.chunk_blake3.len()),
        });
    };
    if hash(bytes).as_slice() != want.as_slice() {
        let start = index as u64 * expected.chunk_size;
        return Err(ImageError::ChunkHash { path: path.to_owned(), detail: format!("bytes {start}..{}", start + bytes.len() as u64) });
    }
    Ok(())
}

/// Checks the chunks `indices` of `file` (the image's file at `path`, its layout already
/// checked), reading each into memory.
pub fn verify_some(file: &std::fs::File, path: &Path, expected: &DataFile, indices: &[usize]) -> Result<(), ImageError> {
    use std::os::unix::fs::FileExt;
    let io = |source| ImageError::Io { path: path.to_owned(), source };
    let mut buf = Vec::new();
    for &index in indices {
        let start = index as u64 * expected.chunk_size;
        let len = expected.chunk_size.min(expected.size.saturating_sub(start)) as usize;
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, start).map_err(io)?;
        verify_chunk(path, expected, index, &buf)?;
    }
    Ok(())
}

/// Checks every chunk of `data`, on every core; the first damaged chunk is reported.
pub fn verify_all(path: &Path, expected: &DataFile, data: &[u8]) -> Result<(), ImageError> {
    check_layout(path, expected, data.len() as u64)?;
    let found = {
        let chunk = expected.chunk_size as usize;
        if chunk == CHUNK { hash_all(data) } else { data.chunks(chunk).map(hash).collect() }
    };
    for (index, (want, got)) in expected.chunk_blake3.iter().zip(&found).enumerate() {
        if want != got {
            let start = index as u64 * expected.chunk_size;
            let end = (start + expected.chunk_size).min(data.len() as u64);
            return Err(ImageError::ChunkHash { path: path.to_owned(), detail: format!("bytes {start}..{end}") });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_is_found_in_its_chunk() {
        let mut data = vec![7u8; CHUNK * 2 + 100];
        let rec = record("pages-1.img", &data);
        assert_eq!(rec.chunk_blake3.len(), 3);
        let path = Path::new("pages-1.img");
        verify_all(path, &rec, &data).unwrap();
        data[CHUNK + 5] ^= 1;
        let err = verify_all(path, &rec, &data).unwrap_err().to_string();
        assert!(err.contains(&format!("bytes {}..{}", CHUNK, 2 * CHUNK)), "{err}");
        assert!(verify_chunk(path, &rec, 1, &data[CHUNK..2 * CHUNK]).is_err());
        verify_chunk(path, &rec, 2, &data[2 * CHUNK..]).unwrap();
    }

    #[test]
    fn forged_layouts_are_refused() {
        let data = vec![1u8; 10_000];
        let path = Path::new("x");
        let mut rec = record("x", &data);
        rec.chunk_blake3.pop();
        assert!(verify_all(path, &rec, &data).unwrap_err().to_string().contains("chunk_blake3"));
        let mut rec = record("x", &data);
        rec.chunk_size = 0;
        assert!(verify_all(path, &rec, &data).unwrap_err().to_string().contains("chunk_size"));
    }
}
