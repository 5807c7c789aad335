//! Risk decisions over HTTP: `POST /v1/decisions` scores an event (a payment from another system, a
//! login) with the active ruleset without posting anything; `GET /v1/decisions/{id}` explains it and
//! `POST /v1/decisions/{id}/label` labels it. A transfer posted with a `risk_context` is decided
//! inline (see `routes::create_transfer`): decline → not posted (422 `risk_declined`), review →
//! posted as a hold and queued here (`GET /v1/risk/reviews`, `POST /v1/risk/reviews/{id}/approve|
//! decline`), approve → posted. Rulesets are published, activated and shadowed over the admin API;
//! allow/deny lists are managed per tenant (and operator-wide with the admin token).
//!
//! Every change — decision (with the shadow verdict), label, ruleset, activation, list change — is
//! a journaled risk record (`puhui_risk::records`), queued to the store while the service's lock is
//! held, so the journal's order is the order the controller changed. At start-up the records are
//! replayed: features, rulesets, lists, recent decisions and open reviews come back as they were.
//!
//! Several nodes on PostgreSQL: every node follows the SQL journal ([`RiskService::catch_up`], every
//! [`FOLLOW_EVERY_MS`] and at once when a lookup misses), applying the records other nodes wrote:
//! rulesets, activations and lists (so all nodes decide with the same rules), decisions (so any node
//! answers `GET /v1/decisions/{id}`, labels it, and resolves its review) and labels. Velocity
//! features are not taken from other nodes' decisions: they are per node, or shared in Redis.
//! Admin changes (publish, activate, list changes) run one at a time across nodes
//! ([`RiskService::admin_change`]: a database-wide lock, catch up, change, wait until durable), so
//! two nodes cannot publish two texts under one version, and every node applies them in journal
//! order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use puhui_risk::control::{ControlError, Controller, RulesetInfo};
use puhui_risk::records::{DecisionRecord, DecisionSource, EventRecord, Label, LabelRecord, ListOp, Verdict};
use puhui_risk::{FeatureLimits, Outcome, RiskRecord};
use puhui_store::Record;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backend::Backend;
use crate::error::{ApiError, ErrorEnvelope};
use crate::idempotency::IdempotencyKey;
use crate::models::{parse_rfc3339, scoped, scoped_lookup, unscoped};
use crate::routes::{ApiJson, ApiPath};
use crate::tenants::Principal;
use crate::AppState;

mod checkpoint;
mod snapshot;

pub use checkpoint::CheckpointPolicy;
pub use snapshot::{RISK_SNAPSHOT_FILE, SNAPSHOT_AFTER_DECISIONS};

/// Most decisions kept in memory for `GET /v1/decisions/{id}` (the oldest are forgotten first; all
/// of them stay in the journal, where backtests read them).
pub const DECISIONS_KEPT_MAX: usize = 100_000;
/// Entries the memory's map of decisions is sized for: twice [`DECISIONS_KEPT_MAX`], so that the
/// tombstones forgetting leaves behind never fill it (which would double it under the lock).
const DECISIONS_MAP_SLOTS: usize = 2 * DECISIONS_KEPT_MAX;
/// Journal positions the committer can hand over before the memory takes them (it takes them
/// every time it is locked, i.e. at least once per decision).
const SEQ_INBOX_MAX: usize = 65_536;
/// Most decision ids remembered (as 64-bit hashes) so that old decisions can still be labelled.
pub const DECISION_IDS_KEPT_MAX: usize = 20_000_000;
/// Most attributes in a `risk_context`.
pub const ATTRIBUTES_MAX: usize = 32;
/// Longest risk-context value and attribute name: values become velocity-feature keys, which are
/// bounded in number (`FeatureLimits::keys_max`), so their size must be bounded too.
pub const ATTRIBUTE_BYTES_MAX: usize = 256;
/// Decisions waiting for the decider thread at most (~0.5 s of work at ~30 µs each); a request
/// whose decisions would pass it has them decided on a blocking-pool thread. Metrics: the gauge
/// `puhui_risk_decisions_queued` (decisions waiting, as the thread takes each request's) and the
/// counter `puhui_risk_decided_unqueued_total` (decisions made on a blocking-pool thread instead).
pub const DECISIONS_QUEUED_MAX: usize = 16_384;
/// Longest the decider thread waits for room in the journal's write queue for one decision record
/// before the decision is refused (503 `overloaded`).
pub const JOURNAL_ROOM_WAIT_MS: u64 = 2_000;
/// Decision records in the journal's write queue at most: half its bound, so that however many
/// big batches with risk contexts are being decided, the other half stays free for every other
/// write (transfers, the batches' own postings, accounts). Without it the deciders, waiting for
/// room, kept the queue full, and a batch's posting found it full and failed with 503.
pub const DECISION_RECORDS_IN_FLIGHT_MAX: usize = puhui_store::QUEUE_COMMANDS_MAX / 2;
const _: () = assert!(DECISION_RECORDS_IN_FLIGHT_MAX < puhui_store_pg::QUEUE_COMMANDS_MAX);
/// How often the decider looks for that room again.
const JOURNAL_ROOM_POLL_US: u64 = 200;

/// The starter ruleset shipped with puhui (`rulesets/starter.toml`), active by default.
pub const STARTER_RULESET: &str = include_str!("../../../rulesets/starter.toml");

/// On PostgreSQL: how often a node reads the risk records other nodes journaled.
pub const FOLLOW_EVERY_MS: u64 = 100;
/// Passes of [`FOLLOW_RECORDS_MAX`] records one catch-up makes at most (the rest waits for the next).
pub const CATCH_UP_PASSES_MAX: usize = 16;
/// Risk records one catch-up step reads at most.
pub const FOLLOW_RECORDS_MAX: u64 = 4_096;
/// Advisory lock key serialising risk-control admin changes across nodes.
const ADMIN_LOCK_KEY: i64 = 7_077_846_119;

/// The risk controller, the remembered decisions and the review queue, journaled through the store.
pub struct RiskService {
    /// The next journal sequence [`RiskService::catch_up`] reads (PostgreSQL; held while it reads).
    follow_next: Mutex<Following>,
    /// Catch-ups begun so far (numbered from 1, under `follow_next`'s lock): a request notes it
    /// on arrival, and a catch-up numbered higher, once finished, covers it
    /// ([`RiskService::caught_up`]).
    catch_ups_begun: std::sync::atomic::AtomicU64,
    /// The controller: what orders decisions (held while deciding and queueing the record).
    state: Mutex<RiskState>,
    /// What the API remembers (decisions, reviews): its own lock, so readers do not wait behind a
    /// decision. Shared with the checkpointer, which copies the live review queue into each
    /// snapshot (`risk/checkpoint.rs`).
    memory: Arc<Mutex<Memory>>,
    /// Journal positions of durable decision records, sent by the committer thread and taken into
    /// [`Memory`] whenever it is locked. The committer never waits on the memory's lock: a 50–100 ms
    /// reply stage (every request in flight waiting) was the committer queued behind a request
    /// that held the lock while the decisions map grew.
    seqs: SyncSender<(Arc<str>, u64)>,
    /// The decider thread's queue ([`RiskService::decide_queued`]), started on first use.
    decider: OnceLock<SyncSender<DecideJob>>,
    /// The decision metrics' handles, made at the first decision (after the recorder is installed).
    metrics: OnceLock<DecisionMetrics>,
    /// Decisions handed to the decider thread and not yet made (at most [`DECISIONS_QUEUED_MAX`]).
    queued: std::sync::atomic::AtomicUsize,
    /// Decision records submitted to the journal and not yet durable (at most
    /// [`DECISION_RECORDS_IN_FLIGHT_MAX`]).
    records_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Set once a decision's record was refused after the decision entered the features and the
    /// memory (queued, then refused by a store stopping): from then on this process holds an event
    /// the journal lacks, so no snapshot is written from it ([`RiskService::write_snapshot`]).
    records_refused: Arc<std::sync::atomic::AtomicBool>,
    /// Records queued for the journal with the controller's lock held (decisions, rulesets,
    /// activations, lists), counted so that a decision on the committer thread can tell whether
    /// one was queued behind it ([`RiskService::decide_deferred`]).
    records_queued: std::sync::atomic::AtomicU64,
    /// The journal position (entries) of the risk snapshot on disk, loaded or last written
    /// (`u64::MAX`: none): a stop with nothing journaled since does not write it again.
    snapshot_entries: Arc<std::sync::atomic::AtomicU64>,
    /// The checkpointer writing the risk snapshot while serving ([`RiskService::start_checkpoints`]).
    checkpointer: Mutex<Option<checkpoint::Checkpointer>>,
    /// The embedded store's idempotency keys, which the risk snapshot carries (`None` on
    /// PostgreSQL, where they are rows).
    idempotency: Option<Arc<crate::idempotency::IdempotencyCache>>,
    /// The node's feature placement seed (embedded store), for the checkpointer's copy.
    feature_seed: Option<u64>,
    /// The feature store's bounds, for the checkpointer's copy.
    feature_limits: FeatureLimits,
    /// Single transfers are decided on the embedded store's committer thread
    /// ([`RiskService::decide_deferred`]): the embedded store with the features in memory (a
    /// shared backend's round trips must not hold up group commits).
    decides_on_committer: bool,
    /// The controller's lists, read for pages without the controller's lock ([`puhui_risk::list_page`]).
    lists: puhui_risk::Lists,
    /// Whether the active or the shadow ruleset reads the payer's balance (the controller keeps it
    /// current): a transfer's balance is looked up only then.
    reads_payer_balance: Arc<std::sync::atomic::AtomicBool>,
    store: Backend,
}

/// `count` answers of "risk control stopped" (the thread deciding them went away).
fn stopped(count: usize) -> Vec<DecisionResult> {
    let stopped = || Err(ApiError::from(puhui_store::StoreError::Unavailable("risk control stopped".into())));
    (0..count).map(|_| stopped()).collect()
}

/// Where [`RiskService::catch_up`] goes on reading, and how far it got.
struct Following {
    /// The next journal sequence to read.
    next_seq: u64,
    /// The number of the last catch-up that read to the journal's end (0: none yet).
    caught_up_by: u64,
}

/// Transfer ids taken by a request ([`RiskService::begin_deciding`]); dropping it frees them.
pub struct Deciding {
    risk: Arc<RiskService>,
    ids: Vec<u64>,
}

impl Drop for Deciding {
    fn drop(&mut self) {
        let mut memory = self.risk.mem();
        for id in &self.ids {
            memory.deciding.remove(id);
        }
    }
}

fn deciding_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// 409 `request_in_progress`: another request under this transfer id is being decided.
pub fn request_in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_error",
        "request_in_progress",
        "another request with this id is being decided; retry shortly",
    )
}

/// Handles of the metrics every decision updates: looked up once, not by name and label at every
/// decision (a registry lookup and label hash each).
struct DecisionMetrics {
    /// `puhui_decisions_total` by outcome ([`outcome_index`]).
    decisions: [metrics::Counter; 3],
    /// `puhui_shadow_decisions_total` by outcome.
    shadow_decisions: [metrics::Counter; 3],
    degraded: metrics::Counter,
    seconds: metrics::Histogram,
}

const OUTCOMES: [Outcome; 3] = [Outcome::Approve, Outcome::Review, Outcome::Decline];

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Approve => 0,
        Outcome::Review => 1,
        Outcome::Decline => 2,
    }
}

impl DecisionMetrics {
    fn new() -> DecisionMetrics {
        DecisionMetrics {
            decisions: OUTCOMES.map(|o| metrics::counter!("puhui_decisions_total", "outcome" => o.as_str())),
            shadow_decisions: OUTCOMES
                .map(|o| metrics::counter!("puhui_shadow_decisions_total", "outcome" => o.as_str())),
            degraded: metrics::counter!("puhui_decisions_degraded_total"),
            seconds: metrics::histogram!("puhui_decision_seconds"),
        }
    }

    fn count(&self, decision: &DecisionRecord) {
        self.decisions[outcome_index(decision.active.outcome)].increment(1);
        self.seconds.record(decision.active.latency_ns as f64 / 1e9);
        if decision.active.degraded.is_some() {
            self.degraded.increment(1);
        }
        if let Some(shadow) = &decision.shadow {
            self.shadow_decisions[outcome_index(shadow.outcome)].increment(1);
        }
    }
}

/// Decisions waiting for the decider thread: one request's (a batch hands over all its items at once).
struct DecideJob {
    items: Vec<ToDecide>,
    answer: JobAnswer,
}

/// A decision and the receipt of its record's durability, or why it was not made.
pub type DecisionResult = Result<(Decided, Durable), ApiError>;

/// How a [`DecideJob`] is answered.
enum JobAnswer {
    /// The decisions, one per item, sent to the awaiting request.
    Reply(tokio::sync::oneshot::Sender<Vec<DecisionResult>>),
    /// A single item's next step, run on the deciding thread ([`RiskService::decide_then`]).
    Then(Then),
}

/// What a request has done right after its decision, on the thread that made it
/// ([`RiskService::decide_then`]): given the decision, it may queue writes behind the decision
/// record, and answers the request itself.
pub type Then = Box<dyn FnOnce(DecisionResult) + Send>;

/// A decision record and its durability reply, for the committer to journal
/// ([`RiskService::decide_deferred`]).
pub type StashedRecord = (Record, puhui_store::Reply<u64>);

/// An event to decide, with its decision id and whether it is to enter the features.
#[derive(Debug)]
pub struct ToDecide {
    /// The decision's (scoped) id.
    pub id: String,
    /// What is decided.
    pub source: DecisionSource,
    /// The event.
    pub event: EventRecord,
    /// Whether the event enters the velocity features (if not declined).
    pub record: bool,
    /// On PostgreSQL, the fence of the decision lock held for it ([`RiskService::lock_across_nodes`]):
    /// its record is written only while that lock is held.
    pub fence: Option<puhui_store_pg::Fence>,
}

struct RiskState {
    controller: Controller,
}

struct Memory {
    /// Recent decisions by scoped id, as their compact binary records (one allocation each; the
    /// JSON object is built when one is asked for).
    decisions: HashMap<Arc<str>, Remembered>,
    /// Journal positions that arrived before their decision was remembered (bounded by the queue).
    early_seqs: HashMap<Arc<str>, u64>,
    order: VecDeque<Arc<str>>,
    /// Journal positions from the committer ([`RiskService::seqs`]), not yet noted.
    seq_inbox: Receiver<(Arc<str>, u64)>,
    /// What is kept of each decision no longer in `decisions` (bounded), by the hash of its id:
    /// where its record is in the journal (`GET /v1/decisions/{id}` reads it back from there), its
    /// label (a label on it is accepted), and whether it declined a transfer (a retry of one is
    /// declined again, not decided again, or posted without a risk context).
    forgotten: ForgottenIds,
    /// Held transfers waiting for an analyst, by scoped transfer id.
    reviews: Reviews,
    /// Transfer ids (hashed) in a request right now ([`RiskService::begin_deciding`]): a second
    /// request under one of them waits its turn (409 `request_in_progress`) instead of racing it.
    deciding: HashSet<u64>,
}

/// Held transfers waiting for an analyst, by scoped transfer id (`<tenant>:<id>`), ordered so that
/// a tenant's page is a range of the map, and counted per tenant. Choice, over a hash map scanned
/// and sorted per page and counted per queued review: those scans ran under the memory's lock,
/// which the committer thread takes for every decision, at up to `REVIEWS_OPEN_MAX` reviews.
#[derive(Default)]
struct Reviews {
    by_id: std::collections::BTreeMap<String, ReviewObject>,
    per_tenant: HashMap<String, usize>,
}

impl Reviews {
    fn tenant_of(scoped_id: &str) -> &str {
        scoped_id.split_once(':').map_or(scoped_id, |(tenant, _)| tenant)
    }

    fn insert(&mut self, scoped_id: String, review: ReviewObject) {
        let tenant = Reviews::tenant_of(&scoped_id).to_string();
        if self.by_id.insert(scoped_id, review).is_none() {
            *self.per_tenant.entry(tenant).or_default() += 1;
        }
    }

    /// [`Reviews::insert`] if the queue has room for it ([`REVIEWS_OPEN_MAX`] in all,
    /// [`REVIEWS_PER_TENANT_MAX`] for its tenant): whether it is queued now (also when it was
    /// already). The check and the insert happen under one lock, so the bounds hold whatever
    /// the concurrency.
    fn insert_within_bounds(&mut self, scoped_id: &str, review: ReviewObject) -> bool {
        if self.contains_key(scoped_id) {
            return true;
        }
        let room = self.len() < REVIEWS_OPEN_MAX
            && self.of_tenant(Reviews::tenant_of(scoped_id)) < REVIEWS_PER_TENANT_MAX;
        if room {
            self.insert(scoped_id.to_string(), review);
        }
        room
    }

    fn remove(&mut self, scoped_id: &str) -> Option<ReviewObject> {
        let review = self.by_id.remove(scoped_id)?;
        let tenant = Reviews::tenant_of(scoped_id);
        if let Some(count) = self.per_tenant.get_mut(tenant) {
            *count -= 1;
            if *count == 0 {
                self.per_tenant.remove(tenant);
            }
        }
        Some(review)
    }

