-- threadlocal.context: context variables for coroutines, like Python's contextvars.
--
--   local context = require "threadlocal.context"
--   local var = context.var(name [, default])
--   var:get([default])       the value in the current context, else default, else
--                            the var's default, else nil
--   local token = var:set(v) set in the current context
--   var:reset(token)         put back what that set replaced
--   token.var, token.old_value   the var, what set replaced (context.MISSING: unset)
--   context.copy()           a copy of the current context
--   ctx:run(fn, ...)         fn(...) with ctx current; restored after, also on error
--   ctx[var], pairs(ctx)     read-only: var's value in ctx (pairs: 5.2+)
--   context.create(fn), context.wrap(fn)
--                            coroutine.create/wrap, in a copy of the current context
--   context.bind(fn)         a function that runs each call in a fresh copy of the
--                            context current when bind was called
--
-- Which context is current:
--   * in a coroutine made by create/wrap: its own, copied when it was made;
--   * in a coroutine inside ctx:run (so also inside a bound function): ctx, across
--     yields, until fn returns;
--   * in the main coroutine, and in a plain coroutine: the calling OS thread's
--     current context, which is its root context, or ctx while the main coroutine
--     runs ctx:run on that thread.  A Local keeps it, so two OS threads running one
--     state never see each other's.
-- threadlocal.release() gives the thread a new, empty root context, also inside
-- ctx:run in the main coroutine: the rest of the run uses it, and it stays after.
-- A coroutine's own context (create, wrap, ctx:run in a coroutine) stays.
-- A context maps vars to values (nil: not set); copies are shallow.
-- On Lua 5.4, ctx:run calls fn unprotected and restores through a to-be-closed
-- guard, so an error keeps fn's frames; before 5.4 it calls fn under pcall.
local threadlocal = require "threadlocal"
-- Built into the module, this file is loaded with a third argument: C helpers
-- (see src/tl_context.c).  Found on package.path instead (required before the
-- module registered its copy), it hands over to the built-in copy if there is
-- one; a third argument false keeps this one, without helpers (the specs).
local internals = select(3, ...)
if internals == nil then
  local builtin = type(package) == "table" and type(package.preload) == "table"
    and package.preload["threadlocal.context"]
  if builtin then return builtin(...) end
end

local error, getmetatable, next, pcall, rawget, rawset, setmetatable, tostring, type =
  error, getmetatable, next, pcall, rawget, rawset, setmetatable, tostring, type
local running, co_create, co_resume, co_status, co_wrap, co_yield =
  coroutine.running, coroutine.create, coroutine.resume, coroutine.status, coroutine.wrap,
  coroutine.yield
local getinfo = type(debug) == "table" and debug.getinfo or nil
local loaded = type(package) == "table" and package.loaded or nil

local context = {}

-- Lua 5.1 and LuaJIT have no ephemerons: a weak-keyed table keeps its values,
-- and what they refer to, even its own keys.  The tables that map a context to
-- a coroutine, or back, are weak both ways.
local function weak_keys() return setmetatable({}, { __mode = "k" }) end
local function weak() return setmetatable({}, { __mode = "kv" }) end
local entered = weak()        -- context -> the coroutine running it (true: the main one)
local contents = weak()       -- context object -> its contents (see copy)
local is_var = weak_keys()
local is_token = weak_keys()
local defaults = weak_keys()  -- var -> its default; also the contexts' methods
local labels = weak_keys()    -- var or context object -> what tostring gives

-- pcall can yield on Lua 5.2+ and LuaJIT, not on 5.1.
local pcall_yields = co_wrap(function() return pcall(co_yield, true) end)() == true

-- Errors.  `lvl` is the stack level, seen from the function raising, of the
-- public function that failed: its caller's position goes first, as with
-- luaL_error.  No helper that raises is reached by a tail call, since 5.1
-- counts tail calls as levels and 5.2+ do not.

local function raise(lvl, msg)
  error(msg, lvl + 1)
end

