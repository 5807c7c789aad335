#!/usr/bin/env bash
# HTTP latency at a fixed offered rate (open loop), with oha (`cargo install oha`): starts `puhui
# serve` on a fresh data dir, creates a tenant and two accounts, then sends single-transfer POSTs at
# RATE per second over CONNECTIONS connections for SECONDS. oha's --latency-correction measures each
# request from the moment it was due, not from when a connection was free (no coordinated omission).
# Each POST has no id (the server assigns one), so every request is a new durable transfer.
# Usage: bench/http/rate.sh [rate] [connections] [seconds]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
rate="${1:-30000}" connections="${2:-64}" seconds="${3:-10}" port=18098
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
dir="$(mktemp -d ${BENCH_DIR_PARENT:+-p "$BENCH_DIR_PARENT"})"
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
PUHUI_ADMIN_TOKEN=bench RUST_LOG=warn "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" ${SERVE_ARGS:-} >/dev/null &
server=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"oha"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
for a in a b; do
  curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $KEY" \
    -d "{\"id\":\"acct-$a\",\"currency\":\"CNY\"}"
done
post() {
  oha --no-tui --latency-correction -q "$rate" -c "$connections" -z "$1" --output-format json \
    -m POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"debit_account_id":"acct-a","credit_account_id":"acct-b","amount":100,"currency":"CNY"}' \
    "http://127.0.0.1:$port/v1/transfers"
}
# Warm-up (WARMUP seconds, default 0): connections opened, first pages of the ledger's maps touched.
[ "${WARMUP:-0}" = 0 ] || post "${WARMUP}s" >/dev/null
post "${seconds}s" |
  python3 -c '
import json, sys
r = json.load(sys.stdin)
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print("offered %s/s: %.0f requests/s, success %.4f, status %s" % (sys.argv[1], s["requestsPerSec"], s["successRate"], codes))
print("latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms" % (p["p50"]*1e3, p["p99"]*1e3, p["p99.9"]*1e3, s["slowest"]*1e3))
' "$rate"