    fn contains_key(&self, scoped_id: &str) -> bool {
        self.by_id.contains_key(scoped_id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Open reviews of `tenant`.
    fn of_tenant(&self, tenant: &str) -> usize {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// The first `limit` reviews of `tenant` after the scoped id `after` (if given), in id order,
    /// and whether there are more.
    fn page(&self, tenant: &str, after: Option<&str>, limit: usize) -> (Vec<ReviewObject>, bool) {
        use std::ops::Bound;
        let prefix = format!("{tenant}:");
        let start = match after {
            Some(a) if a >= prefix.as_str() => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.clone()),
        };
        let mut page: Vec<ReviewObject> = self
            .by_id
            .range((start, Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(&prefix))
            .take(limit.saturating_add(1))
            .map(|(_, review)| review.clone())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }
}

/// Sets `puhui_risk_reviews_open` to the live queue's size (the service's own memory only: the
/// checkpointer's copy and a replay's do not report).
fn reviews_open(reviews: &Reviews) {
    metrics::gauge!("puhui_risk_reviews_open").set(reviews.len() as f64);
}

/// A remembered decision: its record (`puhui_risk::records::binary`), latest label and journal
/// position.
struct Remembered {
    record: Box<[u8]>,
    label: Option<Label>,
    journal_seq: Option<u64>,
    /// A transfer's decision that declined it (kept in `declined_forgotten` once forgotten).
    declined_transfer: bool,
    /// A transfer's decision that held it for review (kept once forgotten: a start restores the
    /// review of a hold still open from the record read back, `reviews_at_start`).
    reviewed_transfer: bool,
}

/// What is kept of a decision no longer in the memory's `decisions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Forgotten {
    /// Its record's place in the journal (`None`: not known, e.g. read from a version-2 snapshot).
    journal_seq: Option<u64>,
    label: Option<Label>,
    /// It declined a transfer.
    declined_transfer: bool,
    /// It held a transfer for review.
    reviewed_transfer: bool,
}

impl Forgotten {
    const DECLINED_BIT: u64 = 1 << 63;
    const LABEL_SHIFT: u32 = 61;
    const REVIEWED_BIT: u64 = 1 << 60;
    const SEQ_MASK: u64 = Self::REVIEWED_BIT - 1;

    /// In 8 bytes: the declined flag (bit 63), the label (bits 61–62: none, fraud, legit), the
    /// reviewed flag (bit 60; part of the sequence in snapshots before version 4, where it was
    /// never set), the journal sequence plus one (0: not known).
    fn pack(self) -> u64 {
        let seq = self.journal_seq.map_or(0, |s| (s + 1).min(Self::SEQ_MASK));
        let label: u64 = match self.label {
            None => 0,
            Some(Label::Fraud) => 1,
            Some(Label::Legit) => 2,
        };
        let reviewed = if self.reviewed_transfer { Self::REVIEWED_BIT } else { 0 };
        (u64::from(self.declined_transfer) << 63) | (label << Self::LABEL_SHIFT) | reviewed | seq
    }

    fn unpack(word: u64) -> Forgotten {
        Forgotten {
            journal_seq: (word & Self::SEQ_MASK).checked_sub(1),
            label: match (word >> Self::LABEL_SHIFT) & 0b11 {
                1 => Some(Label::Fraud),
                2 => Some(Label::Legit),
                _ => None,
            },
            declined_transfer: word & Self::DECLINED_BIT != 0,
            reviewed_transfer: word & Self::REVIEWED_BIT != 0,
        }
    }
}

/// The decisions no longer in memory ([`Forgotten`], 16 bytes each: the hash of the id and the
/// packed rest), up to [`DECISION_IDS_KEPT_MAX`], in shards that grow on their own: one map of
/// millions rehashed all of them (hundreds of MB near the bound) under the memory's lock; a
/// shard's growth step is 1/256 of that.
struct ForgottenIds {
    shards: Box<[HashMap<u64, u64, std::hash::BuildHasherDefault<Prehashed>>]>,
    len: usize,
    /// How many declined a transfer: while none did, a new transfer id costs no lookup here.
    declined: usize,
}

impl ForgottenIds {
    const SHARDS: usize = 256;

    fn new() -> ForgottenIds {
        ForgottenIds { shards: (0..Self::SHARDS).map(|_| HashMap::default()).collect(), len: 0, declined: 0 }
    }

    /// Bits the shards' tables do not use to place a hash (they use the low and the top bits).
    fn shard(hash: u64) -> usize {
        (hash >> 32) as usize & (Self::SHARDS - 1)
    }

    fn get(&self, hash: u64) -> Option<Forgotten> {
        self.shards[Self::shard(hash)].get(&hash).map(|w| Forgotten::unpack(*w))
    }

    fn contains(&self, hash: u64) -> bool {
        self.shards[Self::shard(hash)].contains_key(&hash)
    }

    /// Keeps `forgotten` under `hash` (replacing what was there), if there is room for one more.
    fn insert(&mut self, hash: u64, forgotten: Forgotten) {
        let shard = &mut self.shards[Self::shard(hash)];
        if self.len >= DECISION_IDS_KEPT_MAX && !shard.contains_key(&hash) {
            return;
        }
        match shard.insert(hash, forgotten.pack()) {
            None => self.len += 1,
            Some(before) => self.declined -= usize::from(Forgotten::unpack(before).declined_transfer),
        }
        self.declined += usize::from(forgotten.declined_transfer);
    }

    /// Forgets the decision `hash` here.
    fn remove(&mut self, hash: u64) {
        if let Some(word) = self.shards[Self::shard(hash)].remove(&hash) {
            self.len -= 1;
            self.declined -= usize::from(Forgotten::unpack(word).declined_transfer);
        }
    }

    /// Labels the decision `hash`, if it is kept here.
    fn label(&mut self, hash: u64, label: Label) {
        if let Some(word) = self.shards[Self::shard(hash)].get_mut(&hash) {
            *word = Forgotten { label: Some(label), ..Forgotten::unpack(*word) }.pack();
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Every `(hash, forgotten)`, in no particular order.
    fn iter(&self) -> impl Iterator<Item = (u64, Forgotten)> + '_ {
        self.shards.iter().flat_map(|shard| shard.iter().map(|(h, w)| (*h, Forgotten::unpack(*w))))
    }
}

/// A hasher for keys that are already uniformly distributed 64-bit hashes ([`hash64`]).
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; anything else is folded in, to stay a hasher.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A decision just made: what the request acts on. Made on the deciding thread from the record,
/// which is dropped there: an inline decision carries only its outcome, a decline's reasons and a
/// review's queue entry to the request's thread (the whole record, freed on another thread than
/// the one that built it, was 3 % of the runtime's time); a standalone decision also carries the
/// record, whose explanation ([`Decided::object`]) is its answer.
#[derive(Debug, Clone)]
pub struct Decided {
    outcome: Outcome,
    /// A decline's reason codes (empty otherwise).
    reasons: Vec<String>,
    /// A held transfer's review (inline review decisions only).
    review: Option<ReviewObject>,
    /// Whether `review` was queued when the decision was remembered (false: the queue was full).
    review_queued: bool,
    /// The whole record (standalone decisions only).
    record: Option<DecisionRecord>,
}

impl Decided {
    fn of(record: DecisionRecord) -> Decided {
        let outcome = record.active.outcome;
        let reasons = match outcome {
            Outcome::Decline => reasons_of(&record.active),
            _ => Vec::new(),
        };
        let inline = record.source == DecisionSource::Transfer;
        let review = (inline && outcome == Outcome::Review).then(|| review_of_record(&record));
        Decided { outcome, reasons, review, review_queued: false, record: (!inline).then_some(record) }
    }

    /// The active ruleset's outcome: what is acted on.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// A decline's reason codes, in ruleset order (empty for other outcomes).
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// The review of a held transfer decided this way (an inline review decision only).
    pub fn review(&self) -> Option<ReviewObject> {
        self.review.clone()
    }

    /// Whether the review was queued as the decision was made; `false` if the queue was full
    /// (or the decision is not a review): the transfer must not be held then.
    pub fn review_queued(&self) -> bool {
        self.review_queued
    }

    /// The decision's explanation (as `GET /v1/decisions/{id}` shows it, before it is durable):
    /// `None` for an inline decision.
    pub fn object(self) -> Option<DecisionObject> {
        self.record.map(to_object)
    }
}

/// A verdict's reason codes: its fired rules', in ruleset order.
pub(crate) fn reasons_of(verdict: &Verdict) -> Vec<String> {
    verdict.fired.iter().flat_map(|f| f.reasons.iter().cloned()).collect()
}

/// Most open reviews. Beyond it a transfer decided for review is not posted (fail closed): 503
/// `overloaded` with `Retry-After: 60`, and its retry, answered from the decision already made, is
/// held and queued once there is room.
pub const REVIEWS_OPEN_MAX: usize = 100_000;
/// Most open reviews per tenant, so one tenant cannot fill the queue for everyone.
pub const REVIEWS_PER_TENANT_MAX: usize = 10_000;
/// Most pages `GET /v1/risk/reviews` reads to fill one without stale reviews (each pass drops the
/// stale ones it found; past this, the page is answered short).
pub const REVIEW_PAGE_PASSES_MAX: usize = 8;
/// Reviews whose holds start-up looks up, and open holds it looks at, in one read of the ledger
/// ([`reviews_at_start`]).
const REVIEWS_CHECKED_PER_READ: usize = 1_000;
/// Most pages of open holds start-up looks at for review holds without a review (10⁸ open holds
/// with a timeout, far beyond what a node keeps): a bound on its loop.
const OPEN_HOLD_PAGES_MAX: usize = 100_000;
/// A review hold expires (and releases) after this long if nobody decides it.
pub const REVIEW_HOLD_TIMEOUT_MS: u64 = 72 * 3_600 * 1_000;

/// A transfer held for review.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewObject {
    /// Always `review`.
    pub object: &'static str,
    /// The held transfer (also the decision's id).
    pub id: String,
    /// The decision's score.
    pub score: i64,
    /// Fired rules' reason codes.
    pub reasons: Vec<String>,
    /// Ruleset version that asked for the review.
    pub ruleset_version: String,
}

/// `GET /v1/risk/reviews`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewList {
    /// Always `list`.
    pub object: &'static str,
    /// Open reviews (a page of at most `limit`, in id order).
    pub data: Vec<ReviewObject>,
    /// Whether more are open.
    pub has_more: bool,
    /// The list's URL.
    pub url: &'static str,
}

/// A risk snapshot saved ([`RiskService::write_snapshot`]).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotWritten {
    /// The journal entries it covers (its position).
    pub entries: u64,
    /// Its content's size.
    pub bytes: u64,
    /// How long encoding and writing it took (the locks held, the file synced).
    pub took: std::time::Duration,
}

/// What start-up found in the journal.
#[derive(Debug, Clone, Default)]
pub struct RiskRestore {
    /// Risk records replayed.
    pub records: u64,
    /// Decisions among them.
    pub decisions: u64,
    /// The journal entries risk control's snapshot covered, if a start loaded one (its decisions
    /// and labels were not re-applied: [`RiskRestore::skipped`]).
    pub snapshot_entries: Option<u64>,
    /// Records the snapshot carried (feature bounds, rulesets, the activation, lists, idempotency
    /// keys), applied instead of reading the journal before its position; 0 with a version-1
    /// snapshot or none.
    pub carried: u64,
    /// Journal entries the start read (from the snapshot's position, or from the beginning).
    pub entries_read: u64,
    /// Decisions and labels before the snapshot's position, skipped (not decoded).
    pub skipped: u64,
    /// Why a snapshot that exists was not used (the start then re-applied every record).
    pub snapshot_error: Option<String>,
    /// Where a start that re-applied many decisions saved a new snapshot, or why it could not.
    pub snapshot_written: Option<Result<SnapshotWritten, String>>,
    /// The active ruleset's version after start-up.
    pub active: String,
    /// The shadow ruleset's version, if one runs.
    pub shadow: Option<String>,
}

/// A durable-write receipt: resolves once the records are in the journal and fsync'd.
pub type Durable = tokio::sync::oneshot::Receiver<Result<u64, puhui_store::StoreError>>;

/// The file in a data directory where servers before bounds records
/// ([`puhui_risk::records::RECORD_FEATURE_LIMITS`]) wrote the feature store's bounds they last ran
/// with (`keys_max=N` and `events_per_key_max=N` lines): `puhui risk backtest` begins with them on
/// such a journal, until its first bounds record. No longer written.
pub const FEATURE_LIMITS_FILE: &str = "risk-feature-limits";

/// The bounds in `dir`'s [`FEATURE_LIMITS_FILE`] (the rest of [`FeatureLimits`] as default);
/// `Ok(None)` if there is no such file.
pub fn read_feature_limits(dir: &std::path::Path) -> Result<Option<FeatureLimits>, String> {
    let path = dir.join(FEATURE_LIMITS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let value = |name: &str| -> Result<usize, String> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|v| *v > 0 && *v < u32::MAX as usize)
            .ok_or_else(|| format!("{}: no valid {name}", path.display()))
    };
    Ok(Some(FeatureLimits {
        keys_max: value("keys_max")?,
        events_per_key_max: value("events_per_key_max")?,
        ..FeatureLimits::default()
    }))
}

