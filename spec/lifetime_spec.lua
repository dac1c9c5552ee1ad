-- README, Lifetimes, for Locals: what happens to values when threads exit,
-- when a Local is collected, and when the states that loaded the module close.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

describe("values of an exited thread", function()
  -- A port of CPython's test_local_refs: each of n threads stores a value
  -- in one Local and exits; the Local is never touched again.
  for _, n in ipairs { 20, 50, 100 } do
    it("are collected within two full cycles (" .. n .. " threads)", function()
      local tl = threadlocal.new()
      local collected = 0
      -- The collector is stopped meanwhile, so that no cycle of its own can
      -- collect earlier: the check below then shows that exiting frees
      -- nothing of the state's by itself.
      collectgarbage("stop")
      for _ = 1, n do
        helper.on_thread(function()
          support.store_gc(tl, "value", function() collected = collected + 1 end)
        end)
      end
      local before = collected
      collectgarbage("restart")
      assert.equal(0, before)
      support.full_gc(2)
      assert.equal(n, collected)
      assert.is_nil(tl.value)
    end)
  end

  it("are collected while the threads that still live keep theirs", function()
    local tl = threadlocal.new()
    local collected, alive = {}, helper.worker()
    alive:run(function()
      support.store_gc(tl, "value", function() collected.alive = true end)
    end)
    local w = helper.worker()
    w:run(function()
      support.store_gc(tl, "value", function() collected.exited = true end)
    end)
    w:stop()
    support.full_gc(2)
    assert.same({ exited = true }, collected)
    assert.truthy(alive:run(function() return tl.value end))
    alive:stop()
    support.full_gc(2)
    assert.same({ exited = true, alive = true }, collected)
  end)

  it("are dropped from the cache of a Local that last ran on that thread", function()
    local tl = threadlocal.new()
    local collected = false
    local w = helper.worker()
    -- The last access to tl is on w, so tl's cache holds w's fields.
    w:run(function()
      support.store_gc(tl, "value", function() collected = true end)
    end)
    w:stop()
    support.full_gc(2)
    assert.is_true(collected)
  end)

  -- A finalizer that runs inside the allocation of the thread's new fields
  -- table may release the thread: the table must then be recorded under the
  -- new id, or the purge at the thread's exit never finds it.
  it("are dropped when a finalizer released the thread during its first access #gcstorm", function()
    local made, collected = 0, 0
    local tl = threadlocal.new(function(self)
      self.v = true
      made = made + 1
      support.store_gc(self, "g", function() collected = collected + 1 end)
    end)
    local w = helper.worker()
    w:run(function()
      support.under_finalizers(function() pcall(threadlocal.release) end, function()
        threadlocal.clear(tl)
        assert.is_true(tl.v)
      end, 200)
    end)
    w:stop()
    support.full_gc(2)
    local v = tl.v -- an access purges the exited ids
    support.full_gc(2)
    local ids = {}
    for id in threadlocal.threads(tl) do ids[#ids + 1] = id end
    assert.is_true(v)
    assert.same({ threadlocal.id() }, ids)
    assert.is_true(made > 1)
    assert.equal(made - 1, collected) -- all but the main thread's
  end)

  -- The same when init clears its own fields last: the access then makes
  -- the thread's empty fields table after init.
  it("are dropped when a finalizer released the thread after an init that cleared its fields #gcstorm", function()
    local made, collected = 0, 0
    local tl = threadlocal.new(function(self)
      self.v = true
      threadlocal.clear(self)
      made = made + 1
      support.store_gc(self, "g", function() collected = collected + 1 end)
      threadlocal.clear(self)
    end)
    local w = helper.worker()
    w:run(function()
      support.under_finalizers(function() pcall(threadlocal.release) end, function()
        threadlocal.clear(tl)
        assert.equal(0, #tl)
      end, 200)
    end)
    w:stop()
    support.full_gc(2)
    local n = #tl -- an access purges the exited ids
    support.full_gc(2)
    local ids = {}
    for id in threadlocal.threads(tl) do ids[#ids + 1] = id end
    assert.equal(0, n)
    assert.same({ threadlocal.id() }, ids)
    assert.is_true(made > 1)
    assert.equal(made, collected) -- every init cleared what it stored
  end)
end)

describe("a collected Local", function()
  it("frees every thread's values, while those threads live on", function()
    local w1, w2 = helper.worker(), helper.worker()
    local collected = 0
    local function store(tl)
      support.store_gc(tl, "value", function() collected = collected + 1 end)
    end
    support.off_stack(function()
      local tl = threadlocal.new()
      store(tl)
      w1:run(store, tl)
      w2:run(store, tl)
    end)
    support.full_gc(2)
    assert.equal(3, collected)
    w1:stop()
    w2:stop()
  end)

  it("is collected when its values refer back to it (CPython's test_cycle_collection)", function()
    local weak = setmetatable({}, { __mode = "v" })
    support.off_stack(function()
      local x = {}
      x.tl = threadlocal.new()
      x.tl.x = x
      helper.on_thread(function(t) t.tl.x = t end, x)
      local w = helper.worker()
      w:run(function(t) t.tl.back = t.tl end, x)
      weak.x, weak.tl = x, x.tl
      w:stop()
    end)
    support.full_gc(2)
    assert.is_nil(weak.x)
    assert.is_nil(weak.tl)
  end)
end)

describe("the module", function()
  -- Lua's lua_close unloads C modules.  Here the process's main state never
  -- loads threadlocal: threads with their own states load it, store values,
  -- close their states (the last one unloads the library unless it is
  -- pinned), and only then exit, running threadlocal's thread-exit hook.
  it("stays loaded after the last state that required it is closed, and keeps shared values", function()
    local cmd = ("%s spec/unload_main.lua %q 2>&1"):format(support.lua, package.cpath)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    assert.truthy(out:match("unload: ok\n$"), out)
  end)
end)
