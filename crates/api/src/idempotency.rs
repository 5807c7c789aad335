//! Idempotency keys as Stripe does them, and per-key rate limits.
//!
//! The first request with a key stores its status and body (errors included, except 429 and 5xx,
//! which are safe to retry); a retry with the same key and the same request replays them; the same
//! key with another request is `idempotency_key_reused`; a retry while the first still runs is
//! `request_in_progress`. Keys are scoped per tenant and kept 24 hours: in memory on the embedded
//! store, in PostgreSQL (`puhui_store_pg::control`) when the ledger is there, so that a retry that a
//! load balancer sends to another node is still recognised. What survives a restart of an embedded
//! node is the ledger's own idempotency: when a create request has no id, the id is derived from
//! the idempotency key, so a retry after a restart still cannot create a second object.
//!
//! On PostgreSQL a request still running holds its key for at most [`IDEMPOTENCY_LEASE_MS`]
//! without finishing (its node died): then a retry takes the key over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use puhui_store_pg::control::{IdempotencyClaim, PgControl};

use crate::error::ApiError;
use crate::limits::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_KEY_CHARS_MAX, IDEMPOTENCY_TTL_SECS};
use crate::tenants::Principal;
use crate::AppState;

/// The request's idempotency key (an extension handlers read to derive ids).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    /// A client id derived from the key: the same key always names the same object.
    pub fn derived_id(&self, kind: &str) -> String {
        let digest = blake3::hash(format!("{kind}\u{0}{}", self.0).as_bytes());
        let hex: String = digest.as_bytes()[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("idem_{hex}")
    }
}

enum Slot {
    InProgress,
    Done { status: StatusCode, body: Bytes },
}

struct Entry {
    fingerprint: [u8; 32],
    slot: Slot,
    created: Instant,
}

/// Most bytes of stored response bodies (all tenants); beyond it the oldest keys are forgotten early.
pub const IDEMPOTENCY_BODY_BYTES_MAX: usize = 256 << 20;
/// A response body larger than this is not stored: a retry runs again, which is safe because every
/// create is keyed by its (given or derived) id in the ledger.
pub const IDEMPOTENCY_BODY_BYTES_STORED_MAX: usize = 64 << 10;

type Scope = (String, String);

/// The remembered keys of all tenants.
#[derive(Default)]
pub struct IdempotencyCache {
    inner: Mutex<(HashMap<Scope, Entry>, VecDeque<(Instant, Scope)>, usize)>,
}

enum Begin {
    New,
    InProgress,
    Reused,
    Replay(StatusCode, Bytes),
}

impl IdempotencyCache {
    fn begin(&self, scope: (String, String), fingerprint: [u8; 32]) -> Begin {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order, bytes) = &mut *guard;
        let now = Instant::now();
        let ttl = Duration::from_secs(IDEMPOTENCY_TTL_SECS);
        // Forget expired keys, and the oldest beyond the bounds (keys, queue, stored bytes).
        while let Some((at, key)) = order.front() {
            let within = now.duration_since(*at) < ttl
                && map.len() < IDEMPOTENCY_KEYS_MAX
                && order.len() < 2 * IDEMPOTENCY_KEYS_MAX
                && *bytes <= IDEMPOTENCY_BODY_BYTES_MAX;
            if within {
                break;
            }
            if map.get(key).is_some_and(|e| e.created == *at) {
                if let Some(Entry { slot: Slot::Done { body, .. }, .. }) = map.remove(key) {
                    *bytes -= body.len();
                }
            }
            order.pop_front();
        }
        match map.get(&scope) {
            Some(e) if e.fingerprint != fingerprint => Begin::Reused,
            Some(Entry { slot: Slot::InProgress, .. }) => Begin::InProgress,
            Some(Entry { slot: Slot::Done { status, body }, .. }) => Begin::Replay(*status, body.clone()),
            None => {
                map.insert(scope.clone(), Entry { fingerprint, slot: Slot::InProgress, created: now });
                order.push_back((now, scope));
                Begin::New
            }
        }
    }

    fn complete(&self, scope: &(String, String), status: StatusCode, body: Bytes) {
        if body.len() > IDEMPOTENCY_BODY_BYTES_STORED_MAX {
            self.forget(scope);
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, _, bytes) = &mut *guard;
        if let Some(e) = map.get_mut(scope) {
            *bytes += body.len();
            e.slot = Slot::Done { status, body };
        }
    }

    fn forget(&self, scope: &(String, String)) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0.get(scope).is_some_and(|e| matches!(e.slot, Slot::InProgress)) {
            guard.0.remove(scope);
        }
    }
}

