/*
** tlbench: what bench/bench.lua cannot do in Lua.
**
**   tlbench.clock()            monotonic time in ns
**   tlbench.scale(k, n, code)  k threads each run `code` (a chunk returning
**                              a loop function) in their own fresh state,
**                              started together at a barrier; returns the
**                              wall time in ns of k * loop(n)
**   tlbench.rss()              resident set size of the process, in KiB
**   tlbench.heap()             bytes in use in malloc's main arena and mmaps
**   tlbench.trim()             return free heap memory to the system
**   tlbench.capi(op, n)        ns for n C API calls from a C loop: op is
**                              "get" (threadlocal_get) or "set"
**                              (threadlocal_set_integer), on one field
**   tlbench.lifecycle(n, with) ns for n short-lived states, as a host that
**                              makes one per request: new state, open the
**                              standard libraries, run a chunk, close.  With
**                              the module, the host opens it (luaL_requiref)
**                              and the chunk requires it and touches a shared
**                              local; without, the same chunk shape touches
**                              a standard library instead
**
** The C API runs on the copy of threadlocal compiled into this module.
*/
#define _GNU_SOURCE /* mallinfo2, malloc_trim */

#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

int luaopen_tlbench(lua_State *L);

static lua_Integer tb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (lua_Integer)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int tb_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)tb_now());
  return 1;
}

typedef struct tb_scaler {
  pthread_t th;
  const char *code, *cpath;
  lua_Integer n;
  pthread_barrier_t *start;
  int ok;
  char err[200];
} tb_scaler;

static void *tb_scale_main(void *p) {
  tb_scaler *s = (tb_scaler *)p;
  lua_State *L = luaL_newstate();
  int loaded;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, s->cpath);
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  loaded = luaL_loadstring(L, s->code) == 0 && lua_pcall(L, 0, 1, 0) == 0;
  pthread_barrier_wait(s->start); /* every state is ready */
  if (loaded) {
    lua_pushnumber(L, (lua_Number)s->n);
    s->ok = lua_pcall(L, 1, 0, 0) == 0;
  }
  if (!s->ok) snprintf(s->err, sizeof s->err, "%s", lua_tostring(L, -1));
  lua_close(L);
  return NULL;
}

static int tb_scale(lua_State *L) {
  int k = (int)luaL_checkinteger(L, 1), i, ok = 1;
  lua_Integer n = luaL_checkinteger(L, 2), t0;
  const char *code = luaL_checkstring(L, 3);
  tb_scaler *s;
  pthread_barrier_t start;
  luaL_argcheck(L, k >= 1 && k <= 64, 1, "1 to 64 threads");
  s = (tb_scaler *)lua_newuserdata(L, (size_t)k * sizeof *s);
  memset(s, 0, (size_t)k * sizeof *s);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "cpath");
  pthread_barrier_init(&start, NULL, (unsigned)k + 1);
  for (i = 0; i < k; i++) {
    s[i].code = code;
    s[i].cpath = lua_tostring(L, -1);
    s[i].n = n;
    s[i].start = &start;
    pthread_create(&s[i].th, NULL, tb_scale_main, &s[i]);
  }
  pthread_barrier_wait(&start);
  t0 = tb_now();
  for (i = 0; i < k; i++) pthread_join(s[i].th, NULL);
  lua_pushnumber(L, (lua_Number)(tb_now() - t0));
  pthread_barrier_destroy(&start);
  for (i = 0; i < k; i++) ok &= s[i].ok;
  if (!ok) return luaL_error(L, "tlbench.scale: %s", s[0].err[0] ? s[0].err : "a thread failed");
  return 1;
}

static int tb_rss(lua_State *L) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  if (f != NULL) fclose(f);
  lua_pushinteger(L, resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024));
  return 1;
}

static int tb_heap(lua_State *L) {
  struct mallinfo2 mi = mallinfo2();
  lua_pushnumber(L, (lua_Number)(mi.uordblks + mi.hblkhd));
  return 1;
}

static int tb_trim(lua_State *L) {
  (void)L;
  malloc_trim(0);
  return 0;
}

static int tb_capi(lua_State *L) {
  const char *op = luaL_checkstring(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2), i, t0;
  threadlocal_shared *sh;
  threadlocal_value v;
  int64_t sum = 0;
  if (threadlocal_shared_open("bench.capi", 10, &sh) != THREADLOCAL_OK ||
      threadlocal_set_integer(sh, "k", 1) != THREADLOCAL_OK)
    return luaL_error(L, "tlbench.capi: out of memory");
  if (strcmp(op, "get") == 0) {
    t0 = tb_now();
    for (i = 0; i < n; i++) {
      threadlocal_get(sh, "k", &v);
      sum += v.u.integer;
    }
  } else {
    t0 = tb_now();
    for (i = 0; i < n; i++) threadlocal_set_integer(sh, "k", i);
  }
  lua_pushnumber(L, (lua_Number)(tb_now() - t0));
  lua_pushnumber(L, (lua_Number)sum); /* keeps the get loop from being optimised away */
  return 2;
}

/* Without the module: the same shape on a standard library (table.pack is
** 5.2+; the targets are for 5.4). */
static const char *const tb_chunks[2] = {
#if LUA_VERSION_NUM >= 502
  "local tl = require 'table'; local sh = tl.pack('req'); sh.n = (sh.n or 0) + 1",
#else
  "local tl = require 'table'; local sh = { tl.concat({ 'req' }) }; sh.n = (sh.n or 0) + 1",
#endif
  "local tl = require 'threadlocal'; local sh = tl.shared('req'); sh.n = (sh.n or 0) + 1",
};

static int tb_lifecycle(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1), i, t0;
  int with = lua_toboolean(L, 2);
  t0 = tb_now();
  for (i = 0; i < n; i++) {
    lua_State *S = luaL_newstate();
    if (S == NULL) return luaL_error(L, "tlbench.lifecycle: out of memory");
    luaL_openlibs(S);
    if (with) {
      lua_pushcfunction(S, luaopen_threadlocal); /* luaL_requiref, on every version */
      lua_pushliteral(S, "threadlocal");
      lua_call(S, 1, 1);
      lua_getfield(S, LUA_REGISTRYINDEX, "_LOADED");
      lua_pushvalue(S, -2);
      lua_setfield(S, -2, "threadlocal");
      lua_pop(S, 2);
    }
    if (luaL_dostring(S, tb_chunks[with]) != 0) {
      lua_pushstring(L, lua_tostring(S, -1));
      lua_close(S);
      return lua_error(L);
    }
    lua_close(S);
  }
  lua_pushnumber(L, (lua_Number)(tb_now() - t0));
  return 1;
}

static const luaL_Reg tb_funcs[] = {
  {"lifecycle", tb_lifecycle},
  {"clock", tb_clock},
  {"scale", tb_scale},
  {"rss", tb_rss},
  {"heap", tb_heap},
  {"trim", tb_trim},
  {"capi", tb_capi},
  {NULL, NULL}
};

int luaopen_tlbench(lua_State *L) {
  lua_newtable(L);
#if LUA_VERSION_NUM == 501
  luaL_register(L, NULL, tb_funcs);
#else
  luaL_setfuncs(L, tb_funcs, 0);
#endif
  return 1;
}
