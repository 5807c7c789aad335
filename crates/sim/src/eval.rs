//! Scoring risk decisions against the ground-truth labels: recall and precision per typology.
//!
//! A transfer is *flagged* when risk control did not simply approve it (review or decline).
//! Recall of a typology = flagged transfers with its label / transfers with its label.
//! Precision of a typology = among transfers flagged by the rules written for it (the caller
//! attributes fired rules to typologies), the share that are abusive (any typology: an account-
//! takeover rule that stops a mule's first payout did its job); on-target = the share that carry
//! that typology's own label. Case recall = cases with at least one flagged transfer / cases seen.

use std::collections::BTreeMap;

use crate::model::Typology;

/// What risk control did with a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Posted.
    Approved,
    /// Held for an analyst.
    Reviewed,
    /// Refused.
    Declined,
}

/// Counts for one label (a typology, or legitimate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelCounts {
    /// Scored transfers with this label.
    pub scored: u64,
    /// Of them, held for review.
    pub reviewed: u64,
    /// Of them, declined.
    pub declined: u64,
}

impl LabelCounts {
    /// Reviewed or declined.
    pub fn flagged(&self) -> u64 {
        self.reviewed + self.declined
    }

    /// Flagged / scored (0 when nothing was scored).
    pub fn flagged_share(&self) -> f64 {
        if self.scored == 0 {
            0.0
        } else {
            self.flagged() as f64 / self.scored as f64
        }
    }
}

/// Decisions tallied against labels.
#[derive(Debug, Clone, Default)]
pub struct Scoreboard {
    by_label: [LabelCounts; 6],
    legitimate: LabelCounts,
    /// Per typology: (flagged transfers its rules fired on, of which abusive, of which labelled with it).
    attributed: [(u64, u64, u64); 6],
    /// Case id → (typology, flagged at least once).
    cases: BTreeMap<u32, (Typology, bool)>,
}

impl Scoreboard {
    /// An empty scoreboard.
    pub fn new() -> Scoreboard {
        Scoreboard::default()
    }

    /// Records one decided transfer: its label and case, what was decided, and the typologies whose
    /// rules fired on it.
    pub fn record(
        &mut self,
        label: Option<Typology>,
        case_id: Option<u32>,
        verdict: Verdict,
        attributed: &[Typology],
    ) {
        let counts = match label {
            Some(t) => &mut self.by_label[t.index()],
            None => &mut self.legitimate,
        };
        counts.scored += 1;
        match verdict {
            Verdict::Approved => {}
            Verdict::Reviewed => counts.reviewed += 1,
            Verdict::Declined => counts.declined += 1,
        }
        let flagged = verdict != Verdict::Approved;
        if flagged {
            for &t in attributed {
                let entry = &mut self.attributed[t.index()];
                entry.0 += 1;
                entry.1 += u64::from(label.is_some());
                entry.2 += u64::from(label == Some(t));
            }
        }
        if let (Some(t), Some(case)) = (label, case_id) {
            let entry = self.cases.entry(case).or_insert((t, false));
            entry.1 |= flagged;
        }
    }

    /// Counts for a typology.
    pub fn typology(&self, t: Typology) -> LabelCounts {
        self.by_label[t.index()]
    }

    /// Counts for legitimate transfers.
    pub fn legitimate(&self) -> LabelCounts {
        self.legitimate
    }

    /// Transfer-level recall of `t` (`None` if no transfer had its label).
    pub fn recall(&self, t: Typology) -> Option<f64> {
        let c = self.by_label[t.index()];
        (c.scored > 0).then(|| c.flagged_share())
    }

    /// Precision of the rules attributed to `t`: the share of what they flagged that is abusive
    /// (`None` if they flagged nothing).
    pub fn precision(&self, t: Typology) -> Option<f64> {
        let (flagged, abusive, _) = self.attributed[t.index()];
        (flagged > 0).then(|| abusive as f64 / flagged as f64)
    }

    /// The share of what `t`'s rules flagged that carries `t`'s own label.
    pub fn on_target(&self, t: Typology) -> Option<f64> {
        let (flagged, _, own) = self.attributed[t.index()];
        (flagged > 0).then(|| own as f64 / flagged as f64)
    }

    /// Flagged transfers attributed to `t`'s rules.
    pub fn attributed_flags(&self, t: Typology) -> u64 {
        self.attributed[t.index()].0
    }

    /// (cases with at least one flagged transfer, cases seen) for `t`.
    pub fn cases(&self, t: Typology) -> (u64, u64) {
        let mut caught = 0;
        let mut seen = 0;
        for (typology, flagged) in self.cases.values() {
            if *typology == t {
                seen += 1;
                caught += u64::from(*flagged);
            }
        }
        (caught, seen)
    }

    /// Share of all flagged transfers that carry some abuse label (`None` if nothing was flagged).
    pub fn overall_precision(&self) -> Option<f64> {
        let abusive: u64 = self.by_label.iter().map(|c| c.flagged()).sum();
        let flagged = abusive + self.legitimate.flagged();
        (flagged > 0).then(|| abusive as f64 / flagged as f64)
    }

    /// Share of legitimate transfers flagged.
    pub fn false_positive_rate(&self) -> f64 {
        self.legitimate.flagged_share()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_precision_and_cases() {
        let mut s = Scoreboard::new();
        let ato = Typology::AccountTakeover;
        s.record(Some(ato), Some(1), Verdict::Declined, &[ato]);
        s.record(Some(ato), Some(1), Verdict::Approved, &[]);
        s.record(Some(ato), Some(2), Verdict::Approved, &[]);
        s.record(None, None, Verdict::Reviewed, &[ato]);
        s.record(None, None, Verdict::Approved, &[]);
        assert_eq!(s.recall(ato), Some(1.0 / 3.0));
        s.record(Some(Typology::MuleNetwork), Some(3), Verdict::Reviewed, &[ato]);
        assert_eq!(s.precision(ato), Some(2.0 / 3.0));
        assert_eq!(s.on_target(ato), Some(1.0 / 3.0));
        assert_eq!(s.cases(ato), (1, 2));
        assert_eq!(s.overall_precision(), Some(2.0 / 3.0));
        assert_eq!(s.false_positive_rate(), 0.5);
        assert_eq!(s.recall(Typology::SimSwap), None);
    }
}
