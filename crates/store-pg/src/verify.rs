//! `puhui journal verify --store postgres://…`: the journal in PostgreSQL checked end to end.
//!
//! In one consistent snapshot (REPEATABLE READ): every entry's sequence number and BLAKE3 chain
//! link, its decoding, its replay through the domain code (each recorded result re-decided), the
//! head (next sequence, last hash, last timestamp), the ledger invariants after replay, and then the
//! tables against the replayed ledger: every account (balances, status…), every transfer (failed
//! ones included) and every balance-history row. The first difference is named.

use puhui_journal::{codec, frame};
use puhui_ledger::Ledger;
use puhui_store::StoreError;

use crate::rows::{self, ACCOUNT_COLUMNS, TRANSFER_COLUMNS};

/// Journal entries (and table rows) read per query.
const CHUNK_ROWS: i64 = 10_000;

/// What a successful verification found.
#[derive(Debug, Clone)]
pub struct PgVerified {
    /// Journal entries checked and replayed.
    pub entries: u64,
    /// Accounts compared.
    pub accounts: usize,
    /// Transfers compared (failed ones included).
    pub transfers: usize,
    /// Balance-history rows compared.
    pub history_rows: usize,
    /// The last entry's hash (the genesis hash for an empty journal).
    pub last_hash: [u8; 32],
}

/// Why verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The database could not be read.
    Store(StoreError),
    /// The journal or the tables are not what the chain and the replay say; names the first problem.
    Bad(String),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Store(e) => write!(f, "{e}"),
            VerifyError::Bad(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for VerifyError {}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        VerifyError::Store(e)
    }
}

fn io(what: &'static str) -> impl Fn(postgres::Error) -> VerifyError {
    move |e| VerifyError::Store(StoreError::Io(format!("{what}: {}", crate::describe(&e))))
}

fn bad(why: String) -> VerifyError {
    VerifyError::Bad(why)
}

