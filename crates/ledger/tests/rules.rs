//! Behaviour of the ledger state machine: every result code it can give, account status changes,
//! limits, holds and their expiry, linked chains, idempotency, history queries and replay.

mod common;

use common::*;
use puhui_ledger::{
    AccountFlags, AccountStatus, Balances, EventResult, Ledger, LogItem, NewAccount, Page, PendingStatus,
    QueryError, References, ResultCode, StatusAction, TransferKind, TransferRequest, METADATA_BYTES_MAX,
    PENDING_TIMEOUT_MS_MAX,
};
use ResultCode as R;

/// A plausible wall-clock start (2023-11-14).
const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

const CREDIT_LINE: AccountFlags =
    AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: true };

fn plain(name: &str) -> NewAccount {
    NewAccount::new(id(name), cny())
}

fn wallet(name: &str) -> NewAccount {
    plain(name).with_flags(AccountFlags::WALLET)
}

fn single(tid: &str, debit: &str, credit: &str, amount: u64) -> TransferRequest {
    TransferRequest::single(id(tid), id(debit), id(credit), amount, code("CNY"))
}

fn pending(tid: &str, debit: &str, credit: &str, amount: u64, timeout_ms: Option<u64>) -> TransferRequest {
    TransferRequest::pending(id(tid), id(debit), id(credit), amount, code("CNY"), timeout_ms)
}

fn post(tid: &str, pending_id: &str, amount: Option<u64>) -> TransferRequest {
    TransferRequest::post(id(tid), id(pending_id), amount)
}

fn void(tid: &str, pending_id: &str) -> TransferRequest {
    TransferRequest::void(id(tid), id(pending_id))
}

fn linked(mut request: TransferRequest) -> TransferRequest {
    request.linked = true;
    request
}

fn bal(ledger: &Ledger, account: &str) -> Balances {
    ledger.account(account).expect("account exists").balances
}

fn results(events: &[EventResult]) -> Vec<ResultCode> {
    events.iter().map(|e| e.result).collect()
}

/// `bank` (no flags), wallets `alice` (funded with 1000) and `bob`, plain `carol`, `usd_bank` in USD.
fn setup() -> Ledger {
    let mut l = Ledger::new();
    let created = l.create_accounts(
        vec![
            plain("bank"),
            wallet("alice"),
            wallet("bob"),
            plain("carol"),
            NewAccount::new(id("usd_bank"), usd()),
        ],
        T0,
    );
    assert!(created.iter().all(|r| r.result == R::Ok), "{created:?}");
    assert_eq!(one(&mut l, single("fund", "bank", "alice", 1000), T0).result, R::Ok);
    l
}

/// Asserts the request was refused without leaving a trace: no timestamp, no record, no log.
fn assert_rejected_without_trace(l: &mut Ledger, request: TransferRequest, expected: ResultCode) {
    let tid = request.id.clone();
    let before = l.transfers_count();
    let _ = l.drain_log().count();
    let r = one(l, request, T0);
    assert_eq!(r.result, expected, "{tid}");
    assert_eq!(r.timestamp_ns, 0, "{tid}: a rejected event has no timestamp");
    assert!(l.transfer(&tid).is_none(), "{tid}: not recorded");
    assert_eq!(l.transfers_count(), before);
    assert!(!l.has_log(), "{tid}: nothing to journal");
}

