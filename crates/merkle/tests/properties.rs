//! Property tests: for random tree sizes up to ~300 and random indices / old sizes, the tree's
//! proofs equal the naive RFC 6962 §2.1 definitions and verify, and every tampering (flipped byte,
//! wrong index or size, truncated or extended proof, wrong root) is rejected. Wrong *sizes* are
//! judged against the naive recursive verifier, because a root does not commit to its size and
//! a few (index, size) pairs share the same proof shape (see `root_does_not_commit_to_size`).

mod common;

use common::{distinct_leaves, mth, naive_verify_consistency, naive_verify_inclusion, H};
use proptest::prelude::*;
use puhui_merkle::{verify_consistency, verify_inclusion, MerkleTree, ProofError};

const MAX: u64 = 300;

/// A tree of `total` distinct leaves (`total` may exceed the size under test, to exercise
/// historical sizes) and its leaves.
fn tree(total: u64) -> (MerkleTree, Vec<H>) {
    let l = distinct_leaves(total as usize);
    (MerkleTree::from_leaf_hashes(l.iter().copied()), l)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// Audit paths at any (historical) size equal PATH(m, D[n]) and verify with both verifiers.
    #[test]
    fn inclusion_proof_is_rfc_path_and_verifies(
        size in 1..=MAX, extra in 0u64..40, idx in any::<u64>()
    ) {
        let index = idx % size;
        let (t, l) = tree(size + extra);
        let d = &l[..size as usize];
        let root = mth(d);
        prop_assert_eq!(t.root_at(size).unwrap(), root);
        let p = t.inclusion_proof(index, size).unwrap();
        prop_assert_eq!(&p, &common::path(index as usize, d));
        prop_assert_eq!(verify_inclusion(&l[index as usize], index, size, &p, &root), Ok(()));
        prop_assert!(naive_verify_inclusion(&l[index as usize], index, size, &p, &root));
    }

    /// Consistency proofs between any two (historical) sizes equal PROOF(m, D[n]) and verify.
    #[test]
    fn consistency_proof_is_rfc_proof_and_verifies(
        new in 1..=MAX, extra in 0u64..40, o in any::<u64>()
    ) {
        let old = o % (new + 1); // 0..=new
        let (t, l) = tree(new + extra);
        let (ro, rn) = (mth(&l[..old as usize]), mth(&l[..new as usize]));
        prop_assert_eq!(t.root_at(old).unwrap(), ro);
        let p = t.consistency_proof(old, new).unwrap();
        if 0 < old && old < new {
            prop_assert_eq!(&p, &common::proof(old as usize, &l[..new as usize]));
        } else {
            prop_assert!(p.is_empty());
        }
        prop_assert_eq!(verify_consistency(old, new, &ro, &rn, &p), Ok(()));
        prop_assert!(naive_verify_consistency(old, new, &ro, &rn, &p));
    }

    /// Flipping any bit of any proof hash, of the leaf hash or of the root breaks inclusion.
    #[test]
    fn inclusion_rejects_flipped_bytes(
        size in 2..=MAX, idx in any::<u64>(), elem in any::<usize>(), byte in 0usize..32,
        bit in 0u8..8, target in 0u8..3
    ) {
        let index = idx % size;
        let (t, l) = tree(size);
        let root = t.root();
        let mut p = t.inclusion_proof(index, size).unwrap();
        let mut leaf = l[index as usize];
        let mut r = root;
        match target {
            0 => { let e = elem % p.len(); p[e][byte] ^= 1 << bit; }
            1 => leaf[byte] ^= 1 << bit,
            _ => r[byte] ^= 1 << bit,
        }
        prop_assert_eq!(verify_inclusion(&leaf, index, size, &p, &r), Err(ProofError::RootMismatch));
    }

    /// Flipping any bit of any proof hash or of either root breaks consistency.
    #[test]
    fn consistency_rejects_flipped_bytes(
        new in 2..=MAX, o in any::<u64>(), elem in any::<usize>(), byte in 0usize..32,
        bit in 0u8..8, target in 0u8..3
    ) {
        let old = 1 + o % (new - 1); // 1..new
        let (t, _) = tree(new);
        let (mut ro, mut rn) = (t.root_at(old).unwrap(), t.root());
        let mut p = t.consistency_proof(old, new).unwrap();
        match target {
            0 => { let e = elem % p.len(); p[e][byte] ^= 1 << bit; }
            1 => ro[byte] ^= 1 << bit,
            _ => rn[byte] ^= 1 << bit,
        }
        let res = verify_consistency(old, new, &ro, &rn, &p);
        prop_assert!(
            matches!(res, Err(ProofError::OldRootMismatch | ProofError::NewRootMismatch)),
            "{:?}", res
        );
    }

    /// A proof with a hash removed, or with a hash inserted anywhere, is rejected.
    #[test]
    fn truncated_or_extended_proofs_are_rejected(
        size in 2..=MAX, idx in any::<u64>(), o in any::<u64>(), at in any::<usize>(),
        junk in any::<[u8; 32]>(), extend in any::<bool>()
    ) {
        let (t, l) = tree(size);
        let root = t.root();
        let index = idx % size;
        let old = 1 + o % (size - 1);
        let ro = t.root_at(old).unwrap();
        let mut ip = t.inclusion_proof(index, size).unwrap();
        let mut cp = t.consistency_proof(old, size).unwrap();
        let (ilen, clen) = (ip.len(), cp.len());
        if extend {
            ip.insert(at % (ilen + 1), junk);
            cp.insert(at % (clen + 1), junk);
        } else {
            ip.remove(at % ilen);
            cp.remove(at % clen);
        }
        prop_assert_eq!(
            verify_inclusion(&l[index as usize], index, size, &ip, &root),
            Err(ProofError::WrongProofLength { expected: ilen, actual: ip.len() })
        );
        prop_assert_eq!(
            verify_consistency(old, size, &ro, &root, &cp),
            Err(ProofError::WrongProofLength { expected: clen, actual: cp.len() })
        );
        // Appending the proof's own first or last hash again is rejected too.
        let mut again = t.inclusion_proof(index, size).unwrap();
        again.push(again[0]);
        prop_assert!(verify_inclusion(&l[index as usize], index, size, &again, &root).is_err());
    }

    /// The right size with a wrong index is always rejected; a wrong size (and any index) is
    /// rejected exactly when the naive recursive RFC 6962 verifier rejects it.
    #[test]
    fn inclusion_with_wrong_index_or_size(
        size in 1..=MAX, idx in any::<u64>(), other_idx in any::<u64>(),
        other_size in 1..=MAX + 10, same_size in any::<bool>()
    ) {
        let index = idx % size;
        let (t, l) = tree(size);
        let root = t.root();
        let leaf = l[index as usize];
        let p = t.inclusion_proof(index, size).unwrap();
        let size2 = if same_size { size } else { other_size };
        let index2 = other_idx % (size2 + 1); // may be == size2: out of range
        prop_assume!((index2, size2) != (index, size));
        let res = verify_inclusion(&leaf, index2, size2, &p, &root);
        if size2 == size {
            prop_assert!(res.is_err(), "wrong index {} accepted at size {}", index2, size);
        }
        prop_assert_eq!(res.is_ok(), naive_verify_inclusion(&leaf, index2, size2, &p, &root));
        if index2 >= size2 {
            prop_assert_eq!(res, Err(ProofError::IndexOutOfRange { index: index2, size: size2 }));
        }
    }

    /// Wrong old and/or new sizes are rejected exactly when the naive recursive RFC 6962
    /// verifier rejects them; swapped sizes are a `SizeOrder` error.
    #[test]
    fn consistency_with_wrong_sizes(
        new in 2..=MAX, o in any::<u64>(), o2 in any::<u64>(), new2 in 1..=MAX + 10,
        which in 0u8..3
    ) {
        let old = 1 + o % (new - 1);
        let (t, _) = tree(new);
        let (ro, rn) = (t.root_at(old).unwrap(), t.root());
        let p = t.consistency_proof(old, new).unwrap();
        let (old2, new2) = match which {
            0 => (o2 % (new + 1), new),   // wrong old size only
            1 => (old, new2),            // wrong new size only
            _ => (o2 % (new2 + 1), new2), // both
        };
        prop_assume!((old2, new2) != (old, new));
        let res = verify_consistency(old2, new2, &ro, &rn, &p);
        prop_assert_eq!(res.is_ok(), naive_verify_consistency(old2, new2, &ro, &rn, &p));
        if new2 == new {
            // With the right new size a wrong old size never verifies (also checked exhaustively
            // for every new size up to 300 while writing this crate).
            prop_assert!(res.is_err(), "old size {} accepted as {}", old, old2);
        }
        prop_assert_eq!(
            verify_consistency(new, old, &rn, &ro, &p),
            Err(ProofError::SizeOrder { old_size: new, new_size: old })
        );
    }
}

