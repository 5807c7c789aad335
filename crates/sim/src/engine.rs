//! The simulation loop: a time-ordered agenda of actions, executed one at a time against the
//! simulator's own balances, each emitting zero or more transfers.
//!
//! Every day is planned when the clock reaches it: each person's spending moments (Poisson, by hour
//! of day and weekday), incomes that fall due, agents' and merchants' end-of-day routines, device
//! changes, merchant failures, and the day's injected abuse cases. Actions then run in time order
//! (ties in planning order); what an action does is decided when it runs, from the balances at
//! that moment, so nothing is spent that is not there: every emitted transfer is funded in the
//! simulator's books (`tests/labels.rs` replays the stream to check it).

use std::collections::{BTreeMap, VecDeque};

use crate::calendar::{date_of_day, Date, DAY_MS, HOUR_MS};
use crate::model::{RiskContext, Transfer, TransferKind, Typology};
use crate::params::{Params, ParamsError, CASES_PER_DAY_MAX};
use crate::population::{
    build, Income, Payday, Population, World, AGENT_HOURS, BILLERS, CATEGORIES, DIGITAL, FRAUD_HOURS, MINOR,
    PERSON_HOURS,
};
use crate::rng::{to_minor, Rng};

/// Daily outflow a tier may spend (the wallet app's limit; the starter ruleset declines tier 1 above
/// ¥5,000 a rolling day). People keep to half of it per calendar day, so a rolling day never passes it.
const TIER_DAILY_CAP_MINOR: [u64; 3] = [500_000, 5_000_000, u64::MAX];
/// Cashback on the first QR payment of at least this much per person per day.
const CASHBACK_MIN_PAYMENT_MINOR: u64 = 2_000;
/// Merchant discount rate on QR sales, in basis points (0.38 %).
const MDR_BPS: u64 = 38;
/// An agent sweeps e-float above this back to the bank at night…
const AGENT_FLOAT_HIGH_MINOR: u64 = 10_000_000;
/// …down to this.
const AGENT_FLOAT_KEEP_MINOR: u64 = 4_000_000;
/// An agent short of e-float buys at least this much.
const AGENT_TOPUP_MIN_MINOR: u64 = 2_000_000;
/// Daily chance that a person replaces their phone (a legitimate new device).
const NEW_PHONE_PER_DAY: f64 = 0.0015;
/// Daily chance that a small (below-median) merchant closes for good; large ones close a quarter as often.
const MERCHANT_FAILURE_PER_DAY: f64 = 0.004;
/// Tries to find a victim with enough balance before a case is dropped.
const VICTIM_TRIES_MAX: u32 = 64;

/// What happened beyond the transfers: cases injected, cases that could not be, and so on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Cases planned per typology (index: [`Typology::index`]).
    pub cases_planned: [u32; 6],
    /// Cases dropped at planning (no victim with enough balance, or the fraud pool ran out).
    pub cases_dropped: [u32; 6],
    /// Merchants that closed.
    pub merchants_closed: u32,
    /// Spending moments skipped because the person could not afford it (or hit their daily limit).
    pub spends_unaffordable: u64,
    /// Legitimate new phones.
    pub new_phones: u32,
    /// Transfers emitted.
    pub transfers: u64,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Spend(u32),
    CashInIncome(u32),
    Salary(u32),
    Remittance(u32),
    FamilySupport(u32, u64),
    SettleMerchants,
    SweepAgents,
    AtoDrain { case: u32, part: u8 },
    FraudCashOut { case: u32, person: u32 },
    SimSwapOut { case: u32, part: u8 },
    CardTest { case: u32, remaining: u32 },
    ScamPayment { case: u32, victim: u32, mule: u32 },
    MuleConsolidate { case: u32, mule: u32 },
    MuleFanOut { case: u32, remaining: u32 },
    StructDeposit { case: u32 },
    StructOut { case: u32 },
    CollusionFund { case: u32 },
    FakeSale { case: u32, buyer: u32 },
    CollusionPayback { case: u32 },
}

/// One injected case: who and what it uses.
struct Case {
    typology: Typology,
    /// The fraudster's devices.
    devices: [u32; 2],
    ip: String,
    country: &'static str,
    /// Victim (ATO, SIM swap, card testing), structurer, or colluding merchant's index.
    subject: u32,
    /// Fraud-controlled persons (payee, mules + collector last, fake buyers).
    accounts: Vec<u32>,
    /// Merchant indexes (card testing).
    merchants: Vec<u32>,
    /// Running total (fake sales today).
    running_minor: u64,
}

/// A seeded, deterministic simulation: an iterator of [`Transfer`]s in time order.
pub struct Simulation {
    params: Params,
    world: World,
    balance: Vec<i64>,
    agenda: BTreeMap<(u64, u64), Action>,
    planned: u64,
    out: VecDeque<Transfer>,
    seq: u64,
    next_day: u32,
    end_ms: u64,
    now_ms: u64,
    cases: Vec<Case>,
    stats: SimStats,
    plan_rng: Rng,
    run_rng: Rng,
    abuse_rng: Rng,
    /// Merchant choice: per (region × category) and per category, open merchants and running
    /// popularity totals.
    local_tables: Vec<(Vec<u32>, Vec<u64>)>,
    global_tables: Vec<(Vec<u32>, Vec<u64>)>,
    category_weights: [[Vec<u32>; 24]; 2],
    opened: bool,
}

fn round_down(value: u64, step: u64) -> u64 {
    value / step * step
}

