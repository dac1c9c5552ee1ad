-- make bench: the access costs and their targets (README, Speed), measured in
-- one run.
--
--   LUA bench/bench.lua [CSV]              the whole table; CSV file optional
--   LUA bench/bench.lua --count ROW N      run ROW's loop N times and exit
--                                          (for callgrind instruction counts)
--   LUA bench/bench.lua --serve | --instr N
--                                          for make bench BASE=<rev>: see
--                                          "make bench BASE" below
--
-- Every timed row runs interleaved with its baseline (the floor: a userdata
-- whose C __index/__newindex rawget/rawset one fixed table), REPS times, in
-- CHUNKS alternating slices per run so that both see the same machine; it
-- reports the median ns per operation and the median of the per-run ratios.
-- Every row uses the same loop shape, on an upvalue `o`:
--   get: for i = 1, n do local v = o.k end
--   set: for i = 1, n do o.k = i end
-- (context vars: the same loops with o:get() and o:set(i)).
package.path = "lua/?.lua;" .. package.path -- the module's Lua half, from this checkout
local threadlocal = require "threadlocal"
local context = require "threadlocal.context"
local floor = require "floor"
local helper = require "tlhelper"
local tb = require "tlbench"

-- LuaJIT cannot compile calls to C metamethods: its traces abort and retry
-- unevenly between rows, so the bench measures its interpreter, except in
-- the "LuaJIT JIT" section (jit_rows), which turns the JIT on.
if jit then jit.off() end

-- The targets (README, Speed) are for Lua 5.4; elsewhere rows are only measured.
local TARGETS = _VERSION == "Lua 5.4" and not jit

local clock = tb.clock
local REPS, N, CHUNKS = 9, 1000000, 10

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local m = #s
  if m % 2 == 1 then return s[(m + 1) / 2] end
  return (s[m / 2] + s[m / 2 + 1]) / 2
end

local function full_gc()
  collectgarbage("collect")
  collectgarbage("collect")
end

-- Timed loops, one shape each.  Each returns ns for n iterations.
local loops = {}
function loops.get(o)
  return function(n)
    local t0 = clock()
    for _ = 1, n do local v = o.k end -- luacheck: ignore
    return clock() - t0
  end
end
function loops.set(o)
  return function(n)
    local t0 = clock()
    for i = 1, n do o.k = i end
    return clock() - t0
  end
end
function loops.setstr(o)
  return function(n)
    local t0 = clock()
    for _ = 1, n do o.k = "short" end
    return clock() - t0
  end
end
function loops.nested(o)
  return function(n)
    local t0 = clock()
    for _ = 1, n do local v = o.t.k end -- luacheck: ignore
    return clock() - t0
  end
end
function loops.var_get(o)
  return function(n)
    local t0 = clock()
    for _ = 1, n do local v = o:get() end -- luacheck: ignore
    return clock() - t0
  end
end
function loops.var_set(o)
  return function(n)
    local t0 = clock()
    for i = 1, n do o:set(i) end
    return clock() - t0
  end
end
-- Context: a scope opened and closed, a snapshot captured and run under.
function loops.scope(o)
  local scope, loc, fields = threadlocal.scope, o.loc, o.fields
  return function(n)
    local t0 = clock()
    for _ = 1, n do scope(loc, fields):close() end
    return clock() - t0
  end
end
function loops.handoff(o)
  local capture, run, sh, fn = threadlocal.capture, threadlocal.run, o.sh, o.fn
  return function(n)
    local t0 = clock()
    for _ = 1, n do run(capture(sh), fn) end
    return clock() - t0
  end
end
-- Short-lived states, as a host makes one per request (bench/tlbench.c).
function loops.lifecycle(o)
  return function(n) return tb.lifecycle(n, o.with) end
end
-- One get on each of many objects: for first accesses.
function loops.each(objs)
  return function()
    local t0 = clock()
    for j = 1, #objs do local v = objs[j].k end -- luacheck: ignore
    return clock() - t0
  end
end

-- Objects the rows act on.
local function floor_with(k)
  local f = floor.new()
  f.k = k
  return f
end

local function shared_with(k)
  local sh = threadlocal.shared("bench." .. tostring(k) .. "." .. tostring(clock()))
  sh.k = k
  return sh
end

local function nested_floor()
  local f = floor.new()
  f.t = floor_with(1)
  return f
end

local rows_by_name = {}
local function row(t)
  rows_by_name[t.name] = t
  return t
end

