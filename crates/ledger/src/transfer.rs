//! Transfers: single-phase, pending (a hold), post and void of a pending transfer.

use crate::id::Id;
use crate::money::CurrencyCode;
use crate::result::ResultCode;

/// What a transfer does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum TransferKind {
    /// Moves the amount at once.
    Single = 0,
    /// Holds the amount (pending balances) until posted, voided or expired.
    Pending = 1,
    /// Posts a pending transfer, fully or partly; the rest of the hold is released.
    PostPending = 2,
    /// Releases a pending transfer's hold.
    VoidPending = 3,
}

impl TransferKind {
    /// The stable name (`single`, `pending`, `post_pending`, `void_pending`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Single => "single",
            TransferKind::Pending => "pending",
            TransferKind::PostPending => "post_pending",
            TransferKind::VoidPending => "void_pending",
        }
    }

    /// The kind from its numeric value.
    pub fn from_u8(value: u8) -> Option<TransferKind> {
        match value {
            0 => Some(TransferKind::Single),
            1 => Some(TransferKind::Pending),
            2 => Some(TransferKind::PostPending),
            3 => Some(TransferKind::VoidPending),
            _ => None,
        }
    }

    /// Whether this kind resolves an earlier pending transfer.
    pub fn resolves_pending(self) -> bool {
        matches!(self, TransferKind::PostPending | TransferKind::VoidPending)
    }
}

/// ISO 20022 references carried verbatim so an adapter to a clearing system is a mapping.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct References {
    /// pacs.008 `PmtId/EndToEndId`, 1–35 characters.
    pub end_to_end_id: Option<Box<str>>,
    /// Unique end-to-end transaction reference (a UUID), as 16 bytes.
    pub uetr: Option<[u8; 16]>,
}

impl References {
    /// Whether no reference is set.
    pub fn is_empty(&self) -> bool {
        self.end_to_end_id.is_none() && self.uetr.is_none()
    }
}

/// A request to create a transfer.
///
/// For `Single` and `Pending`, the accounts, a positive amount and the currency are required. For
/// `PostPending` and `VoidPending`, they are taken from the pending transfer; if given, they must match
/// it (a post's amount may be smaller: a partial post).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TransferRequest {
    /// Client-supplied (or generated) id; the permanent idempotency key of the transfer.
    pub id: Id,
    /// What the transfer does.
    pub kind: TransferKind,
    /// The pending transfer to post or void.
    pub pending_id: Option<Id>,
    /// The account debited.
    pub debit_account_id: Option<Id>,
    /// The account credited.
    pub credit_account_id: Option<Id>,
    /// Amount in minor units. For a post, `None` posts the whole hold.
    pub amount_minor: Option<u64>,
    /// Must equal both accounts' currency.
    pub currency: Option<CurrencyCode>,
    /// For a pending transfer: milliseconds after which the hold expires. `None` or 0: never.
    pub timeout_ms: Option<u64>,
    /// Business reason (e.g. 1 = P2P, 2 = merchant payment, 10 = loan disbursement).
    pub code: u32,
    /// Opaque metadata, at most [`crate::METADATA_BYTES_MAX`] bytes.
    pub metadata: Option<Box<[u8]>>,
    /// ISO 20022 references.
    pub references: References,
    /// Links this transfer to the next one in the batch: the chain succeeds or fails as one.
    pub linked: bool,
}

impl TransferRequest {
    /// A single-phase transfer.
    pub fn single(id: Id, debit: Id, credit: Id, amount_minor: u64, currency: CurrencyCode) -> Self {
        TransferRequest {
            id,
            kind: TransferKind::Single,
            pending_id: None,
            debit_account_id: Some(debit),
            credit_account_id: Some(credit),
            amount_minor: Some(amount_minor),
            currency: Some(currency),
            timeout_ms: None,
            code: 0,
            metadata: None,
            references: References::default(),
            linked: false,
        }
    }

    /// A pending transfer (a hold), expiring after `timeout_ms` if given.
    pub fn pending(
        id: Id,
        debit: Id,
        credit: Id,
        amount_minor: u64,
        currency: CurrencyCode,
        timeout_ms: Option<u64>,
    ) -> Self {
        TransferRequest {
            kind: TransferKind::Pending,
            timeout_ms,
            ..TransferRequest::single(id, debit, credit, amount_minor, currency)
        }
    }

    /// Posts `pending_id`, the whole hold if `amount_minor` is `None`.
    pub fn post(id: Id, pending_id: Id, amount_minor: Option<u64>) -> Self {
        TransferRequest {
            id,
            kind: TransferKind::PostPending,
            pending_id: Some(pending_id),
            debit_account_id: None,
            credit_account_id: None,
            amount_minor,
            currency: None,
            timeout_ms: None,
            code: 0,
            metadata: None,
            references: References::default(),
            linked: false,
        }
    }

    /// Voids `pending_id`.
    pub fn void(id: Id, pending_id: Id) -> Self {
        TransferRequest { kind: TransferKind::VoidPending, ..TransferRequest::post(id, pending_id, None) }
    }

    /// The timeout with 0 read as "none".
    pub fn timeout_ms_normalized(&self) -> Option<u64> {
        self.timeout_ms.filter(|t| *t > 0)
    }
}

/// The state of a pending transfer's hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum PendingStatus {
    /// Still held.
    Pending = 0,
    /// Posted (fully or partly) by another transfer.
    Posted = 1,
    /// Voided by another transfer.
    Voided = 2,
    /// Expired; the hold was released.
    Expired = 3,
}

impl PendingStatus {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingStatus::Pending => "pending",
            PendingStatus::Posted => "posted",
            PendingStatus::Voided => "voided",
            PendingStatus::Expired => "expired",
        }
    }
}

/// A transfer as the ledger recorded it, failed ones included (their id stays taken).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transfer {
    /// The request in canonical form: for applied transfers every account, amount and currency is
    /// filled in (a post shows the accounts of its pending transfer and the amount posted).
    pub request: TransferRequest,
    /// Ledger timestamp, nanoseconds since the Unix epoch, strictly increasing across the ledger.
    pub timestamp_ns: u64,
    /// The outcome: `ok`, or the code of the failure that was recorded.
    pub result: ResultCode,
    /// For pending transfers: the state of the hold.
    pub pending_status: Option<PendingStatus>,
    /// For pending transfers that were resolved: when.
    pub resolved_at_ns: Option<u64>,
    /// For pending transfers with a timeout: when the hold expires (or expired).
    pub expires_at_ns: Option<u64>,
}
