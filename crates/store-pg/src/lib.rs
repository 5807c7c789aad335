//! # puhui-store-pg: the ledger on PostgreSQL, for several `puhui` nodes on one database
//!
//! [`PgStore`] implements [`puhui_store::LedgerStore`] with exactly the embedded store's semantics and
//! result codes: every decision is made by the same domain code ([`puhui_ledger::Ledger`]), run on a
//! transient ledger that holds only the rows a group of batches touches
//! ([`Ledger::from_working_set`]). It passes the same [`puhui_store::conformance`] suite.
//!
//! Key decision: **row locks in one global order, then the journal head.** A group of batches is one
//! transaction (READ COMMITTED) that
//! 1. loads the transfers it names (idempotency, pendings to post or void, due holds) — no lock,
//!    because a recorded transfer never changes except an open hold's status;
//! 2. locks the accounts it touches `ORDER BY id FOR UPDATE`, then the open holds it may resolve
//!    `ORDER BY id FOR UPDATE`;
//! 3. locks the single journal-head row (`FOR UPDATE`), the last lock every writer takes;
//! 4. if the head moved since step 1, re-checks that no id it found missing has appeared (else it
//!    rolls back and retries: bounded, since ids never disappear);
//! 5. decides with the domain code, with timestamps continuing from the head's clock;
//! 6. writes the changed rows, the balance history, the journal entries (the embedded journal's
//!    encoding and BLAKE3 chain, continuing from the head's hash) and the head; COMMIT.
//!
//! Why it cannot deadlock: every writer takes its locks in the same order — accounts by id, holds by
//! id, the head — and a transaction waits only for locks later in that order than those it holds,
//! so a cycle of waits is impossible. Readers take no locks.
//!
//! Why it cannot double-spend: the rows a decision reads are locked (accounts, open holds) or
//! immutable (recorded transfers), and an id found missing is re-checked under the head lock, so at
//! decision time the working set equals the committed state; every writer holds the head lock from
//! its decision to its COMMIT, so decisions are serial: a second spend of the same money sees the
//! balances after the first. The journal order is the commit order, so replaying the journal
//! through the domain code reproduces every result (`puhui journal verify --store postgres://…`).
//!
//! The price: one commit at a time per database (the head is the serialisation point, as the
//! committer thread is for the embedded store). Each node therefore groups concurrent callers'
//! batches into one transaction ([`PgOptions::committers`] threads take everything queued), and the
//! loading and locking of one group overlaps the commit of another.
#![deny(missing_docs)]

pub mod control;
pub mod hammer;
pub mod locks;
pub mod outbox;
mod rows;
pub mod schema;
pub mod testing;
mod txn;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::{Client, NoTls};
use puhui_ledger::{
    Account, Balances, EventResult, Id, IdGenerator, NewAccount, Page, StatusAction, Transfer,
    TransferRequest, BATCH_EVENTS_MAX,
};
use puhui_store::{Clock, LedgerStore, Record, Reply, StoreError, SystemClock};

pub use locks::{
    DecisionLock, Fence, DECISION_LOCK_BUCKETS, DECISION_LOCK_REQUESTS_MAX, DECISION_LOCK_WAIT_MS,
};
pub use outbox::{JournalRow, PgLease};
/// The PostgreSQL client crate, for callers of [`PgStore::with_connection`].
pub use postgres;
pub use txn::TxStats;
use txn::{Done, TxError, Work};

/// Most writes waiting for a committer; beyond it callers get [`StoreError::Overloaded`].
pub const QUEUE_COMMANDS_MAX: usize = 1_024;
/// Most events one group transaction decides (a single batch larger than the rest still goes alone).
pub const GROUP_EVENTS_MAX: usize = 2 * BATCH_EVENTS_MAX;
/// Most attempts of one group (retries after a stale working set, which needs a concurrent commit
/// creating an id the group named; each retry has strictly fewer missing ids).
pub const GROUP_ATTEMPTS_MAX: usize = 64;
/// Most expiry rounds one `expire_due` call runs (each expires at most [`BATCH_EVENTS_MAX`] holds).
pub const EXPIRE_ROUNDS_MAX: usize = 1_024;
/// Most connections for reads per store.
pub const READ_CONNECTIONS_MAX: usize = 64;
/// Most committer threads (each holds one connection).
pub const COMMITTERS_MAX: usize = 16;
/// Most record submissions waiting for the records committer.
pub const QUEUE_RECORDS_MAX: usize = 4_096;
/// Longest [`PgStore::exclusive`] waits for its lock.
pub const EXCLUSIVE_WAIT_MS: u64 = 10_000;
/// Journal rows read per query when scanning records.
const SCAN_CHUNK_ROWS: i64 = 10_000;

