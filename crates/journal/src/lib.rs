//! # puhui-journal: the durable, hash-chained record of every ledger event
//!
//! [`frame`] is the file format (append-only frames of BLAKE3-chained entries, one `fdatasync` per
//! frame, torn-tail detection) and knows nothing of ledgers. [`codec`] encodes ledger events as entry
//! bodies. [`recover`] rebuilds a [`puhui_ledger::Ledger`] from a journal, and [`verify`] checks a
//! journal end to end for `puhui journal verify`.
//!
//! Architecture invariant: an entry is written once and never modified; the only operation on
//! existing bytes is cutting a torn tail at start-up, and the cut bytes are kept aside in a
//! `journal.torn-<offset>` file for inspection.
#![deny(missing_docs)]

pub mod codec;
pub mod frame;

use std::path::Path;

pub use codec::{decode, encode_log_item, Event};
pub use frame::{scan, JournalWriter, ScanError, ScanSummary, TornTail};

use puhui_ledger::Ledger;

/// The result of rebuilding a ledger from a journal.
pub struct Recovered {
    /// The ledger, as of the last whole frame.
    pub ledger: Ledger,
    /// Where the journal stands (feed it to [`JournalWriter::open`]).
    pub summary: ScanSummary,
}

/// Rebuilds a ledger by replaying every whole frame of the journal at `path` (each event re-decided
/// and checked against its recorded result). A torn tail is reported in the summary, not applied.
pub fn recover(path: &Path) -> Result<Recovered, ScanError> {
    let mut ledger = Ledger::new();
    let summary = scan(path, |entry| {
        let event = codec::decode(entry.kind, entry.body).map_err(|e| e.to_string())?;
        event.replay(&mut ledger).map_err(|e| e.to_string())
    })?;
    Ok(Recovered { ledger, summary })
}

/// What `journal verify` found.
pub struct Verified {
    /// The scan summary (entries, frames, last hash).
    pub summary: ScanSummary,
    /// Accounts and transfers after replay.
    pub accounts: usize,
    /// Transfers recorded.
    pub transfers: usize,
}

/// Verifies a journal end to end: frame headers, sequence numbers, the hash chain, that every entry
/// decodes and replays to its recorded result, that the ledger's invariants hold at the end, and
/// that there is no torn tail. Names the first bad entry on failure.
pub fn verify(path: &Path) -> Result<Verified, ScanError> {
    let recovered = recover(path)?;
    if let Some(torn) = &recovered.summary.torn_tail {
        let seq = recovered.summary.entries;
        return Err(ScanError::Corrupt {
            seq,
            offset: torn.offset,
            reason: format!(
                "the last {} bytes are not a whole frame ({}); start-up would cut them",
                torn.len_bytes, torn.reason
            ),
        });
    }
    if let Err(e) = recovered.ledger.check_invariants() {
        return Err(ScanError::Rejected {
            seq: recovered.summary.entries,
            offset: recovered.summary.valid_len_bytes,
            reason: format!("ledger invariant broken after replay: {e}"),
        });
    }
    Ok(Verified {
        accounts: recovered.ledger.accounts_count(),
        transfers: recovered.ledger.transfers_count(),
        summary: recovered.summary,
    })
}
