//! Proof files: self-contained JSON documents that a partner verifies offline with the node's public
//! key and nothing else.
//!
//! Inclusion proof (entry `index` is in the journal the checkpoint signs):
//!
//! ```json
//! { "type": "puhui.journal.inclusion-proof.v2",
//!   "checkpoint": { "size": 1000, "root": "<hex>", "timestamp_ns": 1764100000000000000,
//!                   "key_id": "<hex>", "signature": "<hex>" },
//!   "index": 17,
//!   "leaf": "<hex of previous_hash:[u8; 32] | seq:u64 LE | kind:u8 | body>",
//!   "proof": ["<hex>", "..."],
//!   "event": "informative: the decoded event (not trusted; the verifier re-derives it from leaf)" }
//! ```
//!
//! Consistency proof (the journal at `new.size` extends the journal at `old.size`):
//!
//! ```json
//! { "type": "puhui.journal.consistency-proof.v2",
//!   "old": { <checkpoint> }, "new": { <checkpoint> }, "proof": ["<hex>", "..."] }
//! ```

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::keys::PublicKey;
use crate::{describe_leaf, hex, Error, Hash};

/// `type` of an inclusion proof file.
pub const INCLUSION_PROOF_TYPE: &str = "puhui.journal.inclusion-proof.v2";
/// `type` of a consistency proof file.
pub const CONSISTENCY_PROOF_TYPE: &str = "puhui.journal.consistency-proof.v2";
/// Largest proof file [`verify_proof_file`] reads (a leaf is at most ~1 MiB of body, in hex).
pub const PROOF_FILE_BYTES_MAX: usize = 4 << 20;

/// Proof that journal entry `index` (whose leaf data is `leaf`) is in the tree a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Always [`INCLUSION_PROOF_TYPE`].
    #[serde(rename = "type")]
    pub proof_type: String,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: Checkpoint,
    /// The entry's sequence number = its leaf index.
    pub index: u64,
    /// The leaf data: `previous_hash | seq:u64 LE | kind:u8 | body` (see [`crate::leaf_bytes`]);
    /// its BLAKE3 hash is the entry hash the tree commits to.
    #[serde(with = "hex::bytes")]
    pub leaf: Vec<u8>,
    /// The RFC 6962 audit path, deepest sibling first.
    #[serde(with = "hex::hashes")]
    pub proof: Vec<Hash>,
    /// The decoded event, for people reading the file; verifiers ignore it and decode `leaf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// Proof that the tree of checkpoint `new` extends the tree of checkpoint `old`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// Always [`CONSISTENCY_PROOF_TYPE`].
    #[serde(rename = "type")]
    pub proof_type: String,
    /// The older checkpoint.
    pub old: Checkpoint,
    /// The newer checkpoint.
    pub new: Checkpoint,
    /// The RFC 6962 consistency proof.
    #[serde(with = "hex::hashes")]
    pub proof: Vec<Hash>,
}

/// Either kind of proof file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofFile {
    /// An inclusion proof.
    Inclusion(InclusionProof),
    /// A consistency proof.
    Consistency(ConsistencyProof),
}

/// What a proof established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifiedProof {
    /// Entry `index` is in the journal signed at `checkpoint_size`.
    Inclusion {
        /// The entry.
        index: u64,
        /// The checkpoint's tree size.
        checkpoint_size: u64,
        /// The checkpoint's timestamp.
        checkpoint_timestamp_ns: u64,
        /// The event, decoded from the leaf bytes (Rust debug notation).
        event: String,
    },
    /// The journal at `new_size` extends the journal at `old_size`.
    Consistency {
        /// The older size.
        old_size: u64,
        /// The newer size.
        new_size: u64,
    },
}

impl std::fmt::Display for VerifiedProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifiedProof::Inclusion { index, checkpoint_size, checkpoint_timestamp_ns, event } => write!(
                f,
                "journal entry {index} is included in the signed checkpoint of size {checkpoint_size} (timestamp {checkpoint_timestamp_ns} ns): {event}"
            ),
            VerifiedProof::Consistency { old_size, new_size } => write!(
                f,
                "the signed journal of size {new_size} extends the signed journal of size {old_size}: nothing before entry {old_size} was rewritten"
            ),
        }
    }
}

impl InclusionProof {
    /// An inclusion proof document.
    pub fn new(checkpoint: Checkpoint, index: u64, leaf: Vec<u8>, proof: Vec<Hash>) -> InclusionProof {
        let event = describe_leaf(&leaf).ok().map(|(_, e)| format!("{e:?}"));
        InclusionProof { proof_type: INCLUSION_PROOF_TYPE.into(), checkpoint, index, leaf, proof, event }
    }

