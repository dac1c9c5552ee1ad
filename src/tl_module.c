/*
** tl_module.c: the module's functions, its metatables, and
** luaopen_threadlocal.  Part of threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

static const char tl_statekey = 0; /* registry key of the tl_state */

/* Sets mt[name] to a new closure f over the module's upvalues and no
** fields yet, and keeps it in user value uv of the Local at ud.
** [-0, +0] with mt on top. */
static void tl_local_closure(lua_State *L, int ud, lua_CFunction f, const char *name, int uv) {
  tl_pushupvalues(L);                   /* mt state proxymt cache */
  lua_pushnil(L);                       /* mt state proxymt cache fields */
  lua_pushvalue(L, ud);                 /* mt state proxymt cache fields self */
  lua_pushcclosure(L, f, TL_NUP + 2);   /* mt f */
  lua_pushvalue(L, -1);                 /* mt f f */
  tl_setuv(L, ud, uv);                  /* mt f */
  lua_setfield(L, -2, name);            /* mt */
}

static int tl_new(lua_State *L) {
  int n = lua_gettop(L), i, ud = n + 1;
  tl_local *lo;
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  else if (n > 1)
    tl_error(L, "threadlocal: init arguments given without an init function");
  lo = (tl_local *)tl_newud(L, sizeof *lo, TL_LOCAL_NUV); /* args ud */
  lo->tag = tl_local_tag;
  lo->get_id = lo->set_id = TL_NOCACHE;
  /* Its own metatable: the shared metamethods, and its own closures. */
  luaL_getmetatable(L, THREADLOCAL_LOCAL_MT);                  /* args ud localmt */
  tl_copytable(L, -1);                                         /* args ud localmt mt */
  lua_remove(L, -2);                                           /* args ud mt */
  tl_local_closure(L, ud, tl_local_index, "__index", TL_LOCAL_GET);
  tl_local_closure(L, ud, tl_local_newindex, "__newindex", TL_LOCAL_SET);
  lua_setmetatable(L, ud);                                     /* args ud */
  lua_newtable(L);
  tl_setuv(L, ud, TL_LOCAL_MAP);
  if (n > 0 && !lua_isnil(L, 1)) {
    lua_createtable(L, n, 1);                                  /* args ud init */
    for (i = 1; i <= n; i++) {
      lua_pushvalue(L, i);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    tl_setuv(L, ud, TL_LOCAL_INIT);                            /* args ud */
  }
  tl_local_push(L, ud); /* init runs in the creating thread now */
  lua_settop(L, ud);
  return 1;
}

static int tl_call(lua_State *L) { /* threadlocal(...) */
  lua_remove(L, 1);
  return tl_new(L);
}

static int tl_shared_new(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  tl_tab *defaults = NULL, *current = NULL;
  tl_sloc *sl;
  tl_sref *ref;
  luaL_argcheck(L, len <= THREADLOCAL_MAXLEN, 1, "name too long");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    tl_val v;
    tl_tovalue(L, 2, 0, NULL, 0, TL_UP_PROXYMT, &v); /* the defaults are the fields */
    defaults = v.u.tab;
  }
  if ((sl = tl_sloc_open(name, len)) == NULL) {
    if (defaults) tl_tab_free(defaults);
    tl_memerror(L);
  }
  if (defaults != NULL &&
      !atomic_compare_exchange_strong(&sl->defaults, &current, defaults)) {
    int same = tl_tab_equal(current, defaults);
    tl_tab_free(defaults);
    if (!same) {
      lua_pushliteral(L, "threadlocal: shared local '");
      lua_pushlstring(L, name, len);
      lua_pushliteral(L, "' already has other defaults");
      lua_concat(L, 3);
      tl_raise(L);
    }
  }
  tl_getuv(L, TL_UP_STATE, TL_STATE_SHARED); /* name defaults byname */
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);                         /* name defaults byname ref? */
  if (!lua_isnil(L, -1)) return 1;           /* one userdata per name */
  lua_pop(L, 1);
  ref = (tl_sref *)tl_newud(L, sizeof *ref, TL_SREF_NUV);
  memset(ref, 0, sizeof *ref);
  ref->tag = tl_sref_tag;
  ref->sl = sl;
  luaL_getmetatable(L, THREADLOCAL_SHARED_MT);
  lua_setmetatable(L, -2);                   /* name defaults byname ref */
  lua_pushvalue(L, 1);                       /* a finalizer that ran in tl_newud */
  lua_rawget(L, -3);                         /* may have made one */
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);                         /* byname[name] = ref */
  return 1;
}

