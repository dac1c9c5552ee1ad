/*
** tl_convert.c: shared values in Lua.  It holds keys, conversion of Lua
** values to plain data and back, and proxies of shared tables.  It also
** holds the table operations that shared locals and proxies share.
** Part of threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

/* ---------------------------------------------------------------------- */
/* Shared values in Lua: keys, conversion, proxies                        */
/* ---------------------------------------------------------------------- */

/* The shared key for stack slot i; 0 if the value cannot be one. */
static int tl_tokey(lua_State *L, int i, tl_key *k) {
  switch (lua_type(L, i)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      tl_key_str(k, s, len);
      return 1;
    }
    case LUA_TNUMBER: {
      int64_t n;
      if (tl_toint(L, i, &n))
        tl_key_int(k, n);
      else {
        lua_Number f = lua_tonumber(L, i);
        if (f != f) return 0;
        tl_key_float(k, (double)f);
      }
      return 1;
    }
    case LUA_TBOOLEAN: tl_key_bool(k, lua_toboolean(L, i)); return 1;
    default: return 0;
  }
}

static void tl_checkkey(lua_State *L, int i, tl_key *k) {
  if (tl_tokey(L, i, k)) return;
  if (lua_type(L, i) == LUA_TNUMBER) tl_error(L, "threadlocal: cannot use NaN as a field name");
  luaL_where(L, 1);
  lua_pushfstring(L, "threadlocal: shared field names are strings, numbers or booleans, not %s",
                  luaL_typename(L, i));
  lua_concat(L, 2);
  tl_raise(L);
}

/* A nil, boolean or number at slot i as a shared value; 0 for other types
** (then *out is untouched). */
static TL_HOT int tl_toscalar(lua_State *L, int i, tl_val *out) {
  if (tl_toint(L, i, &out->u.i)) { /* first: the commonest, in one API call */
    out->type = TL_TINT;
    return 1;
  }
  switch (lua_type(L, i)) {
    case LUA_TNIL: out->type = TL_TNIL; return 1;
    case LUA_TBOOLEAN:
      out->type = TL_TBOOL;
      out->u.b = lua_toboolean(L, i);
      return 1;
    case LUA_TNUMBER:
      out->type = TL_TFLOAT;
      out->u.f = (double)lua_tonumber(L, i);
      return 1;
    default: return 0;
  }
}

static void tl_pushkey(lua_State *L, const tl_entry *e) {
  switch (e->ktype) {
    case TL_TSHORT: tl_pushstored(L, e->key.c, tl_shortlen(&e->key)); break;
    case TL_TSTR: tl_pushstored(L, e->key.str.s, e->key.str.len); break;
    case TL_TINT: tl_pushint(L, e->key.i); break;
    case TL_TFLOAT: lua_pushnumber(L, (lua_Number)e->key.f); break;
    default: lua_pushboolean(L, e->key.b); break;
  }
}

/* The live table p stands for, if it is t's; NULL otherwise (t may be NULL). */
static TL_HOT tl_tab *tl_proxy_target(const tl_thread *t, const tl_proxy *p) {
  if (t != NULL && p->owner_id == t->id && p->slot < t->nslab && t->slabgen[p->slot] == p->gen)
    return t->slab[p->slot];
  return NULL;
}

/* Pushes a new proxy of slot `slot`, generation `gen`, of thread
** `owner_id`'s slab.  It remembers it in the cache at index cache. */
static void tl_newproxy(lua_State *L, uint64_t owner_id, uint32_t slot, uint32_t gen, int cache) {
  tl_proxy *p = (tl_proxy *)tl_newud(L, sizeof *p, TL_PROXY_NUV);
  memset(p, 0, sizeof *p);
  p->tag = tl_proxy_tag;
  p->owner_id = owner_id;
  p->slot = slot;
  p->gen = gen;
  tl_pushproxymt(L);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  tl_rawseti64(L, cache, slot + 1u);
}

