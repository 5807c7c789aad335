//! # puhui-risk-redis: velocity features shared by several nodes, in Redis
//!
//! [`RedisFeatures`] implements [`puhui_risk::SharedFeatures`]: with `puhui serve --redis URL`
//! every node decides from the same windows, whichever node saw the events.
//!
//! Key design decision: Redis stores events, not counters. Each entity (payer, payee, device, IP,
//! attribute value) is a sorted set of its events (score = timestamp, member = timestamp, amount,
//! counterparty hash and a 64-bit id derived from the decision id); each "first" side of a pair
//! (payer → payees, account → devices) is a sorted set of the other side (score = last seen).
//! A decision loads, in one pipelined round trip, the events its rulesets read (each entity's
//! longest window, the newest `events_per_key_max`) and the two pair facts into a fresh local
//! [`FeatureStore`], and the engine computes on it: counts, sums, distinct counterparties and
//! z-scores are the very code of the embedded path, not a second implementation in Lua.
//!
//! Writes are one Lua script per observed event (EVALSHA; atomic, so concurrent nodes lose
//! nothing), sent without waiting for its reply: the reply is read with the next load's, on the
//! same connection, which Redis serves in order, so a node's next decision sees its last event
//! and costs one round trip, not two (other nodes see the event once Redis has run the script,
//! microseconds after the decision). A NOSCRIPT reply (Redis restarted) loads the script, sends
//! the record again and repeats the load that overtook it. The script: ZADD into every entity's
//! set, ZREMRANGEBYSCORE for events older than the horizon, ZREMRANGEBYRANK beyond
//! `events_per_key_max`, the pairs, and PEXPIRE = horizon on every key touched, so memory is
//! bounded by the TTLs and the per-key bounds. Member ids derive from the decision id, so a retried
//! record counts once.
//!
//! Keys: `<prefix><tag>:<entity key>` with the tenant-scoped ids unchanged (`puhui:f:payer:acme:alice`,
//! `puhui:f:pp:acme:alice` for alice's payees); tags `payer payee device ip attr pp ad`. A script
//! touches several keys, so Redis Cluster is not supported (one primary, with replicas, is).
//!
//! Precision: a sorted-set score is a double, exact to 256 ns at today's epoch in nanoseconds, so
//! reads fetch a few microseconds beyond the window on both sides and the exact `(t − w, t]` cut
//! is made locally on the nanosecond timestamps carried in the members.
//!
//! Differences from the embedded store, by design: `WindowStats::saturated` is not reported (the
//! engine does not read it); a pair unseen for the horizon is forgotten (its key expires); the
//! per-key pair bound drops the least recently seen pairs.
#![deny(missing_docs)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use puhui_risk::{
    FeatureLimits, FeatureQuery, FeatureStore, Namespace, Observation, SharedError, SharedErrorKind,
    SharedFeatures,
};

/// The default key prefix.
pub const KEY_PREFIX_DEFAULT: &str = "puhui:f:";
/// Bytes of one event member: timestamp, amount, counterparty hash, id (u64 each, big-endian).
pub const MEMBER_BYTES: usize = 32;
/// Most keys one record touches (payer, payee, device, IP, attributes, two pairs): bounds the
/// script's work.
pub const RECORD_KEYS_MAX: usize = 64;
/// How far beyond a window's edges a read reaches (a double score is exact to 256 ns at today's
/// epoch; the exact cut is made locally).
const SCORE_SLACK_NS: u64 = 4_096;

/// The record script: one observed event into every entity's set and every pair set, trimmed and
/// expiring, atomically.
const RECORD_LUA: &str = r#"
-- KEYS[1..n]: entity event sets; KEYS[n+1..]: pair sets.
-- ARGV: n, score, horizon cutoff score, events per key, ttl ms, pairs per key, then one member per key.
local n = tonumber(ARGV[1])
local keep_events = tonumber(ARGV[4])
local keep_pairs = tonumber(ARGV[6])
for i = 1, #KEYS do
  local key = KEYS[i]
  if i <= n then
    redis.call('ZADD', key, ARGV[2], ARGV[6 + i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[3])
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep_events + 1))
  else
    redis.call('ZADD', key, 'GT', ARGV[2], ARGV[6 + i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[3])
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep_pairs + 1))
  end
  redis.call('PEXPIRE', key, ARGV[5])
