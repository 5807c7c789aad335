//! Reading durable journal entries in order from a cursor: the outbox's read side.
//!
//! The journal is append-only and its frames are hash-chained, so a reader needs no help from the
//! committer: it scans from a frame boundary it saved (`scan_from` checks that the journal still
//! ends there with the same hash), skips entries it already handled, and stops at the durable
//! watermark (the entries the committer has `fdatasync`ed), which is always a frame boundary. So an
//! entry is handed out only once it is durable, and a reader that falls behind (NATS down, a slow
//! webhook receiver) costs disk reads later, never memory now.

use std::path::{Path, PathBuf};

use puhui_journal::frame::{ENTRY_OVERHEAD_BYTES, FRAME_HEADER_BYTES};
use puhui_journal::{scan_from, scan_from_reusing, JournalPosition, ScanBuffers, ScanError};

/// One entry read back (owned, so it can cross threads).
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Journal sequence.
    pub seq: u64,
    /// Entry kind.
    pub kind: u8,
    /// Entry body.
    pub body: Vec<u8>,
}

/// Why reading the journal failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailError {
    /// The file could not be read.
    Io(String),
    /// The journal does not continue from the saved position, or an entry is damaged.
    Corrupt(String),
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailError::Io(e) => write!(f, "reading the journal: {e}"),
            TailError::Corrupt(e) => write!(f, "the journal does not continue from the cursor: {e}"),
        }
    }
}

impl std::error::Error for TailError {}

const STOP: &str = "\u{0}tail-stop";

/// A cursor over a journal file.
#[derive(Debug, Clone)]
pub struct JournalTail {
    path: PathBuf,
    /// A frame boundary at or before `next_seq`: where the next scan starts.
    resume: JournalPosition,
    /// The first entry not yet handed out.
    next_seq: u64,
    /// Kept between reads: a tail reads every few milliseconds.
    buffers: ScanBuffers,
}

impl JournalTail {
    /// A cursor that hands out entries from `next_seq` on, scanning from `resume` (a frame boundary
    /// at or before it; [`JournalPosition::start`] always works, at the cost of a longer first scan).
    pub fn new(path: &Path, resume: JournalPosition, next_seq: u64) -> JournalTail {
        let resume = if resume.entries <= next_seq { resume } else { JournalPosition::start() };
        JournalTail { path: path.to_path_buf(), resume, next_seq, buffers: ScanBuffers::default() }
    }

    /// The cursor reading through at most `read_bytes_max` bytes at a time
    /// ([`ScanBuffers::with_read_bytes_max`]): for a few entries read back from far behind the end.
    pub fn with_read_bytes_max(mut self, read_bytes_max: usize) -> JournalTail {
        self.buffers = ScanBuffers::with_read_bytes_max(read_bytes_max);
        self
    }

    /// The first entry not yet handed out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// A frame boundary at or before [`JournalTail::next_seq`] (save it with the cursor).
    pub fn resume_position(&self) -> JournalPosition {
        self.resume
    }

    /// Appends to `out` the entries from `next_seq` up to (not including) `durable_entries`: at least
    /// `max_entries` if there are that many, stopping at the next frame boundary after that (so a
    /// call holds at most `max_entries` plus one frame). Returns how many it appended.
    pub fn read(
        &mut self,
        durable_entries: u64,
        max_entries: usize,
        out: &mut Vec<RawEntry>,
    ) -> Result<usize, TailError> {
        self.read_with(durable_entries, max_entries, |seq, kind, body| {
            out.push(RawEntry { seq, kind, body: body.to_vec() })
        })
    }

    /// [`JournalTail::read`], also appending to `marks` the start of every frame it hands entries
    /// out from that begins at least `every_entries` after the last position in `marks`: places a
    /// later reader can start from ([`JournalTail::new`]) close to any entry.
    pub fn read_marking(
        &mut self,
        durable_entries: u64,
        max_entries: usize,
        out: &mut Vec<RawEntry>,
        every_entries: u64,
        marks: &mut Vec<JournalPosition>,
    ) -> Result<usize, TailError> {
        let mut on_frame = |frame: JournalPosition| {
            if marks.last().is_none_or(|m| m.entries.saturating_add(every_entries) <= frame.entries) {
                marks.push(frame);
            }
        };
        self.read_inner(durable_entries, max_entries, &mut on_frame, |seq, kind, body| {
            out.push(RawEntry { seq, kind, body: body.to_vec() })
        })
    }

    /// [`JournalTail::read`] handing each entry `(seq, kind, body)` to `on_entry` instead of
    /// copying it: for a reader that looks at a few kinds of entry and skips the rest.
    pub fn read_with(
        &mut self,
        durable_entries: u64,
        max_entries: usize,
        on_entry: impl FnMut(u64, u8, &[u8]),
    ) -> Result<usize, TailError> {
        self.read_inner(durable_entries, max_entries, |_| {}, on_entry)
    }

