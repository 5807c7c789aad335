//! Working on a data directory from outside the node, read-only and without its lock: checking every
//! stored and witnessed checkpoint against the journal (`puhui journal verify`), and writing proof
//! files (`puhui journal proof`, `puhui journal consistency`).
//!
//! Everything here rebuilds the tree from a full, hash-checked scan of the journal, so it works
//! while the node runs (it sees the durable prefix) and trusts nothing the node computed.

use std::path::Path;

use puhui_journal::codec;
use puhui_journal::frame::genesis_hash;

use crate::checkpoint::{read_checkpoints, Checkpoint, CHECKPOINT_LOG_FILE};
use crate::journal_tree::{check_against_tree, JournalTree, TransparencyLog};
use crate::keys::{PublicKey, PUBLIC_KEY_FILE};
use crate::proof::{ConsistencyProof, InclusionProof};
use crate::{leaf_bytes, Error};

/// File name of the journal inside a data directory (the store's `JOURNAL_FILE`).
pub const JOURNAL_FILE: &str = "journal.phj";

/// What [`audit`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries in the journal (= tree size).
    pub entries: u64,
    /// Stored checkpoints checked (signature and root).
    pub checkpoints: usize,
    /// Witnessed checkpoints checked (signature, and consistency with the journal).
    pub witnessed: usize,
    /// The latest stored checkpoint.
    pub latest: Option<Checkpoint>,
    /// The id of the key checkpoints were checked with.
    pub key_id: Option<String>,
}

/// Checks the checkpoints of the data directory `dir` against its journal: every stored checkpoint
/// (`checkpoints.log`) must be signed by `key` (default: `dir/node.pub`) and sign the root of the
/// journal's first `size` entries. With `witness`, every checkpoint in that file must be signed by
/// the key too, and the journal must extend it: a consistency proof from the witnessed checkpoint
/// to the journal's whole tree is built and verified, so a journal rewritten and re-hashed (and
/// re-signed) after the witness saw it is caught.
pub fn audit(dir: &Path, key: Option<&PublicKey>, witness: Option<&Path>) -> Result<AuditReport, Error> {
    let journal = JournalTree::build(&dir.join(JOURNAL_FILE), |_| Ok(()))?;
    let tree = &journal.tree;
    let stored = read_checkpoints(&dir.join(CHECKPOINT_LOG_FILE))?;
    let witnessed = match witness {
        Some(w) => {
            if !w.exists() {
                return Err(Error::Io(format!("no witness file at {}", w.display())));
            }
            read_checkpoints(w)?
        }
        None => Vec::new(),
    };
    let key = match key {
        Some(k) => Some(*k),
        None if dir.join(PUBLIC_KEY_FILE).exists() => Some(PublicKey::load(dir)?),
        None => None,
    };
    if key.is_none() && !(stored.is_empty() && witnessed.is_empty()) {
        return Err(Error::Key(format!("checkpoints exist but there is no public key ({PUBLIC_KEY_FILE})")));
    }
    for c in &stored {
        c.verify_signature(key.as_ref().expect("checked above"))?;
        check_against_tree(c, tree, "stored")?;
    }
    let root = tree.root();
    for w in &witnessed {
        w.verify_signature(key.as_ref().expect("checked above"))?;
        if w.size > tree.size() {
            return Err(Error::Mismatch(format!(
                "the witnessed checkpoint of size {} is beyond the journal's {} entries: entries were removed",
                w.size,
                tree.size()
            )));
        }
        let proof = tree.consistency_proof(w.size, tree.size()).map_err(|e| Error::Format(e.to_string()))?;
        puhui_merkle::verify_consistency(w.size, tree.size(), &w.root, &root, &proof).map_err(|e| {
            Error::Mismatch(format!(
                "the journal is not consistent with the witnessed checkpoint of size {} (timestamp {} ns): {e}; history before entry {} was rewritten",
                w.size, w.timestamp_ns, w.size
            ))
        })?;
    }
    Ok(AuditReport {
        entries: tree.size(),
        checkpoints: stored.len(),
        witnessed: witnessed.len(),
        latest: stored.last().cloned(),
        key_id: key.map(|k| k.key_id()),
    })
}

/// Builds the verifiable state of a data directory from its files (journal and `checkpoints.log`),
/// read-only. `on_entry` sees every entry of the scan. Checkpoints beyond the scanned journal (made
/// by a running node after the scan) are left out.
fn open_readonly(
    dir: &Path,
    on_entry: impl FnMut(&puhui_journal::frame::EntryRef<'_>) -> Result<(), String>,
) -> Result<TransparencyLog, Error> {
    let journal = JournalTree::build(&dir.join(JOURNAL_FILE), on_entry)?;
    let mut checkpoints = read_checkpoints(&dir.join(CHECKPOINT_LOG_FILE))?;
    checkpoints.retain(|c| c.size <= journal.tree.size());
    TransparencyLog::new(journal.tree, journal.index, checkpoints)
}

/// The inclusion proof of the entry that recorded transfer `transfer_id`, against the checkpoint of
/// size `checkpoint_size` (default: the latest stored checkpoint).
pub fn inclusion_proof_for_transfer(
    dir: &Path,
    transfer_id: &str,
    checkpoint_size: Option<u64>,
) -> Result<InclusionProof, Error> {
    let mut found: Option<(u64, Vec<u8>)> = None;
    let mut previous = genesis_hash();
    let log = open_readonly(dir, |e| {
        if found.is_none() && e.kind == codec::KIND_TRANSFER {
            if let Ok(codec::Event::Transfer { request, .. }) = codec::decode(e.kind, e.body) {
                if request.id.as_str() == transfer_id {
                    found = Some((e.seq, leaf_bytes(&previous, e.seq, e.kind, e.body)));
                }
            }
        }
        previous = *e.hash;
        Ok(())
    })?;
    let (seq, leaf) = found.ok_or_else(|| Error::TransferNotFound(transfer_id.to_string()))?;
    log.inclusion_proof(seq, leaf, checkpoint_size)
}

/// The inclusion proof of journal entry `seq` against checkpoint `checkpoint_size` (default: latest).
pub fn inclusion_proof_for_entry(
    dir: &Path,
    seq: u64,
    checkpoint_size: Option<u64>,
) -> Result<InclusionProof, Error> {
    let mut found: Option<Vec<u8>> = None;
    let mut previous = genesis_hash();
    let log = open_readonly(dir, |e| {
        if e.seq == seq {
            found = Some(leaf_bytes(&previous, e.seq, e.kind, e.body));
        }
        previous = *e.hash;
        Ok(())
    })?;
    let leaf = found.ok_or(Error::EntryNotFound { seq })?;
    log.inclusion_proof(seq, leaf, checkpoint_size)
}

/// The consistency proof between the stored checkpoints of sizes `from` and `to`.
pub fn consistency(dir: &Path, from: u64, to: u64) -> Result<ConsistencyProof, Error> {
    open_readonly(dir, |_| Ok(()))?.consistency(from, to)
}

/// The stored checkpoints of a data directory (read-only).
pub fn checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, Error> {
    read_checkpoints(&dir.join(CHECKPOINT_LOG_FILE))
}
