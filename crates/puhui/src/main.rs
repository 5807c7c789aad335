//! `puhui`: the command-line entry point. Thin: parses arguments and calls the library crates.

mod backtest;
mod bench;
mod bench_http;
mod bench_risk;
mod crash_child;
mod demo;
mod journal_pg;
mod sim;
mod verifiable;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: the ledger allocates ids on one thread and frees them on another (recovery, the
/// committer); glibc's allocator serialises that, mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// puhui (普惠): an open, fast, verifiable core for inclusive digital finance.
#[derive(Parser)]
#[command(name = "puhui", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the end-to-end demo: a simulated market week through risk control and the ledger, a
    /// report (terminal and report.html), the journal verified (no server needed).
    Demo(demo::DemoArgs),
    /// Simulate an inclusive-finance market: labelled transfers to JSONL/CSV and/or a running server.
    Sim(sim::SimArgs),
    /// Serve the partner HTTP API (embedded ledger, or PostgreSQL with --store).
    Serve(ServeArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API.
    Openapi,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Create or upgrade the PostgreSQL schema (what a PostgreSQL-backed node also does at start).
    Migrate {
        /// The store URL, e.g. postgres://postgres@127.0.0.1:5432/test (`?schema=NAME` picks a schema).
        #[arg(long)]
        store: String,
    },
    /// Risk control tools.
    Risk {
        #[command(subcommand)]
        what: RiskCommand,
    },
    /// Journal tools.
    Journal {
        #[command(subcommand)]
        what: JournalCommand,
    },
    /// Test helper: applies random load and prints each acknowledged transfer (used by the crash test).
    #[command(hide = true)]
    CrashChild {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        cycle: u64,
        #[arg(long, default_value_t = puhui_store::SNAPSHOT_EVERY_ENTRIES_DEFAULT)]
        snapshot_every: u64,
    },
    /// Test helper: one node of the several-processes PostgreSQL test (prints acknowledged events).
    #[command(hide = true)]
    PgNodeChild(journal_pg::NodeChildArgs),
}

#[derive(Subcommand)]
enum RiskCommand {
    /// Replay the journaled decisions through a candidate ruleset (or as recorded) and report
    /// precision, recall and false-positive rate against the labels, per rule, with a plot.
    Backtest(backtest::BacktestArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// In-process ledger load against a fresh data directory, always durable (fdatasync per group).
    Ledger(bench::LedgerArgs),
    /// HTTP load against a running `puhui serve`: req/s, transfers/s, latency percentiles.
    Http(bench_http::HttpArgs),
    /// In-process risk decisions: decisions/s on one core and latency percentiles.
    Risk(bench_risk::RiskArgs),
}

/// Flags of `puhui serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, default_value = "puhui-data")]
    data_dir: PathBuf,
    /// Keep the ledger in PostgreSQL (e.g. postgres://postgres@127.0.0.1:5432/puhui, `?schema=NAME`
    /// picks a schema) so that several nodes serve one ledger; default: `PUHUI_STORE`, else the
    /// embedded store in the data directory (which still holds the tenants and admin token).
    #[arg(long)]
    store: Option<String>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Sustained requests per second allowed per API key (429 beyond).
    #[arg(long, default_value_t = puhui_api::limits::RATE_LIMIT_PER_KEY_DEFAULT)]
    rate_limit: u32,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Take a snapshot every this many journal entries.
    #[arg(long, default_value_t = puhui_store::SNAPSHOT_EVERY_ENTRIES_DEFAULT)]
    snapshot_every: u64,
    /// Journal entries to reserve the Merkle tree for at start (64 bytes each, written once up
    /// front so that the tree's growth takes no page faults on the write path; 0: grow on demand).
    #[arg(long, default_value_t = 0)]
    journal_capacity: u64,
    /// Threads of the async runtime (HTTP, decisions). Default: the CPUs minus one (at least one),
    /// since the committer thread is busy on its own: on 2 CPUs one runtime thread served 13–24 %
    /// more transfers per second than two (docs/BENCHMARKS.md).
    #[arg(long)]
    workers: Option<std::num::NonZeroUsize>,
    /// Risk ruleset (TOML); default: the shipped starter ruleset (rulesets/starter.toml).
    #[arg(long)]
    ruleset: Option<PathBuf>,
    /// Most keys and pairs the risk feature store holds (payers, payees, devices, IPs, attribute
    /// values, payer-payee and account-device pairs); beyond it the least recently seen are
    /// evicted. `puhui risk backtest` needs the same value to reproduce decisions past the bound.
    #[arg(long, default_value = "1000000", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    risk_keys_max: u64,
    /// Most events the risk feature store keeps per key (the oldest go first; windows reaching past
    /// them are marked saturated). `puhui risk backtest` needs the same value.
    #[arg(long, default_value = "1024", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    risk_events_per_key_max: u64,
    /// Write the risk snapshot while serving once this many risk records (decisions, labels) were
    /// journaled since the last one, so that a start after a crash re-applies only those; 0: only
    /// at a clean stop. A thread at idle priority keeps a second copy of the features for it.
    #[arg(long, default_value_t = puhui_api::risk::CheckpointPolicy::default().every_records)]
    risk_snapshot_every: u64,
    /// The least time between two risk snapshots written while serving (each writes the whole
    /// feature store).
    #[arg(long, default_value_t = puhui_api::risk::CheckpointPolicy::default().interval_min_ms / 1_000)]
    risk_snapshot_interval_min_secs: u64,
    /// Publish every committed change to NATS JetStream at this URL (e.g. nats://127.0.0.1:4222).
    #[arg(long)]
    nats: Option<String>,
    /// The JetStream stream (created or updated at start; retention 7 days).
    #[arg(long, default_value = "PUHUI")]
    nats_stream: String,
    /// Subjects are `<prefix>.<tenant>.<event type>`.
    #[arg(long, default_value = "puhui")]
    nats_subject_prefix: String,
    /// Publish every signed checkpoint to NATS JetStream at this URL (a witness; subject
    /// `<witness-nats-subject>.<key id>`); partners copy them with `puhui journal witness-fetch`.
    #[arg(long)]
    witness_nats: Option<String>,
    /// The witness stream (created at start if missing; no age limit).
    #[arg(long, default_value = "PUHUI_CHECKPOINTS")]
    witness_nats_stream: String,
    /// The witness subject prefix.
    #[arg(long, default_value = "puhui_checkpoints")]
    witness_nats_subject: String,
    /// POST every signed checkpoint to this partner URL (a witness), signed with the HMAC secret in
    /// PUHUI_WITNESS_WEBHOOK_SECRET (required with this option).
    #[arg(long)]
    witness_webhook: Option<String>,
    /// Keep the risk velocity counters in Redis at this URL (e.g. redis://127.0.0.1:6379), shared
    /// by every node; without it each node counts only what it saw.
    #[arg(long)]
    redis: Option<String>,
    /// Prefix of the Redis keys.
    #[arg(long, default_value = puhui_risk_redis::KEY_PREFIX_DEFAULT)]
    redis_prefix: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Recompute the hash chain, replay every event and check the ledger invariants.
    Verify {
        /// The data directory holding journal.phj.
        #[arg(long, required_unless_present = "store")]
        data_dir: Option<PathBuf>,
        /// Verify the journal and tables of a PostgreSQL store instead
        /// (postgres://user@host/db[?schema=NAME]).
        #[arg(long, conflicts_with_all = ["data_dir", "witness", "public_key"])]
        store: Option<String>,
        /// Also check the journal against the checkpoints in this witness file (a rewritten and
        /// re-hashed journal is caught by a consistency check with them).
        #[arg(long)]
        witness: Option<PathBuf>,
        /// The node's public key to check checkpoint signatures with (a node.pub path or 64 hex
        /// digits; default: DATA_DIR/node.pub).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Verify an inclusion or consistency proof file offline (no data directory needed).
    VerifyProof(verifiable::VerifyProofArgs),
    /// Write an inclusion proof for a transfer (or a journal entry) against a signed checkpoint.
    Proof(verifiable::ProofArgs),
    /// Write a consistency proof between two signed checkpoints.
    Consistency(verifiable::ConsistencyArgs),
    /// Copy a node's checkpoints from a NATS witness stream into a witness file (what a partner
    /// runs to hold them; then `journal verify --witness FILE`).
    WitnessFetch(verifiable::WitnessFetchArgs),
    /// Print the stored signed checkpoints, one JSON line each.
    Checkpoints {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// How bench transfers pick their accounts.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Distribution {
    /// Every account equally likely.
    Uniform,
    /// A few hot accounts (Zipf, s = 1), like merchant settlement accounts.
    Zipf,
}

/// Tunes the allocator for a long-lived process whose heap mostly grows: commit arena memory eagerly
/// and keep freed pages instead of returning them to the OS (each return costs a page fault and a
/// page clear when the memory is reused). Measured: recovery of 2M transfers 2.2 s → 1.4 s.
///
/// And no transparent huge pages: with them, the first touch of each fresh 2 MiB of heap clears
/// the whole huge page inside one page fault, on whichever thread allocated (the committer growing
/// the ledger, a runtime thread boxing a request's future). On this project's VMs, where the host
/// backs guest memory on first touch, one such fault took 5–17 ms, paid by every request in
/// flight. With 4 KiB pages the same clearing is spread over many short faults. Measured on
/// `puhui bench http --rate 10000`: p99 6–10 ms → 1.7–1.9 ms, p99.9 16–18 ms → 3.1–3.5 ms.
fn tune_allocator() {
    // Option numbers of mimalloc v3 (mi_option_arena_eager_commit = 4, mi_option_purge_delay = 15).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the allocator, called before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
    // For the whole process, whatever the system's THP mode and mimalloc's `madvise`. A failure
    // (a kernel without the call) leaves huge pages on: slower tails, nothing incorrect.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only; it changes this process's page policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Serve(args) => serve(args),
        Command::Openapi => {
            print!("{}", puhui_api::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { store } => migrate(&store),
        Command::Risk { what: RiskCommand::Backtest(args) } => backtest::run(args),
        Command::Bench { what: BenchCommand::Http(args) } => bench_http::run(args),
        Command::Bench { what: BenchCommand::Risk(args) } => bench_risk::run(args),
        Command::Bench { what: BenchCommand::Ledger(args) } => bench::ledger(args),
        Command::Journal { what: JournalCommand::Verify { store: Some(url), .. } } => {
            journal_pg::verify(&url)
        }
        Command::Journal { what: JournalCommand::Verify { data_dir, witness, public_key, .. } } => {
            let data_dir = data_dir.unwrap_or_default();
            journal_verify(&data_dir).and_then(|code| {
                verifiable::verify_checkpoints(code, &data_dir, witness.as_deref(), public_key.as_deref())
            })
        }
        Command::Journal { what: JournalCommand::VerifyProof(args) } => verifiable::verify_proof(args),
        Command::Journal { what: JournalCommand::WitnessFetch(args) } => verifiable::witness_fetch(args),
        Command::Journal { what: JournalCommand::Proof(args) } => verifiable::proof(args),
        Command::Journal { what: JournalCommand::Consistency(args) } => verifiable::consistency(args),
        Command::Journal { what: JournalCommand::Checkpoints { data_dir } } => {
            verifiable::checkpoints(&data_dir)
        }
        Command::CrashChild { data_dir, cycle, snapshot_every } => {
            crash_child::run(&data_dir, cycle, snapshot_every)
        }
        Command::PgNodeChild(args) => journal_pg::node_child(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn migrate(store: &str) -> anyhow::Result<ExitCode> {
    let (url, schema) = puhui_store_pg::split_schema(store);
    let applied = puhui_store_pg::migrate(&url, schema.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("schema up to date ({applied} migration(s) applied)");
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let shared_features = match &args.redis {
        None => None,
        Some(url) => {
            let config = puhui_risk_redis::RedisConfig {
                key_prefix: args.redis_prefix.clone(),
                ..puhui_risk_redis::RedisConfig::new(url)
            };
            let redis = puhui_risk_redis::RedisFeatures::new(config)?;
            // Not fatal: decisions degrade (the ruleset's on_exceeded) until Redis answers.
            if let Err(e) = redis.ping(1_000) {
                tracing::warn!(error = %e, "Redis does not answer yet; decisions are degraded until it does");
            }
            Some(std::sync::Arc::new(redis) as std::sync::Arc<dyn puhui_risk::SharedFeatures>)
        }
    };
    let witness_webhook = match args.witness_webhook {
        None => None,
        Some(url) => {
            let secret = std::env::var("PUHUI_WITNESS_WEBHOOK_SECRET").unwrap_or_default();
            if secret.len() < 16 {
                anyhow::bail!("--witness-webhook needs PUHUI_WITNESS_WEBHOOK_SECRET (at least 16 characters), the HMAC secret shared with the partner");
            }
            Some(puhui_api::witness::WebhookWitness { url, secret })
        }
    };
    let config = puhui_api::ServeConfig {
        witness: puhui_api::witness::WitnessConfig {
            nats: args.witness_nats.map(|url| puhui_api::witness::NatsWitness {
                stream: args.witness_nats_stream,
                subject: args.witness_nats_subject,
                ..puhui_api::witness::NatsWitness::new(&url)
            }),
            webhook: witness_webhook,
        },
        shared_features,
        ruleset: args.ruleset,
        feature_limits: puhui_risk::FeatureLimits {
            keys_max: args.risk_keys_max as usize,
            events_per_key_max: args.risk_events_per_key_max as usize,
            ..puhui_risk::FeatureLimits::default()
        },
        risk_snapshots: puhui_api::risk::CheckpointPolicy {
            every_records: args.risk_snapshot_every,
            interval_min_ms: args.risk_snapshot_interval_min_secs.saturating_mul(1_000),
        },
        nats: args.nats.map(|url| puhui_events::NatsConfig {
            stream: args.nats_stream,
            subject_prefix: args.nats_subject_prefix,
            ..puhui_events::NatsConfig::new(&url)
        }),
        store_url: args.store.or_else(|| std::env::var("PUHUI_STORE").ok().filter(|s| !s.trim().is_empty())),
        data_dir: args.data_dir,
        listen: args.listen,
        admin_token: std::env::var("PUHUI_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        rate_limit_per_key: args.rate_limit,
        store: puhui_store::StoreOptions {
            snapshot_every_entries: args.snapshot_every,
            journal_capacity_entries: args.journal_capacity,
            ..Default::default()
        },
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.map_or(cpus.saturating_sub(1).max(1), |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    runtime
        .block_on(puhui_api::serve(config, |addr| {
            use std::io::Write;
            println!("puhui listening on http://{addr}");
            let _ = std::io::stdout().flush();
            tracing::info!(%addr, "listening");
        }))
        .map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

fn journal_verify(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let path = data_dir.join(puhui_store::JOURNAL_FILE);
    if !path.exists() {
        anyhow::bail!("no journal at {}", path.display());
    }
    let started = std::time::Instant::now();
    match puhui_journal::verify(&path) {
        Ok(v) => {
            println!(
                "journal OK: {} entries in {} frames, {} accounts, {} transfers, last hash {} ({:.2} s)",
                v.summary.entries,
                v.summary.frames,
                v.accounts,
                v.transfers,
                hex(&v.summary.last_hash),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("journal BAD: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