    /// The read: `on_frame` is given the start of each whole frame entries are handed out from
    /// (a durable frame boundary, its previous entry's hash checked), before its entries.
    fn read_inner(
        &mut self,
        durable_entries: u64,
        max_entries: usize,
        mut on_frame: impl FnMut(JournalPosition),
        mut on_entry: impl FnMut(u64, u8, &[u8]),
    ) -> Result<usize, TailError> {
        if self.next_seq >= durable_entries {
            return Ok(0);
        }
        let next_seq = self.next_seq;
        let mut prev_end = self.resume.len_bytes;
        let mut prev_hash = self.resume.last_hash;
        let mut boundary = self.resume;
        let mut taken = 0usize;
        let mut last_taken = None;
        let scanned = scan_from_reusing(&self.path, self.resume, &mut self.buffers, |e| {
            if e.offset != prev_end {
                // The first entry of a frame: the frame starts right before it.
                let frame = JournalPosition {
                    entries: e.seq,
                    len_bytes: e.offset - FRAME_HEADER_BYTES as u64,
                    last_hash: prev_hash,
                };
                boundary = frame;
                if e.seq >= durable_entries || taken >= max_entries {
                    return Err(STOP.to_string());
                }
                if e.seq >= next_seq {
                    on_frame(frame);
                }
            }
            if e.seq >= durable_entries {
                // Not a frame boundary (the watermark always is one); stop without moving `boundary`.
                return Err(STOP.to_string());
            }
            prev_end = e.offset + (ENTRY_OVERHEAD_BYTES + e.body.len()) as u64;
            prev_hash = *e.hash;
            if e.seq >= next_seq {
                on_entry(e.seq, e.kind, e.body);
                taken += 1;
                last_taken = Some(e.seq);
            }
            Ok(())
        });
        match scanned {
            Ok(summary) => {
                if summary.entries <= durable_entries && summary.entries > boundary.entries {
                    boundary = JournalPosition {
                        entries: summary.entries,
                        len_bytes: summary.valid_len_bytes,
                        last_hash: summary.last_hash,
                    };
                }
            }
            Err(ScanError::Rejected { reason, .. }) if reason == STOP => {}
            // A frame past the watermark is being written while we read it (the scan checks a
            // whole frame before it hands out its first entry, so it can see half a frame and,
            // by the time it looks further, the whole next one). Nothing durable is wrong: every
            // entry below the watermark was handed out above; the frame is read again next time.
            Err(ScanError::Corrupt { seq, .. }) if seq >= durable_entries => {}
            Err(ScanError::Io(e)) => return Err(TailError::Io(e)),
            Err(e) => return Err(TailError::Corrupt(e.to_string())),
        }
        if let Some(seq) = last_taken {
            self.next_seq = seq + 1;
        }
        if boundary.entries <= self.next_seq {
            self.resume = boundary;
        }
        Ok(taken)
    }

