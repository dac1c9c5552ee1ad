/*
** tlhelper: lets busted specs drive real OS threads.
**
**   helper.on_thread(f, ...)     run f(...) of this state on a new OS thread;
**                                the caller waits; returns f's results
**   w = helper.worker()          a live OS thread that waits for work:
**     w:run(f, ...)              run f(...) of this state on it, and wait
**     w:exec(code, ...)          run a chunk in a fresh state on it (closed
**                                after), and wait; returns scalar results
**     w:stop()                   let the thread exit and join it
**   h = helper.spawn(code, ...)  a new thread runs the chunk in a fresh state,
**                                concurrently; h:join() -> true, results...
**                                or false, message
**   helper.spawn_linger(b, code, ...)  the same, but after closing its state
**                                the thread waits on barrier b, then exits
**   helper.exec(code, ...)       run a chunk in a fresh state on the calling
**                                thread (closed after); returns scalar results
**   helper.lightuserdata(n)      a light userdata with address n
**   helper.rawlen(ud)            the size of a full userdata, in bytes
**   helper.lanes(how, v, code, ...)  a Lanes-like host: a new state requires
**                                threadlocal, gets the userdata v as Lanes 3.17
**                                copies a clonable one, and runs the chunk
**                                with it and the scalar arguments on a new
**                                thread; how is "direct" (an argument or an
**                                upvalue) or "linda" (through a keeper state)
**   helper.barrier(name, n)      create a process-wide barrier for n parties
**   helper.wait(name)            wait on it, from any state and thread
**
** Values crossing states (arguments and results of chunks) are nil,
** booleans, numbers and strings.  Fresh states get the caller's
** package.path and package.cpath.  Nothing here sleeps.
*/
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

int luaopen_tlhelper(lua_State *L);

#if LUA_VERSION_NUM == 501
#define hp_newlib(L, l) (lua_newtable(L), luaL_register(L, NULL, l))
#else
#define hp_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
#endif

#if LUA_VERSION_NUM >= 503
#define hp_isinteger(L, i) lua_isinteger(L, i)
#else
#define hp_isinteger(L, i) 0
#endif

/* ---- scalar values copied between states ---- */

typedef struct hp_val {
  int type, isint;
  lua_Number n;
  lua_Integer i;
  char *s;
  size_t len;
} hp_val;

typedef struct hp_vals {
  int n;
  hp_val *v;
} hp_vals;

static void hp_vals_free(hp_vals *vs) {
  int i;
  for (i = 0; i < vs->n; i++) free(vs->v[i].s);
  free(vs->v);
  vs->n = 0;
  vs->v = NULL;
}

/* Copies stack slots from..to; returns an error message or NULL. */
static const char *hp_vals_get(lua_State *L, int from, int to, hp_vals *vs) {
  int k;
  vs->n = to >= from ? to - from + 1 : 0;
  vs->v = (hp_val *)calloc((size_t)vs->n + 1, sizeof(hp_val));
  if (vs->v == NULL) return "tlhelper: out of memory";
  for (k = 0; k < vs->n; k++) {
    hp_val *v = &vs->v[k];
    int idx = from + k;
    v->type = lua_type(L, idx);
    switch (v->type) {
      case LUA_TNIL: break;
      case LUA_TBOOLEAN: v->i = lua_toboolean(L, idx); break;
      case LUA_TNUMBER:
        v->isint = hp_isinteger(L, idx);
        if (v->isint) v->i = lua_tointeger(L, idx);
        else v->n = lua_tonumber(L, idx);
        break;
      case LUA_TSTRING: {
        const char *s = lua_tolstring(L, idx, &v->len);
        v->s = (char *)malloc(v->len + 1);
        if (v->s == NULL) return "tlhelper: out of memory";
        memcpy(v->s, s, v->len + 1);
        break;
      }
      default: return "tlhelper: only nil, booleans, numbers and strings cross states";
    }
  }
  return NULL;
}

static void hp_vals_push(lua_State *L, const hp_vals *vs) {
  int k;
  luaL_checkstack(L, vs->n, "tlhelper: too many values");
  for (k = 0; k < vs->n; k++) {
    const hp_val *v = &vs->v[k];
    switch (v->type) {
      case LUA_TBOOLEAN: lua_pushboolean(L, (int)v->i); break;
      case LUA_TNUMBER:
        if (v->isint) lua_pushinteger(L, v->i);
        else lua_pushnumber(L, v->n);
        break;
      case LUA_TSTRING: lua_pushlstring(L, v->s, v->len); break;
      default: lua_pushnil(L);
    }
  }
}

