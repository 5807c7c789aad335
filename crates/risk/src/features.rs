//! Velocity features: what an entity (a payer, a payee, a device, an IP, any attribute value) did
//! in sliding windows before the event being decided.
//!
//! Point-in-time rule: [`FeatureStore::window`] reads only events recorded before it is called, and
//! the caller records the event ([`FeatureStore::record`]) after deciding it. The same code runs
//! online and in backtests, so a backtest sees exactly what the online decision saw.
//!
//! Window rule: at decision time `t`, a window of length `w` holds the events with timestamps in
//! `(t − w, t]`: an event exactly `w` old is out, one nanosecond younger is in.
//!
//! Memory is bounded twice ([`FeatureLimits`]): each key keeps at most `events_per_key_max` events
//! (the oldest go first; a window that would need more reports `saturated`, its count a lower bound),
//! and the store keeps at most `keys_max` keys (beyond it the least recently seen are evicted:
//! a tenth of all keys in a small store, a tenth of one shard at a time in turn in a large one,
//! `FeatureStore::evict`). Events older than the longest window in use are pruned as keys are touched.
//!
//! Windows are not rescanned per decision: each key keeps, for up to `agg::RUNS_PER_KEY_MAX` window
//! lengths, the aggregates of the events in its window at the last query, and moves them by the
//! events that entered or left since (`agg`). The figures depend only on the events in the window,
//! so they are the same bit for bit whatever was asked before (a backtest, a restarted node). A
//! kept window costs 96 bytes plus, for distinct counts, a map of one entry per counterparty in it
//! (at most `events_per_key_max`): at most about what the key's events cost.
//!
//! A store can be saved and loaded ([`FeatureStore::encode_snapshot`],
//! [`FeatureStore::decode_snapshot`]): a loaded store answers and evicts exactly as the one it was
//! saved from would (its keys' check hash keys travel with it; eviction breaks ties by placement).

use std::cell::Cell;
use std::collections::VecDeque;

use foldhash::fast::FixedState;
use hashbrown::HashMap;

mod agg;
mod snapshot;
pub use snapshot::ENCODE_PAUSE_EVERY_KEYS;

/// Bounds on the feature store's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureLimits {
    /// Events kept per key (less than `u32::MAX`: windows keep 32-bit positions).
    pub events_per_key_max: usize,
    /// Keys kept in total (all namespaces).
    pub keys_max: usize,
    /// Events older than this are pruned (the longest window any rule may ask for).
    pub horizon_ns: u64,
}

impl Default for FeatureLimits {
    fn default() -> Self {
        FeatureLimits {
            events_per_key_max: 1_024,
            keys_max: 1_000_000,
            horizon_ns: 30 * 24 * 3_600 * 1_000_000_000,
        }
    }
}

/// Who a feature is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// The paying account.
    Payer,
    /// The receiving account.
    Payee,
    /// A device id.
    Device,
    /// An IP address.
    Ip,
    /// Any other attribute (its name is part of the key).
    Attribute,
    /// A (payer, payee) pair: "is this a new payee for this payer?".
    PayerPayee,
    /// An (account, device) pair: "is this a new device for this account?".
    AccountDevice,
}

/// One event as the feature store keeps it (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    timestamp_ns: u64,
    amount_minor: u64,
    /// Hash of the counterparty, for distinct counts.
    counterparty: u64,
}

/// 96 bytes; a slot of the key maps, with its [`KeyId`], 112.
struct KeyState {
    /// In time order.
    events: VecDeque<Event>,
    /// The timestamp of `events[0]` (0 if none), kept here so that the horizon check of a record
    /// does not read the oldest event, often in memory no longer cached.
    oldest_ns: u64,
    /// The newest timestamp in `events` (0 if none): a window ending at or after it ends with the
    /// newest event, known without reading it.
    newest_ns: u64,
    /// The aggregates of the windows asked about, moved incrementally (a cache: taken out while a
    /// query moves them, so reads through `&self` can keep them up to date).
    runs: Cell<Vec<agg::Run>>,
    first_seen_ns: u64,
    last_seen_ns: u64,
    /// Events dropped because of `events_per_key_max` (windows reaching back that far saturate).
    dropped_newest_ns: u64,
}

