-- A plain SQL double-entry ledger: the baseline puhui is compared with in docs/BENCHMARKS.md.
DROP TABLE IF EXISTS bl_transfers;
DROP TABLE IF EXISTS bl_accounts;
CREATE TABLE bl_accounts (
    id bigint PRIMARY KEY,
    debits_posted bigint NOT NULL DEFAULT 0,
    credits_posted bigint NOT NULL DEFAULT 0
);
CREATE TABLE bl_transfers (
    id bigserial PRIMARY KEY,
    debit_account_id bigint NOT NULL REFERENCES bl_accounts(id),
    credit_account_id bigint NOT NULL REFERENCES bl_accounts(id),
    amount bigint NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bl_accounts (id) SELECT g FROM generate_series(1, 10000) g;
