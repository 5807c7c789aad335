//! API models (JSON shapes) and their conversion to and from the ledger's domain types.
//!
//! Ids are scoped per tenant here: the ledger stores `<tenant>:<client id>` and clients only ever see
//! their own part, so another tenant's object is indistinguishable from a missing one.

use puhui_ledger::{
    Account, AccountFlags, Currency, CurrencyCode, Id, NewAccount, PendingStatus, References, ResultCode,
    Transfer, TransferKind, TransferRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::limits::{CLIENT_ID_BYTES_MAX, METADATA_BYTES_MAX};

/// Length of a tenant id (`t` + 8 characters), which prefixes every stored id.
pub const TENANT_ID_LEN: usize = 9;

/// Turns a client's id into the tenant-scoped ledger id.
pub fn scoped(tenant: &str, client_id: &str, param: &str) -> Result<Id, ApiError> {
    debug_assert_eq!(tenant.len(), TENANT_ID_LEN);
    if client_id.len() > CLIENT_ID_BYTES_MAX || !puhui_ledger::id::is_valid_id(client_id) {
        return Err(ApiError::invalid(
            "invalid_id",
            format!("an id is 1-{CLIENT_ID_BYTES_MAX} characters of A-Z, a-z, 0-9, _ . : -"),
            Some(param),
        ));
    }
    Ok(Id::new(&format!("{tenant}:{client_id}")).expect("prefix + valid id is valid"))
}

/// Scopes an id that comes from a URL path: a malformed one cannot exist, so it is a 404.
pub fn scoped_lookup(tenant: &str, client_id: &str, what: &str) -> Result<Id, ApiError> {
    scoped(tenant, client_id, "id").map_err(|_| ApiError::not_found(what, "id"))
}

/// The client's part of a stored id.
pub fn unscoped(id: &str) -> &str {
    id.get(TENANT_ID_LEN + 1..).unwrap_or(id)
}

fn metadata_bytes(metadata: Option<Map<String, Value>>, param: &str) -> Result<Option<Box<[u8]>>, ApiError> {
    let Some(map) = metadata else { return Ok(None) };
    if map.values().any(loses_precision) {
        return Err(ApiError::invalid(
            "invalid_request",
            "a metadata number is an integer beyond 64 bits or a float beyond 2^53, which would not come \
             back as sent; send it as a string",
            Some(param),
        ));
    }
    let bytes = serde_json::to_vec(&map).expect("a JSON map serialises");
    if bytes.len() > METADATA_BYTES_MAX {
        return Err(ApiError::invalid(
            "metadata_too_large",
            format!("metadata is {} bytes as JSON; the limit is {METADATA_BYTES_MAX}", bytes.len()),
            Some(param),
        ));
    }
    Ok(Some(bytes.into()))
}

/// Whether `value` holds a number that JSON parsing turned into a float that is not exactly what was
/// sent: an integer beyond 64 bits (parsed as the nearest float) or any float of magnitude ≥ 2^53.
fn loses_precision(value: &Value) -> bool {
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(n) => n.as_f64().is_some_and(|f| n.is_f64() && f.abs() >= EXACT_MAX),
        Value::Array(items) => items.iter().any(loses_precision),
        Value::Object(map) => map.values().any(loses_precision),
        _ => false,
    }
}

fn metadata_value(bytes: Option<&[u8]>) -> Option<Value> {
    bytes.and_then(|b| serde_json::from_slice(b).ok())
}

pub(crate) fn format_ns(ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp into nanoseconds since the Unix epoch.
pub fn parse_rfc3339(text: &str, param: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::invalid(
            "invalid_timestamp",
            "expected an RFC 3339 timestamp such as 2026-11-25T23:59:59Z",
            Some(param),
        )
    };
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| bad())
}

// ------------------------------------------------------------------------------------------------
// Accounts

/// `POST /v1/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Your id for the account (1-64 of `[A-Za-z0-9_.:-]`); generated (time-ordered) if absent.
    pub id: Option<String>,
    /// ISO 4217 code, or a custom unit's code (then `exponent` is required).
    pub currency: String,
    /// Minor-unit digits; required for custom units, must match ISO 4217 otherwise.
    pub exponent: Option<u8>,
    /// A wallet: debits may not exceed credits (plus `limit`).
    #[serde(default)]
    pub debits_must_not_exceed_credits: bool,
    /// The mirror image: credits may not exceed debits (plus `limit`).
    #[serde(default)]
    pub credits_must_not_exceed_debits: bool,
    /// Overdraft or credit limit in minor units (needs one of the flags).
    pub limit: Option<u64>,
    /// Your data, a JSON object of at most 4,096 bytes.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

