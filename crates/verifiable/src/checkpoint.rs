//! Signed checkpoints (signed tree heads) and the append-only files that hold them.
//!
//! A checkpoint says "the journal's first `size` entries have Merkle root `root`", at `timestamp_ns`,
//! signed by the node key with id `key_id`. The signature covers exactly these bytes (the *note*):
//!
//! ```text
//! puhui journal checkpoint v2\n
//! key <key_id>\n
//! size <size>\n
//! root <root, 64 hex digits>\n
//! time <timestamp_ns>\n
//! ```
//!
//! Files (`checkpoints.log` in the data directory, and a witness file): one checkpoint per line as a
//! JSON object `{"size":…,"root":"<hex>","timestamp_ns":…,"key_id":"<hex>","signature":"<hex>"}`,
//! appended and made durable with `fdatasync` before the checkpoint is served. A last line without
//! its newline is a torn append (a crash mid-write): readers ignore it and [`CheckpointLog::open`]
//! cuts it. Sizes strictly increase along a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{NodeKey, PublicKey};
use crate::{hex, io_error, Error, Hash};

/// File name of the checkpoint log inside a data directory.
pub const CHECKPOINT_LOG_FILE: &str = "checkpoints.log";

/// First line of every signed checkpoint note. `v2`: the leaves are the journal's chained BLAKE3
/// entry hashes (see [`crate::entry_leaf_hash`]); `v1` roots (leaf = `seq | kind | body`) are not
/// accepted any more.
pub const NOTE_HEADER: &str = "puhui journal checkpoint v2";

/// First line of the notes of the v1 leaf format, only to name it when an old checkpoint is found.
const NOTE_HEADER_V1: &str = "puhui journal checkpoint v1";

/// A signed checkpoint: the tree size, its root, when, and the node's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Tree size: the journal entries `0..size` are the leaves.
    pub size: u64,
    /// The RFC 6962 root of those leaves.
    #[serde(with = "hex::array")]
    pub root: Hash,
    /// When the checkpoint was made (nanoseconds since the Unix epoch, node clock).
    pub timestamp_ns: u64,
    /// Id of the key that signed it ([`PublicKey::key_id`]).
    pub key_id: String,
    /// ed25519 signature of [`Checkpoint::note`].
    #[serde(with = "hex::array")]
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// Makes and signs a checkpoint.
    pub fn sign(key: &NodeKey, size: u64, root: Hash, timestamp_ns: u64) -> Checkpoint {
        let key_id = key.public_key().key_id();
        let note = note(&key_id, size, &root, timestamp_ns);
        Checkpoint { size, root, timestamp_ns, key_id, signature: key.sign(note.as_bytes()) }
    }

    /// The exact text the signature covers.
    pub fn note(&self) -> String {
        note(&self.key_id, self.size, &self.root, self.timestamp_ns)
    }

    /// Checks that the checkpoint was signed by `key` (key id and signature).
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), Error> {
        let expected = key.key_id();
        if self.key_id != expected {
            return Err(Error::BadSignature(format!(
                "checkpoint of size {} names key {}, the key given is {expected}",
                self.size, self.key_id
            )));
        }
        key.verify(self.note().as_bytes(), &self.signature).map_err(|_| {
            let v1 = self.note().replacen(NOTE_HEADER, NOTE_HEADER_V1, 1);
            if key.verify(v1.as_bytes(), &self.signature).is_ok() {
                return Error::Format(format!(
                    "checkpoint of size {} was signed in the v1 leaf format (before 2026-11-26); this build signs and checks v2 checkpoints (leaves are the journal's BLAKE3 entry hashes): move checkpoints.log (and merkle.phm) aside to start a new signed history over the same journal",
                    self.size
                ));
            }
            Error::BadSignature(format!(
                "checkpoint of size {} (root {}) is not validly signed by key {expected}",
                self.size,
                hex::encode(&self.root)
            ))
        })
    }

    /// The checkpoint as one JSON line (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a checkpoint always serialises");
        line.push('\n');
        line
    }
}

fn note(key_id: &str, size: u64, root: &Hash, timestamp_ns: u64) -> String {
    format!("{NOTE_HEADER}\nkey {key_id}\nsize {size}\nroot {}\ntime {timestamp_ns}\n", hex::encode(root))
}

/// Parses a checkpoint file's bytes. Returns the checkpoints and the length of the whole lines
/// (a trailing line without a newline is a torn append and is not returned). A malformed whole line,
/// or sizes that do not strictly increase, is an error naming the line.
pub fn parse_checkpoints(bytes: &[u8], what: &Path) -> Result<(Vec<Checkpoint>, usize), Error> {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out: Vec<Checkpoint> = Vec::new();
    for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let c: Checkpoint = serde_json::from_slice(line).map_err(|e| {
            Error::Format(format!("{} line {}: not a checkpoint: {e}", what.display(), i + 1))
        })?;
        if let Some(last) = out.last() {
            if c.size <= last.size {
                return Err(Error::Format(format!(
                    "{} line {}: checkpoint size {} does not follow size {}",
                    what.display(),
                    i + 1,
                    c.size,
                    last.size
                )));
            }
        }
        out.push(c);
    }
    Ok((out, whole))
}

