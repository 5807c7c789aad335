//! The in-memory ledger state machine.
//!
//! [`Ledger`] holds every account and transfer and decides each event's result. It does no I/O: the
//! caller passes the wall-clock time, and the store that owns it journals what [`Ledger::drain_log`]
//! returns before acknowledging. Replaying the journal calls the same code with the recorded
//! timestamps (`replay_*`) and checks that each event gives the recorded result, so the live path and
//! recovery can never disagree silently.

mod snapshot;

pub use snapshot::SnapshotBuilder;

use std::collections::BTreeSet;

use crate::segmented::{IdIndex, Segmented};
use foldhash::fast::RandomState;

use crate::account::{Account, AccountFlags, AccountStatus, Balances, NewAccount, StatusAction};
use crate::id::Id;
use crate::money::{Currency, CurrencyCode};
use crate::result::ResultCode;
use crate::transfer::{PendingStatus, References, Transfer, TransferKind, TransferRequest};
use crate::{
    ACCOUNTS_MAX, BATCH_EVENTS_MAX, END_TO_END_ID_BYTES_MAX, METADATA_BYTES_MAX, PENDING_TIMEOUT_MS_MAX,
    TRANSFERS_MAX,
};

const NONE: u32 = u32::MAX;
/// Set in a history entry's event index when the entry is the expiry of that pending transfer.
const EXPIRY_BIT: u32 = 1 << 31;
const NS_PER_MS: u64 = 1_000_000;

/// The result of one event with the ledger timestamp it got (or, for `exists`, the original's).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventResult {
    /// The outcome.
    pub result: ResultCode,
    /// Ledger timestamp; 0 when the event was rejected without being recorded.
    pub timestamp_ns: u64,
}

impl EventResult {
    fn rejected(result: ResultCode) -> EventResult {
        EventResult { result, timestamp_ns: 0 }
    }
}

/// An event the ledger applied and that must be journaled before it is acknowledged.
/// Indices refer to [`Ledger`] internals and are resolved with the `*_at` accessors.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogItem {
    /// Account number `.0` was created.
    AccountCreated(u32),
    /// Account `account` changed status by `action` at `timestamp_ns`.
    StatusChanged {
        /// Account index.
        account: u32,
        /// What changed.
        action: StatusAction,
        /// When.
        timestamp_ns: u64,
    },
    /// Transfer number `.0` was recorded (applied, or failed and kept for idempotency).
    Transfer(u32),
    /// Pending transfer number `.0` expired.
    Expired(u32),
}

/// Why a replayed event did not reproduce the journal (the journal and the code disagree).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReplayError {
    /// What was replayed.
    pub what: String,
    /// The result the journal recorded.
    pub recorded: ResultCode,
    /// The result the ledger computed now.
    pub computed: ResultCode,
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "replaying {} gave {} but the journal recorded {}", self.what, self.computed, self.recorded)
    }
}

/// A page request over an account's transfers (time order).
#[derive(Clone, Debug, Default)]
pub struct Page<'a> {
    /// How many transfers at most.
    pub limit: usize,
    /// Only transfers after this one.
    pub starting_after: Option<&'a str>,
    /// Only transfers before this one.
    pub ending_before: Option<&'a str>,
}

/// Why a query could not be answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QueryError {
    /// The account does not exist.
    AccountNotFound,
    /// The cursor transfer does not exist or does not touch this account.
    CursorNotFound,
}

/// One point of an account's balance history (see [`Ledger::history_at`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HistoryPoint {
    /// Index of the transfer (see [`Ledger::transfer_at`]).
    pub transfer: u32,
    /// Whether this point is the expiry of that pending transfer rather than the transfer itself.
    pub expiry: bool,
    /// When.
    pub timestamp_ns: u64,
    /// The account's balances after the event.
    pub balances: Balances,
}

#[derive(Clone, Copy, Debug)]
struct HistoryEntry {
    /// Transfer index, with [`EXPIRY_BIT`] for the expiry of that pending transfer.
    event: u32,
    balances: Balances,
}

#[derive(Debug)]
struct AccountRecord {
    id: Id,
    currency: Currency,
    flags: AccountFlags,
    limit_minor: Option<u64>,
    status: AccountStatus,
    metadata: Option<Box<[u8]>>,
    balances: Balances,
    timestamp_ns: u64,
    history: Segmented<HistoryEntry>,
}

#[derive(Debug, Default)]
struct TransferExtra {
    metadata: Option<Box<[u8]>>,
    references: References,
    /// For failed transfers: the request as it came (accounts may not exist).
    failed_request: Option<Box<TransferRequest>>,
}

#[derive(Debug)]
struct TransferRecord {
    id: Id,
    amount_minor: u64,
    timestamp_ns: u64,
    /// For a pending transfer: when it was posted/voided/expired (0 while pending).
    resolved_at_ns: u64,
    /// For a pending transfer: 0 or the expiry time.
    expires_at_ns: u64,
    timeout_ms: u64,
    debit: u32,
    credit: u32,
    /// For post/void: the pending transfer's index.
    pending: u32,
    code: u32,
    currency: CurrencyCode,
    kind: TransferKind,
    result: ResultCode,
    pending_status: PendingStatus,
    extra: Option<Box<TransferExtra>>,
}

/// What to restore when a linked chain fails.
#[derive(Debug)]
struct Undo {
    transfer: u32,
    debit_before: Balances,
    credit_before: Balances,
    /// Post/void: the pending transfer's status before.
    pending_before: Option<(PendingStatus, u64)>,
}

/// The ledger: accounts, transfers, holds, and the rules that decide every outcome.
pub struct Ledger {
    hasher: RandomState,
    accounts: Segmented<AccountRecord>,
    accounts_index: IdIndex,
    transfers: Segmented<TransferRecord>,
    transfers_index: IdIndex,
    /// (expires_at_ns, transfer index) of holds with a timeout that are still pending.
    expiries: BTreeSet<(u64, u32)>,
    last_timestamp_ns: u64,
    log: Vec<LogItem>,
    /// While a snapshot is open: records whose mutable fields changed (see `SnapshotBuilder`).
    snapshot_dirty: Option<Vec<u32>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

fn hash_str(hasher: &RandomState, s: &str) -> u64 {
    use std::hash::BuildHasher;
    hasher.hash_one(s)
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger {
            // Randomly seeded per process (foldhash): ids come from clients, so the table must not be
            // steerable into long probe chains. No result depends on the seed.
            hasher: RandomState::default(),
            accounts: Segmented::new(),
            accounts_index: IdIndex::new(),
            transfers: Segmented::new(),
            transfers_index: IdIndex::new(),
            expiries: BTreeSet::new(),
            last_timestamp_ns: 0,
            log: Vec::new(),
            snapshot_dirty: None,
        }
    }

    /// Reserves room for `transfers` more transfers (recovery knows roughly how many are coming).
    pub fn reserve_transfers(&mut self, transfers: usize) {
        let (records, hasher) = (&self.transfers, &self.hasher);
        self.transfers_index.reserve(transfers, |i| hash_str(hasher, &records[i as usize].id));
    }

