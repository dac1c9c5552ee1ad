/*
** tl_context.c: context that travels: scopes (threadlocal.scope, with),
** hand-off (capture, run), the task boundary (release), and the Lua
** companion modules built into the module (threadlocal.context).  Part of
** threadlocal.c (the Lua binding).
*/
#ifndef TL_LUA_H
#error "compile threadlocal.c, which includes this file"
#endif

#define TL_SCOPE_MT "threadlocal.scope"
#define TL_GUARD_MT "threadlocal.snapshot"

/*
** A scope: what threadlocal.scope replaced on the thread that opened it.
** For a shared local, `saved` holds the replaced values, owner-less (so a
** scope may outlive its thread); for a Local they are in its user values.
*/
typedef struct tl_saved {
  tl_val key, old; /* old is TL_TNIL where the field was absent */
} tl_saved;

typedef struct tl_scope {
  uint64_t owner; /* id of the thread that opened it */
  int closed;
  size_t n;        /* fields replaced */
  tl_sloc *sl;     /* NULL for a Local */
  tl_saved *saved; /* shared locals */
} tl_scope;

enum { TL_SCOPE_LOCAL = 1, TL_SCOPE_OLD, TL_SCOPE_NUV = TL_SCOPE_OLD };

static void tl_saved_free(tl_scope *sc) {
  size_t i;
  if (sc->saved == NULL) return; /* a Local's scope */
  for (i = 0; i < sc->n; i++) {
    tl_val_free(&sc->saved[i].key);
    tl_val_free(&sc->saved[i].old);
  }
  tl_free(sc->saved);
  sc->saved = NULL;
  sc->n = 0;
}

/* Puts back saved[i] for i < n, last first; what they replace is freed.
** Returns the number still to restore: 0, or more when out of memory. */
static size_t tl_scope_restore(tl_thread *t, tl_tab *fields, tl_saved *saved, size_t n) {
  size_t need = 0, i;
  for (i = 0; i < n; i++) need += tl_val_ntables(&saved[i].old);
  if (tl_slab_reserve(t, need) != 0) return n;
  for (; n > 0; n--) {
    tl_saved *s = &saved[n - 1];
    tl_key k;
    tl_val cur;
    tl_key_of(&k, &s->key);
    tl_val_adopt(&s->old, t);
    if (tl_tab_put(fields, &k, &s->old, &cur) != 0) {
      tl_val_disown(&s->old);
      return n;
    }
    s->old.type = TL_TNIL;
    tl_val_free(&s->key);
    tl_val_free(&cur);
  }
  return 0;
}

/* Opens a scope on the shared local at slot 1 with the fields at slot 2. */
static void tl_scope_shared(lua_State *L, tl_scope *sc) {
  tl_sref *ref = (tl_sref *)lua_touserdata(L, 1);
  tl_tab *fields = tl_sref_fields(L, ref, 1), *conv;
  tl_thread *t = fields->owner;
  tl_val v;
  uint32_t i;
  size_t n = 0, left;
  tl_tovalue(L, 2, 0, NULL, 0, TL_UP_PROXYMT, &v); /* all checks first */
  conv = v.u.tab;
  sc->sl = ref->sl;
  if ((sc->saved = (tl_saved *)tl_calloc(conv->count + 1u, sizeof *sc->saved)) == NULL ||
      tl_slab_reserve(t, tl_tab_ntables(conv)) != 0) {
    tl_tab_free(conv);
    tl_memerror(L);
  }
  for (i = 0; i < conv->cap; i++) {
    tl_entry *e = &conv->e[i];
    tl_key k;
    if (e->state != TL_LIVE) continue;
    tl_entry_key(&k, e);
    tl_val_adopt(&e->val, t);
    if (tl_tab_put(fields, &k, &e->val, &sc->saved[n].old) != 0) {
      tl_val_disown(&e->val);
      break;
    }
    tl_val_disown(&sc->saved[n].old);
    tl_entry_takekey(e, &sc->saved[n++].key); /* moved out of conv */
    e->val.type = TL_TNIL;
  }
  sc->n = n;
  if (i < conv->cap) { /* out of memory: undo */
    left = tl_scope_restore(t, fields, sc->saved, n);
    sc->n = left;
    tl_tab_free(conv);
    tl_memerror(L);
  }
  tl_tab_free(conv);
}

