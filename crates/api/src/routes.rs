//! Handlers. Each turns JSON into a ledger request, waits until the ledger has made it durable, and
//! answers with the object or the error envelope.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use puhui_ledger::{EventResult, Id, ResultCode, StatusAction, TransferKind, TransferRequest};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorEnvelope};
use crate::idempotency::IdempotencyKey;
use crate::limits::{BATCH_TRANSFERS_MAX, BODY_BYTES_MAX, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::models::*;
use crate::tenants::{Principal, RegistryError};
use crate::AppState;

/// 413 with the envelope.
pub fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "body_too_large",
        format!("the request body is larger than {BODY_BYTES_MAX} bytes"),
    )
}

/// Reads a request body of at most [`BODY_BYTES_MAX`]. A larger one is read to its end and dropped
/// (up to [`DRAIN_BYTES_MAX`]) before the 413 goes out, so the client, still sending, reads the
/// answer instead of a reset connection.
pub async fn read_body(body: axum::body::Body) -> Result<Bytes, ApiError> {
    let limit = std::time::Duration::from_millis(crate::limits::BODY_READ_TIMEOUT_MS);
    tokio::time::timeout(limit, read_body_untimed(body)).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!("the request body did not arrive within {} ms", crate::limits::BODY_READ_TIMEOUT_MS),
        )
    })?
}

async fn read_body_untimed(body: axum::body::Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(body_too_large()) };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= BODY_BYTES_MAX {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_BYTES_MAX {
                break;
            }
        }
    }
    if seen > BODY_BYTES_MAX {
        return Err(body_too_large());
    }
    Ok(Bytes::from(buf))
}

/// Most bytes of an oversized body read (and dropped) before answering 413.
pub const DRAIN_BYTES_MAX: usize = 64 << 20;

/// A JSON body parsed into `T`, with errors in the envelope (the field path as `param`).
pub struct ApiJson<T>(pub T);

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner();
    let param = (path != "." && !path.is_empty()).then_some(path.as_str());
    let message = inner.to_string();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid("invalid_json", format!("the body is not valid JSON: {message}"), None);
    }
    if message.starts_with("unknown field") {
        return ApiError::invalid("parameter_unknown", message, param);
    }
    let code = if path.ends_with("amount") || path.ends_with("limit") {
        "invalid_amount"
    } else {
        "invalid_request"
    };
    let message = if code == "invalid_amount" {
        format!("amounts are integers of minor units (no floats, no strings): {message}")
    } else {
        message
    };
    ApiError::invalid(code, message, param)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object with named fields (serde would also read a struct from an array of
    // its fields in order, which no client means).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("invalid_json", "the body must be a JSON object ({...})", None));
    }
    // The common case at full speed; only a body that fails is parsed again, tracking the path of
    // the field at fault for the error's `param` (the same input fails the same way).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| {
        ApiError::invalid("invalid_json", format!("trailing data after the JSON body: {e}"), None)
    })?;
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body()).await?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

/// A path parameter; one that cannot be read (e.g. not UTF-8) names nothing that exists: a 404.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state).await.map(|Path(value)| ApiPath(value)).map_err(|_| {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", "no such object")
        })
    }
}

/// Like [`ApiJson`], but an empty body means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body()).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        Ok(OptionalJson(parse_json(&bytes)?))
    }
}

type Idem = Option<Extension<IdempotencyKey>>;

fn client_id_source<'a>(app: &'a AppState, idem: &'a Idem, kind: &'a str) -> impl FnOnce() -> String + 'a {
    move || match idem {
        Some(Extension(key)) => key.derived_id(kind),
        None => app.store.new_id().to_string(),
    }
}

fn record_results(results: &[EventResult]) {
    for r in results {
        metrics::counter!("puhui_transfers_total", "result" => r.result.as_str()).increment(1);
    }
}

fn ledger_error(code: ResultCode) -> ApiError {
    let param = match code {
        ResultCode::AccountNotFound => Some("account_id"),
        ResultCode::PendingNotFound => Some("pending_id"),
        ResultCode::AmountMustBePositive | ResultCode::PostAmountExceedsPending => Some("amount"),
        ResultCode::CurrencyMismatch | ResultCode::CurrencyRequired => Some("currency"),
        ResultCode::MetadataTooLarge => Some("metadata"),
        ResultCode::TimeoutTooLarge | ResultCode::TimeoutReservedForPending => Some("timeout_ms"),
        _ => None,
    };
    ApiError::from_result(code, param)
}

// ------------------------------------------------------------------------------------------------
// Accounts

/// Create an account.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = CreateAccount,
    params(("Idempotency-Key" = Option<String>, Header, description = "Stripe-style idempotency key")),
    responses((status = 201, body = AccountObject, description = "created"),
              (status = 200, body = AccountObject, description = "the same account existed (same fields)"),
              (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn create_account(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    idem: Idem,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<Response, ApiError> {
    let new = body.into_domain(&principal.tenant, client_id_source(&app, &idem, "account"))?;
    let id = new.id.clone();
    let result = app.create_accounts(vec![new]).await?[0];
    let status = match result.result {
        ResultCode::Ok => StatusCode::CREATED,
        ResultCode::Exists => StatusCode::OK,
        other => return Err(ledger_error(other)),
    };
    let account = app.account(id).await?.ok_or_else(internal)?;
    Ok((status, Json(AccountObject::from(account))).into_response())
}

fn internal() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "internal_error",
        "the object vanished; retry",
    )
}

/// Get an account with its balances.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountObject), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_account(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AccountObject>, ApiError> {
    let id = scoped_lookup(&principal.tenant, &id, "account")?;
    let account = app.account(id).await?.ok_or_else(|| ApiError::not_found("account", "id"))?;
    Ok(Json(account.into()))
}

fn page_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "invalid_request",
                format!("limit must be an integer from 1 to {PAGE_LIMIT_MAX}"),
                Some("limit"),
            )),
        },
    }
}

/// List an account's transfers, oldest first.
#[utoipa::path(get, path = "/v1/accounts/{id}/transfers", tag = "accounts",
    params(("id" = String, Path, description = "account id"), ListQuery),
    responses((status = 200, body = TransferList), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn list_account_transfers(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(client_id): ApiPath<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TransferList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), None))?;
    let limit = page_limit(query.limit.as_deref())?;
    if query.starting_after.is_some() && query.ending_before.is_some() {
        return Err(ApiError::invalid(
            "invalid_request",
            "give starting_after or ending_before, not both",
            Some("ending_before"),
        ));
    }
    let tenant = &principal.tenant;
    let id = scoped_lookup(tenant, &client_id, "account")?;
    let cursor = |c: Option<String>, param: &str| -> Result<Option<Id>, ApiError> {
        c.map(|c| {
            scoped(tenant, &c, param)
                .map_err(|_| ApiError::invalid("invalid_cursor", "no such transfer", Some(param)))
        })
        .transpose()
    };
    let after = cursor(query.starting_after, "starting_after")?;
    let before = cursor(query.ending_before, "ending_before")?;
    let param = if before.is_some() { "ending_before" } else { "starting_after" };
    let page = app.account_transfers(id, limit, after, before).await?.map_err(|e| match e {
        puhui_store::StoreError::AccountNotFound => ApiError::not_found("account", "id"),
        puhui_store::StoreError::CursorNotFound => {
            ApiError::invalid("invalid_cursor", "the cursor is not a transfer of this account", Some(param))
        }
        other => ApiError::from(other),
    })?;
    Ok(Json(TransferList {
        object: "list",
        data: page.0.into_iter().map(TransferObject::from).collect(),
        has_more: page.1,
        url: format!("/v1/accounts/{client_id}/transfers"),
    }))
}

