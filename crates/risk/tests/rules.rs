//! Rulesets: parse errors with rule id, line and column; decisions and their explanations.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use puhui_risk::{Engine, FeatureLimits, FeatureStore, Namespace, Outcome, RiskEvent, Ruleset};

const S: u64 = 1_000_000_000;

fn starter() -> Ruleset {
    Ruleset::parse(include_str!("../../../rulesets/starter.toml")).expect("the starter ruleset loads")
}

fn engine(ruleset: Ruleset) -> Engine {
    Engine::new(Arc::new(ruleset), Arc::new(RwLock::new(HashMap::new())))
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_starter_ruleset_loads() {
    let r = starter();
    assert_eq!(r.version, "starter-3");
    assert!(r.rules().count() >= 9);
    assert_eq!(r.features.len(), 10);
    assert!(r.reads_payer_balance(), "account_takeover_drain reads it");
}

#[test]
fn a_bad_expression_is_named_with_line_and_column() {
    let text = "version = \"x\"\n[thresholds]\nreview = 1\ndecline = 2\n\n[[rules]]\nid = \"broken\"\ndescription = \"d\"\nexpression = \"amount > && 3\"\nscore = 1\n";
    let e = Ruleset::parse(text).err().expect("refused");
    assert_eq!(e.rule_id.as_deref(), Some("broken"));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.column > 14, "points into the expression: {e}");
    assert!(e.to_string().starts_with("rule broken (line 9"), "{e}");
}

#[test]
fn structural_errors_are_located() {
    let missing = "version = \"x\"\n[thresholds]\nreview = 1\ndecline = 2\n[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"true\"\n";
    let e = Ruleset::parse(missing).err().unwrap();
    assert!(e.message.contains("score or an outcome"), "{e}");
    assert_eq!(e.rule_id.as_deref(), Some("r"));
    let unknown_key = "version = \"x\"\ncolour = 1\n[thresholds]\nreview = 1\ndecline = 2\nrules = []\n";
    let e = Ruleset::parse(unknown_key).err().unwrap();
    assert_eq!(e.line, 2, "{e}");
    let bad_window = "version = \"x\"\nrules = []\n[thresholds]\nreview = 1\ndecline = 2\n[[features]]\nname = \"a\"\nentity = \"payer\"\naggregate = \"count\"\nwindow = \"1 week\"\n";
    let e = Ruleset::parse(bad_window).err().unwrap();
    assert_eq!((e.line, e.message.contains("bad window")), (10, true), "{e}");
    let inverted = "version = \"x\"\nrules = []\n[thresholds]\nreview = 5\ndecline = 2\n";
    let e = Ruleset::parse(inverted).err().unwrap();
    assert_eq!((e.line, e.message.contains("must not exceed")), (4, true), "{e}");
    let too_long = bad_window.replace("1 week", "31d");
    let e = Ruleset::parse(&too_long).err().unwrap();
    assert_eq!((e.line, e.message.contains("longer than the 30 days")), (10, true), "{e}");
    assert!(Ruleset::parse(&bad_window.replace("1 week", "30d")).is_ok());
    let bad_outcome = "version = \"x\"\n[thresholds]\nreview = 1\ndecline = 2\n[[rules]]\nid = \"o\"\ndescription = \"d\"\nexpression = \"true\"\noutcome = \"maybe\"\n";
    let e = Ruleset::parse(bad_outcome).err().unwrap();
    assert_eq!((e.rule_id.as_deref(), e.line), (Some("o"), 9), "{e}");
}

#[test]
fn a_burst_of_tiny_payments_is_caught_and_explained() {
    let engine = engine(starter());
    let mut store = FeatureStore::new(FeatureLimits::default());
    let a = attrs(&[("device_id", "d1"), ("ip", "1.2.3.4"), ("kyc_tier", "3")]);
    let mut last = None;
    for i in 0..12u64 {
        let e = RiskEvent {
            payer: "w1",
            payee: &format!("m{i}"),
            amount_minor: 100,
            currency: "CNY",
            timestamp_ns: 1_000 * S + i * S,
            attributes: &a,
            payer_balance_minor: None,
        };
        let d = engine.decide(&store, &e);
        engine.observe(&mut store, &e);
        last = Some(d);
    }
    let d = last.unwrap();
    assert_eq!(d.outcome, Outcome::Review, "{d:?}");
    assert!(d
        .fired
        .iter()
        .any(|r| &*r.id == "card_testing_burst" && r.reasons.contains(&"velocity".to_string())));
    assert!(d.features.iter().any(|(n, v)| &**n == "payer_count_1m" && *v >= 10.0));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.ruleset_version, "starter-3");
}

