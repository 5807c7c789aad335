//! Client-side proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2); needs no tree.

use std::fmt;

use crate::{empty_root, node_hash, Hash};

/// Why a proof did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size (RFC 9162 §2.1.3.2 step 1).
    IndexOutOfRange {
        /// The leaf index given.
        index: u64,
        /// The tree size given.
        size: u64,
    },
    /// The old tree size is larger than the new one.
    SizeOrder {
        /// The old (first) tree size given.
        old_size: u64,
        /// The new (second) tree size given.
        new_size: u64,
    },
    /// The proof has the wrong number of hashes for the given index and size(s); this includes an
    /// empty consistency proof where one is needed (RFC 9162 §2.1.4.2 step 1).
    WrongProofLength {
        /// The number of hashes the sizes call for.
        expected: usize,
        /// The number of hashes given.
        actual: usize,
    },
    /// The root rebuilt from the leaf hash and inclusion proof is not the root given.
    RootMismatch,
    /// The old root rebuilt from the consistency proof is not the old root given.
    OldRootMismatch,
    /// The new root rebuilt from the consistency proof is not the new root given (or, for equal
    /// sizes, the two roots given differ).
    NewRootMismatch,
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProofError::IndexOutOfRange { index, size } => {
                write!(f, "leaf index {index} is out of range for tree size {size}")
            }
            ProofError::SizeOrder { old_size, new_size } => {
                write!(f, "old tree size {old_size} is larger than new tree size {new_size}")
            }
            ProofError::WrongProofLength { expected, actual } => {
                write!(f, "proof has {actual} hashes but the tree size(s) call for {expected}")
            }
            ProofError::RootMismatch => f.write_str("inclusion proof does not lead to the given root hash"),
            ProofError::OldRootMismatch => {
                f.write_str("consistency proof does not lead to the given old root hash")
            }
            ProofError::NewRootMismatch => {
                f.write_str("consistency proof does not lead to the given new root hash")
            }
        }
    }
}

impl std::error::Error for ProofError {}

/// The number of hashes in the inclusion proof of leaf `index` in a tree of `size` leaves, or
/// `None` if `index >= size`. Useful to bound a proof before reading it off the wire.
pub fn inclusion_proof_len(index: u64, size: u64) -> Option<usize> {
    if index >= size {
        return None;
    }
    // Levels below the point where the paths to `index` and to the last leaf part (siblings there
    // are complete subtrees), plus one left sibling per set bit of `index` above that point.
    let inner = bit_len(index ^ (size - 1));
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    Some((inner + border) as usize)
}

/// The number of hashes in the consistency proof from a tree of `old_size` leaves to one of
/// `new_size` leaves, or `None` if `old_size > new_size`. 0 when `old_size` is 0 or equals
/// `new_size`.
pub fn consistency_proof_len(old_size: u64, new_size: u64) -> Option<usize> {
    if old_size > new_size {
        return None;
    }
    if old_size == 0 || old_size == new_size {
        return Some(0);
    }
    // The inclusion path of the old tree's last leaf, less the levels inside the largest complete
    // subtree that ends the old tree, plus that subtree's own hash unless it is the whole old tree.
    let inner = bit_len((old_size - 1) ^ (new_size - 1));
    let border = (old_size - 1).checked_shr(inner).unwrap_or(0).count_ones();
    let shift = old_size.trailing_zeros();
    let seed = u32::from(!old_size.is_power_of_two());
    Some((seed + (inner - shift) + border) as usize)
}

/// Rebuilds the root of a tree of `size` leaves from the hash of leaf `index` and its inclusion
/// proof (RFC 9162 §2.1.3.2 steps 1–5, without the final comparison).
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    // Step 1.
    let expected = inclusion_proof_len(index, size).ok_or(ProofError::IndexOutOfRange { index, size })?;
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength { expected, actual: proof.len() });
    }
    let wrong_length = ProofError::WrongProofLength { expected, actual: proof.len() };
    // Steps 2 and 3.
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5 (first half).
    if s_n != 0 {
        return Err(wrong_length);
    }
    Ok(r)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`,
/// given the audit path `proof` (deepest sibling first), per RFC 9162 §2.1.3.2.
///
/// `size` must come from the same authenticated source as `root` (e.g. a signed tree head): the
/// root does not commit to the size.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion_proof(leaf_hash, index, size, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree of `new_size` leaves with root `new_root` extends the tree of
/// `old_size` leaves with root `old_root`, given the consistency proof `proof`, per RFC 9162
/// §2.1.4.2.
///
/// Edge cases: for `old_size == new_size` the proof must be empty and the roots equal; for
/// `old_size == 0` the proof must be empty and `old_root` must be [`crate::empty_root`] (any tree
/// extends the empty tree).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let expected =
        consistency_proof_len(old_size, new_size).ok_or(ProofError::SizeOrder { old_size, new_size })?;
    let wrong_length = ProofError::WrongProofLength { expected, actual: proof.len() };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    if old_size == 0 {
        return if *old_root == empty_root() { Ok(()) } else { Err(ProofError::OldRootMismatch) };
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(ProofError::NewRootMismatch) };
    }
    // Step 1: an empty proof is rejected by the length check above (expected > 0 here).
    // Step 2: if the old size is a power of two, the old root is the first element of the path.
    let (seed, rest) = if old_size.is_power_of_two() { (*old_root, proof) } else { (proof[0], &proof[1..]) };
    // Step 3.
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    // Step 4.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5.
    let (mut f_r, mut s_r) = (seed, seed);
    // Step 6.
    for c in rest {
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(wrong_length);
    }
    if f_r != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if s_r != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

fn bit_len(x: u64) -> u32 {
    64 - x.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_lengths_of_reference_vectors() {
        assert_eq!(inclusion_proof_len(0, 1), Some(0));
        assert_eq!(inclusion_proof_len(0, 8), Some(3));
        assert_eq!(inclusion_proof_len(5, 8), Some(3));
        assert_eq!(inclusion_proof_len(2, 3), Some(1));
        assert_eq!(inclusion_proof_len(1, 5), Some(3));
        assert_eq!(inclusion_proof_len(5, 5), None);
        assert_eq!(consistency_proof_len(1, 1), Some(0));
        assert_eq!(consistency_proof_len(1, 8), Some(3));
        assert_eq!(consistency_proof_len(6, 8), Some(3));
        assert_eq!(consistency_proof_len(2, 5), Some(2));
        assert_eq!(consistency_proof_len(0, 5), Some(0));
        assert_eq!(consistency_proof_len(6, 5), None);
    }

    #[test]
    fn proof_lengths_at_the_top_of_the_range() {
        assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), Some(63));
        assert_eq!(inclusion_proof_len(0, u64::MAX), Some(64));
        assert_eq!(consistency_proof_len(1, u64::MAX), Some(64));
        assert_eq!(consistency_proof_len(u64::MAX - 1, u64::MAX), Some(64));
    }

    #[test]
    fn errors_display() {
        let all = [
            ProofError::IndexOutOfRange { index: 3, size: 3 },
            ProofError::SizeOrder { old_size: 4, new_size: 3 },
            ProofError::WrongProofLength { expected: 2, actual: 3 },
            ProofError::RootMismatch,
            ProofError::OldRootMismatch,
            ProofError::NewRootMismatch,
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.ends_with('.'), "{s}");
        }
        assert_eq!(
            ProofError::WrongProofLength { expected: 2, actual: 3 }.to_string(),
            "proof has 3 hashes but the tree size(s) call for 2"
        );
    }
}