/// Asserts the request failed and the failure was recorded under its id.
fn assert_recorded_failure(l: &mut Ledger, request: TransferRequest, expected: ResultCode) {
    let tid = request.id.clone();
    let r = one(l, request.clone(), T0);
    assert_eq!(r.result, expected, "{tid}");
    assert!(r.timestamp_ns > 0, "{tid}: a recorded failure has a timestamp");
    let t = l.transfer(&tid).expect("failure recorded");
    assert_eq!(t.result, expected);
    assert_eq!(t.timestamp_ns, r.timestamp_ns);
    assert_eq!(t.pending_status, None);
    // The same request again gives the same failure with the original timestamp.
    assert_eq!(one(l, request, T0), r, "{tid}: a recorded failure is permanent");
    l.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------------------------
// Transfer result codes

#[test]
fn ok_applies_and_exists_returns_the_original() {
    let mut l = setup();
    let r = one(&mut l, single("t1", "alice", "bob", 300), T0 + 10);
    assert_eq!(r.result, R::Ok);
    assert!(r.timestamp_ns >= T0 + 10);
    assert_eq!(bal(&l, "alice"), Balances { credits_posted: 1000, debits_posted: 300, ..Default::default() });
    assert_eq!(bal(&l, "bob"), Balances { credits_posted: 300, ..Default::default() });

    let count = l.transfers_count();
    let again = one(&mut l, single("t1", "alice", "bob", 300), T0 + 20);
    assert_eq!(again, EventResult { result: R::Exists, timestamp_ns: r.timestamp_ns });
    assert_eq!(l.transfers_count(), count);
    assert_eq!(bal(&l, "alice").debits_posted, 300, "exists changes nothing");

    let t = l.transfer("t1").unwrap();
    assert_eq!(t.result, R::Ok);
    assert_eq!(t.request, single("t1", "alice", "bob", 300));
    assert_eq!(t.timestamp_ns, r.timestamp_ns);
    assert_eq!(t.pending_status, None);
    l.check_invariants().unwrap();
}

#[test]
fn exists_with_different_fields() {
    let mut l = setup();
    let mut original = single("t1", "bank", "alice", 100);
    original.code = 1;
    original.metadata = Some(b"{\"a\":1}".to_vec().into_boxed_slice());
    original.references.end_to_end_id = Some("E2E-1".into());
    original.references.uetr = Some([7; 16]);
    assert_eq!(one(&mut l, original.clone(), T0).result, R::Ok);
    let before = bal(&l, "alice");

    let variant = |f: &dyn Fn(&mut TransferRequest)| {
        let mut r = original.clone();
        f(&mut r);
        r
    };
    let cases: Vec<(TransferRequest, ResultCode)> = vec![
        (variant(&|r| r.kind = TransferKind::Pending), R::ExistsWithDifferentKind),
        (variant(&|r| r.credit_account_id = Some(id("bob"))), R::ExistsWithDifferentAccounts),
        (variant(&|r| r.debit_account_id = Some(id("carol"))), R::ExistsWithDifferentAccounts),
        (variant(&|r| r.amount_minor = Some(101)), R::ExistsWithDifferentAmount),
        (variant(&|r| r.currency = Some(code("USD"))), R::ExistsWithDifferentCurrency),
        (variant(&|r| r.code = 2), R::ExistsWithDifferentCode),
        (variant(&|r| r.metadata = None), R::ExistsWithDifferentMetadata),
        (variant(&|r| r.metadata = Some(b"{}".to_vec().into())), R::ExistsWithDifferentMetadata),
        (variant(&|r| r.references.end_to_end_id = Some("E2E-2".into())), R::ExistsWithDifferentReferences),
        (variant(&|r| r.references.uetr = None), R::ExistsWithDifferentReferences),
        (variant(&|_| {}), R::Exists),
    ];
    for (request, expected) in cases {
        let r = one(&mut l, request.clone(), T0);
        assert_eq!(r.result, expected, "{request:?}");
        if expected != R::Exists {
            assert_eq!(r.timestamp_ns, 0);
        }
    }
    assert_eq!(bal(&l, "alice"), before, "nothing was applied");
    assert_eq!(l.transfer("t1").unwrap().request, original);

    // Timeout and pending id.
    assert_eq!(one(&mut l, pending("p1", "bank", "carol", 50, Some(1000)), T0).result, R::Ok);
    assert_eq!(one(&mut l, pending("p2", "bank", "carol", 50, None), T0).result, R::Ok);
    assert_eq!(
        one(&mut l, pending("p1", "bank", "carol", 50, Some(2000)), T0).result,
        R::ExistsWithDifferentTimeout
    );
    assert_eq!(
        one(&mut l, pending("p1", "bank", "carol", 50, None), T0).result,
        R::ExistsWithDifferentTimeout
    );
    assert_eq!(
        one(&mut l, pending("p2", "bank", "carol", 50, Some(0)), T0).result,
        R::Exists,
        "0 means no timeout"
    );
    assert_eq!(
        one(&mut l, pending("p2", "bank", "carol", 50, Some(5)), T0).result,
        R::ExistsWithDifferentTimeout
    );
    assert_eq!(one(&mut l, pending("p1", "bank", "carol", 50, Some(1000)), T0).result, R::Exists);

    assert_eq!(one(&mut l, post("x1", "p1", Some(20)), T0).result, R::Ok);
    assert_eq!(one(&mut l, post("x1", "p2", Some(20)), T0).result, R::ExistsWithDifferentPendingId);
    assert_eq!(one(&mut l, post("x1", "p1", Some(21)), T0).result, R::ExistsWithDifferentAmount);
    assert_eq!(one(&mut l, void("x1", "p1"), T0).result, R::ExistsWithDifferentKind);
    assert_eq!(one(&mut l, post("x1", "p1", Some(20)), T0).result, R::Exists);
    // Omitted fields of a post mean "as in the pending transfer" and match.
    let mut full = post("x1", "p1", Some(20));
    full.debit_account_id = Some(id("bank"));
    full.credit_account_id = Some(id("carol"));
    full.currency = Some(code("CNY"));
    assert_eq!(one(&mut l, full.clone(), T0).result, R::Exists);
    full.credit_account_id = Some(id("alice"));
    assert_eq!(one(&mut l, full, T0).result, R::ExistsWithDifferentAccounts);

    assert_eq!(one(&mut l, void("v2", "p2"), T0).result, R::Ok);
    assert_eq!(one(&mut l, void("v2", "p2"), T0).result, R::Exists);
    assert_eq!(one(&mut l, void("v2", "p1"), T0).result, R::ExistsWithDifferentPendingId);
    assert_eq!(one(&mut l, post("v2", "p2", None), T0).result, R::ExistsWithDifferentKind);
    l.check_invariants().unwrap();
}

#[test]
fn a_retry_of_the_same_request_is_exists_even_with_fields_its_kind_ignores() {
    let mut l = setup();
    // A pending id on a single-phase or pending transfer means nothing; the retry is the same event.
    let mut with_pending_id = single("t1", "bank", "alice", 5);
    with_pending_id.pending_id = Some(id("fund"));
    let first = one(&mut l, with_pending_id.clone(), T0);
    assert_eq!(first.result, R::Ok);
    assert_eq!(one(&mut l, with_pending_id.clone(), T0), EventResult { result: R::Exists, ..first });
    with_pending_id.pending_id = None;
    assert_eq!(one(&mut l, with_pending_id, T0).result, R::Exists);
    let mut hold = pending("h1", "bank", "alice", 5, Some(0));
    hold.pending_id = Some(id("x"));
    assert_eq!(one(&mut l, hold.clone(), T0).result, R::Ok);
    assert_eq!(one(&mut l, hold.clone(), T0).result, R::Exists);
    hold.timeout_ms = None;
    assert_eq!(one(&mut l, hold, T0).result, R::Exists, "a timeout of 0 is no timeout");
    // The same on a recorded failure.
    let mut failed = single("t2", "bank", "ghost", 5);
    failed.pending_id = Some(id("fund"));
    let first = one(&mut l, failed.clone(), T0);
    assert_eq!(first.result, R::AccountNotFound);
    assert_eq!(one(&mut l, failed, T0), first);
    // A replay of the journal agrees.
    let replayed = replay_all(drain_events(&mut l)).unwrap();
    assert_same_state(&l, &replayed, ["t1", "h1", "t2"]);
}

#[test]
fn account_not_found_is_recorded_and_permanent() {
    let mut l = setup();
    assert_recorded_failure(&mut l, single("t1", "bank", "ghost", 10), R::AccountNotFound);
    assert_recorded_failure(&mut l, single("t2", "ghost", "bank", 10), R::AccountNotFound);
    // The account appears later: the id keeps its recorded result.
    assert_eq!(open(&mut l, plain("ghost"), T0).result, R::Ok);
    assert_eq!(one(&mut l, single("t1", "bank", "ghost", 10), T0).result, R::AccountNotFound);
    assert_eq!(bal(&l, "ghost"), Balances::default());
    // A new id goes through.
    assert_eq!(one(&mut l, single("t3", "bank", "ghost", 10), T0).result, R::Ok);
    // A different request under a failed id is still compared field by field.
    assert_eq!(one(&mut l, single("t1", "bank", "ghost", 11), T0).result, R::ExistsWithDifferentAmount);
}

#[test]
fn currency_mismatch() {
    let mut l = setup();
    let mut usd_transfer = single("t1", "bank", "alice", 10);
    usd_transfer.currency = Some(code("USD"));
    assert_recorded_failure(&mut l, usd_transfer, R::CurrencyMismatch);
    // Accounts in two currencies.
    assert_recorded_failure(&mut l, single("t2", "bank", "usd_bank", 10), R::CurrencyMismatch);
    let mut usd_to_cny = single("t3", "usd_bank", "bank", 10);
    usd_to_cny.currency = Some(code("USD"));
    assert_recorded_failure(&mut l, usd_to_cny, R::CurrencyMismatch);
    // A post naming another currency than its pending transfer's.
    assert_eq!(one(&mut l, pending("p1", "bank", "carol", 10, None), T0).result, R::Ok);
    let mut p = post("x1", "p1", None);
    p.currency = Some(code("USD"));
    assert_recorded_failure(&mut l, p, R::CurrencyMismatch);
    assert_eq!(l.transfer("p1").unwrap().pending_status, Some(PendingStatus::Pending));
}

#[test]
fn input_errors_are_rejected_without_trace() {
    let mut l = setup();
    assert_rejected_without_trace(&mut l, single("t", "bank", "bank", 10), R::SameAccount);
    assert_rejected_without_trace(&mut l, single("t", "bank", "alice", 0), R::AmountMustBePositive);
    let mut no_amount = single("t", "bank", "alice", 10);
    no_amount.amount_minor = None;
    assert_rejected_without_trace(&mut l, no_amount, R::AmountMustBePositive);
    let mut no_debit = single("t", "bank", "alice", 10);
    no_debit.debit_account_id = None;
    assert_rejected_without_trace(&mut l, no_debit, R::AccountRequired);
    let mut no_credit = pending("t", "bank", "alice", 10, None);
    no_credit.credit_account_id = None;
    assert_rejected_without_trace(&mut l, no_credit, R::AccountRequired);
    let mut no_currency = single("t", "bank", "alice", 10);
    no_currency.currency = None;
    assert_rejected_without_trace(&mut l, no_currency, R::CurrencyRequired);
    let mut big_metadata = single("t", "bank", "alice", 10);
    big_metadata.metadata = Some(vec![b'x'; METADATA_BYTES_MAX + 1].into());
    assert_rejected_without_trace(&mut l, big_metadata, R::MetadataTooLarge);
    let mut long_e2e = single("t", "bank", "alice", 10);
    long_e2e.references.end_to_end_id = Some("E".repeat(36).into());
    assert_rejected_without_trace(&mut l, long_e2e, R::ReferenceInvalid);
    let mut empty_e2e = single("t", "bank", "alice", 10);
    empty_e2e.references.end_to_end_id = Some("".into());
    assert_rejected_without_trace(&mut l, empty_e2e, R::ReferenceInvalid);
    assert_rejected_without_trace(
        &mut l,
        pending("t", "bank", "alice", 10, Some(PENDING_TIMEOUT_MS_MAX + 1)),
        R::TimeoutTooLarge,
    );
    let mut timed_single = single("t", "bank", "alice", 10);
    timed_single.timeout_ms = Some(5);
    assert_rejected_without_trace(&mut l, timed_single, R::TimeoutReservedForPending);

    // Posts and voids.
    assert_eq!(one(&mut l, pending("p1", "bank", "carol", 10, None), T0).result, R::Ok);
    let mut no_pending_id = post("t", "p1", None);
    no_pending_id.pending_id = None;
    assert_rejected_without_trace(&mut l, no_pending_id, R::PendingNotFound);
    assert_rejected_without_trace(&mut l, post("t", "p1", Some(0)), R::AmountMustBePositive);
    let mut timed_post = post("t", "p1", None);
    timed_post.timeout_ms = Some(1);
    assert_rejected_without_trace(&mut l, timed_post, R::TimeoutReservedForPending);
    let mut void_with_amount = void("t", "p1");
    void_with_amount.amount_minor = Some(10);
    assert_rejected_without_trace(&mut l, void_with_amount, R::AmountReservedForPost);
    let mut same = post("t", "p1", None);
    same.debit_account_id = Some(id("bank"));
    same.credit_account_id = Some(id("bank"));
    assert_rejected_without_trace(&mut l, same, R::SameAccount);
    let mut big_metadata = void("t", "p1");
    big_metadata.metadata = Some(vec![0; METADATA_BYTES_MAX + 1].into());
    assert_rejected_without_trace(&mut l, big_metadata, R::MetadataTooLarge);

    // The limits themselves are accepted, and the unused id is still free.
    let mut at_limits = pending("t", "bank", "alice", 10, Some(PENDING_TIMEOUT_MS_MAX));
    at_limits.metadata = Some(vec![b'x'; METADATA_BYTES_MAX].into());
    at_limits.references.end_to_end_id = Some("E".repeat(35).into());
    assert_eq!(one(&mut l, at_limits.clone(), T0).result, R::Ok);
    assert_eq!(l.transfer("t").unwrap().request, at_limits);
    assert_eq!(l.transfer("p1").unwrap().pending_status, Some(PendingStatus::Pending));
    l.check_invariants().unwrap();
}

#[test]
fn exceeds_credits_and_exceeds_debits() {
    let mut l = setup();
    assert_recorded_failure(&mut l, single("t1", "alice", "bob", 1001), R::ExceedsCredits);
    assert_eq!(one(&mut l, pending("p1", "alice", "bob", 600, None), T0).result, R::Ok);
    // The hold counts against the funds.
    assert_recorded_failure(&mut l, single("t2", "alice", "bob", 401), R::ExceedsCredits);
    assert_recorded_failure(&mut l, pending("t3", "alice", "bob", 401, None), R::ExceedsCredits);
    assert_eq!(one(&mut l, single("t4", "alice", "bob", 400), T0).result, R::Ok);
    assert_eq!(l.account("alice").unwrap().balances.available(), 0);
    // Incoming holds do not count as funds.
    assert_eq!(one(&mut l, pending("p2", "bank", "bob", 1000, None), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("t5", "bob", "carol", 401), R::ExceedsCredits);

    // The mirror image: a credit line may be credited only up to what was debited from it.
    assert_eq!(open(&mut l, plain("line").with_flags(CREDIT_LINE), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("c1", "bank", "line", 1), R::ExceedsDebits);
    assert_eq!(one(&mut l, single("c2", "line", "carol", 500), T0).result, R::Ok);
    assert_eq!(one(&mut l, pending("c3", "bank", "line", 300, None), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("c4", "bank", "line", 201), R::ExceedsDebits);
    assert_eq!(one(&mut l, single("c5", "bank", "line", 200), T0).result, R::Ok);
    assert_eq!(one(&mut l, post("c6", "c3", None), T0).result, R::Ok);
    assert_eq!(bal(&l, "line"), Balances { debits_posted: 500, credits_posted: 500, ..Default::default() });
    l.check_invariants().unwrap();
}

#[test]
fn overdraft_and_credit_limits() {
    let mut l = setup();
    let mut overdraft = wallet("od");
    overdraft.limit_minor = Some(100);
    assert_eq!(open(&mut l, overdraft, T0).result, R::Ok);
    assert_eq!(one(&mut l, single("t1", "bank", "od", 50), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("t2", "od", "carol", 151), R::ExceedsCredits);
    assert_eq!(one(&mut l, pending("t3", "od", "carol", 100, None), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("t4", "od", "carol", 51), R::ExceedsCredits);
    assert_eq!(one(&mut l, single("t5", "od", "carol", 50), T0).result, R::Ok);
    assert_eq!(one(&mut l, post("t6", "t3", None), T0).result, R::Ok);
    let od = l.account("od").unwrap();
    assert_eq!(od.balances.net_posted(), -100, "exactly at the overdraft");
    assert_recorded_failure(&mut l, single("t7", "od", "carol", 1), R::ExceedsCredits);

    let mut line = plain("line").with_flags(CREDIT_LINE);
    line.limit_minor = Some(1000);
    assert_eq!(open(&mut l, line, T0).result, R::Ok);
    assert_eq!(one(&mut l, single("c1", "bank", "line", 1000), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("c2", "bank", "line", 1), R::ExceedsDebits);
    assert_eq!(one(&mut l, single("c3", "line", "bank", 1), T0).result, R::Ok);
    assert_eq!(one(&mut l, single("c4", "bank", "line", 1), T0).result, R::Ok);

    // Limits near u64::MAX are computed without overflow.
    let mut huge = wallet("huge");
    huge.limit_minor = Some(u64::MAX - 10);
    assert_eq!(open(&mut l, huge, T0).result, R::Ok);
    assert_eq!(one(&mut l, single("h1", "huge", "carol", u64::MAX - 1_000), T0).result, R::Ok);
    assert_eq!(one(&mut l, single("h2", "huge", "bank", 990), T0).result, R::Ok);
    assert_recorded_failure(&mut l, single("h3", "huge", "bank", 1), R::ExceedsCredits);
    // With credits, the ceiling lies above u64::MAX: only the balance field's overflow stops it.
    assert_eq!(one(&mut l, single("h4", "bank", "huge", 100), T0).result, R::Ok);
    assert_eq!(one(&mut l, single("h5", "huge", "bank", 10), T0).result, R::Ok);
    assert_eq!(bal(&l, "huge").debits_posted, u64::MAX);
    assert_recorded_failure(&mut l, single("h6", "huge", "bank", 1), R::Overflow);
    l.check_invariants().unwrap();
}

#[test]
fn overflow_is_recorded() {
    let mut l = setup();
    for name in ["src1", "src2", "sink"] {
        assert_eq!(open(&mut l, plain(name), T0).result, R::Ok);
    }
    assert_eq!(one(&mut l, single("t1", "src1", "sink", u64::MAX), T0).result, R::Ok);
    // The credit account's posted credits would overflow.
    assert_recorded_failure(&mut l, single("t2", "src2", "sink", 1), R::Overflow);
    // The debit account's posted debits would overflow.
    assert_recorded_failure(&mut l, single("t3", "src1", "src2", 1), R::Overflow);
    // Pending balances overflow separately.
    assert_eq!(one(&mut l, pending("p1", "src2", "sink", u64::MAX, None), T0).result, R::Ok);
    assert_recorded_failure(&mut l, pending("p2", "bank", "sink", 1, None), R::Overflow);
    // Posting would overflow the posted credits.
    assert_eq!(one(&mut l, void("v1", "p1"), T0).result, R::Ok);
    assert_eq!(one(&mut l, pending("p3", "src2", "sink", 5, None), T0).result, R::Ok);
    assert_recorded_failure(&mut l, post("x3", "p3", Some(1)), R::Overflow);
    assert_eq!(l.transfer("p3").unwrap().pending_status, Some(PendingStatus::Pending));
    assert_eq!(bal(&l, "sink").credits_posted, u64::MAX);
    l.check_invariants().unwrap();

    // An expiry past the end of time overflows too.
    let mut late = setup();
    let r = one(&mut late, pending("p", "bank", "carol", 1, Some(1)), u64::MAX - 10);
    assert_eq!(r.result, R::Overflow);
    assert_eq!(late.transfer("p").unwrap().result, R::Overflow);
    late.check_invariants().unwrap();
}

#[test]
fn pending_lifecycle_codes() {
    let mut l = setup();
    assert_recorded_failure(&mut l, post("x0", "nope", None), R::PendingNotFound);
    assert_recorded_failure(&mut l, void("v0", "nope"), R::PendingNotFound);
    // A pending transfer that itself failed holds nothing.
    assert_eq!(one(&mut l, pending("pf", "alice", "bob", 5000, None), T0).result, R::ExceedsCredits);
    assert_recorded_failure(&mut l, post("x1", "pf", None), R::PendingNotFound);
    // A single-phase transfer is not pending.
    assert_recorded_failure(&mut l, post("x2", "fund", None), R::PendingTransferNotPending);
    assert_recorded_failure(&mut l, void("v2", "fund"), R::PendingTransferNotPending);

    assert_eq!(one(&mut l, pending("p1", "alice", "bob", 100, None), T0).result, R::Ok);
    assert_eq!(one(&mut l, pending("p2", "alice", "bob", 100, None), T0).result, R::Ok);
    let mut other = post("x3", "p1", None);
    other.credit_account_id = Some(id("carol"));
    assert_recorded_failure(&mut l, other, R::PendingTransferHasDifferentAccounts);
    let mut other = void("v3", "p1");
    other.debit_account_id = Some(id("bank"));
    assert_recorded_failure(&mut l, other, R::PendingTransferHasDifferentAccounts);
    assert_recorded_failure(&mut l, post("x4", "p1", Some(101)), R::PostAmountExceedsPending);

    assert_eq!(one(&mut l, post("x5", "p1", None), T0).result, R::Ok);
    assert_recorded_failure(&mut l, post("x6", "p1", None), R::PendingAlreadyPosted);
    assert_recorded_failure(&mut l, void("v6", "p1"), R::PendingAlreadyPosted);
    assert_eq!(one(&mut l, void("v7", "p2"), T0).result, R::Ok);
    assert_recorded_failure(&mut l, post("x8", "p2", None), R::PendingAlreadyVoided);
    assert_recorded_failure(&mut l, void("v8", "p2"), R::PendingAlreadyVoided);

    assert_eq!(bal(&l, "alice"), Balances { credits_posted: 1000, debits_posted: 100, ..Default::default() });
    assert_eq!(bal(&l, "bob"), Balances { credits_posted: 100, ..Default::default() });
    let p1 = l.transfer("p1").unwrap();
    assert_eq!(p1.pending_status, Some(PendingStatus::Posted));
    assert!(p1.resolved_at_ns.is_some());
    assert_eq!(l.transfer("p2").unwrap().pending_status, Some(PendingStatus::Voided));
    // A post is recorded in canonical form: accounts, amount and currency filled in.
    let x5 = l.transfer("x5").unwrap();
    assert_eq!(x5.request.debit_account_id, Some(id("alice")));
    assert_eq!(x5.request.credit_account_id, Some(id("bob")));
    assert_eq!(x5.request.amount_minor, Some(100));
    assert_eq!(x5.request.currency, Some(code("CNY")));
    assert_eq!(x5.request.pending_id, Some(id("p1")));
    let v7 = l.transfer("v7").unwrap();
    assert_eq!(v7.request.amount_minor, None, "a void carries no amount");

    // Expired.
    assert_eq!(one(&mut l, pending("p3", "alice", "bob", 100, Some(10)), T0).result, R::Ok);
    let expires = l.transfer("p3").unwrap().expires_at_ns.unwrap();
    assert_eq!(l.expire_due(expires), 1);
    assert_recorded_failure(&mut l, post("x9", "p3", None), R::PendingExpired);
    assert_recorded_failure(&mut l, void("v9", "p3"), R::PendingExpired);
    l.check_invariants().unwrap();
}

#[test]
fn partial_post_releases_the_rest_of_the_hold() {
    let mut l = setup();
    assert_eq!(one(&mut l, pending("p1", "alice", "bob", 700, Some(60_000)), T0).result, R::Ok);
    assert_eq!(
        bal(&l, "alice"),
        Balances { credits_posted: 1000, debits_pending: 700, ..Default::default() }
    );
    assert_eq!(bal(&l, "bob"), Balances { credits_pending: 700, ..Default::default() });
    assert!(l.next_expiry_ns().is_some());

    assert_eq!(one(&mut l, post("x1", "p1", Some(250)), T0).result, R::Ok);
    assert_eq!(bal(&l, "alice"), Balances { credits_posted: 1000, debits_posted: 250, ..Default::default() });
    assert_eq!(bal(&l, "bob"), Balances { credits_posted: 250, ..Default::default() });
    assert_eq!(l.next_expiry_ns(), None, "a posted hold no longer expires");
    let p1 = l.transfer("p1").unwrap();
    assert_eq!(p1.pending_status, Some(PendingStatus::Posted));
    assert_eq!(p1.request.amount_minor, Some(700), "the pending transfer keeps its amount");
    assert_eq!(l.transfer("x1").unwrap().request.amount_minor, Some(250));
    // The released 450 are available again.
    assert_eq!(one(&mut l, single("t1", "alice", "carol", 750), T0).result, R::Ok);
    assert_eq!(l.account("alice").unwrap().balances.available(), 0);
    // Nothing is left to post.
    assert_eq!(one(&mut l, post("x2", "p1", Some(1)), T0).result, R::PendingAlreadyPosted);
    // A retry of the partial post is `exists`; the same id without an amount asks for the whole
    // hold, which is not what was posted.
    assert_eq!(one(&mut l, post("x1", "p1", Some(250)), T0).result, R::Exists);
    assert_eq!(one(&mut l, post("x1", "p1", None), T0).result, R::ExistsWithDifferentAmount);
    // A post of the whole hold matches a retry with or without the amount.
    assert_eq!(one(&mut l, pending("p2", "bank", "bob", 100, None), T0).result, R::Ok);
    assert_eq!(one(&mut l, post("x3", "p2", None), T0).result, R::Ok);
    assert_eq!(one(&mut l, post("x3", "p2", None), T0).result, R::Exists);
    assert_eq!(one(&mut l, post("x3", "p2", Some(100)), T0).result, R::Exists);
    assert_eq!(one(&mut l, post("x3", "p2", Some(99)), T0).result, R::ExistsWithDifferentAmount);
    assert_eq!(bal(&l, "bob").credits_posted, 350);
    l.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------------------------
// Accounts

#[test]
fn account_creation_codes() {
    let mut l = Ledger::new();
    let mut base = wallet("a");
    base.limit_minor = Some(10);
    base.metadata = Some(b"{\"kyc\":1}".to_vec().into());
    let created = open(&mut l, base.clone(), T0);
    assert_eq!(created.result, R::Ok);
    assert!(created.timestamp_ns >= T0);
    assert_eq!(open(&mut l, base.clone(), T0 + 5), EventResult { result: R::Exists, ..created });

    let variant = |f: &dyn Fn(&mut NewAccount)| {
        let mut a = base.clone();
        f(&mut a);
        a
    };
    let cases = [
        (variant(&|a| a.currency = usd()), R::ExistsWithDifferentCurrency),
        (variant(&|a| a.flags = CREDIT_LINE), R::ExistsWithDifferentFlags),
        (variant(&|a| a.limit_minor = Some(11)), R::ExistsWithDifferentLimit),
        (variant(&|a| a.limit_minor = None), R::ExistsWithDifferentLimit),
        (variant(&|a| a.metadata = None), R::ExistsWithDifferentMetadata),
        (
            variant(&|a| {
                a.flags = AccountFlags {
                    debits_must_not_exceed_credits: true,
                    credits_must_not_exceed_debits: true,
                }
            }),
            R::FlagsAreMutuallyExclusive,
        ),
        (variant(&|a| a.metadata = Some(vec![1; METADATA_BYTES_MAX + 1].into())), R::MetadataTooLarge),
    ];
    for (account, expected) in cases {
        let r = open(&mut l, account.clone(), T0);
        assert_eq!(r, EventResult { result: expected, timestamp_ns: 0 }, "{account:?}");
    }
    let both = AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: true };
    assert_eq!(open(&mut l, plain("b").with_flags(both), T0).result, R::FlagsAreMutuallyExclusive);
    let mut limit_without_flag = plain("b");
    limit_without_flag.limit_minor = Some(1);
    assert_eq!(open(&mut l, limit_without_flag, T0).result, R::LimitRequiresFlag);
    let mut big = plain("b");
    big.metadata = Some(vec![1; METADATA_BYTES_MAX + 1].into());
    assert_eq!(open(&mut l, big, T0).result, R::MetadataTooLarge);
    assert!(l.account("b").is_none());
    assert_eq!(l.accounts_count(), 1);

    let a = l.account("a").unwrap();
    assert_eq!(a.status, AccountStatus::Open);
    assert_eq!(a.flags, AccountFlags::WALLET);
    assert_eq!(a.limit_minor, Some(10));
    assert_eq!(a.metadata, base.metadata);
    assert_eq!(a.balances, Balances::default());
    assert_eq!(a.timestamp_ns, created.timestamp_ns);

    // A batch gives one result per account, in order; a duplicate within the batch is `exists`.
    let batch = l.create_accounts(vec![plain("c"), plain("d"), plain("c"), plain("b").with_flags(both)], T0);
    assert_eq!(results(&batch), [R::Ok, R::Ok, R::Exists, R::FlagsAreMutuallyExclusive]);
    assert!(batch[0].timestamp_ns < batch[1].timestamp_ns);
    assert_eq!(batch[2].timestamp_ns, batch[0].timestamp_ns);
}

#[test]
fn freeze_blocks_new_transfers_and_posts_but_not_voids() {
    let mut l = setup();
    assert_eq!(one(&mut l, pending("p1", "alice", "bob", 100, None), T0).result, R::Ok);
    assert_eq!(one(&mut l, pending("p2", "alice", "bob", 100, None), T0).result, R::Ok);
    assert_eq!(one(&mut l, pending("p3", "alice", "bob", 100, Some(1_000)), T0).result, R::Ok);
    let _ = l.drain_log().count();

    let frozen = l.set_account_status("bob", StatusAction::Freeze, T0);
    assert_eq!(frozen.result, R::Ok);
    assert!(frozen.timestamp_ns > 0);
    assert_eq!(l.account("bob").unwrap().status, AccountStatus::Frozen);
    assert_eq!(
        l.drain_log().collect::<Vec<_>>(),
        [LogItem::StatusChanged {
            account: 2,
            action: StatusAction::Freeze,
            timestamp_ns: frozen.timestamp_ns
        }]
    );
    // Freezing a frozen account is a no-op with nothing to journal.
    assert_eq!(l.set_account_status("bob", StatusAction::Freeze, T0).result, R::Ok);
    assert!(!l.has_log());

    // As credit and as debit account.
    assert_recorded_failure(&mut l, single("t1", "alice", "bob", 1), R::AccountFrozen);
    assert_recorded_failure(&mut l, single("t2", "bob", "carol", 1), R::AccountFrozen);
    assert_recorded_failure(&mut l, pending("t3", "alice", "bob", 1, None), R::AccountFrozen);
    assert_recorded_failure(&mut l, post("x1", "p1", None), R::AccountFrozen);
    assert_recorded_failure(&mut l, post("x2", "p1", Some(5)), R::AccountFrozen);
    assert_eq!(l.transfer("p1").unwrap().pending_status, Some(PendingStatus::Pending));
    // A void releases the hold of a frozen account.
    assert_eq!(one(&mut l, void("v1", "p1"), T0).result, R::Ok);
    assert_eq!(bal(&l, "bob").credits_pending, 200);
    // So does an expiry.
    let expires = l.transfer("p3").unwrap().expires_at_ns.unwrap();
    assert_eq!(l.expire_due(expires), 1);
    assert_eq!(bal(&l, "bob").credits_pending, 100);
    // Other accounts are unaffected.
    assert_eq!(one(&mut l, single("t4", "alice", "carol", 1), T0).result, R::Ok);

    assert_eq!(l.set_account_status("bob", StatusAction::Unfreeze, T0).result, R::Ok);
    assert_eq!(l.account("bob").unwrap().status, AccountStatus::Open);
    assert_eq!(one(&mut l, post("x3", "p2", None), T0).result, R::Ok);
    assert_eq!(one(&mut l, single("t5", "alice", "bob", 1), T0).result, R::Ok);
    // The failures recorded while frozen stay as they were.
    assert_eq!(one(&mut l, single("t1", "alice", "bob", 1), T0).result, R::AccountFrozen);
    // Unfreezing an open account is a no-op.
    let _ = l.drain_log().count();
    assert_eq!(l.set_account_status("bob", StatusAction::Unfreeze, T0).result, R::Ok);
    assert!(!l.has_log());
    assert_eq!(l.set_account_status("nobody", StatusAction::Freeze, T0).result, R::AccountNotFound);
    l.check_invariants().unwrap();
}

#[test]
fn close_needs_zero_balance_and_no_holds_and_is_final() {
    let mut l = setup();
    assert_eq!(one(&mut l, pending("p1", "alice", "bob", 100, None), T0).result, R::Ok);
    for name in ["alice", "bob"] {
        let r = l.set_account_status(name, StatusAction::Close, T0);
        assert_eq!(r, EventResult { result: R::AccountHasPending, timestamp_ns: 0 }, "{name}");
    }
    assert_eq!(one(&mut l, void("v1", "p1"), T0).result, R::Ok);
    assert_eq!(l.set_account_status("alice", StatusAction::Close, T0).result, R::AccountBalanceNotZero);
    assert_eq!(l.set_account_status("bank", StatusAction::Close, T0).result, R::AccountBalanceNotZero);
    assert_eq!(l.set_account_status("bob", StatusAction::Close, T0).result, R::Ok);
    // Move the money out: debits equal credits, the net balance is zero.
    assert_eq!(one(&mut l, single("out", "alice", "bank", 1000), T0).result, R::Ok);
    assert_eq!(l.set_account_status("alice", StatusAction::Freeze, T0).result, R::Ok);
    let closed = l.set_account_status("alice", StatusAction::Close, T0);
    assert_eq!(closed.result, R::Ok, "a frozen account can be closed");
    assert_eq!(l.account("alice").unwrap().status, AccountStatus::Closed);

    // A closed account rejects everything.
    assert_recorded_failure(&mut l, single("t1", "bank", "alice", 1), R::AccountClosed);
    assert_recorded_failure(&mut l, single("t2", "alice", "bank", 1), R::AccountClosed);
    assert_recorded_failure(&mut l, pending("t3", "bank", "bob", 1, None), R::AccountClosed);
    for action in [StatusAction::Freeze, StatusAction::Unfreeze, StatusAction::Close] {
        let r = l.set_account_status("alice", action, T0);
        assert_eq!(r, EventResult { result: R::AccountClosed, timestamp_ns: 0 }, "{action:?}");
    }
    assert_eq!(open(&mut l, wallet("alice"), T0).result, R::Exists, "the id stays taken");
    assert_eq!(l.account("alice").unwrap().status, AccountStatus::Closed);
    l.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------------------------
// Linked chains and idempotency

#[test]
fn recorded_failure_is_permanent_but_a_failed_chain_leaves_no_trace() {
    let mut l = setup();
    // A lone failure is recorded: the id keeps its result even after funds arrive.
    let first = one(&mut l, single("t1", "bob", "carol", 50), T0);
    assert_eq!(first.result, R::ExceedsCredits);
    assert_eq!(one(&mut l, single("fund_bob", "bank", "bob", 100), T0).result, R::Ok);
    assert_eq!(one(&mut l, single("t1", "bob", "carol", 50), T0 + 1), first);
    assert_eq!(bal(&l, "bob").debits_posted, 0);

    // The same failure inside a chain is not recorded, and nothing of the chain is.
    let chain = vec![linked(single("c1", "alice", "carol", 10)), single("c2", "bob", "carol", 500)];
    let r = l.create_transfers(chain.clone(), T0);
    assert_eq!(results(&r), [R::LinkedEventFailed, R::ExceedsCredits]);
    assert!(r.iter().all(|e| e.timestamp_ns == 0));
    assert!(l.transfer("c1").is_none() && l.transfer("c2").is_none());
    // Fund, and the same ids go through.
    assert_eq!(one(&mut l, single("fund_bob2", "bank", "bob", 400), T0).result, R::Ok);
    assert_eq!(results(&l.create_transfers(chain.clone(), T0)), [R::Ok, R::Ok]);
    assert_eq!(results(&l.create_transfers(chain, T0)), [R::Exists, R::Exists]);
    assert_eq!(bal(&l, "carol").credits_posted, 510);
    l.check_invariants().unwrap();
}

#[test]
fn linked_chain_rolls_back_exactly() {
    let mut l = setup();
    assert_eq!(one(&mut l, pending("hold", "alice", "bob", 100, Some(5_000)), T0).result, R::Ok);
    let expiry = l.next_expiry_ns();
    assert!(expiry.is_some());
    let accounts_before: Vec<_> = l.accounts().collect();
    let hold_before = l.transfer("hold").unwrap();
    let count_before = l.transfers_count();
    let _ = l.drain_log().count();

    let batch = vec![
        single("lone1", "bank", "carol", 7),
        linked(single("a1", "alice", "bob", 300)),
        linked(pending("a2", "bob", "carol", 250, Some(1_000))),
        linked(post("a3", "hold", Some(60))),
        linked(single("a4", "bank", "alice", 5)),
        linked(post("a5", "a2", None)),
        linked(single("a6", "alice", "carol", 10_000)), // fails: exceeds_credits
        linked(single("a7", "bank", "carol", 1)),
        single("a8", "bank", "carol", 1),
        single("lone2", "bank", "carol", 9),
    ];
    let r = l.create_transfers(batch, T0);
    use ResultCode::*;
    assert_eq!(
        results(&r),
        [
            Ok,
            LinkedEventFailed,
            LinkedEventFailed,
            LinkedEventFailed,
            LinkedEventFailed,
            LinkedEventFailed,
            ExceedsCredits,
            LinkedEventFailed,
            LinkedEventFailed,
            Ok
        ]
    );
    assert!(r[1..9].iter().all(|e| e.timestamp_ns == 0));
    assert!(r[0].timestamp_ns < r[9].timestamp_ns);

    // Balances are exactly as before, apart from the two lone transfers.
    let mut expected = accounts_before.clone();
    for a in &mut expected {
        if &*a.id == "bank" {
            a.balances.debits_posted += 16;
        }
        if &*a.id == "carol" {
            a.balances.credits_posted += 16;
        }
    }
    assert_eq!(l.accounts().collect::<Vec<_>>(), expected);
    // The hold is pending again, and will still expire.
    assert_eq!(l.transfer("hold").unwrap(), hold_before);
    assert_eq!(l.next_expiry_ns(), expiry);
    assert_eq!(l.transfers_count(), count_before + 2);
    for tid in ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"] {
        assert!(l.transfer(tid).is_none(), "{tid} left a trace");
    }
    let log: Vec<_> = l.drain_log().collect();
    assert_eq!(log.len(), 2, "only the lone transfers are journaled: {log:?}");
    l.check_invariants().unwrap();

    // A chain that succeeds applies all its members.
    let chain = vec![
        linked(single("b1", "alice", "bob", 300)),
        linked(post("b2", "hold", Some(60))),
        single("b3", "bob", "carol", 360),
    ];
    assert_eq!(results(&l.create_transfers(chain, T0)), [Ok, Ok, Ok]);
    assert_eq!(bal(&l, "bob"), Balances { credits_posted: 360, debits_posted: 360, ..Default::default() });
    assert_eq!(l.next_expiry_ns(), None);
    l.check_invariants().unwrap();
}

#[test]
fn a_chain_member_that_exists_succeeds_but_is_rolled_back_with_the_chain() {
    let mut l = setup();
    assert_eq!(one(&mut l, single("t1", "alice", "bob", 10), T0).result, R::Ok);
    let before: Vec<_> = l.accounts().collect();
    let r = l.create_transfers(
        vec![linked(single("t1", "alice", "bob", 10)), single("t2", "alice", "bob", 5000)],
        T0,
    );
    assert_eq!(results(&r), [R::LinkedEventFailed, R::ExceedsCredits]);
    // The earlier transfer was not part of the chain and stays.
    assert_eq!(l.transfer("t1").unwrap().result, R::Ok);
    assert_eq!(l.accounts().collect::<Vec<_>>(), before);
    // A recorded failure named in a chain fails the chain.
    assert_eq!(one(&mut l, single("f1", "bob", "carol", 50), T0).result, R::ExceedsCredits);
    let r = l.create_transfers(
        vec![linked(single("t3", "alice", "bob", 1)), single("f1", "bob", "carol", 50)],
        T0,
    );
    assert_eq!(results(&r), [R::LinkedEventFailed, R::ExceedsCredits]);
    assert!(l.transfer("t3").is_none());
    // A validation error fails the chain too.
    let r =
        l.create_transfers(vec![linked(single("t4", "alice", "bob", 1)), single("t5", "bob", "bob", 1)], T0);
    assert_eq!(results(&r), [R::LinkedEventFailed, R::SameAccount]);
    assert!(l.transfer("t4").is_none());
    l.check_invariants().unwrap();
}

#[test]
fn a_chain_left_open_is_refused_whole() {
    let mut l = setup();
    let before: Vec<_> = l.accounts().collect();
    let _ = l.drain_log().count();
    let r = l.create_transfers(
        vec![
            single("lone", "bank", "carol", 1),
            linked(single("o1", "alice", "bob", 1)),
            linked(single("o2", "alice", "bob", 2)),
        ],
        T0,
    );
    assert_eq!(results(&r), [R::Ok, R::LinkedEventChainOpen, R::LinkedEventChainOpen]);
    assert!(l.transfer("o1").is_none() && l.transfer("o2").is_none());
    assert_eq!(bal(&l, "alice"), before[1].balances);
    assert_eq!(l.drain_log().collect::<Vec<_>>().len(), 1);
    let r = l.create_transfers(vec![linked(single("o1", "alice", "bob", 1))], T0);
    assert_eq!(results(&r), [R::LinkedEventChainOpen]);
    assert!(l.transfer("o1").is_none());
    assert!(!l.has_log());
    // The ids are free for a closed chain.
    let r = l
        .create_transfers(vec![linked(single("o1", "alice", "bob", 1)), single("o2", "alice", "bob", 2)], T0);
    assert_eq!(results(&r), [R::Ok, R::Ok]);
    l.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------------------------
// Time

#[test]
fn timestamps_strictly_increase_when_the_clock_goes_backwards() {
    let mut l = Ledger::new();
    let a = open(&mut l, plain("a"), T0 + 1_000);
    let b = open(&mut l, plain("b"), T0); // clock went back
    assert_eq!(a.timestamp_ns, T0 + 1_000);
    assert!(b.timestamp_ns > a.timestamp_ns);
    let batch: Vec<_> = (0..5).map(|i| single(&format!("t{i}"), "a", "b", 1)).collect();
    let r = l.create_transfers(batch, 5);
    let mut last = b.timestamp_ns;
    for e in &r {
        assert_eq!(e.result, R::Ok);
        assert!(e.timestamp_ns > last);
        last = e.timestamp_ns;
    }
    let s = l.set_account_status("a", StatusAction::Freeze, 0);
    assert!(s.timestamp_ns > last);
    assert_eq!(l.last_timestamp_ns(), s.timestamp_ns);
    // A clock ahead is taken as it is.
    let c = open(&mut l, plain("c"), T0 + 5_000);
    assert_eq!(c.timestamp_ns, T0 + 5_000);
    // Every journaled event is strictly after the one before.
    let events = drain_events(&mut l);
    assert!(events.windows(2).all(|w| w[0].timestamp_ns() < w[1].timestamp_ns()));
}

#[test]
fn pending_expiry_at_the_boundary() {
    let mut l = setup();
    let created = one(&mut l, pending("p1", "alice", "bob", 100, Some(10)), T0 + 1_000);
    assert_eq!(created.result, R::Ok);
    let expires = created.timestamp_ns + 10 * MS;
    let p1 = l.transfer("p1").unwrap();
    assert_eq!(p1.expires_at_ns, Some(expires));
    assert_eq!(p1.request.timeout_ms, Some(10));
    assert_eq!(l.next_expiry_ns(), Some(expires));

    // One nanosecond before: nothing expires.
    assert_eq!(l.expire_due(expires - 1), 0);
    assert_eq!(l.transfer("p1").unwrap().pending_status, Some(PendingStatus::Pending));
    // Exactly at the boundary: it expires.
    let _ = l.drain_log().count();
    assert_eq!(l.expire_due(expires), 1);
    let p1 = l.transfer("p1").unwrap();
    assert_eq!(p1.pending_status, Some(PendingStatus::Expired));
    let resolved = p1.resolved_at_ns.unwrap();
    assert!(resolved >= expires);
    assert_eq!(bal(&l, "alice"), Balances { credits_posted: 1000, ..Default::default() });
    assert_eq!(bal(&l, "bob"), Balances::default());
    assert_eq!(l.next_expiry_ns(), None);
    let index = match l.drain_log().collect::<Vec<_>>()[..] {
        [LogItem::Expired(index)] => index,
        ref other => panic!("unexpected log {other:?}"),
    };
    assert_eq!(l.transfer_id_at(index).as_str(), "p1");
    assert_eq!(l.resolved_at_ns(index), resolved);
    assert_eq!(l.expire_due(expires + 1_000 * MS), 0, "expires once");

    // A post 1 ns before the expiry works; at the expiry it is too late.
    let p2 = one(&mut l, pending("p2", "alice", "bob", 100, Some(1)), T0 + 100 * MS).timestamp_ns;
    let p3 = one(&mut l, pending("p3", "alice", "bob", 100, Some(1)), p2 + 1).timestamp_ns;
    assert_eq!(p3, p2 + 1);
    assert_eq!(one(&mut l, post("x2", "p2", None), p2 + MS - 1).result, R::Ok);
    // The ledger clock is now p2 + MS - 1, so the next event is at p2 + MS = p3's expiry - 1.
    assert_eq!(one(&mut l, post("x3", "p3", Some(40)), 0).timestamp_ns, p3 + MS - 1);
    assert_eq!(l.transfer("x3").unwrap().result, R::Ok);
    assert_eq!(one(&mut l, pending("p4", "alice", "bob", 100, Some(1)), 0).result, R::Ok);
    let p4 = l.transfer("p4").unwrap().timestamp_ns;
    // At exactly the expiry, before `expire_due` has run: pending_expired, and the hold stays until then.
    let late = one(&mut l, post("x4", "p4", None), p4 + MS);
    assert_eq!(late, EventResult { result: R::PendingExpired, timestamp_ns: p4 + MS });
    assert_eq!(l.transfer("p4").unwrap().pending_status, Some(PendingStatus::Pending));
    assert_eq!(bal(&l, "alice").debits_pending, 100);
    assert_eq!(one(&mut l, void("v4", "p4"), 0).result, R::PendingExpired);
    assert_eq!(l.expire_due(p4 + MS), 1, "the clock is past the expiry");
    assert_eq!(l.transfer("p4").unwrap().pending_status, Some(PendingStatus::Expired));
    assert_eq!(bal(&l, "alice"), Balances { credits_posted: 1000, debits_posted: 140, ..Default::default() });
    l.check_invariants().unwrap();
}

#[test]
fn expire_due_releases_every_due_hold_in_order() {
    let mut l = setup();
    for (tid, timeout) in [("p1", 30), ("p2", 10), ("p3", 20), ("p4", 0)] {
        assert_eq!(one(&mut l, pending(tid, "alice", "bob", 100, Some(timeout)), T0).result, R::Ok);
    }
    assert_eq!(l.transfer("p4").unwrap().expires_at_ns, None, "timeout 0 is no timeout");
    let t = |tid: &str| l.transfer(tid).unwrap().expires_at_ns.unwrap();
    let (e1, e2, e3) = (t("p1"), t("p2"), t("p3"));
    assert_eq!(l.next_expiry_ns(), Some(e2));
    let _ = l.drain_log().count();
    assert_eq!(l.expire_due(e3), 2);
    let log: Vec<_> = l.drain_log().collect();
    let ids: Vec<_> = log
        .iter()
        .map(|item| match item {
            LogItem::Expired(i) => l.transfer_id_at(*i).to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["p2", "p3"]);
    assert_eq!(l.next_expiry_ns(), Some(e1));
    assert_eq!(bal(&l, "alice").debits_pending, 200);
    // A clock behind the ledger's still expires what is due by the clock, at a later ledger time.
    assert_eq!(one(&mut l, single("later", "bank", "carol", 1), e1 + 1_000).timestamp_ns, e1 + 1_000);
    assert_eq!(l.expire_due(e1), 1);
    assert_eq!(l.transfer("p1").unwrap().resolved_at_ns, Some(e1 + 1_001));
    assert_eq!(l.expire_due(u64::MAX / 2), 0, "p4 never expires");
    assert_eq!(bal(&l, "alice").debits_pending, 100);
    l.check_invariants().unwrap();
}

// ------------------------------------------------------------------------------------------------
// Queries

#[test]
fn balance_at_follows_history_including_expiry() {
    let mut l = Ledger::new();
    open(&mut l, plain("bank"), T0);
    open(&mut l, wallet("w"), T0);
    let t1 = one(&mut l, single("t1", "bank", "w", 500), T0 + 100).timestamp_ns;
    let t2 = one(&mut l, pending("t2", "w", "bank", 200, Some(1)), T0 + 200).timestamp_ns;
    let t3 = one(&mut l, single("t3", "w", "bank", 50), T0 + 300).timestamp_ns;
    let expires = t2 + MS;
    assert_eq!(l.expire_due(expires + 7), 1);
    let t4 = l.transfer("t2").unwrap().resolved_at_ns.unwrap();
    assert_eq!(t4, expires + 7);

    let at = |ns| l.balance_at("w", ns).unwrap();
    let after_t1 = Balances { credits_posted: 500, ..Default::default() };
    let after_t2 = Balances { debits_pending: 200, ..after_t1 };
    let after_t3 = Balances { debits_posted: 50, ..after_t2 };
    let after_expiry = Balances { debits_pending: 0, ..after_t3 };
    assert_eq!(at(0), Balances::default());
    assert_eq!(at(t1 - 1), Balances::default());
    assert_eq!(at(t1), after_t1);
    assert_eq!(at(t2 - 1), after_t1);
    assert_eq!(at(t2), after_t2);
    assert_eq!(at(t3), after_t3);
    assert_eq!(at(t4 - 1), after_t3);
    assert_eq!(at(t4), after_expiry);
    assert_eq!(at(u64::MAX), after_expiry);
    assert_eq!(at(u64::MAX), bal(&l, "w"));
    assert_eq!(
        l.balance_at("bank", t2).unwrap(),
        Balances { debits_posted: 500, credits_pending: 200, ..Default::default() }
    );
    assert_eq!(l.balance_at("nobody", t1), Err(QueryError::AccountNotFound));
}

#[test]
fn account_transfers_pages_both_ways() {
    let mut l = setup();
    // carol's transfers: c0..c9, with other accounts' transfers, a failure and an expiry in between.
    for i in 0..10 {
        let tid = format!("c{i}");
        assert_eq!(one(&mut l, single(&tid, "bank", "carol", 1 + i), T0).result, R::Ok);
        assert_eq!(one(&mut l, single(&format!("x{i}"), "alice", "bob", 1), T0).result, R::Ok);
        if i == 4 {
            assert_eq!(
                one(&mut l, single("failed", "alice", "carol", 1_000_000), T0).result,
                R::ExceedsCredits
            );
            assert_eq!(one(&mut l, pending("hold", "carol", "bank", 1, Some(1)), T0).result, R::Ok);
            let now = l.last_timestamp_ns() + MS;
            assert_eq!(l.expire_due(now), 1);
        }
    }
    let all: Vec<String> = (0..5)
        .map(|i| format!("c{i}"))
        .chain(["hold".to_string()])
        .chain((5..10).map(|i| format!("c{i}")))
        .collect();
    let ids =
        |page: &[puhui_ledger::Transfer]| page.iter().map(|t| t.request.id.to_string()).collect::<Vec<_>>();
    let query = |limit, after: Option<&str>, before: Option<&str>| {
        l.account_transfers("carol", Page { limit, starting_after: after, ending_before: before })
    };

    let (page, more) = query(100, None, None).unwrap();
    assert_eq!(ids(&page), all);
    assert!(!more);
    let (page, more) = query(11, None, None).unwrap();
    assert_eq!(ids(&page), all);
    assert!(!more);
    let (page, more) = query(4, None, None).unwrap();
    assert_eq!(ids(&page), all[..4]);
    assert!(more);
    let (page, more) = query(4, Some("c3"), None).unwrap();
    assert_eq!(ids(&page), all[4..8]);
    assert!(more);
    let (page, more) = query(4, Some("c6"), None).unwrap();
    assert_eq!(ids(&page), all[8..]);
    assert!(!more);
    let (page, more) = query(3, Some("c9"), None).unwrap();
    assert!(page.is_empty());
    assert!(!more);
    // Backwards.
    let (page, more) = query(4, None, Some("c9")).unwrap();
    assert_eq!(ids(&page), all[6..10]);
    assert!(more);
    let (page, more) = query(4, None, Some("c2")).unwrap();
    assert_eq!(ids(&page), all[..2]);
    assert!(!more);
    let (page, more) = query(3, None, Some("c0")).unwrap();
    assert!(page.is_empty());
    assert!(!more);
    // The expired hold can be a cursor.
    let (page, _) = query(2, Some("hold"), None).unwrap();
    assert_eq!(ids(&page), ["c5", "c6"]);
    let (page, _) = query(2, None, Some("hold")).unwrap();
    assert_eq!(ids(&page), ["c3", "c4"]);
    // The page carries the transfers as recorded.
    let (page, _) = query(1, Some("c4"), None).unwrap();
    assert_eq!(page[0], l.transfer("hold").unwrap());
    assert_eq!(page[0].pending_status, Some(PendingStatus::Expired));

    // Cursors that do not exist or do not touch the account, and an unknown account.
    assert_eq!(query(5, Some("nope"), None).unwrap_err(), QueryError::CursorNotFound);
    assert_eq!(query(5, None, Some("x1")).unwrap_err(), QueryError::CursorNotFound);
    assert_eq!(query(5, Some("failed"), None).unwrap_err(), QueryError::CursorNotFound);
    assert_eq!(
        l.account_transfers("nobody", Page { limit: 5, ..Default::default() }).unwrap_err(),
        QueryError::AccountNotFound
    );
    // Any limit is accepted, the largest too.
    let (page, more) = query(usize::MAX, None, None).unwrap();
    assert_eq!(ids(&page), all);
    assert!(!more);
    let (page, more) = query(usize::MAX, None, Some("c5")).unwrap();
    assert_eq!(ids(&page), all[..6]);
    assert!(!more);
    // An account with no transfers.
    let (page, more) = l.account_transfers("usd_bank", Page { limit: 5, ..Default::default() }).unwrap();
    assert!(page.is_empty() && !more);
}

// ------------------------------------------------------------------------------------------------
// Journal: the log and replay

#[test]
fn drain_log_lists_what_must_be_journaled() {
    let mut l = Ledger::new();
    let batch = l.create_accounts(vec![plain("a"), plain("b"), plain("a")], T0);
    assert_eq!(results(&batch), [R::Ok, R::Ok, R::Exists]);
    assert!(l.has_log());
    assert_eq!(l.drain_log().collect::<Vec<_>>(), [LogItem::AccountCreated(0), LogItem::AccountCreated(1)]);
    assert!(!l.has_log());
    assert_eq!(l.drain_log().count(), 0);

    let r = l.create_transfers(
        vec![
            single("t1", "a", "b", 5),
            single("t1", "a", "b", 5),           // exists: not journaled
            single("t2", "a", "a", 5),           // invalid: not journaled
            single("t3", "a", "nobody", 5),      // recorded failure: journaled
            pending("t4", "a", "b", 5, Some(1)), // ok
        ],
        T0,
    );
    assert_eq!(results(&r), [R::Ok, R::Exists, R::SameAccount, R::AccountNotFound, R::Ok]);
    let s = l.set_account_status("b", StatusAction::Freeze, T0);
    assert_eq!(l.set_account_status("b", StatusAction::Freeze, T0).result, R::Ok);
    assert_eq!(l.set_account_status("b", StatusAction::Close, T0).result, R::AccountHasPending);
    let expires = l.next_expiry_ns().unwrap();
    assert_eq!(l.expire_due(expires), 1);
    let log: Vec<_> = l.drain_log().collect();
    assert_eq!(
        log,
        [
            LogItem::Transfer(0),
            LogItem::Transfer(1),
            LogItem::Transfer(2),
            LogItem::StatusChanged { account: 1, action: StatusAction::Freeze, timestamp_ns: s.timestamp_ns },
            LogItem::Expired(2),
        ]
    );
    assert_eq!(l.transfer_id_at(0).as_str(), "t1");
    assert_eq!(l.transfer_id_at(1).as_str(), "t3");
    assert_eq!(l.transfer_at(1).result, R::AccountNotFound);
    assert_eq!(l.transfer_at(1).request, single("t3", "a", "nobody", 5));
    assert_eq!(l.transfer_at(2).request.kind, TransferKind::Pending);
    assert_eq!(l.account_id_at(1).as_str(), "b");
    assert_eq!(l.account_at(1).status, AccountStatus::Frozen);
    assert_eq!(l.resolved_at_ns(2), l.transfer("t4").unwrap().resolved_at_ns.unwrap());
}

/// Runs a scenario that touches every kind of journaled event.
fn busy_ledger() -> (Ledger, Vec<&'static str>) {
    let mut l = setup();
    let mut meta = single("meta", "bank", "carol", 3);
    meta.code = 42;
    meta.metadata = Some(b"{\"memo\":\"rent\"}".to_vec().into());
    meta.references = References { end_to_end_id: Some("E2E".into()), uetr: Some([9; 16]) };
    let mut od = wallet("od");
    od.limit_minor = Some(50);
    od.metadata = Some(b"{}".to_vec().into());
    assert_eq!(open(&mut l, od, T0).result, R::Ok);
    let batch = vec![
        meta,
        single("s1", "alice", "bob", 100),
        single("s2", "bob", "carol", 500), // exceeds_credits, recorded
        single("s3", "bank", "nobody", 1), // account_not_found, recorded
        single("s4", "bank", "bank", 1),   // same_account, not recorded
        pending("p1", "alice", "bob", 200, Some(10)),
        pending("p2", "alice", "od", 100, None),
        pending("p3", "od", "bob", 40, Some(1_000)),
        pending("p4", "alice", "carol", 50, Some(5)),
        post("x1", "p1", Some(80)),
        void("v2", "p2"),
        post("x9", "p9", None), // pending_not_found, recorded
        linked(single("l1", "alice", "carol", 1)),
        single("l2", "alice", "carol", 2),
        linked(single("l3", "alice", "carol", 1)),
        single("l4", "alice", "carol", 1_000_000), // the chain fails
    ];
    let _ = l.create_transfers(batch, T0 + 10);
    l.set_account_status("carol", StatusAction::Freeze, T0);
    let _ = one(&mut l, single("f1", "bank", "carol", 1), T0); // account_frozen
    let _ = one(&mut l, post("x4", "p4", None), T0); // account_frozen
    l.set_account_status("carol", StatusAction::Unfreeze, T0);
    let p4_expiry = l.transfer("p4").unwrap().expires_at_ns.unwrap();
    let _ = one(&mut l, post("x4b", "p4", None), p4_expiry); // pending_expired before expire_due
    assert_eq!(l.expire_due(p4_expiry), 1);
    let _ = one(&mut l, post("x3", "p3", None), T0); // clock behind: still before p3's expiry
    let _ = one(&mut l, single("u1", "usd_bank", "bank", 1), T0); // currency mismatch
    let bob_net = bal(&l, "bob").net_posted() as u64;
    assert_eq!(one(&mut l, single("drain", "bob", "bank", bob_net), T0).result, R::Ok);
    assert_eq!(bal(&l, "bob").net_posted(), 0);
    assert_eq!(l.set_account_status("bob", StatusAction::Close, T0).result, R::Ok);
    let _ = one(&mut l, single("c1", "alice", "bob", 1), T0); // account_closed
    let _ = one(&mut l, pending("late", "alice", "carol", 10, Some(1)), T0);
    let late_expiry = l.transfer("late").unwrap().expires_at_ns.unwrap();
    assert_eq!(l.expire_due(late_expiry + 3), 1);
    let ids = vec![
        "fund", "meta", "s1", "s2", "s3", "s4", "p1", "p2", "p3", "p4", "x1", "v2", "x9", "l1", "l2", "l3",
        "l4", "f1", "x4", "x4b", "x3", "u1", "drain", "c1", "late",
    ];
    l.check_invariants().unwrap();
    (l, ids)
}

#[test]
fn replaying_the_log_reproduces_the_ledger() {
    let (mut live, ids) = busy_ledger();
    let events = drain_events(&mut live);
    let kinds = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
    assert!(kinds(|e| matches!(e, Event::Account(..))) >= 6);
    assert!(kinds(|e| matches!(e, Event::Status(..))) >= 3);
    assert!(kinds(|e| matches!(e, Event::Expired(..))) >= 2);
    assert!(kinds(|e| matches!(e, Event::Transfer(_, _, r) if !r.is_success())) >= 6);

    let replayed = replay_all(events.clone()).expect("replay reproduces every result");
    assert_same_state(&live, &replayed, ids.iter().copied());
    // History queries agree too.
    for account in live.accounts() {
        for event in &events {
            let ts = event.timestamp_ns();
            assert_eq!(live.balance_at(&account.id, ts), replayed.balance_at(&account.id, ts));
        }
        let page = Page { limit: 1000, ..Default::default() };
        assert_eq!(
            live.account_transfers(&account.id, page.clone()),
            replayed.account_transfers(&account.id, page)
        );
    }
    // Replayed events are already in the journal: they are not logged a second time.
    assert!(!replayed.has_log(), "replay must not journal the replayed events again");
    // The replayed ledger keeps working like the live one.
    let (mut live, mut replayed) = (live, replayed);
    let next = single("after", "alice", "carol", 1);
    let now = live.last_timestamp_ns() + 1_000;
    assert_eq!(one(&mut live, next.clone(), now), one(&mut replayed, next, now));
    let again = single("s2", "bob", "carol", 500);
    assert_eq!(one(&mut replayed, again, T0).result, R::ExceedsCredits, "recorded failures survive replay");
    let (a, b) = (drain_events(&mut live), drain_events(&mut replayed));
    assert_eq!(a.len(), 1);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn replay_with_a_wrong_recorded_result_fails() {
    let (mut live, _) = busy_ledger();
    let events = drain_events(&mut live);
    let transfers: Vec<usize> =
        events.iter().enumerate().filter(|(_, e)| matches!(e, Event::Transfer(..))).map(|(i, _)| i).collect();
    assert!(transfers.len() > 10);
    for &at in &transfers {
        let mut tampered = events.clone();
        let Event::Transfer(_, _, result) = &mut tampered[at] else { unreachable!() };
        let original = *result;
        *result = if original == R::Ok { R::ExceedsCredits } else { R::Ok };
        let err = replay_all(tampered).err().unwrap_or_else(|| panic!("tampered event {at} replayed"));
        assert_eq!(err.recorded, if original == R::Ok { R::ExceedsCredits } else { R::Ok });
        assert_eq!(err.computed, original);
        assert!(!err.to_string().is_empty());
    }
    // An event out of time order fails.
    let mut reordered = events.clone();
    let last = reordered.len() - 1;
    reordered.swap(last - 1, last);
    assert!(replay_all(reordered).is_err());
    // Dropping an account makes its transfers replay differently.
    let mut missing = events.clone();
    let at = missing.iter().position(|e| matches!(e, Event::Account(a, _) if &*a.id == "alice")).unwrap();
    missing.remove(at);
    assert!(replay_all(missing).is_err());
    // An expiry that was not due, or of a transfer that does not exist.
    let mut ledger = Ledger::new();
    assert!(ledger.replay_expiry("nope", T0).is_err());
    let mut ok_prefix = replay_all(events[..10].to_vec()).unwrap();
    let ts = ok_prefix.last_timestamp_ns() + 1;
    assert!(ok_prefix.replay_expiry("fund", ts).is_err());
    // A status change that is a no-op was never journaled.
    assert!(ok_prefix.replay_status("alice", StatusAction::Unfreeze, ts).is_err());
    // A duplicate account creation.
    let Event::Account(account, _) = events[0].clone() else { panic!("accounts come first") };
    assert!(ok_prefix.replay_account(account, ts).is_err());
}

/// Every result code except the two the ledger never gives (`capacity_exceeded` needs 2^31 records;
/// `risk_declined` belongs to the risk layer) comes out of one short scenario.
#[test]
fn every_result_code_is_reachable() {
    use std::collections::BTreeSet;
    let mut seen = BTreeSet::new();
    let mut l = setup();
    let mut t = |l: &mut Ledger, request: TransferRequest| {
        let r = one(l, request, T0);
        seen.insert(r.result);
        r
    };
    let with = |mut r: TransferRequest, f: &dyn Fn(&mut TransferRequest)| {
        f(&mut r);
        r
    };
    assert_eq!(open(&mut l, plain("line").with_flags(CREDIT_LINE), T0).result, R::Ok);
    t(&mut l, single("a", "bank", "alice", 1));
    t(&mut l, single("a", "bank", "alice", 1));
    t(&mut l, with(single("a", "bank", "alice", 1), &|r| r.kind = TransferKind::Pending));
    t(&mut l, single("a", "bank", "bob", 1));
    t(&mut l, single("a", "bank", "alice", 2));
    t(&mut l, with(single("a", "bank", "alice", 1), &|r| r.currency = Some(code("USD"))));
    t(&mut l, with(single("a", "bank", "alice", 1), &|r| r.code = 9));
    t(&mut l, with(single("a", "bank", "alice", 1), &|r| r.metadata = Some(b"m".to_vec().into())));
    t(&mut l, with(single("a", "bank", "alice", 1), &|r| r.references.uetr = Some([1; 16])));
    t(&mut l, pending("p", "bank", "alice", 10, Some(1)));
    t(&mut l, pending("p", "bank", "alice", 10, Some(2)));
    t(&mut l, pending("q", "bank", "alice", 10, None));
    t(&mut l, post("x", "p", Some(1)));
    t(&mut l, post("x", "q", Some(1)));
    t(&mut l, single("b", "bank", "ghost", 1));
    t(&mut l, single("c", "bank", "usd_bank", 1));
    t(&mut l, single("d", "bank", "bank", 1));
    t(&mut l, single("e", "bob", "bank", 1));
    t(&mut l, single("f", "bank", "line", 1));
    t(&mut l, post("g", "nope", None));
    t(&mut l, post("h", "p", None));
    t(&mut l, void("i", "q"));
    t(&mut l, void("j", "q"));
    t(&mut l, pending("k", "bank", "alice", 10, None));
    t(&mut l, post("m", "k", Some(11)));
    t(&mut l, post("n", "a", None));
    t(&mut l, with(post("o", "k", None), &|r| r.debit_account_id = Some(id("bob"))));
    t(&mut l, single("r", "bank", "alice", 0));
    t(&mut l, single("s", "bank", "carol", u64::MAX));
    t(&mut l, single("u", "alice", "carol", 1));
    t(&mut l, with(single("v", "bank", "alice", 1), &|r| r.metadata = Some(vec![0; 5000].into())));
    t(&mut l, with(single("w", "bank", "alice", 1), &|r| r.references.end_to_end_id = Some("".into())));
    t(&mut l, pending("y", "bank", "alice", 1, Some(PENDING_TIMEOUT_MS_MAX + 1)));
    t(&mut l, with(single("z", "bank", "alice", 1), &|r| r.timeout_ms = Some(1)));
    t(&mut l, with(single("aa", "bank", "alice", 1), &|r| r.debit_account_id = None));
    t(&mut l, with(single("ab", "bank", "alice", 1), &|r| r.currency = None));
    t(&mut l, with(void("ac", "k"), &|r| r.amount_minor = Some(1)));
    t(&mut l, pending("pe", "bank", "alice", 10, Some(1)));
    let expires = l.transfer("pe").unwrap().expires_at_ns.unwrap();
    assert_eq!(l.expire_due(expires), 1);
    t(&mut l, post("ad", "pe", None));
    l.set_account_status("carol", StatusAction::Freeze, T0);
    t(&mut l, single("ae", "bank", "carol", 1));
    assert_eq!(open(&mut l, plain("gone"), T0).result, R::Ok);
    l.set_account_status("gone", StatusAction::Close, T0);
    t(&mut l, single("af", "bank", "gone", 1));
    let chain = l
        .create_transfers(vec![linked(single("ag", "bank", "alice", 1)), single("ah", "bob", "bank", 9)], T0);
    let open_chain = l.create_transfers(vec![linked(single("ai", "bank", "alice", 1))], T0);
    seen.extend(chain.iter().chain(&open_chain).map(|r| r.result));

    let mut accounts = |l: &mut Ledger, account: NewAccount| seen.insert(open(l, account, T0).result);
    let mut a = wallet("wa");
    accounts(&mut l, a.clone());
    a.currency = usd();
    accounts(&mut l, a.clone());
    accounts(&mut l, plain("wa"));
    let mut limited = wallet("wa");
    limited.limit_minor = Some(1);
    accounts(&mut l, limited);
    let mut meta = wallet("wa");
    meta.metadata = Some(b"m".to_vec().into());
    accounts(&mut l, meta);
    let both = AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: true };
    accounts(&mut l, plain("wb").with_flags(both));
    let mut no_flag = plain("wb");
    no_flag.limit_minor = Some(1);
    accounts(&mut l, no_flag);
    assert_eq!(one(&mut l, pending("hold", "bank", "bob", 1, None), T0).result, R::Ok);
    seen.insert(l.set_account_status("bob", StatusAction::Close, T0).result);
    seen.insert(l.set_account_status("carol", StatusAction::Close, T0).result);

    let missing: Vec<_> = ResultCode::ALL
        .iter()
        .filter(|c| !seen.contains(c) && !matches!(c, R::CapacityExceeded | R::RiskDeclined))
        .collect();
    assert!(missing.is_empty(), "never produced: {missing:?}");
    l.check_invariants().unwrap();
}

#[test]
fn expiry_is_bounded_per_call() {
    use puhui_ledger::{Currency, Id, Ledger, NewAccount, TransferRequest};
    let id = |s: &str| Id::new(s).unwrap();
    let cny = Currency::iso("CNY").unwrap();
    let mut l = Ledger::new();
    l.create_accounts(vec![NewAccount::new(id("a"), cny), NewAccount::new(id("b"), cny)], 1);
    let holds = (0..10)
        .map(|i| TransferRequest::pending(id(&format!("h{i}")), id("a"), id("b"), 1, cny.code(), Some(1)))
        .collect();
    l.create_transfers(holds, 1_000);
    let later = 1_000 + 10 * 1_000_000;
    assert_eq!(l.expire_due_at_most(later, 3), 3);
    assert_eq!(l.expire_due_at_most(later, 3), 3);
    assert_eq!(l.expire_due(later), 4);
    assert_eq!(l.account("a").unwrap().balances.debits_pending, 0);
    l.check_invariants().unwrap();
}

#[test]
fn one_code_with_two_exponents_is_two_units() {
    use puhui_ledger::{Currency, Id, Ledger, NewAccount, ResultCode, TransferRequest};
    let id = |s: &str| Id::new(s).unwrap();
    let mut l = Ledger::new();
    let pts0 = Currency::parse("PTS", Some(0)).unwrap();
    let pts2 = Currency::parse("PTS", Some(2)).unwrap();
    l.create_accounts(vec![NewAccount::new(id("a"), pts0), NewAccount::new(id("b"), pts2)], 1);
    let r = l.create_transfers(vec![TransferRequest::single(id("t"), id("a"), id("b"), 100, pts0.code())], 2);
    assert_eq!(r[0].result, ResultCode::CurrencyMismatch);
}
