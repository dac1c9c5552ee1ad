-- One child process of spec/reach_fuzz_spec.lua:
--
--   LUA spec/reach_fuzz_child.lua PATH CPATH list      prints the targets
--   LUA spec/reach_fuzz_child.lua PATH CPATH run N     runs target N
--
-- Every child walks all that the module makes reachable from Lua, the same
-- way, so that target N is the same object in each: the functions of the
-- module table (the names it answers to included), of the context
-- module, of every object's metatable, the upvalues, metatables and user
-- values found below those, and the registry entries the module made.
-- Nothing is found by name: only the objects to start from are made through
-- the public functions.  A target is one function, called with wrong
-- arguments, or one object given another metatable of the module.
--
-- Output, a line each: "c DESC" before every call (the last one names the
-- call that crashed), "e CLASS<tab>SHAPE" for each new error shape, "done",
-- then "f ..." as the state closes and runs the finalizers.
local lpath, cpath, mode, which = ...
package.path, package.cpath = lpath, cpath
io.stdout:setvbuf("line") -- a crash loses no line before it

local SMALL = os.getenv("TL_SMALL") ~= nil
local USER = "reach-fuzz user error"
local getmt, getuv_, getupvalue = debug.getmetatable, debug.getuservalue, debug.getupvalue
local HERE = debug.getinfo(1, "S").source

-- The user values of a userdata, whatever the version keeps them in.
local function uservalues(u)
  local out = {}
  if type(u) ~= "userdata" then return out end
  if _VERSION == "Lua 5.4" then
    for n = 1, 16 do
      local v, ok = getuv_(u, n)
      if not ok then break end
      out[n] = v
    end
  elseif getuv_ then
    out[1] = getuv_(u)
  elseif debug.getfenv then
    out[1] = debug.getfenv(u)
  end
  return out
end

local function upvalues(f)
  local out, i = {}, 1
  while true do
    local name, v = getupvalue(f, i)
    if name == nil then return out end
    out[i] = v
    i = i + 1
  end
end

local function walkable(v)
  local t = type(v)
  return t == "table" or t == "function" or t == "userdata"
end

-- What is there before the module is no target: the standard libraries and
-- all they hold, the FFI's too.  Nor are this file's own functions.
pcall(require, "ffi")
-- Lua's own buffers register a metatable on first use (5.4): use them now.
local _ = table.concat({ ("x"):rep(100000), "y" }, ("z"):rep(10000)):upper()
local known = {}
local function mark(v)
  if not walkable(v) or known[v] then return end
  known[v] = true
  if type(v) == "table" then
    for k, x in next, v do
      mark(k)
      mark(x)
    end
  elseif type(v) == "function" then
    for _, x in pairs(upvalues(v)) do mark(x) end
  end
  mark(getmt(v))
  for _, x in pairs(uservalues(v)) do mark(x) end
end
mark(_G)
mark(debug.getregistry())
mark(getmt(""))
mark(io.stdout)

local function keyset(t)
  local s = {}
  for k in next, t do s[k] = true end
  return s
end
local registry = debug.getregistry()
local before = {
  registry = keyset(registry),
  loaded = keyset(package.loaded),
  preload = keyset(package.preload),
}

