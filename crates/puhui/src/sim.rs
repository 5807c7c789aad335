//! `puhui sim`: run the market simulator (puhui-sim) and write its labelled transfers to a JSONL or
//! CSV file, and/or drive a running `puhui serve` over HTTP at a chosen rate.
//!
//! Over HTTP the accounts are created first (concurrently; an existing one is fine), then the
//! transfers are posted in event order on one connection: a customer transfer with its
//! `risk_context` on `POST /v1/transfers` (decided inline by the server), system movements
//! (salaries, settlements, fees…) grouped on `POST /v1/transfers/batch` and flushed before the next
//! customer transfer, so money always arrives before it is spent. A fee or cashback is posted only if
//! its payment was approved. Transfer ids are `t<seq>`, so running the same seed again against the
//! same tenant replays idempotently. The server decides with its own clock, so its velocity windows
//! see the simulated traffic compressed to the posting rate.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use puhui_sim::{Params, Preset, Scoreboard, Simulation, Transfer, Typology, Verdict};
use serde_json::{json, Value};

/// Most transfers in one batch request of system movements.
const SYSTEM_BATCH_MAX: usize = 1_000;
/// Concurrent requests while creating accounts.
const ACCOUNT_WORKERS: usize = 16;
/// Retries of one request answered 429 or 503 before giving up.
const RETRIES_MAX: u32 = 20;
/// Unexpected answers (not a decision, not a ledger refusal) tolerated before stopping.
const ERRORS_MAX: u64 = 1_000;

/// A named size.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PresetArg {
    /// 3,000 people, 3 days, dense abuse: tests and a quick look.
    Small,
    /// 60,000 people, 7 days: the demo.
    City,
    /// 400,000 people, 30 days: backtest and benchmark files.
    Country,
}

impl From<PresetArg> for Preset {
    fn from(p: PresetArg) -> Preset {
        match p {
            PresetArg::Small => Preset::Small,
            PresetArg::City => Preset::City,
            PresetArg::Country => Preset::Country,
        }
    }
}

/// Population, period and seed (shared by `puhui sim` and `puhui demo`).
#[derive(Args, Debug)]
pub struct SizeArgs {
    /// Named size (default: city for the demo, small for sim).
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
    /// Seed: same seed and flags, same transfers byte for byte.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Simulated days (1–366), instead of the preset's.
    #[arg(long)]
    pub days: Option<u32>,
    /// Individuals, instead of the preset's (merchants, agents, employers scale with them).
    #[arg(long)]
    pub individuals: Option<u32>,
    /// Multiply every abuse rate by this (0–100).
    #[arg(long)]
    pub abuse_scale: Option<f64>,
}

impl SizeArgs {
    /// The preset in use.
    pub fn preset(&self, default: Preset) -> Preset {
        self.preset.map(Preset::from).unwrap_or(default)
    }

    /// The preset's name.
    pub fn preset_name(&self, default: Preset) -> &'static str {
        self.preset(default).as_str()
    }

    /// The simulation's parameters, validated.
    pub fn params(&self, default: Preset) -> anyhow::Result<Params> {
        let base = self.preset(default).params(self.seed);
        let mut p = base.clone();
        if let Some(days) = self.days {
            if !(1..=puhui_sim::params::DAYS_MAX).contains(&days) {
                bail!("--days must be 1-{}", puhui_sim::params::DAYS_MAX);
            }
            p.days = days;
            p.warmup_days = p.warmup_days.min(days - 1);
        }
        if let Some(n) = self.individuals {
            if !(100..=puhui_sim::params::INDIVIDUALS_MAX).contains(&n) {
                bail!("--individuals must be 100-{}", puhui_sim::params::INDIVIDUALS_MAX);
            }
            let scale = |x: u32, min: u32| ((x as u64 * n as u64 / base.individuals as u64) as u32).max(min);
            p.individuals = n;
            p.merchants = scale(base.merchants, 8);
            p.agents = scale(base.agents, 2);
            p.employers = scale(base.employers, 1);
            p.regions = scale(base.regions, 1).min(p.merchants);
        }
        if let Some(f) = self.abuse_scale {
            if !(0.0..=100.0).contains(&f) {
                bail!("--abuse-scale must be 0-100");
            }
            p.abuse = p.abuse.scaled(f);
        }
        p.validate().map_err(|e| anyhow::anyhow!("simulation parameters: {e}"))?;
        Ok(p)
    }
}

