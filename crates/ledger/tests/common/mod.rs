//! Helpers shared by the ledger's integration tests: short constructors and a journal stand-in
//! (drain the log, resolve each item to the event a journal would store, replay it).
#![allow(dead_code)]

use puhui_ledger::{
    Currency, CurrencyCode, EventResult, Id, Ledger, LogItem, NewAccount, ReplayError, ResultCode,
    StatusAction, TransferRequest,
};

/// An id from a literal.
pub fn id(s: &str) -> Id {
    Id::new(s).unwrap_or_else(|| panic!("invalid test id {s:?}"))
}

/// A currency code from a literal.
pub fn code(s: &str) -> CurrencyCode {
    CurrencyCode::new(s).expect("valid currency code")
}

/// CNY (exponent 2).
pub fn cny() -> Currency {
    Currency::iso("CNY").expect("CNY")
}

/// USD (exponent 2).
pub fn usd() -> Currency {
    Currency::iso("USD").expect("USD")
}

/// One transfer as a batch of one.
pub fn one(ledger: &mut Ledger, request: TransferRequest, now_ns: u64) -> EventResult {
    let results = ledger.create_transfers(vec![request], now_ns);
    assert_eq!(results.len(), 1);
    results[0]
}

/// One account as a batch of one.
pub fn open(ledger: &mut Ledger, account: NewAccount, now_ns: u64) -> EventResult {
    let results = ledger.create_accounts(vec![account], now_ns);
    assert_eq!(results.len(), 1);
    results[0]
}

/// What a journal stores for each [`LogItem`].
#[derive(Clone, Debug)]
pub enum Event {
    /// An account was created.
    Account(NewAccount, u64),
    /// An account changed status.
    Status(Id, StatusAction, u64),
    /// A transfer was recorded with this result.
    Transfer(TransferRequest, u64, ResultCode),
    /// A hold expired.
    Expired(Id, u64),
}

impl Event {
    /// The event's ledger timestamp.
    pub fn timestamp_ns(&self) -> u64 {
        match self {
            Event::Account(_, ts)
            | Event::Status(_, _, ts)
            | Event::Transfer(_, ts, _)
            | Event::Expired(_, ts) => *ts,
        }
    }

    /// Applies the event through the ledger's replay path.
    pub fn replay(self, ledger: &mut Ledger) -> Result<(), ReplayError> {
        match self {
            Event::Account(account, ts) => ledger.replay_account(account, ts),
            Event::Status(id, action, ts) => ledger.replay_status(&id, action, ts),
            Event::Transfer(request, ts, result) => ledger.replay_transfer(request, ts, result),
            Event::Expired(id, ts) => ledger.replay_expiry(&id, ts),
        }
    }
}

/// Resolves one log item the way the journal's encoder does (reading the ledger's current state).
pub fn resolve(ledger: &Ledger, item: LogItem) -> Event {
    match item {
        LogItem::AccountCreated(index) => {
            let a = ledger.account_at(index);
            let account = NewAccount {
                id: a.id,
                currency: a.currency,
                flags: a.flags,
                limit_minor: a.limit_minor,
                metadata: a.metadata,
            };
            Event::Account(account, a.timestamp_ns)
        }
        LogItem::StatusChanged { account, action, timestamp_ns } => {
            Event::Status(ledger.account_id_at(account).clone(), action, timestamp_ns)
        }
        LogItem::Transfer(index) => {
            let t = ledger.transfer_at(index);
            Event::Transfer(t.request, t.timestamp_ns, t.result)
        }
        LogItem::Expired(index) => {
            Event::Expired(ledger.transfer_id_at(index).clone(), ledger.resolved_at_ns(index))
        }
    }
}

/// Drains the ledger's log and resolves every item.
pub fn drain_events(ledger: &mut Ledger) -> Vec<Event> {
    let items: Vec<LogItem> = ledger.drain_log().collect();
    items.into_iter().map(|item| resolve(ledger, item)).collect()
}

/// Replays events into a fresh ledger.
pub fn replay_all(events: Vec<Event>) -> Result<Ledger, ReplayError> {
    let mut ledger = Ledger::new();
    for event in events {
        event.replay(&mut ledger)?;
    }
    Ok(ledger)
}

/// Asserts two ledgers hold the same accounts and the same transfers under `ids`.
pub fn assert_same_state<'a>(live: &Ledger, replayed: &Ledger, ids: impl IntoIterator<Item = &'a str>) {
    let a: Vec<_> = live.accounts().collect();
    let b: Vec<_> = replayed.accounts().collect();
    assert_eq!(a, b, "accounts differ after replay");
    assert_eq!(live.transfers_count(), replayed.transfers_count(), "transfer count differs");
    for id in ids {
        assert_eq!(live.transfer(id), replayed.transfer(id), "transfer {id} differs after replay");
    }
    assert_eq!(live.next_expiry_ns(), replayed.next_expiry_ns(), "pending expiries differ");
    assert!(live.last_timestamp_ns() >= replayed.last_timestamp_ns());
    replayed.check_invariants().expect("replayed ledger keeps the invariants");
}