/// On PostgreSQL: a key claimed by a request that has not finished for this long is taken over by
/// a retry (its node died mid-request; requests time out long before this).
pub const IDEMPOTENCY_LEASE_MS: u64 = 60_000;
/// On PostgreSQL: how often a node deletes keys older than the TTL.
pub const IDEMPOTENCY_EXPIRE_EVERY_MS: u64 = 60_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where idempotency keys are kept.
#[derive(Clone)]
pub enum Idempotency {
    /// In this node's memory (the embedded store: one node).
    Memory(Arc<IdempotencyCache>),
    /// In PostgreSQL, shared by every node on the database.
    Postgres(Arc<PgControl>),
}

impl Default for Idempotency {
    fn default() -> Idempotency {
        Idempotency::Memory(Arc::default())
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "unavailable",
        format!("the idempotency store is unavailable: {e}"),
    )
}

impl Idempotency {
    async fn begin(&self, scope: Scope, fingerprint: [u8; 32]) -> Result<Begin, ApiError> {
        match self {
            Idempotency::Memory(cache) => Ok(cache.begin(scope, fingerprint)),
            Idempotency::Postgres(control) => {
                let control = Arc::clone(control);
                let ttl_ms = IDEMPOTENCY_TTL_SECS * 1_000;
                let claim = tokio::task::spawn_blocking(move || {
                    control.claim_idempotency(
                        &scope.0,
                        &scope.1,
                        &fingerprint,
                        now_ms(),
                        ttl_ms,
                        IDEMPOTENCY_LEASE_MS,
                    )
                })
                .await
                .map_err(unavailable)?
                .map_err(unavailable)?;
                Ok(match claim {
                    IdempotencyClaim::New => Begin::New,
                    IdempotencyClaim::InProgress => Begin::InProgress,
                    IdempotencyClaim::Reused => Begin::Reused,
                    IdempotencyClaim::Replay(status, body) => Begin::Replay(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        Bytes::from(body),
                    ),
                })
            }
        }
    }

    async fn complete(&self, scope: Scope, status: StatusCode, body: Bytes) {
        match self {
            Idempotency::Memory(cache) => cache.complete(&scope, status, body),
            Idempotency::Postgres(control) => {
                let control = Arc::clone(control);
                let done = tokio::task::spawn_blocking(move || {
                    if body.len() > IDEMPOTENCY_BODY_BYTES_STORED_MAX {
                        control.forget_idempotency(&scope.0, &scope.1)
                    } else {
                        control.complete_idempotency(&scope.0, &scope.1, status.as_u16(), &body, now_ms())
                    }
                })
                .await;
                if let Ok(Err(e)) = done {
                    // The key stays claimed until its lease ends; a retry then runs again, which
                    // the ledger's ids make safe.
                    tracing::warn!(error = %e, "storing an idempotent response");
                }
            }
        }
    }

    fn forget(&self, scope: Scope) {
        match self {
            Idempotency::Memory(cache) => cache.forget(&scope),
            Idempotency::Postgres(control) => {
                let control = Arc::clone(control);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn_blocking(move || control.forget_idempotency(&scope.0, &scope.1));
                }
            }
        }
    }

    /// On PostgreSQL: deletes expired keys every [`IDEMPOTENCY_EXPIRE_EVERY_MS`] until the
    /// runtime stops (every node does it; the deletes are idempotent and bounded per pass).
    pub fn spawn_expiry(&self) {
        let Idempotency::Postgres(control) = self else { return };
        let control = Arc::clone(control);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(IDEMPOTENCY_EXPIRE_EVERY_MS));
            loop {
                tick.tick().await;
                let control = Arc::clone(&control);
                let before_ms = now_ms().saturating_sub(IDEMPOTENCY_TTL_SECS * 1_000);
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || control.expire_idempotency(before_ms)).await
                {
                    tracing::warn!(error = %e, "expiring idempotency keys");
                }
            }
        });
    }
}

