-- wrk scenario: one durable single-phase transfer per POST, unique ids, random accounts.
-- Used by bench/http/run.sh; needs KEY (an API key) and ACCOUNTS in the environment.
local key = os.getenv("KEY")
-- RISK=1: every transfer carries a risk_context, so the server decides it inline before posting.
local risk = os.getenv("RISK") == "1"
local accounts = tonumber(os.getenv("ACCOUNTS") or "1000")
-- THINK_MS=n: each connection waits n ms after a response before its next request (a closed loop
-- with think time: 64 connections then offer less than the server's saturation rate).
local think_ms = tonumber(os.getenv("THINK_MS") or "0")
-- IDEM=1: every POST carries an Idempotency-Key (the transfer's id), as partners send them.
local idem = os.getenv("IDEM") == "1"
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  math.randomseed(os.time() + thread_id)
end

request = function()
  counter = counter + 1
  local debit = math.random(0, accounts - 1)
  local credit = (debit + math.random(1, accounts - 1)) % accounts
  local context = ""
  if risk then
    context = string.format(',"risk_context":{"device_id":"dev-%d","ip":"10.0.%d.%d","channel":"app","kyc_tier":"3"}',
      debit, debit % 256, credit % 256)
  end
  local id = string.format("wrk%d-%d-%d", thread_id, os.time(), counter)
  local body = string.format(
    '{"id":"%s","debit_account_id":"acct-%d","credit_account_id":"acct-%d","amount":%d,"currency":"CNY"%s}',
    id, debit, credit, math.random(1, 100000), context)
  local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }
  if idem then
    headers["Idempotency-Key"] = id
  end
  return wrk.format("POST", "/v1/transfers", headers, body)
end

if think_ms > 0 then
  delay = function()
    return think_ms
  end
end

done = function(summary, latency, requests)
  io.write(string.format("wrk: %d requests, %d non-2xx/3xx, %.0f req/s, p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
    summary.requests, summary.errors.status, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
