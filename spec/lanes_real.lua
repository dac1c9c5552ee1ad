-- Shared locals and Locals crossing real Lanes' lanes.  tools/test.sh runs
-- this file with busted when `require "lanes"` works for a Lua version, and
-- prints a skip line otherwise (Lanes is in no Debian package).
-- spec/lanes_spec.lua checks the same protocol with the project's own host.
local lanes = require("lanes").configure()
local threadlocal = lanes.require "threadlocal" -- the metatable joins Lanes' database
local gen_opts = { required = { "threadlocal" } } -- the same in each lane

local n = 0
local function fresh(defaults)
  n = n + 1
  local name = "lanes.real." .. n
  return threadlocal.shared(name, defaults), name
end

-- Lane bodies are made from source, so that their globals are the real
-- ones: Lanes copies a function's environment, and busted's holds functions
-- that no lane knows.
local function body(code)
  return assert((loadstring or load)(code))()
end

-- The lane: what it read before its own write, after it, through
-- threadlocal.shared(name), and its thread's id.
local reader = body [[
  return function(s, name)
    local tl = require "threadlocal"
    local before = s.who
    s.who = "lane"
    return before, s.who, tl.shared(name).who, tl.id()
  end
]]

local function check(sh, name, before, after, by_name, id)
  assert.are.equal("default", before)
  assert.are.equal("lane", after)
  assert.are.equal("lane", by_name)
  assert.are_not.equal(threadlocal.id(), id)
  assert.are.equal("sender", sh.who)
  assert.are.equal(sh, threadlocal.shared(name))
end

describe("a shared local crossing real Lanes' lanes", function()
  it("as an argument reads the lane thread's own fields of the same name", function()
    local sh, name = fresh({ who = "default" })
    sh.who = "sender"
    check(sh, name, lanes.gen("*", gen_opts, reader)(sh, name):join())
  end)

  it("as an upvalue, with the module table as an upvalue too", function()
    local sh, name = fresh({ who = "default" })
    sh.who = "sender"
    -- Its upvalues: the shared local, its name and the module table.
    local make = body [[
      return function(sh, name, threadlocal)
        return function()
          local before = sh.who
          sh.who = "lane"
          return before, sh.who, threadlocal.shared(name).who, threadlocal.id()
        end
      end
    ]]
    local h = lanes.gen("*", gen_opts, make(sh, name, threadlocal))()
    check(sh, name, h:join())
  end)

  it("through a linda", function()
    local sh, name = fresh({ who = "default" })
    sh.who = "sender"
    local linda = lanes.linda()
    local h = lanes.gen("*", gen_opts, body [[
      return function(linda, name, reader)
        local _, s = linda:receive("sh")
        return reader(s, name)
      end
    ]])(linda, name, reader)
    linda:send("sh", sh)
    check(sh, name, h:join())
  end)

  it("fails with Lanes' error when it remembers a table field; its name crosses", function()
    local sh, name = fresh()
    sh.t = { k = 1 }
    assert.are.equal(1, sh.t.k)
    assert.are.equal(1, sh.t.k)
    local ok, err = pcall(function() return lanes.gen("*", gen_opts, reader)(sh, name):join() end)
    assert.is_false(ok)
    assert.matches("can't copy non%-deep full userdata across lanes", err)
    local h = lanes.gen("*", gen_opts, body [[
      return function(nm)
        local s = require("threadlocal").shared(nm)
        s.who = "lane"
        return s.who
      end
    ]])(name)
    assert.are.equal("lane", h:join())
  end)
end)

describe("a Local crossing real Lanes' lanes", function()
  it("fails with Lanes' error; a copy of its fields crosses as a table", function()
    local tl = threadlocal.new()
    tl.user = "alice"
    local ok, err = pcall(function()
      return lanes.gen("*", gen_opts, body "return function(o) return o.user end")(tl):join()
    end)
    assert.is_false(ok)
    assert.matches("can't copy non%-deep full userdata across lanes", err)
    local h = lanes.gen("*", gen_opts, body "return function(t) return t.user end")(threadlocal.fields(tl))
    assert.are.equal("alice", h:join())
  end)
end)

if jit and jit.status() then
  describe("a shared local with LuaJIT's second metatable", function()
    it("fails with Lanes' error: its __index holds FFI data", function()
      local sh, name = fresh()
      sh.n = 1
      local s = 0
      for _ = 1, 100 do s = s + sh.n end
      assert.are.equal(100, s)
      local ok, err = pcall(function() return lanes.gen("*", gen_opts, reader)(sh, name):join() end)
      assert.is_false(ok)
      assert.matches("Cannot copy upvalue type 'cdata'", err)
    end)
  end)
end
