//! A bound on how many lines a kind of log event writes per second ([`LogBudget`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Lets through at most `per_second_max` log lines per wall-clock second and counts the rest, so
/// that a flood (every request of an overload failing) writes a bounded number of lines and says
/// how many it left out. Lock-free; two threads crossing a second at once may each let one extra
/// line through, never an unbounded number.
#[derive(Debug)]
pub struct LogBudget {
    per_second_max: u64,
    /// The second (since the Unix epoch) the counters below are for.
    second: AtomicU64,
    /// Lines let through in `second`.
    logged: AtomicU64,
    /// Lines left out since the last report.
    suppressed: AtomicU64,
}

/// What to do with one log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed_before` lines were left out since the last line written (report them).
    Log {
        /// Lines left out since the last report.
        suppressed_before: u64,
    },
    /// Leave it out (counted).
    Suppress,
}

impl LogBudget {
    /// A budget of `per_second_max` lines a second (at least one).
    pub const fn new(per_second_max: u64) -> LogBudget {
        LogBudget {
            per_second_max: if per_second_max == 0 { 1 } else { per_second_max },
            second: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line at `now_s` (seconds since the Unix epoch) may be written.
    pub fn admit(&self, now_s: u64) -> Admit {
        let second = self.second.load(Ordering::Relaxed);
        if now_s > second
            && self.second.compare_exchange(second, now_s, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < self.per_second_max {
            Admit::Log { suppressed_before: self.suppressed.swap(0, Ordering::Relaxed) }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Admit::Suppress
        }
    }

    /// [`LogBudget::admit`] at the system clock's second.
    pub fn admit_now(&self) -> Admit {
        let now_s =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.admit(now_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lets_its_budget_through_and_the_next_reports_what_was_left_out() {
        let budget = LogBudget::new(3);
        let first: Vec<Admit> = (0..10).map(|_| budget.admit(100)).collect();
        assert_eq!(first.iter().filter(|a| matches!(a, Admit::Log { .. })).count(), 3);
        assert!(first[..3].iter().all(|a| *a == Admit::Log { suppressed_before: 0 }));
        assert!(first[3..].iter().all(|a| *a == Admit::Suppress));
        // The next second: its first line carries the count left out, then the budget is fresh.
        assert_eq!(budget.admit(101), Admit::Log { suppressed_before: 7 });
        assert_eq!(budget.admit(101), Admit::Log { suppressed_before: 0 });
        assert_eq!(budget.admit(101), Admit::Log { suppressed_before: 0 });
        assert_eq!(budget.admit(101), Admit::Suppress);
        // A clock that steps back does not reopen the budget.
        assert_eq!(budget.admit(100), Admit::Suppress);
        assert_eq!(budget.admit(105), Admit::Log { suppressed_before: 2 });
    }

    #[test]
    fn a_zero_budget_still_lets_one_line_a_second_through() {
        let budget = LogBudget::new(0);
        assert_eq!(budget.admit(1), Admit::Log { suppressed_before: 0 });
        assert_eq!(budget.admit(1), Admit::Suppress);
        assert_eq!(budget.admit(2), Admit::Log { suppressed_before: 1 });
    }
}
