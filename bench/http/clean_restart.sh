#!/usr/bin/env bash
# Start time after a clean stop at a large journal: starts `puhui serve` with the benchmark ruleset
# (bench/http/ruleset.py) on a fresh data dir, sends transfers with risk contexts with wrk for
# SECONDS, stops the server with SIGTERM (it writes its snapshots), then times STARTS starts to
# /healthz, each followed by a clean stop, printing what each start read and re-applied.
# Usage: [BIN=path/to/puhui] [STARTS=3] [SERVE_ARGS=…] bench/http/clean_restart.sh [connections] [seconds]
# (BIN: another build to time, e.g. an older commit's, in the same run as this one's)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
connections="${1:-64}" seconds="${2:-20}" accounts=1000 port="${PORT:-18096}"
[ -n "${SKIP_BUILD:-}${BIN:-}" ] || cargo build --release -q -p puhui
bin="${BIN:-${CARGO_TARGET_DIR:-target}/release/puhui}"
dir="$(mktemp -d ${BENCH_DIR_PARENT:+-p "$BENCH_DIR_PARENT"})"
server=
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
python3 "$here/ruleset.py" "$dir/ruleset.toml"
start() {
  PUHUI_ADMIN_TOKEN=bench RUST_LOG=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --ruleset "$dir/ruleset.toml" ${SERVE_ARGS:-} >>"$dir/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 12000); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.01; done
  echo "the server did not start" >&2; cat "$dir/serve.log" >&2; exit 1
}
stop() { kill -TERM "$server"; wait "$server" 2>/dev/null || true; }
metric() { curl -sf "http://127.0.0.1:$port/metrics" | sed -nE "s/^$1 ([0-9.e+]+)$/\1/p"; }
start
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
for i in $(seq 0 $((accounts - 1))); do
  printf '{"id":"acct-%d","currency":"CNY"}\n' "$i"
done | xargs -d '\n' -P 8 -I{} curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $KEY" -d '{}'
KEY="$KEY" ACCOUNTS=$accounts RISK=1 wrk -t1 -c"$connections" -d"${seconds}s" -s "$here/single.lua" \
  "http://127.0.0.1:$port" | grep -E '^wrk:|Requests/sec|Non-2xx'
stop
echo "journal $(du -m "$dir/data/journal.phj" | cut -f1) MB, risk snapshot $(du -m "$dir/data/risk-snapshot.phs" 2>/dev/null | cut -f1) MB"
for n in $(seq "${STARTS:-3}"); do
  began=$(date +%s.%N)
  start
  ready=$(date +%s.%N)
  printf 'start %d after a clean stop: ready in %.2f s; risk control read %s journal entries, re-applied %s decisions, %s records carried by its snapshot\n' \
    "$n" "$(awk "BEGIN{print $ready - $began}")" "$(metric puhui_risk_start_journal_entries_read || true)" \
    "$(metric puhui_risk_start_decisions_replayed)" "$(metric puhui_risk_start_records_carried || true)"
  stop
done
