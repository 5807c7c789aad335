//! The SQL journal of the PostgreSQL store as the events' source ([`puhui_events::SqlJournal`]):
//! entries by sequence, the journal's id, the relay's saved cursor (`puhui_event_cursors`) and the
//! relay's lease.

use std::sync::Arc;

use puhui_events::{Lease, RawEntry, SavedCursor, SqlJournal, TailError};
use puhui_store_pg::{PgLease, PgStore};

/// [`SqlJournal`] over a [`PgStore`].
pub struct PgJournal {
    store: Arc<PgStore>,
}

impl PgJournal {
    /// The store's journal as an events source.
    pub fn shared(store: Arc<PgStore>) -> Arc<dyn SqlJournal> {
        Arc::new(PgJournal { store })
    }
}

fn io(e: impl std::fmt::Display) -> TailError {
    TailError::Io(e.to_string())
}

struct LeaseHandle(PgLease);

impl Lease for LeaseHandle {
    fn is_held(&self) -> bool {
        self.0.is_held()
    }
}

impl SqlJournal for PgJournal {
    fn read_entries(
        &self,
        from_seq: u64,
        durable_entries: u64,
        max: usize,
        out: &mut Vec<RawEntry>,
    ) -> Result<usize, TailError> {
        let span = usize::try_from(durable_entries.saturating_sub(from_seq)).unwrap_or(usize::MAX);
        let rows = self.store.read_entries(from_seq, max.min(span)).map_err(io)?;
        let n = rows.len();
        out.extend(rows.into_iter().map(|(seq, kind, body)| RawEntry { seq, kind, body }));
        Ok(n)
    }

    fn read_at(&self, seqs: &[u64], out: &mut Vec<RawEntry>) -> Result<(), TailError> {
        let rows = self.store.read_entries_at(seqs).map_err(io)?;
        out.extend(rows.into_iter().map(|(seq, kind, body)| RawEntry { seq, kind, body }));
        Ok(())
    }

    fn journal_id(&self) -> Result<Option<String>, TailError> {
        self.store.journal_id().map_err(io)
    }

    fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, TailError> {
        self.store
            .with_connection(|c| {
                let row = c
                    .query_opt(
                        "SELECT journal_id, next_seq, last_published_seq FROM puhui_event_cursors WHERE name = $1",
                        &[&name],
                    )
                    .map_err(|e| puhui_store::StoreError::Io(puhui_store_pg::describe(&e)))?;
                Ok(row.and_then(|r| {
                    let journal_id: Option<String> = r.get(0);
                    let next_seq: i64 = r.get(1);
                    let last: Option<i64> = r.get(2);
                    Some(SavedCursor {
                        journal_id: journal_id?,
                        next_seq: u64::try_from(next_seq).unwrap_or(0),
                        last_published_seq: last.and_then(|l| u64::try_from(l).ok()),
                    })
                }))
            })
            .map_err(io)
    }

    fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), TailError> {
        let next = i64::try_from(cursor.next_seq).unwrap_or(i64::MAX);
        let last = cursor.last_published_seq.and_then(|l| i64::try_from(l).ok());
        self.store
            .with_connection(|c| {
                c.execute(
                    "INSERT INTO puhui_event_cursors (name, journal_id, next_seq, last_published_seq) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET journal_id = $2, \
                     next_seq = $3, last_published_seq = $4",
                    &[&name, &cursor.journal_id, &next, &last],
                )
                .map_err(|e| puhui_store::StoreError::Io(puhui_store_pg::describe(&e)))?;
                Ok(())
            })
            .map_err(io)
    }

    fn lease(&self, name: &str) -> Result<Box<dyn Lease>, TailError> {
        Ok(Box::new(LeaseHandle(self.store.lease(name).map_err(io)?)))
    }
}
