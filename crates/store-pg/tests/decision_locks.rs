//! Cross-node decision locks (`PgStore::lock_decisions`) on a real PostgreSQL: one holder per id's
//! bucket across nodes, shared within a node, let go when dropped, batches in ascending order.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use puhui_store::StoreError;
use puhui_store_pg::testing::TestSchema;
use puhui_store_pg::{DecisionLock, PgStore, DECISION_LOCK_BUCKETS};

/// A node (a store of its own) on `schema`.
fn node(schema: &TestSchema) -> PgStore {
    PgStore::open_with(schema.url(), schema.options()).unwrap()
}

/// Asks `store` for `keys` and returns the answer's channel.
fn ask(store: &PgStore, keys: &[u64]) -> mpsc::Receiver<Result<DecisionLock, StoreError>> {
    let (tx, rx) = mpsc::channel();
    store
        .lock_decisions(keys.iter().copied(), move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
    rx
}

fn got(rx: &mpsc::Receiver<Result<DecisionLock, StoreError>>) -> DecisionLock {
    rx.recv_timeout(Duration::from_secs(3)).expect("answered").expect("locked")
}

fn still_waiting(rx: &mpsc::Receiver<Result<DecisionLock, StoreError>>) {
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "locked while another node holds it");
}

#[test]
fn a_decision_id_is_held_by_one_node_at_a_time_and_passes_on_when_let_go() {
    let schema = TestSchema::new("decision_locks");
    let a = Arc::new(node(&schema));
    let b = Arc::new(node(&schema));
    let other_schema = TestSchema::new("decision_locks_other");
    let c = node(&other_schema);

    // A holds id 7; B waits for it, and gets it once A lets go.
    let held = got(&ask(&a, &[7]));
    let b_waits = ask(&b, &[7]);
    still_waiting(&b_waits);
    // Within A the bucket is shared (the API keeps one id to one request in a process), and
    // another bucket is free on B at once; a store in another schema locks keys of its own.
    let shared = got(&ask(&a, &[7 + DECISION_LOCK_BUCKETS]));
    let elsewhere = got(&ask(&b, &[8]));
    let other = got(&ask(&c, &[7]));
    drop(held);
    still_waiting(&b_waits);
    drop(shared);
    let b_holds = got(&b_waits);
    drop((elsewhere, other));

    // A batch waits for the bucket B holds while keeping the ones it has; a single id in one of
    // those waits behind the batch; all pass on in turn.
    let batch = ask(&a, &[1, 7, 3, 1_000]);
    still_waiting(&batch);
    let single = ask(&b, &[3]);
    still_waiting(&single);
    drop(b_holds);
    let batch_holds = got(&batch);
    still_waiting(&single);
    drop(batch_holds);
    drop(got(&single));

    // More ids than buckets: every bucket at most once.
    let many: Vec<u64> = (0..3 * DECISION_LOCK_BUCKETS).collect();
    let everything = got(&ask(&a, &many));
    let waits = ask(&b, &[12_345]);
    still_waiting(&waits);
    drop(everything);
    drop(got(&waits));
}

#[test]
fn two_nodes_asking_for_every_bucket_at_once_get_them_one_after_the_other() {
    // Each tries every bucket it lacks in its first round trip: taken at the same moment, each
    // may get some. Neither keeps a bucket past one it was refused, so they do not wait for each
    // other in a circle: one gets them all, and the other once it lets go.
    let schema = TestSchema::new("decision_locks_all");
    let (a, b) = (node(&schema), node(&schema));
    let every: Vec<u64> = (0..DECISION_LOCK_BUCKETS).rev().collect();
    for _round in 0..3 {
        let (on_a, on_b) = (ask(&a, &every), ask(&b, &every));
        let wait = Duration::from_secs(DECISION_LOCK_WAIT_S);
        let (first, second) = loop {
            if let Ok(r) = on_a.recv_timeout(Duration::from_millis(10)) {
                break (r.expect("a locked"), on_b);
            }
            if let Ok(r) = on_b.recv_timeout(Duration::from_millis(10)) {
                break (r.expect("b locked"), on_a);
            }
        };
        still_waiting(&second);
        drop(first);
        drop(second.recv_timeout(wait).expect("answered").expect("the other node locked them all"));
    }
}

