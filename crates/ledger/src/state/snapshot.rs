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
use crate::transfer::{PendingStatus, References, TransferKind};
use crate::wire::{
    decode_request, encode_request, put_opt_bytes, put_opt_str, put_opt_u64, put_str, put_u64, DecodeError,
    Reader,
};

const SNAPSHOT_MAGIC: &[u8; 4] = b"PHS1";
/// Bytes buffered before the sink is called.
const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

impl Ledger {
    /// Encodes the state, handing `sink` owned chunks of a few MiB each.
    pub fn encode_snapshot(&self, sink: &mut dyn FnMut(Vec<u8>)) {
        let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 64 * 1024);
        buf.extend_from_slice(SNAPSHOT_MAGIC);
        put_u64(&mut buf, self.last_timestamp_ns);
        put_u64(&mut buf, self.accounts.len() as u64);
        for a in &self.accounts {
            put_str(&mut buf, &a.id);
            put_str(&mut buf, a.currency.code().as_str());
            buf.push(a.currency.exponent());
            buf.push(a.flags.bits());
            put_opt_u64(&mut buf, a.limit_minor);
            buf.push(a.status as u8);
            put_opt_bytes(&mut buf, a.metadata.as_deref());
            put_u64(&mut buf, a.timestamp_ns);
            for v in [
                a.balances.debits_pending,
                a.balances.debits_posted,
                a.balances.credits_pending,
                a.balances.credits_posted,
            ] {
                put_u64(&mut buf, v);
            }
            if buf.len() >= SNAPSHOT_CHUNK_BYTES {
                sink(std::mem::replace(&mut buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 64 * 1024)));
            }
        }
        put_u64(&mut buf, self.transfers.len() as u64);
        for t in &self.transfers {
            put_str(&mut buf, &t.id);
            for v in [t.amount_minor, t.timestamp_ns, t.resolved_at_ns, t.expires_at_ns, t.timeout_ms] {
                put_u64(&mut buf, v);
            }
            for v in [t.debit, t.credit, t.pending, t.code] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            put_str(&mut buf, t.currency.as_str());
            buf.extend_from_slice(&[t.kind as u8, t.result as u8, t.pending_status as u8]);
            match &t.extra {
                None => buf.push(0),
                Some(extra) => {
                    buf.push(1);
                    put_opt_bytes(&mut buf, extra.metadata.as_deref());
                    put_opt_str(&mut buf, extra.references.end_to_end_id.as_deref());
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
                            encode_request(r, &mut buf);
                        }
                        None => buf.push(0),
                    }
                }
            }
            if buf.len() >= SNAPSHOT_CHUNK_BYTES {
                sink(std::mem::replace(&mut buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 64 * 1024)));
            }
        }
        if !buf.is_empty() {
            sink(buf);
        }
    }

    /// Rebuilds a ledger from a snapshot made by [`Ledger::encode_snapshot`].
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Ledger, DecodeError> {
        let bad = |what: String| DecodeError(format!("snapshot: {what}"));
        let mut r = Reader::new(bytes);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return Err(bad("not a ledger snapshot (bad magic)".into()));
        }
        let mut ledger = Ledger::new();
        let last_timestamp_ns = r.u64()?;
        let accounts = r.u64()? as usize;
        if accounts > crate::ACCOUNTS_MAX || accounts > r.remaining() {
            return Err(bad(format!("implausible account count {accounts}")));
        }
        let mut stored_balances = Vec::with_capacity(accounts);
        ledger.accounts.reserve(accounts);
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
                history: Vec::new(),
            });
        }
        let transfers = r.u64()? as usize;
        if transfers > crate::TRANSFERS_MAX || transfers > r.remaining() {
            return Err(bad(format!("implausible transfer count {transfers}")));
        }
        ledger.transfers.reserve(transfers);
        for _ in 0..transfers {
            let id = r.id()?;
            let (amount_minor, timestamp_ns, resolved_at_ns, expires_at_ns, timeout_ms) =
                (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let (debit, credit, pending, code) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            let currency = {
                let c = r.str()?;
                CurrencyCode::new(c).ok_or_else(|| bad(format!("currency code {c:?}")))?
            };
            let kind = TransferKind::from_u8(r.u8()?).ok_or_else(|| bad("transfer kind".into()))?;
            let result = ResultCode::from_u8(r.u8()?).ok_or_else(|| bad("result code".into()))?;
            let pending_status = match r.u8()? {
                0 => PendingStatus::Pending,
                1 => PendingStatus::Posted,
                2 => PendingStatus::Voided,
                3 => PendingStatus::Expired,
                other => return Err(bad(format!("pending status {other}"))),
            };
            let extra = if r.flag()? {
                let metadata = r.opt_bytes()?;
                let end_to_end_id = r.opt_str()?.map(Box::<str>::from);
                let uetr = if r.flag()? { Some(r.take(16)?.try_into().expect("16 bytes")) } else { None };
                let failed_request = if r.flag()? { Some(Box::new(decode_request(&mut r)?)) } else { None };
                Some(Box::new(TransferExtra {
                    metadata,
                    references: References { end_to_end_id, uetr },
                    failed_request,
                }))
            } else {
                None
            };
            let index = ledger.transfers.len() as u32;
            let in_range = |i: u32, limit: usize| i == NONE || (i as usize) < limit;
            if result == ResultCode::Ok
                && (!in_range(debit, accounts)
                    || !in_range(credit, accounts)
                    || debit == NONE
                    || credit == NONE
                    || !in_range(pending, index as usize))
            {
                return Err(bad(format!("transfer {id} refers to records that do not exist")));
            }
            if ledger.transfers.last().is_some_and(|p| p.timestamp_ns >= timestamp_ns) {
                return Err(bad(format!("transfer {id} is out of timestamp order")));
            }
            ledger.transfers.push(TransferRecord {
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
            });
        }
        if r.remaining() != 0 {
            return Err(bad(format!("{} trailing bytes", r.remaining())));
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
        let hasher = self.hasher.clone();
        self.accounts_index = hashbrown::HashTable::with_capacity(self.accounts.len());
        for (i, a) in self.accounts.iter().enumerate() {
            let hash = super::hash_str(&hasher, &a.id);
            let accounts = &self.accounts;
            if self.accounts_index.find(hash, |&j| accounts[j as usize].id == a.id).is_some() {
                return Err(format!("account {} appears twice", a.id));
            }
            self.accounts_index
                .insert_unique(hash, i as u32, |&j| super::hash_str(&hasher, &accounts[j as usize].id));
        }
        self.transfers_index = hashbrown::HashTable::with_capacity(self.transfers.len());
        for (i, t) in self.transfers.iter().enumerate() {
            let hash = super::hash_str(&hasher, &t.id);
            let transfers = &self.transfers;
            self.transfers_index
                .insert_unique(hash, i as u32, |&j| super::hash_str(&hasher, &transfers[j as usize].id));
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
