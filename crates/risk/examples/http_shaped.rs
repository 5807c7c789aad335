//! Decisions shaped like `bench/http/risk.sh`'s, in process: where the server's decision time goes
//! without HTTP around it.
//!
//! `puhui bench risk` cycles 1,000 payers paying one merchant from 1,000 devices and IPs (~4,000
//! keys, short ids). The HTTP benchmark's transfers pay between random pairs of 1,000 accounts,
//! from an IP made of the pair (65,536 of them), with tenant-scoped ids of 40–90 bytes: a few
//! hundred thousand keys after as many decisions. This runs such events through a
//! [`Controller`] (decide, then record) and prints the time per decision after a warm-up.
//!
//! `cargo run --release -p puhui-risk --example http_shaped -- RULESET.toml [http|cyclic|short] [DECISIONS]`
//! (3,000,000 HTTP-shaped decisions fill the store to its bound, `keys_max`, and evict: the
//! slowest decision shows an eviction's pause)
//! (`cyclic`: the in-process bench's pattern of payers and one payee; `short`: the HTTP shape with a
//! one-letter tenant prefix).

use std::path::Path;
use std::time::Instant;

use puhui_risk::records::EventRecord;
use puhui_risk::{Controller, DecisionSource, FeatureLimits};

/// The server's allocator (`crates/puhui`): where the store's allocations land decides its misses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Decisions made before timing starts.
const WARM_UP: u64 = 50_000;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: http_shaped RULESET.toml [http|cyclic|short] [DECISIONS]")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let shape = args.get(2).map_or("http", String::as_str);
    let decisions: u64 = args.get(3).map_or(Ok(300_000), |n| n.parse()).map_err(|e| format!("{e}"))?;
    if !matches!(shape, "http" | "cyclic" | "short") || decisions <= WARM_UP {
        return Err(format!("a shape of http, cyclic or short and more than {WARM_UP} decisions"));
    }
    let (mut controller, _) =
        Controller::new(&text, Path::new("."), FeatureLimits::default()).map_err(|e| e.to_string())?;
    // A tenant id as the API makes them (33 characters), or one letter.
    let tenant = if shape == "short" { "t" } else { "tabcdefghijklmnopqrstuvwxyz234567" };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // As the server does (`crates/puhui/src/main.rs`): no transparent huge pages, whose faults
    // would be this run's slowest decisions rather than the store's own pauses.
    #[cfg(target_os = "linux")]
    // SAFETY: a process-wide flag; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let start_ns = 1_800_000_000_000_000_000u64;
    let mut timed_from = Instant::now();
    // The slowest decision after the warm-up (µs, and the keys held then), and those over 1 ms.
    let (mut slowest_us, mut slowest_at_keys, mut over_1ms) = (0u128, 0usize, 0u64);
    for k in 0..decisions {
        if k == WARM_UP {
            timed_from = Instant::now();
        }
        let (debit, credit) = if shape == "cyclic" {
            (k % 1_000, 5)
        } else {
            let debit = random() % 1_000;
            (debit, (debit + 1 + random() % 999) % 1_000)
        };
        let event = EventRecord {
            payer: format!("{tenant}:acct-{debit}"),
            payee: format!("{tenant}:acct-{credit}"),
            amount_minor: 1 + random() % 100_000,
            currency: "CNY".into(),
            // 10,000 decisions a second, as the server makes them under the benchmark.
            timestamp_ns: start_ns + k * 100_000,
            attributes: vec![
                ("channel".into(), "app".into()),
                ("device_id".into(), format!("{tenant}:dev-{debit}")),
                ("ip".into(), format!("{tenant}:10.0.{}.{}", debit % 256, credit % 256)),
                ("kyc_tier".into(), "3".into()),
            ],
            payer_balance_minor: None,
        };
        let started = Instant::now();
        let decision =
            controller.decide_record(format!("{tenant}:d{k}"), DecisionSource::Transfer, event, true);
        controller.commit_decision(&decision);
        let took_us = started.elapsed().as_micros();
        if k >= WARM_UP {
            over_1ms += u64::from(took_us > 1_000);
            if took_us > slowest_us {
                (slowest_us, slowest_at_keys) = (took_us, controller.features().keys());
            }
        }
    }
    let timed = timed_from.elapsed().as_secs_f64();
    println!(
        "{shape}: {:.2} µs per decision (decide and record, {} timed), {} keys in the feature store",
        timed * 1e6 / (decisions - WARM_UP) as f64,
        decisions - WARM_UP,
        controller.features().keys()
    );
    println!("slowest decision {slowest_us} µs (at {slowest_at_keys} keys), {over_1ms} over 1 ms");
    Ok(())
}