/* Opens a scope on the Local at slot 1 with the fields at slot 2. */
static void tl_scope_local(lua_State *L, tl_scope *sc, int scope) {
  int fields, old;
  size_t n = 0;
  tl_local_push(L, 1);                /* ... F */
  fields = lua_gettop(L);
  lua_newtable(L);                    /* ... F old */
  old = fields + 1;
  lua_pushvalue(L, 1);
  tl_setuv(L, scope, TL_SCOPE_LOCAL);
  lua_pushvalue(L, old);
  tl_setuv(L, scope, TL_SCOPE_OLD);
  lua_pushnil(L);
  while (lua_next(L, 2)) {            /* ... F old k v */
    lua_pushvalue(L, -2);
    lua_rawseti(L, old, (int)(2 * n + 1));
    lua_pushvalue(L, -2);
    lua_rawget(L, fields);
    lua_rawseti(L, old, (int)(2 * n + 2));
    sc->n = ++n;
    lua_pushvalue(L, -2);
    lua_insert(L, -2);                /* ... F old k k v */
    lua_rawset(L, fields);            /* ... F old k */
  }
  lua_settop(L, fields - 1);
}

static void tl_scope_pushmeta(lua_State *L);

/* threadlocal.scope(loc, fields): pushes the scope. */
static int tl_scope_open(lua_State *L) {
  int kind = tl_checkkind(L, TL_KLOCAL | TL_KSHARED, "threadlocal.local or threadlocal.shared");
  tl_scope *sc;
  luaL_checktype(L, 2, LUA_TTABLE);
  sc = (tl_scope *)tl_newud(L, sizeof *sc, TL_SCOPE_NUV);
  memset(sc, 0, sizeof *sc);
  sc->closed = 1; /* until it holds something */
  tl_scope_pushmeta(L);
  lua_setmetatable(L, -2);
  sc->owner = tl_self(L)->id;
  sc->closed = 0;
  if (kind == TL_KSHARED)
    tl_scope_shared(L, sc);
  else
    tl_scope_local(L, sc, lua_gettop(L));
  return 1;
}

static tl_scope *tl_checkscope(lua_State *L) {
  return (tl_scope *)luaL_checkudata(L, 1, TL_SCOPE_MT);
}

/* scope:close(): restores what the scope replaced; a second call does nothing. */
static int tl_scope_close(lua_State *L) {
  tl_scope *sc = tl_checkscope(L);
  int top = lua_gettop(L);
  if (sc->closed) return 0;
  if (sc->owner != tl_myid)
    tl_error(L, "threadlocal: scope closed on another thread than the one that opened it");
  if (sc->sl != NULL) {
    tl_thread *t = tl_self(L);
    int err;
    tl_tab *fields = tl_shfields_peek(t, sc->sl);
    if (fields == NULL && (fields = tl_shfields_start(t, sc->sl, 1, &err)) == NULL)
      tl_memerror(L);
    if ((sc->n = tl_scope_restore(t, fields, sc->saved, sc->n)) != 0) tl_memerror(L);
    tl_saved_free(sc);
  } else {
    size_t i;
    int fields;
    tl_getuv(L, 1, TL_SCOPE_LOCAL);
    tl_local_push(L, lua_gettop(L));      /* sc lo F */
    fields = lua_gettop(L);
    tl_getuv(L, 1, TL_SCOPE_OLD);         /* sc lo F old */
    for (i = sc->n; i > 0; i--) {
      lua_rawgeti(L, fields + 1, (int)(2 * i - 1));
      lua_rawgeti(L, fields + 1, (int)(2 * i));
      lua_rawset(L, fields);
    }
    lua_pushnil(L);
    tl_setuv(L, 1, TL_SCOPE_OLD);
  }
  sc->closed = 1;
  lua_settop(L, top);
  return 0;
}

