//! Small durable files: JSON written atomically (temp file, fsync, rename, fsync directory).

use std::path::Path;

use puhui_journal::JournalPosition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A journal position as stored in JSON (the hash as hex).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PositionFile {
    /// Entries before the position.
    pub entries: u64,
    /// Bytes of whole frames before it.
    pub len_bytes: u64,
    /// Hash of the entry before it, hex.
    pub last_hash: String,
}

impl From<JournalPosition> for PositionFile {
    fn from(p: JournalPosition) -> Self {
        PositionFile {
            entries: p.entries,
            len_bytes: p.len_bytes,
            last_hash: p.last_hash.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

impl PositionFile {
    /// The position, if the hash is 64 hex digits.
    pub fn to_position(&self) -> Option<JournalPosition> {
        let bytes = self.last_hash.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut last_hash = [0u8; 32];
        for (i, out) in last_hash.iter_mut().enumerate() {
            let text = std::str::from_utf8(&bytes[2 * i..2 * i + 2]).ok()?;
            *out = u8::from_str_radix(text, 16).ok()?;
        }
        Some(JournalPosition { entries: self.entries, len_bytes: self.len_bytes, last_hash })
    }
}

/// Writes `value` as JSON to `path` atomically: readers see the old or the new file, never a mix.
pub fn save_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a JSON file written by [`save_json_atomic`]; `Ok(None)` if there is none.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_hashes_are_refused() {
        let p = JournalPosition { entries: 3, len_bytes: 99, last_hash: [7; 32] };
        assert_eq!(PositionFile::from(p).to_position(), Some(p));
        let bad = PositionFile { entries: 1, len_bytes: 2, last_hash: "zz".repeat(32) };
        assert_eq!(bad.to_position(), None);
        assert_eq!(PositionFile::default().to_position(), None);
    }

    #[test]
    fn json_files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        assert_eq!(load_json::<Vec<u32>>(&path).unwrap(), None);
        save_json_atomic(&path, &vec![1u32, 2]).unwrap();
        save_json_atomic(&path, &vec![3u32]).unwrap();
        assert_eq!(load_json::<Vec<u32>>(&path).unwrap(), Some(vec![3]));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_json::<Vec<u32>>(&path).is_err());
    }
}
