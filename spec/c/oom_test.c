/*
** oom_test: out of memory, at every allocation of a scripted run.
**
** Lua's allocator (lua_newstate) and the module's (threadlocal_set_allocator)
** share one counter.  A first run counts the allocations of the script;
** then, for every N, the script runs again with allocation N failing: each
** step must succeed or raise "not enough memory" (C API steps: return
** THREADLOCAL_OK or THREADLOCAL_ERRMEM, and a failed one changes nothing:
** node_steps), nothing may crash, and afterwards
** the state must still work.  Also: when the GC finalizer that purges
** exited threads' values cannot make its successor, collection resumes.
** Built with ASan+LSan by make test, which
** catches what a failure path would leak or touch after freeing.
** Prints TAP lines; exits non-zero if any check failed.
*/
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CTEST_NAME "oom"
#include "ctest.h"

static long count, fail_at = -1, failed;
static int fail_all; /* every allocation fails while set */

static int should_fail(void) {
  if (fail_all) return 1;
  if (fail_at >= 0 && count++ == fail_at) {
    failed++;
    return 1;
  }
  if (fail_at < 0) count++;
  return 0;
}

static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if ((ptr == NULL || nsize > osize) && should_fail()) return NULL; /* shrinking never fails */
  return realloc(ptr, nsize);
}

/* Blocks the module holds: after a run, as many as after the first (which
** made the shared locals and defaults that stay), or a failure leaked one
** that something still points to (out of LeakSanitizer's sight). */
static long live_blocks;

static void *tl_alloc(void *ud, void *ptr, size_t size) {
  void *p;
  (void)ud;
  if (size == 0) {
    if (ptr != NULL) live_blocks--;
    free(ptr);
    return NULL;
  }
  if (should_fail()) return NULL;
  if ((p = realloc(ptr, size)) != NULL && ptr == NULL) live_blocks++;
  return p;
}

/* The scripted run: Locals and shared locals, every kind of value.  Each
** step stands alone, so any error but "not enough memory" is a bug. */
static const char *steps[] = {
  "local T = require 'threadlocal'\n"
  "local tl = T.new(function(self, n) self.n = n; self.t = { n } end, 7)\n"
  "tl.s = ('x'):rep(100); tl.k = tl.n + 1\n"
  "assert(T.fields(tl).n == 7 and tl.k == 8)\n"
  "for id, f in T.threads(tl) do assert(f.n == 7) end\n"
  "T.clear(tl); assert(tl.n == 7 and tl.k == nil)\n",

  "local T = require 'threadlocal'\n"
  "local sh = T.shared('oom', { db = 'primary', opts = { retries = 3 } })\n"
  "sh.i, sh.f, sh.b = 42, 0.5, true\n"
  "sh.s = ('y'):rep(300)\n"
  "assert(sh.i == 42 and sh.f == 0.5 and sh.b and #sh.s == 300 and sh.opts.retries == 3)\n",

  "local T = require 'threadlocal'\n"
  "local sh = T.shared('oom')\n"
  "sh.req = { headers = { host = 'a', list = { 1, 2, 3 } }, n = 1 }\n"
  "sh.req.headers.host = 'b'; sh.req.headers.extra = { 'z' }\n"
  "assert(sh.req.headers.host == 'b' and sh.req.headers.extra[1] == 'z')\n"
  "local p = sh.req; sh.copy = p; assert(sh.copy.n == 1)\n"
  "assert(T.fields(sh).req.n == 1)\n"
  "for k, v in debug.getmetatable(sh).__pairs(sh) do end\n" /* 5.1's pairs has no __pairs */
  "sh.req, sh.copy = nil, nil; assert(sh.req == nil)\n",

  "local T = require 'threadlocal'\n"
  "local o = T.shared('oom.other'); o.x = { 1, { 2 } }; assert(o.x[2][1] == 2)\n"
  "T.clear(T.shared('oom')); assert(T.shared('oom').db == 'primary')\n",

  "local T = require 'threadlocal'\n"
  "local l2 = T.new(); l2.x = {}; l2 = nil; collectgarbage(); collectgarbage()\n",

  /* Context: a call that fails changes nothing; a close that fails can be
  ** called again (only one allocation fails per run). */
  "local T = require 'threadlocal'\n"
  "local l = T.new(); l.a = 1\n"
  "local ok, s = pcall(T.scope, l, { a = 2, b = 3, c = {} })\n"
  "if ok then assert(l.a == 2 and l.b == 3); if not pcall(s.close, s) then s:close() end end\n"
  "assert(l.a == 1 and l.b == nil and l.c == nil, 'a Local scope left its fields changed')\n"
  "if not ok then error(s, 0) end\n"
  "local sh = T.shared('oom.ctx'); sh.a = 1\n"
  "ok, s = pcall(T.scope, sh, { a = 2, t = { x = 1 } })\n"
  "if ok then assert(sh.a == 2 and sh.t.x == 1); if not pcall(s.close, s) then s:close() end end\n"
  "assert(sh.a == 1 and sh.t == nil, 'a shared scope left its fields changed')\n"
  "if not ok then error(s, 0) end\n"
  "local r\n"
  "ok, r = pcall(T.run, { ['oom.ctx'] = { a = 5 } }, function() return sh.a end)\n"
  "assert(sh.a == 1, 'run left the fields changed')\n"
  "if not ok then error(r, 0) end\n"
  "assert(r == 5 and T.with(l, { a = 9 }, function() return l.a end) == 9 and l.a == 1)\n"
  "assert(T.capture(sh)['oom.ctx'].a == 1 and T.fields(sh).a == 1)\n"
  "local C = require 'threadlocal.context'\n"
  "local v = C.var('v', 0); local tok = v:set(1); assert(v:get() == 1); v:reset(tok)\n"
  "assert(v:get() == 0)\n",

  /* init that clears its own fields goes on with empty ones; release()
  ** inside init is refused */
  "local T = require 'threadlocal'\n"
  "local tl = T.new(function(self) self.a = { 1 }; T.clear(self); self.b = { 2 }\n"
  "  local ok, e = pcall(T.release)\n"
  "  if not ok and e ~= 'threadlocal: release() called while an init runs on this thread' then error(e, 0) end\n"
  "  assert(not ok); T.clear(self); assert(#self == 0); self.c = T.fields(self) end)\n"
  "assert(tl.a == nil and tl.b == nil and tl.c)\n"
  "T.clear(tl); assert(tl.c and tl.a == nil)\n",
  NULL
};

