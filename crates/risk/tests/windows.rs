//! Window edges with an injected clock, bounds, and derived features.

use proptest::prelude::*;
use puhui_risk::{parse_window, FeatureLimits, FeatureStore, Namespace, WindowQuery, WindowStats};

const S: u64 = 1_000_000_000;
const H: u64 = 3_600 * S;

fn store() -> FeatureStore {
    FeatureStore::new(FeatureLimits::default())
}

#[test]
fn window_edges_exactly_at_just_inside_just_outside() {
    let mut f = store();
    let t0 = 1_000 * H;
    f.record(Namespace::Payer, "alice", t0, 500, "bob");
    // Decision exactly one hour later: the event is exactly 1 h old, so out of a 1 h window.
    assert_eq!(f.window(Namespace::Payer, "alice", t0 + H, H).count, 0, "exactly at the boundary: out");
    assert_eq!(f.window(Namespace::Payer, "alice", t0 + H - 1, H).count, 1, "1 ns inside: in");
    assert_eq!(f.window(Namespace::Payer, "alice", t0 + H + 1, H).count, 0, "1 ns outside: out");
    assert_eq!(f.window(Namespace::Payer, "alice", t0, H).count, 1, "at the same instant: in");
    assert_eq!(f.window(Namespace::Payer, "alice", t0 - 1, H).count, 0, "before it happened: not seen");
}

#[test]
fn aggregates_and_distinct_counterparties() {
    let mut f = store();
    let t = 500 * H;
    for (i, (amount, to)) in [(100, "bob"), (300, "carol"), (200, "bob"), (400, "dan")].iter().enumerate() {
        f.record(Namespace::Payer, "alice", t + i as u64 * S, *amount, to);
    }
    let w = f.window(Namespace::Payer, "alice", t + 10 * S, H);
    assert_eq!((w.count, w.sum_minor, w.max_minor, w.distinct_counterparties), (4, 1_000, 400, 3));
    assert!((w.mean_minor - 250.0).abs() < 1e-9);
    assert!((w.stddev_minor - 111.803_398_874_989_48).abs() < 1e-6);
    assert!(w.z_score(1_000) > 6.0);
    // (t+1 s, t+10 s]: the events at t+2 s and t+3 s.
    assert_eq!(f.window(Namespace::Payer, "alice", t + 10 * S, 9 * S).count, 2, "only the last two");
    assert_eq!(f.window(Namespace::Payer, "nobody", t, H).count, 0);
    assert_eq!(f.first_seen_ns(Namespace::Payer, "alice"), Some(t));
    assert_eq!(f.last_seen_ns(Namespace::Payer, "alice"), Some(t + 3 * S));
}

#[test]
fn new_payee_and_new_device() {
    let mut f = store();
    assert!(f.is_new_payee("alice", "bob"));
    f.record_pair(Namespace::PayerPayee, "alice", "bob", 10);
    assert!(!f.is_new_payee("alice", "bob"));
    assert!(f.is_new_payee("bob", "alice"), "direction matters");
    assert!(f.is_new_device("alice", "phone-1"));
    f.record_pair(Namespace::AccountDevice, "alice", "phone-1", 11);
    assert!(!f.is_new_device("alice", "phone-1"));
}

#[test]
fn per_key_bound_saturates_and_reports_it() {
    let mut f = FeatureStore::new(FeatureLimits { events_per_key_max: 8, ..FeatureLimits::default() });
    for i in 0..20u64 {
        f.record(Namespace::Device, "d1", 1_000 * S + i, 1, "x");
    }
    let w = f.window(Namespace::Device, "d1", 1_000 * S + 20, H);
    assert_eq!(w.count, 8);
    assert!(w.saturated, "the window reaches past dropped events");
    let recent = f.window(Namespace::Device, "d1", 1_000 * S + 20, 5);
    // (base+15, base+20]: events 16..=19.
    assert_eq!((recent.count, recent.saturated), (4, false));
}

#[test]
fn key_bound_evicts_the_least_recently_seen() {
    let mut f = FeatureStore::new(FeatureLimits { keys_max: 100, ..FeatureLimits::default() });
    for i in 0..1_000u64 {
        f.record(Namespace::Ip, &format!("10.0.{i}"), 1_000 * S + i, 1, "x");
        assert!(f.keys() <= 100);
    }
    assert!(f.first_seen_ns(Namespace::Ip, "10.0.999").is_some(), "the newest stays");
    assert!(f.first_seen_ns(Namespace::Ip, "10.0.0").is_none(), "the oldest went");
}