impl CreateAccount {
    /// The ledger request, with the tenant-scoped id.
    pub fn into_domain(
        self,
        tenant: &str,
        generated_id: impl FnOnce() -> String,
    ) -> Result<NewAccount, ApiError> {
        let client_id = self.id.unwrap_or_else(generated_id);
        let id = scoped(tenant, &client_id, "id")?;
        let currency = Currency::parse(&self.currency, self.exponent)
            .map_err(|e| ApiError::invalid("invalid_currency", e.to_string(), Some("currency")))?;
        Ok(NewAccount {
            id,
            currency,
            flags: AccountFlags {
                debits_must_not_exceed_credits: self.debits_must_not_exceed_credits,
                credits_must_not_exceed_debits: self.credits_must_not_exceed_debits,
            },
            limit_minor: checked_amount(self.limit, "limit")?,
            metadata: metadata_bytes(self.metadata, "metadata")?,
        })
    }
}

/// An account's balances in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalancesObject {
    /// Held debits.
    pub debits_pending: u64,
    /// Posted debits.
    pub debits_posted: u64,
    /// Held credits.
    pub credits_pending: u64,
    /// Posted credits.
    pub credits_posted: u64,
    /// credits_posted − debits_posted.
    #[schema(value_type = i64)]
    pub net_posted: i128,
    /// net_posted − debits_pending: what a wallet can still spend (before any overdraft).
    #[schema(value_type = i64)]
    pub available: i128,
}

impl From<puhui_ledger::Balances> for BalancesObject {
    fn from(b: puhui_ledger::Balances) -> Self {
        BalancesObject {
            debits_pending: b.debits_pending,
            debits_posted: b.debits_posted,
            credits_pending: b.credits_pending,
            credits_posted: b.credits_posted,
            net_posted: b.net_posted(),
            available: b.available(),
        }
    }
}

/// An account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountObject {
    /// Always `account`.
    pub object: &'static str,
    /// Your id.
    pub id: String,
    /// Currency or unit code.
    pub currency: String,
    /// Minor-unit digits.
    pub exponent: u8,
    /// Floor flag.
    pub debits_must_not_exceed_credits: bool,
    /// Ceiling flag.
    pub credits_must_not_exceed_debits: bool,
    /// Overdraft or credit limit.
    pub limit: Option<u64>,
    /// `open`, `frozen` or `closed`.
    pub status: &'static str,
    /// Your data.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Current balances.
    pub balances: BalancesObject,
    /// Creation time (RFC 3339, nanoseconds).
    pub created_at: String,
}

impl From<Account> for AccountObject {
    fn from(a: Account) -> Self {
        AccountObject {
            object: "account",
            id: unscoped(&a.id).to_string(),
            currency: a.currency.code().as_str().to_string(),
            exponent: a.currency.exponent(),
            debits_must_not_exceed_credits: a.flags.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits: a.flags.credits_must_not_exceed_debits,
            limit: a.limit_minor,
            status: a.status.as_str(),
            metadata: metadata_value(a.metadata.as_deref()),
            balances: a.balances.into(),
            created_at: format_ns(a.timestamp_ns),
        }
    }
}

/// `GET /v1/accounts/{id}/balance` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceAtObject {
    /// Always `balance`.
    pub object: &'static str,
    /// The account.
    pub account_id: String,
    /// The moment asked for (RFC 3339).
    pub at: String,
    /// Balances after every event up to and including `at`.
    pub balances: BalancesObject,
}

/// `?at=` of the balance endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    /// RFC 3339 timestamp; default now.
    pub at: Option<String>,
}

// ------------------------------------------------------------------------------------------------
// Transfers

/// What a transfer does.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransferType {
    /// Moves the amount at once.
    #[default]
    Single,
    /// Holds the amount until posted, voided or expired.
    Pending,
    /// Posts a pending transfer (fully or partly).
    PostPending,
    /// Voids a pending transfer.
    VoidPending,
}

impl From<TransferType> for TransferKind {
    fn from(t: TransferType) -> Self {
        match t {
            TransferType::Single => TransferKind::Single,
            TransferType::Pending => TransferKind::Pending,
            TransferType::PostPending => TransferKind::PostPending,
            TransferType::VoidPending => TransferKind::VoidPending,
        }
    }
}

impl From<TransferKind> for TransferType {
    fn from(k: TransferKind) -> Self {
        match k {
            TransferKind::Single => TransferType::Single,
            TransferKind::Pending => TransferType::Pending,
            TransferKind::PostPending => TransferType::PostPending,
            TransferKind::VoidPending => TransferType::VoidPending,
        }
    }
}

