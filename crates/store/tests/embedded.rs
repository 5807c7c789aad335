//! The embedded store: conformance, restart, torn tails, locking, group commit.

use std::sync::Arc;

use puhui_ledger::{AccountFlags, Currency, Id, NewAccount, ResultCode, TransferRequest};
use puhui_store::{conformance, EmbeddedStore, LedgerStore, ManualClock, StoreError, JOURNAL_FILE};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn cny() -> Currency {
    Currency::iso("CNY").unwrap()
}

#[test]
fn embedded_store_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(&|| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        Box::new(store)
    });
}

fn populate(store: &EmbeddedStore) {
    let accounts = vec![
        NewAccount::new(id("bank"), cny()),
        NewAccount::new(id("alice"), cny()).with_flags(AccountFlags::WALLET),
        NewAccount::new(id("bob"), cny()).with_flags(AccountFlags::WALLET),
    ];
    store.create_accounts(accounts).unwrap();
    let transfers = vec![
        TransferRequest::single(id("f1"), id("bank"), id("alice"), 1_000, cny().code()),
        TransferRequest::pending(id("h1"), id("alice"), id("bob"), 300, cny().code(), Some(60_000)),
        TransferRequest::single(id("x1"), id("alice"), id("bob"), 5_000, cny().code()),
        TransferRequest::post(id("p1"), id("h1"), Some(200)),
    ];
    let r = store.create_transfers(transfers).unwrap();
    assert_eq!(
        r.iter().map(|e| e.result).collect::<Vec<_>>(),
        [ResultCode::Ok, ResultCode::Ok, ResultCode::ExceedsCredits, ResultCode::Ok]
    );
    store.set_account_status(&id("bob"), puhui_ledger::StatusAction::Freeze).unwrap();
}

#[test]
fn restart_recovers_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        populate(&store);
        store.read(|l| {
            (l.accounts().collect::<Vec<_>>(), l.transfer("p1"), l.transfer("x1"), l.last_timestamp_ns())
        })
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let report = store.open_report().clone();
    assert_eq!(report.snapshot_entries, Some(3 + 4 + 1), "a clean shutdown leaves a snapshot");
    assert_eq!(report.entries_replayed, 0);
    let after = store.read(|l| {
        (l.accounts().collect::<Vec<_>>(), l.transfer("p1"), l.transfer("x1"), l.last_timestamp_ns())
    });
    assert_eq!(before, after);
    // Reopening again must not journal the replayed events a second time.
    let t = TransferRequest::single(id("after-restart"), id("bank"), id("alice"), 1, cny().code());
    assert_eq!(store.create_transfers(vec![t]).unwrap()[0].result, ResultCode::Ok);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().snapshot_entries, Some(3 + 4 + 1 + 1));
    drop(store);
    // Without the snapshot, a full replay gives the same.
    std::fs::remove_file(dir.path().join(puhui_journal::snapshot::SNAPSHOT_FILE)).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().entries_replayed, 3 + 4 + 1 + 1);
    assert_eq!(store.open_report().snapshot_entries, None);
    // The permanent failure survives the restart.
    let again = TransferRequest::single(id("x1"), id("alice"), id("bob"), 5_000, cny().code());
    assert_eq!(store.create_transfers(vec![again]).unwrap()[0].result, ResultCode::ExceedsCredits);
}

#[test]
fn a_torn_tail_is_cut_and_saved() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join(JOURNAL_FILE);
    let whole_len = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        populate(&store);
        drop(store);
        frames_len(&journal)
    };
    // Simulate a crash in the middle of writing the next frame: half a frame after the last one,
    // over the zeros the writer wrote ahead.
    let bytes = std::fs::read(&journal).unwrap();
    let file_len = bytes.len();
    assert!(file_len as u64 > whole_len, "the writer pre-writes past the last frame");
    let first_frame: Vec<u8> = bytes[..200.min(bytes.len())].to_vec();
    write_at(&journal, whole_len, &first_frame[..77]);
    assert!(puhui_journal::verify(&journal).is_err(), "verify reports the torn tail");

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let saved = store.open_report().torn_tail_saved_to.clone().expect("tail was cut");
    let saved = std::fs::read(saved).unwrap();
    assert_eq!(saved.len() as u64, file_len as u64 - whole_len, "the tail is saved whole");
    assert_eq!(&saved[..77], &first_frame[..77]);
    assert!(saved[77..].iter().all(|&b| b == 0));
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), whole_len);
    assert!(store.account("alice").unwrap().is_some());
    drop(store);
    assert!(puhui_journal::verify(&journal).is_ok());
}

