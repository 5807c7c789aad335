//! Window aggregates kept per key and moved incrementally: a decision asks each of its windows
//! about the events in `(now − window, now]`, and between two decisions a key usually gains one
//! event at its newest end and loses a few at the oldest. So each `(key, window length)` keeps the
//! aggregates of a contiguous run of the key's events and moves the run's two ends, instead of
//! scanning every event in the window (a busy key's 1,024 events made that scan most of a
//! decision's time).
//!
//! Exactness: every figure is a function of the multiset of events in the window only, never of
//! the order the run was built in, so a run moved event by event gives bit for bit what a run
//! built from scratch gives (what a backtest, a restarted node or a second store computes). Sums
//! are exact integers (the sum of squares in 192 bits), converted to `f64` only at the end; the
//! largest amount is recomputed from the run's events when its last copy leaves; distinct
//! counterparties are a count per counterparty.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

use super::{Event, WindowQuery, WindowStats};

/// Window lengths whose runs a key keeps; a key asked about more replaces its oldest run.
pub(super) const RUNS_PER_KEY_MAX: usize = 8;

/// Events a run's end moves one at a time before the end is found by binary search instead.
const SEEK_STEPS_MAX: u32 = 16;

/// Keys that are already hashes (counterparty hashes here, `KeyId` placements in the store): the
/// maps use them as they are.
#[derive(Default)]
pub(super) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); fold anything else in, for totality.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Events per counterparty hash in a run.
type Counts = hashbrown::HashMap<u64, u32, BuildHasherDefault<Prehashed>>;

/// A run's position in its key's events: a deque index (a key keeps at most
/// `events_per_key_max` ≤ `u32::MAX` events).
type Index = u32;

/// The aggregates of the events of one key at deque indexes `lo..hi`.
///
/// 96 bytes: a decision reads every line of every window it asks about, most of them not cached
/// (a payer's four windows were ten cache lines at 160 bytes a run, and the most missed memory of
/// an HTTP-shaped decision); so the count and the positions are 32-bit, "stale" and "no first"
/// are values of other fields, and the counts per counterparty, which most windows do not keep,
/// are behind one pointer.
#[derive(Debug, Clone)]
pub(super) struct Run {
    window_ns: u64,
    lo: Index,
    hi: Index,
    /// `hi - lo`.
    count: Index,
    /// How many events have the amount `max_minor`; 0 in a non-empty run means the last copy of
    /// the largest amount left the run (stale: recomputed before it is read).
    max_count: Index,
    max_minor: u64,
    sum_minor: u128,
    /// The sum of squared amounts: `squares_high · 2^128 + squares_low`, exact.
    squares_low: u128,
    squares_high: u64,
    /// The window start of the last query, while the event at `lo` is still the one that query
    /// found first in its window, and that event's timestamp (`u64::MAX` while there is no such
    /// query): a later query with a start at or after it, and before that timestamp, has the same
    /// `lo` without reading any event (the oldest events of a key are rarely in the cache).
    first_start_ns: u64,
    first_lo_ns: u64,
    /// Events per counterparty, if this run was asked for distinct counterparties.
    counterparties: Option<Box<Counts>>,
}

// The layout the cache-line arithmetic above counts on.
const _: () = assert!(std::mem::size_of::<Run>() == 96);

/// `first_start_ns` when no query's start is known.
const NO_FIRST: u64 = u64::MAX;

impl Run {
    fn new(window_ns: u64) -> Run {
        Run {
            window_ns,
            lo: 0,
            hi: 0,
            count: 0,
            max_count: 0,
            max_minor: 0,
            sum_minor: 0,
            squares_low: 0,
            squares_high: 0,
            first_start_ns: NO_FIRST,
            first_lo_ns: 0,
            counterparties: None,
        }
    }

    /// Whether the window starting after `start_ns` begins at `lo` still (see `first_start_ns`).
    fn starts_at_lo(&self, start_ns: u64, hi: Index) -> bool {
        self.lo < hi && self.first_start_ns <= start_ns && start_ns < self.first_lo_ns
    }

