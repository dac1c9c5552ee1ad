-- The seed demo: one Lua state, run by two OS threads that take turns.
-- Each thread stores its own number in the same Local, and always reads
-- back its own, however the threads interleave.
local threadlocal = require "threadlocal"

local data = threadlocal.new()

function init_data(n)
  data.number = n * 100
end

function show(name)
  print(("Thread %s has number %d"):format(name, data.number))
end
