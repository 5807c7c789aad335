//! Risk decisions over HTTP: `POST /v1/decisions` scores an event (a payment from another system, a
//! login) with the active ruleset without posting anything; `GET /v1/decisions/{id}` explains it.
//! A transfer posted with a `risk_context` is decided inline (see `routes::create_transfer`):
//! decline → not posted (422 `risk_declined`), review → posted as a hold and queued here
//! (`GET /v1/risk/reviews`, `POST /v1/risk/reviews/{id}/approve|decline`), approve → posted.
//!
//! Not yet (issue 4): journaled decision records and feature state that survives a restart.
//! Decisions and reviews are kept in memory, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use puhui_risk::{Decision, Engine, FeatureLimits, FeatureStore, RiskEvent, Ruleset};
use puhui_store::LedgerStore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorEnvelope};
use crate::idempotency::IdempotencyKey;
use crate::models::{parse_rfc3339, scoped, scoped_lookup, unscoped};
use crate::routes::{ApiJson, ApiPath};
use crate::tenants::Principal;
use crate::AppState;

/// Most decisions remembered for `GET /v1/decisions/{id}`; the oldest are forgotten first.
pub const DECISIONS_KEPT_MAX: usize = 100_000;
/// Most attributes in a `risk_context`.
pub const ATTRIBUTES_MAX: usize = 32;

/// The starter ruleset shipped with puhui (`rulesets/starter.toml`), active by default.
pub const STARTER_RULESET: &str = include_str!("../../../rulesets/starter.toml");

/// The risk engine, its feature state and the remembered decisions.
pub struct RiskService {
    state: Mutex<RiskState>,
}

struct RiskState {
    engine: Engine,
    features: FeatureStore,
    decisions: HashMap<String, DecisionObject>,
    order: VecDeque<String>,
    /// Held transfers waiting for an analyst, by scoped transfer id.
    reviews: HashMap<String, ReviewObject>,
}

/// Most open reviews; beyond it new reviews are declined (fail closed) rather than grow the queue.
pub const REVIEWS_OPEN_MAX: usize = 100_000;
/// Most open reviews per tenant, so one tenant cannot fill the queue for everyone.
pub const REVIEWS_PER_TENANT_MAX: usize = 10_000;
/// A review hold expires (and releases) after this long if nobody decides it.
pub const REVIEW_HOLD_TIMEOUT_MS: u64 = 72 * 3_600 * 1_000;

/// A transfer held for review.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewObject {
    /// Always `review`.
    pub object: &'static str,
    /// The held transfer (also the decision's id).
    pub id: String,
    /// The decision's score.
    pub score: i64,
    /// Fired rules' reason codes.
    pub reasons: Vec<String>,
    /// Ruleset version that asked for the review.
    pub ruleset_version: String,
}

/// `GET /v1/risk/reviews`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewList {
    /// Always `list`.
    pub object: &'static str,
    /// Open reviews (at most 100, oldest first).
    pub data: Vec<ReviewObject>,
    /// Whether more are open.
    pub has_more: bool,
    /// The list's URL.
    pub url: &'static str,
}

impl RiskService {
    /// A service running `ruleset`.
    pub fn new(ruleset: Ruleset) -> RiskService {
        let engine = Engine::new(Arc::new(ruleset), Arc::default());
        RiskService {
            state: Mutex::new(RiskState {
                engine,
                features: FeatureStore::new(FeatureLimits::default()),
                decisions: HashMap::new(),
                order: VecDeque::new(),
                reviews: HashMap::new(),
            }),
        }
    }

