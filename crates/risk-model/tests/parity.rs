//! Parity with the Python libraries: the committed fixtures (written by
//! `tools/risk-model/make_fixtures.py` with the real XGBoost and LightGBM) hold 200 feature rows
//! and the libraries' own predictions; ours must equal them to 1e-6.

use std::path::PathBuf;

use puhui_risk_model::{Link, Model, Source};
use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows(expected: &Value) -> Vec<Vec<f32>> {
    expected["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                // The fixture prints each f32 exactly, so the f64 -> f32 cast is exact.
                .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
                .collect()
        })
        .collect()
}

/// Checks one model: every prediction within 1e-6 of Python's. Prints the largest absolute
/// differences and how many predictions are bit-identical.
fn check(name: &str) {
    let expected = expected();
    let rows = rows(&expected);
    let spec = &expected["models"][name];
    let model = Model::load(fixtures().join(spec["file"].as_str().unwrap())).unwrap();
    assert_eq!(model.num_trees() as u64, spec["trees"].as_u64().unwrap(), "{name}: tree count");
    assert_eq!(model.num_features(), 10);
    let names: Vec<&str> =
        expected["feature_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(model.feature_names(), names.as_slice());

    for key in ["predict", "predict_raw"] {
        // The exact bits of Python's f64 (JSON decimals are not always parsed to the last ulp).
        let want = spec[format!("{key}_bits")].as_array().unwrap();
        assert_eq!(want.len(), rows.len());
        let (mut worst, mut exact) = (0.0f64, 0usize);
        for (i, (row, want)) in rows.iter().zip(want).enumerate() {
            let want = f64::from_bits(want.as_u64().unwrap());
            let got = if key == "predict" { model.predict(row) } else { model.predict_raw(row) };
            let diff = (got - want).abs();
            assert!(diff <= TOLERANCE, "{name} {key} row {i}: got {got:e}, Python {want:e}, row {row:?}");
            worst = worst.max(diff);
            exact += usize::from(got.to_bits() == want.to_bits());
        }
        eprintln!("{name} {key}: max |diff| {worst:e}, bit-identical {exact}/{}", rows.len());
    }
}

#[test]
fn xgboost_binary_logistic_matches_python() {
    check("xgb_binary");
    let m = Model::load(fixtures().join("xgb_binary.json")).unwrap();
    assert_eq!(m.source(), Source::XGBoost);
    assert_eq!(m.objective(), "binary:logistic");
    assert_eq!(m.link(), Link::Sigmoid { scale: 1.0 });
    assert!(m.max_depth() <= 4);
}

#[test]
fn xgboost_regression_matches_python() {
    check("xgb_regression");
    let m = Model::load(fixtures().join("xgb_regression.json")).unwrap();
    assert_eq!(m.link(), Link::Identity);
}

#[test]
fn xgboost_300_trees_depth_6_matches_python() {
    check("xgb_bench_300x6");
    let m = Model::load(fixtures().join("xgb_bench_300x6.json")).unwrap();
    assert_eq!(m.max_depth(), 6);
}

#[test]
fn lightgbm_binary_matches_python() {
    check("lgb_binary");
    let m = Model::load(fixtures().join("lgb_binary.txt")).unwrap();
    assert_eq!(m.source(), Source::LightGbm);
    assert_eq!(m.objective(), "binary sigmoid:1");
    assert_eq!(m.link(), Link::Sigmoid { scale: 1.0 });
}

#[test]
fn lightgbm_regression_matches_python() {
    check("lgb_regression");
}

#[test]
fn lightgbm_zero_as_missing_matches_python() {
    check("lgb_binary_zero_missing");
}

#[test]
fn fixture_metadata_names_the_library_versions() {
    let expected = expected();
    for lib in ["xgboost", "lightgbm", "numpy", "python"] {
        assert!(expected["versions"][lib].is_string(), "{lib} version missing");
    }
}

#[test]
fn short_feature_vectors_read_as_missing() {
    let expected = expected();
    let rows = rows(&expected);
    // Row 40 is all missing.
    assert!(rows[40].iter().all(|v| v.is_nan()));
    for name in ["xgb_binary", "lgb_binary", "lgb_binary_zero_missing"] {
        let spec = &expected["models"][name];
        let model = Model::load(fixtures().join(spec["file"].as_str().unwrap())).unwrap();
        let want = spec["predict"][40].as_f64().unwrap();
        assert!((model.predict(&[]) - want).abs() <= TOLERANCE, "{name}");
        // Extra trailing features are ignored.
        let mut long = rows[7].clone();
        long.extend([1.0, 2.0, 3.0]);
        assert_eq!(model.predict(&long), model.predict(&rows[7]));
    }
}
