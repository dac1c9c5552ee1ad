-- Shared locals in one state on one thread: README, Shared locals and Shared
-- values.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

local function fresh(defaults)
  return threadlocal.shared(support.unique("shared"), defaults)
end

-- Runs f and checks that it raises exactly msg and leaves sh's fields as before.
local function refused(sh, msg, f)
  local before = threadlocal.fields(sh)
  local ok, err = pcall(f)
  assert.is_false(ok)
  assert.equal(msg, support.bare(err))
  assert.same(before, threadlocal.fields(sh))
end

describe("threadlocal.shared", function()
  it("gives the same shared local for the same name", function()
    local a = threadlocal.shared("same name")
    assert.equal(a, threadlocal.shared("same name"))
    a.x = 1
    assert.equal(1, threadlocal.shared("same name").x)
  end)

  it("keeps different names apart, names being binary-safe", function()
    local a, b = threadlocal.shared("bin\0a"), threadlocal.shared("bin\0b")
    a.x, b.x = 1, 2
    assert.equal(1, a.x)
    assert.equal(2, b.x)
  end)

  it("prints as threadlocal.shared with its name", function()
    local sh = threadlocal.shared("printed")
    assert.truthy(tostring(sh):match("^threadlocal%.shared 'printed': 0?x?%x+$"), tostring(sh))
    assert.equal("threadlocal.shared", getmetatable(sh))
  end)

  it("refuses a name that is not a string and defaults that are not a table", function()
    for _, bad in ipairs { {}, true, io.stdout } do
      local ok, err = pcall(threadlocal.shared, bad)
      assert.is_false(ok)
      assert.truthy(err:match("bad argument #1 to '[^']*' %(string expected, got "), err)
    end
    local ok, err = pcall(threadlocal.shared, "x", 5)
    assert.is_false(ok)
    assert.truthy(err:match("bad argument #2 to '[^']*' %(table expected, got number%)"), err)
  end)
end)

