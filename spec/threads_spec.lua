-- One state used by several OS threads, one at a time: the Local use case.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

describe("a Local used from several OS threads", function()
  local w1, w2
  before_each(function()
    w1, w2 = helper.worker(), helper.worker()
  end)
  after_each(function()
    w1:stop()
    w2:stop()
  end)

  it("gives each thread its own id, never the same twice", function()
    local main = threadlocal.id()
    local a = w1:run(threadlocal.id)
    local b = w2:run(threadlocal.id)
    local c = helper.on_thread(threadlocal.id)
    local d = helper.on_thread(threadlocal.id)
    local seen = {}
    for _, id in ipairs { main, a, b, c, d } do
      assert.is_nil(seen[id])
      seen[id] = true
    end
    assert.equal(a, w1:run(threadlocal.id))
  end)

  it("resolves fields through the calling thread", function()
    local tl = threadlocal.new()
    tl.x = "main"
    w1:run(function() tl.x = "one" end)
    w2:run(function()
      assert.is_nil(tl.x)
      tl.x = "two"
    end)
    assert.equal("main", tl.x)
    assert.equal("one", w1:run(function() return tl.x end))
    assert.equal("two", w2:run(function() return tl.x end))
    assert.equal("main", tl.x)
  end)

  it("keeps writes on one thread invisible to the others, for every access path", function()
    local tl = threadlocal.new()
    tl.a, tl[1] = 1, "x"
    w1:run(function()
      assert.is_nil(tl.a)
      assert.equal(0, #tl)
      assert.same({}, threadlocal.fields(tl))
      if support.has_pairs then
        for _ in pairs(tl) do error("thread sees another thread's field") end
      end
      tl.b = 2
    end)
    assert.same({ a = 1, [1] = "x" }, threadlocal.fields(tl))
  end)

  it("clears only the calling thread's fields", function()
    local tl = threadlocal.new()
    tl.x = 1
    w1:run(function() tl.x = 2 end)
    w1:run(function() threadlocal.clear(tl) end)
    assert.equal(1, tl.x)
    assert.is_nil(w1:run(function() return tl.x end))
  end)

  it("runs init once in every other thread, lazily, with the arguments of new", function()
    local calls = {}
    local tl = threadlocal.new(function(self, base)
      calls[#calls + 1] = threadlocal.id()
      self.value = base + #calls
    end, 100)
    assert.same({ threadlocal.id() }, calls)
    local id1 = w1:run(threadlocal.id)
    assert.equal(1, #calls) -- not yet touched on w1
    assert.equal(102, w1:run(function() return tl.value end))
    assert.equal(102, w1:run(function() return tl.value end))
    assert.same({ threadlocal.id(), id1 }, calls)
    assert.equal(101, tl.value)
  end)

  it("runs init on first access of every kind: read, write, fields, pairs, length", function()
    local calls = 0
    local tl = threadlocal.new(function(self) calls = calls + 1; self.ok = true end)
    local accesses = {
      function() return tl.x end,
      function() tl.x = 1 end,
      function() return threadlocal.fields(tl) end,
      function() return #tl end,
    }
    if support.has_pairs then
      accesses[#accesses + 1] = function() for _ in pairs(tl) do end end
    end
    for i, access in ipairs(accesses) do
      local w = helper.worker()
      w:run(access)
      assert.equal(i + 1, calls)
      assert.is_true(w:run(function() return tl.ok end))
      assert.equal(i + 1, calls)
      w:stop()
    end
  end)

  it("retries a failed init on the thread where it failed", function()
    local fail_on = {}
    local tl = threadlocal.new(function(self)
      if fail_on[threadlocal.id()] then error("no", 0) end
      self.ok = true
    end)
    local id = w1:run(threadlocal.id)
    fail_on[id] = true
    local ok, err = pcall(w1.run, w1, function() return tl.ok end)
    assert.is_false(ok)
    assert.equal("no", err)
    fail_on[id] = nil
    assert.is_true(w1:run(function() return tl.ok end))
  end)

  it("lets init hand the state to another thread without running twice", function()
    local calls = 0
    local tl
    tl = threadlocal.new(function(self)
      calls = calls + 1
      if calls == 2 then -- on w1: the nested thread gets its own init
        w2:run(function() return tl.other end)
        self.after = tl.x == nil
      end
    end)
    w1:run(function() return tl.x end)
    assert.equal(3, calls)
    assert.is_true(w1:run(function() return tl.after end))
    assert.equal(3, calls)
  end)

  it("keeps building a thread's fields when init clears them, without running init again", function()
    local calls, seen = 0, "unset"
    local tl = threadlocal.new(function(self)
      calls = calls + 1
      self.a = 1
      threadlocal.clear(self)
      seen = self.a -- the cleared fields: init does not start over
      self.b = 2
    end)
    assert.equal(1, calls)
    assert.is_nil(seen)
    local a, b = w1:run(function() return tl.a, tl.b end)
    assert.equal(2, calls)
    assert.is_nil(a)
    assert.equal(2, b)
    assert.same({ b = 2 }, w1:run(function() return threadlocal.fields(tl) end))
    assert.equal(2, calls)
  end)

  it("refuses threadlocal.release() inside init: the thread keeps its id, init runs again", function()
    local calls, release = 0, false
    local tl = threadlocal.new(function(self)
      calls = calls + 1
      self.n = calls
      if release then threadlocal.release() end
    end)
    local before, ok, err, after, n = w1:run(function()
      local id = threadlocal.id()
      release = true
      local ok_, err_ = pcall(function() return tl.n end)
      release = false
      return id, ok_, err_, threadlocal.id(), tl.n
    end)
    assert.is_false(ok)
    assert.equal("threadlocal: release() called while an init runs on this thread", support.bare(err))
    assert.equal(before, after)
    assert.equal(3, n) -- the failed init left no fields: the next read ran it again
    assert.equal(3, calls)
    assert.equal(1, tl.n)
    -- outside init, release works as always
    assert.are_not.equal(after, w1:run(function() threadlocal.release(); return threadlocal.id() end))
  end)

  it("lists every live thread's fields with threads()", function()
    local tl = threadlocal.new()
    tl.who = "main"
    local id1 = w1:run(function() tl.who = "one"; return threadlocal.id() end)
    local id2 = w2:run(function() tl.who = "two"; return threadlocal.id() end)
    local got = {}
    for id, fields in threadlocal.threads(tl) do got[id] = fields end
    assert.same({ [threadlocal.id()] = { who = "main" }, [id1] = { who = "one" }, [id2] = { who = "two" } }, got)
    got[id1].who = "changed"
    assert.equal("one", w1:run(function() return tl.who end))
  end)

  it("drops a thread from threads() once it has exited", function()
    local tl = threadlocal.new()
    local w = helper.worker()
    local gone = w:run(function() tl.x = 1; return threadlocal.id() end)
    local id1 = w1:run(function() tl.x = 2; return threadlocal.id() end)
    w:stop()
    local got = {}
    for id in threadlocal.threads(tl) do got[#got + 1] = id end
    assert.same({ id1 }, got) -- the main thread never wrote: it has no fields
    assert.are_not.equal(gone, id1)
  end)

  it("gives a thread that only reads a Local no fields, and shows its first write", function()
    local tl = threadlocal.new()
    tl.x = "main"
    local id, before, listed, after = w1:run(function()
      local b = tl.x -- a read on a thread without fields: nil, and nothing made
      local l = {}
      for tid in threadlocal.threads(tl) do l[#l + 1] = tid end
      tl.x = "one"
      return threadlocal.id(), b, l, tl.x
    end)
    assert.is_nil(before)
    assert.same({ threadlocal.id() }, listed)
    assert.equal("one", after)
    assert.equal("main", tl.x)
    local got = {}
    for tid, fields in threadlocal.threads(tl) do got[tid] = fields.x end
    assert.same({ [threadlocal.id()] = "main", [id] = "one" }, got)
  end)

  it("runs init on a thread's first read, as on its first write", function()
    local runs = 0
    local tl = threadlocal.new(function(self) runs = runs + 1; self.n = runs end)
    assert.equal(1, tl.n)
    assert.equal(2, w1:run(function() return tl.n end))
    local n = 0
    for _ in threadlocal.threads(tl) do n = n + 1 end
    assert.equal(2, n)
  end)
end)

describe("a new thread", function()
  it("never sees values left by an exited thread, though the system reuses threads", function()
    local tl = threadlocal.new()
    local ids = {}
    for i = 1, 50 do
      local id = helper.on_thread(function()
        assert.is_nil(tl.value)
        assert.same({}, threadlocal.fields(tl))
        tl.value = i
        return threadlocal.id()
      end)
      assert.is_nil(ids[id])
      ids[id] = true
    end
    for i = 1, 20 do
      local w = helper.worker()
      w:run(function()
        assert.is_nil(tl.value)
        tl.value = i
      end)
      w:stop()
    end
  end)
end)

describe("states on their own threads", function()
  it("each use the module at once, with barriers between them", function()
    local b = support.unique("states")
    helper.barrier(b, 3)
    local code = [[
      local threadlocal, helper = require "threadlocal", require "tlhelper"
      local b, n = ...
      local tl = threadlocal.new(function(self) self.n = n end)
      helper.wait(b)           -- all three states exist and hold a value
      local ok, err = pcall(function() for i = 1, 1000 do tl.n = tl.n + 1 end end)
      helper.wait(b)           -- reached whatever happened above
      assert(ok, err)
      return tl.n, threadlocal.id()
    ]]
    local h1 = helper.spawn(code, b, 1000)
    local h2 = helper.spawn(code, b, 2000)
    helper.wait(b)
    helper.wait(b)
    local ok1, n1, id1 = h1:join()
    local ok2, n2, id2 = h2:join()
    assert.is_true(ok1, n1)
    assert.is_true(ok2, n2)
    assert.equal(2000, n1)
    assert.equal(3000, n2)
    assert.are_not.equal(id1, id2)
  end)
end)
