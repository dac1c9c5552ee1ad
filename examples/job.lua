-- One job of examples/pool_host.c, run in a fresh state on a pool worker and
-- closed after.  The worker's context was put into a shared local by the
-- host, in C; the ORM's current database persists on this worker thread
-- from one job (and state) to the next.  The request's context was set by
-- the acceptor thread and handed to this worker with the job.
local threadlocal = require "threadlocal"
local context = require "threadlocal.context"
local orm = require "orm"

local job, switch_to = ...
local ctx = threadlocal.shared("worker")
local req = threadlocal.shared("request")

-- Three sub-tasks as coroutines, run round-robin: each keeps its own span
-- across a yield and reads the request the job was handed.
local span = context.var("span")
local tasks, kept = {}, 0
for i = 1, 3 do
  tasks[i] = context.wrap(function()
    span:set(("%d.%d"):format(job, i))
    coroutine.yield()
    return span:get() == ("%d.%d"):format(job, i) and req.id == job
  end)
end
for i = 1, 3 do tasks[i]() end
for i = 1, 3 do
  if tasks[i]() then kept = kept + 1 end
end
if job == 10 then
  print(("job %d on worker %d: request of %s (id %d), set in a scope on the acceptor thread;"
    .. " its 3 coroutines kept their own span: %d of 3"):format(job, ctx.index, req.user, req.id, kept))
end
host.seen(job, req.id, kept)

assert(type(ctx.conn) == "userdata", "the host's connection handle is missing")
if switch_to then
  print(("job %d on worker %d: switching this worker's database to %q")
    :format(job, ctx.index, switch_to))
  orm.use(switch_to)
end
ctx.jobs = (ctx.jobs or 0) + 1
orm.model("rows"):create { worker = ctx.index, job = job }
