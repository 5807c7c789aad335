//! Webhooks: tenants register endpoints; every event of the types an endpoint asked for is POSTed
//! to it, signed, at least once.
//!
//! - Signature (as Stripe's): `Puhui-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//!   "<t>.<raw body>")>`, one `v1` per live secret (after a rotation the old secret signs too until
//!   its grace period ends). Receivers should refuse a `t` more than [`SIGNATURE_TOLERANCE_SECS`]
//!   from their clock (docs/WEBHOOKS.md has the recipe).
//! - Retries: a non-2xx answer, a timeout or a connection error is retried after
//!   `min(base·2^(n-1), cap)` with full jitter in `[½, 1]` of it (base 30 s, cap 12 h), at most
//!   [`DELIVERY_ATTEMPTS_MAX`] attempts and never later than [`DELIVERY_WINDOW_SECS`] (3 days) after
//!   the first; then the delivery is `failed` (it can still be redelivered by hand).
//! - State: endpoints (with their secrets: they are needed to sign), deliveries and the dispatcher's
//!   journal cursor live in `DATA_DIR/webhooks.json`, rewritten atomically (mode 0600): endpoint
//!   changes before the API answers, delivery progress at most every [`STATE_SAVE_EVERY_MS`]. After a
//!   crash, deliveries made from events after the saved cursor are made again and attempts not yet
//!   saved are sent again: at least once, never lost. Receivers de-duplicate by event id.
//! - State on PostgreSQL (`serve --store postgres://…`, `Storage::Pg`, SQL in `webhooks/pg.rs`):
//!   the same endpoints and deliveries as tables every node reads and changes, each change saved
//!   before the API answers and each attempt's outcome as it ends; ingesting events is one
//!   transaction with the cursor. The dispatcher runs on the one node holding [`DISPATCHER_LEASE`]
//!   (an advisory lock); another node takes over when that one's session ends.
//! - Bounds: [`PENDING_DELIVERIES_MAX`] deliveries waiting (then the dispatcher stops reading events:
//!   the journal holds them), [`DELIVERIES_IN_FLIGHT_MAX`] requests at once, a delivery log of
//!   [`DELIVERY_LOG_PER_ENDPOINT_MAX`] finished deliveries per endpoint.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use hmac::{Hmac, Mac};
use puhui_events::{event_id, parse_event_id, EventType};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorEnvelope};
use crate::events::{event_log, parse_type_filter, EventLog};
use crate::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::routes::{ApiJson, ApiPath, OptionalJson};
use crate::tenants::Principal;
use crate::AppState;

mod pg;

/// Endpoints per tenant.
pub const ENDPOINTS_PER_TENANT_MAX: usize = 16;
/// Endpoints in all.
pub const ENDPOINTS_MAX: usize = 1_000;
/// Entries in an endpoint's `enabled_events`.
pub const ENABLED_EVENTS_MAX: usize = 16;
/// Length of an endpoint URL.
pub const URL_BYTES_MAX: usize = 2_048;
/// Length of an endpoint description.
pub const DESCRIPTION_BYTES_MAX: usize = 200;
/// Deliveries waiting to be sent (all endpoints); beyond it no new events are read until some finish.
pub const PENDING_DELIVERIES_MAX: usize = 10_000;
/// Finished deliveries kept per endpoint for the delivery log.
pub const DELIVERY_LOG_PER_ENDPOINT_MAX: usize = 100;
/// Attempts per delivery.
pub const DELIVERY_ATTEMPTS_MAX: u32 = 16;
/// No attempt is made later than this after a delivery's first attempt.
pub const DELIVERY_WINDOW_SECS: u64 = 3 * 24 * 3600;
/// First retry delay (doubles per attempt, jittered).
pub const RETRY_BASE_MS_DEFAULT: u64 = 30_000;
/// Longest retry delay, as a multiple of the base (30 s · 1440 = 12 h).
pub const RETRY_CAP_BASES: u64 = 1_440;
/// Test-only: the retry base in milliseconds (so tests do not wait 30 s).
pub const RETRY_BASE_ENV: &str = "PUHUI_WEBHOOK_RETRY_BASE_MS";
/// Set to `1` to let tenants register endpoints on loopback, private and link-local addresses (a
/// receiver on the same machine in development and tests). Off by default: a tenant's URL must not
/// reach the operator's internal network or a cloud metadata service (server-side request forgery).
pub const ALLOW_PRIVATE_ENV: &str = "PUHUI_WEBHOOK_ALLOW_PRIVATE";
/// Time for a whole delivery request (connect, send, answer headers).
pub const DELIVERY_TIMEOUT_MS: u64 = 10_000;
/// Time to connect to a receiver.
pub const DELIVERY_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Delivery requests in flight at once.
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 32;
/// Journal entries turned into deliveries per dispatcher step.
pub const INGEST_SPAN_ENTRIES_MAX: u64 = 4_096;
/// Delivery progress is saved at most this often.
pub const STATE_SAVE_EVERY_MS: u64 = 500;
/// Longest the dispatcher sleeps between looks at its queue.
pub const DISPATCH_TICK_MS_MAX: u64 = 100;
/// Default grace period of the old secret after a rotation.
pub const SECRET_GRACE_SECS_DEFAULT: u64 = 24 * 3600;
/// Longest grace period of an old secret.
pub const SECRET_GRACE_SECS_MAX: u64 = 7 * 24 * 3600;
/// What receivers should accept between `t` and their clock (replay guard), documented for them.
pub const SIGNATURE_TOLERANCE_SECS: u64 = 300;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "Puhui-Signature";
/// Most bytes of a receiver's error text kept in the delivery log.
pub const ERROR_TEXT_BYTES_MAX: usize = 200;

/// The file holding endpoints, deliveries and the dispatcher cursor.
pub const WEBHOOKS_FILE: &str = "webhooks.json";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn format_ms(ms: u64) -> String {
    puhui_events::event::format_ns(ms.saturating_mul(1_000_000))
}

fn random_text(len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..32)] as char).collect()
}