#[test]
fn horizon_prunes_old_events() {
    let limits = FeatureLimits { horizon_ns: H, ..FeatureLimits::default() };
    let mut f = FeatureStore::new(limits);
    f.record(Namespace::Payee, "shop", 10 * H, 1, "a");
    f.record(Namespace::Payee, "shop", 12 * H, 1, "b");
    assert_eq!(
        f.window(Namespace::Payee, "shop", 12 * H, 100 * H).count,
        1,
        "older than the horizon is gone"
    );
}

#[test]
fn windows_parse() {
    assert_eq!(parse_window("1m"), Some(60 * S));
    assert_eq!(parse_window("24h"), Some(24 * H));
    assert_eq!(parse_window("7d"), Some(7 * 24 * H));
    assert_eq!(parse_window("250ms"), Some(250_000_000));
    for bad in ["", "h", "0h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
        assert_eq!(parse_window(bad), None, "{bad}");
    }
}

proptest! {
    /// The store's count equals a brute-force count for random events and windows, whatever the order.
    #[test]
    fn counts_match_brute_force(
        events in proptest::collection::vec((0u64..10_000, 1u64..1_000, 0u8..5), 0..200),
        now in 0u64..12_000,
        window in 1u64..5_000,
    ) {
        let mut f = FeatureStore::new(FeatureLimits { horizon_ns: u64::MAX, ..FeatureLimits::default() });
        for (ts, amount, cp) in &events {
            f.record(Namespace::Payer, "k", *ts, *amount, &cp.to_string());
        }
        let inside: Vec<_> = events.iter().filter(|(ts, _, _)| *ts <= now && *ts + window > now).collect();
        let w = f.window(Namespace::Payer, "k", now, window);
        prop_assert_eq!(w.count, inside.len() as u64);
        prop_assert_eq!(w.sum_minor, inside.iter().map(|e| e.1).sum::<u64>());
        prop_assert_eq!(w.max_minor, inside.iter().map(|e| e.1).max().unwrap_or(0));
        let mut cps: Vec<u8> = inside.iter().map(|e| e.2).collect();
        cps.sort();
        cps.dedup();
        prop_assert_eq!(w.distinct_counterparties, cps.len() as u64);
    }
}

proptest! {
    /// One multi-window scan gives each window exactly (bit for bit) what its own scan gives,
    /// sorted or not, with future events, windows longer than `now`, and saturated keys.
    #[test]
    fn one_scan_for_several_windows_equals_one_scan_each(
        events in proptest::collection::vec((0u64..10_000, 1u64..1_000, 0u8..5), 0..200),
        now in 0u64..12_000,
        queries in proptest::collection::vec((1u64..15_000, any::<bool>()), 0..6),
        sort in any::<bool>(),
        events_per_key_max in 1usize..300,
    ) {
        let limits = FeatureLimits { horizon_ns: u64::MAX, events_per_key_max, ..FeatureLimits::default() };
        let mut f = FeatureStore::new(limits);
        for (ts, amount, cp) in &events {
            f.record(Namespace::Payer, "k", *ts, *amount, &cp.to_string());
        }
        let mut queries: Vec<WindowQuery> =
            queries.iter().map(|&(window_ns, distinct)| WindowQuery { window_ns, distinct, edges: true }).collect();
        if sort {
            queries.sort_by_key(|q| q.window_ns);
        }
        let mut out = vec![WindowStats { count: 99, ..WindowStats::default() }; queries.len() + 1];
        f.windows(Namespace::Payer, "k", now, &queries, &mut out);
        for (q, got) in queries.iter().zip(&out) {
            let mut want = f.window(Namespace::Payer, "k", now, q.window_ns);
            if !q.distinct {
                want.distinct_counterparties = 0;
            }
            prop_assert_eq!(got.count, want.count);
            prop_assert_eq!(got.sum_minor, want.sum_minor);
            prop_assert_eq!(got.max_minor, want.max_minor);
            prop_assert_eq!(got.distinct_counterparties, want.distinct_counterparties);
            prop_assert_eq!(got.mean_minor.to_bits(), want.mean_minor.to_bits());
            prop_assert_eq!(got.stddev_minor.to_bits(), want.stddev_minor.to_bits());
            prop_assert_eq!(got.saturated, want.saturated);
        }
        // The slot past the queries is left alone; an unknown key gives zeros.
        prop_assert_eq!(out[queries.len()].count, 99);
        f.windows(Namespace::Payer, "nobody", now, &queries, &mut out);
        prop_assert!(out[..queries.len()].iter().all(|w| *w == WindowStats::default()));
    }
}

