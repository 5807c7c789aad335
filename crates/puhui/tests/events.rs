//! Events against the real services: the `puhui serve` binary, NATS JetStream on 127.0.0.1:4222 and
//! local webhook receivers. Every test uses its own stream name and subject prefix and deletes its
//! stream, so runs repeat. No timed assertions: waits poll with bounded deadlines.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

mod common;
use common::Server;

const ADMIN: &str = "adm_events_test_token_0123456789";
const NATS_URL: &str = "nats://127.0.0.1:4222";
const DEADLINE: Duration = Duration::from_secs(60);

fn serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    Server::spawn(dir, extra, env, ADMIN)
}

struct Api {
    http: reqwest::Client,
    key: String,
}

impl Api {
    async fn tenant(server: &Server) -> Api {
        let http = reqwest::Client::new();
        let r = http
            .post(server.url("/v1/tenants"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(json!({"name": "events"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        Api { http, key: body["api_key"].as_str().unwrap().to_string() }
    }

    async fn call(
        &self,
        server: &Server,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self.http.request(method.parse().unwrap(), server.url(path)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn post(&self, server: &Server, path: &str, body: Value) -> (u16, Value) {
        self.call(server, "POST", path, Some(body)).await.unwrap()
    }

    async fn get(&self, server: &Server, path: &str) -> (u16, Value) {
        self.call(server, "GET", path, None).await.unwrap()
    }

    async fn setup(&self, server: &Server) {
        for (id, floor) in [("bank", false), ("alice", true)] {
            let body = json!({"id": id, "currency": "CNY", "debits_must_not_exceed_credits": floor});
            assert_eq!(self.post(server, "/v1/accounts", body).await.0, 201);
        }
    }

    /// All of this tenant's events through `GET /v1/events`, paging with `starting_after`.
    async fn all_events(&self, server: &Server) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for _ in 0..10_000 {
            let path = match out.last() {
                Some(e) => format!("/v1/events?limit=100&starting_after={}", e["id"].as_str().unwrap()),
                None => "/v1/events?limit=100".to_string(),
            };
            let (status, page) = self.get(server, &path).await;
            assert_eq!(status, 200, "{page}");
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            if !page["has_more"].as_bool().unwrap() {
                return out;
            }
        }
        panic!("too many pages");
    }
}

fn transfer(id: &str, amount: u64) -> Value {
    json!({"id": id, "debit_account_id": "bank", "credit_account_id": "alice", "amount": amount, "currency": "CNY"})
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{name}{}x{nanos}", std::process::id())
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Stream {
    js: async_nats::jetstream::Context,
    name: String,
}

impl Stream {
    async fn connect(name: &str) -> Stream {
        let client = async_nats::connect(NATS_URL).await.expect("NATS on 127.0.0.1:4222 (.ci/run starts it)");
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(name).await;
        delete_streams_of_dead_runs(&js).await;
        Stream { js, name: name.to_string() }
    }

    /// Every message of the stream as (stream sequence, headers, subject, payload), read with a pull
    /// consumer from the first message (what a partner system replaying the stream does).
    async fn messages(&self) -> Vec<(u64, BTreeMap<String, String>, String, Value)> {
        use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        use futures_util::StreamExt;
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        let total = stream.info().await.unwrap().state.messages as usize;
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let mut batch = consumer.fetch().max_messages(500).messages().await.unwrap();
            while let Some(m) = batch.next().await {
                let m = m.unwrap();
                let info = m.info().unwrap();
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .map(|(k, v)| {
                        (k.to_string(), v.first().map(|v| v.as_str().to_string()).unwrap_or_default())
                    })
                    .collect();
                let payload: Value = serde_json::from_slice(&m.payload).unwrap();
                out.push((info.stream_sequence, headers, m.subject.to_string(), payload));
            }
        }
        out
    }

    /// Messages in the stream (0 before the relay created it).
    async fn count(&self) -> u64 {
        let Ok(mut stream) = self.js.get_stream(&self.name).await else { return 0 };
        stream.info().await.map_or(0, |i| i.state.messages)
    }

    async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// Streams these tests named `<PREFIX><pid>x<nanos>` whose process is gone (a run that panicked
/// before deleting its stream); a concurrent run's streams are left alone.
async fn delete_streams_of_dead_runs(js: &async_nats::jetstream::Context) {
    use futures_util::StreamExt;
    let mut names = js.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        let pid = ["PUHUI_TEST_", "PUHUI_DOWN_"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        // kill(pid, 0) fails with ESRCH when no such process exists.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            stale.push(name);
        }
        if stale.len() >= 100 {
            break;
        }
    }
    for name in stale {
        let _ = js.delete_stream(&name).await;
    }
}

/// The outbox invariant end to end: every committed change reaches JetStream once (no gap, no
/// duplicate), across a crash between commit and publish, a SIGKILL and a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_reaches_jetstream_without_gaps_or_duplicates_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("PUHUI_TEST_");
    let prefix = unique("puhuitest");
    let stream = Stream::connect(&name).await;
    let nats = ["--nats", NATS_URL, "--nats-stream", &name, "--nats-subject-prefix", &prefix];
    let mut acked: Vec<String> = Vec::new();

    // 1. The relay aborts the process just before publishing journal entry 20 (durable, unpublished).
    let server = serve(dir.path(), &nats, &[("PUHUI_FAULT_ABORT_BEFORE_PUBLISH_SEQ", "20")]);
    let api = Api::tenant(&server).await;
    api.setup(&server).await;
    for i in 0..200 {
        let id = format!("a{i}");
        match api.call(&server, "POST", "/v1/transfers", Some(transfer(&id, 1))).await {
            Ok((201, _)) => acked.push(id),
            Ok((status, body)) => panic!("{status} {body}"),
            Err(_) => break, // the process is gone
        }
    }
    assert!(!server.wait_exit(DEADLINE).success(), "the fault point must have fired");
    assert!(acked.len() >= 5, "entry 20 is one of the first transfers");

    // 2. Restart: the relay recovers its cursor from the stream and publishes 20 onwards; then
    // SIGKILL right after more commits (their events may not be published yet).
    let server = serve(dir.path(), &nats, &[]);
    for i in 0..30 {
        let id = format!("b{i}");
        assert_eq!(api.post(&server, "/v1/transfers", transfer(&id, 1)).await.0, 201);
        acked.push(id);
    }
    server.kill9();

    // 3. Restart, a few more, and a clean stop (the relay drains what is durable).
    let server = serve(dir.path(), &nats, &[]);
    let freeze = api.post(&server, "/v1/accounts/alice/freeze", json!({})).await;
    assert_eq!(freeze.0, 200);
    let unfreeze = api.post(&server, "/v1/accounts/alice/unfreeze", json!({})).await;
    assert_eq!(unfreeze.0, 200);
    // A transfer decided by risk control: a decision.created event beside transfer.created.
    let mut decided = transfer("risky", 1);
    decided["risk_context"] = json!({"device_id": "phone-1", "kyc_tier": "3"});
    assert_eq!(api.post(&server, "/v1/transfers", decided).await.0, 201);
    for i in 0..10 {
        let id = format!("c{i}");
        assert_eq!(api.post(&server, "/v1/transfers", transfer(&id, 1)).await.0, 201);
        acked.push(id);
    }
    let events = poll("the last transfer in GET /v1/events", async || {
        let events = api.all_events(&server).await;
        events.iter().any(|e| e["data"]["object"]["id"] == "c9").then_some(events)
    })
    .await;
    let expected = events.len() as u64;
    poll("every event in the stream", async || (stream.count().await >= expected).then_some(())).await;
    assert!(server.terminate().success());

    let messages = stream.messages().await;
    assert_no_duplicates_no_gaps(&messages, &events);
    for (_, headers, subject, payload) in &messages {
        let seq: u64 = headers["Puhui-Seq"].parse().unwrap();
        let journal = &headers["Puhui-Journal"];
        assert_eq!(headers["Nats-Msg-Id"], format!("{journal}:{seq}"));
        assert_eq!(payload["sequence"], seq);
        assert_eq!(payload["id"], format!("evt_{seq}"));
        assert_eq!(
            subject,
            &format!("{prefix}.{}.{}", subject.split('.').nth(1).unwrap(), payload["type"].as_str().unwrap())
        );
    }
    // The stream holds exactly what GET /v1/events lists, byte for byte the same objects.
    assert_eq!(messages.len(), events.len());
    let by_id: BTreeMap<&str, &Value> =
        messages.iter().map(|m| (m.3["id"].as_str().unwrap(), &m.3)).collect();
    for e in &events {
        assert_eq!(by_id.get(e["id"].as_str().unwrap()), Some(&e), "{e}");
    }
    // Every acknowledged transfer is there once.
    let created: Vec<&str> = messages
        .iter()
        .filter(|m| m.3["type"] == "transfer.created")
        .map(|m| m.3["data"]["object"]["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert_eq!(created.iter().filter(|c| *c == id).count(), 1, "transfer {id}");
    }
    let types: HashSet<&str> = messages.iter().map(|m| m.3["type"].as_str().unwrap()).collect();
    for t in ["account.created", "account.frozen", "account.unfrozen", "transfer.created", "decision.created"]
    {
        assert!(types.contains(t), "no {t} in {types:?}");
    }
    let decision = messages.iter().find(|m| m.3["type"] == "decision.created").unwrap();
    assert_eq!(decision.3["data"]["object"]["id"], "risky");
    assert_eq!(decision.3["data"]["object"]["outcome"], "approve");
    stream.delete().await;
}

/// NATS unreachable: the API keeps serving (events wait in the journal), and they reach the stream
/// once a relay can publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_serving_while_nats_is_down_and_events_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("PUHUI_DOWN_");
    let prefix = unique("puhuidown");
    let stream = Stream::connect(&name).await;
    // Port 9 (discard) on loopback: nothing listens, connections are refused.
    let down = ["--nats", "nats://127.0.0.1:9", "--nats-stream", &name, "--nats-subject-prefix", &prefix];
    let server = serve(dir.path(), &down, &[]);
    let api = Api::tenant(&server).await;
    api.setup(&server).await;
    for i in 0..20 {
        assert_eq!(api.post(&server, "/v1/transfers", transfer(&format!("d{i}"), 1)).await.0, 201);
    }
    poll("22 events in GET /v1/events", async || (api.all_events(&server).await.len() == 22).then_some(()))
        .await;
    assert!(server.terminate().success());
    let nats = ["--nats", NATS_URL, "--nats-stream", &name, "--nats-subject-prefix", &prefix];
    let server = serve(dir.path(), &nats, &[]);
    poll("the backlog in the stream", async || (stream.count().await == 22).then_some(())).await;
    assert!(server.terminate().success());
    stream.delete().await;
}

#[derive(Clone, Default)]
struct Receiver {
    /// Every request: (headers, raw body, the status answered).
    got: Arc<Mutex<Vec<(BTreeMap<String, String>, Vec<u8>, u16)>>>,
    /// Requests still to fail with 500.
    fail_next: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start(fail_first: u32) -> (Receiver, String) {
        let receiver = Receiver::default();
        *receiver.fail_next.lock().unwrap() = fail_first;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let status = {
                        let mut fail = state.fail_next.lock().unwrap();
                        if *fail > 0 {
                            *fail -= 1;
                            500
                        } else {
                            200
                        }
                    };
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    state.got.lock().unwrap().push((headers, body.to_vec(), status));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn requests(&self) -> Vec<(BTreeMap<String, String>, Vec<u8>, u16)> {
        self.got.lock().unwrap().clone()
    }
}

/// An independent verifier, as a partner would write it (not the server's signing code): parse
/// `t=…,v1=…`, refuse a timestamp more than 300 s off, compute HMAC-SHA256(secret, "<t>.<body>"),
/// compare in constant time with each `v1`.
fn verify_signature(header: &str, body: &[u8], secret: &str) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    if (now - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    signatures.iter().any(|s| {
        let bytes: Option<Vec<u8>> =
            (0..s.len() / 2).map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        bytes.is_some_and(|b| {
            b.len() == 32 && b.iter().zip(expected.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_isolated_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("PUHUI_WEBHOOK_RETRY_BASE_MS", "50"), ("PUHUI_WEBHOOK_ALLOW_PRIVATE", "1")];
    let server = serve(dir.path(), &[], &env);
    let a = Api::tenant(&server).await;
    let b = Api::tenant(&server).await;
    let (hook_a, url_a) = Receiver::start(3).await;
    let (hook_b, url_b) = Receiver::start(0).await;

    // Registration: the secret is shown once; bad input answers the error envelope.
    let (status, bad) = a.post(&server, "/v1/webhook_endpoints", json!({"url": "ftp://x/"})).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("invalid_request")));
    let (status, bad) = a
        .post(&server, "/v1/webhook_endpoints", json!({"url": url_a, "enabled_events": ["transfer.nope"]}))
        .await;
    assert_eq!((status, bad["error"]["param"].as_str()), (400, Some("enabled_events")));
    let (status, ep_a) = a
        .post(&server, "/v1/webhook_endpoints", json!({"url": url_a, "enabled_events": ["transfer.*"]}))
        .await;
    assert_eq!(status, 201, "{ep_a}");
    let secret_a = ep_a["secret"].as_str().unwrap().to_string();
    let ep_a_id = ep_a["id"].as_str().unwrap().to_string();
    let (status, ep_b) = b.post(&server, "/v1/webhook_endpoints", json!({"url": url_b})).await;
    assert_eq!(status, 201);
    let (_, fetched) = a.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}")).await;
    assert!(fetched.get("secret").is_none(), "the secret is shown only once");

    // Tenant isolation of endpoints.
    assert_eq!(b.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}")).await.0, 404);
    assert_eq!(
        b.call(&server, "DELETE", &format!("/v1/webhook_endpoints/{ep_a_id}"), None).await.unwrap().0,
        404
    );
    let (_, listed) = b.get(&server, "/v1/webhook_endpoints").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], ep_b["id"]);

    a.setup(&server).await;
    b.setup(&server).await;
    assert_eq!(a.post(&server, "/v1/transfers", transfer("pay-a", 5)).await.0, 201);
    assert_eq!(b.post(&server, "/v1/transfers", transfer("pay-b", 7)).await.0, 201);

    // A's receiver fails 3 times, then takes the delivery.
    let delivered =
        poll("a successful delivery to A", async || hook_a.requests().into_iter().find(|r| r.2 == 200)).await;
    let (headers, body, _) = delivered;
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "transfer.created");
    assert_eq!(event["data"]["object"]["id"], "pay-a");
    assert_eq!(headers["puhui-event-id"], event["id"].as_str().unwrap());
    assert!(verify_signature(&headers["puhui-signature"], &body, &secret_a), "{headers:?}");
    assert!(!verify_signature(&headers["puhui-signature"], &body, "whsec_wrong"));
    let mut tampered = body.clone();
    tampered[body.len() / 2] ^= 1;
    assert!(!verify_signature(&headers["puhui-signature"], &tampered, &secret_a));
    let attempts: Vec<_> = hook_a
        .requests()
        .into_iter()
        .filter(|r| r.0["puhui-event-id"] == headers["puhui-event-id"])
        .collect();
    assert_eq!(attempts.iter().map(|r| r.2).collect::<Vec<_>>(), vec![500, 500, 500, 200]);
    assert!(attempts.iter().all(|r| r.1 == body), "every attempt carries the same body");
    // The delivery log says so.
    let (_, log) = a.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}/deliveries")).await;
    let d = &log["data"][0];
    assert_eq!((d["status"].as_str(), d["attempts"].as_u64()), (Some("succeeded"), Some(4)), "{log}");
    assert_eq!(d["event_id"], event["id"]);
    assert_eq!(b.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}/deliveries")).await.0, 404);

    // Isolation of events: B's receiver gets only B's events (all types), A's only A's transfers.
    poll("B's transfer at B", async || {
        hook_b.requests().iter().any(|r| String::from_utf8_lossy(&r.1).contains("pay-b")).then_some(())
    })
    .await;
    assert!(hook_a.requests().iter().all(|r| {
        let e: Value = serde_json::from_slice(&r.1).unwrap();
        e["type"].as_str().unwrap().starts_with("transfer.") && e["data"]["object"]["id"] != "pay-b"
    }));
    assert!(hook_b.requests().iter().all(|r| !String::from_utf8_lossy(&r.1).contains("pay-a")));
    let evt_a = event["id"].as_str().unwrap().to_string();
    assert_eq!(a.get(&server, &format!("/v1/events/{evt_a}")).await.0, 200);
    assert_eq!(b.get(&server, &format!("/v1/events/{evt_a}")).await.0, 404);
    assert!(b.all_events(&server).await.iter().all(|e| e["id"] != evt_a.as_str()));
    let (status, only) = a.get(&server, "/v1/events?type=account.created").await;
    assert_eq!(status, 200);
    assert_eq!(only["data"].as_array().unwrap().len(), 2);
    assert_eq!(a.get(&server, "/v1/events?type=nope").await.0, 400);
    assert_eq!(a.get(&server, "/v1/events?starting_after=zz").await.0, 400);
    assert_eq!(b.post(&server, &format!("/v1/events/{evt_a}/redeliver"), json!({})).await.0, 404);

    // Rotation: the old secret keeps signing (two v1) during its grace period.
    let (status, rotated) = a
        .post(
            &server,
            &format!("/v1/webhook_endpoints/{ep_a_id}/rotate_secret"),
            json!({"expire_old_secret_after_secs": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret_a);
    let before = hook_a.requests().len();
    let (status, redelivered) = a.post(&server, &format!("/v1/events/{evt_a}/redeliver"), json!({})).await;
    assert_eq!(status, 201, "{redelivered}");
    let (headers, body, _) = poll("the redelivery", async || hook_a.requests().get(before).cloned()).await;
    assert_eq!(headers["puhui-event-id"], evt_a);
    assert_eq!(headers["puhui-signature"].matches("v1=").count(), 2);
    assert!(verify_signature(&headers["puhui-signature"], &body, &secret_a));
    assert!(verify_signature(&headers["puhui-signature"], &body, &new_secret));

    // Endpoints, secrets, the delivery log and pending deliveries survive a restart. A delivery
    // that is failing when the server stops is retried by the next one.
    *hook_a.fail_next.lock().unwrap() = u32::MAX;
    assert_eq!(a.post(&server, "/v1/transfers", transfer("pay-a3", 1)).await.0, 201);
    poll("a failed attempt of pay-a3", async || {
        hook_a
            .requests()
            .iter()
            .any(|r| r.2 == 500 && String::from_utf8_lossy(&r.1).contains("pay-a3"))
            .then_some(())
    })
    .await;
    assert!(server.terminate().success());
    *hook_a.fail_next.lock().unwrap() = 0;
    let server = serve(dir.path(), &[], &env);
    let (_, body, _) = poll("pay-a3 delivered after the restart", async || {
        hook_a.requests().into_iter().find(|r| r.2 == 200 && String::from_utf8_lossy(&r.1).contains("pay-a3"))
    })
    .await;
    let evt_a3 = serde_json::from_slice::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let a3 = poll("pay-a3's delivery log entry", async || {
        let (_, log) = a.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}/deliveries?limit=100")).await;
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_id"] == evt_a3.as_str() && d["status"] == "succeeded")
            .cloned()
    })
    .await;
    assert!(a3["attempts"].as_u64().unwrap() >= 2, "{a3}");
    let (_, listed) = a.get(&server, "/v1/webhook_endpoints").await;
    assert_eq!(listed["data"][0]["id"], ep_a_id.as_str());
    assert_eq!(listed["data"][0]["live_secrets"], 2);
    let (_, log) = a.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}/deliveries?limit=1")).await;
    assert_eq!(log["has_more"], true);
    assert_eq!(a.post(&server, "/v1/transfers", transfer("pay-a2", 1)).await.0, 201);
    let (headers, body, _) = poll("a delivery after the restart", async || {
        hook_a.requests().into_iter().find(|r| String::from_utf8_lossy(&r.1).contains("pay-a2"))
    })
    .await;
    assert!(verify_signature(&headers["puhui-signature"], &body, &new_secret));

    // Deleting stops deliveries.
    let (status, deleted) =
        a.call(&server, "DELETE", &format!("/v1/webhook_endpoints/{ep_a_id}"), None).await.unwrap();
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)));
    assert_eq!(a.get(&server, &format!("/v1/webhook_endpoints/{ep_a_id}")).await.0, 404);
    assert!(server.terminate().success());
}

