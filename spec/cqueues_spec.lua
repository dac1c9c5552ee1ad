-- threadlocal.context under a real scheduler: lua-cqueues, whose loop resumes
-- its coroutines itself.  Handlers wrapped as cq:wrap(context.bind(handler))
-- each keep their own request context across yields, in two states that run
-- their own loops on two OS threads at once.
local helper = require "tlhelper"
local support = require "support"

-- cqueues must be there: a missing one fails this file, loudly.
local cqueues = require "cqueues"

-- Run in a fresh state: n handlers, each yields `rounds` times (alternately
-- through cqueues.sleep(0) and a condition variable) and checks its var after
-- every yield.  Returns the counts.
local server = [[
  local helper = require "tlhelper"
  local barrier, tag, n, rounds = ...
  local cqueues, condition, context, threadlocal, request, cq, cv
  local checks, wrong, done, plain = 0, 0, 0, nil

  local function check(expected)
    checks = checks + 1
    if request:get() ~= expected then wrong = wrong + 1 end
  end

  local function handler(i)
    check(tag .. " root")               -- the copy made at bind
    local mine = tag .. " request " .. i
    request:set(mine)
    for r = 1, rounds do
      if (i + r) % 2 == 0 then cqueues.sleep(0) else cv:wait() end
      check(mine)
    end
    done = done + 1
  end

  local ready, err = pcall(function()
    cqueues = require "cqueues"
    condition = require "cqueues.condition"
    context = require "threadlocal.context"
    threadlocal = require "threadlocal"
    request = context.var("request")
    request:set(tag .. " root")
    cq, cv = cqueues.new(), condition.new()
    for i = 1, n do cq:wrap(context.bind(handler), i) end
    -- wakes the handlers waiting on cv while any is left
    cq:wrap(function()
      while done < n do
        cv:signal()
        cqueues.sleep(0)
      end
    end)
    -- a plain coroutine sees the root
    cq:wrap(function()
      cqueues.sleep(0)
      plain = request:get()
    end)
  end)
  helper.wait(barrier)                  -- both states are ready (or failed)
  assert(ready, err)
  local ok, lerr = cq:loop()
  assert(ok, lerr)
  check(tag .. " root")                 -- the handlers' sets stayed theirs
  return checks, wrong, done, plain, threadlocal.id()
]]

describe("context.bind under cqueues", function()
  it("is available: cqueues loads", function()
    assert.is_function(cqueues.new)
  end)

  it("keeps each handler's context across yields, in two loops on two OS threads", function()
    local b = support.unique("cqueues")
    helper.barrier(b, 2)
    local n, rounds = 100, 10
    local h1 = helper.spawn(server, b, "one", n, rounds)
    local h2 = helper.spawn(server, b, "two", n, rounds)
    local r1 = { h1:join() }
    local r2 = { h2:join() }
    assert.is_true(r1[1], r1[2])
    assert.is_true(r2[1], r2[2])
    for i, r in ipairs { r1, r2 } do
      local tag = i == 1 and "one" or "two"
      assert.equal(n * (rounds + 1) + 1, r[2]) -- checks
      assert.equal(0, r[3])                     -- wrong values
      assert.equal(n, r[4])                     -- handlers done
      assert.equal(tag .. " root", r[5])        -- what a plain coroutine saw
    end
    assert.are_not.equal(r1[6], r2[6])
  end)
end)
