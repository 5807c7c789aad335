//! Shared velocity features against the real Redis (127.0.0.1:6379, or `PUHUI_TEST_REDIS`). Each
//! test uses its own random key prefix and deletes its keys.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use puhui_risk::records::DecisionRecord;
use puhui_risk::{
    Controller, DecisionSource, FeatureLimits, FeatureQuery, Namespace, Observation, Outcome, RiskEvent,
    RiskRecord, SharedFeatures, WindowRead,
};
use puhui_risk_redis::{RedisConfig, RedisFeatures};

const STARTER: &str = include_str!("../../../rulesets/starter.toml");
/// A realistic epoch in nanoseconds (2025): scores are doubles, exact only to 256 ns here.
const T0_NS: u64 = 1_750_000_000_123_456_789;
const SECOND_NS: u64 = 1_000_000_000;

fn redis_url() -> String {
    std::env::var("PUHUI_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A random key prefix whose keys are deleted when it is dropped.
struct Prefix(String);

impl Prefix {
    fn new() -> Prefix {
        Prefix(format!("puhui:test:{:016x}:", rand::random::<u64>()))
    }

    fn config(&self) -> RedisConfig {
        RedisConfig { key_prefix: self.0.clone(), ..RedisConfig::new(&redis_url()) }
    }

    fn backend(&self) -> Arc<RedisFeatures> {
        Arc::new(RedisFeatures::new(self.config()).expect("config"))
    }

    fn keys(&self) -> Vec<String> {
        let mut c = connection();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..10_000 {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.0))
                .arg("COUNT")
                .arg(1_000)
                .query(&mut c)
                .expect("SCAN");
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut connection());
        }
    }
}

