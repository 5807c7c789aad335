//! The conformance suite every [`LedgerStore`] must pass, so that the embedded store and the
//! PostgreSQL store have the same semantics. Each check gets a fresh, empty store from `make`.
//!
//! Call [`run_all`] from a backend's test; a failed check panics with its name.

use puhui_ledger::{
    AccountFlags, AccountStatus, Currency, Id, NewAccount, Page, ResultCode, StatusAction, TransferRequest,
};

use crate::{LedgerStore, StoreError};

/// Builds a fresh, empty store.
pub type MakeStore<'a> = &'a dyn Fn() -> Box<dyn LedgerStore>;

/// A check of the suite: its name and the function that runs it on a fresh store.
pub type Check = (&'static str, fn(&dyn LedgerStore));

/// Every check, by name.
pub const CHECKS: &[Check] = &[
    ("accounts_are_idempotent", accounts_are_idempotent),
    ("single_transfers_move_money", single_transfers_move_money),
    ("wallet_cannot_go_negative", wallet_cannot_go_negative),
    ("transfer_ids_are_permanent", transfer_ids_are_permanent),
    ("two_phase_post_and_void", two_phase_post_and_void),
    ("linked_chain_is_atomic", linked_chain_is_atomic),
    ("frozen_and_closed_accounts", frozen_and_closed_accounts),
    ("history_pages_and_balance_at", history_pages_and_balance_at),
    ("pending_expires", pending_expires),
    ("batch_limit", batch_limit),
    ("resolved_holds_keep_their_ids", resolved_holds_keep_their_ids),
    ("open_holds_by_timeout", open_holds_by_timeout),
];

/// Runs every check against fresh stores from `make`.
pub fn run_all(make: MakeStore<'_>) {
    for (name, check) in CHECKS {
        let store = make();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(store.as_ref())));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("conformance check {name} failed: {message}");
        }
    }
}

fn id(s: &str) -> Id {
    Id::new(s).expect("valid test id")
}

fn cny() -> Currency {
    Currency::iso("CNY").expect("CNY")
}

fn results(r: Result<Vec<puhui_ledger::EventResult>, StoreError>) -> Vec<ResultCode> {
    r.expect("store call").into_iter().map(|e| e.result).collect()
}

/// A funding (unflagged) account and `n` wallets; the funding account pays each wallet `amount`.
fn setup(store: &dyn LedgerStore, wallets: &[&str], amount: u64) {
    let mut batch = vec![NewAccount::new(id("bank"), cny())];
    for w in wallets {
        batch.push(NewAccount::new(id(w), cny()).with_flags(AccountFlags::WALLET));
    }
    assert!(results(store.create_accounts(batch)).iter().all(|r| *r == ResultCode::Ok));
    if amount > 0 {
        let funding = wallets
            .iter()
            .map(|w| {
                TransferRequest::single(id(&format!("fund-{w}")), id("bank"), id(w), amount, cny().code())
            })
            .collect();
        assert!(results(store.create_transfers(funding)).iter().all(|r| *r == ResultCode::Ok));
    }
}

fn balance(store: &dyn LedgerStore, account: &str) -> i128 {
    store.account(account).expect("read").expect("account exists").balances.net_posted()
}

fn accounts_are_idempotent(store: &dyn LedgerStore) {
    let a = NewAccount::new(id("a"), cny()).with_flags(AccountFlags::WALLET);
    assert_eq!(results(store.create_accounts(vec![a.clone()])), [ResultCode::Ok]);
    assert_eq!(results(store.create_accounts(vec![a.clone()])), [ResultCode::Exists]);
    let other = NewAccount { currency: Currency::iso("USD").unwrap(), ..a.clone() };
    assert_eq!(results(store.create_accounts(vec![other])), [ResultCode::ExistsWithDifferentCurrency]);
    let both = NewAccount {
        id: id("b"),
        flags: AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: true },
        ..a
    };
    assert_eq!(results(store.create_accounts(vec![both])), [ResultCode::FlagsAreMutuallyExclusive]);
    assert!(store.account("b").unwrap().is_none(), "a rejected account leaves no trace");
}

