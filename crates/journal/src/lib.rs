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
pub mod snapshot;

use std::path::Path;

pub use codec::{decode, encode_log_item, Event};
pub use frame::{
    holds_position, scan, scan_from, scan_from_reusing, JournalPosition, JournalWriter, ScanBuffers,
    ScanError, ScanSummary, TornTail,
};

use puhui_ledger::Ledger;

/// The result of rebuilding a ledger from a journal.
pub struct Recovered {
    /// The ledger, as of the last whole frame.
    pub ledger: Ledger,
    /// Where the journal stands (feed it to [`JournalWriter::open`]).
    pub summary: ScanSummary,
}

/// Events handed from the reading thread to the replaying thread at a time.
const RECOVERY_CHUNK_EVENTS: usize = 4_096;
/// Chunks in flight between the two recovery threads.
const RECOVERY_CHUNKS_IN_FLIGHT: usize = 8;
/// Rough journal bytes per transfer, to size the ledger's tables before replay.
const JOURNAL_BYTES_PER_TRANSFER_ESTIMATE: u64 = 160;

/// Rebuilds a ledger by replaying every whole frame of the journal at `path` (each event re-decided
/// and checked against its recorded result). A torn tail is reported in the summary, not applied.
///
/// Two threads: one reads, checks the hash chain and decodes; the other replays.
pub fn recover(path: &Path) -> Result<Recovered, ScanError> {
    recover_from(path, Ledger::new(), JournalPosition::start())
}

/// Like [`recover`], but continues from `ledger` (loaded from a snapshot) at `start`: only the journal
/// after the snapshot is read and replayed.
pub fn recover_from(path: &Path, mut ledger: Ledger, start: JournalPosition) -> Result<Recovered, ScanError> {
    type Chunk = Vec<(u64, u64, Event)>;
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let tail_len = file_len.saturating_sub(start.len_bytes);
    ledger.reserve_transfers((tail_len / JOURNAL_BYTES_PER_TRANSFER_ESTIMATE) as usize);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(RECOVERY_CHUNKS_IN_FLIGHT);
    let path_owned = path.to_path_buf();
    let reader = std::thread::Builder::new()
        .name("puhui-recover-read".into())
        .spawn(move || {
            let mut chunk: Chunk = Vec::with_capacity(RECOVERY_CHUNK_EVENTS);
            let summary = scan_from(&path_owned, start, |entry| {
                let event = codec::decode(entry.kind, entry.body).map_err(|e| e.to_string())?;
                chunk.push((entry.seq, entry.offset, event));
                if chunk.len() == RECOVERY_CHUNK_EVENTS {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(RECOVERY_CHUNK_EVENTS));
                    tx.send(full).map_err(|_| "replay stopped".to_string())?;
                }
                Ok(())
            });
            if !chunk.is_empty() && summary.is_ok() {
                let _ = tx.send(chunk);
            }
            summary
        })
        .map_err(|e| ScanError::Io(format!("starting the recovery reader: {e}")))?;
    let mut replay_error = None;
    for chunk in rx.iter() {
        for (seq, offset, event) in chunk {
            if let Err(e) = event.replay(&mut ledger) {
                replay_error = Some(ScanError::Rejected { seq, offset, reason: e.to_string() });
                break;
            }
        }
        if replay_error.is_some() {
            break;
        }
    }
    drop(rx);
    let scanned = reader.join().map_err(|_| ScanError::Io("the recovery reader panicked".into()))?;
    if let Some(e) = replay_error {
        return Err(e);
    }
    Ok(Recovered { ledger, summary: scanned? })
}

/// Calls `on_record(seq, record_type, timestamp_ns, payload)` for every application record
/// ([`codec::KIND_RECORD`]) in the journal at `path`, in order, checking the hash chain as it reads
/// (other entries are skipped undecoded). A torn tail is reported in the summary, not read.
pub fn scan_records(
    path: &Path,
    on_record: impl FnMut(u64, u8, u64, &[u8]) -> Result<(), String>,
) -> Result<ScanSummary, ScanError> {
    scan_records_from(path, JournalPosition::start(), on_record)
}

/// [`scan_records`] from `start` on (a snapshot's position): the journal must hold it (the entry
/// ending there has its hash, as [`scan_from`] checks), and the chain is checked from there.
pub fn scan_records_from(
    path: &Path,
    start: JournalPosition,
    mut on_record: impl FnMut(u64, u8, u64, &[u8]) -> Result<(), String>,
) -> Result<ScanSummary, ScanError> {
    scan_from(path, start, |entry| {
        if entry.kind != codec::KIND_RECORD {
            return Ok(());
        }
        let (record_type, timestamp_ns, payload) =
            codec::decode_record(entry.body).map_err(|e| e.to_string())?;
        on_record(entry.seq, record_type, timestamp_ns, payload)
    })
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

/// Loads the snapshot in `dir`, if there is a good one. `Err` describes a snapshot that exists but
/// cannot be used (the caller falls back to a full replay).
pub fn load_snapshot(dir: &Path) -> Result<Option<(Ledger, JournalPosition)>, String> {
    match snapshot::read_snapshot(dir)? {
        None => Ok(None),
        Some((position, content)) => {
            let ledger = Ledger::decode_snapshot(&content).map_err(|e| e.to_string())?;
            Ok(Some((ledger, position)))
        }
    }
}
