//! The population's statistics stay within the ranges documented in the crate docs.

use std::collections::BTreeMap;

use puhui_sim::{AccountKind, Params, Preset, Simulation, TransferKind, Typology};

/// A mid-size run: 20,000 people for a week, abuse 4× the default so every typology has dozens of
/// cases (about 350,000 transfers, well under a second).
fn mid_size() -> Params {
    Params {
        individuals: 20_000,
        merchants: 1_000,
        agents: 100,
        employers: 60,
        regions: 10,
        abuse: Preset::City.params(0).abuse.scaled(4.0),
        ..Preset::City.params(11)
    }
}

struct Run {
    sim_stats: puhui_sim::SimStats,
    params: Params,
    merchant_revenue: BTreeMap<u32, u64>,
    merchants: usize,
    scored: u64,
    labelled: BTreeMap<Typology, u64>,
    payments_by_hour: [u64; 24],
}

fn run(params: Params) -> Run {
    let mut sim = Simulation::new(params.clone()).unwrap();
    let merchants = sim.population().count(AccountKind::Merchant);
    let mut r = Run {
        sim_stats: Default::default(),
        params,
        merchant_revenue: BTreeMap::new(),
        merchants,
        scored: 0,
        labelled: BTreeMap::new(),
        payments_by_hour: [0; 24],
    };
    for t in &mut sim {
        if t.context.is_some() {
            r.scored += 1;
            if let Some(l) = t.label {
                *r.labelled.entry(l).or_default() += 1;
            }
        }
        if t.kind == TransferKind::MerchantPayment && t.label.is_none() {
            *r.merchant_revenue.entry(t.credit).or_default() += t.amount_minor;
            r.payments_by_hour[(t.timestamp_ms % 86_400_000 / 3_600_000) as usize] += 1;
        }
    }
    r.sim_stats = sim.stats().clone();
    r
}

#[test]
fn merchant_revenue_is_heavy_tailed_and_seasonal() {
    let r = run(mid_size());
    let mut revenue: Vec<u64> = r.merchant_revenue.values().copied().collect();
    assert!(revenue.len() as f64 > 0.8 * r.merchants as f64, "most merchants sell something");
    revenue.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = revenue.iter().sum();
    let top_decile: u64 = revenue[..revenue.len() / 10].iter().sum();
    let share = top_decile as f64 / total as f64;
    assert!((0.35..=0.85).contains(&share), "top 10 % of merchants take {share:.2} of revenue");
    let median = revenue[revenue.len() / 2];
    assert!(revenue[0] > 10 * median, "the largest ({}) dwarfs the median ({median})", revenue[0]);
    // Seasonality by hour: lunch and evening peaks, quiet nights.
    let h = r.payments_by_hour;
    assert!(h[12] > 8 * h[3] && h[18] > 8 * h[3], "hourly profile {h:?}");
    // Some merchants fail within a week, most do not.
    let closed = r.sim_stats.merchants_closed as f64 / r.merchants as f64;
    assert!(closed > 0.0 && closed < 0.1, "closed share {closed}");
}

#[test]
fn activity_and_abuse_shares_are_in_range() {
    let r = run(mid_size());
    let per_person_day = r.scored as f64 / (r.params.individuals as f64 * r.params.days as f64);
    assert!((1.0..=4.0).contains(&per_person_day), "scored transfers per person per day {per_person_day:.2}");
    let abusive: u64 = r.labelled.values().sum();
    let share = abusive as f64 / r.scored as f64;
    // Abuse is 4× the default here; at the default it is a quarter of this.
    assert!((0.002..=0.12).contains(&share), "abuse share of scored transfers {share:.4}");
    let abuse_days = (r.params.days - r.params.warmup_days) as f64;
    for t in Typology::ALL {
        let expected = r.params.expected_cases_per_day(t) * abuse_days;
        let planned = r.sim_stats.cases_planned[t.index()] as f64;
        assert!(
            (planned - expected).abs() <= 4.0 * expected.sqrt() + 1.0,
            "{}: {planned} cases planned, {expected:.1} expected",
            t.as_str()
        );
        assert_eq!(r.sim_stats.cases_dropped[t.index()], 0, "{}: cases dropped", t.as_str());
        assert!(r.labelled.get(&t).copied().unwrap_or(0) > 0, "{} has labelled transfers", t.as_str());
    }
}

#[test]
fn the_default_city_rates_keep_abuse_rare() {
    // The City preset at 1/10 of its size, default rates: abuse is a fraction of a percent.
    let params = Params {
        individuals: 6_000,
        merchants: 300,
        agents: 30,
        employers: 20,
        regions: 3,
        ..Preset::City.params(5)
    };
    let r = run(params);
    let share = r.labelled.values().sum::<u64>() as f64 / r.scored as f64;
    assert!((0.0005..=0.03).contains(&share), "abuse share {share:.4}");
}

#[test]
fn every_typology_shows_up_in_the_small_preset() {
    let r = run(Preset::Small.params(1));
    for t in Typology::ALL {
        assert!(r.sim_stats.cases_planned[t.index()] >= 2, "{}", t.as_str());
        assert!(r.labelled.get(&t).copied().unwrap_or(0) > 0, "{} has labelled transfers", t.as_str());
    }
}
