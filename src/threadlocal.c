/*
** threadlocal: data private to the calling OS thread, for Lua states and
** the C hosts that embed them.
**
** A Local (threadlocal.new) is a userdata whose fields resolve through a
** table that belongs to the calling OS thread.  The tables live in the Lua
** state that created the Local, keyed by thread id; a thread-exit hook can
** never touch a lua_State (another thread may be running it), so an exiting
** thread only records its id with each state it stored values in, and the
** state drops those values itself, from its own accesses and from its GC.
*/
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE, RTLD_NOLOAD */

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "threadlocal.h"

/* ---------------------------------------------------------------------- */
/* Lua version compatibility                                              */
/* ---------------------------------------------------------------------- */

#if LUA_VERSION_NUM == 501

#define tl_rawlen(L, i) lua_objlen(L, i)
#define tl_absindex(L, i) \
  ((i) < 0 && (i) > LUA_REGISTRYINDEX ? lua_gettop(L) + (i) + 1 : (i))

static void tl_rawgetp(lua_State *L, int i, const void *p) {
  i = tl_absindex(L, i);
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, i);
}

static void tl_rawsetp(lua_State *L, int i, const void *p) { /* pops */
  i = tl_absindex(L, i);
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, i);
}

static void tl_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}

#else

#define tl_rawlen(L, i) lua_rawlen(L, i)
#define tl_absindex(L, i) lua_absindex(L, i)
#define tl_rawgetp(L, i, p) ((void)lua_rawgetp(L, i, p))
#define tl_rawsetp(L, i, p) lua_rawsetp(L, i, p)
#define tl_setfuncs(L, l, nup) luaL_setfuncs(L, l, nup)

#endif

/*
** A userdata here carries up to three Lua values.  Lua 5.4 has numbered
** user values; older versions get one table that holds them.
*/
#if LUA_VERSION_NUM >= 504

#define tl_newud(L, sz, nuv) lua_newuserdatauv(L, sz, nuv)
#define tl_getuv(L, i, n) ((void)lua_getiuservalue(L, i, n))
#define tl_setuv(L, i, n) ((void)lua_setiuservalue(L, i, n))

#else

#if LUA_VERSION_NUM == 501
#define tl_getuvt(L, i) lua_getfenv(L, i)
#define tl_setuvt(L, i) lua_setfenv(L, i)
#else
#define tl_getuvt(L, i) lua_getuservalue(L, i)
#define tl_setuvt(L, i) lua_setuservalue(L, i)
#endif

static void *tl_newud(lua_State *L, size_t sz, int nuv) {
  void *p = lua_newuserdata(L, sz);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0);
    tl_setuvt(L, -2);
  }
  return p;
}

static void tl_getuv(lua_State *L, int i, int n) {
  tl_getuvt(L, i);
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
}

static void tl_setuv(lua_State *L, int i, int n) { /* pops the value */
  i = tl_absindex(L, i);
  tl_getuvt(L, i);
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
}

#endif

#if defined(__GNUC__)
#define tl_unlikely(x) __builtin_expect(!!(x), 0)
#else
#define tl_unlikely(x) (x)
#endif

/* ---------------------------------------------------------------------- */
/* Data structures                                                        */
/* ---------------------------------------------------------------------- */

/*
** A home is the C side of one Lua state that holds Locals.  Every thread
** that stored values in the state holds a reference to it; when the thread
** exits it appends its id to `dead`, and the state purges those ids later.
** `dead` always has room for every registered thread (nslots <= cap), so an
** exiting thread never allocates.
*/
typedef struct tl_home {
  pthread_mutex_t lock;
  atomic_int refs;     /* the state's reference + one per registered thread */
  atomic_int closed;   /* the state is gone: nobody purges any more */
  atomic_size_t ndead; /* ids in dead[]; read without the lock as a hint */
  size_t nslots;       /* registered live threads + ids in dead[] */
  size_t cap;
  uint64_t *dead;
} tl_home;

/* What the module knows of one OS thread; only that thread touches it. */
typedef struct tl_thread {
  uint64_t id;     /* never reused in this process */
  tl_home **homes; /* states this thread stored Local values in */
  size_t nhomes, caphomes;
} tl_thread;

