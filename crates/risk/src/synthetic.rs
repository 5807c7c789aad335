//! A synthetic ruleset and warm feature store of a chosen size, for benchmarks (`puhui bench risk`,
//! the criterion bench): rule shapes like the starter ruleset's, over ten velocity features, and
//! optionally a gradient-boosted model (the 300-tree depth-6 one, [`bench_model_path`])
//! whose score every tenth rule reads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use std::path::Path;

use crate::{Engine, FeatureLimits, FeatureStore, RiskEvent, Ruleset, RulesetError};

const FEATURES: [(&str, &str, &str, &str); 10] = [
    ("c1m", "payer", "count", "1m"),
    ("c1h", "payer", "count", "1h"),
    ("c24h", "payer", "count", "24h"),
    ("s1h", "payer", "sum", "1h"),
    ("s24h", "payer", "sum", "24h"),
    ("m24h", "payer", "max", "24h"),
    ("d24h", "payer", "distinct", "24h"),
    ("z30d", "payer", "zscore", "30d"),
    ("dev24h", "device", "distinct", "24h"),
    ("ip1h", "ip", "count", "1h"),
];

/// The 300-tree depth-6 XGBoost model the benchmarks score (ten inputs), in the repository.
pub fn bench_model_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../risk-model/tests/fixtures/xgb_bench_300x6.json")
}

/// A ruleset of `rules` rules over the ten features, as TOML text.
pub fn ruleset_text(rules: usize) -> String {
    text(rules, None)
}

/// Like [`ruleset_text`], with the model at `model`, a path relative to the directory the ruleset is
/// parsed in (named `fraud`, over amount and nine features), read by every tenth rule.
pub fn ruleset_text_with_model(rules: usize, model: &Path) -> String {
    text(rules, Some(model))
}

fn text(rules: usize, model: Option<&Path>) -> String {
    let mut text = String::from("version = \"synthetic\"\n[thresholds]\nreview = 500\ndecline = 1000\n");
    if let Some(path) = model {
        let path = path.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
        text += &format!(
            "[[models]]\nname = \"fraud\"\npath = \"{path}\"\ninputs = [\"amount\", \"c1m\", \"c1h\", \"c24h\", \"s1h\", \"s24h\", \"m24h\", \"d24h\", \"z30d\", \"dev24h\"]\n"
        );
    }
    for (name, entity, aggregate, window) in FEATURES {
        text += &format!(
            "[[features]]\nname = \"{name}\"\nentity = \"{entity}\"\naggregate = \"{aggregate}\"\nwindow = \"{window}\"\n"
        );
    }
    for i in 0..rules {
        let (name, ..) = FEATURES[i % FEATURES.len()];
        let expr = match i % 4 {
            _ if model.is_some() && i % 10 == 9 => format!("fraud > 0.{} && {name} >= {}", 5 + i % 5, i % 3),
            0 => format!("{name} >= {} && amount > {}", 5 + i, 1_000 * i),
            1 => format!("new_payee && {name} > {} && ctx.channel == 'app'", i),
            2 => format!("amount > {} || {name} > {}", 10_000_000 + i, 1_000 + i),
            _ => format!("in_list('deny', ctx.device_id) && {name} >= {}", i),
        };
        text += &format!(
            "[[rules]]\nid = \"r{i}\"\ndescription = \"synthetic\"\nexpression = \"{expr}\"\nscore = {}\n",
            10 + i % 7
        );
    }
    text
}

/// A warm engine and store, and the events a benchmark decides.
pub struct Warm {
    /// The engine with the synthetic ruleset.
    pub engine: Engine,
    /// The feature store after the history.
    pub store: FeatureStore,
    payers: Vec<String>,
    attrs: Vec<Vec<(String, String)>>,
    now: u64,
}

