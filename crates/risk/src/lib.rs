//! # puhui-risk: real-time risk control
//!
//! [`features`]: the velocity feature store (sliding-window count, sum, max, distinct counterparties,
//! mean and spread for z-scores, first/last seen, new payee, new device), bounded in memory and
//! point-in-time correct. [`rules`]: TOML rulesets of CEL expressions with scores or direct outcomes
//! and reason codes, allow/deny lists, GBDT model scores, and the explained decision with a time
//! budget. [`control`]: the controller (published rulesets, active + shadow, lists, features) whose
//! every change is a journaled [`records`] entry, replayed at start-up; [`backtest`]: replays
//! those records through a candidate ruleset, or reproduces the online decisions exactly.
//! [`shared`]: the seam for velocity features shared by several nodes (Redis, `puhui-risk-redis`):
//! a backend fills a per-decision [`FeatureStore`], so the arithmetic stays in [`features`].
//!
//! Architecture invariant: no I/O and no clock; time is an argument, so online decisions, tests and
//! backtests run the same code.
#![deny(missing_docs)]

pub mod backtest;
pub mod bytes;
mod compile;
pub mod control;
pub mod features;
pub mod records;
pub mod rules;
pub mod shared;
pub mod synthetic;

pub use control::{list_page, ControlError, Controller};
pub use features::{parse_window, FeatureLimits, FeatureStore, Namespace, WindowQuery, WindowStats};
pub use records::{DecisionRecord, DecisionSource, Label, RiskRecord};
pub use rules::{
    attribute_key, Budget, Decision, Engine, Evaluation, FiredRule, ListSet, Lists, Outcome, RiskEvent,
    Ruleset, RulesetError,
};
pub use shared::{FeatureQuery, Observation, SharedError, SharedErrorKind, SharedFeatures, WindowRead};