#[test]
fn a_data_dir_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let _store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(matches!(EmbeddedStore::open(dir.path()), Err(StoreError::Locked(_))));
}

#[test]
fn concurrent_batches_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut accounts = vec![NewAccount::new(id("bank"), cny())];
    accounts.extend((0..8).map(|i| NewAccount::new(id(&format!("w{i}")), cny())));
    store.create_accounts(accounts).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for b in 0..50 {
                    let batch = (0..10)
                        .map(|i| {
                            TransferRequest::single(
                                id(&format!("t{t}-{b}-{i}")),
                                id("bank"),
                                id(&format!("w{t}")),
                                1,
                                cny().code(),
                            )
                        })
                        .collect();
                    let r = store.create_transfers(batch).unwrap();
                    assert!(r.iter().all(|e| e.result == ResultCode::Ok));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let frames = store.stats().frames.load(std::sync::atomic::Ordering::Relaxed);
    assert!(frames < 1 + 8 * 50, "{frames} frames for {} batches: some were grouped", 8 * 50);
    for i in 0..8 {
        assert_eq!(store.account(&format!("w{i}")).unwrap().unwrap().balances.credits_posted, 500);
    }
    store.read(|l| l.check_invariants()).unwrap();
}

#[test]
fn holds_expire_on_the_committers_timer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let store = EmbeddedStore::open_with_clock(dir.path(), clock.clone()).unwrap();
    populate(&store); // h1 was posted; make another hold that expires.
    let h2 = TransferRequest::pending(id("h2"), id("alice"), id("bank"), 100, cny().code(), Some(1_000));
    assert_eq!(store.create_transfers(vec![h2]).unwrap()[0].result, ResultCode::Ok);
    clock.advance(999_000_000);
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(store.account("alice").unwrap().unwrap().balances.debits_pending, 100, "not yet due");
    // Ledger timestamps run a few ns ahead of the clock within a batch: step well past the deadline.
    clock.advance(2_000_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.account("alice").unwrap().unwrap().balances.debits_pending != 0 {
        assert!(std::time::Instant::now() < deadline, "the committer never expired the hold");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let t = store.transfer("h2").unwrap().unwrap();
    assert_eq!(t.pending_status, Some(puhui_ledger::PendingStatus::Expired), "the expiry was journaled");
}

/// Copies a live data directory's files: what a crash at this moment would leave on disk.
fn crash_copy(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
    }
    to
}

#[test]
fn recovery_uses_the_last_snapshot_plus_the_journal_tail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(puhui_store::SystemClock);
    let options = puhui_store::StoreOptions { snapshot_every_entries: 10, ..Default::default() };
    let store = EmbeddedStore::open_with(dir.path(), clock.clone(), options).unwrap();
    populate(&store); // 8 entries
    for i in 0..30 {
        let t = TransferRequest::single(id(&format!("t{i}")), id("bank"), id("alice"), 1, cny().code());
        store.create_transfers(vec![t]).unwrap();
    }
    // Wait for the background snapshot writer, then "crash" (copy the files while running).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().snapshots.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "snapshots were taken");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let expected = store.read(|l| (l.accounts().collect::<Vec<_>>(), l.transfers_count()));
    let crashed = crash_copy(dir.path());
    let recovered = EmbeddedStore::open(crashed.path()).unwrap();
    let report = recovered.open_report().clone();
    let from_snapshot = report.snapshot_entries.expect("started from a snapshot");
    assert!(from_snapshot >= 10 && report.entries_replayed > 0, "{report:?}");
    assert_eq!(from_snapshot + report.entries_replayed, 8 + 30);
    assert_eq!(recovered.read(|l| (l.accounts().collect::<Vec<_>>(), l.transfers_count())), expected);
    assert_eq!(recovered.balance_at("alice", u64::MAX).unwrap(), expected.0[1].balances);
}