/// HMAC-SHA256 of `"<t>.<body>"` under `secret` (its UTF-8 bytes), lower-case hex.
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Puhui-Signature` value: `t=<t>,v1=<sig>[,v1=<sig>…]`, one `v1` per secret.
pub fn signature_header<'a>(secrets: impl IntoIterator<Item = &'a str>, t: u64, body: &[u8]) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&sign(secret, t, body));
    }
    header
}

/// The delay before attempt `attempts + 1` after `attempts` failed ones, with jitter in `[½, 1]`.
pub fn retry_delay_ms(attempts: u32, base_ms: u64, jitter: f64) -> u64 {
    let exp = attempts.saturating_sub(1).min(30);
    let delay = base_ms.saturating_mul(1u64 << exp).min(base_ms.saturating_mul(RETRY_CAP_BASES));
    let jitter = jitter.clamp(0.0, 1.0);
    (delay as f64 * (0.5 + 0.5 * jitter)) as u64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Secret {
    secret: String,
    /// When an old secret stops signing (None: the current one).
    expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Endpoint {
    id: String,
    tenant: String,
    url: String,
    enabled_events: Vec<String>,
    description: Option<String>,
    secrets: Vec<Secret>,
    created_at_ms: u64,
    /// Events from this journal sequence on are delivered (the durable end at registration).
    from_seq: u64,
}

impl Endpoint {
    fn kinds(&self) -> Vec<EventType> {
        if self.enabled_events.iter().any(|e| e == "*") {
            return Vec::new();
        }
        let mut kinds: Vec<EventType> =
            self.enabled_events.iter().flat_map(|e| parse_type_filter(e, "").unwrap_or_default()).collect();
        kinds.sort_by_key(|k| k.code());
        kinds.dedup();
        kinds
    }

    fn live_secrets(&self, now_ms: u64) -> Vec<String> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at_ms.is_none_or(|at| at > now_ms))
            .map(|s| s.secret.clone())
            .collect()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Succeeded,
    /// Gave up (attempts or time exhausted).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    number: u64,
    endpoint_id: String,
    tenant: String,
    event_seq: u64,
    event_type: String,
    status: DeliveryStatus,
    attempts: u32,
    created_at_ms: u64,
    first_attempt_at_ms: Option<u64>,
    next_attempt_at_ms: u64,
    last_attempt_at_ms: Option<u64>,
    last_status_code: Option<u16>,
    last_error: Option<String>,
}

fn delivery_id(number: u64) -> String {
    format!("wd_{number:012}")
}

fn parse_delivery_id(text: &str) -> Option<u64> {
    text.strip_prefix("wd_").filter(|d| d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    endpoints: Vec<Endpoint>,
    deliveries: Vec<Delivery>,
    /// Events below this journal sequence have been turned into deliveries.
    cursor: u64,
    next_delivery: u64,
}

struct Inner {
    p: Persisted,
    dirty: bool,
}

/// Why a webhook change failed.
#[derive(Debug)]
enum HookError {
    NotFound(&'static str),
    Limit(String),
    Io(String),
    /// A redelivery found no endpoint: the one named (`endpoint_id`) is not the tenant's, or none of
    /// the tenant's endpoints takes the event's type.
    NoTarget {
        named: bool,
    },
}

impl From<HookError> for ApiError {
    fn from(e: HookError) -> Self {
        match e {
            HookError::NotFound(what) => ApiError::not_found(what, "id"),
            HookError::Limit(what) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "limit_reached",
                what,
            ),
            HookError::Io(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", e),
            HookError::NoTarget { named: true } => ApiError::not_found("webhook endpoint", "endpoint_id"),
            HookError::NoTarget { named: false } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "invalid_request",
                "no webhook endpoint of yours takes this event's type",
            ),
        }
    }
}

/// Where the webhook state lives.
enum Storage {
    /// `DATA_DIR/webhooks.json` (the embedded store): in memory, rewritten atomically.
    File { path: PathBuf, inner: Mutex<Inner>, save_lock: Mutex<()> },
    /// PostgreSQL tables (`puhui_webhook_*`, the cursor in `puhui_event_cursors`), shared by every
    /// node; the dispatcher runs on the node holding the lease.
    Pg { hooks: pg::PgHooks, lease: puhui_store_pg::PgLease },
}

/// Endpoints, deliveries and the dispatcher.
pub struct Webhooks {
    storage: Storage,
    /// Deliveries being attempted by this node's dispatcher.
    in_flight: Mutex<HashSet<u64>>,
    /// On PostgreSQL: the dispatcher cursor as last read or written by this node (never ahead of
    /// the database's), so that an idle dispatcher does not query for nothing.
    cursor_seen: std::sync::atomic::AtomicU64,
    events: Arc<EventLog>,
    http: reqwest::Client,
    wake: tokio::sync::Notify,
    retry_base_ms: u64,
}

/// The lease of the webhook dispatcher (one dispatcher among the nodes on a database).
pub const DISPATCHER_LEASE: &str = "webhook-dispatcher";

fn allow_private() -> bool {
    std::env::var(ALLOW_PRIVATE_ENV).is_ok_and(|v| v == "1" || v == "true")
}

/// Whether an address is on the public internet: not loopback, private, link-local (cloud metadata
/// services live at 169.254.169.254), carrier-grade NAT, unspecified, multicast or broadcast.
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19)))
        }
        // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, also ::1) and NAT64
        // (64:ff9b::a.b.c.d) addresses reach the IPv4 address inside.
        IpAddr::V6(v6) => match v6.to_ipv4().or_else(|| {
            let s = v6.segments();
            (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
                .then(|| std::net::Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
        }) {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// Resolves delivery hosts to public addresses only (a name may resolve to an internal address, or
/// start to after it was registered): the check happens where the connection is made.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> =
                resolved.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let why =
                    format!("{host} resolves to no public address (set {ALLOW_PRIVATE_ENV}=1 to allow)");
                return Err(why.into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder();
    let builder = if allow_private() { builder } else { builder.dns_resolver(Arc::new(PublicAddressesOnly)) };
    builder
        .connect_timeout(Duration::from_millis(DELIVERY_CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(DELIVERY_TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("puhui-webhooks/1")
        .build()
        .map_err(|e| format!("webhook HTTP client: {e}"))
}

fn retry_base_ms() -> u64 {
    std::env::var(RETRY_BASE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(RETRY_BASE_MS_DEFAULT)
}

/// A new pending delivery, due now.
fn new_delivery(
    number: u64,
    endpoint_id: String,
    tenant: String,
    seq: u64,
    kind: &str,
    now: u64,
) -> Delivery {
    Delivery {
        number,
        endpoint_id,
        tenant,
        event_seq: seq,
        event_type: kind.to_string(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        created_at_ms: now,
        first_attempt_at_ms: None,
        next_attempt_at_ms: now,
        last_attempt_at_ms: None,
        last_status_code: None,
        last_error: None,
    }
}

/// The deliveries to make for the events in `[from, to)`: `(endpoint, tenant, sequence, type)` for
/// every endpoint and indexed event of its tenant and types, from the endpoint's `from_seq` on.
fn plan_deliveries(
    endpoints: &[Endpoint],
    events: &EventLog,
    from: u64,
    to: u64,
) -> Vec<(String, String, u64, EventType)> {
    let mut created = Vec::new();
    for endpoint in endpoints {
        let start = from.max(endpoint.from_seq);
        if start >= to {
            continue;
        }
        let kinds = endpoint.kinds();
        let max = INGEST_SPAN_ENTRIES_MAX as usize;
        for (seq, kind) in events.between(&endpoint.tenant, start, to, &kinds, max) {
            created.push((endpoint.id.clone(), endpoint.tenant.clone(), seq, kind));
        }
    }
    created
}

/// Records an attempt's outcome on `d`: succeeded, or failed and retried after
/// [`retry_delay_ms`], or given up (attempts or window exhausted).
fn apply_outcome(
    d: &mut Delivery,
    outcome: Result<u16, (Option<u16>, String)>,
    kind: Option<&'static str>,
    now: u64,
    base_ms: u64,
) {
    if let Some(kind) = kind {
        d.event_type = kind.to_string();
    }
    d.attempts += 1;
    d.last_attempt_at_ms = Some(now);
    let first = *d.first_attempt_at_ms.get_or_insert(now);
    match outcome {
        Ok(code) => {
            d.status = DeliveryStatus::Succeeded;
            d.last_status_code = Some(code);
            d.last_error = None;
            metrics::counter!("puhui_webhook_deliveries_total", "outcome" => "succeeded").increment(1);
        }
        Err((code, error)) => {
            d.last_status_code = code;
            d.last_error = Some(error);
            let next = now + retry_delay_ms(d.attempts, base_ms, rand::rng().random::<f64>());
            let window_end = first + DELIVERY_WINDOW_SECS * 1_000;
            if d.attempts >= DELIVERY_ATTEMPTS_MAX || next > window_end {
                d.status = DeliveryStatus::Failed;
                metrics::counter!("puhui_webhook_deliveries_total", "outcome" => "failed").increment(1);
            } else {
                d.next_attempt_at_ms = next;
                metrics::counter!("puhui_webhook_deliveries_total", "outcome" => "retry").increment(1);
            }
        }
    }
}

/// A new secret on `e`; the old ones end at the latest after `grace_secs`, expired ones are dropped.
fn rotate_secrets(e: &mut Endpoint, secret: &str, now: u64, grace_secs: u64) {
    let until = now + grace_secs * 1_000;
    for s in &mut e.secrets {
        s.expires_at_ms = Some(s.expires_at_ms.map_or(until, |at| at.min(until)));
    }
    e.secrets.retain(|s| s.expires_at_ms.is_some_and(|at| at > now));
    e.secrets.push(Secret { secret: secret.to_string(), expires_at_ms: None });
}

/// The endpoints of `tenant` a redelivery of an event of type `kind` goes to: the one named, or
/// every one that takes the type.
fn redelivery_targets(
    endpoints: &[Endpoint],
    tenant: &str,
    named: Option<&str>,
    kind: EventType,
) -> Result<Vec<String>, HookError> {
    let targets: Vec<String> = endpoints
        .iter()
        .filter(|e| e.tenant == tenant)
        .filter(|e| match named {
            Some(want) => e.id == want,
            None => {
                let kinds = e.kinds();
                kinds.is_empty() || kinds.contains(&kind)
            }
        })
        .map(|e| e.id.clone())
        .collect();
    if targets.is_empty() {
        return Err(HookError::NoTarget { named: named.is_some() });
    }
    Ok(targets)
}

/// The limits on endpoints, given how many the tenant and everyone have.
fn check_endpoint_limits(ours: usize, all: usize) -> Result<(), HookError> {
    if ours >= ENDPOINTS_PER_TENANT_MAX {
        return Err(HookError::Limit(format!(
            "at most {ENDPOINTS_PER_TENANT_MAX} webhook endpoints per tenant"
        )));
    }
    if all >= ENDPOINTS_MAX {
        return Err(HookError::Limit(format!("at most {ENDPOINTS_MAX} webhook endpoints in all")));
    }
    Ok(())
}

fn pending_limit(pending: usize, more: usize) -> Result<(), HookError> {
    if pending + more > PENDING_DELIVERIES_MAX {
        return Err(HookError::Limit(format!(
            "{PENDING_DELIVERIES_MAX} deliveries are waiting; retry later"
        )));
    }
    Ok(())
}

/// The error of a file-storage step reached on PostgreSQL (each caller checks `pg()` first).
fn not_file() -> HookError {
    HookError::Io("webhooks: no state file on this store".into())
}

/// Runs a blocking database call of the webhook store on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HookError> + Send + 'static,
) -> Result<T, HookError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| HookError::Io(e.to_string()))?
}

impl Webhooks {
    /// Loads `DATA_DIR/webhooks.json` (or starts empty, delivering events from the durable end of
    /// the journal on).
    pub fn open(dir: &Path, events: Arc<EventLog>) -> Result<Arc<Webhooks>, String> {
        let path = dir.join(WEBHOOKS_FILE);
        let p = match puhui_events::cursor::load_json::<Persisted>(&path)? {
            Some(p) => p,
            None => Persisted { cursor: events.durable_entries(), ..Default::default() },
        };
        let storage =
            Storage::File { path, inner: Mutex::new(Inner { p, dirty: false }), save_lock: Mutex::new(()) };
        Webhooks::with_storage(storage, events)
    }

    /// Webhooks on PostgreSQL: the state in the store's database (the dispatcher cursor starts at
    /// the durable end of the journal the first time), the dispatcher on the node holding
    /// [`DISPATCHER_LEASE`].
    pub async fn open_postgres(
        store: Arc<puhui_store_pg::PgStore>,
        events: Arc<EventLog>,
    ) -> Result<Arc<Webhooks>, String> {
        let hooks = pg::PgHooks::new(Arc::clone(&store));
        let start = events.durable_entries();
        let (hooks, lease) = tokio::task::spawn_blocking(move || {
            hooks.init_cursor(start).map_err(|e| format!("webhooks: {e:?}"))?;
            let lease = store.lease(DISPATCHER_LEASE).map_err(|e| e.to_string())?;
            Ok::<_, String>((hooks, lease))
        })
        .await
        .map_err(|e| e.to_string())??;
        let storage = Storage::Pg { hooks, lease };
        Webhooks::with_storage(storage, events)
    }

    fn with_storage(storage: Storage, events: Arc<EventLog>) -> Result<Arc<Webhooks>, String> {
        Ok(Arc::new(Webhooks {
            storage,
            in_flight: Mutex::new(HashSet::new()),
            cursor_seen: std::sync::atomic::AtomicU64::new(0),
            events,
            http: http_client()?,
            wake: tokio::sync::Notify::new(),
            retry_base_ms: retry_base_ms(),
        }))
    }

    fn file(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        match &self.storage {
            Storage::File { inner, .. } => Some(inner.lock().unwrap_or_else(|p| p.into_inner())),
            Storage::Pg { .. } => None,
        }
    }

    fn pg(&self) -> Option<pg::PgHooks> {
        match &self.storage {
            Storage::File { .. } => None,
            Storage::Pg { hooks, .. } => Some(hooks.clone()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the state file (blocking; the file storage only). Snapshots are taken in order under
    /// `save_lock`, so a later state is never overwritten by an earlier one.
    fn save_blocking(&self) -> Result<(), HookError> {
        let Storage::File { path, inner, save_lock } = &self.storage else { return Ok(()) };
        let _order = save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.dirty = false;
            serde_json::to_vec(&inner.p).expect("webhook state serialises")
        };
        write_private_atomic(path, &bytes).map_err(|e| {
            inner.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
            HookError::Io(format!("{}: {e}", path.display()))
        })
    }

    async fn save(self: &Arc<Self>) -> Result<(), HookError> {
        if self.pg().is_some() {
            return Ok(());
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.save_blocking())
            .await
            .map_err(|e| HookError::Io(e.to_string()))?
    }

    /// Whether this node dispatches: always on the embedded store; on PostgreSQL while it holds the
    /// dispatcher lease.
    fn dispatching(&self) -> bool {
        match &self.storage {
            Storage::File { .. } => true,
            Storage::Pg { lease, .. } => lease.is_held(),
        }
    }

    /// Runs the dispatcher until `shutdown`, then saves.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_save = std::time::Instant::now();
        let mut was_dispatching = false;
        while !*shutdown.borrow() {
            let dispatching = self.dispatching();
            if dispatching != was_dispatching && self.pg().is_some() {
                tracing::info!(
                    dispatching,
                    "webhooks: dispatcher lease {}",
                    if dispatching { "taken" } else { "not held" }
                );
                // The database's cursor may have moved under another node.
                self.cursor_seen.store(0, Ordering::Release);
            }
            was_dispatching = dispatching;
            if dispatching {
                if let Err(e) = self.ingest().await {
                    tracing::warn!(error = ?e, "webhooks: cannot make deliveries; retrying");
                }
                self.start_due(&mut tasks).await;
            }
            let dirty = self.file().is_some_and(|inner| inner.dirty);
            if last_save.elapsed().as_millis() as u64 >= STATE_SAVE_EVERY_MS && dirty {
                last_save = std::time::Instant::now();
                if let Err(e) = self.save().await {
                    tracing::warn!(error = ?e, "webhooks: cannot save delivery state; retrying");
                }
            }
            let sleep_ms = self.next_due_in_ms().clamp(1, DISPATCH_TICK_MS_MAX);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = self.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.changed() => {}
            }
        }
        tasks.abort_all();
        if let Err(e) = self.save().await {
            tracing::warn!(error = ?e, "webhooks: cannot save delivery state at shutdown");
        }
    }

    fn next_due_in_ms(&self) -> u64 {
        // On PostgreSQL another node may add a delivery at any time: look every tick.
        let Some(inner) = self.file() else { return DISPATCH_TICK_MS_MAX };
        let in_flight = self.in_flight();
        let now = now_ms();
        inner
            .p
            .deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending && !in_flight.contains(&d.number))
            .map(|d| d.next_attempt_at_ms.saturating_sub(now))
            .min()
            .unwrap_or(DISPATCH_TICK_MS_MAX)
    }

    /// Turns newly indexed events into deliveries (unless too many wait already).
    async fn ingest(&self) -> Result<(), HookError> {
        let indexed = self.events.indexed_until();
        let Some(pg) = self.pg() else {
            self.ingest_file(indexed);
            return Ok(());
        };
        if indexed <= self.cursor_seen.load(Ordering::Acquire) {
            return Ok(());
        }
        let events = Arc::clone(&self.events);
        let cursor = blocking(move || {
            pg.ingest(indexed, now_ms(), |from, to, endpoints| plan_deliveries(endpoints, &events, from, to))
        })
        .await?;
        self.cursor_seen.fetch_max(cursor, Ordering::AcqRel);
        Ok(())
    }

    fn ingest_file(&self, indexed: u64) {
        let Some(mut inner) = self.file() else { return };
        let from = inner.p.cursor;
        if indexed <= from {
            return;
        }
        let pending = inner.p.deliveries.iter().filter(|d| d.status == DeliveryStatus::Pending).count();
        metrics::gauge!("puhui_webhook_deliveries_pending").set(pending as f64);
        if pending >= PENDING_DELIVERIES_MAX {
            return;
        }
        let to = indexed.min(from + INGEST_SPAN_ENTRIES_MAX);
        let now = now_ms();
        let created = plan_deliveries(&inner.p.endpoints, &self.events, from, to);
        for (endpoint_id, tenant, seq, kind) in created.iter().cloned() {
            let number = inner.p.next_delivery;
            inner.p.next_delivery += 1;
            inner.p.deliveries.push(new_delivery(number, endpoint_id, tenant, seq, kind.as_str(), now));
        }
        // Saved only when deliveries were made: a cursor that moved past events nobody takes can be
        // re-read after a crash without effect (and an idle tenant costs no fsync).
        inner.dirty |= !created.is_empty();
        inner.p.cursor = to;
    }

    /// Due deliveries not in flight, at most `room`: `(number, event sequence, url, live secrets)`.
    async fn due(&self, now: u64, room: usize) -> Result<Vec<(u64, u64, String, Vec<String>)>, HookError> {
        if room == 0 {
            return Ok(Vec::new());
        }
        let Some(pg) = self.pg() else {
            let inner = self.file().ok_or_else(not_file)?;
            let in_flight = self.in_flight();
            let endpoints: HashMap<&str, &Endpoint> =
                inner.p.endpoints.iter().map(|e| (e.id.as_str(), e)).collect();
            return Ok(inner
                .p
                .deliveries
                .iter()
                .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at_ms <= now)
                .filter(|d| !in_flight.contains(&d.number))
                .filter_map(|d| {
                    let e = endpoints.get(d.endpoint_id.as_str())?;
                    Some((d.number, d.event_seq, e.url.clone(), e.live_secrets(now)))
                })
                .take(room)
                .collect());
        };
        let in_flight: Vec<u64> = self.in_flight().iter().copied().collect();
        let due = blocking(move || pg.due(now, room, &in_flight)).await?;
        Ok(due
            .into_iter()
            .map(|(number, seq, e)| (number, seq, e.url.clone(), e.live_secrets(now)))
            .collect())
    }

    async fn start_due(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) {
        let now = now_ms();
        let room = DELIVERIES_IN_FLIGHT_MAX.saturating_sub(self.in_flight().len());
        let due = match self.due(now, room).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = ?e, "webhooks: cannot read due deliveries; retrying");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        self.in_flight().extend(due.iter().map(|d| d.0));
        let mut seqs: Vec<u64> = due.iter().map(|d| d.1).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let bodies: HashMap<u64, (Vec<u8>, &'static str)> = match self.events.read(seqs).await {
            Ok(events) => events.into_iter().map(|e| (e.sequence, (e.to_json(), e.kind.as_str()))).collect(),
            Err(e) => {
                tracing::warn!(error = %e.0, "webhooks: cannot read events; retrying");
                let mut in_flight = self.in_flight();
                for (number, ..) in &due {
                    in_flight.remove(number);
                }
                return;
            }
        };
        for (number, seq, url, secrets) in due {
            let me = Arc::clone(self);
            let body = bodies.get(&seq).cloned();
            let kind = body.as_ref().map(|b| b.1);
            tasks.spawn(async move {
                let outcome = match body {
                    Some((body, kind)) => me.attempt(number, seq, kind, &url, &secrets, body).await,
                    None => Err((None, "the event could not be read from the journal".to_string())),
                };
                me.finish(number, outcome, kind).await;
            });
        }
    }

    async fn attempt(
        &self,
        number: u64,
        seq: u64,
        kind: &str,
        url: &str,
        secrets: &[String],
        body: Vec<u8>,
    ) -> Result<u16, (Option<u16>, String)> {
        let t = now_ms() / 1_000;
        let signature = signature_header(secrets.iter().map(String::as_str), t, &body);
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Puhui-Event-Id", event_id(seq))
            .header("Puhui-Event-Type", kind)
            .header("Puhui-Delivery-Id", delivery_id(number))
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => {
                let code = response.status().as_u16();
                Err((Some(code), format!("the endpoint answered {code}")))
            }
            Err(e) => {
                let mut text = if e.is_timeout() {
                    format!("timed out after {DELIVERY_TIMEOUT_MS} ms")
                } else if e.is_connect() {
                    "could not connect".to_string()
                } else {
                    e.to_string()
                };
                text.truncate(ERROR_TEXT_BYTES_MAX);
                Err((None, text))
            }
        }
    }

    async fn finish(
        self: &Arc<Self>,
        number: u64,
        outcome: Result<u16, (Option<u16>, String)>,
        kind: Option<&'static str>,
    ) {
        let now = now_ms();
        let base = self.retry_base_ms;
        if let Some(pg) = self.pg() {
            let done =
                blocking(move || pg.finish(number, |d| apply_outcome(d, outcome, kind, now, base))).await;
            if let Err(e) = done {
                // The delivery stays pending as last saved: it is attempted again (at least once).
                tracing::warn!(error = ?e, number, "webhooks: cannot save a delivery attempt");
            }
            self.in_flight().remove(&number);
            return;
        }
        let Some(mut inner) = self.file() else { return };
        self.in_flight().remove(&number);
        inner.dirty = true;
        let Some(d) = inner.p.deliveries.iter_mut().find(|d| d.number == number) else { return };
        apply_outcome(d, outcome, kind, now, base);
        if d.status != DeliveryStatus::Pending {
            let endpoint = d.endpoint_id.clone();
            trim_log(&mut inner.p.deliveries, &endpoint);
        }
    }

    // --------------------------------------------------------------------------------------------
    // What the HTTP handlers change and read, on either storage.

    /// Adds an endpoint (within the limits) and saves it before answering.
    async fn add_endpoint(self: &Arc<Self>, endpoint: Endpoint) -> Result<(), HookError> {
        if let Some(pg) = self.pg() {
            return blocking(move || pg.add_endpoint(&endpoint)).await;
        }
        {
            let mut inner = self.file().ok_or_else(not_file)?;
            let ours = inner.p.endpoints.iter().filter(|e| e.tenant == endpoint.tenant).count();
            check_endpoint_limits(ours, inner.p.endpoints.len())?;
            inner.p.endpoints.push(endpoint.clone());
        }
        if let Err(e) = self.save().await {
            if let Some(mut inner) = self.file() {
                inner.p.endpoints.retain(|x| x.id != endpoint.id);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The tenant's endpoints, oldest first.
    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, HookError> {
        if let Some(pg) = self.pg() {
            let tenant = tenant.to_string();
            return blocking(move || pg.endpoints(&tenant, None)).await;
        }
        let inner = self.file().ok_or_else(not_file)?;
        Ok(inner.p.endpoints.iter().filter(|e| e.tenant == tenant).cloned().collect())
    }

    /// One of the tenant's endpoints.
    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, HookError> {
        if let Some(pg) = self.pg() {
            let (tenant, id) = (tenant.to_string(), id.to_string());
            let found = blocking(move || pg.endpoints(&tenant, Some(&id))).await?;
            return found.into_iter().next().ok_or(HookError::NotFound("webhook endpoint"));
        }
        let inner = self.file().ok_or_else(not_file)?;
        inner
            .p
            .endpoints
            .iter()
            .find(|e| e.id == id && e.tenant == tenant)
            .cloned()
            .ok_or(HookError::NotFound("webhook endpoint"))
    }

    /// Deletes one of the tenant's endpoints and its deliveries.
    async fn remove_endpoint(self: &Arc<Self>, tenant: &str, id: &str) -> Result<(), HookError> {
        if let Some(pg) = self.pg() {
            let (tenant, id) = (tenant.to_string(), id.to_string());
            return blocking(move || pg.remove_endpoint(&tenant, &id)).await;
        }
        {
            let mut inner = self.file().ok_or_else(not_file)?;
            let before = inner.p.endpoints.len();
            inner.p.endpoints.retain(|e| !(e.id == id && e.tenant == tenant));
            if inner.p.endpoints.len() == before {
                return Err(HookError::NotFound("webhook endpoint"));
            }
            inner.p.deliveries.retain(|d| d.endpoint_id != id);
        }
        self.save().await
    }

    /// Rotates the secret of one of the tenant's endpoints; returns the endpoint after it.
    async fn rotate(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        secret: &str,
        grace_secs: u64,
    ) -> Result<Endpoint, HookError> {
        let now = now_ms();
        if let Some(pg) = self.pg() {
            let (tenant, id, secret) = (tenant.to_string(), id.to_string(), secret.to_string());
            return blocking(move || {
                pg.update_endpoint(&tenant, &id, |e| rotate_secrets(e, &secret, now, grace_secs))
            })
            .await;
        }
        let endpoint = {
            let mut inner = self.file().ok_or_else(not_file)?;
            let e = inner
                .p
                .endpoints
                .iter_mut()
                .find(|e| e.id == id && e.tenant == tenant)
                .ok_or(HookError::NotFound("webhook endpoint"))?;
            rotate_secrets(e, secret, now, grace_secs);
            e.clone()
        };
        self.save().await?;
        Ok(endpoint)
    }

    /// A page of an endpoint's deliveries with numbers below `before`, newest first, and whether more
    /// follow.
    async fn deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), HookError> {
        if let Some(pg) = self.pg() {
            let (tenant, id) = (tenant.to_string(), endpoint_id.to_string());
            return blocking(move || pg.deliveries(&tenant, &id, before, limit)).await;
        }
        let inner = self.file().ok_or_else(not_file)?;
        if !inner.p.endpoints.iter().any(|e| e.id == endpoint_id && e.tenant == tenant) {
            return Err(HookError::NotFound("webhook endpoint"));
        }
        let mut page: Vec<&Delivery> =
            inner.p.deliveries.iter().filter(|d| d.endpoint_id == endpoint_id && d.number < before).collect();
        page.sort_unstable_by_key(|d| std::cmp::Reverse(d.number));
        let has_more = page.len() > limit;
        page.truncate(limit);
        Ok((page.into_iter().cloned().collect(), has_more))
    }

    /// New deliveries of the tenant's event `seq` (of type `kind`) to the endpoint named or to every
    /// endpoint of the tenant that takes the type.
    async fn redeliver(
        self: &Arc<Self>,
        tenant: &str,
        seq: u64,
        kind: EventType,
        named: Option<String>,
    ) -> Result<Vec<Delivery>, HookError> {
        let now = now_ms();
        let created = if let Some(pg) = self.pg() {
            let tenant = tenant.to_string();
            blocking(move || pg.redeliver(&tenant, seq, kind, named.as_deref(), now)).await?
        } else {
            let mut inner = self.file().ok_or_else(not_file)?;
            let pending = inner.p.deliveries.iter().filter(|d| d.status == DeliveryStatus::Pending).count();
            let targets = redelivery_targets(&inner.p.endpoints, tenant, named.as_deref(), kind)?;
            pending_limit(pending, targets.len())?;
            let mut created = Vec::new();
            for endpoint_id in targets {
                let number = inner.p.next_delivery;
                inner.p.next_delivery += 1;
                let d = new_delivery(number, endpoint_id, tenant.to_string(), seq, kind.as_str(), now);
                created.push(d.clone());
                inner.p.deliveries.push(d);
            }
            inner.dirty = true;
            created
        };
        self.save().await?;
        self.wake.notify_one();
        Ok(created)
    }
}

/// Drops the oldest finished deliveries of an endpoint beyond [`DELIVERY_LOG_PER_ENDPOINT_MAX`].
fn trim_log(deliveries: &mut Vec<Delivery>, endpoint: &str) {
    let finished =
        deliveries.iter().filter(|d| d.endpoint_id == endpoint && d.status != DeliveryStatus::Pending);
    let excess = finished.count().saturating_sub(DELIVERY_LOG_PER_ENDPOINT_MAX);
    if excess == 0 {
        return;
    }
    let mut dropped = 0;
    deliveries.retain(|d| {
        let drop = dropped < excess && d.endpoint_id == endpoint && d.status != DeliveryStatus::Pending;
        if drop {
            dropped += 1;
        }
        !drop
    });
}

fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// HTTP

/// `POST /v1/webhook_endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// Where events are POSTed (`http://` or `https://`, at most 2,048 bytes).
    pub url: String,
    /// Event types (`transfer.posted`), families (`transfer.*`) or `*` (the default): at most 16.
    pub enabled_events: Option<Vec<String>>,
    /// For people, at most 200 bytes.
    pub description: Option<String>,
}

