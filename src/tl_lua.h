/*
** tl_lua.h: the Lua binding's compatibility block and data structures.
** Part of threadlocal.c, included after the core.
**
** Glossary (the core's words are in tl_core.h):
**   `state`   a tl_state: the per-lua_State anchor userdata; its user
**             values are TL_STATE_*.
**   `Local`   a tl_local: a userdata whose fields live in Lua tables.
**   `handle`  a tl_handle: one state's userdata of a shared local.
**   `proxy`   a tl_proxy: a Lua view of a stored table, by slab slot.
**   `scope`   a tl_scope: fields set until close; a guard runs `run`.
**   `self`    argument 1 of a method or metamethod (tl_*_checkself).
**   `ltab`    the binding's calls on a tl_tab that take a lua_State.
*/
#ifndef TL_LUA_H
#define TL_LUA_H

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h" /* LUA_JITLIBNAME tells LuaJIT */

/* ---------------------------------------------------------------------- */
/* Lua version compatibility                                              */
/* ---------------------------------------------------------------------- */

#if LUA_VERSION_NUM == 501

#define tl_rawlen(L, i) lua_objlen(L, i)
#define tl_absindex(L, i) \
  ((i) < 0 && (i) > LUA_REGISTRYINDEX ? lua_gettop(L) + (i) + 1 : (i))
#define tl_checkversion(L) ((void)0)
/*
** newproxy() makes a full userdata of no bytes from plain Lua.  Lua 5.1
** allocates it alone, so the hot check asks its length first.  LuaJIT
** keeps it in its own arena, where reading a tag cannot fault.  There,
** asking the length would cost 44 instructions per access.
*/
#ifdef LUA_JITLIBNAME
#define tl_udfits(L, i) 1
#else
#define tl_udfits(L, i) (lua_objlen(L, i) >= sizeof(void *))
#endif

static void tl_rawgetp(lua_State *L, int i, const void *p) {
  i = tl_absindex(L, i);
  lua_pushlightuserdata(L, (void *)(uintptr_t)p);
  lua_rawget(L, i);
}

static void tl_rawsetp(lua_State *L, int i, const void *p) { /* pops */
  i = tl_absindex(L, i);
  lua_pushlightuserdata(L, (void *)(uintptr_t)p);
  lua_insert(L, -2);
  lua_rawset(L, i);
}

/* A protected call of f with the light userdata ud, results dropped; the
** function value is made inside the protection. */
#define tl_cpcall(L, f, ud) lua_cpcall(L, f, ud)

static void tl_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}

#else

#define tl_rawlen(L, i) lua_rawlen(L, i)
#define tl_absindex(L, i) lua_absindex(L, i)
#define tl_checkversion(L) luaL_checkversion(L)
#define tl_udfits(L, i) 1 /* only C makes a userdata too small for a tag */
#define tl_rawgetp(L, i, p) ((void)lua_rawgetp(L, i, p))
#define tl_rawsetp(L, i, p) lua_rawsetp(L, i, p)
#define tl_setfuncs(L, l, nup) luaL_setfuncs(L, l, nup)

#if LUA_VERSION_NUM == 502 /* only 5.1 and 5.2 need it: see tl_pushstored */
/* A light C function and a light userdata allocate nothing. */
static int tl_cpcall(lua_State *L, lua_CFunction f, void *ud) {
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, ud);
  return lua_pcall(L, 1, 0, 0);
}
#endif

#endif

/*
** `with` and `run` call fn with a guard at slot `guard`: the scope, or the
** run's guard.  It is ready to undo what they set.  On 5.4 fn runs
** unprotected, with the guard to-be-closed.  Its __close undoes on return
** and on error, and an error keeps fn's frames for the message handler.
** As lua_call has no continuation, a yield inside fn still raises.  Before
** 5.4 fn runs under lua_pcall and the caller undoes.  Returns
** TL_GUARD_CLOSES, or lua_pcall's status.
**
** A coroutine that dies with an error does not close its to-be-closed
** slots.  The thread's fields would stay replaced, so in a coroutine fn
** runs under lua_pcall on 5.4 too.
*/
#define TL_GUARD_CLOSES (-1)
#if LUA_VERSION_NUM >= 504
static int tl_canclose(lua_State *L) { /* the main coroutine */
  int main = lua_pushthread(L);
  lua_pop(L, 1);
  return main;
}

