//! The flattened forest: every node of every tree in three parallel arrays.
//!
//! See the crate documentation for the layout and the missing-value rules.

use std::collections::VecDeque;

use crate::complete::Complete;
use crate::Source;

/// `meta` bit: the node is a leaf (its `value` is the leaf value).
pub(crate) const LEAF: u32 = 1 << 31;
/// `meta` bit: a missing (NaN) feature value goes to the left child.
pub(crate) const NAN_LEFT: u32 = 1 << 30;
/// `meta` bit (LightGBM): a zero feature value (|v| <= 1e-35) goes to the left child.
pub(crate) const ZERO_LEFT: u32 = 1 << 29;
/// `meta` bits holding the split feature index.
pub(crate) const FEATURE_MASK: u32 = ZERO_LEFT - 1;

/// LightGBM's `kZeroThreshold` (a C++ `float` 1e-35, compared as a `double`).
pub(crate) const LGBM_ZERO_THRESHOLD: f64 = 1e-35_f32 as f64;

/// The largest number of nodes a model may have in total (indices are `u32`).
const MAX_NODES: usize = (u32::MAX / 2) as usize;

/// A node as read from a file, before flattening. Children are indices into the same slice.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawNode {
    /// A leaf and its value.
    Leaf(f64),
    /// A numerical split.
    Split {
        /// Feature index.
        feature: u32,
        /// The threshold (the comparison, `<` or `<=`, is the library's).
        threshold: f64,
        /// Where a NaN goes.
        nan_left: bool,
        /// Where a zero goes (LightGBM only; ignored for XGBoost).
        zero_left: bool,
        /// Left child.
        left: usize,
        /// Right child.
        right: usize,
    },
}

/// Every tree's nodes, flattened. Node `i` is described by `meta[i]`, `value[i]` and `left[i]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forest {
    /// Leaf bit, missing-value bits and split feature index.
    pub(crate) meta: Vec<u32>,
    /// Split threshold, or the leaf value of a leaf.
    pub(crate) value: Vec<f64>,
    /// Index of the left child; the right child is always `left + 1`. Unused (0) for leaves.
    pub(crate) left: Vec<u32>,
    /// Index of each tree's root node.
    pub(crate) roots: Vec<u32>,
    /// Each tree's depth (its deepest leaf's; a lone root leaf has depth 0).
    pub(crate) depth: Vec<u32>,
    /// The deepest leaf's depth over all trees.
    pub(crate) max_depth: usize,
    /// Number of flattened nodes over all trees (kept when `finish` drops the arrays above).
    pub(crate) nodes: usize,
    /// The same trees in the complete layout, when they fit it (set by [`Forest::finish`]); the
    /// general arrays are then dropped.
    pub(crate) complete: Option<Complete>,
}

/// How many trees a prediction walks side by side (see [`Forest::leaves_xgboost`]).
pub(crate) const LANES: usize = 8;

impl Forest {
    /// Flattens one tree whose root is `raw[0]` and appends it.
    ///
    /// Nodes are laid out breadth-first, with the two children of a split next to each other, so
    /// every child index is greater than its parent's: a traversal always terminates. A node
    /// reachable twice (a cycle or a shared subtree) or a child index out of range is an error;
    /// unreachable nodes (e.g. XGBoost's deleted nodes) are dropped.
    pub(crate) fn push_tree(&mut self, raw: &[RawNode], num_features: usize) -> Result<(), String> {
        if raw.is_empty() {
            return Err("the tree has no nodes".into());
        }
        if self.meta.len() + 2 * raw.len() + 1 > MAX_NODES {
            return Err("the model has too many nodes".into());
        }
        let root = self.meta.len();
        self.push_placeholder();
        let mut seen = vec![false; raw.len()];
        let mut queue = VecDeque::new();
        queue.push_back((0usize, root, 0usize));
        let mut tree_depth = 0usize;
        while let Some((r, out, depth)) = queue.pop_front() {
            if std::mem::replace(&mut seen[r], true) {
                return Err(format!("node {r} is reached twice (a cycle or a shared subtree)"));
            }
            match raw[r] {
                RawNode::Leaf(v) => {
                    if v.is_nan() {
                        return Err(format!("leaf {r} has a NaN value"));
                    }
                    self.meta[out] = LEAF;
                    self.value[out] = v;
                    // A leaf is its own child, so a walk that reached it stays there.
                    self.left[out] = out as u32;
                    tree_depth = tree_depth.max(depth);
                }
                RawNode::Split { feature, threshold, nan_left, zero_left, left, right } => {
                    if feature as usize >= num_features || feature > FEATURE_MASK {
                        return Err(format!(
                            "node {r} splits on feature {feature}, but the model has {num_features} features"
                        ));
                    }
                    if threshold.is_nan() {
                        return Err(format!("node {r} has a NaN threshold"));
                    }
                    for child in [left, right] {
                        if child >= raw.len() {
                            return Err(format!(
                                "node {r} has child {child}, but the tree has {} nodes",
                                raw.len()
                            ));
                        }
                    }
                    let l = self.meta.len();
                    self.push_placeholder();
                    self.push_placeholder();
                    let mut meta = feature;
                    if nan_left {
                        meta |= NAN_LEFT;
                    }
                    if zero_left {
                        meta |= ZERO_LEFT;
                    }
                    self.meta[out] = meta;
                    self.value[out] = threshold;
                    // `l` < MAX_NODES, checked above.
                    self.left[out] = l as u32;
                    queue.push_back((left, l, depth + 1));
                    queue.push_back((right, l + 1, depth + 1));
                }
            }
        }
        self.roots.push(root as u32);
        self.nodes = self.meta.len();
        self.depth.push(tree_depth as u32);
        self.max_depth = self.max_depth.max(tree_depth);
        Ok(())
    }

