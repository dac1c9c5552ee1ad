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
   -- The Makefile builds threadlocal.so, which holds threadlocal.context
   -- (in package.preload once the module opens; luaopen_threadlocal_context
   -- serves a require made first).  The builtin backend would also install
   -- lua/, whose jit.lua is internal.  -B: build/luarocks may hold a build
   -- for another Lua.
   type = "make",
   build_target = "-B all",
   build_variables = {
      BUILD = "build/luarocks",
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_pass = false,
   install = {
      lib = { threadlocal = "build/luarocks/threadlocal.so" },
   },
   -- C hosts that embed the module use make install or CMake, which install
   -- threadlocal.h, libthreadlocal.a and threadlocal.pc (docs/release.md).
}