    /// Decides an event, remembers the decision under `id` (scoped) and, if `record`, records the
    /// event in the velocity features.
    pub fn decide(&self, id: &str, client_id: String, event: &RiskEvent<'_>, record: bool) -> DecisionObject {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        let decision = state.engine.decide(&state.features, event);
        if record {
            state.engine.observe(&mut state.features, event);
        }
        metrics::counter!("puhui_decisions_total", "outcome" => decision.outcome.as_str()).increment(1);
        metrics::histogram!("puhui_decision_seconds").record(decision.latency_ns as f64 / 1e9);
        let object = to_object(client_id, decision);
        state.decisions.insert(id.to_string(), object.clone());
        state.order.push_back(id.to_string());
        while state.order.len() > DECISIONS_KEPT_MAX {
            if let Some(old) = state.order.pop_front() {
                state.decisions.remove(&old);
            }
        }
        object
    }

    /// Records an event that was posted (after the ledger accepted it).
    pub fn observe(&self, event: &RiskEvent<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        state.engine.observe(&mut state.features, event);
    }

    /// Whether another review can be queued for `tenant` (bounded in all and per tenant).
    pub fn can_queue_review(&self, tenant: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{tenant}:");
        state.reviews.len() < REVIEWS_OPEN_MAX
            && state.reviews.keys().filter(|k| k.starts_with(&prefix)).count() < REVIEWS_PER_TENANT_MAX
    }

    /// Queues a held transfer for review.
    pub fn queue_review(&self, id: &str, decision: &DecisionObject) {
        let review = ReviewObject {
            object: "review",
            id: decision.id.clone(),
            score: decision.score,
            reasons: decision.fired.iter().flat_map(|f| f.reasons.iter().cloned()).collect(),
            ruleset_version: decision.ruleset_version.clone(),
        };
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reviews.insert(id.to_string(), review);
    }

    fn queue_review_object(&self, id: &str, review: ReviewObject) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reviews.insert(id.to_string(), review);
    }

    /// Takes an open review out of the queue.
    pub fn take_review(&self, id: &str) -> Option<ReviewObject> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reviews.remove(id)
    }

    /// A tenant's open reviews (up to `limit`, oldest ids first) and whether there are more.
    pub fn reviews(&self, tenant: &str, limit: usize) -> (Vec<ReviewObject>, bool) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{tenant}:");
        let mut keys: Vec<&String> = state.reviews.keys().filter(|k| k.starts_with(&prefix)).collect();
        keys.sort();
        let more = keys.len() > limit;
        (keys.into_iter().take(limit).map(|k| state.reviews[k].clone()).collect(), more)
    }

    /// The active ruleset's version.
    pub fn version(&self) -> String {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).engine.ruleset().version.clone()
    }
}

/// Attributes of the event: device, network, channel, customer.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskContext {
    /// Device id.
    pub device_id: Option<String>,
    /// IP address.
    pub ip: Option<String>,
    /// `app`, `web`, `pos`, `agent`, `ussd`, …
    pub channel: Option<String>,
    /// ISO 3166 country.
    pub country: Option<String>,
    /// Merchant category code.
    pub mcc: Option<String>,
    /// The customer's KYC tier (`1`, `2`, `3`).
    pub kyc_tier: Option<String>,
    /// Anything else, as strings (`ctx.<name>` in rules).
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

/// `POST /v1/decisions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDecision {
    /// Your id for the decision; generated (or derived from the Idempotency-Key) if absent.
    pub id: Option<String>,
    /// The paying party (an account id or any customer id).
    pub payer: String,
    /// The receiving party.
    pub payee: String,
    /// Minor units.
    pub amount: u64,
    /// Currency code.
    pub currency: String,
    /// When it happened (RFC 3339); default now.
    pub timestamp: Option<String>,
    /// Device, network, channel, customer.
    #[serde(default)]
    pub risk_context: RiskContext,
    /// Record the event in the velocity features (default true; false for a what-if).
    #[serde(default = "yes")]
    pub record: bool,
}

fn yes() -> bool {
    true
}

/// A fired rule in a decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FiredRuleObject {
    /// Rule id.
    pub rule: String,
    /// Score contribution.
    pub score: i64,
    /// Direct outcome, if the rule has one.
    pub outcome: Option<&'static str>,
    /// Reason codes.
    pub reasons: Vec<String>,
}