/* An unclosed scope that is collected drops what it held, on whatever
** thread the collector runs (pointers' destructors run there). */
static int tl_scope_gc(lua_State *L) {
  tl_scope *sc = (tl_scope *)lua_touserdata(L, 1);
  tl_saved_free(sc);
  sc->closed = 1;
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

/* Pushes the scope metatable, making it on first use (its methods get the
** module's upvalues: this runs in a closure of the module).  [-0, +1] */
static void tl_scope_pushmeta(lua_State *L) {
  if (luaL_newmetatable(L, TL_SCOPE_MT)) {
    tl_pushupvalues(L);
    tl_setfuncs(L, tl_scope_meta, TL_NUP);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, TL_SCOPE_MT);
    lua_setfield(L, -2, "__metatable");
  }
}

/* threadlocal.with(loc, fields, fn, ...): fn(...) inside a scope. */
static int tl_with(lua_State *L) {
  int status;
  luaL_checktype(L, 3, LUA_TFUNCTION);
  tl_scope_open(L);         /* loc fields fn args... scope */
  lua_replace(L, 1);        /* scope fields fn args... */
  lua_remove(L, 2);         /* scope fn args... */
  status = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0);
  tl_scope_close(L);        /* leaves the stack as it was */
  if (status != 0) tl_raise(L);
  return lua_gettop(L) - 1;
}

/* threadlocal.capture([sh, ...]): {[name] = plain copy of the fields}. */
static int tl_capture(lua_State *L) {
  int n = lua_gettop(L), i;
  tl_thread *t = tl_self(L);
  for (i = 1; i <= n; i++) (void)tl_checkud(L, i, tl_sref_tag, sizeof(tl_sref));
  lua_newtable(L);
  if (n > 0) {
    for (i = 1; i <= n; i++) {
      const tl_sloc *sl = ((tl_sref *)lua_touserdata(L, i))->sl;
      const tl_tab *f = tl_shfields_peek(t, sl);
      lua_pushlstring(L, sl->name, sl->len);
      if (f != NULL) tl_pushcopy(L, f); else lua_newtable(L);
      lua_rawset(L, n + 1);
    }
  } else {
    tl_sloc **all, **copy;
    size_t k, m;
    if (tl_sloc_withfields(t, &all, &m) != 0) tl_memerror(L);
    copy = (tl_sloc **)lua_newuserdata(L, (m + 1) * sizeof *copy); /* may raise: */
    memcpy(copy, all, m * sizeof *copy);                          /* ...all leaks */
    tl_free(all);
    for (k = 0; k < m; k++) {
      lua_pushlstring(L, copy[k]->name, copy[k]->len);
      tl_pushcopy(L, tl_shfields_peek(t, copy[k]));
      lua_rawset(L, n + 1);
    }
    lua_pop(L, 1);
  }
  return 1;
}

/*
** threadlocal.run keeps its two snapshots in a guard userdata, so that an
** error anywhere frees them: the one being built, and the thread's own
** fields while fn runs.
*/
typedef struct tl_guard {
  tl_snap *snap, *own;
} tl_guard;

static int tl_guard_gc(lua_State *L) {
  tl_guard *g = (tl_guard *)lua_touserdata(L, 1);
  tl_snap_free(g->snap);
  tl_snap_free(g->own);
  g->snap = g->own = NULL;
  return 0;
}