/// `POST /v1/webhook_endpoints/{id}/rotate_secret`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps signing (seconds; default 86,400, at most 604,800; 0 ends it now).
    pub expire_old_secret_after_secs: Option<u64>,
}

/// `POST /v1/events/{id}/redeliver`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeliver {
    /// Only to this endpoint (default: every endpoint of yours that takes the event's type).
    pub endpoint_id: Option<String>,
}

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointObject {
    /// Always `webhook_endpoint`.
    pub object: &'static str,
    /// `we_…`.
    pub id: String,
    /// Where events go.
    pub url: String,
    /// The types it receives.
    pub enabled_events: Vec<String>,
    /// For people.
    pub description: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// The signing secret: only in the answer that created it (creation, rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Secrets that currently sign deliveries (more than one during a rotation's grace period).
    pub live_secrets: usize,
}

/// A deleted endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedObject {
    /// Always `webhook_endpoint`.
    pub object: &'static str,
    /// The endpoint.
    pub id: String,
    /// Always true.
    pub deleted: bool,
}

/// Your webhook endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointList {
    /// Always `list`.
    pub object: &'static str,
    /// Oldest first.
    pub data: Vec<WebhookEndpointObject>,
    /// Always false (at most 16 endpoints).
    pub has_more: bool,
    /// The list's URL.
    pub url: String,
}