/// Over every (index, size) up to 24 and every wrong (index', size') up to 24, count how often a
/// proof verifies under wrong parameters: never at the right size, and only when the naive
/// recursive verifier agrees.
#[test]
fn wrong_parameters_exhaustive_small() {
    const N: u64 = 24;
    let (t, l) = tree(N);
    let mut accepted_wrong = 0usize;
    for size in 1..=N {
        let root = t.root_at(size).unwrap();
        for index in 0..size {
            let leaf = l[index as usize];
            let p = t.inclusion_proof(index, size).unwrap();
            for size2 in 1..=N {
                for index2 in 0..size2 {
                    if (index2, size2) == (index, size) {
                        continue;
                    }
                    let ok = verify_inclusion(&leaf, index2, size2, &p, &root).is_ok();
                    assert_eq!(
                        ok,
                        naive_verify_inclusion(&leaf, index2, size2, &p, &root),
                        "({index},{size}) as ({index2},{size2})"
                    );
                    assert!(!(ok && size2 == size), "({index},{size}) as {index2}");
                    accepted_wrong += ok as usize;
                }
            }
        }
    }
    // Only same-shape (index, size) pairs can collide; they exist but are rare.
    assert!(accepted_wrong > 0);
    eprintln!("inclusion proofs accepted under a different same-shape (index, size): {accepted_wrong}");
}

