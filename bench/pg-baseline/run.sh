#!/usr/bin/env bash
# The PostgreSQL baseline for docs/BENCHMARKS.md: one double-entry transfer per transaction
# (two balance updates + one insert, synchronous_commit on), 10,000 accounts, 8 connections.
# Usage: bench/pg-baseline/run.sh [seconds]   (needs PostgreSQL on 127.0.0.1:5432, database test)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-20}"
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" PGDATABASE="${PGDATABASE:-test}"
psql -q -v ON_ERROR_STOP=1 -f "$here/schema.sql" >/dev/null
pgbench -n -c 8 -j 2 -T "$seconds" -f "$here/transfer.sql" 2>&1 | grep -E 'tps|latency|transactions'
