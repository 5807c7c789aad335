//! The node's ed25519 signing key and its public key.
//!
//! ```text
//! DATA_DIR/node.key   64 hex digits (the 32-byte ed25519 seed) and a newline; mode 0600
//! DATA_DIR/node.pub   64 hex digits (the 32-byte ed25519 public key) and a newline
//! ```
//!
//! The key is generated from the operating system's random source on the first start and never
//! changes. The *key id* (in every checkpoint) is the first 8 bytes of SHA-256 of the public key, in
//! hex: it tells a verifier which key a checkpoint claims to be signed with.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::{hex, io_error, Error};

/// File name of the secret key inside a data directory.
pub const KEY_FILE: &str = "node.key";
/// File name of the exported public key inside a data directory.
pub const PUBLIC_KEY_FILE: &str = "node.pub";

/// The node's signing key.
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("NodeKey").field("key_id", &self.public_key().key_id()).finish()
    }
}

impl NodeKey {
    /// A key from a 32-byte seed (tests; a node uses [`NodeKey::load_or_generate`]).
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey { signing: SigningKey::from_bytes(&seed) }
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<NodeKey, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key(format!("no randomness for a new key: {e}")))?;
        Ok(NodeKey::from_seed(seed))
    }

    /// Loads `dir/node.key`, or generates it (mode 0600) on the first start; (re)writes
    /// `dir/node.pub` if it is missing or does not match.
    pub fn load_or_generate(dir: &Path) -> Result<NodeKey, Error> {
        let path = dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed = hex::decode_array::<32>(text.trim())
                    .ok_or_else(|| Error::Key(format!("{} does not hold 64 hex digits", path.display())))?;
                NodeKey::from_seed(seed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate()?;
                let text = format!("{}\n", hex::encode(key.signing.as_bytes()));
                write_file_durably(dir, KEY_FILE, text.as_bytes(), 0o600)?;
                key
            }
            Err(e) => return Err(io_error(format!("reading {}", path.display()), e)),
        };
        let public = format!("{}\n", key.public_key().to_hex());
        let pub_path = dir.join(PUBLIC_KEY_FILE);
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
            write_file_durably(dir, PUBLIC_KEY_FILE, public.as_bytes(), 0o644)?;
        }
        Ok(key)
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs a message.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// An ed25519 public key: what a verifier needs, and all it needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, Error> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|e| Error::Key(format!("not an ed25519 public key: {e}")))
    }

    /// The key from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<PublicKey, Error> {
        let bytes = hex::decode_array::<32>(text.trim())
            .ok_or_else(|| Error::Key("a public key is 64 hex digits".into()))?;
        PublicKey::from_bytes(&bytes)
    }

    /// The key given on a command line: a path to a `node.pub` file, or the 64 hex digits themselves.
    pub fn from_arg(arg: &str) -> Result<PublicKey, Error> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| io_error(format!("reading {}", path.display()), e))?;
            return PublicKey::from_hex(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())));
        }
        PublicKey::from_hex(arg).map_err(|_| {
            Error::Key(format!("{arg:?} is neither a public key file nor 64 hex digits of a public key"))
        })
    }

    /// Reads `dir/node.pub`.
    pub fn load(dir: &Path) -> Result<PublicKey, Error> {
        let path = dir.join(PUBLIC_KEY_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| io_error(format!("reading {}", path.display()), e))?;
        PublicKey::from_hex(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The key id: hex of the first 8 bytes of SHA-256 of the key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..8])
    }

    /// Checks an ed25519 signature of `message` (strict verification: no malleable signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), Error> {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| Error::BadSignature(format!("not signed by key {}", self.key_id())))
    }
}

/// Writes `dir/name` through a temporary file with the given mode, syncs it, renames it into place
/// and syncs the directory.
fn write_file_durably(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_error(format!("creating {}", tmp.display()), e))?;
    file.write_all(bytes).map_err(|e| io_error(format!("writing {}", tmp.display()), e))?;
    file.sync_all().map_err(|e| io_error(format!("syncing {}", tmp.display()), e))?;
    drop(file);
    std::fs::rename(&tmp, &target).map_err(|e| io_error(format!("renaming {}", tmp.display()), e))?;
    puhui_journal::frame::sync_dir(dir).map_err(|e| io_error(format!("syncing {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_with_mode_0600_and_exported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_generate(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = NodeKey::load_or_generate(dir.path()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(PublicKey::load(dir.path()).unwrap(), key.public_key());
        let pub_path = dir.path().join(PUBLIC_KEY_FILE);
        assert_eq!(PublicKey::from_arg(pub_path.to_str().unwrap()).unwrap(), key.public_key());
        assert_eq!(PublicKey::from_arg(&key.public_key().to_hex()).unwrap(), key.public_key());
        assert!(PublicKey::from_arg("nonsense").is_err());
        let sig = key.sign(b"m");
        key.public_key().verify(b"m", &sig).unwrap();
        assert!(key.public_key().verify(b"n", &sig).is_err());
        assert_eq!(key.public_key().key_id().len(), 16);
        assert!(!format!("{key:?}").contains(&hex::encode(key.signing.as_bytes())));
    }
}
