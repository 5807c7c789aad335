//! Hand-written models pinning the split and missing-value rules, and the typed errors of bad files.

use puhui_risk_model::{Link, Model, ModelError, Source};

/// Two features `a`, `b`; regression. Node 0: `a <= 0.5` (missing type None, default left) →
/// leaf 0 (1.0), else node 1: `b <= -1e-35` (missing type NaN, default right) → leaf 1 (2.0),
/// else leaf 2 (3.0).
const LGBM: &str = "tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=regression
feature_names=a b
feature_infos=[0:1] [0:1]
tree_sizes=300

Tree=0
num_leaves=3
num_cat=0
split_feature=0 1
split_gain=1 1
threshold=0.5 -1.0000000180025095e-35
decision_type=2 8
left_child=-1 -2
right_child=1 -3
leaf_value=1 2 3
leaf_weight=1 1 1
leaf_count=1 1 1
internal_value=0 0
internal_weight=0 0
internal_count=3 2
is_linear=0
shrinkage=1


end of trees

feature_importances:
a=1
b=1

parameters:
[boosting: gbdt]
end of parameters

pandas_categorical:null
";

#[test]
fn lightgbm_rules() {
    let m = Model::from_lightgbm_text(LGBM).unwrap();
    assert_eq!(m.source(), Source::LightGbm);
    assert_eq!(m.link(), Link::Identity);
    assert_eq!((m.num_trees(), m.num_nodes(), m.max_depth(), m.num_features()), (1, 5, 2, 2));
    assert_eq!(m.feature_index("b"), Some(1));
    let p = |a: f32, b: f32| m.predict(&[a, b]);
    // `<=`: a value equal to the threshold goes left.
    assert_eq!(p(0.5, 0.0), 1.0);
    assert_eq!(p(0.500_001, -1.0), 2.0);
    // Missing type None: NaN reads as 0.0 (0 <= 0.5, left) whatever the default direction.
    assert_eq!(p(f32::NAN, -1.0), 1.0);
    // Missing type NaN, default right.
    assert_eq!(p(0.6, f32::NAN), 3.0);
    // Zero is compared under missing type NaN: 0 <= -1e-35 is false.
    assert_eq!(p(0.6, 0.0), 3.0);
    assert_eq!(p(0.6, -0.0), 3.0);
    // |v| <= 1e-35 reads as zero (LightGBM's predictor drops such values), even -1e-35 itself,
    // which would otherwise compare <= the threshold.
    assert_eq!(p(0.6, -1e-35), 3.0);
    assert_eq!(p(0.6, -1.1e-35), 2.0);
    // A short vector: b is missing.
    assert_eq!(m.predict(&[0.6]), 3.0);
}

#[test]
fn lightgbm_zero_missing_type_and_single_leaf_trees() {
    // Node 0: missing type Zero (4), default left (2): NaN and zero go left.
    let text = LGBM
        .replace("decision_type=2 8", "decision_type=6 8")
        .replace("threshold=0.5 ", "threshold=-0.5 ")
        .replace("end of trees", "Tree=1\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\nleft_child=\nright_child=\nleaf_value=10\nleaf_weight=1\nleaf_count=3\ninternal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1\n\n\nend of trees");
    let m = Model::from_lightgbm_text(&text).unwrap();
    assert_eq!(m.num_trees(), 2);
    assert_eq!(m.predict(&[0.0, -1.0]), 11.0);
    assert_eq!(m.predict(&[f32::NAN, -1.0]), 11.0);
    assert_eq!(m.predict(&[1e-36, -1.0]), 11.0);
    assert_eq!(m.predict(&[-0.6, -1.0]), 11.0);
    assert_eq!(m.predict(&[-0.4, -1.0]), 12.0);
}

#[test]
fn lightgbm_binary_sigmoid_and_average_output() {
    let text = LGBM.replace("objective=regression", "objective=binary sigmoid:2");
    let m = Model::from_lightgbm_text(&text).unwrap();
    assert_eq!(m.link(), Link::Sigmoid { scale: 2.0 });
    assert_eq!(m.predict_raw(&[0.0, 0.0]), 1.0);
    assert_eq!(m.predict(&[0.0, 0.0]), 1.0 / (1.0 + (-2.0f64).exp()));
    let text = LGBM.replace("tree_sizes=300", "tree_sizes=300\naverage_output");
    let m = Model::from_lightgbm_text(&text).unwrap();
    assert_eq!(m.predict(&[0.0, 0.0]), 1.0);
}

fn text_error_line(text: &str) -> (usize, String) {
    match Model::from_lightgbm_text(text) {
        Err(e @ ModelError::Text { line, .. }) => (line, e.to_string()),
        other => panic!("expected a text error, got {other:?}"),
    }
}

fn line_of(text: &str, prefix: &str) -> usize {
    1 + text.lines().position(|l| l.starts_with(prefix)).unwrap()
}

