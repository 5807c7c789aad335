#!/usr/bin/env bash
# The PostgreSQL store next to the embedded store and the plain-SQL baseline, in one run (the
# ratios are what to read on a shared machine). About 2 minutes.
# Usage: bench/pg-store.sh [postgres://user@host:port/db]   (default: PUHUI_TEST_PG or the local test db)
set -euo pipefail
cd "$(dirname "$0")/.."
url="${1:-${PUHUI_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}}"
cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), PostgreSQL $(psql "$url" -Atc 'show server_version'), synchronous_commit=$(psql "$url" -Atc 'show synchronous_commit')"
run() { echo "\$ puhui bench ledger $*"; "$bin" bench ledger "$@" 2>/dev/null; }
for store in "" "--store $url"; do
  # shellcheck disable=SC2086
  run --accounts 10000 --transfers 200000 --batch 8189 $store
  # shellcheck disable=SC2086
  run --accounts 10000 --transfers 100000 --batch 100 $store
  # shellcheck disable=SC2086
  run --accounts 10000 --transfers 100000 --batch 100 --clients 8 $store
done
run --accounts 10000 --transfers 100000 --batch 1 --clients 8
run --accounts 10000 --transfers 5000 --batch 1 --clients 8 --store "$url"
run --accounts 10000 --transfers 10000 --batch 1 --clients 32 --store "$url"
run --accounts 10000 --transfers 200000 --batch 8189 --distribution zipf --store "$url"
echo "\$ bench/pg-baseline/run.sh 15"
bench/pg-baseline/run.sh 15
