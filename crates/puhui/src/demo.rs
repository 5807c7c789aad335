//! `puhui demo`: a simulated week of an inclusive-finance market (puhui-sim) through risk control and
//! the ledger, on a fresh embedded data directory; then a report (terminal and `report.html`) and the
//! journal verify. Exit code 0 only if the journal verifies.
//!
//! Risk control runs in front of the ledger exactly as the API does inline
//! (`crates/api/src/routes.rs`, `decide_inline`): decline → not posted; review → posted as a hold
//! (timeout `REVIEW_HOLD_TIMEOUT_MS`) and queued; approve → posted. An analyst works the queue at the
//! end of each simulated day, posting the legitimate holds and voiding the abusive ones (using the
//! labels: a perfect analyst). Fees and cashback ride in a linked chain with their payment.
//!
//! One difference, for throughput: the API records a transfer in the velocity features after the
//! ledger accepted it; here transfers are decided one by one but posted in groups of up to
//! `GROUP_TRANSFERS_MAX` (one fsync each), so a decided transfer is recorded right away. The rare
//! transfer the ledger then refuses (counted in the report) has been recorded anyway. Decisions use
//! the simulated time, so velocity windows see the simulated week, not the minute it takes to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use puhui_ledger::{
    AccountFlags, Currency, Id, NewAccount, ResultCode, TransferKind as LedgerKind, TransferRequest,
};
use puhui_risk::{Engine, FeatureLimits, FeatureStore, Outcome, RiskEvent, Ruleset};
use puhui_sim::calendar::{DAY_MS, HOUR_MS};
use puhui_sim::report::{score_bin, HourPoint, RunReport, SCORE_BINS};
use puhui_sim::{Scoreboard, Simulation, Transfer, TransferKind, Typology, Verdict};
use puhui_store::{EmbeddedStore, LedgerStore};

use crate::sim::SizeArgs;

/// Transfers decided then posted together (one group commit, one fsync).
const GROUP_TRANSFERS_MAX: usize = 4_096;
/// A review hold expires after this long if the analyst never decides (as the API's).
const REVIEW_HOLD_TIMEOUT_MS: u64 = 72 * 3_600 * 1_000;
/// Open review holds at most; beyond it a review is declined (fail closed), as the API's bound.
const REVIEWS_OPEN_MAX: usize = 100_000;

/// Flags of `puhui demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Data directory, new or empty (default: a new directory under the system's temp dir, kept so
    /// the report stays readable).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Population, days, seed.
    #[command(flatten)]
    pub size: SizeArgs,
    /// Risk ruleset (TOML); default: the shipped starter ruleset (rulesets/starter.toml).
    #[arg(long)]
    pub ruleset: Option<PathBuf>,
}

/// Which rules were written for which typology (precision is computed per typology over them).
fn typologies_of_rule(rule: &str) -> &'static [Typology] {
    match rule {
        "account_takeover" | "account_takeover_drain" => &[Typology::AccountTakeover],
        "sim_swap_pattern" => &[Typology::SimSwap],
        "card_testing_burst" => &[Typology::CardTesting],
        "mule_fan_in" | "mule_fan_out" => &[Typology::MuleNetwork],
        "structuring_near_threshold" => &[Typology::Structuring],
        "collusion_shared_phones" => &[Typology::MerchantCollusion],
        "shared_device" => &[Typology::MuleNetwork, Typology::MerchantCollusion],
        _ => &[],
    }
}

struct Held {
    id: Id,
    abusive: bool,
}

fn id(text: &str) -> anyhow::Result<Id> {
    Id::new(text).with_context(|| format!("{text:?} is not a valid ledger id"))
}

/// The state of a run: the engine in front of the ledger, and what the report needs.
struct Driver<'a> {
    store: &'a EmbeddedStore,
    engine: Engine,
    features: FeatureStore,
    population: &'a puhui_sim::Population,
    ids: Vec<Id>,
    currency: puhui_ledger::CurrencyCode,
    currency_code: &'static str,
    start_ms: u64,
    warmup_end_ms: u64,
    report: RunReport,
    scoreboard: Scoreboard,
    latencies_ns: Vec<u32>,
    volumes: [(u64, u64); TransferKind::ALL.len()],
    refused: BTreeMap<&'static str, u64>,
    merchant_revenue: Vec<u64>,
    held: Vec<Held>,
}

