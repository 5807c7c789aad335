//! The binary wire encoding of ledger types, shared by the journal and the snapshot.
//!
//! Little-endian and length-prefixed. Not serde: core types stay free of wire concerns, and this one
//! module is the only place that knows their byte layout. Decoding never panics on any input.

use crate::id::Id;
use crate::money::CurrencyCode;
use crate::transfer::{References, TransferKind, TransferRequest};

/// Why an entry body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

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

/// Decodes a transfer request written by [`encode_request`].
pub fn decode_request(r: &mut Reader<'_>) -> Result<TransferRequest, DecodeError> {
    let kind = TransferKind::from_u8(r.u8()?).ok_or_else(|| DecodeError("unknown transfer kind".into()))?;
    let id = r.id()?;
    let pending_id = r.opt_id()?;
    let debit_account_id = r.opt_id()?;
    let credit_account_id = r.opt_id()?;
    let amount_minor = r.opt_u64()?;
    let currency = match r.opt_str()? {
        Some(c) => Some(CurrencyCode::new(c).ok_or_else(|| DecodeError(format!("bad currency code {c:?}")))?),
        None => None,
    };
    let timeout_ms = r.opt_u64()?;
    let code = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
    let metadata = r.opt_bytes()?;
    let end_to_end_id = r.opt_str()?.map(Box::<str>::from);
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

/// Writes a u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes a short string (≤ 255 bytes) with a one-byte length.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= u8::MAX as usize, "short strings only");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Writes an optional short string.
pub fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

/// Writes an optional u64.
pub fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
        None => out.push(0),
    }
}

/// Writes optional bytes with a four-byte length.
pub fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
}

/// Reads wire-encoded values from a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.at < n {
            return Err(DecodeError(format!("body ends early (wanted {n} bytes at {})", self.at)));
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    /// A byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// An option marker (0 or 1).
    pub fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError(format!("bad option marker {other}"))),
        }
    }
    /// A short string.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        core::str::from_utf8(raw).map_err(|_| DecodeError("string is not UTF-8".into()))
    }
    /// A validated id.
    pub fn id(&mut self) -> Result<Id, DecodeError> {
        let s = self.str()?;
        Id::new(s).ok_or_else(|| DecodeError(format!("invalid id {s:?}")))
    }
    /// An optional short string.
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, DecodeError> {
        if self.flag()? {
            Ok(Some(self.str()?))
        } else {
            Ok(None)
        }
    }
    /// An optional id.
    pub fn opt_id(&mut self) -> Result<Option<Id>, DecodeError> {
        if self.flag()? {
            Ok(Some(self.id()?))
        } else {
            Ok(None)
        }
    }
    /// An optional u64.
    pub fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        if self.flag()? {
            Ok(Some(self.u64()?))
        } else {
            Ok(None)
        }
    }
    /// Optional bytes.
    pub fn opt_bytes(&mut self) -> Result<Option<Box<[u8]>>, DecodeError> {
        if !self.flag()? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        Ok(Some(self.take(len)?.into()))
    }
}

impl Reader<'_> {
    /// A u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}
