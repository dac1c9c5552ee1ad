-- A sysbench test that keeps each worker's context in a shared local with
-- defaults, and serves every event in a fresh Lua state on the worker
-- thread, as a host that makes a state per request does (examples/sysbench/
-- run.sh runs it; docs/hosts.md says where sysbench runs which part).
--
-- sysbench gives each worker thread its own LuaJIT state, made on that
-- thread; init() and done() run in a main state on the main thread.  A
-- module-level table would serve the worker's own state as well: what the
-- shared local adds is that every state on the worker thread sees the same
-- fields, here the short-lived state of each event.
local threadlocal = require "threadlocal"
local ffi = require "ffi"

-- The worker's context: every worker starts from these defaults.
local worker = threadlocal.shared("sysbench.worker", { index = -1, events = 0, served = 0 })

-- A request runs in its own state, made and closed on the calling thread
-- through the Lua API that sysbench's LuaJIT exports.
ffi.cdef [[
typedef struct tl_example_state tl_example_state;
tl_example_state *luaL_newstate(void);
void luaL_openlibs(tl_example_state *L);
int luaL_loadstring(tl_example_state *L, const char *s);
int lua_pcall(tl_example_state *L, int nargs, int nresults, int errfunc);
const char *lua_tolstring(tl_example_state *L, int idx, size_t *len);
void lua_close(tl_example_state *L);
]]
local C = ffi.C

-- The request: it finds the worker's context by name, on this thread.
local request = [[
  local worker = require("threadlocal").shared("sysbench.worker")
  worker.served = worker.served + 1
  return worker.index .. " " .. worker.served
]]

local function serve()
  local L = C.luaL_newstate()
  assert(L ~= nil, "cannot create a state")
  C.luaL_openlibs(L) -- LUA_CPATH finds threadlocal there too
  local ok = C.luaL_loadstring(L, request) == 0 and C.lua_pcall(L, 0, 1, 0) == 0
  local s = C.lua_tolstring(L, -1, nil)
  local answer = s ~= nil and ffi.string(s) or "(no message)"
  C.lua_close(L)
  if not ok then error("request: " .. answer, 0) end
  return answer
end

function thread_init(index)
  worker.index = index
end

local wrong = 0

function event()
  worker.events = worker.events + 1
  if serve() ~= worker.index .. " " .. worker.events then wrong = wrong + 1 end
end

function thread_done(index)
  io.write(("sysbench-worker index=%d seen=%d id=%d events=%d served=%d wrong=%d\n")
    :format(index, worker.index, threadlocal.id(), worker.events, worker.served, wrong))
end

function init()
  worker.index = 1000 -- the main thread's fields: no worker sees them
end

function done()
  io.write(("sysbench-main id=%d index=%d events=%d\n")
    :format(threadlocal.id(), worker.index, worker.events))
end
