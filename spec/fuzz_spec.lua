-- Hostile input from Lua: random keys and values of every kind thrown at
-- both kinds of local and at every module function.  Each call must work,
-- or raise a threadlocal: error (or a standard bad argument error, or the
-- error of a user function we passed in) and leave the fields as they were.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

local SEED, OPS = 20261126, 4000

-- A deterministic generator (math.random differs between Lua versions).
local state = SEED
local function rand(n) -- 1..n
  state = (state * 1103515245 + 12345) % 2147483648
  return state % n + 1
end

local USER_ERROR = setmetatable({}, { __tostring = function() return "user error" end })

local tl, sh -- the targets; tl_gc values touch tl from their __gc

local function random_string()
  local r = rand(6)
  if r == 1 then return "" end
  if r == 2 then return ("x"):rep(20000 + rand(1000)) end
  local t = {}
  for i = 1, rand(12) do t[i] = string.char(rand(256) - 1) end
  return table.concat(t)
end

local make_value
local function random_table(depth)
  local t = {}
  for _ = 1, rand(4) do
    local k = make_value(depth + 1)
    if k ~= nil and k == k then t[k] = make_value(depth + 1) end
  end
  local r = rand(8)
  if r == 1 then t.self = t end -- cyclic
  if r == 2 then
    setmetatable(t, { __index = function() error(USER_ERROR) end, __eq = function() return true end })
  end
  if r == 3 then
    local deep = t
    for _ = 1, 150 do deep.next = {}; deep = deep.next end
  end
  return t
end

function make_value(depth)
  depth = depth or 0
  local r = rand(depth > 2 and 9 or 13)
  if r == 1 then return nil end
  if r == 2 then return rand(2) == 1 end
  if r == 3 then return rand(2000) - 1000 end
  if r == 4 then return ({ 0 / 0, 1 / 0, -1 / 0, -0.0, 0.5, 2 ^ 53, -2 ^ 63 })[rand(7)] end
  if r == 5 then return random_string() end
  if r == 6 then return helper.lightuserdata(rand(1000)) end
  if r == 7 then return function() error(USER_ERROR) end end
  if r == 8 then return coroutine.create(function() end) end
  if r == 9 then return io.stdout end
  if r == 10 then return random_table(depth) end
  if r == 11 then return support.gc_value(function() tl.from_gc = true end) end
  if r == 12 then return ({ tl, sh, threadlocal })[rand(3)] end
  local ok, p = pcall(function() return sh.t end)
  return ok and p or nil
end

-- Equality of two field copies (fields() results), NaN equal to NaN.
local function same(a, b, seen)
  if a ~= a and b ~= b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return rawequal(a, b) or a == b end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in next, a do
    if not same(v, rawget(b, k), seen) then return false end
  end
  for k in next, b do
    if rawget(a, k) == nil then return false end
  end
  return true
end

-- A field copy without the field the gc_value finalizers set: they run at
-- any allocation, the making of the arguments and the call's own included.
local function without_gc(fields)
  fields.from_gc = nil
  return fields
end

local function acceptable(err)
  if err == USER_ERROR then return true end
  if type(err) ~= "string" then return false end
  return support.bare(err):match("^threadlocal: ") or err:match("bad argument #%d") or err == "not enough memory"
end