/// Tunables of the PostgreSQL store.
#[derive(Clone)]
pub struct PgOptions {
    /// Schema to use (created if missing); `None`: the connection's default `search_path`. Tests
    /// use one fresh schema each so that they run in parallel.
    pub schema: Option<String>,
    /// Committer threads, each with its own connection: one groups while another commits.
    pub committers: usize,
    /// Connections for reads.
    pub read_connections: usize,
    /// Expire due holds every this many milliseconds in the background (0: only on `expire_due`
    /// and for the accounts a batch touches).
    pub expire_every_ms: u64,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            committers: 2,
            read_connections: 8,
            expire_every_ms: 100,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("schema", &self.schema)
            .field("committers", &self.committers)
            .field("read_connections", &self.read_connections)
            .field("expire_every_ms", &self.expire_every_ms)
            .finish()
    }
}

/// Opens a connection with the options' schema as the search path.
pub fn connect(url: &str, schema: Option<&str>) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls)
        .map_err(|e| StoreError::Unavailable(format!("connecting to {}: {e}", redact(url))))?;
    if let Some(schema) = schema {
        if !schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || schema.is_empty() {
            return Err(StoreError::Io(format!("schema name {schema:?} must be [A-Za-z0-9_]+")));
        }
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"))
            .map_err(|e| StoreError::Io(format!("selecting schema {schema}: {}", describe(&e))))?;
    }
    Ok(client)
}

/// Splits a store URL into the connection URL and the schema named by a `schema=NAME` query
/// parameter (ours, not libpq's: `postgres://postgres@127.0.0.1/test?schema=ledger1`).
pub fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_string());
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
    (url, schema)
}

/// A connection URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A PostgreSQL error with the server's code, message and detail (its `Display` says only
/// "db error" for server errors).
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// Applies the schema migrations (what [`PgStore::open`] does first). Returns how many ran.
pub fn migrate(url: &str, schema: Option<&str>) -> Result<usize, StoreError> {
    let mut client = connect(url, schema)?;
    schema::migrate(&mut client).map_err(|e| StoreError::Io(format!("migrating: {}", describe(&e))))
}

struct Job {
    work: Work,
    reply: Box<dyn FnOnce(Result<Done, StoreError>) + Send>,
}

struct ReadPool {
    url: String,
    schema: Option<String>,
    idle: Mutex<(Vec<Client>, usize)>,
    freed: Condvar,
    max: usize,
}

impl ReadPool {
    /// A pool of at most `max` connections, opened on demand.
    fn new(url: &str, schema: Option<&str>, max: usize) -> ReadPool {
        ReadPool {
            url: url.to_string(),
            schema: schema.map(str::to_string),
            idle: Mutex::new((Vec::new(), 0)),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut client = {
            let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(c) = guard.0.pop() {
                    break Some(c);
                }
                if guard.1 < self.max {
                    guard.1 += 1;
                    break None;
                }
                guard = self.freed.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
        };
        if client.is_none() {
            match connect(&self.url, self.schema.as_deref()) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
                    self.freed.notify_one();
                    return Err(e);
                }
            }
        }
        let mut client = client.expect("connected");
        let out = f(&mut client);
        let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if client.is_closed() {
            guard.1 -= 1;
        } else {
            guard.0.push(client);
        }
        drop(guard);
        self.freed.notify_one();
        out
    }
}

impl Drop for ReadPool {
    /// Closes the idle connections on a thread of its own: closing a `postgres::Client` blocks on
    /// its own runtime, which panics on a thread that drives async tasks (the last holder of the
    /// store may be an async task of the API).
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.idle.get_mut().unwrap_or_else(|p| p.into_inner()).0);
        if idle.is_empty() {
            return;
        }
        std::thread::scope(|scope| {
            scope.spawn(move || drop(idle));
        });
    }
}

