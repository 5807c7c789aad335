#!/usr/bin/env bash
# GET /v1/decisions/{id} for a decision still in memory and for one older than the 100,000 kept
# there (read back from its journal entry). Starts `puhui serve` on a fresh data dir, makes
# standalone decisions (one wrk thread numbering them d2, d3, …; 16 connections) for `seconds`,
# then reads d100 (forgotten once 100,100 were made; wrk never sends its first request) and the
# newest one, each with 16 connections for 5 s.
# Usage: [PORT=18098] SKIP_BUILD=1 bench/http/old_decisions.sh [seconds]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
seconds="${1:-20}" port="${PORT:-18098}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
dir="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
PUHUI_ADMIN_TOKEN=bench RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/puhui" serve --data-dir "$dir" \
  --listen "127.0.0.1:$port" >/dev/null &
server=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
# One wrk thread numbers the ids (d100 is among the first decided; 16 connections share the counter).
out="$(KEY="$KEY" MODE=post wrk -t1 -c16 -d"${seconds}s" -s "$here/decisions.lua" "http://127.0.0.1:$port")"
made="$(echo "$out" | sed -nE 's/^wrk: ([0-9]+) requests.*/\1/p')"
echo "decisions made: $made"
for id in d100 "d$made"; do
  status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/decisions/$id" -H "Authorization: Bearer $KEY")"
  echo "GET $id ($status):"
  KEY="$KEY" MODE=get ID="$id" wrk -t1 -c16 -d5s -s "$here/decisions.lua" "http://127.0.0.1:$port" | grep '^wrk:'
done