local steady = {
  row { name = "plain table get", kind = "get", make = function() return { k = 1 } end },
  row { name = "plain table set", kind = "set", make = function() return { k = 1 } end },
  row { name = "empty C metamethod get", kind = "get", make = floor.empty },
  row { name = "empty C metamethod set", kind = "set", make = floor.empty },
  row { name = "floor get", kind = "get", make = function() return floor_with(1) end },
  row { name = "floor set", kind = "set", make = function() return floor_with(1) end },
  row { name = "Local get", kind = "get", target = 1.3,
        make = function() local tl = threadlocal.new(); tl.k = 1; return tl end },
  row { name = "Local set", kind = "set", target = 1.3,
        make = function() local tl = threadlocal.new(); tl.k = 1; return tl end },
  row { name = "shared get (integer)", kind = "get", target = 1.6, make = function() return shared_with(1) end },
  row { name = "shared set (integer)", kind = "set", target = 1.6, make = function() return shared_with(1) end },
  row { name = "shared get (short string)", kind = "get", make = function() return shared_with("short") end },
  row { name = "shared set (short string)", kind = "setstr", target = 1.3,
        make = function() return shared_with("short") end },
  row { name = "shared nested read sh.t.k", kind = "nested", target = 2.0,
        make = function() local sh = shared_with(1); sh.t = { k = 1 }; return sh end,
        floor_kind = "get" },
  row { name = "floor nested read (context)", kind = "nested", make = nested_floor, floor_kind = "get" },
  row { name = "context var:get", kind = "var_get", target = 3.0, floor_kind = "get",
        make = function() local var = context.var("k"); var:set(1); return var end },
  row { name = "context var:set", kind = "var_set", floor_kind = "set",
        make = function() return context.var("k") end },
}

-- Compound operations: fewer of them per slice; the ratio is to one floor get.
local compound = {
  row { name = "scope open+close (Local, 1 field)", kind = "scope", floor_kind = "get", n = N / 20,
        make = function()
          local tl = threadlocal.new(); tl.db = "primary"
          return { loc = tl, fields = { db = "replica" } }
        end },
  row { name = "scope open+close (shared, 1 field)", kind = "scope", floor_kind = "get", n = N / 20,
        make = function() return { loc = shared_with("primary"), fields = { k = "replica" } } end },
  row { name = "capture+run (shared local, 2 fields)", kind = "handoff", floor_kind = "get", n = N / 50,
        make = function()
          local sh = shared_with(1); sh.user = "alice"
          return { sh = sh, fn = function() return sh.k end }
        end },
}

-- Per-request states: timed by lifecycle_rows, counted by callgrind_rows.
row { name = "per-request state, no module", kind = "lifecycle",
      make = function() return { with = false } end }
row { name = "per-request state, module", kind = "lifecycle",
      make = function() return { with = true } end }

-- --count ROW N: for callgrind.
if arg[1] == "--count" then
  local r = assert(rows_by_name[arg[2]], "no row " .. tostring(arg[2]))
  local f = loops[r.kind](r.make())
  f(tonumber(arg[3]))
  os.exit(0)
end

local results = {}
local function report(section, name, ns, base, ratio, target, extra)
  local status = ""
  if not TARGETS then target = nil end
  if target then status = ratio <= target and "met" or "MISSED" end
  results[#results + 1] = { section = section, name = name, ns = ns, base = base, ratio = ratio,
                            target = target, status = status, extra = extra or "" }
  io.write(("%-46s %9s %9s %8s %8s  %s %s\n"):format(name,
    ns and ("%.1f"):format(ns) or "", base and ("%.1f"):format(base) or "",
    ratio and ("%.2fx"):format(ratio) or "", target and ("<= %gx"):format(target) or "",
    status, extra or ""))
  io.flush()
end

local function header(title)
  io.write(("\n%s\n%-46s %9s %9s %8s %8s\n"):format(title, "row", "ns/op", "floor", "ratio", "target"))
end

