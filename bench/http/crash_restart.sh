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
connections="${1:-64}" seconds="${2:-20}" port="${PORT:-18097}"
. "$here/restart_common.sh"
start
load
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
