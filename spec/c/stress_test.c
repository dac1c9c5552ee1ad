/*
** stress_test [OPS]: 8 threads, each with 2 states of its own, plus 1 state
** handed between all of them under a lock, run OPS (default 20000) random
** operations each (fixed seed): shared get, set, delete, clear, pairs,
** nested table writes and reads, shared-by-name lookups and C API calls;
** Local get, set, delete, clear and new Locals, in their own states and in
** the handed one.  Every read is checked against a model of what that
** thread must see.  Built with -fsanitize=thread by make test.
** Prints TAP lines; exits non-zero on any mismatch.
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

#define NTHREADS 8
#define NSHARED 3
#define NLOCALS 2
#define NKEYS 6
#define ABSENT INT64_MIN

static const char *chunk =
  "local T = require 'threadlocal'\n"
  "local function sh(n) return T.shared('stress.' .. n) end\n"
  "function sset(n, k, v) sh(n)[k] = v end\n"
  "function sget(n, k) return sh(n)[k] end\n"
  "function sclear(n) T.clear(sh(n)) end\n"
  "function scount(n) local c = 0; for k in pairs(sh(n)) do if k ~= 't' then c = c + 1 end end; return c end\n"
  "function tset(n, v) sh(n).t = { x = v, inner = { v } } end\n"
  "function tput(n, v) local t = sh(n).t; t.x = v; t.inner[1] = v end\n"
  "function tget(n) local t = sh(n).t; if t == nil then return nil end; assert(t.inner[1] == t.x); return t.x end\n"
  "locals = {}\n"
  "for j = 0, " "1" " do locals[j] = T.new() end\n"
  "function lset(j, k, v) locals[j][k] = v end\n"
  "function lget(j, k) return locals[j][k] end\n"
  "function lclear(j) T.clear(locals[j]) end\n"
  "function lcount(j) local c = 0; for _ in next, T.fields(locals[j]) do c = c + 1 end; return c end\n"
  "function lnew(v) local l = T.new(function(self, x) self.x = x end, v); return l.x end\n";

typedef struct model {
  int64_t shared[NSHARED][NKEYS], nested[NSHARED];
  int64_t locals[3][NLOCALS][NKEYS]; /* per state: its own two, then the handed one */
} model;

static lua_State *handed;
static pthread_mutex_t handed_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t start;
static int mismatches[NTHREADS], ops_done[NTHREADS], lua_errors[NTHREADS];
static int ops_per_thread = 20000;

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "threadlocal", luaopen_threadlocal, 0);
  lua_pop(L, 1);
  if (luaL_dostring(L, chunk) != 0) {
    fprintf(stderr, "stress_test: %s\n", lua_tostring(L, -1));
    return NULL;
  }
  return L;
}