static int tl_clear(lua_State *L) {
  if (tl_checkkind(L, TL_KLOCAL | TL_KSHARED, "threadlocal.local or threadlocal.shared") ==
      TL_KSHARED) {
    if (tl_me != NULL) tl_shfields_clear(tl_me, ((tl_sref *)lua_touserdata(L, 1))->sl);
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

/* threadlocal.fields: a copy of the calling thread's fields. */
static int tl_fields_copy(lua_State *L) {
  const tl_tab *tab;
  tl_guard *g;
  int kind = tl_checkkind(L, TL_KLOCAL | TL_KSHARED | TL_KPROXY,
                          "threadlocal.local, threadlocal.shared or threadlocal.table");
  if (kind == TL_KLOCAL) {
    tl_local_push(L, 1);
    tl_copytable(L, -1);
    return 1;
  }
  g = tl_newguard(L);
  tab = kind == TL_KSHARED ? tl_sref_fields1(L, 0) : tl_proxy_tab(L, 1);
  if (tab == NULL)
    lua_newtable(L);
  else
    tl_pushcopy_guarded(L, g, tab);
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
  tl_purge(L);
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

static int tl_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tl_self(L)->id);
  return 1;
}

/* Shared by every Local; each also gets its own __index and __newindex. */
static const luaL_Reg tl_local_meta[] = {
  {"__pairs", tl_local_pairs},
  {"__len", tl_local_len},
  {"__tostring", tl_local_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_shared_meta[] = {
  {"__index", tl_shared_index},
  {"__newindex", tl_shared_newindex},
  {"__pairs", tl_shared_pairs},
  {"__len", tl_shared_len},
  {"__tostring", tl_shared_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_proxy_meta[] = {
  {"__index", tl_proxy_index},
  {"__newindex", tl_proxy_newindex},
  {"__pairs", tl_proxy_pairs},
  {"__len", tl_proxy_len},
  {"__tostring", tl_proxy_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_funcs[] = {
  {"new", tl_new},
  {"local", tl_new},
  {"shared", tl_shared_new},
  {"clear", tl_clear},
  {"fields", tl_fields_copy},
  {"threads", tl_threads},
  {"id", tl_id},
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

/* Pushes this state's tl_state, creating it on the first require. */
static void tl_state_push(lua_State *L) {
  tl_state *st;
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  st = (tl_state *)tl_newud(L, sizeof *st, TL_STATE_NUV);    /* st */
  st->home = NULL;
  st->nosentinel = 0;
  luaL_newmetatable(L, TL_STATE_MT);
  lua_pushcfunction(L, tl_state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if ((st->home = tl_home_new()) == NULL) tl_memerror(L);
  lua_newtable(L);
  tl_setuv(L, -2, TL_STATE_BYTHREAD);
  lua_newtable(L);
  tl_setuv(L, -2, TL_STATE_SHARED);
  lua_createtable(L, 0, 0);                                    /* st proxies */
  lua_createtable(L, 0, 1);                                    /* st proxies weak */
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  tl_setuv(L, -2, TL_STATE_PROXIES);                           /* st */
  lua_createtable(L, 0, 1);                                    /* st sentinelmt */
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, tl_sentinel_gc, 1);
  lua_setfield(L, -2, "__gc");
  tl_setuv(L, -2, TL_STATE_SENTINEL);                          /* st */
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey); /* a finalizer that required */
  if (!lua_isnil(L, -1)) {                         /* the module made one */
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  tl_rawsetp(L, LUA_REGISTRYINDEX, &tl_statekey);
}

static int tl_open_sentinel(lua_State *L) { /* upvalue 1: the tl_state */
  tl_sentinel_new(L);
  return 0;
}

/* Sets funcs into the table at the top, closed over the module's three
** upvalues at stack slots base, base+1, base+2.  [-0, +0] */
static void tl_setfuncs3(lua_State *L, int base, const luaL_Reg *funcs) {
  lua_pushvalue(L, base);
  lua_pushvalue(L, base + 1);
  lua_pushvalue(L, base + 2);
  tl_setfuncs(L, funcs, TL_NUP);
}

/* Fills and hides the metatable `name`.  [-0, +0] */
static void tl_newmeta(lua_State *L, int base, const char *name, const luaL_Reg *funcs) {
  luaL_newmetatable(L, name);
  tl_setfuncs3(L, base, funcs);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

THREADLOCAL_API int luaopen_threadlocal(lua_State *L) {
  int base;
  tl_checkversion(L);
  if (tl_init() != 0) tl_error(L, "threadlocal: cannot create the thread key");
  tl_state_push(L);                                  /* st */
  base = lua_gettop(L);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, tl_open_sentinel, 1);
  lua_call(L, 0, 0);
  luaL_newmetatable(L, THREADLOCAL_TABLE_MT);        /* st proxymt */
  tl_getuv(L, base, TL_STATE_PROXIES);               /* st proxymt cache */

  tl_newmeta(L, base, THREADLOCAL_TABLE_MT, tl_proxy_meta);
  tl_newmeta(L, base, THREADLOCAL_LOCAL_MT, tl_local_meta);
  tl_newmeta(L, base, THREADLOCAL_SHARED_MT, tl_shared_meta);

  lua_createtable(L, 0, (int)(sizeof tl_funcs / sizeof *tl_funcs) + 1); /* ... M */
  tl_setfuncs3(L, base, tl_funcs);
  lua_pushliteral(L, THREADLOCAL_VERSION);
  lua_setfield(L, -2, "version");
  lua_createtable(L, 0, 1);                          /* ... M meta */
  tl_setfuncs3(L, base, tl_module_meta);
  lua_setmetatable(L, -2);                           /* ... M */
  tl_preload(L);
  return 1;
}
