//! Probe: the slowest 64-transfer batch in each window as the ledger grows to 4M transfers.
use puhui_ledger::{Currency, Id, Ledger, NewAccount, TransferRequest};
use std::time::Instant;
fn main() {
    let cny = Currency::iso("CNY").unwrap();
    let mut ledger = Ledger::new();
    let accts: Vec<Id> = (0..1000).map(|i| Id::new(&format!("acct-{i}")).unwrap()).collect();
    ledger.create_accounts(accts.iter().map(|a| NewAccount::new(a.clone(), cny)).collect(), 1);
    ledger.drain_log().for_each(drop);
    let mut n = 0u64;
    let mut worst = 0f64;
    let mut next_report = 1u64 << 16;
    let total: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4_000_000);
    while n < total {
        let batch: Vec<TransferRequest> = (0..64)
            .map(|k| {
                n += 1;
                TransferRequest::single(
                    Id::new(&format!("tx-{n:012}")).unwrap(),
                    accts[(n % 1000) as usize].clone(),
                    accts[((n + 1 + k) % 1000) as usize].clone(),
                    1,
                    cny.code(),
                )
            })
            .collect();
        let t = Instant::now();
        ledger.create_transfers(batch, 1_000 + n);
        ledger.drain_log().for_each(drop);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if ms > worst {
            worst = ms;
        }
        if n >= next_report {
            println!("{n:>9} transfers: worst batch {worst:.2} ms");
            worst = 0.0;
            next_report *= 2;
        }
    }
}