/// One step of [`incremental_windows_equal_fresh_ones`]: record an event `offset` after (or, if
/// `back`, before) the clock, or ask about windows at `offset` after (before) the clock (a few
/// window lengths, so that the store's kept windows are asked about again and moved).
#[derive(Debug, Clone)]
enum Step {
    Record { offset: u64, back: bool, amount: u64, counterparty: u8 },
    Query { offset: u64, back: bool, windows: Vec<(u64, bool)> },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..300, proptest::bool::weighted(0.1), prop_oneof![1u64..1_000, Just(u64::MAX), Just(u64::MAX / 3)], 0u8..6)
            .prop_map(|(offset, back, amount, counterparty)| Step::Record { offset, back, amount, counterparty }),
        2 => (0u64..300, proptest::bool::weighted(0.1), proptest::collection::vec((proptest::sample::select(vec![1u64, 40, 300, 1_000, 2_500, 20_000]), any::<bool>()), 1..5))
            .prop_map(|(offset, back, windows)| Step::Query { offset, back, windows }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Windows kept between queries and moved by the events since give bit for bit what a fresh
    /// store holding the same events gives: through events out of time order, the per-key bound,
    /// the horizon, amounts whose squares overflow 128 bits, and queries back in time.
    #[test]
    fn incremental_windows_equal_fresh_ones(
        steps in proptest::collection::vec(step(), 0..120),
        events_per_key_max in prop_oneof![1usize..20, Just(1_024)],
        horizon_ns in prop_oneof![Just(u64::MAX), 500u64..5_000],
    ) {
        let limits = FeatureLimits { horizon_ns, events_per_key_max, ..FeatureLimits::default() };
        let mut kept = FeatureStore::new(limits);
        let mut history: Vec<(u64, u64, String)> = Vec::new();
        let mut clock = 10_000u64;
        for step in &steps {
            match step {
                Step::Record { offset, back, amount, counterparty } => {
                    let ts = if *back { clock - offset } else { clock + offset };
                    clock = clock.max(ts);
                    kept.record(Namespace::Payer, "k", ts, *amount, &counterparty.to_string());
                    history.push((ts, *amount, counterparty.to_string()));
                }
                Step::Query { offset, back, windows } => {
                    let now = if *back { clock - offset } else { clock + offset };
                    let queries: Vec<WindowQuery> =
                        windows.iter().map(|&(window_ns, distinct)| WindowQuery { window_ns, distinct, edges: true }).collect();
                    let mut fresh = FeatureStore::new(limits);
                    for (ts, amount, cp) in &history {
                        fresh.record(Namespace::Payer, "k", *ts, *amount, cp);
                    }
                    let mut got = vec![WindowStats::default(); queries.len()];
                    let mut want = got.clone();
                    kept.windows(Namespace::Payer, "k", now, &queries, &mut got);
                    fresh.windows(Namespace::Payer, "k", now, &queries, &mut want);
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert_eq!((g.count, g.sum_minor, g.max_minor, g.distinct_counterparties), (w.count, w.sum_minor, w.max_minor, w.distinct_counterparties));
                        prop_assert_eq!((g.mean_minor.to_bits(), g.stddev_minor.to_bits(), g.saturated), (w.mean_minor.to_bits(), w.stddev_minor.to_bits(), w.saturated));
                    }
                    if events_per_key_max == 1_024 && horizon_ns == u64::MAX {
                        // Nothing dropped: also what a count over all the events gives.
                        for (q, g) in queries.iter().zip(&got) {
                            let inside: Vec<_> = history.iter()
                                .filter(|(ts, _, _)| *ts <= now && (q.window_ns > now || *ts > now - q.window_ns))
                                .collect();
                            let sum: u128 = inside.iter().map(|e| u128::from(e.1)).sum();
                            prop_assert_eq!(g.count, inside.len() as u64);
                            prop_assert_eq!(g.sum_minor, u64::try_from(sum).unwrap_or(u64::MAX));
                            prop_assert_eq!(g.max_minor, inside.iter().map(|e| e.1).max().unwrap_or(0));
                            let mut cps: Vec<&String> = inside.iter().map(|e| &e.2).collect();
                            cps.sort();
                            cps.dedup();
                            prop_assert_eq!(g.distinct_counterparties, if q.distinct { cps.len() as u64 } else { 0 });
                            if !inside.is_empty() {
                                prop_assert_eq!(g.mean_minor.to_bits(), (sum as f64 / inside.len() as f64).to_bits());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every query [`a_store_loaded_from_its_snapshot_goes_on_as_the_original`] compares, over the
/// keys `payers` × `payees` could make.
/// Records a payment from `payer` to `payee` as risk control does: both parties' events and the pair.
fn pay(store: &mut FeatureStore, payer: &str, payee: &str, at_ns: u64, amount_minor: u64) {
    store.record(Namespace::Payer, payer, at_ns, amount_minor, payee);
    store.record(Namespace::Payee, payee, at_ns, amount_minor, payer);
    store.record_pair(Namespace::PayerPayee, payer, payee, at_ns);
}

fn answers(
    store: &FeatureStore,
    payers: u8,
    payees: u8,
    now: u64,
) -> Vec<(u64, u64, u64, u64, u64, bool, u64)> {
    let mut out = vec![(store.keys() as u64, 0, 0, 0, 0, false, 0)];
    for a in 0..payers {
        let payer = format!("a{a}");
        for (window_ns, distinct) in [(50, true), (400, false), (5_000, true)] {
            let mut got = [WindowStats::default()];
            store.windows(
                Namespace::Payer,
                &payer,
                now,
                &[WindowQuery { window_ns, distinct, edges: true }],
                &mut got,
            );
            let g = got[0];
            out.push((
                g.count,
                g.sum_minor,
                g.max_minor,
                g.distinct_counterparties,
                g.stddev_minor.to_bits(),
                g.saturated,
                g.oldest_ns.unwrap_or(0),
            ));
        }
        let seen =
            (store.first_seen_ns(Namespace::Payer, &payer), store.last_seen_ns(Namespace::Payer, &payer));
        out.push((seen.0.unwrap_or(0), seen.1.unwrap_or(0), 0, 0, 0, false, 1));
        for b in 0..payees {
            out.push((u64::from(store.is_new_payee(&payer, &format!("b{b}"))), 0, 0, 0, 0, false, 2));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// A store saved ([`FeatureStore::encode_snapshot`]) and loaded mid-stream, then fed the same
    /// events as the store it was saved from, answers every query the same: windows, first and
    /// last seen, new payees, and which keys the key bound evicted (events share timestamps across
    /// keys, so eviction meets ties; the tables of a loaded store are filled in another order).
    #[test]
    fn a_store_loaded_from_its_snapshot_goes_on_as_the_original(
        events in proptest::collection::vec((0u8..12, 0u8..8, 0u64..3, 1u64..1_000), 1..300),
        cut in 0usize..300,
        keys_max in prop_oneof![Just(1_000usize), 8usize..60],
        events_per_key_max in prop_oneof![Just(1_024usize), 1usize..6],
    ) {
        let limits = FeatureLimits { keys_max, events_per_key_max, horizon_ns: 2_000 };
        let mut original = FeatureStore::with_seed(limits, 7);
        let mut loaded: Option<FeatureStore> = None;
        let mut clock = 1_000u64;
        for (i, (a, b, step, amount)) in events.iter().enumerate() {
            if i == cut.min(events.len() - 1) {
                let mut bytes = Vec::new();
                original.encode_snapshot(&mut bytes);
                let mut input = bytes.as_slice();
                let store = FeatureStore::decode_snapshot(&mut input).unwrap();
                prop_assert!(input.is_empty());
                prop_assert_eq!(answers(&store, 12, 8, clock), answers(&original, 12, 8, clock));
                loaded = Some(store);
            }
            clock += step * 37;
            for store in std::iter::once(&mut original).chain(loaded.as_mut()) {
                pay(store, &format!("a{a}"), &format!("b{b}"), clock, *amount);
            }
        }
        let loaded = loaded.expect("cut inside the events");
        prop_assert_eq!(answers(&loaded, 12, 8, clock + 10), answers(&original, 12, 8, clock + 10));
    }
}

/// A store through its snapshot: what it holds, its windows' kept aggregates recomputed afresh.
fn reloaded(store: &FeatureStore) -> FeatureStore {
    let mut bytes = Vec::new();
    store.encode_snapshot(&mut bytes);
    FeatureStore::decode_snapshot(&mut bytes.as_slice()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A change of bounds mid-stream (`FeatureStore::set_limits`, what a bounds record makes a
    /// replay do) leaves windows that agree with a fresh reading of what the store kept, and a
    /// store loaded before the change goes on, through the same change, as the original.
    #[test]
    fn a_change_of_bounds_keeps_windows_exact_and_a_loaded_store_goes_on_the_same(
        events in proptest::collection::vec((0u8..12, 0u8..8, 0u64..3, 1u64..1_000), 2..200),
        cut in 0usize..200,
        change in 0usize..200,
        (keys_before, keys_after) in (4usize..80, 4usize..80),
        (events_before, events_after) in (1usize..8, 1usize..8),
    ) {
        let limits = FeatureLimits { keys_max: keys_before, events_per_key_max: events_before, horizon_ns: 2_000 };
        let mut original = FeatureStore::with_seed(limits, 7);
        let mut loaded: Option<FeatureStore> = None;
        let (cut, change) = (cut.min(events.len() - 1), change.min(events.len() - 1));
        let mut clock = 1_000u64;
        for (i, (a, b, step, amount)) in events.iter().enumerate() {
            if i == cut {
                loaded = Some(reloaded(&original));
            }
            if i == change {
                // Windows asked before the change keep aggregates that the change must move.
                let asked = answers(&original, 12, 8, clock);
                prop_assert_eq!(&asked, &answers(&reloaded(&original), 12, 8, clock));
                for store in std::iter::once(&mut original).chain(loaded.as_mut()) {
                    store.set_limits(keys_after, events_after).unwrap();
                    prop_assert!(store.keys() <= keys_after);
                }
                prop_assert_eq!(answers(&original, 12, 8, clock), answers(&reloaded(&original), 12, 8, clock));
            }
            clock += step * 37;
            for store in std::iter::once(&mut original).chain(loaded.as_mut()) {
                pay(store, &format!("a{a}"), &format!("b{b}"), clock, *amount);
            }
        }
        let loaded = loaded.expect("cut inside the events");
        prop_assert_eq!(answers(&loaded, 12, 8, clock + 10), answers(&original, 12, 8, clock + 10));
        prop_assert_eq!(answers(&original, 12, 8, clock + 10), answers(&reloaded(&original), 12, 8, clock + 10));
        prop_assert_eq!(original.limits().keys_max, keys_after);
    }
}

#[test]
fn bounds_that_cannot_hold_a_key_or_an_event_are_refused() {
    let mut store = FeatureStore::with_seed(FeatureLimits::default(), 1);
    assert!(store.set_limits(0, 10).is_err());
    assert!(store.set_limits(10, 0).is_err());
    assert!(store.set_limits(10, u32::MAX as usize).is_err());
    assert_eq!(store.limits(), FeatureLimits::default(), "unchanged");
}

#[test]
fn a_damaged_feature_snapshot_is_refused_not_loaded() {
    let mut store = FeatureStore::with_seed(FeatureLimits::default(), 1);
    for i in 0..50u64 {
        store.record(Namespace::Payer, &format!("a{}", i % 7), 1_000 + i, i + 1, "shop");
    }
    let mut bytes = Vec::new();
    store.encode_snapshot(&mut bytes);
    for len in [0, 3, 40, bytes.len() / 2, bytes.len() - 1] {
        assert!(FeatureStore::decode_snapshot(&mut &bytes[..len]).is_err(), "cut to {len} bytes");
    }
    // A header whose key count does not add up: `keys_len` follows the magic, four varints and
    // three 8-byte words.
    let mut miscounted = bytes.clone();
    let mut header = b"PHFS".to_vec();
    let limits = FeatureLimits::default();
    for v in [1, limits.events_per_key_max as u64, limits.keys_max as u64, limits.horizon_ns] {
        puhui_risk::bytes::put_u64(&mut header, v);
    }
    let keys_len_at = header.len() + 3 * 8;
    assert_eq!(miscounted[keys_len_at], store.keys() as u8);
    miscounted[keys_len_at] ^= 1;
    assert!(FeatureStore::decode_snapshot(&mut miscounted.as_slice()).is_err());
    assert!(FeatureStore::decode_snapshot(&mut bytes.as_slice()).is_ok());
}

/// [`a_store_loaded_from_its_snapshot_goes_on_as_the_original`] past the size where the key bound
/// is kept a shard at a time: shards of ~100 keys, where ties of last-seen time meet the tables'
/// layout.
#[test]
fn a_large_store_loaded_from_its_snapshot_evicts_what_the_original_evicts() {
    let limits = FeatureLimits { keys_max: 20_000, events_per_key_max: 4, horizon_ns: u64::MAX };
    let mut original = FeatureStore::with_seed(limits, 11);
    let event = |store: &mut FeatureStore, i: u64| {
        // Three keys and a pair per event, all at the event's time; payers come back, payees rarely.
        let (payer, payee) = (format!("a{}", (i * 7_919) % 3_000), format!("b{i}"));
        pay(store, &payer, &payee, 1_000 + i, i + 1);
    };
    for i in 0..12_000 {
        event(&mut original, i);
    }
    let mut bytes = Vec::new();
    original.encode_snapshot(&mut bytes);
    let mut loaded = FeatureStore::decode_snapshot(&mut bytes.as_slice()).unwrap();
    for i in 12_000..30_000 {
        event(&mut original, i);
        event(&mut loaded, i);
    }
    assert_eq!(loaded.keys(), original.keys());
    let now = 1_000 + 30_000;
    for i in 0..30_000u64 {
        let (payer, payee) = (format!("a{}", (i * 7_919) % 3_000), format!("b{i}"));
        assert_eq!(
            loaded.last_seen_ns(Namespace::Payee, &payee),
            original.last_seen_ns(Namespace::Payee, &payee)
        );
        assert_eq!(loaded.is_new_payee(&payer, &payee), original.is_new_payee(&payer, &payee), "pair {i}");
        assert_eq!(
            loaded.window(Namespace::Payer, &payer, now, 5_000),
            original.window(Namespace::Payer, &payer, now, 5_000)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// A feature snapshot damaged anywhere (bytes flipped, cut short) is refused or loaded, never a
    /// panic; a loaded one answers queries and goes on recording within its bounds.
    #[test]
    fn a_damaged_feature_snapshot_never_panics(
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..=255), 1..6),
        cut in any::<proptest::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let limits = FeatureLimits { keys_max: 60, events_per_key_max: 5, horizon_ns: 10_000 };
        let mut store = FeatureStore::with_seed(limits, 3);
        for i in 0..80u64 {
            store.record(Namespace::Payer, &format!("a{}", i % 9), 1_000 + i * 13, i + 1, &format!("b{}", i % 4));
            store.record_pair(Namespace::PayerPayee, &format!("a{}", i % 9), &format!("b{}", i % 4), 1_000 + i * 13);
        }
        let mut bytes = Vec::new();
        store.encode_snapshot(&mut bytes);
        for (at, mask) in &flips {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(mut loaded) = FeatureStore::decode_snapshot(&mut bytes.as_slice()) {
            let mut got = [WindowStats::default()];
            for i in 0..9 {
                loaded.windows(Namespace::Payer, &format!("a{i}"), 3_000, &[WindowQuery { window_ns: 500, distinct: true, edges: true }], &mut got);
                loaded.record(Namespace::Payer, &format!("a{i}"), 3_000 + i, 1, "x");
            }
            prop_assert!(loaded.keys() <= loaded.limits().keys_max);
        }
    }
}

#[test]
fn a_snapshot_encoded_with_pauses_is_the_same_bytes_and_pauses_as_it_goes() {
    let mut store = store();
    for i in 0..3_000u64 {
        pay(&mut store, &format!("a{}", i % 700), &format!("b{}", i % 90), i * S, i + 1);
    }
    let mut plain = Vec::new();
    store.encode_snapshot(&mut plain);
    let (mut paused, mut pauses) = (Vec::new(), 0);
    store.encode_snapshot_pausing(&mut paused, || pauses += 1);
    assert_eq!(paused, plain);
    // 700 payers and 90 payees; the pairs are i mod lcm(700, 90) = 6,300, so 3,000 distinct.
    let entries = 700 + 90 + 3_000;
    assert_eq!(pauses, entries / puhui_risk::features::ENCODE_PAUSE_EVERY_KEYS, "{pauses} pauses");
}
