//! Scores the fixture rows through one model file in a loop, for instruction counts:
//!
//! ```text
//! cargo build --release -p puhui-risk-model --example predict_loop
//! valgrind --tool=callgrind --toggle-collect='*Model*predict*' \
//!     target/release/examples/predict_loop crates/risk-model/tests/fixtures/xgb_bench_300x6.json 10000
//! ```
//!
//! Instructions per prediction = the collected total / the number of predictions (printed).

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;

use puhui_risk_model::Model;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(count)) = (args.get(1), args.get(2).and_then(|c| c.parse::<usize>().ok())) else {
        eprintln!("usage: predict_loop MODEL_FILE PREDICTIONS");
        return ExitCode::FAILURE;
    };
    let model = match Model::load(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/expected.json");
    let text = std::fs::read_to_string(&expected).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let rows: Vec<Vec<f32>> = value["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r.as_array())
                .map(|r| r.iter().map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32)).collect())
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        eprintln!("no rows in {}", expected.display());
        return ExitCode::FAILURE;
    }
    let mut sum = 0.0;
    for i in 0..count {
        sum += model.predict(black_box(&rows[i % rows.len()]));
    }
    println!("{count} predictions over {} rows, sum {sum}", rows.len());
    ExitCode::SUCCESS
}
