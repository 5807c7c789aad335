//! Black-box tests of `puhui serve --store postgres://…`: the real binary against the real
//! PostgreSQL named by `PUHUI_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`), each test
//! in a fresh schema (`?schema=NAME`) dropped at the end.
//!
//! 1. The main API flows, risk control included, and a restart that keeps all of it.
//! 2. Two `serve` processes on one schema hammered over HTTP with conflicting transfers on a few hot
//!    wallets (retries of one id sent to both nodes included): every acknowledged transfer is there
//!    with its result, no wallet below zero, balances equal their transfers, debits equal credits,
//!    and `puhui journal verify --store` passes.
//! 3. Stateless nodes: tenants, keys (and their revocation), the admin token, idempotency keys,
//!    decisions, reviews, labels, rulesets and lists made on one node hold on the other.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use puhui_ledger::{Id, ResultCode};
use puhui_store_pg::testing::TestSchema;
use puhui_store_pg::{hammer, PgStore};
use serde_json::{json, Value};

mod common;
use common::Server;

const ADMIN: &str = "adm_black_box_test_token";

fn serve(dir: &Path, store: &str) -> Server {
    Server::spawn(dir, &[], &[("PUHUI_STORE", store)], ADMIN)
}

struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn send(http: &reqwest::Client, method: &str, url: &str, token: &str, body: Option<Value>) -> Reply {
    let mut req = http.request(method.parse().unwrap(), url).timeout(Duration::from_secs(30));
    req = req.header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    key: String,
}

