-- wrk script: POST the same image(s) as a multipart body (field "file"), or as a raw body.
--   wrk ... -s benchmarks/multipart.lua <url> -- <png path> [images per request] [multipart|raw]
--   BENCH_MAX_REQUESTS (environment): each wrk thread stops after that many responses, so a
--   run is bounded in requests as well as in time (-d).
--   BENCH_RAMP_MS and BENCH_CONNECTIONS (environment): the first request of connection i
--   goes out i * BENCH_RAMP_MS after the start, so that the clients do not all arrive in the
--   same millisecond (a thundering herd that no steady state has; it made the p99).
-- done() prints one JSON line (latencies in microseconds) that benchmarks/wrk.py reads.

local BOUNDARY = "cnnserve-bench-7f3a9c"

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
local ramp_ms = tonumber(os.getenv("BENCH_RAMP_MS") or "0")
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "0")
local seen = 0
local sent = 0

if ramp_ms > 0 then
  function delay()
    sent = sent + 1
    if sent <= connections then
      return (sent - 1) * ramp_ms
    end
    return 0
  end
end

function init(args)
  local path, count, mode = args[1], tonumber(args[2] or "1"), args[3] or "multipart"
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  wrk.method = "POST"
  if mode == "raw" then
    wrk.body = data
    wrk.headers["Content-Type"] = "image/png"
    return
  end
  local parts = {}
  for i = 1, count do
    parts[#parts + 1] = "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="' .. i .. '.png"\r\n'
      .. "Content-Type: image/png\r\n\r\n" .. data .. "\r\n"
  end
  parts[#parts + 1] = "--" .. BOUNDARY .. "--\r\n"
  wrk.body = table.concat(parts)
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY
end

if max_requests > 0 then
  function response(status, headers, body)
    seen = seen + 1
    if seen >= max_requests then
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "max": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
