//! Property tests: random sequences of operations keep the ledger's invariants, every recorded
//! transfer id keeps its result, and replaying the journal reproduces the state exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use puhui_ledger::{
    AccountFlags, AccountStatus, Balances, Currency, Id, Ledger, NewAccount, Page, PendingStatus, ResultCode,
    StatusAction, TransferKind, TransferRequest,
};

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
/// Accounts `a0`..`a8` may be named: `a0`..`a7` are created first, `a8` only maybe later.
const ACCOUNT_IDS: u8 = 9;
/// Transfer ids `t0`..`t63`: few enough that ids are reused often. Pending transfers mostly take
/// `t0`..`t15`, which posts and voids mostly name; the others mostly take `t16`..`t63`.
const TRANSFER_IDS: u8 = 64;
const PENDING_IDS: u8 = 16;

#[derive(Clone, Debug)]
struct AccountSpec {
    index: u8,
    usd: bool,
    flags: AccountFlags,
    limit: Option<u64>,
}

#[derive(Clone, Debug)]
enum KindSpec {
    Single { debit: u8, credit: u8, amount: u64, usd: bool },
    Pending { debit: u8, credit: u8, amount: u64, usd: bool, timeout_ms: Option<u64> },
    Post { pending: u8, amount: Option<u64> },
    Void { pending: u8 },
}

#[derive(Clone, Debug)]
struct TransferSpec {
    id: u8,
    kind: KindSpec,
    code: u32,
    linked: bool,
    /// 0..=5 nothing; 6, 7: metadata and references; 8: a post or void names accounts; 9: a post or
    /// void names a currency, another kind a pending id.
    extra: u8,
}

#[derive(Clone, Debug)]
enum Op {
    Accounts(Vec<AccountSpec>),
    Transfers(Vec<TransferSpec>),
    Status(u8, StatusAction),
    /// Advance the clock and expire what is due.
    Tick(u64),
    /// The wall clock steps back.
    Back(u64),
}

fn account_name(index: u8) -> String {
    format!("a{index}")
}

fn transfer_name(index: u8) -> String {
    format!("t{index}")
}

fn currency(is_usd: bool) -> Currency {
    if is_usd {
        usd()
    } else {
        cny()
    }
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1u64..1_000,
        2 => 1_000u64..100_000,
        1 => (0u64..1_000).prop_map(|d| u64::MAX - d),
        1 => (0u64..1_000).prop_map(|d| u64::MAX / 2 - d),
        1 => Just(0u64),
    ]
}

fn flags() -> impl Strategy<Value = AccountFlags> {
    let f = |d, c| AccountFlags { debits_must_not_exceed_credits: d, credits_must_not_exceed_debits: c };
    prop_oneof![
        4 => Just(f(false, false)),
        4 => Just(f(true, false)),
        2 => Just(f(false, true)),
        1 => Just(f(true, true)),
    ]
}

fn account_spec() -> impl Strategy<Value = AccountSpec> {
    let limit = prop_oneof![
        6 => Just(None),
        3 => (0u64..2_000).prop_map(Some),
        1 => (0u64..1_000).prop_map(|d| Some(u64::MAX - d)),
    ];
    (0..ACCOUNT_IDS, prop::bool::weighted(0.2), flags(), limit).prop_map(|(index, usd, flags, limit)| {
        // A limit needs a floor flag; give one mostly, so limit_requires_flag stays rare.
        let limit = if flags == AccountFlags::default() && index % 4 != 0 { None } else { limit };
        AccountSpec { index, usd, flags, limit }
    })
}

fn pending_id() -> impl Strategy<Value = u8> {
    prop_oneof![9 => 0..PENDING_IDS, 1 => 0..TRANSFER_IDS]
}

fn other_id() -> impl Strategy<Value = u8> {
    prop_oneof![9 => PENDING_IDS..TRANSFER_IDS, 1 => 0..TRANSFER_IDS]
}

