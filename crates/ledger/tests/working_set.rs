//! `Ledger::from_working_set`: a transient ledger over loaded rows decides a batch exactly as the
//! whole ledger does (the PostgreSQL store depends on it).

use puhui_ledger::{
    AccountFlags, Currency, Id, Ledger, NewAccount, PendingStatus, ResultCode, TransferRequest,
};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn full_ledger() -> Ledger {
    let cny = Currency::iso("CNY").unwrap();
    let mut l = Ledger::new();
    let mut accounts = vec![NewAccount::new(id("bank"), cny)];
    for w in ["alice", "bob", "carol"] {
        accounts.push(NewAccount::new(id(w), cny).with_flags(AccountFlags::WALLET));
    }
    l.create_accounts(accounts, 1_000);
    let c = cny.code();
    let r = l.create_transfers(
        vec![
            TransferRequest::single(id("f1"), id("bank"), id("alice"), 1_000, c),
            TransferRequest::single(id("f2"), id("bank"), id("bob"), 500, c),
            TransferRequest::pending(id("h1"), id("alice"), id("bob"), 300, c, None),
            TransferRequest::pending(id("h2"), id("alice"), id("carol"), 200, c, Some(1)),
            TransferRequest::single(id("x1"), id("carol"), id("bob"), 5, c),
            TransferRequest::post(id("p0"), id("h1"), Some(100)),
            TransferRequest::pending(id("h3"), id("bob"), id("carol"), 50, c, None),
        ],
        2_000,
    );
    assert_eq!(r[4].result, ResultCode::ExceedsCredits);
    l.drain_log().for_each(drop);
    l
}

/// What a store would load for `batch`: the accounts and transfers it names, with their pendings.
fn working_set(l: &Ledger, batch: &[TransferRequest]) -> Ledger {
    let mut transfers = Vec::new();
    for r in batch {
        for t in [Some(&r.id), r.pending_id.as_ref()].into_iter().flatten() {
            if let Some(t) = l.transfer(t) {
                if let Some(p) = &t.request.pending_id {
                    transfers.extend(l.transfer(p));
                }
                transfers.push(t);
            }
        }
    }
    let mut names: Vec<Id> = Vec::new();
    for r in batch {
        names.extend(r.debit_account_id.clone());
        names.extend(r.credit_account_id.clone());
    }
    for t in &transfers {
        if t.result == ResultCode::Ok {
            names.extend(t.request.debit_account_id.clone());
            names.extend(t.request.credit_account_id.clone());
        }
    }
    let accounts = names.iter().filter_map(|n| l.account(n)).collect();
    Ledger::from_working_set(accounts, transfers, l.last_timestamp_ns()).expect("consistent working set")
}

#[test]
fn a_working_set_decides_like_the_whole_ledger() {
    let c = Currency::iso("CNY").unwrap().code();
    let batches: Vec<Vec<TransferRequest>> = vec![
        vec![TransferRequest::single(id("f1"), id("bank"), id("alice"), 1_000, c)],
        vec![TransferRequest::single(id("x1"), id("carol"), id("bob"), 5, c)],
        vec![TransferRequest::post(id("p1"), id("h1"), None)],
        vec![TransferRequest::void(id("v1"), id("h1"))],
        vec![TransferRequest::post(id("p0"), id("h1"), None)],
        vec![TransferRequest::post(id("p0"), id("h1"), Some(100))],
        vec![TransferRequest::void(id("v3"), id("h3")), TransferRequest::post(id("p3"), id("h3"), None)],
        vec![
            TransferRequest {
                linked: true,
                ..TransferRequest::single(id("c1"), id("alice"), id("bob"), 1, c)
            },
            TransferRequest::single(id("c2"), id("bob"), id("nobody"), 1, c),
        ],
        vec![TransferRequest::single(id("t9"), id("alice"), id("carol"), 600, c)],
    ];
    for batch in batches {
        let mut whole = full_ledger();
        // h2 (1 ms) is due: expired before the batch, as the stores do.
        assert_eq!(whole.expire_due(10_000_000), 1);
        whole.drain_log().for_each(drop);
        let mut part = working_set(&whole, &batch);
        let a = whole.create_transfers(batch.clone(), 20_000_000);
        let b = part.create_transfers(batch.clone(), 20_000_000);
        assert_eq!(a, b, "{batch:?}");
        for account in part.accounts() {
            assert_eq!(Some(account.clone()), whole.account(&account.id), "{batch:?}");
        }
        for t in part.transfers() {
            assert_eq!(Some(t.clone()), whole.transfer(&t.request.id), "{batch:?}");
        }
    }
}

#[test]
fn history_points_are_the_batchs_own() {
    let whole = full_ledger();
    let c = Currency::iso("CNY").unwrap().code();
    let batch = vec![
        TransferRequest::post(id("p1"), id("h3"), Some(20)),
        TransferRequest::single(id("t1"), id("bank"), id("bob"), 7, c),
    ];
    let mut part = working_set(&whole, &batch);
    let r = part.create_transfers(batch, 30_000_000);
    assert!(r.iter().all(|e| e.result == ResultCode::Ok));
    let bob = part.account_index("bob").unwrap();
    let points: Vec<_> = part.history_at(bob).collect();
    assert_eq!(points.len(), 2);
    assert_eq!(part.transfer_id_at(points[0].transfer).as_str(), "p1");
    assert!(!points[0].expiry);
    assert_eq!(points[1].timestamp_ns, r[1].timestamp_ns);
    assert_eq!(points[1].balances, part.account("bob").unwrap().balances);
    assert_eq!(part.transfer("h3").unwrap().pending_status, Some(PendingStatus::Posted));
}

#[test]
fn inconsistent_working_sets_are_refused() {
    let whole = full_ledger();
    // A post without its pending transfer, a transfer without its accounts.
    let p0 = whole.transfer("p0").unwrap();
    assert!(
        Ledger::from_working_set(whole.accounts().collect(), vec![p0], whole.last_timestamp_ns()).is_err()
    );
    let f1 = whole.transfer("f1").unwrap();
    assert!(Ledger::from_working_set(vec![], vec![f1.clone()], whole.last_timestamp_ns()).is_err());
    assert!(Ledger::from_working_set(whole.accounts().collect(), vec![f1], 0).is_err(), "from the future");
}
