-- The Local API on one thread: README, Lua API.
local threadlocal = require "threadlocal"
local support = require "support"

describe("threadlocal module", function()
  it("has a MAJOR.MINOR.PATCH version", function()
    assert.is_string(threadlocal.version)
    assert.truthy(threadlocal.version:match("^%d+%.%d+%.%d+$"))
  end)

  it("gives the calling thread an integer id >= 1, stable on that thread", function()
    local id = threadlocal.id()
    assert.equal("number", type(id))
    assert.equal(id, math.floor(id))
    assert.truthy(id >= 1)
    assert.equal(id, threadlocal.id())
  end)

  it("makes Locals with new, with a call, and with local", function()
    for _, make in ipairs {
      threadlocal.new,
      function(...) return threadlocal(...) end,
      threadlocal["local"],
    } do
      local tl = make()
      assert.equal("userdata", type(tl))
      tl.x = 1
      assert.equal(1, tl.x)
      assert.equal("threadlocal.local", getmetatable(tl))
    end
  end)

  it("is the same module when required again", function()
    assert.equal(threadlocal, require "threadlocal")
  end)
end)

describe("a Local", function()
  it("reads nil for a field never set", function()
    local tl = threadlocal.new()
    assert.is_nil(tl.anything)
    assert.is_nil(tl[1])
  end)

  it("stores any Lua value by reference", function()
    local tl = threadlocal.new()
    local t, f, co = {}, function() end, coroutine.create(function() end)
    tl.t, tl.f, tl.co, tl.b, tl.n, tl.s = t, f, co, false, 1.5, "str\0bin"
    tl.ud = io.stdout
    assert.equal(t, tl.t)
    assert.equal(f, tl.f)
    assert.equal(co, tl.co)
    assert.equal(false, tl.b)
    assert.equal(1.5, tl.n)
    assert.equal("str\0bin", tl.s)
    assert.equal(io.stdout, tl.ud)
    tl.t.inner = 1
    assert.equal(1, t.inner)
    tl.self = tl
    assert.equal(tl, tl.self)
  end)

  it("takes any key a table takes", function()
    local tl = threadlocal.new()
    local k = {}
    tl[k], tl[true], tl[2.5], tl[1] = "table", "bool", "float", "int"
    assert.equal("table", tl[k])
    assert.equal("bool", tl[true])
    assert.equal("float", tl[2.5])
    assert.equal("int", tl[1])
  end)

  it("deletes a field when nil is assigned", function()
    local tl = threadlocal.new()
    tl.x = 1
    tl.x = nil
    assert.is_nil(tl.x)
    assert.same({}, threadlocal.fields(tl))
  end)

  it("keeps Locals apart", function()
    local a, b = threadlocal.new(), threadlocal.new()
    a.x = 1
    b.x = 2
    assert.equal(1, a.x)
    assert.equal(2, b.x)
  end)

  it("has a length", function()
    local tl = threadlocal.new()
    tl[1], tl[2], tl[3] = "a", "b", "c"
    assert.equal(3, #tl)
  end)

  it("prints as threadlocal.local with its address", function()
    local tl = threadlocal.new()
    assert.truthy(tostring(tl):match("^threadlocal%.local: 0?x?%x+$"))
    assert.are_not.equal(tostring(tl), tostring(threadlocal.new()))
  end)

  if support.has_pairs then
    it("iterates the calling thread's fields with pairs", function()
      local tl = threadlocal.new()
      tl.a, tl.b, tl[1] = 1, 2, 3
      local seen = {}
      for k, v in pairs(tl) do seen[k] = v end
      assert.same({ a = 1, b = 2, [1] = 3 }, seen)
    end)
  else
    it("cannot be iterated with pairs on Lua 5.1 and LuaJIT (no __pairs): use fields", function()
      local tl = threadlocal.new()
      tl.a = 1
      assert.has_error(function() for _ in pairs(tl) do end end)
      assert.same({ a = 1 }, threadlocal.fields(tl))
    end)
  end

  it("copies the calling thread's fields with fields()", function()
    local tl = threadlocal.new()
    local t = {}
    tl.a, tl.t = 1, t
    local f = threadlocal.fields(tl)
    assert.same({ a = 1, t = t }, f)
    assert.equal(t, f.t)
    f.a = 99
    f.b = 2
    assert.equal(1, tl.a)
    assert.is_nil(tl.b)
  end)

  it("forgets the calling thread's fields with clear()", function()
    local tl = threadlocal.new()
    tl.a, tl.b = 1, 2
    threadlocal.clear(tl)
    assert.is_nil(tl.a)
    assert.same({}, threadlocal.fields(tl))
    tl.a = 3
    assert.equal(3, tl.a)
  end)

  it("lists the calling thread with threads()", function()
    local tl = threadlocal.new()
    tl.x = 1
    local n = 0
    for id, fields in threadlocal.threads(tl) do
      n = n + 1
      assert.equal(threadlocal.id(), id)
      assert.same({ x = 1 }, fields)
    end
    assert.equal(1, n)
  end)
end)

describe("init", function()
  it("runs in the creating thread when new is called, with the extra arguments", function()
    local calls = {}
    local tl = threadlocal.new(function(self, a, b)
      calls[#calls + 1] = { a, b }
      self.sum = a + b
    end, 2, 3)
    assert.same({ { 2, 3 } }, calls)
    assert.equal(5, tl.sum)
    tl.more = 1
    local _ = tl.sum
    assert.equal(1, #calls)
  end)

  it("passes nil arguments through", function()
    local got
    threadlocal.new(function(_, a, b, c) got = { a, b, c, n = select("#", a, b, c) } end, nil, 2, nil)
    assert.same({ nil, 2, nil, n = 3 }, got)
  end)

  it("builds the thread's fields through self without running again", function()
    local calls = 0
    local tl
    tl = threadlocal.new(function(self)
      calls = calls + 1
      self.a = 1
      self.b = self.a + 1
      assert.equal(tl or self, self)
    end)
    assert.equal(1, calls)
    assert.same({ a = 1, b = 2 }, threadlocal.fields(tl))
  end)

  it("runs again after clear()", function()
    local calls = 0
    local tl = threadlocal.new(function(self) calls = calls + 1; self.n = calls end)
    assert.equal(1, tl.n)
    threadlocal.clear(tl)
    assert.equal(1, calls)
    assert.equal(2, tl.n)
    assert.equal(2, calls)
  end)

  it("propagates its error to new", function()
    assert.has_error(function()
      threadlocal.new(function() error("init failed", 0) end)
    end, "init failed")
  end)

  it("keeps no fields when it raises, and runs again on the next access", function()
    local fail, calls = false, 0
    local tl = threadlocal.new(function(self)
      calls = calls + 1
      self.partial = true
      if fail then error({ code = 7 }) end
      self.done = true
    end)
    fail = true
    threadlocal.clear(tl)
    local ok, err = pcall(function() return tl.done end)
    assert.is_false(ok)
    assert.same({ code = 7 }, err)
    assert.equal(2, calls)
    ok = pcall(function() return tl.partial end)
    assert.is_false(ok)
    assert.equal(3, calls)
    fail = false
    assert.is_true(tl.done)
    assert.equal(4, calls)
    assert.same({ partial = true, done = true }, threadlocal.fields(tl))
  end)
end)

describe("bad input", function()
  local function check_unchanged(tl)
    assert.same({ keep = 1 }, threadlocal.fields(tl))
  end

  it("refuses nil and NaN keys on write, and changes nothing", function()
    local tl = threadlocal.new()
    tl.keep = 1
    assert.has_error(function() tl[nil] = 1 end, "threadlocal: cannot use nil as a field name")
    assert.has_error(function() tl[0 / 0] = 1 end, "threadlocal: cannot use NaN as a field name")
    check_unchanged(tl)
    assert.is_nil(tl[nil])
    assert.is_nil(tl[0 / 0])
  end)

  it("refuses an init that is not a function", function()
    for _, bad in ipairs { 1, "f", {}, true } do
      local ok, err = pcall(threadlocal.new, bad)
      assert.is_false(ok)
      assert.truthy(err:match("bad argument #1 to '[^']*' %(function expected, got "), err)
    end
  end)

  it("refuses init arguments without an init function", function()
    assert.has_error(function() threadlocal.new(nil, 1) end,
      "threadlocal: init arguments given without an init function")
  end)

  it("refuses what is not a local in the module functions", function()
    local tl = threadlocal.new()
    tl.keep = 1
    local expected = {
      clear = "threadlocal%.local or threadlocal%.shared",
      fields = "threadlocal%.local, threadlocal%.shared or threadlocal%.proxy",
      threads = "threadlocal%.local",
    }
    for name, what in pairs(expected) do
      for _, bad in ipairs { {}, 1, "x", io.stdout } do
        local ok, err = pcall(threadlocal[name], bad)
        assert.is_false(ok)
        assert.truthy(err:match("bad argument #1 to '[^']*' %(" .. what .. " expected, got "), err)
      end
      local ok, err = pcall(threadlocal[name])
      assert.is_false(ok)
      assert.truthy(err:match("bad argument #1 to '[^']*' %(" .. what .. " expected, got no value%)"), err)
    end
    check_unchanged(tl)
    local ok, err = pcall(threadlocal.threads, threadlocal.shared("not a Local"))
    assert.is_false(ok)
    assert.truthy(err:match("%(threadlocal%.local expected, got "), err)
  end)

  it("hides its metatable, so its metamethods cannot be called on other values", function()
    local tl = threadlocal.new()
    assert.equal("threadlocal.local", getmetatable(tl))
  end)

  it("never crashes when debug.getmetatable calls its closures with another Local", function()
    -- b's caches are this thread's, a's closures hold no thread's fields.
    -- The C closures act on the table they hold; LuaJIT's Lua closures refuse.
    local function refused_or(want, ok, v)
      if ok then return v == want end
      return tostring(v):find("not the Local whose metamethod this is", 1, true) ~= nil
    end
    local a, b = threadlocal.new(), threadlocal.new()
    b.x = "b's"
    assert.equal("b's", b.x)
    local mt = debug.getmetatable(a)
    assert.is_true(refused_or(nil, pcall(mt.__index, b, "x")))
    assert.is_true(refused_or(nil, pcall(mt.__newindex, b, "x", "through a's")))
    assert.equal("b's", b.x)
    assert.is_nil(a.x)
    -- After a clear drops a's fields, the same.
    a.x = 1
    threadlocal.clear(a)
    assert.is_true(refused_or(nil, pcall(mt.__index, b, "x")))
    assert.is_true(refused_or(nil, pcall(mt.__newindex, b, "y", 2)))
    assert.is_nil(a.x)
    assert.is_nil(a.y)
    assert.is_nil(b.y)
  end)
end)

describe("threadlocal.table", function()
  local helper = require "tlhelper"

  it("gives the calling thread's live fields table, not a copy", function()
    local tl = threadlocal.new()
    tl.a = 1
    local t = threadlocal.table(tl)
    assert.equal(1, t.a)
    t.b = 2            -- writes through the table are the Local's fields
    assert.equal(2, tl.b)
    tl.c = 3           -- and the other way round
    assert.equal(3, t.c)
    assert.equal(t, threadlocal.table(tl))
    assert.is_nil(getmetatable(t))
  end)

  it("runs init first on a thread that has no fields yet, and is that thread's own", function()
    local tl = threadlocal.new(function(self, n) self.n = n end, 7)
    local main = threadlocal.table(tl)
    main.n = 8
    local other_n, same = helper.on_thread(function()
      local t = threadlocal.table(tl)
      return t.n, t == main
    end)
    assert.equal(7, other_n)
    assert.is_false(same)
    assert.equal(8, tl.n)
  end)

  it("refuses anything but a Local", function()
    assert.matches("bad argument #1 to '.-' %(threadlocal.local expected, got table%)",
      select(2, pcall(threadlocal.table, {})))
    assert.matches("bad argument #1", select(2, pcall(threadlocal.table, threadlocal.shared("x"))))
  end)
end)
