//! In-process scoring of gradient-boosted tree models trained with XGBoost or LightGBM
//! (issue 4, item 5: "Models").
//!
//! A risk decision must be made in microseconds inside the ledger's write path, so models are
//! not served by another process: they are loaded from the files the Python libraries write
//! (`Booster.save_model`) and scored here, with the libraries' own arithmetic, so that a score
//! equals the one the data scientist saw in Python (to 1e-6; the parity tests compare the
//! committed fixtures, see `tools/risk-model/`).
//!
//! ```no_run
//! # fn main() -> Result<(), puhui_risk_model::ModelError> {
//! use puhui_risk_model::Model;
//!
//! let model = Model::load("fraud.json")?; // or a LightGBM "fraud.txt"
//! let features = [2.7_f32, 3.0, 12.0, f32::NAN /* missing */, 5.0, 1.0, 0.0, 40.0, 1.0, 0.9];
//! let p_fraud = model.predict(&features);
//! # let _ = p_fraud;
//! # Ok(())
//! # }
//! ```
//!
//! # Formats
//!
//! * **XGBoost JSON** (`save_model("m.json")`, XGBoost 1.x to 3.x): the trees of
//!   `learner.gradient_booster.model.trees[]` (`split_indices`, `split_conditions`,
//!   `left_children`, `right_children`, `default_left`), `learner_model_param.base_score`
//!   (a scalar, or the `"[…]"` vector form of XGBoost >= 3.1) and `learner.objective.name`.
//!   A leaf's value is its `split_conditions` entry (as in XGBoost's own loader). Objectives:
//!   `binary:logistic`, `reg:logistic` (sigmoid), `binary:logitraw`, `reg:squarederror`,
//!   `reg:pseudohubererror`, `reg:absoluteerror` (identity). Only the `gbtree` booster.
//! * **LightGBM text** (`save_model("m.txt")`, LightGBM 3.x/4.x): the header
//!   (`max_feature_idx`, `objective`, `feature_names`, `average_output`) and every `Tree=N`
//!   block (`num_leaves`, `split_feature`, `threshold`, `decision_type`, `left_child`,
//!   `right_child` where a negative child `c` is leaf `!c`, `leaf_value`) up to `end of trees`.
//!   `shrinkage` is checked but not applied: LightGBM has already folded it into `leaf_value`
//!   (and `boost_from_average` into the first tree). Objectives: `binary` (`sigmoid:S` honoured),
//!   `cross_entropy` (sigmoid), `regression`, `regression_l1`, `huber`, `fair`, `quantile`,
//!   `mape` (identity).
//!
//! Parity with the libraries is tested (fixtures in `tests/fixtures/`) for XGBoost
//! `binary:logistic` and `reg:squarederror`, and LightGBM `binary` (missing types None, NaN and
//! Zero) and `regression`; the other objectives listed differ only in their output transform.
//! Multiclass and multi-target models, categorical splits, linear trees, DART and other
//! objectives are refused with [`ModelError::Unsupported`] rather than scored wrongly.
//!
//! # The flattened layouts
//!
//! A model is scored in one of two layouts, chosen at load; both give the same leaf for every
//! input (a randomized test compares them on edge values), and both allocate nothing per
//! prediction.
//!
//! **The complete layout** (`complete.rs`), for forests no deeper than 8 levels whose padding
//! stays within 8 slots per real node and whose features fit the per-row table (at most 2,048
//! XGBoost or 1,024 LightGBM features): every tree is padded to a complete binary tree of the
//! forest's depth `D`, so children are implicit (split `i`'s are `2i + 1` and `2i + 2`) and a
//! walk is exactly `D` steps. A leaf above depth `D` is copied into every leaf slot below it.
//! Each split is 8 bytes: a `u32` column of the per-row table and a `u32` threshold key. Once per
//! prediction, the row's features are written into a table on the stack, one column per
//! (feature, missing-value direction): a present value becomes its order key (an integer whose
//! order is the float order, −0 read as +0), a missing value becomes 0 where it must go left and
//! `u32::MAX` where it must go right (for LightGBM also a "zero", |v| <= 1e-35). Thresholds are
//! rewritten at load so that *every* split is `key(threshold) < row[column]`: XGBoost's
//! `!(v < t)` in `f32` becomes `v > (the f32 just below t)`, and LightGBM's `v > t` in `f64`, for
//! an `f32` input, is `v > (the largest f32 <= t)`. Both are exact for every `f32`, so the
//! library's arithmetic is kept without comparing in `f64`. A prediction walks sixteen trees at a
//! time, one level at a time (the walk for each depth is compiled separately, so each level is
//! straight-line code: load the split, load the row entry, compare, `j = 2j + went_right`), so the
//! processor overlaps the sixteen independent chains of loads; then it adds the leaf values in tree
//! order. Forests it cannot express (deeper, too sparse, an XGBoost threshold of −∞ or a LightGBM
//! one of +∞) use the general layout.
//!
//! **The general layout** (`forest.rs`): all trees in one structure of arrays indexed by a `u32`
//! node id:
//!
//! | array | per node |
//! |---|---|
//! | `meta: Vec<u32>` | bit 31: leaf; bit 30: a missing value goes left; bit 29: a zero goes left (LightGBM); bits 0..28: split feature index |
//! | `value: Vec<f64>` | the split threshold, or for a leaf its value |
//! | `left: Vec<u32>` | the left child; the right child is always `left + 1` |
//!
//! plus `roots: Vec<u32>`, one per tree. Each tree is laid out breadth-first with the two
//! children of a split side by side, so one child index per node suffices, the nodes a
//! prediction visits near the root of every tree are close together, and every child index is
//! greater than its parent's: a traversal always ends, whatever the file said (loading rejects
//! cycles, shared subtrees and out-of-range indices). A leaf is its own left child. A prediction
//! walks eight trees at a time in lock step (`next = left + went_right`, a leaf staying put) for
//! as many steps as the deepest of the eight needs, then adds the leaf values in tree order.
//! The complete layout is built from this one, which is then dropped.
//!
//! # Missing values
//!
//! A feature is **missing** when its value is NaN or when the feature vector is shorter than the
//! feature's index (so a vector built for an older model with fewer features still scores).
//! Extra trailing features are ignored. Then each library's rule applies:
//!
//! * **XGBoost**: a missing value goes to the node's `default_left` side; any other value goes
//!   left iff `value < threshold` (compared as `f32`). Zero is an ordinary value.
//! * **LightGBM**, by the node's `decision_type` (bit 1: default left; bits 2–3: missing type):
//!   * missing type *None*: NaN is read as 0.0 and compared;
//!   * missing type *Zero*: NaN and zero both go the default side;
//!   * missing type *NaN*: NaN goes the default side, zero is compared;
//!
//!   where "zero" is `|value| <= 1e-35` (LightGBM's `kZeroThreshold`, whose predictor reads such
//!   values as 0.0), and otherwise a value goes left iff `value <= threshold` (as `f64`).
//!
//! # Arithmetic
//!
//! Like XGBoost, an XGBoost model's margin is accumulated in `f32`, starting from the base
//! score's margin (`logit(base_score)` for logistic objectives), tree by tree in file order, and
//! the sigmoid is computed in `f32`. Like LightGBM, a LightGBM model's margin is the `f64` sum of
//! its trees' leaves (divided by the number of trees for `average_output` models) and the sigmoid
//! `1 / (1 + exp(-S * margin))` is computed in `f64`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod complete;
mod error;
mod forest;
mod lightgbm;
mod xgboost;

