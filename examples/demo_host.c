/*
** demo_host: an embedding host that runs ONE Lua state from two OS threads.
**
** Threads A and B take turns through a lock around the state (as Python's
** GIL does): a thread holds the lock only while it calls into Lua.  Each
** thread calls init_data(n), which stores n * 100 in a Local, then three
** times sleeps (without the lock, so the other thread runs) and calls
** show(name), which prints the number the Local holds for the calling thread.
**
** The host links threadlocal in and puts luaopen_threadlocal in
** package.preload (which every Lua version has), so the script's
** `require "threadlocal"` needs no file on package.cpath.
**
**   usage: demo_host examples/demo.lua
*/
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

typedef struct demo_worker {
  const char *name;
  int n;
  long delay_ms; /* between two shows: A and B differ so their turns interleave */
} demo_worker;

static lua_State *demo_L;
static pthread_mutex_t demo_gil = PTHREAD_MUTEX_INITIALIZER;
static int demo_failed;

/* Calls the global function fname(arg) with the lock held. */
static void demo_call(const char *fname, const char *sarg, int narg) {
  pthread_mutex_lock(&demo_gil);
  lua_getglobal(demo_L, fname);
  if (sarg != NULL)
    lua_pushstring(demo_L, sarg);
  else
    lua_pushinteger(demo_L, narg);
  if (lua_pcall(demo_L, 1, 0, 0) != 0) {
    fprintf(stderr, "demo_host: %s: %s\n", fname, lua_tostring(demo_L, -1));
    lua_pop(demo_L, 1);
    demo_failed = 1;
  }
  fflush(stdout);
  pthread_mutex_unlock(&demo_gil);
}

static void demo_sleep(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}

static void *demo_thread(void *p) {
  demo_worker *w = (demo_worker *)p;
  int i;
  demo_call("init_data", NULL, w->n);
  for (i = 0; i < 3; i++) {
    demo_sleep(w->delay_ms);
    demo_call("show", w->name, 0);
  }
  return NULL;
}

int main(int argc, char **argv) {
  demo_worker workers[2] = {{"A", 1, 100}, {"B", 2, 130}};
  pthread_t threads[2];
  int i;
  if (argc != 2) {
    fprintf(stderr, "usage: %s script.lua\n", argv[0]);
    return 2;
  }
  demo_L = luaL_newstate();
  if (demo_L == NULL) {
    fprintf(stderr, "demo_host: cannot create a Lua state\n");
    return 1;
  }
  luaL_openlibs(demo_L);
  lua_getglobal(demo_L, "package");
  lua_getfield(demo_L, -1, "preload");
  lua_pushcfunction(demo_L, luaopen_threadlocal);
  lua_setfield(demo_L, -2, "threadlocal");
  lua_pop(demo_L, 2);
  if (luaL_dofile(demo_L, argv[1]) != 0) {
    fprintf(stderr, "demo_host: %s\n", lua_tostring(demo_L, -1));
    lua_close(demo_L);
    return 1;
  }
  for (i = 0; i < 2; i++)
    if (pthread_create(&threads[i], NULL, demo_thread, &workers[i]) != 0) {
      fprintf(stderr, "demo_host: cannot create a thread\n");
      return 1;
    }
  for (i = 0; i < 2; i++) pthread_join(threads[i], NULL);
  lua_close(demo_L);
  return demo_failed;
}
