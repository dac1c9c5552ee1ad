---@meta threadlocal
-- LuaLS annotations for `require "threadlocal"`: data private to the calling
-- OS thread.  Reference: docs/manual.md.  Not a module: install outside
-- package.path, or it would shadow the C module.
-- Declarations only: the arguments and locals are for LuaLS.
-- luacheck: ignore

---A Local: fields per OS thread, in the state that made it.  Any key a Lua
---table takes; any value, by reference.
---@class threadlocal.local
---@field [any] any The calling thread's value; assigning nil deletes.
---@operator len: integer
local loc = {}

---A shared local: process-wide by name; per OS thread, the same fields in
---every state and in C.  Plain data only, copied in.
---@class threadlocal.shared
---@field [string|number|boolean] nil|boolean|number|string|lightuserdata|threadlocal.proxy The calling thread's value.
---@operator len: integer
local sh = {}

---A proxy of a table stored in a shared local, valid on the thread that read
---it, until its table is replaced, deleted or cleared.
---@class threadlocal.proxy
---@field [string|number|boolean] nil|boolean|number|string|lightuserdata|threadlocal.proxy A value of the stored table.
---@operator len: integer
local proxy = {}

---Fields set for the calling thread until closed; a to-be-closed value on 5.4.
---@class threadlocal.scope
local scope = {}

---Puts back what the scope replaced; closing twice does nothing.
function scope:close() end

---The module table; calling it is `threadlocal.new`.
---@class threadlocal.module
---@operator call: threadlocal.local
local threadlocal = {}

---The module's version, "MAJOR.MINOR.PATCH".
---@type string
threadlocal.version = "0.4.0"

---The metatable of shared locals, for `lanes.require "threadlocal"`.
---@type table
threadlocal.shared_mt = {}

---Makes a Local; `init(loc, ...)` runs once per OS thread to set its fields.
---@param init? fun(self: threadlocal.local, ...: any)
---@param ... any Extra arguments for `init`.
---@return threadlocal.local
function threadlocal.new(init, ...) end

---The same as `threadlocal.new` (Python's name; `local` is a Lua keyword).
---@type fun(init?: fun(self: threadlocal.local, ...: any), ...: any): threadlocal.local
threadlocal["local"] = threadlocal.new

---The process-wide shared local called `name`; `defaults` start each thread's fields.
---@param name string
---@param defaults? table Plain data.
---@return threadlocal.shared
function threadlocal.shared(name, defaults) end

---Deletes the calling thread's fields: a Local's init runs again, a shared local restarts from its defaults.
---@param x threadlocal.local|threadlocal.shared
function threadlocal.clear(x) end

---A plain copy of the calling thread's fields; nested shared tables are copied too.
---@param x threadlocal.local|threadlocal.shared|threadlocal.proxy
---@return table
function threadlocal.fields(x) end

---Iterates the calling thread's fields, on every Lua version.
---@param x threadlocal.local|threadlocal.shared|threadlocal.proxy
---@return fun(t: any, k: any): any, any
---@return any
---@return nil
function threadlocal.pairs(x) end

---Iterates (thread id, fields copy) of every live thread with fields in a Local.
---@param loc threadlocal.local
---@return fun(): integer?, table?
function threadlocal.threads(loc) end

---The calling thread's own fields table of a Local (not a copy); valid on this thread only.
---@param loc threadlocal.local
---@return table
function threadlocal.table(loc) end

---The calling OS thread's id: an integer >= 1, never reused.
---@return integer
function threadlocal.id() end

---Sets fields for the calling thread until the scope closes.
---@param x threadlocal.local|threadlocal.shared
---@param fields table
---@return threadlocal.scope
function threadlocal.scope(x, fields) end

---Runs fn(...) in a scope of `fields` on `x`; returns fn's results.
---@param x threadlocal.local|threadlocal.shared
---@param fields table
---@param fn fun(...: any): ...
---@param ... any
---@return any ...
function threadlocal.with(x, fields, fn, ...) end

---The calling thread's shared-local fields as plain data: {[name] = fields copy}.
---@param ... threadlocal.shared None: every shared local with fields here.
---@return table<string, table>
function threadlocal.capture(...) end

---Runs fn(...) with a snapshot's fields swapped in; puts the thread's own back after.
---@param snap table<string, table>
---@param fn fun(...: any): ...
---@param ... any
---@return any ...
function threadlocal.run(snap, fn, ...) end

---Drops all the calling thread's data, as if it exited; the thread gets a new id.
function threadlocal.release() end

return threadlocal