impl Simulation {
    /// A simulation of `params`; nothing runs until it is iterated.
    pub fn new(params: Params) -> Result<Simulation, ParamsError> {
        params.validate()?;
        let world = build(&params);
        let balance = vec![0i64; world.population.accounts.len()];
        let category_weights = std::array::from_fn(|weekend| {
            std::array::from_fn(|hour| {
                CATEGORIES
                    .iter()
                    .map(|c| {
                        let day = if weekend == 1 { c.weekend_tenths } else { 10 };
                        c.share * c.hours[hour] * day
                    })
                    .collect()
            })
        });
        let mut sim = Simulation {
            end_ms: params.start_unix_ms + params.days as u64 * DAY_MS,
            now_ms: params.start_unix_ms,
            plan_rng: Rng::new(params.seed, 1),
            run_rng: Rng::new(params.seed, 2),
            abuse_rng: Rng::new(params.seed, 3),
            params,
            world,
            balance,
            agenda: BTreeMap::new(),
            planned: 0,
            out: VecDeque::new(),
            seq: 0,
            next_day: 0,
            cases: Vec::new(),
            stats: SimStats::default(),
            local_tables: Vec::new(),
            global_tables: Vec::new(),
            category_weights,
            opened: false,
        };
        sim.rebuild_tables();
        Ok(sim)
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The accounts (create them before posting the transfers).
    pub fn population(&self) -> &Population {
        &self.world.population
    }

    /// What happened so far beyond the transfers.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The simulated clock: the time of the last action run, Unix milliseconds.
    pub fn clock_ms(&self) -> u64 {
        self.now_ms
    }

    /// End of the simulated period, Unix milliseconds (exclusive).
    pub fn end_ms(&self) -> u64 {
        self.end_ms
    }

    /// The simulator's balance of an account after the transfers emitted so far (minor units).
    pub fn balance_minor(&self, account: u32) -> i64 {
        self.balance[account as usize]
    }

    fn rebuild_tables(&mut self) {
        let regions = self.params.regions as usize;
        let cats = CATEGORIES.len();
        let mut local = vec![(Vec::new(), Vec::new()); regions * cats];
        let mut global = vec![(Vec::new(), Vec::new()); cats];
        for (i, m) in self.world.merchants.iter().enumerate() {
            if !m.open {
                continue;
            }
            for (ids, totals) in [&mut local[m.region as usize * cats + m.category], &mut global[m.category]]
            {
                let total: u64 = totals.last().copied().unwrap_or(0);
                ids.push(i as u32);
                totals.push(total + m.popularity.max(1));
            }
        }
        self.local_tables = local;
        self.global_tables = global;
    }

    fn schedule(&mut self, at_ms: u64, action: Action) {
        // Never in the past (ties keep planning order); beyond the end it is dropped.
        let at_ms = at_ms.max(self.now_ms);
        if at_ms < self.end_ms {
            self.planned += 1;
            self.agenda.insert((at_ms, self.planned), action);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        kind: TransferKind,
        debit: u32,
        credit: u32,
        amount_minor: u64,
        context: Option<RiskContext>,
        label: Option<Typology>,
        case_id: Option<u32>,
        parent_seq: Option<u64>,
    ) -> u64 {
        debug_assert!(amount_minor > 0 && debit != credit);
        let accounts = &self.world.population.accounts;
        debug_assert!(
            !accounts[debit as usize].wallet || self.balance[debit as usize] >= amount_minor as i64,
            "the simulator never overdraws a wallet"
        );
        self.balance[debit as usize] -= amount_minor as i64;
        self.balance[credit as usize] += amount_minor as i64;
        let seq = self.seq;
        self.seq += 1;
        self.stats.transfers += 1;
        self.out.push_back(Transfer {
            seq,
            timestamp_ms: self.now_ms,
            kind,
            debit,
            credit,
            amount_minor,
            context,
            label,
            case_id,
            parent_seq,
        });
        seq
    }

    fn available(&self, account: u32) -> u64 {
        self.balance[account as usize].max(0) as u64
    }

    fn day_index(&self) -> u32 {
        ((self.now_ms - self.params.start_unix_ms) / DAY_MS) as u32
    }

    fn person_ip(&self, person: u32) -> String {
        let p = &self.world.persons[person as usize];
        // Carrier-grade NAT: each region shares a pool of addresses; a phone gets another each day.
        let pool = (self.world.legit_by_region[p.region as usize].len() as u64 / 20).clamp(8, 254);
        let slot = (person as u64 * 31 + self.day_index() as u64 * 7) % pool;
        format!("100.{}.{}.{}", 64 + p.region / 256, p.region % 256, slot + 1)
    }

    fn person_context(&self, person: u32, kind: TransferKind, mcc: Option<&'static str>) -> RiskContext {
        let p = &self.world.persons[person as usize];
        let assisted = p.agent_assisted && matches!(kind, TransferKind::P2p | TransferKind::CashOut);
        let (device, ip, channel) = if assisted {
            let a = &self.world.agents[p.home_agent as usize];
            (a.device, a.ip.clone(), "agent")
        } else {
            (p.device, self.person_ip(person), p.channel)
        };
        RiskContext {
            device_id: device_id(device),
            ip,
            channel,
            country: "CN",
            mcc,
            kyc_tier: p.tier,
            txn_type: kind.as_str(),
        }
    }

    fn agent_context(&self, agent: u32) -> RiskContext {
        let a = &self.world.agents[agent as usize];
        RiskContext {
            device_id: device_id(a.device),
            ip: a.ip.clone(),
            channel: "agent",
            country: "CN",
            mcc: None,
            kyc_tier: 3,
            txn_type: TransferKind::CashIn.as_str(),
        }
    }

    fn fraud_context(
        &self,
        case: u32,
        device: usize,
        payer_tier: u8,
        kind: TransferKind,
        channel: &'static str,
        mcc: Option<&'static str>,
    ) -> RiskContext {
        let c = &self.cases[case as usize];
        RiskContext {
            device_id: device_id(c.devices[device]),
            ip: c.ip.clone(),
            channel,
            country: c.country,
            mcc,
            kyc_tier: payer_tier,
            txn_type: kind.as_str(),
        }
    }

    fn new_device(&mut self) -> u32 {
        self.world.devices_issued += 1;
        self.world.devices_issued
    }

    // ---------------------------------------------------------------- planning

    fn open_balances(&mut self) {
        let start = self.params.start_unix_ms;
        self.now_ms = start;
        for account in 0..self.world.opening_minor.len() {
            let amount = self.world.opening_minor[account];
            if amount > 0 {
                let settlement = self.world.settlement;
                self.emit(TransferKind::Opening, settlement, account as u32, amount, None, None, None, None);
            }
        }
    }

    fn plan_day(&mut self, day: u32) {
        let day_start = self.params.start_unix_ms + day as u64 * DAY_MS;
        let date = date_of_day(day_start / DAY_MS);
        let weekend = date.weekday >= 5;
        let rng = &mut self.plan_rng;

        for &p in &self.world.legit {
            let person = &mut self.world.persons[p as usize];
            person.spent_today_minor = 0;
            person.cashback_today = false;
            if rng.chance(NEW_PHONE_PER_DAY) {
                self.world.devices_issued += 1;
                person.device = self.world.devices_issued;
                self.stats.new_phones += 1;
            }
        }
        for p in &mut self.world.persons {
            p.cashback_today = false; // fake buyers farm it too
        }
        let mut closed_any = false;
        for m in &mut self.world.merchants {
            let hazard =
                if m.popularity < 200 { MERCHANT_FAILURE_PER_DAY } else { MERCHANT_FAILURE_PER_DAY / 4.0 };
            if m.open && rng.chance(hazard) {
                m.open = false;
                closed_any = true;
                self.stats.merchants_closed += 1;
            }
        }
        if closed_any {
            self.rebuild_tables();
        }

        let rng = &mut self.plan_rng;
        let mut plans: Vec<(u64, Action)> = Vec::new();
        let moment = |rng: &mut Rng, hours: &[u32; 24]| {
            day_start + rng.pick_weighted(hours) as u64 * HOUR_MS + rng.below(HOUR_MS)
        };
        for &p in &self.world.legit {
            let person = &self.world.persons[p as usize];
            let paid_recently = person.last_income_day.is_some_and(|d| day <= d + 2);
            let rate = person.spend_per_day
                * if weekend { 1.15 } else { 1.0 }
                * if paid_recently { 1.3 } else { 1.0 };
            for _ in 0..rng.poisson(rate) {
                plans.push((moment(rng, &PERSON_HOURS), Action::Spend(p)));
            }
            match person.income {
                Income::Salaried { payday, hour, .. } => {
                    if is_payday(payday, &date) {
                        let at = day_start + hour as u64 * HOUR_MS + rng.below(HOUR_MS);
                        plans.push((at, Action::Salary(p)));
                    }
                }
                Income::Informal { cash_ins_per_week, .. } => {
                    for _ in 0..rng.poisson(cash_ins_per_week / 7.0) {
                        plans.push((moment(rng, &AGENT_HOURS), Action::CashInIncome(p)));
                    }
                }
            }
            if let Some((day_of_month, ..)) = person.remittance {
                if date.day == (day_of_month as u32).min(date.month_days) {
                    plans.push((
                        day_start + rng.between(9, 20) * HOUR_MS + rng.below(HOUR_MS),
                        Action::Remittance(p),
                    ));
                }
            }
        }
        plans.push((day_start + 21 * HOUR_MS, Action::SweepAgents));
        plans.push((day_start + 23 * HOUR_MS + 30 * 60_000, Action::SettleMerchants));
        for (at, action) in plans {
            self.schedule(at, action);
        }
        if day >= self.params.warmup_days {
            self.plan_abuse(day, day_start);
        }
    }

    fn plan_abuse(&mut self, day: u32, day_start: u64) {
        for typology in Typology::ALL {
            let expected = self.params.expected_cases_per_day(typology);
            let mut n = self.abuse_rng.poisson(expected).min(CASES_PER_DAY_MAX);
            if day == self.params.warmup_days {
                n = n.max(self.params.cases_min_per_typology as u64);
            }
            for _ in 0..n {
                self.stats.cases_planned[typology.index()] += 1;
                let planned = match typology {
                    Typology::AccountTakeover => self.plan_ato(day_start),
                    Typology::SimSwap => self.plan_sim_swap(day_start),
                    Typology::CardTesting => self.plan_card_testing(day_start),
                    Typology::MuleNetwork => self.plan_mule_ring(day_start),
                    Typology::Structuring => self.plan_structuring(day_start),
                    Typology::MerchantCollusion => self.plan_collusion(day_start),
                };
                if planned.is_none() {
                    self.stats.cases_dropped[typology.index()] += 1;
                }
            }
        }
    }

    fn new_case(&mut self, typology: Typology, subject: u32, accounts: Vec<u32>, domestic: bool) -> u32 {
        let rng = &mut self.abuse_rng;
        let ip = format!("185.{}.{}.{}", rng.between(16, 250), rng.below(256), rng.between(1, 254));
        let country = if domestic || rng.chance(0.75) {
            "CN"
        } else {
            ["KH", "MM", "PH", "VN", "MY"][rng.below(5) as usize]
        };
        let devices = [self.new_device(), self.new_device()];
        self.cases.push(Case {
            typology,
            devices,
            ip,
            country,
            subject,
            accounts,
            merchants: Vec::new(),
            running_minor: 0,
        });
        (self.cases.len() - 1) as u32
    }

    fn find_victim(&mut self, min_balance_minor: u64) -> Option<u32> {
        for _ in 0..VICTIM_TRIES_MAX {
            let legit = &self.world.legit;
            let p = legit[self.abuse_rng.below(legit.len() as u64) as usize];
            if self.available(self.world.persons[p as usize].account) >= min_balance_minor {
                return Some(p);
            }
        }
        None
    }

    /// A fresh fraud-controlled wallet, of KYC tier `tier` if one is left (else any).
    fn take_pool(&mut self, tier: Option<u8>) -> Option<u32> {
        if self.world.fraud_pool.is_empty() {
            return None;
        }
        let persons = &self.world.persons;
        let at = tier
            .and_then(|t| self.world.fraud_pool.iter().position(|&p| persons[p as usize].tier == t))
            .unwrap_or(0);
        // `remove`, not `swap_remove`: the pool's shuffled order stays the order cases draw from.
        Some(self.world.fraud_pool.remove(at))
    }

    fn plan_ato(&mut self, day_start: u64) -> Option<()> {
        let victim = self.find_victim(80_000)?;
        let payee = self.take_pool(None)?;
        let case = self.new_case(Typology::AccountTakeover, victim, vec![payee], false);
        let at = day_start
            + self.abuse_rng.pick_weighted(&FRAUD_HOURS) as u64 * HOUR_MS
            + self.abuse_rng.below(HOUR_MS);
        self.schedule(at, Action::AtoDrain { case, part: 0 });
        Some(())
    }

    fn plan_sim_swap(&mut self, day_start: u64) -> Option<()> {
        let victim = self.find_victim(200_000)?;
        let payee = self.take_pool(None)?;
        let case = self.new_case(Typology::SimSwap, victim, vec![payee], true);
        let at = day_start
            + self.abuse_rng.pick_weighted(&FRAUD_HOURS) as u64 * HOUR_MS
            + self.abuse_rng.below(HOUR_MS);
        self.schedule(at, Action::SimSwapOut { case, part: 0 });
        Some(())
    }

    fn plan_card_testing(&mut self, day_start: u64) -> Option<()> {
        let victim = self.find_victim(3_000)?;
        let (ids, totals) = &self.global_tables[DIGITAL];
        let mut merchants = Vec::new();
        for _ in 0..self.abuse_rng.between(1, 3) {
            merchants.push(ids[self.abuse_rng.pick_cumulative(totals)?]);
        }
        let case = self.new_case(Typology::CardTesting, victim, Vec::new(), false);
        self.cases[case as usize].merchants = merchants;
        let at = day_start + self.abuse_rng.below(DAY_MS);
        let n = self.abuse_rng.between(10, 30) as u32;
        self.schedule(at, Action::CardTest { case, remaining: n });
        Some(())
    }

    fn plan_mule_ring(&mut self, day_start: u64) -> Option<()> {
        let mules_n = self.abuse_rng.between(3, 5);
        let mut accounts = Vec::new();
        for _ in 0..=mules_n {
            match self.take_pool(Some(2)) {
                Some(a) => accounts.push(a),
                None => {
                    self.world.fraud_pool.extend(accounts);
                    return None;
                }
            }
        }
        let case = self.new_case(Typology::MuleNetwork, 0, accounts.clone(), true);
        let start = day_start + self.abuse_rng.between(7, 14) * HOUR_MS;
        let span = self.abuse_rng.between(2, 10) * HOUR_MS;
        let mut consolidated_by = start;
        for &mule in &accounts[..mules_n as usize] {
            let victims = self.abuse_rng.between(10, 16);
            let mut seen = Vec::new();
            for _ in 0..victims {
                let Some(v) = self.find_victim(30_000) else { continue };
                if seen.contains(&v) {
                    continue;
                }
                seen.push(v);
                let at = start + self.abuse_rng.below(span);
                self.schedule(at, Action::ScamPayment { case, victim: v, mule });
            }
            let at = start + span + self.abuse_rng.between(1, 4) * HOUR_MS + self.abuse_rng.below(HOUR_MS);
            consolidated_by = consolidated_by.max(at);
            self.schedule(at, Action::MuleConsolidate { case, mule });
        }
        let at = consolidated_by + self.abuse_rng.between(1, 3) * HOUR_MS;
        let remaining = self.abuse_rng.between(3, 5) as u32;
        self.schedule(at, Action::MuleFanOut { case, remaining });
        Some(())
    }

    fn plan_structuring(&mut self, day_start: u64) -> Option<()> {
        let structurer = self.take_pool(Some(3))?;
        let Some(payee) = self.take_pool(None) else {
            self.world.fraud_pool.push(structurer);
            return None;
        };
        let case = self.new_case(Typology::Structuring, structurer, vec![structurer, payee], true);
        let deposits = self.abuse_rng.between(3, 6);
        // Over 1–3 days, within the simulated period.
        let days_left = (self.end_ms - day_start) / DAY_MS;
        let days = self.abuse_rng.between(1, 3).min(days_left.max(1));
        let mut last = day_start;
        for j in 0..deposits {
            let day = j * days / deposits;
            let at = day_start
                + day * DAY_MS
                + self.abuse_rng.between(9, 17) * HOUR_MS
                + self.abuse_rng.below(HOUR_MS);
            last = last.max(at);
            self.schedule(at, Action::StructDeposit { case });
        }
        let at = last + self.abuse_rng.between(2, 24) * HOUR_MS;
        self.schedule(at, Action::StructOut { case });
        Some(())
    }

    fn plan_collusion(&mut self, day_start: u64) -> Option<()> {
        // A struggling (below-median popularity) open merchant, not an online one.
        let mut merchant = None;
        for _ in 0..VICTIM_TRIES_MAX {
            let i = self.abuse_rng.below(self.world.merchants.len() as u64) as u32;
            let m = &self.world.merchants[i as usize];
            if m.open && m.category != DIGITAL && m.popularity < 300 {
                merchant = Some(i);
                break;
            }
        }
        let merchant = merchant?;
        let fakes = self.abuse_rng.between(6, 12);
        let mut accounts = Vec::new();
        for _ in 0..fakes {
            match self.take_pool(Some(1)) {
                Some(a) => accounts.push(a),
                None => break,
            }
        }
        if accounts.len() < 5 {
            self.world.fraud_pool.extend(accounts);
            return None;
        }
        let case = self.new_case(Typology::MerchantCollusion, merchant, accounts.clone(), true);
        let start = day_start + self.abuse_rng.between(8, 10) * HOUR_MS;
        self.schedule(start, Action::CollusionFund { case });
        let days = self.abuse_rng.between(2, 3);
        for d in 0..days {
            let day = day_start + d * DAY_MS;
            for &buyer in &accounts {
                for _ in 0..self.abuse_rng.between(2, 4) {
                    let at = day + self.abuse_rng.between(11, 21) * HOUR_MS + self.abuse_rng.below(HOUR_MS);
                    self.schedule(at, Action::FakeSale { case, buyer });
                }
            }
            let at = day + 22 * HOUR_MS + self.abuse_rng.below(HOUR_MS);
            self.schedule(at, Action::CollusionPayback { case });
        }
        Some(())
    }

    // ---------------------------------------------------------------- running

    fn run(&mut self, action: Action) {
        match action {
            Action::Spend(p) => self.spend(p),
            Action::CashInIncome(p) => {
                let Income::Informal { median_major, .. } = self.world.persons[p as usize].income else {
                    return;
                };
                let amount = to_minor(self.run_rng.lognormal(median_major, 0.6), MINOR, 1_000).max(5_000);
                let agent = self.pick_agent(p);
                self.cash_in(agent, p, amount, None, None);
            }
            Action::Salary(p) => {
                let person = &self.world.persons[p as usize];
                let Income::Salaried { employer, amount_minor, .. } = person.income else { return };
                let account = person.account;
                self.emit(TransferKind::Salary, employer, account, amount_minor, None, None, None, None);
                let day = self.day_index();
                self.world.persons[p as usize].last_income_day = Some(day);
                if self.run_rng.chance(0.35) {
                    let at = self.now_ms + self.run_rng.between(1, 6) * HOUR_MS;
                    self.schedule(at, Action::FamilySupport(p, amount_minor));
                }
            }
            Action::Remittance(p) => {
                let person = &self.world.persons[p as usize];
                let Some((_, amount, corridor)) = person.remittance else { return };
                let account = person.account;
                self.emit(
                    TransferKind::Remittance,
                    self.world.corridors[corridor as usize],
                    account,
                    amount,
                    None,
                    None,
                    None,
                    None,
                );
                let day = self.day_index();
                self.world.persons[p as usize].last_income_day = Some(day);
            }
            Action::FamilySupport(p, salary) => {
                let share = self.run_rng.between(10, 30);
                let amount = round_down(salary * share / 100, 5_000);
                if let Some(contact) = self.pick_contact(p) {
                    self.p2p(p, contact, amount);
                }
            }
            Action::SettleMerchants => self.settle_merchants(),
            Action::SweepAgents => self.sweep_agents(),
            Action::AtoDrain { case, part } => self.ato_drain(case, part),
            Action::FraudCashOut { case, person } => self.fraud_cash_out(case, person),
            Action::SimSwapOut { case, part } => self.sim_swap_out(case, part),
            Action::CardTest { case, remaining } => self.card_test(case, remaining),
            Action::ScamPayment { case, victim, mule } => self.scam_payment(case, victim, mule),
            Action::MuleConsolidate { case, mule } => self.mule_consolidate(case, mule),
            Action::MuleFanOut { case, remaining } => self.mule_fan_out(case, remaining),
            Action::StructDeposit { case } => self.struct_deposit(case),
            Action::StructOut { case } => self.struct_out(case),
            Action::CollusionFund { case } => self.collusion_fund(case),
            Action::FakeSale { case, buyer } => self.fake_sale(case, buyer),
            Action::CollusionPayback { case } => self.collusion_payback(case),
        }
    }

    fn pick_agent(&mut self, person: u32) -> u32 {
        let p = &self.world.persons[person as usize];
        let local = &self.world.agents_by_region[p.region as usize];
        if self.run_rng.chance(0.8) || local.is_empty() {
            p.home_agent
        } else {
            local[self.run_rng.below(local.len() as u64) as usize]
        }
    }

    fn pick_contact(&mut self, person: u32) -> Option<u32> {
        let contacts = &self.world.persons[person as usize].contacts;
        if contacts.is_empty() {
            return None;
        }
        Some(contacts[self.run_rng.below(contacts.len() as u64) as usize])
    }

    /// Room left under the person's own daily limit.
    fn budget(&self, person: u32) -> u64 {
        let p = &self.world.persons[person as usize];
        let cap = TIER_DAILY_CAP_MINOR[p.tier as usize - 1];
        (cap / 2).saturating_sub(p.spent_today_minor).min(self.available(p.account))
    }

    fn spend(&mut self, p: u32) {
        let paid_recently =
            self.world.persons[p as usize].last_income_day.is_some_and(|d| self.day_index() <= d + 1);
        let kind = self.run_rng.pick_weighted(&[62, 14, 9, if paid_recently { 22 } else { 11 }]);
        match kind {
            0 => self.merchant_payment(p),
            1 => {
                let scale = self.world.persons[p as usize].spend_scale;
                let raw = to_minor(self.run_rng.lognormal(80.0 * scale, 0.9), MINOR, 100);
                let amount = if raw >= 5_000 { round_down(raw, 1_000) } else { raw.max(100) };
                if let Some(c) = self.pick_contact(p) {
                    if self.try_afford(p, amount) {
                        self.p2p(p, c, amount);
                    }
                }
            }
            2 => self.bill_payment(p),
            _ => self.cash_out(p),
        }
    }

    /// Whether `p` can pay `amount` now; an informal earner sometimes tops up at an agent first.
    fn try_afford(&mut self, p: u32, amount: u64) -> bool {
        if self.budget(p) >= amount {
            return true;
        }
        let person = &self.world.persons[p as usize];
        let cap_room =
            (TIER_DAILY_CAP_MINOR[person.tier as usize - 1] / 2).saturating_sub(person.spent_today_minor);
        if matches!(person.income, Income::Informal { .. }) && cap_room >= amount && self.run_rng.chance(0.3)
        {
            let need = amount.saturating_sub(self.available(person.account));
            let topup = round_down(need * 3 / 2, 5_000) + 5_000;
            let agent = self.pick_agent(p);
            self.cash_in(agent, p, topup, None, None);
            return self.budget(p) >= amount;
        }
        self.stats.spends_unaffordable += 1;
        false
    }

    fn merchant_payment(&mut self, p: u32) {
        let hour = ((self.now_ms % DAY_MS) / HOUR_MS) as usize;
        let weekend = date_of_day(self.now_ms / DAY_MS).weekday >= 5;
        let weights = &self.category_weights[weekend as usize][hour];
        let category = if weights.iter().all(|&w| w == 0) { 0 } else { self.run_rng.pick_weighted(weights) };
        let region = self.world.persons[p as usize].region as usize;
        let local = &self.local_tables[region * CATEGORIES.len() + category];
        let use_local = category != DIGITAL && !local.0.is_empty() && self.run_rng.chance(0.85);
        let (ids, totals) = if use_local { local } else { &self.global_tables[category] };
        let Some(i) = self.run_rng.pick_cumulative(totals) else { return };
        let merchant = ids[i];
        let c = &CATEGORIES[category];
        let scale = self.world.persons[p as usize].spend_scale;
        let raw = self.run_rng.lognormal(c.median_major * scale, c.sigma);
        let step = if self.run_rng.chance(0.6) { 100 } else { 10 };
        let amount = to_minor(raw, MINOR, step).max(100);
        if !self.try_afford(p, amount) {
            return;
        }
        let ctx = self.person_context(p, TransferKind::MerchantPayment, Some(c.mcc));
        self.pay_merchant(p, merchant, amount, ctx, None, None);
    }

    fn pay_merchant(
        &mut self,
        p: u32,
        merchant: u32,
        amount: u64,
        ctx: RiskContext,
        label: Option<Typology>,
        case: Option<u32>,
    ) {
        let account = self.world.persons[p as usize].account;
        let m_account = self.world.merchants[merchant as usize].account;
        let seq = self.emit(
            TransferKind::MerchantPayment,
            account,
            m_account,
            amount,
            Some(ctx),
            label,
            case,
            None,
        );
        self.world.persons[p as usize].spent_today_minor += amount;
        self.world.merchants[merchant as usize].sales_today_minor += amount;
        if amount >= CASHBACK_MIN_PAYMENT_MINOR && !self.world.persons[p as usize].cashback_today {
            self.world.persons[p as usize].cashback_today = true;
            let red_packet = self.run_rng.between(5, 30) * 10;
            let promotions = self.world.promotions;
            self.emit(TransferKind::Cashback, promotions, account, red_packet, None, label, case, Some(seq));
        }
    }

    fn p2p(&mut self, p: u32, to: u32, amount: u64) {
        if amount == 0 || self.budget(p) < amount {
            return;
        }
        let ctx = self.person_context(p, TransferKind::P2p, None);
        let (from, to) = (self.world.persons[p as usize].account, self.world.persons[to as usize].account);
        self.emit(TransferKind::P2p, from, to, amount, Some(ctx), None, None, None);
        self.world.persons[p as usize].spent_today_minor += amount;
    }

    fn bill_payment(&mut self, p: u32) {
        let weights: Vec<u32> = BILLERS.iter().map(|b| b.2).collect();
        let b = self.run_rng.pick_weighted(&weights);
        let (_, mcc, _, median) = BILLERS[b];
        let amount = if b == 0 {
            [1_000, 2_000, 3_000, 5_000, 10_000][self.run_rng.pick_weighted(&[20, 25, 25, 20, 10])]
        } else {
            to_minor(self.run_rng.lognormal(median, 0.5), MINOR, 1)
        };
        if !self.try_afford(p, amount) {
            return;
        }
        let ctx = self.person_context(p, TransferKind::BillPayment, Some(mcc));
        let account = self.world.persons[p as usize].account;
        self.emit(
            TransferKind::BillPayment,
            account,
            self.world.billers[b],
            amount,
            Some(ctx),
            None,
            None,
            None,
        );
        self.world.persons[p as usize].spent_today_minor += amount;
    }

    /// Cash-out fee: 1 %, at least ¥1, at most ¥20.
    fn cash_out_fee(amount: u64) -> u64 {
        (amount / 100).clamp(100, 2_000)
    }

    fn cash_out(&mut self, p: u32) {
        let budget = self.budget(p);
        let share = self.run_rng.between(20, 70);
        let amount = round_down(budget.saturating_sub(2_000) * share / 100, 1_000);
        if amount < 5_000 {
            self.stats.spends_unaffordable += 1;
            return;
        }
        let agent = self.pick_agent(p);
        let ctx = self.person_context(p, TransferKind::CashOut, None);
        self.cash_out_at(p, agent, amount, ctx, None, None);
        self.world.persons[p as usize].spent_today_minor += amount;
    }

    fn cash_out_at(
        &mut self,
        p: u32,
        agent: u32,
        amount: u64,
        ctx: RiskContext,
        label: Option<Typology>,
        case: Option<u32>,
    ) {
        let account = self.world.persons[p as usize].account;
        let fee = Self::cash_out_fee(amount);
        if self.available(account) < amount + fee {
            return;
        }
        let a_account = self.world.agents[agent as usize].account;
        let seq = self.emit(TransferKind::CashOut, account, a_account, amount, Some(ctx), label, case, None);
        self.emit(TransferKind::Fee, account, self.world.fees, fee, None, label, case, Some(seq));
    }

    fn cash_in(&mut self, agent: u32, p: u32, amount: u64, label: Option<Typology>, case: Option<u32>) {
        let a_account = self.world.agents[agent as usize].account;
        let have = self.available(a_account);
        if have < amount {
            let topup = (amount - have).max(AGENT_TOPUP_MIN_MINOR);
            self.emit(
                TransferKind::Float,
                self.world.settlement,
                a_account,
                round_down(topup, 10_000) + 10_000,
                None,
                None,
                None,
                None,
            );
        }
        let ctx = self.agent_context(agent);
        let account = self.world.persons[p as usize].account;
        self.emit(TransferKind::CashIn, a_account, account, amount, Some(ctx), label, case, None);
    }

    fn settle_merchants(&mut self) {
        for i in 0..self.world.merchants.len() {
            let m = &self.world.merchants[i];
            let (account, sales) = (m.account, m.sales_today_minor);
            if sales == 0 {
                continue;
            }
            self.world.merchants[i].sales_today_minor = 0;
            let fee = (sales * MDR_BPS + 5_000) / 10_000;
            if fee > 0 && self.available(account) >= fee {
                self.emit(TransferKind::Fee, account, self.world.fees, fee, None, None, None, None);
            }
            let payout = round_down(self.available(account).saturating_sub(10_000), 100);
            if payout >= 1_000 {
                self.emit(
                    TransferKind::Settlement,
                    account,
                    self.world.settlement,
                    payout,
                    None,
                    None,
                    None,
                    None,
                );
            }
        }
    }

    fn sweep_agents(&mut self) {
        for i in 0..self.world.agents.len() {
            let account = self.world.agents[i].account;
            let have = self.available(account);
            if have > AGENT_FLOAT_HIGH_MINOR {
                let amount = round_down(have - AGENT_FLOAT_KEEP_MINOR, 10_000);
                self.emit(
                    TransferKind::Float,
                    account,
                    self.world.settlement,
                    amount,
                    None,
                    None,
                    None,
                    None,
                );
            }
        }
    }

    // ---------------------------------------------------------------- abuse

    fn ato_drain(&mut self, case: u32, part: u8) {
        let (victim, payee) = {
            let c = &self.cases[case as usize];
            (c.subject, c.accounts[0])
        };
        let v_account = self.world.persons[victim as usize].account;
        let have = self.available(v_account);
        let share = if part == 0 { self.abuse_rng.between(60, 90) } else { self.abuse_rng.between(80, 100) };
        let amount = round_down(have * share / 100, 1_000);
        if amount < 10_000 {
            return;
        }
        let tier = self.world.persons[victim as usize].tier;
        let ctx = self.fraud_context(case, 0, tier, TransferKind::P2p, "app", None);
        let p_account = self.world.persons[payee as usize].account;
        self.emit(
            TransferKind::P2p,
            v_account,
            p_account,
            amount,
            Some(ctx),
            Some(Typology::AccountTakeover),
            Some(case),
            None,
        );
        if part == 0 && self.abuse_rng.chance(0.6) {
            let at = self.now_ms + self.abuse_rng.between(2, 10) * 60_000;
            self.schedule(at, Action::AtoDrain { case, part: 1 });
        } else {
            let at = self.now_ms + self.abuse_rng.between(20, 120) * 60_000;
            self.schedule(at, Action::FraudCashOut { case, person: payee });
        }
    }

    fn fraud_cash_out(&mut self, case: u32, person: u32) {
        let account = self.world.persons[person as usize].account;
        let have = self.available(account);
        let amount = round_down(have.saturating_sub(2_000) * 95 / 100, 1_000);
        if amount < 5_000 {
            return;
        }
        let agent = self.abuse_rng.below(self.world.agents.len() as u64) as u32;
        let typology = self.cases[case as usize].typology;
        let tier = self.world.persons[person as usize].tier;
        let ctx = self.fraud_context(case, 1, tier, TransferKind::CashOut, "app", None);
        self.cash_out_at(person, agent, amount, ctx, Some(typology), Some(case));
    }

    fn sim_swap_out(&mut self, case: u32, part: u8) {
        let (victim, payee) = {
            let c = &self.cases[case as usize];
            (c.subject, c.accounts[0])
        };
        let v = &self.world.persons[victim as usize];
        let (v_account, tier) = (v.account, v.tier);
        let channel = if v.channel == "ussd" { "ussd" } else { "app" };
        let have = self.available(v_account);
        if part == 0 {
            let amount = round_down(have * self.abuse_rng.between(50, 80) / 100, 1_000);
            if amount >= 10_000 {
                let ctx = self.fraud_context(case, 0, tier, TransferKind::P2p, channel, None);
                let p_account = self.world.persons[payee as usize].account;
                self.emit(
                    TransferKind::P2p,
                    v_account,
                    p_account,
                    amount,
                    Some(ctx),
                    Some(Typology::SimSwap),
                    Some(case),
                    None,
                );
            }
            let at = self.now_ms + self.abuse_rng.between(5, 30) * 60_000;
            self.schedule(at, Action::SimSwapOut { case, part: 1 });
            let at = self.now_ms + self.abuse_rng.between(30, 180) * 60_000;
            self.schedule(at, Action::FraudCashOut { case, person: payee });
        } else {
            let amount = round_down(have.saturating_sub(2_000) * self.abuse_rng.between(60, 90) / 100, 1_000);
            if amount >= 5_000 {
                let agent = self.abuse_rng.below(self.world.agents.len() as u64) as u32;
                let ctx = self.fraud_context(case, 0, tier, TransferKind::CashOut, channel, None);
                self.cash_out_at(victim, agent, amount, ctx, Some(Typology::SimSwap), Some(case));
            }
        }
    }

    fn card_test(&mut self, case: u32, remaining: u32) {
        if remaining == 0 {
            return;
        }
        let c = &self.cases[case as usize];
        let victim = c.subject;
        let merchant = c.merchants[self.abuse_rng.below(c.merchants.len() as u64) as usize];
        let amount = self.abuse_rng.between(100, 499);
        let v = &self.world.persons[victim as usize];
        if self.available(v.account) < amount {
            return;
        }
        let ctx = self.fraud_context(
            case,
            0,
            v.tier,
            TransferKind::MerchantPayment,
            "web",
            Some(CATEGORIES[DIGITAL].mcc),
        );
        self.pay_merchant(victim, merchant, amount, ctx, Some(Typology::CardTesting), Some(case));
        let at = self.now_ms + self.abuse_rng.between(2_000, 7_000);
        self.schedule(at, Action::CardTest { case, remaining: remaining - 1 });
    }

    fn scam_payment(&mut self, case: u32, victim: u32, mule: u32) {
        let have = self.budget(victim);
        let amount = round_down((have * self.abuse_rng.between(30, 80) / 100).min(300_000), 1_000);
        if amount < 10_000 {
            return;
        }
        let ctx = self.person_context(victim, TransferKind::P2p, None);
        let (from, to) =
            (self.world.persons[victim as usize].account, self.world.persons[mule as usize].account);
        self.emit(
            TransferKind::P2p,
            from,
            to,
            amount,
            Some(ctx),
            Some(Typology::MuleNetwork),
            Some(case),
            None,
        );
        self.world.persons[victim as usize].spent_today_minor += amount;
    }

    fn mule_consolidate(&mut self, case: u32, mule: u32) {
        let collector = *self.cases[case as usize].accounts.last().expect("a ring has a collector");
        let account = self.world.persons[mule as usize].account;
        let amount = round_down(self.available(account) * self.abuse_rng.between(90, 98) / 100, 1_000);
        if amount < 10_000 {
            return;
        }
        let device = (mule % 2) as usize;
        let tier = self.world.persons[mule as usize].tier;
        let ctx = self.fraud_context(case, device, tier, TransferKind::P2p, "app", None);
        let to = self.world.persons[collector as usize].account;
        self.emit(
            TransferKind::P2p,
            account,
            to,
            amount,
            Some(ctx),
            Some(Typology::MuleNetwork),
            Some(case),
            None,
        );
    }

    fn mule_fan_out(&mut self, case: u32, remaining: u32) {
        if remaining == 0 {
            return;
        }
        let collector = *self.cases[case as usize].accounts.last().expect("a ring has a collector");
        let account = self.world.persons[collector as usize].account;
        let have = self.available(account).saturating_sub(remaining as u64 * 2_000);
        let amount = round_down(have / remaining as u64, 1_000);
        if amount >= 5_000 {
            let agent = self.abuse_rng.below(self.world.agents.len() as u64) as u32;
            let tier = self.world.persons[collector as usize].tier;
            let ctx = self.fraud_context(case, 0, tier, TransferKind::CashOut, "app", None);
            self.cash_out_at(collector, agent, amount, ctx, Some(Typology::MuleNetwork), Some(case));
        }
        let at = self.now_ms + self.abuse_rng.between(10, 40) * 60_000;
        self.schedule(at, Action::MuleFanOut { case, remaining: remaining - 1 });
    }

    fn struct_deposit(&mut self, case: u32) {
        let structurer = self.cases[case as usize].subject;
        let threshold = self.params.reporting_threshold_minor;
        let permille = self.abuse_rng.between(800, 990);
        let amount = round_down(threshold * permille / 1_000, 10_000).min(threshold - 100);
        let agent = self.abuse_rng.below(self.world.agents.len() as u64) as u32;
        self.cash_in(agent, structurer, amount, Some(Typology::Structuring), Some(case));
    }

    fn struct_out(&mut self, case: u32) {
        let (structurer, payee) = {
            let c = &self.cases[case as usize];
            (c.accounts[0], c.accounts[1])
        };
        let account = self.world.persons[structurer as usize].account;
        let amount = round_down(self.available(account) * self.abuse_rng.between(85, 95) / 100, 10_000);
        if amount < 10_000 {
            return;
        }
        let ctx = self.person_context(structurer, TransferKind::P2p, None);
        let to = self.world.persons[payee as usize].account;
        self.emit(
            TransferKind::P2p,
            account,
            to,
            amount,
            Some(ctx),
            Some(Typology::Structuring),
            Some(case),
            None,
        );
    }

    fn collusion_fund(&mut self, case: u32) {
        // The scheme's cash goes in at one agent (a genuine deposit: not labelled).
        let agent = self.abuse_rng.below(self.world.agents.len() as u64) as u32;
        for i in 0..self.cases[case as usize].accounts.len() {
            let buyer = self.cases[case as usize].accounts[i];
            let amount = self.abuse_rng.between(20, 60) * 1_000;
            self.cash_in(agent, buyer, amount, None, None);
        }
    }

    fn fake_sale(&mut self, case: u32, buyer: u32) {
        let c = &self.cases[case as usize];
        let merchant = c.subject;
        let device = (buyer % 2) as usize;
        let category = self.world.merchants[merchant as usize].category;
        let amount = self.abuse_rng.between(20, 60) * 100;
        let b = &self.world.persons[buyer as usize];
        if self.available(b.account) < amount {
            return;
        }
        let ctx = self.fraud_context(
            case,
            device,
            b.tier,
            TransferKind::MerchantPayment,
            "app",
            Some(CATEGORIES[category].mcc),
        );
        self.pay_merchant(buyer, merchant, amount, ctx, Some(Typology::MerchantCollusion), Some(case));
        self.cases[case as usize].running_minor += amount;
    }

    fn collusion_payback(&mut self, case: u32) {
        let c = &self.cases[case as usize];
        let (merchant, buyers) = (c.subject, c.accounts.clone());
        let m = &self.world.merchants[merchant as usize];
        let (account, device) = (m.account, m.device);
        let tier = self.world.population.accounts[account as usize].kyc_tier;
        let total = (c.running_minor * 9 / 10).min(self.available(account));
        self.cases[case as usize].running_minor = 0;
        let each = round_down(total / buyers.len() as u64, 100);
        if each < 1_000 {
            return;
        }
        for buyer in buyers {
            let ctx = RiskContext {
                device_id: device_id(device),
                ip: self.cases[case as usize].ip.clone(),
                channel: "app",
                country: "CN",
                mcc: None,
                kyc_tier: tier,
                txn_type: TransferKind::P2p.as_str(),
            };
            let to = self.world.persons[buyer as usize].account;
            self.emit(
                TransferKind::P2p,
                account,
                to,
                each,
                Some(ctx),
                Some(Typology::MerchantCollusion),
                Some(case),
                None,
            );
        }
    }
}

fn is_payday(payday: Payday, date: &Date) -> bool {
    match payday {
        Payday::Monthly(0) => date.day == date.month_days,
        Payday::Monthly(d) => date.day == (d as u32).min(date.month_days),
        Payday::Weekly(w) => date.weekday == w as u32,
    }
}

/// A device id as risk control sees it.
pub fn device_id(n: u32) -> String {
    format!("d{n:08}")
}

impl Iterator for Simulation {
    type Item = Transfer;

    fn next(&mut self) -> Option<Transfer> {
        if !self.opened {
            self.opened = true;
            self.open_balances();
        }
        loop {
            if let Some(t) = self.out.pop_front() {
                return Some(t);
            }
            let next_at = self.agenda.first_key_value().map(|((at, _), _)| *at);
            let day_boundary = self.params.start_unix_ms + self.next_day as u64 * DAY_MS;
            if self.next_day < self.params.days && next_at.is_none_or(|at| at >= day_boundary) {
                self.now_ms = self.now_ms.max(day_boundary);
                self.plan_day(self.next_day);
                self.next_day += 1;
                continue;
            }
            let ((at, _), action) = self.agenda.pop_first()?;
            debug_assert!(at >= self.now_ms, "the agenda runs in time order");
            self.now_ms = at;
            self.run(action);
        }
    }
}
