//! The on-disk journal: append-only frames of hash-chained entries.
//!
//! ```text
//! frame  := header entry{entry_count}
//! header := magic:u32 "PHJ1" | version:u16 | flags:u16 | entry_count:u32 | payload_bytes:u32
//!           | first_seq:u64 | header_check:u64                       (32 bytes, little-endian)
//! entry  := body_bytes:u32 | seq:u64 | kind:u8 | body | hash:[u8; 32]
//! hash   := BLAKE3(previous entry's hash | seq | kind | body)       (the first entry chains to GENESIS)
//! ```
//!
//! A frame is one group commit: it is written with one `write` and made durable with one
//! `fdatasync` before any of its events is acknowledged. It is also the unit of atomicity: a frame
//! that was torn by a crash is cut whole, so a linked chain is never half recovered. Every entry
//! commits to the hash of the one before it, so a flipped byte, a removed entry or a reordered pair
//! breaks the chain at a precise, nameable entry.
//!
//! The writer keeps the file *pre-written*: zeros up to [`PREWRITE_CHUNK_BYTES`] past the last
//! frame, written and made durable a chunk at a time. A frame then overwrites blocks that already
//! exist, and its `fdatasync` has no file size or block allocation to commit: 98 against 165 µs and
//! 45 against 69 µs of CPU per sync on this project's VMs (docs/BENCHMARKS.md). PostgreSQL's WAL
//! does the same with pre-written segments. So the journal ends at the first frame header that is
//! 32 zero bytes; a scan from the start checks that everything after it is zero (anything else is a
//! torn tail, or corruption if a valid frame follows), a live tail ([`scan_from_reusing`]) just stops.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Frame magic, "PHJ1" little-endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"PHJ1");
/// Journal format version.
pub const FORMAT_VERSION: u16 = 1;
/// Size of a frame header.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Fixed bytes of an entry besides its body: length, sequence number, kind, hash.
pub const ENTRY_OVERHEAD_BYTES: usize = 4 + 8 + 1 + 32;
/// Largest frame payload; a group commit stops growing before it reaches this.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// Largest entry body.
pub const ENTRY_BODY_BYTES_MAX: usize = 1 << 20;
/// How far the writer pre-writes zeros past the last frame, a chunk at a time. One sync in a chunk's
/// worth of frames pays for writing it (0.9 ms for 1 MiB here; 4 MiB took 14 ms, so bigger chunks
/// only move the cost into a longer stall).
pub const PREWRITE_CHUNK_BYTES: u64 = 1 << 20;
/// Zeros to write from (a static: its pages are the kernel's shared zero page).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The hash every chain starts from.
pub fn genesis_hash() -> [u8; 32] {
    *blake3::hash(b"puhui journal genesis v1").as_bytes()
}

/// The chained hash of an entry.
pub fn entry_hash(previous: &[u8; 32], seq: u64, kind: u8, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(previous);
    h.update(&seq.to_le_bytes());
    h.update(&[kind]);
    h.update(body);
    *h.finalize().as_bytes()
}

/// A frame header for `entries` entries in `payload_bytes` bytes starting at entry `first_seq`.
/// (Public so that tamper tests can forge a consistent header around altered entries.)
pub fn encode_frame_header(entries: u32, payload_bytes: u32, first_seq: u64) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[8..12].copy_from_slice(&entries.to_le_bytes());
    header[12..16].copy_from_slice(&payload_bytes.to_le_bytes());
    header[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let check = header_check(&header);
    header[24..32].copy_from_slice(&check.to_le_bytes());
    header
}

fn header_check(bytes: &[u8]) -> u64 {
    let digest = blake3::hash(&bytes[..24]);
    u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Where a journal stands: how many entries, how many bytes of whole frames, the last entry's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalPosition {
    /// Entries so far (= the next entry's sequence number).
    pub entries: u64,
    /// Bytes of whole frames.
    pub len_bytes: u64,
    /// The last entry's hash (genesis if none).
    pub last_hash: [u8; 32],
}

impl JournalPosition {
    /// The position of an empty journal.
    pub fn start() -> JournalPosition {
        JournalPosition { entries: 0, len_bytes: 0, last_hash: genesis_hash() }
    }
}

