-- Plain scripts that used to crash the process.  Each runs in a child
-- process, so that a crash fails its test and not the whole run.  The
-- module's metatables and registry entries are found by walking, not by
-- name.
local support = require "support"

-- A bad-argument or threadlocal: error, after Lua's optional position.
local function our_error(msg)
  msg = tostring(msg):gsub("^[^:\n]*:%d+: ", "")
  return msg:find("^bad argument #%d") ~= nil or msg:find("^threadlocal: ") ~= nil
end

local PRELUDE = [[
local tl = require "threadlocal"
if jit then jit.off() end
local function our_error(msg)
  msg = tostring(msg):gsub("^[^:\n]*:%d+: ", "")
  return msg:find("^bad argument #%d") ~= nil or msg:find("^threadlocal: ") ~= nil
end
-- The tables the module added to the registry while f ran.
local function new_registry_tables(f)
  local before = {}
  for k in pairs(debug.getregistry()) do before[k] = true end
  f()
  local found = {}
  for k, v in pairs(debug.getregistry()) do
    if not before[k] and type(v) == "table" then found[#found + 1] = v end
  end
  return found
end
]]

local function script_ok(code, prefix)
  local ok, out = support.run_script(PRELUDE .. code, prefix)
  assert(ok, out)
  return out
end

describe("a plain script cannot crash the process", function()
  it("with the module table's metamethods called by hand", function()
    script_ok [[
      local mt = getmetatable(tl)
      assert(rawget(mt, "__index") == nil) -- the names are in the table itself
      local ok, err = pcall(mt.__call)
      assert(not ok and our_error(err), err)
      ok, err = pcall(mt.__call, 42)
      assert(not ok and our_error(err), err)
      assert(type(tl()) == "userdata") -- the ordinary call still works
    ]]
  end)

  it("with a scope closed again by the init its own close runs", function()
    script_ok [[
      for _ = 1, 20 do
        local S
        local L = tl.new(function() if S then local s = S; S = nil; s:close() end end)
        S = tl.scope(L, { a = 1 })
        assert(L.a == 1)
        local k = S
        tl.clear(L)
        k:close()
        collectgarbage()
        assert(L.a == nil)
        k:close() -- closed: nothing happens
      end
    ]]
  end)

  it("with finalizers called by hand with anything", function()
    script_ok [[
      local loc, sh = tl.new(), tl.shared("crash-spec")
      local scope = tl.scope(loc, {})
      local mts = { debug.getmetatable(scope) }
      for _, t in ipairs(new_registry_tables(function()
        tl.capture(sh); tl.fields(sh); tl.run({}, function() end)
      end)) do mts[#mts + 1] = t end
      -- the state anchor: the first upvalue of a Local's C __index (Lua
      -- 5.1's debug library does not read C upvalues)
      local _, st = debug.getupvalue(debug.getmetatable(loc).__index, 1)
      assert(type(st) == "userdata" or (_VERSION == "Lua 5.1" and not jit))
      mts[#mts + 1] = st and debug.getmetatable(st)
      local n = 0
      for _, mt in ipairs(mts) do
        for _, mm in ipairs { "__gc", "__close" } do
          local f = rawget(mt, mm)
          if f then
            for _, x in ipairs { io.stdout, 1, "s", {}, loc, sh, scope, st or false } do
              pcall(f, x)
            end
            pcall(f)
            n = n + 1
          end
        end
      end
      -- the scope's __gc and __close, the state anchor's __gc; on 5.4 the
      -- __close of run's guard (elsewhere run keeps no guard object)
      assert(n >= (st and 3 or 2) + (_VERSION == "Lua 5.4" and 1 or 0), n)
      loc.x = 1
      collectgarbage()
      assert(loc.x == 1)
    ]]
  end)

  it("with the C helpers of run, capture and fields called by hand from a call hook", function()
    script_ok [[
      local sh = tl.shared("crash-spec-helpers")
      sh.a = { 1 }
      -- A call hook sees every function lua_pcall calls, C ones too, and
      -- debug.getinfo gives it the function.
      local helpers = {}
      debug.sethook(function()
        local ar = debug.getinfo(2, "Sf")
        if ar.what == "C" then helpers[#helpers + 1] = ar.func end
      end, "c")
      tl.capture(sh)
      tl.fields(sh)
      tl.fields(sh.a)
      tl.run({ ["crash-spec-helpers"] = { b = 2 } }, function() end)
      debug.sethook()
      for _, f in ipairs(helpers) do
        for _, args in ipairs { {}, { {} }, { {}, {} }, { sh }, { {}, sh } } do
          pcall(f, (table.unpack or unpack)(args))
        end
      end
      assert(sh.a[1] == 1)
    ]]
  end)

  it("with an outer run's guard closed from inside a nested run", function()
    script_ok [[
      local sh = tl.shared("crash-spec-nested")
      sh.v = "own"
      local seen
      tl.run({ ["crash-spec-nested"] = { v = "run1" } }, function()
        local outer
        for i = 1, 10 do
          local name, g = debug.getlocal(2, i)
          if name == nil then break end
          if type(g) == "userdata" and debug.getmetatable(g) then outer = g end
        end
        tl.run({ ["crash-spec-nested"] = { v = "run2" } }, function()
          -- the outer run is not the innermost: closing it by hand does nothing
          if outer then debug.getmetatable(outer).__close(outer) end
          assert(sh.v == "run2")
        end)
        seen = sh.v
      end)
      assert(seen == "run1", seen)
      assert(sh.v == "own", sh.v)
    ]]
  end)

  it("with the guard of a running run closed from inside fn", function()
    script_ok [[
      local sh = tl.shared("crash-spec-run")
      sh.own = "mine"
      local found = false
      local r = tl.run({ ["crash-spec-run"] = { job = 1 } }, function()
        for i = 1, 10 do
          local name, g = debug.getlocal(2, i)
          if name == nil then break end
          local mt = type(g) == "userdata" and debug.getmetatable(g)
          for _, mm in ipairs { "__gc", "__close" } do
            if mt and rawget(mt, mm) then found = true; mt[mm](g) end
          end
        end
        -- closed by hand: the thread's own fields are back early
        if found then assert(sh.job == nil and sh.own == "mine") else assert(sh.job == 1) end
        return "done"
      end)
      assert(r == "done")
      assert(sh.own == "mine" and sh.job == nil)
      collectgarbage()
      io.write(found and "guard reached\n" or "guard not reached\n")
    ]]
  end)

  it("with a scope whose opening failed, reached from a message handler", function()
    script_ok [[
      local sh, loc = tl.shared("crash-spec-open"), tl.new()
      for _, target in ipairs { sh, loc } do
        local scopes = {}
        local ok, err = xpcall(function() return tl.scope(target, { f = print, [{}] = 1 }) end,
          function(e)
            for level = 1, 3 do
              for i = 1, 20 do
                local name, v = debug.getlocal(level, i)
                if name == nil then break end
                local mt = type(v) == "userdata" and debug.getmetatable(v)
                if mt and rawget(mt, "close") then scopes[#scopes + 1] = v end
              end
            end
            return e
          end)
        if target == sh then assert(not ok and our_error(err), err) end
        if target == sh then assert(#scopes == 1, #scopes) end
        for _, s in ipairs(scopes) do s:close() end
      end
      sh.f = 1
      assert(sh.f == 1)
    ]]
  end)

  it("with module objects given each other's metatables", function()
    script_ok [[
      local mts, objs = {}, {}
      local function obj(x) objs[#objs + 1] = x; return x end
      local loc, sh = obj(tl.new()), obj(tl.shared("crash-spec-swap"))
      sh.t = {}
      obj(sh.t)
      obj(tl.scope(tl.new(), { a = 1 }))
      obj(tl.scope(tl.shared("crash-spec-swap2"), { a = 1 }))
      local _, st = debug.getupvalue(debug.getmetatable(loc).__index, 1)
      if st then obj(st) end
      for _, t in ipairs(new_registry_tables(function()
        tl.capture(sh); tl.run({}, function() end)
      end)) do mts[#mts + 1] = t end
      for _, o in ipairs(objs) do mts[#mts + 1] = debug.getmetatable(o) end
      local calls = 0
      for _, mt in ipairs(mts) do
        for _, make in ipairs {
          function() return tl.new() end, function() return tl.shared("crash-spec-swap3") end,
          function() return tl.scope(tl.new(), { a = 1 }) end,
          function() return tl.scope(tl.shared("crash-spec-swap4"), { a = 1 }) end,
          function() local s = tl.shared("crash-spec-swap5"); s.t = {}; return s.t end,
        } do
          local o = make()
          local own = debug.getmetatable(o)
          debug.setmetatable(o, mt)
          for _, name in ipairs { "close", "__close", "__gc", "__tostring", "__index", "__newindex",
                                  "__len", "__pairs" } do
            local f = rawget(mt, name)
            if type(f) == "function" then
              pcall(f, o, "k", 1)
              calls = calls + 1
            end
          end
          pcall(function() return o:close() end)
          -- an object whose own finalizer frees something gets it back, or
          -- that would leak (not crash)
          if rawget(own, "__gc") then debug.setmetatable(o, own) end
          o = nil
          collectgarbage()
        end
      end
      assert(calls > 50, calls)
    ]]
  end)

  it("with a zero-size userdata given to the metamethods (Lua 5.1, LuaJIT)", function()
    if not newproxy then
      assert.is_nil(rawget(_G, "newproxy")) -- 5.2+: plain Lua cannot make one
      return
    end
    local code = [[
      local sh = tl.shared("crash-spec-proxy")
      for _, mt in ipairs { debug.getmetatable(tl.new()), debug.getmetatable(sh) } do
        for _, name in ipairs { "__index", "__newindex" } do
          local ok, err = pcall(mt[name], newproxy(), "x", 1)
          assert(not ok and our_error(err), err)
          ok, err = pcall(mt[name], newproxy(true), "x", 1)
          assert(not ok and our_error(err), err)
        end
      end
    ]]
    local valgrind = io.popen("valgrind --version 2>/dev/null"):read("*a")
    script_ok(code, valgrind:find("valgrind") and "valgrind -q --error-exitcode=99" or nil)
  end)
end)

describe("threadlocal.with", function()
  local threadlocal = require "threadlocal"

  it("returns fn's results when fn releases the thread", function()
    local loc, sh = threadlocal.new(), threadlocal.shared(support.unique("with-release"))
    for _, target in ipairs { loc, sh } do
      local a, b = threadlocal.with(target, { a = 1 }, function()
        threadlocal.release()
        return "result", 2
      end)
      assert.equal("result", a)
      assert.equal(2, b)
      assert.is_nil(target.a) -- the new identity has nothing of the scope
    end
  end)

  it("raises fn's own error when fn releases the thread", function()
    local loc = threadlocal.new()
    local ok, err = pcall(threadlocal.with, loc, { a = 1 }, function()
      threadlocal.release()
      error("fn's own", 0)
    end)
    assert.is_false(ok)
    assert.equal("fn's own", err)
  end)

  it("still refuses a plain close after release", function()
    local loc = threadlocal.new()
    local s = threadlocal.scope(loc, { a = 1 })
    threadlocal.release()
    local ok, err = pcall(s.close, s)
    assert.is_false(ok)
    assert.is_true(our_error(err))
  end)
end)