/// Forgets an in-progress key if the request is dropped (client gone) before it completes.
struct InProgressGuard<'a> {
    store: &'a Idempotency,
    scope: Option<(String, String)>,
}

impl Drop for InProgressGuard<'_> {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            self.store.forget(scope);
        }
    }
}

/// The idempotency middleware (runs after authentication, on POST requests with the header).
pub async fn middleware(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(header) = request.headers().get("idempotency-key") else {
        return next.run(request).await;
    };
    let key = match header.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= IDEMPOTENCY_KEY_CHARS_MAX
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_string()
        }
        _ => {
            return ApiError::invalid(
                "idempotency_key_invalid",
                format!("Idempotency-Key must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} visible ASCII characters"),
                Some("Idempotency-Key"),
            )
            .into_response()
        }
    };
    let tenant = match request.extensions().get::<Principal>() {
        Some(p) => p.tenant.to_string(),
        None => "admin".to_string(),
    };
    let (mut parts, body) = request.into_parts();
    let bytes = match crate::routes::read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(parts.uri.path().as_bytes());
    hasher.update(b"?");
    hasher.update(parts.uri.query().unwrap_or("").as_bytes());
    hasher.update(b"\n");
    // The parameters, not their spelling: a JSON body is hashed in one canonical form (keys sorted,
    // no whitespace), so a retry that serialises the same object another way is the same request.
    match serde_json::from_slice::<serde_json::Value>(&bytes).map(|v| serde_json::to_vec(&v)) {
        Ok(Ok(canonical)) => {
            hasher.update(b"json ");
            hasher.update(&canonical);
        }
        _ => {
            hasher.update(b"raw ");
            hasher.update(&bytes);
        }
    }
    let fingerprint = *hasher.finalize().as_bytes();
    let scope = (tenant, key.clone());
    let begin = match app.idempotency.begin(scope.clone(), fingerprint).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match begin {
        Begin::New => {}
        Begin::InProgress => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_error",
                "request_in_progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .with_param("Idempotency-Key")
            .into_response()
        }
        Begin::Reused => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_error",
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
            .with_param("Idempotency-Key")
            .into_response()
        }
        Begin::Replay(status, body) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
    }
    let mut guard = InProgressGuard { store: &app.idempotency, scope: Some(scope) };
    parts.extensions.insert(IdempotencyKey(key));
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let scope = guard.scope.take().expect("scope");
    if parts.status.is_server_error() || parts.status == StatusCode::TOO_MANY_REQUESTS {
        app.idempotency.forget(scope);
    } else {
        app.idempotency.complete(scope, parts.status, body.clone()).await;
    }
    Response::from_parts(parts, Body::from(body))
}

/// Token buckets per API key: `rate` requests per second sustained, bursts up to one second's worth.
pub struct RateLimiter {
    rate_per_s: u32,
    buckets: Mutex<HashMap<String, (u64, Instant)>>,
}

/// Tokens are counted in millionths so the refill is exact integer arithmetic.
const MICRO: u64 = 1_000_000;

impl RateLimiter {
    /// A limiter allowing `rate_per_s` requests per second per key.
    pub fn new(rate_per_s: u32) -> RateLimiter {
        RateLimiter { rate_per_s: rate_per_s.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `key_id`, or says how many seconds to wait.
    pub fn check(&self, key_id: &str) -> Result<(), u64> {
        let capacity = self.rate_per_s as u64 * MICRO;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key_id) {
            buckets.insert(key_id.to_string(), (capacity, now));
        }
        let (tokens, last) = buckets.get_mut(key_id).expect("inserted above");
        let elapsed_us = now.duration_since(*last).as_micros().min(u64::MAX as u128) as u64;
        *tokens = (*tokens).saturating_add(elapsed_us.saturating_mul(self.rate_per_s as u64)).min(capacity);
        *last = now;
        if *tokens >= MICRO {
            *tokens -= MICRO;
            Ok(())
        } else {
            Err(1)
        }
    }
}
