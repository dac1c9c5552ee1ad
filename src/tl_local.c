/*
** tl_local.c: Locals.  Construction (threadlocal.new), init, and each
** thread's fields table in the owning state.  The cached __index and
** __newindex closures, and the purge of exited threads' fields.  Part of
** threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

/* ---------------------------------------------------------------------- */
/* Purging the Local fields of exited threads                             */
/* ---------------------------------------------------------------------- */

/* Drops the fields held by the closure in user value uv (TL_LOCAL_GET or
** TL_LOCAL_SET) of lo at ud.  So it keeps nothing alive, and its next call
** takes the slow path.  A C closure gets the state's empty or sink table
** instead, never nil (see tl_local_index).  Allocates nothing. */
static void tl_uncache_closure(lua_State *L, int ud, tl_local *lo, int uv) {
  *(uv == TL_LOCAL_GET ? &lo->get_id : &lo->set_id) = TL_NOCACHE;
  tl_getuv(L, ud, uv);
  if (lua_iscfunction(L, -1)) {
    (void)lua_getupvalue(L, -1, 1); /* TL_UP_STATE */
    tl_getuv(L, -1, uv == TL_LOCAL_GET ? TL_STATE_EMPTY : TL_STATE_SINK);
    lua_remove(L, -2);
    lua_setupvalue(L, -2, 2); /* TL_UP_FIELDS */
  } else { /* a Lua closure: see tl_jit.c */
    lua_pushnil(L);
    lua_setupvalue(L, -2, TL_JIT_UP_FIELDS);
    lua_pushnumber(L, -1);
    lua_setupvalue(L, -2, TL_JIT_UP_ID);
  }
  lua_pop(L, 1);
}

static void tl_uncache(lua_State *L, int ud, tl_local *lo) {
  ud = tl_absindex(L, ud);
  tl_uncache_closure(L, ud, lo, TL_LOCAL_GET);
  tl_uncache_closure(L, ud, lo, TL_LOCAL_SET);
}

/* Drops every Local's fields of the exited thread `id`.  Allocates nothing,
** so it is safe inside a finalizer. */
static void tl_purge_id(lua_State *L, int bythread, uint64_t id) {
  tl_rawgeti64(L, bythread, id);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      tl_local *lo = (tl_local *)lua_touserdata(L, -2);
      tl_getuv(L, -2, TL_LOCAL_MAP);
      tl_delid(L, -1, id);
      lua_pop(L, 2);
      if (lo->get_id == id || lo->set_id == id) tl_uncache(L, lua_gettop(L), lo);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    tl_rawseti64(L, bythread, id);
  } else
    lua_pop(L, 1);
}

/* Drops the fields of the threads that exited since the last purge.  The
** tl_state is at index (or upvalue) st. */
static void tl_purge(lua_State *L, int st) {
  tl_home *h = tl_state_at(L, st)->home;
  uint64_t ids[32];
  size_t n, i;
  if (h == NULL || (n = tl_home_drain(h, ids, 32)) == 0) return;
  tl_state_uv(L, st, TL_STATE_BYTHREAD);
  do {
    for (i = 0; i < n; i++) tl_purge_id(L, lua_gettop(L), ids[i]);
  } while (n == 32 && (n = tl_home_drain(h, ids, 32)) > 0);
  lua_pop(L, 1);
}

/*
** Makes the state's GC sentinel, whose __gc purges, then makes the next
** one.  So a purge runs once per GC cycle.  A dead thread's values become
** garbage in one cycle; the next collects them, with no Local touched.
*/
static void tl_sentinel_new(lua_State *L, int st) {
  st = tl_absindex(L, st);
  tl_newud(L, 1, 0);
  tl_state_uv(L, st, TL_STATE_SENTINEL);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
  tl_state_at(L, st)->sentinel = 1;
}

