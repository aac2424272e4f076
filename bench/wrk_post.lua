-- wrk script for the bench: POST a JSON body read from a file, print one machine-readable line at the end.
-- Environment: BENCH_WRK_BODY_FILE (the body), BENCH_WRK_BEARER (the bearer key), BENCH_WRK_HEADERS
-- (extra headers, one "Name: value" a line; e.g. Portkey's routing headers; bench/load.py wrk_env).
local f = assert(io.open(os.getenv("BENCH_WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_WRK_BEARER") or "bench")
for line in string.gmatch(os.getenv("BENCH_WRK_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]-)%s*:%s*(.-)%s*$")
  assert(name and name ~= "", "BENCH_WRK_HEADERS: not 'Name: value': " .. line)
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