/* The per-state anchor: upvalue 1 of every function of the module. */
typedef struct tl_state {
  tl_home *home; /* NULL once the state is closing */
} tl_state;

enum { TL_ST_BYTHREAD = 1, /* id -> weak set of Locals holding fields for id */
       TL_ST_SENTINEL_MT,  /* metatable of the per-cycle GC sentinel */
       TL_ST_NUV };

/* A Local.  Its user values: the cached thread's fields table, the map
** thread id -> fields table, and the init record {f, args..., n = #args+1}. */
typedef struct tl_local {
  uint64_t cid; /* id of the thread whose fields TL_UV_CACHE holds */
} tl_local;

enum { TL_UV_CACHE = 1, TL_UV_MAP, TL_UV_INIT, TL_LOCAL_NUV = TL_UV_INIT };

#define TL_NOCACHE UINT64_MAX /* matches no thread, not even "no record yet" */

#define TL_STATE_MT "threadlocal.state"

static pthread_once_t tl_once = PTHREAD_ONCE_INIT;
static int tl_once_err;
static pthread_key_t tl_key; /* its destructor is tl_thread_exit */
static atomic_uint_fast64_t tl_nextid = 1;
static const char tl_statekey = 0; /* registry key of the tl_state */

static _Thread_local tl_thread *tl_me;
static _Thread_local uint64_t tl_myid; /* tl_me->id, or 0: read on every access */

/* ---------------------------------------------------------------------- */
/* Threads and homes (no Lua here: this runs at thread exit too)           */
/* ---------------------------------------------------------------------- */

static void tl_home_unref(tl_home *h) {
  if (atomic_fetch_sub(&h->refs, 1) == 1) {
    pthread_mutex_destroy(&h->lock);
    free(h->dead);
    free(h);
  }
}

static void tl_thread_exit(void *p) {
  tl_thread *t = (tl_thread *)p;
  size_t i;
  /* A later destructor that touches a Local gets a fresh record and id. */
  tl_me = NULL;
  tl_myid = 0;
  for (i = 0; i < t->nhomes; i++) {
    tl_home *h = t->homes[i];
    pthread_mutex_lock(&h->lock);
    if (!atomic_load(&h->closed)) {
      size_t n = atomic_load_explicit(&h->ndead, memory_order_relaxed);
      h->dead[n] = t->id;
      atomic_store(&h->ndead, n + 1);
    }
    pthread_mutex_unlock(&h->lock);
    tl_home_unref(h);
  }
  free(t->homes);
  free(t);
}