/// Writes `text` to `dir/name` so that a crash leaves the old file or the new one, never a part.
fn write_durably(dir: &std::path::Path, name: &str, text: &str) -> Result<(), String> {
    use std::io::Write;
    let (path, tmp) = (dir.join(name), dir.join(format!("{name}.tmp")));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// The file in a data directory that holds its feature store's placement seed (16 hex digits).
pub const FEATURE_SEED_FILE: &str = "risk-feature-seed";

/// The feature store's placement seed of the data directory `dir` ([`FEATURE_SEED_FILE`]; see
/// `puhui_risk::FeatureStore::with_seed`): read, or with `create` made at random and written
/// durably (written, synced, renamed into place, directory synced) if there is none yet;
/// `Ok(None)` if there is none and `create` is false. Choice, over a seed fixed in the code or one
/// in the journal: it stays secret (clients choose the keys it places) and off the verifiable
/// journal partners read, and restarts and backtests of this directory place keys as it did.
pub fn feature_seed(dir: &std::path::Path, create: bool) -> Result<Option<u64>, String> {
    let path = dir.join(FEATURE_SEED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let digits = text.trim();
            let seed = (digits.len() == 16).then(|| u64::from_str_radix(digits, 16).ok()).flatten();
            return seed.map(Some).ok_or_else(|| {
                format!(
                    "{}: not a seed of 16 hex digits; restore the file from a backup of this directory \
                     (risk features are placed by it)",
                    path.display()
                )
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    use std::hash::{BuildHasher, Hasher};
    let seed = std::hash::RandomState::new().build_hasher().finish();
    write_durably(dir, FEATURE_SEED_FILE, &format!("{seed:016x}\n"))?;
    Ok(Some(seed))
}

fn hash64(id: &str) -> u64 {
    let h = blake3::hash(id.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::Ruleset(r) => {
            ApiError::invalid("invalid_ruleset", format!("the ruleset is invalid: {r}"), Some("text"))
        }
        ControlError::VersionConflict(_) => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "ruleset_version_conflict",
            e.to_string(),
        ),
        ControlError::UnknownVersion(_) => ApiError::not_found("ruleset", "version"),
        ControlError::Limit(_) => ApiError::invalid("limit_exceeded", e.to_string(), None),
        ControlError::InvalidList(_) => ApiError::invalid("invalid_list", e.to_string(), Some("name")),
    }
}

impl RiskService {
    /// Starts risk control on `store`: replays the journal's risk records, then makes sure a
    /// ruleset is active. `startup` is `--ruleset` (its text and the directory its model paths are
    /// relative to); without it the journal's active ruleset stays, or the starter ruleset is
    /// published and activated on a fresh data directory. The same pass over the journal restores
    /// the embedded store's `idempotency` keys (so that a start reads the journal once), and the
    /// risk snapshot carries them too: with one, the journal is read from its position on.
    pub fn open(
        store: Backend,
        startup: Option<(String, std::path::PathBuf)>,
        shared_features: Option<Arc<dyn puhui_risk::SharedFeatures>>,
        limits: FeatureLimits,
        idempotency: Option<Arc<crate::idempotency::IdempotencyCache>>,
    ) -> Result<(RiskService, RiskRestore), String> {
        let explicit = startup.is_some();
        if let Some(problem) =
            startup.as_ref().and_then(|(text, _)| puhui_risk::Ruleset::publish_problem(text))
        {
            return Err(format!("--ruleset: {problem}"));
        }
        let (text, models_dir) = startup.unwrap_or_else(|| {
            let models = store.data_dir().map_or_else(|| "models".into(), |d| d.join("models"));
            (STARTER_RULESET.to_string(), models)
        });
        // Parsed as journaled: the journal may hold this very text, published before a check it
        // fails existed. A text the journal does not hold is checked in full after the replay.
        let (mut controller, initial) =
            Controller::new_journaled(&text, &models_dir, limits).map_err(|e| e.to_string())?;
        // Before the replay: the node's feature placement seed, so that the replay evicts (past
        // `keys_max`) what the online run evicted. On PostgreSQL a node keeps no files: random.
        let mut seed_used = None;
        if let Some(dir) = store.data_dir() {
            if let Some(seed) = feature_seed(dir, true)? {
                controller.seed_features(seed);
                seed_used = Some(seed);
            }
        }
        // Before the replay: with shared features, replayed decisions are not recorded again.
        let shared = shared_features.is_some();
        controller.set_shared_features(shared_features);
        let mut state = RiskState { controller };
        let (seqs, seq_inbox) = std::sync::mpsc::sync_channel(SEQ_INBOX_MAX);
        let mut memory = Memory::new(seq_inbox);
        let mut restore = RiskRestore::default();
        // The snapshot, if one fits: decisions and labels before its position are in it, and, if
        // it carries the rest of the state there (version 2), the journal is read from there on.
        let mut skip_before = 0;
        let mut carried = None;
        if let (Some(dir), Some(seed), false) = (store.data_dir(), seed_used, shared) {
            let journal = dir.join(puhui_store::JOURNAL_FILE);
            match snapshot::load(dir, &journal, seed) {
                Ok(None) => {}
                Ok(Some(loaded)) => match state.controller.restore_features(loaded.features) {
                    Ok(()) => {
                        memory.restore(loaded.memory);
                        skip_before = loaded.position.entries;
                        restore.snapshot_entries = Some(skip_before);
                        carried = loaded.carried.map(|records| (loaded.position, records));
                    }
                    Err(_) => restore.snapshot_error = Some("the feature store is not empty".into()),
                },
                Err(e) => restore.snapshot_error = Some(e),
            }
        }
        let mut activated = false;
        let mut limits_journaled = false;
        let mut follow_next = 0;
        let mut text_journaled = false;
        let mut apply = |seq: u64, record_type: u8, timestamp_ns: u64, payload: &[u8]| {
            if !RiskRecord::knows(record_type) {
                if let Some(cache) = &idempotency {
                    cache.restore(record_type, timestamp_ns, payload);
                }
                return Ok(());
            }
            let applied = replay_record(
                &mut state.controller,
                &mut memory,
                &mut restore,
                skip_before,
                (seq, record_type, payload),
            )?;
            text_journaled |= matches!(&applied, Some(RiskRecord::Ruleset(r)) if r.text == text);
            activated |= matches!(applied, Some(RiskRecord::Activation(_)));
            limits_journaled |= matches!(applied, Some(RiskRecord::FeatureLimits(_)));
            Ok::<(), String>(())
        };
        let mut from = None;
        let mut carried_count = 0;
        if let Some((position, records)) = carried {
            for (record_type, timestamp_ns, payload) in &records {
                apply(position.entries, *record_type, *timestamp_ns, payload)
                    .map_err(|e| format!("applying the risk snapshot's state records: {e}"))?;
            }
            carried_count = records.len() as u64;
            follow_next = position.entries;
            from = Some(position);
        }
        // The embedded journal file (from the snapshot's position, or its beginning), or the SQL
        // journal table (in sequence order).
        let entries_read = Backend::scan_records(&store, from, |seq, record_type, timestamp_ns, payload| {
            follow_next = seq + 1;
            apply(seq, record_type, timestamp_ns, payload)
        })
        .map_err(|e| format!("replaying risk records: {e}"))?;
        restore.carried = carried_count;
        restore.entries_read = entries_read;
        if !text_journaled {
            // About to be published: the publish-time checks apply.
            puhui_risk::Ruleset::parse_in(&text, &models_dir).map_err(|e| format!("--ruleset: {e}"))?;
        }
        let mut records = Vec::new();
        if !activated {
            records = initial;
        } else {
            // The journal's activation stands. The ruleset given at start was only provisional:
            // unless the journal published it, it is forgotten, so that `--ruleset` below journals
            // its text (a restart without `--ruleset` must find it) and the default starter is not
            // listed as published when it never was.
            state.controller.drop_unjournaled_initial();
        }
        if activated && explicit {
            let (version, published) =
                state.controller.publish(&text).map_err(|e| format!("--ruleset: {e}"))?;
            records.extend(published);
            let shadow = state.controller.shadow().map(|e| e.ruleset().version.clone());
            records
                .extend(state.controller.activate(&version, shadow.as_deref()).map_err(|e| e.to_string())?);
        }
        // The feature bounds from here on, if they are not the journal's last (or it has none): a
        // replay (a restart, the checkpointer, a backtest) changes them here, as this run did.
        // Embedded store only: on PostgreSQL and with shared features each node's own store is
        // bounded apart, and nothing replays one node's features from the shared journal.
        if store.data_dir().is_some() && !shared {
            match state.controller.change_feature_limits(limits).map_err(|e| e.to_string())? {
                Some(changed) => records.push(changed),
                None if !limits_journaled => {
                    records.push(RiskRecord::FeatureLimits(puhui_risk::records::FeatureLimitsRecord {
                        keys_max: limits.keys_max as u64,
                        events_per_key_max: limits.events_per_key_max as u64,
                    }))
                }
                None => {}
            }
        }
        state.controller.confirm_initial();
        if !records.is_empty() {
            store.append_records(records.iter().map(to_store_record).collect()).map_err(|e| e.to_string())?;
        }
        restore.active = state.controller.active().ruleset().version.clone();
        restore.shadow = state.controller.shadow().map(|e| e.ruleset().version.clone());
        let lists = &Arc::clone(state.controller.lists());
        let reads_payer_balance = state.controller.reads_payer_balance();
        let service = RiskService {
            follow_next: Mutex::new(Following { next_seq: follow_next, caught_up_by: 0 }),
            catch_ups_begun: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(state),
            memory: Arc::new(Mutex::new(memory)),
            seqs,
            decider: OnceLock::new(),
            metrics: OnceLock::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
            records_in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            records_refused: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            records_queued: std::sync::atomic::AtomicU64::new(0),
            snapshot_entries: Arc::new(std::sync::atomic::AtomicU64::new(
                restore.snapshot_entries.unwrap_or(u64::MAX),
            )),
            checkpointer: Mutex::new(None),
            idempotency,
            feature_seed: seed_used.filter(|_| !shared),
            feature_limits: limits,
            decides_on_committer: !store.is_postgres() && !shared,
            lists: Arc::clone(lists),
            reads_payer_balance,
            store,
        };
        // A long replay, or a snapshot without the state records that spare the next start the
        // journal before its position (version 1): a new snapshot before serving.
        let upgrade = restore.snapshot_entries.is_some() && carried_count == 0;
        if restore.decisions >= SNAPSHOT_AFTER_DECISIONS || upgrade {
            restore.snapshot_written = service.write_snapshot().transpose();
        }
        Ok((service, restore))
    }

    /// Saves the velocity features and the decision memory at the journal's durable end
    /// (`DATA_DIR/risk-snapshot.phs`, atomically), so that the next start re-applies only the
    /// decisions journaled after it. Call it only when nothing is being decided (at a clean stop
    /// once the store has shut down, or before serving): the snapshot must hold exactly the records
    /// before its position. `Ok(None)` where there is nothing to save (PostgreSQL, shared
    /// features, nothing journaled since the snapshot on disk).
    pub fn write_snapshot(&self) -> Result<Option<SnapshotWritten>, String> {
        // One writer of the file at a time (and the checkpointer's copy is no longer needed).
        drop(self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()).take());
        let started = std::time::Instant::now();
        let Backend::Embedded(store) = &self.store else { return Ok(None) };
        let state = self.lock();
        if state.controller.shared_stats().is_some() {
            return Ok(None);
        }
        if store.is_poisoned() {
            return Err("the store failed a write: its journal may lack what risk control holds".into());
        }
        if self.records_refused.load(std::sync::atomic::Ordering::Acquire) {
            return Err("a decision's record was refused by the journal after the decision was counted \
                        (the store stopping): the next start re-applies the journal instead"
                .into());
        }
        let memory = self.mem();
        let in_flight = self.records_in_flight.load(std::sync::atomic::Ordering::Acquire);
        if in_flight > 0 || !memory.deciding.is_empty() {
            return Err(format!("decisions are in flight ({in_flight} records on their way to the journal)"));
        }
        let position = store.position();
        let on_disk = &self.snapshot_entries;
        if on_disk.load(std::sync::atomic::Ordering::Acquire) == position.entries {
            return Ok(None);
        }
        let carried = state_records(&state.controller, self.idempotency.as_deref());
        let content = snapshot::encode(state.controller.features(), &memory, &carried);
        let bytes = content.len() as u64;
        puhui_journal::snapshot::write_snapshot_file(
            store.data_dir(),
            RISK_SNAPSHOT_FILE,
            &position,
            &[content],
        )
        .map_err(|e| format!("writing {RISK_SNAPSHOT_FILE}: {e}"))?;
        on_disk.store(position.entries, std::sync::atomic::Ordering::Release);
        Ok(Some(SnapshotWritten { entries: position.entries, bytes, took: started.elapsed() }))
    }

    /// Starts the checkpointer (`risk/checkpoint.rs`): a thread at idle priority that re-applies the
    /// journal's durable risk records to its own copy of the features and the memory and writes the
    /// risk snapshot from it under `policy`, so that a start after a crash re-applies only what came
    /// after. Nothing is started on PostgreSQL, with shared features, or with
    /// `policy.every_records` 0. It stops when a snapshot is written at a stop, or with the service.
    pub fn start_checkpoints(&self, policy: CheckpointPolicy) -> Result<(), String> {
        let (Backend::Embedded(store), Some(seed)) = (&self.store, self.feature_seed) else { return Ok(()) };
        if policy.every_records == 0 {
            return Ok(());
        }
        let started = checkpoint::start(checkpoint::Setup {
            store: Arc::downgrade(store),
            dir: store.data_dir().to_path_buf(),
            seed,
            limits: self.feature_limits,
            policy,
            snapshot_entries: Arc::clone(&self.snapshot_entries),
            live: Arc::downgrade(&self.memory),
        })
        .map_err(|e| format!("starting the risk checkpointer: {e}"))?;
        *self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(())
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.take_seqs();
        memory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues records for the journal (call with the lock held, so that order is kept).
    fn journal(&self, records: &[RiskRecord]) -> Result<Durable, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.submit_records(
            records.iter().map(to_store_record).collect(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        self.records_queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(rx)
    }

    /// Whether the active or the shadow ruleset reads the payer's balance (`payer_balance`): a
    /// transfer's event then carries it ([`puhui_risk::records::EventRecord::payer_balance_minor`]).
    pub fn reads_payer_balance(&self) -> bool {
        self.reads_payer_balance.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many records were queued with the controller's lock held so far (pass it to
    /// [`RiskService::decide_deferred`] when its job is queued).
    pub fn records_queued(&self) -> u64 {
        self.records_queued.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Decides an event (active ruleset, and the shadow one if any), journals the decision and, if
    /// `record` and not declined, records the event in the velocity features. The caller must await
    /// the receipt before telling the client (an inline decision's transfer, queued after it,
    /// becomes durable in the same or a later group, so awaiting the transfer is enough).
    ///
    /// Blocking, so never on the async runtime (it runs on the decider thread or a blocking-pool
    /// thread): with [`DECISION_RECORDS_IN_FLIGHT_MAX`] decision records waiting for the journal,
    /// or its queue full (a big batch's decisions arrive faster than group commits drain them), it
    /// waits for room for up to [`JOURNAL_ROOM_WAIT_MS`] instead of refusing the decision at once.
    fn decide(&self, item: ToDecide) -> DecisionResult {
        let fence = item.fence.clone();
        self.decide_locked(self.lock(), item, true, |record, reply| {
            self.store.submit_records_fenced(vec![record], fence.clone(), reply)
        })
    }

    /// Whether single transfers are decided on the committer thread
    /// ([`RiskService::decide_deferred`]) rather than handed to the decider thread.
    pub fn decides_on_committer(&self) -> bool {
        self.decides_on_committer
    }

    /// `RiskService::decide` on the embedded store's committer thread, in its group commit: the
    /// decision record is given back with its reply instead of queued, for the committer to
    /// journal at once, and it takes no in-flight place (it never waits in the queue). `Err` gives
    /// the item back undecided if another thread holds the controller (the decider, deciding a
    /// batch: the committer never waits for it, since that thread may be waiting for room in the
    /// committer's queue), or if a record was queued with the lock since the job was
    /// (`queued_before`, [`RiskService::records_queued`] then): that record is behind the job in the
    /// queue, and this decision, made after it, must not be journaled before it (the journal's
    /// order is the decisions' order, which replays and backtests follow). Choice, over the decider thread for every decision: a single
    /// transfer then costs the same wake-ups as one without risk control (runtime → committer →
    /// runtime); the decider's hand-over made the same HTTP code cost more on two cores (+11 to
    /// +32 % decided transfers/s, docs/BENCHMARKS.md).
    pub fn decide_deferred(
        &self,
        item: ToDecide,
        queued_before: u64,
    ) -> Result<(DecisionResult, Option<StashedRecord>), ToDecide> {
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(item),
        };
        if self.records_queued() != queued_before {
            return Err(item);
        }
        let mut stashed = None;
        let decided = self.decide_locked(state, item, false, |record, reply| {
            puhui_store::check_records(std::slice::from_ref(&record))?;
            stashed = Some((record, reply));
            Ok(())
        });
        Ok((decided, stashed))
    }

    /// Decides with the controller's lock `state` held, and hands the record to `submit` (which
    /// may refuse with [`puhui_store::StoreError::Overloaded`]: then, for up to
    /// [`JOURNAL_ROOM_WAIT_MS`], it is offered again); with `limit_in_flight`, it first takes one of
    /// the [`DECISION_RECORDS_IN_FLIGHT_MAX`] places.
    fn decide_locked(
        &self,
        mut state: std::sync::MutexGuard<'_, RiskState>,
        item: ToDecide,
        limit_in_flight: bool,
        mut submit: impl FnMut(Record, puhui_store::Reply<u64>) -> Result<(), puhui_store::StoreError>,
    ) -> DecisionResult {
        let ToDecide { id, source, event, record, fence: _ } = item;
        let decision = state.controller.decide_record(id, source, event, record);
        let (record_type, payload) = decision.encode();
        let kept: Box<[u8]> = payload.as_slice().into();
        let key: Arc<str> = Arc::from(decision.id.as_str());
        let mut payload = Some(payload);
        let mut waited_since = None;
        let receipt = loop {
            let slot = match limit_in_flight {
                true => RecordSlot::take(&self.records_in_flight).map(Some),
                false => Some(None),
            };
            let submitted = match slot {
                None => Err(puhui_store::StoreError::Overloaded),
                Some(slot) => {
                    let (tx, receipt) = tokio::sync::oneshot::channel();
                    let (seqs, seq_id) = (self.seqs.clone(), Arc::clone(&key));
                    let refused = Arc::clone(&self.records_refused);
                    // A refused submission dropped the record: a retry journals the kept copy.
                    let payload = payload.take().unwrap_or_else(|| kept.to_vec());
                    submit(
                        Record { record_type, payload },
                        Box::new(move |r| {
                            // On the committer thread, once durable (or failed): the entry's
                            // place in the journal (for proofs), handed over without waiting
                            // (full: the position is not shown, which only happens if
                            // decisions stop being made while thousands are in flight).
                            drop(slot);
                            match &r {
                                Ok(seq) => {
                                    let _ = seqs.try_send((seq_id, *seq));
                                }
                                Err(_) => refused.store(true, std::sync::atomic::Ordering::Release),
                            }
                            let _ = tx.send(r);
                        }),
                    )
                    .map(|()| {
                        if limit_in_flight {
                            self.records_queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        receipt
                    })
                }
            };
            match submitted {
                Ok(receipt) => break receipt,
                Err(e) => {
                    let waiting = waited_since.get_or_insert_with(std::time::Instant::now).elapsed()
                        < std::time::Duration::from_millis(JOURNAL_ROOM_WAIT_MS);
                    if !(waiting && matches!(e, puhui_store::StoreError::Overloaded)) {
                        return Err(e.into());
                    }
                    // With the lock held: the next decision must not overtake this one.
                    std::thread::sleep(std::time::Duration::from_micros(JOURNAL_ROOM_POLL_US));
                }
            }
        };
        if waited_since.is_some() {
            metrics::counter!("puhui_decisions_waited_for_journal_total").increment(1);
        }
        // Only once the record is queued does the event enter the features (replay does the same).
        state.controller.commit_decision(&decision);
        drop(state);
        self.metrics.get_or_init(DecisionMetrics::new).count(&decision);
        let declined_transfer =
            decision.source == DecisionSource::Transfer && decision.active.outcome == Outcome::Decline;
        let mut decided = Decided::of(decision);
        let mut memory = self.mem();
        decided.review_queued = memory.remember(key, kept, decided.review(), true, declined_transfer);
        if decided.review.is_some() {
            reviews_open(&memory.reviews);
        }
        drop(memory);
        Ok((decided, receipt))
    }

    /// `RiskService::decide` on the decider thread: the requests' threads hand their decisions
    /// over and await them. Choice, over deciding on each request's thread: decisions are made one
    /// at a time anyway (the controller's lock orders them), so one thread making them loses
    /// nothing, while the runtime threads go on with HTTP work instead of deciding (or waiting for
    /// the lock, or for a shared feature store's load) in the middle of it. Order is kept: the record
    /// is queued for the journal before the reply, so a transfer queued after the reply follows
    /// its decision. With [`DECISIONS_QUEUED_MAX`] decisions waiting or the thread gone, the
    /// decisions are made on a blocking-pool thread: a decision never waits without bound.
    pub async fn decide_queued(self: &Arc<Self>, item: ToDecide) -> DecisionResult {
        let mut decided = self.decide_queued_many(vec![item]).await;
        decided.pop().expect("one result per item")
    }

    /// [`RiskService::decide_queued`], then `then` on the deciding thread right after the
    /// decision; `then` answers the request (a transfer queues its posting there, behind its
    /// decision record, and answers once the posting is durable). Dropped unrun if risk control
    /// stops. Choice, over answering at once and posting from the request's thread: the request
    /// wakes once instead of twice, and its decision record and posting reach the journal's queue
    /// together, so they share a group commit (handed over apart, a group often began between
    /// them and the request waited for two).
    pub fn decide_then(self: &Arc<Self>, item: ToDecide, then: Then) {
        self.hand_over(DecideJob { items: vec![item], answer: JobAnswer::Then(then) });
    }

    /// [`RiskService::decide_queued`] for several events, decided one after another in this order
    /// with one hand-over (a batch's items): one result per item.
    pub async fn decide_queued_many(self: &Arc<Self>, items: Vec<ToDecide>) -> Vec<DecisionResult> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let count = items.len();
        self.hand_over(DecideJob { items, answer: JobAnswer::Reply(reply) });
        answer.await.unwrap_or_else(|_| stopped(count))
    }

    /// Queues `job` for the decider thread, or, with [`DECISIONS_QUEUED_MAX`] decisions waiting or
    /// the thread gone, runs it on a blocking-pool thread of its own, which, like the decider,
    /// waits for room in the journal's queue: the runtime thread stays free for HTTP work, and a
    /// burst of big batches is slowed rather than refused (before, such items were decided on the
    /// runtime thread without waiting and failed with 503 whenever the decider's own batches had
    /// filled the journal's queue).
    fn hand_over(self: &Arc<Self>, job: DecideJob) {
        use std::sync::atomic::Ordering::Relaxed;
        let count = job.items.len();
        let job = if self.queued.fetch_add(count, Relaxed) + count > DECISIONS_QUEUED_MAX {
            self.queued.fetch_sub(count, Relaxed);
            job
        } else {
            let queue = self.decider.get_or_init(|| start_decider(Arc::downgrade(self)));
            match queue.try_send(job) {
                Ok(()) => return,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    self.queued.fetch_sub(count, Relaxed);
                    job
                }
            }
        };
        metrics::counter!("puhui_risk_decided_unqueued_total").increment(count as u64);
        let this = Arc::clone(self);
        // Detached: the job answers through its own reply, as on the decider thread.
        drop(tokio::task::spawn_blocking(move || this.run_job(job)));
    }

    /// Decides a job's items in order and answers it (through its `then` if it has one).
    fn run_job(&self, job: DecideJob) {
        let decided = self.decide_all(job.items);
        match job.answer {
            JobAnswer::Then(then) => {
                then(decided.into_iter().next().expect("a job with `then` has one item"))
            }
            // The requester may have gone (a closed connection); the decisions stand.
            JobAnswer::Reply(reply) => drop(reply.send(decided)),
        }
    }

    /// Decides `items` in order, blocking ([`RiskService::decide`]).
    fn decide_all(&self, items: Vec<ToDecide>) -> Vec<DecisionResult> {
        items.into_iter().map(|t| self.decide(t)).collect()
    }

    /// On PostgreSQL: applies the risk records journaled since the last look (by other nodes, and
    /// this node's own, which change nothing twice) — blocking. Returns how many were read.
    pub fn catch_up(&self) -> Result<u64, String> {
        self.catch_up_after(None)
    }

    /// [`RiskService::catch_up`], in passes of [`FOLLOW_RECORDS_MAX`] records until the journal's
    /// end (at most [`CATCH_UP_PASSES_MAX`] passes); with `Some(ticket)` (a value of
    /// `catch_ups_begun` read earlier), nothing if a catch-up begun after it has reached the end
    /// meanwhile: that one read everything journaled before the ticket was taken. Concurrent
    /// requests thus share catch-ups: about one query per burst, not one per request.
    fn catch_up_after(&self, ticket: Option<u64>) -> Result<u64, String> {
        let Backend::Postgres(pg) = &self.store else { return Ok(0) };
        let mut following = self.follow_next.lock().unwrap_or_else(|p| p.into_inner());
        if ticket.is_some_and(|t| following.caught_up_by > t) {
            return Ok(0);
        }
        let number = self.catch_ups_begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let Following { next_seq: next, caught_up_by } = &mut *following;
        let mut total = 0;
        for _ in 0..CATCH_UP_PASSES_MAX {
            let read = pg.scan_records_from(
                *next,
                FOLLOW_RECORDS_MAX,
                |seq, record_type, _timestamp_ns, payload| {
                    *next = seq + 1;
                    if !RiskRecord::knows(record_type) {
                        return Ok(());
                    }
                    match RiskRecord::decode(record_type, payload) {
                        Ok(record) => self.follow(seq, record),
                        Err(e) => {
                            tracing::warn!(seq, error = %e, "skipping a risk record this node cannot read")
                        }
                    }
                    Ok(())
                },
            )?;
            total += read;
            if read < FOLLOW_RECORDS_MAX {
                *caught_up_by = number;
                break;
            }
        }
        Ok(total)
    }

    fn follow(&self, seq: u64, record: RiskRecord) {
        match record {
            RiskRecord::Decision(d) => {
                // Only remembered: velocity features stay per node (or in Redis). A decision this
                // node made, or one already resolved here, is known and left alone.
                let mut memory = self.mem();
                let id: Arc<str> = Arc::from(d.id.as_str());
                if !memory.decisions.contains_key(&id) && !memory.forgotten.contains(hash64(&id)) {
                    memory.remember_record(&d);
                }
                memory.set_seq(&id, seq);
            }
            RiskRecord::Label(l) => self.mem().label(&l),
            control => {
                if let Err(e) = self.lock().controller.apply(&control) {
                    tracing::warn!(seq, error = %e, "a risk record from another node did not apply here");
                }
            }
        }
    }

    /// `look`, and on PostgreSQL once more after catching up if it found nothing (what another
    /// node acknowledged is then visible here).
    pub async fn look_caught_up<T>(self: &Arc<Self>, look: impl Fn(&RiskService) -> Option<T>) -> Option<T> {
        if let Some(found) = look(self) {
            return Some(found);
        }
        if !self.store.is_postgres() {
            return None;
        }
        self.caught_up().await;
        look(self)
    }

    /// On PostgreSQL: reads the risk records other nodes journaled until now (one query), so that
    /// what they acknowledged before this request arrived — a decline under an id, a hold put
    /// under review — holds here too, not only after the next follower pass (~100 ms). Nothing to
    /// do on the embedded store. A failure is logged: the request goes on with what is known.
    pub async fn caught_up(self: &Arc<Self>) {
        if !self.store.is_postgres() {
            return;
        }
        let ticket = self.catch_ups_begun.load(std::sync::atomic::Ordering::SeqCst);
        let me = Arc::clone(self);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.catch_up_after(Some(ticket))).await {
            tracing::warn!(error = %e, "catching up with the risk records");
        }
    }

    /// On PostgreSQL: locks transfer or decision ids `ids` (scoped) across nodes, then catches up
    /// ([`RiskService::caught_up`]; only that with no ids); held until the guard is dropped (once
    /// the decisions are durable, or for a transfer without a risk context once it is posted). Another node deciding under one of these ids at the same moment waits, then reads
    /// this node's decision and answers with it, and the other way round: without it, a transfer
    /// sent to two nodes at once was declined by one and posted by the other. Nothing on the
    /// embedded store (one process: [`RiskService::begin_deciding`] is enough). See
    /// `puhui_store_pg::locks` for how (one connection and one round trip for all the requests
    /// waiting at a time).
    pub async fn lock_across_nodes<'a>(
        self: &Arc<Self>,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<puhui_store_pg::DecisionLock>, ApiError> {
        let Backend::Postgres(pg) = &self.store else { return Ok(None) };
        let keys: Vec<u64> = ids.into_iter().map(hash64).collect();
        if keys.is_empty() {
            // Nothing decided here: only what other nodes decided counts.
            self.caught_up().await;
            return Ok(None);
        }
        let (reply, locked) = tokio::sync::oneshot::channel();
        pg.lock_decisions(keys, move |r| {
            // The request gone: the guard is dropped with the message, which lets go.
            let _ = reply.send(r);
        })?;
        let stopped = || ApiError::from(puhui_store::StoreError::Unavailable("the ledger stopped".into()));
        let lock = locked.await.map_err(|_| stopped())??;
        self.caught_up().await;
        Ok(Some(lock))
    }

    /// Runs an admin change (publish, activate, list change): `change` applies it and queues its
    /// record; this returns once the record is durable. On PostgreSQL the change runs under a
    /// database-wide lock after catching up, so changes from different nodes are linearizable.
    pub async fn admin_change<T: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&RiskService) -> Result<(T, Option<Durable>), ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let Backend::Postgres(pg) = &self.store else {
            let (value, receipt) = change(self)?;
            if let Some(receipt) = receipt {
                durable(receipt).await?;
            }
            return Ok(value);
        };
        let (me, pg) = (Arc::clone(self), Arc::clone(pg));
        let stopped = || ApiError::from(puhui_store::StoreError::Unavailable("the ledger stopped".into()));
        tokio::task::spawn_blocking(move || {
            pg.exclusive(ADMIN_LOCK_KEY, || {
                me.catch_up().map_err(|e| ApiError::from(puhui_store::StoreError::Io(e)))?;
                let (value, receipt) = change(&me)?;
                if let Some(receipt) = receipt {
                    receipt.blocking_recv().map_err(|_| stopped())??;
                }
                Ok(value)
            })
        })
        .await
        .map_err(|_| stopped())??
    }

    /// A remembered decision.
    pub fn decision(&self, id: &str) -> Option<DecisionObject> {
        let (record, label, journal_seq) = {
            let memory = self.mem();
            let r = memory.decisions.get(id)?;
            (r.record.clone(), r.label, r.journal_seq)
        };
        // Remembered records were encoded here, so they decode.
        let mut object = to_object(puhui_risk::records::binary::decode(&record).ok()?);
        object.label = label.map(|l| label_str(l).to_string());
        object.journal_seq = journal_seq;
        Some(object)
    }

    /// Whether `id` (scoped) names a transfer risk control declined, whose decision is older than
    /// the [`DECISIONS_KEPT_MAX`] kept in memory: its retry is declined again.
    pub fn declined_long_ago(&self, id: &str) -> bool {
        self.mem().declined_and_forgotten(id)
    }

    /// Where the record of a decision no longer in memory is in the journal, and its label
    /// (`None`: the decision is in memory, was never made here, or its place was not kept).
    pub fn forgotten_decision(&self, id: &str) -> Option<(u64, Option<Label>)> {
        let hash = hash64(id);
        let memory = self.mem();
        if memory.decisions.contains_key(id) {
            return None;
        }
        let forgotten = memory.forgotten.get(hash)?;
        Some((forgotten.journal_seq?, forgotten.label))
    }

    /// Whether `id` (scoped) names a transfer held for review whose decision is no longer in
    /// memory (remembered as a hash, up to [`DECISION_IDS_KEPT_MAX`]).
    pub fn reviewed_long_ago(&self, id: &str) -> bool {
        if self.mem().forgotten.len() == 0 {
            return false;
        }
        // Hashed outside the lock, which decisions take.
        let hash = hash64(id);
        self.mem().reviewed_and_forgotten(id, hash)
    }

    /// Whether a decision under `id` (scoped) was made, though it is no longer in memory (ids are
    /// remembered as hashes, up to [`DECISION_IDS_KEPT_MAX`]; the id is hashed only once some are).
    pub fn decided_long_ago(&self, id: &str) -> bool {
        if self.mem().forgotten.len() == 0 {
            return false;
        }
        // Hashed outside the lock, which decisions take.
        let hash = hash64(id);
        let memory = self.mem();
        !memory.decisions.contains_key(id) && memory.forgotten.contains(hash)
    }

    /// The remembered record of decision `id` (scoped), with its event.
    pub fn decision_record(&self, id: &str) -> Option<DecisionRecord> {
        let record = self.mem().decisions.get(id)?.record.clone();
        puhui_risk::records::binary::decode(&record).ok()
    }

    /// Queues the review of the held transfer `id` (scoped) if the queue has room for it (bounded
    /// in all and per tenant, checked and queued under one lock): whether it is queued (also when
    /// it already was). A transfer whose review is not queued must not be held.
    pub fn try_queue_review(&self, id: &str, review: ReviewObject) -> bool {
        let mut memory = self.mem();
        let queued = memory.reviews.insert_within_bounds(id, review);
        reviews_open(&memory.reviews);
        queued
    }

    /// Queues a held transfer for review, whatever the bounds: for a review taken out of the queue
    /// and put back (its room was its own), or one whose hold was just recorded.
    pub fn queue_review(&self, id: &str, review: ReviewObject) {
        let mut memory = self.mem();
        memory.reviews.insert(id.to_string(), review);
        reviews_open(&memory.reviews);
    }

    /// The scoped ids of every open review, in id order (what start-up checks against the ledger:
    /// a replay queues every review the journal holds, including those resolved since).
    pub fn review_ids(&self) -> Vec<String> {
        self.mem().reviews.by_id.keys().cloned().collect()
    }

    /// Marks transfer ids (scoped) as taken by one request until the guard is dropped (at its
    /// answer), or, if another request holds one of them, 409 `request_in_progress` naming its
    /// index. Two requests under one id must not race: one declined by risk control while the other
    /// (with another context, or none) is posted. Hashes are kept, not the ids (a batch takes
    /// thousands; a collision only makes a retry necessary).
    pub fn begin_deciding<'a>(
        self: &Arc<Self>,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Deciding, (usize, ApiError)> {
        let mut taken: Vec<u64> = Vec::new();
        let mut memory = self.mem();
        for (i, id) in ids.into_iter().enumerate() {
            let hash = deciding_hash(id);
            if memory.deciding.insert(hash) {
                taken.push(hash);
            } else if !taken.contains(&hash) {
                for h in &taken {
                    memory.deciding.remove(h);
                }
                return Err((i, request_in_progress()));
            }
        }
        drop(memory);
        Ok(Deciding { risk: Arc::clone(self), ids: taken })
    }

    /// Of `(transfer id, pending id)` pairs (scoped), the indices of those whose transfer id has a
    /// decision (remembered, or older than the memory) or whose pending id is a hold under review:
    /// the only ones a batch must look at more closely (one lock for all). Once decisions have
    /// been forgotten, each id's hash is taken too, before the lock (taken under it, batches
    /// measured ~4 % slower; before it, within the noise: docs/BENCHMARKS.md, "A twenty-fourth
    /// machine").
    pub fn known_items<'a>(&self, items: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> Vec<usize> {
        let items: Vec<_> = items.collect();
        let hashes: Vec<u64> = match self.mem().forgotten.len() > 0 {
            true => items.iter().map(|(id, _)| hash64(id)).collect(),
            false => Vec::new(),
        };
        let memory = self.mem();
        items
            .iter()
            .enumerate()
            .filter(|(i, (id, pending))| {
                memory.decisions.contains_key(*id)
                    || pending.is_some_and(|p| memory.reviews.contains_key(p))
                    || hashes.get(*i).is_some_and(|h| memory.forgotten.contains(*h))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether `id` (scoped) is a hold waiting in the review queue.
    pub fn is_under_review(&self, id: &str) -> bool {
        self.mem().reviews.contains_key(id)
    }

    /// The error for posting a hold that waits for review other than by approving it.
    pub fn under_review(param: &str) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "under_review",
                "the transfer is held for risk review: approve it (POST /v1/risk/reviews/{id}/approve) \
                 or void it",
            )
        }
    }

    /// Takes an open review out of the queue.
    pub fn take_review(&self, id: &str) -> Option<ReviewObject> {
        let mut memory = self.mem();
        let taken = memory.reviews.remove(id);
        reviews_open(&memory.reviews);
        taken
    }

    /// A tenant's open reviews (up to `limit`, in id order, after the scoped id `after` if given) and
    /// whether there are more.
    pub fn reviews(&self, tenant: &str, after: Option<&str>, limit: usize) -> (Vec<ReviewObject>, bool) {
        self.mem().reviews.page(tenant, after, limit)
    }

    /// Confirms the events recorded in shared features (Redis records without waiting), so that
    /// none sent just before the node stops is lost; blocking (a record timeout at most).
    pub fn confirm_shared(&self) {
        if let Err(e) = self.lock().controller.confirm_shared() {
            tracing::warn!(error = %e, "events recorded just before stopping may be missing from the shared features");
        }
    }

    /// The active ruleset's version.
    pub fn version(&self) -> String {
        self.lock().controller.active().ruleset().version.clone()
    }
}