/// Over every (old, new) up to 24 and every wrong (old', new') up to 24, a consistency proof
/// verifies under wrong sizes exactly when the naive recursive verifier says so, and never with
/// the right new size.
#[test]
fn wrong_consistency_sizes_exhaustive_small() {
    const N: u64 = 24;
    let (t, _) = tree(N);
    let roots: Vec<H> = (0..=N).map(|s| t.root_at(s).unwrap()).collect();
    let (mut accepted_wrong, mut accepted_wrong_same_new) = (0usize, 0usize);
    for new in 1..=N {
        for old in 1..new {
            let (ro, rn) = (roots[old as usize], roots[new as usize]);
            let p = t.consistency_proof(old, new).unwrap();
            for new2 in 0..=N {
                for old2 in 0..=new2 {
                    if (old2, new2) == (old, new) {
                        continue;
                    }
                    let ok = verify_consistency(old2, new2, &ro, &rn, &p).is_ok();
                    assert_eq!(
                        ok,
                        naive_verify_consistency(old2, new2, &ro, &rn, &p),
                        "({old},{new}) as ({old2},{new2})"
                    );
                    accepted_wrong += ok as usize;
                    accepted_wrong_same_new += (ok && new2 == new) as usize;
                }
            }
        }
    }
    assert_eq!(accepted_wrong_same_new, 0);
    assert!(accepted_wrong > 0);
    eprintln!(
        "consistency proofs accepted under different same-shape sizes: {accepted_wrong} \
         (with the right new size: {accepted_wrong_same_new})"
    );
}
