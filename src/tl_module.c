/*
** tl_module.c: the module's functions, the loader of the built-in
** companions, and luaopen_threadlocal.  Part of threadlocal.c (the Lua
** binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

static int tl_clear(lua_State *L) {
  if (tl_checkkind(L, TL_KLOCAL | TL_KSHARED, "threadlocal.local or threadlocal.shared") ==
      TL_KSHARED) {
    if (tl_me != NULL) tl_shfields_clear(tl_me, ((tl_handle *)lua_touserdata(L, 1))->sl);
  } else {
    tl_local *lo = (tl_local *)lua_touserdata(L, 1);
    uint64_t id = tl_myid;
    if (id == 0) return 0; /* this thread never stored anything */
    tl_getuv(L, 1, TL_LOCAL_MAP);
    tl_delid(L, -1, id);
    if (lo->get_id == id || lo->set_id == id) tl_uncache(L, 1, lo);
  }
  return 0;
}

/* threadlocal.table(loc): the calling thread's live fields table of a
** Local, for hot loops on this thread.  If the thread has none, init runs
** first. */
static int tl_table(lua_State *L) {
  tl_checkkind(L, TL_KLOCAL, THREADLOCAL_LOCAL_MT);
  lua_settop(L, 1);
  tl_local_push_findstate(L, 1);
  return 1;
}

/* threadlocal.fields: a copy of the calling thread's fields. */
static int tl_fields_copy(lua_State *L) {
  const tl_tab *tab;
  tl_tab *clone;
  int kind = tl_checkkind(L, TL_KLOCAL | TL_KSHARED | TL_KPROXY, TL_ANYKIND);
  if (kind == TL_KLOCAL) {
    tl_local_push_findstate(L, 1);
    tl_copytable(L, -1);
    return 1;
  }
  lua_pushcfunction(L, tl_pushcopy_pcall); /* may run a finalizer: before the lookup */
  tab = kind == TL_KSHARED ? tl_handle_selffields(L, 0) : tl_proxy_tab(L, 1);
  if (tab == NULL) {
    lua_newtable(L);
    return 1;
  }
  if (tl_tab_clone(tab, NULL, 0, &clone) != TL_COPY_OK) tl_memerror(L);
  tl_pushcopy_clone(L, clone);
  return 1;
}

/* Upvalues: the Local, the array of ids to visit, the position in it. */
static int tl_threads_step(lua_State *L) {
  lua_Integer i = lua_tointeger(L, lua_upvalueindex(3));
  for (;;) {
    lua_rawgeti(L, lua_upvalueindex(2), (int)++i);       /* id */
    if (lua_isnil(L, -1)) return 1;
    tl_getuv(L, lua_upvalueindex(1), TL_LOCAL_MAP);      /* id map */
    lua_pushvalue(L, -2);
    lua_rawget(L, -2);                                   /* id map fields? */
    if (lua_istable(L, -1)) {
      lua_pushinteger(L, i);
      lua_replace(L, lua_upvalueindex(3));
      tl_copytable(L, -1);                               /* id map fields copy */
      lua_pushvalue(L, -4);
      lua_insert(L, -2);                                 /* id map fields id copy */
      return 2;
    }
    lua_pop(L, 3);
  }
}

static int tl_threads(lua_State *L) {
  int n = 0;
  tl_checkkind(L, TL_KLOCAL, THREADLOCAL_LOCAL_MT);
  lua_settop(L, 1);
  tl_purge(L, tl_pushstate(L));
  lua_settop(L, 1);
  tl_getuv(L, 1, TL_LOCAL_MAP);  /* lo map */
  lua_newtable(L);               /* lo map ids */
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, 3, ++n);
  }
  lua_remove(L, 2);              /* lo ids */
  lua_pushinteger(L, 0);         /* lo ids 0 */
  lua_pushcclosure(L, tl_threads_step, 3);
  return 1;
}

/* threadlocal.pairs(x): pairs for a Local, shared local or proxy, also
** where pairs() has no __pairs (5.1, LuaJIT). */
static int tl_pairs(lua_State *L) {
  int kind = tl_checkkind(L, TL_KLOCAL | TL_KSHARED | TL_KPROXY, TL_ANYKIND);
  lua_settop(L, 1);
  if (kind == TL_KLOCAL) return tl_local_pairs(L);
  return kind == TL_KSHARED ? tl_shared_pairs(L) : tl_proxy_pairs(L);
}

static int tl_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tl_self(L)->id);
  return 1;
}

