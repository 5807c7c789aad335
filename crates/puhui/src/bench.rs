//! `puhui bench ledger`: in-process, durable load, ending with one JSON line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use puhui_ledger::{Currency, Id, NewAccount, ResultCode, TransferRequest, BATCH_EVENTS_MAX};
use puhui_store::{EmbeddedStore, LedgerStore};
use rand::{Rng, SeedableRng};
use rand_distr::Distribution as _;

use crate::Distribution;

/// Most client threads; each has one batch in flight, so the store's queue never turns them away.
const CLIENTS_MAX: usize = 64;
const _: () = assert!(CLIENTS_MAX < puhui_store::QUEUE_COMMANDS_MAX);

/// Flags of `puhui bench ledger`.
#[derive(Args, Debug)]
pub struct LedgerArgs {
    /// Accounts to create before the load.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Transfers to submit.
    #[arg(long, default_value_t = 2_000_000)]
    transfers: usize,
    /// Transfers per batch (1..=8189).
    #[arg(long, default_value_t = 8_189)]
    batch: usize,
    /// How transfers pick their accounts.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Client threads submitting batches concurrently (group commit merges them).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Data directory; must not already hold a journal (default: a new temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// After the load, reopen the data directory and report how long recovery took.
    #[arg(long)]
    restart: bool,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Reserve memory for all the transfers up front (static allocation) instead of growing tables:
    /// the ledger's tables, and the Merkle tree's levels (written once at start, so that its growth
    /// takes no page faults during the run).
    #[arg(long)]
    reserve: bool,
    /// Take a snapshot every this many journal entries (0: only at shutdown).
    #[arg(long, default_value_t = puhui_store::SNAPSHOT_EVERY_ENTRIES_DEFAULT)]
    snapshot_every: u64,
    /// Switch the verifiable journal off (no Merkle tree, no signed checkpoints): the baseline that
    /// its cost is measured against.
    #[arg(long)]
    no_checkpoints: bool,
    /// After the load, time this many store-level inclusion proofs of random transfers (p50/p99).
    #[arg(long, default_value_t = 0)]
    proofs: usize,
    /// Run the load on a PostgreSQL store instead (postgres://user@host/db[?schema=NAME]; without a
    /// schema, a fresh one is made and dropped afterwards).
    #[arg(long)]
    store: Option<String>,
}