impl Driver<'_> {
    fn hour_of(&self, t: &Transfer) -> usize {
        let hour = ((t.timestamp_ms - self.start_ms) / HOUR_MS) as usize;
        hour.min(self.report.hourly.len() - 1)
    }

    /// Decides a group of transfers one by one in event order, then posts them in one call (one
    /// group commit, one fsync). A fee or cashback is linked to its payment (both or neither) and
    /// dropped when the payment is not posted at once (declined or held).
    fn process(&mut self, group: &[Transfer]) -> anyhow::Result<()> {
        let Some(first) = group.first() else { return Ok(()) };
        let first_seq = first.seq;
        let mut requests: Vec<TransferRequest> = Vec::with_capacity(group.len());
        let mut request_of: Vec<Option<usize>> = Vec::with_capacity(group.len());
        for t in group {
            debug_assert_eq!(t.seq - first_seq, request_of.len() as u64, "a group is a contiguous run");
            let (debit, credit) = (self.ids[t.debit as usize].clone(), self.ids[t.credit as usize].clone());
            if let Some(parent) = t.parent_seq {
                let parent_request =
                    parent.checked_sub(first_seq).and_then(|i| request_of.get(i as usize).copied());
                match parent_request.flatten() {
                    Some(i) if i + 1 == requests.len() && requests[i].kind == LedgerKind::Single => {
                        requests[i].linked = true;
                        requests.push(TransferRequest::single(
                            id(&t.id())?,
                            debit,
                            credit,
                            t.amount_minor,
                            self.currency,
                        ));
                        request_of.push(Some(requests.len() - 1));
                    }
                    _ => {
                        self.report.children_skipped += 1;
                        request_of.push(None);
                    }
                }
                continue;
            }
            let transfer_id = id(&t.id())?;
            let Some(ctx) = &t.context else {
                requests.push(TransferRequest::single(
                    transfer_id,
                    debit,
                    credit,
                    t.amount_minor,
                    self.currency,
                ));
                request_of.push(Some(requests.len() - 1));
                continue;
            };
            let attributes = ctx.attributes();
            // As the server does: the payer's balance from the ledger, when the ruleset reads it
            // (what the groups posted so far; this group's earlier payments are not in it yet).
            let payer_balance_minor = match self.engine.ruleset().reads_payer_balance() {
                false => None,
                true => self.store.read(|l| l.balances(debit.as_str()).map(|b| b.available_saturating_i64())),
            };
            let event = RiskEvent {
                payer: &self.population.accounts[t.debit as usize].id,
                payee: &self.population.accounts[t.credit as usize].id,
                amount_minor: t.amount_minor,
                currency: self.currency_code,
                timestamp_ns: t.timestamp_ms * 1_000_000,
                attributes: &attributes,
                payer_balance_minor,
            };
            let decision = self.engine.decide(&self.features, &event);
            self.latencies_ns.push(decision.latency_ns.min(u32::MAX as u64) as u32);
            let mut outcome = decision.outcome;
            if outcome == Outcome::Review && self.held.len() >= REVIEWS_OPEN_MAX {
                outcome = Outcome::Decline; // fail closed rather than grow the queue
            }
            let (verdict, slot) = match outcome {
                Outcome::Approve => (Verdict::Approved, 0),
                Outcome::Review => (Verdict::Reviewed, 1),
                Outcome::Decline => (Verdict::Declined, 2),
            };
            self.report.outcomes[slot] += 1;
            let hour = self.hour_of(t);
            let point = &mut self.report.hourly[hour];
            let flagged = verdict != Verdict::Approved;
            if t.label.is_some() {
                point.abusive += 1;
                point.abusive_flagged += flagged as u64;
            } else {
                point.legitimate_flagged += flagged as u64;
            }
            if t.timestamp_ms >= self.warmup_end_ms {
                let mut attributed: Vec<Typology> = Vec::new();
                for rule in &decision.fired {
                    for typology in typologies_of_rule(&rule.id) {
                        if !attributed.contains(typology) {
                            attributed.push(*typology);
                        }
                    }
                }
                self.scoreboard.record(t.label, t.case_id, verdict, &attributed);
                let row = t.label.map_or(0, |l| l.index() + 1);
                self.report.scores[row].1[score_bin(decision.score)] += 1;
            }
            match outcome {
                Outcome::Decline => request_of.push(None),
                Outcome::Review => {
                    self.engine.observe(&mut self.features, &event);
                    requests.push(TransferRequest::pending(
                        transfer_id,
                        debit,
                        credit,
                        t.amount_minor,
                        self.currency,
                        Some(REVIEW_HOLD_TIMEOUT_MS),
                    ));
                    request_of.push(Some(requests.len() - 1));
                }
                Outcome::Approve => {
                    self.engine.observe(&mut self.features, &event);
                    requests.push(TransferRequest::single(
                        transfer_id,
                        debit,
                        credit,
                        t.amount_minor,
                        self.currency,
                    ));
                    request_of.push(Some(requests.len() - 1));
                }
            }
        }
        if requests.is_empty() {
            return Ok(());
        }
        let requests_kind: Vec<LedgerKind> = requests.iter().map(|r| r.kind).collect();
        let requests_id: Vec<Id> = requests.iter().map(|r| r.id.clone()).collect();
        let results = self.store.create_transfers(requests)?;
        self.report.ledger_events += results.len() as u64;
        for (t, slot) in group.iter().zip(&request_of) {
            let Some(i) = slot else { continue };
            let result = results[*i].result;
            if result != ResultCode::Ok {
                *self.refused.entry(result.as_str()).or_default() += 1;
                continue;
            }
            if requests_kind[*i] == LedgerKind::Pending {
                self.held.push(Held { id: requests_id[*i].clone(), abusive: t.label.is_some() });
            }
            let kind = TransferKind::ALL.iter().position(|k| *k == t.kind).unwrap_or(0);
            self.volumes[kind].0 += 1;
            self.volumes[kind].1 += t.amount_minor;
            let hour = self.hour_of(t);
            if t.kind != TransferKind::Opening {
                self.report.hourly[hour].posted += 1;
                self.report.hourly[hour].amount_minor += t.amount_minor;
            }
            if t.kind == TransferKind::MerchantPayment {
                self.merchant_revenue[t.credit as usize] += t.amount_minor;
            }
        }
        Ok(())
    }

    /// The analyst works the review queue: legitimate holds posted, abusive ones voided.
    fn resolve_reviews(&mut self) -> anyhow::Result<()> {
        for chunk in self.held.chunks(puhui_ledger::BATCH_EVENTS_MAX) {
            let mut requests = Vec::with_capacity(chunk.len());
            for h in chunk {
                requests.push(if h.abusive {
                    TransferRequest::void(id(&format!("{}.void", h.id))?, h.id.clone())
                } else {
                    TransferRequest::post(id(&format!("{}.post", h.id))?, h.id.clone(), None)
                });
            }
            let results = self.store.create_transfers(requests)?;
            self.report.ledger_events += results.len() as u64;
            for (h, r) in chunk.iter().zip(&results) {
                match (r.result, h.abusive) {
                    (ResultCode::Ok, false) => self.report.reviews_resolved.0 += 1,
                    (ResultCode::Ok, true) => self.report.reviews_resolved.1 += 1,
                    (other, _) => *self.refused.entry(other.as_str()).or_default() += 1,
                }
            }
        }
        self.held.clear();
        Ok(())
    }
}