/// An account's balances at a moment (default now).
#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts",
    params(("id" = String, Path, description = "account id"), BalanceQuery),
    responses((status = 200, body = BalanceAtObject), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_balance(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(client_id): ApiPath<String>,
    query: Result<Query<BalanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BalanceAtObject>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), None))?;
    let id = scoped_lookup(&principal.tenant, &client_id, "account")?;
    let at_ns = match &query.at {
        Some(text) => parse_rfc3339(text, "at")?,
        None => u64::MAX,
    };
    let balances = app.balance_at(id, at_ns).await?.map_err(|e| match e {
        puhui_store::StoreError::AccountNotFound => ApiError::not_found("account", "id"),
        other => ApiError::from(other),
    })?;
    Ok(Json(BalanceAtObject {
        object: "balance",
        account_id: client_id,
        at: query.at.unwrap_or_else(|| "now".into()),
        balances: balances.into(),
    }))
}

async fn change_status(
    app: Arc<AppState>,
    principal: Principal,
    client_id: String,
    action: StatusAction,
) -> Result<Json<AccountObject>, ApiError> {
    let id = scoped_lookup(&principal.tenant, &client_id, "account")?;
    let result = app.set_status(id.clone(), action).await?;
    match result.result {
        ResultCode::Ok => {}
        ResultCode::AccountNotFound => return Err(ApiError::not_found("account", "id")),
        other => return Err(ledger_error(other)),
    }
    let account = app.account(id).await?.ok_or_else(internal)?;
    Ok(Json(account.into()))
}

/// Freeze an account: it refuses new transfers and posts (holds can still be voided).
#[utoipa::path(post, path = "/v1/accounts/{id}/freeze", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn freeze_account(
    State(app): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AccountObject>, ApiError> {
    change_status(app, p, id, StatusAction::Freeze).await
}

/// Unfreeze an account.
#[utoipa::path(post, path = "/v1/accounts/{id}/unfreeze", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn unfreeze_account(
    State(app): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AccountObject>, ApiError> {
    change_status(app, p, id, StatusAction::Unfreeze).await
}

/// Close an account (needs a zero balance and no holds).
#[utoipa::path(post, path = "/v1/accounts/{id}/close", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn close_account(
    State(app): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AccountObject>, ApiError> {
    change_status(app, p, id, StatusAction::Close).await
}

// ------------------------------------------------------------------------------------------------
// Transfers

/// Applies one transfer and answers with it (201 new, 200 existed, or the ledger's error).
pub(crate) async fn create_one(app: &Arc<AppState>, request: TransferRequest) -> Result<Response, ApiError> {
    let (status, object) = create_one_object(app, request, None).await?;
    Ok((status, Json(object)).into_response())
}

/// Applies one transfer, under a cross-node lock's `fence` if its id is locked without a decision
/// ([`AppState::create_transfers_fenced`]), and answers with it.
async fn create_one_object(
    app: &Arc<AppState>,
    request: TransferRequest,
    fence: Option<puhui_store_pg::Fence>,
) -> Result<(StatusCode, TransferObject), ApiError> {
    // A new single-phase transfer is fully described by its request and timestamp: answer from
    // those instead of reading the ledger back (which would wait for the next group commit).
    let results = app.create_transfers_fenced(vec![request.clone()], fence).await?;
    posted_object(app, request, results).await
}

/// The answer to a transfer `request` the ledger has applied with `results`.
async fn posted_object(
    app: &Arc<AppState>,
    request: TransferRequest,
    results: Vec<EventResult>,
) -> Result<(StatusCode, TransferObject), ApiError> {
    record_results(&results);
    let status = match results[0].result {
        ResultCode::Ok => StatusCode::CREATED,
        ResultCode::Exists => StatusCode::OK,
        other => return Err(ledger_error(other)),
    };
    let transfer = match request {
        request if status == StatusCode::CREATED && request.kind == TransferKind::Single => {
            puhui_ledger::Transfer {
                request,
                timestamp_ns: results[0].timestamp_ns,
                result: ResultCode::Ok,
                pending_status: None,
                resolved_at_ns: None,
                expires_at_ns: None,
            }
        }
        request => app.transfer(request.id).await?.ok_or_else(internal)?,
    };
    Ok((status, TransferObject::from(transfer)))
}

/// What an inline decision gives the transfer: the outcome (with its review, to queue once the hold
/// is recorded, when it is review), or `None` if the transfer is not decided.
type Inline = Option<(puhui_risk::Outcome, Option<crate::risk::ReviewObject>)>;

/// Decides a transfer that came with a risk context: `Err` if declined; otherwise the outcome, with
/// the request turned into a review hold when the outcome is review.
async fn decide_inline(
    app: &Arc<AppState>,
    tenant: &str,
    request: &mut TransferRequest,
    context: crate::risk::RiskContext,
    fence: Option<puhui_store_pg::Fence>,
) -> Result<Inline, ApiError> {
    let Some(risk) = app.risk.as_ref() else { return Ok(None) };
    match prepare_inline(app, tenant, request, context, PayerBalance::Now).await? {
        Prepared::Answered(answer) => Ok(answer),
        Prepared::ToDecide(event) => {
            let source = puhui_risk::DecisionSource::Transfer;
            let item =
                crate::risk::ToDecide { id: request.id.to_string(), source, event, record: true, fence };
            let decided = risk.decide_queued(item).await;
            act_on_decision(app, request, decided).await
        }
    }
}

/// What the deciding thread did with a transfer after its decision ([`decide_and_post`]).
enum AfterDecision {
    /// Not posted there (declined, review, or the decision failed): the decision and the request.
    Decided(Box<(crate::risk::DecisionResult, TransferRequest)>),
    /// Approved and posted behind its decision record: the request as posted and the ledger's results.
    Posted(TransferRequest, Vec<EventResult>),
    /// Approved, and the posting failed.
    Failed(puhui_store::StoreError),
    /// Not decided: the committer found the controller taken; the decider thread decides it.
    Busy(Box<(crate::risk::ToDecide, TransferRequest)>),
}

