/*
** tl_context.c: context that travels: scopes (threadlocal.scope, with),
** hand-off (capture, run) and the task boundary (release).  Part of
** threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

#define TL_SCOPE_MT "threadlocal.scope"
#define TL_GUARD_MT "threadlocal.guard"

/*
** A scope: what threadlocal.scope replaced on the thread that opened it.
** For a shared local, `saved` holds the replaced values.  They are
** owner-less, so a scope may outlive its thread.  For a Local they are in
** its user values.
*/
typedef struct tl_scope {
  const char *tag; /* tl_scope_tag */
  uint64_t owner_id; /* id of the thread that opened it */
  uint64_t run;   /* the run whose snapshot held sl when it was opened, or 0 */
  int closed;
  int with;        /* with's own: on close, ends what fn left (tl_with) */
  size_t n;        /* fields replaced */
  threadlocal_shared *sl;     /* NULL for a Local */
  tl_saved *saved; /* shared locals */
  /* The open scopes of one local in this state form a list, newest first.
  ** Its head is in the local's userdata, which outlives them (tl_scope_link).
  ** Closing checks that no newer one of the same thread and run is open. */
  struct tl_scope **head, *older, *newer;
} tl_scope;

enum { TL_SCOPE_LOCAL = 1, TL_SCOPE_OLD, TL_SCOPE_NUV = TL_SCOPE_OLD };

static const char tl_scope_tag[] = TL_SCOPE_MT;

/* Puts the just opened sc first in the list at head.  head is valid while
** sc is.  A Local's userdata is a user value of its scopes.  A shared
** local's stays in its metatable for the state's life. */
static void tl_scope_link(tl_scope *sc, tl_scope **head) {
  sc->head = head;
  sc->older = *head;
  sc->newer = NULL;
  if (*head != NULL) (*head)->newer = sc;
  *head = sc;
}

static void tl_scope_unlink(tl_scope *sc) {
  if (sc->head == NULL) return;
  if (sc->newer != NULL)
    sc->newer->older = sc->older;
  else
    *sc->head = sc->older;
  if (sc->older != NULL) sc->older->newer = sc->newer;
  sc->head = NULL;
  sc->older = sc->newer = NULL;
}

/* A newer open scope of the same local, thread and run as sc, or NULL.
** Scopes of other threads or runs are skipped: they are not in sc's way. */
static tl_scope *tl_scope_newer(const tl_scope *sc) {
  tl_scope *s;
  for (s = sc->newer; s != NULL; s = s->newer)
    if (s->owner_id == sc->owner_id && s->run == sc->run) return s;
  return NULL;
}

/* Raises the out-of-order error for sc, naming its local: the shared
** local's name, or the Local at slot loc. */
static TL_NORETURN void tl_scope_order_error(lua_State *L, const tl_scope *sc, int loc) {
  tl_pushmsg(L, "threadlocal: scope closed out of order: a newer scope of ");
  if (sc->sl != NULL) {
    lua_pushliteral(L, THREADLOCAL_SHARED_MT " '");
    lua_pushlstring(L, sc->sl->name, sc->sl->len);
    lua_pushliteral(L, "'");
  } else {
    lua_pushfstring(L, THREADLOCAL_LOCAL_MT ": %p", lua_touserdata(L, loc));
    lua_pushliteral(L, "");
    lua_pushliteral(L, "");
  }
  lua_pushliteral(L, " is still open on this thread (close it first)");
  lua_concat(L, 5);
  tl_raise(L);
}

static void tl_scope_free(tl_scope *sc) {
  tl_saved_free(sc->saved, sc->n);
  sc->saved = NULL;
  sc->n = 0;
}

