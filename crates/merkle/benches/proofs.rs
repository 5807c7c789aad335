//! Proof generation on a 10,000,000-leaf tree (synthetic leaf hashes).
//!
//! Run with `cargo bench -p puhui-merkle --bench proofs`. Besides criterion's figures (mean time per
//! call over random queries) it prints a per-call latency distribution (p50/p99/p99.9/max of
//! 200,000 individually timed calls) for each operation, since the requirement is on the tail.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use puhui_merkle::{verify_consistency, verify_inclusion, Hash, MerkleTree};

const LEAVES: u64 = 10_000_000;
const SAMPLES: usize = 200_000;

/// A cheap synthetic leaf hash: distinct per index, no SHA-256 needed.
fn synthetic_leaf(i: u64) -> Hash {
    let mut h = [0x5au8; 32];
    h[..8].copy_from_slice(&i.to_le_bytes());
    h
}

fn tree() -> &'static MerkleTree {
    static TREE: OnceLock<MerkleTree> = OnceLock::new();
    TREE.get_or_init(|| {
        let start = Instant::now();
        let mut t = MerkleTree::with_capacity(LEAVES);
        for i in 0..LEAVES {
            t.append(synthetic_leaf(i));
        }
        let took = start.elapsed();
        eprintln!(
            "built a {LEAVES}-leaf tree in {:.2?} ({:.0} ns/append), {:.1} MiB heap ({:.1} bytes/leaf)",
            took,
            took.as_nanos() as f64 / LEAVES as f64,
            t.heap_bytes() as f64 / (1 << 20) as f64,
            t.heap_bytes() as f64 / LEAVES as f64,
        );
        t
    })
}

/// splitmix64: deterministic pseudo-random queries without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    eprintln!(
        "{name:<40} n={} p50={:?} p99={:?} p99.9={:?} max={:?}",
        times.len(),
        q(0.50),
        q(0.99),
        q(0.999),
        times[times.len() - 1]
    );
}

/// Times `SAMPLES` individual calls of each operation and prints the distribution.
fn latency_distribution() {
    let t = tree();
    let n = t.size();
    let mut rng = Rng(42);
    let mut inc_full = Vec::with_capacity(SAMPLES);
    let mut inc_hist = Vec::with_capacity(SAMPLES);
    let mut cons = Vec::with_capacity(SAMPLES);
    let mut cons_full = Vec::with_capacity(SAMPLES);
    let mut root_hist = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let i = rng.range(0, n - 1);
        let s0 = Instant::now();
        black_box(t.inclusion_proof(black_box(i), n).unwrap());
        inc_full.push(s0.elapsed());

        let size = rng.range(1, n);
        let i = rng.range(0, size - 1);
        let s0 = Instant::now();
        black_box(t.inclusion_proof(black_box(i), size).unwrap());
        inc_hist.push(s0.elapsed());

        let new = rng.range(2, n);
        let old = rng.range(1, new - 1);
        let s0 = Instant::now();
        black_box(t.consistency_proof(black_box(old), new).unwrap());
        cons.push(s0.elapsed());

        let old = rng.range(1, n - 1);
        let s0 = Instant::now();
        black_box(t.consistency_proof(black_box(old), n).unwrap());
        cons_full.push(s0.elapsed());

        let size = rng.range(1, n);
        let s0 = Instant::now();
        black_box(t.root_at(black_box(size)).unwrap());
        root_hist.push(s0.elapsed());
    }
    eprintln!(
        "per-call latency over {SAMPLES} random queries on {n} leaves (includes ~20-40 ns timer overhead):"
    );
    report("inclusion_proof(random, 10M)", inc_full);
    report("inclusion_proof(random, random size)", inc_hist);
    report("consistency_proof(random, 10M)", cons_full);
    report("consistency_proof(random, random new)", cons);
    report("root_at(random size)", root_hist);
}

fn bench_proofs(c: &mut Criterion) {
    let t = tree();
    let n = t.size();
    latency_distribution();

    let mut g = c.benchmark_group("merkle_10M");
    let mut rng = Rng(7);
    g.bench_function("inclusion_proof/size=10M", |b| {
        b.iter(|| t.inclusion_proof(black_box(rng.range(0, n - 1)), n).unwrap())
    });
    g.bench_function("inclusion_proof/historical_size", |b| {
        b.iter(|| {
            let size = rng.range(1, n);
            t.inclusion_proof(black_box(rng.range(0, size - 1)), size).unwrap()
        })
    });
    g.bench_function("consistency_proof/new=10M", |b| {
        b.iter(|| t.consistency_proof(black_box(rng.range(1, n - 1)), n).unwrap())
    });
    g.bench_function("consistency_proof/historical_sizes", |b| {
        b.iter(|| {
            let new = rng.range(2, n);
            t.consistency_proof(black_box(rng.range(1, new - 1)), new).unwrap()
        })
    });
    g.bench_function("root_at/historical_size", |b| {
        b.iter(|| t.root_at(black_box(rng.range(1, n))).unwrap())
    });

    // Verifiers, on a fixed set of pre-generated proofs.
    let root = t.root();
    let cases: Vec<(u64, Vec<Hash>)> = (0..1024)
        .map(|_| {
            let i = rng.range(0, n - 1);
            (i, t.inclusion_proof(i, n).unwrap())
        })
        .collect();
    let mut k = 0usize;
    g.bench_function("verify_inclusion/size=10M", |b| {
        b.iter(|| {
            let (i, p) = &cases[k % cases.len()];
            k += 1;
            verify_inclusion(&t.leaf(*i).unwrap(), *i, n, p, &root).unwrap()
        })
    });
    let cons: Vec<(u64, Hash, Vec<Hash>)> = (0..1024)
        .map(|_| {
            let old = rng.range(1, n - 1);
            (old, t.root_at(old).unwrap(), t.consistency_proof(old, n).unwrap())
        })
        .collect();
    g.bench_function("verify_consistency/new=10M", |b| {
        b.iter(|| {
            let (old, old_root, p) = &cons[k % cons.len()];
            k += 1;
            verify_consistency(*old, n, old_root, &root, p).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_proofs);
criterion_main!(benches);
