-- Shared by every workload script (loaded with dofile): numbers the threads, and prints one
-- JSON line when wrk is done, which run.py parses. Latencies are in microseconds.
local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function done(summary, latency, requests)
   -- first_seen: where the next run should start in the token list (see first_seen.lua)
   local next_token = 0
   for _, thread in ipairs(threads) do
      local cursor = thread:get("cursor")
      if cursor and cursor > next_token then next_token = cursor end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
      '"errors_write":%d,"errors_timeout":%d,"non_2xx":%d,"latency_p50_us":%d,"latency_p90_us":%d,' ..
      '"latency_p99_us":%d,"latency_max_us":%d,"latency_mean_us":%.1f,"next_token":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      next_token))
end