/// The aggregates of one key over one window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    /// Events in the window.
    pub count: u64,
    /// Sum of their amounts (saturating).
    pub sum_minor: u64,
    /// Largest amount.
    pub max_minor: u64,
    /// Distinct counterparties.
    pub distinct_counterparties: u64,
    /// Mean amount (0 if none).
    pub mean_minor: f64,
    /// Population standard deviation of the amounts (0 if fewer than two).
    pub stddev_minor: f64,
    /// The window reaches past events dropped by the per-key bound: `count` is a lower bound.
    pub saturated: bool,
    /// When its oldest event happened (`None`: no event in the window).
    pub oldest_ns: Option<u64>,
    /// When its newest event happened (`None`: no event in the window).
    pub newest_ns: Option<u64>,
}

impl WindowStats {
    /// How many standard deviations `amount_minor` is above this window's mean. With fewer than two
    /// events it is 0 (a first transaction is not an outlier by itself); the spread is floored at 1 %
    /// of the mean (and one minor unit), so a history of identical amounts still flags a jump.
    pub fn z_score(&self, amount_minor: u64) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let spread = self.stddev_minor.max(self.mean_minor * 0.01).max(1.0);
        (amount_minor as f64 - self.mean_minor) / spread
    }
}

/// One window of a [`FeatureStore::windows`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowQuery {
    /// The window's length: events in `(now − window_ns, now]`.
    pub window_ns: u64,
    /// Whether to count distinct counterparties (a count per counterparty kept for the window);
    /// without it `distinct_counterparties` is 0.
    pub distinct: bool,
    /// Whether to give the window's oldest and newest event times (`oldest_ns`, `newest_ns`;
    /// without it both are `None`).
    pub edges: bool,
}

/// Shards of the key map. Each grows, and rehashes, on its own: a map of one table paused the
/// controller (and so every decision) for as long as a rehash of all its keys took — ~50–100 ms
/// at 100k–200k payer/payee pairs with fresh pages on this project's VMs, and it would be seconds
/// near `keys_max`. With 256 shards a growth step moves 1/256 of the keys.
const KEY_SHARDS: usize = 256;

/// From this many keys on, the key bound is kept one shard at a time ([`FeatureStore::evict`]):
/// below it a pass over all keys is short (~1 ms) and stays exact.
const EVICT_BY_SHARD_FROM_KEYS: usize = 64 * KEY_SHARDS;

/// A shard is trimmed on its own only if it holds at least this many keys (its least recently seen
/// tenth is then never the key just recorded); a smaller one is passed over.
const EVICT_SHARD_KEYS_MIN: usize = 16;

/// A key's identity in the store: two independently keyed hashes of its namespace and text (see
/// [`FeatureStore::key_id`]). Kept instead of the text, so that a lookup compares 16 bytes in the
/// table's own slot instead of following a pointer to a string elsewhere in memory (with the
/// tenant's prefix, keys are 40–90 bytes, and that second cache miss per lookup cost ~20 % of a
/// decision over a few hundred thousand keys), and a pair lookup builds no string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyId {
    /// foldhash: where the key sits (its shard and its slot).
    placement: u64,
    /// SipHash-1-3 under a random key: what tells two keys of the same placement apart. Two keys
    /// are merged only if both hashes collide: by chance ~n²/2¹²⁹ over n keys; by design, not
    /// without the process's random SipHash key.
    check: u64,
}

impl std::hash::Hash for KeyId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.placement);
    }
}

const _: () = assert!(std::mem::size_of::<KeyState>() == 96);

type KeyMap = HashMap<KeyId, KeyState, std::hash::BuildHasherDefault<agg::Prehashed>>;

/// When a pair (payer-payee, account-device) was first and last seen: all a pair is asked about,
/// so pairs keep 32 bytes a slot in tables of their own instead of a key's 120 (they are most of
/// the keys: every payee a payer ever paid).
#[derive(Debug, Clone, Copy)]
struct Seen {
    first_ns: u64,
    last_ns: u64,
}

type PairMap = HashMap<KeyId, Seen, std::hash::BuildHasherDefault<agg::Prehashed>>;