/* Opens a scope on the shared local at slot 1 with the fields at slot 2. */
static void tl_scope_shared(lua_State *L, tl_scope *sc) {
  tl_handle *ref = (tl_handle *)lua_touserdata(L, 1);
  tl_tab *fields = tl_handle_fields(L, ref, 1);
  tl_val v;
  int rc;
  tl_tovalue(L, 2, 0, NULL, 0, &v); /* all checks first */
  sc->sl = ref->sl;
  sc->run = tl_shmap_run(fields->owner, sc->sl);
  rc = tl_saved_apply(fields, v.u.tab, &sc->saved, &sc->n);
  tl_tab_free(v.u.tab);
  if (rc != 0) tl_memerror(L);
}

/* Sets F[k] = v in the table at 1 for every k, v of the table at 2.  It is
** the part of opening a Local's scope that may run out of memory. */
static int tl_scope_set(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 1);
  }
  return 0;
}

/* F[k] = old for the n pairs saved in the table at index old.  It
** allocates nothing.  A field absent before and now is left alone: before
** Lua 5.4, setting nil on an absent key may allocate. */
static void tl_scope_putback(lua_State *L, int fields, int old, size_t n) {
  size_t i;
  for (i = n; i > 0; i--) {
    lua_rawgeti(L, old, (int)(2 * i - 1));        /* k */
    lua_rawgeti(L, old, (int)(2 * i));            /* k was */
    lua_pushvalue(L, -2);
    lua_rawget(L, fields);                        /* k was now */
    if (lua_isnil(L, -1) && lua_isnil(L, -2))
      lua_pop(L, 3);
    else {
      lua_pop(L, 1);
      lua_rawset(L, fields);
    }
  }
}

/* Opens a scope on the Local at slot 1 with the fields at slot 2.  It
** saves what it replaces, then sets.  If setting runs out of memory, it
** puts every field back and raises. */
static void tl_scope_local(lua_State *L, tl_scope *sc, int scope) {
  int fields, old;
  size_t n = 0;
  tl_local_push_findstate(L, 1);               /* ... F */
  fields = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    n++;
  }
  luaL_argcheck(L, n <= INT_MAX / 2, 2, "too many fields");
  lua_createtable(L, (int)(2 * n), 0); /* ... F old: sized, so filling it cannot fail */
  old = fields + 1;
  lua_pushvalue(L, 1);
  tl_setuv(L, scope, TL_SCOPE_LOCAL);
  lua_pushvalue(L, old);
  tl_setuv(L, scope, TL_SCOPE_OLD);
  n = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {            /* ... F old k v */
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, old, (int)(2 * n + 1));
    lua_pushvalue(L, -1);
    lua_rawget(L, fields);
    lua_rawseti(L, old, (int)(2 * n + 2));
    n++;
  }
  lua_pushcfunction(L, tl_scope_set);
  lua_pushvalue(L, fields);
  lua_pushvalue(L, 2);
  if (lua_pcall(L, 2, 0, 0) != 0) {   /* ... F old err */
    tl_scope_putback(L, fields, old, n);
    sc->closed = 1;
    tl_raise(L);
  }
  sc->n = n;
  lua_settop(L, fields - 1);
}

/* Closes sc without putting anything back. */
static void tl_scope_forget(tl_scope *sc) {
  tl_scope_free(sc);
  sc->closed = 1;
  tl_scope_unlink(sc);
}

static tl_scope *tl_checkscope(lua_State *L) {
  return (tl_scope *)tl_checkud(L, 1, tl_scope_tag, sizeof(tl_scope));
}

