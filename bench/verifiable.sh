#!/usr/bin/env bash
# The verifiable-journal figures behind docs/BENCHMARKS.md ("Verifiable journal"): ledger throughput
# with checkpoints on and off (bench/checkpoint-cost.sh), restart time, and store-level proof
# latency at 10 million entries.
# Usage: bench/verifiable.sh [ROUNDS]     (about 6 minutes with the default 5 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Checkpoints on against off: alternated (ABBA) runs from the same memory state (see that script).
SKIP_BUILD=1 bench/checkpoint-cost.sh "$rounds"
echo "\$ puhui bench ledger --transfers 2000000 --restart"
"$bin" bench ledger --accounts 10000 --transfers 2000000 --batch 8189 --restart 2>/dev/null
echo "\$ puhui bench ledger --transfers 2000000 --restart --no-checkpoints"
"$bin" bench ledger --accounts 10000 --transfers 2000000 --batch 8189 --restart --no-checkpoints 2>/dev/null
echo "\$ puhui bench ledger --transfers 10000000 --proofs 100000"
"$bin" bench ledger --accounts 10000 --transfers 10000000 --batch 8189 --proofs 100000 2>/dev/null