#[test]
fn an_event_without_device_or_ip_decides_without_errors() {
    // Attributes are optional: the starter ruleset guards every `ctx` read with `has(...)`, so a
    // decision records no "No such key" error (a bare `ctx.ip` would, and its rule could not fire).
    let engine = engine(starter());
    let store = FeatureStore::new(FeatureLimits::default());
    for a in [attrs(&[]), attrs(&[("device_id", "d1")]), attrs(&[("ip", "10.0.0.1")])] {
        let e = RiskEvent {
            payer: "w1",
            payee: "grocer",
            amount_minor: 2_000,
            currency: "CNY",
            timestamp_ns: 100 * S,
            attributes: &a,
            payer_balance_minor: None,
        };
        let d = engine.decide(&store, &e);
        assert!(d.errors.is_empty(), "{a:?}: {:?}", d.errors);
        assert_eq!(d.outcome, Outcome::Approve, "{a:?}: {d:?}");
    }
}

#[test]
fn account_takeover_declines_and_lists_override() {
    let engine = engine(starter());
    let mut store = FeatureStore::new(FeatureLimits::default());
    let home = attrs(&[("device_id", "old-phone"), ("ip", "10.0.0.1")]);
    for i in 0..5u64 {
        let e = RiskEvent {
            payer: "w1",
            payee: "grocer",
            amount_minor: 2_000,
            currency: "CNY",
            timestamp_ns: 100 * S + i * S,
            attributes: &home,
            payer_balance_minor: None,
        };
        engine.observe(&mut store, &e);
    }
    let thief = attrs(&[("device_id", "new-phone"), ("ip", "10.9.9.9")]);
    let drain = RiskEvent {
        payer: "w1",
        payee: "mule",
        amount_minor: 150_000,
        currency: "CNY",
        timestamp_ns: 200 * S,
        attributes: &thief,
        payer_balance_minor: None,
    };
    let d = engine.decide(&store, &drain);
    assert!(d.fired.iter().any(|r| &*r.id == "account_takeover"), "{d:?}");
    assert!(d.fired.iter().any(|r| &*r.id == "sim_swap_pattern"), "{d:?}");
    assert_eq!((d.outcome, d.score), (Outcome::Decline, 140));
    // An allow list approves, a deny list declines whatever the score.
    engine
        .lists()
        .write()
        .unwrap()
        .insert("allow_accounts".into(), puhui_risk::ListSet::from_iter(["mule".to_string()]));
    assert_eq!(engine.decide(&store, &drain).outcome, Outcome::Approve);
    engine
        .lists()
        .write()
        .unwrap()
        .insert("deny_devices".into(), puhui_risk::ListSet::from_iter(["new-phone".to_string()]));
    let d = engine.decide(&store, &drain);
    assert_eq!(d.outcome, Outcome::Decline);
    assert!(d.fired.iter().any(|r| &*r.id == "deny_listed"));
}

#[test]
fn draining_the_balance_from_a_new_device_is_caught_when_the_balance_is_known() {
    let engine = engine(starter());
    let mut store = FeatureStore::new(FeatureLimits::default());
    let home = attrs(&[("device_id", "old-phone")]);
    for (i, amount_minor) in [1_500u64, 2_500, 2_000, 1_800, 2_200].into_iter().enumerate() {
        let e = RiskEvent {
            payer: "w1",
            payee: "grocer",
            amount_minor,
            currency: "CNY",
            timestamp_ns: 100 * S + i as u64 * S,
            attributes: &home,
            payer_balance_minor: Some(200_000),
        };
        engine.observe(&mut store, &e);
    }
    let thief = attrs(&[("device_id", "new-phone")]);
    let send = |payee: &'static str, amount_minor: u64, payer_balance_minor: Option<i64>| {
        let e = RiskEvent {
            payer: "w1",
            payee,
            amount_minor,
            currency: "CNY",
            timestamp_ns: 200 * S,
            attributes: &thief,
            payer_balance_minor,
        };
        engine.decide(&store, &e)
    };
    let fired = |d: &puhui_risk::Decision, rule: &str| d.fired.iter().any(|r| &*r.id == rule);
    // 90 % of the balance or more, from a new device, to a payee it paid before: the drain alone.
    for (amount, balance) in [(90_000, 100_000), (100_000, 100_000), (120_000, 100_000), (50_000, 1)] {
        let d = send("grocer", amount, Some(balance));
        assert!(fired(&d, "account_takeover_drain"), "{amount} of {balance}: {d:?}");
        assert!(d.fired.iter().any(|r| r.reasons.iter().any(|c| c == "balance_drain")));
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }
    // Not a drain: less than 90 %, under 500 yuan, nothing to drain (an account at or below zero:
    // a credit line, a settlement account), the balance unknown, or a known device.
    for (amount, balance) in
        [(89_999, 100_000), (40_000, 40_000), (90_000, 1_000_000), (90_000, 0), (90_000, -5)]
    {
        assert!(
            !fired(&send("grocer", amount, Some(balance)), "account_takeover_drain"),
            "{amount} of {balance}"
        );
    }
    let d = send("grocer", 100_000, None);
    assert!(!fired(&d, "account_takeover_drain") && d.errors.is_empty(), "unknown balance: {d:?}");
    let home_drain = RiskEvent {
        payer: "w1",
        payee: "grocer",
        amount_minor: 100_000,
        currency: "CNY",
        timestamp_ns: 200 * S,
        attributes: &home,
        payer_balance_minor: Some(100_000),
    };
    assert!(!fired(&engine.decide(&store, &home_drain), "account_takeover_drain"));
    // The takeover shape in full: new device, new payee, large, and the balance emptied.
    let d = send("mule", 95_000, Some(100_000));
    assert!(fired(&d, "account_takeover") && fired(&d, "account_takeover_drain"), "{d:?}");
    assert_eq!(d.outcome, Outcome::Decline, "{d:?}");
    // The same without the drain (a rich wallet): reviewed, not declined, unless the amount is
    // also far above the payer's history (the SIM-swap rule).
    let d = send("mule", 60_000, Some(10_000_000));
    assert!(fired(&d, "account_takeover") && !fired(&d, "account_takeover_drain"), "{d:?}");
}