/* ---- running a chunk in a fresh state ---- */

typedef struct hp_chunk {
  char *code, *path, *cpath;
  size_t codelen;
  hp_vals args, results;
  int ok;
  char *err;
} hp_chunk;

static char *hp_strdup(const char *s, size_t len) {
  char *d = (char *)malloc(len + 1);
  if (d != NULL) {
    memcpy(d, s, len);
    d[len] = '\0';
  }
  return d;
}

static void hp_chunk_free(hp_chunk *c) {
  free(c->code);
  free(c->path);
  free(c->cpath);
  free(c->err);
  hp_vals_free(&c->args);
  hp_vals_free(&c->results);
}

/* Fills c from stack slots: code at `code`, args after it.  Raises on error. */
static void hp_chunk_init(lua_State *L, hp_chunk *c, int code) {
  size_t len;
  const char *s = luaL_checklstring(L, code, &len);
  const char *err;
  memset(c, 0, sizeof *c);
  c->code = hp_strdup(s, len);
  c->codelen = len;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  s = lua_tolstring(L, -1, &len);
  c->path = s ? hp_strdup(s, len) : NULL;
  lua_getfield(L, -2, "cpath");
  s = lua_tolstring(L, -1, &len);
  c->cpath = s ? hp_strdup(s, len) : NULL;
  lua_pop(L, 3);
  err = hp_vals_get(L, code + 1, lua_gettop(L), &c->args);
  if (err != NULL || c->code == NULL) {
    hp_chunk_free(c);
    luaL_error(L, "%s", err ? err : "tlhelper: out of memory");
  }
}

