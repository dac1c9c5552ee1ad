/*
** tl_state.c: the binding's helpers: errors, argument checks, stored
** strings.  Also the per-state anchor with what it holds, made on first need.
** Part of threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

/* ---------------------------------------------------------------------- */
/* Lua helpers                                                            */
/* ---------------------------------------------------------------------- */

static TL_NORETURN void tl_raise(lua_State *L) { /* the value on top */
  lua_error(L);
  tl_unreachable();
}

/* The chunk name of src/tl_jit.lua.  It keeps the name the file had under
** lua/, so error positions and tracebacks read as before. */
#define TL_JIT_CHUNK "@lua/threadlocal/jit.lua"

/* Pushes msg after the caller's position, as luaL_error does.  When the
** caller is one of jit.lua's metamethods, its own caller is blamed. */
static void tl_pushmsg(lua_State *L, const char *msg) {
  lua_Debug ar;
  int level = 1;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "S", &ar) && strcmp(ar.source, TL_JIT_CHUNK) == 0)
    level = 2;
  luaL_where(L, level);
  lua_pushstring(L, msg);
  lua_concat(L, 2);
}

/* Our errors: "chunk:line: threadlocal: ...". */
static TL_NORETURN void tl_error(lua_State *L, const char *msg) {
  tl_pushmsg(L, msg);
  tl_raise(L);
}

/* Lua's own message, without a position. */
static TL_NORETURN void tl_memerror(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  tl_raise(L);
}

/* Pushes "<tag> expected, got <type of slot i>", the message of a type error. */
static const char *tl_pushexpected(lua_State *L, int i, const char *tag) {
  return lua_pushfstring(L, "%s expected, got %s", tag, luaL_typename(L, i));
}

/* "bad argument #i to 'f' (<tag> expected, got <type>)" */
static TL_NORETURN TL_NOINLINE void tl_typeerror(lua_State *L, int i, const char *tag) {
  luaL_argerror(L, i, tl_pushexpected(L, i, tag));
  tl_unreachable();
}

/*
** The userdata at slot i if it is one of the module's of the kind `tag`.
** That is a full userdata of `size` bytes that starts with the tag.  Else
** NULL: a light userdata has length 0.  Cheap enough for the hot paths.
*/
static TL_HOT void *tl_testud(lua_State *L, int i, const char *tag, size_t size) {
  void *p = lua_touserdata(L, i);
  if (p == NULL || tl_rawlen(L, i) != size || *(const char *const *)p != tag) return NULL;
  return p;
}

static void *tl_checkud(lua_State *L, int i, const char *tag, size_t size) {
  void *p = tl_testud(L, i, tag, size);
  if (p == NULL) tl_typeerror(L, i, tag);
  return p;
}

/*
** The same check for the hot metamethods, without the exact length, which
** costs one more call into Lua per access.  Before 5.2 the length is still
** asked, since newproxy() makes empty userdata.  Only C code makes a light
** userdata whose address cannot be read.
*/
static TL_HOT void *tl_checkud_hot(lua_State *L, int i, const char *tag) {
  void *p = lua_touserdata(L, i);
  if (tl_unlikely(p == NULL || !tl_udfits(L, i) || *(const char *const *)p != tag))
    tl_typeerror(L, i, tag);
  return p;
}

static tl_thread *tl_self(lua_State *L) {
  tl_thread *t = tl_thread_get();
  if (t == NULL) tl_memerror(L);
  return t;
}

/*
** Pushes a string that lives in shared storage.  Before 5.3 and in LuaJIT,
** lua_pushlstring may collect before it copies s.  A finalizer could then
** free or rewrite s, so it is copied out first.  A long string's copy is
** pushed by a protected call, so an error cannot leak it.  That call,
** tl_cpcall, allocates nothing outside the protection.  The string comes
** back through the registry, as a protected C call returns nothing on 5.1.
*/
#if LUA_VERSION_NUM >= 503
#define tl_pushstored(L, s, len) ((void)lua_pushlstring(L, s, len))
#else
typedef struct tl_strcopy {
  const char *s;
  size_t len;
} tl_strcopy;

static const char tl_copykey = 0; /* registry key of the pushed copy */

static int tl_pushcopy_protected(lua_State *L) {
  const tl_strcopy *c = (const tl_strcopy *)lua_touserdata(L, 1);
  lua_pushlstring(L, c->s, c->len);
  tl_rawsetp(L, LUA_REGISTRYINDEX, &tl_copykey);
  return 0;
}

