//! The journal side: the Merkle tree of a journal, a sparse index to find entries on disk, and
//! [`TransparencyLog`], the in-memory state a node answers checkpoints and proofs from.
//!
//! Memory: the tree keeps about 64 bytes per entry (see [`puhui_merkle`]); the index one 16-byte mark
//! per [`INDEX_EVERY`] entries (0.25 byte per entry). Finding an entry's leaf reads at most
//! 2 × [`INDEX_EVERY`] entries from the journal file (page cache; from the mark before the one
//! covering it, since the leaf starts with the previous entry's hash), so a transfer's proof needs
//! no per-transfer index: its ledger timestamp (strictly increasing along the journal) finds the
//! mark to start from.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use puhui_journal::frame::{
    EntryRef, ENTRY_BODY_BYTES_MAX, ENTRY_OVERHEAD_BYTES, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use puhui_journal::{codec, JournalPosition, ScanError, ScanSummary};
use puhui_merkle::MerkleTree;

use crate::checkpoint::Checkpoint;
use crate::proof::{ConsistencyProof, InclusionProof};
use crate::{body_timestamp, entry_leaf_hash, hex, leaf_bytes, leaf_hash_of_leaf, Error};

/// One index mark every this many entries.
pub const INDEX_EVERY: u64 = 64;

/// Bytes read ahead when walking entries on disk.
const READ_AHEAD_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    timestamp_ns: u64,
    offset: u64,
}

/// A sparse index of the journal: the file offset and ledger timestamp of every
/// [`INDEX_EVERY`]-th entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryIndex {
    marks: Vec<Mark>,
}

impl EntryIndex {
    /// An empty index.
    pub fn new() -> EntryIndex {
        EntryIndex::default()
    }

    /// Notes entry `seq` (at file `offset`, with ledger timestamp `timestamp_ns`); only every
    /// [`INDEX_EVERY`]-th entry is kept. Entries must be noted in order.
    pub fn note(&mut self, seq: u64, timestamp_ns: u64, offset: u64) {
        if seq.is_multiple_of(INDEX_EVERY) && seq / INDEX_EVERY == self.marks.len() as u64 {
            self.marks.push(Mark { timestamp_ns, offset });
        }
    }

    /// Where to start reading to reach entry `seq`: `(first seq, file offset)`.
    pub fn start_for_seq(&self, seq: u64) -> Option<(u64, u64)> {
        let k = usize::try_from(seq / INDEX_EVERY).ok()?;
        self.marks.get(k).map(|m| (k as u64 * INDEX_EVERY, m.offset))
    }

    /// Where to start reading to reach the first entry with timestamp `timestamp_ns`.
    pub fn start_for_timestamp(&self, timestamp_ns: u64) -> Option<(u64, u64)> {
        let k = self.marks.partition_point(|m| m.timestamp_ns < timestamp_ns).saturating_sub(1);
        self.marks.get(k).map(|m| (k as u64 * INDEX_EVERY, m.offset))
    }

    /// Where to start reading to learn the hash of the entry before `seq` (entry `seq`'s leaf
    /// starts with it): the mark at or before entry `seq - 1`, or entry 0 (whose previous hash is
    /// the genesis hash). `(first seq, file offset)`.
    pub fn start_before_seq(&self, seq: u64) -> Option<(u64, u64)> {
        self.start_for_seq(seq.saturating_sub(1))
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.marks.capacity() * std::mem::size_of::<Mark>()
    }

    /// The marks as `(timestamp_ns, offset)` pairs, for the tree file.
    pub fn marks(&self) -> Vec<(u64, u64)> {
        self.marks.iter().map(|m| (m.timestamp_ns, m.offset)).collect()
    }

    /// The index of a journal of `entries` entries from its marks; `None` if the number of marks
    /// does not fit (one per [`INDEX_EVERY`] entries, rounded up).
    pub fn from_marks(entries: u64, marks: Vec<(u64, u64)>) -> Option<EntryIndex> {
        if marks.len() as u64 != entries.div_ceil(INDEX_EVERY) {
            return None;
        }
        Some(EntryIndex {
            marks: marks.into_iter().map(|(timestamp_ns, offset)| Mark { timestamp_ns, offset }).collect(),
        })
    }
}

/// Positional reads through a small buffer (no seek: safe to share a `File` between threads).
struct PosReader<'a> {
    file: &'a File,
    start: u64,
    buf: Vec<u8>,
}

