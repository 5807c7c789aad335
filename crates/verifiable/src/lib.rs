//! # puhui-verifiable: the verifiable journal
//!
//! A transparency log (RFC 6962 / RFC 9162, as in Certificate Transparency and Sigstore Rekor) built
//! over the hash-chained journal, so that a partner, auditor or regulator can check, **without access
//! to the data**, that a transfer they were shown is in the journal the node keeps, and that the
//! journal was only ever appended to.
//!
//! * **Leaves.** Journal entry `seq` is leaf `seq` of an RFC 6962 Merkle tree ([`puhui_merkle`],
//!   SHA-256). The tree's leaf value is the entry's chained BLAKE3 hash, which the journal computes
//!   and stores anyway: leaf hash = [`entry_leaf_hash`] = `SHA-256(0x00 | entry_hash)` (one SHA-256
//!   block per entry, no copy of the body). A proof carries the chain input [`leaf_bytes`] =
//!   `previous_hash | seq:u64 LE | kind:u8 | body`, from which a verifier recomputes
//!   `entry_hash = BLAKE3(leaf)`. The body is the self-contained [`puhui_journal::codec`] encoding
//!   (ids as text), so an offline verifier re-derives from the leaf alone what the transfer or
//!   decision was ([`describe_leaf`]).
//! * **Checkpoints** ([`checkpoint`]): tree size, root hash and timestamp, signed with the node's
//!   ed25519 key ([`keys`]); appended to `checkpoints.log` (JSON lines, `fdatasync`) and optionally to
//!   a witness file held by someone else.
//! * **Proofs** ([`proof`]): self-contained JSON files: an inclusion proof (checkpoint, leaf bytes,
//!   index, audit path) or a consistency proof (two checkpoints and the RFC 6962 proof between them).
//!   [`proof::verify_proof_file`] checks one with nothing but the node's public key.
//! * **The journal side** ([`journal_tree`]): builds the tree from a journal file, the sparse entry
//!   index that finds an entry's bytes on disk, and [`TransparencyLog`], the in-memory state a store
//!   keeps and answers proofs from. [`audit`] checks every stored and witnessed checkpoint against
//!   the journal (for `puhui journal verify`).
//!
//! The threat model and the step-by-step verification are in `docs/VERIFIABILITY.md`.
#![deny(missing_docs)]

pub mod audit;
pub mod checkpoint;
pub mod hex;
pub mod journal_tree;
pub mod keys;
pub mod proof;
pub mod tree_file;

pub use checkpoint::{Checkpoint, CheckpointLog, CHECKPOINT_LOG_FILE};
pub use journal_tree::{EntryIndex, JournalTree, TransparencyLog};
pub use keys::{NodeKey, PublicKey, KEY_FILE, PUBLIC_KEY_FILE};
pub use proof::{ConsistencyProof, InclusionProof, ProofFile, VerifiedProof};
pub use puhui_merkle::{leaf_hash, Hash};

/// Bytes before the body in a leaf: `previous_hash:[u8; 32] | seq:u64 LE | kind:u8`.
pub const LEAF_HEADER_BYTES: usize = 32 + 8 + 1;

/// The leaf data of journal entry `seq`: `previous_hash | seq:u64 LE | kind:u8 | body`, exactly the
/// bytes the journal's BLAKE3 chain hashes into the entry's hash (`previous_hash` is the hash of
/// entry `seq - 1`, or [`puhui_journal::frame::genesis_hash`] for entry 0).
pub fn leaf_bytes(previous_hash: &[u8; 32], seq: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEAF_HEADER_BYTES + body.len());
    out.extend_from_slice(previous_hash);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// The RFC 6962 leaf hash of a journal entry whose chained hash (the 32 bytes the journal stores
/// after the entry, `BLAKE3(previous_hash | seq | kind | body)`) is `entry_hash`:
/// `SHA-256(0x00 | entry_hash)`, one SHA-256 block. The tree's leaf *data* is the entry hash, so
/// the node reuses the hash the journal computes anyway and never copies or rehashes the body.
pub fn entry_leaf_hash(entry_hash: &[u8; 32]) -> Hash {
    puhui_merkle::leaf_hash(entry_hash)
}

/// [`entry_leaf_hash`] of two entries at once (two SHA-256 streams interleaved).
pub fn entry_leaf_hash_x2(a: &[u8; 32], b: &[u8; 32]) -> (Hash, Hash) {
    puhui_merkle::leaf_hash_32_x2(a, b)
}

/// The RFC 6962 leaf hash of leaf data from [`leaf_bytes`] (as in a proof file):
/// [`entry_leaf_hash`]`(BLAKE3(leaf))`.
pub fn leaf_hash_of_leaf(leaf: &[u8]) -> Hash {
    entry_leaf_hash(blake3::hash(leaf).as_bytes())
}

/// Splits leaf data into `(previous_hash, seq, kind, body)`; `None` if it is shorter than the
/// [`LEAF_HEADER_BYTES`]-byte header.
pub fn split_leaf(leaf: &[u8]) -> Option<([u8; 32], u64, u8, &[u8])> {
    if leaf.len() < LEAF_HEADER_BYTES {
        return None;
    }
    let previous: [u8; 32] = leaf[..32].try_into().ok()?;
    let seq = u64::from_le_bytes(leaf[32..40].try_into().ok()?);
    Some((previous, seq, leaf[40], &leaf[LEAF_HEADER_BYTES..]))
}