static void hp_chunk_run(hp_chunk *c) {
  lua_State *L = luaL_newstate();
  const char *err = NULL;
  if (L == NULL) {
    c->err = hp_strdup("cannot create state", 19);
    return;
  }
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  if (c->path) {
    lua_pushstring(L, c->path);
    lua_setfield(L, -2, "path");
  }
  if (c->cpath) {
    lua_pushstring(L, c->cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  if (luaL_loadbuffer(L, c->code, c->codelen, "=chunk") == 0) {
    hp_vals_push(L, &c->args);
    if (lua_pcall(L, c->args.n, LUA_MULTRET, 0) == 0) {
      err = hp_vals_get(L, 1, lua_gettop(L), &c->results);
      c->ok = err == NULL;
    }
  }
  if (!c->ok) {
    size_t len = 0;
    const char *s = err ? err : lua_tolstring(L, -1, &len);
    if (s == NULL) s = "(error object is not a string)";
    c->err = hp_strdup(s, err ? strlen(s) : len);
  }
  lua_close(L);
}

/* Pushes the results, or raises the chunk's error. */
static int hp_chunk_return(lua_State *L, hp_chunk *c) {
  int n = c->results.n;
  if (!c->ok) {
    lua_pushstring(L, c->err ? c->err : "?");
    hp_chunk_free(c);
    return lua_error(L);
  }
  hp_vals_push(L, &c->results);
  hp_chunk_free(c);
  return n;
}

/* ---- barriers ---- */

typedef struct hp_barrier {
  struct hp_barrier *next;
  char *name;
  int parties, waiting;
  unsigned long generation;
  pthread_cond_t cond;
} hp_barrier;

static pthread_mutex_t hp_lock = PTHREAD_MUTEX_INITIALIZER;
static hp_barrier *hp_barriers;

static hp_barrier *hp_barrier_find(const char *name) { /* hp_lock held */
  hp_barrier *b;
  for (b = hp_barriers; b != NULL; b = b->next)
    if (strcmp(b->name, name) == 0) return b;
  return NULL;
}

static int hp_barrier_new(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int n = (int)luaL_checkinteger(L, 2);
  hp_barrier *b;
  luaL_argcheck(L, n >= 1, 2, "at least one party");
  pthread_mutex_lock(&hp_lock);
  if ((b = hp_barrier_find(name)) == NULL) {
    b = (hp_barrier *)calloc(1, sizeof *b);
    if (b != NULL && (b->name = hp_strdup(name, strlen(name))) != NULL) {
      pthread_cond_init(&b->cond, NULL);
      b->next = hp_barriers;
      hp_barriers = b;
    } else {
      free(b);
      b = NULL;
    }
  }
  if (b != NULL) {
    b->parties = n;
    b->waiting = 0;
  }
  pthread_mutex_unlock(&hp_lock);
  if (b == NULL) return luaL_error(L, "tlhelper: out of memory");
  return 0;
}

/* Returns 0, or -1 if there is no such barrier. */
static int hp_barrier_wait(const char *name) {
  hp_barrier *b;
  pthread_mutex_lock(&hp_lock);
  if ((b = hp_barrier_find(name)) == NULL) {
    pthread_mutex_unlock(&hp_lock);
    return -1;
  }
  if (++b->waiting == b->parties) {
    b->waiting = 0;
    b->generation++;
    pthread_cond_broadcast(&b->cond);
  } else {
    unsigned long gen = b->generation;
    while (gen == b->generation) pthread_cond_wait(&b->cond, &hp_lock);
  }
  pthread_mutex_unlock(&hp_lock);
  return 0;
}

/* Barriers live as long as this library: freed when the last state that
** loaded it closes (an atexit handler of a shared object runs at dlclose). */
static void hp_barriers_free(void) {
  hp_barrier *b;
  while ((b = hp_barriers) != NULL) {
    hp_barriers = b->next;
    pthread_cond_destroy(&b->cond);
    free(b->name);
    free(b);
  }
}

static pthread_once_t hp_once = PTHREAD_ONCE_INIT;

static void hp_init(void) { atexit(hp_barriers_free); }

static int hp_wait(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (hp_barrier_wait(name) != 0) return luaL_error(L, "tlhelper: no barrier '%s'", name);
  return 0;
}

/* ---- on_thread: one call of this state's function on a new thread ---- */

typedef struct hp_call {
  lua_State *L;
  int nargs, status;
} hp_call;

static void *hp_call_main(void *p) {
  hp_call *c = (hp_call *)p;
  c->status = lua_pcall(c->L, c->nargs, LUA_MULTRET, 0);
  return NULL;
}

/* Returns the results of a call made at stack slot `base`, or raises its error. */
static int hp_call_finish(lua_State *L, int base, int status) {
  if (status != 0) return lua_error(L);
  return lua_gettop(L) - base + 1;
}

static int hp_on_thread(lua_State *L) {
  hp_call c;
  pthread_t th;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  c.L = L;
  c.nargs = lua_gettop(L) - 1;
  c.status = 0;
  if (pthread_create(&th, NULL, hp_call_main, &c) != 0)
    return luaL_error(L, "tlhelper: cannot create a thread");
  pthread_join(th, NULL);
  return hp_call_finish(L, 1, c.status);
}

/* ---- workers ---- */

enum { HP_IDLE, HP_CALL, HP_EXEC, HP_QUIT };

typedef struct hp_worker {
  pthread_t th;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int job, done, running;
  hp_call call;
  hp_chunk chunk;
} hp_worker;

#define HP_WORKER_MT "tlhelper.worker"

static void *hp_worker_main(void *p) {
  hp_worker *w = (hp_worker *)p;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    while (w->job == HP_IDLE) pthread_cond_wait(&w->cond, &w->lock);
    if (w->job == HP_QUIT) break;
    pthread_mutex_unlock(&w->lock);
    if (w->job == HP_CALL)
      hp_call_main(&w->call);
    else
      hp_chunk_run(&w->chunk);
    pthread_mutex_lock(&w->lock);
    w->job = HP_IDLE;
    w->done = 1;
    pthread_cond_broadcast(&w->cond);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static void hp_worker_do(hp_worker *w, int job) {
  pthread_mutex_lock(&w->lock);
  w->job = job;
  w->done = 0;
  pthread_cond_broadcast(&w->cond);
  while (!w->done) pthread_cond_wait(&w->cond, &w->lock);
  pthread_mutex_unlock(&w->lock);
}

static hp_worker *hp_checkworker(lua_State *L) {
  hp_worker *w = (hp_worker *)luaL_checkudata(L, 1, HP_WORKER_MT);
  if (!w->running) luaL_error(L, "tlhelper: worker stopped");
  return w;
}

static int hp_worker_new(lua_State *L) {
  hp_worker *w = (hp_worker *)lua_newuserdata(L, sizeof *w);
  memset(w, 0, sizeof *w);
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->cond, NULL);
  luaL_getmetatable(L, HP_WORKER_MT);
  lua_setmetatable(L, -2);
  if (pthread_create(&w->th, NULL, hp_worker_main, w) != 0)
    return luaL_error(L, "tlhelper: cannot create a thread");
  w->running = 1;
  return 1;
}

static int hp_worker_run(lua_State *L) {
  hp_worker *w = hp_checkworker(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  w->call.L = L;
  w->call.nargs = lua_gettop(L) - 2;
  hp_worker_do(w, HP_CALL);
  return hp_call_finish(L, 2, w->call.status);
}

static int hp_worker_exec(lua_State *L) {
  hp_worker *w = hp_checkworker(L);
  hp_chunk_init(L, &w->chunk, 2);
  hp_worker_do(w, HP_EXEC);
  return hp_chunk_return(L, &w->chunk);
}

static int hp_exec(lua_State *L) {
  hp_chunk c;
  hp_chunk_init(L, &c, 1);
  hp_chunk_run(&c);
  return hp_chunk_return(L, &c);
}

static int hp_lightuserdata(lua_State *L) {
  lua_pushlightuserdata(L, (void *)(uintptr_t)luaL_checkinteger(L, 1));
  return 1;
}

static int hp_rawlen(lua_State *L) {
  luaL_checktype(L, 1, LUA_TUSERDATA);
#if LUA_VERSION_NUM == 501
  lua_pushinteger(L, (lua_Integer)lua_objlen(L, 1));
#else
  lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
#endif
  return 1;
}

/* ---- a Lanes-like host ---- */

/*
** What Lanes 3.17 does with a full userdata whose metatable has
** __lanesclone: it finds the metatable by its name in the module tables
** registered with lanes.require (here: the fields of threadlocal), makes a
** userdata of the same size and user values in the other state, gives it the
** other state's table of that name, copies the user values, and calls
** __lanesclone(clone, source, size) in the source state.  Through a linda
** the clone goes to a keeper state first (no metatable there), and the
** receiver's own __lanesclone makes its clone from the keeper's.
*/
#if LUA_VERSION_NUM >= 504
#define hp_newud(L, sz, nuv) lua_newuserdatauv(L, sz, nuv)
#define hp_getuv(L, i, n) lua_getiuservalue(L, i, n)
#define hp_setuv(L, i, n) lua_setiuservalue(L, i, n)
#else
/* One user value before 5.4: Lanes copies it when it is a table. */
static void *hp_newud(lua_State *L, size_t sz, int nuv) {
  (void)nuv;
  return lua_newuserdata(L, sz);
}
static int hp_getuv(lua_State *L, int i, int n) {
  if (n > 1) {
    lua_pushnil(L);
    return LUA_TNONE;
  }
#if LUA_VERSION_NUM == 501
  lua_getfenv(L, i);
#else
  lua_getuservalue(L, i);
#endif
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNONE;
  }
  return LUA_TTABLE;
}
static int hp_setuv(lua_State *L, int i, int n) {
  (void)n;
#if LUA_VERSION_NUM == 501
  return lua_setfenv(L, i);
#else
  lua_setuservalue(L, i);
  return 1;
#endif
}
#endif

#if LUA_VERSION_NUM == 501
#define hp_udlen(L, i) lua_objlen(L, i)
#else
#define hp_udlen(L, i) lua_rawlen(L, i)
#endif

/* Pushes onto `to` a copy of the value at slot i of `from`, as Lanes copies
** a user value: plain values and tables of them; a full userdata without
** __lanesclone cannot cross.  Returns an error message or NULL. */
static const char *hp_lanes_copy(lua_State *from, int i, lua_State *to, int depth) {
  const char *err = NULL;
  if (i < 0) i = lua_gettop(from) + i + 1;
  if (!lua_checkstack(to, 3) || !lua_checkstack(from, 3)) return "tlhelper: stack overflow";
  switch (lua_type(from, i)) {
    case LUA_TNIL: lua_pushnil(to); break;
    case LUA_TBOOLEAN: lua_pushboolean(to, lua_toboolean(from, i)); break;
    case LUA_TNUMBER:
      if (hp_isinteger(from, i)) lua_pushinteger(to, lua_tointeger(from, i));
      else lua_pushnumber(to, lua_tonumber(from, i));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(from, i, &len);
      lua_pushlstring(to, s, len);
      break;
    }
    case LUA_TTABLE:
      if (depth > 8) return "tlhelper: tables too deep";
      lua_newtable(to);
      lua_pushnil(from);
      while (err == NULL && lua_next(from, i)) {
        if ((err = hp_lanes_copy(from, -2, to, depth + 1)) == NULL &&
            (err = hp_lanes_copy(from, -1, to, depth + 1)) == NULL)
          lua_rawset(to, -3);
        lua_pop(from, 1);
      }
      if (err != NULL) lua_pop(from, 1); /* the key lua_next left */
      break;
    case LUA_TUSERDATA: return "can't copy non-deep full userdata across lanes";
    default: return "tlhelper: a user value of a type Lanes does not copy";
  }
  return err;
}

typedef struct hp_lane {
  lua_State *L;  /* the lane's state: the chunk, the clone, the arguments */
  int nargs, ok;
  hp_vals results;
  char err[256];
} hp_lane;

static void hp_lane_fail(hp_lane *ln, lua_State *L, const char *prefix) {
  const char *msg = lua_tostring(L, -1);
  snprintf(ln->err, sizeof ln->err, "%s%s", prefix, msg ? msg : "(error object is not a string)");
}

/* The clone of the userdata at slot `src` of `from`, pushed in `to` with
** the metatable at slot `mt` of `to` (none: 0); `fn` is the __lanesclone to
** call, in the state `caller` (from or to), at slot fn there. */
static const char *hp_lanes_clone(hp_lane *ln, lua_State *from, int src, lua_State *to, int mt,
                                  lua_State *caller, int fn) {
  size_t size = hp_udlen(from, src);
  void *clone;
  int nuv = 0, k;
  const char *err;
  if (src < 0) src = lua_gettop(from) + src + 1;
  while (hp_getuv(from, src, nuv + 1) != LUA_TNONE) nuv++;
  lua_pop(from, 1); /* the nil of the missing one; the nuv values stay */
  clone = hp_newud(to, size, nuv);
  if (mt != 0) {
    lua_pushvalue(to, mt);
    lua_setmetatable(to, -2);
  }
  for (k = nuv; k > 0; k--) { /* the last user value is on top */
    if ((err = hp_lanes_copy(from, -1, to, 0)) != NULL) {
      lua_pop(from, k);
      return err;
    }
    lua_pop(from, 1);
    hp_setuv(to, -2, k);
  }
  lua_pushvalue(caller, fn);
  lua_pushlightuserdata(caller, clone);
  lua_pushlightuserdata(caller, lua_touserdata(from, src));
  lua_pushinteger(caller, (lua_Integer)size);
  if (lua_pcall(caller, 3, 0, 0) != 0) {
    hp_lane_fail(ln, caller, "__lanesclone: ");
    lua_pop(caller, 1);
    return ln->err;
  }
  return NULL;
}

/* Builds the lane: its chunk, then the clone of the value at slot 2 of L.
** Returns an error message or NULL. */
static const char *hp_lanes_prepare(hp_lane *ln, lua_State *L, int linda, const hp_chunk *c) {
  lua_State *L2 = ln->L, *K = NULL;
  const char *name = NULL, *err = NULL;
  int mt2;
  if (luaL_loadbuffer(L2, c->code, c->codelen, "=lane") != 0) {
    hp_lane_fail(ln, L2, "");
    return ln->err;
  }
  lua_getglobal(L2, "require"); /* Lanes' `required`: before the copy */
  lua_pushliteral(L2, "threadlocal");
  if (lua_pcall(L2, 1, 1, 0) != 0) {
    hp_lane_fail(ln, L2, "");
    return ln->err;
  }
  if (lua_type(L, 2) != LUA_TUSERDATA || !lua_getmetatable(L, 2))
    return "can't copy non-deep full userdata across lanes";
  lua_getfield(L, -1, "__lanesclone");              /* L: ... mt clone? */
  if (lua_isnil(L, -1)) return "can't copy non-deep full userdata across lanes";
  /* The transfer database: the fields of the module in both states. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_getfield(L, -1, "threadlocal");               /* L: ... mt clone pkg loaded M */
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, -7)) name = lua_tostring(L, -2);
      lua_pop(L, 1);
      if (name != NULL) break;
    }
  }
  if (name == NULL) return "tlhelper: the metatable is not found in the origin transfer database";
  lua_getfield(L2, -1, name);                       /* L2: chunk M2 mt2 */
  lua_pop(L, 1);                                    /* L: ... mt clone pkg loaded M */
  if (!lua_istable(L2, -1))
    return "tlhelper: the metatable is not found in the destination transfer database";
  mt2 = lua_gettop(L2);
  if (!linda) {
    err = hp_lanes_clone(ln, L, 2, L2, mt2, L, lua_gettop(L) - 3);
  } else if ((K = luaL_newstate()) == NULL) {
    err = "tlhelper: cannot create the keeper state";
  } else if ((err = hp_lanes_clone(ln, L, 2, K, 0, L, lua_gettop(L) - 3)) == NULL) {
    lua_getfield(L2, mt2, "__lanesclone");          /* L2: chunk M2 mt2 fn */
    err = hp_lanes_clone(ln, K, -1, L2, mt2, L2, mt2 + 1);
    if (err == NULL) lua_remove(L2, mt2 + 1);
  }
  if (K != NULL) lua_close(K);
  if (err == NULL) {                                /* L2: chunk M2 mt2 clone */
    lua_remove(L2, 2);
    lua_remove(L2, 2);                              /* L2: chunk clone */
  }
  return err;
}

