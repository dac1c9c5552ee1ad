/*
** ctest.h: what the C test programs under spec/c/ share.  Each defines
** CTEST_NAME (the prefix of its TAP lines) before including this, reports
** every result through check() and returns exit_status() from main.
*/
#ifndef CTEST_H
#define CTEST_H

#include <stdio.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

static int failures;

/* Prints one TAP line. */
static void check(int ok, const char *what) {
  printf("%s - " CTEST_NAME ": %s\n", ok ? "ok" : "not ok", what);
  fflush(stdout);
  if (!ok) failures++;
}

/* The program's exit status: 0 if every check passed, 1 otherwise. */
static int exit_status(void) {
  return failures != 0;
}

/* A fresh state with the standard libraries and threadlocal (as the global
** `threadlocal` and in package.loaded), opened as luaL_requiref would,
** which Lua 5.1 lacks.  alloc is the state's allocator; NULL for Lua's own.
** Returns NULL if the state cannot be made. */
static lua_State *new_state(lua_Alloc alloc) {
  lua_State *L = alloc != NULL ? lua_newstate(alloc, NULL) : luaL_newstate();
  if (L == NULL) return NULL;
  luaL_openlibs(L);
  lua_pushcfunction(L, luaopen_threadlocal);
  lua_pushliteral(L, "threadlocal");
  lua_call(L, 1, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "threadlocal");
  lua_pop(L, 1);
  lua_setglobal(L, "threadlocal");
  return L;
}

/* Runs code in L; returns 1 if it ran without error. */
static int run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != 0) {
    printf("# lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

#endif