#[test]
fn a_mule_passing_on_money_from_many_payers_is_caught() {
    let engine = engine(starter());
    let mut store = FeatureStore::new(FeatureLimits::default());
    let p2p = attrs(&[("txn_type", "p2p")]);
    let cash_out = attrs(&[("txn_type", "cash_out")]);
    let fan_out = |d: &puhui_risk::Decision| d.fired.iter().any(|r| &*r.id == "mule_fan_out");
    let mut t = 1_000 * S;
    let mut send =
        |store: &mut FeatureStore, payer: &str, payee: &str, amount_minor: u64, a: &[(String, String)]| {
            t += 600 * S;
            let e = RiskEvent {
                payer,
                payee,
                amount_minor,
                currency: "CNY",
                timestamp_ns: t,
                attributes: a,
                payer_balance_minor: None,
            };
            let d = engine.decide(store, &e);
            engine.observe(store, &e);
            d
        };
    // Fan-in: three victims pay the collector 1,200 yuan each.
    for victim in ["victim-1", "victim-2", "victim-3"] {
        send(&mut store, victim, "collector", 120_000, &p2p);
    }
    // Fan-out: its first two payees of the day pass; the third distinct one is caught, whether
    // P2P or a cash-out at an agent.
    assert!(!fan_out(&send(&mut store, "collector", "agent-1", 100_000, &cash_out)));
    assert!(!fan_out(&send(&mut store, "collector", "friend", 100_000, &p2p)));
    let d = send(&mut store, "collector", "agent-2", 100_000, &cash_out);
    assert!(fan_out(&d), "{d:?}");
    assert_eq!(d.outcome, Outcome::Review, "{d:?}");
    assert!(d.features.iter().any(|(n, v)| &**n == "payer_inflow_payers_24h" && *v == 3.0), "{d:?}");
    assert!(d.features.iter().any(|(n, v)| &**n == "payer_inflow_24h" && *v == 360_000.0), "{d:?}");
    // Paying a merchant is not passing money on.
    let shop = attrs(&[("txn_type", "merchant_payment")]);
    assert!(!fan_out(&send(&mut store, "collector", "shop", 10_000, &shop)));
    // Money from only two payers, passed on the same way: not this shape.
    for victim in ["victim-4", "victim-5"] {
        send(&mut store, victim, "saver", 200_000, &p2p);
    }
    for payee in ["a", "b", "c", "d"] {
        assert!(!fan_out(&send(&mut store, "saver", payee, 50_000, &p2p)), "{payee}");
    }
}

#[test]
fn kyc_caps_apply_per_tier() {
    let engine = engine(starter());
    let mut store = FeatureStore::new(FeatureLimits::default());
    let tier1 = attrs(&[("kyc_tier", "1")]);
    let e = RiskEvent {
        payer: "w1",
        payee: "p",
        amount_minor: 300_000,
        currency: "CNY",
        timestamp_ns: 10 * S,
        attributes: &tier1,
        payer_balance_minor: None,
    };
    assert_eq!(engine.decide(&store, &e).outcome, Outcome::Approve);
    engine.observe(&mut store, &e);
    let e2 = RiskEvent { timestamp_ns: 20 * S, ..e.clone() };
    let d = engine.decide(&store, &e2);
    assert_eq!(d.outcome, Outcome::Decline, "{d:?}");
    assert!(d.fired.iter().any(|r| &*r.id == "kyc_tier_1_daily_cap"));
}

