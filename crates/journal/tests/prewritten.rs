//! The writer's pre-written zeros: a clean end, kept across reopening, never mistaken for frames,
//! and never hiding a torn or damaged end from a scan from the start.

use puhui_journal::frame::{scan, ScanError, PREWRITE_CHUNK_BYTES};
use puhui_journal::{scan_from_reusing, JournalPosition, JournalWriter, ScanBuffers};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Writes `frames` frames of `entries` entries each; returns the frame boundaries.
fn write_frames(path: &Path, frames: usize, entries: usize, body_bytes: usize) -> Vec<JournalPosition> {
    let summary = scan(path, |_| Ok(())).unwrap();
    assert!(summary.torn_tail.is_none());
    let mut writer = JournalWriter::open(path, &summary).unwrap();
    let mut boundaries = Vec::new();
    for f in 0..frames {
        for e in 0..entries {
            writer.append(|buf| {
                buf.extend((0..body_bytes).map(|i| (i + f + e) as u8 | 1));
                7
            });
        }
        writer.commit().unwrap();
        boundaries.push(writer.position());
    }
    boundaries
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

#[test]
fn the_writer_writes_zeros_ahead_and_a_scan_ends_cleanly_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let boundaries = write_frames(&path, 5, 3, 100);
    let end = boundaries.last().unwrap();
    assert_eq!(file_len(&path), PREWRITE_CHUNK_BYTES, "one chunk, written ahead");
    let summary = scan(&path, |_| Ok(())).unwrap();
    assert_eq!(summary.entries, 15);
    assert_eq!(summary.valid_len_bytes, end.len_bytes);
    assert_eq!(summary.prewritten_bytes, PREWRITE_CHUNK_BYTES - end.len_bytes);
    assert!(summary.torn_tail.is_none());

    // Reopening keeps the zeros (no truncation) and writes over them.
    let more = write_frames(&path, 2, 2, 100);
    assert_eq!(file_len(&path), PREWRITE_CHUNK_BYTES);
    let summary = scan(&path, |_| Ok(())).unwrap();
    assert_eq!(summary.entries, 19);
    assert_eq!(summary.valid_len_bytes, more.last().unwrap().len_bytes);
}

#[test]
fn frames_past_a_chunk_grow_the_file_by_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    // ~2.5 chunks of frames.
    let boundaries = write_frames(&path, 40, 16, 4_000);
    let end = boundaries.last().unwrap().len_bytes;
    assert!(end > 2 * PREWRITE_CHUNK_BYTES);
    assert_eq!(file_len(&path), end.next_multiple_of(PREWRITE_CHUNK_BYTES));
    let summary = scan(&path, |_| Ok(())).unwrap();
    assert_eq!((summary.entries, summary.valid_len_bytes), (40 * 16, end));
}

#[test]
fn zeros_shorter_than_a_header_are_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let boundaries = write_frames(&path, 2, 1, 10);
    let end = boundaries.last().unwrap().len_bytes;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(end + 5).unwrap();
    let summary = scan(&path, |_| Ok(())).unwrap();
    assert_eq!((summary.valid_len_bytes, summary.prewritten_bytes), (end, 5));
    assert!(summary.torn_tail.is_none());
}

#[test]
fn a_frame_torn_over_the_zeros_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let end = write_frames(&path, 3, 2, 50).last().unwrap().len_bytes;
    // The crash left the frame's payload on disk but not its header (writeback has no order).
    overwrite(&path, end + 40, &[0xab; 30]);
    let summary = scan(&path, |_| Ok(())).unwrap();
    let torn = summary.torn_tail.expect("a torn tail");
    assert_eq!((torn.offset, torn.len_bytes), (end, file_len(&path) - end));
    assert!(torn.reason.contains("non-zero byte follows"), "{}", torn.reason);
    assert_eq!(summary.entries, 6);
}

#[test]
fn a_zeroed_frame_header_before_valid_frames_is_corruption_not_an_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let boundaries = write_frames(&path, 4, 2, 50);
    // Someone zeroes the third frame's header: a scan must not stop there as if the journal ended.
    overwrite(&path, boundaries[1].len_bytes, &[0; 32]);
    match scan(&path, |_| Ok(())) {
        Err(ScanError::Corrupt { seq, offset, reason }) => {
            assert_eq!((seq, offset), (4, boundaries[1].len_bytes));
            assert!(reason.contains("a valid frame follows"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_live_tail_stops_at_the_zeros_and_reads_what_a_full_scan_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let boundaries = write_frames(&path, 6, 3, 70);
    let mut buffers = ScanBuffers::default();
    let mut live = Vec::new();
    let summary = scan_from_reusing(&path, boundaries[1], &mut buffers, |e| {
        live.push(e.seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(live, (6..18).collect::<Vec<_>>());
    assert_eq!(summary.valid_len_bytes, boundaries[5].len_bytes);
    assert!(summary.torn_tail.is_none());
}

#[test]
fn a_journal_holds_the_positions_it_passed_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    assert!(puhui_journal::holds_position(&path, &JournalPosition::start()).unwrap());
    let boundaries = write_frames(&path, 4, 3, 50);
    for position in &boundaries {
        assert!(puhui_journal::holds_position(&path, position).unwrap(), "{position:?}");
    }
    let end = *boundaries.last().unwrap();
    let mut other_hash = end;
    other_hash.last_hash[0] ^= 1;
    let mut further = end;
    further.len_bytes += 64;
    let mut inside_a_frame = end;
    inside_a_frame.len_bytes -= 8;
    for position in [other_hash, further, inside_a_frame] {
        assert!(!puhui_journal::holds_position(&path, &position).unwrap(), "{position:?}");
    }
    // Another history of the same shape (other bodies) does not hold this one's positions.
    let other = dir.path().join("other");
    write_frames(&other, 1, 1, 7);
    let theirs = write_frames(&other, 4, 3, 50);
    assert!(!puhui_journal::holds_position(&other, &boundaries[1]).unwrap());
    assert!(puhui_journal::holds_position(&other, &theirs[1]).unwrap());
    assert!(!puhui_journal::holds_position(&dir.path().join("missing"), &end).unwrap());
}
