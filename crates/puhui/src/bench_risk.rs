//! `puhui bench risk`: in-process decisions with a synthetic ruleset (ten velocity features and, by
//! default, the 300-tree depth-6 GBDT) over a warm feature store, on one core: compiled rules and
//! the `cel` interpreter as the peer, in the same run. Ends with one JSON line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};
use puhui_risk::{Engine, Evaluation};

/// Which evaluators `puhui bench risk` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Evaluators {
    /// Compiled rules (what `puhui serve` runs).
    Compiled,
    /// Every rule on the `cel` interpreter.
    Interpreted,
    /// Both, the interpreter first, on the same warm store and events.
    Both,
}

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
    /// The model every tenth rule reads (default: the repository's 300-tree depth-6 XGBoost fixture).
    #[arg(long)]
    model: Option<PathBuf>,
    /// No model: rules and features only.
    #[arg(long, conflicts_with = "model")]
    no_model: bool,
    /// Which evaluators to time.
    #[arg(long, value_enum, default_value_t = Evaluators::Both)]
    evaluator: Evaluators,
    /// Record each decided event in the feature store, time moving on a tenth of a second per
    /// decision, as the server does (so the windows move); without it every timed decision reads
    /// the store as the history left it.
    #[arg(long)]
    record: bool,
}

/// One evaluator's figures.
struct Figures {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    seconds: f64,
    declined: usize,
}

/// Times `decisions` decisions of `engine` over the warm store, each timed on its own; with
/// `record`, each decided event is recorded too (in the time), events numbered on from `*next`.
fn time(
    warm: &mut puhui_risk::synthetic::Warm,
    engine: &Engine,
    decisions: usize,
    record: bool,
    next: &mut usize,
) -> Figures {
    let mut decide = |warm: &mut puhui_risk::synthetic::Warm, k: usize| {
        if record {
            *next += 1;
            warm.decide_and_record(engine, *next - 1)
        } else {
            engine.decide(&warm.store, &warm.event(k))
        }
    };
    // Warm caches and branch predictors (and the allocator) first.
    for k in 0..decisions.min(10_000) {
        std::hint::black_box(decide(warm, k));
    }
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(decisions);
    let mut declined = 0usize;
    let started = Instant::now();
    for k in 0..decisions {
        let t0 = Instant::now();
        let d = decide(warm, k);
        latencies_ns.push(t0.elapsed().as_nanos() as u64);
        declined += (d.outcome == puhui_risk::Outcome::Decline) as usize;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_ns.sort_unstable();
    let pct = |q: f64| {
        latencies_ns[((latencies_ns.len() as f64 * q) as usize).min(latencies_ns.len() - 1)] as f64 / 1e3
    };
    Figures {
        per_s: decisions as f64 / seconds,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        seconds,
        declined,
    }
}

/// Runs the risk benchmark.
pub fn run(args: RiskArgs) -> anyhow::Result<ExitCode> {
    if args.rules == 0 || args.rules > 10_000 || args.decisions == 0 || args.decisions > 10_000_000 {
        bail!("--rules 1-10000 and --decisions 1-10000000");
    }
    let model =
        (!args.no_model).then(|| args.model.clone().unwrap_or_else(puhui_risk::synthetic::bench_model_path));
    let mut warm = match &model {
        None => puhui_risk::synthetic::warm(args.rules, args.history),
        Some(path) => puhui_risk::synthetic::warm_with_model(args.rules, args.history, path)
            .map_err(|e| anyhow!("model {}: {e}", path.display()))?,
    };
    let ruleset = warm.engine.ruleset();
    let model_label = match &model {
        None => "no model".to_string(),
        Some(_) => {
            let m = &ruleset.models[0].model;
            format!("a {}-tree depth-{} model", m.num_trees(), m.max_depth())
        }
    };
    let engine = |evaluation| {
        Engine::with_evaluation(Arc::clone(ruleset), Arc::clone(warm.engine.lists()), evaluation)
    };
    let (interpreter, compiled) = (engine(Evaluation::Interpreted), engine(Evaluation::Compiled));
    let compiled_rules = ruleset.compiled_rules();
    let model_trees = ruleset.models.first().map_or(0, |m| m.model.num_trees());
    let mut json = Vec::new();
    let runs: &[(&str, &Engine)] = match args.evaluator {
        Evaluators::Compiled => &[("compiled", &compiled)],
        Evaluators::Interpreted => &[("interpreted", &interpreter)],
        Evaluators::Both => &[("interpreted", &interpreter), ("compiled", &compiled)],
    };
    let recording = if args.record { ", recording each event" } else { "" };
    let mut next = 0usize;
    for (name, engine) in runs {
        let f = time(&mut warm, engine, args.decisions, args.record, &mut next);
        eprintln!(
            "{name}: {} decisions{recording}, {} rules ({} compiled), 10 features, {model_label}: {:.0} decisions/s on one core, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
            args.decisions,
            args.rules,
            compiled_rules,
            f.per_s,
            f.p50_us,
            f.p99_us,
            f.p999_us,
        );
        json.push(format!(
            "\"{name}\":{{\"seconds\":{:.3},\"decisions_per_s\":{:.0},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"declined\":{}}}",
            f.seconds, f.per_s, f.p50_us, f.p99_us, f.p999_us, f.declined
        ));
    }
    println!(
        "{{\"decisions\":{},\"rules\":{},\"compiled_rules\":{},\"features\":10,\"model_trees\":{},\"record\":{},{}}}",
        args.decisions,
        args.rules,
        compiled_rules,
        model_trees,
        args.record,
        json.join(",")
    );
    Ok(ExitCode::SUCCESS)
}
