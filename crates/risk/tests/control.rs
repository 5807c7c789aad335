//! The controller's records replay to the same state, and a backtest of the recorded history
//! reproduces every online decision exactly (through ruleset switches, shadow runs and list changes).

use std::path::Path;

use puhui_risk::backtest::{Backtest, BacktestOptions};
use puhui_risk::control::{ControlError, Controller};
use puhui_risk::records::{DecisionSource, Label, LabelRecord, ListOp};
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
    let amount = if i % 13 == 0 { 900_000 } else { 1_000 + (i * 7919) % 50_000 };
    let t = 1_700_000_000_000_000_000 + i * 97_000_000_000;
    let attrs = vec![
        ("device_id".to_string(), format!("t:dev{}", i % 5)),
        ("ip".to_string(), format!("t:10.0.0.{}", i % 3)),
        ("channel".to_string(), if i % 2 == 0 { "app" } else { "web" }.to_string()),
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
    assert_eq!(restarted.list_values("deny_devices", "", 10), Some((vec![], false)));
    assert_eq!(restarted.features().keys(), online.features().keys());
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
    // More rules than the engine evaluates between two looks at the clock (32).
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
    };
    let online = c.active().decide(c.features(), &event);
    assert!(online.degraded.is_some(), "a zero budget is spent by the first check");
    assert_eq!(online.outcome, Outcome::Decline, "fail closed, as the ruleset says");
    let replayed = c.active().decide_within(c.features(), &event, false);
    assert_eq!((replayed.degraded, replayed.outcome, replayed.fired.len()), (None, Outcome::Approve, 40));
    let bad = text.replace("on_exceeded = \"decline\"", "on_exceeded = \"maybe\"");
    assert!(Controller::new(&bad, Path::new("."), FeatureLimits::default()).is_err());
}
