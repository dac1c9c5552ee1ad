-- threadlocal.context: context variables for coroutines, like Python's contextvars.
--
--   local context = require "threadlocal.context"
--   local var = context.var(name [, default])
--   var:get([default])       the value in the current context, else default, else
--                            the var's default, else nil
--   local token = var:set(v) set in the current context
--   var:reset(token)         put back what that set replaced
--   context.copy()           a copy of the current context
--   ctx:run(fn, ...)         fn(...) with ctx current; restored after, also on error
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

local error, getmetatable, next, pcall, rawget, setmetatable, tostring, type =
  error, getmetatable, next, pcall, rawget, setmetatable, tostring, type
local running, co_create, co_resume, co_status, co_wrap, co_yield =
  coroutine.running, coroutine.create, coroutine.resume, coroutine.status, coroutine.wrap,
  coroutine.yield

local context = {}

-- Lua 5.1 and LuaJIT have no ephemerons: a weak-keyed table keeps its values,
-- and what they refer to, even its own keys.  The tables that map a context to
-- a coroutine, or back, are weak both ways.
local function weak_keys() return setmetatable({}, { __mode = "k" }) end
local function weak() return setmetatable({}, { __mode = "kv" }) end
local entered = weak()        -- context -> the coroutine running it (true: the main one)
local is_context = weak_keys()
local is_var = weak_keys()
local is_token = weak_keys()
local defaults = weak_keys()  -- var -> its default; also the contexts' methods
local labels = weak_keys()    -- var -> what tostring gives

-- pcall can yield on Lua 5.2+ and LuaJIT, not on 5.1.
local pcall_yields = co_wrap(function() return pcall(co_yield, true) end)() == true

-- Errors are the module's: no position prefix.
local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 0)
end

local function check_function(fn, n, fname)
  if type(fn) ~= "function" then argerror(n, fname, "function expected, got " .. type(fn)) end
end

local function check_callable(fn, n, fname)
  if type(fn) == "function" then return end
  local mt = getmetatable(fn)
  if type(mt) == "table" and mt.__call ~= nil then return end
  argerror(n, fname, "function expected, got " .. type(fn))
end

-- Contexts: tables var -> value.  Through their metatable, a var not set reads
-- as its default, and a context has methods (string keys: vars are tables).
local Context = { __metatable = "threadlocal.context", __index = defaults }

local function new_context(from)
  local ctx = {}
  if from then
    for k, v in next, from do ctx[k] = v end
  end
  is_context[ctx] = true
  return setmetatable(ctx, Context)
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
  return new_context(current_context())
end

-- Returns all but its first argument, which the caller's stack holds until
-- then: hold(ctx, fn(...)) keeps ctx alive while fn runs.
local function hold(_, ...) return ... end

-- Running a function in a context.  While fn runs, enter's stack holds ctx
-- and prev for by_coroutine (as pass's does on 5.1).

-- In the main coroutine, `id` is the thread's id at enter.  When fn called
-- threadlocal.release(), the thread has a new id and a new, empty root
-- context: prev was dropped with the old id, so it is not put back.
local function leave(co, prev, ctx, id, ok, ...)
  entered[ctx] = nil
  if co then
    by_coroutine[co] = prev
  elseif thread_id() == id then
    set_thread_context(prev)
  end
  if not ok then error((...), 0) end
  return ...
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

local function enter(ctx, fn, ...)
  local co = current_coroutine()
  local owner = entered[ctx]
  if owner ~= nil and (owner == true or co_status(owner) ~= "dead") then
    error("threadlocal: context is already entered", 0)
  end
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
  return leave(co, prev, ctx, id, pcall(fn, ...))
end

function defaults.run(ctx, fn, ...)
  if not is_context[ctx] then argerror(1, "run", "threadlocal.context expected, got " .. type(ctx)) end
  check_callable(fn, 2, "run")
  return enter(ctx, fn, ...)
end

function context.create(fn)
  check_function(fn, 1, "create")
  local ctx = new_context(current_context())
  -- (a Lua function: on 5.1 fn may be a C function)
  local co = co_create(function(...) return hold(ctx, fn(...)) end)
  by_coroutine[co] = ctx
  return co
end

function context.wrap(fn)
  check_function(fn, 1, "wrap")
  local ctx = new_context(current_context())
  return co_wrap(function(...)
    by_coroutine[running()] = ctx
    return hold(ctx, fn(...))
  end)
end

function context.bind(fn)
  check_callable(fn, 1, "bind")
  local base = new_context(current_context())
  return function(...)
    return enter(new_context(base), fn, ...)
  end
end

-- Context variables.  Each var carries its methods, so that var:get() is a
-- field read, a call, two C calls (running, thread id) and three lookups.

local Var = { __metatable = "threadlocal.context.var" }
local Token = { __metatable = "threadlocal.context.token" }

local function check_var(self, fname)
  if not is_var[self] then
    argerror(1, fname, "threadlocal.context.var expected, got " .. type(self))
  end
end

local function get_unset(self, default)
  check_var(self, "get")
  return default
end

local function get_default(self, ctx, default)
  local v = rawget(ctx, self)
  if v ~= nil then return v end
  return get_unset(self, default)
end

local function get(self, default)
  local co = running()
  local ctx
  if co == main_coroutine then ctx = by_thread[thread_id()] else ctx = by_coroutine[co] end
  if default == nil then
    local v = ctx[self]               -- the var's default when not set
    -- ctx["run"] is a method, not a value: only a var's value counts.
    if v ~= nil and is_var[self] then return v end
    return get_unset(self)
  end
  return get_default(self, ctx, default)
end

local function set(self, value)
  check_var(self, "set")
  local ctx = current_context()
  local token = setmetatable({ self, ctx, rawget(ctx, self) }, Token)
  is_token[token] = true
  ctx[self] = value
  return token
end

local function reset(self, token)
  check_var(self, "reset")
  if not is_token[token] then
    argerror(2, "reset", "threadlocal.context.token expected, got " .. type(token))
  end
  if token[4] then error("threadlocal: token has already been used", 0) end
  if token[1] ~= self then
    error("threadlocal: token was created by a different context variable", 0)
  end
  local ctx = token[2]
  if ctx ~= current_context() then
    error("threadlocal: token was created in a different context", 0)
  end
  ctx[self] = token[3]
  token[4] = true
end

-- The built-in module reads a set var in one C call; it falls back to `get`.
if type(internals) == "table" and internals.context_getter then
  get = internals.context_getter(by_coroutine, by_thread, get)
end

function Var.__tostring(self)
  return labels[self]
end

function context.var(name, default)
  if type(name) ~= "string" then argerror(1, "var", "string expected, got " .. type(name)) end
  local self = { name = name, get = get, set = set, reset = reset }
  labels[self] = ("threadlocal.context.var '%s': %s"):format(name, tostring(self):match("0x%x+") or "?")
  is_var[self] = true
  defaults[self] = default
  return setmetatable(self, Var)
end

return context