describe("hostile input (seed " .. SEED .. ", " .. OPS .. " operations) #fuzz", function()
  it("either works or raises a clear error, and a failed call changes nothing", function()
    tl = threadlocal.new()
    sh = threadlocal.shared(support.unique("fuzz"))
    sh.t = { seed = SEED }
    local failures, worked, refused = {}, 0, 0
    local ops = {
      function() return tl, function(k, v) tl[k] = v end end,
      function() return sh, function(k, v) sh[k] = v end end,
      function()
        local ok, p = pcall(function() return sh.t end)
        if not ok or type(p) ~= "userdata" then sh.t = {}; p = sh.t end
        return p, function(k, v) p[k] = v end
      end,
    }
    local reads = {
      function(o, k) return o[k] end,
      function(o) return #o end,
      function(o) return tostring(o) end,
      function(o) return threadlocal.fields(o) end,
      function(o) if support.has_pairs then for _ in pairs(o) do end end end,
    }
    local calls = {
      function(a, b) return threadlocal.new(a, b) end,
      function(a, b) return threadlocal.shared(a, b) end,
      function(a) return threadlocal.clear(a) end,
      function(a) return threadlocal.fields(a) end,
      function(a) for _ in threadlocal.threads(a) do end end,
      function(a) return threadlocal(a) end,
    }
    for i = 1, OPS do
      local r = rand(10)
      local target, set = ops[rand(#ops)]()
      local before = threadlocal.fields(target)
      local ok, err
      if r <= 5 then
        local k, v = make_value(), make_value()
        ok, err = pcall(set, k, v)
      elseif r <= 8 then
        ok, err = pcall(reads[rand(#reads)], target, make_value())
      else
        ok, err = pcall(calls[rand(#calls)], make_value(), make_value())
        before = nil -- a module call may legitimately clear or start fields
      end
      if ok then
        worked = worked + 1
      else
        refused = refused + 1
        if not acceptable(err) then
          failures[#failures + 1] = ("op %d: unclear error %s"):format(i, tostring(err))
        elseif before and not same(without_gc(before), without_gc(threadlocal.fields(target))) then
          failures[#failures + 1] = ("op %d: a failed call changed the fields (%s)"):format(i, tostring(err))
        end
      end
      if i % 500 == 0 then collectgarbage() end -- run __gc tricks now and then
    end
    support.full_gc(2)
    assert.same({}, failures)
    assert.is_true(worked > OPS / 4 and refused > OPS / 10,
      ("worked %d, refused %d: the mix should exercise both"):format(worked, refused))
    -- and everything still works afterwards
    tl.after, sh.after = 1, 2
    assert.equal(1, tl.after)
    assert.equal(2, sh.after)
  end)
end)

-- The deepest level a structure reaches below a table, Lua table or proxy.
local function height(t)
  local h = 0
  local iter = type(t) == "table" and t or support.has_pairs and t or threadlocal.fields(t)
  for _, v in pairs(iter) do
    if type(v) == "table" or type(v) == "userdata" then
      local c = height(v) + 1
      if c > h then h = c end
    end
  end
  return h
end

local TOODEEP = "threadlocal: cannot store tables nested this deep"

describe("hostile structures and keys #fuzz", function()
  it("proxies deepen a structure only to the nesting limit", function()
    local s = threadlocal.shared(support.unique("fuzz deep"))
    s.a = {}
    local p, n = s.a, 0
    for _ = 1, 1000 do
      local ok, err = pcall(function() p.x = {} end)
      if not ok then
        assert.equal(TOODEEP .. " in field 'x'", support.bare(err))
        break
      end
      p, n = p.x, n + 1
    end
    assert.equal(99, n) -- s.a is at depth 1: 100 levels in all
    local ok, err = pcall(function() s.a.x = s.a end) -- a copy one level deeper
    assert.is_false(ok)
    assert.equal(TOODEEP .. " in field 'x'", support.bare(err))
    s.b = s.a -- the same depth is fine
    assert.equal(100, height(threadlocal.fields(s)))
    threadlocal.clear(s)
    assert.is_nil(s.a)
  end)

  it("random copies of proxies between random depths keep the limit", function()
    local s = threadlocal.shared(support.unique("fuzz copies"))
    s.root = { {} }
    local proxies = { s.root }
    local refused = 0
    for _ = 1, 400 do
      local src = proxies[rand(#proxies)]
      local dst = proxies[rand(#proxies)]
      local ok, err = pcall(function()
        local v = rand(3) == 1 and { src } or src
        dst[rand(4)] = v
      end)
      if ok then
        local ok2, child = pcall(function() return dst[1] end)
        if ok2 and type(child) == "userdata" then proxies[#proxies + 1] = child end
      else
        assert.truthy(support.bare(err):find(TOODEEP, 1, true) == 1 or err:find("stale", 1, true) or
          err:find("not valid", 1, true), err)
        refused = refused + 1
      end
      if #proxies > 40 then proxies = { s.root } end
    end
    assert.is_true(height(threadlocal.fields(s)) <= 100)
    assert.is_true(refused > 0)
    threadlocal.clear(s)
  end)

  it("keys crafted to collide under a simple hash are all kept apart", function()
    local s = threadlocal.shared(support.unique("fuzz keys"))
    local keys = {}
    if math.type then -- integers: ((T << 32) | j) * C^-1 share T under (x * C) >> 32
      keys = load("local keys, c, x = {}, 0x9e3779b97f4a7c15, 0x9e3779b97f4a7c15\n" ..
        "for _ = 1, 6 do x = x * (2 - c * x) end\n" .. -- x = C^-1 mod 2^64
        "for j = 1, 3000 do keys[j] = ((0x5eed << 32) | j) * x end return keys")()
    else -- integral doubles, spaced by a power of two as a weak hash would bunch them
      for j = 1, 3000 do keys[#keys + 1] = j * 2 ^ 32 end
    end
    for j = 1, 3000 do keys[#keys + 1] = ("\0"):rep(j % 7) .. string.char(j % 256, math.floor(j / 256)) end
    for i, k in ipairs(keys) do s[k] = i end
    for i, k in ipairs(keys) do assert.equal(i, s[k]) end
    for i = 1, #keys, 2 do s[keys[i]] = nil end
    for i, k in ipairs(keys) do assert.equal(i % 2 == 0 and i or nil, s[k]) end
    threadlocal.clear(s)
  end)

  it("accepts the same defaults again when they hold NaN", function()
    local name = support.unique("fuzz nan")
    local a = threadlocal.shared(name, { x = 0 / 0, t = { y = 0 / 0 } })
    local b = threadlocal.shared(name, { x = 0 / 0, t = { y = 0 / 0 } })
    assert.equal(a, b)
    assert.is_false(pcall(threadlocal.shared, name, { x = 1 }))
  end)

  if support.has_pairs then -- no __pairs on Lua 5.1 and LuaJIT
    it("hands out in pairs the proxies that indexing gives", function()
      local s = threadlocal.shared(support.unique("fuzz pairs"))
      s.a, s.b = { 1 }, { 2 }
      local n = 0
      for k, v in pairs(s) do
        assert.is_true(v == s[k])
        n = n + 1
      end
      for k, v in pairs(s.a) do assert.equal(v, s.a[k]) end
      assert.equal(2, n)
    end)
  end

  it("gives one working userdata per name even after the debug library forged the map", function()
    local name = support.unique("fuzz forged")
    local a = threadlocal.shared(name)
    a.x = 1
    local mt, forged = debug.getmetatable(a), 0
    for k, v in next, mt do
      if rawequal(v, a) then mt[k], forged = "forged", forged + 1 end
    end
    assert.equal(1, forged)
    local b = threadlocal.shared(name)
    assert.equal("userdata", type(b))
    assert.equal(1, b.x)
    assert.equal(b, threadlocal.shared(name))
    assert.equal("threadlocal.shared '" .. name .. "'", tostring(b):match("^(.-): "))
  end)

  it("prints integer keys as integers in refusals, and cuts long paths", function()
    local s = threadlocal.shared(support.unique("fuzz messages"))
    local ok, err = pcall(function() s.q = { [2 ^ 60] = print } end)
    assert.is_false(ok)
    assert.equal("threadlocal: cannot store a function in field 'q[1152921504606846976]'", support.bare(err))
    local t, name = print, ("k"):rep(40)
    for _ = 1, 20 do t = { [name] = t } end
    ok, err = pcall(function() s.long = t end)
    assert.is_false(ok)
    assert.is_true(#support.bare(err) < 256 and err:sub(-4) == "...'", err)
  end)
end)
