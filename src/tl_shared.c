/*
** tl_shared.c: the metamethods of shared locals and of table proxies.
** Part of threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

/* The calling thread's fields of ref->sl, when it has none yet: made (from
** the defaults) with create, or when there are defaults. */
static tl_tab *tl_sref_start(lua_State *L, const tl_sref *ref, int create) {
  int err;
  tl_tab *tab = tl_shfields_start(tl_self(L), ref->sl, create, &err);
  if (err) tl_memerror(L);
  return tab;
}

static TL_HOT tl_tab *tl_sref_fields(lua_State *L, const tl_sref *ref, int create) {
  tl_tab *tab = tl_shfields_peek(tl_me, ref->sl);
  return tab != NULL ? tab : tl_sref_start(L, ref, create);
}

/* The shared local at slot 1, checked: debug.getmetatable hands its
** metamethods to Lua code, which may call them with anything. */
static TL_HOT tl_sref *tl_sref_check1(lua_State *L) {
  return (tl_sref *)tl_checkud_hot(L, 1, tl_sref_tag);
}

/* The fields of the shared local at slot 1. */
static TL_HOT tl_tab *tl_sref_fields1(lua_State *L, int create) {
  return tl_sref_fields(L, tl_sref_check1(L), create);
}

static int tl_shared_index(lua_State *L) {
  tl_sref *ref = tl_sref_check1(L);
  tl_tab *tab = tl_sref_fields(L, ref, 0);
  if (tab != NULL && lua_type(L, 2) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    tl_entry *e;
    uint64_t version;
    if (s == ref->last_key && tab == ref->last_tab && tab->version == ref->last_version &&
        tab->owner->id == ref->last_owner && tl_entry_streq(ref->last_entry, s, len)) {
      tl_getuv(L, 1, TL_SREF_LAST);
      return 1;
    }
    if ((e = tl_tab_findstr(tab, s, len)) == NULL) {
      lua_pushnil(L);
      return 1;
    }
    if (e->val.type != TL_TTAB) {
      tl_pushval(L, &e->val, 0);
      return 1;
    }
    version = tab->version;
    tl_pushval(L, &e->val, 0); /* may run a finalizer */
    if (tl_shfields_peek(tl_me, ref->sl) == tab && tab->version == version) {
      ref->last_key = s;
      ref->last_tab = tab;
      ref->last_version = tab->version;
      ref->last_owner = tab->owner->id;
      ref->last_entry = e;
      lua_pushvalue(L, -1);
      tl_setuv(L, 1, TL_SREF_LAST);
    }
    return 1;
  }
  return tl_tab_index(L, tab);
}

static int tl_shared_newindex(lua_State *L) {
  tl_tab *tab = tl_sref_fields1(L, 0);
  if (tab == NULL) { /* this thread's first write: deleting needs no fields */
    tl_key k;
    tl_checkkey(L, 2, &k);
    if (lua_isnil(L, 3)) return 0;
    tab = tl_sref_fields1(L, 1);
  }
  tl_tab_assign(L, tab);
  return 0;
}

static int tl_shared_pairs(lua_State *L) {
  (void)tl_checkud(L, 1, tl_sref_tag, sizeof(tl_sref)); /* the cold ones check fully */
  return tl_tab_pairs(L, tl_sref_fields1(L, 0));
}

static int tl_shared_len(lua_State *L) {
  (void)tl_checkud(L, 1, tl_sref_tag, sizeof(tl_sref));
  lua_pushinteger(L, tl_tab_len(tl_sref_fields1(L, 0)));
  return 1;
}

static int tl_shared_tostring(lua_State *L) {
  const tl_sloc *sl = ((tl_sref *)tl_checkud(L, 1, tl_sref_tag, sizeof(tl_sref)))->sl;
  lua_pushliteral(L, THREADLOCAL_SHARED_MT " '");
  lua_pushlstring(L, sl->name, sl->len);
  lua_pushfstring(L, "': %p", lua_touserdata(L, 1));
  lua_concat(L, 3);
  return 1;
}

static int tl_proxy_index(lua_State *L) {
  return tl_tab_index(L, tl_proxy_tab(L, 1));
}

static int tl_proxy_newindex(lua_State *L) {
  tl_tab_assign(L, tl_proxy_tab(L, 1));
  return 0;
}

static int tl_proxy_pairs(lua_State *L) {
  (void)tl_checkud(L, 1, tl_proxy_tag, sizeof(tl_proxy));
  return tl_tab_pairs(L, tl_proxy_tab(L, 1));
}

static int tl_proxy_len(lua_State *L) {
  (void)tl_checkud(L, 1, tl_proxy_tag, sizeof(tl_proxy));
  lua_pushinteger(L, tl_tab_len(tl_proxy_tab(L, 1)));
  return 1;
}

static int tl_proxy_tostring(lua_State *L) {
  lua_pushfstring(L, THREADLOCAL_TABLE_MT ": %p", tl_checkud(L, 1, tl_proxy_tag, sizeof(tl_proxy)));
  return 1;
}

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

static void tl_pushsharedmt(lua_State *L) {
  tl_pushmeta(L, THREADLOCAL_SHARED_MT, tl_shared_meta);
}

static void tl_pushproxymt(lua_State *L) {
  tl_pushmeta(L, THREADLOCAL_TABLE_MT, tl_proxy_meta);
}