end
return #KEYS
"#;

/// How to reach Redis and how much to keep there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// Prefix of every key (`puhui:f:`); several deployments can share one Redis with others.
    pub key_prefix: String,
    /// Most time to open a connection (also bounded by the decision's budget when loading).
    pub connect_timeout_ms: u64,
    /// Most time sending a record may take (after the decision, under the node's risk lock; its
    /// reply is read with the next load, within that decision's budget).
    pub record_timeout_ms: u64,
    /// After a failed connection attempt, calls fail at once for this long (no connect storm, no
    /// decision waits for a dead server more than once per period).
    pub reconnect_backoff_ms: u64,
    /// Events kept per entity; events older than `horizon_ns` are dropped and keys expire after
    /// it (`keys_max` is not used: TTLs bound the key count).
    pub limits: FeatureLimits,
    /// Pairs kept per payer (payees) and per account (devices); the least recently seen go first.
    pub pairs_per_key_max: usize,
}

impl RedisConfig {
    /// The defaults for `url`: prefix `puhui:f:`, connect 200 ms, record 50 ms, back-off 1 s, the
    /// embedded store's limits (1,024 events per key, 30-day horizon), 1,024 pairs per key.
    pub fn new(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.to_string(),
            key_prefix: KEY_PREFIX_DEFAULT.to_string(),
            connect_timeout_ms: 200,
            record_timeout_ms: 50,
            reconnect_backoff_ms: 1_000,
            limits: FeatureLimits::default(),
            pairs_per_key_max: 1_024,
        }
    }
}

struct Link {
    connection: Option<redis::Connection>,
    /// No connection attempt before this instant (set after a failed one).
    retry_after: Option<Instant>,
    /// Records sent on `connection` whose replies are not read yet, oldest first (at most
    /// [`RECORDS_UNREAD_MAX`]; lost with the connection).
    unread: std::collections::VecDeque<SentRecord>,
}

/// A record sent without reading its reply: what checking the reply and sending it again needs.
struct SentRecord {
    /// Keys the script must report touched.
    keys: usize,
    /// The packed EVALSHA command.
    packed: Vec<u8>,
}

/// Most records sent and not yet answered; one more reads the oldest replies first. A node
/// alternates loads and records, so there is rarely more than one.
pub const RECORDS_UNREAD_MAX: usize = 64;

