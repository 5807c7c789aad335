//! Risk control's checkpointer: a thread at idle priority that keeps its own copy of the velocity
//! features and the decision memory by re-applying the journal's durable risk records, exactly as a
//! start does ([`super::replay_record`]), and writes the risk snapshot from that copy every
//! [`CheckpointPolicy::every_records`] records, so that a start after a crash (`kill -9`, power
//! loss) re-applies only the records since the last one.
//!
//! Choice, over a snapshot of the serving state: that state is changed by decisions on several
//! threads (the committer's, the decider's) before their records are durable, so a consistent copy
//! at a journal position needs every decision paused while it is encoded (0.5–0.8 s for 85 MB). The
//! copy here is consistent by construction, since it is what a start would compute from the same
//! records, and it costs serving nothing but idle CPU time and a second copy of the features and the
//! memory (bounded by the same limits). Under a load that keeps the CPUs busy it falls behind, reading
//! on from where it was when they idle; the clean stop's snapshot does not depend on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use puhui_events::JournalTail;
use puhui_journal::JournalPosition;
use puhui_risk::control::Controller;
use puhui_risk::{FeatureLimits, RiskRecord};
use puhui_store::EmbeddedStore;

use super::{snapshot, Memory, RiskRestore, RISK_SNAPSHOT_FILE, STARTER_RULESET};
use crate::idempotency::IdempotencyCache;

/// Entries the checkpointer reads from the journal per pass (then it looks at its stop flag).
const TAIL_ENTRIES_MAX: usize = 4_096;
/// Entries it reads between two yields of its CPU (`sched_yield`): a serving thread woken beside
/// it waits at most that long (the kernel does not always preempt an idle-priority thread at once;
/// see ARCHITECTURE.md).
const YIELD_EVERY_ENTRIES: usize = 8;
/// How long it sleeps when it has read everything durable.
const IDLE_POLL_MS: u64 = 250;
/// The pause after each chunk of a snapshot written to disk
/// ([`puhui_journal::snapshot::write_snapshot_file_paced`]): the journal's syncs go first.
const WRITE_PAUSE_MS: u64 = 5;
/// After a snapshot could not be written (a full disk), how long before it tries again.
const WRITE_RETRY_MS: u64 = 10_000;

/// When the checkpointer writes the risk snapshot (`--risk-snapshot-every`,
/// `--risk-snapshot-interval-min-secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Risk records (decisions, labels, rulesets, lists) journaled since the snapshot on disk that
    /// make a new one due; 0: no checkpointer (a snapshot only at a clean stop and a long start).
    pub every_records: u64,
    /// The least time between two of its snapshots (each writes the whole feature store: tens of
    /// megabytes at a million keys).
    pub interval_min_ms: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> CheckpointPolicy {
        CheckpointPolicy { every_records: 250_000, interval_min_ms: 30_000 }
    }
}

/// The running checkpointer: stopped (and waited for) when dropped.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the thread needs: where the journal is, how the node's features are placed and bounded,
/// and the position of the snapshot on disk (shared with the service's own snapshot at a stop).
pub(super) struct Setup {
    pub store: Weak<EmbeddedStore>,
    pub dir: std::path::PathBuf,
    pub seed: u64,
    pub limits: FeatureLimits,
    pub policy: CheckpointPolicy,
    pub snapshot_entries: Arc<AtomicU64>,
    /// The serving memory, whose review queue each snapshot carries ([`reviews_for_snapshot`]).
    pub live: Weak<Mutex<Memory>>,
}

/// Starts the checkpointer thread.
pub(super) fn start(setup: Setup) -> std::io::Result<Checkpointer> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    // Started from here, at the caller's (normal) priority: threads inherit their creator's.
    let locked = LockedWork::start()?;
    let thread = std::thread::Builder::new().name("puhui-risk-checkpoint".into()).spawn(move || {
        lower_priority();
        if let Err(e) = run(&setup, &locked, &stopping) {
            metrics::gauge!("puhui_risk_checkpointer_failed").set(1.0);
            tracing::warn!(
                error = %e,
                "the risk checkpointer stopped; risk snapshots are written at a clean stop only"
            );
        }
    })?;
    Ok(Checkpointer { stop, thread: Some(thread) })
}

/// Runs the thread at the scheduler's idle priority: it only takes CPU time nothing else wants.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that the call only reads; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "the risk checkpointer runs at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// A thread at normal priority that runs the checkpointer's short pieces of work under a lock the
/// serving threads take too (the ledger's, the live memory's). At idle priority the checkpointer
/// could be kept off the CPU by any runnable thread while holding such a lock, and the committer
/// waiting for it would wait as long (a priority inversion); an unprivileged thread cannot raise
/// itself back to normal priority around the lock (`SCHED_IDLE` to `SCHED_OTHER` needs
/// `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it), so the work is handed to this thread,
/// started before the checkpointer lowered its own. It stops with the checkpointer (its sender
/// dropped).
struct LockedWork {
    jobs: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
}

