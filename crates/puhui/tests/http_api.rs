//! Black-box tests of `puhui serve`: the real binary on a random loopback port, spoken to over HTTP.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::Server;

const ADMIN: &str = "adm_black_box_test_token";

fn serve(dir: &Path, extra: &[&str]) -> Server {
    Server::spawn(dir, extra, &[], ADMIN)
}

struct Client {
    http: reqwest::Client,
    key: String,
    /// The tenant's id.
    id: String,
}

struct Reply {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<String>,
    idem: Option<&str>,
) -> Reply {
    let mut req = http.request(method.parse().unwrap(), url);
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    // Every response carries a Request-Id; errors repeat it in the envelope.
    let rid = headers.get("request-id").expect("Request-Id header").to_str().unwrap().to_string();
    if body.get("error").is_some() {
        // A replayed response is the stored one, with the first request's id in its body.
        if headers.get("idempotent-replayed").is_none() {
            assert_eq!(body["error"]["request_id"], rid);
        }
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    Reply { status, body, headers }
}

impl Client {
    async fn tenant(server: &Server) -> Client {
        let http = reqwest::Client::new();
        let r = send(
            &http,
            "POST",
            &server.url("/v1/tenants"),
            ADMIN,
            Some(json!({"name": "t"}).to_string()),
            None,
        )
        .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        Client { http, key: r.body["api_key"].as_str().unwrap().to_string(), id }
    }
    async fn post(&self, server: &Server, path: &str, body: Value) -> Reply {
        send(&self.http, "POST", &server.url(path), &self.key, Some(body.to_string()), None).await
    }
    async fn post_idem(&self, server: &Server, path: &str, body: Value, key: &str) -> Reply {
        send(&self.http, "POST", &server.url(path), &self.key, Some(body.to_string()), Some(key)).await
    }
    async fn get(&self, server: &Server, path: &str) -> Reply {
        send(&self.http, "GET", &server.url(path), &self.key, None, None).await
    }
    async fn setup(&self, server: &Server) {
        assert_eq!(
            self.post(server, "/v1/accounts", json!({"id": "bank", "currency": "CNY"})).await.status,
            201
        );
        for w in ["alice", "bob"] {
            let r = self
                .post(
                    server,
                    "/v1/accounts",
                    json!({"id": w, "currency": "CNY", "debits_must_not_exceed_credits": true}),
                )
                .await;
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
        let fund = json!({"id": "fund-alice", "debit_account_id": "bank", "credit_account_id": "alice", "amount": 10_000, "currency": "CNY"});
        assert_eq!(self.post(server, "/v1/transfers", fund).await.status, 201);
    }
}

fn transfer(id: &str, from: &str, to: &str, amount: u64) -> Value {
    json!({"id": id, "debit_account_id": from, "credit_account_id": to, "amount": amount, "currency": "CNY"})
}

#[tokio::test]
async fn authentication_and_tenant_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let http = reqwest::Client::new();
    let a = Client::tenant(&server).await;
    let b = Client::tenant(&server).await;
    a.setup(&server).await;

    let none = send(&http, "GET", &server.url("/v1/accounts/alice"), "", None, None).await;
    assert_eq!((none.status, none.code()), (401, "unauthenticated"));
    let bad = send(&http, "GET", &server.url("/v1/accounts/alice"), "pk_nope", None, None).await;
    assert_eq!((bad.status, bad.code()), (401, "unauthenticated"));
    // Another tenant's object answers exactly as a missing one.
    let theirs = b.get(&server, "/v1/accounts/alice").await;
    let missing = b.get(&server, "/v1/accounts/nobody").await;
    assert_eq!((theirs.status, theirs.code()), (404, "not_found"));
    assert_eq!((missing.status, missing.code()), (missing.status, theirs.code()));
    assert_eq!(b.get(&server, "/v1/transfers/fund-alice").await.status, 404);
    // Tenant keys are not admin tokens.
    let r =
        send(&http, "POST", &server.url("/v1/tenants"), &a.key, Some("{\"name\":\"x\"}".into()), None).await;
    assert_eq!(r.status, 401);
    // Rotation and revocation.
    let tenant_id = a.key.split('_').nth(1).unwrap().to_string();
    let new =
        send(&http, "POST", &server.url(&format!("/v1/tenants/{tenant_id}/keys")), ADMIN, None, None).await;
    assert_eq!(new.status, 201, "{:?}", new.body);
    let new_key = new.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(send(&http, "GET", &server.url("/v1/accounts/alice"), &new_key, None, None).await.status, 200);
    let keys =
        send(&http, "GET", &server.url(&format!("/v1/tenants/{tenant_id}/keys")), ADMIN, None, None).await;
    let old_id = keys.body[0]["key_id"].as_str().unwrap().to_string();
    let revoke = format!("/v1/tenants/{tenant_id}/keys/{old_id}/revoke");
    assert_eq!(send(&http, "POST", &server.url(&revoke), ADMIN, None, None).await.status, 200);
    let revoked = send(&http, "GET", &server.url("/v1/accounts/alice"), &a.key, None, None).await;
    assert_eq!((revoked.status, revoked.code()), (401, "unauthenticated"));
    assert_eq!(send(&http, "GET", &server.url("/v1/accounts/alice"), &new_key, None, None).await.status, 200);
}

#[tokio::test]
async fn error_codes_are_reachable_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let transfers_url = server.url("/v1/transfers");
    let raw = |body: &str| send(&c.http, "POST", &transfers_url, &c.key, Some(body.to_string()), None);

    let cases: Vec<(Reply, u16, &str)> = vec![
        (raw("{not json").await, 400, "invalid_json"),
        (raw(r#"{"id":"x","debit_account_id":"alice","credit_account_id":"bob","amount":1.5,"currency":"CNY"}"#).await, 400, "invalid_amount"),
        (raw(r#"{"id":"x","debit_account_id":"alice","credit_account_id":"bob","amount":"100","currency":"CNY"}"#).await, 400, "invalid_amount"),
        (raw(r#"{"id":"x","debit_account_id":"alice","credit_account_id":"bob","amount":-1,"currency":"CNY"}"#).await, 400, "invalid_amount"),
        (raw(r#"{"id":"x","colour":"red"}"#).await, 400, "parameter_unknown"),
        (c.post(&server, "/v1/transfers", transfer("bad id!", "alice", "bob", 1)).await, 400, "invalid_id"),
        (c.post(&server, "/v1/accounts", json!({"id": "c", "currency": "XYZ"})).await, 400, "invalid_currency"),
        (c.post(&server, "/v1/transfers", transfer("z", "alice", "bob", 0)).await, 400, "amount_must_be_positive"),
        (c.post(&server, "/v1/transfers", transfer("s", "alice", "alice", 5)).await, 400, "same_account"),
        (c.post(&server, "/v1/transfers", transfer("m", "alice", "nobody", 5)).await, 404, "account_not_found"),
        (c.post(&server, "/v1/transfers", transfer("e", "alice", "bob", 1_000_000)).await, 422, "exceeds_credits"),
        (c.post(&server, "/v1/transfers", transfer("fund-alice", "bank", "alice", 1)).await, 409, "exists_with_different_amount"),
        (c.post(&server, "/v1/transfers", json!({"id": "u", "debit_account_id": "alice", "credit_account_id": "bob", "amount": 1, "currency": "USD"})).await, 422, "currency_mismatch"),
        (c.post(&server, "/v1/transfers/nope/post", json!({})).await, 404, "pending_not_found"),
        (c.post(&server, "/v1/transfers/batch", json!({"transfers": []})).await, 400, "batch_empty"),
        (c.get(&server, "/v1/accounts/alice/transfers?limit=0").await, 400, "invalid_request"),
        (c.get(&server, "/v1/accounts/alice/transfers?limit=101").await, 400, "invalid_request"),
        (c.get(&server, "/v1/accounts/alice/transfers?starting_after=nope").await, 400, "invalid_cursor"),
        (c.get(&server, "/v1/accounts/alice/balance?at=yesterday").await, 400, "invalid_timestamp"),
        (c.get(&server, "/v1/nothing-here").await, 404, "route_not_found"),
        (send(&c.http, "DELETE", &server.url("/v1/transfers"), &c.key, None, None).await, 405, "method_not_allowed"),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!((reply.status, reply.code()), (*status, *code), "case {i}: {:?}", reply.body);
    }
    let too_many: Vec<Value> = (0..8_190).map(|i| transfer(&format!("b{i}"), "bank", "bob", 1)).collect();
    let r = c.post(&server, "/v1/transfers/batch", json!({ "transfers": too_many })).await;
    assert_eq!((r.status, r.code()), (400, "batch_too_large"));
    let huge = format!(r#"{{"id":"h","metadata":{{"x":"{}"}}}}"#, "a".repeat(9 << 20));
    let r = raw(&huge).await;
    assert_eq!((r.status, r.code()), (413, "body_too_large"));
    let r = c
        .post(
            &server,
            "/v1/accounts",
            json!({"id": "meta", "currency": "CNY", "metadata": {"x": "a".repeat(5000)}}),
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.body["error"]["param"].as_str()),
        (400, "metadata_too_large", Some("metadata"))
    );
    // Freeze, close.
    assert_eq!(c.post(&server, "/v1/accounts/alice/freeze", json!({})).await.body["status"], "frozen");
    let r = c.post(&server, "/v1/transfers", transfer("f1", "alice", "bob", 1)).await;
    assert_eq!((r.status, r.code()), (422, "account_frozen"));
    let r = c.post(&server, "/v1/accounts/alice/close", json!({})).await;
    assert_eq!((r.status, r.code()), (422, "account_balance_not_zero"));
}

#[tokio::test]
async fn idempotency_keys_replay_conflict_and_derive_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let body =
        json!({"debit_account_id": "alice", "credit_account_id": "bob", "amount": 100, "currency": "CNY"});
    let first = c.post_idem(&server, "/v1/transfers", body.clone(), "key-1").await;
    assert_eq!(first.status, 201);
    let again = c.post_idem(&server, "/v1/transfers", body.clone(), "key-1").await;
    assert_eq!((again.status, &again.body), (201, &first.body), "a retry replays status and body");
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    let other = c.post_idem(&server, "/v1/transfers", json!({"amount": 5}), "key-1").await;
    assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"));
    // The same parameters spelt another way (key order, spaces) are the same request.
    let respelt = r#"{ "currency" : "CNY", "amount": 100,
        "credit_account_id": "bob", "debit_account_id": "alice" }"#;
    let again =
        send(&c.http, "POST", &server.url("/v1/transfers"), &c.key, Some(respelt.into()), Some("key-1"))
            .await;
    assert_eq!((again.status, &again.body), (201, &first.body), "{:?}", again.body);
    // Errors are replayed too.
    let e1 = c.post_idem(&server, "/v1/transfers", transfer("x", "alice", "bob", 1_000_000), "key-2").await;
    let e2 = c.post_idem(&server, "/v1/transfers", transfer("x", "alice", "bob", 1_000_000), "key-2").await;
    assert_eq!((e1.status, e1.code()), (422, "exceeds_credits"));
    assert_eq!(e1.body, e2.body);
    // No id + the same key on another connection (as after a lost response) names the same transfer.
    let id = first.body["id"].as_str().unwrap();
    assert!(id.starts_with("idem_"), "{id}");
    assert_eq!(c.get(&server, "/v1/accounts/alice").await.body["balances"]["net_posted"], 10_000 - 100);
    // Concurrent duplicates: one runs, the others replay it or are told it is in progress.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/transfers"));
        let body = transfer("conc", "alice", "bob", 7).to_string();
        tasks.push(tokio::spawn(
            async move { send(&http, "POST", &url, &key, Some(body), Some("key-3")).await },
        ));
    }
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match (r.status, r.code()) {
            (201, _) => created += 1,
            (409, "request_in_progress") => {}
            other => panic!("unexpected {other:?} {:?}", r.body),
        }
    }
    assert!(created >= 1);
    assert_eq!(c.get(&server, "/v1/accounts/alice").await.body["balances"]["net_posted"], 10_000 - 100 - 7);
    // A crash and a restart: the keys' claims and responses are read back from the journal.
    // Another request under a key is still refused; the same request gets the first response.
    let explicit = c.post_idem(&server, "/v1/transfers", transfer("t-4", "alice", "bob", 3), "key-4").await;
    assert_eq!(explicit.status, 201);
    // A response is journaled without being waited for; any later acknowledged write is durable
    // after it (one FIFO queue).
    let later = c.post(&server, "/v1/accounts", json!({"id": "later", "currency": "CNY"})).await;
    assert_eq!(later.status, 201);
    server.kill9();
    let server = serve(dir.path(), &[]);
    let other = c.post_idem(&server, "/v1/transfers", transfer("t-5", "alice", "bob", 3), "key-4").await;
    assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"), "{:?}", other.body);
    let other = c.post_idem(&server, "/v1/transfers", json!({"amount": 5}), "key-1").await;
    assert_eq!((other.status, other.code()), (409, "idempotency_key_reused"));
    let again = c.post_idem(&server, "/v1/transfers", body.clone(), "key-1").await;
    assert_eq!((again.status, &again.body), (201, &first.body), "the first response, replayed");
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    let again = c.post_idem(&server, "/v1/transfers", transfer("t-4", "alice", "bob", 3), "key-4").await;
    assert_eq!((again.status, &again.body), (201, &explicit.body));
    let e3 = c.post_idem(&server, "/v1/transfers", transfer("x", "alice", "bob", 1_000_000), "key-2").await;
    assert_eq!(e3.body, e1.body, "an error response, replayed after the restart");
    assert_eq!(
        c.get(&server, "/v1/accounts/alice").await.body["balances"]["net_posted"],
        10_000 - 100 - 7 - 3,
        "nothing ran twice"
    );
    let new_key = c.post_idem(&server, "/v1/transfers", transfer("t-5", "alice", "bob", 3), "key-5").await;
    assert_eq!(new_key.status, 201, "{:?}", new_key.body);
    let long = "k".repeat(256);
    let r = c.post_idem(&server, "/v1/transfers", body.clone(), &long).await;
    assert_eq!((r.status, r.code()), (400, "idempotency_key_invalid"));
    let r = c.post_idem(&server, "/v1/transfers", body, "with\ttab").await;
    assert_eq!((r.status, r.code()), (400, "idempotency_key_invalid"));
}

#[tokio::test]
async fn pagination_holds_batches_and_balance_at() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let batch: Vec<Value> = (0..25).map(|i| transfer(&format!("p{i:02}"), "alice", "bob", 1)).collect();
    let r = c.post(&server, "/v1/transfers/batch", json!({ "transfers": batch })).await;
    assert_eq!((r.status, r.body["ok"].as_u64()), (200, Some(25)));
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = if cursor.is_empty() {
            "limit=10".to_string()
        } else {
            format!("limit=10&starting_after={cursor}")
        };
        let page = c.get(&server, &format!("/v1/accounts/bob/transfers?{q}")).await;
        assert_eq!(page.body["object"], "list");
        let data = page.body["data"].as_array().unwrap().clone();
        seen.extend(data.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        if !page.body["has_more"].as_bool().unwrap() {
            break;
        }
        cursor = data.last().unwrap()["id"].as_str().unwrap().to_string();
    }
    assert_eq!(seen, (0..25).map(|i| format!("p{i:02}")).collect::<Vec<_>>());
    let before = c.get(&server, "/v1/accounts/bob/transfers?limit=3&ending_before=p10").await;
    let ids: Vec<&str> =
        before.body["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!((ids, before.body["has_more"].as_bool()), (vec!["p07", "p08", "p09"], Some(true)));
    let fund = c.get(&server, "/v1/accounts/bob/transfers?starting_after=fund-alice").await;
    assert_eq!(
        (fund.status, fund.code()),
        (400, "invalid_cursor"),
        "a transfer of another account is no cursor"
    );
    // Linked chain in a batch: all or nothing.
    let mut first = transfer("c1", "alice", "bob", 100);
    first["linked"] = json!(true);
    let chain = json!({"transfers": [first, transfer("c2", "bob", "alice", 1_000_000)]});
    let r = c.post(&server, "/v1/transfers/batch", chain).await;
    let results: Vec<&str> =
        r.body["results"].as_array().unwrap().iter().map(|x| x["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["linked_event_failed", "exceeds_credits"]);
    // Hold, partial post, void.
    let hold = json!({"id": "h1", "type": "pending", "debit_account_id": "alice", "credit_account_id": "bob", "amount": 500, "currency": "CNY", "timeout_ms": 60_000});
    assert_eq!(c.post(&server, "/v1/transfers", hold).await.body["pending_status"], "pending");
    assert_eq!(c.get(&server, "/v1/accounts/alice").await.body["balances"]["debits_pending"], 500);
    // A refused post does not use up the default id for a corrected one; its retry is refused alike.
    let over = c.post(&server, "/v1/transfers/h1/post", json!({"amount": 501})).await;
    assert_eq!((over.status, over.code()), (422, "post_amount_exceeds_pending"), "{:?}", over.body);
    let post = c.post(&server, "/v1/transfers/h1/post", json!({"amount": 300})).await;
    assert_eq!(
        (post.status, post.body["id"].as_str(), post.body["amount"].as_u64()),
        (201, Some("h1.post.2"), Some(300)),
        "{:?}",
        post.body
    );
    let over = c.post(&server, "/v1/transfers/h1/post", json!({"amount": 501})).await;
    assert_eq!((over.status, over.code()), (422, "post_amount_exceeds_pending"), "{:?}", over.body);
    assert_eq!(
        c.post(&server, "/v1/transfers/h1/post", json!({"amount": 300})).await.status,
        200,
        "posting twice is harmless"
    );
    let void = c.post(&server, "/v1/transfers/h1/void", json!({})).await;
    assert_eq!((void.status, void.code()), (422, "pending_already_posted"));
    assert_eq!(c.get(&server, "/v1/transfers/h1").await.body["pending_status"], "posted");
    // Balance at a past moment.
    let t = c.get(&server, "/v1/transfers/p00").await.body["created_at"].as_str().unwrap().to_string();
    let at = c.get(&server, &format!("/v1/accounts/bob/balance?at={t}")).await;
    assert_eq!(at.body["balances"]["credits_posted"], 1, "{:?}", at.body);
    let early = c.get(&server, "/v1/accounts/bob/balance?at=2001-01-01T00:00:00Z").await;
    assert_eq!(early.body["balances"]["credits_posted"], 0);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--rate-limit", "5"]);
    let c = Client::tenant(&server).await;
    let mut limited = None;
    for _ in 0..50 {
        let r = c.get(&server, "/v1/accounts/x").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the sixth request within a second is limited");
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.get("retry-after").is_some());
}

#[tokio::test]
async fn operations_endpoints_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(send(&http, "GET", &server.url(path), "", None, None).await.body["status"], "ok");
    }
    let metrics = send(&http, "GET", &server.url("/metrics"), "", None, None).await;
    let text = metrics.body.as_str().unwrap().to_string();
    for name in [
        "puhui_http_requests_total",
        "puhui_http_request_duration_seconds",
        "puhui_transfers_total",
        "puhui_journal_sync_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // Requests are labelled by route pattern, method and status.
    assert!(
        text.lines().any(|l| l.starts_with("puhui_http_requests_total{")
            && l.contains(r#"route="/v1/accounts""#)
            && l.contains(r#"method="POST""#)
            && l.contains(r#"status="201""#)),
        "no labelled request counter for POST /v1/accounts in /metrics:\n{text}"
    );
    let spec = send(&http, "GET", &server.url("/openapi.json"), "", None, None).await;
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json"))
        .expect("docs/openapi.json is committed");
    let served: Value = spec.body.clone();
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&committed).unwrap(),
        "docs/openapi.json drifted from the code: run `cargo run --release -- openapi > docs/openapi.json`"
    );
}

/// Runs `puhui bench http` against `server` and returns its JSON summary line.
fn bench_http(server: &Server, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["bench", "http", "--url", &server.url(""), "--accounts", "20", "--connections", "4"])
        .args(args)
        .env("PUHUI_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run puhui bench http");
    assert!(out.status.success(), "bench http failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON summary line")
}

#[tokio::test]
async fn bench_http_loads_in_closed_and_open_loops() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    // Closed loop, batches: every request posts its whole batch.
    let batch = bench_http(&server, &["--duration", "1", "--mode", "batch", "--batch", "10"]);
    let requests = batch["requests"].as_u64().unwrap();
    assert!(requests > 0 && batch["errors"] == 0, "{batch}");
    assert_eq!(batch["offered_per_s"], 0);
    // Open loop: 100 requests due in one second over 4 connections, no more (each with a risk
    // context, which a server without risk control accepts and ignores).
    let open = bench_http(&server, &["--duration", "1", "--rate", "100", "--risk-context"]);
    let sent = open["requests"].as_u64().unwrap();
    assert!((1..=100).contains(&sent) && open["errors"] == 0, "{open}");
    assert_eq!(open["offered_per_s"], 100);
    assert!(open["p50_ms"].as_f64().unwrap() <= open["p99_ms"].as_f64().unwrap());
    // Every transfer the two runs were told about is in the ledger (the bench tenants' own).
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let posted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("puhui_transfers_total{") && l.contains(r#"result="ok""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Risk control (the starter) may decline some: they are answers, counted apart, not posted.
    let declined = open["declined"].as_u64().expect("declines counted");
    assert_eq!(posted as u64, requests * 10 + sent - declined, "transfers counted by the server");
    // A bad URL is a clear error, not a hang.
    let bad = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["bench", "http", "--url", "https://127.0.0.1:1", "--duration", "1", "--admin-token", "x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn graceful_shutdown_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, key, url, stop) =
            (c.http.clone(), c.key.clone(), server.url("/v1/transfers"), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 10_000 {
                n += 1;
                let id = format!("g{w}-{n}");
                let body = transfer(&id, "bank", "bob", 1).to_string();
                let sent = http
                    .post(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => acked.push(id),
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "exit status {status:?}");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());
    let server = serve(dir.path(), &[]);
    for id in &acked {
        let r = c.get(&server, &format!("/v1/transfers/{id}")).await;
        assert_eq!(r.status, 200, "acknowledged transfer {id} is missing after restart");
    }
    let bob = c.get(&server, "/v1/accounts/bob").await;
    assert!(bob.body["balances"]["credits_posted"].as_u64().unwrap() >= acked.len() as u64);
}

#[tokio::test]
async fn a_decision_older_than_the_memory_keeps_is_read_back_from_the_journal() {
    // Memory keeps the latest 100,000 decisions; an older one is read back from its journal entry,
    // labelled after it was forgotten, also after a restart (from the risk snapshot), and a retry
    // under its id is matched with it: a standalone decision's answered, a declined transfer's
    // declined again with its reasons, another event or payment under the id a conflict.
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("large.toml");
    let large = "version = \"large-1\"\n[thresholds]\nreview = 50\ndecline = 100\n[[rules]]\nid = \"large\"\n\
                 description = \"a large payment\"\nexpression = \"amount > 1000\"\nscore = 100\nreasons = [\"large\"]\n\
                 [[rules]]\nid = \"medium\"\ndescription = \"a payment to look at\"\n\
                 expression = \"amount > 500 && amount <= 1000\"\nscore = 60\nreasons = [\"medium\"]\n";
    std::fs::write(&ruleset, large).unwrap();
    let args = ["--ruleset", ruleset.to_str().unwrap()];
    let server = serve(dir.path(), &args);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let mut declined = transfer("declined", "alice", "bob", 5_000);
    declined["risk_context"] = json!({"device_id": "phone-1"});
    let refused = c.post(&server, "/v1/transfers", declined.clone()).await;
    assert_eq!((refused.status, refused.code()), (422, "risk_declined"), "{:?}", refused.body);
    let mut held = transfer("held", "alice", "bob", 700);
    held["risk_context"] = json!({"device_id": "phone-1"});
    let hold = c.post(&server, "/v1/transfers", held).await;
    assert_eq!((hold.status, hold.body["type"].as_str()), (201, Some("pending")), "{:?}", hold.body);
    let decide = |id: String, payer: usize| {
        json!({"id": id, "payer": format!("w{payer}"), "payee": "shop", "amount": 100, "currency": "CNY",
               "risk_context": {"device_id": format!("phone-{payer}"), "channel": "app"}})
    };
    let first = c.post(&server, "/v1/decisions", decide("old".into(), 0)).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let kept = 100_000;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/decisions"));
        tasks.push(tokio::spawn(async move {
            for i in (task..=kept).step_by(16) {
                let (status, body) =
                    try_post(&http, &url, &key, &decide(format!("d{i}"), i % 500), None).await.unwrap();
                assert_eq!(status, 201, "{body:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let label = c.post(&server, "/v1/decisions/old/label", json!({"label": "fraud"})).await;
    assert_eq!(label.status, 200, "a label on a forgotten decision: {:?}", label.body);
    // Its retry is answered with it, not decided again; another event under its id is a conflict.
    let retried = c.post(&server, "/v1/decisions", decide("old".into(), 0)).await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    assert_eq!(
        (&retried.body["features"], &retried.body["label"]),
        (&first.body["features"], &json!("fraud"))
    );
    let mut another = decide("old".into(), 0);
    another["amount"] = json!(101);
    let conflict = c.post(&server, "/v1/decisions", another).await;
    assert_eq!(conflict.status, 409, "{:?}", conflict.body);
    let again = c.post(&server, "/v1/transfers", declined.clone()).await;
    assert_eq!((again.status, again.code()), (422, "risk_declined"), "{:?}", again.body);
    assert_eq!(again.body["error"]["reasons"], json!(["large"]), "{:?}", again.body);
    let mut other_payment = declined.clone();
    other_payment["amount"] = json!(6_000);
    assert_eq!(c.post(&server, "/v1/transfers", other_payment).await.status, 409);
    // So is a retry without a risk context, alone or as a batch item (where another payment under
    // the id is that item's conflict); a review hold's retry without one is that hold.
    let bare = c.post(&server, "/v1/transfers", transfer("declined", "alice", "bob", 5_000)).await;
    assert_eq!((bare.status, &bare.body["error"]["reasons"]), (422, &json!(["large"])), "{:?}", bare.body);
    let items = [transfer("declined", "alice", "bob", 5_000), transfer("declined", "alice", "bob", 1)];
    let batch = c.post(&server, "/v1/transfers/batch", json!({ "transfers": items })).await;
    let results: Vec<&str> =
        batch.body["results"].as_array().unwrap().iter().map(|x| x["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["risk_declined", "exists_with_different_amount"], "{:?}", batch.body);
    assert_eq!(batch.body["results"][0]["reasons"], json!(["large"]), "{:?}", batch.body);
    assert_eq!(c.get(&server, "/v1/transfers/declined").await.status, 404);
    let held_again = c.post(&server, "/v1/transfers", transfer("held", "alice", "bob", 700)).await;
    assert_eq!(
        (held_again.status, held_again.body["type"].as_str()),
        (200, Some("pending")),
        "{:?}",
        held_again.body
    );
    let in_batch = c
        .post(&server, "/v1/transfers/batch", json!({"transfers": [transfer("held", "alice", "bob", 700)]}))
        .await;
    assert_eq!(in_batch.body["results"][0]["result"], "exists", "{:?}", in_batch.body);
    let read_back = |server: Server| {
        let (c, first) = (&c, &first);
        async move {
            let got = c.get(&server, "/v1/decisions/old").await;
            assert_eq!(got.status, 200, "{:?}", got.body);
            for field in ["id", "outcome", "score", "features", "fired", "ruleset_version"] {
                assert_eq!(got.body[field], first.body[field], "{field}: {:?}", got.body);
            }
            assert_eq!(got.body["label"], "fraud");
            assert!(got.body["journal_seq"].as_u64().is_some(), "{:?}", got.body);
            server
        }
    };
    let server = read_back(server).await;
    let other = Client::tenant(&server).await;
    assert_eq!(other.get(&server, "/v1/decisions/old").await.status, 404, "decisions are tenant-scoped");
    assert_eq!(c.get(&server, "/v1/decisions/never").await.status, 404);
    assert!(server.terminate().success());
    let server = read_back(serve(dir.path(), &args)).await;
    // The shutdown checkpoint covers it: its inclusion proof comes from its kept place, and
    // verifies offline.
    let proof = c.get(&server, "/v1/decisions/old/proof").await;
    assert_eq!(proof.status, 200, "{:?}", proof.body);
    proof_verifies_offline(&c, &server, dir.path(), &proof.body).await;
    assert!(server.terminate().success());
}

#[tokio::test]
async fn risk_decisions_score_events_and_explain_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    let other = Client::tenant(&server).await;
    let mut last = Value::Null;
    for i in 0..12 {
        let body = json!({
            "id": format!("d{i}"), "payer": "w1", "payee": format!("m{i}"), "amount": 100, "currency": "CNY",
            "risk_context": {"device_id": "phone-1", "ip": "10.0.0.1", "channel": "app", "kyc_tier": "3"}
        });
        let r = c.post(&server, "/v1/decisions", body).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        last = r.body;
    }
    assert_eq!(last["outcome"], "review", "{last}");
    assert!(last["fired"].as_array().unwrap().iter().any(|f| f["rule"] == "card_testing_burst"));
    assert!(last["features"]["payer_count_1m"].as_f64().unwrap() >= 10.0);
    assert_eq!(last["ruleset_version"], "starter-3");
    let got = c.get(&server, "/v1/decisions/d11").await;
    assert_eq!((got.status, &got.body["outcome"]), (200, &json!("review")));
    assert_eq!(other.get(&server, "/v1/decisions/d11").await.status, 404, "decisions are tenant-scoped");
    // The other tenant's features are its own: the same payer id starts clean there.
    let fresh = other
        .post(
            &server,
            "/v1/decisions",
            json!({"payer": "w1", "payee": "m1", "amount": 100, "currency": "CNY"}),
        )
        .await;
    assert_eq!((fresh.status, &fresh.body["outcome"]), (201, &json!("approve")));
    let bad = c.post(&server, "/v1/decisions", json!({"payer": "w1", "amount": 1.5})).await;
    assert_eq!(bad.status, 400);
    // An event dated days ahead would move every window past the history it should count.
    let ahead = c
        .post(
            &server,
            "/v1/decisions",
            json!({"payer": "w1", "payee": "m1", "amount": 100, "currency": "CNY", "timestamp": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((ahead.status, ahead.code()), (400, "invalid_timestamp"), "{:?}", ahead.body);
    let still = c
        .post(
            &server,
            "/v1/decisions",
            json!({"id": "d12", "payer": "w1", "payee": "m12", "amount": 100, "currency": "CNY"}),
        )
        .await;
    assert!(still.body["features"]["payer_count_1m"].as_f64().unwrap() >= 12.0, "{:?}", still.body);
    // Lists and the review queue page with `limit` and `starting_after`.
    let added = c.post(&server, "/v1/lists/allow_x/add", json!({"values": ["c", "a", "b"]})).await;
    assert_eq!(added.status, 200, "{:?}", added.body);
    let page = c.get(&server, "/v1/lists/allow_x?limit=2").await.body;
    assert_eq!((&page["values"], &page["has_more"]), (&json!(["a", "b"]), &json!(true)), "{page}");
    let page = c.get(&server, "/v1/lists/allow_x?limit=2&starting_after=b").await.body;
    assert_eq!((&page["values"], &page["has_more"]), (&json!(["c"]), &json!(false)), "{page}");
    assert_eq!(c.get(&server, "/v1/risk/reviews?limit=0").await.status, 400);
    let bad_name = c.get(&server, &format!("/v1/lists/{}", "x".repeat(65))).await;
    assert_eq!((bad_name.status, bad_name.code()), (400, "invalid_list"), "{:?}", bad_name.body);
    let reviews = c.get(&server, "/v1/risk/reviews?limit=1&starting_after=zzz").await;
    assert_eq!((reviews.status, &reviews.body["data"]), (200, &json!([])), "{:?}", reviews.body);
    // An event's figures enter the features, so they are checked as a transfer's are.
    let event = |amount: u64, currency: &str| json!({"id": "odd", "payer": "w1", "payee": "m1", "amount": amount, "currency": currency});
    let mut long = event(1, "CNY");
    long["risk_context"] = json!({"device_id": "d".repeat(257)});
    let r = c.post(&server, "/v1/decisions", long).await;
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (400, Some("risk_context.device_id")),
        "{:?}",
        r.body
    );
    let huge = c.post(&server, "/v1/decisions", event(u64::MAX, "CNY")).await;
    assert_eq!((huge.status, huge.code()), (400, "amount_too_large"), "{:?}", huge.body);
    let lower = c.post(&server, "/v1/decisions", event(1, "cny")).await;
    assert_eq!((lower.status, lower.code()), (400, "invalid_currency"), "{:?}", lower.body);
    // A decision id is made once: a retry gets it, the same id for another event is a conflict.
    assert_eq!(c.post(&server, "/v1/decisions", event(5, "CNY")).await.status, 201);
    assert_eq!(c.post(&server, "/v1/decisions", event(5, "CNY")).await.status, 200);
    let reused = c.post(&server, "/v1/decisions", event(6, "CNY")).await;
    assert_eq!((reused.status, reused.code()), (409, "exists_with_different_event"), "{:?}", reused.body);
}

#[tokio::test]
async fn concurrent_decisions_are_each_decided_once_and_all_recorded() {
    // Decisions are handed to the risk thread; many at once must neither be lost nor reordered
    // out of the features: the decision after them sees every one of them.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    let requests = 48;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/decisions"));
        tasks.push(tokio::spawn(async move {
            let body = json!({"id": format!("c{i}"), "payer": "w1", "payee": "shop", "amount": 100, "currency": "CNY"});
            send(&http, "POST", &url, &key, Some(body.to_string()), None).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let after = json!({"id": "after", "payer": "w1", "payee": "shop", "amount": 100, "currency": "CNY"});
    let r = c.post(&server, "/v1/decisions", after).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["features"]["payer_count_1m"].as_f64(), Some(requests as f64), "{}", r.body);
    for i in 0..requests {
        assert_eq!(c.get(&server, &format!("/v1/decisions/c{i}")).await.status, 200);
    }
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("puhui_risk_decisions_queued"),
        "the risk thread's queue is not shown:\n{metrics}"
    );
}

/// A keyed POST that may meet a dead server: `None` if no whole response came back.
async fn try_post_idem(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
    key: &str,
) -> Option<(u16, Value)> {
    try_post(http, url, token, body, Some(key)).await
}

/// A POST (keyed if `key`) that may meet a dead server: `None` if no whole response came back.
async fn try_post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let mut request = http
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.body(body.to_string()).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).ok()?))
}

#[tokio::test]
async fn keyed_responses_survive_kill_9_under_load() {
    // Keyed transfers without ids (the id is derived from the key) from 16 clients; the server is
    // killed with SIGKILL mid-load, three times. After each restart every acknowledged key, sent
    // again, gets its first response (the record rode along with a later group commit) or, if the
    // crash took that record, the same transfer (200) or the same refusal: never another answer.
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let body =
        json!({"debit_account_id": "alice", "credit_account_id": "bob", "amount": 7, "currency": "CNY"});
    let (mut replayed, mut rerun, mut created) = (0, 0, Vec::new());
    for cycle in 0..3 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client in 0..16 {
            let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/transfers"));
            let (stop, body) = (stop.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let idem = format!("crash-{cycle}-{client}-{i}");
                    match try_post_idem(&http, &url, &key, &body, &idem).await {
                        Some(answer) => acked.push((idem, answer)),
                        None => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        server = serve(dir.path(), &[]);
        assert!(!acked.is_empty(), "no request was answered before the kill");
        for (idem, (status, first)) in acked {
            let url = server.url("/v1/transfers");
            let (again_status, again) =
                try_post_idem(&c.http, &url, &c.key, &body, &idem).await.expect("an answer");
            if (again_status, &again) == (status, &first) {
                replayed += 1;
            } else {
                rerun += 1;
                match status {
                    201 => assert_eq!((again_status, &again["id"]), (200, &first["id"]), "{idem}: {again:?}"),
                    _ => assert_eq!(
                        (again_status, &again["error"]["code"]),
                        (status, &first["error"]["code"]),
                        "{idem}: {again:?}"
                    ),
                }
            }
            if status == 201 {
                created.push(first["id"].as_str().expect("an id").to_string());
            }
        }
    }
    eprintln!("{replayed} responses replayed after a crash, {rerun} run again");
    assert!(replayed > rerun, "most responses must survive: {replayed} replayed, {rerun} run again");
    // Nothing acknowledged is lost, nothing ran twice: bob holds 7 per distinct transfer.
    let bob = c.get(&server, "/v1/accounts/bob").await;
    let posted = bob.body["balances"]["net_posted"].as_i64().expect("bob's balance");
    created.sort();
    created.dedup();
    assert!(
        posted >= 7 * created.len() as i64,
        "acknowledged transfers lost: {posted} < 7 × {}",
        created.len()
    );
    for id in created.iter().take(50) {
        assert_eq!(c.get(&server, &format!("/v1/transfers/{id}")).await.status, 200, "{id}");
    }
}

/// Declines a payer's payments on the `capped` channel from its `VELOCITY_CAP`th approved one in
/// an hour on; holds payments of 1,000 or more for review.
const CAP_RULESET: &str = r#"
version = "cap-test"
[thresholds]
review = 50
decline = 100
[[features]]
name = "payer_count_1h"
entity = "payer"
aggregate = "count"
window = "1h"
[[rules]]
id = "over_cap"
description = "twenty payments in an hour"
expression = "payer_count_1h >= 20 && ctx.channel == 'capped'"
outcome = "decline"
reasons = ["velocity"]
[[rules]]
id = "large"
description = "a large payment is held for an analyst"
expression = "amount >= 1000"
outcome = "review"
reasons = ["amount"]
"#;
const VELOCITY_CAP: i64 = 20;

#[tokio::test]
async fn risk_decisions_and_features_survive_kill_9_under_load() {
    // Eight payers pay with risk contexts, each from its own client, until the server is killed
    // with SIGKILL; three cycles, restarted without `--ruleset` (the active one is journaled).
    // Half the payers are capped (their payments are declined from the cap on), half are not (so
    // approvals are in flight when the kill comes); every 16th payment is large (held for review).
    // After each restart: every acknowledged transfer is in the ledger and its decision is on
    // record; every acknowledged review is in the queue and an analyst's approval
    // posts it; every acknowledged decline is on record and not in the ledger, and a retry is
    // declined again; and the velocity features were rebuilt from the journal: no capped payer ever
    // gets more than `VELOCITY_CAP` payments through in the hour (with the features lost, a restart
    // would let each payer through twenty more times), and a payer at the cap is declined at once.
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("cap.toml");
    std::fs::write(&ruleset, CAP_RULESET).unwrap();
    // Risk snapshots written while serving, as often as the checkpointer can: a restart starts
    // from whichever it last wrote (any position under load), then the journal after it.
    let checkpoints = ["--risk-snapshot-every", "50", "--risk-snapshot-interval-min-secs", "0"];
    let mut server =
        serve(dir.path(), &[&["--ruleset", ruleset.to_str().unwrap()][..], &checkpoints].concat());
    let c = Client::tenant(&server).await;
    let payers: Vec<String> = (0..8).map(|p| format!("payer{p}")).collect();
    let capped = |payer: &str| payer < "payer4";
    for id in payers.iter().map(String::as_str).chain(["shop"]) {
        let r = c.post(&server, "/v1/accounts", json!({"id": id, "currency": "CNY"})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let (mut approvals, mut declines, mut reviews) = (0, 0, 0);
    for cycle in 0..3 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for payer in &payers {
            let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/transfers"));
            let (stop, payer) = (stop.clone(), payer.clone());
            let channel = if capped(&payer) { "capped" } else { "open" };
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let amount = if i % 16 == 15 { 1_000 } else { 1 };
                    let mut body = transfer(&format!("{payer}-{cycle}-{i}"), &payer, "shop", amount);
                    body["risk_context"] = json!({"device_id": format!("{payer}-phone"), "channel": channel});
                    match try_post(&http, &url, &key, &body, None).await {
                        Some(answer) => acked.push((body, answer)),
                        None => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(250 + 100 * cycle)).await;
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        assert!(!acked.is_empty(), "no request was answered before the kill (cycle {cycle})");
        server = serve(dir.path(), &checkpoints);
        eprintln!(
            "cycle {cycle}: restarted reading {} journal entries ({} records carried by the snapshot), \
             re-applied {} decisions",
            gauge(&server, "puhui_risk_start_journal_entries_read").await,
            gauge(&server, "puhui_risk_start_records_carried").await,
            gauge(&server, "puhui_risk_start_decisions_replayed").await
        );
        for (body, (status, first)) in &acked {
            let id = body["id"].as_str().unwrap();
            let decision = c.get(&server, &format!("/v1/decisions/{id}")).await;
            let posted = c.get(&server, &format!("/v1/transfers/{id}")).await;
            match (*status, first["error"]["code"].as_str()) {
                (201, _) if first["risk_outcome"] == "review" => {
                    reviews += 1;
                    assert_eq!(
                        (posted.status, posted.body["pending_status"].as_str()),
                        (200, Some("pending")),
                        "acknowledged hold {id} was lost (cycle {cycle}): {:?}",
                        posted.body
                    );
                    assert_eq!(decision.body["outcome"], "review", "{id}: {:?}", decision.body);
                    let approved =
                        c.post(&server, &format!("/v1/risk/reviews/{id}/approve"), json!({})).await;
                    assert_eq!(
                        approved.status, 201,
                        "{id}: the review is not open after restart: {:?}",
                        approved.body
                    );
                }
                (201, _) => {
                    approvals += 1;
                    assert_eq!(posted.status, 200, "acknowledged transfer {id} was lost (cycle {cycle})");
                    assert_eq!(
                        (decision.status, decision.body["outcome"].as_str()),
                        (200, Some("approve")),
                        "{id}: {:?}",
                        decision.body
                    );
                }
                (422, Some("risk_declined")) => {
                    declines += 1;
                    assert_eq!(posted.status, 404, "declined transfer {id} is in the ledger");
                    assert_eq!(
                        (decision.status, decision.body["outcome"].as_str()),
                        (200, Some("decline")),
                        "{id}: {:?}",
                        decision.body
                    );
                    let retry = c.post(&server, "/v1/transfers", body.clone()).await;
                    assert_eq!(
                        (retry.status, retry.code()),
                        (422, "risk_declined"),
                        "{id}: {:?}",
                        retry.body
                    );
                }
                other => panic!("{id}: unexpected answer {other:?}: {first}"),
            }
        }
        for payer in payers.iter().filter(|p| capped(p)) {
            let account = c.get(&server, &format!("/v1/accounts/{payer}")).await;
            // Reviews are approved above, so each payment counts 1 or 1,000 (a large one).
            let net = -account.body["balances"]["net_posted"].as_i64().expect("a balance");
            let paid = net % 1_000 + net / 1_000;
            assert!(paid <= VELOCITY_CAP, "{payer} paid {paid} times in the hour (cycle {cycle})");
            if paid == VELOCITY_CAP {
                let mut next = transfer(&format!("{payer}-{cycle}-probe"), payer, "shop", 1);
                next["risk_context"] = json!({"device_id": format!("{payer}-phone"), "channel": "capped"});
                let r = c.post(&server, "/v1/transfers", next).await;
                assert_eq!((r.status, r.code()), (422, "risk_declined"), "{payer}: {:?}", r.body);
            }
        }
    }
    eprintln!("{approvals} approvals, {reviews} reviews and {declines} declines acknowledged before kills");
    assert!(
        declines > 0 && approvals > 0 && reviews > 0,
        "{approvals} approvals, {reviews} reviews, {declines} declines"
    );
    // Each restart started from a snapshot cut under load (its features an image of the serving
    // store at a journal position), then the journal after it: had a cut held one decision too
    // many or too few, the decisions made after it would differ from a replay of the whole
    // journal.
    assert!(server.terminate().success());
    backtest_reproduces_every_decision(dir.path());
}

#[tokio::test]
async fn full_batches_with_risk_contexts_wait_for_the_journal_instead_of_failing() {
    // Each decision is journaled as it is made; eight full batches at once are ~65,000 records
    // that arrive faster than group commits drain the journal's bounded queue. The deciders wait
    // for room: before, items past the queue's bound failed the batch with 503 `overloaded`. Eight
    // batches pass the decider thread's own queue (`DECISIONS_QUEUED_MAX`), so some are decided on
    // blocking-pool threads, which must wait too; and the deciders, waiting, must leave room in the
    // journal's queue for the batches' own postings (`DECISION_RECORDS_IN_FLIGHT_MAX`).
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    for i in 0..100 {
        assert_eq!(
            c.post(&server, "/v1/accounts", json!({"id": format!("a{i}"), "currency": "CNY"})).await.status,
            201
        );
    }
    let mut tasks = Vec::new();
    for b in 0..8 {
        let items: Vec<Value> = (0..8_189)
            .map(|i| {
                let (from, to) = (i % 100, (i * 7 + 1) % 100);
                let mut t =
                    transfer(&format!("b{b}-{i}"), &format!("a{from}"), &format!("a{to}"), 1 + i as u64);
                t["risk_context"] =
                    json!({"device_id": format!("d{from}"), "ip": format!("10.0.0.{to}"), "kyc_tier": "3"});
                t
            })
            .collect();
        let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/transfers/batch"));
        let body = json!({ "transfers": items }).to_string();
        tasks.push(tokio::spawn(async move { send(&http, "POST", &url, &key, Some(body), None).await }));
    }
    // Single transfers meanwhile: the committer decides them unless the decider (deciding the
    // batches) holds the controller; then the decider decides them. Each answer matches its record.
    let batches_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut singles = Vec::new();
    for client in 0..8 {
        let (http, key, url) = (c.http.clone(), c.key.clone(), server.url("/v1/transfers"));
        let done = batches_done.clone();
        singles.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0.. {
                if done.load(std::sync::atomic::Ordering::Relaxed) && i >= 20 {
                    break;
                }
                let (from, to) = (client, 50 + (i % 50));
                let mut t = transfer(&format!("s{client}-{i}"), &format!("a{from}"), &format!("a{to}"), 5);
                t["risk_context"] = json!({"device_id": format!("d{from}"), "kyc_tier": "3"});
                let r = send(&http, "POST", &url, &key, Some(t.to_string()), None).await;
                answers.push((format!("s{client}-{i}"), r.status, r.body));
            }
            answers
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body["error"]);
        let results = r.body["results"].as_array().expect("results");
        assert_eq!(results.len(), 8_189);
        assert!(results.iter().all(|x| x["code"] != "overloaded"), "an item refused for a full queue");
    }
    batches_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for t in singles {
        for (id, status, body) in t.await.unwrap() {
            answered += 1;
            let decision = c.get(&server, &format!("/v1/decisions/{id}")).await;
            let outcome = decision.body["outcome"].as_str().unwrap_or("none").to_string();
            match (status, outcome.as_str()) {
                (201, "approve") => assert_eq!(body["type"], "single", "{id}: {body}"),
                (201, "review") => assert_eq!(body["type"], "pending", "{id}: {body}"),
                (422, "decline") => assert_eq!(body["error"]["code"], "risk_declined", "{id}: {body}"),
                other => panic!("{id}: answer and record disagree: {other:?}: {body}"),
            }
        }
    }
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let busy = metrics
        .lines()
        .find_map(|l| l.strip_prefix("puhui_risk_committer_found_busy_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!("{answered} single transfers, {busy} found the controller busy");
    assert!(busy > 0.0, "no single transfer met the decider at work: the fallback went untested");
    // The journal holds the decisions in the order they were made (the singles decided on the
    // committer, the batches' items on the decider): a backtest reproduces every one exactly.
    assert!(server.terminate().success());
    backtest_reproduces_every_decision(dir.path());
}

#[tokio::test]
async fn an_id_twice_in_a_batch_is_decided_once_and_never_both_posted_and_declined() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    for id in ["bank", "shop"] {
        assert_eq!(c.post(&server, "/v1/accounts", json!({"id": id, "currency": "CNY"})).await.status, 201);
    }
    assert_eq!(c.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["evil"]})).await.status, 200);
    let evil = |id: &str, amount: u64| {
        let mut t = transfer(id, "bank", "shop", amount);
        t["risk_context"] = json!({"device_id": "evil"});
        t
    };
    let results = |r: &Reply| -> Vec<String> {
        r.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["result"].as_str().unwrap().to_string())
            .collect()
    };
    // Posted first, then the same id with a context that would be declined: not decided, the
    // ledger's duplicate; the id stays posted, and no decision names it.
    let r = c
        .post(
            &server,
            "/v1/transfers/batch",
            json!({"transfers": [transfer("x", "bank", "shop", 5), evil("x", 5)]}),
        )
        .await;
    assert_eq!(results(&r), ["ok", "exists"], "{:?}", r.body);
    let retry = c.post(&server, "/v1/transfers", transfer("x", "bank", "shop", 5)).await;
    assert_eq!(retry.status, 200, "x is posted, not declined: {:?}", retry.body);
    assert_eq!(c.get(&server, "/v1/decisions/x").await.status, 404);
    // Declined first: the same payment later in the batch is declined too, another payment is the
    // ledger's conflict, and nothing is posted.
    let batch = json!({"transfers": [evil("y", 5), transfer("y", "bank", "shop", 5), transfer("y", "bank", "shop", 6)]});
    let r = c.post(&server, "/v1/transfers/batch", batch).await;
    assert_eq!(
        results(&r),
        ["risk_declined", "risk_declined", "exists_with_different_amount"],
        "{:?}",
        r.body
    );
    assert_eq!(c.get(&server, "/v1/transfers/y").await.status, 404);
    let retry = c.post(&server, "/v1/transfers", transfer("y", "bank", "shop", 5)).await;
    assert_eq!((retry.status, retry.code()), (422, "risk_declined"), "{:?}", retry.body);
}

/// Writes a ruleset into `dir` that sends every payment to review, and returns its path.
fn review_all_ruleset(dir: &Path) -> std::path::PathBuf {
    let ruleset = dir.join("review-all.toml");
    let text = "version = \"review-all\"\n[thresholds]\nreview = 50\ndecline = 1000000\n[[rules]]\n\
                id = \"all\"\ndescription = \"every payment\"\nexpression = \"amount > 0\"\nscore = 60\n\
                reasons = [\"look\"]\n";
    std::fs::write(&ruleset, text).unwrap();
    ruleset
}

/// A transfer of 1 from `bank` to `shop` with a risk context (held for review by the ruleset of
/// [`review_all_ruleset`]).
fn reviewed(id: &str) -> Value {
    let mut t = transfer(id, "bank", "shop", 1);
    t["risk_context"] = json!({"device_id": "d"});
    t
}

/// `serve` arguments for the review-queue tests: `ruleset`, and a risk snapshot every
/// `snapshot_every` risk records with no minimum interval.
fn review_serve_args<'a>(ruleset: &'a Path, snapshot_every: &'a str) -> [&'a str; 6] {
    let ruleset = ruleset.to_str().unwrap();
    ["--ruleset", ruleset, "--risk-snapshot-every", snapshot_every, "--risk-snapshot-interval-min-secs", "0"]
}

/// Fills `c`'s review queue (`REVIEWS_PER_TENANT_MAX` holds `h0`, `h1`, …) in batches of 5,000.
async fn fill_review_queue(c: &Client, server: &Server) {
    let full = puhui_api::risk::REVIEWS_PER_TENANT_MAX;
    for chunk in (0..full).collect::<Vec<_>>().chunks(5_000) {
        let items: Vec<Value> = chunk.iter().map(|i| reviewed(&format!("h{i}"))).collect();
        let r = c.post(server, "/v1/transfers/batch", json!({"transfers": items})).await;
        assert_eq!(
            (r.status, r.body["ok"].as_u64()),
            (200, Some(chunk.len() as u64)),
            "{:?}",
            r.body["error"]
        );
    }
}

/// Waits until start-up has checked the review queue against the open holds (its gauges show).
async fn reviews_checked_at_start(server: &Server) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !metrics_text(server).await.contains("puhui_risk_start_reviews_restored ") {
        assert!(std::time::Instant::now() < deadline, "the review queue was not checked at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the checkpointer has written a risk snapshot while serving and read the journal
/// to its end.
async fn snapshot_written_and_caught_up(server: &Server) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while counter(server, "puhui_risk_checkpoints_total").await < 1.0
        || gauge(server, "puhui_risk_checkpointer_lag_entries").await > 0.0
    {
        assert!(std::time::Instant::now() < deadline, "no risk snapshot while serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pending_transfer_held_for_review_after_a_refusal_keeps_its_review_across_a_crash() {
    // A pending transfer held for review keeps its own timeout. Refused for a full queue, left
    // out of the snapshot written then, held by a retry once there is room, then `kill -9`: the
    // next start finds its hold among the open holds and gives it its review back.
    let dir = tempfile::tempdir().unwrap();
    let ruleset = review_all_ruleset(dir.path());
    let data = dir.path().join("data");
    let args = review_serve_args(&ruleset, "1");
    let server = serve(&data, &args);
    let c = Client::tenant(&server).await;
    for id in ["bank", "shop"] {
        assert_eq!(c.post(&server, "/v1/accounts", json!({"id": id, "currency": "CNY"})).await.status, 201);
    }
    fill_review_queue(&c, &server).await;
    let mut pending = reviewed("p");
    pending["type"] = json!("pending");
    pending["timeout_ms"] = json!(3_600_000);
    let refused = c.post(&server, "/v1/transfers", pending.clone()).await;
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "{:?}", refused.body);
    // Two snapshots written since (the first may have begun before p's decision).
    let written = counter(&server, "puhui_risk_checkpoints_total").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while counter(&server, "puhui_risk_checkpoints_total").await < written + 2.0
        || gauge(&server, "puhui_risk_checkpointer_lag_entries").await > 0.0
    {
        assert!(std::time::Instant::now() < deadline, "no risk snapshot while serving");
        // A decision makes the next snapshot due.
        let event = json!({"payer": "a", "payee": "b", "amount": 1, "currency": "CNY"});
        assert_eq!(c.post(&server, "/v1/decisions", event).await.status, 201);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.post(&server, "/v1/risk/reviews/h0/decline", json!({})).await.status, 201);
    let held = c.post(&server, "/v1/transfers", pending).await;
    assert_eq!(
        (held.status, held.body["pending_status"].as_str()),
        (201, Some("pending")),
        "{:?}",
        held.body
    );
    server.kill9();
    let server = serve(&data, &args);
    reviews_checked_at_start(&server).await;
    let approved = c.post(&server, "/v1/risk/reviews/p/approve", json!({})).await;
    assert_eq!(approved.status, 201, "{:?}", approved.body);
    assert_eq!(c.get(&server, "/v1/transfers/p").await.body["pending_status"], "posted");
}

#[tokio::test]
async fn a_full_review_queue_holds_nothing_more_and_a_restart_does_not_refill_it() {
    // A tenant's queue holds at most REVIEWS_PER_TENANT_MAX open reviews. A transfer decided for
    // review beyond it is not held (503), nor is its retry until there is room; another tenant is
    // not affected. A restart replays every review decision in the journal, and those whose hold
    // was resolved meanwhile leave the queue again, so the tenant's room is what it was. A risk
    // snapshot written while x was refused (not held) leaves x out; x, held later, gets its review
    // back at the next start, from its decision read back from the journal; so does xp, a pending
    // transfer (its hold keeps its own timeout).
    let full = puhui_api::risk::REVIEWS_PER_TENANT_MAX;
    let dir = tempfile::tempdir().unwrap();
    let ruleset = review_all_ruleset(dir.path());
    let data = dir.path().join("data");
    // No risk snapshot while the queue fills (10,000 decisions); the first during the 100,000 below.
    let args = review_serve_args(&ruleset, "20000");
    let server = serve(&data, &args);
    let (a, b) = (Client::tenant(&server).await, Client::tenant(&server).await);
    for c in [&a, &b] {
        for id in ["bank", "shop"] {
            let r = c.post(&server, "/v1/accounts", json!({"id": id, "currency": "CNY"})).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
    }
    fill_review_queue(&a, &server).await;
    let refused = a.post(&server, "/v1/transfers", reviewed("x")).await;
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "{:?}", refused.body);
    let again = a.post(&server, "/v1/transfers", reviewed("x")).await;
    assert_eq!(
        (again.status, again.code()),
        (503, "overloaded"),
        "a retry is not held either: {:?}",
        again.body
    );
    assert_eq!(a.get(&server, "/v1/transfers/x").await.status, 404, "nothing held");
    // And a pending transfer, which keeps its own timeout when held for review.
    let mut xp = reviewed("xp");
    xp["type"] = json!("pending");
    xp["timeout_ms"] = json!(3_600_000);
    let refused = a.post(&server, "/v1/transfers", xp.clone()).await;
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "{:?}", refused.body);
    let decided = a.get(&server, "/v1/decisions/x").await;
    assert_eq!(
        (decided.status, decided.body["outcome"].as_str()),
        (200, Some("review")),
        "{:?}",
        decided.body
    );
    // x's decision leaves the memory (100,000 newer decisions, another tenant's): its retries are
    // still answered from it, read back from the journal, not decided again.
    let kept = puhui_api::risk::DECISIONS_KEPT_MAX;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (http, key, url) = (b.http.clone(), b.key.clone(), server.url("/v1/decisions"));
        tasks.push(tokio::spawn(async move {
            for i in (task..kept).step_by(16) {
                let event = json!({"id": format!("d{i}"), "payer": "p", "payee": "q", "amount": 1, "currency": "CNY"});
                let (status, body) = try_post(&http, &url, &key, &event, None).await.unwrap();
                assert_eq!(status, 201, "{body:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    snapshot_written_and_caught_up(&server).await;
    let mut larger = reviewed("x");
    larger["amount"] = json!(1_000_000);
    let other = a.post(&server, "/v1/transfers", larger.clone()).await;
    assert_eq!((other.status, other.code()), (409, "exists_with_different_amount"), "{:?}", other.body);
    let again = a.post(&server, "/v1/transfers", reviewed("x")).await;
    assert_eq!((again.status, again.code()), (503, "overloaded"), "{:?}", again.body);
    let read_back = a.get(&server, "/v1/decisions/x").await;
    assert_eq!(
        read_back.body["journal_seq"], decided.body["journal_seq"],
        "one decision: {:?}",
        read_back.body
    );
    let other = b.post(&server, "/v1/transfers", reviewed("y")).await;
    assert_eq!(
        (other.status, other.body["risk_outcome"].as_str()),
        (201, Some("review")),
        "{:?}",
        other.body
    );
    // One review resolved: room for one. A retry naming another payment under x is not held
    // under x's decision (which saw 1 minor unit); the same payment is.
    assert_eq!(a.post(&server, "/v1/risk/reviews/h0/decline", json!({})).await.status, 201);
    let other = a.post(&server, "/v1/transfers", larger).await;
    assert_eq!((other.status, other.code()), (409, "exists_with_different_amount"), "{:?}", other.body);
    let held = a.post(&server, "/v1/transfers", reviewed("x")).await;
    assert_eq!(
        (held.status, held.body["pending_status"].as_str()),
        (201, Some("pending")),
        "{:?}",
        held.body
    );
    assert_eq!(a.post(&server, "/v1/risk/reviews/h6/decline", json!({})).await.status, 201);
    let held = a.post(&server, "/v1/transfers", xp).await;
    assert_eq!(
        (held.status, held.body["pending_status"].as_str(), held.body["timeout_ms"].as_u64()),
        (201, Some("pending"), Some(3_600_000)),
        "{:?}",
        held.body
    );
    let refused = a.post(&server, "/v1/transfers", reviewed("z")).await;
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "full again: {:?}", refused.body);
    // Five holds voided directly (their reviews stay queued until listed), then a crash.
    for i in 1..=5 {
        assert_eq!(a.post(&server, &format!("/v1/transfers/h{i}/void"), json!({})).await.status, 201);
    }
    server.kill9();
    let server = serve(&data, &args);
    // The replay queued every review decision again; start-up (in the background) drops the
    // seven resolved ones and z (not held), and gives x and xp their reviews back, read back from
    // the journal (their decisions forgotten; xp's hold has its own timeout, and its forgotten
    // decision is known for a review by its flag): 9,995 for a, and b's y.
    reviews_checked_at_start(&server).await;
    assert_eq!(gauge(&server, "puhui_risk_start_reviews_restored").await, 2.0, "x and xp");
    assert_eq!(gauge(&server, "puhui_risk_start_reviews_dropped").await, 8.0, "h0 to h6, and z");
    assert_eq!(
        gauge(&server, "puhui_risk_reviews_open").await,
        (full - 7 + 2 + 1) as f64,
        "with x and xp, and b's y"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let held = loop {
        let r = a.post(&server, "/v1/transfers", reviewed("z")).await;
        if r.status != 503 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((held.status, held.body["risk_outcome"].as_str()), (201, Some("review")), "{:?}", held.body);
    // The reviews still open are still there to resolve; the resolved ones are gone.
    assert_eq!(a.post(&server, "/v1/risk/reviews/h9/approve", json!({})).await.status, 201);
    let gone = a.post(&server, "/v1/risk/reviews/h3/approve", json!({})).await;
    assert_eq!((gone.status, gone.code()), (409, "review_resolved"), "{:?}", gone.body);
    // Room for five now (9,995 open). A batch of six reviews is refused whole, and the five it
    // queued as they were decided leave the queue with it: a batch of five fits afterwards.
    let six: Vec<Value> = (0..6).map(|i| reviewed(&format!("six{i}"))).collect();
    let refused = a.post(&server, "/v1/transfers/batch", json!({"transfers": six})).await;
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "{:?}", refused.body);
    let five: Vec<Value> = (0..5).map(|i| reviewed(&format!("five{i}"))).collect();
    let held = a.post(&server, "/v1/transfers/batch", json!({"transfers": five})).await;
    assert_eq!((held.status, held.body["ok"].as_u64()), (200, Some(5)), "{:?}", held.body);
    // x and xp, held after the snapshot that left them out, are under review again.
    let approved = a.post(&server, "/v1/risk/reviews/x/approve", json!({})).await;
    assert_eq!(approved.status, 201, "{:?}", approved.body);
    let approved = a.post(&server, "/v1/risk/reviews/xp/approve", json!({})).await;
    assert_eq!(approved.status, 201, "{:?}", approved.body);
    assert_eq!(a.get(&server, "/v1/transfers/xp").await.body["pending_status"], "posted");
}

#[tokio::test]
async fn transfers_with_a_risk_context_are_decided_inline_and_reviewed() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    for (id, wallet) in
        [("bank", false), ("w", true), ("shop", true), ("mule", true), ("mule2", true), ("mule3", true)]
    {
        let r = c
            .post(
                &server,
                "/v1/accounts",
                json!({"id": id, "currency": "CNY", "debits_must_not_exceed_credits": wallet}),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(c.post(&server, "/v1/transfers", transfer("fund", "bank", "w", 2_000_000)).await.status, 201);
    let with_ctx = |id: &str, to: &str, amount: u64, device: &str, tier: &str| {
        let mut t = transfer(id, "w", to, amount);
        t["risk_context"] = json!({"device_id": device, "kyc_tier": tier});
        t
    };
    // Approve: a small payment.
    let ok = c.post(&server, "/v1/transfers", with_ctx("t1", "shop", 5_000, "phone", "3")).await;
    assert_eq!(
        (ok.status, ok.body["risk_outcome"].as_str(), ok.body["type"].as_str()),
        (201, Some("approve"), Some("single"))
    );
    // Review: new device + new payee + large amount (account takeover) → posted as a hold, queued.
    let held = c.post(&server, "/v1/transfers", with_ctx("t2", "mule", 150_000, "stolen-phone", "3")).await;
    assert_eq!((held.status, held.body["risk_outcome"].as_str()), (201, Some("review")), "{:?}", held.body);
    assert_eq!(
        (held.body["type"].as_str(), held.body["pending_status"].as_str()),
        (Some("pending"), Some("pending"))
    );
    assert_eq!(c.get(&server, "/v1/accounts/w").await.body["balances"]["debits_pending"], 150_000);
    let queue = c.get(&server, "/v1/risk/reviews").await;
    assert_eq!(queue.body["data"][0]["id"], "t2", "{:?}", queue.body);
    // A retry of the held transfer (same id, same body) is the same transfer, not a conflict.
    let retry = c.post(&server, "/v1/transfers", with_ctx("t2", "mule", 150_000, "stolen-phone", "3")).await;
    assert_eq!((retry.status, retry.body["type"].as_str()), (200, Some("pending")), "{:?}", retry.body);
    let approved = c.post(&server, "/v1/risk/reviews/t2/approve", json!({})).await;
    assert_eq!(
        (approved.status, approved.body["type"].as_str()),
        (201, Some("post_pending")),
        "{:?}",
        approved.body
    );
    assert_eq!(c.get(&server, "/v1/accounts/mule").await.body["balances"]["net_posted"], 150_000);
    let again = c.post(&server, "/v1/risk/reviews/t2/approve", json!({})).await;
    assert_eq!((again.status, again.code()), (409, "review_resolved"), "a review is decided once");
    assert_eq!(c.post(&server, "/v1/risk/reviews/nothing/approve", json!({})).await.status, 404);
    // A held transfer is posted by approving its review, not around it; an approval the ledger
    // refuses (a frozen account) leaves the hold and its review open, and a later one posts it.
    let held = c.post(&server, "/v1/transfers", with_ctx("t6", "mule3", 130_000, "sim-swapped", "3")).await;
    assert_eq!(held.body["risk_outcome"], "review", "{:?}", held.body);
    let around = c.post(&server, "/v1/transfers/t6/post", json!({})).await;
    assert_eq!((around.status, around.code()), (409, "under_review"), "{:?}", around.body);
    let mut batch_post = json!({"id": "t6-post", "type": "post_pending", "pending_id": "t6"});
    batch_post["amount"] = json!(130_000);
    let around = c.post(&server, "/v1/transfers/batch", json!({"transfers": [batch_post.clone()]})).await;
    assert_eq!((around.status, around.code()), (409, "under_review"), "{:?}", around.body);
    let around = c.post(&server, "/v1/transfers", batch_post).await;
    assert_eq!((around.status, around.code()), (409, "under_review"), "{:?}", around.body);
    assert_eq!(c.post(&server, "/v1/accounts/mule3/freeze", json!({})).await.status, 200);
    let refused = c.post(&server, "/v1/risk/reviews/t6/approve", json!({})).await;
    assert_eq!((refused.status, refused.code()), (422, "account_frozen"), "{:?}", refused.body);
    let queue = c.get(&server, "/v1/risk/reviews").await;
    assert!(queue.body["data"].as_array().unwrap().iter().any(|r| r["id"] == "t6"), "{:?}", queue.body);
    assert_eq!(c.post(&server, "/v1/accounts/mule3/unfreeze", json!({})).await.status, 200);
    let approved = c.post(&server, "/v1/risk/reviews/t6/approve", json!({})).await;
    assert_eq!(approved.status, 201, "{:?}", approved.body);
    assert_eq!(c.get(&server, "/v1/accounts/mule3").await.body["balances"]["net_posted"], 130_000);
    // Another review, declined by the analyst: the hold is voided.
    let held = c.post(&server, "/v1/transfers", with_ctx("t3", "bank", 120_000, "burner", "3")).await;
    assert_eq!(held.body["risk_outcome"], "review", "{:?}", held.body);
    assert_eq!(c.post(&server, "/v1/risk/reviews/t3/decline", json!({})).await.status, 201);
    // A hold voided directly (not through the queue) leaves the queue when it is listed.
    let held =
        c.post(&server, "/v1/transfers", with_ctx("t5", "mule2", 110_000, "another-burner", "3")).await;
    assert_eq!(held.body["risk_outcome"], "review", "{:?}", held.body);
    assert_eq!(c.post(&server, "/v1/transfers/t5/void", json!({})).await.status, 201);
    let late = c.post(&server, "/v1/risk/reviews/t5/approve", json!({})).await;
    assert_eq!((late.status, late.code()), (409, "review_resolved"), "{:?}", late.body);
    let queue = c.get(&server, "/v1/risk/reviews").await;
    assert!(queue.body["data"].as_array().unwrap().iter().all(|r| r["id"] != "t5"), "{:?}", queue.body);
    assert_eq!(c.get(&server, "/v1/transfers/t3").await.body["pending_status"], "voided");
    // Decline: a tier-1 wallet over its daily cap is refused and nothing is posted.
    let refused = c.post(&server, "/v1/transfers", with_ctx("t4", "shop", 600_000, "phone", "1")).await;
    assert_eq!((refused.status, refused.code()), (422, "risk_declined"), "{:?}", refused.body);
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("kyc_cap"));
    let reasons = refused.body["error"]["reasons"].as_array().expect("reason codes, as a list").clone();
    assert!(reasons.iter().any(|r| r.as_str().unwrap().contains("kyc_cap")), "{:?}", refused.body);
    assert_eq!(c.get(&server, "/v1/transfers/t4").await.status, 404);
    // A declined id stays declined without a risk context too, alone or in a batch (where another
    // payment under it is that item's conflict).
    let bare = c.post(&server, "/v1/transfers", transfer("t4", "w", "shop", 600_000)).await;
    assert_eq!((bare.status, bare.code()), (422, "risk_declined"), "{:?}", bare.body);
    assert_eq!(bare.body["error"]["reasons"], json!(reasons), "the same reasons on a retry");
    let batch = json!({"transfers": [transfer("t4", "w", "shop", 600_000), transfer("t4", "w", "shop", 1)]});
    let r = c.post(&server, "/v1/transfers/batch", batch).await;
    let results: Vec<&str> =
        r.body["results"].as_array().unwrap().iter().map(|x| x["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["risk_declined", "exists_with_different_amount"], "{:?}", r.body);
    assert_eq!(c.get(&server, "/v1/transfers/t4").await.status, 404);
    // Two requests under one id at once, one declined (a deny-listed device) and one without a
    // context: never a decline beside a posting. Each id ends declined, or posted with neither
    // request told it was declined.
    assert_eq!(c.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["evil"]})).await.status, 200);
    for round in 0..20 {
        let id = format!("race{round}");
        let (a, b) = tokio::join!(
            c.post(&server, "/v1/transfers", with_ctx(&id, "shop", 10, "evil", "3")),
            c.post(&server, "/v1/transfers", transfer(&id, "w", "shop", 10)),
        );
        let posted = c.get(&server, &format!("/v1/transfers/{id}")).await.status == 200;
        let told_declined = [&a, &b].iter().any(|r| r.status == 422);
        assert!(!(posted && told_declined), "round {round}: {:?} / {:?}", a.body, b.body);
        for r in [&a, &b] {
            assert!(matches!(r.status, 200 | 201 | 409 | 422), "round {round}: {} {:?}", r.status, r.body);
        }
    }
    let decision = c.get(&server, "/v1/decisions/t4").await;
    assert_eq!((decision.status, &decision.body["outcome"]), (200, &json!("decline")));
    // Batches are decided item by item: a declined item and the rest of its linked chain are not
    // posted; the others are.
    let mut small = transfer("b1", "w", "shop", 1_000);
    small["risk_context"] = json!({"device_id": "phone", "kyc_tier": "3"});
    let mut capped = transfer("b2", "w", "shop", 600_000);
    capped["risk_context"] = json!({"device_id": "phone", "kyc_tier": "1"});
    capped["linked"] = json!(true);
    let partner = transfer("b3", "w", "shop", 10);
    let r = c.post(&server, "/v1/transfers/batch", json!({"transfers": [small, capped, partner]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results: Vec<&str> =
        r.body["results"].as_array().unwrap().iter().map(|x| x["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["ok", "risk_declined", "linked_event_failed"], "{:?}", r.body);
    assert_eq!(r.body["results"][1]["reasons"], json!(reasons), "a declined item's reasons: {:?}", r.body);
    assert!(r.body["results"][0].get("reasons").is_none() && r.body["results"][2].get("reasons").is_none());
    assert_eq!(r.body["ok"], 1);
    assert_eq!(c.get(&server, "/v1/transfers/b1").await.status, 200);
    assert_eq!(c.get(&server, "/v1/transfers/b3").await.status, 404, "not submitted");
    assert_eq!(c.get(&server, "/v1/decisions/b2").await.body["outcome"], "decline");
    // The same id twice in one batch: decided once, the second answered as a retry by the ledger.
    let mut twice = transfer("b4", "w", "shop", 1_000);
    twice["risk_context"] = json!({"device_id": "phone", "kyc_tier": "3"});
    let r = c.post(&server, "/v1/transfers/batch", json!({"transfers": [twice.clone(), twice]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results: Vec<&str> =
        r.body["results"].as_array().unwrap().iter().map(|x| x["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["ok", "exists"], "{:?}", r.body);
    assert_eq!(c.get(&server, "/v1/decisions/b4").await.body["outcome"], "approve");
    // Approved, then refused by the ledger (the posting queued behind the decision on the
    // deciding thread): the ledger's error, the decision on record, and a retry gets the same.
    for _ in 0..2 {
        let ghost = c.post(&server, "/v1/transfers", with_ctx("t1x", "ghost", 500, "phone", "3")).await;
        assert_eq!((ghost.status, ghost.code()), (404, "account_not_found"), "{:?}", ghost.body);
    }
    assert_eq!(c.get(&server, "/v1/decisions/t1x").await.body["outcome"], "approve");
}

#[tokio::test]
async fn draining_a_wallet_from_a_new_device_is_declined_with_the_balance_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    for (id, wallet) in [("bank", false), ("w", true), ("rich", true), ("mule", true)] {
        let body = json!({"id": id, "currency": "CNY", "debits_must_not_exceed_credits": wallet});
        assert_eq!(c.post(&server, "/v1/accounts", body).await.status, 201);
    }
    assert_eq!(c.post(&server, "/v1/transfers", transfer("f1", "bank", "w", 100_000)).await.status, 201);
    assert_eq!(c.post(&server, "/v1/transfers", transfer("f2", "bank", "rich", 5_000_000)).await.status, 201);
    let mut hold = transfer("h1", "w", "bank", 3_000);
    hold["type"] = json!("pending");
    hold["timeout_ms"] = json!(60_000);
    assert_eq!(c.post(&server, "/v1/transfers", hold).await.status, 201, "a hold lowers what is available");
    let from_new_phone = |id: &str, from: &str, amount: u64| {
        let mut t = transfer(id, from, "mule", amount);
        t["risk_context"] = json!({"device_id": "thief-phone", "kyc_tier": "3"});
        t
    };
    // 95,000 of the 97,000 available, from a new device to a new payee: declined, with the drain
    // among the reasons, and the balance the rules saw on the decision.
    let r = c.post(&server, "/v1/transfers", from_new_phone("drain", "w", 95_000)).await;
    eprintln!("DEBUG {}", c.get(&server, "/v1/decisions/drain").await.body);
    assert_eq!((r.status, r.code()), (422, "risk_declined"), "{:?}", r.body);
    assert!(
        r.body["error"]["reasons"].as_array().unwrap().iter().any(|x| x == "balance_drain"),
        "{:?}",
        r.body
    );
    let d = c.get(&server, "/v1/decisions/drain").await.body;
    assert_eq!(d["event"]["payer_balance"], 97_000, "{d}");
    assert!(d["fired"].as_array().unwrap().iter().any(|f| f["rule"] == "account_takeover_drain"), "{d}");
    assert_eq!(c.get(&server, "/v1/accounts/w").await.body["balances"]["net_posted"], 100_000);
    // In a batch (decided on the decider thread, the balance read before): the same.
    let r = c
        .post(&server, "/v1/transfers/batch", json!({"transfers": [from_new_phone("drain-b", "w", 95_000)]}))
        .await;
    assert_eq!(r.body["results"][0]["result"], "risk_declined", "{:?}", r.body);
    assert!(
        r.body["results"][0]["reasons"].as_array().unwrap().iter().any(|x| x == "balance_drain"),
        "{:?}",
        r.body
    );
    assert_eq!(c.get(&server, "/v1/decisions/drain-b").await.body["event"]["payer_balance"], 97_000);
    // The same from a wallet that keeps most of its money: held for review, not declined.
    let r = c.post(&server, "/v1/transfers", from_new_phone("large", "rich", 95_000)).await;
    assert_eq!((r.status, r.body["risk_outcome"].as_str()), (201, Some("review")), "{:?}", r.body);
    let d = c.get(&server, "/v1/decisions/large").await.body;
    assert_eq!(d["event"]["payer_balance"], 5_000_000, "{d}");
    assert!(d["fired"].as_array().unwrap().iter().all(|f| f["rule"] != "account_takeover_drain"), "{d}");
    // A standalone decision carries the balance if the caller knows it; without it the drain rule
    // cannot fire, and the event shows none.
    let event = json!({"payer": "card-1", "payee": "shop-9", "amount": 60_000, "currency": "CNY",
                       "risk_context": {"device_id": "new-terminal"}, "record": false});
    let mut with_balance = event.clone();
    with_balance["id"] = json!("s1");
    with_balance["payer_balance"] = json!(61_000);
    let r = c.post(&server, "/v1/decisions", with_balance.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(
        r.body["fired"].as_array().unwrap().iter().any(|f| f["rule"] == "account_takeover_drain"),
        "{:?}",
        r.body
    );
    assert_eq!(c.get(&server, "/v1/decisions/s1").await.body["event"]["payer_balance"], 61_000);
    let mut other_balance = with_balance.clone();
    other_balance["payer_balance"] = json!(1_000_000);
    let r = c.post(&server, "/v1/decisions", other_balance).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "exists_with_different_event"),
        "another balance is another event: {:?}",
        r.body
    );
    let mut without = event;
    without["id"] = json!("s2");
    let r = c.post(&server, "/v1/decisions", without).await;
    assert!(
        r.body["fired"].as_array().unwrap().iter().all(|f| f["rule"] != "account_takeover_drain"),
        "{:?}",
        r.body
    );
    assert!(c.get(&server, "/v1/decisions/s2").await.body["event"].get("payer_balance").is_none());
    let bad = c
        .post(
            &server,
            "/v1/decisions",
            json!({"payer": "a", "payee": "b", "amount": 1, "currency": "CNY", "payer_balance": 1.5}),
        )
        .await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
}

#[tokio::test]
async fn transfer_proofs_over_http_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    let other = Client::tenant(&server).await;
    c.setup(&server).await;
    // Checkpoints are made about every second: wait for one that covers the transfer.
    let mut proof = None;
    for _ in 0..50 {
        let r = c.get(&server, "/v1/transfers/fund-alice/proof").await;
        match r.status {
            200 => {
                proof = Some(r.body);
                break;
            }
            409 => {
                assert_eq!(r.code(), "not_checkpointed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    let proof = proof.expect("a checkpoint covered the transfer within 10 s");
    assert_eq!(other.get(&server, "/v1/transfers/fund-alice/proof").await.status, 404, "tenant-scoped");
    let latest = c.get(&server, "/v1/journal/checkpoints/latest").await;
    assert_eq!(latest.status, 200, "{:?}", latest.body);
    proof_verifies_offline(&c, &server, dir.path(), &proof).await;
    let bad = c.get(&server, "/v1/journal/consistency?from=5&to=1").await;
    assert_eq!(bad.status, 400);
    assert_eq!(c.get(&server, "/v1/journal/checkpoints/123456789").await.status, 404);
}

#[tokio::test]
async fn hostile_inputs_get_typed_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    // A multi-byte character where a UUID digit belongs.
    let mut t = transfer("u1", "alice", "bob", 1);
    t["uetr"] = json!("€00000000000000000000000000000----");
    let r = c.post(&server, "/v1/transfers", t).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("uetr")));
    let mut t = transfer("u2", "alice", "bob", 1);
    t["uetr"] = json!("+f2c1b0a-0000-4000-8000-000000000000");
    assert_eq!(c.post(&server, "/v1/transfers", t).await.status, 400);
    let mut t = transfer("u3", "alice", "bob", 1);
    t["uetr"] = json!("9f2c1b0a-0000-4000-8000-000000000000");
    let ok = c.post(&server, "/v1/transfers", t).await;
    assert_eq!((ok.status, ok.body["uetr"].as_str()), (201, Some("9f2c1b0a-0000-4000-8000-000000000000")));
    // Amounts are the int64 the OpenAPI document promises; beyond it, a typed 400.
    let r = c.post(&server, "/v1/transfers", transfer("big", "alice", "bob", 1 << 63)).await;
    assert_eq!(
        (r.status, r.code(), r.body["error"]["param"].as_str()),
        (400, "amount_too_large", Some("amount"))
    );
    let r = c.post(&server, "/v1/accounts", json!({"id": "lim", "currency": "CNY", "limit": u64::MAX})).await;
    assert_eq!((r.status, r.code()), (400, "amount_too_large"), "{:?}", r.body);
    // A metadata number that would come back changed (2^70 parsed as a float) is refused.
    let mut t = transfer("meta-big", "alice", "bob", 1);
    t["metadata"] = serde_json::from_str(r#"{"n": {"deep": [1180591620717411303424]}}"#).unwrap();
    let r = c.post(&server, "/v1/transfers", t).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("metadata")), "{:?}", r.body);
    let mut t = transfer("meta-ok", "alice", "bob", 1);
    t["metadata"] = json!({"n": u64::MAX, "f": 1.5, "i": -5});
    let r = c.post(&server, "/v1/transfers", t).await;
    assert_eq!((r.status, &r.body["metadata"]["n"]), (201, &json!(u64::MAX)), "{:?}", r.body);
    // A body is an object, not the fields in a row.
    let r = c.post(&server, "/v1/accounts", json!(["arr1", "CNY", null, false, false, null, null])).await;
    assert_eq!((r.status, r.code()), (400, "invalid_json"), "{:?}", r.body);
    assert_eq!(c.get(&server, "/v1/accounts/arr1").await.status, 404);
    // A path that is not UTF-8 names nothing: 404 in the envelope.
    let r = c.get(&server, "/v1/accounts/%FF").await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    // A huge path or huge headers: 414 / 431 in the envelope, before any other work (even with no
    // key); hyper's own limits are far beyond these.
    let r = c.get(&server, &format!("/v1/accounts/{}", "a".repeat(9 << 10))).await;
    assert_eq!((r.status, r.code()), (414, "uri_too_long"), "{:?}", r.body);
    let http = reqwest::Client::new();
    let big = http.get(server.url("/v1/accounts/alice")).header("x-padding", "p".repeat(40 << 10));
    let r = big.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 431);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large", "{body:?}");
    // The server is still up.
    assert_eq!(c.get(&server, "/v1/accounts/alice").await.status, 200);
}

const STRICT_RULESET: &str = r#"
version = "strict-test"
[thresholds]
review = 30
decline = 100
[[features]]
name = "payer_count_1h"
entity = "payer"
aggregate = "count"
window = "1h"
[[rules]]
id = "busy_payer"
description = "three payments in an hour"
expression = "payer_count_1h >= 3"
score = 40
reasons = ["velocity"]
"#;

#[tokio::test]
async fn risk_records_are_journaled_survive_restart_and_replay_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--risk-keys-max", "999999"]);
    let admin = reqwest::Client::new();
    let admin_post = |path: &str, body: Value| {
        let (http, url) = (admin.clone(), server.url(path));
        async move { send(&http, "POST", &url, ADMIN, Some(body.to_string()), None).await }
    };
    // Rulesets: a bad one names its rule and line; a version names one text forever.
    let bad = admin_post("/v1/rulesets", json!({"text": STRICT_RULESET.replace(">= 3", ">= ")})).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_ruleset"), "{:?}", bad.body);
    assert!(bad.body["error"]["message"].as_str().unwrap().contains("busy_payer"));
    let published = admin_post("/v1/rulesets", json!({"text": STRICT_RULESET})).await;
    assert_eq!((published.status, &published.body["active"]), (201, &json!(false)), "{:?}", published.body);
    assert_eq!(admin_post("/v1/rulesets", json!({"text": STRICT_RULESET})).await.status, 200);
    let conflict =
        admin_post("/v1/rulesets", json!({"text": STRICT_RULESET.replace("score = 40", "score = 45")})).await;
    assert_eq!((conflict.status, conflict.code()), (409, "ruleset_version_conflict"));
    for version in ["", "two words", "new\nline", &"v".repeat(65), ".", ".."] {
        let text = STRICT_RULESET.replace("version = \"strict-test\"", &format!("version = {version:?}"));
        let refused = admin_post("/v1/rulesets", json!({"text": text})).await;
        assert_eq!(
            (refused.status, refused.code()),
            (400, "invalid_ruleset"),
            "{version:?}: {:?}",
            refused.body
        );
    }
    let renamed = [
        ("name = \"payer_count_1h\"", "name = \"a-b\""),
        ("name = \"payer_count_1h\"", "name = \"true\""),
        ("id = \"busy_payer\"", "id = \"\""),
    ];
    for (from, to) in renamed {
        let refused = admin_post("/v1/rulesets", json!({"text": STRICT_RULESET.replace(from, to)})).await;
        assert_eq!((refused.status, refused.code()), (400, "invalid_ruleset"), "{to}: {:?}", refused.body);
    }
    let same =
        admin_post("/v1/rulesets/activation", json!({"active": "strict-test", "shadow": "strict-test"}))
            .await;
    assert_eq!((same.status, same.code()), (400, "invalid_request"), "{:?}", same.body);
    let switched =
        admin_post("/v1/rulesets/activation", json!({"active": "starter-3", "shadow": "strict-test"})).await;
    assert_eq!(switched.status, 200, "{:?}", switched.body);
    assert_eq!(admin_post("/v1/rulesets/activation", json!({"active": "nope"})).await.status, 404);

    let c = Client::tenant(&server).await;
    for i in 0..6 {
        let body = json!({
            "id": format!("d{i}"), "payer": "w1", "payee": format!("m{i}"), "amount": 100, "currency": "CNY",
            "risk_context": {"device_id": "phone-1", "channel": "app", "kyc_tier": "3"}
        });
        let r = c.post(&server, "/v1/decisions", body).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let d5 = c.get(&server, "/v1/decisions/d5").await.body;
    assert_eq!(d5["shadow"]["ruleset_version"], "strict-test", "{d5}");
    assert_eq!(d5["shadow"]["outcome"], "review", "the shadow saw the velocity: {d5}");
    assert_eq!(d5["outcome"], "approve", "the active ruleset is acted on: {d5}");
    // Lists: a tenant's deny list holds its own ids.
    let listed = c.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["stolen"]})).await;
    assert_eq!((listed.status, &listed.body["values"]), (200, &json!(["stolen"])), "{:?}", listed.body);
    let denied = c
        .post(
            &server,
            "/v1/decisions",
            json!({"id": "d-stolen", "payer": "w9", "payee": "m1", "amount": 1, "currency": "CNY",
                   "risk_context": {"device_id": "stolen"}}),
        )
        .await;
    assert_eq!(denied.body["outcome"], "decline", "{:?}", denied.body);
    let mut stolen = transfer("tx-stolen", "w9", "m1", 1);
    stolen["risk_context"] = json!({"device_id": "stolen"});
    let refused = c.post(&server, "/v1/transfers", stolen.clone()).await;
    assert_eq!((refused.status, refused.code()), (422, "risk_declined"), "{:?}", refused.body);
    // Labels.
    let labelled =
        c.post(&server, "/v1/decisions/d5/label", json!({"label": "fraud", "source": "analyst"})).await;
    assert_eq!((labelled.status, &labelled.body["label"]), (200, &json!("fraud")), "{:?}", labelled.body);
    assert_eq!(c.post(&server, "/v1/decisions/d5/label", json!({"label": "maybe"})).await.status, 400);
    assert_eq!(c.post(&server, "/v1/decisions/nope/label", json!({"label": "legit"})).await.status, 404);
    assert!(server.terminate().success());

    // After a restart: decisions, labels, rulesets, lists and the velocity features are back.
    let server = serve(dir.path(), &["--risk-keys-max", "999999"]);
    let d5 = c.get(&server, "/v1/decisions/d5").await.body;
    assert_eq!((&d5["label"], &d5["outcome"]), (&json!("fraud"), &json!("approve")), "{d5}");
    let rulesets = send(&admin, "GET", &server.url("/v1/rulesets"), ADMIN, None, None).await.body;
    let strict = rulesets["data"].as_array().unwrap().iter().find(|r| r["version"] == "strict-test").cloned();
    assert_eq!(strict.map(|r| r["shadow"].clone()), Some(json!(true)), "{rulesets}");
    assert_eq!(c.get(&server, "/v1/lists/deny_devices").await.body["values"], json!(["stolen"]));
    // A declined transfer's retry is declined again, even with the device off the list by now: the
    // decision under an id is made once. The same id for another payment is a conflict.
    let cleared = c.post(&server, "/v1/lists/deny_devices/remove", json!({"values": ["stolen"]})).await;
    assert_eq!(cleared.status, 200, "{:?}", cleared.body);
    let retry = c.post(&server, "/v1/transfers", stolen.clone()).await;
    assert_eq!((retry.status, retry.code()), (422, "risk_declined"), "{:?}", retry.body);
    stolen["amount"] = json!(2);
    let other = c.post(&server, "/v1/transfers", stolen).await;
    assert_eq!((other.status, other.code()), (409, "exists_with_different_amount"), "{:?}", other.body);
    for i in 6..12 {
        let body = json!({
            "id": format!("d{i}"), "payer": "w1", "payee": format!("m{i}"), "amount": 100, "currency": "CNY",
            "risk_context": {"device_id": "phone-1", "channel": "app", "kyc_tier": "3"}
        });
        assert_eq!(c.post(&server, "/v1/decisions", body).await.status, 201);
    }
    let d11 = c.get(&server, "/v1/decisions/d11").await.body;
    assert!(d11["features"]["payer_count_1m"].as_f64().unwrap() >= 11.0, "features survived: {d11}");
    assert_eq!(d11["outcome"], "review", "{d11}");
    // The decision shows the event it was made on, ids as the tenant gave them.
    let event = &d11["event"];
    assert_eq!(
        (&event["payer"], &event["payee"], &event["amount"]),
        (&json!("w1"), &json!("m11"), &json!(100))
    );
    assert_eq!(event["risk_context"]["device_id"], "phone-1", "{d11}");
    assert_eq!((&event["risk_context"]["channel"], &event["currency"]), (&json!("app"), &json!("CNY")));
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z') && event["timestamp_ns"].as_u64().is_some());
    // The decision record is in the verifiable journal: the shutdown checkpoint covers d5, and its
    // inclusion proof verifies offline.
    let proof = c.get(&server, "/v1/decisions/d5/proof").await;
    assert_eq!(proof.status, 200, "{:?}", proof.body);
    assert!(d5["journal_seq"].as_u64().is_some(), "{d5}");
    proof_verifies_offline(&c, &server, dir.path(), &proof.body).await;
    assert!(server.terminate().success());

    // The backtest replays the journal and reproduces every online decision exactly.
    let out = backtest_reproduces_every_decision(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("999999 keys and pairs, 1024 events per key at the journal's end"),
        "the server's bounds, read from the journal: {stderr}"
    );
    // The replay's feature store takes the server's bounds as flags: far below what the server ran
    // with (the defaults), it evicts keys the server kept, and a decision comes out otherwise.
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["risk", "backtest", "--data-dir"])
        .arg(dir.path())
        .args(["--risk-keys-max", "2", "--risk-events-per-key-max", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("every decision reproduced exactly"), "{stdout}");
    let refused = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["risk", "backtest", "--data-dir"])
        .arg(dir.path())
        .args(["--risk-keys-max", "0"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "a bound of 0 is a usage error");
    // A candidate: the strict ruleset flags the labelled fraud the starter let through.
    let candidate = dir.path().join("strict.toml");
    std::fs::write(&candidate, STRICT_RULESET).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["risk", "backtest", "--data-dir"])
        .arg(dir.path())
        .arg("--ruleset")
        .arg(&candidate)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("backtest.json")).unwrap()).unwrap();
    assert_eq!(report["decisions"], 14);
    assert_eq!(report["confusion"]["true_positives"], 1, "{report}");
    assert_eq!(report["confusion_online"]["false_negatives"], 1, "{report}");
    let rules = report["rules"].as_array().unwrap();
    assert!(!rules.is_empty() && rules.iter().all(|r| r.get("false_positive_rate").is_some()), "{report}");
    let svg = std::fs::read_to_string(dir.path().join("scores.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{svg}");
    // An empty period is a mistake, not a clean report.
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["risk", "backtest", "--data-dir"])
        .arg(dir.path())
        .args(["--from", "2030-01-01T00:00:00Z", "--to", "2020-01-01T00:00:00Z"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--from must be before --to"), "{stderr}");
}

/// The published versions (`GET /v1/rulesets`) and the active one.
async fn rulesets(server: &Server) -> (Vec<String>, String) {
    let body =
        send(&reqwest::Client::new(), "GET", &server.url("/v1/rulesets"), ADMIN, None, None).await.body;
    let data = body["data"].as_array().expect("a list").clone();
    let versions = data.iter().map(|r| r["version"].as_str().unwrap().to_string()).collect();
    let active = data.iter().find(|r| r["active"] == json!(true)).expect("one active");
    (versions, active["version"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_ruleset_given_at_start_is_journaled_so_a_restart_without_it_finds_it() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), STRICT_RULESET).unwrap();
    let path = file.path().to_str().unwrap();

    // An existing data directory (the starter active), restarted with `--ruleset`, then without.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    assert_eq!(rulesets(&server).await, (vec!["starter-3".to_string()], "starter-3".to_string()));
    assert!(server.terminate().success());
    let server = serve(dir.path(), &["--ruleset", path]);
    assert_eq!(rulesets(&server).await.1, "strict-test");
    assert!(server.terminate().success());
    let server = serve(dir.path(), &[]);
    let (versions, active) = rulesets(&server).await;
    assert_eq!(
        (versions, active.as_str()),
        (vec!["starter-3".to_string(), "strict-test".into()], "strict-test")
    );
    assert!(server.terminate().success());

    // A fresh directory started with `--ruleset`: the starter, never journaled, is not listed after
    // a restart without it.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--ruleset", path]);
    assert_eq!(rulesets(&server).await, (vec!["strict-test".to_string()], "strict-test".to_string()));
    assert!(server.terminate().success());
    let server = serve(dir.path(), &[]);
    let (versions, active) = rulesets(&server).await;
    assert_eq!((versions, active.as_str()), (vec!["strict-test".to_string()], "strict-test"));
    let starter = send(
        &reqwest::Client::new(),
        "POST",
        &server.url("/v1/rulesets/activation"),
        ADMIN,
        Some(json!({"active": "starter-3"}).to_string()),
        None,
    )
    .await;
    assert_eq!(starter.status, 404, "not published here: {:?}", starter.body);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn a_tenant_cannot_reach_another_tenants_devices_through_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let (a, b) = (Client::tenant(&server).await, Client::tenant(&server).await);
    let listed = b.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["dev1"]})).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let decide = |c: &Client, id: &str, context: Value| {
        let body = json!({"id": id, "payer": "w1", "payee": "m1", "amount": 100, "currency": "CNY", "risk_context": context});
        let (http, url, key) = (c.http.clone(), server.url("/v1/decisions"), c.key.clone());
        async move { send(&http, "POST", &url, &key, Some(body.to_string()), None).await }
    };
    // B's own device is declined by B's list, whatever characters its id has.
    let own = decide(&b, "b1", json!({"device_id": "dev1"})).await;
    assert_eq!(own.body["outcome"], "decline", "{:?}", own.body);
    let base64 = b.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["ab+/c=="]})).await;
    assert_eq!(base64.status, 200, "{:?}", base64.body);
    let own = decide(&b, "b2", json!({"device_id": "ab+/c=="})).await;
    assert_eq!(own.body["outcome"], "decline", "{:?}", own.body);
    let control = b.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["a\nb"]})).await;
    assert_eq!(control.status, 400, "{:?}", control.body);
    let control = decide(&b, "b3", json!({"device_id": "a\nb"})).await;
    assert_eq!((control.status, control.code()), (400, "invalid_request"), "{:?}", control.body);
    // Operator-wide lists are the admin's, listed apart.
    let admin = reqwest::Client::new();
    let global = send(
        &admin,
        "POST",
        &server.url("/v1/admin/lists/deny_countries/add"),
        ADMIN,
        Some(json!({"values": ["XX"]}).to_string()),
        None,
    )
    .await;
    assert_eq!((global.status, &global.body["values"]), (200, &json!(["XX"])), "{:?}", global.body);
    let page = send(&admin, "GET", &server.url("/v1/admin/lists/deny_countries"), ADMIN, None, None).await;
    assert_eq!(page.body["values"], json!(["XX"]), "{:?}", page.body);
    assert_eq!(
        b.get(&server, "/v1/lists/deny_countries").await.body["values"],
        json!([]),
        "a tenant sees its own values"
    );
    // A naming B's scoped device id, as a top-level field or as an attribute, is not on any list.
    let spelt = format!("{}:dev1", b.id);
    for (i, context) in
        [json!({"device_id": spelt}), json!({"attributes": {"device_id": spelt}})].into_iter().enumerate()
    {
        let probe = decide(&a, &format!("a{i}"), context).await;
        assert_eq!((probe.status, &probe.body["outcome"]), (201, &json!("approve")), "{:?}", probe.body);
    }
    // Nor through an unscoped attribute spelt as B's scoped value (a rule may look any up).
    for context in [json!({"channel": spelt}), json!({"attributes": {"foo": spelt}})] {
        let probe = decide(&a, "a-probe", context).await;
        assert_eq!((probe.status, probe.code()), (400, "invalid_request"), "{:?}", probe.body);
    }
    let own = decide(&a, "a-own", json!({"attributes": {"foo": format!("{}:x", a.id)}})).await;
    assert_eq!(own.status, 201, "its own prefix is its own: {:?}", own.body);
    // A's events on "B's" device do not count in B's device windows.
    for i in 0..6 {
        let r =
            decide(&a, &format!("a-dev-{i}"), json!({"attributes": {"device_id": format!("{}:devX", b.id)}}))
                .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let first = decide(&b, "b-devX", json!({"device_id": "devX"})).await;
    assert_eq!(first.body["features"]["device_accounts_24h"], json!(0.0), "{:?}", first.body);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn a_decision_id_names_one_event_and_is_never_reused_by_a_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let event = json!({"id": "T9", "payer": "alice", "payee": "bob", "amount": 100, "currency": "CNY",
                       "timestamp": "2026-11-27T10:00:00Z",
                       "risk_context": {"device_id": "phone-1", "channel": "app"}});
    assert_eq!(c.post(&server, "/v1/decisions", event.clone()).await.status, 201);
    assert_eq!(c.post(&server, "/v1/decisions", event.clone()).await.status, 200, "a retry");
    let mut without_timestamp = event.clone();
    without_timestamp.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(c.post(&server, "/v1/decisions", without_timestamp).await.status, 200, "a retry");
    for (field, value) in [
        ("risk_context", json!({"device_id": "phone-1", "channel": "app", "kyc_tier": "1"})),
        ("timestamp", json!("2026-11-27T10:00:01Z")),
        ("record", json!(false)),
        ("amount", json!(101)),
    ] {
        let mut other = event.clone();
        other[field] = value;
        let r = c.post(&server, "/v1/decisions", other).await;
        assert_eq!((r.status, r.code()), (409, "exists_with_different_event"), "{field}: {:?}", r.body);
    }
    // A transfer with a risk context under the decision's id is refused, and the decision stays.
    let mut t = transfer("T9", "alice", "bob", 100);
    t["risk_context"] = json!({"device_id": "phone-1"});
    let r = c.post(&server, "/v1/transfers", t).await;
    assert_eq!((r.status, r.code()), (409, "exists_with_different_event"), "{:?}", r.body);
    let got = c.get(&server, "/v1/decisions/T9").await.body;
    assert_eq!(got["source"], "standalone", "{got}");
    assert_eq!(c.get(&server, "/v1/transfers/T9").await.status, 404, "nothing posted");
    // And a standalone decision under a transfer's id is refused the other way round.
    let mut t = transfer("T10", "alice", "bob", 100);
    t["risk_context"] = json!({"device_id": "phone-1"});
    assert_eq!(c.post(&server, "/v1/transfers", t).await.status, 201);
    let r = c
        .post(&server, "/v1/decisions", json!({"id": "T10", "payer": "alice", "payee": "bob", "amount": 100, "currency": "CNY", "risk_context": {"device_id": "phone-1"}}))
        .await;
    assert_eq!((r.status, r.code()), (409, "exists_with_different_event"), "{:?}", r.body);
    assert!(server.terminate().success());
}

/// Runs `puhui risk backtest` on `dir` without a candidate and asserts that it reproduced every
/// online decision exactly; returns its output.
/// Writes `proof` into `dir` and checks that `puhui journal verify-proof` accepts it with the
/// server's public key (offline: no data dir).
async fn proof_verifies_offline(c: &Client, server: &Server, dir: &Path, proof: &Value) {
    let key = c.get(server, "/v1/journal/public-key").await.body["public_key"].as_str().unwrap().to_string();
    let file = dir.join("proof.json");
    std::fs::write(&file, proof.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["journal", "verify-proof"])
        .arg(&file)
        .args(["--public-key", &key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn backtest_reproduces_every_decision(dir: &Path) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["risk", "backtest", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("every decision reproduced exactly"), "{stdout}");
    out
}

/// The text of `/metrics`.
async fn metrics_text(server: &Server) -> String {
    reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap()
}

/// A gauge's value on `/metrics`.
async fn gauge(server: &Server, name: &str) -> f64 {
    let text = metrics_text(server).await;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A counter's value on `/metrics` (0 before it first counts: it is not shown until then).
async fn counter(server: &Server, name: &str) -> f64 {
    let text = metrics_text(server).await;
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
    line.map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// The velocity feature `payer_count_1h` decision `t{i}` was made with (on record: it has a journal
/// position).
async fn count_of(c: &Client, server: &Server, i: u32) -> f64 {
    let d = c.get(server, &format!("/v1/decisions/t{i}")).await.body;
    assert!(d["journal_seq"].as_u64().is_some(), "{d}");
    d["features"]["payer_count_1h"].as_f64().unwrap()
}

/// The ids in the review queue.
async fn queued(c: &Client, server: &Server) -> Vec<String> {
    let body = c.get(server, "/v1/risk/reviews").await.body;
    body["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// Transfer `t{i}`: alice pays bob 10 from device `phone-1` (decided inline).
fn pay(i: u32) -> Value {
    let mut t = transfer(&format!("t{i}"), "alice", "bob", 10);
    t["risk_context"] = json!({"device_id": "phone-1"});
    t
}

/// Writes `STRICT_RULESET` into `dir`; its path, for `--ruleset`.
fn strict_ruleset_in(dir: &Path) -> String {
    let ruleset = dir.join("strict.toml");
    std::fs::write(&ruleset, STRICT_RULESET).unwrap();
    ruleset.to_str().unwrap().to_string()
}

#[tokio::test]
async fn risk_state_restarts_from_its_snapshot_then_the_journal_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let ruleset = strict_ruleset_in(dir.path());
    let server = serve(dir.path(), &["--ruleset", &ruleset]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    // Velocity: from the fourth payment in an hour on, alice's transfers are held for review.
    for i in 0..4 {
        let r = c.post(&server, "/v1/transfers", pay(i)).await;
        assert_eq!(
            (r.status, r.body["risk_outcome"].as_str()),
            (201, Some(if i < 3 { "approve" } else { "review" }))
        );
    }
    assert_eq!(c.post(&server, "/v1/decisions/t0/label", json!({"label": "fraud"})).await.status, 200);
    assert!(server.terminate().success());
    assert!(
        dir.path().join(puhui_api::risk::RISK_SNAPSHOT_FILE).exists(),
        "a clean stop saves the risk state"
    );

    // From the snapshot alone: no journal entry read, nothing re-applied, and the features, the
    // label, the decisions' journal positions and the review queue are all there.
    let server = serve(dir.path(), &["--ruleset", &ruleset]);
    assert_eq!(gauge(&server, "puhui_risk_start_decisions_replayed").await, 0.0);
    assert_eq!(gauge(&server, "puhui_risk_start_journal_entries_read").await, 0.0);
    assert_eq!(c.get(&server, "/v1/decisions/t0").await.body["label"], "fraud");
    assert_eq!(queued(&c, &server).await, ["t3"]);
    assert_eq!(c.post(&server, "/v1/transfers", pay(4)).await.body["risk_outcome"], "review");
    assert_eq!(count_of(&c, &server, 4).await, 4.0, "the four payments before it, from the snapshot");
    server.kill9();

    // Killed: the snapshot of the clean stop, then the journal after it (t4).
    let server = serve(dir.path(), &["--ruleset", &ruleset]);
    assert_eq!(gauge(&server, "puhui_risk_start_decisions_replayed").await, 1.0);
    let read = gauge(&server, "puhui_risk_start_journal_entries_read").await;
    assert!((2.0..=10.0).contains(&read), "t4's decision and posting, and little more: {read}");
    assert_eq!(queued(&c, &server).await, ["t3", "t4"]);
    assert_eq!(c.post(&server, "/v1/transfers", pay(5)).await.status, 201);
    assert_eq!((count_of(&c, &server, 4).await, count_of(&c, &server, 5).await), (4.0, 5.0));
    assert!(server.terminate().success());

    // A damaged snapshot is not used: every record is re-applied, to the same state.
    let file = dir.path().join(puhui_api::risk::RISK_SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let server = serve(dir.path(), &["--ruleset", &ruleset]);
    assert_eq!(gauge(&server, "puhui_risk_start_decisions_replayed").await, 6.0);
    assert_eq!(gauge(&server, "puhui_risk_start_records_carried").await, 0.0);
    assert!(gauge(&server, "puhui_risk_start_journal_entries_read").await > read, "the whole journal");
    assert_eq!(c.post(&server, "/v1/transfers", pay(6)).await.status, 201);
    assert_eq!(count_of(&c, &server, 6).await, 6.0);
    assert_eq!(c.get(&server, "/v1/decisions/t0").await.body["label"], "fraud");
    assert!(server.terminate().success());

    // Other feature bounds: the snapshot still holds (its bounds are the journal's there), and the
    // change is journaled for a replay to make at the same place.
    let server = serve(dir.path(), &["--ruleset", &ruleset, "--risk-keys-max", "5000"]);
    assert_eq!(gauge(&server, "puhui_risk_start_decisions_replayed").await, 0.0);
    assert_eq!(c.post(&server, "/v1/transfers", pay(7)).await.status, 201);
    assert_eq!(count_of(&c, &server, 7).await, 7.0);
    assert_eq!(queued(&c, &server).await, ["t3", "t4", "t5", "t6", "t7"]);
    assert!(server.terminate().success());

    // And the journal still reproduces every online decision exactly.
    backtest_reproduces_every_decision(dir.path());
}

#[tokio::test]
async fn a_backtest_bounds_the_features_as_the_server_did_before_and_after_a_bounds_change() {
    let dir = tempfile::tempdir().unwrap();
    let ruleset = strict_ruleset_in(dir.path());
    // A store of 12 keys and pairs: alice's count is evicted by other payers' keys.
    let server = serve(dir.path(), &["--ruleset", &ruleset, "--risk-keys-max", "12"]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    for i in 0..3 {
        assert_eq!(c.post(&server, "/v1/transfers", pay(i)).await.body["risk_outcome"], "approve");
    }
    for i in 0..20 {
        let event = json!({"id": format!("other{i}"), "payer": format!("w{i}"), "payee": format!("m{i}"),
                           "amount": 1, "currency": "CNY", "risk_context": {"device_id": format!("dev{i}")}});
        assert_eq!(c.post(&server, "/v1/decisions", event).await.status, 201);
    }
    let t3 = c.post(&server, "/v1/transfers", pay(3)).await;
    assert_eq!(t3.body["risk_outcome"], "approve", "alice's three payments were evicted: {:?}", t3.body);
    assert!(server.terminate().success());

    // Restarted with room for every key: from here on nothing is evicted.
    let server = serve(dir.path(), &["--ruleset", &ruleset, "--risk-keys-max", "1000"]);
    for i in 4..6 {
        assert_eq!(c.post(&server, "/v1/transfers", pay(i)).await.status, 201);
    }
    assert_eq!(count_of(&c, &server, 5).await, 2.0, "t3 and t4: what was evicted stays evicted");
    assert!(server.terminate().success());

    // The backtest meets the change where the server made it, and reproduces every decision; held
    // at the new bounds throughout, it would have kept alice's first payments and held t3.
    let out = backtest_reproduces_every_decision(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1000 keys and pairs, 1024 events per key at the journal's end"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["risk", "backtest", "--data-dir"])
        .arg(dir.path())
        .args(["--risk-keys-max", "1000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("t3"), "the first difference names t3: {stdout}");
}

#[tokio::test]
async fn a_start_reads_the_journal_from_the_risk_snapshot_on_with_rulesets_lists_and_keys_carried() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--risk-snapshot-every", "5", "--risk-snapshot-interval-min-secs", "0"];
    let server = serve(dir.path(), &args);
    let admin = reqwest::Client::new();
    let admin_post = |server: &Server, path: &str, body: Value| {
        let (http, url) = (admin.clone(), server.url(path));
        async move { send(&http, "POST", &url, ADMIN, Some(body.to_string()), None).await }
    };
    assert_eq!(admin_post(&server, "/v1/rulesets", json!({"text": STRICT_RULESET})).await.status, 201);
    let activation = json!({"active": "strict-test", "shadow": "starter-3"});
    assert_eq!(admin_post(&server, "/v1/rulesets/activation", activation).await.status, 200);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let listed = c.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["stolen", "lost"]})).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let removed = c.post(&server, "/v1/lists/deny_devices/remove", json!({"values": ["lost"]})).await;
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    let keyed = transfer("k1", "bank", "bob", 1);
    assert_eq!(c.post_idem(&server, "/v1/transfers", keyed.clone(), "key-1").await.status, 201);
    for i in 0..4 {
        assert_eq!(c.post(&server, "/v1/transfers", pay(i)).await.status, 201);
    }
    assert!(server.terminate().success());

    // What a restart needs, the journal before the snapshot included, comes from the snapshot: it
    // reads no journal entry (the clean stop's snapshot is at the journal's end).
    let state_is_back = |server: Server, key: &'static str, keyed: Value| {
        let c = &c;
        async move {
            let (versions, active) = rulesets(&server).await;
            assert_eq!(
                (versions, active.as_str()),
                (vec!["starter-3".into(), "strict-test".into()], "strict-test")
            );
            let listed =
                send(&reqwest::Client::new(), "GET", &server.url("/v1/rulesets"), ADMIN, None, None).await;
            let shadow =
                listed.body["data"].as_array().unwrap().iter().find(|r| r["shadow"] == json!(true)).cloned();
            assert_eq!(shadow.map(|r| r["version"].clone()), Some(json!("starter-3")), "{:?}", listed.body);
            let values = c.get(&server, "/v1/lists/deny_devices").await.body["values"].clone();
            let values: Vec<&str> = values.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert!(values.contains(&"stolen") && !values.contains(&"lost"), "{values:?}");
            let replayed = c.post_idem(&server, "/v1/transfers", keyed.clone(), key).await;
            assert_eq!(replayed.status, 201, "{:?}", replayed.body);
            assert!(replayed.headers.contains_key("idempotent-replayed"), "{key} replayed after the restart");
            let mut other = keyed;
            other["amount"] = json!(2);
            assert_eq!(c.post_idem(&server, "/v1/transfers", other, key).await.status, 409);
            server
        }
    };
    let server = serve(dir.path(), &args);
    assert_eq!(gauge(&server, "puhui_risk_start_journal_entries_read").await, 0.0);
    assert!(
        gauge(&server, "puhui_risk_start_records_carried").await >= 5.0,
        "2 rulesets, activation, list, key"
    );
    let server = state_is_back(server, "key-1", keyed.clone()).await;
    assert_eq!(c.get(&server, "/v1/lists/deny_devices").await.body["values"], json!(["stolen"]));
    assert_eq!(c.post(&server, "/v1/transfers", pay(4)).await.body["risk_outcome"], "review");
    assert_eq!(count_of(&c, &server, 4).await, 4.0, "the velocity features, from the snapshot");

    // Changes after it, then a snapshot written while serving, more changes, and `kill -9`: the
    // start applies that snapshot's records, then reads only the journal after it.
    let listed = c.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["cloned"]})).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let keyed_2 = transfer("k2", "bank", "bob", 1);
    assert_eq!(c.post_idem(&server, "/v1/transfers", keyed_2.clone(), "key-2").await.status, 201);
    // Five risk records since the start (two decisions, a list change, two more below): a
    // snapshot is due.
    for i in 5..7 {
        assert_eq!(c.post(&server, "/v1/transfers", pay(i)).await.status, 201);
    }
    assert_eq!(c.post(&server, "/v1/decisions/t0/label", json!({"label": "fraud"})).await.status, 200);
    let file = dir.path().join(puhui_api::risk::RISK_SNAPSHOT_FILE);
    snapshot_written_and_caught_up(&server).await;
    assert!(file.exists());
    assert_eq!(c.post(&server, "/v1/transfers", pay(7)).await.status, 201);
    let after = c.post(&server, "/v1/lists/deny_devices/add", json!({"values": ["after"]})).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    server.kill9();
    let server = serve(dir.path(), &args);
    let read = gauge(&server, "puhui_risk_start_journal_entries_read").await;
    assert!((1.0..=40.0).contains(&read), "only the entries after the snapshot: {read}");
    let server = state_is_back(server, "key-1", keyed).await;
    let server = state_is_back(server, "key-2", keyed_2).await;
    let values = c.get(&server, "/v1/lists/deny_devices").await.body["values"].clone();
    assert_eq!(values, json!(["after", "cloned", "stolen"]));
    assert_eq!(count_of(&c, &server, 7).await, 7.0);
    assert_eq!(c.get(&server, "/v1/decisions/t0").await.body["label"], "fraud");
    assert!(server.terminate().success());
    backtest_reproduces_every_decision(dir.path());
}

#[tokio::test]
async fn risk_snapshots_written_while_serving_bound_what_a_crash_restart_re_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ruleset = strict_ruleset_in(dir.path());
    // A snapshot as soon as five risk records are journaled (the ruleset's publication and
    // activation among them), and at once after that.
    let args =
        ["--ruleset", &ruleset, "--risk-snapshot-every", "5", "--risk-snapshot-interval-min-secs", "0"];
    let server = serve(dir.path(), &args);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    for i in 0..4 {
        assert_eq!(c.post(&server, "/v1/transfers", pay(i)).await.status, 201);
    }
    assert_eq!(c.post(&server, "/v1/decisions/t0/label", json!({"label": "fraud"})).await.status, 200);
    let file = dir.path().join(puhui_api::risk::RISK_SNAPSHOT_FILE);
    // The checkpointer runs at idle priority: give it time on a machine busy with other tests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !file.exists() || gauge(&server, "puhui_risk_checkpointer_lag_entries").await > 0.0 {
        assert!(std::time::Instant::now() < deadline, "no risk snapshot while serving");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.kill9();

    // Killed: the snapshot written while serving, then the journal after it, to the same state.
    let server = serve(dir.path(), &args);
    let replayed = gauge(&server, "puhui_risk_start_decisions_replayed").await;
    assert!(replayed < 4.0, "the snapshot covers some of the decisions: {replayed} re-applied");
    assert!(gauge(&server, "puhui_risk_start_records_carried").await >= 2.0, "the ruleset, its activation");
    // Each decision once, from the snapshot or the journal: the velocity count below.
    assert_eq!(c.get(&server, "/v1/decisions/t0").await.body["label"], "fraud");
    assert_eq!(queued(&c, &server).await, ["t3"]);
    assert_eq!(c.post(&server, "/v1/transfers", pay(4)).await.body["risk_outcome"], "review");
    assert_eq!(count_of(&c, &server, 4).await, 4.0, "the four payments before it");
    assert!(server.terminate().success());

    // The clean stop's snapshot still covers everything.
    let server = serve(dir.path(), &args);
    assert_eq!(gauge(&server, "puhui_risk_start_decisions_replayed").await, 0.0);
    assert_eq!(queued(&c, &server).await, ["t3", "t4"]);
    assert!(server.terminate().success());
    backtest_reproduces_every_decision(dir.path());
}

#[tokio::test]
async fn a_risk_snapshot_that_cannot_be_written_while_serving_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the snapshot's temporary file goes: every write fails until it is gone.
    let blocker = dir.path().join(format!("{}.tmp", puhui_api::risk::RISK_SNAPSHOT_FILE));
    std::fs::create_dir_all(&blocker).unwrap();
    let server = serve(dir.path(), &["--risk-snapshot-every", "1", "--risk-snapshot-interval-min-secs", "0"]);
    let c = Client::tenant(&server).await;
    c.setup(&server).await;
    let mut t = transfer("t0", "alice", "bob", 10);
    t["risk_context"] = json!({"device_id": "phone-1"});
    assert_eq!(c.post(&server, "/v1/transfers", t).await.status, 201);
    let text = |server: &Server| {
        let url = server.url("/metrics");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !text(&server).await.contains("puhui_risk_checkpoint_write_errors_total") {
        assert!(std::time::Instant::now() < deadline, "no failed write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let file = dir.path().join(puhui_api::risk::RISK_SNAPSHOT_FILE);
    assert!(!file.exists());
    assert!(!text(&server).await.contains("puhui_risk_checkpointer_failed"), "it goes on");
    std::fs::remove_dir(&blocker).unwrap();
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "not written once the disk takes it");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gauge(&server, "puhui_risk_checkpoints_total").await >= 1.0);
    server.kill9();
    let server = serve(dir.path(), &[]);
    assert_eq!(gauge(&server, "puhui_risk_start_decisions_replayed").await, 0.0, "the decision is in it");
    assert!(gauge(&server, "puhui_risk_start_records_carried").await >= 2.0, "the ruleset, its activation");
    assert!(server.terminate().success());
}
