//! The several-nodes contention load and its checks (used by the in-process test with several
//! [`crate::PgStore`]s and by the test that runs several `puhui` processes on one database).
//!
//! Load: a few hot wallets; every client sends small batches of conflicting events: single
//! transfers that may overdraw, holds (some expiring within milliseconds) that any node may post
//! or void, two-transfer linked chains, and top-ups. Checks afterwards: per-currency sums zero, no
//! wallet below zero, balances equal the sums of the recorded transfers, every acknowledged event
//! recorded with its acknowledged result, each hold resolved at most once, and the journal verifies.

use std::collections::HashMap;

use puhui_ledger::{
    AccountFlags, Currency, Id, NewAccount, PendingStatus, ResultCode, TransferKind, TransferRequest,
};
use puhui_store::{LedgerStore, StoreError};

/// Hot wallets the load fights over.
pub const WALLETS: usize = 4;
/// Each wallet's opening balance.
pub const OPENING_MINOR: u64 = 5_000;

fn id(s: &str) -> Id {
    Id::new(s).expect("valid id")
}

fn wallet(i: usize) -> Id {
    id(&format!("hot-{}", i % WALLETS))
}

/// Creates the bank and the hot wallets and funds them (idempotent: every node may call it).
pub fn setup(store: &dyn LedgerStore) -> Result<(), StoreError> {
    let cny = Currency::iso("CNY").expect("CNY");
    let mut accounts = vec![NewAccount::new(id("bank"), cny)];
    accounts.extend((0..WALLETS).map(|i| NewAccount::new(wallet(i), cny).with_flags(AccountFlags::WALLET)));
    store.create_accounts(accounts)?;
    let funding = (0..WALLETS)
        .map(|i| {
            TransferRequest::single(
                id(&format!("open-{i}")),
                id("bank"),
                wallet(i),
                OPENING_MINOR,
                cny.code(),
            )
        })
        .collect();
    store.create_transfers(funding)?;
    Ok(())
}

