//! Known-answer tests: the RFC 6962 / Certificate Transparency reference vectors (the 8-leaf tree of
//! the CT C++/Go reference implementations), exhaustive cross-checks of small trees against the
//! naive RFC 6962 §2.1 definitions, and the error paths.

mod common;

use common::{distinct_leaves, h, hex, mth, naive_verify_consistency, naive_verify_inclusion};
use puhui_merkle::{
    consistency_proof_len, empty_root, inclusion_proof_len, leaf_hash, node_hash, root,
    root_from_inclusion_proof, root_from_leaf_hashes, verify_consistency, verify_inclusion, Hash, MerkleTree,
    ProofError, TreeError,
};

/// The leaf inputs of the CT reference test suites, hex-encoded.
const LEAF_INPUTS: [&str; 8] =
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

/// Roots of the trees of the first 1..=8 leaves.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Every complete-subtree hash of the 8-leaf tree, by level (level 0 = leaf hashes).
const NODE_HASHES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

/// (leaf index, tree size, audit path) from the CT reference suites (their 1-based leaf numbers
/// 1/8, 6/8, 3/3, 2/5 and 1/1 written here 0-based).
const INCLUSION: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (old size, new size, consistency proof) from the CT reference suites.
const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

fn inputs() -> Vec<Vec<u8>> {
    LEAF_INPUTS.iter().map(|s| common::unhex(s)).collect()
}

fn reference_tree() -> MerkleTree {
    let mut t = MerkleTree::new();
    for d in inputs() {
        t.append_data(&d);
    }
    t
}

fn hashes(v: &[&str]) -> Vec<Hash> {
    v.iter().map(|s| h(s)).collect()
}

fn leaf_hashes() -> Vec<Hash> {
    inputs().iter().map(|d| leaf_hash(d)).collect()
}

#[test]
fn empty_tree() {
    assert_eq!(hex(&empty_root()), EMPTY_ROOT);
    assert_eq!(root(Vec::<Vec<u8>>::new()), h(EMPTY_ROOT));
    assert_eq!(mth(&[]), h(EMPTY_ROOT));
    let t = MerkleTree::new();
    assert!(t.is_empty());
    assert_eq!(t.size(), 0);
    assert_eq!(t.root(), h(EMPTY_ROOT));
    assert_eq!(t.root_at(0), Ok(h(EMPTY_ROOT)));
    assert_eq!(t.consistency_proof(0, 0), Ok(vec![]));
}

#[test]
fn reference_node_hashes() {
    let l = leaf_hashes();
    for (i, want) in NODE_HASHES[0].iter().enumerate() {
        assert_eq!(hex(&l[i]), *want, "leaf {i}");
        assert_eq!(hex(&common::naive_leaf(&inputs()[i])), *want, "naive leaf {i}");
    }
    for level in 1..4 {
        for (i, want) in NODE_HASHES[level].iter().enumerate() {
            let below = NODE_HASHES[level - 1];
            let got = node_hash(&h(below[2 * i]), &h(below[2 * i + 1]));
            assert_eq!(hex(&got), *want, "level {level} index {i}");
            let w = 1 << level;
            assert_eq!(hex(&mth(&l[i * w..(i + 1) * w])), *want);
        }
    }
}

#[test]
fn reference_roots() {
    let data = inputs();
    let l = leaf_hashes();
    let full = reference_tree();
    let mut growing = MerkleTree::new();
    for n in 1..=8 {
        let want = h(ROOTS[n - 1]);
        assert_eq!(root(&data[..n]), want, "root() of {n}");
        assert_eq!(root_from_leaf_hashes(l[..n].iter().copied()), want);
        assert_eq!(mth(&l[..n]), want, "naive MTH of {n}");
        assert_eq!(full.root_at(n as u64), Ok(want), "root_at({n})");
        growing.append(l[n - 1]);
        assert_eq!(growing.root(), want, "root after {n} appends");
    }
    assert_eq!(full.root(), h(ROOTS[7]));
    assert_eq!(full.root_at(0), Ok(h(EMPTY_ROOT)));
}