    fn add(&mut self, e: &Event) {
        self.count += 1;
        self.sum_minor += u128::from(e.amount_minor);
        let square = u128::from(e.amount_minor) * u128::from(e.amount_minor);
        let (low, carry) = self.squares_low.overflowing_add(square);
        self.squares_low = low;
        self.squares_high += u64::from(carry);
        if self.count == 1 {
            (self.max_minor, self.max_count) = (e.amount_minor, 1);
        } else if self.max_count > 0 {
            if e.amount_minor > self.max_minor {
                (self.max_minor, self.max_count) = (e.amount_minor, 1);
            } else if e.amount_minor == self.max_minor {
                self.max_count += 1;
            }
        }
        if let Some(counts) = &mut self.counterparties {
            *counts.entry(e.counterparty).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, e: &Event) {
        debug_assert!(self.count > 0, "removing from an empty run");
        self.count -= 1;
        self.sum_minor -= u128::from(e.amount_minor);
        let square = u128::from(e.amount_minor) * u128::from(e.amount_minor);
        let (low, borrow) = self.squares_low.overflowing_sub(square);
        self.squares_low = low;
        self.squares_high -= u64::from(borrow);
        if self.count == 0 {
            (self.max_minor, self.max_count) = (0, 0);
        } else if self.max_count > 0 && e.amount_minor == self.max_minor {
            self.max_count -= 1;
        }
        if let Some(counts) = &mut self.counterparties {
            match counts.entry(e.counterparty) {
                hashbrown::hash_map::Entry::Occupied(mut o) if *o.get() > 1 => *o.get_mut() -= 1,
                hashbrown::hash_map::Entry::Occupied(o) => {
                    o.remove();
                }
                hashbrown::hash_map::Entry::Vacant(_) => {
                    debug_assert!(false, "a counterparty not in the run")
                }
            }
        }
    }

    /// Makes this the run of `lo..hi`: moves its ends event by event where the old and the new
    /// run overlap enough, otherwise rebuilds it from the events.
    fn move_to(&mut self, events: &VecDeque<Event>, lo: Index, hi: Index, distinct: bool) {
        debug_assert!(lo <= hi && hi as usize <= events.len());
        let at = |i: Index| &events[i as usize];
        let moves = u64::from(lo.abs_diff(self.lo)) + u64::from(hi.abs_diff(self.hi));
        let overlap = hi > self.lo && lo < self.hi;
        if (distinct && self.counterparties.is_none()) || !overlap || moves > u64::from(hi - lo) {
            let mut counterparties = self.counterparties.take();
            if let Some(counts) = &mut counterparties {
                counts.clear();
            } else if distinct {
                counterparties = Some(Box::default());
            }
            *self = Run { counterparties, ..Run::new(self.window_ns) };
            for i in lo..hi {
                self.add(at(i));
            }
        } else {
            // Within the overlap every removed event is in the run and every added one is not.
            for i in self.hi..hi {
                self.add(at(i));
            }
            for i in hi..self.hi {
                self.remove(at(i));
            }
            for i in self.lo..lo {
                self.remove(at(i));
            }
            for i in lo..self.lo {
                self.add(at(i));
            }
        }
        (self.lo, self.hi) = (lo, hi);
        if self.count > 0 && self.max_count == 0 {
            let max_minor = (lo..hi).map(|i| at(i).amount_minor).max().unwrap_or(0);
            self.max_count = (lo..hi).filter(|&i| at(i).amount_minor == max_minor).count() as Index;
            self.max_minor = max_minor;
        }
        debug_assert_eq!(self.count, hi - lo);
        debug_assert!(self.counterparties.as_ref().is_none_or(|c| c.len() <= self.count as usize));
    }

    /// The run's figures (`saturated` is the caller's: it depends on the key, not the run).
    fn stats(&self, distinct: bool) -> WindowStats {
        debug_assert!(self.count == 0 || self.max_count > 0, "a stale largest amount");
        let mut stats = WindowStats {
            count: u64::from(self.count),
            sum_minor: u64::try_from(self.sum_minor).unwrap_or(u64::MAX),
            max_minor: self.max_minor,
            distinct_counterparties: match (&self.counterparties, distinct) {
                (Some(counts), true) => counts.len() as u64,
                _ => 0,
            },
            ..WindowStats::default()
        };
        if self.count > 0 {
            let n = f64::from(self.count);
            stats.mean_minor = self.sum_minor as f64 / n;
            if self.count > 1 {
                let squares = self.squares_high as f64 * 2f64.powi(128) + self.squares_low as f64;
                stats.stddev_minor = (squares / n - stats.mean_minor.powi(2)).max(0.0).sqrt();
            }
        }
        stats
    }
}

/// The figures of window `query` at `now_ns` over a key's events (sorted by time, the newest
/// timestamp `newest_ns`), moving or creating the key's run for that window length.
pub(super) fn query(
    runs: &mut Vec<Run>,
    events: &VecDeque<Event>,
    newest_ns: u64,
    now_ns: u64,
    query: WindowQuery,
) -> WindowStats {
    let index = match runs.iter().position(|r| r.window_ns == query.window_ns) {
        Some(i) => i,
        None => {
            if runs.len() >= RUNS_PER_KEY_MAX {
                runs.remove(0);
            }
            runs.push(Run::new(query.window_ns));
            runs.len() - 1
        }
    };
    let run = &mut runs[index];
    // The window rule: events in `(now − window, now]`; a window longer than `now` has no start.
    // Online, no event is after `now`: then the window ends with the newest, read from nowhere.
    let end = events.len() as Index;
    let hi = if now_ns >= newest_ns { end } else { seek(events, run.hi, |e| e.timestamp_ns <= now_ns) };
    let start_ns = now_ns.checked_sub(query.window_ns);
    let (lo, known) = match start_ns {
        Some(start_ns) if run.starts_at_lo(start_ns, hi) => (run.lo, true),
        Some(start_ns) => (seek(events, run.lo, |e| e.timestamp_ns <= start_ns).min(hi), false),
        None => (0, false),
    };
    run.move_to(events, lo, hi, query.distinct);
    match start_ns {
        // The seek has just read the event at `lo`.
        Some(start_ns) if !known && lo < hi => {
            (run.first_start_ns, run.first_lo_ns) = (start_ns, events[lo as usize].timestamp_ns)
        }
        Some(start_ns) if known => run.first_start_ns = start_ns,
        _ => run.first_start_ns = NO_FIRST,
    }
    let mut stats = run.stats(query.distinct);
    if query.edges && lo < hi {
        // The seek or the run's move has just read these.
        stats.oldest_ns = Some(events[lo as usize].timestamp_ns);
        stats.newest_ns = Some(events[hi as usize - 1].timestamp_ns);
    }
    stats
}

/// The index of the first event not `inside` (the events are sorted, so `inside` holds for a
/// prefix), searched from `hint` outwards and by binary search past [`SEEK_STEPS_MAX`].
fn seek(events: &VecDeque<Event>, hint: Index, inside: impl Fn(&Event) -> bool) -> Index {
    let end = events.len() as Index;
    let at = |i: Index| &events[i as usize];
    let mut i = hint.min(end);
    let mut steps = 0;
    if i < end && inside(at(i)) {
        while i < end && inside(at(i)) {
            i += 1;
            steps += 1;
            if steps > SEEK_STEPS_MAX {
                return events.partition_point(&inside) as Index;
            }
        }
    } else {
        while i > 0 && !inside(at(i - 1)) {
            i -= 1;
            steps += 1;
            if steps > SEEK_STEPS_MAX {
                return events.partition_point(&inside) as Index;
            }
        }
    }
    i
}

/// Keeps the runs right when an event is inserted at index `at` (later events move up by one): a
/// run past it moves up, a run around it takes it in.
pub(super) fn inserted(runs: &mut [Run], at: usize, e: &Event) {
    let at = at as Index;
    for run in runs {
        if at <= run.lo {
            run.lo += 1;
            run.hi += 1;
            // The new event may be in the window, before `lo`: the next query must look.
            run.first_start_ns = NO_FIRST;
        } else if at < run.hi {
            run.add(e);
            run.hi += 1;
        }
    }
}

/// Keeps the runs right when the oldest event `e` is dropped (later events move down by one; a
/// largest amount that leaves is recomputed by the next query, which moves the run first).
pub(super) fn dropped_front(runs: &mut [Run], e: &Event) {
    for run in runs {
        if run.lo == 0 {
            if run.hi > 0 {
                run.remove(e);
                run.hi -= 1;
            }
            run.first_start_ns = NO_FIRST;
        } else {
            run.lo -= 1;
            run.hi -= 1;
        }
    }
}