/// A decision and everything needed to explain it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionObject {
    /// Always `decision`.
    pub object: &'static str,
    /// Its id.
    pub id: String,
    /// `approve`, `review` or `decline`.
    pub outcome: &'static str,
    /// Sum of fired rules' scores.
    pub score: i64,
    /// Fired rules.
    pub fired: Vec<FiredRuleObject>,
    /// Feature values the rules saw.
    pub features: HashMap<String, f64>,
    /// Rules that could not be evaluated (not fired), with the error.
    pub errors: Vec<(String, String)>,
    /// Ruleset version.
    pub ruleset_version: String,
    /// Decision latency in microseconds.
    pub latency_us: u64,
}

/// The event attributes of a risk context (device and IP tenant-scoped like every other id).
pub fn attributes(tenant: &str, ctx: RiskContext) -> Result<Vec<(String, String)>, ApiError> {
    if ctx.attributes.len() > ATTRIBUTES_MAX {
        return Err(ApiError::invalid(
            "invalid_request",
            format!("at most {ATTRIBUTES_MAX} attributes"),
            Some("risk_context.attributes"),
        ));
    }
    let mut attributes: Vec<(String, String)> = ctx.attributes.into_iter().collect();
    for (name, value) in [
        ("device_id", ctx.device_id),
        ("ip", ctx.ip),
        ("channel", ctx.channel),
        ("country", ctx.country),
        ("mcc", ctx.mcc),
        ("kyc_tier", ctx.kyc_tier),
    ] {
        if let Some(v) = value {
            let v = if name == "device_id" || name == "ip" { format!("{tenant}:{v}") } else { v };
            attributes.retain(|(k, _)| k != name);
            attributes.push((name.to_string(), v));
        }
    }
    Ok(attributes)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn to_object(id: String, d: Decision) -> DecisionObject {
    DecisionObject {
        object: "decision",
        id,
        outcome: d.outcome.as_str(),
        score: d.score,
        fired: d
            .fired
            .into_iter()
            .map(|r| FiredRuleObject {
                rule: r.id,
                score: r.score,
                outcome: r.outcome.map(|o| o.as_str()),
                reasons: r.reasons,
            })
            .collect(),
        features: d.features.into_iter().collect(),
        errors: d.errors,
        ruleset_version: d.ruleset_version,
        latency_us: d.latency_ns / 1_000,
    }
}

/// Score an event with the active ruleset (nothing is posted).
#[utoipa::path(post, path = "/v1/decisions", tag = "risk", request_body = CreateDecision,
    responses((status = 201, body = DecisionObject), (status = 400, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn create_decision(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    idem: Option<Extension<IdempotencyKey>>,
    ApiJson(body): ApiJson<CreateDecision>,
) -> Result<(StatusCode, Json<DecisionObject>), ApiError> {
    let risk = app.risk.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            "risk control is not configured",
        )
    })?;
    let tenant = &principal.tenant;
    let client_id = body.id.unwrap_or_else(|| match &idem {
        Some(Extension(key)) => key.derived_id("decision"),
        None => app.store.new_id().to_string(),
    });
    let id = scoped(tenant, &client_id, "id")?;
    let payer = scoped(tenant, &body.payer, "payer")?;
    let payee = scoped(tenant, &body.payee, "payee")?;
    let timestamp_ns = match &body.timestamp {
        Some(t) => parse_rfc3339(t, "timestamp")?,
        None => now_ns(),
    };
    let attributes = attributes(tenant, body.risk_context)?;
    let event = RiskEvent {
        payer: &payer,
        payee: &payee,
        amount_minor: body.amount,
        currency: &body.currency,
        timestamp_ns,
        attributes: &attributes,
    };
    let existing = risk.state.lock().unwrap_or_else(|p| p.into_inner()).decisions.get(id.as_str()).cloned();
    if let Some(existing) = existing {
        return Ok((StatusCode::OK, Json(existing)));
    }
    let object = risk.decide(&id, client_id, &event, body.record);
    debug_assert_eq!(unscoped(&id), object.id);
    Ok((StatusCode::CREATED, Json(object)))
}

