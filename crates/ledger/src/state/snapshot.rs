//! Snapshots of the ledger state: what recovery loads instead of replaying the whole journal.
//!
//! A snapshot holds the accounts (with their balances, as a check) and every transfer record. The
//! derived state — per-account history, balances, the expiry queue and the hash indexes — is rebuilt
//! on load by one pass over the records in timestamp order; the rebuilt balances must equal the stored
//! ones, so a snapshot that disagrees with itself is refused rather than trusted.

use std::collections::BTreeSet;

use super::{AccountRecord, HistoryEntry, Ledger, TransferExtra, TransferRecord, EXPIRY_BIT, NONE};
use crate::account::{AccountFlags, AccountStatus, Balances};
use crate::money::{Currency, CurrencyCode};
use crate::result::ResultCode;
use crate::segmented::{IdIndex, Segmented};
use crate::transfer::{PendingStatus, References, TransferKind};
use crate::wire::{
    decode_request, encode_request, put_opt_bytes, put_opt_str, put_opt_u64, put_str, put_u64, DecodeError,
    Reader,
};

const SNAPSHOT_MAGIC: &[u8; 4] = b"PHS2";
/// Bytes per chunk handed out.
const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// A snapshot being encoded a slice at a time, so that taking it never pauses writes for long.
///
/// Layout: `magic | last_timestamp_ns | transfers | transfer records… | patches | (index, status,
/// resolved_at)… | accounts | account records…`. Transfer records are encoded in slices between
/// group commits ([`Ledger::snapshot_step`]); a record's only mutable fields (its hold's status and
/// resolution time) may change after it was encoded, so the ledger notes every such change while a
/// snapshot is open and [`Ledger::snapshot_finish`] appends them as patches, with the accounts.
#[derive(Debug)]
pub struct SnapshotBuilder {
    chunks: Vec<Vec<u8>>,
    buf: Vec<u8>,
    encoded: usize,
}

impl SnapshotBuilder {
    /// Transfer records encoded so far.
    pub fn records_encoded(&self) -> usize {
        self.encoded
    }

    fn flush_if_full(&mut self) {
        if self.buf.len() >= SNAPSHOT_CHUNK_BYTES {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 64 * 1024));
            self.chunks.push(full);
        }
    }
}

impl Ledger {
    /// Encodes the whole state at once (for tests and tools; the store uses the incremental form).
    pub fn encode_snapshot(&mut self) -> Vec<Vec<u8>> {
        let mut builder = self.snapshot_begin();
        while !self.snapshot_step(&mut builder, usize::MAX) {}
        self.snapshot_finish(builder)
    }