/// The model parity fixtures: their directory, `expected.json`, and its feature names.
fn model_fixtures() -> (&'static std::path::Path, serde_json::Value, Vec<String>) {
    let fixtures = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../risk-model/tests/fixtures"));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap()).unwrap();
    let names = expected["feature_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    (fixtures, expected, names)
}

/// A ruleset with the `xgb_binary.json` model as `fraud` (`inputs` quoted) and one rule,
/// `model_high`, on `expression`.
fn model_ruleset(inputs: &[String], description: &str, expression: &str) -> String {
    format!(
        "version = \"m\"\n[thresholds]\nreview = 50\ndecline = 100\n\n[[models]]\nname = \"fraud\"\npath = \"xgb_binary.json\"\ninputs = [{}]\n\n[[rules]]\nid = \"model_high\"\ndescription = \"{description}\"\nexpression = \"{expression}\"\nscore = 60\n",
        inputs.join(", ")
    )
}

#[test]
fn model_scores_are_usable_in_rules_and_match_the_library() {
    let (fixtures, expected, names) = model_fixtures();
    let inputs: Vec<String> = names.iter().map(|n| format!("\"ctx.{n}\"")).collect();
    let text = model_ruleset(&inputs, "model says fraud", "fraud > 0.5");
    let ruleset = Ruleset::parse_in(&text, fixtures).expect("ruleset with a model");
    let engine = engine(ruleset);
    let store = FeatureStore::new(FeatureLimits::default());
    for (i, row) in expected["rows"].as_array().unwrap().iter().take(50).enumerate() {
        let attributes: Vec<(String, String)> = names
            .iter()
            .zip(row.as_array().unwrap())
            .filter_map(|(n, v)| v.as_f64().map(|v| (n.clone(), format!("{v}"))))
            .collect();
        let e = RiskEvent {
            payer: "p",
            payee: "q",
            amount_minor: 1,
            currency: "CNY",
            timestamp_ns: 1,
            attributes: &attributes,
            payer_balance_minor: None,
        };
        let d = engine.decide(&store, &e);
        let score = d.features.iter().find(|(n, _)| &**n == "fraud").unwrap().1;
        let want = expected["models"]["xgb_binary"]["predict"][i].as_f64().unwrap();
        assert!((score - want).abs() < 1e-6, "row {i}: {score} vs {want}");
        assert_eq!(d.fired.iter().any(|r| &*r.id == "model_high"), score > 0.5);
    }
    let bad = text.replace("\"ctx.amount_log\"", "\"nonsense\"");
    let e = Ruleset::parse_in(&bad, fixtures).err().expect("unknown input refused");
    assert!(e.message.contains("nonsense"), "{e}");
}

#[test]
fn a_model_takes_one_input_per_feature_and_missing_stands_for_one_not_supplied() {
    let (fixtures, expected, names) = model_fixtures();
    let inputs: Vec<String> = names.iter().map(|n| format!("\"ctx.{n}\"")).collect();
    for (count, listed) in [(names.len() - 1, "lists 9"), (names.len() + 1, "lists 11")] {
        let some: Vec<String> = inputs.iter().cycle().take(count).cloned().collect();
        let text = model_ruleset(&some, "d", "fraud > 0.5");
        let e = Ruleset::parse_in(&text, fixtures).err().expect("a count unlike the model's is refused");
        assert!(e.message.contains("takes 10 features") && e.message.contains(listed), "{e}");
        // A ruleset journaled before the check still replays (its decisions were made with it).
        assert!(Ruleset::parse_journaled(&text, fixtures).is_ok());
    }
    // `missing` in place of the first input scores as that input absent from the event.
    let mut with_missing = inputs.clone();
    with_missing[0] = "\"missing\"".into();
    let engines = [&inputs, &with_missing]
        .map(|i| engine(Ruleset::parse_in(&model_ruleset(i, "d", "fraud > 0.5"), fixtures).expect("valid")));
    let store = FeatureStore::new(FeatureLimits::default());
    for row in expected["rows"].as_array().unwrap().iter().take(20) {
        let attributes: Vec<(String, String)> = names
            .iter()
            .zip(row.as_array().unwrap())
            .skip(1)
            .filter_map(|(n, v)| v.as_f64().map(|v| (n.clone(), format!("{v}"))))
            .collect();
        let e = RiskEvent {
            payer: "p",
            payee: "q",
            amount_minor: 1,
            currency: "CNY",
            timestamp_ns: 1,
            attributes: &attributes,
            payer_balance_minor: None,
        };
        let [a, b] = engines.each_ref().map(|engine| {
            let d = engine.decide(&store, &e);
            d.features.iter().find(|(n, _)| &**n == "fraud").unwrap().1
        });
        assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
    }
}

#[test]
fn new_payee_and_new_device_reach_a_model_that_reads_them_when_no_rule_does() {
    let (fixtures, expected, names) = model_fixtures();
    let row: Vec<f64> =
        expected["rows"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap_or(0.0)).collect();
    let ruleset_with = |k: usize, input: &str| {
        let inputs: Vec<String> = (0..names.len())
            .map(|i| if i == k { format!("\"{input}\"") } else { format!("\"ctx.{}\"", names[i]) })
            .collect();
        let text = model_ruleset(&inputs, "no rule reads new_payee or new_device", "fraud > 2.0");
        engine(Ruleset::parse_in(&text, fixtures).expect("ruleset with a model"))
    };
    let score = |engine: &Engine, store: &FeatureStore, flag: &str| {
        let mut attributes: Vec<(String, String)> =
            names.iter().zip(&row).map(|(n, v)| (n.clone(), format!("{v}"))).collect();
        attributes.push(("flag".into(), flag.into()));
        attributes.push(("device_id".into(), "d1".into()));
        let e = RiskEvent {
            payer: "p",
            payee: "q",
            amount_minor: 1,
            currency: "CNY",
            timestamp_ns: 10,
            attributes: &attributes,
            payer_balance_minor: None,
        };
        let d = engine.decide(store, &e);
        d.features.iter().find(|(n, _)| &**n == "fraud").unwrap().1
    };
    let mut known = FeatureStore::new(FeatureLimits::default());
    known.record_pair(Namespace::PayerPayee, "p", "q", 1);
    known.record_pair(Namespace::AccountDevice, "p", "d1", 1);
    let fresh = FeatureStore::new(FeatureLimits::default());
    let mut checked = 0;
    for k in 0..names.len() {
        let by_flag = ruleset_with(k, "ctx.flag");
        let (as_new, as_known) = (score(&by_flag, &fresh, "1"), score(&by_flag, &fresh, "0"));
        if as_new == as_known {
            continue; // this input does not move the model at this row
        }
        for builtin in ["new_payee", "new_device"] {
            let by_builtin = ruleset_with(k, builtin);
            assert_eq!(score(&by_builtin, &fresh, "x"), as_new, "{builtin} at input {k}: new");
            assert_eq!(score(&by_builtin, &known, "x"), as_known, "{builtin} at input {k}: known");
        }
        checked += 1;
    }
    assert!(checked > 0, "some input moves the model");
}

#[test]
fn deep_or_huge_expressions_are_refused_at_parse_without_overflowing_a_stack() {
    let ruleset = |expr: &str| {
        format!("version = \"x\"\n[thresholds]\nreview = 1\ndecline = 2\n[[rules]]\nid = \"deep\"\ndescription = \"d\"\nexpression = \"{expr}\"\nscore = 1\n")
    };
    let event = RiskEvent {
        payer: "a",
        payee: "b",
        amount_minor: 1,
        currency: "CNY",
        timestamp_ns: S,
        attributes: &[],
        payer_balance_minor: None,
    };
    // Refused with this message, or (None) accepted or refused, but never overflowing a stack when
    // parsed or decided.
    let shapes: Vec<(String, Option<&str>)> = vec![
        (format!("{}1 > 0", "1 + ".repeat(200)), Some("nests deeper than 128")),
        (format!("{}true", "true && ".repeat(300)), None), // balanced by the parser
        (format!("{}true", "true || ".repeat(600)), Some("at most 4096 bytes")),
        (format!("{}true", "!".repeat(4_001)), None),
        (format!("{}1 > 0", "-".repeat(4_001)), None),
        (format!("{}1{} > 0", "(".repeat(1_000), ")".repeat(1_000)), None),
        (format!("{}1{} == [1]", "[".repeat(1_000), "]".repeat(1_000)), None),
        (format!("size({}'a'{}) > 0", "string(".repeat(500), ")".repeat(500)), None),
    ];
    // On a thread with the stack of a tokio worker (2 MiB), where the API publishes a ruleset (the
    // parse itself runs on a thread of its own, `PARSE_STACK_BYTES`) and decides with it.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for (expr, message) in shapes {
                match (Ruleset::parse(&ruleset(&expr)), message) {
                    (Err(e), Some(message)) => {
                        assert_eq!(e.rule_id.as_deref(), Some("deep"), "{e}");
                        assert!(e.to_string().contains(message), "{expr:.40}: {e}");
                    }
                    (Ok(_), Some(_)) => panic!("accepted: {expr:.40}"),
                    (Ok(accepted), None) => {
                        engine(accepted).decide(&FeatureStore::new(FeatureLimits::default()), &event);
                    }
                    (Err(_), None) => {}
                }
            }
            // 128 levels is accepted, and decided without error.
            let ok = Ruleset::parse(&ruleset(&format!("{}1 > 0", "1 + ".repeat(120)))).expect("accepted");
            let d = engine(ok).decide(&FeatureStore::new(FeatureLimits::default()), &event);
            assert!(d.errors.is_empty() && d.fired.len() == 1, "{d:?}");
        })
        .unwrap()
        .join()
        .expect("no overflow");
}

