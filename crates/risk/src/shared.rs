//! Shared velocity features: the seam for a backend that keeps the features outside the process
//! (Redis, in `crates/risk-redis`), so that every node of a cluster decides from the same windows.
//!
//! Key design decision: a backend only moves events, it computes nothing. Before a decision,
//! [`SharedFeatures::load`] fills a fresh, local [`FeatureStore`] with exactly what the decision reads
//! (a [`FeatureQuery`]: each entity's events within the longest window a loaded ruleset reads, and
//! the two pair facts), and [`Engine::decide`] runs on that store — so windows, sums, distinct counts
//! and z-scores are the same code as the embedded path. After the decision,
//! [`SharedFeatures::record`] adds the observed event ([`Observation`], the same entities and pairs
//! [`crate::rules::observe`] records; a test pins that they agree).
//!
//! Pure: no backend types here, no I/O. A backend must return within the timeout it is given (the
//! decision's budget): the controller turns an error or a timeout into a degraded decision.

use crate::features::{FeatureStore, Namespace};
use crate::rules::{attribute_key, Engine, Entity, RiskEvent};

/// What went wrong in a shared-features backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedErrorKind {
    /// The backend did not answer within the time given.
    Timeout,
    /// The backend cannot be reached (refused, reset, backing off after a failure).
    Unavailable,
    /// The backend answered something unexpected (a script error, a malformed reply).
    Protocol,
}

/// A backend failure: its kind, what was being done, and the backend's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedError {
    /// The kind of failure.
    pub kind: SharedErrorKind,
    /// What was being done (`"loading features"`, `"recording an event"`, `"connecting"`).
    pub context: &'static str,
    /// The backend's message.
    pub detail: String,
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            SharedErrorKind::Timeout => "timed out",
            SharedErrorKind::Unavailable => "unavailable",
            SharedErrorKind::Protocol => "unexpected reply",
        };
        write!(f, "shared features {kind} while {}: {}", self.context, self.detail)
    }
}

impl std::error::Error for SharedError {}

/// One entity's window to load: its events in `(now − window_ns, now]` (the longest window any
/// loaded ruleset reads for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRead {
    /// Whose history.
    pub namespace: Namespace,
    /// The entity key, as the feature store names it (tenant-scoped ids unchanged;
    /// `name=value` for attributes).
    pub key: String,
    /// The longest window read.
    pub window_ns: u64,
}

/// Everything one decision reads from the features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureQuery<'a> {
    /// The decision time (the event's timestamp).
    pub now_ns: u64,
    /// One read per entity key, each with its longest window.
    pub windows: Vec<WindowRead>,
    /// Pair facts to look up: `(PayerPayee, payer, payee)` and `(AccountDevice, payer, device)`.
    pub pairs: Vec<(Namespace, &'a str, &'a str)>,
}

/// One observed event, as it enters the features of every entity it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation<'a> {
    /// The decision id: a backend derives the event's identity from it, so recording the same
    /// decision twice (a retry) counts it once.
    pub id: &'a str,
    /// Event time.
    pub timestamp_ns: u64,
    /// Amount in minor units.
    pub amount_minor: u64,
    /// `(namespace, key, counterparty)` for each entity the event enters.
    pub events: Vec<(Namespace, String, &'a str)>,
    /// `(namespace, a, b)` for each pair the event marks as seen.
    pub pairs: Vec<(Namespace, &'a str, &'a str)>,
}

impl Observation<'_> {
    /// Records this observation into a local store (what a backend does remotely).
    pub fn apply(&self, store: &mut FeatureStore) {
        for (namespace, key, counterparty) in &self.events {
            store.record(*namespace, key, self.timestamp_ns, self.amount_minor, counterparty);
        }
        for (namespace, a, b) in &self.pairs {
            store.record_pair(*namespace, a, b, self.timestamp_ns);
        }
    }
}

