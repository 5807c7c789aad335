//! Tenants and their API keys: in `DATA_DIR/tenants.json` on the embedded store, in PostgreSQL
//! tables (`puhui_store_pg::control`) when the ledger is there, so that every node knows every key.
//!
//! A key is shown once at creation and stored only as its SHA-256 (keys are 160 random bits, so a
//! fast hash is enough). The file is rewritten atomically (temp file, fsync, rename, fsync dir) on
//! every change; changes are rare (tenant creation, key rotation), lookups are in memory.
//!
//! On PostgreSQL every change is a transaction (limits checked under a lock, across nodes), after
//! which this node reloads; a key another node created is looked up in the database the first time
//! it is seen; every node reloads the whole registry every [`REGISTRY_RELOAD_MS`], so a key revoked
//! on one node stops working on all of them within that time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use puhui_store_pg::control::{ControlError, KeyRow, PgControl, TenantRow};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::{KEYS_PER_TENANT_MAX, TENANTS_MAX};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Whether `s` has the form of a tenant id (`t` and 8 characters of the id alphabet).
pub fn is_tenant_id(s: &str) -> bool {
    s.len() == crate::models::TENANT_ID_LEN
        && s.starts_with('t')
        && s.bytes().skip(1).all(|b| ALPHABET.contains(&b))
}

fn random_text(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..32)] as char).collect()
}

/// The SHA-256 of an API key in lowercase hex (the stored form), without allocating: this runs on
/// every request.
fn hash_key_hex(key: &str) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 64];
    for (i, b) in Sha256::digest(key.as_bytes()).iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    hex
}

