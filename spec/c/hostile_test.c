/*
** hostile_test: hostile scripts, keys and careless C hosts.
**
** White-box: it compiles the module in with TL_STATS, so that it can read
** the counters the core keeps then (slots probed, tables rebuilt, entries
** moved), and calls core functions directly.  Every check compares counts,
** or ratios with wide margins measured in the same run, never times.
**
**   depth    structures deepened through proxies stop at the nesting limit,
**            and every walk of them (free, copy, compare, clear, thread exit,
**            release) works on a thread with a 64 KiB stack
**   hash     keys crafted to share one hash under an unkeyed hash (strings,
**            integers, names in the registry) cost what random keys cost
**   window   a steady-size window of deletes and inserts rebuilds a table
**            only now and then, at every size
**   metamethods  every metamethod checks its argument 1
**   enroll   finalizers that run inside the module's allocations and touch
**            it lose no enrollment and make no second shared userdata
**   lengths  impossible lengths from a C host are bad arguments, and sizes
**            never overflow
**
** hostile_test [SECTION] runs one section.  Prints TAP lines; exits
** non-zero if any check failed.
*/
#define TL_STATS
#include "../../src/threadlocal.c"

#include <stdlib.h>

#define CTEST_NAME "hostile"
#include "ctest.h"

/* The small stack of the depth checks (enough under AddressSanitizer too). */
#ifndef SMALL_STACK
#define SMALL_STACK 65536
#endif

/* Runs f(arg) on a new thread with the given stack size, and joins it. */
static int on_thread(void *(*f)(void *), void *arg, size_t stack) {
  pthread_attr_t attr;
  pthread_t th;
  int rc = pthread_attr_init(&attr);
  if (rc == 0 && stack > 0) rc = pthread_attr_setstacksize(&attr, stack);
  if (rc == 0) rc = pthread_create(&th, &attr, f, arg);
  pthread_attr_destroy(&attr);
  if (rc == 0) rc = pthread_join(th, NULL);
  return rc == 0;
}

/* ---------------------------------------------------------------------- */
/* depth                                                                   */
/* ---------------------------------------------------------------------- */

/* Each chunk returns true when what it checks holds. */
static const char deep_lib[] =
  "T = threadlocal\n"
  "function deepen(p, n)\n" /* p.x.x... through proxies: levels added */
  "  for i = 1, n do\n"
  "    local ok, err = pcall(function() p.x = {} end)\n"
  "    if not ok then return i - 1, err end\n"
  "    p = p.x\n"
  "  end\n"
  "  return n\n"
  "end\n"
  "function height(t)\n" /* levels below t, Lua tables or proxies */
  "  local h = 0\n"
  "  for _, v in pairs(t) do\n"
  "    if type(v) == 'table' or type(v) == 'userdata' then\n"
  "      local c = height(v) + 1\n"
  "      if c > h then h = c end\n"
  "    end\n"
  "  end\n"
  "  return h\n"
  "end\n"
  "function nest(n)\n" /* a Lua table n levels deep */
  "  local t = {}\n"
  "  for _ = 1, n do t = { x = t } end\n"
  "  return t\n"
  "end\n"
  "TOODEEP = 'threadlocal: cannot store tables nested this deep'\n"
  "function bare(err) return (err:gsub('^[^:\\n]*:%d+: ', '')) end\n";

