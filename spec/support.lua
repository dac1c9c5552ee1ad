-- What the specs share: the Lua version's abilities, and values whose
-- collection can be counted.
local support = {}

support.lua = os.getenv("TL_LUA") or "lua5.4"

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

-- A name no other spec uses, for process-wide barriers.
local serial = 0
function support.unique(prefix)
  serial = serial + 1
  return ("%s-%d-%s"):format(prefix, serial, tostring({}):match("0x%x+") or "")
end

return support
