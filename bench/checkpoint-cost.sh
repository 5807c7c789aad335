#!/usr/bin/env bash
# The verifiable journal's cost on ledger throughput (issue #7: at most 5 % at batch 8,189):
# `puhui bench ledger` with the Merkle tree and signed checkpoints on, against `--no-checkpoints`.
#
# Usage: bench/checkpoint-cost.sh [ROUNDS] [TRANSFERS] [EXTRA ARGS…]   (default 8 rounds of 2,000,000;
#        SKIP_BUILD=1 to use the binary as built; about 13 s per run, 4 runs per round)
#
# Protocol, from what moved the figures on the 2-vCPU VMs we measure on (docs/BENCHMARKS.md):
# - Rounds run on, off, off, on (ABBA), so that neither arm always follows the other. A run that
#   follows one with a smaller footprint touches memory the host has not backed yet (the guest
#   reports freed pages to the host), and that alone moved one arm by 10-15 %.
# - Before every run: `sync`, drop the page cache (when running as root) and wait 3 s, so every
#   run starts from the same memory state.
# - `--reserve` in both arms (static allocation: the ledger's tables and the tree's levels are
#   made at start, outside the clock).
# Prints every run, then per arm the median throughput and committer CPU per transfer, the ratio
# of the medians and the median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-8}"
transfers="${2:-2000000}"
shift $(( $# > 2 ? 2 : $# ))
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $rounds rounds of $transfers"

run() {
  local arm="$1" extra=()
  shift
  [ "$arm" = off ] && extra=(--no-checkpoints)
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
  sleep 3
  "$bin" bench ledger --accounts 10000 --transfers "$transfers" --batch 8189 --reserve "${extra[@]}" "$@" 2>/dev/null |
    tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); print('$arm', d['transfers_per_s'], d['committer_cpu_us_per_transfer'], d['merkle_cpu_us_per_transfer'])" |
    tee -a "$out"
}

for round in $(seq 1 "$rounds"); do
  run on "$@"
  run off "$@"
  run off "$@"
  run on "$@"
done

python3 - "$out" <<'EOF'
import statistics as st, sys
runs = [l.split() for l in open(sys.argv[1])]
arm = {a: [(int(t), float(c), float(m)) for a2, t, c, m in runs if a2 == a] for a in ("on", "off")}
for a, v in arm.items():
    print(f"{a:>3}: median {st.median(x[0] for x in v):,.0f} transfers/s (mean {st.mean(x[0] for x in v):,.0f}), "
          f"committer {st.median(x[1] for x in v):.3f} µs/transfer, merkle {st.median(x[2] for x in v):.3f} µs/transfer")
on, off = [x[0] for x in arm["on"]], [x[0] for x in arm["off"]]
print(f"ratio of medians: {st.median(on) / st.median(off) - 1:+.1%}")
# Per round (ABBA): the two "on" runs against the two "off" runs of the same round.
ratios = [(on[2*i] + on[2*i+1]) / (off[2*i] + off[2*i+1]) - 1 for i in range(len(on) // 2)]
print(f"per-round ratios: {', '.join(f'{r:+.1%}' for r in ratios)}; median {st.median(ratios):+.1%}")
EOF
