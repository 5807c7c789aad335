//! Events for partners: the in-memory index behind `GET /v1/events` (and the webhook dispatcher),
//! fed from the journal (the outbox, see `puhui-events`).
//!
//! Key decision: the index holds only `(sequence, type)` per event, per tenant (8 bytes each); the
//! event itself is read back from the journal when asked for, through sparse frame positions kept
//! every [`INDEX_POSITION_EVERY_ENTRIES`] entries. So the index costs a few percent of the ledger's own
//! memory, and it covers the events of the latest [`EVENTS_INDEXED_ENTRIES_MAX`] journal entries
//! (older ones: replay the NATS stream from a sequence, or the journal itself).
//!
//! On PostgreSQL ([`start_postgres`]) the same index is fed from the SQL journal below the head's
//! `next_seq` (polled every [`PG_WATERMARK_POLL_MS`]), so every node lists every node's events, and an
//! event is read back by sequence (`events/pg.rs`); there are no frame positions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use puhui_events::event::classify;
use puhui_events::{map_entry, parse_event_id, EntrySource, Event, EventType, Journal, Mapped, RawEntry};
use puhui_journal::JournalPosition;
use puhui_ledger::segmented::{Segmented, SEGMENT_LEN};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorEnvelope};
use crate::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::routes::ApiPath;
use crate::tenants::Principal;
use crate::AppState;

mod pg;

/// The index covers the events of this many latest journal entries.
pub const EVENTS_INDEXED_ENTRIES_MAX: u64 = 1 << 24;
/// A frame position is kept at the first frame start once this many entries have passed since the
/// last one (the indexer's reads mark them, [`puhui_events::JournalTail::read_marking`]): reading
/// one event back scans about this many entries plus one frame. 48 bytes a position: ~6 MB over
/// the whole window. (Every 1,024 entries, and only at the end of each read, before: reading an
/// old decision back scanned ~8× more, up to a catch-up read's 4,096 entries.)
pub const INDEX_POSITION_EVERY_ENTRIES: u64 = 128;
/// Below the window, one frame position is kept every this many entries, so that a rare old
/// entry (a decision older than the memory, its proof) can still be read back: such a read scans up
/// to this many entries (tens of megabytes, tens of milliseconds). 48 bytes a position: ~1 MB per
/// 1.4 billion entries.
pub const OLD_POSITION_EVERY_ENTRIES: u64 = 1 << 16;
/// Positions kept below the window at most (~48 MB, 68 billion entries): past it the oldest go, and
/// the entries before the oldest kept are no longer read back.
pub const OLD_POSITIONS_MAX: usize = 1 << 20;
/// The read buffer of a read back (about [`INDEX_POSITION_EVERY_ENTRIES`] entries of a few
/// hundred bytes): a scan's default of up to 4 MiB cost a GET more than the scan itself.
pub const READ_BACK_BUFFER_BYTES: usize = 64 << 10;
/// Entries the indexer reads per step.
pub const INDEX_BATCH_ENTRIES_MAX: usize = 4_096;
/// Events of one page are read in one journal scan when they lie within this many entries;
/// otherwise one by one.
pub const PAGE_SCAN_SPAN_ENTRIES_MAX: u64 = 16_384;
/// How often the indexer looks for new durable entries once caught up.
pub const INDEX_POLL_MS: u64 = 10;
/// Most index entries a type-filtered page walks past before answering with what it found.
pub const FILTER_WALK_ENTRIES_MAX: usize = 1 << 20;

const SEQ_BITS: u32 = 56;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

fn pack(seq: u64, kind: EventType) -> u64 {
    debug_assert!(seq <= SEQ_MASK);
    (kind.code() as u64) << SEQ_BITS | (seq & SEQ_MASK)
}

fn unpack(word: u64) -> (u64, Option<EventType>) {
    (word & SEQ_MASK, EventType::from_code((word >> SEQ_BITS) as u8))
}

/// One tenant's packed `(type, sequence)` words, increasing by sequence, in segments: a `Vec`
/// that doubled copied all of a busy tenant's events (up to 128 MB) into freshly faulted pages on
/// the runtime's thread, a 10–20 ms pause for every request in flight. The oldest words are
/// forgotten by moving `start`, and whole segments below it are freed.
#[derive(Default)]
struct TenantEvents {
    words: Segmented<u64>,
    /// Words below this index are forgotten (fewer than a segment's worth are kept allocated).
    start: usize,
}