static const struct {
  const char *what, *code;
} deep_checks[] = {
  {"proxies deepen a shared local only to 100 levels",
   "local sh = T.shared('deep'); sh.a = {}\n"
   "local n, err = deepen(sh.a, 200000)\n"
   "return n == 99 and bare(err):find(TOODEEP, 1, true) == 1 and height(sh) == 100"},
  {"fields() copies the deepest structure",
   "return height(T.fields(T.shared('deep'))) == 100"},
  {"a proxy's table copied to the same depth is accepted",
   "local sh = T.shared('deep'); sh.b = sh.a; return height(sh.b) == 99"},
  {"a proxy's table copied deeper is refused, and nothing changes",
   "local sh = T.shared('deep')\n"
   "local ok, err = pcall(function() sh.a.x = sh.a end)\n"
   "local ok2, err2 = pcall(function() sh.c = { sh.b } end)\n"
   "return not ok and bare(err) == TOODEEP .. \" in field 'x'\" and not ok2 and\n"
   "  bare(err2):find(TOODEEP, 1, true) == 1 and height(sh.a) == 99 and sh.c == nil"},
  {"a Lua table stored deep may add only the levels left",
   "local sh = T.shared('deep'); sh.m = {}\n"
   "local p = sh.m; for _ = 1, 49 do p.x = {}; p = p.x end\n" /* p at depth 50 */
   "local ok = pcall(function() p.y = nest(49) end)\n"        /* 51 .. 100 */
   "local bad = pcall(function() p.z = nest(50) end)\n"
   "return ok and not bad and p.z == nil and height(sh.m) == 99"},
  {"comparing deep defaults, and fields made from them",
   "local d = nest(100)\n"
   "local a = T.shared('deepdef', d); local b = T.shared('deepdef', nest(100))\n"
   "local ok = pcall(T.shared, 'deepdef2', nest(101))\n"
   "return a == b and height(a) == 100 and not ok"},
  {"clear frees the deepest structure",
   "local sh = T.shared('deep'); T.clear(sh); return sh.a == nil"},
  {"the structure is built again, for the thread's exit to free",
   "local sh = T.shared('deep'); sh.a = {}; return deepen(sh.a, 200000) == 99"},
};

static int deep_ok[sizeof deep_checks / sizeof *deep_checks];
static int deep_released;

static void *deep_thread(void *arg) {
  lua_State *L = new_state(NULL);
  size_t i;
  (void)arg;
  if (L == NULL || !run(L, deep_lib)) return NULL;
  for (i = 0; i < sizeof deep_checks / sizeof *deep_checks; i++) {
    if (luaL_dostring(L, deep_checks[i].code) != 0) {
      printf("# lua: %s\n", lua_tostring(L, -1));
      lua_pop(L, 1);
    } else
      deep_ok[i] = lua_toboolean(L, -1);
    lua_settop(L, 0);
  }
  /* threadlocal_release frees a deep structure too; then build another one
  ** for the thread's exit */
  if (run(L, "local sh = T.shared('deep2'); sh.a = {}; assert(deepen(sh.a, 1000) == 99)")) {
    threadlocal_release();
    deep_released = run(L, "return assert(T.shared('deep2').a == nil)");
  }
  lua_close(L);
  return NULL;
}

static void test_depth(void) {
  char what[200];
  size_t i;
  int ran = on_thread(deep_thread, NULL, SMALL_STACK);
  check(ran, "a thread with a small stack runs the depth attack and exits");
  for (i = 0; i < sizeof deep_checks / sizeof *deep_checks; i++) {
    snprintf(what, sizeof what, "small stack: %s", deep_checks[i].what);
    check(ran && deep_ok[i], what);
  }
  check(ran && deep_released, "small stack: threadlocal_release frees a deep structure");
}

/* ---------------------------------------------------------------------- */
/* hash                                                                    */
/* ---------------------------------------------------------------------- */

static uint64_t rng_state = 0x853c49e6748fea9bu;

static uint64_t rng(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1du;
}

static uint64_t inverse(uint64_t a) { /* of an odd a, mod 2^64 */
  uint64_t x = a;
  int i;
  for (i = 0; i < 6; i++) x *= 2 - a * x;
  return x;
}