/// Velocity state for every entity, bounded.
pub struct FeatureStore {
    limits: FeatureLimits,
    /// [`KEY_SHARDS`] maps; a key's shard is [`FeatureStore::shard`].
    keys: Box<[KeyMap]>,
    /// The pairs ([`Namespace::PayerPayee`], [`Namespace::AccountDevice`]), sharded the same way.
    pairs: Box<[PairMap]>,
    /// Keys and pairs in all shards (bounded together by `keys_max`).
    keys_len: usize,
    /// The shard [`FeatureStore::evict`] trims next.
    evict_cursor: usize,
    /// The keyed hash that places keys in shards and tables, seeded by `seed`: which keys share a
    /// shard, and so which an eviction drops, follows from it.
    hasher: FixedState,
    /// The placement hash's secret seed ([`FeatureStore::with_seed`]).
    seed: u64,
    /// The keyed hash of [`KeyId::check`]: SipHash-1-3 under these two keys, random per store and
    /// kept in its snapshot (the snapshot's keys must keep telling its keys apart).
    check_keys: (u64, u64),
}

impl FeatureStore {
    /// An empty store, its placement seeded at random.
    pub fn new(limits: FeatureLimits) -> FeatureStore {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::hash::RandomState::new().build_hasher().finish();
        FeatureStore::with_seed(limits, seed)
    }

    /// An empty store whose placement hash is seeded with `seed`. Two stores with one seed fed the
    /// same events hold, and evict, the same keys: what makes a replay past `keys_max` (a restart,
    /// a backtest) decide as the online run did. Keep the seed secret: keys are chosen by clients,
    /// and a known seed would let them aim many keys at one shard.
    pub fn with_seed(limits: FeatureLimits, seed: u64) -> FeatureStore {
        assert!(limits.events_per_key_max > 0 && limits.keys_max > 0, "limits must be positive");
        assert!(limits.events_per_key_max < u32::MAX as usize, "events_per_key_max must be below 2^32 - 1");
        let keys = (0..KEY_SHARDS).map(|_| KeyMap::default()).collect();
        let pairs = (0..KEY_SHARDS).map(|_| PairMap::default()).collect();
        FeatureStore {
            limits,
            keys,
            pairs,
            keys_len: 0,
            evict_cursor: 0,
            hasher: FixedState::with_seed(seed),
            seed,
            check_keys: random_check_keys(),
        }
    }

