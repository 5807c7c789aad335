//! Hot paths of the journal: encoding + hash-chaining entries into a frame, and decoding them.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use puhui_journal::codec::{decode, KIND_TRANSFER};
use puhui_journal::frame::entry_hash;
use puhui_ledger::wire::encode_request;
use puhui_ledger::{Currency, Id, TransferRequest};

fn requests(n: usize) -> Vec<TransferRequest> {
    let cny = Currency::iso("CNY").unwrap();
    (0..n)
        .map(|i| {
            TransferRequest::single(
                Id::new(&format!("t{i:x}")).unwrap(),
                Id::new(&format!("acct-{}", i % 10_000)).unwrap(),
                Id::new(&format!("acct-{}", (i * 7 + 1) % 10_000)).unwrap(),
                1 + i as u64 % 100_000,
                cny.code(),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let batch = requests(8_189);
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("encode_and_chain_8189", |b| {
        let mut frame = Vec::with_capacity(2 << 20);
        b.iter(|| {
            frame.clear();
            let mut hash = [0u8; 32];
            for (seq, r) in batch.iter().enumerate() {
                let start = frame.len();
                frame.extend_from_slice(&0u64.to_le_bytes());
                frame.push(0);
                encode_request(r, &mut frame);
                hash = entry_hash(&hash, seq as u64, KIND_TRANSFER, &frame[start..]);
                frame.extend_from_slice(&hash);
            }
            hash
        })
    });
    let bodies: Vec<Vec<u8>> = batch
        .iter()
        .map(|r| {
            let mut body = 1_700_000_000_000_000_000u64.to_le_bytes().to_vec();
            body.push(0);
            encode_request(r, &mut body);
            body
        })
        .collect();
    group.bench_function("decode_8189", |b| {
        b.iter_batched(
            || (),
            |_| bodies.iter().map(|body| decode(KIND_TRANSFER, body).unwrap()).count(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
