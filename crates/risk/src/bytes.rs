//! The byte-level pieces of risk control's binary formats (the decision record, the feature
//! store's and the server's snapshots): LEB128 varints, zigzag for signed values, length-prefixed
//! UTF-8 strings, little-endian fixed-width words for hashes and timestamps (a varint of a
//! uniformly random 64-bit value takes 10 bytes), and a reader that returns an error, never
//! panics, on input that runs out or lies about a length.

/// Appends `v` as a LEB128 varint (1 byte below 128, at most 10).
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as a varint (small magnitudes of either sign are short).
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends `s` as its length (varint) and its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `v` as 8 little-endian bytes.
pub fn put_fixed_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads what the `put_*` functions wrote, from the front of a slice. Errors name `what` is being
/// read ("the decision record is truncated").
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, which hold `what` (named in errors).
    pub fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { bytes, at: 0, what }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!("{} is truncated", self.what));
        }
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    /// One byte.
    pub fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// A byte that must be 0 (false) or 1 (true).
    pub fn flag(&mut self) -> Result<bool, String> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{other} is not a flag")),
        }
    }

    /// A varint.
    pub fn u64(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err("a varint overflows 64 bits".into());
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint overflows 64 bits".into())
    }

    /// A zigzag varint.
    pub fn i64(&mut self) -> Result<i64, String> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// 8 little-endian bytes.
    pub fn fixed_u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A count of items of at least `item_bytes` bytes each (at least 1), bounded by the bytes
    /// left: a corrupt count cannot make the caller reserve memory the input does not back.
    pub fn count(&mut self, item_bytes: usize) -> Result<usize, String> {
        let n = self.u64()?;
        if n > (self.remaining() / item_bytes.max(1)) as u64 {
            return Err(format!("a length runs past {}", self.what));
        }
        Ok(n as usize)
    }

    /// A length of single bytes (a string's, a list's of at least one byte per item).
    #[allow(clippy::len_without_is_empty)] // reads a length prefix; not the reader's own size
    pub fn len(&mut self) -> Result<usize, String> {
        self.count(1)
    }

    /// A string.
    pub fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    /// A string, owned.
    pub fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_string)
    }
}