    /// The placement hash's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The identity of the key whose text is `parts` joined by U+001F (one part for an entity, two
    /// for a pair) in `namespace`.
    fn key_id(&self, namespace: Namespace, parts: &[&str]) -> KeyId {
        use std::hash::{BuildHasher, Hasher};
        fn feed(h: &mut impl Hasher, namespace: Namespace, parts: &[&str]) {
            h.write_u8(namespace as u8);
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    h.write_u8(0x1f);
                }
                h.write(part.as_bytes());
            }
        }
        let mut placement = self.hasher.build_hasher();
        let mut check = siphasher::sip::SipHasher13::new_with_keys(self.check_keys.0, self.check_keys.1);
        feed(&mut placement, namespace, parts);
        feed(&mut check, namespace, parts);
        KeyId { placement: placement.finish(), check: check.finish() }
    }

    /// The shard holding `id` (bits of its placement the shards' own tables do not use).
    fn shard(id: KeyId) -> usize {
        (id.placement >> 32) as usize & (KEY_SHARDS - 1)
    }

    fn get(&self, namespace: Namespace, key: &str) -> Option<&KeyState> {
        let id = self.key_id(namespace, &[key]);
        self.keys[Self::shard(id)].get(&id)
    }

    /// When the pair `a`–`b` of `namespace` was first and last seen, if it was.
    fn pair(&self, namespace: Namespace, a: &str, b: &str) -> Option<Seen> {
        let id = self.key_id(namespace, &[a, b]);
        self.pairs[Self::shard(id)].get(&id).copied()
    }

    /// The state of `key`, created on first sight (counted), its first/last seen moved to `at_ns`.
    fn touch(&mut self, namespace: Namespace, key: &str, at_ns: u64) -> &mut KeyState {
        let id = self.key_id(namespace, &[key]);
        let (state, inserted) = touch(&mut self.keys[Self::shard(id)], id, at_ns);
        self.keys_len += usize::from(inserted);
        state
    }

    /// The store's limits.
    pub fn limits(&self) -> FeatureLimits {
        self.limits
    }

    /// Keys held.
    pub fn keys(&self) -> usize {
        self.keys_len
    }

    fn counterparty_hash(&self, counterparty: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(counterparty)
    }

    /// Aggregates of `key` over the window of `window_ns` ending at `now_ns` (events recorded so far).
    pub fn window(&self, namespace: Namespace, key: &str, now_ns: u64, window_ns: u64) -> WindowStats {
        let mut out = [WindowStats::default()];
        self.windows(
            namespace,
            key,
            now_ns,
            &[WindowQuery { window_ns, distinct: true, edges: true }],
            &mut out,
        );
        out[0]
    }

    /// The aggregates of `key` over several windows ending at `now_ns`: `out[i]` becomes exactly
    /// `self.window(namespace, key, now_ns, queries[i].window_ns)` (with `distinct_counterparties`
    /// 0 where `queries[i].distinct` is false, and no `oldest_ns`/`newest_ns` where `edges` is). Each window length's aggregates are kept per key and
    /// moved by the events that entered or left the window since the last call (see `agg`), so a
    /// call costs about the events that changed, not the events in the windows. Pairs beyond the
    /// shorter of `queries` and `out` are left alone.
    pub fn windows(
        &self,
        namespace: Namespace,
        key: &str,
        now_ns: u64,
        queries: &[WindowQuery],
        out: &mut [WindowStats],
    ) {
        let n = queries.len().min(out.len());
        let (queries, out) = (&queries[..n], &mut out[..n]);
        let Some(state) = self.get(namespace, key) else {
            out.fill(WindowStats::default());
            return;
        };
        let mut runs = state.runs.take();
        for (q, o) in queries.iter().zip(out.iter_mut()) {
            *o = agg::query(&mut runs, &state.events, state.newest_ns, now_ns, *q);
            o.saturated = state.dropped_newest_ns > now_ns.saturating_sub(q.window_ns);
        }
        state.runs.set(runs);
    }

    /// When `key` was first seen, if it was (a pair's key is its two parts joined by U+001F).
    pub fn first_seen_ns(&self, namespace: Namespace, key: &str) -> Option<u64> {
        match pair_parts(namespace, key) {
            Some((a, b)) => self.pair(namespace, a, b).map(|s| s.first_ns),
            None => self.get(namespace, key).map(|s| s.first_seen_ns),
        }
    }

    /// When `key` was last seen, if it was (a pair's key is its two parts joined by U+001F).
    pub fn last_seen_ns(&self, namespace: Namespace, key: &str) -> Option<u64> {
        match pair_parts(namespace, key) {
            Some((a, b)) => self.pair(namespace, a, b).map(|s| s.last_ns),
            None => self.get(namespace, key).map(|s| s.last_seen_ns),
        }
    }

    /// Whether `payee` never received from `payer` before.
    pub fn is_new_payee(&self, payer: &str, payee: &str) -> bool {
        self.pair(Namespace::PayerPayee, payer, payee).is_none()
    }

    /// Whether `account` never used `device` before.
    pub fn is_new_device(&self, account: &str, device: &str) -> bool {
        self.pair(Namespace::AccountDevice, account, device).is_none()
    }

    /// Records an event of `key` (after it was decided).
    pub fn record(
        &mut self,
        namespace: Namespace,
        key: &str,
        timestamp_ns: u64,
        amount_minor: u64,
        counterparty: &str,
    ) {
        let counterparty = self.counterparty_hash(counterparty);
        self.record_hashed(namespace, key, timestamp_ns, amount_minor, counterparty);
    }

    /// Records an event whose counterparty is already hashed: how a shared backend (Redis) fills a
    /// fresh store with the events it fetched, so the window arithmetic stays this code. The hash
    /// only has to be stable within one key (distinct counts compare hashes of one key's events).
    pub fn record_hashed(
        &mut self,
        namespace: Namespace,
        key: &str,
        timestamp_ns: u64,
        amount_minor: u64,
        counterparty: u64,
    ) {
        let limits = self.limits;
        let state = self.touch(namespace, key, timestamp_ns);
        // Keep time order even if events arrive slightly out of order (backfills); the usual event
        // is the newest, appended without searching (a search's reads of a cold key cost more).
        let at = match state.events.back() {
            Some(newest) if newest.timestamp_ns > timestamp_ns => {
                state.events.partition_point(|e| e.timestamp_ns <= timestamp_ns)
            }
            _ => state.events.len(),
        };
        let event = Event { timestamp_ns, amount_minor, counterparty };
        state.events.insert(at, event);
        let runs = state.runs.get_mut();
        agg::inserted(runs, at, &event);
        if at == 0 {
            state.oldest_ns = timestamp_ns;
        }
        state.newest_ns = state.newest_ns.max(timestamp_ns);
        trim(state, limits);
        if self.keys_len > limits.keys_max {
            self.evict();
        }
    }

    /// Changes the bounds on keys and on events per key (the horizon stays): a store over the new
    /// ones drops each key's oldest events past `events_per_key_max` (windows reaching back that
    /// far then saturate) and evicts keys past `keys_max`, as if they had been the bounds when
    /// those came in. Deterministic, so a replay that meets the change where the online store met
    /// it (a [`crate::records::RECORD_FEATURE_LIMITS`] record) goes on as the online store did.
    pub fn set_limits(&mut self, keys_max: usize, events_per_key_max: usize) -> Result<(), String> {
        if keys_max == 0 || events_per_key_max == 0 || events_per_key_max >= u32::MAX as usize {
            return Err(format!(
                "feature bounds must be positive, and events per key below 2^32 - 1 (keys {keys_max}, events \
                 per key {events_per_key_max})"
            ));
        }
        let limits = FeatureLimits { keys_max, events_per_key_max, ..self.limits };
        if limits == self.limits {
            return Ok(());
        }
        let fewer_events = events_per_key_max < self.limits.events_per_key_max;
        self.limits = limits;
        if fewer_events {
            for shard in self.keys.iter_mut() {
                for state in shard.values_mut() {
                    trim(state, limits);
                }
            }
        }
        if self.keys_len > keys_max {
            self.evict();
        }
        Ok(())
    }

    /// Records that the pair `a`–`b` of `namespace` was seen (a payer paid a payee, an account used
    /// a device: for new-payee and new-device checks). A pair keeps only when it was first and
    /// last seen; [`FeatureStore::record`] under a pair namespace keeps a key with events apart
    /// from it.
    pub fn record_pair(&mut self, namespace: Namespace, a: &str, b: &str, timestamp_ns: u64) {
        let id = self.key_id(namespace, &[a, b]);
        match self.pairs[Self::shard(id)].entry(id) {
            hashbrown::hash_map::Entry::Occupied(mut entry) => {
                let seen = entry.get_mut();
                seen.first_ns = seen.first_ns.min(timestamp_ns);
                seen.last_ns = seen.last_ns.max(timestamp_ns);
            }
            hashbrown::hash_map::Entry::Vacant(entry) => {
                entry.insert(Seen { first_ns: timestamp_ns, last_ns: timestamp_ns });
                self.keys_len += 1;
            }
        }
        if self.keys_len > self.limits.keys_max {
            self.evict();
        }
    }

    /// Brings the keys back within `keys_max`. Choice, over dropping the least recently seen tenth
    /// of all keys at once: from [`EVICT_BY_SHARD_FROM_KEYS`] keys on, the shards are trimmed in
    /// turn, each of its own least recently seen tenth, so one eviction reads 1/256 of the keys
    /// (~0.2 ms at a million keys) instead of all of them (a 55 ms pause of every decision, and on
    /// the embedded store of every write, measured with `crates/risk/examples/http_shaped.rs`). Keys
    /// are spread over the shards by a keyed hash, so each shard's oldest tenth is its share of the
    /// store's oldest: the order is least recently seen within a shard, close to it across them.
    fn evict(&mut self) {
        if self.keys_len >= EVICT_BY_SHARD_FROM_KEYS {
            for _ in 0..KEY_SHARDS {
                let shard = self.evict_cursor;
                self.evict_cursor = (shard + 1) % KEY_SHARDS;
                let held = self.keys[shard].len() + self.pairs[shard].len();
                if held < EVICT_SHARD_KEYS_MIN {
                    continue;
                }
                let (keys, pairs) = (&mut self.keys[shard..=shard], &mut self.pairs[shard..=shard]);
                self.keys_len -= evict_oldest(keys, pairs, held / 10);
                if self.keys_len <= self.limits.keys_max {
                    return;
                }
            }
        }
        let drop = (self.keys_len / 10).max(self.keys_len - self.limits.keys_max);
        self.keys_len -= evict_oldest(&mut self.keys, &mut self.pairs, drop);
        debug_assert!(self.keys_len <= self.limits.keys_max);
    }
}