    /// Verifies the proof: the checkpoint's signature with `key`, that the leaf is well formed and
    /// names entry `index`, and that the audit path leads from the leaf to the signed root.
    pub fn verify(&self, key: &PublicKey) -> Result<VerifiedProof, Error> {
        if self.proof_type != INCLUSION_PROOF_TYPE {
            return Err(Error::Format(format!("not an inclusion proof: type {:?}", self.proof_type)));
        }
        self.checkpoint.verify_signature(key)?;
        let (seq, event) = describe_leaf(&self.leaf)?;
        if seq != self.index {
            return Err(Error::BadProof(format!(
                "the leaf is entry {seq}, the proof claims entry {}",
                self.index
            )));
        }
        puhui_merkle::verify_inclusion(
            &crate::leaf_hash_of_leaf(&self.leaf),
            self.index,
            self.checkpoint.size,
            &self.proof,
            &self.checkpoint.root,
        )
        .map_err(|e| Error::BadProof(e.to_string()))?;
        Ok(VerifiedProof::Inclusion {
            index: self.index,
            checkpoint_size: self.checkpoint.size,
            checkpoint_timestamp_ns: self.checkpoint.timestamp_ns,
            event: format!("{event:?}"),
        })
    }

    /// The proof as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a proof always serialises")
    }
}

impl ConsistencyProof {
    /// A consistency proof document.
    pub fn new(old: Checkpoint, new: Checkpoint, proof: Vec<Hash>) -> ConsistencyProof {
        ConsistencyProof { proof_type: CONSISTENCY_PROOF_TYPE.into(), old, new, proof }
    }

    /// Verifies both checkpoints' signatures with `key` and the RFC 6962 consistency proof.
    pub fn verify(&self, key: &PublicKey) -> Result<VerifiedProof, Error> {
        if self.proof_type != CONSISTENCY_PROOF_TYPE {
            return Err(Error::Format(format!("not a consistency proof: type {:?}", self.proof_type)));
        }
        self.old.verify_signature(key)?;
        self.new.verify_signature(key)?;
        if self.old.size > self.new.size {
            return Err(Error::InvalidRange { from: self.old.size, to: self.new.size });
        }
        puhui_merkle::verify_consistency(
            self.old.size,
            self.new.size,
            &self.old.root,
            &self.new.root,
            &self.proof,
        )
        .map_err(|e| Error::BadProof(e.to_string()))?;
        Ok(VerifiedProof::Consistency { old_size: self.old.size, new_size: self.new.size })
    }

    /// The proof as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a proof always serialises")
    }
}

impl ProofFile {
    /// Parses a proof document (either kind, told apart by `type`).
    pub fn parse(text: &str) -> Result<ProofFile, Error> {
        #[derive(Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            proof_type: String,
        }
        let tag: Tag = serde_json::from_str(text)
            .map_err(|e| Error::Format(format!("not a proof document (JSON with a \"type\"): {e}")))?;
        let bad = |e: serde_json::Error| Error::Format(format!("malformed {}: {e}", tag.proof_type));
        match tag.proof_type.as_str() {
            INCLUSION_PROOF_TYPE => Ok(ProofFile::Inclusion(serde_json::from_str(text).map_err(bad)?)),
            CONSISTENCY_PROOF_TYPE => Ok(ProofFile::Consistency(serde_json::from_str(text).map_err(bad)?)),
            "puhui.journal.inclusion-proof.v1" | "puhui.journal.consistency-proof.v1" => Err(Error::Format(format!(
                "{} is a v1 proof (leaf = seq | kind | body, before 2026-11-26); this verifier checks v2 proofs (leaf = previous_hash | seq | kind | body, leaf hash over its BLAKE3 entry hash): ask the node for a new proof",
                tag.proof_type
            ))),
            other => Err(Error::Format(format!("unknown proof type {other:?}"))),
        }
    }

    /// Verifies the proof with `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<VerifiedProof, Error> {
        match self {
            ProofFile::Inclusion(p) => p.verify(key),
            ProofFile::Consistency(p) => p.verify(key),
        }
    }
}

/// Reads, parses and verifies a proof file: what `puhui journal verify-proof` runs.
pub fn verify_proof_file(path: &std::path::Path, key: &PublicKey) -> Result<VerifiedProof, Error> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| crate::io_error(format!("opening {}", path.display()), e))?;
    let mut text = String::new();
    file.take(PROOF_FILE_BYTES_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| crate::io_error(format!("reading {}", path.display()), e))?;
    if text.len() > PROOF_FILE_BYTES_MAX {
        return Err(Error::Format(format!("{} is larger than {PROOF_FILE_BYTES_MAX} bytes", path.display())));
    }
    ProofFile::parse(&text)?.verify(key)
}