impl LockedWork {
    fn start() -> std::io::Result<LockedWork> {
        let (jobs, inbox) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(1);
        std::thread::Builder::new().name("puhui-risk-locked".into()).spawn(move || {
            for job in inbox {
                job();
            }
        })?;
        Ok(LockedWork { jobs })
    }

    /// Runs `f` on the normal-priority thread and waits for its result (`None` if that thread
    /// is gone).
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.recv().ok()
    }
}

/// The checkpointer's own copy of risk control, as a start builds it.
struct Copy {
    controller: Controller,
    memory: Memory,
    /// The idempotency keys, which the snapshot carries (rebuilt from their records as a start
    /// rebuilds the serving ones).
    idempotency: IdempotencyCache,
    /// Records applied (and skipped under the loaded snapshot), as a start counts them.
    applied: RiskRestore,
    /// Decisions and labels before this position are in the snapshot it loaded.
    skip_before: u64,
}

impl Copy {
    /// The copy as of the snapshot on disk if one fits, and the position to read the journal from
    /// (the snapshot's, if it carries the state records; otherwise the beginning).
    fn new(setup: &Setup, journal: &std::path::Path) -> Result<(Copy, JournalPosition), String> {
        let models_dir = setup.dir.join("models");
        let (mut controller, _) = Controller::new_journaled(STARTER_RULESET, &models_dir, setup.limits)
            .map_err(|e| e.to_string())?;
        controller.seed_features(setup.seed);
        // Nothing sends journal positions here: the replay sets them.
        let (_, inbox) = std::sync::mpsc::sync_channel(1);
        let mut copy = Copy {
            controller,
            memory: Memory::new(inbox),
            idempotency: IdempotencyCache::default(),
            applied: RiskRestore::default(),
            skip_before: 0,
        };
        // The snapshot the start loaded or wrote, if it fits (the start logged why one did not).
        let mut from = JournalPosition::start();
        if let Ok(Some(loaded)) = snapshot::load(&setup.dir, journal, setup.seed) {
            if copy.controller.restore_features(loaded.features).is_ok() {
                copy.memory.restore(loaded.memory);
                copy.skip_before = loaded.position.entries;
                if let Some(carried) = loaded.carried {
                    for (record_type, timestamp_ns, payload) in &carried {
                        copy.apply_record(loaded.position.entries, *record_type, *timestamp_ns, payload)?;
                    }
                    // Only records journaled after the snapshot make the next one due.
                    copy.applied = RiskRestore::default();
                    from = loaded.position;
                }
            }
        }
        Ok((copy, from))
    }

    /// Applies the journal entry `(seq, kind, body)` if it is a risk record (entries come in
    /// journal order).
    fn apply(&mut self, seq: u64, kind: u8, body: &[u8]) -> Result<(), String> {
        if kind != puhui_journal::codec::KIND_RECORD {
            return Ok(());
        }
        let (record_type, timestamp_ns, payload) =
            puhui_journal::codec::decode_record(body).map_err(|e| format!("entry {seq}: {e}"))?;
        self.apply_record(seq, record_type, timestamp_ns, payload)
    }

    /// Applies a record (journaled at `seq`, or carried by the snapshot) as a start does.
    fn apply_record(
        &mut self,
        seq: u64,
        record_type: u8,
        timestamp_ns: u64,
        payload: &[u8],
    ) -> Result<(), String> {
        if !RiskRecord::knows(record_type) {
            self.idempotency.restore(record_type, timestamp_ns, payload);
            return Ok(());
        }
        super::replay_record(
            &mut self.controller,
            &mut self.memory,
            &mut self.applied,
            self.skip_before,
            (seq, record_type, payload),
        )?;
        Ok(())
    }
}

/// Reviews whose holds the ledger looks up under one read lock ([`reviews_for_snapshot`]): the
/// committer waits at most that many lookups for its write lock.
const REVIEWS_CHECKED_PER_LOCK: usize = 256;
/// Reviews of the live queue copied under one lock of the serving memory
/// ([`reviews_for_snapshot`]): a decision being remembered waits at most that many clones.
const LIVE_REVIEWS_PER_LOCK: usize = 256;
/// Most pages of the live queue one snapshot copies (ten times `REVIEWS_OPEN_MAX`: the bound
/// of a loop over a map that may grow while it is read).
const LIVE_REVIEW_PAGES_MAX: usize = 10 * super::REVIEWS_OPEN_MAX / LIVE_REVIEWS_PER_LOCK;

