//! Every limit of the HTTP API, in one place (the README's limits table lists them too).

/// Largest request body (a full batch of 8,189 transfers with some metadata fits).
pub const BODY_BYTES_MAX: usize = 8 << 20;
/// Most transfers in `POST /v1/transfers/batch` (the ledger's batch limit).
pub const BATCH_TRANSFERS_MAX: usize = puhui_ledger::BATCH_EVENTS_MAX;
/// Largest metadata object, serialised as compact JSON.
pub const METADATA_BYTES_MAX: usize = puhui_ledger::METADATA_BYTES_MAX;
/// Largest amount (and account limit) in minor units: 2^63 − 1, the `int64` the OpenAPI document
/// promises (so a client with signed 64-bit integers reads every amount back). The ledger's own
/// arithmetic is checked unsigned 64-bit; sums beyond it are the `overflow` result.
pub const AMOUNT_MINOR_MAX: u64 = i64::MAX as u64;
/// Longest client-supplied id.
pub const CLIENT_ID_BYTES_MAX: usize = 64;
/// Default and largest page size of list endpoints.
pub const PAGE_LIMIT_DEFAULT: usize = 10;
/// Largest page size.
pub const PAGE_LIMIT_MAX: usize = 100;
/// Longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// Most remembered idempotency keys (all tenants); beyond it the oldest are forgotten early.
pub const IDEMPOTENCY_KEYS_MAX: usize = 1_000_000;
/// Most requests being served at once; beyond it the API answers 503.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 4_096;
/// Default sustained requests per second per API key (`--rate-limit`).
pub const RATE_LIMIT_PER_KEY_DEFAULT: u32 = 100_000;
/// Most tenants.
pub const TENANTS_MAX: usize = 10_000;
/// Most live API keys per tenant.
pub const KEYS_PER_TENANT_MAX: usize = 16;
/// Longest a request body may take to arrive (a slow sender would otherwise hold an in-flight slot).
pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Longest request URI (path and query), in bytes: 414 `uri_too_long` beyond (a JSON error from
/// the API; past hyper's own 64 KiB hyper answers 414 with an empty body).
pub const URI_BYTES_MAX: usize = 8 << 10;
/// Most header bytes in a request (names and values): 431 `headers_too_large` beyond (past hyper's
/// own limits — 100 headers, ~400 KiB — hyper answers 431 with an empty body).
pub const HEADER_BYTES_MAX: usize = 32 << 10;
/// Most "request failed" (5xx) log lines a second; the rest are counted and reported in one line
/// when the next second's first failure is logged (an overload answering tens of thousands of
/// 503s a second would otherwise write as many lines).
pub const FAILED_REQUEST_LOGS_PER_SECOND_MAX: u64 = 20;
