//! One group of writes = one PostgreSQL transaction (see the crate docs for why this order of locks
//! can neither deadlock nor double-spend).
//!
//! 1. Read the journal head's `next_seq` (no lock): the *version* the working set is read at.
//! 2. Find the ids the group names: accounts, transfer ids (idempotency), pending transfers
//!    (post/void), due holds (expiry); load the transfers (no lock: all but an open hold's status
//!    are immutable), then their pendings and accounts.
//! 3. Lock the accounts, `ORDER BY id FOR UPDATE`; then the open holds the group may resolve,
//!    `ORDER BY id FOR UPDATE` (re-reading them: their locked version is the current one).
//! 4. Lock the journal head (`FOR UPDATE`): from here to COMMIT, this transaction is the only
//!    writer. If `next_seq` moved since step 1, re-check the ids that were *missing*: a row that
//!    appeared (created by a commit in between) means the working set is stale: roll back, retry.
//! 5. Run the very same domain code on a transient [`Ledger`] over the working set, with the ledger
//!    clock continuing from the head's `last_timestamp_ns`.
//! 6. Write back the new and changed rows, the balance history, the journal entries (chained from
//!    the head's hash) and the new head; COMMIT.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use postgres::error::SqlState;
use postgres::Client;
use puhui_journal::{codec, frame};
use puhui_ledger::{
    Account, EventResult, Id, Ledger, LogItem, NewAccount, PendingStatus, ResultCode, StatusAction, Transfer,
    TransferKind, TransferRequest, BATCH_EVENTS_MAX,
};
use puhui_store::StoreError;

use crate::rows::{self, AccountColumns, TransferColumns, ACCOUNT_COLUMNS, TRANSFER_COLUMNS};

/// A write, as a caller submitted it.
#[derive(Debug)]
pub enum Work {
    /// `create_accounts`.
    Accounts(Vec<NewAccount>),
    /// `create_transfers`. With a fence, posted only while its decision locks are held (a transfer
    /// whose id is locked across nodes without a decision of its own: see `crate::locks`).
    Transfers(Vec<TransferRequest>, Option<crate::locks::Fence>),
    /// `set_account_status`.
    Status(Id, StatusAction),
    /// One round of `expire_due`: at most [`BATCH_EVENTS_MAX`] holds.
    Expire,
    /// Application records (risk decisions, labels…) journaled in order; the ledger ignores them.
    /// With a fence, written only while its decision locks are held ([`crate::locks`]).
    Records(Vec<puhui_store::Record>, Option<crate::locks::Fence>),
}

impl Work {
    /// Events this work decides (for group sizing).
    pub fn events(&self) -> usize {
        match self {
            Work::Accounts(b) => b.len(),
            Work::Transfers(b, _) => b.len(),
            Work::Status(..) => 1,
            Work::Expire => BATCH_EVENTS_MAX,
            Work::Records(r, _) => r.len(),
        }
    }
}

/// What a work gave.
#[derive(Debug, Clone)]
pub enum Done {
    /// One result per event.
    Events(Vec<EventResult>),
    /// The result of a status change.
    Event(EventResult),
    /// Holds expired.
    Count(usize),
    /// The journal sequence of the first of a work's records.
    Seq(u64),
    /// A work's records or transfers were not written: their fence's session no longer holds its
    /// locks.
    Fenced,
}

