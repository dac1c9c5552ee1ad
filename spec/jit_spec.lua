-- LuaJIT with the JIT on: a Local's __index and __newindex are Lua closures
-- (src/tl_jit.lua) that compile into traces.  Elsewhere they are the C
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

-- Counts the trace aborts while f(...) runs (jit.attach "trace" events) in
-- the loops of this file or in src/tl_jit.lua (whose chunk name is still
-- "@lua/threadlocal/jit.lua").  A trace that busted's own code started
-- before may abort there meanwhile: it is not counted.
local funcinfo = require("jit.util").funcinfo
local function ours(fn)
  local source = funcinfo(fn).source or ""
  return source:match("jit_spec%.lua$") ~= nil or source == "@lua/threadlocal/jit.lua"
end

-- "NYI: return to lower frame" is not counted: LuaJIT may record past the end
-- of a loop into the caller's frame, which it cannot do; the loop's own trace
-- is compiled, and plain-table loops do the same.
local traceerr = require("jit.vmdef").traceerr
local function loop_exit(otr) return traceerr[otr] == "NYI: return to lower frame" end

local function aborts_during(f, ...)
  local n = 0
  local function on_trace(what, _, fn, _, otr)
    if what == "abort" and ours(fn) and not loop_exit(otr) then n = n + 1 end
  end
  jit.attach(on_trace, "trace")
  local ok, err = pcall(f, ...)
  jit.attach(on_trace)
  assert(ok, err)
  return n
end

-- The looping traces recorded while f(...) runs, after a flush: a loop
-- whose metamethod LuaJIT cannot compile is stitched around the call into
-- traces that end, not loop, without any abort.
local traceinfo = require("jit.util").traceinfo
local function loops_after(prepare, f, ...)
  local loops = 0
  local function on_trace(what, tr)
    if what == "stop" and traceinfo(tr).linktype == "loop" then loops = loops + 1 end
  end
  jit.flush()
  prepare()
  jit.attach(on_trace, "trace")
  local ok, err = pcall(f, ...)
  jit.attach(on_trace)
  assert(ok, err)
  return loops
end

local function loops_during(f, ...)
  return loops_after(function() end, f, ...)
end

-- Calls from code that LuaJIT does not compile: a metamethod called this
-- way often enough would become hot as a function and get a trace of its
-- own, recorded on whatever path the call took (jit.off below).
local function interpreted(n, f)
  for _ = 1, n do f() end
end
jit.off(interpreted)

