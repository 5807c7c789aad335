//! Identifiers of accounts and transfers: client-supplied or generated, time-ordered.

use core::fmt;

/// Longest id the ledger stores, in bytes: the 64 bytes a client may choose plus room for a namespace
/// prefix (the HTTP API prefixes every id with its tenant; clients never see it).
pub const ID_BYTES_MAX: usize = 80;
/// Longest id a client chooses, in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 64;

/// An account or transfer id: 1–80 bytes of `[A-Za-z0-9_.:-]` (clients choose at most 64). Validated on construction, so holding
/// an `Id` means holding a valid one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Box<str>);

impl Id {
    /// Validates and wraps an id; `None` if it is empty, longer than 80 bytes or has another character.
    pub fn new(id: &str) -> Option<Id> {
        if is_valid_id(id) {
            Some(Id(id.into()))
        } else {
            None
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `id` is 1–80 bytes of `[A-Za-z0-9_.:-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::ops::Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Generates time-ordered ids in the ULID text form (26 characters of Crockford base32): 48 bits of
/// milliseconds since the Unix epoch, then 80 bits that increase within a millisecond from a random
/// start, so ids from one generator sort by creation time and never repeat.
///
/// The generator does no I/O: the caller supplies the time and the seed (entropy).
#[derive(Debug, Clone)]
pub struct IdGenerator {
    last_ms: u64,
    last_low: u128,
    state: u64,
}

const LOW_BITS: u32 = 80;
const LOW_MASK: u128 = (1u128 << LOW_BITS) - 1;

impl IdGenerator {
    /// A generator whose random part starts from `seed` (use a value that differs between processes).
    pub fn new(seed: u64) -> IdGenerator {
        IdGenerator { last_ms: 0, last_low: 0, state: seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: small, fast, good enough to spread ids; not a security boundary.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next id for the wall-clock time `now_ms` (milliseconds since the Unix epoch).
    pub fn next(&mut self, now_ms: u64) -> Id {
        let ms = now_ms.max(self.last_ms) & ((1u64 << 48) - 1);
        let low = if ms == self.last_ms {
            // Same millisecond: strictly increase the low part (wraps into the next ms if exhausted).
            self.last_low.wrapping_add(1 + (self.next_random() as u128 & 0xFFFF)) & LOW_MASK
        } else {
            ((self.next_random() as u128) << 16 | (self.next_random() as u128 & 0xFFFF)) & (LOW_MASK >> 1)
        };
        self.last_ms = ms;
        self.last_low = low;
        let value = (ms as u128) << LOW_BITS | low;
        Id(encode_crockford(value).into())
    }
}

fn encode_crockford(mut value: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    String::from_utf8(out.to_vec()).expect("alphabet is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_charset_and_length() {
        assert!(Id::new("acct:merchant-42_a.b").is_some());
        assert!(Id::new("").is_none());
        assert!(Id::new("has space").is_none());
        assert!(Id::new("汇").is_none());
        assert!(Id::new(&"a".repeat(80)).is_some());
        assert!(Id::new(&"a".repeat(81)).is_none());
    }

    #[test]
    fn generated_ids_are_valid_and_time_ordered() {
        let mut gen = IdGenerator::new(7);
        let mut previous = gen.next(1_700_000_000_000);
        for step in 0..10_000u64 {
            let next = gen.next(1_700_000_000_000 + step / 100);
            assert!(is_valid_id(&next));
            assert_eq!(next.len(), 26);
            assert!(next > previous, "{next} after {previous}");
            previous = next;
        }
    }
}