/// How long a test waits for a lock the other node let go of (it may take a round trip per bucket).
const DECISION_LOCK_WAIT_S: u64 = 5;

#[test]
fn locks_lost_with_their_connection_pass_on_and_the_node_locks_again_on_a_new_one() {
    let schema = TestSchema::new("decision_locks_lost");
    let a = node(&schema);
    let b = node(&schema);
    let held_by_a = got(&ask(&a, &[5]));
    let b_waits = ask(&b, &[5]);
    still_waiting(&b_waits);
    // A's lock session ends (a network cut, an operator): PostgreSQL frees its locks, and B, which
    // was waiting, gets the bucket.
    let mut admin = postgres::Client::connect(&puhui_store_pg::testing::test_url(), postgres::NoTls).unwrap();
    let name = puhui_store_pg::locks::application_name(Some(schema.name()));
    // (B's session in this schema holds no advisory lock: its try failed.)
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a WHERE a.application_name = $1 \
             AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)",
            &[&name],
        )
        .unwrap();
    assert_eq!(ended.len(), 1, "one lock session ({name}) holds a lock");
    let held_by_b = got(&b_waits);
    // A's guard from the lost session lets go of nothing on the new one; A locks again once B is done.
    drop(held_by_a);
    let a_waits = ask(&a, &[5]);
    still_waiting(&a_waits);
    drop(held_by_b);
    drop(got(&a_waits));
}

/// Ends the lock session `fence` names (as a network cut would) and returns how many sessions
/// were ended.
fn end_lock_session(schema: &TestSchema, fence: &puhui_store_pg::Fence) -> usize {
    let mut admin = postgres::Client::connect(&puhui_store_pg::testing::test_url(), postgres::NoTls).unwrap();
    let name = puhui_store_pg::locks::application_name(Some(schema.name()));
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2",
            &[&fence.pid(), &name],
        )
        .unwrap()
        .len()
}

/// Journals one record of type 99 holding `n`, under `fence`, and waits for the answer.
fn journal_fenced(store: &PgStore, n: u8, fence: Option<puhui_store_pg::Fence>) -> Result<u64, StoreError> {
    let (tx, rx) = mpsc::channel();
    let record = puhui_store::Record { record_type: 99, payload: vec![n] };
    store
        .submit_records_fenced(
            vec![record],
            fence,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).expect("answered")
}

