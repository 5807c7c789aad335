//! The outbox relay: durable journal entries → events → NATS JetStream.
//!
//! Key decision: the journal *is* the transactional outbox. An event exists once its entry is
//! durable (the relay reads only below the store's durable watermark), so nothing is published that
//! a crash could undo, and nothing durable is lost: the relay's cursor only moves past an entry once
//! JetStream acknowledged its message. Every message carries `Nats-Msg-Id: <journal id>:<sequence>`,
//! so a re-publish after a crash or a failed acknowledgement is dropped by JetStream's duplicate
//! window. At start (and after every failure) the cursor is recovered from the stream's last message
//! (its `Puhui-Journal` and `Puhui-Seq` headers), falling back to the cursor file the relay saves in
//! the data directory; so a crash between publish and cursor save re-publishes nothing.
//!
//! Bounded: one batch ([`RELAY_BATCH_ENTRIES_MAX`] entries plus at most one journal frame) is in
//! memory at a time. While NATS is down the relay retries with capped exponential backoff and the
//! journal holds the backlog; the API is not slowed (the `puhui_events_nats_lag_entries` gauge and a
//! warning every [`OUTAGE_LOG_EVERY_MS`] say how far behind it is).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::Publish, stream};
use puhui_journal::JournalPosition;
use serde::{Deserialize, Serialize};

use crate::cursor::{load_json, save_json_atomic, PositionFile};
use crate::event::{map_entry, Mapped};
use crate::source::{EntryCursor, EntrySource, Lease, SavedCursor};
use crate::tail::RawEntry;

/// Journal entries read and published per batch (plus at most the rest of one frame).
pub const RELAY_BATCH_ENTRIES_MAX: usize = 1_024;
/// How often the relay looks for new durable entries when it has caught up.
pub const RELAY_POLL_MS: u64 = 10;
/// First retry delay after a NATS failure; doubles up to [`RELAY_BACKOFF_MS_MAX`].
pub const RELAY_BACKOFF_MS_MIN: u64 = 100;
/// Longest retry delay after NATS failures.
pub const RELAY_BACKOFF_MS_MAX: u64 = 5_000;
/// Time allowed for a connection, a stream request or a publish acknowledgement.
pub const NATS_TIMEOUT_MS: u64 = 5_000;
/// The relay saves its cursor file at most this often (and at shutdown).
pub const CURSOR_SAVE_EVERY_MS: u64 = 1_000;
/// While NATS is unreachable, a warning with the backlog is logged this often.
pub const OUTAGE_LOG_EVERY_MS: u64 = 30_000;
/// Default retention of the stream: messages older than this are removed (7 days).
pub const STREAM_MAX_AGE_SECS_DEFAULT: u64 = 7 * 24 * 3600;
/// Default duplicate window of the stream (JetStream's default is 2 minutes; a longer one covers a
/// relay retrying across a longer NATS hiccup).
pub const DUPLICATE_WINDOW_SECS_DEFAULT: u64 = 10 * 60;
/// At shutdown the relay keeps publishing what is durable for at most this long.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 5_000;
/// Test-only fault point: abort the process just before publishing this journal sequence (a crash
/// between the journal commit and the publish).
pub const FAULT_ABORT_BEFORE_PUBLISH_ENV: &str = "PUHUI_FAULT_ABORT_BEFORE_PUBLISH_SEQ";

/// Header: the journal sequence of the event.
pub const HEADER_SEQ: &str = "Puhui-Seq";
/// Header: the sequence of the previous event published from the same journal (absent for the
/// first), so a consumer can tell an entry that is not an event from a lost message.
pub const HEADER_PREV_SEQ: &str = "Puhui-Prev-Seq";
/// Header: the journal's id (see [`crate::JournalTail::journal_id`]).
pub const HEADER_JOURNAL: &str = "Puhui-Journal";
/// Header: the event type.
pub const HEADER_TYPE: &str = "Puhui-Event-Type";

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream's name (created or updated at start).
    pub stream: String,
    /// Subjects are `<prefix>.<tenant>.<event type>`; the stream captures `<prefix>.>`.
    pub subject_prefix: String,
    /// Retention: messages older than this many seconds are removed.
    pub max_age_secs: u64,
    /// JetStream's de-duplication window, in seconds.
    pub duplicate_window_secs: u64,
}

