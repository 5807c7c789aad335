//! The controller's records replay to the same state, and a backtest of the recorded history
//! reproduces every online decision exactly (through ruleset switches, shadow runs and list changes).

use std::path::Path;

use puhui_risk::backtest::{Backtest, BacktestOptions};
use puhui_risk::control::{ControlError, Controller};
use puhui_risk::records::{
    DecisionRecord, DecisionSource, EventRecord, FiredRecord, Label, LabelRecord, ListOp, Verdict,
    RECORD_DECISION, RECORD_DECISION_BINARY,
};
use puhui_risk::{FeatureLimits, Outcome, RiskEvent, RiskRecord};

const STARTER: &str = include_str!("../../../rulesets/starter.toml");

/// A second ruleset: a stricter velocity rule and a device deny list.
const STRICT: &str = r#"
version = "strict-1"
[thresholds]
review = 30
decline = 100
[[features]]
name = "payer_count_1h"
entity = "payer"
aggregate = "count"
window = "1h"
[[features]]
name = "channel_count_1h"
entity = "attr:channel"
aggregate = "count"
window = "1h"
[[rules]]
id = "deny_device"
description = "deny-listed device"
expression = "in_list('deny_devices', ctx.device_id)"
outcome = "decline"
reasons = ["deny_list"]
[[rules]]
id = "busy_payer"
description = "many payments in an hour"
expression = "payer_count_1h >= 3"
score = 40
reasons = ["velocity"]
[[rules]]
id = "big"
description = "large amount"
expression = "amount > 500000"
score = 60
reasons = ["amount"]
"#;

fn controller(text: &str) -> Controller {
    let (c, _records) = Controller::new(text, Path::new("."), FeatureLimits::default()).expect("valid");
    c
}

/// A deterministic stream of events over a few payers, devices and hours.
fn event_parts(i: u64) -> (String, String, u64, u64, Vec<(String, String)>) {
    let payer = format!("t:payer{}", i % 7);
    let payee = format!("t:payee{}", (i * 31) % 11);
    let amount = if i.is_multiple_of(13) { 900_000 } else { 1_000 + (i * 7919) % 50_000 };
    let t = 1_700_000_000_000_000_000 + i * 97_000_000_000;
    let attrs = vec![
        ("device_id".to_string(), format!("t:dev{}", i % 5)),
        ("ip".to_string(), format!("t:10.0.0.{}", i % 3)),
        ("channel".to_string(), if i.is_multiple_of(2) { "app" } else { "web" }.to_string()),
    ];
    (payer, payee, amount, t, attrs)
}

/// Runs an online session, journaling every record the controller returns, in order.
fn online_session() -> (Vec<RiskRecord>, Vec<(String, Outcome)>) {
    let (mut c, initial) = Controller::new(STARTER, Path::new("."), FeatureLimits::default()).unwrap();
    let mut journal: Vec<RiskRecord> = initial;
    c.confirm_initial();
    let mut outcomes = Vec::new();
    for i in 0..600u64 {
        match i {
            100 => {
                let (_, r) = c.publish(STRICT).unwrap();
                journal.extend(r);
                let starter = c.active().ruleset().version.clone();
                journal.extend(c.activate(&starter, Some("strict-1")).unwrap());
            }
            250 => journal.push(c.change_list("deny_devices", ListOp::Add, vec!["t:dev3".into()]).unwrap()),
            300 => journal.extend(c.activate("strict-1", None).unwrap()),
            450 => {
                journal.push(c.change_list("deny_devices", ListOp::Remove, vec!["t:dev3".into()]).unwrap())
            }
            _ => {}
        }
        let (payer, payee, amount, t, attrs) = event_parts(i);
        let event = RiskEvent {
            payer: &payer,
            payee: &payee,
            amount_minor: amount,
            currency: "CNY",
            timestamp_ns: t,
            attributes: &attrs,
            // Unknown, all of it going out (the starter's drain rule), or a fraction of it.
            payer_balance_minor: match i % 5 {
                0 => None,
                1 | 2 => Some(amount as i64),
                _ => Some(amount as i64 * 4 - 7),
            },
        };
        let source = if i % 3 == 0 { DecisionSource::Standalone } else { DecisionSource::Transfer };
        let d = c.decide(format!("t:d{i}"), source, &event, i % 10 != 9);
        c.commit_decision(&d);
        outcomes.push((d.id.clone(), d.active.outcome));
        if i % 4 == 0 {
            let label = if d.active.outcome == Outcome::Approve { Label::Legit } else { Label::Fraud };
            journal.push(RiskRecord::Label(LabelRecord {
                decision_id: d.id.clone(),
                label,
                source: Some("test".into()),
                labelled_at_ns: t,
            }));
        }
        journal.push(RiskRecord::Decision(Box::new(d)));
    }
    (journal, outcomes)
}