impl TenantEvents {
    fn len(&self) -> usize {
        self.words.len() - self.start
    }

    fn push(&mut self, word: u64) {
        self.words.push(word);
    }

    fn get(&self, i: usize) -> Option<u64> {
        self.words.get(self.start + i).copied()
    }

    /// The index of the first word for which `pred` is false, as `slice::partition_point`.
    fn partition_point(&self, mut pred: impl FnMut(u64) -> bool) -> usize {
        let (mut lo, mut hi) = (self.start, self.words.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.words[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - self.start
    }

    /// The words from index `from` on.
    fn from(&self, from: usize) -> impl Iterator<Item = u64> + '_ {
        self.words.range((self.start + from).min(self.words.len()), self.words.len()).copied()
    }

    /// Forgets the first `count` words.
    fn forget(&mut self, count: usize) {
        self.start += count.min(self.len());
        let whole = self.start / SEGMENT_LEN;
        if whole > 0 {
            self.words.remove_front_segments(whole);
            self.start -= whole * SEGMENT_LEN;
        }
    }
}

#[derive(Default)]
struct Index {
    /// Per tenant: its events.
    tenants: HashMap<String, TenantEvents>,
    /// Frame positions within the window, increasing.
    positions: Vec<JournalPosition>,
    /// Frame positions below the window, increasing, [`OLD_POSITION_EVERY_ENTRIES`] apart.
    old_positions: Vec<JournalPosition>,
    /// Entries below this are no longer read back ([`OLD_POSITIONS_MAX`] reached; 0 until then).
    old_floor: u64,
    /// Every entry below this is indexed.
    next_seq: u64,
}

impl Index {
    /// Moves the first `count` positions below the window, keeping one every
    /// [`OLD_POSITION_EVERY_ENTRIES`] entries and at most [`OLD_POSITIONS_MAX`].
    fn retire_positions(&mut self, count: usize) {
        let Index { positions, old_positions, old_floor, .. } = self;
        for position in positions.drain(..count) {
            if old_positions.last().is_none_or(|o| o.entries + OLD_POSITION_EVERY_ENTRIES <= position.entries)
            {
                old_positions.push(position);
            }
        }
        if old_positions.len() > OLD_POSITIONS_MAX {
            old_positions.drain(..old_positions.len() - OLD_POSITIONS_MAX);
            *old_floor = old_positions[0].entries;
        }
    }

    /// The kept frame position nearest before entry `seq` (the journal's start if none).
    fn position_before(&self, seq: u64) -> JournalPosition {
        let nearest = |positions: &[JournalPosition]| {
            let i = positions.partition_point(|p| p.entries <= seq);
            (i > 0).then(|| positions[i - 1])
        };
        nearest(&self.positions)
            .or_else(|| nearest(&self.old_positions))
            .unwrap_or_else(JournalPosition::start)
    }
}

/// Where events come from: the journal (file or SQL) and its durable watermark.
pub type EventSource = EntrySource;

/// The events index.
pub struct EventLog {
    source: EventSource,
    index: RwLock<Index>,
    caught_up: AtomicBool,
}

/// Why events could not be read.
#[derive(Debug)]
pub struct EventReadError(pub String);

impl From<EventReadError> for ApiError {
    fn from(e: EventReadError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", e.0)
    }
}

impl EventLog {
    /// An empty index over `source` (start [`EventLog::run`] to fill it).
    pub fn new(source: EventSource) -> Arc<EventLog> {
        Arc::new(EventLog { source, index: RwLock::new(Index::default()), caught_up: AtomicBool::new(false) })
    }

    /// Entries durable in the journal now.
    pub fn durable_entries(&self) -> u64 {
        self.source.durable_entries()
    }

    /// Every entry below this is indexed.
    pub fn indexed_until(&self) -> u64 {
        self.index.read().unwrap_or_else(|p| p.into_inner()).next_seq
    }

