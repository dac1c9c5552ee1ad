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
   -- threadlocal.so holds threadlocal.context too: the module puts it in
   -- package.preload, and luaopen_threadlocal_context serves a require made
   -- first.  Builtin also copies lua/, which holds only that public file:
   -- the internal LuaJIT metamethods are src/tl_jit.lua, built in only.
   type = "builtin",
   modules = {
      threadlocal = {
         sources = { "src/threadlocal.c" },
         incdirs = { "src" },
         libraries = { "pthread", "dl" },
      },
      ["threadlocal.context"] = "lua/threadlocal/context.lua",
   },
   -- C hosts that embed the module use make install or CMake, which install
   -- threadlocal.h, libthreadlocal.a and threadlocal.pc (docs/release.md).
   copy_directories = { "docs", "types" },
}
