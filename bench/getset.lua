-- The get/set rows of bench/bench.lua against the floor, with nothing but
-- the module and bench/floor.c: for a Lua where tlbench.c (glibc's malloc
-- statistics) does not build, as on musl (docs/platforms.md).
--
--   LUA bench/getset.lua                 the rows (package.cpath must find
--                                        threadlocal and floor)
--   LUA bench/getset.lua --count ROW N   run ROW's loop N times and exit
--                                        (for callgrind instruction counts)
--
-- The same loops, interleaving and medians as bench.lua; os.clock times
-- them (CPU time: the loops run on one thread and never block).
local threadlocal = require "threadlocal"
local floor = require "floor"

local REPS, N, CHUNKS = 9, 1000000, 10
local clock = os.clock

local function median(t)
  table.sort(t)
  local m = #t
  if m % 2 == 1 then return t[(m + 1) / 2] end
  return (t[m / 2] + t[m / 2 + 1]) / 2
end

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

local function floor_with(k)
  local f = floor.new()
  f.k = k
  return f
end
local function local_with(k)
  local tl = threadlocal.new()
  tl.k = k
  return tl
end
local function shared_with(k)
  local sh = threadlocal.shared("getset." .. tostring(k) .. "." .. tostring(clock()))
  sh.k = k
  return sh
end

local rows = {
  { name = "floor get", kind = "get", make = floor_with },
  { name = "floor set", kind = "set", make = floor_with },
  { name = "Local get", kind = "get", make = local_with },
  { name = "Local set", kind = "set", make = local_with },
  { name = "shared get (integer)", kind = "get", make = shared_with },
  { name = "shared set (integer)", kind = "set", make = shared_with },
}

if arg[1] == "--count" then
  for _, row in ipairs(rows) do
    if row.name == arg[2] then
      loops[row.kind](row.make(1))(tonumber(arg[3]))
      os.exit(0)
    end
  end
  error("no row " .. tostring(arg[2]))
end

print(("%-24s %9s %9s %8s"):format("row", "ns/op", "floor", "ratio"))
for i = 3, #rows do
  local r = rows[i]
  local ns, base, ratio = {}, {}, {}
  for _ = 1, REPS do
    local f, b = loops[r.kind](r.make(1)), loops[r.kind](floor_with(1))
    f(math.floor(N / 20)) -- warm
    collectgarbage("collect")
    local tb, tr = 0, 0
    for _ = 1, CHUNKS do
      tb = tb + b(N / CHUNKS)
      tr = tr + f(N / CHUNKS)
    end
    ns[#ns + 1], base[#base + 1], ratio[#ratio + 1] = tr / N * 1e9, tb / N * 1e9, tr / tb
  end
  print(("%-24s %9.1f %9.1f %7.2fx"):format(r.name, median(ns), median(base), median(ratio)))
end
