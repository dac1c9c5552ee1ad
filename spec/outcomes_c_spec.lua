-- Outcomes of the C module that used to surprise: scopes closed out of
-- order, tracebacks cut at with/run, the proxy's name, the module's names.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

describe("the module table", function()
  local public = { "new", "local", "shared", "clear", "fields", "table", "threads", "id",
                   "pairs", "scope", "with", "capture", "run", "release", "version", "shared_mt" }

  it("lists every public name to next() in a fresh state", function()
    local names = helper.exec([[
      local t, seen = require "threadlocal", {}
      local k = next(t)
      while k ~= nil do
        seen[#seen + 1] = k
        k = next(t, k)
      end
      table.sort(seen)
      return table.concat(seen, " ")
    ]])
    local want = {}
    for i, k in ipairs(public) do want[i] = k end
    table.sort(want)
    for _, k in ipairs(want) do assert.matches("%f[%w_]" .. k .. "%f[^%w_]", names) end
  end)

  it("holds its names as plain fields, also through pairs()", function()
    local seen = {}
    for k, v in pairs(threadlocal) do seen[k] = v end
    for _, k in ipairs(public) do assert.is_not_nil(rawget(threadlocal, k), k) end
    for _, k in ipairs(public) do assert.equal(rawget(threadlocal, k), seen[k]) end
    assert.equal("string", type(rawget(threadlocal, "version")))
  end)
end)

describe("a shared table proxy", function()
  it("is named threadlocal.proxy in tostring, getmetatable and errors", function()
    local sh = threadlocal.shared(support.unique("proxy"))
    sh.t = { k = 1 }
    local p = sh.t
    assert.truthy(tostring(p):match("^threadlocal%.proxy: "), tostring(p))
    assert.equal("threadlocal.proxy", getmetatable(p))
    local mt = debug.getmetatable(p) -- found from the object, not by its name
    local ok, err = pcall(mt.__len, {})
    assert.is_false(ok)
    assert.matches("threadlocal%.proxy expected, got table", err)
    ok, err = pcall(threadlocal.fields, 1)
    assert.is_false(ok)
    assert.matches("threadlocal%.local, threadlocal%.shared or threadlocal%.proxy expected", err)
  end)
end)

describe("threadlocal.pairs", function()
  local function collect(x)
    local seen, n = {}, 0
    for k, v in threadlocal.pairs(x) do
      seen[k] = v
      n = n + 1
    end
    return seen, n
  end

  it("iterates a Local's fields on every version", function()
    local tl = threadlocal.new()
    tl.a, tl[2] = "x", true
    local seen, n = collect(tl)
    assert.equal(2, n)
    assert.same({ a = "x", [2] = true }, seen)
    local fresh = threadlocal.new(function(self) self.i = 1 end)
    assert.same({ i = 1 }, (collect(fresh)))
  end)

  it("iterates a shared local and a proxy on every version", function()
    local sh = threadlocal.shared(support.unique("pairs"))
    assert.equal(0, select(2, collect(sh)))
    sh.a, sh.t = 1, { x = "y", [3] = 4 }
    local seen, n = collect(sh)
    assert.equal(2, n)
    assert.equal(1, seen.a)
    assert.same({ x = "y", [3] = 4 }, (collect(sh.t)))
  end)

  it("refuses anything else with Lua's bad argument error", function()
    for _, bad in ipairs { {}, "s", 1, io.stdout } do
      local ok, err = pcall(threadlocal.pairs, bad)
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[^']*' %(threadlocal%.local, threadlocal%.shared or "
        .. "threadlocal%.proxy expected, got %a+%)", err)
    end
  end)
end)

describe("scopes on one thread", function()
  local ORDER = "^threadlocal: scope closed out of order: a newer scope of "

  it("raise when two coroutines close their scopes out of order", function()
    local name = support.unique("req")
    local sh = threadlocal.shared(name)
    local a = coroutine.wrap(function()
      local s = threadlocal.scope(sh, { user = "A" })
      coroutine.yield()
      s:close()
    end)
    local b = coroutine.wrap(function()
      local s = threadlocal.scope(sh, { user = "B" })
      coroutine.yield()
      s:close()
    end)
    a(); b()
    local ok, err = pcall(a)
    assert.is_false(ok)
    assert.matches(ORDER .. "threadlocal%.shared '" .. name:gsub("%p", "%%%0") .. "'",
      support.bare(err))
    assert.equal("B", sh.user) -- nothing changed
    b()
    assert.equal("A", sh.user) -- A's scope is still open: its coroutine died with it
  end)

  it("refuse an out-of-order close, which changes nothing, then close in order", function()
    for _, loc in ipairs { threadlocal.new(), threadlocal.shared(support.unique("order")) } do
      loc.x = 0
      local outer = threadlocal.scope(loc, { x = 1 })
      local inner = threadlocal.scope(loc, { x = 2 })
      local ok, err = pcall(outer.close, outer)
      assert.is_false(ok)
      assert.matches(ORDER, support.bare(err))
      assert.matches(tostring(loc):match("^[^:]*"):gsub("%p", "%%%0"), err)
      assert.equal(2, loc.x)
      inner:close()
      assert.equal(1, loc.x)
      outer:close()
      assert.equal(0, loc.x)
      outer:close() -- twice does nothing
      assert.equal(0, loc.x)
    end
  end)

  it("check each local apart, and count an unreachable scope until collected", function()
    local l1, l2 = threadlocal.new(), threadlocal.new()
    local s1 = threadlocal.scope(l1, { v = 1 })
    local s2 = threadlocal.scope(l2, { v = 2 })
    s1:close() -- another local's scope is no obstacle
    s2:close()
    local outer = threadlocal.scope(l1, { v = "outer" })
    support.off_stack(function() threadlocal.scope(l1, { v = "lost" }) end)
    assert.is_false(pcall(outer.close, outer))
    assert.equal("lost", l1.v)
    support.full_gc(2) -- collected unclosed: dropped, as before, restoring nothing
    outer:close()
    assert.is_nil(l1.v)
  end)

  it("let with end the scopes fn left open on its local", function()
    local sh = threadlocal.shared(support.unique("with"))
    sh.x = 0
    local ok = pcall(threadlocal.with, sh, { x = 1 }, function()
      threadlocal.scope(sh, { x = 2 })
      error("boom")
    end)
    assert.is_false(ok)
    assert.equal(0, sh.x)
  end)
end)

describe("with and run on an error in fn", function()
  local function deep() error("deep failure") end

  -- The traceback a message handler sees for an error two calls inside fn.
  local function trace(call)
    local ok, tb = xpcall(call, debug.traceback)
    assert.is_false(ok)
    return tb
  end

  it("put everything back and raise fn's error", function()
    local sh = threadlocal.shared(support.unique("tb"))
    sh.x = 0
    local snap = threadlocal.capture(sh)
    snap[next(snap)].x = 5
    local tb = trace(function()
      threadlocal.with(sh, { x = 1 }, function() deep() end)
    end)
    assert.matches("deep failure", tb)
    assert.equal(0, sh.x)
    tb = trace(function()
      threadlocal.run(snap, function() assert(sh.x == 5); deep() end)
    end)
    assert.matches("deep failure", tb)
    assert.equal(0, sh.x)
  end)

  -- A coroutine that dies with an error closes nothing (5.4 manual, 3.3.8):
  -- in one, fn's error must still put the thread's fields back at once.
  it("put everything back when fn's error ends its coroutine", function()
    local sh, loc = threadlocal.shared(support.unique("co")), threadlocal.new()
    sh.x, loc.x = 0, 0
    for _, call in ipairs {
      function() threadlocal.with(sh, { x = 1 }, deep) end,
      function() threadlocal.with(loc, { x = 1 }, deep) end,
      function() threadlocal.run({ [next(threadlocal.capture(sh))] = { x = 1 } }, deep) end,
    } do
      local ok, err = coroutine.resume(coroutine.create(call))
      assert.is_false(ok)
      assert.matches("deep failure", err)
      assert.equal(0, sh.x)
      assert.equal(0, loc.x)
    end
  end)

  if _VERSION == "Lua 5.4" and not jit then
    it("keep deep and fn in the traceback on Lua 5.4", function()
      local sh = threadlocal.shared(support.unique("tb"))
      local function fn() deep() end
      for _, call in ipairs {
        function() threadlocal.with(sh, { x = 1 }, fn) end,
        function() threadlocal.run({}, fn) end,
      } do
        local tb = trace(call)
        assert.matches("in %a* ?'deep'", tb)
        assert.matches("in function <[^>]*:" .. debug.getinfo(fn, "S").linedefined .. ">", tb)
        assert.is_nil(sh.x)
      end
    end)

    it("refuse a yield inside fn, and put everything back when the coroutine closes", function()
      local sh = threadlocal.shared(support.unique("yield"))
      for _, call in ipairs {
        function() return threadlocal.with(sh, { x = 1 }, coroutine.yield, "y") end,
        function() return threadlocal.run({}, coroutine.yield, "y") end,
      } do
        local co = coroutine.create(call)
        local ok, err = coroutine.resume(co)
        assert.is_false(ok)
        assert.matches("attempt to yield across a C%-call boundary", err)
        -- A coroutine that ends with an error keeps its stack until it is closed.
        coroutine.close(co)
        assert.is_nil(sh.x)
      end
    end)

    it("return fn's results and close the scope", function()
      local sh = threadlocal.shared(support.unique("ret"))
      local a, b, c = threadlocal.with(sh, { x = 1 }, function(p) return sh.x, p, nil end, "p")
      assert.same({ 1, "p" }, { a, b })
      assert.is_nil(c)
      assert.is_nil(sh.x)
      assert.same({ 3, 4 }, { threadlocal.run({}, function(...) return ... end, 3, 4) })
    end)
  end
end)

describe("a Local's values handed to another thread of the same state", function()
  it("arrive there with fields and with, and leave that thread as it was", function()
    local tl = threadlocal.new()
    local shared_table = { n = 1 }
    tl.user, tl.obj = "alice", shared_table
    local main_id = threadlocal.id()
    local worker = helper.worker()
    worker:run(function() tl.user = "worker's own" end)
    -- The recipe: copy on the sending thread, install around fn on the other.
    local vals = threadlocal.fields(tl)
    local id, user, same, after = worker:run(function()
      local i, u, s = threadlocal.with(tl, vals, function()
        return threadlocal.id(), tl.user, tl.obj == shared_table
      end)
      return i, u, s, tl.user
    end)
    worker:stop()
    assert.is_not.equal(main_id, id)
    assert.equal("alice", user)
    assert.is_true(same) -- the same state: values arrive as they are, tables not copied
    assert.equal("worker's own", after)
    assert.equal("alice", tl.user)
  end)
end)
