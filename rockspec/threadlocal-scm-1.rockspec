rockspec_format = "3.0"
package = "threadlocal"
version = "scm-1"
source = {
   url = "git+file://./threadlocal",
}
description = {
   summary = "Data private to the calling OS thread, for Lua states and their C hosts",
   detailed = [[
      threadlocal gives Lua scripts and the C hosts that embed them data private
      to the current OS thread, the way Python's threading.local() does: a Local
      whose fields resolve through a table that belongs to the calling OS thread.
   ]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1, < 5.5",
}
build = {
   type = "builtin",
   modules = {
      threadlocal = {
         sources = { "src/threadlocal.c" },
         incdirs = { "src" },
         libraries = { "pthread", "dl" },
      },
      ["threadlocal.context"] = "lua/threadlocal/context.lua",
   },
   install = {
      -- For C hosts that embed the module.
      conf = { ["threadlocal.h"] = "src/threadlocal.h" },
   },
}
