//! Tamper tests: `puhui journal verify` fails and names where for a flipped byte, a removed entry and
//! a reordered pair, even when the tamperer forges consistent frame headers; start-up refuses a journal
//! damaged in the middle.

use std::path::Path;
use std::process::Command;

use puhui_journal::frame::{encode_frame_header, scan, ENTRY_OVERHEAD_BYTES, FRAME_HEADER_BYTES};
use puhui_ledger::{Currency, Id, NewAccount, TransferRequest};
use puhui_store::{EmbeddedStore, LedgerStore, StoreError, JOURNAL_FILE};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

/// A journal of several frames: accounts, then 5 batches of 10 transfers.
fn make_journal(dir: &Path) {
    let store = EmbeddedStore::open(dir).unwrap();
    let cny = Currency::iso("CNY").unwrap();
    store.create_accounts((0..4).map(|i| NewAccount::new(id(&format!("a{i}")), cny)).collect()).unwrap();
    for b in 0..5 {
        let batch = (0..10)
            .map(|i| {
                TransferRequest::single(
                    id(&format!("t{b}-{i}")),
                    id("a0"),
                    id(&format!("a{}", 1 + i % 3)),
                    100,
                    cny.code(),
                )
            })
            .collect();
        store.create_transfers(batch).unwrap();
    }
    drop(store);
    std::fs::remove_file(dir.join(puhui_journal::snapshot::SNAPSHOT_FILE)).unwrap();
}

/// (offset, length) of every entry, and (offset, entries, payload bytes, first seq) of every frame.
struct Layout {
    entries: Vec<(usize, usize)>,
    frames: Vec<(usize, usize, usize, u64)>,
}

fn layout(journal: &Path) -> Layout {
    let mut entries = Vec::new();
    scan(journal, |e| {
        entries.push((e.offset as usize, ENTRY_OVERHEAD_BYTES + e.body.len()));
        Ok(())
    })
    .unwrap();
    let bytes = std::fs::read(journal).unwrap();
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut seq = 0u64;
    while at < bytes.len() {
        let count = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let payload = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        frames.push((at, count, payload, seq));
        at += FRAME_HEADER_BYTES + payload;
        seq += count as u64;
    }
    Layout { entries, frames }
}

fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["journal", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The frame holding entry `seq`: (frame index, frame tuple).
fn frame_of(l: &Layout, seq: usize) -> (usize, (usize, usize, usize, u64)) {
    l.frames
        .iter()
        .copied()
        .enumerate()
        .find(|(_, f)| (f.3 as usize) <= seq && seq < f.3 as usize + f.1)
        .unwrap()
}

#[test]
fn an_untouched_journal_verifies() {
    let dir = tempfile::tempdir().unwrap();
    make_journal(dir.path());
    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("journal OK: 54 entries"), "{out}");
}

#[test]
fn a_flipped_byte_is_named() {
    let dir = tempfile::tempdir().unwrap();
    make_journal(dir.path());
    let journal = dir.path().join(JOURNAL_FILE);
    let l = layout(&journal);
    let (offset, len) = l.entries[20];
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[offset + len / 2] ^= 0x01;
    std::fs::write(&journal, &bytes).unwrap();
    let (ok, out) = verify(dir.path());
    assert!(!ok);
    assert!(out.contains("journal entry 20 "), "{out}");
    // Start-up refuses it: it is in the middle, not a torn tail.
    assert!(matches!(EmbeddedStore::open(dir.path()), Err(StoreError::Corrupt(_))));
}

#[test]
fn a_removed_entry_is_named_even_with_a_forged_header() {
    let dir = tempfile::tempdir().unwrap();
    make_journal(dir.path());
    let journal = dir.path().join(JOURNAL_FILE);
    let l = layout(&journal);
    let victim = 25usize;
    let (offset, len) = l.entries[victim];
    let (_, (frame_at, count, payload, first_seq)) = frame_of(&l, victim);
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.drain(offset..offset + len);
    let header = encode_frame_header(count as u32 - 1, (payload - len) as u32, first_seq);
    bytes[frame_at..frame_at + FRAME_HEADER_BYTES].copy_from_slice(&header);
    std::fs::write(&journal, &bytes).unwrap();
    let (ok, out) = verify(dir.path());
    assert!(!ok);
    assert!(out.contains(&format!("journal entry {victim} ")), "{out}");
    assert!(out.contains("missing or reordered"), "{out}");
}

#[test]
fn a_reordered_pair_is_named_even_with_renumbered_entries() {
    for renumber in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        make_journal(dir.path());
        let journal = dir.path().join(JOURNAL_FILE);
        let l = layout(&journal);
        let first = 30usize; // swap entries 30 and 31 (same frame)
        assert_eq!(frame_of(&l, first).0, frame_of(&l, first + 1).0);
        let (a_off, a_len) = l.entries[first];
        let (b_off, b_len) = l.entries[first + 1];
        let mut bytes = std::fs::read(&journal).unwrap();
        let mut a = bytes[a_off..a_off + a_len].to_vec();
        let mut b = bytes[b_off..b_off + b_len].to_vec();
        if renumber {
            // The tamperer also fixes the sequence numbers; only the hash chain can tell.
            b[4..12].copy_from_slice(&(first as u64).to_le_bytes());
            a[4..12].copy_from_slice(&(first as u64 + 1).to_le_bytes());
        }
        let mut swapped = b.clone();
        swapped.extend_from_slice(&a);
        bytes.splice(a_off..b_off + b_len, swapped);
        std::fs::write(&journal, &bytes).unwrap();
        let (ok, out) = verify(dir.path());
        assert!(!ok);
        assert!(out.contains(&format!("journal entry {first} ")), "renumber={renumber}: {out}");
        let why = if renumber { "hash mismatch" } else { "missing or reordered" };
        assert!(out.contains(why), "renumber={renumber}: {out}");
    }
}

#[test]
fn verify_of_a_missing_journal_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["journal", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no journal"));
}
