-- doccheck: the documentation matches the module.  Run from the top of the
-- tree by tools/doc_test.sh:
--
--   lua5.4 tools/doccheck.lua BUILD TMPDIR [CC]
--
-- BUILD holds threadlocal.so for this Lua; TMPDIR is scratch space; CC, when
-- given, compiles the C blocks.  Prints TAP lines "ok - doc: ..." (with "#"
-- lines naming what is missing) and exits 1 when a check failed.
local build, tmp, cc = arg[1], arg[2], arg[3]
assert(build and tmp, "usage: lua5.4 tools/doccheck.lua BUILD TMPDIR [CC]")
package.cpath = build .. "/?.so;" .. package.cpath

local failed = false

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function lines(s)
  local t = {}
  for l in (s .. "\n"):gmatch("(.-)\r?\n") do t[#t + 1] = l end
  if t[#t] == "" then t[#t] = nil end
  return t
end

-- report(what, problems): one TAP line, and one "#" line per problem.
local function report(what, problems)
  if #problems == 0 then
    print("ok - doc: " .. what)
  else
    failed = true
    print("not ok - doc: " .. what)
    for _, p in ipairs(problems) do print("#   " .. p) end
  end
end

local function shell(cmd)
  local ok, _, code = os.execute(cmd)
  return ok == true or code == 0
end

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Markdown: fenced blocks, headings and links outside them.
local function parse_md(path)
  local doc = { headings = {}, blocks = {}, links = {} }
  local text = read(path)
  if not text then return nil end
  local ls = lines(text)
  local i = 1
  while i <= #ls do
    local l = ls[i]
    local fence, lang = l:match("^(%s*```+)%s*([%w_+-]*)")
    if fence then
      local marker = i > 1 and ls[i - 1]:match("^<!%-%-%s*(.-)%s*%-%->$") or nil
      local body, j = {}, i + 1
      while j <= #ls and not ls[j]:match("^%s*```+%s*$") do
        body[#body + 1] = ls[j]
        j = j + 1
      end
      doc.blocks[#doc.blocks + 1] = { lang = lang, line = i, marker = marker,
        code = table.concat(body, "\n") .. "\n" }
      i = j + 1
    else
      local level, h = l:match("^(#+)%s+(.-)%s*$")
      if level then doc.headings[#doc.headings + 1] = { level = #level, text = h } end
      -- Links, outside inline code.
      local plain = l:gsub("``.-``", ""):gsub("`[^`]*`", "")
      for target in plain:gmatch("%]%(([^)%s]+)%)") do
        doc.links[#doc.links + 1] = { target = target, line = i }
      end
      i = i + 1
    end
  end
  return doc
end

-- A heading as text: no backticks, entities decoded.
local function heading_text(h)
  return (h:gsub("`", ""):gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&amp;", "&"))
end

-- GitHub's anchor of a heading.
local function anchor(h)
  local s = heading_text(h):lower()
  s = s:gsub("[^%w%s_-]", ""):gsub("%s", "-")
  return s
end

local function anchors(doc)
  local set, seen = {}, {}
  for _, h in ipairs(doc.headings) do
    local a = anchor(h.text)
    local n = seen[a]
    seen[a] = (n or 0) + 1
    set[n and (a .. "-" .. n) or a] = true
  end
  return set
end

------------------------------------------------------------------------------
-- (a) Every exposed name has a ### heading in docs/manual.md and a type.

local manual = assert(parse_md("docs/manual.md"), "docs/manual.md is missing")
local headings = {}
for _, h in ipairs(manual.headings) do
  if h.level == 3 then headings[#headings + 1] = heading_text(h.text) end
end

local threadlocal = require "threadlocal"
local context = require "threadlocal.context"

-- The module table may fill in its functions as they are first read.  So
-- that a walk finds them even then, first read every threadlocal.NAME that
-- docs/manual.md or types/threadlocal.lua mention: a name dropped from one
-- is still found through the other.  (Where next() already sees every
-- name, this changes nothing.)
for _, f in ipairs { "docs/manual.md", "types/threadlocal.lua" } do
  local text = read(f) or ""
  for name in text:gmatch("threadlocal%.([%a_][%w_]*)") do local _ = threadlocal[name] end
  for name in text:gmatch('threadlocal%["([%a_][%w_]*)"%]') do local _ = threadlocal[name] end
end

local keywords = {}
for k in ("and break do else elseif end false for function goto if in local nil not or "
  .. "repeat return then true until while"):gmatch("%a+") do keywords[k] = true end

-- How a metamethod reads in a heading; %s is the object's name.  nil: not a
-- user-facing operation.
local metaforms = {
  __index = "%s[key]", __newindex = "%s[key] = value", __len = "#%s",
  __pairs = "pairs(%s)", __tostring = "tostring(%s)", __close = "%s <close>",
  __metatable = "getmetatable(%s)", __call = "%s(...)",
  __name = false, __gc = false, __mode = false,
}
local overrides = {
  threadlocal = { __index = "pairs(threadlocal)" },
  ctx = { __index = "ctx[var]", __newindex = "ctx[var] = value" },
  token = { __index = "token.var" },
  var = { __index = "var.name" },
}

-- The LuaLS class of each kind, and the file that declares it.
local classes = {
  threadlocal = { class = "threadlocal.module", file = "types/threadlocal.lua" },
  loc = { class = "threadlocal.local", file = "types/threadlocal.lua" },
  sh = { class = "threadlocal.shared", file = "types/threadlocal.lua" },
  proxy = { class = "threadlocal.proxy", file = "types/threadlocal.lua" },
  scope = { class = "threadlocal.scope", file = "types/threadlocal.lua" },
  context = { class = "threadlocal.context.module", file = "types/threadlocal/context.lua" },
  var = { class = "threadlocal.context.var", file = "types/threadlocal/context.lua" },
  ctx = { class = "threadlocal.context", file = "types/threadlocal/context.lua" },
  token = { class = "threadlocal.context.token", file = "types/threadlocal/context.lua" },
}

-- Each entry: { kind, name, form, func, meta }.
local names = {}
local function add(kind, name, value, meta)
  if type(name) ~= "string" then return end
  local form
  if meta then
    local o = overrides[kind] and overrides[kind][name]
    if o then
      form = o
    elseif metaforms[name] == false then
      return
    else
      form = (metaforms[name] or "%s." .. name):format(kind)
    end
  elseif kind == "threadlocal" or kind == "context" then
    form = keywords[name] and ('%s["%s"]'):format(kind, name) or kind .. "." .. name
  elseif type(value) == "function" then
    form = kind .. ":" .. name
  else
    form = kind .. "." .. name
  end
  names[#names + 1] = { kind = kind, name = name, form = form,
    func = type(value) == "function" and not meta, meta = meta }
end

local function walk(kind, obj)
  if type(obj) == "table" then
    for k, v in next, obj do add(kind, k, v, false) end
  end
  local mt = debug.getmetatable(obj)
  if type(mt) ~= "table" then return end
  for k, v in next, mt do
    if type(k) == "string" then
      if k:sub(1, 2) == "__" then
        if not (k == "__index" and type(v) == "table") then add(kind, k, v, true) end
      else
        add(kind, k, v, false) -- a method kept in the metatable itself
      end
    end
  end
  if type(mt.__index) == "table" and mt.__index ~= mt then
    for k, v in next, mt.__index do add(kind, k, v, false) end
  end
end

walk("threadlocal", threadlocal)
walk("context", context)
local loc = threadlocal.new()
local sh = threadlocal.shared("doccheck")
sh.t = {}
local var = context.var("doccheck")
walk("loc", loc)
walk("sh", sh)
walk("proxy", sh.t)
walk("scope", threadlocal.scope(loc, {}))
walk("var", var)
walk("ctx", context.copy())
walk("token", var:set(1))

local function documented(form, func)
  for _, h in ipairs(headings) do
    if func then
      if h:sub(1, #form + 1) == form .. "(" then return true end
    elseif h == form or h:sub(1, #form + 2) == form .. " (" then
      return true
    end
  end
  return false
end

local missing = {}
for _, n in ipairs(names) do
  if not documented(n.form, n.func) then
    missing[#missing + 1] = ("%s %s: no heading '### %s%s' in docs/manual.md"):format(
      n.kind, n.name, n.form, n.func and "(...)" or "")
  end
end
report(("every name exposed at run time has a ### heading in docs/manual.md (%d names)")
  :format(#names), missing)

-- The type files, cut into class blocks.
local typefiles = {}
local function typefile(path)
  if typefiles[path] then return typefiles[path] end
  local text = read(path)
  local t = { text = text or "", blocks = {} }
  if text then
    local cur
    for _, l in ipairs(lines(text)) do
      local c = l:match("^%-%-%-@class%s+([%w_.]+)")
      if c then cur = {}; t.blocks[c] = cur end
      if cur then cur[#cur + 1] = l end
    end
  end
  typefiles[path] = t
  return t
end

local function has(t, plain)
  return t.text:find(plain, 1, true) ~= nil
end

missing = {}
for _, n in ipairs(names) do
  local c = classes[n.kind]
  local t = typefile(c.file)
  local block = t.blocks[c.class]
  local ok
  if n.kind == "threadlocal" or n.kind == "context" then
    if n.meta then
      ok = block ~= nil and (n.name ~= "__call" or table.concat(block, "\n"):find("---@operator call", 1, true) ~= nil)
    elseif keywords[n.name] then
      ok = has(t, ('%s["%s"] ='):format(n.kind, n.name))
    elseif n.func then
      ok = has(t, ("function %s.%s("):format(n.kind, n.name))
    else
      ok = has(t, ("%s.%s ="):format(n.kind, n.name))
    end
  elseif not block then
    ok = false
  else
    local b = table.concat(block, "\n")
    if n.meta then
      -- A class with fields (an index signature, or named ones) covers
      -- __index and __newindex.
      local need = ({ __index = "---@field ", __newindex = "---@field ",
        __len = "---@operator len", __call = "---@operator call" })[n.name]
      ok = need == nil or b:find(need, 1, true) ~= nil
    elseif n.func then
      ok = b:find(("function %s:%s("):format(n.kind, n.name), 1, true) ~= nil
    else
      ok = b:find(("---@field %s "):format(n.name), 1, true) ~= nil
    end
  end
  if not ok then
    missing[#missing + 1] = ("%s %s: no annotation in %s (class %s)"):format(
      n.kind, n.name, c.file, c.class)
  end
end
report("every name exposed at run time is annotated in types/", missing)

-- Every function the header exports appears in docs/c-api.md.
missing = {}
local header = assert(read("src/threadlocal.h"))
local capi = read("docs/c-api.md") or ""
local exports = 0
for name in header:gmatch("THREADLOCAL_API%s+[%w_%s%*]-([%w_]+)%s*%(") do
  exports = exports + 1
  if not capi:find("%f[%w_]" .. name .. "%f[^%w_]") then
    missing[#missing + 1] = name .. ": not in docs/c-api.md"
  end
end
if exports == 0 then missing[#missing + 1] = "no THREADLOCAL_API function found in src/threadlocal.h" end
report(("every function src/threadlocal.h exports appears in docs/c-api.md (%d)"):format(exports),
  missing)

------------------------------------------------------------------------------
-- (b) Code blocks run or compile as written.

local docs = { "README.md" }
for f in io.popen("ls docs/*.md 2>/dev/null"):lines() do docs[#docs + 1] = f end
local parsed = {}
for _, f in ipairs(docs) do parsed[f] = parse_md(f) end

-- An excerpt: its lines, comments left out, appear in order in path.
local function strip(l)
  l = l:gsub("^%s+", ""):gsub("%s+$", "")
  if l:match("^%-%-") or l:match("^/%*.*%*/$") then return "" end
  return (l:gsub("%s+%-%-%s.*$", ""):gsub("%s+/%*.*%*/$", ""))
end

local function excerpt(code, path)
  local text = read(path)
  if not text then return path .. " is missing" end
  local src = lines(text)
  local j = 1
  for _, l in ipairs(lines(code)) do
    local want = strip(l)
    if want ~= "" then
      while j <= #src and strip(src[j]) ~= want do j = j + 1 end
      if j > #src then return ("line not found in order in %s: %s"):format(path, want) end
      j = j + 1
    end
  end
end

local lua = arg[-1] or "lua5.4"
local preamble = 'threadlocal = require "threadlocal"; context = require "threadlocal.context"; '
local cobj = nil
local cflags = "-std=c11 -D_POSIX_C_SOURCE=200809L -Isrc -I/usr/include/lua5.4"
local cprelude = table.concat({
  "#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>",
  "#include <string.h>", "#include <pthread.h>", '#include "lua.h"', '#include "lauxlib.h"',
  '#include "lualib.h"', '#include "threadlocal.h"', "" }, "\n")

local counts = { lua = 0, c = 0, excerpt = 0, skipped = 0, optout = 0 }
local serial = 0
local problems = {}
for _, f in ipairs(docs) do
  for _, b in ipairs(parsed[f].blocks) do
    serial = serial + 1
    local n = serial
    local where = ("%s:%d"):format(f, b.line)
    local m = b.marker
    if m and m:match("^not run") then
      counts.optout = counts.optout + 1
    elseif m and m:match("^excerpt:") then
      counts.excerpt = counts.excerpt + 1
      local err = excerpt(b.code, m:match("^excerpt:%s*(%S+)"))
      if err then problems[#problems + 1] = where .. ": " .. err end
    elseif b.lang == "lua" then
      local cond = m and m:match("^run if:%s*(.+)$")
      local src = preamble
      if cond then src = src .. ("if not (%s) then print('SKIP') os.exit(0) end "):format(cond) end
      local file = ("%s/block%d.lua"):format(tmp, n)
      write(file, src .. b.code)
      local out = ("%s/block%d.out"):format(tmp, n)
      local ok = shell(("LUA_CPATH=%s LUA_PATH=';;' timeout 30 %s %s >%s 2>&1"):format(
        quote(build .. "/?.so;;"), lua, quote(file), quote(out)))
      local o = read(out) or ""
      if not ok then
        problems[#problems + 1] = where .. ": the lua block fails: " .. (o:gsub("\n", " "))
      elseif cond and o == "SKIP\n" then
        counts.skipped = counts.skipped + 1
        print(("# %s: skipped until `%s` holds"):format(where, cond))
      else
        counts.lua = counts.lua + 1
      end
    elseif b.lang == "c" then
      if not cc then
        counts.skipped = counts.skipped + 1
      else
        if not cobj then
          cobj = tmp .. "/threadlocal.o"
          if not shell(("%s %s -O0 -fPIC -c src/threadlocal.c -o %s"):format(cc, cflags, quote(cobj))) then
            problems[#problems + 1] = "src/threadlocal.c does not compile"
          end
        end
        local file = ("%s/block%d.c"):format(tmp, n)
        write(file, cprelude .. b.code)
        local out = ("%s/block%d.out"):format(tmp, n)
        local ok
        if b.code:find("int%s+main%s*%(") then
          local exe = ("%s/block%d"):format(tmp, n)
          ok = shell(("%s %s -o %s %s %s -llua5.4 -lm -lpthread -ldl >%s 2>&1 && timeout 30 %s >>%s 2>&1")
            :format(cc, cflags, quote(exe), quote(file), quote(cobj), quote(out), quote(exe), quote(out)))
        else
          -- A fragment of statements compiles as a function body, with the
          -- names docs/c-api.md's fragments share: req and root.
          ok = shell(("%s %s -fsyntax-only %s >%s 2>&1"):format(cc, cflags, quote(file), quote(out)))
          if not ok then
            write(file, cprelude .. "void fragment(threadlocal_shared *req, threadlocal_node root) {\n{\n"
              .. b.code .. "\n}\n(void)req, (void)root;\n}\n")
            ok = shell(("%s %s -fsyntax-only %s >%s 2>&1"):format(cc, cflags, quote(file), quote(out)))
          end
        end
        if ok then
          counts.c = counts.c + 1
        else
          problems[#problems + 1] = where .. ": the C block fails: " .. ((read(out) or ""):gsub("\n", " "):sub(1, 600))
        end
      end
    end
  end
end
report(("every lua and c block in README.md and docs/*.md runs or compiles"
  .. " (%d lua, %d c, %d excerpts; %d skipped, %d opted out)"):format(
  counts.lua, counts.c, counts.excerpt, counts.skipped, counts.optout), problems)

------------------------------------------------------------------------------
-- (c) README.md is short, and relative links resolve.

local readme = read("README.md") or ""
local nlines = #lines(readme)
report(("README.md has at most 250 lines (%d)"):format(nlines),
  nlines <= 250 and {} or { ("README.md has %d lines"):format(nlines) })

local linked = { "README.md", "spec/README.md", "examples/README.md" }
for _, f in ipairs(docs) do if f ~= "README.md" then linked[#linked + 1] = f end end
for f in io.popen("ls examples/*/README.md 2>/dev/null"):lines() do linked[#linked + 1] = f end
problems = {}
local nlinks = 0
local anchor_cache = {}
for _, f in ipairs(linked) do
  local doc = parsed[f] or parse_md(f)
  if doc then
    local dir = f:match("^(.*)/[^/]*$") or "."
    for _, l in ipairs(doc.links) do
      local t = l.target
      if not t:match("^%a[%w+.-]*:") then
        nlinks = nlinks + 1
        local path, frag = t:match("^([^#]*)#?(.*)$")
        local target = path == "" and f or (dir .. "/" .. path)
        local where = ("%s:%d: %s"):format(f, l.line, t)
        if not read(target) and not shell("test -d " .. quote(target)) then
          problems[#problems + 1] = where .. ": no such file"
        elseif frag ~= "" then
          if not anchor_cache[target] then
            local d = parse_md(target)
            anchor_cache[target] = d and anchors(d) or {}
          end
          if not anchor_cache[target][frag] then
            problems[#problems + 1] = where .. ": no such heading"
          end
        end
      end
    end
  end
end
report(("every relative link in README.md and docs/ resolves (%d links)"):format(nlinks), problems)

os.exit(failed and 1 or 0)