/// Appends frames to a journal file. Not thread-safe: one committer owns it.
pub struct JournalWriter {
    file: File,
    /// Bytes of the file that are whole frames.
    len_bytes: u64,
    /// The file's length: `[len_bytes, file_len_bytes)` is durable zeros, written ahead.
    file_len_bytes: u64,
    next_seq: u64,
    last_hash: [u8; 32],
    frame: Vec<u8>,
    frame_entries: u32,
    frame_first_seq: u64,
}

impl JournalWriter {
    /// Opens `path` for appending after a scan established its valid length, next sequence number and
    /// last hash (see [`scan`]). The file is truncated to `valid_len_bytes` (cutting a torn tail)
    /// unless all that follows is the zeros the scan found pre-written.
    pub fn open(path: &Path, position: &ScanSummary) -> io::Result<JournalWriter> {
        debug_assert!(position.valid_len_bytes == 0 || position.entries > 0);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut on_disk = file.metadata()?.len();
        let clean =
            position.torn_tail.is_none() && on_disk == position.valid_len_bytes + position.prewritten_bytes;
        if !clean {
            file.set_len(position.valid_len_bytes)?;
            file.sync_all()?;
            on_disk = position.valid_len_bytes;
        }
        file.seek(SeekFrom::Start(position.valid_len_bytes))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(JournalWriter {
            file,
            len_bytes: position.valid_len_bytes,
            file_len_bytes: on_disk,
            next_seq: position.entries,
            last_hash: position.last_hash,
            frame: Vec::with_capacity(1 << 20),
            frame_entries: 0,
            frame_first_seq: position.entries,
        })
    }

    /// Sequence number the next entry gets (= entries durable so far + entries in the open frame).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last entry appended.
    pub fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    /// Bytes in the open frame.
    pub fn frame_bytes(&self) -> usize {
        self.frame.len()
    }

    /// Appends an entry to the open frame. `write_body` encodes the body into the buffer it is given
    /// and returns the entry's kind. Returns the entry's sequence number.
    pub fn append(&mut self, write_body: impl FnOnce(&mut Vec<u8>) -> u8) -> u64 {
        if self.frame.is_empty() {
            self.frame.resize(FRAME_HEADER_BYTES, 0);
            self.frame_first_seq = self.next_seq;
            self.frame_entries = 0;
        }
        let seq = self.next_seq;
        let start = self.frame.len();
        self.frame.extend_from_slice(&[0; 4]);
        self.frame.extend_from_slice(&seq.to_le_bytes());
        self.frame.push(0);
        let body_start = self.frame.len();
        let kind = write_body(&mut self.frame);
        let body_len = self.frame.len() - body_start;
        assert!(body_len <= ENTRY_BODY_BYTES_MAX, "entry body of {body_len} bytes exceeds the limit");
        self.frame[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.frame[start + 12] = kind;
        let hash = entry_hash(&self.last_hash, seq, kind, &self.frame[body_start..]);
        self.frame.extend_from_slice(&hash);
        self.last_hash = hash;
        self.next_seq += 1;
        self.frame_entries += 1;
        seq
    }

    /// Writes the open frame and waits until it is durable (`fdatasync`). Does nothing if empty.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let payload = self.frame.len() - FRAME_HEADER_BYTES;
        assert!(payload <= FRAME_PAYLOAD_BYTES_MAX, "frame payload {payload} exceeds the limit");
        let header = encode_frame_header(self.frame_entries, payload as u32, self.frame_first_seq);
        self.frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        let frame_end = self.len_bytes + self.frame.len() as u64;
        self.file.write_all(&self.frame)?;
        if frame_end > self.file_len_bytes {
            self.file_len_bytes = frame_end;
            // The frame grew the file: write zeros up to the next chunk boundary, so that the
            // next frames' syncs overwrite blocks that exist. This sync pays for them once.
            self.prewrite(frame_end.next_multiple_of(PREWRITE_CHUNK_BYTES))?;
        }
        self.file.sync_data()?;
        self.len_bytes = frame_end;
        self.frame.clear();
        self.frame_entries = 0;
        Ok(())
    }