/// Drops `state`'s events older than the horizon before its last sighting and its oldest past
/// `limits.events_per_key_max`, moving its windows' aggregates with them.
fn trim(state: &mut KeyState, limits: FeatureLimits) {
    let runs = state.runs.get_mut();
    let horizon = state.last_seen_ns.saturating_sub(limits.horizon_ns);
    while (!state.events.is_empty() && state.oldest_ns < horizon)
        || state.events.len() > limits.events_per_key_max
    {
        let dropped = state.events.pop_front().expect("non-empty");
        agg::dropped_front(runs, &dropped);
        state.oldest_ns = state.events.front().map_or(0, |e| e.timestamp_ns);
        if state.events.is_empty() {
            state.newest_ns = 0;
        }
        if dropped.timestamp_ns >= horizon {
            // Dropped by the per-key bound, not by age: windows reaching back this far saturate.
            state.dropped_newest_ns = state.dropped_newest_ns.max(dropped.timestamp_ns);
        }
    }
    debug_assert!(state.events.len() <= limits.events_per_key_max);
}

/// Two random 64-bit keys for [`KeyId::check`]'s SipHash.
fn random_check_keys() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let state = std::hash::RandomState::new();
    let (mut a, mut b) = (state.build_hasher(), state.build_hasher());
    a.write_u8(0);
    b.write_u8(1);
    (a.finish(), b.finish())
}

