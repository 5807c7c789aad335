//! Incremental snapshots: records encoded early and changed later are patched, so the decoded
//! ledger equals the ledger at `snapshot_finish`, whatever happened between the steps.

use proptest::prelude::*;
use puhui_ledger::{AccountFlags, Currency, Id, Ledger, NewAccount, StatusAction, TransferRequest};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn same(a: &Ledger, b: &Ledger) {
    assert_eq!(a.accounts().collect::<Vec<_>>(), b.accounts().collect::<Vec<_>>());
    assert_eq!(a.transfers_count(), b.transfers_count());
    for i in 0..a.transfers_count() as u32 {
        let id = a.transfer_id_at(i).clone();
        assert_eq!(a.transfer(&id), b.transfer(&id), "{id}");
    }
    assert_eq!(a.last_timestamp_ns(), b.last_timestamp_ns());
    assert_eq!(a.next_expiry_ns(), b.next_expiry_ns());
    for acct in a.accounts() {
        for at in [0, a.last_timestamp_ns() / 2, u64::MAX] {
            assert_eq!(a.balance_at(&acct.id, at), b.balance_at(&acct.id, at));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn changes_between_steps_are_patched(step in 1usize..20, seed in any::<u64>()) {
        let cny = Currency::iso("CNY").unwrap();
        let mut ledger = Ledger::new();
        let mut accounts = vec![NewAccount::new(id("bank"), cny)];
        accounts.extend((0..5).map(|i| NewAccount::new(id(&format!("w{i}")), cny).with_flags(AccountFlags::WALLET)));
        ledger.create_accounts(accounts, 1_000);
        let fund = (0..5).map(|i| TransferRequest::single(id(&format!("f{i}")), id("bank"), id(&format!("w{i}")), 1_000, cny.code())).collect();
        ledger.create_transfers(fund, 1_000);
        let mut now = 2_000u64;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as usize };
        let mut n = 0;
        let mut batch = |ledger: &mut Ledger, now: u64, next: &mut dyn FnMut() -> usize| {
            let mut b = Vec::new();
            for _ in 0..1 + next() % 6 {
                n += 1;
                let (d, c) = (format!("w{}", next() % 5), format!("w{}", next() % 5));
                let (d, c) = if d == c { (d, "bank".to_string()) } else { (d, c) };
                b.push(match next() % 5 {
                    0 | 1 => TransferRequest::pending(id(&format!("h{n}")), id(&d), id(&c), 1 + next() as u64 % 300, cny.code(), Some(1 + next() as u64 % 5)),
                    2 => TransferRequest::post(id(&format!("p{n}")), id(&format!("h{}", 1 + next() % n)), None),
                    3 => TransferRequest::void(id(&format!("v{n}")), id(&format!("h{}", 1 + next() % n))),
                    _ => {
                        let mut t = TransferRequest::single(id(&format!("s{n}")), id(&d), id(&c), 1 + next() as u64 % 900, cny.code());
                        t.linked = next().is_multiple_of(3);
                        t
                    }
                });
            }
            if let Some(last) = b.last_mut() { last.linked = false; }
            ledger.create_transfers(b, now);
        };
        for _ in 0..20 { now += 1_000_000; batch(&mut ledger, now, &mut next); ledger.expire_due(now); }
        let mut builder = ledger.snapshot_begin();
        // Each round adds up to 6 transfers; steps of fewer records may never catch up, which is fine:
        // finish encodes the rest. Bound the rounds.
        for _round in 0..40 {
            let done = ledger.snapshot_step(&mut builder, step);
            now += 1_000_000;
            batch(&mut ledger, now, &mut next);
            ledger.expire_due(now);
            if next() % 7 == 0 {
                ledger.set_account_status(&format!("w{}", next() % 5), StatusAction::Freeze, now);
            }
            if done && next() % 2 == 0 {
                break;
            }
        }
        let bytes = ledger.snapshot_finish(builder).concat();
        let decoded = Ledger::decode_snapshot(&bytes).unwrap();
        same(&ledger, &decoded);
        ledger.check_invariants().unwrap();
    }
}