    /// Opens a snapshot: from now on, changes to already-encodable records are noted as patches.
    pub fn snapshot_begin(&mut self) -> SnapshotBuilder {
        self.snapshot_dirty = Some(Vec::new());
        SnapshotBuilder {
            chunks: Vec::new(),
            buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 64 * 1024),
            encoded: 0,
        }
    }

    /// Encodes up to `records_max` more transfer records. Returns whether every record is encoded.
    pub fn snapshot_step(&self, b: &mut SnapshotBuilder, records_max: usize) -> bool {
        assert!(self.snapshot_dirty.is_some(), "snapshot_begin first");
        let end = self.transfers.len().min(b.encoded.saturating_add(records_max));
        for t in self.transfers.range(b.encoded, end) {
            encode_record(t, &mut b.buf);
            b.flush_if_full();
        }
        b.encoded = end;
        b.encoded == self.transfers.len()
    }

    /// Encodes what is left (records, patches, accounts) and closes the snapshot: it describes the
    /// ledger as it is now. Returns the snapshot's bytes in chunks.
    pub fn snapshot_finish(&mut self, mut b: SnapshotBuilder) -> Vec<Vec<u8>> {
        self.snapshot_step(&mut b, usize::MAX);
        let mut dirty = self.snapshot_dirty.take().expect("snapshot_begin first");
        assert!(b.encoded == self.transfers.len(), "records are never removed between steps");
        dirty.sort_unstable();
        dirty.dedup();
        put_u64(&mut b.buf, dirty.len() as u64);
        for index in dirty {
            let t = &self.transfers[index as usize];
            b.buf.extend_from_slice(&index.to_le_bytes());
            b.buf.push(t.pending_status as u8);
            put_u64(&mut b.buf, t.resolved_at_ns);
        }
        put_u64(&mut b.buf, self.accounts.len() as u64);
        for a in &self.accounts {
            put_str(&mut b.buf, &a.id);
            put_str(&mut b.buf, a.currency.code().as_str());
            b.buf.push(a.currency.exponent());
            b.buf.push(a.flags.bits());
            put_opt_u64(&mut b.buf, a.limit_minor);
            b.buf.push(a.status as u8);
            put_opt_bytes(&mut b.buf, a.metadata.as_deref());
            put_u64(&mut b.buf, a.timestamp_ns);
            for v in [
                a.balances.debits_pending,
                a.balances.debits_posted,
                a.balances.credits_pending,
                a.balances.credits_posted,
            ] {
                put_u64(&mut b.buf, v);
            }
            b.flush_if_full();
        }
        let mut head = Vec::with_capacity(20);
        head.extend_from_slice(SNAPSHOT_MAGIC);
        put_u64(&mut head, self.last_timestamp_ns);
        put_u64(&mut head, self.transfers.len() as u64);
        let mut chunks = Vec::with_capacity(b.chunks.len() + 2);
        chunks.push(head);
        chunks.append(&mut b.chunks);
        chunks.push(b.buf);
        chunks
    }

    /// Notes that a record's mutable fields changed (only while a snapshot is open).
    pub(super) fn snapshot_note(&mut self, index: u32) {
        if let Some(dirty) = &mut self.snapshot_dirty {
            dirty.push(index);
        }
    }

    /// Rebuilds a ledger from a snapshot's bytes.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Ledger, DecodeError> {
        let bad = |what: String| DecodeError(format!("snapshot: {what}"));
        let mut r = Reader::new(bytes);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return Err(bad("not a ledger snapshot (bad magic)".into()));
        }
        let mut ledger = Ledger::new();
        let last_timestamp_ns = r.u64()?;
        let transfers = r.u64()? as usize;
        if transfers > crate::TRANSFERS_MAX || transfers > r.remaining() {
            return Err(bad(format!("implausible transfer count {transfers}")));
        }
        for _ in 0..transfers {
            let record = decode_record(&mut r)?;
            if ledger.transfers.last().is_some_and(|p| p.timestamp_ns >= record.timestamp_ns) {
                return Err(bad(format!("transfer {} is out of timestamp order", record.id)));
            }
            let index = ledger.transfers.len();
            if record.result == ResultCode::Ok
                && (record.debit == NONE
                    || record.credit == NONE
                    || (record.pending != NONE && record.pending as usize >= index))
            {
                return Err(bad(format!("transfer {} refers to records that do not exist", record.id)));
            }
            ledger.transfers.push(record);
        }
        let patches = r.u64()? as usize;
        if patches > transfers {
            return Err(bad(format!("implausible patch count {patches}")));
        }
        for _ in 0..patches {
            let index = r.u32()? as usize;
            let status = pending_status(r.u8()?).ok_or_else(|| bad("pending status".into()))?;
            let resolved_at_ns = r.u64()?;
            let t = ledger.transfers.get_mut(index).ok_or_else(|| bad(format!("patch of record {index}")))?;
            t.pending_status = status;
            t.resolved_at_ns = resolved_at_ns;
        }
        let accounts = r.u64()? as usize;
        if accounts > crate::ACCOUNTS_MAX || accounts > r.remaining() {
            return Err(bad(format!("implausible account count {accounts}")));
        }
        let mut stored_balances = Vec::with_capacity(accounts);
        for _ in 0..accounts {
            let id = r.id()?;
            let code = r.str()?;
            let exponent = r.u8()?;
            let currency =
                Currency::parse(code, Some(exponent)).map_err(|e| bad(format!("currency {code:?}: {e}")))?;
            let flags = AccountFlags::from_bits(r.u8()?).ok_or_else(|| bad("account flags".into()))?;
            let limit_minor = r.opt_u64()?;
            let status = AccountStatus::from_u8(r.u8()?).ok_or_else(|| bad("account status".into()))?;
            let metadata = r.opt_bytes()?;
            let timestamp_ns = r.u64()?;
            let balances = Balances {
                debits_pending: r.u64()?,
                debits_posted: r.u64()?,
                credits_pending: r.u64()?,
                credits_posted: r.u64()?,
            };
            stored_balances.push(balances);
            ledger.accounts.push(AccountRecord {
                id,
                currency,
                flags,
                limit_minor,
                status,
                metadata,
                balances: Balances::default(),
                timestamp_ns,
                history: Segmented::new(),
            });
        }
        if r.remaining() != 0 {
            return Err(bad(format!("{} trailing bytes", r.remaining())));
        }
        if let Some(t) = ledger.transfers.iter().find(|t| {
            t.result == ResultCode::Ok && (t.debit as usize >= accounts || t.credit as usize >= accounts)
        }) {
            return Err(bad(format!("transfer {} refers to an account that does not exist", t.id)));
        }
        ledger.last_timestamp_ns = last_timestamp_ns;
        ledger.rebuild_derived().map_err(bad)?;
        for (a, stored) in ledger.accounts.iter().zip(&stored_balances) {
            if a.balances != *stored {
                return Err(bad(format!("account {} balances do not match its transfers", a.id)));
            }
        }
        Ok(ledger)
    }

    /// Rebuilds indexes, balances, histories and the expiry queue from accounts and transfer records.
    fn rebuild_derived(&mut self) -> Result<(), String> {
        let hasher = self.hasher;
        let (accounts, transfers) = (&self.accounts, &self.transfers);
        self.accounts_index = IdIndex::with_capacity(accounts.len());
        for (i, a) in accounts.iter().enumerate() {
            let hash = super::hash_str(&hasher, &a.id);
            if self.accounts_index.find(hash, |j| accounts[j as usize].id == a.id).is_some() {
                return Err(format!("account {} appears twice", a.id));
            }
            self.accounts_index
                .insert(hash, i as u32, |j| super::hash_str(&hasher, &accounts[j as usize].id));
        }
        self.transfers_index = IdIndex::with_capacity(transfers.len());
        for (i, t) in transfers.iter().enumerate() {
            let hash = super::hash_str(&hasher, &t.id);
            self.transfers_index
                .insert(hash, i as u32, |j| super::hash_str(&hasher, &transfers[j as usize].id));
        }
        if self.transfers_index.len() != self.transfers.len() {
            return Err("transfer ids are not unique".into());
        }
        // Expiries in time order, merged with transfers in time order.
        let mut expired: Vec<(u64, u32)> = self
            .transfers
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.kind == TransferKind::Pending
                    && t.result == ResultCode::Ok
                    && t.pending_status == PendingStatus::Expired
            })
            .map(|(i, t)| (t.resolved_at_ns, i as u32))
            .collect();
        expired.sort_unstable();
        let mut next_expiry = 0usize;
        self.expiries = BTreeSet::new();
        let overflow = |what: &str, id: &str| format!("{what} of {id} does not add up");
        // A transfer with an Ok result always has both accounts (checked while decoding).
        for i in 0..self.transfers.len() {
            let (ts, kind, result) = {
                let t = &self.transfers[i];
                (t.timestamp_ns, t.kind, t.result)
            };
            while next_expiry < expired.len() && expired[next_expiry].0 < ts {
                self.rebuild_expiry(expired[next_expiry].1).map_err(|id| overflow("expiry", &id))?;
                next_expiry += 1;
            }
            if result != ResultCode::Ok {
                continue;
            }
            let t = &self.transfers[i];
            let (debit, credit, amount) = (t.debit as usize, t.credit as usize, t.amount_minor);
            let held =
                if kind.resolves_pending() { self.transfers[t.pending as usize].amount_minor } else { 0 };
            let arm = |what: &str| format!("{what} of transfer #{i} does not add up");
            // (debit-side pending, debit-side posted) deltas and the same on the credit side.
            let (add_pending, sub_pending, add_posted) = match kind {
                TransferKind::Single => (0, 0, amount),
                TransferKind::Pending => (amount, 0, 0),
                TransferKind::PostPending => (0, held, amount),
                TransferKind::VoidPending => (0, held, 0),
            };
            let d = &mut self.accounts[debit].balances;
            d.debits_pending = d
                .debits_pending
                .checked_add(add_pending)
                .and_then(|v| v.checked_sub(sub_pending))
                .ok_or_else(|| arm("debit"))?;
            d.debits_posted = d.debits_posted.checked_add(add_posted).ok_or_else(|| arm("debit"))?;
            let c = &mut self.accounts[credit].balances;
            c.credits_pending = c
                .credits_pending
                .checked_add(add_pending)
                .and_then(|v| v.checked_sub(sub_pending))
                .ok_or_else(|| arm("credit"))?;
            c.credits_posted = c.credits_posted.checked_add(add_posted).ok_or_else(|| arm("credit"))?;
            let t = &self.transfers[i];
            if kind == TransferKind::Pending
                && t.pending_status == PendingStatus::Pending
                && t.expires_at_ns != 0
            {
                self.expiries.insert((t.expires_at_ns, i as u32));
            }
            for account in [debit, credit] {
                let a = &mut self.accounts[account];
                a.history.push(HistoryEntry { event: i as u32, balances: a.balances });
            }
        }
        while next_expiry < expired.len() {
            self.rebuild_expiry(expired[next_expiry].1).map_err(|id| overflow("expiry", &id))?;
            next_expiry += 1;
        }
        Ok(())
    }

    fn rebuild_expiry(&mut self, index: u32) -> Result<(), String> {
        let t = &self.transfers[index as usize];
        let (amount, debit, credit) = (t.amount_minor, t.debit as usize, t.credit as usize);
        let id = t.id.to_string();
        for (account, is_debit) in [(debit, true), (credit, false)] {
            let a = &mut self.accounts[account];
            let field =
                if is_debit { &mut a.balances.debits_pending } else { &mut a.balances.credits_pending };
            *field = field.checked_sub(amount).ok_or_else(|| id.clone())?;
            a.history.push(HistoryEntry { event: index | EXPIRY_BIT, balances: a.balances });
        }
        Ok(())
    }
}

