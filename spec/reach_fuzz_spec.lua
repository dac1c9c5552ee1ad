-- Everything of the module that Lua code can reach, called with wrong
-- arguments (#19): the functions of the module table and of the context
-- module, every object's metatable, their upvalues, the registry entries the
-- module makes, and objects given one another's metatables.  Each target
-- runs in a child process (spec/reach_fuzz_child.lua, which finds them by
-- walking, not by name), so that a crash is counted, not fatal.  Any error
-- may be raised; only a crash fails: a signal, an exit status other than a
-- Lua error's, a sanitizer report, or a hang.
--
-- TL_SMALL set: fewer calls per target (no module objects as arguments,
-- no third argument after a table).  The valgrind pass of make test leaves
-- this spec out (#nogrind): its children would not run under valgrind, and
-- the pass under AddressSanitizer runs them all.
local SMALL = os.getenv("TL_SMALL") ~= nil
local LUA = os.getenv("TL_LUA")
if LUA == nil or LUA == "" then
  LUA = jit and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
end
local DRIVER = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "reach_fuzz_child.lua"

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function succeeded(r) return r == true or r == 0 end
-- A hung child fails the spec instead of blocking it.
local TIMEOUT = succeeded(os.execute("command -v timeout >/dev/null 2>&1")) and "timeout -k 10 120 " or ""

-- Runs the driver with args; returns its stdout, its stderr and its exit
-- status as the shell reports it (128 + N: killed by signal N).  The
-- subshell's own "Segmentation fault" line goes with the child's stderr.
local function spawn(args)
  local errfile = os.tmpname()
  local cmd = ("(%s%s %s %s %s %s; exit $?) 2>%s; printf '\\nrc=%%d\\n' $?"):format(TIMEOUT, quote(LUA),
    quote(DRIVER), quote(package.path), quote(package.cpath), args, quote(errfile))
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  local f = io.open(errfile, "rb")
  local err = f and f:read("*a") or ""
  if f then f:close() end
  os.remove(errfile)
  local rc = tonumber(out:match("\nrc=(%d+)\n$"))
  return out:gsub("\nrc=%d+\n$", ""), err, rc
end

local SANITIZERS = { "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:" }

-- Why the child counts as crashed, or nil; and whether a Lua error ended it.
local function verdict(out, err, rc)
  local what = err:match("ERROR: (%a+Sanitizer: [%w%-]+)") or err:match("runtime error: [^\n]*")
  if what then return what end
  for _, s in ipairs(SANITIZERS) do
    if err:find(s, 1, true) then return "a report of " .. s end
  end
  if rc == nil then return "no exit status" end
  if rc == 124 or rc == 137 and TIMEOUT ~= "" then return "no end within the time limit" end
  if rc >= 128 then return "killed by signal " .. (rc - 128) end
  if rc == 1 then return nil, true end -- a Lua error: the interpreter's own exit
  if rc ~= 0 then return "exit status " .. rc end
  if not out:find("\ndone$") and not out:find("\ndone\n") then return "ended before its last line" end
end

local listing -- what the list run found: counts, roots, targets

local function list()
  if listing then return listing end
  local out, err, rc = spawn("list")
  local crash, luaerror = verdict(out, err, rc)
  assert(not crash and not luaerror, "the walk itself failed: " .. tostring(crash) .. "\n" .. err)
  listing = { counts = {}, roots = {}, targets = {} }
  local counts = out:match("^count ([^\n]*)")
  for k, n in counts:gmatch("(%a+) (%d+)") do listing.counts[k] = tonumber(n) end
  for kind, mt, name in out:gmatch("\nroot (%a+) (%S+) ([^\n]*)") do
    listing.roots[#listing.roots + 1] = { name = name, type = kind, mt = mt == "mt" }
  end
  for i, kind, name in out:gmatch("\ntarget (%d+) (%a+) ([^\n]*)") do
    listing.targets[tonumber(i)] = { kind = kind, name = name }
  end
  return listing
end

describe("everything reachable from Lua, called with wrong arguments", function()
  it("is found by the walk: functions, objects and their metatables, registry entries #nogrind", function()
    local l = list()
    local c = l.counts
    print(("# reach fuzz (%s): %d functions, %d userdata, %d tables, %d metatables, %d module names, %d targets")
      :format(LUA, c.functions, c.userdata, c.tables, c.metatables, c.names, #l.targets))
    assert.is_true(c.functions >= 50, "functions found: " .. c.functions)
    assert.is_true(c.names >= 10, "names the module table answers to: " .. c.names)
    assert.is_true(c.metatables >= 10, "metatables found: " .. c.metatables)
    assert.is_true(c.swaps >= 20, "swaps: " .. c.swaps)
    -- Every object made to start from has a metatable, and the walk took it.
    local objects, registry, anchors = {}, 0, 0
    for _, r in ipairs(l.roots) do
      if r.type == "userdata" or r.name == "M" or r.name == "var" or r.name == "token" or r.name == "ctx" then
        objects[r.name] = r.mt
      end
      if r.name:find("^registry") then
        registry = registry + 1
        if r.type == "userdata" and r.mt then anchors = anchors + 1 end -- the state's own
      end
    end
    for _, name in ipairs { "M", "local", "local_init", "shared", "proxy", "scope_local", "scope_shared",
      "var", "token", "ctx" } do
      assert.is_true(objects[name], "no metatable found for " .. name)
    end
    if jit then assert.is_true(objects.local_nojit, "no metatable found for local_nojit") end
    assert.is_true(registry >= 5, "new registry entries: " .. registry)
    assert.is_true(anchors >= 1, "no userdata of the module's own in the registry")
  end)

  it("crashes in no target #nogrind", function()
    local l = list()
    local crashes, aborted, calls, shapes, classes = {}, {}, 0, {}, {}
    local started = os.time()
    for i, t in ipairs(l.targets) do
      local out, err, rc = spawn("run " .. i)
      local crash, luaerror = verdict(out, err, rc)
      local last = "before its first call"
      for line in out:gmatch("[^\n]+") do
        local what, rest = line:match("^(%a) (.*)")
        if what == "c" or what == "f" then
          calls = calls + (what == "c" and 1 or 0)
          last = rest
        elseif what == "e" then
          if not shapes[rest] then
            local class = rest:match("^[^\t]*")
            classes[class] = (classes[class] or 0) + 1
          end
          shapes[rest] = (shapes[rest] or 0) + 1
        end
      end
      local first = out:match("^[^\n]*")
      if first ~= "target " .. t.name then -- each child must walk to the same targets
        crash = crash or "walked to another target: " .. first
      end
      local driver = out:match("\ndriver error ([^\n]*)")
      if crash then
        crashes[#crashes + 1] = ("%s %s: %s, at call %s"):format(t.kind, t.name, crash, last)
      elseif luaerror or driver then
        aborted[#aborted + 1] = ("%s %s: %s"):format(t.kind, t.name, driver or err:match("^[^\n]*"))
      end
    end
    print(("# reach fuzz (%s): %d targets, %d calls in %d s, %d crashed, %d ended by a Lua error%s"):format(
      LUA, #l.targets, calls, os.time() - started, #crashes, #aborted, SMALL and " (TL_SMALL)" or ""))
    print(("# reach fuzz (%s): distinct errors: %d threadlocal:, %d bad argument, %d of a user function, "
      .. "%d of Lua on an operator, %d other"):format(LUA, classes.threadlocal or 0, classes["bad argument"] or 0,
      classes.user or 0, classes.operator or 0, classes.other or 0))
    -- The other errors (from Lua itself) that most targets raise.
    local others = {}
    for shape, n in pairs(shapes) do
      if shape:find("^other\t") then others[#others + 1] = { shape = shape:sub(7), n = n } end
    end
    table.sort(others, function(a, b) return a.n > b.n or a.n == b.n and a.shape < b.shape end)
    for i = 1, math.min(5, #others) do
      print(("# reach fuzz:   other, from %d targets: %s"):format(others[i].n, others[i].shape))
    end
    for i = 1, math.min(10, #aborted) do print("# reach fuzz: ended by a Lua error: " .. aborted[i]) end
    assert.is_true(calls >= (SMALL and 3000 or 8000), "calls made: " .. calls)
    assert.same({}, crashes)
  end)
end)