/*
** Pushes a proxy of tab, owned by the calling thread.  The state's proxy
** cache, keyed by slab slot in its array part, gives a table read again the
** same proxy.  A cached proxy is checked: another thread's or an older
** table may have had the slot.  The index cache is absolute, a
** pseudo-index, or 0 to find the cache.
*/
static void tl_pushproxy(lua_State *L, tl_tab *tab, int cache) {
  const tl_proxy *p;
  /* Read first: an allocation below may run a finalizer that frees tab
  ** (the proxy is then just stale). */
  const tl_thread *t = tab->owner;
  uint32_t slot = tab->slot;
  uint32_t gen = t->slabgen[slot];
  int found = cache == 0;
  if (found) cache = tl_pushcache(L);
  tl_rawgeti64(L, cache, slot + 1u);
  p = (const tl_proxy *)lua_touserdata(L, -1);
  if (p == NULL || p->owner_id != t->id || p->slot != slot || p->gen != gen) {
    lua_pop(L, 1);
    tl_newproxy(L, t->id, slot, gen, cache);
  }
  if (found) lua_remove(L, cache);
}

/* Pushes v; a table as its proxy, through the cache at index cache (0: the
** state's, found). */
static TL_HOT void tl_pushval(lua_State *L, const tl_val *v, int cache) {
  switch (v->type) {
    case TL_TNIL: lua_pushnil(L); break;
    case TL_TBOOL: lua_pushboolean(L, v->u.b); break;
    case TL_TINT: tl_pushint(L, v->u.i); break;
    case TL_TFLOAT: lua_pushnumber(L, (lua_Number)v->u.f); break;
    case TL_TSTR: tl_pushstored(L, v->u.str.s, v->u.str.len); break;
    case TL_TPTR: lua_pushlightuserdata(L, v->u.ptr.p); break;
    default: tl_pushproxy(L, v->u.tab, cache); break;
  }
}

/* Pushes a deep copy of tab as plain Lua tables. */
static void tl_pushcopy(lua_State *L, const tl_tab *tab) {
  uint32_t i;
  luaL_checkstack(L, 3, "threadlocal: tables nested too deep");
  lua_createtable(L, 0, (int)tab->count);
  for (i = 0; i < tab->used; i++) {
    const tl_entry *e = &tab->e[i];
    if (e->status != TL_LIVE) continue;
    tl_pushkey(L, e);
    if (e->val.type == TL_TTAB)
      tl_pushcopy(L, e->val.u.tab);
    else
      tl_pushval(L, &e->val, 0); /* not a table: no proxy */
    lua_rawset(L, -3);
  }
}

static TL_NORETURN void tl_proxy_fail(lua_State *L, const tl_proxy *p) {
  tl_thread *t = tl_me;
  if (t == NULL || p->owner_id != t->id)
    tl_error(L, "threadlocal: table proxy used on another thread than the one that read it");
  tl_error(L, "threadlocal: table proxy is stale: its table was replaced, deleted or cleared");
}

/* The table a proxy at stack slot i stands for.  It raises if the table
** is gone, or if slot i holds no proxy. */
static TL_HOT tl_tab *tl_proxy_tab(lua_State *L, int i) {
  const tl_proxy *p = (const tl_proxy *)tl_checkud_hot(L, i, tl_proxy_tag);
  tl_tab *tab = tl_proxy_target(tl_me, p);
  if (tab == NULL) tl_proxy_fail(L, p);
  return tab;
}

/*
** Lua value -> shared value, never raising.  So a failure can free what
** was built and leave everything as it was.  Tables are copied raw;
** one with a metatable is refused, since its copy would lose it.  A
** proxy's table is copied.
*/
typedef struct tl_conv {
  lua_State *L;
  tl_thread *owner; /* of the tables made; NULL for defaults */
  int depth, ntables;
  uint32_t base;    /* the depth of a table made at ntables == 0 */
  int keys[TL_MAXDEPTH + 2];           /* stack slots of the keys on the path */
  const void *tables[TL_MAXDEPTH + 1]; /* the tables on the path, for cycles */
  int nomem;
  char msg[256];
} tl_conv;

