//! One decision with 100 rules, 10 velocity features and the 300-tree depth-6 GBDT against a warm
//! store: compiled rules, and the `cel` interpreter as the peer. Also prints p50/p99/p99.9 of
//! 100,000 individually timed decisions for each.

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use puhui_risk::{Engine, Evaluation};

fn percentiles(name: &str, warm: &puhui_risk::synthetic::Warm, engine: &Engine) {
    let mut samples: Vec<u64> = (0..100_000usize)
        .map(|k| {
            let event = warm.event(k);
            let t0 = Instant::now();
            std::hint::black_box(engine.decide(&warm.store, &event));
            t0.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1e3;
    eprintln!(
        "{name}: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs over 100,000 decisions",
        p(0.5),
        p(0.99),
        p(0.999)
    );
}

fn bench(c: &mut Criterion) {
    let model = puhui_risk::synthetic::bench_model_path();
    let warm =
        puhui_risk::synthetic::warm_with_model(100, 50_000, &model).expect("the benchmark model loads");
    let interpreter = Engine::with_evaluation(
        Arc::clone(warm.engine.ruleset()),
        Arc::clone(warm.engine.lists()),
        Evaluation::Interpreted,
    );
    let mut k = 0usize;
    c.bench_function("decide_100_rules_10_features_gbdt_300x6/compiled", |b| {
        b.iter(|| {
            k += 1;
            warm.decide(k)
        })
    });
    c.bench_function("decide_100_rules_10_features_gbdt_300x6/interpreted", |b| {
        b.iter(|| {
            k += 1;
            interpreter.decide(&warm.store, &warm.event(k))
        })
    });
    percentiles("decide compiled", &warm, &warm.engine);
    percentiles("decide interpreted", &warm, &interpreter);
}

criterion_group!(benches, bench);
criterion_main!(benches);
