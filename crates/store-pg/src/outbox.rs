//! The SQL journal as an outbox: what events, the NATS relay and webhooks read from it, and the
//! lease that lets exactly one node at a time run a singleton task (the relay, the dispatcher).
//!
//! Key decision: the durable watermark is the journal head's `next_seq`. A writer inserts its
//! journal rows and moves the head in one transaction, committed while it holds the head's row
//! lock, so the rows below a `next_seq` that a reader sees are committed, visible and gapless:
//! reading `seq >= from ORDER BY seq` up to it needs no other coordination. (A read still checks that
//! the rows it got are consecutive, and stops at the first gap.)
//!
//! Leases are session-level advisory locks held on a dedicated connection by a small thread: the
//! lock goes with the session, so a node that dies (even `kill -9`) frees it as soon as PostgreSQL
//! sees its connection close, and another node's thread takes it on its next try. The keys are
//! derived from the schema and the lease's name, so tests on different schemas of one database never
//! contend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::Client;
use puhui_store::StoreError;

use crate::{connect, describe, PgStore};

/// Most journal rows one [`PgStore::read_entries`] call returns.
pub const READ_ENTRIES_MAX: usize = 16_384;
/// Most sequences one [`PgStore::read_entries_at`] call looks up.
pub const READ_AT_MAX: usize = 16_384;
/// How often a lease thread tries to take its lock (standby) or checks its connection (holder).
pub const LEASE_POLL_MS: u64 = 250;
/// Longest a lease thread waits before reconnecting after a failed connection.
pub const LEASE_RECONNECT_MS_MAX: u64 = 5_000;

/// One journal row: `(seq, kind, body)`.
pub type JournalRow = (u64, u8, Vec<u8>);

fn io(what: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| StoreError::Io(format!("{what}: {}", describe(&e)))
}

fn rows_to_entries(rows: &[postgres::Row]) -> Result<Vec<JournalRow>, StoreError> {
    rows.iter()
        .map(|r| {
            let (seq, kind, body): (i64, i16, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
            let seq = u64::try_from(seq).map_err(|_| StoreError::Io(format!("journal seq {seq} < 0")))?;
            let kind = u8::try_from(kind).map_err(|_| StoreError::Io(format!("entry {seq}: kind {kind}")))?;
            Ok((seq, kind, body))
        })
        .collect()
}

impl PgStore {
    /// The durable watermark: every journal entry below it is committed and visible (the head's
    /// `next_seq`).
    pub fn journal_next_seq(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let row = c
                .query_one("SELECT next_seq FROM puhui_journal_head", &[])
                .map_err(io("reading the journal head"))?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    /// The journal entries from `from_seq` on, in order, at most `max` (and at most
    /// [`READ_ENTRIES_MAX`]). Stops before a gap (there is none in a committed journal).
    pub fn read_entries(&self, from_seq: u64, max: usize) -> Result<Vec<JournalRow>, StoreError> {
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let limit = max.min(READ_ENTRIES_MAX) as i64;
        self.read(|c| {
            let rows = c
                .query(
                    "SELECT seq, kind, body FROM puhui_journal WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&from, &limit],
                )
                .map_err(io("reading the journal"))?;
            let mut entries = rows_to_entries(&rows)?;
            let consecutive =
                entries.iter().enumerate().take_while(|(i, e)| e.0 == from_seq + *i as u64).count();
            entries.truncate(consecutive);
            Ok(entries)
        })
    }

    /// The journal entries with the given sequences (those that exist), in sequence order; at most
    /// [`READ_AT_MAX`] sequences.
    pub fn read_entries_at(&self, seqs: &[u64]) -> Result<Vec<JournalRow>, StoreError> {
        if seqs.len() > READ_AT_MAX {
            return Err(StoreError::Io(format!("at most {READ_AT_MAX} entries at once")));
        }
        let wanted: Vec<i64> = seqs.iter().filter_map(|s| i64::try_from(*s).ok()).collect();
        self.read(|c| {
            let rows = c
                .query(
                    "SELECT seq, kind, body FROM puhui_journal WHERE seq = ANY($1) ORDER BY seq",
                    &[&wanted],
                )
                .map_err(io("reading journal entries"))?;
            rows_to_entries(&rows)
        })
    }

    /// The hex of the first 8 bytes of entry 0's chained hash: this journal's id, stable for the
    /// life of the database (as the embedded journal's id). `None` while the journal is empty.
    pub fn journal_id(&self) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            let row = c
                .query_opt("SELECT hash FROM puhui_journal WHERE seq = 0", &[])
                .map_err(io("reading the journal's first entry"))?;
            Ok(row.map(|r| {
                let hash: Vec<u8> = r.get(0);
                hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
            }))
        })
    }

    /// Runs `f` on one of the store's read connections (search path set to the store's schema), for
    /// tables beside the ledger's (events, webhooks). Blocking.
    pub fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read(f)
    }

    /// A lease named `name` (one holder at a time among every node on this database and schema).
    /// Its thread starts trying at once; see [`PgLease`].
    pub fn lease(&self, name: &str) -> Result<PgLease, StoreError> {
        PgLease::start(&self.inner.url, self.inner.options.schema.clone(), name)
    }
}

