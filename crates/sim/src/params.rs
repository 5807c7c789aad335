//! Simulation parameters, named presets, and their validation.

use crate::model::Typology;

/// Most simulated days.
pub const DAYS_MAX: u32 = 366;
/// Most individuals (wallets of people).
pub const INDIVIDUALS_MAX: u32 = 5_000_000;
/// Most merchants.
pub const MERCHANTS_MAX: u32 = 500_000;
/// Most agents.
pub const AGENTS_MAX: u32 = 100_000;
/// Most regions.
pub const REGIONS_MAX: u32 = 1_000;
/// Most injected cases per typology per day (a bound on scheduled scripted actions).
pub const CASES_PER_DAY_MAX: u64 = 10_000;

/// Monday 2026-02-23 00:00 UTC: the default start. The first week holds the 25th and the last day of
/// the month and the 1st, the usual paydays.
pub const START_UNIX_MS_DEFAULT: u64 = 1_771_804_800_000;

/// Expected injected cases per day per 10,000 individuals, per typology.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbuseRates {
    /// Account takeovers.
    pub account_takeover: f64,
    /// SIM swaps.
    pub sim_swap: f64,
    /// Card/credential-testing bursts.
    pub card_testing: f64,
    /// Mule rings (each 3–5 mules and a collector).
    pub mule_network: f64,
    /// Structuring cases (each 3–6 deposits over 1–3 days).
    pub structuring: f64,
    /// Colluding merchants (each with 6–12 fake buyers, for up to 3 days).
    pub merchant_collusion: f64,
}

impl AbuseRates {
    /// The rates of a realistic mid-size market (about 0.3 % of customer transfers abusive).
    pub const DEFAULT: AbuseRates = AbuseRates {
        account_takeover: 1.5,
        sim_swap: 0.8,
        card_testing: 1.0,
        mule_network: 0.25,
        structuring: 0.3,
        merchant_collusion: 0.15,
    };

    /// The rate of one typology.
    pub fn of(&self, t: Typology) -> f64 {
        match t {
            Typology::AccountTakeover => self.account_takeover,
            Typology::SimSwap => self.sim_swap,
            Typology::CardTesting => self.card_testing,
            Typology::MuleNetwork => self.mule_network,
            Typology::Structuring => self.structuring,
            Typology::MerchantCollusion => self.merchant_collusion,
        }
    }

    /// Every rate multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> AbuseRates {
        AbuseRates {
            account_takeover: self.account_takeover * factor,
            sim_swap: self.sim_swap * factor,
            card_testing: self.card_testing * factor,
            mule_network: self.mule_network * factor,
            structuring: self.structuring * factor,
            merchant_collusion: self.merchant_collusion * factor,
        }
    }
}

/// A named size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 3,000 people, 3 days, abuse 5× denser than the default and at least two cases of every
    /// typology: tests and a quick look.
    Small,
    /// 60,000 people, 7 days: what `puhui demo` runs (about a million transfers).
    City,
    /// 400,000 people, 30 days: files for backtests and benchmarks (tens of millions of transfers).
    Country,
}

impl Preset {
    /// Parses `small`, `city` or `country`.
    pub fn parse(name: &str) -> Option<Preset> {
        match name {
            "small" => Some(Preset::Small),
            "city" => Some(Preset::City),
            "country" => Some(Preset::Country),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Small => "small",
            Preset::City => "city",
            Preset::Country => "country",
        }
    }

    /// The preset's parameters with `seed`.
    pub fn params(self, seed: u64) -> Params {
        let base = Params {
            seed,
            days: 7,
            warmup_days: 1,
            start_unix_ms: START_UNIX_MS_DEFAULT,
            currency: "CNY",
            individuals: 60_000,
            merchants: 3_000,
            agents: 300,
            employers: 200,
            regions: 30,
            abuse: AbuseRates::DEFAULT,
            reporting_threshold_minor: 5_000_000,
            cases_min_per_typology: 0,
        };
        match self {
            Preset::Small => Params {
                days: 3,
                individuals: 3_000,
                merchants: 120,
                agents: 20,
                employers: 10,
                regions: 3,
                abuse: AbuseRates::DEFAULT.scaled(5.0),
                cases_min_per_typology: 2,
                ..base
            },
            Preset::City => base,
            Preset::Country => Params {
                days: 30,
                individuals: 400_000,
                merchants: 20_000,
                agents: 2_000,
                employers: 1_000,
                regions: 200,
                ..base
            },
        }
    }
}