describe("a shared local's values", function()
  it("keep nil, booleans, integers, floats, strings and light userdata", function()
    local sh = fresh()
    local light = helper.lightuserdata(0x1234)
    sh.t, sh.f, sh.i, sh.x, sh.s, sh.l = true, false, 42, 2.5, "str", light
    assert.equal(true, sh.t)
    assert.equal(false, sh.f)
    assert.equal(42, sh.i)
    assert.equal(2.5, sh.x)
    assert.equal("str", sh.s)
    assert.equal(light, sh.l)
    sh.i = nil
    assert.is_nil(sh.i)
    assert.is_nil(sh.never)
  end)

  if math.type then
    it("keep integers and floats distinct (Lua 5.3+)", function()
      local sh = fresh()
      sh.i, sh.f, sh.big = 1, 1.0, math.maxinteger
      assert.equal("integer", math.type(sh.i))
      assert.equal("float", math.type(sh.f))
      assert.equal(math.maxinteger, sh.big)
      sh.nan = 0 / 0
      assert.is_true(sh.nan ~= sh.nan)
    end)
  else
    it("keep every number (Lua 5.1/5.2 have only floats)", function()
      local sh = fresh()
      sh.i, sh.f, sh.big = 1, 1.5, 2 ^ 53
      assert.equal(1, sh.i)
      assert.equal(1.5, sh.f)
      assert.equal(2 ^ 53, sh.big)
      sh.nan = 0 / 0
      assert.is_true(sh.nan ~= sh.nan)
    end)
  end

  it("keep binary strings of any length", function()
    local sh = fresh()
    local bin = "a\0b\255\0"
    local long = ("0123456789"):rep(100000)
    sh.bin, sh.long, sh.empty = bin, long, ""
    assert.equal(bin, sh.bin)
    assert.equal(long, sh.long)
    assert.equal("", sh.empty)
  end)

  it("take string, number and boolean keys, with 2.0 the same key as 2", function()
    local sh = fresh()
    sh[1], sh[2.0], sh[2.5], sh[true], sh["1"] = "one", "two", "half", "yes", "string one"
    assert.equal("one", sh[1.0])
    assert.equal("two", sh[2])
    assert.equal("half", sh[2.5])
    assert.equal("yes", sh[true])
    assert.is_nil(sh[false])
    assert.equal("string one", sh["1"])
    assert.is_nil(sh[{}])
    assert.is_nil(sh[0 / 0])
  end)

  it("keep every field through many inserts and deletes", function()
    local sh = fresh()
    for i = 1, 3000 do
      sh["k" .. i] = i
      if i % 3 == 0 then sh["k" .. (i - 1)] = nil end
    end
    local f = threadlocal.fields(sh)
    local n = 0
    for k, v in pairs(f) do
      n = n + 1
      assert.equal("k" .. v, k)
      assert.is_true(v % 3 ~= 2)
    end
    assert.equal(2000, n)
    for i = 1, 3000 do sh["k" .. i] = nil end
    assert.same({}, threadlocal.fields(sh))
    sh.again = 1
    assert.same({ again = 1 }, threadlocal.fields(sh))
  end)

  it("copy tables in: changing the original afterwards changes nothing", function()
    local sh = fresh()
    local t = { a = 1, list = { 1, 2, 3 }, [true] = "b", [1.5] = "f" }
    sh.t = t
    t.a, t.list[1] = 99, 99
    assert.equal(1, sh.t.a)
    assert.equal(1, sh.t.list[1])
    assert.equal("b", sh.t[true])
    assert.equal("f", sh.t[1.5])
    local shared_twice = { 1 }
    sh.dag = { x = shared_twice, y = shared_twice }
    assert.equal(1, sh.dag.x[1])
    assert.equal(1, sh.dag.y[1])
  end)

  it("refuse a table with a metatable: its copy would lose it", function()
    local sh = fresh()
    refused(sh, "threadlocal: cannot store a table with a metatable in field 't'", function()
      sh.t = setmetatable({ a = 1 }, { __index = function() return "meta" end })
    end)
  end)
end)

