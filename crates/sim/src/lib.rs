//! # puhui-sim: a seeded, deterministic simulator of an inclusive-finance market
//!
//! An agent-based model in the spirit of PaySim's mobile-money simulator. The population:
//!
//! - **individuals** with KYC tiers (1 light, 2, 3 full), a region, a phone (or a feature phone on
//!   USSD, or an agent's phone over the counter), contacts, and an income: a salary (monthly on the
//!   1st/10th/15th/25th/last day, or weekly) or informal cash deposited at agents a few times a week,
//!   sometimes an inbound remittance; they pay merchants by QR, send P2P, pay bills, cash out;
//! - **micro-merchants** in eight categories (MCCs) with their own hour-of-day and weekday
//!   seasonality, a Pareto (α = 1.1) popularity, so revenue is heavy-tailed; small ones fail
//!   (close for good) at 0.4 % a day; each settles to its bank at night, paying a 0.38 % discount fee;
//! - **agents** doing cash-in and cash-out (1 % fee, ¥1–¥20), buying e-float when short and
//!   sweeping the excess at night; **billers**, **employers**, remittance **corridors**, a
//!   cashback **promotion** (a red packet on the first QR payment of ¥20 or more each day).
//!
//! Injected, labelled abuse (ground truth on every transfer, see [`Typology`]): account takeover,
//! SIM swap, card testing, mule networks (fan-in then fan-out), structuring under the reporting
//! threshold, merchant collusion. Rates are cases per day per 10,000 individuals
//! ([`AbuseRates`]); the first `warmup_days` carry none.
//!
//! Documented ranges (checked by `tests/statistics.rs` on the `small` and a mid-size run):
//! the top 10 % of merchants take 35–85 % of merchant revenue; scored customer transfers per
//! individual per day 1–4; injected cases per typology within 4 σ (Poisson) of the configured rate;
//! abuse 0.05–3 % of scored transfers at default rates.
//!
//! Architecture invariant: **determinism**. Same [`Params`] → the same transfers, byte for byte, on
//! any machine and any build: one ChaCha8 stream per concern ([`rng`]), samplers built from IEEE
//! `+ − × ÷ √` only, integer money, no hash-map iteration (Vec and BTreeMap only), no clock, no
//! threads. `tests/determinism.rs` pins a golden hash of a small run.
//!
//! Architecture invariant: pure. No file or network I/O: [`Simulation`] is an iterator of
//! [`Transfer`]s; [`write`] formats them onto any `io::Write`. Every transfer it emits is funded in
//! its own books (no wallet goes below zero), so a ledger without risk control accepts all of them.
#![deny(missing_docs)]

pub mod calendar;
mod engine;
pub mod eval;
pub mod model;
pub mod params;
mod population;
pub mod report;
pub mod rng;
pub mod write;

pub use engine::{device_id, SimStats, Simulation};
pub use eval::{LabelCounts, Scoreboard, Verdict};
pub use model::{Account, AccountKind, RiskContext, Transfer, TransferKind, Typology};
pub use params::{AbuseRates, Params, ParamsError, Preset};
pub use population::Population;