#[test]
fn records_round_trip_through_their_encoding() {
    let (journal, _) = online_session();
    for record in &journal {
        let (t, payload) = record.encode();
        assert_eq!(&RiskRecord::decode(t, &payload).expect("decodes"), record);
    }
    assert!(RiskRecord::decode(1, b"{not json").is_err());
    assert!(RiskRecord::decode(99, b"{}").is_err());
}

#[test]
fn decisions_are_written_binary_and_older_json_decisions_still_read() {
    let (journal, outcomes) = online_session();
    // What older journals hold: every decision as a JSON record (type 1).
    let mut older = Vec::new();
    for record in &journal {
        let (t, payload) = match record {
            RiskRecord::Decision(d) => {
                let (t, binary) = record.encode();
                assert_eq!(t, RECORD_DECISION_BINARY);
                assert_eq!(binary, d.encode().1);
                assert_eq!(DecisionRecord::id_of(t, &binary).as_deref(), Some(d.id.as_str()));
                let json = serde_json::to_vec(d).unwrap();
                assert!(binary.len() < json.len(), "{} bytes binary, {} JSON", binary.len(), json.len());
                assert_eq!(DecisionRecord::id_of(RECORD_DECISION, &json).as_deref(), Some(d.id.as_str()));
                (RECORD_DECISION, json)
            }
            other => other.encode(),
        };
        let decoded = RiskRecord::decode(t, &payload).expect("an older record decodes");
        assert_eq!(&decoded, record);
        older.push(decoded);
    }
    // A backtest of the older journal reproduces every online decision, as of the new one.
    let mut bt = Backtest::new(controller(STARTER), BacktestOptions::default());
    for r in &older {
        bt.feed(r).expect("replays");
    }
    let report = bt.finish();
    assert_eq!(report.decisions, outcomes.len() as u64);
    assert_eq!(report.first_difference, None);

    // A JSON decision as PR-era journals wrote it (missing numbers as `null`).
    let json = br#"{"id":"t:x","source":"transfer","event":{"payer":"t:a","payee":"t:b","amount_minor":5,
        "currency":"CNY","timestamp_ns":7,"attributes":[["ip","t:1.2.3.4"]]},"observed":true,
        "active":{"ruleset_version":"v1","outcome":"review","score":60,"fired":[{"rule":"big",
        "score":60,"outcome":null,"reasons":["amount"]}],"features":[["z",null],["c",3.0]],"errors":[],
        "degraded":null,"latency_ns":1234},"shadow":null}"#;
    let Ok(RiskRecord::Decision(d)) = RiskRecord::decode(RECORD_DECISION, json) else { panic!("decodes") };
    assert_eq!((d.id.as_str(), d.active.outcome, &*d.active.fired[0].rule), ("t:x", Outcome::Review, "big"));
    assert!(d.active.features[0].1.is_nan());
    assert_eq!(d.active.features[1], ("c".into(), 3.0));
}

