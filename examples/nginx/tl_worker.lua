-- The module that nginx's worker-thread VMs run (ngx.run_worker_thread in
-- examples/nginx/nginx.conf.in; docs/hosts.md says what runs where).
--
-- lua-nginx-module keeps a few VMs for a thread pool; each task runs in a
-- free VM, on whichever pool thread takes it.  A VM's top level (this file)
-- runs once, on a thread that need not run its tasks, and a VM moves between
-- pool threads: a module-level table is per VM, not per thread.
local threadlocal = require "threadlocal"

local M = {}

-- The process: thread ids are per process, and a reload starts new workers.
local pid
do
  local f = io.open("/proc/self/stat")
  pid = f and tonumber(f:read("*l"):match("^%d+")) or 0
  if f then f:close() end
end

-- The calling pool thread's counter, in every VM: a shared local.
local pool = threadlocal.shared("nginx.pool", { tasks = 0 })

-- The calling pool thread's fields in this VM: a Local, made on each
-- thread's first use in this VM.
local mine = threadlocal.new(function(self)
  self.id = threadlocal.id()
  self.tasks = 0
end)

-- A task: counts it for the calling pool thread, in both.  Returns plain
-- values: they are copied back to the request's VM.
function M.count()
  pool.tasks = pool.tasks + 1
  mine.tasks = mine.tasks + 1
  local id = threadlocal.id()
  return ("count pid=%d id=%d n=%d local=%s"):format(pid, id, pool.tasks,
    mine.id == id and "ok" or "wrong")
end

return M