/// A decision by id, with its explanation.
#[utoipa::path(get, path = "/v1/decisions/{id}", tag = "risk",
    params(("id" = String, Path, description = "decision id")),
    responses((status = 200, body = DecisionObject), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_decision(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DecisionObject>, ApiError> {
    let id = scoped_lookup(&principal.tenant, &id, "decision")?;
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("decision", "id"))?;
    let state = risk.state.lock().unwrap_or_else(|p| p.into_inner());
    state.decisions.get(id.as_str()).cloned().map(Json).ok_or_else(|| ApiError::not_found("decision", "id"))
}

/// Open reviews: transfers held by risk control, waiting for an analyst.
#[utoipa::path(get, path = "/v1/risk/reviews", tag = "risk",
    responses((status = 200, body = ReviewList)), security(("api_key" = [])))]
pub async fn list_reviews(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<ReviewList>, ApiError> {
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("review", "id"))?;
    // Drop reviews whose hold is gone (expired, or posted/voided directly) before listing.
    let (candidates, _) = risk.reviews(&principal.tenant, REVIEWS_PER_TENANT_MAX);
    let ids: Vec<String> = candidates.iter().map(|r| format!("{}:{}", principal.tenant, r.id)).collect();
    let stale: Vec<String> = app
        .read(move |l| {
            ids.into_iter()
                .filter(|id| {
                    l.transfer(id).and_then(|t| t.pending_status)
                        != Some(puhui_ledger::PendingStatus::Pending)
                })
                .collect()
        })
        .await;
    for id in &stale {
        risk.take_review(id);
    }
    let (data, has_more) = risk.reviews(&principal.tenant, crate::limits::PAGE_LIMIT_MAX);
    Ok(Json(ReviewList { object: "list", data, has_more, url: "/v1/risk/reviews" }))
}

async fn resolve_review(
    app: Arc<AppState>,
    principal: Principal,
    id: String,
    approve: bool,
) -> Result<axum::response::Response, ApiError> {
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("review", "id"))?;
    let scoped_id = scoped_lookup(&principal.tenant, &id, "review")?;
    let review = risk.take_review(scoped_id.as_str()).ok_or_else(|| ApiError::not_found("review", "id"))?;
    let suffix = if approve { "post" } else { "void" };
    let resolution = puhui_ledger::Id::new(&format!("{scoped_id}.{suffix}")).ok_or_else(|| {
        ApiError::invalid("invalid_id", "the review's id is too long to derive a resolution id", None)
    })?;
    let request = if approve {
        puhui_ledger::TransferRequest::post(resolution, scoped_id.clone(), None)
    } else {
        puhui_ledger::TransferRequest::void(resolution, scoped_id.clone())
    };
    match crate::routes::create_one(&app, request).await {
        Ok(response) => Ok(response),
        Err(e) => {
            // Put it back unless the hold is gone for good (expired, already resolved).
            if e.status.is_server_error() {
                risk.queue_review_object(scoped_id.as_str(), review);
            }
            Err(e)
        }
    }
}

/// Approve a held transfer: its hold is posted.
#[utoipa::path(post, path = "/v1/risk/reviews/{id}/approve", tag = "risk",
    params(("id" = String, Path, description = "the held transfer")),
    responses((status = 201, body = crate::models::TransferObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn approve_review(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    resolve_review(app, principal, id, true).await
}

/// Decline a held transfer: its hold is voided.
#[utoipa::path(post, path = "/v1/risk/reviews/{id}/decline", tag = "risk",
    params(("id" = String, Path, description = "the held transfer")),
    responses((status = 201, body = crate::models::TransferObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn decline_review(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    resolve_review(app, principal, id, false).await
}