static void tl_global_init(void) {
  Dl_info info;
  if (pthread_key_create(&tl_key, tl_thread_exit) != 0) {
    tl_once_err = 1;
    return;
  }
  /* Lua's lua_close dlcloses C modules; tl_key's destructor must outlive
  ** every state, so mark this object never to be unloaded. */
  if (dladdr(&tl_nextid, &info) && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static tl_thread *tl_thread_get(void) { /* NULL when out of memory */
  tl_thread *t = tl_me;
  if (t == NULL) {
    t = (tl_thread *)calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->id = atomic_fetch_add(&tl_nextid, 1);
    if (pthread_setspecific(tl_key, t) != 0) {
      free(t);
      return NULL;
    }
    tl_me = t;
    tl_myid = t->id;
  }
  return t;
}

static tl_home *tl_home_new(void) {
  tl_home *h = (tl_home *)calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  if (pthread_mutex_init(&h->lock, NULL) != 0) {
    free(h);
    return NULL;
  }
  atomic_init(&h->refs, 1);
  atomic_init(&h->closed, 0);
  atomic_init(&h->ndead, 0);
  return h;
}

static void tl_home_close(tl_home *h) {
  pthread_mutex_lock(&h->lock);
  atomic_store(&h->closed, 1);
  pthread_mutex_unlock(&h->lock);
  tl_home_unref(h);
}

/* Make t report its exit to h.  Returns 0, or -1 when out of memory. */
static int tl_home_register(tl_home *h, tl_thread *t) {
  if (t->nhomes == t->caphomes) {
    size_t i, j = 0, cap;
    tl_home **nh;
    for (i = 0; i < t->nhomes; i++) { /* forget states that have closed */
      if (atomic_load(&t->homes[i]->closed))
        tl_home_unref(t->homes[i]);
      else
        t->homes[j++] = t->homes[i];
    }
    t->nhomes = j;
    if (j == t->caphomes) {
      cap = t->caphomes ? 2 * t->caphomes : 4;
      nh = (tl_home **)realloc(t->homes, cap * sizeof *nh);
      if (nh == NULL) return -1;
      t->homes = nh;
      t->caphomes = cap;
    }
  }
  pthread_mutex_lock(&h->lock);
  if (h->nslots == h->cap) {
    size_t cap = h->cap ? 2 * h->cap : 8;
    uint64_t *nd = (uint64_t *)realloc(h->dead, cap * sizeof *nd);
    if (nd == NULL) {
      pthread_mutex_unlock(&h->lock);
      return -1;
    }
    h->dead = nd;
    h->cap = cap;
  }
  h->nslots++;
  pthread_mutex_unlock(&h->lock);
  atomic_fetch_add(&h->refs, 1);
  t->homes[t->nhomes++] = h;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Lua helpers                                                            */
/* ---------------------------------------------------------------------- */

static int tl_memerror(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  return lua_error(L);
}

static tl_thread *tl_self(lua_State *L) {
  tl_thread *t = tl_thread_get();
  if (t == NULL) tl_memerror(L);
  return t;
}

/* Thread ids are table keys; lua_rawgeti takes only an int before 5.3. */
static void tl_getid(lua_State *L, int t, uint64_t id) {
  t = tl_absindex(L, t);
  lua_pushinteger(L, (lua_Integer)id);
  lua_rawget(L, t);
}

static void tl_setid(lua_State *L, int t, uint64_t id) { /* pops the value */
  t = tl_absindex(L, t);
  lua_pushinteger(L, (lua_Integer)id);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

/* t[id] = nil, without inserting a dead key (which can allocate) */
static void tl_delid(lua_State *L, int t, uint64_t id) {
  t = tl_absindex(L, t);
  tl_getid(L, t, id);
  if (!lua_isnil(L, -1)) {
    lua_pushnil(L);
    tl_setid(L, t, id);
  }
  lua_pop(L, 1);
}

/* Errors of our own carry no position prefix: they start "threadlocal:". */
static int tl_error(lua_State *L, const char *msg) {
  lua_pushstring(L, msg);
  return lua_error(L);
}

static void tl_copytable(lua_State *L, int src) { /* pushes a shallow copy */
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, src)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

/* ---------------------------------------------------------------------- */
/* Purging the fields of exited threads                                   */
/* ---------------------------------------------------------------------- */

#define tl_state_at(L) ((tl_state *)lua_touserdata(L, lua_upvalueindex(1)))

static void tl_uncache(lua_State *L, int ud, tl_local *lo) {
  lo->cid = TL_NOCACHE;
  lua_pushnil(L);
  tl_setuv(L, ud, TL_UV_CACHE);
}

/* Drop every Local's fields of the exited thread `id`.  Allocates nothing,
** so it is safe inside a finalizer. */
static void tl_purge_id(lua_State *L, int bythread, uint64_t id) {
  tl_getid(L, bythread, id);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      tl_local *lo = (tl_local *)lua_touserdata(L, -2);
      tl_getuv(L, -2, TL_UV_MAP);
      tl_delid(L, -1, id);
      lua_pop(L, 2);
      if (lo->cid == id) tl_uncache(L, lua_gettop(L), lo);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    tl_setid(L, bythread, id);
  } else
    lua_pop(L, 1);
}

/* Upvalue 1 is the tl_state. */
static void tl_purge(lua_State *L) {
  tl_state *st = tl_state_at(L);
  tl_home *h = st->home;
  uint64_t ids[32];
  size_t n, i;
  if (h == NULL || atomic_load_explicit(&h->ndead, memory_order_relaxed) == 0)
    return;
  tl_getuv(L, lua_upvalueindex(1), TL_ST_BYTHREAD);
  do {
    pthread_mutex_lock(&h->lock);
    n = atomic_load_explicit(&h->ndead, memory_order_relaxed);
    if (n > 32) n = 32;
    for (i = 0; i < n; i++) ids[i] = h->dead[atomic_load(&h->ndead) - 1 - i];
    atomic_store(&h->ndead, atomic_load(&h->ndead) - n);
    h->nslots -= n;
    pthread_mutex_unlock(&h->lock);
    for (i = 0; i < n; i++) tl_purge_id(L, lua_gettop(L), ids[i]);
  } while (n == 32);
  lua_pop(L, 1);
}

/*
** A finalizer runs once per GC cycle: the sentinel's __gc purges, then
** makes the next sentinel.  So a dead thread's values become garbage in
** one cycle and are collected in the next, even if no Local is touched.
*/
static void tl_sentinel_new(lua_State *L) {
  tl_newud(L, 1, 0);
  tl_getuv(L, lua_upvalueindex(1), TL_ST_SENTINEL_MT);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

static int tl_sentinel_gc(lua_State *L) {
  if (tl_state_at(L)->home == NULL) return 0; /* the state is closing */
  tl_purge(L);
  tl_sentinel_new(L);
  return 0;
}

static int tl_state_gc(lua_State *L) {
  tl_state *st = (tl_state *)lua_touserdata(L, 1);
  if (st->home != NULL) {
    tl_home_close(st->home);
    st->home = NULL;
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Locals                                                                 */
/* ---------------------------------------------------------------------- */

/* Record that the Local at `ud` holds fields for t, so a purge finds them. */
static void tl_enroll(lua_State *L, int ud, tl_thread *t) {
  tl_state *st = tl_state_at(L);
  tl_getuv(L, lua_upvalueindex(1), TL_ST_BYTHREAD);
  tl_getid(L, -1, t->id);
  if (lua_isnil(L, -1)) { /* first Local of this state on this thread */
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    if (st->home != NULL && tl_home_register(st->home, t) != 0) tl_memerror(L);
    lua_pushvalue(L, -1);
    tl_setid(L, -3, t->id);
  }
  lua_pushvalue(L, ud);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 2);
}

/* Give the calling thread its fields table, and run init for it. */
static void tl_local_start(lua_State *L, int ud, tl_local *lo, tl_thread *t) {
  int map, top = lua_gettop(L);
  tl_enroll(L, ud, t);
  tl_getuv(L, ud, TL_UV_MAP);
  map = lua_gettop(L);
  lua_newtable(L);
  tl_getid(L, map, t->id); /* a finalizer that ran during newtable may have */
  if (!lua_isnil(L, -1)) { /* started this thread already */
    lua_pushvalue(L, -1);
    tl_setuv(L, ud, TL_UV_CACHE);
    lo->cid = t->id;
    lua_settop(L, top);
    return;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  tl_setid(L, map, t->id);
  tl_setuv(L, ud, TL_UV_CACHE);
  lo->cid = t->id;
  tl_getuv(L, ud, TL_UV_INIT);
  if (lua_istable(L, -1)) {
    int i, n;
    lua_getfield(L, -1, "n");
    n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n + 1, "threadlocal: too many init arguments");
    lua_rawgeti(L, -1, 1);
    lua_pushvalue(L, ud);
    for (i = 2; i <= n; i++) lua_rawgeti(L, map + 1, i);
    if (lua_pcall(L, n, 0, 0) != 0) {
      /* The thread keeps no fields; the next access runs init again. */
      tl_delid(L, map, t->id);
      if (lo->cid == t->id) tl_uncache(L, ud, lo);
      lua_error(L);
    }
  }
  lua_settop(L, top);
}

/* Make TL_UV_CACHE the calling thread's fields table.  Upvalue 1 is the
** tl_state.  Leaves the stack as it was. */
static void tl_local_fetch(lua_State *L, int ud, tl_local *lo) {
  tl_thread *t = tl_self(L);
  tl_purge(L);
  tl_getuv(L, ud, TL_UV_MAP);
  tl_getid(L, -1, t->id);
  if (lua_isnil(L, -1))
    tl_local_start(L, ud, lo, t);
  else {
    lua_pushvalue(L, -1);
    tl_setuv(L, ud, TL_UV_CACHE);
    lo->cid = t->id;
  }
  lua_pop(L, 2);
}

/* Pushes the calling thread's fields table of the Local at `ud`. */
static void tl_local_fields(lua_State *L, int ud) {
  tl_local *lo = (tl_local *)lua_touserdata(L, ud);
  if (lo->cid != tl_myid) tl_local_fetch(L, ud, lo);
  tl_getuv(L, ud, TL_UV_CACHE);
}

/* The hot path: called only as metamethods, so argument 1 is a Local. */
static int tl_local_index(lua_State *L) {
  tl_local *lo = (tl_local *)lua_touserdata(L, 1);
  if (tl_unlikely(lo->cid != tl_myid)) tl_local_fetch(L, 1, lo);
  tl_getuv(L, 1, TL_UV_CACHE);
  lua_replace(L, 1);
  lua_rawget(L, 1);
  return 1;
}

static int tl_local_newindex(lua_State *L) {
  tl_local *lo = (tl_local *)lua_touserdata(L, 1);
  switch (lua_type(L, 2)) {
    case LUA_TNIL:
      return tl_error(L, "threadlocal: cannot use nil as a field name");
    case LUA_TNUMBER: {
      lua_Number n = lua_tonumber(L, 2);
      if (n != n) return tl_error(L, "threadlocal: cannot use NaN as a field name");
      break;
    }
  }
  if (tl_unlikely(lo->cid != tl_myid)) tl_local_fetch(L, 1, lo);
  tl_getuv(L, 1, TL_UV_CACHE);
  lua_replace(L, 1);
  lua_rawset(L, 1);
  return 0;
}

static int tl_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}

static int tl_local_pairs(lua_State *L) {
  tl_local_fields(L, 1);
  lua_pushcfunction(L, tl_next);
  lua_insert(L, -2);
  lua_pushnil(L);
  return 3;
}

static int tl_local_len(lua_State *L) {
  tl_local_fields(L, 1);
  lua_pushinteger(L, (lua_Integer)tl_rawlen(L, -1));
  return 1;
}

static int tl_local_tostring(lua_State *L) {
  lua_pushfstring(L, THREADLOCAL_LOCAL_MT ": %p", lua_touserdata(L, 1));
  return 1;
}

/* ---------------------------------------------------------------------- */
/* Module functions                                                       */
/* ---------------------------------------------------------------------- */

static tl_local *tl_checklocal(lua_State *L, int i) {
  return (tl_local *)luaL_checkudata(L, i, THREADLOCAL_LOCAL_MT);
}

static int tl_new(lua_State *L) {
  int n = lua_gettop(L), i;
  tl_local *lo;
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  else if (n > 1)
    return tl_error(L, "threadlocal: init arguments given without an init function");
  lo = (tl_local *)tl_newud(L, sizeof *lo, TL_LOCAL_NUV);
  lo->cid = TL_NOCACHE;
  luaL_getmetatable(L, THREADLOCAL_LOCAL_MT);
  lua_setmetatable(L, -2);
  lua_newtable(L);
  tl_setuv(L, -2, TL_UV_MAP);
  if (n > 0 && !lua_isnil(L, 1)) {
    lua_createtable(L, n, 1);
    for (i = 1; i <= n; i++) {
      lua_pushvalue(L, i);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    tl_setuv(L, -2, TL_UV_INIT);
  }
  tl_local_fetch(L, n + 1, lo); /* init runs in the creating thread now */
  return 1;
}

static int tl_call(lua_State *L) { /* threadlocal(...) */
  lua_remove(L, 1);
  return tl_new(L);
}

static int tl_clear(lua_State *L) {
  tl_local *lo = tl_checklocal(L, 1);
  uint64_t id = tl_myid;
  if (id == 0) return 0; /* this thread never stored anything */
  tl_getuv(L, 1, TL_UV_MAP);
  tl_delid(L, -1, id);
  if (lo->cid == id) tl_uncache(L, 1, lo);
  return 0;
}

static int tl_fields(lua_State *L) {
  tl_checklocal(L, 1);
  tl_local_fields(L, 1);
  tl_copytable(L, lua_gettop(L));
  return 1;
}

/* Upvalues: the Local, the array of ids to visit, the position in it. */
static int tl_threads_step(lua_State *L) {
  lua_Integer i = lua_tointeger(L, lua_upvalueindex(3));
  for (;;) {
    lua_rawgeti(L, lua_upvalueindex(2), (int)++i);
    if (lua_isnil(L, -1)) return 1;
    tl_getuv(L, lua_upvalueindex(1), TL_UV_MAP);
    lua_pushvalue(L, -2);
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
      lua_pushinteger(L, i);
      lua_replace(L, lua_upvalueindex(3));
      tl_copytable(L, lua_gettop(L));
      lua_pushvalue(L, -4);
      lua_insert(L, -2);
      return 2;
    }
    lua_pop(L, 3);
  }
}

static int tl_threads(lua_State *L) {
  int n = 0;
  tl_checklocal(L, 1);
  lua_settop(L, 1);
  tl_purge(L);
  tl_getuv(L, 1, TL_UV_MAP);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, 3, ++n);
  }
  lua_remove(L, 2);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, tl_threads_step, 3);
  return 1;
}

static int tl_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tl_self(L)->id);
  return 1;
}