fn single_transfers_move_money(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob"], 10_000);
    let t = TransferRequest::single(id("t1"), id("alice"), id("bob"), 2_500, cny().code());
    assert_eq!(results(store.create_transfers(vec![t])), [ResultCode::Ok]);
    assert_eq!(balance(store, "alice"), 7_500);
    assert_eq!(balance(store, "bob"), 12_500);
    assert_eq!(balance(store, "bank"), -20_000);
    let usd =
        TransferRequest::single(id("t2"), id("alice"), id("bob"), 1, Currency::iso("USD").unwrap().code());
    let same = TransferRequest::single(id("t3"), id("alice"), id("alice"), 1, cny().code());
    let zero = TransferRequest::single(id("t4"), id("alice"), id("bob"), 0, cny().code());
    let missing = TransferRequest::single(id("t5"), id("alice"), id("nobody"), 1, cny().code());
    assert_eq!(
        results(store.create_transfers(vec![usd, same, zero, missing])),
        [
            ResultCode::CurrencyMismatch,
            ResultCode::SameAccount,
            ResultCode::AmountMustBePositive,
            ResultCode::AccountNotFound
        ]
    );
    let t1 = store.transfer("t1").unwrap().expect("t1 recorded");
    assert_eq!(t1.result, ResultCode::Ok);
    assert_eq!(t1.request.amount_minor, Some(2_500));
}

fn wallet_cannot_go_negative(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob"], 100);
    let over = TransferRequest::single(id("t1"), id("alice"), id("bob"), 101, cny().code());
    let exact = TransferRequest::single(id("t2"), id("alice"), id("bob"), 100, cny().code());
    assert_eq!(
        results(store.create_transfers(vec![over, exact])),
        [ResultCode::ExceedsCredits, ResultCode::Ok]
    );
    assert_eq!(balance(store, "alice"), 0);
    let max = TransferRequest::single(id("t3"), id("bank"), id("bob"), u64::MAX, cny().code());
    assert_eq!(results(store.create_transfers(vec![max])), [ResultCode::Overflow]);
}

fn transfer_ids_are_permanent(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob"], 100);
    let t = TransferRequest::single(id("t1"), id("alice"), id("bob"), 60, cny().code());
    assert_eq!(results(store.create_transfers(vec![t.clone()])), [ResultCode::Ok]);
    assert_eq!(results(store.create_transfers(vec![t.clone()])), [ResultCode::Exists]);
    let more = TransferRequest { amount_minor: Some(61), ..t.clone() };
    assert_eq!(results(store.create_transfers(vec![more])), [ResultCode::ExistsWithDifferentAmount]);
    assert_eq!(balance(store, "alice"), 40, "a replay moves no money");
    // A failure is permanent too: the same id keeps its first result.
    let fail = TransferRequest::single(id("t2"), id("alice"), id("bob"), 50, cny().code());
    assert_eq!(results(store.create_transfers(vec![fail.clone()])), [ResultCode::ExceedsCredits]);
    let top_up = TransferRequest::single(id("t3"), id("bank"), id("alice"), 100, cny().code());
    assert_eq!(
        results(store.create_transfers(vec![top_up, fail])),
        [ResultCode::Ok, ResultCode::ExceedsCredits]
    );
}

fn two_phase_post_and_void(store: &dyn LedgerStore) {
    setup(store, &["alice", "shop"], 1_000);
    let hold = TransferRequest::pending(id("h1"), id("alice"), id("shop"), 600, cny().code(), None);
    assert_eq!(results(store.create_transfers(vec![hold])), [ResultCode::Ok]);
    let a = store.account("alice").unwrap().unwrap();
    assert_eq!((a.balances.debits_pending, a.balances.available()), (600, 400));
    let too_much = TransferRequest::single(id("t1"), id("alice"), id("shop"), 401, cny().code());
    assert_eq!(results(store.create_transfers(vec![too_much])), [ResultCode::ExceedsCredits]);
    let post = TransferRequest::post(id("p1"), id("h1"), Some(450));
    assert_eq!(results(store.create_transfers(vec![post])), [ResultCode::Ok]);
    let a = store.account("alice").unwrap().unwrap();
    assert_eq!((a.balances.debits_pending, a.balances.net_posted()), (0, 550));
    let again = TransferRequest::void(id("v1"), id("h1"));
    assert_eq!(results(store.create_transfers(vec![again])), [ResultCode::PendingAlreadyPosted]);
    let h2 = TransferRequest::pending(id("h2"), id("alice"), id("shop"), 100, cny().code(), None);
    let v2 = TransferRequest::void(id("v2"), id("h2"));
    let p2 = TransferRequest::post(id("p2"), id("h2"), None);
    assert_eq!(
        results(store.create_transfers(vec![h2, v2, p2])),
        [ResultCode::Ok, ResultCode::Ok, ResultCode::PendingAlreadyVoided]
    );
    assert_eq!(store.account("alice").unwrap().unwrap().balances.available(), 550);
}

