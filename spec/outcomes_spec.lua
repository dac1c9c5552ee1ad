-- Outcomes that used to be silently wrong now raise, and errors say where.
local threadlocal = require "threadlocal"
local support = require "support"

-- The message without Lua's "chunk:line: " position.
local function bare(err)
  return (tostring(err):gsub("^[^:\n]*:%d+: ", ""))
end

-- The position prefix this file's line n gives.
local function here(err)
  return tostring(err):match("^([^:\n]*):%d+: ")
end

describe("a shared local refuses", function()
  it("a table with a metatable, at any depth, and changes nothing", function()
    local sh = threadlocal.shared(support.unique("meta"))
    sh.conn = "before"
    local Conn = { __index = { query = function() end } }
    local ok, err = pcall(function() sh.conn = setmetatable({ dsn = "x" }, Conn) end)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a table with a metatable in field 'conn'", bare(err))
    assert.equal("before", sh.conn)
    ok, err = pcall(function() sh.req = { headers = { list = setmetatable({}, {}) } } end)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a table with a metatable in field 'req.headers.list'",
      bare(err))
    assert.is_nil(sh.req)
  end)

  it("defaults with a metatable", function()
    local ok, err = pcall(threadlocal.shared, support.unique("meta"), setmetatable({}, {}))
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a table with a metatable", bare(err))
    ok, err = pcall(threadlocal.shared, support.unique("meta"), { t = setmetatable({}, {}) })
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a table with a metatable in field 't'", bare(err))
  end)
end)

describe("a Local's init", function()
  it("that returns a value raises, and the thread keeps no fields", function()
    local calls = 0
    local c = threadlocal.new(function(self)
      calls = calls + 1
      if calls == 1 then return end -- the creating thread's run, in new
      self.partial = true
      return { count = 0 }
    end)
    threadlocal.clear(c)
    local ok, err = pcall(function() return c.count end)
    assert.is_false(ok)
    assert.equal("threadlocal: init must return nothing (set fields on its first argument instead)",
      bare(err))
    assert.equal(2, calls)
    ok = pcall(function() return c.partial end) -- init runs again, and raises again
    assert.is_false(ok)
    assert.equal(3, calls)
  end)

  it("that returns nil or nothing is fine", function()
    local a = threadlocal.new(function(self) self.x = 1; return nil end)
    local b = threadlocal.new(function(self) self.x = 2 end)
    assert.equal(1, a.x)
    assert.equal(2, b.x)
  end)

  it("raises from new when it returns a value in the creating thread", function()
    local ok, err = pcall(threadlocal.new, function() return 1 end)
    assert.is_false(ok)
    assert.truthy(bare(err):find("^threadlocal: init must return nothing"))
  end)
end)

describe("errors", function()
  it("carry the caller's position, as luaL_error gives", function()
    local sh = threadlocal.shared(support.unique("pos"))
    local ok, err = pcall(function() sh.f = print end)
    assert.is_false(ok)
    assert.equal(debug.getinfo(1, "S").short_src, here(err))
    assert.truthy(bare(err):find("^threadlocal: cannot store a function"))
    ok, err = pcall(threadlocal.new, nil, 1)
    assert.is_false(ok)
    assert.truthy(bare(err):find("^threadlocal: "))
    ok, err = pcall(function() sh[{}] = 1 end)
    assert.is_false(ok)
    assert.equal(debug.getinfo(1, "S").short_src, here(err))
    assert.truthy(bare(err):find("^threadlocal: shared field names are"))
  end)

  it("blame the first bad argument of with", function()
    local loc = threadlocal.new()
    local ok, err = pcall(threadlocal.with, loc, function() end)
    assert.is_false(ok)
    assert.truthy(bare(err):find("^bad argument #2 to"), err)
    ok, err = pcall(threadlocal.with, function() end, loc, {})
    assert.is_false(ok)
    assert.truthy(bare(err):find("^bad argument #1 to"), err)
    ok, err = pcall(threadlocal.with, loc, {}, 42)
    assert.is_false(ok)
    assert.truthy(bare(err):find("^bad argument #3 to"), err)
  end)
end)
