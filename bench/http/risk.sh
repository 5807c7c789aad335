#!/usr/bin/env bash
# Transfers with and without inline risk decisions over HTTP (issue 4: "transfer + decision, 64
# connections: p99 ≤ 5 ms, throughput within 20 % of transfers without risk control").
# Alternates runs (the machine is shared), each on a fresh server. The ruleset is the benchmark
# shape of `puhui bench risk`: 10 velocity features, 100 CEL rules, thresholds that approve (so the
# ledger posts every transfer and the two runs do the same ledger work).
# Usage: bench/http/risk.sh [rounds] [connections] [seconds]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
rounds="${1:-3}" connections="${2:-64}" seconds="${3:-10}"
ruleset="$(mktemp --suffix .toml)"
trap 'rm -f "$ruleset"' EXIT
python3 - "$ruleset" <<'PY'
import sys
features = [("c1m","payer","count","1m"),("c1h","payer","count","1h"),("c24h","payer","count","24h"),
            ("s1h","payer","sum","1h"),("s24h","payer","sum","24h"),("m24h","payer","max","24h"),
            ("d24h","payer","distinct","24h"),("z30d","payer","zscore","30d"),
            ("dev24h","device","distinct","24h"),("ip1h","ip","count","1h")]
out = ['version = "bench-http-100"', "[thresholds]", "review = 1000000", "decline = 2000000"]
for n, e, a, w in features:
    out += ["[[features]]", f'name = "{n}"', f'entity = "{e}"', f'aggregate = "{a}"', f'window = "{w}"']
for i in range(100):
    n = features[i % len(features)][0]
    expr = [f"{n} >= {5 + i} && amount > {1000 * i}", f"new_payee && {n} > {i} && ctx.channel == 'app'",
            f"amount > {10000000 + i} || {n} > {1000 + i}", f"in_list('deny', ctx.device_id) && {n} >= {i}"][i % 4]
    out += ["[[rules]]", f'id = "r{i}"', 'description = "benchmark"', f'expression = "{expr}"', f"score = {10 + i % 7}"]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
for round in $(seq "$rounds"); do
  echo "round $round: without risk"; bench/http/run.sh "$connections" "$seconds"
  echo "round $round: with risk (100 rules, 10 features)"
  RISK=1 SERVE_ARGS="--ruleset $ruleset" bench/http/run.sh "$connections" "$seconds"
done