    /// Writes zeros from the file's end to `end` (not synced: the frame's sync covers them).
    fn prewrite(&mut self, end: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut at = self.file_len_bytes;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.file_len_bytes = end;
        Ok(())
    }

    /// Bytes of whole, durable frames in the file.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The durable position (valid when no frame is open).
    pub fn position(&self) -> JournalPosition {
        assert!(self.frame.is_empty(), "position is asked between frames");
        JournalPosition { entries: self.next_seq, len_bytes: self.len_bytes, last_hash: self.last_hash }
    }
}

/// Makes a directory entry (a newly created or truncated file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

/// One entry read back from the journal.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// Sequence number (0-based position in the journal).
    pub seq: u64,
    /// Entry kind (see [`crate::codec`]).
    pub kind: u8,
    /// Entry body.
    pub body: &'a [u8],
    /// The entry's chained hash.
    pub hash: &'a [u8; 32],
    /// File offset of the entry.
    pub offset: u64,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    /// Whole entries.
    pub entries: u64,
    /// Whole frames.
    pub frames: u64,
    /// The last whole entry's hash (genesis if none).
    pub last_hash: [u8; 32],
    /// Length of the file's valid prefix (whole frames).
    pub valid_len_bytes: u64,
    /// Bytes after the valid prefix that the writer pre-wrote (zeros; checked zero to the file's
    /// end by every scan but a live tail's, [`scan_from_reusing`]). Not a torn tail.
    pub prewritten_bytes: u64,
    /// A torn tail after the valid prefix, if any: a frame the crash left incomplete.
    pub torn_tail: Option<TornTail>,
}

/// An incomplete last frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where it starts.
    pub offset: u64,
    /// How many bytes it has.
    pub len_bytes: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// A broken journal: something other than a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Reading the file failed.
    Io(String),
    /// An entry (or the frame holding it) is not what the chain says it must be.
    Corrupt {
        /// The first bad entry's expected sequence number.
        seq: u64,
        /// File offset where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The caller's entry callback refused an entry.
    Rejected {
        /// The refused entry.
        seq: u64,
        /// File offset of the entry.
        offset: u64,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Io(e) => write!(f, "cannot read the journal: {e}"),
            ScanError::Corrupt { seq, offset, reason } => {
                write!(f, "journal entry {seq} (byte offset {offset}) is bad: {reason}")
            }
            ScanError::Rejected { seq, offset, reason } => {
                write!(f, "journal entry {seq} (byte offset {offset}) cannot be applied: {reason}")
            }
        }
    }
}

impl std::error::Error for ScanError {}

/// Why a frame at some offset is not whole and valid.
struct FrameFault {
    seq: u64,
    offset: u64,
    reason: String,
}

