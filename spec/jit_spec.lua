-- LuaJIT with the JIT on: a Local's __index and __newindex are Lua closures
-- (lua/threadlocal/jit.lua) that compile into traces.  Elsewhere they are the C
-- closures, as before.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

local jit_on = type(jit) == "table" and jit.status() == true

-- The kind of function ("C" or "Lua") of a Local's two own metamethods.
local function kinds(tl)
  local mt = debug.getmetatable(tl)
  return debug.getinfo(mt.__index, "S").what, debug.getinfo(mt.__newindex, "S").what
end

-- What the closure of a JIT Local caches: its fields table and thread id.
local function cached(tl, mm)
  local f = debug.getmetatable(tl)[mm]
  local n1, fields = debug.getupvalue(f, 1)
  local n2, id = debug.getupvalue(f, 2)
  assert(n1 == "fields" and n2 == "id", "upvalue 1 is fields, upvalue 2 is id")
  return fields, id
end

describe("a Local's own metamethods", function()
  it("are C closures off the JIT", function()
    if jit then jit.off() end
    local tl = threadlocal.new()
    if jit and jit_on then jit.on() end
    local get, set = kinds(tl)
    assert.equal("C", get)
    assert.equal("C", set)
    tl.k = 1
    assert.equal(1, tl.k)
  end)

  if not jit_on then return end

  it("are Lua closures with the JIT on, fields as upvalue 1 and id as upvalue 2", function()
    local tl = threadlocal.new()
    local get, set = kinds(tl)
    assert.equal("Lua", get)
    assert.equal("Lua", set)
    for _, mm in ipairs { "__index", "__newindex" } do
      local fields, id = cached(tl, mm)
      assert.is_nil(fields)
      assert.equal(-1, id)
    end
    tl.k = 1
    local v = tl.k
    assert.equal(1, v)
    local fields, id = cached(tl, "__index")
    assert.equal(threadlocal.table(tl), fields)
    assert.equal(threadlocal.id(), id)
    assert.equal(fields, (cached(tl, "__newindex")))
  end)
end)

if not jit_on then return end

-- Counts the trace aborts while f(...) runs (jit.attach "trace" events).
local function aborts_during(f, ...)
  local n = 0
  local function on_trace(what) if what == "abort" then n = n + 1 end end
  jit.attach(on_trace, "trace")
  local ok, err = pcall(f, ...)
  jit.attach(on_trace)
  assert(ok, err)
  return n
end

-- Compiled loops over a Local.
local function get_loop(tl, n)
  local s = 0
  for _ = 1, n do s = s + tl.x end
  return s
end

local function set_loop(tl, n, base)
  for i = 1, n do tl.x = base + i end
end

local N = 2000 -- well past the hot loop threshold (56 iterations)

