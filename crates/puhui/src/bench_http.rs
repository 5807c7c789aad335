//! `puhui bench http`: load a running `puhui serve` over HTTP and report throughput and latency.
//!
//! It creates its own tenant (with the admin token) and accounts, then runs `--connections` loops
//! for `--duration` seconds, each posting one transfer (`--mode single`) or a batch (`--mode batch`)
//! per request. Bounded: it stops by itself, and it only talks to the URL it is given.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};

/// One transfer or a batch per request.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/transfers`.
    Single,
    /// `POST /v1/transfers/batch`.
    Batch,
}

/// Flags of `puhui bench http`.
#[derive(Args, Debug)]
pub struct HttpArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent connections (each one request at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of load (after setup), at most 600.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// One transfer per request, or batches.
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    mode: Mode,
    /// Transfers per batch request.
    #[arg(long, default_value_t = 8_189)]
    batch: usize,
    /// Accounts to create and pick from.
    #[arg(long, default_value_t = 1_000)]
    accounts: usize,
    /// Admin token (default: $PUHUI_ADMIN_TOKEN, else DATA_DIR/admin.token with --data-dir).
    #[arg(long)]
    admin_token: Option<String>,
    /// The server's data directory, to read its admin token.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

struct Stats {
    latencies_us: Vec<u32>,
    transfers: u64,
    errors: u64,
}

/// Runs the HTTP benchmark.
pub fn run(args: HttpArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.connections > 1_024 {
        bail!("--connections must be 1-1024");
    }
    if args.duration == 0 || args.duration > 600 {
        bail!("--duration must be 1-600 seconds");
    }
    if args.batch == 0 || args.batch > puhui_ledger::BATCH_EVENTS_MAX {
        bail!("--batch must be 1-{}", puhui_ledger::BATCH_EVENTS_MAX);
    }
    let admin = match (&args.admin_token, std::env::var("PUHUI_ADMIN_TOKEN").ok(), &args.data_dir) {
        (Some(t), _, _) => t.clone(),
        (None, Some(t), _) if !t.is_empty() => t,
        (None, _, Some(dir)) => std::fs::read_to_string(dir.join("admin.token"))
            .with_context(|| format!("reading {}/admin.token", dir.display()))?
            .trim()
            .to_string(),
        _ => bail!("give --admin-token, PUHUI_ADMIN_TOKEN or --data-dir"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(load(args, admin))
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let response = client
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

async fn load(args: HttpArgs, admin: String) -> anyhow::Result<ExitCode> {
    let base = args.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?;
    let (status, body) =
        post(&client, &format!("{base}/v1/tenants"), &admin, r#"{"name":"bench http"}"#.into()).await?;
    if status != 201 {
        bail!("creating the bench tenant: HTTP {status}: {body}");
    }
    let tenant: serde_json::Value = serde_json::from_str(&body)?;
    let key = tenant["api_key"].as_str().context("api_key")?.to_string();

    // Accounts, created concurrently.
    let started = Instant::now();
    let mut setup = tokio::task::JoinSet::new();
    for worker in 0..args.connections.min(args.accounts) {
        let (client, base, key, accounts, step) =
            (client.clone(), base.clone(), key.clone(), args.accounts, args.connections.min(args.accounts));
        setup.spawn(async move {
            let mut i = worker;
            while i < accounts {
                let body = format!(r#"{{"id":"acct-{i}","currency":"CNY"}}"#);
                let (status, text) = post(&client, &format!("{base}/v1/accounts"), &key, body).await?;
                if status != 201 && status != 200 {
                    bail!("creating account {i}: HTTP {status}: {text}");
                }
                i += step;
            }
            Ok(())
        });
    }
    while let Some(r) = setup.join_next().await {
        r??;
    }
    eprintln!(
        "created {} accounts in {:.1} s; loading for {} s",
        args.accounts,
        started.elapsed().as_secs_f64(),
        args.duration
    );

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.connections {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        let (mode, batch, accounts) = (args.mode, args.batch, args.accounts);
        workers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            let mut stats = Stats { latencies_us: Vec::new(), transfers: 0, errors: 0 };
            let mut n = 0u64;
            // Appends one transfer's JSON to `out` (no allocation per transfer: a batch body is
            // one string, so the client takes as little CPU from the server on shared cores as it can).
            let transfer = |rng: &mut rand::rngs::StdRng, n: u64, out: &mut String| {
                use std::fmt::Write as _;
                let debit = rng.random_range(0..accounts);
                let credit = (debit + 1 + rng.random_range(0..accounts - 1)) % accounts;
                let _ = write!(
                    out,
                    r#"{{"id":"w{worker}-{n}","debit_account_id":"acct-{debit}","credit_account_id":"acct-{credit}","amount":{},"currency":"CNY"}}"#,
                    rng.random_range(1..100_000u64)
                );
            };
            let (single_url, batch_url) = (format!("{base}/v1/transfers"), format!("{base}/v1/transfers/batch"));
            while Instant::now() < deadline {
                let (url, body, count) = match mode {
                    Mode::Single => {
                        n += 1;
                        let mut body = String::with_capacity(192);
                        transfer(&mut rng, n, &mut body);
                        (&single_url, body, 1)
                    }
                    Mode::Batch => {
                        let mut body = String::with_capacity(32 + batch * 160);
                        body.push_str(r#"{"transfers":["#);
                        for i in 0..batch {
                            if i > 0 {
                                body.push(',');
                            }
                            n += 1;
                            transfer(&mut rng, n, &mut body);
                        }
                        body.push_str("]}");
                        (&batch_url, body, batch)
                    }
                };
                let t0 = Instant::now();
                match post(&client, url, &key, body).await {
                    Ok((200 | 201, _)) => stats.transfers += count as u64,
                    _ => stats.errors += 1,
                }
                stats.latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            stats
        });
    }
    let mut all = Stats { latencies_us: Vec::new(), transfers: 0, errors: 0 };
    while let Some(r) = workers.join_next().await {
        let s = r?;
        all.latencies_us.extend(s.latencies_us);
        all.transfers += s.transfers;
        all.errors += s.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, all.latencies_us.len()) - 1;
        all.latencies_us[i] as f64 / 1e3
    };
    let requests = all.latencies_us.len();
    let (mode, connections, errors) = (args.mode, args.connections, all.errors);
    let (rps, tps) = (requests as f64 / seconds, all.transfers as f64 / seconds);
    let (p50, p99, p999) = (pct(0.5), pct(0.99), pct(0.999));
    eprintln!(
        "{requests} requests in {seconds:.1} s over {connections} connections ({mode:?}): {rps:.0} req/s, \
         {tps:.0} transfers/s, p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, {errors} errors"
    );
    println!(
        "{{\"mode\":\"{mode:?}\",\"connections\":{connections},\"seconds\":{seconds:.3},\"requests\":{requests},\
         \"requests_per_s\":{rps:.0},\"transfers_per_s\":{tps:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\
         \"p999_ms\":{p999:.3},\"errors\":{errors}}}"
    );
    Ok(if all.errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
