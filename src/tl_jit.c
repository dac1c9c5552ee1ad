/*
** tl_jit.c: the metamethods of Locals and shared locals for LuaJIT with the
** JIT on.  Part of threadlocal.c (the Lua binding).
**
** LuaJIT cannot compile a call to a C function through the Lua API: a loop
** over a Local with C closures, or over a shared local with a C __index,
** aborts its traces and runs interpreted.  Locals made while the JIT is on,
** and shared locals once read often with it on (TL_JIT_HOT, tl_lua.h), get
** the Lua functions of lua/threadlocal/jit.lua instead (built in from
** tl_embedded.h, loaded once per state, on first need).
**
** A Local's closures: a hit reads the calling thread's id through an FFI
** call to tl_jit_myid and does a rawget/rawset on the fields table the
** closure holds; a miss calls tl_jit_index or tl_jit_newindex here, which
** check the arguments as tl_local_index and tl_local_newindex do, find the
** calling thread's fields as they do (tl_local_push) and return them with
** the thread's id, which the closure keeps as its upvalues TL_JIT_UP_FIELDS
** and TL_JIT_UP_ID.  The Local's get_id and set_id say whose fields the
** closures hold, as for the C closures, so that the purge, clear and a
** failed init drop them (tl_uncache).
**
** A shared local's __index (its metatable is TL_STATE_JITMT, the shared-local
** one with that __index; the userdata is the same tl_sref): for a string
** key, an FFI call to tl_jit_sget answers a number, a boolean or an absent
** field without the Lua API; anything else calls tl_jit_sindex.
**
** Everywhere else (Lua 5.1 to 5.4, LuaJIT's interpreter, a build without
** the embedded file) both keep the C functions.
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

#ifdef TL_JIT

/* The calling thread's id, for the FFI: never allocates, never fails.  A
** double holds every id exactly (ids count up from 1: they would need 2^53
** threads to outgrow it); 0 (no record yet) matches no cached id. */
static double tl_jit_myid(void) {
  return (double)tl_myid;
}

/* What tl_jit_sget answers in *code when it returns NaN;
** lua/threadlocal/jit.lua has the same numbers. */
enum { TL_SGET_ASK, TL_SGET_TRUE, TL_SGET_FALSE, TL_SGET_NIL };

/*
** For the FFI: field s[0..len) of the calling thread's fields of the shared
** local whose userdata payload is at p, when the answer needs no Lua API.
** A number is returned itself (an integer as the double tl_pushint pushes
** under LuaJIT), so that the usual read stores nothing for the caller to
** load back; anything else returns NaN with *code: a boolean or an absent
** field, but only once the thread has fields (before, tl_shared_index may
** start them from the defaults); else TL_SGET_ASK, p included when it is
** no shared local, and a NaN field (the C __index pushes it as it is):
** tl_shared_index gives the full answer or raises.  Never allocates, never
** fails; reads p's tag as tl_checkud_hot does, and nothing else before.
*/
/* What tl_jit_sget answers for entry e (NULL: absent). */
static TL_HOT double tl_jit_sval(const tl_entry *e, int *code) {
  if (e == NULL) {
    *code = TL_SGET_NIL;
  } else {
    switch (e->val.type) {
      case TL_TINT: return (double)e->val.u.i;
      case TL_TFLOAT:
        if (e->val.u.f == e->val.u.f) return e->val.u.f;
        *code = TL_SGET_ASK; /* NaN: the C __index pushes it as it is */
        break;
      case TL_TBOOL: *code = e->val.u.b ? TL_SGET_TRUE : TL_SGET_FALSE; break;
      default: *code = TL_SGET_ASK; break;
    }
  }
  return NAN;
}

/* tl_jit_sget through the calling thread's fields table, remembering in
** ref what it found. */
static TL_NOINLINE double tl_jit_sget_slow(tl_sref *ref, const char *s, size_t len, int *code) {
  const tl_entry *e;
  tl_tab *tab;
  if (ref == NULL || ref->tag != tl_sref_tag || (tab = tl_shfields_peek(tl_me, ref->sl)) == NULL) {
    *code = TL_SGET_ASK;
    return NAN;
  }
  if ((e = tl_tab_findstr(tab, s, len)) != NULL) {
    ref->jit_owner = tl_myid;
    ref->jit_tab = tab;
    ref->jit_version = tab->version;
    ref->jit_key = s;
    ref->jit_entry = e;
  }
  return tl_jit_sval(e, code);
}

/*
** The usual path: the key read last through ref, whose entry is still
** right while the calling thread is the one that read it and its fields
** table is the same with the same version (see tl_sref); then, since the
** id matches, the thread has a record.
** The key at the same address is confirmed by its bytes (a short key, in
** place in the entry): an address may be reused by another string.  A leaf
** function, which saves no registers.
*/
static double tl_jit_sget(void *p, const char *s, size_t len, int *code) {
  tl_sref *ref = (tl_sref *)p;
  if (ref != NULL && ref->tag == tl_sref_tag && s == ref->jit_key &&
      tl_myid == ref->jit_owner && tl_shfields_peek(tl_me, ref->sl) == ref->jit_tab &&
      ref->jit_tab->version == ref->jit_version && len <= TL_SHORTKEY) {
    const tl_entry *e = ref->jit_entry;
    size_t i;
    if (e->ktype != TL_TSHORT || tl_shortlen(&e->key) != len) goto slow;
    for (i = 0; i < len; i++)
      if (e->key.c[i] != s[i]) goto slow;
    return tl_jit_sval(e, code);
  }
slow:
  return tl_jit_sget_slow(ref, s, len, code);
}

