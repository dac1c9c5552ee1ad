-- LuaJIT with the JIT on: the module's Lua metamethods call C through the
-- FFI, and the debug library hands their upvalues to any Lua code.  So no
-- FFI object but functions may be reachable from Lua, and each FFI function
-- that is must be safe whatever it is called with.  Both are checked in a
-- child process (os.getenv "TL_LUA" or luajit), where a crash is counted.
local jit_on = type(jit) == "table" and jit.status() == true
if not jit_on then return end

-- The child: sets up the module's objects, then either lists what it
-- reaches ("walk") or calls one FFI function, named by its label, with
-- every argument list of `hostile` from number `from` on ("call").
local CHILD = [=[
local path, cpath, mode, label, from = ...
package.path, package.cpath = path, cpath
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
assert(jit.status(), "the JIT is off")

-- The module's objects: a Local made with the JIT on, a shared local read
-- often enough to get the JIT's metatable, a proxy of a table field.
local tl = threadlocal.new()
tl.x = 1
local _ = tl.x
local sh = threadlocal.shared("jit_ffi_spec")
sh.n, sh.b, sh.s, sh.t = 1, true, "s", { k = 1 }
for _ = 1, 40 do _ = sh.n + (sh.b and 1 or 0) + #sh.s + sh.t.k end
local proxy = sh.t
_ = proxy.k
assert(debug.getinfo(debug.getmetatable(tl).__index, "S").what == "Lua", "a Local with C closures")
assert(debug.getinfo(debug.getmetatable(sh).__index, "S").what == "Lua", "a shared local with the C __index")

local ffi = require "ffi"
-- A function, or a pointer to one: "double ()", "double (*)()" (LuaJIT
-- does not print the parameters).
local function is_function(cd)
  local t = tostring(ffi.typeof(cd))
  return t:match("^ctype<[^(]*%(%*?%)%(%)>$") ~= nil
end

-- Every value reachable from the roots through tables (keys, values),
-- metatables, environments and upvalues.  A cdata gets every label it is
-- reached by; its name is the least of them, the same in every process.
local seen, found = {}, {}
local function visit(v, label)
  local ty = type(v)
  if ty == "cdata" then
    found[v] = found[v] or {}
    found[v][#found[v] + 1] = label
    return
  end
  if (ty ~= "table" and ty ~= "function" and ty ~= "userdata" and ty ~= "thread") or seen[v] then
    return
  end
  seen[v] = true
  if ty == "table" then
    for k, x in next, v do
      visit(k, "key in " .. label)
      visit(x, type(k) == "string" and ("field " .. k) or ("value in " .. label))
    end
  elseif ty == "function" then
    local info = debug.getinfo(v, "S")
    local owner = info.what == "C" and "a C function" or (info.source .. ":" .. info.linedefined)
    for i = 1, 255 do
      local name, x = debug.getupvalue(v, i)
      if name == nil then break end
      visit(x, ("upvalue %s of %s"):format(name ~= "" and name or i, owner))
    end
  end
  if ty ~= "table" or debug.getmetatable(v) then
    visit(debug.getmetatable(v), "metatable of " .. label)
  end
  if ty ~= "table" then visit(debug.getfenv(v), "environment of " .. label) end
end
visit({ threadlocal = threadlocal, tl = tl, sh = sh, proxy = proxy }, "the objects")
visit(debug.getregistry(), "the registry")
visit(package.loaded, "package.loaded")

local fns = {}
for cd, labels in pairs(found) do
  table.sort(labels)
  if is_function(cd) then fns[labels[1]] = cd
  elseif mode == "walk" then print(("bad\t%s\t%s"):format(labels[1], tostring(ffi.typeof(cd)))) end
end

if mode == "walk" then
  for name, cd in pairs(fns) do print(("fn\t%s\t%s"):format(name, tostring(ffi.typeof(cd)))) end
  print("end")
  return
end

-- Argument lists: nothing, each value alone, every pair, and longer lists
-- as a function with pointer parameters would take (p, s, len, out).
local lud = helper.lightuserdata
local values = {
  n = 29, nil, 0, 1, 2, 3, -1, 0.5, 2 ^ 31, 2 ^ 32, 2 ^ 32 + 1, 2 ^ 53, -2 ^ 63, 1e308,
  math.huge, -math.huge, 0 / 0, "", "x", ("k"):rep(100), {}, true, false, sh, tl, io.stdout,
  lud(0), lud(4096), print, coroutine.create(print),
}
local hostile = { { n = 0 } }
for i = 1, values.n do hostile[#hostile + 1] = { n = 1, values[i] } end
for i = 1, values.n do
  for j = 1, values.n do hostile[#hostile + 1] = { n = 2, values[i], values[j] } end
end
for i = 1, values.n do
  for _, len in ipairs { 1, 2 ^ 40, -1, 0 / 0 } do
    for j = 1, values.n do hostile[#hostile + 1] = { n = 4, values[i], "x", len, values[j] } end
  end
end
for i = 1, values.n do hostile[#hostile + 1] = { n = 5, values[i], values[i], 1, values[i], 1 } end

local fn = assert(fns[label], "no FFI function " .. label)
for m = tonumber(from), #hostile do
  io.write("call ", m, "\n")
  io.flush()
  pcall(fn, unpack(hostile[m], 1, hostile[m].n))
end
print("done")
]=]

local lua = os.getenv("TL_LUA") or "luajit"

local function run(...)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(CHILD)
  f:close()
  local args = { package.path, package.cpath, ... }
  for i = 1, #args do args[i] = ("%q"):format(tostring(args[i])) end
  local p = assert(io.popen(("%s %s %s 2>&1"):format(lua, file, table.concat(args, " "))))
  local out = p:read("*a")
  p:close()
  os.remove(file)
  return out
end

-- The FFI functions the child reaches: label -> ctype.
local function walk()
  local out = run("walk", "", 1)
  assert(out:match("\nend\n$"), out)
  local fns, bad = {}, {}
  for kind, label, ctype in out:gmatch("(%a+)\t([^\t\n]*)\t([^\n]*)\n") do
    if kind == "fn" then fns[label] = ctype else bad[label] = ctype end
  end
  return fns, bad
end

describe("the FFI under LuaJIT's JIT", function()
  it("reaches Lua code through no FFI object but functions", function()
    local fns, bad = walk()
    assert.same({}, bad)
    assert.is_not_nil(next(fns), "the walk found no FFI function at all")
  end)

  it("has only functions that survive any arguments", function()
    -- A crash ends the child: count it, and go on after the call that
    -- crashed, up to a few crashes per function.
    local crashes = {}
    for label in pairs(walk()) do
      local from = 1
      while true do
        local out = run("call", label, from)
        if out:match("\ndone\n$") then break end
        local last
        for m in out:gmatch("call (%d+)\n") do last = tonumber(m) end
        assert(last, ("the child calling %s died before any call:\n%s"):format(label, out))
        crashes[label] = (crashes[label] or 0) + 1
        if crashes[label] >= 5 then break end
        from = last + 1
      end
    end
    assert.same({}, crashes)
  end)
end)
