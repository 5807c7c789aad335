//! Where the consumers of the outbox read durable journal entries from: the embedded store's
//! journal file or the PostgreSQL store's journal table.
//!
//! Key decision: one enum with two arms rather than a trait object on the hot path. The file arm is
//! the [`JournalTail`] exactly as before (frame positions, one copy of each body into its batch); the
//! SQL arm reads rows by sequence. Both give `(seq, kind, body)` to the same [`crate::map_entry`], so
//! an event is byte for byte the same on both stores. What the SQL arm needs from the database is
//! the [`SqlJournal`] trait (implemented by the API over `puhui-store-pg`), so this crate does not
//! depend on a database client.

use std::path::PathBuf;
use std::sync::Arc;

use puhui_journal::JournalPosition;

use crate::tail::{JournalTail, RawEntry, TailError};

/// A relay cursor as saved in the database (the fallback when the stream's last message says
/// nothing, as the cursor file is for the embedded store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCursor {
    /// The journal it belongs to.
    pub journal_id: String,
    /// The first sequence not yet handled.
    pub next_seq: u64,
    /// The last sequence published (the next message's `Puhui-Prev-Seq`).
    pub last_published_seq: Option<u64>,
}

/// A lease held by at most one node at a time (a PostgreSQL advisory lock).
pub trait Lease: Send + Sync {
    /// Whether this node holds it now (as of its last check).
    fn is_held(&self) -> bool;
}

/// The journal in a database: entries by sequence, the journal's id, saved cursors and leases.
/// Every method blocks (call it from a blocking thread).
pub trait SqlJournal: Send + Sync {
    /// Appends to `out` the entries from `from_seq` up to (not including) `durable_entries`, at most
    /// `max`, in order; returns how many.
    fn read_entries(
        &self,
        from_seq: u64,
        durable_entries: u64,
        max: usize,
        out: &mut Vec<RawEntry>,
    ) -> Result<usize, TailError>;
    /// Appends to `out` the entries with the given increasing sequences (those that exist).
    fn read_at(&self, seqs: &[u64], out: &mut Vec<RawEntry>) -> Result<(), TailError>;
    /// The journal's id (see [`JournalTail::journal_id`]); `None` while it is empty.
    fn journal_id(&self) -> Result<Option<String>, TailError>;
    /// The cursor saved under `name`.
    fn load_cursor(&self, name: &str) -> Result<Option<SavedCursor>, TailError>;
    /// Saves the cursor under `name`.
    fn save_cursor(&self, name: &str, cursor: &SavedCursor) -> Result<(), TailError>;
    /// Starts competing for the lease `name` (held while the returned value lives).
    fn lease(&self, name: &str) -> Result<Box<dyn Lease>, TailError>;
}

/// Where journal entries are read.
#[derive(Clone)]
pub enum Journal {
    /// The embedded store's journal file.
    File(PathBuf),
    /// The PostgreSQL store's journal table.
    Sql(Arc<dyn SqlJournal>),
}

/// A journal and its durable watermark: what every consumer of the outbox reads.
#[derive(Clone)]
pub struct EntrySource {
    /// The journal.
    pub journal: Journal,
    /// Entries durable so far: every entry below it can be read (for the file, always a frame
    /// boundary; for SQL, the journal head's `next_seq`). Cheap: an atomic load.
    pub durable_entries: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl EntrySource {
    /// Entries durable now.
    pub fn durable_entries(&self) -> u64 {
        (self.durable_entries)()
    }

    /// A cursor handing out entries from `next_seq` on; for the file, scanning from `resume` (a frame
    /// boundary at or before it, [`JournalPosition::start`] always works).
    pub fn cursor(&self, resume: JournalPosition, next_seq: u64) -> EntryCursor {
        match &self.journal {
            Journal::File(path) => EntryCursor::File(JournalTail::new(path, resume, next_seq)),
            Journal::Sql(sql) => EntryCursor::Sql { journal: Arc::clone(sql), next_seq },
        }
    }

    /// The journal's id (blocking); `None` while it is empty.
    pub fn journal_id(&self) -> Result<Option<String>, TailError> {
        match &self.journal {
            Journal::File(path) => JournalTail::journal_id(path),
            Journal::Sql(sql) => sql.journal_id(),
        }
    }

    /// The SQL journal, if that is the source.
    pub fn sql(&self) -> Option<&Arc<dyn SqlJournal>> {
        match &self.journal {
            Journal::File(_) => None,
            Journal::Sql(sql) => Some(sql),
        }
    }
}

/// A position in a journal from which entries are handed out in order.
#[derive(Clone)]
pub enum EntryCursor {
    /// In the journal file.
    File(JournalTail),
    /// In the SQL journal.
    Sql {
        /// The journal.
        journal: Arc<dyn SqlJournal>,
        /// The first entry not yet handed out.
        next_seq: u64,
    },
}

impl EntryCursor {
    /// The first entry not yet handed out.
    pub fn next_seq(&self) -> u64 {
        match self {
            EntryCursor::File(tail) => tail.next_seq(),
            EntryCursor::Sql { next_seq, .. } => *next_seq,
        }
    }

