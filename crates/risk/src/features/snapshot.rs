//! The feature store's state as bytes, and back: what a restart loads instead of replaying every
//! decision ever journaled.
//!
//! ```text
//! store := magic "PHFS" | version:v | events_per_key_max:v | keys_max:v | horizon_ns:v
//!          | seed:w | check_key0:w | check_key1:w | keys_len:v | evict_cursor:v | shard × KEY_SHARDS
//! shard := keys:v | key × keys | pairs:v | pair × pairs
//! key   := placement:w | check:w | oldest_ns:w | newest_ns:w | first_seen_ns:w | last_seen_ns:w
//!          | dropped_newest_ns:w | events:v | (timestamp_ns:w | amount_minor:v | counterparty:w) × events
//! pair  := placement:w | check:w | first_ns:w | last_ns:w
//! ```
//! (`v` a varint, `w` 8 little-endian bytes: [`crate::bytes`]). A window's kept aggregates
//! (`runs`) are not saved: they are a cache, and one built afresh from the events agrees with one
//! moved along bit for bit (the module's invariant).

use std::cell::Cell;
use std::collections::VecDeque;

use crate::bytes::{put_fixed_u64, put_u64, Reader};

use super::{Event, FeatureLimits, FeatureStore, KeyId, KeyMap, KeyState, PairMap, Seen, KEY_SHARDS};

const MAGIC: &[u8; 4] = b"PHFS";
const VERSION: u64 = 1;
/// Keys or pairs [`FeatureStore::encode_snapshot_pausing`] encodes between two pauses (a few tens
/// of microseconds of work).
pub const ENCODE_PAUSE_EVERY_KEYS: usize = 256;
/// What a [`Reader`] of a snapshot names in its errors.
const SNAPSHOT: &str = "the feature store snapshot";

impl FeatureStore {
    /// Appends the store's whole state to `out` (format in this module's doc). Keys and pairs are
    /// written shard by shard, in each table's order; the order does not matter to a load
    /// (eviction breaks ties by placement, not by table layout).
    pub fn encode_snapshot(&self, out: &mut Vec<u8>) {
        self.encode_snapshot_pausing(out, || {});
    }

    /// [`FeatureStore::encode_snapshot`], calling `pause` after every [`ENCODE_PAUSE_EVERY_KEYS`]
    /// keys or pairs: a writer on a thread of its own gives way to others there (the bytes are the
    /// same).
    pub fn encode_snapshot_pausing(&self, out: &mut Vec<u8>, mut pause: impl FnMut()) {
        let mut since_pause = 0;
        let mut count = |n: usize| {
            since_pause += n;
            if since_pause >= ENCODE_PAUSE_EVERY_KEYS {
                since_pause = 0;
                pause();
            }
        };
        out.extend_from_slice(MAGIC);
        put_u64(out, VERSION);
        put_u64(out, self.limits.events_per_key_max as u64);
        put_u64(out, self.limits.keys_max as u64);
        put_u64(out, self.limits.horizon_ns);
        for v in [self.seed, self.check_keys.0, self.check_keys.1] {
            put_fixed_u64(out, v);
        }
        put_u64(out, self.keys_len as u64);
        put_u64(out, self.evict_cursor as u64);
        for (keys, pairs) in self.keys.iter().zip(self.pairs.iter()) {
            put_u64(out, keys.len() as u64);
            for (id, state) in keys {
                let events = &state.events;
                out.reserve(7 * 8 + 10 + events.len() * 26);
                for v in [
                    id.placement,
                    id.check,
                    state.oldest_ns,
                    state.newest_ns,
                    state.first_seen_ns,
                    state.last_seen_ns,
                    state.dropped_newest_ns,
                ] {
                    put_fixed_u64(out, v);
                }
                put_u64(out, events.len() as u64);
                for e in events {
                    put_fixed_u64(out, e.timestamp_ns);
                    put_u64(out, e.amount_minor);
                    put_fixed_u64(out, e.counterparty);
                }
                count(1);
            }
            put_u64(out, pairs.len() as u64);
            for (id, seen) in pairs {
                for v in [id.placement, id.check, seen.first_ns, seen.last_ns] {
                    put_fixed_u64(out, v);
                }
                count(1);
            }
        }
    }