#[derive(Default)]
struct LeaseState {
    stop: bool,
}

/// A singleton lease: a session-level advisory lock held on a dedicated connection by its own
/// thread, which tries to take it every [`LEASE_POLL_MS`] while another node holds it and, once it
/// holds it, checks the connection as often (a lost connection is a lost lock). Dropping the lease
/// (or [`PgLease::stop`]) unlocks and closes the connection.
///
/// [`PgLease::is_held`] can be stale by one poll: after a lost connection a holder may believe it
/// still holds the lock for up to [`LEASE_POLL_MS`] while another node already does, so the work
/// done under a lease must tolerate a short overlap (the relay's and the dispatcher's do: NATS
/// de-duplicates by message id, webhooks are at-least-once).
pub struct PgLease {
    held: Arc<AtomicBool>,
    state: Arc<(Mutex<LeaseState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PgLease {
    fn start(url: &str, schema: Option<String>, name: &str) -> Result<PgLease, StoreError> {
        let held = Arc::new(AtomicBool::new(false));
        let state = Arc::new((Mutex::new(LeaseState::default()), Condvar::new()));
        let (url, name) = (url.to_string(), name.to_string());
        let (h, s) = (Arc::clone(&held), Arc::clone(&state));
        let thread = std::thread::Builder::new()
            .name(format!("puhui-lease-{name}"))
            .spawn(move || lease_loop(&url, schema.as_deref(), &name, &h, &s))
            .map_err(|e| StoreError::Io(format!("starting a lease thread: {e}")))?;
        Ok(PgLease { held, state, thread: Some(thread) })
    }

    /// Whether this node holds the lease (as of the last check, at most [`LEASE_POLL_MS`] ago).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Releases the lease (if held) and stops its thread; blocking (at most one query).
    pub fn stop(&mut self) {
        {
            let (lock, wake) = &*self.state;
            lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.held.store(false, Ordering::Release);
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps `ms` or until stopped; returns whether to stop.
fn pause(state: &(Mutex<LeaseState>, Condvar), ms: u64) -> bool {
    let (lock, wake) = state;
    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    if guard.stop {
        return true;
    }
    let (guard, _) = wake.wait_timeout(guard, Duration::from_millis(ms)).unwrap_or_else(|p| p.into_inner());
    guard.stop
}

fn lease_loop(
    url: &str,
    schema: Option<&str>,
    name: &str,
    held: &AtomicBool,
    state: &(Mutex<LeaseState>, Condvar),
) {
    // Two 32-bit keys: the schema and the lease's name (hashtext is stable for a server version).
    const TRY: &str = "SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext($1))";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext(current_schema()), hashtext($1))";
    let key = format!("puhui-lease:{name}");
    let mut client: Option<Client> = None;
    let mut backoff_ms = LEASE_POLL_MS;
    loop {
        if client.is_none() {
            match connect(url, schema) {
                Ok(c) => {
                    client = Some(c);
                    backoff_ms = LEASE_POLL_MS;
                }
                Err(_) => {
                    if pause(state, backoff_ms) {
                        return;
                    }
                    backoff_ms = (backoff_ms * 2).min(LEASE_RECONNECT_MS_MAX);
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let ok = if held.load(Ordering::Acquire) {
            c.simple_query("SELECT 1").is_ok()
        } else {
            match c.query_one(TRY, &[&key]) {
                Ok(row) => {
                    if row.get::<_, bool>(0) {
                        held.store(true, Ordering::Release);
                    }
                    true
                }
                Err(_) => false,
            }
        };
        if !ok {
            // The session (and with it the lock, if held) is gone.
            held.store(false, Ordering::Release);
            client = None;
        }
        if pause(state, LEASE_POLL_MS) {
            if let Some(mut c) = client.take() {
                if held.swap(false, Ordering::AcqRel) {
                    let _ = c.query_one(UNLOCK, &[&key]);
                }
            }
            return;
        }
    }
}
