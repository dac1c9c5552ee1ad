/*
** floor: the baselines threadlocal's access costs are measured against.
**
**   floor.new()    a userdata whose C __index / __newindex rawget / rawset
**                  one fixed table (the floor: README, Speed)
**   floor.empty()  a userdata whose C __index / __newindex do nothing
**   floor.lazy(init)
**                  as floor.new(), but the table is made on the first
**                  access, which then runs init(self) as a Local's first
**                  access on a thread does: the floor for that first access
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

/* Upvalue 1 of the lazy pair: a box whose [1] is the table once made;
** upvalue 2: init.  Pushes the table. */
static void fl_lazy_table(lua_State *L) {
  lua_rawgeti(L, lua_upvalueindex(1), 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, lua_upvalueindex(1), 1);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushvalue(L, 1);
    lua_call(L, 1, 0);
  }
}

static int fl_lazy_index(lua_State *L) {
  fl_lazy_table(L);
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int fl_lazy_newindex(lua_State *L) {
  fl_lazy_table(L);
  lua_insert(L, 2);
  lua_rawset(L, 2);
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

static int fl_lazy(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_newuserdata(L, 1);    /* 2 */
  lua_createtable(L, 0, 2); /* 3: its metatable */
  lua_createtable(L, 1, 0); /* 4: the box */
  lua_pushvalue(L, 4);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, fl_lazy_index, 2);
  lua_setfield(L, 3, "__index");
  lua_pushvalue(L, 4);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, fl_lazy_newindex, 2);
  lua_setfield(L, 3, "__newindex");
  lua_pop(L, 1);
  lua_setmetatable(L, 2);
  return 1;
}

static int fl_empty(lua_State *L) {
  fl_make(L, fl_nothing, fl_nothing);
  return 1;
}

int luaopen_floor(lua_State *L) {
  lua_createtable(L, 0, 3);
  lua_pushcfunction(L, fl_lazy);
  lua_setfield(L, -2, "lazy");
  lua_pushcfunction(L, fl_new);
  lua_setfield(L, -2, "new");
  lua_pushcfunction(L, fl_empty);
  lua_setfield(L, -2, "empty");
  return 1;
}
