-- What the specs share: the Lua version's abilities, and values whose
-- collection can be counted.
local support = {}

support.lua = os.getenv("TL_LUA") or "lua5.4"

-- TL_SMALL set: the second-opinion passes of make test (other Lua versions,
-- sanitizers) run the costliest loops shorter; Lua 5.4 runs them whole.
support.small = os.getenv("TL_SMALL") ~= nil

-- n, or a quarter of it (at least 2) under TL_SMALL.
function support.rounds(n)
  return support.small and math.max(2, math.floor(n / 4)) or n
end

-- __pairs arrived in Lua 5.2; LuaJIT (without 5.2 compat) has no __pairs.
support.has_pairs = _VERSION ~= "Lua 5.1"

-- A value whose collection calls on_gc.  Tables take __gc from Lua 5.2 on;
-- on 5.1 and LuaJIT only userdata do, made here with newproxy.
function support.gc_value(on_gc)
  if newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = on_gc
    return p
  end
  return setmetatable({}, { __gc = on_gc })
end

-- Runs f(...) on the stack of a throwaway coroutine.  A Lua stack slot that
-- is dead but not yet overwritten still counts as a reference (LuaJIT even
-- marks frame slots never written), so a value made on the running stack
-- can outlive its last real reference by a collection cycle; a finished
-- coroutine's stack holds nothing.  The lifetime specs count cycles, so
-- they make their values this way.
function support.off_stack(f, ...)
  local co = coroutine.create(f)
  assert(coroutine.resume(co, ...))
end

-- target[key] = gc_value(on_gc), made off the running stack.
function support.store_gc(target, key, on_gc)
  support.off_stack(function() target[key] = support.gc_value(on_gc) end)
end

function support.full_gc(cycles)
  for _ = 1, cycles or 1 do collectgarbage("collect") end
end

-- Bytes still held per make() call: a first round of n calls sizes the
-- module's tables, a second is measured after full collections.  No
-- collection runs inside a round, so both grow the tables alike.
function support.kept_per_call(make, n)
  local function round()
    collectgarbage("stop")
    local ok, err = pcall(function()
      for _ = 1, n do make() end
    end)
    collectgarbage("restart")
    assert(ok, err)
  end
  support.off_stack(round)
  support.full_gc(2)
  local before = collectgarbage("count")
  support.off_stack(round)
  support.full_gc(2)
  return (collectgarbage("count") - before) * 1024 / n
end

-- Runs access() rounds times while finalizers that call meddle() run
-- inside its allocations: each one arms the next, and a pause of 0 with a
-- big step makes a whole cycle, finalizers included, run in (almost) every
-- allocation.  The collector's settings are put back after.
function support.under_finalizers(meddle, access, rounds)
  local armed = true
  local function arm()
    support.gc_value(function()
      if armed then
        meddle()
        arm()
      end
    end)
  end
  local pause = collectgarbage("setpause", 0)
  local stepmul
  if _VERSION == "Lua 5.4" then
    collectgarbage("incremental", 0, 1000, 20) -- 0: pause unchanged
  else
    stepmul = collectgarbage("setstepmul", 1000000)
  end
  collectgarbage() -- the pause applies from the next cycle on
  arm()
  local ok, err = pcall(function()
    for _ = 1, support.rounds(rounds) do access() end
  end)
  armed = false
  if stepmul then
    collectgarbage("setpause", pause)
    collectgarbage("setstepmul", stepmul)
  else
    collectgarbage("incremental", pause, 100, 13)
  end
  collectgarbage()
  assert(ok, err)
end

-- A name no other spec uses, for process-wide barriers.
local serial = 0
function support.unique(prefix)
  serial = serial + 1
  return ("%s-%d-%s"):format(prefix, serial, tostring({}):match("0x%x+") or "")
end

-- An error message without Lua's leading "chunk:line: " position.
function support.bare(err)
  return (tostring(err):gsub("^[^:\n]*:%d+: ", ""))
end

-- Runs a Lua script in a child process of the interpreter under test (TL_LUA)
-- with this process's module paths; prefix is a command put before it (such
-- as valgrind).  Returns whether it ran to its end, and what it printed: a
-- crash is counted, not fatal.
function support.run_script(code, prefix)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(("package.path, package.cpath = %q, %q\n"):format(package.path, package.cpath))
  f:write(code, "\nio.write('\\nSCRIPT-END\\n')\n")
  f:close()
  local p = assert(io.popen(("%s%s %s 2>&1"):format(prefix and prefix .. " " or "", support.lua, path)))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  local clean = not out:find("AddressSanitizer", 1, true) and not out:find("runtime error:", 1, true)
    and not out:find("==%d+== %a")
  return out:find("\nSCRIPT%-END\n") ~= nil and clean, out
end

return support