/* scope:close(): restores what the scope replaced; a second call does nothing. */
static int tl_scope_close(lua_State *L) {
  tl_scope *sc = tl_checkscope(L);
  int top = lua_gettop(L);
  if (sc->closed) return 0;
  if (sc->with) {
    tl_scope *s;
    if (sc->owner_id != tl_myid) { /* fn released the thread: nothing to put back */
      tl_scope_forget(sc);
      return 0;
    }
    /* Scopes that fn left open end with it: an error skips their close.
    ** They put nothing back, since this one restores what came before. */
    while ((s = tl_scope_newer(sc)) != NULL) tl_scope_forget(s);
  }
  if (sc->owner_id != tl_myid)
    tl_error(L, "threadlocal: scope closed on another thread than the one that opened it");
  if (sc->sl != NULL) {
    tl_thread *t = tl_self(L);
    tl_tab *fields;
    int err;
    /* run swaps shared fields.  Put back into the other ones, the
    ** replaced values would leak from one context into the other. */
    if (tl_shmap_run(t, sc->sl) != sc->run)
      tl_error(L, "threadlocal: scope closed outside the threadlocal.run context it was opened in");
    if (tl_scope_newer(sc) != NULL) tl_scope_order_error(L, sc, 0);
    fields = tl_shfields_peek(t, sc->sl);
    if (fields == NULL && (fields = tl_shfields_start(t, sc->sl, 1, &err)) == NULL)
      tl_memerror(L);
    if ((sc->n = tl_saved_restore(t, fields, sc->saved, sc->n)) != 0) tl_memerror(L);
    tl_scope_free(sc);
  } else {
    int fields;
    tl_getuv(L, 1, TL_SCOPE_OLD);         /* sc old: alive whatever init does */
    tl_getuv(L, 1, TL_SCOPE_LOCAL);       /* sc old lo */
    tl_local_push_findstate(L, lua_gettop(L));     /* sc old lo F: init may close sc */
    if (sc->closed) {
      lua_settop(L, top);
      return 0;
    }
    if (tl_scope_newer(sc) != NULL) tl_scope_order_error(L, sc, top + 2);
    fields = lua_gettop(L);
    tl_scope_putback(L, fields, top + 1, sc->n);
    lua_pushnil(L);
    tl_setuv(L, 1, TL_SCOPE_OLD);
  }
  sc->closed = 1;
  tl_scope_unlink(sc);
  lua_settop(L, top);
  return 0;
}

/* An unclosed scope that is collected drops what it held, on whatever
** thread the collector runs (pointers' destructors run there). */
static int tl_scope_gc(lua_State *L) {
  tl_scope *sc = (tl_scope *)tl_testud(L, 1, tl_scope_tag, sizeof *sc);
  if (sc != NULL) tl_scope_forget(sc);
  return 0;
}

static int tl_scope_tostring(lua_State *L) {
  lua_pushfstring(L, TL_SCOPE_MT ": %p", (void *)tl_checkscope(L));
  return 1;
}

static const luaL_Reg tl_scope_meta[] = {
  {"close", tl_scope_close},
  {"__close", tl_scope_close},
  {"__gc", tl_scope_gc},
  {"__tostring", tl_scope_tostring},
  {NULL, NULL}
};

/* Pushes the scope metatable, making it on first use.  [-0, +1] */
static void tl_scope_pushmeta(lua_State *L) {
  if (luaL_newmetatable(L, TL_SCOPE_MT)) {
    tl_setfuncs(L, tl_scope_meta, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, TL_SCOPE_MT);
    lua_setfield(L, -2, "__metatable");
  }
}

/* threadlocal.scope(loc, fields): pushes the scope. */
static int tl_scope_open(lua_State *L) {
  int kind = tl_checkkind(L, TL_KLOCAL | TL_KSHARED, "threadlocal.local or threadlocal.shared");
  tl_scope *sc;
  luaL_checktype(L, 2, LUA_TTABLE);
  /* A shared local's scope keeps no user values: so small, it stays in
  ** the allocator's fast bins (docs/benchmarks.md). */
  sc = (tl_scope *)tl_newud(L, sizeof *sc, kind == TL_KSHARED ? 0 : TL_SCOPE_NUV);
  memset(sc, 0, sizeof *sc);
  sc->tag = tl_scope_tag;
  sc->closed = 1; /* until it holds something: opening may raise */
  tl_scope_pushmeta(L);
  lua_setmetatable(L, -2);
  sc->owner_id = tl_self(L)->id;
  if (kind == TL_KSHARED)
    tl_scope_shared(L, sc);
  else
    tl_scope_local(L, sc, lua_gettop(L));
  sc->closed = 0;
  tl_scope_link(sc, kind == TL_KSHARED ? &((tl_handle *)lua_touserdata(L, 1))->scopes
                                       : &((tl_local *)lua_touserdata(L, 1))->scopes);
  return 1;
}