impl NatsConfig {
    /// Defaults for `url`: stream `PUHUI`, prefix `puhui`, 7 days, 10 minutes.
    pub fn new(url: &str) -> NatsConfig {
        NatsConfig {
            url: url.to_string(),
            stream: "PUHUI".into(),
            subject_prefix: "puhui".into(),
            max_age_secs: STREAM_MAX_AGE_SECS_DEFAULT,
            duplicate_window_secs: DUPLICATE_WINDOW_SECS_DEFAULT,
        }
    }

    /// Checks names before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        let token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !token(&self.stream) {
            return Err(format!("stream name {:?}: use A-Z, a-z, 0-9, _ and -", self.stream));
        }
        if !self.subject_prefix.split('.').all(token) {
            return Err(format!(
                "subject prefix {:?}: dot-separated tokens of A-Z, a-z, 0-9, _ and -",
                self.subject_prefix
            ));
        }
        if self.duplicate_window_secs == 0 || self.max_age_secs < self.duplicate_window_secs {
            return Err("the duplicate window must be positive and not longer than the retention".into());
        }
        Ok(())
    }

    /// The stream configuration the relay creates or updates.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            description: Some("puhui ledger events (journal outbox)".into()),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(self.max_age_secs),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            ..Default::default()
        }
    }
}

/// Where the relay reads from.
#[derive(Clone)]
pub struct RelaySource {
    /// The journal (file or SQL) and its durable watermark.
    pub entries: EntrySource,
    /// Where the cursor file goes (the embedded store; on PostgreSQL the cursor is a row of
    /// `puhui_event_cursors`).
    pub data_dir: PathBuf,
}

/// What the relay reports (for logs, metrics, tests).
#[derive(Debug, Default)]
pub struct RelayStatus {
    /// Whether the last NATS operation succeeded.
    pub connected: AtomicBool,
    /// The first journal sequence not yet acknowledged by JetStream.
    pub next_seq: AtomicU64,
    /// Messages acknowledged (new).
    pub published: AtomicU64,
    /// Messages JetStream reported as duplicates (re-publishes it dropped).
    pub duplicates: AtomicU64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CursorFile {
    journal_id: String,
    next_seq: u64,
    last_published_seq: Option<u64>,
    resume: PositionFile,
}

fn cursor_path(dir: &Path, stream: &str) -> PathBuf {
    dir.join(format!("events-nats-{stream}.cursor.json"))
}

/// Why a round of the relay stopped (it then backs off and starts over).
#[derive(Debug)]
enum RoundError {
    Nats(String),
    Journal(String),
    /// Another node holds the relay's lease now (PostgreSQL).
    LeaseLost,
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundError::Nats(e) => write!(f, "NATS: {e}"),
            RoundError::Journal(e) => write!(f, "journal: {e}"),
            RoundError::LeaseLost => write!(f, "the relay lease was lost"),
        }
    }
}

