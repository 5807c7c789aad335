//! The labels tell the truth about the transfers: each typology's transfers have its shape.

use std::collections::{BTreeMap, BTreeSet};

use puhui_sim::{Params, Preset, Simulation, Transfer, TransferKind, Typology};

fn params() -> Params {
    Params {
        individuals: 12_000,
        merchants: 600,
        agents: 60,
        employers: 30,
        regions: 6,
        abuse: Preset::City.params(0).abuse.scaled(5.0),
        ..Preset::City.params(21)
    }
}

struct Stream {
    transfers: Vec<Transfer>,
    sim: Simulation,
}

fn stream() -> Stream {
    let mut sim = Simulation::new(params()).unwrap();
    let transfers: Vec<Transfer> = (&mut sim).collect();
    Stream { transfers, sim }
}

fn cases(s: &Stream, t: Typology) -> BTreeMap<u32, Vec<&Transfer>> {
    let mut by_case: BTreeMap<u32, Vec<&Transfer>> = BTreeMap::new();
    for tr in s.transfers.iter().filter(|x| x.label == Some(t) && x.context.is_some()) {
        by_case.entry(tr.case_id.expect("a labelled transfer has a case")).or_default().push(tr);
    }
    assert!(by_case.len() >= 3, "{}: {} cases", t.as_str(), by_case.len());
    by_case
}

#[test]
fn every_transfer_is_funded_and_labels_are_consistent() {
    let s = stream();
    let accounts = &s.sim.population().accounts;
    let mut balance = vec![0i64; accounts.len()];
    let by_seq: BTreeMap<u64, &Transfer> = s.transfers.iter().map(|t| (t.seq, t)).collect();
    for t in &s.transfers {
        balance[t.debit as usize] -= t.amount_minor as i64;
        balance[t.credit as usize] += t.amount_minor as i64;
        assert!(
            !accounts[t.debit as usize].wallet || balance[t.debit as usize] >= 0,
            "wallet {} overdrawn by {t:?}",
            accounts[t.debit as usize].id
        );
        assert_eq!(t.label.is_some(), t.case_id.is_some(), "{t:?}");
        if let Some(parent) = t.parent_seq {
            let p = by_seq[&parent];
            assert!(
                parent < t.seq && p.label == t.label && p.timestamp_ms == t.timestamp_ms,
                "{t:?} / {p:?}"
            );
            assert!(matches!(t.kind, TransferKind::Fee | TransferKind::Cashback));
        }
        // System movements are not decided by risk control; customer ones are.
        let customer = matches!(
            t.kind,
            TransferKind::P2p
                | TransferKind::MerchantPayment
                | TransferKind::BillPayment
                | TransferKind::CashIn
                | TransferKind::CashOut
        );
        assert_eq!(customer, t.context.is_some(), "{t:?}");
        if accounts[t.debit as usize].fraud_controlled || accounts[t.credit as usize].fraud_controlled {
            // Fraud-controlled wallets only move scheme money (or receive its unlabelled funding).
            assert!(t.label.is_some() || t.kind == TransferKind::CashIn, "{t:?}");
        }
    }
    // The simulator's own books agree.
    for (i, b) in balance.iter().enumerate() {
        assert_eq!(*b, s.sim.balance_minor(i as u32));
    }
}

/// Devices each account used, and payees each account paid, before each transfer.
struct History {
    devices: BTreeMap<u32, BTreeSet<String>>,
    touched: BTreeSet<u32>,
}

#[test]
fn account_takeovers_come_from_a_new_device_and_drain_to_a_fresh_payee() {
    let s = stream();
    let mut h = History { devices: BTreeMap::new(), touched: BTreeSet::new() };
    let mut checked = 0;
    let mut drained: BTreeSet<u32> = BTreeSet::new();
    for t in &s.transfers {
        // The first drain of each case (a second one may follow from the same new device).
        if t.label == Some(Typology::AccountTakeover)
            && t.kind == TransferKind::P2p
            && drained.insert(t.case_id.unwrap())
        {
            let ctx = t.context.as_ref().unwrap();
            let known = h.devices.get(&t.debit).is_some_and(|d| d.contains(&ctx.device_id));
            assert!(!known, "the drain comes from a device the victim never used: {t:?}");
            let first_drain = !h.touched.contains(&t.credit);
            let payee_only_from_victim = s
                .transfers
                .iter()
                .take_while(|x| x.seq < t.seq)
                .filter(|x| x.credit == t.credit || x.debit == t.credit)
                .all(|x| x.debit == t.debit && x.label == Some(Typology::AccountTakeover));
            assert!(first_drain || payee_only_from_victim, "the payee is fresh: {t:?}");
            assert!(t.amount_minor >= 10_000);
            checked += 1;
        }
        if let Some(ctx) = &t.context {
            h.devices.entry(t.debit).or_default().insert(ctx.device_id.clone());
        }
        h.touched.insert(t.debit);
        h.touched.insert(t.credit);
    }
    assert!(checked >= 5, "{checked} drains checked");
    // Every case drains first, then cashes out from the fraudster's wallet.
    for (case, ts) in cases(&s, Typology::AccountTakeover) {
        assert_eq!(ts[0].kind, TransferKind::P2p, "case {case}");
        if let Some(out) = ts.iter().find(|t| t.kind == TransferKind::CashOut) {
            assert_eq!(out.debit, ts[0].credit, "case {case}: the payee cashes out");
        }
    }
}

