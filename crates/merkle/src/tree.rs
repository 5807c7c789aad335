//! The append-only tree: leaf hashes plus every complete subtree hash, level by level.

use std::fmt;

use crate::{empty_root, node_hash, split_point, Hash, HASH_LEN};

/// Why a [`MerkleTree`] could not answer a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeError {
    /// The requested tree size is larger than the tree has ever been.
    SizeBeyondTree {
        /// The size asked for.
        size: u64,
        /// The tree's current size.
        tree_size: u64,
    },
    /// The leaf index is not below the tree size it was asked against.
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size it was asked against.
        size: u64,
    },
    /// A consistency proof was asked from a larger size to a smaller one.
    SizeOrder {
        /// The older (first) size asked for.
        old_size: u64,
        /// The newer (second) size asked for.
        new_size: u64,
    },
    /// Levels given to [`MerkleTree::from_levels`] do not have the shape of a tree: level `h` must
    /// hold `size >> h` hashes, for every `h` up to the highest non-empty level.
    MalformedLevels {
        /// The first level whose length is wrong (or the first missing level).
        level: usize,
    },
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TreeError::SizeBeyondTree { size, tree_size } => {
                write!(f, "tree size {size} is beyond the tree's current size {tree_size}")
            }
            TreeError::IndexOutOfRange { index, size } => {
                write!(f, "leaf index {index} is out of range for tree size {size}")
            }
            TreeError::SizeOrder { old_size, new_size } => {
                write!(f, "old tree size {old_size} is larger than new tree size {new_size}")
            }
            TreeError::MalformedLevels { level } => {
                write!(f, "level {level} does not have the length the tree size calls for")
            }
        }
    }
}

impl std::error::Error for TreeError {}

/// An append-only Merkle tree of leaf hashes that keeps every complete subtree hash, so that roots,
/// inclusion proofs and consistency proofs for any current or historical size cost `O(log n)`.
///
/// `levels[h][i]` is the hash of the complete subtree over leaves `[i·2^h, (i+1)·2^h)`; see the
/// [crate documentation](crate) for the layout and the memory figure (about 64 bytes per leaf).
#[derive(Clone)]
pub struct MerkleTree {
    /// `levels[0]` are the leaf hashes; never empty (level 0 always exists).
    levels: Vec<Vec<Hash>>,
}

/// Trees are equal when their hashes are: levels reserved but still empty do not count.
impl PartialEq for MerkleTree {
    fn eq(&self, other: &Self) -> bool {
        let n = self.levels_count().max(other.levels_count());
        (0..n).all(|h| self.level(h) == other.level(h))
    }
}

impl Eq for MerkleTree {}

impl Default for MerkleTree {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root = self.root();
        let mut hex = String::with_capacity(2 * HASH_LEN);
        for b in root {
            hex.push_str(&format!("{b:02x}"));
        }
        f.debug_struct("MerkleTree").field("size", &self.size()).field("root", &hex).finish()
    }
}

impl MerkleTree {
    /// An empty tree (size 0, root [`empty_root`]).
    pub fn new() -> Self {
        MerkleTree { levels: vec![Vec::new()] }
    }

    /// An empty tree with room reserved for `leaves` leaves at every level, so that appending up
    /// to that many never reallocates and no spare capacity is left beyond the ~64 bytes per leaf.
    /// The memory is not touched: see [`MerkleTree::reserve_touched`] for that.
    pub fn with_capacity(leaves: u64) -> Self {
        let mut tree = MerkleTree::new();
        tree.reserve_levels(leaves);
        tree
    }

    /// Reserves room for `additional` more leaves at every level (exactly, no doubling), as
    /// [`MerkleTree::with_capacity`] does for a new tree.
    fn reserve_levels(&mut self, additional: u64) {
        let mut n = self.size().saturating_add(additional);
        let mut h = 0;
        while n > 0 {
            if self.levels.len() == h {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[h];
            level.reserve_exact(to_usize(n).saturating_sub(level.len()));
            n /= 2;
            h += 1;
        }
    }

    /// Reserves room for `additional` more leaves at every level, as [`MerkleTree::with_capacity`]
    /// does, and writes every reserved byte once, so that appending up to that many leaves neither
    /// reallocates nor takes a page fault on fresh memory. On a virtual machine whose host backs
    /// memory lazily, a first touch costs microseconds per page, and the faults of the tree's
    /// growth slowed the journal's writer on the other core (docs/BENCHMARKS.md, "The checkpoint
    /// cost is page faults"); paying them at start-up, in the spirit of static allocation, keeps
    /// them off the write path. Costs `64 × additional` bytes of resident memory at once.
    pub fn reserve_touched(&mut self, additional: u64) {
        self.reserve_levels(additional);
        for level in &mut self.levels {
            for spare in level.spare_capacity_mut() {
                spare.write([0; HASH_LEN]);
            }
        }
    }

    /// A tree of the given leaf hashes, in order.
    pub fn from_leaf_hashes<I: IntoIterator<Item = Hash>>(leaf_hashes: I) -> Self {
        let mut tree = MerkleTree::new();
        tree.extend(leaf_hashes);
        tree
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The hash of leaf `index`, if the tree has that many leaves.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        usize::try_from(index).ok().and_then(|i| self.levels[0].get(i).copied())
    }

    /// All leaf hashes, in order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        &self.levels[0]
    }

