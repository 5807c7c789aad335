#!/usr/bin/env bash
# Restart time after a crash under risk load: starts `puhui serve` with the benchmark ruleset
# (bench/http/ruleset.py) on a fresh data dir, sends transfers with risk contexts with wrk for
# SECONDS (THINK_MS=n paces each connection, so the load leaves idle CPU), waits IDLE seconds,
# kills the server with SIGKILL and times a start to /healthz, printing what the start re-applied.
# Usage: [SERVE_ARGS=…] [THINK_MS=n] [IDLE=s] bench/http/crash_restart.sh [connections] [seconds]
# (SERVE_ARGS="--risk-snapshot-every 0": no snapshots while serving, for the comparison)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
connections="${1:-64}" seconds="${2:-20}" accounts=1000 port="${PORT:-18097}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
bin="${CARGO_TARGET_DIR:-target}/release/puhui"
dir="$(mktemp -d ${BENCH_DIR_PARENT:+-p "$BENCH_DIR_PARENT"})"
server=
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
python3 "$here/ruleset.py" "$dir/ruleset.toml"
start() {
  PUHUI_ADMIN_TOKEN=bench RUST_LOG=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --ruleset "$dir/ruleset.toml" ${SERVE_ARGS:-} >>"$dir/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 6000); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.01; done
  echo "the server did not start" >&2; cat "$dir/serve.log" >&2; exit 1
}
metric() { curl -sf "http://127.0.0.1:$port/metrics" | sed -nE "s/^$1 ([0-9.e+]+)$/\1/p"; }
start
KEY=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
for i in $(seq 0 $((accounts - 1))); do
  printf '{"id":"acct-%d","currency":"CNY"}\n' "$i"
done | xargs -d '\n' -P 8 -I{} curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $KEY" -d '{}'
KEY="$KEY" ACCOUNTS=$accounts RISK=1 wrk -t1 -c"$connections" -d"${seconds}s" -s "$here/single.lua" \
  "http://127.0.0.1:$port" | grep -E '^wrk:|Requests/sec|Non-2xx'
sleep "${IDLE:-0}"
echo "before the kill: checkpointer $(metric puhui_risk_checkpointer_lag_entries) entries behind, $(metric puhui_risk_checkpoints_total) snapshots written while serving"
kill -9 "$server"; wait "$server" 2>/dev/null || true
echo "journal $(du -m "$dir/data/journal.phj" | cut -f1) MB, risk snapshot $(du -m "$dir/data/risk-snapshot.phs" 2>/dev/null | cut -f1) MB"
began=$(date +%s.%N)
start
ready=$(date +%s.%N)
printf 'restart after SIGKILL: ready in %.2f s; decisions re-applied %s, journal entries read by risk control %s, records carried by the snapshot %s\n' \
  "$(awk "BEGIN{print $ready - $began}")" "$(metric puhui_risk_start_decisions_replayed)" \
  "$(metric puhui_risk_start_journal_entries_read)" "$(metric puhui_risk_start_records_carried)"