#[test]
fn binary_decisions_keep_every_bit_and_refuse_damaged_bytes() {
    let (journal, _) = online_session();
    let Some(RiskRecord::Decision(d)) = journal.iter().rev().find(|r| matches!(r, RiskRecord::Decision(_)))
    else {
        panic!("a decision")
    };
    let mut d = (**d).clone();
    d.active.features.push(("nan".into(), f64::from_bits(0x7ff8_0000_dead_beef)));
    d.active.features.push(("inf".into(), f64::NEG_INFINITY));
    d.active.features.push(("zero".into(), -0.0));
    d.active.errors.push(("broken".into(), "no such variable: ünïcode".into()));
    d.active.degraded = Some("budget of 0 µs spent".into());
    d.active.score = -3;
    d.shadow = Some(d.active.clone());
    let (t, payload) = d.encode();
    let Ok(RiskRecord::Decision(back)) = RiskRecord::decode(t, &payload) else { panic!("decodes") };
    assert!(back.active.same_decision(&d.active) && back.shadow.as_ref().unwrap().same_decision(&d.active));
    let bits = |v: &[(std::sync::Arc<str>, f64)]| {
        v.iter().map(|(n, x)| (n.clone(), x.to_bits())).collect::<Vec<_>>()
    };
    assert_eq!(bits(&back.active.features), bits(&d.active.features));
    assert_eq!(
        (back.active.errors.clone(), back.active.degraded.clone()),
        (d.active.errors, d.active.degraded)
    );
    assert_eq!((back.id.as_str(), back.event.clone(), back.observed), (d.id.as_str(), d.event, d.observed));
    // Every truncation, a trailing byte and an unknown format are errors, never panics.
    for n in 0..payload.len() {
        assert!(RiskRecord::decode(t, &payload[..n]).is_err(), "{n} of {} bytes", payload.len());
    }
    let mut longer = payload.clone();
    longer.push(0);
    assert!(RiskRecord::decode(t, &longer).is_err());
    assert_eq!(payload[0], 2, "the last decision of the session carries a balance (format 2)");
    let mut other = payload.clone();
    other[0] = 3;
    assert!(RiskRecord::decode(t, &other).is_err());
    assert_eq!(DecisionRecord::id_of(t, &other), None);
    assert!(RiskRecord::decode(t, &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
}

#[test]
fn a_decisions_head_is_what_the_whole_record_says_and_damage_is_an_error() {
    use puhui_risk::records::binary;
    let (journal, _) = online_session();
    let decisions: Vec<&DecisionRecord> = journal
        .iter()
        .filter_map(|r| match r {
            RiskRecord::Decision(d) => Some(&**d),
            _ => None,
        })
        .collect();
    assert!(decisions.iter().any(|d| d.active.outcome != Outcome::Approve), "more than approvals");
    for d in decisions {
        let payload = binary::encode(d);
        let head = binary::decode_head(&payload).unwrap();
        assert_eq!(
            (head.id, head.source, &head.event, head.observed, head.outcome),
            (d.id.as_str(), d.source, &d.event, d.observed, d.active.outcome)
        );
        // Cut anywhere up to the outcome: an error, never a panic (past it, the head is whole).
        let whole = (0..=payload.len()).find(|&n| binary::decode_head(&payload[..n]).is_ok()).unwrap();
        assert_eq!(binary::decode_head(&payload[..whole]).unwrap(), head);
        assert!((0..whole).all(|n| binary::decode_head(&payload[..n]).is_err()));
    }
    assert!(binary::decode_head(&[3, 0]).is_err(), "an unknown format");
}

#[test]
fn the_binary_decision_format_is_stable() {
    // Journals outlive binaries: these bytes must decode to this record in every later version.
    let d = DecisionRecord {
        id: "t:d".into(),
        source: DecisionSource::Standalone,
        event: EventRecord {
            payer: "t:a".into(),
            payee: "t:b".into(),
            amount_minor: 300,
            currency: "CNY".into(),
            timestamp_ns: 1,
            attributes: vec![("ip".into(), "t:i".into())],
            payer_balance_minor: None,
        },
        observed: true,
        active: Verdict {
            ruleset_version: "v".into(),
            outcome: Outcome::Decline,
            score: -1,
            fired: vec![FiredRecord {
                rule: "r".into(),
                score: -1,
                outcome: Some(Outcome::Decline),
                reasons: vec!["x".to_string()].into(),
            }],
            features: vec![("f".into(), 1.5)],
            errors: vec![],
            degraded: None,
            latency_ns: 200,
        },
        shadow: None,
    };
    let expected: &[u8] = &[
        1, 3, b't', b':', b'd', 1, 3, b't', b':', b'a', 3, b't', b':', b'b', 0xac, 0x02, 3, b'C', b'N', b'Y',
        1, 1, 2, b'i', b'p', 3, b't', b':', b'i', 1, 1, b'v', 2, 1, 1, 1, b'r', 1, 3, 1, 1, b'x', 1, 1, b'f',
        0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0, 0, 0xc8, 0x01, 0,
    ];
    assert_eq!(d.encode(), (RECORD_DECISION_BINARY, expected.to_vec()));
    assert_eq!(
        RiskRecord::decode(RECORD_DECISION_BINARY, expected),
        Ok(RiskRecord::Decision(Box::new(d.clone())))
    );
    // With the payer's balance: format 2, the balance (zigzag: -3 is 5) right after the attributes.
    let mut with_balance = d;
    with_balance.event.payer_balance_minor = Some(-3);
    let mut expected = expected.to_vec();
    expected[0] = 2;
    let after_attributes = expected.windows(3).position(|w| w == b"t:i").unwrap() + 3;
    expected.insert(after_attributes, 5);
    assert_eq!(with_balance.encode(), (RECORD_DECISION_BINARY, expected.clone()));
    assert_eq!(
        DecisionRecord::id_of(RECORD_DECISION_BINARY, &expected).as_deref(),
        Some(with_balance.id.as_str())
    );
    assert_eq!(
        RiskRecord::decode(RECORD_DECISION_BINARY, &expected),
        Ok(RiskRecord::Decision(Box::new(with_balance)))
    );
}

#[test]
fn backtest_as_recorded_reproduces_every_online_decision() {
    let (journal, outcomes) = online_session();
    let mut bt = Backtest::new(controller(STARTER), BacktestOptions::default());
    for r in &journal {
        bt.feed(r).expect("replays");
    }
    let report = bt.finish();
    assert_eq!(report.decisions, outcomes.len() as u64);
    assert_eq!(report.first_difference, None);
    assert_eq!(report.same_as_online, report.decisions - report.degraded_online);
    // Both rulesets and the list mattered: something was declined and something approved.
    let declined: u64 = report.agreement.iter().map(|row| row[2]).sum();
    let approved: u64 = report.agreement.iter().map(|row| row[0]).sum();
    assert!(declined > 0 && approved > 0, "{:?}", report.agreement);
    // Labels were "flagged = fraud", so the online confusion has no false positives/negatives.
    assert_eq!(report.confusion_online.false_positives, 0);
    assert_eq!(report.confusion_online.false_negatives, 0);
    assert_eq!(report.labelled, 150);
}

#[test]
fn backtest_of_a_candidate_differs_and_is_point_in_time() {
    let (journal, _) = online_session();
    let mut bt = Backtest::new(controller(STRICT), BacktestOptions { candidate: true, ..Default::default() });
    for r in &journal {
        bt.feed(r).unwrap();
    }
    let report = bt.finish();
    assert_eq!(report.decisions, 600);
    assert!(report.first_difference.is_some(), "strict-1 does not decide like the starter everywhere");
    assert!(report.rules.iter().any(|r| r.rule == "busy_payer" && r.fired > 0));
    // Per rule, its false-positive rate: the labelled legit it fired on, of all labelled legit.
    let legit = report.confusion.false_positives + report.confusion.true_negatives;
    let fraud = report.confusion.true_positives + report.confusion.false_negatives;
    assert!(legit > 0 && fraud > 0, "{:?}", report.confusion);
    for r in &report.rules {
        assert_eq!((r.legit_total, r.fraud_total), (legit, fraud), "{r:?}");
        assert!(r.fired_legit + r.fired_fraud <= r.fired, "{r:?}");
        assert_eq!(r.false_positive_rate(), Some(r.fired_legit as f64 / legit as f64));
    }
    assert!(report.rules.iter().any(|r| r.fired_legit > 0), "some rule fired on legit: {:?}", report.rules);

    // Point in time: the same candidate over only the first half of the history decides the first
    // half exactly as it does over the whole history.
    let half: Vec<&RiskRecord> =
        journal.iter().take_while(|r| !matches!(r, RiskRecord::Decision(d) if d.id == "t:d300")).collect();
    let mut first =
        Backtest::new(controller(STRICT), BacktestOptions { candidate: true, ..Default::default() });
    for r in &half {
        first.feed(r).unwrap();
    }
    let to_ns = match journal.iter().find(|r| matches!(r, RiskRecord::Decision(d) if d.id == "t:d300")) {
        Some(RiskRecord::Decision(d)) => d.event.timestamp_ns,
        _ => unreachable!(),
    };
    let mut whole = Backtest::new(
        controller(STRICT),
        BacktestOptions { candidate: true, to_ns: Some(to_ns), ..Default::default() },
    );
    for r in &journal {
        whole.feed(r).unwrap();
    }
    let (a, b) = (first.finish(), whole.finish());
    assert_eq!(a.decisions, 300);
    assert_eq!(a.agreement, b.agreement);
    assert_eq!(a.scores, b.scores);
}

#[test]
fn replaying_the_records_rebuilds_rulesets_lists_and_features() {
    let (journal, _) = online_session();
    let mut online = controller(STARTER);
    let mut restarted = controller(STARTER);
    for r in &journal {
        online.apply(r).unwrap();
        restarted.apply(r).unwrap();
    }
    assert_eq!(restarted.active().ruleset().version, "strict-1");
    assert!(restarted.shadow().is_none());
    assert_eq!(restarted.rulesets().len(), 2);
    assert_eq!(restarted.list_values("deny_devices", "", None, 10), Some((vec![], false)));
    assert_eq!(restarted.features().keys(), online.features().keys());
}

/// What a test compares of two controllers' rulesets, activation and lists.
fn control_state(
    c: &Controller,
) -> (Vec<(String, Option<String>)>, String, Option<String>, Vec<Vec<String>>) {
    let rulesets = c
        .rulesets()
        .into_iter()
        .map(|r| (r.version.clone(), c.ruleset_text(&r.version).map(str::to_string)))
        .collect();
    let lists = ["deny_devices", "allow_accounts", "empty"]
        .iter()
        .map(|name| c.list_values(name, "", None, 100_000).map(|(values, _)| values).unwrap_or_default())
        .collect();
    (rulesets, c.active().ruleset().version.clone(), c.shadow().map(|e| e.ruleset().version.clone()), lists)
}

#[test]
fn state_records_rebuild_rulesets_the_activation_and_lists_without_the_journal() {
    // The journal's session, then a shadow, a list longer than one change may hold, and a list
    // emptied again (it still exists).
    let (journal, _) = online_session();
    let mut online = controller(STARTER);
    for r in &journal {
        online.apply(r).unwrap();
    }
    online.activate("strict-1", Some("starter-3")).unwrap();
    let many: Vec<String> =
        (0..puhui_risk::control::LIST_CHANGE_VALUES_MAX + 5).map(|i| format!("t:acct{i}")).collect();
    for chunk in many.chunks(puhui_risk::control::LIST_CHANGE_VALUES_MAX) {
        online.change_list("allow_accounts", ListOp::Add, chunk.to_vec()).unwrap();
    }
    online.change_list("empty", ListOp::Add, vec!["t:x".into()]).unwrap();
    online.change_list("empty", ListOp::Remove, vec!["t:x".into()]).unwrap();
    online.change_list("deny_devices", ListOp::Add, vec!["t:dev9".into()]).unwrap();

    let records = online.state_records();
    let lists = records.iter().filter(|r| matches!(r, RiskRecord::List(_))).count();
    assert_eq!(lists, 4, "allow_accounts in two records, deny_devices, empty");
    // A start with another provisional ruleset (here a third text): the carried records, through
    // their encoding, rebuild the same state; the provisional one, never journaled, is not listed.
    let third = STRICT.replace("strict-1", "strict-3");
    let (mut restarted, _) =
        Controller::new_journaled(&third, Path::new("."), FeatureLimits::default()).unwrap();
    for r in &records {
        let (record_type, payload) = r.encode();
        restarted.apply(&RiskRecord::decode(record_type, &payload).unwrap()).unwrap();
    }
    restarted.drop_unjournaled_initial();
    assert_eq!(control_state(&restarted), control_state(&online));
    assert_eq!(restarted.list_values("allow_accounts", "", None, 1).unwrap().0, ["t:acct0"]);
    // And a controller whose provisional ruleset was never journaled nor activated carries neither:
    // only its feature bounds.
    let (fresh, _) = Controller::new_journaled(&third, Path::new("."), FeatureLimits::default()).unwrap();
    assert!(
        matches!(&fresh.state_records()[..], [RiskRecord::FeatureLimits(l)] if l.keys_max == 1_000_000),
        "{:?}",
        fresh.state_records()
    );
}

#[test]
fn versions_name_one_text_forever_and_bad_rulesets_are_refused() {
    let mut c = controller(STARTER);
    let (v, first) = c.publish(STRICT).unwrap();
    assert_eq!(v, "strict-1");
    assert!(first.is_some());
    assert_eq!(c.publish(STRICT).unwrap().1, None, "same text again: nothing new");
    let changed = STRICT.replace("amount > 500000", "amount > 400000");
    assert!(matches!(c.publish(&changed), Err(ControlError::VersionConflict(_))));
    let broken = STRICT.replace("payer_count_1h >= 3", "payer_count_1h >= ");
    match c.publish(&broken.replace("strict-1", "strict-2")) {
        Err(ControlError::Ruleset(e)) => assert_eq!(e.rule_id.as_deref(), Some("busy_payer")),
        other => panic!("expected a ruleset error, got {other:?}"),
    }
    assert!(matches!(c.activate("nope", None), Err(ControlError::UnknownVersion(_))));
    assert!(c.change_list("bad name!", ListOp::Add, vec![]).is_err());
}

#[test]
fn a_journaled_text_replaces_the_provisional_starter_of_the_same_version() {
    // The binary's starter changed but kept its version: the journal's text wins at start-up.
    let (journal, _) = online_session();
    let edited = STARTER.replace("review = 50", "review = 55");
    let mut c = controller(&edited);
    for r in &journal {
        c.apply(r).expect("replays despite the edited starter");
    }
    let starter_version = journal
        .iter()
        .find_map(|r| match r {
            RiskRecord::Ruleset(r) => Some(r.version.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(c.ruleset_text(&starter_version), Some(STARTER));
}

#[test]
fn a_spent_budget_takes_the_rulesets_outcome_and_replays_ignore_it() {
    let mut text = String::from(
        "version = \"budget\"\n[thresholds]\nreview = 50\ndecline = 100\n[budget]\ndecision_us = 0\non_exceeded = \"decline\"\n",
    );
    // More rules than the engine evaluates between two looks at the clock (32; the first look is
    // before any rule).
    for i in 0..40 {
        text += &format!(
            "[[rules]]\nid = \"r{i}\"\ndescription = \"d\"\nexpression = \"amount > {i}\"\nscore = 1\n"
        );
    }
    let c = controller(&text);
    let (payer, payee, amount, t, attrs) = event_parts(1);
    let event = RiskEvent {
        payer: &payer,
        payee: &payee,
        amount_minor: amount,
        currency: "CNY",
        timestamp_ns: t,
        attributes: &attrs,
        payer_balance_minor: None,
    };
    let online = c.active().decide(c.features(), &event);
    assert!(online.degraded.is_some(), "a zero budget is spent by the first check");
    assert_eq!(online.outcome, Outcome::Decline, "fail closed, as the ruleset says");
    let replayed = c.active().decide_within(c.features(), &event, false);
    assert_eq!((replayed.degraded, replayed.outcome, replayed.fired.len()), (None, Outcome::Approve, 40));
    let bad = text.replace("on_exceeded = \"decline\"", "on_exceeded = \"maybe\"");
    assert!(Controller::new(&bad, Path::new("."), FeatureLimits::default()).is_err());
}

#[test]
fn a_model_file_changed_since_publication_is_refused_on_replay() {
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../risk-model/tests/fixtures"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures.join("xgb_binary.json"), dir.path().join("fraud.json")).unwrap();
    let text = "version = \"m1\"\n[thresholds]\nreview = 50\ndecline = 100\n[[models]]\nname = \"fraud\"\npath = \"fraud.json\"\ninputs = [\"amount\", \"missing\", \"missing\", \"missing\", \"missing\", \"missing\", \"missing\", \"missing\", \"missing\", \"missing\"]\n[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"fraud > 0.9\"\nscore = 60\n";
    let (mut online, _) = Controller::new(STARTER, dir.path(), FeatureLimits::default()).unwrap();
    let (_, record) = online.publish(text).unwrap();
    let record = record.expect("a new version");
    let RiskRecord::Ruleset(r) = &record else { panic!("a ruleset record") };
    assert_eq!(r.models.len(), 1, "{r:?}");
    assert_eq!(
        r.models[0].blake3,
        blake3::hash(&std::fs::read(dir.path().join("fraud.json")).unwrap()).to_hex().to_string()
    );

    // The same file: the record replays.
    let replay = || Controller::new(STARTER, dir.path(), FeatureLimits::default()).unwrap().0;
    replay().apply(&record).expect("the same model replays");
    // Another file under the same name: refused, naming the model.
    std::fs::copy(fixtures.join("xgb_regression.json"), dir.path().join("fraud.json")).unwrap();
    let e = replay().apply(&record).expect_err("a changed model is refused");
    assert!(
        matches!(&e, ControlError::Ruleset(r) if r.message.contains("model file of fraud changed")),
        "{e}"
    );
    // A record from before digests were kept replays as it did.
    let RiskRecord::Ruleset(mut old) = record else { unreachable!() };
    old.models.clear();
    replay().apply(&RiskRecord::Ruleset(old)).expect("no digest to check");
}

#[test]
fn a_journaled_ruleset_replays_though_a_new_publication_would_be_refused() {
    // Published before the window horizon and name checks: a 60-day window and a misspelt name.
    let old = "version = \"old-1\"\n[thresholds]\nreview = 50\ndecline = 100\n[[features]]\nname = \"c60d\"\nentity = \"payer\"\naggregate = \"count\"\nwindow = \"60d\"\n[[rules]]\nid = \"typo\"\ndescription = \"d\"\nexpression = \"c60dd > 3\"\nscore = 60\n";
    let dir = tempfile::tempdir().unwrap();
    let fresh = || Controller::new(STARTER, dir.path(), FeatureLimits::default()).unwrap().0;
    assert!(fresh().publish(old).is_err(), "a new publication is checked");
    let record = RiskRecord::Ruleset(puhui_risk::records::RulesetRecord {
        version: "old-1".into(),
        text: old.into(),
        models: Vec::new(),
    });
    let mut replayed = fresh();
    replayed.apply(&record).expect("the journal replays");
    replayed
        .apply(&RiskRecord::Activation(puhui_risk::records::ActivationRecord {
            active: "old-1".into(),
            shadow: None,
        }))
        .expect("and its activation");
    assert_eq!(replayed.active().ruleset().version, "old-1");
    // Published again as it stands (an operator's `--ruleset`, an API retry): already there.
    assert_eq!(replayed.publish(old).unwrap(), ("old-1".to_string(), None));
    assert!(replayed.publish(&old.replace("score = 60", "score = 61")).is_err());
}

proptest::proptest! {
    /// Paging a list with `list_page` (each page after the last value of the one before) gives its
    /// values with the prefix, in order, each once, whatever the page size.
    #[test]
    fn list_pages_concatenate_to_the_sorted_values_with_the_prefix(
        values in proptest::collection::hash_set("(t:|u:)?[a-c]{0,3}", 0..60),
        limit in 1usize..7,
        scoped in proptest::bool::ANY,
    ) {
        let lists: puhui_risk::Lists = std::sync::Arc::default();
        lists.write().unwrap().insert("deny".into(), values.iter().cloned().collect());
        let prefix = if scoped { "t:" } else { "" };
        let mut expected: Vec<String> = values.iter().filter(|v| v.starts_with(prefix)).cloned().collect();
        expected.sort();
        let (mut paged, mut after) = (Vec::new(), None::<String>);
        loop {
            let (page, more) = puhui_risk::list_page(&lists, "deny", prefix, after.as_deref(), limit).unwrap();
            proptest::prop_assert!(page.len() <= limit);
            paged.extend(page.iter().cloned());
            if !more {
                break;
            }
            proptest::prop_assert_eq!(page.len(), limit, "a page before the last is full");
            after = page.last().cloned();
        }
        proptest::prop_assert_eq!(paged, expected);
        proptest::prop_assert!(puhui_risk::list_page(&lists, "allow", prefix, None, limit).is_none());
    }
}

#[test]
fn a_ruleset_prepared_outside_the_controller_publishes_as_publish_does() {
    let mut c = controller(STARTER);
    let text = puhui_risk::synthetic::ruleset_text(5);
    let prepared = Controller::prepare(&text, c.models_dir());
    let (version, record) = c.publish_prepared(&text, prepared).expect("publishes");
    assert!(matches!(record, Some(RiskRecord::Ruleset(_))));
    // The same text again is answered as published, whatever its parse gave this time.
    let failed = Err(ControlError::Limit("a parse that failed".into()));
    assert_eq!(c.publish_prepared(&text, failed).expect("already published"), (version, None));
    // A new text that does not parse is refused with the parse's error, and nothing is published.
    let bad = "version = \"bad-1\"\n[thresholds]\nreview = 1\n";
    let before = c.rulesets().len();
    assert!(matches!(
        c.publish_prepared(bad, Controller::prepare(bad, c.models_dir())),
        Err(ControlError::Ruleset(_))
    ));
    assert_eq!(c.rulesets().len(), before);
    let long = "#".repeat(puhui_risk::control::RULESET_TEXT_BYTES_MAX + 1);
    assert!(matches!(Controller::prepare(&long, c.models_dir()), Err(ControlError::Limit(_))));
}

/// An online session on a controller with `limits` and feature placement `seed`: `events`
/// decisions over more keys than `limits.keys_max` holds, so the store evicts as it goes (payers
/// come back after 12,007 events, about as far back as 20,000 keys reach: whether one is still
/// held depends on which keys it shares a shard with).
fn evicting_session(limits: FeatureLimits, seed: u64, events: u64) -> Vec<RiskRecord> {
    let (mut c, initial) = Controller::new(STARTER, Path::new("."), limits).unwrap();
    assert!(c.seed_features(seed));
    c.confirm_initial();
    let mut journal = initial;
    for i in 0..events {
        let (payer, payee) = (format!("t:p{}", i % 12_007), format!("t:m{}", (i * 13) % 1_009));
        let attrs = vec![
            ("device_id".to_string(), format!("t:dev{}", i % 611)),
            ("ip".to_string(), format!("t:ip{}", i % 1_013)),
            ("kyc_tier".to_string(), "2".to_string()),
        ];
        let event = RiskEvent {
            payer: &payer,
            payee: &payee,
            amount_minor: 1_000 + (i * 7919) % 90_000,
            currency: "CNY",
            timestamp_ns: 1_700_000_000_000_000_000 + i * 1_000_000_000,
            attributes: &attrs,
            payer_balance_minor: None,
        };
        let d = c.decide(format!("t:e{i}"), DecisionSource::Transfer, &event, true);
        c.commit_decision(&d);
        journal.push(RiskRecord::Decision(Box::new(d)));
    }
    assert!(c.features().keys() <= limits.keys_max);
    journal
}

#[test]
fn a_replay_with_the_online_runs_seed_evicts_what_it_evicted_and_decides_the_same() {
    // Past `EVICT_BY_SHARD_FROM_KEYS` (16,384) keys, where each shard drops its own oldest tenth:
    // which keys share a shard decides which go.
    let limits = FeatureLimits { keys_max: 20_000, ..FeatureLimits::default() };
    let journal = evicting_session(limits, 7, 40_000);
    let replay = |seed: u64| {
        let (mut c, _) = Controller::new(STARTER, Path::new("."), limits).unwrap();
        assert!(c.seed_features(seed));
        let mut bt = Backtest::new(c, BacktestOptions::default());
        for r in &journal {
            bt.feed(r).unwrap();
        }
        bt.finish()
    };
    let same = replay(7);
    assert_eq!(same.decisions, 40_000);
    assert_eq!(same.first_difference, None);
    assert_eq!(same.same_as_online, same.decisions - same.degraded_online);
    // The seed is what made it so: another seed places, and so evicts, other keys.
    let other = replay(8);
    assert!(other.first_difference.is_some(), "another seed decided every decision the same");
    // A store that already holds keys is not re-seeded (they would be misplaced).
    let (mut c, _) = Controller::new(STARTER, Path::new("."), limits).unwrap();
    let Some(RiskRecord::Decision(d)) = journal.iter().find(|r| matches!(r, RiskRecord::Decision(_))) else {
        unreachable!()
    };
    c.commit_decision(d);
    assert!(!c.seed_features(7));
}

#[test]
fn a_tenant_cannot_fill_a_shared_list_and_its_share_is_counted_as_values_come_and_go() {
    use puhui_risk::control::{LIST_CHANGE_VALUES_MAX, LIST_VALUES_PER_SCOPE_MAX};
    let mut set = puhui_risk::ListSet::default();
    for v in ["t1:a", "t1:b", "t2:a", "DE", "t1:a"] {
        set.insert(v.to_string());
    }
    assert_eq!((set.len_in_scope("t1"), set.len_in_scope("t2"), set.len_in_scope("")), (2, 1, 1));
    assert!(set.remove("t1:a") && !set.remove("t1:a"));
    assert!(set.remove("t2:a"));
    assert_eq!((set.len_in_scope("t1"), set.len_in_scope("t2"), set.len()), (1, 0, 2));

    let mut c = controller(STARTER);
    let values = |tenant: &str, from: usize| -> Vec<String> {
        (from..from + LIST_CHANGE_VALUES_MAX).map(|i| format!("{tenant}:dev{i}")).collect()
    };
    let mut journal = Vec::new();
    for chunk in 0..LIST_VALUES_PER_SCOPE_MAX / LIST_CHANGE_VALUES_MAX {
        let change = values("t1", chunk * LIST_CHANGE_VALUES_MAX);
        journal.push(c.change_list_in_scope("deny_devices", ListOp::Add, change, "t1").unwrap());
    }
    let more = vec!["t1:one-more".to_string()];
    let e = c.change_list_in_scope("deny_devices", ListOp::Add, more.clone(), "t1").unwrap_err();
    assert!(e.to_string().contains("a tenant holds at most"), "{e}");
    // Other tenants, and the operator, still have room; a removal makes room again.
    journal.push(c.change_list_in_scope("deny_devices", ListOp::Add, vec!["t2:x".into()], "t2").unwrap());
    journal
        .push(c.change_list_in_scope("deny_devices", ListOp::Remove, vec!["t1:dev0".into()], "t1").unwrap());
    journal.push(c.change_list_in_scope("deny_devices", ListOp::Add, more, "t1").unwrap());
    journal.push(c.change_list("deny_devices", ListOp::Add, vec!["t1:by-operator".into()]).unwrap());
    // A replay applies what was journaled (the operator's addition beyond the share included).
    let mut replayed = controller(STARTER);
    for r in &journal {
        replayed.apply(r).unwrap();
    }
    let count = |c: &Controller| {
        let lists = c.lists().read().unwrap();
        let list = &lists["deny_devices"];
        (list.len(), list.len_in_scope("t1"), list.len_in_scope("t2"))
    };
    assert_eq!(count(&c), (LIST_VALUES_PER_SCOPE_MAX + 2, LIST_VALUES_PER_SCOPE_MAX + 1, 1));
    assert_eq!(count(&replayed), count(&c));
}