/// Why a group transaction did not commit.
#[derive(Debug)]
pub enum TxError {
    /// Harmless and expected under concurrency: run the group again (bounded by the caller).
    Retry(&'static str),
    /// The group cannot commit; the message says why. Nothing was written.
    Fatal(StoreError),
    /// The connection failed: outcome unknown if it failed during COMMIT (callers retry by id).
    Connection(StoreError),
}

/// Counters a test or benchmark reads.
#[derive(Debug, Default)]
pub struct TxStats {
    /// Groups committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Retries because the working set went stale between loading and the head lock.
    pub stale_retries: std::sync::atomic::AtomicU64,
    /// Deadlocks PostgreSQL reported (must stay 0: the lock order makes them impossible).
    pub deadlocks: std::sync::atomic::AtomicU64,
    /// Other retried errors (serialization failures, unique violations from a concurrent insert).
    pub other_retries: std::sync::atomic::AtomicU64,
}

fn classify(what: &'static str, e: postgres::Error, stats: &TxStats) -> TxError {
    use std::sync::atomic::Ordering::Relaxed;
    match e.code() {
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => {
            stats.deadlocks.fetch_add(1, Relaxed);
            TxError::Retry("deadlock detected")
        }
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::UNIQUE_VIOLATION => {
            stats.other_retries.fetch_add(1, Relaxed);
            TxError::Retry("serialization failure or concurrent insert")
        }
        Some(_) => TxError::Fatal(StoreError::Io(format!("{what}: {}", crate::describe(&e)))),
        None => TxError::Connection(StoreError::Io(format!("{what}: {}", crate::describe(&e)))),
    }
}

/// Due holds loaded per group at most (one expiry round).
const DUE_HOLDS_MAX: i64 = BATCH_EVENTS_MAX as i64;

/// The indexes of the fenced works (records, transfers) in `works` whose lock session no longer holds their
/// buckets. Takes a shared transaction lock on every fenced bucket in its fence class first, so
/// that a node taking one of these buckets from a dead session waits for this transaction to end
/// before it grants the bucket, then has each session answer a round trip (see [`crate::locks`]).
fn fenced_out(
    tx: &mut postgres::Transaction<'_>,
    works: &[&Work],
) -> Result<HashSet<usize>, postgres::Error> {
    let fences: Vec<(usize, &crate::locks::Fence)> = works
        .iter()
        .enumerate()
        .filter_map(|(at, w)| match w {
            Work::Records(_, Some(f)) | Work::Transfers(_, Some(f)) => Some((at, f)),
            _ => None,
        })
        .collect();
    let mut out = HashSet::new();
    if fences.is_empty() {
        return Ok(out);
    }
    let mut by_class: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
    for (_, f) in &fences {
        by_class.entry(f.fence_class()).or_default().extend(f.buckets().iter());
    }
    for (fence_class, buckets) in by_class {
        let buckets: Vec<i32> = buckets.into_iter().collect();
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1, b) FROM unnest($2::int4[]) AS u(b)",
            &[&fence_class, &buckets],
        )?;
    }
    // One round trip per session (a node has one at a time; a batch's records share one lock).
    let mut asked: Vec<(&crate::locks::Fence, bool)> = Vec::new();
    for (at, fence) in fences {
        let alive = match asked.iter().find(|(f, _)| f.same_session(fence)) {
            Some((_, alive)) => *alive,
            None => {
                let alive = fence.session_alive();
                asked.push((fence, alive));
                alive
            }
        };
        if !alive {
            out.insert(at);
        }
    }
    Ok(out)
}

