#!/usr/bin/env bash
# HTTP benchmark with wrk (apt-get install wrk): starts `puhui serve` on a fresh data dir, creates a
# tenant and accounts, then runs single-transfer POSTs with 64 connections for 10 s.
# Usage: [PORT=18099] [RISK=1] [IDEM=1] [CPU=1] bench/http/run.sh [connections] [seconds]
# (RISK=1: transfers carry a risk context; IDEM=1: each POST carries an Idempotency-Key;
# CPU=1: also the server's CPU per request by thread, and the machine's (bench/http/cpu.py);
# SERVE_ENV="PUHUI_STORE=postgres://…?schema=NEW": the server on PostgreSQL, in a fresh schema)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
connections="${1:-64}" seconds="${2:-10}" accounts=1000 port="${PORT:-18099}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
dir="$(mktemp -d ${BENCH_DIR_PARENT:+-p "$BENCH_DIR_PARENT"})"
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
PUHUI_ADMIN_TOKEN=bench RUST_LOG=warn env ${SERVE_ENV:-} "${CARGO_TARGET_DIR:-target}/release/puhui" serve --data-dir "$dir" --listen "127.0.0.1:$port" ${SERVE_ARGS:-} >/dev/null &
server=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
for i in $(seq 0 $((accounts - 1))); do
  printf '{"id":"acct-%d","currency":"CNY"}\n' "$i"
done | xargs -d '\n' -P 8 -I{} curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $KEY" -d '{}'
[ -z "${CPU:-}" ] || python3 "$here/cpu.py" snap "$server" >"$dir/cpu.before"
out="$(KEY="$KEY" ACCOUNTS=$accounts RISK="${RISK:-0}" wrk -t1 -c"$connections" -d"${seconds}s" --latency \
  -s "$here/single.lua" "http://127.0.0.1:$port")"
echo "$out" | grep -E '^wrk:|Requests/sec|Non-2xx'
if [ -n "${CPU:-}" ]; then
  python3 "$here/cpu.py" snap "$server" >"$dir/cpu.after"
  requests="$(echo "$out" | sed -nE 's/^wrk: ([0-9]+) requests.*/\1/p')"
  python3 "$here/cpu.py" report "$dir/cpu.before" "$dir/cpu.after" "$requests"
fi
