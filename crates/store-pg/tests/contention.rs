//! Several nodes on one database: independent `PgStore`s (separate connection pools, separate
//! committers) hammer a few hot wallets with conflicting transfers, holds, posts, voids and linked
//! chains. Afterwards the invariants hold, every acknowledged event is recorded with its result, no
//! hold is resolved twice, the journal verifies, and no deadlock ever surfaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use puhui_ledger::{Id, ResultCode};
use puhui_store::LedgerStore;
use puhui_store_pg::testing::TestSchema;
use puhui_store_pg::{hammer, PgOptions, PgStore};

const NODES: usize = 3;
const CLIENTS_PER_NODE: usize = 4;
const ROUNDS: usize = 60;

#[test]
fn several_nodes_on_hot_accounts_keep_every_invariant() {
    let schema = TestSchema::new("contention");
    let nodes: Vec<Arc<PgStore>> = (0..NODES)
        .map(|_| {
            let options = PgOptions { expire_every_ms: 5, ..schema.options() };
            Arc::new(PgStore::open_with(schema.url(), options).expect("open a node"))
        })
        .collect();
    hammer::setup(nodes[0].as_ref()).unwrap();
    let names: Vec<String> = (0..NODES * CLIENTS_PER_NODE)
        .map(|c| format!("n{}c{}", c / CLIENTS_PER_NODE, c % CLIENTS_PER_NODE))
        .collect();
    let acked: Arc<Mutex<HashMap<Id, ResultCode>>> = Arc::default();
    let threads: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let store = Arc::clone(&nodes[c / CLIENTS_PER_NODE]);
            let (name, peers, acked) = (name.clone(), names.clone(), Arc::clone(&acked));
            std::thread::spawn(move || {
                let mut mine = HashMap::new();
                hammer::run_client(store.as_ref(), &name, &peers, 7 + c as u64, ROUNDS, &mut |id, code| {
                    mine.insert(id.clone(), code);
                })
                .unwrap_or_else(|e| panic!("client {name}: {e}"));
                acked.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    let acked = acked.lock().unwrap();
    let summary = hammer::check(schema.url(), Some(schema.name()), nodes[1].as_ref(), &acked).unwrap();
    let deadlocks: u64 =
        nodes.iter().map(|n| n.stats().deadlocks.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert_eq!(deadlocks, 0, "the lock order makes deadlocks impossible");
    let commits: u64 =
        nodes.iter().map(|n| n.stats().commits.load(std::sync::atomic::Ordering::Relaxed)).sum();
    let stale: u64 =
        nodes.iter().map(|n| n.stats().stale_retries.load(std::sync::atomic::Ordering::Relaxed)).sum();
    println!("{summary}; {commits} commits, {stale} stale-working-set retries");
    // The load really conflicted: some holds were resolved and some spends refused.
    assert!(acked.values().any(|c| *c == ResultCode::ExceedsCredits));
    assert!(acked
        .values()
        .any(|c| matches!(c, ResultCode::PendingAlreadyPosted | ResultCode::PendingAlreadyVoided)));
}

#[test]
fn the_same_transfer_on_two_nodes_at_once_moves_money_once() {
    use puhui_ledger::{Currency, TransferRequest};
    let schema = TestSchema::new("same_id");
    let a = Arc::new(PgStore::open_with(schema.url(), schema.options()).unwrap());
    let b = Arc::new(PgStore::open_with(schema.url(), schema.options()).unwrap());
    hammer::setup(a.as_ref()).unwrap();
    let cny = Currency::iso("CNY").unwrap().code();
    for round in 0..40 {
        let t = TransferRequest::single(
            Id::new(&format!("dup-{round}")).unwrap(),
            Id::new("hot-0").unwrap(),
            Id::new("hot-1").unwrap(),
            1,
            cny,
        );
        let (t1, t2) = (t.clone(), t);
        let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
        let x = std::thread::spawn(move || a2.create_transfers(vec![t1]).unwrap()[0].result);
        let y = std::thread::spawn(move || b2.create_transfers(vec![t2]).unwrap()[0].result);
        let mut r = [x.join().unwrap(), y.join().unwrap()];
        r.sort();
        assert_eq!(r, [ResultCode::Ok, ResultCode::Exists], "round {round}");
    }
    let hot0 = a.account("hot-0").unwrap().unwrap();
    assert_eq!(hot0.balances.debits_posted, 40);
    puhui_store_pg::verify::verify(schema.url(), Some(schema.name())).unwrap();
}