fn linked_chain_is_atomic(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob", "carol"], 100);
    let mut first = TransferRequest::single(id("c1"), id("alice"), id("bob"), 80, cny().code());
    first.linked = true;
    let second = TransferRequest::single(id("c2"), id("alice"), id("carol"), 80, cny().code());
    assert_eq!(
        results(store.create_transfers(vec![first.clone(), second])),
        [ResultCode::LinkedEventFailed, ResultCode::ExceedsCredits]
    );
    assert_eq!(balance(store, "alice"), 100);
    assert!(store.transfer("c1").unwrap().is_none(), "a failed chain leaves no trace");
    let ok_second = TransferRequest::single(id("c2"), id("bob"), id("carol"), 80, cny().code());
    assert_eq!(
        results(store.create_transfers(vec![first.clone(), ok_second])),
        [ResultCode::Ok, ResultCode::Ok]
    );
    assert_eq!((balance(store, "alice"), balance(store, "bob"), balance(store, "carol")), (20, 100, 180));
    let open = TransferRequest { id: id("c3"), ..first };
    assert_eq!(results(store.create_transfers(vec![open])), [ResultCode::LinkedEventChainOpen]);
}

fn frozen_and_closed_accounts(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob"], 100);
    let hold = TransferRequest::pending(id("h1"), id("alice"), id("bob"), 10, cny().code(), None);
    assert_eq!(results(store.create_transfers(vec![hold])), [ResultCode::Ok]);
    assert_eq!(store.set_account_status(&id("alice"), StatusAction::Freeze).unwrap().result, ResultCode::Ok);
    assert_eq!(store.account("alice").unwrap().unwrap().status, AccountStatus::Frozen);
    let t = TransferRequest::single(id("t1"), id("alice"), id("bob"), 1, cny().code());
    let post = TransferRequest::post(id("p1"), id("h1"), None);
    assert_eq!(
        results(store.create_transfers(vec![t, post])),
        [ResultCode::AccountFrozen, ResultCode::AccountFrozen]
    );
    let void = TransferRequest::void(id("v1"), id("h1"));
    assert_eq!(
        results(store.create_transfers(vec![void])),
        [ResultCode::Ok],
        "a frozen account's hold can be released"
    );
    assert_eq!(
        store.set_account_status(&id("alice"), StatusAction::Close).unwrap().result,
        ResultCode::AccountBalanceNotZero
    );
    assert_eq!(
        store.set_account_status(&id("alice"), StatusAction::Unfreeze).unwrap().result,
        ResultCode::Ok
    );
    let out = TransferRequest::single(id("t2"), id("alice"), id("bank"), 100, cny().code());
    assert_eq!(results(store.create_transfers(vec![out])), [ResultCode::Ok]);
    assert_eq!(store.set_account_status(&id("alice"), StatusAction::Close).unwrap().result, ResultCode::Ok);
    let after = TransferRequest::single(id("t3"), id("bank"), id("alice"), 1, cny().code());
    assert_eq!(results(store.create_transfers(vec![after])), [ResultCode::AccountClosed]);
    assert_eq!(
        store.set_account_status(&id("alice"), StatusAction::Unfreeze).unwrap().result,
        ResultCode::AccountClosed
    );
    assert_eq!(
        store.set_account_status(&id("nobody"), StatusAction::Freeze).unwrap().result,
        ResultCode::AccountNotFound
    );
}