/* threadlocal.with(loc, fields, fn, ...): fn(...) inside a scope. */
static int tl_with(lua_State *L) {
  int status;
  tl_checkkind(L, TL_KLOCAL | TL_KSHARED, "threadlocal.local or threadlocal.shared");
  luaL_checktype(L, 2, LUA_TTABLE); /* in order: the first bad one is blamed */
  luaL_checktype(L, 3, LUA_TFUNCTION);
  tl_scope_open(L);         /* loc fields fn args... scope */
  lua_replace(L, 1);        /* scope fields fn args... */
  lua_remove(L, 2);         /* scope fn args... */
  ((tl_scope *)lua_touserdata(L, 1))->with = 1;
  status = tl_guardcall(L, 1, lua_gettop(L) - 2);
  if (status != TL_GUARD_CLOSES) {
    tl_scope_close(L);      /* leaves the stack as it was */
    if (status != 0) tl_raise(L);
  }
  return lua_gettop(L) - 1;
}

/*
** What threadlocal.run holds: the snapshot it moves in, and the thread's
** own fields set aside while fn runs.  Where fn runs under lua_pcall, it
** lives on tl_run's C stack.  On 5.4, outside coroutines, it is a guard
** userdata that fn's frame closes.  Nothing here needs a finalizer:
** helpers that may raise run under lua_pcall, and their caller frees.
** Finalizers are costly, on LuaJIT most of all.
**
** Copies (capture, fields) are made from a clone or a snapshot, with no
** Lua allocation in between.  So a finalizer run by the copy's
** allocations cannot change or free what is being copied.
*/
typedef struct tl_guard {
  const char *tag; /* tl_guard_tag */
  int busy;        /* fn runs: tl_run_end has work to do */
  tl_snap *snap;
  tl_shslot *aside; /* the thread's own fields while fn runs (still its own) */
  size_t n;         /* entries of aside */
  uint64_t id;      /* the id of the thread that runs fn */
  uint64_t run;     /* the run's mark on the slots it swapped */
} tl_guard;

static const char tl_guard_tag[] = TL_GUARD_MT;

/*
** The end of threadlocal.run.  It puts the thread's own fields back,
** unless fn released the thread, and frees the snapshot.  It runs once fn
** returns or raises.  On 5.4 it is the guard's __close, which does nothing
** after the first time.
*/
static void tl_run_end(tl_guard *g) {
  tl_thread *t = tl_me;
  size_t i;
  if (!g->busy) return;
  if (t != NULL && t->id == g->id)
    for (i = 0; i < g->n; i++) { /* a newer run still in: a __close called by hand */
      const tl_shslot *slot = tl_shmap_find(t, g->aside[i].sl);
      if (slot == NULL || slot->run != g->run) return;
    }
  g->busy = 0;
  if (t != NULL && t->id == g->id)
    tl_snap_swapback(t, g->aside, g->n);
  else /* fn released the thread: its own fields went with its old id */
    for (i = 0; i < g->n; i++)
      if (g->aside[i].fields != NULL) tl_tab_free(g->aside[i].fields);
  tl_free(g->aside);
  tl_snap_free(g->snap); /* its tables were moved in */
  g->aside = NULL;
  g->snap = NULL;
}

static int tl_guard_close(lua_State *L) {
  tl_guard *g = (tl_guard *)tl_testud(L, 1, tl_guard_tag, sizeof *g);
  if (g != NULL) tl_run_end(g);
  return 0;
}

