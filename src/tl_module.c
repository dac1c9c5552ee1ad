/*
** tl_module.c: the module's functions, its metatables, and
** luaopen_threadlocal.  Part of threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

/* Shared by every Local; each also gets its own __index and __newindex. */
static const luaL_Reg tl_local_meta[] = {
  {"__pairs", tl_local_pairs},
  {"__len", tl_local_len},
  {"__tostring", tl_local_tostring},
  {NULL, NULL}
};

/* Sets mt[name] to a new closure f over (the state at st, no fields yet,
** the Local at ud), and keeps it in user value uv of the Local.
** [-0, +0] with mt on top. */
static void tl_local_closure(lua_State *L, int st, int ud, lua_CFunction f, const char *name,
                             int uv) {
  lua_pushvalue(L, st);                 /* mt state */
  tl_getuv(L, st, uv == TL_LOCAL_GET ? TL_STATE_EMPTY : TL_STATE_SINK); /* mt state fields */
  lua_pushvalue(L, ud);                 /* mt state fields self */
  tl_getuv(L, ud, TL_LOCAL_MAP);        /* mt state fields self map */
  lua_pushcclosure(L, f, TL_LOCAL_NUP); /* mt f */
  lua_pushvalue(L, -1);                 /* mt f f */
  tl_setuv(L, ud, uv);                  /* mt f */
  lua_setfield(L, -2, name);            /* mt */
}

static int tl_new(lua_State *L) {
  int n = lua_gettop(L), i, st, ud;
  tl_local *lo;
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  else if (n > 1)
    tl_error(L, "threadlocal: init arguments given without an init function");
  st = tl_pushstate(L);                                        /* args st */
  tl_state_home(L, st);
  tl_state_uv(L, st, TL_STATE_EMPTY);
  tl_state_uv(L, st, TL_STATE_SINK);
  lua_pop(L, 2);
  lo = (tl_local *)tl_newud(L, sizeof *lo, TL_LOCAL_NUV);      /* args st ud */
  ud = lua_gettop(L);
  lo->tag = tl_local_tag;
  lo->get_id = lo->set_id = TL_NOCACHE;
  lo->init_id = 0;
  lo->scopes = NULL;
  lo->ninit = n > 0 && !lua_isnil(L, 1) ? n : 0;
  lua_createtable(L, 0, 2); /* room for two threads before it grows */
  tl_setuv(L, ud, TL_LOCAL_MAP);
  /* Its own metatable: the shared metamethods, and its own closures. */
  tl_pushmeta(L, THREADLOCAL_LOCAL_MT, tl_local_meta);         /* args st ud localmt */
  tl_copytable(L, -1);                                         /* args st ud localmt mt */
  lua_remove(L, -2);                                           /* args st ud mt */
  if (!tl_jit_closures(L, st, ud)) {
    tl_local_closure(L, st, ud, tl_local_index, "__index", TL_LOCAL_GET);
    tl_local_closure(L, st, ud, tl_local_newindex, "__newindex", TL_LOCAL_SET);
  }
  lua_setmetatable(L, ud);                                     /* args st ud */
  if (lo->ninit > 0) {
    lua_createtable(L, n, 0);                                  /* args st ud init */
    for (i = 1; i <= n; i++) {
      lua_pushvalue(L, i);
      lua_rawseti(L, -2, i);
    }
    tl_setuv(L, ud, TL_LOCAL_INIT);                            /* args st ud */
    tl_local_push(L, ud, st); /* init runs in the creating thread now */
  }
  lua_settop(L, ud);
  return 1;
}

static int tl_call(lua_State *L) { /* threadlocal(...) */
  luaL_checktype(L, 1, LUA_TTABLE); /* the module; anything when called by hand */
  lua_remove(L, 1);
  return tl_new(L);
}

/* Whether slot i holds this state's userdata of sl: the metatable that
** maps them can be reached, and so written, through debug.getmetatable. */
static int tl_isref(lua_State *L, int i, const tl_sloc *sl) {
  const tl_sref *ref = (const tl_sref *)tl_testud(L, i, tl_sref_tag, sizeof *ref);
  return ref != NULL && ref->sl == sl;
}

static int tl_shared_new(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  tl_tab *defaults = NULL;
  tl_sloc *sl;
  tl_sref *ref;
  luaL_argcheck(L, len <= THREADLOCAL_MAXLEN, 1, "name too long");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    tl_val v;
    tl_tovalue(L, 2, 0, NULL, 0, &v); /* the defaults are the fields */
    defaults = v.u.tab;
  }
  if ((sl = tl_sloc_open(name, len)) == NULL) {
    if (defaults) tl_tab_free(defaults);
    tl_memerror(L);
  }
  if (defaults != NULL && tl_sloc_setdefaults(sl, defaults) != 0) {
    luaL_where(L, 1);
    lua_pushliteral(L, "threadlocal: shared local '");
    lua_pushlstring(L, name, len);
    lua_pushliteral(L, "' already has other defaults");
    lua_concat(L, 4);
    tl_raise(L);
  }
  tl_pushsharedmt(L);                        /* name defaults mt */
  tl_rawgetp(L, -1, sl);                     /* name defaults mt ref? */
  if (tl_isref(L, -1, sl)) return 1;         /* one userdata per name */
  lua_pop(L, 1);
  ref = (tl_sref *)tl_newud(L, sizeof *ref, TL_SREF_NUV);
  memset(ref, 0, sizeof *ref);
  ref->tag = tl_sref_tag;
  ref->sl = sl;
  lua_pushvalue(L, -2);
  lua_setmetatable(L, -2);                   /* name defaults mt ref */
  tl_rawgetp(L, -2, sl);                     /* a finalizer that ran in tl_newud */
  if (tl_isref(L, -1, sl)) return 1;         /* may have made one */
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  tl_rawsetp(L, -3, sl);                     /* mt[sl] = ref */
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

/* threadlocal.table(loc): the calling thread's live fields table of a Local
** (init runs first if the thread has none), for hot loops on this thread. */
static int tl_table(lua_State *L) {
  tl_checkkind(L, TL_KLOCAL, THREADLOCAL_LOCAL_MT);
  lua_settop(L, 1);
  tl_local_push1(L, 1);
  return 1;
}

/* threadlocal.fields: a copy of the calling thread's fields. */
static int tl_fields_copy(lua_State *L) {
  const tl_tab *tab;
  tl_guard *g;
  int kind = tl_checkkind(L, TL_KLOCAL | TL_KSHARED | TL_KPROXY, TL_ANYKIND);
  if (kind == TL_KLOCAL) {
    tl_local_push1(L, 1);
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
** Opening the module fills its table with every public name, so that next()
** and pairs() list them on every version.  The table is sized once and the
** values are light C functions (5.2+), so a state per request pays little.
** The state's own data is made on first need (see tl_pushstate).
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
  /* Lanes copies a shared local's metatable by its name in the module
  ** table (lanes.require "threadlocal"): it must be there at open. */
  tl_pushsharedmt(L);                                /* M mt */
  lua_setfield(L, -2, "shared_mt");                  /* M */
  tl_preload(L);
  return 1;
}
