/*
** host.c: a C host of an installed threadlocal, the way a packager's users
** build one.  Through pkg-config:
**
**     cc -o host host.c $(pkg-config --cflags --libs threadlocal) -llua5.4
**
** or through CMake, with CMakeLists.txt beside this file.  It links the
** static library in, opens it in a Lua 5.4 state with luaL_requiref, and uses
** a Local and a shared local from Lua and the shared local from C, on the
** main thread and on a second OS thread that the state is handed to.  It
** prints one line and exits 0 only if every check held.
*/
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

static int failures;
static lua_State *L;
static threadlocal_shared *sh;

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "host: failed: %s\n", what);
    failures++;
  }
}

/* Runs code in L and leaves its nresults results on the stack. */
static int run(const char *code, int nresults) {
  if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, nresults, 0) != LUA_OK) {
    fprintf(stderr, "host: lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    failures++;
    return 0;
  }
  return 1;
}

/* The second thread: the state is handed to it while main waits. */
static void *other_thread(void *arg) {
  threadlocal_value v;
  uint64_t *id = arg;
  *id = threadlocal_id();
  check(threadlocal_get(sh, "answer", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_NIL,
        "the main thread's C value is not seen by another thread");
  if (run("return tl.n, threadlocal.shared('consumer').answer", 2)) {
    check(lua_tointeger(L, -2) == 1, "init ran for the new thread (n == 1)");
    check(lua_isnil(L, -1), "the shared field is the thread's own (nil)");
    lua_pop(L, 2);
  }
  check(threadlocal_set_integer(sh, "answer", 7) == THREADLOCAL_OK, "set from C on thread 2");
  return NULL;
}

int main(void) {
  threadlocal_value v;
  pthread_t t;
  uint64_t other_id = 0;

  /* The C API works before any state exists. */
  check(threadlocal_shared_open("consumer", 8, &sh) == THREADLOCAL_OK, "shared_open");
  check(threadlocal_set_integer(sh, "answer", 42) == THREADLOCAL_OK, "set_integer");

  L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  luaL_requiref(L, "threadlocal", luaopen_threadlocal, 1);
  lua_pop(L, 1);

  if (run("local threadlocal = require 'threadlocal'\n"
          "tl = threadlocal.new(function(self, n) self.n = n end, 1)\n"
          "tl.n = tl.n + 1\n"
          "local sh = threadlocal.shared('consumer')\n"
          "assert(sh.answer == 42, 'the value set from C is missing')\n"
          "sh.greeting = 'hello from Lua'\n"
          "return threadlocal.version, tl.n",
          2)) {
    check(strcmp(lua_tostring(L, -2), THREADLOCAL_VERSION) == 0,
          "threadlocal.version is the header's THREADLOCAL_VERSION");
    check(lua_tointeger(L, -1) == 2, "the Local holds 2 on the main thread");
    lua_pop(L, 2);
  }
  check(threadlocal_get(sh, "greeting", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_STRING &&
            strcmp(v.u.string.ptr, "hello from Lua") == 0,
        "C reads the string Lua set");

  check(pthread_create(&t, NULL, other_thread, &other_id) == 0, "pthread_create");
  pthread_join(t, NULL);
  check(other_id != 0 && other_id != threadlocal_id(), "the threads have distinct ids");

  /* Back on the main thread: its own values are intact. */
  if (run("return tl.n, threadlocal.shared('consumer').answer", 2)) {
    check(lua_tointeger(L, -2) == 2 && lua_tointeger(L, -1) == 42,
          "the main thread's values are untouched by the other thread");
    lua_pop(L, 2);
  }
  lua_close(L);

  if (failures > 0) return 1;
  printf("consumer: threadlocal %s: a Local and a shared local, from Lua and C, on 2 threads\n",
         THREADLOCAL_VERSION);
  return 0;
}
