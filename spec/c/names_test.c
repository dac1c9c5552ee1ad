/*
** names_test: what a thread pays does not grow with the number of shared
** locals the process has made.  The module's allocator hook counts bytes,
** so every check compares bytes measured in the same run; the scope check
** compares two times, with a wide margin.
**
**   memory   a thread holding one field costs the same after 1,000 names
**            and after 200,000, also after release() and a new touch
**   capture  capture() of all a thread's fields allocates what the thread
**            holds, not a slot per name
**   churn    fields cleared in any order leave the map right
**   scopes   scopes inside a run cost the same whatever its snapshot names
*/
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define CTEST_NAME "names"
#include "ctest.h"

#define FEW 1000
#define MANY 200000

/* The hook: a size header before each block. */
static atomic_size_t in_use, largest;

typedef union { size_t n; max_align_t align; } header;

static void *count_alloc(void *ud, void *ptr, size_t size) {
  header *h = ptr != NULL ? (header *)ptr - 1 : NULL;
  size_t old = h != NULL ? h->n : 0, big;
  (void)ud;
  if (size == 0) {
    free(h);
    atomic_fetch_sub(&in_use, old);
    return NULL;
  }
  if ((h = (header *)realloc(h, sizeof *h + size)) == NULL) return NULL;
  h->n = size;
  atomic_fetch_add(&in_use, size);
  atomic_fetch_sub(&in_use, old);
  big = atomic_load(&largest);
  while (size > big && !atomic_compare_exchange_weak(&largest, &big, size)) {}
  return h + 1;
}

static threadlocal_shared *newest;
static size_t nnames;

static void make_names(size_t upto) {
  char name[32];
  for (; nnames < upto; nnames++) {
    snprintf(name, sizeof name, "names-%zu", nnames);
    if (threadlocal_shared_open(name, strlen(name), &newest) != THREADLOCAL_OK) abort();
  }
}

/* What one thread measures while it holds one field of the newest name. */
typedef struct cost {
  size_t held;      /* bytes in use for its first field */
  size_t again;     /* the same after release() and a new touch */
  size_t capture;   /* the largest block capture() asked for */
} cost;

static void *measure(void *arg) {
  cost *c = (cost *)arg;
  threadlocal_snapshot *snap;
  size_t before;
  threadlocal_id(); /* the thread record itself is not what is measured */
  before = atomic_load(&in_use);
  if (threadlocal_set_integer(newest, "k", 1) != THREADLOCAL_OK) abort();
  c->held = atomic_load(&in_use) - before;
  atomic_store(&largest, 0);
  if (threadlocal_snapshot_capture(NULL, 0, &snap) != THREADLOCAL_OK) abort();
  c->capture = atomic_load(&largest);
  threadlocal_snapshot_free(snap);
  threadlocal_release();
  before = atomic_load(&in_use);
  if (threadlocal_set_integer(newest, "k", 2) != THREADLOCAL_OK) abort();
  c->again = atomic_load(&in_use) - before;
  return NULL;
}

static cost thread_cost(void) {
  pthread_t th;
  cost c = {0, 0, 0};
  if (pthread_create(&th, NULL, measure, &c) != 0 || pthread_join(th, NULL) != 0) abort();
  return c;
}

static void bound(const char *what, size_t many, size_t few) {
  char line[200];
  /* The bound: twice the cost at FEW names, plus 256 bytes. */
  snprintf(line, sizeof line, "%s: %zu bytes with %d names, %zu with %d (bound 2x + 256)", what,
           many, MANY, few, FEW);
  check(many <= 2 * few + 256, line);
}

static void test_memory(void) {
  cost few, many;
  make_names(FEW);
  few = thread_cost();
  make_names(MANY);
  many = thread_cost();
  bound("a thread holding one field of the newest name", many.held, few.held);
  bound("the same after release() and a new touch", many.again, few.again);
  bound("the largest block capture() asks for", many.capture, few.capture);
}