/// Starts the decider thread: it decides queued jobs in arrival order until the service is dropped
/// (its queue's sender goes with it).
fn start_decider(service: Weak<RiskService>) -> SyncSender<DecideJob> {
    // Bounded by the decisions queued (`RiskService::queued`); a job holds at least one.
    let (queue, jobs) = std::sync::mpsc::sync_channel::<DecideJob>(DECISIONS_QUEUED_MAX);
    let spawned = std::thread::Builder::new().name("puhui-risk".into()).spawn(move || {
        while let Ok(job) = jobs.recv() {
            let Some(service) = service.upgrade() else { return };
            let count = job.items.len();
            let waiting = service.queued.load(std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("puhui_risk_decisions_queued").set(waiting as f64);
            service.run_job(job);
            service.queued.fetch_sub(count, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if let Err(e) = spawned {
        // The queue's receiver went with the closure: every caller decides on a blocking thread.
        tracing::warn!(error = %e, "no risk decider thread; deciding on blocking-pool threads");
    }
    queue
}

/// One of the [`DECISION_RECORDS_IN_FLIGHT_MAX`] places for a decision record on its way to the
/// journal, given back when dropped: with the completion callback once the record is durable or
/// has failed, or with a refused submission (which drops the callback unrun).
struct RecordSlot(Arc<std::sync::atomic::AtomicUsize>);

impl RecordSlot {
    /// A place, or `None` with all of them taken.
    fn take(in_flight: &Arc<std::sync::atomic::AtomicUsize>) -> Option<RecordSlot> {
        let slot = RecordSlot(Arc::clone(in_flight));
        (in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel) < DECISION_RECORDS_IN_FLIGHT_MAX)
            .then_some(slot)
    }
}

impl Drop for RecordSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a risk snapshot carries besides the features and the memory: the records that rebuild
/// `controller`'s feature bounds, rulesets, activation and lists, then `idempotency`'s keys.
fn state_records(
    controller: &Controller,
    idempotency: Option<&crate::idempotency::IdempotencyCache>,
) -> Vec<snapshot::Carried> {
    let mut carried: Vec<snapshot::Carried> = controller
        .state_records()
        .iter()
        .map(|r| {
            let (record_type, payload) = r.encode();
            (record_type, 0, payload)
        })
        .collect();
    carried.extend(idempotency.map(|cache| cache.carried_records()).unwrap_or_default());
    carried
}

fn to_store_record(r: &RiskRecord) -> Record {
    let (record_type, payload) = r.encode();
    Record { record_type, payload }
}

/// The review of a decided held transfer (or of a remembered decision, [`DecisionObject`]).
pub fn review_of(decision: &DecisionObject) -> ReviewObject {
    ReviewObject {
        object: "review",
        id: decision.id.clone(),
        score: decision.score,
        reasons: decision.fired.iter().flat_map(|f| f.reasons.iter().cloned()).collect(),
        ruleset_version: decision.ruleset_version.clone(),
    }
}

/// A review for tests, of the held transfer `id` (unscoped).
#[cfg(test)]
pub(crate) fn test_review(id: &str) -> ReviewObject {
    ReviewObject {
        object: "review",
        id: id.into(),
        score: 60,
        reasons: Vec::new(),
        ruleset_version: "v".into(),
    }
}

pub(crate) fn review_of_record(d: &DecisionRecord) -> ReviewObject {
    ReviewObject {
        object: "review",
        id: unscoped(&d.id).to_string(),
        score: d.active.score,
        reasons: reasons_of(&d.active),
        ruleset_version: d.active.ruleset_version.clone(),
    }
}

/// Re-applies one journaled risk record `(seq, record_type, payload)` to `controller` and
/// `memory`, counting it in `restore`, as a start does and the checkpointer after it
/// ([`checkpoint`]): a decision or label before `skip_before` (the loaded snapshot's position) is in
/// the snapshot already and is skipped undecoded. Returns the record if it is a ruleset, an
/// activation, a list change or a label (decisions and skipped records are not given back).
///
/// A binary decision is read as its head ([`puhui_risk::records::binary::decode_head`]: id, event,
/// outcome) and remembered as its journaled bytes, which are what the online memory keeps; only a
/// held transfer's is decoded in full, for its review. Choice, over decoding and re-encoding every
/// decision: the verdicts' fired rules and feature values are most of a record, and a start or
/// the checkpointer needs none of them (a third of the re-apply's CPU time went to them).
fn replay_record(
    controller: &mut Controller,
    memory: &mut Memory,
    restore: &mut RiskRestore,
    skip_before: u64,
    (seq, record_type, payload): (u64, u8, &[u8]),
) -> Result<Option<RiskRecord>, String> {
    use puhui_risk::records::{binary, RECORD_DECISION, RECORD_DECISION_BINARY, RECORD_LABEL};
    if seq < skip_before && matches!(record_type, RECORD_DECISION | RECORD_DECISION_BINARY | RECORD_LABEL) {
        restore.skipped += 1;
        return Ok(None);
    }
    restore.records += 1;
    if record_type == RECORD_DECISION_BINARY {
        let head = binary::decode_head(payload).map_err(|e| format!("entry {seq}: {e}"))?;
        restore.decisions += 1;
        controller.apply_observed(head.observed, &head.event);
        let transfer = head.source == DecisionSource::Transfer;
        let review = match transfer && head.outcome == Outcome::Review {
            true => {
                Some(review_of_record(&binary::decode(payload).map_err(|e| format!("entry {seq}: {e}"))?))
            }
            false => None,
        };
        let id: Arc<str> = Arc::from(head.id);
        memory.remember(
            Arc::clone(&id),
            payload.into(),
            review,
            false,
            transfer && head.outcome == Outcome::Decline,
        );
        memory.set_seq(&id, seq);
        return Ok(None);
    }
    let record = RiskRecord::decode(record_type, payload).map_err(|e| format!("entry {seq}: {e}"))?;
    controller.apply(&record).map_err(|e| format!("entry {seq}: {e}"))?;
    match &record {
        RiskRecord::Decision(d) => {
            restore.decisions += 1;
            let id: Arc<str> = Arc::from(d.id.as_str());
            memory.remember_record(d);
            memory.set_seq(&id, seq);
            return Ok(None);
        }
        RiskRecord::Label(l) => memory.label(l),
        RiskRecord::Activation(_)
        | RiskRecord::Ruleset(_)
        | RiskRecord::List(_)
        | RiskRecord::FeatureLimits(_) => {}
    }
    Ok(Some(record))
}

impl Memory {
    /// An empty memory taking journal positions from `seq_inbox`, sized at start so that its map
    /// never grows (and rehashes, ~15 MB) under its lock: at twice its bound. Sized for the bound
    /// alone, the map filled with the tombstones of forgotten decisions and doubled once, near the
    /// 150,000th decision: a 21 ms pause of the deciding thread (and so of every write) in a
    /// stand-alone test of the same churn (`DECISIONS_MAP_SLOTS`).
    fn new(seq_inbox: Receiver<(Arc<str>, u64)>) -> Memory {
        Memory {
            decisions: HashMap::with_capacity(DECISIONS_MAP_SLOTS),
            early_seqs: HashMap::new(),
            order: VecDeque::with_capacity(DECISIONS_KEPT_MAX + 1),
            seq_inbox,
            forgotten: ForgottenIds::new(),
            reviews: Reviews::default(),
            deciding: HashSet::new(),
        }
    }

    /// Keeps a decision (its binary record) for `GET /v1/decisions/{id}` (bounded) and, for an
    /// inline review, queues `review`: within the queue's bounds if `bounded` (a decision made
    /// now: whether it was queued is returned), in any case otherwise (a decision replayed from
    /// the journal, whose hold may still be open; those whose hold is gone leave at start-up,
    /// [`RiskService::review_ids`], and as they are listed).
    fn remember(
        &mut self,
        scoped_id: Arc<str>,
        record: Box<[u8]>,
        review: Option<ReviewObject>,
        bounded: bool,
        declined_transfer: bool,
    ) -> bool {
        // Almost always empty: no hash of the id then.
        let journal_seq = match self.early_seqs.is_empty() {
            true => None,
            false => self.early_seqs.remove(&scoped_id),
        };
        let reviewed_transfer = review.is_some();
        let review_queued = match review {
            None => false,
            Some(review) if bounded => self.reviews.insert_within_bounds(&scoped_id, review),
            Some(review) => {
                self.reviews.insert(scoped_id.to_string(), review);
                true
            }
        };
        // One lookup: a decision remembered again (a replay) keeps the label it was given.
        match self.decisions.entry(Arc::clone(&scoped_id)) {
            std::collections::hash_map::Entry::Occupied(mut kept) => {
                let label = kept.get().label;
                kept.insert(Remembered { record, label, journal_seq, declined_transfer, reviewed_transfer });
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Remembered {
                    record,
                    label: None,
                    journal_seq,
                    declined_transfer,
                    reviewed_transfer,
                });
                self.order.push_back(scoped_id);
            }
        }
        while self.order.len() > DECISIONS_KEPT_MAX {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(f) = self.decisions.remove(&old) {
                let forgotten = Forgotten {
                    journal_seq: f.journal_seq,
                    label: f.label,
                    declined_transfer: f.declined_transfer,
                    reviewed_transfer: f.reviewed_transfer,
                };
                self.forgotten.insert(hash64(&old), forgotten);
            }
        }
        review_queued
    }

    /// Whether `scoped_id` names a transfer held for review whose decision is no longer in
    /// `decisions`.
    fn reviewed_and_forgotten(&self, scoped_id: &str, hash: u64) -> bool {
        debug_assert_eq!(hash, hash64(scoped_id));
        !self.decisions.contains_key(scoped_id)
            && self.forgotten.get(hash).is_some_and(|f| f.reviewed_transfer)
    }

    /// Whether `scoped_id` names a declined transfer whose decision is no longer in `decisions`.
    fn declined_and_forgotten(&self, scoped_id: &str) -> bool {
        self.forgotten.declined > 0
            && self.forgotten.get(hash64(scoped_id)).is_some_and(|f| f.declined_transfer)
    }

    /// Takes the durable parts a snapshot held (into an empty memory, at start).
    fn restore(&mut self, parts: snapshot::MemoryParts) {
        debug_assert!(self.decisions.is_empty() && self.forgotten.len() == 0);
        for (id, remembered) in parts.decisions {
            self.order.push_back(Arc::clone(&id));
            self.decisions.insert(id, remembered);
        }
        self.forgotten = parts.forgotten;
        self.reviews = parts.reviews;
    }

    /// [`Memory::remember`] for a decision read from the journal (replay, other nodes).
    fn remember_record(&mut self, d: &DecisionRecord) {
        let review = (d.source == DecisionSource::Transfer && d.active.outcome == Outcome::Review)
            .then(|| review_of_record(d));
        let record = puhui_risk::records::binary::encode(d).into_boxed_slice();
        let declined_transfer = d.source == DecisionSource::Transfer && d.active.outcome == Outcome::Decline;
        self.remember(Arc::from(d.id.as_str()), record, review, false, declined_transfer);
    }

    /// Notes the journal positions the committer sent since the last lock.
    fn take_seqs(&mut self) {
        for _ in 0..SEQ_INBOX_MAX {
            let Ok((id, seq)) = self.seq_inbox.try_recv() else { break };
            self.set_seq(&id, seq);
        }
    }

    fn set_seq(&mut self, id: &Arc<str>, seq: u64) {
        match self.decisions.get_mut(id) {
            Some(object) => object.journal_seq = Some(seq),
            // Durable before it was remembered: kept until `remember` takes it (bounded, since only
            // decisions queued and not yet remembered can be here).
            None if self.early_seqs.len() < crate::limits::PAGE_LIMIT_MAX * 1_000 => {
                self.early_seqs.insert(Arc::clone(id), seq);
            }
            None => {}
        }
    }

    fn label(&mut self, l: &LabelRecord) {
        match self.decisions.get_mut(l.decision_id.as_str()) {
            Some(object) => object.label = Some(l.label),
            None => self.forgotten.label(hash64(&l.decision_id), l.label),
        }
    }
}

fn label_str(l: Label) -> &'static str {
    match l {
        Label::Fraud => "fraud",
        Label::Legit => "legit",
    }
}

/// Attributes of the event: device, network, channel, customer.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskContext {
    /// Device id.
    pub device_id: Option<String>,
    /// IP address.
    pub ip: Option<String>,
    /// `app`, `web`, `pos`, `agent`, `ussd`, …
    pub channel: Option<String>,
    /// ISO 3166 country.
    pub country: Option<String>,
    /// Merchant category code.
    pub mcc: Option<String>,
    /// The customer's KYC tier (`1`, `2`, `3`).
    pub kyc_tier: Option<String>,
    /// Anything else, as strings (`ctx.<name>` in rules).
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

/// `POST /v1/decisions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDecision {
    /// Your id for the decision; generated (or derived from the Idempotency-Key) if absent.
    pub id: Option<String>,
    /// The paying party (an account id or any customer id).
    pub payer: String,
    /// The receiving party.
    pub payee: String,
    /// Minor units.
    pub amount: u64,
    /// Currency code.
    pub currency: String,
    /// When it happened (RFC 3339); default now.
    pub timestamp: Option<String>,
    /// Device, network, channel, customer.
    #[serde(default)]
    pub risk_context: RiskContext,
    /// The payer's available balance before the event, in minor units (negative if overdrawn), if
    /// you know it: rules read it as `payer_balance` ("draining the balance"); without it,
    /// `payer_balance_known` is false. A transfer's decision gets it from the ledger.
    pub payer_balance: Option<i64>,
    /// Record the event in the velocity features (default true; false for a what-if).
    #[serde(default = "yes")]
    pub record: bool,
}

fn yes() -> bool {
    true
}

/// A fired rule in a decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FiredRuleObject {
    /// Rule id.
    pub rule: String,
    /// Score contribution.
    pub score: i64,
    /// Direct outcome, if the rule has one.
    pub outcome: Option<&'static str>,
    /// Reason codes.
    pub reasons: Vec<String>,
}