#[test]
fn attribute_windows_are_kept_per_payer_scope() {
    // The API scopes payers as `<tenant>:<id>`; two tenants' events with the same attribute value
    // are counted apart.
    let text = "version = \"attr\"\n[thresholds]\nreview = 1\ndecline = 2\n[[features]]\nname = \"merchant_1h\"\nentity = \"attr:merchant\"\naggregate = \"count\"\nwindow = \"1h\"\n[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"merchant_1h > 100\"\nscore = 1\n";
    let engine = engine(Ruleset::parse(text).unwrap());
    let mut store = FeatureStore::new(FeatureLimits::default());
    let a = attrs(&[("merchant", "m1")]);
    let event = |payer: &'static str, i: u64| RiskEvent {
        payer,
        payee: "p",
        amount_minor: 1,
        currency: "CNY",
        timestamp_ns: 100 * S + i,
        attributes: &a,
        payer_balance_minor: None,
    };
    for i in 0..3 {
        engine.observe(&mut store, &event("t1:w", i));
    }
    let count = |d: &puhui_risk::Decision| d.features.iter().find(|(n, _)| &**n == "merchant_1h").unwrap().1;
    assert_eq!(count(&engine.decide(&store, &event("t1:w", 10))), 3.0);
    assert_eq!(count(&engine.decide(&store, &event("t2:w", 10))), 0.0);
    assert_eq!(puhui_risk::attribute_key("t1:w", "merchant", "m1"), "t1:merchant=m1");
    assert_eq!(puhui_risk::attribute_key("w", "merchant", "m1"), "merchant=m1");
}

