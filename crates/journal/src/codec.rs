//! Binary encoding of ledger events as journal entry bodies.
//!
//! Little-endian, length-prefixed, versioned by entry kind. Every field a verifier needs is in the
//! entry itself (ids as text, not internal indices), so one entry can be checked on its own (e.g. in a
//! Merkle inclusion proof). Decoding never panics on any input: it returns [`DecodeError`].

pub use puhui_ledger::wire::DecodeError;
use puhui_ledger::wire::{
    decode_request, encode_request, put_opt_bytes, put_opt_u64, put_str, put_u64, Reader,
};
use puhui_ledger::{
    AccountFlags, Currency, Id, Ledger, LogItem, NewAccount, ResultCode, StatusAction, TransferRequest,
};

/// Entry kind: an account was created.
pub const KIND_ACCOUNT_CREATED: u8 = 1;
/// Entry kind: an account's status changed.
pub const KIND_STATUS_CHANGED: u8 = 2;
/// Entry kind: a transfer was recorded (applied, or failed and kept for idempotency).
pub const KIND_TRANSFER: u8 = 3;
/// Entry kind: a pending transfer expired.
pub const KIND_EXPIRED: u8 = 4;
/// Entry kind: an application record (a risk decision, a label, a ruleset change…) kept in the same
/// hash chain and Merkle tree as the ledger's events. The ledger ignores it on replay; its owner
/// (named by `record_type`) decodes the payload.
pub const KIND_RECORD: u8 = 16;
/// Most bytes in a record's payload.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// A decoded journal event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An account was created at `timestamp_ns`.
    AccountCreated {
        /// The account.
        account: NewAccount,
        /// When.
        timestamp_ns: u64,
    },
    /// An account's status changed.
    StatusChanged {
        /// The account.
        account_id: Id,
        /// The change.
        action: StatusAction,
        /// When.
        timestamp_ns: u64,
    },
    /// A transfer was recorded with `result`.
    Transfer {
        /// The canonical request.
        request: TransferRequest,
        /// When.
        timestamp_ns: u64,
        /// Its recorded result.
        result: ResultCode,
    },
    /// A pending transfer's hold expired.
    Expired {
        /// The pending transfer.
        pending_id: Id,
        /// When.
        timestamp_ns: u64,
    },
    /// An application record ([`KIND_RECORD`]); the ledger ignores it.
    Record {
        /// Its owner's type tag (see `puhui_risk::records` for the risk records).
        record_type: u8,
        /// When it was committed.
        timestamp_ns: u64,
        /// The owner's encoding.
        payload: Vec<u8>,
    },
}

impl Event {
    /// The event's ledger timestamp.
    pub fn timestamp_ns(&self) -> u64 {
        match self {
            Event::AccountCreated { timestamp_ns, .. }
            | Event::StatusChanged { timestamp_ns, .. }
            | Event::Transfer { timestamp_ns, .. }
            | Event::Expired { timestamp_ns, .. }
            | Event::Record { timestamp_ns, .. } => *timestamp_ns,
        }
    }

    /// Applies the event to a ledger through its replay path (which re-decides and checks the result).
    pub fn replay(self, ledger: &mut Ledger) -> Result<(), puhui_ledger::ReplayError> {
        match self {
            Event::AccountCreated { account, timestamp_ns } => ledger.replay_account(account, timestamp_ns),
            Event::StatusChanged { account_id, action, timestamp_ns } => {
                ledger.replay_status(&account_id, action, timestamp_ns)
            }
            Event::Transfer { request, timestamp_ns, result } => {
                ledger.replay_transfer(request, timestamp_ns, result)
            }
            Event::Expired { pending_id, timestamp_ns } => ledger.replay_expiry(&pending_id, timestamp_ns),
            Event::Record { .. } => Ok(()),
        }
    }
}

