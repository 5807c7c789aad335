//! `puhui bench risk`: in-process decisions with a synthetic ruleset over a warm feature store, on
//! one core; ends with one JSON line.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use clap::Args;

/// Flags of `puhui bench risk`.
#[derive(Args, Debug)]
pub struct RiskArgs {
    /// Rules in the synthetic ruleset (ten velocity features).
    #[arg(long, default_value_t = 100)]
    rules: usize,
    /// Decisions to time.
    #[arg(long, default_value_t = 200_000)]
    decisions: usize,
    /// Events recorded before timing (warm feature store, 1,000 payers).
    #[arg(long, default_value_t = 50_000)]
    history: u64,
}

/// Runs the risk benchmark.
pub fn run(args: RiskArgs) -> anyhow::Result<ExitCode> {
    if args.rules == 0 || args.rules > 10_000 || args.decisions == 0 || args.decisions > 10_000_000 {
        bail!("--rules 1-10000 and --decisions 1-10000000");
    }
    let warm = puhui_risk::synthetic::warm(args.rules, args.history);
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(args.decisions);
    let mut declined = 0usize;
    let started = Instant::now();
    for k in 0..args.decisions {
        let t0 = Instant::now();
        let d = warm.decide(k);
        latencies_ns.push(t0.elapsed().as_nanos() as u64);
        declined += (d.outcome == puhui_risk::Outcome::Decline) as usize;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_ns.sort_unstable();
    let pct = |q: f64| {
        latencies_ns[((latencies_ns.len() as f64 * q) as usize).min(latencies_ns.len() - 1)] as f64 / 1e3
    };
    let per_s = args.decisions as f64 / seconds;
    let (p50, p99, p999) = (pct(0.5), pct(0.99), pct(0.999));
    eprintln!(
        "{} decisions, {} rules, 10 features: {per_s:.0} decisions/s on one core, p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs",
        args.decisions, args.rules
    );
    println!(
        "{{\"decisions\":{},\"rules\":{},\"features\":10,\"seconds\":{seconds:.3},\"decisions_per_s\":{per_s:.0},\"p50_us\":{p50:.2},\"p99_us\":{p99:.2},\"p999_us\":{p999:.2},\"declined\":{declined}}}",
        args.decisions, args.rules
    );
    Ok(ExitCode::SUCCESS)
}