static void *hp_lane_main(void *p) {
  hp_lane *ln = (hp_lane *)p;
  if (lua_pcall(ln->L, ln->nargs, LUA_MULTRET, 0) == 0) {
    const char *err = hp_vals_get(ln->L, 1, lua_gettop(ln->L), &ln->results);
    ln->ok = err == NULL;
    if (err != NULL) snprintf(ln->err, sizeof ln->err, "%s", err);
  } else {
    hp_lane_fail(ln, ln->L, "");
  }
  lua_close(ln->L);
  ln->L = NULL;
  return NULL;
}

static int hp_lanes(lua_State *L) {
  static const char *const hows[] = {"direct", "linda", NULL};
  int linda = luaL_checkoption(L, 1, NULL, hows);
  hp_chunk c;
  hp_lane ln;
  const char *err;
  pthread_t th;
  luaL_checkany(L, 2);
  lua_pushvalue(L, 2);
  lua_insert(L, 1); /* v how v code ...: the chunk's fields from slot 4 */
  hp_chunk_init(L, &c, 4);
  lua_remove(L, 1);
  memset(&ln, 0, sizeof ln);
  if ((ln.L = luaL_newstate()) == NULL) {
    hp_chunk_free(&c);
    return luaL_error(L, "tlhelper: cannot create a state");
  }
  luaL_openlibs(ln.L);
  lua_getglobal(ln.L, "package");
  if (c.path) {
    lua_pushstring(ln.L, c.path);
    lua_setfield(ln.L, -2, "path");
  }
  if (c.cpath) {
    lua_pushstring(ln.L, c.cpath);
    lua_setfield(ln.L, -2, "cpath");
  }
  lua_pop(ln.L, 1);
  err = hp_lanes_prepare(&ln, L, linda, &c);
  if (err == NULL && !lua_checkstack(ln.L, c.args.n + 1)) err = "tlhelper: too many values";
  if (err == NULL) {
    hp_vals_push(ln.L, &c.args);
    ln.nargs = 1 + c.args.n;
    if (pthread_create(&th, NULL, hp_lane_main, &ln) != 0)
      err = "tlhelper: cannot create a thread";
    else
      pthread_join(th, NULL);
  }
  hp_chunk_free(&c);
  if (ln.L != NULL) lua_close(ln.L);
  if (err != NULL) {
    if (err != ln.err) snprintf(ln.err, sizeof ln.err, "%s", err);
    lua_pushstring(L, ln.err);
    return lua_error(L);
  }
  if (!ln.ok) {
    hp_vals_free(&ln.results);
    lua_pushstring(L, ln.err);
    return lua_error(L);
  }
  lua_settop(L, 0);
  hp_vals_push(L, &ln.results);
  hp_vals_free(&ln.results);
  return lua_gettop(L);
}

