//! Snapshot files: a ledger snapshot and the journal position it corresponds to.
//!
//! ```text
//! header  := magic "PHSF" | version:u16 | reserved:u16 | journal_entries:u64 | journal_len_bytes:u64
//!            | journal_last_hash:[u8;32] | content_bytes:u64 | hash:[u8;32]   (96 bytes)
//! hash    := BLAKE3(the header's first 64 bytes | content)
//! content := the ledger's own snapshot encoding
//! ```
//!
//! Written to `snapshot.phs.tmp`, synced, renamed over `snapshot.phs` and the directory synced, so a
//! crash leaves either the old or the new snapshot, never half of one. The content hash is checked on
//! load; a bad snapshot is ignored in favour of a full journal replay.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::frame::{sync_dir, JournalPosition};

/// File name of the snapshot inside a data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.phs";
const MAGIC: &[u8; 4] = b"PHSF";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 96;

/// Writes a snapshot atomically into `dir`. `content` is the ledger's encoding, in chunks.
pub fn write_snapshot(dir: &Path, position: &JournalPosition, content: &[Vec<u8>]) -> io::Result<PathBuf> {
    write_snapshot_file(dir, SNAPSHOT_FILE, position, content)
}

/// [`write_snapshot`] to the file `name` in `dir`: the same format for another owner's state at a
/// journal position (risk control's features and decision memory).
pub fn write_snapshot_file(
    dir: &Path,
    name: &str,
    position: &JournalPosition,
    content: &[Vec<u8>],
) -> io::Result<PathBuf> {
    write_snapshot_file_paced(dir, name, position, content, None)
}

/// Bytes a paced snapshot writes before it waits for them to reach the disk.
pub const PACED_CHUNK_BYTES: usize = 4 << 20;

/// [`write_snapshot_file`] for a writer beside a live journal: with `pause`, it writes
/// [`PACED_CHUNK_BYTES`] at a time, waits for each chunk to reach the disk (`sync_file_range`) and
/// then for `pause`, so that the journal's own `fdatasync`s queue behind one chunk, not behind
/// the whole file's dirty pages flushed at once by the final sync.
pub fn write_snapshot_file_paced(
    dir: &Path,
    name: &str,
    position: &JournalPosition,
    content: &[Vec<u8>],
    pause: Option<std::time::Duration>,
) -> io::Result<PathBuf> {
    let content_bytes: u64 = content.iter().map(|c| c.len() as u64).sum();
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&position.entries.to_le_bytes());
    header.extend_from_slice(&position.len_bytes.to_le_bytes());
    header.extend_from_slice(&position.last_hash);
    header.extend_from_slice(&content_bytes.to_le_bytes());
    // The hash covers the header's fields too: a flipped journal position must not be trusted.
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header);
    for chunk in content {
        hasher.update(chunk);
    }
    header.extend_from_slice(hasher.finalize().as_bytes());
    assert_eq!(header.len(), HEADER_BYTES);

    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let file = match pause {
        None => {
            let mut file = io::BufWriter::with_capacity(8 << 20, File::create(&tmp)?);
            file.write_all(&header)?;
            for chunk in content {
                file.write_all(chunk)?;
            }
            file.into_inner().map_err(|e| e.into_error())?
        }
        Some(pause) => {
            let mut file = File::create(&tmp)?;
            file.write_all(&header)?;
            let mut written = HEADER_BYTES as u64;
            for piece in content.iter().flat_map(|c| c.chunks(PACED_CHUNK_BYTES)) {
                file.write_all(piece)?;
                sync_range(&file, written, piece.len() as u64)?;
                written += piece.len() as u64;
                std::thread::sleep(pause);
            }
            file
        }
    };
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &target)?;
    sync_dir(dir)?;
    Ok(target)
}

/// Reads and checks a snapshot file. Returns the journal position and the ledger content bytes;
/// `Ok(None)` if there is no snapshot.
pub fn read_snapshot(dir: &Path) -> Result<Option<(JournalPosition, Vec<u8>)>, String> {
    read_snapshot_file(dir, SNAPSHOT_FILE)
}

/// [`read_snapshot`] of the file `name` in `dir`.
pub fn read_snapshot_file(dir: &Path, name: &str) -> Result<Option<(JournalPosition, Vec<u8>)>, String> {
    let path = dir.join(name);
    let mut bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    if bytes.len() < HEADER_BYTES || &bytes[..4] != MAGIC {
        return Err(format!("{} is not a snapshot", path.display()));
    }
    let version = u16::from_le_bytes(bytes[4..6].try_into().unwrap());
    if version != VERSION {
        return Err(format!("snapshot version {version} is not supported"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let position = JournalPosition {
        entries: u64_at(8),
        len_bytes: u64_at(16),
        last_hash: bytes[24..56].try_into().unwrap(),
    };
    let content_bytes = u64_at(56);
    let content_hash: [u8; 32] = bytes[64..96].try_into().unwrap();
    if content_bytes != (bytes.len() - HEADER_BYTES) as u64 {
        return Err(format!(
            "snapshot is {} bytes, its header says {content_bytes}",
            bytes.len() - HEADER_BYTES
        ));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&bytes[..64]);
    hasher.update(&bytes[HEADER_BYTES..]);
    if *hasher.finalize().as_bytes() != content_hash {
        return Err("snapshot content hash mismatch".into());
    }
    bytes.drain(..HEADER_BYTES);
    Ok(Some((position, bytes)))
}

/// Writes `len` bytes of `file` from `offset` to the disk and waits for them (Linux
/// `sync_file_range`; elsewhere nothing: the final `sync_all` covers it).
#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is open for the call's duration; the call reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_range(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}
