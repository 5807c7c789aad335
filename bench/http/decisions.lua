-- wrk scenario for bench/http/old_decisions.sh. MODE=post: standalone decisions (POST /v1/decisions)
-- under ids d<n>; MODE=get: GET /v1/decisions/<ID> again and again. Needs KEY in the environment.
local key = os.getenv("KEY")
local mode = os.getenv("MODE") or "post"
local id = os.getenv("ID") or "d1"
local counter = 0
local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }

request = function()
  if mode == "get" then
    return wrk.format("GET", "/v1/decisions/" .. id, headers)
  end
  counter = counter + 1
  local body = string.format(
    '{"id":"d%d","payer":"w%d","payee":"shop","amount":%d,"currency":"CNY","risk_context":{"device_id":"phone-%d"}}',
    counter, counter % 1000, 100 + counter % 1000, counter % 1000)
  return wrk.format("POST", "/v1/decisions", headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format("wrk: %d requests, %d non-2xx/3xx, %.0f req/s, p50 %.2f ms, p99 %.2f ms\n",
    summary.requests, summary.errors.status, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