/*
** Keys that all share one 32-bit hash under the module's former unkeyed
** hashes, found by inverting them:
**   integers: (x * C) >> 32, so x = ((T << 32) | j) * C^-1 all give T;
**   8-byte strings: h = ((s ^ w) * M1, then h ^= h >> 32, then h * M2, then
**   h ^ h >> 32 folded to 32 bits; each step inverts.
*/
static int64_t crafted_int(uint32_t j) {
  const uint64_t c = 0x9e3779b97f4a7c15u, target = 0x5eed;
  return (int64_t)(((target << 32) | j) * inverse(c));
}

static void crafted_str(uint32_t j, char out[8]) {
  const uint64_t m1 = 0xff51afd7ed558ccdu, m2 = 0xc4ceb9fe1a85ec53u;
  const uint64_t s = 0x9e3779b97f4a7c15u ^ 8, target = 0x5eed;
  uint64_t g = ((uint64_t)j << 32) | (target ^ j); /* folds to target */
  uint64_t h = g * inverse(m2);
  uint64_t x = h ^ (h >> 32); /* undoes h ^= h >> 32 */
  uint64_t w = (x * inverse(m1)) ^ s;
  memcpy(out, &w, 8);
}

#define NKEYS 20000

/* Probes to insert then find NKEYS keys made by key(j) into a fresh table. */
static size_t probe_keys(int crafted, int strings) {
  tl_tab *t = tl_tab_new(NULL, 0);
  size_t before;
  uint32_t j;
  int pass;
  if (t == NULL) return 0;
  before = tl_stat_probes;
  for (pass = 0; pass < 2; pass++) {
    uint64_t seed = rng_state;
    for (j = 0; j < NKEYS; j++) {
      tl_key k;
      tl_val v, old;
      char s[8];
      uint64_t r = rng();
      if (strings) {
        if (crafted) crafted_str(j, s); else memcpy(s, &r, 8);
        tl_key_str(&k, s, 8);
      } else
        tl_key_int(&k, crafted ? crafted_int(j) : (int64_t)r);
      v.type = TL_TINT;
      v.u.i = j;
      if (pass == 0) {
        if (tl_tab_put(t, &k, &v, &old) != 0) return 0;
      } else if (tl_tab_find(t, &k) == NULL)
        return 0;
    }
    if (pass == 0) rng_state = seed; /* the same random keys again */
  }
  j = t->count;
  tl_tab_free(t);
  return j == NKEYS ? tl_stat_probes - before : 0;
}

/* Probes to open NKEYS names in the registry. */
static size_t probe_names(int crafted) {
  size_t before = tl_stat_probes;
  uint32_t j;
  for (j = 0; j < NKEYS; j++) {
    char s[8];
    uint64_t r = rng();
    if (crafted) crafted_str(j, s); else memcpy(s, &r, 8);
    if (tl_reg_open(s, 8) == NULL) return 0;
  }
  return tl_stat_probes - before + 1;
}

static void ratio_check(const char *what, size_t crafted, size_t random) {
  char msg[200];
  snprintf(msg, sizeof msg, "%s: crafted keys cost what random keys cost "
           "(%zu vs %zu probes)", what, crafted, random);
  check(crafted > 0 && random > 0 && crafted < 3 * random, msg);
}

static void test_hash(void) {
  uint64_t a = (uint64_t)crafted_int(1), b = (uint64_t)crafted_int(2);
  char s1[8], s2[8];
  crafted_str(1, s1);
  crafted_str(2, s2);
  /* the crafting is right: under the old hashes, these share one hash */
  check(((a * 0x9e3779b97f4a7c15u) >> 32) == ((b * 0x9e3779b97f4a7c15u) >> 32) && a != b &&
        memcmp(s1, s2, 8) != 0, "the crafted keys differ");
  if (tl_init() != 0) return;
  ratio_check("string keys", probe_keys(1, 1), probe_keys(0, 1));
  ratio_check("integer keys", probe_keys(1, 0), probe_keys(0, 0));
  ratio_check("names in the registry", probe_names(1), probe_names(0));
}

/* ---------------------------------------------------------------------- */
/* window                                                                  */
/* ---------------------------------------------------------------------- */