    /// The stored hashes of level `h` (level 0: the leaves; level `h`: every complete, aligned
    /// subtree of `2^h` leaves, `size >> h` of them), for saving the tree without rehashing.
    pub fn level(&self, h: usize) -> &[Hash] {
        self.levels.get(h).map_or(&[], |l| l.as_slice())
    }

    /// The number of non-empty levels (`floor(log2 size) + 1`; 0 for the empty tree).
    pub fn levels_count(&self) -> usize {
        (64 - self.size().leading_zeros()) as usize
    }

    /// A tree from levels saved with [`MerkleTree::level`] (levels `0..levels_count()`), without
    /// rehashing. Only the shape is checked: the caller vouches for the hashes (e.g. with a
    /// checksum over them, or by comparing roots with signed checkpoints).
    pub fn from_levels(mut levels: Vec<Vec<Hash>>) -> Result<Self, TreeError> {
        if levels.is_empty() {
            levels.push(Vec::new());
        }
        let size = levels[0].len() as u64;
        let needed = ((64 - size.leading_zeros()) as usize).max(1);
        while levels.len() > needed && levels.last().is_some_and(|l| l.is_empty()) {
            levels.pop();
        }
        if levels.len() != needed {
            return Err(TreeError::MalformedLevels { level: levels.len().min(needed) });
        }
        for (h, level) in levels.iter().enumerate() {
            if level.len() as u64 != size >> h {
                return Err(TreeError::MalformedLevels { level: h });
            }
        }
        Ok(MerkleTree { levels })
    }