static void tl_guard_init(tl_guard *g) {
  g->tag = tl_guard_tag;
  g->busy = 0;
  g->snap = NULL;
  g->aside = NULL;
  g->n = 0;
  g->id = 0;
  g->run = 0;
}

/* Pushes an empty guard, for lua_toclose.  [-0, +1] */
static tl_guard *tl_newguard(lua_State *L) {
  tl_guard *g = (tl_guard *)tl_newud(L, sizeof *g, 0);
  tl_guard_init(g);
  if (luaL_newmetatable(L, TL_GUARD_MT)) {
    lua_pushcfunction(L, tl_guard_close);
    lua_setfield(L, -2, "__close");
  }
  lua_setmetatable(L, -2);
  return g;
}

/* A helper run under lua_pcall raises without a position: its caller is
** C.  Our messages get the position of the Lua code that called ours. */
static void tl_blame(lua_State *L) {
  if (lua_type(L, -1) == LUA_TSTRING && strncmp(lua_tostring(L, -1), "threadlocal:", 12) == 0) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
}

/*
** The helpers below run under lua_pcall on C data of their caller.  Lua
** can reach a helper: a call hook sees it.  So a helper takes its data
** from this slot, not from an argument.  The caller fills the slot just
** before the call; the helper takes it once.
*/
static _Thread_local struct tl_pcallslot {
  lua_CFunction f; /* the helper the data is for */
  void *p;
} tl_pcallslot TL_TLS_MODEL;

/* lua_pcall of the helper f, below its nargs arguments, on p. */
static int tl_pcallp(lua_State *L, int nargs, int nres, lua_CFunction f, void *p) {
  struct tl_pcallslot saved = tl_pcallslot; /* a finalizer may nest one */
  int rc;
  tl_pcallslot.f = f;
  tl_pcallslot.p = p;
  rc = lua_pcall(L, nargs, nres, 0);
  tl_pcallslot = saved;
  return rc;
}

static void *tl_pcalltake(lua_State *L, lua_CFunction f) {
  void *p = tl_pcallslot.p;
  if (p == NULL || tl_pcallslot.f != f)
    tl_error(L, "threadlocal: an internal function was called from outside the module");
  tl_pcallslot.p = NULL;
  return p;
}

/* Under lua_pcall: pushes a plain copy of its tl_tab. */
static int tl_pushcopy_pcall(lua_State *L) {
  tl_pushcopy(L, (const tl_tab *)tl_pcalltake(L, tl_pushcopy_pcall));
  return 1;
}

/* Pushes a plain copy of clone and frees it, also on an error.  The
** caller pushed tl_pushcopy_pcall before making the clone: pushing a
** function may allocate.  [-1, +1] */
static void tl_pushcopy_clone(lua_State *L, tl_tab *clone) {
  int rc = tl_pcallp(L, 0, 1, tl_pushcopy_pcall, clone);
  tl_tab_free(clone);
  if (rc != 0) tl_raise(L);
}

/* Under lua_pcall: {[name] = plain copy of the fields} of its snapshot. */
static int tl_capture_pcall(lua_State *L) {
  const tl_snap *s = (const tl_snap *)tl_pcalltake(L, tl_capture_pcall);
  size_t k;
  lua_createtable(L, 0, (int)s->n);
  for (k = 0; k < s->n; k++) {
    const threadlocal_shared *sl = s->e[k].sl;
    lua_pushlstring(L, sl->name, sl->len);
    if (s->e[k].fields != NULL)
      tl_pushcopy(L, s->e[k].fields);
    else
      lua_newtable(L);
    lua_rawset(L, -3);
  }
  return 1;
}