#[test]
fn reference_inclusion_proofs() {
    let t = reference_tree();
    let l = leaf_hashes();
    for (index, size, want) in INCLUSION {
        let want = hashes(want);
        let got = t.inclusion_proof(index, size).unwrap();
        assert_eq!(got, want, "inclusion_proof({index}, {size})");
        assert_eq!(common::path(index as usize, &l[..size as usize]), want, "naive PATH({index}, D[{size}])");
        assert_eq!(inclusion_proof_len(index, size), Some(want.len()));
        let root = h(ROOTS[size as usize - 1]);
        verify_inclusion(&l[index as usize], index, size, &want, &root).unwrap();
        assert_eq!(root_from_inclusion_proof(&l[index as usize], index, size, &want), Ok(root));
        // Any other leaf at that position fails.
        let other = leaf_hash(b"not a reference leaf");
        assert_eq!(verify_inclusion(&other, index, size, &want, &root), Err(ProofError::RootMismatch));
    }
}

#[test]
fn reference_consistency_proofs() {
    let t = reference_tree();
    let l = leaf_hashes();
    for (old, new, want) in CONSISTENCY {
        let want = hashes(want);
        assert_eq!(t.consistency_proof(old, new).unwrap(), want, "consistency_proof({old}, {new})");
        assert_eq!(common::proof(old as usize, &l[..new as usize]), want, "naive PROOF({old}, D[{new}])");
        assert_eq!(consistency_proof_len(old, new), Some(want.len()));
        let (ro, rn) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        verify_consistency(old, new, &ro, &rn, &want).unwrap();
        assert!(naive_verify_consistency(old, new, &ro, &rn, &want));
    }
}

/// Every (index, size) and every (old, new) of the reference tree against the naive definitions,
/// and every proof verifies against the reference roots.
#[test]
fn reference_tree_exhaustive() {
    let t = reference_tree();
    let l = leaf_hashes();
    for size in 1..=8u64 {
        let root = h(ROOTS[size as usize - 1]);
        for index in 0..size {
            let p = t.inclusion_proof(index, size).unwrap();
            assert_eq!(p, common::path(index as usize, &l[..size as usize]));
            verify_inclusion(&l[index as usize], index, size, &p, &root).unwrap();
        }
        for old in 1..=size {
            let p = t.consistency_proof(old, size).unwrap();
            if old < size {
                assert_eq!(p, common::proof(old as usize, &l[..size as usize]));
            } else {
                assert!(p.is_empty());
            }
            verify_consistency(old, size, &h(ROOTS[old as usize - 1]), &root, &p).unwrap();
        }
    }
}

/// Every tree of 1..=70 distinct leaves: roots at every historical size, every audit path and
/// every consistency proof equal the naive RFC 6962 definitions and verify (both verifiers).
#[test]
fn small_trees_exhaustive_against_naive_definitions() {
    const N: usize = 70;
    let l = distinct_leaves(N);
    let t = MerkleTree::from_leaf_hashes(l.iter().copied());
    let roots: Vec<Hash> = (0..=N).map(|n| mth(&l[..n])).collect();
    for (n, want) in roots.iter().enumerate() {
        assert_eq!(t.root_at(n as u64), Ok(*want), "root_at({n})");
    }
    for n in 1..=N {
        let d = &l[..n];
        for (m, leaf) in d.iter().enumerate() {
            let p = t.inclusion_proof(m as u64, n as u64).unwrap();
            assert_eq!(p, common::path(m, d), "PATH({m}, D[{n}])");
            assert_eq!(inclusion_proof_len(m as u64, n as u64), Some(p.len()));
            verify_inclusion(leaf, m as u64, n as u64, &p, &roots[n]).unwrap();
            assert!(naive_verify_inclusion(leaf, m as u64, n as u64, &p, &roots[n]));
        }
        for m in 0..=n {
            let p = t.consistency_proof(m as u64, n as u64).unwrap();
            if 0 < m && m < n {
                assert_eq!(p, common::proof(m, d), "PROOF({m}, D[{n}])");
            } else {
                assert!(p.is_empty());
            }
            assert_eq!(consistency_proof_len(m as u64, n as u64), Some(p.len()));
            verify_consistency(m as u64, n as u64, &roots[m], &roots[n], &p).unwrap();
            assert!(naive_verify_consistency(m as u64, n as u64, &roots[m], &roots[n], &p));
        }
    }
}