    /// The hex of the first 8 bytes of entry 0's chained hash: an id of this journal (two ledgers
    /// never share it, since entry 0 holds its own timestamp). `None` while the journal is empty.
    pub fn journal_id(path: &Path) -> Result<Option<String>, TailError> {
        let mut id = None;
        let scanned = scan_from(path, JournalPosition::start(), |e| {
            id = Some(e.hash[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
            Err(STOP.to_string())
        });
        match scanned {
            Ok(_) => Ok(None),
            Err(ScanError::Rejected { reason, .. }) if reason == STOP => Ok(id),
            Err(ScanError::Io(e)) => Err(TailError::Io(e)),
            Err(e) => Err(TailError::Corrupt(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puhui_journal::{scan, JournalWriter};

    fn write_frames(path: &Path, frames: &[usize]) {
        let summary = scan(path, |_| Ok(())).unwrap();
        let mut w = JournalWriter::open(path, &summary).unwrap();
        for &n in frames {
            for _ in 0..n {
                let seq = w.next_seq();
                w.append(|buf| {
                    buf.extend_from_slice(&seq.to_le_bytes());
                    9
                });
            }
            w.commit().unwrap();
        }
    }

    fn seqs(out: &[RawEntry]) -> Vec<u64> {
        out.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn reads_in_order_stops_at_the_watermark_and_resumes_without_rereading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        write_frames(&path, &[3, 2, 4, 1]);
        let mut tail = JournalTail::new(&path, JournalPosition::start(), 0);
        let mut out = Vec::new();
        // Watermark after the second frame.
        assert_eq!(tail.read(5, 100, &mut out).unwrap(), 5);
        assert_eq!(seqs(&out), vec![0, 1, 2, 3, 4]);
        assert_eq!(tail.resume_position().entries, 5);
        out.clear();
        // At least 1, up to the next frame boundary.
        assert_eq!(tail.read(10, 1, &mut out).unwrap(), 4);
        assert_eq!(seqs(&out), vec![5, 6, 7, 8]);
        out.clear();
        assert_eq!(tail.read(10, 100, &mut out).unwrap(), 1);
        assert_eq!(seqs(&out), vec![9]);
        out.clear();
        assert_eq!(tail.read(10, 100, &mut out).unwrap(), 0);
        // More arrives.
        write_frames(&path, &[2]);
        assert_eq!(tail.read(12, 100, &mut out).unwrap(), 2);
        assert_eq!(seqs(&out), vec![10, 11]);
        assert_eq!(tail.resume_position().entries, 12);
    }

    #[test]
    fn marks_frame_starts_apart_and_each_mark_is_a_place_to_start_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        // Frames start at entries 0, 3, 5, 9, 10, 14.
        write_frames(&path, &[3, 2, 4, 1, 4, 2]);
        let mut tail = JournalTail::new(&path, JournalPosition::start(), 0);
        let (mut out, mut marks) = (Vec::new(), Vec::new());
        // Frames at least 4 entries after the last mark, within the read (up to the watermark).
        assert_eq!(tail.read_marking(14, 100, &mut out, 4, &mut marks).unwrap(), 14);
        assert_eq!(marks.iter().map(|m| m.entries).collect::<Vec<_>>(), vec![0, 5, 9]);
        // The next read goes on from the last mark given.
        assert_eq!(tail.read_marking(16, 100, &mut out, 4, &mut marks).unwrap(), 2);
        assert_eq!(marks.iter().map(|m| m.entries).collect::<Vec<_>>(), vec![0, 5, 9, 14]);
        for mark in &marks {
            let (mut from, mut got) = (JournalTail::new(&path, *mark, mark.entries), Vec::new());
            from.read(16, 100, &mut got).unwrap();
            assert_eq!(got.first().map(|e| e.seq), Some(mark.entries), "{mark:?}");
            assert_eq!(got.len() as u64, 16 - mark.entries);
        }
        // A read that starts mid-frame marks only the frames it reads from their start.
        let (mut mid, mut marks) = (JournalTail::new(&path, JournalPosition::start(), 4), Vec::new());
        mid.read_marking(16, 100, &mut out, 1, &mut marks).unwrap();
        assert_eq!(marks.iter().map(|m| m.entries).collect::<Vec<_>>(), vec![5, 9, 10, 14]);
    }

    #[test]
    fn starts_mid_frame_and_from_a_saved_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        write_frames(&path, &[3, 3, 3]);
        let mut tail = JournalTail::new(&path, JournalPosition::start(), 4);
        let mut out = Vec::new();
        tail.read(9, 2, &mut out).unwrap();
        assert_eq!(seqs(&out), vec![4, 5]);
        let saved = tail.resume_position();
        assert_eq!(saved.entries, 6);
        out.clear();
        let mut again = JournalTail::new(&path, saved, 6);
        again.read(9, 100, &mut out).unwrap();
        assert_eq!(seqs(&out), vec![6, 7, 8]);
        // A position whose hash does not match is refused.
        let mut bad = saved;
        bad.last_hash[0] ^= 1;
        let mut wrong = JournalTail::new(&path, bad, 6);
        assert!(matches!(wrong.read(9, 100, &mut out), Err(TailError::Corrupt(_))));
    }

    #[test]
    fn a_damaged_frame_past_the_watermark_is_not_an_error_but_one_below_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        write_frames(&path, &[3, 2, 1]);
        // Garble the second frame (entries 3 and 4) the way a frame half-written at the time of
        // reading looks: a valid frame follows it, so the scan calls it corruption.
        let mut second_frame_at = 0;
        scan(&path, |e| {
            if e.seq == 3 {
                second_frame_at = e.offset;
            }
            Ok(())
        })
        .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second_frame_at as usize + 14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let mut tail = JournalTail::new(&path, JournalPosition::start(), 0);
        let mut out = Vec::new();
        // Watermark after the first frame: the damage is beyond what is durable.
        assert_eq!(tail.read(3, 100, &mut out).unwrap(), 3);
        assert_eq!(seqs(&out), vec![0, 1, 2]);
        assert_eq!(tail.read(3, 100, &mut out).unwrap(), 0);
        // Watermark past it: the damage is in durable entries, and that is reported.
        assert!(matches!(tail.read(6, 100, &mut out), Err(TailError::Corrupt(_))));
        assert_eq!(tail.next_seq(), 3);
    }

    #[test]
    fn journal_id_is_stable_and_none_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        assert_eq!(JournalTail::journal_id(&path).unwrap(), None);
        write_frames(&path, &[2]);
        let id = JournalTail::journal_id(&path).unwrap().unwrap();
        assert_eq!(id.len(), 16);
        write_frames(&path, &[2]);
        assert_eq!(JournalTail::journal_id(&path).unwrap().unwrap(), id);
    }
}
