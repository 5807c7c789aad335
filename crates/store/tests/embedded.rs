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
        store.read(|l| (l.accounts().collect::<Vec<_>>(), l.transfer("p1"), l.transfer("x1"), l.last_timestamp_ns()))
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().entries_replayed, 3 + 4 + 1);
    let after =
        store.read(|l| (l.accounts().collect::<Vec<_>>(), l.transfer("p1"), l.transfer("x1"), l.last_timestamp_ns()));
    assert_eq!(before, after);
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
        std::fs::metadata(&journal).unwrap().len()
    };
    // Simulate a crash in the middle of writing the next frame: half a frame at the end.
    let mut bytes = std::fs::read(&journal).unwrap();
    let first_frame: Vec<u8> = bytes[..200.min(bytes.len())].to_vec();
    bytes.extend_from_slice(&first_frame[..77]);
    std::fs::write(&journal, &bytes).unwrap();
    assert!(puhui_journal::verify(&journal).is_err(), "verify reports the torn tail");

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let saved = store.open_report().torn_tail_saved_to.clone().expect("tail was cut");
    assert_eq!(std::fs::read(saved).unwrap().len(), 77);
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