/// `POST /v1/transfers` (and one item of a batch).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransfer {
    /// Your id (1-64 of `[A-Za-z0-9_.:-]`): a permanent idempotency key. Generated if absent (then
    /// derived from the `Idempotency-Key` header when there is one, so retries stay safe).
    pub id: Option<String>,
    /// `single` (default), `pending`, `post_pending` or `void_pending`.
    #[serde(rename = "type", default)]
    pub kind: TransferType,
    /// Account debited (required for single and pending).
    pub debit_account_id: Option<String>,
    /// Account credited (required for single and pending).
    pub credit_account_id: Option<String>,
    /// Integer minor units (a float or a string is refused).
    pub amount: Option<u64>,
    /// Must equal both accounts' currency.
    pub currency: Option<String>,
    /// For post_pending / void_pending: the pending transfer.
    pub pending_id: Option<String>,
    /// For pending: the hold expires after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Business reason code.
    #[serde(default)]
    pub code: u32,
    /// Your data, a JSON object of at most 4,096 bytes.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// ISO 20022 EndToEndId (1-35 characters).
    pub end_to_end_id: Option<String>,
    /// ISO 20022 UETR (a UUID).
    pub uetr: Option<String>,
    /// Batch only: link this transfer to the next; the chain succeeds or fails as one.
    #[serde(default)]
    pub linked: bool,
    /// Device, network, channel, customer: when present, risk control decides the transfer before
    /// it is posted (decline: 422 `risk_declined`; review: posted as a hold and queued).
    pub risk_context: Option<crate::risk::RiskContext>,
}

/// `amount` if it is at most [`crate::limits::AMOUNT_MINOR_MAX`], else 400 `amount_too_large`.
pub fn checked_amount(amount: Option<u64>, param: &str) -> Result<Option<u64>, ApiError> {
    match amount {
        Some(a) if a > crate::limits::AMOUNT_MINOR_MAX => Err(ApiError::invalid(
            "amount_too_large",
            format!(
                "{param} must be at most {} minor units (2^63 - 1); this one is {a}",
                crate::limits::AMOUNT_MINOR_MAX
            ),
            Some(param),
        )),
        other => Ok(other),
    }
}

fn parse_uuid(text: &str, param: &str) -> Result<[u8; 16], ApiError> {
    let bad = || ApiError::invalid("invalid_request", "uetr must be a UUID", Some(param));
    let dashes_at = [8, 13, 18, 23];
    let well_formed = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| {
            if dashes_at.contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if !well_formed {
        return Err(bad());
    }
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl CreateTransfer {
    /// The ledger request, with tenant-scoped ids. `prefix` names the field path in errors.
    pub fn into_domain(
        self,
        tenant: &str,
        prefix: &str,
        generated_id: impl FnOnce() -> String,
    ) -> Result<TransferRequest, ApiError> {
        let p = |field: &str| format!("{prefix}{field}");
        let client_id = self.id.unwrap_or_else(generated_id);
        let id = scoped(tenant, &client_id, &p("id"))?;
        let account = |v: Option<String>, field: &str| -> Result<Option<Id>, ApiError> {
            v.map(|s| scoped(tenant, &s, &p(field))).transpose()
        };
        let currency = match self.currency {
            Some(c) => Some(CurrencyCode::new(&c).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_currency",
                    "a currency code is 1-12 of A-Z, 0-9, _",
                    Some(&p("currency")),
                )
            })?),
            None => None,
        };
        if let Some(e2e) = &self.end_to_end_id {
            if e2e.is_empty() || e2e.len() > puhui_ledger::END_TO_END_ID_BYTES_MAX {
                return Err(ApiError::from_result(ResultCode::ReferenceInvalid, Some(&p("end_to_end_id"))));
            }
        }
        let uetr = self.uetr.as_deref().map(|u| parse_uuid(u, &p("uetr"))).transpose()?;
        Ok(TransferRequest {
            id,
            kind: self.kind.into(),
            pending_id: account(self.pending_id, "pending_id")?,
            debit_account_id: account(self.debit_account_id, "debit_account_id")?,
            credit_account_id: account(self.credit_account_id, "credit_account_id")?,
            amount_minor: checked_amount(self.amount, &p("amount"))?,
            currency,
            timeout_ms: self.timeout_ms,
            code: self.code,
            metadata: metadata_bytes(self.metadata, &p("metadata"))?,
            references: References { end_to_end_id: self.end_to_end_id.map(Into::into), uetr },
            linked: self.linked,
        })
    }
}

