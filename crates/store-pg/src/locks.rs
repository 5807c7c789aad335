//! Cross-node locks on decision ids ([`crate::PgStore::lock_decisions`]).
//!
//! Two nodes must not decide under one id at the same moment: each would decide on its own view
//! (its own velocity features), and one could decline a transfer that the other posts. A decision
//! therefore first locks its id's bucket (one of [`DECISION_LOCK_BUCKETS`]) across nodes, catches up
//! with the records other nodes journaled, and lets go once its own record is durable; a second
//! node deciding under the same id waits, then reads the first one's decision and answers with it.
//!
//! The locks are PostgreSQL session-level advisory locks, all held by **one connection per store**
//! and taken for every waiting request at once by one thread: one round trip per batch of
//! acquisitions and releases, whatever the number of requests in flight. (The first version held a
//! pooled connection in a transaction per request: its 16 connections capped a node at ~850
//! decided transfers/s against ~1,600 without the lock.) Buckets, not ids, are locked so that one
//! session never holds more than [`DECISION_LOCK_BUCKETS`] locks (they share PostgreSQL's lock
//! table, sized by `max_locks_per_transaction`); two unrelated ids sharing a bucket only wait for
//! each other. Within a node, requests under one bucket share its lock (the in-process exclusion of
//! one id, `begin_deciding`, is the API's). A request holds a prefix of its buckets in ascending
//! order and waits for the next one, so waiting cannot go round in a circle across nodes. While
//! no request of the node is waiting for a bucket another node holds, each tries every bucket it
//! lacks in one round trip (a batch of thousands of ids, spread over most buckets, is one round
//! trip, not one per bucket), keeps the prefix it got and lets the rest go in the next round; once
//! one is refused (stalled), the node's requests try one bucket at a time, so that no bucket taken
//! past a refused one keeps another node's request waiting.
//!
//! If the connection fails, the session's locks are gone with it: waiters start over on a new
//! connection. No request is answered without a round trip in the same round, also one given only
//! buckets the session already holds: a session that died unnoticed would otherwise hand out locks
//! another node has taken since (a test that ends the session found exactly that).
//!
//! **Fencing.** A holder whose session died has its decision made, its record maybe on the way to
//! the journal: another node may now take the bucket and must see that record, or the record must
//! not be written. A holder's records therefore carry its lock's [`Fence`] (the session's epoch and
//! buckets), as do the transfers it posts without a decision of their own (no risk context:
//! the other node must see the posting instead), and their transaction, before writing, takes a shared transaction lock on each
//! bucket in the fence class, then has the locker make a round trip on that session (a session
//! alive holds every bucket a fence still holds: the locker unlocks only buckets nobody holds, and
//! a fence keeps its buckets held until its records are committed or refused, also if the request
//! went away meanwhile);
//! if it cannot (the session is gone or was replaced), the records are refused (the request gets
//! 503, nothing is written). Choice, over reading `pg_locks`: that copies PostgreSQL's whole lock
//! table, 2–4 ms with 4,096 advisory locks held (four busy nodes), per records group.
//! A node that takes a bucket from PostgreSQL grants it only once a try of the bucket's exclusive
//! fence lock succeeds (and is let go at once), i.e. once no transaction that checked the old
//! holder is still in flight: after that, any such record is committed and its catch-up reads it.
//! (A transaction that takes its shared lock after that probe finds the old session gone.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::Client;
use puhui_store::StoreError;

use crate::{connect, describe};

/// Buckets decision ids are locked by (an id's bucket: its hash modulo this).
pub const DECISION_LOCK_BUCKETS: u64 = 1_024;
/// Longest a request waits for its buckets (held by another node), then `Unavailable` (503).
pub const DECISION_LOCK_WAIT_MS: u64 = 5_000;
/// Most requests waiting for or holding decision locks per store; more get `Overloaded`.
pub const DECISION_LOCK_REQUESTS_MAX: usize = 4_096;
/// How often buckets held by another node are tried again.
const RETRY_EVERY_MS: u64 = 1;
/// Most messages taken from the queue per round (the rest wait for the next round).
const MESSAGES_PER_ROUND_MAX: usize = 4_096;
/// Longest pause before reconnecting after a failure.
const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;

/// What a request is told once it holds its buckets, or why it does not.
pub type LockReply = Box<dyn FnOnce(Result<DecisionLock, StoreError>) + Send>;

/// What the locker thread hands to [`wrap`] for a request holding all its buckets.
type HeldReply = Box<dyn FnOnce(Result<Held, StoreError>) + Send>;

