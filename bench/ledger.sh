#!/usr/bin/env bash
# The ledger benchmark suite behind docs/BENCHMARKS.md. Runs puhui and the PostgreSQL baseline in
# the same run, so the ratio is meaningful even when absolute figures drift on a shared machine.
# Usage: bench/ledger.sh            (about 3 minutes; PostgreSQL on 127.0.0.1:5432 for the baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
run() { echo "\$ puhui bench ledger $*"; "$bin" bench ledger "$@" 2>/dev/null; }
run --accounts 10000 --transfers 2000000 --batch 8189
run --accounts 10000 --transfers 2000000 --batch 8189 --reserve
run --accounts 10000 --transfers 1000000 --batch 100
run --accounts 10000 --transfers 1000000 --batch 100 --clients 8
run --accounts 10000 --transfers 2000000 --batch 8189 --distribution zipf
run --accounts 1000000 --transfers 1000000 --batch 8189
run --accounts 10000 --transfers 10000000 --batch 8189 --restart
if command -v pgbench >/dev/null && pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  pg=postgres://postgres@127.0.0.1:5432/test   # the PostgreSQL store on the same load (bench/pg-store.sh: more)
  run --accounts 10000 --transfers 200000 --batch 8189 --store "$pg"
  run --accounts 10000 --transfers 100000 --batch 100 --store "$pg"
  run --accounts 10000 --transfers 5000 --batch 1 --clients 8 --store "$pg"
  echo "\$ bench/pg-baseline/run.sh 20"
  bench/pg-baseline/run.sh 20
fi