/// Makes the copy's review queue the one a snapshot must carry: the reviews of the copy whose hold
/// the live ledger shows open, and every review of the live queue. The copy alone is not enough:
/// a review refused for a full queue (not held) is replayed into it like any other, and a retry
/// held later, once there was room, queues it again in the live queue only (no record). Before,
/// the copy kept every review it replayed whose hold was not resolved (so every refused one, in
/// every snapshot, until a start dropped them); keeping only the held ones would lose that retry's
/// review in a crash. A live review whose decision comes after the copy's position is replayed
/// again at a start (the same review); one resolved after the snapshot leaves at the start
/// (`super::reviews_at_start`).
fn reviews_for_snapshot(
    memory: &mut Memory,
    store: &Arc<EmbeddedStore>,
    live: &Weak<Mutex<Memory>>,
    locked: &LockedWork,
) {
    let ids: Vec<String> = memory.reviews.by_id.keys().cloned().collect();
    for chunk in ids.chunks(REVIEWS_CHECKED_PER_LOCK) {
        let (store, chunk) = (Arc::clone(store), chunk.to_vec());
        let not_held = locked.run(move || {
            store.read(|ledger| {
                chunk
                    .into_iter()
                    .filter(|id| {
                        let status = ledger.transfer(id.as_str()).and_then(|t| t.pending_status);
                        status != Some(puhui_ledger::PendingStatus::Pending)
                    })
                    .collect::<Vec<String>>()
            })
        });
        for id in not_held.unwrap_or_default() {
            memory.reviews.remove(&id);
        }
    }
    let mut after: Option<String> = None;
    // The live queue holds at most REVIEWS_OPEN_MAX once start-up has dropped what the replay
    // queued beyond it: a generous bound on the pages.
    for _page in 0..=LIVE_REVIEW_PAGES_MAX {
        let (live, from) = (live.clone(), after.clone());
        let page: Vec<(String, super::ReviewObject)> = locked
            .run(move || {
                let Some(live) = live.upgrade() else { return Vec::new() };
                let serving = live.lock().unwrap_or_else(|p| p.into_inner());
                let from = match &from {
                    Some(a) => std::ops::Bound::Excluded(a.as_str()),
                    None => std::ops::Bound::Unbounded,
                };
                let range = serving.reviews.by_id.range::<str, _>((from, std::ops::Bound::Unbounded));
                range.take(LIVE_REVIEWS_PER_LOCK).map(|(id, review)| (id.clone(), review.clone())).collect()
            })
            .unwrap_or_default();
        let last_page = page.len() < LIVE_REVIEWS_PER_LOCK;
        after = page.last().map(|(id, _)| id.clone());
        for (id, review) in page {
            memory.reviews.insert(id, review);
        }
        if last_page {
            break;
        }
    }
}