fn kind_spec() -> impl Strategy<Value = (u8, KindSpec)> {
    let account = prop_oneof![20 => 0..ACCOUNT_IDS - 1, 1 => Just(ACCOUNT_IDS - 1)];
    let usd = prop::bool::weighted(0.1);
    let timeout = prop_oneof![3 => Just(None), 1 => Just(Some(0)), 6 => (1u64..12).prop_map(Some)];
    let post_amount = prop_oneof![3 => Just(None), 5 => amount().prop_map(Some)];
    prop_oneof![
        5 => (other_id(), account.clone(), account.clone(), amount(), usd)
            .prop_map(|(id, debit, credit, amount, usd)| (id, KindSpec::Single { debit, credit, amount, usd })),
        3 => (pending_id(), account.clone(), account, amount(), usd, timeout).prop_map(
            |(id, debit, credit, amount, usd, timeout_ms)| {
                (id, KindSpec::Pending { debit, credit, amount, usd, timeout_ms })
            }
        ),
        3 => (other_id(), pending_id(), post_amount)
            .prop_map(|(id, pending, amount)| (id, KindSpec::Post { pending, amount })),
        1 => (other_id(), pending_id()).prop_map(|(id, pending)| (id, KindSpec::Void { pending })),
    ]
}

fn transfer_spec() -> impl Strategy<Value = TransferSpec> {
    (kind_spec(), prop_oneof![5 => Just(0u32), 1 => Just(7u32)], prop::bool::weighted(0.15), 0u8..10)
        .prop_map(|((id, kind), code, linked, extra)| TransferSpec { id, kind, code, linked, extra })
}

fn op() -> impl Strategy<Value = Op> {
    let action = prop_oneof![
        4 => Just(StatusAction::Freeze),
        5 => Just(StatusAction::Unfreeze),
        1 => Just(StatusAction::Close),
    ];
    prop_oneof![
        1 => prop::collection::vec(account_spec(), 1..3).prop_map(Op::Accounts),
        10 => prop::collection::vec(transfer_spec(), 1..10).prop_map(Op::Transfers),
        2 => (0..ACCOUNT_IDS, action).prop_map(|(a, action)| Op::Status(a, action)),
        3 => (0u64..15 * MS).prop_map(Op::Tick),
        1 => (0u64..20 * MS).prop_map(Op::Back),
    ]
}

fn new_account(spec: &AccountSpec) -> NewAccount {
    let mut account =
        NewAccount::new(id(&account_name(spec.index)), currency(spec.usd)).with_flags(spec.flags);
    account.limit_minor = spec.limit;
    account
}

fn request(spec: &TransferSpec) -> TransferRequest {
    let tid = id(&transfer_name(spec.id));
    let currency_code = |usd| currency(usd).code();
    let mut request = match spec.kind {
        KindSpec::Single { debit, credit, amount, usd } => TransferRequest::single(
            tid,
            id(&account_name(debit)),
            id(&account_name(credit)),
            amount,
            currency_code(usd),
        ),
        KindSpec::Pending { debit, credit, amount, usd, timeout_ms } => TransferRequest::pending(
            tid,
            id(&account_name(debit)),
            id(&account_name(credit)),
            amount,
            currency_code(usd),
            timeout_ms,
        ),
        KindSpec::Post { pending, amount } => TransferRequest::post(tid, id(&transfer_name(pending)), amount),
        KindSpec::Void { pending } => TransferRequest::void(tid, id(&transfer_name(pending))),
    };
    request.code = spec.code;
    request.linked = spec.linked;
    match spec.extra {
        6 => request.metadata = Some(b"{\"memo\":1}".to_vec().into()),
        7 => {
            request.metadata = Some(b"{\"memo\":2}".to_vec().into());
            request.references.end_to_end_id = Some(format!("E2E-{}", spec.id).into());
            request.references.uetr = Some([spec.id; 16]);
        }
        8 if request.kind.resolves_pending() => {
            request.debit_account_id = Some(id(&account_name(spec.id % 3)));
            request.credit_account_id = Some(id(&account_name(3 + spec.id % 3)));
        }
        9 if request.kind.resolves_pending() => {
            request.currency = Some(currency(matches!(spec.id % 5, 0)).code())
        }
        // Meaningless on the other kinds, and ignored.
        9 => request.pending_id = Some(id(&transfer_name(spec.id % 4))),
        _ => {}
    }
    request
}

