//! Scoring the 300-tree depth-6 XGBoost fixture model (the benchmark model), one
//! feature vector at a time, as a risk decision does.
//!
//! Run with `cargo bench -p puhui-risk-model --bench predict`. Besides criterion's mean time per
//! call it prints a per-call latency distribution (p50/p99/p99.9/max of 100,000 individually timed
//! predictions), since the requirement (a ≤ 20 µs p99 decision) is on the tail.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use puhui_risk_model::Model;

const SAMPLES: usize = 100_000;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The 200 fixture rows (held-out data, edge values, missing values).
fn rows() -> Vec<Vec<f32>> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32)).collect())
        .collect()
}

fn percentiles(name: &str, model: &Model, rows: &[Vec<f32>]) {
    // Warm up caches and branch predictors.
    for i in 0..20_000 {
        black_box(model.predict(black_box(&rows[i % rows.len()])));
    }
    let mut ns = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let row = &rows[(i * 7) % rows.len()];
        let start = Instant::now();
        black_box(model.predict(black_box(row)));
        ns.push(start.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)];
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
    eprintln!(
        "{name}: {} trees, {} nodes, depth {}, {:.0} KiB: {SAMPLES} single predictions timed one by one: \
         mean {mean:.0} ns, p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        model.num_trees(),
        model.num_nodes(),
        model.max_depth(),
        model.heap_bytes() as f64 / 1024.0,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        ns[ns.len() - 1],
    );
}

fn bench(c: &mut Criterion) {
    let rows = rows();
    let xgb = Model::load(fixtures().join("xgb_bench_300x6.json")).unwrap();
    let lgb = Model::load(fixtures().join("lgb_binary.txt")).unwrap();
    percentiles("xgb_bench_300x6 predict", &xgb, &rows);
    percentiles("lgb_binary (50 trees, 15 leaves) predict", &lgb, &rows);

    let mut i = 0usize;
    c.bench_function("xgboost 300 trees depth 6: predict", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            xgb.predict(black_box(&rows[i]))
        })
    });
    c.bench_function("xgboost 300 trees depth 6: predict_raw", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            xgb.predict_raw(black_box(&rows[i]))
        })
    });
    c.bench_function("lightgbm 50 trees 15 leaves: predict", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            lgb.predict(black_box(&rows[i]))
        })
    });
    let start = Instant::now();
    let model = Model::load(fixtures().join("xgb_bench_300x6.json")).unwrap();
    eprintln!("loading xgb_bench_300x6.json (1.4 MB JSON): {:.2?}", start.elapsed());
    black_box(model);
}

criterion_group!(benches, bench);
criterion_main!(benches);
