-- Shared locals across states and OS threads: README, Shared locals, Shared values
-- and Lifetimes.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

describe("a shared local seen from several states on one thread", function()
  it("is the same fields for every state on the calling thread", function()
    local name = support.unique("states")
    local sh = threadlocal.shared(name)
    sh.db = "replica"
    -- A fresh state on this same thread, alive at the same time as this one.
    local got = helper.exec([[
      local sh = require("threadlocal").shared(...)
      local db = sh.db
      sh.from_other_state = { n = 1 }
      return db
    ]], name)
    assert.equal("replica", got)
    assert.equal(1, sh.from_other_state.n)
  end)

  it("outlives the state that set it: a later state on that thread reads it", function()
    local name = support.unique("later")
    local w = helper.worker()
    w:exec([[require("threadlocal").shared(...).db = "replica"]], name)
    -- that state is closed now; a new one on the same worker thread:
    assert.equal("replica", w:exec([[return require("threadlocal").shared(...).db]], name))
    -- and the state that runs this spec, handed to the worker, reads it too:
    assert.equal("replica", w:run(function() return threadlocal.shared(name).db end))
    w:stop()
  end)
end)

describe("a shared local on several OS threads", function()
  it("gives every thread its own fields", function()
    local name = support.unique("threads")
    local sh = threadlocal.shared(name)
    sh.who = "main"
    local w1, w2 = helper.worker(), helper.worker()
    w1:exec([[require("threadlocal").shared((...)).who = "one"]], name)
    assert.is_nil(w2:exec([[return require("threadlocal").shared(...).who]], name))
    w2:run(function() sh.who = "two" end)
    assert.equal("one", w1:run(function() return sh.who end))
    assert.equal("two", w2:exec([[return require("threadlocal").shared(...).who]], name))
    assert.equal("main", sh.who)
    w1:stop()
    w2:stop()
  end)

  it("refuses a proxy used on another thread than the one that read it", function()
    local sh = threadlocal.shared(support.unique("proxy"))
    sh.t = { x = 1 }
    local p = sh.t
    local msg = "threadlocal: table proxy used on another thread than the one that read it"
    local w = helper.worker()
    w:run(function() sh.t = { x = 2 } end) -- the worker's own t
    local ok, err = pcall(w.run, w, function() return p.x end)
    assert.is_false(ok)
    assert.equal(msg, support.bare(err))
    ok, err = pcall(w.run, w, function() p.x = 3 end)
    assert.is_false(ok)
    assert.equal(msg, support.bare(err))
    ok, err = pcall(w.run, w, function() sh.copy = p end)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a table proxy that is not valid on this thread in field 'copy'",
      support.bare(err))
    assert.equal(2, w:run(function() return sh.t.x end))
    assert.equal(1, p.x) -- still fine on its own thread
    w:stop()
  end)

  it("reads the calling thread's table after the state moves, in the same loop", function()
    local sh = threadlocal.shared(support.unique("moved"))
    local w = helper.worker()
    sh.t = { who = "main" }
    w:run(function() sh.t = { who = "worker" } end)
    local function read() return sh.t.who end
    for _ = 1, 5 do
      assert.equal("main", read())
      assert.equal("worker", w:run(read))
    end
    w:stop()
  end)

  it("never shows an exited thread's values to a later thread", function()
    local name = support.unique("exit")
    for i = 1, 30 do
      local h = helper.spawn([[
        local name, i = ...
        local sh = require("threadlocal").shared(name)
        local before = sh.v
        sh.v = i
        sh.t = { i = i }
        return before == nil
      ]], name, i)
      local ok, clean = h:join()
      assert.is_true(ok, clean)
      assert.is_true(clean)
    end
  end)

  it("is used by states on separate threads at once, with barriers", function()
    local name, b = support.unique("race"), support.unique("race-b")
    helper.barrier(b, 3)
    local code = [[
      local threadlocal, helper = require "threadlocal", require "tlhelper"
      local name, b, me = ...
      local sh = threadlocal.shared(name)
      sh.me = me
      helper.wait(b)
      local ok, err = pcall(function() -- reach the second barrier whatever happens
        for i = 1, 2000 do
          sh.n = i
          sh.t = { me = me, i = i }
          assert(sh.me == me and sh.t.me == me, "saw another thread's value")
        end
      end)
      helper.wait(b)
      assert(ok, err)
      return sh.n, sh.t.me
    ]]
    local h1 = helper.spawn(code, name, b, "one")
    local h2 = helper.spawn(code, name, b, "two")
    helper.wait(b)
    helper.wait(b)
    local ok1, n1, me1 = h1:join()
    local ok2, n2, me2 = h2:join()
    assert.is_true(ok1, n1)
    assert.is_true(ok2, n2)
    assert.same({ 2000, "one", 2000, "two" }, { n1, me1, n2, me2 })
    assert.is_nil(threadlocal.shared(name).me)
  end)
end)