static int tl_guardcall(lua_State *L, int guard, int nargs) {
  if (!tl_canclose(L)) return lua_pcall(L, nargs, LUA_MULTRET, 0);
  lua_toclose(L, guard);
  lua_call(L, nargs, LUA_MULTRET);
  return TL_GUARD_CLOSES;
}
#else
#define tl_canclose(L) ((void)(L), 0)
#define tl_guardcall(L, guard, nargs) lua_pcall(L, nargs, LUA_MULTRET, 0)
#endif

/*
** 64-bit integers, since thread ids and slab slots are table keys.  Lua
** 5.3 has integers.  Before it, a number with an exact integer value
** counts as one.  So C hosts see 3 as an integer on every version.
*/
#if LUA_VERSION_NUM >= 503

#define tl_pushint(L, i) lua_pushinteger(L, (lua_Integer)(i))
#define tl_rawgeti64(L, t, k) ((void)lua_rawgeti(L, t, (lua_Integer)(k)))
#define tl_rawseti64(L, t, k) lua_rawseti(L, t, (lua_Integer)(k)) /* pops */

static int tl_toint(lua_State *L, int i, int64_t *out) {
  if (!lua_isinteger(L, i)) return 0;
  *out = (int64_t)lua_tointeger(L, i);
  return 1;
}

#else

#define tl_pushint(L, i) lua_pushnumber(L, (lua_Number)(i))

static void tl_rawgeti64(lua_State *L, int t, uint64_t k) {
  t = tl_absindex(L, t);
  lua_pushnumber(L, (lua_Number)k);
  lua_rawget(L, t);
}

static void tl_rawseti64(lua_State *L, int t, uint64_t k) { /* pops the value */
  t = tl_absindex(L, t);
  lua_pushnumber(L, (lua_Number)k);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

static int tl_toint(lua_State *L, int i, int64_t *out) {
  return lua_type(L, i) == LUA_TNUMBER && tl_dbl_toint((double)lua_tonumber(L, i), out);
}

#endif

/*
** A userdata here carries up to four Lua values.  Lua 5.4 has numbered
** user values; older versions get one table that holds them.
*/
#if LUA_VERSION_NUM >= 504

#define tl_newud(L, sz, nuv) lua_newuserdatauv(L, sz, nuv)
#define tl_getuv(L, i, n) ((void)lua_getiuservalue(L, i, n))
#define tl_setuv(L, i, n) ((void)lua_setiuservalue(L, i, n))

#else

#if LUA_VERSION_NUM == 501
#define tl_getuvt(L, i) lua_getfenv(L, i)
#define tl_setuvt(L, i) lua_setfenv(L, i)
#else
#define tl_getuvt(L, i) lua_getuservalue(L, i)
#define tl_setuvt(L, i) lua_setuservalue(L, i)
#endif

static void *tl_newud(lua_State *L, size_t sz, int nuv) {
  void *p = lua_newuserdata(L, sz);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0);
    tl_setuvt(L, -2);
  }
  return p;
}

static void tl_getuv(lua_State *L, int i, int n) {
  tl_getuvt(L, i);
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
}

static void tl_setuv(lua_State *L, int i, int n) { /* pops the value */
  i = tl_absindex(L, i);
  tl_getuvt(L, i);
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
}

#endif

/* ---------------------------------------------------------------------- */
/* The binding's data structures                                          */
/* ---------------------------------------------------------------------- */