fn history_pages_and_balance_at(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob"], 0);
    let mut stamps = Vec::new();
    for i in 0..5 {
        let t = TransferRequest::single(id(&format!("t{i}")), id("bank"), id("alice"), 10, cny().code());
        let r = store.create_transfers(vec![t]).unwrap();
        stamps.push(r[0].timestamp_ns);
    }
    let page = |after: Option<&str>, before: Option<&str>| {
        let (items, more) = store
            .account_transfers("alice", Page { limit: 2, starting_after: after, ending_before: before })
            .unwrap();
        (items.into_iter().map(|t| t.request.id.to_string()).collect::<Vec<_>>(), more)
    };
    assert_eq!(page(None, None), (vec!["t0".to_string(), "t1".into()], true));
    assert_eq!(page(Some("t1"), None), (vec!["t2".to_string(), "t3".into()], true));
    assert_eq!(page(Some("t3"), None), (vec!["t4".to_string()], false));
    assert_eq!(page(None, Some("t3")), (vec!["t1".to_string(), "t2".into()], true));
    assert_eq!(page(None, Some("t1")), (vec!["t0".to_string()], false));
    assert!(matches!(
        store
            .account_transfers("alice", Page { limit: 2, starting_after: Some("nope"), ending_before: None }),
        Err(StoreError::CursorNotFound)
    ));
    assert!(matches!(store.balance_at("nobody", 0), Err(StoreError::AccountNotFound)));
    assert_eq!(store.balance_at("alice", stamps[0] - 1).unwrap().credits_posted, 0);
    assert_eq!(store.balance_at("alice", stamps[0]).unwrap().credits_posted, 10);
    assert_eq!(store.balance_at("alice", stamps[2]).unwrap().credits_posted, 30);
    assert_eq!(store.balance_at("alice", u64::MAX).unwrap().credits_posted, 50);
}

