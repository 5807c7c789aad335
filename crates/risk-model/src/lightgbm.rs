//! LightGBM text (`Booster.save_model("model.txt")`) loading: a small line parser.

use std::collections::HashMap;
use std::str::FromStr;

use crate::forest::{Forest, RawNode};
use crate::{Link, Model, ModelError, Source};

/// `decision_type` bit: categorical split.
const CATEGORICAL: i64 = 1;
/// `decision_type` bit: missing values go left.
const DEFAULT_LEFT: i64 = 2;
/// `decision_type` missing type (bits 2..3): none, zero, NaN.
const MISSING_NONE: i64 = 0;
const MISSING_ZERO: i64 = 1;
const MISSING_NAN: i64 = 2;

fn text_error(line: usize, message: impl Into<String>) -> ModelError {
    ModelError::Text { line, message: message.into() }
}

fn unsupported(what: impl Into<String>) -> ModelError {
    ModelError::Unsupported { what: what.into() }
}

/// `key=value` lines of one section, with their line numbers.
#[derive(Default)]
struct Section<'a> {
    values: HashMap<&'a str, (&'a str, usize)>,
    flags: Vec<&'a str>,
}

impl<'a> Section<'a> {
    fn insert(&mut self, key: &'a str, value: &'a str, line: usize) -> Result<(), ModelError> {
        if self.values.insert(key, (value, line)).is_some() {
            return Err(text_error(line, format!("`{key}` appears twice")));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<(&'a str, usize)> {
        self.values.get(key).copied()
    }

    fn require(&self, key: &str, section_line: usize) -> Result<(&'a str, usize), ModelError> {
        self.get(key).ok_or_else(|| text_error(section_line, format!("missing `{key}=`")))
    }

    fn scalar<T: FromStr>(&self, key: &str) -> Result<Option<T>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some((v, line)) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| text_error(line, format!("`{key}`: cannot read {:?} as a number", v.trim()))),
        }
    }

    /// A space-separated array; absent means empty.
    fn array<T: FromStr>(&self, key: &str) -> Result<Vec<T>, ModelError> {
        let Some((v, line)) = self.get(key) else {
            return Ok(Vec::new());
        };
        v.split_whitespace()
            .enumerate()
            .map(|(i, tok)| {
                tok.parse::<T>().map_err(|_| {
                    text_error(line, format!("`{key}` entry {i}: cannot read {tok:?} as a number"))
                })
            })
            .collect()
    }
}

/// Output transform of a LightGBM `objective=` line.
fn objective(value: &str, line: usize) -> Result<Link, ModelError> {
    let mut tokens = value.split_whitespace();
    let name = tokens.next().unwrap_or("");
    let params: Vec<&str> = tokens.collect();
    match name {
        "binary" => {
            let mut scale = 1.0;
            for p in &params {
                if let Some(s) = p.strip_prefix("sigmoid:") {
                    scale = s
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| text_error(line, format!("bad sigmoid parameter {s:?}")))?;
                }
            }
            Ok(Link::Sigmoid { scale })
        }
        "cross_entropy" | "xentropy" => Ok(Link::Sigmoid { scale: 1.0 }),
        "regression" | "regression_l2" | "l2" | "mean_squared_error" | "mse" | "regression_l1" | "l1"
        | "huber" | "fair" | "quantile" | "mape" => {
            if params.contains(&"sqrt") {
                Err(unsupported(format!("LightGBM objective {value:?} (sqrt transform)")))
            } else {
                Ok(Link::Identity)
            }
        }
        _ => Err(unsupported(format!("LightGBM objective {value:?}"))),
    }
}

