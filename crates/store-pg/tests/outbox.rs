//! The SQL journal as an outbox, against the real PostgreSQL (`PUHUI_TEST_PG`): entries read back by
//! sequence below the watermark, a stable journal id, and leases held by one store at a time and
//! taken over when the holder goes.

use std::time::{Duration, Instant};

use puhui_ledger::{Currency, Id, NewAccount};
use puhui_store::LedgerStore;
use puhui_store_pg::testing::TestSchema;
use puhui_store_pg::PgStore;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn entries_are_read_in_order_below_the_watermark_with_a_stable_journal_id() {
    let schema = TestSchema::new("outbox_read");
    let store = PgStore::open_with(schema.url(), schema.options()).unwrap();
    assert_eq!((store.journal_next_seq().unwrap(), store.journal_id().unwrap()), (0, None));
    let cny = Currency::iso("CNY").unwrap();
    for i in 0..5 {
        let accounts = (0..3).map(|j| NewAccount::new(Id::new(&format!("a{i}-{j}")).unwrap(), cny)).collect();
        store.create_accounts(accounts).unwrap();
    }
    let next = store.journal_next_seq().unwrap();
    assert_eq!(next, 15);
    let all = store.read_entries(0, 100).unwrap();
    assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), (0..15).collect::<Vec<_>>());
    let some = store.read_entries(4, 3).unwrap();
    assert_eq!(some.iter().map(|e| e.0).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert_eq!(some[0], all[4]);
    assert!(store.read_entries(15, 10).unwrap().is_empty());
    let at = store.read_entries_at(&[2, 9, 40]).unwrap();
    assert_eq!((at.len(), &at[0], &at[1]), (2, &all[2], &all[9]));
    let id = store.journal_id().unwrap().unwrap();
    assert_eq!(id.len(), 16);
    // Another store on the same schema (another node) sees the same journal and id.
    let other = PgStore::open_with(schema.url(), schema.options()).unwrap();
    assert_eq!(other.journal_id().unwrap().as_deref(), Some(id.as_str()));
    assert_eq!(other.read_entries(0, 100).unwrap(), all);
}

#[test]
fn a_lease_has_one_holder_and_passes_on_when_it_goes() {
    let schema = TestSchema::new("outbox_lease");
    let other_schema = TestSchema::new("outbox_lease_other");
    let a = PgStore::open_with(schema.url(), schema.options()).unwrap();
    let b = PgStore::open_with(schema.url(), schema.options()).unwrap();
    let elsewhere = PgStore::open_with(other_schema.url(), other_schema.options()).unwrap();
    let first = a.lease("relay").unwrap();
    wait_until("the first lease", || first.is_held());
    let second = b.lease("relay").unwrap();
    let other_name = b.lease("dispatcher").unwrap();
    let other_schema_lease = elsewhere.lease("relay").unwrap();
    // Another name and another schema are other leases.
    wait_until("the other leases", || other_name.is_held() && other_schema_lease.is_held());
    std::thread::sleep(Duration::from_millis(3 * puhui_store_pg::outbox::LEASE_POLL_MS));
    assert!(first.is_held() && !second.is_held(), "one holder at a time");
    drop(first);
    wait_until("the takeover", || second.is_held());
}
