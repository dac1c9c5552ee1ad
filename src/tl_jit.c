/*
** tl_jit.c: Locals' metamethods for LuaJIT with the JIT on.  Part of
** threadlocal.c (the Lua binding).
**
** LuaJIT cannot compile a call to a C function through the Lua API: a loop
** over a Local with C closures aborts its traces and runs interpreted.  A
** Local made while the JIT is on gets the Lua closures of
** lua/threadlocal/jit.lua instead (built in with .incbin, loaded once per
** state): a hit reads the calling thread's id through an FFI call to
** tl_jit_myid and does a rawget/rawset on the fields table the closure holds;
** a miss calls tl_jit_index or tl_jit_newindex here, which check the
** arguments as tl_local_index and tl_local_newindex do, find the calling
** thread's fields as they do (tl_local_push) and return them with the
** thread's id, which the closure keeps as its upvalues TL_JIT_UP_FIELDS and
** TL_JIT_UP_ID.  The Local's get_id and set_id say
** whose fields the closures hold, as for the C closures, so that the purge,
** clear and a failed init drop them (tl_uncache).  Everywhere else (Lua 5.1
** to 5.4, LuaJIT's interpreter, a build without the embedded file) Locals
** keep the C closures.
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

#ifdef TL_JIT

TL_EMBED_LUA(tl_lua_jit, "threadlocal/jit.lua");

/* The calling thread's id, for the FFI: never allocates, never fails.  A
** double holds every id exactly (ids count up from 1: they would need 2^53
** threads to outgrow it); 0 (no record yet) matches no cached id. */
static double tl_jit_myid(void) {
  return (double)tl_myid;
}

/*
** "bad argument #1 to '__index' (msg)", placed where the metamethod was
** called from (level 2: the Lua closure is level 1), as LuaJIT places the
** errors of the C closures.
*/
static TL_NORETURN TL_NOINLINE void tl_jit_argerror(lua_State *L, int uv, const char *msg) {
  luaL_where(L, 2);
  lua_pushfstring(L, "bad argument #1 to '%s' (%s)",
                  uv == TL_LOCAL_GET ? "__index" : "__newindex", msg);
  lua_concat(L, 2);
  tl_raise(L);
}

/* Argument 1 must be a Local. */
static void tl_jit_check1(lua_State *L, int uv) {
  void *p = lua_touserdata(L, 1);
  if (p == NULL || *(const char *const *)p != tl_local_tag)
    tl_jit_argerror(L, uv, lua_pushfstring(L, "%s expected, got %s", tl_local_tag,
                                           luaL_typename(L, 1)));
}

/*
** The slow path of a Lua closure (o, self[, k]): o is argument 1 of the
** metamethod, self the Local whose closure it is.  uv: TL_LOCAL_GET or
** TL_LOCAL_SET, the user value of self that holds the closure.  Returns the
** fields table to use and the id of their thread, for the closure to keep.
*/
static int tl_jit_slow(lua_State *L, int uv) {
  tl_local *self;
  uint64_t *cid;
  tl_jit_check1(L, uv);
  self = (tl_local *)tl_checkud_hot(L, 2, tl_local_tag);
  cid = uv == TL_LOCAL_GET ? &self->get_id : &self->set_id;
  if (*cid == tl_myid) { /* another Local as o: answered from self's fields */
    tl_getuv(L, 2, uv);
    lua_getupvalue(L, -1, TL_JIT_UP_FIELDS);
    lua_getupvalue(L, -2, TL_JIT_UP_ID);
    return 2;
  }
  if (!lua_rawequal(L, 1, 2)) tl_jit_argerror(L, uv, "not the Local whose metamethod this is");
  tl_local_push1(L, 2);
  *cid = tl_myid;
  lua_pushnumber(L, (lua_Number)tl_myid); /* no allocation until the closure keeps both */
  return 2;
}

static int tl_jit_index(lua_State *L) {
  lua_settop(L, 2);
  return tl_jit_slow(L, TL_LOCAL_GET);
}

static int tl_jit_newindex(lua_State *L) {
  lua_settop(L, 3);
  tl_jit_check1(L, TL_LOCAL_SET); /* as tl_local_newindex: argument 1, then the key */
  switch (lua_type(L, 3)) {
    case LUA_TNIL:
      tl_error(L, "threadlocal: cannot use nil as a field name");
    case LUA_TNUMBER: {
      lua_Number n = lua_tonumber(L, 3);
      if (n != n) tl_error(L, "threadlocal: cannot use NaN as a field name");
      break;
    }
  }
  lua_settop(L, 2);
  return tl_jit_slow(L, TL_LOCAL_SET);
}

/* Whether LuaJIT's JIT is on in this state: package.loaded.jit.status(). */
static int tl_jit_on(lua_State *L) {
  int on = 0, top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "jit");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "status");
      if (lua_isfunction(L, -1)) {
        lua_call(L, 0, 1);
        on = lua_toboolean(L, -1);
      }
    }
  }
  lua_settop(L, top);
  return on;
}

/* Pushes the factory of lua/threadlocal/jit.lua's closures and returns 1
** when the JIT is on and the FFI is there; else pushes nothing, returns 0.
** st: the index of the tl_state, whose user value TL_STATE_JIT caches it
** (false: no FFI). */
static int tl_jit_factory(lua_State *L, int st) {
  if (!tl_jit_on(L)) return 0;
  st = tl_absindex(L, st);
  tl_getuv(L, st, TL_STATE_JIT);
  if (lua_isnil(L, -1)) {
    size_t len = (size_t)(tl_lua_jit_end - tl_lua_jit);
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, tl_lua_jit, len, "@lua/threadlocal/jit.lua") != 0) tl_raise(L);
    lua_pushliteral(L, "threadlocal.jit");
    lua_pushnil(L);
    lua_createtable(L, 0, 3);
    lua_pushlightuserdata(L, (void *)(uintptr_t)tl_jit_myid);
    lua_setfield(L, -2, "myid");
    lua_pushcfunction(L, tl_jit_index);
    lua_setfield(L, -2, "index");
    lua_pushcfunction(L, tl_jit_newindex);
    lua_setfield(L, -2, "newindex");
    lua_call(L, 3, 1);
    lua_pushvalue(L, -1);
    tl_setuv(L, st, TL_STATE_JIT);
  }
  if (lua_isfunction(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* With the metatable mt of the new Local ud on top: when the JIT is on, sets
** its __index and __newindex to Lua closures and returns 1; else 0. */
static int tl_jit_closures(lua_State *L, int st, int ud) {
  if (!tl_jit_factory(L, st)) return 0; /* mt factory */
  lua_pushvalue(L, ud);
  lua_call(L, 1, 2);                    /* mt index newindex */
  lua_pushvalue(L, -2);
  tl_setuv(L, ud, TL_LOCAL_GET);
  lua_pushvalue(L, -1);
  tl_setuv(L, ud, TL_LOCAL_SET);
  lua_setfield(L, -3, "__newindex");
  lua_setfield(L, -2, "__index");
  return 1;
}

#else

#define tl_jit_closures(L, st, ud) 0

#endif
