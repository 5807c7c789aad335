//! Risk records: what risk control writes into the journal, beside the ledger's events, so that every
//! decision can be explained, audited (Merkle inclusion proofs cover them) and replayed.
//!
//! A record is a JSON payload with a one-byte type tag (the journal's `KIND_RECORD` entries carry
//! both). JSON because auditors and partners read these records with their own tools; the journal
//! frames them, chains them and proves them like every other entry.
//!
//! The order of records is the order in which the [`crate::control::Controller`] changed its state,
//! so replaying them in journal order rebuilds the feature state exactly (restart) and re-deciding
//! them reproduces every online decision (backtest).

use serde::{Deserialize, Serialize};

use crate::rules::{Decision, FiredRule, Outcome, RiskEvent};

/// Record type: a decision (inline on a transfer, or standalone).
pub const RECORD_DECISION: u8 = 1;
/// Record type: a label on a decision (fraud or legit).
pub const RECORD_LABEL: u8 = 2;
/// Record type: a ruleset was published (its full text).
pub const RECORD_RULESET: u8 = 3;
/// Record type: the active and shadow rulesets changed.
pub const RECORD_ACTIVATION: u8 = 4;
/// Record type: an allow/deny list changed.
pub const RECORD_LIST: u8 = 5;

/// The event a decision was about, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The paying party.
    pub payer: String,
    /// The receiving party.
    pub payee: String,
    /// Amount in minor units.
    pub amount_minor: u64,
    /// Currency code.
    pub currency: String,
    /// When it happened (the features' clock).
    pub timestamp_ns: u64,
    /// Attributes (device, IP, channel…).
    pub attributes: Vec<(String, String)>,
}

impl EventRecord {
    /// Records `event`.
    pub fn of(event: &RiskEvent<'_>) -> EventRecord {
        EventRecord {
            payer: event.payer.to_string(),
            payee: event.payee.to_string(),
            amount_minor: event.amount_minor,
            currency: event.currency.to_string(),
            timestamp_ns: event.timestamp_ns,
            attributes: event.attributes.to_vec(),
        }
    }

    /// The event, borrowed.
    pub fn as_event(&self) -> RiskEvent<'_> {
        RiskEvent {
            payer: &self.payer,
            payee: &self.payee,
            amount_minor: self.amount_minor,
            currency: &self.currency,
            timestamp_ns: self.timestamp_ns,
            attributes: &self.attributes,
        }
    }
}

/// A fired rule, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredRecord {
    /// Rule id.
    pub rule: String,
    /// Score contribution.
    pub score: i64,
    /// Direct outcome, if the rule has one.
    pub outcome: Option<Outcome>,
    /// Reason codes.
    pub reasons: Vec<String>,
}

impl From<FiredRule> for FiredRecord {
    fn from(r: FiredRule) -> FiredRecord {
        FiredRecord { rule: r.id, score: r.score, outcome: r.outcome, reasons: r.reasons }
    }
}

/// One ruleset's verdict on an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The ruleset's version.
    pub ruleset_version: String,
    /// Approve, review or decline.
    pub outcome: Outcome,
    /// Sum of the fired rules' scores.
    pub score: i64,
    /// Fired rules, in ruleset order.
    pub fired: Vec<FiredRecord>,
    /// Feature values and model scores the rules saw (a value that is not a finite number is
    /// recorded as `null`).
    #[serde(with = "values")]
    pub features: Vec<(String, f64)>,
    /// Rules that could not be evaluated, with the error.
    pub errors: Vec<(String, String)>,
    /// Why the decision is degraded (budget spent), if it is.
    pub degraded: Option<String>,
    /// Time taken, in nanoseconds.
    pub latency_ns: u64,
}

impl From<Decision> for Verdict {
    fn from(d: Decision) -> Verdict {
        Verdict {
            ruleset_version: d.ruleset_version,
            outcome: d.outcome,
            score: d.score,
            fired: d.fired.into_iter().map(FiredRecord::from).collect(),
            features: d.features,
            errors: d.errors,
            degraded: d.degraded,
            latency_ns: d.latency_ns,
        }
    }
}

impl Verdict {
    /// Whether `other` is the same decision (outcome, score, fired rules, feature values, errors;
    /// not the latency, which is the only thing that may differ in a replay).
    pub fn same_decision(&self, other: &Verdict) -> bool {
        self.ruleset_version == other.ruleset_version
            && self.outcome == other.outcome
            && self.score == other.score
            && self.fired == other.fired
            && self.errors == other.errors
            && self.features.len() == other.features.len()
            && self.features.iter().zip(&other.features).all(|(a, b)| {
                a.0 == b.0 && (a.1.to_bits() == b.1.to_bits() || (a.1.is_nan() && b.1.is_nan()))
            })
    }
}

