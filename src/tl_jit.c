/*
** tl_jit.c: the metamethods of Locals and shared locals under LuaJIT with
** the JIT on.  They are the Lua functions of src/tl_jit.lua, and the C
** functions here that those call.  Part of threadlocal.c (the binding).
** Why, and the rules a change must keep: docs/architecture.md, "LuaJIT".
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

#ifdef TL_JIT

/* For the FFI: the calling thread's id; never allocates or fails.  A
** double holds every id exactly, up to 2^53 threads.  Ids count up from
** 1, so 0 (no record yet) matches no cached id. */
static double tl_jit_myid(void) {
  return (double)tl_myid;
}

/* ---------------------------------------------------------------------- */
/* A shared local's reads through the FFI                                 */
/* ---------------------------------------------------------------------- */

/* What tl_jit_skind answers; src/tl_jit.lua has the same numbers. */
enum { TL_SKIND_ASK, TL_SKIND_TRUE, TL_SKIND_FALSE, TL_SKIND_NIL };

/*
** The calling thread's fields of shared local h, and key k in *key.  NULL
** when h or k is no id, or before the thread has fields.  (Then
** tl_shared_index may start them from the defaults.)
*/
static TL_HOT tl_tab *tl_jit_fields(uint32_t h, uint32_t k, const tl_idkey **key) {
  const threadlocal_shared *sl = (const threadlocal_shared *)tl_ids_at(&tl_ids_shared, h);
  if (sl == NULL || (*key = (const tl_idkey *)tl_ids_at(&tl_ids_keys, k)) == NULL) return NULL;
  return tl_shfields_peek(tl_me, sl);
}

/*
** The calling thread's last field read through the FFI, so that a loop
** over one field looks nothing up.  Entry e (NULL: absent) stays right
** while tl_mygen is still `gen` and tab keeps its version.  The first means
** tab is still the thread's fields of h.  Initial-exec TLS, as tl_me.
*/
typedef struct tl_jit_last {
  uint64_t hk; /* h << 32 | k */
  uint64_t gen, version;
  const tl_tab *tab;
  const tl_entry *e;
} tl_jit_last;

static _Thread_local tl_jit_last tl_jit_lastread TL_TLS_MODEL;

/* Whether tl_jit_lastread still holds field k of shared local h, with no
** call or lookup.  Generation 0: no record, or no lookup yet. */
static TL_HOT int tl_jit_again(uint32_t h, uint32_t k) {
  uint64_t gen = tl_mygen;
  return ((uint64_t)h << 32 | k) == tl_jit_lastread.hk && gen == tl_jit_lastread.gen &&
         gen != 0 && tl_jit_lastread.tab->version == tl_jit_lastread.version;
}

/* Looks field k of shared local h up into tl_jit_lastread.  Returns 0
** when h or k is no id, or the thread has no fields yet. */
static int tl_jit_lookup(uint32_t h, uint32_t k) {
  const tl_idkey *key;
  tl_tab *tab = tl_jit_fields(h, k, &key);
  if (tab == NULL) return 0;
  tl_jit_lastread.e = tl_tab_findstr(tab, key->s, key->len);
  tl_jit_lastread.hk = (uint64_t)h << 32 | k;
  tl_jit_lastread.gen = tl_mygen;
  tl_jit_lastread.version = tab->version;
  tl_jit_lastread.tab = tab;
  return 1;
}

/* A number field as tl_jit_sget answers it, else NaN. */
static TL_HOT double tl_jit_num(const tl_entry *e) {
  if (e != NULL && e->val.type == TL_TINT) return (double)e->val.u.i;
  if (e != NULL && e->val.type == TL_TFLOAT) return e->val.u.f;
  return NAN;
}

static TL_NOINLINE double tl_jit_sget_slow(uint32_t h, uint32_t k) {
  return tl_jit_lookup(h, k) ? tl_jit_num(tl_jit_lastread.e) : NAN;
}

/*
** For the FFI: field k of the calling thread's fields of shared local h,
** when a number.  NaN otherwise, and for a NaN field, which the C __index
** pushes.  An integer comes as the double tl_pushint pushes under LuaJIT.
** Never allocates or fails, whatever h and k are.  The usual read saves
** no register: the rest is a tail call.
*/
static double tl_jit_sget(uint32_t h, uint32_t k) {
  if (tl_jit_again(h, k)) return tl_jit_num(tl_jit_lastread.e);
  return tl_jit_sget_slow(h, k);
}

/* For the FFI, after tl_jit_sget gave NaN: TRUE, FALSE or NIL for a
** boolean or absent field.  Else TL_SKIND_ASK: the C __index answers.  Not
** an out-parameter of tl_jit_sget: a hook may read a field in between. */
static double tl_jit_skind(uint32_t h, uint32_t k) {
  const tl_entry *e;
  if (!tl_jit_again(h, k) && !tl_jit_lookup(h, k)) return TL_SKIND_ASK;
  if ((e = tl_jit_lastread.e) == NULL) return TL_SKIND_NIL;
  if (e->val.type == TL_TBOOL) return e->val.u.b ? TL_SKIND_TRUE : TL_SKIND_FALSE;
  return TL_SKIND_ASK;
}

