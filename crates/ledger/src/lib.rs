//! # puhui-ledger: the double-entry ledger's domain
//!
//! Money, accounts, transfers, result codes and the state machine that decides every outcome. This
//! crate does no I/O and knows nothing of serialisation, HTTP or SQL: the wall-clock time comes in as
//! an argument, and what must be made durable comes out of [`Ledger::drain_log`].
//!
//! Key decision: every transfer is decided by one function ([`Ledger::create_transfers`]) that runs
//! both live and when the journal is replayed at start-up (`replay_*`, which also checks each
//! recomputed result against the recorded one). There is no second "apply without checks" path that
//! could drift from the first.
//!
//! Invariants (checked by [`Ledger::check_invariants`] and by the property tests):
//! - per currency, Σ debits_posted = Σ credits_posted and Σ debits_pending = Σ credits_pending;
//! - an account flagged `debits_must_not_exceed_credits` never has debits (posted + pending) above
//!   its posted credits plus its limit, and the mirror image for `credits_must_not_exceed_debits`;
//! - timestamps are strictly increasing across all events;
//! - a transfer id, once recorded, keeps its result forever (the permanent idempotency key).
#![deny(missing_docs)]

pub mod account;
pub mod id;
pub mod money;
pub mod result;
pub mod segmented;
pub mod state;
pub mod transfer;
pub mod wire;

pub use account::{Account, AccountFlags, AccountStatus, Balances, NewAccount, StatusAction};
pub use id::{Id, IdGenerator};
pub use money::{Currency, CurrencyCode, CurrencyError};
pub use result::ResultCode;
pub use state::{EventResult, HistoryPoint, Ledger, LogItem, Page, QueryError, ReplayError, SnapshotBuilder};
pub use transfer::{PendingStatus, References, Transfer, TransferKind, TransferRequest};

/// Most events (accounts or transfers) in one batch; the same as TigerBeetle's so benchmarks compare.
pub const BATCH_EVENTS_MAX: usize = 8_189;
/// Largest metadata on an account or transfer, in bytes.
pub const METADATA_BYTES_MAX: usize = 4_096;
/// Longest ISO 20022 EndToEndId, in bytes.
pub const END_TO_END_ID_BYTES_MAX: usize = 35;
/// Longest pending timeout: 366 days.
pub const PENDING_TIMEOUT_MS_MAX: u64 = 366 * 24 * 3600 * 1000;
/// Most accounts one ledger holds (indices are `u32`).
pub const ACCOUNTS_MAX: usize = (u32::MAX - 1) as usize;
/// Most transfers one ledger holds (indices are `u32` with one bit reserved in the history).
pub const TRANSFERS_MAX: usize = (1 << 31) - 1;