pub(crate) fn load(text: &str) -> Result<Model, ModelError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end())).peekable();
    let last_line = text.lines().count();

    // Header: "tree", then key=value lines (and bare flags) up to the first tree.
    match lines.find(|(_, l)| !l.is_empty()) {
        Some((_, "tree")) => {}
        Some((n, _)) => return Err(text_error(n, "expected `tree` (the first line of a LightGBM model)")),
        None => return Err(text_error(1, "empty file")),
    }
    let mut header = Section::default();
    while let Some(&(n, l)) = lines.peek() {
        if l.starts_with("Tree=") || l == "end of trees" {
            break;
        }
        lines.next();
        if l.is_empty() {
            continue;
        }
        match l.split_once('=') {
            Some((k, v)) => header.insert(k, v, n)?,
            None => header.flags.push(l),
        }
    }

    if let Some(k) = header.scalar::<i64>("num_class")? {
        if k != 1 {
            return Err(unsupported(format!("LightGBM model with num_class={k}")));
        }
    }
    if let Some(k) = header.scalar::<i64>("num_tree_per_iteration")? {
        if k != 1 {
            return Err(unsupported(format!("LightGBM model with num_tree_per_iteration={k}")));
        }
    }
    let (_, mfi_line) = header.require("max_feature_idx", 1)?;
    let max_feature_idx = header.scalar::<i64>("max_feature_idx")?.unwrap_or(-1);
    if max_feature_idx < -1 || max_feature_idx >= crate::MAX_FEATURES as i64 {
        return Err(text_error(mfi_line, format!("max_feature_idx {max_feature_idx} out of range")));
    }
    let num_features = (max_feature_idx + 1) as usize;
    let (objective_name, link) = match header.get("objective") {
        Some((v, line)) => (v.trim().to_string(), objective(v, line)?),
        None => ("none".to_string(), Link::Identity),
    };
    let feature_names: Vec<String> = match header.get("feature_names") {
        Some((v, line)) => {
            let names: Vec<String> = v.split_whitespace().map(str::to_string).collect();
            if names.len() != num_features {
                return Err(text_error(
                    line,
                    format!("{} feature names for {num_features} features", names.len()),
                ));
            }
            names
        }
        None => Vec::new(),
    };
    let average = header.flags.contains(&"average_output");

    // Trees, up to "end of trees".
    let mut forest = Forest::default();
    let mut raw = Vec::new();
    let mut ended = false;
    while let Some((n, l)) = lines.next() {
        if l.is_empty() {
            continue;
        }
        if l == "end of trees" {
            ended = true;
            break;
        }
        let index = forest.roots.len();
        let Some(id) = l.strip_prefix("Tree=") else {
            return Err(text_error(n, format!("expected `Tree={index}` or `end of trees`")));
        };
        if id.trim().parse::<usize>().ok() != Some(index) {
            return Err(text_error(n, format!("expected `Tree={index}`, found `{l}`")));
        }
        let mut section = Section::default();
        while let Some(&(m, l)) = lines.peek() {
            if l.is_empty() || l.starts_with("Tree=") || l == "end of trees" {
                break;
            }
            lines.next();
            let Some((k, v)) = l.split_once('=') else {
                return Err(text_error(m, format!("expected `key=value`, found {l:?}")));
            };
            section.insert(k, v, m)?;
        }
        tree_nodes(index, n, &section, &mut raw)?;
        forest.push_tree(&raw, num_features).map_err(|message| ModelError::InvalidTree {
            tree: index,
            line: Some(n),
            message,
        })?;
    }
    if !ended {
        return Err(text_error(last_line + 1, "missing `end of trees` (truncated file?)"));
    }
    forest.finish(Source::LightGbm, num_features);
    Ok(Model {
        forest,
        source: Source::LightGbm,
        objective: objective_name,
        link,
        base_margin: 0.0,
        average,
        num_features,
        feature_names,
    })
}

