#!/usr/bin/env bash
# A risk list growing to a million values beside risk load, then pages of it read beside risk load
# (docs/BENCHMARKS.md, "Reading a large list beside the load"). Starts `puhui serve` on a fresh data
# dir with the ruleset of bench/http/risk.sh, 1,000 accounts; wrk (apt-get install wrk) sends
# transfers with a risk context (64 connections) while (1) 100 changes of 10,000 values grow the
# list `deny`, then (2) `GET /v1/lists/deny?limit=100` is read ten times, 0.5 s apart.
# Usage: [PORT=18098] [SKIP_BUILD=1] bench/http/lists.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
port="${PORT:-18098}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
dir="$(mktemp -d)"
ruleset="$dir/ruleset.toml"
sed -n '/^python3 - "\$ruleset" <<.PY.$/,/^PY$/p' "$here/risk.sh" | sed '1d;$d' | python3 - "$ruleset"
PUHUI_ADMIN_TOKEN=bench RUST_LOG=error "${CARGO_TARGET_DIR:-target}/release/puhui" serve --data-dir "$dir/data" \
  --listen "127.0.0.1:$port" --ruleset "$ruleset" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
for i in $(seq 0 999); do printf '{"id":"acct-%d","currency":"CNY"}\n' "$i"; done |
  xargs -d '\n' -P 8 -I@ curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $KEY" -d '@'
for c in $(seq 0 99); do
  python3 -c "import json,sys; c=int(sys.argv[1]); print(json.dumps({'values':['bad-dev-%d' % (c*10000+i) for i in range(10000)]}))" "$c" >"$dir/chunk$c.json"
done
load() { KEY="$KEY" ACCOUNTS=1000 RISK=1 wrk -t1 -c64 -d"$1s" --latency -s "$here/single.lua" "http://127.0.0.1:$port" >"$dir/wrk.txt"; }
page() { curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/v1/lists/deny?limit=100" -H "Authorization: Bearer $KEY"; }
load 6 &
wrk_pid=$!
started=$(date +%s.%N)
for c in $(seq 0 99); do
  curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/lists/deny/add" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' --data-binary "@$dir/chunk$c.json"
done
echo "the list grew to 1,000,000 values in $(python3 -c "import time; print(round(time.time() - $started, 2))") s; risk load meanwhile:"
wait "$wrk_pid"
grep -E '^wrk:' "$dir/wrk.txt"
echo "one page of the list, idle: $(page) s"
load 8 &
wrk_pid=$!
sleep 1
pages=""
for _ in $(seq 10); do pages="$pages $(page)"; sleep 0.5; done
wait "$wrk_pid"
echo "pages read beside risk load (s):$pages; the load:"
grep -E '^wrk:' "$dir/wrk.txt"