    /// Heap bytes held by the tree (allocated capacity of every level), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.levels.capacity() * std::mem::size_of::<Vec<Hash>>()
            + self.levels.iter().map(|l| l.capacity() * HASH_LEN).sum::<usize>()
    }

    /// Appends a leaf hash (see [`crate::leaf_hash`]) and returns its index. Amortised `O(1)`:
    /// one node hash per append on average, at most `log2 n` for a single append.
    pub fn append(&mut self, leaf_hash: Hash) -> u64 {
        let index = self.size();
        self.levels[0].push(leaf_hash);
        let mut level = 0;
        let mut h = leaf_hash;
        // A level of even length has just completed a pair: hash it into the level above.
        while self.levels[level].len() & 1 == 0 {
            let len = self.levels[level].len();
            h = node_hash(&self.levels[level][len - 2], &h);
            level += 1;
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(h);
        }
        index
    }

    /// Appends leaf hashes in order; the same tree as [`MerkleTree::append`] of each, but the node
    /// hashes that complete at one level are independent and are computed two at a time
    /// ([`crate::node_hash_x2`]).
    pub fn append_batch(&mut self, leaf_hashes: &[Hash]) {
        self.levels[0].extend_from_slice(leaf_hashes);
        let mut level = 0;
        // Level h + 1 always holds exactly one node per complete pair of level h.
        loop {
            let (have, want) = (self.levels.get(level + 1).map_or(0, Vec::len), self.levels[level].len() / 2);
            if want == have {
                break;
            }
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::with_capacity(want));
            }
            let (below, above) = self.levels.split_at_mut(level + 1);
            let (children, parents) = (&below[level], &mut above[0]);
            let mut i = have;
            while i + 1 < want {
                let (a, b) = crate::node_hash_x2(
                    &children[2 * i],
                    &children[2 * i + 1],
                    &children[2 * i + 2],
                    &children[2 * i + 3],
                );
                parents.push(a);
                parents.push(b);
                i += 2;
            }
            if i < want {
                parents.push(node_hash(&children[2 * i], &children[2 * i + 1]));
            }
            level += 1;
        }
    }

    /// Appends a leaf by its data, hashing it with [`crate::leaf_hash`]; returns its index.
    pub fn append_data(&mut self, data: &[u8]) -> u64 {
        self.append(crate::leaf_hash(data))
    }

    /// The current root, `MTH(D[size])`.
    pub fn root(&self) -> Hash {
        self.range_hash(0, self.size())
    }

    /// The root the tree had when it had `size` leaves (`size <= self.size()`). `O(log n)`.
    pub fn root_at(&self, size: u64) -> Result<Hash, TreeError> {
        self.check_size(size)?;
        Ok(self.range_hash(0, size))
    }

    /// The audit path (RFC 6962 `PATH(index, D[size])`) of leaf `index` in the tree of the first
    /// `size` leaves, deepest sibling first; verify it with [`crate::verify_inclusion`]. `O(log n)`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        if index >= size {
            return Err(TreeError::IndexOutOfRange { index, size });
        }
        // Walk RFC 6962's recursion top-down, collecting the sibling at each split; the proof lists
        // them bottom-up. Only a right sibling can be incomplete, and once the walk has gone left
        // every later subtree is complete, so at most one `range_hash` call does any hashing.
        let mut proof = Vec::with_capacity(64);
        let (mut start, mut end) = (0u64, size);
        while end - start > 1 {
            let mid = start + split_point(end - start);
            if index < mid {
                proof.push(self.range_hash(mid, end));
                end = mid;
            } else {
                proof.push(self.range_hash(start, mid));
                start = mid;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    /// The consistency proof (RFC 6962 `PROOF(old_size, D[new_size])`) between the trees of the
    /// first `old_size` and the first `new_size` leaves; verify it with
    /// [`crate::verify_consistency`]. Empty when `old_size` is 0 or equal to `new_size`. `O(log n)`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(TreeError::SizeOrder { old_size, new_size });
        }
        let mut proof = Vec::with_capacity(64);
        if old_size == 0 || old_size == new_size {
            return Ok(proof);
        }
        // SUBPROOF(m, D[start:end], b) with m = old_size - start, walked top-down; siblings are
        // collected top first and the whole list is reversed at the end.
        let (mut start, mut end) = (0u64, new_size);
        let mut whole_old_tree = true; // RFC 6962's `b`
        while old_size != end {
            let mid = start + split_point(end - start);
            if old_size <= mid {
                proof.push(self.range_hash(mid, end));
                end = mid;
            } else {
                proof.push(self.range_hash(start, mid));
                start = mid;
                whole_old_tree = false;
            }
        }
        if !whole_old_tree {
            proof.push(self.range_hash(start, end));
        }
        proof.reverse();
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        let tree_size = self.size();
        if size > tree_size {
            Err(TreeError::SizeBeyondTree { size, tree_size })
        } else {
            Ok(())
        }
    }

    /// `MTH(D[start:end])` for `start <= end <= size()`, where `start` is a multiple of the smallest
    /// power of two `>= end - start` (true of every subtree RFC 6962's recursion visits). A complete
    /// subtree is one read; otherwise the right-fold of the complete subtrees given by the binary
    /// decomposition of the width: at most `log2 n` reads and hashes.
    fn range_hash(&self, start: u64, end: u64) -> Hash {
        let width = end - start;
        if width == 0 {
            return empty_root();
        }
        debug_assert!(end <= self.size());
        debug_assert_eq!(start % width.next_power_of_two(), 0, "unaligned range");
        if width.is_power_of_two() {
            return self.stored(width.trailing_zeros(), start);
        }
        // Smallest (rightmost) subtree first: MTH folds right-to-left.
        let mut rest = width;
        let mut pos = end;
        let mut acc: Option<Hash> = None;
        while rest != 0 {
            let level = rest.trailing_zeros();
            pos -= 1u64 << level;
            let h = self.stored(level, pos);
            acc = Some(match acc {
                None => h,
                Some(right) => node_hash(&h, &right),
            });
            rest &= rest - 1;
        }
        acc.expect("width > 0")
    }

    /// The stored hash of the complete subtree of `2^level` leaves starting at leaf `start`.
    #[inline]
    fn stored(&self, level: u32, start: u64) -> Hash {
        self.levels[level as usize][to_usize(start >> level)]
    }
}

impl Extend<Hash> for MerkleTree {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, iter: I) {
        for h in iter {
            self.append(h);
        }
    }
}