    /// Called once all trees are pushed: builds the complete layout if the forest fits it (and
    /// then drops the general arrays, which are no longer read).
    pub(crate) fn finish(&mut self, source: Source, num_features: usize) {
        assert!(self.complete.is_none(), "finish is called once");
        if let Some(complete) = Complete::build(self, source, num_features) {
            self.complete = Some(complete);
            self.meta = Vec::new();
            self.value = Vec::new();
            self.left = Vec::new();
        }
    }

    /// Approximate heap memory, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.meta.capacity() * 4
            + self.value.capacity() * 8
            + self.left.capacity() * 4
            + self.roots.capacity() * 4
            + self.depth.capacity() * 4
            + self.complete.as_ref().map_or(0, Complete::heap_bytes)
    }

    fn push_placeholder(&mut self) {
        self.meta.push(LEAF);
        self.value.push(0.0);
        self.left.push(0);
    }

    /// The three node arrays as slices of one length, so that one bounds check covers all three.
    #[inline(always)]
    fn nodes(&self) -> Nodes<'_> {
        let len = self.meta.len().min(self.value.len()).min(self.left.len());
        Nodes { meta: &self.meta[..len], value: &self.value[..len], left: &self.left[..len] }
    }

    /// Calls `f` with each tree's leaf value for `x`, in tree order.
    ///
    /// Trees are walked [`LANES`] at a time, in lock step, for as many steps as the deepest of
    /// them needs (a walk that reached a leaf stays there): the walks are independent, so the
    /// processor overlaps their memory loads instead of waiting for one tree's chain of loads, and
    /// there is no hard-to-predict "is this a leaf" branch.
    ///
    /// A forest in the complete layout is walked there (`R` must then be the rules of the source
    /// given to [`Forest::finish`]).
    #[inline(always)]
    pub(crate) fn for_each_leaf<R: Rules>(&self, x: &[f32], f: impl FnMut(f64)) {
        match &self.complete {
            Some(complete) => complete.for_each_leaf(x, f),
            None => self.for_each_leaf_general::<R>(x, f),
        }
    }

    /// [`Forest::for_each_leaf`] in the general layout.
    #[inline(always)]
    pub(crate) fn for_each_leaf_general<R: Rules>(&self, x: &[f32], mut f: impl FnMut(f64)) {
        let nodes = self.nodes();
        let mut roots = self.roots.chunks_exact(LANES);
        let mut depths = self.depth.chunks_exact(LANES);
        for (roots, depths) in (&mut roots).zip(&mut depths) {
            let mut n = [0usize; LANES];
            for (n, &root) in n.iter_mut().zip(roots) {
                *n = root as usize;
            }
            let steps = depths.iter().copied().max().unwrap_or(0);
            for _ in 0..steps {
                for n in n.iter_mut() {
                    *n = nodes.step::<R>(*n, x);
                }
            }
            for &n in &n {
                f(nodes.value[n]);
            }
        }
        for (&root, &steps) in roots.remainder().iter().zip(depths.remainder()) {
            f(nodes.leaf::<R>(root, steps, x));
        }
    }

    /// The leaf value reached by `x` from `root` within `steps` steps.
    #[cfg(test)]
    fn leaf<R: Rules>(&self, root: u32, steps: u32, x: &[f32]) -> f64 {
        self.nodes().leaf::<R>(root, steps, x)
    }

    /// Number of flattened nodes.
    pub(crate) fn num_nodes(&self) -> usize {
        self.nodes
    }
}

/// [`Forest`]'s node arrays, all of the same length.
struct Nodes<'a> {
    meta: &'a [u32],
    value: &'a [f64],
    left: &'a [u32],
}

impl Nodes<'_> {
    /// One step of a walk: the child of node `n` that `x` goes to (a leaf stays put).
    #[inline(always)]
    fn step<R: Rules>(&self, n: usize, x: &[f32]) -> usize {
        let m = self.meta[n];
        let right = R::goes_right(m, self.value[n], x) & (m & LEAF == 0);
        self.left[n] as usize + usize::from(right)
    }

    /// The leaf value reached by `x` from `root` within `steps` steps.
    #[inline(always)]
    fn leaf<R: Rules>(&self, root: u32, steps: u32, x: &[f32]) -> f64 {
        let mut n = root as usize;
        for _ in 0..steps {
            n = self.step::<R>(n, x);
        }
        self.value[n]
    }
}