/* n live keys, then `pairs` times: delete the oldest, insert a new one.
** Returns the entries moved by rebuilds during the window, or -1. */
static long window(uint32_t n, uint32_t pairs, size_t *rehashes) {
  tl_tab *t = tl_tab_new(NULL, 0);
  size_t moved = tl_stat_moved, r0 = tl_stat_rehashes;
  uint32_t i;
  if (t == NULL) return -1;
  for (i = 0; i < n + pairs; i++) {
    tl_key k;
    tl_val v, old;
    if (i == n) {
      moved = tl_stat_moved;
      r0 = tl_stat_rehashes;
    }
    if (i >= n) { /* delete i - n */
      v.type = TL_TNIL;
      tl_key_int(&k, (int64_t)(i - n));
      if (tl_tab_put(t, &k, &v, &old) != 0) return -1;
    }
    v.type = TL_TINT;
    v.u.i = i;
    tl_key_int(&k, (int64_t)i);
    if (tl_tab_put(t, &k, &v, &old) != 0) return -1;
  }
  i = t->count;
  tl_tab_free(t);
  *rehashes = tl_stat_rehashes - r0;
  return i == n ? (long)(tl_stat_moved - moved) : -1;
}

static void test_window(void) {
  char msg[200];
  size_t rehashes;
  long moved = window(65536, 20000, &rehashes);
  uint32_t n;
  int amortised = 1;
  snprintf(msg, sizeof msg, "65536 live keys, 20000 deletes+inserts: %zu rebuilds, "
           "%ld entries moved", rehashes, moved);
  check(moved >= 0 && rehashes <= 1, msg);
  /* at every size, the entries moved stay within a constant per insert */
  for (n = 1; n <= 5000 && amortised; n += 1 + n / 16) {
    moved = window(n, 4 * n + 64, &rehashes);
    if (moved < 0 || (size_t)moved > 2 * (size_t)(4 * n + 64)) {
      printf("# %u live keys: %ld entries moved for %u inserts\n", n, moved, 4 * n + 64);
      amortised = 0;
    }
  }
  check(amortised, "at every size up to 5000, rebuilds move at most 2 entries per insert");
}

/* ---------------------------------------------------------------------- */
/* lengths                                                                 */
/* ---------------------------------------------------------------------- */