/* threadlocal.capture([sh, ...]): the copy is made from a snapshot. */
static int tl_capture(lua_State *L) {
  int n = lua_gettop(L), i, rc;
  threadlocal_shared **locals = NULL;
  tl_snap *snap;
  for (i = 1; i <= n; i++) (void)tl_checkud(L, i, tl_handle_tag, sizeof(tl_handle));
  lua_pushcfunction(L, tl_capture_pcall); /* may allocate: before the snapshot */
  if (n > 0 && (locals = (threadlocal_shared **)tl_calloc((size_t)n, sizeof *locals)) == NULL)
    tl_memerror(L);
  for (i = 0; i < n; i++) locals[i] = ((tl_handle *)lua_touserdata(L, i + 1))->sl;
  rc = threadlocal_snapshot_capture(locals, (size_t)n, &snap); /* no Lua allocation */
  tl_free(locals);
  if (rc != THREADLOCAL_OK) tl_memerror(L);
  rc = tl_pcallp(L, 0, 1, tl_capture_pcall, snap);
  tl_snap_free(snap);
  if (rc != 0) tl_raise(L);
  return 1;
}

/* Under lua_pcall: builds its guard's snapshot from the table at slot 1.
** What it made is the guard's, also on an error. */
static int tl_run_build(lua_State *L) {
  tl_guard *g;
  size_t n = 0, i = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  g = (tl_guard *)tl_pcalltake(L, tl_run_build);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    n++;
  }
  if ((g->snap = tl_snap_new(n)) == NULL) tl_memerror(L);
  lua_pushnil(L);
  while (lua_next(L, 1)) {          /* ... name fields */
    size_t len;
    const char *name;
    tl_val v;
    if (lua_type(L, -2) != LUA_TSTRING || !lua_istable(L, -1))
      tl_error(L, "threadlocal: a snapshot maps shared local names to tables of fields");
    name = lua_tolstring(L, -2, &len);
    if ((g->snap->e[i].sl = tl_reg_open(name, len)) == NULL) tl_memerror(L);
    tl_tovalue(L, -1, lua_gettop(L) - 1, NULL, 0, &v);
    g->snap->e[i++].fields = v.u.tab;
    lua_pop(L, 1);
  }
  return 0;
}

/*
** threadlocal.run(snap, fn, ...): fn(...) under snap's shared fields.
** The thread's own fields are only set aside while fn runs, still in its
** slab.  So putting them back cannot fail.  All that may fail happens
** before anything changes.
*/
static int tl_run(lua_State *L) {
  tl_thread *t = tl_self(L);
  tl_guard own, *g = &own;
  int status;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (tl_canclose(L))
    g = tl_newguard(L);
  else {
    tl_guard_init(g);
    lua_pushnil(L);
  }
  lua_insert(L, 1);                 /* guard snap fn args... */
  lua_pushcfunction(L, tl_run_build);
  lua_pushvalue(L, 2);
  status = tl_pcallp(L, 1, 0, tl_run_build, g);
  if (status != 0 ||
      (g->aside = (tl_shslot *)tl_calloc(g->snap->n + 1, sizeof *g->aside)) == NULL ||
      tl_snap_reserve(t, g->snap) != 0) {
    tl_snap_free(g->snap);
    tl_free(g->aside);
    g->snap = NULL;
    g->aside = NULL;
    if (status == 0) tl_memerror(L);
    tl_blame(L);
    tl_raise(L);
  }
  g->run = ++t->clock;
  tl_snap_swapin(t, g->snap, g->run, g->aside); /* nothing below fails until fn */
  lua_remove(L, 2);                 /* guard fn args... */
  g->n = g->snap->n;
  g->id = t->id;
  g->busy = 1; /* until fn ends */
  status = tl_guardcall(L, 1, lua_gettop(L) - 2);
  if (status != TL_GUARD_CLOSES) {
    tl_run_end(g);
    if (status != 0) tl_raise(L);
  }
  return lua_gettop(L) - 1;
}

/* threadlocal.release(): drop the calling thread's data, as at its exit. */
static int tl_release(lua_State *L) {
  if (threadlocal_release() != THREADLOCAL_OK)
    tl_error(L, "threadlocal: release() called while an init runs on this thread");
  return 0;
}
