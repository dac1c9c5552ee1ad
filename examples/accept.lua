-- The acceptor of examples/pool_host.c: requests arrive here, on the main
-- thread.  Each request's context is set in a scope on the shared local
-- "request"; host.submit captures it (a C snapshot) to travel with the job
-- to whichever worker runs it.  The scope puts the acceptor's own context
-- back after each request.
local threadlocal = require "threadlocal"

local njobs = ...
local req = threadlocal.shared("request")
req.role = "acceptor"

for job = 1, njobs do
  threadlocal.with(req, { id = job, user = ("user%d"):format(job), role = "request" },
                   host.submit, job)
end
assert(req.id == nil and req.role == "acceptor", "the scopes did not restore the acceptor")