-- The name of a function found in a loaded module, as luaL_argerror finds it.
local function global_name(fn)
  if not loaded or fn == nil then return nil end
  for modname, mod in next, loaded do
    if mod == fn then return modname end
    if type(mod) == "table" and type(modname) == "string" then
      for k, v in next, mod do
        if v == fn and type(k) == "string" then
          return ((modname == "_G" and "" or modname .. ".") .. k)
        end
      end
    end
  end
end

-- As luaL_argerror: the name at the call site, else the global name; a
-- method call does not count self.
local function argerror(lvl, n, msg)
  local ar = getinfo and getinfo(lvl, "nf") or {}
  local name = ar.name
  if ar.namewhat == "method" then
    n = n - 1
    if n == 0 then error(("calling '%s' on bad self (%s)"):format(name, msg), lvl + 1) end
  end
  name = name or global_name(ar.func) or "?"
  error(("bad argument #%d to '%s' (%s)"):format(n, name, msg), lvl + 1)
end

local function check_function(fn, n)
  if type(fn) ~= "function" then argerror(3, n, "function expected, got " .. type(fn)) end
end

local function check_callable(fn, n)
  if type(fn) == "function" then return end
  local mt = getmetatable(fn)
  if type(mt) == "table" and mt.__call ~= nil then return end
  argerror(3, n, "function expected, got " .. type(fn))
end

-- A table's address, as tostring gives it without mt.__tostring.
local function address(t, mt)
  local f = mt.__tostring
  mt.__tostring = nil
  local s = tostring(t)
  mt.__tostring = f
  return s:match("0x%x+") or s:match(": (.*)$") or "?"
end

-- Contexts.  Inside, a context is a table var -> value.  Through its
-- metatable a var not set reads as its default, and a context has methods
-- (string keys: vars are tables).  Users get a context object instead: an
-- empty table whose own metatable reads through to the contents, so that
-- every write reaches __newindex and raises.
local Context = { __metatable = "threadlocal.context", __index = defaults }

local function new_context(from)
  local ctx = {}
  if from then
    for k, v in next, from do ctx[k] = v end
  end
  return setmetatable(ctx, Context)
end

local function context_newindex()
  raise(2, "threadlocal: a context is read-only (use var:set inside ctx:run)")
end

local function context_next(obj, k)
  return next(contents[obj], k)
end

local function context_pairs(obj)
  return context_next, obj, nil
end

local function context_tostring(obj)
  return labels[obj]
end

-- The object for the contents ctx.  Its metatable holds ctx; `contents`
-- only looks it up, weakly both ways.
local function new_object(ctx)
  local obj = {}
  labels[obj] = "threadlocal.context: " .. (tostring(obj):match("0x%x+") or "?")
  contents[obj] = ctx
  return setmetatable(obj, {
    __index = ctx, __newindex = context_newindex, __pairs = context_pairs,
    __tostring = context_tostring, __metatable = "threadlocal.context",
  })
end

-- Where the current context is found.
--
-- The main coroutine and plain coroutines use their OS thread's current context.
-- The Local `thread` holds it, so that it goes when the thread exits; `by_thread`
-- caches it by thread id (ids are never reused), weakly, for var:get: a C call
-- and a lookup cost less than reading a Local.
local thread = threadlocal.new(function(self) self.ctx = new_context() end)
local thread_id = threadlocal.id
local by_thread = setmetatable({}, {
  __mode = "v",
  __index = function(t, id)
    local ctx = thread.ctx
    t[id] = ctx
    return ctx
  end,
})

local function set_thread_context(ctx)
  thread.ctx = ctx
  by_thread[thread_id()] = ctx
end

-- The main coroutine: coroutine.running() gives nil there on Lua 5.1 and LuaJIT,
-- and (co, true) on 5.2+ (and on a LuaJIT built with 5.2 compatibility).  Seen
-- from the first lookup made in it.
local main_coroutine

-- Other coroutines with a context of their own, weakly both ways: a context
-- may refer to its coroutine (a var set to it), and finished ones go.  The
-- coroutine's own stack holds its context (see `hold`) while it may run.  A
-- missing coroutine is a plain one (or the main one, not yet seen).
local by_coroutine = setmetatable({}, {
  __mode = "kv",
  __index = function(_, co)
    local _, ismain = running()
    if ismain then main_coroutine = co end
    return by_thread[thread_id()]
  end,
})

