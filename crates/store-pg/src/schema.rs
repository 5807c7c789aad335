//! The schema, as numbered migrations embedded in the binary and applied at open (or by
//! [`crate::migrate`]). A migration is never edited once released; changes are new migrations.
//!
//! Encodings (PostgreSQL has no unsigned integers):
//! - timestamps (ns since the Unix epoch) are `bigint`; a timestamp above `i64::MAX` (the year 2262)
//!   is refused with an error rather than stored;
//! - amounts and balances are `u64` stored bit for bit in `bigint` (values above 2⁶³ − 1 read as
//!   negative in SQL; the store converts back). Nothing in SQL orders or sums them.

use postgres::Client;

/// `(version, SQL)`, applied in order, each in the transaction that records it.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE puhui_accounts (
    id              text PRIMARY KEY,
    currency        text     NOT NULL,
    exponent        smallint NOT NULL,
    flags           smallint NOT NULL,
    limit_minor     bigint,
    status          smallint NOT NULL,
    metadata        bytea,
    debits_pending  bigint   NOT NULL,
    debits_posted   bigint   NOT NULL,
    credits_pending bigint   NOT NULL,
    credits_posted  bigint   NOT NULL,
    timestamp_ns    bigint   NOT NULL
);
-- Every recorded transfer, failed ones included (the id is a permanent idempotency key). The columns
-- are the canonical request (for a failed transfer: the request as it came, so accounts may be
-- missing or unknown), the result, and for an applied pending transfer the state of its hold.
CREATE TABLE puhui_transfers (
    id                text PRIMARY KEY,
    kind              smallint NOT NULL,
    result            smallint NOT NULL,
    timestamp_ns      bigint   NOT NULL,
    pending_id        text,
    debit_account_id  text,
    credit_account_id text,
    amount_minor      bigint,
    currency          text,
    timeout_ms        bigint,
    code              bigint   NOT NULL,
    metadata          bytea,
    end_to_end_id     text,
    uetr              bytea,
    pending_status    smallint,
    resolved_at_ns    bigint,
    expires_at_ns     bigint
);
-- Open holds with a timeout, by deadline: what expiry scans.
CREATE INDEX puhui_transfers_open_holds ON puhui_transfers (expires_at_ns)
    WHERE pending_status = 0 AND expires_at_ns IS NOT NULL;