/*
** "bad argument #1 to '__index' (msg)", placed where the metamethod was
** called from (level 2: the Lua closure is level 1), as LuaJIT places the
** errors of the C closures.
*/
static TL_NORETURN TL_NOINLINE void tl_jit_argerror(lua_State *L, const char *mm,
                                                    const char *msg) {
  luaL_where(L, 2);
  lua_pushfstring(L, "bad argument #1 to '%s' (%s)", mm, msg);
  lua_concat(L, 2);
  tl_raise(L);
}

/* Argument 1 must be a Local. */
static void tl_jit_check1(lua_State *L, int uv) {
  void *p = lua_touserdata(L, 1);
  if (p == NULL || *(const char *const *)p != tl_local_tag)
    tl_jit_argerror(L, uv == TL_LOCAL_GET ? "__index" : "__newindex",
                    lua_pushfstring(L, "%s expected, got %s", tl_local_tag, luaL_typename(L, 1)));
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
  int st;
  tl_jit_check1(L, uv);
  self = (tl_local *)tl_checkud_hot(L, 2, tl_local_tag);
  cid = uv == TL_LOCAL_GET ? &self->get_id : &self->set_id;
  if (*cid == tl_myid) { /* another Local as o: answered from self's fields */
    tl_getuv(L, 2, uv);
    lua_getupvalue(L, -1, TL_JIT_UP_FIELDS);
    lua_getupvalue(L, -2, TL_JIT_UP_ID);
    /* Unless the closure does not hold them: this function, reached through
    ** the debug library and called directly, set *cid for nobody. */
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
  tl_jit_check1(L, TL_LOCAL_SET); /* as tl_local_newindex: argument 1, then the key */
  tl_local_checkname(L, 3);
  lua_settop(L, 2);
  return tl_jit_slow(L, TL_LOCAL_SET);
}

/* A shared local's __index after tl_jit_sget asked: as tl_shared_index,
** with argument 1 checked here so that its error is placed as the Local's. */
static int tl_jit_sindex(lua_State *L) {
  void *p = lua_touserdata(L, 1);
  if (p == NULL || *(const char *const *)p != tl_sref_tag)
    tl_jit_argerror(L, "__index", lua_pushfstring(L, "%s expected, got %s", tl_sref_tag,
                                                  luaL_typename(L, 1)));
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

/* With the JIT on: pushes the table lua/threadlocal/jit.lua returns and
** returns 1 when the FFI is there; else pushes nothing, returns 0.  st: the
** index of the tl_state, whose user value TL_STATE_JIT caches it (false: no
** FFI). */
static int tl_jit_factory(lua_State *L, int st) {
  st = tl_absindex(L, st);
  tl_getuv(L, st, TL_STATE_JIT);
  if (lua_isnil(L, -1)) {
    size_t len = sizeof tl_lua_jit;
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, (const char *)tl_lua_jit, len, "@lua/threadlocal/jit.lua") != 0)
      tl_raise(L);
    lua_pushliteral(L, "threadlocal.jit");
    lua_pushnil(L);
    lua_createtable(L, 0, 5);
    lua_pushlightuserdata(L, (void *)(uintptr_t)tl_jit_myid);
    lua_setfield(L, -2, "myid");
    lua_pushlightuserdata(L, (void *)(uintptr_t)tl_jit_sget);
    lua_setfield(L, -2, "sget");
    lua_pushcfunction(L, tl_jit_sindex);
    lua_setfield(L, -2, "sindex");
    lua_pushcfunction(L, tl_jit_index);
    lua_setfield(L, -2, "index");
    lua_pushcfunction(L, tl_jit_newindex);
    lua_setfield(L, -2, "newindex");
    lua_call(L, 3, 1);
    lua_pushvalue(L, -1);
    tl_setuv(L, st, TL_STATE_JIT);
  }
  if (lua_istable(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* With the metatable mt of the new Local ud on top: when the JIT is on, sets
** its __index and __newindex to Lua closures and returns 1; else 0. */
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

/* When the JIT is on, pushes the metatable of shared locals read often
** (TL_STATE_JITMT, made on first need: the shared-local one with jit.lua's
** __index) and returns 1; else pushes nothing and returns 0. */
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
** The TL_JIT_HOT-th read of the shared local at slot 1 through the C
** __index (see TL_JIT in tl_lua.h): with the JIT on, it gets the JIT's
** metatable.  The switch runs Lua code (jit.status, jit.lua) and
** allocates: it runs protected, and whatever fails there (no memory, a
** replaced jit.status that raises or yields) leaves the C __index and the
** read goes on.  Leaves the stack as it was.
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

#else

#define tl_jit_closures(L, st, ud) 0

#endif