/// Named values with JSON's missing number: NaN and infinities are written as `null` and read back
/// as NaN (a missing model input, an undefined z-score).
mod values {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(values: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
        let finite: Vec<(&str, Option<f64>)> =
            values.iter().map(|(n, v)| (n.as_str(), v.is_finite().then_some(*v))).collect();
        finite.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
        let read: Vec<(String, Option<f64>)> = Vec::deserialize(d)?;
        Ok(read.into_iter().map(|(n, v)| (n, v.unwrap_or(f64::NAN))).collect())
    }
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// Inline, on a transfer (its id is the transfer's).
    Transfer,
    /// `POST /v1/decisions`: an event from another system; nothing was posted.
    Standalone,
}

/// A decision record ([`RECORD_DECISION`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The decision's id (tenant-scoped; the transfer's id for an inline decision).
    pub id: String,
    /// Where it came from.
    pub source: DecisionSource,
    /// The event's inputs.
    pub event: EventRecord,
    /// Whether the event was recorded in the velocity features right after the decision.
    pub observed: bool,
    /// The active ruleset's verdict: what was acted on.
    pub active: Verdict,
    /// The shadow ruleset's verdict, if one ran (logged, not acted on).
    pub shadow: Option<Verdict>,
}

/// A label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Confirmed fraud (a chargeback, a victim's report, an analyst's finding).
    Fraud,
    /// Confirmed legitimate.
    Legit,
}

/// A label on a decision ([`RECORD_LABEL`]); the latest label of a decision counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRecord {
    /// The decision's id (tenant-scoped).
    pub decision_id: String,
    /// Fraud or legit.
    pub label: Label,
    /// Where the label comes from (`chargeback`, `analyst`, …).
    pub source: Option<String>,
    /// When it was labelled (nanoseconds since the epoch).
    pub labelled_at_ns: u64,
}

/// A published ruleset ([`RECORD_RULESET`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesetRecord {
    /// Its version (unique: a version names one text forever).
    pub version: String,
    /// The TOML text.
    pub text: String,
}

/// Which rulesets run ([`RECORD_ACTIVATION`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// The active ruleset's version (acted on).
    pub active: String,
    /// The shadow ruleset's version (decided and logged beside the active one), if any.
    pub shadow: Option<String>,
}

/// How a list changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListOp {
    /// Add the values.
    Add,
    /// Remove the values.
    Remove,
}

/// A list change ([`RECORD_LIST`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRecord {
    /// The list's name (`deny_devices`, `allow_accounts`, …).
    pub name: String,
    /// Add or remove.
    pub op: ListOp,
    /// The values (tenant-scoped where the list holds ids).
    pub values: Vec<String>,
}

/// A decoded risk record.
#[derive(Debug, Clone, PartialEq)]
pub enum RiskRecord {
    /// A decision.
    Decision(Box<DecisionRecord>),
    /// A label.
    Label(LabelRecord),
    /// A published ruleset.
    Ruleset(RulesetRecord),
    /// An activation.
    Activation(ActivationRecord),
    /// A list change.
    List(ListRecord),
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(pub String);

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

impl RiskRecord {
    /// Its type tag and JSON payload.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let encoded = match self {
            RiskRecord::Decision(r) => (RECORD_DECISION, serde_json::to_vec(r)),
            RiskRecord::Label(r) => (RECORD_LABEL, serde_json::to_vec(r)),
            RiskRecord::Ruleset(r) => (RECORD_RULESET, serde_json::to_vec(r)),
            RiskRecord::Activation(r) => (RECORD_ACTIVATION, serde_json::to_vec(r)),
            RiskRecord::List(r) => (RECORD_LIST, serde_json::to_vec(r)),
        };
        // Serializing these plain structs (string keys, finite numbers or null) cannot fail.
        (encoded.0, encoded.1.expect("risk records serialize"))
    }

    /// Decodes a record of type `record_type`.
    pub fn decode(record_type: u8, payload: &[u8]) -> Result<RiskRecord, RecordError> {
        let bad = |e: serde_json::Error| RecordError(format!("risk record type {record_type}: {e}"));
        Ok(match record_type {
            RECORD_DECISION => RiskRecord::Decision(Box::new(serde_json::from_slice(payload).map_err(bad)?)),
            RECORD_LABEL => RiskRecord::Label(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_RULESET => RiskRecord::Ruleset(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_ACTIVATION => RiskRecord::Activation(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_LIST => RiskRecord::List(serde_json::from_slice(payload).map_err(bad)?),
            other => return Err(RecordError(format!("unknown risk record type {other}"))),
        })
    }
}
