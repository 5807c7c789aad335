//! The verifiable journal through the real binary: proof files written by `journal proof` and
//! `journal consistency` verify offline with `journal verify-proof` (and tampered ones do not);
//! `journal verify` checks the stored checkpoints, and with `--witness` catches a journal that was
//! rewritten, re-hashed and re-signed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use puhui_ledger::{Currency, Id, NewAccount, TransferRequest};
use puhui_store::verifiable::{self as v, NodeKey};
use puhui_store::{EmbeddedStore, LedgerStore, StoreOptions, JOURNAL_FILE};

mod common;
use common::{resign_checkpoints, rewrite_and_rehash};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn puhui(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_puhui")).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A data directory with accounts and 3 batches of transfers, a checkpoint after each batch, every
/// checkpoint also witnessed into `witness.log` beside it (outside the data directory).
fn make(root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join("data");
    let witness = root.join("witness.log");
    let options = StoreOptions {
        checkpoint_every_entries: 0,
        checkpoint_every_ms: 0,
        witness_file: Some(witness.clone()),
        ..Default::default()
    };
    let store =
        EmbeddedStore::open_with(&dir, std::sync::Arc::new(puhui_store::SystemClock), options).unwrap();
    let cny = Currency::iso("CNY").unwrap();
    store.create_accounts((0..4).map(|i| NewAccount::new(id(&format!("a{i}")), cny)).collect()).unwrap();
    for b in 0..3 {
        let batch = (0..10)
            .map(|i| {
                TransferRequest::single(
                    id(&format!("t{b}-{i}")),
                    id("a0"),
                    id(&format!("a{}", 1 + i % 3)),
                    100,
                    cny.code(),
                )
            })
            .collect();
        store.create_transfers(batch).unwrap();
        store.checkpoint_now().unwrap();
    }
    drop(store);
    (dir, witness)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn proofs_are_written_and_verified_offline() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = make(root.path());
    let public = dir.join(v::PUBLIC_KEY_FILE);
    let proof = root.path().join("t1-4.json");
    let out = puhui(&["journal", "proof", "--data-dir", s(&dir), "--transfer", "t1-4", "--out", s(&proof)]);
    assert!(out.status.success(), "{}", text(&out));

    // A partner with only the proof file and the public key.
    let out = puhui(&["journal", "verify-proof", s(&proof), "--public-key", s(&public)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("proof OK") && text(&out).contains("t1-4"), "{}", text(&out));
    let hex_key = std::fs::read_to_string(&public).unwrap();
    let out = puhui(&["journal", "verify-proof", s(&proof), "--public-key", hex_key.trim()]);
    assert!(out.status.success(), "{}", text(&out));

    // Against an older checkpoint (size 14: accounts + the first batch): t1-4 is not in it.
    let out = puhui(&["journal", "proof", "--data-dir", s(&dir), "--transfer", "t1-4", "--checkpoint", "14"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not covered"), "{}", text(&out));
    let old = root.path().join("t0-2.json");
    let out = puhui(&[
        "journal",
        "proof",
        "--data-dir",
        s(&dir),
        "--transfer",
        "t0-2",
        "--checkpoint",
        "14",
        "--out",
        s(&old),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(puhui(&["journal", "verify-proof", s(&old), "--public-key", s(&public)]).status.success());

    // Tampered files fail with exit 1 and say why.
    let json = std::fs::read_to_string(&proof).unwrap();
    let v::ProofFile::Inclusion(parsed) = v::ProofFile::parse(&json).unwrap() else {
        panic!("not inclusion")
    };
    let leaf = v::hex::encode(&parsed.leaf);
    let mut tampered_leaf = leaf.clone();
    let last = tampered_leaf.pop().unwrap();
    tampered_leaf.push(if last == '0' { '1' } else { '0' });
    let size = parsed.checkpoint.size;
    for (what, bad) in [
        ("leaf", json.replace(&leaf, &tampered_leaf)),
        ("size", json.replace(&format!("\"size\": {size}"), &format!("\"size\": {}", size + 1))),
        ("garbage", "{ not json".to_string()),
        ("type", json.replace("inclusion-proof", "other-proof")),
    ] {
        assert_ne!(bad, json, "{what}");
        let f = root.path().join(format!("bad-{what}.json"));
        std::fs::write(&f, bad).unwrap();
        let out = puhui(&["journal", "verify-proof", s(&f), "--public-key", s(&public)]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(text(&out).contains("proof BAD"), "{what}: {}", text(&out));
    }
    // The wrong key, a missing file, a malformed key: exit 1.
    let other = NodeKey::from_seed([3; 32]).public_key().to_hex();
    let out = puhui(&["journal", "verify-proof", s(&proof), "--public-key", &other]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("key"), "{}", text(&out));
    let out = puhui(&["journal", "verify-proof", "/nonexistent.json", "--public-key", s(&public)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = puhui(&["journal", "verify-proof", s(&proof), "--public-key", "xyz"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Consistency between the first and the last checkpoint.
    let cons = root.path().join("cons.json");
    let out = puhui(&[
        "journal",
        "consistency",
        "--data-dir",
        s(&dir),
        "--from",
        "14",
        "--to",
        "34",
        "--out",
        s(&cons),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = puhui(&["journal", "verify-proof", s(&cons), "--public-key", s(&public)]);
    assert!(out.status.success() && text(&out).contains("extends"), "{}", text(&out));
    let out = puhui(&["journal", "consistency", "--data-dir", s(&dir), "--from", "15", "--to", "34"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no checkpoint of tree size 15"), "{}", text(&out));

    // The whole journal and its checkpoints verify.
    let out = puhui(&["journal", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("checkpoints OK: 3 stored"), "{}", text(&out));
}

#[test]
fn rewrite_and_rehash_is_caught_by_checkpoints_and_by_witnessed_ones_even_when_re_signed() {
    let root = tempfile::tempdir().unwrap();
    let (dir, witness) = make(root.path());
    let victim = 20; // a transfer of the second batch
    rewrite_and_rehash(&dir, victim);

    // The hash chain and the replay are happy: the forgery is self-consistent…
    let journal_only = puhui_journal::verify(&dir.join(JOURNAL_FILE));
    assert!(journal_only.is_ok(), "the forged journal should pass the chain check");
    // …but the stored checkpoints no longer match.
    let out = puhui(&["journal", "verify", "--data-dir", s(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("checkpoints BAD") && text(&out).contains("history was rewritten"),
        "{}",
        text(&out)
    );
    // The node refuses to start on it.
    assert!(matches!(EmbeddedStore::open(&dir), Err(puhui_store::StoreError::Corrupt(_))));

    // The operator also re-signs its checkpoints (it has the key): the data directory alone now
    // verifies…
    resign_checkpoints(&dir);
    let out = puhui(&["journal", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out));
    // …but a witness holds the checkpoints it published before the rewrite.
    let out = puhui(&["journal", "verify", "--data-dir", s(&dir), "--witness", s(&witness)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("not consistent with the witnessed checkpoint of size 24"), "{said}");
    // The first witnessed checkpoint (size 14) predates the victim and still matches.
    assert!(!said.contains("size 14 "), "{said}");
}

#[test]
fn dropped_and_flipped_entries_are_caught_with_checkpoints_too() {
    // Dropping whole frames at the end leaves a valid chain: only checkpoints show the loss.
    let root = tempfile::tempdir().unwrap();
    let (dir, witness) = make(root.path());
    let journal = dir.join(JOURNAL_FILE);
    let mut last_frame = 0u64;
    let mut expected = None;
    puhui_journal::scan(&journal, |e| {
        if expected != Some(e.offset) {
            last_frame = e.offset - puhui_journal::frame::FRAME_HEADER_BYTES as u64;
        }
        expected = Some(e.offset + (puhui_journal::frame::ENTRY_OVERHEAD_BYTES + e.body.len()) as u64);
        Ok(())
    })
    .unwrap();
    let bytes = std::fs::read(&journal).unwrap();
    std::fs::write(&journal, &bytes[..last_frame as usize]).unwrap();
    let out = puhui(&["journal", "verify", "--data-dir", s(&dir), "--witness", s(&witness)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("entries were removed"), "{}", text(&out));

    // A flipped byte is named by the chain first (and verify stops there).
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = make(root.path());
    let journal = dir.join(JOURNAL_FILE);
    let mut bytes = std::fs::read(&journal).unwrap();
    // In the middle of the frames (the file goes on with the zeros the writer pre-wrote).
    let frames_len = puhui_journal::scan(&journal, |_| Ok(())).unwrap().valid_len_bytes;
    let at = frames_len as usize / 2;
    bytes[at] ^= 1;
    std::fs::write(&journal, &bytes).unwrap();
    let out = puhui(&["journal", "verify", "--data-dir", s(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("journal BAD"), "{}", text(&out));
    // And the proof tools refuse to work from a damaged journal.
    let out = puhui(&["journal", "proof", "--data-dir", s(&dir), "--transfer", "t0-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
