//! # puhui-api: the partner HTTP API
//!
//! `puhui serve`: axum on tokio in front of the ledger store ([`backend`]: the embedded store, or
//! PostgreSQL for several nodes). Tenants and API keys
//! ([`tenants`]), Stripe-style idempotency and rate limits ([`idempotency`]), one error envelope
//! ([`error`]), JSON models kept apart from the domain types ([`models`]), handlers ([`routes`]),
//! OpenAPI 3.1 generated from the code ([`openapi`]), and the server itself ([`server`]).
//!
//! Key decision: handlers never block a runtime thread on the ledger. Writes go to the store's
//! committer queue with a completion callback (a oneshot), so many concurrent requests share one
//! group commit; reads take the state's read lock when it is free and otherwise move to a blocking
//! thread for the few milliseconds a commit holds it.
#![deny(missing_docs)]

pub mod backend;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod journal;
pub mod limits;
pub mod log_budget;
pub mod models;
pub mod openapi;
pub mod risk;
pub mod routes;
pub mod server;
pub mod tenants;
pub mod webhooks;
pub mod witness;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use puhui_ledger::{
    Account, Balances, EventResult, Id, Ledger, NewAccount, Page, StatusAction, Transfer, TransferRequest,
};
use puhui_store::StoreError;
use tokio::sync::Semaphore;

use crate::error::{ApiError, REQUEST_ID};
use crate::idempotency::{Idempotency, RateLimiter};
use crate::tenants::TenantRegistry;

pub use backend::Backend;
pub use server::{serve, ServeConfig};

/// Everything a handler needs.
pub struct AppState {
    /// The ledger: the embedded store or PostgreSQL.
    pub store: Backend,
    /// Tenants and keys.
    pub tenants: Arc<TenantRegistry>,
    /// Remembered idempotency keys (in memory, or shared through PostgreSQL).
    pub idempotency: Idempotency,
    /// Per-key rate limits.
    pub limiter: RateLimiter,
    /// SHA-256 of the admin token (the token itself is in `DATA_DIR/admin.token` or the
    /// environment; on PostgreSQL every node shares this hash).
    pub admin_token_sha256: [u8; 32],
    /// The Prometheus recorder's handle, if one is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Bounds the requests being served at once.
    pub in_flight: Arc<Semaphore>,
    /// Risk control (decisions), if a ruleset is loaded.
    pub risk: Option<Arc<risk::RiskService>>,
    /// The events index (`GET /v1/events`), fed from the journal.
    pub events: Option<Arc<events::EventLog>>,
    /// Webhook endpoints and the dispatcher.
    pub webhooks: Option<Arc<webhooks::Webhooks>>,
}

