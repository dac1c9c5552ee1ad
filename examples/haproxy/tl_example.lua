-- What the two kinds of state of the HAProxy example share: replies, the
-- query string, and the services that write and read a shared local.
-- shared_state.lua (lua-load) and per_thread.lua (lua-load-per-thread)
-- each require it, so every state has its own copy of this module.

local threadlocal = require "threadlocal"

local M = {}

-- A table made once per state: its address tells the states apart.
local mark = tostring({}):match("0x%x+") or tostring({})

-- HAProxy's thread number, 1 to nbthread, in any state.  (core.thread is the
-- number of the thread a state was made for, 0 in the shared state.)
function M.thread(applet)
  return applet.f:thread() + 1
end

function M.query(applet)
  local q = {}
  for k, v in (applet.qs or ""):gmatch("([^&=]+)=([^&]*)") do
    q[k] = v
  end
  return q
end

function M.reply(applet, body)
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end

-- Per OS thread, in every state on that thread: tokens[key] is the last token
-- a client stored under key, with who stored it.
local session = threadlocal.shared("haproxy.example", { tokens = {} })

-- /<state>/set?key=K&token=T stores T under K.
function M.set_service(state)
  return function(applet)
    local q = M.query(applet)
    local key, token = q.key or "-", q.token or "-"
    local thread, id = M.thread(applet), threadlocal.id()
    session.tokens[key] = { token = token, thread = thread, id = id, state = state }
    M.reply(applet, ("set thread=%d id=%d state=%s mark=%s key=%s token=%s\n")
      :format(thread, id, state, mark, key, token))
  end
end

-- /<state>/get?key=K reads what is stored under K, and counts the entries of
-- the shared local that another thread stored (it must see none).
function M.get_service(state)
  return function(applet)
    local key = M.query(applet).key or "-"
    local thread, id = M.thread(applet), threadlocal.id()
    local entry = session.tokens[key]
    local foreign = 0
    for _, e in pairs(session.tokens) do
      if e.thread ~= thread or e.id ~= id then
        foreign = foreign + 1
      end
    end
    M.reply(applet, ("get thread=%d id=%d state=%s mark=%s key=%s token=%s writer=%s foreign=%d\n")
      :format(thread, id, state, mark, key, entry and entry.token or "-",
        entry and entry.state or "-", foreign))
  end
end

return M