#[test]
fn sim_swaps_move_far_more_than_the_victims_usual_amounts_from_a_new_device() {
    let s = stream();
    for (case, ts) in cases(&s, Typology::SimSwap) {
        let first = ts[0];
        let victim = first.debit;
        let before: Vec<&Transfer> = s
            .transfers
            .iter()
            .take_while(|x| x.seq < first.seq)
            .filter(|x| x.debit == victim && x.context.is_some())
            .collect();
        let device = &first.context.as_ref().unwrap().device_id;
        assert!(
            before.iter().all(|x| &x.context.as_ref().unwrap().device_id != device),
            "case {case}: new device"
        );
        if before.len() >= 3 {
            let mut amounts: Vec<u64> = before.iter().map(|x| x.amount_minor).collect();
            amounts.sort_unstable();
            let median = amounts[amounts.len() / 2];
            assert!(first.amount_minor > 3 * median, "case {case}: {} vs usual {median}", first.amount_minor);
        }
    }
}

#[test]
fn card_testing_is_a_burst_of_tiny_web_payments() {
    let s = stream();
    for (case, ts) in cases(&s, Typology::CardTesting) {
        assert!(
            ts.iter().all(|t| t.amount_minor < 500 && t.kind == TransferKind::MerchantPayment),
            "case {case}"
        );
        assert!(ts.iter().all(|t| t.context.as_ref().unwrap().channel == "web"));
        if ts.len() >= 10 {
            // At least ten within 75 seconds somewhere in the burst.
            let dense = ts.windows(10).any(|w| w[9].timestamp_ms - w[0].timestamp_ms <= 75_000);
            assert!(dense, "case {case}: not a burst");
        }
    }
}

#[test]
fn mule_accounts_fan_in_then_fan_out() {
    let s = stream();
    let accounts = &s.sim.population().accounts;
    for (case, ts) in cases(&s, Typology::MuleNetwork) {
        let mut inflows: BTreeMap<u32, Vec<&Transfer>> = BTreeMap::new();
        for t in &ts {
            if !accounts[t.debit as usize].fraud_controlled {
                inflows.entry(t.credit).or_default().push(t);
            }
        }
        assert!(inflows.len() >= 3, "case {case}: {} mules", inflows.len());
        for (mule, ins) in &inflows {
            assert!(accounts[*mule as usize].fraud_controlled);
            let payers: BTreeSet<u32> = ins.iter().map(|t| t.debit).collect();
            assert!(payers.len() >= 5, "case {case}: mule fed by {} payers", payers.len());
            let last_in = ins.iter().map(|t| t.timestamp_ms).max().unwrap();
            let outs: Vec<&&Transfer> = ts.iter().filter(|t| t.debit == *mule).collect();
            let inflow: u64 = ins.iter().map(|t| t.amount_minor).sum();
            let outflow: u64 = outs.iter().map(|t| t.amount_minor).sum();
            if outs.is_empty() {
                // Only a ring cut short by the end of the simulated period has not moved on yet.
                assert!(last_in + 20 * 3_600_000 > s.sim.end_ms(), "case {case}: mule {mule} never paid out");
                continue;
            }
            assert!(outs.iter().all(|t| t.timestamp_ms > last_in), "case {case}: out only after in");
            assert!(outflow * 10 >= inflow * 8, "case {case}: {outflow} of {inflow} moved on");
        }
        // The collector disperses to several agents.
        let collector =
            ts.iter().find(|t| t.kind == TransferKind::P2p && accounts[t.debit as usize].fraud_controlled);
        if let Some(c) = collector {
            let agents: BTreeSet<u32> = ts
                .iter()
                .filter(|t| t.debit == c.credit && t.kind == TransferKind::CashOut)
                .map(|t| t.credit)
                .collect();
            assert!(agents.len() >= 2, "case {case}: fan-out to {} agents", agents.len());
        }
    }
}

#[test]
fn structuring_stays_just_under_the_threshold() {
    let s = stream();
    let threshold = params().reporting_threshold_minor;
    for (case, ts) in cases(&s, Typology::Structuring) {
        let deposits: Vec<&&Transfer> = ts.iter().filter(|t| t.kind == TransferKind::CashIn).collect();
        assert!(deposits.len() >= 3, "case {case}");
        for d in &deposits {
            assert!(
                d.amount_minor >= threshold * 8 / 10 && d.amount_minor < threshold,
                "case {case}: {}",
                d.amount_minor
            );
        }
        let total: u64 = deposits.iter().map(|d| d.amount_minor).sum();
        assert!(total >= threshold, "case {case}: together they pass the threshold");
        let agents: BTreeSet<u32> = deposits.iter().map(|d| d.debit).collect();
        assert!(agents.len() >= 2, "case {case}: spread over agents");
    }
}

#[test]
fn colluding_merchants_sell_to_a_few_shared_phones_and_pay_back() {
    let s = stream();
    for (case, ts) in cases(&s, Typology::MerchantCollusion) {
        let sales: Vec<&&Transfer> = ts.iter().filter(|t| t.kind == TransferKind::MerchantPayment).collect();
        let buyers: BTreeSet<u32> = sales.iter().map(|t| t.debit).collect();
        let devices: BTreeSet<&str> =
            sales.iter().map(|t| t.context.as_ref().unwrap().device_id.as_str()).collect();
        let merchants: BTreeSet<u32> = sales.iter().map(|t| t.credit).collect();
        assert_eq!(merchants.len(), 1, "case {case}");
        assert!(
            buyers.len() >= 5 && devices.len() <= 2,
            "case {case}: {} buyers on {} phones",
            buyers.len(),
            devices.len()
        );
        let merchant = *merchants.iter().next().unwrap();
        assert!(
            ts.iter().any(|t| t.debit == merchant && buyers.contains(&t.credit)),
            "case {case}: money goes round"
        );
    }
}
