//! The verifiable journal through the embedded store: property tests over random journals (every
//! inclusion and consistency proof verifies, every mutated proof fails), restart, witnesses, and the
//! start-up refusal of a journal that no longer matches its checkpoints.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use puhui_ledger::{Currency, Id, NewAccount, TransferRequest};
use puhui_store::verifiable::{
    self as v, Checkpoint, ConsistencyProof, Error, InclusionProof, NodeKey, ProofFile, PublicKey,
};
use puhui_store::{EmbeddedStore, LedgerStore, ManualClock, StoreError, StoreOptions};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

/// Options with the time and count triggers off: checkpoints only when the test asks.
fn manual_options() -> StoreOptions {
    StoreOptions { checkpoint_every_entries: 0, checkpoint_every_ms: 0, ..Default::default() }
}

fn open(dir: &Path, options: StoreOptions) -> EmbeddedStore {
    EmbeddedStore::open_with(dir, ManualClock::new(1_000_000_000), options).unwrap()
}

/// Accounts a0..a3, then `batches` (sizes) of transfers t{n} between them; a checkpoint after
/// every batch whose flag is set. Returns the transfer ids.
fn fill(store: &EmbeddedStore, batches: &[(usize, bool)]) -> Vec<String> {
    let cny = Currency::iso("CNY").unwrap();
    store.create_accounts((0..4).map(|i| NewAccount::new(id(&format!("a{i}")), cny)).collect()).unwrap();
    let mut ids = Vec::new();
    for (b, &(size, checkpoint)) in batches.iter().enumerate() {
        let batch: Vec<_> = (0..size)
            .map(|i| {
                let tid = format!("t{b}-{i}");
                ids.push(tid.clone());
                TransferRequest::single(
                    id(&tid),
                    id(&format!("a{}", i % 4)),
                    id(&format!("a{}", (i + 1) % 4)),
                    1 + i as u64,
                    cny.code(),
                )
            })
            .collect();
        store.create_transfers(batch).unwrap();
        if checkpoint {
            store.checkpoint_now().unwrap();
        }
    }
    store.checkpoint_now().unwrap();
    ids
}

/// Every way of tampering with an inclusion proof that must make it fail.
fn mutated_inclusion(p: &InclusionProof, which: usize) -> Option<InclusionProof> {
    let mut m = p.clone();
    match which {
        0 => m.index = m.index.wrapping_add(1),
        1 => *m.leaf.last_mut()? ^= 1,
        2 => {
            let at = 20 % m.leaf.len();
            m.leaf[at] ^= 0x80;
        }
        3 => m.proof.first_mut()?[0] ^= 1,
        4 => m.proof.last_mut()?[31] ^= 1,
        5 => {
            m.proof.pop()?;
        }
        6 => m.proof.push([0; 32]),
        7 => m.checkpoint.size += 1,
        8 => m.checkpoint.root[5] ^= 1,
        9 => m.checkpoint.timestamp_ns += 1,
        10 => m.checkpoint.signature[0] ^= 1,
        11 => {
            if m.proof.len() < 2 {
                return None;
            }
            m.proof.swap(0, 1);
            if m.proof == p.proof {
                return None;
            }
        }
        _ => return None,
    }
    Some(m)
}