/// Flags of `puhui sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Population, period and seed.
    #[command(flatten)]
    pub size: SizeArgs,
    /// Write the accounts and labelled transfers: FILE.jsonl (accounts first, then transfers),
    /// FILE.csv (transfers), or `-` for JSONL on stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Drive a running `puhui serve` at this base URL (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub target: Option<String>,
    /// The tenant's API key for --target (default: $PUHUI_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Transfers per second to post with --target (1–100000); one connection, in event order.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
}

enum Sink {
    Jsonl(Box<dyn Write>),
    Csv(Box<dyn Write>),
}

/// Runs `puhui sim`.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let params = args.size.params(Preset::Small)?;
    if !(1..=100_000).contains(&args.rate) {
        bail!("--rate must be 1-100000 transfers per second");
    }
    let to_stdout = args.out.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let mut sink = match &args.out {
        None => None,
        Some(_) if to_stdout => {
            Some(Sink::Jsonl(Box::new(std::io::BufWriter::new(std::io::stdout().lock()))))
        }
        Some(path) => {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let open = || -> anyhow::Result<Box<dyn Write>> {
                let f =
                    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)))
            };
            match ext {
                "jsonl" | "ndjson" | "json" => Some(Sink::Jsonl(open()?)),
                "csv" => Some(Sink::Csv(open()?)),
                _ => bail!("--out must end in .jsonl or .csv (or be - for JSONL on stdout)"),
            }
        }
    };
    let mut http = match &args.target {
        None => None,
        Some(url) => {
            let key = args
                .api_key
                .clone()
                .or_else(|| std::env::var("PUHUI_API_KEY").ok())
                .filter(|k| !k.is_empty())
                .context("--target needs --api-key KEY (or PUHUI_API_KEY): a tenant's API key")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--target must be an http:// or https:// URL");
            }
            Some(Http::new(url.trim_end_matches('/').to_string(), key, args.rate)?)
        }
    };

    let started = Instant::now();
    let mut sim = Simulation::new(params.clone())?;
    let population = sim.population().clone();
    let currency = params.currency;
    let say = |line: String| {
        if to_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "puhui sim — preset {}, seed {}, {} days: {} people, {} merchants, {} agents ({} accounts)",
        args.size.preset_name(Preset::Small),
        params.seed,
        params.days,
        params.individuals,
        params.merchants,
        params.agents,
        population.accounts.len()
    ));
    match &mut sink {
        Some(Sink::Jsonl(w)) => puhui_sim::write::write_accounts_jsonl(w, &population, currency)?,
        Some(Sink::Csv(w)) => writeln!(w, "{}", puhui_sim::write::CSV_HEADER)?,
        None => {}
    }
    if let Some(h) = &mut http {
        let created = h.runtime.block_on(h.create_accounts(&population))?;
        say(format!("created {} accounts at {} ({} existed already)", created.0, h.base, created.1));
    }

    let progress = indicatif::ProgressBar::new(params.days as u64 * 24);
    progress.set_style(
        indicatif::ProgressStyle::with_template("  {bar:40.cyan/blue} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut count = 0u64;
    let mut labelled = [0u64; 6];
    let mut scored = 0u64;
    for t in &mut sim {
        match &mut sink {
            Some(Sink::Jsonl(w)) => {
                w.write_all(puhui_sim::write::transfer_json(&t, &population, currency).as_bytes())?
            }
            Some(Sink::Csv(w)) => {
                w.write_all(puhui_sim::write::transfer_csv(&t, &population, currency).as_bytes())?
            }
            None => {}
        }
        if let Some(h) = &mut http {
            let runtime = std::sync::Arc::clone(&h.runtime);
            runtime.block_on(h.send(&t, &population, currency))?;
        }
        count += 1;
        if t.context.is_some() {
            scored += 1;
            if let Some(l) = t.label {
                labelled[l.index()] += 1;
            }
        }
        if count.is_multiple_of(4_096) {
            let hour = (t.timestamp_ms - params.start_unix_ms) / puhui_sim::calendar::HOUR_MS;
            progress.set_position(hour);
            progress.set_message(format!("day {}/{}, {count} transfers", hour / 24 + 1, params.days));
        }
    }
    if let Some(h) = &mut http {
        let runtime = std::sync::Arc::clone(&h.runtime);
        runtime.block_on(h.flush())?;
    }
    match &mut sink {
        Some(Sink::Jsonl(w)) | Some(Sink::Csv(w)) => w.flush()?,
        None => {}
    }
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    say(format!(
        "{count} transfers ({scored} customer transfers with a risk context) in {secs:.2} s = {:.0} transfers/s",
        count as f64 / secs.max(1e-9)
    ));
    for t in Typology::ALL {
        say(format!(
            "  {:<20} {:>4} cases, {:>6} labelled transfers",
            t.as_str(),
            stats.cases_planned[t.index()] - stats.cases_dropped[t.index()],
            labelled[t.index()]
        ));
    }
    if let Some(out) = &args.out {
        if !to_stdout {
            say(format!("wrote {}", out.display()));
        }
    }
    if let Some(h) = &http {
        say(h.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// The HTTP driver: one tenant, one connection, event order, paced.
struct Http {
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
    client: reqwest::Client,
    base: String,
    key: String,
    interval: Duration,
    next_at: Instant,
    system: Vec<Value>,
    /// Per transfer seq: was it posted at once (approved, or a system movement)?
    posted: Vec<bool>,
    scoreboard: Scoreboard,
    outcomes: [u64; 3],
    refused: std::collections::BTreeMap<String, u64>,
    errors: u64,
    sent: u64,
}

impl Http {
    fn new(base: String, key: String, rate: u32) -> anyhow::Result<Http> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Http {
            runtime: std::sync::Arc::new(runtime),
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
            base,
            key,
            interval: Duration::from_secs_f64(1.0 / rate as f64),
            next_at: Instant::now(),
            system: Vec::new(),
            posted: Vec::new(),
            scoreboard: Scoreboard::new(),
            outcomes: [0; 3],
            refused: Default::default(),
            errors: 0,
            sent: 0,
        })
    }

    /// POSTs `body`, retrying 429 and 503 (after Retry-After); returns status and JSON body.
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        post_json(&self.client, &format!("{}{path}", self.base), &self.key, body).await
    }

    async fn create_accounts(&self, population: &puhui_sim::Population) -> anyhow::Result<(u64, u64)> {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..ACCOUNT_WORKERS {
            let (client, url, key) =
                (self.client.clone(), format!("{}/v1/accounts", self.base), self.key.clone());
            let accounts: Vec<Value> = population
                .accounts
                .iter()
                .skip(worker)
                .step_by(ACCOUNT_WORKERS)
                .map(|a| json!({"id": a.id, "currency": "CNY", "debits_must_not_exceed_credits": a.wallet}))
                .collect();
            tasks.spawn(async move {
                let (mut created, mut existed) = (0u64, 0u64);
                for body in accounts {
                    match post_json(&client, &url, &key, &body).await? {
                        (201, _) => created += 1,
                        (200 | 409, _) => existed += 1,
                        (status, reply) => bail!("creating account {}: HTTP {status}: {reply}", body["id"]),
                    }
                }
                Ok((created, existed))
            });
        }
        let mut total = (0, 0);
        while let Some(r) = tasks.join_next().await {
            let (c, e) = r??;
            total.0 += c;
            total.1 += e;
        }
        Ok(total)
    }

    async fn pace(&mut self, transfers: usize) {
        let now = Instant::now();
        if self.next_at + Duration::from_secs(1) < now {
            self.next_at = now; // fell behind (a slow server): do not burst to catch up
        }
        if self.next_at > now {
            tokio::time::sleep_until(self.next_at.into()).await;
        }
        self.next_at += self.interval * transfers as u32;
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.system.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.system);
        self.pace(batch.len()).await;
        let (status, reply) = self.post("/v1/transfers/batch", &json!({ "transfers": batch })).await?;
        if status != 200 {
            bail!("posting a batch of system transfers: HTTP {status}: {reply}");
        }
        self.sent += batch.len() as u64;
        for r in reply["results"].as_array().into_iter().flatten() {
            let result = r["result"].as_str().unwrap_or("?");
            if result != "ok" && result != "exists" {
                *self.refused.entry(result.to_string()).or_default() += 1;
            }
        }
        Ok(())
    }

    async fn send(
        &mut self,
        t: &Transfer,
        population: &puhui_sim::Population,
        currency: &str,
    ) -> anyhow::Result<()> {
        let mut body = json!({
            "id": t.id(),
            "debit_account_id": population.account(t.debit).id,
            "credit_account_id": population.account(t.credit).id,
            "amount": t.amount_minor,
            "currency": currency,
        });
        debug_assert_eq!(self.posted.len() as u64, t.seq);
        let Some(ctx) = &t.context else {
            let parent_posted =
                t.parent_seq.is_none_or(|p| self.posted.get(p as usize).copied().unwrap_or(false));
            self.posted.push(parent_posted);
            if parent_posted {
                self.system.push(body);
                if self.system.len() >= SYSTEM_BATCH_MAX {
                    self.flush().await?;
                }
            }
            return Ok(());
        };
        self.flush().await?;
        let mut risk = json!({
            "device_id": ctx.device_id, "ip": ctx.ip, "channel": ctx.channel, "country": ctx.country,
            "kyc_tier": ctx.kyc_tier.to_string(), "attributes": {"txn_type": ctx.txn_type},
        });
        if let Some(mcc) = ctx.mcc {
            risk["mcc"] = json!(mcc);
        }
        body["risk_context"] = risk;
        self.pace(1).await;
        let (status, reply) = self.post("/v1/transfers", &body).await?;
        self.sent += 1;
        let verdict = match status {
            200 | 201 => match reply["risk_outcome"].as_str() {
                Some("review") => Some(Verdict::Reviewed),
                _ => Some(Verdict::Approved),
            },
            422 if reply["error"]["code"] == "risk_declined" => Some(Verdict::Declined),
            422 => {
                let code = reply["error"]["code"].as_str().unwrap_or("unprocessable").to_string();
                *self.refused.entry(code).or_default() += 1;
                None
            }
            _ => {
                self.errors += 1;
                if self.errors > ERRORS_MAX {
                    bail!("{ERRORS_MAX} unexpected answers; the last: HTTP {status}: {reply}");
                }
                None
            }
        };
        self.posted.push(verdict == Some(Verdict::Approved));
        if let Some(v) = verdict {
            self.outcomes[match v {
                Verdict::Approved => 0,
                Verdict::Reviewed => 1,
                Verdict::Declined => 2,
            }] += 1;
            self.scoreboard.record(t.label, t.case_id, v, &[]);
        }
        Ok(())
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "posted {} transfers to {}: approve {}, review {}, decline {}",
            self.sent, self.base, self.outcomes[0], self.outcomes[1], self.outcomes[2]
        );
        if !self.refused.is_empty() {
            let refused: Vec<String> = self.refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
            s += &format!("; refused by the ledger: {}", refused.join(", "));
        }
        if self.errors > 0 {
            s += &format!("; {} unexpected answers", self.errors);
        }
        s += "\nrecall against the labels (the server's clock drives its velocity windows):";
        for t in Typology::ALL {
            let c = self.scoreboard.typology(t);
            let recall =
                self.scoreboard.recall(t).map_or("—".to_string(), |r| format!("{:.1} %", r * 100.0));
            s += &format!(
                "\n  {:<20} {:>6} labelled, {:>6} flagged, recall {recall}",
                t.as_str(),
                c.scored,
                c.flagged()
            );
        }
        s += &format!("\n  false-positive rate {:.2} %", self.scoreboard.false_positive_rate() * 100.0);
        s
    }
}

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let text = body.to_string();
    for attempt in 0..=RETRIES_MAX {
        let response = client
            .post(url)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(text.clone())
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        if (status == 429 || status == 503) && attempt < RETRIES_MAX {
            let wait_s = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1)
                .min(60);
            tokio::time::sleep(Duration::from_secs(wait_s)).await;
            continue;
        }
        let reply = response.text().await.with_context(|| format!("reading the answer of POST {url}"))?;
        return Ok((status, serde_json::from_str(&reply).unwrap_or(Value::String(reply))));
    }
    bail!("POST {url}: still 429/503 after {RETRIES_MAX} retries")
}