enum Message {
    Acquire {
        buckets: Vec<i32>,
        reply: HeldReply,
    },
    Release {
        buckets: Vec<i32>,
        epoch: u64,
    },
    /// Answers whether a round trip on session `epoch`, made after this message arrived, succeeded.
    Alive {
        epoch: u64,
        reply: Sender<bool>,
    },
}

/// What a decision record, or a transfer posted without a decision, written under a
/// [`DecisionLock`] is checked against before it is committed ([`DecisionLock::fence`]; see the
/// module docs). It keeps the buckets held: a request that goes away (its client gone) while its
/// record or transfer waits for the journal does not let them go before it is committed or refused.
#[derive(Clone)]
pub struct Fence {
    held: Arc<Held>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("pid", &self.held.pid)
            .field("epoch", &self.held.epoch)
            .field("buckets", &self.held.buckets.len())
            .finish()
    }
}

/// Longest a records transaction waits for the locker's round trip ([`Fence::session_alive`]).
const ALIVE_WAIT_MS: u64 = 5_000;

impl Fence {
    /// The backend pid of the session holding the locks.
    pub fn pid(&self) -> i32 {
        self.held.pid
    }

    /// The class (first key) of the buckets' fence locks.
    pub fn fence_class(&self) -> i32 {
        fence_class_of(self.held.class)
    }

    /// The buckets, ascending.
    pub fn buckets(&self) -> &[i32] {
        &self.held.buckets
    }

    /// Whether the session is the same and answers a round trip made after this call (blocking,
    /// at most [`ALIVE_WAIT_MS`]); if so, it still holds the buckets (this fence holds them).
    pub(crate) fn session_alive(&self) -> bool {
        let Some((locker, _)) = &self.held.locker else { return false };
        let (reply, answer) = mpsc::channel();
        if locker.send(Message::Alive { epoch: self.held.epoch, reply }).is_err() {
            return false;
        }
        answer.recv_timeout(Duration::from_millis(ALIVE_WAIT_MS)).unwrap_or(false)
    }

    /// Whether `self` and `other` name the same session.
    pub(crate) fn same_session(&self, other: &Fence) -> bool {
        let locker_id = |f: &Fence| f.held.locker.as_ref().map(|(_, id)| Arc::as_ptr(id));
        self.held.epoch == other.held.epoch && locker_id(self) == locker_id(other)
    }
}

/// Buckets held by one request; dropping it (and every [`Fence`] made from it) lets them go.
#[derive(Debug)]
pub struct DecisionLock(Arc<Held>);

impl DecisionLock {
    /// What records written under this lock are checked against: they are committed only while
    /// the session still holds every bucket (the fence holds them until it is dropped).
    pub fn fence(&self) -> Fence {
        Fence { held: Arc::clone(&self.0) }
    }
}

/// The buckets a request holds; the last handle dropped lets them go.
struct Held {
    buckets: Vec<i32>,
    epoch: u64,
    /// The holding session's backend pid and lock class.
    pid: i32,
    class: i32,
    /// The locker's queue and request count (filled in on the requester's side: [`wrap`]).
    locker: Option<(Sender<Message>, Arc<AtomicUsize>)>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLock").field("buckets", &self.buckets.len()).finish()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((locker, in_flight)) = self.locker.take() {
            let buckets = std::mem::take(&mut self.buckets);
            // The locker gone (the store dropped): so is its session, and every lock with it.
            let _ = locker.send(Message::Release { buckets, epoch: self.epoch });
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The queue of the locker thread, started on first use.
pub(crate) struct Locker {
    queue: Sender<Message>,
    in_flight: Arc<AtomicUsize>,
}

impl Locker {
    /// Starts the locker thread (it connects on first need, and ends when the store is dropped).
    pub(crate) fn start(url: &str, schema: Option<&str>) -> Result<Locker, StoreError> {
        let (queue, messages) = mpsc::channel();
        let (url, schema) = (url.to_string(), schema.map(str::to_string));
        // Apart per schema: stores in other schemas of the database lock other keys.
        let class = class_of(schema.as_deref().unwrap_or("public"));
        std::thread::Builder::new()
            .name("puhui-pg-locks".into())
            .spawn(move || {
                let mut thread = LockerThread {
                    url,
                    schema,
                    class,
                    client: None,
                    pid: 0,
                    epoch: 0,
                    held: HashMap::new(),
                    unclear: HashSet::new(),
                    waiting: VecDeque::new(),
                    to_unlock: Vec::new(),
                    alive: Vec::new(),
                };
                thread.run(&messages)
            })
            .map_err(|e| StoreError::Io(format!("starting the decision lock thread: {e}")))?;
        Ok(Locker { queue, in_flight: Arc::new(AtomicUsize::new(0)) })
    }