/// Drops the `drop` (at least one) least recently seen keys and pairs of `keys` and `pairs` (the
/// maps of the same shards); returns how many went. Keys seen at the same time (one event touches
/// its payer, payee, device and pairs at one timestamp) go in the order of their placement hash,
/// not of the tables' layout, so a store rebuilt from a snapshot (its tables filled in another
/// order) evicts what the store it was taken from would have.
fn evict_oldest(keys: &mut [KeyMap], pairs: &mut [PairMap], drop: usize) -> usize {
    let key_seen = keys.iter().flat_map(|shard| shard.iter().map(|(id, s)| (s.last_seen_ns, id.placement)));
    let pair_seen = pairs.iter().flat_map(|shard| shard.iter().map(|(id, s)| (s.last_ns, id.placement)));
    let mut last_seen: Vec<(u64, u64)> = key_seen.chain(pair_seen).collect();
    if last_seen.is_empty() {
        return 0;
    }
    let drop = drop.clamp(1, last_seen.len());
    let (_, cutoff, _) = last_seen.select_nth_unstable(drop - 1);
    let cutoff = *cutoff;
    let mut removed = 0;
    let mut keep = |seen: (u64, u64)| {
        let evicted = removed < drop && seen <= cutoff;
        removed += usize::from(evicted);
        !evicted
    };
    for shard in keys.iter_mut() {
        shard.retain(|id, s| keep((s.last_seen_ns, id.placement)));
    }
    for shard in pairs.iter_mut() {
        shard.retain(|id, s| keep((s.last_ns, id.placement)));
    }
    removed
}

/// The state of a key in its shard, created on first sight (then `true`), with its first/last seen
/// times moved to cover `at_ns`.
fn touch(keys: &mut KeyMap, id: KeyId, at_ns: u64) -> (&mut KeyState, bool) {
    let (state, inserted) = match keys.entry(id) {
        hashbrown::hash_map::Entry::Occupied(entry) => (entry.into_mut(), false),
        hashbrown::hash_map::Entry::Vacant(entry) => (
            entry.insert(KeyState {
                events: VecDeque::new(),
                oldest_ns: 0,
                newest_ns: 0,
                runs: Cell::new(Vec::new()),
                first_seen_ns: at_ns,
                last_seen_ns: at_ns,
                dropped_newest_ns: 0,
            }),
            true,
        ),
    };
    state.first_seen_ns = state.first_seen_ns.min(at_ns);
    state.last_seen_ns = state.last_seen_ns.max(at_ns);
    (state, inserted)
}