/// Starts the relay on the current tokio runtime. It runs until `shutdown` turns true, then
/// publishes what is durable (for at most [`SHUTDOWN_DRAIN_MS_MAX`]), saves its cursor and ends.
pub fn spawn_relay(
    config: NatsConfig,
    source: RelaySource,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> (Arc<RelayStatus>, tokio::task::JoinHandle<()>) {
    let status = Arc::new(RelayStatus::default());
    let handle = tokio::spawn(run(config, source, shutdown, Arc::clone(&status)));
    (status, handle)
}

struct Relay {
    config: NatsConfig,
    source: RelaySource,
    status: Arc<RelayStatus>,
    fault_before_seq: Option<u64>,
    last_saved: Option<Instant>,
    /// On PostgreSQL: only the node holding it publishes.
    lease: Option<Box<dyn Lease>>,
}

/// The lease of the relay of `stream` (one publisher per stream among the nodes on a database).
pub fn lease_name(stream: &str) -> String {
    format!("nats-relay:{stream}")
}

async fn run(
    config: NatsConfig,
    source: RelaySource,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    status: Arc<RelayStatus>,
) {
    let fault_before_seq = std::env::var(FAULT_ABORT_BEFORE_PUBLISH_ENV).ok().and_then(|v| v.parse().ok());
    let lease = match source.entries.sql() {
        Some(sql) => match sql.lease(&lease_name(&config.stream)) {
            Ok(lease) => Some(lease),
            Err(e) => {
                tracing::error!(error = %e, "events: cannot start competing for the relay lease; relay not started");
                return;
            }
        },
        None => None,
    };
    let mut relay = Relay { config, source, status, fault_before_seq, last_saved: None, lease };
    let mut backoff_ms = RELAY_BACKOFF_MS_MIN;
    let mut outage_since: Option<Instant> = None;
    let mut outage_logged: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let stopping = *shutdown.borrow();
        if stopping && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX));
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                next_seq = relay.status.next_seq.load(Ordering::Relaxed),
                "events: stopping with events not yet in NATS; they are published at the next start"
            );
            break;
        }
        match relay.round(&mut shutdown, drain_deadline).await {
            Ok(()) => break,
            Err(RoundError::LeaseLost) => {
                relay.status.connected.store(false, Ordering::Relaxed);
                metrics::gauge!("puhui_events_nats_connected").set(0.0);
                tracing::warn!("events: another node took over the relay lease; standing by");
                continue;
            }
            Err(e) => {
                relay.status.connected.store(false, Ordering::Relaxed);
                metrics::gauge!("puhui_events_nats_connected").set(0.0);
                metrics::counter!("puhui_events_nats_errors_total").increment(1);
                let now = Instant::now();
                let since = *outage_since.get_or_insert(now);
                let lag = relay
                    .source
                    .entries
                    .durable_entries()
                    .saturating_sub(relay.status.next_seq.load(Ordering::Relaxed));
                if outage_logged
                    .is_none_or(|t| now.duration_since(t).as_millis() as u64 >= OUTAGE_LOG_EVERY_MS)
                {
                    tracing::warn!(
                        error = %e,
                        lag_entries = lag,
                        outage_ms = now.duration_since(since).as_millis() as u64,
                        "events: cannot publish to NATS; the API keeps serving and events catch up from the journal"
                    );
                    outage_logged = Some(now);
                }
                if drain_deadline.is_some() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    _ = shutdown.changed() => {}
                }
                backoff_ms = (backoff_ms * 2).min(RELAY_BACKOFF_MS_MAX);
                continue;
            }
        }
    }
    tracing::info!(next_seq = relay.status.next_seq.load(Ordering::Relaxed), "events: relay stopped");
    // Releasing the lease may wait for its thread's query: not on the runtime's threads.
    if let Some(lease) = relay.lease.take() {
        let _ = tokio::task::spawn_blocking(move || drop(lease)).await;
    }
}