impl AppState {
    async fn wait<T: Send + 'static>(
        &self,
        submit: impl FnOnce(puhui_store::Reply<T>) -> Result<(), puhui_store::StoreError>,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        submit(Box::new(move |r| {
            let _ = tx.send(r);
        }))?;
        let result = rx.await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", "the ledger stopped")
        })?;
        Ok(result?)
    }

    /// Creates accounts once they are durable.
    pub async fn create_accounts(&self, batch: Vec<NewAccount>) -> Result<Vec<EventResult>, ApiError> {
        self.wait(|reply| self.store.submit_accounts(batch, reply)).await
    }

    /// Creates transfers once they are durable.
    pub async fn create_transfers(&self, batch: Vec<TransferRequest>) -> Result<Vec<EventResult>, ApiError> {
        self.create_transfers_fenced(batch, None).await
    }

    /// [`AppState::create_transfers`] under a cross-node lock's fence
    /// ([`Backend::submit_transfers_fenced`]).
    pub async fn create_transfers_fenced(
        &self,
        batch: Vec<TransferRequest>,
        fence: Option<puhui_store_pg::Fence>,
    ) -> Result<Vec<EventResult>, ApiError> {
        self.wait(|reply| self.store.submit_transfers_fenced(batch, fence, reply)).await
    }

    /// Changes an account's status once it is durable.
    pub async fn set_status(&self, id: Id, action: StatusAction) -> Result<EventResult, ApiError> {
        self.wait(|reply| self.store.submit_status(id, action, reply)).await
    }

    /// Reads without blocking the runtime: `embedded` over the in-memory ledger (under its read
    /// lock when free, else on a blocking thread), `postgres` on a blocking thread.
    async fn query<R: Send + 'static>(
        &self,
        embedded: impl FnOnce(&Ledger) -> R + Clone + Send + 'static,
        postgres: impl FnOnce(&puhui_store_pg::PgStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let task_failed = |_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal_error",
                "read task failed",
            )
        };
        match &self.store {
            Backend::Embedded(store) => {
                if let Some(r) = store.try_read(embedded.clone()) {
                    return Ok(r);
                }
                let store = Arc::clone(store);
                tokio::task::spawn_blocking(move || store.read(embedded)).await.map_err(task_failed)
            }
            Backend::Postgres(store) => {
                let store = Arc::clone(store);
                Ok(tokio::task::spawn_blocking(move || postgres(&store)).await.map_err(task_failed)??)
            }
        }
    }

    /// An account, if it exists.
    pub async fn account(&self, id: Id) -> Result<Option<Account>, ApiError> {
        let id2 = id.clone();
        self.query(move |l| l.account(&id), move |s| puhui_store::LedgerStore::account(s, &id2)).await
    }

    /// A transfer, if the ledger can say without waiting: `None` when the embedded ledger's lock is
    /// held by a group commit (the hot path must not queue behind an `fdatasync`); PostgreSQL asks.
    pub async fn transfer_now(&self, id: Id) -> Result<Option<Option<Transfer>>, ApiError> {
        match &self.store {
            Backend::Embedded(store) => Ok(store.try_read(|l| l.transfer(&id))),
            Backend::Postgres(_) => self.transfer(id).await.map(Some),
        }
    }

    /// A transfer, if it exists.
    pub async fn transfer(&self, id: Id) -> Result<Option<Transfer>, ApiError> {
        let id2 = id.clone();
        self.query(move |l| l.transfer(&id), move |s| puhui_store::LedgerStore::transfer(s, &id2)).await
    }

    /// One page of an account's transfers and whether there are more; `Err` with
    /// [`StoreError::AccountNotFound`] or [`StoreError::CursorNotFound`] inside the `Ok`.
    pub async fn account_transfers(
        &self,
        id: Id,
        limit: usize,
        after: Option<Id>,
        before: Option<Id>,
    ) -> Result<Result<(Vec<Transfer>, bool), StoreError>, ApiError> {
        let (id2, after2, before2) = (id.clone(), after.clone(), before.clone());
        self.query(
            move |l| {
                let page = Page { limit, starting_after: after.as_deref(), ending_before: before.as_deref() };
                l.account_transfers(&id, page).map_err(StoreError::from)
            },
            move |s| {
                let page =
                    Page { limit, starting_after: after2.as_deref(), ending_before: before2.as_deref() };
                Ok(puhui_store::LedgerStore::account_transfers(s, &id2, page))
            },
        )
        .await
    }

    /// An account's balances at `at_ns` (`u64::MAX`: now); `Err` with
    /// [`StoreError::AccountNotFound`] inside the `Ok`.
    pub async fn balance_at(&self, id: Id, at_ns: u64) -> Result<Result<Balances, StoreError>, ApiError> {
        let id2 = id.clone();
        self.query(
            move |l| l.balance_at(&id, at_ns).map_err(StoreError::from),
            move |s| Ok(puhui_store::LedgerStore::balance_at(s, &id2, at_ns)),
        )
        .await
    }

    /// A page of the open holds that have a timeout, with their timeouts (see
    /// [`puhui_store::LedgerStore::open_holds`]), and the next page's cursor.
    pub async fn open_holds(
        &self,
        after: Option<Id>,
        scan_max: usize,
    ) -> Result<(Vec<(Id, u64)>, Option<Id>), ApiError> {
        let after2 = after.clone();
        self.query(
            move |l| l.open_holds(after.as_deref(), scan_max),
            move |s| puhui_store::LedgerStore::open_holds(s, after2.as_deref(), scan_max),
        )
        .await
    }

    /// Of `ids`, those that are not open holds (missing, not pending, or resolved).
    pub async fn not_open_holds(&self, ids: Vec<String>) -> Result<Vec<String>, ApiError> {
        let ids2 = ids.clone();
        let open = |t: Option<Transfer>| {
            t.and_then(|t| t.pending_status) == Some(puhui_ledger::PendingStatus::Pending)
        };
        self.query(
            move |l| ids.into_iter().filter(|id| !open(l.transfer(id))).collect(),
            move |s| {
                let mut stale = Vec::new();
                for id in ids2 {
                    if !open(puhui_store::LedgerStore::transfer(s, &id)?) {
                        stale.push(id);
                    }
                }
                Ok(stale)
            },
        )
        .await
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request.headers().get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(State(app): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let Some(token) = bearer(&request) else {
        return ApiError::unauthenticated("send your API key as `Authorization: Bearer <key>`")
            .into_response();
    };
    let principal = match app.tenants.authenticate(token) {
        Some(p) => Some(p),
        // Created on another node since the last reload?
        None if app.tenants.is_shared() => {
            let (tenants, token) = (Arc::clone(&app.tenants), token.to_string());
            tokio::task::spawn_blocking(move || tenants.lookup_shared(&token)).await.ok().flatten()
        }
        None => None,
    };
    let Some(principal) = principal else {
        return ApiError::unauthenticated("unknown or revoked API key").into_response();
    };
    if let Err(retry_after_secs) = app.limiter.check(&principal.key_id) {
        return ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
                "too many requests for this API key; retry after the Retry-After seconds",
            )
        }
        .into_response();
    }
    request.extensions_mut().insert(principal);
    // Idempotency runs inside authentication (it scopes keys per tenant), called directly rather
    // than as a layer of its own: one middleware layer less per request.
    idempotency::middleware(State(app), request, next).await
}

