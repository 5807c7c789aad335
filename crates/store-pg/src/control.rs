//! The control plane on PostgreSQL: what several stateless `puhui serve` nodes must agree on besides
//! the ledger — tenants and their API keys, settings (the admin token's SHA-256) and Stripe-style
//! idempotency keys. The API crate keeps the rules (formats, limits, what a key looks like); this
//! module only stores rows and makes the cross-node checks atomic.
//!
//! Key decisions:
//! - Limits that span nodes are checked inside the writing transaction under a lock: tenant
//!   creation under a transaction-scoped advisory lock, key creation under the tenant row's lock.
//! - An idempotency key is claimed by an `INSERT … ON CONFLICT DO NOTHING`: exactly one request on
//!   one node wins it. A claim whose node died mid-request (status still NULL) can be taken over
//!   after a lease, so a crashed node does not block a key for 24 hours; the ledger's own ids (given,
//!   or derived from the key) still make the retried create idempotent.

use postgres::Client;
use puhui_store::StoreError;

use crate::{describe, ReadPool};

/// Connections the control plane opens per node (lookups of unknown keys, idempotency claims).
pub const CONTROL_CONNECTIONS_MAX: usize = 8;
/// Rows one expiry pass deletes at most (the next pass takes the rest).
pub const IDEMPOTENCY_EXPIRE_ROWS_MAX: i64 = 10_000;
/// Advisory lock key serialising tenant creation (the tenant limit holds across nodes).
const TENANT_LOCK_KEY: i64 = 7_077_846_118;

/// One API key as stored (its SHA-256, never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// The key's id.
    pub key_id: String,
    /// SHA-256 of the key, lower-case hex.
    pub sha256: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    /// A revoked key authenticates nothing.
    pub revoked: bool,
}

/// A tenant and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    /// The tenant's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its keys, oldest first.
    pub keys: Vec<KeyRow>,
}

/// Why a control-plane change failed.
#[derive(Debug)]
pub enum ControlError {
    /// No tenant with that id.
    TenantNotFound,
    /// No key with that id for that tenant.
    KeyNotFound,
    /// The id is taken (the caller picks another random id).
    IdTaken,
    /// A named limit was reached.
    Limit(&'static str),
    /// The database failed.
    Store(StoreError),
}

impl From<postgres::Error> for ControlError {
    fn from(e: postgres::Error) -> ControlError {
        ControlError::Store(StoreError::Io(describe(&e)))
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> ControlError {
        ControlError::Store(e)
    }
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is ours: run the request, then [`PgControl::complete_idempotency`].
    New,
    /// Another request with the key is still running (on some node).
    InProgress,
    /// The key was used with a different request.
    Reused,
    /// The first request finished: its status and body.
    Replay(u16, Vec<u8>),
}

fn io(e: postgres::Error) -> StoreError {
    StoreError::Io(describe(&e))
}

/// The control-plane tables, through a small pool of connections.
pub struct PgControl {
    pool: ReadPool,
}

impl PgControl {
    /// Connects (the tables come with the store's migrations: open the store first).
    pub fn open(url: &str, schema: Option<&str>) -> Result<PgControl, StoreError> {
        let pool = ReadPool::new(url, schema, CONTROL_CONNECTIONS_MAX);
        pool.with(|_| Ok(()))?;
        Ok(PgControl { pool })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, ControlError>) -> Result<T, ControlError> {
        let mut out = None;
        self.pool.with(|client| {
            out = Some(f(client));
            Ok(())
        })?;
        out.expect("the pool ran the closure")
    }

    /// Every tenant with its keys.
    pub fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        self.pool.with(|client| {
            let mut tenants: Vec<TenantRow> = client
                .query("SELECT id, name FROM puhui_tenants ORDER BY created_ms, id", &[])
                .map_err(io)?
                .iter()
                .map(|r| TenantRow { id: r.get(0), name: r.get(1), keys: Vec::new() })
                .collect();
            let index: std::collections::HashMap<String, usize> =
                tenants.iter().enumerate().map(|(n, t)| (t.id.clone(), n)).collect();
            let keys = client
                .query(
                    "SELECT tenant_id, key_id, sha256, prefix, revoked FROM puhui_api_keys
                     ORDER BY created_ms, key_id",
                    &[],
                )
                .map_err(io)?;
            for r in &keys {
                let tenant: String = r.get(0);
                if let Some(&n) = index.get(&tenant) {
                    tenants[n].keys.push(KeyRow {
                        key_id: r.get(1),
                        sha256: r.get(2),
                        prefix: r.get(3),
                        revoked: r.get(4),
                    });
                }
            }
            Ok(tenants)
        })
    }