/// A small deterministic generator (no dependency; not for anything but load).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Sends `rounds` batches as client `client` (a unique name) and calls `ack` with each event's id
/// and acknowledged result. Holds are named `h-<client>-<n>`; a client also posts and voids holds
/// of clients `0..clients` of the same `node_prefix`es it is told about (`peers`), so two nodes
/// race for the same holds.
pub fn run_client(
    store: &dyn LedgerStore,
    client: &str,
    peers: &[String],
    seed: u64,
    rounds: usize,
    ack: &mut dyn FnMut(&Id, ResultCode),
) -> Result<(), StoreError> {
    let cny = Currency::iso("CNY").expect("CNY").code();
    let mut rng = Rng(seed);
    let mut holds = 0u64;
    for round in 0..rounds {
        let mut batch = Vec::new();
        let events = 1 + rng.below(4);
        for k in 0..events {
            let name = format!("{client}-{round}-{k}");
            let a = rng.below(WALLETS as u64) as usize;
            let b = (a + 1 + rng.below(WALLETS as u64 - 1) as usize) % WALLETS;
            let amount = 1 + rng.below(400);
            match rng.below(10) {
                0..=2 => batch.push(TransferRequest::single(
                    id(&format!("s-{name}")),
                    wallet(a),
                    wallet(b),
                    amount,
                    cny,
                )),
                3..=4 => {
                    // Some holds expire within milliseconds: expiry races with posts and voids.
                    let timeout = if rng.below(3) == 0 { Some(1 + rng.below(20)) } else { None };
                    let hold = id(&format!("h-{client}-{holds}"));
                    holds += 1;
                    batch.push(TransferRequest::pending(hold, wallet(a), wallet(b), amount, cny, timeout));
                }
                5..=6 => {
                    // Post or void a hold of this client or of a peer (maybe already resolved).
                    let owner = if peers.is_empty() || rng.below(2) == 0 {
                        client.to_string()
                    } else {
                        peers[rng.below(peers.len() as u64) as usize].clone()
                    };
                    let target = id(&format!("h-{owner}-{}", rng.below(holds.max(1) + 2)));
                    let request = if rng.below(2) == 0 {
                        let partial = (rng.below(2) == 0).then(|| 1 + rng.below(50));
                        TransferRequest::post(id(&format!("p-{name}")), target, partial)
                    } else {
                        TransferRequest::void(id(&format!("v-{name}")), target)
                    };
                    batch.push(request);
                }
                7..=8 => {
                    // A linked chain a → b → c: both or neither.
                    let c = (b + 1) % WALLETS;
                    let first = TransferRequest {
                        linked: true,
                        ..TransferRequest::single(
                            id(&format!("l1-{name}")),
                            wallet(a),
                            wallet(b),
                            amount,
                            cny,
                        )
                    };
                    batch.push(first);
                    batch.push(TransferRequest::single(
                        id(&format!("l2-{name}")),
                        wallet(b),
                        wallet(c),
                        amount,
                        cny,
                    ));
                }
                _ => batch.push(TransferRequest::single(
                    id(&format!("t-{name}")),
                    id("bank"),
                    wallet(a),
                    amount,
                    cny,
                )),
            }
        }
        // Now and then resend the previous batch's ids: idempotency under contention.
        let results = store.create_transfers(batch.clone())?;
        assert_eq!(results.len(), batch.len());
        for (request, result) in batch.iter().zip(&results) {
            ack(&request.id, result.result);
        }
        if rng.below(8) == 0 {
            let again = store.create_transfers(batch.clone())?;
            for ((request, first), second) in batch.iter().zip(&results).zip(&again) {
                let same = match first.result {
                    ResultCode::Ok => second.result == ResultCode::Exists,
                    code if is_kept(&request.id, code) => second.result == code,
                    _ => {
                        // Not recorded: a retry is decided afresh, and its answer is what counts.
                        ack(&request.id, second.result);
                        true
                    }
                };
                if !same {
                    return Err(StoreError::Corrupt(format!(
                        "retry of {} gave {} after {}",
                        request.id, second.result, first.result
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether a failure is kept under its id (a retry returns it again), as the ledger decides.
pub fn is_recorded(code: ResultCode) -> bool {
    use ResultCode::*;
    matches!(
        code,
        AccountNotFound
            | CurrencyMismatch
            | ExceedsCredits
            | ExceedsDebits
            | AccountFrozen
            | AccountClosed
            | PendingNotFound
            | PendingAlreadyPosted
            | PendingAlreadyVoided
            | PendingExpired
            | PostAmountExceedsPending
            | PendingTransferNotPending
            | PendingTransferHasDifferentAccounts
            | Overflow
    )
}

/// Whether the event `id` (of this load) with result `code` is kept under its id: applied, or a
/// state-dependent failure of a lone transfer (a failed linked chain, `l1-…`/`l2-…`, leaves no trace).
pub fn is_kept(id: &str, code: ResultCode) -> bool {
    let in_chain = id.starts_with("l1-") || id.starts_with("l2-");
    code == ResultCode::Ok || (!in_chain && is_recorded(code))
}

/// Checks the database after the load against every acknowledged result. Returns a summary line.
pub fn check(
    url: &str,
    schema: Option<&str>,
    store: &dyn LedgerStore,
    acked: &HashMap<Id, ResultCode>,
) -> Result<String, String> {
    // Every acknowledged event is there with its result; rejected ones left no trace.
    let mut ok = 0usize;
    for (id, code) in acked {
        let found = store.transfer(id).map_err(|e| e.to_string())?;
        match (code, found) {
            (ResultCode::Ok, Some(t)) if t.result == ResultCode::Ok => ok += 1,
            (code, Some(t)) if is_kept(id, *code) && t.result == *code => {}
            (code, None) if !is_kept(id, *code) => {}
            // A rejected retry of an id another client recorded (ids are per client: impossible).
            (code, found) => return Err(format!("{id}: acknowledged {code}, stored {found:?}")),
        }
    }
    // Expire what is due, then the global invariants from the tables themselves.
    store.expire_due().map_err(|e| e.to_string())?;
    let mut client = crate::connect(url, schema).map_err(|e| e.to_string())?;
    let rows = client
        .query(&format!("SELECT {} FROM puhui_transfers", crate::rows::TRANSFER_COLUMNS), &[])
        .map_err(|e| crate::describe(&e))?;
    let transfers: Vec<_> =
        rows.iter().map(crate::rows::transfer).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let by_id: HashMap<&str, &puhui_ledger::Transfer> =
        transfers.iter().map(|t| (t.request.id.as_str(), t)).collect();
    // Expected balances from the transfers alone: posted sums and open holds.
    let mut expected: HashMap<String, [u128; 4]> = HashMap::new();
    let mut resolutions: HashMap<&str, usize> = HashMap::new();
    for t in transfers.iter().filter(|t| t.result == ResultCode::Ok) {
        let r = &t.request;
        let (d, c) = (
            r.debit_account_id.as_ref().unwrap().to_string(),
            r.credit_account_id.as_ref().unwrap().to_string(),
        );
        let amount = r.amount_minor.unwrap_or(0) as u128;
        match r.kind {
            TransferKind::Single => {
                expected.entry(d).or_default()[1] += amount;
                expected.entry(c).or_default()[3] += amount;
            }
            TransferKind::Pending => {
                if t.pending_status == Some(PendingStatus::Pending) {
                    expected.entry(d).or_default()[0] += amount;
                    expected.entry(c).or_default()[2] += amount;
                }
            }
            TransferKind::PostPending | TransferKind::VoidPending => {
                let pending = r.pending_id.as_ref().unwrap();
                *resolutions.entry(pending.as_str()).or_default() += 1;
                let hold = by_id.get(pending.as_str()).ok_or(format!("{} resolves a missing hold", r.id))?;
                let want = if r.kind == TransferKind::PostPending {
                    PendingStatus::Posted
                } else {
                    PendingStatus::Voided
                };
                if hold.pending_status != Some(want) {
                    return Err(format!(
                        "{} resolved {pending} but its status is {:?}",
                        r.id, hold.pending_status
                    ));
                }
                if r.kind == TransferKind::PostPending {
                    expected.entry(d).or_default()[1] += amount;
                    expected.entry(c).or_default()[3] += amount;
                }
            }
        }
    }
    if let Some((hold, n)) = resolutions.iter().find(|(_, n)| **n > 1) {
        return Err(format!("hold {hold} was resolved {n} times (double spend)"));
    }
    let accounts = client
        .query(&format!("SELECT {} FROM puhui_accounts", crate::rows::ACCOUNT_COLUMNS), &[])
        .map_err(|e| crate::describe(&e))?;
    let mut sums = [0u128; 4];
    for row in &accounts {
        let a = crate::rows::account(row).map_err(|e| e.to_string())?;
        let b = a.balances;
        let have = [
            b.debits_pending as u128,
            b.debits_posted as u128,
            b.credits_pending as u128,
            b.credits_posted as u128,
        ];
        let want = expected.get(a.id.as_str()).copied().unwrap_or_default();
        if have != want {
            return Err(format!("{}: balances {have:?} but its transfers sum to {want:?}", a.id));
        }
        for (s, h) in sums.iter_mut().zip(have) {
            *s += h;
        }
        if a.flags.debits_must_not_exceed_credits && have[0] + have[1] > have[3] {
            return Err(format!("wallet {} is below zero: {b:?}", a.id));
        }
    }
    if sums[0] != sums[2] || sums[1] != sums[3] {
        return Err(format!("debits and credits differ: {sums:?}"));
    }
    let verified = crate::verify::verify(url, schema).map_err(|e| format!("journal verify: {e}"))?;
    Ok(format!(
        "{} events acknowledged ({ok} ok), {} transfers recorded, {} journal entries verified",
        acked.len(),
        transfers.len(),
        verified.entries
    ))
}