enum { TL_CONV_OK, TL_CONV_FAIL };

/*
** Sets c->msg to "threadlocal: <what>[ in field '<path>']".  Integer keys
** print as integers; a path too long for the message is cut, and then
** ends "...'".
*/
static int tl_conv_fail(tl_conv *c, const char *what) {
  const size_t room = sizeof c->msg - 4; /* for "...'" */
  size_t n = (size_t)snprintf(c->msg, sizeof c->msg, "threadlocal: %s", what);
  int i;
  if (c->depth == 0 || n >= room) return TL_CONV_FAIL;
  n += (size_t)snprintf(c->msg + n, room - n, " in field '");
  for (i = 0; i < c->depth && n < room; i++) {
    int k = c->keys[i];
    int64_t ik;
    if (lua_type(c->L, k) == LUA_TSTRING)
      n += (size_t)snprintf(c->msg + n, room - n, i ? ".%.40s" : "%.40s", lua_tostring(c->L, k));
    else if (tl_toint(c->L, k, &ik) ||
             (lua_type(c->L, k) == LUA_TNUMBER && tl_dbl_toint((double)lua_tonumber(c->L, k), &ik)))
      n += (size_t)snprintf(c->msg + n, room - n, "[%lld]", (long long)ik);
    else if (lua_type(c->L, k) == LUA_TNUMBER)
      n += (size_t)snprintf(c->msg + n, room - n, "[%.14g]", (double)lua_tonumber(c->L, k));
    else
      n += (size_t)snprintf(c->msg + n, room - n, "[%s]",
                            lua_toboolean(c->L, k) ? "true" : "false");
  }
  if (n >= room) /* cut: snprintf stopped at room - 1 */
    memcpy(c->msg + room - 1, "...'", 5);
  else
    memcpy(c->msg + n, "'", 2);
  return TL_CONV_FAIL;
}

static int tl_conv_nomem(tl_conv *c) {
  c->nomem = 1;
  return TL_CONV_FAIL;
}

/* The failures that name a type: kept out of the recursion's frames. */
static TL_NOINLINE int tl_conv_badkey(tl_conv *c, int kt) {
  char what[64];
  if (kt == LUA_TNUMBER)
    snprintf(what, sizeof what, "cannot use NaN as a key");
  else
    snprintf(what, sizeof what, "cannot use a %s as a key", lua_typename(c->L, kt));
  return tl_conv_fail(c, what);
}

static TL_NOINLINE int tl_conv_badvalue(tl_conv *c, int t) {
  char what[64];
  snprintf(what, sizeof what, "cannot store a %s",
           t == LUA_TTHREAD ? "coroutine" : lua_typename(c->L, t));
  return tl_conv_fail(c, what);
}

static TL_NOINLINE int tl_conv_deep(tl_conv *c) {
  return tl_conv_fail(c, "cannot store tables nested this deep");
}

static int tl_conv_value(tl_conv *c, int i, tl_val *out);

static int tl_conv_table(tl_conv *c, int i, tl_tab **out) {
  lua_State *L = c->L;
  const void *self = lua_topointer(L, i);
  tl_tab *tab;
  int d;
  for (d = 0; d < c->ntables; d++)
    if (c->tables[d] == self) return tl_conv_fail(c, "cannot store a table that contains itself");
  if (c->base + (uint32_t)c->ntables > TL_MAXDEPTH || !lua_checkstack(L, 4))
    return tl_conv_deep(c);
  if (lua_getmetatable(L, i)) {
    lua_pop(L, 1);
    return tl_conv_fail(c, "cannot store a table with a metatable");
  }
  if ((tab = tl_tab_new(c->owner, c->base + (uint32_t)c->ntables)) == NULL)
    return tl_conv_nomem(c);
  c->tables[c->ntables++] = self;
  lua_pushnil(L);
  while (lua_next(L, i)) {
    tl_key k;
    tl_val v, old;
    int rc;
    if (!tl_tokey(L, -2, &k))
      rc = tl_conv_badkey(c, lua_type(L, -2));
    else {
      c->keys[c->depth++] = lua_gettop(L) - 1;
      rc = tl_conv_value(c, lua_gettop(L), &v);
      c->depth--;
      if (rc == TL_CONV_OK && tl_tab_put(tab, &k, &v, &old) != 0) {
        tl_val_free(&v);
        rc = tl_conv_nomem(c);
      }
    }
    if (rc != TL_CONV_OK) {
      lua_pop(L, 2);
      tl_tab_free(tab);
      return rc;
    }
    lua_pop(L, 1);
  }
  c->ntables--;
  *out = tab;
  return TL_CONV_OK;
}

