//! XGBoost JSON (`Booster.save_model("model.json")`) loading.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::forest::{Forest, RawNode};
use crate::{Link, Model, ModelError, Source};

#[derive(Deserialize)]
struct File {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    #[serde(default)]
    feature_names: Vec<String>,
    gradient_booster: GradientBooster,
    learner_model_param: LearnerModelParam,
    objective: Objective,
}

#[derive(Deserialize)]
struct GradientBooster {
    name: String,
    #[serde(default)]
    model: Option<GbTree>,
}

#[derive(Deserialize)]
struct GbTree {
    trees: Vec<Tree>,
    #[serde(default)]
    tree_info: Vec<i64>,
}

#[derive(Deserialize)]
struct LearnerModelParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    num_feature: String,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct Tree {
    split_indices: Vec<i64>,
    split_conditions: Vec<f32>,
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    default_left: Bools,
    /// Read for shape checking only: a leaf's value is its `split_conditions` entry, as in
    /// XGBoost's own loader (`base_weights` holds the node weights kept for model dumps).
    #[serde(default)]
    base_weights: Vec<f32>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    tree_param: Option<TreeParam>,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    num_nodes: Option<String>,
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// `default_left`: booleans in older files, 0/1 integers in newer ones.
struct Bools(Vec<bool>);

impl<'de> Deserialize<'de> for Bools {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bools;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of booleans or 0/1 integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bools, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<Bool>()? {
                    out.push(b.0);
                }
                Ok(Bools(out))
            }
        }
        d.deserialize_seq(V)
    }
}

