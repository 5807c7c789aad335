//! Two `puhui` processes on one PostgreSQL database (each its own store, pool and committers)
//! hammer the same hot wallets with conflicting transfers, holds, posts, voids and linked chains.
//! Afterwards: every event a process acknowledged is recorded with that result, the invariants hold,
//! no hold was resolved twice, no deadlock surfaced, and `puhui journal verify --store` passes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use puhui_ledger::{Id, ResultCode};
use puhui_store_pg::testing::TestSchema;
use puhui_store_pg::{hammer, PgStore};

const NODES: [&str; 2] = ["pa", "pb"];

#[test]
fn two_processes_on_one_database_lose_nothing_and_never_double_spend() {
    let schema = TestSchema::new("processes");
    let store_url = format!("{}?schema={}", schema.url(), schema.name());
    // Migrate once first so the children race on the load, not on the schema.
    PgStore::open_with(schema.url(), schema.options()).unwrap();
    let children: Vec<_> = NODES
        .iter()
        .enumerate()
        .map(|(n, node)| {
            Command::new(env!("CARGO_BIN_EXE_puhui"))
                .args(["pg-node-child", "--store", &store_url, "--node", node, "--nodes", &NODES.join(",")])
                .args(["--clients", "3", "--rounds", "40", "--seed", &(n + 1).to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a node")
        })
        .collect();
    let mut acked: HashMap<Id, ResultCode> = HashMap::new();
    for mut child in children {
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let (id, code) = line.split_once(' ').expect("ID RESULT");
            acked.insert(Id::new(id).unwrap(), ResultCode::from_name(code).expect("known result code"));
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "a node failed: {status}");
    }
    assert!(acked.len() > 200, "{} events acknowledged", acked.len());
    let store = PgStore::open_with(schema.url(), schema.options()).unwrap();
    let summary = hammer::check(schema.url(), Some(schema.name()), &store, &acked).unwrap();
    println!("{summary}");
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["journal", "verify", "--store", &store_url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.starts_with("journal OK"), "{stdout}");
}

#[test]
fn journal_verify_names_a_tampered_entry() {
    use puhui_store::LedgerStore;
    let schema = TestSchema::new("tamper");
    let store_url = format!("{}?schema={}", schema.url(), schema.name());
    let store = PgStore::open_with(schema.url(), schema.options()).unwrap();
    hammer::setup(&store).unwrap();
    assert!(store.account("hot-0").unwrap().is_some());
    drop(store);
    let verify = || {
        let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
            .args(["journal", "verify", "--store", &store_url])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    assert_eq!(verify().0, Some(0));
    let mut client = puhui_store_pg::connect(schema.url(), Some(schema.name())).unwrap();
    // A balance edited behind the journal's back.
    client
        .batch_execute("UPDATE puhui_accounts SET credits_posted = credits_posted + 1 WHERE id = 'hot-1'")
        .unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(1));
    assert!(out.contains("account hot-1 differs"), "{out}");
    client
        .batch_execute("UPDATE puhui_accounts SET credits_posted = credits_posted - 1 WHERE id = 'hot-1'")
        .unwrap();
    // A journal entry altered: the chain breaks at that entry.
    client.batch_execute("UPDATE puhui_journal SET body = body || '\\x00'::bytea WHERE seq = 3").unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(1));
    assert!(out.contains("entry 3: hash does not chain"), "{out}");
}
