---@meta threadlocal.context
-- LuaLS annotations for `require "threadlocal.context"`: context variables
-- for coroutines, like Python's contextvars.  Reference: docs/manual.md.
-- Declarations only: the arguments and locals are for LuaLS.
-- luacheck: ignore

---A context variable.
---@class threadlocal.context.var
---@field name string The name given to `context.var`.
local var = {}

---The value in the current context, else `default`, else the var's default, else nil.
---@param default? any
---@return any
function var:get(default) end

---Sets the var in the current context; the token resets it.
---@param value any
---@return threadlocal.context.token
function var:set(value) end

---Puts back what the set that made `token` replaced.
---@param token threadlocal.context.token
function var:reset(token) end

---A context: a read-only mapping of vars to values.
---@class threadlocal.context
---@field [threadlocal.context.var] any The var's value here, or nil.
local ctx = {}

---Runs fn(...) with this context current; returns fn's results.
---@param fn fun(...: any): ...
---@param ... any
---@return any ...
function ctx:run(fn, ...) end

---What `var:set` returns; a to-be-closed value on 5.4 (closing resets).
---@class threadlocal.context.token
---@field var threadlocal.context.var The var whose set made it.
---@field old_value any The value the set replaced, or `context.MISSING`.
local token = {}

---The module table of `threadlocal.context`.
---@class threadlocal.context.module
local context = {}

---`token.old_value` when the var was not set before.
---@type any
context.MISSING = {}

---Makes a context variable.
---@param name string
---@param default? any
---@return threadlocal.context.var
function context.var(name, default) end

---A copy of the current context.
---@return threadlocal.context
function context.copy() end

---coroutine.create, whose coroutine runs in a copy of the current context.
---@param fn function
---@return thread
function context.create(fn) end

---coroutine.wrap, whose coroutine runs in a copy of the current context.
---@param fn function
---@return fun(...: any): ...
function context.wrap(fn) end

---A function that runs each call of fn in a fresh copy of the context current now.
---@generic F: function
---@param fn F
---@return F
function context.bind(fn) end

return context
