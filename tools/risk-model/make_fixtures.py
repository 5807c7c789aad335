#!/usr/bin/env python3
"""Train small XGBoost and LightGBM models and write the parity fixtures of puhui-risk-model.

Run from the repository root:

    python3 -m venv /tmp/rmvenv
    /tmp/rmvenv/bin/pip install xgboost lightgbm numpy
    /tmp/rmvenv/bin/python tools/risk-model/make_fixtures.py

It writes, under crates/risk-model/tests/fixtures/:

* the models, each exactly as the library's own `save_model` wrote it
  (XGBoost: JSON, LightGBM: text);
* expected.json: the library versions, 200 test rows (null = missing) and, per model, the
  library's own predictions for those rows (`predict`: probability for binary objectives, the
  prediction otherwise; `predict_raw`: the margin, i.e. the raw sum of the trees plus the base
  score), printed with full precision, and again as the bits of the IEEE-754 double
  (`predict_bits`, `predict_raw_bits`) so that the tests can also count bit-exact matches.

Everything is deterministic (fixed seeds, one thread), so re-running with the same library
versions reproduces the same files. The Rust tests read these files and need no Python.
"""

import json
import os
import platform
import sys

import lightgbm as lgb
import numpy as np
import xgboost as xgb

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "risk-model",
                   "tests", "fixtures")
SEED = 20261125
FEATURES = [
    "amount_log",          # log10 of the transfer amount
    "hour",                # local hour of day, 0..23
    "account_age_days",
    "txn_count_1h",
    "txn_count_24h",
    "new_device",          # 0/1
    "new_payee",           # 0/1
    "distance_km",         # from the usual location; often unknown (NaN)
    "kyc_tier",            # 0..3
    "balance_drain",       # amount / balance before, 0..1.5
]


def synthetic(rng, n):
    """A fraud-like table: 10 features, some NaNs, ~10% positives driven by interactions."""
    amount_log = rng.normal(2.3, 0.7, n)
    hour = rng.integers(0, 24, n).astype(np.float64)
    account_age = np.round(rng.exponential(400.0, n))
    c1h = rng.poisson(0.6, n).astype(np.float64)
    c24h = c1h + rng.poisson(3.0, n)
    new_device = (rng.random(n) < 0.12).astype(np.float64)
    new_payee = (rng.random(n) < 0.30).astype(np.float64)
    distance = rng.exponential(15.0, n)
    distance[rng.random(n) < 0.20] = np.nan
    kyc = rng.integers(0, 4, n).astype(np.float64)
    drain = np.clip(rng.beta(1.2, 4.0, n) * 1.5, 0.0, 1.5)
    X = np.column_stack([amount_log, hour, account_age, c1h, c24h, new_device, new_payee, distance,
                         kyc, drain])
    # Sprinkle missing values over every column, so every split meets them.
    X[rng.random(X.shape) < 0.03] = np.nan
    dist = np.nan_to_num(distance, nan=30.0)
    logit = (-3.4 + 1.1 * new_device * (drain > 0.6) + 0.8 * (amount_log > 3.0) * new_payee
             + 0.35 * np.minimum(c1h, 5) + 0.9 * (account_age < 30) + 0.02 * dist
             - 0.25 * kyc + 0.6 * ((hour < 5) | (hour > 22)) + rng.normal(0.0, 0.6, n))
    y_bin = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    # A continuous target (e.g. expected loss) for the regression models.
    y_reg = 10.0 * (amount_log + 0.3 * np.minimum(c24h, 10) + 2.0 * new_device * drain
                    - 0.5 * kyc) + rng.normal(0.0, 2.0, n)
    return X.astype(np.float32), y_bin, y_reg


def xgb_thresholds(path):
    """(feature, threshold) of every split of an XGBoost JSON model."""
    with open(path) as f:
        model = json.load(f)
    out = []
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        for i, left in enumerate(tree["left_children"]):
            if left != -1:
                out.append((tree["split_indices"][i], tree["split_conditions"][i]))
    return out


def test_rows(rng, X_test, thresholds):
    """200 rows: held-out data, plus rows hitting edges (exact thresholds, zeros, all missing)."""
    rows = X_test[:200].copy()
    # Rows 0..29: set three features to an exact split threshold of the XGBoost model (as f32),
    # exercising `<` versus `<=`.
    for r in range(30):
        for _ in range(3):
            f, t = thresholds[rng.integers(0, len(thresholds))]
            rows[r, f] = np.float32(t)
    # Rows 30..39: exact zeros, negative zero and tiny values (LightGBM's zero threshold is 1e-35).
    for r in range(30, 40):
        cols = rng.choice(len(FEATURES), 4, replace=False)
        rows[r, cols[0]] = 0.0
        rows[r, cols[1]] = -0.0
        rows[r, cols[2]] = 1e-36
        rows[r, cols[3]] = -1e-36
    rows[40, :] = np.nan
    rows[41, :] = 0.0
    # Rows 42..59: many missing values.
    rows[42:60][rng.random((18, len(FEATURES))) < 0.4] = np.nan
    return rows