static int hp_worker_stop(lua_State *L) {
  hp_worker *w = (hp_worker *)luaL_checkudata(L, 1, HP_WORKER_MT);
  if (w->running) {
    pthread_mutex_lock(&w->lock);
    w->job = HP_QUIT;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->th, NULL);
    w->running = 0;
  }
  return 0;
}

/* ---- spawned threads with fresh states ---- */

typedef struct hp_spawn {
  pthread_t th;
  int joined;
  char *linger; /* barrier to wait on after closing the state */
  hp_chunk chunk;
} hp_spawn;

#define HP_SPAWN_MT "tlhelper.spawn"

static void *hp_spawn_main(void *p) {
  hp_spawn *s = (hp_spawn *)p;
  hp_chunk_run(&s->chunk);
  if (s->linger != NULL) hp_barrier_wait(s->linger);
  return NULL;
}

static int hp_spawn_start(lua_State *L, int code, const char *linger) {
  hp_spawn *s = (hp_spawn *)lua_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  s->joined = 1;
  luaL_getmetatable(L, HP_SPAWN_MT);
  lua_setmetatable(L, -2);
  lua_insert(L, 1);
  hp_chunk_init(L, &s->chunk, code + 1);
  if (linger != NULL && (s->linger = hp_strdup(linger, strlen(linger))) == NULL) {
    hp_chunk_free(&s->chunk);
    return luaL_error(L, "tlhelper: out of memory");
  }
  if (pthread_create(&s->th, NULL, hp_spawn_main, s) != 0) {
    hp_chunk_free(&s->chunk);
    return luaL_error(L, "tlhelper: cannot create a thread");
  }
  s->joined = 0;
  lua_settop(L, 1);
  return 1;
}