#[test]
fn names_no_decision_could_resolve_are_refused_at_parse() {
    let ruleset = |features: &str, expr: &str| {
        format!("version = \"x\"\n[thresholds]\nreview = 1\ndecline = 2\n{features}[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"{expr}\"\nscore = 1\n")
    };
    let count = "[[features]]\nname = \"c1h\"\nentity = \"payer\"\naggregate = \"count\"\nwindow = \"1h\"\n";
    for (expr, name) in [
        ("unknown_feat >= 3", "unknown_feat"),
        ("f.unknown_feat >= 3", "f.unknown_feat"),
        ("has(f.c2h)", "f.c2h"),
        ("c1h > 1 && [1, 2].exists(x, x > y)", "y"),
        ("ammount > 5", "ammount"),
        ("f['c2h'] >= 3", "f[\"c2h\"]"),
    ] {
        let e = Ruleset::parse(&ruleset(count, expr)).err().unwrap_or_else(|| panic!("refused: {expr}"));
        assert_eq!(e.rule_id.as_deref(), Some("r"), "{e}");
        assert!(e.message.contains(&format!("unknown name {name:?}")), "{expr}: {e}");
    }
    for expr in [
        "c1h > 1 && f.c1h > 1",
        "[1, 2].exists(x, x > c1h)",
        "[1].map(x, x + amount)[0] > 0",
        "has(ctx.tier)",
        "f['c1h'] > 1",
        "payer.startsWith('a') && size(payer) > 1 && int(ctx.tier) > 1 && ctx.tier.contains('1')",
        "[1, 2].exists(x, x > 1) && [3].all(y, y > 0)",
    ] {
        Ruleset::parse(&ruleset(count, expr)).unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
    // What would fail on every event, or run away: refused with the rule id.
    let list = format!("[{}]", vec!["1"; 200].join(", "));
    let blowup = format!("{list}.map(x, {list}).size() > 0");
    for (expr, message) in [
        ("nosuchfn(amount) > 0", "unknown function nosuchfn"),
        ("payer.nosuch()", "unknown function x.nosuch"),
        ("amount", "gives an int"),
        ("null", "not a bool"),
        ("[true]", "not a bool"),
        ("{'a': true}", "not a bool"),
        (blowup.as_str(), "evaluation steps"),
        ("'yes'", "not a bool"),
        ("[1, 2].all(x, [1, 2].all(y, true))", "inside another"),
        ("[1].all(x, true) && [1].all(x, true) && [1].all(x, true) && [1].all(x, true) && [1].all(x, true)", "more than 4"),
    ] {
        let e = Ruleset::parse(&ruleset(count, expr)).err().unwrap_or_else(|| panic!("refused: {expr}"));
        assert!(e.rule_id.as_deref() == Some("r") && e.message.contains(message), "{expr}: {e}");
    }
    // A feature or model may not take a built-in name (it would shadow the event's own).
    let shadowing = count.replace("c1h", "amount");
    let e = Ruleset::parse(&ruleset(&shadowing, "amount > 5")).err().expect("refused");
    assert!(e.message.contains("built-in name"), "{e}");
}

#[test]
fn operations_of_types_that_never_go_together_are_refused_at_parse() {
    let ruleset = |expr: &str| {
        format!("version = \"x\"\n[thresholds]\nreview = 1\ndecline = 2\n[[features]]\nname = \"c1h\"\nentity = \"payer\"\naggregate = \"count\"\nwindow = \"1h\"\n[[features]]\nname = \"z\"\nentity = \"payer\"\naggregate = \"zscore\"\nwindow = \"1h\"\n[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"{expr}\"\nscore = 1\n")
    };
    let refused = [
        (
            "has(ctx.kyc_tier) && ctx.kyc_tier > 1",
            "`string > int`, which fails on every event (CEL does not convert a string to a number: ctx values are strings",
        ),
        ("ctx.kyc_tier == 3", "`string == int`, which is never true"),
        ("ctx.channel != 1.5", "`string != double`, which is always true"),
        ("amount + 0.5 > 10.0", "`int + double`, which fails"),
        ("z % 2.0 > 0.0", "`double % double`, which fails"),
        ("f.c1h - ctx.n > 0", "`int - string`, which fails"),
        ("new_payee > 0", "`bool > int`"),
        ("[1, 2].exists(x, x > 0) && payer < 5", "`string < int`"),
        ("(amount > 1) == 'yes'", "`bool == string`, which is never true"),
    ];
    for (expr, message) in refused {
        let e = Ruleset::parse(&ruleset(expr)).err().unwrap_or_else(|| panic!("refused: {expr}"));
        assert!(e.rule_id.as_deref() == Some("r") && e.message.contains(message), "{expr}: {e}");
        // What the check refuses is what the interpreter would do on every event: fail, or never fire.
        let journaled = Ruleset::parse_journaled(&ruleset(expr), std::path::Path::new(".")).unwrap();
        let interpreted = Engine::with_evaluation(
            Arc::new(journaled),
            Arc::new(RwLock::new(HashMap::new())),
            puhui_risk::Evaluation::Interpreted,
        );
        let a = attrs(&[("kyc_tier", "3"), ("channel", "app"), ("n", "1")]);
        let event = RiskEvent {
            payer: "p",
            payee: "q",
            amount_minor: 100,
            currency: "CNY",
            timestamp_ns: S,
            attributes: &a,
            payer_balance_minor: None,
        };
        let d = interpreted.decide(&FeatureStore::new(FeatureLimits::default()), &event);
        let failed = d.errors.iter().any(|(rule, _)| rule == "r");
        let fired = d.fired.iter().any(|f| &*f.id == "r");
        let constant = message.contains("never true") || message.contains("always true");
        assert!(!fired || expr.contains("!="), "{expr}: {d:?}");
        assert!(failed != constant, "{expr}: {d:?}");
    }
    for expr in [
        "int(ctx.kyc_tier) > 1",
        "ctx.kyc_tier == '3'",
        "amount > 1.5 && c1h >= 2u && z > 1",
        "double(amount) + 0.5 > z",
        "payer + ':' + payee == 'p:q'",
        "size(payer) % 2 == 0",
        "[1, 2].exists(amount, amount > 1)",
        "(c1h > 2 ? 1 : 2) > 1",
        "new_payee == true",
    ] {
        Ruleset::parse(&ruleset(expr)).unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
}

#[test]
fn model_paths_stay_inside_the_models_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
    let ruleset = |path: &str| {
        format!("version = \"m\"\n[thresholds]\nreview = 1\ndecline = 2\n[[models]]\nname = \"fraud\"\npath = \"{path}\"\ninputs = [\"amount\"]\n[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"fraud > 0.5\"\nscore = 1\n")
    };
    for (path, message) in [
        ("/etc/passwd", "must be relative"),
        ("/dev/zero", "must be relative"),
        ("../x.json", "must be relative"),
        ("sub/../../x.json", "must be relative"),
        ("", "must be relative"),
        ("sub", "not a regular file"),
        ("missing.json", "No such file"),
        ("out/passwd", "leads out of the models directory"),
    ] {
        let e =
            Ruleset::parse_in(&ruleset(path), dir.path()).err().unwrap_or_else(|| panic!("refused: {path}"));
        assert!(e.message.contains(message), "{path}: {e}");
    }
}

#[test]
fn a_list_set_counts_finds_and_forgets_its_values_across_shards() {
    let mut set = puhui_risk::ListSet::default();
    assert!(set.is_empty());
    for i in 0..10_000 {
        assert!(set.insert(format!("dev-{i}")));
    }
    assert!(!set.insert("dev-7".into()), "a value is held once");
    assert_eq!(set.len(), 10_000);
    assert!(set.contains("dev-9999") && !set.contains("dev-10000"));
    assert!(set.remove("dev-7") && !set.remove("dev-7"));
    assert_eq!((set.len(), set.iter().count()), (9_999, 9_999));
    let mut values: Vec<&String> = set.iter().collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 9_999);
}