impl Relay {
    /// Connects, ensures the stream, recovers the cursor and publishes until shutdown (`Ok`) or a
    /// failure (`Err`, after which the caller backs off and calls again).
    async fn round(
        &mut self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        mut drain_deadline: Option<Instant>,
    ) -> Result<(), RoundError> {
        // On PostgreSQL: stand by until this node holds the lease.
        if let Some(lease) = &self.lease {
            let mut announced = false;
            while !lease.is_held() {
                if *shutdown.borrow() {
                    return Ok(());
                }
                if !announced {
                    tracing::info!(stream = %self.config.stream, "events: another node relays to NATS; standing by");
                    announced = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(RELAY_POLL_MS * 10)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            tracing::info!(stream = %self.config.stream, "events: this node holds the relay lease");
        }
        let js = connect_jetstream(&self.config.url, NATS_TIMEOUT_MS).await.map_err(RoundError::Nats)?;
        ensure_stream(&js, &self.config).await?;
        // The journal's id: wait for its first entry.
        let journal_id = loop {
            let entries = self.source.entries.clone();
            let id = tokio::task::spawn_blocking(move || entries.journal_id())
                .await
                .map_err(|e| RoundError::Journal(e.to_string()))?
                .map_err(|e| RoundError::Journal(e.to_string()))?;
            if let Some(id) = id {
                break id;
            }
            if *shutdown.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(RELAY_POLL_MS * 10)) => {}
                _ = shutdown.changed() => {}
            }
        };
        let (mut tail, mut last_published) = self.recover(&js, &journal_id).await?;
        self.status.next_seq.store(tail.next_seq(), Ordering::Relaxed);
        self.status.connected.store(true, Ordering::Relaxed);
        metrics::gauge!("puhui_events_nats_connected").set(1.0);
        tracing::info!(
            stream = %self.config.stream, journal = %journal_id, next_seq = tail.next_seq(),
            "events: publishing to NATS JetStream"
        );
        let mut batch: Vec<RawEntry> = Vec::with_capacity(RELAY_BATCH_ENTRIES_MAX);
        loop {
            if *shutdown.borrow() && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX));
            }
            if self.lease.as_ref().is_some_and(|l| !l.is_held()) {
                return Err(RoundError::LeaseLost);
            }
            let durable = self.source.entries.durable_entries();
            metrics::gauge!("puhui_events_nats_lag_entries")
                .set(durable.saturating_sub(tail.next_seq()) as f64);
            if tail.next_seq() >= durable {
                self.save_cursor(&journal_id, &tail, last_published, drain_deadline.is_some()).await;
                if drain_deadline.is_some() {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(RELAY_POLL_MS)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                self.save_cursor(&journal_id, &tail, last_published, true).await;
                return Ok(());
            }
            batch.clear();
            let (t, b, read) = tokio::task::spawn_blocking(move || {
                let mut tail = tail;
                let mut batch = batch;
                let read = tail.read(durable, RELAY_BATCH_ENTRIES_MAX, &mut batch);
                (tail, batch, read)
            })
            .await
            .map_err(|e| RoundError::Journal(e.to_string()))?;
            batch = b;
            read.map_err(|e| RoundError::Journal(e.to_string()))?;
            match self.publish(&js, &journal_id, &batch, last_published).await {
                Ok(last) => {
                    tail = t;
                    last_published = last;
                    self.status.next_seq.store(tail.next_seq(), Ordering::Relaxed);
                    self.save_cursor(&journal_id, &tail, last_published, false).await;
                }
                // Not acknowledged: the cursor stays before the batch; the next round recovers from
                // the stream's last message and re-publishes only what is missing.
                Err(e) => return Err(e),
            }
        }
    }

    /// The cursor: the later of the stream's last message from this journal and the cursor file.
    async fn recover(
        &self,
        js: &jetstream::Context,
        journal_id: &str,
    ) -> Result<(EntryCursor, Option<u64>), RoundError> {
        let path = cursor_path(&self.source.data_dir, &self.config.stream);
        let saved: Option<CursorFile> = match self.source.entries.sql() {
            None => load_json(&path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "events: ignoring an unreadable relay cursor file");
                None
            }),
            Some(sql) => {
                let (sql, name) = (Arc::clone(sql), lease_name(&self.config.stream));
                let loaded = tokio::task::spawn_blocking(move || sql.load_cursor(&name))
                    .await
                    .map_err(|e| RoundError::Journal(e.to_string()))?
                    .map_err(|e| RoundError::Journal(e.to_string()))?;
                loaded.map(|c| CursorFile {
                    journal_id: c.journal_id,
                    next_seq: c.next_seq,
                    last_published_seq: c.last_published_seq,
                    resume: PositionFile::default(),
                })
            }
        };
        let saved = saved.filter(|c| {
            let ours = c.journal_id == journal_id;
            if !ours {
                tracing::warn!(file = %path.display(), "events: the relay cursor file is of another journal; ignoring it");
            }
            ours
        });
        let mut stream = js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| RoundError::Nats(format!("stream {}: {e}", self.config.stream)))?;
        let state =
            stream.info().await.map_err(|e| RoundError::Nats(format!("stream info: {e}")))?.state.clone();
        let mut from_stream: Option<u64> = None;
        if state.messages > 0 {
            match stream.get_raw_message(state.last_sequence).await {
                Ok(message) => {
                    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
                    if header(HEADER_JOURNAL).as_deref() == Some(journal_id) {
                        from_stream = header(HEADER_SEQ).and_then(|s| s.parse().ok());
                    } else {
                        tracing::warn!(
                            stream = %self.config.stream,
                            "events: the stream's last message is not from this journal (one stream per ledger)"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "events: cannot read the stream's last message"),
            }
        }
        let saved_next = saved.as_ref().map_or(0, |c| c.next_seq);
        let stream_next = from_stream.map_or(0, |s| s + 1);
        let next_seq = saved_next.max(stream_next);
        let last_published = if stream_next >= saved_next {
            from_stream.or(saved.as_ref().and_then(|c| c.last_published_seq))
        } else {
            saved.as_ref().and_then(|c| c.last_published_seq)
        };
        let resume = saved
            .as_ref()
            .and_then(|c| c.resume.to_position())
            .filter(|p| p.entries <= next_seq)
            .unwrap_or_else(JournalPosition::start);
        Ok((self.source.entries.cursor(resume, next_seq), last_published))
    }

    /// Publishes a batch in order and waits for every acknowledgement. Returns the last published
    /// sequence.
    async fn publish(
        &self,
        js: &jetstream::Context,
        journal_id: &str,
        batch: &[RawEntry],
        mut last_published: Option<u64>,
    ) -> Result<Option<u64>, RoundError> {
        let mut acks = Vec::with_capacity(batch.len());
        for entry in batch {
            let event = match map_entry(entry.seq, entry.kind, &entry.body) {
                Ok(Mapped::Event(e)) => e,
                Ok(Mapped::Skip) => continue,
                Err(e) => {
                    // The journal is hash-checked: an entry that does not decode is a codec bug.
                    tracing::error!(seq = entry.seq, error = %e, "events: a journal entry does not decode; skipped");
                    metrics::counter!("puhui_events_undecodable_total").increment(1);
                    continue;
                }
            };
            if self.fault_before_seq == Some(entry.seq) {
                eprintln!("puhui: fault point: aborting before publishing journal entry {}", entry.seq);
                std::process::abort();
            }
            let subject = format!("{}.{}.{}", self.config.subject_prefix, event.tenant, event.kind.as_str());
            let mut publish = Publish::build()
                .payload(event.to_json().into())
                .message_id(format!("{journal_id}:{}", entry.seq))
                .header(HEADER_SEQ, entry.seq.to_string())
                .header(HEADER_JOURNAL, journal_id)
                .header(HEADER_TYPE, event.kind.as_str());
            if let Some(prev) = last_published {
                publish = publish.header(HEADER_PREV_SEQ, prev.to_string());
            }
            let ack = js
                .send_publish(subject, publish)
                .await
                .map_err(|e| RoundError::Nats(format!("publishing entry {}: {e}", entry.seq)))?;
            acks.push((entry.seq, ack));
            last_published = Some(entry.seq);
        }
        for (seq, ack) in acks {
            let ack =
                ack.await.map_err(|e| RoundError::Nats(format!("acknowledgement of entry {seq}: {e}")))?;
            if ack.duplicate {
                self.status.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("puhui_events_nats_duplicates_total").increment(1);
            } else {
                self.status.published.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("puhui_events_nats_published_total").increment(1);
            }
        }
        Ok(last_published)
    }

    async fn save_cursor(&mut self, journal_id: &str, tail: &EntryCursor, last: Option<u64>, now: bool) {
        let due =
            now || self.last_saved.is_none_or(|t| t.elapsed().as_millis() as u64 >= CURSOR_SAVE_EVERY_MS);
        if !due {
            return;
        }
        self.last_saved = Some(Instant::now());
        let file = CursorFile {
            journal_id: journal_id.to_string(),
            next_seq: tail.next_seq(),
            last_published_seq: last,
            resume: PositionFile::from(tail.resume_position()),
        };
        let saved = match self.source.entries.sql() {
            None => {
                let path = cursor_path(&self.source.data_dir, &self.config.stream);
                tokio::task::spawn_blocking(move || save_json_atomic(&path, &file).map_err(|e| e.to_string()))
                    .await
            }
            Some(sql) => {
                let (sql, name) = (Arc::clone(sql), lease_name(&self.config.stream));
                let cursor = SavedCursor {
                    journal_id: file.journal_id,
                    next_seq: file.next_seq,
                    last_published_seq: file.last_published_seq,
                };
                tokio::task::spawn_blocking(move || {
                    sql.save_cursor(&name, &cursor).map_err(|e| e.to_string())
                })
                .await
            }
        };
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "events: cannot save the relay cursor (the stream's last message is the fallback)");
        }
    }
}

/// A JetStream context on `url` whose connection, requests and acknowledgements each time out after
/// `timeout_ms` (the relay's and the checkpoint witness's connection).
pub async fn connect_jetstream(url: &str, timeout_ms: u64) -> Result<jetstream::Context, String> {
    let timeout = Duration::from_millis(timeout_ms);
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .connect(url)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let mut js = jetstream::new(client);
    js.set_timeout(timeout);
    Ok(js)
}

async fn ensure_stream(js: &jetstream::Context, config: &NatsConfig) -> Result<(), RoundError> {
    let wanted = config.stream_config();
    match js.update_stream(&wanted).await {
        Ok(_) => Ok(()),
        Err(update_error) => js.create_stream(wanted).await.map(|_| ()).map_err(|e| {
            RoundError::Nats(format!(
                "creating stream {} ({e}; updating it failed too: {update_error})",
                config.stream
            ))
        }),
    }
}