def num(x):
    x = float(x)
    return None if np.isnan(x) else x


def bits(x):
    """The IEEE-754 bits of x as a float64, for bit-exact comparisons."""
    return int(np.float64(x).view(np.uint64))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    X, y_bin, y_reg = synthetic(rng, 2000)
    X_test, _, _ = synthetic(rng, 400)
    X_big, y_big, _ = synthetic(rng, 20000)

    models = {}

    def xgb_model(name, params, rounds, X_train, y_train, description):
        dtrain = xgb.DMatrix(X_train, label=y_train, missing=np.nan, feature_names=FEATURES)
        params = dict(params, seed=0, nthread=1, tree_method="hist")
        booster = xgb.train(params, dtrain, num_boost_round=rounds)
        path = os.path.join(OUT, name + ".json")
        booster.save_model(path)
        models[name] = {"file": name + ".json", "format": "xgboost-json", "booster": booster,
                        "objective": params["objective"], "trees": rounds,
                        "description": description}

    def lgb_model(name, params, rounds, X_train, y_train, description):
        params = dict(params, seed=0, num_threads=1, deterministic=True, force_row_wise=True,
                      verbose=-1)
        dtrain = lgb.Dataset(X_train, label=y_train, feature_name=FEATURES, free_raw_data=False)
        booster = lgb.train(params, dtrain, num_boost_round=rounds)
        path = os.path.join(OUT, name + ".txt")
        booster.save_model(path)
        models[name] = {"file": name + ".txt", "format": "lightgbm-text", "booster": booster,
                        "objective": params["objective"], "trees": rounds,
                        "description": description}

    xgb_model("xgb_binary", {"objective": "binary:logistic", "max_depth": 4, "eta": 0.1}, 50, X,
              y_bin, "XGBoost binary:logistic, 50 trees, depth 4")
    xgb_model("xgb_regression", {"objective": "reg:squarederror", "max_depth": 3, "eta": 0.2}, 30,
              X, y_reg, "XGBoost reg:squarederror, 30 trees, depth 3")
    xgb_model("xgb_bench_300x6",
              {"objective": "binary:logistic", "max_depth": 6, "eta": 0.05, "min_child_weight": 0.5},
              300, X_big, y_big, "XGBoost binary:logistic, 300 trees, depth 6 (the benchmark model)")
    lgb_model("lgb_binary", {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1}, 50, X,
              y_bin, "LightGBM binary, 50 trees, 15 leaves (missing type NaN or None per feature)")
    lgb_model("lgb_regression", {"objective": "regression", "num_leaves": 15, "learning_rate": 0.1},
              30, X, y_reg, "LightGBM regression (L2), 30 trees, 15 leaves")
    lgb_model("lgb_binary_zero_missing",
              {"objective": "binary", "num_leaves": 7, "learning_rate": 0.1, "zero_as_missing": True},
              20, np.nan_to_num(X, nan=0.0), y_bin,
              "LightGBM binary with zero_as_missing (missing type Zero), 20 trees, 7 leaves")

    rows = test_rows(rng, X_test, xgb_thresholds(os.path.join(OUT, "xgb_binary.json")))
    dtest = xgb.DMatrix(rows, missing=np.nan, feature_names=FEATURES)

    out_models = {}
    for name, m in models.items():
        booster = m.pop("booster")
        if m["format"] == "xgboost-json":
            pred = booster.predict(dtest)
            raw = booster.predict(dtest, output_margin=True)
        else:
            pred = booster.predict(rows)
            raw = booster.predict(rows, raw_score=True)
        m["predict"] = [num(v) for v in pred]
        m["predict_raw"] = [num(v) for v in raw]
        m["predict_bits"] = [bits(v) for v in pred]
        m["predict_raw_bits"] = [bits(v) for v in raw]
        out_models[name] = m

    expected = {
        "generator": "tools/risk-model/make_fixtures.py",
        "seed": SEED,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "xgboost": xgb.__version__, "lightgbm": lgb.__version__},
        "feature_names": FEATURES,
        "rows": [[num(v) for v in row] for row in rows],
        "models": out_models,
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
