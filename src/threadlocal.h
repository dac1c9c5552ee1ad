/*
** threadlocal.h: the names threadlocal exports, in one place.
**
** threadlocal gives Lua states and the C hosts that embed them data private to
** the calling OS thread.  A host that links the module in (rather than letting
** `require` find threadlocal.so) makes it available to a state with
**
**     luaL_requiref(L, "threadlocal", luaopen_threadlocal, 0);
**     lua_pop(L, 1);
**
** See README.md for the Lua API and the rules it follows.
*/
#ifndef THREADLOCAL_H
#define THREADLOCAL_H

#include "lua.h"

#define THREADLOCAL_VERSION_MAJOR 0
#define THREADLOCAL_VERSION_MINOR 1
#define THREADLOCAL_VERSION_PATCH 0
#define THREADLOCAL_VERSION "0.1.0"

/* Metatable names (also the type names in error messages). */
#define THREADLOCAL_LOCAL_MT "threadlocal.local"

#ifndef THREADLOCAL_API
#define THREADLOCAL_API extern
#endif

/*
** Opens the module: pushes the module table.  Safe to call from any number of
** states on any number of threads.  The first call pins the shared object
** that contains it, so that it stays mapped until the process ends.
*/
THREADLOCAL_API int luaopen_threadlocal(lua_State *L);

#endif