-- Compiled loops over a Local (get_loop serves shared locals too: each
-- test starts from jit.flush(), so the two kinds never share a trace).
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

  it("compile into looping traces without a trace abort", function()
    local tl = threadlocal.new()
    tl.x = 1
    assert.equal(0, aborts_during(get_loop, tl, N))
    assert.equal(0, aborts_during(set_loop, tl, N, 0))
    assert.equal(N, tl.x)
    assert.is_true(loops_during(get_loop, tl, N) > 0)
    assert.is_true(loops_during(set_loop, tl, N, 0) > 0)
  end)

  it("compile into looping traces after many misses from code LuaJIT runs interpreted", function()
    -- As a Local read or written once per request on rotating threads: every
    -- such access misses and calls the slow path in C.  A trace of the closure
    -- as a function, recorded on that path, would not loop, and the loops of
    -- every Local would link to it instead of looping themselves.
    local tl = threadlocal.new()
    tl.x = 1
    local function misses()
      interpreted(N, function() local _ = threadlocal.new().x end)
      interpreted(N, function() threadlocal.new().x = 1 end)
    end
    jit.off(misses, true) -- and the functions made inside
    assert.is_true(loops_after(misses, get_loop, tl, N) > 0)
    assert.is_true(loops_after(misses, set_loop, tl, N, 0) > 0)
    assert.equal(N, tl.x)
  end)

  it("compile into looping traces after a Local is used once per request on rotating threads", function()
    -- The case the closures take `...` for: each request runs on the other
    -- thread, so every access misses and calls the slow path in C, from code
    -- LuaJIT runs interpreted.
    local tl = threadlocal.new()
    local function request() tl.x = (tl.x or 0) + 1 end
    local function requests()
      for i = 1, N do (i % 2 == 0 and w1 or w2):run(request) end
    end
    jit.off(requests, true) -- and request
    tl.x = 1
    assert.is_true(loops_after(requests, get_loop, tl, N) > 0)
    assert.is_true(loops_after(requests, set_loop, tl, N, 0) > 0)
    assert.equal(N, tl.x)
    assert.equal(N, w1:run(function() return tl.x end))
    assert.equal(N, w2:run(function() return tl.x end))
  end)

  it("compile into looping traces after many uses of number keys no array holds, from interpreted code", function()
    -- A Local used as an array, also read and written with a fraction, a
    -- key past the array's range or NaN: LuaJIT cannot record such a lookup
    -- in a table with an array part.  A function with fixed parameters
    -- called often this way from interpreted code sees each attempt at its
    -- own trace abort, until LuaJIT blacklists it; then every trace that
    -- would call it aborts too, whichever Local it serves.
    local arr = threadlocal.new()
    for i = 1, 4 do arr[i] = i end
    local keys = { 2.5, 2 ^ 40, 0 / 0 }
    local function uses()
      interpreted(150000, function()
        for j = 1, 3 do
          local k = keys[j]
          local _ = arr[k]
          if k == k then arr[k] = j end
        end
      end)
    end
    jit.off(uses, true) -- and the function made inside
    local tl = threadlocal.new()
    tl.x = 1
    assert.is_true(loops_after(uses, get_loop, tl, N) > 0)
    assert.is_true(loops_after(function() end, set_loop, tl, N, 0) > 0)
    assert.equal(0, aborts_during(get_loop, tl, N))
    assert.equal(N, tl.x)
    assert.equal(1, arr[1])
    assert.equal(1, arr[2.5])
    assert.equal(2, arr[2 ^ 40])
  end)

  it("are made without a trace abort, however many Locals are made", function()
    -- Well past the point where making closures gets hot enough to trace.
    local function make(n)
      local last
      for _ = 1, n do last = threadlocal.new() end
      last.x = 1
      return last.x
    end
    assert.equal(0, aborts_during(make, N))
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
    assert.equal("threadlocal: cannot use nil as a field name", support.bare(err))
    assert.equal(debug.getinfo(1, "S").short_src, err:match("^([^:]*):%d+: "))
    ok, err = pcall(store, 0 / 0)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot use NaN as a field name", support.bare(err))
    assert.equal(N, tl["k" .. N % 7])
  end)

  it("answer rightly after the debug library called their slow path directly", function()
    local function upvalue(f, name)
      for i = 1, 20 do
        local n, v = debug.getupvalue(f, i)
        if n == name then return v end
      end
    end
    local tl = threadlocal.new()
    tl.k = 1
    local mt = debug.getmetatable(tl)
    local slow_get, slow_set = upvalue(mt.__index, "__index"), upvalue(mt.__newindex, "__newindex")
    w1:run(function() tl.secret = "w1's"; local _ = tl.secret end) -- the closures hold w1's
    slow_get(tl, tl) -- says this thread, and the closures hold nothing of it
    slow_set(tl, tl, "x")
    assert.is_nil(tl.secret)
    tl.mine = "main's"
    assert.is_nil(w1:run(function() return tl.mine end))
    assert.equal("w1's", w1:run(function() return tl.secret end))
    threadlocal.clear(tl)
    slow_get(tl, tl)
    assert.is_nil(tl.k)
    tl.k = 2
    assert.equal(2, tl.k)
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

-- The C API of the loaded module, through the FFI: values set from C.
local ffi = require "ffi"
ffi.cdef [[
typedef struct threadlocal_shared threadlocal_shared;
int threadlocal_shared_open(const char *name, size_t len, threadlocal_shared **out);
int threadlocal_set_integer(threadlocal_shared *sl, const char *key, int64_t value);
int threadlocal_set_float(threadlocal_shared *sl, const char *key, double value);
int threadlocal_set_boolean(threadlocal_shared *sl, const char *key, int value);
int threadlocal_set_string(threadlocal_shared *sl, const char *key, const char *s, size_t len);
int threadlocal_set_pointer(threadlocal_shared *sl, const char *key, void *p, void (*d)(void *));
int threadlocal_delete(threadlocal_shared *sl, const char *key);
]]
local capi = ffi.load(assert(package.searchpath("threadlocal", package.cpath)))
local function c_open(name)
  local out = ffi.new("threadlocal_shared *[1]")
  assert(capi.threadlocal_shared_open(name, #name, out) == 0)
  return out[0]
end

-- Compiled loops reading a shared local: get_loop (above) sums field x;
-- last_loop gives the value of field k read last (any type).
local function last_loop(sh, k, n)
  local v
  for _ = 1, n do v = sh[k] end
  return v
end

describe("compiled loops over a shared local (JIT on)", function()
  local w1, w2
  before_each(function()
    jit.flush()
    w1, w2 = helper.worker(), helper.worker()
  end)
  after_each(function()
    w1:stop()
    w2:stop()
  end)

  it("have a Lua __index once read 16 times with the JIT on, the C one before and off; the rest is the same", function()
    local c, j = threadlocal.shared(support.unique("jit.c")), threadlocal.shared(support.unique("jit.j"))
    jit.off()
    for _ = 1, 16 do local _ = c.x end
    jit.on()
    for _ = 1, 15 do local _ = j.x end
    assert.equal(debug.getmetatable(c), debug.getmetatable(j))
    local _ = j.x
    local cmt, jmt = debug.getmetatable(c), debug.getmetatable(j)
    assert.equal("C", debug.getinfo(cmt.__index, "S").what)
    assert.equal("Lua", debug.getinfo(jmt.__index, "S").what)
    for _, mm in ipairs { "__newindex", "__pairs", "__len", "__tostring" } do
      assert.equal(cmt[mm], jmt[mm])
    end
    assert.equal("threadlocal.shared", getmetatable(j))
    assert.equal(j, threadlocal.shared(tostring(j):match("'(.-)'")))
    j.x = 1
    assert.equal(1, j.x)
    threadlocal.clear(j)
    assert.is_nil(j.x)
  end)

  it("are switched by the read that makes them hot: a state that reads less never loads the FFI", function()
    local on, before, after, ffi_before, ffi_after, x = helper.exec([[
      local threadlocal = require "threadlocal"
      local sh = threadlocal.shared(...)
      local function what() return debug.getinfo(debug.getmetatable(sh).__index, "S").what end
      sh.x = 5
      for _ = 1, 15 do local _ = sh.x end
      local before, ffi_before = what(), package.loaded.ffi ~= nil
      local x = sh.x
      return jit.status(), before, what(), ffi_before, package.loaded.ffi ~= nil, x
    ]], support.unique("jit.hot"))
    assert.is_true(on)
    assert.same({ "C", "Lua", false, true, 5 }, { before, after, ffi_before, ffi_after, x })
  end)

  it("keep the C __index when the switch fails, and the 16th read goes on", function()
    local got = { helper.exec([[
      local threadlocal = require "threadlocal"
      local a, b = threadlocal.shared((...) .. ".a"), threadlocal.shared((...) .. ".b")
      local function what(sh) return debug.getinfo(debug.getmetatable(sh).__index, "S").what end
      a.x, b.x = 7, 8
      for _ = 1, 15 do local _ = a.x + b.x end
      local status = jit.status
      jit.status = function() error("not now") end
      local ok, x = pcall(function() return a.x end)
      jit.status = function() coroutine.yield() end
      local resumed, y = coroutine.resume(coroutine.create(function() return b.x end))
      jit.status = status
      return ok, x, what(a), resumed, y, what(b), a.x + b.x
    ]], support.unique("jit.fail")) }
    assert.same({ true, 7, "C", true, 8, "C", 15 }, got)
  end)

  it("compile into looping traces without a trace abort", function()
    local sh = threadlocal.shared(support.unique("jit.loop"))
    sh.x, sh.b = 1, true
    assert.equal(0, aborts_during(get_loop, sh, N))
    for _, k in ipairs { "b", "absent" } do -- strings and tables: the C __index
      assert.equal(0, aborts_during(last_loop, sh, k, N))
    end
    assert.is_true(loops_during(get_loop, sh, N) > 0)
  end)

  it("compile into looping traces after many reads of other fields from code LuaJIT runs interpreted", function()
    -- A string field is read through the C __index: a trace of the Lua
    -- __index as a function, recorded on that path, would not loop, and the
    -- loops over every shared local would link to it.
    local names = threadlocal.shared(support.unique("jit.names"))
    names.user = "alice"
    local sh = threadlocal.shared(support.unique("jit.after"))
    sh.x = 1
    local function reads()
      interpreted(N, function() assert(names.user == "alice") end)
    end
    jit.off(reads, true) -- and the function made inside
    assert.is_true(loops_after(reads, get_loop, sh, N) > 0)
  end)

  it("compile into looping traces after reads of table fields on rotating threads", function()
    -- A table field is read through the C __index, here from code LuaJIT
    -- runs interpreted, on whichever thread the request runs.
    local conf = threadlocal.shared(support.unique("jit.conf"))
    local function request()
      if conf.limits == nil then conf.limits = { 10 } end
      assert(conf.limits[1] == 10)
    end
    local function requests()
      for i = 1, N do (i % 2 == 0 and w1 or w2):run(request) end
    end
    jit.off(requests, true) -- and request
    local sh = threadlocal.shared(support.unique("jit.rotating"))
    sh.x = 1
    assert.is_true(loops_after(requests, get_loop, sh, N) > 0)
  end)

  it("see each thread's own value as the state moves between threads", function()
    local sh = threadlocal.shared(support.unique("jit.threads"))
    sh.x = 1
    w1:run(function() sh.x = 2 end)
    assert.is_nil(w2:run(last_loop, sh, "x", N)) -- w2 has no fields yet
    w2:run(function() sh.x = 3.5 end)
    for _ = 1, 5 do
      assert.equal(N, get_loop(sh, N))
      assert.equal(2 * N, w1:run(get_loop, sh, N))
      assert.equal(3.5 * N, w2:run(get_loop, sh, N))
    end
    -- Writes between and inside compiled reads.
    for i = 1, 3 do
      w1:run(function() sh.x = 10 * i end)
      assert.equal(10 * i * N, w1:run(get_loop, sh, N))
      assert.equal(N, get_loop(sh, N))
    end
    local s = 0
    for i = 1, N do
      sh.x = i
      s = s + sh.x
    end
    assert.equal(N * (N + 1) / 2, s)
    assert.equal(30 * N, w1:run(get_loop, sh, N))
    w1:run(threadlocal.release)
    assert.is_nil(w1:run(last_loop, sh, "x", N))
  end)

  it("see the fields a threadlocal.run swaps in, and their own again after it", function()
    local name = support.unique("jit.run")
    local sh = threadlocal.shared(name)
    sh.x = 1
    assert.equal(N, get_loop(sh, N))
    assert.equal(2 * N, threadlocal.run({ [name] = { x = 2 } }, get_loop, sh, N))
    assert.equal(N, get_loop(sh, N))
    sh.x = 3
    assert.equal(3 * N, get_loop(sh, N))
    assert.equal(4 * N, threadlocal.run({ [name] = { x = 4 } }, get_loop, sh, N))
    assert.equal(3 * N, get_loop(sh, N))
  end)

  it("see values set from C and from another state on the same thread", function()
    local name = support.unique("jit.capi")
    local sh, sl = threadlocal.shared(name), c_open(name)
    assert.equal(0, capi.threadlocal_set_integer(sl, "x", 5))
    assert.equal(5 * N, get_loop(sh, N))
    assert.equal(0, capi.threadlocal_set_float(sl, "x", 0.25))
    assert.equal(0.25 * N, get_loop(sh, N))
    local s = 0
    for i = 1, N do
      capi.threadlocal_set_integer(sl, "x", i)
      s = s + sh.x
    end
    assert.equal(N * (N + 1) / 2, s)
    assert.equal(0, capi.threadlocal_set_boolean(sl, "x", 0))
    assert.is_false(last_loop(sh, "x", N))
    assert.equal(0, capi.threadlocal_delete(sl, "x"))
    assert.is_nil(last_loop(sh, "x", N))
    -- Another state on this thread, and one on a worker.
    helper.exec("require('threadlocal').shared(...).x = 7", name)
    assert.equal(7 * N, get_loop(sh, N))
    w1:exec("require('threadlocal').shared(...).x = 8", name)
    assert.equal(7 * N, get_loop(sh, N))
    assert.equal(8 * N, w1:run(get_loop, sh, N))
  end)

  it("read each field's own value, whatever a hook reads between the steps of a read", function()
    -- Interpreted, with a hook on every instruction that reads another
    -- field: a read whose steps shared one out-parameter would answer
    -- the hook's field instead of its own.
    local sh = threadlocal.shared(support.unique("jit.hook"))
    sh.t, sh.f, sh.n = true, false, 5
    for _ = 1, 16 do local _ = sh.t end
    assert.equal("Lua", debug.getinfo(debug.getmetatable(sh).__index, "S").what)
    local want = { t = true, f = false, n = 5, absent = nil }
    local names = { "t", "f", "n", "absent" }
    local wrong = {}
    local function reads(k)
      for _ = 1, 200 do
        if sh[k] ~= want[k] then wrong[k] = (wrong[k] or 0) + 1 end
      end
    end
    jit.off()
    local ok, err = pcall(function()
      for _, k in ipairs(names) do
        for _, other in ipairs(names) do
          if other ~= k then
            debug.sethook(function() local _ = sh[other] end, "", 1)
            reads(k)
            debug.sethook()
          end
        end
      end
    end)
    debug.sethook()
    jit.on()
    assert(ok, err)
    assert.same({}, wrong)
  end)

  it("give what the C __index gives, for every kind of field and key", function()
    jit.off()
    local cindex = debug.getmetatable(threadlocal.shared(support.unique("jit.cpath"))).__index
    jit.on()
    local name = support.unique("jit.same")
    local sh = threadlocal.shared(name, { d = 4, dt = { k = "v" } })
    local sl = c_open(name)
    local lud = helper.lightuserdata(4096)
    local function compare(k)
      local ok1, v1 = pcall(last_loop, sh, k, N)
      local ok2, v2 = pcall(cindex, sh, k)
      assert.equal(ok2, ok1)
      if type(v2) == "userdata" and debug.getmetatable(v2) == debug.getmetatable(sh.dt) then
        assert.equal(v2.k, v1.k)
      else
        assert.equal(v2, v1)
      end
      return v1
    end
    -- Defaults, read first from a compiled loop on a thread without fields.
    assert.equal(4, w1:run(last_loop, sh, "d", N))
    assert.equal("v", w1:run(function() return last_loop(sh, "dt", N).k end))
    assert.is_nil(w1:run(last_loop, sh, "absent", N))
    assert.equal(4, compare("d"))
    sh.i, sh.f, sh.nan, sh.t, sh.fa = 3, 2.5, 0 / 0, true, false
    sh.s, sh.e, sh.long = "text", "", ("long key value"):rep(3)
    sh[("k"):rep(40)] = 9
    sh[("k"):rep(100)] = 10 -- too long for an id: read through the C __index
    sh.p, sh.tab = lud, { k = 1 }
    assert.equal(0, capi.threadlocal_set_integer(sl, "big", 2 ^ 53 + 1))
    assert.equal(0, capi.threadlocal_set_integer(sl, "min", -2 ^ 63))
    assert.equal(0, capi.threadlocal_set_string(sl, "cs", "a\0b", 3))
    assert.equal(0, capi.threadlocal_set_pointer(sl, "cp", ffi.cast("void *", 8192), nil))
    for _, k in ipairs { "i", "f", "t", "fa", "s", "e", "long", ("k"):rep(40), ("k"):rep(100), "p", "tab",
                         "big", "min", "cs", "cp", "absent", "dt", 1, 2.5, true, lud } do
      compare(k)
    end
    local v = last_loop(sh, "nan", N)
    assert.is_true(v ~= v)
    assert.equal(lud, compare("p"))
    assert.equal("a\0b", compare("cs"))
    assert.equal(2 ^ 53, compare("big"))
    assert.equal("number", type(compare("i")))
    -- Odd keys and arguments raise as the C __index does, or give nil.
    assert.is_nil((compare(nil)))
    assert.is_nil((compare(0 / 0)))
    local jindex = debug.getmetatable(sh).__index
    for _, o in ipairs { 5, "s", io.stdout, threadlocal.new(), helper.lightuserdata(0) } do
      local ok, err = pcall(jindex, o, "x")
      assert.is_false(ok)
      assert.equal(("bad argument #1 to '__index' (threadlocal.shared expected, got %s)")
        :format(type(o)), err)
    end
  end)
end)