struct Bool(bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a boolean or 0/1")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bool, E> {
                Ok(Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bool, E> {
                match v {
                    0 => Ok(Bool(false)),
                    1 => Ok(Bool(true)),
                    _ => Err(E::custom(format!("expected 0 or 1, got {v}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bool, E> {
                match v {
                    0 => Ok(Bool(false)),
                    1 => Ok(Bool(true)),
                    _ => Err(E::custom(format!("expected 0 or 1, got {v}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn unsupported(what: impl Into<String>) -> ModelError {
    ModelError::Unsupported { what: what.into() }
}

fn invalid(tree: usize, message: impl Into<String>) -> ModelError {
    ModelError::InvalidTree { tree, line: None, message: message.into() }
}

fn param_error(name: &str, value: &str) -> ModelError {
    ModelError::Json {
        path: format!("learner.learner_model_param.{name}"),
        line: 0,
        column: 0,
        message: format!("cannot read {value:?} as a number"),
    }
}

/// Reads a scalar parameter; XGBoost >= 3.1 writes vector-valued ones as `"[6.7E-2]"`.
fn scalar_param(name: &str, value: &str) -> Result<f32, ModelError> {
    let inner = value.trim();
    let inner = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(inner);
    if inner.contains(',') {
        return Err(unsupported(format!("{name} {value} has several values (multi-target model)")));
    }
    inner.trim().parse::<f32>().map_err(|_| param_error(name, value))
}

fn count_param(name: &str, value: Option<&str>) -> Result<u64, ModelError> {
    match value {
        None => Ok(0),
        Some(v) => v.trim().parse::<u64>().map_err(|_| param_error(name, v)),
    }
}

/// Output transform and base-score-to-margin conversion of an XGBoost objective.
fn objective(name: &str, base_score: f32) -> Result<(Link, f32), ModelError> {
    match name {
        // LogisticRegression::ProbToMargin, in f32 as XGBoost does.
        "binary:logistic" | "reg:logistic" | "binary:logitraw" => {
            if !(base_score > 0.0 && base_score < 1.0) {
                return Err(invalid_base_score(name, base_score));
            }
            let margin = -(1.0f32 / base_score - 1.0f32).ln();
            let link = if name == "binary:logitraw" { Link::Identity } else { Link::Sigmoid { scale: 1.0 } };
            Ok((link, margin))
        }
        "reg:squarederror" | "reg:linear" | "reg:pseudohubererror" | "reg:absoluteerror" => {
            if !base_score.is_finite() {
                return Err(invalid_base_score(name, base_score));
            }
            Ok((Link::Identity, base_score))
        }
        other => Err(unsupported(format!("XGBoost objective {other:?}"))),
    }
}

fn invalid_base_score(objective: &str, base_score: f32) -> ModelError {
    ModelError::Json {
        path: "learner.learner_model_param.base_score".into(),
        line: 0,
        column: 0,
        message: format!("base_score {base_score} is out of range for {objective}"),
    }
}

pub(crate) fn load(bytes: &[u8]) -> Result<Model, ModelError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let file: File = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ModelError::Json { path, line: inner.line(), column: inner.column(), message: inner.to_string() }
    })?;
    de.end().map_err(|e| ModelError::Json {
        path: String::new(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let learner = file.learner;

    if learner.gradient_booster.name != "gbtree" {
        return Err(unsupported(format!(
            "XGBoost booster {:?} (only gbtree)",
            learner.gradient_booster.name
        )));
    }
    let gbtree = learner.gradient_booster.model.ok_or_else(|| ModelError::Json {
        path: "learner.gradient_booster".into(),
        line: 0,
        column: 0,
        message: "missing field `model`".into(),
    })?;
    let param = &learner.learner_model_param;
    if count_param("num_class", param.num_class.as_deref())? > 1 {
        return Err(unsupported("XGBoost multiclass model (num_class > 1)"));
    }
    if count_param("num_target", param.num_target.as_deref())? > 1 {
        return Err(unsupported("XGBoost multi-target model (num_target > 1)"));
    }
    let num_features = count_param("num_feature", Some(&param.num_feature))?;
    let num_features = usize::try_from(num_features)
        .ok()
        .filter(|&n| n <= crate::MAX_FEATURES)
        .ok_or_else(|| unsupported(format!("{num_features} features (at most {})", crate::MAX_FEATURES)))?;
    let base_score = scalar_param("base_score", &param.base_score)?;
    let (link, base_margin) = objective(&learner.objective.name, base_score)?;
    if gbtree.tree_info.iter().any(|&g| g != 0) {
        return Err(unsupported("XGBoost model with several output groups"));
    }
    if !learner.feature_names.is_empty() && learner.feature_names.len() != num_features {
        return Err(ModelError::Json {
            path: "learner.feature_names".into(),
            line: 0,
            column: 0,
            message: format!("{} names for {num_features} features", learner.feature_names.len()),
        });
    }

    let mut forest = Forest::default();
    let mut raw = Vec::new();
    for (t, tree) in gbtree.trees.iter().enumerate() {
        tree_nodes(t, tree, &mut raw)?;
        forest.push_tree(&raw, num_features).map_err(|m| invalid(t, m))?;
    }
    forest.finish(Source::XGBoost, num_features);
    Ok(Model {
        forest,
        source: Source::XGBoost,
        objective: learner.objective.name,
        link,
        base_margin: f64::from(base_margin),
        average: false,
        num_features,
        feature_names: learner.feature_names,
    })
}

/// Converts one XGBoost tree to raw nodes (in `raw`, reused between trees).
fn tree_nodes(t: usize, tree: &Tree, raw: &mut Vec<RawNode>) -> Result<(), ModelError> {
    if let Some(size) = tree.tree_param.as_ref().and_then(|p| p.size_leaf_vector.as_deref()) {
        if size.trim() != "1" && size.trim() != "0" {
            return Err(unsupported(format!("tree {t} has vector leaves (size_leaf_vector {size})")));
        }
    }
    let n = tree.left_children.len();
    if let Some(declared) = tree.tree_param.as_ref().and_then(|p| p.num_nodes.as_deref()) {
        if declared.trim().parse::<usize>().ok() != Some(n) {
            return Err(invalid(t, format!("num_nodes is {declared} but left_children has {n} entries")));
        }
    }
    let lengths = [
        ("right_children", tree.right_children.len()),
        ("split_indices", tree.split_indices.len()),
        ("split_conditions", tree.split_conditions.len()),
        ("default_left", tree.default_left.0.len()),
    ];
    for (name, len) in lengths {
        if len != n {
            return Err(invalid(t, format!("{name} has {len} entries, left_children has {n}")));
        }
    }
    for (name, len) in [("base_weights", tree.base_weights.len()), ("split_type", tree.split_type.len())] {
        if len != 0 && len != n {
            return Err(invalid(t, format!("{name} has {len} entries, left_children has {n}")));
        }
    }
    raw.clear();
    for i in 0..n {
        let left = tree.left_children[i];
        if left == -1 {
            raw.push(RawNode::Leaf(f64::from(tree.split_conditions[i])));
            continue;
        }
        if tree.split_type.get(i).is_some_and(|&s| s != 0) {
            return Err(unsupported(format!("tree {t} node {i} is a categorical split")));
        }
        let right = tree.right_children[i];
        let feature = tree.split_indices[i];
        let (Ok(left), Ok(right), Ok(feature)) =
            (usize::try_from(left), usize::try_from(right), u32::try_from(feature))
        else {
            return Err(invalid(t, format!("node {i} has children {left}, {right} and feature {feature}")));
        };
        raw.push(RawNode::Split {
            feature,
            threshold: f64::from(tree.split_conditions[i]),
            nan_left: tree.default_left.0[i],
            zero_left: false,
            left,
            right,
        });
    }
    Ok(())
}