    /// For the file: a frame boundary at or before [`EntryCursor::next_seq`] (save it with the
    /// cursor); for SQL: the start (positions mean nothing there).
    pub fn resume_position(&self) -> JournalPosition {
        match self {
            EntryCursor::File(tail) => tail.resume_position(),
            EntryCursor::Sql { .. } => JournalPosition::start(),
        }
    }

    /// Appends to `out` the entries from [`EntryCursor::next_seq`] up to (not including)
    /// `durable_entries`, about `max_entries` of them (the file may add the rest of one frame), and
    /// moves past them. Returns how many. Blocking.
    pub fn read(
        &mut self,
        durable_entries: u64,
        max_entries: usize,
        out: &mut Vec<RawEntry>,
    ) -> Result<usize, TailError> {
        match self {
            EntryCursor::File(tail) => tail.read(durable_entries, max_entries, out),
            EntryCursor::Sql { .. } => {
                self.read_marking(durable_entries, max_entries, out, 0, &mut Vec::new())
            }
        }
    }

    /// [`EntryCursor::read`]; for the file, also the frame starts [`JournalTail::read_marking`]
    /// marks, `every_entries` apart (SQL has no positions: none).
    pub fn read_marking(
        &mut self,
        durable_entries: u64,
        max_entries: usize,
        out: &mut Vec<RawEntry>,
        every_entries: u64,
        marks: &mut Vec<JournalPosition>,
    ) -> Result<usize, TailError> {
        match self {
            EntryCursor::File(tail) => {
                tail.read_marking(durable_entries, max_entries, out, every_entries, marks)
            }
            EntryCursor::Sql { journal, next_seq } => {
                if *next_seq >= durable_entries {
                    return Ok(0);
                }
                let before = out.len();
                let got = journal.read_entries(*next_seq, durable_entries, max_entries, out)?;
                // Consecutive from next_seq, or the journal does not continue from the cursor.
                let gap = out[before..].iter().enumerate().find(|(i, e)| e.seq != *next_seq + *i as u64);
                if let Some((i, e)) = gap {
                    let why = format!("entry {} read where {} was expected", e.seq, *next_seq + i as u64);
                    out.truncate(before + i);
                    return Err(TailError::Corrupt(why));
                }
                *next_seq += got as u64;
                Ok(got)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal in memory; `hole` is a sequence it pretends not to have.
    struct Fake {
        entries: u64,
        hole: Option<u64>,
    }

    impl SqlJournal for Fake {
        fn read_entries(
            &self,
            from_seq: u64,
            durable_entries: u64,
            max: usize,
            out: &mut Vec<RawEntry>,
        ) -> Result<usize, TailError> {
            let to = durable_entries.min(self.entries).min(from_seq + max as u64);
            let before = out.len();
            let seqs = (from_seq..to).filter(|s| Some(*s) != self.hole);
            out.extend(seqs.map(|seq| RawEntry { seq, kind: 1, body: seq.to_le_bytes().to_vec() }));
            Ok(out.len() - before)
        }
        fn read_at(&self, _: &[u64], _: &mut Vec<RawEntry>) -> Result<(), TailError> {
            Ok(())
        }
        fn journal_id(&self) -> Result<Option<String>, TailError> {
            Ok(None)
        }
        fn load_cursor(&self, _: &str) -> Result<Option<SavedCursor>, TailError> {
            Ok(None)
        }
        fn save_cursor(&self, _: &str, _: &SavedCursor) -> Result<(), TailError> {
            Ok(())
        }
        fn lease(&self, _: &str) -> Result<Box<dyn Lease>, TailError> {
            Err(TailError::Io("no leases here".into()))
        }
    }

    fn source(fake: Fake) -> EntrySource {
        EntrySource { journal: Journal::Sql(Arc::new(fake)), durable_entries: Arc::new(|| 10) }
    }

    #[test]
    fn a_sql_cursor_reads_in_order_up_to_the_watermark_in_bounded_steps() {
        let source = source(Fake { entries: 20, hole: None });
        let mut cursor = source.cursor(JournalPosition::start(), 3);
        let mut out = Vec::new();
        assert_eq!(cursor.read(source.durable_entries(), 4, &mut out).unwrap(), 4);
        assert_eq!(cursor.read(source.durable_entries(), 100, &mut out).unwrap(), 3);
        assert_eq!(cursor.read(source.durable_entries(), 100, &mut out).unwrap(), 0);
        assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), (3..10).collect::<Vec<_>>());
        assert_eq!((cursor.next_seq(), cursor.resume_position().entries), (10, 0));
    }

    #[test]
    fn a_sql_cursor_refuses_a_gap_and_stays_before_it() {
        let source = source(Fake { entries: 20, hole: Some(5) });
        let mut cursor = source.cursor(JournalPosition::start(), 2);
        let mut out = Vec::new();
        assert!(matches!(cursor.read(10, 100, &mut out), Err(TailError::Corrupt(_))));
        assert_eq!(out.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(cursor.next_seq(), 2, "nothing handed out is skipped");
    }
}