// ------------------------------------------------------------------------------------------------
// On PostgreSQL: several `puhui serve --store postgres://…` nodes on one schema (a fresh one per
// test, dropped at the end). Tenants, keys and the admin token live in the database, so every node
// knows every tenant.

fn pg_store(schema: &puhui_store_pg::testing::TestSchema) -> String {
    format!("{}?schema={}", schema.url(), schema.name())
}

/// Runs `body` on a runtime: the schema's PostgreSQL client blocks, so these tests are plain
/// `#[test]`s that enter a runtime for the HTTP part only.
fn run<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(body)
}

/// Every node serves every node's events, byte for byte the same.
#[test]
fn events_on_postgres_are_served_by_every_node() {
    let schema = puhui_store_pg::testing::TestSchema::new("events_nodes");
    run(pg_events_on_postgres_are_served_by_every_node(pg_store(&schema)));
}

async fn pg_events_on_postgres_are_served_by_every_node(store: String) {
    let dir = tempfile::tempdir().unwrap();
    let env = [("PUHUI_STORE", store.as_str())];
    let a_node = serve(dir.path(), &[], &env);
    let api = Api::tenant(&a_node).await;
    let other = Api::tenant(&a_node).await;
    let b_node = serve(dir.path(), &[], &env);
    api.setup(&a_node).await;
    assert_eq!(api.post(&a_node, "/v1/transfers", transfer("via-a", 3)).await.0, 201);
    assert_eq!(api.post(&b_node, "/v1/transfers", transfer("via-b", 4)).await.0, 201);
    let has = |events: &[Value], id: &str| events.iter().any(|e| e["data"]["object"]["id"] == id);
    for node in [&a_node, &b_node] {
        poll("both transfers on every node", async || {
            let events = api.all_events(node).await;
            (has(&events, "via-a") && has(&events, "via-b")).then_some(())
        })
        .await;
    }
    let on_a = api.all_events(&a_node).await;
    let on_b = api.all_events(&b_node).await;
    assert_eq!(on_a, on_b, "the two nodes list the same events");
    // 2 accounts and 2 transfers (risk records of transfers without risk context are not events).
    let types: Vec<&str> = on_a.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "account.created").count(), 2, "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "transfer.created").count(), 2, "{types:?}");
    assert!(on_a.windows(2).all(|w| w[0]["sequence"].as_u64() < w[1]["sequence"].as_u64()));
    // One event by id, from the node that did not write it; another tenant's is a 404.
    let via_a = on_a.iter().find(|e| e["data"]["object"]["id"] == "via-a").unwrap();
    let id = via_a["id"].as_str().unwrap();
    let (status, got) = api.get(&b_node, &format!("/v1/events/{id}")).await;
    assert_eq!((status, &got), (200, via_a));
    assert_eq!(other.get(&b_node, &format!("/v1/events/{id}")).await.0, 404);
    assert_eq!(other.all_events(&b_node).await.len(), 0);
    let (status, only) = api.get(&b_node, "/v1/events?type=transfer.*").await;
    assert_eq!((status, only["data"].as_array().unwrap().len()), (200, 2));
    // The verifiable-journal endpoints stay embedded-only.
    let (status, body) = api.get(&a_node, "/v1/journal/checkpoints/latest").await;
    assert_eq!((status, body["error"]["code"].as_str()), (501, Some("not_available")));
    assert!(a_node.terminate().success());
    assert!(b_node.terminate().success());
}

