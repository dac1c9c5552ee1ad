-- Loaded with lua-load-per-thread: each HAProxy thread has its own copy of
-- this state.  The shared local of tl_example.lua is the same one the shared
-- state (shared_state.lua) sees on that thread.
-- luacheck: read globals core

local example = require "tl_example"

core.register_service("thread_set", "http", example.set_service("thread"))
core.register_service("thread_get", "http", example.get_service("thread"))