-- Balances after every applied transfer (and hold expiry) per account: balance_at and pages.
CREATE TABLE puhui_account_history (
    account_id      text    NOT NULL,
    timestamp_ns    bigint  NOT NULL,
    transfer_id     text    NOT NULL,
    expiry          boolean NOT NULL,
    debits_pending  bigint  NOT NULL,
    debits_posted   bigint  NOT NULL,
    credits_pending bigint  NOT NULL,
    credits_posted  bigint  NOT NULL,
    PRIMARY KEY (account_id, timestamp_ns)
);
CREATE INDEX puhui_account_history_transfer ON puhui_account_history (transfer_id);
-- The hash-chained journal: the same entries (kind, body, BLAKE3 chain) as the embedded journal.
CREATE TABLE puhui_journal (
    seq  bigint PRIMARY KEY,
    kind smallint NOT NULL,
    body bytea    NOT NULL,
    hash bytea    NOT NULL
);
-- One row: the journal's head and the ledger clock. Its row lock serialises every commit that
-- writes (it is always the last lock a writing transaction takes).
CREATE TABLE puhui_journal_head (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_seq          bigint NOT NULL,
    last_hash         bytea  NOT NULL,
    last_timestamp_ns bigint NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- The control plane every node shares: tenants, API keys (SHA-256 only), settings (the admin
-- token's SHA-256) and Stripe-style idempotency keys. Small tables; the ledger never reads them.
CREATE TABLE puhui_tenants (
    id         text   PRIMARY KEY,
    name       text   NOT NULL,
    created_ms bigint NOT NULL
);
CREATE TABLE puhui_api_keys (
    key_id     text    PRIMARY KEY,
    tenant_id  text    NOT NULL REFERENCES puhui_tenants (id),
    sha256     text    NOT NULL UNIQUE,
    prefix     text    NOT NULL,
    revoked    boolean NOT NULL,
    created_ms bigint  NOT NULL
);
CREATE INDEX puhui_api_keys_tenant ON puhui_api_keys (tenant_id);
CREATE TABLE puhui_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
-- status NULL: the first request with the key is still running (on node `updated_ms` says when
-- it began; after a lease the key can be taken over, see control.rs).
CREATE TABLE puhui_idempotency (
    tenant      text   NOT NULL,
    key         text   NOT NULL,
    fingerprint bytea  NOT NULL,
    status      integer,
    body        bytea,
    created_ms  bigint NOT NULL,
    updated_ms  bigint NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX puhui_idempotency_created ON puhui_idempotency (created_ms);
"#,
    ),
    (
        3,
        r#"
-- Events and webhooks on PostgreSQL (puhui-api). Cursors of the singleton consumers of the journal
-- (the NATS relay per stream, the webhook dispatcher): the first sequence not yet handled.
CREATE TABLE puhui_event_cursors (
    name               text PRIMARY KEY,
    journal_id         text,
    next_seq           bigint NOT NULL,
    last_published_seq bigint
);
-- Webhook endpoints: the endpoint as JSON (url, enabled events, signing secrets, from_seq).
CREATE TABLE puhui_webhook_endpoints (
    id            text   PRIMARY KEY,
    tenant        text   NOT NULL,
    created_at_ms bigint NOT NULL,
    body          text   NOT NULL
);
CREATE INDEX puhui_webhook_endpoints_tenant ON puhui_webhook_endpoints (tenant, created_at_ms);
CREATE SEQUENCE puhui_webhook_delivery_numbers;
-- Deliveries: pending ones (status 0) and the log of finished ones (1 succeeded, 2 failed). Deleting
-- an endpoint deletes its deliveries; a delivery for an endpoint deleted meanwhile cannot be inserted.
CREATE TABLE puhui_webhook_deliveries (
    number              bigint   PRIMARY KEY,
    endpoint_id         text     NOT NULL REFERENCES puhui_webhook_endpoints (id) ON DELETE CASCADE,
    tenant              text     NOT NULL,
    event_seq           bigint   NOT NULL,
    event_type          text     NOT NULL,
    status              smallint NOT NULL,
    attempts            integer  NOT NULL,
    created_at_ms       bigint   NOT NULL,
    first_attempt_at_ms bigint,
    next_attempt_at_ms  bigint   NOT NULL,
    last_attempt_at_ms  bigint,
    last_status_code    integer,
    last_error          text
);
CREATE INDEX puhui_webhook_deliveries_due ON puhui_webhook_deliveries (next_attempt_at_ms) WHERE status = 0;
CREATE INDEX puhui_webhook_deliveries_endpoint ON puhui_webhook_deliveries (endpoint_id, number);
"#,
    ),
];

/// Applies every migration not yet applied (serialised across nodes by an advisory lock), and
/// makes sure the journal head row exists. Returns how many migrations were applied.
pub fn migrate(client: &mut Client) -> Result<usize, postgres::Error> {
    let mut tx = client.transaction()?;
    // Any constant: nodes starting together wait for each other here.
    tx.execute("SELECT pg_advisory_xact_lock(7077846117)", &[])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS puhui_migrations (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let done = tx.query_opt("SELECT 1 FROM puhui_migrations WHERE version = $1", &[version])?.is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO puhui_migrations (version) VALUES ($1)", &[version])?;
        applied += 1;
    }
    let genesis = puhui_journal::frame::genesis_hash();
    tx.execute(
        "INSERT INTO puhui_journal_head (singleton, next_seq, last_hash, last_timestamp_ns)
         VALUES (true, 0, $1, 0) ON CONFLICT DO NOTHING",
        &[&&genesis[..]],
    )?;
    tx.commit()?;
    Ok(applied)
}