struct Inner {
    url: String,
    options: PgOptions,
    stats: TxStats,
    reads: ReadPool,
    /// The decision lock thread ([`PgStore::lock_decisions`]), started on first use.
    decision_locks: std::sync::OnceLock<locks::Locker>,
    ids: Mutex<IdGenerator>,
    stopping: AtomicBool,
}

/// The ledger on PostgreSQL. Several instances (threads, processes, machines) may share one
/// database; see the crate docs for the isolation approach.
pub struct PgStore {
    inner: Arc<Inner>,
    queue: Mutex<Option<SyncSender<Job>>>,
    /// Application records go to one dedicated committer (its own connection), so that records
    /// queued by one thread are journaled in the order queued.
    records: Mutex<Option<SyncSender<Job>>>,
    committers: Mutex<Vec<JoinHandle<()>>>,
}

impl PgStore {
    /// Connects to `url`, applies the migrations and starts the committers (default options).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_with(url, PgOptions::default())
    }

    /// Like [`PgStore::open`] with options.
    pub fn open_with(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let committers = options.committers.clamp(1, COMMITTERS_MAX);
        let read_max = options.read_connections.clamp(1, READ_CONNECTIONS_MAX);
        // Connect every committer first: a bad URL fails here, not on the first write.
        let mut first = connect(url, options.schema.as_deref())?;
        schema::migrate(&mut first).map_err(|e| StoreError::Io(format!("migrating: {}", describe(&e))))?;
        let mut clients = vec![first];
        for _ in 1..committers {
            clients.push(connect(url, options.schema.as_deref())?);
        }
        let seed = options.clock.now_ns() ^ (std::process::id() as u64) << 32 ^ (&clients as *const _ as u64);
        let inner = Arc::new(Inner {
            url: url.to_string(),
            reads: ReadPool::new(url, options.schema.as_deref(), read_max),
            decision_locks: std::sync::OnceLock::new(),
            options,
            stats: TxStats::default(),
            ids: Mutex::new(IdGenerator::new(seed)),
            stopping: AtomicBool::new(false),
        });
        let (queue, jobs) = mpsc::sync_channel::<Job>(QUEUE_COMMANDS_MAX);
        let jobs = Arc::new(Mutex::new(jobs));
        let mut handles = Vec::with_capacity(committers);
        for (n, client) in clients.into_iter().enumerate() {
            let (inner, jobs) = (Arc::clone(&inner), Arc::clone(&jobs));
            let handle = std::thread::Builder::new()
                .name(format!("puhui-pg-commit-{n}"))
                .spawn(move || committer_loop(inner, jobs, client, n == 0))
                .map_err(|e| StoreError::Io(format!("starting a committer thread: {e}")))?;
            handles.push(handle);
        }
        let (records, record_jobs) = mpsc::sync_channel::<Job>(QUEUE_RECORDS_MAX);
        let record_client = connect(url, inner.options.schema.as_deref())?;
        let record_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("puhui-pg-records".into())
            .spawn(move || {
                committer_loop(record_inner, Arc::new(Mutex::new(record_jobs)), record_client, false)
            })
            .map_err(|e| StoreError::Io(format!("starting the records committer thread: {e}")))?;
        handles.push(handle);
        Ok(PgStore {
            inner,
            queue: Mutex::new(Some(queue)),
            records: Mutex::new(Some(records)),
            committers: Mutex::new(handles),
        })
    }

    /// Counters of the committers (commits, retries, deadlocks seen).
    pub fn stats(&self) -> &TxStats {
        &self.inner.stats
    }

    /// The connection URL (without password) this store uses.
    pub fn url(&self) -> String {
        redact(&self.inner.url)
    }

    fn submit(&self, work: Work, reply: Box<dyn FnOnce(Result<Done, StoreError>) + Send>) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(queue) = queue else {
            reply(Err(StoreError::Unavailable("the store is shut down".into())));
            return;
        };
        match queue.try_send(Job { work, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => (job.reply)(Err(StoreError::Overloaded)),
            Err(TrySendError::Disconnected(job)) => {
                (job.reply)(Err(StoreError::Unavailable("the store is shut down".into())))
            }
        }
    }

    fn call(&self, work: Work) -> Result<Done, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            work,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| StoreError::Unavailable("the store shut down before answering".into()))?
    }

    /// Queues a batch of transfers; `reply` gets the results once committed (for async callers,
    /// like `EmbeddedStore::submit_transfers`).
    pub fn submit_transfers(&self, batch: Vec<TransferRequest>, reply: Reply<Vec<EventResult>>) {
        self.submit_transfers_fenced(batch, None, reply)
    }

    /// [`PgStore::submit_transfers`] for transfers whose ids are locked across nodes without a
    /// decision to record: with `Some(fence)` ([`DecisionLock::fence`]) they are posted only while
    /// the lock session still holds the fence's buckets, and refused with
    /// [`StoreError::Unavailable`] (nothing written) otherwise, so that a node that took the ids
    /// from a lost session cannot decline one that is posted here meanwhile.
    pub fn submit_transfers_fenced(
        &self,
        batch: Vec<TransferRequest>,
        fence: Option<Fence>,
        reply: Reply<Vec<EventResult>>,
    ) {
        if let Err(e) = check_batch(batch.len()) {
            return reply(Err(e));
        }
        self.submit(Work::Transfers(batch, fence), events_reply(reply));
    }

    /// Queues a batch of accounts; `reply` gets the results once committed.
    pub fn submit_accounts(&self, batch: Vec<NewAccount>, reply: Reply<Vec<EventResult>>) {
        if let Err(e) = check_batch(batch.len()) {
            return reply(Err(e));
        }
        self.submit(Work::Accounts(batch), events_reply(reply));
    }

    /// Queues a status change; `reply` gets the result once committed.
    pub fn submit_status(&self, id: Id, action: StatusAction, reply: Reply<EventResult>) {
        self.submit(
            Work::Status(id, action),
            Box::new(move |r| {
                reply(r.and_then(|d| match d {
                    Done::Event(e) => Ok(e),
                    other => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
                }))
            }),
        );
    }

    /// Queues application records (risk decisions, labels…); `reply` gets the journal sequence of
    /// the first one once committed. Records are journaled in the same SQL journal and hash chain
    /// as the ledger's events, by one dedicated committer: records queued by one thread are
    /// journaled in the order queued (but not in order with that thread's ledger writes, which
    /// other committers run: wait for a record's reply before a write that must follow it).
    pub fn submit_records(&self, records: Vec<Record>, reply: Reply<u64>) -> Result<(), StoreError> {
        self.submit_records_fenced(records, None, reply)
    }

    /// [`PgStore::submit_records`] for records written under decision locks: with `Some(fence)`
    /// ([`DecisionLock::fence`]) they are committed only while the lock session still holds the
    /// fence's buckets, and refused with [`StoreError::Unavailable`] (nothing written) otherwise.
    pub fn submit_records_fenced(
        &self,
        records: Vec<Record>,
        fence: Option<Fence>,
        reply: Reply<u64>,
    ) -> Result<(), StoreError> {
        check_batch(records.len())?;
        let max_bytes = puhui_journal::codec::RECORD_PAYLOAD_BYTES_MAX;
        if let Some(r) = records.iter().find(|r| r.payload.len() > max_bytes) {
            return Err(StoreError::RecordTooLarge { len_bytes: r.payload.len(), max_bytes });
        }
        if records.is_empty() {
            return Err(StoreError::Io("no records to journal".into()));
        }
        // A full queue is an error returned here (the reply is dropped uncalled), as in the
        // embedded store: a caller must know synchronously that nothing was queued.
        let queue = self.records.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let queue = queue.ok_or_else(|| StoreError::Unavailable("the store is shut down".into()))?;
        let reply: Box<dyn FnOnce(Result<Done, StoreError>) + Send> = Box::new(move |r| {
            reply(r.and_then(|d| {
                match d {
                    Done::Seq(seq) => Ok(seq),
                    Done::Fenced => Err(StoreError::Unavailable(
                        "the decision's lock across nodes was lost with its PostgreSQL session before its \
                     record was committed; nothing was written, retry"
                            .into(),
                    )),
                    other => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
                }
            }))
        });
        match queue.try_send(Job { work: Work::Records(records, fence), reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => {
                Err(StoreError::Unavailable("the store is shut down".into()))
            }
        }
    }

    /// Journals application records and waits until they are committed; returns the first one's
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

    /// Calls `on_record(seq, record_type, timestamp_ns, payload)` for every application record in
    /// the SQL journal, in sequence order, from one consistent snapshot (other entries are skipped
    /// undecoded). Returns how many records were read. The chain is not re-checked here: that is
    /// `puhui journal verify --store`.
    pub fn scan_records(
        &self,
        on_record: impl FnMut(u64, u8, u64, &[u8]) -> Result<(), String>,
    ) -> Result<u64, String> {
        self.scan_records_from(0, u64::MAX, on_record)
    }

    /// Like [`PgStore::scan_records`] from journal sequence `from_seq` on, for at most
    /// `records_max` records (a follower reading what other nodes journaled since it last looked;
    /// sequences commit in order, so nothing below the last one read can appear later).
    pub fn scan_records_from(
        &self,
        from_seq: u64,
        records_max: u64,
        mut on_record: impl FnMut(u64, u8, u64, &[u8]) -> Result<(), String>,
    ) -> Result<u64, String> {
        let from = i64::try_from(from_seq).map_err(|_| format!("sequence {from_seq} is out of range"))?;
        if from_seq > 0 {
            // A follower's short look: a pooled connection, no snapshot needed (one query per chunk,
            // and rows never change once committed).
            return self
                .inner
                .reads
                .with(|client| scan_chunks(client, from, records_max, &mut on_record).map_err(StoreError::Io))
                .map_err(|e| e.to_string());
        }
        let mut client =
            connect(&self.inner.url, self.inner.options.schema.as_deref()).map_err(|e| e.to_string())?;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| format!("starting a read: {}", describe(&e)))?;
        let count = scan_chunks(&mut tx, 0, records_max, &mut on_record)?;
        tx.commit().map_err(|e| format!("ending the read: {}", describe(&e)))?;
        Ok(count)
    }

    /// Runs `f` while holding the database-wide advisory lock `key` (transaction-scoped, on a
    /// pooled connection, waiting at most [`EXCLUSIVE_WAIT_MS`] for it): changes that must be
    /// linearizable across nodes (risk-control rulesets and lists) run one at a time.
    pub fn exclusive<T>(&self, key: i64, f: impl FnOnce() -> T) -> Result<T, StoreError> {
        let io = |e: postgres::Error| StoreError::Io(describe(&e));
        self.inner.reads.with(|client| {
            let mut tx = client.transaction().map_err(io)?;
            tx.batch_execute(&format!("SET LOCAL lock_timeout = '{EXCLUSIVE_WAIT_MS}ms'")).map_err(io)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key]).map_err(|e| {
                StoreError::Unavailable(format!("waiting for another node's change: {}", describe(&e)))
            })?;
            let out = f();
            tx.commit().map_err(io)?;
            Ok(out)
        })
    }

    /// Locks, across nodes, the decision ids hashed to `keys` (their buckets, see [`locks`]):
    /// `reply` gets the guard (on the lock thread; keep it short) once this node holds them all,
    /// or `Unavailable` after [`DECISION_LOCK_WAIT_MS`] of another node holding one. Refused at
    /// once (`Overloaded`) with [`DECISION_LOCK_REQUESTS_MAX`] requests waiting or holding.
    pub fn lock_decisions(
        &self,
        keys: impl IntoIterator<Item = u64>,
        reply: impl FnOnce(Result<DecisionLock, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let locker = match self.inner.decision_locks.get() {
            Some(locker) => locker,
            None => {
                let started = locks::Locker::start(&self.inner.url, self.inner.options.schema.as_deref())?;
                // Two first callers at once: one thread is kept, the other ends with its queue.
                let _ = self.inner.decision_locks.set(started);
                self.inner.decision_locks.get().expect("set above")
            }
        };
        locker.lock(keys, Box::new(reply))
    }

    /// Whether the store accepts writes (it has not been shut down).
    pub fn is_healthy(&self) -> bool {
        !self.inner.stopping.load(Ordering::Acquire)
    }

    /// Stops the committers after what is queued. Later writes get `Unavailable`.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.records.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handles = std::mem::take(&mut *self.committers.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }

    fn read<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.reads.with(f)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn events_reply(reply: Reply<Vec<EventResult>>) -> Box<dyn FnOnce(Result<Done, StoreError>) + Send> {
    Box::new(move |r| {
        reply(r.and_then(|d| {
            match d {
                Done::Events(e) => Ok(e),
                Done::Fenced => Err(StoreError::Unavailable(
                    "the transfer's lock across nodes was lost with its PostgreSQL session before it was \
                 posted; it was not posted, retry"
                        .into(),
                )),
                other => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
            }
        }))
    })
}

fn check_batch(len: usize) -> Result<(), StoreError> {
    if len > BATCH_EVENTS_MAX {
        return Err(StoreError::BatchTooLarge { len, max: BATCH_EVENTS_MAX });
    }
    Ok(())
}

fn committer_loop(inner: Arc<Inner>, jobs: Arc<Mutex<Receiver<Job>>>, mut client: Client, expirer: bool) {
    let poll = match inner.options.expire_every_ms {
        0 => Duration::from_millis(500),
        ms => Duration::from_millis(ms),
    };
    let mut next_expiry_check = std::time::Instant::now() + poll;
    loop {
        let mut group: Vec<Job> = Vec::new();
        {
            let queue = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match queue.recv_timeout(poll) {
                Ok(job) => group.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let mut events: usize = group.iter().map(|j| j.work.events()).sum();
            while !group.is_empty() && events < GROUP_EVENTS_MAX {
                match queue.try_recv() {
                    Ok(job) => {
                        events += job.work.events();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        if expirer && inner.options.expire_every_ms > 0 && std::time::Instant::now() >= next_expiry_check {
            next_expiry_check = std::time::Instant::now() + poll;
            if !inner.stopping.load(Ordering::Acquire) {
                // Background expiry: errors are retried on the next tick.
                let _ = run_group(&inner, &mut client, &[&Work::Expire]);
            }
        }
        if group.is_empty() {
            continue;
        }
        let works: Vec<&Work> = group.iter().map(|j| &j.work).collect();
        match run_group(&inner, &mut client, &works) {
            Ok(done) => {
                drop(works);
                for (job, done) in group.into_iter().zip(done) {
                    (job.reply)(Ok(done));
                }
            }
            Err(e) if group.len() > 1 => {
                // One work may be the cause: run each alone so only it fails.
                let _ = e;
                drop(works);
                for job in group {
                    let outcome = run_group(&inner, &mut client, &[&job.work]);
                    (job.reply)(outcome.map(|mut d| d.remove(0)));
                }
            }
            Err(e) => {
                drop(works);
                for job in group {
                    (job.reply)(Err(e.clone()));
                }
            }
        }
    }
}

fn run_group(inner: &Inner, client: &mut Client, works: &[&Work]) -> Result<Vec<Done>, StoreError> {
    let mut last = StoreError::Unavailable("no attempt".into());
    for _attempt in 0..GROUP_ATTEMPTS_MAX {
        if client.is_closed() {
            *client = connect(&inner.url, inner.options.schema.as_deref())?;
        }
        let now_ns = inner.options.clock.now_ns();
        match txn::execute(client, works, now_ns, &inner.stats) {
            Ok(done) => return Ok(done),
            Err(TxError::Retry(why)) => last = StoreError::Unavailable(format!("retried too often: {why}")),
            Err(TxError::Fatal(e)) => return Err(e),
            Err(TxError::Connection(e)) => {
                // The next attempt reconnects. Unknown outcome only if COMMIT was in flight: the
                // caller retries with the same ids and gets `exists` if it had committed.
                return Err(StoreError::Unavailable(format!("database connection failed: {e}")));
            }
        }
    }
    Err(last)
}

/// Every page query: an account's history rows joined with their transfers.
const PAGE_JOIN: &str = "FROM puhui_account_history h JOIN puhui_transfers t ON t.id = h.transfer_id \
     WHERE h.account_id = $1 AND NOT h.expiry";

fn io(what: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{what}: {}", describe(&e)))
}

fn account_exists(client: &mut Client, id: &str) -> Result<bool, StoreError> {
    Ok(client
        .query_opt("SELECT 1 FROM puhui_accounts WHERE id = $1", &[&id])
        .map_err(io("reading"))?
        .is_some())
}

impl LedgerStore for PgStore {
    fn create_accounts(&self, batch: Vec<NewAccount>) -> Result<Vec<EventResult>, StoreError> {
        check_batch(batch.len())?;
        match self.call(Work::Accounts(batch))? {
            Done::Events(e) => Ok(e),
            other => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
        }
    }

    fn create_transfers(&self, batch: Vec<TransferRequest>) -> Result<Vec<EventResult>, StoreError> {
        check_batch(batch.len())?;
        match self.call(Work::Transfers(batch, None))? {
            Done::Events(e) => Ok(e),
            other => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
        }
    }

    fn set_account_status(&self, id: &Id, action: StatusAction) -> Result<EventResult, StoreError> {
        match self.call(Work::Status(id.clone(), action))? {
            Done::Event(e) => Ok(e),
            other => Err(StoreError::Io(format!("unexpected answer {other:?}"))),
        }
    }

    fn expire_due(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        for _round in 0..EXPIRE_ROUNDS_MAX {
            match self.call(Work::Expire)? {
                Done::Count(0) => break,
                Done::Count(n) => total += n,
                other => return Err(StoreError::Io(format!("unexpected answer {other:?}"))),
            }
        }
        Ok(total)
    }

    fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.read(|c| {
            let sql = format!("SELECT {} FROM puhui_accounts WHERE id = $1", rows::ACCOUNT_COLUMNS);
            c.query_opt(&sql, &[&id])
                .map_err(io("reading an account"))?
                .map(|r| rows::account(&r))
                .transpose()
        })
    }

    fn transfer(&self, id: &str) -> Result<Option<Transfer>, StoreError> {
        self.read(|c| {
            let sql = format!("SELECT {} FROM puhui_transfers WHERE id = $1", rows::TRANSFER_COLUMNS);
            c.query_opt(&sql, &[&id])
                .map_err(io("reading a transfer"))?
                .map(|r| rows::transfer(&r))
                .transpose()
        })
    }

    fn open_holds(
        &self,
        after: Option<&str>,
        scan_max: usize,
    ) -> Result<(Vec<(Id, u64)>, Option<Id>), StoreError> {
        // `scan_max + 1` rows are read to see whether there is more; ordered by (expiry, id), the
        // embedded store's order up to ties (any order, as long as pages follow it, will do). The
        // cursor's place is read first, so that the page is a range of the open-holds index
        // (`expires_at_ns >= $1`), not a scan from its start for every page.
        let limit = scan_max.clamp(1, (i64::MAX - 1) as usize) as i64 + 1;
        let rows = self.read(|c| {
            let from: Option<(i64, String)> = match after {
                None => None,
                Some(after) => c
                    .query_opt(
                        "SELECT expires_at_ns, id FROM puhui_transfers WHERE id = $1 AND expires_at_ns IS NOT NULL",
                        &[&after],
                    )
                    .map_err(io("reading a cursor"))?
                    .map(|r| (r.get(0), r.get(1))),
            };
            let (from_ns, from_id) = from.unwrap_or((i64::MIN, String::new()));
            c.query(
                "SELECT id, timeout_ms FROM puhui_transfers \
                 WHERE pending_status = 0 AND expires_at_ns IS NOT NULL AND expires_at_ns >= $1 \
                   AND (expires_at_ns, id) > ($1, $2) \
                 ORDER BY expires_at_ns, id LIMIT $3",
                &[&from_ns, &from_id, &limit],
            )
            .map_err(io("reading open holds"))
        })?;
        let more = rows.len() as i64 == limit;
        let mut page = Vec::new();
        for row in &rows[..rows.len().min(limit as usize - 1)] {
            let id: String = row.get(0);
            let id = Id::new(&id).ok_or_else(|| rows::corrupt("a transfer id", format!("{id:?}")))?;
            let timeout_ms = row.get::<_, Option<i64>>(1).map_or(0, rows::amount_from_sql);
            page.push((id, timeout_ms));
        }
        let last = page.last().map(|(id, _)| id.clone());
        Ok((page, last.filter(|_| more)))
    }

    fn account_transfers(&self, id: &str, page: Page<'_>) -> Result<(Vec<Transfer>, bool), StoreError> {
        // `limit + 1` rows are read to see whether there is more.
        let limit = page.limit.clamp(1, (i64::MAX - 1) as usize) as i64;
        self.read(|c| {
            // One snapshot for the existence check, the cursor and the page.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(io("starting a read"))?;
            if tx
                .query_opt("SELECT 1 FROM puhui_accounts WHERE id = $1", &[&id])
                .map_err(io("reading"))?
                .is_none()
            {
                return Err(StoreError::AccountNotFound);
            }
            let cursor_ts = |tx: &mut postgres::Transaction<'_>, cursor: &str| -> Result<i64, StoreError> {
                let row = tx
                    .query_opt(
                        "SELECT timestamp_ns FROM puhui_account_history \
                         WHERE account_id = $1 AND transfer_id = $2 AND NOT expiry",
                        &[&id, &cursor],
                    )
                    .map_err(io("reading a cursor"))?;
                row.map(|r| r.get(0)).ok_or(StoreError::CursorNotFound)
            };
            let columns = rows::TRANSFER_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
            let (found, backwards) = if let Some(before) = page.ending_before {
                let ts = cursor_ts(&mut tx, before)?;
                let sql = format!(
                    "SELECT {columns} {PAGE_JOIN} AND h.timestamp_ns < $2 ORDER BY h.timestamp_ns DESC LIMIT $3"
                );
                (tx.query(&sql, &[&id, &ts, &(limit + 1)]).map_err(io("reading a page"))?, true)
            } else {
                let ts = match page.starting_after {
                    Some(after) => cursor_ts(&mut tx, after)?,
                    None => i64::MIN,
                };
                let sql = format!(
                    "SELECT {columns} {PAGE_JOIN} AND h.timestamp_ns > $2 ORDER BY h.timestamp_ns LIMIT $3"
                );
                (tx.query(&sql, &[&id, &ts, &(limit + 1)]).map_err(io("reading a page"))?, false)
            };
            let mut items = found.iter().map(rows::transfer).collect::<Result<Vec<_>, _>>()?;
            let more = items.len() as i64 > limit;
            items.truncate(limit as usize);
            if backwards {
                items.reverse();
            }
            tx.commit().map_err(io("ending a read"))?;
            Ok((items, more))
        })
    }

    fn balance_at(&self, id: &str, at_ns: u64) -> Result<Balances, StoreError> {
        let at = i64::try_from(at_ns).unwrap_or(i64::MAX);
        self.read(|c| {
            if !account_exists(c, id)? {
                return Err(StoreError::AccountNotFound);
            }
            let row = c
                .query_opt(
                    "SELECT debits_pending, debits_posted, credits_pending, credits_posted \
                     FROM puhui_account_history WHERE account_id = $1 AND timestamp_ns <= $2 \
                     ORDER BY timestamp_ns DESC LIMIT 1",
                    &[&id, &at],
                )
                .map_err(io("reading balance history"))?;
            Ok(row.map(|r| rows::balances(&r, 0)).unwrap_or_default())
        })
    }

    fn new_id(&self) -> Id {
        let now_ms = self.inner.options.clock.now_ns() / 1_000_000;
        self.inner.ids.lock().unwrap_or_else(|p| p.into_inner()).next(now_ms)
    }
}

/// Reads application records from `from` on, in chunks of [`SCAN_CHUNK_ROWS`], for at most
/// `records_max` records, calling `on_record` for each; returns how many.
fn scan_chunks(
    client: &mut impl postgres::GenericClient,
    from: i64,
    records_max: u64,
    on_record: &mut impl FnMut(u64, u8, u64, &[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let kind = i16::from(puhui_journal::codec::KIND_RECORD);
    let (mut next, mut count) = (from, 0u64);
    while count < records_max {
        let want = SCAN_CHUNK_ROWS.min(i64::try_from(records_max - count).unwrap_or(i64::MAX));
        let chunk = client
            .query(
                "SELECT seq, body FROM puhui_journal WHERE kind = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&kind, &next, &want],
            )
            .map_err(|e| format!("reading the journal: {}", describe(&e)))?;
        for row in &chunk {
            let (seq, body): (i64, Vec<u8>) = (row.get(0), row.get(1));
            let decoded = puhui_journal::codec::decode(puhui_journal::codec::KIND_RECORD, &body)
                .map_err(|e| format!("entry {seq}: {e}"))?;
            let puhui_journal::codec::Event::Record { record_type, timestamp_ns, payload } = decoded else {
                return Err(format!("entry {seq}: a record entry decoded as another event"));
            };
            on_record(seq as u64, record_type, timestamp_ns, &payload)?;
            next = seq + 1;
            count += 1;
        }
        if (chunk.len() as i64) < want {
            break;
        }
    }
    Ok(count)
}
