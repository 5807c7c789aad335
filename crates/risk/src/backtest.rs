//! Backtests: replay journaled risk records through a ruleset and compare with what was decided
//! online and with the labels.
//!
//! Two modes, one code path (a [`Controller`] fed the records in journal order):
//! - **as recorded** (no candidate): every published ruleset, activation and list change is
//!   replayed, and each decision is decided again by the ruleset that was active at the time. With
//!   the same code and the same inputs the result must be the same decision, bit for bit: the report
//!   counts reproduced decisions and names the first that is not.
//! - **candidate**: one ruleset decides everything (list changes still replay, so `in_list` sees
//!   what it saw online), with velocity features rebuilt from the same history: point-in-time
//!   correct, because each decision only sees events recorded before it.
//!
//! Metrics count a decision as flagged when its outcome is review or decline, and as positive when
//! its latest label is fraud. Decisions outside `[from, to)` still feed the features but are not
//! counted.

use std::collections::{BTreeMap, HashMap};

use crate::control::{ControlError, Controller};
use crate::records::{Label, RiskRecord, Verdict};
use crate::rules::Outcome;

/// Most decisions a backtest keeps for scoring against labels (about 100 bytes each).
pub const BACKTEST_DECISIONS_MAX: usize = 50_000_000;
/// Width of a score histogram bucket.
pub const SCORE_BUCKET_WIDTH: i64 = 10;

/// What to replay and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct BacktestOptions {
    /// Count decisions whose event is at or after this time (ns); `None` from the start.
    pub from_ns: Option<u64>,
    /// Count decisions whose event is before this time (ns); `None` to the end.
    pub to_ns: Option<u64>,
    /// Whether a candidate ruleset decides (false: as recorded).
    pub candidate: bool,
    /// Whether the feature store keeps the bounds it was made with throughout (a what-if: other
    /// bounds than the server ran with); false: the journal's bound changes apply where they were
    /// made, as online.
    pub fixed_limits: bool,
}

/// A confusion matrix (flagged = review or decline; positive = labelled fraud).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Flagged and fraud.
    pub true_positives: u64,
    /// Flagged and legit.
    pub false_positives: u64,
    /// Not flagged and legit.
    pub true_negatives: u64,
    /// Not flagged and fraud.
    pub false_negatives: u64,
}

impl Confusion {
    fn add(&mut self, flagged: bool, fraud: bool) {
        match (flagged, fraud) {
            (true, true) => self.true_positives += 1,
            (true, false) => self.false_positives += 1,
            (false, false) => self.true_negatives += 1,
            (false, true) => self.false_negatives += 1,
        }
    }

    /// Flagged that were fraud; `None` if nothing was flagged.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    /// Fraud that was flagged; `None` without fraud labels.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    /// Legit that was flagged; `None` without legit labels.
    pub fn false_positive_rate(&self) -> Option<f64> {
        ratio(self.false_positives, self.false_positives + self.true_negatives)
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// One rule's record in a backtest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Rule id.
    pub rule: String,
    /// Decisions it fired on.
    pub fired: u64,
    /// Labelled-fraud decisions it fired on.
    pub fired_fraud: u64,
    /// Labelled-legit decisions it fired on.
    pub fired_legit: u64,
    /// Labelled-fraud decisions in all (its recall's denominator).
    pub fraud_total: u64,
    /// Labelled-legit decisions in all (its false-positive rate's denominator).
    pub legit_total: u64,
}

impl RuleStats {
    /// Of the labelled decisions it fired on, the fraud share.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.fired_fraud, self.fired_fraud + self.fired_legit)
    }

    /// Of the fraud, the share it fired on.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.fired_fraud, self.fraud_total)
    }

    /// Of the legit, the share it fired on (its false-positive rate).
    pub fn false_positive_rate(&self) -> Option<f64> {
        ratio(self.fired_legit, self.legit_total)
    }
}

/// Score counts per histogram bucket, by label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreCounts {
    /// Labelled fraud.
    pub fraud: u64,
    /// Labelled legit.
    pub legit: u64,
    /// Not labelled.
    pub unlabelled: u64,
}

/// What a backtest found.
#[derive(Debug, Clone, Default)]
pub struct BacktestReport {
    /// Risk records read.
    pub records: u64,
    /// Decisions counted (inside the time range).
    pub decisions: u64,
    /// Counted decisions that decided exactly as recorded online (outcome, score, fired rules,
    /// feature values; as-recorded mode: the reproduction check).
    pub same_as_online: u64,
    /// The first counted decision that did not, with what differed.
    pub first_difference: Option<String>,
    /// Counted decisions that were degraded online (budget spent): not comparable, not re-checked.
    pub degraded_online: u64,
    /// Online outcome (row) × backtest outcome (column): approve, review, decline.
    pub agreement: [[u64; 3]; 3],
    /// Backtest outcomes over the labelled decisions.
    pub confusion: Confusion,
    /// Online outcomes over the same labelled decisions (the baseline a candidate must beat).
    pub confusion_online: Confusion,
    /// Decisions with a label.
    pub labelled: u64,
    /// Per rule of the deciding ruleset(s).
    pub rules: Vec<RuleStats>,
    /// Backtest score histogram (bucket start → counts).
    pub scores: BTreeMap<i64, ScoreCounts>,
}

fn index(o: Outcome) -> usize {
    match o {
        Outcome::Approve => 0,
        Outcome::Review => 1,
        Outcome::Decline => 2,
    }
}

struct Row {
    online: Outcome,
    outcome: Outcome,
    score: i64,
    fired: Vec<u32>,
}

