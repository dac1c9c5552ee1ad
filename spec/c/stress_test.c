/*
** stress_test [OPS]: 8 threads, each with 2 states of its own, plus 1 state
** handed between all of them under a lock, run OPS (default 20000) random
** operations each (fixed seed): shared get, set, delete, clear, pairs,
** nested table writes and reads, shared-by-name lookups and C API calls
** (string keys, and nodes: paths, walks, new tables, any key, defaults);
** Local get, set, delete, clear and new Locals, in their own states and in
** the handed one.  Every read is checked against a model of what that
** thread must see.  Built with -fsanitize=thread by make test.
** Prints TAP lines; exits non-zero if any check failed.
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define CTEST_NAME "stress"
#include "ctest.h"

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

/* A fresh state with the functions of chunk defined; NULL if it fails. */
static lua_State *new_stress_state(void) {
  lua_State *L = new_state(NULL);
  if (L != NULL && !run(L, chunk)) {
    lua_close(L);
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

/* What one thread works with: its seed, its own states, the shared locals
** through the C API, and the model of what it must see. */
typedef struct stress {
  int me;
  unsigned seed;
  lua_State *own[2];
  threadlocal_shared *sh[NSHARED];
  model m;
} stress;

/* One operation, drawn from the thread's seed. */
typedef struct op {
  unsigned r;    /* the first draw: the kind, and the rarer variants */
  int kind;      /* 0..15 */
  int64_t v;     /* a value to store, 0..999 */
  lua_State *L;  /* one of the thread's own states */
  int which;     /* its index in own */
  int n, k, j;   /* a shared local, a key, a Local */
  char key[16];  /* "k<k>", for the C API */
} op;

#define EXPECT(cond) do { if (!(cond)) mismatches[s->me]++; } while (0)

/* Opens the shared locals, empties the model and makes the own states. */
static void stress_setup(stress *s, int me) {
  char name[32];
  int i, j, k, n;
  s->me = me;
  s->seed = 20261126u + (unsigned)me * 7919u;
  for (n = 0; n < NSHARED; n++) {
    snprintf(name, sizeof name, "stress.%d", n);
    threadlocal_shared_open(name, strlen(name), &s->sh[n]);
    s->m.nested[n] = ABSENT;
    for (k = 0; k < NKEYS; k++) s->m.shared[n][k] = ABSENT;
  }
  for (i = 0; i < 3; i++)
    for (j = 0; j < NLOCALS; j++)
      for (k = 0; k < NKEYS; k++) s->m.locals[i][j][k] = ABSENT;
  s->own[0] = new_stress_state();
  s->own[1] = new_stress_state();
}

/* Every thread gives "stress.defaults" equal defaults at once, built in
** its own fields of a scratch local: each call must succeed, and each
** thread then starts from them. */
static void stress_defaults(stress *s) {
  threadlocal_shared *d, *scratch;
  threadlocal_node root, t;
  threadlocal_value k, v;
  threadlocal_shared_open_cstr("stress.defaults", &d);
  threadlocal_shared_open_cstr("stress.scratch", &scratch);
  threadlocal_root(scratch, &root);
  k = threadlocal_string("a");
  v = threadlocal_integer(1);
  EXPECT(threadlocal_node_set(&root, &k, &v) == THREADLOCAL_OK);
  k = threadlocal_string("t");
  EXPECT(threadlocal_node_newtable(&root, &k, &t) == THREADLOCAL_OK);
  k = threadlocal_integer(1);
  v = threadlocal_string("b");
  EXPECT(threadlocal_node_set(&t, &k, &v) == THREADLOCAL_OK);
  pthread_barrier_wait(&start);
  EXPECT(threadlocal_set_defaults(d, &root) == THREADLOCAL_OK);
  threadlocal_clear(scratch);
  EXPECT(threadlocal_get(d, "a", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_INTEGER &&
         v.u.integer == 1);
}

/* Shared locals, from Lua and from C (kinds 0 to 8). */
static void shared_op(stress *s, const op *o) {
  int me = s->me, n = o->n, k = o->k, i;
  int64_t v = o->v;
  model *m = &s->m;
  lua_State *L = o->L;
  threadlocal_value tv;
  switch (o->kind) {
    case 0: call(L, me, "sset", 3, n, k, v); m->shared[n][k] = v; break;
    case 1: EXPECT(call(L, me, "sget", 2, n, k, 0) == m->shared[n][k]); break;
    case 2: call(L, me, "sset", 3, n, k, ABSENT); m->shared[n][k] = ABSENT; break;
    case 3:
      if (o->r % 5 == 0) { /* rarer: clear everything of one shared local */
        call(L, me, "sclear", 1, n, 0, 0);
        for (i = 0; i < NKEYS; i++) m->shared[n][i] = ABSENT;
        m->nested[n] = ABSENT;
      }
      break;
    case 4: EXPECT(call(L, me, "scount", 1, n, 0, 0) == count(m->shared[n], NKEYS)); break;
    case 5: call(L, me, "tset", 2, n, v, 0); m->nested[n] = v; break;
    case 6:
      if (m->nested[n] != ABSENT) {
        call(L, me, "tput", 2, n, v, 0);
        m->nested[n] = v;
      }
      EXPECT(call(L, me, "tget", 1, n, 0, 0) == m->nested[n]);
      break;
    case 7: /* the C API sees and sets the same fields */
      threadlocal_get(s->sh[n], o->key, &tv);
      EXPECT(m->shared[n][k] == ABSENT ? tv.type == THREADLOCAL_NIL
                                       : tv.type == THREADLOCAL_INTEGER && tv.u.integer == m->shared[n][k]);
      threadlocal_set_integer(s->sh[n], o->key, v);
      m->shared[n][k] = v;
      break;
    default: threadlocal_delete(s->sh[n], o->key); m->shared[n][k] = ABSENT; break;
  }
}

/* The same fields through nodes (kinds 14, 15): paths, walks, new tables. */
static void node_op(stress *s, const op *o) {
  int n = o->n, k = o->k, c = 0;
  model *m = &s->m;
  threadlocal_node root, t, inner;
  threadlocal_value path[3], key, v;
  threadlocal_iter it;
  threadlocal_root(s->sh[n], &root);
  path[0] = threadlocal_string("t");
  path[1] = threadlocal_string("inner");
  path[2] = threadlocal_integer(1);
  if (o->kind == 14) { /* read: t.x, t.inner[1], and a walk of the fields */
    EXPECT(threadlocal_node_get(&root, path, 3, &v) == THREADLOCAL_OK);
    EXPECT(m->nested[n] == ABSENT ? v.type == THREADLOCAL_NIL
                                  : v.type == THREADLOCAL_INTEGER && v.u.integer == m->nested[n]);
    EXPECT(threadlocal_node_iter(&root, &it) == THREADLOCAL_OK);
    while (threadlocal_next(&it, &key, &v) == THREADLOCAL_OK && key.type != THREADLOCAL_NIL)
      c += key.type == THREADLOCAL_STRING && key.u.string.ptr[0] == 'k';
    EXPECT(key.type == THREADLOCAL_NIL && c == count(m->shared[n], NKEYS));
    return;
  }
  key = threadlocal_lstring(o->key, strlen(o->key)); /* any key: a counted string */
  v = threadlocal_integer(o->v);
  EXPECT(threadlocal_node_set(&root, &key, &v) == THREADLOCAL_OK);
  m->shared[n][k] = o->v;
  if (o->r % 2 == 0 || m->nested[n] == ABSENT) { /* a new t, as tset does */
    key = threadlocal_string("t");
    EXPECT(threadlocal_node_newtable(&root, &key, &t) == THREADLOCAL_OK);
    key = threadlocal_string("inner");
    EXPECT(threadlocal_node_newtable(&t, &key, &inner) == THREADLOCAL_OK);
  } else { /* into the present t, as tput does */
    EXPECT(threadlocal_node_child(&root, path, 1, &t) == THREADLOCAL_OK);
    EXPECT(threadlocal_node_child(&root, path, 2, &inner) == THREADLOCAL_OK);
  }
  key = threadlocal_string("x");
  EXPECT(threadlocal_node_set(&t, &key, &v) == THREADLOCAL_OK);
  EXPECT(threadlocal_node_set(&inner, &path[2], &v) == THREADLOCAL_OK);
  m->nested[n] = o->v;
}

/* The Locals of one of this thread's own states (kinds 9 to 11). */
static void local_op(stress *s, const op *o) {
  int me = s->me, j = o->j, k = o->k, i;
  int64_t v = o->v, *fields = s->m.locals[o->which][j];
  lua_State *L = o->L;
  switch (o->kind) {
    case 9:
      call(L, me, "lset", 3, j, k, v % 3 == 0 ? ABSENT : v);
      fields[k] = v % 3 == 0 ? ABSENT : v;
      break;
    case 10:
      EXPECT(call(L, me, "lget", 2, j, k, 0) == fields[k]);
      EXPECT(call(L, me, "lcount", 1, j, 0, 0) == count(fields, NKEYS));
      break;
    default:
      if (v % 4 == 0) {
        call(L, me, "lclear", 1, j, 0, 0);
        for (i = 0; i < NKEYS; i++) fields[i] = ABSENT;
      }
      EXPECT(call(L, me, "lnew", 1, v, 0, 0) == v);
      break;
  }
}

/* The state handed between threads: this thread's own fields (kinds 12, 13). */
static void handed_op(stress *s, const op *o) {
  int me = s->me, j = o->j, k = o->k;
  pthread_mutex_lock(&handed_lock);
  EXPECT(call(handed, me, "lget", 2, j, k, 0) == s->m.locals[2][j][k]);
  call(handed, me, "lset", 3, j, k, o->v);
  s->m.locals[2][j][k] = o->v;
  EXPECT(call(handed, me, "sget", 2, o->n, k, 0) == s->m.shared[o->n][k]);
  pthread_mutex_unlock(&handed_lock);
}

/* Draws one operation from the thread's seed and runs it. */
static void stress_op(stress *s) {
  op o;
  o.r = next_rand(&s->seed);
  o.kind = (int)(o.r % 16);
  o.v = (int64_t)(next_rand(&s->seed) % 1000);
  o.L = s->own[next_rand(&s->seed) % 2];
  o.which = o.L == s->own[0] ? 0 : 1;
  o.n = (int)(next_rand(&s->seed) % NSHARED);
  o.k = (int)(next_rand(&s->seed) % NKEYS);
  o.j = (int)(next_rand(&s->seed) % NLOCALS);
  snprintf(o.key, sizeof o.key, "k%d", o.k);
  if (o.kind <= 8)
    shared_op(s, &o);
  else if (o.kind <= 11)
    local_op(s, &o);
  else if (o.kind <= 13)
    handed_op(s, &o);
  else
    node_op(s, &o);
  ops_done[s->me]++;
}

/* Closes the own states; the shared values must outlive them. */
static void stress_finish(stress *s) {
  char key[16];
  threadlocal_value tv;
  int k, n;
  lua_close(s->own[0]);
  lua_close(s->own[1]);
  for (n = 0; n < NSHARED; n++)
    for (k = 0; k < NKEYS; k++) {
      snprintf(key, sizeof key, "k%d", k);
      threadlocal_get(s->sh[n], key, &tv);
      EXPECT(s->m.shared[n][k] == ABSENT ? tv.type == THREADLOCAL_NIL
                                         : tv.u.integer == s->m.shared[n][k]);
    }
}

static void *worker(void *p) {
  stress s;
  int i;
  stress_setup(&s, (int)(intptr_t)p);
  stress_defaults(&s);
  pthread_barrier_wait(&start);
  for (i = 0; i < ops_per_thread; i++) stress_op(&s);
  stress_finish(&s);
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t th[NTHREADS];
  int i, total_ops = 0, total_mismatches = 0, total_errors = 0;
  char msg[96];
  if (argc > 1) sscanf(argv[1], "%d", &ops_per_thread);
  handed = new_stress_state();
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
  snprintf(msg, sizeof msg, "every read matched the model (%d mismatches)", total_mismatches);
  check(total_mismatches == 0, msg);
  snprintf(msg, sizeof msg, "no operation raised (%d errors)", total_errors);
  check(total_errors == 0, msg);
  snprintf(msg, sizeof msg, "all %d operations ran", NTHREADS * ops_per_thread);
  check(total_ops == NTHREADS * ops_per_thread, msg);
  return exit_status();
}