/// Whether `new` asks for the event recorded as `canonical` (every field filled in): fields a post or
/// void omits are taken from the pending transfer, and a post without an amount posts the whole hold.
fn same_event(ledger: &Ledger, canonical: &TransferRequest, new: &TransferRequest) -> bool {
    let resolves = new.kind.resolves_pending();
    let given_matches =
        |given: Option<&Id>, recorded: Option<&Id>| given.is_none() && resolves || given == recorded;
    let amount = match (new.kind, new.amount_minor) {
        (TransferKind::PostPending, None) => {
            let pending = new.pending_id.as_deref().expect("a post names its pending transfer");
            ledger.transfer(pending).and_then(|p| p.request.amount_minor)
        }
        (_, amount) => amount,
    };
    canonical.kind == new.kind
        && (!resolves || canonical.pending_id == new.pending_id)
        && canonical.timeout_ms_normalized() == new.timeout_ms_normalized()
        && given_matches(new.debit_account_id.as_ref(), canonical.debit_account_id.as_ref())
        && given_matches(new.credit_account_id.as_ref(), canonical.credit_account_id.as_ref())
        && amount == canonical.amount_minor
        && (new.currency.is_none() && resolves || new.currency == canonical.currency)
        && canonical.code == new.code
        && canonical.metadata == new.metadata
        && canonical.references == new.references
}

/// What the first recording of a transfer id was: the request, its result and its timestamp.
struct Recorded {
    request: TransferRequest,
    result: ResultCode,
    timestamp_ns: u64,
}

impl Recorded {
    /// What the same request gives from now on.
    fn expected(&self) -> ResultCode {
        if self.result == ResultCode::Ok {
            ResultCode::Exists
        } else {
            self.result
        }
    }
}

struct Harness {
    ledger: Ledger,
    now: u64,
    recorded: BTreeMap<String, Recorded>,
    journal: Vec<Event>,
}

impl Harness {
    fn after_batch(&mut self) -> Result<(), TestCaseError> {
        if let Err(e) = self.ledger.check_invariants() {
            return Err(TestCaseError::fail(e));
        }
        // Journal what was applied, as the store would, and check time order.
        let events = drain_events(&mut self.ledger);
        for event in events {
            if let Some(last) = self.journal.last() {
                prop_assert!(last.timestamp_ns() < event.timestamp_ns(), "journal out of order: {event:?}");
            }
            self.journal.push(event);
        }
        // Every recorded id keeps its result forever.
        let before = self.ledger.transfers_count();
        for (tid, r) in &self.recorded {
            let t = self.ledger.transfer(tid).expect("recorded transfer is kept");
            prop_assert_eq!(t.result, r.result, "{}", tid);
            prop_assert_eq!(t.timestamp_ns, r.timestamp_ns, "{}", tid);
            let mut again = r.request.clone();
            again.linked = false;
            let result = one(&mut self.ledger, again, self.now);
            prop_assert_eq!(result.result, r.expected(), "{} retried", tid);
            prop_assert_eq!(result.timestamp_ns, r.timestamp_ns, "{} retried", tid);
            if r.result != ResultCode::Ok {
                continue;
            }
            // The recorded (canonical) form is the same event; so is a post or void that leaves out
            // what the pending transfer says. Anything else under this id is refused.
            let canonical = t.request;
            let mut variants = vec![canonical.clone()];
            if canonical.kind.resolves_pending() {
                let mut bare = canonical.clone();
                bare.debit_account_id = None;
                bare.credit_account_id = None;
                bare.currency = None;
                variants.push(bare.clone());
                bare.amount_minor = None;
                variants.push(bare);
            }
            if let Some(amount) = canonical.amount_minor {
                let mut other = canonical.clone();
                other.amount_minor = Some(amount ^ 1);
                variants.push(other);
            }
            for variant in variants {
                let same = same_event(&self.ledger, &canonical, &variant);
                let result = one(&mut self.ledger, variant.clone(), self.now);
                if same {
                    prop_assert_eq!(result.result, ResultCode::Exists, "{:?}", variant);
                    prop_assert_eq!(result.timestamp_ns, r.timestamp_ns);
                } else {
                    prop_assert!(
                        result.result != ResultCode::Exists && result.timestamp_ns == 0,
                        "{variant:?} is not {canonical:?} but gave {result:?}"
                    );
                }
            }
        }
        prop_assert_eq!(self.ledger.transfers_count(), before, "retries recorded nothing");
        prop_assert!(!self.ledger.has_log(), "retries journal nothing");
        Ok(())
    }