/*
** learn(o, k), called protected.  Gives shared local o and string k their
** ids, when both can have one.  They go in handles[o] and keys[k]
** (upvalues 1 and 2), for jit.lua to pass to the FFI.  Raises only when
** out of memory.
*/
static int tl_jit_learn(lua_State *L) {
  tl_handle *ref = (tl_handle *)tl_testud(L, 1, tl_handle_tag, sizeof(tl_handle));
  uint32_t h, k;
  size_t len;
  const char *s;
  if (ref == NULL || lua_type(L, 2) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, 2, &len);
  if (len > TL_IDS_KEYLEN) return 0; /* no id, ever: its reads take no lock here */
  if (tl_ids_id(&tl_ids_shared, ref->sl->hash, ref->sl, NULL, 0, &h) != 0 ||
      tl_ids_id(&tl_ids_keys, tl_hash_bytes(s, len), NULL, s, len, &k) != 0)
    return 0;
  lua_settop(L, 2);
  lua_pushvalue(L, 1);
  lua_pushnumber(L, (lua_Number)h);
  lua_rawset(L, lua_upvalueindex(1)); /* o k */
  lua_pushnumber(L, (lua_Number)k);
  lua_rawset(L, lua_upvalueindex(2));
  return 0;
}

/*
** Raises "bad argument #1 to 'mm' (msg)" where the metamethod was called
** from, as LuaJIT places the C closures' errors.  That is level 2: the Lua
** closure is level 1.
*/
static TL_NORETURN TL_NOINLINE void tl_jit_argerror(lua_State *L, const char *mm,
                                                    const char *msg) {
  luaL_where(L, 2);
  lua_pushfstring(L, "bad argument #1 to '%s' (%s)", mm, msg);
  lua_concat(L, 2);
  tl_raise(L);
}

/* Argument 1 must be a Local. */
static void tl_jit_checkself(lua_State *L, int uv) {
  void *p = lua_touserdata(L, 1);
  if (p == NULL || *(const char *const *)p != tl_local_tag)
    tl_jit_argerror(L, uv == TL_LOCAL_GET ? "__index" : "__newindex",
                    tl_pushexpected(L, 1, tl_local_tag));
}

/*
** The slow path of a Lua closure (o, self[, k]).  Argument 1 of the
** metamethod is `o`; `self` is the Local whose closure it is.  The user
** value of self that holds the closure is `uv`: TL_LOCAL_GET or
** TL_LOCAL_SET.  Returns the fields table and its thread's id, for the
** closure to keep.
*/
static int tl_jit_slow(lua_State *L, int uv) {
  tl_local *self;
  uint64_t *cid;
  int st;
  tl_jit_checkself(L, uv);
  self = (tl_local *)tl_checkud_hot(L, 2, tl_local_tag);
  cid = uv == TL_LOCAL_GET ? &self->get_id : &self->set_id;
  if (*cid == tl_myid) { /* another Local as o: answered from self's fields */
    tl_getuv(L, 2, uv);
    lua_getupvalue(L, -1, TL_JIT_UP_FIELDS);
    lua_getupvalue(L, -2, TL_JIT_UP_ID);
    /* Unless the closure lacks them: called directly through the debug
    ** library, this function set *cid for nobody. */
    if (lua_tonumber(L, -1) == (lua_Number)tl_myid) return 2;
    lua_pop(L, 3);
  }
  if (!lua_rawequal(L, 1, 2))
    tl_jit_argerror(L, uv == TL_LOCAL_GET ? "__index" : "__newindex",
                    "not the Local whose metamethod this is");
  lua_settop(L, 2);
  st = tl_pushstate(L);
  tl_getuv(L, 2, TL_LOCAL_MAP);
  tl_local_find(L, 2, self, lua_gettop(L), st, uv == TL_LOCAL_GET);
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
  tl_jit_checkself(L, TL_LOCAL_SET); /* as tl_local_newindex: argument 1, then the key */
  tl_local_checkname(L, 3);
  lua_settop(L, 2);
  return tl_jit_slow(L, TL_LOCAL_SET);
}

