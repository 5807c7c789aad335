//! The simulated population: who exists, what they earn, how they spend. Built once from the seed.

use crate::model::{Account, AccountKind};
use crate::params::Params;
use crate::rng::{to_minor, Rng};

/// Minor units per major unit (the simulation's currency has exponent 2).
pub(crate) const MINOR: u64 = 100;

/// A merchant category: its MCC, ticket size and when it sells.
pub(crate) struct Category {
    #[allow(dead_code)] // documentation of the table
    pub name: &'static str,
    pub mcc: &'static str,
    /// Median ticket, major units.
    pub median_major: f64,
    /// σ of the log ticket.
    pub sigma: f64,
    /// Share of payments (and of merchants).
    pub share: u32,
    /// Sales by hour of day.
    pub hours: &'static [u32; 24],
    /// Weekend sales relative to a weekday, in tenths.
    pub weekend_tenths: u32,
}

const MEALS: [u32; 24] = [0, 0, 0, 0, 0, 1, 4, 12, 10, 4, 4, 10, 14, 10, 3, 3, 4, 9, 12, 10, 5, 3, 1, 0];
const DAYTIME: [u32; 24] = [0, 0, 0, 0, 0, 0, 1, 3, 6, 9, 10, 10, 10, 10, 10, 10, 10, 9, 8, 6, 4, 2, 1, 0];
const COMMUTE: [u32; 24] = [1, 0, 0, 0, 0, 2, 8, 14, 12, 5, 4, 4, 4, 4, 4, 5, 7, 12, 13, 8, 5, 4, 3, 2];
const EVENING: [u32; 24] = [3, 2, 1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 4, 4, 4, 5, 6, 8, 10, 11, 10, 8, 5];

/// When people are active (spending), by hour of day.
pub(crate) const PERSON_HOURS: [u32; 24] =
    [1, 1, 1, 1, 1, 2, 4, 8, 10, 10, 10, 11, 12, 10, 9, 9, 10, 12, 13, 12, 10, 7, 4, 2];
/// When agents are open.
pub(crate) const AGENT_HOURS: [u32; 24] =
    [0, 0, 0, 0, 0, 0, 1, 4, 8, 10, 10, 10, 9, 9, 9, 10, 10, 10, 9, 7, 4, 1, 0, 0];
/// When account takeovers and SIM swaps strike (night-heavy: the victim is asleep).
pub(crate) const FRAUD_HOURS: [u32; 24] =
    [8, 9, 9, 8, 6, 4, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 6, 7, 8, 8];

/// Index of the digital-goods category (card testing targets it; it sells online, to every region).
pub(crate) const DIGITAL: usize = 6;

pub(crate) const CATEGORIES: [Category; 8] = [
    Category {
        name: "food",
        mcc: "5814",
        median_major: 16.0,
        sigma: 0.45,
        share: 32,
        hours: &MEALS,
        weekend_tenths: 9,
    },
    Category {
        name: "grocery",
        mcc: "5411",
        median_major: 42.0,
        sigma: 0.7,
        share: 24,
        hours: &DAYTIME,
        weekend_tenths: 13,
    },
    Category {
        name: "transport",
        mcc: "4121",
        median_major: 11.0,
        sigma: 0.5,
        share: 14,
        hours: &COMMUTE,
        weekend_tenths: 6,
    },
    Category {
        name: "pharmacy",
        mcc: "5912",
        median_major: 32.0,
        sigma: 0.7,
        share: 6,
        hours: &DAYTIME,
        weekend_tenths: 9,
    },
    Category {
        name: "clothing",
        mcc: "5651",
        median_major: 85.0,
        sigma: 0.65,
        share: 7,
        hours: &EVENING,
        weekend_tenths: 16,
    },
    Category {
        name: "repair",
        mcc: "7622",
        median_major: 110.0,
        sigma: 0.8,
        share: 4,
        hours: &DAYTIME,
        weekend_tenths: 11,
    },
    Category {
        name: "digital",
        mcc: "5816",
        median_major: 18.0,
        sigma: 0.9,
        share: 5,
        hours: &EVENING,
        weekend_tenths: 12,
    },
    Category {
        name: "retail",
        mcc: "5999",
        median_major: 38.0,
        sigma: 0.8,
        share: 8,
        hours: &DAYTIME,
        weekend_tenths: 12,
    },
];