/// A store of velocity features shared by several nodes.
///
/// Implementations are called under the risk lock of one node, so each call must be bounded in
/// time: `load` by the `timeout_ns` it is given, `record` by the backend's own configured timeout.
pub trait SharedFeatures: Send + Sync + std::fmt::Debug {
    /// A fresh store holding what `query` asks for, within `timeout_ns`.
    fn load(&self, query: &FeatureQuery<'_>, timeout_ns: u64) -> Result<FeatureStore, SharedError>;

    /// Adds an observed event, atomically for all its entities and pairs.
    fn record(&self, observation: &Observation<'_>) -> Result<(), SharedError>;

    /// Waits until every event recorded so far is in the shared state (a backend that records
    /// without waiting for the answer); called when the node stops.
    fn confirm(&self) -> Result<(), SharedError> {
        Ok(())
    }
}

fn attribute<'a>(event: &RiskEvent<'a>, name: &str) -> Option<&'a str> {
    event.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The reads a decision of `event` by `engines` (active, then shadow) needs: each entity key with
/// the longest window any of their features reads, and the new-payee / new-device pairs.
pub fn query_of<'a>(engines: &[&Engine], event: &RiskEvent<'a>) -> FeatureQuery<'a> {
    let mut windows: Vec<WindowRead> = Vec::new();
    for engine in engines {
        for feature in &engine.ruleset().features {
            let entity = match &feature.entity {
                Entity::Payer => Some((Namespace::Payer, event.payer.to_string())),
                Entity::Payee => Some((Namespace::Payee, event.payee.to_string())),
                Entity::PayerInflow => Some((Namespace::Payee, event.payer.to_string())),
                Entity::Device => attribute(event, "device_id").map(|d| (Namespace::Device, d.to_string())),
                Entity::Ip => attribute(event, "ip").map(|d| (Namespace::Ip, d.to_string())),
                Entity::Attribute(name) => attribute(event, name)
                    .map(|v| (Namespace::Attribute, attribute_key(event.payer, name, v))),
            };
            let Some((namespace, key)) = entity else { continue };
            match windows.iter_mut().find(|w| w.namespace == namespace && w.key == key) {
                Some(read) => read.window_ns = read.window_ns.max(feature.window_ns),
                None => windows.push(WindowRead { namespace, key, window_ns: feature.window_ns }),
            }
        }
    }
    let mut pairs = vec![(Namespace::PayerPayee, event.payer, event.payee)];
    if let Some(device) = attribute(event, "device_id") {
        pairs.push((Namespace::AccountDevice, event.payer, device));
    }
    FeatureQuery { now_ns: event.timestamp_ns, windows, pairs }
}

/// What [`crate::rules::observe`] records for `event`, as data: payer, payee, device and IP, the
/// named attributes (`attribute_entities`, the union over the loaded rulesets), and the
/// payer→payee and payer→device pairs.
pub fn observation_of<'a>(
    id: &'a str,
    event: &RiskEvent<'a>,
    attribute_entities: &[&str],
) -> Observation<'a> {
    let mut events = vec![
        (Namespace::Payer, event.payer.to_string(), event.payee),
        (Namespace::Payee, event.payee.to_string(), event.payer),
    ];
    let mut pairs = vec![(Namespace::PayerPayee, event.payer, event.payee)];
    if let Some(device) = attribute(event, "device_id") {
        events.push((Namespace::Device, device.to_string(), event.payer));
        pairs.push((Namespace::AccountDevice, event.payer, device));
    }
    if let Some(ip) = attribute(event, "ip") {
        events.push((Namespace::Ip, ip.to_string(), event.payer));
    }
    for name in attribute_entities {
        if let Some(v) = attribute(event, name) {
            events.push((Namespace::Attribute, attribute_key(event.payer, name, v), event.payer));
        }
    }
    Observation { id, timestamp_ns: event.timestamp_ns, amount_minor: event.amount_minor, events, pairs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureLimits;

    /// `observation_of` must record exactly what `rules::observe` records, or Redis-backed nodes
    /// would see other windows than an embedded one.
    #[test]
    fn observation_records_what_observe_records() {
        let attrs = vec![
            ("device_id".to_string(), "dev-1".to_string()),
            ("ip".to_string(), "10.0.0.1".to_string()),
            ("country".to_string(), "KE".to_string()),
            ("channel".to_string(), "ussd".to_string()),
        ];
        let names = ["country"];
        let (mut a, mut b) =
            (FeatureStore::new(FeatureLimits::default()), FeatureStore::new(FeatureLimits::default()));
        for k in 0..20u64 {
            let payee = format!("t:payee{}", k % 3);
            let event = RiskEvent {
                payer: "t:alice",
                payee: &payee,
                amount_minor: 100 + k * 7,
                currency: "KES",
                timestamp_ns: 1_000_000_000 * (k + 1),
                attributes: &attrs,
                payer_balance_minor: None,
            };
            crate::rules::observe(&mut a, &event, &names);
            observation_of("d", &event, &names).apply(&mut b);
        }
        assert_eq!(a.keys(), b.keys());
        let now = 21_000_000_000;
        for (ns, key) in [
            (Namespace::Payer, "t:alice"),
            (Namespace::Payee, "t:payee1"),
            (Namespace::Device, "dev-1"),
            (Namespace::Ip, "10.0.0.1"),
            (Namespace::Attribute, "country=KE"),
            (Namespace::Attribute, "channel=ussd"),
        ] {
            assert_eq!(a.window(ns, key, now, now), b.window(ns, key, now, now), "{ns:?} {key}");
        }
        assert!(!b.is_new_payee("t:alice", "t:payee2") && !b.is_new_device("t:alice", "dev-1"));
        assert!(b.is_new_payee("t:alice", "t:payee9"));
    }
}