#[test]
fn tree_errors() {
    let t = reference_tree();
    assert_eq!(t.root_at(9), Err(TreeError::SizeBeyondTree { size: 9, tree_size: 8 }));
    assert_eq!(t.inclusion_proof(0, 9), Err(TreeError::SizeBeyondTree { size: 9, tree_size: 8 }));
    assert_eq!(t.inclusion_proof(5, 5), Err(TreeError::IndexOutOfRange { index: 5, size: 5 }));
    assert_eq!(t.inclusion_proof(0, 0), Err(TreeError::IndexOutOfRange { index: 0, size: 0 }));
    assert_eq!(t.consistency_proof(3, 9), Err(TreeError::SizeBeyondTree { size: 9, tree_size: 8 }));
    assert_eq!(t.consistency_proof(5, 4), Err(TreeError::SizeOrder { old_size: 5, new_size: 4 }));
    assert_eq!(t.consistency_proof(0, 8), Ok(vec![]));
    assert_eq!(t.consistency_proof(8, 8), Ok(vec![]));
    assert_eq!(
        t.inclusion_proof(5, 5).unwrap_err().to_string(),
        "leaf index 5 is out of range for tree size 5"
    );
    assert_eq!(t.root_at(9).unwrap_err().to_string(), "tree size 9 is beyond the tree's current size 8");
    assert_eq!(
        t.consistency_proof(5, 4).unwrap_err().to_string(),
        "old tree size 5 is larger than new tree size 4"
    );
    assert_eq!(t.leaf(7), Some(h(NODE_HASHES[0][7])));
    assert_eq!(t.leaf(8), None);
    assert_eq!(t.leaf(u64::MAX), None);
    assert_eq!(t.leaf_hashes(), &leaf_hashes()[..]);
}

#[test]
fn verifier_errors() {
    let l = leaf_hashes();
    let r = |n: usize| h(ROOTS[n - 1]);
    let p58 = hashes(INCLUSION[2].2);
    assert_eq!(
        verify_inclusion(&l[5], 8, 8, &p58, &r(8)),
        Err(ProofError::IndexOutOfRange { index: 8, size: 8 })
    );
    assert_eq!(
        verify_inclusion(&l[0], 0, 0, &[], &h(EMPTY_ROOT)),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        verify_inclusion(&l[5], 5, 8, &p58[..2], &r(8)),
        Err(ProofError::WrongProofLength { expected: 3, actual: 2 })
    );
    assert_eq!(verify_inclusion(&l[5], 5, 8, &p58, &r(7)), Err(ProofError::RootMismatch));
    assert_eq!(verify_inclusion(&l[5], 4, 8, &p58, &r(8)), Err(ProofError::RootMismatch));
    // Single-leaf tree: the root is the leaf hash, the proof is empty.
    verify_inclusion(&l[0], 0, 1, &[], &r(1)).unwrap();
    assert_eq!(verify_inclusion(&l[1], 0, 1, &[], &r(1)), Err(ProofError::RootMismatch));

    let c68 = hashes(CONSISTENCY[2].2);
    verify_consistency(6, 8, &r(6), &r(8), &c68).unwrap();
    assert_eq!(
        verify_consistency(8, 6, &r(8), &r(6), &c68),
        Err(ProofError::SizeOrder { old_size: 8, new_size: 6 })
    );
    assert_eq!(verify_consistency(6, 8, &r(5), &r(8), &c68), Err(ProofError::OldRootMismatch));
    assert_eq!(verify_consistency(6, 8, &r(6), &r(7), &c68), Err(ProofError::NewRootMismatch));
    assert_eq!(
        verify_consistency(6, 8, &r(6), &r(8), &[]),
        Err(ProofError::WrongProofLength { expected: 3, actual: 0 })
    );
    let mut longer = c68.clone();
    longer.push(c68[0]);
    assert_eq!(
        verify_consistency(6, 8, &r(6), &r(8), &longer),
        Err(ProofError::WrongProofLength { expected: 3, actual: 4 })
    );
    // Equal sizes: empty proof and equal roots.
    verify_consistency(5, 5, &r(5), &r(5), &[]).unwrap();
    assert_eq!(verify_consistency(5, 5, &r(5), &r(6), &[]), Err(ProofError::NewRootMismatch));
    assert_eq!(
        verify_consistency(5, 5, &r(5), &r(5), &c68[..1]),
        Err(ProofError::WrongProofLength { expected: 0, actual: 1 })
    );
    // From the empty tree: empty proof, and the old root must be the empty root.
    verify_consistency(0, 8, &h(EMPTY_ROOT), &r(8), &[]).unwrap();
    verify_consistency(0, 0, &h(EMPTY_ROOT), &h(EMPTY_ROOT), &[]).unwrap();
    assert_eq!(verify_consistency(0, 8, &r(1), &r(8), &[]), Err(ProofError::OldRootMismatch));
    assert_eq!(
        verify_consistency(0, 8, &h(EMPTY_ROOT), &r(8), &c68[..1]),
        Err(ProofError::WrongProofLength { expected: 0, actual: 1 })
    );
}

