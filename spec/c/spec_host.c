/*
** spec_host: a minimal `lua` for running the specs inside a host built with
** sanitizers:  spec_host SCRIPT [ARGS...]   (e.g. /usr/bin/busted -o TAP spec)
**
** It closes its state before exiting, also when the script calls os.exit,
** so that LeakSanitizer sees every allocation freed.
*/
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static char sh_exitkey; /* its address keys the exit code in the registry */

static int sh_exit(lua_State *L) { /* os.exit: unwind to main, then close */
  int code = lua_isboolean(L, 1) ? (lua_toboolean(L, 1) ? 0 : 1) : (int)luaL_optinteger(L, 1, 0);
  lua_pushlightuserdata(L, &sh_exitkey);
  lua_pushinteger(L, code);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, &sh_exitkey);
  return lua_error(L);
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, status, code = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s SCRIPT [ARGS...]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, sh_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  status = luaL_loadfile(L, argv[1]);
  if (status == 0) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 0);
  }
  if (status != 0) {
    if (lua_touserdata(L, -1) == &sh_exitkey) {
      lua_pushlightuserdata(L, &sh_exitkey);
      lua_rawget(L, LUA_REGISTRYINDEX);
      code = (int)lua_tointeger(L, -1);
    } else {
      fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
      code = 1;
    }
  }
  lua_close(L);
  return code;
}
