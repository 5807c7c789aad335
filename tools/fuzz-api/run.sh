#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis (from PyPI, in a venv under
# ~/.cache): a fresh `puhui serve`, a tenant's API key, then generated requests (coverage, fuzzing
# and stateful phases) checked for 5xx answers, statuses the document does not name, and bodies
# or content types that do not match it.
# Usage: tools/fuzz-api/run.sh [seconds]     (default 200; needs a release build of puhui)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
seconds="${1:-200}" port="${PORT:-18090}"
venv="${HOME}/.cache/puhui-schemathesis"
[ -x "$venv/bin/schemathesis" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q schemathesis; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p puhui
dir="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
PUHUI_ADMIN_TOKEN=fuzz RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/puhui" serve --data-dir "$dir" --listen "127.0.0.1:$port" >/dev/null &
server=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
key=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/tenants" -H 'Authorization: Bearer fuzz' -d '{"name":"fuzz"}' |
  sed -E 's/.*"api_key":"([^"]+)".*/\1/')
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" -u "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $key" \
  -c not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  -n 30 --max-time "$seconds" --no-shrink -w 2