-- Interleaves each row with the floor of the same kind, REPS times.
local function time_rows(rows, title, section)
  header(title)
  local samples = {}
  for _, r in ipairs(rows) do samples[r] = { ns = {}, base = {}, ratio = {} } end
  for _ = 1, REPS do
    for _, r in ipairs(rows) do
      local o = r.make()
      local f = loops[r.kind](o)
      local b = loops[r.floor_kind or (r.kind == "setstr" and "set" or r.kind)](floor_with(1))
      local n = r.n or N
      f(math.floor(n / 20)) -- warm
      full_gc()
      local tb_, tr = 0, 0
      for _ = 1, CHUNKS do
        tb_ = tb_ + b(n / CHUNKS)
        tr = tr + f(n / CHUNKS)
      end
      local s = samples[r]
      s.ns[#s.ns + 1], s.base[#s.base + 1], s.ratio[#s.ratio + 1] = tr / n, tb_ / n, tr / tb_
    end
  end
  for _, r in ipairs(rows) do
    local s = samples[r]
    report(section, r.name, median(s.ns), median(s.base), median(s.ratio), r.target)
  end
end

-- Rows about threads: the state moves to a worker, and first accesses.
local function thread_rows()
  header("Locals and threads (one state, handed between OS threads)")
  local M, ROUNDS = 1000, 40
  local w = helper.worker()

  -- Steady state after the move: the same loops, run on the worker.
  for _, kind in ipairs { "get", "set" } do
    local ns, base, ratio = {}, {}, {}
    for _ = 1, REPS do
      local tl = threadlocal.new()
      tl.k = 1
      local f, b = loops[kind](tl), loops[kind](floor_with(1))
      w:run(f, math.floor(N / 20))
      full_gc()
      local tb_, tr = 0, 0
      for _ = 1, CHUNKS do
        tb_ = tb_ + w:run(b, N / CHUNKS)
        tr = tr + w:run(f, N / CHUNKS)
      end
      ns[#ns + 1], base[#base + 1], ratio[#ratio + 1] = tr / N, tb_ / N, tr / tb_
    end
    report("threads", "Local " .. kind .. " after the state moved", median(ns), median(base), median(ratio))
  end

  -- First access after a move: M Locals, each read once on the main thread,
  -- then once on the worker: every worker read finds the other thread cached.
  do
    local ns, base, ratio = {}, {}, {}
    for _ = 1, REPS do
      local locals, floors = {}, {}
      for j = 1, M do
        locals[j] = threadlocal.new()
        locals[j].k = j
        floors[j] = floor_with(j)
      end
      w:run(function() for j = 1, M do locals[j].k = j end end)
      local on_main, on_worker, each_floor = loops.each(locals), loops.each(locals), loops.each(floors)
      full_gc()
      local tr, tb_ = 0, 0
      for _ = 1, ROUNDS do
        on_main()
        tr = tr + w:run(on_worker)
        tb_ = tb_ + w:run(each_floor)
      end
      local n = M * ROUNDS
      ns[#ns + 1], base[#base + 1], ratio[#ratio + 1] = tr / n, tb_ / n, tr / tb_
    end
    report("threads", "Local get, first access after the move", median(ns), median(base), median(ratio), 2.0)
  end

  -- First access on a new thread: the thread has no fields yet.  Its floor
  -- is the same first access on the floor: a floor get, and with init a
  -- floor that makes its table and runs init on its first access
  -- (floor.lazy); the ratio to a plain floor get is shown too.
  for _, with_init in ipairs { false, true } do
    local ns, base, ratio, plain, ratio_plain = {}, {}, {}, {}, {}
    for rep = 1, REPS do
      local locals, floors, lazies = {}, {}, {}
      local init = with_init and function(self) self.k = 1 end or nil
      for j = 1, M do
        locals[j] = threadlocal.new(init)
        floors[j] = floor_with(j)
        lazies[j] = with_init and floor.lazy(init) or nil
      end
      local fresh = helper.worker()
      full_gc()
      local tr, tp, tb_
      if rep % 2 == 1 then -- alternate which runs first on the fresh thread
        tr = fresh:run(loops.each(locals))
        tp = fresh:run(loops.each(floors))
        tb_ = with_init and fresh:run(loops.each(lazies)) or tp
      else
        tb_ = with_init and fresh:run(loops.each(lazies)) or nil
        tp = fresh:run(loops.each(floors))
        tr = fresh:run(loops.each(locals))
        tb_ = tb_ or tp
      end
      fresh:stop()
      ns[#ns + 1], base[#base + 1], ratio[#ratio + 1] = tr / M, tb_ / M, tr / tb_
      plain[#plain + 1], ratio_plain[#ratio_plain + 1] = tp / M, tr / tp
    end
    local name = "Local first access on a new thread" .. (with_init and " (init)" or "")
    report("threads", name, median(ns), median(base), median(ratio), 3.0,
      with_init and "floor: a floor's first access that runs init" or nil)
    if with_init then
      report("threads", "Local first access (init), against a floor get", median(ns), median(plain),
        median(ratio_plain))
    end
  end
  w:stop()
end

-- A state per request: new state, open libs, a chunk, close; with the
-- module (require it, touch a shared local) against the same without it.
local LIFECYCLES = 2000

local function lifecycle_rows()
  header("Per-request states (a fresh state per job, as the pool host makes)")
  local ns, base, ratio = {}, {}, {}
  tb.lifecycle(LIFECYCLES / 10, true) -- warm
  for _ = 1, REPS do
    local tr, tb_ = 0, 0
    for _ = 1, CHUNKS do
      tb_ = tb_ + tb.lifecycle(LIFECYCLES / CHUNKS, false)
      tr = tr + tb.lifecycle(LIFECYCLES / CHUNKS, true)
    end
    ns[#ns + 1], base[#base + 1], ratio[#ratio + 1] = tr / LIFECYCLES, tb_ / LIFECYCLES, tr / tb_
  end
  report("lifecycle", "require, touch a shared local, close", median(ns), median(base), median(ratio),
         1.05, "floor: the same lifecycle without the module")
end

local function capi_rows()
  header("C API from a C loop (absolute)")
  for _, op in ipairs { "get", "set" } do
    local ns = {}
    for _ = 1, REPS do ns[#ns + 1] = tb.capi(op, N) / N end
    report("capi", "C API " .. op .. " (threadlocal_" .. (op == "get" and "get" or "set_integer") .. ")",
      median(ns))
  end
end

local function python_rows()
  header("Python's C threading.local (absolute; another runtime, not a ratio)")
  local script = [[
import threading, time
o = threading.local()
o.k = 1
def get(n):
    t = time.perf_counter_ns()
    for i in range(n):
        v = o.k
    return time.perf_counter_ns() - t
def set(n):
    t = time.perf_counter_ns()
    for i in range(n):
        o.k = i
    return time.perf_counter_ns() - t
n = %d
for f in (get, set):
    f(n // 20)
    s = sorted(f(n) / n for _ in range(%d))
    print(f.__name__, s[len(s) // 2])
]]
  local p = io.popen(("python3 -c '%s' 2>/dev/null"):format(script:format(N, REPS)))
  local out = p and p:read("*a") or ""
  if p then p:close() end
  local any = false
  for op, ns in out:gmatch("(%a+) ([%d%.]+)") do
    any = true
    report("python", "threading.local " .. op, tonumber(ns))
  end
  if not any then io.write("python3 not found: rows skipped\n") end
end

local function scaling_rows()
  header("Scaling: K states on K threads, each hammering one shared local and its own Local")
  local code = [[
    local threadlocal = require "threadlocal"
    local sh = threadlocal.shared("bench.scale")
    local tl = threadlocal.new()
    sh.n, tl.n = 0, 0
    return function(n)
      for i = 1, n do
        sh.n = i
        local a = sh.n
        tl.n = i
        local b = tl.n
      end
    end
  ]]
  local n, ks = math.floor(N / 2), { 1, 2, 4, 8 }
  local walls, ratios = {}, {}
  for _, k in ipairs(ks) do walls[k], ratios[k] = {}, {} end
  for _ = 1, 5 do -- every K in each run, so that each ratio compares neighbours
    local wall1
    for _, k in ipairs(ks) do
      local wall = tb.scale(k, n, code)
      wall1 = wall1 or wall
      walls[k][#walls[k] + 1] = wall
      ratios[k][#ratios[k] + 1] = k * wall1 / wall
    end
  end
  for _, k in ipairs(ks) do
    local wall, ratio = median(walls[k]), median(ratios[k])
    local ops = k * n * 4 / (wall / 1e9)
    local target = TARGETS and k == 2 and 1.8 or nil
    local status = target and (ratio >= target and "met" or "MISSED") or ""
    results[#results + 1] = { section = "scaling", name = "K = " .. k, ns = wall / (k * n * 4),
                              ratio = ratio, target = target, status = status,
                              extra = ("%.1f Mops/s"):format(ops / 1e6) }
    io.write(("%-46s %9.1f %9s %7.2fx %8s  %s %.1f Mops/s aggregate\n"):format("K = " .. k,
      wall / (k * n * 4), "", ratio, target and (">= %.1fx"):format(target) or "", status, ops / 1e6))
  end
end

local function churn_rows()
  header("Churn: threads that each touch a Local and a shared local, then exit")
  local tl = threadlocal.new()
  local sh = threadlocal.shared("bench.churn")
  local function touch(i)
    tl.x = i
    sh.x = i
    return tl.x + sh.x
  end
  for i = 1, 2000 do helper.on_thread(touch, i) end -- warm the allocator
  full_gc()
  tb.trim()
  local rss0 = tb.rss()
  local COUNT = 100000
  local t0 = clock()
  for i = 1, COUNT do helper.on_thread(touch, i) end
  local secs = (clock() - t0) / 1e9
  full_gc()
  tb.trim()
  local grown = tb.rss() - rss0
  local status = TARGETS and (grown <= 1024 and "met" or "MISSED") or ""
  results[#results + 1] = { section = "churn", name = "100000 threads", ns = secs * 1e9 / COUNT,
                            status = status, extra = ("%.0f threads/s; RSS %+d KiB"):format(COUNT / secs, grown) }
  io.write(("%-46s %9.1f %9s %8s %8s  %s %.0f threads/s, RSS %+d KiB after collection (%d -> %d KiB)\n")
    :format("100000 threads, ns per thread", secs * 1e9 / COUNT, "", "", "<= 1 MiB", status,
      COUNT / secs, grown, rss0, rss0 + grown))
end

local function memory_rows()
  header("Memory")
  local w = helper.worker()
  local keys = {}
  for j = 1, 10000 do keys[j] = "field" .. j end
  local warm = threadlocal.new()
  w:run(function() warm.k = 1 end) -- the worker's first Local of this state is behind us
  for _, f in ipairs { 1, 100, 10000 } do
    local tl = threadlocal.new()
    full_gc()
    local m0 = collectgarbage("count")
    w:run(function() for j = 1, f do tl[keys[j]] = j end end)
    full_gc()
    local bytes = (collectgarbage("count") - m0) * 1024
    report("memory", ("Local: bytes per (thread, local), %d fields"):format(f), nil, nil, nil, nil,
      ("%.0f bytes (%.1f per field)"):format(bytes, bytes / f))
  end
  -- Shared storage is C memory (malloc).  Short keys are kept in place in
  -- their entries; their bytes are taken out of the per-field figure, whose
  -- target is for the storage of each field a table holds.  One field per
  -- shared local is measured over 100 shared locals, so that the growth of
  -- the thread's map of them is spread as it is in use.  The per-field rows
  -- measure fields 2 to f: the first makes the table and the thread's slot
  -- for it, which may double that map (what a shared local costs, not a field).
  local function keybytes(from, f)
    local n = 0
    for j = from, f do n = n + #keys[j] end
    return n
  end
  for _, f in ipairs { 1, 100, 10000 } do
    local count = f == 1 and 100 or 1
    local first = f == 1 and 1 or 2
    local shs = {}
    for i = 1, count do
      shs[i] = threadlocal.shared(("bench.memory.%d.%d"):format(f, i))
      if first == 2 then shs[i][keys[1]] = 1 end
    end
    full_gc()
    local h0 = tb.heap()
    for i = 1, count do
      local sh = shs[i]
      for j = first, f do sh[keys[j]] = j end
    end
    local bytes = (tb.heap() - h0) / count
    local per = (bytes - keybytes(first, f)) / (f - first + 1)
    if f == 1 then
      report("memory", "shared: bytes per (thread, local), 1 field", nil, nil, nil, nil,
        ("%.0f bytes: a thread's fields table with one field, over %d shared locals"):format(bytes, count))
    else
      local status = TARGETS and (per <= 64 and "met" or "MISSED") or ""
      results[#results + 1] = { section = "memory", name = ("shared: bytes per (thread, local), %d fields"):format(f),
                                target = TARGETS and 64 or nil, status = status,
                                extra = ("%.1f bytes per field beyond key bytes"):format(per) }
      io.write(("%-46s %9s %9s %8s %8s  %s %.0f bytes for fields 2 to %d (%.1f per field beyond key bytes)\n"):format(
        ("shared: bytes per (thread, local), %d fields"):format(f), "", "", "", "<= 64 B", status, bytes, f, per))
    end
  end
  do
    local locals = {}
    for j = 1, 1000 do locals[j] = threadlocal.new() end
    local fresh = helper.worker()
    fresh:run(function() warm.k = 1 end)
    full_gc()
    local m0 = collectgarbage("count")
    fresh:run(function()
      for j, l in ipairs(locals) do l.k = j end
    end)
    full_gc()
    local bytes = (collectgarbage("count") - m0) * 1024
    report("memory", "Local: bytes per thread with 1000 Locals (1 field)", nil, nil, nil, nil,
      ("%.0f bytes (%.1f per Local)"):format(bytes, bytes / 1000))
    fresh:stop()
  end
  w:stop()
end

-- The LuaJIT JIT rows, for jit_rows and the --serve mode.  Each loop is
-- compiled from its own source, so that a row and its floor never share
-- bytecode, and so each gets a root trace of its own instead of one being a
-- side trace of the other.
local jsource = {
  get = [[
    local clock, o = ...
    return function(n)
      local t0, s = clock(), 0
      for _ = 1, n do s = s + o.x end
      return clock() - t0, s
    end]],
  set = [[
    local clock, o = ...
    return function(n)
      local t0 = clock()
      for i = 1, n do o.x = i end
      return clock() - t0
    end]],
  -- The get loop with one empty FFI call and its guard per iteration, as
  -- a compiled Local get or shared read makes one to learn the calling
  -- thread: the floor of any such path.
  ffi = [[
    local clock, o, nop = ...
    return function(n)
      local t0, s = clock(), 0
      for _ = 1, n do
        if nop() ~= 0 then break end
        s = s + o.x
      end
      return clock() - t0, s
    end]],
}
local nop -- made on first use, when the JIT rows run, as ffi is loaded then
local function jloop(kind, o, name)
  nop = nop or require("ffi").cast("double (*)(void)", floor.nop)
  return assert(load(jsource[kind], "=" .. name))(clock, o, nop)
end
local function with_x(o) o.x = 1; return o end
local jrows = {
  { name = "JIT: Local get  s = s + tl.x", kind = "get", target = 4,
    make = function() return with_x(threadlocal.new()) end },
  { name = "JIT: Local set  tl.x = i", kind = "set", target = 8,
    make = function() return with_x(threadlocal.new()) end },
  { name = "JIT: shared scalar read  s = s + sh.x", kind = "get", target = 4,
    make = function() return with_x(threadlocal.shared("bench.jit." .. tostring(clock()))) end },
  { name = "JIT: empty FFI call + plain read (context)", kind = "ffi", floor_kind = "get",
    make = function() return with_x({}) end },
}

-- LuaJIT with the JIT on: compiled loops over a Local (whose metamethods are
-- then Lua closures) and a shared local, each against the same loop on a plain
-- table.  The targets hold on LuaJIT; every row must also compile without a
-- trace abort (counted with jit.attach).
local function jit_rows()
  if not jit then return end
  header("LuaJIT JIT (compiled loops; floor: the same loop on a plain table)")
  jit.on()
  jit.flush()
  local n = 10 * N
  -- Aborts that matter: those of traces that start in the row's loop or in
  -- the module's metamethods, but not LuaJIT recording past a loop's end into
  -- its caller ("NYI: return to lower frame"), which plain-table loops do too.
  local traceerr = require("jit.vmdef").traceerr
  local funcinfo = require("jit.util").funcinfo
  local aborts, rowsource = 0, nil
  local function on_trace(what, _, func, _, otr)
    if what ~= "abort" or traceerr[otr] == "NYI: return to lower frame" then return end
    local source = funcinfo(func).source
    if source == rowsource or source == "@lua/threadlocal/jit.lua" then aborts = aborts + 1 end
  end
  for _, r in ipairs(jrows) do
    local ns, base, ratio = {}, {}, {}
    aborts = 0
    rowsource = "=" .. r.name
    jit.attach(on_trace, "trace")
    for _ = 1, REPS do
      local f = jloop(r.kind, r.make(), r.name)
      local b = jloop(r.floor_kind or r.kind, with_x({}), "floor of " .. r.name)
      f(n / 20)
      b(n / 20)
      full_gc()
      local tb_, tr = 0, 0
      for _ = 1, CHUNKS do
        tb_ = tb_ + b(n / CHUNKS)
        tr = tr + f(n / CHUNKS)
      end
      ns[#ns + 1], base[#base + 1], ratio[#ratio + 1] = tr / n, tb_ / n, tr / tb_
    end
    jit.attach(on_trace)
    local m = median(ratio)
    local status = r.target and ((m <= r.target and aborts == 0) and "met" or "MISSED") or ""
    local extra = ("%d trace aborts%s"):format(aborts, r.target and " (0 required)" or "")
    results[#results + 1] = { section = "jit", name = r.name, ns = median(ns), base = median(base),
                              ratio = m, target = r.target, status = status, extra = extra }
    io.write(("%-46s %9.2f %9.2f %7.2fx %8s  %s %s\n"):format(r.name, median(ns), median(base), m,
      r.target and ("<= %gx"):format(r.target) or "", status, extra))
    io.flush()
  end
  jit.off()
end

local function callgrind_rows()
  header("Instructions per operation (callgrind; stable on a noisy machine)")
  local lua = os.getenv("TL_LUA") or "lua5.4"
  local setpath = ("package.cpath = %q"):format(package.cpath)
  local function count(rowname, n)
    local cmd = ("valgrind --tool=callgrind --callgrind-out-file=/dev/null %s -e %q bench/bench.lua --count %q %d 2>&1")
      :format(lua, setpath, rowname, n)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local refs = out:match("refs:%s+([%d,]+)")
    return refs and tonumber((refs:gsub(",", ""))) or nil
  end
  if not count("floor get", 0) then
    io.write("valgrind not found: rows skipped\n")
    return
  end
  local n = 200000
  local floors = {}
  for _, name in ipairs { "floor get", "floor set", "Local get", "Local set", "shared get (integer)",
                          "shared set (integer)", "shared nested read sh.t.k", "context var:get",
                          "context var:set" } do
    local a, b = count(name, 0), count(name, n)
    local per = (b - a) / n
    local kind = rows_by_name[name].floor_kind or rows_by_name[name].kind
    if name:match("^floor") then floors[kind] = per end
    local base = floors[kind] or floors.get
    local ratio = per / base
    report("callgrind", name, nil, nil, ratio, nil, ("%.1f instructions/op"):format(per))
  end
  local m, per = 100, {}
  for _, name in ipairs { "per-request state, no module", "per-request state, module" } do
    per[name] = (count(name, m) - count(name, 0)) / m
  end
  local with, without = per["per-request state, module"], per["per-request state, no module"]
  report("callgrind", "per-request state", nil, nil, with / without, nil,
         ("%.0f instructions/lifecycle (%.0f without the module)"):format(with, without))
end

-- make bench BASE=<rev> (bench/compare.lua) runs this file on both builds,
-- in two more modes:
--   LUA bench/bench.lua --serve     answers commands on stdin, one a line:
--     list      "section<TAB>row" lines of the compared rows, then "end"
--     setup I   prepares row I (warmed, after a collection): "ok", or
--               "skip<TAB>why" when it fails (an API a build lacks)
--     sample    times the row set up once more: ns per operation
--   LUA bench/bench.lua --instr N   for each hot-path row, os.clock(), its
--                                   loop of 0, os.clock(), of N, os.clock():
--                                   callgrind --dump-before=clock counts them
-- A compared row is a setup that returns its sampler, a function that
-- measures the row afresh and returns ns per operation, and optionally what
-- ends it (run before the next setup).
local compared = {}
local function compare(section, name, setup)
  compared[#compared + 1] = { section = section, name = name, setup = setup }
end

-- A loop's sampler: n / SLICES operations a sample, after a warm-up.  The
-- samples are short (a few ms), so that most run without being preempted.
local SLICES = 40
local function sampler(f, n)
  local m = math.floor(n / SLICES)
  f(math.floor(n / 20))
  full_gc()
  return function() return f(m) / m end
end

for _, r in ipairs(steady) do
  compare("access", r.name, function() return sampler(loops[r.kind](r.make()), N) end)
end
for _, r in ipairs(compound) do
  compare("context", r.name, function() return sampler(loops[r.kind](r.make()), r.n) end)
end
if jit then
  for _, r in ipairs(jrows) do
    compare("jit", r.name, function()
      jit.on() -- until the next setup
      jit.flush()
      return sampler(jloop(r.kind, r.make(), r.name), 10 * N)
    end)
  end
end
for _, with in ipairs { false, true } do
  compare("lifecycle", "per-request state, " .. (with and "module" or "no module"), function()
    local m = LIFECYCLES / SLICES
    tb.lifecycle(m, with)
    return function() return tb.lifecycle(m, with) / m end
  end)
end
for _, kind in ipairs { "get", "set" } do
  compare("threads", "Local " .. kind .. " after the state moved", function()
    local w, tl = helper.worker(), threadlocal.new()
    tl.k = 1
    local f, m = loops[kind](tl), N / SLICES
    w:run(f, math.floor(N / 20))
    full_gc()
    return function() return w:run(f, m) / m end, function() w:stop() end
  end)
end
compare("threads", "Local get, first access after the move", function()
  local M, ROUNDS, w = 1000, 4, helper.worker()
  return function()
    local locals = {}
    for j = 1, M do
      locals[j] = threadlocal.new()
      locals[j].k = j
    end
    w:run(function() for j = 1, M do locals[j].k = j end end)
    local on_main, on_worker = loops.each(locals), loops.each(locals)
    full_gc()
    local t = 0
    for _ = 1, ROUNDS do
      on_main()
      t = t + w:run(on_worker)
    end
    return t / (M * ROUNDS)
  end, function() w:stop() end
end)
for _, with_init in ipairs { false, true } do
  compare("threads", "Local first access on a new thread" .. (with_init and " (init)" or ""), function()
    local M, THREADS = 1000, 2
    local init = with_init and function(self) self.k = 1 end or nil
    return function()
      local t = 0
      for _ = 1, THREADS do
        local locals = {}
        for j = 1, M do locals[j] = threadlocal.new(init) end
        local fresh = helper.worker()
        full_gc()
        t = t + fresh:run(loops.each(locals))
        fresh:stop()
      end
      return t / (M * THREADS)
    end
  end)
end
local function capi_loop(op)
  return function(n) return tb.capi(op, n) end
end
local capi_names = { get = "C API get (threadlocal_get)", set = "C API set (threadlocal_set_integer)" }
for _, op in ipairs { "get", "set" } do
  compare("capi", capi_names[op], function() return sampler(capi_loop(op), N) end)
end

local function one_line(err)
  return (tostring(err):gsub("%s+", " "))
end

if arg[1] == "--serve" then
  local sample, finish
  for line in io.lines() do
    local cmd, i = line:match("^(%a+)%s*(%d*)$")
    if cmd == "list" then
      for _, c in ipairs(compared) do io.write(c.section, "\t", c.name, "\n") end
      io.write("end\n")
    elseif cmd == "setup" then
      if finish then finish() end
      sample, finish = nil, nil
      if jit then jit.off() end
      full_gc()
      local ok, f, g = pcall(compared[tonumber(i)].setup)
      if ok then
        sample, finish = f, g
        io.write("ok\n")
      else
        io.write("skip\t", one_line(f), "\n")
      end
    elseif cmd == "sample" then
      io.write(("%.4f\n"):format(sample()))
    else
      error("bench --serve: no command " .. line)
    end
    io.flush()
  end
  os.exit(0)
end

if arg[1] == "--instr" then
  local n = assert(tonumber(arg[2]), "--instr N")
  for _, name in ipairs { "floor get", "floor set", "Local get", "Local set", "shared get (integer)",
                          "shared set (integer)", "shared set (short string)",
                          "shared nested read sh.t.k", capi_names.get, capi_names.set } do
    local ok, f = pcall(function()
      local r = rows_by_name[name]
      local f = r and loops[r.kind](r.make()) or capi_loop(name == capi_names.get and "get" or "set")
      f(100) -- past the first accesses
      return f
    end)
    if ok then
      full_gc()
      io.write(name, "\n")
      io.flush()
      -- Each os.clock() ends a callgrind part: the second part is f(n)'s, and
      -- the first, f(0)'s, is what it costs besides its n iterations.
      os.clock()
      f(0)
      os.clock()
      f(n)
      os.clock()
    else
      io.write(("skip\t%s\t%s\n"):format(name, one_line(f)))
    end
  end
  os.exit(0)
end

io.write(("threadlocal %s bench on %s, %d runs of %d operations per row, medians\n")
  :format(threadlocal.version, _VERSION .. (jit and (" / " .. jit.version) or ""), REPS, N))
time_rows(steady, "Steady-state access (one state, one thread)", "access")
time_rows(compound, "Context: scopes and hand-off (one state, one thread)", "context")
jit_rows()
lifecycle_rows()
thread_rows()
capi_rows()
python_rows()
scaling_rows()
churn_rows()
memory_rows()
callgrind_rows()

local missed = 0
for _, r in ipairs(results) do if r.status == "MISSED" then missed = missed + 1 end end
local plural = missed == 1 and "" or "s"
io.write(TARGETS and ("\n%d target%s missed\n"):format(missed, plural)
  or jit and ("\n%d LuaJIT JIT target%s missed; the other targets are for Lua 5.4\n"):format(missed, plural)
  or "\ntargets are for Lua 5.4: this run only measures\n")

local csv = arg[1]
if csv then
  local f = assert(io.open(csv, "w"))
  f:write("section,row,ns_per_op,floor_ns_per_op,ratio,target,status,note\n")
  local function fmt(v) return v and ("%.3f"):format(v) or "" end
  for _, r in ipairs(results) do
    f:write(("%s,%q,%s,%s,%s,%s,%s,%q\n"):format(r.section, r.name, fmt(r.ns), fmt(r.base), fmt(r.ratio),
      r.target and fmt(r.target) or "", r.status, r.extra))
  end
  f:close()
  io.write("CSV written to " .. csv .. "\n")
end
os.exit(missed == 0 and 0 or 1)