static int tl_conv_value(tl_conv *c, int i, tl_val *out) {
  lua_State *L = c->L;
  out->type = TL_TNIL;
  switch (lua_type(L, i)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      if ((out->u.str.s = tl_strdup(s, len)) == NULL) return tl_conv_nomem(c);
      out->u.str.len = len;
      out->type = TL_TSTR;
      return TL_CONV_OK;
    }
    case LUA_TLIGHTUSERDATA:
      out->type = TL_TPTR;
      out->u.ptr.p = lua_touserdata(L, i);
      out->u.ptr.dtor = NULL;
      return TL_CONV_OK;
    case LUA_TTABLE:
      if (tl_conv_table(c, i, &out->u.tab) != TL_CONV_OK) return TL_CONV_FAIL;
      out->type = TL_TTAB;
      return TL_CONV_OK;
    case LUA_TUSERDATA:
      if (tl_testud(L, i, tl_proxy_tag, sizeof(tl_proxy)) != NULL) {
        const tl_tab *tab = tl_proxy_target(tl_me, (const tl_proxy *)lua_touserdata(L, i));
        if (tab == NULL)
          return tl_conv_fail(c, "cannot store a table proxy that is not valid on this thread");
        switch (tl_tab_clone(tab, c->owner, c->base + (uint32_t)c->ntables, &out->u.tab)) {
          case TL_COPY_OK: out->type = TL_TTAB; return TL_CONV_OK;
          case TL_COPY_DEEP: return tl_conv_deep(c);
          default: return tl_conv_nomem(c);
        }
      }
      /* FALLTHROUGH */
    default:
      if (tl_toscalar(L, i, out)) return TL_CONV_OK;
      return tl_conv_badvalue(c, lua_type(L, i));
  }
}

/* Converts stack slot i into *out, or raises having freed everything.
** The value's tables would be `depth` levels below the fields table. */
static void tl_tovalue(lua_State *L, int i, int key, tl_thread *owner, uint32_t depth,
                       tl_val *out) {
  tl_conv c;
  c.L = L;
  c.owner = owner;
  c.base = depth;
  c.depth = key ? 1 : 0;
  c.ntables = 0;
  c.keys[0] = key;
  c.nomem = 0;
  if (tl_conv_value(&c, tl_absindex(L, i), out) == TL_CONV_OK) return;
  if (c.nomem) tl_memerror(L);
  tl_error(L, c.msg);
}

/* Stores the value at slot 3 under the key at slot 2 of tab. */
static void tl_ltab_assign_any(lua_State *L, tl_tab *tab) {
  tl_key k;
  tl_val v, old;
  tl_checkkey(L, 2, &k);
  tl_tovalue(L, 3, 2, tab->owner, tab->depth + 1, &v);
  if (tl_tab_put(tab, &k, &v, &old) != 0) {
    tl_val_free(&v);
    tl_memerror(L);
  }
  if (old.type >= TL_TSTR) tl_val_free(&old);
}