    /// Reads a store written by [`FeatureStore::encode_snapshot`] from the front of `input` (which
    /// is advanced past it). Refuses bytes that break the store's invariants (a key in the wrong
    /// shard, more events than its bound, events out of time order, counts that do not add up)
    /// rather than deciding from them.
    pub fn decode_snapshot(input: &mut &[u8]) -> Result<FeatureStore, String> {
        let mut r = Reader::new(input, SNAPSHOT);
        if r.take(4)? != MAGIC {
            return Err("not a feature store snapshot".into());
        }
        let version = r.u64()?;
        if version != VERSION {
            return Err(format!("feature store snapshot version {version} is not supported"));
        }
        let limits = FeatureLimits {
            events_per_key_max: usize_of(r.u64()?)?,
            keys_max: usize_of(r.u64()?)?,
            horizon_ns: r.u64()?,
        };
        if limits.events_per_key_max == 0
            || limits.keys_max == 0
            || limits.events_per_key_max >= u32::MAX as usize
        {
            return Err(format!("feature store snapshot: bad limits {limits:?}"));
        }
        let seed = r.fixed_u64()?;
        let mut store = FeatureStore::with_seed(limits, seed);
        store.check_keys = (r.fixed_u64()?, r.fixed_u64()?);
        let keys_len = usize_of(r.u64()?)?;
        let evict_cursor = usize_of(r.u64()?)?;
        if evict_cursor >= KEY_SHARDS {
            return Err(format!("feature store snapshot: evict cursor {evict_cursor} is not a shard"));
        }
        let mut counted = 0usize;
        for shard in 0..KEY_SHARDS {
            let keys_in_shard = r.count(7 * 8 + 1)?;
            let mut keys = KeyMap::with_capacity_and_hasher(keys_in_shard, Default::default());
            for _ in 0..keys_in_shard {
                let id = KeyId { placement: r.fixed_u64()?, check: r.fixed_u64()? };
                let mut times = [0u64; 5];
                for t in &mut times {
                    *t = r.fixed_u64()?;
                }
                let [oldest_ns, newest_ns, first_seen_ns, last_seen_ns, dropped_newest_ns] = times;
                let n = r.count(8 + 1 + 8)?;
                if n > limits.events_per_key_max {
                    return Err(format!(
                        "feature store snapshot: a key with {n} events (bound {})",
                        limits.events_per_key_max
                    ));
                }
                let mut events = VecDeque::with_capacity(n);
                for _ in 0..n {
                    let timestamp_ns = r.fixed_u64()?;
                    let amount_minor = r.u64()?;
                    events.push_back(Event { timestamp_ns, amount_minor, counterparty: r.fixed_u64()? });
                }
                let ordered =
                    events.iter().zip(events.iter().skip(1)).all(|(a, b)| a.timestamp_ns <= b.timestamp_ns);
                let edges = (
                    events.front().map_or(0, |e| e.timestamp_ns),
                    events.back().map_or(0, |e| e.timestamp_ns),
                );
                if !ordered || edges != (oldest_ns, newest_ns) || FeatureStore::shard(id) != shard {
                    return Err(format!("feature store snapshot: a key of shard {shard} is inconsistent"));
                }
                let state = KeyState {
                    events,
                    oldest_ns,
                    newest_ns,
                    runs: Cell::new(Vec::new()),
                    first_seen_ns,
                    last_seen_ns,
                    dropped_newest_ns,
                };
                if keys.insert(id, state).is_some() {
                    return Err(format!("feature store snapshot: a key twice in shard {shard}"));
                }
            }
            let pairs_in_shard = r.count(4 * 8)?;
            let mut pairs = PairMap::with_capacity_and_hasher(pairs_in_shard, Default::default());
            for _ in 0..pairs_in_shard {
                let id = KeyId { placement: r.fixed_u64()?, check: r.fixed_u64()? };
                let seen = Seen { first_ns: r.fixed_u64()?, last_ns: r.fixed_u64()? };
                if FeatureStore::shard(id) != shard || pairs.insert(id, seen).is_some() {
                    return Err(format!("feature store snapshot: a pair of shard {shard} is inconsistent"));
                }
            }
            counted += keys.len() + pairs.len();
            store.keys[shard] = keys;
            store.pairs[shard] = pairs;
        }
        if counted != keys_len || keys_len > limits.keys_max {
            return Err(format!(
                "feature store snapshot: {counted} keys and pairs, its header says {keys_len} (bound {})",
                limits.keys_max
            ));
        }
        store.keys_len = keys_len;
        store.evict_cursor = evict_cursor;
        *input = &input[r.position()..];
        Ok(store)
    }
}

fn usize_of(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("feature store snapshot: {v} is past this machine's sizes"))
}