/// [`decide_inline`] for `POST /v1/transfers` on the embedded store: decided on the committer thread
/// in its group commit (features in memory; [`decide_on_committer`]) or on the decider thread
/// (shared features, or the controller busy; [`decide_on_decider`]); an approved transfer is posted
/// right behind its decision record, and `Some` of the ledger's results comes back with
/// the outcome; otherwise the request goes on as after [`decide_inline`] (on PostgreSQL records
/// and postings have different committers: the decision is made durable first). Gives the request
/// back (as it is to be posted, or as it was posted).
async fn decide_and_post(
    app: &Arc<AppState>,
    tenant: &str,
    mut request: TransferRequest,
    context: crate::risk::RiskContext,
    fence: Option<puhui_store_pg::Fence>,
) -> Result<(TransferRequest, Inline, Option<Vec<EventResult>>), ApiError> {
    let Some(risk) = app.risk.as_ref() else { return Ok((request, None, None)) };
    if app.store.is_postgres() {
        let inline = decide_inline(app, tenant, &mut request, context, fence).await?;
        return Ok((request, inline, None));
    }
    // Decided on the committer, the payer's balance is read there (`decide_on_committer`).
    let balance = match risk.decides_on_committer() {
        true => PayerBalance::OnCommitter,
        false => PayerBalance::Now,
    };
    let event = match prepare_inline(app, tenant, &mut request, context, balance).await? {
        Prepared::Answered(answer) => return Ok((request, answer, None)),
        Prepared::ToDecide(event) => event,
    };
    let item = crate::risk::ToDecide {
        id: request.id.to_string(),
        source: puhui_risk::DecisionSource::Transfer,
        event,
        record: true,
        fence,
    };
    let stopped = || ApiError::from(puhui_store::StoreError::Unavailable("risk control stopped".into()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    if risk.decides_on_committer() {
        let job = decide_on_committer(Arc::clone(risk), risk.records_queued(), item, request, tx);
        app.store.submit_deferred(job)?;
    } else {
        decide_on_decider(risk, &app.store, item, request, tx);
    }
    let after = match rx.await.map_err(|_| stopped())? {
        AfterDecision::Busy(busy) => {
            // The committer found the controller taken, or a record queued behind the job (the
            // decider deciding a batch): the decider decides it, in order.
            metrics::counter!("puhui_risk_committer_found_busy_total").increment(1);
            let (item, request) = *busy;
            let (tx, rx) = tokio::sync::oneshot::channel();
            decide_on_decider(risk, &app.store, item, request, tx);
            rx.await.map_err(|_| stopped())?
        }
        after => after,
    };
    match after {
        AfterDecision::Decided(undecided) => {
            let (decided, mut request) = *undecided;
            let inline = act_on_decision(app, &mut request, decided).await?;
            Ok((request, inline, None))
        }
        AfterDecision::Posted(posted, results) => {
            Ok((posted, Some((puhui_risk::Outcome::Approve, None)), Some(results)))
        }
        AfterDecision::Failed(e) => Err(e.into()),
        AfterDecision::Busy(_) => Err(stopped()),
    }
}

/// The job that decides `item` on the committer thread ([`crate::risk::RiskService::decide_deferred`])
/// and has the committer journal its record and, if approved, post `to_post` right behind it, in
/// the same group; the answer goes to `tx` (`Busy` with the item if it cannot be decided there in
/// order: [`crate::risk::RiskService::decide_deferred`]). `queued_before`: the records queued when
/// the job is.
fn decide_on_committer(
    risk: Arc<crate::risk::RiskService>,
    queued_before: u64,
    item: crate::risk::ToDecide,
    to_post: TransferRequest,
    tx: tokio::sync::oneshot::Sender<AfterDecision>,
) -> puhui_store::DeferredJob {
    Box::new(move |ledger: &puhui_ledger::Ledger| {
        let mut item = item;
        // The payer's balance as of this place in the journal's order (every earlier transfer
        // applied), if a ruleset reads it: exact, and a read of memory already locked, where a read
        // from the request's thread waits for the group commit's lock (30 % fewer transfers/s).
        if item.event.payer_balance_minor.is_none() && risk.reads_payer_balance() {
            item.event.payer_balance_minor = to_post
                .debit_account_id
                .as_ref()
                .and_then(|payer| ledger.balances(payer.as_str()))
                .map(|b| b.available_saturating_i64());
        }
        let nothing = || puhui_store::Deferred {
            records: Vec::new(),
            records_reply: Box::new(|_| {}),
            transfers: None,
        };
        let (decided, stashed) = match risk.decide_deferred(item, queued_before) {
            Ok(decided) => decided,
            Err(item) => {
                let _ = tx.send(AfterDecision::Busy(Box::new((item, to_post))));
                return nothing();
            }
        };
        let Some((record, records_reply)) = stashed else {
            // Not decided (an error before the record): nothing to journal.
            let _ = tx.send(AfterDecision::Decided(Box::new((decided, to_post))));
            return nothing();
        };
        if !matches!(&decided, Ok((d, _)) if d.outcome() == puhui_risk::Outcome::Approve) {
            // The request acts on the decision once its record is durable (the receipt inside).
            let _ = tx.send(AfterDecision::Decided(Box::new((decided, to_post))));
            return puhui_store::Deferred { records: vec![record], records_reply, transfers: None };
        }
        let posted = to_post.clone();
        puhui_store::Deferred {
            records: vec![record],
            records_reply,
            transfers: Some((
                vec![to_post],
                Box::new(move |r| {
                    let _ = tx.send(match r {
                        Ok(results) => AfterDecision::Posted(posted, results),
                        Err(e) => AfterDecision::Failed(e),
                    });
                }),
            )),
        }
    })
}

/// Hands `item` to the decider thread ([`crate::risk::RiskService::decide_then`]); an approved
/// transfer is queued for posting there, right behind its decision record. The answer goes to `tx`.
fn decide_on_decider(
    risk: &Arc<crate::risk::RiskService>,
    store: &crate::Backend,
    item: crate::risk::ToDecide,
    to_post: TransferRequest,
    tx: tokio::sync::oneshot::Sender<AfterDecision>,
) {
    let store = store.clone();
    risk.decide_then(
        item,
        Box::new(move |decided| {
            if !matches!(&decided, Ok((d, _)) if d.outcome() == puhui_risk::Outcome::Approve) {
                let _ = tx.send(AfterDecision::Decided(Box::new((decided, to_post))));
                return;
            }
            // The sender is shared with the reply: whichever of the two runs answers.
            let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
            fn answer(
                tx: &std::sync::Mutex<Option<tokio::sync::oneshot::Sender<AfterDecision>>>,
                after: AfterDecision,
            ) {
                if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(after);
                }
            }
            let replied = Arc::clone(&tx);
            let queued = store.submit_transfers(
                vec![to_post.clone()],
                Box::new(move |r| {
                    answer(
                        &replied,
                        match r {
                            Ok(results) => AfterDecision::Posted(to_post, results),
                            Err(e) => AfterDecision::Failed(e),
                        },
                    )
                }),
            );
            if let Err(e) = queued {
                answer(&tx, AfterDecision::Failed(e));
            }
        }),
    );
}

/// A transfer with a risk context before its decision: answered already (a retry, or not a kind
/// that is decided), or the event to decide.
enum Prepared {
    Answered(Inline),
    ToDecide(puhui_risk::records::EventRecord),
}

/// Where a transfer's decision gets the payer's balance, when a ruleset reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PayerBalance {
    /// Read from the ledger now, before the decision is handed over.
    Now,
    /// Read on the committer thread, right before the decision there (`decide_on_committer`).
    OnCommitter,
}