/// [`hash_key_hex`] as a `String`.
fn hash_key(key: &str) -> String {
    String::from_utf8(hash_key_hex(key).to_vec()).expect("hex digits are ASCII")
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
    /// Tenant id (shared: a principal is cloned into every request).
    pub tenant: Arc<str>,
    /// Key id (for rate limits and logs).
    pub key_id: Arc<str>,
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

/// On PostgreSQL, how often every node reloads the registry (the most a revocation on another
/// node takes to reach this one).
pub const REGISTRY_RELOAD_MS: u64 = 1_000;

/// Where the registry is kept.
enum Persist {
    /// `DATA_DIR/tenants.json` (one node).
    File(PathBuf),
    /// PostgreSQL (every node on the database).
    Postgres(Arc<PgControl>),
}

/// The tenants, their keys, and the lookup from key hash to tenant.
pub struct TenantRegistry {
    persist: Persist,
    state: RwLock<(File, HashMap<String, Principal>)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn control_error(e: ControlError) -> RegistryError {
    match e {
        ControlError::TenantNotFound => RegistryError::TenantNotFound,
        ControlError::KeyNotFound => RegistryError::KeyNotFound,
        ControlError::Limit(what) => RegistryError::Limit(what),
        ControlError::IdTaken => RegistryError::Io("a random id collided; retry".into()),
        ControlError::Store(e) => RegistryError::Io(e.to_string()),
    }
}

fn to_row(k: &StoredKey) -> KeyRow {
    KeyRow {
        key_id: k.key_id.clone(),
        sha256: k.sha256.clone(),
        prefix: k.prefix.clone(),
        revoked: k.revoked,
    }
}

fn from_rows(rows: Vec<TenantRow>) -> File {
    File {
        tenants: rows
            .into_iter()
            .map(|t| StoredTenant {
                id: t.id,
                name: t.name,
                keys: t
                    .keys
                    .into_iter()
                    .map(|k| StoredKey {
                        key_id: k.key_id,
                        sha256: k.sha256,
                        prefix: k.prefix,
                        revoked: k.revoked,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Attempts at a fresh random id before giving up (collisions are ~2⁻⁴⁰ each).
const ID_ATTEMPTS_MAX: usize = 8;

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
        Ok(TenantRegistry { persist: Persist::File(path), state: RwLock::new((file, index)) })
    }

    /// Loads the registry from PostgreSQL (shared by every node on the database).
    pub fn open_postgres(control: Arc<PgControl>) -> Result<TenantRegistry, String> {
        let file = from_rows(control.tenants().map_err(|e| format!("loading tenants: {e}"))?);
        let index = Self::index(&file);
        Ok(TenantRegistry { persist: Persist::Postgres(control), state: RwLock::new((file, index)) })
    }

    /// Whether the registry is shared through PostgreSQL (then [`TenantRegistry::lookup_shared`]
    /// and [`TenantRegistry::reload`] apply).
    pub fn is_shared(&self) -> bool {
        matches!(self.persist, Persist::Postgres(_))
    }

    /// Re-reads the registry from PostgreSQL (blocking; nothing to do on a file).
    pub fn reload(&self) -> Result<(), String> {
        let Persist::Postgres(control) = &self.persist else { return Ok(()) };
        let file = from_rows(control.tenants().map_err(|e| format!("loading tenants: {e}"))?);
        let index = Self::index(&file);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = (file, index);
        Ok(())
    }

    /// For a key this node does not know: asks PostgreSQL (blocking), in case another node created
    /// it since the last reload; on a hit, reloads.
    pub fn lookup_shared(&self, key: &str) -> Option<Principal> {
        let Persist::Postgres(control) = &self.persist else { return None };
        let (tenant, key_id) = control.find_key(&hash_key(key)).ok()??;
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "reloading the tenant registry");
        }
        Some(Principal { tenant: tenant.into(), key_id: key_id.into() })
    }

    fn index(file: &File) -> HashMap<String, Principal> {
        let mut index = HashMap::new();
        for t in &file.tenants {
            for k in t.keys.iter().filter(|k| !k.revoked) {
                index.insert(
                    k.sha256.clone(),
                    Principal { tenant: Arc::from(t.id.as_str()), key_id: Arc::from(k.key_id.as_str()) },
                );
            }
        }
        index
    }

    /// The principal an API key authenticates, if any.
    pub fn authenticate(&self, key: &str) -> Option<Principal> {
        let hex = hash_key_hex(key);
        let hex = std::str::from_utf8(&hex).expect("hex digits are ASCII");
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.1.get(hex).cloned()
    }

    fn save(&self, file: &File) -> Result<(), RegistryError> {
        let Persist::File(path) = &self.persist else { return Ok(()) };
        let io = |e: std::io::Error| RegistryError::Io(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(file).expect("tenants serialise");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
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
        if let Persist::Postgres(control) = &self.persist {
            for _ in 0..ID_ATTEMPTS_MAX {
                let id = format!("t{}", random_text(8));
                let (key, stored) = Self::new_key(&id);
                match control.create_tenant(&id, name, &to_row(&stored), now_ms(), TENANTS_MAX) {
                    Ok(()) => {
                        self.reload().map_err(RegistryError::Io)?;
                        return Ok((id, stored.key_id, key));
                    }
                    Err(ControlError::IdTaken) => continue,
                    Err(e) => return Err(control_error(e)),
                }
            }
            return Err(RegistryError::Io("could not find a free tenant id".into()));
        }
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
        if let Persist::Postgres(control) = &self.persist {
            for _ in 0..ID_ATTEMPTS_MAX {
                let (key, stored) = Self::new_key(tenant);
                match control.add_key(tenant, &to_row(&stored), now_ms(), KEYS_PER_TENANT_MAX) {
                    Ok(()) => {
                        self.reload().map_err(RegistryError::Io)?;
                        return Ok((stored.key_id, key));
                    }
                    Err(ControlError::IdTaken) => continue,
                    Err(e) => return Err(control_error(e)),
                }
            }
            return Err(RegistryError::Io("could not find a free key id".into()));
        }
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
        if let Persist::Postgres(control) = &self.persist {
            control.revoke_key(tenant, key_id).map_err(control_error)?;
            return self.reload().map_err(RegistryError::Io);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_lowercase_hex_sha256() {
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hash_key_hex("abc").as_slice(), hash_key("abc").as_bytes());
    }
}
