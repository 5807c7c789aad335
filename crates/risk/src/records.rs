//! Risk records: what risk control writes into the journal, beside the ledger's events, so that every
//! decision can be explained, audited (Merkle inclusion proofs cover them) and replayed.
//!
//! A record is a payload with a one-byte type tag (the journal's `KIND_RECORD` entries carry both).
//! Labels, rulesets, activations and list changes are JSON, which auditors read with their own
//! tools. Decisions, one per scored transfer, are written in a compact binary form
//! ([`RECORD_DECISION_BINARY`], see [`binary`]): a JSON decision with a few dozen fired rules is
//! several kilobytes to encode, hash and fsync on every transfer. Decisions journaled as JSON
//! ([`RECORD_DECISION`], before the binary form) still decode, so older journals replay and
//! backtest unchanged; `GET /v1/decisions/{id}` and the partner events show either as JSON. The
//! journal frames, chains and proves records like every other entry.
//!
//! The order of records is the order in which the [`crate::control::Controller`] changed its state,
//! so replaying them in journal order rebuilds the feature state exactly (restart) and re-deciding
//! them reproduces every online decision (backtest).

use std::sync::Arc;

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
/// Record type: a decision, in the compact binary form of [`binary`] (what decisions are written
/// as; [`RECORD_DECISION`] is the JSON form older journals hold).
pub const RECORD_DECISION_BINARY: u8 = 6;
/// Record type: the velocity feature store's bounds from here on (a server started with others).
pub const RECORD_FEATURE_LIMITS: u8 = 7;

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
    /// The payer's available balance before the event, in minor units, if it was known
    /// ([`RiskEvent::payer_balance_minor`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_balance_minor: Option<i64>,
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
            payer_balance_minor: event.payer_balance_minor,
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
            payer_balance_minor: self.payer_balance_minor,
        }
    }
}

/// A fired rule, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredRecord {
    /// Rule id.
    pub rule: Arc<str>,
    /// Score contribution.
    pub score: i64,
    /// Direct outcome, if the rule has one.
    pub outcome: Option<Outcome>,
    /// Reason codes.
    pub reasons: Arc<[String]>,
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
    pub features: Vec<(Arc<str>, f64)>,
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
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(values: &[(Arc<str>, f64)], s: S) -> Result<S::Ok, S::Error> {
        let finite: Vec<(&str, Option<f64>)> =
            values.iter().map(|(n, v)| (&**n, v.is_finite().then_some(*v))).collect();
        finite.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Arc<str>, f64)>, D::Error> {
        let read: Vec<(String, Option<f64>)> = Vec::deserialize(d)?;
        Ok(read.into_iter().map(|(n, v)| (Arc::from(n), v.unwrap_or(f64::NAN))).collect())
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

/// A decision record ([`RECORD_DECISION_BINARY`], or [`RECORD_DECISION`] in older journals).
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
    /// The BLAKE3 digest of each model file it read when published (empty in records written before
    /// digests were kept): a replay or a backtest refuses a model file that changed since, rather
    /// than scoring with other trees than the decisions were made with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelDigest>,
}

/// A model file as a ruleset read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDigest {
    /// The model's name in the ruleset.
    pub name: String,
    /// BLAKE3 of the file's bytes, in hex.
    pub blake3: String,
}

/// The feature store's bounds from this record on ([`RECORD_FEATURE_LIMITS`]): a start whose
/// `--risk-keys-max` / `--risk-events-per-key-max` differ from the journal's journals one, so that a
/// replay (a restart, a backtest) bounds the features as the online run did at each point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLimitsRecord {
    /// Keys and pairs kept at most.
    pub keys_max: u64,
    /// Events kept per key at most.
    pub events_per_key_max: u64,
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
    /// The feature store's bounds changed.
    FeatureLimits(FeatureLimitsRecord),
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

impl DecisionRecord {
    /// Its type tag and payload, as [`RiskRecord::encode`] writes it (without moving it into one).
    pub fn encode(&self) -> (u8, Vec<u8>) {
        (RECORD_DECISION_BINARY, binary::encode(self))
    }

