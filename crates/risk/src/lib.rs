//! # puhui-risk: real-time risk control
//!
//! [`features`]: the velocity feature store (sliding-window count, sum, max, distinct counterparties,
//! mean and spread for z-scores, first/last seen, new payee, new device), bounded in memory and
//! point-in-time correct. [`rules`]: TOML rulesets of CEL expressions with scores or direct outcomes
//! and reason codes, allow/deny lists, and the explained decision. Still to come (issue 4): models in
//! decisions, the inline hook in the ledger's write path, reviews, decision records, backtests.
//!
//! Architecture invariant: no I/O and no clock; time is an argument, so online decisions, tests and
//! backtests run the same code.
#![deny(missing_docs)]

pub mod features;
pub mod rules;
pub mod synthetic;

pub use features::{parse_window, FeatureLimits, FeatureStore, Namespace, WindowStats};
pub use rules::{Decision, Engine, FiredRule, Lists, Outcome, RiskEvent, Ruleset, RulesetError};