/// Velocity features in Redis (one connection, used under a mutex: a node decides under one lock
/// anyway).
pub struct RedisFeatures {
    config: RedisConfig,
    client: redis::Client,
    record_script: redis::Script,
    link: Mutex<Link>,
    /// Last failure logged, to log at most one warning per second.
    last_warning: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisFeatures")
            .field("addr", &info.addr.to_string())
            .field("key_prefix", &self.config.key_prefix)
            .finish()
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the Redis configuration is not usable: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn error(kind: SharedErrorKind, context: &'static str, detail: impl ToString) -> SharedError {
    SharedError { kind, context, detail: detail.to_string() }
}

fn classify(e: &redis::RedisError, context: &'static str) -> SharedError {
    let kind = if e.is_timeout() {
        SharedErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        SharedErrorKind::Unavailable
    } else {
        SharedErrorKind::Protocol
    };
    error(kind, context, e)
}

/// A counterparty's hash, the same on every node (the first 8 bytes of its BLAKE3).
pub fn counterparty_hash(counterparty: &str) -> u64 {
    let hash = blake3::hash(counterparty.as_bytes());
    u64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// One event as a sorted-set member.
pub fn encode_member(timestamp_ns: u64, amount_minor: u64, counterparty: u64, id: u64) -> [u8; MEMBER_BYTES] {
    let mut member = [0u8; MEMBER_BYTES];
    member[0..8].copy_from_slice(&timestamp_ns.to_be_bytes());
    member[8..16].copy_from_slice(&amount_minor.to_be_bytes());
    member[16..24].copy_from_slice(&counterparty.to_be_bytes());
    member[24..32].copy_from_slice(&id.to_be_bytes());
    member
}

/// `(timestamp_ns, amount_minor, counterparty hash)` of a member; `None` if it is not one of ours.
pub fn decode_member(member: &[u8]) -> Option<(u64, u64, u64)> {
    if member.len() != MEMBER_BYTES {
        return None;
    }
    let word = |i: usize| u64::from_be_bytes(member[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some((word(0), word(1), word(2)))
}

fn tag(namespace: Namespace) -> &'static str {
    match namespace {
        Namespace::Payer => "payer",
        Namespace::Payee => "payee",
        Namespace::Device => "device",
        Namespace::Ip => "ip",
        Namespace::Attribute => "attr",
        Namespace::PayerPayee => "pp",
        Namespace::AccountDevice => "ad",
    }
}

/// A duration for a socket timeout: never zero (zero means "no timeout" to the OS).
fn socket_timeout(ns: u64) -> Duration {
    Duration::from_nanos(ns.max(1_000))
}

impl RedisFeatures {
    /// A backend for `config` (parses the URL; connects lazily, on first use).
    pub fn new(config: RedisConfig) -> Result<RedisFeatures, ConfigError> {
        if config.limits.events_per_key_max == 0 || config.pairs_per_key_max == 0 {
            return Err(ConfigError("events and pairs per key must be positive".into()));
        }
        if config.limits.horizon_ns < 1_000_000 {
            return Err(ConfigError("the horizon must be at least 1 ms (it is the keys' TTL)".into()));
        }
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| ConfigError(format!("{}: {e}", config.url)))?;
        Ok(RedisFeatures {
            config,
            client,
            record_script: redis::Script::new(RECORD_LUA),
            link: Mutex::new(Link { connection: None, retry_after: None, unread: Default::default() }),
            last_warning: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The Redis key of an entity (or of the first side of a pair).
    pub fn key(&self, namespace: Namespace, key: &str) -> String {
        let tag = tag(namespace);
        let mut out = String::with_capacity(self.config.key_prefix.len() + tag.len() + 1 + key.len());
        out.push_str(&self.config.key_prefix);
        out.push_str(tag);
        out.push(':');
        out.push_str(key);
        out
    }

    /// Checks that Redis answers (PING) within `timeout_ms`.
    pub fn ping(&self, timeout_ms: u64) -> Result<(), SharedError> {
        self.with_connection("pinging", timeout_ms.saturating_mul(1_000_000), |c, unread| {
            let again = self.read_unread(c, unread)?;
            self.resend(c, again)?;
            redis::cmd("PING").query::<String>(c).map(|_| ())
        })
    }

    /// Runs `op` on the connection with read and write timeouts of `timeout_ns`, connecting first
    /// if needed. A connection that failed (a timeout leaves a reply in flight) is dropped, never
    /// reused; a failed connect blocks further attempts for the back-off period.
    fn with_connection<T>(
        &self,
        context: &'static str,
        timeout_ns: u64,
        op: impl FnOnce(
            &mut redis::Connection,
            &mut std::collections::VecDeque<SentRecord>,
        ) -> redis::RedisResult<T>,
    ) -> Result<T, SharedError> {
        let started = Instant::now();
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if link.connection.is_none() {
            if let Some(at) = link.retry_after {
                if Instant::now() < at {
                    return Err(error(
                        SharedErrorKind::Unavailable,
                        context,
                        "the last connection attempt failed; backing off",
                    ));
                }
            }
            let connect_ns = timeout_ns.min(self.config.connect_timeout_ms.saturating_mul(1_000_000));
            match self.client.get_connection_with_timeout(socket_timeout(connect_ns)) {
                Ok(c) => {
                    link.connection = Some(c);
                    link.retry_after = None;
                }
                Err(e) => {
                    link.retry_after =
                        Some(Instant::now() + Duration::from_millis(self.config.reconnect_backoff_ms));
                    return Err(classify(&e, "connecting"));
                }
            }
        }
        let remaining_ns = timeout_ns.saturating_sub(started.elapsed().as_nanos() as u64);
        if remaining_ns == 0 {
            return Err(error(SharedErrorKind::Timeout, context, "the time ran out while connecting"));
        }
        let Link { connection, unread, .. } = &mut *link;
        let connection = connection.as_mut().expect("connected above");
        let timeout = Some(socket_timeout(remaining_ns));
        let result = connection
            .set_read_timeout(timeout)
            .and_then(|_| connection.set_write_timeout(timeout))
            .and_then(|_| op(connection, unread));
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_timeout()
                    || e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                {
                    link.connection = None;
                    if !link.unread.is_empty() {
                        // Sent, maybe run: their replies cannot be read any more.
                        metrics::counter!("puhui_shared_features_records_unconfirmed_total")
                            .increment(link.unread.len() as u64);
                        link.unread.clear();
                    }
                }
                Err(classify(&e, context))
            }
        }
    }

    /// Logs a failure (at most one warning per second) and counts it.
    fn report(&self, operation: &'static str, e: &SharedError) {
        let kind = match e.kind {
            SharedErrorKind::Timeout => "timeout",
            SharedErrorKind::Unavailable => "unavailable",
            SharedErrorKind::Protocol => "protocol",
        };
        metrics::counter!("puhui_shared_features_errors_total", "operation" => operation, "kind" => kind)
            .increment(1);
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(operation, error = %e, "shared velocity features (Redis) failed; the decision is degraded or its event missing from the windows");
        }
    }

    fn load_inner(&self, query: &FeatureQuery<'_>, timeout_ns: u64) -> Result<FeatureStore, SharedError> {
        let limits = self.config.limits;
        let mut pipe = redis::pipe();
        for read in &query.windows {
            let newest = query.now_ns.saturating_add(SCORE_SLACK_NS);
            let oldest = query.now_ns.saturating_sub(read.window_ns).saturating_sub(SCORE_SLACK_NS);
            pipe.cmd("ZRANGE")
                .arg(self.key(read.namespace, &read.key))
                .arg(newest)
                .arg(oldest)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(limits.events_per_key_max);
        }
        for (namespace, a, b) in &query.pairs {
            pipe.cmd("ZSCORE").arg(self.key(*namespace, a)).arg(*b);
        }
        let packed = pipe.get_packed_pipeline();
        let commands = query.windows.len() + query.pairs.len();
        let replies: Vec<redis::Value> =
            self.with_connection("loading features", timeout_ns, |c, unread| {
                // The load goes out first; the replies of earlier records come back ahead of its own.
                c.send_packed_command(&packed)?;
                let again = self.read_unread(c, unread)?;
                let mut replies = receive(c, commands)?;
                if !again.is_empty() {
                    // Records that ran only now, after this load: load again to see them.
                    self.resend(c, again)?;
                    c.send_packed_command(&packed)?;
                    replies = receive(c, commands)?;
                }
                Ok(replies)
            })?;
        if replies.len() != query.windows.len() + query.pairs.len() {
            return Err(error(
                SharedErrorKind::Protocol,
                "loading features",
                format!("{} replies to {} commands", replies.len(), query.windows.len() + query.pairs.len()),
            ));
        }
        let keys_max = (query.windows.len() + query.pairs.len()).max(1);
        let mut store = FeatureStore::new(FeatureLimits { keys_max, ..limits });
        let mut malformed = 0u64;
        for (read, reply) in query.windows.iter().zip(&replies) {
            let members: Vec<Vec<u8>> = redis::from_redis_value(reply)
                .map_err(|e| error(SharedErrorKind::Protocol, "loading features", e))?;
            // Newest first from Redis; oldest first into the store (appends, no shifting).
            for member in members.iter().rev() {
                match decode_member(member) {
                    Some((t, amount, cp)) => store.record_hashed(read.namespace, &read.key, t, amount, cp),
                    None => malformed += 1,
                }
            }
        }
        for ((namespace, a, b), reply) in query.pairs.iter().zip(&replies[query.windows.len()..]) {
            let score: Option<f64> = redis::from_redis_value(reply)
                .map_err(|e| error(SharedErrorKind::Protocol, "loading features", e))?;
            if let Some(score) = score {
                store.record_pair(*namespace, a, b, score.max(0.0) as u64);
            }
        }
        if malformed > 0 {
            metrics::counter!("puhui_shared_features_malformed_members_total").increment(malformed);
        }
        Ok(store)
    }

    fn record_inner(&self, observation: &Observation<'_>) -> Result<(), SharedError> {
        let keys = observation.events.len() + observation.pairs.len();
        if keys > RECORD_KEYS_MAX {
            return Err(error(
                SharedErrorKind::Protocol,
                "recording an event",
                format!("{keys} keys; at most {RECORD_KEYS_MAX}"),
            ));
        }
        let limits = self.config.limits;
        let id = counterparty_hash(observation.id);
        let t = observation.timestamp_ns;
        let cutoff = t.saturating_sub(limits.horizon_ns).saturating_sub(SCORE_SLACK_NS);
        let ttl_ms = (limits.horizon_ns / 1_000_000).max(1);
        let mut invocation = redis::cmd("EVALSHA");
        invocation.arg(self.record_script.get_hash()).arg(keys);
        for (namespace, key, _) in &observation.events {
            invocation.arg(self.key(*namespace, key));
        }
        for (namespace, a, _) in &observation.pairs {
            invocation.arg(self.key(*namespace, a));
        }
        invocation
            .arg(observation.events.len())
            .arg(t)
            .arg(cutoff)
            .arg(limits.events_per_key_max)
            .arg(ttl_ms)
            .arg(self.config.pairs_per_key_max);
        for (_, _, counterparty) in &observation.events {
            invocation
                .arg(&encode_member(t, observation.amount_minor, counterparty_hash(counterparty), id)[..]);
        }
        for (_, _, b) in &observation.pairs {
            invocation.arg(*b);
        }
        let packed = invocation.get_packed_command();
        let timeout_ns = self.config.record_timeout_ms.saturating_mul(1_000_000);
        self.with_connection("recording an event", timeout_ns, |c, unread| {
            if unread.len() >= RECORDS_UNREAD_MAX {
                let again = self.read_unread(c, unread)?;
                self.resend(c, again)?;
            }
            c.send_packed_command(&packed)?;
            unread.push_back(SentRecord { keys, packed });
            Ok(())
        })
    }

    /// Reads the replies of the records sent and not yet answered, oldest first, and returns
    /// those Redis could not run for want of the script (NOSCRIPT: it lost its script cache), to
    /// send again with [`RedisFeatures::resend`] once every reply in flight is read. Other failed
    /// records are counted and logged (the decision stands, its event missing from the shared
    /// windows), not returned.
    fn read_unread(
        &self,
        c: &mut redis::Connection,
        unread: &mut std::collections::VecDeque<SentRecord>,
    ) -> redis::RedisResult<Vec<SentRecord>> {
        let mut again = Vec::new();
        while let Some(sent) = unread.pop_front() {
            let reply = match c.recv_response() {
                Ok(reply) => reply,
                Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                    again.push(sent);
                    continue;
                }
                // The connection is unusable: the caller drops it (and the replies still unread).
                Err(e) => {
                    unread.push_front(sent);
                    return Err(e);
                }
            };
            let problem = match reply {
                redis::Value::Int(touched) if touched == sent.keys as i64 => None,
                redis::Value::Int(touched) => {
                    Some(format!("the script touched {touched} keys of {}", sent.keys))
                }
                redis::Value::ServerError(e) if e.code() == "NOSCRIPT" => {
                    again.push(sent);
                    None
                }
                redis::Value::ServerError(e) => Some(format!("{}: {}", e.code(), e.details().unwrap_or(""))),
                other => Some(format!("unexpected reply {other:?}")),
            };
            if let Some(problem) = problem {
                self.report("record", &error(SharedErrorKind::Protocol, "recording an event", problem));
            }
        }
        Ok(again)
    }

    /// Loads the record script and sends `records` again, in order, reading each reply (nothing
    /// else may be in flight on `c`).
    fn resend(&self, c: &mut redis::Connection, records: Vec<SentRecord>) -> redis::RedisResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.record_script.prepare_invoke().load(c)?;
        for sent in records {
            c.send_packed_command(&sent.packed)?;
            let mut one = std::collections::VecDeque::from([sent]);
            if !self.read_unread(c, &mut one)?.is_empty() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::NoScriptError,
                    "the record script vanished again right after it was loaded",
                )));
            }
        }
        Ok(())
    }
}

