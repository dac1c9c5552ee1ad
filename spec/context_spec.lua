-- threadlocal.context: context variables for coroutines (README "Coroutine
-- context"), on one OS thread and on several running one state.
local context = require "threadlocal.context"
local threadlocal = require "threadlocal"
local unpack = table.unpack or unpack
local helper = require "tlhelper"
local support = require "support"

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok)
  return err
end

describe("a context var", function()
  it("reads nil when not set and it has no default", function()
    local var = context.var("v")
    assert.is_nil(var:get())
    assert.equal("v", var.name)
  end)

  it("reads the default argument, else its own default, when not set", function()
    local var = context.var("v", "own")
    assert.equal("own", var:get())
    assert.equal("arg", var:get("arg"))
    assert.equal(false, var:get(false))
    assert.is_nil(context.var("w"):get(nil))
  end)

  it("reads what set stored, before any default", function()
    local var = context.var("v", "own")
    var:set("set")
    assert.equal("set", var:get())
    assert.equal("set", var:get("arg"))
    var:set(false)
    assert.equal(false, var:get("arg"))
  end)

  it("treats set(nil) as not set: the defaults show again", function()
    local var = context.var("v", "own")
    var:set(1)
    var:set(nil)
    assert.equal("own", var:get())
    assert.equal("arg", var:get("arg"))
  end)

  it("holds any Lua value, by reference", function()
    local var = context.var("v")
    local values = { {}, function() end, coroutine.create(function() end), io.stdout, 1.5, "s\0b", true }
    for _, v in ipairs(values) do
      var:set(v)
      assert.equal(v, var:get())
    end
    local t = {}
    var:set(t)
    t.x = 1
    assert.equal(1, var:get().x)
  end)

  it("is independent of other vars, even with the same name", function()
    local a, b = context.var("same"), context.var("same")
    a:set(1)
    assert.is_nil(b:get())
    b:set(2)
    assert.equal(1, a:get())
  end)

  it("prints its name", function()
    local var = context.var("request")
    assert.truthy(tostring(var):match("^threadlocal%.context%.var 'request': 0x%x+$"))
    assert.equal("threadlocal.context.var", getmetatable(var))
  end)

  -- Called by pcall, a function is named as luaL_argerror names it: by its
  -- name in a loaded module, else '?' (context_outcomes_spec: names at a call).
  it("refuses bad arguments with standard messages", function()
    local name = "threadlocal.context.var"
    assert.equal("bad argument #1 to '" .. name .. "' (string expected, got nil)", err_of(context.var))
    assert.equal("bad argument #1 to '" .. name .. "' (string expected, got number)",
      err_of(context.var, 1))
    local var = context.var("v")
    assert.equal("bad argument #1 to '?' (threadlocal.context.var expected, got table)",
      err_of(var.get, {}))
    assert.equal("bad argument #1 to '?' (threadlocal.context.var expected, got nil)",
      err_of(var.set))
    assert.equal("bad argument #2 to '?' (threadlocal.context.token expected, got table)",
      err_of(var.reset, var, {}))
  end)
  it("checks self in every method, also against a context method's name (#19)", function()
    local var = context.var("v", "own")
    local ctx = context.copy()
    local token = var:set(1)
    local function msg(_, expected, got) -- called by pcall: no name
      return ("bad argument #1 to '?' (%s expected, got %s)"):format(expected, got)
    end
    local bad = { "run", "get", "name", 1, true, ctx, token, context, n = 9 } -- [9]: nil
    for i = 1, bad.n do
      local b = bad[i]
      local var_expected = msg("get", "threadlocal.context.var", type(b))
      assert.equal(var_expected, err_of(var.get, b))
      assert.equal(var_expected, err_of(var.get, b, "arg"))
      assert.equal(msg("set", "threadlocal.context.var", type(b)), err_of(var.set, b, 2))
      assert.equal(msg("reset", "threadlocal.context.var", type(b)), err_of(var.reset, b, token))
      if b ~= ctx then
        assert.equal(msg("run", "threadlocal.context", type(b)), err_of(ctx.run, b, print))
      end
    end
    assert.equal(msg("run", "threadlocal.context", "table"), err_of(ctx.run, var, print))
    assert.equal(1, var:get()) -- nothing changed
    var:reset(token)
    assert.equal("own", var:get())
  end)
end)