fn pending_expires(store: &dyn LedgerStore) {
    setup(store, &["alice", "bob"], 100);
    let hold = TransferRequest::pending(id("h1"), id("alice"), id("bob"), 70, cny().code(), Some(1));
    assert_eq!(results(store.create_transfers(vec![hold])), [ResultCode::Ok]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let _ = store.expire_due().unwrap();
    let a = store.account("alice").unwrap().unwrap();
    assert_eq!(a.balances.debits_pending, 0, "the hold was released");
    let t = store.transfer("h1").unwrap().unwrap();
    assert_eq!(t.pending_status, Some(puhui_ledger::PendingStatus::Expired));
    let post = TransferRequest::post(id("p1"), id("h1"), None);
    assert_eq!(results(store.create_transfers(vec![post])), [ResultCode::PendingExpired]);
}

/// Retries of posts and voids against a hold resolved earlier (in another call) compare with what
/// was recorded, including "post the whole hold" against a partial post, and move no money.
fn resolved_holds_keep_their_ids(store: &dyn LedgerStore) {
    setup(store, &["alice", "shop"], 1_000);
    let hold = TransferRequest::pending(id("h1"), id("alice"), id("shop"), 300, cny().code(), None);
    let post = TransferRequest::post(id("p1"), id("h1"), None);
    assert_eq!(results(store.create_transfers(vec![hold])), [ResultCode::Ok]);
    assert_eq!(results(store.create_transfers(vec![post.clone()])), [ResultCode::Ok]);
    assert_eq!(results(store.create_transfers(vec![post])), [ResultCode::Exists]);
    let same_amount = TransferRequest::post(id("p1"), id("h1"), Some(300));
    let less = TransferRequest::post(id("p1"), id("h1"), Some(299));
    assert_eq!(
        results(store.create_transfers(vec![same_amount, less])),
        [ResultCode::Exists, ResultCode::ExistsWithDifferentAmount]
    );
    let void = TransferRequest::void(id("v1"), id("h1"));
    assert_eq!(results(store.create_transfers(vec![void.clone()])), [ResultCode::PendingAlreadyPosted]);
    assert_eq!(results(store.create_transfers(vec![void])), [ResultCode::PendingAlreadyPosted]);
    // A partial post: omitting the amount on a retry no longer matches it.
    let h2 = TransferRequest::pending(id("h2"), id("alice"), id("shop"), 200, cny().code(), None);
    let p2 = TransferRequest::post(id("p2"), id("h2"), Some(50));
    assert_eq!(results(store.create_transfers(vec![h2, p2])), [ResultCode::Ok, ResultCode::Ok]);
    let whole = TransferRequest::post(id("p2"), id("h2"), None);
    assert_eq!(results(store.create_transfers(vec![whole])), [ResultCode::ExistsWithDifferentAmount]);
    let a = store.account("alice").unwrap().unwrap();
    assert_eq!((a.balances.debits_posted, a.balances.debits_pending), (350, 0));
    let (page, more) = store.account_transfers("alice", Page { limit: 10, ..Default::default() }).unwrap();
    let ids: Vec<String> = page.iter().map(|t| t.request.id.to_string()).collect();
    assert_eq!(
        (ids, more),
        (vec!["fund-alice".to_string(), "h1".into(), "p1".into(), "h2".into(), "p2".into()], false)
    );
    let h1 = store.transfer("h1").unwrap().unwrap();
    assert_eq!(h1.pending_status, Some(puhui_ledger::PendingStatus::Posted));
    assert_eq!(h1.resolved_at_ns, Some(store.transfer("p1").unwrap().unwrap().timestamp_ns));
}

/// Open holds with a timeout, listed in expiry order with their timeouts, a bounded number at a
/// time: resolved holds, holds without a timeout and single transfers are left out; paging sees
/// each once, and a cursor on a hold resolved since pages on from its place.
fn open_holds_by_timeout(store: &dyn LedgerStore) {
    setup(store, &["alice", "shop"], 1_000);
    let hold = |name: &str, timeout_ms: Option<u64>| {
        TransferRequest::pending(id(name), id("alice"), id("shop"), 10, cny().code(), timeout_ms)
    };
    let (minute, two) = (Some(60_000), Some(120_000));
    assert_eq!(results(store.create_transfers(vec![hold("h0", minute)])), [ResultCode::Ok]);
    let batch = vec![
        hold("h1", minute),
        hold("h2", two),
        hold("h3", minute),
        hold("h4", None),
        hold("h5", minute),
        TransferRequest::void(id("v5"), id("h5")),
        TransferRequest::single(id("t1"), id("alice"), id("shop"), 10, cny().code()),
    ];
    assert_eq!(results(store.create_transfers(batch)), [ResultCode::Ok; 7]);
    let named = |page: Vec<(Id, u64)>| page.into_iter().map(|(i, t)| (i.to_string(), t)).collect::<Vec<_>>();
    let all = store.open_holds(None, 100).unwrap();
    let expected: Vec<(String, u64)> = [("h0", 60_000), ("h1", 60_000), ("h3", 60_000), ("h2", 120_000)]
        .map(|(i, t)| (i.to_string(), t))
        .into();
    assert_eq!((named(all.0), all.1), (expected.clone(), None));
    // One hold per page: the same four in order, and the cursor ends with them.
    let mut pages = Vec::new();
    let mut after: Option<Id> = None;
    for _page in 0..10 {
        let (page, next) = store.open_holds(after.as_ref().map(Id::as_str), 1).unwrap();
        pages.extend(named(page));
        after = next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(pages, expected);
    // A resolved hold leaves the list; a cursor on it still pages on from its place (past h0).
    let post = TransferRequest::post(id("p1"), id("h1"), None);
    assert_eq!(results(store.create_transfers(vec![post])), [ResultCode::Ok]);
    let ids = |page: (Vec<(Id, u64)>, Option<Id>)| {
        page.0.into_iter().map(|(i, _)| i.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids(store.open_holds(None, 100).unwrap()), ["h0", "h3", "h2"]);
    assert_eq!(ids(store.open_holds(Some("h1"), 100).unwrap()), ["h3", "h2"]);
}

fn batch_limit(store: &dyn LedgerStore) {
    let batch =
        (0..=puhui_ledger::BATCH_EVENTS_MAX).map(|i| NewAccount::new(id(&format!("a{i}")), cny())).collect();
    assert!(matches!(store.create_accounts(batch), Err(StoreError::BatchTooLarge { .. })));
    assert!(store.account("a0").unwrap().is_none());
}