impl Client {
    async fn tenant(server: &Server) -> Client {
        let http = reqwest::Client::new();
        let r = send(&http, "POST", &server.url("/v1/tenants"), ADMIN, Some(json!({"name": "t"}))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        Client { http, key: r.body["api_key"].as_str().unwrap().to_string() }
    }
    fn tenant_id(&self) -> String {
        self.key.split('_').nth(1).unwrap().to_string()
    }
    async fn post(&self, server: &Server, path: &str, body: Value) -> Reply {
        send(&self.http, "POST", &server.url(path), &self.key, Some(body)).await
    }
    async fn post_idem(&self, server: &Server, path: &str, body: Value, key: &str) -> Reply {
        let req = self
            .http
            .post(server.url(path))
            .header("authorization", format!("Bearer {}", self.key))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_string());
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        let mut body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        body["_replayed"] = json!(replayed);
        Reply { status, body }
    }
    async fn get(&self, server: &Server, path: &str) -> Reply {
        send(&self.http, "GET", &server.url(path), &self.key, None).await
    }
    async fn account(&self, server: &Server, id: &str, wallet: bool) {
        let r = self
            .post(
                server,
                "/v1/accounts",
                json!({"id": id, "currency": "CNY", "debits_must_not_exceed_credits": wallet}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
}

fn transfer(id: &str, from: &str, to: &str, amount: u64) -> Value {
    json!({"id": id, "debit_account_id": from, "credit_account_id": to, "amount": amount, "currency": "CNY"})
}

fn store_url(schema: &TestSchema) -> String {
    format!("{}?schema={}", schema.url(), schema.name())
}

fn journal_verify(store: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["journal", "verify", "--store", store])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("journal OK"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `body` on a tokio runtime: the PostgreSQL client used for the schema and checks blocks, so
/// tests are plain `#[test]`s that enter the runtime only for the HTTP part.
fn run<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap().block_on(body)
}

#[test]
fn api_flows_and_risk_control_on_postgres_survive_a_restart() {
    let schema = TestSchema::new("serve_flows");
    let store = store_url(&schema);
    run(flows(&store));
    journal_verify(&store);
}

async fn flows(store: &str) {
    let store = store.to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &store);
    let a = Client::tenant(&server).await;
    let b = Client::tenant(&server).await;
    a.account(&server, "bank", false).await;
    for w in ["alice", "bob", "mule"] {
        a.account(&server, w, true).await;
    }
    // Single transfer, and a retry of it (same id): the same transfer, 200.
    assert_eq!(
        a.post(&server, "/v1/transfers", transfer("fund", "bank", "alice", 1_000_000)).await.status,
        201
    );
    let again = a.post(&server, "/v1/transfers", transfer("fund", "bank", "alice", 1_000_000)).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let over = a.post(&server, "/v1/transfers", transfer("over", "bob", "alice", 1)).await;
    assert_eq!((over.status, over.code()), (422, "exceeds_credits"));
    // Tenant isolation: another tenant's objects answer 404.
    assert_eq!(b.get(&server, "/v1/accounts/alice").await.status, 404);
    assert_eq!(b.get(&server, "/v1/transfers/fund").await.status, 404);
    assert_eq!(b.get(&server, "/v1/accounts/alice/transfers").await.status, 404);
    assert_eq!(b.get(&server, "/v1/accounts/alice/balance").await.status, 404);
    // Batch, pagination, cursors.
    let batch: Vec<Value> = (0..25).map(|i| transfer(&format!("p{i:02}"), "alice", "bob", 1)).collect();
    let r = a.post(&server, "/v1/transfers/batch", json!({ "transfers": batch })).await;
    assert_eq!((r.status, r.body["ok"].as_u64()), (200, Some(25)), "{:?}", r.body);
    let page = a.get(&server, "/v1/accounts/bob/transfers?limit=10&starting_after=p09").await;
    let ids: Vec<&str> =
        page.body["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, (10..20).map(|i| format!("p{i:02}")).collect::<Vec<_>>());
    assert_eq!(page.body["has_more"], true);
    let bad = a.get(&server, "/v1/accounts/bob/transfers?starting_after=fund").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_cursor"));
    // Holds: post one partially, void another.
    let hold = |id: &str| json!({"id": id, "type": "pending", "debit_account_id": "alice", "credit_account_id": "bob", "amount": 500, "currency": "CNY", "timeout_ms": 600_000});
    assert_eq!(a.post(&server, "/v1/transfers", hold("h1")).await.body["pending_status"], "pending");
    assert_eq!(a.post(&server, "/v1/transfers", hold("h2")).await.status, 201);
    let post = a.post(&server, "/v1/transfers/h1/post", json!({"amount": 300})).await;
    assert_eq!((post.status, post.body["id"].as_str()), (201, Some("h1.post")), "{:?}", post.body);
    assert_eq!(a.post(&server, "/v1/transfers/h2/void", json!({})).await.status, 201);
    let twice = a.post(&server, "/v1/transfers/h2/post", json!({})).await;
    assert_eq!((twice.status, twice.code()), (422, "pending_already_voided"));
    // Idempotency keys replay the first answer.
    let body =
        json!({"debit_account_id": "alice", "credit_account_id": "bob", "amount": 7, "currency": "CNY"});
    let first = a.post_idem(&server, "/v1/transfers", body.clone(), "key-1").await;
    let replay = a.post_idem(&server, "/v1/transfers", body, "key-1").await;
    assert_eq!((first.status, replay.status, &replay.body["_replayed"]), (201, 201, &json!(true)));
    assert_eq!(first.body["id"], replay.body["id"]);
    // Balances: now and at a past moment.
    let alice = a.get(&server, "/v1/accounts/alice").await;
    assert_eq!(alice.body["balances"]["net_posted"], 1_000_000 - 25 - 300 - 7, "{:?}", alice.body);
    let early = a.get(&server, "/v1/accounts/bob/balance?at=2001-01-01T00:00:00Z").await;
    assert_eq!((early.status, &early.body["balances"]["credits_posted"]), (200, &json!(0)));
    // Risk: a standalone decision, and a transfer held for review.
    let decision = a
        .post(
            &server,
            "/v1/decisions",
            json!({"id": "d1", "payer": "alice", "payee": "bob", "amount": 100, "currency": "CNY"}),
        )
        .await;
    assert_eq!((decision.status, &decision.body["outcome"]), (201, &json!("approve")), "{:?}", decision.body);
    let mut risky = transfer("t2", "alice", "mule", 150_000);
    risky["risk_context"] = json!({"device_id": "stolen-phone", "kyc_tier": "3"});
    let held = a.post(&server, "/v1/transfers", risky).await;
    assert_eq!((held.status, held.body["risk_outcome"].as_str()), (201, Some("review")), "{:?}", held.body);
    assert_eq!(held.body["pending_status"], "pending");
    let queue = a.get(&server, "/v1/risk/reviews").await;
    assert_eq!(queue.body["data"][0]["id"], "t2", "{:?}", queue.body);
    // Features that need the embedded journal file say so (events and webhooks do not: the
    // `events` tests cover them on PostgreSQL).
    for path in ["/v1/journal/checkpoints/latest", "/v1/transfers/fund/proof"] {
        let r = a.get(&server, path).await;
        assert_eq!((r.status, r.code()), (501, "not_available"), "{path}: {:?}", r.body);
    }
    assert_eq!(a.get(&server, "/v1/events").await.status, 200);
    assert!(server.terminate().success());

    // A restart (a new process on the same schema) keeps everything, risk control included.
    let server = serve(dir.path(), &store);
    let alice = a.get(&server, "/v1/accounts/alice").await;
    assert_eq!(alice.body["balances"]["net_posted"], 1_000_000 - 25 - 300 - 7);
    assert_eq!(alice.body["balances"]["debits_pending"], 150_000);
    assert_eq!(a.get(&server, "/v1/transfers/h2").await.body["pending_status"], "voided");
    assert_eq!(a.get(&server, "/v1/decisions/d1").await.body["outcome"], "approve");
    assert_eq!(a.get(&server, "/v1/decisions/t2").await.body["outcome"], "review");
    let queue = a.get(&server, "/v1/risk/reviews").await;
    assert_eq!(queue.body["data"][0]["id"], "t2", "the review survives a restart: {:?}", queue.body);
    let approved = a.post(&server, "/v1/risk/reviews/t2/approve", json!({})).await;
    assert_eq!(
        (approved.status, approved.body["type"].as_str()),
        (201, Some("post_pending")),
        "{:?}",
        approved.body
    );
    assert_eq!(a.get(&server, "/v1/accounts/mule").await.body["balances"]["net_posted"], 150_000);
    let label = a.post(&server, "/v1/decisions/d1/label", json!({"label": "legit"})).await;
    assert!(label.status < 300, "{:?}", label.body);
    assert!(server.terminate().success());
}

const NODES: usize = 2;
const TASKS_PER_NODE: usize = 4;
const ROUNDS: usize = 50;
const WALLETS: usize = 4;

/// Sends one transfer; the acknowledged ledger result, if the server gave one.
async fn submit(c: &Client, server_url: &str, body: &Value) -> Option<ResultCode> {
    for _attempt in 0..20 {
        let r = send(&c.http, "POST", server_url, &c.key, Some(body.clone())).await;
        match (r.status, r.code()) {
            (200 | 201, _) => return Some(ResultCode::Ok),
            (503, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            (_, code) => return ResultCode::from_name(code),
        }
    }
    None
}

#[test]
fn two_serve_processes_on_one_database_lose_nothing_and_never_double_spend() {
    let schema = TestSchema::new("serve_nodes");
    let store = store_url(&schema);
    let acked = run(hammer_two_nodes(&store));
    let pg = PgStore::open_with(schema.url(), schema.options()).unwrap();
    let summary = hammer::check(schema.url(), Some(schema.name()), &pg, &acked).unwrap();
    println!("{summary}");
    drop(pg);
    journal_verify(&store);
}

/// Two nodes, several tasks each: returns every acknowledged result by scoped id.
async fn hammer_two_nodes(store: &str) -> HashMap<Id, ResultCode> {
    let store = store.to_string();
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path(), &store);
    let c = Client::tenant(&first).await;
    c.account(&first, "bank", false).await;
    for w in 0..WALLETS {
        c.account(&first, &format!("w{w}"), true).await;
        let r = c
            .post(&first, "/v1/transfers", transfer(&format!("fund{w}"), "bank", &format!("w{w}"), 2_000))
            .await;
        assert_eq!(r.status, 201);
    }
    // The second node has its own data directory: tenants and keys come from the database.
    let dir2 = tempfile::tempdir().unwrap();
    let second = serve(dir2.path(), &store);
    let nodes = Arc::new([first, second]);
    let mut tasks = Vec::new();
    for node in 0..NODES {
        for task in 0..TASKS_PER_NODE {
            let (c, nodes) = (c.clone(), Arc::clone(&nodes));
            tasks.push(tokio::spawn(async move {
                let mut acked: Vec<(String, ResultCode)> = Vec::new();
                let mut seed = (node * 97 + task * 13 + 7) as u64;
                let mut next = move || {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) as usize
                };
                let here = nodes[node].url("/v1/transfers");
                let there = nodes[(node + 1) % NODES].url("/v1/transfers");
                for round in 0..ROUNDS {
                    let from = next() % WALLETS;
                    let to = (from + 1 + next() % (WALLETS - 1)) % WALLETS;
                    let (from, to) = (format!("w{from}"), format!("w{to}"));
                    let amount = 50 + (next() % 400) as u64;
                    let id = format!("n{node}-t{task}-r{round}");
                    match round % 5 {
                        // The same transfer sent to both nodes at once (a client retrying elsewhere).
                        0 => {
                            let body = transfer(&id, &from, &to, amount);
                            let (x, y) = tokio::join!(submit(&c, &here, &body), submit(&c, &there, &body));
                            if let (Some(x), Some(y)) = (x, y) {
                                assert_eq!(x, y, "{id}: the two nodes disagree");
                            }
                            acked.extend(x.or(y).map(|code| (id, code)));
                        }
                        // A hold, then posted or voided (on the other node).
                        1 => {
                            let mut body = transfer(&id, &from, &to, amount);
                            body["type"] = json!("pending");
                            body["timeout_ms"] = json!(600_000);
                            let code = submit(&c, &here, &body).await;
                            acked.extend(code.map(|code| (id.clone(), code)));
                            if code == Some(ResultCode::Ok) {
                                let action = if next() % 2 == 0 { "post" } else { "void" };
                                let url =
                                    there.replace("/v1/transfers", &format!("/v1/transfers/{id}/{action}"));
                                let resolved = submit(&c, &url, &json!({})).await;
                                acked.extend(resolved.map(|code| (format!("{id}.{action}"), code)));
                            }
                        }
                        _ => {
                            let body = transfer(&id, &from, &to, amount);
                            acked.extend(submit(&c, &here, &body).await.map(|code| (id, code)));
                        }
                    }
                }
                acked
            }));
        }
    }
    let mut acked: HashMap<Id, ResultCode> = HashMap::new();
    let tenant = c.tenant_id();
    for t in tasks {
        for (id, code) in t.await.unwrap() {
            acked.insert(Id::new(&format!("{tenant}:{id}")).unwrap(), code);
        }
    }
    let ok = acked.values().filter(|c| **c == ResultCode::Ok).count();
    let rejected = acked.values().filter(|c| **c == ResultCode::ExceedsCredits).count();
    println!("{} acknowledged: {ok} ok, {rejected} exceeds_credits", acked.len());
    assert!(ok > 50 && rejected > 0, "{ok} ok, {rejected} rejected: the load must conflict");
    // Both nodes see every acknowledged transfer.
    for (id, code) in &acked {
        if *code == ResultCode::Ok {
            let client_id = id.as_str().split_once(':').unwrap().1;
            for node in nodes.iter() {
                let r = c.get(node, &format!("/v1/transfers/{client_id}")).await;
                assert_eq!(r.status, 200, "{client_id} acknowledged but missing: {:?}", r.body);
            }
        }
    }
    let Ok(nodes) = Arc::try_unwrap(nodes) else { panic!("tasks still hold the nodes") };
    for node in nodes {
        assert!(node.terminate().success());
    }
    acked
}

#[test]
fn stateless_nodes_share_tenants_keys_idempotency_and_risk_control() {
    let schema = TestSchema::new("serve_stateless");
    let store = store_url(&schema);
    run(stateless(&store));
    journal_verify(&store);
}

/// Polls `check` for up to 5 s (what another node learns by reloading or following the journal).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

async fn stateless(store: &str) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // No PUHUI_ADMIN_TOKEN: node A generates the database's admin token into its data directory;
    // node B, with an empty data directory, accepts the same token.
    let no_env = [("PUHUI_STORE", store), ("PUHUI_ADMIN_TOKEN", "")];
    let a = Server::spawn(dir_a.path(), &[], &no_env, "");
    let b = Server::spawn(dir_b.path(), &[], &no_env, "");
    let admin = std::fs::read_to_string(dir_a.path().join("admin.token")).unwrap().trim().to_string();
    assert!(!dir_b.path().join("admin.token").exists(), "B must not make a second token");
    let http = reqwest::Client::new();
    let created = send(&http, "POST", &b.url("/v1/tenants"), &admin, Some(json!({"name": "shop"}))).await;
    assert_eq!(created.status, 201, "A's admin token works on B: {:?}", created.body);
    let tenant = created.body["id"].as_str().unwrap().to_string();
    let c = Client { http: http.clone(), key: created.body["api_key"].as_str().unwrap().to_string() };

    // A key made on B works on A at once (looked up on a miss).
    c.account(&a, "bank", false).await;
    c.account(&b, "w", true).await;
    c.account(&a, "shop", true).await;
    assert_eq!(c.get(&b, "/v1/accounts/bank").await.status, 200);

    // Idempotency keys hold across nodes: a retry sent to the other node replays.
    let first = c.post_idem(&a, "/v1/transfers", transfer("fund", "bank", "w", 1_000_000), "k-fund").await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let replay = c.post_idem(&b, "/v1/transfers", transfer("fund", "bank", "w", 1_000_000), "k-fund").await;
    assert_eq!((replay.status, &replay.body["_replayed"]), (201, &json!(true)), "{:?}", replay.body);
    assert_eq!(replay.body["id"], first.body["id"]);
    let reused = c.post_idem(&b, "/v1/transfers", transfer("fund2", "bank", "w", 5), "k-fund").await;
    assert_eq!((reused.status, reused.body["error"]["code"].as_str()), (409, Some("idempotency_key_reused")));

    // A decision made on A is explained and labelled on B.
    let decided = c
        .post(
            &a,
            "/v1/decisions",
            json!({"id": "d1", "payer": "w", "payee": "shop", "amount": 100, "currency": "CNY"}),
        )
        .await;
    assert_eq!(decided.status, 201, "{:?}", decided.body);
    let seen = c.get(&b, "/v1/decisions/d1").await;
    assert_eq!((seen.status, &seen.body["outcome"]), (200, &decided.body["outcome"]), "{:?}", seen.body);
    let labelled = c.post(&b, "/v1/decisions/d1/label", json!({"label": "fraud"})).await;
    assert_eq!(labelled.status, 200, "{:?}", labelled.body);
    eventually("A sees B's label", async || c.get(&a, "/v1/decisions/d1").await.body["label"] == "fraud")
        .await;

    // A transfer held for review on A (a new device and a new payee after a usual payment: the
    // starter ruleset's account-takeover rule) is approved on B.
    c.account(&a, "mule", true).await;
    c.account(&a, "w2", true).await;
    assert_eq!(c.post(&b, "/v1/transfers", transfer("fund-w2", "bank", "w2", 1_000_000)).await.status, 201);
    let mut usual = transfer("t-usual", "w2", "shop", 5_000);
    usual["risk_context"] = json!({"device_id": "phone", "kyc_tier": "3"});
    assert_eq!(c.post(&a, "/v1/transfers", usual).await.body["risk_outcome"], "approve");
    let mut held = transfer("t-held", "w2", "mule", 150_000);
    held["risk_context"] = json!({"device_id": "stolen-phone", "kyc_tier": "3"});
    let held = c.post(&a, "/v1/transfers", held).await;
    assert_eq!((held.status, held.body["risk_outcome"].as_str()), (201, Some("review")), "{:?}", held.body);
    let approved = c.post(&b, "/v1/risk/reviews/t-held/approve", json!({})).await;
    assert_eq!(approved.status, 201, "{:?}", approved.body);
    assert_eq!(c.get(&a, "/v1/transfers/t-held").await.body["pending_status"], "posted");

    // A decline on A holds for a retry sent at once to B, whose own velocity features (kept per
    // node) would approve it: B reads what the other nodes journaled before it decides.
    c.account(&a, "w3", true).await;
    assert_eq!(c.post(&b, "/v1/transfers", transfer("fund-w3", "bank", "w3", 1_000_000)).await.status, 201);
    let tier_1 = |id: &str, amount: u64| {
        let mut t = transfer(id, "w3", "shop", amount);
        t["risk_context"] = json!({"kyc_tier": "1"});
        t
    };
    let under_cap = c.post(&a, "/v1/transfers", tier_1("cap-1", 400_000)).await;
    assert_eq!(
        (under_cap.status, &under_cap.body["risk_outcome"]),
        (201, &json!("approve")),
        "{:?}",
        under_cap.body
    );
    let over_cap = c.post(&a, "/v1/transfers", tier_1("cap-2", 200_000)).await;
    assert_eq!((over_cap.status, over_cap.code()), (422, "risk_declined"), "{:?}", over_cap.body);
    let retried = c.post(&b, "/v1/transfers", tier_1("cap-2", 200_000)).await;
    assert_eq!((retried.status, retried.code()), (422, "risk_declined"), "{:?}", retried.body);
    assert_eq!(c.get(&b, "/v1/transfers/cap-2").await.status, 404, "a declined transfer was posted");

    // One transfer sent to both nodes at the same moment is decided once. A has seen w4 spend
    // 400,000 today (a tier-1 payment of 200,000 more is over the cap there); B has seen nothing
    // and would approve it. Whichever node decides first, the other answers with that decision:
    // never a 422 on one node while the other posts the transfer.
    c.account(&a, "w4", true).await;
    assert_eq!(c.post(&b, "/v1/transfers", transfer("fund-w4", "bank", "w4", 10_000_000)).await.status, 201);
    let tier_1_w4 = |id: &str, amount: u64| {
        let mut t = transfer(id, "w4", "shop", amount);
        t["risk_context"] = json!({"kyc_tier": "1"});
        t
    };
    assert_eq!(c.post(&a, "/v1/transfers", tier_1_w4("race-0", 400_000)).await.status, 201);
    let mut declined = 0;
    for round in 1..=RACE_ROUNDS {
        let id = format!("race-{round}");
        let (on_a, on_b) = tokio::join!(
            c.post(&a, "/v1/transfers", tier_1_w4(&id, 200_000)),
            c.post(&b, "/v1/transfers", tier_1_w4(&id, 200_000))
        );
        let posted = |r: &Reply| matches!(r.status, 200 | 201);
        assert!(
            posted(&on_a) == posted(&on_b) && matches!(on_a.status, 200 | 201 | 422),
            "round {round}: A answered {} {:?}, B {} {:?}",
            on_a.status,
            on_a.body,
            on_b.status,
            on_b.body
        );
        declined += usize::from(on_a.status == 422);
    }
    assert!(declined > 0, "A's own features decline some rounds");

    // The same with no risk context on B's copy (alone, or in a batch of one on even rounds): B
    // does not decide, it posts unless a decision under the id says otherwise. Whichever node goes
    // first, the other answers the same way: never declined on A while B posts it (B locks the id
    // across nodes until it is posted).
    c.account(&a, "w5", true).await;
    assert_eq!(c.post(&b, "/v1/transfers", transfer("fund-w5", "bank", "w5", 10_000_000)).await.status, 201);
    let tier_1_w5 = |id: &str, amount: u64| {
        let mut t = transfer(id, "w5", "shop", amount);
        t["risk_context"] = json!({"kyc_tier": "1"});
        t
    };
    assert_eq!(c.post(&a, "/v1/transfers", tier_1_w5("plain-race-0", 400_000)).await.status, 201);
    for round in 1..=RACE_ROUNDS {
        let id = format!("plain-race-{round}");
        let plain = transfer(&id, "w5", "shop", 200_000);
        let on_b = async {
            match round % 2 {
                0 => c.post(&b, "/v1/transfers/batch", json!({"transfers": [plain]})).await,
                _ => c.post(&b, "/v1/transfers", plain).await,
            }
        };
        let (on_a, on_b) = tokio::join!(c.post(&a, "/v1/transfers", tier_1_w5(&id, 200_000)), on_b);
        let posted = |r: &Reply| match &r.body["results"][0]["result"] {
            Value::String(result) => r.status == 200 && matches!(result.as_str(), "ok" | "exists"),
            _ => matches!(r.status, 200 | 201),
        };
        assert!(
            posted(&on_a) == posted(&on_b) && matches!(on_a.status, 200 | 201 | 422),
            "round {round}: A (deciding) answered {} {:?}, B (no context) {} {:?}",
            on_a.status,
            on_a.body,
            on_b.status,
            on_b.body
        );
    }

    // A deny-list entry added on B declines the next payment decided on A.
    let listed = c.post(&b, "/v1/lists/deny_devices/add", json!({"values": ["bad-phone"]})).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    eventually("A applies B's list change", async || {
        let d = c
            .post(
                &a,
                "/v1/decisions",
                json!({"payer": "w", "payee": "shop", "amount": 100, "currency": "CNY",
                       "risk_context": {"device_id": "bad-phone"}}),
            )
            .await;
        d.body["outcome"] == "decline"
    })
    .await;

    // A ruleset published on A and activated on B is active on both; a second text under the same
    // version is refused on either node.
    let text = STARTER.replacen("version = ", "version = \"stateless-1\"\n#", 1);
    let published = send(&http, "POST", &a.url("/v1/rulesets"), &admin, Some(json!({"text": text}))).await;
    assert_eq!(published.status, 201, "{:?}", published.body);
    let activated = send(
        &http,
        "POST",
        &b.url("/v1/rulesets/activation"),
        &admin,
        Some(json!({"active": "stateless-1"})),
    )
    .await;
    assert_eq!(activated.status, 200, "{:?}", activated.body);
    let other = text.replace("Bursts of tiny payments", "Bursts of small payments");
    let conflict = send(&http, "POST", &b.url("/v1/rulesets"), &admin, Some(json!({"text": other}))).await;
    assert_eq!((conflict.status, conflict.code()), (409, "ruleset_version_conflict"), "{:?}", conflict.body);
    eventually("A uses the ruleset B activated", async || {
        let d = c
            .post(
                &a,
                "/v1/decisions",
                json!({"payer": "w", "payee": "shop", "amount": 100, "currency": "CNY"}),
            )
            .await;
        d.body["ruleset_version"] == "stateless-1"
    })
    .await;

    // A key revoked on A stops working on B (within the registry reload).
    let key2 = send(&http, "POST", &a.url(&format!("/v1/tenants/{tenant}/keys")), &admin, None).await;
    assert_eq!(key2.status, 201, "{:?}", key2.body);
    let c2 = Client { http: http.clone(), key: key2.body["api_key"].as_str().unwrap().to_string() };
    assert_eq!(c2.get(&b, "/v1/accounts/w").await.status, 200);
    let key_id = key2.body["key_id"].as_str().unwrap();
    let revoked =
        send(&http, "POST", &a.url(&format!("/v1/tenants/{tenant}/keys/{key_id}/revoke")), &admin, None)
            .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    eventually("B refuses the revoked key", async || c2.get(&b, "/v1/accounts/w").await.status == 401).await;
    assert_eq!(c.get(&b, "/v1/accounts/w").await.status, 200, "the other key still works");

    // Both nodes stop cleanly; a third node on a fresh directory serves the same state.
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    let dir_c = tempfile::tempdir().unwrap();
    let third = Server::spawn(dir_c.path(), &[], &no_env, "");
    assert_eq!(c.get(&third, "/v1/decisions/d1").await.body["label"], "fraud");
    let rulesets = send(&http, "GET", &third.url("/v1/rulesets"), &admin, None).await;
    assert!(rulesets.body.to_string().contains("stateless-1"), "{:?}", rulesets.body);
    assert!(third.terminate().success());
}

/// Rounds of one transfer sent to two nodes at once.
const RACE_ROUNDS: usize = 20;

/// The shipped starter ruleset.
const STARTER: &str = include_str!("../../../rulesets/starter.toml");
