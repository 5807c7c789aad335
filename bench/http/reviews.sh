#!/usr/bin/env bash
# A tenant's review queue filled under load, then pages of it read (docs/BENCHMARKS.md, "A full
# review queue"). Starts `puhui serve` on a fresh data dir with the ruleset of bench/http/risk.sh
# changed to review every transfer, 1,000 accounts; wrk (apt-get install wrk) sends transfers with a
# risk context for 3 s (64 connections: the queue fills at 10,000 and later reviews get 503), then
# `GET /v1/risk/reviews?limit=100` five times.
# Usage: [PORT=18097] [SKIP_BUILD=1] bench/http/reviews.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
port="${PORT:-18097}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
dir="$(mktemp -d)"
ruleset="$dir/ruleset.toml"
python3 "$here/ruleset.py" "$ruleset"
sed -i 's/^review = 1000000$/review = 1/' "$ruleset"
PUHUI_ADMIN_TOKEN=bench RUST_LOG=error "${CARGO_TARGET_DIR:-target}/release/puhui" serve --data-dir "$dir/data" \
  --listen "127.0.0.1:$port" --ruleset "$ruleset" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
for i in $(seq 0 999); do printf '{"id":"acct-%d","currency":"CNY"}\n' "$i"; done |
  xargs -d '\n' -P 8 -I@ curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $KEY" -d '@'
KEY="$KEY" ACCOUNTS=1000 RISK=1 wrk -t1 -c64 -d3s --latency -s "$here/single.lua" "http://127.0.0.1:$port" | grep -E '^wrk:'
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^puhui_decisions_total\{outcome="review"\}|^puhui_risk_reviews_open'
pages=""
for _ in $(seq 5); do
  pages="$pages $(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/v1/risk/reviews?limit=100" -H "Authorization: Bearer $KEY")"
done
echo "GET /v1/risk/reviews?limit=100 with the queue full (s):$pages"