/// Encodes the event a [`LogItem`] names, reading it from the ledger. Returns its entry kind.
pub fn encode_log_item(ledger: &Ledger, item: LogItem, out: &mut Vec<u8>) -> u8 {
    match item {
        LogItem::AccountCreated(index) => {
            let a = ledger.account_at(index);
            put_u64(out, a.timestamp_ns);
            put_str(out, &a.id);
            put_str(out, a.currency.code().as_str());
            out.push(a.currency.exponent());
            out.push(a.flags.bits());
            put_opt_u64(out, a.limit_minor);
            put_opt_bytes(out, a.metadata.as_deref());
            KIND_ACCOUNT_CREATED
        }
        LogItem::StatusChanged { account, action, timestamp_ns } => {
            put_u64(out, timestamp_ns);
            put_str(out, ledger.account_id_at(account));
            out.push(action as u8);
            KIND_STATUS_CHANGED
        }
        LogItem::Transfer(index) => {
            let t = ledger.transfer_at(index);
            put_u64(out, t.timestamp_ns);
            out.push(t.result as u8);
            encode_request(&t.request, out);
            KIND_TRANSFER
        }
        LogItem::Expired(index) => {
            put_u64(out, ledger.resolved_at_ns(index));
            put_str(out, ledger.transfer_id_at(index));
            KIND_EXPIRED
        }
    }
}

/// Encodes an application record as an entry body; returns [`KIND_RECORD`].
pub fn encode_record(record_type: u8, timestamp_ns: u64, payload: &[u8], out: &mut Vec<u8>) -> u8 {
    debug_assert!(payload.len() <= RECORD_PAYLOAD_BYTES_MAX);
    put_u64(out, timestamp_ns);
    out.push(record_type);
    put_opt_bytes(out, Some(payload));
    KIND_RECORD
}

/// Decodes a [`KIND_RECORD`] entry body into `(record_type, timestamp_ns, payload)`, the payload
/// borrowed: what [`decode`] gives as [`Event::Record`], without copying it (a start and the risk
/// checkpointer read every record and keep few).
pub fn decode_record(body: &[u8]) -> Result<(u8, u64, &[u8]), DecodeError> {
    let mut r = Reader::new(body);
    let timestamp_ns = r.u64()?;
    let record_type = r.u8()?;
    if !r.flag()? {
        return Err(DecodeError("record without a payload".into()));
    }
    let len = r.u32()? as usize;
    let payload = r.take(len)?;
    if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
        return Err(DecodeError(format!("record payload of {} bytes", payload.len())));
    }
    if r.remaining() != 0 {
        return Err(DecodeError(format!("{} trailing bytes", r.remaining())));
    }
    Ok((record_type, timestamp_ns, payload))
}

/// Decodes an entry body of the given kind.
pub fn decode(kind: u8, body: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader::new(body);
    let event = match kind {
        KIND_ACCOUNT_CREATED => {
            let timestamp_ns = r.u64()?;
            let id = r.id()?;
            let code = r.str()?;
            let exponent = r.u8()?;
            let currency = Currency::parse(code, Some(exponent))
                .map_err(|e| DecodeError(format!("currency {code:?}: {e}")))?;
            let flags = AccountFlags::from_bits(r.u8()?)
                .ok_or_else(|| DecodeError("unknown account flags".into()))?;
            let limit_minor = r.opt_u64()?;
            let metadata = r.opt_bytes()?;
            Event::AccountCreated {
                account: NewAccount { id, currency, flags, limit_minor, metadata },
                timestamp_ns,
            }
        }
        KIND_STATUS_CHANGED => {
            let timestamp_ns = r.u64()?;
            let account_id = r.id()?;
            let action =
                StatusAction::from_u8(r.u8()?).ok_or_else(|| DecodeError("unknown status action".into()))?;
            Event::StatusChanged { account_id, action, timestamp_ns }
        }
        KIND_TRANSFER => {
            let timestamp_ns = r.u64()?;
            let result =
                ResultCode::from_u8(r.u8()?).ok_or_else(|| DecodeError("unknown result code".into()))?;
            let request = decode_request(&mut r)?;
            Event::Transfer { request, timestamp_ns, result }
        }
        KIND_EXPIRED => {
            let timestamp_ns = r.u64()?;
            let pending_id = r.id()?;
            Event::Expired { pending_id, timestamp_ns }
        }
        KIND_RECORD => {
            let (record_type, timestamp_ns, payload) = decode_record(body)?;
            return Ok(Event::Record { record_type, timestamp_ns, payload: payload.to_vec() });
        }
        other => return Err(DecodeError(format!("unknown entry kind {other}"))),
    };
    if r.remaining() != 0 {
        return Err(DecodeError(format!("{} trailing bytes", r.remaining())));
    }
    Ok(event)
}