/// Everything a run depends on. Same parameters, same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The seed.
    pub seed: u64,
    /// Simulated days (1–366).
    pub days: u32,
    /// The first days carry no injected abuse, so that risk features have a history when it starts;
    /// detection figures leave them out. Less than `days`.
    pub warmup_days: u32,
    /// Start of day 0, Unix milliseconds (must be a UTC midnight).
    pub start_unix_ms: u64,
    /// ISO 4217 code of every amount (exponent 2: amounts are in hundredths).
    pub currency: &'static str,
    /// Individuals (legitimate people; fraud-controlled wallets are added on top).
    pub individuals: u32,
    /// Micro-merchants.
    pub merchants: u32,
    /// Cash-in/cash-out agents.
    pub agents: u32,
    /// Employers paying salaries.
    pub employers: u32,
    /// Regions (districts).
    pub regions: u32,
    /// Injected abuse, cases per day per 10,000 individuals.
    pub abuse: AbuseRates,
    /// At least this many cases of every typology on the first day after the warm-up (a small run
    /// would otherwise often miss the rarest typologies entirely). 0 = rates only.
    pub cases_min_per_typology: u32,
    /// The cash reporting threshold structuring stays under, in minor units (PBOC: ¥50,000 cash).
    pub reporting_threshold_minor: u64,
}

/// A parameter out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError {
    /// The parameter.
    pub param: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

impl std::error::Error for ParamsError {}

impl Params {
    /// Checks every bound; the first problem is returned.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let range = |param: &'static str, value: u64, lo: u64, hi: u64| {
            if value < lo || value > hi {
                Err(ParamsError { param, message: format!("{value} is outside {lo}–{hi}") })
            } else {
                Ok(())
            }
        };
        range("days", self.days as u64, 1, DAYS_MAX as u64)?;
        range("warmup_days", self.warmup_days as u64, 0, self.days as u64 - 1)?;
        range("individuals", self.individuals as u64, 10, INDIVIDUALS_MAX as u64)?;
        range("merchants", self.merchants as u64, 8, MERCHANTS_MAX as u64)?;
        range("agents", self.agents as u64, 2, AGENTS_MAX as u64)?;
        range("employers", self.employers as u64, 1, 100_000)?;
        range("regions", self.regions as u64, 1, REGIONS_MAX.min(self.merchants) as u64)?;
        range("cases_min_per_typology", self.cases_min_per_typology as u64, 0, 100)?;
        range("reporting_threshold_minor", self.reporting_threshold_minor, 10_000, 1_000_000_000)?;
        if !self.start_unix_ms.is_multiple_of(86_400_000) {
            return Err(ParamsError { param: "start_unix_ms", message: "must be a UTC midnight".into() });
        }
        if self.start_unix_ms > 32_503_680_000_000 {
            return Err(ParamsError {
                param: "start_unix_ms",
                message: "must be before the year 3000".into(),
            });
        }
        for t in Typology::ALL {
            let rate = self.abuse.of(t);
            if !(0.0..=1_000.0).contains(&rate) {
                return Err(ParamsError {
                    param: "abuse",
                    message: format!("{} rate {rate} is outside 0–1000 cases per day per 10,000", t.as_str()),
                });
            }
        }
        Ok(())
    }

    /// Expected cases of `t` per day.
    pub fn expected_cases_per_day(&self, t: Typology) -> f64 {
        self.abuse.of(t) * self.individuals as f64 / 10_000.0
    }
}
