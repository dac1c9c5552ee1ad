/*
** tl_shared.c: the metamethods of shared locals and of table proxies.
** Part of threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

/* Starts the calling thread's fields of ref->sl, when it has none yet.
** They are made with create, or when there are defaults (a copy). */
static tl_tab *tl_handle_start(lua_State *L, const tl_handle *ref, int create) {
  int err;
  tl_tab *tab = tl_shfields_start(tl_self(L), ref->sl, create, &err);
  if (err) tl_memerror(L);
  return tab;
}

/* The calling thread's fields of ref->sl, or NULL: a lookup in its map,
** kept in ref until its generation moves. */
static TL_NOINLINE tl_tab *tl_handle_lookup(tl_handle *ref) {
  ref->fields = tl_shfields_peek(tl_me, ref->sl);
  ref->gen = tl_mygen;
  return ref->fields;
}

static TL_HOT tl_tab *tl_handle_peek(tl_handle *ref) {
  if (tl_unlikely(ref->gen != tl_mygen)) return tl_handle_lookup(ref);
  return ref->fields;
}

static TL_HOT tl_tab *tl_handle_fields(lua_State *L, tl_handle *ref, int create) {
  tl_tab *tab = tl_handle_peek(ref);
  return tab != NULL ? tab : tl_handle_start(L, ref, create);
}

/* The shared local at slot 1, checked: debug.getmetatable hands its
** metamethods to Lua code, which may call them with anything. */
static TL_HOT tl_handle *tl_handle_checkself(lua_State *L) {
  return (tl_handle *)tl_checkud_hot(L, 1, tl_handle_tag);
}

/* The fields of the shared local at slot 1. */
static TL_HOT tl_tab *tl_handle_selffields(lua_State *L, int create) {
  return tl_handle_fields(L, tl_handle_checkself(L), create);
}

/* tl_shared_index for a table field: pushes its proxy.  The tl_last keeps
** it too, unless a finalizer run by the push changed the fields. */
static TL_NOINLINE int tl_shared_indextab(lua_State *L, tl_handle *ref, tl_tab *tab,
                                          const void *id, tl_entry *e) {
  uint64_t version = tab->version;
  tl_pushval(L, &e->val, 0); /* may run a finalizer */
  if (tl_handle_peek(ref) == tab && tab->version == version &&
      tl_last_set(L, &ref->last, TL_HANDLE_KEY, id, tab, e)) {
    lua_pushvalue(L, -1);
    tl_setuv(L, 1, TL_HANDLE_LAST);
  }
  return 1;
}