/// Everything before an inline decision: a retry of a recorded transfer is answered (and turned
/// into a review hold if it was one), otherwise the risk context becomes the event to decide.
async fn prepare_inline(
    app: &Arc<AppState>,
    tenant: &str,
    request: &mut TransferRequest,
    context: crate::risk::RiskContext,
    balance: PayerBalance,
) -> Result<Prepared, ApiError> {
    let Some(risk) = app.risk.as_ref() else { return Ok(Prepared::Answered(None)) };
    if !matches!(request.kind, TransferKind::Single | TransferKind::Pending) {
        return Ok(Prepared::Answered(None));
    }
    // A retry of a recorded transfer is answered by the ledger, not decided again. If risk control
    // had turned it into a review hold, the retry is turned the same way so that it matches.
    // Recent decisions are in the risk service's memory, so most retries are recognised without
    // touching the ledger; otherwise the ledger is asked, but not waited for during a group commit
    // (a retry of an old transfer arriving just then is decided again, and the ledger answers it).
    if let Some(previous) = risk.decision(request.id.as_str()) {
        if previous.source != "transfer" {
            // The id names a standalone decision (`POST /v1/decisions`): deciding the transfer
            // under it would replace that decision's record.
            return Err(crate::risk::decision_id_conflict(
                "this id names a decision of another event (POST /v1/decisions); a transfer with a risk \
                 context needs an id of its own",
            ));
        }
        if let Some(answer) = declined_before(risk, request, &previous) {
            return Err(answer);
        }
        if previous.source == "transfer" && previous.outcome != "decline" {
            // The decision holds for the payment it saw only: another one under the id (other
            // accounts, amount or currency) is the ledger's conflict, also when the first was
            // never posted (else a payment approved small could be posted large).
            let event = risk.decision_record(request.id.as_str()).map(|r| r.event);
            if let Some(code) = event.as_ref().and_then(|event| other_payment(request, event)) {
                return Err(ledger_error(code));
            }
            let outcome = if previous.outcome == "review" {
                into_review_hold(request);
                puhui_risk::Outcome::Review
            } else {
                puhui_risk::Outcome::Approve
            };
            // Answered with the earlier decision. A review is queued again (the hold may be
            // recorded only now, e.g. after a 503), within the queue's bounds: a full queue is
            // answered as the decision was, with 503, and nothing is held.
            let review = (outcome == puhui_risk::Outcome::Review).then(|| crate::risk::review_of(&previous));
            if let Some(review) = &review {
                if !risk.try_queue_review(request.id.as_str(), review.clone()) {
                    return Err(review_queue_full());
                }
            }
            return Ok(Prepared::Answered(Some((outcome, review))));
        }
    }
    if let Some(refused) = declined_long_ago_again(app, risk, request).await? {
        return Err(refused);
    }
    if matches_recorded_transfer(app, request).await? {
        return Ok(Prepared::Answered(None));
    }
    if let Some(answer) = decided_long_ago_again(app, risk, request).await? {
        return Ok(Prepared::Answered(answer));
    }
    let attributes = crate::risk::attributes(tenant, context)?;
    let (Some(payer), Some(payee)) = (&request.debit_account_id, &request.credit_account_id) else {
        return Ok(Prepared::Answered(None));
    };
    // Looked up only when a ruleset reads it (a read of the ledger per transfer otherwise saved).
    // Read before the decision, not with it (on the decider thread and PostgreSQL): two transfers
    // of one payer decided at once both see the balance before either (ARCHITECTURE.md).
    let payer_balance_minor = match balance == PayerBalance::Now && risk.reads_payer_balance() {
        false => None,
        true => app.account(payer.clone()).await?.map(|a| a.balances.available_saturating_i64()),
    };
    let event = puhui_risk::records::EventRecord {
        payer: payer.to_string(),
        payee: payee.to_string(),
        amount_minor: request.amount_minor.unwrap_or(0),
        currency: request.currency.map(|c| c.as_str().to_string()).unwrap_or_default(),
        timestamp_ns: crate::risk::now_ns(),
        attributes,
        payer_balance_minor,
    };
    Ok(Prepared::ToDecide(event))
}

/// The answer to `request` if risk control declined a transfer under its id before (`previous`, the
/// remembered decision): the same decline, or, for another payment under that id, a conflict as the
/// ledger gives for a recorded transfer. A decision under an id is made once, also after a restart
/// (decisions are replayed from the journal), and whether or not the retry carries a risk context:
/// a declined id is taken.
fn declined_before(
    risk: &crate::risk::RiskService,
    request: &TransferRequest,
    previous: &crate::risk::DecisionObject,
) -> Option<ApiError> {
    if previous.source != "transfer" || previous.outcome != "decline" {
        return None;
    }
    let record = risk.decision_record(request.id.as_str());
    let reasons: Vec<String> = previous.fired.iter().flat_map(|f| f.reasons.iter().cloned()).collect();
    Some(declined_again(request, record.as_ref().map(|r| &r.event), &reasons))
}

/// The answer to a retry under the id of a declined transfer whose decision saw `event`: 422
/// `risk_declined` with its `reasons` if the retry names the same payment (or the event is not at
/// hand), else the ledger's conflict for an id reused with other accounts, amount or currency.
fn declined_again(
    request: &TransferRequest,
    event: Option<&puhui_risk::records::EventRecord>,
    reasons: &[String],
) -> ApiError {
    match event.and_then(|event| other_payment(request, event)) {
        Some(code) => ledger_error(code),
        None => risk_declined(reasons),
    }
}

/// How `request` differs from the payment a decision under its id saw (`event`), as the ledger
/// names an id reused for another transfer; `None` if it names the same payment.
fn other_payment(request: &TransferRequest, event: &puhui_risk::records::EventRecord) -> Option<ResultCode> {
    let differs =
        |account: &Option<Id>, recorded: &str| account.as_ref().is_none_or(|a| a.as_str() != recorded);
    if differs(&request.debit_account_id, &event.payer) || differs(&request.credit_account_id, &event.payee) {
        Some(ResultCode::ExistsWithDifferentAccounts)
    } else if request.amount_minor.unwrap_or(0) != event.amount_minor {
        Some(ResultCode::ExistsWithDifferentAmount)
    } else if request.currency.map(|c| c.as_str().to_string()).unwrap_or_default() != event.currency {
        Some(ResultCode::ExistsWithDifferentCurrency)
    } else {
        None
    }
}

/// The answer to `request` if risk control declined a transfer under its id so long ago that the
/// decision is no longer in memory: its record is read back from the journal if the events index
/// still covers it, so the retry gets the reasons (or the conflict) a recent one gets
/// ([`declined_again`]); if it cannot be read back, [`declined_long_ago`].
async fn declined_long_ago_again(
    app: &Arc<AppState>,
    risk: &Arc<crate::risk::RiskService>,
    request: &TransferRequest,
) -> Result<Option<ApiError>, ApiError> {
    if !risk.declined_long_ago(request.id.as_str()) {
        return Ok(None);
    }
    Ok(Some(match crate::risk::forgotten_from_journal(app, risk, request.id.as_str()).await? {
        Some((record, _, _)) => {
            declined_again(request, Some(&record.event), &crate::risk::reasons_of(&record.active))
        }
        None => declined_long_ago(),
    }))
}

/// For a transfer under an id decided so long ago that the decision is no longer in memory, and
/// not posted (an approval or review whose posting failed, retried much later): the answer from
/// that decision, read back from the journal, as [`prepare_inline`] answers from a remembered
/// one (another payment under the id is the ledger's conflict; a review is held once queued).
/// Without it the transfer was decided a second time: two records under one id, and its event
/// counted twice in the features. `None` if there is no such decision, or it cannot be read back
/// (then it is decided again, the one case left).
async fn decided_long_ago_again(
    app: &Arc<AppState>,
    risk: &Arc<crate::risk::RiskService>,
    request: &mut TransferRequest,
) -> Result<Option<Inline>, ApiError> {
    if !risk.decided_long_ago(request.id.as_str()) {
        return Ok(None);
    }
    let Some((record, _, _)) = crate::risk::forgotten_from_journal(app, risk, request.id.as_str()).await?
    else {
        return Ok(None);
    };
    if record.source != puhui_risk::DecisionSource::Transfer {
        return Err(crate::risk::decision_id_conflict(
            "this id names a decision of another event (POST /v1/decisions); a transfer with a risk \
             context needs an id of its own",
        ));
    }
    if let Some(code) = other_payment(request, &record.event) {
        return Err(ledger_error(code));
    }
    match record.active.outcome {
        // Declines are answered before (`declined_long_ago_again`).
        puhui_risk::Outcome::Decline => Err(risk_declined(&crate::risk::reasons_of(&record.active))),
        puhui_risk::Outcome::Approve => Ok(Some(Some((puhui_risk::Outcome::Approve, None)))),
        puhui_risk::Outcome::Review => {
            let review = crate::risk::review_of_record(&record);
            if !risk.try_queue_review(request.id.as_str(), review.clone()) {
                return Err(review_queue_full());
            }
            into_review_hold(request);
            Ok(Some(Some((puhui_risk::Outcome::Review, Some(review)))))
        }
    }
}