fn mutated_consistency(p: &ConsistencyProof, which: usize) -> Option<ConsistencyProof> {
    let mut m = p.clone();
    match which {
        0 => m.old.root[0] ^= 1,
        1 => m.new.root[0] ^= 1,
        2 => m.proof.first_mut()?[3] ^= 1,
        3 => m.proof.last_mut()?[3] ^= 1,
        4 => {
            m.proof.pop()?;
        }
        5 => m.proof.push([1; 32]),
        6 => m.old.signature[7] ^= 1,
        7 => m.new.size += 1,
        8 => std::mem::swap(&mut m.old, &mut m.new),
        _ => return None,
    }
    if m == *p {
        return None;
    }
    Some(m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn every_proof_verifies_and_every_mutation_fails(
        batches in prop::collection::vec((1usize..40, any::<bool>()), 1..8)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), manual_options());
        let ids = fill(&store, &batches);
        let key = store.public_key().unwrap();
        let wrong = NodeKey::from_seed([9; 32]).public_key();
        let checkpoints = store.checkpoints().unwrap();
        let latest = store.latest_checkpoint().unwrap();
        prop_assert_eq!(latest.size as usize, 4 + ids.len()); // 4 account entries, then the transfers
        for c in &checkpoints {
            c.verify_signature(&key).unwrap();
            prop_assert!(c.verify_signature(&wrong).is_err());
        }
        // Every entry against every checkpoint that covers it.
        for c in &checkpoints {
            for seq in 0..c.size {
                let p = store.inclusion_proof_for_entry(seq, Some(c.size)).unwrap();
                prop_assert_eq!(p.verify(&key).map(|_| ()), Ok(()));
                prop_assert!(p.verify(&wrong).is_err());
                // Round trip through the file format.
                let parsed = ProofFile::parse(&p.to_json()).unwrap();
                prop_assert!(parsed.verify(&key).is_ok());
                for which in 0..12 {
                    if let Some(m) = mutated_inclusion(&p, which) {
                        prop_assert!(m.verify(&key).is_err(), "mutation {} of entry {} at {} verified", which, seq, c.size);
                    }
                }
            }
            let too_new = store.inclusion_proof_for_entry(c.size, Some(c.size));
            prop_assert!(too_new.is_err());
        }
        // Every transfer by id, against the latest checkpoint.
        for tid in &ids {
            let p = store.inclusion_proof_for_transfer(tid, None).unwrap();
            let verified = p.verify(&key).unwrap();
            let text = verified.to_string();
            prop_assert!(text.contains(&format!("{tid:?}")), "{}", text);
        }
        // Every pair of checkpoints.
        for (i, a) in checkpoints.iter().enumerate() {
            for b in &checkpoints[i..] {
                let p = store.consistency(a.size, b.size).unwrap();
                prop_assert!(p.verify(&key).is_ok());
                prop_assert!(ProofFile::parse(&p.to_json()).unwrap().verify(&key).is_ok());
                for which in 0..9 {
                    if let Some(m) = mutated_consistency(&p, which) {
                        prop_assert!(m.verify(&key).is_err(), "mutation {} of {}..{} verified", which, a.size, b.size);
                    }
                }
            }
        }
    }
}

#[test]
fn proofs_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), manual_options());
    assert_eq!(store.latest_checkpoint(), Err(Error::NoCheckpoint));
    assert_eq!(store.checkpoint_now(), Err(Error::NoCheckpoint));
    fill(&store, &[(5, false)]);
    let latest = store.latest_checkpoint().unwrap();
    assert_eq!(store.inclusion_proof_for_transfer("nope", None), Err(Error::TransferNotFound("nope".into())));
    assert_eq!(store.checkpoint(latest.size + 1), Err(Error::CheckpointNotFound { size: latest.size + 1 }));
    assert_eq!(store.inclusion_proof_for_entry(99, None), Err(Error::EntryNotFound { seq: 99 }));
    assert_eq!(store.consistency(latest.size, 1), Err(Error::InvalidRange { from: latest.size, to: 1 }));
    // A transfer after the latest checkpoint is not covered until the next one.
    let cny = Currency::iso("CNY").unwrap();
    store
        .create_transfers(vec![TransferRequest::single(id("late"), id("a0"), id("a1"), 5, cny.code())])
        .unwrap();
    assert!(matches!(store.inclusion_proof_for_transfer("late", None), Err(Error::NotCheckpointed { .. })));
    store.checkpoint_now().unwrap();
    store.inclusion_proof_for_transfer("late", None).unwrap().verify(&store.public_key().unwrap()).unwrap();
    // Switched off: every call says so.
    let off_dir = tempfile::tempdir().unwrap();
    let off = open(off_dir.path(), StoreOptions { verifiable: false, ..Default::default() });
    assert_eq!(off.latest_checkpoint(), Err(Error::Disabled));
    assert_eq!(off.public_key(), Err(Error::Disabled));
    assert!(!off_dir.path().join(v::KEY_FILE).exists());
}

#[test]
fn checkpoints_are_made_by_count_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        StoreOptions { checkpoint_every_entries: 10, checkpoint_every_ms: 0, ..Default::default() },
    );
    fill(&store, &[(25, false)]);
    let sizes: Vec<u64> = store.checkpoints().unwrap().iter().map(|c| c.size).collect();
    // 4 account entries, then 25 transfers in one group commit: a checkpoint after that group (29
    // entries since the last), and nothing new for checkpoint_now.
    assert_eq!(sizes, vec![29]);
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        StoreOptions { checkpoint_every_entries: 0, checkpoint_every_ms: 20, ..Default::default() },
    );
    let cny = Currency::iso("CNY").unwrap();
    store.create_accounts(vec![NewAccount::new(id("a"), cny)]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.latest_checkpoint().is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(store.latest_checkpoint().unwrap().size, 1);
}

