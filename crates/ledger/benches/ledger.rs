//! The ledger's hot path: `Ledger::create_transfers` with single-phase transfers between accounts
//! drawn uniformly from 10,000, in full batches (8,189, the largest) and small ones (100).
//!
//! Run with `cargo bench -p puhui-ledger --bench ledger`. Throughput is reported in transfers per
//! second. Only `create_transfers` (and draining its log, as the store does) is timed; building each
//! batch of requests is not. The ledger keeps growing across iterations, as a live one does, and is
//! rebuilt (untimed) once it holds `TRANSFERS_BEFORE_RESET` transfers so memory stays bounded.

use std::cell::RefCell;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use puhui_ledger::{Currency, Id, Ledger, NewAccount, ResultCode, TransferRequest, BATCH_EVENTS_MAX};

const ACCOUNTS: u64 = 10_000;
const TRANSFERS_BEFORE_RESET: usize = 2_000_000;
const T0: u64 = 1_700_000_000_000_000_000;

/// splitmix64: a small deterministic generator, so every run draws the same accounts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

fn account_id(i: u64) -> Id {
    Id::new(&format!("acct-{i:05}")).expect("valid id")
}

struct Bench {
    ledger: Ledger,
    accounts: Vec<Id>,
    rng: Rng,
    next_id: u64,
    now_ns: u64,
}

impl Bench {
    fn new() -> Bench {
        let cny = Currency::iso("CNY").expect("CNY");
        let accounts: Vec<Id> = (0..ACCOUNTS).map(account_id).collect();
        let mut ledger = Ledger::new();
        for chunk in accounts.chunks(BATCH_EVENTS_MAX) {
            let batch = chunk.iter().map(|id| NewAccount::new(id.clone(), cny)).collect();
            let results = ledger.create_accounts(batch, T0);
            assert!(results.iter().all(|r| r.result == ResultCode::Ok));
        }
        ledger.drain_log().for_each(drop);
        Bench { ledger, accounts, rng: Rng(42), next_id: 0, now_ns: T0 }
    }

    /// A batch of single-phase transfers with fresh ids between two distinct uniform accounts.
    fn batch(&mut self, size: usize) -> Vec<TransferRequest> {
        if self.ledger.transfers_count() >= TRANSFERS_BEFORE_RESET {
            // Ids keep counting: batches already drawn for the old ledger stay unique.
            let (next_id, now_ns) = (self.next_id, self.now_ns);
            *self = Bench { next_id, now_ns, ..Bench::new() };
        }
        let cny = Currency::iso("CNY").expect("CNY").code();
        (0..size)
            .map(|_| {
                let debit = self.rng.below(ACCOUNTS);
                let credit = (debit + 1 + self.rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + self.rng.below(100_000);
                self.next_id += 1;
                TransferRequest::single(
                    Id::new(&format!("tx-{:012}", self.next_id)).expect("valid id"),
                    self.accounts[debit as usize].clone(),
                    self.accounts[credit as usize].clone(),
                    amount,
                    cny,
                )
            })
            .collect()
    }

    fn run(&mut self, batch: Vec<TransferRequest>) -> usize {
        self.now_ns += 1_000_000;
        let results = self.ledger.create_transfers(batch, self.now_ns);
        debug_assert!(results.iter().all(|r| r.result == ResultCode::Ok));
        let journaled = self.ledger.drain_log().count();
        black_box(results);
        journaled
    }
}

fn create_transfers(c: &mut Criterion) {
    let bench = RefCell::new(Bench::new());
    let mut group = c.benchmark_group("create_transfers");
    for size in [BATCH_EVENTS_MAX, 100] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("single_uniform_10k_accounts/batch_{size}"), |b| {
            b.iter_batched(
                || bench.borrow_mut().batch(size),
                |batch| bench.borrow_mut().run(batch),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    let bench = bench.borrow();
    bench.ledger.check_invariants().expect("invariants hold after the benchmark");
}

criterion_group!(benches, create_transfers);
criterion_main!(benches);