/// Another ruleset's verdict on the same event, logged and not acted on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShadowObject {
    /// The shadow ruleset's version.
    pub ruleset_version: String,
    /// What it would have decided.
    pub outcome: &'static str,
    /// Its score.
    pub score: i64,
    /// Its fired rules.
    pub fired: Vec<FiredRuleObject>,
}

/// A decision and everything needed to explain it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionObject {
    /// Always `decision`.
    pub object: &'static str,
    /// Its id (the transfer's id for an inline decision).
    pub id: String,
    /// `transfer` (inline) or `standalone` (`POST /v1/decisions`).
    pub source: &'static str,
    /// `approve`, `review` or `decline`.
    pub outcome: &'static str,
    /// Sum of fired rules' scores.
    pub score: i64,
    /// The event decided: what the rules saw.
    pub event: DecisionEventObject,
    /// Fired rules.
    pub fired: Vec<FiredRuleObject>,
    /// Feature values and model scores the rules saw (`null`: not a number).
    pub features: HashMap<String, f64>,
    /// Rules that could not be evaluated (not fired), with the error.
    pub errors: Vec<(String, String)>,
    /// Ruleset version.
    pub ruleset_version: String,
    /// Decision latency in microseconds.
    pub latency_us: u64,
    /// Why the decision is degraded (its time budget was spent; it took the ruleset's
    /// `on_exceeded` outcome), if it is.
    pub degraded: Option<String>,
    /// Whether the event entered the velocity features.
    pub observed: bool,
    /// The shadow ruleset's verdict, if one ran.
    pub shadow: Option<ShadowObject>,
    /// The latest label (`fraud` or `legit`), if any.
    pub label: Option<String>,
    /// The decision record's sequence number in the journal, once durable
    /// (`GET /v1/decisions/{id}/proof` proves it is in a signed checkpoint).
    pub journal_seq: Option<u64>,
}

fn fired_objects(v: &Verdict) -> Vec<FiredRuleObject> {
    v.fired
        .iter()
        .map(|r| FiredRuleObject {
            rule: r.rule.to_string(),
            score: r.score,
            outcome: r.outcome.map(|o| o.as_str()),
            reasons: r.reasons.to_vec(),
        })
        .collect()
}

/// The event of a decision, as its request gave it (ids without the tenant's scope).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionEventObject {
    /// The paying party.
    pub payer: String,
    /// The receiving party.
    pub payee: String,
    /// Minor units.
    pub amount: u64,
    /// Currency code.
    pub currency: String,
    /// When it happened (RFC 3339).
    pub timestamp: String,
    /// Nanoseconds since the Unix epoch (what the velocity windows use).
    pub timestamp_ns: u64,
    /// The risk context's attributes (`ctx.<name>` in rules), by name.
    pub risk_context: std::collections::BTreeMap<String, String>,
    /// The payer's available balance before the event (minor units), when the decision had it:
    /// looked up in the ledger for a transfer whose ruleset reads it, or given with a standalone
    /// decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payer_balance: Option<i64>,
}

fn event_object(tenant: &str, e: &EventRecord) -> DecisionEventObject {
    // Device ids and IPs were scoped to the tenant like accounts ([`attributes`]).
    let own = |value: &str| -> String {
        value.strip_prefix(tenant).and_then(|v| v.strip_prefix(':')).unwrap_or(value).to_string()
    };
    DecisionEventObject {
        payer: own(&e.payer),
        payee: own(&e.payee),
        amount: e.amount_minor,
        currency: e.currency.clone(),
        timestamp: crate::models::format_ns(e.timestamp_ns),
        timestamp_ns: e.timestamp_ns,
        risk_context: e.attributes.iter().map(|(k, v)| (k.clone(), own(v))).collect(),
        payer_balance: e.payer_balance_minor,
    }
}

fn to_object(d: DecisionRecord) -> DecisionObject {
    let tenant = d.id.split_once(':').map_or("", |(tenant, _)| tenant);
    let event = event_object(tenant, &d.event);
    let v = d.active;
    DecisionObject {
        object: "decision",
        id: unscoped(&d.id).to_string(),
        source: match d.source {
            DecisionSource::Transfer => "transfer",
            DecisionSource::Standalone => "standalone",
        },
        outcome: v.outcome.as_str(),
        score: v.score,
        event,
        fired: fired_objects(&v),
        features: v.features.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        errors: v.errors.clone(),
        ruleset_version: v.ruleset_version.clone(),
        latency_us: v.latency_ns / 1_000,
        degraded: v.degraded.clone(),
        observed: d.observed,
        shadow: d.shadow.as_ref().map(|s| ShadowObject {
            ruleset_version: s.ruleset_version.clone(),
            outcome: s.outcome.as_str(),
            score: s.score,
            fired: fired_objects(s),
        }),
        label: None,
        journal_seq: None,
    }
}

/// The event attributes of a risk context (device and IP tenant-scoped like every other id).
pub fn attributes(tenant: &str, ctx: RiskContext) -> Result<Vec<(String, String)>, ApiError> {
    if ctx.attributes.len() > ATTRIBUTES_MAX {
        return Err(ApiError::invalid(
            "invalid_request",
            format!("at most {ATTRIBUTES_MAX} attributes"),
            Some("risk_context.attributes"),
        ));
    }
    // Device ids and IPs are the tenant's own, however they are given: scoped like accounts, so
    // that one tenant's events never count in another's device or IP windows or match its lists.
    let scoped_by_tenant = |name: &str| name == "device_id" || name == "ip";
    // Each name and value: bounded (they become feature keys), no control characters (they could
    // not be listed, nor logged as sent), and an unscoped value may not be spelt as another
    // tenant's scoped one (`<tenant>:<value>`: a rule's list lookup would reach that tenant's).
    let check = |field: &str, name: &str, value: &str| {
        let problem = if name.len() > ATTRIBUTE_BYTES_MAX || value.len() > ATTRIBUTE_BYTES_MAX {
            Some(format!("a risk-context name or value is at most {ATTRIBUTE_BYTES_MAX} bytes"))
        } else if name.chars().chain(value.chars()).any(char::is_control) {
            Some("a risk-context name or value has no control characters".to_string())
        } else if !scoped_by_tenant(name)
            && value
                .split_once(':')
                .is_some_and(|(prefix, _)| prefix != tenant && crate::tenants::is_tenant_id(prefix))
        {
            Some("a risk-context value may not begin with another tenant's id and ':'".to_string())
        } else {
            None
        };
        match problem {
            Some(message) => {
                Err(ApiError::invalid("invalid_request", message, Some(&format!("risk_context.{field}"))))
            }
            None => Ok(()),
        }
    };
    let scope = |name: &str, value: String| {
        if scoped_by_tenant(name) {
            format!("{tenant}:{value}")
        } else {
            value
        }
    };
    for (name, value) in &ctx.attributes {
        check("attributes", name, value)?;
    }
    // Sorted, so that the journaled event does not depend on a hash map's order.
    let mut attributes: Vec<(String, String)> =
        ctx.attributes.into_iter().map(|(name, value)| (name.clone(), scope(&name, value))).collect();
    attributes.sort_unstable();
    for (name, value) in [
        ("device_id", ctx.device_id),
        ("ip", ctx.ip),
        ("channel", ctx.channel),
        ("country", ctx.country),
        ("mcc", ctx.mcc),
        ("kyc_tier", ctx.kyc_tier),
    ] {
        if let Some(v) = value {
            check(name, name, &v)?;
            attributes.retain(|(k, _)| k != name);
            attributes.push((name.to_string(), scope(name, v)));
        }
    }
    Ok(attributes)
}

/// 409 `exists_with_different_event`: an id that names a decision of another event.
pub fn decision_id_conflict(message: &str) -> ApiError {
    ApiError {
        param: Some("id".into()),
        ..ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "exists_with_different_event", message)
    }
}

