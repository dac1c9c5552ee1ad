-- Scopes, hand-off and the task boundary: README, Context.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

local function sorted_pairs_string(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k] == nil and t[tonumber(k)] or t[k]
    out[#out + 1] = k .. "=" .. (type(v) == "table" and "{" .. sorted_pairs_string(v) .. "}" or tostring(v))
  end
  return table.concat(out, ",")
end

-- A Lua literal for plain data (strings, numbers, booleans, tables).
local function serialize(v)
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[#out + 1] = ("[%s]=%s"):format(serialize(k), serialize(x)) end
    return "{" .. table.concat(out, ",") .. "}"
  elseif type(v) == "string" then
    return ("%q"):format(v)
  end
  return tostring(v)
end

describe("threadlocal.scope", function()
  it("on a Local replaces fields and restores them, absent ones included", function()
    local loc = threadlocal.new()
    loc.db, loc.keep = "primary", 1
    local s = threadlocal.scope(loc, { db = "replica", extra = true })
    assert.equal("replica", loc.db)
    assert.is_true(loc.extra)
    loc.keep = 2 -- not in the scope: stays changed
    s:close()
    assert.equal("primary", loc.db)
    assert.is_nil(loc.extra)
    assert.equal(2, loc.keep)
    s:close() -- closing twice does nothing
    assert.equal("primary", loc.db)
  end)

  it("on a shared local restores replaced and absent fields, tables included", function()
    local sh = threadlocal.shared(support.unique("scope"), { db = "primary" })
    sh.t = { a = 1 }
    local before = sorted_pairs_string(threadlocal.fields(sh))
    local s = threadlocal.scope(sh, { db = "replica", t = { b = 2 }, new = "x" })
    assert.equal("replica", sh.db)
    assert.equal(2, sh.t.b)
    assert.is_nil(sh.t.a)
    assert.equal("x", sh.new)
    s:close()
    assert.equal(before, sorted_pairs_string(threadlocal.fields(sh)))
    assert.equal(1, sh.t.a)
  end)

  it("nested scopes closed in order leave the thread exactly as before", function()
    local sh = threadlocal.shared(support.unique("nested"))
    sh.a, sh.b = 1, { x = 1 }
    local loc = threadlocal.new()
    loc.a = "la"
    local before_sh = sorted_pairs_string(threadlocal.fields(sh))
    local s1 = threadlocal.scope(sh, { a = 2, c = 3 })
    local l1 = threadlocal.scope(loc, { a = "lb", b = "new" })
    local s2 = threadlocal.scope(sh, { a = 4, b = { y = 2 }, c = 5 })
    local l2 = threadlocal.scope(loc, { a = "lc" })
    assert.equal(4, sh.a)
    assert.equal("lc", loc.a)
    l2:close(); s2:close()
    assert.equal(2, sh.a)
    assert.equal(3, sh.c)
    assert.equal("lb", loc.a)
    l1:close(); s1:close()
    assert.equal(before_sh, sorted_pairs_string(threadlocal.fields(sh)))
    assert.equal("la", loc.a)
    assert.is_nil(loc.b)
  end)

  it("refuses what a shared local cannot store, and changes nothing", function()
    local sh = threadlocal.shared(support.unique("refuse"))
    sh.db = "primary"
    local ok, err = pcall(threadlocal.scope, sh, { db = "replica", f = print })
    assert.is_false(ok)
    assert.matches("^threadlocal: cannot store a function in field 'f'", err)
    assert.equal("primary", sh.db)
    assert.has_error(function() threadlocal.scope(1, {}) end)
    assert.matches("bad argument #1", select(2, pcall(threadlocal.scope, {}, {})))
    assert.matches("bad argument #2", select(2, pcall(threadlocal.scope, sh, "x")))
  end)

  it("closed on another OS thread raises and restores nothing", function()
    local sh = threadlocal.shared(support.unique("other"))
    local loc = threadlocal.new()
    sh.db, loc.db = "primary", "primary"
    local s = threadlocal.scope(sh, { db = "replica" })
    local l = threadlocal.scope(loc, { db = "replica" })
    local ok1, e1 = helper.on_thread(function() return pcall(s.close, s) end)
    local ok2, e2 = helper.on_thread(function() return pcall(l.close, l) end)
    assert.is_false(ok1)
    assert.is_false(ok2)
    assert.matches("^threadlocal: scope closed on another thread", e1)
    assert.matches("^threadlocal: scope closed on another thread", e2)
    assert.equal("replica", sh.db)
    assert.equal("replica", loc.db)
    l:close(); s:close()
    assert.equal("primary", sh.db)
    assert.equal("primary", loc.db)
  end)

  it("belongs to the thread that opened it when the state moves between threads", function()
    local loc = threadlocal.new()
    local w = helper.worker()
    local s = w:run(function()
      loc.db = "worker"
      return threadlocal.scope(loc, { db = "scoped" })
    end)
    assert.is_nil(loc.db) -- this thread never had the field
    assert.is_false((pcall(s.close, s)))
    assert.equal("scoped", w:run(function() return loc.db end))
    w:run(function() s:close() end)
    assert.equal("worker", w:run(function() return loc.db end))
    w:stop()
  end)

  if _VERSION == "Lua 5.4" then
    it("closes as a to-be-closed variable, also on error", function()
      local sh = threadlocal.shared(support.unique("tbc"))
      sh.db = "primary"
      local f = assert(load([[
        local threadlocal, sh, fail = ...
        local s <close> = threadlocal.scope(sh, { db = "replica" })
        assert(sh.db == "replica")
        if fail then error("inside", 0) end
      ]]))
      f(threadlocal, sh, false)
      assert.equal("primary", sh.db)
      local ok, err = pcall(f, threadlocal, sh, true)
      assert.is_false(ok)
      assert.equal("inside", err)
      assert.equal("primary", sh.db)
    end)
  end
end)

describe("threadlocal.with", function()
  it("runs fn in a scope and returns its results", function()
    local loc = threadlocal.new()
    loc.db = "primary"
    local a, b, c = threadlocal.with(loc, { db = "replica" }, function(x, y)
      return loc.db, x, y
    end, 1, nil)
    assert.equal("replica", a)
    assert.equal(1, b)
    assert.is_nil(c)
    assert.equal("primary", loc.db)
  end)

  it("restores when fn raises, and raises the same value", function()
    local sh = threadlocal.shared(support.unique("with"))
    sh.db = "primary"
    local e = {}
    local ok, err = pcall(threadlocal.with, sh, { db = "replica" }, function() error(e) end)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("primary", sh.db)
    assert.matches("bad argument #3", select(2, pcall(threadlocal.with, sh, {}, 1)))
  end)
end)

describe("threadlocal.capture and threadlocal.run", function()
  it("capture gives plain data: every shared local with fields, or the ones named", function()
    local n1, n2, n3 = support.unique("cap"), support.unique("cap"), support.unique("cap")
    local a, b = threadlocal.shared(n1), threadlocal.shared(n2)
    local c = threadlocal.shared(n3)
    a.user, a.t = "alice", { roles = { "admin" } }
    b.n = 1
    local all = threadlocal.capture()
    assert.equal("alice", all[n1].user)
    assert.equal("admin", all[n1].t.roles[1])
    assert.equal("table", type(all[n1].t)) -- a copy, not a proxy
    assert.is_nil(getmetatable(all[n1].t))
    assert.equal(1, all[n2].n)
    assert.is_nil(all[n3]) -- no fields here
    local some = threadlocal.capture(a, c)
    assert.same({ [n1] = { user = "alice", t = { roles = { "admin" } } }, [n3] = {} }, some)
    assert.matches("bad argument #2", select(2, pcall(threadlocal.capture, a, {})))
  end)

  it("run swaps the snapshot in and puts the thread's own fields back", function()
    local name = support.unique("run")
    local sh = threadlocal.shared(name)
    sh.user = "bob"
    local u, n = threadlocal.run({ [name] = { user = "carol", n = 3 } }, function()
      return sh.user, sh.n
    end)
    assert.equal("carol", u)
    assert.equal(3, n)
    assert.equal("bob", sh.user)
    assert.is_nil(sh.n)
  end)

  it("keeps a scope on a shared local a run swapped in inside that run", function()
    local name = support.unique("runscope")
    local sh = threadlocal.shared(name)
    sh.db = "own"
    local inner = threadlocal.run({ [name] = { db = "job" } }, function()
      return threadlocal.scope(sh, { db = "scoped" }) -- escapes the run, open
    end)
    local msg = "threadlocal: scope closed outside the threadlocal.run context it was opened in"
    local ok, err = pcall(inner.close, inner)
    assert.is_false(ok)
    assert.equal(msg, err)
    assert.equal("own", sh.db) -- the job's value did not leak into the thread's own fields
    local outer = threadlocal.scope(sh, { db = "outer" })
    local ok2, err2, seen = threadlocal.run({ [name] = { db = "job" } }, function()
      local ok_, err_ = pcall(outer.close, outer)
      return ok_, err_, sh.db
    end)
    assert.is_false(ok2)
    assert.equal(msg, err2)
    assert.equal("job", seen) -- nor the thread's own into the job's
    assert.equal("outer", sh.db)
    outer:close() -- back in its own context: it restores
    assert.equal("own", sh.db)
    local v = threadlocal.run({ [name] = { db = "job" } }, function()
      local s = threadlocal.scope(sh, { db = "in" })
      threadlocal.run({ [name] = { db = "nested" } }, function()
        local ok_, err_ = pcall(s.close, s)
        assert.is_false(ok_)
        assert.equal(msg, err_)
      end)
      threadlocal.run({}, function() s:close() end) -- a run that leaves sh alone
      return sh.db
    end)
    assert.equal("job", v)
  end)

  it("lets scopes cross a run that leaves their local alone", function()
    local name, other = support.unique("runscope"), support.unique("runscope")
    local sh = threadlocal.shared(name)
    sh.db = "own"
    local s = threadlocal.run({ [other] = { x = 1 } }, function()
      return threadlocal.scope(sh, { db = "scoped" })
    end)
    assert.equal("scoped", sh.db)
    s:close()
    assert.equal("own", sh.db)
    -- a Local's fields are not swapped by run either
    local loc = threadlocal.new()
    loc.db = "own"
    local ls = threadlocal.run({ [name] = {} }, function() return threadlocal.scope(loc, { db = "scoped" }) end)
    ls:close()
    assert.equal("own", loc.db)
  end)

  it("run puts the thread's fields back after an error, and raises the same value", function()
    local name = support.unique("runerr")
    local sh = threadlocal.shared(name)
    sh.user = "bob"
    local e = {}
    local ok, err = pcall(threadlocal.run, { [name] = { user = "x" } }, function()
      assert(sh.user == "x")
      sh.user = "changed"
      error(e)
    end)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("bob", sh.user)
    local ok2, err2 = pcall(threadlocal.run, { [name] = "x" }, print)
    assert.is_false(ok2)
    assert.matches("^threadlocal: a snapshot maps shared local names to tables", err2)
    local ok3, err3 = pcall(threadlocal.run, { [name] = { f = print } }, print)
    assert.is_false(ok3)
    assert.equal(1, err3:find("threadlocal: cannot store a function in field '" .. name .. ".f'", 1, true))
    assert.equal("bob", sh.user)
  end)

  it("carries a request's context to a worker thread running this state", function()
    local name = support.unique("handoff")
    local sh = threadlocal.shared(name)
    local w = helper.worker()
    w:run(function() sh.user = "worker's own" end)
    sh.user, sh.req = "alice", { id = 42 }
    local snap = threadlocal.capture(sh)
    local user, id = w:run(function()
      return threadlocal.run(snap, function() return sh.user, sh.req.id end)
    end)
    assert.equal("alice", user)
    assert.equal(42, id)
    assert.equal("worker's own", w:run(function() return sh.user end))
    w:stop()
  end)

  it("carries a snapshot, serialised, to a fresh state on another thread", function()
    local name = support.unique("fresh")
    local sh = threadlocal.shared(name)
    sh.user, sh.req = "alice", { id = 7, tags = { "a", "b" } }
    local text = serialize(threadlocal.capture(sh))
    local w = helper.worker()
    local user, id, tag, after = w:exec([[
      local threadlocal = require "threadlocal"
      local text, name = ...
      local sh = threadlocal.shared(name)
      local u, i, t = threadlocal.run(assert((loadstring or load)("return " .. text))(), function()
        return sh.user, sh.req.id, sh.req.tags[2]
      end)
      return u, i, t, sh.user
    ]], text, name)
    assert.equal("alice", user)
    assert.equal(7, id)
    assert.equal("b", tag)
    assert.is_nil(after)
    w:stop()
  end)
end)

describe("capture while finalizers use the module #gcstorm", function()
  it("copies whole fields, never freed ones, when a finalizer clears or refills them", function()
    local n1, n2 = support.unique("capgc"), support.unique("capgc")
    local a, b = threadlocal.shared(n1), threadlocal.shared(n2)
    local function fill()
      for i = 1, 20 do a[i] = { i, { x = i } } end
      b.n = 1
    end
    local function check(snap)
      for k, v in pairs(snap[n1] or {}) do
        assert.equal(k, v[1])
        assert.equal(k, v[2].x)
      end
    end
    local calls = 0
    support.under_finalizers(function()
      calls = calls + 1
      if calls % 2 == 1 then
        threadlocal.clear(a)
        threadlocal.clear(b)
      else
        fill()
      end
    end, function()
      fill()
      check(threadlocal.capture(a, b))
      fill()
      check(threadlocal.capture())
    end, 20)
    assert.is_true(calls > 20)
  end)
end)

describe("threadlocal.release", function()
  it("drops the calling thread's data as if it had exited, and gives it a new id", function()
    local sh = threadlocal.shared(support.unique("release"))
    local loc = threadlocal.new()
    local collected = 0
    local w = helper.worker()
    local id1 = w:run(function()
      sh.x = 1
      support.store_gc(loc, "v", function() collected = collected + 1 end)
      return threadlocal.id()
    end)
    local id2, x, v = w:run(function()
      threadlocal.release()
      return threadlocal.id(), sh.x, loc.v
    end)
    assert.is_true(id2 > id1)
    assert.is_nil(x)
    assert.is_nil(v)
    support.full_gc(2)
    assert.equal(1, collected)
    w:stop()
  end)
end)