describe("a token", function()
  it("resets the var to what set replaced, once", function()
    local var = context.var("v", "own")
    local t1 = var:set(1)
    local t2 = var:set(2)
    var:reset(t2)
    assert.equal(1, var:get())
    var:reset(t1)
    assert.equal("own", var:get()) -- not set again, not merely nil
    assert.equal("arg", var:get("arg"))
  end)

  it("raises when used twice, and changes nothing", function()
    local var = context.var("v")
    local t = var:set(1)
    var:reset(t)
    var:set(2)
    assert.equal("threadlocal: token has already been used", err_of(var.reset, var, t))
    assert.equal(2, var:get())
  end)

  it("raises when reset in another context, and changes nothing", function()
    local var = context.var("v")
    local t = var:set(1)
    local ctx = context.copy()
    ctx:run(function()
      var:set(2)
      assert.equal("threadlocal: token was created in a different context", err_of(var.reset, var, t))
      assert.equal(2, var:get())
    end)
    local co = context.create(function()
      return err_of(var.reset, var, t)
    end)
    local ok, err = coroutine.resume(co)
    assert.is_true(ok)
    assert.equal("threadlocal: token was created in a different context", err)
    assert.equal(1, var:get())
    var:reset(t) -- still good where it was made
    assert.is_nil(var:get())
  end)

  it("raises when given to another var, and changes nothing", function()
    local a, b = context.var("a"), context.var("b")
    local ta = a:set(1)
    b:set(2)
    assert.equal("threadlocal: token was created by a different context variable",
      err_of(b.reset, b, ta))
    assert.equal(1, a:get())
    assert.equal(2, b:get())
    a:reset(ta)
    assert.is_nil(a:get())
  end)
end)

describe("a context", function()
  it("is copied shallowly: values by reference, sets independent", function()
    local var, other = context.var("v"), context.var("o")
    local t = {}
    var:set(t)
    local ctx = context.copy()
    var:set("later")
    assert.equal(t, ctx:run(function() return var:get() end))
    ctx:run(function() other:set("in ctx") end)
    assert.is_nil(other:get())
    assert.equal("in ctx", ctx:run(function() return other:get() end))
    assert.equal("threadlocal.context", getmetatable(ctx))
  end)

  it("runs fn with its arguments and returns all its results", function()
    local ctx = context.copy()
    local a, b, c = ctx:run(function(...) return select("#", ...), ... end, 1, nil, 3)
    assert.same({ 3, 1, nil }, { a, b, c })
    assert.equal(3, select("#", ctx:run(function() return 1, nil, nil end)))
  end)

  it("is restored after run, also when fn raises, with the same error value", function()
    local var = context.var("v")
    var:set("outer")
    local ctx = context.copy()
    local e = {}
    local ok, err = pcall(ctx.run, ctx, function()
      var:set("inner")
      error(e)
    end)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("outer", var:get())
    assert.equal("inner", ctx:run(function() return var:get() end))
    ok, err = pcall(ctx.run, ctx, function() error("plain", 0) end)
    assert.is_false(ok)
    assert.equal("plain", err)
    assert.equal("outer", var:get())
  end)

  it("nests: each run restores the one around it", function()
    local var = context.var("v")
    var:set(0)
    local c1 = context.copy()
    c1:run(function()
      var:set(1)
      local c2 = context.copy()
      c2:run(function()
        assert.equal(1, var:get())
        var:set(2)
      end)
      assert.equal(1, var:get())
    end)
    assert.equal(0, var:get())
  end)

  it("cannot be entered twice at once", function()
    local ctx = context.copy()
    assert.truthy(err_of(ctx.run, ctx, function()
      ctx:run(function() end)
    end):match(":%d+: threadlocal: context is already entered$"))
    local co = coroutine.create(function()
      ctx:run(function() coroutine.yield() end)
    end)
    assert.is_true(coroutine.resume(co))
    assert.equal("threadlocal: context is already entered", err_of(ctx.run, ctx, function() end))
    assert.is_true(coroutine.resume(co))
    assert.equal("dead", coroutine.status(co))
    assert.equal(1, ctx:run(function() return 1 end))
  end)

  if coroutine.close then
    it("can be entered again once a coroutine running it was closed (5.4)", function()
      local ctx = context.copy()
      local co = coroutine.create(function() ctx:run(coroutine.yield) end)
      assert.is_true(coroutine.resume(co))
      assert.is_true(coroutine.close(co))
      assert.equal(1, ctx:run(function() return 1 end))
    end)
  end

  it("refuses bad arguments", function()
    local ctx = context.copy()
    assert.equal("bad argument #2 to '?' (function expected, got nil)", err_of(ctx.run, ctx))
    assert.equal("bad argument #1 to '?' (threadlocal.context expected, got table)",
      err_of(ctx.run, {}, print))
    local callable = setmetatable({}, { __call = function(_, x) return x end })
    assert.equal(5, ctx:run(callable, 5))
  end)
end)

