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
