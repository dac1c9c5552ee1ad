-- threadlocal's metamethods for LuaJIT with the JIT on: a part of the module,
-- not a module of its own.
--
-- LuaJIT cannot compile a call to a C function through the Lua API, so a loop
-- over a Local whose __index and __newindex are C closures, or over a shared
-- local whose __index is a C function, never becomes a trace.  The module
-- builds this file in (see src/tl_jit.c) and gives these Lua functions instead
-- to a Local made while the JIT is on, and to a shared local at its 16th read
-- with the JIT on.
--
-- A Local's closures: a hit costs an FFI call that reads the calling thread's
-- id (a compiled trace calls it directly) and a rawget/rawset on the fields
-- table the closure holds; a miss calls the C slow path, which finds the
-- calling thread's fields table exactly as the C closures do and returns it
-- with the thread's id, which the closure keeps in its upvalues.
--
-- The purge, clear and a failed init drop the cache from C (lua_setupvalue):
-- nil in `fields`, -1 (which matches no thread) in `id`.  So `fields` must be
-- upvalue 1 and `id` upvalue 2 of both closures, the order in which their
-- bodies first name them (tl_lua.h lists it; spec/jit_spec.lua checks it).
-- Both are assigned here, not only from C: LuaJIT takes an upvalue that its
-- function never assigns for a constant, and would compile it into traces.
--
-- A shared local's __index: for a string key, an FFI call to C looks the key
-- up in the calling thread's fields, without the Lua API, and answers a
-- number, a boolean or an absent field itself; anything else (strings,
-- tables, light userdata, fields not started yet, odd arguments) is left to
-- the C __index, which gives the full answer or raises as it always does.
--
-- Loaded with require's arguments and a third, the C helpers: `myid`, a light
-- userdata, the address of `double myid(void)`; `index` and `newindex`, the
-- slow paths of a Local; `sget`, the address of
-- `double sget(void *shared, const char *k, size_t len, int *code)`, which
-- returns a number itself, else NaN and what it found in *code; `sindex`,
-- the C __index of shared locals.  Returns a table: `closures`, the factory of
-- a Local's closures, and `shared_index`; or false where the FFI is missing
-- (the module then keeps the C functions).
local internals = select(3, ...)
-- Required on its own (it is installed with lua/), it has nothing to offer.
if type(internals) ~= "table" then return nil end

local ok, ffi = pcall(require, "ffi")
if not ok or type(ffi) ~= "table" then return false end

-- How these functions get compiled.  LuaJIT counts the calls to a function
-- with fixed parameters, and when the count runs out it compiles the
-- function from its entry as a trace of its own, along the path that call
-- took.  Callers' traces record through such a trace when it ends in a
-- return; one that calls C through the Lua API ends elsewhere, and a loop
-- that calls the function then ends in it instead of looping.  And when
-- that compilation fails again and again, LuaJIT blacklists the function:
-- every trace that would call it fails too.  So:
-- - the metamethods take `...` that they never use: LuaJIT counts no calls
--   to them.  Called often from interpreted code on their slow path (a
--   Local read once per request, on another thread each time; a shared
--   local's string or table field), they would otherwise get such a trace,
--   and every loop over a Local or a shared local would run 8 to 24 times
--   slower; with keys LuaJIT cannot compile a lookup of (a fraction in a
--   table with an array part), they would be blacklisted;
-- - the FFI calls, which cost several times more run interpreted, are in
--   small functions with fixed parameters (`valid`, `valid_key`, `fast`)
--   that look up no key a script chose and call nothing through the Lua
--   API, whatever their arguments: their own traces compile, and return, so
--   that a metamethod called from interpreted code still runs them compiled.
-- luacheck: ignore 212/...

local rawequal, rawget, rawset = rawequal, rawget, rawset
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

-- What sget answers in *code when it returns NaN (src/tl_jit.c); anything
-- else: ask the C __index.
local TRUE, FALSE, NIL = 1, 2, 3
local type = type
local sget = ffi.cast("double (*)(void *, const char *, size_t, int *)", internals.sget)
local code = ffi.new("int[1]") -- a state runs on one thread at a time

-- (o, k): field k of the calling thread's fields of the shared local o, and
-- true, when sget answers; else nil and false.
local function fast(o, k)
  if type(o) == "userdata" and type(k) == "string" then
    local v = sget(o, k, #k, code)
    if v == v then return v, true end
    local r = code[0]
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
    if not answered then
      v = __index(o, k) -- not a tail call: its errors name the caller's line
    end
    return v
  end
end

return { closures = closures, shared_index = shared_index }