#[test]
fn lightgbm_errors_name_the_line() {
    let bad = LGBM.replace("threshold=0.5 ", "threshold=0.5x ");
    let (line, msg) = text_error_line(&bad);
    assert_eq!(line, line_of(&bad, "threshold="));
    assert!(msg.contains("0.5x") && msg.contains(&format!("line {line}")), "{msg}");

    let bad = LGBM.replace("Tree=0", "Tree=1");
    assert_eq!(text_error_line(&bad).0, line_of(&bad, "Tree=1"));

    let bad = LGBM.replace("is_linear=0", "is_linear");
    assert_eq!(text_error_line(&bad).0, line_of(&bad, "is_linear"));

    let bad = LGBM.replace("num_leaves=3\n", "num_leaves=3\nnum_leaves=3\n");
    assert_eq!(text_error_line(&bad).0, line_of(&bad, "num_leaves") + 1);

    // Truncated: no "end of trees".
    let cut = &LGBM[..LGBM.find("end of trees").unwrap()];
    let (line, msg) = text_error_line(cut);
    assert_eq!(line, cut.lines().count() + 1);
    assert!(msg.contains("end of trees"), "{msg}");

    let (line, _) = text_error_line("hello\n");
    assert_eq!(line, 1);
    let bad = LGBM.replace("max_feature_idx=1\n", "");
    assert!(text_error_line(&bad).1.contains("max_feature_idx"));
}

fn invalid_tree(text: &str) -> String {
    match Model::from_lightgbm_text(text) {
        Err(e @ ModelError::InvalidTree { tree: 0, line: Some(12), .. }) => e.to_string(),
        other => panic!("expected an invalid tree 0 at line 12 (`Tree=0`), got {other:?}"),
    }
}

#[test]
fn lightgbm_structure_errors() {
    assert!(invalid_tree(&LGBM.replace("right_child=1 -3", "right_child=1 -4")).contains("child -4"));
    assert!(invalid_tree(&LGBM.replace("right_child=1 -3", "right_child=0 -3")).contains("twice"));
    assert!(invalid_tree(&LGBM.replace("right_child=1 -3", "right_child=1 -1")).contains("twice"));
    assert!(invalid_tree(&LGBM.replace("leaf_value=1 2 3", "leaf_value=1 2")).contains("leaf_value"));
    assert!(invalid_tree(&LGBM.replace("split_feature=0 1", "split_feature=0 2")).contains("feature 2"));
    assert!(invalid_tree(&LGBM.replace("leaf_value=1 2 3", "leaf_value=1 nan 3")).contains("NaN"));
    assert!(invalid_tree(&LGBM.replace("decision_type=2 8", "decision_type=2 12")).contains("missing type"));
}

fn unsupported(result: Result<Model, ModelError>) -> String {
    match result {
        Err(e @ ModelError::Unsupported { .. }) => e.to_string(),
        other => panic!("expected unsupported, got {other:?}"),
    }
}

#[test]
fn lightgbm_unsupported_models_are_refused() {
    let load = |t: String| Model::from_lightgbm_text(&t);
    unsupported(load(LGBM.replace("num_class=1", "num_class=3")));
    unsupported(load(LGBM.replace("objective=regression", "objective=multiclass num_class:3")));
    unsupported(load(LGBM.replace("objective=regression", "objective=lambdarank")));
    unsupported(load(LGBM.replace("objective=regression", "objective=regression sqrt")));
    unsupported(load(LGBM.replace("decision_type=2 8", "decision_type=3 8")));
    unsupported(load(LGBM.replace("num_cat=0", "num_cat=1")));
    unsupported(load(LGBM.replace("is_linear=0", "is_linear=1")));
}

/// One tree: `f0 < 0.5` (default left) → -1, else 1.
fn xgb(objective: &str, base_score: &str, default_left: &str) -> String {
    format!(
        r#"{{"learner":{{"attributes":{{}},"feature_names":["x"],"feature_types":["float"],
"gradient_booster":{{"model":{{"gbtree_model_param":{{"num_parallel_tree":"1","num_trees":"1"}},
"iteration_indptr":[0,1],"tree_info":[0],"trees":[{{"base_weights":[0,-1,1],"categories":[],
"categories_nodes":[],"categories_segments":[],"categories_sizes":[],"default_left":[{default_left},0,0],
"id":0,"left_children":[1,-1,-1],"loss_changes":[1,0,0],"parents":[2147483647,0,0],
"right_children":[2,-1,-1],"split_conditions":[5E-1,-1E0,1E0],"split_indices":[0,0,0],
"split_type":[0,0,0],"sum_hessian":[3,1,2],"tree_param":{{"num_deleted":"0","num_feature":"1",
"num_nodes":"3","size_leaf_vector":"1"}}}}]}},"name":"gbtree"}},
"learner_model_param":{{"base_score":"{base_score}","boost_from_average":"1","num_class":"0",
"num_feature":"1","num_target":"1"}},"objective":{{"name":"{objective}","reg_loss_param":{{"scale_pos_weight":"1"}}}}}},
"version":[3,2,0]}}"#
    )
}