-- The running coroutine, or nil in the main one.
local function current_coroutine()
  local co, ismain = running()
  if ismain then
    main_coroutine = co
    return nil
  end
  return co
end

local function current_context()
  local co = running()
  return co == main_coroutine and by_thread[thread_id()] or by_coroutine[co]
end

function context.copy()
  return new_object(new_context(current_context()))
end

-- Returns all but its first argument, which the caller's stack holds until
-- then: hold(ctx, fn(...)) keeps ctx alive while fn runs.
local function hold(_, ...) return ... end

-- Running a function in a context.  While fn runs, enter's stack holds ctx
-- and prev for by_coroutine (as pass's does on 5.1, the guard on 5.4).

-- In the main coroutine, `id` is the thread's id at enter.  When fn called
-- threadlocal.release(), the thread has a new id and a new, empty root
-- context: prev was dropped with the old id, so it is not put back.
local function restore(co, prev, ctx, id)
  entered[ctx] = nil
  if co then
    by_coroutine[co] = prev
  elseif thread_id() == id then
    set_thread_context(prev)
  end
end

local function leave(co, prev, ctx, id, ok, ...)
  restore(co, prev, ctx, id)
  if not ok then error((...), 0) end
  return ...
end

-- Lua 5.4: fn runs unprotected, and a to-be-closed guard restores, so that
-- an error and the caller's message handler see fn's frames.  The syntax is
-- 5.4's: the chunk is compiled here, and fails to compile elsewhere.
local Guard = { __close = function(g) restore(g[1], g[2], g[3], g[4]) end }
local call_guarded
do
  local compile = loadstring or load
  local chunk = compile and compile([[
    return function(guard, fn, ...)
      local _ <close> = guard
      return fn(...)
    end]], "=(threadlocal.context guard)")
  if chunk then call_guarded = chunk() end
end

-- Lua 5.1, in a coroutine: fn runs in a coroutine of its own that has ctx, and
-- its yields pass through to whoever resumed the caller.
local function pass(inner, ctx, ok, ...)
  if not ok then
    entered[ctx] = nil
    error((...), 0)
  end
  if co_status(inner) == "dead" then
    entered[ctx] = nil
    return ...
  end
  return pass(inner, ctx, co_resume(inner, co_yield(...)))
end

-- The running coroutine (nil: the main one), when ctx may be entered.
local function entering(ctx)
  local co = current_coroutine()
  local owner = entered[ctx]
  if owner ~= nil and (owner == true or co_status(owner) ~= "dead") then
    raise(3, "threadlocal: context is already entered")
  end
  return co
end

local function enter(ctx, co, fn, ...)
  entered[ctx] = co or true
  if co and not pcall_yields then
    -- A Lua function: 5.1 makes no coroutine of a C function or a callable.
    local inner = co_create(function(...) return fn(...) end)
    by_coroutine[inner] = ctx
    return pass(inner, ctx, co_resume(inner, ...))
  end
  local prev, id
  if co then
    prev = rawget(by_coroutine, co)
    by_coroutine[co] = ctx
  else
    prev, id = thread.ctx, thread_id()
    set_thread_context(ctx)
  end
  if call_guarded then
    return call_guarded(setmetatable({ co, prev, ctx, id }, Guard), fn, ...)
  end
  return leave(co, prev, ctx, id, pcall(fn, ...))
end

function defaults.run(obj, fn, ...)
  local ctx = contents[obj]
  if not ctx then argerror(2, 1, "threadlocal.context expected, got " .. type(obj)) end
  check_callable(fn, 2)
  local co = entering(ctx)
  return enter(ctx, co, fn, ...)
end

function context.create(fn)
  check_function(fn, 1)
  local ctx = new_context(current_context())
  -- (a Lua function: on 5.1 fn may be a C function)
  local co = co_create(function(...) return hold(ctx, fn(...)) end)
  by_coroutine[co] = ctx
  return co
end

function context.wrap(fn)
  check_function(fn, 1)
  local ctx = new_context(current_context())
  return co_wrap(function(...)
    by_coroutine[running()] = ctx
    return hold(ctx, fn(...))
  end)
end

function context.bind(fn)
  check_callable(fn, 1)
  local base = new_context(current_context())
  return function(...)
    -- a fresh context is never entered
    return enter(new_context(base), current_coroutine(), fn, ...)
  end
end

-- Context variables.  Each var carries its methods, so that var:get() is a
-- field read, a call, two C calls (running, thread id) and three lookups.

local Var = { __metatable = "threadlocal.context.var" }
local Token = { __metatable = "threadlocal.context.token" }

-- context.MISSING: token.old_value when the var was not set.
local MISSING = setmetatable({}, {
  __metatable = "threadlocal.context.MISSING",
  __tostring = function() return "threadlocal.context.MISSING" end,
  __newindex = function() raise(2, "threadlocal: context.MISSING is read-only") end,
})
context.MISSING = MISSING

local function var_expected(self)
  return "threadlocal.context.var expected, got " .. type(self)
end

-- The stack level of get's caller's callee: the built-in get (C) calls this
-- one, which adds a level.
local get_level = 2

local function get(self, default)
  local co = running()
  local ctx
  if co == main_coroutine then ctx = by_thread[thread_id()] else ctx = by_coroutine[co] end
  if is_var[self] then
    if default == nil then return ctx[self] end -- the var's default when not set
    local v = rawget(ctx, self)
    if v ~= nil then return v end
    return default
  end
  argerror(get_level, 1, var_expected(self))
end

local function set(self, value)
  if not is_var[self] then argerror(2, 1, var_expected(self)) end
  local ctx = current_context()
  local token = setmetatable({ self, ctx, rawget(ctx, self) }, Token)
  is_token[token] = true
  ctx[self] = value
  return token
end

-- token: { var, context, old value (nil: not set), used }.  `lvl` as for raise.
local function reset_at(lvl, self, token)
  if not is_var[self] then argerror(lvl + 1, 1, var_expected(self)) end
  if not is_token[token] then
    argerror(lvl + 1, 2, "threadlocal.context.token expected, got " .. type(token))
  end
  if rawget(token, 4) then raise(lvl + 1, "threadlocal: token has already been used") end
  if token[1] ~= self then
    raise(lvl + 1, "threadlocal: token was created by a different context variable")
  end
  local ctx = token[2]
  if ctx ~= current_context() then
    raise(lvl + 1, "threadlocal: token was created in a different context")
  end
  ctx[self] = token[3]
  rawset(token, 4, true)
end

local function reset(self, token)
  reset_at(2, self, token)
end

function Token.__index(token, k)
  if k == "var" then return token[1] end
  if k == "old_value" then
    local old = token[3]
    if old == nil then return MISSING end
    return old
  end
  return nil
end

function Token.__newindex()
  raise(2, "threadlocal: a token is read-only")
end

-- Lua 5.4: `local _ <close> = var:set(v)` resets when the scope ends.
function Token.__close(token)
  if not is_token[token] then
    argerror(2, 1, "threadlocal.context.token expected, got " .. type(token))
  end
  reset_at(2, token[1], token)
end

function Token.__tostring(token)
  return ("threadlocal.context.token '%s': %s"):format(token[1].name, address(token, Token))
end

-- The built-in module reads a set var in one C call; it falls back to `get`.
if type(internals) == "table" and internals.context_getter then
  get = internals.context_getter(by_coroutine, by_thread, get)
  get_level = 3
end

function Var.__tostring(self)
  return labels[self]
end

function context.var(name, default)
  if type(name) ~= "string" then argerror(2, 1, "string expected, got " .. type(name)) end
  local self = { name = name, get = get, set = set, reset = reset }
  labels[self] = ("threadlocal.context.var '%s': %s"):format(name, tostring(self):match("0x%x+") or "?")
  is_var[self] = true
  defaults[self] = default
  return setmetatable(self, Var)
end

return context
