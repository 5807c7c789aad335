//! One decision with 100 rules and 10 velocity features (no model yet), against a warm store.
//! Also prints p50/p99 of 100,000 individually timed decisions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use puhui_risk::{Engine, FeatureLimits, FeatureStore, RiskEvent, Ruleset};

const S: u64 = 1_000_000_000;

fn ruleset() -> String {
    let features = [
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
    let mut text = String::from("version = \"bench\"\n[thresholds]\nreview = 500\ndecline = 1000\n");
    for (name, entity, aggregate, window) in features {
        text += &format!("[[features]]\nname = \"{name}\"\nentity = \"{entity}\"\naggregate = \"{aggregate}\"\nwindow = \"{window}\"\n");
    }
    for i in 0..100 {
        let (name, ..) = features[i % features.len()];
        let expr = match i % 4 {
            0 => format!("f.{name} >= {} && amount > {}", 5 + i, 1_000 * i),
            1 => format!("new_payee && f.{name} > {} && ctx.channel == 'app'", i),
            2 => format!("amount > {} || f.{name} > {}", 10_000_000 + i, 1_000 + i),
            _ => format!("in_list('deny', ctx.device_id) && f.{name} >= {}", i),
        };
        text += &format!(
            "[[rules]]\nid = \"r{i}\"\ndescription = \"bench rule\"\nexpression = \"{expr}\"\nscore = {}\n",
            10 + i % 7
        );
    }
    text
}

fn setup() -> (Engine, FeatureStore, Vec<Vec<(String, String)>>) {
    let ruleset = Ruleset::parse(&ruleset()).expect("bench ruleset");
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
    for i in 0..50_000u64 {
        let p = (i % 1_000) as usize;
        let e = RiskEvent {
            payer: &format!("w{p}"),
            payee: &format!("m{}", i % 97),
            amount_minor: 1_000 + i % 5_000,
            currency: "CNY",
            timestamp_ns: 1_000_000 * S + i * S / 10,
            attributes: &attrs[p],
        };
        engine.observe(&mut store, &e);
    }
    (engine, store, attrs)
}

fn bench(c: &mut Criterion) {
    let (engine, store, attrs) = setup();
    let payers: Vec<String> = (0..1_000).map(|i| format!("w{i}")).collect();
    let now = 1_000_000 * S + 50_000 * S / 10;
    let mut i = 0usize;
    c.bench_function("decide_100_rules_10_features", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000;
            let e = RiskEvent {
                payer: &payers[i],
                payee: "m5",
                amount_minor: 25_000,
                currency: "CNY",
                timestamp_ns: now,
                attributes: &attrs[i],
            };
            engine.decide(&store, &e)
        })
    });
    let mut samples: Vec<u64> = (0..100_000usize)
        .map(|k| {
            let e = RiskEvent {
                payer: &payers[k % 1_000],
                payee: "m5",
                amount_minor: 25_000,
                currency: "CNY",
                timestamp_ns: now,
                attributes: &attrs[k % 1_000],
            };
            let t0 = Instant::now();
            std::hint::black_box(engine.decide(&store, &e));
            t0.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1e3;
    eprintln!(
        "decide: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs over 100,000 decisions",
        p(0.5),
        p(0.99),
        p(0.999)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