/// One delivery of an event to an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryObject {
    /// Always `webhook_delivery`.
    pub object: &'static str,
    /// `wd_…` (increasing).
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event delivered.
    pub event_id: String,
    /// Its type (known after the first attempt).
    pub event_type: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// The last attempt.
    pub last_attempt_at: Option<String>,
    /// The next attempt, while pending.
    pub next_attempt_at: Option<String>,
    /// The last HTTP status received.
    pub last_status_code: Option<u16>,
    /// What went wrong last.
    pub last_error: Option<String>,
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    /// Always `list`.
    pub object: &'static str,
    /// Newest first.
    pub data: Vec<WebhookDeliveryObject>,
    /// Whether older ones follow.
    pub has_more: bool,
    /// The list's URL.
    pub url: String,
}

/// Query of the delivery log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryListQuery {
    /// 1-100, default 10.
    pub limit: Option<String>,
    /// A delivery id: the page after it (older ones).
    pub starting_after: Option<String>,
}

fn endpoint_object(e: &Endpoint, secret: Option<String>) -> WebhookEndpointObject {
    WebhookEndpointObject {
        object: "webhook_endpoint",
        id: e.id.clone(),
        url: e.url.clone(),
        enabled_events: e.enabled_events.clone(),
        description: e.description.clone(),
        created_at: format_ms(e.created_at_ms),
        secret,
        live_secrets: e.live_secrets(now_ms()).len(),
    }
}

