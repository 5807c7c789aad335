//! Tenants and their API keys, kept in `DATA_DIR/tenants.json`.
//!
//! A key is shown once at creation and stored only as its SHA-256 (keys are 160 random bits, so a
//! fast hash is enough). The file is rewritten atomically (temp file, fsync, rename, fsync dir) on
//! every change; changes are rare (tenant creation, key rotation), lookups are in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::{KEYS_PER_TENANT_MAX, TENANTS_MAX};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn random_text(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..32)] as char).collect()
}

fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One API key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// The key's id.
    pub key_id: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// First characters, to recognise it.
    pub prefix: String,
    /// Revoked keys authenticate nothing.
    pub revoked: bool,
}

/// A tenant as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTenant {
    /// `t` + 8 characters.
    pub id: String,
    /// Name for people.
    pub name: String,
    /// Its keys.
    pub keys: Vec<StoredKey>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    tenants: Vec<StoredTenant>,
}

/// Who a key belongs to.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Tenant id.
    pub tenant: String,
    /// Key id (for rate limits and logs).
    pub key_id: String,
}

/// Why a registry change failed.
#[derive(Debug)]
pub enum RegistryError {
    /// No such tenant.
    TenantNotFound,
    /// No such key.
    KeyNotFound,
    /// A named limit was reached.
    Limit(&'static str),
    /// The file could not be written.
    Io(String),
}

/// The tenants, their keys, and the lookup from key hash to tenant.
pub struct TenantRegistry {
    path: PathBuf,
    state: RwLock<(File, HashMap<String, Principal>)>,
}

impl TenantRegistry {
    /// Loads `dir/tenants.json` (or starts empty).
    pub fn open(dir: &Path) -> Result<TenantRegistry, String> {
        let path = dir.join("tenants.json");
        let file: File = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let index = Self::index(&file);
        Ok(TenantRegistry { path, state: RwLock::new((file, index)) })
    }

    fn index(file: &File) -> HashMap<String, Principal> {
        let mut index = HashMap::new();
        for t in &file.tenants {
            for k in t.keys.iter().filter(|k| !k.revoked) {
                index.insert(k.sha256.clone(), Principal { tenant: t.id.clone(), key_id: k.key_id.clone() });
            }
        }
        index
    }

    /// The principal an API key authenticates, if any.
    pub fn authenticate(&self, key: &str) -> Option<Principal> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.1.get(&hash_key(key)).cloned()
    }

    fn save(&self, file: &File) -> Result<(), RegistryError> {
        let io = |e: std::io::Error| RegistryError::Io(format!("{}: {e}", self.path.display()));
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(file).expect("tenants serialise");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    fn new_key(tenant_id: &str) -> (String, StoredKey) {
        let key = format!("pk_{}_{}", tenant_id, random_text(32));
        let stored = StoredKey {
            key_id: format!("key_{}", random_text(10)),
            sha256: hash_key(&key),
            prefix: key[..16].to_string(),
            revoked: false,
        };
        (key, stored)
    }

    /// Creates a tenant with one key. Returns (tenant id, key id, key).
    pub fn create_tenant(&self, name: &str) -> Result<(String, String, String), RegistryError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.0.tenants.len() >= TENANTS_MAX {
            return Err(RegistryError::Limit("tenants"));
        }
        let id = loop {
            let candidate = format!("t{}", random_text(8));
            if !state.0.tenants.iter().any(|t| t.id == candidate) {
                break candidate;
            }
        };
        let (key, stored) = Self::new_key(&id);
        let key_id = stored.key_id.clone();
        state.0.tenants.push(StoredTenant { id: id.clone(), name: name.to_string(), keys: vec![stored] });
        if let Err(e) = self.save(&state.0) {
            state.0.tenants.pop();
            return Err(e);
        }
        state.1 = Self::index(&state.0);
        Ok((id, key_id, key))
    }

    /// Adds a key to a tenant (rotation: create the new key, move clients over, revoke the old one).
    pub fn create_key(&self, tenant: &str) -> Result<(String, String), RegistryError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let t = state.0.tenants.iter_mut().find(|t| t.id == tenant).ok_or(RegistryError::TenantNotFound)?;
        if t.keys.iter().filter(|k| !k.revoked).count() >= KEYS_PER_TENANT_MAX {
            return Err(RegistryError::Limit("keys per tenant"));
        }
        let (key, stored) = Self::new_key(tenant);
        let key_id = stored.key_id.clone();
        t.keys.push(stored);
        if let Err(e) = self.save(&state.0) {
            if let Some(t) = state.0.tenants.iter_mut().find(|t| t.id == tenant) {
                t.keys.pop();
            }
            return Err(e);
        }
        state.1 = Self::index(&state.0);
        Ok((key_id, key))
    }

    /// Revokes a key.
    pub fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(), RegistryError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let t = state.0.tenants.iter_mut().find(|t| t.id == tenant).ok_or(RegistryError::TenantNotFound)?;
        let k = t.keys.iter_mut().find(|k| k.key_id == key_id).ok_or(RegistryError::KeyNotFound)?;
        let was = k.revoked;
        k.revoked = true;
        if let Err(e) = self.save(&state.0) {
            if let Some(k) = state
                .0
                .tenants
                .iter_mut()
                .find(|t| t.id == tenant)
                .and_then(|t| t.keys.iter_mut().find(|k| k.key_id == key_id))
            {
                k.revoked = was;
            }
            return Err(e);
        }
        state.1 = Self::index(&state.0);
        Ok(())
    }

    /// A tenant's keys.
    pub fn keys(&self, tenant: &str) -> Option<Vec<StoredKey>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.0.tenants.iter().find(|t| t.id == tenant).map(|t| t.keys.clone())
    }
}
