-- threadlocal's metamethods for LuaJIT with the JIT on: a part of the module,
-- not a module of its own.
--
-- LuaJIT cannot compile a call to a C function through the Lua API, so a loop
-- over a Local whose __index and __newindex are C closures never becomes a
-- trace.  The module builds this file in (see src/tl_local.c) and, in a state
-- where the JIT is on when a Local is made, gives that Local these Lua closures
-- instead.  A hit costs an FFI call that reads the calling thread's id (a
-- compiled trace calls it directly) and a rawget/rawset on the fields table the
-- closure holds; a miss calls the C slow path, which finds the calling thread's
-- fields table exactly as the C closures do and returns it with the thread's
-- id, which the closure keeps in its upvalues.
--
-- The purge, clear and a failed init drop the cache from C (lua_setupvalue):
-- nil in `fields`, -1 (which matches no thread) in `id`.  So `fields` must be
-- upvalue 1 and `id` upvalue 2 of both closures, the order in which their
-- bodies first name them (tl_lua.h lists it; spec/jit_spec.lua checks it).
-- Both are assigned here, not only from C: LuaJIT takes an upvalue that its
-- function never assigns for a constant, and would compile it into traces.
--
-- Loaded with require's arguments and a third, the C helpers: `myid`, a light
-- userdata, the address of `double myid(void)`; `index` and `newindex`, the
-- slow paths.  Returns the factory, or false where the FFI is missing (the
-- module then keeps the C closures).
local internals = select(3, ...)
-- Required on its own (it is installed with lua/), it has nothing to offer.
if type(internals) ~= "table" then return nil end

local ok, ffi = pcall(require, "ffi")
if not ok or type(ffi) ~= "table" then return false end

local rawequal, rawget, rawset = rawequal, rawget, rawset
local myid = ffi.cast("double (*)(void)", internals.myid)
-- Named as the metamethods, so that their errors read as the C closures' do:
-- "bad argument #1 to '__index' (...)".
local __index, __newindex = internals.index, internals.newindex

-- The __index and __newindex closures of the Local `self`.
return function(self)
  local index, newindex
  do
    local fields, id = nil, -1
    -- (o, k): fields[k] of the calling thread.  The slow path checks o as the
    -- C closure does: another Local is answered from this one's fields while
    -- they are the calling thread's, refused otherwise.
    index = function(o, k)
      local f = fields
      if id ~= myid() or not rawequal(o, self) then
        fields, id = __index(o, self)
        f = fields
      end
      return rawget(f, k)
    end
  end
  do
    local fields, id = nil, -1
    newindex = function(o, k, v)
      local f = fields
      if id ~= myid() or not rawequal(o, self) or k == nil or not rawequal(k, k) then
        fields, id = __newindex(o, self, k) -- raises for a nil or NaN key
        f = fields
      end
      rawset(f, k, v)
    end
  end
  return index, newindex
end
