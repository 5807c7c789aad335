//! # puhui-store: where the ledger lives
//!
//! [`LedgerStore`] is the storage boundary every caller (the server, the demo, the benchmarks) goes
//! through. [`EmbeddedStore`] is the default: the in-memory [`Ledger`] plus the hash-chained journal in
//! a data directory, with group commit. A PostgreSQL store implements the same trait and must pass the
//! same [`conformance`] suite.
//!
//! Key decision: one committer thread owns all writes. Callers enqueue batches on a bounded queue; the
//! committer takes everything queued (up to [`GROUP_EVENTS_MAX`] events), decides it, writes one
//! journal frame and calls `fdatasync` once, and only then answers every caller in the group. The
//! write lock on the state is held until the sync returns, so readers never see an event that is not
//! yet durable.
#![deny(missing_docs)]

pub mod conformance;
mod transparency;

/// The verifiable journal's types (checkpoints, proofs, keys, errors), re-exported for callers.
pub use puhui_verifiable as verifiable;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use puhui_journal::{codec, JournalWriter, ScanError};
use puhui_ledger::{
    Account, Balances, EventResult, Id, IdGenerator, Ledger, NewAccount, Page, QueryError, StatusAction,
    Transfer, TransferRequest, BATCH_EVENTS_MAX,
};

/// Most commands waiting for the committer; beyond it callers get [`StoreError::Overloaded`].
pub const QUEUE_COMMANDS_MAX: usize = 1_024;
/// Most events decided in one group commit.
pub const GROUP_EVENTS_MAX: usize = 8 * BATCH_EVENTS_MAX;
/// A group commit syncs early (between batches) once its frame reaches this many bytes.
pub const FRAME_BYTES_SOFT_MAX: usize = 16 << 20;
/// Longest the committer sleeps when idle before checking for expired holds.
pub const EXPIRY_POLL_MS_MAX: u64 = 100;
/// Most records waiting to ride along with the next group commit
/// ([`EmbeddedStore::submit_records_riding`]); beyond it (or [`RIDERS_BYTES_MAX`]) they are refused.
pub const RIDERS_MAX: usize = 4_096;
/// Most payload bytes of the records waiting to ride along.
pub const RIDERS_BYTES_MAX: usize = 8 << 20;
// A group's frame is cut past `FRAME_BYTES_SOFT_MAX` between commands; the riders come after the
// last command, so the frame's hard limit must leave room for a command of 16 MiB and all of them.
const _: () = assert!(
    FRAME_BYTES_SOFT_MAX + RIDERS_BYTES_MAX + RIDERS_MAX * 64 + (16 << 20)
        <= puhui_journal::frame::FRAME_PAYLOAD_BYTES_MAX
);
/// File name of the journal inside a data directory.
pub const JOURNAL_FILE: &str = "journal.phj";
/// By default a snapshot is taken every this many journal entries (and at shutdown).
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 4_000_000;
/// By default a signed checkpoint is made after this many new journal entries…
pub const CHECKPOINT_EVERY_ENTRIES_DEFAULT: u64 = 1_000_000;
/// …or this many milliseconds after the last checkpoint if new entries arrived since (and at
/// shutdown).
pub const CHECKPOINT_EVERY_MS_DEFAULT: u64 = 1_000;

/// Tunables of the embedded store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Take a snapshot after this many new journal entries (0: only at shutdown). Encoding it pauses
    /// writes briefly (measured in docs/BENCHMARKS.md); the file is written by a background thread.
    pub snapshot_every_entries: u64,
    /// Transfers to reserve memory for at start (0: grow on demand). Growing a large table doubles
    /// it in one step, which pauses writes; reserving the expected size up front avoids that, in the
    /// spirit of static allocation.
    pub transfers_capacity: usize,
    /// Journal entries to reserve the Merkle tree for at start, its memory written once up front
    /// (0: grow on demand; verifiable journal only). Costs 64 bytes per entry of resident memory
    /// at once, and spares the write path the page faults of the tree's growth, which on a virtual
    /// machine slowed the journal's writer on the other core (docs/BENCHMARKS.md).
    pub journal_capacity_entries: u64,
    /// Keep the verifiable journal (Merkle tree, signed checkpoints, proofs; see
    /// docs/VERIFIABILITY.md). Default on. Off, no key is made and the proof calls answer
    /// [`verifiable::Error::Disabled`].
    pub verifiable: bool,
    /// Make a signed checkpoint after this many new journal entries (0: no count trigger).
    pub checkpoint_every_entries: u64,
    /// Make a signed checkpoint this many milliseconds after the last one, if entries arrived since
    /// (0: no time trigger).
    pub checkpoint_every_ms: u64,
    /// Also append every checkpoint (durably) to this append-only witness file, for someone else
    /// to hold. Network witnesses (NATS, webhooks) are not built yet.
    pub witness_file: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES_DEFAULT,
            transfers_capacity: 0,
            journal_capacity_entries: 0,
            verifiable: true,
            checkpoint_every_entries: CHECKPOINT_EVERY_ENTRIES_DEFAULT,
            checkpoint_every_ms: CHECKPOINT_EVERY_MS_DEFAULT,
            witness_file: None,
        }
    }
}