/// Whether the ledger already holds a transfer under `request`'s id (not waited for during a group
/// commit: `false` then, and the ledger answers the request). If it is a hold risk control made on
/// review, `request` is turned into that hold, so that it matches.
async fn matches_recorded_transfer(
    app: &Arc<AppState>,
    request: &mut TransferRequest,
) -> Result<bool, ApiError> {
    let Some(Some(existing)) = app.transfer_now(request.id.clone()).await? else { return Ok(false) };
    let review_hold = existing.request.kind == TransferKind::Pending
        && existing.request.timeout_ms == Some(crate::risk::REVIEW_HOLD_TIMEOUT_MS);
    if review_hold {
        into_review_hold(request);
    }
    Ok(true)
}

/// For a transfer without a risk context: the answer if its id was declined before (see
/// [`declined_before`], and [`declined_long_ago_again`] for a decision older than the memory), or
/// 409 `under_review` if it posts a hold waiting for review. A transfer under an id risk control
/// turned into a review hold is turned the same way, so it is that hold (the ledger takes one of
/// the two), never a posting beside it; for a decision older than the memory the hold is looked up
/// in the ledger ([`matches_recorded_transfer`]).
async fn refused_without_decision(
    app: &Arc<AppState>,
    request: &mut TransferRequest,
    prefix: &str,
) -> Result<Option<ApiError>, ApiError> {
    let Some(risk) = app.risk.as_ref() else { return Ok(None) };
    if request.kind == TransferKind::PostPending {
        let Some(pending) = request.pending_id.as_ref() else { return Ok(None) };
        return Ok(risk
            .is_under_review(pending.as_str())
            .then(|| crate::risk::RiskService::under_review(&format!("{prefix}pending_id"))));
    }
    let Some(previous) = risk.decision(request.id.as_str()) else {
        if !risk.decided_long_ago(request.id.as_str()) {
            return Ok(None);
        }
        if let Some(refused) = declined_long_ago_again(app, risk, request).await? {
            return Ok(Some(refused));
        }
        matches_recorded_transfer(app, request).await?;
        return Ok(None);
    };
    if previous.source == "transfer" && previous.outcome == "review" {
        into_review_hold(request);
    }
    Ok(declined_before(risk, request, &previous))
}

/// The answer for a posting task that ended without one: 503 if the runtime is stopping, 500
/// (logged) if it panicked.
fn posting_failed(e: tokio::task::JoinError) -> ApiError {
    if e.is_panic() {
        tracing::error!(error = %e, "a transfer's posting task panicked");
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "the posting failed",
        );
    }
    ledger_stopped()
}

/// 503 for a write whose answer never came: the ledger stopped.
fn ledger_stopped() -> ApiError {
    ApiError::from(puhui_store::StoreError::Unavailable("the ledger stopped".into()))
}

/// Turns a single-phase transfer into the hold risk control makes of it on review (a pending transfer
/// with [`crate::risk::REVIEW_HOLD_TIMEOUT_MS`]); a pending one stays as it is.
fn into_review_hold(request: &mut TransferRequest) {
    if request.kind == TransferKind::Single {
        request.kind = TransferKind::Pending;
        request.timeout_ms = Some(crate::risk::REVIEW_HOLD_TIMEOUT_MS);
    }
}

/// 422 `risk_declined`, naming the fired rules' reasons.
fn risk_declined(reasons: &[impl AsRef<str>]) -> ApiError {
    let reasons: Vec<&str> = reasons.iter().map(AsRef::as_ref).collect();
    ApiError {
        message: format!("risk control declined the transfer (reasons: {})", reasons.join(", ")),
        reasons: Some(reasons.iter().map(|r| r.to_string()).collect()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "risk_error", "risk_declined", "")
    }
}

/// 422 `risk_declined` for a retry under the id of a transfer risk control declined so long ago that
/// its decision is no longer in memory and its place in the journal is no longer known (see
/// `crate::risk::forgotten_from_journal`): declined again, whatever the retry says, since its
/// payment cannot be compared with the declined one.
fn declined_long_ago() -> ApiError {
    ApiError {
        message: format!(
            "risk control declined a transfer under this id earlier (its decision is older than the {} kept \
             in memory and its place in the journal is no longer known here, so its reasons are not repeated: \
             they are in the journal); use a new id for a new payment",
            crate::risk::DECISIONS_KEPT_MAX
        ),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "risk_error", "risk_declined", "")
    }
}

/// 503 `overloaded` for a transfer decided for review while the review queue is full (in all, or
/// for its tenant): it is not held; a retry is held once there is room.
fn review_queue_full() -> ApiError {
    ApiError {
        retry_after_secs: Some(60),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "overloaded",
            "the review queue is full",
        )
    }
}

/// Acts on an inline decision: declined → `Err` (once the decline is durable); review → the request
/// becomes a review hold (or 503 if the review queue is full); approve → as is.
async fn act_on_decision(
    app: &Arc<AppState>,
    request: &mut TransferRequest,
    decided: crate::risk::DecisionResult,
) -> Result<Inline, ApiError> {
    let (decision, mut durable) = decided?;
    if app.store.is_postgres() {
        // On PostgreSQL records and ledger writes are committed by different committers: the
        // decision is made durable before its transfer is queued, as one FIFO queue does embedded.
        let seq = (&mut durable).await.map_err(|_| ledger_stopped())??;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(seq));
        durable = rx;
    }
    let outcome = decision.outcome();
    match outcome {
        puhui_risk::Outcome::Decline => {
            // The decline is recorded before it is told (approved and held transfers are queued
            // after their decision, so their own durability covers it).
            durable.await.map_err(|_| ledger_stopped())??;
            metrics::counter!("puhui_transfers_total", "result" => "risk_declined").increment(1);
            return Err(risk_declined(decision.reasons()));
        }
        puhui_risk::Outcome::Review => {
            // Queued (or not, the queue being full) under the memory's lock as it was decided.
            if !decision.review_queued() {
                // Not held: as for a decline, the decision is recorded before it is told (so its
                // retry, and `GET /v1/decisions/{id}`, find it with its journal position).
                durable.await.map_err(|_| ledger_stopped())??;
                return Err(review_queue_full());
            }
            into_review_hold(request);
        }
        puhui_risk::Outcome::Approve => {}
    }
    let review = decision.review();
    Ok(Some((outcome, review)))
}

