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
**   floor.nop      a light userdata, the address of double nop(void), which
**                  returns 0: for LuaJIT's FFI, the floor of one C call
*/
#include <stdint.h>

#include "lua.h"
#include "lauxlib.h"

int luaopen_floor(lua_State *L);

/* The lazy pair keeps its table in the userdata's user value (Lua 5.1
** and LuaJIT, whose environments must be tables: in a box, [1]) and init
** as upvalue 1.  Pushes the table, made and init run on the first call. */
#if LUA_VERSION_NUM >= 504
#define fl_getlazy(L) lua_getiuservalue(L, 1, 1)
#define fl_setlazy(L) lua_setiuservalue(L, 1, 1)
#elif LUA_VERSION_NUM >= 502
#define fl_getlazy(L) (lua_getuservalue(L, 1), lua_type(L, -1))
#define fl_setlazy(L) lua_setuservalue(L, 1)
#else
#define fl_getlazy(L) (lua_getfenv(L, 1), lua_rawgeti(L, -1, 1), lua_remove(L, -2), lua_type(L, -1))
#define fl_setlazy(L) (lua_getfenv(L, 1), lua_insert(L, -2), lua_rawseti(L, -2, 1), lua_pop(L, 1))
#endif

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

static void fl_lazy_table(lua_State *L) {
  if (fl_getlazy(L) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -1);
    fl_setlazy(L);
    lua_pushvalue(L, lua_upvalueindex(1));
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
#if LUA_VERSION_NUM < 502
  lua_createtable(L, 1, 0); /* the box */
  lua_setfenv(L, 2);
#endif
  lua_createtable(L, 0, 2); /* its metatable */
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, fl_lazy_index, 1);
  lua_setfield(L, 3, "__index");
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, fl_lazy_newindex, 1);
  lua_setfield(L, 3, "__newindex");
  lua_setmetatable(L, 2);
  return 1;
}

static double fl_nop(void) {
  return 0;
}

static int fl_empty(lua_State *L) {
  fl_make(L, fl_nothing, fl_nothing);
  return 1;
}

int luaopen_floor(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushlightuserdata(L, (void *)(uintptr_t)fl_nop);
  lua_setfield(L, -2, "nop");
  lua_pushcfunction(L, fl_lazy);
  lua_setfield(L, -2, "lazy");
  lua_pushcfunction(L, fl_new);
  lua_setfield(L, -2, "new");
  lua_pushcfunction(L, fl_empty);
  lua_setfield(L, -2, "empty");
  return 1;
}
