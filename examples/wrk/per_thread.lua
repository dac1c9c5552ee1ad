-- A wrk script that keeps per-thread state in threadlocal (examples/wrk/run.sh
-- runs it; docs/hosts.md says where wrk runs which part of it).
--
-- wrk gives each load thread its own LuaJIT state, but runs each state's top
-- level, its init() (and one request() of the first) on wrk's main thread,
-- before the load thread starts.  So a table made at load time belongs to the
-- main thread's part of the state's life, not to its load thread.
local threadlocal = require "threadlocal"

-- This state's data for the calling OS thread, made on each thread's first
-- use: on the main thread during init(), on the load thread at its first
-- response.
local mine = threadlocal.new(function(self)
  self.id = threadlocal.id()
  self.responses = 0
end)

-- The calling OS thread's data in every state of the process: on wrk's main
-- thread, every state's init() and the main state's done() see one set of
-- fields.
local counts = threadlocal.shared("wrk.example", { inits = 0, responses = 0 })

local threads = {}

-- The main state, on the main thread: one call per load thread.
function setup(thread)
  threads[#threads + 1] = thread
end

-- Each load thread's state, still on the main thread.
function init()
  counts.inits = counts.inits + 1
  mine.role = "init" -- the main thread's fields of this state's Local
end

-- Each load thread's state, on its load thread.  wrk reads a thread's
-- globals only (thread:get), so the counts are also published as globals.
function response()
  mine.responses = mine.responses + 1
  counts.responses = counts.responses + 1
  if mine.id ~= threadlocal.id() or mine.role ~= nil then
    tl_wrong = (tl_wrong or 0) + 1
  end
  tl_id, tl_responses, tl_shared = mine.id, mine.responses, counts.responses
end

-- The main state, on the main thread, after the load threads ended.
function done(summary)
  local sum, wrong, agree, ids, distinct = 0, 0, 0, {}, 0
  for i, t in ipairs(threads) do
    local id, n, shared = t:get("tl_id"), t:get("tl_responses") or 0, t:get("tl_shared")
    io.write(("# load thread %d: threadlocal.id %s, %d responses\n"):format(i, tostring(id), n))
    sum = sum + n
    wrong = wrong + (t:get("tl_wrong") or 0)
    if shared == n then agree = agree + 1 end
    if id ~= nil and id ~= threadlocal.id() and not ids[id] then
      ids[id] = true
      distinct = distinct + 1
    end
  end
  io.write(("wrk-check threads=%d requests=%d sum=%d wrong=%d agree=%d distinct=%d inits=%d\n")
    :format(#threads, summary.requests, sum, wrong, agree, distinct, counts.inits))
end