fn connection() -> redis::Connection {
    redis::Client::open(redis_url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("Redis at 127.0.0.1:6379 (start it: see .ci/run)")
}

fn controller(text: &str, shared: Arc<RedisFeatures>) -> Controller {
    let (mut c, _) = Controller::new(text, Path::new("."), FeatureLimits::default()).expect("ruleset");
    c.set_shared_features(Some(shared));
    c
}

fn attrs(device: &str) -> Vec<(String, String)> {
    vec![
        ("device_id".to_string(), device.to_string()),
        ("ip".to_string(), "10.1.2.3".to_string()),
        ("channel".to_string(), "app".to_string()),
    ]
}

fn feature(d: &DecisionRecord, name: &str) -> f64 {
    d.active.features.iter().find(|(n, _)| &**n == name).map(|(_, v)| *v).expect(name)
}

/// Decides and commits one payment on `node` (what the API does under its lock).
fn pay(node: &mut Controller, id: &str, payer: &str, payee: &str, amount: u64, t: u64) -> DecisionRecord {
    let a = attrs("dev-1");
    let event = RiskEvent {
        payer,
        payee,
        amount_minor: amount,
        currency: "CNY",
        timestamp_ns: t,
        attributes: &a,
        payer_balance_minor: None,
    };
    let d = node.decide(id.to_string(), DecisionSource::Standalone, &event, true);
    node.commit_decision(&d);
    d
}

/// The starter ruleset with a 5 s budget, for tests of what the nodes share (not of how fast Redis
/// answers: on a busy machine a round trip can exceed the shipped 5 ms budget).
fn starter_generous() -> String {
    with_budget(5_000_000, "review")
}

fn with_budget(decision_us: u64, on_exceeded: &str) -> String {
    STARTER.replacen(
        "[thresholds]",
        &format!("[budget]\ndecision_us = {decision_us}\non_exceeded = \"{on_exceeded}\"\n\n[thresholds]"),
        1,
    )
}

#[test]
fn two_nodes_sharing_redis_see_each_others_events() {
    let prefix = Prefix::new();
    let (mut a, mut b) = (
        controller(&starter_generous(), prefix.backend()),
        controller(&starter_generous(), prefix.backend()),
    );
    for k in 0..5 {
        let d = pay(&mut a, &format!("dec_a{k}"), "t:alice", "t:shop", 300, T0_NS + k * SECOND_NS);
        assert!(d.active.degraded.is_none(), "{:?}", d.active.degraded);
        assert!(d.observed);
    }
    let d = pay(&mut b, "dec_b0", "t:alice", "t:shop", 300, T0_NS + 6 * SECOND_NS);
    assert!(d.active.degraded.is_none(), "{:?}", d.active.degraded);
    assert_eq!(feature(&d, "payer_count_1m"), 5.0, "node B sees node A's five payments");
    // And back: node A sees node B's payment too.
    let d = pay(&mut a, "dec_a5", "t:alice", "t:shop", 300, T0_NS + 7 * SECOND_NS);
    assert_eq!(feature(&d, "payer_count_1m"), 6.0);
    assert_eq!(a.shared_stats().expect("shared").loads_failed, 0);
    assert_eq!(b.shared_stats().expect("shared").records_failed, 0);
}

#[test]
fn window_edges_are_exact_to_the_nanosecond() {
    let prefix = Prefix::new();
    let backend = prefix.backend();
    let window_ns = 60 * SECOND_NS;
    for (k, t) in [T0_NS, T0_NS + 1].into_iter().enumerate() {
        let id = format!("edge{k}");
        let observation = Observation {
            id: &id,
            timestamp_ns: t,
            amount_minor: 100 + k as u64,
            events: vec![(Namespace::Payer, "t:edge".to_string(), "t:shop")],
            pairs: vec![],
        };
        backend.record(&observation).expect("record");
    }
    let count_at = |now_ns: u64| {
        let query = FeatureQuery {
            now_ns,
            windows: vec![WindowRead { namespace: Namespace::Payer, key: "t:edge".into(), window_ns }],
            pairs: vec![],
        };
        let store = backend.load(&query, 100_000_000).expect("load");
        store.window(Namespace::Payer, "t:edge", now_ns, window_ns).count
    };
    // (t − w, t]: an event exactly w old is out, one nanosecond younger is in.
    assert_eq!(count_at(T0_NS + window_ns - 1), 2, "both just inside");
    assert_eq!(count_at(T0_NS + window_ns), 1, "the first exactly one window old: out");
    assert_eq!(count_at(T0_NS + window_ns + 1), 0, "both out");
    assert_eq!(count_at(T0_NS), 1, "the second is in the future of this query");
}

#[test]
fn every_key_has_a_ttl_of_the_horizon() {
    let prefix = Prefix::new();
    let mut node = controller(&starter_generous(), prefix.backend());
    pay(&mut node, "dec_ttl", "t:carol", "t:dave", 1_000, T0_NS);
    let keys = prefix.keys();
    let tag = |t: &str| format!("{}{t}", prefix.0);
    for expected in
        ["payer:t:carol", "payee:t:dave", "device:dev-1", "ip:10.1.2.3", "pp:t:carol", "ad:t:carol"]
    {
        assert!(keys.contains(&tag(expected)), "{expected} missing from {keys:?}");
    }
    let horizon_ms = (FeatureLimits::default().horizon_ns / 1_000_000) as i64;
    let mut c = connection();
    for key in &keys {
        let ttl_ms: i64 = redis::cmd("PTTL").arg(key).query(&mut c).expect("PTTL");
        assert!(ttl_ms > horizon_ms - 60_000 && ttl_ms <= horizon_ms, "{key}: TTL {ttl_ms} ms");
    }
}

#[test]
fn events_beyond_the_per_key_bound_are_trimmed_oldest_first() {
    let prefix = Prefix::new();
    let config = RedisConfig {
        limits: FeatureLimits { events_per_key_max: 10, ..FeatureLimits::default() },
        ..prefix.config()
    };
    let backend = RedisFeatures::new(config).expect("config");
    for k in 0..25u64 {
        let id = format!("trim{k}");
        let observation = Observation {
            id: &id,
            timestamp_ns: T0_NS + k * SECOND_NS,
            amount_minor: k,
            events: vec![(Namespace::Payer, "t:busy".to_string(), "t:shop")],
            pairs: vec![],
        };
        backend.record(&observation).expect("record");
    }
    let card: u64 =
        redis::cmd("ZCARD").arg(format!("{}payer:t:busy", prefix.0)).query(&mut connection()).unwrap();
    assert_eq!(card, 10);
    let now = T0_NS + 30 * SECOND_NS;
    let query = FeatureQuery {
        now_ns: now,
        windows: vec![WindowRead {
            namespace: Namespace::Payer,
            key: "t:busy".into(),
            window_ns: 3_600 * SECOND_NS,
        }],
        pairs: vec![],
    };
    let w = backend.load(&query, 100_000_000).expect("load").window(
        Namespace::Payer,
        "t:busy",
        now,
        3_600 * SECOND_NS,
    );
    assert_eq!(w.count, 10);
    assert_eq!(w.sum_minor, (15..25).sum::<u64>(), "the newest ten are kept");
}

#[test]
fn recording_the_same_decision_twice_counts_it_once() {
    let prefix = Prefix::new();
    let backend = prefix.backend();
    let observation = Observation {
        id: "dec_retry",
        timestamp_ns: T0_NS,
        amount_minor: 5,
        events: vec![(Namespace::Payer, "t:retry".to_string(), "t:shop")],
        pairs: vec![],
    };
    backend.record(&observation).expect("record");
    backend.record(&observation).expect("record again");
    let card: u64 =
        redis::cmd("ZCARD").arg(format!("{}payer:t:retry", prefix.0)).query(&mut connection()).unwrap();
    assert_eq!(card, 1);
}

#[test]
fn redis_down_makes_a_degraded_decision_with_the_rulesets_outcome_quickly() {
    for (on_exceeded, outcome) in
        [("approve", Outcome::Approve), ("decline", Outcome::Decline), ("review", Outcome::Review)]
    {
        // Nothing listens on port 1.
        let config =
            RedisConfig { key_prefix: "puhui:test:down:".into(), ..RedisConfig::new("redis://127.0.0.1:1") };
        let mut node =
            controller(&with_budget(5_000, on_exceeded), Arc::new(RedisFeatures::new(config).unwrap()));
        for k in 0..3u64 {
            let started = Instant::now();
            let d = pay(&mut node, &format!("dec_down{k}"), "t:erin", "t:shop", 100, T0_NS + k);
            assert!(started.elapsed() < Duration::from_millis(100), "took {:?}", started.elapsed());
            assert_eq!(d.active.outcome, outcome);
            let why = d.active.degraded.as_deref().expect("degraded");
            assert!(why.contains("unavailable"), "{why}");
            assert_eq!(d.observed, outcome != Outcome::Decline);
        }
        let stats = node.shared_stats().expect("shared");
        assert_eq!(stats.loads_failed, 3);
        // Fail open: the approved events could not be recorded either; counted, not fatal.
        assert_eq!(stats.records_failed, if outcome == Outcome::Decline { 0 } else { 3 });
    }
}

#[test]
fn a_budget_smaller_than_a_round_trip_degrades_instead_of_waiting() {
    let prefix = Prefix::new();
    let backend =
        Arc::new(RedisFeatures::new(RedisConfig { reconnect_backoff_ms: 0, ..prefix.config() }).unwrap());
    // 1 µs: no Redis round trip fits, even on this machine.
    let mut node = controller(&with_budget(1, "approve"), Arc::clone(&backend));
    let started = Instant::now();
    let d = pay(&mut node, "dec_tiny", "t:frank", "t:shop", 100, T0_NS);
    assert!(started.elapsed() < Duration::from_millis(250), "took {:?}", started.elapsed());
    assert_eq!(d.active.outcome, Outcome::Approve);
    assert!(d.active.degraded.is_some());
    // A normal budget on the same backend works again (a timed-out connection is dropped, never
    // read from again).
    let mut normal = controller(&starter_generous(), backend);
    let d = pay(&mut normal, "dec_normal", "t:frank", "t:shop", 100, T0_NS + 1);
    assert!(d.active.degraded.is_none(), "{:?}", d.active.degraded);
}

#[test]
fn parallel_records_lose_no_event() {
    let prefix = Prefix::new();
    let (threads, per_thread) = (8u64, 200u64);
    let config = RedisConfig {
        limits: FeatureLimits { events_per_key_max: 10_000, ..FeatureLimits::default() },
        ..prefix.config()
    };
    std::thread::scope(|s| {
        for thread in 0..threads {
            let config = config.clone();
            s.spawn(move || {
                let backend = RedisFeatures::new(config).expect("config");
                for k in 0..per_thread {
                    let id = format!("par{thread}_{k}");
                    let payee = format!("t:payee{thread}");
                    let observation = Observation {
                        id: &id,
                        // Same timestamps across threads: members must still be distinct.
                        timestamp_ns: T0_NS + k,
                        amount_minor: 1,
                        events: vec![
                            (Namespace::Payer, "t:hot".to_string(), payee.as_str()),
                            (Namespace::Device, "dev-hot".to_string(), "t:hot"),
                        ],
                        pairs: vec![(Namespace::PayerPayee, "t:hot", payee.as_str())],
                    };
                    backend.record(&observation).expect("record");
                }
            });
        }
    });
    let backend = RedisFeatures::new(config).expect("config");
    let now = T0_NS + per_thread;
    let query = FeatureQuery {
        now_ns: now,
        windows: vec![
            WindowRead { namespace: Namespace::Payer, key: "t:hot".into(), window_ns: 60 * SECOND_NS },
            WindowRead { namespace: Namespace::Device, key: "dev-hot".into(), window_ns: 60 * SECOND_NS },
        ],
        pairs: vec![
            (Namespace::PayerPayee, "t:hot", "t:payee3"),
            (Namespace::PayerPayee, "t:hot", "t:nobody"),
        ],
    };
    let store = backend.load(&query, 500_000_000).expect("load");
    let payer = store.window(Namespace::Payer, "t:hot", now, 60 * SECOND_NS);
    assert_eq!(payer.count, threads * per_thread);
    assert_eq!(payer.distinct_counterparties, threads);
    assert_eq!(store.window(Namespace::Device, "dev-hot", now, 60 * SECOND_NS).count, threads * per_thread);
    assert!(!store.is_new_payee("t:hot", "t:payee3"));
    assert!(store.is_new_payee("t:hot", "t:nobody"));
}

#[test]
fn replaying_the_journal_at_start_up_does_not_record_again() {
    let prefix = Prefix::new();
    let mut online = controller(&starter_generous(), prefix.backend());
    let d = pay(&mut online, "dec_replay", "t:gina", "t:shop", 100, T0_NS);
    assert!(d.observed);
    let card = |c: &mut redis::Connection| -> u64 {
        redis::cmd("ZCARD").arg(format!("{}payer:t:gina", prefix.0)).query(c).unwrap()
    };
    assert_eq!(card(&mut connection()), 1);
    // A restarted node replays its journal: the decision must not enter Redis a second time (a
    // backend of its own prefix stays empty), nor the unused local store.
    let other = Prefix::new();
    let mut restarted = controller(&starter_generous(), other.backend());
    restarted.apply(&RiskRecord::Decision(Box::new(d))).expect("apply");
    assert!(other.keys().is_empty(), "{:?}", other.keys());
    assert_eq!(card(&mut connection()), 1);
    assert_eq!(restarted.features().keys(), 0);
}

#[test]
fn a_record_redis_could_not_run_for_want_of_its_script_runs_before_the_next_load() {
    let prefix = Prefix::new();
    let mut node = controller(&starter_generous(), prefix.backend());
    pay(&mut node, "dec_s0", "t:gina", "t:shop", 300, T0_NS);
    // Redis loses its scripts (a restart, SCRIPT FLUSH): the next record is refused (NOSCRIPT),
    // a reply read only with the next load, which must send it again and load once more.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut connection()).unwrap();
    pay(&mut node, "dec_s1", "t:gina", "t:shop", 300, T0_NS + SECOND_NS);
    let d = pay(&mut node, "dec_s2", "t:gina", "t:shop", 300, T0_NS + 2 * SECOND_NS);
    assert!(d.active.degraded.is_none(), "{:?}", d.active.degraded);
    assert_eq!(feature(&d, "payer_count_1m"), 2.0, "both earlier events counted");
    assert_eq!(node.shared_stats().expect("shared").records_failed, 0);
}