/*
** Upvalues and user values, in one place.
**
** Opening the module builds only its table of plain C functions.  So a
** short-lived state that touches a shared local pays for little more.
** The rest of a state is made on first need (see tl_pushstate).  The
** module's functions and the metamethods of shared locals, proxies and
** Locals have no upvalues.  Those that need the state find it in the
** registry.  Closures with upvalues:
**   A Local's own __index and __newindex, the hot path:
**     TL_UP_STATE   1  the state's tl_state userdata.
**     TL_UP_FIELDS  2  the fields table of the thread in get_id/set_id.
**     TL_UP_SELF    3  the Local.
**     TL_UP_MAP     4  the Local's TL_LOCAL_MAP, for the slow path.
**   Or, made while LuaJIT's JIT is on, the Lua closures of src/tl_jit.lua.
**   Their bodies name these first, in this order (docs/architecture.md):
**     TL_JIT_UP_FIELDS  1  the fields table, as TL_UP_FIELDS.
**     TL_JIT_UP_ID      2  the number get_id/set_id; -1 for none.
**   The GC sentinel's __gc: the tl_state.
**   The proxy iterator tl_iter: a proxy, the next entry index, the cache.
**   The step tl_threads_step: the Local, the ids to visit, the position.
**
** User values of the tl_state (one per state, in the registry), each made
** on first need:
**   TL_STATE_BYTHREAD  thread id -> weak set of Locals holding its fields.
**   TL_STATE_SENTINEL  metatable of the per-cycle GC sentinel.
**   TL_STATE_PROXIES   weak: slab slot + 1 -> a proxy of that slot.
**   TL_STATE_JIT       what src/tl_jit.lua returns; false without the FFI.
**                      LuaJIT with the JIT on only (see tl_jit.c).
**   TL_STATE_JITMT     the metatable of shared locals read often with the
**                      JIT on: the shared-local one with jit.lua's __index.
**   TL_STATE_EMPTY     an empty table, never written.  A Local's __index
**                      reads it on a thread without fields, and holds it
**                      while it holds no thread's fields.  Made with the
**                      first Local, so that the slow path never allocates.
**   TL_STATE_SINK      a table nobody reads.  A Local's __newindex holds it
**                      while it holds no thread's fields (see tl_local_index).
**
** The shared-local metatable, in the registry under its name, has more
** keys.  Each threadlocal_shared, as a light userdata, maps to this state's
** userdata of it.  No metamethod name can be such a key.  So one name has
** one userdata, and a state that only uses shared locals needs no tl_state.
**
** User values of a Local (tl_local):
**   TL_LOCAL_MAP       thread id -> that thread's fields table.
**   TL_LOCAL_INIT      {init, args...} (ninit values), or nil.
**   TL_LOCAL_GET       its own __index closure.
**   TL_LOCAL_SET       its own __newindex closure.
** User values of a shared local's userdata (tl_handle):
**   TL_HANDLE_LAST     the proxy of the remembered field, when a table.
**   TL_HANDLE_KEY      the remembered field's key (see tl_last).
** User value of a proxy (tl_proxy):
**   TL_PROXY_KEY       the remembered field's key (see tl_last).
*/
#define TL_UP_STATE lua_upvalueindex(1)
#define TL_UP_FIELDS lua_upvalueindex(2)
#define TL_UP_SELF lua_upvalueindex(3)
#define TL_UP_MAP lua_upvalueindex(4)
#define TL_LOCAL_NUP 4
#define TL_JIT_UP_FIELDS 1
#define TL_JIT_UP_ID 2

enum { TL_STATE_BYTHREAD = 1, TL_STATE_SENTINEL, TL_STATE_PROXIES,
       TL_STATE_JIT, TL_STATE_JITMT, TL_STATE_EMPTY, TL_STATE_SINK,
       TL_STATE_NUV = TL_STATE_SINK };
enum { TL_LOCAL_MAP = 1, TL_LOCAL_INIT, TL_LOCAL_GET, TL_LOCAL_SET,
       TL_LOCAL_NUV = TL_LOCAL_SET };
enum { TL_HANDLE_LAST = 1, TL_HANDLE_KEY, TL_HANDLE_NUV = TL_HANDLE_KEY };
enum { TL_PROXY_KEY = 1, TL_PROXY_NUV = TL_PROXY_KEY };


/* The per-state anchor, made on first need. */
typedef struct tl_state {
  const char *tag; /* tl_state_tag */
  tl_home *home; /* made with the first Local; NULL again once closed */
  int closed;    /* the state is closing */
  int sentinel;  /* 1: a GC sentinel is live; 0: none yet (no Local), or
                 ** making the next one ran out of memory */
} tl_state;

/*
** The module's userdata start with a tag: the address of their type name.
** So a metamethod checks its argument without its metatable (tl_testud).
** Lua code gets the metamethods through debug.getmetatable, and may call
** them with anything.
*/
static const char tl_local_tag[] = THREADLOCAL_LOCAL_MT;
static const char tl_handle_tag[] = THREADLOCAL_SHARED_MT;
static const char tl_proxy_tag[] = THREADLOCAL_PROXY_MT;
static const char tl_state_tag[] = "threadlocal.state";

/*
** A Local.  Its __index and __newindex closures each keep one thread's
** fields table as upvalue TL_UP_FIELDS.  So a hit costs a rawget on a
** fixed table, as the floor does.  Its get_id and set_id say whose.  A
** thread gets fields on its first write, or with init its first access.
** Until then __index holds the state's empty table (TL_STATE_EMPTY).
*/
typedef struct tl_local {
  const char *tag; /* tl_local_tag */
  uint64_t get_id, set_id;
  uint64_t init_id; /* the thread whose init runs now, or 0 (ids start at 1) */
  int ninit; /* init and its arguments in TL_LOCAL_INIT; 0: no init */
  struct tl_scope *scopes; /* its open scopes in this state, newest first */
} tl_local;