/* The slow read of key 2 in tab, for a shared local (ref) or a proxy (ref
** NULL).  It remembers a string key's entry in last, kept in user value uv. */
static int tl_index_slow(lua_State *L, tl_handle *ref, tl_last *last, int uv, tl_tab *tab,
                         const void *id) {
  tl_entry *e;
  if (lua_type(L, 2) != LUA_TSTRING) return tl_ltab_index(L, tab);
  if (id == NULL) id = tl_keyid(L, 2);
  if ((e = tl_ltab_findarg(L, tab)) == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (ref != NULL && e->val.type == TL_TTAB) return tl_shared_indextab(L, ref, tab, id, e);
  (void)tl_last_set(L, last, uv, id, tab, e);
  tl_pushval(L, &e->val, 0);
  return 1;
}

/* tl_shared_index when tl_last does not have the field.  Here tab is NULL
** when there are no fields yet.  And id is the key's tl_keyid, or NULL if
** not asked yet. */
static TL_NOINLINE int tl_shared_index_slow(lua_State *L, tl_handle *ref, tl_tab *tab,
                                            const void *id) {
  if (tab == NULL && (tab = tl_handle_start(L, ref, 0)) == NULL) return tl_ltab_index(L, NULL);
  return tl_index_slow(L, ref, &ref->last, TL_HANDLE_KEY, tab, id);
}

static int tl_shared_index(lua_State *L) {
  tl_handle *ref = tl_handle_checkself(L);
  tl_tab *tab;
  const void *id = NULL;
  tl_jit_count(L, ref); /* first: it may run Lua code */
  tab = tl_handle_peek(ref);
  if (tab != NULL && tl_last_hit(&ref->last, id = tl_keyid(L, 2), tab)) {
    const tl_entry *e = ref->last.entry;
    if (e->val.type == TL_TTAB) /* its proxy, remembered with it */
      tl_getuv(L, 1, TL_HANDLE_LAST);
    else
      tl_pushval(L, &e->val, 0);
    return 1;
  }
  return tl_shared_index_slow(L, ref, tab, id);
}

/* A write on a thread with no fields yet: deleting needs none. */
static TL_NOINLINE tl_tab *tl_shared_first(lua_State *L, tl_handle *ref) {
  tl_key k;
  tl_checkkey(L, 2, &k);
  return lua_isnil(L, 3) ? NULL : tl_handle_fields(L, ref, 1);
}

static int tl_shared_newindex(lua_State *L) {
  tl_handle *ref = tl_handle_checkself(L);
  tl_tab *tab = tl_handle_fields(L, ref, 0);
  if (tab == NULL && (tab = tl_shared_first(L, ref)) == NULL) return 0;
  tl_ltab_assign(L, tab, &ref->last, TL_HANDLE_KEY);
  return 0;
}

static int tl_shared_pairs(lua_State *L) {
  (void)tl_checkud(L, 1, tl_handle_tag, sizeof(tl_handle)); /* the cold ones check fully */
  return tl_ltab_pairs(L, tl_handle_selffields(L, 0));
}

static int tl_shared_len(lua_State *L) {
  (void)tl_checkud(L, 1, tl_handle_tag, sizeof(tl_handle));
  lua_pushinteger(L, tl_ltab_len(tl_handle_selffields(L, 0)));
  return 1;
}

static int tl_shared_tostring(lua_State *L) {
  const threadlocal_shared *sl = ((tl_handle *)tl_checkud(L, 1, tl_handle_tag, sizeof(tl_handle)))->sl;
  lua_pushliteral(L, THREADLOCAL_SHARED_MT " '");
  lua_pushlstring(L, sl->name, sl->len);
  lua_pushfstring(L, "': %p", lua_touserdata(L, 1));
  lua_concat(L, 3);
  return 1;
}

/* tl_proxy_index when tl_last does not have the field (as above). */
static TL_NOINLINE int tl_proxy_index_slow(lua_State *L, tl_proxy *p, tl_tab *tab,
                                           const void *id) {
  if (tab == NULL) tl_proxy_fail(L, p);
  return tl_index_slow(L, NULL, &p->last, TL_PROXY_KEY, tab, id);
}

static int tl_proxy_index(lua_State *L) {
  tl_proxy *p = (tl_proxy *)tl_checkud_hot(L, 1, tl_proxy_tag);
  tl_tab *tab = tl_proxy_target(tl_me, p);
  const void *id = NULL;
  if (tab != NULL && tl_last_tabhit(&p->last, id = tl_keyid(L, 2), tab)) {
    tl_pushval(L, &p->last.entry->val, 0);
    return 1;
  }
  return tl_proxy_index_slow(L, p, tab, id);
}

static int tl_proxy_newindex(lua_State *L) {
  tl_proxy *p = (tl_proxy *)tl_checkud_hot(L, 1, tl_proxy_tag);
  tl_tab *tab = tl_proxy_target(tl_me, p);
  if (tab == NULL) tl_proxy_fail(L, p);
  tl_ltab_assign(L, tab, &p->last, TL_PROXY_KEY);
  return 0;
}

static int tl_proxy_pairs(lua_State *L) {
  (void)tl_checkud(L, 1, tl_proxy_tag, sizeof(tl_proxy));
  return tl_ltab_pairs(L, tl_proxy_tab(L, 1));
}

static int tl_proxy_len(lua_State *L) {
  (void)tl_checkud(L, 1, tl_proxy_tag, sizeof(tl_proxy));
  lua_pushinteger(L, tl_ltab_len(tl_proxy_tab(L, 1)));
  return 1;
}

static int tl_proxy_tostring(lua_State *L) {
  lua_pushfstring(L, THREADLOCAL_PROXY_MT ": %p", tl_checkud(L, 1, tl_proxy_tag, sizeof(tl_proxy)));
  return 1;
}

/*
** __lanesclone(dest, source, size), as Lanes 3.17 calls it when a shared
** local crosses to another lane.  Then dest is a new userdata of size bytes
** in the lane's state.  That state has this metatable (found by name) and
** copies of the source's user values.  It becomes that state's userdata of
** the same local, with empty caches.  Lua may pass any light userdata: only
** a shared local's memory as source leads to a write.
*/
static int tl_shared_lanesclone(lua_State *L) {
  tl_handle *dst, *src;
  luaL_checktype(L, 1, LUA_TLIGHTUSERDATA);
  luaL_checktype(L, 2, LUA_TLIGHTUSERDATA);
  luaL_argcheck(L, luaL_checkinteger(L, 3) == (lua_Integer)sizeof(tl_handle), 3,
                "not the size of a shared local");
  dst = (tl_handle *)lua_touserdata(L, 1);
  src = (tl_handle *)lua_touserdata(L, 2);
  if (src == NULL || src->tag != tl_handle_tag) tl_typeerror(L, 2, tl_handle_tag);
  luaL_argcheck(L, dst != NULL && dst != src, 1, "no memory to clone into");
  memset(dst, 0, sizeof *dst);
  dst->tag = tl_handle_tag;
  dst->sl = src->sl;
  return 0;
}

static const luaL_Reg tl_shared_meta[] = {
  {"__index", tl_shared_index},
  {"__newindex", tl_shared_newindex},
  {"__pairs", tl_shared_pairs},
  {"__len", tl_shared_len},
  {"__tostring", tl_shared_tostring},
  {"__lanesclone", tl_shared_lanesclone},
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

static void tl_pushsharedmt(lua_State *L) {
  tl_pushmeta(L, THREADLOCAL_SHARED_MT, tl_shared_meta);
}

static void tl_pushproxymt(lua_State *L) {
  tl_pushmeta(L, THREADLOCAL_PROXY_MT, tl_proxy_meta);
}

/* Whether slot i holds this state's userdata of sl.  The metatable that
** maps them can be reached, and written, through debug.getmetatable. */
static int tl_isref(lua_State *L, int i, const threadlocal_shared *sl) {
  const tl_handle *ref = (const tl_handle *)tl_testud(L, i, tl_handle_tag, sizeof *ref);
  return ref != NULL && ref->sl == sl;
}

static int tl_shared_new(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  tl_tab *defaults = NULL;
  threadlocal_shared *sl;
  tl_handle *ref;
  luaL_argcheck(L, len <= THREADLOCAL_MAXLEN, 1, "name too long");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    tl_val v;
    tl_tovalue(L, 2, 0, NULL, 0, &v); /* the defaults are the fields */
    defaults = v.u.tab;
  }
  if ((sl = tl_reg_open(name, len)) == NULL) {
    if (defaults) tl_tab_free(defaults);
    tl_memerror(L);
  }
  if (defaults != NULL && tl_reg_setdefaults(sl, defaults) != 0) {
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
  ref = (tl_handle *)tl_newud(L, sizeof *ref, TL_HANDLE_NUV);
  memset(ref, 0, sizeof *ref);
  ref->tag = tl_handle_tag;
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