use std::path::Path;

pub use error::ModelError;
use forest::{Forest, LightGbmRules, XGBoostRules};

/// The largest feature index + 1 a model may use (the index has 29 bits in the flattened layout).
pub const MAX_FEATURES: usize = 1 << 29;

/// The library a model was trained with; it decides the split and missing-value rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// XGBoost, loaded from its JSON `save_model` format.
    XGBoost,
    /// LightGBM, loaded from its text `save_model` format.
    LightGbm,
}

/// The transform from a model's raw margin to its prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Link {
    /// The prediction is the margin (regression, raw-score objectives).
    Identity,
    /// The prediction is `1 / (1 + exp(-scale * margin))`, a probability (binary objectives).
    Sigmoid {
        /// The slope (LightGBM's `sigmoid:` parameter; 1 for XGBoost).
        scale: f64,
    },
}

/// A loaded, flattened tree ensemble, ready to score. Immutable, so it can be shared between
/// threads (`Arc<Model>`) and swapped atomically when a new model version is activated.
#[derive(Debug, Clone)]
pub struct Model {
    forest: Forest,
    source: Source,
    objective: String,
    link: Link,
    base_margin: f64,
    average: bool,
    num_features: usize,
    feature_names: Vec<String>,
}

impl Model {
    /// Loads a model file, XGBoost JSON or LightGBM text (told apart by content, see
    /// [`Model::from_bytes`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        Model::from_bytes(&bytes)
    }

    /// Loads a model from the bytes of a file: XGBoost JSON if the first non-blank character is
    /// `{`, LightGBM text if the first line is `tree`, otherwise [`ModelError::UnknownFormat`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        let rest = &bytes[start..];
        if rest.first() == Some(&b'{') {
            Model::from_xgboost_json(bytes)
        } else if rest.starts_with(b"tree") {
            match std::str::from_utf8(bytes) {
                Ok(text) => Model::from_lightgbm_text(text),
                Err(e) => {
                    let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
                    Err(ModelError::Text { line, message: "not valid UTF-8".into() })
                }
            }
        } else {
            Err(ModelError::UnknownFormat)
        }
    }

    /// Loads an XGBoost model saved with `Booster.save_model("model.json")`.
    pub fn from_xgboost_json(json: &[u8]) -> Result<Model, ModelError> {
        xgboost::load(json)
    }

    /// Loads a LightGBM model saved with `Booster.save_model("model.txt")`
    /// (or `Booster.model_to_string()`).
    pub fn from_lightgbm_text(text: &str) -> Result<Model, ModelError> {
        lightgbm::load(text)
    }

    /// The prediction for one feature vector (NaN = missing): a probability for binary
    /// objectives (XGBoost `predict`, LightGBM `predict`), the regression value otherwise.
    ///
    /// Allocates nothing; never panics.
    #[inline]
    pub fn predict(&self, features: &[f32]) -> f64 {
        self.transform(self.predict_raw(features))
    }

    /// The raw margin for one feature vector (NaN = missing): the sum of the trees' leaves plus the
    /// base margin, before the objective's transform (XGBoost `predict(output_margin=True)`,
    /// LightGBM `predict(raw_score=True)`).
    ///
    /// Allocates nothing; never panics.
    pub fn predict_raw(&self, features: &[f32]) -> f64 {
        let forest = &self.forest;
        match self.source {
            Source::XGBoost => {
                let mut acc = self.base_margin as f32;
                forest.for_each_leaf::<XGBoostRules>(features, |leaf| acc += leaf as f32);
                f64::from(acc)
            }
            Source::LightGbm => {
                let mut acc = 0.0f64;
                forest.for_each_leaf::<LightGbmRules>(features, |leaf| acc += leaf);
                if self.average && !forest.roots.is_empty() {
                    acc /= forest.roots.len() as f64;
                }
                acc
            }
        }
    }

    /// Applies the objective's output transform ([`Model::link`]) to a raw margin, with the
    /// library's arithmetic (`f32` for XGBoost, `f64` for LightGBM).
    #[inline]
    pub fn transform(&self, raw: f64) -> f64 {
        match (self.link, self.source) {
            (Link::Identity, _) => raw,
            (Link::Sigmoid { .. }, Source::XGBoost) => {
                // XGBoost's common::Sigmoid, in f32.
                let x = raw as f32;
                f64::from(1.0f32 / (1.0f32 + (-x).exp()))
            }
            (Link::Sigmoid { scale }, Source::LightGbm) => 1.0 / (1.0 + (-scale * raw).exp()),
        }
    }

    /// The library the model was trained with.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The objective as the file names it (e.g. `binary:logistic`, `binary sigmoid:1`;
    /// `none` for a LightGBM file without one).
    pub fn objective(&self) -> &str {
        &self.objective
    }

    /// The output transform applied by [`Model::predict`].
    pub fn link(&self) -> Link {
        self.link
    }

    /// The constant added to the trees' sum (XGBoost's `base_score` as a margin; 0 for LightGBM,
    /// which folds its initial score into the first tree).
    pub fn base_margin(&self) -> f64 {
        self.base_margin
    }

    /// The number of features the model was trained on (the expected feature vector length).
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The training feature names, in feature-vector order (empty if the file has none).
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The feature-vector index of the feature called `name`, if the file names its features.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.feature_names.iter().position(|n| n == name)
    }

    /// The number of trees.
    pub fn num_trees(&self) -> usize {
        self.forest.roots.len()
    }

    /// The number of nodes (splits and leaves) over all trees, after dropping unreachable ones.
    pub fn num_nodes(&self) -> usize {
        self.forest.num_nodes()
    }

    /// The depth of the deepest leaf (0 if every tree is a single leaf).
    pub fn max_depth(&self) -> usize {
        self.forest.max_depth
    }

    /// Approximate heap memory held by the flattened trees, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.forest.heap_bytes()
    }
}