/// Runs the ledger benchmark.
pub fn ledger(args: LedgerArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.batch > BATCH_EVENTS_MAX {
        bail!("--batch must be between 1 and {BATCH_EVENTS_MAX}");
    }
    if args.accounts < 2 {
        bail!("--accounts must be at least 2");
    }
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        bail!("--clients must be between 1 and {CLIENTS_MAX}");
    }
    if let Some(url) = &args.store {
        let p = crate::journal_pg::BenchParams {
            accounts: args.accounts,
            transfers: args.transfers,
            batch: args.batch,
            clients: args.clients,
            zipf: args.distribution == Distribution::Zipf,
            seed: args.seed,
        };
        return crate::journal_pg::bench_ledger(url, p);
    }
    let _temp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            _temp = tempfile::Builder::new().prefix("puhui-bench-").tempdir_in(bench_tmp_root())?;
            _temp.path().to_path_buf()
        }
    };
    if dir.join(puhui_store::JOURNAL_FILE).exists() {
        bail!("{} already holds a journal; the benchmark needs a fresh data directory", dir.display());
    }
    let options = puhui_store::StoreOptions {
        snapshot_every_entries: args.snapshot_every,
        transfers_capacity: if args.reserve { args.transfers } else { 0 },
        // One journal entry per transfer, plus the account creations.
        journal_capacity_entries: if args.reserve { (args.transfers + args.accounts) as u64 } else { 0 },
        verifiable: !args.no_checkpoints,
        ..Default::default()
    };
    let store = EmbeddedStore::open_with(&dir, std::sync::Arc::new(puhui_store::SystemClock), options)
        .context("opening the data directory")?;
    let cny = Currency::iso("CNY").expect("CNY");
    for chunk in (0..args.accounts).collect::<Vec<_>>().chunks(BATCH_EVENTS_MAX) {
        let batch = chunk.iter().map(|i| NewAccount::new(account_id(*i), cny)).collect();
        store.create_accounts(batch)?;
    }

    // Every batch is made before the clock starts, so the measured loop only submits: a generator
    // running beside it would take CPU from the store's own threads (on two cores, from the Merkle
    // thread above all) and the figure would be partly the generator's.
    let batches = prepare_batches(
        args.accounts,
        args.transfers,
        args.batch,
        args.distribution == Distribution::Zipf,
        args.seed,
    );
    let batch_count = batches.len();
    let queue = std::sync::Mutex::new(batches.into_iter());

    let bar = ProgressBar::new(args.transfers as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} transfers {per_sec} eta {eta}")
            .expect("template"),
    );
    let cpu_started = cpu_seconds();
    let threads_started = thread_cpu_seconds(&["puhui-committer", "puhui-merkle"]);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(batch_count);
    let mut failed = 0usize;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.clients)
            .map(|_| {
                let (queue, store, bar) = (&queue, &store, &bar);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    let mut failed = 0usize;
                    loop {
                        let next = queue.lock().expect("queue").next();
                        let Some(batch) = next else { break };
                        let n = batch.len();
                        let t0 = Instant::now();
                        // Each client has one command in flight and there are at most
                        // CLIENTS_MAX < QUEUE_COMMANDS_MAX of them: the store's queue cannot be full.
                        let results = store.create_transfers(batch).expect("the store accepts the batch");
                        mine.push(t0.elapsed());
                        failed += results.iter().filter(|r| r.result != ResultCode::Ok).count();
                        bar.inc(n as u64);
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
    // CPU time of the whole process during the load (all threads, generator included): the work per
    // transfer, which other load on a shared machine disturbs less than the throughput.
    let cpu_load = cpu_seconds() - cpu_started;
    // The same per thread (from /proc, 10 ms resolution): where the work of checkpoints goes.
    let threads_load: Vec<f64> = thread_cpu_seconds(&["puhui-committer", "puhui-merkle"])
        .iter()
        .zip(&threads_started)
        .map(|(end, start)| (end - start) * 1e6 / args.transfers as f64)
        .collect();
    bar.finish_and_clear();
    if failed > 0 {
        bail!("{failed} transfers were not ok; the benchmark's transfers should all succeed");
    }
    let (ledger_bytes, transfers_count) = store.read(|l| (l.memory_bytes_estimate(), l.transfers_count()));
    let rss = rss_bytes();
    let stats = store.stats();
    let frames = stats.frames.load(std::sync::atomic::Ordering::Relaxed).max(1);
    let sync_ms_avg =
        stats.sync_ns_total.load(std::sync::atomic::Ordering::Relaxed) as f64 / frames as f64 / 1e6;

    let snapshot_pause_ms =
        stats.snapshot_pause_ns_max.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
    let proofs = if args.proofs > 0 && !args.no_checkpoints {
        crate::verifiable::time_proofs(&store, args.transfers, args.proofs, args.seed)?
    } else {
        String::new()
    };
    let verifiable_bytes = store.verifiable_heap_bytes();
    let shutdown_started = Instant::now();
    drop(store); // Writes the final snapshot.
    let shutdown_seconds = shutdown_started.elapsed().as_secs_f64();

    let restart = if args.restart {
        // From the snapshot written at shutdown (a clean restart).
        let t0 = Instant::now();
        let reopened = EmbeddedStore::open_with(
            &dir,
            std::sync::Arc::new(puhui_store::SystemClock),
            puhui_store::StoreOptions { verifiable: !args.no_checkpoints, ..Default::default() },
        )?;
        let from_snapshot = t0.elapsed().as_secs_f64();
        let merkle_load = reopened.open_report().merkle_load.map_or(0.0, |d| d.as_secs_f64());
        drop(reopened);
        // Without it: replaying the whole journal (the worst case after a crash with no snapshot).
        let snapshot = dir.join(puhui_journal::snapshot::SNAPSHOT_FILE);
        let aside = dir.join("snapshot.bench-aside");
        std::fs::rename(&snapshot, &aside)?;
        // And without the Merkle tree file: the whole journal is hashed again too.
        let tree_file = dir.join(puhui_store::verifiable::tree_file::TREE_FILE);
        if tree_file.exists() {
            std::fs::rename(&tree_file, dir.join("merkle.bench-aside"))?;
        }
        let t0 = Instant::now();
        let reopened = puhui_store::EmbeddedStore::open_with(
            &dir,
            std::sync::Arc::new(puhui_store::SystemClock),
            puhui_store::StoreOptions {
                snapshot_every_entries: 0,
                verifiable: !args.no_checkpoints,
                ..Default::default()
            },
        )?;
        let full = t0.elapsed().as_secs_f64();
        let entries = reopened.open_report().entries_replayed;
        std::mem::forget(reopened); // Leave no new snapshot behind; the process ends soon.
        format!(
            ",\"restart_from_snapshot_seconds\":{from_snapshot:.3},\"restart_merkle_load_seconds\":{merkle_load:.3},\"restart_full_replay_seconds\":{full:.3},\"journal_entries\":{entries}"
        )
    } else {
        String::new()
    };
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    eprintln!(
        "{} transfers in {:.2} s over {} accounts ({:?}), batch {}, {} client(s): {:.0} transfers/s, {frames} group commits, avg sync {:.2} ms",
        args.transfers,
        seconds,
        args.accounts,
        args.distribution,
        args.batch,
        args.clients,
        args.transfers as f64 / seconds,
        sync_ms_avg
    );
    println!(
        "{{\"transfers\":{},\"batch\":{},\"seconds\":{:.3},\"transfers_per_s\":{:.0},\"p50_batch_ms\":{:.3},\"p99_batch_ms\":{:.3},\"rss_bytes\":{},\"accounts\":{},\"distribution\":\"{:?}\",\"clients\":{},\"ledger_bytes_per_transfer\":{:.0},\"snapshot_pause_ms_max\":{snapshot_pause_ms:.1},\"shutdown_seconds\":{shutdown_seconds:.3},\"verifiable\":{},\"verifiable_bytes_per_transfer\":{:.0},\"cpu_us_per_transfer\":{:.3},\"committer_cpu_us_per_transfer\":{:.3},\"merkle_cpu_us_per_transfer\":{:.3}{proofs}{restart}}}",
        args.transfers,
        args.batch,
        seconds,
        args.transfers as f64 / seconds,
        pct(0.50),
        pct(0.99),
        rss,
        args.accounts,
        args.distribution,
        args.clients,
        ledger_bytes as f64 / transfers_count.max(1) as f64,
        !args.no_checkpoints,
        verifiable_bytes as f64 / transfers_count.max(1) as f64,
        cpu_load * 1e6 / args.transfers as f64,
        threads_load[0],
        threads_load[1],
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn account_id(i: usize) -> Id {
    Id::new(&format!("acct-{i}")).expect("valid id")
}

/// Where temporary benchmark data directories go: `PUHUI_BENCH_TMP`, else the system temp directory.
/// (Check it is a real disk, not a tmpfs, which would make fdatasync free.)
fn bench_tmp_root() -> PathBuf {
    std::env::var_os("PUHUI_BENCH_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// User + system CPU seconds used so far by the threads of this process with each of these names
/// (summed per name; 0 for a name no thread has). Read from `/proc/self/task`, in clock ticks.
fn thread_cpu_seconds(names: &[&str]) -> Vec<f64> {
    let mut out = vec![0.0; names.len()];
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(i) = names.iter().position(|n| *n == comm.trim_end()) else { continue };
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks = |k: usize| fields.get(k).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        out[i] += (ticks(11) + ticks(12)) as f64 / ticks_per_s;
    }
    out
}

/// User + system CPU seconds used by this process so far (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own; no other memory is touched.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Resident set size of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// All the benchmark's batches, made up front with a progress bar (about 0.3 µs and 250 bytes per
/// transfer: 10 million take ~2.5 GB, freed as the load consumes them). Single-phase CNY transfers
/// between `accounts` accounts (uniform or Zipf), amounts 1–100,000, ids `t<hex>`; the embedded and
/// the PostgreSQL benchmarks both submit these.
pub(crate) fn prepare_batches(
    accounts: usize,
    transfers: usize,
    batch: usize,
    zipf: bool,
    seed: u64,
) -> Vec<Vec<TransferRequest>> {
    let cny = Currency::iso("CNY").expect("CNY");
    let bar = ProgressBar::new(transfers as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} preparing {bar:40} {pos}/{len} transfers").expect("template"),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let zipf_distribution = rand_distr::Zipf::new(accounts as f64, 1.0).expect("valid zipf");
    let pick = |rng: &mut rand::rngs::StdRng| {
        if zipf {
            (zipf_distribution.sample(rng) as usize).saturating_sub(1).min(accounts - 1)
        } else {
            rng.random_range(0..accounts)
        }
    };
    let mut batches = Vec::with_capacity(transfers.div_ceil(batch));
    let mut made = 0usize;
    while made < transfers {
        let n = batch.min(transfers - made);
        let mut items = Vec::with_capacity(n);
        for k in 0..n {
            let debit = pick(&mut rng);
            let mut credit = pick(&mut rng);
            if credit == debit {
                credit = (debit + 1) % accounts;
            }
            let amount = rng.random_range(1..=100_000u64);
            let id = Id::new(&format!("t{:x}", made + k)).expect("valid id");
            items.push(TransferRequest::single(
                id,
                account_id(debit),
                account_id(credit),
                amount,
                cny.code(),
            ));
        }
        made += n;
        batches.push(items);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    batches
}
