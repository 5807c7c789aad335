//! Decisions per second and latency with the velocity features in Redis vs in process: the starter
//! ruleset, one thread (a node decides under one lock), each decision decided and committed (load +
//! rules + record with Redis; rules + record locally), after a warm-up history.
//!
//! `cargo run --release -p puhui-risk-redis --example bench -- --redis redis://127.0.0.1:6379`
//! (flags: `--decisions N` (20000), `--history N` (20000), `--payers N` (1000)). Keys go under a
//! random prefix and are deleted at the end. Prints one line per mode and one JSON line.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use puhui_risk::{Controller, DecisionSource, FeatureLimits, RiskEvent};
use puhui_risk_redis::{RedisConfig, RedisFeatures};

const STARTER: &str = include_str!("../../../rulesets/starter.toml");
const T0_NS: u64 = 1_750_000_000_000_000_000;
/// Time between two events of the whole stream (so a payer's 1,000 events span days, not seconds).
const STEP_NS: u64 = 5_000_000_000;

struct Args {
    redis: String,
    decisions: u64,
    history: u64,
    payers: u64,
}

fn args() -> Result<Args, String> {
    let mut args =
        Args { redis: "redis://127.0.0.1:6379".into(), decisions: 20_000, history: 20_000, payers: 1_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--redis" => args.redis = value.clone(),
            "--decisions" => args.decisions = number()?.clamp(1, 10_000_000),
            "--history" => args.history = number()?.min(10_000_000),
            "--payers" => args.payers = number()?.clamp(1, 1_000_000),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// Runs `count` decisions from event number `from` on `node`; returns each one's latency.
fn run(node: &mut Controller, args: &Args, from: u64, count: u64) -> Vec<u64> {
    let attrs = vec![
        ("device_id".to_string(), String::new()),
        ("channel".to_string(), "app".to_string()),
        ("kyc_tier".to_string(), "3".to_string()),
    ];
    let mut attrs = attrs;
    let mut latencies_ns = Vec::with_capacity(count as usize);
    for i in from..from + count {
        let payer = format!("bench:p{}", i % args.payers);
        let payee = format!("bench:m{}", i % 97);
        attrs[0].1 = format!("dev{}", i % args.payers);
        let event = RiskEvent {
            payer: &payer,
            payee: &payee,
            amount_minor: 1_000 + (i * 7_919) % 50_000,
            currency: "CNY",
            timestamp_ns: T0_NS + i * STEP_NS / args.payers.max(1),
            attributes: &attrs,
            payer_balance_minor: None,
        };
        let started = Instant::now();
        let d = node.decide(format!("dec{i}"), DecisionSource::Standalone, &event, true);
        node.commit_decision(&d);
        latencies_ns.push(started.elapsed().as_nanos() as u64);
    }
    latencies_ns
}

fn report(mode: &str, mut latencies_ns: Vec<u64>, seconds: f64) -> String {
    latencies_ns.sort_unstable();
    let pct = |q: f64| {
        latencies_ns[((latencies_ns.len() as f64 * q) as usize).min(latencies_ns.len() - 1)] as f64 / 1e3
    };
    let per_s = latencies_ns.len() as f64 / seconds;
    eprintln!(
        "{mode}: {} decisions, {per_s:.0} decisions/s on one thread, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        latencies_ns.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    format!(
        "\"{mode}\":{{\"decisions_per_s\":{per_s:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    )
}

fn main() -> Result<(), String> {
    let args = args()?;
    let prefix = format!("puhui:bench:{:016x}:", std::process::id() as u64 ^ T0_NS);
    let redis = Arc::new(
        RedisFeatures::new(RedisConfig { key_prefix: prefix.clone(), ..RedisConfig::new(&args.redis) })
            .map_err(|e| e.to_string())?,
    );
    redis.ping(1_000).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for mode in ["local", "redis"] {
        let (mut node, _) =
            Controller::new(STARTER, Path::new("."), FeatureLimits::default()).map_err(|e| e.to_string())?;
        if mode == "redis" {
            node.set_shared_features(Some(Arc::clone(&redis) as Arc<dyn puhui_risk::SharedFeatures>));
        }
        run(&mut node, &args, 0, args.history);
        let started = Instant::now();
        let latencies_ns = run(&mut node, &args, args.history, args.decisions);
        results.push(report(mode, latencies_ns, started.elapsed().as_secs_f64()));
        if let Some(stats) = node.shared_stats() {
            if stats.loads_failed + stats.records_failed > 0 {
                eprintln!(
                    "redis: {} loads and {} records failed: {:?}",
                    stats.loads_failed, stats.records_failed, stats.last_error
                );
            }
        }
    }
    // Delete the benchmark's keys (bounded: SCAN in pages).
    let client = redis::Client::open(args.redis.as_str()).map_err(|e| e.to_string())?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let mut cursor = 0u64;
    for _ in 0..1_000_000 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1_000)
            .query(&mut c)
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query::<i64>(&mut c).map_err(|e| e.to_string())?;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    println!(
        "{{\"decisions\":{},\"history\":{},\"payers\":{},{}}}",
        args.decisions,
        args.history,
        args.payers,
        results.join(",")
    );
    Ok(())
}