/* Calls global f with integer args (ABSENT as nil); returns the integer
** result, ABSENT for nil; -1 and counts an error if the call failed. */
static int64_t call(lua_State *L, int me, const char *f, int nargs, int64_t a, int64_t b,
                    int64_t c) {
  int64_t args[3], r;
  int i;
  args[0] = a;
  args[1] = b;
  args[2] = c;
  lua_getglobal(L, f);
  for (i = 0; i < nargs; i++) {
    if (args[i] == ABSENT)
      lua_pushnil(L);
    else if (i == 1 && (strcmp(f, "sset") == 0 || strcmp(f, "sget") == 0 ||
                        strcmp(f, "lset") == 0 || strcmp(f, "lget") == 0))
      lua_pushfstring(L, "k%d", (int)args[i]); /* keys are strings */
    else
      lua_pushinteger(L, (lua_Integer)args[i]);
  }
  if (lua_pcall(L, nargs, 1, 0) != 0) {
    fprintf(stderr, "stress_test: thread %d: %s: %s\n", me, f, lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_errors[me]++;
    return -1;
  }
  r = lua_isnil(L, -1) ? ABSENT : (int64_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return r;
}

static unsigned next_rand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (*s >> 8) & 0xffffff;
}

static int count(const int64_t *v, int n) {
  int i, c = 0;
  for (i = 0; i < n; i++) c += v[i] != ABSENT;
  return c;
}

#define EXPECT(cond) do { if (!(cond)) mismatches[me]++; } while (0)

static void *worker(void *p) {
  int me = (int)(intptr_t)p, i, k, n, j;
  unsigned seed = 20261126u + (unsigned)me * 7919u;
  lua_State *own[2];
  threadlocal_shared *sh[NSHARED];
  char name[32], key[16];
  threadlocal_value tv;
  model m;
  for (n = 0; n < NSHARED; n++) {
    snprintf(name, sizeof name, "stress.%d", n);
    threadlocal_shared_open(name, strlen(name), &sh[n]);
    m.nested[n] = ABSENT;
    for (k = 0; k < NKEYS; k++) m.shared[n][k] = ABSENT;
  }
  for (i = 0; i < 3; i++)
    for (j = 0; j < NLOCALS; j++)
      for (k = 0; k < NKEYS; k++) m.locals[i][j][k] = ABSENT;
  own[0] = new_state();
  own[1] = new_state();
  pthread_barrier_wait(&start);
  for (i = 0; i < ops_per_thread; i++) {
    unsigned r = next_rand(&seed);
    int op = (int)(r % 14);
    int64_t v = (int64_t)(next_rand(&seed) % 1000);
    lua_State *L = own[next_rand(&seed) % 2];
    int which = L == own[0] ? 0 : 1;
    n = (int)(next_rand(&seed) % NSHARED);
    k = (int)(next_rand(&seed) % NKEYS);
    j = (int)(next_rand(&seed) % NLOCALS);
    snprintf(key, sizeof key, "k%d", k);
    switch (op) {
      case 0: call(L, me, "sset", 3, n, k, v); m.shared[n][k] = v; break;
      case 1: EXPECT(call(L, me, "sget", 2, n, k, 0) == m.shared[n][k]); break;
      case 2: call(L, me, "sset", 3, n, k, ABSENT); m.shared[n][k] = ABSENT; break;
      case 3:
        if (r % 5 == 0) { /* rarer: clear everything of one shared local */
          call(L, me, "sclear", 1, n, 0, 0);
          for (k = 0; k < NKEYS; k++) m.shared[n][k] = ABSENT;
          m.nested[n] = ABSENT;
        }
        break;
      case 4: EXPECT(call(L, me, "scount", 1, n, 0, 0) == count(m.shared[n], NKEYS)); break;
      case 5: call(L, me, "tset", 2, n, v, 0); m.nested[n] = v; break;
      case 6:
        if (m.nested[n] != ABSENT) {
          call(L, me, "tput", 2, n, v, 0);
          m.nested[n] = v;
        }
        EXPECT(call(L, me, "tget", 1, n, 0, 0) == m.nested[n]);
        break;
      case 7: /* the C API sees and sets the same fields */
        threadlocal_get(sh[n], key, &tv);
        EXPECT(m.shared[n][k] == ABSENT ? tv.type == THREADLOCAL_NIL
                                       : tv.type == THREADLOCAL_INTEGER && tv.u.integer == m.shared[n][k]);
        threadlocal_set_integer(sh[n], key, v);
        m.shared[n][k] = v;
        break;
      case 8: threadlocal_delete(sh[n], key); m.shared[n][k] = ABSENT; break;
      case 9: /* a Local of one of this thread's own states */
        if (v % 3 == 0) {
          call(L, me, "lset", 3, j, k, ABSENT);
          m.locals[which][j][k] = ABSENT;
        } else {
          call(L, me, "lset", 3, j, k, v);
          m.locals[which][j][k] = v;
        }
        break;
      case 10:
        EXPECT(call(L, me, "lget", 2, j, k, 0) == m.locals[which][j][k]);
        EXPECT(call(L, me, "lcount", 1, j, 0, 0) == count(m.locals[which][j], NKEYS));
        break;
      case 11:
        if (v % 4 == 0) {
          call(L, me, "lclear", 1, j, 0, 0);
          for (k = 0; k < NKEYS; k++) m.locals[which][j][k] = ABSENT;
        }
        EXPECT(call(L, me, "lnew", 1, v, 0, 0) == v);
        break;
      default: /* the state handed between threads: this thread's own fields */
        pthread_mutex_lock(&handed_lock);
        EXPECT(call(handed, me, "lget", 2, j, k, 0) == m.locals[2][j][k]);
        call(handed, me, "lset", 3, j, k, v);
        m.locals[2][j][k] = v;
        EXPECT(call(handed, me, "sget", 2, n, k, 0) == m.shared[n][k]);
        pthread_mutex_unlock(&handed_lock);
        break;
    }
    ops_done[me]++;
  }
  lua_close(own[0]);
  lua_close(own[1]);
  for (n = 0; n < NSHARED; n++) /* shared values outlive the states */
    for (k = 0; k < NKEYS; k++) {
      snprintf(key, sizeof key, "k%d", k);
      threadlocal_get(sh[n], key, &tv);
      EXPECT(m.shared[n][k] == ABSENT ? tv.type == THREADLOCAL_NIL : tv.u.integer == m.shared[n][k]);
    }
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t th[NTHREADS];
  int i, total_ops = 0, total_mismatches = 0, total_errors = 0;
  if (argc > 1) sscanf(argv[1], "%d", &ops_per_thread);
  handed = new_state();
  if (handed == NULL) return 1;
  pthread_barrier_init(&start, NULL, NTHREADS);
  for (i = 0; i < NTHREADS; i++) pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
  for (i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  lua_close(handed);
  for (i = 0; i < NTHREADS; i++) {
    total_ops += ops_done[i];
    total_mismatches += mismatches[i];
    total_errors += lua_errors[i];
  }
  printf("# %d threads, %d operations, seed 20261126\n", NTHREADS, total_ops);
  printf("%s - stress: every read matched the model (%d mismatches)\n",
         total_mismatches == 0 ? "ok" : "not ok", total_mismatches);
  printf("%s - stress: no operation raised (%d errors)\n", total_errors == 0 ? "ok" : "not ok",
         total_errors);
  printf("%s - stress: all %d operations ran\n", total_ops == NTHREADS * ops_per_thread ? "ok" : "not ok",
         NTHREADS * ops_per_thread);
  return total_mismatches != 0 || total_errors != 0;
}