describe("a table proxy", function()
  it("reads, writes and nests, and writes persist", function()
    local sh = fresh()
    sh.req = { headers = { host = "a" } }
    local p = sh.req
    assert.equal("threadlocal.proxy", getmetatable(p))
    assert.truthy(tostring(p):match("^threadlocal%.proxy: 0?x?%x+$"))
    sh.req.headers.host = "x"
    assert.equal("x", sh.req.headers.host)
    p.headers.extra = { n = 1 }
    assert.equal(1, sh.req.headers.extra.n)
    assert.same({ req = { headers = { host = "x", extra = { n = 1 } } } }, threadlocal.fields(sh))
  end)

  it("has a length", function()
    local sh = fresh()
    sh.list = { "a", "b", "c" }
    assert.equal(3, #sh.list)
    sh.list[4] = "d"
    assert.equal(4, #sh.list)
    sh[1], sh[2] = true, true
    assert.equal(2, #sh)
  end)

  if support.has_pairs then
    it("iterates with pairs, nested tables as proxies", function()
      local sh = fresh()
      sh.a, sh.b = 1, { c = 2 }
      local seen = {}
      for k, v in pairs(sh) do seen[k] = v end
      assert.equal(1, seen.a)
      assert.equal(2, seen.b.c)
      local inner = {}
      for k, v in pairs(sh.b) do inner[k] = v end
      assert.same({ c = 2 }, inner)
      for k in pairs(sh) do sh[k] = nil end -- clearing while iterating is allowed
      assert.same({}, threadlocal.fields(sh))
    end)
  else
    it("cannot be iterated with pairs on Lua 5.1 and LuaJIT (no __pairs): use fields", function()
      local sh = fresh()
      sh.b = { c = 2 }
      assert.has_error(function() for _ in pairs(sh) do end end)
      assert.same({ c = 2 }, threadlocal.fields(sh.b))
    end)
  end

  it("reads the current table every time, in loops that replace or alternate fields", function()
    local sh = fresh()
    sh.t, sh.u = { k = 0 }, { k = "u" }
    for i = 1, 50 do
      assert.equal(i - 1, sh.t.k)
      assert.equal("u", sh.u.k) -- another table field in between
      if i % 3 == 0 then sh.t = { k = i } else sh.t.k = i end
      sh.n = i -- a scalar write to the same fields table
      assert.equal(i, sh.t.k)
    end
    sh.t = nil
    assert.is_nil(sh.t)
    sh.t = "now a string"
    assert.equal("now a string", sh.t)
    threadlocal.clear(sh)
    assert.is_nil(sh.t)
  end)

  it("copies the table when stored elsewhere", function()
    local sh = fresh()
    sh.a = { x = 1 }
    sh.b = sh.a
    sh.b.x = 2
    assert.equal(1, sh.a.x)
    sh.a.self = sh.a
    assert.same({ x = 1, self = { x = 1 } }, threadlocal.fields(sh.a))
  end)

  it("is stale, with a clear error, after its table was replaced, deleted or cleared", function()
    local sh = fresh()
    local cases = {
      function() sh.t = { y = 1 } end,
      function() sh.t = nil end,
      function() threadlocal.clear(sh) end,
      function() sh.outer = nil end,
    }
    for _, change in ipairs(cases) do
      sh.t = { x = 1 }
      sh.outer = { inner = { x = 1 } }
      local p = (change == cases[4]) and sh.outer.inner or sh.t
      change()
      local msg = "threadlocal: table proxy is stale: its table was replaced, deleted or cleared"
      assert.has_error(function() return p.x end, msg)
      assert.has_error(function() p.x = 2 end, msg)
      assert.has_error(function() return #p end, msg)
      assert.has_error(function() threadlocal.fields(p) end, msg)
    end
  end)
end)

describe("a field used again and again", function()
  -- A shared local and a proxy remember the field they used last (by the
  -- key string): these change the field by every other way in between.
  it("reads what another state on this thread wrote in between", function()
    local name = support.unique("again")
    local sh = threadlocal.shared(name)
    sh.k, sh.s, sh.t = 1, "one", { k = 1 }
    local p = sh.t
    for i = 2, 6 do
      assert.equal(i - 1, sh.k)
      assert.equal(i - 1, sh.k)
      assert.equal(i - 1, p.k)
      assert.equal(i - 1, sh.t.k)
      helper.exec([[
        local sh, i = require("threadlocal").shared((...)), select(2, ...)
        if i % 2 == 0 then -- every field moves: deleted, others added, added again
          sh.k, sh.s, sh.t.k = nil, nil, nil
          for j = 1, 40 do sh["f" .. j], sh.t["f" .. j] = j, j end
          for j = 1, 40 do sh["f" .. j], sh.t["f" .. j] = nil, nil end
        end
        sh.k, sh.s, sh.t.k = i, "s" .. i, i
      ]], name, i)
      assert.equal(i, sh.k)
      assert.equal("s" .. i, sh.s)
      assert.equal(i, p.k)
      assert.equal(i, sh.t.k)
    end
  end)

  it("reads what this state wrote through another way in between", function()
    local sh = fresh()
    sh.t = { k = 1 }
    local p, q = sh.t, sh.t
    for i = 1, 4 do
      p.k = i
      p.k = i -- the second write goes through what p remembers
      assert.equal(i, q.k)
      q.k = -i
      assert.equal(-i, p.k)
      assert.equal(-i, p.k)
      sh.t.k = "s" .. i
      assert.equal("s" .. i, p.k)
      threadlocal.scope(sh, { k = "scoped" }):close() -- puts the fields back
      assert.equal("s" .. i, p.k)
    end
  end)

  it("keeps every thread's own value", function()
    local sh = fresh()
    local w = helper.worker()
    sh.k, sh.t = "main", { k = "main" }
    for _ = 1, 3 do
      assert.equal("main", sh.k)
      assert.equal("main", sh.t.k)
      assert.is_nil(w:run(function() return sh.k end))
      w:run(function() sh.k, sh.t = "worker", { k = "worker" } end)
      assert.equal("worker", w:run(function() return sh.k end))
      assert.equal("worker", w:run(function() return sh.t.k end))
      assert.equal("main", sh.k)
      assert.equal("main", sh.t.k)
      w:run(function() threadlocal.clear(sh) end)
    end
    w:stop()
  end)

  it("keeps a string key apart from the number, boolean or light userdata at its place", function()
    local sh = fresh()
    sh["1"], sh["true"] = "string one", "string true"
    sh.t = { ["1"] = "string one" }
    local p = sh.t
    for _ = 1, 3 do
      assert.equal("string one", sh["1"])
      assert.equal("string one", p["1"])
      assert.equal("string true", sh["true"])
      assert.is_nil(sh[1])
      assert.is_nil(p[1])
      assert.is_nil(sh[true])
      assert.is_nil(sh[helper.lightuserdata(1)])
    end
    sh[1], p[1], sh[true] = "number one", "number one", "boolean"
    assert.equal("string one", sh["1"])
    assert.equal("string one", p["1"])
    assert.equal("number one", sh[1])
    assert.equal("number one", p[1])
    assert.equal("boolean", sh[true])
    assert.equal("string true", sh["true"])
  end)

  it("is never taken for a newer key string at the same address", function()
    local sh = fresh()
    sh.t = {}
    local p = sh.t
    for round = 1, 40 do
      support.off_stack(function() -- a new key string, unreachable after
        local k = ("k%05d"):format(round)
        sh[k], p[k] = round, -round
        for _ = 1, 2 do
          assert.equal(round, sh[k])
          assert.equal(-round, p[k])
        end
      end)
      collectgarbage()
      collectgarbage()
      local others = {} -- new strings of the same size: one may take k's place
      for j = 1, 200 do others[j] = ("k%05d"):format(10000 + round * 200 + j) end
      for _, other in ipairs(others) do -- with no write in between
        assert.is_nil(sh[other])
        assert.is_nil(p[other])
      end
    end
  end)

  it("stays right when a write fails, or turns a field into a table and back", function()
    local sh = fresh()
    sh.t, sh.x = { k = 1 }, 1
    for _ = 1, 2 do
      assert.equal(1, sh.t.k)
      sh.x = 2
    end
    refused(sh, "threadlocal: cannot store a function in field 't'", function() sh.t = print end)
    refused(sh, "threadlocal: cannot store a function in field 'x'", function() sh.x = print end)
    assert.equal(1, sh.t.k)
    assert.equal(2, sh.x)
    sh.x = { a = 1 }
    assert.equal(1, sh.x.a)
    assert.equal(1, sh.x.a)
    sh.x = 3
    assert.equal(3, sh.x)
    sh.t = "a string now"
    assert.equal("a string now", sh.t)
    sh.t = { k = "again" }
    assert.equal("again", sh.t.k)
  end)
end)

describe("refusals", function()
  it("refuse functions, full userdata and coroutines, naming field and type", function()
    local sh = fresh()
    sh.keep = { 1 }
    refused(sh, "threadlocal: cannot store a function in field 'f'", function() sh.f = print end)
    refused(sh, "threadlocal: cannot store a userdata in field 'u'", function() sh.u = io.stdout end)
    refused(sh, "threadlocal: cannot store a coroutine in field 'c'",
      function() sh.c = coroutine.create(function() end) end)
    refused(sh, "threadlocal: cannot store a function in field 'req.handlers[2]'",
      function() sh.req = { handlers = { "ok", print } } end)
    refused(sh, "threadlocal: cannot store a userdata in field '[2]'",
      function() sh.keep[2] = sh end)
    refused(sh, "threadlocal: cannot store a function in field 'keep'", function() sh.keep = print end)
  end)

  it("refuse cyclic tables", function()
    local sh = fresh()
    local a = { b = {} }
    a.b.a = a
    refused(sh, "threadlocal: cannot store a table that contains itself in field 'a.b.a'",
      function() sh.a = a end)
  end)

  it("refuse tables nested too deep", function()
    local sh = fresh()
    local deep = {}
    for _ = 1, 200 do deep = { deep } end
    local ok, err = pcall(function() sh.deep = deep end)
    assert.is_false(ok)
    assert.truthy(support.bare(err):match(
      "^threadlocal: cannot store tables nested this deep in field 'deep%[1%]"), err)
    assert.is_nil(sh.deep)
  end)

  it("refuse keys that cannot be stored, at any depth", function()
    local sh = fresh()
    sh.keep = 1
    refused(sh, "threadlocal: shared field names are strings, numbers or booleans, not table",
      function() sh[{}] = 1 end)
    refused(sh, "threadlocal: cannot use NaN as a field name", function() sh[0 / 0] = 1 end)
    refused(sh, "threadlocal: shared field names are strings, numbers or booleans, not nil",
      function() sh[nil] = 1 end)
    refused(sh, "threadlocal: cannot use a table as a key in field 't'",
      function() sh.t = { [{}] = 1 } end)
    refused(sh, "threadlocal: cannot use a function as a key in field 't.u'",
      function() sh.t = { u = { [print] = 1 } } end)
  end)
end)

describe("defaults", function()
  it("give every thread its own copy", function()
    local sh = fresh { db = "primary", opts = { retries = 3 } }
    assert.equal("primary", sh.db)
    sh.opts.retries = 5
    sh.db = "replica"
    local w = helper.worker()
    assert.same({ db = "primary", opts = { retries = 3 } }, w:run(function() return threadlocal.fields(sh) end))
    w:stop()
    assert.equal("replica", sh.db)
    assert.equal(5, sh.opts.retries)
  end)

  it("come back after clear", function()
    local sh = fresh { n = 1 }
    sh.n, sh.extra = 2, true
    threadlocal.clear(sh)
    assert.same({ n = 1 }, threadlocal.fields(sh))
  end)

  it("may be given again if equal, never changed", function()
    local name = support.unique("defaults")
    local sh = threadlocal.shared(name, { a = { 1, 2 }, b = "x" })
    assert.equal(sh, threadlocal.shared(name, { b = "x", a = { 1, 2 } }))
    assert.equal(sh, threadlocal.shared(name))
    local ok, err = pcall(threadlocal.shared, name, { a = { 1, 2 }, b = "y" })
    assert.is_false(ok)
    assert.equal("threadlocal: shared local '" .. name .. "' already has other defaults", support.bare(err))
    assert.equal("x", sh.b)
  end)

  it("may be set by a later call when the first gave none", function()
    local name = support.unique("late")
    local sh = threadlocal.shared(name)
    local got = helper.on_thread(function()
      threadlocal.shared(name, { v = 1 })
      return sh.v
    end)
    assert.equal(1, got)
  end)

  it("refuse what a shared local cannot store", function()
    local ok, err = pcall(threadlocal.shared, support.unique("bad"), { f = print })
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a function in field 'f'", support.bare(err))
  end)
end)

describe("fields and clear on a shared local", function()
  it("copy nested tables as plain tables", function()
    local sh = fresh()
    sh.a, sh.t = 1, { u = { 2 } }
    local f = threadlocal.fields(sh)
    assert.same({ a = 1, t = { u = { 2 } } }, f)
    assert.equal("table", type(f.t))
    assert.is_nil(getmetatable(f.t))
    f.t.u[1] = 3
    assert.equal(2, sh.t.u[1])
  end)

  it("clear deletes the calling thread's fields", function()
    local sh = fresh()
    sh.a = 1
    threadlocal.clear(sh)
    assert.is_nil(sh.a)
    assert.same({}, threadlocal.fields(sh))
  end)
end)

describe("a shared string field overwritten", function()
  it("reads back every value, shorter, the same size or longer, binary included", function()
    local sh = threadlocal.shared(support.unique("overwrite"))
    local values = { "short", "s", "", "exactly 15 byte", "exactly 16 bytes",
                     ("x"):rep(100), "tiny", "a\0b\0c", ("y"):rep(31), "z" }
    for _, v in ipairs(values) do
      sh.s = v
      assert.equal(v, sh.s)
      assert.equal(#v, #sh.s)
    end
    sh.s = 42 -- a string field can still become a number, and back
    assert.equal(42, sh.s)
    sh.s = "again"
    assert.equal("again", sh.s)
    assert.same({ s = "again" }, threadlocal.fields(sh))
  end)
end)

describe("reads while finalizers clear or refill the fields #gcstorm", function()
  -- A finalizer runs in (almost) every allocation: every other one clears
  -- the shared local, the others fill it again.
  local function meddling(sh)
    local function fill()
      for i = 1, 10 do
        sh[i] = { i, { x = i } }
        local k = "s" .. i -- a key that pairs pushes with an allocation
        sh[k] = { k, { x = k } }
      end
    end
    local calls = 0
    return fill, function()
      calls = calls + 1
      if calls % 2 == 1 then threadlocal.clear(sh) else fill() end
    end
  end

  it("fields copies whole tables, never freed ones", function()
    local sh = fresh()
    local fill, meddle = meddling(sh)
    support.under_finalizers(meddle, function()
      fill()
      for k, v in pairs(threadlocal.fields(sh)) do
        assert.equal(k, v[1])
        assert.equal(k, v[2].x)
      end
      fill()
      local ok, f = pcall(threadlocal.fields, sh[1] or fresh())
      if ok and f[1] then assert.equal(f[1], f[2].x) end -- sh[1]'s copy
    end, 20)
  end)

  it("reading a table field gives its proxy, or a stale one", function()
    local sh = fresh()
    local fill, meddle = meddling(sh)
    support.under_finalizers(meddle, function()
      fill()
      for i = 1, 10 do
        local ok, v = pcall(function()
          local t = sh[i]
          return t and t[2].x
        end)
        assert(not ok and v:find("stale", 1, true) or v == nil or v == i, v)
      end
    end, 20)
  end)

  local pairs_it = support.has_pairs and it or pending
  pairs_it("pairs gives each key with its own value", function()
    local sh = fresh()
    local fill, meddle = meddling(sh)
    support.under_finalizers(meddle, function()
      fill()
      local ok, err = pcall(function()
        for k, v in pairs(sh) do
          assert(v == nil or v[1] == k, "wrong value")
        end
      end)
      assert(ok or err:find("stale", 1, true), err)
    end, 20)
  end)
end)

describe("a string read while finalizers replace it #gcstorm", function()
  -- Before Lua 5.3 (and in LuaJIT), pushing a string may collect before it
  -- copies the bytes; a finalizer that replaces the field frees them.  Run
  -- under valgrind on lua5.1 by make test.
  for _, len in ipairs { 100, 300 } do
    it("reads whole strings, " .. len .. " bytes and changing size", function()
      local sh = threadlocal.shared(support.unique("strgc"))
      sh.s = ("x"):rep(len)
      local n = 0
      support.under_finalizers(function()
        n = n + 1
        sh.s = ("y"):rep(len + (n % 7) * 40)
      end, function()
        local v = sh.s
        assert(v == ("x"):rep(len) or v == ("y"):rep(#v), "a torn string")
      end, 600)
      assert.is_true(n > 0)
    end)
  end
end)
