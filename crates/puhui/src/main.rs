//! `puhui`: the command-line entry point. Thin: parses arguments and calls the library crates.

mod bench;
mod crash_child;
mod demo;

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
    /// Run the end-to-end demo on a fresh embedded data directory (no server needed).
    Demo {
        /// Data directory (default: a new temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
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
}

#[derive(Subcommand)]
enum BenchCommand {
    /// In-process ledger load against a fresh data directory, always durable (fdatasync per group).
    Ledger(bench::LedgerArgs),
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Recompute the hash chain, replay every event and check the ledger invariants.
    Verify {
        /// The data directory holding journal.phj.
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
fn tune_allocator() {
    // Option numbers of mimalloc v2 (mi_option_arena_eager_commit = 4, mi_option_purge_delay = 15).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters of the allocator, called before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo { data_dir } => demo::run(data_dir),
        Command::Bench { what: BenchCommand::Ledger(args) } => bench::ledger(args),
        Command::Journal { what: JournalCommand::Verify { data_dir } } => journal_verify(&data_dir),
        Command::CrashChild { data_dir, cycle, snapshot_every } => {
            crash_child::run(&data_dir, cycle, snapshot_every)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
