//! Rows ↔ domain types. The only place that knows the column layout of the tables.

use postgres::Row;
use puhui_ledger::{
    Account, AccountFlags, AccountStatus, Balances, Currency, CurrencyCode, Id, PendingStatus, References,
    ResultCode, Transfer, TransferKind, TransferRequest,
};
use puhui_store::StoreError;

/// Columns of `puhui_accounts`, in the order [`account`] reads them.
pub const ACCOUNT_COLUMNS: &str = "id, currency, exponent, flags, limit_minor, status, metadata, \
     debits_pending, debits_posted, credits_pending, credits_posted, timestamp_ns";

/// Columns of `puhui_transfers`, in the order [`transfer`] reads them.
pub const TRANSFER_COLUMNS: &str = "id, kind, result, timestamp_ns, pending_id, debit_account_id, \
     credit_account_id, amount_minor, currency, timeout_ms, code, metadata, end_to_end_id, uetr, \
     pending_status, resolved_at_ns, expires_at_ns";

/// A row that does not decode: the database was changed by something else than this store.
pub fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

/// A `u64` amount or balance as stored (bit for bit).
pub fn amount_to_sql(v: u64) -> i64 {
    v as i64
}

/// A stored amount or balance back to `u64`.
pub fn amount_from_sql(v: i64) -> u64 {
    v as u64
}

/// A timestamp as stored; above `i64::MAX` it cannot be (and is refused, never wrapped).
pub fn ts_to_sql(ns: u64) -> Result<i64, StoreError> {
    i64::try_from(ns).map_err(|_| StoreError::Io(format!("timestamp {ns} ns is beyond what is stored")))
}

/// A stored timestamp back to `u64`.
pub fn ts_from_sql(ns: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(ns).map_err(|_| corrupt(what, format!("negative timestamp {ns}")))
}

fn id(s: &str, what: &str) -> Result<Id, StoreError> {
    Id::new(s).ok_or_else(|| corrupt(what, format!("invalid id {s:?}")))
}

fn opt_id(s: Option<&str>, what: &str) -> Result<Option<Id>, StoreError> {
    s.map(|s| id(s, what)).transpose()
}

/// An account from a row with [`ACCOUNT_COLUMNS`].
pub fn account(row: &Row) -> Result<Account, StoreError> {
    let id_text: &str = row.get(0);
    let what = "account row";
    let code: &str = row.get(1);
    let exponent: i16 = row.get(2);
    let exponent = u8::try_from(exponent).map_err(|_| corrupt(what, "exponent"))?;
    let currency = Currency::parse(code, Some(exponent)).map_err(|e| corrupt(what, e))?;
    let flags: i16 = row.get(3);
    let flags =
        u8::try_from(flags).ok().and_then(AccountFlags::from_bits).ok_or_else(|| corrupt(what, "flags"))?;
    let status: i16 = row.get(5);
    let status =
        u8::try_from(status).ok().and_then(AccountStatus::from_u8).ok_or_else(|| corrupt(what, "status"))?;
    let limit: Option<i64> = row.get(4);
    let metadata: Option<Vec<u8>> = row.get(6);
    Ok(Account {
        id: id(id_text, what)?,
        currency,
        flags,
        limit_minor: limit.map(amount_from_sql),
        status,
        metadata: metadata.map(Vec::into_boxed_slice),
        balances: Balances {
            debits_pending: amount_from_sql(row.get(7)),
            debits_posted: amount_from_sql(row.get(8)),
            credits_pending: amount_from_sql(row.get(9)),
            credits_posted: amount_from_sql(row.get(10)),
        },
        timestamp_ns: ts_from_sql(row.get(11), what)?,
    })
}

/// Balances from four `bigint` columns starting at `first`.
pub fn balances(row: &Row, first: usize) -> Balances {
    Balances {
        debits_pending: amount_from_sql(row.get(first)),
        debits_posted: amount_from_sql(row.get(first + 1)),
        credits_pending: amount_from_sql(row.get(first + 2)),
        credits_posted: amount_from_sql(row.get(first + 3)),
    }
}

