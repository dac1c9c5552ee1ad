/*
** floor: the baselines threadlocal's access costs are measured against.
**
**   floor.new()    a userdata whose C __index / __newindex rawget / rawset
**                  one fixed table (the floor: README, Speed)
**   floor.empty()  a userdata whose C __index / __newindex do nothing
*/
#include "lua.h"
#include "lauxlib.h"

int luaopen_floor(lua_State *L);

static int fl_index(lua_State *L) {
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int fl_newindex(lua_State *L) {
  lua_rawset(L, lua_upvalueindex(1));
  return 0;
}

static int fl_nothing(lua_State *L) {
  (void)L;
  return 0;
}

static void fl_make(lua_State *L, lua_CFunction index, lua_CFunction newindex) {
  lua_newuserdata(L, 1);
  lua_createtable(L, 0, 2);
  lua_newtable(L); /* the fixed table */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, index, 1);
  lua_setfield(L, -3, "__index");
  lua_pushcclosure(L, newindex, 1);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
}

static int fl_new(lua_State *L) {
  fl_make(L, fl_index, fl_newindex);
  return 1;
}

static int fl_empty(lua_State *L) {
  fl_make(L, fl_nothing, fl_nothing);
  return 1;
}

int luaopen_floor(lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, fl_new);
  lua_setfield(L, -2, "new");
  lua_pushcfunction(L, fl_empty);
  lua_setfield(L, -2, "empty");
  return 1;
}