/// Where time comes from. Injected so that expiry and timestamps are testable.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now_ns`.
    pub fn new(now_ns: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(now_ns)))
    }
    /// Sets the time.
    pub fn set(&self, now_ns: u64) {
        self.0.store(now_ns, Ordering::SeqCst);
    }
    /// Moves the time forward.
    pub fn advance(&self, by_ns: u64) {
        self.0.fetch_add(by_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// Why a store call failed (as opposed to an event's own result code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The batch has more events than [`BATCH_EVENTS_MAX`].
    BatchTooLarge {
        /// Events in the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An application record is over [`puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX`] bytes.
    RecordTooLarge {
        /// The record's payload bytes.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The write queue is full; retry later (HTTP 503).
    Overloaded,
    /// The store stopped (shut down, or a journal write failed and it refuses further writes).
    Unavailable(String),
    /// Disk or database I/O failed.
    Io(String),
    /// The journal is damaged (not a torn tail): names the first bad entry.
    Corrupt(String),
    /// The data directory is used by another process.
    Locked(PathBuf),
    /// The account of a query does not exist.
    AccountNotFound,
    /// The cursor of a page does not exist or does not touch the account.
    CursorNotFound,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::BatchTooLarge { len, max } => {
                write!(f, "batch of {len} events exceeds the maximum of {max}")
            }
            StoreError::RecordTooLarge { len_bytes, max_bytes } => {
                write!(f, "a record of {len_bytes} bytes exceeds the maximum of {max_bytes}")
            }
            StoreError::Overloaded => f.write_str("the ledger's write queue is full; retry shortly"),
            StoreError::Unavailable(why) => write!(f, "the ledger is unavailable: {why}"),
            StoreError::Io(e) => write!(f, "storage I/O failed: {e}"),
            StoreError::Corrupt(e) => write!(f, "the journal is damaged: {e}"),
            StoreError::Locked(dir) => {
                write!(f, "data directory {} is in use by another process", dir.display())
            }
            StoreError::AccountNotFound => f.write_str("the account does not exist"),
            StoreError::CursorNotFound => {
                f.write_str("the cursor transfer does not exist or does not touch this account")
            }
        }
    }
}

impl std::error::Error for StoreError {}

impl From<QueryError> for StoreError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::AccountNotFound => StoreError::AccountNotFound,
            QueryError::CursorNotFound => StoreError::CursorNotFound,
        }
    }
}

/// The ledger's storage boundary. Every implementation gives the same results for the same calls
/// (checked by [`conformance`]); writes return only once their events are durable.
pub trait LedgerStore: Send + Sync {
    /// Creates accounts; one result per account.
    fn create_accounts(&self, batch: Vec<NewAccount>) -> Result<Vec<EventResult>, StoreError>;
    /// Creates transfers; one result per transfer (linked chains atomic).
    fn create_transfers(&self, batch: Vec<TransferRequest>) -> Result<Vec<EventResult>, StoreError>;
    /// Freezes, unfreezes or closes an account.
    fn set_account_status(&self, id: &Id, action: StatusAction) -> Result<EventResult, StoreError>;
    /// Expires every hold whose timeout has passed now; returns how many.
    fn expire_due(&self) -> Result<usize, StoreError>;
    /// An account with balances.
    fn account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    /// A transfer by id (failed ones included).
    fn transfer(&self, id: &str) -> Result<Option<Transfer>, StoreError>;
    /// An account's transfers in time order, a page at a time, with "has more".
    fn account_transfers(&self, id: &str, page: Page<'_>) -> Result<(Vec<Transfer>, bool), StoreError>;
    /// An account's balances as of a timestamp.
    fn balance_at(&self, id: &str, at_ns: u64) -> Result<Balances, StoreError>;
    /// A page of the holds still pending that have a timeout, in expiry order, at most `scan_max`:
    /// their ids and timeouts, and the cursor to pass as `after` for the next page (`None` once
    /// there are no more). The risk service rebuilds its review queue from the holds it made
    /// (`puhui_api::risk`).
    fn open_holds(
        &self,
        after: Option<&str>,
        scan_max: usize,
    ) -> Result<(Vec<(Id, u64)>, Option<Id>), StoreError>;
    /// A fresh, time-ordered id.
    fn new_id(&self) -> Id;
}

/// How a reply reaches its caller (a closure, so sync and async callers both fit).
pub type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

enum Command {
    Accounts(Vec<NewAccount>, Reply<Vec<EventResult>>),
    Transfers(Vec<TransferRequest>, Reply<Vec<EventResult>>),
    Status(Id, StatusAction, Reply<EventResult>),
    Expire(Reply<usize>),
    Records(Vec<Record>, Reply<u64>),
    Run(DeferredJob),
    Shutdown,
}

/// What a job run on the committer thread ([`EmbeddedStore::submit_deferred`]) gives it to
/// journal, in this order: records, then (if any) transfers.
pub struct Deferred {
    /// Records to journal first.
    pub records: Vec<Record>,
    /// Answered once the records are durable (or failed), with the first one's sequence.
    pub records_reply: Reply<u64>,
    /// Transfers to apply right after the records, and their reply.
    pub transfers: Option<(Vec<TransferRequest>, Reply<Vec<EventResult>>)>,
}

/// A job the committer runs in its group, in queue order ([`EmbeddedStore::submit_deferred`]). It
/// reads the ledger as of its place in the queue: every command queued before it is applied (risk
/// control reads the payer's balance there).
pub type DeferredJob = Box<dyn FnOnce(&Ledger) -> Deferred + Send>;

/// An application record to journal beside the ledger's events (a risk decision, a label…): same
/// hash chain, same Merkle tree, same durability; the ledger ignores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner's type tag.
    pub record_type: u8,
    /// The owner's encoding (at most [`puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX`] bytes).
    pub payload: Vec<u8>,
}