fn percentile_us(sorted_ns: &[u32], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i] as f64 / 1_000.0
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let params = args.size.params(puhui_sim::Preset::City)?;
    let dir = match &args.data_dir {
        Some(d) => {
            if d.join(puhui_store::JOURNAL_FILE).exists() {
                bail!("{} already holds a ledger: give a new or empty --data-dir", d.display());
            }
            d.clone()
        }
        None => tempfile::Builder::new().prefix("puhui-demo-").tempdir()?.keep(),
    };
    let (ruleset_text, ruleset_dir) = match &args.ruleset {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (include_str!("../../../rulesets/starter.toml").to_string(), PathBuf::from(".")),
    };
    let ruleset =
        Ruleset::parse_in(&ruleset_text, &ruleset_dir).map_err(|e| anyhow::anyhow!("ruleset: {e}"))?;
    let ruleset_version = ruleset.version.clone();
    let rules = ruleset.rules().count();

    let mut sim = Simulation::new(params.clone())?;
    let population = sim.population().clone();
    println!("puhui demo — a simulated inclusive-finance market through risk control and the ledger");
    println!(
        "  preset {}, seed {}, {} days: {} people, {} merchants, {} agents ({} accounts)",
        args.size.preset_name(puhui_sim::Preset::City),
        params.seed,
        params.days,
        params.individuals,
        params.merchants,
        params.agents,
        population.accounts.len()
    );
    println!(
        "  ruleset {ruleset_version} ({rules} rules) in front of the ledger; data directory {}",
        dir.display()
    );

    let store = EmbeddedStore::open(&dir).context("opening the data directory")?;
    let currency = Currency::iso(params.currency)?;
    let mut accounts = Vec::with_capacity(population.accounts.len());
    let mut ids = Vec::with_capacity(population.accounts.len());
    for a in &population.accounts {
        let account_id = id(&a.id)?;
        ids.push(account_id.clone());
        let account = NewAccount::new(account_id, currency);
        accounts.push(if a.wallet { account.with_flags(AccountFlags::WALLET) } else { account });
    }
    for chunk in accounts.chunks(puhui_ledger::BATCH_EVENTS_MAX) {
        let results = store.create_accounts(chunk.to_vec())?;
        if let Some(bad) = results.iter().find(|r| r.result != ResultCode::Ok) {
            bail!("creating accounts: {}", bad.result);
        }
    }

    let hours = params.days as u64 * 24;
    let mut driver = Driver {
        store: &store,
        engine: Engine::new(Arc::new(ruleset), Arc::default()),
        features: FeatureStore::new(FeatureLimits::default()),
        population: &population,
        ids,
        currency: currency.code(),
        currency_code: params.currency,
        start_ms: params.start_unix_ms,
        warmup_end_ms: params.start_unix_ms + params.warmup_days as u64 * DAY_MS,
        report: RunReport {
            preset: args.size.preset_name(puhui_sim::Preset::City).to_string(),
            seed: params.seed,
            days: params.days,
            warmup_days: params.warmup_days,
            start_unix_ms: params.start_unix_ms,
            currency: params.currency.to_string(),
            ruleset_version,
            accounts: population.accounts.len() as u64,
            hourly: vec![HourPoint::default(); hours as usize],
            scores: std::iter::once("legitimate".to_string())
                .chain(Typology::ALL.iter().map(|t| t.as_str().to_string()))
                .map(|l| (l, vec![0; SCORE_BINS]))
                .collect(),
            data_dir: dir.display().to_string(),
            ..Default::default()
        },
        scoreboard: Scoreboard::new(),
        latencies_ns: Vec::new(),
        volumes: Default::default(),
        refused: BTreeMap::new(),
        merchant_revenue: vec![0; population.accounts.len()],
        held: Vec::new(),
    };

    let progress = indicatif::ProgressBar::new(hours);
    progress.set_style(
        indicatif::ProgressStyle::with_template("  {bar:40.cyan/blue} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let run_started = Instant::now();
    let mut group: Vec<Transfer> = Vec::with_capacity(GROUP_TRANSFERS_MAX + 2);
    let mut day_open = 0u64;
    for t in &mut sim {
        let day = (t.timestamp_ms - params.start_unix_ms) / DAY_MS;
        // A fee or cashback always joins its payment's group (same action, same timestamp).
        if t.parent_seq.is_none() && (day != day_open || group.len() >= GROUP_TRANSFERS_MAX) {
            driver.process(&group)?;
            group.clear();
            let hour = (t.timestamp_ms - params.start_unix_ms) / HOUR_MS;
            progress.set_position(hour);
            progress.set_message(format!("day {}/{}", hour / 24 + 1, params.days));
            if day != day_open {
                driver.resolve_reviews()?; // end of a simulated day
                day_open = day;
            }
        }
        group.push(t);
    }
    driver.process(&group)?;
    driver.resolve_reviews()?;
    progress.finish_and_clear();
    let run_secs = run_started.elapsed().as_secs_f64();

    store.read(|l| l.check_invariants()).map_err(anyhow::Error::msg)?;
    let mut report = std::mem::take(&mut driver.report);
    report.run_secs = run_secs;
    report.scoreboard = std::mem::take(&mut driver.scoreboard);
    let mut latencies = std::mem::take(&mut driver.latencies_ns);
    latencies.sort_unstable();
    report.decisions = latencies.len() as u64;
    report.latency_us = [
        percentile_us(&latencies, 0.50),
        percentile_us(&latencies, 0.99),
        percentile_us(&latencies, 0.999),
        percentile_us(&latencies, 1.0),
    ];
    report.volumes = TransferKind::ALL
        .iter()
        .zip(driver.volumes)
        .filter(|(_, (count, _))| *count > 0)
        .map(|(k, (count, amount))| (k.as_str().to_string(), count, amount))
        .collect();
    report.ledger_refused = driver.refused.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let merchants =
        population.accounts.iter().enumerate().filter(|(_, a)| a.kind == puhui_sim::AccountKind::Merchant);
    let mut revenue: Vec<u64> = merchants.map(|(i, _)| driver.merchant_revenue[i]).collect();
    revenue.sort_unstable_by(|a, b| b.cmp(a));
    report.merchant_revenue_minor = revenue;
    drop(driver);
    drop(store);

    // The existing proof of the run: replay the whole journal and check the chain and invariants.
    let journal = dir.join(puhui_store::JOURNAL_FILE);
    let verified = puhui_journal::verify(&journal);
    (report.journal, report.journal_ok) = match &verified {
        Ok(v) => (
            format!(
                "journal verify: OK — {} hash-chained entries, last hash {}",
                v.summary.entries,
                crate::hex(&v.summary.last_hash)
            ),
            true,
        ),
        Err(e) => (format!("journal verify: FAILED — {e}"), false),
    };
    report.total_secs = started.elapsed().as_secs_f64();
    print!("{}", report.text());
    let html = dir.join("report.html");
    std::fs::write(&html, report.html()).with_context(|| format!("writing {}", html.display()))?;
    println!("report: {}", html.display());
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(if report.journal_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