/// Replays risk records (in journal order) and reports. `controller` runs the candidate ruleset
/// (`options.candidate`) or the initial one (as recorded: the records' rulesets take over).
pub struct Backtest {
    controller: Controller,
    options: BacktestOptions,
    report: BacktestReport,
    rows: Vec<Row>,
    row_of: HashMap<String, u32>,
    rule_ids: Vec<String>,
    rule_index: HashMap<String, u32>,
    labels: HashMap<String, Label>,
    truncated: bool,
}

impl Backtest {
    /// A backtest deciding with `controller`.
    pub fn new(controller: Controller, options: BacktestOptions) -> Backtest {
        Backtest {
            controller,
            options,
            report: BacktestReport::default(),
            rows: Vec::new(),
            row_of: HashMap::new(),
            rule_ids: Vec::new(),
            rule_index: HashMap::new(),
            labels: HashMap::new(),
            truncated: false,
        }
    }

    /// The feature store's bounds now (after the bound changes fed so far, unless fixed).
    pub fn feature_limits(&self) -> crate::FeatureLimits {
        self.controller.features().limits()
    }

    /// Feeds the next record.
    pub fn feed(&mut self, record: &RiskRecord) -> Result<(), ControlError> {
        self.report.records += 1;
        match record {
            RiskRecord::Decision(d) => {
                let (verdict, _shadow) = self.controller.replay_decision(d);
                let t = d.event.timestamp_ns;
                let inside =
                    self.options.from_ns.is_none_or(|f| t >= f) && self.options.to_ns.is_none_or(|e| t < e);
                if inside {
                    self.count(&d.id, &d.active, verdict);
                }
            }
            RiskRecord::Label(l) => {
                self.labels.insert(l.decision_id.clone(), l.label);
            }
            RiskRecord::List(_) => self.controller.apply(record)?,
            RiskRecord::FeatureLimits(_) => {
                if !self.options.fixed_limits {
                    self.controller.apply(record)?;
                }
            }
            RiskRecord::Ruleset(_) | RiskRecord::Activation(_) => {
                if !self.options.candidate {
                    self.controller.apply(record)?;
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, id: &str, online: &Verdict, verdict: Verdict) {
        let report = &mut self.report;
        report.decisions += 1;
        report.agreement[index(online.outcome)][index(verdict.outcome)] += 1;
        if online.degraded.is_some() {
            report.degraded_online += 1;
        } else if online.same_decision(&verdict) {
            report.same_as_online += 1;
        } else if report.first_difference.is_none() {
            report.first_difference = Some(format!(
                "decision {id}: online {} (score {}, fired {:?}, ruleset {}), now {} (score {}, fired {:?}, ruleset {})",
                online.outcome.as_str(),
                online.score,
                online.fired.iter().map(|f| &*f.rule).collect::<Vec<_>>(),
                online.ruleset_version,
                verdict.outcome.as_str(),
                verdict.score,
                verdict.fired.iter().map(|f| &*f.rule).collect::<Vec<_>>(),
                verdict.ruleset_version,
            ));
        }
        if self.rows.len() >= BACKTEST_DECISIONS_MAX {
            self.truncated = true;
            return;
        }
        let mut fired = Vec::with_capacity(verdict.fired.len());
        for f in &verdict.fired {
            let next = self.rule_ids.len() as u32;
            let i = *self.rule_index.entry(f.rule.to_string()).or_insert(next);
            if i == next {
                self.rule_ids.push(f.rule.to_string());
            }
            fired.push(i);
        }
        self.row_of.insert(id.to_string(), self.rows.len() as u32);
        self.rows.push(Row { online: online.outcome, outcome: verdict.outcome, score: verdict.score, fired });
    }

    /// Whether more decisions were counted than [`BACKTEST_DECISIONS_MAX`] (the rest are in the
    /// agreement matrix but not scored against labels).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Scores the kept decisions against the labels and returns the report.
    pub fn finish(mut self) -> BacktestReport {
        let mut report = std::mem::take(&mut self.report);
        let mut rules: Vec<RuleStats> =
            self.rule_ids.iter().map(|r| RuleStats { rule: r.clone(), ..RuleStats::default() }).collect();
        let mut label_of_row: Vec<Option<Label>> = vec![None; self.rows.len()];
        for (id, label) in &self.labels {
            if let Some(&row) = self.row_of.get(id) {
                label_of_row[row as usize] = Some(*label);
            }
        }
        let fraud_total = label_of_row.iter().filter(|l| **l == Some(Label::Fraud)).count() as u64;
        let legit_total = label_of_row.iter().filter(|l| **l == Some(Label::Legit)).count() as u64;
        for (row, label) in self.rows.iter().zip(&label_of_row) {
            let bucket = row.score.div_euclid(SCORE_BUCKET_WIDTH) * SCORE_BUCKET_WIDTH;
            let counts = report.scores.entry(bucket).or_default();
            match label {
                Some(Label::Fraud) => counts.fraud += 1,
                Some(Label::Legit) => counts.legit += 1,
                None => counts.unlabelled += 1,
            }
            let Some(label) = label else { continue };
            let fraud = *label == Label::Fraud;
            report.labelled += 1;
            report.confusion.add(row.outcome != Outcome::Approve, fraud);
            report.confusion_online.add(row.online != Outcome::Approve, fraud);
            for &r in &row.fired {
                let stats = &mut rules[r as usize];
                if fraud {
                    stats.fired_fraud += 1;
                } else {
                    stats.fired_legit += 1;
                }
            }
        }
        for row in &self.rows {
            for &r in &row.fired {
                rules[r as usize].fired += 1;
            }
        }
        for r in &mut rules {
            r.fraud_total = fraud_total;
            r.legit_total = legit_total;
        }
        rules.sort_by(|a, b| b.fired.cmp(&a.fired).then_with(|| a.rule.cmp(&b.rule)));
        report.rules = rules;
        report
    }
}
