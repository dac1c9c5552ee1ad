-- Shared locals crossing Lanes' lanes, through the project's Lanes-like host
-- (helper.lanes in spec/c/tlhelper.c): a second state on another thread
-- requires threadlocal, gets a userdata of the source's size with the
-- metatable of the same name in its module table, and the source state calls
-- __lanesclone(clone, source, size), as Lanes 3.17 does; "linda" goes
-- through a keeper state first.  spec/lanes_real.lua does the same with real
-- Lanes, when it is installed (tools/test.sh).
local helper = require "tlhelper"
local threadlocal = require "threadlocal"

-- The lane: the received value and the name it should have; returns what
-- it read before and after its own write, what threadlocal.shared(name)
-- reads there, its thread's id and whether the two userdata are one.
local lane = [[
  local s, name = ...
  local threadlocal = require "threadlocal"
  local before = s.who
  s.who = "lane"
  local same = threadlocal.shared(name)
  return before, s.who, same.who, threadlocal.id(), rawequal(s, same), tostring(s)
]]

local n = 0
local function fresh(defaults)
  n = n + 1
  local name = "lanes.spec." .. n
  return threadlocal.shared(name, defaults), name
end

describe("a shared local crossing lanes (a Lanes-like host)", function()
  it("is found by Lanes: its metatable is the module's field shared_mt from open", function()
    local kind, same = helper.exec([[
      local threadlocal = require "threadlocal"
      local kind = type(rawget(threadlocal, "shared_mt"))
      return kind, debug.getmetatable(threadlocal.shared("lanes.spec.mt")) == threadlocal.shared_mt
    ]])
    assert.are.equal("table", kind)
    assert.is_true(same)
    assert.are.equal("function", type(threadlocal.shared_mt.__lanesclone))
  end)

  for _, how in ipairs { "direct", "linda" } do
    it("reads the lane thread's own fields of the same name (" .. how .. ")", function()
      local sh, name = fresh({ who = "default" })
      sh.who = "sender"
      local before, after, by_name, id, same, str = helper.lanes(how, sh, lane, name)
      assert.are.equal("default", before)   -- the lane's thread starts from the defaults
      assert.are.equal("lane", after)
      assert.are.equal("lane", by_name)     -- the same process-wide local
      assert.are_not.equal(threadlocal.id(), id)
      assert.is_false(same)                 -- the lane state's own userdata of it
      assert.are.equal(("threadlocal.shared '%s': "):format(name), str:match("^.-: "))
      assert.are.equal("sender", sh.who)    -- the sender's thread keeps its fields
    end)
  end

  it("starts with empty caches, whatever the sender's held", function()
    local sh, name = fresh()
    sh.who = "sender"
    for _ = 1, 3 do assert.are.equal("sender", sh.who) end -- remembered
    local before, after = helper.lanes("direct", sh, lane, name)
    assert.is_nil(before)
    assert.are.equal("lane", after)
    assert.are.equal("sender", sh.who)
  end)

  it("fails with Lanes' error when it remembers a table field: pass the name instead", function()
    local sh, name = fresh()
    sh.t = { k = 1 }
    assert.are.equal(1, sh.t.k)
    assert.are.equal(1, sh.t.k) -- the second read keeps the table's proxy as a user value
    local ok, err = pcall(helper.lanes, "direct", sh, lane, name)
    assert.is_false(ok)
    assert.matches("can't copy non%-deep full userdata across lanes", err)
    local ok2, by_name = helper.spawn([[
      local s = require("threadlocal").shared(...)
      s.who = "lane"
      return s.who
    ]], name):join()
    assert.is_true(ok2)
    assert.are.equal("lane", by_name)
  end)
end)

describe("a Local crossing lanes", function()
  it("has no __lanesclone: Lanes refuses it with its own error before any hook runs", function()
    local tl = threadlocal.new()
    tl.x = 1
    assert.is_nil(debug.getmetatable(tl).__lanesclone)
    local ok, err = pcall(helper.lanes, "direct", tl, "return ...")
    assert.is_false(ok)
    assert.matches("can't copy non%-deep full userdata across lanes", err)
    assert.are.equal(1, tl.x)
  end)
end)

describe("__lanesclone called from Lua", function()
  local clone = threadlocal.shared_mt.__lanesclone

  it("raises for anything but a shared local's memory, and writes nothing", function()
    local sh, name = fresh()
    sh.who = "here"
    local size = helper.rawlen(sh)
    local keys = {}
    for k in pairs(threadlocal.shared_mt) do
      if type(k) == "userdata" then keys[#keys + 1] = k end -- the names' light userdata
    end
    assert.is_true(#keys > 0)
    local null = helper.lightuserdata(0)
    local cases = {
      {}, { keys[1] }, { keys[1], keys[1] }, { keys[1], keys[1], size },
      { keys[1], keys[1], size + 1 }, { sh, sh, size }, { null, null, size },
      { keys[1], null, size }, { null, keys[1], size }, { "a", "b", size },
      { keys[1], keys[#keys], 2 ^ 40 },
    }
    for i, args in ipairs(cases) do
      local ok, err = pcall(clone, args[1], args[2], args[3])
      assert.is_false(ok, "case " .. i)
      assert.matches("^bad argument #%d to ", err)
    end
    assert.are.equal("here", sh.who)
    assert.are.equal(sh, threadlocal.shared(name))
    for _, k in ipairs(keys) do
      assert.are.equal("userdata", type(threadlocal.shared_mt[k]))
    end
  end)
end)

if jit and jit.status() then
  describe("a shared local on LuaJIT with the JIT on", function()
    it("read often has its second metatable, which Lanes cannot find: pass the name", function()
      local sh, name = fresh()
      sh.n = 1
      local s = 0
      for _ = 1, 100 do s = s + sh.n end
      assert.are.equal(100, s)
      assert.are_not.equal(threadlocal.shared_mt, debug.getmetatable(sh))
      local ok, err = pcall(helper.lanes, "direct", sh, lane, name)
      assert.is_false(ok)
      assert.matches("not found in the origin transfer database", err)
    end)
  end)
end