/// Runs `works` as one transaction at ledger time `now_ns` (the clock's reading).
pub fn execute(
    client: &mut Client,
    works: &[&Work],
    now_ns: u64,
    stats: &TxStats,
) -> Result<Vec<Done>, TxError> {
    let err = |what: &'static str| move |e: postgres::Error| classify(what, e, stats);
    let mut tx = client.transaction().map_err(err("BEGIN"))?;
    let now_sql = rows::ts_to_sql(now_ns).map_err(TxError::Fatal)?;

    // 1. The version the working set is read at.
    let seen_seq: i64 =
        tx.query_one("SELECT next_seq FROM puhui_journal_head", &[]).map_err(err("reading the head"))?.get(0);

    // 1b. Fenced works (records, transfers): written only while their lock session holds their
    // buckets. Checked before any row is locked: the check waits for a round trip of the lock
    // session, which must not hold the accounts (or the head) meanwhile; the shared fence locks
    // it takes are held to COMMIT, so a node taking a bucket over waits for this transaction.
    let fenced = fenced_out(&mut tx, works).map_err(err("checking decision lock fences"))?;

    // 2. Ids the group names.
    let mut account_ids: BTreeSet<String> = BTreeSet::new();
    let mut transfer_ids: BTreeSet<String> = BTreeSet::new();
    let mut expire_due = false;
    let mut resolves_holds = false;
    for work in works {
        match work {
            Work::Accounts(batch) => account_ids.extend(batch.iter().map(|a| a.id.to_string())),
            Work::Transfers(batch, _) => {
                resolves_holds = true;
                for r in batch {
                    transfer_ids.insert(r.id.to_string());
                    transfer_ids.extend(r.pending_id.as_ref().map(|p| p.to_string()));
                    account_ids.extend(r.debit_account_id.as_ref().map(|a| a.to_string()));
                    account_ids.extend(r.credit_account_id.as_ref().map(|a| a.to_string()));
                }
            }
            Work::Status(id, _) => {
                resolves_holds = true;
                account_ids.insert(id.to_string());
            }
            Work::Expire => expire_due = true,
            Work::Records(..) => {}
        }
    }
    if expire_due {
        let due = tx
            .query(
                "SELECT id FROM puhui_transfers WHERE pending_status = 0 AND expires_at_ns IS NOT NULL \
                 AND expires_at_ns <= $1 ORDER BY expires_at_ns LIMIT $2",
                &[&now_sql, &DUE_HOLDS_MAX],
            )
            .map_err(err("finding due holds"))?;
        transfer_ids.extend(due.iter().map(|r| r.get::<_, String>(0)));
    }
    let mut looked_up: BTreeSet<String> = transfer_ids.clone();
    let mut transfers: HashMap<String, Transfer> = HashMap::new();
    load_transfers(&mut tx, &transfer_ids, &mut transfers, stats)?;
    // An applied post or void needs its pending transfer (idempotency compares against it).
    let more: BTreeSet<String> = transfers
        .values()
        .filter(|t| t.result == ResultCode::Ok && t.request.kind.resolves_pending())
        .filter_map(|t| t.request.pending_id.as_ref().map(|p| p.to_string()))
        .filter(|p| !transfers.contains_key(p))
        .collect();
    looked_up.extend(more.iter().cloned());
    load_transfers(&mut tx, &more, &mut transfers, stats)?;
    // Holds of the touched accounts that are due now expire first, as in the embedded store.
    if resolves_holds && !account_ids.is_empty() {
        let names: Vec<&str> = account_ids.iter().map(String::as_str).collect();
        let due = tx
            .query(
                &format!(
                    "SELECT {TRANSFER_COLUMNS} FROM puhui_transfers WHERE pending_status = 0 \
                     AND expires_at_ns IS NOT NULL AND expires_at_ns <= $1 \
                     AND (debit_account_id = ANY($2) OR credit_account_id = ANY($2)) LIMIT $3"
                ),
                &[&now_sql, &names, &DUE_HOLDS_MAX],
            )
            .map_err(err("finding due holds of the accounts"))?;
        for row in &due {
            let t = rows::transfer(row).map_err(TxError::Fatal)?;
            transfers.entry(t.request.id.to_string()).or_insert(t);
        }
    }
    for t in transfers.values() {
        if t.result == ResultCode::Ok {
            account_ids.extend(t.request.debit_account_id.as_ref().map(|a| a.to_string()));
            account_ids.extend(t.request.credit_account_id.as_ref().map(|a| a.to_string()));
        }
    }

    // 3. Locks, in the global order: accounts by id, then open holds by id.
    let names: Vec<&str> = account_ids.iter().map(String::as_str).collect();
    let locked = tx
        .query(
            &format!(
                "SELECT {ACCOUNT_COLUMNS} FROM puhui_accounts WHERE id = ANY($1) \
                 ORDER BY id COLLATE \"C\" FOR UPDATE"
            ),
            &[&names],
        )
        .map_err(err("locking accounts"))?;
    let mut accounts: Vec<Account> = Vec::with_capacity(locked.len());
    for row in &locked {
        accounts.push(rows::account(row).map_err(TxError::Fatal)?);
    }
    let holds: Vec<&str> = {
        let mut holds: Vec<&str> = transfers
            .values()
            .filter(|t| t.pending_status == Some(PendingStatus::Pending))
            .map(|t| t.request.id.as_str())
            .collect();
        holds.sort_unstable();
        holds
    };
    if !holds.is_empty() {
        let locked = tx
            .query(
                &format!(
                    "SELECT {TRANSFER_COLUMNS} FROM puhui_transfers WHERE id = ANY($1) \
                     ORDER BY id COLLATE \"C\" FOR UPDATE"
                ),
                &[&holds],
            )
            .map_err(err("locking holds"))?;
        for row in &locked {
            let t = rows::transfer(row).map_err(TxError::Fatal)?;
            transfers.insert(t.request.id.to_string(), t);
        }
    }

    // 4. The head: from here to COMMIT no other writer runs.
    let head = tx
        .query_one("SELECT next_seq, last_hash, last_timestamp_ns FROM puhui_journal_head FOR UPDATE", &[])
        .map_err(err("locking the journal head"))?;
    let next_seq: i64 = head.get(0);
    let last_hash: Vec<u8> = head.get(1);
    let last_hash: [u8; 32] = last_hash
        .as_slice()
        .try_into()
        .map_err(|_| TxError::Fatal(rows::corrupt("journal head", "hash is not 32 bytes")))?;
    let last_ts = rows::ts_from_sql(head.get(2), "journal head").map_err(TxError::Fatal)?;
    if next_seq != seen_seq {
        let found_accounts: HashSet<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
        let missing_accounts: Vec<&str> =
            names.iter().copied().filter(|n| !found_accounts.contains(n)).collect();
        let missing_transfers: Vec<&str> =
            looked_up.iter().map(String::as_str).filter(|t| !transfers.contains_key(*t)).collect();
        let appeared = tx
            .query_one(
                "SELECT (SELECT count(*) FROM puhui_accounts WHERE id = ANY($1)) \
                 + (SELECT count(*) FROM puhui_transfers WHERE id = ANY($2))",
                &[&missing_accounts, &missing_transfers],
            )
            .map_err(err("re-checking missing ids"))?
            .get::<_, i64>(0);
        if appeared > 0 {
            stats.stale_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TxError::Retry("rows appeared after the working set was read"));
        }
    }

    // 5. The same domain code, on the working set.
    let loaded_accounts: HashMap<Id, Account> = accounts.iter().map(|a| (a.id.clone(), a.clone())).collect();
    let loaded_transfers: HashMap<Id, Transfer> =
        transfers.values().map(|t| (t.request.id.clone(), t.clone())).collect();
    let mut ledger = Ledger::from_working_set(accounts, transfers.into_values().collect(), last_ts)
        .map_err(|e| TxError::Fatal(rows::corrupt("working set", e)))?;
    let mut done = Vec::with_capacity(works.len());
    // Due holds of the working set first (bounded), as the embedded committer does per group.
    let mut expired = ledger.expire_due_at_most(now_ns, BATCH_EVENTS_MAX);
    // The journal entries (kind, body) in the order of the works: the ledger's log is drained after
    // each work so that records land between the events queued before and after them.
    let mut entries: Vec<(u8, Vec<u8>)> = Vec::new();
    let drain = |ledger: &mut Ledger, entries: &mut Vec<(u8, Vec<u8>)>| {
        let log: Vec<LogItem> = ledger.drain_log().collect();
        for item in log {
            let mut body = Vec::new();
            let kind = codec::encode_log_item(ledger, item, &mut body);
            entries.push((kind, body));
        }
    };
    let first_seq =
        u64::try_from(next_seq).map_err(|_| TxError::Fatal(rows::corrupt("head", "negative seq")))?;
    for (at, work) in works.iter().enumerate() {
        done.push(match work {
            Work::Records(..) | Work::Transfers(..) if fenced.contains(&at) => Done::Fenced,
            Work::Accounts(batch) => Done::Events(ledger.create_accounts(batch.clone(), now_ns)),
            Work::Transfers(batch, _) => Done::Events(ledger.create_transfers(batch.clone(), now_ns)),
            Work::Status(id, action) => Done::Event(ledger.set_account_status(id, *action, now_ns)),
            Work::Expire => {
                expired += ledger.expire_due_at_most(now_ns, BATCH_EVENTS_MAX);
                Done::Count(std::mem::take(&mut expired))
            }
            Work::Records(records, _) => {
                drain(&mut ledger, &mut entries);
                let first = Done::Seq(first_seq + entries.len() as u64);
                for record in records {
                    let mut body = Vec::new();
                    let kind = codec::encode_record(record.record_type, now_ns, &record.payload, &mut body);
                    entries.push((kind, body));
                }
                first
            }
        });
    }
    drain(&mut ledger, &mut entries);
    if entries.is_empty() {
        // Nothing changed (every event was rejected or idempotent): nothing to write.
        tx.rollback().map_err(err("ROLLBACK"))?;
        return Ok(done);
    }

    // 6. Write back.
    let mut new_accounts = AccountColumns::default();
    let mut changed_accounts = AccountColumns::default();
    for account in ledger.accounts() {
        match loaded_accounts.get(&account.id) {
            None => new_accounts.push(&account).map_err(TxError::Fatal)?,
            Some(before) if *before != account => changed_accounts.push(&account).map_err(TxError::Fatal)?,
            Some(_) => {}
        }
    }
    let mut new_transfers = TransferColumns::default();
    let (mut resolved_ids, mut resolved_status, mut resolved_at) = (Vec::new(), Vec::new(), Vec::new());
    for t in ledger.transfers() {
        match loaded_transfers.get(&t.request.id) {
            None => new_transfers.push(&t).map_err(TxError::Fatal)?,
            Some(before) if *before != t => {
                // Only an open hold's status changes once recorded.
                assert_eq!(before.request.kind, TransferKind::Pending, "only holds change");
                assert_eq!(before.pending_status, Some(PendingStatus::Pending), "only open holds change");
                resolved_ids.push(t.request.id.to_string());
                resolved_status.push(t.pending_status.map(|s| s as i16));
                resolved_at.push(t.resolved_at_ns.map(rows::ts_to_sql).transpose().map_err(TxError::Fatal)?);
            }
            Some(_) => {}
        }
    }
    let mut history = HistoryColumns::default();
    for index in 0..ledger.accounts_count() as u32 {
        let account_id = ledger.account_id_at(index).to_string();
        for point in ledger.history_at(index) {
            history.account_id.push(account_id.clone());
            history.timestamp_ns.push(rows::ts_to_sql(point.timestamp_ns).map_err(TxError::Fatal)?);
            history.transfer_id.push(ledger.transfer_id_at(point.transfer).to_string());
            history.expiry.push(point.expiry);
            let b = point.balances;
            history.dp.push(rows::amount_to_sql(b.debits_pending));
            history.dpo.push(rows::amount_to_sql(b.debits_posted));
            history.cp.push(rows::amount_to_sql(b.credits_pending));
            history.cpo.push(rows::amount_to_sql(b.credits_posted));
        }
    }
    // The journal: the same entries, the same chain, continuing from the head.
    let (mut seqs, mut kinds, mut bodies, mut hashes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut hash = last_hash;
    let mut seq = first_seq;
    for (kind, body) in entries {
        hash = frame::entry_hash(&hash, seq, kind, &body);
        seqs.push(seq as i64);
        kinds.push(kind as i16);
        bodies.push(body);
        hashes.push(hash.to_vec());
        seq += 1;
    }
    if new_accounts.len() > 0 {
        new_accounts.insert(&mut tx).map_err(err("inserting accounts"))?;
    }
    if changed_accounts.len() > 0 {
        changed_accounts.update(&mut tx).map_err(err("updating accounts"))?;
    }
    if new_transfers.len() > 0 {
        new_transfers.insert(&mut tx).map_err(err("inserting transfers"))?;
    }
    if !resolved_ids.is_empty() {
        tx.execute(
            "UPDATE puhui_transfers t SET pending_status = u.status, resolved_at_ns = u.at \
             FROM unnest($1::text[], $2::int2[], $3::int8[]) AS u(id, status, at) WHERE t.id = u.id",
            &[&resolved_ids, &resolved_status, &resolved_at],
        )
        .map_err(err("updating holds"))?;
    }
    if !history.account_id.is_empty() {
        history.insert(&mut tx).map_err(err("inserting balance history"))?;
    }
    tx.execute(
        "INSERT INTO puhui_journal (seq, kind, body, hash) \
         SELECT * FROM unnest($1::int8[], $2::int2[], $3::bytea[], $4::bytea[])",
        &[&seqs, &kinds, &bodies, &hashes],
    )
    .map_err(err("appending to the journal"))?;
    let last_ts = rows::ts_to_sql(ledger.last_timestamp_ns()).map_err(TxError::Fatal)?;
    tx.execute(
        "UPDATE puhui_journal_head SET next_seq = $1, last_hash = $2, last_timestamp_ns = $3",
        &[&(seq as i64), &&hash[..], &last_ts],
    )
    .map_err(err("moving the journal head"))?;
    tx.commit().map_err(|e| match classify("COMMIT", e, stats) {
        // A failed COMMIT may or may not have committed: never retried blindly.
        TxError::Retry(why) => TxError::Fatal(StoreError::Io(format!("COMMIT: {why}"))),
        other => other,
    })?;
    stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(done)
}

