//! Idempotency keys as Stripe does them, and per-key rate limits.
//!
//! The first request with a key stores its status and body (errors included, except 429 and 5xx,
//! which are safe to retry); a retry with the same key and the same request replays them; the same
//! key with another request is `idempotency_key_reused`; a retry while the first still runs is
//! `request_in_progress`. Keys are scoped per tenant and kept 24 hours: in memory on the embedded
//! store, in PostgreSQL (`puhui_store_pg::control`) when the ledger is there, so that a retry that a
//! load balancer sends to another node is still recognised.
//!
//! On the embedded store a key's first request also journals a claim ([`RECORD_IDEMPOTENCY_KEY`]:
//! tenant, key, the request's fingerprint) before the handler runs, in the committer's one FIFO
//! queue: whatever the request writes is durable only after its claim is. The stored response is
//! journaled too ([`RECORD_IDEMPOTENCY_RESPONSE`]), handed to the store before the client gets it
//! but not waited for (that would add a group commit to every keyed request): it rides along with
//! the next group commit (`EmbeddedStore::submit_records_riding`), so it is durable once any later
//! write is acknowledged, or within 100 ms when the store is idle. A restart (or a crash) reads both
//! back for the last 24 hours: the same key with another request is still
//! `idempotency_key_reused`; the same request gets the first response again (status and body,
//! `Idempotent-Replayed: true`). Only if a crash came between the response and the next group
//! commit is there a claim without a response: then the same request runs again, which the
//! ledger's ids make safe (when a create request has no id, the id is derived from the key), so
//! the retry gets the object the first request made — with 200 ("it exists") where the first
//! answer was 201. A key stays bound to its first request's fingerprint for 24 hours, whatever
//! that request's outcome.
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
    Done {
        status: StatusCode,
        body: Bytes,
    },
    /// Claimed in the journal, with no response at hand (read back at start, or the request was
    /// dropped or failed): a request with the same fingerprint runs again.
    Claimed,
}

/// The journal record type of an idempotency key's claim (embedded store). Payload: a format byte
/// (`1`), the tenant and the key each as a `u16` byte length (little-endian) and their bytes, then
/// the request's 32-byte fingerprint.
pub const RECORD_IDEMPOTENCY_KEY: u8 = 32;

/// The journal record type of a stored response (embedded store). Payload: a claim's payload
/// (format byte `1`), then the status as a `u16` (little-endian) and the body's bytes (at most
/// [`IDEMPOTENCY_BODY_BYTES_STORED_MAX`]).
pub const RECORD_IDEMPOTENCY_RESPONSE: u8 = 33;

/// The payload of a claim record.
fn encode_claim(scope: &Scope, fingerprint: &[u8; 32]) -> Vec<u8> {
    encode_claim_with(scope, fingerprint, 0)
}

