//! `puhui demo`: a small economy on a fresh embedded data directory, end to end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use puhui_ledger::{AccountFlags, Currency, Id, NewAccount, ResultCode, StatusAction, TransferRequest};
use puhui_store::{EmbeddedStore, LedgerStore};

fn id(s: &str) -> Id {
    Id::new(s).expect("valid id")
}

/// Runs the demo. Exit code 0 only if the journal verifies.
pub fn run(data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let _temp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            _temp = tempfile::Builder::new().prefix("puhui-demo-").tempdir()?;
            _temp.path().to_path_buf()
        }
    };
    println!("puhui demo — data directory {}", dir.display());
    let store = EmbeddedStore::open(&dir).context("opening the data directory")?;
    let cny = Currency::iso("CNY")?;
    let points = Currency::parse("POINTS", Some(0))?;

    let wallets = ["li.na", "wang.wei", "zhang.min", "chen.jie", "liu.yang"];
    let merchants = ["noodle-stall", "fruit-vendor", "phone-repair"];
    let mut accounts = vec![
        NewAccount::new(id("bank:settlement"), cny),
        NewAccount::new(id("bank:fees"), cny),
        NewAccount::new(id("loyalty:issuer"), points),
    ];
    for w in wallets {
        accounts.push(NewAccount::new(id(&format!("wallet:{w}")), cny).with_flags(AccountFlags::WALLET));
        accounts.push(NewAccount::new(id(&format!("points:{w}")), points).with_flags(AccountFlags::WALLET));
    }
    for m in merchants {
        accounts.push(NewAccount::new(id(&format!("merchant:{m}")), cny).with_flags(AccountFlags::WALLET));
    }
    accounts.push(NewAccount::new(id("wallet:zhang.min.cousin"), cny).with_flags(AccountFlags::WALLET));
    let created = store.create_accounts(accounts)?;
    println!(
        "created {} accounts ({} new)",
        created.len(),
        created.iter().filter(|r| r.result == ResultCode::Ok).count()
    );

    let started = Instant::now();
    let mut all = Vec::new();
    let mut step = |label: &str, batch: Vec<TransferRequest>| -> anyhow::Result<()> {
        let ids: Vec<String> = batch.iter().map(|t| t.id.to_string()).collect();
        let results = store.create_transfers(batch)?;
        println!("\n{label}");
        for (tid, r) in ids.iter().zip(&results) {
            println!("  {tid:<34} {}", r.result);
        }
        all.extend(results.into_iter().map(|r| r.result));
        Ok(())
    };
    let t = |tid: &str, from: &str, to: &str, amount: u64, c: &Currency| {
        TransferRequest::single(id(tid), id(from), id(to), amount, c.code())
    };

    step(
        "Cash-in at an agent: payday for five workers",
        wallets
            .iter()
            .enumerate()
            .map(|(i, w)| {
                t(
                    &format!("cashin-{w}"),
                    "bank:settlement",
                    &format!("wallet:{w}"),
                    50_000 + 10_000 * i as u64,
                    &cny,
                )
            })
            .collect(),
    )?;
    step(
        "QR payments at micro-merchants, with a loyalty point per yuan in a linked chain",
        vec![
            TransferRequest {
                linked: true,
                ..t("pay-001", "wallet:li.na", "merchant:noodle-stall", 1_800, &cny)
            },
            t("pts-001", "loyalty:issuer", "points:li.na", 18, &points),
            t("pay-002", "wallet:wang.wei", "merchant:fruit-vendor", 2_350, &cny),
            t("pay-003", "wallet:zhang.min", "merchant:phone-repair", 12_000, &cny),
        ],
    )?;
    step(
        "P2P remittance, then a retry of the same id (moves no money) and one with another amount",
        vec![
            t("p2p-100", "wallet:chen.jie", "wallet:liu.yang", 5_000, &cny),
            t("p2p-100", "wallet:chen.jie", "wallet:liu.yang", 5_000, &cny),
            t("p2p-100", "wallet:chen.jie", "wallet:liu.yang", 5_001, &cny),
        ],
    )?;
    step(
        "A wallet cannot go negative: 1,000 yuan from a wallet holding 482",
        vec![t("p2p-101", "wallet:li.na", "wallet:wang.wei", 100_000, &cny)],
    )?;
    step(
        "A hold (pending) for a phone repair, posted for less than held; a second hold voided",
        vec![
            TransferRequest::pending(
                id("hold-7"),
                id("wallet:liu.yang"),
                id("merchant:phone-repair"),
                20_000,
                cny.code(),
                Some(3_600_000),
            ),
            TransferRequest::post(id("post-7"), id("hold-7"), Some(16_500)),
            TransferRequest::pending(
                id("hold-8"),
                id("wallet:liu.yang"),
                id("merchant:noodle-stall"),
                3_000,
                cny.code(),
                None,
            ),
            TransferRequest::void(id("void-8"), id("hold-8")),
        ],
    )?;
    step(
        "Merchant settlement with a fee, as one linked chain (both or neither)",
        vec![
            TransferRequest {
                linked: true,
                ..t("settle-1", "merchant:phone-repair", "bank:settlement", 28_000, &cny)
            },
            t("fee-1", "merchant:phone-repair", "bank:fees", 140, &cny),
        ],
    )?;
    let frozen = store.set_account_status(&id("wallet:zhang.min"), StatusAction::Freeze)?;
    println!("\nCompliance freezes wallet:zhang.min: {}", frozen.result);
    step(
        "A payment from the frozen wallet",
        vec![t("pay-004", "wallet:zhang.min", "merchant:noodle-stall", 500, &cny)],
    )?;
    let elapsed = started.elapsed();
    risk_scenes(&store, &cny)?;

    println!("\nBalances (net = credits − debits, in major units)");
    println!("  {:<26} {:>6} {:>14} {:>10} {:>8}", "account", "unit", "net", "held", "status");
    let mut rows = store.read(|l| l.accounts().collect::<Vec<_>>());
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    for a in &rows {
        println!(
            "  {:<26} {:>6} {:>14} {:>10} {:>8}",
            a.id.as_str(),
            a.currency.code().as_str(),
            a.currency.format_net(a.balances.net_posted()),
            a.currency.format_minor(a.balances.debits_pending),
            a.status.as_str()
        );
    }
    let ok = all.iter().filter(|r| **r == ResultCode::Ok).count();
    println!(
        "\n{} transfer events: {ok} ok, {} refused with a result code; all durable (fsync) in {:.1} ms",
        all.len(),
        all.len() - ok,
        elapsed.as_secs_f64() * 1e3
    );
    store.read(|l| l.check_invariants()).map_err(anyhow::Error::msg)?;
    println!("invariants: per currency, debits = credits; no wallet below zero");
    drop(store);

    let journal = dir.join(puhui_store::JOURNAL_FILE);
    match puhui_journal::verify(&journal) {
        Ok(v) => {
            println!(
                "journal verify: OK — {} hash-chained entries, last hash {}",
                v.summary.entries,
                crate::hex(&v.summary.last_hash)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("journal verify: FAILED — {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Risk control in front of the ledger: the starter ruleset decides each payment before it is posted.
fn risk_scenes(store: &EmbeddedStore, cny: &Currency) -> anyhow::Result<()> {
    use puhui_risk::{Engine, FeatureLimits, FeatureStore, Outcome, RiskEvent, Ruleset};
    let ruleset =
        Ruleset::parse(include_str!("../../../rulesets/starter.toml")).map_err(anyhow::Error::msg)?;
    println!(
        "\nRisk control: ruleset {} ({} rules) decides each payment before the ledger posts it",
        ruleset.version,
        ruleset.rules().count()
    );
    let engine = Engine::new(std::sync::Arc::new(ruleset), Default::default());
    let mut features = FeatureStore::new(FeatureLimits::default());
    let t0 = 1_800_000_000_000_000_000u64;
    let attrs = |device: &str, tier: &str| {
        vec![("device_id".to_string(), device.to_string()), ("kyc_tier".to_string(), tier.to_string())]
    };
    let mut n = 0u64;
    let mut pay = |label: &str,
                   from: &str,
                   to: &str,
                   amount: u64,
                   device: &str,
                   tier: &str,
                   at_s: u64|
     -> anyhow::Result<()> {
        n += 1;
        let a = attrs(device, tier);
        let event = RiskEvent {
            payer: from,
            payee: to,
            amount_minor: amount,
            currency: "CNY",
            timestamp_ns: t0 + at_s * 1_000_000_000,
            attributes: &a,
        };
        let d = engine.decide(&features, &event);
        let id = id(&format!("risk-{n}"));
        let request = match d.outcome {
            Outcome::Decline => None,
            Outcome::Review => Some(TransferRequest::pending(
                id,
                self::id(from),
                self::id(to),
                amount,
                cny.code(),
                Some(72 * 3_600_000),
            )),
            Outcome::Approve => {
                Some(TransferRequest::single(id, self::id(from), self::id(to), amount, cny.code()))
            }
        };
        let result = match request {
            Some(r) => {
                let result = store.create_transfers(vec![r])?[0].result;
                if result == ResultCode::Ok {
                    engine.observe(&mut features, &event);
                }
                match (d.outcome, result) {
                    (Outcome::Review, ResultCode::Ok) => "held for review",
                    _ => result.as_str(),
                }
            }
            None => "not posted",
        };
        let reasons: Vec<&str> = d.fired.iter().flat_map(|f| f.reasons.iter().map(String::as_str)).collect();
        if !label.is_empty() {
            println!(
                "  {label:<48} {:>8}  score {:>3}  ledger: {result:<16} {}",
                d.outcome.as_str(),
                d.score,
                if reasons.is_empty() { String::new() } else { format!("({})", reasons.join(", ")) }
            );
        }
        Ok(())
    };
    pay(
        "li.na pays the noodle stall from her phone",
        "wallet:li.na",
        "merchant:noodle-stall",
        1_500,
        "li-phone",
        "3",
        0,
    )?;
    for i in 0..11 {
        let label = if i == 10 { "card testing: 11th tiny payment in a minute" } else { "" };
        pay(label, "wallet:wang.wei", "merchant:fruit-vendor", 100, "wang-phone", "2", 10 + i)?;
    }
    // Payday through the agent network (not a customer payment, so not scored), then his usual phone.
    store.create_transfers(vec![TransferRequest::single(
        id("payday-chen"),
        id("bank:settlement"),
        id("wallet:chen.jie"),
        200_000,
        cny.code(),
    )])?;
    pay(
        "chen.jie buys a screen protector, usual phone",
        "wallet:chen.jie",
        "merchant:phone-repair",
        2_000,
        "chen-phone",
        "3",
        90,
    )?;
    pay(
        "account takeover: a new phone drains chen.jie",
        "wallet:chen.jie",
        "wallet:zhang.min.cousin",
        150_000,
        "unknown-phone",
        "3",
        100,
    )?;
    pay(
        "light-KYC wallet over its 5,000 yuan daily cap",
        "wallet:liu.yang",
        "merchant:phone-repair",
        600_000,
        "liu-phone",
        "1",
        200,
    )?;
    Ok(())
}