#define TL_NOCACHE UINT64_MAX /* matches no thread, not even "no record yet" */

/*
** The field read or written last through a shared local or a proxy.  So
** a loop over sh.k or sh.t.k skips the key's lookup.  The key string is
** kept alive as a user value of the userdata: no other object can have
** its address.  A value at slot 2 whose tl_keyid is `key` is that very
** string, with no bytes to compare.  `entry` is right while thread
** `owner_id`'s table `tab` has the same version.  Versions never repeat
** on a thread, and an overwrite in place moves `version` along too.  A key
** is remembered at its second miss in a row (`seen`, a hint only).  So a
** loop over two keys does not pay to keep each alive in turn.
*/
typedef struct tl_last {
  const void *key, *seen;
  uint64_t owner_id, version;
  const tl_tab *tab;
  tl_entry *entry;
} tl_last;

/*
** tl_keyid: the address that stands for the string at slot i; NULL when
** not a string.  A remembered key (see tl_last) is known by it alone.  In
** 5.4 it is the string object (lua_topointer), which never moves, and the
** hot paths check nothing else.  Other values give NULL or another address.
** Only a light userdata made at that address, by C or the debug library,
** could pass for it (see tl_checkud_hot).  Before 5.4 the type is checked,
** and the address of the bytes (inside the string object) serves.
*/
#if LUA_VERSION_NUM >= 504
#define tl_keyid(L, i) lua_topointer(L, i)
#else
#define tl_keyid(L, i) \
  (lua_type(L, i) == LUA_TSTRING ? (const void *)lua_tostring(L, i) : (const void *)NULL)
#endif

/* A shared local in one state.  A table field remembered in `last` has its
** proxy as user value TL_HANDLE_LAST.  `fields` are the calling thread's
** fields of sl (or NULL) while tl_mygen is `gen`: no lookup in its map. */
typedef struct tl_handle {
  const char *tag; /* tl_handle_tag */
  threadlocal_shared *sl;
  uint64_t gen;
  tl_tab *fields;
  tl_last last;
  unsigned reads; /* through the C __index, counted up to TL_JIT_HOT */
  struct tl_scope *scopes; /* its open scopes in this state, newest first */
} tl_handle;

/* A proxy of the table in slot `slot` of thread `owner_id`'s slab. */
typedef struct tl_proxy {
  const char *tag; /* tl_proxy_tag */
  uint64_t owner_id;
  uint32_t slot, gen;
  tl_last last;
} tl_proxy;

/*
** The public lua/threadlocal/context.lua and the internal src/tl_jit.lua
** are built into the module.  So a host that links only the C sources
** gets them too, from one source of truth.  The header tl_embedded.h holds
** their bytes as C arrays, which any C11 compiler builds in.  The script
** tools/embed.sh writes it (make embed); make test fails when it differs.
** With -DTL_NO_EMBED, threadlocal.context is left to package.path, where
** make install, CMake and a rock's builtin build put lua/.  Locals and
** shared locals then keep their C metamethods: tl_jit.lua is never
** installed.
*/
#ifndef TL_NO_EMBED
#define TL_EMBED 1
#include "tl_embedded.h"
#endif

/*
** Under LuaJIT (whose headers say 5.1), some objects get the Lua
** metamethods of src/tl_jit.lua (tl_jit.c).  Locals get them when made
** with the JIT on.  Shared locals get them at their TL_JIT_HOT-th read
** through the C __index, if the JIT is on then.  Why 16: the section
** "LuaJIT" of docs/architecture.md.
*/
#if LUA_VERSION_NUM == 501 && defined(TL_EMBED)
#define TL_JIT 1
#define TL_JIT_HOT 16
static void tl_jit_promote(lua_State *L);             /* tl_jit.c */
static int tl_jit_closures(lua_State *L, int st, int ud); /* tl_jit.c */
#define tl_jit_count(L, ref) \
  ((ref)->reads < TL_JIT_HOT && ++(ref)->reads == TL_JIT_HOT ? tl_jit_promote(L) : (void)0)
#else
#define tl_jit_count(L, ref) ((void)0)
#define tl_jit_closures(L, st, ud) 0
#endif

/* The tl_state at stack index (or upvalue) st. */
#define tl_state_at(L, st) ((tl_state *)lua_touserdata(L, st))

/* Parts call only parts included before them, except these.  Each is
** defined in a later part that builds on the caller's. */
static void tl_pushproxymt(lua_State *L); /* tl_shared.c, for tl_convert.c */
static int tl_sentinel_gc(lua_State *L);  /* tl_local.c, for tl_state.c */

#endif
