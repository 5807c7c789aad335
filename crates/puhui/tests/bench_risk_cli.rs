//! `puhui bench risk`: both evaluators, with and without recording each decided event, end with a
//! JSON line; bad sizes are refused.

use std::process::Command;

fn bench_risk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["bench", "risk"])
        .args(args)
        .output()
        .expect("run puhui bench risk")
}

#[test]
fn times_both_evaluators_reading_or_recording() {
    for record in [false, true] {
        let mut args = vec!["--decisions", "2000", "--history", "3000", "--rules", "20"];
        if record {
            args.push("--record");
        }
        let out = bench_risk(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.contains("recording each event"), record, "{stderr}");
        let line = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        assert_eq!(json["record"], record);
        assert_eq!(json["decisions"], 2000);
        assert_eq!(json["model_trees"], 300, "the repository's benchmark model by default");
        for evaluator in ["interpreted", "compiled"] {
            let figures = &json[evaluator];
            assert!(figures["decisions_per_s"].as_f64().unwrap() > 0.0, "{json}");
            assert!(figures["p50_us"].as_f64().unwrap() <= figures["p99_us"].as_f64().unwrap(), "{json}");
        }
    }
}

#[test]
fn bad_sizes_are_refused_with_a_message() {
    let out = bench_risk(&["--decisions", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--decisions"));
}