    /// The id of the decision in a record of type `record_type`, read without decoding the rest
    /// (`None` if it is not a decision record or does not decode).
    pub fn id_of(record_type: u8, payload: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
        #[derive(Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
        }
        match record_type {
            RECORD_DECISION_BINARY => binary::id(payload).map(std::borrow::Cow::Borrowed),
            RECORD_DECISION => serde_json::from_slice::<Id<'_>>(payload).ok().map(|i| i.id),
            _ => None,
        }
    }
}

impl RiskRecord {
    /// Its type tag and payload: binary for a decision, JSON for the others.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let encoded = match self {
            RiskRecord::Decision(r) => return r.encode(),
            RiskRecord::Label(r) => (RECORD_LABEL, serde_json::to_vec(r)),
            RiskRecord::Ruleset(r) => (RECORD_RULESET, serde_json::to_vec(r)),
            RiskRecord::Activation(r) => (RECORD_ACTIVATION, serde_json::to_vec(r)),
            RiskRecord::List(r) => (RECORD_LIST, serde_json::to_vec(r)),
            RiskRecord::FeatureLimits(r) => (RECORD_FEATURE_LIMITS, serde_json::to_vec(r)),
        };
        // Serializing these plain structs (string keys, finite numbers or null) cannot fail.
        (encoded.0, encoded.1.expect("risk records serialize"))
    }

    /// Whether `record_type` is a risk record's (other owners journal records of their own beside
    /// them: idempotency keys, for one).
    pub fn knows(record_type: u8) -> bool {
        matches!(
            record_type,
            RECORD_DECISION
                | RECORD_DECISION_BINARY
                | RECORD_LABEL
                | RECORD_RULESET
                | RECORD_ACTIVATION
                | RECORD_LIST
                | RECORD_FEATURE_LIMITS
        )
    }

    /// Decodes a record of type `record_type`.
    pub fn decode(record_type: u8, payload: &[u8]) -> Result<RiskRecord, RecordError> {
        let bad = |e: serde_json::Error| RecordError(format!("risk record type {record_type}: {e}"));
        Ok(match record_type {
            RECORD_DECISION => RiskRecord::Decision(Box::new(serde_json::from_slice(payload).map_err(bad)?)),
            RECORD_DECISION_BINARY => RiskRecord::Decision(Box::new(
                binary::decode(payload)
                    .map_err(|e| RecordError(format!("risk record type {record_type}: {e}")))?,
            )),
            RECORD_LABEL => RiskRecord::Label(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_RULESET => RiskRecord::Ruleset(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_ACTIVATION => RiskRecord::Activation(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_LIST => RiskRecord::List(serde_json::from_slice(payload).map_err(bad)?),
            RECORD_FEATURE_LIMITS => RiskRecord::FeatureLimits(serde_json::from_slice(payload).map_err(bad)?),
            other => return Err(RecordError(format!("unknown risk record type {other}"))),
        })
    }
}

/// The compact binary form of a decision record ([`RECORD_DECISION_BINARY`]).
///
/// Layout: a format byte (`1`), then the fields of [`DecisionRecord`] in declaration order.
/// Unsigned integers are LEB128 varints, signed ones zigzag varints; a string is its byte length
/// then its UTF-8 bytes; a sequence is its length then its items; an option is a byte (`0` none,
/// `1` some) then the value; an outcome is a byte (`0` approve, `1` review, `2` decline; a fired
/// rule's optional outcome is `0` none, else that plus one); a source is `0` transfer, `1`
/// standalone; a feature value is the 8 little-endian bytes of its `f64` (exactly, including NaN
/// and infinities, which JSON could only write as `null`). The id comes first, so that an index
/// reads it without decoding the rest ([`binary::id`]).
pub mod binary {
    use std::sync::Arc;

    use super::{DecisionRecord, DecisionSource, EventRecord, FiredRecord, Verdict};
    use crate::bytes::{put_i64, put_str, put_u64, Reader};
    use crate::rules::Outcome;

    /// What a [`Reader`] of a record names in its errors.
    const RECORD: &str = "the decision record";

    /// The format byte of a record whose event has no payer balance (what every record was before
    /// balances existed: such records are written byte for byte as before).
    pub const FORMAT: u8 = 1;
    /// The format byte of a record whose event carries the payer's balance: [`FORMAT`] with the
    /// balance (zigzag varint) right after the attributes.
    pub const FORMAT_WITH_BALANCE: u8 = 2;

    /// Encodes `d`.
    pub fn encode(d: &DecisionRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 24 * d.active.fired.len() + 24 * d.active.features.len());
        out.push(if d.event.payer_balance_minor.is_some() { FORMAT_WITH_BALANCE } else { FORMAT });
        put_str(&mut out, &d.id);
        out.push(match d.source {
            DecisionSource::Transfer => 0,
            DecisionSource::Standalone => 1,
        });
        let e = &d.event;
        put_str(&mut out, &e.payer);
        put_str(&mut out, &e.payee);
        put_u64(&mut out, e.amount_minor);
        put_str(&mut out, &e.currency);
        put_u64(&mut out, e.timestamp_ns);
        put_u64(&mut out, e.attributes.len() as u64);
        for (k, v) in &e.attributes {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        if let Some(balance) = e.payer_balance_minor {
            put_i64(&mut out, balance);
        }
        out.push(d.observed as u8);
        put_verdict(&mut out, &d.active);
        match &d.shadow {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_verdict(&mut out, v);
            }
        }
        out
    }

    /// Decodes a record [`encode`] wrote.
    pub fn decode(payload: &[u8]) -> Result<DecisionRecord, String> {
        let mut r = Reader::new(payload, RECORD);
        let (id, source, event, observed) = read_head(&mut r)?;
        let active = r.verdict()?;
        let shadow = if r.flag()? { Some(r.verdict()?) } else { None };
        if r.remaining() != 0 {
            return Err(format!("{} bytes after the decision record", r.remaining()));
        }
        Ok(DecisionRecord { id: id.to_string(), source, event, observed, active, shadow })
    }

    /// What a replay re-applies of a decision ([`decode_head`]).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Head<'a> {
        /// The decision's id.
        pub id: &'a str,
        /// Where it came from.
        pub source: DecisionSource,
        /// The event's inputs.
        pub event: EventRecord,
        /// Whether the event was recorded in the velocity features.
        pub observed: bool,
        /// The active verdict's outcome.
        pub outcome: Outcome,
    }

    /// Decodes a record's id, event and active outcome, without the verdicts' fired rules,
    /// features and the shadow verdict (most of its bytes): what a start re-applies of every
    /// decision. The bytes after the outcome are not read, so not checked either: [`decode`] reads
    /// every record that needs more (a review's reasons), and the journal's hash chain covers all.
    pub fn decode_head(payload: &[u8]) -> Result<Head<'_>, String> {
        let mut r = Reader::new(payload, RECORD);
        let (id, source, event, observed) = read_head(&mut r)?;
        r.str()?; // the active ruleset's version
        let outcome = r.outcome()?;
        Ok(Head { id, source, event, observed, outcome })
    }

    /// Reads a record up to its verdicts: id, source, event and whether it was observed.
    fn read_head<'a>(r: &mut Reader<'a>) -> Result<(&'a str, DecisionSource, EventRecord, bool), String> {
        let format = r.byte()?;
        if format != FORMAT && format != FORMAT_WITH_BALANCE {
            return Err(format!("unknown decision record format {format}"));
        }
        let id = r.str()?;
        let source = match r.byte()? {
            0 => DecisionSource::Transfer,
            1 => DecisionSource::Standalone,
            other => return Err(format!("unknown decision source {other}")),
        };
        let payer = r.string()?;
        let payee = r.string()?;
        let amount_minor = r.u64()?;
        let currency = r.string()?;
        let timestamp_ns = r.u64()?;
        let n = r.len()?;
        let mut attributes = Vec::with_capacity(n);
        for _ in 0..n {
            attributes.push((r.string()?, r.string()?));
        }
        let payer_balance_minor = if format == FORMAT_WITH_BALANCE { Some(r.i64()?) } else { None };
        let event = EventRecord {
            payer,
            payee,
            amount_minor,
            currency,
            timestamp_ns,
            attributes,
            payer_balance_minor,
        };
        Ok((id, source, event, r.flag()?))
    }

    /// The id of an encoded decision, read without decoding the rest.
    pub fn id(payload: &[u8]) -> Option<&str> {
        let mut r = Reader::new(payload, RECORD);
        if !matches!(r.byte().ok()?, FORMAT | FORMAT_WITH_BALANCE) {
            return None;
        }
        r.str().ok()
    }

    fn outcome_byte(o: Outcome) -> u8 {
        match o {
            Outcome::Approve => 0,
            Outcome::Review => 1,
            Outcome::Decline => 2,
        }
    }

    fn put_verdict(out: &mut Vec<u8>, v: &Verdict) {
        put_str(out, &v.ruleset_version);
        out.push(outcome_byte(v.outcome));
        put_i64(out, v.score);
        put_u64(out, v.fired.len() as u64);
        for f in &v.fired {
            put_str(out, &f.rule);
            put_i64(out, f.score);
            out.push(f.outcome.map_or(0, |o| outcome_byte(o) + 1));
            put_u64(out, f.reasons.len() as u64);
            for reason in f.reasons.iter() {
                put_str(out, reason);
            }
        }
        put_u64(out, v.features.len() as u64);
        for (name, value) in &v.features {
            put_str(out, name);
            out.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        put_u64(out, v.errors.len() as u64);
        for (rule, error) in &v.errors {
            put_str(out, rule);
            put_str(out, error);
        }
        match &v.degraded {
            None => out.push(0),
            Some(why) => {
                out.push(1);
                put_str(out, why);
            }
        }
        put_u64(out, v.latency_ns);
    }

    impl Reader<'_> {
        fn outcome(&mut self) -> Result<Outcome, String> {
            match self.byte()? {
                0 => Ok(Outcome::Approve),
                1 => Ok(Outcome::Review),
                2 => Ok(Outcome::Decline),
                other => Err(format!("unknown outcome {other}")),
            }
        }

        fn verdict(&mut self) -> Result<Verdict, String> {
            let ruleset_version = self.string()?;
            let outcome = self.outcome()?;
            let score = self.i64()?;
            let n = self.len()?;
            let mut fired = Vec::with_capacity(n);
            for _ in 0..n {
                let rule = self.string()?;
                let score = self.i64()?;
                let outcome = match self.byte()? {
                    0 => None,
                    1 => Some(Outcome::Approve),
                    2 => Some(Outcome::Review),
                    3 => Some(Outcome::Decline),
                    other => return Err(format!("unknown rule outcome {other}")),
                };
                let m = self.len()?;
                let mut reasons = Vec::with_capacity(m);
                for _ in 0..m {
                    reasons.push(self.string()?);
                }
                fired.push(FiredRecord { rule: rule.into(), score, outcome, reasons: reasons.into() });
            }
            let n = self.len()?;
            let mut features = Vec::with_capacity(n);
            for _ in 0..n {
                let name = self.string()?;
                features.push((Arc::from(name), f64::from_bits(self.fixed_u64()?)));
            }
            let n = self.len()?;
            let mut errors = Vec::with_capacity(n);
            for _ in 0..n {
                errors.push((self.string()?, self.string()?));
            }
            let degraded = if self.flag()? { Some(self.string()?) } else { None };
            let latency_ns = self.u64()?;
            Ok(Verdict { ruleset_version, outcome, score, fired, features, errors, degraded, latency_ns })
        }
    }
}