impl PosReader<'_> {
    fn get(&mut self, at: u64, n: usize) -> Result<&[u8], Error> {
        let end = at + n as u64;
        if at < self.start || end > self.start + self.buf.len() as u64 {
            if at < self.start || at > self.start + self.buf.len() as u64 {
                self.buf.clear();
            } else {
                self.buf.drain(..(at - self.start) as usize);
            }
            self.start = at;
            let have = self.buf.len();
            self.buf.resize(n.max(READ_AHEAD_BYTES), 0);
            let mut got = have;
            while got < self.buf.len() {
                match self.file.read_at(&mut self.buf[got..], at + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(crate::io_error("reading the journal", e)),
                }
            }
            self.buf.truncate(got);
            if got < n {
                return Err(Error::Journal(format!("the journal ends inside the entry at byte {at}")));
            }
        }
        let s = (at - self.start) as usize;
        Ok(&self.buf[s..s + n])
    }
}

/// Walks journal entries on disk from `offset` (the start of entry `seq`, or of the frame header
/// before it), calling `visit(seq, kind, body, entry_hash)` until it returns `false` or entry
/// `end_seq` is reached (`entry_hash`: the chained hash stored after the entry). Checks sequence numbers and lengths, not hashes (callers compare leaf hashes with the
/// tree, which was built from a hash-checked scan).
pub fn walk_entries(
    file: &File,
    mut offset: u64,
    mut seq: u64,
    end_seq: u64,
    mut visit: impl FnMut(u64, u8, &[u8], &[u8; 32]) -> bool,
) -> Result<(), Error> {
    let mut r = PosReader { file, start: offset, buf: Vec::new() };
    while seq < end_seq {
        let first = u32::from_le_bytes(r.get(offset, 4)?.try_into().expect("4 bytes"));
        if first == FRAME_MAGIC {
            offset += FRAME_HEADER_BYTES as u64;
            continue;
        }
        let body_len = first as usize;
        if body_len > ENTRY_BODY_BYTES_MAX {
            return Err(Error::Journal(format!("implausible entry length {body_len} at byte {offset}")));
        }
        let entry = r.get(offset, ENTRY_OVERHEAD_BYTES + body_len)?;
        let found = u64::from_le_bytes(entry[4..12].try_into().expect("8 bytes"));
        if found != seq {
            return Err(Error::Journal(format!(
                "found entry {found} at byte {offset} where entry {seq} belongs"
            )));
        }
        let hash: &[u8; 32] = entry[13 + body_len..].try_into().expect("32 bytes");
        if !visit(seq, entry[12], &entry[13..13 + body_len], hash) {
            return Ok(());
        }
        offset += (ENTRY_OVERHEAD_BYTES + body_len) as u64;
        seq += 1;
    }
    Ok(())
}

/// A journal's Merkle tree and entry index, built by a hash-checked scan.
pub struct JournalTree {
    /// The tree of every whole entry.
    pub tree: MerkleTree,
    /// The sparse entry index.
    pub index: EntryIndex,
    /// What the scan found (entries, torn tail, …).
    pub summary: ScanSummary,
}

