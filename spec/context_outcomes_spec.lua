-- threadlocal.context: errors keep fn's frames (5.4) and the caller's position,
-- objects print typed names, tokens carry var and old_value, and a context is
-- a read-only mapping (#20).
local context = require "threadlocal.context"
local support = require "support"

local lua54 = _VERSION == "Lua 5.4"

-- The error of f(), which must raise.
local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  return err
end

-- Splits "chunk:line: message": the line (a number) and the message.
local function position(err)
  local line, msg = tostring(err):match("^[^:]*context_outcomes_spec%.lua:(%d+): (.*)$")
  return tonumber(line), msg
end

-- The functions on the stack when xpcall's message handler runs.
local function frames_at_error(f)
  local seen = {}
  local ok, err = xpcall(f, function(msg)
    for level = 2, 200 do
      local ar = debug.getinfo(level, "f")
      if not ar then break end
      if ar.func then seen[ar.func] = true end -- (5.1: tail calls have none)
    end
    return msg
  end)
  return ok, err, seen
end

describe("ctx:run and bound functions (#20)", function()
  local var = context.var("frames", "root")
  local function deep() error("deep failed") end
  local function fn() var:set("in fn"); deep(); return 1 end -- deep() is not a tail call

  if lua54 then
    it("keep fn's frames in an error's traceback on Lua 5.4", function()
      local ok, err, seen = frames_at_error(function() context.copy():run(fn) end)
      assert.is_false(ok)
      assert.truthy(err:find("deep failed", 1, true))
      assert.is_true(seen[deep])
      assert.is_true(seen[fn])
      assert.equal("root", var:get())
      ok, err, seen = frames_at_error(context.bind(fn))
      assert.is_false(ok)
      assert.truthy(err:find("deep failed", 1, true))
      assert.is_true(seen[deep])
      assert.is_true(seen[fn])
      assert.equal("root", var:get())
      local tb
      xpcall(function() context.copy():run(fn) end, function(m) tb = debug.traceback(m) end)
      assert.truthy(tb:find("deep", 1, true), tb)
    end)

    it("let the message handler run inside ctx, then restore (5.4)", function()
      local seen
      local ctx = context.copy()
      xpcall(function() ctx:run(fn) end, function() seen = var:get() end)
      assert.equal("in fn", seen)
      assert.equal("root", var:get())
      assert.equal("in fn", ctx:run(function() return var:get() end))
      assert.equal(1, ctx:run(function() return 1 end)) -- no longer entered
    end)
  else
    it("call fn under pcall before 5.4: the error is raised again after restoring", function()
      local ok, err, seen = frames_at_error(function() context.copy():run(fn) end)
      assert.is_false(ok)
      assert.truthy(err:find("deep failed", 1, true), err)
      assert.is_nil(seen[deep])
      assert.equal("root", var:get())
    end)
  end

  it("let fn yield, in ctx:run and in a bound function", function()
    local ctx = context.copy()
    local co = coroutine.wrap(function()
      local a = ctx:run(function()
        var:set("run")
        coroutine.yield(var:get())
        return var:get()
      end)
      local b = context.bind(function()
        var:set("bound")
        coroutine.yield(var:get())
        return var:get()
      end)()
      return a, b, var:get()
    end)
    assert.equal("run", co())
    assert.equal("root", var:get())
    assert.equal("bound", co())
    local a, b, after = co()
    assert.same({ "run", "bound", "root" }, { a, b, after })
    assert.equal("run", ctx:run(function() return var:get() end))
  end)

  it("keep the error value and restore the context on every version", function()
    local e = {}
    local ctx = context.copy()
    local ok, err = pcall(ctx.run, ctx, function() var:set("x"); error(e) end)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("root", var:get())
    ok, err = pcall(context.bind(function() error(e) end))
    assert.is_false(ok)
    assert.equal(e, err)
  end)
end)

describe("errors of threadlocal.context (#20)", function()
  local function at(err, line, msg)
    local got_line, got_msg = position(err)
    assert.equal(msg, got_msg, tostring(err))
    assert.equal(line, got_line, tostring(err))
  end

  it("carry the caller's position and name the function as it was called", function()
    local var = context.var("v")
    local e, l = err_of(function() context.var(1) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'var' (string expected, got number)")
    e, l = err_of(function() context.create(nil) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'create' (function expected, got nil)")
    e, l = err_of(function() context.wrap(1) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'wrap' (function expected, got number)")
    e, l = err_of(function() context.bind() end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'bind' (function expected, got nil)")
    e, l = err_of(function() var.set(1, 2) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'set' (threadlocal.context.var expected, got number)")
    e, l = err_of(function() var.get("run") end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'get' (threadlocal.context.var expected, got string)")
    e, l = err_of(function() var:reset({}) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'reset' (threadlocal.context.token expected, got table)")
  end)

  it("count arguments as luaL_argerror does in method calls", function()
    local var = context.var("v")
    local ctx = context.copy()
    local e, l = err_of(function() ctx:run(nil) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'run' (function expected, got nil)")
    local impostor = { get = var.get, set = var.set }
    e, l = err_of(function() impostor:get() end), debug.getinfo(1, "l").currentline
    at(e, l, "calling 'get' on bad self (threadlocal.context.var expected, got table)")
    e, l = err_of(function() impostor:set(1) end), debug.getinfo(1, "l").currentline
    at(e, l, "calling 'set' on bad self (threadlocal.context.var expected, got table)")
  end)

  it("give no position when the caller is C, and the global name", function()
    assert.equal("bad argument #1 to 'threadlocal.context.var' (string expected, got number)",
      err_of(context.var, 1))
    assert.equal("bad argument #1 to 'threadlocal.context.bind' (function expected, got nil)",
      err_of(context.bind))
    local var = context.var("v")
    assert.equal("bad argument #1 to '?' (threadlocal.context.var expected, got table)",
      err_of(var.get, {}))
  end)

  it("start with threadlocal: for misuse, with the caller's position", function()
    local var, other = context.var("v"), context.var("o")
    local t = var:set(1)
    local e, l = err_of(function() other:reset(t) end), debug.getinfo(1, "l").currentline
    at(e, l, "threadlocal: token was created by a different context variable")
    var:reset(t)
    e, l = err_of(function() var:reset(t) end), debug.getinfo(1, "l").currentline
    at(e, l, "threadlocal: token has already been used")
    local t2 = var:set(2)
    e, l = context.copy():run(function()
      return err_of(function() var:reset(t2) end), debug.getinfo(1, "l").currentline
    end)
    at(e, l, "threadlocal: token was created in a different context")
    local ctx = context.copy()
    e, l = ctx:run(function()
      return err_of(function() ctx:run(print) end), debug.getinfo(1, "l").currentline
    end)
    at(e, l, "threadlocal: context is already entered")
    assert.equal(2, var:get()) -- nothing changed
  end)

  it("carry the position in the Lua get too (loaded without the C helpers)", function()
    local ctxmod = assert(loadfile("lua/threadlocal/context.lua"))("threadlocal.context", nil, false)
    local var = ctxmod.var("file")
    assert.equal("Lua", debug.getinfo(var.get, "S").what)
    local e, l = err_of(function() var.get("run") end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'get' (threadlocal.context.var expected, got string)")
    local impostor = { get = var.get }
    e, l = err_of(function() impostor:get(1) end), debug.getinfo(1, "l").currentline
    at(e, l, "calling 'get' on bad self (threadlocal.context.var expected, got table)")
  end)

  it("carry the position when the built-in get falls back to Lua", function()
    local var = context.var("unset")
    assert.equal("C", debug.getinfo(var.get, "S").what)
    local e, l = err_of(function() var.get({}, 1) end), debug.getinfo(1, "l").currentline
    at(e, l, "bad argument #1 to 'get' (threadlocal.context.var expected, got table)")
  end)
end)

describe("tostring (#20)", function()
  it("types contexts, tokens, vars and context.MISSING", function()
    local ctx, other = context.copy(), context.copy()
    assert.truthy(tostring(ctx):match("^threadlocal%.context: 0x%x+$"), tostring(ctx))
    assert.are_not.equal(tostring(ctx), tostring(other))
    assert.equal("threadlocal.context", getmetatable(ctx))
    local var = context.var("request")
    local token = var:set(1)
    assert.truthy(tostring(token):match("^threadlocal%.context%.token 'request': 0x%x+$"),
      tostring(token))
    assert.are_not.equal(tostring(token), tostring(var:set(2)))
    assert.equal("threadlocal.context.token", getmetatable(token))
    assert.truthy(tostring(var):match("^threadlocal%.context%.var 'request': 0x%x+$"))
    assert.equal("threadlocal.context.MISSING", tostring(context.MISSING))
  end)
end)

describe("a token (#20)", function()
  it("carries var and old_value, context.MISSING when the var was not set", function()
    local var = context.var("v", "default")
    local t1 = var:set(false)
    assert.equal(var, t1.var)
    assert.equal(context.MISSING, t1.old_value)
    local t2 = var:set("two")
    assert.equal(false, t2.old_value)
    var:reset(t2)
    var:reset(t1)
    local t3 = var:set(nil)
    assert.equal(context.MISSING, t3.old_value)
    assert.is_nil(t3.other)
  end)

  it("and context.MISSING are read-only", function()
    local var = context.var("v")
    local t = var:set(1)
    local e = err_of(function() t.var = context.var("w") end)
    assert.truthy(e:match("^.-:%d+: threadlocal: "), e)
    assert.equal(var, t.var)
    e = err_of(function() t.old_value = 1 end)
    assert.truthy(e:match("^.-:%d+: threadlocal: "), e)
    assert.equal(context.MISSING, t.old_value)
    e = err_of(function() context.MISSING.x = 1 end)
    assert.truthy(e:match("^.-:%d+: threadlocal: "), e)
    assert.is_nil(rawget(context.MISSING, "x"))
    var:reset(t) -- still good
    assert.is_nil(var:get())
  end)

  if lua54 then
    -- Written with load: this file must parse on every version.
    local closing = load([[
      local var, v, fail = ...
      local _ <close> = var:set(v)
      if fail then error("fail", 0) end
      return var:get()
    ]])

    it("resets its var when closed as a to-be-closed value (5.4)", function()
      local var = context.var("v", "default")
      assert.equal("in scope", closing(var, "in scope"))
      assert.equal("default", var:get())
      var:set("outer")
      assert.equal("fail", err_of(closing, var, "in scope", true))
      assert.equal("outer", var:get())
    end)

    it("closed after a reset raises that it was used (5.4)", function()
      local var = context.var("v")
      local used = load([[
        local var = ...
        local t <close> = var:set(1)
        var:reset(t)
      ]])
      local e = err_of(used, var)
      assert.truthy(e:find("threadlocal: token has already been used", 1, true), e)
      assert.is_nil(var:get())
    end)
  end
end)

describe("a context as a mapping (#20)", function()
  it("reads a var's value in it, else the var's default", function()
    local var, dflt, unset = context.var("v"), context.var("d", "default"), context.var("u")
    var:set("outer")
    local ctx = context.copy()
    ctx:run(function() var:set("in ctx") end)
    assert.equal("in ctx", ctx[var])
    assert.equal("default", ctx[dflt])
    assert.is_nil(ctx[unset])
    assert.equal("outer", var:get())
    assert.equal("function", type(ctx.run))
  end)

  if support.has_pairs then
    it("iterates with pairs the vars set in it (5.2+)", function()
      local a, b = context.var("a"), context.var("b", "default")
      local ctx = context.copy():run(function()
        a:set(1)
        b:set(false)
        return context.copy()
      end)
      local got, n = {}, 0
      for k, v in pairs(ctx) do
        got[k] = v
        n = n + 1
      end
      assert.equal(1, got[a])
      assert.equal(false, got[b])
      assert.is_true(n >= 2)
      for k in pairs(ctx) do assert.equal("threadlocal.context.var", getmetatable(k)) end
    end)
  end

  it("is read-only: writes raise and change nothing", function()
    local var, unset = context.var("v"), context.var("u")
    local ctx = context.copy()
    ctx:run(function() var:set("in ctx") end)
    local cases = {
      function() ctx[var] = "written" end,   -- a var set in ctx
      function() ctx[unset] = "written" end, -- a var not set
      function() ctx.run = nil end,
      function() ctx[1] = true end,
    }
    for _, f in ipairs(cases) do
      local e, l = err_of(f), debug.getinfo(f, "S").linedefined
      local got_line, msg = position(e)
      assert.equal(l, got_line, e)
      assert.truthy(msg:match("^threadlocal: "), e)
    end
    assert.equal("in ctx", ctx[var])
    assert.is_nil(ctx[unset])
    assert.equal("function", type(ctx.run))
    assert.is_nil(rawget(ctx, var))
    assert.equal("in ctx", ctx:run(function() return var:get() end))
  end)
end)

-- A context object reads through to its contents by its own metatable, and
-- the module maps it to them weakly both ways: on 5.1 and LuaJIT (no
-- ephemerons) a weak-keyed map would keep a context whose var holds it.
-- #nogrind: this runs outside valgrind.
describe("context objects (#20)", function()
  it("are collected, also when a var in them holds them or a token #nogrind", function()
    local ROUND, BOUND = 2000, 16 -- contexts; bytes kept per context, at most
    local var = context.var("self")
    local kept = support.kept_per_call(function()
      local ctx = context.copy()
      ctx:run(function() var:set(ctx); var:set(var:set(ctx)) end)
      assert(tostring(ctx))
    end, ROUND)
    assert.is_true(kept < BOUND, ("%.0f bytes kept per context"):format(kept))
  end)
end)
