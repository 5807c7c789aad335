//! The crash test's child: random durable load that prints every acknowledged transfer.
//!
//! Each line `ID RESULT` is printed only after `create_transfers` returned, i.e. after the batch was
//! fsync'd. The parent kills this process with SIGKILL at a random moment and then checks that every
//! printed transfer is in the recovered ledger with the same result.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use puhui_ledger::{AccountFlags, Currency, Id, NewAccount, ResultCode, TransferRequest};
use puhui_store::{EmbeddedStore, LedgerStore};
use rand::{Rng, SeedableRng};

/// Wallets in the crash test's economy.
pub const WALLETS: usize = 20;
const RUN_TIME_MAX: Duration = Duration::from_secs(30);
const BATCHES_MAX: u64 = 100_000;

fn id(s: &str) -> Id {
    Id::new(s).expect("valid id")
}

/// Runs until killed (or for at most 30 s).
pub fn run(dir: &Path, cycle: u64, snapshot_every_entries: u64) -> anyhow::Result<ExitCode> {
    let options = puhui_store::StoreOptions { snapshot_every_entries, ..Default::default() };
    let store = EmbeddedStore::open_with(dir, std::sync::Arc::new(puhui_store::SystemClock), options)?;
    let cny = Currency::iso("CNY").expect("CNY");
    let mut accounts = vec![NewAccount::new(id("bank"), cny)];
    accounts.extend(
        (0..WALLETS).map(|w| NewAccount::new(id(&format!("w{w}")), cny).with_flags(AccountFlags::WALLET)),
    );
    store.create_accounts(accounts)?;
    let funding = (0..WALLETS)
        .map(|w| {
            TransferRequest::single(
                id(&format!("fund-w{w}")),
                id("bank"),
                id(&format!("w{w}")),
                10_000,
                cny.code(),
            )
        })
        .collect();
    store.create_transfers(funding)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(cycle);
    let mut holds: Vec<Id> = Vec::new();
    let wallet = |rng: &mut rand::rngs::StdRng| id(&format!("w{}", rng.random_range(0..WALLETS)));
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    for b in 0..BATCHES_MAX {
        if started.elapsed() > RUN_TIME_MAX {
            break;
        }
        let mut batch = Vec::new();
        let items = rng.random_range(1..=20);
        for k in 0..items {
            let tid = id(&format!("c{cycle}-b{b}-{k}"));
            let (debit, mut credit) = (wallet(&mut rng), wallet(&mut rng));
            if credit == debit {
                credit = id("bank");
            }
            let amount = rng.random_range(1..=800u64);
            match rng.random_range(0..100) {
                0..=54 => batch.push(TransferRequest::single(tid, debit, credit, amount, cny.code())),
                55..=69 => {
                    let timeout = (rng.random_range(0..3) == 0).then(|| rng.random_range(1..=50));
                    batch.push(TransferRequest::pending(tid, debit, credit, amount, cny.code(), timeout));
                }
                70..=84 if !holds.is_empty() => {
                    let pending = holds.swap_remove(rng.random_range(0..holds.len()));
                    if rng.random_range(0..2) == 0 {
                        let amount = (rng.random_range(0..2) == 0).then_some(amount);
                        batch.push(TransferRequest::post(tid, pending, amount));
                    } else {
                        batch.push(TransferRequest::void(tid, pending));
                    }
                }
                _ => {
                    // A linked chain; member ids say the chain's size so the parent can check atomicity.
                    let n = rng.random_range(2..=3);
                    for m in 0..n {
                        let (d, mut c) = (wallet(&mut rng), wallet(&mut rng));
                        if c == d {
                            c = id("bank");
                        }
                        let mut t = TransferRequest::single(
                            id(&format!("c{cycle}-b{b}-{k}-ch{n}-{m}")),
                            d,
                            c,
                            rng.random_range(1..=800u64),
                            cny.code(),
                        );
                        t.linked = m + 1 < n;
                        batch.push(t);
                    }
                }
            }
        }
        let ids: Vec<Id> = batch.iter().map(|t| t.id.clone()).collect();
        let kinds: Vec<bool> = batch.iter().map(|t| t.kind == puhui_ledger::TransferKind::Pending).collect();
        let results = store.create_transfers(batch)?;
        let mut lines = String::new();
        for ((tid, result), is_hold) in ids.iter().zip(&results).zip(kinds) {
            lines.push_str(&format!("{tid} {}\n", result.result));
            if is_hold && result.result == ResultCode::Ok {
                holds.push(tid.clone());
            }
        }
        out.write_all(lines.as_bytes())?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