impl JournalTree {
    /// Scans the journal at `path` (checking frames and the hash chain, as recovery does) and builds
    /// its tree and index. `on_entry` sees every entry too (e.g. to find a transfer).
    pub fn build(
        path: &Path,
        on_entry: impl FnMut(&EntryRef<'_>) -> Result<(), String>,
    ) -> Result<JournalTree, Error> {
        JournalTree::build_from(path, None, on_entry)
    }

    /// Like [`JournalTree::build`], but continues from the tree and index of the journal prefix at
    /// `start` (from the tree file): only the entries after it are read and hashed. The journal must
    /// still end at `start` with its hash (else [`Error::Journal`]).
    pub fn build_from(
        path: &Path,
        start: Option<(JournalPosition, MerkleTree, EntryIndex)>,
        mut on_entry: impl FnMut(&EntryRef<'_>) -> Result<(), String>,
    ) -> Result<JournalTree, Error> {
        let (position, mut tree, mut index) =
            start.unwrap_or_else(|| (JournalPosition::start(), MerkleTree::new(), EntryIndex::new()));
        if tree.size() != position.entries {
            return Err(Error::Format("the tree does not fit its journal position".into()));
        }
        let summary = puhui_journal::scan_from(path, position, |e| {
            tree.append(entry_leaf_hash(e.hash));
            index.note(e.seq, body_timestamp(e.body).unwrap_or(0), e.offset);
            on_entry(&e)
        })
        .map_err(|e| match e {
            ScanError::Io(e) => Error::Io(e),
            other => Error::Journal(other.to_string()),
        })?;
        Ok(JournalTree { tree, index, summary })
    }
}

/// The verifiable journal's in-memory state: tree, entry index and checkpoints, kept consistent
/// (every checkpoint's root is the tree's root at its size).
pub struct TransparencyLog {
    tree: MerkleTree,
    index: EntryIndex,
    checkpoints: Vec<Checkpoint>,
}

impl TransparencyLog {
    /// The state of a journal with these checkpoints. Fails with [`Error::Mismatch`] if a checkpoint
    /// is beyond the tree or its root is not the tree's root at its size (the journal was rewritten
    /// or truncated since it was signed).
    pub fn new(tree: MerkleTree, index: EntryIndex, checkpoints: Vec<Checkpoint>) -> Result<Self, Error> {
        for c in &checkpoints {
            check_against_tree(c, &tree, "stored")?;
        }
        Ok(TransparencyLog { tree, index, checkpoints })
    }

    /// Reserves and touches the tree's memory for `additional` more entries (see
    /// [`MerkleTree::reserve_touched`]): appending them then takes no page fault.
    pub fn reserve_touched(&mut self, additional: u64) {
        self.tree.reserve_touched(additional);
    }

    /// Entries in the tree.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The tree.
    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// The entry index.
    pub fn index(&self) -> &EntryIndex {
        &self.index
    }

    /// Appends the leaf hash of entry `size()` and notes it in the index.
    pub fn append(&mut self, leaf_hash: crate::Hash, timestamp_ns: u64, offset: u64) {
        let seq = self.tree.append(leaf_hash);
        self.index.note(seq, timestamp_ns, offset);
    }

    /// Appends entries in order, as [`JournalTree::append`] of each (the tree's node hashes two at
    /// a time): `(leaf hash, timestamp_ns, offset)` per entry.
    pub fn append_batch(&mut self, leaf_hashes: &[crate::Hash], notes: impl Iterator<Item = (u64, u64)>) {
        let first = self.tree.size();
        self.tree.append_batch(leaf_hashes);
        let mut noted = 0;
        for (timestamp_ns, offset) in notes {
            self.index.note(first + noted, timestamp_ns, offset);
            noted += 1;
        }
        assert_eq!(noted, leaf_hashes.len() as u64, "one note per leaf");
    }

    /// Adds a checkpoint made of the current tree (its size must exceed the last one's).
    pub fn push_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), Error> {
        if self.checkpoints.last().is_some_and(|l| l.size >= checkpoint.size) {
            return Err(Error::Format(format!("checkpoint size {} does not grow", checkpoint.size)));
        }
        check_against_tree(&checkpoint, &self.tree, "new")?;
        self.checkpoints.push(checkpoint);
        Ok(())
    }

    /// The latest checkpoint.
    pub fn latest_checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoints.last()
    }