fn run(setup: &Setup, locked: &LockedWork, stop: &AtomicBool) -> Result<(), String> {
    let journal = setup.dir.join(puhui_store::JOURNAL_FILE);
    let (mut copy, from) = Copy::new(setup, &journal)?;
    // Each entry's chained hash is checked as it is read: a start does not read again the journal
    // before the snapshot written from this copy, so what goes into it must be what was hashed.
    let mut tail = JournalTail::new(&journal, from, from.entries);
    // The records the copy re-applies past the snapshot it began from count towards the first
    // snapshot; later ones also wait out the interval.
    let mut records_at_write = 0;
    let mut written_at: Option<Instant> = None;
    // After a failed write: not before then.
    let mut retry_at: Option<Instant> = None;
    let lag = metrics::gauge!("puhui_risk_checkpointer_lag_entries");
    while !stop.load(Ordering::Acquire) {
        let Some(store) = setup.store.upgrade() else { return Ok(()) };
        let durable = store.durable_entries();
        drop(store);
        let mut failed = None;
        let mut since_yield = 0;
        let read = tail
            .read_with(durable, TAIL_ENTRIES_MAX, |seq, kind, body| {
                if failed.is_none() {
                    failed = copy.apply(seq, kind, body).err();
                }
                since_yield += 1;
                if since_yield == YIELD_EVERY_ENTRIES {
                    since_yield = 0;
                    std::thread::yield_now();
                }
            })
            .map_err(|e| e.to_string())?;
        if let Some(e) = failed {
            return Err(e);
        }
        lag.set(durable.saturating_sub(tail.next_seq()) as f64);
        if read > 0 {
            continue;
        }
        // Caught up with the durable end (a frame boundary): a snapshot may be due.
        let position = tail.resume_position();
        let due = copy.applied.records - records_at_write >= setup.policy.every_records
            && written_at.is_none_or(|t| t.elapsed() >= Duration::from_millis(setup.policy.interval_min_ms))
            && retry_at.is_none_or(|t| Instant::now() >= t);
        let on_disk = setup.snapshot_entries.load(Ordering::Acquire);
        let newer = on_disk == u64::MAX || position.entries > on_disk;
        if due && newer && position.entries == tail.next_seq() && !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            if let Some(store) = setup.store.upgrade() {
                reviews_for_snapshot(&mut copy.memory, &store, &setup.live, locked);
            }
            let carried = super::state_records(&copy.controller, Some(&copy.idempotency));
            let content =
                snapshot::encode_pausing(copy.controller.features(), &copy.memory, &carried, || {
                    std::thread::yield_now()
                });
            let (bytes, encode_ms) = (content.len(), started.elapsed().as_millis() as u64);
            let written = puhui_journal::snapshot::write_snapshot_file_paced(
                &setup.dir,
                RISK_SNAPSHOT_FILE,
                &position,
                &[content],
                Some(Duration::from_millis(WRITE_PAUSE_MS)),
            );
            if let Err(e) = written {
                // A full or failing disk: the copy is still good; try again later (the snapshot
                // on disk, if any, stays the one before: the file is replaced atomically).
                metrics::counter!("puhui_risk_checkpoint_write_errors_total").increment(1);
                tracing::warn!(error = %e, "could not write the risk snapshot; trying again later");
                retry_at = Some(Instant::now() + Duration::from_millis(WRITE_RETRY_MS));
                continue;
            }
            setup.snapshot_entries.store(position.entries, Ordering::Release);
            records_at_write = copy.applied.records;
            written_at = Some(Instant::now());
            metrics::counter!("puhui_risk_checkpoints_total").increment(1);
            tracing::info!(
                entries = position.entries,
                bytes,
                encode_ms,
                took_ms = started.elapsed().as_millis() as u64,
                "risk snapshot saved while serving"
            );
            continue;
        }
        std::thread::sleep(Duration::from_millis(IDLE_POLL_MS));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use puhui_ledger::{Currency, Id, NewAccount, ResultCode, TransferRequest};
    use puhui_store::LedgerStore;

    use super::*;

    #[test]
    fn a_snapshot_carries_the_copys_reviews_still_held_and_the_live_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let id = |s: &str| Id::new(s).unwrap();
        let cny = Currency::iso("CNY").unwrap();
        let accounts = vec![NewAccount::new(id("t:a"), cny), NewAccount::new(id("t:b"), cny)];
        assert!(store.create_accounts(accounts).unwrap().iter().all(|r| r.result == ResultCode::Ok));
        let hold = |h: &str| TransferRequest::pending(id(h), id("t:a"), id("t:b"), 5, cny.code(), None);
        let batch = vec![
            hold("t:posted"),
            hold("t:voided"),
            hold("t:open"),
            TransferRequest::post(id("t:posted.post"), id("t:posted"), None),
            TransferRequest::void(id("t:voided.void"), id("t:voided")),
        ];
        assert!(store.create_transfers(batch).unwrap().iter().all(|r| r.result == ResultCode::Ok));
        let (_seqs, seq_inbox) = std::sync::mpsc::sync_channel(1);
        let mut memory = Memory::new(seq_inbox);
        // In the copy: resolved holds, an open one, one in flight, one refused for a full queue.
        for h in ["posted", "voided", "open", "in-flight", "refused"] {
            memory.reviews.insert(format!("t:{h}"), crate::risk::test_review(h));
        }
        // Live: the open one, the one in flight, and a retry held since (queued without a record),
        // more than one page of them.
        let (_seqs, seq_inbox) = std::sync::mpsc::sync_channel(1);
        let mut serving = Memory::new(seq_inbox);
        let mut live_ids: Vec<String> =
            (0..LIVE_REVIEWS_PER_LOCK + 3).map(|i| format!("t:retried-{i:04}")).collect();
        live_ids.extend(["t:open".to_string(), "t:in-flight".to_string()]);
        for id in &live_ids {
            serving.reviews.insert(id.clone(), crate::risk::test_review(&id[2..]));
        }
        let live = Arc::new(Mutex::new(serving));
        let locked = LockedWork::start().unwrap();
        reviews_for_snapshot(&mut memory, &store, &Arc::downgrade(&live), &locked);
        let left: Vec<&String> = memory.reviews.by_id.keys().collect();
        live_ids.sort();
        assert_eq!(left, live_ids.iter().collect::<Vec<_>>());
        assert_eq!(memory.reviews.of_tenant("t"), live_ids.len());
    }
}