/// Billers: (id suffix, MCC, weight, median ticket in major units).
pub(crate) const BILLERS: [(&str, &str, u32, f64); 5] = [
    ("airtime", "4814", 55, 30.0),
    ("electricity", "4900", 20, 120.0),
    ("water", "4900", 10, 60.0),
    ("tv", "4899", 8, 45.0),
    ("school", "8211", 7, 1_200.0),
];

/// Inbound remittance corridors (sending country).
pub(crate) const CORRIDORS: [&str; 5] = ["MY", "SG", "HK", "AE", "JP"];

/// How a person earns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Income {
    /// A salary from an employer on a schedule.
    Salaried { employer: u32, payday: Payday, amount_minor: u64, hour: u8 },
    /// Cash from informal work, deposited at agents a few times a week.
    Informal { cash_ins_per_week: f64, median_major: f64 },
}

/// When a salary comes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Payday {
    /// Day of the month (0 = the last day).
    Monthly(u8),
    /// Day of the week (0 = Monday).
    Weekly(u8),
}

/// A person (legitimate or fraud-controlled) and their wallet.
pub(crate) struct Person {
    pub account: u32,
    pub tier: u8,
    pub region: u32,
    /// Current device (a legitimate new phone replaces it).
    pub device: u32,
    pub channel: &'static str,
    /// Does P2P and cash-out on the agent's phone (over the counter).
    pub agent_assisted: bool,
    pub home_agent: u32,
    pub income: Income,
    /// Monthly inbound remittance: (day of month, amount, corridor index).
    pub remittance: Option<(u8, u64, u32)>,
    pub spend_per_day: f64,
    pub spend_scale: f64,
    pub contacts: Vec<u32>,
    pub fraud: bool,
    pub spent_today_minor: u64,
    pub cashback_today: bool,
    pub last_income_day: Option<u32>,
}

/// A micro-merchant.
pub(crate) struct Merchant {
    pub account: u32,
    pub region: u32,
    pub category: usize,
    /// Popularity weight (Pareto: a few merchants take most sales).
    pub popularity: u64,
    pub open: bool,
    pub device: u32,
    pub sales_today_minor: u64,
}

/// A cash-in/cash-out agent.
pub(crate) struct Agent {
    pub account: u32,
    pub device: u32,
    pub ip: String,
}

/// The population's accounts (the part a consumer needs to create them in a ledger).
#[derive(Debug, Clone)]
pub struct Population {
    /// Every account, in creation order; transfers refer to them by index.
    pub accounts: Vec<Account>,
}

impl Population {
    /// The account at `index`.
    pub fn account(&self, index: u32) -> &Account {
        &self.accounts[index as usize]
    }

    /// How many accounts of `kind`.
    pub fn count(&self, kind: AccountKind) -> usize {
        self.accounts.iter().filter(|a| a.kind == kind).count()
    }
}

/// Everything built at the start: accounts and agents' traits.
pub(crate) struct World {
    pub population: Population,
    pub persons: Vec<Person>,
    /// Legitimate persons, by index into `persons`.
    pub legit: Vec<u32>,
    /// Legitimate persons by region.
    pub legit_by_region: Vec<Vec<u32>>,
    /// Fraud-controlled persons not yet used by a case (shuffled).
    pub fraud_pool: Vec<u32>,
    pub merchants: Vec<Merchant>,
    pub agents: Vec<Agent>,
    pub agents_by_region: Vec<Vec<u32>>,
    pub billers: Vec<u32>,
    pub corridors: Vec<u32>,
    pub settlement: u32,
    pub fees: u32,
    pub promotions: u32,
    /// Opening balances (minor units) per account.
    pub opening_minor: Vec<u64>,
    pub devices_issued: u32,
}

/// Accounts a case of each typology takes from the fraud pool at most.
const POOL_ACCOUNTS_PER_CASE: [f64; 6] = [1.0, 1.0, 0.0, 6.0, 2.0, 12.0];

fn push(
    accounts: &mut Vec<Account>,
    id: String,
    kind: AccountKind,
    wallet: bool,
    tier: u8,
    region: u32,
) -> u32 {
    accounts.push(Account { id, kind, wallet, kyc_tier: tier, region, fraud_controlled: false });
    (accounts.len() - 1) as u32
}