    fn transfers(&mut self, specs: &[TransferSpec]) -> Result<(), TestCaseError> {
        let requests: Vec<TransferRequest> = specs.iter().map(request).collect();
        let results = self.ledger.create_transfers(requests.clone(), self.now);
        prop_assert_eq!(results.len(), requests.len());
        let mut untraced = BTreeSet::new();
        for (request, result) in requests.iter().zip(&results) {
            let tid = request.id.to_string();
            if result.timestamp_ns == 0 {
                prop_assert!(
                    !matches!(result.result, ResultCode::Ok | ResultCode::Exists),
                    "{tid}: {result:?} without a timestamp"
                );
                untraced.insert(tid);
                continue;
            }
            match self.recorded.get(&tid) {
                Some(r) => {
                    prop_assert_eq!(result.result, r.expected(), "{} reused", tid);
                    prop_assert_eq!(result.timestamp_ns, r.timestamp_ns, "{} reused", tid);
                    if result.result == ResultCode::Exists {
                        let canonical = self.ledger.transfer(&tid).expect("exists").request;
                        prop_assert!(
                            same_event(&self.ledger, &canonical, request),
                            "{tid}: {request:?} is not the event recorded: {canonical:?}"
                        );
                    }
                }
                None => {
                    prop_assert_ne!(result.result, ResultCode::Exists, "{} exists out of nowhere", tid);
                    prop_assert!(
                        result.timestamp_ns > self.last_assigned(),
                        "{tid}: timestamp not increasing"
                    );
                    self.recorded.insert(
                        tid,
                        Recorded {
                            request: request.clone(),
                            result: result.result,
                            timestamp_ns: result.timestamp_ns,
                        },
                    );
                }
            }
        }
        // Whatever failed without a timestamp (input errors, failed or open chains) left no trace.
        for tid in untraced {
            if !self.recorded.contains_key(&tid) {
                prop_assert!(self.ledger.transfer(&tid).is_none(), "{tid} left a trace");
            }
        }
        // A failed or open chain gives no member `ok`; a chain that succeeded gives no member a failure.
        let mut start = 0;
        for (i, request) in requests.iter().enumerate() {
            if request.linked && i + 1 < requests.len() {
                continue;
            }
            let chain = &results[start..=i];
            let all_ok = chain.iter().all(|r| r.result.is_success());
            let none_ok = chain.iter().all(|r| !r.result.is_success());
            prop_assert!(all_ok || none_ok, "chain {start}..={i} half applied: {chain:?}");
            if request.linked {
                prop_assert!(chain.iter().all(|r| r.result == ResultCode::LinkedEventChainOpen));
            }
            start = i + 1;
        }
        Ok(())
    }

    fn last_assigned(&self) -> u64 {
        self.journal.last().map_or(0, |e| e.timestamp_ns())
    }
}