static const luaL_Reg tl_local_meta[] = {
  {"__index", tl_local_index},
  {"__newindex", tl_local_newindex},
  {"__pairs", tl_local_pairs},
  {"__len", tl_local_len},
  {"__tostring", tl_local_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_funcs[] = {
  {"new", tl_new},
  {"local", tl_new},
  {"clear", tl_clear},
  {"fields", tl_fields},
  {"threads", tl_threads},
  {"id", tl_id},
  {NULL, NULL}
};

/* Pushes this state's tl_state, creating it on the first require. */
static void tl_state_push(lua_State *L) {
  tl_state *st;
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  st = (tl_state *)tl_newud(L, sizeof *st, TL_ST_NUV - 1);
  st->home = NULL;
  luaL_newmetatable(L, TL_STATE_MT);
  lua_pushcfunction(L, tl_state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if ((st->home = tl_home_new()) == NULL) tl_memerror(L);
  lua_newtable(L);
  tl_setuv(L, -2, TL_ST_BYTHREAD);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, tl_sentinel_gc, 1);
  lua_setfield(L, -2, "__gc");
  tl_setuv(L, -2, TL_ST_SENTINEL_MT);
  lua_pushvalue(L, -1);
  tl_rawsetp(L, LUA_REGISTRYINDEX, &tl_statekey);
}

static int tl_open_sentinel(lua_State *L) { /* upvalue 1: the tl_state */
  tl_sentinel_new(L);
  return 0;
}

THREADLOCAL_API int luaopen_threadlocal(lua_State *L) {
  pthread_once(&tl_once, tl_global_init);
  if (tl_once_err) return tl_error(L, "threadlocal: cannot create the thread key");
  tl_state_push(L);

  lua_pushvalue(L, -1);
  lua_pushcclosure(L, tl_open_sentinel, 1);
  lua_call(L, 0, 0);

  luaL_newmetatable(L, THREADLOCAL_LOCAL_MT);
  lua_pushvalue(L, -2);
  tl_setfuncs(L, tl_local_meta, 1);
  lua_pushliteral(L, THREADLOCAL_LOCAL_MT);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);

  lua_createtable(L, 0, (int)(sizeof tl_funcs / sizeof *tl_funcs) + 1);
  lua_pushvalue(L, -2);
  tl_setfuncs(L, tl_funcs, 1);
  lua_pushliteral(L, THREADLOCAL_VERSION);
  lua_setfield(L, -2, "version");
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, tl_call, 1);
  lua_setfield(L, -2, "__call");
  lua_setmetatable(L, -2);
  lua_remove(L, -2);
  return 1;
}