/// Reads a journal from the start, checking every frame header, sequence number and chained hash,
/// and calls `on_entry` for each entry of each whole frame (after the whole frame checked out).
///
/// A bad region at the very end of the file, with no valid frame after it, is a torn tail: it is
/// reported in [`ScanSummary::torn_tail`] and not passed to `on_entry`. A bad frame followed by a
/// valid one is corruption: [`ScanError::Corrupt`] names the first bad entry.
pub fn scan(
    path: &Path,
    on_entry: impl FnMut(EntryRef<'_>) -> Result<(), String>,
) -> Result<ScanSummary, ScanError> {
    scan_from(path, JournalPosition::start(), on_entry)
}

/// Smallest read buffer of a scan.
const SCAN_BUFFER_BYTES_MIN: usize = 8 << 10;
/// Largest read buffer of a scan (a whole-journal replay).
const SCAN_BUFFER_BYTES_MAX: usize = 4 << 20;

/// Like [`scan`], but starts at a known position (after a snapshot): checks that the journal has the
/// position's bytes and that the entry before it has the position's hash, then reads from there.
pub fn scan_from(
    path: &Path,
    start: JournalPosition,
    on_entry: impl FnMut(EntryRef<'_>) -> Result<(), String>,
) -> Result<ScanSummary, ScanError> {
    scan_inner(path, start, &mut ScanBuffers::default(), EndCheck::ZerosToEof, on_entry)
}

/// Whether the journal at `path` holds `position`: it is at least that long and the entry ending
/// there has the position's hash (the whole chain before it is checked by a scan, not here). A
/// snapshot of state at a position is only good for a journal that holds it.
pub fn holds_position(path: &Path, position: &JournalPosition) -> io::Result<bool> {
    if position.len_bytes == 0 {
        return Ok(position.entries == 0 && position.last_hash == genesis_hash());
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let file_len = file.metadata()?.len();
    Ok(ends_at(&mut file, file_len, position))
}

/// Whether a frame ends at `position.len_bytes` of `file` with the position's last hash (the
/// last 32 bytes of a frame are its last entry's hash).
fn ends_at(file: &mut File, file_len: u64, position: &JournalPosition) -> bool {
    let mut tail_hash = [0u8; 32];
    file_len >= position.len_bytes
        && position.len_bytes >= 32
        && file.seek(SeekFrom::Start(position.len_bytes - 32)).is_ok()
        && file.read_exact(&mut tail_hash).is_ok()
        && tail_hash == position.last_hash
}

/// What a scan does on reaching the pre-written end (a zero frame header).
#[derive(Clone, Copy, PartialEq, Eq)]
enum EndCheck {
    /// Reads on to the file's end: anything but zeros is a torn tail or corruption.
    ZerosToEof,
    /// Stops there (a live journal: the next frame is being written over the zeros).
    Stop,
}

/// The buffers a scan reads through, for a caller that scans again and again (a journal tail
/// polling every few milliseconds): reused, they cost no allocation and no fresh pages per scan.
/// They grow to at most the largest read buffer (4 MiB) plus the largest frame read.
#[derive(Debug, Clone, Default)]
pub struct ScanBuffers {
    read: Vec<u8>,
    payload: Vec<u8>,
    /// The read buffer's size at most (0: [`SCAN_BUFFER_BYTES_MAX`]).
    read_bytes_max: usize,
}

impl ScanBuffers {
    /// Buffers whose read buffer stays within `read_bytes_max` (at least 8 KiB): for a reader that
    /// wants a few entries from the middle of a long journal, where a 4 MiB read (and, the first
    /// time, 4 MiB of fresh pages) would cost more than the scan itself.
    pub fn with_read_bytes_max(read_bytes_max: usize) -> ScanBuffers {
        ScanBuffers { read_bytes_max: read_bytes_max.max(SCAN_BUFFER_BYTES_MIN), ..ScanBuffers::default() }
    }
}

/// A buffered reader over a borrowed buffer (`std::io::BufReader` owns and allocates its own).
struct ReusedBufReader<'a, R> {
    inner: R,
    buf: &'a mut [u8],
    pos: usize,
    filled: usize,
}

impl<R: Read> Read for ReusedBufReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            if out.len() >= self.buf.len() {
                return self.inner.read(out);
            }
            self.filled = self.inner.read(self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// [`scan_from`] through buffers kept by the caller, for a tail reading a live journal: it stops at
/// the pre-written end without reading the zeros after it (up to [`PREWRITE_CHUNK_BYTES`] that a
/// poll every few milliseconds would otherwise read each time), so it does not tell a torn or
/// damaged end from a clean one there; start-up's scan does.
pub fn scan_from_reusing(
    path: &Path,
    start: JournalPosition,
    buffers: &mut ScanBuffers,
    on_entry: impl FnMut(EntryRef<'_>) -> Result<(), String>,
) -> Result<ScanSummary, ScanError> {
    scan_inner(path, start, buffers, EndCheck::Stop, on_entry)
}

fn scan_inner(
    path: &Path,
    start: JournalPosition,
    buffers: &mut ScanBuffers,
    end_check: EndCheck,
    mut on_entry: impl FnMut(EntryRef<'_>) -> Result<(), String>,
) -> Result<ScanSummary, ScanError> {
    let io_err = |e: io::Error| ScanError::Io(format!("{}: {e}", path.display()));
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && start.len_bytes == 0 => {
            return Ok(ScanSummary {
                entries: start.entries,
                frames: 0,
                last_hash: start.last_hash,
                valid_len_bytes: 0,
                prewritten_bytes: 0,
                torn_tail: None,
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let file_len = file.metadata().map_err(io_err)?.len();
    if start.len_bytes > 0 && !ends_at(&mut file, file_len, &start) {
        return Err(ScanError::Corrupt {
            seq: start.entries,
            offset: start.len_bytes,
            reason:
                "the journal does not end the way the snapshot says it did (shorter, or another last hash)"
                    .into(),
        });
    }
    file.seek(SeekFrom::Start(start.len_bytes)).map_err(io_err)?;
    // Sized to what is left to read: a tail reader that comes back every few milliseconds for a
    // few kilobytes must not allocate (and the kernel zero) megabytes each time.
    let buffer_bytes_max = match buffers.read_bytes_max {
        0 => SCAN_BUFFER_BYTES_MAX,
        n => n.clamp(SCAN_BUFFER_BYTES_MIN, SCAN_BUFFER_BYTES_MAX),
    };
    let buffer_bytes =
        (file_len.saturating_sub(start.len_bytes) as usize).clamp(SCAN_BUFFER_BYTES_MIN, buffer_bytes_max);
    if buffers.read.len() < buffer_bytes {
        buffers.read.resize(buffer_bytes, 0);
    }
    let payload = &mut buffers.payload;
    let mut reader =
        ReusedBufReader { inner: &mut file, buf: &mut buffers.read[..buffer_bytes], pos: 0, filled: 0 };
    let mut offset = start.len_bytes;
    let mut seq = start.entries;
    let mut frames = 0u64;
    let mut last_hash = start.last_hash;

    while offset < file_len {
        let fault = match read_frame(&mut reader, (offset, file_len), seq, &last_hash, payload) {
            Ok(Some((count, hash))) => {
                // The whole frame checked out: hand its entries over.
                let mut at = 0usize;
                for i in 0..count as u64 {
                    let body_len = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
                    let kind = payload[at + 12];
                    let body = &payload[at + 13..at + 13 + body_len];
                    let entry_hash: &[u8; 32] =
                        payload[at + 13 + body_len..at + 45 + body_len].try_into().unwrap();
                    let entry_offset = offset + FRAME_HEADER_BYTES as u64 + at as u64;
                    on_entry(EntryRef {
                        seq: seq + i,
                        kind,
                        body,
                        hash: entry_hash,
                        offset: entry_offset,
                    })
                    .map_err(|reason| ScanError::Rejected {
                        seq: seq + i,
                        offset: entry_offset,
                        reason,
                    })?;
                    at += ENTRY_OVERHEAD_BYTES + body_len;
                }
                offset += (FRAME_HEADER_BYTES + payload.len()) as u64;
                seq += count as u64;
                frames += 1;
                last_hash = hash;
                continue;
            }
            Ok(None) => {
                // The pre-written end.
                let nonzero = match end_check {
                    EndCheck::Stop => None,
                    EndCheck::ZerosToEof => first_nonzero(&mut reader).map_err(io_err)?,
                };
                match nonzero {
                    None => {
                        return Ok(ScanSummary {
                            entries: seq,
                            frames,
                            last_hash,
                            valid_len_bytes: offset,
                            prewritten_bytes: file_len - offset,
                            torn_tail: None,
                        })
                    }
                    Some(after) => FrameFault {
                        seq,
                        offset,
                        reason: format!(
                            "no frame header here (zeros), but a non-zero byte follows at byte {}",
                            offset + FRAME_HEADER_BYTES as u64 + after
                        ),
                    },
                }
            }
            Err(fault) => fault,
        };
        // Torn tail or corruption? Corruption if any valid frame header follows.
        if let Some(next) = find_valid_header_after(&mut file, fault.offset.max(offset) + 1, file_len, &fault)
        {
            return Err(ScanError::Corrupt {
                seq: fault.seq,
                offset: fault.offset,
                reason: format!(
                    "{} (a valid frame follows at byte {next}, so this is not a torn tail)",
                    fault.reason
                ),
            });
        }
        return Ok(ScanSummary {
            entries: seq,
            frames,
            last_hash,
            valid_len_bytes: offset,
            prewritten_bytes: 0,
            torn_tail: Some(TornTail { offset, len_bytes: file_len - offset, reason: fault.reason }),
        });
    }
    Ok(ScanSummary {
        entries: seq,
        frames,
        last_hash,
        valid_len_bytes: offset,
        prewritten_bytes: 0,
        torn_tail: None,
    })
}

/// Reads `reader` to its end; the position (from where it started) of the first non-zero byte.
fn first_nonzero(reader: &mut impl Read) -> io::Result<Option<u64>> {
    let mut chunk = [0u8; 8 << 10];
    let mut read = 0u64;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(i) = chunk[..n].iter().position(|&b| b != 0) {
            return Ok(Some(read + i as u64));
        }
        read += n as u64;
    }
}

fn read_frame(
    reader: &mut impl Read,
    (offset, file_len): (u64, u64),
    seq: u64,
    previous: &[u8; 32],
    payload: &mut Vec<u8>,
) -> Result<Option<(u32, [u8; 32])>, FrameFault> {
    let fault = |at: u64, s: u64, reason: String| FrameFault { seq: s, offset: at, reason };
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if file_len - offset < FRAME_HEADER_BYTES as u64 {
        // Pre-written zeros can end a few bytes after the last frame.
        let rest = &mut header[..(file_len - offset) as usize];
        reader.read_exact(rest).map_err(|e| fault(offset, seq, format!("read: {e}")))?;
        if rest.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        return Err(fault(offset, seq, "incomplete frame header".into()));
    }
    reader.read_exact(&mut header).map_err(|e| fault(offset, seq, format!("read: {e}")))?;
    if header == [0u8; FRAME_HEADER_BYTES] {
        return Ok(None);
    }
    let (count, payload_len) = parse_header(&header).map_err(|r| fault(offset, seq, r))?;
    let first_seq = u64::from_le_bytes(header[16..24].try_into().unwrap());
    if first_seq != seq {
        return Err(fault(
            offset,
            seq,
            format!("frame starts at entry {first_seq}, expected {seq}: entries are missing or out of order"),
        ));
    }
    let body_offset = offset + FRAME_HEADER_BYTES as u64;
    if file_len - body_offset < payload_len as u64 {
        return Err(fault(offset, seq, format!("frame of {payload_len} bytes is cut short")));
    }
    payload.resize(payload_len as usize, 0);
    reader.read_exact(payload).map_err(|e| fault(offset, seq, format!("read: {e}")))?;
    let mut at = 0usize;
    let mut hash = *previous;
    for i in 0..count as u64 {
        let s = seq + i;
        let entry_offset = body_offset + at as u64;
        if payload.len() - at < ENTRY_OVERHEAD_BYTES {
            return Err(fault(entry_offset, s, "entry runs past the end of its frame".into()));
        }
        let body_len = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
        if body_len > ENTRY_BODY_BYTES_MAX || payload.len() - at - ENTRY_OVERHEAD_BYTES < body_len {
            return Err(fault(entry_offset, s, format!("entry length {body_len} runs past its frame")));
        }
        let entry_seq = u64::from_le_bytes(payload[at + 4..at + 12].try_into().unwrap());
        if entry_seq != s {
            return Err(fault(
                entry_offset,
                s,
                format!("found entry {entry_seq} where entry {s} belongs: entries are missing or reordered"),
            ));
        }
        let kind = payload[at + 12];
        let body = &payload[at + 13..at + 13 + body_len];
        let stored: [u8; 32] = payload[at + 13 + body_len..at + 45 + body_len].try_into().unwrap();
        if entry_hash(&hash, s, kind, body) != stored {
            return Err(fault(
                entry_offset,
                s,
                "hash mismatch: the entry was altered or does not follow the previous entry".into(),
            ));
        }
        hash = stored;
        at += ENTRY_OVERHEAD_BYTES + body_len;
    }
    if at != payload.len() {
        return Err(fault(body_offset + at as u64, seq + count as u64, "trailing bytes in frame".into()));
    }
    Ok(Some((count, hash)))
}

fn parse_header(header: &[u8; FRAME_HEADER_BYTES]) -> Result<(u32, u32), String> {
    let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
    if magic != FRAME_MAGIC {
        return Err("no frame header here (bad magic)".into());
    }
    let check = u64::from_le_bytes(header[24..32].try_into().unwrap());
    if check != header_check(header) {
        return Err("frame header checksum mismatch".into());
    }
    let version = u16::from_le_bytes(header[4..6].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(format!("unknown journal format version {version}"));
    }
    let count = u32::from_le_bytes(header[8..12].try_into().unwrap());
    let payload_len = u32::from_le_bytes(header[12..16].try_into().unwrap());
    if payload_len as usize > FRAME_PAYLOAD_BYTES_MAX || count == 0 {
        return Err(format!("implausible frame: {count} entries in {payload_len} bytes"));
    }
    Ok((count, payload_len))
}

/// Bytes read at a time while looking for a frame after a bad region.
const RESCAN_WINDOW_BYTES: usize = 8 << 20;

/// Looks for a whole, well-formed frame at or after `from` (byte by byte, reading a window at a
/// time): a valid header whose first entry comes after the fault and whose payload is exactly tiled
/// by entries numbered consecutively from it. A look-alike header planted inside an entry's bytes
/// (a client controls some of them) cannot pass: a frame does not fit inside one field.
fn find_valid_header_after(file: &mut File, from: u64, file_len: u64, fault: &FrameFault) -> Option<u64> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut window_start = from;
    let mut window = Vec::new();
    while window_start < file_len {
        let len = (file_len - window_start).min(RESCAN_WINDOW_BYTES as u64) as usize;
        window.resize(len, 0);
        file.seek(SeekFrom::Start(window_start)).ok()?;
        file.read_exact(&mut window).ok()?;
        let mut i = 0usize;
        while i + FRAME_HEADER_BYTES <= window.len() {
            if window[i..i + 4] == magic {
                let header: &[u8; FRAME_HEADER_BYTES] = window[i..i + FRAME_HEADER_BYTES].try_into().unwrap();
                let at = window_start + i as u64;
                if let Ok((count, payload_len)) = parse_header(header) {
                    let first_seq = u64::from_le_bytes(header[16..24].try_into().unwrap());
                    if first_seq >= fault.seq
                        && frame_is_well_formed(file, at, file_len, count, payload_len, first_seq)
                    {
                        return Some(at);
                    }
                }
            }
            i += 1;
        }
        if window_start + len as u64 >= file_len {
            break;
        }
        // Overlap by a header so one straddling the window edge is not missed.
        window_start += (len - FRAME_HEADER_BYTES) as u64;
    }
    None
}

/// Whether the frame whose header is at `at` has a payload in the file that entries tile exactly,
/// numbered `first_seq`, `first_seq + 1`, … (hashes are not checked: the chain's previous hash is
/// unknown after a bad region).
fn frame_is_well_formed(
    file: &mut File,
    at: u64,
    file_len: u64,
    count: u32,
    payload_len: u32,
    first_seq: u64,
) -> bool {
    let body = at + FRAME_HEADER_BYTES as u64;
    if file_len < body || file_len - body < payload_len as u64 {
        return false;
    }
    let mut payload = vec![0u8; payload_len as usize];
    if file.seek(SeekFrom::Start(body)).is_err() || file.read_exact(&mut payload).is_err() {
        return false;
    }
    let mut pos = 0usize;
    for i in 0..count as u64 {
        if payload.len() - pos < ENTRY_OVERHEAD_BYTES {
            return false;
        }
        let body_len = u32::from_le_bytes(payload[pos..pos + 4].try_into().unwrap()) as usize;
        if body_len > ENTRY_BODY_BYTES_MAX || payload.len() - pos - ENTRY_OVERHEAD_BYTES < body_len {
            return false;
        }
        if u64::from_le_bytes(payload[pos + 4..pos + 12].try_into().unwrap()) != first_seq + i {
            return false;
        }
        pos += ENTRY_OVERHEAD_BYTES + body_len;
    }
    pos == payload.len()
}