async fn authenticate_admin(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match bearer(&request) {
        Some(token) if constant_time_eq(&sha256(token.as_bytes()), &app.admin_token_sha256) => {
            idempotency::middleware(State(app), request, next).await
        }
        Some(_) => ApiError::unauthenticated("wrong admin token").into_response(),
        None => ApiError::unauthenticated("send the admin token as `Authorization: Bearer <token>`")
            .into_response(),
    }
}

/// 414 or 431 for a request whose URI or headers are past [`limits::URI_BYTES_MAX`] or
/// [`limits::HEADER_BYTES_MAX`]: a typed JSON error rather than work on (or logs of) huge heads.
fn oversized_head(request: &Request) -> Option<ApiError> {
    let uri_bytes = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_bytes > limits::URI_BYTES_MAX {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            "uri_too_long",
            format!(
                "the request's path and query are {uri_bytes} bytes; at most {} are accepted",
                limits::URI_BYTES_MAX
            ),
        ));
    }
    let header_bytes: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    (header_bytes > limits::HEADER_BYTES_MAX).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "headers_too_large",
            format!(
                "the request's headers are {header_bytes} bytes; at most {} are accepted",
                limits::HEADER_BYTES_MAX
            ),
        )
    })
}

/// The metric label of a method: a static string, so that labelling allocates nothing.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The metric label of a status code (`"201"`): a static string for the codes the API answers.
fn status_label(status: u16) -> metrics::SharedString {
    let known: &'static str = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        501 => "501",
        503 => "503",
        _ => return metrics::SharedString::from(status.to_string()),
    };
    metrics::SharedString::const_str(known)
}

/// Route patterns as `'static` strings for metric labels, each leaked once: the patterns come from
/// the router's fixed set of routes, so the set is bounded by [`ROUTE_LABELS_MAX`].
fn route_label(request: &Request) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let Some(path) = request.extensions().get::<MatchedPath>().map(|m| m.as_str()) else {
        return "unmatched";
    };
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(known) = routes.read().unwrap_or_else(|p| p.into_inner()).get(path) {
        return known;
    }
    let mut routes = routes.write().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = routes.get(path) {
        return known;
    }
    if routes.len() >= ROUTE_LABELS_MAX {
        return "other";
    }
    let leaked: &'static str = Box::leak(path.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// Distinct route patterns labelled in metrics (the router has about 50).
const ROUTE_LABELS_MAX: usize = 256;

/// Request id, in-flight bound, metrics and the access log, around every request.
async fn observe(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = format!("req_{}", app.store.new_id());
    let route = route_label(&request);
    let method = method_label(request.method());
    let permit = Arc::clone(&app.in_flight).try_acquire_owned();
    let oversized = oversized_head(&request);
    let mut response = REQUEST_ID
        .scope(request_id.clone(), async move {
            if let Some(refused) = oversized {
                return refused.into_response();
            }
            match permit {
                Ok(_permit) => next.run(request).await,
                Err(_) => ApiError {
                    retry_after_secs: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "api_error",
                        "overloaded",
                        "too many requests in flight",
                    )
                }
                .into_response(),
            }
        })
        .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    metrics::counter!("puhui_http_requests_total", "route" => route, "method" => method, "status" => status_label(status))
        .increment(1);
    metrics::histogram!("puhui_http_request_duration_seconds", "route" => route).record(seconds);
    if status >= 500 {
        static FAILED: log_budget::LogBudget =
            log_budget::LogBudget::new(limits::FAILED_REQUEST_LOGS_PER_SECOND_MAX);
        if let log_budget::Admit::Log { suppressed_before } = FAILED.admit_now() {
            if suppressed_before > 0 {
                tracing::warn!(
                    lines_left_out = suppressed_before,
                    per_second_max = limits::FAILED_REQUEST_LOGS_PER_SECOND_MAX,
                    "more requests failed than are logged a second (see puhui_http_requests_total)"
                );
            }
            tracing::warn!(
                request_id,
                method,
                route,
                status,
                latency_us = (seconds * 1e6) as u64,
                "request failed"
            );
        }
    } else {
        tracing::debug!(request_id, method, route, status, latency_us = (seconds * 1e6) as u64, "request");
    }
    response
}