fn delivery_object(d: &Delivery) -> WebhookDeliveryObject {
    WebhookDeliveryObject {
        object: "webhook_delivery",
        id: delivery_id(d.number),
        endpoint_id: d.endpoint_id.clone(),
        event_id: event_id(d.event_seq),
        event_type: (!d.event_type.is_empty()).then(|| d.event_type.clone()),
        status: d.status,
        attempts: d.attempts,
        created_at: format_ms(d.created_at_ms),
        last_attempt_at: d.last_attempt_at_ms.map(format_ms),
        next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| format_ms(d.next_attempt_at_ms)),
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
    }
}

fn webhooks(app: &AppState) -> Result<&Arc<Webhooks>, ApiError> {
    app.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", "webhooks are not enabled")
    })
}

fn validate_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::invalid("invalid_request", format!("url {why}"), Some("url"));
    if url.len() > URL_BYTES_MAX {
        return Err(bad("is longer than 2,048 bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("must be http:// or https:// with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    // Literal addresses never reach the resolver, so they are checked here (names are checked as
    // they are resolved for each delivery).
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    let internal = match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => !is_public(ip),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if internal && !allow_private {
        return Err(bad(&format!(
            "must not point at a loopback, private or link-local address (the operator can allow it with {ALLOW_PRIVATE_ENV}=1)"
        )));
    }
    Ok(())
}

fn validate_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() || events.len() > ENABLED_EVENTS_MAX {
        return Err(ApiError::invalid(
            "invalid_request",
            format!("enabled_events holds 1-{ENABLED_EVENTS_MAX} types"),
            Some("enabled_events"),
        ));
    }
    for e in events.iter().filter(|e| e.as_str() != "*") {
        parse_type_filter(e, "enabled_events")?;
    }
    Ok(())
}

/// Register a webhook endpoint. The answer holds its signing secret: the only time it is shown.
#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks", request_body = CreateWebhookEndpoint,
    responses((status = 201, body = WebhookEndpointObject), (status = 400, body = ErrorEnvelope),
              (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn create_endpoint(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateWebhookEndpoint>,
) -> Result<(StatusCode, Json<WebhookEndpointObject>), ApiError> {
    let hooks = webhooks(&app)?;
    validate_url(&body.url, allow_private())?;
    let enabled_events = body.enabled_events.unwrap_or_else(|| vec!["*".to_string()]);
    validate_events(&enabled_events)?;
    if body.description.as_ref().is_some_and(|d| d.len() > DESCRIPTION_BYTES_MAX) {
        return Err(ApiError::invalid(
            "invalid_request",
            "description is at most 200 bytes",
            Some("description"),
        ));
    }
    let secret = format!("whsec_{}", random_text(32));
    let endpoint = Endpoint {
        id: format!("we_{}", random_text(16)),
        tenant: principal.tenant.to_string(),
        url: body.url,
        enabled_events,
        description: body.description,
        secrets: vec![Secret { secret: secret.clone(), expires_at_ms: None }],
        created_at_ms: now_ms(),
        from_seq: hooks.events.durable_entries(),
    };
    hooks.add_endpoint(endpoint.clone()).await?;
    Ok((StatusCode::CREATED, Json(endpoint_object(&endpoint, Some(secret)))))
}

/// List your webhook endpoints.
#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks",
    responses((status = 200, body = WebhookEndpointList)), security(("api_key" = [])))]
pub async fn list_endpoints(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<WebhookEndpointList>, ApiError> {
    let hooks = webhooks(&app)?;
    let endpoints = hooks.endpoints(&principal.tenant).await?;
    let data = endpoints.iter().map(|e| endpoint_object(e, None));
    Ok(Json(WebhookEndpointList {
        object: "list",
        data: data.collect(),
        has_more: false,
        url: "/v1/webhook_endpoints".into(),
    }))
}

/// Get a webhook endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = WebhookEndpointObject), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_endpoint(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookEndpointObject>, ApiError> {
    let hooks = webhooks(&app)?;
    let e = hooks.endpoint(&principal.tenant, &id).await?;
    Ok(Json(endpoint_object(&e, None)))
}

/// Delete a webhook endpoint: its pending deliveries are dropped.
#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = DeletedObject), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn delete_endpoint(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeletedObject>, ApiError> {
    let hooks = webhooks(&app)?;
    hooks.remove_endpoint(&principal.tenant, &id).await?;
    Ok(Json(DeletedObject { object: "webhook_endpoint", id, deleted: true }))
}

