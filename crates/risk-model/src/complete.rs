//! The complete-tree layout: a shallow forest padded to complete binary trees of one depth, with
//! implicit children and a per-row table that turns every missing-value rule into one comparison.
//!
//! See the crate documentation ("The flattened layout") for the design and why it is exact.

use crate::forest::{Forest, FEATURE_MASK, LEAF, LGBM_ZERO_THRESHOLD, NAN_LEFT, ZERO_LEFT};
use crate::Source;

/// How many trees a walk advances side by side, one level at a time. Measured on the 300-tree
/// depth-6 benchmark model: 16 is 6 % faster than 8 (more independent loads in flight), 4 is 11 %
/// slower (`cargo bench -p puhui-risk-model --bench predict`).
pub(crate) const LANES: usize = 16;

/// The deepest forest kept in the complete layout (a tree then takes 2^8 split and leaf slots).
pub(crate) const DEPTH_MAX: usize = 8;

/// The most padded slots (splits + leaves) per real node before the layout is not worth it.
const PADDING_PER_NODE_MAX: usize = 8;

/// Row-table sizes (entries, powers of two): the smallest that holds a model's columns is used.
const ROW_SMALL: usize = 256;
const ROW_MEDIUM: usize = 1024;
const ROW_LARGE: usize = 4096;

/// One split: go right iff `row[column] > threshold` (both order keys, see [`key`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Split {
    /// The threshold's order key, rewritten so that `>` is the library's comparison.
    pub(crate) threshold: u32,
    /// Index into the per-row table: the feature and the node's missing-value directions.
    pub(crate) column: u32,
}