/* Copies to d the n bytes of a Lua string, and the NUL that every Lua
** string has after them.  Short ones are inline, with overlapping words. */
static TL_HOT void tl_copylstr(char *d, const char *s, size_t n) {
  size_t m = n + 1;
  if (m > 16)
    memcpy(d, s, m);
  else if (m >= 8) {
    uint64_t a = tl_rd8(s), b = tl_rd8(s + m - 8);
    memcpy(d, &a, 8);
    memcpy(d + m - 8, &b, 8);
  } else if (m >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + m - 4, 4);
    memcpy(d, &a, 4);
    memcpy(d + m - 4, &b, 4);
  } else {
    d[0] = s[0];
    d[m >> 1] = s[m >> 1];
    d[m - 1] = s[m - 1];
  }
}

/*
** Stores the value at slot 3 in e, an entry of tab, in place if it can.
** A number or boolean goes over a scalar.  A string goes over a string
** whose block has room (tl_strcap): the same or a smaller multiple of 16.
** So it needs no malloc.  Returns whether it did.  Nothing here can
** run a finalizer between the checks and the store.
*/
static TL_HOT int tl_entry_store(lua_State *L, tl_tab *tab, tl_entry *e) {
  tl_val v;
  if (e->val.type < TL_TSTR) {
    if (!tl_toscalar(L, 3, &v) || v.type == TL_TNIL) return 0;
    tab->version = tab->owner->clock++;
    tl_entry_setval(e, &v);
    return 1;
  }
  if (e->val.type == TL_TSTR && lua_type(L, 3) == LUA_TSTRING) {
    size_t n;
    const char *str = lua_tolstring(L, 3, &n);
    if (n >> 4 > e->val.u.str.len >> 4) return 0;
    tab->version = tab->owner->clock++;
    tl_copylstr(e->val.u.str.s, str, n);
    e->val.u.str.len = n;
    return 1;
  }
  return 0;
}

/* The entry of the string key at slot 2 in tab, or NULL. */
static TL_HOT tl_entry *tl_ltab_findarg(lua_State *L, tl_tab *tab) {
  size_t len;
  const char *s = lua_tolstring(L, 2, &len);
  return tl_tab_findstr(tab, s, len);
}

/* Whether last remembers the key at slot 2 (its tl_keyid is id), with its
** entry still right in tab.  Here tab is the calling thread's (tl_last).
** A proxy's last only ever has its own table.  That is the calling
** thread's once tl_proxy_target found it.  So the same table with the same
** version is enough; tl_last_hit checks the thread too. */
static TL_HOT int tl_last_tabhit(const tl_last *last, const void *id, const tl_tab *tab) {
  return id == last->key && tab == last->tab && tab->version == last->version;
}

static TL_HOT int tl_last_hit(const tl_last *last, const void *id, const tl_tab *tab) {
  return tl_last_tabhit(last, id, tab) && tl_myid == last->owner_id;
}

/*
** Remembers in last e, tab's entry of the string key at slot 2 (id).
** Here last is part of the userdata at slot 1, whose user value uv keeps
** the key alive.  A new key is kept only at its second miss in a row.
** Returns whether it did.
*/
static int tl_last_set(lua_State *L, tl_last *last, int uv, const void *id, const tl_tab *tab,
                       tl_entry *e) {
  if (id != last->key) {
    if (id != last->seen) {
      last->seen = id;
      return 0;
    }
    lua_pushvalue(L, 2);
    tl_setuv(L, 1, uv);
    last->key = id;
  }
  last->owner_id = tab->owner->id;
  last->tab = tab;
  last->version = tab->version;
  last->entry = e;
  return 1;
}

/* tl_ltab_assign when last lacks the key at slot 2 (its tl_keyid is id).
** A string key's entry is remembered for the next write or read.  A table
** value's is not (see tl_shared_index). */
static TL_NOINLINE void tl_ltab_assign_miss(lua_State *L, tl_tab *tab, tl_last *last, int uv,
                                           const void *id) {
  tl_entry *e;
  if (lua_type(L, 2) == LUA_TSTRING && (e = tl_ltab_findarg(L, tab)) != NULL) {
    int hit = e->val.type != TL_TTAB && tl_last_set(L, last, uv, id, tab, e);
    if (tl_entry_store(L, tab, e)) {
      if (hit) last->version = tab->version;
      return;
    }
  }
  tl_ltab_assign_any(L, tab);
}