/// The outbox on PostgreSQL with two relaying nodes: one publishes at a time (a lease); when it is
/// killed (SIGKILL) the other takes over from the stream's last message. The stream ends with every
/// event once: no gap, no duplicate.
#[test]
fn outbox_on_postgres_fails_over_between_nodes_without_gaps_or_duplicates() {
    let schema = puhui_store_pg::testing::TestSchema::new("events_relay");
    run(pg_outbox_on_postgres_fails_over_between_nodes_without_gaps_or_duplicates(pg_store(&schema)));
}

async fn pg_outbox_on_postgres_fails_over_between_nodes_without_gaps_or_duplicates(store: String) {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("PUHUI_TEST_");
    let prefix = unique("puhuitest");
    let stream = Stream::connect(&name).await;
    let nats = ["--nats", NATS_URL, "--nats-stream", &name, "--nats-subject-prefix", &prefix];
    let env = [("PUHUI_STORE", store.as_str())];
    let mut acked: Vec<String> = Vec::new();

    // Node A alone: it takes the relay lease and publishes.
    let a_node = serve(dir.path(), &nats, &env);
    let api = Api::tenant(&a_node).await;
    api.setup(&a_node).await;
    poll("node A publishing", async || (stream.count().await >= 2).then_some(())).await;
    // Node B stands by (one holder of the relay lease while both run); both take writes.
    let b_node = serve(dir.path(), &nats, &env);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(lease_holders(&store, &format!("nats-relay:{name}")).await, 1);
    for i in 0..40 {
        let (node, id) = if i % 2 == 0 { (&a_node, format!("a{i}")) } else { (&b_node, format!("b{i}")) };
        assert_eq!(api.post(node, "/v1/transfers", transfer(&id, 1)).await.0, 201);
        acked.push(id);
    }
    // A burst, then kill the relaying node at once (events still unpublished, very likely); B takes
    // over the lease.
    let burst: Vec<Value> = (0..200).map(|i| transfer(&format!("burst{i}"), 1)).collect();
    let (status, body) = api.post(&b_node, "/v1/transfers/batch", json!({ "transfers": burst })).await;
    assert_eq!((status, body["ok"].as_u64()), (200, Some(200)), "{body}");
    acked.extend((0..200).map(|i| format!("burst{i}")));
    a_node.kill9();
    println!("in the stream when the relaying node was killed: {}", stream.count().await);
    poll("node B holding the relay lease", async || {
        (lease_holders(&store, &format!("nats-relay:{name}")).await == 1).then_some(())
    })
    .await;
    for i in 0..40 {
        let id = format!("c{i}");
        assert_eq!(api.post(&b_node, "/v1/transfers", transfer(&id, 1)).await.0, 201);
        acked.push(id);
    }
    let events = poll("the last transfer in GET /v1/events", async || {
        let events = api.all_events(&b_node).await;
        events.iter().any(|e| e["data"]["object"]["id"] == "c39").then_some(events)
    })
    .await;
    let expected = events.len() as u64;
    poll("every event in the stream", async || (stream.count().await >= expected).then_some(())).await;
    assert!(b_node.terminate().success());

    let messages = stream.messages().await;
    assert_no_duplicates_no_gaps(&messages, &events);
    let journals: HashSet<&str> = messages.iter().map(|m| m.1["Puhui-Journal"].as_str()).collect();
    assert_eq!(journals.len(), 1, "one journal id per database: {journals:?}");
    for (_, headers, _, payload) in &messages {
        let seq: u64 = headers["Puhui-Seq"].parse().unwrap();
        assert_eq!(headers["Nats-Msg-Id"], format!("{}:{seq}", headers["Puhui-Journal"]));
        assert_eq!(payload["id"], format!("evt_{seq}"));
    }
    let by_id: BTreeMap<&str, &Value> =
        messages.iter().map(|m| (m.3["id"].as_str().unwrap(), &m.3)).collect();
    for e in &events {
        assert_eq!(by_id.get(e["id"].as_str().unwrap()), Some(&e), "{e}");
    }
    let created: Vec<&str> = messages
        .iter()
        .filter(|m| m.3["type"] == "transfer.created")
        .map(|m| m.3["data"]["object"]["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert_eq!(created.iter().filter(|c| *c == id).count(), 1, "transfer {id}");
    }
    stream.delete().await;
}

/// How many sessions hold the lease `name` (a granted advisory lock on its key).
async fn lease_holders(store: &str, name: &str) -> i64 {
    let (url, schema) = puhui_store_pg::split_schema(store);
    let key = format!("puhui-lease:{name}");
    tokio::task::spawn_blocking(move || {
        let mut client = puhui_store_pg::connect(&url, schema.as_deref()).unwrap();
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = hashtext(current_schema())::oid AND objid = hashtext($1)::oid",
                &[&key],
            )
            .unwrap();
        row.get::<_, i64>(0)
    })
    .await
    .unwrap()
}