    /// Whether the index has caught up with the journal once since start.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Indexes the journal (the file from its start, SQL from its window), then follows it until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        // The SQL journal is read by sequence: start at the window (the file needs its frame
        // positions from the start).
        let first = match self.source.journal {
            Journal::File(_) => 0,
            Journal::Sql(_) => self.durable_entries().saturating_sub(EVENTS_INDEXED_ENTRIES_MAX),
        };
        let mut tail = self.source.cursor(JournalPosition::start(), first);
        let mut batch: Vec<RawEntry> = Vec::with_capacity(INDEX_BATCH_ENTRIES_MAX);
        // Frame starts inside each read (file journal), for the index's positions.
        let mut marks: Vec<JournalPosition> = Vec::new();
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            let durable = self.durable_entries();
            if tail.next_seq() >= durable {
                self.caught_up.store(true, Ordering::Release);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(INDEX_POLL_MS)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            batch.clear();
            // The last position kept: marks are taken that far apart.
            marks.clear();
            marks.extend(self.last_position());
            let step = tokio::task::spawn_blocking(move || {
                let every = INDEX_POSITION_EVERY_ENTRIES;
                let read = tail.read_marking(durable, INDEX_BATCH_ENTRIES_MAX, &mut batch, every, &mut marks);
                (tail, batch, marks, read)
            })
            .await;
            let Ok((t, b, m, read)) = step else { return };
            tail = t;
            batch = b;
            marks = m;
            if let Err(e) = read {
                failures += 1;
                tracing::error!(error = %e, "events index: cannot read the journal; retrying");
                let wait_ms = (100u64 << failures.min(6)).min(5_000);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                tail = self.source.cursor(JournalPosition::start(), tail.next_seq());
                continue;
            }
            failures = 0;
            marks.push(tail.resume_position());
            self.add(&batch, tail.next_seq(), &marks);
        }
    }