/// Rotate an endpoint's secret: the answer holds the new one; the old one keeps signing (a second
/// `v1=`) for the grace period.
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks",
    request_body = Option<RotateSecret>, params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = WebhookEndpointObject), (status = 400, body = ErrorEnvelope),
              (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<RotateSecret>,
) -> Result<Json<WebhookEndpointObject>, ApiError> {
    let hooks = webhooks(&app)?;
    let grace_secs = body.expire_old_secret_after_secs.unwrap_or(SECRET_GRACE_SECS_DEFAULT);
    if grace_secs > SECRET_GRACE_SECS_MAX {
        return Err(ApiError::invalid(
            "invalid_request",
            format!("expire_old_secret_after_secs is at most {SECRET_GRACE_SECS_MAX}"),
            Some("expire_old_secret_after_secs"),
        ));
    }
    let secret = format!("whsec_{}", random_text(32));
    // Old secrets end at the latest by the new grace period; expired ones are dropped.
    let e = hooks.rotate(&principal.tenant, &id, &secret, grace_secs).await?;
    Ok(Json(endpoint_object(&e, Some(secret))))
}

/// The delivery log of an endpoint, newest first (pending deliveries and the latest 100 finished).
#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "endpoint id"), DeliveryListQuery),
    responses((status = 200, body = WebhookDeliveryList), (status = 400, body = ErrorEnvelope),
              (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn list_deliveries(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<DeliveryListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), None))?;
    let limit = match query.limit.as_deref() {
        None => PAGE_LIMIT_DEFAULT,
        Some(text) => {
            text.parse::<usize>().ok().filter(|n| (1..=PAGE_LIMIT_MAX).contains(n)).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_request",
                    format!("limit must be an integer from 1 to {PAGE_LIMIT_MAX}"),
                    Some("limit"),
                )
            })?
        }
    };
    let before = match &query.starting_after {
        Some(text) => parse_delivery_id(text).ok_or_else(|| {
            ApiError::invalid("invalid_cursor", "starting_after is a delivery id", Some("starting_after"))
        })?,
        None => u64::MAX,
    };
    let hooks = webhooks(&app)?;
    let (page, has_more) = hooks.deliveries(&principal.tenant, &id, before, limit).await?;
    Ok(Json(WebhookDeliveryList {
        object: "list",
        data: page.iter().map(delivery_object).collect(),
        has_more,
        url: format!("/v1/webhook_endpoints/{id}/deliveries"),
    }))
}