impl FromIterator<Hash> for MerkleTree {
    fn from_iter<I: IntoIterator<Item = Hash>>(iter: I) -> Self {
        MerkleTree::from_leaf_hashes(iter)
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("tree size exceeds the address space")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{leaf_hash, root_from_leaf_hashes};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn levels_hold_complete_subtrees() {
        let l = leaves(13);
        let t = MerkleTree::from_leaf_hashes(l.iter().copied());
        assert_eq!(t.levels.len(), 4);
        for (h, level) in t.levels.iter().enumerate() {
            assert_eq!(level.len(), 13 >> h);
            for (i, got) in level.iter().enumerate() {
                let w = 1usize << h;
                let want = root_from_leaf_hashes(l[i * w..(i + 1) * w].iter().copied());
                assert_eq!(*got, want, "level {h} index {i}");
            }
        }
    }

    #[test]
    fn with_capacity_does_not_reallocate() {
        let mut t = MerkleTree::with_capacity(1000);
        let before = t.heap_bytes();
        for h in leaves(1000) {
            t.append(h);
        }
        assert_eq!(t.heap_bytes(), before);
        // n + n/2 + ... < 2n hashes.
        assert!(before < 2 * 1000 * HASH_LEN + 65 * std::mem::size_of::<Vec<Hash>>());
    }

    #[test]
    fn reserve_touched_keeps_the_tree_and_does_not_reallocate() {
        for start in [0u64, 1, 5, 64, 100] {
            let all = leaves(start + 1000);
            let mut t = MerkleTree::from_leaf_hashes(all[..start as usize].iter().copied());
            let (root, plain) = (t.root(), t.clone());
            t.reserve_touched(1000);
            assert_eq!((t.root(), t.size()), (root, start), "start {start}");
            assert_eq!(t, plain, "reserved empty levels do not make trees differ");
            let reserved = t.heap_bytes();
            t.append_batch(&all[start as usize..start as usize + 500]);
            for leaf in &all[start as usize + 500..] {
                t.append(*leaf);
            }
            assert_eq!(t.heap_bytes(), reserved, "start {start}");
            assert_eq!(t, MerkleTree::from_leaf_hashes(all.iter().copied()));
        }
    }

    #[test]
    fn from_levels_round_trips_and_checks_the_shape() {
        for n in [0u64, 1, 2, 3, 7, 8, 13, 64, 100] {
            let t = MerkleTree::from_leaf_hashes(leaves(n));
            let levels: Vec<Vec<Hash>> = (0..t.levels_count()).map(|h| t.level(h).to_vec()).collect();
            let back = MerkleTree::from_levels(levels.clone()).unwrap();
            assert_eq!(back, t, "n={n}");
            assert_eq!(back.root(), t.root());
            if n >= 2 {
                let mut short = levels.clone();
                short.pop();
                assert!(matches!(MerkleTree::from_levels(short), Err(TreeError::MalformedLevels { .. })));
                let mut wrong = levels;
                wrong[1].push([0; 32]);
                assert_eq!(MerkleTree::from_levels(wrong), Err(TreeError::MalformedLevels { level: 1 }));
            }
        }
        let mut grown =
            MerkleTree::from_levels(vec![leaves(5)].into_iter().chain([vec![]]).collect::<Vec<_>>());
        assert!(grown.is_err());
        grown = MerkleTree::from_levels(Vec::new());
        assert_eq!(grown.unwrap().size(), 0);
    }

    #[test]
    fn batch_appends_build_the_same_tree_as_single_appends() {
        // Batch sizes that split pairs and levels every way, from trees of every small size.
        for start in 0u64..9 {
            for batch in [1usize, 2, 3, 4, 5, 7, 8, 17, 64, 100] {
                let (mut one, mut many) = (MerkleTree::new(), MerkleTree::new());
                let all = leaves(start + 3 * batch as u64);
                for leaf in &all[..start as usize] {
                    one.append(*leaf);
                    many.append(*leaf);
                }
                for chunk in all[start as usize..].chunks(batch) {
                    many.append_batch(chunk);
                }
                for leaf in &all[start as usize..] {
                    one.append(*leaf);
                }
                assert_eq!(many, one, "start {start}, batch {batch}");
                assert_eq!(many.root(), crate::root_from_leaf_hashes(all.iter().copied()));
            }
        }
    }

    #[test]
    fn two_lane_hashes_equal_single_ones() {
        let (a, b, c, d) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);
        assert_eq!(crate::node_hash_x2(&a, &b, &c, &d), (node_hash(&a, &b), node_hash(&c, &d)));
        assert_eq!(crate::leaf_hash_32_x2(&a, &b), (crate::leaf_hash(&a), crate::leaf_hash(&b)));
    }

    #[test]
    fn debug_is_short() {
        let t = MerkleTree::from_leaf_hashes(leaves(1000));
        let s = format!("{t:?}");
        assert!(s.starts_with("MerkleTree { size: 1000, root: \""), "{s}");
        assert!(s.len() < 120);
    }
}
