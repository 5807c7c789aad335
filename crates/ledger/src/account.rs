//! Accounts: currency, floor flags, limit, status and the four balances.

use crate::id::Id;
use crate::money::Currency;

/// Floor flags of an account. At most one may be set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct AccountFlags {
    /// Debits (posted + pending) may not exceed posted credits plus the limit: a wallet cannot go
    /// negative (or below its overdraft).
    pub debits_must_not_exceed_credits: bool,
    /// Credits (posted + pending) may not exceed posted debits plus the limit: the mirror image, for
    /// accounts on the other side of the balance sheet (e.g. a credit line).
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    /// A wallet: cannot go below zero.
    pub const WALLET: AccountFlags =
        AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: false };

    /// The flags as bits (bit 0: debits_must_not_exceed_credits, bit 1: credits_must_not_exceed_debits).
    pub fn bits(self) -> u8 {
        self.debits_must_not_exceed_credits as u8 | (self.credits_must_not_exceed_debits as u8) << 1
    }

    /// Flags from bits; `None` if an unknown bit is set.
    pub fn from_bits(bits: u8) -> Option<AccountFlags> {
        (bits & !0b11 == 0).then_some(AccountFlags {
            debits_must_not_exceed_credits: bits & 1 != 0,
            credits_must_not_exceed_debits: bits & 2 != 0,
        })
    }
}

/// Whether an account takes new transfers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum AccountStatus {
    /// Takes transfers.
    Open = 0,
    /// Rejects new transfers and posts (`account_frozen`); holds can still be voided or expire.
    Frozen = 1,
    /// Permanently closed; balance and holds were zero when it closed.
    Closed = 2,
}

impl AccountStatus {
    /// The stable name (`open`, `frozen`, `closed`).
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Open => "open",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }

    /// The status from its numeric value.
    pub fn from_u8(value: u8) -> Option<AccountStatus> {
        match value {
            0 => Some(AccountStatus::Open),
            1 => Some(AccountStatus::Frozen),
            2 => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

/// A change of account status.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum StatusAction {
    /// Open → frozen (frozen stays frozen).
    Freeze = 0,
    /// Frozen → open (open stays open).
    Unfreeze = 1,
    /// Open or frozen → closed; needs a zero balance and no pending holds.
    Close = 2,
}

impl StatusAction {
    /// The action from its numeric value.
    pub fn from_u8(value: u8) -> Option<StatusAction> {
        match value {
            0 => Some(StatusAction::Freeze),
            1 => Some(StatusAction::Unfreeze),
            2 => Some(StatusAction::Close),
            _ => None,
        }
    }
}

/// The four balances of an account, in minor units.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Balances {
    /// Sum of pending (held) debits.
    pub debits_pending: u64,
    /// Sum of posted debits.
    pub debits_posted: u64,
    /// Sum of pending (held) credits.
    pub credits_pending: u64,
    /// Sum of posted credits.
    pub credits_posted: u64,
}

impl Balances {
    /// Posted credits minus posted debits (positive for a funded wallet).
    pub fn net_posted(&self) -> i128 {
        self.credits_posted as i128 - self.debits_posted as i128
    }

    /// Net posted balance less pending debits: what a wallet can still spend (before any limit).
    pub fn available(&self) -> i128 {
        self.net_posted() - self.debits_pending as i128
    }

    /// [`Balances::available`] saturated to `i64` (what risk rules read as `payer_balance`; only
    /// a balance beyond ±9.2 × 10^18 minor units is cut).
    pub fn available_saturating_i64(&self) -> i64 {
        self.available().clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// A request to create an account.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewAccount {
    /// Client-supplied (or generated) id; the permanent idempotency key of the account.
    pub id: Id,
    /// Currency or unit of every transfer on this account.
    pub currency: Currency,
    /// Floor flags.
    pub flags: AccountFlags,
    /// Overdraft (with debits_must_not_exceed_credits) or credit limit (with the other flag).
    pub limit_minor: Option<u64>,
    /// Opaque metadata (the API stores compact JSON), at most [`crate::METADATA_BYTES_MAX`] bytes.
    pub metadata: Option<Box<[u8]>>,
}

impl NewAccount {
    /// An account with no flags, limit or metadata.
    pub fn new(id: Id, currency: Currency) -> NewAccount {
        NewAccount { id, currency, flags: AccountFlags::default(), limit_minor: None, metadata: None }
    }

    /// The same account with floor flags.
    pub fn with_flags(mut self, flags: AccountFlags) -> NewAccount {
        self.flags = flags;
        self
    }
}

/// An account as the ledger holds it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Account {
    /// The account's id.
    pub id: Id,
    /// Its currency.
    pub currency: Currency,
    /// Its floor flags.
    pub flags: AccountFlags,
    /// Its overdraft or credit limit.
    pub limit_minor: Option<u64>,
    /// Open, frozen or closed.
    pub status: AccountStatus,
    /// Opaque metadata.
    pub metadata: Option<Box<[u8]>>,
    /// Current balances.
    pub balances: Balances,
    /// Ledger timestamp of its creation (nanoseconds since the Unix epoch).
    pub timestamp_ns: u64,
}