impl Command {
    fn events(&self) -> usize {
        match self {
            Command::Accounts(b, _) => b.len(),
            Command::Transfers(b, _) => b.len(),
            Command::Records(b, _) => b.len(),
            Command::Run(_) => 2,
            _ => 1,
        }
    }
}

/// Counters of the committer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Frames (group commits) made durable.
    pub frames: AtomicU64,
    /// Journal entries made durable.
    pub entries: AtomicU64,
    /// Sum of write+fdatasync durations, in nanoseconds.
    pub sync_ns_total: AtomicU64,
    /// The longest write+fdatasync so far, in nanoseconds.
    pub sync_ns_max: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Snapshots that failed to write (the journal stays the truth; recovery replays more).
    pub snapshot_errors: AtomicU64,
    /// The longest pause of writes while a snapshot was encoded, in nanoseconds.
    pub snapshot_pause_ns_max: AtomicU64,
    /// Signed checkpoints made.
    pub checkpoints: AtomicU64,
    /// Checkpoints that could not be written to the checkpoint log or the witness file.
    pub checkpoint_errors: AtomicU64,
}

/// What opening a data directory found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// Journal entries replayed.
    pub entries_replayed: u64,
    /// How long recovery took.
    pub recovery: Duration,
    /// A torn tail that was cut (and saved to the named file).
    pub torn_tail_saved_to: Option<PathBuf>,
    /// Journal entries covered by the snapshot recovery started from, if any.
    pub snapshot_entries: Option<u64>,
    /// Why a snapshot that exists was not used (recovery then replayed the whole journal).
    pub snapshot_error: Option<String>,
    /// How long rebuilding the Merkle tree from the journal took (in parallel with recovery), if the
    /// verifiable journal is on.
    pub merkle_load: Option<Duration>,
    /// Why a Merkle tree file that exists was not used (the tree was rebuilt from the whole journal).
    pub merkle_tree_file_error: Option<String>,
}

struct Inner {
    state: RwLock<Ledger>,
    queue: SyncSender<Command>,
    poisoned: AtomicBool,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdGenerator>,
    stats: StoreStats,
    verifiable: Option<transparency::Verifiable>,
    /// Records that ride along with the next group commit, and their payload bytes.
    riders: Mutex<(Vec<Record>, usize)>,
    /// The journal's durable end: where the last synced frame ends ([`EmbeddedStore::position`]).
    durable: Mutex<puhui_journal::JournalPosition>,
    /// Its entry count alone, read without a lock ([`EmbeddedStore::durable_entries`]).
    durable_entries: AtomicU64,
}

