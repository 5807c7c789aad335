//! Risk decisions over HTTP: `POST /v1/decisions` scores an event (a payment from another system, a
//! login) with the active ruleset without posting anything; `GET /v1/decisions/{id}` explains it.
//!
//! Not yet (issue 4): decisions inline in `POST /v1/transfers`, review queues, journaled decision
//! records and feature state that survives a restart. Decisions are kept in memory, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use puhui_risk::{Decision, Engine, FeatureLimits, FeatureStore, RiskEvent, Ruleset};
use puhui_store::LedgerStore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorEnvelope};
use crate::idempotency::IdempotencyKey;
use crate::models::{parse_rfc3339, scoped, scoped_lookup, unscoped};
use crate::routes::ApiJson;
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
            }),
        }
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
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let ctx = body.risk_context;
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
            // Device and IP keys are tenant-scoped like every other id.
            let v = if name == "device_id" || name == "ip" { format!("{tenant}:{v}") } else { v };
            attributes.retain(|(k, _)| k != name);
            attributes.push((name.to_string(), v));
        }
    }
    let event = RiskEvent {
        payer: &payer,
        payee: &payee,
        amount_minor: body.amount,
        currency: &body.currency,
        timestamp_ns,
        attributes: &attributes,
    };
    let mut state = risk.state.lock().unwrap_or_else(|p| p.into_inner());
    let state = &mut *state;
    if state.decisions.contains_key(id.as_str()) {
        let existing = state.decisions[id.as_str()].clone();
        return Ok((StatusCode::OK, Json(existing)));
    }
    let decision = state.engine.decide(&state.features, &event);
    if body.record {
        state.engine.observe(&mut state.features, &event);
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
    Path(id): Path<String>,
) -> Result<Json<DecisionObject>, ApiError> {
    let id = scoped_lookup(&principal.tenant, &id, "decision")?;
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("decision", "id"))?;
    let state = risk.state.lock().unwrap_or_else(|p| p.into_inner());
    state.decisions.get(id.as_str()).cloned().map(Json).ok_or_else(|| ApiError::not_found("decision", "id"))
}