static int hp_spawn_new(lua_State *L) { return hp_spawn_start(L, 1, NULL); }

static int hp_spawn_linger(lua_State *L) {
  return hp_spawn_start(L, 2, luaL_checkstring(L, 1));
}

static int hp_spawn_join(lua_State *L) {
  hp_spawn *s = (hp_spawn *)luaL_checkudata(L, 1, HP_SPAWN_MT);
  int n;
  if (s->joined) return luaL_error(L, "tlhelper: already joined");
  pthread_join(s->th, NULL);
  s->joined = 1;
  free(s->linger);
  s->linger = NULL;
  if (!s->chunk.ok) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, s->chunk.err ? s->chunk.err : "?");
    hp_chunk_free(&s->chunk);
    return 2;
  }
  lua_pushboolean(L, 1);
  n = s->chunk.results.n;
  hp_vals_push(L, &s->chunk.results);
  hp_chunk_free(&s->chunk);
  return n + 1;
}

static int hp_spawn_gc(lua_State *L) {
  hp_spawn *s = (hp_spawn *)lua_touserdata(L, 1);
  if (!s->joined) {
    pthread_join(s->th, NULL);
    s->joined = 1;
    free(s->linger);
    hp_chunk_free(&s->chunk);
  }
  return 0;
}

static const luaL_Reg hp_worker_methods[] = {
  {"run", hp_worker_run},
  {"exec", hp_worker_exec},
  {"stop", hp_worker_stop},
  {NULL, NULL}
};

static const luaL_Reg hp_spawn_methods[] = {
  {"join", hp_spawn_join},
  {NULL, NULL}
};

static const luaL_Reg hp_funcs[] = {
  {"on_thread", hp_on_thread},
  {"worker", hp_worker_new},
  {"spawn", hp_spawn_new},
  {"spawn_linger", hp_spawn_linger},
  {"exec", hp_exec},
  {"lightuserdata", hp_lightuserdata},
  {"rawlen", hp_rawlen},
  {"lanes", hp_lanes},
  {"barrier", hp_barrier_new},
  {"wait", hp_wait},
  {NULL, NULL}
};

static void hp_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                        lua_CFunction gc) {
  luaL_newmetatable(L, name);
  hp_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

int luaopen_tlhelper(lua_State *L) {
  pthread_once(&hp_once, hp_init);
  hp_newclass(L, HP_WORKER_MT, hp_worker_methods, hp_worker_stop);
  hp_newclass(L, HP_SPAWN_MT, hp_spawn_methods, hp_spawn_gc);
  hp_newlib(L, hp_funcs);
  return 1;
}
