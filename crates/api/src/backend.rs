//! Which ledger store the API runs on: the embedded store (one node, `DATA_DIR/journal.phj`) or
//! PostgreSQL (`puhui serve --store postgres://…`, several nodes on one database).
//!
//! Key decision: an enum, not a trait object, so that the embedded path keeps its direct calls (the
//! committer queue and the `try_read` fast path) and pays nothing for the second backend.

use std::path::Path;
use std::sync::Arc;

use puhui_ledger::{EventResult, Id, NewAccount, StatusAction, TransferRequest};
use puhui_store::{EmbeddedStore, LedgerStore, Record, Reply, StoreError};
use puhui_store_pg::PgStore;

/// The store behind the API.
#[derive(Clone)]
pub enum Backend {
    /// The embedded store: journal file, in-memory ledger, one node.
    Embedded(Arc<EmbeddedStore>),
    /// PostgreSQL: every node on the same database sees the same ledger.
    Postgres(Arc<PgStore>),
}

impl Backend {
    /// The embedded store, if that is the backend (features that need its journal file).
    pub fn embedded(&self) -> Option<&Arc<EmbeddedStore>> {
        match self {
            Backend::Embedded(s) => Some(s),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether the backend is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// The store as the generic trait (blocking calls: use from a blocking thread).
    pub fn ledger(&self) -> &dyn LedgerStore {
        match self {
            Backend::Embedded(s) => s.as_ref(),
            Backend::Postgres(s) => s.as_ref(),
        }
    }

    /// A fresh unique id.
    pub fn new_id(&self) -> Id {
        self.ledger().new_id()
    }

    /// Whether the store accepts writes.
    pub fn is_healthy(&self) -> bool {
        match self {
            Backend::Embedded(s) => s.is_healthy(),
            Backend::Postgres(s) => s.is_healthy(),
        }
    }

    /// Queues accounts; `reply` gets the results once durable.
    pub fn submit_accounts(
        &self,
        batch: Vec<NewAccount>,
        reply: Reply<Vec<EventResult>>,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_accounts(batch, reply),
            Backend::Postgres(s) => {
                s.submit_accounts(batch, reply);
                Ok(())
            }
        }
    }

    /// Queues transfers; `reply` gets the results once durable.
    pub fn submit_transfers(
        &self,
        batch: Vec<TransferRequest>,
        reply: Reply<Vec<EventResult>>,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_transfers(batch, reply),
            Backend::Postgres(s) => {
                s.submit_transfers(batch, reply);
                Ok(())
            }
        }
    }

    /// [`Backend::submit_transfers`] for transfers whose ids are locked across nodes without a
    /// decision of their own, under that lock's `fence` (PostgreSQL: refused if the lock was lost;
    /// the embedded store has no fences).
    pub fn submit_transfers_fenced(
        &self,
        batch: Vec<TransferRequest>,
        fence: Option<puhui_store_pg::Fence>,
        reply: Reply<Vec<EventResult>>,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_transfers(batch, reply),
            Backend::Postgres(s) => {
                s.submit_transfers_fenced(batch, fence, reply);
                Ok(())
            }
        }
    }

    /// Queues a status change; `reply` gets the result once durable.
    pub fn submit_status(
        &self,
        id: Id,
        action: StatusAction,
        reply: Reply<EventResult>,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_status(id, action, reply),
            Backend::Postgres(s) => {
                s.submit_status(id, action, reply);
                Ok(())
            }
        }
    }

    /// Embedded only: runs `job` on the committer thread in queue order ([`EmbeddedStore::submit_deferred`]).
    pub fn submit_deferred(&self, job: puhui_store::DeferredJob) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_deferred(job),
            _ => Err(StoreError::Unavailable("deferred jobs need the embedded store".into())),
        }
    }

    /// Queues application records (journaled in the order queued); `reply` gets the first one's
    /// journal sequence once durable.
    pub fn submit_records(&self, records: Vec<Record>, reply: Reply<u64>) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_records(records, reply),
            Backend::Postgres(s) => s.submit_records(records, reply),
        }
    }

    /// [`Backend::submit_records`] for a decision's records under its cross-node lock's `fence`
    /// (PostgreSQL: refused if the lock was lost; the embedded store has no fences).
    pub fn submit_records_fenced(
        &self,
        records: Vec<Record>,
        fence: Option<puhui_store_pg::Fence>,
        reply: Reply<u64>,
    ) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(s) => s.submit_records(records, reply),
            Backend::Postgres(s) => s.submit_records_fenced(records, fence, reply),
        }
    }

    /// Journals application records and waits until they are durable (blocking).
    pub fn append_records(&self, records: Vec<Record>) -> Result<u64, StoreError> {
        match self {
            Backend::Embedded(s) => s.append_records(records),
            Backend::Postgres(s) => s.append_records(records),
        }
    }

    /// Calls `on_record(seq, record_type, timestamp_ns, payload)` for every application record in
    /// the journal, in order (blocking; start-up only), from `from` on (a position of the embedded
    /// journal: a snapshot's; `None`, or on PostgreSQL: from the beginning). Returns the journal
    /// entries read (on PostgreSQL: the records).
    pub fn scan_records(
        &self,
        from: Option<puhui_journal::JournalPosition>,
        on_record: impl FnMut(u64, u8, u64, &[u8]) -> Result<(), String>,
    ) -> Result<u64, String> {
        match self {
            Backend::Embedded(s) => {
                let journal = s.data_dir().join(puhui_store::JOURNAL_FILE);
                let from = from.unwrap_or_else(puhui_journal::JournalPosition::start);
                let first = from.entries;
                puhui_journal::scan_records_from(&journal, from, on_record)
                    .map(|summary| summary.entries - first)
                    .map_err(|e| e.to_string())
            }
            Backend::Postgres(s) => s.scan_records(on_record),
        }
    }

    /// Stops the store after what is queued (blocking).
    pub fn shutdown(&self) {
        match self {
            Backend::Embedded(s) => s.shutdown(),
            Backend::Postgres(s) => s.shutdown(),
        }
    }

    /// The embedded store's data directory, if any.
    pub fn data_dir(&self) -> Option<&Path> {
        self.embedded().map(|s| s.data_dir())
    }
}