/* Upvalue 1: the tl_state. */
static int tl_sentinel_gc(lua_State *L) {
  tl_state *st = tl_state_at(L, TL_UP_STATE);
  if (st->home == NULL) return 0; /* the state is closing */
  tl_purge(L, TL_UP_STATE);
  st->sentinel = 0; /* until the next one exists: see tl_local_push */
  tl_sentinel_new(L, TL_UP_STATE);
  return 0;
}


/* ---------------------------------------------------------------------- */
/* Locals                                                                 */
/* ---------------------------------------------------------------------- */

/*
** Records that the Local at ud holds fields for t, so a purge finds them.
** Any Lua allocation may run a finalizer that touches another Local of
** this state on this thread.  That enrolls the thread first.  So what was
** read before an allocation is read again after it.
*/
static void tl_enroll_once(lua_State *L, int ud, tl_thread *t, int st) {
  tl_home *home = tl_state_at(L, st)->home;
  tl_state_uv(L, st, TL_STATE_BYTHREAD);
  tl_rawgeti64(L, -1, t->id);
  if (lua_isnil(L, -1)) { /* first Local of this state on this thread */
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    tl_rawgeti64(L, -2, t->id);
    if (tl_keepmade(L)) { /* no allocation from here to the store */
      if (home != NULL && tl_home_register(home, t) != 0) tl_memerror(L);
      lua_pushvalue(L, -1);
      tl_rawseti64(L, -3, t->id);
    }
  }
  lua_pushvalue(L, ud);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 2);
}

/* The same, for t's id after the last allocation.  A finalizer that an
** allocation runs may release t, whose fields then go under its new id.
** Callers make their table first, and store it with no allocation after
** this. */
static void tl_enroll(lua_State *L, int ud, tl_thread *t, int st) {
  uint64_t id;
  do {
    id = t->id;
    tl_enroll_once(L, ud, t, st);
  } while (t->id != id);
}

/* Gives the calling thread t its fields table and runs init for it.  If
** init already runs for t, it has cleared its own fields.  They start again
** empty, and init does not run again.  Release is refused while an init
** runs, so t keeps its id.  Leaves the stack as it was. */
static void tl_local_start(lua_State *L, int ud, tl_thread *t, int st) {
  tl_local *lo = (tl_local *)lua_touserdata(L, ud);
  int map, top = lua_gettop(L);
  lua_createtable(L, 0, 1); /* it is made for a write, or init's */
  tl_enroll(L, ud, t, st);
  tl_getuv(L, ud, TL_LOCAL_MAP);
  lua_insert(L, -2);
  map = top + 1;
  tl_rawgeti64(L, map, t->id); /* a finalizer that ran meanwhile may have */
  if (!lua_isnil(L, -1)) { /* started this thread already */
    lua_settop(L, top);
    return;
  }
  lua_pop(L, 1);
  tl_rawseti64(L, map, t->id);
  if (lo->get_id == t->id) /* __index holds the empty table for t */
    tl_uncache_closure(L, ud, lo, TL_LOCAL_GET);
  if (lo->ninit > 0 && lo->init_id != t->id) {
    int i, n = lo->ninit, status;
    uint64_t outer = lo->init_id; /* init may hand the state to another thread */
    tl_getuv(L, ud, TL_LOCAL_INIT);
    luaL_checkstack(L, n + 1, "threadlocal: too many init arguments");
    lua_rawgeti(L, -1, 1);
    lua_pushvalue(L, ud);
    for (i = 2; i <= n; i++) lua_rawgeti(L, map + 1, i);
    lo->init_id = t->id;
    t->inits++;
    status = lua_pcall(L, n, 1, 0);
    t->inits--;
    lo->init_id = outer;
    if (status == 0 && !lua_isnil(L, -1)) { /* as Python's __init__ */
      tl_pushmsg(L, "threadlocal: init must return nothing "
                    "(set fields on its first argument instead)");
      status = LUA_ERRRUN;
    }
    if (status != 0) {
      /* The thread keeps no fields; the next access runs init again. */
      tl_delid(L, map, t->id);
      tl_uncache(L, ud, lo);
      tl_raise(L);
    }
  }
  lua_settop(L, top);
}