/// Reads every checkpoint of a file (read-only; a torn last line is ignored). A missing file has
/// none.
pub fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse_checkpoints(&bytes, path)?.0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(format!("reading {}", path.display()), e)),
    }
}

/// An append-only checkpoint file (the node's `checkpoints.log`, or a witness file).
#[derive(Debug)]
pub struct CheckpointLog {
    path: PathBuf,
    file: File,
}

impl CheckpointLog {
    /// Opens (or creates) a checkpoint file for appending and returns the checkpoints it holds. A
    /// torn last line is cut (saved next to the file as `<name>.torn` first).
    pub fn open(path: &Path) -> Result<(CheckpointLog, Vec<Checkpoint>), Error> {
        let io = |what: &str, e| io_error(format!("{what} {}", path.display()), e);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading", e)),
        };
        let (checkpoints, whole) = parse_checkpoints(&bytes, path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("opening", e))?;
        if whole < bytes.len() {
            let mut torn = path.as_os_str().to_owned();
            torn.push(".torn");
            std::fs::write(&torn, &bytes[whole..]).map_err(|e| io("saving the torn tail of", e))?;
            file.set_len(whole as u64).map_err(|e| io("cutting the torn tail of", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
        }
        if let Some(dir) = path.parent() {
            puhui_journal::frame::sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
        }
        let mut log = CheckpointLog { path: path.to_path_buf(), file };
        use std::io::Seek;
        log.file.seek(std::io::SeekFrom::End(0)).map_err(|e| io("seeking", e))?;
        Ok((log, checkpoints))
    }

    /// Appends a checkpoint and waits until it is durable (`fdatasync`).
    pub fn append(&mut self, checkpoint: &Checkpoint) -> Result<(), Error> {
        let io = |what: &str, e| io_error(format!("{what} {}", self.path.display()), e);
        self.file.write_all(checkpoint.to_line().as_bytes()).map_err(|e| io("appending to", e))?;
        self.file.sync_data().map_err(|e| io("syncing", e))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = NodeKey::from_seed([7; 32]);
        let c = Checkpoint::sign(&key, 10, [1; 32], 123);
        c.verify_signature(&key.public_key()).unwrap();
        let other = NodeKey::from_seed([8; 32]);
        assert!(matches!(c.verify_signature(&other.public_key()), Err(Error::BadSignature(_))));
        for tamper in 0..4 {
            let mut t = c.clone();
            match tamper {
                0 => t.size += 1,
                1 => t.root[0] ^= 1,
                2 => t.timestamp_ns += 1,
                _ => t.signature[10] ^= 1,
            }
            assert!(t.verify_signature(&key.public_key()).is_err(), "tamper {tamper}");
        }
        let line = c.to_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let (parsed, whole) = parse_checkpoints(line.as_bytes(), Path::new("x")).unwrap();
        assert_eq!((parsed, whole), (vec![c], line.len()));
    }

    #[test]
    fn a_v1_checkpoint_is_named_as_such() {
        let key = NodeKey::from_seed([7; 32]);
        let mut c = Checkpoint::sign(&key, 10, [1; 32], 123);
        assert!(c.note().starts_with("puhui journal checkpoint v2\n"));
        c.signature = key.sign(c.note().replacen(NOTE_HEADER, NOTE_HEADER_V1, 1).as_bytes());
        match c.verify_signature(&key.public_key()) {
            Err(Error::Format(e)) => assert!(e.contains("v1 leaf format"), "{e}"),
            other => panic!("expected the v1 format to be named, got {other:?}"),
        }
    }

    #[test]
    fn log_appends_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_LOG_FILE);
        let key = NodeKey::from_seed([7; 32]);
        let (mut log, existing) = CheckpointLog::open(&path).unwrap();
        assert!(existing.is_empty());
        log.append(&Checkpoint::sign(&key, 1, [1; 32], 1)).unwrap();
        log.append(&Checkpoint::sign(&key, 2, [2; 32], 2)).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"size\":3,").unwrap();
        drop(f);
        assert_eq!(read_checkpoints(&path).unwrap().len(), 2);
        let (mut log, existing) = CheckpointLog::open(&path).unwrap();
        assert_eq!(existing.len(), 2);
        log.append(&Checkpoint::sign(&key, 3, [3; 32], 3)).unwrap();
        assert_eq!(read_checkpoints(&path).unwrap().len(), 3);
        // A malformed whole line, or a size going backwards, is an error.
        std::fs::write(&path, b"nonsense\n").unwrap();
        assert!(matches!(read_checkpoints(&path), Err(Error::Format(_))));
        let a = Checkpoint::sign(&key, 5, [1; 32], 1).to_line();
        let b = Checkpoint::sign(&key, 4, [1; 32], 1).to_line();
        std::fs::write(&path, format!("{a}{b}")).unwrap();
        assert!(matches!(read_checkpoints(&path), Err(Error::Format(_))));
    }
}
