-- One transfer per transaction: two balance updates (locks in id order) and one insert.
\set a random(1, 10000)
\set b random(1, 10000)
\set amount random(1, 100000)
BEGIN;
UPDATE bl_accounts SET debits_posted = debits_posted + :amount WHERE id = least(:a, :b) AND :a <> :b;
UPDATE bl_accounts SET credits_posted = credits_posted + :amount WHERE id = greatest(:a, :b) AND :a <> :b;
INSERT INTO bl_transfers (debit_account_id, credit_account_id, amount) SELECT :a, :b, :amount WHERE :a <> :b;
COMMIT;