-- Stable descriptions, for paths and for sorting keys whose order next()
-- does not fix: no addresses, which change from one process to the next.
local function sig(v, depth)
  local t = type(v)
  if t == "string" then return (("%q"):format(v):gsub("\n", "n")) end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  if t == "function" then
    local info = debug.getinfo(v, "S")
    if info.what == "C" then return "cfunction/" .. #upvalues(v) end
    return ("function@%s:%d"):format(info.short_src, info.linedefined)
  end
  if t == "userdata" and getmt(v) == nil then return t end -- light, as far as Lua can tell
  if (depth or 0) > 1 or (t ~= "table" and t ~= "userdata") then return t end
  local keys = {}
  local src = t == "table" and v or getmt(v) or {}
  for k, x in next, src do
    keys[#keys + 1] = (type(k) == "string" and k or "<" .. type(k) .. ">") .. "=" .. sig(x, (depth or 0) + 1)
  end
  table.sort(keys)
  for i = 9, #keys do keys[i] = nil end
  return t .. "{" .. table.concat(keys, ",") .. "}"
end

local function keyname(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return "." .. k end
  if type(k) == "string" or type(k) == "number" or type(k) == "boolean" then
    return "[" .. sig(k) .. "]"
  end
  return "[<" .. type(k) .. ">]"
end

-- The entries of t in a fixed order, each with its path suffix.
local function entries(t)
  local list = {}
  for k, v in next, t do
    list[#list + 1] = { k = k, v = v, name = keyname(k), order = keyname(k) .. "\0" .. sig(k) .. "\0" .. sig(v) }
  end
  table.sort(list, function(a, b) return a.order < b.order end)
  local count = {}
  for _, e in ipairs(list) do
    count[e.name] = (count[e.name] or 0) + 1
    if type(e.k) ~= "string" and type(e.k) ~= "number" and type(e.k) ~= "boolean" then
      e.name = e.name .. "#" .. count[e.name]
    end
  end
  return list
end

-- The module, and the objects to start the walk from.
local M = require "threadlocal"

-- The names the module table answers to: its own keys, and, when it has an
-- __index, every identifier in the module's file (its strings and its
-- built-in Lua files among them) is asked.
local function module_file()
  if package.searchpath then return package.searchpath("threadlocal", package.cpath) end
  for template in package.cpath:gmatch("[^;]+") do
    local path = template:gsub("%?", "threadlocal")
    local f = io.open(path, "rb")
    if f then
      f:close()
      return path
    end
  end
end

local names = {}
do
  local mt = getmt(M)
  local file = module_file()
  local f = file and io.open(file, "rb")
  if f and mt and type(rawget(mt, "__index")) == "function" then
    local data, asked = f:read("*a"), {}
    for word in data:gmatch("[%a_][%w_]+") do
      if #word <= 40 and not asked[word] then
        asked[word] = true
        if rawget(M, word) == nil and M[word] ~= nil then names[#names + 1] = word end
      end
    end
  end
  if f then f:close() end
  for k in next, M do
    if type(k) == "string" and rawget(M, k) ~= nil then names[#names + 1] = k end
  end
  table.sort(names)
end

local C = require "threadlocal.context"
local roots = {}
local function root(name, v, object) roots[#roots + 1] = { name = name, v = v, object = object } end

local loc = M.new()
loc.x = 1
local loc_init = M.new(function(self, n) self.n = n end, 1)
local _ = loc_init.n
local loc_nojit
if jit then -- a Local made with the JIT off keeps the C closures
  jit.off()
  loc_nojit = M.new()
  loc_nojit.x = 1
  jit.on()
end
local sh = M.shared("reach-fuzz", { t = { x = 1 }, n = 1 })
sh.s = "s"
local proxy = sh.t
for _ = 1, 20 do _ = sh.n end -- LuaJIT: the shared local's JIT metatable
local scope_local = M.scope(loc, { x = 2 })
local scope_shared = M.scope(sh, { n = 2 })
local snapshot = M.capture(sh)
M.fields(loc)
M.fields(sh)
M.fields(proxy)
M.run(snapshot, function() end)
M.with(loc, { y = 1 }, function() end)
local var = C.var("reach-fuzz", 1)
local token = var:set(2)
local ctx = C.copy()

root("M", M)
root("context", C)
root("local", loc, true)
root("local_init", loc_init, true)
if loc_nojit then root("local_nojit", loc_nojit, true) end
root("shared", sh, true)
root("proxy", proxy, true)
root("scope_local", scope_local, true)
root("scope_shared", scope_shared, true)
root("var", var, true)
root("token", token, true)
root("ctx", ctx, true)
root("threads", M.threads(loc))
-- Each object's __pairs, called right, hands out the iterator.
for i = 1, #roots do
  local mt = getmt(roots[i].v)
  local p = roots[i].object and type(mt) == "table" and rawget(mt, "__pairs")
  if type(p) == "function" then
    local ok, iter, state = pcall(p, roots[i].v)
    if ok then
      root("pairs_" .. roots[i].name, iter)
      if walkable(state) then root("pairs_state_" .. roots[i].name, state) end
    end
  end
end
for _, kind in ipairs { "registry", "loaded", "preload" } do
  local t = kind == "registry" and registry or package[kind]
  for _, e in ipairs(entries(t)) do
    if not before[kind][e.k] then root(kind .. e.name, e.v) end
  end
end
local fixed = #roots

-- The walk, breadth first: each value is named by a shortest path to it.
local seen, funcs, udata, tables, mts, is_mt = {}, {}, {}, {}, {}, {}
local queue, head, tail = {}, 1, 0
local function push(v, path, owner)
  if walkable(v) and not known[v] and not seen[v] then
    tail = tail + 1
    queue[tail] = { v = v, path = path, owner = owner }
  end
end
local function visit(v, path, owner)
  if seen[v] or type(v) == "function" and debug.getinfo(v, "S").source == HERE then return end
  seen[v] = path
  local t = type(v)
  if t == "function" then
    funcs[#funcs + 1] = { f = v, path = path, owner = owner }
    for i, x in pairs(upvalues(v)) do push(x, path .. ".^" .. i) end
    return
  end
  local mt = getmt(v)
  if t == "userdata" and known[mt] then return end -- Lua's own, as a library's handle
  if t == "userdata" then
    udata[#udata + 1] = { u = v, path = path }
  else
    tables[#tables + 1] = { t = v, path = path }
  end
  if type(mt) == "table" and not known[mt] then
    if not is_mt[mt] then
      is_mt[mt] = true
      mts[#mts + 1] = { mt = mt, path = path .. ".#mt" }
    end
    for _, e in ipairs(entries(mt)) do -- its functions are v's methods
      if type(e.v) == "function" then push(e.v, path .. ".#mt" .. e.name, v) end
    end
    push(mt, path .. ".#mt")
  end
  if t == "table" then
    for _, e in ipairs(entries(v)) do
      push(e.k, path .. "{" .. e.name .. "}")
      push(e.v, path .. e.name)
    end
  end
  for n, x in pairs(uservalues(v)) do push(x, path .. ".#uv" .. n) end
end
for i = 1, fixed do push(roots[i].v, roots[i].name) end

while head <= tail do
  local q = queue[head]
  queue[head], head = nil, head + 1
  visit(q.v, q.path, q.owner)
end

-- Tables that hold a metamethod are metatables too, though no object found
-- has them (the registry's, a finalizer's).
for _, e in ipairs(tables) do
  if not is_mt[e.t] then
    for k, v in next, e.t do
      if type(k) == "string" and k:match("^__") and type(v) == "function" then
        is_mt[e.t] = true
        mts[#mts + 1] = { mt = e.t, path = e.path }
        break
      end
    end
  end
end

-- The module's objects, one of each kind, to pass as arguments.
local objects, kinds = {}, {}
local function object(v, path)
  local k = type(v) .. ":" .. sig(v)
  if walkable(v) and not kinds[k] then
    kinds[k] = true
    local mt = getmt(v)
    local label = type(mt) == "table" and rawget(mt, "__name")
    label = type(label) == "string" and label or type(v)
    objects[#objects + 1] = { v = v, name = "<" .. label .. " " .. path .. ">" }
  end
end
for _, r in ipairs(roots) do
  if r.object then object(r.v, r.name) end
end
for _, e in ipairs(udata) do object(e.u, e.path) end

-- The swaps: each kind of full userdata found, given each other kind of
-- metatable (two of a kind, so that Locals swap theirs).
local swaps, mt_kinds, swap_mts, ud_kinds = {}, {}, {}, {}
for _, m in ipairs(mts) do
  local k = sig(m.mt)
  mt_kinds[k] = (mt_kinds[k] or 0) + 1
  if mt_kinds[k] <= 2 then swap_mts[#swap_mts + 1] = m end
end
for _, u in ipairs(udata) do
  local k = sig(u.u)
  if getmt(u.u) ~= nil and not ud_kinds[k] then -- a full userdata
    ud_kinds[k] = true
    for _, m in ipairs(swap_mts) do
      if getmt(u.u) ~= m.mt then swaps[#swaps + 1] = { u = u, m = m } end
    end
  end
end

local targets = {}
for _, f in ipairs(funcs) do targets[#targets + 1] = { kind = "function", name = f.path, f = f } end
for _, s in ipairs(swaps) do
  targets[#targets + 1] = { kind = "swap", name = s.u.path .. " <- " .. s.m.path, s = s }
end

if mode == "list" then
  print(("count functions %d userdata %d tables %d metatables %d objects %d swaps %d names %d"):format(
    #funcs, #udata, #tables, #mts, #objects, #swaps, #names))
  for i = 1, fixed do
    local r = roots[i]
    local mt = getmt(r.v)
    print(("root %s %s %s"):format(type(r.v), mt ~= nil and is_mt[mt] and "mt" or "-", r.name))
  end
  for i, t in ipairs(targets) do print(("target %d %s %s"):format(i, t.kind, t.name)) end
  print("done")
  return
end

-- Running one target.
local target = targets[tonumber(which)]
assert(target, "no target " .. tostring(which))
print("target " .. target.name)

local values = {
  { "nil", nil }, { "0", 0 }, { "-1", -1 }, { "2^53", 2 ^ 53 }, { "nan", 0 / 0 },
  { "huge", math.huge }, { "''", "" }, { "long string", ("x"):rep(5000) },
  { "true", true }, { "{}", {} }, { "{1,2,x={}}", { 1, 2, x = {} } },
  { "raising table", setmetatable({}, { __index = function() error(USER, 0) end,
    __newindex = function() error(USER, 0) end }) },
  { "function", function(...) return ... end },
  { "raising function", function() error(USER, 0) end },
  { "coroutine", coroutine.create(function() end) },
  { "io.stdout", io.stdout },
}
if newproxy then
  values[#values + 1] = { "newproxy(true)", newproxy(true) }
  values[#values + 1] = { "newproxy()", newproxy() }
end
local key = names[1] or "new" -- a name the module answers to
values[#values + 1] = { ("%q"):format(key), key }
key = values[#values]
if not SMALL then
  for _, o in ipairs(objects) do values[#values + 1] = { o.name, o.v } end
end

local shapes = {}
-- others: the class of an error that is no module's, nor a user function's.
local function report(err, others)
  local class, msg
  if type(err) ~= "string" then
    class, msg = "other", "a " .. type(err) .. " value"
  else
    msg = err:gsub("^[^\n]-:%d+: ", "") -- Lua's chunk:line: position
    if msg:find(USER, 1, true) then
      class = "user"
    elseif msg:find("^threadlocal: ") then
      class = "threadlocal"
    elseif msg:find("^bad argument #%d+ to ") then
      class = "bad argument"
    else
      class = others or "other"
    end
    msg = msg:gsub("0x%x+", "0x?"):gsub("\n.*", "")
    if #msg > 120 then msg = msg:sub(1, 117) .. "..." end
  end
  local k = class .. "\t" .. msg
  if not shapes[k] then
    shapes[k] = true
    print("e " .. k)
  end
end

local function call(desc, f, ...)
  io.write("c ", desc, "\n")
  local ok, err = pcall(f, ...)
  if not ok then report(err) end
  return ok, err
end

-- An operator on a swapped object: Lua's own errors there are expected.
local function operator(desc, f, ...)
  io.write("c ", desc, "\n")
  local ok, err = pcall(f, ...)
  if not ok then report(err, "operator") end
  return ok, err
end

local function run_function(f)
  local a1 = f.owner ~= nil and { "self", f.owner } or { "<local>", loc }
  call("()", f.f)
  for _, v in ipairs(values) do call("(" .. v[1] .. ")", f.f, v[2]) end
  for _, v in ipairs(values) do call(("(%s, %s)"):format(a1[1], v[1]), f.f, a1[2], v[2]) end
  for _, v in ipairs(values) do call(("(%s, %s)"):format(v[1], key[1]), f.f, v[2], key[2]) end
  for _, v in ipairs(values) do call(("(%s, 'k', %s)"):format(a1[1], v[1]), f.f, a1[2], "k", v[2]) end
  if not SMALL then
    for _, v in ipairs(values) do
      call(("(%s, {k=1}, %s)"):format(a1[1], v[1]), f.f, a1[2], { k = 1 }, v[2])
    end
  end
end

local function run_swap(s)
  local u = s.u.u
  debug.setmetatable(u, s.m.mt)
  -- Used: its methods, by every name a metatable of the module holds.
  local methods = {}
  for _, m in ipairs(mts) do
    for k in next, m.mt do
      if type(k) == "string" then methods[#methods + 1] = k end
    end
  end
  table.sort(methods, function(a, b) -- methods first, then metamethods
    local ma, mb = a:find("^__") ~= nil, b:find("^__") ~= nil
    if ma ~= mb then return mb end
    return a < b
  end)
  for i, k in ipairs(methods) do
    if k ~= methods[i - 1] then
      local ok, m = operator("obj." .. k, function() return u[k] end)
      if ok and type(m) == "function" then call("obj:" .. k .. "()", m, u) end
    end
  end
  -- And the operators.
  local ops = {
    { "tostring(obj)", function() return tostring(u) end },
    { "#obj", function() return #u end },
    { "obj.k", function() return u.k end },
    { "obj[1]", function() return u[1] end },
    { "obj.k = 1", function() u.k = 1 end },
    { "obj.k = {}", function() u.k = {} end },
    { "pairs(obj)", function() for _ in pairs(u) do end end },
    { "obj()", function() return u() end },
    { "obj .. ''", function() return u .. "" end },
    { "obj == <local>", function() return u == loc end },
  }
  if _VERSION == "Lua 5.4" then
    ops[#ops + 1] = { "local x <close> = obj", load("local u = ... do local x <close> = u end") }
  end
  for _, op in ipairs(ops) do operator(op[1], op[2], u) end
  -- Then each of the metatable's functions, with the object first.
  for _, e in ipairs(entries(s.m.mt)) do
    if type(e.v) == "function" then
      local d = "mt" .. e.name .. "(obj"
      call(d .. ")", e.v, u)
      call(d .. ", nil)", e.v, u, nil)
      call(d .. ", 'k')", e.v, u, "k")
      call(d .. ", 'k', 1)", e.v, u, "k", 1)
      call(d .. ", io.stdout)", e.v, u, io.stdout)
      call(d .. ", {})", e.v, u, {})
    end
  end
  call("collectgarbage()", collectgarbage)
  call("collectgarbage()", collectgarbage)
end

local ok, err = pcall(target.kind == "function" and run_function or run_swap,
  target.kind == "function" and target.f or target.s)
if not ok then print("driver error " .. tostring(err)) end
call("collectgarbage()", collectgarbage)
print("done")
print("f (the state closes: its finalizers run)")