static const char *verify =
  "local T = require 'threadlocal'\n"
  "local l = T.new(); l.x = 1; assert(l.x == 1)\n"
  "local s = T.shared('oom.verify'); s.y = { 1 }; assert(s.y[1] == 1)\n"
  "assert(T.shared('oom').db == 'primary')\n";

/* Lua 5.1's require leaves a marker in package.loaded when a loader fails
** ("loop or previous error loading module"): drop it, as 5.2 and later
** leave nothing, so that the next step requires the module again.  The
** marker is a light userdata in 5.1 and, in LuaJIT, a value that type()
** calls a number: anything but a table (a module) or nil. */
static void forget_failed_require(lua_State *L) {
  static const char *const names[] = {"threadlocal", "threadlocal.context", NULL};
  int i;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  for (i = 0; names[i] != NULL; i++) {
    lua_getfield(L, -1, names[i]);
    if (!lua_isnil(L, -1) && !lua_istable(L, -1)) {
      lua_pushnil(L);
      lua_setfield(L, -3, names[i]);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}


/* The calls on nodes (threadlocal.h, "Reading and writing any value"):
** each returns OK or ERRMEM, and one that fails leaves the value as it
** was.  Returns the number of unexpected outcomes. */
static int dtor_runs, dtor_owed, node_memerrors;

static void oom_dtor(void *p) {
  (void)p;
  dtor_runs++;
}

#define STEP(call) \
  ((rc = (call)) == THREADLOCAL_OK ? rc : rc == THREADLOCAL_ERRMEM ? (node_memerrors++, rc) \
   : (printf("# %s returned %d\n", #call, rc), bad++, rc))

static int node_steps(void) {
  threadlocal_shared *sh, *d;
  threadlocal_node root, t, inner;
  threadlocal_value k, v, path[2];
  threadlocal_iter it;
  int bad = 0, rc, n = 0, built = 1;
  static const char longkey[] = "a key that is longer than fifteen bytes";
  if (STEP(threadlocal_shared_open_cstr("oom.nodes", &sh)) != THREADLOCAL_OK) return bad;
  threadlocal_root(sh, &root);
  k = threadlocal_string("h");
  if (STEP(threadlocal_node_newtable(&root, &k, &t)) != THREADLOCAL_OK) {
    if (rc == THREADLOCAL_ERRMEM && threadlocal_node_get(&root, &k, 1, &v) == THREADLOCAL_OK &&
        v.type != THREADLOCAL_NIL)
      bad++;
    return bad;
  }
  k = threadlocal_string(longkey);
  v = threadlocal_string("example.org");
  if (STEP(threadlocal_node_set(&t, &k, &v)) == THREADLOCAL_ERRMEM) {
    built = 0;
    if (threadlocal_node_get(&t, &k, 1, &v) != THREADLOCAL_OK || v.type != THREADLOCAL_NIL) bad++;
  }
  k = threadlocal_integer(7);
  if (STEP(threadlocal_node_set_pointer(&t, &k, &dtor_runs, oom_dtor)) == THREADLOCAL_OK)
    dtor_owed++;
  else
    built = 0;
  k = threadlocal_float(0.5);
  if (STEP(threadlocal_node_newtable(&t, &k, &inner)) == THREADLOCAL_OK) {
    k = threadlocal_boolean(1);
    v = threadlocal_integer(1);
    if (STEP(threadlocal_node_set(&inner, &k, &v)) != THREADLOCAL_OK) built = 0;
  } else
    built = 0;
  path[0] = threadlocal_string("h");
  path[1] = threadlocal_string(longkey);
  STEP(threadlocal_node_get(&root, path, 2, &v));
  STEP(threadlocal_node_child(&root, path, 1, &inner));
  if (STEP(threadlocal_node_iter(&root, &it)) == THREADLOCAL_OK)
    while (threadlocal_next(&it, &k, &v) == THREADLOCAL_OK && k.type != THREADLOCAL_NIL) n++;
  if (rc == THREADLOCAL_OK && n != 1) bad++;
  /* every run gives equal defaults: only the first that gets through fixes them */
  if (built && STEP(threadlocal_shared_open_cstr("oom.cdefaults", &d)) == THREADLOCAL_OK)
    STEP(threadlocal_set_defaults(d, &t));
  k = threadlocal_string("h");
  STEP(threadlocal_node_delete(&root, &k)); /* never allocates */
  return bad;
}

/* Runs the script once; returns the number of unexpected outcomes. */
static int run_script(int *memerrors) {
  lua_State *L;
  threadlocal_shared *sh;
  int i, bad = 0, rc;
  long saved = fail_at;
  fail_at = -1; /* the state and its libraries never fail: they are not ours */
  L = lua_newstate(lua_alloc, NULL);
  if (L == NULL) return 1;
  luaL_openlibs(L);
  lua_getglobal(L, "package"); /* require opens it, from package.preload */
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_threadlocal);
  lua_setfield(L, -2, "threadlocal");
  lua_pop(L, 2);
  /* LuaJIT's own luaopen_ffi is not safe when an allocation fails: the
  ** state then crashes in lua_close, with or without this module.  The
  ** module requires "ffi" on first need with the JIT on (a Local made, a
  ** shared local read often); loaded here, its failures stay out of the
  ** count. */
  if (luaL_dostring(L, "if jit then require 'ffi' end") != 0) {
    lua_close(L);
    return 1;
  }
  fail_at = saved;
  for (i = 0; steps[i] != NULL; i++) {
    if (luaL_loadstring(L, steps[i]) != 0 || lua_pcall(L, 0, 0, 0) != 0) {
      const char *msg = lua_tostring(L, -1);
      if (msg == NULL || strcmp(msg, "not enough memory") != 0) {
        printf("# step %d, allocation %ld failing: %s\n", i + 1, saved, msg ? msg : "(not a string)");
        bad++;
      } else
        (*memerrors)++;
      lua_pop(L, 1);
      forget_failed_require(L);
    }
  }
  /* the C API */
  rc = threadlocal_shared_open("oom.c", 5, &sh);
  if (rc == THREADLOCAL_OK) {
    int r1 = threadlocal_set_string(sh, "s", "hello", 5);
    int r2 = threadlocal_set_integer(sh, "i", 1);
    int r3 = threadlocal_clear(sh);
    if (r1 > THREADLOCAL_ERRMEM || r2 > THREADLOCAL_ERRMEM || r3 != THREADLOCAL_OK) bad++;
  } else if (rc != THREADLOCAL_ERRMEM)
    bad++;
  bad += node_steps();
  fail_at = -1; /* then the state must still work */
  if (luaL_dostring(L, verify) != 0) {
    printf("# afterwards: %s\n", lua_tostring(L, -1));
    bad++;
  }
  lua_close(L);
  /* this thread's shared data, as a thread exit would; refused only while
  ** an init runs, so a refusal here means an init left its mark behind */
  if (threadlocal_release() != THREADLOCAL_OK) {
    printf("# release refused after the run (allocation %ld failing)\n", saved);
    bad++;
  }
  return bad;
}

/* The GC finalizer that purges exited threads' values makes its successor
** each cycle; if that runs out of memory, collection must resume anyway. */
static lua_State *gcL;

static int full_collect(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}

static void *store_and_exit(void *p) {
  (void)p;
  run(gcL, "coroutine.wrap(function() tl.v = gcobj() end)()");
  return NULL;
}

static int finalizer_oom(void) {
  pthread_t th;
  int collected;
  gcL = new_state(lua_alloc);
  if (gcL == NULL || !run(gcL, "tl = threadlocal.new(); collected = 0\n"
                                "local function count() collected = collected + 1 end\n"
                                /* 5.1 and LuaJIT finalize only userdata */
                                "if newproxy then\n"
                                "  function gcobj() local u = newproxy(true)\n"
                                "    getmetatable(u).__gc = count; return u end\n"
                                "else\n"
                                "  local mt = { __gc = count }\n"
                                "  function gcobj() return setmetatable({}, mt) end\n"
                                "end"))
    return 0;
  pthread_create(&th, NULL, store_and_exit, NULL);
  pthread_join(th, NULL);
  /* This cycle's finalizer cannot make the next one.  Lua 5.1 passes the
  ** finalizer's error on to the collection's caller: collect under pcall. */
  lua_pushcfunction(gcL, full_collect);
  fail_all = 1;
  (void)lua_pcall(gcL, 0, 0, 0);
  fail_all = 0;
  lua_settop(gcL, 0);
  pthread_create(&th, NULL, store_and_exit, NULL); /* a Local access in between */
  pthread_join(th, NULL);
  if (!run(gcL, "collectgarbage(); collectgarbage()")) return 0;
  lua_getglobal(gcL, "collected");
  collected = (int)lua_tointeger(gcL, -1);
  lua_close(gcL);
  printf("# %d of 2 exited threads' values collected\n", collected);
  return collected == 2;
}

int main(void) {
  long total, n, baseline, leaks = 0;
  int bad = 0, memerrors = 0, runs = 0, dummy = 0;
  char msg[128];
  threadlocal_set_allocator(tl_alloc, NULL);
  count = 0;
  fail_at = -1;
  bad += run_script(&dummy);
  total = count;
  printf("# the scripted run makes %ld allocations\n", total);
  baseline = live_blocks;
  for (n = 0; n < total; n++) {
    count = 0;
    failed = 0;
    fail_at = n;
    bad += run_script(&memerrors);
    runs++;
    if (live_blocks != baseline) {
      printf("# allocation %ld failing: the module holds %ld blocks, not %ld\n", n, live_blocks,
             baseline);
      leaks++;
      baseline = live_blocks;
    }
  }
  printf("# %d runs, %d steps raised \"not enough memory\"\n", runs, memerrors);
  snprintf(msg, sizeof msg,
           "every operation succeeded or raised not enough memory, at every one of %ld allocations",
           total);
  check(bad == 0, msg);
  printf("# %d node calls returned THREADLOCAL_ERRMEM\n", node_memerrors);
  check(node_memerrors > 0 && dtor_runs == dtor_owed && dtor_owed > 0,
        "a pointer's destructor ran once for each node_set_pointer that succeeded, never for one "
        "that failed");
  check(memerrors > 0, "failures were injected and reported");
  check(leaks == 0, "after every run the module holds as many blocks as after the first");
  check(finalizer_oom(),
        "collection of exited threads' values resumes after a finalizer ran out of memory");
  threadlocal_set_allocator(NULL, NULL);
  return exit_status();
}