/// How far ahead of the server's clock an event's timestamp may be (clock skew between systems).
pub const TIMESTAMP_AHEAD_NS_MAX: u64 = 5 * 60 * 1_000_000_000;

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Score an event with the active ruleset (nothing is posted).
#[utoipa::path(post, path = "/v1/decisions", tag = "risk", request_body = CreateDecision,
    responses((status = 201, body = DecisionObject), (status = 400, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn create_decision(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    idem: Option<Extension<IdempotencyKey>>,
    ApiJson(body): ApiJson<CreateDecision>,
) -> Result<(StatusCode, Json<DecisionObject>), ApiError> {
    let risk = app.risk.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            "risk control is not configured",
        )
    })?;
    let tenant = &principal.tenant;
    let client_id = body.id.unwrap_or_else(|| match &idem {
        Some(Extension(key)) => key.derived_id("decision"),
        None => app.store.new_id().to_string(),
    });
    let id = scoped(tenant, &client_id, "id")?;
    // One decision under an id at a time: a concurrent request under it in this process gets 409
    // `request_in_progress`; one on another node (PostgreSQL) waits, then answers with this one's.
    let _taken = risk.begin_deciding([id.as_str()]).map_err(|(_, e)| e)?;
    let locks = risk.lock_across_nodes([id.as_str()]).await?;
    let payer = scoped(tenant, &body.payer, "payer")?;
    let payee = scoped(tenant, &body.payee, "payee")?;
    let timestamp_ns = match &body.timestamp {
        Some(t) => {
            let at_ns = parse_rfc3339(t, "timestamp")?;
            // Windows move with the newest event: one dated days ahead would push every window
            // past the history it should count (and prune it). Clock skew is allowed for.
            if at_ns > now_ns().saturating_add(TIMESTAMP_AHEAD_NS_MAX) {
                return Err(ApiError::invalid(
                    "invalid_timestamp",
                    format!(
                        "the timestamp is more than {} minutes ahead of this server's clock",
                        TIMESTAMP_AHEAD_NS_MAX / 60_000_000_000
                    ),
                    Some("timestamp"),
                ));
            }
            at_ns
        }
        None => now_ns(),
    };
    let attributes = attributes(tenant, body.risk_context)?;
    // The checks a transfer's amount and currency get: an event's figures enter the velocity
    // features, where one absurd amount would skew a payer's sums for the window's length.
    let amount_minor = crate::models::checked_amount(Some(body.amount), "amount")?.unwrap_or(0);
    let Some(currency) = puhui_ledger::CurrencyCode::new(&body.currency) else {
        return Err(ApiError::invalid(
            "invalid_currency",
            "a currency code is 1-12 of A-Z, 0-9, _",
            Some("currency"),
        ));
    };
    let event = EventRecord {
        payer: payer.to_string(),
        payee: payee.to_string(),
        amount_minor,
        currency: currency.as_str().to_string(),
        timestamp_ns,
        attributes,
        payer_balance_minor: body.payer_balance,
    };
    // A decision older than the memory is read back from the journal, so that its retry is
    // matched too.
    let existing = match risk.decision_record(id.as_str()) {
        Some(record) => Some((record, None)),
        None => forgotten_from_journal(&app, risk, id.as_str())
            .await?
            .map(|(record, seq, label)| (record, Some((seq, label)))),
    };
    if let Some((existing, from_journal)) = existing {
        // A retry: the decision already made, if it was made for this event (everything the request
        // says: parties, figures, context, the timestamp if it gives one, whether to record it).
        let e = &existing.event;
        let same_event =
            (&e.payer, &e.payee, e.amount_minor, &e.currency, &e.attributes, e.payer_balance_minor)
                == (
                    &event.payer,
                    &event.payee,
                    event.amount_minor,
                    &event.currency,
                    &event.attributes,
                    event.payer_balance_minor,
                )
                && (body.timestamp.is_none() || e.timestamp_ns == event.timestamp_ns);
        let recorded = body.record && existing.active.outcome != Outcome::Decline;
        if existing.source != DecisionSource::Standalone || !same_event || existing.observed != recorded {
            return Err(decision_id_conflict(
                "a decision with this id was made for another event (another transfer, or other parties, \
                 amount, currency, risk context, payer balance, timestamp or record flag)",
            ));
        }
        match from_journal {
            Some((seq, label)) => return Ok((StatusCode::OK, Json(forgotten_object(existing, seq, label)))),
            None => {
                if let Some(existing) = risk.decision(id.as_str()) {
                    return Ok((StatusCode::OK, Json(existing)));
                }
            }
        }
    }
    if risk.decided_long_ago(id.as_str()) {
        // Deciding again would journal a second record under the id, and count its event twice.
        return Err(ApiError {
            param: Some("id".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "decision_exists",
                format!(
                    "a decision under this id was made earlier, is older than the {DECISIONS_KEPT_MAX} \
                     decisions kept in memory, and its place in the journal is no longer known here, so a \
                     retry cannot be matched with it: use a new id"
                ),
            )
        });
    }
    let fence = locks.as_ref().map(puhui_store_pg::DecisionLock::fence);
    let item = ToDecide {
        id: id.to_string(),
        source: DecisionSource::Standalone,
        event,
        record: body.record,
        fence,
    };
    let (decided, durable) = risk.decide_queued(item).await?;
    let object = decided.object().expect("a standalone decision keeps its record");
    durable
        .await
        .map_err(|_| ApiError::from(puhui_store::StoreError::Unavailable("the ledger stopped".into())))??;
    debug_assert_eq!(unscoped(&id), object.id);
    Ok((StatusCode::CREATED, Json(object)))
}

/// A decision by id, with its explanation (an old one read back from its journal entry).
#[utoipa::path(get, path = "/v1/decisions/{id}", tag = "risk",
    params(("id" = String, Path, description = "decision id")),
    responses((status = 200, body = DecisionObject), (status = 404, body = ErrorEnvelope),
        (status = 503, description = "an old decision while the events index reads the journal after a start",
         body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_decision(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DecisionObject>, ApiError> {
    let id = scoped_lookup(&principal.tenant, &id, "decision")?;
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("decision", "id"))?;
    if let Some(decision) = risk.look_caught_up(|r| r.decision(id.as_str())).await {
        return Ok(Json(decision));
    }
    if let Some((decision, seq, label)) = forgotten_from_journal(&app, risk, id.as_str()).await? {
        return Ok(Json(forgotten_object(decision, seq, label)));
    }
    if risk.decided_long_ago(id.as_str()) {
        return Err(ApiError {
            message:
                "no such decision in memory, and its place in the journal is no longer known here (every \
                 decision stays in the journal, which `puhui risk backtest` reads)"
                    .to_string(),
            ..ApiError::not_found("decision", "id")
        });
    }
    Err(ApiError::not_found("decision", "id"))
}

/// How long `GET /v1/decisions/{id}` waits for the events index to reach a forgotten decision's
/// journal entry (after a start, the index reads the journal again).
const INDEX_WAIT_MS: u64 = 5_000;

/// A decision no longer in memory (older than the latest [`DECISIONS_KEPT_MAX`]), read back from
/// its journal entry through the events index's frame positions (`crate::events::EventLog`): the
/// record, where it is, and the label it was given. `None` if its place was not kept (a version-2
/// snapshot) or the index keeps no frame position before it any more (past
/// [`crate::events::OLD_POSITIONS_MAX`]). Choice, over keeping more decisions in memory: an
/// entry's place costs 8 bytes beside the id's hash, where a remembered decision costs its whole
/// record; reading one back scans from the nearest kept frame position: about
/// [`crate::events::INDEX_POSITION_EVERY_ENTRIES`] entries plus one frame within the index's
/// window, up to [`crate::events::OLD_POSITION_EVERY_ENTRIES`] below it.
pub(crate) async fn forgotten_from_journal(
    app: &Arc<AppState>,
    risk: &Arc<RiskService>,
    scoped_id: &str,
) -> Result<Option<(DecisionRecord, u64, Option<Label>)>, ApiError> {
    let (Some(log), Some((seq, label))) = (app.events.as_ref(), risk.forgotten_decision(scoped_id)) else {
        return Ok(None);
    };
    // After a start the index reads the journal again from its beginning: wait for it to reach
    // the entry (bounded), rather than answer that it cannot be read back.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(INDEX_WAIT_MS);
    while log.indexed_until() <= seq && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(crate::events::INDEX_POLL_MS)).await;
    }
    if log.indexed_until() <= seq {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            "the decision is older than the decisions kept in memory, and the events index is still reading \
             the journal since the start: try again shortly",
        ));
    }
    if !log.reads_back(seq) {
        return Ok(None);
    }
    let reader = Arc::clone(log);
    let entries = tokio::task::spawn_blocking(move || reader.read_entries_blocking(&[seq]))
        .await
        .map_err(|e| crate::events::EventReadError(format!("journal reader stopped: {e}")))??;
    let decision = entries.iter().find(|e| e.seq == seq).and_then(|entry| {
        if entry.kind != puhui_journal::codec::KIND_RECORD {
            return None;
        }
        let (record_type, _, payload) = puhui_journal::codec::decode_record(&entry.body).ok()?;
        match RiskRecord::decode(record_type, payload).ok()? {
            // The id is checked: the memory keeps only its hash.
            RiskRecord::Decision(d) if d.id == scoped_id => Some(*d),
            _ => None,
        }
    });
    Ok(decision.map(|d| (d, seq, label)))
}

/// The API object of a decision read back from the journal at `seq`, with its `label`.
fn forgotten_object(d: DecisionRecord, seq: u64, label: Option<Label>) -> DecisionObject {
    let mut object = to_object(d);
    object.label = label.map(|l| label_str(l).to_string());
    object.journal_seq = Some(seq);
    object
}

/// Open reviews: transfers held by risk control, waiting for an analyst.
#[utoipa::path(get, path = "/v1/risk/reviews", tag = "risk",
    params(("limit" = Option<usize>, Query, description = "1–100, default 100"),
           ("starting_after" = Option<String>, Query, description = "the last review id of the page before")),
    responses((status = 200, body = ReviewList), (status = 400, body = ErrorEnvelope)), security(("api_key" = [])))]
pub async fn list_reviews(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReviewList>, ApiError> {
    let q = ListQuery::read(query)?;
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("review", "id"))?;
    let after = q.starting_after.map(|a| format!("{}:{a}", principal.tenant));
    let limit = q.limit.unwrap_or(crate::limits::PAGE_LIMIT_MAX);
    // Reviews whose hold is gone (expired, or posted/voided directly) leave the queue as their page
    // is read: each pass checks one page's holds (a page's work, not the tenant's whole queue).
    let mut pass = 0;
    loop {
        pass += 1;
        let (mut data, has_more) = risk.reviews(&principal.tenant, after.as_deref(), limit);
        let ids: Vec<String> = data.iter().map(|r| format!("{}:{}", principal.tenant, r.id)).collect();
        let stale = drop_reviews_without_hold(&app, risk, ids).await?;
        if stale.is_empty() || pass == REVIEW_PAGE_PASSES_MAX {
            data.retain(|r| !stale.contains(&format!("{}:{}", principal.tenant, r.id)));
            return Ok(Json(ReviewList { object: "list", data, has_more, url: "/v1/risk/reviews" }));
        }
    }
}

/// Takes out of the review queue those of the reviews `ids` (scoped) whose hold is not open in the
/// ledger (resolved, expired, or never recorded), and returns their ids. A hold recorded while
/// this runs is not lost: the ids taken out are checked a second time, after the take, and a
/// review whose hold is open by then is put back (a request that records a hold queues or finds its
/// review before it records it, so either the first check or the second sees the hold).
pub async fn drop_reviews_without_hold(
    app: &AppState,
    risk: &RiskService,
    ids: Vec<String>,
) -> Result<Vec<String>, ApiError> {
    let stale = app.not_open_holds(ids).await?;
    if stale.is_empty() {
        return Ok(stale);
    }
    let taken: Vec<(String, ReviewObject)> =
        stale.into_iter().filter_map(|id| risk.take_review(&id).map(|review| (id, review))).collect();
    let still_stale = app.not_open_holds(taken.iter().map(|(id, _)| id.clone()).collect()).await?;
    let mut dropped = Vec::with_capacity(taken.len());
    for (id, review) in taken {
        match still_stale.contains(&id) {
            true => dropped.push(id),
            false => risk.queue_review(&id, review),
        }
    }
    Ok(dropped)
}

/// What start-up did to the review queue ([`reviews_at_start`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReviewsAtStart {
    /// Reviews queued again for open review holds the replayed queue lacked.
    pub restored: usize,
    /// Open holds with the review hold's timeout but no review decision to queue (a client's own
    /// hold with that timeout), and holds whose forgotten decision is known for a review but
    /// could not be read back (see the log).
    pub without_review: usize,
    /// Reviews dropped: their hold is no longer open, or was never recorded.
    pub dropped: usize,
}

/// Start-up's reconciliation of the review queue with the ledger, whose open review holds are
/// what the queue must hold. Every open hold with a timeout missing from the queue whose remembered
/// decision is a review gets it back at once; then,
/// [`REVIEWS_CHECKED_PER_READ`] ids per read of the ledger, the reviews whose hold is no longer
/// open, or was never recorded, leave the queue (a replay queues every review decision the journal
/// holds, so without it a restart would bring back every review ever resolved, and a tenant with
/// [`REVIEWS_PER_TENANT_MAX`] of them in its history would find its queue full); last, for holds
/// with [`REVIEW_HOLD_TIMEOUT_MS`], decisions no longer remembered are read back from the journal
/// (which can wait for the events index). Snapshots carry the live queue as it was when written
/// (`risk/checkpoint.rs`), but a review queued since without a record of its own (a retry, held
/// once there was room, of a transfer whose review had been refused for a full queue) is in
/// neither the snapshot nor the records after it: it comes from here. A pending transfer keeps its
/// own timeout when held for review: its review is restored from its remembered decision, or read
/// back once forgotten (its id's hash keeps a review flag, up to [`DECISION_IDS_KEPT_MAX`]); not if
/// it has no timeout (its hold can still be voided). A restored review whose hold
/// was resolved meanwhile leaves again; a decision that cannot be read back is logged and left.
pub async fn reviews_at_start(
    app: &Arc<AppState>,
    risk: &Arc<RiskService>,
) -> Result<ReviewsAtStart, ApiError> {
    reviews_open(&risk.mem().reviews);
    let mut done = ReviewsAtStart::default();
    // Open review holds missing from the queue: those whose decision is remembered get their
    // review at once (before the longer pass below); the others are read back from the journal
    // last, since that may wait for the events index.
    let mut restored = Vec::new();
    let mut long_ago = Vec::new();
    let mut after: Option<puhui_ledger::Id> = None;
    for _page in 0..OPEN_HOLD_PAGES_MAX {
        let (held, next) = app.open_holds(after.take(), REVIEWS_CHECKED_PER_READ).await?;
        for (id, timeout_ms) in held.iter().filter(|(id, _)| !risk.is_under_review(id.as_str())) {
            // A single transfer held for review has the review hold's timeout; a pending one
            // keeps its own: its forgotten decision is known for a review by its flag (a snapshot
            // before version 4 has none: then only the review hold's timeout tells).
            let review_hold = *timeout_ms == REVIEW_HOLD_TIMEOUT_MS;
            match risk.decision(id.as_str()) {
                Some(d) if d.source == "transfer" && d.outcome == "review" => {
                    risk.queue_review(id.as_str(), review_of(&d));
                    restored.push(id.to_string());
                }
                None if (review_hold && risk.decided_long_ago(id.as_str()))
                    || risk.reviewed_long_ago(id.as_str()) =>
                {
                    long_ago.push(id.to_string())
                }
                _ if review_hold => done.without_review += 1,
                _ => {}
            }
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let ids = risk.review_ids();
    for page in ids.chunks(REVIEWS_CHECKED_PER_READ) {
        done.dropped += drop_reviews_without_hold(app, risk, page.to_vec()).await?.len();
    }
    for id in long_ago {
        let read_back = forgotten_from_journal(app, risk, &id).await;
        let review = read_back.map(|found| {
            found.and_then(|(record, _, _)| {
                let review = record.source == puhui_risk::DecisionSource::Transfer
                    && record.active.outcome == puhui_risk::Outcome::Review;
                review.then(|| review_of_record(&record))
            })
        });
        match review {
            Ok(Some(review)) => {
                risk.queue_review(&id, review);
                restored.push(id);
            }
            Ok(None) => done.without_review += 1,
            Err(e) => {
                tracing::warn!(id = %id, error = %e.message, "could not read back the decision of a review hold");
                done.without_review += 1;
            }
        }
    }
    // A hold resolved while its review was being restored: the review leaves again.
    for page in restored.chunks(REVIEWS_CHECKED_PER_READ) {
        done.dropped += drop_reviews_without_hold(app, risk, page.to_vec()).await?.len();
    }
    done.restored = restored.iter().filter(|id| risk.is_under_review(id)).count();
    Ok(done)
}

async fn resolve_review(
    app: Arc<AppState>,
    principal: Principal,
    id: String,
    approve: bool,
) -> Result<axum::response::Response, ApiError> {
    let risk = app.risk.as_ref().ok_or_else(|| ApiError::not_found("review", "id"))?;
    let scoped_id = scoped_lookup(&principal.tenant, &id, "review")?;
    let suffix = if approve { "post" } else { "void" };
    let Some(review) = risk.look_caught_up(|r| r.take_review(scoped_id.as_str())).await else {
        return Err(no_open_review(&app, risk, scoped_id).await);
    };
    // From here on the review is out of the queue (so two analysts cannot resolve it at once): every
    // way out that leaves the hold open puts it back, also a request dropped half-way (its client
    // gone): the guard's drop does.
    let taken = TakenReview { risk, scoped_id: scoped_id.to_string(), review: Some(review) };
    // The ledger keeps a refused attempt's result under its id: a later approval uses the next id
    // (the hold itself is resolved once whatever the id).
    let base = format!("{scoped_id}.{suffix}");
    let resolution = match crate::routes::resolution_attempt_id(&app, &base, |_| false).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            drop(taken);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "review_unresolvable",
                format!(
                    "the review's hold could not be {suffix}ed under any of its {} resolution ids (each \
                     attempt was refused, or the id is too long); void the hold with \
                     POST /v1/transfers/{{id}}/void",
                    crate::routes::RESOLUTION_ATTEMPTS_MAX
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let request = if approve {
        puhui_ledger::TransferRequest::post(resolution, scoped_id.clone(), None)
    } else {
        puhui_ledger::TransferRequest::void(resolution, scoped_id.clone())
    };
    match crate::routes::create_one(&app, request).await {
        Ok(response) => {
            taken.resolved();
            Ok(response)
        }
        Err(e) => {
            // A refused approval (a frozen account) leaves the hold open and the review queued; only
            // a hold that is gone (expired, voided) takes its review with it. If that cannot be
            // read, the review goes back: listing drops it once its hold is seen to be gone.
            match app.not_open_holds(vec![scoped_id.to_string()]).await {
                // The hold went another way (voided directly, expired): the review is closed.
                Ok(gone) if !gone.is_empty() => {
                    taken.resolved();
                    Err(no_open_review(&app, risk, scoped_id).await)
                }
                _ => Err(e),
            }
        }
    }
}

/// A review taken out of the queue to be resolved: put back when dropped, unless
/// [`TakenReview::resolved`] (the request failed, or was dropped half-way with its hold open; a
/// review put back whose hold was resolved after all leaves when it is listed).
struct TakenReview<'a> {
    risk: &'a RiskService,
    scoped_id: String,
    review: Option<ReviewObject>,
}

impl TakenReview<'_> {
    /// Its hold was resolved: the review stays out of the queue.
    fn resolved(mut self) {
        self.review = None;
    }
}

impl Drop for TakenReview<'_> {
    fn drop(&mut self) {
        if let Some(review) = self.review.take() {
            self.risk.queue_review(&self.scoped_id, review);
        }
    }
}