/// A transfer as recorded (failed ones too: their id stays taken).
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferObject {
    /// Always `transfer`.
    pub object: &'static str,
    /// Your id.
    pub id: String,
    /// What it does.
    #[serde(rename = "type")]
    pub kind: TransferType,
    /// `ok`, or the result code it failed with.
    pub result: &'static str,
    /// For pending transfers: `pending`, `posted`, `voided` or `expired`.
    pub pending_status: Option<&'static str>,
    /// For post/void: the pending transfer.
    pub pending_id: Option<String>,
    /// Account debited.
    pub debit_account_id: Option<String>,
    /// Account credited.
    pub credit_account_id: Option<String>,
    /// Minor units (for a post: the amount posted).
    pub amount: Option<u64>,
    /// Currency code.
    pub currency: Option<String>,
    /// Business reason code.
    pub code: u32,
    /// Hold timeout.
    pub timeout_ms: Option<u64>,
    /// Your data.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// ISO 20022 EndToEndId.
    pub end_to_end_id: Option<String>,
    /// ISO 20022 UETR.
    pub uetr: Option<String>,
    /// Ledger time (RFC 3339, nanoseconds): strictly increasing across the ledger.
    pub created_at: String,
    /// The same, as nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// When a hold expires (or expired).
    pub expires_at: Option<String>,
    /// When a hold was posted, voided or expired.
    pub resolved_at: Option<String>,
    /// When risk control decided this request: `approve` or `review` (a declined one is not posted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_outcome: Option<&'static str>,
}

impl From<Transfer> for TransferObject {
    fn from(t: Transfer) -> Self {
        let r = t.request;
        let text = |id: Option<Id>| id.map(|i| unscoped(&i).to_string());
        TransferObject {
            object: "transfer",
            id: unscoped(&r.id).to_string(),
            kind: r.kind.into(),
            result: t.result.as_str(),
            pending_status: t.pending_status.map(PendingStatus::as_str),
            pending_id: text(r.pending_id),
            debit_account_id: text(r.debit_account_id),
            credit_account_id: text(r.credit_account_id),
            amount: r.amount_minor,
            currency: r.currency.map(|c| c.as_str().to_string()),
            code: r.code,
            timeout_ms: r.timeout_ms,
            metadata: metadata_value(r.metadata.as_deref()),
            end_to_end_id: r.references.end_to_end_id.map(Into::into),
            uetr: r.references.uetr.as_ref().map(format_uuid),
            created_at: format_ns(t.timestamp_ns),
            timestamp_ns: t.timestamp_ns,
            expires_at: t.expires_at_ns.map(format_ns),
            resolved_at: t.resolved_at_ns.map(format_ns),
            risk_outcome: None,
        }
    }
}

/// `POST /v1/transfers/{id}/post`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostPending {
    /// Id of the posting transfer; default `<pending id>.post` (so posting twice is harmless), or
    /// `<pending id>.post.2`, `.3`, … after refused attempts with other amounts.
    pub id: Option<String>,
    /// Amount to post (at most the hold); default the whole hold. The rest is released.
    pub amount: Option<u64>,
}

/// `POST /v1/transfers/{id}/void`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidPending {
    /// Id of the voiding transfer; default `<pending id>.void`.
    pub id: Option<String>,
}

/// `POST /v1/transfers/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransferBatch {
    /// Up to 8,189 transfers; linked chains as in the ledger.
    pub transfers: Vec<CreateTransfer>,
}

/// One item's outcome in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// Position in the request.
    pub index: usize,
    /// The transfer's id.
    pub id: String,
    /// `ok`, `exists`, or the result code that refused it.
    pub result: &'static str,
    /// Ledger timestamp (nanoseconds) if the transfer is recorded.
    pub timestamp_ns: Option<u64>,
    /// `risk_declined`: the reason codes of the rules that declined it (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

/// `POST /v1/transfers/batch` answer: one result per transfer, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResultObject {
    /// Always `batch_result`.
    pub object: &'static str,
    /// How many were applied (`ok`).
    pub ok: usize,
    /// Results in request order.
    pub results: Vec<BatchItemResult>,
}

/// Query of list endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1-100, default 10.
    pub limit: Option<String>,
    /// A transfer id: the page after it.
    pub starting_after: Option<String>,
    /// A transfer id: the page before it.
    pub ending_before: Option<String>,
}

/// `{"object":"list","data":[…],"has_more":…,"url":…}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferList {
    /// Always `list`.
    pub object: &'static str,
    /// The page, oldest first.
    pub data: Vec<TransferObject>,
    /// Whether more lie beyond this page in the direction of travel.
    pub has_more: bool,
    /// The list's URL.
    pub url: String,
}

// ------------------------------------------------------------------------------------------------
// Tenants

/// `POST /v1/tenants` (admin token).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// A name for people.
    pub name: String,
}

/// A tenant with a new API key (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    /// Always `tenant`.
    pub object: &'static str,
    /// Tenant id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The API key: shown only now, stored only as a hash.
    pub api_key: String,
    /// The key's id (for revoking).
    pub key_id: String,
}

/// A new API key (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// Always `api_key`.
    pub object: &'static str,
    /// The key's id.
    pub key_id: String,
    /// The key: shown only now.
    pub api_key: String,
}

/// An API key's public facts.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyObject {
    /// Always `api_key`.
    pub object: &'static str,
    /// The key's id.
    pub key_id: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}