/// The order key of a non-NaN `f32`: `key(a) < key(b)` iff `a < b`, with −0 read as +0 (the
/// two compare equal). Integer keys let a step be a compare and an add-with-carry.
pub(crate) fn key(x: f32) -> u32 {
    debug_assert!(!x.is_nan());
    let bits = (x + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The row-table key of a missing value that must go left: below every threshold's key.
const KEY_LEFT: u32 = 0;
/// The row-table key of a missing value that must go right: above every threshold's key.
const KEY_RIGHT: u32 = u32::MAX;

/// A forest of trees no deeper than [`DEPTH_MAX`], each padded to a complete binary tree of the
/// forest's depth `D` (`W = 2^D` slots of splits and of leaves per tree).
///
/// Tree `t`'s split `i` (heap order: the children of `i` are `2i + 1` and `2i + 2`) is
/// `splits[t·W + i]` for `i < W − 1` (slot `W − 1` is unused), and a walk that ends on heap
/// node `W − 1 + j` reads `leaves[t·W + j]`. A leaf shallower than `D` is copied into every leaf
/// slot below it (the padded splits above those copies are arbitrary, since every way leads to the
/// same value).
#[derive(Debug, Clone)]
pub(crate) struct Complete {
    /// `D`: every walk takes exactly this many steps.
    depth: usize,
    splits: Vec<Split>,
    leaves: Vec<f64>,
    source: Source,
    num_features: usize,
    /// Columns of the per-row table: `num_features` × 2 (XGBoost) or × 4 (LightGBM).
    columns: usize,
}

/// The largest `f32` strictly below `x` (`x` not NaN and not −∞; −∞ and NaN are returned as is).
pub(crate) fn f32_below(x: f32) -> f32 {
    if x.is_nan() || x == f32::NEG_INFINITY {
        return x;
    }
    if x == 0.0 {
        return -f32::from_bits(1);
    }
    let bits = x.to_bits();
    if x > 0.0 {
        f32::from_bits(bits - 1)
    } else {
        f32::from_bits(bits + 1)
    }
}

/// The largest `f32` not above `x` (for `x` above `f32::MAX`, `f32::MAX`; +∞ stays +∞).
pub(crate) fn f32_at_or_below(x: f64) -> f32 {
    let nearest = x as f32;
    if f64::from(nearest) > x {
        f32_below(nearest)
    } else {
        nearest
    }
}

impl Complete {
    /// The forest in the complete layout, or `None` when it does not fit: deeper than
    /// [`DEPTH_MAX`], too much padding, too many features for the row table, or a threshold the
    /// one-comparison rule cannot express (XGBoost −∞, LightGBM +∞, an XGBoost threshold that is
    /// not an `f32`). The general layout then scores it.
    pub(crate) fn build(forest: &Forest, source: Source, num_features: usize) -> Option<Complete> {
        let depth = forest.max_depth;
        if depth > DEPTH_MAX {
            return None;
        }
        let width = 1usize << depth;
        let trees = forest.roots.len();
        let slots = trees.checked_mul(2 * width)?;
        if slots > PADDING_PER_NODE_MAX * forest.num_nodes() + 2 * (1 << DEPTH_MAX) {
            return None;
        }
        let variants = match source {
            Source::XGBoost => 2,
            Source::LightGbm => 4,
        };
        let columns = num_features.checked_mul(variants)?;
        if columns > ROW_LARGE {
            return None;
        }
        let mut splits = vec![Split::default(); trees * width];
        let mut leaves = vec![0.0f64; trees * width];
        let mut stack: Vec<(usize, usize, usize)> = Vec::with_capacity(2 * DEPTH_MAX + 2);
        for (t, &root) in forest.roots.iter().enumerate() {
            let tree_splits = &mut splits[t * width..(t + 1) * width];
            let tree_leaves = &mut leaves[t * width..(t + 1) * width];
            stack.clear();
            stack.push((root as usize, 0, 0));
            // Each node of the tree is visited once: at most 2·W − 1 visits.
            let mut visits = 0usize;
            while let Some((n, heap, level)) = stack.pop() {
                visits += 1;
                if visits > 2 * width {
                    return None;
                }
                assert!(level <= depth);
                assert!(heap + 1 >= 1 << level && heap + 1 < 2 << level);
                let meta = *forest.meta.get(n)?;
                if meta & LEAF != 0 {
                    let span = 1usize << (depth - level);
                    let first = (heap + 1) * span - width;
                    let value = *forest.value.get(n)?;
                    tree_leaves[first..first + span].fill(value);
                    continue;
                }
                if level == depth {
                    // Deeper than the forest's depth: the flattening is inconsistent.
                    return None;
                }
                tree_splits[heap] = split(source, meta, *forest.value.get(n)?)?;
                let left = *forest.left.get(n)? as usize;
                stack.push((left + 1, 2 * heap + 2, level + 1));
                stack.push((left, 2 * heap + 1, level + 1));
            }
        }
        for s in &splits {
            assert!((s.column as usize) < columns.max(1));
            // KEY_RIGHT goes right at every split (and KEY_LEFT = 0 left, trivially).
            assert!(s.threshold < KEY_RIGHT);
        }
        Some(Complete { depth, splits, leaves, source, num_features, columns })
    }

    /// Approximate heap memory, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.splits.capacity() * std::mem::size_of::<Split>() + self.leaves.capacity() * 8
    }

    /// Calls `f` with each tree's leaf value for `x`, in tree order (see
    /// [`Forest::for_each_leaf`]).
    #[inline(always)]
    pub(crate) fn for_each_leaf(&self, x: &[f32], f: impl FnMut(f64)) {
        if self.columns <= ROW_SMALL {
            let mut row = [0u32; ROW_SMALL];
            self.fill_row(x, &mut row);
            self.walk_depth(&row, f);
        } else if self.columns <= ROW_MEDIUM {
            let mut row = [0u32; ROW_MEDIUM];
            self.fill_row(x, &mut row);
            self.walk_depth(&row, f);
        } else {
            let mut row = [0u32; ROW_LARGE];
            self.fill_row(x, &mut row);
            self.walk_depth(&row, f);
        }
    }

    /// Writes the per-row table: for each feature, its value as each missing-value direction
    /// sees it (a missing value becomes −∞ where it must go left and +∞ where it must go right).
    #[inline(always)]
    fn fill_row(&self, x: &[f32], row: &mut [u32]) {
        let missing = std::iter::repeat(f32::NAN);
        let values = x.iter().copied().chain(missing).take(self.num_features);
        const L: u32 = KEY_LEFT;
        const R: u32 = KEY_RIGHT;
        match self.source {
            Source::XGBoost => {
                // Column 2f + (NaN goes right).
                for (cell, v) in row.chunks_exact_mut(2).zip(values) {
                    let entry = if v.is_nan() { [L, R] } else { [key(v); 2] };
                    cell.copy_from_slice(&entry);
                }
            }
            Source::LightGbm => {
                // Column 4f + 2·(NaN goes right) + (zero goes right).
                for (cell, v) in row.chunks_exact_mut(4).zip(values) {
                    let entry = if v.is_nan() {
                        [L, L, R, R]
                    } else if f64::from(v).abs() <= LGBM_ZERO_THRESHOLD {
                        [L, R, L, R]
                    } else {
                        [key(v); 4]
                    };
                    cell.copy_from_slice(&entry);
                }
            }
        }
    }

    /// Dispatches to the walk compiled for the forest's depth.
    #[inline(always)]
    fn walk_depth<const N: usize>(&self, row: &[u32; N], f: impl FnMut(f64)) {
        match self.depth {
            0 => self.walk::<1, N>(row, f),
            1 => self.walk::<2, N>(row, f),
            2 => self.walk::<4, N>(row, f),
            3 => self.walk::<8, N>(row, f),
            4 => self.walk::<16, N>(row, f),
            5 => self.walk::<32, N>(row, f),
            6 => self.walk::<64, N>(row, f),
            7 => self.walk::<128, N>(row, f),
            8 => self.walk::<256, N>(row, f),
            // `build` never makes a deeper one.
            _ => {}
        }
    }

    /// Walks every tree of width `W` (= 2^depth), [`LANES`] at a time in lock step.
    ///
    /// A walk at level `k` is at split `2^k − 1 + j` (`j` < 2^k, its place in the level) and
    /// goes to `j' = 2j + went_right`: a compare and an add-with-carry; after the last level `j`
    /// is the leaf. Every index is masked to its array's power-of-two length, so no bounds check
    /// is needed; `build` guarantees the masks never change an index.
    #[inline(never)]
    fn walk<const W: usize, const N: usize>(&self, row: &[u32; N], mut f: impl FnMut(f64)) {
        debug_assert_eq!(W, 1 << self.depth);
        let depth = W.trailing_zeros();
        let mut split_groups = self.splits.chunks_exact(W * LANES);
        let mut leaf_groups = self.leaves.chunks_exact(W * LANES);
        for (splits, leaves) in (&mut split_groups).zip(&mut leaf_groups) {
            let mut at = [0usize; LANES];
            // One call per level with the level as a constant, so that its offset is folded into
            // the loads and the walk has no loop (`depth` is a constant here too).
            const _: () = assert!(DEPTH_MAX == 8);
            if depth > 0 {
                level::<0, W, N>(splits, row, &mut at);
            }
            if depth > 1 {
                level::<1, W, N>(splits, row, &mut at);
            }
            if depth > 2 {
                level::<2, W, N>(splits, row, &mut at);
            }
            if depth > 3 {
                level::<3, W, N>(splits, row, &mut at);
            }
            if depth > 4 {
                level::<4, W, N>(splits, row, &mut at);
            }
            if depth > 5 {
                level::<5, W, N>(splits, row, &mut at);
            }
            if depth > 6 {
                level::<6, W, N>(splits, row, &mut at);
            }
            if depth > 7 {
                level::<7, W, N>(splits, row, &mut at);
            }
            for (lane, &j) in at.iter().enumerate() {
                f(leaves[lane * W + (j & (W - 1))]);
            }
        }
        let splits = split_groups.remainder().chunks_exact(W);
        let leaves = leaf_groups.remainder().chunks_exact(W);
        for (splits, leaves) in splits.zip(leaves) {
            let mut j = 0usize;
            for level in 0..depth {
                let s = splits[((1usize << level) - 1).wrapping_add(j) & (W - 1)];
                let right = s.threshold < row[s.column as usize & (N - 1)];
                j = j.wrapping_add(j).wrapping_add(usize::from(right));
            }
            f(leaves[j & (W - 1)]);
        }
    }
}

/// One step of [`LANES`] walks at level `K` of a group of [`LANES`] trees of width `W`: each
/// walk at split `2^K − 1 + j` of its tree goes to `j' = 2j + went_right` (a compare and an
/// add-with-carry). `j < 2^K` on entry; the masks only let the compiler drop bounds checks.
#[inline(always)]
fn level<const K: u32, const W: usize, const N: usize>(
    splits: &[Split],
    row: &[u32; N],
    at: &mut [usize; LANES],
) {
    let first = (1usize << K) - 1;
    for (lane, j) in at.iter_mut().enumerate() {
        let s = splits[lane * W + (first.wrapping_add(*j) & (W - 1))];
        let right = s.threshold < row[s.column as usize & (N - 1)];
        // Below W: wrapping arithmetic only skips the overflow check.
        *j = j.wrapping_add(*j).wrapping_add(usize::from(right));
    }
}

/// A general-layout split node as a [`Split`], or `None` if its threshold cannot be expressed.
fn split(source: Source, meta: u32, threshold: f64) -> Option<Split> {
    let feature = meta & FEATURE_MASK;
    let nan_right = u32::from(meta & NAN_LEFT == 0);
    let zero_right = u32::from(meta & ZERO_LEFT == 0);
    match source {
        Source::XGBoost => {
            // XGBoost: right iff !(v < t) in f32, i.e. v >= t, i.e. v > (the f32 below t).
            let t = threshold as f32;
            if f64::from(t) != threshold || t == f32::NEG_INFINITY {
                return None;
            }
            let column = feature.checked_mul(2)? | nan_right;
            Some(Split { column, threshold: key(f32_below(t)) })
        }
        Source::LightGbm => {
            // LightGBM: right iff v > t in f64; for an f32 v that is v > (the f32 at or below t).
            let t = f32_at_or_below(threshold);
            if t == f32::INFINITY {
                return None;
            }
            let column = feature.checked_mul(4)? | (nan_right << 1) | zero_right;
            Some(Split { column, threshold: key(t) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::{LightGbmRules, RawNode, XGBoostRules};

    #[test]
    fn keys_order_like_floats() {
        let values = [
            f32::NEG_INFINITY,
            -f32::MAX,
            -1.0,
            -f32::MIN_POSITIVE,
            -f32::from_bits(1),
            0.0,
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{} {}", w[0], w[1]);
        }
        assert_eq!(key(-0.0), key(0.0));
        assert!(KEY_LEFT < key(f32::NEG_INFINITY) && key(f32::INFINITY) < KEY_RIGHT);
    }

    #[test]
    fn f32_neighbours() {
        assert_eq!(f32_below(1.0), 1.0 - f32::EPSILON / 2.0);
        assert_eq!(f32_below(0.0), -f32::from_bits(1));
        assert_eq!(f32_below(-0.0), -f32::from_bits(1));
        assert_eq!(f32_below(f32::INFINITY), f32::MAX);
        assert_eq!(f32_below(-f32::MAX), f32::NEG_INFINITY);
        assert_eq!(f32_at_or_below(0.1), f32_below(0.1f32));
        assert_eq!(f32_at_or_below(0.5), 0.5);
        assert_eq!(f32_at_or_below(1e300), f32::MAX);
        assert_eq!(f32_at_or_below(-1e300), f32::NEG_INFINITY);
        assert_eq!(f32_at_or_below(f64::INFINITY), f32::INFINITY);
        for t in [0.1f64, -0.1, 1e-40, -1e-40, 3.3333333333, 1e38, -7.0] {
            let c = f32_at_or_below(t);
            assert!(f64::from(c) <= t);
            assert!(f64::from(c.next_up_compat()) > t);
        }
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }
    }

    const FEATURES: usize = 4;

    /// Edge values for thresholds and features: zeros, LightGBM's zero band, infinities,
    /// values that are not `f32`s.
    const EDGES: &[f64] = &[
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.0,
        0.1,
        -0.1,
        1e-35,
        -1e-35,
        1e-36,
        -1e-36,
        1e-45,
        3.0,
        1e38,
        -1e38,
        1e300,
        -1e300,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];

    /// Appends a random tree of depth at most `depth` to `raw` and returns its root's index.
    fn random_tree(
        rng: &mut Rng,
        source: Source,
        depth: usize,
        infinite: bool,
        raw: &mut Vec<RawNode>,
    ) -> usize {
        let at = raw.len();
        if depth == 0 || rng.below(8) == 0 {
            raw.push(RawNode::Leaf(rng.below(1000) as f64 / 8.0 - 60.0));
            return at;
        }
        // Infinite thresholds (rare in real models) can make a forest inexpressible: only some have.
        let mut threshold = rng.pick(&EDGES[..EDGES.len() - 2]);
        if infinite && rng.below(16) == 0 {
            threshold = rng.pick(&[f64::INFINITY, f64::NEG_INFINITY]);
        }
        if source == Source::XGBoost {
            threshold = f64::from(threshold as f32);
        }
        raw.push(RawNode::Leaf(0.0));
        let left = random_tree(rng, source, depth - 1, infinite, raw);
        let right = random_tree(rng, source, depth - 1, infinite, raw);
        raw[at] = RawNode::Split {
            feature: rng.below(FEATURES) as u32,
            threshold,
            nan_left: rng.below(2) == 0,
            zero_left: source == Source::LightGbm && rng.below(2) == 0,
            left,
            right,
        };
        at
    }

    /// Random rows of edge values, neighbours of the edges, NaN, and short rows.
    fn random_row(rng: &mut Rng) -> Vec<f32> {
        let len = if rng.below(8) == 0 { rng.below(FEATURES) } else { FEATURES };
        (0..len)
            .map(|_| {
                let v = rng.pick(EDGES) as f32;
                match rng.below(5) {
                    0 => f32::NAN,
                    1 => f32_below(v),
                    2 => -f32_below(-v),
                    _ => v,
                }
            })
            .collect()
    }

    fn leaves(forest: &Forest, source: Source, x: &[f32], general: bool) -> Vec<u64> {
        let mut out = Vec::new();
        let mut push = |v: f64| out.push(v.to_bits());
        match (source, general) {
            (Source::XGBoost, false) => forest.for_each_leaf::<XGBoostRules>(x, &mut push),
            (Source::XGBoost, true) => forest.for_each_leaf_general::<XGBoostRules>(x, &mut push),
            (Source::LightGbm, false) => forest.for_each_leaf::<LightGbmRules>(x, &mut push),
            (Source::LightGbm, true) => forest.for_each_leaf_general::<LightGbmRules>(x, &mut push),
        }
        out
    }

    /// The complete layout picks the same leaf as the general layout (the libraries' rules, as
    /// pinned by the parity fixtures) for random forests and rows full of edge cases.
    #[test]
    fn complete_layout_walks_like_the_general_layout() {
        let mut rng = Rng(0x5EED_CAFE_F00D_0001);
        let mut complete_forests = 0;
        for case in 0..400 {
            let source = if case % 2 == 0 { Source::XGBoost } else { Source::LightGbm };
            let depth = rng.below(DEPTH_MAX + 1);
            let trees = 1 + rng.below(3 * LANES);
            let infinite = rng.below(4) == 0;
            let mut general = Forest::default();
            let mut raw = Vec::new();
            for _ in 0..trees {
                raw.clear();
                let root = random_tree(&mut rng, source, depth, infinite, &mut raw);
                assert_eq!(root, 0);
                general.push_tree(&raw, FEATURES).unwrap();
            }
            let mut complete = general.clone();
            complete.finish(source, FEATURES);
            let expressible = general
                .meta
                .iter()
                .zip(&general.value)
                .all(|(&m, &t)| m & LEAF != 0 || split(source, m, t).is_some());
            let padded = trees * 2 * (1 << general.max_depth);
            let small = padded <= PADDING_PER_NODE_MAX * general.num_nodes() + 2 * (1 << DEPTH_MAX);
            assert_eq!(complete.complete.is_some(), expressible && small, "case {case}");
            if complete.complete.is_some() {
                complete_forests += 1;
                assert!(complete.meta.is_empty());
            }
            assert_eq!(complete.num_nodes(), general.num_nodes());
            for _ in 0..200 {
                let x = random_row(&mut rng);
                assert_eq!(
                    leaves(&complete, source, &x, false),
                    leaves(&general, source, &x, true),
                    "case {case}, row {x:?}"
                );
            }
        }
        assert!(complete_forests > 180, "{complete_forests}");
    }

    #[test]
    fn deep_wide_or_inexpressible_forests_stay_general() {
        let mut f = Forest::default();
        // XGBoost −∞ threshold.
        let raw = [
            RawNode::Split {
                feature: 0,
                threshold: f64::NEG_INFINITY,
                nan_left: true,
                zero_left: false,
                left: 1,
                right: 2,
            },
            RawNode::Leaf(1.0),
            RawNode::Leaf(2.0),
        ];
        f.push_tree(&raw, 1).unwrap();
        assert!(Complete::build(&f, Source::XGBoost, 1).is_none());
        assert!(Complete::build(&f, Source::LightGbm, 1).is_some());
        // Too many features for the row table.
        assert!(Complete::build(&f, Source::LightGbm, ROW_LARGE / 4 + 1).is_none());
        // Deeper than DEPTH_MAX: a chain.
        let mut raw = Vec::new();
        for i in 0..=DEPTH_MAX {
            raw.push(RawNode::Split {
                feature: 0,
                threshold: i as f64,
                nan_left: true,
                zero_left: true,
                left: 2 * i + 1,
                right: 2 * i + 2,
            });
            raw.push(RawNode::Leaf(i as f64));
        }
        raw.push(RawNode::Leaf(-1.0));
        // Fix up: node 2i is the split, 2i + 1 its leaf, 2i + 2 the next split.
        for i in 0..=DEPTH_MAX {
            if let RawNode::Split { left, right, .. } = &mut raw[2 * i] {
                *left = 2 * i + 1;
                *right = 2 * i + 2;
            }
        }
        let mut f = Forest::default();
        f.push_tree(&raw, 1).unwrap();
        assert_eq!(f.max_depth, DEPTH_MAX + 1);
        assert!(Complete::build(&f, Source::XGBoost, 1).is_none());
    }

    trait NextUp {
        fn next_up_compat(self) -> f32;
    }

    impl NextUp for f32 {
        fn next_up_compat(self) -> f32 {
            -f32_below(-self)
        }
    }
}