/// Why there is no open review of `scoped_id`: 409 `review_resolved` if its hold was posted,
/// voided or expired, 409 `review_in_progress` if it is still held (another request is resolving
/// it right now), 404 if there never was such a review.
async fn no_open_review(app: &Arc<AppState>, risk: &RiskService, scoped_id: puhui_ledger::Id) -> ApiError {
    let decided_review =
        risk.decision(scoped_id.as_str()).is_some_and(|d| d.source == "transfer" && d.outcome == "review");
    let hold = match app.transfer(scoped_id).await {
        Ok(Some(t)) if decided_review || t.request.timeout_ms == Some(REVIEW_HOLD_TIMEOUT_MS) => t,
        _ => return ApiError::not_found("review", "id"),
    };
    match hold.pending_status {
        Some(status) if status != puhui_ledger::PendingStatus::Pending => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "review_resolved",
            format!("the review is closed: its hold was {}", status.as_str()),
        ),
        _ => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "review_in_progress",
            "another request is resolving this review; retry to see its outcome",
        ),
    }
}

/// Approve a held transfer: its hold is posted.
#[utoipa::path(post, path = "/v1/risk/reviews/{id}/approve", tag = "risk",
    params(("id" = String, Path, description = "the held transfer")),
    responses((status = 201, body = crate::models::TransferObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn approve_review(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    resolve_review(app, principal, id, true).await
}

/// Decline a held transfer: its hold is voided.
#[utoipa::path(post, path = "/v1/risk/reviews/{id}/decline", tag = "risk",
    params(("id" = String, Path, description = "the held transfer")),
    responses((status = 201, body = crate::models::TransferObject), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn decline_review(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    resolve_review(app, principal, id, false).await
}

fn risk_service(app: &AppState) -> Result<&Arc<RiskService>, ApiError> {
    app.risk.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "unavailable",
            "risk control is not configured",
        )
    })
}

async fn durable(receipt: Durable) -> Result<(), ApiError> {
    receipt
        .await
        .map_err(|_| ApiError::from(puhui_store::StoreError::Unavailable("the ledger stopped".into())))??;
    Ok(())
}

/// `POST /v1/decisions/{id}/label`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLabel {
    /// `fraud` or `legit`.
    pub label: String,
    /// Where it comes from: `chargeback`, `analyst`, `customer_report`… (at most 64 characters).
    pub source: Option<String>,
}

/// A label on a decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LabelObject {
    /// Always `label`.
    pub object: &'static str,
    /// The decision.
    pub decision: String,
    /// `fraud` or `legit`.
    pub label: &'static str,
    /// Where it comes from.
    pub source: Option<String>,
}

/// Label a decision fraud or legit (chargebacks, analysts); the latest label counts in backtests.
#[utoipa::path(post, path = "/v1/decisions/{id}/label", tag = "risk", request_body = CreateLabel,
    params(("id" = String, Path, description = "decision id")),
    responses((status = 200, body = LabelObject), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn label_decision(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateLabel>,
) -> Result<Json<LabelObject>, ApiError> {
    let risk = risk_service(&app)?;
    let scoped_id = scoped_lookup(&principal.tenant, &id, "decision")?;
    let label = match body.label.as_str() {
        "fraud" => Label::Fraud,
        "legit" => Label::Legit,
        _ => return Err(ApiError::invalid("invalid_request", "label is `fraud` or `legit`", Some("label"))),
    };
    if body.source.as_ref().is_some_and(|s| s.len() > 64) {
        return Err(ApiError::invalid("invalid_request", "source has at most 64 characters", Some("source")));
    }
    let record = LabelRecord {
        decision_id: scoped_id.to_string(),
        label,
        source: body.source.clone(),
        labelled_at_ns: now_ns(),
    };
    let hash = hash64(scoped_id.as_str());
    let known = |r: &RiskService| {
        let memory = r.mem();
        (memory.decisions.contains_key(scoped_id.as_str()) || memory.forgotten.contains(hash)).then_some(())
    };
    if risk.look_caught_up(known).await.is_none() {
        return Err(ApiError::not_found("decision", "id"));
    }
    let receipt = {
        let mut state = risk.mem();
        let receipt = risk.journal(&[RiskRecord::Label(record.clone())])?;
        state.label(&record);
        receipt
    };
    durable(receipt).await?;
    Ok(Json(LabelObject { object: "label", decision: id, label: label_str(label), source: body.source }))
}

/// A published ruleset.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RulesetObject {
    /// Always `ruleset`.
    pub object: &'static str,
    /// Its version (names one text forever).
    pub version: String,
    /// Rules in it.
    pub rules: usize,
    /// Whether decisions are acted on with it.
    pub active: bool,
    /// Whether it runs in shadow (decided and logged, not acted on).
    pub shadow: bool,
    /// The TOML text (on `GET /v1/rulesets/{version}` and `POST /v1/rulesets`).
    pub text: Option<String>,
}

fn ruleset_object(info: RulesetInfo, text: Option<String>) -> RulesetObject {
    RulesetObject {
        object: "ruleset",
        version: info.version,
        rules: info.rules,
        active: info.active,
        shadow: info.shadow,
        text,
    }
}

/// `POST /v1/rulesets`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRuleset {
    /// The ruleset file's TOML text (its `version` must be new, or name this same text). Model
    /// paths are relative to `DATA_DIR/models`.
    pub text: String,
}

/// `GET /v1/rulesets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RulesetList {
    /// Always `list`.
    pub object: &'static str,
    /// Published rulesets, by version.
    pub data: Vec<RulesetObject>,
    /// Always false (at most 256 rulesets are published).
    pub has_more: bool,
    /// The list's URL.
    pub url: &'static str,
}

/// Publish a ruleset (validated and compiled; a bad one is a 400 naming the rule, line and column).
/// Publishing does not activate it.
#[utoipa::path(post, path = "/v1/rulesets", tag = "risk", request_body = CreateRuleset,
    responses((status = 201, body = RulesetObject), (status = 200, body = RulesetObject, description = "already published"),
              (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn create_ruleset(
    State(app): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateRuleset>,
) -> Result<(StatusCode, Json<RulesetObject>), ApiError> {
    let risk = risk_service(&app)?;
    if let Some(problem) = puhui_risk::Ruleset::publish_problem(&body.text) {
        return Err(ApiError::invalid(
            "invalid_ruleset",
            format!("the ruleset is invalid: {problem}"),
            Some("text"),
        ));
    }
    let text = body.text.clone();
    // Parsed (and its models read) before the controller's lock is taken, on a blocking thread:
    // decisions do not wait for it.
    let models_dir = risk.lock().controller.models_dir().to_path_buf();
    let parsing = text.clone();
    let prepared = tokio::task::spawn_blocking(move || Controller::prepare(&parsing, &models_dir))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal_error",
                "ruleset task failed",
            )
        })?;
    let (version, created) = risk
        .admin_change(move |risk| {
            let mut state = risk.lock();
            let (version, record) =
                state.controller.publish_prepared(&text, prepared).map_err(control_error)?;
            let receipt = match record {
                Some(r) => Some(risk.journal(&[r])?),
                None => None,
            };
            Ok(((version, receipt.is_some()), receipt))
        })
        .await?;
    let state = risk.lock();
    let info = state.controller.rulesets().into_iter().find(|r| r.version == version).expect("published");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(ruleset_object(info, Some(body.text)))))
}

/// Published rulesets.
#[utoipa::path(get, path = "/v1/rulesets", tag = "risk",
    responses((status = 200, body = RulesetList)), security(("admin_token" = [])))]
pub async fn list_rulesets(State(app): State<Arc<AppState>>) -> Result<Json<RulesetList>, ApiError> {
    let risk = risk_service(&app)?;
    let data = risk.lock().controller.rulesets().into_iter().map(|i| ruleset_object(i, None)).collect();
    Ok(Json(RulesetList { object: "list", data, has_more: false, url: "/v1/rulesets" }))
}

/// A published ruleset, with its text.
#[utoipa::path(get, path = "/v1/rulesets/{version}", tag = "risk",
    params(("version" = String, Path, description = "ruleset version")),
    responses((status = 200, body = RulesetObject), (status = 404, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn get_ruleset(
    State(app): State<Arc<AppState>>,
    ApiPath(version): ApiPath<String>,
) -> Result<Json<RulesetObject>, ApiError> {
    let risk = risk_service(&app)?;
    let state = risk.lock();
    let info = state
        .controller
        .rulesets()
        .into_iter()
        .find(|r| r.version == version)
        .ok_or_else(|| ApiError::not_found("ruleset", "version"))?;
    let text = state.controller.ruleset_text(&version).map(str::to_string);
    Ok(Json(ruleset_object(info, text)))
}

/// `POST /v1/rulesets/activation`: which rulesets run.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// The version to act on.
    pub active: String,
    /// The version to run in shadow beside it (decided and logged, never acted on); `null` for none.
    pub shadow: Option<String>,
}

/// Switch the active (and shadow) ruleset atomically: the next decision uses the new ones, no
/// decision sees half a switch. Journaled, so a restart keeps it.
#[utoipa::path(post, path = "/v1/rulesets/activation", tag = "risk", request_body = Activation,
    responses((status = 200, body = Activation), (status = 404, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn activate_ruleset(
    State(app): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Activation>,
) -> Result<Json<Activation>, ApiError> {
    let risk = risk_service(&app)?;
    if body.shadow.as_deref() == Some(body.active.as_str()) {
        return Err(ApiError::invalid(
            "invalid_request",
            "the shadow ruleset must differ from the active one (its verdicts would repeat the active's)",
            Some("shadow"),
        ));
    }
    let (active, shadow) = (body.active.clone(), body.shadow.clone());
    risk.admin_change(move |risk| {
        let mut state = risk.lock();
        let before_active = state.controller.active().ruleset().version.clone();
        let before_shadow = state.controller.shadow().map(|e| e.ruleset().version.clone());
        let record = state.controller.activate(&active, shadow.as_deref()).map_err(control_error)?;
        let receipt = match record {
            Some(r) => match risk.journal(std::slice::from_ref(&r)) {
                Ok(receipt) => Some(receipt),
                Err(e) => {
                    // Not queued: switch back, so that memory matches the journal.
                    let _ = state.controller.activate(&before_active, before_shadow.as_deref());
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(((), receipt))
    })
    .await?;
    tracing::info!(active = %body.active, shadow = ?body.shadow, "rulesets activated");
    Ok(Json(body))
}

/// `POST /v1/lists/{name}/add|remove`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListChange {
    /// The values (at most 10,000 per call; each 1–256 bytes, no control characters). With an API
    /// key they are your ids (accounts, devices, IPs), scoped to your tenant like every other id;
    /// with the admin token they are stored as given and apply to every tenant, so they match
    /// unscoped values (countries, channels, names), never a tenant's accounts, device ids or IPs.
    pub values: Vec<String>,
}

/// A list's values.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiskListObject {
    /// Always `risk_list`.
    pub object: &'static str,
    /// The list's name (what `in_list('<name>', …)` reads).
    pub name: String,
    /// Values, sorted (at most `limit`).
    pub values: Vec<String>,
    /// Whether there are more.
    pub has_more: bool,
}

fn list_values(tenant: Option<&str>, values: Vec<String>) -> Result<Vec<String>, ApiError> {
    // Whatever a risk context may carry (a device id is up to 256 bytes of anything) can be listed.
    if values.iter().any(|v| v.is_empty() || v.len() > ATTRIBUTE_BYTES_MAX || v.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "invalid_request",
            format!("a list value has 1–{ATTRIBUTE_BYTES_MAX} bytes and no control characters"),
            Some("values"),
        ));
    }
    Ok(match tenant {
        // Scoped like the tenant's ids, device ids and IPs in its events.
        Some(t) => values.iter().map(|v| format!("{t}:{v}")).collect(),
        None => values,
    })
}

async fn change_list(
    app: Arc<AppState>,
    tenant: Option<String>,
    name: String,
    op: ListOp,
    values: Vec<String>,
) -> Result<Json<RiskListObject>, ApiError> {
    let risk = risk_service(&app)?;
    let values = list_values(tenant.as_deref(), values)?;
    let list = name.clone();
    let scope = tenant.clone();
    risk.admin_change(move |risk| {
        let mut state = risk.lock();
        // What the change will change: only that is undone if it cannot be journaled (an added
        // value that was there already stays; a removed value that was not there is not added).
        let changed: Vec<String> = {
            let lists = state.controller.lists().read().unwrap_or_else(|p| p.into_inner());
            let held = |v: &String| lists.get(&list).is_some_and(|l| l.contains(v));
            values.iter().filter(|v| held(v) != (op == ListOp::Add)).cloned().collect()
        };
        // A tenant's change counts against its share of the list; the operator's does not.
        let record = match &scope {
            Some(tenant) => state.controller.change_list_in_scope(&list, op, values.clone(), tenant),
            None => state.controller.change_list(&list, op, values.clone()),
        }
        .map_err(control_error)?;
        match risk.journal(std::slice::from_ref(&record)) {
            Ok(receipt) => Ok(((), Some(receipt))),
            Err(e) => {
                // Undo, so that memory matches the journal.
                let undo = if op == ListOp::Add { ListOp::Remove } else { ListOp::Add };
                let _ = state.controller.change_list(&list, undo, changed);
                Err(e)
            }
        }
    })
    .await?;
    list_page(&app, tenant.as_deref(), &name, None, crate::limits::PAGE_LIMIT_MAX).await
}

/// A page of a list's values (sorted), after the value `after` (unscoped) if given. On a blocking
/// thread, with only the lists' read lock ([`puhui_risk::list_page`]): decisions go on meanwhile,
/// and the runtime thread is not held for a pass over a large list.
async fn list_page(
    app: &AppState,
    tenant: Option<&str>,
    name: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Json<RiskListObject>, ApiError> {
    let risk = risk_service(app)?;
    let prefix = tenant.map(|t| format!("{t}:")).unwrap_or_default();
    let after = after.map(|a| format!("{prefix}{a}"));
    let (lists, list) = (Arc::clone(&risk.lists), name.to_string());
    let page = tokio::task::spawn_blocking(move || {
        puhui_risk::list_page(&lists, &list, &prefix, after.as_deref(), limit)
    })
    .await
    .map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", "list task failed")
    })?;
    let (values, has_more) = page.unwrap_or_default();
    let values =
        values.into_iter().map(|v| if tenant.is_some() { unscoped(&v).to_string() } else { v }).collect();
    Ok(Json(RiskListObject { object: "risk_list", name: name.to_string(), values, has_more }))
}

/// `?limit=&starting_after=` on a list or the review queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1–100, default 100.
    pub limit: Option<usize>,
    /// The page after this value (a list) or review id (the queue): the last one of the page before.
    pub starting_after: Option<String>,
}