/// Create a transfer (single-phase or pending; post and void have their own endpoints too).
#[utoipa::path(post, path = "/v1/transfers", tag = "transfers", request_body = CreateTransfer,
    params(("Idempotency-Key" = Option<String>, Header, description = "Stripe-style idempotency key")),
    responses((status = 201, body = TransferObject, description = "created"),
              (status = 200, body = TransferObject, description = "the same transfer existed"),
              (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
              (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
              (status = 429, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn create_transfer(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    idem: Idem,
    ApiJson(mut body): ApiJson<CreateTransfer>,
) -> Result<Response, ApiError> {
    let context = body.risk_context.take();
    let mut request = body.into_domain(&principal.tenant, "", client_id_source(&app, &idem, "transfer"))?;
    // With risk control the id is this request's until it is answered: a concurrent request under
    // it (with a context or not) waits, so one cannot be declined while the other is posted.
    let taken = match app.risk.as_ref() {
        Some(risk) if matches!(request.kind, TransferKind::Single | TransferKind::Pending) => {
            Some(risk.begin_deciding([request.id.as_str()]).map_err(|(_, e)| e)?)
        }
        _ => None,
    };
    // On PostgreSQL, what other nodes decided before this request arrived counts here too: a retry
    // sent to another node is declined again, not decided afresh on that node's own features. A
    // new transfer first locks its id across nodes: sent to two nodes at the same moment, it is
    // decided by one, and the other answers with that decision. One without a risk context locks
    // it too: else it could be posted on one node while another declines it under that id.
    let with_context = context.is_some();
    let locks = match app.risk.as_ref() {
        Some(risk) => risk.lock_across_nodes(taken.is_some().then_some(request.id.as_str())).await?,
        None => None,
    };
    let (request, decided, posted) = match context {
        Some(context) => {
            let fence = locks.as_ref().map(puhui_store_pg::DecisionLock::fence);
            decide_and_post(&app, &principal.tenant, request, context, fence).await?
        }
        None => match refused_without_decision(&app, &mut request, "").await? {
            Some(refused) => return Err(refused),
            None => (request, None, None),
        },
    };
    // The decision is durable (on PostgreSQL it is awaited before the transfer is queued): other
    // nodes read it from here on, so they need not wait for the posting. Without a context there
    // is no decision to read: what another node must see is the posting, so the lock is held
    // until the ledger has answered.
    let locked_until_posted = if with_context {
        drop(locks);
        None
    } else {
        locks
    };
    let id = request.id.clone();
    let posted = match posted {
        Some(results) => posted_object(&app, request, results).await,
        None if with_context || taken.is_none() => create_one_object(&app, request, None).await,
        // Without a decision, the claims on the id (in this process, and on PostgreSQL across
        // nodes) go with the posting, not with this request: a client gone while its transfer is
        // queued must not free the id for another request, here or on another node, to be
        // declined under it meanwhile.
        None => {
            let app = Arc::clone(&app);
            // Posted under the lock's fence: if the lock's PostgreSQL session is lost meanwhile,
            // another node may take the id and decide it, so the posting is refused (503).
            let fence = locked_until_posted.as_ref().map(puhui_store_pg::DecisionLock::fence);
            let posting = tokio::spawn(async move {
                let posted = create_one_object(&app, request, fence).await;
                drop((locked_until_posted, taken));
                posted
            });
            posting.await.map_err(posting_failed)?
        }
    };
    let (status, mut object) = match posted {
        Ok(posted) => posted,
        Err(e) => {
            // Not held (refused by the ledger, or not queued): its review, queued as it was
            // decided, leaves the queue unless a hold under the id is open (an earlier attempt's).
            // The request's own error is the answer: if the ledger cannot be read here, listing
            // or the next start drops the review instead.
            if let (Some(risk), Some((puhui_risk::Outcome::Review, _))) = (app.risk.as_ref(), &decided) {
                let _ = crate::risk::drop_reviews_without_hold(&app, risk, vec![id.to_string()]).await;
            }
            return Err(e);
        }
    };
    if let Some((outcome, review)) = decided {
        object.risk_outcome = Some(outcome.as_str());
        if let (StatusCode::CREATED, Some(review)) = (status, review) {
            let risk = app.risk.as_ref().expect("decided with risk control");
            risk.queue_review(&id, review);
        }
    }
    Ok((status, Json(object)).into_response())
}

/// Create up to 8,189 transfers; linked chains apply entirely or not at all.
#[utoipa::path(post, path = "/v1/transfers/batch", tag = "transfers", request_body = CreateTransferBatch,
    params(("Idempotency-Key" = Option<String>, Header, description = "Stripe-style idempotency key")),
    responses((status = 200, body = BatchResultObject, description = "one result per transfer"),
              (status = 400, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn create_transfer_batch(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    idem: Idem,
    ApiJson(body): ApiJson<CreateTransferBatch>,
) -> Result<Json<BatchResultObject>, ApiError> {
    let count = body.transfers.len();
    if count == 0 {
        return Err(ApiError::invalid(
            "batch_empty",
            "a batch needs at least one transfer",
            Some("transfers"),
        ));
    }
    if count > BATCH_TRANSFERS_MAX {
        return Err(ApiError::invalid(
            "batch_too_large",
            format!("a batch holds at most {BATCH_TRANSFERS_MAX} transfers; this one has {count}"),
            Some("transfers"),
        ));
    }
    metrics::histogram!("puhui_batch_transfers").record(count as f64);
    let mut requests = Vec::with_capacity(count);
    let mut contexts = Vec::with_capacity(count);
    for (i, mut t) in body.transfers.into_iter().enumerate() {
        let prefix = format!("transfers[{i}].");
        contexts.push(t.risk_context.take());
        let derived = |idem: &Idem| match idem {
            Some(Extension(key)) => key.derived_id(&format!("batch-{i}")),
            None => app.store.new_id().to_string(),
        };
        requests.push(t.into_domain(&principal.tenant, &prefix, || derived(&idem))?);
    }
    let ids: Vec<Id> = requests.iter().map(|r| r.id.clone()).collect();
    // The items' ids are this request's until it is answered (see create_transfer).
    let new = |r: &TransferRequest| matches!(r.kind, TransferKind::Single | TransferKind::Pending);
    let taken = match app.risk.as_ref() {
        Some(risk) => {
            let taken = risk.begin_deciding(requests.iter().filter(|r| new(r)).map(|r| r.id.as_str()));
            Some(taken.map_err(|(_, e)| ApiError { param: Some("transfers".into()), ..e })?)
        }
        None => None,
    };
    // As for one transfer (see create_transfer): the new transfers' ids are locked across nodes,
    // with a risk context or not; until the posting if one has none.
    let all_decided = requests.iter().zip(&contexts).all(|(r, c)| c.is_some() || !new(r));
    let locks = match app.risk.as_ref() {
        Some(risk) => {
            risk.lock_across_nodes(requests.iter().filter(|r| new(r)).map(|r| r.id.as_str())).await?
        }
        None => None,
    };
    // Items with a risk context are decided in order, as POST /v1/transfers decides one: a declined
    // item is not submitted (`risk_declined`) and neither is the rest of its linked chain
    // (`linked_event_failed`); a review item becomes a hold and is queued once it is recorded.
    let mut declined: Vec<Option<ResultCode>> = vec![None; count];
    // A declined item's reason codes (`risk_declined`, when known).
    let mut reasons: Vec<Option<Vec<String>>> = vec![None; count];
    let mut reviews = Vec::new();
    let mut note = |i: usize, answer: Result<Inline, ApiError>| match answer {
        Ok(Some((puhui_risk::Outcome::Review, Some(review)))) => {
            reviews.push((i, review));
            Ok(())
        }
        Ok(_) => Ok(()),
        // A decline, or a declined id reused for another payment: that item's result.
        Err(e) if ResultCode::from_name(&e.code).is_some() => {
            declined[i] = ResultCode::from_name(&e.code);
            reasons[i] = e.reasons;
            Ok(())
        }
        Err(e) => Err(ApiError { param: Some(format!("transfers[{i}].risk_context")), ..e }),
    };
    // Items without a risk context: a declined id stays declined; a review hold is not posted
    // around its review.
    // Only items the risk service knows something about (one lock for the batch) are looked at.
    let known = match app.risk.as_ref() {
        Some(risk) => {
            risk.known_items(requests.iter().map(|r| (r.id.as_str(), r.pending_id.as_ref().map(Id::as_str))))
        }
        None => Vec::new(),
    };
    for i in known {
        if contexts[i].is_some() {
            continue;
        }
        let prefix = format!("transfers[{i}].");
        match refused_without_decision(&app, &mut requests[i], &prefix).await? {
            Some(e) if e.code == "under_review" => return Err(e),
            Some(e) => note(i, Err(e))?,
            None => {}
        }
    }
    let fence = locks.as_ref().map(puhui_store_pg::DecisionLock::fence);
    // An id more than once in the batch: only its first item is decided (or checked, without a
    // context); a later one takes the first's refusal or hold below, else the ledger answers it as
    // a duplicate. Never a decision of its own: [X, X with a context] used to post the first and
    // record a decline for the second, so X's retries were declined though X was posted.
    let mut first_of = std::collections::HashMap::with_capacity(count);
    let first: Vec<usize> = (0..count).map(|i| *first_of.entry(ids[i].as_str()).or_insert(i)).collect();
    if let Some(risk) = app.risk.as_ref() {
        // All the items' decisions handed to the risk thread at once (one hand-over, not one per
        // item), in order; each item is checked for a retry first, as a single POST is.
        let mut to_decide = Vec::new();
        for (i, context) in contexts.into_iter().enumerate() {
            let Some(context) = context.filter(|_| first[i] == i) else { continue };
            match prepare_inline(&app, &principal.tenant, &mut requests[i], context, PayerBalance::Now).await
            {
                Ok(Prepared::Answered(answer)) => note(i, Ok(answer))?,
                Ok(Prepared::ToDecide(event)) => {
                    let id = requests[i].id.to_string();
                    let source = puhui_risk::DecisionSource::Transfer;
                    let fence = fence.clone();
                    to_decide.push((i, crate::risk::ToDecide { id, source, event, record: true, fence }));
                }
                Err(e) => note(i, Err(e))?,
            }
        }
        let (at, items): (Vec<usize>, Vec<_>) = to_decide.into_iter().unzip();
        let decided_ids: Vec<String> = at.iter().map(|i| ids[*i].to_string()).collect();
        let results = risk.decide_queued_many(items).await;
        for (i, decision) in at.into_iter().zip(results) {
            if let Err(e) = note(i, act_on_decision(&app, &mut requests[i], decision).await) {
                // The batch is refused whole (a review found the queue full): the reviews its
                // other items queued as they were decided leave the queue, as nothing is held
                // (unless an earlier attempt's hold under the id is open).
                let _ = crate::risk::drop_reviews_without_hold(&app, risk, decided_ids).await;
                return Err(e);
            }
        }
        let held: std::collections::HashSet<usize> = reviews.iter().map(|(i, _)| *i).collect();
        for i in 0..count {
            let f = first[i];
            if f == i || declined[i].is_some() {
                continue;
            }
            if declined[f].is_some() {
                // Refused as the first was, or the ledger's conflict if it names another payment.
                let conflict = match (&requests[f], &requests[i]) {
                    (a, b)
                        if (&a.debit_account_id, &a.credit_account_id)
                            != (&b.debit_account_id, &b.credit_account_id) =>
                    {
                        Some(ResultCode::ExistsWithDifferentAccounts)
                    }
                    (a, b) if a.amount_minor != b.amount_minor => Some(ResultCode::ExistsWithDifferentAmount),
                    (a, b) if a.currency != b.currency => Some(ResultCode::ExistsWithDifferentCurrency),
                    _ => None,
                };
                declined[i] = conflict.or(declined[f]);
                reasons[i] = conflict.is_none().then(|| reasons[f].clone()).flatten();
            } else if held.contains(&f) {
                into_review_hold(&mut requests[i]);
            }
        }
    }
    // Every decision is durable (see create_transfer): other nodes may read them now. Items
    // without a context have no decision to read: the locks are held until they are posted.
    let locked_until_posted = if all_decided {
        drop(locks);
        None
    } else {
        locks
    };
    let mut chain_start = 0;
    for i in 0..count {
        if requests[i].linked && i + 1 < count {
            continue;
        }
        if declined[chain_start..=i].iter().any(Option::is_some) {
            for slot in &mut declined[chain_start..=i] {
                slot.get_or_insert(ResultCode::LinkedEventFailed);
            }
        }
        chain_start = i + 1;
    }
    let submitted: Vec<TransferRequest> =
        requests.into_iter().zip(&declined).filter(|(_, d)| d.is_none()).map(|(r, _)| r).collect();
    let committed = match submitted.is_empty() {
        true => Ok(Vec::new()),
        false if all_decided || taken.is_none() => app.create_transfers(submitted).await,
        // As for one transfer (see create_transfer): the claims go with the posting, and it is
        // under the locks' fence: refused whole (503) if the locks were lost.
        false => {
            let app = Arc::clone(&app);
            let fence = locked_until_posted.as_ref().map(puhui_store_pg::DecisionLock::fence);
            let posting = tokio::spawn(async move {
                let committed = app.create_transfers_fenced(submitted, fence).await;
                drop((locked_until_posted, taken));
                committed
            });
            posting.await.map_err(posting_failed).and_then(|r| r)
        }
    };
    let mut committed = match committed {
        Ok(committed) => committed,
        Err(e) => {
            // Nothing held: the reviews the batch's items queued as they were decided leave the
            // queue (unless an earlier attempt's hold under the id is open), as for one transfer.
            if let (Some(risk), false) = (app.risk.as_ref(), reviews.is_empty()) {
                let held = reviews.iter().map(|(i, _)| ids[*i].to_string()).collect();
                let _ = crate::risk::drop_reviews_without_hold(&app, risk, held).await;
            }
            return Err(e);
        }
    };
    record_results(&committed);
    committed.reverse();
    let results: Vec<(ResultCode, u64)> = declined
        .iter()
        .map(|d| match d {
            Some(code) => (*code, 0),
            None => committed
                .pop()
                .map(|r| (r.result, r.timestamp_ns))
                .expect("one result per submitted transfer"),
        })
        .collect();
    if let Some(risk) = app.risk.as_ref() {
        let mut not_held = Vec::new();
        for (i, review) in reviews {
            match results[i].0 {
                ResultCode::Ok => risk.queue_review(&ids[i], review),
                ResultCode::Exists => {}
                // Not held: its review, queued as it was decided, leaves the queue (unless an
                // earlier attempt's hold under the id is open).
                _ => not_held.push(ids[i].to_string()),
            }
        }
        if !not_held.is_empty() {
            let _ = crate::risk::drop_reviews_without_hold(&app, risk, not_held).await;
        }
    }
    let ok = results.iter().filter(|r| r.0 == ResultCode::Ok).count();
    Ok(Json(BatchResultObject {
        object: "batch_result",
        ok,
        results: ids
            .iter()
            .zip(&results)
            .enumerate()
            .zip(reasons)
            .map(|((index, (id, (result, timestamp_ns))), reasons)| BatchItemResult {
                index,
                id: unscoped(id).to_string(),
                result: result.as_str(),
                timestamp_ns: (*timestamp_ns != 0).then_some(*timestamp_ns),
                reasons,
            })
            .collect(),
    }))
}

/// Get a transfer (failed ones too: their id stays taken).
#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers",
    params(("id" = String, Path, description = "transfer id")),
    responses((status = 200, body = TransferObject), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_transfer(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TransferObject>, ApiError> {
    let id = scoped_lookup_any(&principal.tenant, &id, "transfer")?;
    let transfer = app.transfer(id).await?.ok_or_else(|| ApiError::not_found("transfer", "id"))?;
    Ok(Json(transfer.into()))
}

/// Ids of posts and voids default to `<pending id>.post`/`.void`, up to 69 characters.
fn scoped_lookup_any(tenant: &str, client_id: &str, what: &str) -> Result<Id, ApiError> {
    Id::new(&format!("{tenant}:{client_id}"))
        .filter(|_| !client_id.is_empty())
        .ok_or_else(|| ApiError::not_found(what, "id"))
}

fn resolution_id(tenant: &str, given: Option<String>, pending: &str, suffix: &str) -> Result<Id, ApiError> {
    match given {
        Some(id) => scoped(tenant, &id, "id"),
        None => Id::new(&format!("{tenant}:{pending}.{suffix}")).ok_or_else(|| {
            ApiError::invalid("invalid_id", "give an id for the posting transfer", Some("id"))
        }),
    }
}

/// Resolution ids tried for one hold when the client names none (see [`resolution_attempt_id`]).
pub(crate) const RESOLUTION_ATTEMPTS_MAX: u32 = 16;

/// The id of a post or void of a hold when the client gives none: `base` (`<hold>.post`), or, if an
/// earlier attempt under it failed for another request, the first of `base.2`, `base.3`, … that is
/// free or holds this request. The ledger keeps a failed transfer's result under its id for good
/// (a retry gets the same failure), so a corrected request must not meet its predecessor's id.
/// `same(t)`: whether the failed attempt `t` was this very request (then its id is reused, and the
/// retry gets its failure). `None` past [`RESOLUTION_ATTEMPTS_MAX`] ids or an id too long.
pub(crate) async fn resolution_attempt_id(
    app: &Arc<AppState>,
    base: &str,
    same: impl Fn(&puhui_ledger::Transfer) -> bool,
) -> Result<Option<Id>, ApiError> {
    for attempt in 1..=RESOLUTION_ATTEMPTS_MAX {
        let text = match attempt {
            1 => base.to_string(),
            n => format!("{base}.{n}"),
        };
        let Some(candidate) = Id::new(&text) else { return Ok(None) };
        match app.transfer(candidate.clone()).await? {
            Some(earlier) if earlier.result != ResultCode::Ok && !same(&earlier) => continue,
            _ => return Ok(Some(candidate)),
        }
    }
    Ok(None)
}

/// Post a pending transfer, fully or partly (the rest of the hold is released).
#[utoipa::path(post, path = "/v1/transfers/{id}/post", tag = "transfers", request_body = Option<PostPending>,
    params(("id" = String, Path, description = "the pending transfer")),
    responses((status = 201, body = TransferObject, description = "the posting transfer"),
              (status = 200, body = TransferObject, description = "already posted by this id"),
              (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn post_transfer(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(pending): ApiPath<String>,
    OptionalJson(body): OptionalJson<PostPending>,
) -> Result<Response, ApiError> {
    let pending_id = scoped_lookup_any(&principal.tenant, &pending, "transfer")?;
    // A hold risk control queued for review is posted by approving the review, not around it.
    if app.risk.as_ref().is_some_and(|r| r.is_under_review(pending_id.as_str())) {
        return Err(crate::risk::RiskService::under_review("id"));
    }
    let amount = crate::models::checked_amount(body.amount, "amount")?;
    let id = match body.id {
        Some(given) => scoped(&principal.tenant, &given, "id")?,
        None => {
            let base = format!("{}:{pending}.post", principal.tenant);
            let same = |t: &puhui_ledger::Transfer| t.request.amount_minor == amount;
            resolution_attempt_id(&app, &base, same).await?.ok_or_else(|| {
                ApiError::invalid("invalid_id", "give an id for the posting transfer", Some("id"))
            })?
        }
    };
    create_one(&app, TransferRequest::post(id, pending_id, amount)).await
}

/// Void a pending transfer: its hold is released.
#[utoipa::path(post, path = "/v1/transfers/{id}/void", tag = "transfers", request_body = Option<VoidPending>,
    params(("id" = String, Path, description = "the pending transfer")),
    responses((status = 201, body = TransferObject, description = "the voiding transfer"),
              (status = 200, body = TransferObject, description = "already voided by this id"),
              (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn void_transfer(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(pending): ApiPath<String>,
    OptionalJson(body): OptionalJson<VoidPending>,
) -> Result<Response, ApiError> {
    let pending_id = scoped_lookup_any(&principal.tenant, &pending, "transfer")?;
    let id = resolution_id(&principal.tenant, body.id, &pending, "void")?;
    let request = TransferRequest::void(id, pending_id);
    debug_assert_eq!(request.kind, TransferKind::VoidPending);
    create_one(&app, request).await
}

// ------------------------------------------------------------------------------------------------
// Tenants (admin token)

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::TenantNotFound => ApiError::not_found("tenant", "id"),
        RegistryError::KeyNotFound => ApiError::not_found("api key", "key_id"),
        RegistryError::Limit(what) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "limit_reached",
            format!("too many {what}"),
        ),
        RegistryError::Io(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", e),
    }
}

/// Create a tenant and its first API key (admin token).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 201, body = TenantCreated), (status = 401, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn create_tenant(
    State(app): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantCreated>), ApiError> {
    if body.name.is_empty() || body.name.len() > 200 {
        return Err(ApiError::invalid("invalid_request", "name is 1-200 characters", Some("name")));
    }
    let tenants = Arc::clone(&app.tenants);
    let name = body.name.clone();
    let (id, key_id, api_key) = tokio::task::spawn_blocking(move || tenants.create_tenant(&name))
        .await
        .map_err(|_| internal())?
        .map_err(registry_error)?;
    Ok((StatusCode::CREATED, Json(TenantCreated { object: "tenant", id, name: body.name, api_key, key_id })))
}

/// Add an API key to a tenant (to rotate: add, switch clients, revoke the old one).
#[utoipa::path(post, path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path, description = "tenant id")),
    responses((status = 201, body = KeyCreated), (status = 404, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn create_key(
    State(app): State<Arc<AppState>>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let tenants = Arc::clone(&app.tenants);
    let (key_id, api_key) = tokio::task::spawn_blocking(move || tenants.create_key(&tenant))
        .await
        .map_err(|_| internal())?
        .map_err(registry_error)?;
    Ok((StatusCode::CREATED, Json(KeyCreated { object: "api_key", key_id, api_key })))
}

/// List a tenant's keys (ids and prefixes only).
#[utoipa::path(get, path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path, description = "tenant id")),
    responses((status = 200, body = Vec<KeyObject>), (status = 404, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn list_keys(
    State(app): State<Arc<AppState>>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<Vec<KeyObject>>, ApiError> {
    if app.tenants.is_shared() {
        let tenants = Arc::clone(&app.tenants);
        tokio::task::spawn_blocking(move || tenants.reload())
            .await
            .map_err(|_| internal())?
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", e))?;
    }
    let keys = app.tenants.keys(&tenant).ok_or_else(|| ApiError::not_found("tenant", "id"))?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyObject { object: "api_key", key_id: k.key_id, prefix: k.prefix, revoked: k.revoked })
            .collect(),
    ))
}

/// Revoke an API key: it authenticates nothing from now on.
#[utoipa::path(post, path = "/v1/tenants/{id}/keys/{key_id}/revoke", tag = "tenants",
    params(("id" = String, Path, description = "tenant id"), ("key_id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyObject), (status = 404, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn revoke_key(
    State(app): State<Arc<AppState>>,
    ApiPath((tenant, key_id)): ApiPath<(String, String)>,
) -> Result<Json<KeyObject>, ApiError> {
    let tenants = Arc::clone(&app.tenants);
    let (t, k) = (tenant.clone(), key_id.clone());
    tokio::task::spawn_blocking(move || tenants.revoke_key(&t, &k))
        .await
        .map_err(|_| internal())?
        .map_err(registry_error)?;
    let prefix = app
        .tenants
        .keys(&tenant)
        .and_then(|keys| keys.into_iter().find(|k| k.key_id == key_id).map(|k| k.prefix))
        .unwrap_or_default();
    Ok(Json(KeyObject { object: "api_key", key_id, prefix, revoked: true }))
}

// ------------------------------------------------------------------------------------------------
// Operations

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the ledger accepts writes.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorEnvelope)))]
pub async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    if app.store.is_healthy() {
        Ok(Json(Health { status: "ok" }))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            "a journal write failed; restart",
        ))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics_endpoint(State(app): State<Arc<AppState>>) -> Response {
    let body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 JSON")))]
pub async fn openapi_json() -> Response {
    ([("content-type", "application/json")], crate::openapi::document()).into_response()
}

/// Unknown route.
pub async fn not_found(_headers: HeaderMap) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "route_not_found", "no such route")
}

/// Known route, other method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "this route does not take this method",
    )
}
