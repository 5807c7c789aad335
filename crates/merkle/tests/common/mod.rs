//! A naive, recursive transcription of RFC 6962 §2.1 (MTH, PATH, PROOF/SUBPROOF) and of the
//! matching recursive verifiers, written independently of the crate (it hashes with `sha2`
//! directly) to cross-check the tree, the RFC 9162 iterative verifiers and the reference vectors.
#![allow(dead_code)]

use sha2::{Digest, Sha256};

pub type H = [u8; 32];

pub fn sha256(parts: &[&[u8]]) -> H {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn naive_leaf(data: &[u8]) -> H {
    sha256(&[&[0u8], data])
}

pub fn naive_node(l: &H, r: &H) -> H {
    sha256(&[&[1u8], l, r])
}

/// The largest power of two strictly less than `n` (`n > 1`), by counting up.
pub fn k_of(n: usize) -> usize {
    assert!(n > 1);
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn mth(d: &[H]) -> H {
    match d.len() {
        0 => sha256(&[]),
        1 => d[0],
        n => {
            let k = k_of(n);
            naive_node(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

/// PATH(m, D[n]).
pub fn path(m: usize, d: &[H]) -> Vec<H> {
    let n = d.len();
    assert!(m < n);
    if n == 1 {
        return vec![];
    }
    let k = k_of(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for 0 < m <= n.
pub fn proof(m: usize, d: &[H]) -> Vec<H> {
    subproof(m, d, true)
}

fn subproof(m: usize, d: &[H], b: bool) -> Vec<H> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

/// Recursive inverse of PATH: rebuilds MTH from a leaf hash and a claimed path, consuming the path
/// from its end (the top-level sibling). `None` if the path has the wrong length.
fn rebuild_path(m: u64, n: u64, leaf: &H, p: &[H]) -> Option<H> {
    if n == 1 {
        return p.is_empty().then_some(*leaf);
    }
    let (sib, rest) = p.split_last()?;
    let k = k_of(n as usize) as u64;
    if m < k {
        Some(naive_node(&rebuild_path(m, k, leaf, rest)?, sib))
    } else {
        Some(naive_node(sib, &rebuild_path(m - k, n - k, leaf, rest)?))
    }
}

/// Naive inclusion verifier: accept iff the path rebuilds `root`.
pub fn naive_verify_inclusion(leaf: &H, m: u64, n: u64, p: &[H], root: &H) -> bool {
    m < n && rebuild_path(m, n, leaf, p).as_ref() == Some(root)
}

/// Recursive inverse of SUBPROOF: returns (MTH of the old part, MTH of the whole range).
fn rebuild_sub(m: u64, n: u64, b: bool, old_root: &H, p: &[H]) -> Option<(H, H)> {
    if m == n {
        return if b {
            p.is_empty().then_some((*old_root, *old_root))
        } else {
            (p.len() == 1).then(|| (p[0], p[0]))
        };
    }
    let (sib, rest) = p.split_last()?;
    let k = k_of(n as usize) as u64;
    if m <= k {
        let (o, h) = rebuild_sub(m, k, b, old_root, rest)?;
        Some((o, naive_node(&h, sib)))
    } else {
        let (o, h) = rebuild_sub(m - k, n - k, false, old_root, rest)?;
        Some((naive_node(sib, &o), naive_node(sib, &h)))
    }
}

/// Naive consistency verifier (same edge conventions as the crate: size 0 needs an empty proof and
/// the empty root, equal sizes need an empty proof and equal roots).
pub fn naive_verify_consistency(m: u64, n: u64, old_root: &H, new_root: &H, p: &[H]) -> bool {
    if m > n {
        return false;
    }
    if m == 0 {
        return p.is_empty() && *old_root == sha256(&[]);
    }
    match rebuild_sub(m, n, true, old_root, p) {
        Some((o, h)) => o == *old_root && h == *new_root,
        None => false,
    }
}

/// `n` distinct leaf hashes.
pub fn distinct_leaves(n: usize) -> Vec<H> {
    (0..n as u64).map(|i| naive_leaf(&i.to_be_bytes())).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() & 1, 0, "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

pub fn h(s: &str) -> H {
    unhex(s).try_into().expect("32-byte hash")
}

pub fn hex(h: &H) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
