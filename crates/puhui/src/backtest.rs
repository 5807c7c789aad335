//! `puhui risk backtest`: replays the journal's risk records through a candidate ruleset (or as
//! recorded, to check that every online decision is reproduced) and reports against the online
//! decisions and the labels, with a score-distribution plot (SVG).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use puhui_risk::backtest::{Backtest, BacktestOptions, BacktestReport, Confusion, SCORE_BUCKET_WIDTH};
use puhui_risk::{Controller, FeatureLimits, RiskRecord};

/// Arguments of `puhui risk backtest`.
#[derive(clap::Args)]
pub struct BacktestArgs {
    /// The data directory whose journal is replayed (read-only; a running server may keep writing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The candidate ruleset (TOML; model paths relative to it). Without it, the rulesets that
    /// were active at the time decide again, and the report says whether every decision was
    /// reproduced exactly (exit code 1 if not).
    #[arg(long)]
    pub ruleset: Option<PathBuf>,
    /// Count decisions from this time (RFC 3339); earlier history still feeds the features.
    #[arg(long)]
    pub from: Option<String>,
    /// Count decisions before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Where to write `backtest.json` and `scores.svg` (default: the data directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The feature store's bound on keys and pairs, throughout the replay (a what-if). Default: the
    /// bounds the server ran with at each point, which the journal records where they changed
    /// (before a journal's first such record: the data directory's legacy `risk-feature-limits`,
    /// else 1,000,000); those reproduce its decisions past the bound.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub risk_keys_max: Option<u64>,
    /// Events kept per key, throughout the replay; default: as the server ran (see above), else 1,024.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub risk_events_per_key_max: Option<u64>,
}

fn parse_time(text: &str, flag: &str) -> anyhow::Result<u64> {
    puhui_api::models::parse_rfc3339(text, flag)
        .map_err(|e| anyhow::anyhow!("--{flag} {text:?}: {}", e.message))
}