/* Pushes the calling thread's fields table of the Local at ud.  If the
** thread has none, starts it (runs init).  The tl_state is at index (or
** upvalue) st. */
static void tl_local_push(lua_State *L, int ud, int st) {
  tl_thread *t = tl_self(L);
  ud = tl_absindex(L, ud);
  st = tl_absindex(L, st);
  tl_purge(L, st);
  if (tl_unlikely(!tl_state_at(L, st)->sentinel)) /* the first Local, or a finalizer */
    tl_sentinel_new(L, st);                       /* ran out of memory: mend */
  tl_getuv(L, ud, TL_LOCAL_MAP);
  tl_rawgeti64(L, -1, t->id);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    tl_local_start(L, ud, t, st);
    tl_rawgeti64(L, -1, t->id);
    if (lua_isnil(L, -1)) { /* init cleared its own fields */
      lua_pop(L, 1);
      lua_newtable(L);
      tl_enroll(L, ud, t, st);
      tl_rawgeti64(L, -2, t->id); /* a finalizer may have started it again */
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        tl_rawseti64(L, -3, t->id);
      } else
        lua_remove(L, -2);
    }
  }
  lua_remove(L, -2);
}

/* The same, from a function without the state as an upvalue. */
static void tl_local_push_findstate(lua_State *L, int ud) {
  int st;
  ud = tl_absindex(L, ud);
  st = tl_pushstate(L);
  tl_local_push(L, ud, st);
  lua_remove(L, st);
}

/*
** Pushes the calling thread's fields table of the Local lo at ud, as
** tl_local_push does.  Here map is lo's TL_LOCAL_MAP, st the tl_state, and
** read says a read.  A read of a Local without init, by a thread without
** fields, gets the state's empty table.  It makes nothing.  The usual cases
** allocate nothing through Lua.  Exited threads' fields are purged by
** tl_local_push and the sentinel, not here.  That is safe: a thread's
** fields are never found under another thread's id.
*/
static void tl_local_find(lua_State *L, int ud, const tl_local *lo, int map, int st, int read) {
  if (tl_myid == 0) (void)tl_self(L); /* the thread's record: C memory only */
  tl_rawgeti64(L, map, tl_myid);
  if (lua_isnil(L, -1) && read && lo->ninit == 0) {
    lua_pop(L, 1);
    tl_getuv(L, st, TL_STATE_EMPTY); /* made with the first Local */
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    tl_local_push(L, ud, st);
  }
}

/* The closures' slow path: the calling thread is not the one whose fields
** they hold.  The id in *cid (get_id or set_id) says whose. */
static TL_NOINLINE void tl_local_refresh(lua_State *L, tl_local *lo, uint64_t *cid) {
  if (lo != lua_touserdata(L, TL_UP_SELF)) /* called with another Local */
    luaL_argerror(L, 1, "not the Local whose metamethod this is");
  tl_local_find(L, 1, lo, TL_UP_MAP, TL_UP_STATE, cid == &lo->get_id);
  lua_replace(L, TL_UP_FIELDS);
  *cid = tl_myid;
}

/*
** The hot path.  Argument 1 gets a cheap check (tl_checkud_hot): Lua code
** can pass anything here through debug.getmetatable.  The slow path
** refuses another Local (TL_UP_SELF), so the cached fields and ids stay
** consistent.  The fast path does not check: that would cost a second call
** into Lua per access.  It uses the table it holds, never nil
** (tl_uncache_closure), as debug.getupvalue would hand it out anyway.  No
** argument 1, or no key to set, is refused.  Otherwise a missing argument
** makes the raw access use argument 1 as the key, within the arguments.
*/
static int tl_local_index(lua_State *L) {
  tl_local *lo = (tl_local *)tl_checkud_hot(L, 1, tl_local_tag);
  if (tl_unlikely(lo->get_id != tl_myid)) tl_local_refresh(L, lo, &lo->get_id);
  lua_rawget(L, TL_UP_FIELDS);
  return 1;
}

