//! # puhui-risk: real-time risk control
//!
//! Today: [`features`], the velocity feature store (sliding-window count, sum, max, distinct
//! counterparties, mean and spread for z-scores, first/last seen, new payee, new device), bounded in
//! memory and point-in-time correct. Rules (CEL), lists, models and decisions build on it (issue 4).
//!
//! Architecture invariant: no I/O and no clock; time is an argument, so online decisions, tests and
//! backtests run the same code.
#![deny(missing_docs)]

pub mod features;

pub use features::{parse_window, FeatureLimits, FeatureStore, Namespace, WindowStats};