/// A claim's payload with room for `extra_bytes` more.
fn encode_claim_with(scope: &Scope, fingerprint: &[u8; 32], extra_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + scope.0.len() + scope.1.len() + 32 + extra_bytes);
    out.push(1);
    for part in [&scope.0, &scope.1] {
        // Tenant ids and keys are short (a key at most `IDEMPOTENCY_KEY_CHARS_MAX` characters).
        let len = u16::try_from(part.len()).expect("a tenant id or key of at most 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(fingerprint);
    out
}

/// The payload of a response record.
fn encode_response(scope: &Scope, fingerprint: &[u8; 32], status: StatusCode, body: &[u8]) -> Vec<u8> {
    let mut out = encode_claim_with(scope, fingerprint, 2 + body.len());
    out.extend_from_slice(&status.as_u16().to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A claim record's scope and fingerprint, or `None` if the payload is not one.
fn decode_claim(payload: &[u8]) -> Option<(Scope, [u8; 32])> {
    match decode_claim_prefix(payload)? {
        (scope, fingerprint, []) => Some((scope, fingerprint)),
        _ => None,
    }
}

/// A response record's scope, fingerprint, status and body, or `None` if the payload is not one.
fn decode_response(payload: &[u8]) -> Option<(Scope, [u8; 32], StatusCode, &[u8])> {
    let (scope, fingerprint, rest) = decode_claim_prefix(payload)?;
    let status = StatusCode::from_u16(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)).ok()?;
    let body = &rest[2..];
    (body.len() <= IDEMPOTENCY_BODY_BYTES_STORED_MAX).then_some((scope, fingerprint, status, body))
}

/// The claim at the start of `payload` and the bytes after it.
fn decode_claim_prefix(payload: &[u8]) -> Option<(Scope, [u8; 32], &[u8])> {
    let (&format, mut rest) = payload.split_first()?;
    if format != 1 {
        return None;
    }
    let mut part = || -> Option<String> {
        let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_string();
        rest = &rest[2 + len..];
        Some(text)
    };
    let scope = (part()?, part()?);
    let fingerprint: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    Some((scope, fingerprint, &rest[32..]))
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
    inner: Mutex<Keys>,
}

enum Begin {
    /// A key not seen before: the request runs (and its claim is journaled).
    New,
    /// A claimed key without a response, asked again with the same request: it runs again.
    Rerun,
    InProgress,
    Reused,
    Replay(StatusCode, Bytes),
}

type Keys = (HashMap<Scope, Entry>, VecDeque<(Instant, Scope)>, usize);

/// Forgets expired keys, and the oldest beyond the bounds (keys, queue, stored bytes).
fn expire((map, order, bytes): &mut Keys, now: Instant) {
    let ttl = Duration::from_secs(IDEMPOTENCY_TTL_SECS);
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
}

impl IdempotencyCache {
    fn begin(&self, scope: (String, String), fingerprint: [u8; 32]) -> Begin {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        expire(&mut guard, now);
        let (map, order, _) = &mut *guard;
        match map.get_mut(&scope) {
            Some(e) if e.fingerprint != fingerprint => Begin::Reused,
            Some(Entry { slot: Slot::InProgress, .. }) => Begin::InProgress,
            Some(Entry { slot: Slot::Done { status, body }, .. }) => Begin::Replay(*status, body.clone()),
            Some(e @ Entry { slot: Slot::Claimed, .. }) => {
                e.slot = Slot::InProgress;
                Begin::Rerun
            }
            None => {
                map.insert(scope.clone(), Entry { fingerprint, slot: Slot::InProgress, created: now });
                order.push_back((now, scope));
                Begin::New
            }
        }
    }

    /// Takes in a claim or response record read from the journal at start (journaled
    /// `timestamp_ns`, Unix nanoseconds); claims older than the TTL, and records of another kind,
    /// are skipped. A response is taken only for a key held with the same fingerprint.
    pub fn restore(&self, record_type: u8, timestamp_ns: u64, payload: &[u8]) {
        if record_type == RECORD_IDEMPOTENCY_RESPONSE {
            let Some((scope, fingerprint, status, body)) = decode_response(payload) else {
                tracing::warn!("skipping an idempotent response that does not decode");
                return;
            };
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let (map, _, bytes) = &mut *guard;
            if let Some(e) = map.get_mut(&scope).filter(|e| e.fingerprint == fingerprint) {
                if let Slot::Done { body, .. } = &e.slot {
                    *bytes -= body.len();
                }
                *bytes += body.len();
                e.slot = Slot::Done { status, body: Bytes::copy_from_slice(body) };
            }
            expire(&mut guard, Instant::now());
            return;
        }
        if record_type != RECORD_IDEMPOTENCY_KEY {
            return;
        }
        let Some((scope, fingerprint)) = decode_claim(payload) else {
            tracing::warn!("skipping an idempotency claim that does not decode");
            return;
        };
        let age = Duration::from_nanos(now_ms().saturating_mul(1_000_000).saturating_sub(timestamp_ns));
        if age >= Duration::from_secs(IDEMPOTENCY_TTL_SECS) {
            return;
        }
        let now = Instant::now();
        let created = now.checked_sub(age).unwrap_or(now);
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order, _) = &mut *guard;
        // The journal's first claim of a key is the one that binds it (a later one is a rerun's).
        if !map.contains_key(&scope) {
            map.insert(scope.clone(), Entry { fingerprint, slot: Slot::Claimed, created });
            order.push_back((created, scope));
        }
        expire(&mut guard, now);
    }

    /// Claim and response records that rebuild the keys held now when given to
    /// [`IdempotencyCache::restore`] in order: oldest key first, each claim stamped with when it
    /// was made (Unix nanoseconds), a stored response right after its claim; a key whose request
    /// is running is carried as claimed. Risk control's snapshot carries them, so that a start
    /// need not read the journal from its beginning for the last 24 hours' keys.
    pub fn carried_records(&self) -> Vec<(u8, u64, Vec<u8>)> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order, _) = &*guard;
        let (now, now_ns) = (Instant::now(), unix_now_ns());
        let mut records = Vec::with_capacity(map.len());
        for (at, scope) in order {
            let Some(e) = map.get(scope).filter(|e| e.created == *at) else { continue };
            let claimed_ns = now_ns.saturating_sub(now.saturating_duration_since(*at).as_nanos() as u64);
            records.push((RECORD_IDEMPOTENCY_KEY, claimed_ns, encode_claim(scope, &e.fingerprint)));
            if let Slot::Done { status, body } = &e.slot {
                records.push((
                    RECORD_IDEMPOTENCY_RESPONSE,
                    claimed_ns,
                    encode_response(scope, &e.fingerprint, *status, body),
                ));
            }
        }
        records
    }

    /// Keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// A request that ran and has no response to keep (dropped, or failed with a 5xx or 429):
    /// its key stays claimed (the claim is journaled), so that the same request may run again.
    fn forget(&self, scope: &(String, String)) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = guard.0.get_mut(scope).filter(|e| matches!(e.slot, Slot::InProgress)) {
            e.slot = Slot::Claimed;
        }
    }

    /// A key whose claim could not be journaled: forgotten, as if never seen.
    fn unclaim(&self, scope: &(String, String)) {
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

/// The wall clock in Unix nanoseconds (0 before 1970).
fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

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

    /// Keeps the response for the key's retries; on the embedded store also queues it for the
    /// journal (not waited for: lost only with a crash before the next group commit, after which
    /// the same request runs again).
    async fn complete(
        &self,
        store: &crate::Backend,
        scope: Scope,
        fingerprint: &[u8; 32],
        status: StatusCode,
        body: Bytes,
    ) {
        match self {
            Idempotency::Memory(cache) => {
                if body.len() <= IDEMPOTENCY_BODY_BYTES_STORED_MAX {
                    let record = puhui_store::Record {
                        record_type: RECORD_IDEMPOTENCY_RESPONSE,
                        payload: encode_response(&scope, fingerprint, status, &body),
                    };
                    // Riding along with the next group commit: no wake-up, no reply of its own
                    // (waking the committer for it cost keyed requests ~17 % of their rate).
                    let queued = match store {
                        crate::Backend::Embedded(s) => s.submit_records_riding(vec![record]),
                        other => other.submit_records(vec![record], Box::new(|_| {})),
                    };
                    if let Err(e) = queued {
                        // Kept in memory all the same; after a restart the request runs again.
                        tracing::debug!(error = %e, "an idempotent response was not journaled");
                    }
                }
                cache.complete(&scope, status, body)
            }
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

    /// On the embedded store: queues the claim of a key seen for the first time, before the
    /// request's own writes (one FIFO queue: they are durable only after it). On a failure the key
    /// is forgotten and the request refused.
    fn journal_claim(
        &self,
        store: &crate::Backend,
        scope: &Scope,
        fingerprint: &[u8; 32],
    ) -> Result<(), ApiError> {
        let Idempotency::Memory(cache) = self else { return Ok(()) };
        let record = puhui_store::Record {
            record_type: RECORD_IDEMPOTENCY_KEY,
            payload: encode_claim(scope, fingerprint),
        };
        store.submit_records(vec![record], Box::new(|_| {})).map_err(|e| {
            cache.unclaim(scope);
            unavailable(e)
        })
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
        Begin::New => {
            if let Err(e) = app.idempotency.journal_claim(&app.store, &scope, &fingerprint) {
                return e.into_response();
            }
        }
        Begin::Rerun => {}
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
        app.idempotency.complete(&app.store, scope, &fingerprint, parts.status, body.clone()).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_records_rebuild_the_keys_held() {
        let cache = IdempotencyCache::default();
        let scope = |key: &str| ("ten_1".to_string(), key.to_string());
        for (key, fingerprint) in [("done", [1u8; 32]), ("claimed", [2; 32]), ("running", [3; 32])] {
            assert!(matches!(cache.begin(scope(key), fingerprint), Begin::New));
        }
        cache.complete(&scope("done"), StatusCode::CREATED, Bytes::from_static(b"{\"id\":1}"));
        cache.forget(&scope("claimed"));
        let records = cache.carried_records();
        assert_eq!(records.len(), 4, "three claims and one response");
        let now_ns = unix_now_ns();
        assert!(records.iter().all(|(_, at, _)| *at <= now_ns && now_ns - at < 60_000_000_000));

        let restored = IdempotencyCache::default();
        for (record_type, timestamp_ns, payload) in &records {
            restored.restore(*record_type, *timestamp_ns, payload);
        }
        assert_eq!(restored.len(), 3);
        match restored.begin(scope("done"), [1; 32]) {
            Begin::Replay(status, body) => {
                assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"{\"id\":1}"[..]))
            }
            _ => panic!("the stored response is replayed"),
        }
        // A claimed key, and one whose request was running, run again; another request is refused.
        assert!(matches!(restored.begin(scope("claimed"), [2; 32]), Begin::Rerun));
        assert!(matches!(restored.begin(scope("running"), [3; 32]), Begin::Rerun));
        assert!(matches!(restored.begin(scope("done"), [9; 32]), Begin::Reused));
        // Keys past the TTL (here by a second) are not carried forward by a start.
        let old = IdempotencyCache::default();
        let day_ns = (IDEMPOTENCY_TTL_SECS + 1) * 1_000_000_000;
        for (record_type, timestamp_ns, payload) in &records {
            old.restore(*record_type, timestamp_ns.saturating_sub(day_ns), payload);
        }
        assert!(old.is_empty());
    }

    #[test]
    fn claims_round_trip_and_damaged_ones_are_refused() {
        let scope = ("ten_1".to_string(), "key-ü".to_string());
        let fingerprint = [7u8; 32];
        let payload = encode_claim(&scope, &fingerprint);
        assert_eq!(decode_claim(&payload), Some((scope, fingerprint)));
        for n in 0..payload.len() {
            assert_eq!(decode_claim(&payload[..n]), None, "{n} bytes");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode_claim(&longer), None);
        let mut other_format = payload;
        other_format[0] = 2;
        assert_eq!(decode_claim(&other_format), None);
    }

    #[test]
    fn responses_round_trip_and_damaged_ones_are_refused() {
        let scope = ("ten_1".to_string(), "key-ü".to_string());
        let payload = encode_response(&scope, &[7; 32], StatusCode::CREATED, b"{\"id\":1}");
        assert_eq!(
            decode_response(&payload),
            Some((scope.clone(), [7; 32], StatusCode::CREATED, &b"{\"id\":1}"[..]))
        );
        let claim_bytes = encode_claim(&scope, &[7; 32]).len();
        for n in 0..claim_bytes + 2 {
            assert_eq!(decode_response(&payload[..n]), None, "{n} bytes");
        }
        assert_eq!(decode_claim(&payload), None, "a response is not a claim");
        let mut bad_status = payload.clone();
        bad_status[claim_bytes..claim_bytes + 2].copy_from_slice(&1_000u16.to_le_bytes());
        assert_eq!(decode_response(&bad_status), None);
        let huge = encode_response(
            &scope,
            &[7; 32],
            StatusCode::OK,
            &vec![b' '; IDEMPOTENCY_BODY_BYTES_STORED_MAX + 1],
        );
        assert_eq!(decode_response(&huge), None);
    }

    #[test]
    fn a_restored_response_is_replayed_for_the_same_request_only() {
        let cache = IdempotencyCache::default();
        let (scope, other) = (("ten_1".to_string(), "k".to_string()), ("ten_1".to_string(), "o".to_string()));
        let now_ns = now_ms() * 1_000_000;
        cache.restore(RECORD_IDEMPOTENCY_KEY, now_ns, &encode_claim(&scope, &[1; 32]));
        cache.restore(
            RECORD_IDEMPOTENCY_RESPONSE,
            now_ns,
            &encode_response(&scope, &[1; 32], StatusCode::CREATED, b"a"),
        );
        // A response for a key not held, or held for another request, is not taken.
        cache.restore(
            RECORD_IDEMPOTENCY_RESPONSE,
            now_ns,
            &encode_response(&other, &[1; 32], StatusCode::OK, b"b"),
        );
        cache.restore(RECORD_IDEMPOTENCY_KEY, now_ns, &encode_claim(&other, &[2; 32]));
        cache.restore(
            RECORD_IDEMPOTENCY_RESPONSE,
            now_ns,
            &encode_response(&other, &[3; 32], StatusCode::OK, b"c"),
        );
        cache.restore(RECORD_IDEMPOTENCY_RESPONSE, now_ns, b"\x01");
        match cache.begin(scope.clone(), [1; 32]) {
            Begin::Replay(status, body) => assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"a"[..])),
            _ => panic!("not replayed"),
        }
        assert!(matches!(cache.begin(scope, [9; 32]), Begin::Reused));
        assert!(matches!(cache.begin(other, [2; 32]), Begin::Rerun));
        assert_eq!(cache.inner.lock().unwrap().2, 1, "stored bytes are counted");
    }

    #[test]
    fn a_restored_claim_binds_its_key_and_lets_the_same_request_run_again() {
        let cache = IdempotencyCache::default();
        let scope = ("ten_1".to_string(), "k".to_string());
        let now_ns = now_ms() * 1_000_000;
        cache.restore(RECORD_IDEMPOTENCY_KEY, now_ns - 1_000_000_000, &encode_claim(&scope, &[1; 32]));
        // Too old, another record type, a damaged payload: skipped.
        let day_ns = (IDEMPOTENCY_TTL_SECS + 1) * 1_000_000_000;
        let old = ("ten_1".to_string(), "old".to_string());
        cache.restore(RECORD_IDEMPOTENCY_KEY, now_ns - day_ns - 1, &encode_claim(&old, &[1; 32]));
        cache.restore(RECORD_IDEMPOTENCY_KEY + 1, now_ns, &encode_claim(&old, &[1; 32]));
        cache.restore(RECORD_IDEMPOTENCY_KEY, now_ns, b"\x01");
        assert_eq!(cache.len(), 1);
        assert!(matches!(cache.begin(scope.clone(), [2; 32]), Begin::Reused));
        assert!(matches!(cache.begin(scope.clone(), [1; 32]), Begin::Rerun));
        assert!(matches!(cache.begin(scope.clone(), [1; 32]), Begin::InProgress));
        // A rerun that fails keeps the key bound; one that answers is replayed from then on.
        cache.forget(&scope);
        assert!(matches!(cache.begin(scope.clone(), [2; 32]), Begin::Reused));
        assert!(matches!(cache.begin(scope.clone(), [1; 32]), Begin::Rerun));
        cache.complete(&scope, StatusCode::CREATED, Bytes::from_static(b"{}"));
        assert!(matches!(cache.begin(scope.clone(), [1; 32]), Begin::Replay(StatusCode::CREATED, _)));
        assert!(matches!(cache.begin(old, [1; 32]), Begin::New));
    }
}