/* A shared local's __index when the FFI did not answer, as tl_shared_index.
** Argument 1 is checked here, so that its error is placed as a Local's. */
static int tl_jit_sindex(lua_State *L) {
  void *p = lua_touserdata(L, 1);
  if (p == NULL || *(const char *const *)p != tl_handle_tag)
    tl_jit_argerror(L, "__index", tl_pushexpected(L, 1, tl_handle_tag));
  return tl_shared_index(L);
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

/* With the JIT on, pushes the table src/tl_jit.lua returns and returns 1.
** Without the FFI, pushes nothing and returns 0.  At index `st`, the
** tl_state caches the table in user value TL_STATE_JIT (false: no FFI). */
static int tl_jit_factory(lua_State *L, int st) {
  st = tl_absindex(L, st);
  tl_getuv(L, st, TL_STATE_JIT);
  if (lua_isnil(L, -1)) {
    size_t len = sizeof tl_lua_jit;
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, (const char *)tl_lua_jit, len, TL_JIT_CHUNK) != 0)
      tl_raise(L);
    lua_pushliteral(L, "threadlocal.jit");
    lua_pushnil(L);
    lua_createtable(L, 0, 9);
    lua_pushlightuserdata(L, (void *)(uintptr_t)tl_jit_myid);
    lua_setfield(L, -2, "myid");
    lua_pushlightuserdata(L, (void *)(uintptr_t)tl_jit_sget);
    lua_setfield(L, -2, "sget");
    lua_pushlightuserdata(L, (void *)(uintptr_t)tl_jit_skind);
    lua_setfield(L, -2, "skind");
    lua_pushcfunction(L, tl_jit_sindex);
    lua_setfield(L, -2, "sindex");
    lua_pushcfunction(L, tl_jit_index);
    lua_setfield(L, -2, "index");
    lua_pushcfunction(L, tl_jit_newindex);
    lua_setfield(L, -2, "newindex");
    lua_newtable(L); /* handles: shared local -> id, weak keys */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "handles");
    lua_newtable(L); /* keys: string -> id */
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "keys");
    lua_pushcclosure(L, tl_jit_learn, 2);
    lua_setfield(L, -2, "learn");
    lua_call(L, 3, 1);
    lua_pushvalue(L, -1);
    tl_setuv(L, st, TL_STATE_JIT);
  }
  if (lua_istable(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* With the JIT on, gives the new Local ud Lua closures as __index and
** __newindex, in its metatable on top.  Returns 1, or 0 if it did not. */
static int tl_jit_closures(lua_State *L, int st, int ud) {
  if (!tl_jit_on(L) || !tl_jit_factory(L, st)) return 0; /* mt jit */
  lua_getfield(L, -1, "closures");
  lua_remove(L, -2);                    /* mt factory */
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

/* With the JIT on and the FFI there, pushes the metatable of shared locals
** read often and returns 1.  Else pushes nothing and returns 0.  It is
** TL_STATE_JITMT, made on first need: the shared-local one with jit.lua's
** __index.  A promoted shared local keeps its tl_handle userdata. */
static int tl_jit_sharedmt(lua_State *L) {
  int st;
  if (!tl_jit_on(L)) return 0;
  st = tl_pushstate(L);                 /* st */
  if (!tl_jit_factory(L, st)) {
    lua_pop(L, 1);
    return 0;
  }                                     /* st jit */
  tl_getuv(L, st, TL_STATE_JITMT);      /* st jit mt? */
  if (lua_isnil(L, -1)) {               /* the C one's named entries, */
    lua_pop(L, 1);                      /* the same functions */
    tl_pushsharedmt(L);                 /* st jit cmt */
    lua_createtable(L, 0, 8);           /* st jit cmt mt */
    lua_pushnil(L);
    while (lua_next(L, -3)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
      } else
        lua_pop(L, 1);
    }
    lua_remove(L, -2);                  /* st jit mt */
    lua_getfield(L, -2, "shared_index");
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, -1);
    tl_setuv(L, st, TL_STATE_JITMT);
  }
  lua_replace(L, st);                   /* mt jit */
  lua_pop(L, 1);                        /* mt */
  return 1;
}

/* Protected: sets *made when TL_STATE_JITMT is there (the JIT on and the
** FFI there), making it if need be. */
static int tl_jit_makemt(lua_State *L) {
  int *made = (int *)lua_touserdata(L, 1);
  *made = tl_jit_sharedmt(L);
  return 0;
}

/*
** At the TL_JIT_HOT-th read of the shared local at slot 1 through the C
** __index (see TL_JIT).  With the JIT on, it gets the JIT's metatable.
** The switch runs Lua code and allocates, so it runs protected.  A failure
** (no memory, a jit.status that raises or yields) keeps the C __index, and
** the read goes on.  Leaves the stack as it was.
*/
static void tl_jit_promote(lua_State *L) {
  int made = 0;
  if (tl_cpcall(L, tl_jit_makemt, &made) != 0) {
    lua_pop(L, 1);
    return;
  }
  if (!made) return;
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey); /* made with the mt; no */
  tl_getuv(L, -1, TL_STATE_JITMT);                /* allocation from here */
  lua_setmetatable(L, 1);
  lua_pop(L, 1);
}

#endif
