//! Lower-case hex, and serde adapters that write byte fields of the JSON formats as hex strings.

/// Lower-case hex of bytes.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Bytes from hex (either case); `None` for an odd length or a non-hex character.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// Exactly `N` bytes from hex.
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    decode(text)?.try_into().ok()
}

/// Serde adapter: a fixed-size byte array as a hex string.
pub mod array {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Writes the array as hex.
    pub fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(bytes))
    }

    /// Reads an array of exactly `N` bytes from hex.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        super::decode_array(&text).ok_or_else(|| D::Error::custom(format!("expected {} hex digits", 2 * N)))
    }
}

/// Serde adapter: a byte vector as a hex string.
pub mod bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Writes the bytes as hex.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(bytes))
    }

    /// Reads bytes from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode(&text).ok_or_else(|| D::Error::custom("expected hex digits"))
    }
}

/// Serde adapter: a list of 32-byte hashes as a list of hex strings.
pub mod hashes {
    use serde::{de::Error, ser::SerializeSeq, Deserialize, Deserializer, Serializer};

    /// Writes each hash as hex.
    pub fn serialize<S: Serializer>(hashes: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hashes.len()))?;
        for h in hashes {
            seq.serialize_element(&super::encode(h))?;
        }
        seq.end()
    }

    /// Reads a list of 64-hex-digit hashes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                super::decode_array(t).ok_or_else(|| D::Error::custom("expected 64 hex digits per hash"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&bytes), "0001abff");
        assert_eq!(super::decode("0001ABff").unwrap(), bytes);
        assert_eq!(super::decode("0"), None);
        assert_eq!(super::decode("zz"), None);
        assert_eq!(super::decode_array::<4>("0001abff"), Some(bytes));
        assert_eq!(super::decode_array::<3>("0001abff"), None);
    }
}