/// A transfer from a row with [`TRANSFER_COLUMNS`] (starting at column `at`).
pub fn transfer_at(row: &Row, at: usize) -> Result<Transfer, StoreError> {
    let what = "transfer row";
    let kind: i16 = row.get(at + 1);
    let kind =
        u8::try_from(kind).ok().and_then(TransferKind::from_u8).ok_or_else(|| corrupt(what, "kind"))?;
    let result: i16 = row.get(at + 2);
    let result =
        u8::try_from(result).ok().and_then(ResultCode::from_u8).ok_or_else(|| corrupt(what, "result"))?;
    let currency: Option<&str> = row.get(at + 8);
    let currency = currency
        .map(|c| CurrencyCode::new(c).ok_or_else(|| corrupt(what, format!("currency {c:?}"))))
        .transpose()?;
    let code: i64 = row.get(at + 10);
    let code = u32::try_from(code).map_err(|_| corrupt(what, "code"))?;
    let metadata: Option<Vec<u8>> = row.get(at + 11);
    let end_to_end_id: Option<&str> = row.get(at + 12);
    let uetr: Option<Vec<u8>> = row.get(at + 13);
    let uetr =
        uetr.map(|u| <[u8; 16]>::try_from(u.as_slice()).map_err(|_| corrupt(what, "uetr"))).transpose()?;
    let pending_status: Option<i16> = row.get(at + 14);
    let pending_status = pending_status
        .map(|s| match s {
            0 => Ok(PendingStatus::Pending),
            1 => Ok(PendingStatus::Posted),
            2 => Ok(PendingStatus::Voided),
            3 => Ok(PendingStatus::Expired),
            _ => Err(corrupt(what, "pending status")),
        })
        .transpose()?;
    let opt_ts = |column: usize| -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = row.get(column);
        v.map(|v| ts_from_sql(v, what)).transpose()
    };
    let amount: Option<i64> = row.get(at + 7);
    let timeout: Option<i64> = row.get(at + 9);
    Ok(Transfer {
        request: TransferRequest {
            id: id(row.get(at), what)?,
            kind,
            pending_id: opt_id(row.get(at + 4), what)?,
            debit_account_id: opt_id(row.get(at + 5), what)?,
            credit_account_id: opt_id(row.get(at + 6), what)?,
            amount_minor: amount.map(amount_from_sql),
            currency,
            timeout_ms: timeout.map(amount_from_sql),
            code,
            metadata: metadata.map(Vec::into_boxed_slice),
            references: References { end_to_end_id: end_to_end_id.map(Into::into), uetr },
            linked: false,
        },
        timestamp_ns: ts_from_sql(row.get(at + 3), what)?,
        result,
        pending_status,
        resolved_at_ns: opt_ts(at + 15)?,
        expires_at_ns: opt_ts(at + 16)?,
    })
}

/// A transfer from a row with [`TRANSFER_COLUMNS`].
pub fn transfer(row: &Row) -> Result<Transfer, StoreError> {
    transfer_at(row, 0)
}

/// Column arrays for a bulk `INSERT … SELECT * FROM unnest(…)` of transfers.
#[derive(Default)]
pub struct TransferColumns {
    id: Vec<String>,
    kind: Vec<i16>,
    result: Vec<i16>,
    timestamp_ns: Vec<i64>,
    pending_id: Vec<Option<String>>,
    debit: Vec<Option<String>>,
    credit: Vec<Option<String>>,
    amount: Vec<Option<i64>>,
    currency: Vec<Option<String>>,
    timeout_ms: Vec<Option<i64>>,
    code: Vec<i64>,
    metadata: Vec<Option<Vec<u8>>>,
    end_to_end_id: Vec<Option<String>>,
    uetr: Vec<Option<Vec<u8>>>,
    pending_status: Vec<Option<i16>>,
    resolved_at_ns: Vec<Option<i64>>,
    expires_at_ns: Vec<Option<i64>>,
}

/// The bulk insert of [`TransferColumns`].
pub const INSERT_TRANSFERS: &str = "INSERT INTO puhui_transfers (id, kind, result, timestamp_ns, \
     pending_id, debit_account_id, credit_account_id, amount_minor, currency, timeout_ms, code, metadata, \
     end_to_end_id, uetr, pending_status, resolved_at_ns, expires_at_ns) \
     SELECT * FROM unnest($1::text[], $2::int2[], $3::int2[], $4::int8[], $5::text[], $6::text[], \
     $7::text[], $8::int8[], $9::text[], $10::int8[], $11::int8[], $12::bytea[], $13::text[], $14::bytea[], \
     $15::int2[], $16::int8[], $17::int8[])";