impl RedisFeatures {
    /// Reads the replies of the records sent and not yet confirmed (within the record timeout),
    /// sending again any Redis could not run for want of its script. Without it, records sent
    /// just before the connection closes can be lost: a socket closed with replies unread is
    /// reset, and Redis drops the commands it had not read yet.
    pub fn confirm_records(&self) -> Result<(), SharedError> {
        let pending = {
            let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
            link.connection.is_some() && !link.unread.is_empty()
        };
        if !pending {
            return Ok(());
        }
        let timeout_ns = self.config.record_timeout_ms.saturating_mul(1_000_000);
        self.with_connection("confirming recorded events", timeout_ns, |c, unread| {
            let again = self.read_unread(c, unread)?;
            self.resend(c, again)
        })
    }
}

impl Drop for RedisFeatures {
    fn drop(&mut self) {
        if let Err(e) = self.confirm_records() {
            self.report("record", &e);
        }
    }
}

/// Reads `count` replies (a pipeline's, in order).
fn receive(c: &mut redis::Connection, count: usize) -> redis::RedisResult<Vec<redis::Value>> {
    (0..count).map(|_| c.recv_response()).collect()
}

impl SharedFeatures for RedisFeatures {
    fn load(&self, query: &FeatureQuery<'_>, timeout_ns: u64) -> Result<FeatureStore, SharedError> {
        let result = self.load_inner(query, timeout_ns);
        if let Err(e) = &result {
            self.report("load", e);
        }
        result
    }