/* A Local's field name at slot i: anything a table takes as a key. */
static TL_HOT void tl_local_checkname(lua_State *L, int i) {
  switch (lua_type(L, i)) {
    case LUA_TNONE:
    case LUA_TNIL:
      tl_error(L, "threadlocal: cannot use nil as a field name");
    case LUA_TNUMBER: {
      lua_Number n = lua_tonumber(L, i);
      if (n != n) tl_error(L, "threadlocal: cannot use NaN as a field name");
      break;
    }
  }
}

static int tl_local_newindex(lua_State *L) {
  tl_local *lo = (tl_local *)tl_checkud_hot(L, 1, tl_local_tag);
  tl_local_checkname(L, 2);
  if (tl_unlikely(lo->set_id != tl_myid)) tl_local_refresh(L, lo, &lo->set_id);
  lua_rawset(L, TL_UP_FIELDS);
  return 0;
}

static int tl_islocal(lua_State *L, int i) {
  return tl_testud(L, i, tl_local_tag, sizeof(tl_local)) != NULL;
}

/* The cold metamethods check argument 1 fully (see tl_local_index). */
static void tl_local_checkself(lua_State *L) {
  (void)tl_checkud(L, 1, tl_local_tag, sizeof(tl_local));
}

static int tl_local_pairs(lua_State *L) {
  tl_local_checkself(L);
  tl_local_push_findstate(L, 1);
  lua_pushcfunction(L, tl_next);
  lua_insert(L, -2);
  lua_pushnil(L);
  return 3;
}

static int tl_local_len(lua_State *L) {
  tl_local_checkself(L);
  tl_local_push_findstate(L, 1);
  lua_pushinteger(L, (lua_Integer)tl_rawlen(L, -1));
  return 1;
}

static int tl_local_tostring(lua_State *L) {
  tl_local_checkself(L);
  lua_pushfstring(L, THREADLOCAL_LOCAL_MT ": %p", lua_touserdata(L, 1));
  return 1;
}

enum { TL_KLOCAL = 1, TL_KSHARED = 2, TL_KPROXY = 4 };
#define TL_ANYKIND THREADLOCAL_LOCAL_MT ", " THREADLOCAL_SHARED_MT " or " THREADLOCAL_PROXY_MT

/* Which of the kinds in `kinds` the value at slot 1 is; raises otherwise. */
static int tl_checkkind(lua_State *L, int kinds, const char *tname) {
  int k = 0;
  if (tl_islocal(L, 1))
    k = TL_KLOCAL;
  else if (tl_testud(L, 1, tl_handle_tag, sizeof(tl_handle)) != NULL)
    k = TL_KSHARED;
  else if (tl_testud(L, 1, tl_proxy_tag, sizeof(tl_proxy)) != NULL)
    k = TL_KPROXY;
  if (k & kinds) return k;
  tl_typeerror(L, 1, tname);
}

/* ---------------------------------------------------------------------- */
/* Construction: threadlocal.new                                          */
/* ---------------------------------------------------------------------- */

/* Shared by every Local; each also gets its own __index and __newindex. */
static const luaL_Reg tl_local_meta[] = {
  {"__pairs", tl_local_pairs},
  {"__len", tl_local_len},
  {"__tostring", tl_local_tostring},
  {NULL, NULL}
};

/* Sets mt[name] to a new closure f, and keeps it in user value uv of the
** Local at ud.  Its upvalues are the state at st, its empty or sink table
** (no fields yet), the Local and its map.  Stack: [-0, +0], with mt on
** top. */
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