/// Converts one `Tree=` section (starting on line `n`) to raw nodes: internal node `i` is
/// `raw[i]`, leaf `j` (a child written as `~j`, i.e. `-j - 1`) is `raw[num_leaves - 1 + j]`.
fn tree_nodes(t: usize, n: usize, s: &Section, raw: &mut Vec<RawNode>) -> Result<(), ModelError> {
    let invalid = |message: String| ModelError::InvalidTree { tree: t, line: Some(n), message };
    let (_, nl_line) = s.require("num_leaves", n)?;
    let num_leaves = s.scalar::<usize>("num_leaves")?.unwrap_or(0);
    if num_leaves == 0 {
        return Err(text_error(nl_line, "num_leaves must be at least 1"));
    }
    if s.scalar::<i64>("num_cat")?.unwrap_or(0) != 0 {
        return Err(unsupported(format!("tree {t} has categorical splits (num_cat > 0)")));
    }
    if s.scalar::<i64>("is_linear")?.unwrap_or(0) != 0 {
        return Err(unsupported(format!("tree {t} is a linear tree")));
    }
    if let Some(shrinkage) = s.scalar::<f64>("shrinkage")? {
        // Informational: LightGBM has already multiplied the leaf values by it.
        if !shrinkage.is_finite() {
            return Err(invalid(format!("shrinkage {shrinkage} is not finite")));
        }
    }
    s.require("leaf_value", n)?;
    let leaf_value: Vec<f64> = s.array("leaf_value")?;
    if leaf_value.len() != num_leaves {
        return Err(invalid(format!("leaf_value has {} entries for {num_leaves} leaves", leaf_value.len())));
    }
    let internal = num_leaves - 1;
    raw.clear();
    if internal == 0 {
        raw.push(RawNode::Leaf(leaf_value[0]));
        return Ok(());
    }
    for key in ["split_feature", "threshold", "decision_type", "left_child", "right_child"] {
        s.require(key, n)?;
    }
    let split_feature: Vec<i64> = s.array("split_feature")?;
    let threshold: Vec<f64> = s.array("threshold")?;
    let decision_type: Vec<i64> = s.array("decision_type")?;
    let left_child: Vec<i64> = s.array("left_child")?;
    let right_child: Vec<i64> = s.array("right_child")?;
    for (key, len) in [
        ("split_feature", split_feature.len()),
        ("threshold", threshold.len()),
        ("decision_type", decision_type.len()),
        ("left_child", left_child.len()),
        ("right_child", right_child.len()),
    ] {
        if len != internal {
            return Err(invalid(format!("{key} has {len} entries for {num_leaves} leaves")));
        }
    }
    let child = |i: usize, c: i64| -> Result<usize, ModelError> {
        if c >= 0 {
            usize::try_from(c).ok().filter(|&c| c < internal)
        } else {
            usize::try_from(!c).ok().filter(|&j| j < num_leaves).map(|j| internal + j)
        }
        .ok_or_else(|| invalid(format!("node {i} has child {c}, out of range for {num_leaves} leaves")))
    };
    for i in 0..internal {
        let dt = decision_type[i];
        if !(0..=255).contains(&dt) {
            return Err(invalid(format!("node {i} has decision_type {dt}")));
        }
        if dt & CATEGORICAL != 0 {
            return Err(unsupported(format!("tree {t} node {i} is a categorical split")));
        }
        let default_left = dt & DEFAULT_LEFT != 0;
        let t_i = threshold[i];
        let zero_by_threshold = 0.0 <= t_i;
        let (nan_left, zero_left) = match (dt >> 2) & 3 {
            // A NaN is read as 0.0 and compared with the threshold.
            MISSING_NONE => (zero_by_threshold, zero_by_threshold),
            // NaN and zero are both missing.
            MISSING_ZERO => (default_left, default_left),
            // NaN is missing; zero compares.
            MISSING_NAN => (default_left, zero_by_threshold),
            m => return Err(invalid(format!("node {i} has missing type {m}"))),
        };
        let feature = u32::try_from(split_feature[i])
            .map_err(|_| invalid(format!("node {i} splits on feature {}", split_feature[i])))?;
        raw.push(RawNode::Split {
            feature,
            threshold: t_i,
            nan_left,
            zero_left,
            left: child(i, left_child[i])?,
            right: child(i, right_child[i])?,
        });
    }
    raw.extend(leaf_value.iter().map(|&v| RawNode::Leaf(v)));
    Ok(())
}