#[test]
fn records_under_a_lost_lock_are_refused_and_a_new_holder_waits_for_one_still_committing() {
    let schema = TestSchema::new("decision_fences");
    let a = node(&schema);
    let b = node(&schema);
    let held_by_a = got(&ask(&a, &[5]));
    let fence = held_by_a.fence();
    assert_eq!(fence.buckets(), &[5]);
    journal_fenced(&a, 1, Some(fence.clone())).expect("written while the lock is held");

    // A transaction of A's that checked the fence and has not committed yet (as the records
    // committer holds it between its check and COMMIT).
    let mut in_flight =
        postgres::Client::connect(&puhui_store_pg::testing::test_url(), postgres::NoTls).unwrap();
    let mut committing = in_flight.transaction().unwrap();
    committing.execute("SELECT pg_advisory_xact_lock_shared($1, 5)", &[&fence.fence_class()]).unwrap();

    // A's lock session ends.
    assert_eq!(end_lock_session(&schema, &fence), 1, "the fence names A's lock session");

    // B takes the bucket from PostgreSQL but is not granted it while that transaction may still
    // write a record of A's decision (B's catch-up must read it)...
    let b_waits = ask(&b, &[5]);
    still_waiting(&b_waits);
    // ...and A's records written after the session ended are refused, nothing written.
    match journal_fenced(&a, 2, Some(fence.clone())) {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("lost"), "{message}"),
        other => panic!("a record under a lost lock was not refused: {other:?}"),
    }
    committing.commit().unwrap();
    let held_by_b = got(&b_waits);
    journal_fenced(&b, 3, Some(held_by_b.fence())).expect("B's own records are written");
    journal_fenced(&a, 4, None).expect("records without a fence are not checked");

    let mut written = Vec::new();
    b.scan_records_from(0, 100, |_, record_type, _, payload| {
        if record_type == 99 {
            written.push(payload[0]);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(written, [1, 3, 4], "the refused record left nothing in the journal");
    drop((held_by_a, held_by_b));
}

#[test]
fn a_fence_keeps_its_buckets_held_after_the_request_lets_go() {
    let schema = TestSchema::new("decision_fence_held");
    let a = node(&schema);
    let b = node(&schema);
    // A request goes away (its client gone) while its record still waits for the journal: the
    // record's fence keeps the bucket, so no other node decides under the id before it is written.
    let lock = got(&ask(&a, &[9]));
    let fence = lock.fence();
    drop(lock);
    let b_waits = ask(&b, &[9]);
    still_waiting(&b_waits);
    journal_fenced(&a, 7, Some(fence.clone())).expect("written: the session still holds the bucket");
    drop(fence);
    drop(got(&b_waits));
}

/// Posts transfer `id` (1 CNY from `a` to `b`) under `fence` and waits for the answer.
fn post_fenced(
    store: &PgStore,
    id: &str,
    fence: Option<puhui_store_pg::Fence>,
) -> Result<Vec<puhui_ledger::EventResult>, StoreError> {
    use puhui_ledger::{Currency, Id, TransferRequest};
    let cny = Currency::iso("CNY").unwrap().code();
    let t =
        TransferRequest::single(Id::new(id).unwrap(), Id::new("a").unwrap(), Id::new("b").unwrap(), 1, cny);
    let (tx, rx) = mpsc::channel();
    store.submit_transfers_fenced(
        vec![t],
        fence,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(10)).expect("answered")
}

#[test]
fn transfers_under_a_lost_lock_are_refused_and_nothing_is_posted() {
    use puhui_ledger::{Currency, Id, NewAccount, ResultCode};
    use puhui_store::LedgerStore;
    let schema = TestSchema::new("transfer_fences");
    let a = node(&schema);
    let b = node(&schema);
    let cny = Currency::iso("CNY").unwrap();
    let accounts =
        vec![NewAccount::new(Id::new("a").unwrap(), cny), NewAccount::new(Id::new("b").unwrap(), cny)];
    assert!(a.create_accounts(accounts).unwrap().iter().all(|r| r.result == ResultCode::Ok));

    // A transfer whose id A locked without a decision (no risk context) is posted under the lock.
    let held_by_a = got(&ask(&a, &[6]));
    let fence = held_by_a.fence();
    let posted = post_fenced(&a, "t1", Some(fence.clone())).expect("posted while the lock is held");
    assert_eq!(posted[0].result, ResultCode::Ok);

    // A's lock session ends: B may now take the bucket and decide under the id (and decline it),
    // so A's posting under the lost lock is refused, nothing written.
    end_lock_session(&schema, &fence);
    match post_fenced(&a, "t2", Some(fence.clone())) {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("lost"), "{message}"),
        other => panic!("a transfer under a lost lock was not refused: {other:?}"),
    }
    assert!(b.transfer("t2").unwrap().is_none(), "the refused transfer was not posted");
    assert_eq!(b.account("a").unwrap().unwrap().balances.debits_posted, 1);
    drop((held_by_a, fence));

    // B holds the bucket now and posts under its own lock; transfers without a fence are not checked.
    let held_by_b = got(&ask(&b, &[6]));
    assert_eq!(post_fenced(&b, "t2", Some(held_by_b.fence())).unwrap()[0].result, ResultCode::Ok);
    assert_eq!(post_fenced(&a, "t3", None).unwrap()[0].result, ResultCode::Ok);
    assert_eq!(b.account("a").unwrap().unwrap().balances.debits_posted, 3);
    drop(held_by_b);
}
