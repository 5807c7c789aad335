# Shared by bench/http/crash_restart.sh and bench/http/clean_restart.sh (sourced, not run): a data
# dir with the benchmark ruleset, `start` (serve, wait for /healthz), `stop` (SIGTERM, wait), `metric NAME`, and `load`
# (a tenant, 1,000 accounts, then wrk with risk contexts for $seconds on $connections).
# Needs: here, port, connections, seconds; bin (default: this tree's release build).
[ -n "${SKIP_BUILD:-}${BIN:-}" ] || cargo build --release -q -p puhui
bin="${BIN:-${CARGO_TARGET_DIR:-target}/release/puhui}"
accounts=1000
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
load() {
  local key
  key=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer bench' -d '{"name":"wrk"}' |
    sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  for i in $(seq 0 $((accounts - 1))); do
    printf '{"id":"acct-%d","currency":"CNY"}\n' "$i"
  done | xargs -d '\n' -P 8 -I{} curl -sf -o /dev/null -XPOST "http://127.0.0.1:$port/v1/accounts" -H "Authorization: Bearer $key" -d '{}'
  KEY="$key" ACCOUNTS=$accounts RISK=1 wrk -t1 -c"$connections" -d"${seconds}s" -s "$here/single.lua" \
    "http://127.0.0.1:$port" | grep -E '^wrk:|Requests/sec|Non-2xx'
}
