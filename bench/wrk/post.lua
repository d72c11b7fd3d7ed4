-- The one wrk script of `make bench`: a POST with the bearer token and a fresh body per request.
-- bench/load.py configures it through the environment:
--   BENCH_PATH, BENCH_TOKEN      where to POST and the bearer token
--   BENCH_BODY                   get | list | create | transfer
--   BENCH_USERS, BENCH_ACCOUNTS  how many seeded rows the ids are drawn from
--   BENCH_RUN                    a tag unique to this run, so every created email is new
--   BENCH_TARGETS                "host:port ..." pins thread i to target i (replicas called directly)
--   BENCH_COUNT_STATUS           when set, count 5xx answers (costs wrk some speed)
-- done() prints one line "BENCH_JSON {...}" for bench/load.py to read.

local path = os.getenv("BENCH_PATH")
local kind = os.getenv("BENCH_BODY") or "get"
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local accounts = tonumber(os.getenv("BENCH_ACCOUNTS") or "100")
local run = os.getenv("BENCH_RUN") or "run"
local headers = {["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
                 ["Content-Type"] = "application/json"}

local threads = {}
local started = 0
thread_number = 0
sent = 0
server_errors = 0

local function targets()
  local list = {}
  for target in (os.getenv("BENCH_TARGETS") or ""):gmatch("%S+") do table.insert(list, target) end
  return list
end

function setup(thread)
  started = started + 1
  thread:set("thread_number", started)
  local list = targets()
  if #list > 0 then
    local host, port = list[(started - 1) % #list + 1]:match("([^:]+):(%d+)")
    thread.addr = wrk.lookup(host, port)[1]
  end
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + thread_number * 7919)
end

local function transfer_body()
  local from = math.random(accounts)
  local to = math.random(accounts - 1)
  if to >= from then to = to + 1 end
  return string.format('{"from_id":%d,"to_id":%d,"amount":"0.01"}', from, to)
end

local bodies = {
  get = function() return string.format('{"id":%d}', math.random(users)) end,
  list = function() return string.format('{"limit":100,"after_id":%d}', math.random(0, users - 100)) end,
  create = function()
    return string.format('{"email":"%s-%d-%d@write.bench","name":"Bench %d"}', run, thread_number, sent, sent)
  end,
  transfer = transfer_body,
}
local make_body = bodies[kind]

function request()
  sent = sent + 1
  return wrk.format("POST", path, headers, make_body())
end

if os.getenv("BENCH_COUNT_STATUS") then
  function response(status, response_headers, body)
    if status >= 500 then server_errors = server_errors + 1 end
  end
end

function done(summary, latency, requests)
  local errors = 0
  for _, thread in ipairs(threads) do errors = errors + (thread:get("server_errors") or 0) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"timeouts":%d,"non_2xx":%d,"server_errors":%d,"status_counted":%s,"p50_us":%.0f,"p99_us":%.0f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status, errors,
    tostring(os.getenv("BENCH_COUNT_STATUS") ~= nil), latency:percentile(50), latency:percentile(99)))
end
