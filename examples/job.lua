-- One job of examples/pool_host.c, run in a fresh state on a pool worker and
-- closed after.  The worker's context was put into a shared local by the
-- host, in C; the ORM's current database persists on this worker thread
-- from one job (and state) to the next.
local threadlocal = require "threadlocal"
local orm = require "orm"

local job, switch_to = ...
local ctx = threadlocal.shared("worker")

assert(type(ctx.conn) == "userdata", "the host's connection handle is missing")
if switch_to then
  print(("job %d on worker %d: switching this worker's database to %q")
    :format(job, ctx.index, switch_to))
  orm.use(switch_to)
end
ctx.jobs = (ctx.jobs or 0) + 1
orm.model("rows"):create { worker = ctx.index, job = job }