/// The ledger timestamp of an entry body: every entry kind starts with `timestamp_ns:u64 LE`.
pub fn body_timestamp(body: &[u8]) -> Option<u64> {
    body.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

/// Decodes leaf data into the journal event it records (checking that it is well formed), for
/// display to a verifier. Never panics on any input.
pub fn describe_leaf(leaf: &[u8]) -> Result<(u64, puhui_journal::Event), Error> {
    let (_, seq, kind, body) = split_leaf(leaf).ok_or_else(|| {
        Error::BadProof(format!("leaf is shorter than its {LEAF_HEADER_BYTES}-byte header"))
    })?;
    let event = puhui_journal::codec::decode(kind, body)
        .map_err(|e| Error::BadProof(format!("leaf does not decode as a journal entry: {e}")))?;
    Ok((seq, event))
}

/// What went wrong. Every failure is typed; nothing here panics on bad input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The verifiable journal is switched off for this store.
    Disabled,
    /// No checkpoint has been made yet.
    NoCheckpoint,
    /// No checkpoint of this tree size exists.
    CheckpointNotFound {
        /// The size asked for.
        size: u64,
    },
    /// No transfer with this id is in the journal.
    TransferNotFound(String),
    /// The journal has no entry with this sequence number.
    EntryNotFound {
        /// The entry asked for.
        seq: u64,
    },
    /// The entry is not covered by the checkpoint asked for (or by any checkpoint yet).
    NotCheckpointed {
        /// The entry.
        seq: u64,
        /// The size of the checkpoint it was asked against.
        checkpoint_size: u64,
    },
    /// A consistency proof was asked from a larger size to a smaller one.
    InvalidRange {
        /// The older size.
        from: u64,
        /// The newer size.
        to: u64,
    },
    /// The journal itself is damaged (its hash chain or frames do not check out).
    Journal(String),
    /// Reading or writing a file failed.
    Io(String),
    /// A file or document is not in the expected format.
    Format(String),
    /// A key is missing, unreadable or malformed.
    Key(String),
    /// A checkpoint's signature does not verify with the key given.
    BadSignature(String),
    /// A proof does not verify.
    BadProof(String),
    /// The journal does not match a checkpoint (stored or witnessed): history was rewritten.
    Mismatch(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Disabled => f.write_str("the verifiable journal is switched off for this store"),
            Error::NoCheckpoint => f.write_str("no checkpoint has been made yet"),
            Error::CheckpointNotFound { size } => write!(f, "no checkpoint of tree size {size}"),
            Error::TransferNotFound(id) => write!(f, "no transfer {id:?} in the journal"),
            Error::EntryNotFound { seq } => write!(f, "the journal has no entry {seq}"),
            Error::NotCheckpointed { seq, checkpoint_size } => write!(
                f,
                "journal entry {seq} is not covered by the checkpoint of size {checkpoint_size} (retry after the next checkpoint)"
            ),
            Error::InvalidRange { from, to } => {
                write!(f, "a consistency proof goes from a smaller size to a larger one, not {from} to {to}")
            }
            Error::Journal(e) => write!(f, "the journal is damaged: {e}"),
            Error::Io(e) => write!(f, "I/O failed: {e}"),
            Error::Format(e) => write!(f, "bad format: {e}"),
            Error::Key(e) => write!(f, "key problem: {e}"),
            Error::BadSignature(e) => write!(f, "bad signature: {e}"),
            Error::BadProof(e) => write!(f, "the proof does not verify: {e}"),
            Error::Mismatch(e) => write!(f, "the journal does not match a checkpoint: {e}"),
        }
    }
}

impl std::error::Error for Error {}

pub(crate) fn io_error(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_hash_is_the_rfc_leaf_hash_of_the_chained_entry_hash() {
        let previous = puhui_journal::frame::genesis_hash();
        for body in [&b""[..], b"x", &[7u8; 200]] {
            let bytes = leaf_bytes(&previous, 42, 3, body);
            let entry_hash = puhui_journal::frame::entry_hash(&previous, 42, 3, body);
            assert_eq!(leaf_hash_of_leaf(&bytes), entry_leaf_hash(&entry_hash));
            assert_eq!(entry_leaf_hash(&entry_hash), puhui_merkle::leaf_hash(&entry_hash));
            assert_eq!(split_leaf(&bytes), Some((previous, 42, 3, body)));
        }
        assert_eq!(split_leaf(&[1, 2, 3]), None);
        assert!(describe_leaf(&[0; 3]).is_err());
        assert!(describe_leaf(&leaf_bytes(&previous, 0, 99, b"")).is_err());
    }

    /// A fixed vector for other implementations: entry 0, kind 1, an empty body.
    #[test]
    fn leaf_hash_vector() {
        let leaf = leaf_bytes(&puhui_journal::frame::genesis_hash(), 0, 1, b"");
        assert_eq!(
            hex::encode(&leaf_hash_of_leaf(&leaf)),
            "904082dcebe7f570f65f6c2383a949f5c02e132ed6db432ec91f4180c9f342a7"
        );
    }
}