impl TransferColumns {
    /// Appends a transfer.
    pub fn push(&mut self, t: &Transfer) -> Result<(), StoreError> {
        let r = &t.request;
        self.id.push(r.id.to_string());
        self.kind.push(r.kind as i16);
        self.result.push(t.result as i16);
        self.timestamp_ns.push(ts_to_sql(t.timestamp_ns)?);
        self.pending_id.push(r.pending_id.as_ref().map(|i| i.to_string()));
        self.debit.push(r.debit_account_id.as_ref().map(|i| i.to_string()));
        self.credit.push(r.credit_account_id.as_ref().map(|i| i.to_string()));
        self.amount.push(r.amount_minor.map(amount_to_sql));
        self.currency.push(r.currency.map(|c| c.as_str().to_string()));
        self.timeout_ms.push(r.timeout_ms.map(amount_to_sql));
        self.code.push(r.code as i64);
        self.metadata.push(r.metadata.as_ref().map(|m| m.to_vec()));
        self.end_to_end_id.push(r.references.end_to_end_id.as_ref().map(|e| e.to_string()));
        self.uetr.push(r.references.uetr.map(|u| u.to_vec()));
        self.pending_status.push(t.pending_status.map(|s| s as i16));
        self.resolved_at_ns.push(t.resolved_at_ns.map(ts_to_sql).transpose()?);
        self.expires_at_ns.push(t.expires_at_ns.map(ts_to_sql).transpose()?);
        Ok(())
    }

    /// How many transfers.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Runs the bulk insert.
    pub fn insert(&self, tx: &mut postgres::Transaction<'_>) -> Result<u64, postgres::Error> {
        tx.execute(
            INSERT_TRANSFERS,
            &[
                &self.id,
                &self.kind,
                &self.result,
                &self.timestamp_ns,
                &self.pending_id,
                &self.debit,
                &self.credit,
                &self.amount,
                &self.currency,
                &self.timeout_ms,
                &self.code,
                &self.metadata,
                &self.end_to_end_id,
                &self.uetr,
                &self.pending_status,
                &self.resolved_at_ns,
                &self.expires_at_ns,
            ],
        )
    }
}

/// Column arrays for a bulk insert of accounts.
#[derive(Default)]
pub struct AccountColumns {
    id: Vec<String>,
    currency: Vec<String>,
    exponent: Vec<i16>,
    flags: Vec<i16>,
    limit_minor: Vec<Option<i64>>,
    status: Vec<i16>,
    metadata: Vec<Option<Vec<u8>>>,
    debits_pending: Vec<i64>,
    debits_posted: Vec<i64>,
    credits_pending: Vec<i64>,
    credits_posted: Vec<i64>,
    timestamp_ns: Vec<i64>,
}

impl AccountColumns {
    /// Appends an account.
    pub fn push(&mut self, a: &Account) -> Result<(), StoreError> {
        self.id.push(a.id.to_string());
        self.currency.push(a.currency.code().as_str().to_string());
        self.exponent.push(a.currency.exponent() as i16);
        self.flags.push(a.flags.bits() as i16);
        self.limit_minor.push(a.limit_minor.map(amount_to_sql));
        self.status.push(a.status as i16);
        self.metadata.push(a.metadata.as_ref().map(|m| m.to_vec()));
        self.debits_pending.push(amount_to_sql(a.balances.debits_pending));
        self.debits_posted.push(amount_to_sql(a.balances.debits_posted));
        self.credits_pending.push(amount_to_sql(a.balances.credits_pending));
        self.credits_posted.push(amount_to_sql(a.balances.credits_posted));
        self.timestamp_ns.push(ts_to_sql(a.timestamp_ns)?);
        Ok(())
    }

    /// How many accounts.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Inserts them.
    pub fn insert(&self, tx: &mut postgres::Transaction<'_>) -> Result<u64, postgres::Error> {
        tx.execute(
            "INSERT INTO puhui_accounts (id, currency, exponent, flags, limit_minor, status, metadata, \
             debits_pending, debits_posted, credits_pending, credits_posted, timestamp_ns) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::int2[], $5::int8[], $6::int2[], \
             $7::bytea[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])",
            &[
                &self.id,
                &self.currency,
                &self.exponent,
                &self.flags,
                &self.limit_minor,
                &self.status,
                &self.metadata,
                &self.debits_pending,
                &self.debits_posted,
                &self.credits_pending,
                &self.credits_posted,
                &self.timestamp_ns,
            ],
        )
    }

    /// Updates the mutable fields (status and balances) of existing accounts.
    pub fn update(&self, tx: &mut postgres::Transaction<'_>) -> Result<u64, postgres::Error> {
        tx.execute(
            "UPDATE puhui_accounts a SET status = u.status, debits_pending = u.dp, debits_posted = u.dpo, \
             credits_pending = u.cp, credits_posted = u.cpo \
             FROM unnest($1::text[], $2::int2[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) \
             AS u(id, status, dp, dpo, cp, cpo) WHERE a.id = u.id",
            &[
                &self.id,
                &self.status,
                &self.debits_pending,
                &self.debits_posted,
                &self.credits_pending,
                &self.credits_posted,
            ],
        )
    }
}