describe("coroutines", function()
  it("made by create run in a copy of the creator's context, taken at create", function()
    local var = context.var("v")
    var:set("creator")
    local co = context.create(function()
      local first = var:get()
      var:set("inside")
      coroutine.yield(first)
      return var:get()
    end)
    var:set("changed later")
    assert.same({ true, "creator" }, { coroutine.resume(co) })
    assert.equal("changed later", var:get())
    assert.same({ true, "inside" }, { coroutine.resume(co) })
    assert.equal("thread", type(co))
  end)

  it("made by wrap do the same, and pass errors through", function()
    local var = context.var("v")
    var:set("creator")
    local f = context.wrap(function(x)
      local y = coroutine.yield(var:get(), x)
      var:set(y)
      return var:get()
    end)
    var:set("changed later")
    local a, b = f(1)
    assert.same({ "creator", 1 }, { a, b })
    assert.equal("from resume", f("from resume"))
    assert.equal("changed later", var:get())
    local e = {}
    local g = context.wrap(function() error(e) end)
    local ok, err = pcall(g)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("bad argument #1 to 'threadlocal.context.create' (function expected, got nil)",
      err_of(context.create))
    assert.equal("bad argument #1 to 'threadlocal.context.wrap' (function expected, got number)",
      err_of(context.wrap, 1))
  end)

  it("keep their own values across yields under a round-robin scheduler (50 of 50)", function()
    local var = context.var("v", "none")
    var:set("main")
    local cos, seen = {}, {}
    for i = 1, 50 do
      cos[i] = context.create(function()
        assert.equal("main", var:get()) -- the copy
        var:set(i)
        for _ = 1, 3 do
          coroutine.yield()
          if var:get() ~= i then return false end
        end
        return true
      end)
    end
    local live = 50
    while live > 0 do
      for i = 1, 50 do
        if coroutine.status(cos[i]) == "suspended" then
          local ok, good = coroutine.resume(cos[i])
          assert.is_true(ok, good)
          if coroutine.status(cos[i]) == "dead" then
            seen[#seen + 1] = good
            live = live - 1
          end
        end
      end
    end
    local good = 0
    for _, g in ipairs(seen) do if g then good = good + 1 end end
    assert.equal(50, good)
    assert.equal("main", var:get())
  end)

  it("plain ones use the thread's root context, even inside a context coroutine", function()
    local var = context.var("v")
    var:set("root")
    assert.equal("root", coroutine.wrap(function() return var:get() end)())
    local inner
    local co = context.create(function()
      var:set("own")
      inner = coroutine.wrap(function() return var:get() end)()
      return var:get()
    end)
    assert.same({ true, "own" }, { coroutine.resume(co) })
    assert.equal("root", inner)
    coroutine.wrap(function() var:set("set by a plain coroutine") end)()
    assert.equal("set by a plain coroutine", var:get())
  end)

  it("plain ones see the context the main coroutine runs", function()
    local var = context.var("v")
    var:set("root")
    local ctx = context.copy()
    ctx:run(function() var:set("ctx") end)
    local got = ctx:run(function() return coroutine.wrap(function() return var:get() end)() end)
    assert.equal("ctx", got)
  end)

  it("keep ctx:run's context across yields; others never see it", function()
    local var = context.var("v")
    var:set("root")
    local ctx = context.copy()
    ctx:run(function() var:set("ctx") end)
    local log = {}
    local a = coroutine.create(function()
      ctx:run(function()
        log[#log + 1] = var:get()
        coroutine.yield()
        log[#log + 1] = var:get()
        var:set("ctx again")
        coroutine.yield()
      end)
      log[#log + 1] = var:get()
    end)
    local b = coroutine.create(function()
      for _ = 1, 3 do
        log[#log + 1] = var:get()
        coroutine.yield()
      end
    end)
    for _ = 1, 3 do
      assert.is_true(coroutine.resume(a))
      log[#log + 1] = var:get()
      assert.is_true(coroutine.resume(b))
    end
    assert.same({ "ctx", "root", "root", "ctx", "root", "root", "root", "root", "root" }, log)
    assert.equal("ctx again", ctx:run(function() return var:get() end))
  end)

  it("in a context coroutine, ctx:run restores the coroutine's own context", function()
    local var = context.var("v")
    local ctx = context.copy()
    local e = {}
    local co = context.create(function()
      var:set("own")
      ctx:run(function()
        var:set("ctx")
        coroutine.yield(var:get())
      end)
      local after = var:get()
      -- (Lua 5.1's pcall cannot yield: this fn does not)
      local ok, err = pcall(ctx.run, ctx, function() error(e) end)
      return after, ok, err == e, var:get()
    end)
    assert.same({ true, "ctx" }, { coroutine.resume(co) })
    assert.same({ true, "own", false, true, "own" }, { coroutine.resume(co) })
  end)

  it("take C functions too: create, and run and bind inside a coroutine", function()
    local ctx = context.copy()
    assert.same({ true, true, 3 }, { pcall(coroutine.resume, context.create(select), "#", 1, 2, 3) })
    assert.same({ true, 2 }, { pcall(coroutine.wrap(function()
      return ctx:run(select, "#", 1, 2)
    end)) })
    assert.same({ true, 1 }, { pcall(coroutine.wrap(function()
      return context.bind(select)("#", 1)
    end)) })
  end)

  it("that finished are collected with their contexts", function()
    local var = context.var("v")
    local collected, n = 0, 20
    for _ = 1, n do
      support.off_stack(function()
        local co = context.create(function()
          var:set(support.gc_value(function() collected = collected + 1 end))
          coroutine.yield()
        end)
        assert(coroutine.resume(co))
        assert(coroutine.resume(co))
        local f = context.wrap(function()
          var:set(support.gc_value(function() collected = collected + 1 end))
        end)
        f()
      end)
    end
    support.full_gc(2)
    assert.equal(2 * n, collected)
  end)
end)

-- Memory, in bytes: weak-keyed tables are no ephemerons on Lua 5.1 and LuaJIT,
-- so a context that refers to its coroutine must not sit in one as a value.
-- Each case makes ROUND coroutines to size the module's tables, then ROUND
-- more, and bounds the bytes these keep after two full collections.  Leaks
-- kept 680 to 2,700 bytes a coroutine; without them, under 1 byte is kept.
-- #nogrind: these run outside valgrind.
describe("contexts of finished or dropped coroutines", function()
  local ROUND, BOUND = 2000, 16   -- coroutines; bytes kept per coroutine, at most

  local function check(cases)
    local over = {}
    for name, make in pairs(cases) do
      local kept = support.kept_per_call(make, ROUND)
      if kept >= BOUND then over[#over + 1] = ("%s: %.0f"):format(name, kept) end
    end
    table.sort(over)
    assert.equal("", table.concat(over, "; ")) -- bytes kept per coroutine, when over BOUND
  end

  it("are collected from coroutines dropped inside a bound call or ctx:run #nogrind", function()
    local var = context.var("v")
    local bound = context.bind(function() coroutine.yield() end)
    local self_bound = context.bind(function() var:set(coroutine.running()); coroutine.yield() end)
    check({
      bound = function() coroutine.resume(coroutine.create(bound)) end,
      ["bound, the var holds the coroutine"] = function()
        coroutine.resume(coroutine.create(self_bound))
      end,
      ["ctx:run"] = function()
        coroutine.resume(coroutine.create(function() context.copy():run(coroutine.yield) end))
      end,
    })
  end)

  it("are collected from create and wrap coroutines, finished or dropped #nogrind", function()
    local var = context.var("v")
    local function finish_self() var:set(coroutine.running()) end
    local function keep_self() var:set(coroutine.running()); coroutine.yield() end
    check({
      ["create, finished"] = function() coroutine.resume(context.create(finish_self)) end,
      ["create, suspended"] = function() coroutine.resume(context.create(keep_self)) end,
      ["create, never resumed"] = function() context.create(finish_self) end,
      ["wrap, finished"] = function() context.wrap(finish_self)() end,
      ["wrap, suspended"] = function() context.wrap(keep_self)() end,
      ["create, a closure over the coroutine"] = function()
        local co
        co = context.create(function() var:set(function() return co end) end)
        coroutine.resume(co)
      end,
    })
  end)
end)

describe("context.bind", function()
  it("runs each call in a fresh copy of the context current at bind", function()
    local var = context.var("v")
    var:set("at bind")
    local f = context.bind(function(x)
      local before = var:get()
      var:set(x)
      return before, var:get()
    end)
    var:set("after bind")
    assert.same({ "at bind", 1 }, { f(1) })
    assert.same({ "at bind", 2 }, { f(2) })
    assert.equal("after bind", var:get())
    assert.equal("bad argument #1 to 'threadlocal.context.bind' (function expected, got nil)",
      err_of(context.bind))
  end)

  it("keeps each call's values across yields, in plain coroutines", function()
    local var = context.var("v")
    local handler = context.bind(function(i)
      var:set(i)
      for _ = 1, 3 do
        coroutine.yield()
        if var:get() ~= i then return false end
      end
      return true
    end)
    local cos = {}
    for i = 1, 20 do cos[i] = coroutine.create(handler) end
    local results = {}
    for round = 1, 4 do
      for i = 1, 20 do
        local ok, good = coroutine.resume(cos[i], i)
        assert.is_true(ok, good)
        if round == 4 then results[i] = good end
        assert.is_nil(var:get())
      end
    end
    for i = 1, 20 do
      assert.is_true(results[i])
      assert.equal("dead", coroutine.status(cos[i]))
    end
  end)

  it("restores the caller's context when the function raises", function()
    local var = context.var("v")
    var:set("caller")
    local e = {}
    local f = context.bind(function() var:set("in call"); error(e) end)
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("caller", var:get())
    ok, err = coroutine.wrap(function()
      local ok2, err2 = pcall(f)
      return ok2, err2 == e and var:get()
    end)()
    assert.is_false(ok)
    assert.equal("caller", err)
  end)
end)

describe("contexts and OS threads (one state)", function()
  local w1, w2
  before_each(function()
    w1, w2 = helper.worker(), helper.worker()
  end)
  after_each(function()
    w1:stop()
    w2:stop()
  end)

  it("give every OS thread its own root context", function()
    local var = context.var("v", "default")
    var:set("main")
    assert.equal("default", w1:run(function() return var:get() end))
    w1:run(function() var:set("one") end)
    w2:run(function() var:set("two") end)
    assert.equal("main", var:get())
    assert.equal("one", w1:run(function() return var:get() end))
    assert.equal("two", w2:run(function() return var:get() end))
    assert.equal("default", helper.on_thread(function() return var:get() end))
    -- plain coroutines follow the thread that resumes them
    local co = coroutine.wrap(function()
      while true do coroutine.yield(var:get()) end
    end)
    assert.equal("main", co())
    assert.equal("one", w1:run(co))
    assert.equal("two", w2:run(co))
  end)

  it("keep ctx:run of the main coroutine to the OS thread that ran it", function()
    local var = context.var("v")
    var:set("main root")
    w1:run(function() var:set("w1 root") end)
    local a, b = context.copy(), context.copy()
    a:run(function() var:set("a") end)
    b:run(function() var:set("b") end)
    local seen, n = {}, 0
    local function see(v) n = n + 1; seen[n] = v end
    a:run(function()
      see(var:get())                                     -- a
      see(w1:run(function() return var:get() end))      -- w1's root
      w1:run(function()
        b:run(function()
          see(var:get())                                 -- b
          see(helper.on_thread(function() return var:get() end)) -- a new thread's root
          see(w2:run(function() return var:get() end))  -- w2's root
          see(var:get())                                 -- b
        end)
        see(var:get())                                   -- w1's root
      end)
      see(var:get())                                     -- a
    end)
    assert.equal(8, n)
    assert.same({ "a", "w1 root", "b", nil, nil, "b", "w1 root", "a" }, seen)
    assert.equal("main root", var:get())
  end)

  it("let a context coroutine keep its context on whatever thread resumes it", function()
    local var = context.var("v")
    var:set("main root")
    w1:run(function() var:set("w1 root") end)
    local co = context.create(function()
      var:set("own")
      while true do coroutine.yield(var:get()) end
    end)
    assert.same({ true, "own" }, { coroutine.resume(co) })
    assert.same({ true, "own" }, { w1:run(coroutine.resume, co) })
    assert.same({ true, "own" }, { w2:run(coroutine.resume, co) })
    assert.equal("main root", var:get())
    assert.equal("w1 root", w1:run(function() return var:get() end))
  end)

  it("let bound calls on another thread start from the bind-time copy", function()
    local var = context.var("v")
    var:set("main")
    local f = context.bind(function() local v = var:get(); var:set("changed"); return v end)
    w1:run(function() var:set("w1") end)
    assert.equal("main", w1:run(f))
    assert.equal("w1", w1:run(function() return var:get() end))
    assert.equal("main", f())
  end)
end)

describe("threadlocal.release() and contexts", function()
  local w
  before_each(function() w = helper.worker() end)
  after_each(function() w:stop() end)

  it("drops the root context, also when called inside ctx:run (#19)", function()
    local var = context.var("v", "default")
    assert.same({ true, "default", "default" }, { w:run(function()
      var:set("secret")
      local id = threadlocal.id()
      local inside
      context.copy():run(function()
        threadlocal.release()
        inside = var:get()
      end)
      return id ~= threadlocal.id(), inside, var:get()
    end) })
    assert.equal("default", w:run(function() return var:get() end))
    w:run(function() var:set("secret") end)
    w:run(threadlocal.release)
    assert.equal("default", w:run(function() return var:get() end))
  end)

  it("leaves the new root after nested runs, a raising run and a bound call (#19)", function()
    local var = context.var("v", "default")
    local seen = { w:run(function()
      local got, ctx = {}, context.copy()
      local function see(v) got[#got + 1] = v end
      var:set("old")
      context.copy():run(function()
        ctx:run(threadlocal.release)
        see(var:get())
      end)
      see(var:get())
      var:set("old")
      local ok, err = pcall(ctx.run, ctx, function() threadlocal.release(); error("e", 0) end)
      see(ok)
      see(err)
      see(var:get())
      var:set("old")
      context.bind(threadlocal.release)()
      see(var:get())
      var:set("old")
      ctx:run(function() threadlocal.release(); var:set("set after release") end)
      see(var:get())
      see(ctx:run(function() return 1 end)) -- it can be entered again
      return unpack(got, 1, 8)
    end) }
    assert.same({ "default", "default", false, "e", "default", "default", "set after release", 1 }, seen)
  end)

  it("in a coroutine: drops the root, keeps a context coroutine's own (#19)", function()
    local var = context.var("v", "default")
    local seen = { w:run(function()
      local ctx = context.copy()
      var:set("old")
      local plain = coroutine.wrap(function()
        ctx:run(threadlocal.release)
        return var:get()
      end)()
      local a = var:get()
      var:set("old")
      local ok, own = coroutine.resume(context.create(function()
        var:set("own")
        ctx:run(threadlocal.release)
        return var:get()
      end))
      return plain, a, ok, own, var:get()
    end) }
    assert.same({ "default", "default", true, "own", "default" }, seen)
  end)
end)

describe("threadlocal.context built in and from its file", function()
  it("is registered in package.preload by the module, and reads a set var in C", function()
    assert.equal("function", type(package.preload["threadlocal.context"]))
    local var = context.var("c-path")
    var:set(1)
    assert.equal("C", debug.getinfo(var.get, "S").what)
    assert.equal(1, var:get())
  end)

  it("loaded from lua/ without the module's helpers, works the same in Lua", function()
    local ctxmod = assert(loadfile("lua/threadlocal/context.lua"))("threadlocal.context", nil, false)
    local var = ctxmod.var("file", "dflt")
    assert.equal("Lua", debug.getinfo(var.get, "S").what)
    assert.equal("dflt", var:get())
    local token = var:set("v")
    assert.equal("v", var:get())
    local co = ctxmod.wrap(function()
      var:set("inner")
      coroutine.yield(var:get())
      return var:get()
    end)
    assert.equal("inner", co())
    assert.equal("v", var:get())
    assert.equal("inner", co())
    var:reset(token)
    assert.equal("dflt", var:get())
    assert.equal("x", var:get("x"))
  end)
end)

describe("threadlocal.context required first", function()
  it("is found in threadlocal.so before the module was required, with no Lua files", function()
    local got, same = helper.exec([[
      package.path = ""
      local context = require "threadlocal.context"
      local var = context.var("first", 5)
      require "threadlocal"
      return var:get(), package.loaded["threadlocal.context"] == context
    ]])
    assert.equal(5, got)
    assert.is_true(same)
  end)
end)