/// Verifies the journal and tables at `url` (in `schema`, if given). Changes nothing.
pub fn verify(url: &str, schema: Option<&str>) -> Result<PgVerified, VerifyError> {
    let mut client = crate::connect(url, schema)?;
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(io("starting a read"))?;
    let head = tx
        .query_one("SELECT next_seq, last_hash, last_timestamp_ns FROM puhui_journal_head", &[])
        .map_err(io("reading the journal head"))?;
    let (head_seq, head_hash, head_ts): (i64, Vec<u8>, i64) = (head.get(0), head.get(1), head.get(2));

    // The chain and the replay.
    let mut ledger = Ledger::new();
    let mut hash = frame::genesis_hash();
    let mut next: i64 = 0;
    loop {
        let chunk = tx
            .query(
                "SELECT seq, kind, body, hash FROM puhui_journal WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&next, &CHUNK_ROWS],
            )
            .map_err(io("reading the journal"))?;
        for row in &chunk {
            let (seq, kind, body, stored): (i64, i16, Vec<u8>, Vec<u8>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if seq != next {
                return Err(bad(format!("journal entry {next} is missing (next is {seq})")));
            }
            let kind = u8::try_from(kind).map_err(|_| bad(format!("entry {seq}: kind {kind}")))?;
            let expected = frame::entry_hash(&hash, seq as u64, kind, &body);
            if stored.as_slice() != expected.as_slice() {
                return Err(bad(format!("entry {seq}: hash does not chain (altered, removed or reordered)")));
            }
            hash = expected;
            let event = codec::decode(kind, &body).map_err(|e| bad(format!("entry {seq}: {e}")))?;
            event.replay(&mut ledger).map_err(|e| bad(format!("entry {seq}: {e}")))?;
            next += 1;
        }
        if (chunk.len() as i64) < CHUNK_ROWS {
            break;
        }
    }
    if head_seq != next {
        return Err(bad(format!("the head says {head_seq} entries, the journal has {next}")));
    }
    if head_hash.as_slice() != hash.as_slice() {
        return Err(bad("the head's hash is not the last entry's".into()));
    }
    // Rejected events consume timestamps too: the clock may be ahead of the last entry, never behind.
    if u64::try_from(head_ts).map_or(true, |ts| ts < ledger.last_timestamp_ns()) {
        return Err(bad(format!(
            "the head's clock {head_ts} is behind the last entry's timestamp {}",
            ledger.last_timestamp_ns()
        )));
    }
    ledger.check_invariants().map_err(|e| bad(format!("ledger invariant broken after replay: {e}")))?;

    // The tables against the replayed ledger.
    let mut accounts = 0usize;
    let mut after = String::new();
    loop {
        let chunk = tx
            .query(
                &format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM puhui_accounts WHERE id > $1 \
                     ORDER BY id COLLATE \"C\" LIMIT $2"
                ),
                &[&after, &CHUNK_ROWS],
            )
            .map_err(io("reading accounts"))?;
        for row in &chunk {
            let account = rows::account(row)?;
            if ledger.account(&account.id).as_ref() != Some(&account) {
                return Err(bad(format!("account {} differs from the journal's replay", account.id)));
            }
            after = account.id.to_string();
            accounts += 1;
        }
        if (chunk.len() as i64) < CHUNK_ROWS {
            break;
        }
    }
    if accounts != ledger.accounts_count() {
        return Err(bad(format!("{accounts} account rows, the journal has {}", ledger.accounts_count())));
    }
    let mut transfers = 0usize;
    after.clear();
    loop {
        let chunk = tx
            .query(
                &format!(
                    "SELECT {TRANSFER_COLUMNS} FROM puhui_transfers WHERE id > $1 \
                     ORDER BY id COLLATE \"C\" LIMIT $2"
                ),
                &[&after, &CHUNK_ROWS],
            )
            .map_err(io("reading transfers"))?;
        for row in &chunk {
            let t = rows::transfer(row)?;
            if ledger.transfer(&t.request.id).as_ref() != Some(&t) {
                return Err(bad(format!("transfer {} differs from the journal's replay", t.request.id)));
            }
            after = t.request.id.to_string();
            transfers += 1;
        }
        if (chunk.len() as i64) < CHUNK_ROWS {
            break;
        }
    }
    if transfers != ledger.transfers_count() {
        return Err(bad(format!("{transfers} transfer rows, the journal has {}", ledger.transfers_count())));
    }
    let mut history_rows = 0usize;
    for index in 0..ledger.accounts_count() as u32 {
        let id = ledger.account_id_at(index).to_string();
        let rows = tx
            .query(
                "SELECT timestamp_ns, transfer_id, expiry, debits_pending, debits_posted, credits_pending, \
                 credits_posted FROM puhui_account_history WHERE account_id = $1 ORDER BY timestamp_ns",
                &[&id],
            )
            .map_err(io("reading balance history"))?;
        let expected: Vec<_> = ledger.history_at(index).collect();
        if rows.len() != expected.len() {
            return Err(bad(format!(
                "account {id}: {} history rows, the journal has {}",
                rows.len(),
                expected.len()
            )));
        }
        for (row, point) in rows.iter().zip(&expected) {
            let ts: i64 = row.get(0);
            let transfer: &str = row.get(1);
            let same = u64::try_from(ts).ok() == Some(point.timestamp_ns)
                && transfer == ledger.transfer_id_at(point.transfer).as_str()
                && row.get::<_, bool>(2) == point.expiry
                && rows::balances(row, 3) == point.balances;
            if !same {
                return Err(bad(format!("account {id}: history at {ts} differs from the journal's replay")));
            }
        }
        history_rows += rows.len();
    }
    let total: i64 = tx
        .query_one("SELECT count(*) FROM puhui_account_history", &[])
        .map_err(io("counting balance history"))?
        .get(0);
    if total as usize != history_rows {
        return Err(bad(format!("{total} history rows, {history_rows} belong to known accounts")));
    }
    tx.commit().map_err(io("ending the read"))?;
    Ok(PgVerified { entries: next as u64, accounts, transfers, history_rows, last_hash: hash })
}
