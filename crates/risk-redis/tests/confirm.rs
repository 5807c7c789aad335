//! Records sent and not yet confirmed when a backend is dropped (a node stopping) reach Redis's
//! windows. Its own test binary: it pauses Redis's writes for a moment, which would stall the
//! other Redis tests running beside it.

use std::time::Duration;

use puhui_risk::{FeatureQuery, Namespace, Observation, SharedFeatures, WindowRead};
use puhui_risk_redis::{RedisConfig, RedisFeatures};

const T0_NS: u64 = 1_750_000_000_123_456_789;
const SECOND_NS: u64 = 1_000_000_000;

fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("Redis at 127.0.0.1:6379 (start it: see .ci/run)")
}

#[test]
fn records_sent_just_before_the_backend_is_dropped_are_not_lost() {
    let url = std::env::var("PUHUI_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let prefix = format!("puhui:test:{:016x}:", rand::random::<u64>());
    let config =
        RedisConfig { key_prefix: prefix.clone(), record_timeout_ms: 5_000, ..RedisConfig::new(&url) };
    let records = 10u64;
    let backend = RedisFeatures::new(config.clone()).expect("config");
    backend.ping(2_000).expect("Redis answers");
    // Redis holds every write for 300 ms: the records are sent, none is answered before the drop.
    let mut admin = connection(&url);
    redis::cmd("CLIENT").arg("PAUSE").arg(300).arg("WRITE").query::<()>(&mut admin).expect("CLIENT PAUSE");
    for k in 0..records {
        let id = format!("drop{k}");
        let observation = Observation {
            id: &id,
            timestamp_ns: T0_NS + k,
            amount_minor: 1,
            events: vec![(Namespace::Payer, "t:leaving".to_string(), "t:shop")],
            pairs: vec![],
        };
        backend.record(&observation).expect("record");
    }
    drop(backend);
    let reader = RedisFeatures::new(config).expect("config");
    let now = T0_NS + records;
    let query = FeatureQuery {
        now_ns: now,
        windows: vec![WindowRead {
            namespace: Namespace::Payer,
            key: "t:leaving".into(),
            window_ns: 60 * SECOND_NS,
        }],
        pairs: vec![],
    };
    let store = reader.load(&query, 2_000_000_000).expect("load");
    let count = store.window(Namespace::Payer, "t:leaving", now, 60 * SECOND_NS).count;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut admin).expect("KEYS");
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut admin);
    }
    assert_eq!(count, records, "records sent before the drop were lost");
}
