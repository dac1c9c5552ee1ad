-- Run by lifetime_spec.lua as its own process: lua spec/unload_main.lua CPATH
-- The main state loads only the helper, never threadlocal.
package.cpath = arg[1]
local helper = require "tlhelper"

local N = 4
helper.barrier("closed", N + 1)
local code = [[
  local threadlocal = require "threadlocal"
  local tl = threadlocal.new(function(self) self.n = 1 end)
  tl.s = ("x"):rep(100)
  local other = threadlocal.new()
  other.t = { 1, 2, 3 }
  return threadlocal.id()
]]
local threads = {}
for i = 1, N do threads[i] = helper.spawn_linger("closed", code) end
helper.wait("closed") -- every state that loaded threadlocal is closed now
for i = 1, N do
  local ok, id = threads[i]:join() -- the threads exit: threadlocal's hook runs
  assert(ok, id)
  assert(type(id) == "number", "no id")
end

-- Loading it again after that works too.
local h = helper.spawn([[return require("threadlocal").id()]])
local ok, id = h:join()
assert(ok and type(id) == "number", tostring(id))
-- Shared values outlive the last state that loaded the module: a worker
-- thread sets one in a state, closes it (nothing holds threadlocal now),
-- and reads it back from a new state.
local w = helper.worker()
w:exec([[require("threadlocal").shared("kept").v = { s = "still here" }]])
local v = w:exec([[return require("threadlocal").shared("kept").v.s]])
assert(v == "still here", tostring(v))
w:stop()
-- Stress: states that load the module are made and closed on many threads,
-- while other threads exit, round after round (under ASan in make test).
for round = 1, 25 do
  local hs = {}
  for i = 1, 6 do
    hs[i] = helper.spawn([[
      local helper, round, i = require "tlhelper", ...
      for j = 1, 4 do
        helper.exec([=[
          local threadlocal = require "threadlocal"
          local l = threadlocal.new(function(self) self.t = {} end)
          l.x = ...
          threadlocal.shared("stress").y = { ... }
        ]=], round * 100 + i * 10 + j)
      end
      local threadlocal = require "threadlocal"
      threadlocal.new().z = i
      return i
    ]], round, i)
  end
  for i = 1, 6 do
    local joined, got = hs[i]:join()
    assert(joined and got == i, tostring(got))
  end
end
io.write("unload: ok\n")