static void test_lengths(void) {
  threadlocal_shared *sh = NULL, *empty = NULL, *again = NULL;
  threadlocal_value v;
  lua_State *L;
  check(threadlocal_shared_open("short", SIZE_MAX, &sh) == THREADLOCAL_ERRARG && sh == NULL,
        "shared_open: an impossible name length is a bad argument");
  check(threadlocal_shared_open("short", THREADLOCAL_MAXLEN + 1, &sh) == THREADLOCAL_ERRARG,
        "shared_open: a name longer than THREADLOCAL_MAXLEN is a bad argument");
  check(threadlocal_shared_open(NULL, 1, &sh) == THREADLOCAL_ERRARG,
        "shared_open: NULL with a length is a bad argument");
  check(threadlocal_shared_open(NULL, 0, &empty) == THREADLOCAL_OK &&
        threadlocal_shared_open("", 0, &again) == THREADLOCAL_OK && empty == again,
        "shared_open: NULL with length 0 is the empty name");
  if (empty == NULL) return;
  check(threadlocal_set_string(empty, "s", "x", SIZE_MAX) == THREADLOCAL_ERRARG &&
        threadlocal_set_string(empty, "s", "x", THREADLOCAL_MAXLEN + 1) == THREADLOCAL_ERRARG,
        "set_string: an impossible length is a bad argument");
  check(threadlocal_set_string(empty, "s", NULL, 0) == THREADLOCAL_OK &&
        threadlocal_get(empty, "s", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_STRING &&
        v.u.string.len == 0 && v.u.string.ptr[0] == '\0',
        "set_string: NULL with length 0 is the empty string");
  check(tl_reallocarray(NULL, SIZE_MAX / 4, 8) == NULL && tl_calloc(SIZE_MAX / 4, 8) == NULL,
        "array sizes that overflow are refused before allocating");
  L = new_state(NULL);
  check(L != NULL && run(L, "local sh = threadlocal.shared(''); return assert(sh.s == '')"),
        "Lua sees the empty name's fields");
  if (L != NULL) lua_close(L);
  threadlocal_clear(empty);
}

/* ---------------------------------------------------------------------- */
/* metamethods                                                             */
/* ---------------------------------------------------------------------- */

/* Every metamethod of the three kinds, reached through debug.getmetatable,
** called with every wrong argument 1: each call must raise the standard
** "bad argument" error, never crash. */
static const char meta_code[] =
  "local T = threadlocal\n"
  "local lo, lo2 = T.new(), T.new()\n"
  "local sh = T.shared('meta'); sh.t = {}\n"
  "local kinds = {\n"
  "  { name = 'threadlocal.local', obj = lo },\n"
  "  { name = 'threadlocal.shared', obj = sh },\n"
  "  { name = 'threadlocal.proxy', obj = sh.t },\n"
  "}\n"
  "local wrong = { 1, 'str', {}, true, io.stdout, LIGHT, lo2, sh, sh.t, coroutine.create(print) }\n"
  "local n = 0\n"
  "for _, kind in ipairs(kinds) do\n"
  "  local mt = debug.getmetatable(kind.obj)\n"
  "  for _, mm in ipairs { '__index', '__newindex', '__pairs', '__len', '__tostring' } do\n"
  "    local f = mt[mm]\n"
  "    for i = 1, #wrong + 1 do\n"
  "      local arg = wrong[i]\n"
  "      local isself = arg == kind.obj or (kind.obj == lo and arg == lo2)\n"
  "      if not isself then\n"
  "        local ok, err\n"
  "        if i > #wrong then ok, err = pcall(f) else ok, err = pcall(f, arg, 'k', 1) end\n"
  "        local want = 'bad argument #1 to .-%(' .. kind.name:gsub('%.', '%%.') .. ' expected, got '\n"
  "        if ok or not tostring(err):find(want) then\n"
  "          error(('%s %s(%s): %s'):format(kind.name, mm, tostring(arg), tostring(err)))\n"
  "        end\n"
  "        n = n + 1\n"
  "      end\n"
  "    end\n"
  "  end\n"
  "end\n"
  "local ok, err = pcall(function() return debug.getmetatable(sh).__tostring(1) end)\n"
  "assert(err:find(\"bad argument #1 to '__tostring' (threadlocal.shared expected, got number)\", 1, true), err)\n"
  "lo.k = 5\n" /* another Local given to lo's own closures is refused */
  "assert(not pcall(debug.getmetatable(lo).__newindex, lo2, 'k', 6))\n"
  "assert(not pcall(debug.getmetatable(lo).__index, lo2, 'k'))\n"
  "assert(lo.k == 5 and lo2.k == nil)\n"
  "assert(#lo == 0 and #sh == 0 and #sh.t == 0 and tostring(sh):find('meta'))\n"
  "return n\n";

static void test_metamethods(void) {
  static char buffer[64]; /* a light userdata that is readable, but no object */
  lua_State *L = new_state(NULL);
  int ok;
  if (L == NULL) return;
  lua_pushlightuserdata(L, buffer);
  lua_setglobal(L, "LIGHT");
  ok = run(L, meta_code);
  check(ok && lua_tointeger(L, -1) > 100,
        "every metamethod, given a wrong argument 1, raises a bad argument error");
  lua_close(L);
}

/* ---------------------------------------------------------------------- */
/* enroll                                                                  */
/* ---------------------------------------------------------------------- */

/*
** Finalizers that run inside the module's own allocations and touch the
** module.  With a pause of 0 and a big step, Lua 5.4 runs a whole GC
** cycle, finalizers included, in the first allocation step after a full
** collection: objects dropped just before are finalized inside the first
** allocation of the access that follows.  The functions are compiled in
** advance and called from C, so that no allocation comes in between and
** no stale stack slot keeps the objects alive.
*/
static const char enroll_setup[] =
  "T = threadlocal\n"
  "A, B = T.new(), T.new()\n"
  "SHARED = {}\n"
  "collectgarbage('setpause', 0); collectgarbage('incremental', 0, 1000, 20)\n"
  "local function armed(f)\n" /* finalizers that call f, once dropped */
  "  local objs = {}\n"
  "  for i = 1, 3 do objs[i] = setmetatable({}, { __gc = f }) end\n"
  "  collectgarbage('collect')\n"
  "  return objs\n"
  "end\n"
  "function ARM_LOCAL() HOLD = armed(function() B.x = 1 end) end\n"
  "function ACCESS_LOCAL() HOLD = nil; local _ = A.x end\n" /* enrolls this thread */
  "function ARM_SHARED() HOLD = armed(function() SHARED[#SHARED + 1] = T.shared('enroll') end) end\n"
  "function ACCESS_SHARED() HOLD = nil; local sh = T.shared('enroll'); SHARED[#SHARED + 1] = sh end\n";

static lua_State *enroll_L;
static int enroll_ok;

static int call(lua_State *L, const char *f) {
  lua_getglobal(L, f);
  if (lua_pcall(L, 0, 0, 0) != 0) {
    printf("# %s: %s\n", f, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static void *enroll_thread(void *arg) {
  (void)arg;
  enroll_ok += call(enroll_L, "ARM_LOCAL") && call(enroll_L, "ACCESS_LOCAL");
  return NULL;
}

static void test_enroll(void) {
  int i, n = 20, ran = 0;
  lua_State *L = enroll_L = new_state(NULL);
  if (L == NULL || !run(L, enroll_setup)) return;
  for (i = 0; i < n; i++) ran += on_thread(enroll_thread, NULL, 0);
  check(ran == n && enroll_ok == n, "threads whose finalizers touch the module mid-access");
  check(run(L, "collectgarbage('setpause', 200); collectgarbage('incremental', 0, 100, 13)\n"
               "collectgarbage(); collectgarbage()\n"
               "local n = 0; for id in T.threads(B) do n = n + 1 end\n"
               "assert(n == 1, n .. ' threads hold fields of B')"),
        "a Local enrolled by a finalizer during another's enrollment is purged at exit");
  check(run(L, "collectgarbage('setpause', 0); collectgarbage('incremental', 0, 1000, 20)") &&
        call(L, "ARM_SHARED") &&
        call(L, "ACCESS_SHARED") &&
        run(L, "assert(#SHARED == 4, #SHARED)\n"
               "for i = 2, #SHARED do assert(rawequal(SHARED[i], SHARED[1]), i) end"),
        "one userdata per shared local name, even when a finalizer opens it meanwhile");
  lua_close(L);
}

static void *tables_thread(void *arg) {
  (void)arg;
  test_hash();
  test_window();
  return NULL;
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  if (only == NULL || strcmp(only, "lengths") == 0) test_lengths();
  if (only == NULL || strcmp(only, "metamethods") == 0) test_metamethods();
  if (only == NULL || strcmp(only, "enroll") == 0) test_enroll();
  if (only == NULL || strcmp(only, "hash") == 0) test_hash();
  if (only == NULL || strcmp(only, "window") == 0) test_window();
  if (only == NULL || strcmp(only, "depth") == 0) test_depth();
  if (only == NULL || strcmp(only, "small") == 0) /* the table checks again */
    check(on_thread(tables_thread, NULL, SMALL_STACK), "the table checks run on a small stack");
  return exit_status();
}
