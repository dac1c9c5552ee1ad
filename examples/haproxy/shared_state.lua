-- Loaded with lua-load: ONE Lua state that all of HAProxy's threads run in
-- turn.  A Local gives each OS thread its own fields in it.
-- luacheck: read globals core

local threadlocal = require "threadlocal"
local example = require "tl_example"

-- Per OS thread: a request counter and a cache, made on the thread's first
-- request.  `owner` is the thread the fields were made for.
local per_thread = threadlocal.new(function(self)
  self.owner = threadlocal.id()
  self.requests = 0
  self.cache = {}
  self.foreign = 0
end)

-- /count?i=I counts the request on this thread, caches I mod 16, and says
-- whether this thread's fields ever held an entry made by another thread.
core.register_service("count", "http", function(applet)
  local thread, id = example.thread(applet), threadlocal.id()
  per_thread.requests = per_thread.requests + 1
  local n = per_thread.requests
  local cache = per_thread.cache
  local key = (tonumber(example.query(applet).i) or n) % 16
  local entry = cache[key]
  if not entry then
    entry = { thread = thread, id = id, hits = 0 }
    cache[key] = entry
  end
  entry.hits = entry.hits + 1
  local foreign = per_thread.owner == id and 0 or 1
  for _, e in pairs(cache) do
    if e.thread ~= thread or e.id ~= id then
      foreign = foreign + 1
    end
  end
  per_thread.foreign = per_thread.foreign + foreign
  example.reply(applet, ("count thread=%d id=%d n=%d foreign=%d\n")
    :format(thread, id, n, per_thread.foreign))
end)

core.register_service("shared_set", "http", example.set_service("shared"))
core.register_service("shared_get", "http", example.get_service("shared"))
