//! Black-box: two `puhui serve --redis` processes on separate data directories share their velocity
//! counters through the real Redis (127.0.0.1:6379, or `PUHUI_TEST_REDIS`), so a card-testing burst
//! split across both nodes is caught. Keys live under a random prefix and are deleted at the end.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const ADMIN: &str = "adm_redis_black_box_token";

fn redis_url() -> String {
    std::env::var("PUHUI_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `puhui serve`; returns it and its log lines (stderr), read on a thread.
    fn start(dir: &Path, extra: &[&str]) -> (Server, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_puhui"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("PUHUI_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start puhui serve");
        let (tx, logs) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("puhui listening on ").expect("listening line").to_string();
        (Server { child, base }, logs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a log line containing `needle` arrives within 5 s (bounded).
fn logged(logs: &std::sync::mpsc::Receiver<String>, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match logs.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn delete_keys(prefix: &str) {
    let Ok(mut c) =
        redis::Client::open(redis_url()).and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
    else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut c).unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut c);
    }
}

#[tokio::test]
async fn a_card_testing_burst_split_across_two_nodes_is_caught_through_redis() {
    let prefix = format!("puhui:test:{:016x}:", rand::random::<u64>());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The starter ruleset with a generous time budget: the test checks what the nodes share, not
    // how fast Redis answers on a busy machine (the shipped 5 ms budget degrades slow decisions).
    let ruleset = dir_a.path().join("starter-generous-budget.toml");
    let starter =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../rulesets/starter.toml")).unwrap();
    std::fs::write(
        &ruleset,
        format!("{starter}\n[budget]\ndecision_us = 5000000\non_exceeded = \"review\"\n"),
    )
    .unwrap();
    let ruleset = ruleset.to_str().unwrap().to_string();
    let flags = ["--redis", &redis_url(), "--redis-prefix", &prefix, "--ruleset", &ruleset];
    let flags: Vec<&str> = flags.iter().map(|s| &**s).collect();
    let (a, logs_a) = Server::start(dir_a.path(), &flags);
    assert!(logged(&logs_a, "shared by every node"), "node A says its counters are shared");
    let http = reqwest::Client::new();
    let (status, tenant) = post(&http, format!("{}/v1/tenants", a.base), ADMIN, json!({"name": "t"})).await;
    assert_eq!(status, 201, "{tenant}");
    let key = tenant["api_key"].as_str().unwrap().to_string();
    // The same tenant on node B (in a real deployment the nodes share their configuration).
    std::fs::copy(dir_a.path().join("tenants.json"), dir_b.path().join("tenants.json")).unwrap();
    let (b, _logs_b) = Server::start(dir_b.path(), &flags);

    // Twelve tiny payments by one payer, alternating between the nodes: each node decides six.
    let mut last = Value::Null;
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = json!({
            "id": format!("d{i}"), "payer": "w1", "payee": format!("m{i}"), "amount": 100, "currency": "CNY",
            "risk_context": {"device_id": "phone-1", "channel": "app", "kyc_tier": "3"}
        });
        let (status, decision) = post(&http, format!("{}/v1/decisions", node.base), &key, body).await;
        assert_eq!(status, 201, "{decision}");
        last = decision;
    }
    delete_keys(&prefix);
    assert_eq!(
        last["features"]["payer_count_1m"].as_f64(),
        Some(11.0),
        "node B saw both nodes' events: {last}"
    );
    assert!(last["fired"].as_array().unwrap().iter().any(|f| f["rule"] == "card_testing_burst"), "{last}");
    assert_eq!(last["outcome"], "review", "{last}");
    drop((a, b));

    // Without --redis, a node says at start that its counters are its own.
    let dir_c = tempfile::tempdir().unwrap();
    let (_c, logs_c) = Server::start(dir_c.path(), &[]);
    assert!(logged(&logs_c, "velocity counters are per node"), "a node without Redis says so");
}
