-- Outcomes of the C module that used to surprise: scopes closed out of
-- order, tracebacks cut at with/run, the proxy's name, the module's names.
local threadlocal = require "threadlocal"
local helper = require "tlhelper"
local support = require "support"

describe("the module table", function()
  local public = { "new", "local", "shared", "clear", "fields", "table", "threads", "id",
                   "scope", "with", "capture", "run", "release", "version", "shared_mt" }

  it("lists every public name to next() in a fresh state", function()
    local names = helper.exec([[
      local t, seen = require "threadlocal", {}
      local k = next(t)
      while k ~= nil do
        seen[#seen + 1] = k
        k = next(t, k)
      end
      table.sort(seen)
      return table.concat(seen, " ")
    ]])
    local want = {}
    for i, k in ipairs(public) do want[i] = k end
    table.sort(want)
    for _, k in ipairs(want) do assert.matches("%f[%w_]" .. k .. "%f[^%w_]", names) end
  end)

  it("holds its names as plain fields, also through pairs()", function()
    local seen = {}
    for k, v in pairs(threadlocal) do seen[k] = v end
    for _, k in ipairs(public) do assert.is_not_nil(rawget(threadlocal, k), k) end
    for _, k in ipairs(public) do assert.equal(rawget(threadlocal, k), seen[k]) end
    assert.equal("string", type(rawget(threadlocal, "version")))
  end)
end)