fn pending_status(value: u8) -> Option<PendingStatus> {
    match value {
        0 => Some(PendingStatus::Pending),
        1 => Some(PendingStatus::Posted),
        2 => Some(PendingStatus::Voided),
        3 => Some(PendingStatus::Expired),
        _ => None,
    }
}

fn encode_record(t: &TransferRecord, buf: &mut Vec<u8>) {
    put_str(buf, &t.id);
    for v in [t.amount_minor, t.timestamp_ns, t.resolved_at_ns, t.expires_at_ns, t.timeout_ms] {
        put_u64(buf, v);
    }
    for v in [t.debit, t.credit, t.pending, t.code] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    put_str(buf, t.currency.as_str());
    buf.extend_from_slice(&[t.kind as u8, t.result as u8, t.pending_status as u8]);
    match &t.extra {
        None => buf.push(0),
        Some(extra) => {
            buf.push(1);
            put_opt_bytes(buf, extra.metadata.as_deref());
            put_opt_str(buf, extra.references.end_to_end_id.as_deref());
            match &extra.references.uetr {
                Some(u) => {
                    buf.push(1);
                    buf.extend_from_slice(u);
                }
                None => buf.push(0),
            }
            match &extra.failed_request {
                Some(r) => {
                    buf.push(1);
                    encode_request(r, buf);
                }
                None => buf.push(0),
            }
        }
    }
}

