//! Node hashes per second, one stream against two interleaved (`cargo run --release -p puhui-merkle --example x2_speed`).
use std::hint::black_box;
use std::time::Instant;
fn main() {
    let n = 2_000_000u32;
    let hashes: Vec<[u8; 32]> = (0..64u8).map(|i| [i; 32]).collect();
    for round in 0..3 {
        let t = Instant::now();
        let mut acc = [0u8; 32];
        for i in 0..n as usize {
            acc = puhui_merkle::node_hash(black_box(&hashes[i % 64]), black_box(&acc));
        }
        let one = t.elapsed().as_nanos() as f64 / n as f64;
        black_box(acc);
        let t = Instant::now();
        let (mut a, mut b) = ([0u8; 32], [1u8; 32]);
        for i in 0..(n / 2) as usize {
            (a, b) = puhui_merkle::node_hash_x2(
                black_box(&hashes[i % 64]),
                black_box(&a),
                black_box(&hashes[(i + 7) % 64]),
                black_box(&b),
            );
        }
        let two = t.elapsed().as_nanos() as f64 / n as f64;
        black_box((a, b));
        println!(
            "round {round}: one stream {one:.1} ns per node hash, two interleaved {two:.1} ns per node hash"
        );
    }
}
