//! One decision with 100 rules and 10 velocity features (no model yet), against a warm store.
//! Also prints p50/p99 of 100,000 individually timed decisions.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let warm = puhui_risk::synthetic::warm(100, 50_000);
    let mut k = 0usize;
    c.bench_function("decide_100_rules_10_features", |b| {
        b.iter(|| {
            k += 1;
            warm.decide(k)
        })
    });
    let mut samples: Vec<u64> = (0..100_000usize)
        .map(|k| {
            let t0 = Instant::now();
            std::hint::black_box(warm.decide(k));
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
