//! The verifiable-journal commands: `journal verify-proof`, `journal proof`, `journal consistency`,
//! `journal checkpoints`, the checkpoint part of `journal verify`, and the proof timing of
//! `bench ledger --proofs`. Thin: the logic is in `puhui-verifiable` and `puhui-store`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use puhui_store::verifiable::{self as v, audit, hex, PublicKey};
use puhui_store::EmbeddedStore;

/// Flags of `puhui journal verify-proof`.
#[derive(Args, Debug)]
pub struct VerifyProofArgs {
    /// The proof file (an inclusion or a consistency proof, JSON).
    file: PathBuf,
    /// The node's public key: a path to its node.pub file, or the 64 hex digits.
    #[arg(long)]
    public_key: String,
}

/// Flags of `puhui journal proof`.
#[derive(Args, Debug)]
pub struct ProofArgs {
    /// The data directory (read only; works while the node runs).
    #[arg(long)]
    data_dir: PathBuf,
    /// The transfer whose journal entry to prove.
    #[arg(long, conflicts_with = "entry", required_unless_present = "entry")]
    transfer: Option<String>,
    /// Or: the journal entry (sequence number) to prove.
    #[arg(long)]
    entry: Option<u64>,
    /// The tree size of the signed checkpoint to prove against (default: the latest).
    #[arg(long)]
    checkpoint: Option<u64>,
    /// Where to write the proof (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Flags of `puhui journal consistency`.
#[derive(Args, Debug)]
pub struct ConsistencyArgs {
    /// The data directory (read only; works while the node runs).
    #[arg(long)]
    data_dir: PathBuf,
    /// Tree size of the older signed checkpoint.
    #[arg(long)]
    from: u64,
    /// Tree size of the newer signed checkpoint.
    #[arg(long)]
    to: u64,
    /// Where to write the proof (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Flags of `puhui journal witness-fetch`.
#[derive(Args, Debug)]
pub struct WitnessFetchArgs {
    /// The NATS server (e.g. nats://127.0.0.1:4222).
    #[arg(long)]
    nats: String,
    /// The witness stream (the node's `--witness-nats-stream`).
    #[arg(long, default_value = "PUHUI_CHECKPOINTS")]
    stream: String,
    /// The witness subject prefix (the node's `--witness-nats-subject`).
    #[arg(long, default_value = "puhui_checkpoints")]
    subject: String,
    /// The node's public key (a node.pub path or 64 hex digits): only its checkpoints are copied,
    /// and each signature is checked before it is kept.
    #[arg(long)]
    public_key: String,
    /// The witness file to append to (created if missing; checkpoints it holds are skipped).
    #[arg(long)]
    out: PathBuf,
}

/// `puhui journal witness-fetch`: appends the node's checkpoints from the stream that the file does
/// not hold yet, each signature checked, in increasing size. Exit 1 if a message is not a validly
/// signed checkpoint of that key, or if sizes go back (a node that rewrote history).
pub fn witness_fetch(args: WitnessFetchArgs) -> anyhow::Result<ExitCode> {
    let key = PublicKey::from_arg(&args.public_key).context("--public-key")?;
    let subject = format!("{}.{}", args.subject, key.key_id());
    let (mut file, held) =
        v::CheckpointLog::open(&args.out).with_context(|| args.out.display().to_string())?;
    let mut last = held.last().map_or(0, |c| c.size);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let messages: Vec<(u64, Vec<u8>)> = runtime.block_on(async {
        let client = async_nats::connect(args.nats.as_str())
            .await
            .with_context(|| format!("connecting to {}", args.nats))?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&args.stream).await.with_context(|| format!("stream {}", args.stream))?;
        let mut out = Vec::new();
        // The subject's last message bounds the read (an ordered consumer would wait for more).
        let last_seq = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message.sequence,
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok::<_, anyhow::Error>(out);
            }
            Err(e) => return Err(anyhow::anyhow!("reading {subject}: {e}")),
        };
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                ..Default::default()
            })
            .await
            .context("creating an ordered consumer")?;
        let mut messages = consumer.messages().await.context("reading the stream")?;
        use futures_util::StreamExt;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("reading {subject}: {e}"))?;
            let seq = message.info().map_err(|e| anyhow::anyhow!("message info: {e}"))?.stream_sequence;
            out.push((seq, message.payload.to_vec()));
            if seq >= last_seq {
                break;
            }
        }
        Ok(out)
    })?;
    let (mut added, mut seen) = (0u64, 0u64);
    for (seq, payload) in messages {
        seen += 1;
        let checkpoint: v::Checkpoint = match serde_json::from_slice(&payload) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("message {seq} on {subject} is not a checkpoint: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        if let Err(e) = checkpoint.verify_signature(&key) {
            eprintln!("message {seq} on {subject}: {e}");
            return Ok(ExitCode::from(1));
        }
        if checkpoint.size <= last {
            // The file's sizes strictly increase (CheckpointLog::open checks it).
            let same_size = held.binary_search_by_key(&checkpoint.size, |h| h.size).ok().map(|i| &held[i]);
            if same_size.is_some_and(|h| h.root != checkpoint.root) {
                eprintln!(
                    "message {seq}: the node signed two different roots for tree size {} (proof of a rewritten history)",
                    checkpoint.size
                );
                return Ok(ExitCode::from(1));
            }
            continue;
        }
        file.append(&checkpoint).with_context(|| args.out.display().to_string())?;
        last = checkpoint.size;
        added += 1;
    }
    println!(
        "{added} new checkpoints appended to {} ({seen} on {subject}; the file ends at tree size {last})",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `puhui journal verify-proof FILE --public-key KEY`: exit 0 if the proof verifies, 1 if not.
pub fn verify_proof(args: VerifyProofArgs) -> anyhow::Result<ExitCode> {
    let key = match PublicKey::from_arg(&args.public_key) {
        Ok(k) => k,
        Err(e) => {
            println!("proof NOT VERIFIED: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match v::proof::verify_proof_file(&args.file, &key) {
        Ok(verified) => {
            println!("proof OK (key {}): {verified}", key.key_id());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("proof BAD: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn write_out(out: Option<&Path>, json: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, format!("{json}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{json}")?;
        }
    }
    Ok(())
}

/// `puhui journal proof`: writes an inclusion proof file.
pub fn proof(args: ProofArgs) -> anyhow::Result<ExitCode> {
    let proof = match (&args.transfer, args.entry) {
        (Some(id), _) => audit::inclusion_proof_for_transfer(&args.data_dir, id, args.checkpoint),
        (None, Some(seq)) => audit::inclusion_proof_for_entry(&args.data_dir, seq, args.checkpoint),
        (None, None) => anyhow::bail!("give --transfer ID or --entry SEQ"),
    };
    match proof {
        Ok(p) => {
            write_out(args.out.as_deref(), &p.to_json())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("no proof: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `puhui journal consistency`: writes a consistency proof file.
pub fn consistency(args: ConsistencyArgs) -> anyhow::Result<ExitCode> {
    match audit::consistency(&args.data_dir, args.from, args.to) {
        Ok(p) => {
            write_out(args.out.as_deref(), &p.to_json())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("no proof: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `puhui journal checkpoints`: prints the stored checkpoints, one JSON line each.
pub fn checkpoints(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let all = audit::checkpoints(data_dir)?;
    let mut stdout = std::io::stdout().lock();
    for c in all {
        write!(stdout, "{}", c.to_line())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The checkpoint part of `puhui journal verify`, run after the journal itself verified
/// (`journal_code` is what that part decided).
pub fn verify_checkpoints(
    journal_code: ExitCode,
    data_dir: &Path,
    witness: Option<&Path>,
    public_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if journal_code != ExitCode::SUCCESS {
        return Ok(journal_code);
    }
    let key = match public_key.map(PublicKey::from_arg).transpose() {
        Ok(k) => k,
        Err(e) => {
            println!("checkpoints BAD: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let started = Instant::now();
    match audit::audit(data_dir, key.as_ref(), witness) {
        Ok(report) => {
            let latest = match &report.latest {
                Some(c) => format!("latest size {} root {}", c.size, hex::encode(&c.root)),
                None => "none yet".into(),
            };
            println!(
                "checkpoints OK: {} stored ({latest}), {} witnessed{}, all signed by key {} and consistent with the journal's {} entries ({:.2} s)",
                report.checkpoints,
                report.witnessed,
                witness.map(|w| format!(" in {}", w.display())).unwrap_or_default(),
                report.key_id.as_deref().unwrap_or("(none)"),
                report.entries,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("checkpoints BAD: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `bench ledger --proofs N`: checkpoints, then times N store-level inclusion proofs of random
/// transfers (the benchmark's ids `t{i:x}`). Returns a JSON fragment for the bench line.
pub fn time_proofs(store: &EmbeddedStore, transfers: usize, n: usize, seed: u64) -> anyhow::Result<String> {
    use rand::{Rng, SeedableRng};
    let checkpoint = store.checkpoint_now().context("checkpointing before the proof benchmark")?;
    let key = store.public_key()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let id = format!("t{:x}", rng.random_range(0..transfers));
        let t0 = Instant::now();
        let proof =
            store.inclusion_proof_for_transfer(&id, None).with_context(|| format!("proof of {id}"))?;
        times.push(t0.elapsed());
        last = Some(proof);
    }
    if let Some(p) = last {
        p.verify(&key).context("a benchmark proof does not verify")?;
    }
    // Consistency proofs between the first and the latest checkpoint.
    let first = store.checkpoints()?.first().map_or(checkpoint.size, |c| c.size);
    let t0 = Instant::now();
    let c = store.consistency(first, checkpoint.size)?;
    let consistency_us = t0.elapsed().as_secs_f64() * 1e6;
    c.verify(&key).context("the benchmark consistency proof does not verify")?;
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1e6
    };
    Ok(format!(
        ",\"proofs\":{n},\"proof_tree_size\":{},\"proof_p50_us\":{:.1},\"proof_p99_us\":{:.1},\"proof_max_us\":{:.1},\"consistency_us\":{consistency_us:.1}",
        checkpoint.size,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    ))
}