describe("compiled loops over a Local (JIT on)", function()
  local w1, w2
  before_each(function()
    jit.flush()
    w1, w2 = helper.worker(), helper.worker()
  end)
  after_each(function()
    w1:stop()
    w2:stop()
  end)

  it("compile without a trace abort", function()
    local tl = threadlocal.new()
    tl.x = 1
    assert.equal(0, aborts_during(get_loop, tl, N))
    assert.equal(0, aborts_during(set_loop, tl, N, 0))
    assert.equal(N, tl.x)
    local traces = 0
    local function on_trace(what) if what == "stop" then traces = traces + 1 end end
    jit.flush()
    jit.attach(on_trace, "trace")
    get_loop(tl, N)
    jit.attach(on_trace)
    assert.is_true(traces > 0)
  end)

  it("see each thread's own value as the state moves between threads", function()
    local tl = threadlocal.new()
    tl.x = 1
    w1:run(function() tl.x = 2 end)
    w2:run(function() tl.x = 3 end)
    for _ = 1, 5 do
      assert.equal(N, get_loop(tl, N))
      assert.equal(2 * N, w1:run(get_loop, tl, N))
      assert.equal(3 * N, w2:run(get_loop, tl, N))
    end
    -- Compiled set loops, each thread its own values.
    for _ = 1, 3 do
      set_loop(tl, N, 0)
      w1:run(set_loop, tl, N, 10 * N)
      w2:run(set_loop, tl, N, 20 * N)
      assert.equal(N, tl.x)
      assert.equal(11 * N, w1:run(function() return tl.x end))
      assert.equal(21 * N, w2:run(function() return tl.x end))
      assert.equal(N * N, get_loop(tl, N))
    end
  end)

  it("see init run on each thread's first access from a compiled loop", function()
    local tl = threadlocal.new(function(self, v) self.x = v end, 7)
    assert.equal(7 * N, get_loop(tl, N))
    assert.equal(7 * N, w1:run(get_loop, tl, N))
    w1:run(set_loop, tl, N, 0)
    assert.equal(7 * N, get_loop(tl, N))
    assert.equal(N * N, w1:run(get_loop, tl, N))
  end)

  it("drop their cache when clear() drops the thread's fields", function()
    local tl = threadlocal.new()
    set_loop(tl, N, 0)
    assert.equal(N * N, get_loop(tl, N))
    assert.is_not_nil((cached(tl, "__index")))
    threadlocal.clear(tl)
    for _, mm in ipairs { "__index", "__newindex" } do
      local fields, id = cached(tl, mm)
      assert.is_nil(fields)
      assert.equal(-1, id)
    end
    assert.is_nil(tl.x)
    set_loop(tl, N, 1)
    assert.equal(N * (N + 1), get_loop(tl, N))
  end)

  it("drop their cache when the thread whose fields they hold exits", function()
    local tl = threadlocal.new()
    local collected = 0
    local w = helper.worker()
    w:run(function()
      set_loop(tl, N, 0)
      support.store_gc(tl, "v", function() collected = collected + 1 end)
      assert.equal(N * N, get_loop(tl, N))
    end)
    local wid = w:run(threadlocal.id)
    for _, mm in ipairs { "__index", "__newindex" } do
      local fields, id = cached(tl, mm)
      assert.equal(wid, id)
      assert.is_not_nil(fields)
    end
    w:stop()
    support.full_gc(2)
    for _, mm in ipairs { "__index", "__newindex" } do
      local fields, id = cached(tl, mm)
      assert.is_nil(fields)
      assert.equal(-1, id)
    end
    assert.equal(1, collected)
    assert.is_nil(tl.x)
  end)

  it("miss after release() gives the thread a new id", function()
    local tl = threadlocal.new()
    local collected = 0
    local before, after, x = w1:run(function()
      set_loop(tl, N, 0)
      support.store_gc(tl, "v", function() collected = collected + 1 end)
      local id = threadlocal.id()
      threadlocal.release()
      return id, threadlocal.id(), tl.x
    end)
    assert.is_true(after > before)
    assert.is_nil(x)
    assert.equal(after, select(2, cached(tl, "__index")))
    support.full_gc(2)
    assert.equal(1, collected)
  end)

  it("raise for a nil or NaN field name, from a compiled loop too", function()
    local tl = threadlocal.new()
    local keys = {}
    for i = 1, N do keys[i] = "k" .. i % 7 end
    keys[N + 1] = false
    local function store(bad)
      for i = 1, N + 1 do
        local k = keys[i]
        if k == false then k = bad end
        tl[k] = i
      end
    end
    local ok, err = pcall(store, nil)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot use nil as a field name", err)
    ok, err = pcall(store, 0 / 0)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot use NaN as a field name", err)
    assert.equal(N, tl["k" .. N % 7])
  end)

  it("keep their cache when called with another Local", function()
    local a, b = threadlocal.new(), threadlocal.new()
    a.x, b.x = 1, 2
    local mt = debug.getmetatable(a)
    assert.equal(N, get_loop(a, N))
    -- While a's closure holds this thread's fields, b is answered from them.
    assert.equal(1, mt.__index(b, "x"))
    w1:run(function() a.x = 3; return a.x end) -- now it holds w1's
    local ok, err = pcall(mt.__index, b, "x")
    assert.is_false(ok)
    assert.matches("bad argument #1 to '__index' %(not the Local whose metamethod this is%)", err)
    ok, err = pcall(mt.__newindex, 5, "x", 1)
    assert.is_false(ok)
    assert.matches("bad argument #1 to '__newindex' %(threadlocal.local expected, got number%)", err)
    assert.equal(N, get_loop(a, N))
    assert.equal(3 * N, w1:run(get_loop, a, N))
    assert.equal(2 * N, get_loop(b, N))
  end)
end)
