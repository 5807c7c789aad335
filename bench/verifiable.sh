#!/usr/bin/env bash
# The verifiable-journal figures behind docs/BENCHMARKS.md ("Verifiable journal"): ledger throughput
# with checkpoints on and off (alternating runs, medians, since the machine is shared), restart time,
# and store-level proof latency at 10 million entries.
# Usage: bench/verifiable.sh [ROUNDS]     (about 4 minutes with the default 5 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
out=$(mktemp)
for i in $(seq "$rounds"); do
  for mode in on off; do
    flag=""; [ "$mode" = off ] && flag="--no-checkpoints"
    line=$("$bin" bench ledger --accounts 10000 --transfers 2000000 --batch 8189 $flag 2>/dev/null)
    echo "$mode $line" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {"on": [], "off": []}
for line in open(sys.argv[1]):
    mode, js = line.split(" ", 1)
    runs[mode].append(json.loads(js))
med = lambda mode, key: statistics.median(r[key] for r in runs[mode])
on, off = med("on", "transfers_per_s"), med("off", "transfers_per_s")
print(f"median transfers/s: checkpoints on {on:.0f}, off {off:.0f}: {100 * (on - off) / off:+.1f}%")
pairs = [a["transfers_per_s"] / b["transfers_per_s"] for a, b in zip(runs["on"], runs["off"])]
print(f"median of the per-round ratios on/off: {100 * (statistics.median(pairs) - 1):+.1f}% (rounds: "
      + ", ".join(f"{100 * (p - 1):+.0f}%" for p in pairs) + ")")
con, coff = med("on", "cpu_us_per_transfer"), med("off", "cpu_us_per_transfer")
print(f"median CPU per transfer (all threads): on {con:.3f} us, off {coff:.3f} us: {100 * (con - coff) / coff:+.1f}%")
PY
rm -f "$out"
echo "\$ puhui bench ledger --transfers 2000000 --restart"
"$bin" bench ledger --accounts 10000 --transfers 2000000 --batch 8189 --restart 2>/dev/null
echo "\$ puhui bench ledger --transfers 2000000 --restart --no-checkpoints"
"$bin" bench ledger --accounts 10000 --transfers 2000000 --batch 8189 --restart --no-checkpoints 2>/dev/null
echo "\$ puhui bench ledger --transfers 10000000 --proofs 100000"
"$bin" bench ledger --accounts 10000 --transfers 10000000 --batch 8189 --proofs 100000 2>/dev/null