/// Deliver an event again now (to one endpoint, or to every endpoint that takes its type): a new
/// delivery with its own retries.
#[utoipa::path(post, path = "/v1/events/{id}/redeliver", tag = "webhooks", request_body = Option<Redeliver>,
    params(("id" = String, Path, description = "event id")),
    responses((status = 201, body = WebhookDeliveryList), (status = 404, body = ErrorEnvelope),
              (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn redeliver_event(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<Redeliver>,
) -> Result<(StatusCode, Json<WebhookDeliveryList>), ApiError> {
    let hooks = webhooks(&app)?;
    let log = event_log(&app)?;
    let seq = parse_event_id(&id).ok_or_else(|| ApiError::not_found("event", "id"))?;
    if !log.has(&principal.tenant, seq) {
        return Err(ApiError::not_found("event", "id"));
    }
    let event = log.read(vec![seq]).await?.pop().ok_or_else(|| ApiError::not_found("event", "id"))?;
    let created = hooks.redeliver(&principal.tenant, seq, event.kind, body.endpoint_id).await?;
    let created = created.iter().map(delivery_object).collect();
    Ok((
        StatusCode::CREATED,
        Json(WebhookDeliveryList {
            object: "list",
            data: created,
            has_more: false,
            url: format!("/v1/events/{id}/redeliver"),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_header_has_one_v1_per_secret() {
        let h = signature_header(["a", "b"], 1_700_000_000, b"{}");
        let parts: Vec<&str> = h.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        assert!(parts[1..].iter().all(|p| p.starts_with("v1=") && p.len() == 3 + 64));
        assert_ne!(parts[1], parts[2]);
    }

    #[test]
    fn retry_delays_double_jitter_and_cap() {
        let base = 30_000;
        assert_eq!(retry_delay_ms(1, base, 1.0), 30_000);
        assert_eq!(retry_delay_ms(1, base, 0.0), 15_000);
        assert_eq!(retry_delay_ms(3, base, 1.0), 120_000);
        assert_eq!(retry_delay_ms(40, base, 1.0), base * RETRY_CAP_BASES);
        // The whole schedule, without jitter, fits in the 3-day window.
        let total: u64 = (1..DELIVERY_ATTEMPTS_MAX).map(|n| retry_delay_ms(n, base, 1.0)).sum();
        assert!(total <= DELIVERY_WINDOW_SECS * 1_000, "{total}");
        assert!(total >= 2 * 24 * 3600 * 1_000, "{total}");
    }

    #[test]
    fn delivery_ids_round_trip() {
        assert_eq!(parse_delivery_id(&delivery_id(42)), Some(42));
        assert_eq!(parse_delivery_id("wd_x"), None);
        assert_eq!(parse_delivery_id("42"), None);
    }

    #[tokio::test]
    async fn deliveries_resolve_names_to_public_addresses_only() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let refused = PublicAddressesOnly.resolve(name).await.err().expect("localhost is refused");
        assert!(refused.to_string().contains("no public address"), "{refused}");
    }

    #[test]
    fn urls_are_http_with_a_host_and_no_credentials() {
        assert!(validate_url("https://example.invalid/hook", false).is_ok());
        assert!(validate_url("http://127.0.0.1:9/x", true).is_ok(), "allowed by the operator");
        for internal in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost:8080/",
            "http://0.0.0.0/",
            "http://LOCALHOST./",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://198.18.0.1/",
        ] {
            assert!(validate_url(internal, false).is_err(), "{internal}");
        }
        assert!(is_public("8.8.8.8".parse().unwrap()) && is_public("2001:4860::8888".parse().unwrap()));
        for bad in ["ftp://x/", "not a url", "https://user:pw@example.invalid/", "mailto:a@example.invalid"] {
            assert!(validate_url(bad, true).is_err(), "{bad}");
        }
    }
}