    /// The latest frame position kept.
    fn last_position(&self) -> Option<JournalPosition> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).positions.last().copied()
    }

    /// Indexes `batch` (the entries before `next_seq`) and keeps the frame positions among
    /// `positions` (in increasing order) that lie [`INDEX_POSITION_EVERY_ENTRIES`] apart.
    fn add(&self, batch: &[RawEntry], next_seq: u64, positions: &[JournalPosition]) {
        let mut mapped = Vec::with_capacity(batch.len());
        for entry in batch {
            if let Ok(Some((kind, tenant))) = classify(entry.kind, &entry.body) {
                mapped.push((tenant, pack(entry.seq, kind)));
            }
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let floor = next_seq.saturating_sub(EVENTS_INDEXED_ENTRIES_MAX);
        for (tenant, word) in mapped {
            let events = index.tenants.entry(tenant).or_default();
            events.push(word);
            // Forget events below the window, in chunks (amortised).
            let stale = events.partition_point(|w| unpack(w).0 < floor);
            if stale >= SEGMENT_LEN || (stale > 0 && stale * 2 >= events.len()) {
                events.forget(stale);
            }
        }
        for &position in positions {
            let due = index
                .positions
                .last()
                .is_none_or(|p| p.entries + INDEX_POSITION_EVERY_ENTRIES <= position.entries);
            if due && position.entries > 0 {
                index.positions.push(position);
            }
        }
        let keep_from = index.positions.partition_point(|p| p.entries < floor).saturating_sub(1);
        if keep_from >= 1_024 {
            index.retire_positions(keep_from);
        }
        index.next_seq = next_seq;
    }

    /// A tenant's event sequences after `after` (exclusive; `None`: from the oldest kept), matching
    /// `kinds` (empty: all), at most `limit`, and whether more follow.
    pub fn page(
        &self,
        tenant: &str,
        after: Option<u64>,
        kinds: &[EventType],
        limit: usize,
    ) -> (Vec<u64>, bool) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let Some(events) = index.tenants.get(tenant) else { return (Vec::new(), false) };
        let start = match after {
            Some(a) => events.partition_point(|w| unpack(w).0 <= a),
            None => 0,
        };
        let mut out = Vec::with_capacity(limit);
        for (walked, w) in events.from(start).enumerate() {
            let (seq, kind) = unpack(w);
            if kinds.is_empty() || kind.is_some_and(|k| kinds.contains(&k)) {
                if out.len() == limit {
                    return (out, true);
                }
                out.push(seq);
            }
            if walked >= FILTER_WALK_ENTRIES_MAX && !out.is_empty() {
                return (out, true);
            }
        }
        (out, false)
    }

    /// A tenant's events of types `kinds` (empty: all) with sequences in `[from, to)`, at most `max`.
    pub fn between(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
        kinds: &[EventType],
        max: usize,
    ) -> Vec<(u64, EventType)> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let Some(events) = index.tenants.get(tenant) else { return Vec::new() };
        let start = events.partition_point(|w| unpack(w).0 < from);
        events
            .from(start)
            .map(unpack)
            .take_while(|(seq, _)| *seq < to)
            .filter_map(|(seq, k)| Some((seq, k?)))
            .filter(|(_, k)| kinds.is_empty() || kinds.contains(k))
            .take(max)
            .collect()
    }

    /// Whether `tenant` has the event `seq` (in the indexed window).
    pub fn has(&self, tenant: &str, seq: u64) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index.tenants.get(tenant).is_some_and(|events| {
            let i = events.partition_point(|w| unpack(w).0 < seq);
            events.get(i).is_some_and(|w| unpack(w).0 == seq)
        })
    }

    fn position_before(&self, seq: u64) -> JournalPosition {
        self.index.read().unwrap_or_else(|p| p.into_inner()).position_before(seq)
    }

    /// Reads the events of increasing sequences `seqs` back from the journal (blocking: call from a
    /// blocking thread). Sequences that are not events are left out.
    pub fn read_blocking(&self, seqs: &[u64]) -> Result<Vec<Event>, EventReadError> {
        let raw = self.read_entries_blocking(seqs)?;
        Ok(raw
            .iter()
            .filter_map(|entry| match map_entry(entry.seq, entry.kind, &entry.body) {
                Ok(Mapped::Event(e)) => Some(e),
                _ => None,
            })
            .collect())
    }

    /// Whether the entry `seq` can be read back ([`EventLog::read_entries_blocking`]): it is below
    /// what the index has read, and not before the oldest frame position kept. Within the window
    /// (the latest [`EVENTS_INDEXED_ENTRIES_MAX`] entries) a read scans about
    /// [`INDEX_POSITION_EVERY_ENTRIES`] entries plus one frame, below it up to
    /// [`OLD_POSITION_EVERY_ENTRIES`]. (The SQL journal is read by sequence.)
    pub fn reads_back(&self, seq: u64) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        seq < index.next_seq && seq >= index.old_floor
    }

    /// Reads the journal entries of increasing sequences `seqs` (blocking: call from a blocking
    /// thread), as they were journaled; sequences past the durable end are left out.
    pub fn read_entries_blocking(&self, seqs: &[u64]) -> Result<Vec<RawEntry>, EventReadError> {
        let mut out = Vec::with_capacity(seqs.len());
        let path = match &self.source.journal {
            Journal::File(path) => path,
            Journal::Sql(sql) => {
                // One query per chunk of sequences: `SELECT … WHERE seq = ANY(…)`.
                for chunk in seqs.chunks(PAGE_SCAN_SPAN_ENTRIES_MAX as usize) {
                    sql.read_at(chunk, &mut out)
                        .map_err(|e| EventReadError(format!("reading events from the journal: {e}")))?;
                }
                return Ok(out);
            }
        };
        let mut i = 0;
        let mut raw = Vec::new();
        while i < seqs.len() {
            // A run of sequences close enough to read in one scan.
            let first = seqs[i];
            let mut j = i + 1;
            while j < seqs.len() && seqs[j] - first <= PAGE_SCAN_SPAN_ENTRIES_MAX {
                j += 1;
            }
            let last = seqs[j - 1];
            let mut tail = puhui_events::JournalTail::new(path, self.position_before(first), first)
                .with_read_bytes_max(READ_BACK_BUFFER_BYTES);
            raw.clear();
            let want = (last - first + 1) as usize;
            while tail.next_seq() <= last {
                let got = tail
                    .read(last + 1, want, &mut raw)
                    .map_err(|e| EventReadError(format!("reading events from the journal: {e}")))?;
                if got == 0 {
                    break;
                }
            }
            out.extend(raw.drain(..).filter(|entry| seqs[i..j].binary_search(&entry.seq).is_ok()));
            i = j;
        }
        Ok(out)
    }

    /// [`EventLog::read_blocking`] on a blocking thread.
    pub async fn read(self: &Arc<Self>, seqs: Vec<u64>) -> Result<Vec<Event>, EventReadError> {
        let log = Arc::clone(self);
        tokio::task::spawn_blocking(move || log.read_blocking(&seqs))
            .await
            .map_err(|e| EventReadError(format!("event reader stopped: {e}")))?
    }
}