/// Builds the world from `params` (stream 0 of the seed).
pub(crate) fn build(params: &Params) -> World {
    let mut rng = Rng::new(params.seed, 0);
    let regions = params.regions;
    let mut accounts = Vec::new();
    let settlement = push(&mut accounts, "bank:settlement".into(), AccountKind::Settlement, false, 0, 0);
    let fees = push(&mut accounts, "fees:revenue".into(), AccountKind::Fees, false, 0, 0);
    let promotions = push(&mut accounts, "promo:cashback".into(), AccountKind::Promotions, false, 0, 0);
    let billers: Vec<u32> = BILLERS
        .iter()
        .map(|(name, ..)| push(&mut accounts, format!("biller:{name}"), AccountKind::Biller, true, 3, 0))
        .collect();
    let corridors: Vec<u32> = CORRIDORS
        .iter()
        .map(|c| push(&mut accounts, format!("remit:{c}"), AccountKind::RemittanceCorridor, false, 0, 0))
        .collect();
    let employers: Vec<u32> = (0..params.employers)
        .map(|i| push(&mut accounts, format!("emp:{i:05}"), AccountKind::Employer, false, 3, i % regions))
        .collect();
    let mut devices_issued = 0u32;
    let mut device = || {
        devices_issued += 1;
        devices_issued
    };

    let mut agents = Vec::new();
    let mut agents_by_region = vec![Vec::new(); regions as usize];
    for i in 0..params.agents {
        // The first `regions` agents cover every region once; the rest land anywhere.
        let region = if i < regions { i } else { rng.below(regions as u64) as u32 };
        let account = push(&mut accounts, format!("agent:{i:05}"), AccountKind::Agent, true, 3, region);
        let ip = format!("172.{}.{}.{}", 16 + i / 65_025, (i / 255) % 255, i % 255 + 1);
        agents_by_region[region as usize].push(i);
        agents.push(Agent { account, device: device(), ip });
    }

    let share_weights: Vec<u32> = CATEGORIES.iter().map(|c| c.share).collect();
    let mut merchants = Vec::new();
    for i in 0..params.merchants {
        let region = if i < regions { i } else { rng.below(regions as u64) as u32 };
        // Every category exists somewhere: the first eight merchants take one each.
        let category =
            if (i as usize) < CATEGORIES.len() { i as usize } else { rng.pick_weighted(&share_weights) };
        let tier = if rng.chance(0.7) { 2 } else { 3 };
        let account = push(&mut accounts, format!("m:{i:06}"), AccountKind::Merchant, true, tier, region);
        // Pareto α = 1.1: the 80/20 of micro-merchant revenue; capped so one stall cannot be a city.
        let popularity = to_minor(rng.pareto(1.0, 1.1).min(2_000.0), MINOR, 1);
        merchants.push(Merchant {
            account,
            region,
            category,
            popularity,
            open: true,
            device: device(),
            sales_today_minor: 0,
        });
    }

    // Wallets: legitimate people plus a pool of fraud-controlled wallets, interleaved.
    let expected_pool: f64 = crate::model::Typology::ALL
        .iter()
        .map(|t| {
            params.expected_cases_per_day(*t)
                * params.days.saturating_sub(params.warmup_days) as f64
                * POOL_ACCOUNTS_PER_CASE[t.index()]
        })
        .sum();
    let pool_size = ((expected_pool * 1.5) as u64 + 16).min(params.individuals as u64 / 2) as u32;
    let wallets = params.individuals + pool_size;
    // Choose which wallet indexes are fraud-controlled: a partial Fisher–Yates shuffle.
    let mut order: Vec<u32> = (0..wallets).collect();
    for i in 0..pool_size as usize {
        let j = i + rng.below((wallets as usize - i) as u64) as usize;
        order.swap(i, j);
    }
    let mut is_fraud = vec![false; wallets as usize];
    for &w in &order[..pool_size as usize] {
        is_fraud[w as usize] = true;
    }
    let mut fraud_pool: Vec<u32> = order[..pool_size as usize].to_vec();
    drop(order);

    let mut persons = Vec::with_capacity(wallets as usize);
    let mut legit = Vec::with_capacity(params.individuals as usize);
    let mut legit_by_region = vec![Vec::new(); regions as usize];
    for w in 0..wallets {
        let fraud = is_fraud[w as usize];
        let region = rng.below(regions as u64) as u32;
        let tier = match rng.below(100) {
            0..=39 => 1,
            40..=81 => 2,
            _ => 3,
        };
        let account = push(&mut accounts, format!("w:{w:07}"), AccountKind::Individual, true, tier, region);
        accounts[account as usize].fraud_controlled = fraud;
        let local = &agents_by_region[region as usize];
        let home_agent = if local.is_empty() {
            rng.below(params.agents as u64) as u32
        } else {
            local[rng.below(local.len() as u64) as usize]
        };
        let channel = if tier == 1 && rng.chance(0.35) { "ussd" } else { "app" };
        let agent_assisted = rng.chance(if tier == 1 { 0.06 } else { 0.02 });
        let salaried = rng.chance([0.25, 0.5, 0.7][tier as usize - 1]);
        let income = if salaried {
            let monthly = rng.lognormal([2_800.0, 4_800.0, 9_500.0][tier as usize - 1], 0.35);
            let employer = employers[rng.below(employers.len() as u64) as usize];
            let hour = rng.between(8, 11) as u8;
            if rng.chance(0.7) {
                let day = [1u8, 10, 15, 25, 0][rng.pick_weighted(&[25, 15, 20, 20, 20])];
                Income::Salaried {
                    employer,
                    payday: Payday::Monthly(day),
                    amount_minor: to_minor(monthly, MINOR, 100),
                    hour,
                }
            } else {
                Income::Salaried {
                    employer,
                    payday: Payday::Weekly(4),
                    amount_minor: to_minor(monthly / 4.33, MINOR, 100),
                    hour,
                }
            }
        } else {
            Income::Informal {
                cash_ins_per_week: rng.lognormal(2.0, 0.5),
                median_major: [300.0, 600.0, 1_200.0][tier as usize - 1],
            }
        };
        let remittance = rng.chance(0.15).then(|| {
            (
                rng.between(1, 28) as u8,
                to_minor(rng.lognormal(1_500.0, 0.5), MINOR, 1_000),
                rng.below(CORRIDORS.len() as u64) as u32,
            )
        });
        let spend_per_day = rng.lognormal([0.9, 1.3, 1.9][tier as usize - 1], 0.55);
        let spend_scale = rng.lognormal([0.7, 1.0, 1.5][tier as usize - 1], 0.35);
        let index = persons.len() as u32;
        if !fraud {
            legit.push(index);
            legit_by_region[region as usize].push(index);
        }
        persons.push(Person {
            account,
            tier,
            region,
            device: device(),
            channel,
            agent_assisted,
            home_agent,
            income,
            remittance,
            spend_per_day,
            spend_scale,
            contacts: Vec::new(),
            fraud,
            spent_today_minor: 0,
            cashback_today: false,
            last_income_day: None,
        });
    }
    // Contacts: 3–8 people, 80 % from the same region.
    for &p in &legit {
        let n = rng.between(3, 8);
        let region = persons[p as usize].region as usize;
        let mut contacts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let pool = if rng.chance(0.8) && legit_by_region[region].len() > 1 {
                &legit_by_region[region]
            } else {
                &legit
            };
            let c = pool[rng.below(pool.len() as u64) as usize];
            if c != p && !contacts.contains(&c) {
                contacts.push(c);
            }
        }
        persons[p as usize].contacts = contacts;
    }
    // Fraud-controlled wallets are fresh: no history, no balance. Their pool order is shuffled so
    // cases do not take them in id order.
    for i in (1..fraud_pool.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        fraud_pool.swap(i, j);
    }

    let mut opening_minor = vec![0u64; accounts.len()];
    for p in &persons {
        if !p.fraud {
            let median = [250.0, 1_200.0, 5_000.0][p.tier as usize - 1];
            opening_minor[p.account as usize] = to_minor(rng.lognormal(median, 0.9), MINOR, 1);
        }
    }
    for m in &merchants {
        opening_minor[m.account as usize] = to_minor(rng.lognormal(600.0, 0.4), MINOR, 100);
    }
    for a in &agents {
        opening_minor[a.account as usize] = to_minor(rng.lognormal(25_000.0, 0.4), MINOR, 10_000);
    }
    World {
        population: Population { accounts },
        persons,
        legit,
        legit_by_region,
        fraud_pool,
        merchants,
        agents,
        agents_by_region,
        billers,
        corridors,
        settlement,
        fees,
        promotions,
        opening_minor,
        devices_issued,
    }
}