/// The router with every route and middleware.
pub fn router(state: Arc<AppState>) -> Router {
    use routes::*;
    let tenant_routes = Router::new()
        .route("/v1/accounts", post(create_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/transfers", get(list_account_transfers))
        .route("/v1/accounts/{id}/balance", get(get_balance))
        .route("/v1/accounts/{id}/freeze", post(freeze_account))
        .route("/v1/accounts/{id}/unfreeze", post(unfreeze_account))
        .route("/v1/accounts/{id}/close", post(close_account))
        .route("/v1/transfers", post(create_transfer))
        .route("/v1/transfers/batch", post(create_transfer_batch))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/transfers/{id}/post", post(post_transfer))
        .route("/v1/transfers/{id}/void", post(void_transfer))
        .route("/v1/decisions", post(risk::create_decision))
        .route("/v1/decisions/{id}", get(risk::get_decision))
        .route("/v1/decisions/{id}/label", post(risk::label_decision))
        .route("/v1/decisions/{id}/proof", get(journal::decision_proof))
        .route("/v1/lists/{name}", get(risk::get_list))
        .route("/v1/lists/{name}/add", post(risk::list_add))
        .route("/v1/lists/{name}/remove", post(risk::list_remove))
        .route("/v1/transfers/{id}/proof", get(journal::transfer_proof))
        .route("/v1/journal/checkpoints/latest", get(journal::latest_checkpoint))
        .route("/v1/journal/checkpoints/{size}", get(journal::checkpoint))
        .route("/v1/journal/consistency", get(journal::consistency))
        .route("/v1/journal/public-key", get(journal::public_key))
        .route("/v1/risk/reviews", get(risk::list_reviews))
        .route("/v1/risk/reviews/{id}/approve", post(risk::approve_review))
        .route("/v1/risk/reviews/{id}/decline", post(risk::decline_review))
        .route("/v1/events", get(events::list_events))
        .route("/v1/events/{id}", get(events::get_event))
        .route("/v1/events/{id}/redeliver", post(webhooks::redeliver_event))
        .route("/v1/webhook_endpoints", post(webhooks::create_endpoint).get(webhooks::list_endpoints))
        .route("/v1/webhook_endpoints/{id}", get(webhooks::get_endpoint).delete(webhooks::delete_endpoint))
        .route("/v1/webhook_endpoints/{id}/rotate_secret", post(webhooks::rotate_secret))
        .route("/v1/webhook_endpoints/{id}/deliveries", get(webhooks::list_deliveries))
        .route_layer(from_fn_with_state(Arc::clone(&state), authenticate));
    let admin_routes = Router::new()
        .route("/v1/tenants", post(create_tenant))
        .route("/v1/tenants/{id}/keys", post(create_key).get(list_keys))
        .route("/v1/tenants/{id}/keys/{key_id}/revoke", post(revoke_key))
        .route("/v1/rulesets", post(risk::create_ruleset).get(risk::list_rulesets))
        .route("/v1/rulesets/activation", post(risk::activate_ruleset))
        .route("/v1/rulesets/{version}", get(risk::get_ruleset))
        .route("/v1/admin/lists/{name}", get(risk::admin_get_list))
        .route("/v1/admin/lists/{name}/add", post(risk::admin_list_add))
        .route("/v1/admin/lists/{name}/remove", post(risk::admin_list_remove))
        .route_layer(from_fn_with_state(Arc::clone(&state), authenticate_admin));
    let public = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .route("/openapi.json", get(openapi_json));
    Router::new()
        .merge(tenant_routes)
        .merge(admin_routes)
        .merge(public)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(Arc::clone(&state), observe))
        .layer(DefaultBodyLimit::max(limits::BODY_BYTES_MAX))
        .with_state(state)
}
