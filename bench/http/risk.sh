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
python3 "$here/ruleset.py" "$ruleset"
# The rate in a run's `wrk:` line.
rate() { sed -nE 's/^wrk: .* ([0-9]+) req\/s.*/\1/p' <<<"$1"; }
for round in $(seq "$rounds"); do
  echo "round $round: without risk"
  plain="$(bench/http/run.sh "$connections" "$seconds")"; echo "$plain"
  echo "round $round: with risk (100 rules, 10 features)"
  risk="$(RISK=1 SERVE_ARGS="--ruleset $ruleset" bench/http/run.sh "$connections" "$seconds")"; echo "$risk"
  p99="$(sed -nE 's/^wrk: .* p99 ([0-9.]+) ms.*/\1/p' <<<"$risk")"
  echo "round $round: with risk at $(( 100 * $(rate "$risk") / $(rate "$plain") )) % of the rate without, p99 $p99 ms"
done