    /// Asks for the buckets of decision ids hashed to `keys`; `reply` runs on the locker thread.
    pub(crate) fn lock(
        &self,
        keys: impl IntoIterator<Item = u64>,
        reply: LockReply,
    ) -> Result<(), StoreError> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= DECISION_LOCK_REQUESTS_MAX {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Overloaded);
        }
        let mut buckets: Vec<i32> = keys.into_iter().map(|k| (k % DECISION_LOCK_BUCKETS) as i32).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let reply = wrap(reply, self.queue.clone(), Arc::clone(&self.in_flight));
        self.queue.send(Message::Acquire { buckets, reply }).map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            StoreError::Unavailable("the decision lock thread stopped".into())
        })
    }
}

/// A reply that fills in the guard's queue and counter (the locker thread only knows its buckets
/// and epoch), and gives the count back if the request is refused.
fn wrap(reply: LockReply, locker: Sender<Message>, in_flight: Arc<AtomicUsize>) -> HeldReply {
    Box::new(move |r: Result<Held, StoreError>| match r {
        Ok(mut held) => {
            held.locker = Some((locker, in_flight));
            reply(Ok(DecisionLock(Arc::new(held))))
        }
        Err(e) => {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            reply(Err(e))
        }
    })
}

/// The `application_name` of a store's decision lock sessions: `puhui-locks:<schema>`, cut to
/// PostgreSQL's 63 bytes (a schema name is letters, digits and `_`, checked by `connect`).
pub fn application_name(schema: Option<&str>) -> String {
    let mut name = format!("puhui-locks:{}", schema.unwrap_or("public"));
    name.truncate(63);
    name
}

