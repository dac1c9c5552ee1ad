/*
** threadlocal: data private to the calling OS thread, for Lua states and
** the C hosts that embed them.  Its exports are in threadlocal.h.
**
** This file is the module's one translation unit, as Lua's onelua.c is.
** It includes the parts in layer order.  So the hot paths inline across
** them, and the thread id stays an initial-exec load.
**
**   Core (plain C, compiled before lua.h is included):
**   - tl_core.h      data structures: values, tables, threads, homes
**   - tl_table.c     allocator hook, hashing, shared tables, slabs
**   - tl_registry.c  shared locals by name
**   - tl_ids.c       ids of shared locals and keys, for LuaJIT's FFI
**   - tl_thread.c    thread records, their shared fields, homes, exit, fork
**   - tl_capi.c      a thread's fields of a shared local, the C API
**   - tl_snapshot.c  moving tables between threads, snapshots (C API)
**   Lua binding:
**   - tl_lua.h       version compatibility, the binding's structures
**   - tl_state.c     helpers, the per-state anchor (made on first need)
**   - tl_convert.c   Lua values <-> shared values, proxies
**   - tl_shared.c    shared locals and proxies: threadlocal.shared, metamethods
**   - tl_local.c     Locals: threadlocal.new, metamethods, purge of exited threads
**   - tl_jit.c       Locals' Lua metamethods for LuaJIT's JIT
**   - tl_context.c   scopes, hand-off (capture, run), release
**   - tl_module.c    module functions, built-in companions, luaopen_threadlocal
*/
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE, RTLD_NOLOAD */

#include "tl_core.h"
#include "tl_table.c"
#include "tl_registry.c"
#include "tl_ids.c"
#include "tl_thread.c"
#include "tl_capi.c"
#include "tl_snapshot.c"

#include "tl_lua.h"
#include "tl_state.c"
#include "tl_convert.c"
#include "tl_shared.c"
#include "tl_local.c"
#include "tl_jit.c"
#include "tl_context.c"
#include "tl_module.c"
