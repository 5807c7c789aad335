//! Binary encoding of ledger events as journal entry bodies.
//!
//! Little-endian, length-prefixed, versioned by entry kind. Every field a verifier needs is in the
//! entry itself (ids as text, not internal indices), so one entry can be checked on its own (e.g. in a
//! Merkle inclusion proof). Decoding never panics on any input: it returns [`DecodeError`].

use puhui_ledger::{
    AccountFlags, Currency, CurrencyCode, Id, Ledger, LogItem, NewAccount, References, ResultCode,
    StatusAction, TransferKind, TransferRequest,
};

/// Entry kind: an account was created.
pub const KIND_ACCOUNT_CREATED: u8 = 1;
/// Entry kind: an account's status changed.
pub const KIND_STATUS_CHANGED: u8 = 2;
/// Entry kind: a transfer was recorded (applied, or failed and kept for idempotency).
pub const KIND_TRANSFER: u8 = 3;
/// Entry kind: a pending transfer expired.
pub const KIND_EXPIRED: u8 = 4;

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
}

impl Event {
    /// The event's ledger timestamp.
    pub fn timestamp_ns(&self) -> u64 {
        match self {
            Event::AccountCreated { timestamp_ns, .. }
            | Event::StatusChanged { timestamp_ns, .. }
            | Event::Transfer { timestamp_ns, .. }
            | Event::Expired { timestamp_ns, .. } => *timestamp_ns,
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
        }
    }
}

/// Why an entry body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

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

/// Encodes a transfer request (the body of a transfer entry after timestamp and result).
pub fn encode_request(r: &TransferRequest, out: &mut Vec<u8>) {
    out.push(r.kind as u8);
    put_str(out, &r.id);
    put_opt_str(out, r.pending_id.as_deref());
    put_opt_str(out, r.debit_account_id.as_deref());
    put_opt_str(out, r.credit_account_id.as_deref());
    put_opt_u64(out, r.amount_minor);
    put_opt_str(out, r.currency.as_ref().map(|c| c.as_str()));
    put_opt_u64(out, r.timeout_ms);
    out.extend_from_slice(&r.code.to_le_bytes());
    put_opt_bytes(out, r.metadata.as_deref());
    put_opt_str(out, r.references.end_to_end_id.as_deref());
    match &r.references.uetr {
        Some(u) => {
            out.push(1);
            out.extend_from_slice(u);
        }
        None => out.push(0),
    }
}

/// Decodes an entry body of the given kind.
pub fn decode(kind: u8, body: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader { buf: body, at: 0 };
    let event = match kind {
        KIND_ACCOUNT_CREATED => {
            let timestamp_ns = r.u64()?;
            let id = r.id()?;
            let code = r.str()?;
            let exponent = r.u8()?;
            let currency = Currency::parse(&code, Some(exponent))
                .map_err(|e| DecodeError(format!("currency {code:?}: {e}")))?;
            let flags = AccountFlags::from_bits(r.u8()?).ok_or_else(|| DecodeError("unknown account flags".into()))?;
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
            let action = StatusAction::from_u8(r.u8()?).ok_or_else(|| DecodeError("unknown status action".into()))?;
            Event::StatusChanged { account_id, action, timestamp_ns }
        }
        KIND_TRANSFER => {
            let timestamp_ns = r.u64()?;
            let result = ResultCode::from_u8(r.u8()?).ok_or_else(|| DecodeError("unknown result code".into()))?;
            let request = decode_request(&mut r)?;
            Event::Transfer { request, timestamp_ns, result }
        }
        KIND_EXPIRED => {
            let timestamp_ns = r.u64()?;
            let pending_id = r.id()?;
            Event::Expired { pending_id, timestamp_ns }
        }
        other => return Err(DecodeError(format!("unknown entry kind {other}"))),
    };
    if r.at != body.len() {
        return Err(DecodeError(format!("{} trailing bytes", body.len() - r.at)));
    }
    Ok(event)
}

fn decode_request(r: &mut Reader<'_>) -> Result<TransferRequest, DecodeError> {
    let kind = TransferKind::from_u8(r.u8()?).ok_or_else(|| DecodeError("unknown transfer kind".into()))?;
    let id = r.id()?;
    let pending_id = r.opt_id()?;
    let debit_account_id = r.opt_id()?;
    let credit_account_id = r.opt_id()?;
    let amount_minor = r.opt_u64()?;
    let currency = match r.opt_str()? {
        Some(c) => Some(CurrencyCode::new(&c).ok_or_else(|| DecodeError(format!("bad currency code {c:?}")))?),
        None => None,
    };
    let timeout_ms = r.opt_u64()?;
    let code = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
    let metadata = r.opt_bytes()?;
    let end_to_end_id = r.opt_str()?.map(String::into_boxed_str);
    let uetr = match r.u8()? {
        0 => None,
        1 => Some(r.take(16)?.try_into().expect("16 bytes")),
        _ => return Err(DecodeError("bad uetr marker".into())),
    };
    Ok(TransferRequest {
        id,
        kind,
        pending_id,
        debit_account_id,
        credit_account_id,
        amount_minor,
        currency,
        timeout_ms,
        code,
        metadata,
        references: References { end_to_end_id, uetr },
        linked: false,
    })
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= u8::MAX as usize, "short strings only");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
        None => out.push(0),
    }
}

fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.at < n {
            return Err(DecodeError(format!("body ends early (wanted {n} bytes at {})", self.at)));
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError(format!("bad option marker {other}"))),
        }
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError("string is not UTF-8".into()))
    }
    fn id(&mut self) -> Result<Id, DecodeError> {
        let s = self.str()?;
        Id::new(&s).ok_or_else(|| DecodeError(format!("invalid id {s:?}")))
    }
    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        if self.flag()? { Ok(Some(self.str()?)) } else { Ok(None) }
    }
    fn opt_id(&mut self) -> Result<Option<Id>, DecodeError> {
        if self.flag()? { Ok(Some(self.id()?)) } else { Ok(None) }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        if self.flag()? { Ok(Some(self.u64()?)) } else { Ok(None) }
    }
    fn opt_bytes(&mut self) -> Result<Option<Box<[u8]>>, DecodeError> {
        if !self.flag()? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        Ok(Some(self.take(len)?.into()))
    }
}