// ------------------------------------------------------------------------------------------------
// Start and stop

/// The background tasks of events: the index, the webhook dispatcher and, with NATS configured, the
/// outbox relay.
pub struct EventTasks {
    shutdown: tokio::sync::watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl EventTasks {
    /// Adds tasks that stop with these (they get the same shutdown signal).
    pub fn add(
        &mut self,
        start: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> Result<Vec<tokio::task::JoinHandle<()>>, String>,
    ) -> Result<(), String> {
        self.handles.extend(start(self.shutdown.subscribe())?);
        Ok(())
    }
}

/// Starts the events index, the webhook dispatcher and (if `nats` is set) the relay on the current
/// runtime, all fed from `store`'s journal.
pub fn start(
    store: &Arc<puhui_store::EmbeddedStore>,
    nats: Option<puhui_events::NatsConfig>,
) -> Result<(Arc<EventLog>, Arc<crate::webhooks::Webhooks>, EventTasks), String> {
    let report = store.open_report();
    let at_open = report.snapshot_entries.unwrap_or(0) + report.entries_replayed;
    let watched = Arc::clone(store);
    // The committer sets `entries` after each fdatasync; before the first commit, everything
    // recovered at start-up is durable.
    let durable_entries: Arc<dyn Fn() -> u64 + Send + Sync> =
        Arc::new(move || watched.stats().entries.load(Ordering::Acquire).max(at_open));
    let data_dir = store.data_dir().to_path_buf();
    let journal = data_dir.join(puhui_store::JOURNAL_FILE);
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let source = EventSource { journal: Journal::File(journal), durable_entries };
    let log = EventLog::new(source.clone());
    let hooks = crate::webhooks::Webhooks::open(&data_dir, Arc::clone(&log))?;
    let mut handles = vec![
        tokio::spawn(Arc::clone(&log).run(watch.clone())),
        tokio::spawn(Arc::clone(&hooks).run(watch.clone())),
    ];
    start_relay(nats, source, data_dir, watch, &mut handles)?;
    Ok((log, hooks, EventTasks { shutdown, handles }))
}

/// How often a node on PostgreSQL reads the journal head: the durable watermark its events index,
/// relay and webhook dispatcher read up to (so an event reaches them at most this much later).
pub const PG_WATERMARK_POLL_MS: u64 = 20;

/// [`start`] on PostgreSQL: the index is fed from the SQL journal (every node indexes every node's
/// events), the relay and the webhook dispatcher run on whichever node holds their lease, and the
/// webhook state lives in the database (`puhui_webhook_*`, `puhui_event_cursors`).
pub async fn start_postgres(
    store: &Arc<puhui_store_pg::PgStore>,
    nats: Option<puhui_events::NatsConfig>,
    data_dir: &std::path::Path,
) -> Result<(Arc<EventLog>, Arc<crate::webhooks::Webhooks>, EventTasks), String> {
    let head = Arc::clone(store);
    let first = tokio::task::spawn_blocking(move || head.journal_next_seq())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the journal head: {e}"))?;
    let watermark = Arc::new(AtomicU64::new(first));
    let watched = Arc::clone(&watermark);
    let durable_entries: Arc<dyn Fn() -> u64 + Send + Sync> =
        Arc::new(move || watched.load(Ordering::Acquire));
    let sql = pg::PgJournal::shared(Arc::clone(store));
    let source = EventSource { journal: Journal::Sql(sql), durable_entries };
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let log = EventLog::new(source.clone());
    let hooks = crate::webhooks::Webhooks::open_postgres(Arc::clone(store), Arc::clone(&log)).await?;
    let mut handles = vec![
        tokio::spawn(follow_watermark(Arc::clone(store), watermark, watch.clone())),
        tokio::spawn(Arc::clone(&log).run(watch.clone())),
        tokio::spawn(Arc::clone(&hooks).run(watch.clone())),
    ];
    start_relay(nats, source, data_dir.to_path_buf(), watch, &mut handles)?;
    Ok((log, hooks, EventTasks { shutdown, handles }))
}

/// Reads the journal head every [`PG_WATERMARK_POLL_MS`] into `watermark` until `shutdown`.
async fn follow_watermark(
    store: Arc<puhui_store_pg::PgStore>,
    watermark: Arc<AtomicU64>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failing = false;
    while !*shutdown.borrow() {
        let head = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || head.journal_next_seq()).await {
            Ok(Ok(next)) => {
                watermark.fetch_max(next, Ordering::AcqRel);
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "events: cannot read the journal head; retrying");
                }
                failing = true;
            }
            Err(_) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(PG_WATERMARK_POLL_MS)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn start_relay(
    nats: Option<puhui_events::NatsConfig>,
    entries: EventSource,
    data_dir: std::path::PathBuf,
    watch: tokio::sync::watch::Receiver<bool>,
    handles: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), String> {
    match nats {
        Some(config) => {
            config.validate()?;
            tracing::info!(url = %config.url, stream = %config.stream, prefix = %config.subject_prefix,
                max_age_secs = config.max_age_secs, duplicate_window_secs = config.duplicate_window_secs,
                "events: relaying the journal to NATS JetStream");
            let source = puhui_events::RelaySource { entries, data_dir };
            let (_status, handle) = puhui_events::spawn_relay(config, source, watch);
            handles.push(handle);
        }
        None => tracing::info!("events: no --nats; events are served by GET /v1/events and webhooks only"),
    }
    Ok(())
}

impl EventTasks {
    /// Stops the tasks after the store has shut down: the relay publishes what is durable (bounded
    /// time), the dispatcher saves its state.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventListQuery {
    /// 1-100, default 10.
    pub limit: Option<String>,
    /// An event id (`evt_42`) or a journal sequence (`42`): the page after it.
    pub starting_after: Option<String>,
    /// Only this type (e.g. `transfer.posted`), or a family (`transfer.*`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// An event (what webhooks deliver and NATS carries).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventObject {
    /// Always `event`.
    pub object: String,
    /// `evt_<sequence>`: unique and stable; de-duplicate deliveries by it.
    pub id: String,
    /// `account.created`, `account.frozen`, `account.unfrozen`, `account.closed`,
    /// `transfer.created`, `transfer.posted`, `transfer.voided`, `transfer.expired`, `transfer.failed`,
    /// `decision.created`, `decision.labeled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The journal sequence (increasing; gaps are other tenants' events).
    pub sequence: u64,
    /// When the ledger recorded it (RFC 3339).
    pub created_at: String,
    /// `{"object": {...}}`: the account or transfer as recorded by this event.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<Event> for EventObject {
    fn from(e: Event) -> Self {
        EventObject {
            object: e.object.to_string(),
            id: e.id,
            kind: e.kind.as_str().to_string(),
            sequence: e.sequence,
            created_at: e.created_at,
            data: e.data,
        }
    }
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Always `list`.
    pub object: &'static str,
    /// Oldest first.
    pub data: Vec<EventObject>,
    /// Whether more follow.
    pub has_more: bool,
    /// The list's URL.
    pub url: String,
}

/// Parses a `type` filter: one type, or a family `transfer.*` / `account.*`, or `*`.
pub fn parse_type_filter(text: &str, param: &str) -> Result<Vec<EventType>, ApiError> {
    let kinds: Vec<EventType> = match text.strip_suffix('*') {
        Some(prefix) => EventType::ALL.iter().copied().filter(|t| t.as_str().starts_with(prefix)).collect(),
        None => EventType::parse(text).into_iter().collect(),
    };
    if kinds.is_empty() {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(ApiError::invalid(
            "invalid_request",
            format!(
                "unknown event type {text:?}; one of {}, a family such as transfer.*, or *",
                names.join(", ")
            ),
            Some(param),
        ));
    }
    Ok(kinds)
}

fn page_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "invalid_request",
                format!("limit must be an integer from 1 to {PAGE_LIMIT_MAX}"),
                Some("limit"),
            )),
        },
    }
}