/// As in RFC 6962, the root does not commit to the tree size: the audit path of leaf 2 in the
/// 3-leaf tree, `[MTH(D[0:2])]`, has the same shape as that of leaf 1 in a 2-leaf tree, so both
/// verifiers accept it for (1, 2) against the 3-leaf root. Callers must take the size from the
/// same signed tree head as the root; this test pins the behaviour so that it stays documented.
#[test]
fn root_does_not_commit_to_size() {
    let l = leaf_hashes();
    let p = hashes(INCLUSION[3].2); // (2, 3)
    let r3 = h(ROOTS[2]);
    verify_inclusion(&l[2], 2, 3, &p, &r3).unwrap();
    verify_inclusion(&l[2], 1, 2, &p, &r3).unwrap();
    assert!(naive_verify_inclusion(&l[2], 1, 2, &p, &r3));
    // A different index at the right size is always rejected.
    assert_eq!(
        verify_inclusion(&l[2], 0, 3, &p, &r3),
        Err(ProofError::WrongProofLength { expected: 2, actual: 1 })
    );
}

#[test]
fn construction_paths_agree() {
    let l = distinct_leaves(1000);
    let a = MerkleTree::from_leaf_hashes(l.iter().copied());
    let b: MerkleTree = l.iter().copied().collect();
    let mut c = MerkleTree::with_capacity(1000);
    c.extend(l.iter().copied());
    let mut d = MerkleTree::default();
    for (i, x) in l.iter().enumerate() {
        assert_eq!(d.append(*x), i as u64);
    }
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
    assert_eq!(a.root(), mth(&l));
    assert_eq!(a.size(), 1000);
    assert!(a.heap_bytes() >= 2 * 999 * 32);
}

/// A larger tree (2^16 + 3 leaves): spot-check proofs at historical sizes around powers of two.
#[test]
fn larger_tree_spot_checks() {
    let n = (1usize << 16) + 3;
    let l = distinct_leaves(n);
    let t = MerkleTree::from_leaf_hashes(l.iter().copied());
    let sizes = [1usize, 2, 3, 4095, 4096, 4097, 40_000, 65_535, 65_536, 65_537, n];
    let roots: Vec<Hash> = sizes.iter().map(|&s| root_from_leaf_hashes(l[..s].iter().copied())).collect();
    for (si, &size) in sizes.iter().enumerate() {
        assert_eq!(t.root_at(size as u64), Ok(roots[si]));
        for index in [0, size / 3, size / 2, size - 1] {
            let p = t.inclusion_proof(index as u64, size as u64).unwrap();
            assert!(p.len() <= 17);
            verify_inclusion(&l[index], index as u64, size as u64, &p, &roots[si]).unwrap();
        }
        for (oi, &old) in sizes[..=si].iter().enumerate() {
            let p = t.consistency_proof(old as u64, size as u64).unwrap();
            assert!(p.len() <= 2 * 17);
            verify_consistency(old as u64, size as u64, &roots[oi], &roots[si], &p).unwrap();
        }
    }
}
