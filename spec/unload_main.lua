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
io.write("unload: ok\n")
