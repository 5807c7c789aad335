//! Loading never panics: random bytes and corrupted fixture files end in a typed error or in a
//! model that scores any feature vector without panicking.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use puhui_risk_model::Model;

fn fixture(name: &str) -> &'static [u8] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        ["xgb_regression.json", "lgb_binary_zero_missing.txt", "lgb_regression.txt"]
            .iter()
            .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
            .collect()
    });
    &files.iter().find(|(n, _)| &**n == name).unwrap().1
}

/// Replacements for a number token: out-of-range indices, special floats, garbage.
const TOKENS: &[&str] = &[
    "-1",
    "-2",
    "0",
    "1",
    "2",
    "7",
    "14",
    "15",
    "99999",
    "-99999",
    "4294967295",
    "18446744073709551616",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e308",
    "-1e-35",
    "255",
    "3",
    "12",
    "x",
    "",
    "[",
    "]",
    "{",
    "\"",
    ",",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite a byte.
    Byte(usize, u8),
    /// Cut the file.
    Truncate(usize),
    /// Remove a line.
    DeleteLine(usize),
    /// Repeat a line.
    DuplicateLine(usize),
    /// Replace the n-th number-like token.
    Token(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Token(i, t)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Token(i, t)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Token(i, t)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match *m {
        Mutation::Byte(i, b) => {
            let n = bytes.len();
            bytes[i % n] = b;
        }
        Mutation::Truncate(i) => bytes.truncate(i % bytes.len()),
        Mutation::DeleteLine(i) | Mutation::DuplicateLine(i) => {
            let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            let k = i % lines.len();
            if matches!(m, Mutation::DeleteLine(_)) {
                lines.remove(k);
            } else {
                let line = lines[k].clone();
                lines.insert(k, line);
            }
            *bytes = lines.join(&b'\n');
        }
        Mutation::Token(i, t) => {
            // Spans of [-0-9.eE+] characters starting with a digit or '-'.
            let mut spans = Vec::new();
            let mut start = None;
            for (j, &b) in bytes.iter().enumerate() {
                let numeric = b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'e' | b'E' | b'+');
                match (start, numeric) {
                    (None, true) if b.is_ascii_digit() || b == b'-' => start = Some(j),
                    (Some(s), false) => {
                        spans.push((s, j));
                        start = None;
                    }
                    _ => {}
                }
            }
            if spans.is_empty() {
                return;
            }
            let (s, e) = spans[i % spans.len()];
            bytes.splice(s..e, TOKENS[t].bytes());
        }
    }
}

/// Scores a few vectors (short, long, NaN, infinities, zeros) and checks nothing panics.
fn exercise(model: &Model, seed: u64) {
    let n = model.num_features();
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-36, f32::MAX, 0.5, 3.0, 100.0];
    for len in [0, n / 2, n, n + 3] {
        let v: Vec<f32> =
            (0..len).map(|i| specials[(seed as usize).wrapping_add(i * 7) % specials.len()]).collect();
        let _ = model.predict(&v);
        let _ = model.predict_raw(&v);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(m) = Model::from_bytes(&bytes) {
            exercise(&m, 0);
        }
    }

    #[test]
    fn random_text_after_a_header_never_panics(
        body in "(Tree=[0-9]\n|num_leaves=[0-9]\n|left_child=[-0-9 ]{0,12}\n|right_child=[-0-9 ]{0,12}\n|split_feature=[0-9 ]{0,8}\n|threshold=[-0-9. ]{0,12}\n|decision_type=[0-9 ]{0,8}\n|leaf_value=[-0-9. ]{0,12}\n|max_feature_idx=[-0-9]{1,3}\n|end of trees\n|\n){0,30}"
    ) {
        let text = format!("tree\nversion=v4\n{body}");
        if let Ok(m) = Model::from_lightgbm_text(&text) {
            exercise(&m, 1);
        }
        let json = format!("{{\"learner\":{body:?}}}");
        let _ = Model::from_bytes(json.as_bytes());
    }

    #[test]
    fn corrupted_xgboost_files_never_panic(ms in proptest::collection::vec(mutation(), 1..6), seed in any::<u64>()) {
        let mut bytes = fixture("xgb_regression.json").to_vec();
        for m in &ms {
            apply(&mut bytes, m);
        }
        if let Ok(m) = Model::from_bytes(&bytes) {
            exercise(&m, seed);
        }
    }

    #[test]
    fn corrupted_lightgbm_files_never_panic(ms in proptest::collection::vec(mutation(), 1..6), seed in any::<u64>(), which in any::<bool>()) {
        let name = if which { "lgb_binary_zero_missing.txt" } else { "lgb_regression.txt" };
        let mut bytes = fixture(name).to_vec();
        for m in &ms {
            apply(&mut bytes, m);
        }
        if let Ok(m) = Model::from_bytes(&bytes) {
            exercise(&m, seed);
        }
    }
}

#[test]
fn mutations_do_produce_errors_and_models() {
    // Guard against a mutator that never changes anything meaningful: over a fixed set of
    // mutations, some files must still load and some must be rejected.
    let (mut ok, mut err) = (0, 0);
    for i in 0..200usize {
        let mut bytes = fixture("lgb_regression.txt").to_vec();
        apply(&mut bytes, &Mutation::Token(i * 7919, i % TOKENS.len()));
        match Model::from_bytes(&bytes) {
            Ok(m) => {
                exercise(&m, i as u64);
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    assert!(ok > 10 && err > 10, "ok {ok}, err {err}");
}