impl ListQuery {
    /// The query, or 400 for an unreadable one or a limit outside 1–100.
    fn read(
        query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Self, ApiError> {
        let Query(q) = query.map_err(|e| ApiError::invalid("invalid_request", e.body_text(), None))?;
        if !(1..=crate::limits::PAGE_LIMIT_MAX).contains(&q.limit.unwrap_or(1)) {
            return Err(ApiError::invalid("invalid_request", "limit is 1–100", Some("limit")));
        }
        Ok(q)
    }
}

/// Add values to one of your allow/deny lists (`in_list('deny_devices', ctx.device_id)`).
#[utoipa::path(post, path = "/v1/lists/{name}/add", tag = "risk", request_body = ListChange,
    params(("name" = String, Path, description = "list name, [A-Za-z0-9_-]{1,64}")),
    responses((status = 200, body = RiskListObject), (status = 400, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn list_add(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ListChange>,
) -> Result<Json<RiskListObject>, ApiError> {
    change_list(app, Some(principal.tenant.to_string()), name, ListOp::Add, body.values).await
}

/// Remove values from one of your lists.
#[utoipa::path(post, path = "/v1/lists/{name}/remove", tag = "risk", request_body = ListChange,
    params(("name" = String, Path, description = "list name")),
    responses((status = 200, body = RiskListObject), (status = 400, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn list_remove(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ListChange>,
) -> Result<Json<RiskListObject>, ApiError> {
    change_list(app, Some(principal.tenant.to_string()), name, ListOp::Remove, body.values).await
}

/// Your values in a list (sorted).
#[utoipa::path(get, path = "/v1/lists/{name}", tag = "risk",
    params(("name" = String, Path, description = "list name"), ("limit" = Option<usize>, Query, description = "1–100"),
           ("starting_after" = Option<String>, Query, description = "the last value of the page before")),
    responses((status = 200, body = RiskListObject), (status = 400, body = ErrorEnvelope)),
    security(("api_key" = [])))]
pub async fn get_list(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RiskListObject>, ApiError> {
    queried_page(&app, Some(&principal.tenant), &name, query).await
}

/// [`list_page`] for a `GET` with `?limit=&starting_after=`.
async fn queried_page(
    app: &AppState,
    tenant: Option<&str>,
    name: &str,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RiskListObject>, ApiError> {
    let q = ListQuery::read(query)?;
    Controller::check_list_name(name).map_err(control_error)?;
    let limit = q.limit.unwrap_or(crate::limits::PAGE_LIMIT_MAX);
    list_page(app, tenant, name, q.starting_after.as_deref(), limit).await
}

/// Add values to an operator-wide list (every tenant's rules see them; they match unscoped values
/// such as countries and channels).
#[utoipa::path(post, path = "/v1/admin/lists/{name}/add", tag = "risk", request_body = ListChange,
    params(("name" = String, Path, description = "list name, [A-Za-z0-9_-]{1,64}")),
    responses((status = 200, body = RiskListObject), (status = 400, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn admin_list_add(
    State(app): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ListChange>,
) -> Result<Json<RiskListObject>, ApiError> {
    change_list(app, None, name, ListOp::Add, body.values).await
}

/// Remove values from an operator-wide list.
#[utoipa::path(post, path = "/v1/admin/lists/{name}/remove", tag = "risk", request_body = ListChange,
    params(("name" = String, Path, description = "list name")),
    responses((status = 200, body = RiskListObject), (status = 400, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn admin_list_remove(
    State(app): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ListChange>,
) -> Result<Json<RiskListObject>, ApiError> {
    change_list(app, None, name, ListOp::Remove, body.values).await
}

/// The operator-wide values of a list (sorted).
#[utoipa::path(get, path = "/v1/admin/lists/{name}", tag = "risk",
    params(("name" = String, Path, description = "list name"), ("limit" = Option<usize>, Query, description = "1–100"),
           ("starting_after" = Option<String>, Query, description = "the last value of the page before")),
    responses((status = 200, body = RiskListObject), (status = 400, body = ErrorEnvelope)),
    security(("admin_token" = [])))]
pub async fn admin_get_list(
    State(app): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RiskListObject>, ApiError> {
    queried_page(&app, None, &name, query).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store in `dir` once a service dropped before has let go of it: its decider thread
    /// may hold the service for a moment after the last reply it sent (it drops it at the end of
    /// that job), so an open right after the test's `drop` can find the directory still locked.
    fn open_store_when_free(dir: &std::path::Path) -> puhui_store::EmbeddedStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match puhui_store::EmbeddedStore::open(dir) {
                Err(puhui_store::StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                opened => return opened.unwrap(),
            }
        }
    }

    #[test]
    fn the_memory_of_decisions_never_grows_its_map_while_it_forgets() {
        let (_seqs, seq_inbox) = std::sync::mpsc::sync_channel(1);
        let mut memory = Memory::new(seq_inbox);
        let capacity = memory.decisions.capacity();
        assert!(capacity >= DECISIONS_MAP_SLOTS);
        // Long ids, as the API scopes them; three times the bound, so that forgetting churns.
        for i in 0..3 * DECISIONS_KEPT_MAX {
            let id: Arc<str> = Arc::from(format!("tabcdefghijklmnopqrstuvwxyz234567:wrk0-1764460000-{i}"));
            memory.remember(id, Box::new([0u8; 8]), None, true, false);
            // `capacity` counts the room left too; a table that doubled would show it above this.
            assert!(memory.decisions.capacity() <= capacity, "the map grew at decision {i}");
        }
        assert_eq!(memory.decisions.len(), DECISIONS_KEPT_MAX);
        assert_eq!(memory.forgotten.len(), 2 * DECISIONS_KEPT_MAX);
    }

    #[test]
    fn a_forgotten_decision_is_still_known_for_holding_a_transfer_for_review() {
        let (_seqs, seq_inbox) = std::sync::mpsc::sync_channel(1);
        let mut memory = Memory::new(seq_inbox);
        memory.remember(Arc::from("t:held"), Box::new([0u8; 8]), Some(test_review("held")), true, false);
        memory.remember(Arc::from("t:declined"), Box::new([0u8; 8]), None, true, true);
        memory.remember(Arc::from("t:approved"), Box::new([0u8; 8]), None, true, false);
        let reviewed = |m: &Memory, id: &str| m.reviewed_and_forgotten(id, hash64(id));
        assert!(!reviewed(&memory, "t:held"), "remembered: its record says so");
        for i in 0..DECISIONS_KEPT_MAX {
            memory.remember(Arc::from(format!("t:later-{i}")), Box::new([0u8; 8]), None, true, false);
        }
        assert!(reviewed(&memory, "t:held"));
        assert!(!reviewed(&memory, "t:declined") && memory.declined_and_forgotten("t:declined"));
        assert!(!reviewed(&memory, "t:approved") && !memory.declined_and_forgotten("t:approved"));
        assert!(!reviewed(&memory, "t:never"));
    }

    #[test]
    fn reviews_are_queued_within_their_bounds_per_tenant_and_in_all() {
        let review = test_review;
        let mut reviews = Reviews::default();
        let tenants = REVIEWS_OPEN_MAX / REVIEWS_PER_TENANT_MAX;
        for t in 0..tenants {
            for i in 0..REVIEWS_PER_TENANT_MAX {
                assert!(reviews.insert_within_bounds(&format!("t{t}:r{i}"), review("r")));
            }
            assert!(
                !reviews.insert_within_bounds(&format!("t{t}:more"), review("more")),
                "the tenant's bound"
            );
        }
        assert_eq!(reviews.len(), REVIEWS_OPEN_MAX);
        assert!(!reviews.insert_within_bounds("other:r", review("r")), "the bound in all");
        assert!(reviews.insert_within_bounds("t0:r5", review("r")), "one already queued is queued");
        reviews.remove("t3:r0");
        assert!(!reviews.insert_within_bounds("t0:more", review("more")), "another tenant's room");
        assert!(reviews.insert_within_bounds("other:r", review("r")), "room in all again");
        assert_eq!((reviews.len(), reviews.of_tenant("other")), (REVIEWS_OPEN_MAX, 1));
    }

    #[test]
    fn reviews_are_paged_in_id_order_per_tenant_and_counted() {
        let review = test_review;
        let mut reviews = Reviews::default();
        for (tenant, id) in [("tb", "b"), ("ta", "c"), ("ta", "a"), ("t", "z"), ("ta", "b"), ("tab", "q")] {
            reviews.insert(format!("{tenant}:{id}"), review(id));
        }
        reviews.insert("ta:a".into(), review("a")); // again: not counted twice
        assert_eq!((reviews.len(), reviews.of_tenant("ta"), reviews.of_tenant("tb")), (6, 3, 1));
        let ids = |(page, more): (Vec<ReviewObject>, bool)| {
            (page.into_iter().map(|r| r.id).collect::<Vec<_>>(), more)
        };
        assert_eq!(ids(reviews.page("ta", None, 2)), (vec!["a".to_string(), "b".to_string()], true));
        assert_eq!(ids(reviews.page("ta", Some("ta:b"), 2)), (vec!["c".to_string()], false));
        assert_eq!(ids(reviews.page("ta", Some("a"), 5)).0.len(), 3, "a cursor before the tenant's range");
        assert_eq!(ids(reviews.page("ta", Some("zz"), 5)), (vec![], false));
        assert_eq!(ids(reviews.page("t", None, 5)), (vec!["z".to_string()], false));
        assert!(reviews.remove("ta:b").is_some() && reviews.remove("ta:b").is_none());
        assert_eq!((reviews.len(), reviews.of_tenant("ta")), (5, 2));
        reviews.remove("tb:b");
        assert_eq!(reviews.of_tenant("tb"), 0);
        assert!(!reviews.per_tenant.contains_key("tb"), "an empty tenant's count goes");
    }

    #[test]
    fn a_ruleset_journaled_before_a_check_can_be_given_again_at_start_and_a_new_one_is_checked() {
        // Published before the window horizon and name checks: a 60-day window, a misspelt name.
        let old = "version = \"old-1\"\n[thresholds]\nreview = 50\ndecline = 100\n[[features]]\nname = \"c60d\"\nentity = \"payer\"\naggregate = \"count\"\nwindow = \"60d\"\n[[rules]]\nid = \"typo\"\ndescription = \"d\"\nexpression = \"c60dd > 3\"\nscore = 60\n";
        let dir = tempfile::tempdir().unwrap();
        let open = |startup: Option<&str>| {
            let store = Backend::Embedded(Arc::new(puhui_store::EmbeddedStore::open(dir.path()).unwrap()));
            RiskService::open(
                store,
                startup.map(|t| (t.to_string(), dir.path().to_path_buf())),
                None,
                FeatureLimits::default(),
                None,
            )
            .map(|(_, restore)| restore.active)
        };
        let e = open(Some(old)).expect_err("a new text is checked");
        assert!(e.starts_with("--ruleset: ") && e.contains("longer than the 30 days"), "{e}");
        assert_eq!(open(None).unwrap(), "starter-3", "nothing was journaled by the refusal");
        // As if an older binary had published and activated it.
        let store = puhui_store::EmbeddedStore::open(dir.path()).unwrap();
        let records = [
            RiskRecord::Ruleset(puhui_risk::records::RulesetRecord {
                version: "old-1".into(),
                text: old.into(),
                models: Vec::new(),
            }),
            RiskRecord::Activation(puhui_risk::records::ActivationRecord {
                active: "old-1".into(),
                shadow: None,
            }),
        ];
        store.append_records(records.iter().map(to_store_record).collect()).unwrap();
        drop(store);
        assert_eq!(open(Some(old)).unwrap(), "old-1", "the journaled text is given again");
        assert_eq!(open(None).unwrap(), "old-1");
        assert_eq!(open(Some(STARTER_RULESET)).unwrap(), "starter-3");
        let changed = old.replace("score = 60", "score = 61").replace("old-1", "old-2");
        assert!(open(Some(&changed)).is_err(), "another text is checked");
    }

    #[test]
    fn a_data_directorys_legacy_feature_limits_are_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_feature_limits(dir.path()).unwrap(), None);
        let limits = FeatureLimits { keys_max: 5_000, events_per_key_max: 64, ..FeatureLimits::default() };
        std::fs::write(dir.path().join(FEATURE_LIMITS_FILE), "keys_max=5000\nevents_per_key_max=64\n")
            .unwrap();
        assert_eq!(read_feature_limits(dir.path()).unwrap(), Some(limits));
        std::fs::write(dir.path().join(FEATURE_LIMITS_FILE), "keys_max=0\nevents_per_key_max=64\n").unwrap();
        let e = read_feature_limits(dir.path()).expect_err("a bound of 0 is not read");
        assert!(e.contains("no valid keys_max"), "{e}");
    }

    #[test]
    fn a_data_directorys_feature_seed_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(feature_seed(dir.path(), false).unwrap(), None, "none yet, and none made");
        let seed = feature_seed(dir.path(), true).unwrap().expect("made");
        assert_eq!(feature_seed(dir.path(), true).unwrap(), Some(seed), "read back, not made again");
        assert_eq!(feature_seed(dir.path(), false).unwrap(), Some(seed));
        assert!(!dir.path().join(format!("{FEATURE_SEED_FILE}.tmp")).exists());
        let other = tempfile::tempdir().unwrap();
        assert_ne!(feature_seed(other.path(), true).unwrap(), Some(seed), "each directory its own");
        std::fs::write(dir.path().join(FEATURE_SEED_FILE), "not hex\n").unwrap();
        let e = feature_seed(dir.path(), true).expect_err("a damaged seed is not replaced");
        assert!(e.contains("16 hex digits"), "{e}");
    }

    #[tokio::test]
    async fn a_decline_older_than_the_decisions_kept_stays_declined_also_after_a_restart() {
        let text = "version = \"big-1\"\n[thresholds]\nreview = 50\ndecline = 100\n[[rules]]\nid = \"big\"\ndescription = \"d\"\nexpression = \"amount > 1000\"\nscore = 100\n";
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let store = Backend::Embedded(Arc::new(open_store_when_free(dir.path())));
            Arc::new(
                RiskService::open(
                    store,
                    Some((text.to_string(), dir.path().to_path_buf())),
                    None,
                    FeatureLimits::default(),
                    None,
                )
                .unwrap()
                .0,
            )
        };
        let item = |id: String, source: DecisionSource, amount_minor: u64| ToDecide {
            id,
            source,
            event: EventRecord {
                payer: "t:w".into(),
                payee: "t:shop".into(),
                amount_minor,
                currency: "CNY".into(),
                timestamp_ns: 1_000_000_000,
                attributes: Vec::new(),
                payer_balance_minor: None,
            },
            record: false,
            fence: None,
        };
        let service = open();
        let declined = |s: &RiskService| (s.declined_long_ago("t:big"), s.decided_long_ago("t:big"));
        let (d, durable) =
            service.decide_queued(item("t:big".into(), DecisionSource::Transfer, 5_000)).await.unwrap();
        durable.await.unwrap().unwrap();
        assert_eq!(d.outcome(), Outcome::Decline);
        assert!(service.decision("t:big").is_some());
        assert_eq!(declined(&service), (false, false), "in memory: answered from its record");
        // One more later decision (approved, and one declined standalone) than memory keeps.
        let mut later = (0..=DECISIONS_KEPT_MAX)
            .map(|i| item(format!("t:d{i}"), DecisionSource::Standalone, if i == 0 { 5_000 } else { 10 }));
        loop {
            // Below the journal's queue (`QUEUE_COMMANDS_MAX`): the decider never waits for room, which
            // it does for at most `JOURNAL_ROOM_WAIT_MS` (a loaded CI machine can take longer).
            let chunk: Vec<ToDecide> = later.by_ref().take(512).collect();
            if chunk.is_empty() {
                break;
            }
            for d in service.decide_queued_many(chunk).await {
                d.unwrap().1.await.unwrap().unwrap();
            }
        }
        assert!(service.decision("t:big").is_none() && service.decision("t:d0").is_none());
        assert_eq!(declined(&service), (true, true), "forgotten, but known as a declined transfer");
        let place = service.forgotten_decision("t:big");
        assert!(matches!(place, Some((_, None))), "its journal entry is kept: {place:?}");
        assert_eq!((service.declined_long_ago("t:d0"), service.decided_long_ago("t:d0")), (false, true));
        assert_eq!((service.declined_long_ago("t:new"), service.decided_long_ago("t:new")), (false, false));
        drop(service);
        // The journal's replay forgets the same decisions and keeps the same decline.
        let service = open();
        assert!(service.decision("t:big").is_none());
        assert_eq!(declined(&service), (true, true));
        assert!(
            service.decision(&format!("t:d{DECISIONS_KEPT_MAX}")).is_some()
                && service.decision("t:d1").is_some()
        );
    }

    #[test]
    fn no_snapshot_is_written_once_a_counted_decision_was_refused_by_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::Embedded(Arc::new(puhui_store::EmbeddedStore::open(dir.path()).unwrap()));
        let service = RiskService::open(store, None, None, FeatureLimits::default(), None).unwrap().0;
        // What the journal's reply sets when a decision's record, queued and counted, is refused
        // (the store stopping with it still queued).
        service.records_refused.store(true, std::sync::atomic::Ordering::Release);
        let refused = service.write_snapshot().unwrap_err();
        assert!(refused.contains("re-applies the journal"), "{refused}");
        assert!(!dir.path().join(RISK_SNAPSHOT_FILE).exists());
    }

    #[test]
    fn a_review_taken_to_be_resolved_goes_back_unless_resolved_also_if_the_request_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::Embedded(Arc::new(puhui_store::EmbeddedStore::open(dir.path()).unwrap()));
        let service = RiskService::open(store, None, None, FeatureLimits::default(), None).unwrap().0;
        service.queue_review("t:h", test_review("h"));
        let take = || {
            let review = service.take_review("t:h").expect("queued");
            TakenReview { risk: &service, scoped_id: "t:h".into(), review: Some(review) }
        };
        // A request that fails, or whose future is dropped at an await (its client gone), drops
        // its guard: the review is queued again.
        drop(take());
        assert!(service.is_under_review("t:h"));
        take().resolved();
        assert!(!service.is_under_review("t:h"), "a resolved review stays out");
    }

    #[tokio::test]
    async fn queued_decisions_are_made_in_order_and_past_the_bound_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::Embedded(Arc::new(puhui_store::EmbeddedStore::open(dir.path()).unwrap()));
        let service =
            Arc::new(RiskService::open(store, None, None, FeatureLimits::default(), None).unwrap().0);
        let item = |i: u64| ToDecide {
            id: format!("t:d{i}"),
            source: DecisionSource::Standalone,
            event: EventRecord {
                payer: "t:w".into(),
                payee: "t:shop".into(),
                amount_minor: 100,
                currency: "CNY".into(),
                timestamp_ns: 1_000_000_000 + i,
                attributes: Vec::new(),
                payer_balance_minor: None,
            },
            record: true,
            fence: None,
        };
        let count_1m = |d: &Decided| {
            d.record
                .as_ref()
                .unwrap()
                .active
                .features
                .iter()
                .find(|(name, _)| &**name == "payer_count_1m")
                .map(|f| f.1)
        };
        // One hand-over, decided in order: each decision sees the ones before it.
        let decided = service.decide_queued_many((0..5).map(item).collect()).await;
        for (i, d) in decided.into_iter().enumerate() {
            let (d, durable) = d.unwrap();
            assert_eq!(count_1m(&d), Some(i as f64));
            durable.await.unwrap().unwrap();
        }
        assert_eq!(service.queued.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Past the bound the caller decides them itself, in the same order, and the count is kept.
        service.queued.store(DECISIONS_QUEUED_MAX, std::sync::atomic::Ordering::Relaxed);
        let decided = service.decide_queued_many((5..7).map(item).collect()).await;
        let counts: Vec<_> = decided.iter().map(|d| count_1m(&d.as_ref().unwrap().0)).collect();
        assert_eq!(counts, [Some(5.0), Some(6.0)]);
        assert_eq!(service.queued.load(std::sync::atomic::Ordering::Relaxed), DECISIONS_QUEUED_MAX);
        service.queued.store(0, std::sync::atomic::Ordering::Relaxed);
        let (one, _) = service.decide_queued(item(7)).await.unwrap();
        assert_eq!(count_1m(&one), Some(7.0));
    }

    #[test]
    fn forgotten_ids_count_once_keep_what_was_inserted_and_spread_across_shards() {
        let mut known = ForgottenIds::new();
        let ids: Vec<u64> = (0..20_000).map(|i| hash64(&format!("tenant:decision-{i}"))).collect();
        let of = |i: usize| Forgotten {
            journal_seq: (!i.is_multiple_of(3)).then_some(i as u64 * 7),
            label: [None, Some(Label::Fraud), Some(Label::Legit)][i % 3],
            declined_transfer: i.is_multiple_of(2),
            reviewed_transfer: i % 4 == 1,
        };
        for (i, &h) in ids.iter().enumerate() {
            known.insert(h, Forgotten::default());
            known.insert(h, of(i));
        }
        assert_eq!((known.len(), known.declined), (ids.len(), ids.len() / 2));
        assert!(ids.iter().enumerate().all(|(i, &h)| known.get(h) == Some(of(i))));
        assert!(!known.contains(hash64("tenant:never-seen")));
        known.label(ids[0], Label::Legit);
        assert_eq!(known.get(ids[0]).unwrap().label, Some(Label::Legit));
        assert_eq!(known.get(ids[0]).unwrap().journal_seq, None);
        // The largest sequence a journal can have round-trips.
        let far = Forgotten { journal_seq: Some(Forgotten::SEQ_MASK - 1), ..of(1) };
        assert_eq!(Forgotten::unpack(far.pack()), far);
        // The ids spread over the shards (none holds more than four times its share).
        let most = known.shards.iter().map(|s| s.len()).max().unwrap();
        assert!(most < 4 * ids.len() / ForgottenIds::SHARDS, "{most}");
    }
}