/// The advisory lock class (first key) of a schema's decision locks: FNV-1a of its name, apart
/// from the leases' `hashtext` keys by its prefix.
fn class_of(schema: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in "puhui-decisions:".bytes().chain(schema.bytes()) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// The class of the fence locks of the decision locks of `class` (see the module docs).
pub(crate) fn fence_class_of(class: i32) -> i32 {
    class ^ 0x5f5f_5f5f
}

struct Waiter {
    /// Ascending, distinct.
    buckets: Vec<i32>,
    /// How many of `buckets` it holds (a prefix).
    taken: usize,
    /// Whether its last round trip got it no further (refused, or the bucket unclear): while
    /// any waiter of the node is, every waiter tries only its next bucket each round; otherwise
    /// all the buckets it lacks at once.
    stalled: bool,
    deadline: Instant,
    reply: HeldReply,
}

struct LockerThread {
    url: String,
    schema: Option<String>,
    class: i32,
    client: Option<(Client, postgres::Statement)>,
    /// The session's backend pid.
    pid: i32,
    /// Connections made so far: a release from an earlier session's holder is ignored.
    epoch: u64,
    /// Buckets this session holds, with the number of requests holding each.
    held: HashMap<i32, usize>,
    /// Buckets of `held` not granted yet: taken from PostgreSQL while a transaction that checked
    /// their previous holder's fence may still be in flight (probed again each round).
    unclear: HashSet<i32>,
    waiting: VecDeque<Waiter>,
    /// Buckets no request holds any more, to unlock in the next round trip.
    to_unlock: Vec<i32>,
    /// Liveness questions for the next round trip (session epoch, reply).
    alive: Vec<(u64, Sender<bool>)>,
}

impl LockerThread {
    fn run(&mut self, messages: &Receiver<Message>) {
        let mut backoff_ms = RETRY_EVERY_MS;
        loop {
            // Idle only with nothing to unlock and nothing unclear held (a bucket taken for a
            // waiter that timed out would otherwise stay locked until the next message).
            let first = if self.waiting.is_empty() && self.to_unlock.is_empty() && self.unclear.is_empty() {
                match messages.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            } else {
                match messages.recv_timeout(Duration::from_millis(backoff_ms)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            for message in first.into_iter().chain(messages.try_iter().take(MESSAGES_PER_ROUND_MAX)) {
                self.take(message);
            }
            self.grant_shared();
            match self.round_trip() {
                Ok(()) => backoff_ms = RETRY_EVERY_MS,
                Err(e) => {
                    tracing::warn!(error = %e, "decision locks: the connection failed; starting over");
                    self.lose_session();
                    backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
                }
            }
            self.answer();
        }
    }

    fn take(&mut self, message: Message) {
        match message {
            Message::Acquire { buckets, reply } => {
                let deadline = Instant::now() + Duration::from_millis(DECISION_LOCK_WAIT_MS);
                self.waiting.push_back(Waiter { buckets, taken: 0, stalled: false, deadline, reply });
            }
            Message::Release { buckets, epoch } => {
                if epoch == self.epoch {
                    for bucket in buckets {
                        self.release(bucket);
                    }
                }
            }
            Message::Alive { epoch, reply } => {
                if epoch == self.epoch && self.client.is_some() {
                    self.alive.push((epoch, reply));
                } else {
                    let _ = reply.send(false);
                }
            }
        }
    }

    fn release(&mut self, bucket: i32) {
        if let Some(count) = self.held.get_mut(&bucket) {
            *count -= 1;
            if *count == 0 {
                self.held.remove(&bucket);
                self.to_unlock.push(bucket);
            }
        }
    }

    /// Gives waiters the buckets this session holds already (or is about to unlock), in order.
    fn grant_shared(&mut self) {
        for waiter in &mut self.waiting {
            while let Some(&bucket) = waiter.buckets.get(waiter.taken) {
                if self.unclear.contains(&bucket) {
                    break;
                }
                if let Some(count) = self.held.get_mut(&bucket) {
                    *count += 1;
                } else if let Some(at) = self.to_unlock.iter().position(|b| *b == bucket) {
                    self.to_unlock.swap_remove(at);
                    self.held.insert(bucket, 1);
                } else {
                    break;
                }
                waiter.taken += 1;
            }
        }
    }

    /// One query: unlocks what nobody holds, tries the buckets waiters lack: all of them while no
    /// waiter of the node is stalled (see the module docs), else each waiter's next one. A waiter
    /// keeps only the prefix of its buckets it then holds: a bucket taken past a refused one is
    /// let go in the next round, so waiting never goes round in a circle across nodes.
    fn round_trip(&mut self) -> Result<(), String> {
        let one_at_a_time = self.waiting.iter().any(|w| w.stalled);
        let taken_before: Vec<usize> = self.waiting.iter().map(|w| w.taken).collect();
        let mut wanted = vec![false; DECISION_LOCK_BUCKETS as usize];
        for w in &self.waiting {
            let lacking = w.buckets.get(w.taken..).unwrap_or(&[]);
            let lacking = if one_at_a_time { &lacking[..lacking.len().min(1)] } else { lacking };
            for b in lacking {
                if let Some(slot) = usize::try_from(*b).ok().and_then(|i| wanted.get_mut(i)) {
                    *slot = true;
                }
            }
        }
        let tries: Vec<i32> = (0..DECISION_LOCK_BUCKETS as i32)
            .filter(|b| wanted[*b as usize] && !self.held.contains_key(b))
            .collect();
        // A request given only buckets the session holds already is answered after a round trip
        // all the same: had the session died unnoticed (its locks since taken by another node),
        // the query fails and the grant is undone instead of answered.
        let answering = self.waiting.iter().any(|w| w.taken == w.buckets.len() && w.taken > 0);
        let asked = !self.alive.is_empty();
        if tries.is_empty() && self.to_unlock.is_empty() && self.unclear.is_empty() && !answering && !asked {
            return Ok(());
        }
        if self.client.is_none() {
            let mut client = connect(&self.url, self.schema.as_deref()).map_err(|e| e.to_string())?;
            // Named, so that an operator (or a test) can find the session that holds the locks.
            let name = application_name(self.schema.as_deref());
            client.batch_execute(&format!("SET application_name = '{name}'")).map_err(|e| describe(&e))?;
            // Per key, by mode: 0 unlocks, 1 tries the lock, 2 only probes (a bucket held, unclear).
            // `clear`: the fence lock was free once the bucket was held (tried and let go at once;
            // CASE and the unflattened subquery keep that order).
            let statement = client
                .prepare(
                    "SELECT k, held, CASE WHEN held AND m <> 0 THEN \
                       CASE WHEN pg_try_advisory_lock($4, k) THEN pg_advisory_unlock($4, k) ELSE false END \
                     ELSE false END AS clear \
                     FROM (SELECT k, m, CASE m WHEN 0 THEN pg_advisory_unlock($1, k) \
                                               WHEN 1 THEN pg_try_advisory_lock($1, k) ELSE true END AS held \
                           FROM unnest($2::int4[], $3::int2[]) AS u(k, m) OFFSET 0) s",
                )
                .map_err(|e| describe(&e))?;
            let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).map_err(|e| describe(&e))?.get(0);
            self.client = Some((client, statement));
            self.pid = pid;
            self.epoch += 1;
        }
        let (client, statement) = self.client.as_mut().expect("connected");
        let probes: Vec<i32> = self.unclear.iter().filter(|b| !self.to_unlock.contains(b)).copied().collect();
        let keys: Vec<i32> = self.to_unlock.iter().chain(&tries).chain(&probes).copied().collect();
        let modes: Vec<i16> = (self.to_unlock.iter().map(|_| 0))
            .chain(tries.iter().map(|_| 1))
            .chain(probes.iter().map(|_| 2))
            .collect();
        let fence_class = fence_class_of(self.class);
        let rows =
            client.query(statement, &[&self.class, &keys, &modes, &fence_class]).map_err(|e| describe(&e))?;
        // The session answered after every question asked so far (they name this epoch: a new
        // connection answered the older ones "no" in `lose_session`).
        for (_, reply) in self.alive.drain(..) {
            let _ = reply.send(true);
        }
        // Unlocked: no longer unclear (a bucket tried again in the same statement is probed
        // afresh below).
        for bucket in self.to_unlock.drain(..) {
            self.unclear.remove(&bucket);
        }
        for (row, mode) in rows.iter().zip(&modes) {
            let (bucket, held, clear): (i32, bool, bool) = (row.get(0), row.get(1), row.get(2));
            match mode {
                // Held by the session now; `grant_shared` hands it to every waiter that is next in
                // line once it is clear.
                1 if held => {
                    self.held.insert(bucket, 0);
                    if !clear {
                        self.unclear.insert(bucket);
                    }
                }
                2 if clear => {
                    self.unclear.remove(&bucket);
                }
                _ => {}
            }
        }
        self.grant_shared();
        for (waiter, before) in self.waiting.iter_mut().zip(taken_before) {
            // Short of its buckets after trying them all (some refused), or no further one at a
            // time: stalled; the next round lets go of what it took past the refusal.
            waiter.stalled =
                waiter.taken < waiter.buckets.len() && (waiter.taken == before || !one_at_a_time);
        }
        // A bucket taken for waiters that timed out meanwhile, or past a waiter's refused one,
        // would otherwise stay locked.
        let unused: Vec<i32> = self.held.iter().filter(|(_, n)| **n == 0).map(|(b, _)| *b).collect();
        let waited: HashSet<i32> =
            self.waiting.iter().filter_map(|w| w.buckets.get(w.taken).copied()).collect();
        for bucket in unused {
            if self.unclear.contains(&bucket) && waited.contains(&bucket) {
                continue;
            }
            // An unclear bucket stays unclear until it is unlocked: `grant_shared` must not hand
            // it out of `to_unlock` to a request arriving meanwhile before its fence is clear.
            self.held.remove(&bucket);
            self.to_unlock.push(bucket);
        }
        Ok(())
    }

    /// Answers the waiters holding all their buckets, and those past their deadline.
    fn answer(&mut self) {
        let now = Instant::now();
        let mut still = VecDeque::with_capacity(self.waiting.len());
        while let Some(waiter) = self.waiting.pop_front() {
            if waiter.taken == waiter.buckets.len() {
                let lock = Held {
                    buckets: waiter.buckets,
                    epoch: self.epoch,
                    pid: self.pid,
                    class: self.class,
                    locker: None,
                };
                (waiter.reply)(Ok(lock));
            } else if now >= waiter.deadline {
                for bucket in &waiter.buckets[..waiter.taken] {
                    self.release(*bucket);
                }
                (waiter.reply)(Err(StoreError::Unavailable(format!(
                    "another node kept deciding under this id for {DECISION_LOCK_WAIT_MS} ms"
                ))));
            } else {
                still.push_back(waiter);
            }
        }
        self.waiting = still;
    }

    /// The connection failed: its session's locks are gone. Waiters start over; holders are not
    /// told: their records not yet committed are refused by their fence (see the module docs).
    fn lose_session(&mut self) {
        if !self.held.is_empty() {
            tracing::warn!(
                buckets = self.held.len(),
                "decision locks lost with their connection: records and transfers in flight under them will be refused"
            );
        }
        self.client = None;
        self.held.clear();
        self.unclear.clear();
        for (_, reply) in self.alive.drain(..) {
            let _ = reply.send(false);
        }
        self.to_unlock.clear();
        for waiter in &mut self.waiting {
            waiter.taken = 0;
            waiter.stalled = false;
        }
    }
}
