-- luacheck configuration: `luacheck .` checks every Lua file of the project
-- and the rockspecs (tools/test.sh runs it).
--
-- threadlocal runs on Lua 5.1 to 5.4 and LuaJIT: code may use the globals of
-- any of them, after checking which one it runs on.
std = "max"
include_files = { "**/*.lua", "**/*.rockspec", ".luacheckrc" }
exclude_files = { "build/**" }

-- busted's globals (describe, it, assert.*, ...) in the specs.
files["spec/**/*_spec.lua"] = { std = "+busted" }
files["spec/lanes_real.lua"] = { std = "+busted" } -- run only where Lanes is (tools/test.sh)

-- The rockspecs and this file are declarative tables of globals.
files["**/*.rockspec"] = { std = "+rockspec" }
files[".luacheckrc"] = { std = "+luacheckrc" }

-- The demo script defines the two functions examples/demo_host.c calls.
files["examples/demo.lua"] = { globals = { "init_data", "show" } }

-- The pool host's scripts call the functions it sets in the global `host`
-- (examples/pool_host.c).
for _, f in ipairs { "examples/orm.lua", "examples/job.lua", "examples/accept.lua" } do
  files[f] = { read_globals = { "host" } }
end

-- The host examples define the functions their host calls, and wrk's script
-- publishes its counts as globals (thread:get reads only those).
files["examples/wrk/per_thread.lua"] = {
  globals = { "setup", "init", "response", "done", "tl_id", "tl_responses", "tl_shared", "tl_wrong" },
}
files["examples/sysbench/per_worker.lua"] = {
  globals = { "thread_init", "event", "thread_done", "init", "done" },
  read_globals = { "sysbench" },
}