/// Webhooks on PostgreSQL: an endpoint made on one node, managed from another, deliveries signed
/// and retried by whichever node holds the dispatcher lease, and taken over when it is killed.
#[test]
fn webhooks_on_postgres_are_shared_by_nodes_signed_retried_and_fail_over() {
    let schema = puhui_store_pg::testing::TestSchema::new("webhooks_nodes");
    run(pg_webhooks_on_postgres_are_shared_by_nodes_signed_retried_and_fail_over(pg_store(&schema)));
}

async fn pg_webhooks_on_postgres_are_shared_by_nodes_signed_retried_and_fail_over(store: String) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PUHUI_STORE", store.as_str()),
        ("PUHUI_WEBHOOK_RETRY_BASE_MS", "50"),
        ("PUHUI_WEBHOOK_ALLOW_PRIVATE", "1"),
    ];
    let a_node = serve(dir.path(), &[], &env);
    let a = Api::tenant(&a_node).await;
    let b = Api::tenant(&a_node).await;
    let b_node = serve(dir.path(), &[], &env);
    let (hook, url) = Receiver::start(3).await;

    // Created on A; seen, and its secret kept, on B.
    let (status, ep) =
        a.post(&a_node, "/v1/webhook_endpoints", json!({"url": url, "enabled_events": ["transfer.*"]})).await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_string();
    let ep_id = ep["id"].as_str().unwrap().to_string();
    let (status, fetched) = a.get(&b_node, &format!("/v1/webhook_endpoints/{ep_id}")).await;
    assert_eq!((status, &fetched["url"]), (200, &json!(url)));
    assert!(fetched.get("secret").is_none(), "the secret is shown only once");
    assert_eq!(b.get(&b_node, &format!("/v1/webhook_endpoints/{ep_id}")).await.0, 404);
    let (_, listed) = a.get(&b_node, "/v1/webhook_endpoints").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // A transfer through B: delivered after 3 failures, signed with the endpoint's secret.
    a.setup(&b_node).await;
    assert_eq!(a.post(&b_node, "/v1/transfers", transfer("pay-1", 5)).await.0, 201);
    let (headers, body, _) =
        poll("a successful delivery", async || hook.requests().into_iter().find(|r| r.2 == 200)).await;
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["data"]["object"]["id"].as_str()),
        (Some("transfer.created"), Some("pay-1"))
    );
    assert!(verify_signature(&headers["puhui-signature"], &body, &secret), "{headers:?}");
    assert!(!verify_signature(&headers["puhui-signature"], &body, "whsec_wrong"));
    let attempts: Vec<u16> = hook
        .requests()
        .iter()
        .filter(|r| r.0["puhui-event-id"] == headers["puhui-event-id"])
        .map(|r| r.2)
        .collect();
    assert_eq!(attempts, vec![500, 500, 500, 200]);
    assert!(hook.requests().iter().all(|r| !String::from_utf8_lossy(&r.1).contains("account.created")));
    // The delivery log, from either node.
    for node in [&a_node, &b_node] {
        let d = poll("the delivery log", async || {
            let (_, log) = a.get(node, &format!("/v1/webhook_endpoints/{ep_id}/deliveries")).await;
            let d = log["data"][0].clone();
            (d["status"] == "succeeded").then_some(d)
        })
        .await;
        assert_eq!((d["attempts"].as_u64(), &d["event_id"]), (Some(4), &event["id"]), "{d}");
    }
    assert_eq!(b.get(&a_node, &format!("/v1/webhook_endpoints/{ep_id}/deliveries")).await.0, 404);

    // Rotation on B, redelivery on A: signed with both secrets.
    let (status, rotated) = a
        .post(
            &b_node,
            &format!("/v1/webhook_endpoints/{ep_id}/rotate_secret"),
            json!({"expire_old_secret_after_secs": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    let evt = event["id"].as_str().unwrap().to_string();
    let before = hook.requests().len();
    let (status, redelivered) = a.post(&a_node, &format!("/v1/events/{evt}/redeliver"), json!({})).await;
    assert_eq!(status, 201, "{redelivered}");
    assert_eq!(b.post(&a_node, &format!("/v1/events/{evt}/redeliver"), json!({})).await.0, 404);
    let (headers, body, _) = poll("the redelivery", async || hook.requests().get(before).cloned()).await;
    assert_eq!(headers["puhui-event-id"], evt);
    assert_eq!(headers["puhui-signature"].matches("v1=").count(), 2);
    assert!(verify_signature(&headers["puhui-signature"], &body, &secret));
    assert!(verify_signature(&headers["puhui-signature"], &body, &new_secret));

    // Node A (the dispatcher: it started first) is killed while a delivery is failing; B takes over
    // its retries from the database.
    assert_eq!(lease_holders(&store, "webhook-dispatcher").await, 1);
    *hook.fail_next.lock().unwrap() = u32::MAX;
    assert_eq!(a.post(&b_node, "/v1/transfers", transfer("pay-2", 1)).await.0, 201);
    poll("a failed attempt of pay-2", async || {
        hook.requests()
            .iter()
            .any(|r| r.2 == 500 && String::from_utf8_lossy(&r.1).contains("pay-2"))
            .then_some(())
    })
    .await;
    a_node.kill9();
    *hook.fail_next.lock().unwrap() = 0;
    let (headers, body, _) = poll("pay-2 delivered after the dispatcher died", async || {
        hook.requests().into_iter().find(|r| r.2 == 200 && String::from_utf8_lossy(&r.1).contains("pay-2"))
    })
    .await;
    assert!(verify_signature(&headers["puhui-signature"], &body, &new_secret));
    let evt2 = serde_json::from_slice::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let d = poll("pay-2's delivery log entry", async || {
        let (_, log) = a.get(&b_node, &format!("/v1/webhook_endpoints/{ep_id}/deliveries?limit=100")).await;
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_id"] == evt2.as_str() && d["status"] == "succeeded")
            .cloned()
    })
    .await;
    assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");

    // Deleting (on B) stops deliveries.
    let (status, deleted) =
        a.call(&b_node, "DELETE", &format!("/v1/webhook_endpoints/{ep_id}"), None).await.unwrap();
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)));
    assert_eq!(a.get(&b_node, &format!("/v1/webhook_endpoints/{ep_id}")).await.0, 404);
    assert!(b_node.terminate().success());
}