impl Warm {
    /// The `k`-th benchmark event: one of the 1,000 payers pays 250 yuan, right after the history.
    pub fn event(&self, k: usize) -> RiskEvent<'_> {
        bench_event(&self.payers, &self.attrs, k, self.now)
    }

    /// Decides the `k`-th benchmark event.
    pub fn decide(&self, k: usize) -> crate::Decision {
        self.engine.decide(&self.store, &self.event(k))
    }

    /// Decides the `k`-th benchmark event with `engine` as if it came `k` tenths of a second after
    /// the history (each payer's next one 100 s after its last), then records it in the store
    /// unless declined: what the server does with every transfer, so the windows move.
    pub fn decide_and_record(&mut self, engine: &Engine, k: usize) -> crate::Decision {
        const TENTH_OF_A_SECOND_NS: u64 = 100_000_000;
        let at_ns = self.now + k as u64 * TENTH_OF_A_SECOND_NS;
        // Field by field, so that the store can be borrowed mutably beside the event.
        let event = bench_event(&self.payers, &self.attrs, k, at_ns);
        let decision = engine.decide(&self.store, &event);
        if decision.outcome != crate::Outcome::Decline {
            engine.observe(&mut self.store, &event);
        }
        decision
    }
}

/// The `k`-th benchmark event at `timestamp_ns`: one of the 1,000 payers pays 250 yuan.
fn bench_event<'a>(
    payers: &'a [String],
    attrs: &'a [Vec<(String, String)>],
    k: usize,
    timestamp_ns: u64,
) -> RiskEvent<'a> {
    RiskEvent {
        payer: &payers[k % 1_000],
        payee: "m5",
        amount_minor: 25_000,
        currency: "CNY",
        timestamp_ns,
        attributes: &attrs[k % 1_000],
        payer_balance_minor: None,
    }
}

/// An engine for `rules` synthetic rules and a store warmed with `history` events over 1,000 payers.
pub fn warm(rules: usize, history: u64) -> Warm {
    let ruleset = Ruleset::parse(&ruleset_text(rules)).expect("the synthetic ruleset is valid");
    warm_ruleset(ruleset, history)
}

/// Like [`warm`], with the model at `model` (see [`ruleset_text_with_model`]); an error if it does
/// not load.
pub fn warm_with_model(rules: usize, history: u64, model: &Path) -> Result<Warm, RulesetError> {
    // Model paths are relative to the ruleset's directory: the model's own, here.
    let name = model.file_name().map(Path::new).unwrap_or(model);
    let dir = model.parent().unwrap_or(Path::new("."));
    Ok(warm_ruleset(Ruleset::parse_in(&ruleset_text_with_model(rules, name), dir)?, history))
}

fn warm_ruleset(ruleset: Ruleset, history: u64) -> Warm {
    const S: u64 = 1_000_000_000;
    let engine = Engine::new(Arc::new(ruleset), Arc::new(RwLock::new(HashMap::new())));
    let mut store = FeatureStore::new(FeatureLimits::default());
    let attrs: Vec<Vec<(String, String)>> = (0..1_000)
        .map(|i| {
            vec![
                ("device_id".to_string(), format!("dev{i}")),
                ("ip".to_string(), format!("10.0.{}.{}", i / 250, i % 250)),
                ("channel".to_string(), "app".to_string()),
            ]
        })
        .collect();
    let start = 1_000_000 * S;
    for i in 0..history {
        let p = (i % 1_000) as usize;
        let payer = format!("w{p}");
        let payee = format!("m{}", i % 97);
        let e = RiskEvent {
            payer: &payer,
            payee: &payee,
            amount_minor: 1_000 + i % 5_000,
            currency: "CNY",
            timestamp_ns: start + i * S / 10,
            attributes: &attrs[p],
            payer_balance_minor: None,
        };
        engine.observe(&mut store, &e);
    }
    let payers = (0..1_000).map(|i| format!("w{i}")).collect();
    Warm { engine, store, payers, attrs, now: start + history * S / 10 }
}