fn run(initial: Vec<AccountSpec>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness { ledger: Ledger::new(), now: T0, recorded: BTreeMap::new(), journal: Vec::new() };
    // The initial accounts are a0, a1, ... in order (their spec's index is ignored).
    let initial: Vec<NewAccount> = initial
        .iter()
        .enumerate()
        .map(|(i, spec)| new_account(&AccountSpec { index: i as u8, ..spec.clone() }))
        .collect();
    h.ledger.create_accounts(initial, h.now);
    h.after_batch()?;
    for op in &ops {
        h.now += 1_000;
        match op {
            Op::Accounts(specs) => {
                let results = h.ledger.create_accounts(specs.iter().map(new_account).collect(), h.now);
                prop_assert_eq!(results.len(), specs.len());
            }
            Op::Transfers(specs) => h.transfers(specs)?,
            Op::Status(index, action) => {
                let r = h.ledger.set_account_status(&account_name(*index), *action, h.now);
                if let Some(a) = h.ledger.account(&account_name(*index)) {
                    if r.result == ResultCode::Ok {
                        let expected = match action {
                            StatusAction::Freeze => puhui_ledger::AccountStatus::Frozen,
                            StatusAction::Unfreeze => puhui_ledger::AccountStatus::Open,
                            StatusAction::Close => puhui_ledger::AccountStatus::Closed,
                        };
                        prop_assert_eq!(a.status, expected);
                    }
                    if r.result == ResultCode::AccountBalanceNotZero
                        || r.result == ResultCode::AccountHasPending
                    {
                        prop_assert_ne!(a.status, puhui_ledger::AccountStatus::Closed);
                    }
                } else {
                    prop_assert_eq!(r.result, ResultCode::AccountNotFound);
                }
            }
            Op::Tick(delta) => {
                h.now += delta;
                h.ledger.expire_due(h.now);
                if let Some(next) = h.ledger.next_expiry_ns() {
                    prop_assert!(next > h.now, "expire_due left a due hold");
                }
            }
            Op::Back(delta) => h.now = h.now.saturating_sub(*delta),
        }
        h.after_batch()?;
    }

    // Queries agree with the current state.
    for account in h.ledger.accounts() {
        prop_assert_eq!(h.ledger.balance_at(&account.id, u64::MAX).unwrap(), account.balances);
        let (page, more) =
            h.ledger.account_transfers(&account.id, Page { limit: 10_000, ..Default::default() }).unwrap();
        prop_assert!(!more);
        prop_assert!(page.windows(2).all(|w| w[0].timestamp_ns < w[1].timestamp_ns));
        for t in &page {
            prop_assert_eq!(t.result, ResultCode::Ok);
            let touches = [&t.request.debit_account_id, &t.request.credit_account_id]
                .iter()
                .any(|a| a.as_deref() == Some(&*account.id));
            prop_assert!(touches);
            if t.request.kind == TransferKind::Pending {
                prop_assert!(t.pending_status.is_some());
            }
        }
    }

    // An independent model that applies the journal gives the same balances and statuses.
    check_model(&h.ledger, &h.journal)?;

    // Replaying the whole journal into a fresh ledger reproduces the same state.
    let journal = std::mem::take(&mut h.journal);
    let replayed = match replay_all(journal.clone()) {
        Ok(l) => l,
        Err(e) => return Err(TestCaseError::fail(format!("replay failed: {e}"))),
    };
    prop_assert!(!replayed.has_log());
    prop_assert_eq!(h.ledger.accounts().collect::<Vec<_>>(), replayed.accounts().collect::<Vec<_>>());
    prop_assert_eq!(h.ledger.transfers_count(), replayed.transfers_count());
    for i in 0..TRANSFER_IDS {
        let tid = transfer_name(i);
        prop_assert_eq!(h.ledger.transfer(&tid), replayed.transfer(&tid), "{}", tid);
    }
    prop_assert_eq!(h.ledger.next_expiry_ns(), replayed.next_expiry_ns());
    for account in h.ledger.accounts() {
        for event in journal.iter().step_by(7) {
            let ts = event.timestamp_ns();
            prop_assert_eq!(h.ledger.balance_at(&account.id, ts), replayed.balance_at(&account.id, ts));
        }
        let page = Page { limit: 10_000, ..Default::default() };
        prop_assert_eq!(
            h.ledger.account_transfers(&account.id, page.clone()),
            replayed.account_transfers(&account.id, page)
        );
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// Recomputes every balance and status from the journal alone, with none of the ledger's code, and
/// checks each applied event against the rules (open accounts, floors, no overflow).
fn check_model(ledger: &Ledger, journal: &[Event]) -> Result<(), TestCaseError> {
    struct ModelAccount {
        currency: Currency,
        flags: AccountFlags,
        limit: u128,
        status: AccountStatus,
        balances: Balances,
    }
    let mut accounts: BTreeMap<String, ModelAccount> = BTreeMap::new();
    // Open holds: pending id -> (debit, credit, amount).
    let mut holds: BTreeMap<String, (String, String, u64)> = BTreeMap::new();
    for event in journal {
        match event {
            Event::Account(a, _) => {
                let fresh = ModelAccount {
                    currency: a.currency,
                    flags: a.flags,
                    limit: a.limit_minor.unwrap_or(0) as u128,
                    status: AccountStatus::Open,
                    balances: Balances::default(),
                };
                prop_assert!(accounts.insert(a.id.to_string(), fresh).is_none(), "account created twice");
            }
            Event::Status(account, action, _) => {
                let a = accounts.get_mut(account.as_str()).expect("status of a known account");
                prop_assert_ne!(a.status, AccountStatus::Closed);
                a.status = match action {
                    StatusAction::Freeze => AccountStatus::Frozen,
                    StatusAction::Unfreeze => AccountStatus::Open,
                    StatusAction::Close => {
                        let b = a.balances;
                        prop_assert_eq!(b.debits_pending, 0);
                        prop_assert_eq!(b.credits_pending, 0);
                        prop_assert_eq!(b.debits_posted, b.credits_posted);
                        AccountStatus::Closed
                    }
                };
            }
            Event::Expired(pending, ts) => {
                let (debit, credit, amount) = holds.remove(pending.as_str()).expect("expired hold is open");
                let t = ledger.transfer(pending).expect("expired transfer");
                prop_assert!(t.expires_at_ns.is_some_and(|at| at <= *ts), "{} expired early", pending);
                accounts.get_mut(&debit).unwrap().balances.debits_pending -= amount;
                accounts.get_mut(&credit).unwrap().balances.credits_pending -= amount;
            }
            Event::Transfer(_, _, result) if *result != ResultCode::Ok => {}
            Event::Transfer(r, _, _) => {
                let debit = r.debit_account_id.as_ref().expect("canonical request").to_string();
                let credit = r.credit_account_id.as_ref().expect("canonical request").to_string();
                prop_assert_ne!(&debit, &credit);
                let amount = r.amount_minor;
                let mut d = accounts[&debit].balances;
                let mut c = accounts[&credit].balances;
                let overflow = || TestCaseError::fail(format!("{} overflows a balance", r.id));
                match r.kind {
                    TransferKind::Single | TransferKind::Pending => {
                        let amount = amount.expect("amount");
                        prop_assert!(amount > 0);
                        for a in [&accounts[&debit], &accounts[&credit]] {
                            prop_assert_eq!(a.status, AccountStatus::Open, "{} on a blocked account", r.id);
                            prop_assert_eq!(Some(a.currency.code()), r.currency);
                        }
                        if r.kind == TransferKind::Single {
                            d.debits_posted = d.debits_posted.checked_add(amount).ok_or_else(overflow)?;
                            c.credits_posted = c.credits_posted.checked_add(amount).ok_or_else(overflow)?;
                        } else {
                            d.debits_pending = d.debits_pending.checked_add(amount).ok_or_else(overflow)?;
                            c.credits_pending = c.credits_pending.checked_add(amount).ok_or_else(overflow)?;
                            holds.insert(r.id.to_string(), (debit.clone(), credit.clone(), amount));
                        }
                    }
                    TransferKind::PostPending | TransferKind::VoidPending => {
                        let pending = r.pending_id.as_ref().expect("pending id").to_string();
                        let Some((hold_debit, hold_credit, held)) = holds.remove(&pending) else {
                            return Err(TestCaseError::fail(format!("{} resolves a closed hold", r.id)));
                        };
                        prop_assert_eq!((&hold_debit, &hold_credit), (&debit, &credit));
                        d.debits_pending -= held;
                        c.credits_pending -= held;
                        if r.kind == TransferKind::PostPending {
                            let amount = amount.expect("a post's canonical amount");
                            prop_assert!(
                                amount > 0 && amount <= held,
                                "{} posts {} of {}",
                                r.id,
                                amount,
                                held
                            );
                            for a in [&accounts[&debit], &accounts[&credit]] {
                                prop_assert_eq!(
                                    a.status,
                                    AccountStatus::Open,
                                    "{} on a blocked account",
                                    r.id
                                );
                            }
                            d.debits_posted = d.debits_posted.checked_add(amount).ok_or_else(overflow)?;
                            c.credits_posted = c.credits_posted.checked_add(amount).ok_or_else(overflow)?;
                        } else {
                            prop_assert_eq!(amount, None);
                        }
                    }
                }
                for (name, b) in [(&debit, d), (&credit, c)] {
                    let a = accounts.get_mut(name).unwrap();
                    let (dp, dq, cp, cq) = (
                        b.debits_posted as u128,
                        b.debits_pending as u128,
                        b.credits_posted as u128,
                        b.credits_pending as u128,
                    );
                    if a.flags.debits_must_not_exceed_credits {
                        prop_assert!(dp + dq <= cp + a.limit, "{} takes {} below its floor", r.id, name);
                    }
                    if a.flags.credits_must_not_exceed_debits {
                        prop_assert!(cp + cq <= dp + a.limit, "{} takes {} above its ceiling", r.id, name);
                    }
                    a.balances = b;
                }
            }
        }
    }
    let live: Vec<_> = ledger.accounts().collect();
    prop_assert_eq!(live.len(), accounts.len());
    for a in live {
        let m = &accounts[a.id.as_str()];
        prop_assert_eq!(a.balances, m.balances, "balances of {}", a.id);
        prop_assert_eq!(a.status, m.status, "status of {}", a.id);
    }
    for pending in holds.keys() {
        let t = ledger.transfer(pending).expect("hold exists");
        prop_assert_eq!(t.pending_status, Some(PendingStatus::Pending), "{}", pending);
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=100000 for a longer run.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_invariants_and_replay_exactly(
        initial in prop::collection::vec(account_spec(), (ACCOUNT_IDS - 1) as usize),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(initial, ops)?;
    }
}

/// The same property on a hand-picked sequence that exercises overflow, chains and expiry together.
#[test]
fn a_fixed_sequence_keeps_the_invariants() {
    let plain = AccountFlags::default();
    let wallet = AccountFlags::WALLET;
    let line = AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: true };
    let acct = |index, flags, limit| AccountSpec { index, usd: false, flags, limit };
    let t = |id, kind, linked| TransferSpec { id, kind, code: 0, linked, extra: 0 };
    let single = |debit, credit, amount| KindSpec::Single { debit, credit, amount, usd: false };
    let pending = |debit, credit, amount, timeout_ms| KindSpec::Pending {
        debit,
        credit,
        amount,
        usd: false,
        timeout_ms,
    };
    let ops = vec![
        Op::Transfers(vec![
            t(0, single(0, 1, u64::MAX), false),
            t(1, single(0, 2, 1), false),
            t(2, single(3, 1, 1), false),
            t(3, pending(3, 2, 500, Some(2)), true),
            t(4, single(2, 0, 300), true),
            t(5, KindSpec::Post { pending: 3, amount: Some(200) }, false),
        ]),
        Op::Tick(3 * MS),
        Op::Transfers(vec![
            t(6, pending(3, 2, 50, Some(1)), false),
            t(7, single(1, 3, 10), true),
            t(8, single(2, 3, u64::MAX), false),
        ]),
        Op::Status(2, StatusAction::Freeze),
        Op::Transfers(vec![t(9, KindSpec::Void { pending: 6 }, false), t(10, single(3, 2, 1), false)]),
        Op::Back(50 * MS),
        Op::Tick(2 * MS),
        Op::Status(2, StatusAction::Unfreeze),
        Op::Transfers(vec![t(0, single(0, 1, u64::MAX), false), t(11, pending(4, 5, 10, Some(1)), true)]),
    ];
    let initial = vec![
        acct(0, plain, None),
        acct(1, plain, None),
        acct(2, wallet, Some(100)),
        acct(3, line, Some(1_000)),
    ];
    run(initial, ops).unwrap();
}