/// A library's split rule.
pub(crate) trait Rules {
    /// Whether `x` goes right at a split node with meta bits `m` and threshold `t`.
    fn goes_right(m: u32, t: f64, x: &[f32]) -> bool;
}

/// XGBoost: NaN goes the node's default direction, otherwise left iff `x < threshold` (`f32`).
pub(crate) struct XGBoostRules;

impl Rules for XGBoostRules {
    #[inline(always)]
    fn goes_right(m: u32, t: f64, x: &[f32]) -> bool {
        let v = match x.get((m & FEATURE_MASK) as usize) {
            Some(&v) => v,
            None => f32::NAN,
        };
        // The threshold was an f32, so comparing in f64 is exactly the f32 comparison.
        if v.is_nan() {
            m & NAN_LEFT == 0
        } else {
            f64::from(v) >= t
        }
    }
}

/// LightGBM: NaN goes `NAN_LEFT`'s way, a zero (|v| <= 1e-35) `ZERO_LEFT`'s way, otherwise left
/// iff `x <= threshold` (`f64`).
pub(crate) struct LightGbmRules;

impl Rules for LightGbmRules {
    #[inline(always)]
    fn goes_right(m: u32, t: f64, x: &[f32]) -> bool {
        let v = match x.get((m & FEATURE_MASK) as usize) {
            Some(&v) => f64::from(v),
            None => f64::NAN,
        };
        if v.is_nan() {
            m & NAN_LEFT == 0
        } else if v.abs() <= LGBM_ZERO_THRESHOLD {
            m & ZERO_LEFT == 0
        } else {
            v > t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(feature: u32, threshold: f64, left: usize, right: usize) -> RawNode {
        RawNode::Split { feature, threshold, nan_left: true, zero_left: false, left, right }
    }

    #[test]
    fn siblings_are_adjacent_and_children_follow_parents() {
        // Root's children are listed right-before-left and out of order in the file.
        let raw = [
            split(0, 0.5, 2, 1),
            RawNode::Leaf(1.0),
            split(1, 2.0, 3, 4),
            RawNode::Leaf(2.0),
            RawNode::Leaf(3.0),
        ];
        let mut f = Forest::default();
        f.push_tree(&raw, 2).unwrap();
        assert_eq!(f.num_nodes(), 5);
        for i in 0..f.num_nodes() {
            if f.meta[i] & LEAF == 0 {
                assert!(f.left[i] as usize > i);
            }
        }
        assert_eq!(f.max_depth, 2);
        let leaf = |x: &[f32]| f.leaf::<XGBoostRules>(0, 2, x);
        assert_eq!(leaf(&[0.1, 1.0]), 2.0);
        assert_eq!(leaf(&[0.1, 2.0]), 3.0);
        assert_eq!(leaf(&[0.5, 1.0]), 1.0);
        assert_eq!(leaf(&[f32::NAN, f32::NAN]), 2.0);
        // A short feature vector reads as missing.
        assert_eq!(leaf(&[]), 2.0);
        // Extra steps stay on the leaf.
        assert_eq!(f.leaf::<XGBoostRules>(0, 9, &[0.5, 1.0]), 1.0);
    }

    #[test]
    fn lanes_and_remainder_visit_every_tree_in_order() {
        let mut f = Forest::default();
        for i in 0..(2 * LANES + 3) {
            let raw = [split(0, i as f64, 1, 2), RawNode::Leaf(i as f64), RawNode::Leaf(-(i as f64))];
            f.push_tree(&raw, 1).unwrap();
        }
        let mut seen = Vec::new();
        f.for_each_leaf::<XGBoostRules>(&[5.0], |v| seen.push(v));
        let want: Vec<f64> =
            (0..(2 * LANES + 3)).map(|i| if 5.0 < i as f64 { i as f64 } else { -(i as f64) }).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn cycles_shared_nodes_and_bad_indices_are_rejected() {
        let mut f = Forest::default();
        assert!(f.push_tree(&[split(0, 0.5, 0, 1), RawNode::Leaf(1.0)], 1).is_err());
        assert!(f.push_tree(&[split(0, 0.5, 1, 1), RawNode::Leaf(1.0)], 1).is_err());
        assert!(f.push_tree(&[split(0, 0.5, 1, 2), RawNode::Leaf(1.0)], 1).is_err());
        assert!(f.push_tree(&[split(3, 0.5, 1, 2), RawNode::Leaf(1.0), RawNode::Leaf(1.0)], 1).is_err());
        assert!(f.push_tree(&[RawNode::Leaf(f64::NAN)], 1).is_err());
        assert!(f.push_tree(&[], 1).is_err());
        assert!(f.roots.is_empty());
    }
}