fn decode_record(r: &mut Reader<'_>) -> Result<TransferRecord, DecodeError> {
    let bad = |what: &str| DecodeError(format!("snapshot: bad {what}"));
    let id = r.id()?;
    let (amount_minor, timestamp_ns, resolved_at_ns, expires_at_ns, timeout_ms) =
        (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let (debit, credit, pending, code) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    let currency = CurrencyCode::new(r.str()?).ok_or_else(|| bad("currency code"))?;
    let kind = TransferKind::from_u8(r.u8()?).ok_or_else(|| bad("transfer kind"))?;
    let result = ResultCode::from_u8(r.u8()?).ok_or_else(|| bad("result code"))?;
    let pending_status = pending_status(r.u8()?).ok_or_else(|| bad("pending status"))?;
    let extra = if r.flag()? {
        let metadata = r.opt_bytes()?;
        let end_to_end_id = r.opt_str()?.map(Box::<str>::from);
        let uetr = if r.flag()? { Some(r.take(16)?.try_into().expect("16 bytes")) } else { None };
        let failed_request = if r.flag()? { Some(Box::new(decode_request(r)?)) } else { None };
        Some(Box::new(TransferExtra {
            metadata,
            references: References { end_to_end_id, uetr },
            failed_request,
        }))
    } else {
        None
    };
    Ok(TransferRecord {
        id,
        amount_minor,
        timestamp_ns,
        resolved_at_ns,
        expires_at_ns,
        timeout_ms,
        debit,
        credit,
        pending,
        code,
        currency,
        kind,
        result,
        pending_status,
        extra,
    })
}