/// A stream's messages against the events an independent reader (the events index behind
/// `GET /v1/events`) found in the journal. No duplicates: each journal sequence once (JetStream
/// dropped every re-publish). No gaps: the sequences are exactly the listed events', and each
/// message names its predecessor (journal entries that are not events, such as risk records, are
/// skipped).
fn assert_no_duplicates_no_gaps(
    messages: &[(u64, BTreeMap<String, String>, String, Value)],
    events: &[Value],
) {
    let mut seqs: Vec<u64> = messages.iter().map(|m| m.1["Puhui-Seq"].parse().unwrap()).collect();
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), seqs.len(), "duplicate messages in the stream");
    seqs.sort_unstable();
    let listed: Vec<u64> = events.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(seqs, listed, "a journal sequence is missing");
    let prev_of: BTreeMap<u64, Option<u64>> = messages
        .iter()
        .map(|m| (m.1["Puhui-Seq"].parse().unwrap(), m.1.get("Puhui-Prev-Seq").map(|p| p.parse().unwrap())))
        .collect();
    for (i, seq) in seqs.iter().enumerate() {
        assert_eq!(prev_of[seq], i.checked_sub(1).map(|j| seqs[j]), "prev-seq of {seq}");
    }
}

/// Network witnesses of the signed checkpoints (issue 7): every checkpoint reaches a NATS stream
/// and a partner's webhook, once each, in order, across a webhook outage and a restart; a partner
/// copies the stream into a witness file with `journal witness-fetch`; and a journal rewritten,
/// re-hashed and re-signed afterwards is caught by `journal verify --witness` with either copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_witnessed_on_nats_and_by_webhook_and_catch_a_rewritten_journal() {
    use puhui_store::verifiable::{self as v, Checkpoint};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let name = unique("PUHUI_TEST_");
    let subject = unique("witness");
    let stream = Stream::connect(&name).await;
    let secret = "witness-secret-0123456789";
    // The partner's endpoint is down for the first three calls: checkpoints wait, in order.
    let (receiver, url) = Receiver::start(3).await;
    let flags = [
        "--witness-nats",
        NATS_URL,
        "--witness-nats-stream",
        &name,
        "--witness-nats-subject",
        &subject,
        "--witness-webhook",
        &url,
    ];
    let env = [("PUHUI_WITNESS_WEBHOOK_SECRET", secret)];
    let mut next = 0;
    let mut tenant: Option<Api> = None;
    for _round in 0..2 {
        let server = serve(&dir, &flags, &env);
        if tenant.is_none() {
            let api = Api::tenant(&server).await;
            api.setup(&server).await;
            tenant = Some(api);
        }
        let api = tenant.as_ref().unwrap();
        for _batch in 0..3 {
            for _ in 0..5 {
                next += 1;
                assert_eq!(
                    api.post(&server, "/v1/transfers", transfer(&format!("w{next}"), 10)).await.0,
                    201
                );
            }
            // Wait for a checkpoint that covers the batch (one a second by default).
            let (_, before) = api.get(&server, "/v1/journal/checkpoints/latest").await;
            let before = before["size"].as_u64().unwrap_or(0);
            poll("a checkpoint after the batch", async || {
                let (status, latest) = api.get(&server, "/v1/journal/checkpoints/latest").await;
                (status == 200 && latest["size"].as_u64() > Some(before)).then_some(())
            })
            .await;
        }
        // Shutdown makes a last checkpoint and lets the witnesses publish it.
        assert!(server.terminate().success());
    }
    let stored = v::audit::checkpoints(&dir).unwrap();
    assert!(stored.len() >= 6, "{} checkpoints", stored.len());
    let sizes: Vec<u64> = stored.iter().map(|c| c.size).collect();

    // NATS: exactly the stored checkpoints, once each, in order, across the restart.
    let on_nats: Vec<u64> =
        stream.messages().await.iter().map(|(_, _, _, c)| c["size"].as_u64().unwrap()).collect();
    assert_eq!(on_nats, sizes, "the NATS witness holds every checkpoint once");
    // Webhook: the failed calls were retried with the same checkpoint; the answered ones are every
    // stored checkpoint, once, in order, each signed with the shared secret.
    let requests = receiver.requests();
    assert_eq!(requests.iter().filter(|r| r.2 == 500).count(), 3);
    let mut answered = Vec::new();
    for (headers, body, status) in &requests {
        assert!(verify_signature(&headers["puhui-signature"], body, secret), "a valid HMAC signature");
        let c: Checkpoint = serde_json::from_slice(body).unwrap();
        assert_eq!(headers["puhui-checkpoint-size"], c.size.to_string());
        if *status == 200 {
            answered.push(c);
        }
    }
    assert_eq!(
        answered.iter().map(|c| c.size).collect::<Vec<_>>(),
        sizes,
        "the webhook witness got every checkpoint once"
    );
    let webhook_file = root.path().join("webhook-witness.log");
    std::fs::write(&webhook_file, answered.iter().map(|c| c.to_line()).collect::<String>()).unwrap();

    // The partner copies the NATS witness into a file (signatures checked), twice: nothing new.
    let public = dir.join(v::PUBLIC_KEY_FILE);
    let nats_file = root.path().join("nats-witness.log");
    let fetch = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_puhui"))
            .args(["journal", "witness-fetch", "--nats", NATS_URL, "--stream", &name, "--subject", &subject])
            .arg("--public-key")
            .arg(&public)
            .arg("--out")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = fetch(&nats_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{} new checkpoints", sizes.len())));
    assert!(String::from_utf8_lossy(&fetch(&nats_file).stdout).starts_with("0 new checkpoints"));
    let journal_verify = |witness: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_puhui"))
            .args(["journal", "verify", "--data-dir"])
            .arg(&dir)
            .arg("--witness")
            .arg(witness)
            .output()
            .unwrap()
    };
    for file in [&nats_file, &webhook_file] {
        let out = journal_verify(file);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The operator rewrites a transfer of the first round, re-hashes the chain and re-signs every
    // checkpoint with the node's key: the data directory alone verifies, both witnesses catch it.
    let mut victim = None;
    puhui_journal::scan(&dir.join(puhui_store::JOURNAL_FILE), |e| {
        if victim.is_none()
            && matches!(
                puhui_journal::codec::decode(e.kind, e.body),
                Ok(puhui_journal::codec::Event::Transfer { .. })
            )
        {
            victim = Some(e.seq);
        }
        Ok(())
    })
    .unwrap();
    common::rewrite_and_rehash(&dir, victim.expect("a transfer entry"));
    common::resign_checkpoints(&dir);
    let alone = std::process::Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["journal", "verify", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(alone.status.success(), "the forgery is self-consistent");
    for file in [&nats_file, &webhook_file] {
        let out = journal_verify(file);
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("not consistent with the witnessed checkpoint"), "{said}");
    }
    stream.delete().await;
}