    /// The last timestamp assigned.
    pub fn last_timestamp_ns(&self) -> u64 {
        self.last_timestamp_ns
    }

    /// How many accounts exist.
    pub fn accounts_count(&self) -> usize {
        self.accounts.len()
    }

    /// How many transfers are recorded (failed ones included).
    pub fn transfers_count(&self) -> usize {
        self.transfers.len()
    }

    fn next_timestamp(&mut self, now_ns: u64) -> u64 {
        let ts = now_ns.max(self.last_timestamp_ns.saturating_add(1));
        self.last_timestamp_ns = ts;
        ts
    }

    fn find_account(&self, id: &str) -> Option<u32> {
        let hash = hash_str(&self.hasher, id);
        self.accounts_index.find(hash, |i| &*self.accounts[i as usize].id == id)
    }

    fn find_transfer(&self, id: &str) -> Option<u32> {
        let hash = hash_str(&self.hasher, id);
        self.transfers_index.find(hash, |i| &*self.transfers[i as usize].id == id)
    }

    /// Takes the events applied since the last call, in order, for the journal.
    pub fn drain_log(&mut self) -> std::vec::Drain<'_, LogItem> {
        self.log.drain(..)
    }

    /// Whether there are applied events not yet drained.
    pub fn has_log(&self) -> bool {
        !self.log.is_empty()
    }

    // ----------------------------------------------------------------------------------------------
    // Accounts

    /// Creates accounts. One result per account, in order.
    pub fn create_accounts(&mut self, batch: Vec<NewAccount>, now_ns: u64) -> Vec<EventResult> {
        assert!(batch.len() <= BATCH_EVENTS_MAX, "batch size is checked by the caller");
        batch.into_iter().map(|a| self.create_account(a, now_ns, None)).collect()
    }

    fn create_account(&mut self, new: NewAccount, now_ns: u64, at_ns: Option<u64>) -> EventResult {
        if new.flags.debits_must_not_exceed_credits && new.flags.credits_must_not_exceed_debits {
            return EventResult::rejected(ResultCode::FlagsAreMutuallyExclusive);
        }
        if new.limit_minor.is_some()
            && !new.flags.debits_must_not_exceed_credits
            && !new.flags.credits_must_not_exceed_debits
        {
            return EventResult::rejected(ResultCode::LimitRequiresFlag);
        }
        if new.metadata.as_ref().is_some_and(|m| m.len() > METADATA_BYTES_MAX) {
            return EventResult::rejected(ResultCode::MetadataTooLarge);
        }
        if let Some(existing) = self.find_account(&new.id) {
            let a = &self.accounts[existing as usize];
            let result = if a.currency != new.currency {
                ResultCode::ExistsWithDifferentCurrency
            } else if a.flags != new.flags {
                ResultCode::ExistsWithDifferentFlags
            } else if a.limit_minor != new.limit_minor {
                ResultCode::ExistsWithDifferentLimit
            } else if a.metadata != new.metadata {
                ResultCode::ExistsWithDifferentMetadata
            } else {
                return EventResult { result: ResultCode::Exists, timestamp_ns: a.timestamp_ns };
            };
            return EventResult::rejected(result);
        }
        if self.accounts.len() >= ACCOUNTS_MAX {
            return EventResult::rejected(ResultCode::CapacityExceeded);
        }
        let timestamp_ns = match at_ns {
            Some(ts) => {
                self.last_timestamp_ns = ts;
                ts
            }
            None => self.next_timestamp(now_ns),
        };
        let index = self.accounts.len() as u32;
        let hash = hash_str(&self.hasher, &new.id);
        self.accounts.push(AccountRecord {
            id: new.id,
            currency: new.currency,
            flags: new.flags,
            limit_minor: new.limit_minor,
            status: AccountStatus::Open,
            metadata: new.metadata,
            balances: Balances::default(),
            timestamp_ns,
            history: Segmented::new(),
        });
        let (accounts, hasher) = (&self.accounts, &self.hasher);
        self.accounts_index.insert(hash, index, |i| hash_str(hasher, &accounts[i as usize].id));
        self.log.push(LogItem::AccountCreated(index));
        EventResult { result: ResultCode::Ok, timestamp_ns }
    }

    /// Freezes, unfreezes or closes an account.
    pub fn set_account_status(&mut self, id: &str, action: StatusAction, now_ns: u64) -> EventResult {
        self.set_status(id, action, now_ns, None)
    }

    fn set_status(&mut self, id: &str, action: StatusAction, now_ns: u64, at_ns: Option<u64>) -> EventResult {
        let Some(index) = self.find_account(id) else {
            return EventResult::rejected(ResultCode::AccountNotFound);
        };
        let account = &self.accounts[index as usize];
        let next = match (account.status, action) {
            (AccountStatus::Closed, _) => return EventResult::rejected(ResultCode::AccountClosed),
            (AccountStatus::Open, StatusAction::Unfreeze) | (AccountStatus::Frozen, StatusAction::Freeze) => {
                // Already there: idempotent, nothing to journal.
                return EventResult { result: ResultCode::Ok, timestamp_ns: self.last_timestamp_ns };
            }
            (_, StatusAction::Freeze) => AccountStatus::Frozen,
            (_, StatusAction::Unfreeze) => AccountStatus::Open,
            (_, StatusAction::Close) => {
                let b = &account.balances;
                if b.debits_pending != 0 || b.credits_pending != 0 {
                    return EventResult::rejected(ResultCode::AccountHasPending);
                }
                if b.debits_posted != b.credits_posted {
                    return EventResult::rejected(ResultCode::AccountBalanceNotZero);
                }
                AccountStatus::Closed
            }
        };
        let timestamp_ns = match at_ns {
            Some(ts) => {
                self.last_timestamp_ns = ts;
                ts
            }
            None => self.next_timestamp(now_ns),
        };
        self.accounts[index as usize].status = next;
        self.log.push(LogItem::StatusChanged { account: index, action, timestamp_ns });
        EventResult { result: ResultCode::Ok, timestamp_ns }
    }

    /// An account's balances alone (nothing copied but them: risk control reads a payer's balance
    /// per transfer on the committer).
    pub fn balances(&self, id: &str) -> Option<Balances> {
        self.find_account(id).map(|i| self.accounts[i as usize].balances)
    }

    /// An account with its balances.
    pub fn account(&self, id: &str) -> Option<Account> {
        self.find_account(id).map(|i| self.account_at(i))
    }

    /// The account at an index from a [`LogItem`].
    pub fn account_at(&self, index: u32) -> Account {
        let a = &self.accounts[index as usize];
        Account {
            id: a.id.clone(),
            currency: a.currency,
            flags: a.flags,
            limit_minor: a.limit_minor,
            status: a.status,
            metadata: a.metadata.clone(),
            balances: a.balances,
            timestamp_ns: a.timestamp_ns,
        }
    }

    /// The id of the account at an index.
    pub fn account_id_at(&self, index: u32) -> &Id {
        &self.accounts[index as usize].id
    }

    /// Every account, in creation order.
    pub fn accounts(&self) -> impl Iterator<Item = Account> + '_ {
        (0..self.accounts.len() as u32).map(|i| self.account_at(i))
    }

    // ----------------------------------------------------------------------------------------------
    // Transfers

    /// Creates transfers. One result per transfer, in order; a linked chain (consecutive transfers
    /// with `linked` set, ending at the first without) is applied entirely or not at all.
    pub fn create_transfers(&mut self, batch: Vec<TransferRequest>, now_ns: u64) -> Vec<EventResult> {
        assert!(batch.len() <= BATCH_EVENTS_MAX, "batch size is checked by the caller");
        let count = batch.len();
        let mut results = Vec::with_capacity(count);
        let mut chain: Vec<Undo> = Vec::new();
        // Index of the first event of the current chain (or of the lone event).
        let mut chain_start = 0usize;
        let mut chain_log_len = self.log.len();
        let mut chain_failed = false;

        for (i, request) in batch.into_iter().enumerate() {
            if i == chain_start {
                chain_log_len = self.log.len();
            }
            let linked = request.linked;
            let member = linked || i > chain_start;
            let result = if chain_failed {
                EventResult::rejected(ResultCode::LinkedEventFailed)
            } else {
                let ts = self.next_timestamp(now_ns);
                let outcome = self.execute(request, ts, !member, member.then_some(&mut chain));
                if member && !outcome.result.is_success() {
                    chain_failed = true;
                }
                outcome
            };
            results.push(result);
            if !linked {
                // The chain (or the lone event) ends here.
                if chain_failed {
                    self.rollback_chain(&mut chain, chain_log_len);
                    for r in &mut results[chain_start..] {
                        if r.result.is_success() {
                            *r = EventResult::rejected(ResultCode::LinkedEventFailed);
                        }
                    }
                }
                chain.clear();
                chain_failed = false;
                chain_start = i + 1;
            }
        }
        if chain_start < count {
            // The batch ended inside a chain: refuse the whole open chain.
            self.rollback_chain(&mut chain, chain_log_len);
            for r in &mut results[chain_start..] {
                *r = EventResult::rejected(ResultCode::LinkedEventChainOpen);
            }
        }
        debug_assert_eq!(results.len(), count);
        results
    }

    fn rollback_chain(&mut self, chain: &mut Vec<Undo>, log_len: usize) {
        while let Some(undo) = chain.pop() {
            self.undo(undo);
        }
        self.log.truncate(log_len);
    }

    fn undo(&mut self, undo: Undo) {
        let index = undo.transfer;
        assert_eq!(index as usize + 1, self.transfers.len(), "undo is last-in first-out");
        let record = self.transfers.pop().expect("record to undo");
        let hash = hash_str(&self.hasher, &record.id);
        assert!(self.transfers_index.remove_last(hash, index), "undone transfer is indexed");
        for (account, before) in [(record.debit, undo.debit_before), (record.credit, undo.credit_before)] {
            let a = &mut self.accounts[account as usize];
            let popped = a.history.pop().expect("history entry to undo");
            assert_eq!(popped.event, index);
            a.balances = before;
        }
        if record.kind == TransferKind::Pending && record.expires_at_ns != 0 {
            self.expiries.remove(&(record.expires_at_ns, index));
        }
        if let Some((status, resolved_at_ns)) = undo.pending_before {
            let pending = &mut self.transfers[record.pending as usize];
            pending.pending_status = status;
            pending.resolved_at_ns = resolved_at_ns;
            if pending.expires_at_ns != 0 && status == PendingStatus::Pending {
                self.expiries.insert((pending.expires_at_ns, record.pending));
            }
            self.snapshot_note(record.pending);
        }
    }

    /// Input checks that need no state.
    fn validate(request: &TransferRequest) -> Result<(), ResultCode> {
        match request.kind {
            TransferKind::Single | TransferKind::Pending => {
                let (Some(debit), Some(credit)) = (&request.debit_account_id, &request.credit_account_id)
                else {
                    return Err(ResultCode::AccountRequired);
                };
                if request.amount_minor.unwrap_or(0) == 0 {
                    return Err(ResultCode::AmountMustBePositive);
                }
                if request.currency.is_none() {
                    return Err(ResultCode::CurrencyRequired);
                }
                if debit == credit {
                    return Err(ResultCode::SameAccount);
                }
                if request.kind == TransferKind::Single && request.timeout_ms_normalized().is_some() {
                    return Err(ResultCode::TimeoutReservedForPending);
                }
                if request.timeout_ms.unwrap_or(0) > PENDING_TIMEOUT_MS_MAX {
                    return Err(ResultCode::TimeoutTooLarge);
                }
            }
            TransferKind::PostPending | TransferKind::VoidPending => {
                if request.pending_id.is_none() {
                    return Err(ResultCode::PendingNotFound);
                }
                if request.timeout_ms_normalized().is_some() {
                    return Err(ResultCode::TimeoutReservedForPending);
                }
                if request.amount_minor == Some(0) {
                    return Err(ResultCode::AmountMustBePositive);
                }
                if request.kind == TransferKind::VoidPending && request.amount_minor.is_some() {
                    return Err(ResultCode::AmountReservedForPost);
                }
                if let (Some(d), Some(c)) = (&request.debit_account_id, &request.credit_account_id) {
                    if d == c {
                        return Err(ResultCode::SameAccount);
                    }
                }
            }
        }
        if request.metadata.as_ref().is_some_and(|m| m.len() > METADATA_BYTES_MAX) {
            return Err(ResultCode::MetadataTooLarge);
        }
        if let Some(e2e) = &request.references.end_to_end_id {
            if e2e.is_empty() || e2e.len() > END_TO_END_ID_BYTES_MAX {
                return Err(ResultCode::ReferenceInvalid);
            }
        }
        Ok(())
    }

    /// Whether a failure depends on the ledger's state; such failures are recorded so that a retry of
    /// the same id returns the same result (the id is a permanent idempotency key).
    fn failure_is_recorded(result: ResultCode) -> bool {
        use ResultCode::*;
        matches!(
            result,
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

    /// Decides and applies one transfer at ledger time `ts`. `record_failure`: keep a state-dependent
    /// failure under the id (false inside linked chains, whose failure leaves no trace).
    fn execute(
        &mut self,
        request: TransferRequest,
        ts: u64,
        record_failure: bool,
        chain: Option<&mut Vec<Undo>>,
    ) -> EventResult {
        if let Err(code) = Self::validate(&request) {
            return EventResult::rejected(code);
        }
        let hash = hash_str(&self.hasher, &request.id);
        if let Some(existing) =
            self.transfers_index.find(hash, |i| *self.transfers[i as usize].id == *request.id)
        {
            return self.compare_existing(existing, &request);
        }
        if self.transfers.len() >= TRANSFERS_MAX {
            return EventResult::rejected(ResultCode::CapacityExceeded);
        }
        match self.decide(&request, ts) {
            Ok(decision) => {
                let undo = self.apply(request, hash, ts, decision);
                if let Some(chain) = chain {
                    chain.push(undo);
                }
                EventResult { result: ResultCode::Ok, timestamp_ns: ts }
            }
            Err(code) if record_failure && Self::failure_is_recorded(code) => {
                self.record_failure(request, hash, ts, code);
                EventResult { result: code, timestamp_ns: ts }
            }
            Err(code) => EventResult::rejected(code),
        }
    }

    fn decide(&self, request: &TransferRequest, ts: u64) -> Result<Decision, ResultCode> {
        match request.kind {
            TransferKind::Single | TransferKind::Pending => {
                let debit = self
                    .find_account(request.debit_account_id.as_deref().expect("validated"))
                    .ok_or(ResultCode::AccountNotFound)?;
                let credit = self
                    .find_account(request.credit_account_id.as_deref().expect("validated"))
                    .ok_or(ResultCode::AccountNotFound)?;
                let amount = request.amount_minor.expect("validated");
                let currency = request.currency.expect("validated");
                let (d, c) = (&self.accounts[debit as usize], &self.accounts[credit as usize]);
                // Same code and same exponent: a custom unit declared twice with different exponents
                // is two units, and value must not move between them.
                if d.currency.code() != currency || c.currency != d.currency {
                    return Err(ResultCode::CurrencyMismatch);
                }
                for a in [d, c] {
                    match a.status {
                        AccountStatus::Open => {}
                        AccountStatus::Frozen => return Err(ResultCode::AccountFrozen),
                        AccountStatus::Closed => return Err(ResultCode::AccountClosed),
                    }
                }
                let pending = request.kind == TransferKind::Pending;
                let (db, cb) = (d.balances, c.balances);
                // Each balance field must fit; then the floors, computed in u128 (no overflow possible).
                let (d_field, c_field) = if pending {
                    (db.debits_pending, cb.credits_pending)
                } else {
                    (db.debits_posted, cb.credits_posted)
                };
                d_field.checked_add(amount).ok_or(ResultCode::Overflow)?;
                c_field.checked_add(amount).ok_or(ResultCode::Overflow)?;
                if d.flags.debits_must_not_exceed_credits {
                    let debits = db.debits_posted as u128 + db.debits_pending as u128 + amount as u128;
                    let ceiling = db.credits_posted as u128 + d.limit_minor.unwrap_or(0) as u128;
                    if debits > ceiling {
                        return Err(ResultCode::ExceedsCredits);
                    }
                }
                if c.flags.credits_must_not_exceed_debits {
                    let credits = cb.credits_posted as u128 + cb.credits_pending as u128 + amount as u128;
                    let ceiling = cb.debits_posted as u128 + c.limit_minor.unwrap_or(0) as u128;
                    if credits > ceiling {
                        return Err(ResultCode::ExceedsDebits);
                    }
                }
                let expires_at_ns = match request.timeout_ms_normalized() {
                    Some(ms) if pending => ts.checked_add(ms * NS_PER_MS).ok_or(ResultCode::Overflow)?,
                    _ => 0,
                };
                Ok(Decision { debit, credit, amount, currency, pending: NONE, expires_at_ns })
            }
            TransferKind::PostPending | TransferKind::VoidPending => {
                let pending_index = self
                    .find_transfer(request.pending_id.as_deref().expect("validated"))
                    .ok_or(ResultCode::PendingNotFound)?;
                let p = &self.transfers[pending_index as usize];
                if p.kind != TransferKind::Pending {
                    return Err(ResultCode::PendingTransferNotPending);
                }
                if p.result != ResultCode::Ok {
                    // The pending transfer itself failed: there is no hold.
                    return Err(ResultCode::PendingNotFound);
                }
                let (debit, credit) = (p.debit, p.credit);
                if request.debit_account_id.as_ref().is_some_and(|id| *id != self.accounts[debit as usize].id)
                    || request
                        .credit_account_id
                        .as_ref()
                        .is_some_and(|id| *id != self.accounts[credit as usize].id)
                {
                    return Err(ResultCode::PendingTransferHasDifferentAccounts);
                }
                if request.currency.is_some_and(|c| c != p.currency) {
                    return Err(ResultCode::CurrencyMismatch);
                }
                match p.pending_status {
                    PendingStatus::Pending => {}
                    PendingStatus::Posted => return Err(ResultCode::PendingAlreadyPosted),
                    PendingStatus::Voided => return Err(ResultCode::PendingAlreadyVoided),
                    PendingStatus::Expired => return Err(ResultCode::PendingExpired),
                }
                if p.expires_at_ns != 0 && p.expires_at_ns <= ts {
                    return Err(ResultCode::PendingExpired);
                }
                let amount = match request.kind {
                    TransferKind::PostPending => {
                        let amount = request.amount_minor.unwrap_or(p.amount_minor);
                        if amount > p.amount_minor {
                            return Err(ResultCode::PostAmountExceedsPending);
                        }
                        for a in [debit, credit] {
                            match self.accounts[a as usize].status {
                                AccountStatus::Open => {}
                                AccountStatus::Frozen => return Err(ResultCode::AccountFrozen),
                                AccountStatus::Closed => return Err(ResultCode::AccountClosed),
                            }
                        }
                        let (db, cb) =
                            (self.accounts[debit as usize].balances, self.accounts[credit as usize].balances);
                        db.debits_posted.checked_add(amount).ok_or(ResultCode::Overflow)?;
                        cb.credits_posted.checked_add(amount).ok_or(ResultCode::Overflow)?;
                        amount
                    }
                    _ => p.amount_minor,
                };
                Ok(Decision {
                    debit,
                    credit,
                    amount,
                    currency: p.currency,
                    pending: pending_index,
                    expires_at_ns: 0,
                })
            }
        }
    }

    fn apply(&mut self, request: TransferRequest, hash: u64, ts: u64, d: Decision) -> Undo {
        let index = self.transfers.len() as u32;
        let debit_before = self.accounts[d.debit as usize].balances;
        let credit_before = self.accounts[d.credit as usize].balances;
        let mut pending_before = None;
        match request.kind {
            TransferKind::Single => {
                let db = &mut self.accounts[d.debit as usize].balances;
                db.debits_posted += d.amount;
                let cb = &mut self.accounts[d.credit as usize].balances;
                cb.credits_posted += d.amount;
            }
            TransferKind::Pending => {
                self.accounts[d.debit as usize].balances.debits_pending += d.amount;
                self.accounts[d.credit as usize].balances.credits_pending += d.amount;
                if d.expires_at_ns != 0 {
                    self.expiries.insert((d.expires_at_ns, index));
                }
            }
            TransferKind::PostPending | TransferKind::VoidPending => {
                let p = &mut self.transfers[d.pending as usize];
                pending_before = Some((p.pending_status, p.resolved_at_ns));
                let held = p.amount_minor;
                p.pending_status = if request.kind == TransferKind::PostPending {
                    PendingStatus::Posted
                } else {
                    PendingStatus::Voided
                };
                p.resolved_at_ns = ts;
                if p.expires_at_ns != 0 {
                    self.expiries.remove(&(p.expires_at_ns, d.pending));
                }
                self.snapshot_note(d.pending);
                let db = &mut self.accounts[d.debit as usize].balances;
                db.debits_pending -= held;
                let cb = &mut self.accounts[d.credit as usize].balances;
                cb.credits_pending -= held;
                if request.kind == TransferKind::PostPending {
                    self.accounts[d.debit as usize].balances.debits_posted += d.amount;
                    self.accounts[d.credit as usize].balances.credits_posted += d.amount;
                }
            }
        }
        for account in [d.debit, d.credit] {
            let a = &mut self.accounts[account as usize];
            a.history.push(HistoryEntry { event: index, balances: a.balances });
        }
        let timeout_ms = request.timeout_ms_normalized().unwrap_or(0);
        let extra = if request.metadata.is_some() || !request.references.is_empty() {
            Some(Box::new(TransferExtra {
                metadata: request.metadata,
                references: request.references,
                failed_request: None,
            }))
        } else {
            None
        };
        self.transfers.push(TransferRecord {
            id: request.id,
            amount_minor: d.amount,
            timestamp_ns: ts,
            resolved_at_ns: 0,
            expires_at_ns: d.expires_at_ns,
            timeout_ms,
            debit: d.debit,
            credit: d.credit,
            pending: d.pending,
            code: request.code,
            currency: d.currency,
            kind: request.kind,
            result: ResultCode::Ok,
            pending_status: PendingStatus::Pending,
            extra,
        });
        let (transfers, hasher) = (&self.transfers, &self.hasher);
        self.transfers_index.insert(hash, index, |i| hash_str(hasher, &transfers[i as usize].id));
        self.log.push(LogItem::Transfer(index));
        Undo { transfer: index, debit_before, credit_before, pending_before }
    }

    fn record_failure(&mut self, request: TransferRequest, hash: u64, ts: u64, code: ResultCode) {
        let index = self.transfers.len() as u32;
        self.transfers.push(TransferRecord {
            id: request.id.clone(),
            amount_minor: request.amount_minor.unwrap_or(0),
            timestamp_ns: ts,
            resolved_at_ns: 0,
            expires_at_ns: 0,
            timeout_ms: request.timeout_ms_normalized().unwrap_or(0),
            debit: NONE,
            credit: NONE,
            pending: NONE,
            code: request.code,
            currency: request.currency.unwrap_or_else(|| CurrencyCode::new("XXX").expect("valid")),
            kind: request.kind,
            result: code,
            pending_status: PendingStatus::Pending,
            extra: Some(Box::new(TransferExtra {
                metadata: None,
                references: References::default(),
                failed_request: Some(Box::new(request)),
            })),
        });
        let (transfers, hasher) = (&self.transfers, &self.hasher);
        self.transfers_index.insert(hash, index, |i| hash_str(hasher, &transfers[i as usize].id));
        self.log.push(LogItem::Transfer(index));
    }

    /// Compares a request with the transfer already recorded under its id.
    fn compare_existing(&self, index: u32, new: &TransferRequest) -> EventResult {
        let old = self.request_at(index);
        let r = &self.transfers[index as usize];
        let resolves = new.kind.resolves_pending();
        // For post/void an omitted field means "as in the pending transfer" and matches.
        let differs = |old: &Option<Id>, new: &Option<Id>| match new {
            None if resolves => false,
            _ => old != new,
        };
        let result = if old.kind != new.kind {
            ResultCode::ExistsWithDifferentKind
        } else if resolves && old.pending_id != new.pending_id {
            // Only a post or void uses a pending id (`apply` ignores it on other kinds).
            ResultCode::ExistsWithDifferentPendingId
        } else if old.timeout_ms_normalized() != new.timeout_ms_normalized() {
            ResultCode::ExistsWithDifferentTimeout
        } else if differs(&old.debit_account_id, &new.debit_account_id)
            || differs(&old.credit_account_id, &new.credit_account_id)
        {
            ResultCode::ExistsWithDifferentAccounts
        } else if match new.amount_minor {
            // An omitted amount posts the whole hold: it matches only a post of the whole hold, not
            // a partial one recorded under this id.
            None if new.kind == TransferKind::PostPending && r.result == ResultCode::Ok => {
                old.amount_minor != Some(self.transfers[r.pending as usize].amount_minor)
            }
            None if resolves => false,
            _ => old.amount_minor != new.amount_minor,
        } {
            ResultCode::ExistsWithDifferentAmount
        } else if match new.currency {
            None if resolves => false,
            _ => old.currency != new.currency,
        } {
            ResultCode::ExistsWithDifferentCurrency
        } else if old.code != new.code {
            ResultCode::ExistsWithDifferentCode
        } else if old.metadata != new.metadata {
            ResultCode::ExistsWithDifferentMetadata
        } else if old.references != new.references {
            ResultCode::ExistsWithDifferentReferences
        } else if r.result == ResultCode::Ok {
            return EventResult { result: ResultCode::Exists, timestamp_ns: r.timestamp_ns };
        } else {
            // The same request failed before: the same failure, forever.
            return EventResult { result: r.result, timestamp_ns: r.timestamp_ns };
        };
        EventResult::rejected(result)
    }

    /// The canonical request of the transfer at an index.
    pub fn request_at(&self, index: u32) -> TransferRequest {
        let r = &self.transfers[index as usize];
        if let Some(failed) = r.extra.as_ref().and_then(|e| e.failed_request.as_ref()) {
            return (**failed).clone();
        }
        let (metadata, references) = match &r.extra {
            Some(e) => (e.metadata.clone(), e.references.clone()),
            None => (None, References::default()),
        };
        TransferRequest {
            id: r.id.clone(),
            kind: r.kind,
            pending_id: (r.pending != NONE).then(|| self.transfers[r.pending as usize].id.clone()),
            debit_account_id: Some(self.accounts[r.debit as usize].id.clone()),
            credit_account_id: Some(self.accounts[r.credit as usize].id.clone()),
            // A void always releases the whole hold and carries no amount.
            amount_minor: (r.kind != TransferKind::VoidPending).then_some(r.amount_minor),
            currency: Some(r.currency),
            timeout_ms: (r.timeout_ms != 0).then_some(r.timeout_ms),
            code: r.code,
            metadata,
            references,
            linked: false,
        }
    }

    /// The transfer at an index from a [`LogItem`].
    pub fn transfer_at(&self, index: u32) -> Transfer {
        let r = &self.transfers[index as usize];
        let is_hold = r.kind == TransferKind::Pending && r.result == ResultCode::Ok;
        Transfer {
            request: self.request_at(index),
            timestamp_ns: r.timestamp_ns,
            result: r.result,
            pending_status: is_hold.then_some(r.pending_status),
            resolved_at_ns: (is_hold && r.resolved_at_ns != 0).then_some(r.resolved_at_ns),
            expires_at_ns: (is_hold && r.expires_at_ns != 0).then_some(r.expires_at_ns),
        }
    }

    /// The id of the transfer at an index.
    pub fn transfer_id_at(&self, index: u32) -> &Id {
        &self.transfers[index as usize].id
    }

    /// The expiry timestamp of the pending transfer at an index (for journaling an expiry).
    pub fn resolved_at_ns(&self, index: u32) -> u64 {
        self.transfers[index as usize].resolved_at_ns
    }

    /// A transfer by id, failed ones included.
    pub fn transfer(&self, id: &str) -> Option<Transfer> {
        self.find_transfer(id).map(|i| self.transfer_at(i))
    }

    // ----------------------------------------------------------------------------------------------
    // Expiry

    /// When the next hold expires, if any has a timeout.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// A page of the holds still pending that have a timeout (those that expire), in expiry order,
    /// at most `scan_max` (so a read stays short however many there are): their ids and timeouts,
    /// and the cursor to pass as `after` for the next page (the last one here), `None` once there
    /// are no more. `after` (a cursor, or any transfer id) starts past that transfer's place in
    /// expiry order; an id unknown or not a hold with a timeout starts from the first.
    pub fn open_holds(&self, after: Option<&str>, scan_max: usize) -> (Vec<(Id, u64)>, Option<Id>) {
        use std::ops::Bound;
        let from = match after.and_then(|id| self.find_transfer(id)) {
            Some(i) if self.transfers[i as usize].expires_at_ns != 0 => {
                Bound::Excluded((self.transfers[i as usize].expires_at_ns, i))
            }
            _ => Bound::Unbounded,
        };
        let mut page = Vec::new();
        let mut last = None;
        for &(_, index) in self.expiries.range((from, Bound::Unbounded)).take(scan_max.max(1)) {
            let record = &self.transfers[index as usize];
            debug_assert_eq!(record.pending_status, PendingStatus::Pending);
            page.push((record.id.clone(), record.timeout_ms));
            last = Some(index);
        }
        let more = last.is_some_and(|i| {
            let key = (self.transfers[i as usize].expires_at_ns, i);
            self.expiries.range((Bound::Excluded(key), Bound::Unbounded)).next().is_some()
        });
        (page, last.filter(|_| more).map(|i| self.transfers[i as usize].id.clone()))
    }

    /// Expires every hold whose timeout has passed at `now_ns`, releasing it. Returns how many.
    pub fn expire_due(&mut self, now_ns: u64) -> usize {
        self.expire_due_at_most(now_ns, usize::MAX)
    }

    /// Like [`Ledger::expire_due`], but expires at most `max` holds (the earliest first), so one
    /// group commit stays bounded however many holds fall due at once.
    pub fn expire_due_at_most(&mut self, now_ns: u64, max: usize) -> usize {
        let mut expired = 0;
        while let Some(&(at, index)) = self.expiries.first() {
            if at > now_ns || expired >= max {
                break;
            }
            let ts = self.next_timestamp(now_ns);
            self.expire(index, ts);
            expired += 1;
        }
        expired
    }

    fn expire(&mut self, index: u32, ts: u64) {
        let r = &mut self.transfers[index as usize];
        assert_eq!(r.pending_status, PendingStatus::Pending);
        assert!(r.expires_at_ns != 0 && r.expires_at_ns <= ts);
        self.expiries.remove(&(r.expires_at_ns, index));
        r.pending_status = PendingStatus::Expired;
        r.resolved_at_ns = ts;
        let (amount, debit, credit) = (r.amount_minor, r.debit, r.credit);
        self.snapshot_note(index);
        let d = &mut self.accounts[debit as usize];
        d.balances.debits_pending -= amount;
        d.history.push(HistoryEntry { event: index | EXPIRY_BIT, balances: d.balances });
        let c = &mut self.accounts[credit as usize];
        c.balances.credits_pending -= amount;
        c.history.push(HistoryEntry { event: index | EXPIRY_BIT, balances: c.balances });
        self.log.push(LogItem::Expired(index));
    }

    // ----------------------------------------------------------------------------------------------
    // Replay: the same decisions, at recorded timestamps, checked against recorded results.

    fn check_replay_time(&self, ts: u64, what: &str) -> Result<(), ReplayError> {
        if ts <= self.last_timestamp_ns {
            return Err(ReplayError {
                what: format!("{what} at {ts} (not after {})", self.last_timestamp_ns),
                recorded: ResultCode::Ok,
                computed: ResultCode::Ok,
            });
        }
        Ok(())
    }

    /// Replays an account creation recorded at `timestamp_ns`.
    pub fn replay_account(&mut self, account: NewAccount, timestamp_ns: u64) -> Result<(), ReplayError> {
        self.check_replay_time(timestamp_ns, "account creation")?;
        let id = account.id.clone();
        let r = self.create_account(account, 0, Some(timestamp_ns));
        self.log.clear(); // Replayed events are already in the journal.
        if r.result != ResultCode::Ok {
            return Err(ReplayError {
                what: format!("account {id}"),
                recorded: ResultCode::Ok,
                computed: r.result,
            });
        }
        Ok(())
    }

    /// Replays an account status change recorded at `timestamp_ns`.
    pub fn replay_status(
        &mut self,
        id: &str,
        action: StatusAction,
        timestamp_ns: u64,
    ) -> Result<(), ReplayError> {
        self.check_replay_time(timestamp_ns, "status change")?;
        let r = self.set_status(id, action, 0, Some(timestamp_ns));
        self.log.clear(); // Replayed events are already in the journal.
        if r.result != ResultCode::Ok || r.timestamp_ns != timestamp_ns {
            return Err(ReplayError {
                what: format!("status of {id}"),
                recorded: ResultCode::Ok,
                computed: r.result,
            });
        }
        Ok(())
    }

    /// Replays a transfer recorded at `timestamp_ns` with result `recorded`.
    pub fn replay_transfer(
        &mut self,
        request: TransferRequest,
        timestamp_ns: u64,
        recorded: ResultCode,
    ) -> Result<(), ReplayError> {
        self.check_replay_time(timestamp_ns, "transfer")?;
        // Keep the id on the stack for the error message: replay is hot at start-up.
        let mut id_copy = [0u8; crate::id::ID_BYTES_MAX];
        let id_len = request.id.len();
        id_copy[..id_len].copy_from_slice(request.id.as_bytes());
        self.last_timestamp_ns = timestamp_ns;
        let r = self.execute(request, timestamp_ns, true, None);
        self.log.clear(); // Replayed events are already in the journal.
        if r.result != recorded || r.timestamp_ns != timestamp_ns {
            let id = String::from_utf8_lossy(&id_copy[..id_len]);
            return Err(ReplayError { what: format!("transfer {id}"), recorded, computed: r.result });
        }
        Ok(())
    }

    /// Replays the expiry of pending transfer `id` at `timestamp_ns`.
    pub fn replay_expiry(&mut self, id: &str, timestamp_ns: u64) -> Result<(), ReplayError> {
        self.check_replay_time(timestamp_ns, "expiry")?;
        let fail =
            |computed| ReplayError { what: format!("expiry of {id}"), recorded: ResultCode::Ok, computed };
        let index = self.find_transfer(id).ok_or_else(|| fail(ResultCode::PendingNotFound))?;
        let r = &self.transfers[index as usize];
        if r.kind != TransferKind::Pending || r.result != ResultCode::Ok {
            return Err(fail(ResultCode::PendingTransferNotPending));
        }
        if r.pending_status != PendingStatus::Pending {
            return Err(fail(ResultCode::PendingAlreadyPosted));
        }
        if r.expires_at_ns == 0 || r.expires_at_ns > timestamp_ns {
            return Err(fail(ResultCode::PendingExpired));
        }
        self.last_timestamp_ns = timestamp_ns;
        self.expire(index, timestamp_ns);
        self.log.clear(); // Replayed events are already in the journal.
        Ok(())
    }

    // ----------------------------------------------------------------------------------------------
    // Queries

    fn history_timestamp(&self, entry: &HistoryEntry) -> u64 {
        let r = &self.transfers[(entry.event & !EXPIRY_BIT) as usize];
        if entry.event & EXPIRY_BIT != 0 {
            r.resolved_at_ns
        } else {
            r.timestamp_ns
        }
    }

    /// An account's balances as they were at `at_ns` (after every event with a timestamp ≤ `at_ns`).
    pub fn balance_at(&self, id: &str, at_ns: u64) -> Result<Balances, QueryError> {
        let index = self.find_account(id).ok_or(QueryError::AccountNotFound)?;
        let history = &self.accounts[index as usize].history;
        let after = history.partition_point(|e| self.history_timestamp(e) <= at_ns);
        Ok(if after == 0 { Balances::default() } else { history[after - 1].balances })
    }

    /// An account's applied transfers in time order, a page at a time. Returns the page and whether
    /// more transfers lie beyond it in the direction of travel.
    pub fn account_transfers(&self, id: &str, page: Page<'_>) -> Result<(Vec<Transfer>, bool), QueryError> {
        let index = self.find_account(id).ok_or(QueryError::AccountNotFound)?;
        let history = &self.accounts[index as usize].history;
        let position_of = |cursor: &str| -> Result<usize, QueryError> {
            let t = self.find_transfer(cursor).ok_or(QueryError::CursorNotFound)?;
            let ts = self.transfers[t as usize].timestamp_ns;
            let at = history.partition_point(|e| self.history_timestamp(e) < ts);
            match history.get(at) {
                Some(e) if e.event == t => Ok(at),
                _ => Err(QueryError::CursorNotFound),
            }
        };
        // `limit + 1` is taken below (to see whether there is more): keep it from overflowing.
        let limit = page.limit.clamp(1, usize::MAX - 1);
        let is_transfer = |e: &&HistoryEntry| e.event & EXPIRY_BIT == 0;
        let (items, has_more): (Vec<u32>, bool) = if let Some(before) = page.ending_before {
            let end = position_of(before)?;
            let mut found: Vec<u32> =
                history.range(0, end).rev().filter(is_transfer).take(limit + 1).map(|e| e.event).collect();
            let more = found.len() > limit;
            found.truncate(limit);
            found.reverse();
            (found, more)
        } else {
            let start = match page.starting_after {
                Some(after) => position_of(after)? + 1,
                None => 0,
            };
            let mut found: Vec<u32> = history
                .range(start, history.len())
                .filter(is_transfer)
                .take(limit + 1)
                .map(|e| e.event)
                .collect();
            let more = found.len() > limit;
            found.truncate(limit);
            (found, more)
        };
        Ok((items.into_iter().map(|i| self.transfer_at(i)).collect(), has_more))
    }

    // ----------------------------------------------------------------------------------------------
    // Working sets: a transient ledger over rows loaded from an external store (PostgreSQL).

    /// A ledger holding only the `accounts` and `transfers` a batch can read, as an external store
    /// loaded them (locked), with the store's last timestamp. The batch then runs through the very
    /// same decision code; the store writes back what [`Ledger::drain_log`] names and the accounts
    /// and pending transfers that changed. Balance histories start empty (see
    /// [`Ledger::history_at`]).
    ///
    /// `transfers` must include, for every applied post or void among them, its pending transfer;
    /// every applied transfer's accounts must be among `accounts`. Duplicates are ignored. Returns a
    /// description of the first inconsistency instead of panicking on bad input.
    pub fn from_working_set(
        accounts: Vec<Account>,
        transfers: Vec<Transfer>,
        last_timestamp_ns: u64,
    ) -> Result<Ledger, String> {
        let mut ledger = Ledger::new();
        ledger.last_timestamp_ns = last_timestamp_ns;
        if accounts.len() > ACCOUNTS_MAX || transfers.len() > TRANSFERS_MAX {
            return Err("working set larger than a ledger holds".into());
        }
        for a in accounts {
            if ledger.find_account(&a.id).is_some() {
                continue;
            }
            if a.timestamp_ns > last_timestamp_ns {
                return Err(format!("account {} is newer than the last timestamp", a.id));
            }
            let index = ledger.accounts.len() as u32;
            let hash = hash_str(&ledger.hasher, &a.id);
            ledger.accounts.push(AccountRecord {
                id: a.id,
                currency: a.currency,
                flags: a.flags,
                limit_minor: a.limit_minor,
                status: a.status,
                metadata: a.metadata,
                balances: a.balances,
                timestamp_ns: a.timestamp_ns,
                history: Segmented::new(),
            });
            let (records, hasher) = (&ledger.accounts, &ledger.hasher);
            ledger.accounts_index.insert(hash, index, |i| hash_str(hasher, &records[i as usize].id));
        }
        // Two passes: records first, then the pending references (a post may come before its hold).
        let mut resolves: Vec<(u32, Id)> = Vec::new();
        for t in transfers {
            if ledger.find_transfer(&t.request.id).is_some() {
                continue;
            }
            if t.timestamp_ns > last_timestamp_ns {
                return Err(format!("transfer {} is newer than the last timestamp", t.request.id));
            }
            let index = ledger.transfers.len() as u32;
            let request = t.request;
            let record = if t.result == ResultCode::Ok {
                let account = |id: &Option<Id>| {
                    id.as_deref()
                        .and_then(|id| ledger.find_account(id))
                        .ok_or_else(|| format!("transfer {}: account {id:?} not loaded", request.id))
                };
                let (debit, credit) =
                    (account(&request.debit_account_id)?, account(&request.credit_account_id)?);
                let currency =
                    request.currency.ok_or_else(|| format!("transfer {}: no currency", request.id))?;
                if request.kind.resolves_pending() {
                    let pending = request
                        .pending_id
                        .clone()
                        .ok_or_else(|| format!("transfer {}: no pending id", request.id))?;
                    resolves.push((index, pending));
                }
                let is_hold = request.kind == TransferKind::Pending;
                let extra = (request.metadata.is_some() || !request.references.is_empty()).then(|| {
                    Box::new(TransferExtra {
                        metadata: request.metadata.clone(),
                        references: request.references.clone(),
                        failed_request: None,
                    })
                });
                TransferRecord {
                    id: request.id.clone(),
                    // A void carries no amount: it is filled in from its pending transfer below.
                    amount_minor: request.amount_minor.unwrap_or(0),
                    timestamp_ns: t.timestamp_ns,
                    resolved_at_ns: if is_hold { t.resolved_at_ns.unwrap_or(0) } else { 0 },
                    expires_at_ns: if is_hold { t.expires_at_ns.unwrap_or(0) } else { 0 },
                    timeout_ms: request.timeout_ms_normalized().unwrap_or(0),
                    debit,
                    credit,
                    pending: NONE,
                    code: request.code,
                    currency,
                    kind: request.kind,
                    result: ResultCode::Ok,
                    pending_status: if is_hold {
                        t.pending_status.unwrap_or(PendingStatus::Pending)
                    } else {
                        PendingStatus::Pending
                    },
                    extra,
                }
            } else {
                TransferRecord {
                    id: request.id.clone(),
                    amount_minor: request.amount_minor.unwrap_or(0),
                    timestamp_ns: t.timestamp_ns,
                    resolved_at_ns: 0,
                    expires_at_ns: 0,
                    timeout_ms: request.timeout_ms_normalized().unwrap_or(0),
                    debit: NONE,
                    credit: NONE,
                    pending: NONE,
                    code: request.code,
                    currency: request.currency.unwrap_or_else(|| CurrencyCode::new("XXX").expect("valid")),
                    kind: request.kind,
                    result: t.result,
                    pending_status: PendingStatus::Pending,
                    extra: Some(Box::new(TransferExtra {
                        metadata: None,
                        references: References::default(),
                        failed_request: Some(Box::new(request)),
                    })),
                }
            };
            let hash = hash_str(&ledger.hasher, &record.id);
            if record.kind == TransferKind::Pending
                && record.result == ResultCode::Ok
                && record.pending_status == PendingStatus::Pending
                && record.expires_at_ns != 0
            {
                ledger.expiries.insert((record.expires_at_ns, index));
            }
            ledger.transfers.push(record);
            let (records, hasher) = (&ledger.transfers, &ledger.hasher);
            ledger.transfers_index.insert(hash, index, |i| hash_str(hasher, &records[i as usize].id));
        }
        for (index, pending_id) in resolves {
            let pending = ledger
                .find_transfer(&pending_id)
                .ok_or_else(|| format!("pending transfer {pending_id} not loaded"))?;
            let p = &ledger.transfers[pending as usize];
            if p.kind != TransferKind::Pending || p.result != ResultCode::Ok {
                return Err(format!("transfer {pending_id} is not an applied pending transfer"));
            }
            let held = p.amount_minor;
            let r = &mut ledger.transfers[index as usize];
            r.pending = pending;
            if r.kind == TransferKind::VoidPending {
                r.amount_minor = held;
            }
        }
        debug_assert!(ledger.log.is_empty());
        Ok(ledger)
    }

    /// The balance history an account gained in this ledger, oldest first: for each applied
    /// transfer or expiry that touched it, the index of the transfer (see [`Ledger::transfer_at`]),
    /// whether the point is that pending transfer's expiry, its timestamp and the balances after it.
    /// (For a ledger made by [`Ledger::from_working_set`], exactly the points the batch added.)
    pub fn history_at(&self, account_index: u32) -> impl Iterator<Item = HistoryPoint> + '_ {
        self.accounts[account_index as usize].history.iter().map(|e| HistoryPoint {
            transfer: e.event & !EXPIRY_BIT,
            expiry: e.event & EXPIRY_BIT != 0,
            timestamp_ns: self.history_timestamp(e),
            balances: e.balances,
        })
    }

    /// The index of an account by id (for [`Ledger::history_at`] and [`Ledger::account_at`]).
    pub fn account_index(&self, id: &str) -> Option<u32> {
        self.find_account(id)
    }

    /// Every transfer, in the order recorded (failed ones included).
    pub fn transfers(&self) -> impl Iterator<Item = Transfer> + '_ {
        (0..self.transfers.len() as u32).map(|i| self.transfer_at(i))
    }

    /// Checks the ledger's invariants, for tests and `journal verify`: per currency, debits equal
    /// credits (posted and pending); no flagged account beyond its floor; holds equal open pendings.
    pub fn check_invariants(&self) -> Result<(), String> {
        use std::collections::BTreeMap;
        let mut sums: BTreeMap<CurrencyCode, [u128; 4]> = BTreeMap::new();
        for a in &self.accounts {
            let s = sums.entry(a.currency.code()).or_default();
            let b = a.balances;
            s[0] += b.debits_posted as u128;
            s[1] += b.credits_posted as u128;
            s[2] += b.debits_pending as u128;
            s[3] += b.credits_pending as u128;
            let limit = a.limit_minor.unwrap_or(0) as u128;
            if a.flags.debits_must_not_exceed_credits
                && b.debits_posted as u128 + b.debits_pending as u128 > b.credits_posted as u128 + limit
            {
                return Err(format!("account {} is below its floor: {:?}", a.id, b));
            }
            if a.flags.credits_must_not_exceed_debits
                && b.credits_posted as u128 + b.credits_pending as u128 > b.debits_posted as u128 + limit
            {
                return Err(format!("account {} is above its ceiling: {:?}", a.id, b));
            }
        }
        for (currency, s) in &sums {
            if s[0] != s[1] || s[2] != s[3] {
                return Err(format!("{currency}: debits and credits differ: {s:?}"));
            }
        }
        let mut held: BTreeMap<CurrencyCode, u128> = BTreeMap::new();
        for t in &self.transfers {
            if t.kind == TransferKind::Pending
                && t.result == ResultCode::Ok
                && t.pending_status == PendingStatus::Pending
            {
                *held.entry(t.currency).or_default() += t.amount_minor as u128;
            }
        }
        for (currency, s) in &sums {
            let h = held.get(currency).copied().unwrap_or(0);
            if s[2] != h {
                return Err(format!("{currency}: pending balances {} but open holds {h}", s[2]));
            }
        }
        Ok(())
    }

    /// Approximate bytes of memory the state holds (for capacity planning and the benchmark report).
    pub fn memory_bytes_estimate(&self) -> usize {
        let accounts = self.accounts.allocated_bytes()
            + self.accounts.iter().map(|a| a.history.allocated_bytes() + a.id.len()).sum::<usize>();
        let transfers = self.transfers.allocated_bytes()
            + self.transfers.iter().map(|t| t.id.len()).sum::<usize>()
            + self.transfers_index.capacity() * 4
            + self.accounts_index.capacity() * 4;
        accounts + transfers
    }
}

#[derive(Clone, Copy, Debug)]
struct Decision {
    debit: u32,
    credit: u32,
    amount: u64,
    currency: CurrencyCode,
    pending: u32,
    expires_at_ns: u64,
}