#[test]
fn a_damaged_snapshot_is_ignored_for_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        populate(&store);
        store.read(|l| l.accounts().collect::<Vec<_>>())
    };
    let snapshot = dir.path().join(puhui_journal::snapshot::SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&snapshot, bytes).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.open_report().snapshot_error.as_deref().unwrap().contains("hash mismatch"));
    assert_eq!(store.open_report().entries_replayed, 8);
    assert_eq!(store.read(|l| l.accounts().collect::<Vec<_>>()), expected);
}

#[test]
fn a_planted_header_inside_a_torn_tail_is_not_mistaken_for_a_later_frame() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join(JOURNAL_FILE);
    let whole_len = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        populate(&store);
        drop(store);
        frames_len(&journal)
    };
    // A torn write whose bytes contain a valid frame header (as client-chosen bytes of an entry
    // could), followed by a payload that is not a frame.
    let mut bytes = vec![0x50; 40];
    bytes.extend_from_slice(&puhui_journal::frame::encode_frame_header(1, 64, 1_000));
    bytes.extend_from_slice(&[0x7f; 64]);
    write_at(&journal, whole_len, &bytes);
    let store = EmbeddedStore::open(dir.path()).expect("a torn tail, not corruption");
    assert!(store.open_report().torn_tail_saved_to.is_some());
    drop(store);
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), whole_len);
}

/// Bytes of whole frames in the journal (the writer pre-writes zeros after them).
fn frames_len(journal: &std::path::Path) -> u64 {
    let summary = puhui_journal::scan(journal, |_| Ok(())).unwrap();
    assert!(summary.torn_tail.is_none());
    assert_eq!(std::fs::metadata(journal).unwrap().len(), summary.valid_len_bytes + summary.prewritten_bytes);
    summary.valid_len_bytes
}

/// Overwrites the journal's bytes at `offset` (a write the crash interrupted).
fn write_at(journal: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(journal).unwrap().write_all_at(bytes, offset).unwrap();
}

/// The record types of the journal's application records, in journal order.
fn journaled_record_types(journal: &std::path::Path) -> Vec<u8> {
    let mut types = Vec::new();
    puhui_journal::scan(journal, |entry| {
        if entry.kind == puhui_journal::codec::KIND_RECORD {
            if let Ok(puhui_journal::Event::Record { record_type, .. }) =
                puhui_journal::decode(entry.kind, entry.body)
            {
                types.push(record_type);
            }
        }
        Ok(())
    })
    .unwrap();
    types
}

#[test]
fn riding_records_go_with_the_next_group_commit_or_the_idle_timer() {
    use puhui_store::{Record, RIDERS_BYTES_MAX, RIDERS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let record = |t: u8, len: usize| Record { record_type: t, payload: vec![t; len] };
    // With the next command: durable once that command is acknowledged, and journaled before it.
    store.submit_records_riding(vec![record(40, 10), record(41, 10)]).unwrap();
    store.append_records(vec![record(42, 10)]).unwrap();
    let journal = dir.path().join(JOURNAL_FILE);
    let types = journaled_record_types(&journal);
    assert!(types.ends_with(&[42, 40, 41]) || types.ends_with(&[40, 41, 42]), "{types:?}");
    // Idle: the committer's timer takes them within `EXPIRY_POLL_MS_MAX`.
    store.submit_records_riding(vec![record(43, 10)]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !journaled_record_types(&journal).contains(&43) {
        assert!(std::time::Instant::now() < deadline, "an idle store never journaled its rider");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Bounded in count and bytes; an oversized record is refused as `submit_records` refuses it.
    let too_many: Vec<Record> = (0..=RIDERS_MAX).map(|_| record(44, 1)).collect();
    assert!(matches!(
        store.submit_records_riding(too_many),
        Err(StoreError::Overloaded | StoreError::BatchTooLarge { .. })
    ));
    let big = (RIDERS_BYTES_MAX / 2) + 1;
    let bytes = vec![record(45, big.min(puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX))];
    let mut refused = false;
    for _ in 0..RIDERS_BYTES_MAX / puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX + 2 {
        refused |= matches!(store.submit_records_riding(bytes.clone()), Err(StoreError::Overloaded));
    }
    assert!(refused, "riders past RIDERS_BYTES_MAX were taken");
    let oversized = vec![record(46, puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX + 1)];
    assert!(matches!(store.submit_records_riding(oversized), Err(StoreError::RecordTooLarge { .. })));
    store.shutdown();
}