#[test]
fn xgboost_rules() {
    let m = Model::from_xgboost_json(xgb("reg:squarederror", "[2.5E-1]", "1").as_bytes()).unwrap();
    assert_eq!((m.source(), m.link(), m.base_margin()), (Source::XGBoost, Link::Identity, 0.25));
    assert_eq!(m.feature_names(), ["x"]);
    // `<`: a value equal to the threshold goes right.
    assert_eq!(m.predict(&[0.5]), 1.25);
    assert_eq!(m.predict(&[0.499_999_97]), -0.75);
    // Missing goes the default way (left here); zero is an ordinary value.
    assert_eq!(m.predict(&[f32::NAN]), -0.75);
    assert_eq!(m.predict(&[]), -0.75);
    assert_eq!(m.predict(&[0.0]), -0.75);
    // Older files write default_left as booleans; default right.
    let m = Model::from_xgboost_json(xgb("reg:squarederror", "2.5E-1", "false").as_bytes()).unwrap();
    assert_eq!(m.predict(&[f32::NAN]), 1.25);
    // Logistic: base_score is a probability; its margin is logit(base_score).
    let m = Model::from_xgboost_json(xgb("binary:logistic", "5E-1", "1").as_bytes()).unwrap();
    assert_eq!(m.base_margin(), 0.0);
    assert_eq!(m.predict_raw(&[1.0]), 1.0);
    assert!((m.predict(&[1.0]) - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-7);
    // from_bytes tells the formats apart.
    assert_eq!(Model::from_bytes(xgb("binary:logistic", "5E-1", "1").as_bytes()).unwrap().num_trees(), 1);
    assert_eq!(Model::from_bytes(LGBM.as_bytes()).unwrap().source(), Source::LightGbm);
}

#[test]
fn xgboost_errors() {
    // Syntax: line and column.
    let good = xgb("binary:logistic", "5E-1", "1");
    let bad = good.replacen("\"id\":0", "\"id\":0,,", 1);
    match Model::from_xgboost_json(bad.as_bytes()) {
        Err(ModelError::Json { line, column, .. }) => {
            assert_eq!(line, 1 + bad[..bad.find(",,").unwrap()].matches('\n').count());
            assert!(column > 0);
        }
        other => panic!("{other:?}"),
    }
    // Shape: the path of the offending field.
    let bad = good.replace("\"split_indices\"", "\"split_indexes\"");
    match Model::from_xgboost_json(bad.as_bytes()) {
        Err(e @ ModelError::Json { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("learner.gradient_booster.model.trees[0]") && msg.contains("split_indices"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let invalid = |json: String| match Model::from_xgboost_json(json.as_bytes()) {
        Err(e @ ModelError::InvalidTree { tree: 0, line: None, .. }) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        invalid(good.replace("\"left_children\":[1,-1,-1]", "\"left_children\":[0,-1,-1]")).contains("twice")
    );
    assert!(invalid(good.replace("\"right_children\":[2,-1,-1]", "\"right_children\":[3,-1,-1]"))
        .contains("child 3"));
    assert!(
        invalid(good.replace("\"split_indices\":[0,0,0]", "\"split_indices\":[1,0,0]")).contains("feature 1")
    );
    assert!(invalid(good.replace("\"split_indices\":[0,0,0]", "\"split_indices\":[0,0]"))
        .contains("split_indices"));
    assert!(invalid(good.replace("\"num_nodes\":\"3\"", "\"num_nodes\":\"4\"")).contains("num_nodes"));

    unsupported(Model::from_xgboost_json(xgb("multi:softprob", "5E-1", "1").as_bytes()));
    unsupported(Model::from_xgboost_json(xgb("rank:pairwise", "5E-1", "1").as_bytes()));
    unsupported(Model::from_xgboost_json(
        good.replace("\"num_class\":\"0\"", "\"num_class\":\"3\"").as_bytes(),
    ));
    unsupported(Model::from_xgboost_json(
        good.replace("\"split_type\":[0,0,0]", "\"split_type\":[1,0,0]").as_bytes(),
    ));
    unsupported(Model::from_xgboost_json(
        good.replace("\"name\":\"gbtree\"", "\"name\":\"dart\"").as_bytes(),
    ));
    assert!(matches!(
        Model::from_xgboost_json(xgb("binary:logistic", "1.5", "1").as_bytes()),
        Err(ModelError::Json { .. })
    ));
}

#[test]
fn other_errors() {
    assert!(matches!(Model::from_bytes(b"PK\x03\x04"), Err(ModelError::UnknownFormat)));
    assert!(matches!(Model::from_bytes(b""), Err(ModelError::UnknownFormat)));
    assert!(matches!(Model::from_bytes(b"tree\n\xff\n"), Err(ModelError::Text { line: 2, .. })));
    let e = Model::load("/nonexistent/model.json").unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/model.json"));
    assert!(std::error::Error::source(&e).is_some());
}