#[test]
fn first_and_last_seen_are_seconds_within_the_window_at_its_edges() {
    let text = "version = \"seen\"\n[thresholds]\nreview = 50\ndecline = 100\n\
        [[features]]\nname = \"first_1h\"\nentity = \"payer\"\naggregate = \"first_seen\"\nwindow = \"1h\"\n\
        [[features]]\nname = \"last_1h\"\nentity = \"payer\"\naggregate = \"last_seen\"\nwindow = \"1h\"\n\
        [[features]]\nname = \"dev_first_30d\"\nentity = \"device\"\naggregate = \"first_seen\"\nwindow = \"30d\"\n\
        [[rules]]\nid = \"quiet_then_busy\"\ndescription = \"a payer quiet for 50 minutes, first seen a minute ago on a new device\"\n\
        expression = \"last_1h >= 3000 && dev_first_30d >= 0 && dev_first_30d < 60\"\nscore = 60\n";
    let engine = engine(Ruleset::parse(text).expect("first_seen and last_seen parse"));
    let mut store = FeatureStore::new(FeatureLimits::default());
    let t0 = 1_700_000_000 * S;
    // The payer paid at t0 and t0 + 10 min; a device first seen at t0 + 59 min 30 s.
    store.record(Namespace::Payer, "p", t0, 100, "q");
    store.record(Namespace::Payer, "p", t0 + 600 * S, 100, "q");
    store.record(Namespace::Device, "d", t0 + 3_570 * S, 100, "q");
    let context = attrs(&[("device_id", "d")]);
    let decide = |now_ns: u64| {
        let e = RiskEvent {
            payer: "p",
            payee: "q",
            amount_minor: 1,
            currency: "CNY",
            timestamp_ns: now_ns,
            attributes: &context,
            payer_balance_minor: None,
        };
        let d = engine.decide(&store, &e);
        let value = |name: &str| d.features.iter().find(|(n, _)| &**n == name).unwrap().1;
        (value("first_1h"), value("last_1h"), value("dev_first_30d"), d.score)
    };
    // Just inside: t0 is in (now − 1h, now] one nanosecond before the hour.
    assert_eq!(decide(t0 + 3_600 * S - 1), (3_599.0, 2_999.0, 29.0, 0));
    // Exactly at the boundary: t0 is out; the oldest is now the second payment.
    assert_eq!(decide(t0 + 3_600 * S), (3_000.0, 3_000.0, 30.0, 60), "the rule fires on the values");
    // Just outside the second payment's hour: no event in the window.
    assert_eq!(decide(t0 + 4_200 * S), (-1.0, -1.0, 630.0, 0));
    // A key never seen.
    let e = RiskEvent {
        payer: "stranger",
        payee: "q",
        amount_minor: 1,
        currency: "CNY",
        timestamp_ns: t0,
        attributes: &[],
        payer_balance_minor: None,
    };
    let d = engine.decide(&store, &e);
    assert!(d.features.iter().all(|(_, v)| *v == -1.0), "{:?}", d.features);
    let bad = text.replace("aggregate = \"last_seen\"", "aggregate = \"latest\"");
    let e = Ruleset::parse(&bad).err().expect("an unknown aggregate is refused");
    assert!(e.message.contains("first_seen, last_seen"), "{e}");
}
