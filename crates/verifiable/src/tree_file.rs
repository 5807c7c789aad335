//! The tree file: the leaf hashes and entry index of a journal prefix, saved at shutdown so that the
//! next start hashes only the entries after it instead of the whole journal.
//!
//! ```text
//! header  := magic "PHMT" | version:u16 | reserved:u16 | journal_entries:u64 | journal_len_bytes:u64
//!            | journal_last_hash:[u8;32] | marks:u64 | content_hash:[u8;32]         (96 bytes)
//! content := level 0 | level 1 | … | level L | (timestamp_ns:u64 | offset:u64){marks}
//! level h := hash:[u8;32]{journal_entries >> h}        (h = 0: the leaf hashes; L = floor(log2 entries))
//! ```
//!
//! Written to `merkle.phm.tmp`, synced, renamed over `merkle.phm`, directory synced. On load the
//! content hash (BLAKE3) is checked, and the journal must still end, at `journal_len_bytes`, with
//! `journal_last_hash` (as for a snapshot), and the store then checks every stored checkpoint's root
//! against the loaded tree. Saving every level (about 64 bytes per entry) instead of only the leaves
//! spares the start-up one SHA-256 per entry. A file that does not fit is ignored in favour of a full
//! scan.

use std::io::Write;
use std::path::Path;

use puhui_journal::JournalPosition;
use puhui_merkle::MerkleTree;

use crate::journal_tree::EntryIndex;
use crate::{io_error, Error, Hash};

/// File name of the tree file inside a data directory.
pub const TREE_FILE: &str = "merkle.phm";
const MAGIC: &[u8; 4] = b"PHMT";
/// Version 2: the leaf hashes are over the journal's BLAKE3 entry hashes (version 1 files, of the
/// older leaf format, are ignored and the tree is rebuilt from the journal).
const VERSION: u16 = 2;
const HEADER_BYTES: usize = 96;

/// Writes the tree file for the journal prefix at `position` (whose entries are the tree's leaves).
pub fn write_tree_file(
    dir: &Path,
    position: &JournalPosition,
    tree: &MerkleTree,
    index: &EntryIndex,
) -> Result<(), Error> {
    if tree.size() != position.entries {
        return Err(Error::Format(format!(
            "tree of {} leaves for a journal position of {} entries",
            tree.size(),
            position.entries
        )));
    }
    let marks = index.marks();
    let mut hasher = blake3::Hasher::new();
    for h in 0..tree.levels_count() {
        for node in tree.level(h) {
            hasher.update(node);
        }
    }
    let mut mark_bytes = Vec::with_capacity(marks.len() * 16);
    for (ts, offset) in &marks {
        mark_bytes.extend_from_slice(&ts.to_le_bytes());
        mark_bytes.extend_from_slice(&offset.to_le_bytes());
    }
    hasher.update(&mark_bytes);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&position.entries.to_le_bytes());
    header.extend_from_slice(&position.len_bytes.to_le_bytes());
    header.extend_from_slice(&position.last_hash);
    header.extend_from_slice(&(marks.len() as u64).to_le_bytes());
    header.extend_from_slice(hasher.finalize().as_bytes());
    debug_assert_eq!(header.len(), HEADER_BYTES);

    let tmp = dir.join(format!("{TREE_FILE}.tmp"));
    let io = |what: &str, e| io_error(format!("{what} {}", tmp.display()), e);
    let file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
    w.write_all(&header).map_err(|e| io("writing", e))?;
    for h in 0..tree.levels_count() {
        for node in tree.level(h) {
            w.write_all(node).map_err(|e| io("writing", e))?;
        }
    }
    w.write_all(&mark_bytes).map_err(|e| io("writing", e))?;
    let file = w.into_inner().map_err(|e| io("writing", e.into_error()))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    drop(file);
    std::fs::rename(&tmp, dir.join(TREE_FILE)).map_err(|e| io("renaming", e))?;
    puhui_journal::frame::sync_dir(dir).map_err(|e| io_error(format!("syncing {}", dir.display()), e))
}

/// Reads and checks the tree file: `Ok(None)` if there is none.
pub fn read_tree_file(dir: &Path) -> Result<Option<(JournalPosition, MerkleTree, EntryIndex)>, Error> {
    let path = dir.join(TREE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("reading {}", path.display()), e)),
    };
    let bad = |why: &str| Error::Format(format!("{}: {why}", path.display()));
    if bytes.len() < HEADER_BYTES || &bytes[..4] != MAGIC {
        return Err(bad("not a tree file"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION {
        return Err(bad("unsupported version"));
    }
    let position = JournalPosition {
        entries: u64_at(8),
        len_bytes: u64_at(16),
        last_hash: bytes[24..56].try_into().expect("32 bytes"),
    };
    let marks = u64_at(56);
    let content: [u8; 32] = bytes[64..96].try_into().expect("32 bytes");
    let levels_count = (64 - position.entries.leading_zeros()) as usize;
    let hashes: u64 = (0..levels_count).map(|h| position.entries >> h).sum();
    let expected_len = hashes
        .checked_mul(32)
        .and_then(|l| l.checked_add(marks.checked_mul(16)?))
        .and_then(|l| l.checked_add(HEADER_BYTES as u64));
    if expected_len != Some(bytes.len() as u64) {
        return Err(bad("length does not match its header"));
    }
    if *blake3::hash(&bytes[HEADER_BYTES..]).as_bytes() != content {
        return Err(bad("content hash mismatch"));
    }
    let mut at = HEADER_BYTES;
    let mut levels = Vec::with_capacity(levels_count);
    for h in 0..levels_count {
        let len = (position.entries >> h) as usize;
        let level: Vec<Hash> = bytes[at..at + 32 * len]
            .chunks_exact(32)
            .map(|node| node.try_into().expect("32 bytes"))
            .collect();
        at += 32 * len;
        levels.push(level);
    }
    let tree = MerkleTree::from_levels(levels).map_err(|e| bad(&e.to_string()))?;
    let marks: Vec<(u64, u64)> = bytes[at..]
        .chunks_exact(16)
        .map(|m| {
            (
                u64::from_le_bytes(m[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(m[8..].try_into().expect("8 bytes")),
            )
        })
        .collect();
    let index =
        EntryIndex::from_marks(position.entries, marks).ok_or_else(|| bad("index does not fit the tree"))?;
    Ok(Some((position, tree, index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_tree_file(dir.path()).unwrap().is_none());
        for n in [0u64, 1, 5, 64, 65, 300] {
            let mut tree = MerkleTree::new();
            let mut index = EntryIndex::new();
            for i in 0..n {
                tree.append(puhui_merkle::leaf_hash(&i.to_le_bytes()));
                index.note(i, 10 * i, 100 + i);
            }
            let position = JournalPosition { entries: n, len_bytes: 7 * n, last_hash: [n as u8; 32] };
            write_tree_file(dir.path(), &position, &tree, &index).unwrap();
            let (p, t, i) = read_tree_file(dir.path()).unwrap().unwrap();
            assert_eq!((p, &t, &i), (position, &tree, &index), "n={n}");
            assert_eq!(t.root(), tree.root());
        }
        let path = dir.path().join(TREE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_tree_file(dir.path()), Err(Error::Format(_))));
        bytes.truncate(50);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_tree_file(dir.path()), Err(Error::Format(_))));
        let wrong = JournalPosition { entries: 3, len_bytes: 0, last_hash: [0; 32] };
        assert!(write_tree_file(dir.path(), &wrong, &MerkleTree::new(), &EntryIndex::new()).is_err());
    }
}
