-- threadlocal's metamethods for LuaJIT with the JIT on.  Built into the
-- module and loaded by src/tl_jit.c; not a module of its own.  Why, and the
-- rules a change must keep: docs/architecture.md, section "LuaJIT".
-- Called with require's arguments and the C helpers.  Returns { closures =
-- a Local's metamethod factory, shared_index = a shared local's __index },
-- or false without the FFI.
local internals = select(3, ...)
-- Loaded on its own (it is built in, never installed), it returns nothing useful.
if type(internals) ~= "table" then return nil end

local ok, ffi = pcall(require, "ffi")
if not ok or type(ffi) ~= "table" then return false end
-- luacheck: ignore 212/...

local rawequal, rawget, rawset, type, pcall = rawequal, rawget, rawset, type, pcall
local myid = ffi.cast("double (*)(void)", internals.myid)

-- Whether a closure of the Local `self`, which holds the fields table of
-- thread `id`, may use it for argument o: o is self and the calling thread
-- is that thread.
local function valid(o, self, id)
  return id == myid() and rawequal(o, self)
end

-- The same, for a write of key k, which the slow path checks (nil and NaN
-- are refused; raw comparisons: a key's own __eq is not called).
local function valid_key(o, self, id, k)
  return valid(o, self, id) and not rawequal(k, nil) and rawequal(k, k)
end

local closures
do
  -- Named as the metamethods, so that their errors read as the C closures' do:
  -- "bad argument #1 to '__index' (...)".
  local __index, __newindex = internals.index, internals.newindex

  -- The __index and __newindex closures of the Local `self`.
  closures = function(self)
    local index, newindex
    do
      local fields, id = nil, -1
      -- (o, k): fields[k] of the calling thread.  The slow path checks o as the
      -- C closure does: another Local is answered from this one's fields while
      -- they are the calling thread's, refused otherwise.
      index = function(o, k, ...)
        local f, i = fields, id -- named first: upvalues 1 and 2
        if not valid(o, self, i) then
          fields, id = __index(o, self)
          f = fields
        end
        return rawget(f, k)
      end
    end
    do
      local fields, id = nil, -1
      newindex = function(o, k, v, ...)
        local f, i = fields, id -- named first: upvalues 1 and 2
        if not valid_key(o, self, i, k) then
          fields, id = __newindex(o, self, k) -- raises for a nil or NaN key
          f = fields
        end
        rawset(f, k, v)
      end
    end
    return index, newindex
  end
  -- Called from C once per Local, it never compiles (LuaJIT cannot make
  -- closures in a trace): once hot, each attempt would end in a trace abort.
  -- The closures it makes compile as before.
  require("jit").off(closures)
end

-- A shared local's reads.  sget(h, k): field k (an id) of the calling
-- thread's fields of shared local h (an id), when a number, else NaN;
-- skind(h, k) then says TRUE, FALSE, NIL or anything else: ask the C __index.
-- Ids come from learn, which sets handles[o] and keys[k]; any other number
-- gets NaN and ASK.
local TRUE, FALSE, NIL = 1, 2, 3
local sget = ffi.cast("double (*)(uint32_t, uint32_t)", internals.sget)
local skind = ffi.cast("double (*)(uint32_t, uint32_t)", internals.skind)
local handles, keys, learn = internals.handles, internals.keys, internals.learn

-- (o, k): field k of the calling thread's fields of the shared local o, and
-- true, when the FFI answers; nil and false when the C __index must; nil
-- and nil when o or k has no id yet (learn gives them).  The type checks
-- come first: the lookups below then always compile.
local function fast(o, k)
  if type(o) == "userdata" and type(k) == "string" then
    local h, i = handles[o], keys[k]
    if not (h and i) then return nil, nil end
    local v = sget(h, i)
    if v == v then return v, true end
    local r = skind(h, i)
    if r == TRUE then return true, true end
    if r == FALSE then return false, true end
    if r == NIL then return nil, true end
  end
  return nil, false
end

-- (o, k): field k of the calling thread's fields of the shared local o.
local shared_index
do
  local __index = internals.sindex -- raises as the C __index, placed at o's use
  shared_index = function(o, k, ...)
    local v, answered = fast(o, k)
    if answered then return v end
    if answered == nil then
      pcall(learn, o, k) -- fails only out of memory: then the next read tries again
    end
    v = __index(o, k) -- not a tail call: its errors name the caller's line
    return v
  end
end

return { closures = closures, shared_index = shared_index }