/// The two parts of a pair namespace's key (joined by U+001F), or `None` for another namespace.
fn pair_parts(namespace: Namespace, key: &str) -> Option<(&str, &str)> {
    match namespace {
        Namespace::PayerPayee | Namespace::AccountDevice => key.split_once('\u{1f}'),
        _ => None,
    }
}

/// Parses a window like `30s`, `1m`, `1h`, `24h`, `7d` into nanoseconds.
pub fn parse_window(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let unit_ns: u64 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_keys_are_counted_and_evicted_least_recent_first() {
        let limits = FeatureLimits { keys_max: 1_000, ..FeatureLimits::default() };
        let mut store = FeatureStore::new(limits);
        for i in 0..5_000u64 {
            store.record(Namespace::Payer, &format!("acct-{i}"), 1_000 + i, 1, "x");
            store.record(Namespace::Payer, &format!("acct-{i}"), 1_000 + i, 1, "y"); // not a new key
            store.record_pair(Namespace::PayerPayee, &format!("acct-{i}"), "shop", 1_000 + i);
            assert!(store.keys() <= limits.keys_max);
        }
        let held = store.keys.iter().map(|shard| shard.len()).sum::<usize>()
            + store.pairs.iter().map(|shard| shard.len()).sum::<usize>();
        assert_eq!(held, store.keys());
        assert_eq!(store.last_seen_ns(Namespace::PayerPayee, "acct-4999\u{1f}shop"), Some(5_999));
        assert!(store.keys() >= limits.keys_max * 9 / 10 - 1, "{}", store.keys());
        // The newest keys are kept, the oldest are gone, and a key's state is found in its shard.
        assert_eq!(store.last_seen_ns(Namespace::Payer, "acct-4999"), Some(5_999));
        assert_eq!(store.window(Namespace::Payer, "acct-4999", 6_000, 10_000).count, 2);
        assert!(!store.is_new_payee("acct-4999", "shop"));
        assert_eq!(store.first_seen_ns(Namespace::Payer, "acct-0"), None);
        assert!(store.is_new_payee("acct-0", "shop"));
    }

    #[test]
    fn a_large_store_is_trimmed_a_shard_at_a_time_least_recently_seen_first() {
        let limits = FeatureLimits { keys_max: 40_000, ..FeatureLimits::default() };
        assert!(limits.keys_max >= EVICT_BY_SHARD_FROM_KEYS);
        let mut store = FeatureStore::new(limits);
        let pay = |store: &mut FeatureStore, i: u64| {
            store.record_pair(Namespace::PayerPayee, &format!("p{i}"), "shop", 1_000 + i)
        };
        for i in 0..40_000 {
            pay(&mut store, i);
        }
        assert_eq!(store.keys(), 40_000);
        pay(&mut store, 40_000);
        // One shard's oldest tenth went (a shard holds ~1/256 of the keys), not a tenth of all.
        let after = store.keys();
        assert!((40_000 - 40_000 / KEY_SHARDS..40_000).contains(&after), "{after} keys after one eviction");
        for i in 40_001..200_000 {
            pay(&mut store, i);
            assert!(store.keys() <= limits.keys_max);
        }
        let held = store.keys.iter().map(|shard| shard.len()).sum::<usize>()
            + store.pairs.iter().map(|shard| shard.len()).sum::<usize>();
        assert_eq!(held, store.keys());
        assert!(store.keys() >= limits.keys_max * 99 / 100, "{}", store.keys());
        // Least recently seen first: nothing of the first half is left, the newest all are, and
        // what is kept is nearly the newest 40,000.
        assert_eq!((0..100_000).filter(|i| !store.is_new_payee(&format!("p{i}"), "shop")).count(), 0);
        assert!((199_000..200_000).all(|i| !store.is_new_payee(&format!("p{i}"), "shop")));
        let newest = (160_000..200_000).filter(|i| !store.is_new_payee(&format!("p{i}"), "shop")).count();
        assert!(newest >= 36_000, "{newest} of the newest 40,000 kept");
    }
}