    /// The checkpoint of tree size `size`.
    pub fn checkpoint(&self, size: u64) -> Result<&Checkpoint, Error> {
        self.checkpoints
            .binary_search_by_key(&size, |c| c.size)
            .map(|i| &self.checkpoints[i])
            .map_err(|_| Error::CheckpointNotFound { size })
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// Heap bytes of the tree, index and checkpoints.
    pub fn heap_bytes(&self) -> usize {
        self.tree.heap_bytes()
            + self.index.heap_bytes()
            + self.checkpoints.capacity() * (std::mem::size_of::<Checkpoint>() + 16)
    }

    /// The checkpoint a proof is asked against: `size`, or the latest.
    fn target(&self, checkpoint_size: Option<u64>) -> Result<&Checkpoint, Error> {
        match checkpoint_size {
            Some(size) => self.checkpoint(size),
            None => self.latest_checkpoint().ok_or(Error::NoCheckpoint),
        }
    }

    /// Reads entry `seq`'s leaf data from the journal file (starting one entry earlier, for the
    /// previous entry's hash).
    pub fn read_leaf(&self, journal: &File, seq: u64) -> Result<Vec<u8>, Error> {
        if seq >= self.size() {
            return Err(Error::EntryNotFound { seq });
        }
        let (start, offset) = self.index.start_before_seq(seq).ok_or(Error::EntryNotFound { seq })?;
        let mut previous = puhui_journal::frame::genesis_hash();
        let mut leaf = None;
        walk_entries(journal, offset, start, seq + 1, |s, kind, body, hash| {
            if s == seq {
                leaf = Some(leaf_bytes(&previous, s, kind, body));
                return false;
            }
            previous = *hash;
            true
        })?;
        leaf.ok_or(Error::EntryNotFound { seq })
    }

    /// Finds the entry that recorded transfer `id`, whose ledger timestamp is `timestamp_ns`:
    /// returns its sequence number and leaf data.
    pub fn find_transfer(
        &self,
        journal: &File,
        id: &str,
        timestamp_ns: u64,
    ) -> Result<(u64, Vec<u8>), Error> {
        let not_found = || Error::TransferNotFound(id.to_string());
        let (first, _) = self.index.start_for_timestamp(timestamp_ns).ok_or_else(not_found)?;
        // One entry earlier, for the hash the first candidate's leaf starts with.
        let (start, offset) = self.index.start_before_seq(first).ok_or_else(not_found)?;
        let mut previous = puhui_journal::frame::genesis_hash();
        let mut found = None;
        walk_entries(journal, offset, start, self.size(), |seq, kind, body, hash| {
            if seq >= first {
                let ts = body_timestamp(body).unwrap_or(0);
                if ts > timestamp_ns {
                    return false;
                }
                if ts == timestamp_ns && kind == codec::KIND_TRANSFER {
                    if let Ok(codec::Event::Transfer { request, .. }) = codec::decode(kind, body) {
                        if request.id.as_str() == id {
                            found = Some((seq, leaf_bytes(&previous, seq, kind, body)));
                            return false;
                        }
                    }
                }
            }
            previous = *hash;
            true
        })?;
        found.ok_or_else(not_found)
    }

    /// The inclusion proof of entry `seq`, whose leaf data is `leaf` (from [`Self::read_leaf`] or
    /// [`Self::find_transfer`]), against checkpoint `checkpoint_size` (default: the latest).
    pub fn inclusion_proof(
        &self,
        seq: u64,
        leaf: Vec<u8>,
        checkpoint_size: Option<u64>,
    ) -> Result<InclusionProof, Error> {
        let checkpoint = self.target(checkpoint_size)?;
        if seq >= checkpoint.size {
            return Err(Error::NotCheckpointed { seq, checkpoint_size: checkpoint.size });
        }
        if self.tree.leaf(seq) != Some(leaf_hash_of_leaf(&leaf)) {
            return Err(Error::Mismatch(format!(
                "journal entry {seq} on disk no longer hashes to the leaf the tree holds (the file changed under the node)"
            )));
        }
        let proof =
            self.tree.inclusion_proof(seq, checkpoint.size).map_err(|e| Error::Format(e.to_string()))?;
        Ok(InclusionProof::new(checkpoint.clone(), seq, leaf, proof))
    }

    /// The consistency proof between the checkpoints of sizes `from` and `to`.
    pub fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, Error> {
        if from > to {
            return Err(Error::InvalidRange { from, to });
        }
        let old = self.checkpoint(from)?;
        let new = self.checkpoint(to)?;
        let proof = self.tree.consistency_proof(from, to).map_err(|e| Error::Format(e.to_string()))?;
        Ok(ConsistencyProof::new(old.clone(), new.clone(), proof))
    }
}

/// Checks a checkpoint's root against a tree built from the journal.
pub fn check_against_tree(c: &Checkpoint, tree: &MerkleTree, what: &str) -> Result<(), Error> {
    if c.size > tree.size() {
        return Err(Error::Mismatch(format!(
            "the {what} checkpoint of size {} is beyond the journal's {} entries: entries were removed",
            c.size,
            tree.size()
        )));
    }
    let root = tree.root_at(c.size).map_err(|e| Error::Format(e.to_string()))?;
    if root != c.root {
        return Err(Error::Mismatch(format!(
            "the {what} checkpoint of size {} signs root {}, the journal's first {} entries have root {}: history was rewritten",
            c.size,
            hex::encode(&c.root),
            c.size,
            hex::encode(&root)
        )));
    }
    Ok(())
}