/* A thread's map stays right while fields come and go in any order:
** capture() finds exactly those left, and release() frees each once. */
/* How many of the 256 shared locals have k, which must be their index. */
static size_t count_fields(threadlocal_shared **sh) {
  size_t n = 0;
  int i;
  for (i = 0; i < 256; i++) {
    threadlocal_value v;
    if (threadlocal_get(sh[i], "k", &v) != THREADLOCAL_OK || v.type == THREADLOCAL_NIL) continue;
    if (v.type != THREADLOCAL_INTEGER || v.u.integer != i) return (size_t)-1;
    n++;
  }
  return n;
}

static void *churn(void *arg) {
  threadlocal_shared *sh[256];
  threadlocal_snapshot *snap, *own;
  char name[32];
  int i, round, *ok = (int *)arg;
  size_t left = 256;
  for (i = 0; i < 256; i++) {
    snprintf(name, sizeof name, "churn-%d", i);
    if (threadlocal_shared_open(name, strlen(name), &sh[i]) != THREADLOCAL_OK) abort();
    if (threadlocal_set_integer(sh[i], "k", i) != THREADLOCAL_OK) abort();
  }
  *ok = 1;
  for (round = 0; round < 8; round++) { /* clear a scattered eighth each round */
    for (i = round; i < 256; i += 8) {
      if (threadlocal_clear(sh[(i * 37) % 256]) != THREADLOCAL_OK) abort();
      left--;
    }
    if (threadlocal_snapshot_capture(NULL, 0, &snap) != THREADLOCAL_OK) abort();
    if (count_fields(sh) != left) *ok = 0;
    threadlocal_release(); /* a fresh identity gets exactly the captured fields */
    if (count_fields(sh) != 0 || threadlocal_snapshot_install(snap, &own) != THREADLOCAL_OK)
      abort();
    threadlocal_snapshot_free(own);
    if (count_fields(sh) != left) *ok = 0;
  }
  for (i = 0; i < 256; i += 3) threadlocal_set_integer(sh[i], "k", i);
  threadlocal_release(); /* frees what is left: ASan sees any twice */
  return NULL;
}

static void test_churn(void) {
  pthread_t th;
  int ok = 0;
  if (pthread_create(&th, NULL, churn, &ok) != 0 || pthread_join(th, NULL) != 0) abort();
  check(ok, "fields cleared in any order: capture() finds exactly those left, release frees each once");
}

/* scope_seconds(n): seconds of CPU for 5,000 scope pairs inside a run
** whose snapshot names n shared locals (the best of three). */
static const char scope_lib[] =
  "function scope_seconds(n)\n"
  "  local snap = {}\n"
  "  for i = 1, n do snap['names-' .. i] = {} end\n"
  "  local sh, best = threadlocal.shared('names-1'), math.huge\n"
  "  for _ = 1, 3 do\n"
  "    threadlocal.run(snap, function()\n"
  "      local t0 = os.clock()\n"
  "      for i = 1, 5000 do threadlocal.scope(sh, { a = i }):close() end\n"
  "      best = math.min(best, os.clock() - t0)\n"
  "    end)\n"
  "  end\n"
  "  return best\n"
  "end\n";

static double scope_seconds(lua_State *L, int n) {
  double s;
  lua_getglobal(L, "scope_seconds");
  lua_pushinteger(L, n);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    printf("# lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  s = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return s;
}

static void test_scopes(void) {
  lua_State *L = new_state(NULL);
  double few, many;
  char line[200];
  if (L == NULL || !run(L, scope_lib)) abort();
  few = scope_seconds(L, 10);
  many = scope_seconds(L, 50000);
  snprintf(line, sizeof line,
           "5,000 scopes in a run naming 50,000 shared locals: %.4f s, naming 10: %.4f s (bound 3x)",
           many, few);
  check(few >= 0 && many >= 0 && many <= 3 * few + 0.002, line);
  lua_close(L);
}

int main(void) {
  threadlocal_set_allocator(count_alloc, NULL);
  test_memory();
  test_churn();
  test_scopes();
  return exit_status();
}