#[test]
fn restart_rebuilds_the_tree_and_later_checkpoints_extend_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("witness.log");
    let options = StoreOptions { witness_file: Some(witness.clone()), ..manual_options() };
    // A tree reserved for fewer entries than it gets grows past its reservation.
    let store = open(dir.path(), StoreOptions { journal_capacity_entries: 8, ..options.clone() });
    let ids = fill(&store, &[(10, true), (7, false)]);
    let first = store.latest_checkpoint().unwrap();
    let key = store.public_key().unwrap();
    drop(store); // snapshot at shutdown

    for snapshot in [true, false] {
        if !snapshot {
            std::fs::remove_file(dir.path().join(puhui_journal::snapshot::SNAPSHOT_FILE)).unwrap();
        }
        // A loaded tree (from the tree file, or rebuilt) reserved for more entries than it has.
        let store = open(dir.path(), StoreOptions { journal_capacity_entries: 64, ..options.clone() });
        assert!(store.open_report().merkle_load.is_some());
        assert_eq!(store.open_report().merkle_tree_file_error, None);
        assert_eq!(store.public_key().unwrap(), key, "the key survives restarts");
        assert_eq!(store.latest_checkpoint().unwrap(), first.clone());
        let p = store.inclusion_proof_for_transfer(&ids[3], None).unwrap();
        p.verify(&key).unwrap();
        drop(store);
    }
    // A damaged tree file is ignored: the tree is rebuilt from the journal.
    let tree_file = dir.path().join(v::tree_file::TREE_FILE);
    let mut bytes = std::fs::read(&tree_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tree_file, bytes).unwrap();
    let store = open(dir.path(), options.clone());
    assert!(store.open_report().merkle_tree_file_error.is_some());
    store.inclusion_proof_for_transfer(&ids[0], None).unwrap().verify(&key).unwrap();
    drop(store);
    let store = open(dir.path(), options.clone());
    assert_eq!(store.open_report().merkle_tree_file_error, None);
    let cny = Currency::iso("CNY").unwrap();
    store
        .create_transfers(vec![TransferRequest::single(id("after"), id("a0"), id("a2"), 3, cny.code())])
        .unwrap();
    let later = store.checkpoint_now().unwrap();
    assert_eq!(later.size, first.size + 1);
    store.consistency(first.size, later.size).unwrap().verify(&key).unwrap();
    drop(store);
    // The witness holds every checkpoint.
    let witnessed: Vec<Checkpoint> = v::checkpoint::read_checkpoints(&witness).unwrap();
    let stored = v::audit::checkpoints(dir.path()).unwrap();
    assert_eq!(witnessed, stored);
    let report = v::audit::audit(dir.path(), Some(&key), Some(&witness)).unwrap();
    assert_eq!((report.checkpoints, report.witnessed), (stored.len(), stored.len()));
}

#[test]
fn a_journal_cut_behind_its_checkpoints_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), manual_options());
    fill(&store, &[(10, false), (10, false)]);
    drop(store);
    // Cut the last frame (whole): the chain alone cannot tell, the checkpoint can.
    let journal = dir.path().join(puhui_store::JOURNAL_FILE);
    let bytes = std::fs::read(&journal).unwrap();
    // The last frame is the one holding the last entry: find its header by scanning entries again.
    let mut last_frame_start = 0u64;
    let mut expected_offset = None;
    puhui_journal::scan(&journal, |e| {
        if expected_offset != Some(e.offset) {
            last_frame_start = e.offset - puhui_journal::frame::FRAME_HEADER_BYTES as u64;
        }
        expected_offset = Some(e.offset + (puhui_journal::frame::ENTRY_OVERHEAD_BYTES + e.body.len()) as u64);
        Ok(())
    })
    .unwrap();
    std::fs::write(&journal, &bytes[..last_frame_start as usize]).unwrap();
    std::fs::remove_file(dir.path().join(puhui_journal::snapshot::SNAPSHOT_FILE)).unwrap();
    match EmbeddedStore::open_with(dir.path(), Arc::new(ManualClock::new(1)), manual_options()) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("entries were removed"), "{why}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a truncated journal was accepted"),
    }
    // Without the verifiable journal the cut is invisible to start-up: that is what checkpoints add.
    let store = open(dir.path(), StoreOptions { verifiable: false, ..Default::default() });
    drop(store);
    let _ = PublicKey::load(dir.path()).unwrap();
}
