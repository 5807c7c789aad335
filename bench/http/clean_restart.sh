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
connections="${1:-64}" seconds="${2:-20}" port="${PORT:-18096}"
. "$here/restart_common.sh"
start
load
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