/* threadlocal.run(snap, fn, ...): fn(...) under snap's shared fields. */
static int tl_run(lua_State *L) {
  tl_thread *t = tl_self(L);
  uint64_t id = t->id;
  tl_guard *g;
  tl_snap *job;
  size_t n = 0, i = 0;
  int status;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  g = (tl_guard *)tl_newud(L, sizeof *g, 0);
  g->snap = g->own = NULL;
  if (luaL_newmetatable(L, TL_GUARD_MT)) {
    lua_pushcfunction(L, tl_guard_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_insert(L, 1);                 /* guard snap fn args... */
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    n++;
  }
  if ((g->snap = tl_snap_new(n)) == NULL) tl_memerror(L);
  lua_pushnil(L);
  while (lua_next(L, 2)) {          /* ... name fields */
    size_t len;
    const char *name;
    tl_val v;
    if (lua_type(L, -2) != LUA_TSTRING || !lua_istable(L, -1))
      tl_error(L, "threadlocal: a snapshot maps shared local names to tables of fields");
    name = lua_tolstring(L, -2, &len);
    if ((g->snap->e[i].sl = tl_sloc_open(name, len)) == NULL) tl_memerror(L);
    tl_tovalue(L, -1, lua_gettop(L) - 1, NULL, 0, TL_UP_PROXYMT, &v);
    g->snap->e[i++].fields = v.u.tab;
    lua_pop(L, 1);
  }
  if (tl_snap_install(t, g->snap, &g->own) != 0) tl_memerror(L);
  g->snap = NULL;
  lua_remove(L, 2);                 /* guard fn args... */
  status = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0);
  if (t->id == id) { /* put the thread's own fields back */
    if (tl_snap_install(t, g->own, &job) != 0) tl_memerror(L);
    g->own = NULL;
    tl_snap_free(job);
  } else { /* fn released the thread: its own fields go with its old id */
    tl_snap_free(g->own);
    g->own = NULL;
  }
  if (status != 0) tl_raise(L);
  return lua_gettop(L) - 1;
}

/* threadlocal.release(): drop the calling thread's data, as at its exit. */
static int tl_release(lua_State *L) {
  (void)L;
  threadlocal_release();
  return 0;
}

/*
** The pure-Lua companions under lua/ are built into the module, so that a
** host that links only the C sources gets them too, from one source of
** truth: the assembler's .incbin reads the file at build time from
** TL_LUA_DIR: "lua", relative to the directory the compiler runs in (the
** repository's root, as make and LuaRocks run it), or a path a build
** system gives (CMake does).  luaopen registers
** them in package.preload.  -DTL_NO_EMBED (or a toolchain without GNU
** assembly) leaves them to package.path, where the rockspec and make
** install put them too.
*/
#if !defined(TL_NO_EMBED) && defined(__GNUC__) && defined(__ELF__)
#define TL_EMBED 1
#ifndef TL_LUA_DIR
#define TL_LUA_DIR "lua" /* relative to where the compiler runs */
#endif
__asm__(".pushsection .rodata\n"
        "tl_lua_context:\n"
        ".incbin \"" TL_LUA_DIR "/threadlocal/context.lua\"\n"
        "tl_lua_context_end:\n"
        ".popsection\n");
extern const char tl_lua_context[] __attribute__((visibility("hidden")));
extern const char tl_lua_context_end[] __attribute__((visibility("hidden")));

/*
** var:get for the built-in threadlocal.context, in C: one call finds the
** current context (the OS thread's for the main coroutine, else the
** coroutine's own) and reads the var in it.  Anything else (no context
** recorded yet, the var not set, a bad self) goes to the Lua version.
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
  size_t len = (size_t)(tl_lua_context_end - tl_lua_context);
  lua_settop(L, 2);
  if (luaL_loadbuffer(L, tl_lua_context, len, "@lua/threadlocal/context.lua") != 0) tl_raise(L);
  lua_insert(L, 1);                         /* chunk name extra */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, tl_ctx_getter);
  lua_setfield(L, -2, "context_getter");    /* chunk name extra internals */
  lua_call(L, 3, 1);
  return 1;
}
#endif

/* Registers the built-in companions in package.preload, where a package
** library is open and the host put nothing there under their names. */
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
    lua_getfield(L, -1, "threadlocal.context");
    if (lua_isnil(L, -1)) {
      lua_pushcfunction(L, tl_load_context);
      lua_setfield(L, -3, "threadlocal.context");
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
#else
  (void)L;
#endif
}