    fn confirm(&self) -> Result<(), SharedError> {
        self.confirm_records()
    }

    fn record(&self, observation: &Observation<'_>) -> Result<(), SharedError> {
        let result = self.record_inner(observation);
        if let Err(e) = &result {
            self.report("record", e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_foreign_members_are_refused() {
        let m = encode_member(1_750_000_000_123_456_789, 12_345, counterparty_hash("t:bob"), 7);
        assert_eq!(decode_member(&m), Some((1_750_000_000_123_456_789, 12_345, counterparty_hash("t:bob"))));
        assert_eq!(decode_member(b"not ours"), None);
        assert_eq!(decode_member(&[0u8; 33]), None);
    }

    #[test]
    fn keys_keep_tenant_scoped_ids_unchanged() {
        let f = RedisFeatures::new(RedisConfig::new("redis://127.0.0.1:1")).unwrap();
        assert_eq!(f.key(Namespace::Payer, "acme:alice"), "puhui:f:payer:acme:alice");
        assert_eq!(f.key(Namespace::Attribute, "country=KE"), "puhui:f:attr:country=KE");
        assert_eq!(f.key(Namespace::PayerPayee, "acme:alice"), "puhui:f:pp:acme:alice");
    }

    #[test]
    fn a_bad_url_is_a_config_error() {
        assert!(RedisFeatures::new(RedisConfig::new("not a url")).is_err());
    }
}
