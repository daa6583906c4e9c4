-- wrk posting distinct WeCom callbacks, each once, the way an outside benchmark
-- would (benches/compare.sh runs it beside benches/loadgen/):
--
--   loadgen bodies --count 400000 --out /tmp/bodies --config DATA_DIR/demo.toml
--   wrk -t1 -c64 -d10s --latency -s benches/wrk-callbacks.lua http://127.0.0.1:18093 -- /tmp/bodies
--
-- Each line of the file is a path with its query, a tab and the body. The
-- requests are formatted once, in init, so that wrk's loop does no more per
-- request than return the next one. Past the last line it starts over: the
-- service then answers duplicates (a cheaper path), so make more lines than the
-- run sends. done() adds the 99.9th percentile, which wrk's --latency does not
-- print: a rarer, longer stall hides beyond p99 but not beyond p99.9.

local requests = {}
local count = 0
local next_one = 0

function init(args)
  local file = assert(io.open(args[1], "r"), "usage: wrk ... -s wrk-callbacks.lua URL -- BODIES_FILE")
  local headers = { ["Content-Type"] = "text/xml" }
  for line in file:lines() do
    local path, body = line:match("^([^\t]+)\t(.*)$")
    if path then
      count = count + 1
      requests[count] = wrk.format("POST", path, headers, body)
    end
  end
  file:close()
  assert(count > 0, "no callbacks in " .. args[1])
end

function request()
  next_one = next_one % count + 1
  return requests[next_one]
end

function done(summary, latency, requests)
  io.write(string.format("p99.9 %.2fms\n", latency:percentile(99.9) / 1000))
end