/* Stores the value at slot 3 under the key at slot 2 of tab.  It goes
** through what last (user value uv) remembers, and keeps that right. */
static TL_HOT void tl_ltab_assign(lua_State *L, tl_tab *tab, tl_last *last, int uv) {
  const void *id = tl_keyid(L, 2);
  if (!tl_last_hit(last, id, tab))
    tl_ltab_assign_miss(L, tab, last, uv, id);
  else if (tl_entry_store(L, tab, last->entry))
    last->version = tab->version; /* the entry is still the key's */
  else
    tl_ltab_assign_any(L, tab);
}

/* Pushes tab[key at slot 2]. */
static TL_HOT int tl_ltab_index(lua_State *L, tl_tab *tab) {
  tl_key k;
  tl_entry *e = NULL;
  if (tab != NULL) {
    if (lua_type(L, 2) == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, 2, &len);
      e = tl_tab_findstr(tab, s, len);
    } else if (tl_tokey(L, 2, &k))
      e = tl_tab_find(tab, &k);
  }
  if (e != NULL)
    tl_pushval(L, &e->val, 0);
  else
    lua_pushnil(L);
  return 1;
}

static lua_Integer tl_ltab_len(const tl_tab *tab) { /* a border, as # finds one */
  tl_key k;
  int64_t i = 0, j = 1;
  if (tab == NULL) return 0;
  for (;;) { /* find i present, j absent */
    tl_key_int(&k, j);
    if (tl_tab_find(tab, &k) == NULL) break;
    i = j;
    if (j > INT64_MAX / 2) return (lua_Integer)j;
    j *= 2;
  }
  while (j - i > 1) {
    int64_t m = i + (j - i) / 2;
    tl_key_int(&k, m);
    if (tl_tab_find(tab, &k) == NULL) j = m; else i = m;
  }
  return (lua_Integer)i;
}

/* Upvalues: a proxy of the table, the next slot to look at, and the
** state's proxy cache.  The cache makes v == sh[k] hold for a table v. */
static int tl_iter(lua_State *L) {
  tl_tab *tab = tl_proxy_tab(L, lua_upvalueindex(1));
  uint32_t i = (uint32_t)lua_tointeger(L, lua_upvalueindex(2));
  for (; i < tab->used; i++) {
    tl_entry *e = &tab->e[i];
    uint64_t version = tab->version;
    if (e->status != TL_LIVE) continue;
    lua_pushinteger(L, (lua_Integer)i + 1);
    lua_replace(L, lua_upvalueindex(2));
    tl_pushkey(L, e); /* may run a finalizer that changes tab */
    tab = tl_proxy_tab(L, lua_upvalueindex(1));
    if (tab->version != version) { /* find the key again */
      tl_key k;
      (void)tl_tokey(L, -1, &k);
      e = tl_tab_find(tab, &k);
    }
    if (e == NULL)
      lua_pushnil(L);
    else
      tl_pushval(L, &e->val, lua_upvalueindex(3));
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)tab->used);
  lua_replace(L, lua_upvalueindex(2));
  lua_pushnil(L);
  return 1;
}

static int tl_iter_empty(lua_State *L) {
  lua_pushnil(L);
  return 1;
}

/* Returns pairs' three values for tab (owned by the calling thread). */
static int tl_ltab_pairs(lua_State *L, tl_tab *tab) {
  if (tab == NULL) {
    lua_pushcfunction(L, tl_iter_empty);
    return 1;
  }
  tl_pushproxy(L, tab, tl_pushcache(L)); /* cache proxy */
  lua_pushinteger(L, 0);        /* cache proxy 0 */
  lua_pushvalue(L, -3);         /* cache proxy 0 cache */
  lua_pushcclosure(L, tl_iter, 3);
  return 1;
}