/// The events index, or 503 while the server runs without one.
pub fn event_log(app: &AppState) -> Result<&Arc<EventLog>, ApiError> {
    app.events.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", "events are not enabled")
    })
}

/// List your events, oldest first: catch up after downtime with `starting_after` = the last event
/// id you processed.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventListQuery),
    responses((status = 200, body = EventList), (status = 400, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn list_events(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<EventListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), None))?;
    let limit = page_limit(query.limit.as_deref())?;
    let after = match &query.starting_after {
        Some(text) => Some(parse_event_id(text).ok_or_else(|| {
            ApiError::invalid(
                "invalid_cursor",
                "starting_after is an event id (evt_42) or a sequence",
                Some("starting_after"),
            )
        })?),
        None => None,
    };
    let kinds = match &query.kind {
        Some(text) if text != "*" => parse_type_filter(text, "type")?,
        _ => Vec::new(),
    };
    let log = event_log(&app)?;
    let (seqs, has_more) = log.page(&principal.tenant, after, &kinds, limit);
    let events = log.read(seqs).await?;
    Ok(Json(EventList {
        object: "list",
        data: events.into_iter().map(EventObject::from).collect(),
        has_more,
        url: "/v1/events".into(),
    }))
}

/// Get one of your events.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "event id")),
    responses((status = 200, body = EventObject), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_event(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventObject>, ApiError> {
    let log = event_log(&app)?;
    let seq = parse_event_id(&id).ok_or_else(|| ApiError::not_found("event", "id"))?;
    if !log.has(&principal.tenant, seq) {
        return Err(ApiError::not_found("event", "id"));
    }
    let event = log.read(vec![seq]).await?.pop().ok_or_else(|| ApiError::not_found("event", "id"))?;
    Ok(Json(event.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(entries: u64) -> JournalPosition {
        JournalPosition { entries, len_bytes: entries * 100, last_hash: [entries as u8; 32] }
    }

    #[test]
    fn positions_below_the_window_are_thinned_not_dropped_and_bounded() {
        let mut index = Index::default();
        // Positions every 128 entries, 2.5 old spacings' worth, then retired below the window.
        index.positions = (1..=1_280u64).map(|i| at(i * 128)).collect();
        index.retire_positions(1_000);
        let old: Vec<u64> = index.old_positions.iter().map(|p| p.entries).collect();
        assert_eq!(old, [128, 128 + OLD_POSITION_EVERY_ENTRIES]);
        assert_eq!(index.positions.first().map(|p| p.entries), Some(1_001 * 128));
        // The nearest kept position before an entry: in the window, below it, before all.
        assert_eq!(index.position_before(1_100 * 128 + 5), at(1_100 * 128));
        assert_eq!(index.position_before(900 * 128), at(128 + OLD_POSITION_EVERY_ENTRIES));
        assert_eq!(index.position_before(500 * 128), at(128));
        assert_eq!(index.position_before(100), JournalPosition::start());
        assert_eq!(index.old_floor, 0);
        // Past the bound the oldest go, and the entries before the oldest kept are not read back.
        let base = 1_000_000;
        index.old_positions =
            (0..OLD_POSITIONS_MAX as u64).map(|i| at(i * OLD_POSITION_EVERY_ENTRIES)).collect();
        index.positions = (0..4u64)
            .map(|i| at((OLD_POSITIONS_MAX as u64 + 1 + i) * OLD_POSITION_EVERY_ENTRIES + base))
            .collect();
        index.retire_positions(2);
        assert_eq!(index.old_positions.len(), OLD_POSITIONS_MAX);
        assert_eq!(index.old_floor, 2 * OLD_POSITION_EVERY_ENTRIES);
    }

    #[test]
    fn tenant_events_forget_the_oldest_and_index_like_a_slice() {
        let mut events = TenantEvents::default();
        let all: Vec<u64> = (0..3 * SEGMENT_LEN as u64 + 10).map(|i| i * 2).collect();
        for w in &all {
            events.push(*w);
        }
        let mut kept: &[u64] = &all;
        // Less than a segment, then across segment boundaries (whole segments are freed).
        for forget in [5, SEGMENT_LEN - 2, SEGMENT_LEN + 7] {
            events.forget(forget);
            kept = &kept[forget..];
            assert_eq!(events.len(), kept.len());
            assert_eq!(events.get(0), Some(kept[0]));
            assert!(events.from(3).eq(kept[3..].iter().copied()));
            for probe in [0, kept[0], kept[0] + 1, kept[17], *kept.last().unwrap() + 1] {
                assert_eq!(
                    events.partition_point(|w| w < probe),
                    kept.partition_point(|w| *w < probe),
                    "{probe}"
                );
            }
        }
        assert!(events.start < SEGMENT_LEN, "whole forgotten segments are freed");
        events.forget(usize::MAX);
        assert_eq!((events.len(), events.get(0)), (0, None));
        events.push(7);
        assert_eq!(events.get(0), Some(7));
    }

    #[test]
    fn packing_keeps_sequence_and_type() {
        for t in EventType::ALL {
            let w = pack(123_456_789, *t);
            assert_eq!(unpack(w), (123_456_789, Some(*t)));
        }
        assert_eq!(unpack(pack(SEQ_MASK, EventType::TransferFailed)).0, SEQ_MASK);
    }

    #[test]
    fn pages_are_per_tenant_in_order_with_cursors_and_type_filters() {
        use puhui_ledger::{Currency, Id, NewAccount, TransferRequest};
        use puhui_store::{EmbeddedStore, LedgerStore};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let cny = Currency::parse("CNY", None).unwrap();
        let id = |s: &str| Id::new(s).unwrap();
        for t in ["tAAAAAAAA", "tBBBBBBBB"] {
            let accounts = ["x", "y"].map(|a| NewAccount::new(id(&format!("{t}:{a}")), cny));
            store.create_accounts(accounts.to_vec()).unwrap();
        }
        for i in 0..25 {
            let t = if i % 5 == 0 { "tBBBBBBBB" } else { "tAAAAAAAA" };
            let transfer = TransferRequest::single(
                id(&format!("{t}:p{i}")),
                id(&format!("{t}:x")),
                id(&format!("{t}:y")),
                1,
                cny.code(),
            );
            store.create_transfers(vec![transfer]).unwrap();
        }
        let watched = Arc::clone(&store);
        let log = EventLog::new(EventSource {
            journal: Journal::File(dir.path().join(puhui_store::JOURNAL_FILE)),
            durable_entries: Arc::new(move || watched.stats().entries.load(Ordering::Acquire)),
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (stop, watch) = tokio::sync::watch::channel(false);
        runtime.block_on(async {
            let indexer = tokio::spawn(Arc::clone(&log).run(watch));
            for _ in 0..1_000 {
                if log.caught_up() && log.indexed_until() == log.durable_entries() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.send(true).unwrap();
            indexer.await.unwrap();
        });
        assert_eq!(log.indexed_until(), 4 + 25);
        // Tenant A: 2 accounts + 20 transfers, oldest first, in pages of 7.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = log.page("tAAAAAAAA", after, &[], 7);
            let events = log.read_blocking(&page).unwrap();
            assert_eq!(events.len(), page.len());
            assert!(events.iter().all(|e| e.tenant == "tAAAAAAAA"));
            seen.extend(events.iter().map(|e| e.sequence));
            after = page.last().copied();
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 22);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let (transfers, more) = log.page("tAAAAAAAA", None, &[EventType::TransferCreated], 100);
        assert_eq!((transfers.len(), more), (20, false));
        let (accounts, _) = log.page("tBBBBBBBB", None, &[EventType::AccountCreated], 100);
        assert_eq!(accounts.len(), 2);
        assert!(log.has("tBBBBBBBB", accounts[0]) && !log.has("tAAAAAAAA", accounts[0]));
        assert_eq!(log.page("tNOBODY00", None, &[], 10), (Vec::new(), false));
        // Between, as the webhook dispatcher asks.
        let b = log.between("tBBBBBBBB", 0, log.indexed_until(), &[EventType::TransferCreated], 100);
        assert_eq!(b.len(), 5);
    }

    #[test]
    fn type_filters_accept_types_and_families_only() {
        assert_eq!(parse_type_filter("transfer.posted", "type").unwrap(), vec![EventType::TransferPosted]);
        assert_eq!(parse_type_filter("account.*", "type").unwrap().len(), 4);
        assert!(parse_type_filter("transfer.nope", "type").is_err());
        assert!(parse_type_filter("zzz.*", "type").is_err());
    }
}