/* threadlocal.context, built in (see TL_EMBED in tl_lua.h) and registered
** in package.preload when the module opens. */
#ifdef TL_EMBED
/*
** var:get of the built-in threadlocal.context, in C: one call finds the
** current context and reads the var in it.  The main coroutine's context
** is the OS thread's; any other coroutine has its own.  Anything else goes
** to the Lua get: no context recorded yet, the var not set, a bad self.
** Upvalues: by_coroutine, by_thread (by thread id), the Lua get.
*/
static int tl_ctx_get(lua_State *L) {
  lua_settop(L, 2);                    /* self default */
  if (lua_pushthread(L)) {             /* the main coroutine */
    lua_pop(L, 1);
    tl_rawgeti64(L, lua_upvalueindex(2), tl_myid);
  } else
    lua_rawget(L, lua_upvalueindex(1));
  if (lua_istable(L, -1)) {
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1)) return 1;
  }
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

/* internals.context_getter(by_coroutine, by_thread, get) */
static int tl_ctx_getter(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_pushcclosure(L, tl_ctx_get, 3);
  return 1;
}

/* package.preload["threadlocal.context"]: require's loader.  The chunk gets
** require's arguments and a third: the C helpers only it may use. */
static int tl_load_context(lua_State *L) {
  size_t len = sizeof tl_lua_context;
  lua_settop(L, 2);
  if (luaL_loadbuffer(L, (const char *)tl_lua_context, len, "@lua/threadlocal/context.lua") != 0)
    tl_raise(L);
  lua_insert(L, 1);                         /* chunk name extra */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, tl_ctx_getter);
  lua_setfield(L, -2, "context_getter");    /* chunk name extra internals */
  lua_call(L, 3, 1);
  return 1;
}
#endif

/* require "threadlocal.context" before require "threadlocal" finds this in
** threadlocal.so (Lua's all-in-one searcher). */
THREADLOCAL_API int luaopen_threadlocal_context(lua_State *L) {
#ifdef TL_EMBED
  return tl_load_context(L);
#else
  tl_error(L, "threadlocal: threadlocal.context is not built into this module");
#endif
}

/* Registers the built-in companions in package.preload, if a package
** library is open.  A loader the host put there under their names stays. */
static void tl_preload(lua_State *L) {
#ifdef TL_EMBED
  lua_getfield(L, LUA_REGISTRYINDEX, "_PRELOAD");     /* 5.2+, LuaJIT */
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_getglobal(L, "package");                       /* 5.1 */
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "preload");
      lua_remove(L, -2);
    }
  }
  if (lua_istable(L, -1)) {
    lua_pushliteral(L, "threadlocal.context");   /* preload name */
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);                           /* preload name loader? */
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushcfunction(L, tl_load_context);
      lua_rawset(L, -3);
    } else
      lua_pop(L, 2);
  }
  lua_pop(L, 1);
#else
  (void)L;
#endif
}

static const luaL_Reg tl_funcs[] = {
  {"new", tl_new},
  {"local", tl_new},
  {"shared", tl_shared_new},
  {"clear", tl_clear},
  {"fields", tl_fields_copy},
  {"table", tl_table},
  {"threads", tl_threads},
  {"id", tl_id},
  {"pairs", tl_pairs},
  {"scope", tl_scope_open},
  {"with", tl_with},
  {"capture", tl_capture},
  {"run", tl_run},
  {"release", tl_release},
  {NULL, NULL}
};

static const luaL_Reg tl_module_meta[] = {
  {"__call", tl_call},
  {NULL, NULL}
};

/*
** Pushes the module table, filled with every public name.  So next() and
** pairs() list them on every version.  The table is sized once and holds
** light C functions (5.2+): a state per request pays little.  The state's
** own data is made on first need (see tl_pushstate).
*/
THREADLOCAL_API int luaopen_threadlocal(lua_State *L) {
  const luaL_Reg *f;
  tl_checkversion(L);
  if (tl_init() != 0) tl_error(L, "threadlocal: cannot create the thread key");
  lua_createtable(L, 0, (int)(sizeof tl_funcs / sizeof *tl_funcs) + 1); /* M */
  for (f = tl_funcs; f->name != NULL; f++) {
    lua_pushstring(L, f->name);
    lua_pushcfunction(L, f->func);
    lua_rawset(L, -3);
  }
  lua_pushliteral(L, "version");
  lua_pushliteral(L, THREADLOCAL_VERSION);
  lua_rawset(L, -3);
  lua_createtable(L, 0, 1);                          /* M meta */
  tl_setfuncs(L, tl_module_meta, 0);
  lua_setmetatable(L, -2);                           /* M */
  /* Lanes (lanes.require "threadlocal") copies a shared local's metatable
  ** by its name in the module table.  So it must be there at open. */
  tl_pushsharedmt(L);                                /* M mt */
  lua_setfield(L, -2, "shared_mt");                  /* M */
  tl_preload(L);
  return 1;
}