fn load_transfers(
    tx: &mut postgres::Transaction<'_>,
    ids: &BTreeSet<String>,
    into: &mut HashMap<String, Transfer>,
    stats: &TxStats,
) -> Result<(), TxError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let found = tx
        .query(&format!("SELECT {TRANSFER_COLUMNS} FROM puhui_transfers WHERE id = ANY($1)"), &[&ids])
        .map_err(|e| classify("loading transfers", e, stats))?;
    for row in &found {
        let t = rows::transfer(row).map_err(TxError::Fatal)?;
        into.insert(t.request.id.to_string(), t);
    }
    Ok(())
}

#[derive(Default)]
struct HistoryColumns {
    account_id: Vec<String>,
    timestamp_ns: Vec<i64>,
    transfer_id: Vec<String>,
    expiry: Vec<bool>,
    dp: Vec<i64>,
    dpo: Vec<i64>,
    cp: Vec<i64>,
    cpo: Vec<i64>,
}

impl HistoryColumns {
    fn insert(&self, tx: &mut postgres::Transaction<'_>) -> Result<u64, postgres::Error> {
        tx.execute(
            "INSERT INTO puhui_account_history (account_id, timestamp_ns, transfer_id, expiry, \
             debits_pending, debits_posted, credits_pending, credits_posted) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bool[], $5::int8[], $6::int8[], \
             $7::int8[], $8::int8[])",
            &[
                &self.account_id,
                &self.timestamp_ns,
                &self.transfer_id,
                &self.expiry,
                &self.dp,
                &self.dpo,
                &self.cp,
                &self.cpo,
            ],
        )
    }
}