    /// The live key with this SHA-256: `(tenant id, key id)`.
    pub fn find_key(&self, sha256: &str) -> Result<Option<(String, String)>, StoreError> {
        self.pool.with(|client| {
            let row = client
                .query_opt(
                    "SELECT tenant_id, key_id FROM puhui_api_keys WHERE sha256 = $1 AND NOT revoked",
                    &[&sha256],
                )
                .map_err(io)?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    /// Creates a tenant with its first key, unless there are already `tenants_max` tenants.
    pub fn create_tenant(
        &self,
        id: &str,
        name: &str,
        key: &KeyRow,
        now_ms: u64,
        tenants_max: usize,
    ) -> Result<(), ControlError> {
        let now = now_ms as i64;
        self.with(|client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TENANT_LOCK_KEY])?;
            let count: i64 = tx.query_one("SELECT count(*) FROM puhui_tenants", &[])?.get(0);
            if count as usize >= tenants_max {
                return Err(ControlError::Limit("tenants"));
            }
            let inserted = tx.execute(
                "INSERT INTO puhui_tenants (id, name, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&id, &name, &now],
            )?;
            if inserted == 0 {
                return Err(ControlError::IdTaken);
            }
            insert_key(&mut tx, id, key, now)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Adds a key to a tenant, unless it already has `active_max` live keys.
    pub fn add_key(
        &self,
        tenant: &str,
        key: &KeyRow,
        now_ms: u64,
        active_max: usize,
    ) -> Result<(), ControlError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            if tx.query_opt("SELECT 1 FROM puhui_tenants WHERE id = $1 FOR UPDATE", &[&tenant])?.is_none() {
                return Err(ControlError::TenantNotFound);
            }
            let live: i64 = tx
                .query_one(
                    "SELECT count(*) FROM puhui_api_keys WHERE tenant_id = $1 AND NOT revoked",
                    &[&tenant],
                )?
                .get(0);
            if live as usize >= active_max {
                return Err(ControlError::Limit("keys per tenant"));
            }
            insert_key(&mut tx, tenant, key, now_ms as i64)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Revokes a tenant's key (revoking a revoked key is not an error).
    pub fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(), ControlError> {
        self.with(|client| {
            if client.query_opt("SELECT 1 FROM puhui_tenants WHERE id = $1", &[&tenant])?.is_none() {
                return Err(ControlError::TenantNotFound);
            }
            let n = client.execute(
                "UPDATE puhui_api_keys SET revoked = true WHERE tenant_id = $1 AND key_id = $2",
                &[&tenant, &key_id],
            )?;
            if n == 0 {
                return Err(ControlError::KeyNotFound);
            }
            Ok(())
        })
    }

    /// A setting's value.
    pub fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.pool.with(|client| {
            let row =
                client.query_opt("SELECT value FROM puhui_settings WHERE name = $1", &[&name]).map_err(io)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Stores `value` unless the setting exists; returns the value that stands (ours or the one
    /// another node stored first).
    pub fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        self.pool.with(|client| {
            client
                .execute(
                    "INSERT INTO puhui_settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, &value],
                )
                .map_err(io)?;
            let row =
                client.query_one("SELECT value FROM puhui_settings WHERE name = $1", &[&name]).map_err(io)?;
            Ok(row.get(0))
        })
    }

    /// Stores `value`, replacing any other; returns the value it replaced.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<Option<String>, StoreError> {
        self.pool.with(|client| {
            let mut tx = client.transaction().map_err(io)?;
            let old = tx
                .query_opt("SELECT value FROM puhui_settings WHERE name = $1 FOR UPDATE", &[&name])
                .map_err(io)?
                .map(|r| r.get(0));
            tx.execute(
                "INSERT INTO puhui_settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&name, &value],
            )
            .map_err(io)?;
            tx.commit().map_err(io)?;
            Ok(old)
        })
    }

    /// Claims `(tenant, key)` for a request with `fingerprint`. A finished claim older than
    /// `ttl_ms`, or a running one not updated for `lease_ms` (its node died), is taken over.
    pub fn claim_idempotency(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        lease_ms: u64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let now = now_ms as i64;
        let fp = &fingerprint[..];
        self.pool.with(|client| {
            let inserted = client
                .execute(
                    "INSERT INTO puhui_idempotency (tenant, key, fingerprint, status, body, created_ms, updated_ms)
                     VALUES ($1, $2, $3, NULL, NULL, $4, $4) ON CONFLICT DO NOTHING",
                    &[&tenant, &key, &fp, &now],
                )
                .map_err(io)?;
            if inserted == 1 {
                return Ok(IdempotencyClaim::New);
            }
            // Take over an expired key, or the claim of a request whose node died.
            let expired_before = now.saturating_sub(ttl_ms as i64);
            let stale_before = now.saturating_sub(lease_ms as i64);
            let taken = client
                .execute(
                    "UPDATE puhui_idempotency
                     SET fingerprint = $3, status = NULL, body = NULL, created_ms = $4, updated_ms = $4
                     WHERE tenant = $1 AND key = $2
                       AND (created_ms < $5 OR (status IS NULL AND updated_ms < $6 AND fingerprint = $3))",
                    &[&tenant, &key, &fp, &now, &expired_before, &stale_before],
                )
                .map_err(io)?;
            if taken == 1 {
                return Ok(IdempotencyClaim::New);
            }
            let row = client
                .query_opt(
                    "SELECT fingerprint, status, body FROM puhui_idempotency WHERE tenant = $1 AND key = $2",
                    &[&tenant, &key],
                )
                .map_err(io)?;
            let Some(row) = row else {
                // Forgotten in between (the first request failed): claim it again next time.
                return Ok(IdempotencyClaim::InProgress);
            };
            let stored: Vec<u8> = row.get(0);
            if stored != fp {
                return Ok(IdempotencyClaim::Reused);
            }
            let status: Option<i32> = row.get(1);
            Ok(match status {
                None => IdempotencyClaim::InProgress,
                Some(status) => {
                    let body: Option<Vec<u8>> = row.get(2);
                    IdempotencyClaim::Replay(status.clamp(0, 999) as u16, body.unwrap_or_default())
                }
            })
        })
    }

    /// Stores the answer to a claimed key.
    pub fn complete_idempotency(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client
                .execute(
                    "UPDATE puhui_idempotency SET status = $3, body = $4, updated_ms = $5
                     WHERE tenant = $1 AND key = $2 AND status IS NULL",
                    &[&tenant, &key, &i32::from(status), &body, &(now_ms as i64)],
                )
                .map_err(io)?;
            Ok(())
        })
    }

    /// Releases a claimed key whose request failed in a way safe to retry.
    pub fn forget_idempotency(&self, tenant: &str, key: &str) -> Result<(), StoreError> {
        self.pool.with(|client| {
            client
                .execute(
                    "DELETE FROM puhui_idempotency WHERE tenant = $1 AND key = $2 AND status IS NULL",
                    &[&tenant, &key],
                )
                .map_err(io)?;
            Ok(())
        })
    }

    /// Deletes keys created before `before_ms` (at most [`IDEMPOTENCY_EXPIRE_ROWS_MAX`] per call).
    /// Returns how many.
    pub fn expire_idempotency(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.pool.with(|client| {
            client
                .execute(
                    "DELETE FROM puhui_idempotency WHERE ctid IN (
                         SELECT ctid FROM puhui_idempotency WHERE created_ms < $1 LIMIT $2)",
                    &[&(before_ms as i64), &IDEMPOTENCY_EXPIRE_ROWS_MAX],
                )
                .map_err(io)
        })
    }
}

fn insert_key(
    tx: &mut postgres::Transaction<'_>,
    tenant: &str,
    key: &KeyRow,
    now: i64,
) -> Result<(), ControlError> {
    let inserted = tx.execute(
        "INSERT INTO puhui_api_keys (key_id, tenant_id, sha256, prefix, revoked, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[&key.key_id, &tenant, &key.sha256, &key.prefix, &key.revoked, &now],
    )?;
    if inserted == 0 {
        return Err(ControlError::IdTaken);
    }
    Ok(())
}