static void tl_pushstored(lua_State *L, const char *s, size_t len) {
  char buf[128];
  tl_strcopy c;
  int status;
  if (len <= sizeof buf) {
    memcpy(buf, s, len);
    lua_pushlstring(L, buf, len);
    return;
  }
  if ((c.s = tl_strdup(s, len)) == NULL) tl_memerror(L);
  c.len = len;
  status = tl_cpcall(L, tl_pushcopy_protected, &c); /* may collect: s is not used after */
  tl_free((void *)(uintptr_t)c.s);
  if (status != 0) tl_raise(L);
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_copykey);
  lua_pushnil(L); /* an existing key: no allocation */
  tl_rawsetp(L, LUA_REGISTRYINDEX, &tl_copykey);
}
#endif

/* ---------------------------------------------------------------------- */
/* The per-state anchor, made on first need                               */
/* ---------------------------------------------------------------------- */

static const char tl_statekey = 0; /* registry key of the tl_state */

/* Finalizers ignore what is not theirs: Lua code can call them by hand. */
static int tl_state_gc(lua_State *L) {
  tl_state *st = (tl_state *)tl_testud(L, 1, tl_state_tag, sizeof *st);
  if (st == NULL) return 0;
  st->closed = 1;
  if (st->home != NULL) {
    tl_home_close(st->home);
    st->home = NULL;
  }
  return 0;
}

/* With [made, found] on top: keeps found and returns 0, or keeps made and
** returns 1 (the caller stores it).  The slot is read again after made is
** made, as an allocation may run a finalizer that fills it. */
static int tl_keepmade(lua_State *L) {
  if (!lua_isnil(L, -1)) {
    lua_remove(L, -2);
    return 0;
  }
  lua_pop(L, 1);
  return 1;
}

/* Pushes this state's tl_state, making it on first need; returns its index. */
static int tl_pushstate(lua_State *L) {
  tl_state *st;
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey);
  if (!lua_isnil(L, -1)) return lua_gettop(L);
  lua_pop(L, 1);
  st = (tl_state *)tl_newud(L, sizeof *st, TL_STATE_NUV);
  st->tag = tl_state_tag;
  st->home = NULL;
  st->closed = st->sentinel = 0;
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey);
  if (tl_keepmade(L)) {
    lua_pushvalue(L, -1);
    tl_rawsetp(L, LUA_REGISTRYINDEX, &tl_statekey);
  }
  return lua_gettop(L);
}

/* The home of the tl_state at st, made with the first Local.  The state
** then also gets the finalizer that closes it. */
static tl_home *tl_state_home(lua_State *L, int st) {
  tl_state *s = tl_state_at(L, st);
  if (s->home == NULL) {
    if (s->closed) tl_error(L, "threadlocal: the state is closing");
    st = tl_absindex(L, st);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, tl_state_gc);
    lua_setfield(L, -2, "__gc");
    if (s->home == NULL && (s->home = tl_home_new()) == NULL) tl_memerror(L);
    lua_setmetatable(L, st); /* no Lua allocation between making and owning it */
  }
  return s->home;
}

/* Pushes user value n of the tl_state at st, a table made on first need. */
static void tl_state_uv(lua_State *L, int st, int n) {
  tl_getuv(L, st, n);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  if (n == TL_STATE_PROXIES) { /* weak values */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
  } else if (n == TL_STATE_SENTINEL) { /* the sentinel's metatable */
    lua_pushvalue(L, st);
    lua_pushcclosure(L, tl_sentinel_gc, 1);
    lua_setfield(L, -2, "__gc");
  }
  tl_getuv(L, st, n);
  if (tl_keepmade(L)) {
    lua_pushvalue(L, -1);
    tl_setuv(L, st, n);
  }
}

/* Pushes the metatable `name`, made on first use in this state from funcs
** (plain C functions).  It is hidden, with room for one more entry (tl_shared_new).
** It is registered under its name, as luaL_newmetatable does.  [-0, +1] */
static void tl_pushmeta(lua_State *L, const char *name, const luaL_Reg *funcs) {
  lua_getfield(L, LUA_REGISTRYINDEX, name);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 9);
  tl_setfuncs(L, funcs, 0);
  lua_pushstring(L, name);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__name");
  lua_setfield(L, -2, "__metatable");
  lua_getfield(L, LUA_REGISTRYINDEX, name);
  if (tl_keepmade(L)) {
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, name);
  }
}

/* Pushes this state's proxy cache; returns its index. */
static int tl_pushcache(lua_State *L) {
  int st = tl_pushstate(L);
  tl_state_uv(L, st, TL_STATE_PROXIES);
  lua_remove(L, st);
  return lua_gettop(L);
}

/* t[id] = nil, without inserting a dead key (which can allocate) */
static void tl_delid(lua_State *L, int t, uint64_t id) {
  t = tl_absindex(L, t);
  tl_rawgeti64(L, t, id);
  if (!lua_isnil(L, -1)) {
    lua_pushnil(L);
    tl_rawseti64(L, t, id);
  }
  lua_pop(L, 1);
}

static void tl_copytable(lua_State *L, int src) { /* pushes a shallow copy */
  src = tl_absindex(L, src);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, src)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

static int tl_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}