/// The embedded store: an in-memory ledger made durable by the journal in a data directory.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
    data_dir: PathBuf,
    report: OpenReport,
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) a data directory with the system clock and default options.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, Arc::new(SystemClock), StoreOptions::default())
    }

    /// Opens a data directory with another clock (tests) and default options.
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, clock, StoreOptions::default())
    }

    /// Opens (or creates) a data directory: loads the snapshot if there is a good one, replays the
    /// journal after it (cutting a torn tail, refusing a damaged journal), then starts the committer.
    pub fn open_with(
        dir: &Path,
        clock: Arc<dyn Clock>,
        options: StoreOptions,
    ) -> Result<EmbeddedStore, StoreError> {
        let io = |what: &str, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
        let lock = lock_dir(dir)?;
        let journal = dir.join(JOURNAL_FILE);
        let started = Instant::now();
        let loader =
            if options.verifiable { Some(transparency::Loader::spawn(dir, &journal)?) } else { None };
        let corrupt = |e: ScanError| match e {
            ScanError::Io(e) => StoreError::Io(e),
            other => StoreError::Corrupt(other.to_string()),
        };
        let (mut snapshot_entries, mut snapshot_error) = (None, None);
        let recovered = match puhui_journal::load_snapshot(dir) {
            Ok(Some((ledger, position))) => match puhui_journal::recover_from(&journal, ledger, position) {
                Ok(r) => {
                    snapshot_entries = Some(position.entries);
                    r
                }
                Err(e) => {
                    snapshot_error = Some(format!("snapshot does not fit the journal: {e}"));
                    puhui_journal::recover(&journal).map_err(corrupt)?
                }
            },
            Ok(None) => puhui_journal::recover(&journal).map_err(corrupt)?,
            Err(e) => {
                snapshot_error = Some(e);
                puhui_journal::recover(&journal).map_err(corrupt)?
            }
        };
        let mut recovered = recovered;
        let have = recovered.ledger.transfers_count();
        if options.transfers_capacity > have {
            recovered.ledger.reserve_transfers(options.transfers_capacity - have);
        }
        // The loader must be done reading before a torn tail is cut below it.
        let loaded = loader.map(transparency::Loader::join).transpose()?;
        let mut torn_tail_saved_to = None;
        if let Some(torn) = &recovered.summary.torn_tail {
            let saved = dir.join(format!("journal.torn-{}", torn.offset));
            save_tail(&journal, torn.offset, &saved).map_err(|e| io("saving torn tail of", e))?;
            torn_tail_saved_to = Some(saved);
        }
        let writer =
            JournalWriter::open(&journal, &recovered.summary).map_err(|e| io("opening journal in", e))?;
        let mut merkle_tree_file_error = None;
        let (verifiable, merkle_thread, merkle_load) = match loaded {
            Some(loaded) => {
                let took = loaded.took;
                merkle_tree_file_error = loaded.file_error.clone();
                let (v, thread) = transparency::start(transparency::StartArgs {
                    dir,
                    journal: &journal,
                    loaded,
                    entries: recovered.summary.entries,
                    options: &options,
                })?;
                (Some(v), Some(thread), Some(took))
            }
            None => (None, None, None),
        };
        let report = OpenReport {
            entries_replayed: recovered.summary.entries - snapshot_entries.unwrap_or(0),
            recovery: started.elapsed(),
            torn_tail_saved_to,
            snapshot_entries,
            snapshot_error,
            merkle_load,
            merkle_tree_file_error,
        };
        let (queue, commands) = mpsc::sync_channel(QUEUE_COMMANDS_MAX);
        let seed = clock.now_ns() ^ (std::process::id() as u64) << 32 ^ (&lock as *const File as u64);
        let inner = Arc::new(Inner {
            state: RwLock::new(recovered.ledger),
            queue,
            poisoned: AtomicBool::new(false),
            clock,
            ids: Mutex::new(IdGenerator::new(seed)),
            stats: StoreStats::default(),
            verifiable,
            riders: Mutex::new((Vec::new(), 0)),
            durable: Mutex::new(writer.position()),
            durable_entries: AtomicU64::new(writer.position().entries),
        });
        if let Some(thread) = merkle_thread {
            transparency::spawn(&inner, thread)?;
        }
        let committer_inner = Arc::clone(&inner);
        let snapshots = Snapshots {
            dir: dir.to_path_buf(),
            every_entries: options.snapshot_every_entries,
            last_entries: snapshot_entries.unwrap_or(0),
            open: None,
            writing: None,
        };
        let committer = std::thread::Builder::new()
            .name("puhui-committer".into())
            .spawn(move || committer_loop(committer_inner, commands, writer, snapshots))
            .map_err(|e| io("starting committer for", e))?;
        Ok(EmbeddedStore {
            inner,
            committer: Mutex::new(Some(committer)),
            data_dir: dir.to_path_buf(),
            report,
            _lock: lock,
        })
    }

    /// The journal's durable end: everything journaled before it is synced. Another owner's state
    /// saved at it (risk control's snapshot) covers exactly the records before it, if no such
    /// record is queued meanwhile.
    pub fn position(&self) -> puhui_journal::JournalPosition {
        *self.inner.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries before the journal's durable end ([`EmbeddedStore::position`]'s `entries`),
    /// read without taking a lock: for a low-priority reader (risk control's checkpointer) that
    /// must not hold up the committer, as it could if the scheduler left it holding that lock.
    pub fn durable_entries(&self) -> u64 {
        self.inner.durable_entries.load(Ordering::Acquire)
    }

    /// What opening found (entries replayed, recovery time, torn tail).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Committer counters.
    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Runs `f` with read access to the ledger (only durable state is ever visible).
    pub fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        let ledger = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        f(&ledger)
    }

    /// Like [`EmbeddedStore::read`], but `None` instead of waiting while the committer holds the
    /// state (during a group commit); async callers then move the read to a blocking thread.
    pub fn try_read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> Option<R> {
        match self.inner.state.try_read() {
            Ok(ledger) => Some(f(&ledger)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(f(&p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Whether the store accepts writes (its committer is running).
    pub fn is_healthy(&self) -> bool {
        let committer_alive = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        committer_alive && !self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Whether a journal write failed (memory may then hold what the journal lacks). Unlike
    /// [`EmbeddedStore::is_healthy`], still false after a clean shutdown.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Refuses writes once a journal write failed (the committer then aborts the process).
    fn check_not_poisoned(&self) -> Result<(), StoreError> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("a journal write failed; restart to recover".into()));
        }
        Ok(())
    }

    fn enqueue(&self, command: Command) -> Result<(), StoreError> {
        self.check_not_poisoned()?;
        match self.inner.queue.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => {
                Err(StoreError::Unavailable("the store is shut down".into()))
            }
        }
    }

    /// Submits transfers without waiting: `reply` runs on the committer thread once they are durable
    /// (keep it short: send on a channel). Errors before queueing are returned directly.
    pub fn submit_transfers(
        &self,
        batch: Vec<TransferRequest>,
        reply: Reply<Vec<EventResult>>,
    ) -> Result<(), StoreError> {
        check_batch(batch.len())?;
        self.enqueue(Command::Transfers(batch, reply))
    }

    /// Queues `job` to run on the committer thread in its turn, with the ledger's write lock held:
    /// what it returns is journaled there and then (records, then transfers), in the same group,
    /// and answered when the group is durable. A job must not wait for anything the committer
    /// provides (it would wait on itself); one refused (the store stopping or poisoned) is dropped
    /// unrun. For work that must be ordered with the journal and costs microseconds: risk control
    /// decides a transfer there and posts it behind its decision record.
    pub fn submit_deferred(&self, job: DeferredJob) -> Result<(), StoreError> {
        self.enqueue(Command::Run(job))
    }

    /// Submits accounts without waiting; see [`EmbeddedStore::submit_transfers`].
    pub fn submit_accounts(
        &self,
        batch: Vec<NewAccount>,
        reply: Reply<Vec<EventResult>>,
    ) -> Result<(), StoreError> {
        check_batch(batch.len())?;
        self.enqueue(Command::Accounts(batch, reply))
    }

    /// Submits a status change without waiting; see [`EmbeddedStore::submit_transfers`].
    pub fn submit_status(
        &self,
        id: Id,
        action: StatusAction,
        reply: Reply<EventResult>,
    ) -> Result<(), StoreError> {
        self.enqueue(Command::Status(id, action, reply))
    }

    /// Submits application records without waiting; `reply` gets the journal sequence of the first
    /// one once all are durable. Records queued by one thread are journaled in the order queued, and
    /// in order with that thread's other submissions (one FIFO queue feeds the committer).
    pub fn submit_records(&self, records: Vec<Record>, reply: Reply<u64>) -> Result<(), StoreError> {
        check_records(&records)?;
        self.enqueue(Command::Records(records, reply))
    }

    /// Journals application records with the next group commit, without a reply and without
    /// waking the committer: they are durable once any command queued after this call is, or
    /// within [`EXPIRY_POLL_MS_MAX`] when the store is idle. For records whose loss in a crash is
    /// harmless (a stored idempotent response: without it a retry runs again), so that they cost
    /// no wake-up and no reply of their own. [`StoreError::Overloaded`] past [`RIDERS_MAX`]
    /// records or [`RIDERS_BYTES_MAX`] bytes waiting.
    pub fn submit_records_riding(&self, records: Vec<Record>) -> Result<(), StoreError> {
        check_records(&records)?;
        self.check_not_poisoned()?;
        let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        let mut riders = self.inner.riders.lock().unwrap_or_else(|p| p.into_inner());
        if riders.0.len() + records.len() > RIDERS_MAX || riders.1 + bytes > RIDERS_BYTES_MAX {
            return Err(StoreError::Overloaded);
        }
        riders.0.extend(records);
        riders.1 += bytes;
        Ok(())
    }

    /// Journals application records and waits until they are durable; returns the first one's
    /// journal sequence.
    pub fn append_records(&self, records: Vec<Record>) -> Result<u64, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_records(
            records,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().map_err(|_| StoreError::Unavailable("the store shut down before answering".into()))?
    }

    fn call<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(make(Box::new(move |r| {
            let _ = tx.send(r);
        })))?;
        rx.recv().map_err(|_| StoreError::Unavailable("the store shut down before answering".into()))?
    }

    /// Stops the committer after it finishes what is queued. Later writes get `Unavailable`.
    pub fn shutdown(&self) {
        let _ = self.inner.queue.send(Command::Shutdown);
        if let Some(handle) = self.committer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
        if let Some(v) = &self.inner.verifiable {
            v.shutdown();
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_batch(len: usize) -> Result<(), StoreError> {
    if len > BATCH_EVENTS_MAX {
        return Err(StoreError::BatchTooLarge { len, max: BATCH_EVENTS_MAX });
    }
    Ok(())
}

impl LedgerStore for EmbeddedStore {
    fn create_accounts(&self, batch: Vec<NewAccount>) -> Result<Vec<EventResult>, StoreError> {
        check_batch(batch.len())?;
        self.call(|reply| Command::Accounts(batch, reply))
    }

    fn create_transfers(&self, batch: Vec<TransferRequest>) -> Result<Vec<EventResult>, StoreError> {
        check_batch(batch.len())?;
        self.call(|reply| Command::Transfers(batch, reply))
    }

    fn set_account_status(&self, id: &Id, action: StatusAction) -> Result<EventResult, StoreError> {
        let id = id.clone();
        self.call(|reply| Command::Status(id, action, reply))
    }

    fn expire_due(&self) -> Result<usize, StoreError> {
        self.call(Command::Expire)
    }

    fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.read(|l| l.account(id)))
    }

    fn transfer(&self, id: &str) -> Result<Option<Transfer>, StoreError> {
        Ok(self.read(|l| l.transfer(id)))
    }

    fn account_transfers(&self, id: &str, page: Page<'_>) -> Result<(Vec<Transfer>, bool), StoreError> {
        Ok(self.read(|l| l.account_transfers(id, page))?)
    }

    fn balance_at(&self, id: &str, at_ns: u64) -> Result<Balances, StoreError> {
        Ok(self.read(|l| l.balance_at(id, at_ns))?)
    }

    fn open_holds(
        &self,
        after: Option<&str>,
        scan_max: usize,
    ) -> Result<(Vec<(Id, u64)>, Option<Id>), StoreError> {
        Ok(self.read(|l| l.open_holds(after, scan_max)))
    }

    fn new_id(&self) -> Id {
        let now_ms = self.inner.clock.now_ns() / 1_000_000;
        self.inner.ids.lock().unwrap_or_else(|p| p.into_inner()).next(now_ms)
    }
}

/// Answers queued with the results they will get once the frame is durable.
enum Answer {
    Events(Reply<Vec<EventResult>>, Vec<EventResult>),
    Event(Reply<EventResult>, EventResult),
    Count(Reply<usize>, usize),
    Seq(Reply<u64>, u64),
}

impl Answer {
    fn send(self, failure: Option<&StoreError>) {
        match (self, failure) {
            (Answer::Events(reply, r), None) => reply(Ok(r)),
            (Answer::Event(reply, r), None) => reply(Ok(r)),
            (Answer::Count(reply, r), None) => reply(Ok(r)),
            (Answer::Seq(reply, r), None) => reply(Ok(r)),
            (Answer::Seq(reply, _), Some(e)) => reply(Err(e.clone())),
            (Answer::Events(reply, _), Some(e)) => reply(Err(e.clone())),
            (Answer::Event(reply, _), Some(e)) => reply(Err(e.clone())),
            (Answer::Count(reply, _), Some(e)) => reply(Err(e.clone())),
        }
    }
}

/// Transfer records encoded into an open snapshot after each group commit: bounds the pause.
pub const SNAPSHOT_STEP_RECORDS: usize = 131_072;

/// The committer's snapshot schedule. A snapshot is encoded a slice at a time after group commits
/// (under the state lock, so each slice briefly delays the next group), finished when it has caught
/// up, and written to disk by a background thread.
struct Snapshots {
    dir: PathBuf,
    every_entries: u64,
    last_entries: u64,
    open: Option<puhui_ledger::SnapshotBuilder>,
    writing: Option<JoinHandle<std::io::Result<()>>>,
}

impl Snapshots {
    /// Called by the committer with the state locked, between groups.
    fn progress(&mut self, inner: &Arc<Inner>, ledger: &mut Ledger, writer: &JournalWriter) {
        if self.open.is_none() {
            let due = self.every_entries > 0 && writer.next_seq() - self.last_entries >= self.every_entries;
            let idle = self.writing.as_ref().is_none_or(|h| h.is_finished());
            if !due || !idle {
                return;
            }
            if let Some(handle) = self.writing.take() {
                record_snapshot(inner, handle.join());
            }
            self.open = Some(ledger.snapshot_begin());
        }
        let started = Instant::now();
        let builder = self.open.as_mut().expect("open snapshot");
        if ledger.snapshot_step(builder, SNAPSHOT_STEP_RECORDS) {
            let builder = self.open.take().expect("open snapshot");
            let chunks = ledger.snapshot_finish(builder);
            self.spawn_write(inner, writer.position(), chunks, true);
        }
        inner.stats.snapshot_pause_ns_max.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn spawn_write(
        &mut self,
        inner: &Arc<Inner>,
        position: puhui_journal::JournalPosition,
        chunks: Vec<Vec<u8>>,
        background: bool,
    ) {
        self.last_entries = position.entries;
        let dir = self.dir.clone();
        let write = move || puhui_journal::snapshot::write_snapshot(&dir, &position, &chunks).map(|_| ());
        if !background {
            record_snapshot(inner, Ok(write()));
            return;
        }
        match std::thread::Builder::new().name("puhui-snapshot".into()).spawn(write) {
            Ok(handle) => self.writing = Some(handle),
            Err(_) => {
                inner.stats.snapshot_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// At shutdown: wait for a background write, then write a final snapshot if anything changed.
    fn finish(&mut self, inner: &Arc<Inner>, ledger: &mut Ledger, writer: &JournalWriter) {
        if let Some(handle) = self.writing.take() {
            record_snapshot(inner, handle.join());
        }
        let builder = match self.open.take() {
            Some(open) => open,
            None if writer.next_seq() != self.last_entries => ledger.snapshot_begin(),
            None => return,
        };
        let chunks = ledger.snapshot_finish(builder);
        self.spawn_write(inner, writer.position(), chunks, false);
    }
}

fn record_snapshot(inner: &Inner, outcome: std::thread::Result<std::io::Result<()>>) {
    match outcome {
        Ok(Ok(())) => inner.stats.snapshots.fetch_add(1, Ordering::Relaxed),
        _ => inner.stats.snapshot_errors.fetch_add(1, Ordering::Relaxed),
    };
}

fn committer_loop(
    inner: Arc<Inner>,
    commands: Receiver<Command>,
    mut writer: JournalWriter,
    mut snapshots: Snapshots,
) {
    let mut group: Vec<Command> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    let mut items = Vec::new();
    let mut shutting_down = false;
    while !shutting_down {
        // Sleep until work arrives or the next hold is due to expire.
        let now = inner.clock.now_ns();
        let next_expiry = inner.state.read().unwrap_or_else(|p| p.into_inner()).next_expiry_ns();
        let wait_ms = match next_expiry {
            Some(at) if at <= now => 0,
            Some(at) => ((at - now) / 1_000_000 + 1).min(EXPIRY_POLL_MS_MAX),
            None => EXPIRY_POLL_MS_MAX,
        };
        match commands.recv_timeout(Duration::from_millis(wait_ms)) {
            Ok(Command::Shutdown) => shutting_down = true,
            Ok(command) => group.push(command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => shutting_down = true,
        }
        let mut events: usize = group.iter().map(Command::events).sum();
        while events < GROUP_EVENTS_MAX && !shutting_down {
            match commands.try_recv() {
                Ok(Command::Shutdown) => shutting_down = true,
                Ok(command) => {
                    events += command.events();
                    group.push(command);
                }
                Err(_) => break,
            }
        }
        let due = next_expiry.is_some_and(|at| at <= inner.clock.now_ns());
        let riders = std::mem::take(&mut *inner.riders.lock().unwrap_or_else(|p| p.into_inner())).0;
        if group.is_empty() && !due && riders.is_empty() {
            if snapshots.open.is_some() {
                // Idle: use the time to move an open snapshot along.
                let mut ledger = inner.state.write().unwrap_or_else(|p| p.into_inner());
                snapshots.progress(&inner, &mut ledger, &writer);
            }
            continue;
        }
        if inner.poisoned.load(Ordering::Acquire) {
            let error = StoreError::Unavailable("a journal write failed; restart to recover".into());
            for command in group.drain(..) {
                refuse(command, &error);
            }
            continue;
        }

        let lock_started = Instant::now();
        let mut ledger = inner.state.write().unwrap_or_else(|p| p.into_inner());
        let apply_started = Instant::now();
        stage_took("lock", lock_started);
        let now = inner.clock.now_ns();
        // Bounded: the rest are due on the next loop (which then does not sleep).
        ledger.expire_due_at_most(now, BATCH_EVENTS_MAX);
        let mut failure: Option<StoreError> = None;
        // Leaf bytes for the merkle thread (a copy of each entry as it is encoded).
        let mut leaves = inner.verifiable.as_ref().map(|v| v.buffer());
        for command in group.drain(..) {
            let answer = match command {
                Command::Accounts(batch, reply) => Answer::Events(reply, ledger.create_accounts(batch, now)),
                Command::Transfers(batch, reply) => {
                    Answer::Events(reply, ledger.create_transfers(batch, now))
                }
                Command::Status(id, action, reply) => {
                    Answer::Event(reply, ledger.set_account_status(&id, action, now))
                }
                Command::Expire(reply) => Answer::Count(reply, ledger.expire_due(now)),
                Command::Records(records, reply) => {
                    // The ledger's pending log goes first so that entries keep the order of commands.
                    flush(&mut ledger, &mut writer, leaves.as_mut(), &mut items);
                    let first = writer.next_seq();
                    append_records(&mut writer, leaves.as_mut(), &records, now);
                    Answer::Seq(reply, first)
                }
                Command::Run(job) => {
                    let deferred = job(&ledger);
                    flush(&mut ledger, &mut writer, leaves.as_mut(), &mut items);
                    let first = writer.next_seq();
                    append_records(&mut writer, leaves.as_mut(), &deferred.records, now);
                    match deferred.transfers {
                        None => Answer::Seq(deferred.records_reply, first),
                        Some((batch, reply)) => {
                            answers.push(Answer::Seq(deferred.records_reply, first));
                            flush(&mut ledger, &mut writer, leaves.as_mut(), &mut items);
                            Answer::Events(reply, ledger.create_transfers(batch, now))
                        }
                    }
                }
                Command::Shutdown => unreachable!("shutdown is never queued in a group"),
            };
            answers.push(answer);
            flush(&mut ledger, &mut writer, leaves.as_mut(), &mut items);
            if writer.frame_bytes() >= FRAME_BYTES_SOFT_MAX && failure.is_none() {
                failure = sync(&inner, &mut writer).err();
            }
        }
        // Riders last (at most `RIDERS_BYTES_MAX`): each was submitted after the commands it
        // follows were answered, so the journal's order is kept.
        append_records(&mut writer, leaves.as_mut(), &riders, now);
        flush(&mut ledger, &mut writer, leaves.as_mut(), &mut items);
        stage_took("apply", apply_started);
        let sync_started = Instant::now();
        if failure.is_none() {
            failure = sync(&inner, &mut writer).err();
        }
        stage_took("sync", sync_started);
        let handoff_started = Instant::now();
        if let Some(e) = &failure {
            // Memory is now ahead of the disk and readers could see events that are not durable.
            // The only safe answer to a failed write or fsync is to stop and recover from the
            // journal at restart (as PostgreSQL does since "fsyncgate").
            eprintln!(
                "puhui: FATAL: journal write failed ({e}); aborting so that recovery starts from the journal"
            );
            inner.poisoned.store(true, Ordering::Release);
            std::process::abort();
        } else {
            if let (Some(v), Some(mut leaves)) = (&inner.verifiable, leaves) {
                // Durable now: hand the leaves over before readers can see the group.
                if !leaves.is_empty() {
                    leaves.set_end(writer.position());
                    let _ = v.sender().send(transparency::ToMerkle::Entries(leaves));
                }
            }
            snapshots.progress(&inner, &mut ledger, &writer);
        }
        drop(ledger);
        stage_took("handoff", handoff_started);
        let reply_started = Instant::now();
        for answer in answers.drain(..) {
            answer.send(failure.as_ref());
        }
        stage_took("reply", reply_started);
    }
    // A final snapshot makes the next start fast.
    if !inner.poisoned.load(Ordering::Acquire) {
        let mut ledger = inner.state.write().unwrap_or_else(|p| p.into_inner());
        snapshots.finish(&inner, &mut ledger, &writer);
    }
    // Refuse whatever is still queued.
    let error = StoreError::Unavailable("the store is shut down".into());
    while let Ok(command) = commands.try_recv() {
        refuse(command, &error);
    }
}

/// Appends application records as entries stamped `now_ns`, in order.
fn append_records(
    writer: &mut JournalWriter,
    mut leaves: Option<&mut transparency::PendingLeaves>,
    records: &[Record],
    now_ns: u64,
) {
    for record in records {
        append_entry(writer, leaves.as_deref_mut(), |buf| {
            codec::encode_record(record.record_type, now_ns, &record.payload, buf)
        });
    }
}

/// Refuses a set of application records that is too large in count or in any one payload.
pub fn check_records(records: &[Record]) -> Result<(), StoreError> {
    check_batch(records.len())?;
    let max_bytes = puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX;
    if let Some(r) = records.iter().find(|r| r.payload.len() > max_bytes) {
        return Err(StoreError::RecordTooLarge { len_bytes: r.payload.len(), max_bytes });
    }
    Ok(())
}

/// Moves the ledger's pending log into the journal (and the Merkle leaf buffer), in order.
fn flush(
    ledger: &mut Ledger,
    writer: &mut JournalWriter,
    mut leaves: Option<&mut transparency::PendingLeaves>,
    items: &mut Vec<puhui_ledger::LogItem>,
) {
    items.extend(ledger.drain_log());
    for item in items.drain(..) {
        append_entry(writer, leaves.as_deref_mut(), |buf| codec::encode_log_item(ledger, item, buf));
    }
}

/// Appends one entry to the open frame, and notes its chained hash in the Merkle leaf buffer if
/// there is one.
fn append_entry(
    writer: &mut JournalWriter,
    leaves: Option<&mut transparency::PendingLeaves>,
    encode: impl FnOnce(&mut Vec<u8>) -> u8,
) {
    match leaves {
        None => {
            writer.append(encode);
        }
        Some(leaves) => {
            let offset = writer.len_bytes()
                + writer.frame_bytes().max(puhui_journal::frame::FRAME_HEADER_BYTES) as u64;
            let mut timestamp_ns = 0;
            let seq = writer.append(|buf| {
                let start = buf.len();
                let kind = encode(buf);
                // Every body starts with the ledger timestamp (for the Merkle entry index).
                timestamp_ns = puhui_verifiable::body_timestamp(&buf[start..]).unwrap_or(0);
                kind
            });
            // The tree's leaf value is the entry's chained hash: no copy of the body.
            leaves.push(seq, writer.last_hash(), timestamp_ns, offset);
        }
    }
}

fn refuse(command: Command, error: &StoreError) {
    match command {
        Command::Accounts(_, reply) | Command::Transfers(_, reply) => reply(Err(error.clone())),
        Command::Status(_, _, reply) => reply(Err(error.clone())),
        Command::Expire(reply) => reply(Err(error.clone())),
        Command::Records(_, reply) => reply(Err(error.clone())),
        // Not run: nothing is decided for a group that is not written (its requester sees the
        // job's answer channel close).
        Command::Run(_) => {}
        Command::Shutdown => {}
    }
}

/// Records how long one stage of a group commit took (`puhui_group_commit_stage_seconds{stage}`:
/// `lock` waiting for the ledger's write lock, `apply` deciding and encoding, `sync` the write and
/// `fdatasync`, `handoff` to the merkle thread and the snapshot step, `reply` answering callers),
/// so a slow group shows where its time went.
fn stage_took(stage: &'static str, started: Instant) {
    metrics::histogram!("puhui_group_commit_stage_seconds", "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}

fn sync(inner: &Inner, writer: &mut JournalWriter) -> Result<(), StoreError> {
    let entries_before = writer.next_seq();
    let bytes = writer.frame_bytes();
    if bytes == 0 {
        return Ok(());
    }
    let started = Instant::now();
    writer.commit().map_err(|e| StoreError::Io(format!("journal write: {e}")))?;
    let took = started.elapsed().as_nanos() as u64;
    metrics::histogram!("puhui_journal_sync_seconds").record(took as f64 / 1e9);
    metrics::histogram!("puhui_journal_frame_bytes").record(bytes as f64);
    let stats = &inner.stats;
    stats.frames.fetch_add(1, Ordering::Relaxed);
    stats.entries.store(entries_before, Ordering::Relaxed);
    stats.sync_ns_total.fetch_add(took, Ordering::Relaxed);
    stats.sync_ns_max.fetch_max(took, Ordering::Relaxed);
    let position = writer.position();
    *inner.durable.lock().unwrap_or_else(|p| p.into_inner()) = position;
    inner.durable_entries.store(position.entries, Ordering::Release);
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Io(format!("opening {}: {e}", path.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StoreError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

fn save_tail(journal: &Path, offset: u64, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(journal)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    std::fs::write(to, tail)?;
    File::open(to)?.sync_all()
}