/// Runs the backtest.
pub fn run(args: BacktestArgs) -> anyhow::Result<ExitCode> {
    let journal = args.data_dir.join(puhui_store::JOURNAL_FILE);
    anyhow::ensure!(journal.exists(), "no journal at {}", journal.display());
    let options = BacktestOptions {
        from_ns: args.from.as_deref().map(|t| parse_time(t, "from")).transpose()?,
        to_ns: args.to.as_deref().map(|t| parse_time(t, "to")).transpose()?,
        candidate: args.ruleset.is_some(),
        fixed_limits: args.risk_keys_max.is_some() || args.risk_events_per_key_max.is_some(),
    };
    if let (Some(from), Some(to)) = (options.from_ns, options.to_ns) {
        anyhow::ensure!(from < to, "--from must be before --to (nothing lies between them)");
    }
    let (text, models_dir) = match &args.ruleset {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ),
        // As recorded: the journal's own rulesets take over from the first record on.
        None => (puhui_api::risk::STARTER_RULESET.to_string(), args.data_dir.join("models")),
    };
    // The bounds to begin with: the flags' (kept throughout), or those an older server wrote for
    // the records before the journal's first bounds record (whose own bounds then take over).
    let ran_with = puhui_api::risk::read_feature_limits(&args.data_dir).map_err(|e| anyhow::anyhow!(e))?;
    let base = ran_with.unwrap_or_default();
    let limits = FeatureLimits {
        keys_max: args.risk_keys_max.map_or(base.keys_max, |n| n as usize),
        events_per_key_max: args.risk_events_per_key_max.map_or(base.events_per_key_max, |n| n as usize),
        ..base
    };
    eprintln!(
        "feature store: at most {} keys and pairs, {} events per key ({})",
        limits.keys_max,
        limits.events_per_key_max,
        match (ran_with.is_some(), options.fixed_limits) {
            (_, true) => "as given, throughout",
            (true, false) =>
                "to begin with, from risk-feature-limits; then as the journal records the server's",
            (false, false) => "to begin with; then as the journal records the server's",
        }
    );
    let (mut controller, _) = Controller::new(&text, &models_dir, limits).map_err(|e| {
        anyhow::anyhow!("{}: {e}", args.ruleset.as_deref().unwrap_or(Path::new("starter")).display())
    })?;
    // The server's feature placement, so that evictions past the key bound match its own.
    match puhui_api::risk::feature_seed(&args.data_dir, false).map_err(|e| anyhow::anyhow!(e))? {
        Some(seed) => {
            controller.seed_features(seed);
        }
        None => eprintln!(
            "note: no {} in {}: past the feature store's key bound this replay may evict other keys \
             than the server did",
            puhui_api::risk::FEATURE_SEED_FILE,
            args.data_dir.display()
        ),
    }
    let options_fixed = options.fixed_limits;
    let mut backtest = Backtest::new(controller, options);

    let total_bytes = std::fs::metadata(&journal)?.len();
    let bar = indicatif::ProgressBar::new(total_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} replaying {bytes}/{total_bytes} {wide_bar} {eta}")
            .expect("template"),
    );
    let mut records = 0u64;
    let scanned = puhui_journal::scan(&journal, |entry| {
        if entry.seq % 4_096 == 0 {
            bar.set_position(entry.offset);
        }
        if entry.kind != puhui_journal::codec::KIND_RECORD {
            return Ok(());
        }
        let Ok(puhui_journal::Event::Record { record_type, payload, .. }) =
            puhui_journal::decode(entry.kind, entry.body)
        else {
            return Err(format!("entry {} does not decode", entry.seq));
        };
        if !RiskRecord::knows(record_type) {
            return Ok(());
        }
        let record =
            RiskRecord::decode(record_type, &payload).map_err(|e| format!("entry {}: {e}", entry.seq))?;
        records += 1;
        backtest.feed(&record).map_err(|e| format!("entry {}: {e}", entry.seq))
    })
    .map_err(|e| anyhow::anyhow!("reading the journal: {e}"))?;
    bar.finish_and_clear();
    let limits = backtest.feature_limits();
    eprintln!(
        "feature store: {} keys and pairs, {} events per key at the journal's end ({})",
        limits.keys_max,
        limits.events_per_key_max,
        if options_fixed { "as given" } else { "as the server ran with them" }
    );
    let truncated = backtest.truncated();
    let report = backtest.finish();

    let out = args.out.clone().unwrap_or_else(|| args.data_dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("backtest.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report_json(&report, args.ruleset.is_some()))?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = out.join("scores.svg");
    std::fs::write(&svg_path, scores_svg(&report))
        .with_context(|| format!("writing {}", svg_path.display()))?;

    print_report(&report, args.ruleset.as_deref(), scanned.entries, records, truncated);
    println!("report: {}", json_path.display());
    println!("plot:   {}", svg_path.display());
    let reproduced = report.first_difference.is_none();
    if args.ruleset.is_none() && !reproduced {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "–".into())
}

fn confusion_line(name: &str, c: &Confusion) -> String {
    format!(
        "{name:<10} tp {:>7} fp {:>7} tn {:>7} fn {:>7}   precision {:>6}  recall {:>6}  fpr {:>6}",
        c.true_positives,
        c.false_positives,
        c.true_negatives,
        c.false_negatives,
        pct(c.precision()),
        pct(c.recall()),
        pct(c.false_positive_rate())
    )
}

fn print_report(r: &BacktestReport, candidate: Option<&Path>, entries: u64, records: u64, truncated: bool) {
    match candidate {
        Some(p) => {
            println!("backtest of {} over {entries} journal entries ({records} risk records)", p.display())
        }
        None => println!(
            "reproduction of the online decisions over {entries} journal entries ({records} risk records)"
        ),
    }
    println!(
        "decisions {}   same as online {}   degraded online {}   labelled {}",
        r.decisions, r.same_as_online, r.degraded_online, r.labelled
    );
    match (&r.first_difference, candidate) {
        (None, None) => println!("every decision reproduced exactly"),
        (Some(d), None) => println!("NOT reproduced: first difference: {d}"),
        (Some(d), Some(_)) => println!("first difference from online: {d}"),
        (None, Some(_)) => println!("the candidate decides exactly as online did"),
    }
    println!("\nonline ↓ / backtest →   approve   review  decline");
    for (name, row) in ["approve", "review", "decline"].iter().zip(&r.agreement) {
        println!("{name:<22}{:>9}{:>9}{:>9}", row[0], row[1], row[2]);
    }
    println!("\nflagged = review or decline; positive = labelled fraud");
    println!("{}", confusion_line("backtest", &r.confusion));
    println!("{}", confusion_line("online", &r.confusion_online));
    if !r.rules.is_empty() {
        println!(
            "\n{:<28}{:>9}{:>9}{:>9}{:>11}{:>9}{:>9}",
            "rule", "fired", "fraud", "legit", "precision", "recall", "FPR"
        );
        for rule in &r.rules {
            println!(
                "{:<28}{:>9}{:>9}{:>9}{:>11}{:>9}{:>9}",
                rule.rule,
                rule.fired,
                rule.fired_fraud,
                rule.fired_legit,
                pct(rule.precision()),
                pct(rule.recall()),
                pct(rule.false_positive_rate())
            );
        }
    }
    if truncated {
        println!(
            "(only the first {} decisions were scored against labels)",
            puhui_risk::backtest::BACKTEST_DECISIONS_MAX
        );
    }
}

fn report_json(r: &BacktestReport, candidate: bool) -> serde_json::Value {
    let confusion = |c: &Confusion| {
        serde_json::json!({
            "true_positives": c.true_positives, "false_positives": c.false_positives,
            "true_negatives": c.true_negatives, "false_negatives": c.false_negatives,
            "precision": c.precision(), "recall": c.recall(), "false_positive_rate": c.false_positive_rate(),
        })
    };
    serde_json::json!({
        "mode": if candidate { "candidate" } else { "as_recorded" },
        "records": r.records,
        "decisions": r.decisions,
        "same_as_online": r.same_as_online,
        "degraded_online": r.degraded_online,
        "first_difference": r.first_difference,
        "agreement": { "rows_online_cols_backtest": ["approve", "review", "decline"], "counts": r.agreement },
        "labelled": r.labelled,
        "confusion": confusion(&r.confusion),
        "confusion_online": confusion(&r.confusion_online),
        "rules": r.rules.iter().map(|x| serde_json::json!({
            "rule": x.rule, "fired": x.fired, "fired_fraud": x.fired_fraud, "fired_legit": x.fired_legit,
            "precision": x.precision(), "recall": x.recall(), "false_positive_rate": x.false_positive_rate(),
        })).collect::<Vec<_>>(),
        "score_buckets": r.scores.iter().map(|(b, c)| serde_json::json!({
            "from": b, "to": b + SCORE_BUCKET_WIDTH, "fraud": c.fraud, "legit": c.legit, "unlabelled": c.unlabelled,
        })).collect::<Vec<_>>(),
    })
}

/// Score distributions by label as a grouped bar chart, each label's bars as shares of that label
/// (so a few fraud cases are visible beside many legit ones).
fn scores_svg(r: &BacktestReport) -> String {
    const W: f64 = 720.0;
    const H: f64 = 360.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 300.0;
    const TOP: f64 = 40.0;
    let buckets: Vec<(&i64, &puhui_risk::backtest::ScoreCounts)> = r.scores.iter().collect();
    let totals = buckets
        .iter()
        .fold((0u64, 0u64, 0u64), |t, (_, c)| (t.0 + c.fraud, t.1 + c.legit, t.2 + c.unlabelled));
    let share = |n: u64, total: u64| if total == 0 { 0.0 } else { n as f64 / total as f64 };
    let series: [(&str, &str, Box<dyn Fn(&puhui_risk::backtest::ScoreCounts) -> f64>); 3] = [
        ("fraud", "#d62728", Box::new(move |c| share(c.fraud, totals.0))),
        ("legit", "#2ca02c", Box::new(move |c| share(c.legit, totals.1))),
        ("unlabelled", "#9e9e9e", Box::new(move |c| share(c.unlabelled, totals.2))),
    ];
    let max = buckets
        .iter()
        .flat_map(|(_, c)| series.iter().map(move |(_, _, f)| f(c)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let n = buckets.len().max(1) as f64;
    let slot = (W - LEFT - 16.0) / n;
    let bar = (slot / 3.5).max(1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">Score distribution by label (share of each label; {} decisions, {} labelled)</text>\n\
         <line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{}\" y2=\"{BOTTOM}\" stroke=\"black\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{BOTTOM}\" stroke=\"black\"/>\n",
        r.decisions,
        r.labelled,
        W - 16.0
    );
    for tick in 0..=4 {
        let v = max * tick as f64 / 4.0;
        let y = BOTTOM - (BOTTOM - TOP) * tick as f64 / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text><line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\n",
            LEFT - 4.0,
            y + 4.0,
            v * 100.0,
            W - 16.0
        );
    }
    for (i, (bucket, counts)) in buckets.iter().enumerate() {
        let x0 = LEFT + slot * i as f64 + (slot - 3.0 * bar) / 2.0;
        for (k, (_, color, f)) in series.iter().enumerate() {
            let h = (BOTTOM - TOP) * f(counts) / max;
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{color}\"/>\n",
                x0 + bar * k as f64,
                BOTTOM - h
            );
        }
        if buckets.len() <= 24 || i % (buckets.len() / 12).max(1) == 0 {
            svg += &format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{bucket}</text>\n",
                x0 + 1.5 * bar,
                BOTTOM + 14.0
            );
        }
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">score (bucket start)</text>\n",
        (W + LEFT) / 2.0,
        BOTTOM + 32.0
    );
    for (k, (name, color, _)) in series.iter().enumerate() {
        let x = LEFT + 10.0 + 110.0 * k as f64;
        svg += &format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            H - 18.0,
            x + 14.0,
            H - 9.0
        );
    }
    svg += "</svg>\n";
    svg
}
