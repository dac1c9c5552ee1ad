-- make bench BASE=<rev>: this tree's build ("new") against the base's
-- ("old"), from bench/compare.sh, which builds the base.
--
--   LUA bench/compare.lua LUA NEW_BUILD OLD_BUILD LABEL ROUNDS
--
-- Both builds run this tree's bench/bench.lua: the rows are its own, the
-- union of those each build can set up.  Timing interleaves the builds
-- row by row in ROUNDS pairs of fresh processes (bench.lua --serve); the
-- hot-path rows' instructions are counted under callgrind (--instr).
--
-- Prints only: noise is not a failure, so the exit status is 0 when
-- everything ran.
local lua, new_build, old_build, label, rounds = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
assert(lua and new_build and old_build and label and rounds, "usage: compare.lua LUA NEW OLD LABEL ROUNDS")
local TIME_FLAG, INSTR_FLAG = 1.03, 1.01
local SAMPLES = 10
local CG_RUNS, CG_N = 5, 10000
local started = os.time()

local function sq(s) -- one shell word
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end
local function sh(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

for _, f in ipairs { old_build .. "/threadlocal.so", old_build .. "/tlbench.so" } do
  assert(io.open(f), "bench: no " .. f):close()
end

-- Each build runs bench/bench.lua with its own module and tlbench (the
-- C API), and this tree's floor and tlhelper: the harness is the same.
-- The paths go through links of one length, so that both builds' command
-- lines, and so their stacks and PUC Lua's hash seeds, are alike.
local dir = new_build .. "/compare"
local function abs(p) return p:sub(1, 1) == "/" and sq(p) or '"$PWD"/' .. sq(p) end
assert(sh(("rm -rf %s && mkdir -p %s && ln -s %s %s/new && ln -s %s %s/old && ln -s %s %s/harness")
  :format(sq(dir), sq(dir), abs(new_build), sq(dir), abs(old_build), sq(dir), abs(new_build), sq(dir))),
  "bench: cannot make " .. dir)
local function command(build, mode, pin)
  local setpath = ("package.cpath = '%s/%s/?.so;%s/harness/?.so;' .. package.cpath"):format(dir, build, dir)
  return ("%s%s -e %s bench/bench.lua %s"):format(pin or "", sq(lua), sq(setpath), mode)
end

-- The timing servers share one CPU (BENCH_CPU, 1 by default; "" for none).
-- On two CPUs, each build woke on its own one, with its caches and load:
-- identical code differed by 5-8%.  Only one server runs at a time anyway.
local cpu = os.getenv("BENCH_CPU") or "1"
local pin = ""
if cpu ~= "" and sh("taskset -c " .. sq(cpu) .. " true 2>/dev/null") then
  pin = "taskset -c " .. sq(cpu) .. " "
elseif cpu ~= "" then
  io.stderr:write("bench: cannot pin to CPU " .. cpu .. " (taskset): the builds may run on different CPUs\n")
end

local function sorted(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s
end

-- The p quantile of t, interpolated (p = 0.5: the median).
local function quantile(t, p)
  local s = sorted(t)
  local x = 1 + p * (#s - 1)
  local i = math.floor(x)
  if i >= #s then return s[#s] end
  return s[i] + (x - i) * (s[i + 1] - s[i])
end

local order, section_of = {}, {}
local function seen(section, name)
  if not section_of[name] then
    section_of[name] = section
    order[#order + 1] = name
  end
end
local skipped = { new = {}, old = {} } -- why a build could not set a row up

-- The status of a row that one build lacks, with why the other skipped it.
local function lacking(name, has_new, has_old)
  if has_new and not has_old then return "new" .. (skipped.old[name] and (": " .. skipped.old[name]) or "") end
  if has_old and not has_new then return "gone" .. (skipped.new[name] and (": " .. skipped.new[name]) or "") end
  return nil
end

-- Timing.  Each round starts a server per build, sets each row up on both,
-- then takes SAMPLES samples of it from each in turn, the first build
-- alternating: the two builds' samples of a row are milliseconds apart, so
-- a load from elsewhere hits both alike.  A row's value in a round is its
-- fastest sample, the one least preempted on a busy machine.  Fresh
-- processes each round draw the memory layout afresh, which moves some rows
-- by a third or more: the rounds' values are summed up by their median.
assert(sh(("mkfifo %s/new.in %s/old.in"):format(sq(dir), sq(dir))), "bench: mkfifo failed")

-- Both servers start before either command pipe is opened: a server must
-- not inherit the other's, or that one would never see its end.
local function start()
  local server = {}
  for _, b in ipairs { "new", "old" } do
    server[b] = { b = b, fifo = dir .. "/" .. b .. ".in" }
    server[b].p = assert(io.popen(command(b, "--serve", pin) .. " <" .. sq(server[b].fifo)))
  end
  for _, b in ipairs { "new", "old" } do server[b].w = assert(io.open(server[b].fifo, "w")) end
  return server
end
local function ask(s, cmd)
  s.w:write(cmd, "\n")
  s.w:flush()
  local reply = s.p:read("*l")
  if not reply then error(("bench: the %s build's server ended at %q"):format(s.b, cmd)) end
  return reply
end
local function stop(server)
  server.new.w:close()
  server.old.w:close()
  server.new.p:close()
  server.old.p:close()
end

-- samples[build][row][round] and ratios[row][round]
local samples, ratios = { new = {}, old = {} }, {}
local index = { new = {}, old = {} } -- a row's number in a build's list
io.stderr:write(("timing, %d round%s: "):format(rounds, rounds == 1 and "" or "s"))
for round = 1, rounds do
  local server = start()
  for _, b in ipairs { "new", "old" } do
    local i, line = 0, ask(server[b], "list")
    while line and line ~= "end" do
      local section, name = line:match("^([^\t]+)\t(.+)$")
      i = i + 1
      index[b][name] = i
      seen(section, name)
      line = server[b].p:read("*l")
    end
  end
  for _, name in ipairs(order) do
    local ready = {}
    for _, b in ipairs { "new", "old" } do
      if index[b][name] then
        local reply = ask(server[b], "setup " .. index[b][name])
        if reply == "ok" then ready[#ready + 1] = b else skipped[b][name] = reply:match("^skip\t(.*)") or reply end
      end
    end
    local fastest = {}
    for k = 1, SAMPLES do
      for j = 1, #ready do
        local b = ready[(k + round) % 2 == 0 and j or #ready + 1 - j]
        local ns = tonumber(ask(server[b], "sample"))
        fastest[b] = math.min(fastest[b] or ns, ns)
      end
    end
    for _, b in ipairs(ready) do
      samples[b][name] = samples[b][name] or {}
      samples[b][name][round] = fastest[b]
    end
    if fastest.new and fastest.old then
      ratios[name] = ratios[name] or {}
      ratios[name][round] = fastest.new / fastest.old
    end
  end
  stop(server)
  io.stderr:write(".")
end
io.stderr:write("\n")

local titles = {
  access = "Steady-state access (one state, one thread; interpreter on LuaJIT)",
  context = "Context: scopes and hand-off",
  jit = "LuaJIT JIT (compiled loops)",
  lifecycle = "Per-request states",
  threads = "Locals and threads",
  capi = "C API from a C loop",
}

local function values(t) -- a row's values, in round order
  local v = {}
  for round = 1, rounds do v[#v + 1] = t and t[round] end
  return v
end

local over_time, over_instr = 0, 0
io.write(("\nthreadlocal: this tree (new) against %s (old), %s\n")
  :format(label, _VERSION .. (jit and (" / " .. jit.version) or "")))
io.write(("ns/op: the median over %d rounds of the fastest of %d samples in a round.\n"):format(rounds, SAMPLES))
io.write(("ratio: the median over the rounds of new/old in a round, flagged over %.2f;\n"):format(TIME_FLAG))
io.write("q1-q3: its quartiles.\n")
local section
for _, name in ipairs(order) do
  if section_of[name] ~= section then
    section = section_of[name]
    io.write(("\n%s\n%-46s %10s %10s %8s  %-9s\n"):format(titles[section] or section, "row", "new ns/op",
      "old ns/op", "ratio", "q1-q3"))
  end
  local new, old = values(samples.new[name]), values(samples.old[name])
  local status = lacking(name, #new > 0, #old > 0)
  if status then
    local function med(v) return #v > 0 and ("%.1f"):format(quantile(v, 0.5)) or "" end
    io.write(("%-46s %10s %10s %8s  %-9s  %s\n"):format(name, med(new), med(old), "", "", status))
  elseif #new > 0 then
    local within = values(ratios[name])
    local ratio = quantile(within, 0.5)
    local flag = ratio > TIME_FLAG and ("over %.2f"):format(TIME_FLAG) or ""
    if flag ~= "" then over_time = over_time + 1 end
    io.write(("%-46s %10.1f %10.1f %7.3fx  %.2f-%.2f  %s\n"):format(name, quantile(new, 0.5), quantile(old, 0.5),
      ratio, quantile(within, 0.25), quantile(within, 0.75), flag))
  end
  io.flush()
end

-- Instructions: the parts callgrind dumps at each os.clock() of --instr,
-- in CG_RUNS processes per build.  A hash seed can put a collision in a
-- lookup, a few more instructions: fixseed.so gives process k the seeds of
-- k, in both builds, so the counts repeat exactly from run to run.  The
-- lowest of the processes' counts is shown: likely one without a collision.
local function callgrind()
  if not sh("valgrind --version >/dev/null 2>&1") then
    io.write("\nvalgrind not found: instruction counts skipped\n")
    return
  end
  local preload = dir .. "/harness/fixseed.so" .. (os.getenv("LD_PRELOAD") and (" " .. os.getenv("LD_PRELOAD")) or "")
  io.stderr:write(("callgrind, %d processes per build: "):format(CG_RUNS))
  local best, names = { new = {}, old = {} }, {}
  for k = 1, CG_RUNS do
    -- Both builds at once: the counts do not depend on the machine's load.
    local procs = {}
    for _, b in ipairs { "new", "old" } do
      local out = ("%s/%s.%d"):format(dir, b, k)
      local cmd = ("TL_BENCH_SEED=%d LD_PRELOAD=%s valgrind --tool=callgrind --dump-before=clock "
        .. "--callgrind-out-file=%s --log-file=%s %s")
        :format(k, sq(preload), sq(out), sq(out .. ".log"), command(b, "--instr " .. CG_N))
      procs[b] = { p = assert(io.popen(cmd)), out = out }
    end
    for _, b in ipairs { "new", "old" } do
      local text = procs[b].p:read("*a")
      procs[b].p:close()
      local part = 0
      local function count()
        part = part + 1
        local f = io.open(("%s.%d"):format(procs[b].out, part))
        local refs = f and f:read("*a"):match("\nsummary:%s*(%d+)")
        if f then f:close() end
        if not refs then
          local log = io.open(procs[b].out .. ".log")
          error(("bench: no callgrind part %d of the %s build; valgrind said:\n%s"):format(part, b,
            log and log:read("*a") or "nothing"))
        end
        return tonumber(refs)
      end
      for line in text:gmatch("[^\n]+") do
        local s, why = line:match("^skip\t([^\t]+)\t(.*)$")
        local name = s or line
        if not names[name] then
          names[name] = true
          names[#names + 1] = name
        end
        if s then
          skipped[b][s] = why
        else
          count() -- from the end of the last row to this one's loop
          local zero = count()
          local per = (count() - zero) / CG_N
          best[b][name] = math.min(best[b][name] or math.huge, per)
        end
      end
    end
    io.stderr:write(".")
  end
  io.stderr:write("\n")
  if #names == 0 then error("bench: the callgrind processes counted no row") end

  io.write(("\nInstructions per operation (callgrind, loops of %d, lowest of %d seeds per build)\n")
    :format(CG_N, CG_RUNS))
  io.write(("ratio: new/old, flagged over %.2f\n"):format(INSTR_FLAG))
  io.write(("%-46s %10s %10s %8s\n"):format("row", "new", "old", "ratio"))
  for _, name in ipairs(names) do
    local new, old = best.new[name], best.old[name]
    local status = lacking(name, new, old)
    if status then
      io.write(("%-46s %10s %10s %8s  %s\n"):format(name, new and ("%.1f"):format(new) or "",
        old and ("%.1f"):format(old) or "", "", status))
    elseif new then
      local ratio = new / old
      local flag = ratio > INSTR_FLAG and ("over %.2f"):format(INSTR_FLAG) or ""
      if flag ~= "" then over_instr = over_instr + 1 end
      io.write(("%-46s %10.1f %10.1f %7.3fx  %s\n"):format(name, new, old, ratio, flag))
    end
  end
end
callgrind()
sh("rm -rf " .. sq(dir))

io.write(("\n%d timed row%s over %.2f, %d instruction count%s over %.2f (%d s)\n"):format(
  over_time, over_time == 1 and "" or "s", TIME_FLAG, over_instr, over_instr == 1 and "" or "s", INSTR_FLAG,
  os.difftime(os.time(), started)))
if over_time > 0 then
  io.write("A flagged timed row whose q1-q3 holds 1.00 is likely noise: run again.\n")
end
