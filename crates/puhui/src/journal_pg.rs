//! The CLI's PostgreSQL commands: `journal verify --store postgres://…`, `bench ledger --store
//! postgres://…`, and the hidden `pg-node-child` the several-processes test runs. Thin: the logic
//! lives in `puhui-store-pg`.
//!
//! A store URL may name a schema: `postgres://postgres@127.0.0.1/test?schema=ledger1`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use puhui_ledger::{Currency, NewAccount, ResultCode, BATCH_EVENTS_MAX};
use puhui_store::LedgerStore;
use puhui_store_pg::{hammer, split_schema, verify::VerifyError, PgOptions, PgStore};

/// `puhui journal verify --store URL`: exit 0 if the chain, the replay and the tables agree.
pub fn verify(store_url: &str) -> anyhow::Result<ExitCode> {
    let (url, schema) = split_schema(store_url);
    let started = Instant::now();
    match puhui_store_pg::verify::verify(&url, schema.as_deref()) {
        Ok(v) => {
            println!(
                "journal OK: {} entries, {} accounts, {} transfers, {} balance-history rows match the replay, last hash {} ({:.2} s)",
                v.entries,
                v.accounts,
                v.transfers,
                v.history_rows,
                crate::hex(&v.last_hash),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Bad(why)) => {
            println!("journal BAD: {why}");
            Ok(ExitCode::FAILURE)
        }
        Err(VerifyError::Store(e)) => Err(anyhow::Error::msg(e)).context("reading the PostgreSQL journal"),
    }
}

/// Flags of the hidden `pg-node-child`.
#[derive(clap::Args, Debug)]
pub struct NodeChildArgs {
    /// The store URL (with `?schema=`).
    #[arg(long)]
    store: String,
    /// This node's name (client names are `<node>c<i>`).
    #[arg(long)]
    node: String,
    /// Every node's name, comma-separated (their holds are fair game).
    #[arg(long)]
    nodes: String,
    /// Client threads in this process.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Batches per client.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Test helper: one node of the several-processes test. Prints `ID RESULT` per acknowledged event.
pub fn node_child(args: NodeChildArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.clients > 16 {
        bail!("--clients must be between 1 and 16");
    }
    let (url, schema) = split_schema(&args.store);
    let store = PgStore::open_with(&url, PgOptions { schema, expire_every_ms: 5, ..Default::default() })?;
    hammer::setup(&store)?;
    let peers: Vec<String> =
        args.nodes.split(',').flat_map(|n| (0..args.clients).map(move |c| format!("{n}c{c}"))).collect();
    let out = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..args.clients)
            .map(|c| {
                let (store, peers, out) = (&store, &peers, &out);
                let name = format!("{}c{c}", args.node);
                let seed = args.seed.wrapping_mul(1_000).wrapping_add(c as u64);
                scope.spawn(move || {
                    hammer::run_client(store, &name, peers, seed, args.rounds, &mut |id, code| {
                        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(out, "{id} {code}");
                        let _ = out.flush();
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let deadlocks = store.stats().deadlocks.load(std::sync::atomic::Ordering::Relaxed);
    if deadlocks > 0 {
        bail!("{deadlocks} deadlocks reported by PostgreSQL");
    }
    Ok(ExitCode::SUCCESS)
}

/// Parameters of `bench ledger --store postgres://…`.
pub struct BenchParams {
    /// Accounts.
    pub accounts: usize,
    /// Transfers.
    pub transfers: usize,
    /// Transfers per batch.
    pub batch: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Zipf (true) or uniform account choice.
    pub zipf: bool,
    /// Random seed.
    pub seed: u64,
}

/// `puhui bench ledger --store postgres://…`: the same load as the embedded benchmark, on a fresh
/// schema (`?schema=` or a new `puhui_bench_<pid>` that is dropped afterwards). One JSON line.
pub fn bench_ledger(store_url: &str, p: BenchParams) -> anyhow::Result<ExitCode> {
    let (url, schema) = split_schema(store_url);
    let (schema, drop_after) = match schema {
        Some(s) => (s, false),
        None => (format!("puhui_bench_{}", std::process::id()), true),
    };
    {
        let mut c = puhui_store_pg::connect(&url, None)?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
            .map_err(|e| anyhow::anyhow!(puhui_store_pg::describe(&e)))?;
    }
    let store = PgStore::open_with(
        &url,
        PgOptions { schema: Some(schema.clone()), read_connections: 2, ..Default::default() },
    )?;
    let cny = Currency::iso("CNY").expect("CNY");
    let account_id = crate::bench::account_id;
    for chunk in (0..p.accounts).collect::<Vec<_>>().chunks(BATCH_EVENTS_MAX) {
        store.create_accounts(chunk.iter().map(|i| NewAccount::new(account_id(*i), cny)).collect())?;
    }
    let batches = crate::bench::prepare_batches(p.accounts, p.transfers, p.batch, p.zipf, p.seed);
    let queue = std::sync::Mutex::new(batches.into_iter());
    let store = Arc::new(store);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failed = 0usize;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..p.clients)
            .map(|_| {
                let (queue, store) = (&queue, &store);
                scope.spawn(move || {
                    let (mut mine, mut failed) = (Vec::new(), 0usize);
                    loop {
                        let next = queue.lock().expect("queue").next();
                        let Some(batch) = next else { break };
                        let t0 = Instant::now();
                        let results = loop {
                            match store.create_transfers(batch.clone()) {
                                Err(puhui_store::StoreError::Overloaded) => std::thread::yield_now(),
                                other => break other.expect("the store accepts the batch"),
                            }
                        };
                        mine.push(t0.elapsed());
                        failed += results.iter().filter(|r| r.result != ResultCode::Ok).count();
                    }
                    (mine, failed)
                })
            })
            .collect();
        for h in handles {
            let (mine, f) = h.join().expect("client thread");
            latencies.extend(mine);
            failed += f;
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    if failed > 0 {
        bail!("{failed} transfers were not ok; the benchmark's transfers should all succeed");
    }
    let commits = store.stats().commits.load(std::sync::atomic::Ordering::Relaxed);
    let deadlocks = store.stats().deadlocks.load(std::sync::atomic::Ordering::Relaxed);
    drop(store);
    if drop_after {
        let mut c = puhui_store_pg::connect(&url, None)?;
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
    latencies.sort();
    let pct = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    eprintln!(
        "postgres: {} transfers in {seconds:.2} s over {} accounts, batch {}, {} client(s): {:.0} transfers/s, {commits} commits",
        p.transfers,
        p.accounts,
        p.batch,
        p.clients,
        p.transfers as f64 / seconds
    );
    println!(
        "{{\"store\":\"postgres\",\"transfers\":{},\"batch\":{},\"clients\":{},\"accounts\":{},\"distribution\":\"{}\",\"seconds\":{seconds:.3},\"transfers_per_s\":{:.0},\"p50_batch_ms\":{:.3},\"p99_batch_ms\":{:.3},\"commits\":{commits},\"deadlocks\":{deadlocks}}}",
        p.transfers,
        p.batch,
        p.clients,
        p.accounts,
        if p.zipf { "Zipf" } else { "Uniform" },
        p.transfers as f64 / seconds,
        pct(0.50),
        pct(0.99),
    );
    Ok(ExitCode::SUCCESS)
}
